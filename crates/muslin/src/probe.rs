//! The connectivity probe: a tiny echo server and a client that checks one
//! protocol at a time. It exists so tests and `muslin lab check` need no
//! outside tools and can test protocols beyond TCP, UDP and ICMP: raw IP
//! protocol 253 (reserved for experiments, RFC 3692) shows that every IP
//! protocol is carried, not only the ones a proxy or NAT understands.

use std::io::{BufRead, BufReader, Write};
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

pub const DEFAULT_PORT: u16 = 7777;
/// RFC 3692 experimental protocol number.
pub const RAW_PROTO: i32 = 253;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Raw,
}

impl Proto {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            "icmp" => Proto::Icmp,
            "ip253" | "raw" => Proto::Raw,
            other => bail!("unknown protocol {other:?}; expected tcp, udp, icmp or ip253"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
            Proto::Raw => "ip253",
        }
    }
}

fn nonce() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32)
}

fn query(n: u64) -> Vec<u8> {
    format!("MSLQ{n:016x}\n").into_bytes()
}

fn reply_for(q: &[u8]) -> Option<Vec<u8>> {
    let mut r = q.strip_prefix(b"MSLQ")?.to_vec();
    r.splice(0..0, *b"MSLR");
    Some(r)
}

/// Serves TCP and UDP echo on `port` and raw protocol 253 echo, until killed.
/// ICMP echo is answered by the kernel. Prints `ready` once listening.
pub fn serve(port: u16) -> Result<()> {
    let any = SocketAddr::from(([0, 0, 0, 0], port));
    let tcp = TcpListener::bind(any).with_context(|| format!("binding tcp/{port}"))?;
    let udp = UdpSocket::bind(any).with_context(|| format!("binding udp/{port}"))?;
    let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(RAW_PROTO)))
        .context("opening a raw socket for protocol 253 (needs root)")?;
    std::thread::spawn(move || {
        for stream in tcp.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let mut w = match stream.try_clone() {
                    Ok(w) => w,
                    Err(_) => return,
                };
                for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
                    let mut l = line;
                    l.push(b'\n');
                    match reply_for(&l) {
                        Some(r) if w.write_all(&r).is_ok() => {}
                        _ => break,
                    }
                }
            });
        }
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            if let Some(r) = reply_for(&buf[..n]) {
                let _ = udp.send_to(&r, from);
            }
        }
    });
    println!("ready");
    std::io::stdout().flush()?;
    let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
    loop {
        let (n, from) = raw.recv_from(&mut buf)?;
        // SAFETY: recv_from initialised the first n bytes.
        let pkt: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        if let Some(r) = ipv4_payload(&pkt).and_then(reply_for) {
            let _ = raw.send_to(&r, &from);
        }
    }
}

/// Raw IPv4 sockets deliver the IP header too.
fn ipv4_payload(pkt: &[u8]) -> Option<&[u8]> {
    let ihl = usize::from(*pkt.first()? & 0x0f) * 4;
    pkt.get(ihl..)
}

fn source_of(pkt: &[u8]) -> Option<IpAddr> {
    let b: [u8; 4] = pkt.get(12..16)?.try_into().ok()?;
    Some(IpAddr::from(b))
}

