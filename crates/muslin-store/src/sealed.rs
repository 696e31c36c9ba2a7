//! Gossip over UDP, sealed with the cluster secret (ChaCha20-Poly1305 with
//! a key derived from it): a host without the secret can neither read nor
//! inject state, and a captured frame replayed later is refused (the
//! sealed payload starts with its send time; see `freshness`). Frames
//! start with a kind byte; a secured node answers a plaintext or unreadable
//! frame with a short notice, so a node without (or with the wrong) secret
//! can be told why it cannot join. Notices are unauthenticated: they are
//! hints for the log and status, never a reason to stop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use sha2::{Digest, Sha256};

use crate::freshness::{now_ms, DropLog, Refused, ReplayGuard};

const PLAIN: u8 = 0;
/// Sealed without a send time: what agents before replay protection
/// sent. They speak the previous gossip, which this one cannot read:
/// reported, never accepted.
const SEALED: u8 = 1;
/// Sealed, the payload starting with its send time.
const SEALED_TS: u8 = 6;
const NEEDS_SECRET: u8 = 2;
const BAD_SECRET: u8 = 3;
const NONCE: usize = 12;
const MAX_DATAGRAM: usize = 65_507;
/// Datagrams, and bytes, waiting for the engine, at most: beyond, new
/// ones are dropped, as the kernel drops them from a full socket buffer.
/// Frames are queued before they are authenticated, so the bytes are
/// bounded too: a stranger's large datagrams cannot grow the agent.
const INBOX: usize = 1024;
const INBOX_BYTES: usize = 1 << 20;
/// What sealing adds to a message: the kind byte, the nonce, the send
/// time and the tag.
pub(crate) const SEALED_OVERHEAD: usize = 1 + NONCE + 8 + 16;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cluster-secret-file {path:?}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cluster-secret-file {0:?}: the secret must be at least 16 bytes")]
    TooShort(String),
}

/// Reads a secret file (surrounding white space ignored).
pub fn load_secret(path: &std::path::Path) -> Result<Vec<u8>, SecretError> {
    let p = path.display().to_string();
    let raw = std::fs::read(path).map_err(|source| SecretError::Read {
        path: p.clone(),
        source,
    })?;
    let s = String::from_utf8_lossy(&raw).trim().as_bytes().to_vec();
    if s.len() < 16 {
        return Err(SecretError::TooShort(p));
    }
    Ok(s)
}

pub(crate) fn cipher(secret: &[u8]) -> ChaCha20Poly1305 {
    let mut h = Sha256::new();
    h.update(b"muslin gossip v1\0");
    h.update(secret);
    ChaCha20Poly1305::new(Key::from_slice(&h.finalize()))
}

/// What the transport has learnt about authentication, for the agent.
#[derive(Default)]
pub struct AuthState {
    /// Set once an authenticated (or, without a secret, any valid) frame
    /// arrived from a peer.
    pub heard: std::sync::atomic::AtomicBool,
    /// When the last such frame arrived (ms since the epoch).
    pub heard_at_ms: AtomicU64,
    /// What an unauthenticated notice said, and when it was last logged.
    pub problem: Mutex<Option<(String, Instant)>>,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    /// Datagrams refused (unauthenticated, wrong secret, stale, replayed).
    pub dropped: AtomicU64,
}

/// While authenticated gossip arrives, notices (which anyone can forge)
/// are ignored.
const HEARD_RECENTLY_MS: u64 = 10_000;

impl AuthState {
    fn heard_recently(&self) -> bool {
        now_ms().saturating_sub(self.heard_at_ms.load(Ordering::Relaxed)) < HEARD_RECENTLY_MS
    }

    /// The latest hint of a secret problem, unless authenticated gossip is
    /// flowing (then it was forged, or is over).
    pub fn problem(&self) -> Option<String> {
        if self.heard_recently() {
            return None;
        }
        self.problem
            .lock()
            .expect("auth lock")
            .as_ref()
            .map(|(m, _)| m.clone())
    }
}

pub struct SealedUdp {
    pub secret: Option<Vec<u8>>,
    pub auth: Arc<AuthState>,
    /// Notices are unauthenticated: only the configured seeds' count, so a
    /// stray datagram cannot stop an agent from joining.
    pub seeds: Vec<SocketAddr>,
    /// Health probes share the gossip port; this answers them.
    pub probes: Arc<crate::probe_wire::ProbeWire>,
    pub redirects: Redirects,
}

