//! A node's cluster data plane in kernel objects: the VXLAN device with
//! its VTEP address, routes to peers' blocks, the pod rule, and the
//! neighbour and FDB entries, per network, from the model's
//! [`Desired`](muslin_model::dataplane::Desired).

use ipnet::IpNet;
use muslin_model::dataplane::{Desired, MAIN_TABLE, POD_RULE_PRIORITY, POD_TABLE, VXLAN_DEV};
use muslin_model::naming::is_pod_veth;
use muslin_model::network::{
    parse_vxlan_dev, NetworkSpec, MARK_MASK, MARK_RULE_PRIORITY, MAX_ID,
    POD_RULE_PRIORITY as NET_POD_RULE_PRIORITY, POD_TABLE_BASE, REACH_RULE_PRIORITY, TABLE_BASE,
};
use muslin_model::ROUTE_PROTOCOL;

use crate::change::Change;

use crate::diff::Ownership;
use crate::object::{
    Address, Family, Fdb, HostState, Link, LinkKind, Neighbour, Route, Rule, Scope, Vxlan,
};

/// A network's place in the host's routing: the table its routes to peers
/// go to. The default network routes in the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkTables {
    pub network: String,
    pub table: u32,
    /// The table that only pod-sourced traffic looks up (see the pod rule).
    pub pod_table: u32,
    pub rule_priority: u32,
}

impl NetworkTables {
    pub fn default_network() -> Self {
        NetworkTables {
            network: muslin_model::DEFAULT_NETWORK.into(),
            table: MAIN_TABLE,
            pod_table: POD_TABLE,
            rule_priority: POD_RULE_PRIORITY,
        }
    }
}

/// The kernel objects of the default network's `d`.
pub fn host_state(d: &Desired) -> HostState {
    let mut s = tunnel_state(d, VXLAN_DEV, None);
    s.rules = d
        .pod_rule
        .iter()
        .map(|src| Rule {
            family: Family::of(&src.addr()),
            priority: POD_RULE_PRIORITY,
            src: Some(*src),
            dst: None,
            fwmark: None,
            table: POD_TABLE,
        })
        .collect();
    s
}

/// The kernel objects of network `n`'s `d`: its VXLAN device in the
/// network's link group (no address: the VTEP addresses of overlapping
/// networks would collide in the host's local table), routes in its
/// table, the rule that sends its marked packets there and, when the
/// hosts route to it, the rule that sends theirs.
pub fn network_state(d: &Desired, n: &NetworkSpec, host_reach: bool) -> HostState {
    let mut s = tunnel_state(d, &n.vxlan_dev(), Some(n.group()));
    s.addresses.clear();
    s.rules.push(Rule {
        family: Family::V4,
        priority: MARK_RULE_PRIORITY,
        src: None,
        dst: None,
        fwmark: Some((n.mark(), MARK_MASK)),
        table: n.table(),
    });
    if !n.isolated_from_host {
        for sub in &n.subnets {
            s.rules.push(Rule {
                family: Family::of(&sub.addr()),
                priority: NET_POD_RULE_PRIORITY,
                src: Some(*sub),
                dst: None,
                fwmark: Some((n.mark(), MARK_MASK)),
                table: n.pod_table(),
            });
        }
    }
    if host_reach {
        for sub in &n.subnets {
            s.rules.push(Rule {
                family: Family::of(&sub.addr()),
                priority: REACH_RULE_PRIORITY,
                src: None,
                dst: Some(*sub),
                fwmark: None,
                table: n.table(),
            });
        }
    }
    s
}

/// Tunnel devices of networks not in `live`, to remove.
pub fn stale_tunnels(observed: &HostState, live: &[&NetworkSpec]) -> Vec<Change> {
    observed
        .links
        .iter()
        .filter(|l| parse_vxlan_dev(&l.name).is_some_and(|id| !live.iter().any(|n| n.id == id)))
        .map(|l| Change::DeleteLink(l.name.clone()))
        .collect()
}

/// What the data plane of the default network and of `networks` owns.
pub fn all_ownership(networks: &[&NetworkSpec], allow_deletes: bool) -> Ownership {
    let ours = TABLE_BASE + 1..=TABLE_BASE + u32::from(MAX_ID);
    let pods = POD_TABLE_BASE + 1..=POD_TABLE_BASE + u32::from(MAX_ID);
    let mut tables = vec![MAIN_TABLE, POD_TABLE];
    tables.extend(networks.iter().flat_map(|n| [n.table(), n.pod_table()]));
    Ownership {
        protocol: ROUTE_PROTOCOL,
        tables,
        foreign_dev: is_pod_veth,
        rules: vec![
            (POD_RULE_PRIORITY, POD_TABLE..=POD_TABLE),
            (MARK_RULE_PRIORITY, ours.clone()),
            (REACH_RULE_PRIORITY, ours),
            (NET_POD_RULE_PRIORITY, pods),
        ],
        main_table: MAIN_TABLE,
        allow_deletes,
    }
}

fn tunnel_state(d: &Desired, dev: &str, group: Option<u32>) -> HostState {
    let mut s = HostState::default();
    if let Some(v) = &d.vxlan {
        s.links.push(Link {
            name: dev.into(),
            kind: LinkKind::Vxlan(Vxlan {
                vni: v.vni,
                port: v.port,
                local: Some(v.local),
                underlay: Some(v.underlay_if.clone()),
                df: Some(true),
            }),
            mtu: Some(v.mtu),
            mac: Some(v.mac),
            up: true,
            group,
        });
        s.addresses.push(Address {
            link: dev.into(),
            net: IpNet::from(v.address),
        });
    }
    s.routes = d
        .routes
        .iter()
        .map(|r| Route {
            table: r.table,
            dst: r.dst,
            via: Some(r.via),
            dev: Some(r.dev.clone()),
            onlink: r.onlink,
            mtu: r.mtu,
            scope: Scope::Universe,
            protocol: ROUTE_PROTOCOL,
        })
        .collect();
    s.neighbours = d
        .neighbours
        .iter()
        .map(|(ip, mac)| Neighbour {
            link: dev.into(),
            ip: *ip,
            mac: *mac,
        })
        .collect();
    s.fdb = d
        .fdb
        .iter()
        .map(|(mac, dst)| Fdb {
            link: dev.into(),
            mac: *mac,
            dst: *dst,
        })
        .collect();
    s
}

/// What of the host the cluster data plane owns: routes with our protocol
/// in the network's tables that do not lead to a pod veth (those are the
/// attachments'), and the pod rule.
pub fn ownership(net: &NetworkTables, allow_deletes: bool) -> Ownership {
    Ownership {
        protocol: ROUTE_PROTOCOL,
        tables: vec![net.table, net.pod_table],
        foreign_dev: is_pod_veth,
        rules: vec![(net.rule_priority, net.pod_table..=net.pod_table)],
        main_table: MAIN_TABLE,
        allow_deletes,
    }
}
