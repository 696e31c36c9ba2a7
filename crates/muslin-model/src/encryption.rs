//! Encryption of pod traffic between hosts: WireGuard. Each node publishes
//! its public key and port in its record; this module decides who may
//! take part, and which of a peer's addresses its tunnel carries
//! (WireGuard's cryptokey routing: each inner address belongs to one peer).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::cluster::{ClusterView, NodeRecord};

/// The node's WireGuard device (our prefix).
pub const WG_DEV: &str = "msl-wg0";
pub const DEFAULT_PORT: u16 = 51820;
/// The networks' VXLAN between encrypting nodes is carried by WireGuard
/// too: marked with this bit (clear of the networks' bits and of
/// kube-proxy's, Cilium's and Tailscale's), it looks up [`WG_TABLE`],
/// which sends each peer's node address into our device.
pub const WG_MARK: u32 = 0x0002_0000;
pub const WG_TABLE: u32 = 78;
/// After the networks' rules (1070-1074), before the pod rule (1077).
pub const WG_RULE_PRIORITY: u32 = 1076;
/// Capability of a node that encrypts pod traffic with WireGuard.
pub const CAPABILITY: &str = "wireguard";
/// Outer IPv4 (20) + UDP (8) + WireGuard data header (16) + tag (16).
pub const OVERHEAD_V4: u32 = 60;
/// The same over IPv6 (40-byte header).
pub const OVERHEAD_V6: u32 = 80;

pub fn overhead(underlay: IpAddr) -> u32 {
    match underlay {
        IpAddr::V4(_) => OVERHEAD_V4,
        IpAddr::V6(_) => OVERHEAD_V6,
    }
}

/// Cluster-wide: every node of an encrypted cluster must say the same.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encryption {
    #[default]
    None,
    Wireguard,
}

impl FromStr for Encryption {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Encryption::None),
            "wireguard" => Ok(Encryption::Wireguard),
            o => Err(format!("{o:?} is not one of none, wireguard")),
        }
    }
}

impl std::fmt::Display for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Encryption::None => "none",
            Encryption::Wireguard => "wireguard",
        })
    }
}

/// Which WireGuard carries the traffic: the kernel's where it has one
/// (`auto`), or the agent's own in userspace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Implementation {
    #[default]
    Auto,
    Kernel,
    Userspace,
}

impl FromStr for Implementation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Implementation::Auto),
            "kernel" => Ok(Implementation::Kernel),
            "userspace" => Ok(Implementation::Userspace),
            o => Err(format!("{o:?} is not one of auto, kernel, userspace")),
        }
    }
}

impl std::fmt::Display for Implementation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Implementation::Auto => "auto",
            Implementation::Kernel => "kernel",
            Implementation::Userspace => "userspace",
        })
    }
}

/// What a node publishes of its WireGuard end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireguardEnd {
    /// Standard base64 of the Curve25519 public key (44 characters).
    pub public_key: String,
    pub port: u16,
}

impl WireguardEnd {
    /// Whether the key is one WireGuard can use: a record from the wire is
    /// not trusted to hold one.
    pub fn key_ok(&self) -> bool {
        valid_key(&self.public_key)
    }
}

/// 32 bytes in standard base64 with padding: 43 characters of the
/// alphabet (the last one of the 16 that leave the final bits zero)
/// and `=`.
pub fn valid_key(k: &str) -> bool {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = k.as_bytes();
    b.len() == 44
        && b[43] == b'='
        && b[..43].iter().all(|c| ALPHABET.contains(c))
        && ALPHABET
            .iter()
            .position(|c| *c == b[42])
            .is_some_and(|i| i % 4 == 0)
}

/// One peer of the node's WireGuard device.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WgPeer {
    pub name: String,
    pub public_key: String,
    pub endpoint: SocketAddr,
    /// Inner addresses this peer sends from and is sent to, sorted.
    pub allowed_ips: Vec<IpNet>,
}

/// The node's WireGuard device as the cluster view wants it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WgDevice {
    /// The device's kind as the kernel names it: `tun` for ours in
    /// userspace, `wireguard` for the kernel's.
    #[serde(default = "tun")]
    pub kind: String,
    pub mtu: u32,
    /// The tunnel address: the network address of our first block (no pod
    /// has it), the source of data-path probes.
    pub address: Option<IpAddr>,
    pub peers: Vec<WgPeer>,
}

fn tun() -> String {
    "tun".into()
}

