//! The cluster as a node sees it, and the block lease rules every node
//! applies to it identically. See docs/block-leases.md for the protocol.
//!
//! Every store key is built and parsed here, so the stores and the agent
//! cannot disagree on them. Keys (docs/store-keys.md has the history):
//!
//! | what | gossip (per node) | etcd (under the prefix) |
//! |---|---|---|
//! | node record | `node` | `nodes/NODE` |
//! | liveness | (SWIM membership) | `alive/NODE` |
//! | claim, v2 | `v2/block/NETWORK/CIDR` | `v2/blocks/NETWORK/CIDR` |
//! | claim, v1 | `block/CIDR` | `blocks/CIDR` |
//! | endpoint | `v2/endpoint/NETWORK/CONTAINER/IFNAME` | `v2/endpoints/NODE/NETWORK/CONTAINER/IFNAME` |
//! | network | `v2/network/NAME` (every node, see `network`) | `v2/networks/NAME` |
//! | object | `v2/object/KIND/NAME` (every node, see `object`) | `v2/objects/KIND/NAME` |
//!
//! A v1 claim key stands for the default network. Claims of the default
//! network are written under both forms, so that agents of the previous
//! version, which read only v1 keys, still see them during a rolling
//! upgrade; readers accept both. Network ids, container ids, interface
//! names and object kinds and names hold no `/`, so the parts of a key
//! split unambiguously.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::object::{self, ObjectKey, ObjectRecord};
use crate::peer_map::PeerMap;

/// Gossip key of a node's record.
pub const NODE_KEY: &str = "node";
/// Gossip key prefix of the previous version's block claims (default
/// network only): `block/10.244.3.0/24`.
pub const BLOCK_KEY_PREFIX: &str = "block/";
/// Gossip key prefix of block claims: `v2/block/default/10.244.3.0/24`.
pub const BLOCK_KEY_V2_PREFIX: &str = "v2/block/";
/// Gossip key prefix of endpoints: `v2/endpoint/default/CONTAINER/eth0`.
pub const ENDPOINT_KEY_PREFIX: &str = "v2/endpoint/";

/// Gossip key prefix of network records: `v2/network/red`.
pub const NETWORK_KEY_PREFIX: &str = "v2/network/";

pub fn gossip_network_key(name: &str) -> String {
    format!("{NETWORK_KEY_PREFIX}{name}")
}

pub fn etcd_network_key(prefix: &str, name: &str) -> String {
    format!("{prefix}v2/networks/{name}")
}

/// Gossip key prefix of cluster objects: `v2/object/policy/shop:web`.
pub const OBJECT_KEY_PREFIX: &str = "v2/object/";

pub fn gossip_object_key(kind: &str, name: &str) -> String {
    format!("{OBJECT_KEY_PREFIX}{kind}/{name}")
}

/// The kind and name of a gossip object key, both valid.
pub fn parse_gossip_object_key(key: &str) -> Option<ObjectKey> {
    split_object_key(key.strip_prefix(OBJECT_KEY_PREFIX)?)
}

pub fn etcd_object_key(prefix: &str, kind: &str, name: &str) -> String {
    format!("{prefix}v2/objects/{kind}/{name}")
}

fn split_object_key(rest: &str) -> Option<ObjectKey> {
    let (kind, name) = rest.split_once('/')?;
    (object::valid_kind(kind) && object::valid_name(name)).then_some(())?;
    Some((kind.to_string(), name.to_string()))
}

/// Whether `id` can be a network id: it becomes a key part and a file
/// name part, so a short run of lowercase letters, digits, `-`, `_`, `.`.
pub fn valid_network_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
        && id != "."
        && id != ".."
}

/// Gossip keys of a claim: the v2 form, and the v1 form too for the
/// default network (read by agents of the previous version).
pub fn gossip_block_keys(network: &str, block: IpNet) -> Vec<String> {
    let mut v = vec![format!("{BLOCK_KEY_V2_PREFIX}{network}/{block}")];
    if network == crate::DEFAULT_NETWORK {
        v.push(format!("{BLOCK_KEY_PREFIX}{block}"));
    }
    v
}

