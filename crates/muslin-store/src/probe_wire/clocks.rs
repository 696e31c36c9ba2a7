//! How far each peer's clock is from ours, as the send times in its probe
//! requests tell (one-way delay included: milliseconds on an underlay,
//! far below what matters). Probes and sealed gossip are refused once
//! clocks are `FRESH_MS` apart, and leases compare times written by
//! different nodes, so `doctor` reports skew before it bites. Kept per
//! process: every responder of this agent (the gossip transport's, or the
//! etcd cluster's own) records into one table.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A reading older than this no longer describes the peer.
const KEEP: Duration = Duration::from_secs(120);
/// Peers remembered at most: a flood of forged names cannot grow it
/// without bound.
const MAX_PEERS: usize = 4096;

static OFFSETS: Mutex<Option<HashMap<String, (i64, Instant)>>> = Mutex::new(None);

/// Records that `peer`'s clock read `offset_ms` ahead of ours (negative:
/// behind).
pub fn record(peer: &str, offset_ms: i64) {
    let mut g = OFFSETS.lock().unwrap_or_else(|e| e.into_inner());
    let m = g.get_or_insert_with(HashMap::new);
    if m.len() >= MAX_PEERS && !m.contains_key(peer) {
        m.retain(|_, (_, at)| at.elapsed() < KEEP);
        if m.len() >= MAX_PEERS {
            return;
        }
    }
    m.insert(peer.to_string(), (offset_ms, Instant::now()));
}

/// The latest reading of every peer heard from lately.
pub fn offsets() -> BTreeMap<String, i64> {
    let g = OFFSETS.lock().unwrap_or_else(|e| e.into_inner());
    g.iter()
        .flatten()
        .filter(|(_, (_, at))| at.elapsed() < KEEP)
        .map(|(k, (v, _))| (k.clone(), *v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_reading_of_each_peer_is_kept() {
        record("clocks-test-a", 5);
        record("clocks-test-a", -40_000);
        record("clocks-test-b", 12);
        let o = offsets();
        assert_eq!(o.get("clocks-test-a"), Some(&-40_000));
        assert_eq!(o.get("clocks-test-b"), Some(&12));
    }
}
