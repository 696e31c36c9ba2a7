//! The peers this node has seen, kept in the state directory (see
//! `muslin_model::cluster::Remembered`): a restarted agent knows the
//! cluster it belonged to before the store has told it anything, and keeps
//! routes to peers it cannot hear (paused, partitioned) until their TTL.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use muslin_model::cluster::{BlockClaim, EndpointRecord, NodeRecord, PeerView, Remembered};

const FILE: &str = "peers.json";
/// How often the memory is written (it changes every round: last-seen times,
/// which a restart only needs to within a fraction of the TTL).
const SAVE_EVERY: Duration = Duration::from_secs(30);
/// A change of the peers' path verdicts, relays or endpoints alone waits
/// after the last write [`gap`]: 50 ms a peer, at most [`SAVE_GAP`]. Each
/// write is the whole memory, which grows with the square of the cluster
/// (at 100 nodes 700 kB of JSON, with every peer's view of every other),
/// and in a large cluster, while paths settle or pods start, some peer's
/// verdicts or endpoints change every round: the gap keeps the writes at
/// most near 140 kB/s up to 100 nodes, and small clusters' memory a few
/// rounds behind the view. A pod started within the gap before a crash is
/// learnt again from the store, not from the memory; a graceful stop
/// writes what waited.
const SAVE_PER_PEER: Duration = Duration::from_millis(50);
const SAVE_GAP: Duration = Duration::from_secs(5);

/// Route changes wait this fraction of the [`gap`] after the last write
/// (10 ms a peer, at most 1 s). While a large cluster forms, peers join
/// one after another and each join changed the routes: written at once,
/// each agent of a 100-node lab wrote its whole memory a hundred times
/// over in the first minute. The price: a crash within the wait restarts
/// without the latest peers, addresses and claims. Any peer it hears
/// carries them (gossip gives every node's state to every node), so only
/// a restart cut off from every node that saw them lacks them until the
/// cluster is heard: no route to such a peer, and its claim unknown to the
/// lease rules, which settle a double claim by the earliest.
const ROUTES_SOONER: u32 = 5;

fn gap(peers: usize) -> Duration {
    SAVE_PER_PEER
        .saturating_mul(u32::try_from(peers).unwrap_or(u32::MAX))
        .min(SAVE_GAP)
}

/// The file: whose memory it is, and the peers.
#[derive(serde::Deserialize)]
struct Stored {
    node: String,
    peers: Remembered,
}

/// [`Stored`] as written: the same JSON, borrowed from the peers rather
/// than cloned. The fields follow `PeerView`'s (the tests read the file
/// back as a `Remembered`).
#[derive(serde::Serialize)]
struct StoredRef<'a> {
    node: &'a str,
    peers: PeersRef<'a>,
}

#[derive(serde::Serialize)]
struct PeersRef<'a> {
    peers: BTreeMap<&'a str, (PeerRef<'a>, u64)>,
}

#[derive(serde::Serialize)]
struct PeerRef<'a> {
    record: Option<&'a NodeRecord>,
    claims: &'a BTreeMap<IpNet, BlockClaim>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    network_claims: &'a BTreeMap<String, BTreeMap<IpNet, BlockClaim>>,
    alive: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    endpoints: &'a Vec<EndpointRecord>,
}

/// What each peer's record last gave: its hashes. The cache holds the
/// record's `Arc`, so a change through `PeerView::record_mut` copies it
/// (`Arc::make_mut` on a shared record) and the same pointer means the
/// same record. In a large cluster each record names every peer (its
/// reach, its path verdicts), and hashing them all every round cost an
/// idle agent more than anything else it did.
#[derive(Default)]
struct Records {
    digests: HashMap<String, Digested>,
    endpoints: Endpoints,
}

/// Each peer's endpoints and their hash, kept like the records' digests:
/// the lists are shared (`Arc`) and change only when a pod comes or goes.
#[derive(Default)]
struct Endpoints(HashMap<String, (Arc<Vec<EndpointRecord>>, u64)>);

impl Endpoints {
    fn hash_of(&mut self, name: &str, endpoints: &Arc<Vec<EndpointRecord>>) -> u64 {
        match self.0.get(name) {
            Some((e, h)) if Arc::ptr_eq(e, endpoints) => *h,
            _ => {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                endpoints.hash(&mut h);
                let h = h.finish();
                self.0.insert(name.to_string(), (endpoints.clone(), h));
                h
            }
        }
    }
}

struct Digested {
    /// Held, so the address cannot be reused by another record.
    record: Arc<NodeRecord>,
    routes: u64,
    verdicts: u64,
}

