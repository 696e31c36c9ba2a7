//! The node's address allocator and endpoint table.
//!
//! The table is the single source of truth for which attachment holds which
//! address; the set of used addresses is derived from it, never stored
//! beside it, so the two cannot disagree after a crash. Where blocks come
//! from (fixed blocks or cluster leases) is the caller's business.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The spec's primary key for plugin state.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AttachmentKey {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

/// What the agent records of one attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The Muslin network the addresses belong to. Not `network`: the
    /// persisted entry flattens the key beside it, whose `network` is the
    /// runtime's CNI network name.
    pub network_id: String,
    /// Host prefixes (/32, /128), at most one per family; the container
    /// interface carries them all.
    pub addresses: Vec<IpNet>,
    pub netns: Option<PathBuf>,
    pub host_ifname: String,
    pub mtu: u32,
    /// `K8S_POD_NAMESPACE/K8S_POD_NAME` when the runtime passed them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// From the network configuration's `args.cni.labels`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// From `args.cni.ports`: ports the endpoint names for policies.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, crate::policy::NamedPort>,
    /// From `args.cni.aliases`: further names for the name service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// From `args.cni.name`: its name for the name service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Where it sits in the host's routing (a network's table and group).
    #[serde(default, skip_serializing_if = "crate::ipam::is_default")]
    pub place: crate::plumbing::Placement,
}

pub(crate) fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl Endpoint {
    /// A new endpoint of the default network holding `address` alone.
    pub fn new(address: IpAddr, host_ifname: String, mtu: u32) -> Endpoint {
        Endpoint {
            network_id: crate::DEFAULT_NETWORK.to_string(),
            addresses: vec![IpNet::from(address)],
            netns: None,
            host_ifname,
            mtu,
            pod: None,
            pod_namespace: None,
            pod_name: None,
            labels: BTreeMap::new(),
            ports: BTreeMap::new(),
            aliases: Vec::new(),
            name: None,
            place: Default::default(),
        }
    }

    pub fn holds(&self, a: IpAddr) -> bool {
        self.addresses.iter().any(|n| n.addr() == a)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("no free address left in the node's blocks ({blocks}); {used} in use")]
    Exhausted { blocks: String, used: usize },
    #[error("the node has no address block")]
    NoBlocks,
}

/// Addresses of a block that containers may get. The network address is
/// kept for the node itself (the VXLAN device's VTEP address), and the
/// IPv4 broadcast address is skipped because some software refuses it.
fn usable(block: &IpNet) -> impl Iterator<Item = IpAddr> + '_ {
    let network = block.network();
    block.hosts().filter(move |a| *a != network)
}

/// Capacity of a block under [`usable`].
pub fn capacity(block: &IpNet) -> u128 {
    let host_bits = u32::from(block.max_prefix_len() - block.prefix_len());
    let total = if host_bits >= 128 {
        u128::MAX
    } else {
        1u128 << host_bits
    };
    match block {
        IpNet::V4(_) => total.saturating_sub(2),
        IpNet::V6(_) => total.saturating_sub(1),
    }
}

/// Next free address after `cursor`, wrapping once. Handing out addresses
/// round-robin rather than lowest-first keeps a just-released address from
/// going straight to a new container while stale peers may still route or
/// cache it.
pub fn next_free(
    blocks: &[IpNet],
    used: &BTreeSet<IpAddr>,
    cursor: Option<IpAddr>,
) -> Option<IpAddr> {
    let all = || blocks.iter().flat_map(usable);
    let free = |a: &IpAddr| !used.contains(a);
    match cursor.filter(|c| blocks.iter().any(|b| b.contains(c))) {
        Some(c) => all()
            .skip_while(|a| *a != c)
            .skip(1)
            .find(free)
            .or_else(|| all().take_while(|a| *a != c).find(free))
            .or_else(|| Some(c).filter(free)),
        None => all().find(free),
    }
}

/// All attachments of this node and the allocation cursor: the whole
/// persisted IPAM state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointTable {
    /// Format version of the persisted file.
    pub version: u32,
    #[serde(with = "endpoint_list")]
    pub endpoints: BTreeMap<AttachmentKey, Endpoint>,
    /// The default network's allocation cursor.
    pub cursor: Option<IpAddr>,
    /// Other networks' cursors: networks may share addresses.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cursors: BTreeMap<String, IpAddr>,
}

