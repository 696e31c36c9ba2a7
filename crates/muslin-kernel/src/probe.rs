//! The connectivity probe: a tiny echo server and a client that checks one
//! protocol at a time. It exists so tests and `muslin lab check` need no
//! outside tools and can test protocols beyond TCP, UDP and ICMP: raw IP
//! protocol 253 (reserved for experiments, RFC 3692) shows that every IP
//! protocol is carried, not only the ones a proxy or NAT understands.

use std::io::{self, BufRead, BufReader, Write};
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use std::os::fd::AsRawFd;

use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    SockaddrIn,
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

pub const DEFAULT_PORT: u16 = 7777;
/// RFC 3692 experimental protocol number.
pub const RAW_PROTO: i32 = 253;

/// Why a probe failed: which protocol, to whom, and what happened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{proto} to {target}: {reason}")]
pub struct ProbeError {
    pub proto: &'static str,
    pub target: IpAddr,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Raw,
}

impl Proto {
    pub const ALL: [Proto; 4] = [Proto::Tcp, Proto::Udp, Proto::Icmp, Proto::Raw];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            "icmp" => Proto::Icmp,
            "ip253" | "raw" => Proto::Raw,
            _ => return None,
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
pub fn serve(port: u16) -> io::Result<()> {
    let any = SocketAddr::from(([0, 0, 0, 0], port));
    let tcp = TcpListener::bind(any)?;
    let udp = UdpSocket::bind(any)?;
    let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(RAW_PROTO)))?;
    std::thread::spawn(move || {
        for stream in tcp.incoming().flatten() {
            std::thread::spawn(move || echo_tcp(stream));
        }
    });
    setsockopt(&udp, sockopt::Ipv4PacketInfo, &true)?;
    std::thread::spawn(move || echo_udp(&udp));
    println!("ready");
    io::stdout().flush()?;
    let mut buf = [0u8; 2048];
    loop {
        let (n, _) = recv_from(&raw, &mut buf)?;
        let pkt = &buf[..n];
        // Answer from the address the query was sent to (see echo_udp).
        if let (Some(r), Some(IpAddr::V4(src)), Some(dst)) = (
            ipv4_payload(pkt).and_then(reply_for),
            source_of(pkt),
            pkt.get(16..20),
        ) {
            let to = SockaddrIn::from(std::net::SocketAddrV4::new(src, 0));
            let local = libc::in_addr {
                s_addr: u32::from_ne_bytes(dst.try_into().expect("4 bytes")),
            };
            send_from(raw.as_raw_fd(), &r, &to, Some(local));
        }
    }
}

/// Echoes query lines; `MSLD<n>` asks for n bytes, `MSLU<n>` announces n
/// bytes that are then read and acknowledged with `MSLK<n>` (bulk transfers
/// prove that large packets cross the path, not only pings).
fn echo_tcp(stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut w) = stream.try_clone() else {
        return;
    };
    let mut r = BufReader::new(stream);
    let mut line = Vec::new();
    while matches!(r.read_until(b'\n', &mut line), Ok(n) if n > 0) {
        let text = String::from_utf8_lossy(&line).trim().to_string();
        let bulk = |p: &str| text.strip_prefix(p).and_then(|n| n.parse::<u64>().ok());
        if let Some(n) = bulk("MSLD") {
            let chunk = [0x5au8; 64 * 1024];
            let mut left = n;
            while left > 0 {
                let k = left.min(chunk.len() as u64) as usize;
                if w.write_all(&chunk[..k]).is_err() {
                    return;
                }
                left -= k as u64;
            }
            return;
        }
        if let Some(n) = bulk("MSLU") {
            let got = io::copy(&mut io::Read::take(&mut r, n), &mut io::sink()).unwrap_or(0);
            let _ = w.write_all(format!("MSLK{got}\n").as_bytes());
            return;
        }
        match reply_for(&line) {
            Some(rep) if w.write_all(&rep).is_ok() => {}
            _ => return,
        }
        line.clear();
    }
}

