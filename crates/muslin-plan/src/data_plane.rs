//! A node's cluster data plane in kernel objects: the VXLAN device with
//! its VTEP address, routes to peers' blocks, the pod rule, and the
//! neighbour and FDB entries, per network, from the model's
//! [`Desired`](muslin_model::dataplane::Desired).

use ipnet::IpNet;
use muslin_model::dataplane::{Desired, MAIN_TABLE, POD_RULE_PRIORITY, POD_TABLE, VXLAN_DEV};
use muslin_model::naming::is_pod_veth;
use muslin_model::ROUTE_PROTOCOL;

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

/// The kernel objects of `d`.
pub fn host_state(d: &Desired) -> HostState {
    let mut s = HostState::default();
    if let Some(v) = &d.vxlan {
        s.links.push(Link {
            name: VXLAN_DEV.into(),
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
        });
        s.addresses.push(Address {
            link: VXLAN_DEV.into(),
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
    s.rules = d
        .pod_rule
        .iter()
        .map(|src| Rule {
            family: Family::of(&src.addr()),
            priority: POD_RULE_PRIORITY,
            src: Some(*src),
            table: POD_TABLE,
        })
        .collect();
    s.neighbours = d
        .neighbours
        .iter()
        .map(|(ip, mac)| Neighbour {
            link: VXLAN_DEV.into(),
            ip: *ip,
            mac: *mac,
        })
        .collect();
    s.fdb = d
        .fdb
        .iter()
        .map(|(mac, dst)| Fdb {
            link: VXLAN_DEV.into(),
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
        rule: Some((net.rule_priority, net.pod_table)),
        main_table: MAIN_TABLE,
        allow_deletes,
    }
}
