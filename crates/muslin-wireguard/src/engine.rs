//! The data path: WireGuard's protocol core (gotatun's `noise::Tunn`) with
//! our own batched I/O on three plain threads.
//!
//! * TX: one TUN read yields a TSO super-packet (up to 64 KB), split into
//!   MTU-sized segments; segments for one peer are encrypted under one
//!   lock of that peer and leave in one `sendmsg` with UDP_SEGMENT.
//! * RX: one UDP read yields up to 64 KB of datagrams the kernel glued
//!   together (UDP_GRO); datagrams for one session are decrypted under one
//!   lock, checked against the peer's allowed IPs, and the plaintext goes
//!   to the TUN in one GRO-coalesced batch.
//! * Timers: every [`TICK`], each peer's handshake, rekey and keepalive
//!   timers run, as WireGuard's state machine expects.
//!
//! Configuration is a snapshot (`Arc<Snapshot>`) that writers replace and
//! the threads pick up once per batch, so the data path takes no
//! device-wide lock; a peer's own lock is taken once per batch.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use gotatun::noise::handshake::parse_handshake_anon;
use gotatun::noise::index_table::IndexTable;
use gotatun::noise::rate_limiter::RateLimiter;
use gotatun::noise::{Tunn, TunnResult};
use gotatun::packet::{Packet, WgKind};
use gotatun::tun::MtuWatcher;
use gotatun::x25519;
use ipnet::IpNet;
use tun_rs::{GROTable, SyncDevice, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use crate::routes::{packet_addr, unpadded, Routes};
use crate::udp::{Udp, MAX_GSO_BYTES, MAX_GSO_SEGMENTS};

/// Timer resolution. WireGuard's timers are in seconds (rekey after 120 s,
/// retry a handshake after 5 s, keepalive after 10 s), so 100 ms is fine
/// grained enough and costs nothing.
const TICK: Duration = Duration::from_millis(100);
/// How long a blocked thread waits before looking at the stop flag and
/// for a new socket.
const POLL_MS: i32 = 100;
/// gotatun's own choice: handshakes per second before cookies are required.
const HANDSHAKE_RATE_LIMIT: u64 = 100;
/// UDP reads gathered into one RX batch; each holds up to ~45 datagrams.
const RX_READS: usize = 8;
const RX_BUF: usize = 65_536;

/// Our static key, and what is derived from it.
pub(crate) struct Identity {
    pub secret: x25519::StaticSecret,
    pub public: x25519::PublicKey,
    limiter: Arc<RateLimiter>,
}

impl Identity {
    fn new(secret: x25519::StaticSecret) -> Identity {
        let public = x25519::PublicKey::from(&secret);
        Identity {
            limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
            secret,
            public,
        }
    }
}

/// A peer's mutable state. TX, RX and the timers each take this lock once
/// per batch, never per packet.
pub(crate) struct PeerState {
    /// None while the device has no private key.
    pub tunn: Option<Tunn>,
    /// Configured, or where the last authenticated packet came from.
    pub endpoint: Option<SocketAddr>,
    pub keepalive: Option<u16>,
    pub psk: Option<[u8; 32]>,
    pub allowed: Vec<IpNet>,
}

pub(crate) struct Peer {
    pub public: [u8; 32],
    pub state: Mutex<PeerState>,
}

impl Peer {
    pub(crate) fn lock(&self) -> MutexGuard<'_, PeerState> {
        // A panic elsewhere must not take the whole data path down with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the data path reads: replaced wholesale on every change.
#[derive(Clone, Default)]
pub(crate) struct Snapshot {
    pub key: Option<Arc<Identity>>,
    /// Ordered so that `wg show` lists peers stably.
    pub peers: BTreeMap<[u8; 32], Arc<Peer>>,
    routes: Arc<Routes<Arc<Peer>>>,
}

pub(crate) struct Engine {
    tun: Arc<SyncDevice>,
    mtu: u16,
    udp: RwLock<Arc<Udp>>,
    udp_gen: AtomicU64,
    snap: RwLock<Arc<Snapshot>>,
    /// Our session and handshake indices, to find the peer of an incoming
    /// message (the receiver index is the sender index we chose).
    by_idx: Mutex<HashMap<u32, Arc<Peer>>>,
    index_table: IndexTable,
    /// Serializes configuration writers.
    config: Mutex<()>,
    stop: AtomicBool,
    dead: AtomicBool,
    pub(crate) dead_notify: tokio::sync::Notify,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// An editable copy of the snapshot, published when dropped by
/// [`Engine::configure`].
pub(crate) struct Config<'a> {
    engine: &'a Engine,
    pub snap: Snapshot,
}

impl Config<'_> {
    pub(crate) fn set_private_key(&mut self, key: Option<[u8; 32]>) {
        // `wg setconf` and friends resend the key with every change; only a
        // different key may end the sessions.
        if self.snap.key.as_ref().map(|id| id.secret.to_bytes()) == key {
            return;
        }
        let id = key.map(|k| Arc::new(Identity::new(x25519::StaticSecret::from(k))));
        if let Some(id) = &id {
            // WireGuard drops a peer whose key is our own.
            let own = *id.public.as_bytes();
            self.remove_peer(&own);
        }
        for peer in self.snap.peers.values() {
            let mut st = peer.lock();
            match (&id, st.tunn.as_mut()) {
                (None, _) => st.tunn = None,
                (Some(id), Some(t)) => {
                    t.set_static_private(id.secret.clone(), id.public, Arc::clone(&id.limiter))
                }
                (Some(id), None) => {
                    let t = self.engine.new_tunn(id, &peer.public, &st);
                    st.tunn = Some(t);
                }
            }
        }
        self.snap.key = id;
    }

    pub(crate) fn peer(&mut self, public: [u8; 32]) -> Arc<Peer> {
        if let Some(p) = self.snap.peers.get(&public) {
            return Arc::clone(p);
        }
        let mut st = PeerState {
            tunn: None,
            endpoint: None,
            keepalive: None,
            psk: None,
            allowed: Vec::new(),
        };
        if let Some(id) = &self.snap.key {
            st.tunn = Some(self.engine.new_tunn(id, &public, &st));
        }
        let p = Arc::new(Peer {
            public,
            state: Mutex::new(st),
        });
        self.snap.peers.insert(public, Arc::clone(&p));
        p
    }

    pub(crate) fn has_peer(&self, public: &[u8; 32]) -> bool {
        self.snap.peers.contains_key(public)
    }

    pub(crate) fn remove_peer(&mut self, public: &[u8; 32]) {
        if let Some(p) = self.snap.peers.remove(public) {
            // Dropping the tunnel frees its indices, so nothing more decrypts
            // with it even before the index map is next pruned.
            p.lock().tunn = None;
        }
    }

    pub(crate) fn remove_all_peers(&mut self) {
        let keys: Vec<_> = self.snap.peers.keys().copied().collect();
        for k in keys {
            self.remove_peer(&k);
        }
    }

    /// Gives `net` to `peer`, taking it from any other peer, as `wg` does.
    pub(crate) fn add_allowed(&mut self, peer: &Arc<Peer>, net: IpNet) {
        let net = net.trunc();
        for other in self.snap.peers.values() {
            if !Arc::ptr_eq(other, peer) {
                other.lock().allowed.retain(|n| *n != net);
            }
        }
        let mut st = peer.lock();
        if !st.allowed.contains(&net) {
            st.allowed.push(net);
        }
    }
}

impl Engine {
    pub(crate) fn start(tun: SyncDevice, mtu: u16, port: u16) -> io::Result<Arc<Engine>> {
        let udp = Udp::bind(port)?;
        let e = Arc::new(Engine {
            tun: Arc::new(tun),
            mtu,
            udp: RwLock::new(Arc::new(udp)),
            udp_gen: AtomicU64::new(0),
            snap: RwLock::new(Arc::new(Snapshot::default())),
            by_idx: Mutex::new(HashMap::new()),
            index_table: IndexTable::from_os_rng(),
            config: Mutex::new(()),
            stop: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            dead_notify: tokio::sync::Notify::new(),
            threads: Mutex::new(Vec::new()),
        });
        let mut threads = Vec::new();
        for (name, f) in [
            ("wg-tx", tx_loop as fn(&Engine)),
            ("wg-rx", rx_loop),
            ("wg-timers", timer_loop),
        ] {
            let e = Arc::clone(&e);
            threads.push(
                std::thread::Builder::new()
                    .name(name.into())
                    .spawn(move || f(&e))?,
            );
        }
        *e.threads.lock().unwrap() = threads;
        Ok(e)
    }

    /// Stops and joins the threads; the TUN closes when the last
    /// reference goes, which is what lets a persistent interface be
    /// reattached.
    pub(crate) fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let threads = std::mem::take(&mut *self.threads.lock().unwrap());
        for t in threads {
            let _ = t.join();
        }
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }

    fn die(&self, why: &io::Error) {
        tracing::error!("TUN failed, device stops: {why}");
        self.dead.store(true, Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
        self.dead_notify.notify_one();
    }

    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snap.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn udp(&self) -> Arc<Udp> {
        Arc::clone(&self.udp.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub(crate) fn listen_port(&self) -> u16 {
        self.udp().port()
    }

    /// Rebinds to `port`. 0, or the port already bound, keeps the socket.
    pub(crate) fn set_listen_port(&self, port: u16) -> io::Result<()> {
        if port == 0 || port == self.listen_port() {
            return Ok(());
        }
        let udp = Arc::new(Udp::bind(port)?);
        *self.udp.write().unwrap_or_else(|p| p.into_inner()) = udp;
        self.udp_gen.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Runs `f` on a copy of the configuration and publishes the result.
    pub(crate) fn configure<R>(&self, f: impl FnOnce(&mut Config<'_>) -> R) -> R {
        let _writer = self.config.lock().unwrap_or_else(|p| p.into_inner());
        let mut c = Config {
            engine: self,
            snap: (*self.snapshot()).clone(),
        };
        let r = f(&mut c);
        let mut routes = Routes::default();
        for p in c.snap.peers.values() {
            for n in &p.lock().allowed {
                routes.insert(*n, Arc::clone(p));
            }
        }
        c.snap.routes = Arc::new(routes);
        *self.snap.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(c.snap);
        r
    }

    fn new_tunn(&self, id: &Identity, public: &[u8; 32], st: &PeerState) -> Tunn {
        Tunn::new(
            id.secret.clone(),
            x25519::PublicKey::from(*public),
            st.psk,
            st.keepalive,
            self.index_table.clone(),
            Arc::clone(&id.limiter),
        )
    }

    fn register(&self, p: &WgKind, peer: &Arc<Peer>) {
        let idx = match p {
            WgKind::HandshakeInit(h) => h.sender_idx.get(),
            WgKind::HandshakeResp(h) => h.sender_idx.get(),
            _ => return,
        };
        self.by_idx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(idx, Arc::clone(peer));
    }

    fn peer_by_idx(&self, idx: u32) -> Option<Arc<Peer>> {
        self.by_idx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&idx)
            .cloned()
    }

    /// Sends a handshake initiation to every peer without a session;
    /// returns those peers, to wait for.
    pub(crate) fn initiate_handshakes(&self) -> Vec<Arc<Peer>> {
        let udp = self.udp();
        let mut pending = Vec::new();
        for peer in self.snapshot().peers.values() {
            let mut st = peer.lock();
            let ep = st.endpoint;
            let Some(t) = st.tunn.as_mut() else { continue };
            if t.has_active_session() {
                continue;
            }
            pending.push(Arc::clone(peer));
            let (Some(init), Some(ep)) = (t.format_handshake_initiation(false), ep) else {
                continue;
            };
            let init = WgKind::from(init);
            self.register(&init, peer);
            drop(st);
            let p: Packet = init.into();
            let _ = udp.send_to(&p, ep);
        }
        pending
    }
}

/// Waits until `fd` is readable, for at most [`POLL_MS`].
fn readable(fd: RawFd) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, POLL_MS) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    if p.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
        return Err(io::Error::from_raw_os_error(libc::EIO));
    }
    Ok(n > 0)
}

fn tun_fatal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADF) | Some(libc::EBADFD) | Some(libc::ENODEV) | Some(libc::EIO)
    )
}

