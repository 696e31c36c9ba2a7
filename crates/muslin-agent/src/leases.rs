//! This node's block leases: claim, settle, lose, persist. The rules are
//! in `muslin_model::cluster`; see docs/block-leases.md.
//!
//! The lease file, version 2: `{"version": 2, "alive_at_ms": T, "blocks":
//! [{"network": "default", "cidr": "10.244.3.0/24", "claimed_at_ms": T}]}`.
//! Version 1 (no `version`, `"blocks": {"CIDR": T}`) held the default
//! network's blocks; it is read and converted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use muslin_model::cluster::{choose_free_block, BlockClaim, ClusterView};
use serde::{Deserialize, Serialize};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

const LEASES_VERSION: u32 = 2;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Lease {
    network: String,
    cidr: IpNet,
    claimed_at_ms: u64,
}

#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Persisted {
    version: u32,
    blocks: Vec<Lease>,
    alive_at_ms: u64,
}

/// The previous version's file.
#[derive(Deserialize)]
struct PersistedV1 {
    blocks: BTreeMap<IpNet, u64>,
    alive_at_ms: u64,
}

impl Persisted {
    fn from_json(bytes: &[u8]) -> Result<Persisted, String> {
        #[derive(Deserialize)]
        struct Version {
            version: Option<u32>,
        }
        let v: Version = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        match v.version {
            None | Some(1) => {
                let old: PersistedV1 = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
                Ok(Persisted {
                    version: LEASES_VERSION,
                    blocks: old
                        .blocks
                        .into_iter()
                        .map(|(cidr, at)| Lease {
                            network: muslin_model::DEFAULT_NETWORK.to_string(),
                            cidr,
                            claimed_at_ms: at,
                        })
                        .collect(),
                    alive_at_ms: old.alive_at_ms,
                })
            }
            Some(LEASES_VERSION) => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
            Some(n) => Err(format!(
                "version {n} was written by a newer Muslin (this one reads 1 and {LEASES_VERSION})"
            )),
        }
    }
}

pub struct Leases {
    me: String,
    /// The Muslin network these leases are of.
    network: String,
    /// Leases of other networks found in the file, written back untouched.
    others: Vec<Lease>,
    pod_cidr: IpNet,
    size: u8,
    settle: Duration,
    file: PathBuf,
    /// Our claims and when we made them.
    pub claims: BTreeMap<IpNet, u64>,
    saved_alive: u64,
    /// Claim a first block only when an ADD asks for one (a network not
    /// every node has containers in).
    lazy: bool,
    lateness: Lateness,
    /// Claims that have settled: they stay so while we hold them, however
    /// late claims arrive afterwards (addresses may be out of them).
    served: std::collections::BTreeSet<IpNet>,
}

/// Claims made past this long ago are not "in flight" when they arrive:
/// a peer's memory, or a node back after a long partition.
const MAX_LATENESS_MS: u64 = 20_000;
/// Lateness seen this long ago no longer says how late claims are.
const LATENESS_WINDOW_MS: u64 = 60_000;

/// How late other nodes' claims reach this node. A claim of ours must not
/// settle while a competing claim made just before it may still be on its
/// way, and how long that is depends on the cluster's size and load: a
/// hundred lab hosts starting at once on two cores delivered some claims
/// 5 s after they were made, past the fixed settle time, and two nodes
/// handed out the same addresses. A claim of ours settles only once it is
/// older than twice the largest lateness seen lately. A heuristic: it
/// looks back, so the first late claim of a quiet cluster finds the floor.
#[derive(Debug, Default)]
struct Lateness {
    /// Only claims made after this count: the older ones a node learns at
    /// its start were not in flight.
    since_ms: u64,
    /// Whether a view has been seen: what the first one shows arrived
    /// while this node was not yet listening, which says nothing of how
    /// late gossip is.
    started: bool,
    /// Claims seen that may still count (made at most `MAX_LATENESS_MS`
    /// ago), with their times: a claim counts once, and a block claimed
    /// again later counts again.
    seen: std::collections::HashMap<(String, IpNet), u64>,
    /// When a late claim was seen, and how late it was.
    recent: std::collections::VecDeque<(u64, u64)>,
}