/// JSON maps need string keys; the table is stored as a list instead.
mod endpoint_list {
    use super::*;
    use serde::{Deserializer, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Entry {
        #[serde(flatten)]
        key: AttachmentKey,
        #[serde(flatten)]
        endpoint: Endpoint,
    }

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<AttachmentKey, Endpoint>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let v: Vec<Entry> = m
            .iter()
            .map(|(k, e)| Entry {
                key: k.clone(),
                endpoint: e.clone(),
            })
            .collect();
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<AttachmentKey, Endpoint>, D::Error> {
        let v = Vec::<Entry>::deserialize(d)?;
        Ok(v.into_iter().map(|e| (e.key, e.endpoint)).collect())
    }
}

/// Version 2 added the network id and the address list; version 1 files
/// (one `address`, no network) are converted on load.
pub const TABLE_VERSION: u32 = 2;

/// The table as the previous version wrote it.
mod v1 {
    use super::*;

    #[derive(Deserialize)]
    pub struct Table {
        pub endpoints: Vec<Entry>,
        pub cursor: Option<IpAddr>,
    }

    #[derive(Deserialize)]
    pub struct Entry {
        #[serde(flatten)]
        pub key: AttachmentKey,
        pub address: IpAddr,
        pub netns: Option<PathBuf>,
        pub host_ifname: String,
        pub mtu: u32,
        #[serde(default)]
        pub pod: Option<String>,
    }

    impl From<Table> for EndpointTable {
        fn from(t: Table) -> EndpointTable {
            let endpoints = t
                .endpoints
                .into_iter()
                .map(|e| {
                    // Only the joined form was kept; split it back.
                    let (pod_namespace, pod_name) =
                        match e.pod.as_deref().map(|p| p.split_once('/')) {
                            Some(Some((ns, n))) => (Some(ns.to_string()), Some(n.to_string())),
                            Some(None) => (None, e.pod.clone()),
                            None => (None, None),
                        };
                    let ep = Endpoint {
                        netns: e.netns,
                        pod: e.pod,
                        pod_namespace,
                        pod_name,
                        ..Endpoint::new(e.address, e.host_ifname, e.mtu)
                    };
                    (e.key, ep)
                })
                .collect();
            EndpointTable {
                version: TABLE_VERSION,
                endpoints,
                cursor: t.cursor,
                cursors: BTreeMap::new(),
            }
        }
    }
}

impl EndpointTable {
    pub fn new() -> Self {
        EndpointTable {
            version: TABLE_VERSION,
            ..Default::default()
        }
    }

    /// Addresses held in `network`.
    pub fn used(&self, network: &str) -> BTreeSet<IpAddr> {
        self.endpoints
            .values()
            .filter(|e| e.network_id == network)
            .flat_map(|e| e.addresses.iter().map(|a| a.addr()))
            .collect()
    }

    /// Records an attachment, giving it a free address from `blocks`. A key
    /// that already holds an address keeps it (a retried ADD after a crash
    /// must not leak the first address nor hand out a second).
    /// `blocks` are `network`'s; the address is free in that network.
    pub fn allocate(
        &mut self,
        key: AttachmentKey,
        network: &str,
        blocks: &[IpNet],
        make: impl FnOnce(IpAddr) -> Endpoint,
    ) -> Result<(&Endpoint, bool), IpamError> {
        if blocks.is_empty() {
            return Err(IpamError::NoBlocks);
        }
        if self.endpoints.contains_key(&key) {
            return Ok((&self.endpoints[&key], false));
        }
        let used = self.used(network);
        let cursor = if network == crate::DEFAULT_NETWORK {
            self.cursor
        } else {
            self.cursors.get(network).copied()
        };
        let addr = next_free(blocks, &used, cursor).ok_or_else(|| IpamError::Exhausted {
            blocks: blocks
                .iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            used: used.len(),
        })?;
        if network == crate::DEFAULT_NETWORK {
            self.cursor = Some(addr);
        } else {
            self.cursors.insert(network.to_string(), addr);
        }
        let e = self.endpoints.entry(key).or_insert(make(addr));
        Ok((e, true))
    }

    pub fn release(&mut self, key: &AttachmentKey) -> Option<Endpoint> {
        self.endpoints.remove(key)
    }

    /// Keys of `network` whose attachment is not in the runtime's valid
    /// list: what GC must tear down.
    pub fn stale(&self, network: &str, valid: &HashSet<(String, String)>) -> Vec<AttachmentKey> {
        self.endpoints
            .keys()
            .filter(|k| k.network == network)
            .filter(|k| !valid.contains(&(k.container_id.clone(), k.ifname.clone())))
            .cloned()
            .collect()
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("table serializes")
    }