/// Encrypted datagrams waiting to be sent, cut into runs that one
/// UDP_SEGMENT send can carry: equal sizes, the last possibly shorter.
#[derive(Default)]
struct Datagrams {
    buf: Vec<u8>,
    /// (start, end, segment size) of each run.
    runs: Vec<(usize, usize, usize)>,
    count: usize,
    closed: bool,
}

impl Datagrams {
    fn clear(&mut self) {
        self.buf.clear();
        self.runs.clear();
        self.closed = true;
    }

    fn push(&mut self, d: &[u8]) {
        let len = d.len();
        let start = self.buf.len();
        let extend = match self.runs.last() {
            Some(&(s, e, seg)) if !self.closed => {
                self.count < MAX_GSO_SEGMENTS && e - s + len <= MAX_GSO_BYTES && len <= seg
            }
            _ => false,
        };
        self.buf.extend_from_slice(d);
        if extend {
            let r = self.runs.last_mut().expect("checked above");
            r.1 = self.buf.len();
            self.count += 1;
            self.closed = len < r.2;
        } else {
            self.runs.push((start, self.buf.len(), len));
            self.count = 1;
            self.closed = false;
        }
    }

    fn send(&self, udp: &Udp, to: SocketAddr) {
        for &(s, e, seg) in &self.runs {
            if let Err(err) = udp.send_segments(&self.buf[s..e], seg, to) {
                tracing::trace!("UDP send to {to}: {err}");
            }
        }
    }
}

