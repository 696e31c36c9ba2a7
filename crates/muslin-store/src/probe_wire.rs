//! Health probes between agents, carried on the gossip port so that an
//! operator opens no extra port. A request names its sender, an id and
//! when it was sent, and may be padded (DF probes of the path MTU); the
//! answer carries a tag of the responder's name, so a probe that lands on
//! the wrong host, or on ourselves (a peer advertising an address this
//! host has too), never counts. With a cluster secret both are sealed like
//! gossip: a stranger can neither forge an answer nor make an agent
//! answer; a captured request is answered only while it is fresh, an answer
//! is never larger than its request, and each source gets a bounded rate
//! of answers, so agents make poor reflectors.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chacha20poly1305::aead::{Aead, AeadCore, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use sha2::{Digest, Sha256};

pub mod clocks;

pub(crate) const PROBE_REQ: u8 = 4;
pub(crate) const PROBE_ACK: u8 = 5;
const NONCE: usize = 12;
/// kind + body length.
const HEADER: usize = 3;
/// Requests older (or newer: clocks drift) than this are not answered.
const FRESH_MS: u64 = 30_000;
/// Answers per second to one source address.
const ANSWERS_PER_SECOND: u32 = 100;
/// An answer's size: header, nonce and tag, id, size and name tag. Every
/// request is at least this large.
const ACK_LEN: usize = HEADER + NONCE + 16 + 8 + 4 + 8;

/// An answer to one of our probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// [`name_tag`] of the responder's node name.
    pub from: [u8; 8],
    pub id: u64,
    /// Size of the request as the responder received it.
    pub size: u32,
}

/// A short fixed-size stand-in for a node name in answers.
pub fn name_tag(name: &str) -> [u8; 8] {
    let d = Sha256::digest(name.as_bytes());
    d[..8].try_into().expect("8 bytes")
}

pub struct ProbeWire {
    cipher: Option<ChaCha20Poly1305>,
    me: String,
    answered: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl ProbeWire {
    pub fn new(secret: Option<&[u8]>, me: &str) -> ProbeWire {
        ProbeWire {
            cipher: secret.map(crate::sealed::cipher),
            me: me.to_string(),
            answered: Mutex::new(HashMap::new()),
        }
    }

    /// A request of `size` bytes of UDP payload (at least its header and
    /// body, and never smaller than an answer).
    pub fn request(&self, id: u64, size: usize) -> Vec<u8> {
        self.request_at(id, size, now_ms())
    }

    fn request_at(&self, id: u64, size: usize, at_ms: u64) -> Vec<u8> {
        let mut b = id.to_be_bytes().to_vec();
        b.extend_from_slice(&(size as u32).to_be_bytes());
        b.extend_from_slice(&at_ms.to_be_bytes());
        // Node names are at most 253 bytes (validated at start).
        let name = &self.me.as_bytes()[..self.me.len().min(255)];
        b.push(name.len() as u8);
        b.extend_from_slice(name);
        let mut f = self.frame(PROBE_REQ, &b);
        f.resize(f.len().max(size).max(ACK_LEN), 0);
        f
    }

    /// The answer to `frame` from `from`, if it is a fresh, valid request
    /// and `from` has not had its share of answers this second.
    pub fn answer(&self, frame: &[u8], from: IpAddr) -> Option<Vec<u8>> {
        if frame.len() < ACK_LEN {
            return None;
        }
        let plain = self.open(PROBE_REQ, frame)?;
        let id = u64::from_be_bytes(plain.get(..8)?.try_into().ok()?);
        let at = u64::from_be_bytes(plain.get(12..20)?.try_into().ok()?);
        let now = now_ms();
        if let Some(sender) = sender_name(&plain) {
            clocks::record(sender, from, at, now);
        }
        if now.abs_diff(at) > FRESH_MS || !self.within_rate(from) {
            return None;
        }
        let mut b = id.to_be_bytes().to_vec();
        b.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        b.extend_from_slice(&name_tag(&self.me));
        Some(self.frame(PROBE_ACK, &b))
    }

    /// `frame` as an answer, if it is a valid one.
    pub fn ack(&self, frame: &[u8]) -> Option<Ack> {
        let plain = self.open(PROBE_ACK, frame)?;
        Some(Ack {
            id: u64::from_be_bytes(plain.get(..8)?.try_into().ok()?),
            size: u32::from_be_bytes(plain.get(8..12)?.try_into().ok()?),
            from: plain.get(12..20)?.try_into().ok()?,
        })
    }

    fn within_rate(&self, from: IpAddr) -> bool {
        let now = Instant::now();
        let mut m = self.answered.lock().expect("answered lock");
        if m.len() > 4096 {
            m.retain(|_, (t, _)| now.duration_since(*t) < Duration::from_secs(1));
        }
        let e = m.entry(from).or_insert((now, 0));
        if now.duration_since(e.0) >= Duration::from_secs(1) {
            *e = (now, 0);
        }
        e.1 += 1;
        e.1 <= ANSWERS_PER_SECOND
    }

    fn frame(&self, kind: u8, body: &[u8]) -> Vec<u8> {
        let inner = match &self.cipher {
            None => body.to_vec(),
            Some(c) => {
                let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
                let sealed = c
                    .encrypt(
                        &nonce,
                        Payload {
                            msg: body,
                            aad: &[kind],
                        },
                    )
                    .expect("sealing a short buffer cannot fail");
                [nonce.as_slice(), &sealed].concat()
            }
        };
        let len = u16::try_from(inner.len()).expect("probe bodies are short");
        [&[kind][..], &len.to_be_bytes(), &inner].concat()
    }

    fn open(&self, kind: u8, frame: &[u8]) -> Option<Vec<u8>> {
        if *frame.first()? != kind {
            return None;
        }
        let len = usize::from(u16::from_be_bytes(frame.get(1..HEADER)?.try_into().ok()?));
        let inner = frame.get(HEADER..HEADER + len)?;
        match &self.cipher {
            None => Some(inner.to_vec()),
            Some(c) => {
                let (nonce, sealed) = (inner.get(..NONCE)?, inner.get(NONCE..)?);
                c.decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: sealed,
                        aad: &[kind],
                    },
                )
                .ok()
            }
        }
    }
}

