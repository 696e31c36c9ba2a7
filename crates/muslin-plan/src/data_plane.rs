//! A node's cluster data plane in kernel objects: the VXLAN device with
//! its VTEP address, routes to peers' blocks, the pod rule, and the
//! neighbour and FDB entries, per network, from the model's
//! [`Desired`](muslin_model::dataplane::Desired).

use ipnet::IpNet;
use muslin_model::dataplane::{Desired, MAIN_TABLE, POD_RULE_PRIORITY, POD_TABLE, VXLAN_DEV};
use muslin_model::encryption::{WG_DEV, WG_MARK, WG_RULE_PRIORITY, WG_TABLE};
use muslin_model::naming::is_pod_veth;
use muslin_model::network::{
    parse_vxlan_dev, NetworkSpec, GUARD_PRIORITY, MARK_MASK, MARK_RULE_PRIORITY, MAX_ID,
    POD_RULE_PRIORITY as NET_POD_RULE_PRIORITY, POD_TABLE_BASE, REACH_RULE_PRIORITY,
    REFUSE_PRIORITY as NET_REFUSE_PRIORITY, TABLE_BASE,
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

/// A rule with only what `ip rule` needs said.
fn rule(family: Family, priority: u32, table: u32) -> Rule {
    Rule {
        family,
        priority,
        src: None,
        dst: None,
        fwmark: None,
        iif: None,
        unreachable: false,
        table,
    }
}

/// The kernel objects of the default network's `d`.
pub fn host_state(d: &Desired) -> HostState {
    let mut s = tunnel_state(d, VXLAN_DEV, None);
    // The WireGuard device is made by the agent before the data plane
    // converges (a TUN of its own, or the kernel's WireGuard link, which
    // needs its key before it is of use); only its MTU, state and address
    // are set here.
    if let Some(w) = &d.wireguard {
        s.links.push(Link {
            name: WG_DEV.into(),
            kind: LinkKind::Other(Some(w.kind.clone())),
            mtu: Some(w.mtu),
            mac: None,
            up: true,
            group: None,
        });
        s.addresses.extend(w.address.map(|a| Address {
            link: WG_DEV.into(),
            net: IpNet::from(a),
        }));
    }
    s.rules = d
        .pod_rule
        .iter()
        .map(|src| Rule {
            src: Some(*src),
            ..rule(Family::of(&src.addr()), POD_RULE_PRIORITY, POD_TABLE)
        })
        .collect();
    if d.wireguard.is_some() {
        s.rules.push(Rule {
            fwmark: Some((WG_MARK, WG_MARK)),
            ..rule(Family::V4, WG_RULE_PRIORITY, WG_TABLE)
        });
    }
    s
}

/// The kernel objects of network `n`'s `d`: its VXLAN device in the
/// network's link group with this node's underlay address (no address of
/// the network's own: those of overlapping networks would collide in the
/// host's local table), routes in its tables, and its rules:
/// * 1070: its marked packets look up its table;
/// * 1071: when this host routes to the network, the host's own packets
///   (`iif lo`) to its subnet do too; forwarded ones never do, so no
///   container of another network gets in that way;
/// * 1072: its pods' packets to peers' node addresses take its tunnel;
/// * 1073: its marked packets that found no route there and are meant
///   for a range of the cluster (`ranges`) are refused, rather than
///   falling through to the main table's routes of another network.
pub fn network_state(
    d: &Desired,
    n: &NetworkSpec,
    host_reach: bool,
    ranges: &[IpNet],
) -> HostState {
    let mut s = tunnel_state(d, &n.vxlan_dev(), Some(n.group()));
    let marked = Some((n.mark(), MARK_MASK));
    s.rules.push(Rule {
        fwmark: marked,
        ..rule(Family::V4, MARK_RULE_PRIORITY, n.table())
    });
    for sub in &n.subnets {
        let fam = Family::of(&sub.addr());
        if !n.isolated_from_host {
            s.rules.push(Rule {
                src: Some(*sub),
                fwmark: marked,
                ..rule(fam, NET_POD_RULE_PRIORITY, n.pod_table())
            });
        }
        if host_reach {
            s.rules.push(Rule {
                dst: Some(*sub),
                iif: Some("lo".into()),
                ..rule(fam, REACH_RULE_PRIORITY, n.table())
            });
        }
    }
    for r in ranges {
        s.rules.push(Rule {
            dst: Some(*r),
            fwmark: marked,
            unreachable: true,
            ..rule(Family::of(&r.addr()), NET_REFUSE_PRIORITY, 0)
        });
    }
    s
}

/// Rules at 1074 that refuse everything else bound for the networks'
/// subnets outside the default network: a container of the default
/// network, or a host of the LAN routing through this one, never gets
/// into a network, and the host's own packets to an address no container
/// of a network holds go nowhere rather than to the default route.
pub fn network_guards(networks: &[&NetworkSpec], default_cidr: IpNet) -> Vec<Rule> {
    let subnets = networks.iter().flat_map(|n| n.subnets.iter().copied());
    muslin_model::network::guarded_ranges(subnets, default_cidr)
        .into_iter()
        .map(|r| Rule {
            dst: Some(r),
            unreachable: true,
            ..rule(Family::of(&r.addr()), GUARD_PRIORITY, 0)
        })
        .collect()
}

/// The name service's device: it holds each served network's resolver
/// address (`dns::listen_address`), local to the host and reached by the
/// networks' containers through their gateway.
pub const DNS_DEV: &str = "msl-dns";

/// The kernel objects of the name service listening at `addresses`.
pub fn dns_state(addresses: &[std::net::Ipv4Addr]) -> HostState {
    HostState {
        links: vec![Link {
            name: DNS_DEV.into(),
            kind: LinkKind::Other(None),
            mtu: None,
            mac: None,
            up: true,
            group: None,
        }],
        addresses: addresses
            .iter()
            .map(|a| Address {
                link: DNS_DEV.into(),
                net: IpNet::from(std::net::IpAddr::from(*a)),
            })
            .collect(),
        ..Default::default()
    }
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
    let mut tables = vec![MAIN_TABLE, POD_TABLE, WG_TABLE];
    tables.extend(networks.iter().flat_map(|n| [n.table(), n.pod_table()]));
    Ownership {
        protocol: ROUTE_PROTOCOL,
        tables,
        foreign_dev: is_pod_veth,
        rules: vec![
            (POD_RULE_PRIORITY, POD_TABLE..=POD_TABLE),
            (WG_RULE_PRIORITY, WG_TABLE..=WG_TABLE),
            (MARK_RULE_PRIORITY, ours.clone()),
            (REACH_RULE_PRIORITY, ours),
            (NET_POD_RULE_PRIORITY, pods),
            (NET_REFUSE_PRIORITY, 0..=0),
            (GUARD_PRIORITY, 0..=0),
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
            src: r.src,
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
