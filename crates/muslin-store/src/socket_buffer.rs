//! Receive buffers sized for bursts. A UDP socket's default buffer
//! (`net.core.rmem_default`, about 200 KiB) holds only about a hundred
//! small datagrams, since each is charged its whole kernel buffer. When
//! a hundred peers join at once, or the agent waits for the CPU a moment,
//! the rest are dropped: lost acks make live nodes look dead and working
//! paths look broken, and what follows (rejoins, relays) sends more.

use std::os::fd::AsRawFd;

/// What the gossip and probe sockets ask for: a burst of some thousand
/// small datagrams. Not more: an agent that falls behind for good would
/// only answer probes later and later (measured in the 100-host lab: up
/// to 7 MB queued), where a drop at least reads as a loss.
pub const RECEIVE_BUFFER: usize = 1 << 20;

/// Asks for at least `bytes` of receive buffer: past `net.core.rmem_max`
/// when the agent may (CAP_NET_ADMIN), else as much as the limit allows.
/// A larger buffer (a host's own `rmem_default`) is kept. Returns the
/// buffer's size as the kernel reports it: twice what was asked, the
/// other half for its bookkeeping.
pub fn widen(sock: &impl AsRawFd, bytes: usize) -> std::io::Result<usize> {
    let fd = sock.as_raw_fd();
    let now = get(fd, libc::SO_RCVBUF)?;
    if now >= bytes.saturating_mul(2) {
        return Ok(now);
    }
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    if set(fd, libc::SO_RCVBUFFORCE, v).is_err() {
        set(fd, libc::SO_RCVBUF, v)?;
    }
    get(fd, libc::SO_RCVBUF)
}

fn set(fd: libc::c_int, opt: libc::c_int, v: libc::c_int) -> std::io::Result<()> {
    // SAFETY: an int option of the right size on a descriptor we hold.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            &v as *const _ as *const libc::c_void,
            std::mem::size_of_val(&v) as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn get(fd: libc::c_int, opt: libc::c_int) -> std::io::Result<usize> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of_val(&v) as libc::socklen_t;
    // SAFETY: an int-sized buffer and its length, on a descriptor we hold.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            &mut v as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if rc == 0 {
        Ok(usize::try_from(v).unwrap_or(0))
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_gets_a_buffer_for_bursts() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let before = get(s.as_raw_fd(), libc::SO_RCVBUF).unwrap();
        let granted = widen(&s, RECEIVE_BUFFER).unwrap();
        assert!(granted >= before, "{granted} < {before}");
        // Past the host's limit where the test may go past it (root in
        // CI): the kernel reports twice what was asked.
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let forced = libc::c_int::try_from(RECEIVE_BUFFER).unwrap();
        if set(probe.as_raw_fd(), libc::SO_RCVBUFFORCE, forced).is_ok() {
            assert!(granted >= 2 * RECEIVE_BUFFER, "{granted}");
        }
        // Never made smaller.
        assert_eq!(widen(&s, 4096).unwrap(), granted);
    }
}