/// Moves `bytes` to the target (`upload`) or from it over one TCP
/// connection; returns how long it took.
pub fn transfer(
    target: IpAddr,
    port: u16,
    bytes: u64,
    upload: bool,
    timeout: Duration,
) -> Result<Duration, ProbeError> {
    transfer_from(target, port, None, bytes, upload, timeout)
}

/// [`transfer`] from a fixed local port: two such transfers between
/// the same addresses in two networks are the same flow, which only
/// separate conntrack zones keep apart.
pub fn transfer_from(
    target: IpAddr,
    port: u16,
    source_port: Option<u16>,
    bytes: u64,
    upload: bool,
    timeout: Duration,
) -> Result<Duration, ProbeError> {
    let start = Instant::now();
    let fail = |reason: String| ProbeError {
        proto: "tcp",
        target,
        reason,
    };
    let to = SocketAddr::new(target, port);
    let mut s = match source_port {
        None => TcpStream::connect_timeout(&to, timeout),
        Some(sp) => (|| {
            let sock = socket2::Socket::new(
                socket2::Domain::for_address(to),
                socket2::Type::STREAM,
                None,
            )?;
            sock.set_reuse_address(true)?;
            let any: IpAddr = match target {
                IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
                IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
            };
            sock.bind(&SocketAddr::new(any, sp).into())?;
            sock.connect_timeout(&to.into(), timeout)?;
            Ok(TcpStream::from(sock))
        })(),
    }
    .map_err(|e: io::Error| fail(format!("connect: {e}")))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| fail(e.to_string()))?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| fail(e.to_string()))?;
    if upload {
        s.write_all(format!("MSLU{bytes}\n").as_bytes())
            .map_err(|e| fail(format!("send: {e}")))?;
        let chunk = [0xa5u8; 64 * 1024];
        let mut left = bytes;
        while left > 0 {
            let k = left.min(chunk.len() as u64) as usize;
            s.write_all(&chunk[..k])
                .map_err(|e| fail(format!("upload after {} bytes: {e}", bytes - left)))?;
            left -= k as u64;
        }
        let mut ack = String::new();
        BufReader::new(&s)
            .read_line(&mut ack)
            .map_err(|e| fail(format!("ack: {e}")))?;
        if ack.trim() != format!("MSLK{bytes}") {
            return Err(fail(format!(
                "server acknowledged {:?} of {bytes} bytes",
                ack.trim()
            )));
        }
    } else {
        s.write_all(format!("MSLD{bytes}\n").as_bytes())
            .map_err(|e| fail(format!("send: {e}")))?;
        let got = io::copy(&mut s, &mut io::sink()).map_err(|e| fail(format!("download: {e}")))?;
        if got != bytes {
            return Err(fail(format!("received {got} of {bytes} bytes")));
        }
    }
    Ok(start.elapsed())
}

/// Sends `count` ICMP echoes, one every `interval`, and counts the answers
/// (each may arrive up to a second late): loss during an event shows here.
pub fn ping_series(
    target: IpAddr,
    count: u16,
    interval: Duration,
) -> Result<(u16, u16), ProbeError> {
    let log = ping_log(target, interval, |sent| sent >= usize::from(count))?;
    Ok((log.sent() as u16, log.received() as u16))
}

/// Which echoes of a series were answered, in the order they were sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PingLog {
    pub interval: Duration,
    pub answered: Vec<bool>,
}

impl PingLog {
    pub fn sent(&self) -> usize {
        self.answered.len()
    }

    pub fn received(&self) -> usize {
        self.answered.iter().filter(|a| **a).count()
    }

    pub fn lost(&self) -> usize {
        self.sent() - self.received()
    }

    /// The longest run of consecutive unanswered echoes among those sent
    /// in `range` (indices): (first index, length). An outage lasts about
    /// length x interval, whatever the loss around it.
    pub fn longest_loss_run(&self, range: std::ops::Range<usize>) -> (usize, usize) {
        let range = range.start.min(self.sent())..range.end.min(self.sent());
        let (mut best, mut run_start, mut run) = ((range.start, 0), range.start, 0);
        for i in range {
            if self.answered[i] {
                run = 0;
                continue;
            }
            if run == 0 {
                run_start = i;
            }
            run += 1;
            if run > best.1 {
                best = (run_start, run);
            }
        }
        best
    }