/// The sender's node name in a request's body (after id, size and time).
fn sender_name(plain: &[u8]) -> Option<&str> {
    let len = usize::from(*plain.get(20)?);
    std::str::from_utf8(plain.get(21..21 + len)?).ok()
}

/// Whether a datagram is a probe request, for a socket that also carries
/// other traffic.
pub fn is_request(frame: &[u8]) -> bool {
    frame.first() == Some(&PROBE_REQ)
}

/// Answers probe requests on `sock` until it fails: the responder of an
/// agent whose gossip port carries no gossip (etcd clusters).
pub async fn serve(sock: tokio::net::UdpSocket, wire: ProbeWire) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        if let Some(a) = wire.answer(&buf[..n], from.ip()) {
            let _ = sock.send_to(&a, from).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef-s";
    fn src() -> IpAddr {
        "192.0.2.1".parse().unwrap()
    }

    #[test]
    fn requests_are_answered_by_name_and_padded() {
        let a = ProbeWire::new(Some(SECRET), "a");
        let b = ProbeWire::new(Some(SECRET), "b");
        let req = a.request(7, 1400);
        assert_eq!(req.len(), 1400);
        let ans = b.answer(&req, src()).unwrap();
        assert_eq!(ans.len(), ACK_LEN);
        assert_eq!(
            a.ack(&ans).unwrap(),
            Ack {
                from: name_tag("b"),
                id: 7,
                size: 1400
            }
        );
        // An answer is no request, and a request no answer.
        assert!(a.answer(&ans, src()).is_none());
        assert!(a.ack(&req).is_none());
    }

    #[test]
    fn a_request_from_a_clock_far_off_is_refused_but_its_skew_is_told() {
        let a = ProbeWire::new(Some(SECRET), "skewed-sender");
        let b = ProbeWire::new(Some(SECRET), "b");
        let req = a.request_at(1, 100, now_ms() - 90_000);
        assert!(b.answer(&req, src()).is_none(), "stale");
        let (at, skew) = clocks::offsets()["skewed-sender"][0];
        assert!((-91_000..=-89_000).contains(&skew), "{skew}");
        assert_eq!(at, src());
    }

    #[test]
    fn answers_are_never_larger_than_requests_and_rate_limited() {
        let a = ProbeWire::new(Some(SECRET), "a");
        let long = ProbeWire::new(Some(SECRET), &"x".repeat(253));
        let req = a.request(1, 0);
        let ans = long.answer(&req, src()).unwrap();
        assert!(ans.len() <= req.len(), "{} > {}", ans.len(), req.len());
        let answered = (0..300)
            .filter(|_| long.answer(&req, src()).is_some())
            .count();
        assert!(
            answered < 150,
            "{answered} answers to one source in a second"
        );
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(
            long.answer(&req, other).is_some(),
            "other sources are not starved"
        );
    }

    #[test]
    fn strangers_stale_and_damaged_frames_get_nothing() {
        let a = ProbeWire::new(Some(SECRET), "a");
        let stranger = ProbeWire::new(Some(b"another-secret-0123"), "x");
        let plain = ProbeWire::new(None, "p");
        assert!(a.answer(&stranger.request(1, 0), src()).is_none());
        assert!(a.answer(&plain.request(1, 0), src()).is_none());
        let forged = stranger.answer(&stranger.request(1, 0), src()).unwrap();
        assert!(a.ack(&forged).is_none());
        // A captured request replayed a minute later.
        let old = a.request_at(1, 0, now_ms() - 60_000);
        assert!(a.answer(&old, src()).is_none());
        let mut req = a.request(1, 0);
        req[HEADER + 2] ^= 1;
        assert!(a.answer(&req, src()).is_none());
        for junk in [&[][..], &[PROBE_REQ], &[PROBE_REQ, 0xff, 0xff, 1, 2]] {
            assert!(a.answer(junk, src()).is_none());
        }
        // Without a secret on either side, plain probes work.
        let q = ProbeWire::new(None, "q");
        let ack = plain
            .ack(&q.answer(&plain.request(3, 0), src()).unwrap())
            .unwrap();
        assert_eq!(ack.from, name_tag("q"));
    }
}
