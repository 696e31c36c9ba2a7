//! A node's status as Prometheus metric families. Pure: the names, labels
//! and values are tested without an agent, and built from the same status
//! `muslin status` shows, so the two never disagree. docs/metrics.md lists
//! every family; a family added here belongs there too.

use std::collections::BTreeMap;

use muslin_model::api::{NetworkStatus, NodeStatus, PeerStatus};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::live::Live;

/// Counters of the whole process that no status carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Process {
    pub kernel_changes: u64,
    pub kernel_change_failures: u64,
    pub nft_runs: u64,
    pub etcd_errors: u64,
}

impl Process {
    pub fn now() -> Process {
        let k = muslin_kernel::counters();
        Process {
            kernel_changes: k.kernel_writes(),
            kernel_change_failures: k.steps_failed,
            nft_runs: k.nft_runs,
            etcd_errors: muslin_store::etcd_errors(),
        }
    }
}

/// What one scrape shows.
pub struct Snapshot<'a> {
    /// As the local API's `status` answers, policies' counters included.
    pub status: &'a NodeStatus,
    /// Every network in force with its drop counters (`network list`);
    /// empty without a cluster.
    pub networks: &'a [NetworkStatus],
    pub process: Process,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Version {
    version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Network {
    network: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Block {
    block: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PathHealth {
    path: &'static str,
    health: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Peer {
    peer: String,
}

/// One series per item and reason: drop counters kept per cause.
fn by_reason<T, L>(
    items: &[T],
    counts: impl Fn(&T) -> [(&'static str, u64); 2],
    label: impl Fn(&T, &'static str) -> L,
) -> Vec<(L, u64)> {
    items
        .iter()
        .flat_map(|x| counts(x).map(|(reason, v)| (label(x, reason), v)))
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PolicyReason {
    policy: String,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct NetworkReason {
    network: String,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DnsOutcome {
    outcome: &'static str,
}

/// The values of `muslin_peers`' labels.
const PATHS: [&str; 6] = [
    "routed",
    "vxlan",
    "wireguard",
    "relay",
    "unreachable",
    "unknown",
];
const HEALTHS: [&str; 4] = ["ok", "failing", "unprobed", "down"];

/// The kind of a peer's path, without the free text (`via RELAY`,
/// `unreachable: why`) that would make a series per cause.
pub fn path_kind(path: &str) -> &'static str {
    match path {
        "self" => "self",
        "routed" => "routed",
        "vxlan" => "vxlan",
        "wireguard" => "wireguard",
        p if p.starts_with("via ") => "relay",
        p if p.starts_with("unreachable") => "unreachable",
        _ => "unknown",
    }
}

/// Gossip's verdict first (a dead peer is not probed), then the data
/// path's.
pub fn health(p: &PeerStatus) -> &'static str {
    match p.data_path.as_str() {
        _ if !p.alive => "down",
        "ok" => "ok",
        d if d.starts_with("failing") => "failing",
        _ => "unprobed",
    }
}

fn gauge<L>(r: &mut Registry, name: &str, help: &str, unit: Option<Unit>, values: Vec<(L, u64)>)
where
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
{
    let f = Family::<L, Gauge>::default();
    for (l, v) in values {
        f.get_or_create(&l).set(v.min(i64::MAX as u64) as i64);
    }
    match unit {
        Some(u) => r.register_with_unit(name, help, u, f),
        None => r.register(name, help, f),
    }
}

fn counter(r: &mut Registry, name: &str, help: &str, unit: Option<Unit>, v: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(v);
    match unit {
        Some(u) => r.register_with_unit(name, help, u, c),
        None => r.register(name, help, c),
    }
}

fn counters<L>(r: &mut Registry, name: &str, help: &str, unit: Option<Unit>, values: Vec<(L, u64)>)
where
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
{
    let f = Family::<L, Counter>::default();
    for (l, v) in values {
        f.get_or_create(&l).inc_by(v);
    }
    match unit {
        Some(u) => r.register_with_unit(name, help, u, f),
        None => r.register(name, help, f),
    }
}

/// The OpenMetrics text of one scrape, `# EOF` included.
pub fn encode(s: &Snapshot, live: &Live) -> String {
    let mut r = Registry::with_prefix("muslin");
    build(&mut r, s);
    live.register(&mut r);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &r).expect("writing to a String");
    out
}

fn build(r: &mut Registry, s: &Snapshot) {
    let st = s.status;
    gauge(
        r,
        "build_info",
        "Always 1; the version of the running agent is its label",
        None,
        vec![(
            Version {
                version: st.version.clone(),
            },
            1,
        )],
    );
    let mut attached: BTreeMap<String, u64> = s
        .networks
        .iter()
        .map(|n| (n.name.clone(), 0))
        .chain([(muslin_model::DEFAULT_NETWORK.to_string(), 0)])
        .collect();
    for e in &st.endpoints {
        *attached.entry(e.network_id.clone()).or_default() += 1;
    }
    gauge(
        r,
        "attachments",
        "Container attachments on this host, by Muslin network",
        None,
        attached
            .into_iter()
            .map(|(network, n)| (Network { network }, n))
            .collect(),
    );
    gauge(
        r,
        "block_used_addresses",
        "Addresses in use in each of this node's pod address blocks",
        None,
        st.blocks
            .iter()
            .map(|b| {
                (
                    Block {
                        block: b.cidr.to_string(),
                    },
                    b.used,
                )
            })
            .collect(),
    );
    gauge(
        r,
        "block_capacity_addresses",
        "Addresses each of this node's pod address blocks can give out",
        None,
        st.blocks
            .iter()
            .map(|b| {
                (
                    Block {
                        block: b.cidr.to_string(),
                    },
                    b.capacity,
                )
            })
            .collect(),
    );
    let p = s.process;
    counter(
        r,
        "kernel_changes",
        "Changes the agent made to the kernel (netlink, nftables, sysctl); constant while the cluster is quiet",
        None,
        p.kernel_changes,
    );
    counter(
        r,
        "kernel_change_failures",
        "Kernel changes that failed",
        None,
        p.kernel_change_failures,
    );
    counter(
        r,
        "nft_runs",
        "Runs of nft, reads included",
        None,
        p.nft_runs,
    );
    if let Some(c) = &st.cluster {
        cluster(r, c, p);
    }
    if !s.networks.is_empty() {
        counters(
            r,
            "network_dropped_packets",
            "Packets this host dropped at a network's edge: leaving (towards another network) or to_host (towards this host)",
            None,
            by_reason(
                s.networks,
                |n| [("leaving", n.dropped_leaving), ("to_host", n.dropped_to_host)],
                |n, reason| NetworkReason {
                    network: n.name.clone(),
                    reason,
                },
            ),
        );
    }
    if let Some(d) = &st.dns {
        counters(
            r,
            "dns_queries",
            "Queries the name service answered from the cluster's names, answered NXDOMAIN, forwarded upstream, or refused (from outside the resolver's network)",
            None,
            [
                ("answered", d.answered),
                ("nxdomain", d.nxdomain),
                ("forwarded", d.forwarded),
                ("refused", d.refused),
            ]
            .into_iter()
            .map(|(outcome, v)| (DnsOutcome { outcome }, v))
            .collect(),
        );
    }
}

fn cluster(r: &mut Registry, c: &muslin_model::api::ClusterStatus, p: Process) {
    let peers: Vec<&PeerStatus> = c.nodes.iter().filter(|n| n.path != "self").collect();
    // Every combination, zeros included: a sum over `health="ok"` must
    // fall to 0 rather than vanish when the last such peer leaves it.
    let mut by_path: BTreeMap<(&'static str, &'static str), u64> = PATHS
        .iter()
        .flat_map(|p| HEALTHS.iter().map(move |h| ((*p, *h), 0)))
        .collect();
    for n in &peers {
        *by_path.entry((path_kind(&n.path), health(n))).or_default() += 1;
    }
    gauge(
        r,
        "peers",
        "Other nodes in this node's view, by data path (routed, vxlan, wireguard, relay, unreachable, unknown) and health (ok, failing, unprobed, down)",
        None,
        by_path
            .into_iter()
            .map(|((path, health), n)| (PathHealth { path, health }, n))
            .collect(),
    );
    let peer = |n: &PeerStatus| Peer {
        peer: n.name.clone(),
    };
    gauge(
        r,
        "peer_up",
        "1 while gossip's failure detector holds the peer alive",
        None,
        peers
            .iter()
            .map(|n| (peer(n), u64::from(n.alive)))
            .collect(),
    );
    gauge(
        r,
        "peer_data_path_up",
        "1 while health probes cross the data path to the peer, 0 while they fail; absent until probed long enough",
        None,
        peers
            .iter()
            .filter_map(|n| match health(n) {
                "ok" => Some((peer(n), 1)),
                "failing" => Some((peer(n), 0)),
                _ => None,
            })
            .collect(),
    );
    gauge(
        r,
        "peer_path_mtu",
        "Largest IP packet that crossed the underlay to the peer with DF set",
        Some(Unit::Bytes),
        peers
            .iter()
            .filter_map(|n| Some((peer(n), u64::from(n.path_mtu?))))
            .collect(),
    );
    // Negative when the peer's clock is behind: a float gauge in seconds.
    let skew = Family::<Peer, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for n in peers {
        if let Some(ms) = n.clock_skew_ms {
            skew.get_or_create(&peer(n)).set(ms as f64 / 1e3);
        }
    }
    r.register_with_unit(
        "peer_clock_skew",
        "How far the peer's clock is ahead of this node's (negative: behind), from the send time of its latest probe",
        Unit::Seconds,
        skew,
    );
    let warnings = Gauge::<i64>::default();
    warnings.set(c.warnings.len() as i64);
    r.register(
        "cluster_warnings",
        "Problems an operator should fix, as `muslin status` lists them",
        warnings,
    );
    counter(
        r,
        "probe_sent",
        "Bytes of health probes sent (IP packets)",
        Some(Unit::Bytes),
        c.probe_bytes_sent,
    );
    counter(
        r,
        "probe_received",
        "Bytes of health probe answers received (IP packets)",
        Some(Unit::Bytes),
        c.probe_bytes_received,
    );
    match c.datastore.as_str() {
        "etcd" => {
            counter(
                r,
                "etcd_requests",
                "Requests made to etcd",
                None,
                c.etcd_requests,
            );
            counter(
                r,
                "etcd_errors",
                "Requests to etcd that failed (unreachable, timed out, refused)",
                None,
                p.etcd_errors,
            );
        }
        _ => {
            counter(
                r,
                "gossip_sent",
                "Bytes of gossip sent",
                Some(Unit::Bytes),
                c.gossip_bytes_sent,
            );
            counter(
                r,
                "gossip_received",
                "Bytes of gossip received",
                Some(Unit::Bytes),
                c.gossip_bytes_received,
            );
            counter(
                r,
                "gossip_dropped_datagrams",
                "Gossip datagrams refused: unauthenticated, sealed with another secret, stale or replayed",
                None,
                c.gossip_dropped,
            );
        }
    }
    counters(
        r,
        "policy_dropped_packets",
        "Packets this host dropped by a policy: denied (its deny rules) or isolated (at an endpoint it isolates, shared by every policy isolating it)",
        None,
        by_reason(
            &c.policies,
            |pol| [("denied", pol.denied_here), ("isolated", pol.dropped_isolated_here)],
            |pol, reason| PolicyReason {
                policy: pol.key.clone(),
                reason,
            },
        ),
    );
    if let Some(wg) = &c.wireguard {
        // A peer no node of the view names is still a series, by its key.
        let name = |n: &muslin_model::api::WireguardPeerStatus| Peer {
            peer: if n.name.is_empty() {
                n.public_key.clone()
            } else {
                n.name.clone()
            },
        };
        counters(
            r,
            "wireguard_peer_received",
            "Bytes received from each WireGuard peer",
            Some(Unit::Bytes),
            wg.peers.iter().map(|n| (name(n), n.rx_bytes)).collect(),
        );
        counters(
            r,
            "wireguard_peer_sent",
            "Bytes sent to each WireGuard peer",
            Some(Unit::Bytes),
            wg.peers.iter().map(|n| (name(n), n.tx_bytes)).collect(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muslin_model::api::{BlockStatus, ClusterStatus, DnsStatus, EndpointStatus, PolicyStatus};

    fn peer(name: &str, path: &str, alive: bool, data_path: &str) -> PeerStatus {
        PeerStatus {
            name: name.into(),
            address: None,
            blocks: vec![],
            path: path.into(),
            relay: None,
            path_why: None,
            alive,
            data_path: data_path.into(),
            path_mtu: (data_path == "ok").then_some(1450),
            reached: vec![],
            endpoints: 0,
            mtu: 1500,
            clock_skew_ms: None,
        }
    }

    fn endpoint(id: &str, network: &str) -> EndpointStatus {
        EndpointStatus {
            key: muslin_model::ipam::AttachmentKey {
                network: "muslin".into(),
                container_id: id.into(),
                ifname: "eth0".into(),
            },
            network_id: network.into(),
            addresses: vec![],
            host_ifname: format!("msl{id}"),
            pod: None,
            labels: Default::default(),
        }
    }

    fn network(name: &str, leaving: u64, to_host: u64) -> NetworkStatus {
        NetworkStatus {
            name: name.into(),
            subnets: vec![],
            vni: 1,
            id: 0,
            isolated_from_host: false,
            host_reach: true,
            host_reach_why: None,
            endpoints: vec![],
            nodes: vec![],
            dropped_leaving: leaving,
            dropped_to_host: to_host,
            created_by: None,
            settling: false,
        }
    }

    fn status() -> NodeStatus {
        let policy = muslin_model::policy::parse_document(
            "[[policy]]\nname = \"guard\"\naction = \"deny\"\npodSelector = {}\npolicyTypes = [\"Egress\"]\n[[policy.egress]]\nto = [{ ipBlock = { cidr = \"192.0.2.1/32\" } }]\n",
            muslin_model::policy::Format::Toml,
        )
        .unwrap()
        .remove(0);
        NodeStatus {
            node_name: "h1".into(),
            version: "9.9.9".into(),
            mtu: 1450,
            blocks: vec![BlockStatus {
                cidr: "10.244.1.0/24".parse().unwrap(),
                used: 3,
                capacity: 254,
            }],
            endpoints: vec![
                endpoint("a", "default"),
                endpoint("b", "default"),
                endpoint("c", "blue"),
            ],
            can_claim_more: true,
            cluster: Some(Box::new(ClusterStatus {
                datastore: "gossip".into(),
                nodes: vec![
                    peer("h1", "self", true, "-"),
                    peer("h2", "routed", true, "ok"),
                    peer("h3", "routed", true, "ok"),
                    peer("h4", "via h2", true, "failing: no answer"),
                    peer("h5", "unreachable: no route", false, "-"),
                ],
                gossip_bytes_sent: 1000,
                gossip_bytes_received: 900,
                gossip_dropped: 2,
                probe_bytes_sent: 84,
                probe_bytes_received: 42,
                warnings: vec!["w".into()],
                policies: vec![PolicyStatus {
                    key: "guard".into(),
                    policy,
                    updated_at_ms: 0,
                    updated_by: "h1".into(),
                    protects_here: vec![],
                    denied_here: 5,
                    dropped_isolated_here: 0,
                }],
                ..Default::default()
            })),
            dns: Some(Box::new(DnsStatus {
                answered: 7,
                nxdomain: 1,
                ..Default::default()
            })),
        }
    }

    fn text(s: &NodeStatus, networks: &[NetworkStatus]) -> String {
        encode(
            &Snapshot {
                status: s,
                networks,
                process: Process {
                    kernel_changes: 11,
                    kernel_change_failures: 1,
                    nft_runs: 4,
                    etcd_errors: 3,
                },
            },
            &Live::default(),
        )
    }

    /// Every line is a comment the format knows or a sample of a family
    /// declared above it, and the text ends as OpenMetrics requires.
    fn well_formed(t: &str) {
        assert!(t.ends_with("# EOF\n"), "{t}");
        let mut family = String::new();
        let mut kind = String::new();
        for line in t.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (f, k) = rest.split_once(' ').unwrap();
                (family, kind) = (f.to_string(), k.to_string());
                assert!(f.starts_with("muslin_"), "{line}");
                assert!(!f.ends_with("_total"), "{line}");
                continue;
            }
            if line.starts_with("# HELP ") || line.starts_with("# UNIT ") || line == "# EOF" {
                continue;
            }
            let (name, value) = line.rsplit_once(' ').unwrap();
            let name = name.split('{').next().unwrap();
            value.parse::<f64>().unwrap();
            let suffixes: &[&str] = match kind.as_str() {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            assert!(
                suffixes.iter().any(|s| name == format!("{family}{s}")),
                "{line} is not of {family} ({kind})"
            );
        }
    }

    fn sample(t: &str, series: &str) -> Option<f64> {
        t.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
    }

    #[test]
    fn a_clustered_node_shows_every_family() {
        let t = text(
            &status(),
            &[network("default", 0, 0), network("blue", 6, 8)],
        );
        well_formed(&t);
        for (series, want) in [
            (r#"muslin_build_info{version="9.9.9"}"#, 1.0),
            (r#"muslin_attachments{network="default"}"#, 2.0),
            (r#"muslin_attachments{network="blue"}"#, 1.0),
            (r#"muslin_block_used_addresses{block="10.244.1.0/24"}"#, 3.0),
            (r#"muslin_peers{path="routed",health="ok"}"#, 2.0),
            (r#"muslin_peers{path="relay",health="failing"}"#, 1.0),
            (r#"muslin_peers{path="unreachable",health="down"}"#, 1.0),
            (r#"muslin_peers{path="vxlan",health="ok"}"#, 0.0),
            (r#"muslin_peer_up{peer="h5"}"#, 0.0),
            (r#"muslin_peer_data_path_up{peer="h4"}"#, 0.0),
            (r#"muslin_peer_data_path_up{peer="h2"}"#, 1.0),
            (r#"muslin_peer_path_mtu_bytes{peer="h2"}"#, 1450.0),
            ("muslin_cluster_warnings", 1.0),
            ("muslin_gossip_sent_bytes_total", 1000.0),
            ("muslin_gossip_received_bytes_total", 900.0),
            ("muslin_gossip_dropped_datagrams_total", 2.0),
            ("muslin_probe_sent_bytes_total", 84.0),
            ("muslin_probe_received_bytes_total", 42.0),
            ("muslin_kernel_changes_total", 11.0),
            ("muslin_kernel_change_failures_total", 1.0),
            ("muslin_nft_runs_total", 4.0),
            (
                r#"muslin_policy_dropped_packets_total{policy="guard",reason="denied"}"#,
                5.0,
            ),
            (
                r#"muslin_network_dropped_packets_total{network="blue",reason="to_host"}"#,
                8.0,
            ),
            (r#"muslin_dns_queries_total{outcome="answered"}"#, 7.0),
            (r#"muslin_dns_queries_total{outcome="refused"}"#, 0.0),
            (r#"muslin_cni_requests_total{op="add",result="error"}"#, 0.0),
            (r#"muslin_cni_add_duration_seconds_count{result="ok"}"#, 0.0),
        ] {
            assert_eq!(sample(&t, series), Some(want), "{series} in\n{t}");
        }
        assert!(!t.contains(r#"peer="h1""#), "self is no peer:\n{t}");
        assert!(!t.contains("muslin_etcd_"), "gossip has no etcd:\n{t}");
    }

    #[test]
    fn a_node_alone_shows_no_cluster_families() {
        let mut s = status();
        s.cluster = None;
        s.dns = None;
        let t = text(&s, &[]);
        well_formed(&t);
        assert_eq!(
            sample(&t, r#"muslin_attachments{network="default"}"#),
            Some(2.0)
        );
        for family in [
            "muslin_peers",
            "muslin_gossip",
            "muslin_dns",
            "muslin_network_",
        ] {
            assert!(!t.contains(family), "{family} in\n{t}");
        }
    }

    #[test]
    fn etcd_shows_its_requests_and_errors_instead_of_gossip() {
        let mut s = status();
        let c = s.cluster.as_mut().unwrap();
        c.datastore = "etcd".into();
        c.etcd_requests = 40;
        let t = text(&s, &[]);
        well_formed(&t);
        assert_eq!(sample(&t, "muslin_etcd_requests_total"), Some(40.0));
        assert_eq!(sample(&t, "muslin_etcd_errors_total"), Some(3.0));
        assert!(!t.contains("muslin_gossip_"), "{t}");
    }

    #[test]
    fn cni_latency_lands_in_its_histogram_by_result() {
        let live = Live::default();
        live.cni(
            super::super::Op::Add,
            true,
            std::time::Duration::from_millis(30),
        );
        live.cni(
            super::super::Op::Add,
            false,
            std::time::Duration::from_secs(2),
        );
        live.cni(
            super::super::Op::Del,
            true,
            std::time::Duration::from_millis(3),
        );
        live.cni(
            super::super::Op::Check,
            true,
            std::time::Duration::from_millis(3),
        );
        let s = status();
        let t = encode(
            &Snapshot {
                status: &s,
                networks: &[],
                process: Process::default(),
            },
            &live,
        );
        well_formed(&t);
        for (series, want) in [
            (r#"muslin_cni_add_duration_seconds_count{result="ok"}"#, 1.0),
            (
                r#"muslin_cni_add_duration_seconds_count{result="error"}"#,
                1.0,
            ),
            (
                r#"muslin_cni_add_duration_seconds_bucket{le="0.04",result="ok"}"#,
                1.0,
            ),
            (
                r#"muslin_cni_add_duration_seconds_bucket{le="0.02",result="ok"}"#,
                0.0,
            ),
            (r#"muslin_cni_del_duration_seconds_count{result="ok"}"#, 1.0),
            (r#"muslin_cni_requests_total{op="check",result="ok"}"#, 1.0),
            (r#"muslin_cni_requests_total{op="add",result="error"}"#, 1.0),
        ] {
            assert_eq!(sample(&t, series), Some(want), "{series} in\n{t}");
        }
    }

    #[test]
    fn paths_and_health_are_a_few_words() {
        assert_eq!(path_kind("via h2"), "relay");
        assert_eq!(
            path_kind("unreachable: no route to 10.0.0.1"),
            "unreachable"
        );
        assert_eq!(path_kind("wireguard"), "wireguard");
        assert_eq!(path_kind("something new"), "unknown");
        assert_eq!(health(&peer("x", "routed", false, "ok")), "down");
        assert_eq!(health(&peer("x", "routed", true, "-")), "unprobed");
    }
}
