//! Networks as cluster objects: isolated address spaces beside the default
//! network (the agent's pod CIDR), which may reuse each other's addresses.
//!
//! A network is kept apart on every host by numbers derived from its `id`:
//! its routing table, the link group of its interfaces (veths and its
//! VXLAN device), the firewall mark its packets carry, and its conntrack
//! zone. Across hosts it has a VNI of its own: overlapping networks cannot
//! be told apart on a bare underlay, so a network other than the default
//! is always encapsulated.
//!
//! The store holds one record per network name; in gossip every node
//! republishes every record it knows, so a network outlives the node that
//! created it. Records merge by last write (creation or deletion time, then
//! the writer's name): a deletion is a record with `deleted_at_ms`, kept
//! for [`TOMBSTONE_MS`] so a node that was away learns of it.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::dataplane::Backend;

/// Routing table of network `id` is `TABLE_BASE + id`; its link group is
/// the same number (groups and tables are separate name spaces).
pub const TABLE_BASE: u32 = 77_000;
/// Our bits of the firewall mark: a network's id shifted into them. Kept
/// clear of the bits kube-proxy (0x4000, 0x8000), Cilium (0x0f00, 0xf000)
/// and Tailscale (0x40000, 0x80000) use.
pub const MARK_MASK: u32 = 0xfff0_0000;
const MARK_SHIFT: u32 = 20;
pub const MAX_ID: u16 = 4095;
/// Priority of each network's `fwmark` rule: before the pod rule (1077)
/// and `main` (32766).
pub const MARK_RULE_PRIORITY: u32 = 1070;
/// Priority of the `to SUBNET` rule of a network the hosts route to.
pub const REACH_RULE_PRIORITY: u32 = 1071;
/// Priority of the rule that sends a network's pods' packets (source in
/// the subnet, the network's mark) to its pod table.
pub const POD_RULE_PRIORITY: u32 = 1072;
/// Priority of the rules refusing a network's marked packets bound for a
/// cluster range its table has no route to.
pub const REFUSE_PRIORITY: u32 = 1073;
/// Priority of the rules refusing all else bound for the networks'
/// subnets (see `muslin_plan::data_plane::network_guards`).
pub const GUARD_PRIORITY: u32 = 1074;
/// A network's pod table is `POD_TABLE_BASE + id`: routes to peers' node
/// addresses through the tunnel. Apart from the network's table because
/// the tunnel's own outer packets carry the inner packet's mark: looked
/// up in a table that routes node addresses into the tunnel, they would
/// loop; their source (this node's address) keeps them out of this one.
pub const POD_TABLE_BASE: u32 = 82_000;
/// How long a deletion is remembered: a node away for longer could bring
/// the network back from its own list.
pub const TOMBSTONE_MS: u64 = 7 * 24 * 3_600_000;
/// How long a deleted network's id and VNI stay unused, so that a
/// container of it that some node still holds (a record not yet gone)
/// never lands in a new network that took its numbers.
pub const REUSE_MS: u64 = 3_600_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub name: String,
    pub subnets: Vec<IpNet>,
    /// Prefix length of the blocks hosts lease from the subnets.
    pub block_size: u8,
    pub backend: Backend,
    pub vni: u32,
    #[serde(default)]
    pub isolated_from_host: bool,
    /// Small number naming the network on hosts (table, group, mark, zone).
    pub id: u16,
    pub created_at_ms: u64,
    pub created_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at_ms: Option<u64>,
}

impl NetworkSpec {
    pub fn table(&self) -> u32 {
        TABLE_BASE + u32::from(self.id)
    }
    pub fn pod_table(&self) -> u32 {
        POD_TABLE_BASE + u32::from(self.id)
    }
    pub fn group(&self) -> u32 {
        TABLE_BASE + u32::from(self.id)
    }
    pub fn mark(&self) -> u32 {
        u32::from(self.id) << MARK_SHIFT
    }
    pub fn zone(&self) -> u16 {
        self.id
    }
    /// The network's VXLAN device on every host.
    pub fn vxlan_dev(&self) -> String {
        vxlan_dev(self.id)
    }
    pub fn deleted(&self) -> bool {
        self.deleted_at_ms.is_some()
    }
    /// What orders two records of one name: the later write wins.
    fn written(&self) -> (u64, &str) {
        (
            self.deleted_at_ms.unwrap_or(self.created_at_ms),
            &self.created_by,
        )
    }
    /// What makes a record read from the store unusable: a node of
    /// another version, or a broken or hostile one, must not get a route
    /// such as `0.0.0.0/0` into every host's tables.
    pub fn problem(&self) -> Option<String> {
        let bad = |why: String| Some(format!("network record {:?} ignored: {why}", self.name));
        if !crate::cluster::valid_network_id(&self.name) || self.name == crate::DEFAULT_NETWORK {
            return bad("bad name".into());
        }
        if !(1..=MAX_ID).contains(&self.id) {
            return bad(format!("id {} out of range", self.id));
        }
        if !(1..=16_777_215).contains(&self.vni) {
            return bad(format!("VNI {} out of range", self.vni));
        }
        let [s] = self.subnets.as_slice() else {
            return bad("not exactly one subnet".into());
        };
        if !s.addr().is_ipv4() || !(8..=28).contains(&s.prefix_len()) || s.addr() != s.network() {
            return bad(format!("subnet {s}"));
        }
        if self.block_size < s.prefix_len() || self.block_size > 30 {
            return bad(format!("block size /{}", self.block_size));
        }
        if self.backend == Backend::Routed {
            return bad("backend routed".into());
        }
        None
    }