fn tx_loop(e: &Engine) {
    let fd = e.tun.as_raw_fd();
    let mut raw = vec![0u8; VIRTIO_NET_HDR_LEN + 65_535];
    // Zeroed pages are not touched until written, so the full-size
    // buffers cost little more than MTU-sized ones would.
    let mut bufs: Vec<Vec<u8>> = (0..IDEAL_BATCH_SIZE).map(|_| vec![0u8; 65_535]).collect();
    let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
    let mut mtu = MtuWatcher::new(e.mtu);
    let mut out = Datagrams::default();
    let mut control: Vec<WgKind> = Vec::new();
    while !e.stop.load(Ordering::Relaxed) {
        match readable(fd) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(err) => return e.die(&err),
        }
        let n = match e.tun.recv_multiple(&mut raw, &mut bufs, &mut sizes, 0) {
            Ok(n) => n,
            Err(err) if tun_fatal(&err) => return e.die(&err),
            // WouldBlock, or a packet tun-rs could not split: drop it.
            Err(err) => {
                tracing::trace!("TUN read: {err}");
                continue;
            }
        };
        let snap = e.snapshot();
        let udp = e.udp();
        let mut i = 0;
        while i < n {
            let dst = packet_addr(&bufs[i][..sizes[i]], true);
            let Some(peer) = dst.and_then(|d| snap.routes.get(d)) else {
                i += 1;
                continue;
            };
            // A super-packet's segments share a destination; a plain batch
            // usually does too. Only a new address needs a new lookup.
            let mut j = i + 1;
            while j < n {
                let d = packet_addr(&bufs[j][..sizes[j]], true);
                if d != dst
                    && d.and_then(|d| snap.routes.get(d)).map(Arc::as_ptr)
                        != Some(Arc::as_ptr(peer))
                {
                    break;
                }
                j += 1;
            }
            out.clear();
            let ep = {
                let mut st = peer.lock();
                let ep = st.endpoint;
                if let Some(t) = st.tunn.as_mut() {
                    for k in i..j {
                        let p = Packet::from_bytes(BytesMut::from(&bufs[k][..sizes[k]]));
                        match t.handle_outgoing_packet(p, Some(&mut mtu)) {
                            Some(WgKind::Data(d)) => out.push(&Packet::from(d)),
                            Some(hs) => control.push(hs),
                            None => {}
                        }
                    }
                }
                ep
            };
            if let Some(ep) = ep {
                out.send(&udp, ep);
            }
            for hs in control.drain(..) {
                e.register(&hs, peer);
                if let Some(ep) = ep {
                    let p: Packet = hs.into();
                    let _ = udp.send_to(&p, ep);
                }
            }
            i = j;
        }
    }
}

