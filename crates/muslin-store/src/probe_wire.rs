//! Health probes between agents, carried on the gossip port so that an
//! operator opens no extra port. A request names its sender and an id and
//! may be padded (DF probes of the path MTU); the answer names the
//! responder, so a probe that lands on the wrong host, or on ourselves (a
//! peer advertising an address this host has too), never counts. With a
//! cluster secret both are sealed like gossip: a stranger can neither
//! forge an answer nor make an agent answer.

use chacha20poly1305::aead::{Aead, AeadCore, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};

pub(crate) const PROBE_REQ: u8 = 4;
pub(crate) const PROBE_ACK: u8 = 5;
const NONCE: usize = 12;
/// kind + body length.
const HEADER: usize = 3;

/// An answer to one of our probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Node name of the responder.
    pub from: String,
    pub id: u64,
    /// Size of the request as the responder received it.
    pub size: u32,
}

pub struct ProbeWire {
    cipher: Option<ChaCha20Poly1305>,
    me: String,
}

impl ProbeWire {
    pub fn new(secret: Option<&[u8]>, me: &str) -> ProbeWire {
        ProbeWire {
            cipher: secret.map(crate::sealed::cipher),
            me: me.to_string(),
        }
    }

    /// A request of exactly `size` bytes of UDP payload (at least the
    /// header and body).
    pub fn request(&self, id: u64, size: usize) -> Vec<u8> {
        let mut f = self.frame(PROBE_REQ, &body(id, size as u32, &self.me));
        if f.len() < size {
            f.resize(size, 0);
        }
        f
    }

    /// The answer to `frame`, if it is a valid request.
    pub fn answer(&self, frame: &[u8]) -> Option<Vec<u8>> {
        let (id, _, _) = self.open(PROBE_REQ, frame)?;
        Some(self.frame(PROBE_ACK, &body(id, frame.len() as u32, &self.me)))
    }

    /// `frame` as an answer, if it is a valid one.
    pub fn ack(&self, frame: &[u8]) -> Option<Ack> {
        let (id, size, from) = self.open(PROBE_ACK, frame)?;
        Some(Ack { from, id, size })
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

    fn open(&self, kind: u8, frame: &[u8]) -> Option<(u64, u32, String)> {
        if *frame.first()? != kind {
            return None;
        }
        let len = usize::from(u16::from_be_bytes(frame.get(1..HEADER)?.try_into().ok()?));
        let inner = frame.get(HEADER..HEADER + len)?;
        let plain = match &self.cipher {
            None => inner.to_vec(),
            Some(c) => {
                let (nonce, sealed) = (inner.get(..NONCE)?, inner.get(NONCE..)?);
                c.decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: sealed,
                        aad: &[kind],
                    },
                )
                .ok()?
            }
        };
        let id = u64::from_be_bytes(plain.get(..8)?.try_into().ok()?);
        let size = u32::from_be_bytes(plain.get(8..12)?.try_into().ok()?);
        let n = usize::from(*plain.get(12)?);
        let name = std::str::from_utf8(plain.get(13..13 + n)?).ok()?;
        Some((id, size, name.to_string()))
    }
}

fn body(id: u64, size: u32, name: &str) -> Vec<u8> {
    // Node names are at most 253 bytes (validated at start).
    let name = &name.as_bytes()[..name.len().min(255)];
    let mut b = Vec::with_capacity(13 + name.len());
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(&size.to_be_bytes());
    b.push(name.len() as u8);
    b.extend_from_slice(name);
    b
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
        if let Some(a) = wire.answer(&buf[..n]) {
            let _ = sock.send_to(&a, from).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_answered_by_name_and_padded() {
        let a = ProbeWire::new(Some(b"0123456789abcdef-s"), "a");
        let b = ProbeWire::new(Some(b"0123456789abcdef-s"), "b");
        let req = a.request(7, 1400);
        assert_eq!(req.len(), 1400);
        let ans = b.answer(&req).unwrap();
        assert!(ans.len() < 100, "answers stay small: {}", ans.len());
        assert_eq!(
            a.ack(&ans).unwrap(),
            Ack {
                from: "b".into(),
                id: 7,
                size: 1400
            }
        );
        // An answer is no request, and a request no answer.
        assert!(a.answer(&ans).is_none());
        assert!(a.ack(&req).is_none());
    }

    #[test]
    fn strangers_and_damaged_frames_get_nothing() {
        let a = ProbeWire::new(Some(b"0123456789abcdef-s"), "a");
        let stranger = ProbeWire::new(Some(b"another-secret-0123"), "x");
        let plain = ProbeWire::new(None, "p");
        assert!(a.answer(&stranger.request(1, 0)).is_none());
        assert!(a.answer(&plain.request(1, 0)).is_none());
        assert!(a
            .ack(&stranger.answer(&stranger.request(1, 0)).unwrap())
            .is_none());
        let mut req = a.request(1, 0);
        let last = req.len() - 1;
        req[last] ^= 1;
        assert!(a.answer(&req).is_none());
        for junk in [&[][..], &[PROBE_REQ], &[PROBE_REQ, 0xff, 0xff, 1, 2]] {
            assert!(a.answer(junk).is_none());
        }
        // Without a secret on either side, plain probes work.
        let q = ProbeWire::new(None, "q");
        assert_eq!(
            plain
                .ack(&q.answer(&plain.request(3, 0)).unwrap())
                .unwrap()
                .from,
            "q"
        );
    }
}