/// The network and block of a gossip claim key of either version.
pub fn parse_gossip_block_key(key: &str) -> Option<(String, IpNet)> {
    if let Some(rest) = key.strip_prefix(BLOCK_KEY_V2_PREFIX) {
        let (network, block) = rest.split_once('/')?;
        valid_network_id(network).then_some(())?;
        return Some((network.to_string(), block.parse().ok()?));
    }
    let block = key.strip_prefix(BLOCK_KEY_PREFIX)?;
    Some((crate::DEFAULT_NETWORK.to_string(), block.parse().ok()?))
}

pub fn gossip_endpoint_key(network: &str, container_id: &str, ifname: &str) -> String {
    format!("{ENDPOINT_KEY_PREFIX}{network}/{container_id}/{ifname}")
}

pub fn etcd_node_key(prefix: &str, node: &str) -> String {
    format!("{prefix}nodes/{node}")
}

pub fn etcd_alive_key(prefix: &str, node: &str) -> String {
    format!("{prefix}alive/{node}")
}

/// etcd keys of a claim, v2 first; the v1 form for the default network
/// as in [`gossip_block_keys`].
pub fn etcd_block_keys(prefix: &str, network: &str, block: IpNet) -> Vec<String> {
    let mut v = vec![format!("{prefix}v2/blocks/{network}/{block}")];
    if network == crate::DEFAULT_NETWORK {
        v.push(format!("{prefix}blocks/{block}"));
    }
    v
}

/// Where a node's endpoints live in etcd; everything below is its.
pub fn etcd_endpoints_prefix(prefix: &str, node: &str) -> String {
    format!("{prefix}v2/endpoints/{node}/")
}

pub fn etcd_endpoint_key(
    prefix: &str,
    node: &str,
    network: &str,
    container_id: &str,
    ifname: &str,
) -> String {
    format!(
        "{}{network}/{container_id}/{ifname}",
        etcd_endpoints_prefix(prefix, node)
    )
}

/// What an etcd key under the prefix stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdKey {
    Node(String),
    Alive(String),
    Block { network: String, block: IpNet },
    Endpoint { node: String },
    Network(String),
    Object { kind: String, name: String },
}

pub fn parse_etcd_key(prefix: &str, key: &str) -> Option<EtcdKey> {
    let rest = key.strip_prefix(prefix)?;
    if let Some(n) = rest.strip_prefix("nodes/") {
        return Some(EtcdKey::Node(n.to_string()));
    }
    if let Some(n) = rest.strip_prefix("alive/") {
        return Some(EtcdKey::Alive(n.to_string()));
    }
    if let Some(b) = rest.strip_prefix("blocks/") {
        return Some(EtcdKey::Block {
            network: crate::DEFAULT_NETWORK.to_string(),
            block: b.parse().ok()?,
        });
    }
    if let Some(r) = rest.strip_prefix("v2/blocks/") {
        let (network, block) = r.split_once('/')?;
        valid_network_id(network).then_some(())?;
        return Some(EtcdKey::Block {
            network: network.to_string(),
            block: block.parse().ok()?,
        });
    }
    if let Some(n) = rest.strip_prefix("v2/networks/") {
        valid_network_id(n).then_some(())?;
        return Some(EtcdKey::Network(n.to_string()));
    }
    if let Some(r) = rest.strip_prefix("v2/objects/") {
        let (kind, name) = split_object_key(r)?;
        return Some(EtcdKey::Object { kind, name });
    }
    if let Some(r) = rest.strip_prefix("v2/endpoints/") {
        let (node, _) = r.split_once('/')?;
        return Some(EtcdKey::Endpoint {
            node: node.to_string(),
        });
    }
    None
}