/// Plaintext packets waiting for the TUN, each behind room for the virtio
/// header, as tun-rs's GRO wants them.
struct TunBatch {
    bufs: Vec<Vec<u8>>,
    n: usize,
    gro: GROTable,
}

impl TunBatch {
    fn push(&mut self, tun: &SyncDevice, p: &[u8]) {
        if self.n == self.bufs.len() {
            self.flush(tun);
        }
        let b = &mut self.bufs[self.n];
        b.clear();
        b.resize(VIRTIO_NET_HDR_LEN, 0);
        b.extend_from_slice(p);
        self.n += 1;
    }

    fn flush(&mut self, tun: &SyncDevice) {
        if self.n == 0 {
            return;
        }
        if let Err(err) =
            tun.send_multiple(&mut self.gro, &mut self.bufs[..self.n], VIRTIO_NET_HDR_LEN)
        {
            tracing::debug!("TUN write: {err}");
        }
        self.n = 0;
    }
}

fn rx_loop(e: &Engine) {
    let mut udp = e.udp();
    let mut gen = e.udp_gen.load(Ordering::Acquire);
    let mut rbuf = BytesMut::with_capacity((RX_READS + 1) * RX_BUF);
    let mut reads: Vec<(BytesMut, usize, SocketAddr)> = Vec::with_capacity(RX_READS);
    let mut items: Vec<(Packet, SocketAddr)> = Vec::with_capacity(IDEAL_BATCH_SIZE * 2);
    let mut tun = TunBatch {
        // tun-rs coalesces a flow into the buffer of its first segment and
        // refuses (writes segment by segment) when that buffer would have to
        // grow, so each must hold a full 64 KB super-packet up front.
        bufs: (0..IDEAL_BATCH_SIZE)
            .map(|_| Vec::with_capacity(2 * VIRTIO_NET_HDR_LEN + 65_535))
            .collect(),
        n: 0,
        gro: GROTable::default(),
    };
    let mut mtu = MtuWatcher::new(e.mtu);
    while !e.stop.load(Ordering::Relaxed) {
        let g = e.udp_gen.load(Ordering::Acquire);
        if g != gen {
            gen = g;
            udp = e.udp();
        }
        match readable(udp.fd()) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(err) => {
                tracing::warn!("UDP poll: {err}");
                std::thread::sleep(TICK);
                continue;
            }
        }
        let mut datagrams = 0;
        while reads.len() < RX_READS && datagrams + 45 < IDEAL_BATCH_SIZE * 2 {
            rbuf.reserve(RX_BUF);
            let spare = &mut rbuf.spare_capacity_mut()[..RX_BUF];
            match udp.recv(spare) {
                Ok((len, seg, from)) => {
                    // SAFETY: the kernel initialized the first `len` bytes.
                    unsafe { rbuf.set_len(len) };
                    reads.push((rbuf.split_to(len), seg, from));
                    datagrams += len.div_ceil(seg.max(1));
                }
                Err(err) => {
                    if err.kind() != io::ErrorKind::WouldBlock {
                        tracing::trace!("UDP recv: {err}");
                    }
                    break;
                }
            }
        }
        for (mut b, seg, from) in reads.drain(..) {
            while !b.is_empty() {
                let d = b.split_to(seg.min(b.len()));
                items.push((Packet::from_bytes(d), from));
            }
        }
        if items.is_empty() {
            continue;
        }
        let snap = e.snapshot();
        rx_batch(e, &snap, &udp, &mut items, &mut tun, &mut mtu);
        tun.flush(&e.tun);
    }
}