    fn overlaps(&self, other: &[IpNet]) -> bool {
        self.subnets
            .iter()
            .any(|s| other.iter().any(|o| o.contains(s) || s.contains(o)))
    }
}

pub fn vxlan_dev(id: u16) -> String {
    format!("msl-vx{id}")
}

/// The network id of a device name made by [`vxlan_dev`].
pub fn parse_vxlan_dev(name: &str) -> Option<u16> {
    let n = name.strip_prefix("msl-vx")?;
    (!n.starts_with('0') || n == "0").then_some(())?;
    n.parse().ok().filter(|id| (1..=MAX_ID).contains(id))
}

/// Merges `rec` into `known`: the later write of a name wins.
pub fn merge(known: &mut BTreeMap<String, NetworkSpec>, rec: NetworkSpec) {
    match known.get(&rec.name) {
        Some(have) if have.written() >= rec.written() => {}
        _ => {
            known.insert(rec.name.clone(), rec);
        }
    }
}

/// The networks in force: not deleted, and when two claim the same id or
/// VNI (created at once on two hosts), the earlier keeps it and the later
/// is left out with a warning. Every node computes the same from the same
/// records.
pub fn effective(
    known: &BTreeMap<String, NetworkSpec>,
    default_vni: u32,
) -> (BTreeMap<String, NetworkSpec>, Vec<String>) {
    let mut warnings = Vec::new();
    let mut live: Vec<&NetworkSpec> = known
        .values()
        .filter(|n| !n.deleted())
        .filter(|n| match n.problem() {
            Some(p) => {
                warnings.push(p);
                false
            }
            None => true,
        })
        .collect();
    live.sort_by(|a, b| (a.created_at_ms, &a.name).cmp(&(b.created_at_ms, &b.name)));
    let mut out: BTreeMap<String, NetworkSpec> = BTreeMap::new();
    for n in live {
        let clash = out
            .values()
            .find(|o| o.id == n.id || o.vni == n.vni)
            .map(|o| o.name.clone())
            .or_else(|| (n.vni == default_vni).then(|| crate::DEFAULT_NETWORK.to_string()));
        match clash {
            Some(o) => warnings.push(format!(
                "network {} is not in force: its id {} or VNI {} is already network {o}'s (both were created at once); delete it and create it again",
                n.name, n.id, n.vni
            )),
            None => {
                out.insert(n.name.clone(), n.clone());
            }
        }
    }
    (out, warnings)
}

/// Every range of the cluster: the default network's and the networks'
/// subnets, merged (nft interval sets and routing rules want no overlaps).
pub fn cluster_ranges(default_cidr: IpNet, subnets: impl IntoIterator<Item = IpNet>) -> Vec<IpNet> {
    let all: Vec<IpNet> = std::iter::once(default_cidr).chain(subnets).collect();
    IpNet::aggregate(&all)
}

/// The networks' ranges the default network does not overlap: where its
/// containers, and anything routed through a host, have no business.
pub fn guarded_ranges(subnets: impl IntoIterator<Item = IpNet>, default_cidr: IpNet) -> Vec<IpNet> {
    let all: Vec<IpNet> = subnets.into_iter().collect();
    IpNet::aggregate(&all)
        .into_iter()
        .filter(|r| !r.contains(&default_cidr) && !default_cidr.contains(r))
        .collect()
}

