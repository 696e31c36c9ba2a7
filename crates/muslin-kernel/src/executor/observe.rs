//! What a namespace has, as `muslin-plan` values: indexes resolved to
//! names, so the pure diff can compare by name.

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use muslin_plan::object::{
    Address, Family, Fdb, HostState, Link, LinkKind, Mac, Neighbour, Ns, Route, Rule, Scope, Vxlan,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::rule::{RuleAttribute, RuleMessage};
use rtnetlink::packet_route::AddressFamily;

use super::netlink::Netlink;
use super::{counters, firewall, nft, Answer, Query};
use crate::KernelError;

pub(super) async fn answer(host: &Netlink, q: Query) -> Result<Answer, KernelError> {
    counters::observed();
    match q {
        Query::Namespace(Ns::Host) => Ok(Answer::Namespace(namespace(host).await?)),
        Query::Namespace(Ns::Container(p)) => {
            let f = super::open_netns(&p)?;
            let nl = Netlink::in_netns(&f)?;
            Ok(Answer::Namespace(namespace(&nl).await?))
        }
        Query::Masquerade(fam) => Ok(Answer::Masquerade(nft::observe(fam).await?)),
        Query::PolicyTable => Ok(Answer::PolicyTable(nft::observe_policy().await?)),
        Query::Firewall => Ok(Answer::Firewall(firewall::observe().await?)),
        Query::FirewallLegacy => Ok(Answer::FirewallLegacy(firewall::observe_legacy().await?)),
        Query::NftGeneration => Ok(Answer::NftGeneration(nft::generation().await?)),
        Query::Netns(p) => super::open_netns(&p).map(|_| Answer::Netns),
    }
}

fn mac(v: &Option<Vec<u8>>) -> Option<Mac> {
    v.as_deref().and_then(|m| m.try_into().ok())
}

pub(super) async fn namespace(nl: &Netlink) -> Result<HostState, KernelError> {
    let raw = nl.links().await?;
    let names: BTreeMap<u32, String> = raw.iter().map(|l| (l.index, l.name.clone())).collect();
    let name = |i: u32| names.get(&i).cloned();
    let links = raw
        .iter()
        .map(|l| Link {
            name: l.name.clone(),
            kind: match (&l.vxlan, l.kind.as_deref()) {
                (Some(v), _) => LinkKind::Vxlan(Vxlan {
                    vni: v.vni,
                    port: v.port,
                    local: v.local.map(IpAddr::V4),
                    underlay: v.underlay.and_then(name),
                    df: v.df,
                }),
                (None, Some("veth")) => LinkKind::Veth(None),
                (None, k) => LinkKind::Other(k.map(str::to_string)),
            },
            mtu: l.mtu,
            mac: mac(&l.mac),
            up: l.up,
            group: Some(l.group),
        })
        .collect();
    let addresses = nl
        .all_addresses()
        .await?
        .into_iter()
        .filter_map(|(i, net)| {
            Some(Address {
                link: name(i)?,
                net,
            })
        })
        .collect();
    let mut routes = Vec::new();
    for v6 in [false, true] {
        for r in nl.routes(v6).await? {
            routes.push(Route {
                table: r.table,
                dst: r.dst,
                via: r.gateway,
                dev: r.oif.and_then(name),
                onlink: r.onlink,
                mtu: r.mtu,
                src: r.src,
                scope: if r.scope_link {
                    Scope::Link
                } else {
                    Scope::Universe
                },
                protocol: r.protocol,
            });
        }
    }
    let mut rules = Vec::new();
    for v in [rtnetlink::IpVersion::V4, rtnetlink::IpVersion::V6] {
        let msgs: Vec<RuleMessage> = nl
            .handle
            .rule()
            .get(v)
            .execute()
            .try_collect()
            .await
            .map_err(KernelError::netlink("listing rules"))?;
        rules.extend(msgs.iter().filter_map(rule_of));
    }
    let msgs: Vec<NeighbourMessage> = nl
        .handle
        .neighbours()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(KernelError::netlink("listing neighbours"))?;
    let neighbours = msgs
        .iter()
        .filter(|m| m.header.state == NeighbourState::Permanent)
        .filter_map(|m| {
            let (ip, lla) = neighbour_of(m);
            Some(Neighbour {
                link: name(m.header.ifindex)?,
                ip: ip?,
                mac: lla?,
            })
        })
        .collect();
    let vxlans: Vec<u32> = raw
        .iter()
        .filter(|l| l.vxlan.is_some())
        .map(|l| l.index)
        .collect();
    let mut fdb = Vec::new();
    if !vxlans.is_empty() {
        let msgs: Vec<NeighbourMessage> = nl
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute()
            .try_collect()
            .await
            .map_err(KernelError::netlink("listing FDB entries"))?;
        fdb = msgs
            .iter()
            .filter(|m| vxlans.contains(&m.header.ifindex))
            .filter_map(|m| {
                let (ip, lla) = neighbour_of(m);
                Some(Fdb {
                    link: name(m.header.ifindex)?,
                    mac: lla?,
                    dst: ip?,
                })
            })
            .collect();
    }
    Ok(HostState {
        links,
        addresses,
        routes,
        rules,
        neighbours,
        fdb,
    })
}

fn neighbour_of(m: &NeighbourMessage) -> (Option<IpAddr>, Option<Mac>) {
    let mut ip = None;
    let mut lla = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => ip = Some(IpAddr::V4(*d)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(d)) => {
                ip = Some(IpAddr::V6(*d))
            }
            // Bridge-family messages carry the address as raw bytes.
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                ip = match b.len() {
                    4 => <[u8; 4]>::try_from(&b[..]).ok().map(IpAddr::from),
                    16 => <[u8; 16]>::try_from(&b[..]).ok().map(IpAddr::from),
                    _ => None,
                }
            }
            NeighbourAttribute::LinkLayerAddress(l) => lla = l.as_slice().try_into().ok(),
            _ => {}
        }
    }
    (ip, lla)
}

pub(super) fn rule_of(m: &RuleMessage) -> Option<Rule> {
    let family = match m.header.family {
        AddressFamily::Inet => Family::V4,
        AddressFamily::Inet6 => Family::V6,
        _ => return None,
    };
    let mut priority = 0;
    let mut table = u32::from(m.header.table);
    let (mut src, mut dst, mut mark, mut mask, mut iif) = (None, None, None, None, None);
    for a in &m.attributes {
        match a {
            RuleAttribute::Priority(p) => priority = *p,
            RuleAttribute::Table(t) => table = *t,
            RuleAttribute::Source(ip) => src = IpNet::new(*ip, m.header.src_len).ok(),
            RuleAttribute::Destination(ip) => dst = IpNet::new(*ip, m.header.dst_len).ok(),
            RuleAttribute::FwMark(v) => mark = Some(*v),
            RuleAttribute::FwMask(v) => mask = Some(*v),
            RuleAttribute::Iifname(s) => iif = Some(s.clone()),
            _ => {}
        }
    }
    Some(Rule {
        family,
        priority,
        src,
        dst,
        fwmark: mark.map(|m| (m, mask.unwrap_or(u32::MAX))),
        iif,
        unreachable: m.header.action == rtnetlink::packet_route::rule::RuleAction::Unreachable,
        table,
    })
}