impl Records {
    fn of(&mut self, name: &str, record: &Arc<NodeRecord>) -> &Digested {
        let fresh = self
            .digests
            .get(name)
            .is_some_and(|d| Arc::ptr_eq(&d.record, record));
        if !fresh {
            self.digests.insert(name.to_string(), Digested::of(record));
        }
        &self.digests[name]
    }

    fn forget_others(&mut self, peers: &Remembered) {
        self.digests.retain(|n, _| peers.peers.contains_key(n));
        self.endpoints.0.retain(|n, _| peers.peers.contains_key(n));
    }
}

impl Digested {
    fn of(r: &Arc<NodeRecord>) -> Digested {
        let mut h = std::collections::hash_map::DefaultHasher::new();
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
        let routes = h.finish();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for (peer, health) in &r.health {
            (peer, health.ok).hash(&mut h);
        }
        r.relays.hash(&mut h);
        Digested {
            record: r.clone(),
            routes,
            verdicts: h.finish(),
        }
    }
}

pub struct Memory {
    pub peers: Remembered,
    me: String,
    file: PathBuf,
    saved: Option<Instant>,
    /// [`Fingerprints::routes`] of the memory as last written.
    written: u64,
    /// [`Fingerprints::verdicts`] of the memory as last written.
    verdicts: u64,
    records: Records,
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
            records: Records::default(),
        }
    }

    /// Writes the memory when what a restart routes by changed
    /// ([`Fingerprints::routes`]: peers, addresses, claims) once a fifth
    /// of the [`gap`] since the last write has passed (at once in a small
    /// cluster, within a second at 100 nodes); when only the peers' path
    /// verdicts, relays or endpoints changed, once the whole gap has; and
    /// else every [`SAVE_EVERY`].
    pub fn save_if_due(&mut self) {
        self.records.forget_others(&self.peers);
        let now = fingerprints(&self.peers, &mut self.records);
        let since = self.saved.map(|t| t.elapsed());
        let gap = gap(self.peers.peers.len());
        let due = since.is_none_or(|d| d >= SAVE_EVERY)
            || (now.routes != self.written && since.is_none_or(|d| d >= gap / ROUTES_SOONER))
            || (now.verdicts != self.verdicts && since.is_none_or(|d| d >= gap));
        if due {
            self.write(now, false);
        }
    }

    /// Writes what is still waiting for its gap. Only a memory that has
    /// been written before: one read by another part keeps its file.
    fn flush(&mut self) {
        if self.saved.is_none() {
            return;
        }
        let now = fingerprints(&self.peers, &mut self.records);
        if now.routes != self.written || now.verdicts != self.verdicts {
            // At shutdown, on whatever thread drops the agent: no
            // hand-over of the runtime's worker.
            self.write(now, true);
        }
    }

    fn write(&mut self, now: Fingerprints, on_this_thread: bool) {
        self.written = now.routes;
        self.verdicts = now.verdicts;
        self.saved = Some(Instant::now());
        // Each record is serialized at every write, not kept as JSON
        // between writes: that copy was 700 kB of every idle agent's
        // memory at 100 nodes, for a write every 30 s once idle (while a
        // cluster settles, records change between most writes anyway).
        let peers = self
            .peers
            .peers
            .iter()
            .map(|(name, (p, seen))| (name.as_str(), (peer_ref(p), *seen)))
            .collect();
        let stored = StoredRef {
            node: &self.me,
            peers: PeersRef { peers },
        };
        // Streamed: the whole memory (700 kB at 100 nodes) is never one
        // buffer, which the allocator would keep between the writes.
        let fill = |w: &mut dyn std::io::Write| {
            serde_json::to_writer(w, &stored).map_err(std::io::Error::from)
        };
        let res = match on_this_thread {
            true => crate::atomic_file::write_now_with(&self.file, fill),
            false => crate::atomic_file::write_with(&self.file, fill),
        };
        if let Err(e) = res {
            tracing::warn!(cause = %e, file = ?self.file, "could not keep the remembered peers");
        }
    }
}

/// A graceful stop (a restart, an upgrade) keeps what waited for its gap.
impl Drop for Memory {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Every field named: one added to `PeerView` stops the build here until
/// the file carries it.
fn peer_ref(p: &PeerView) -> PeerRef<'_> {
    let PeerView {
        record,
        claims,
        network_claims,
        alive,
        endpoints,
    } = p;
    PeerRef {
        record: record.as_deref(),
        claims,
        network_claims,
        alive: *alive,
        endpoints,
    }
}

