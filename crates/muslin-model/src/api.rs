//! The agent's local API over the agent's Unix socket: one JSON request
//! line in; out, an [`Accepted`] line as soon as the request is read and
//! parsed, then one [`Response`] line. The acknowledgement lets a client
//! tell a wedged socket (no acknowledgement within seconds) from a slow
//! operation. A request refused before it is parsed gets its error
//! [`Response`] directly. Shared by the agent, the CNI plugin and the CLI so
//! the three cannot drift apart.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::cluster::EndpointRecord;
use crate::cni::CniError;
use crate::ipam::AttachmentKey;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Add(AddRequest),
    Del(DelRequest),
    Check(CheckRequest),
    Gc(GcRequest),
    Status,
    /// Operators' GC (`muslin gc`): attachments whose container is gone
    /// though no DEL came. Released only with `apply`.
    Reap {
        apply: bool,
    },
    NetworkCreate(crate::network::CreateNetwork),
    /// Refused while the network has endpoints anywhere in the cluster.
    NetworkDelete {
        name: String,
    },
    /// Every network in force, the default one first; with counters read
    /// from the host's firewall.
    NetworkList,
    /// Applies every policy of a policy file (`policy::parse_document`):
    /// all of them, or none when one is wrong.
    PolicyApply {
        text: String,
        toml: bool,
    },
    /// Deletes the policy of this key (`NAMESPACE:NAME`, or `NAME` for a
    /// cluster-wide one).
    PolicyDelete {
        key: String,
    },
    PolicyList,
    /// Changes the labels of an endpoint of this host: `target` is its
    /// container id (or a unique prefix of it) or `NAMESPACE/POD`.
    Label {
        target: String,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
    },
    /// Changes the labels of a namespace (for namespace selectors).
    NamespaceLabel {
        namespace: String,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
    },
    /// What the name service answers for `name` (a name, or an address
    /// for its PTR) to a container attached to `networks` (the default
    /// network when empty).
    DnsLookup {
        name: String,
        #[serde(default)]
        networks: Vec<String>,
    },
    /// A new WireGuard key pair for this node, published at once.
    RotateKey,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddRequest {
    pub key: AttachmentKey,
    pub netns: PathBuf,
    /// Overrides the agent's MTU for this attachment.
    pub mtu: Option<u32>,
    pub pod: Option<String>,
    /// `K8S_POD_NAMESPACE` and `K8S_POD_NAME` as the runtime passed them.
    #[serde(default)]
    pub pod_namespace: Option<String>,
    #[serde(default)]
    pub pod_name: Option<String>,
    /// The network configuration's `args.cni.labels`, checked by the plugin.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The configuration's `args.cni.ports`, checked by the plugin.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, crate::policy::NamedPort>,
    /// The configuration's `args.cni.aliases` (and the runtime's aliases
    /// for this network), checked by the plugin.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// The configuration's `args.cni.name`: the name service's name for
    /// it, instead of `pod_name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The Muslin network asked for by the configuration's `network` key;
    /// without it, the network named like the configuration, else the
    /// default network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelRequest {
    pub key: AttachmentKey,
    pub netns: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRequest {
    pub key: AttachmentKey,
    pub netns: PathBuf,
    /// Addresses the previous result gave the container interface.
    pub expect: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcRequest {
    pub network: String,
    /// `(containerID, ifname)` pairs the runtime still holds.
    pub valid: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    Added(Added),
    Done,
    Collected {
        released: Vec<AttachmentKey>,
    },
    Status(NodeStatus),
    Reaped {
        stale: Vec<StaleAttachment>,
    },
    Network(crate::network::NetworkSpec),
    Networks {
        networks: Vec<NetworkStatus>,
    },
    Policies {
        policies: Vec<PolicyStatus>,
    },
    /// Keys of the policies applied.
    Applied {
        keys: Vec<String>,
    },
    /// The labels something has now.
    Labels {
        labels: BTreeMap<String, String>,
    },
    Dns(DnsAnswer),
    /// The node's new WireGuard public key.
    Rotated {
        public_key: String,
    },
    Error(CniError),
}

/// A policy as `muslin policy list|show` and `status` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub key: String,
    pub policy: crate::policy::Policy,
    pub updated_at_ms: u64,
    pub updated_by: String,
    /// Endpoints of this host it protects, by host interface.
    pub protects_here: Vec<String>,
    /// Packets this host dropped by the policy's deny rules, and at the
    /// endpoints it isolates (not matched by any allow rule; shared by
    /// every allow policy isolating the same endpoint).
    pub denied_here: u64,
    pub dropped_isolated_here: u64,
}

/// A network as `muslin network list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkStatus {
    pub name: String,
    pub subnets: Vec<IpNet>,
    pub vni: u32,
    /// 0 for the default network.
    pub id: u16,
    pub isolated_from_host: bool,
    /// Whether this host routes to its containers (see
    /// `network::host_reach`), and if not, why.
    pub host_reach: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_reach_why: Option<String>,
    /// Endpoints in the cluster, by `node/container/ifname`.
    pub endpoints: Vec<String>,
    /// Nodes holding blocks of it.
    pub nodes: Vec<String>,
    /// Packets this host dropped on their way out of the network towards
    /// another network's range, and towards this host (a network the host
    /// does not route to).
    pub dropped_leaving: u64,
    pub dropped_to_host: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Known, but not yet in force on this host (see `network`'s settle
    /// time): an ADD to it waits until it is.
    #[serde(default)]
    pub settling: bool,
}

/// The first line of every answer to a parsed request: `{"kind":"accepted"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Accepted {
    Accepted,
}

