use std::fs::File;
use std::os::fd::{AsFd, FromRawFd, IntoRawFd};
use std::path::Path;

use nix::sched::{setns, CloneFlags};
use nix::sys::statfs::{fstatfs, NSFS_MAGIC};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, TokioSocket};

use crate::KernelError;

/// Opens a network namespace by path (a bind mount such as
/// `/var/run/netns/NAME` or `/proc/PID/ns/net`) and checks that it is one.
pub fn open_netns(path: &Path) -> Result<File, KernelError> {
    let f = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => KernelError::NetnsMissing(path.to_owned()),
        _ => KernelError::Io {
            what: format!("opening {path:?}"),
            source: e,
        },
    })?;
    let st = fstatfs(f.as_fd()).map_err(|e| KernelError::Io {
        what: format!("statfs {path:?}"),
        source: e.into(),
    })?;
    if st.filesystem_type() != NSFS_MAGIC {
        return Err(KernelError::NotNetns(path.to_owned()));
    }
    Ok(f)
}

/// A netlink socket that lives in namespace `ns`. A socket stays in the
/// namespace it was created in, so a short-lived thread enters `ns`, opens
/// it and exits; no thread of the agent ever changes namespace for longer.
pub(crate) fn socket_in(ns: &File) -> Result<TokioSocket, KernelError> {
    let fd = std::thread::scope(|s| {
        s.spawn(|| -> std::io::Result<i32> {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)?;
            let sock = Socket::new(NETLINK_ROUTE)?;
            Ok(sock.into_raw_fd())
        })
        .join()
        .expect("netns thread does not panic")
    })
    .map_err(KernelError::io(
        "opening a netlink socket in the container namespace",
    ))?;
    // SAFETY: `fd` was just created by `Socket::new` and is owned by no one else.
    Ok(unsafe { TokioSocket::from_raw_fd(fd) })
}