impl Lateness {
    fn new(since_ms: u64) -> Lateness {
        Lateness {
            since_ms,
            ..Lateness::default()
        }
    }

    /// Notes each claim of another node the first time it shows.
    fn observe(&mut self, me: &str, view: &ClusterView, now: u64) {
        let oldest = now.saturating_sub(MAX_LATENESS_MS).max(self.since_ms);
        for (node, peer) in view.nodes.iter().filter(|(n, _)| n.as_str() != me) {
            for (b, c) in &peer.claims {
                let at = c.claimed_at_ms;
                // Older claims never count (learnt, or a peer's memory):
                // not even kept.
                if at < oldest {
                    continue;
                }
                if self.seen.insert((node.clone(), *b), at) == Some(at) {
                    continue;
                }
                if self.started {
                    self.recent.push_back((now, now.saturating_sub(at)));
                }
            }
        }
        self.started = true;
        self.seen.retain(|_, at| *at >= oldest);
        while self
            .recent
            .front()
            .is_some_and(|(at, _)| now.saturating_sub(*at) > LATENESS_WINDOW_MS)
        {
            self.recent.pop_front();
        }
    }

    /// How old a claim of ours must be before it may serve.
    fn settle_ms(&self, floor_ms: u64) -> u64 {
        let worst = self.recent.iter().map(|(_, l)| *l).max().unwrap_or(0);
        floor_ms.max(2 * worst)
    }
}

/// What a step decided, for the caller to publish.
#[derive(Debug, Default)]
pub struct Step {
    pub claim: Option<(IpNet, BlockClaim)>,
    /// Claims to send again: they never showed up in the store.
    pub reclaim: Vec<(IpNet, BlockClaim)>,
    pub release: Vec<IpNet>,
    /// Blocks IPAM may use: held and settled, oldest first.
    pub settled: Vec<IpNet>,
}

impl Leases {
    /// Loads the leases of a previous run. A node gone for longer than the
    /// TTL has lost them: others may hold them now.
    pub fn load(
        dir: &Path,
        me: &str,
        pod_cidr: IpNet,
        size: u8,
        settle: Duration,
        ttl: Duration,
    ) -> Result<Leases, String> {
        let file = dir.join("leases.json");
        let network = muslin_model::DEFAULT_NETWORK;
        Self::load_from(file, network, me, pod_cidr, size, settle, ttl)
    }

    /// The leases of network `network` (not the default), kept in a file
    /// of their own; a first block is claimed only when an ADD asks.
    pub fn load_network(
        dir: &Path,
        me: &str,
        network: &muslin_model::network::NetworkSpec,
        settle: Duration,
        ttl: Duration,
    ) -> Result<Leases, String> {
        let subnet = network.subnets[0];
        let file = dir.join(format!("leases.{}.json", network.name));
        let name = &network.name;
        let size = network.block_size;
        let mut l = Self::load_from(file, name, me, subnet, size, settle, ttl)?;
        l.lazy = true;
        Ok(l)
    }

    /// Gives up every claim (the network is gone) and removes the file.
    pub fn release_all(&mut self) -> Vec<IpNet> {
        let _ = std::fs::remove_file(&self.file);
        self.served.clear();
        std::mem::take(&mut self.claims).into_keys().collect()
    }

