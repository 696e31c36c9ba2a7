//! The peers this node has seen, kept in the state directory (see
//! `muslin_model::cluster::Remembered`): a restarted agent knows the
//! cluster it belonged to before the store has told it anything, and keeps
//! routes to peers it cannot hear (paused, partitioned) until their TTL.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use muslin_model::cluster::Remembered;

const FILE: &str = "peers.json";
/// How often the memory is written (it changes every round: last-seen times,
/// which a restart only needs to within a fraction of the TTL).
const SAVE_EVERY: Duration = Duration::from_secs(30);
/// A change of the peers' path verdicts or relays alone waits this long
/// after the last write: in a large cluster, while paths settle, some
/// peer's verdicts change every round, and each write is the whole memory
/// (at 100 nodes 700 kB of JSON, with every peer's view of every other).
const SAVE_GAP: Duration = Duration::from_secs(5);

/// The file: whose memory it is, and the peers.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    node: String,
    peers: Remembered,
}

/// [`Stored`] as written, borrowed.
#[derive(serde::Serialize)]
struct StoredRef<'a> {
    node: &'a str,
    peers: &'a Remembered,
}

pub struct Memory {
    pub peers: Remembered,
    me: String,
    file: PathBuf,
    saved: Option<Instant>,
    /// [`routes_fingerprint`] of the memory as last written.
    written: u64,
    /// [`verdicts_fingerprint`] of the memory as last written.
    verdicts: u64,
}

impl Memory {
    pub fn load(dir: &Path, me: &str) -> Memory {
        let file = dir.join(FILE);
        let peers = match std::fs::read(&file).map(|b| serde_json::from_slice::<Stored>(&b)) {
            // A renamed node starts afresh: its old name is a peer now.
            Ok(Ok(s)) if s.node == me => s.peers,
            Ok(Ok(_)) => Remembered::default(),
            Ok(Err(e)) => {
                tracing::warn!(cause = %e, file = ?file, "ignoring unreadable remembered peers");
                Remembered::default()
            }
            Err(_) => Remembered::default(),
        };
        if !peers.peers.is_empty() {
            tracing::info!(peers = ?peers.peers.keys().collect::<Vec<_>>(), "remembering the peers of the previous run until the cluster speaks or their TTL passes");
        }
        Memory {
            peers,
            me: me.to_string(),
            file,
            saved: None,
            written: 0,
            verdicts: 0,
        }
    }

    /// Writes the memory at once when what a restart builds from it
    /// changed ([`routes_fingerprint`]: peers, addresses, claims,
    /// endpoints and their labels); when only the peers' path verdicts or
    /// relays changed, at most every [`SAVE_GAP`]; and else every
    /// [`SAVE_EVERY`]: in a large cluster some verdict changes nearly
    /// every round.
    pub fn save_if_due(&mut self) {
        let now = routes_fingerprint(&self.peers);
        let verdicts = verdicts_fingerprint(&self.peers);
        let since = self.saved.map(|t| t.elapsed());
        let due = since.is_none_or(|d| d >= SAVE_EVERY)
            || now != self.written
            || (verdicts != self.verdicts && since.is_none_or(|d| d >= SAVE_GAP));
        if !due {
            return;
        }
        self.written = now;
        self.verdicts = verdicts;
        self.saved = Some(Instant::now());
        let res = crate::atomic_file::write(
            &self.file,
            &serde_json::to_vec(&StoredRef {
                node: &self.me,
                peers: &self.peers,
            })
            .expect("serializes"),
        );
        if let Err(e) = res {
            tracing::warn!(cause = %e, file = ?self.file, "could not keep the remembered peers");
        }
    }
}

/// A hash of which data paths the peers report failing, and their relays:
/// a restart relays from them at once (not their causes' words).
fn verdicts_fingerprint(peers: &Remembered) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (name, (p, _)) in &peers.peers {
        name.hash(&mut h);
        if let Some(r) = &p.record {
            for (peer, health) in &r.health {
                (peer, health.ok).hash(&mut h);
            }
            r.relays.hash(&mut h);
        }
    }
    h.finish()
}