    /// How many echoes were sent before `t` had passed since the first.
    pub fn index_at(&self, t: Duration) -> usize {
        let k = t.as_nanos() / self.interval.as_nanos().max(1);
        usize::try_from(k).unwrap_or(usize::MAX).min(self.sent())
    }
}

/// Sends an ICMP echo every `interval` until `done(sent so far)` (at most
/// 65,536: sequence numbers are 16 bits), then waits a second for late
/// answers. Echo k leaves at k x interval after the first, so an index
/// in the log is a time.
pub fn ping_log(
    target: IpAddr,
    interval: Duration,
    done: impl Fn(usize) -> bool,
) -> Result<PingLog, ProbeError> {
    let fail = |reason: String| ProbeError {
        proto: "icmp",
        target,
        reason,
    };
    let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
        .map_err(|e| fail(e.to_string()))?;
    let id = (nonce() & 0xffff) as u16;
    let to = SockAddr::from(SocketAddr::new(target, 0));
    let mut answered: Vec<bool> = Vec::new();
    let start = Instant::now();
    let mut buf = [0u8; 2048];
    let at = |k: usize| start + interval * u32::try_from(k).unwrap_or(u32::MAX);
    let mut end: Option<Instant> = None;
    while end.is_none_or(|e| Instant::now() < e) {
        let sending = end.is_none();
        if sending && (done(answered.len()) || answered.len() > usize::from(u16::MAX)) {
            // From the last echo as sent, not as planned: a pinger that
            // fell behind still waits a second for its last answers.
            end = Some(Instant::now().max(at(answered.len().max(1))) + Duration::from_secs(1));
            continue;
        }
        if sending && Instant::now() >= at(answered.len()) {
            let seq = answered.len() as u16;
            s.send_to(&icmp_echo(id, seq, b"muslin"), &to)
                .map_err(|e| fail(format!("send: {e}")))?;
            answered.push(false);
            continue;
        }
        let next = end.unwrap_or_else(|| at(answered.len()));
        let wait = next
            .saturating_duration_since(Instant::now())
            .max(Duration::from_micros(100));
        s.set_read_timeout(Some(wait))
            .map_err(|e| fail(e.to_string()))?;
        if let Ok((k, _)) = recv_from(&s, &mut buf) {
            let pkt = &buf[..k];
            if let (Some(src), Some(icmp)) = (source_of(pkt), ipv4_payload(pkt)) {
                if src == target
                    && icmp.len() >= 8
                    && icmp[0] == 0
                    && icmp[4..6] == id.to_be_bytes()
                {
                    let seq = usize::from(u16::from_be_bytes([icmp[6], icmp[7]]));
                    if let Some(a) = answered.get_mut(seq) {
                        *a = true;
                    }
                }
            }
        }
    }
    Ok(PingLog { interval, answered })
}

/// Answers each datagram from the address it was sent to: on a host with
/// several addresses the kernel would otherwise pick the source by route,
/// and the client's connected socket would drop the answer.
fn echo_udp(udp: &UdpSocket) {
    let fd = udp.as_raw_fd();
    let mut buf = [0u8; 2048];
    loop {
        let mut cmsg = nix::cmsg_space!(libc::in_pktinfo);
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let Ok(msg) = recvmsg::<SockaddrIn>(fd, &mut iov, Some(&mut cmsg), MsgFlags::empty())
        else {
            return;
        };
        let (n, from) = (msg.bytes, msg.address);
        let local = msg.cmsgs().ok().and_then(|mut c| {
            c.find_map(|m| match m {
                ControlMessageOwned::Ipv4PacketInfo(i) => Some(i.ipi_addr),
                _ => None,
            })
        });
        let (Some(from), Some(r)) = (from, reply_for(&buf[..n])) else {
            continue;
        };
        send_from(fd, &r, &from, local);
    }
}