    /// Reads a table of this version or an older one. A newer version is
    /// refused: its fields would be dropped by the next save.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        #[derive(Deserialize)]
        struct Version {
            #[serde(default = "one")]
            version: u32,
        }
        fn one() -> u32 {
            1
        }
        let Version { version } = serde_json::from_slice(bytes)?;
        match version {
            1 => Ok(serde_json::from_slice::<v1::Table>(bytes)?.into()),
            TABLE_VERSION => serde_json::from_slice(bytes),
            v => Err(serde::de::Error::custom(format!(
                "table version {v} was written by a newer Muslin (this one reads 1 and {TABLE_VERSION})"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: &str) -> AttachmentKey {
        AttachmentKey {
            network: "n".into(),
            container_id: c.into(),
            ifname: "eth0".into(),
        }
    }

    fn ep(a: IpAddr) -> Endpoint {
        Endpoint::new(a, "mslx".into(), 1500)
    }

    fn blocks(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|b| b.parse().unwrap()).collect()
    }

    #[test]
    fn capacity_skips_reserved() {
        assert_eq!(capacity(&"10.0.0.0/24".parse().unwrap()), 254);
        assert_eq!(capacity(&"10.0.0.0/28".parse().unwrap()), 14);
        assert_eq!(capacity(&"fd00::/120".parse().unwrap()), 255);
        let b: IpNet = "10.0.0.0/28".parse().unwrap();
        assert_eq!(usable(&b).count() as u128, capacity(&b));
        let b6: IpNet = "fd00::/124".parse().unwrap();
        assert_eq!(usable(&b6).count() as u128, capacity(&b6));
    }

    #[test]
    fn allocates_distinct_until_exhausted_then_errors() {
        let bl = blocks(&["10.1.0.0/29"]);
        let mut t = EndpointTable::new();
        let mut seen = BTreeSet::new();
        for i in 0..capacity(&bl[0]) {
            let (e, fresh) = t
                .allocate(key(&format!("c{i}")), "default", &bl, ep)
                .unwrap();
            assert!(fresh);
            assert!(seen.insert(e.addresses[0].addr()));
        }
        assert!(!seen.contains(&"10.1.0.0".parse::<IpAddr>().unwrap()));
        assert!(!seen.contains(&"10.1.0.7".parse::<IpAddr>().unwrap()));
        let err = t.allocate(key("one-more"), "default", &bl, ep).unwrap_err();
        assert!(matches!(err, IpamError::Exhausted { used: 6, .. }), "{err}");
        assert!(err.to_string().contains("10.1.0.0/29"));
    }

    #[test]
    fn same_key_keeps_its_address() {
        let bl = blocks(&["10.1.0.0/24"]);
        let mut t = EndpointTable::new();
        let a = t
            .allocate(key("c"), "default", &bl, ep)
            .unwrap()
            .0
            .addresses[0]
            .addr();
        let (e, fresh) = t.allocate(key("c"), "default", &bl, ep).unwrap();
        assert_eq!((e.addresses[0].addr(), fresh), (a, false));
        assert_eq!(t.endpoints.len(), 1);
    }

    #[test]
    fn release_then_reuse_round_robin() {
        let bl = blocks(&["10.1.0.0/29"]);
        let mut t = EndpointTable::new();
        let a1 = t
            .allocate(key("a"), "default", &bl, ep)
            .unwrap()
            .0
            .addresses[0]
            .addr();
        let _a2 = t
            .allocate(key("b"), "default", &bl, ep)
            .unwrap()
            .0
            .addresses[0]
            .addr();
        assert_eq!(t.release(&key("a")).unwrap().addresses[0].addr(), a1);
        assert!(t.release(&key("a")).is_none());
        // The released address is not the next one handed out.
        let a3 = t
            .allocate(key("c"), "default", &bl, ep)
            .unwrap()
            .0
            .addresses[0]
            .addr();
        assert_ne!(a3, a1);
        // But it comes back once the cursor wraps.
        let mut got = vec![];
        for i in 0..4 {
            got.push(
                t.allocate(key(&format!("d{i}")), "default", &bl, ep)
                    .unwrap()
                    .0
                    .addresses[0]
                    .addr(),
            );
        }
        assert!(got.contains(&a1));
    }

    #[test]
    fn spans_several_blocks() {
        let bl = blocks(&["10.1.0.0/30", "10.2.0.0/30"]);
        let mut t = EndpointTable::new();
        let got: Vec<String> = ["a", "b", "c", "d"]
            .iter()
            .map(|c| {
                t.allocate(key(c), "default", &bl, ep).unwrap().0.addresses[0]
                    .addr()
                    .to_string()
            })
            .collect();
        assert_eq!(got, ["10.1.0.1", "10.1.0.2", "10.2.0.1", "10.2.0.2"]);
        assert!(t.allocate(key("e"), "default", &bl, ep).is_err());
        assert_eq!(
            t.allocate(key("x"), "default", &[], ep).unwrap_err(),
            IpamError::NoBlocks
        );
    }

    #[test]
    fn stale_lists_exactly_the_missing_of_one_network() {
        let bl = blocks(&["10.1.0.0/24"]);
        let mut t = EndpointTable::new();
        for c in ["a", "b", "c"] {
            t.allocate(key(c), "default", &bl, ep).unwrap();
        }
        let other = AttachmentKey {
            network: "other".into(),
            ..key("z")
        };
        t.allocate(other, "default", &bl, ep).unwrap();
        let valid: HashSet<_> = [("b".to_string(), "eth0".to_string())].into();
        let mut stale = t.stale("n", &valid);
        stale.sort();
        assert_eq!(stale, vec![key("a"), key("c")]);
    }

    #[test]
    fn persistence_round_trip() {
        let bl = blocks(&["10.1.0.0/24", "fd00:1::/120"]);
        let mut t = EndpointTable::new();
        t.allocate(key("a"), "default", &bl, |a| Endpoint {
            pod: Some("ns/p".into()),
            ..ep(a)
        })
        .unwrap();
        t.allocate(key("b"), "default", &bl, ep).unwrap();
        let back = EndpointTable::from_json(&t.to_json()).unwrap();
        assert_eq!(back, t);
        assert!(EndpointTable::from_json(b"{\"version\":1,").is_err());
        let json = String::from_utf8(t.to_json()).unwrap();
        assert!(json.contains("\"version\": 2"), "{json}");
        assert!(json.contains("\"network_id\": \"default\""), "{json}");
    }

    #[test]
    fn version_1_tables_are_converted() {
        let v1 = br#"{"version":1,"endpoints":[
            {"network":"muslin","container_id":"c1","ifname":"eth0","address":"10.244.43.1",
             "netns":"/run/netns/x","host_ifname":"msl1","mtu":1500,"pod":"shop/web-0"},
            {"network":"muslin","container_id":"c2","ifname":"eth0","address":"fd00::2",
             "netns":null,"host_ifname":"msl2","mtu":1400}],
            "cursor":"10.244.43.1"}"#;
        let t = EndpointTable::from_json(v1).unwrap();
        assert_eq!(t.version, TABLE_VERSION);
        assert_eq!(t.cursor, Some("10.244.43.1".parse().unwrap()));
        let k = |c: &str| AttachmentKey {
            network: "muslin".into(),
            ..key(c)
        };
        let e1 = &t.endpoints[&k("c1")];
        assert_eq!(e1.network_id, crate::DEFAULT_NETWORK);
        assert_eq!(
            e1.addresses,
            vec!["10.244.43.1/32".parse::<IpNet>().unwrap()]
        );
        assert_eq!(e1.pod.as_deref(), Some("shop/web-0"));
        assert_eq!(
            (e1.pod_namespace.as_deref(), e1.pod_name.as_deref()),
            (Some("shop"), Some("web-0"))
        );
        assert_eq!(e1.netns, Some(PathBuf::from("/run/netns/x")));
        let e2 = &t.endpoints[&k("c2")];
        assert_eq!(e2.addresses, vec!["fd00::2/128".parse::<IpNet>().unwrap()]);
        assert_eq!(e2.mtu, 1400);
        // Converted once, it reads back as the current version.
        assert_eq!(EndpointTable::from_json(&t.to_json()).unwrap(), t);
        // No version field at all: the first format.
        let bare = br#"{"endpoints":[],"cursor":null}"#;
        assert!(EndpointTable::from_json(bare).unwrap().endpoints.is_empty());
        let newer = EndpointTable::from_json(br#"{"version":3,"endpoints":[]}"#).unwrap_err();
        assert!(newer.to_string().contains("newer"), "{newer}");
    }

    #[test]
    fn networks_allocate_the_same_addresses_independently() {
        let bl = blocks(&["10.50.0.0/29"]);
        let mut t = EndpointTable::new();
        let in_net = |net: &'static str| {
            move |a: IpAddr| Endpoint {
                network_id: net.into(),
                ..ep(a)
            }
        };
        let r = t
            .allocate(key("r"), "red", &bl, in_net("red"))
            .unwrap()
            .0
            .addresses[0];
        let b = t
            .allocate(key("b"), "blue", &bl, in_net("blue"))
            .unwrap()
            .0
            .addresses[0];
        assert_eq!(r, b, "red and blue each start at the first address");
        let d = t
            .allocate(key("d"), "default", &bl, ep)
            .unwrap()
            .0
            .addresses[0];
        assert_eq!(d, r);
        let r2 = t
            .allocate(key("r2"), "red", &bl, in_net("red"))
            .unwrap()
            .0
            .addresses[0];
        assert_ne!(r2, r);
        assert_eq!(t.used("red").len(), 2);
        let back = EndpointTable::from_json(&t.to_json()).unwrap();
        assert_eq!(back, t, "per-network cursors persist");
    }
}