const WG_DATA: u8 = 4;

fn data_idx(p: &[u8]) -> Option<u32> {
    if p.len() >= 32 && p[0] == WG_DATA && p[1..4] == [0, 0, 0] {
        Some(u32::from_le_bytes(p[4..8].try_into().ok()?))
    } else {
        None
    }
}

fn rx_batch(
    e: &Engine,
    snap: &Snapshot,
    udp: &Udp,
    items: &mut Vec<(Packet, SocketAddr)>,
    tun: &mut TunBatch,
    mtu: &mut MtuWatcher,
) {
    let mut it = items.drain(..).peekable();
    let mut cached: Option<(u32, Arc<Peer>)> = None;
    while let Some((p, from)) = it.next() {
        let Some(idx) = data_idx(&p) else {
            rx_control(e, snap, udp, p, from, mtu);
            continue;
        };
        let peer = match &cached {
            Some((i, peer)) if *i == idx => Arc::clone(peer),
            _ => match e.peer_by_idx(idx) {
                Some(peer) => {
                    cached = Some((idx, Arc::clone(&peer)));
                    peer
                }
                None => continue,
            },
        };
        let mut st = peer.lock();
        let Some(t) = st.tunn.as_mut() else { continue };
        let mut last_ok = None;
        let mut next = Some((p, from));
        while let Some((p, from)) = next.take() {
            if let Ok(WgKind::Data(d)) = p.try_into_wg() {
                if let TunnResult::WriteToTunnel(plain) = t.handle_incoming_packet(WgKind::Data(d))
                {
                    last_ok = Some(from);
                    // Keepalives are empty; anything else must come from an
                    // address this peer is allowed to use (cryptokey routing).
                    if let Some(ip) = unpadded(&plain) {
                        let owner = packet_addr(ip, false).and_then(|s| snap.routes.get(s));
                        if owner.is_some_and(|o| Arc::ptr_eq(o, &peer)) {
                            tun.push(&e.tun, ip);
                        }
                    }
                }
            }
            if it.peek().is_some_and(|(q, _)| data_idx(q) == Some(idx)) {
                next = it.next();
            }
        }
        if last_ok.is_some() {
            st.endpoint = last_ok;
        }
    }
}