struct Fingerprints {
    /// What a restarted agent routes by before the store speaks: the
    /// peers' names; their addresses, WireGuard ends and reserved ranges
    /// (routes, tunnels, leases); their claims.
    routes: u64,
    /// Which data paths the peers report failing, and their relays: a
    /// restart relays from them at once (not their causes' words). And
    /// the peers' endpoints (names and policy), which change with every
    /// pod started.
    verdicts: u64,
}

/// Hashes of the memory; each record is hashed once (see [`Records`]),
/// claims and endpoints every time.
fn fingerprints(peers: &Remembered, records: &mut Records) -> Fingerprints {
    let mut routes = std::collections::hash_map::DefaultHasher::new();
    let mut verdicts = std::collections::hash_map::DefaultHasher::new();
    for (name, (p, _)) in &peers.peers {
        name.hash(&mut routes);
        name.hash(&mut verdicts);
        if let Some(r) = &p.record {
            let d = records.of(name, r);
            d.routes.hash(&mut routes);
            d.verdicts.hash(&mut verdicts);
        }
        for (b, c) in &p.claims {
            (b, c.claimed_at_ms).hash(&mut routes);
        }
        for (network, claims) in &p.network_claims {
            network.hash(&mut routes);
            for (b, c) in claims {
                (b, c.claimed_at_ms).hash(&mut routes);
            }
        }
        records
            .endpoints
            .hash_of(name, &p.endpoints)
            .hash(&mut verdicts);
    }
    Fingerprints {
        routes: routes.finish(),
        verdicts: verdicts.finish(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The peers the memory file in `dir` holds.
    fn stored_in(dir: &Path) -> Remembered {
        serde_json::from_slice::<Stored>(&std::fs::read(dir.join(FILE)).unwrap())
            .unwrap()
            .peers
    }

    fn routes_fingerprint(peers: &Remembered) -> u64 {
        fingerprints(peers, &mut Records::default()).routes
    }

    fn verdicts_fingerprint(peers: &Remembered) -> u64 {
        fingerprints(peers, &mut Records::default()).verdicts
    }

    fn endpoint(node: &str, address: &str) -> EndpointRecord {
        EndpointRecord {
            network: "default".into(),
            addresses: vec![address.parse().unwrap()],
            container_id: "c1".into(),
            ifname: "eth0".into(),
            node: node.into(),
            pod_namespace: None,
            pod_name: None,
            labels: Default::default(),
            ports: Default::default(),
            aliases: Vec::new(),
            name: None,
        }
    }

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
    fn small_clusters_memory_lags_a_round_large_ones_at_most_the_gap() {
        assert_eq!(gap(0), Duration::ZERO);
        assert_eq!(gap(3), Duration::from_millis(150));
        assert_eq!(gap(100), SAVE_GAP);
        assert_eq!(gap(usize::MAX), SAVE_GAP);
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
        pod_started.peers.get_mut("h2").unwrap().0.endpoints =
            Arc::new(vec![endpoint("h2", "10.0.2.5/32")]);
        assert_eq!(routes_fingerprint(&a), routes_fingerprint(&pod_started));
        assert_ne!(verdicts_fingerprint(&a), verdicts_fingerprint(&pod_started));
    }

    #[test]
    fn routes_are_written_after_a_fifth_of_the_gap_verdicts_and_endpoints_after_it_all() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut m = Memory::load(&dir, "me");
        let stored = || stored_in(&dir);
        // A hundred peers: the gap is at its longest.
        let others: Vec<(String, String)> = (3..=100)
            .map(|i| (format!("h{i}"), format!("10.1.{i}.0/24")))
            .collect();
        assert_eq!(gap(others.len() + 2), SAVE_GAP);
        let with_verdict = |block: &str, ok: bool| {
            let mut peers = vec![("h1", block), ("h2", "10.0.2.0/24")];
            peers.extend(others.iter().map(|(n, b)| (n.as_str(), b.as_str())));
            let mut r = memory_of(&peers);
            let mut rec = muslin_model::cluster::NodeRecord::new(
                "h1",
                "192.168.1.1".parse().unwrap(),
                "192.168.1.0/24".parse().unwrap(),
                1500,
            );
            rec.health.insert(
                "h2",
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
        // A moved claim: written a fifth of the gap after the last
        // write, with the verdict before it.
        m.peers = with_verdict("10.0.9.0/24", false);
        m.saved = Some(Instant::now());
        m.save_if_due();
        assert_eq!(stored(), with_verdict("10.0.1.0/24", true));
        m.saved = Some(Instant::now() - SAVE_GAP / ROUTES_SOONER);
        m.save_if_due();
        assert_eq!(stored(), m.peers);
        // Past the gap, a verdict is written.
        m.peers = with_verdict("10.0.9.0/24", true);
        m.save_if_due();
        assert_eq!(stored(), with_verdict("10.0.9.0/24", false));
        m.saved = Some(Instant::now() - SAVE_GAP);
        m.save_if_due();
        assert_eq!(stored(), m.peers);
        // A pod started: like a verdict, kept for the write after the gap.
        let before = m.peers.clone();
        m.peers.peers.get_mut("h2").unwrap().0.endpoints =
            Arc::new(vec![endpoint("h2", "10.0.2.5/32")]);
        m.save_if_due();
        assert_eq!(stored(), before);
        m.saved = Some(Instant::now() - SAVE_GAP);
        m.save_if_due();
        assert_eq!(stored(), m.peers);
    }

    #[test]
    fn endpoints_changed_in_place_after_a_write_are_written() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut m = Memory::load(&dir, "me");
        let stored = || stored_in(&dir);
        m.peers = memory_of(&[("h1", "10.0.1.0/24"), ("h2", "10.0.2.0/24")]);
        m.save_if_due();
        assert_eq!(stored(), m.peers);
        // Changed where it lies: the hash kept for the old list must not
        // stand for the new one.
        let eps = &mut m.peers.peers.get_mut("h2").unwrap().0.endpoints;
        Arc::make_mut(eps).push(endpoint("h2", "10.0.2.5/32"));
        m.saved = Some(Instant::now() - SAVE_GAP);
        m.save_if_due();
        assert_eq!(stored(), m.peers);
        assert_eq!(stored().peers["h2"].0.endpoints.len(), 1);
    }

    #[test]
    fn a_graceful_stop_writes_what_waited_and_a_reader_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let read = || {
            serde_json::from_slice::<Stored>(&std::fs::read(dir.join(FILE)).unwrap())
                .unwrap()
                .peers
        };
        // Only read: dropping it leaves no file.
        let mut reader = Memory::load(&dir, "me");
        reader.peers = memory_of(&[("h1", "10.0.1.0/24")]);
        drop(reader);
        assert!(!dir.join(FILE).exists());
        let mut m = Memory::load(&dir, "me");
        m.peers = memory_of(&[("h1", "10.0.1.0/24"), ("h2", "10.0.2.0/24")]);
        m.save_if_due();
        let mut started = m.peers.clone();
        started.peers.get_mut("h2").unwrap().0.endpoints =
            Arc::new(vec![endpoint("h2", "10.0.2.5/32")]);
        m.peers = started.clone();
        m.saved = Some(Instant::now());
        m.save_if_due();
        assert_ne!(read(), started, "written before its gap");
        drop(m);
        assert_eq!(read(), started);
    }

    #[test]
    fn the_file_reads_back_whole_and_follows_records_changed_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut m = Memory::load(&dir, "me");
        let mut peers = memory_of(&[("h1", "10.0.1.0/24")]);
        let p = &mut peers.peers.get_mut("h1").unwrap().0;
        p.alive = true;
        p.record = Some(Arc::new(NodeRecord::new(
            "h1",
            "192.168.1.1".parse().unwrap(),
            "192.168.1.0/24".parse().unwrap(),
            1500,
        )));
        p.network_claims.entry("blue".into()).or_default().insert(
            "10.9.0.0/26".parse().unwrap(),
            BlockClaim { claimed_at_ms: 7 },
        );
        Arc::make_mut(&mut p.endpoints).push(EndpointRecord {
            network: "default".into(),
            addresses: vec!["10.0.1.5/32".parse().unwrap()],
            container_id: "c1".into(),
            ifname: "eth0".into(),
            node: "h1".into(),
            pod_namespace: Some("shop".into()),
            pod_name: None,
            labels: [("app".to_string(), "web".to_string())].into(),
            ports: Default::default(),
            aliases: vec!["web".into()],
            name: Some("c1".into()),
        });
        m.peers = peers;
        m.save_if_due();
        let stored = || stored_in(&dir);
        assert_eq!(stored(), m.peers);
        // A record changed where it lies.
        let rec = m.peers.peers.get_mut("h1").unwrap().0.record_mut().unwrap();
        rec.reserved.push("172.16.0.0/12".parse().unwrap());
        // Past the wait before a route change is written.
        m.saved = Some(Instant::now() - SAVE_GAP);
        m.save_if_due();
        assert_eq!(stored(), m.peers);
    }
}
