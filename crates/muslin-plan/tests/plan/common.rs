//! Fixed inputs: a four-node cluster seen from `h1`, and the way a state
//! and a diff are written in golden files.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use muslin_model::cluster::{vtep_mac, BlockClaim, ClusterView, NodeRecord, PeerView};
use muslin_model::dataplane::{self, Backend, Desired, Params, Path, Underlay, VxlanSettings};
use muslin_plan::data_plane::{self as dp, NetworkTables};
use muslin_plan::object::{Link, LinkKind};
use muslin_plan::{Diff, HostState, Ownership};

pub const ME: &str = "h1";
pub const POD_CIDR: &str = "10.244.0.0/16";

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

pub fn record(name: &str, addr: &str, prefix: &str) -> NodeRecord {
    NodeRecord::new(name, ip(addr), net(prefix), 1500)
}

/// Adds (or replaces) a live node with its blocks.
pub fn join(v: &mut ClusterView, name: &str, addr: &str, prefix: &str, blocks: &[&str]) {
    let mut pv = PeerView {
        record: Some(record(name, addr, prefix).into()),
        alive: true,
        ..Default::default()
    };
    for b in blocks {
        pv.claims.insert(net(b), BlockClaim { claimed_at_ms: 1 });
    }
    v.nodes.insert(name.into(), pv);
}

/// `h1` (us) and `h2` share 192.168.10.0/24; `h3` and `h4` are behind a
/// router; `h4` has not leased a block yet.
pub fn cluster() -> ClusterView {
    let mut v = ClusterView::default();
    join(
        &mut v,
        "h1",
        "192.168.10.11",
        "192.168.10.0/24",
        &["10.244.1.0/24"],
    );
    join(
        &mut v,
        "h2",
        "192.168.10.12",
        "192.168.10.0/24",
        &["10.244.2.0/24", "10.244.12.0/24"],
    );
    join(
        &mut v,
        "h3",
        "192.168.20.13",
        "192.168.20.0/24",
        &["10.244.3.0/24"],
    );
    join(&mut v, "h4", "192.168.20.14", "192.168.20.0/24", &[]);
    v
}

pub fn underlay() -> Underlay {
    Underlay {
        ifname: "eth1".into(),
        address: ip("192.168.10.11"),
        prefix: net("192.168.10.0/24"),
        mtu: 1500,
    }
}

pub fn desired(v: &ClusterView, backend: Backend) -> Desired {
    let local = underlay();
    let addrs = [local.address];
    dataplane::desired(
        v,
        &Params {
            me: ME,
            backend,
            local: &local,
            vx: VxlanSettings {
                vni: 4242,
                port: 4789,
            },
            vtep_mac: vtep_mac(ME),
            pod_cidr: net(POD_CIDR),
            local_addresses: &addrs,
            path_mtu: &BTreeMap::new(),
            dev: muslin_model::dataplane::VXLAN_DEV,
            table: muslin_model::dataplane::MAIN_TABLE,
            pod_table: Some(muslin_model::dataplane::POD_TABLE),
            tunnel_always: false,
            health: &muslin_model::peer_map::PeerMap::new(),
            relays: &BTreeMap::new(),
            encrypt: false,
            wg_kind: "tun",
        },
    )
}

/// The host objects the cluster data plane of `v` asks for.
pub fn wanted(v: &ClusterView, backend: Backend) -> HostState {
    dp::host_state(&desired(v, backend))
}

pub fn own(allow_deletes: bool) -> Ownership {
    dp::ownership(&NetworkTables::default_network(), allow_deletes)
}

/// A host before Muslin touched it: only the underlay interface.
pub fn fresh_host() -> HostState {
    HostState {
        links: vec![Link {
            name: "eth1".into(),
            kind: LinkKind::Other(Some("ethernet".into())),
            mtu: Some(1500),
            mac: Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
            up: true,
            group: None,
        }],
        ..Default::default()
    }
}

/// The host after the changes towards `s` were carried out.
pub fn applied(s: &HostState) -> HostState {
    let mut h = fresh_host();
    h.links.extend(s.links.iter().cloned());
    h.addresses.extend(s.addresses.iter().cloned());
    h.routes.extend(s.routes.iter().cloned());
    h.rules.extend(s.rules.iter().cloned());
    h.neighbours.extend(s.neighbours.iter().cloned());
    h.fdb.extend(s.fdb.iter().cloned());
    h
}

pub fn render_paths(d: &Desired) -> String {
    let mut out = String::new();
    for (n, p) in &d.paths {
        let p = match p {
            Path::Routed => "routed".to_string(),
            Path::Vxlan => "vxlan".to_string(),
            Path::Wireguard => "wireguard".to_string(),
            Path::Relay(r) => format!("via {}: {}", r.via, r.why),
            Path::Unreachable(why) => format!("unreachable: {why}"),
        };
        out.push_str(&format!("  {n}: {p}\n"));
    }
    out
}

pub fn render_state(s: &HostState) -> String {
    let mut out = String::new();
    let mut line = |kind: &str, what: String| out.push_str(&format!("  {kind} {what}\n"));
    for l in &s.links {
        line("link", l.to_string());
    }
    for a in &s.addresses {
        line("addr", format!("{} dev {}", a.net, a.link));
    }
    for r in &s.routes {
        line("route", r.to_string());
    }
    for r in &s.rules {
        line("rule", r.to_string());
    }
    for n in &s.neighbours {
        line("neigh", n.to_string());
    }
    for e in &s.fdb {
        line("fdb", e.to_string());
    }
    out
}

pub fn render_diff(d: &Diff) -> String {
    let mut out = String::new();
    for c in &d.changes {
        out.push_str(&format!("  {c}\n"));
    }
    for s in &d.skipped {
        out.push_str(&format!("  skipped: {s}\n"));
    }
    out
}

/// The changes as lines, for asserts that read like the golden files.
pub fn lines(d: &Diff) -> Vec<String> {
    render_diff(d)
        .lines()
        .map(|l| l.trim().to_string())
        .collect()
}