/// Sends `payload` to `to` with `local` as the source address when known.
fn send_from(fd: i32, payload: &[u8], to: &SockaddrIn, local: Option<libc::in_addr>) {
    let info = libc::in_pktinfo {
        ipi_ifindex: 0,
        ipi_spec_dst: local.unwrap_or(libc::in_addr { s_addr: 0 }),
        ipi_addr: libc::in_addr { s_addr: 0 },
    };
    let cm = [ControlMessage::Ipv4PacketInfo(&info)];
    let cmsgs: &[ControlMessage] = if local.is_some() { &cm } else { &[] };
    let _ = sendmsg(
        fd,
        &[io::IoSlice::new(payload)],
        cmsgs,
        MsgFlags::empty(),
        Some(to),
    );
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
pub fn check(
    target: IpAddr,
    port: u16,
    proto: Proto,
    timeout: Duration,
) -> Result<Duration, ProbeError> {
    let start = Instant::now();
    let res = match proto {
        Proto::Tcp => check_tcp(target, port, timeout),
        Proto::Udp => check_udp(target, port, timeout),
        Proto::Raw => check_raw(target, timeout),
        Proto::Icmp => check_icmp(None, target, timeout),
    };
    res.map(|_| start.elapsed()).map_err(|reason| ProbeError {
        proto: proto.name(),
        target,
        reason,
    })
}

/// What a resolver answered for a name's A records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsAnswer {
    /// `NOERROR`, `NXDOMAIN`, ...
    pub rcode: String,
    pub addresses: Vec<IpAddr>,
}

/// Asks `resolver` (UDP port 53) for the A records of `name` (tried as
/// given, absolute: no search list), at most `tries` times, waiting
/// `timeout` for each answer. A name the resolver does not know is an
/// answer (NXDOMAIN, no addresses); silence is the error.
pub fn resolve(
    resolver: IpAddr,
    name: &str,
    timeout: Duration,
    tries: u32,
) -> Result<DnsAnswer, ProbeError> {
    let fail = |reason: String| ProbeError {
        proto: "dns",
        target: resolver,
        reason,
    };
    let id = (nonce() & 0xffff) as u16;
    let query = dns_query(id, name).map_err(fail)?;
    let s = UdpSocket::bind(SocketAddr::new(unspecified(resolver), 0))
        .map_err(io("bind"))
        .map_err(fail)?;
    s.connect(SocketAddr::new(resolver, 53))
        .map_err(io("connect"))
        .map_err(fail)?;
    let mut buf = [0u8; 4096];
    let mut last = String::from("no answer");
    for _ in 0..tries.max(1) {
        s.send(&query).map_err(io("send")).map_err(fail)?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                last = format!("no answer within {} ms", timeout.as_millis());
                break;
            }
            s.set_read_timeout(Some(left))
                .map_err(io("socket"))
                .map_err(fail)?;
            match s.recv(&mut buf) {
                Ok(k) => match dns_answer(id, &buf[..k]) {
                    // Not the answer to this query: a late one of a try before.
                    None => continue,
                    Some(a) => return Ok(a),
                },
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                // ICMP port unreachable: nothing listens there; try again.
                Err(e) => {
                    last = format!("receive: {e}");
                    std::thread::sleep(left.min(RESEND));
                    break;
                }
            }
        }
    }
    Err(fail(last))
}

/// A recursive query for `name`'s A records with message id `id`.
fn dns_query(id: u16, name: &str) -> Result<Vec<u8>, String> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    let mut qname = Name::from_ascii(name).map_err(|e| format!("{name:?}: {e}"))?;
    qname.set_fqdn(true);
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(qname, RecordType::A));
    m.to_vec().map_err(|e| format!("encoding the query: {e}"))
}

/// The answer in `packet` if it answers query `id`.
fn dns_answer(id: u16, packet: &[u8]) -> Option<DnsAnswer> {
    use hickory_proto::op::{Message, MessageType};
    let m = Message::from_vec(packet).ok()?;
    if m.metadata.id != id || m.metadata.message_type != MessageType::Response {
        return None;
    }
    Some(DnsAnswer {
        rcode: match u16::from(m.metadata.response_code) {
            0 => "NOERROR".into(),
            1 => "FORMERR".into(),
            2 => "SERVFAIL".into(),
            3 => "NXDOMAIN".into(),
            4 => "NOTIMP".into(),
            5 => "REFUSED".into(),
            n => format!("RCODE{n}"),
        },
        addresses: m.answers.iter().filter_map(|r| r.data.ip_addr()).collect(),
    })
}