/// Which networks the hosts route to (from their main routing): the
/// default network always; another one when it is not isolated from the
/// hosts and overlaps neither the default network nor an earlier network
/// the hosts already route to. Where two networks overlap, a host reaches
/// the containers of one of them, never a mix.
pub fn host_reach(live: &BTreeMap<String, NetworkSpec>, default_cidr: IpNet) -> Vec<String> {
    let mut order: Vec<&NetworkSpec> = live.values().collect();
    order.sort_by(|a, b| (a.created_at_ms, &a.name).cmp(&(b.created_at_ms, &b.name)));
    let mut routed: Vec<IpNet> = vec![default_cidr];
    let mut out = Vec::new();
    for n in order {
        if n.isolated_from_host || n.overlaps(&routed) {
            continue;
        }
        routed.extend(n.subnets.iter().copied());
        out.push(n.name.clone());
    }
    out
}

/// What an operator asks for with `muslin network create`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CreateNetwork {
    pub name: String,
    pub subnets: Vec<IpNet>,
    #[serde(default)]
    pub block_size: Option<u8>,
    #[serde(default)]
    pub backend: Option<Backend>,
    #[serde(default)]
    pub vni: Option<u32>,
    #[serde(default)]
    pub isolated_from_host: bool,
}

/// A refused create: which field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct NetworkError {
    pub field: &'static str,
    pub why: String,
}

fn refuse(field: &'static str, why: impl Into<String>) -> NetworkError {
    NetworkError {
        field,
        why: why.into(),
    }
}

/// What a create is checked against, besides the networks in force.
#[derive(Debug, Clone)]
pub struct CreateContext<'a> {
    pub default_cidr: IpNet,
    pub default_vni: u32,
    /// The host's own subnets and routes that are not Muslin's (the
    /// underlay among them): a network over them would shadow the host's
    /// own traffic.
    pub host_routes: &'a [IpNet],
    pub me: &'a str,
    pub now_ms: u64,
}

