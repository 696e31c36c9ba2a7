//! One attachment in kernel objects: the steps that create it, the step
//! that undoes a half-made one, and what CHECK compares against.

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use muslin_model::naming::format_mac;
use muslin_model::plumbing::{default_route, gateway_for, AttachmentPlan};
use muslin_model::ROUTE_PROTOCOL;

use crate::change::{Change, Step};
use crate::object::{Address, HostState, Link, LinkKind, Neighbour, Ns, Route, Scope, VethPeer};

/// The container's addresses, at most one per family.
fn addresses(p: &AttachmentPlan) -> Vec<IpNet> {
    p.addresses.clone()
}

/// One gateway per family the container has an address in.
fn gateways(p: &AttachmentPlan) -> Vec<IpAddr> {
    let mut g: Vec<IpAddr> = p.addresses.iter().map(|a| gateway_for(a.addr())).collect();
    g.dedup();
    g
}

fn host_prefix(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// The host's route to one of the container's addresses.
pub fn host_route(p: &AttachmentPlan, address: IpNet) -> Route {
    Route {
        table: p.place.table(),
        dst: address,
        via: None,
        dev: Some(p.host_ifname.clone()),
        onlink: false,
        mtu: None,
        src: None,
        scope: Scope::Link,
        protocol: ROUTE_PROTOCOL,
    }
}

/// The container's side: its interface, addresses, the static neighbour
/// that stands for the gateway, and its routes.
pub fn container_state(p: &AttachmentPlan) -> HostState {
    let cif = &p.container_ifname;
    let mut s = HostState {
        links: vec![Link {
            name: cif.clone(),
            kind: LinkKind::Veth(None),
            mtu: Some(p.mtu),
            mac: Some(p.container_mac),
            up: true,
            group: None,
        }],
        ..Default::default()
    };
    if !p.place.routes.is_empty() {
        // A further interface of the container: its network's subnets
        // through it, on-link to the gateway, whose host route the first
        // interface holds.
        for gw in gateways(p) {
            s.neighbours.push(Neighbour {
                link: cif.clone(),
                ip: gw,
                mac: p.host_mac,
            });
        }
        for a in addresses(p) {
            s.addresses.push(Address {
                link: cif.clone(),
                net: a,
            });
        }
        for dst in &p.place.routes {
            s.routes.push(Route {
                table: muslin_model::dataplane::MAIN_TABLE,
                dst: *dst,
                via: Some(gateway_for(dst.addr())),
                dev: Some(cif.clone()),
                onlink: true,
                mtu: None,
                src: None,
                scope: Scope::Universe,
                protocol: ROUTE_PROTOCOL,
            });
        }
        return s;
    }
    for a in addresses(p) {
        s.addresses.push(Address {
            link: cif.clone(),
            net: a,
        });
    }
    for gw in gateways(p) {
        s.neighbours.push(Neighbour {
            link: cif.clone(),
            ip: gw,
            mac: p.host_mac,
        });
        s.routes.push(Route {
            table: muslin_model::dataplane::MAIN_TABLE,
            dst: host_prefix(gw),
            via: None,
            dev: Some(cif.clone()),
            onlink: false,
            mtu: None,
            src: None,
            scope: Scope::Link,
            protocol: ROUTE_PROTOCOL,
        });
    }
    for a in addresses(p) {
        s.routes.push(Route {
            table: muslin_model::dataplane::MAIN_TABLE,
            dst: default_route(a.addr()),
            via: Some(gateway_for(a.addr())),
            dev: Some(cif.clone()),
            onlink: false,
            mtu: None,
            src: None,
            scope: Scope::Universe,
            protocol: ROUTE_PROTOCOL,
        });
    }
    s
}

/// The host's side: the veth end, up, and a route to each address.
pub fn host_state(p: &AttachmentPlan) -> HostState {
    HostState {
        links: vec![Link {
            name: p.host_ifname.clone(),
            kind: LinkKind::Veth(None),
            mtu: Some(p.mtu),
            mac: Some(p.host_mac),
            up: true,
            group: p.place.group,
        }],
        routes: addresses(p).into_iter().map(|a| host_route(p, a)).collect(),
        ..Default::default()
    }
}

/// Creating the attachment, in order. The first step removes a leftover
/// of this same attachment from an ADD that crashed half-way: the name is
/// derived from the attachment key, so it is ours.
pub fn create(p: &AttachmentPlan, netns: &Path) -> Vec<Step> {
    let c = Ns::Container(netns.to_path_buf());
    let inside = |change| Step {
        ns: c.clone(),
        change,
    };
    let mut steps = vec![
        Step::host(Change::DeleteLink(p.host_ifname.clone())),
        Step::host(Change::CreateLink(Link {
            name: p.host_ifname.clone(),
            kind: LinkKind::Veth(Some(VethPeer {
                name: p.container_ifname.clone(),
                mac: p.container_mac,
                mtu: p.mtu,
                ns: c.clone(),
            })),
            mtu: Some(p.mtu),
            mac: Some(p.host_mac),
            up: false,
            group: p.place.group,
        })),
    ];
    if p.place.group.is_some() {
        // The network's firewall mark picks its routing table; strict
        // rp_filter must see that mark too, or it checks the source
        // against the main table's routes, where another network's
        // container may hold the same address.
        steps.push(Step::host(Change::Sysctl {
            key: format!("net/ipv4/conf/{}/src_valid_mark", p.host_ifname),
            value: "1".into(),
        }));
    }
    let cs = container_state(p);
    for a in cs.addresses {
        steps.push(inside(Change::AddAddress(a)));
    }
    steps.push(inside(Change::SetLink {
        name: p.container_ifname.clone(),
        mtu: None,
        mac: None,
        up: true,
        group: None,
    }));
    for n in cs.neighbours {
        steps.push(inside(Change::ReplaceNeighbour(n)));
    }
    for r in cs.routes {
        steps.push(inside(Change::ReplaceRoute(r)));
    }
    steps.push(Step::host(Change::SetLink {
        name: p.host_ifname.clone(),
        mtu: None,
        mac: None,
        up: true,
        group: None,
    }));
    for a in addresses(p) {
        steps.push(Step::host(Change::ReplaceRoute(host_route(p, a))));
    }
    steps
}

/// Undoing a failed [`create`]: deleting the host end removes both ends
/// and every route through them.
pub fn rollback(p: &AttachmentPlan) -> Vec<Step> {
    vec![Step::host(Change::DeleteLink(p.host_ifname.clone()))]
}

/// How the attachment differs from the plan, in an operator's words;
/// empty when all is in place. `host` and `container` are observed.
pub fn check(p: &AttachmentPlan, host: &HostState, container: &HostState) -> Vec<String> {
    let mut problems = Vec::new();
    match host.link(&p.host_ifname) {
        None => problems.push(format!("host interface {} is missing", p.host_ifname)),
        Some(l) => {
            if !l.up {
                problems.push(format!("host interface {} is down", l.name));
            }
            for a in addresses(p) {
                let ok = host.routes.iter().any(|r| {
                    r.dst == a
                        && r.table == p.place.table()
                        && r.dev.as_deref() == Some(&p.host_ifname)
                        && r.protocol == ROUTE_PROTOCOL
                });
                if !ok {
                    problems.push(format!("host route to {a} via {} is missing", l.name));
                }
            }
        }
    }
    let cif = &p.container_ifname;
    let Some(l) = container.link(cif) else {
        problems.push(format!("container interface {cif} is missing"));
        return problems;
    };
    if !l.up {
        problems.push(format!("container interface {cif} is down"));
    }
    for a in addresses(p) {
        if !container
            .addresses
            .iter()
            .any(|x| x.link == *cif && x.net == a)
        {
            problems.push(format!("address {a} is missing on {cif}"));
        }
    }
    if !p.place.routes.is_empty() {
        for dst in &p.place.routes {
            if !container
                .routes
                .iter()
                .any(|r| r.dst == *dst && r.dev.as_deref() == Some(cif))
            {
                problems.push(format!("route to {dst} on {cif} is missing"));
            }
        }
        return problems;
    }
    // The IPv4 gateway lies in no subnet of the container, so the default
    // route can be put back only while this route is there.
    for gw in gateways(p) {
        let to_gateway = host_prefix(gw);
        if !container
            .routes
            .iter()
            .any(|r| r.dst == to_gateway && r.dev.as_deref() == Some(cif))
        {
            problems.push(format!(
                "route to the gateway {to_gateway} on {cif} is missing"
            ));
        }
    }
    for a in addresses(p) {
        let default = default_route(a.addr());
        let gw = gateway_for(a.addr());
        if !container
            .routes
            .iter()
            .any(|r| r.dst == default && r.via == Some(gw) && r.dev.as_deref() == Some(cif))
        {
            problems.push(format!("default route via {gw} on {cif} is missing"));
        }
    }
    for gw in gateways(p) {
        if !container
            .neighbours
            .iter()
            .any(|n| n.link == *cif && n.ip == gw && n.mac == p.host_mac)
        {
            problems.push(format!(
                "gateway neighbour {gw} ({}) on {cif} is missing",
                format_mac(&p.host_mac)
            ));
        }
    }
    problems
}