/// Where to send gossip meant for a peer's advertised address that does
/// not answer while another of its addresses does (probes find out).
/// Without it, a node whose advertised address broke could never hear
/// the reports that tell it to move.
pub type Redirects = Arc<std::sync::RwLock<HashMap<SocketAddr, SocketAddr>>>;

impl SealedUdp {
    /// Binds the gossip socket.
    pub async fn bind(&self, listen: SocketAddr) -> anyhow::Result<SealedSocket> {
        let sock = tokio::net::UdpSocket::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("binding gossip socket {listen}: {e}"))?;
        match crate::socket_buffer::widen(&sock, crate::socket_buffer::RECEIVE_BUFFER) {
            Ok(b) => tracing::debug!(bytes = b, "gossip socket's receive buffer"),
            Err(e) => {
                tracing::warn!(cause = %e, "gossip socket keeps the default receive buffer: bursts may be dropped")
            }
        }
        let sock = Arc::new(sock);
        let (tx, inbox) = tokio::sync::mpsc::channel(INBOX);
        let queued = Arc::new(AtomicUsize::new(0));
        let reader = tokio::spawn(read(
            sock.clone(),
            self.probes.clone(),
            self.auth.clone(),
            tx,
            queued.clone(),
        ));
        Ok(SealedSocket {
            sock,
            inbox,
            queued,
            reader: Some(reader),
            cipher: self.secret.as_deref().map(cipher),
            auth: self.auth.clone(),
            seeds: self.seeds.clone(),
            redirects: self.redirects.clone(),
            noticed: HashMap::new(),
            guard: ReplayGuard::default(),
            drops: DropLog::new(Duration::from_secs(10)),
            legacy_logged: None,
        })
    }
}