fn io(what: &str) -> impl Fn(io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn check_tcp(target: IpAddr, port: u16, timeout: Duration) -> Result<(), String> {
    let n = nonce();
    let mut s = TcpStream::connect_timeout(&SocketAddr::new(target, port), timeout)
        .map_err(io("connect"))?;
    s.set_read_timeout(Some(timeout)).map_err(io("socket"))?;
    s.write_all(&query(n)).map_err(io("send"))?;
    let mut line = Vec::new();
    BufReader::new(&s)
        .read_until(b'\n', &mut line)
        .map_err(io("read"))?;
    if Some(line) != reply_for(&query(n)) {
        return Err("wrong echo".into());
    }
    Ok(())
}

fn check_udp(target: IpAddr, port: u16, timeout: Duration) -> Result<(), String> {
    let n = nonce();
    let s = UdpSocket::bind(SocketAddr::new(unspecified(target), 0)).map_err(io("bind"))?;
    s.connect(SocketAddr::new(target, port))
        .map_err(io("connect"))?;
    s.set_read_timeout(Some(RESEND)).map_err(io("socket"))?;
    let want = reply_for(&query(n));
    exchange(
        timeout,
        || s.send(&query(n)).map(|_| ()),
        |buf| {
            let k = s.recv(buf)?;
            Ok(Some(buf[..k].to_vec()) == want)
        },
    )
}

fn check_raw(target: IpAddr, timeout: Duration) -> Result<(), String> {
    let n = nonce();
    let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(RAW_PROTO)))
        .map_err(io("raw socket"))?;
    s.set_read_timeout(Some(RESEND)).map_err(io("socket"))?;
    let to = SockAddr::from(SocketAddr::new(target, 0));
    let want = reply_for(&query(n));
    exchange(
        timeout,
        || s.send_to(&query(n), &to).map(|_| ()),
        |buf| {
            let k = recv_from(&s, buf)?.0;
            let pkt = &buf[..k];
            Ok(source_of(pkt) == Some(target) && ipv4_payload(pkt).map(<[u8]>::to_vec) == want)
        },
    )
}

/// An ICMP echo from a chosen source address: verifies that `src` really
/// reaches `target`, which a route lookup alone does not.
pub fn ping_from(src: IpAddr, target: IpAddr, timeout: Duration) -> Result<Duration, ProbeError> {
    let start = Instant::now();
    check_icmp(Some(src), target, timeout)
        .map(|_| start.elapsed())
        .map_err(|reason| ProbeError {
            proto: "icmp",
            target,
            reason,
        })
}

fn check_icmp(src: Option<IpAddr>, target: IpAddr, timeout: Duration) -> Result<(), String> {
    let n = nonce();
    let s =
        Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).map_err(io("icmp socket"))?;
    if let Some(src) = src {
        s.bind(&SockAddr::from(SocketAddr::new(src, 0)))
            .map_err(io("bind"))?;
    }
    s.set_read_timeout(Some(RESEND)).map_err(io("socket"))?;
    let id = (n & 0xffff) as u16;
    let req = icmp_echo(id, 1, &n.to_be_bytes());
    let to = SockAddr::from(SocketAddr::new(target, 0));
    exchange(
        timeout,
        || s.send_to(&req, &to).map(|_| ()),
        |buf| {
            let k = recv_from(&s, buf)?.0;
            let pkt = &buf[..k];
            let ok = source_of(pkt) == Some(target)
                && ipv4_payload(pkt).is_some_and(|icmp| {
                    icmp.len() >= 16
                        && icmp[0] == 0
                        && icmp[4..6] == id.to_be_bytes()
                        && icmp[8..16] == n.to_be_bytes()
                });
            Ok(ok)
        },
    )
}

