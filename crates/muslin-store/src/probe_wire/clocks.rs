//! How far each peer's clock is from ours, as the send times in its probe
//! requests tell (one-way delay included: milliseconds on an underlay,
//! far below what matters). Probes and sealed gossip are refused once
//! clocks are `FRESH_MS` apart, and leases compare times written by
//! different nodes, so `doctor` reports skew before it bites. Kept per
//! process: every responder of this agent (the gossip transport's, or the
//! etcd cluster's own) records into one table.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A reading older than this no longer describes the peer.
const KEEP: Duration = Duration::from_secs(120);
/// Peers remembered at most: a flood of forged names pushes out the
/// oldest readings, never new ones, and never grows the table.
const MAX_PEERS: usize = 4096;

struct Reading {
    offset_ms: i64,
    /// The sender's clock when it sent: a later request only, so a
    /// captured one replayed later cannot pass for a clock gone wrong.
    sent_ms: u64,
    at: Instant,
}

/// Keyed by sender and source address: a peer probes from its node
/// address and from its tunnel address, and only some of them are its own
/// by the reader's view.
static OFFSETS: Mutex<Option<HashMap<(String, IpAddr), Reading>>> = Mutex::new(None);

/// Records that `peer`, at address `from`, sent a request at `sent_ms` of
/// its clock that arrived at `now_ms` of ours.
pub fn record(peer: &str, from: IpAddr, sent_ms: u64, now_ms: u64) {
    let offset = (i128::from(sent_ms) - i128::from(now_ms))
        .clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
    let mut g = OFFSETS.lock().unwrap_or_else(|e| e.into_inner());
    let m = g.get_or_insert_with(HashMap::new);
    let key = (peer.to_string(), from);
    if m.get(&key).is_some_and(|r| r.sent_ms >= sent_ms) {
        return;
    }
    if m.len() >= MAX_PEERS && !m.contains_key(&key) {
        m.retain(|_, r| r.at.elapsed() < KEEP);
        if m.len() >= MAX_PEERS {
            if let Some(oldest) = m.iter().min_by_key(|(_, r)| r.at).map(|(k, _)| k.clone()) {
                m.remove(&oldest);
            }
        }
    }
    m.insert(
        key,
        Reading {
            offset_ms: offset,
            sent_ms,
            at: Instant::now(),
        },
    );
}

/// The latest reading of every peer heard from lately, per address it
/// came from: a reader trusts a reading only from an address of that peer.
pub fn offsets() -> BTreeMap<String, Vec<(IpAddr, i64)>> {
    let g = OFFSETS.lock().unwrap_or_else(|e| e.into_inner());
    let mut out: BTreeMap<String, Vec<(IpAddr, i64)>> = BTreeMap::new();
    for ((name, from), r) in g.iter().flatten() {
        if r.at.elapsed() < KEEP {
            out.entry(name.clone())
                .or_default()
                .push((*from, r.offset_ms));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip() -> IpAddr {
        "192.0.2.7".parse().unwrap()
    }

    #[test]
    fn the_latest_request_of_each_peer_is_kept_and_replays_ignored() {
        record("clocks-test-a", ip(), 1_000_005, 1_000_000);
        record("clocks-test-a", ip(), 1_000_100, 1_040_100);
        // A replay of the first request, long after: its send time is not
        // later than the reading kept.
        record("clocks-test-a", ip(), 1_000_005, 2_000_000);
        record("clocks-test-b", ip(), 12, 0);
        record("clocks-test-c", ip(), u64::MAX, 0);
        let other: IpAddr = "10.244.9.0".parse().unwrap();
        record("clocks-test-b", other, 30, 0);
        let o = offsets();
        assert_eq!(o["clocks-test-a"], vec![(ip(), -40_000)]);
        let mut b = o["clocks-test-b"].clone();
        b.sort();
        assert_eq!(b, vec![(other, 30), (ip(), 12)]);
        assert_eq!(o["clocks-test-c"], vec![(ip(), i64::MAX)]);
    }
}