    fn load_from(
        file: PathBuf,
        network: &str,
        me: &str,
        pod_cidr: IpNet,
        size: u8,
        settle: Duration,
        ttl: Duration,
    ) -> Result<Leases, String> {
        // A missing file is a first start; an unreadable one must not pass
        // for "no blocks", or pods of a block we still hold would collide
        // with whoever claims it next.
        let p: Persisted = match std::fs::read(&file) {
            Ok(b) => Persisted::from_json(&b).map_err(|e| format!("lease file {file:?} is corrupt ({e}); move it away only if this node's pods are gone"))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted::default(),
            Err(e) => return Err(format!("reading {file:?}: {e}")),
        };
        let network = network.to_string();
        let (ours, others): (Vec<Lease>, Vec<Lease>) =
            p.blocks.into_iter().partition(|l| l.network == network);
        let blocks: BTreeMap<IpNet, u64> = ours
            .into_iter()
            .map(|l| (l.cidr, l.claimed_at_ms))
            .collect();
        let gone = Duration::from_millis(now_ms().saturating_sub(p.alive_at_ms));
        let claims = if blocks.is_empty() {
            BTreeMap::new()
        } else if gone > ttl {
            tracing::error!(
                blocks = ?blocks.keys().collect::<Vec<_>>(),
                gone_s = gone.as_secs(),
                ttl_s = ttl.as_secs(),
                "THIS NODE WAS GONE LONGER THAN THE BLOCK TTL: its blocks may belong to other nodes now; \
                 it claims a new block, and containers still holding old addresses must be restarted"
            );
            BTreeMap::new()
        } else {
            let kept: BTreeMap<IpNet, u64> = blocks
                .into_iter()
                .filter(|(b, _)| pod_cidr.contains(b))
                .collect();
            tracing::info!(blocks = ?kept.keys().collect::<Vec<_>>(), "keeping the blocks of the previous run");
            kept
        };
        Ok(Leases {
            me: me.to_string(),
            network,
            others,
            pod_cidr,
            size,
            settle,
            file,
            claims,
            saved_alive: 0,
            lazy: false,
            lateness: Lateness::new(now_ms()),
            served: Default::default(),
        })
    }

    pub fn network(&self) -> &str {
        &self.network
    }

    /// One round: drop claims another node wins, claim a block when we
    /// hold none (or `more` asks for another), report the settled ones.
    /// `asked`: an ADD saw that many blocks and wants more.
    pub fn step(&mut self, view: &ClusterView, asked: Option<usize>) -> Step {
        let mut s = Step::default();
        let owners = view.block_owners();
        let now = now_ms();
        self.lateness.observe(&self.me, view, now);
        let settle_ms = self.lateness.settle_ms(self.settle.as_millis() as u64);
        // A claim of ours that another node holds is lost, whether our claim
        // reached the store and lost the rule (gossip) or never got in
        // because the block was taken (etcd's compare-and-create).
        let lost: Vec<(IpNet, String)> = self
            .claims
            .keys()
            .filter_map(|b| {
                owners
                    .get(b)
                    .filter(|o| **o != self.me)
                    .map(|o| (*b, o.clone()))
            })
            .collect();
        for (b, winner) in lost {
            self.claims.remove(&b);
            tracing::warn!(block = %b, %winner, "lost a block claim to another node; choosing another block");
            s.release.push(b);
        }
        // A claim nobody shows after a while never reached the store (a
        // failed request): make it again.
        let retry_after = (self.settle.as_millis() as u64).max(500) * 4;
        s.reclaim = self
            .claims
            .iter()
            .filter(|(b, at)| !owners.contains_key(*b) && now.saturating_sub(**at) > retry_after)
            .map(|(b, at)| (*b, BlockClaim { claimed_at_ms: *at }))
            .collect();
        let mut settled: Vec<(u64, IpNet)> = self
            .claims
            .iter()
            .filter(|(b, at)| {
                owners.get(*b).map(String::as_str) == Some(self.me.as_str())
                    && (self.served.contains(*b) || now.saturating_sub(**at) >= settle_ms)
            })
            .map(|(b, at)| (*at, *b))
            .collect();
        // Kept while held, even through a round whose view lacks the claim.
        let claims = &self.claims;
        self.served.retain(|b| claims.contains_key(b));
        self.served.extend(settled.iter().map(|(_, b)| *b));
        settled.sort();
        s.settled = settled.into_iter().map(|(_, b)| b).collect();
        let pending = self.claims.len() > s.settled.len();
        let first = self.claims.is_empty() && (asked.is_some() || !self.lazy);
        // Another block only for an ADD that found every settled block
        // full: one that asked before a block settled is served by it.
        let more = asked.is_some_and(|saw| saw >= s.settled.len());
        if (first || (more && !pending && !self.claims.is_empty())) && s.claim.is_none() {
            // Ranges some host routes elsewhere are never leased.
            let avoid: Vec<IpNet> = self.claims.keys().copied().chain(view.reserved()).collect();
            match choose_free_block(view, self.pod_cidr, self.size, &self.me, &avoid, !self.lazy) {
                Some(b) => {
                    tracing::info!(block = %b, "claiming a block");
                    self.claims.insert(b, now);
                    s.claim = Some((b, BlockClaim { claimed_at_ms: now }));
                }
                None => {
                    tracing::error!(pod_cidr = %self.pod_cidr, "no free block left in the pod network")
                }
            }
        }
        if s.claim.is_some()
            || !s.release.is_empty()
            || now.saturating_sub(self.saved_alive) > 10_000
        {
            self.save(now);
        }
        s
    }

