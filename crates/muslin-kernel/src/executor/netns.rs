//! Opening a container's network namespace safely: the path must name a
//! network namespace (not a file, not another kind of namespace) and must
//! not be the agent's own, where an attachment would give the host the
//! container's address and default route.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::sched::{setns, CloneFlags};
use nix::sys::statfs::{fstatfs, NSFS_MAGIC};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, TokioSocket};

use crate::KernelError;

/// Opens a network namespace by path (a bind mount such as
/// `/var/run/netns/NAME` or `/proc/PID/ns/net`), checks that it is one and
/// that it is not the caller's own.
pub fn open_netns(path: &Path) -> Result<File, KernelError> {
    let f = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => KernelError::NetnsMissing(path.to_owned()),
        _ => KernelError::Io {
            what: format!("opening {path:?}"),
            source: e,
        },
    })?;
    check_is_netns(&f, path)?;
    if is_own_netns(&f, path)? {
        return Err(KernelError::OwnNetns(path.to_owned()));
    }
    Ok(f)
}

fn check_is_netns(f: &File, path: &Path) -> Result<(), KernelError> {
    let not = |what: &str| KernelError::NotNetns {
        path: path.to_owned(),
        what: what.to_owned(),
    };
    let st = fstatfs(f.as_fd()).map_err(|e| KernelError::Io {
        what: format!("statfs {path:?}"),
        source: e.into(),
    })?;
    if st.filesystem_type() != NSFS_MAGIC {
        return Err(not("not a namespace at all"));
    }
    // Every kind of namespace lives on nsfs; only the ioctl tells them apart.
    match ns_type(f) {
        Ok(t) if t == libc::CLONE_NEWNET => Ok(()),
        Ok(t) => Err(not(&format!("a {} namespace", ns_kind(t)))),
        // Kernels before 4.11 lack the ioctl: nsfs is all we can check.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL)) => Ok(()),
        Err(e) => Err(KernelError::Io {
            what: format!("asking the namespace type of {path:?}"),
            source: e,
        }),
    }
}

fn ns_type(f: &File) -> std::io::Result<i32> {
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the descriptor,
    // which `f` keeps open for the duration of the call.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::NS_GET_NSTYPE) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn ns_kind(t: i32) -> &'static str {
    match t {
        libc::CLONE_NEWUTS => "uts",
        libc::CLONE_NEWIPC => "ipc",
        libc::CLONE_NEWNS => "mount",
        libc::CLONE_NEWPID => "pid",
        libc::CLONE_NEWUSER => "user",
        libc::CLONE_NEWCGROUP => "cgroup",
        libc::CLONE_NEWTIME => "time",
        _ => "non-network",
    }
}

/// Whether `f` is the namespace this process lives in. No thread of the
/// agent stays in another namespace, so the process's is the one to compare.
fn is_own_netns(f: &File, path: &Path) -> Result<bool, KernelError> {
    let theirs = f
        .metadata()
        .map_err(KernelError::io(format!("stat {path:?}")))?;
    let ours = std::fs::metadata("/proc/self/ns/net")
        .map_err(KernelError::io("stat /proc/self/ns/net"))?;
    Ok((theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()))
}

/// A netlink socket that lives in namespace `ns`. A socket stays in the
/// namespace it was created in, so a short-lived thread enters `ns`, opens
/// it and exits; no thread of the agent ever changes namespace for longer.
pub(crate) fn socket_in(ns: &File) -> Result<TokioSocket, KernelError> {
    // A thread the system refuses (a pids limit) is an error, not a panic.
    let fd = std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("netns".into())
            .spawn_scoped(s, || -> std::io::Result<i32> {
                setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)?;
                let sock = Socket::new(NETLINK_ROUTE)?;
                Ok(sock.into_raw_fd())
            })?
            .join()
            .map_err(|_| std::io::Error::other("the namespace thread failed"))?
    })
    .map_err(KernelError::io(
        "opening a netlink socket in the container namespace",
    ))?;
    // SAFETY: `fd` was just created by `Socket::new` and is owned by no one else.
    Ok(unsafe { TokioSocket::from_raw_fd(fd) })
}