/// Handshake initiations and responses, cookie replies.
fn rx_control(
    e: &Engine,
    snap: &Snapshot,
    udp: &Udp,
    p: Packet,
    from: SocketAddr,
    mtu: &mut MtuWatcher,
) {
    let Some(id) = &snap.key else { return };
    let kind = match id.limiter.verify_packet(from, p) {
        Ok(k) => k,
        Err(TunnResult::WriteToNetwork(cookie)) => {
            let c: Packet = cookie.into();
            let _ = udp.send_to(&c, from);
            return;
        }
        Err(_) => return,
    };
    let peer = match &kind {
        WgKind::HandshakeInit(h) => parse_handshake_anon(&id.secret, &id.public, h)
            .ok()
            .and_then(|half| snap.peers.get(&half.peer_static_public).cloned()),
        WgKind::HandshakeResp(h) => e.peer_by_idx(h.receiver_idx.get()),
        WgKind::CookieReply(c) => e.peer_by_idx(c.receiver_idx.get()),
        WgKind::Data(d) => e.peer_by_idx(d.header.receiver_idx.get()),
    };
    let Some(peer) = peer else { return };
    let mut replies = Vec::new();
    {
        let mut st = peer.lock();
        let Some(t) = st.tunn.as_mut() else { return };
        match t.handle_incoming_packet(kind) {
            TunnResult::WriteToNetwork(reply) => {
                replies.push(reply);
                // Packets queued while there was no session go now.
                replies.extend(t.get_queued_packets(mtu));
                st.endpoint = Some(from);
            }
            TunnResult::WriteToTunnel(_) => st.endpoint = Some(from),
            TunnResult::Done | TunnResult::Err(_) => {}
        }
    }
    for r in replies {
        e.register(&r, &peer);
        let r: Packet = r.into();
        let _ = udp.send_to(&r, from);
    }
}

fn timer_loop(e: &Engine) {
    let mut last_prune = Instant::now();
    while !e.stop.load(Ordering::Relaxed) {
        std::thread::sleep(TICK);
        let snap = e.snapshot();
        let udp = e.udp();
        for peer in snap.peers.values() {
            let mut st = peer.lock();
            let ep = st.endpoint;
            let Some(t) = st.tunn.as_mut() else { continue };
            let out = match t.update_timers() {
                Ok(Some(p)) => p,
                Ok(None) => continue,
                Err(err) => {
                    tracing::trace!("timers: {err:?}");
                    continue;
                }
            };
            drop(st);
            e.register(&out, peer);
            if let Some(ep) = ep {
                let p: Packet = out.into();
                let _ = udp.send_to(&p, ep);
            }
        }
        if let Some(id) = &snap.key {
            id.limiter.try_reset_count();
        }
        if last_prune.elapsed() >= Duration::from_secs(1) {
            last_prune = Instant::now();
            // Indices of dropped sessions and abandoned handshakes.
            e.by_idx
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|i, _| e.index_table.in_use(*i));
        }
    }
}
