//! Gossip over UDP, sealed with the cluster secret (ChaCha20-Poly1305 with
//! a key derived from it): a host without the secret can neither read nor
//! inject state. Frames start with a kind byte; a secured node answers a
//! plaintext or unreadable frame with a short notice, so a node without
//! (or with the wrong) secret can say clearly why it cannot join.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use chitchat::transport::{Socket, Transport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};
use sha2::{Digest, Sha256};

const PLAIN: u8 = 0;
const SEALED: u8 = 1;
const NEEDS_SECRET: u8 = 2;
const BAD_SECRET: u8 = 3;
const NONCE: usize = 12;
const MAX_DATAGRAM: usize = 65_507;

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
    /// Why peers refuse us, if they do.
    pub problem: Mutex<Option<String>>,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
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

#[async_trait]
impl Transport for SealedUdp {
    async fn open(&self, listen: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let sock = tokio::net::UdpSocket::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("binding gossip socket {listen}: {e}"))?;
        Ok(Box::new(SealedSocket {
            sock,
            cipher: self.secret.as_deref().map(cipher),
            auth: self.auth.clone(),
            seeds: self.seeds.clone(),
            probes: self.probes.clone(),
            redirects: self.redirects.clone(),
            buf: vec![0; MAX_DATAGRAM],
            noticed: HashMap::new(),
        }))
    }
}

struct SealedSocket {
    seeds: Vec<SocketAddr>,
    probes: Arc<crate::probe_wire::ProbeWire>,
    redirects: Redirects,
    sock: tokio::net::UdpSocket,
    cipher: Option<ChaCha20Poly1305>,
    auth: Arc<AuthState>,
    buf: Vec<u8>,
    noticed: HashMap<SocketAddr, Instant>,
}

impl SealedSocket {
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

    fn problem(&self, from: SocketAddr, msg: String) {
        if !self.seeds.contains(&from) {
            tracing::debug!(peer = %from, "ignored an authentication notice from a host that is not a seed");
            return;
        }
        let mut p = self.auth.problem.lock().expect("auth lock");
        if p.as_deref() != Some(msg.as_str()) {
            tracing::error!("{msg}");
            *p = Some(msg);
        }
    }
}

#[async_trait]
impl Socket for SealedSocket {
    async fn send(&mut self, to: SocketAddr, msg: ChitchatMessage) -> anyhow::Result<()> {
        let plain = msg.serialize_to_vec();
        let frame = match &self.cipher {
            None => [&[PLAIN][..], &plain].concat(),
            Some(c) => {
                let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
                let sealed = c
                    .encrypt(
                        &nonce,
                        Payload {
                            msg: &plain,
                            aad: &[SEALED],
                        },
                    )
                    .map_err(|_| anyhow::anyhow!("sealing a gossip frame failed"))?;
                [&[SEALED][..], nonce.as_slice(), &sealed].concat()
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

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        loop {
            let (n, from) = match self.sock.recv_from(&mut self.buf).await {
                Ok(x) => x,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e.into()),
            };
            self.auth
                .bytes_received
                .fetch_add(n as u64, Ordering::Relaxed);
            if n == 0 {
                continue;
            }
            if crate::probe_wire::is_request(&self.buf[..n]) {
                if let Some(a) = self.probes.answer(&self.buf[..n], from.ip()) {
                    let _ = self.sock.send_to(&a, from).await;
                }
                continue;
            }
            let kind = self.buf[0];
            let plain: Vec<u8> = match (kind, &self.cipher) {
                (PLAIN, None) => self.buf[1..n].to_vec(),
                (PLAIN, Some(_)) => {
                    tracing::warn!(peer = %from, "dropped unauthenticated gossip: this cluster needs the cluster secret");
                    self.notice(from, NEEDS_SECRET).await;
                    continue;
                }
                (SEALED, Some(c)) if n > 1 + NONCE => {
                    let nonce = Nonce::from_slice(&self.buf[1..1 + NONCE]);
                    match c.decrypt(
                        nonce,
                        Payload {
                            msg: &self.buf[1 + NONCE..n],
                            aad: &[SEALED],
                        },
                    ) {
                        Ok(p) => p,
                        Err(_) => {
                            tracing::warn!(peer = %from, "dropped gossip sealed with another secret");
                            self.notice(from, BAD_SECRET).await;
                            continue;
                        }
                    }
                }
                (SEALED, None) => {
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
            match ChitchatMessage::deserialize(&mut &plain[..]) {
                Ok(msg) => {
                    self.auth.heard.store(true, Ordering::Relaxed);
                    if kind == SEALED || self.cipher.is_none() {
                        self.auth.problem.lock().expect("auth lock").take();
                    }
                    return Ok((from, msg));
                }
                Err(e) => tracing::debug!(peer = %from, cause = %e, "undecodable gossip frame"),
            }
        }
    }
}