    fn save(&mut self, now: u64) {
        let p = Persisted {
            version: LEASES_VERSION,
            blocks: self
                .claims
                .iter()
                .map(|(b, at)| Lease {
                    network: self.network.clone(),
                    cidr: *b,
                    claimed_at_ms: *at,
                })
                .chain(self.others.iter().cloned())
                .collect(),
            alive_at_ms: now,
        };
        // Durable like the endpoint table.
        match crate::atomic_file::write(&self.file, &serde_json::to_vec(&p).expect("serializes")) {
            Ok(()) => self.saved_alive = now,
            Err(e) => tracing::warn!(file = ?self.file, cause = %e, "could not save leases"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("muslin-leases-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn claim_view(claims: &[(&str, &str, u64)]) -> ClusterView {
        let mut v = ClusterView::default();
        for (n, b, at) in claims {
            v.nodes
                .entry(n.to_string())
                .or_default()
                .claims
                .insert(b.parse().unwrap(), BlockClaim { claimed_at_ms: *at });
        }
        v
    }

    /// Node n1's default-network leases in `d`: /24 blocks of
    /// 10.244.0.0/16, settled at once.
    fn n1_in(d: &Path, ttl: Duration) -> Leases {
        let pod: IpNet = "10.244.0.0/16".parse().unwrap();
        Leases::load(d, "n1", pod, 24, Duration::ZERO, ttl).unwrap()
    }

    /// `others`' claims and ours.
    fn view_with(l: &Leases, others: &[(&str, &str, u64)]) -> ClusterView {
        let mut v = claim_view(others);
        let me = v.nodes.entry(l.me.clone()).or_default();
        for (b, at) in &l.claims {
            me.claims.insert(*b, BlockClaim { claimed_at_ms: *at });
        }
        v
    }

    #[test]
    fn claims_settles_loses_and_persists() {
        let d = dir("a");
        let mut l = n1_in(&d, Duration::from_secs(60));
        let s = l.step(&ClusterView::default(), None);
        let (b, _) = s.claim.unwrap();
        // Settle time zero: settled as soon as the view shows it ours.
        let s = l.step(&view_with(&l, &[]), None);
        assert_eq!(s.settled, vec![b]);
        assert!(s.claim.is_none());
        // More was asked for: a second block, while the first stays.
        let s = l.step(&view_with(&l, &[]), Some(1));
        let (b2, _) = s.claim.unwrap();
        assert_ne!(b, b2);
        let s = l.step(&view_with(&l, &[("n0", &b2.to_string(), 1)]), None);
        assert_eq!(s.release, vec![b2]);
        // An ADD waiting for the first block asks in the step the block
        // settles in: that block serves it; no second one is claimed.
        let d2 = dir("a2");
        let mut w = n1_in(&d2, Duration::from_secs(60));
        w.step(&ClusterView::default(), Some(0)).claim.unwrap();
        let s = w.step(&view_with(&w, &[]), Some(0));
        assert_eq!(s.settled.len(), 1);
        assert!(s.claim.is_none(), "{:?}", s.claim);
        // The same ask read a step late: still served by that block.
        assert!(w.step(&view_with(&w, &[]), Some(0)).claim.is_none());
        // An ADD that saw the block and found it full gets another.
        assert!(w.step(&view_with(&w, &[]), Some(1)).claim.is_some());
        std::fs::remove_dir_all(&d2).unwrap();
        let s = l.step(&view_with(&l, &[]), Some(1));
        let (b2, _) = s.claim.unwrap();
        assert_ne!(b, b2);
        // Someone claimed b2 earlier: we give it up.
        let s = l.step(&view_with(&l, &[("n0", &b2.to_string(), 1)]), None);
        assert_eq!(s.release, vec![b2]);
        assert!(!l.claims.contains_key(&b2));
        // A restart within the TTL keeps the blocks.
        let l2 = n1_in(&d, Duration::from_secs(60));
        assert_eq!(l2.claims.keys().copied().collect::<Vec<_>>(), vec![b]);
        // Past the TTL it does not.
        std::thread::sleep(Duration::from_millis(5));
        let l3 = n1_in(&d, Duration::from_millis(1));
        assert!(l3.claims.is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn settling_waits_twice_as_long_as_claims_lately_took_to_arrive() {
        let mut l = Lateness::new(1_000);
        assert_eq!(l.settle_ms(3_000), 3_000, "nothing seen: the floor");
        // The first view: what it shows arrived before we listened.
        l.observe("me", &claim_view(&[("e", "10.244.9.0/24", 1_500)]), 6_000);
        assert_eq!(l.settle_ms(3_000), 3_000);
        // Made before this node started: learnt, not in flight.
        l.observe("me", &claim_view(&[("a", "10.244.1.0/24", 500)]), 9_000);
        assert_eq!(l.settle_ms(3_000), 3_000);
        // Our own claims do not count.
        l.observe("me", &claim_view(&[("me", "10.244.2.0/24", 2_000)]), 9_000);
        assert_eq!(l.settle_ms(3_000), 3_000);
        // A claim that arrived 4 s after it was made.
        l.observe("me", &claim_view(&[("b", "10.244.3.0/24", 10_000)]), 14_000);
        assert_eq!(l.settle_ms(3_000), 8_000);
        // Seen again later, it does not count again.
        let both = claim_view(&[
            ("b", "10.244.3.0/24", 10_000),
            ("c", "10.244.4.0/24", 14_500),
        ]);
        l.observe("me", &both, 15_000);
        assert_eq!(l.settle_ms(3_000), 8_000);
        assert_eq!(l.recent.len(), 2);
        // Far later than anything in flight: a peer's memory, not counted.
        l.observe(
            "me",
            &claim_view(&[("d", "10.244.5.0/24", 16_000)]),
            16_000 + MAX_LATENESS_MS + 1,
        );
        assert_eq!(l.recent.len(), 2);
        // Only claims that may still count are kept.
        assert!(l.seen.is_empty(), "{:?}", l.seen);
        // A minute on, the cluster is quiet again: back to the floor.
        l.observe("me", &both, 15_000 + LATENESS_WINDOW_MS + 1);
        assert_eq!(l.settle_ms(3_000), 3_000);
        // The same block claimed again by the same node counts again.
        let now = 100_000;
        l.observe(
            "me",
            &claim_view(&[("b", "10.244.3.0/24", now - 1_000)]),
            now,
        );
        assert_eq!(l.settle_ms(0), 2_000);
    }

    #[test]
    fn a_claim_waits_out_late_claims_and_stays_served_once_settled() {
        let d = dir("late");
        let mut l = n1_in(&d, Duration::from_secs(60));
        l.lateness.since_ms = 0;
        // (The first view only marks what it shows.)
        let (b, _) = l.step(&ClusterView::default(), None).claim.unwrap();
        let now = now_ms();
        // Another node's claim (of another block) arrives 3 s late: ours,
        // just made, may yet meet a competitor as late.
        let mut v = view_with(&l, &[("n2", "10.244.200.0/24", now - 3_000)]);
        let s = l.step(&v, None);
        assert!(s.settled.is_empty(), "{:?}", s.settled);
        // Older than twice that: it serves.
        l.claims.insert(b, now - 7_000);
        v.nodes.get_mut("n1").unwrap().claims.insert(
            b,
            BlockClaim {
                claimed_at_ms: now - 7_000,
            },
        );
        assert_eq!(l.step(&v, None).settled, vec![b]);
        // Later claims arriving later still do not take it back.
        v.nodes.entry("n3".into()).or_default().claims.insert(
            "10.244.201.0/24".parse().unwrap(),
            BlockClaim {
                claimed_at_ms: now_ms() - 15_000,
            },
        );
        assert_eq!(l.step(&v, None).settled, vec![b]);
        // Unless another node wins it: then it is lost as before.
        v.nodes
            .entry("n0".into())
            .or_default()
            .claims
            .insert(b, BlockClaim { claimed_at_ms: 1 });
        let s = l.step(&v, None);
        assert_eq!(s.release, vec![b]);
        assert!(s.settled.is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// The previous version's lease file (testdata/v1) keeps its block, in
    /// the default network, and the next save writes version 2.
    #[test]
    fn loads_the_previous_versions_leases() {
        let d = dir("v1");
        std::fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/v1/leases.json"),
            d.join("leases.json"),
        )
        .unwrap();
        let pod: IpNet = "10.244.0.0/16".parse().unwrap();
        // The fixture was written long ago: a TTL that has not passed.
        let mut l = Leases::load(&d, "fixnode", pod, 24, Duration::ZERO, Duration::MAX).unwrap();
        let b: IpNet = "10.244.43.0/24".parse().unwrap();
        assert_eq!(l.claims.keys().copied().collect::<Vec<_>>(), vec![b]);
        assert_eq!(l.claims[&b], 1795748641152);
        assert_eq!(l.network(), "default");
        let s = l.step(&view_with(&l, &[]), None);
        assert_eq!(s.settled, vec![b]);
        let raw: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join("leases.json")).unwrap()).unwrap();
        assert_eq!(raw["version"], 2, "{raw}");
        assert_eq!(raw["blocks"][0]["network"], "default", "{raw}");
        assert_eq!(raw["blocks"][0]["cidr"], "10.244.43.0/24", "{raw}");
        let again = Leases::load(&d, "fixnode", pod, 24, Duration::ZERO, Duration::MAX).unwrap();
        assert_eq!(again.claims, l.claims);
        // Another network's leases survive a save by this one.
        let mixed = br#"{"version":2,"alive_at_ms":1,"blocks":[
            {"network":"blue","cidr":"10.244.43.0/24","claimed_at_ms":5}]}"#;
        std::fs::write(d.join("leases.json"), mixed).unwrap();
        let mut l = Leases::load(&d, "fixnode", pod, 24, Duration::ZERO, Duration::MAX).unwrap();
        assert!(l.claims.is_empty(), "blue's block is not default's");
        l.step(&ClusterView::default(), None);
        let raw: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join("leases.json")).unwrap()).unwrap();
        assert!(raw["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["network"] == "blue"));
        let newer = br#"{"version":3,"blocks":[],"alive_at_ms":0}"#;
        std::fs::write(d.join("leases.json"), newer).unwrap();
        let e = Leases::load(&d, "fixnode", pod, 24, Duration::ZERO, Duration::MAX)
            .err()
            .unwrap();
        assert!(e.contains("newer"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