/// One attachment as the cluster sees it: published by the node that
/// holds it, so every node has the cluster's endpoint table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub network: String,
    pub addresses: Vec<IpNet>,
    pub container_id: String,
    pub ifname: String,
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Ports the endpoint names (`args.cni.ports`), for policies that
    /// allow a port by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, crate::policy::NamedPort>,
    /// Further names of the endpoint (`args.cni.aliases`), which the name
    /// service answers beside `pod_name`; several endpoints may share one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// The name the name service answers for (`args.cni.name`), when it
    /// is not `pod_name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

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
    #[serde(default, skip_serializing_if = "PeerMap::is_empty")]
    pub reach: PeerMap<Vec<IpAddr>>,
    /// Health of the data path this node uses towards each peer, separate
    /// from gossip liveness.
    #[serde(default, skip_serializing_if = "PeerMap::is_empty")]
    pub health: PeerMap<PathHealth>,
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
    /// When this run of the agent started (ms since the epoch): peers
    /// judge the data path of a new run afresh, so an agent's restart is
    /// not mistaken for a link that failed and must prove itself.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub started_ms: u64,
    /// The relay this node sends each relayed peer's traffic through: the
    /// two ends of a pair settle on one (see `relay::Graph::route`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub relays: BTreeMap<String, String>,
    /// This node's WireGuard end when it encrypts pod traffic (see
    /// `encryption`); absent in records of nodes that do not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<crate::encryption::WireguardEnd>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl NodeRecord {
    /// A node's record as it first goes out: reached at `address`, with
    /// nothing learned from peers yet.
    pub fn new(name: &str, address: IpAddr, underlay_prefix: IpNet, mtu: u32) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            address,
            underlay_prefix,
            vtep_mac: crate::naming::format_mac(&vtep_mac(name)),
            mtu,
            version: env!("CARGO_PKG_VERSION").to_string(),
            address_reason: String::new(),
            capabilities: vec![
                "routed".into(),
                "vxlan".into(),
                crate::relay::CAPABILITY.into(),
            ],
            addresses: vec![address],
            reach: PeerMap::new(),
            health: PeerMap::new(),
            reserved: vec![],
            gossip_port: 0,
            gossip_address: Some(address),
            started_ms: 0,
            relays: BTreeMap::new(),
            wireguard: None,
        }
    }
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
    /// Shared: every round's view, the remembered peers and the decoded
    /// store hold the same record, which grows with the cluster (reach
    /// and health name every peer), so copies of the view stay cheap.
    pub record: Option<Arc<NodeRecord>>,
    /// Claims in the default network, which is all the lease rules and the
    /// data plane know of yet.
    pub claims: BTreeMap<IpNet, BlockClaim>,
    /// Claims in other networks, by network id: kept apart because
    /// networks may share address ranges.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub network_claims: BTreeMap<String, BTreeMap<IpNet, BlockClaim>>,
    /// The failure detector's verdict.
    pub alive: bool,
    /// The endpoints the node publishes, sorted. Shared like the record:
    /// the view is built each round and a cluster holds thousands.
    #[serde(default, skip_serializing_if = "no_endpoints")]
    pub endpoints: Arc<Vec<EndpointRecord>>,
}

fn no_endpoints(e: &Arc<Vec<EndpointRecord>>) -> bool {
    e.is_empty()
}

impl PeerView {
    /// The record to change in place (a copy if it is shared).
    pub fn record_mut(&mut self) -> Option<&mut NodeRecord> {
        self.record.as_mut().map(Arc::make_mut)
    }

    /// Files a claim read from the store under its network. When both
    /// key forms carry a claim of one block, the earlier wins, as it
    /// would between nodes.
    pub fn add_claim(&mut self, network: &str, block: IpNet, claim: BlockClaim) {
        let claims = if network == crate::DEFAULT_NETWORK {
            &mut self.claims
        } else {
            self.network_claims.entry(network.to_string()).or_default()
        };
        claims
            .entry(block)
            .and_modify(|c| c.claimed_at_ms = c.claimed_at_ms.min(claim.claimed_at_ms))
            .or_insert(claim);
    }
}