/// Checks `req` against every record known (`known`, deletions included)
/// and turns it into a record, choosing the id and (unless given) the VNI.
pub fn create(
    req: &CreateNetwork,
    known: &BTreeMap<String, NetworkSpec>,
    cx: &CreateContext,
) -> Result<NetworkSpec, NetworkError> {
    let live: BTreeMap<String, NetworkSpec> = known
        .iter()
        .filter(|(_, n)| !n.deleted())
        .map(|(k, n)| (k.clone(), n.clone()))
        .collect();
    // Numbers still held: networks in force and those deleted lately.
    let held: Vec<&NetworkSpec> = known
        .values()
        .filter(|n| {
            n.deleted_at_ms
                .is_none_or(|t| cx.now_ms.saturating_sub(t) < REUSE_MS)
        })
        .collect();
    let live = &live;
    if req.name == crate::DEFAULT_NETWORK {
        return Err(refuse(
            "name",
            "\"default\" is the default network (the agents' pod-cidr); it exists without a command",
        ));
    }
    if !crate::cluster::valid_network_id(&req.name) {
        return Err(refuse(
            "name",
            format!(
                "{:?} must be 1 to 63 lowercase letters, digits, '-', '_' or '.'",
                req.name
            ),
        ));
    }
    if live.contains_key(&req.name) {
        return Err(refuse(
            "name",
            format!("network {} exists already", req.name),
        ));
    }
    let subnet = match req.subnets.as_slice() {
        [] => return Err(refuse("subnet", "at least one --subnet is required")),
        [s] => *s,
        _ => {
            return Err(refuse(
                "subnet",
                "one subnet per network for now (a second family comes with dual stack)",
            ))
        }
    };
    let IpNet::V4(v4) = subnet else {
        return Err(refuse(
            "subnet",
            format!("{subnet}: IPv6 networks come with dual stack; give an IPv4 subnet"),
        ));
    };
    if subnet.addr() != subnet.network() {
        return Err(refuse(
            "subnet",
            format!(
                "{subnet} has host bits set: did you mean {}/{}?",
                subnet.network(),
                subnet.prefix_len()
            ),
        ));
    }
    if !(8..=28).contains(&subnet.prefix_len()) {
        return Err(refuse(
            "subnet",
            format!("{subnet}: the prefix must be between /8 and /28"),
        ));
    }
    let a = v4.addr();
    if a.is_loopback() || a.is_link_local() || a.is_multicast() || a.is_unspecified() {
        return Err(refuse(
            "subnet",
            format!("{subnet} is a loopback, link-local, multicast or unspecified range"),
        ));
    }
    if let Some(r) = cx
        .host_routes
        .iter()
        .find(|r| r.prefix_len() > 0 && (r.contains(&subnet) || subnet.contains(*r)))
    {
        return Err(refuse(
            "subnet",
            format!("{subnet} overlaps {r}, which this host routes outside the cluster (an underlay or another network of the host)"),
        ));
    }
    let block_size = req
        .block_size
        .unwrap_or_else(|| subnet.prefix_len().clamp(26, 28));
    if block_size < subnet.prefix_len() || block_size > 30 {
        return Err(refuse(
            "block-size",
            format!(
                "/{block_size} must be between /{} (the subnet) and /30",
                subnet.prefix_len()
            ),
        ));
    }
    let backend = match req.backend.unwrap_or(Backend::Auto) {
        Backend::Routed => {
            return Err(refuse(
                "backend",
                "routed: a network other than the default is always encapsulated (its VNI tells hosts which network a packet is of; a bare underlay cannot, least of all between overlapping networks); use auto or vxlan",
            ))
        }
        b => b,
    };
    let id = (1..=MAX_ID)
        .find(|i| !held.iter().any(|n| n.id == *i))
        .ok_or_else(|| refuse("name", format!("{MAX_ID} networks exist already")))?;
    let in_use = |v: u32| v == cx.default_vni || held.iter().any(|n| n.vni == v);
    let vni = match req.vni {
        Some(v) if !(1..=16_777_215).contains(&v) => {
            return Err(refuse("vni", format!("{v} is out of range 1..=16777215")))
        }
        Some(v) if in_use(v) => {
            let who = held
                .iter()
                .find(|n| n.vni == v)
                .map(|n| match n.deleted() {
                    false => format!("network {}", n.name),
                    true => format!("network {}, deleted less than an hour ago", n.name),
                })
                .unwrap_or_else(|| "the default network".into());
            return Err(refuse("vni", format!("{v} is in use by {who}")));
        }
        Some(v) => v,
        None => (1..)
            .map(|k| cx.default_vni.wrapping_add(u32::from(id) * k) % 16_777_215)
            .find(|v| *v != 0 && !in_use(*v))
            .expect("a free VNI"),
    };
    Ok(NetworkSpec {
        name: req.name.clone(),
        subnets: vec![subnet],
        block_size,
        backend,
        vni,
        isolated_from_host: req.isolated_from_host,
        id,
        // After a deletion of the same name, even by a host whose clock
        // is ahead of ours: the later write wins the merge.
        created_at_ms: known
            .get(&req.name)
            .and_then(|n| n.deleted_at_ms)
            .map_or(cx.now_ms, |t| cx.now_ms.max(t + 1)),
        created_by: cx.me.to_string(),
        deleted_at_ms: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx<'a>(routes: &'a [IpNet]) -> CreateContext<'a> {
        CreateContext {
            default_cidr: "10.244.0.0/16".parse().unwrap(),
            default_vni: 4242,
            host_routes: routes,
            me: "h1",
            now_ms: 1000,
        }
    }

    fn req(name: &str, subnet: &str) -> CreateNetwork {
        CreateNetwork {
            name: name.into(),
            subnets: vec![subnet.parse().unwrap()],
            ..Default::default()
        }
    }

    fn make(live: &mut BTreeMap<String, NetworkSpec>, name: &str, subnet: &str, at: u64) {
        let mut c = cx(&[]);
        c.now_ms = at;
        let n = create(&req(name, subnet), live, &c).unwrap();
        live.insert(name.into(), n);
    }

    #[test]
    fn create_chooses_numbers_and_refuses_bad_input_naming_the_field() {
        let routes: Vec<IpNet> = vec!["192.168.56.0/24".parse().unwrap()];
        let mut live = BTreeMap::new();
        make(&mut live, "red", "10.50.0.0/16", 1);
        make(&mut live, "blue", "10.50.0.0/16", 2);
        let (r, b) = (&live["red"], &live["blue"]);
        assert_eq!((r.id, b.id), (1, 2));
        assert_ne!(r.vni, b.vni);
        assert_ne!(r.vni, 4242);
        assert_eq!(
            (r.table(), r.group(), r.mark()),
            (77_001, 77_001, 0x10_0000)
        );
        assert_eq!(r.vxlan_dev(), "msl-vx1");
        assert_eq!(parse_vxlan_dev("msl-vx1"), Some(1));
        assert_eq!(parse_vxlan_dev("msl-vxlan"), None);
        assert_eq!(parse_vxlan_dev("msl-vx01"), None);
        assert_eq!(r.block_size, 26);
        let field = |rq: CreateNetwork| create(&rq, &live, &cx(&routes)).unwrap_err().field;
        assert_eq!(field(req("red", "10.60.0.0/16")), "name");
        assert_eq!(field(req("default", "10.60.0.0/16")), "name");
        assert_eq!(field(req("Bad/Name", "10.60.0.0/16")), "name");
        assert_eq!(field(req("green", "10.60.0.1/16")), "subnet");
        assert_eq!(field(req("green", "192.168.0.0/16")), "subnet");
        assert_eq!(field(req("green", "fd00::/64")), "subnet");
        assert_eq!(field(req("green", "169.254.0.0/16")), "subnet");
        let mut q = req("green", "10.60.0.0/16");
        q.vni = Some(4242);
        assert_eq!(field(q.clone()), "vni");
        q.vni = Some(r.vni);
        let e = create(&q, &live, &cx(&routes)).unwrap_err();
        assert!(e.why.contains("network red"), "{e}");
        q.vni = Some(1 << 24);
        assert_eq!(field(q), "vni");
        let mut q = req("green", "10.60.0.0/16");
        q.backend = Some(Backend::Routed);
        assert_eq!(field(q.clone()), "backend");
        q.backend = None;
        q.block_size = Some(8);
        assert_eq!(field(q), "block-size");
        // A deleted network's id is not reused for an hour (a container of
        // it may still be somewhere), then it is.
        let gone = NetworkSpec {
            deleted_at_ms: Some(10),
            ..live["red"].clone()
        };
        live.insert("red".into(), gone);
        make(&mut live, "green", "10.60.0.0/16", 11);
        assert_eq!(live["green"].id, 3);
        make(&mut live, "teal", "10.70.0.0/16", 10 + REUSE_MS);
        assert_eq!(live["teal"].id, 1);
        // Created again after its deletion: later than the deletion.
        make(&mut live, "red", "10.50.0.0/16", 5);
        assert_eq!(live["red"].created_at_ms, 11);
    }

    #[test]
    fn records_merge_by_last_write_and_clashes_keep_the_earlier() {
        let mut live = BTreeMap::new();
        make(&mut live, "red", "10.50.0.0/16", 1);
        let red = live["red"].clone();
        let mut known = BTreeMap::new();
        merge(&mut known, red.clone());
        let gone = NetworkSpec {
            deleted_at_ms: Some(5),
            ..red.clone()
        };
        merge(&mut known, gone.clone());
        merge(&mut known, red.clone());
        assert!(
            known["red"].deleted(),
            "a stale record cannot undo a delete"
        );
        let again = NetworkSpec {
            created_at_ms: 9,
            ..red.clone()
        };
        merge(&mut known, again);
        assert!(!known["red"].deleted(), "created again after the delete");
        // Two hosts created networks at once with the same id.
        let twin = NetworkSpec {
            name: "blue".into(),
            created_at_ms: 10,
            created_by: "h2".into(),
            ..red.clone()
        };
        merge(&mut known, twin);
        let (eff, warnings) = effective(&known, 4242);
        assert_eq!(eff.keys().collect::<Vec<_>>(), ["red"]);
        assert!(warnings[0].contains("network blue is not in force"));
        // A record no agent would write is never in force.
        for bad in [
            NetworkSpec {
                subnets: vec!["0.0.0.0/0".parse().unwrap()],
                ..red.clone()
            },
            NetworkSpec {
                id: 0,
                ..red.clone()
            },
            NetworkSpec {
                vni: 0,
                ..red.clone()
            },
            NetworkSpec {
                block_size: 8,
                ..red.clone()
            },
            NetworkSpec {
                subnets: vec![],
                ..red.clone()
            },
        ] {
            let one = BTreeMap::from([("red".to_string(), bad.clone())]);
            let (eff, warnings) = effective(&one, 4242);
            assert!(eff.is_empty(), "{bad:?}");
            assert!(warnings[0].contains("ignored"), "{warnings:?}");
        }
    }

    #[test]
    fn hosts_reach_the_default_network_and_one_of_each_overlap() {
        let mut live = BTreeMap::new();
        make(&mut live, "red", "10.50.0.0/16", 1);
        make(&mut live, "blue", "10.50.0.0/16", 2);
        make(&mut live, "pink", "10.244.0.0/16", 3);
        let mut q = req("dark", "10.70.0.0/16");
        q.isolated_from_host = true;
        let n = create(&q, &live, &cx(&[])).unwrap();
        live.insert("dark".into(), n);
        make(&mut live, "teal", "10.80.0.0/16", 5);
        assert_eq!(
            host_reach(&live, "10.244.0.0/16".parse().unwrap()),
            ["red", "teal"]
        );
    }
}
