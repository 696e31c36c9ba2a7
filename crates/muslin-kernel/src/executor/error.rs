use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("network namespace {0:?} does not exist")]
    NetnsMissing(PathBuf),
    #[error("{path:?} is not a network namespace: it is {what}")]
    NotNetns { path: PathBuf, what: String },
    #[error("{0:?} is the agent's own network namespace (the host's), not a container's")]
    OwnNetns(PathBuf),
    #[error("interface {0:?} already exists in the container")]
    InterfaceExists(String),
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl KernelError {
    pub(crate) fn netlink(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Self {
        let what = what.into();
        move |source| KernelError::Netlink { what, source }
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| KernelError::Io { what, source }
    }
}

/// The errno of a netlink NACK, if that is what `e` is.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}