/// Every node known (alive, or dead but within the block TTL), by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterView {
    pub nodes: BTreeMap<String, PeerView>,
    /// Every network record known, deletions included (see `network`).
    pub networks: BTreeMap<String, crate::network::NetworkSpec>,
    /// Every cluster object known. Gossip keeps tombstones here as it
    /// keeps deleted networks (nodes republish them); etcd shows only
    /// live objects.
    /// Shared: a store whose objects did not change hands out the same
    /// map again, and a reader can tell by the pointer.
    pub objects: std::sync::Arc<BTreeMap<ObjectKey, ObjectRecord>>,
}

impl ClusterView {
    /// The view of one network's blocks: each node's claims in `network`
    /// stand where the lease rules and the data plane read the default
    /// network's, so both apply to every network unchanged.
    pub fn of_network(&self, network: &str) -> ClusterView {
        if network == crate::DEFAULT_NETWORK {
            return self.clone();
        }
        let nodes = self
            .nodes
            .iter()
            .map(|(name, p)| {
                let claims = p.network_claims.get(network).cloned().unwrap_or_default();
                (
                    name.clone(),
                    PeerView {
                        record: p.record.clone(),
                        claims,
                        network_claims: BTreeMap::new(),
                        alive: p.alive,
                        endpoints: Arc::default(),
                    },
                )
            })
            .collect();
        ClusterView {
            nodes,
            networks: BTreeMap::new(),
            // Objects are the cluster's, not a network's: policies and
            // namespace labels apply in every network, so each network's
            // view holds them all, as the default network's does. An empty
            // map here would quietly drop every policy outside the default
            // network.
            objects: self.objects.clone(),
        }
    }