/// A hash of what a restarted agent builds from the remembered peers
/// before the store speaks: their names; their addresses, WireGuard ends
/// and reserved ranges (routes, tunnels, leases); their claims; and their
/// endpoints (names and policy). Their path verdicts and relays are
/// [`verdicts_fingerprint`]'s.
fn routes_fingerprint(peers: &Remembered) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (name, (p, _)) in &peers.peers {
        name.hash(&mut h);
        if let Some(r) = &p.record {
            (
                r.address,
                r.underlay_prefix,
                &r.vtep_mac,
                r.mtu,
                &r.reserved,
            )
                .hash(&mut h);
            r.wireguard
                .as_ref()
                .map(|w| (&w.public_key, w.port))
                .hash(&mut h);
        }
        for (b, c) in &p.claims {
            (b, c.claimed_at_ms).hash(&mut h);
        }
        for (network, claims) in &p.network_claims {
            network.hash(&mut h);
            for (b, c) in claims {
                (b, c.claimed_at_ms).hash(&mut h);
            }
        }
        p.endpoints.hash(&mut h);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory_of(peers: &[(&str, &str)]) -> Remembered {
        let mut m = Remembered::default();
        for (name, block) in peers {
            let mut p = muslin_model::cluster::PeerView::default();
            p.claims.insert(
                block.parse().unwrap(),
                muslin_model::cluster::BlockClaim { claimed_at_ms: 1 },
            );
            m.peers.insert(name.to_string(), (p, 5));
        }
        m
    }

    #[test]
    fn the_fingerprint_follows_peers_and_claims_not_seen_times() {
        let a = memory_of(&[("h1", "10.0.1.0/24"), ("h2", "10.0.2.0/24")]);
        let mut seen_later = a.clone();
        for (_, t) in seen_later.peers.values_mut() {
            *t = 99;
        }
        assert_eq!(routes_fingerprint(&a), routes_fingerprint(&seen_later));
        let moved = memory_of(&[("h1", "10.0.1.0/24"), ("h2", "10.0.3.0/24")]);
        assert_ne!(routes_fingerprint(&a), routes_fingerprint(&moved));
        let gone = memory_of(&[("h1", "10.0.1.0/24")]);
        assert_ne!(routes_fingerprint(&a), routes_fingerprint(&gone));
        let mut pod_started = a.clone();
        pod_started.peers.get_mut("h2").unwrap().0.endpoints.push(
            muslin_model::cluster::EndpointRecord {
                network: "default".into(),
                addresses: vec!["10.0.2.5/32".parse().unwrap()],
                container_id: "c1".into(),
                ifname: "eth0".into(),
                node: "h2".into(),
                pod_namespace: None,
                pod_name: None,
                labels: Default::default(),
                ports: Default::default(),
                aliases: Vec::new(),
                name: None,
            },
        );
        assert_ne!(routes_fingerprint(&a), routes_fingerprint(&pod_started));
    }

    #[test]
    fn routes_are_written_at_once_path_verdicts_at_most_every_gap() {
        let dir = std::env::temp_dir().join(format!("muslin-memory-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut m = Memory::load(&dir, "me");
        let stored = || {
            serde_json::from_slice::<Stored>(&std::fs::read(dir.join(FILE)).unwrap())
                .unwrap()
                .peers
        };
        let with_verdict = |block: &str, ok: bool| {
            let mut r = memory_of(&[("h1", block), ("h2", "10.0.2.0/24")]);
            let mut rec = muslin_model::cluster::NodeRecord::new(
                "h1",
                "192.168.1.1".parse().unwrap(),
                "192.168.1.0/24".parse().unwrap(),
                1500,
            );
            rec.health.insert(
                "h2".into(),
                muslin_model::cluster::PathHealth {
                    ok,
                    cause: None,
                    path_mtu: None,
                },
            );
            r.peers.get_mut("h1").unwrap().0.record = Some(std::sync::Arc::new(rec));
            r
        };
        m.peers = with_verdict("10.0.1.0/24", true);
        m.save_if_due();
        assert_eq!(stored(), m.peers);
        // A path verdict right after: kept for the next write.
        m.peers = with_verdict("10.0.1.0/24", false);
        m.save_if_due();
        assert_eq!(stored(), with_verdict("10.0.1.0/24", true));
        // A moved claim: written at once, with the verdict before it.
        m.peers = with_verdict("10.0.9.0/24", false);
        m.save_if_due();
        assert_eq!(stored(), m.peers);
        // Past the gap, a verdict is written.
        m.peers = with_verdict("10.0.9.0/24", true);
        m.save_if_due();
        assert_eq!(stored(), with_verdict("10.0.9.0/24", false));
        m.saved = Some(Instant::now() - SAVE_GAP);
        m.save_if_due();
        assert_eq!(stored(), m.peers);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