/// An attachment recorded by the agent whose container is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaleAttachment {
    pub key: AttachmentKey,
    pub addresses: Vec<IpNet>,
    pub host_ifname: String,
    pub netns: Option<PathBuf>,
    /// What was found missing: the namespace, the host veth, or both.
    pub why: String,
    /// Whether it was released (only ever with `apply`).
    pub released: bool,
    /// Why releasing it failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "AddedWire", into = "AddedWire")]
pub struct Added {
    pub host_ifname: String,
    pub host_mac: String,
    pub container_ifname: String,
    pub container_mac: String,
    /// Host prefixes, one per family; each routes via its family's
    /// gateway (`plumbing::gateway_for`).
    pub addresses: Vec<IpNet>,
    pub mtu: u32,
    /// Destinations the container routes through this interface; empty
    /// for the default route.
    pub routes: Vec<IpNet>,
    /// The name service's resolver for this attachment's network, for
    /// the container's resolv.conf; `None` when the agent serves no DNS.
    pub dns: Option<crate::cni::Dns>,
}

/// [`Added`] on the wire, readable by the previous version too: while a
/// host is upgraded, the plugin on disk and the agent running may be of
/// different versions, and ADD must work in between. The previous version
/// carried one `address` and its `gateway`.
#[derive(Serialize, Deserialize)]
struct AddedWire {
    host_ifname: String,
    host_mac: String,
    container_ifname: String,
    container_mac: String,
    #[serde(default)]
    addresses: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    address: Option<IpNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gateway: Option<IpAddr>,
    mtu: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    routes: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dns: Option<crate::cni::Dns>,
}

impl From<AddedWire> for Added {
    fn from(w: AddedWire) -> Added {
        Added {
            host_ifname: w.host_ifname,
            host_mac: w.host_mac,
            container_ifname: w.container_ifname,
            container_mac: w.container_mac,
            addresses: match (w.addresses.is_empty(), w.address) {
                (true, Some(a)) => vec![a],
                _ => w.addresses,
            },
            mtu: w.mtu,
            routes: w.routes,
            dns: w.dns,
        }
    }
}

impl From<Added> for AddedWire {
    fn from(a: Added) -> AddedWire {
        let first = a.addresses.first().copied();
        AddedWire {
            host_ifname: a.host_ifname,
            host_mac: a.host_mac,
            container_ifname: a.container_ifname,
            container_mac: a.container_mac,
            address: first,
            gateway: first.map(|f| crate::plumbing::gateway_for(f.addr())),
            addresses: a.addresses,
            mtu: a.mtu,
            routes: a.routes,
            dns: a.dns,
        }
    }
}