fn unspecified(t: IpAddr) -> IpAddr {
    match t {
        IpAddr::V4(_) => IpAddr::from([0, 0, 0, 0]),
        IpAddr::V6(_) => IpAddr::from([0u16; 8]),
    }
}

fn recv_from(s: &Socket, buf: &mut [u8]) -> io::Result<(usize, SockAddr)> {
    // SAFETY: MaybeUninit<u8> has u8's layout, and recv_from only writes.
    let b = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
    s.recv_from(b)
}

/// How long a datagram probe waits before sending again: the first packet
/// to a new neighbour may wait on ARP.
const RESEND: Duration = Duration::from_millis(250);

/// Sends, then reads until an answer matches or the deadline passes,
/// resending every [`RESEND`].
fn exchange(
    timeout: Duration,
    send: impl Fn() -> io::Result<()>,
    mut matches: impl FnMut(&mut [u8]) -> io::Result<bool>,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        send().map_err(io("send"))?;
        let resend_at = (Instant::now() + RESEND).min(deadline);
        while Instant::now() < resend_at {
            match matches(&mut buf) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    return Err("port unreachable".into())
                }
                Err(e) => return Err(format!("receive: {e}")),
            }
        }
    }
    Err(format!("no answer within {} ms", timeout.as_millis()))
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
    #[test]
    fn a_dns_answer_is_read_only_for_its_query() {
        use hickory_proto::op::{Message, ResponseCode};
        use hickory_proto::rr::rdata::A;
        use hickory_proto::rr::{Name, RData, Record};
        let q = dns_query(0x1234, "c1.h3.muslin.internal").unwrap();
        let asked = Message::from_vec(&q).unwrap();
        assert!(asked.metadata.recursion_desired);
        assert_eq!(asked.queries[0].name().to_ascii(), "c1.h3.muslin.internal.");
        let mut r = asked.clone().into_response();
        for a in ["10.244.2.3", "10.244.1.9"] {
            r.add_answer(Record::from_rdata(
                Name::from_ascii("c1.h3.muslin.internal.").unwrap(),
                5,
                RData::A(A(a.parse().unwrap())),
            ));
        }
        let got = dns_answer(0x1234, &r.to_vec().unwrap()).unwrap();
        assert_eq!(got.rcode, "NOERROR");
        assert_eq!(
            got.addresses,
            [
                "10.244.2.3".parse::<IpAddr>().unwrap(),
                "10.244.1.9".parse().unwrap()
            ]
        );
        // Another query's answer, or a query, is not the answer.
        assert_eq!(dns_answer(0x1235, &r.to_vec().unwrap()), None);
        assert_eq!(dns_answer(0x1234, &q), None);
        assert_eq!(dns_answer(0x1234, b"junk"), None);
        let mut nx = asked.into_response();
        nx.metadata.response_code = ResponseCode::NXDomain;
        let got = dns_answer(0x1234, &nx.to_vec().unwrap()).unwrap();
        assert_eq!((got.rcode.as_str(), got.addresses.len()), ("NXDOMAIN", 0));
        assert!(dns_query(1, "bad name..x").is_err());
    }

    use super::*;

    #[test]
    fn a_ping_log_finds_the_longest_outage_within_a_window() {
        let log = PingLog {
            interval: Duration::from_millis(10),
            answered: [1, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0]
                .iter()
                .map(|a| *a == 1)
                .collect(),
        };
        assert_eq!((log.sent(), log.received(), log.lost()), (14, 4, 10));
        assert_eq!(log.longest_loss_run(0..14), (10, 4), "the tail counts");
        assert_eq!(log.longest_loss_run(0..9), (3, 3));
        assert_eq!(log.longest_loss_run(4..6), (4, 2), "clipped to the window");
        assert_eq!(log.longest_loss_run(0..1), (0, 0), "no loss, no run");
        assert_eq!(log.longest_loss_run(20..30), (14, 0));
        assert_eq!(log.index_at(Duration::from_millis(35)), 3);
        assert_eq!(log.index_at(Duration::from_secs(9)), 14);
    }

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
        // Echo request id=1 seq=1 with no payload: 08 00 ?? ?? 00 01 00 01.
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