    /// Every endpoint of the cluster, node by node.
    pub fn endpoints(&self) -> Vec<&EndpointRecord> {
        self.nodes
            .values()
            .flat_map(|n| n.endpoints.iter())
            .collect()
    }

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
/// Each name walks the blocks in an order of its own (see `walk`), and a
/// node also steps aside from the first pick of every node it knows that
/// has no block yet (a tie goes to the smaller name): nodes that start
/// together mostly pick different blocks and rarely need the conflict rule.
/// Not with `step_aside` false: in a network most nodes never claim in,
/// the few that do would crowd into the blocks nobody "wants".
pub fn choose_free_block(
    view: &ClusterView,
    pod_cidr: IpNet,
    prefix: u8,
    me: &str,
    avoid: &[IpNet],
    step_aside: bool,
) -> Option<IpNet> {
    let claimed: Vec<IpNet> = view
        .nodes
        .values()
        .flat_map(|n| n.claims.keys().copied())
        .chain(avoid.iter().copied())
        .collect();
    let free = |b: &IpNet| !claimed.iter().any(|c| c.contains(b) || b.contains(c));
    let first = |name: &str| walk(pod_cidr, prefix, name).find(|b| free(b));
    let mine = first(me)?;
    if !step_aside {
        return Some(mine);
    }
    // What the others without a block will pick first. Only a guess (they
    // may see other claims), but at a cold start, when a hundred nodes
    // share a few hundred blocks, it spares most of the lost claims.
    let theirs: Vec<IpNet> = view
        .nodes
        .iter()
        .filter(|(n, p)| n.as_str() != me && p.claims.is_empty())
        .filter_map(|(n, _)| first(n).filter(|b| *b != mine || n.as_str() < me))
        .collect();
    walk(pod_cidr, prefix, me)
        .filter(|b| free(b))
        .find(|b| !theirs.contains(b))
        .or(Some(mine))
}

/// The blocks of `prefix` in `pod_cidr` in the order `name` tries them: a
/// start and an odd stride from a hash of the name (the count of blocks is
/// a power of two, so each comes once). Two nodes that start on one block
/// part at the next step, where a shared walk (stride 1) sent every loser
/// of a run of taken blocks to the same next one.
fn walk(pod_cidr: IpNet, prefix: u8, name: &str) -> impl Iterator<Item = IpNet> {
    let total = prefix
        .checked_sub(pod_cidr.prefix_len())
        .map_or(0, |bits| 1u128 << u32::from(bits).min(127));
    let d = Sha256::digest(name.as_bytes());
    let word = |i: usize| u128::from(u64::from_be_bytes(d[i..i + 8].try_into().expect("8 bytes")));
    let (start, stride) = match total {
        0 => (0, 1),
        t => (word(0) % t, (word(8) % t) | 1),
    };
    let base = match pod_cidr.network() {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    let step = 1u128 << u32::from(pod_cidr.max_prefix_len().saturating_sub(prefix));
    (0..total.min(1 << 20)).filter_map(move |k| {
        // Wrapping: the count of blocks is a power of two, so the index
        // modulo it is right even past u128 (IPv6 pools of tiny blocks).
        let addr = base + (start.wrapping_add(k.wrapping_mul(stride)) % total) * step;
        let ip: IpAddr = match pod_cidr {
            IpNet::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from(u32::try_from(addr).ok()?)),
            IpNet::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(addr)),
        };
        IpNet::new(ip, prefix).ok()
    })
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
    NodeRecord::new(name, addr.parse().unwrap(), prefix.parse().unwrap(), 1500)
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
            let b = choose_free_block(&v, pod, 24, &format!("node{i}"), &[], true).unwrap();
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
        assert!(choose_free_block(&full, tiny, 31, "me", &[], true).is_none());
        assert!(choose_free_block(
            &view(&[]),
            tiny,
            31,
            "me",
            &["10.0.0.0/31".parse().unwrap()],
            true
        )
        .is_some());
    }

    #[test]
    fn names_that_meet_on_a_taken_block_part_ways() {
        let pod: IpNet = "10.244.0.0/16".parse().unwrap();
        let first: Vec<(String, IpNet)> = (0..400)
            .map(|i| {
                let n = format!("host{i}");
                let b = choose_free_block(&view(&[]), pod, 24, &n, &[], true).unwrap();
                (n, b)
            })
            .collect();
        let (mut met, mut parted) = (0, 0);
        for (i, (a, b)) in first.iter().enumerate() {
            for (c, d) in &first[i + 1..] {
                if b != d {
                    continue;
                }
                // Both want one block, and someone took it.
                let taken = view(&[("x", &[(b.to_string().as_str(), 1)])]);
                let next_a = choose_free_block(&taken, pod, 24, a, &[], true).unwrap();
                let next_c = choose_free_block(&taken, pod, 24, c, &[], true).unwrap();
                met += 1;
                parted += usize::from(next_a != next_c);
            }
        }
        assert!(met > 50, "400 names over 256 blocks meet often: {met}");
        assert!(parted * 10 >= met * 9, "{parted} of {met} pairs parted");
    }

    #[test]
    fn a_node_steps_aside_from_the_first_pick_of_a_node_without_a_block() {
        let pod: IpNet = "10.244.0.0/16".parse().unwrap();
        let names: Vec<String> = (0..100).map(|i| format!("h{i}")).collect();
        // Everyone known, nobody with a block yet: a cold start.
        let mut v = ClusterView::default();
        for n in &names {
            v.nodes.insert(n.clone(), PeerView::default());
        }
        let picks: Vec<IpNet> = names
            .iter()
            .map(|n| choose_free_block(&v, pod, 24, n, &[], true).unwrap())
            .collect();
        let distinct: std::collections::BTreeSet<_> = picks.iter().collect();
        let alone: std::collections::BTreeSet<_> = names
            .iter()
            .map(|n| choose_free_block(&view(&[]), pod, 24, n, &[], true).unwrap())
            .collect();
        // Knowing nobody, 100 names over 256 blocks meet ~19 times.
        assert!(alone.len() < 95, "{}", alone.len());
        assert!(distinct.len() >= 98, "{} distinct of 100", distinct.len());
        // Two that want one block: the smaller name keeps it.
        let pick = |n: &str| choose_free_block(&view(&[]), pod, 24, n, &[], true).unwrap();
        let (a, b) = (0..400)
            .flat_map(|i| (i + 1..400).map(move |j| (format!("n{i:03}"), format!("n{j:03}"))))
            .find(|(a, b)| pick(a) == pick(b))
            .expect("400 names over 256 blocks meet");
        let mut both = ClusterView::default();
        both.nodes.insert(a.clone(), PeerView::default());
        both.nodes.insert(b.clone(), PeerView::default());
        assert_eq!(
            choose_free_block(&both, pod, 24, &a, &[], true),
            Some(pick(&a))
        );
        assert_ne!(
            choose_free_block(&both, pod, 24, &b, &[], true),
            Some(pick(&a))
        );
        // Not in a network few nodes claim in.
        assert_eq!(
            choose_free_block(&both, pod, 24, &b, &[], false),
            Some(pick(&b))
        );
        // When every free block is another's first pick, ours still serves.
        let tiny: IpNet = "10.0.0.0/31".parse().unwrap();
        let one = choose_free_block(&both, tiny, 31, &b, &[], true);
        assert_eq!(one, Some(tiny));
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
            p.record = Some(test_record("x", "192.0.2.1", "192.0.2.0/24").into());
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
            p.record = Some(rec(n, a).into());
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
    fn claim_keys_of_both_versions_parse() {
        let b: IpNet = "10.244.3.0/24".parse().unwrap();
        let keys = gossip_block_keys("default", b);
        assert_eq!(
            keys,
            ["v2/block/default/10.244.3.0/24", "block/10.244.3.0/24"]
        );
        for k in &keys {
            assert_eq!(parse_gossip_block_key(k), Some(("default".into(), b)));
        }
        assert_eq!(
            gossip_block_keys("blue", b),
            ["v2/block/blue/10.244.3.0/24"]
        );
        assert_eq!(
            parse_gossip_block_key("v2/block/blue/10.244.3.0/24"),
            Some(("blue".into(), b))
        );
        for bad in [
            "v2/block/10.244.3.0/24",
            "v2/block/Blue/10.244.3.0/24",
            "block/x",
            "node",
            "v2/endpoint/default/c/eth0",
        ] {
            assert_eq!(parse_gossip_block_key(bad), None, "{bad}");
        }
        let p = "/muslin/";
        let keys = etcd_block_keys(p, "default", b);
        assert_eq!(
            keys,
            [
                "/muslin/v2/blocks/default/10.244.3.0/24",
                "/muslin/blocks/10.244.3.0/24"
            ]
        );
        for k in &keys {
            assert_eq!(
                parse_etcd_key(p, k),
                Some(EtcdKey::Block {
                    network: "default".into(),
                    block: b
                })
            );
        }
        assert_eq!(etcd_block_keys(p, "blue", b).len(), 1);
        let e = etcd_endpoint_key(p, "h1", "default", "c1", "eth0");
        assert_eq!(e, "/muslin/v2/endpoints/h1/default/c1/eth0");
        assert!(e.starts_with(&etcd_endpoints_prefix(p, "h1")));
        assert_eq!(
            parse_etcd_key(p, &e),
            Some(EtcdKey::Endpoint { node: "h1".into() })
        );
        assert_eq!(
            parse_etcd_key(p, &etcd_node_key(p, "h1")),
            Some(EtcdKey::Node("h1".into()))
        );
        assert_eq!(
            parse_etcd_key(p, &etcd_alive_key(p, "h1")),
            Some(EtcdKey::Alive("h1".into()))
        );
        assert_eq!(parse_etcd_key(p, "/other/nodes/h1"), None);
        assert_eq!(parse_etcd_key(p, "/muslin/v2/blocks/default/junk"), None);
        assert_eq!(
            gossip_endpoint_key("default", "c1", "eth0"),
            "v2/endpoint/default/c1/eth0"
        );
    }

    #[test]
    fn claims_are_filed_by_network_and_endpoints_listed() {
        let b: IpNet = "10.244.3.0/24".parse().unwrap();
        let mut p = PeerView::default();
        p.add_claim("default", b, claim(9));
        p.add_claim("default", b, claim(7));
        p.add_claim("blue", b, claim(1));
        assert_eq!(p.claims[&b], claim(7), "the earlier of two key forms");
        assert_eq!(p.network_claims["blue"][&b], claim(1));
        let mut v = ClusterView::default();
        v.nodes.insert("a".into(), p);
        assert_eq!(v.blocks_of("a"), vec![b], "other networks lease apart");
        let rec = EndpointRecord {
            network: "default".into(),
            addresses: vec!["10.244.3.1/32".parse().unwrap()],
            container_id: "c1".into(),
            ifname: "eth0".into(),
            node: "a".into(),
            pod_namespace: Some("shop".into()),
            pod_name: Some("web-0".into()),
            labels: [("app".to_string(), "web".to_string())].into(),
            ports: Default::default(),
            aliases: Vec::new(),
            name: None,
        };
        v.nodes.get_mut("a").unwrap().endpoints = std::sync::Arc::new(vec![rec.clone()]);
        v.nodes.entry("b".into()).or_default();
        assert_eq!(v.endpoints(), vec![&rec]);
        let json = serde_json::to_string(&rec).unwrap();
        assert_eq!(serde_json::from_str::<EndpointRecord>(&json).unwrap(), rec);
        assert!(valid_network_id("default") && !valid_network_id("a/b") && !valid_network_id(""));
    }

    #[test]
    fn object_keys_round_trip_and_refuse_bad_parts() {
        let k = gossip_object_key("policy", "shop:web-0");
        assert_eq!(k, "v2/object/policy/shop:web-0");
        assert_eq!(
            parse_gossip_object_key(&k),
            Some(("policy".into(), "shop:web-0".into()))
        );
        let p = "/muslin/";
        let e = etcd_object_key(p, "policy", "shop:web-0");
        assert_eq!(e, "/muslin/v2/objects/policy/shop:web-0");
        assert_eq!(
            parse_etcd_key(p, &e),
            Some(EtcdKey::Object {
                kind: "policy".into(),
                name: "shop:web-0".into()
            })
        );
        for bad in [
            "Policy/web",
            "policy/a/b",
            "policy/..",
            "policy/",
            "/web",
            "policy",
        ] {
            assert_eq!(
                parse_gossip_object_key(&format!("v2/object/{bad}")),
                None,
                "{bad}"
            );
            assert_eq!(
                parse_etcd_key(p, &format!("{p}v2/objects/{bad}")),
                None,
                "{bad}"
            );
        }
        assert_eq!(parse_gossip_object_key("v2/network/red"), None);
        // Live objects of one kind; a tombstone is not one.
        let rec = |kind: &str, name: &str, deleted: Option<u64>| ObjectRecord {
            kind: kind.into(),
            name: name.into(),
            body: serde_json::json!({}),
            updated_at_ms: 1,
            updated_by: "h1".into(),
            deleted_at_ms: deleted,
        };
        let mut v = ClusterView::default();
        for r in [
            rec("policy", "a", None),
            rec("policy", "b", Some(2)),
            rec("labels", "c", None),
        ] {
            std::sync::Arc::make_mut(&mut v.objects).insert(r.key(), r);
        }
        let live: Vec<&str> = v
            .objects
            .values()
            .filter(|r| r.kind == "policy" && !r.deleted())
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(live, ["a"]);
        assert_eq!(v.of_network("blue").objects, v.objects, "cluster-wide");
    }

    #[test]
    fn vtep_macs_are_stable_local_unicast() {
        assert_eq!(vtep_mac("h1"), vtep_mac("h1"));
        assert_ne!(vtep_mac("h1"), vtep_mac("h2"));
        assert_eq!(vtep_mac("h1")[0] & 0x03, 0x02);
    }
}