/// Why a peer cannot be reached encrypted, or `None` when it can.
pub fn peer_refusal(rec: &NodeRecord) -> Option<String> {
    match &rec.wireguard {
        None => Some(format!(
            "does not encrypt (encryption = \"none\" or version {}): pod traffic to it would leave in clear, so none is sent",
            rec.version
        )),
        Some(w) if !w.key_ok() => Some(format!(
            "publishes a malformed WireGuard public key ({} characters)",
            w.public_key.len()
        )),
        Some(w) if w.port == 0 => Some("publishes WireGuard port 0".into()),
        Some(_) => None,
    }
}

/// Why peer `name` cannot be reached encrypted in `view`, or `None`: its
/// own record's faults, or a key another node (we included) publishes
/// too, as a copied state directory or a cloned VM would. WireGuard
/// knows a peer by its key alone; two nodes with one key would take each
/// other's traffic.
pub fn refusal(view: &ClusterView, me: &str, name: &str, rec: &NodeRecord) -> Option<String> {
    if let Some(why) = peer_refusal(rec) {
        return Some(why);
    }
    let key = &rec.wireguard.as_ref()?.public_key;
    let mut twins: Vec<&str> = view
        .nodes
        .iter()
        .filter(|(n, _)| n.as_str() != name)
        .filter(|(_, p)| {
            p.record
                .as_ref()
                .and_then(|r| r.wireguard.as_ref())
                .is_some_and(|w| &w.public_key == key)
        })
        .map(|(n, _)| n.as_str())
        .collect();
    if twins.is_empty() {
        return None;
    }
    twins.sort();
    Some(format!(
        "publishes the WireGuard key of {}{}: a copied state directory or cloned host; run `muslin rotate-key` on one of them",
        twins.join(", "),
        if twins.contains(&me) { " (ours)" } else { "" }
    ))
}

/// Why a node that does not encrypt must not join the cluster of `view`,
/// or `None`: some live peer encrypts, so the cluster's pod traffic is
/// meant to be encrypted and ours would reach no one (they refuse us).
pub fn join_refusal(me: &str, view: &ClusterView) -> Option<String> {
    let encrypting: Vec<&str> = view
        .nodes
        .iter()
        .filter(|(n, p)| n.as_str() != me && p.alive)
        .filter(|(_, p)| p.record.as_ref().is_some_and(|r| r.wireguard.is_some()))
        .map(|(n, _)| n.as_str())
        .collect();
    if encrypting.is_empty() {
        return None;
    }
    Some(format!(
        "this cluster encrypts pod traffic with WireGuard (nodes {} publish keys) and this node has encryption = \"none\": they would refuse its traffic; start it with encryption = \"wireguard\"",
        encrypting.join(", ")
    ))
}

/// The peers of our WireGuard device: each peer reached directly carries
/// its blocks, its node address (pods' packets to the node itself) and,
/// for each peer relayed through it, that peer's blocks and node address.
/// A relayed peer keeps its tunnel address (`probe`) as a peer of its
/// own, so probes still cross the direct path (longest prefix wins).
pub fn peers(
    view: &ClusterView,
    me: &str,
    direct: &BTreeMap<String, Vec<IpNet>>,
    relayed: &BTreeMap<String, (String, Vec<IpNet>)>,
    probe: &BTreeMap<String, IpAddr>,
) -> Vec<WgPeer> {
    let rec = |n: &str| -> Option<&NodeRecord> {
        view.nodes
            .get(n)
            .and_then(|p| p.record.as_deref())
            .filter(|r| n != me && refusal(view, me, n, r).is_none())
    };
    let mut out: BTreeMap<String, WgPeer> = BTreeMap::new();
    let mut add = |n: &str, nets: &mut dyn Iterator<Item = IpNet>| {
        let Some((r, w)) = rec(n).and_then(|r| Some((r, r.wireguard.as_ref()?))) else {
            return;
        };
        out.entry(n.to_string())
            .or_insert_with(|| WgPeer {
                name: n.into(),
                public_key: w.public_key.clone(),
                endpoint: SocketAddr::new(r.address, w.port),
                allowed_ips: vec![],
            })
            .allowed_ips
            .extend(nets);
    };
    for (n, blocks) in direct {
        let Some(addr) = rec(n).map(|r| r.address) else {
            continue;
        };
        add(n, &mut blocks.iter().copied().chain([IpNet::from(addr)]));
    }
    for (n, (via, blocks)) in relayed {
        let Some(addr) = rec(n).map(|r| r.address) else {
            continue;
        };
        add(via, &mut blocks.iter().copied().chain([IpNet::from(addr)]));
        if let Some(a) = probe.get(n) {
            add(n, &mut std::iter::once(IpNet::from(*a)));
        }
    }
    out.into_values()
        .filter(|p| !p.allowed_ips.is_empty())
        .map(|mut p| {
            p.allowed_ips.sort();
            p.allowed_ips.dedup();
            p
        })
        .collect()
}

#[cfg(test)]
mod tests;