/// Checks one protocol against `target`; returns the round-trip time.
pub fn check(target: IpAddr, port: u16, proto: Proto, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    let n = nonce();
    match proto {
        Proto::Tcp => {
            let mut s = TcpStream::connect_timeout(&SocketAddr::new(target, port), timeout)
                .with_context(|| format!("tcp connect to {target}:{port}"))?;
            s.set_read_timeout(Some(timeout))?;
            s.write_all(&query(n))?;
            let mut line = Vec::new();
            BufReader::new(&s)
                .read_until(b'\n', &mut line)
                .context("tcp read")?;
            if Some(line) != reply_for(&query(n)) {
                bail!("tcp: wrong echo from {target}:{port}");
            }
        }
        Proto::Udp => {
            let s = UdpSocket::bind(SocketAddr::new(unspecified(target), 0))?;
            s.connect(SocketAddr::new(target, port))?;
            datagram_loop(
                timeout,
                || s.send(&query(n)).map(|_| ()),
                |buf| {
                    s.set_read_timeout(Some(Duration::from_millis(300)))?;
                    let k = s.recv(buf)?;
                    Ok(Some(buf[..k].to_vec()))
                },
                |got| Some(got.to_vec()) == reply_for(&query(n)),
            )
            .with_context(|| format!("udp echo from {target}:{port}"))?;
        }
        Proto::Raw => {
            let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(RAW_PROTO)))?;
            let to = SockAddr::from(SocketAddr::new(target, 0));
            let want = reply_for(&query(n));
            datagram_loop(
                timeout,
                || s.send_to(&query(n), &to).map(|_| ()),
                |buf| {
                    s.set_read_timeout(Some(Duration::from_millis(300)))?;
                    let k = recv(&s, buf)?;
                    let pkt = &buf[..k];
                    Ok((source_of(pkt) == Some(target))
                        .then(|| ipv4_payload(pkt).unwrap_or_default().to_vec()))
                },
                |got| Some(got.to_vec()) == want,
            )
            .with_context(|| format!("ip protocol 253 echo from {target}"))?;
        }
        Proto::Icmp => {
            let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
            let id = (n & 0xffff) as u16;
            let req = icmp_echo(id, 1, &n.to_be_bytes());
            let to = SockAddr::from(SocketAddr::new(target, 0));
            datagram_loop(
                timeout,
                || s.send_to(&req, &to).map(|_| ()),
                |buf| {
                    s.set_read_timeout(Some(Duration::from_millis(300)))?;
                    let k = recv(&s, buf)?;
                    let pkt = &buf[..k];
                    Ok((source_of(pkt) == Some(target))
                        .then(|| ipv4_payload(pkt).unwrap_or_default().to_vec()))
                },
                |icmp| {
                    icmp.len() >= 16
                        && icmp[0] == 0
                        && icmp[4..6] == id.to_be_bytes()
                        && icmp[8..16] == n.to_be_bytes()
                },
            )
            .with_context(|| format!("icmp echo from {target}"))?;
        }
    }
    Ok(start.elapsed())
}

fn unspecified(t: IpAddr) -> IpAddr {
    match t {
        IpAddr::V4(_) => IpAddr::from([0, 0, 0, 0]),
        IpAddr::V6(_) => IpAddr::from([0u16; 8]),
    }
}

fn recv(s: &Socket, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: MaybeUninit<u8> has u8's layout; recv only writes into it.
    let b = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
    s.recv(b)
}

/// Sends, then reads until a matching answer or the deadline, resending
/// every few hundred milliseconds (the first packet may wait on ARP).
fn datagram_loop(
    timeout: Duration,
    send: impl Fn() -> std::io::Result<()>,
    mut recv: impl FnMut(&mut [u8]) -> std::io::Result<Option<Vec<u8>>>,
    matches: impl Fn(&[u8]) -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        send()?;
        let resend_at = Instant::now() + Duration::from_millis(300);
        while Instant::now() < resend_at.min(deadline) {
            match recv(&mut buf) {
                Ok(Some(got)) if matches(&got) => return Ok(()),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    bail!("port unreachable")
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    bail!("no answer within {} ms", timeout.as_millis())
}

fn icmp_echo(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![8u8, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(payload);
    let sum = inet_checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_framing() {
        let q = query(0xabc);
        assert_eq!(reply_for(&q).unwrap(), b"MSLR0000000000000abc\n".to_vec());
        assert!(
            reply_for(b"MSLR0000").is_none(),
            "replies are never echoed again"
        );
    }

    #[test]
    fn checksum_of_known_packet() {
        // Echo request id=1 seq=1 with no payload: 0x08 00 ?? ?? 00 01 00 01.
        let p = icmp_echo(1, 1, &[]);
        assert_eq!(&p[2..4], &[0xf7, 0xfd]);
        assert_eq!(inet_checksum(&p), 0);
    }

    #[test]
    fn ipv4_header_is_skipped() {
        let mut pkt = vec![0x45u8; 20];
        pkt[12..16].copy_from_slice(&[10, 0, 0, 1]);
        pkt.extend_from_slice(b"hi");
        assert_eq!(ipv4_payload(&pkt).unwrap(), b"hi");
        assert_eq!(source_of(&pkt).unwrap().to_string(), "10.0.0.1");
    }
}
