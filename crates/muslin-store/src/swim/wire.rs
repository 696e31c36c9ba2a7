//! What the engine puts in a datagram (before sealing): a kind byte, then
//! a membership packet (foca's own encoding) or an anti-entropy message
//! (postcard).

use serde::{Deserialize, Serialize};

use super::state::{Delta, Held};

/// foca's packets: probes, acks, membership updates, broadcasts.
pub const MEMBERSHIP: u8 = 0x01;
/// Anti-entropy.
pub const SYNC: u8 = 0x02;
/// How the gossip of Muslin before this engine (chitchat) starts: its
/// magic number. Such a peer cannot be understood, only told about.
pub const CHITCHAT: [u8; 2] = [0x53, 0xb0];

/// Anti-entropy: a digest of fixed size; on a difference, the summary of
/// the differing buckets; then the deltas each side lacks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Sync {
    /// One hash per bucket (`state::BUCKETS`).
    Digest(Vec<u32>),
    /// What the sender holds in these buckets.
    Summary { buckets: Vec<u8>, held: Vec<Held> },
    /// Changes the receiver lacks.
    Deltas(Vec<Delta>),
    /// States the sender asks for, from the watermarks it holds.
    Pull(Vec<Held>),
}

pub fn encode(msg: &Sync) -> Vec<u8> {
    let mut out = vec![SYNC];
    out.extend(postcard::to_allocvec(msg).expect("anti-entropy messages serialize"));
    out
}

/// Whether a datagram (before sealing) is a digest: the simulation
/// counts them.
pub fn is_digest(datagram: &[u8]) -> bool {
    // postcard writes an enum's variant index first: `Digest` is 0.
    datagram.starts_with(&[SYNC, 0])
}

pub fn decode(body: &[u8]) -> Option<Sync> {
    postcard::from_bytes(body).ok()
}

/// The largest anti-entropy payload put in one datagram, below UDP's
/// limit with room for sealing.
pub const MAX_SYNC: usize = 60_000;

/// Splits held entries into summaries that each fit a datagram; buckets
/// are never split, so each summary is complete for its buckets.
pub fn summaries(buckets: &[u8], held: Vec<Held>) -> Vec<Sync> {
    let size = |h: &Held| h.name.len() + 24;
    let mut by_bucket: std::collections::BTreeMap<u8, Vec<Held>> = Default::default();
    for b in buckets {
        by_bucket.entry(*b).or_default();
    }
    for h in held {
        by_bucket
            .entry(super::state::bucket(&h.name) as u8)
            .or_default()
            .push(h);
    }
    let mut out = Vec::new();
    let (mut bs, mut hs, mut bytes) = (Vec::new(), Vec::new(), 0);
    for (b, list) in by_bucket {
        let s: usize = list.iter().map(size).sum();
        if bytes + s > MAX_SYNC && !bs.is_empty() {
            out.push(Sync::Summary {
                buckets: std::mem::take(&mut bs),
                held: std::mem::take(&mut hs),
            });
            bytes = 0;
        }
        bs.push(b);
        hs.extend(list);
        bytes += s;
    }
    if !bs.is_empty() {
        out.push(Sync::Summary {
            buckets: bs,
            held: hs,
        });
    }
    out
}

/// Packs deltas into messages of about `MAX_SYNC` bytes each.
pub fn deltas(ds: Vec<Delta>) -> Vec<Sync> {
    let size = |d: &Delta| {
        d.name.len()
            + 32
            + d.entries
                .iter()
                .map(|(k, e)| k.len() + e.value.as_ref().map_or(0, |v| v.len()) + 16)
                .sum::<usize>()
    };
    let mut out = Vec::new();
    let (mut batch, mut bytes) = (Vec::new(), 0);
    for d in ds
        .into_iter()
        .flat_map(|d| super::state::split(d, MAX_SYNC / 2))
    {
        let s = size(&d);
        if bytes + s > MAX_SYNC && !batch.is_empty() {
            out.push(Sync::Deltas(std::mem::take(&mut batch)));
            bytes = 0;
        }
        bytes += s;
        batch.push(d);
    }
    if !batch.is_empty() {
        out.push(Sync::Deltas(batch));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_big_ones_are_split_to_fit() {
        let held: Vec<Held> = (0..5000)
            .map(|i| Held {
                name: format!("node-{i:05}"),
                generation: 1,
                watermark: 3,
            })
            .collect();
        let all: Vec<u8> = (0..super::super::state::BUCKETS as u8).collect();
        let msgs = summaries(&all, held);
        assert!(msgs.len() > 1);
        let mut n = 0;
        for m in &msgs {
            let bytes = encode(m);
            assert!(bytes.len() < 65_000, "{}", bytes.len());
            assert_eq!(bytes[0], SYNC);
            assert_eq!(decode(&bytes[1..]).as_ref(), Some(m));
            if let Sync::Summary { held, .. } = m {
                n += held.len();
            }
        }
        assert_eq!(n, 5000);
        assert_eq!(decode(b"\xff\xff garbage"), None);
        assert!(is_digest(&encode(&Sync::Digest(vec![1, 2]))));
        assert!(!is_digest(&encode(&Sync::Pull(vec![]))));
    }
}