/// The name service of a node, as `muslin status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsStatus {
    pub domain: String,
    /// Distinct names known.
    pub names: u64,
    pub listeners: Vec<DnsListener>,
    pub upstreams: Vec<String>,
    /// Queries answered from the cluster's names, refused as unknown
    /// inside the domain, and forwarded upstream.
    pub answered: u64,
    pub nxdomain: u64,
    pub forwarded: u64,
    /// Queries from outside the resolver's network, refused.
    #[serde(default)]
    pub refused: u64,
}

/// One network's resolver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsListener {
    pub network: String,
    pub address: IpAddr,
    /// Why it does not listen, when it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `muslin dns lookup`'s answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsAnswer {
    /// The name as asked in the cluster domain.
    pub query: String,
    /// The networks whose names were visible.
    pub networks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Records from upstream, for a name outside the domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forwarded: Vec<String>,
    pub outcome: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_name: String,
    pub version: String,
    pub mtu: u32,
    pub blocks: Vec<BlockStatus>,
    pub endpoints: Vec<EndpointStatus>,
    /// Whether the node leases blocks and so can claim another when full.
    #[serde(default)]
    pub can_claim_more: bool,
    /// Absent when the node runs alone (no underlay, no cluster).
    #[serde(default)]
    pub cluster: Option<Box<ClusterStatus>>,
    /// Absent when the agent serves no DNS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Box<DnsStatus>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub underlay_if: String,
    pub underlay_address: Option<IpAddr>,
    /// Why that address: the method and what it verified.
    pub underlay_reason: String,
    pub underlay_mtu: u32,
    pub backend: String,
    /// Whether the view is complete enough to delete routes by.
    pub synced: bool,
    pub nodes: Vec<PeerStatus>,
    /// Things an operator should fix (duplicate addresses, refused secret).
    pub warnings: Vec<String>,
    /// `gossip` or `etcd`.
    #[serde(default)]
    pub datastore: String,
    pub gossip_bytes_sent: u64,
    pub gossip_bytes_received: u64,
    /// Requests this agent made to etcd since it started.
    #[serde(default)]
    pub etcd_requests: u64,
    /// Every usable underlay address of this node, the advertised first.
    #[serde(default)]
    pub underlay_addresses: Vec<IpAddr>,
    /// Ranges of the pod network some node cannot use (its own routes).
    #[serde(default)]
    pub reserved: Vec<IpNet>,
    /// Changes this agent made to the kernel since it started: constant
    /// while the cluster is quiet.
    #[serde(default)]
    pub kernel_writes: u64,
    /// Runs of `nft` (reads included) since the agent started.
    #[serde(default)]
    pub nft_runs: u64,
    /// The policies in force, with this host's drop counters.
    #[serde(default)]
    pub policies: Vec<PolicyStatus>,
    /// Gossip datagrams refused: unauthenticated, sealed with another
    /// secret, stale or replayed.
    #[serde(default)]
    pub gossip_dropped: u64,
    /// Bytes of health probes this node sent and of answers it received
    /// (IP packets), since it started.
    #[serde(default)]
    pub probe_bytes_sent: u64,
    #[serde(default)]
    pub probe_bytes_received: u64,
    /// Every endpoint of the cluster as this node's view holds it.
    #[serde(default)]
    pub endpoints: Vec<EndpointRecord>,
    /// The networks in force besides the default one, with the nodes
    /// holding blocks of each and whether this host routes to it.
    #[serde(default)]
    pub networks: Vec<NetworkStatus>,
    /// The WireGuard device when the node encrypts pod traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<WireguardStatus>,
    /// The cluster's pod network (`pod-cidr`) and the subnets of the
    /// networks in force: what must not overlap the host's own routes.
    #[serde(default)]
    pub pod_cidrs: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireguardStatus {
    pub device: String,
    /// What `wg show` takes: the name of the control socket.
    pub uapi: String,
    /// Which implementation carries the traffic, and why.
    pub path: String,
    pub public_key: String,
    pub port: u16,
    pub peers: Vec<WireguardPeerStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireguardPeerStatus {
    /// The node, or empty for a peer no node of the view names.
    pub name: String,
    pub public_key: String,
    pub endpoint: Option<std::net::SocketAddr>,
    /// Seconds since the last handshake; none yet.
    pub handshake_age_s: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub address: Option<IpAddr>,
    pub blocks: Vec<IpNet>,
    /// `self`, `routed`, `vxlan`, `via RELAY`, or `unreachable: why`.
    pub path: String,
    /// The node relaying our traffic to this peer, when its direct data
    /// path fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// Why the peer is relayed, or why it cannot be though its direct
    /// path fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_why: Option<String>,
    /// Gossip's verdict (the failure detector).
    pub alive: bool,
    /// The data path's verdict: `ok`, `failing: why`, or `-` (no data path
    /// or not probed long enough).
    #[serde(default)]
    pub data_path: String,
    /// Largest IP packet that crossed the underlay to the peer with DF.
    #[serde(default)]
    pub path_mtu: Option<u32>,
    /// Which of the peer's addresses answer this node's probes.
    #[serde(default)]
    pub reached: Vec<IpAddr>,
    /// How many endpoints the peer publishes.
    #[serde(default)]
    pub endpoints: u64,
    /// MTU of the peer's underlay interface, as it publishes it.
    #[serde(default)]
    pub mtu: u32,
    /// How far the peer's clock is ahead of ours (negative: behind), in
    /// ms, as its latest probe's send time told; none before it probed us.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockStatus {
    pub cidr: IpNet,
    pub used: u64,
    pub capacity: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStatus {
    pub key: AttachmentKey,
    #[serde(default)]
    pub network_id: String,
    pub addresses: Vec<IpNet>,
    pub host_ifname: String,
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[cfg(test)]
mod added_wire_tests {
    use super::*;

    #[test]
    fn added_is_read_and_written_in_both_versions() {
        let old = r#"{"host_ifname":"msl0123456789ab","host_mac":"ee:ee:ee:ee:ee:ee","container_ifname":"eth0","container_mac":"02:00:00:00:00:01","address":"10.1.0.5/32","gateway":"169.254.1.1","mtu":1450}"#;
        let a: Added = serde_json::from_str(old).unwrap();
        assert_eq!(a.addresses, vec!["10.1.0.5/32".parse::<IpNet>().unwrap()]);
        let v: serde_json::Value = serde_json::to_value(&a).unwrap();
        assert_eq!(
            v["address"], "10.1.0.5/32",
            "the previous plugin reads this"
        );
        assert_eq!(v["gateway"], "169.254.1.1");
        let back: Added = serde_json::from_value(v).unwrap();
        assert_eq!(back, a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_round_trips() {
        let r = Request::Gc(GcRequest {
            network: "n".into(),
            valid: vec![("c".into(), "eth0".into())],
        });
        let line = serde_json::to_string(&r).unwrap();
        assert!(line.contains("\"op\":\"gc\""));
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), r);
        let s = serde_json::to_string(&Request::Status).unwrap();
        assert_eq!(s, r#"{"op":"status"}"#);
        let e = Response::Error(CniError::new(
            crate::cni::ErrorCode::AddressesExhausted,
            "full",
        ));
        let back: Response = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back, e);
        let reap = serde_json::to_string(&Request::Reap { apply: true }).unwrap();
        assert_eq!(reap, r#"{"op":"reap","apply":true}"#);
    }

    #[test]
    fn acknowledgement_is_distinct_from_every_response() {
        let ack = serde_json::to_string(&Accepted::Accepted).unwrap();
        assert_eq!(ack, r#"{"kind":"accepted"}"#);
        assert!(serde_json::from_str::<Response>(&ack).is_err());
        assert!(serde_json::from_str::<Accepted>(r#"{"kind":"done"}"#).is_err());
    }
}
