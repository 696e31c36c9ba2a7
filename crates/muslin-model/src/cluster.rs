//! The cluster as a node sees it, and the block lease rules every node
//! applies to it identically. See docs/block-leases.md for the protocol.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Gossip key of a node's record.
pub const NODE_KEY: &str = "node";
/// Gossip key prefix of a node's block claims: `block/10.244.3.0/24`.
pub const BLOCK_KEY_PREFIX: &str = "block/";

/// What a node publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    /// The underlay address peers reach this node at.
    pub address: IpAddr,
    /// The underlay subnet of that address: peers inside it share our L2
    /// segment and are reached routed by `auto`.
    pub underlay_prefix: IpNet,
    /// MAC of this node's VXLAN device.
    pub vtep_mac: String,
    /// MTU of the underlay interface.
    pub mtu: u32,
    pub version: String,
    /// How the address was chosen, for `status` and `doctor`.
    pub address_reason: String,
    pub capabilities: Vec<String>,
    /// Every usable underlay address of the node, the advertised one
    /// first: peers probe them all, so a node advertising an address they
    /// cannot reach learns which of its others they can.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// For each peer, which of its addresses this node reached with an
    /// authenticated probe lately (see `underlay::reconsider`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reach: BTreeMap<String, Vec<IpAddr>>,
    /// Health of the data path this node uses towards each peer, separate
    /// from gossip liveness.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub health: BTreeMap<String, PathHealth>,
    /// Ranges inside the pod network this node cannot use (its routes that
    /// Muslin does not own): no node leases a block overlapping them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reserved: Vec<IpNet>,
    /// UDP port of gossip and probes (0 in records of older versions: the
    /// reader's own port).
    #[serde(default)]
    pub gossip_port: u16,
    /// The address gossip advertises for this node: its first underlay
    /// address, kept when the node moves (peers redirect to a working one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gossip_address: Option<IpAddr>,
}

/// What probes over the data path to one peer found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathHealth {
    pub ok: bool,
    /// Why it fails, in an operator's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// Largest IP packet that crossed the underlay to the peer with DF set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_mtu: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockClaim {
    /// Wall-clock time of the claim (ms since the epoch); the earliest
    /// claim of a block wins.
    pub claimed_at_ms: u64,
}

/// One node in the view: the latest generation of a node name.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PeerView {
    pub record: Option<NodeRecord>,
    pub claims: BTreeMap<IpNet, BlockClaim>,
    /// The failure detector's verdict.
    pub alive: bool,
}

/// Every node known (alive, or dead but within the block TTL), by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterView {
    pub nodes: BTreeMap<String, PeerView>,
}

impl ClusterView {
    /// Who holds each claimed block: the earliest claim, ties broken by the
    /// smaller node name. Every node computes the same answer from the same
    /// view, so a conflict resolves without a coordinator.
    pub fn block_owners(&self) -> BTreeMap<IpNet, String> {
        let mut best: BTreeMap<IpNet, (u64, &str)> = BTreeMap::new();
        for (name, n) in &self.nodes {
            for (block, c) in &n.claims {
                let cand = (c.claimed_at_ms, name.as_str());
                best.entry(*block)
                    .and_modify(|b| *b = (*b).min(cand))
                    .or_insert(cand);
            }
        }
        best.into_iter()
            .map(|(b, (_, n))| (b, n.to_string()))
            .collect()
    }

    /// Blocks `node` holds (it claimed them and wins them).
    pub fn blocks_of(&self, node: &str) -> Vec<IpNet> {
        self.block_owners()
            .into_iter()
            .filter(|(_, o)| o == node)
            .map(|(b, _)| b)
            .collect()
    }