/// Reads the socket apart from the engine, so health probes are answered
/// at once however long the engine takes over a message (or waits for the
/// cluster state's lock): a busy agent must not look like a broken path.
/// Everything else is handed to the engine in order.
async fn read(
    sock: Arc<tokio::net::UdpSocket>,
    probes: Arc<crate::probe_wire::ProbeWire>,
    auth: Arc<AuthState>,
    tx: tokio::sync::mpsc::Sender<std::io::Result<(SocketAddr, Vec<u8>)>>,
    queued: Arc<AtomicUsize>,
) {
    let mut buf = vec![0; MAX_DATAGRAM];
    loop {
        let r = tokio::select! {
            _ = tx.closed() => return,
            r = sock.recv_from(&mut buf) => r,
        };
        let (n, from) = match r {
            Ok(x) => x,
            // An ICMP error for an earlier send, not a broken socket.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                continue
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        auth.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
        if n == 0 {
            continue;
        }
        if crate::probe_wire::is_request(&buf[..n]) {
            if let Some(a) = probes.answer(&buf[..n], from.ip()) {
                let _ = sock.send_to(&a, from).await;
            }
            continue;
        }
        // Only this task adds, so the check and the add cannot race.
        if queued.load(Ordering::Relaxed) + n > INBOX_BYTES {
            tracing::debug!(peer = %from, "gossip engine behind: a datagram dropped");
            continue;
        }
        // Counted before it is queued: the engine subtracts on receipt.
        queued.fetch_add(n, Ordering::Relaxed);
        match tx.try_send(Ok((from, buf[..n].to_vec()))) {
            Ok(()) => {}
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                queued.fetch_sub(n, Ordering::Relaxed);
                tracing::debug!(peer = %from, "gossip engine behind: a datagram dropped");
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

pub struct SealedSocket {
    seeds: Vec<SocketAddr>,
    redirects: Redirects,
    sock: Arc<tokio::net::UdpSocket>,
    inbox: tokio::sync::mpsc::Receiver<std::io::Result<(SocketAddr, Vec<u8>)>>,
    /// Bytes in `inbox`.
    queued: Arc<AtomicUsize>,
    reader: Option<tokio::task::JoinHandle<()>>,
    cipher: Option<ChaCha20Poly1305>,
    auth: Arc<AuthState>,
    noticed: HashMap<SocketAddr, Instant>,
    guard: ReplayGuard,
    drops: DropLog,
    legacy_logged: Option<Instant>,
}

impl Drop for SealedSocket {
    fn drop(&mut self) {
        if let Some(r) = self.reader.take() {
            r.abort();
        }
    }
}

impl SealedSocket {
    /// Stops the reader and waits until the socket is released, so the
    /// port can be bound again at once.
    pub async fn close(&mut self) {
        self.inbox.close();
        if let Some(r) = self.reader.take() {
            r.abort();
            let _ = r.await;
        }
    }

    /// At most one notice a second per peer: a notice is unauthenticated
    /// and must not become an amplifier.
    async fn notice(&mut self, to: SocketAddr, kind: u8) {
        let now = Instant::now();
        if self
            .noticed
            .get(&to)
            .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(1))
        {
            return;
        }
        self.noticed.insert(to, now);
        if self.noticed.len() > 4096 {
            self.noticed
                .retain(|_, t| now.duration_since(*t) < Duration::from_secs(1));
        }
        let _ = self.sock.send_to(&[kind], to).await;
    }

    /// A hint from an unauthenticated notice: kept for status and logged
    /// at most once a minute, and ignored while authenticated gossip
    /// flows or when it does not come from a seed.
    fn problem(&self, from: SocketAddr, msg: String) {
        if !self.seeds.contains(&from) || self.auth.heard_recently() {
            tracing::debug!(peer = %from, "ignored an unauthenticated notice");
            return;
        }
        let now = Instant::now();
        let mut p = self.auth.problem.lock().expect("auth lock");
        // Once a minute at most, whatever they say: alternating forged
        // notices must not become one line each.
        let due = p
            .as_ref()
            .is_none_or(|(_, at)| now.duration_since(*at) > Duration::from_secs(60));
        if due {
            tracing::warn!("{msg} (an unauthenticated hint; gossip keeps trying)");
            *p = Some((msg, now));
        }
    }

    /// A frame of an agent from before this gossip engine (a rolling
    /// upgrade): it cannot be understood; reported at most once a minute.
    fn older(&mut self, from: SocketAddr) {
        let now = Instant::now();
        if self
            .legacy_logged
            .is_none_or(|t| now.duration_since(t) > Duration::from_secs(60))
        {
            self.legacy_logged = Some(now);
            tracing::warn!(peer = %from, "a peer runs an older Muslin whose gossip (chitchat, before the SWIM engine) this agent cannot read: upgrade every agent; until then the two sides do not see each other");
        }
    }

    fn dropped(&mut self, from: SocketAddr, why: Refused) {
        self.auth.dropped.fetch_add(1, Ordering::Relaxed);
        if let Some(line) = self.drops.dropped(from.ip(), why, Instant::now()) {
            tracing::warn!("{line}");
        }
    }
}

impl SealedSocket {
    /// Seals `plain` and sends it (to where `redirects` says, if anywhere).
    pub async fn send_plain(&mut self, to: SocketAddr, plain: &[u8]) -> anyhow::Result<()> {
        let frame = match &self.cipher {
            None => [&[PLAIN][..], plain].concat(),
            Some(c) => {
                let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
                let stamped = [&now_ms().to_be_bytes()[..], plain].concat();
                let sealed = c
                    .encrypt(
                        &nonce,
                        Payload {
                            msg: &stamped,
                            aad: &[SEALED_TS],
                        },
                    )
                    .map_err(|_| anyhow::anyhow!("sealing a gossip frame failed"))?;
                [&[SEALED_TS][..], nonce.as_slice(), &sealed].concat()
            }
        };
        if frame.len() > MAX_DATAGRAM {
            anyhow::bail!("gossip frame of {} bytes exceeds a datagram", frame.len());
        }
        let to = self
            .redirects
            .read()
            .expect("redirects lock")
            .get(&to)
            .copied()
            .unwrap_or(to);
        let n = match self.sock.send_to(&frame, to).await {
            Ok(n) => n,
            // An unreachable peer is not a broken transport.
            Err(e) => {
                tracing::debug!(peer = %to, cause = %e, "gossip send failed");
                0
            }
        };
        self.auth.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The next authenticated datagram, opened; refused frames are
    /// counted on the way (probes were answered by the reader).
    pub async fn recv_plain(&mut self) -> anyhow::Result<(SocketAddr, Vec<u8>)> {
        loop {
            let (from, mut frame) = match self.inbox.recv().await {
                Some(Ok(x)) => x,
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("the gossip socket's reader stopped"),
            };
            let n = frame.len();
            self.queued.fetch_sub(n, Ordering::Relaxed);
            let kind = frame[0];
            let plain: Vec<u8> = match (kind, &self.cipher) {
                (PLAIN, None) => {
                    frame.remove(0);
                    frame
                }
                (PLAIN, Some(_)) => {
                    self.dropped(from, Refused::Unauthenticated);
                    self.notice(from, NEEDS_SECRET).await;
                    continue;
                }
                (SEALED_TS | SEALED, Some(c)) if n > 1 + NONCE => {
                    let nonce = Nonce::from_slice(&frame[1..1 + NONCE]);
                    let opened = c.decrypt(
                        nonce,
                        Payload {
                            msg: &frame[1 + NONCE..n],
                            aad: &[kind],
                        },
                    );
                    match opened {
                        Ok(_) if kind == SEALED => {
                            self.older(from);
                            continue;
                        }
                        Ok(p) if p.len() >= 8 => {
                            let sent = u64::from_be_bytes(p[..8].try_into().expect("8 bytes"));
                            let nonce: [u8; NONCE] = frame[1..1 + NONCE].try_into().expect("nonce");
                            if let Err(why) = self.guard.accept(nonce, sent, now_ms()) {
                                self.dropped(from, why);
                                continue;
                            }
                            p[8..].to_vec()
                        }
                        Ok(_) | Err(_) => {
                            self.dropped(from, Refused::BadSeal);
                            self.notice(from, BAD_SECRET).await;
                            continue;
                        }
                    }
                }
                (SEALED_TS | SEALED, None) => {
                    self.problem(from, format!(
                        "peer {from} gossips with a cluster secret and this agent has none: it cannot join; \
                         start it with --cluster-secret-file"
                    ));
                    continue;
                }
                (NEEDS_SECRET, None) => {
                    self.problem(from, format!(
                        "peer {from} refuses gossip without the cluster secret: this agent cannot join; \
                         start it with --cluster-secret-file"
                    ));
                    continue;
                }
                (BAD_SECRET, Some(_)) => {
                    self.problem(
                        from,
                        format!(
                            "peer {from} rejects our cluster secret: check --cluster-secret-file"
                        ),
                    );
                    continue;
                }
                _ => continue,
            };
            if plain.is_empty() {
                continue;
            }
            if plain.starts_with(&crate::swim::wire::CHITCHAT) {
                self.older(from);
                continue;
            }
            self.auth.heard.store(true, Ordering::Relaxed);
            self.auth.heard_at_ms.store(now_ms(), Ordering::Relaxed);
            return Ok((from, plain));
        }
    }
}

#[async_trait]
impl crate::swim::Wire for SealedSocket {
    async fn send(&mut self, to: SocketAddr, payload: &[u8]) {
        if let Err(e) = self.send_plain(to, payload).await {
            tracing::debug!(peer = %to, cause = %e, "gossip not sent");
        }
    }

    async fn recv(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        match self.recv_plain().await {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::error!(cause = %e, "the gossip socket failed");
                None
            }
        }
    }

    async fn close(&mut self) {
        SealedSocket::close(self).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef-replay";

    fn transport() -> SealedUdp {
        SealedUdp {
            secret: Some(SECRET.to_vec()),
            auth: Arc::new(AuthState::default()),
            seeds: vec![],
            probes: Arc::new(crate::probe_wire::ProbeWire::new(Some(SECRET), "t")),
            redirects: Redirects::default(),
        }
    }

    const MESSAGE: &[u8] = b"\x02 an engine message";

    async fn nothing_within(s: &mut SealedSocket, ms: u64) -> bool {
        tokio::time::timeout(Duration::from_millis(ms), s.recv_plain())
            .await
            .is_err()
    }

    #[tokio::test]
    async fn replayed_and_stale_frames_are_refused_and_counted() {
        let (ta, tb) = (transport(), transport());
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut a = ta.bind(any).await.unwrap();
        let tap = std::net::UdpSocket::bind(any).unwrap();
        tap.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        // Capture a real frame on its way.
        a.send_plain(tap.local_addr().unwrap(), MESSAGE)
            .await
            .unwrap();
        let mut buf = [0u8; 2048];
        let (n, _) = tap.recv_from(&mut buf).unwrap();
        let frame = buf[..n].to_vec();

        let b_sock = std::net::UdpSocket::bind(any).unwrap();
        let b_addr = b_sock.local_addr().unwrap();
        drop(b_sock);
        let mut b = tb.bind(b_addr).await.unwrap();
        tap.send_to(&frame, b_addr).unwrap();
        let (_, msg) = tokio::time::timeout(Duration::from_secs(2), b.recv_plain())
            .await
            .expect("the first copy arrives")
            .unwrap();
        assert_eq!(msg, MESSAGE);
        assert!(tb.auth.heard.load(Ordering::Relaxed));
        tb.auth.heard.store(false, Ordering::Relaxed);
        // The same frame again: refused, counted, no sign of life.
        tap.send_to(&frame, b_addr).unwrap();
        assert!(nothing_within(&mut b, 300).await);
        assert_eq!(tb.auth.dropped.load(Ordering::Relaxed), 1);
        assert!(!tb.auth.heard.load(Ordering::Relaxed));
        // A frame sealed a minute ago (captured then, replayed now).
        let c = cipher(SECRET);
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let old = [&(now_ms() - 60_000).to_be_bytes()[..], MESSAGE].concat();
        let sealed = c
            .encrypt(
                &nonce,
                Payload {
                    msg: &old,
                    aad: &[SEALED_TS],
                },
            )
            .unwrap();
        let stale = [&[SEALED_TS][..], nonce.as_slice(), &sealed].concat();
        tap.send_to(&stale, b_addr).unwrap();
        assert!(nothing_within(&mut b, 300).await);
        assert_eq!(tb.auth.dropped.load(Ordering::Relaxed), 2);
        assert!(!tb.auth.heard.load(Ordering::Relaxed));
        // An agent from before replay protection (no send time) spoke the
        // previous gossip: refused, without a sign of life.
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = c
            .encrypt(
                &nonce,
                Payload {
                    msg: MESSAGE,
                    aad: &[SEALED],
                },
            )
            .unwrap();
        let legacy = [&[SEALED][..], nonce.as_slice(), &sealed].concat();
        tap.send_to(&legacy, b_addr).unwrap();
        assert!(nothing_within(&mut b, 300).await);
        assert!(!tb.auth.heard.load(Ordering::Relaxed));
    }

    // The test thread blocks on its own socket: the reader runs beside.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn probes_are_answered_while_the_engine_is_busy_and_the_port_is_freed_on_close() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let t = transport();
        let mut s = t.bind(any).await.unwrap();
        let at = s.sock.local_addr().unwrap();
        // A gossip frame waits for the engine, which does not read: the
        // probe behind it is answered all the same.
        let tap = std::net::UdpSocket::bind(any).unwrap();
        tap.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut a = transport().bind(any).await.unwrap();
        a.send_plain(at, MESSAGE).await.unwrap();
        let asker = crate::probe_wire::ProbeWire::new(Some(SECRET), "asker");
        tap.send_to(&asker.request(7, 0), at).unwrap();
        let mut buf = [0u8; 2048];
        let (n, _) = tap
            .recv_from(&mut buf)
            .expect("an answer while nobody reads gossip");
        let ack = asker.ack(&buf[..n]).expect("a valid answer");
        assert_eq!(ack.id, 7);
        assert_eq!(ack.from, crate::probe_wire::name_tag("t"));
        // The gossip frame is still delivered, after the probe.
        let (_, msg) = tokio::time::timeout(Duration::from_secs(2), s.recv_plain())
            .await
            .expect("the queued frame")
            .unwrap();
        assert_eq!(msg, MESSAGE);
        // Closed: the port can be bound again at once.
        s.close().await;
        drop(s);
        std::net::UdpSocket::bind(at).expect("the port is free after close");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_waiting_for_the_engine_are_bounded_in_bytes() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let s = transport().bind(any).await.unwrap();
        let at = s.sock.local_addr().unwrap();
        // Large unauthenticated frames while the engine does not read.
        let tap = std::net::UdpSocket::bind(any).unwrap();
        let big = vec![SEALED_TS; 60_000];
        for _ in 0..40 {
            tap.send_to(&big, at).unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let q = s.queued.load(Ordering::Relaxed);
        assert!(q > 0 && q <= INBOX_BYTES, "{q} bytes queued");
        assert!(
            s.inbox.len() <= INBOX_BYTES / big.len(),
            "{}",
            s.inbox.len()
        );
    }
}
