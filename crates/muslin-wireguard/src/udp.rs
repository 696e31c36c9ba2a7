//! The UDP side: one dual-stack socket, with UDP GSO on send and UDP GRO on
//! receive, so a whole batch of WireGuard datagrams costs one syscall and
//! one pass of the kernel's UDP stack rather than one per datagram.

use std::io;
use std::mem::{size_of, zeroed, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// The kernel's UDP_MAX_SEGMENTS on the oldest kernels we meet (newer ones
/// allow 128); more segments in one send is EINVAL.
pub(crate) const MAX_GSO_SEGMENTS: usize = 64;
/// A GSO send is one UDP datagram to the stack until it is segmented, so
/// its payload must fit in one (with room for the IPv6 header).
pub(crate) const MAX_GSO_BYTES: usize = 65_000;

pub(crate) struct Udp {
    sock: UdpSocket,
    v6: bool,
    /// Cleared the first time the kernel refuses UDP_SEGMENT (old kernel,
    /// or an egress device that cannot checksum), after which batches go
    /// out one datagram per syscall.
    gso: AtomicBool,
}

impl Udp {
    /// Binds `port` (0: any) on all addresses: IPv6 with IPv4-mapped
    /// addresses when the namespace has IPv6, else IPv4 only. One socket
    /// keeps one receive thread and one GRO stream.
    pub(crate) fn bind(port: u16) -> io::Result<Udp> {
        let (sock, v6) = match bind_one(Domain::IPV6, port) {
            Ok(s) => (s, true),
            Err(_) => (bind_one(Domain::IPV4, port)?, false),
        };
        // GRO is an optimisation: a kernel without it still works, we just
        // get one datagram per read. The variables exist for the benchmark,
        // to measure what each offload buys.
        let on: libc::c_int = (std::env::var_os("MUSLIN_WG_NO_GRO").is_none()).into();
        // SAFETY: a valid socket and a c_int option value of the right size.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_UDP,
                libc::UDP_GRO,
                &on as *const _ as *const libc::c_void,
                size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        Ok(Udp {
            sock: sock.into(),
            v6,
            gso: AtomicBool::new(std::env::var_os("MUSLIN_WG_NO_GSO").is_none()),
        })
    }

    pub(crate) fn port(&self) -> u16 {
        self.sock.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    fn target(&self, a: SocketAddr) -> SockAddr {
        match a {
            SocketAddr::V4(v4) if self.v6 => SockAddr::from(SocketAddr::V6(SocketAddrV6::new(
                v4.ip().to_ipv6_mapped(),
                v4.port(),
                0,
                0,
            ))),
            a => SockAddr::from(a),
        }
    }

    pub(crate) fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<()> {
        if !self.v6 && to.is_ipv6() {
            return Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT));
        }
        self.sock.send_to(buf, to_std(&self.target(to))).map(|_| ())
    }

    /// Sends `buf` as datagrams of `seg` bytes (the last may be shorter).
    pub(crate) fn send_segments(&self, buf: &[u8], seg: usize, to: SocketAddr) -> io::Result<()> {
        if buf.len() <= seg {
            return self.send_to(buf, to);
        }
        if self.gso.load(Ordering::Relaxed) {
            match self.sendmsg_gso(buf, seg as u16, &self.target(to)) {
                Ok(()) => return Ok(()),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EIO)
                            | Some(libc::EINVAL)
                            | Some(libc::EOPNOTSUPP)
                            | Some(libc::ENOPROTOOPT)
                    ) =>
                {
                    tracing::info!("UDP GSO refused ({e}); sending datagram by datagram");
                    self.gso.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        for chunk in buf.chunks(seg) {
            self.send_to(chunk, to)?;
        }
        Ok(())
    }

    fn sendmsg_gso(&self, buf: &[u8], seg: u16, to: &SockAddr) -> io::Result<()> {
        // u64 storage keeps the control buffer aligned for cmsghdr.
        let mut control = [0u64; 4];
        let mut iov = libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: every pointer in msg refers to a live local for the whole
        // call, and the control buffer is large enough for one u16 cmsg
        // (CMSG_SPACE(2) is 24 bytes on 64-bit, 16 on 32-bit).
        unsafe {
            let mut msg: libc::msghdr = zeroed();
            msg.msg_name = to.as_ptr() as *mut libc::c_void;
            msg.msg_namelen = to.len();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = libc::UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, seg);
            if libc::sendmsg(self.fd(), &msg, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// One read, without blocking. Returns the bytes read, the size of the
    /// datagrams GRO glued together (== bytes when it did not), and the
    /// sender.
    pub(crate) fn recv(
        &self,
        buf: &mut [MaybeUninit<u8>],
    ) -> io::Result<(usize, usize, SocketAddr)> {
        let mut control = [0u64; 8];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: as in sendmsg_gso; the kernel writes at most the lengths
        // we give it, and we read cmsgs only through the CMSG_* walkers.
        unsafe {
            let mut from: libc::sockaddr_storage = zeroed();
            let mut msg: libc::msghdr = zeroed();
            msg.msg_name = &mut from as *mut _ as *mut libc::c_void;
            msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = size_of::<[u64; 8]>() as _;
            let n = libc::recvmsg(self.fd(), &mut msg, libc::MSG_DONTWAIT);
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = n as usize;
            let mut seg = n;
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                    let s = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                    if s > 0 {
                        seg = s as usize;
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
            let addr = SockAddr::new(from, msg.msg_namelen)
                .as_socket()
                .map(canonical)
                .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
            Ok((n, seg, addr))
        }
    }
}

fn bind_one(domain: Domain, port: u16) -> io::Result<Socket> {
    let s = Socket::new(domain, Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
    let addr: SocketAddr = if domain == Domain::IPV6 {
        s.set_only_v6(false)?;
        SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0).into()
    } else {
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into()
    };
    s.bind(&addr.into())?;
    Ok(s)
}

fn to_std(a: &SockAddr) -> SocketAddr {
    a.as_socket().expect("built from a SocketAddr")
}

/// Peers are configured (and shown by `wg`) with IPv4 addresses; the
/// dual-stack socket reports them IPv4-mapped.
pub(crate) fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => a,
        },
        a => a,
    }
}