    /// Claims of `node` that another node wins.
    pub fn lost_claims(&self, node: &str) -> Vec<(IpNet, String)> {
        let owners = self.block_owners();
        self.nodes
            .get(node)
            .map(|n| {
                n.claims
                    .keys()
                    .filter_map(|b| {
                        owners
                            .get(b)
                            .filter(|o| *o != node)
                            .map(|o| (*b, o.clone()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every range some node reported it cannot use.
    pub fn reserved(&self) -> Vec<IpNet> {
        let mut v: Vec<IpNet> = self
            .nodes
            .values()
            .filter_map(|n| n.record.as_ref())
            .flat_map(|r| r.reserved.iter().copied())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Live nodes whose record claims `address`: more than one is a
    /// misconfiguration (every host claiming 10.0.2.15, say). A dead node's
    /// record (a host reinstalled under a new name) does not count.
    pub fn duplicate_addresses(&self) -> Vec<(IpAddr, Vec<String>)> {
        let mut by: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
        for (name, n) in self.nodes.iter().filter(|(_, n)| n.alive) {
            if let Some(r) = &n.record {
                by.entry(r.address).or_default().push(name.clone());
            }
        }
        by.into_iter().filter(|(_, v)| v.len() > 1).collect()
    }
}

/// The part of a host's routes a node must report as unusable: routes
/// strictly inside the pod network (a route covering all of it, such as the
/// default route, is less specific than any block and shadows nothing).
pub fn reserved_in(pod_cidr: IpNet, routes: &[IpNet]) -> Vec<IpNet> {
    let mut v: Vec<IpNet> = routes
        .iter()
        .filter(|r| pod_cidr.contains(*r) && r.prefix_len() > pod_cidr.prefix_len())
        .copied()
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Peers this node has seen, with when it last saw each alive (ms since
/// the epoch): what it knows of the cluster beyond what the store shows
/// right now. A restarted agent, or one that hears only part of the
/// cluster (paused peers, a new node that knows nobody yet), must not
/// drop routes to peers the cluster has not forgotten: a peer is forgotten
/// only when its TTL has passed since it was last seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    pub peers: BTreeMap<String, (PeerView, u64)>,
}

impl Remembered {
    /// Learns from `view` (peers alive now are seen now), forgets peers
    /// whose TTL passed, and returns `view` completed with the peers it
    /// lacks but the cluster may still hold (marked not alive).
    pub fn complete(
        &mut self,
        view: &ClusterView,
        me: &str,
        now_ms: u64,
        ttl_ms: u64,
    ) -> ClusterView {
        for (name, p) in view.nodes.iter().filter(|(n, _)| n.as_str() != me) {
            if p.record.is_none() {
                continue;
            }
            // Alive: seen now. Dead: still the last time we saw it alive;
            // one we never saw alive is the store's to keep or forget.
            let seen = match (p.alive, self.peers.get(name)) {
                (true, _) => now_ms,
                (false, Some((_, t))) => *t,
                (false, None) => continue,
            };
            self.peers.insert(name.clone(), (p.clone(), seen));
        }
        // A clock stepped back must not make a peer unforgettable.
        for (_, t) in self.peers.values_mut() {
            *t = (*t).min(now_ms);
        }
        self.peers
            .retain(|_, (_, t)| now_ms.saturating_sub(*t) < ttl_ms);
        // What the store shows wins: a remembered claim never stands
        // against a block a node claims there now.
        let live_claims: std::collections::BTreeSet<IpNet> = view
            .nodes
            .values()
            .flat_map(|p| p.claims.keys().copied())
            .collect();
        let mut out = view.clone();
        for (name, (p, _)) in &self.peers {
            if out.nodes.contains_key(name) {
                continue;
            }
            let mut p = PeerView {
                alive: false,
                ..p.clone()
            };
            p.claims
                .retain(|b, _| !live_claims.iter().any(|c| c.contains(b) || b.contains(c)));
            out.nodes.insert(name.clone(), p);
        }
        out
    }
}

/// A block of `pod_cidr` that nobody claims, or `None` when it is full.
/// The search starts at a point derived from the node's name, so nodes that
/// start together mostly pick different blocks and rarely need the
/// conflict rule.
pub fn choose_free_block(
    view: &ClusterView,
    pod_cidr: IpNet,
    prefix: u8,
    me: &str,
    avoid: &[IpNet],
) -> Option<IpNet> {
    let claimed: Vec<IpNet> = view
        .nodes
        .values()
        .flat_map(|n| n.claims.keys().copied())
        .chain(avoid.iter().copied())
        .collect();
    let total = 1u128 << u32::from(prefix.checked_sub(pod_cidr.prefix_len())?).min(127);
    let start = {
        let d = Sha256::digest(me.as_bytes());
        u128::from(u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))) % total
    };
    let nth = |i: u128| -> Option<IpNet> {
        let base = match pod_cidr.network() {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        };
        let step = 1u128 << (u32::from(pod_cidr.max_prefix_len() - prefix));
        let addr = base + i * step;
        let ip: IpAddr = match pod_cidr {
            IpNet::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from(u32::try_from(addr).ok()?)),
            IpNet::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(addr)),
        };
        IpNet::new(ip, prefix).ok()
    };
    let free = |b: &IpNet| !claimed.iter().any(|c| c.contains(b) || b.contains(c));
    (0..total.min(1 << 20))
        .map(|k| (start + k) % total)
        .filter_map(nth)
        .find(free)
}

/// Deterministic VTEP MAC for a node name (locally administered unicast).
pub fn vtep_mac(node: &str) -> [u8; 6] {
    let d = Sha256::digest(format!("vtep:{node}").as_bytes());
    let mut m = [0u8; 6];
    m.copy_from_slice(&d[..6]);
    m[0] = (m[0] & 0xfc) | 0x02;
    m
}

/// A record with only what tests vary: name, address and subnet.
#[cfg(test)]
pub(crate) fn test_record(name: &str, addr: &str, prefix: &str) -> NodeRecord {
    NodeRecord {
        name: name.into(),
        address: addr.parse().unwrap(),
        underlay_prefix: prefix.parse().unwrap(),
        vtep_mac: crate::naming::format_mac(&vtep_mac(name)),
        mtu: 1500,
        version: "0".into(),
        address_reason: String::new(),
        capabilities: vec![],
        addresses: vec![],
        reach: BTreeMap::new(),
        health: BTreeMap::new(),
        reserved: vec![],
        gossip_port: 0,
        gossip_address: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(ms: u64) -> BlockClaim {
        BlockClaim { claimed_at_ms: ms }
    }

    fn view(entries: &[(&str, &[(&str, u64)])]) -> ClusterView {
        let mut v = ClusterView::default();
        for (n, claims) in entries {
            let p = v.nodes.entry(n.to_string()).or_default();
            p.alive = true;
            for (b, t) in *claims {
                p.claims.insert(b.parse().unwrap(), claim(*t));
            }
        }
        v
    }

    #[test]
    fn earliest_claim_wins_then_smaller_name() {
        let v = view(&[
            ("b", &[("10.244.1.0/24", 5)]),
            ("a", &[("10.244.1.0/24", 7)]),
            ("c", &[("10.244.2.0/24", 1)]),
        ]);
        assert_eq!(
            v.block_owners()[&"10.244.1.0/24".parse::<IpNet>().unwrap()],
            "b"
        );
        assert_eq!(
            v.lost_claims("a"),
            vec![("10.244.1.0/24".parse().unwrap(), "b".to_string())]
        );
        assert!(v.lost_claims("b").is_empty());
        let tie = view(&[
            ("b", &[("10.244.1.0/24", 5)]),
            ("a", &[("10.244.1.0/24", 5)]),
        ]);
        assert_eq!(
            tie.blocks_of("a"),
            vec!["10.244.1.0/24".parse::<IpNet>().unwrap()]
        );
        assert!(tie.blocks_of("b").is_empty());
    }

    #[test]
    fn free_block_avoids_claims_and_is_spread_by_name() {
        let pod: IpNet = "10.244.0.0/16".parse().unwrap();
        let v = view(&[("a", &[("10.244.0.0/20", 1)])]);
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..50 {
            let b = choose_free_block(&v, pod, 24, &format!("node{i}"), &[]).unwrap();
            assert!(pod.contains(&b) && b.prefix_len() == 24);
            assert!(
                !"10.244.0.0/20".parse::<IpNet>().unwrap().contains(&b),
                "{b} overlaps a claim"
            );
            seen.insert(b);
        }
        assert!(
            seen.len() > 40,
            "names spread over the space: {}",
            seen.len()
        );
        // Full: every block claimed.
        let tiny: IpNet = "10.0.0.0/30".parse().unwrap();
        let full = view(&[("x", &[("10.0.0.0/31", 1), ("10.0.0.2/31", 1)])]);
        assert!(choose_free_block(&full, tiny, 31, "me", &[]).is_none());
        assert!(choose_free_block(
            &view(&[]),
            tiny,
            31,
            "me",
            &["10.0.0.0/31".parse().unwrap()]
        )
        .is_some());
    }

    #[test]
    fn only_routes_inside_the_pod_network_are_reserved() {
        let n = |s: &str| -> IpNet { s.parse().unwrap() };
        let routes = [
            n("0.0.0.0/0"),
            n("10.0.0.0/8"),
            n("10.244.0.0/16"),
            n("10.244.5.0/24"),
            n("10.244.5.0/24"),
            n("192.168.56.0/24"),
        ];
        assert_eq!(
            reserved_in(n("10.244.0.0/16"), &routes),
            vec![n("10.244.5.0/24")]
        );
    }

    #[test]
    fn remembered_peers_stand_until_their_ttl() {
        let mut r = Remembered::default();
        let full = view(&[
            ("me", &[]),
            ("a", &[("10.244.1.0/24", 1)]),
            ("b", &[("10.244.2.0/24", 1)]),
        ]);
        let mut full = full;
        for p in full.nodes.values_mut() {
            p.record = Some(test_record("x", "192.0.2.1", "192.0.2.0/24"));
        }
        let t0 = 1_000_000;
        assert_eq!(r.complete(&full, "me", t0, 60_000), full);
        // After a restart the store knows only us: the others stand, not
        // alive, with their blocks.
        let alone = view(&[("me", &[])]);
        let v = r.complete(&alone, "me", t0 + 1_000, 60_000);
        assert_eq!(
            v.blocks_of("a"),
            vec!["10.244.1.0/24".parse::<IpNet>().unwrap()]
        );
        assert!(!v.nodes["a"].alive);
        // A block another node claims in the store now is not a's any more.
        let mut taken = alone.clone();
        taken.nodes.entry("c".into()).or_default().claims.insert(
            "10.244.1.0/24".parse().unwrap(),
            BlockClaim { claimed_at_ms: 9 },
        );
        let v = r.complete(&taken, "me", t0 + 2_000, 60_000);
        assert!(v.nodes["a"].claims.is_empty());
        assert_eq!(
            v.block_owners()[&"10.244.1.0/24".parse::<IpNet>().unwrap()],
            "c"
        );
        // Past their TTL since last seen, they are gone.
        let v = r.complete(&alone, "me", t0 + 61_000, 60_000);
        assert_eq!(v.nodes.len(), 1);
    }

    #[test]
    fn duplicate_addresses_are_reported() {
        let rec = |n: &str, a: &str| test_record(n, a, "10.0.2.0/24");
        let mut v = ClusterView::default();
        for (n, a) in [
            ("h1", "10.0.2.15"),
            ("h2", "10.0.2.15"),
            ("h3", "10.0.2.16"),
        ] {
            let p = v.nodes.entry(n.into()).or_default();
            p.record = Some(rec(n, a));
            p.alive = true;
        }
        // A dead node's old record shares h3's address: no conflict.
        let mut gone = v.nodes["h3"].clone();
        gone.alive = false;
        v.nodes.insert("h0".into(), gone);
        assert_eq!(
            v.duplicate_addresses(),
            vec![(
                "10.0.2.15".parse().unwrap(),
                vec!["h1".to_string(), "h2".to_string()]
            )]
        );
    }

    #[test]
    fn vtep_macs_are_stable_local_unicast() {
        assert_eq!(vtep_mac("h1"), vtep_mac("h1"));
        assert_ne!(vtep_mac("h1"), vtep_mac("h2"));
        assert_eq!(vtep_mac("h1")[0] & 0x03, 0x02);
    }
}
