//! Plumbing of one attachment: a veth pair whose container end carries the
//! container's host-prefix addresses and, per family, a default route via a
//! link-local gateway that the host end stands for.

use std::collections::HashSet;
use std::fs::File;
use std::net::IpAddr;

use ipnet::IpNet;
use std::os::fd::AsRawFd;

use muslin_model::plumbing::{default_route, gateway_for, AttachmentPlan};
use muslin_model::ROUTE_PROTOCOL;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};

use crate::error::errno;
use crate::netlink::protocol;
use crate::{KernelError, Netlink};

/// One way in which an attachment differs from its plan.
pub type CheckProblem = String;

fn host_route(address: IpNet, index: u32) -> rtnetlink::packet_route::route::RouteMessage {
    RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(address.addr(), address.prefix_len())
        .expect("address and prefix come from one IpNet")
        .output_interface(index)
        .scope(RouteScope::Link)
        .protocol(protocol(ROUTE_PROTOCOL))
        .build()
}

/// Creates the attachment. On any failure everything made so far is removed
/// (deleting the host end of a veth removes both ends and their routes).
pub async fn attach(host: &Netlink, plan: &AttachmentPlan, ns: &File) -> Result<(), KernelError> {
    // A leftover from an ADD of this same attachment that crashed half-way;
    // the name is derived from the attachment key, so it is ours to remove.
    host.delete_link(&plan.host_ifname).await?;

    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(plan.container_ifname.clone())
        .address(plan.container_mac.to_vec())
        .mtu(plan.mtu)
        .setns_by_fd(ns.as_raw_fd())
        .build();
    let veth = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
        .name(plan.host_ifname.clone())
        .address(plan.host_mac.to_vec())
        .mtu(plan.mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    if let Err(e) = host.handle.link().add(veth).execute().await {
        // EEXIST here can only be the container-side name: the host name
        // was freed above.
        return Err(if errno(&e) == Some(libc::EEXIST) {
            KernelError::InterfaceExists(plan.container_ifname.clone())
        } else {
            KernelError::netlink(format!("creating veth {}", plan.host_ifname))(e)
        });
    }
    let res = configure(host, plan, ns).await;
    if res.is_err() {
        if let Err(e) = host.delete_link(&plan.host_ifname).await {
            tracing::warn!(link = %plan.host_ifname, cause = %e, "rollback could not delete veth");
        }
    }
    res
}

async fn configure(host: &Netlink, plan: &AttachmentPlan, ns: &File) -> Result<(), KernelError> {
    let c = Netlink::in_netns(ns)?;
    let cif = &plan.container_ifname;
    let idx = c
        .link(cif)
        .await?
        .ok_or_else(|| KernelError::Io {
            what: format!("container interface {cif} vanished after creation"),
            source: std::io::ErrorKind::NotFound.into(),
        })?
        .index;
    for addr in &plan.addresses {
        c.handle
            .address()
            .add(idx, addr.addr(), addr.prefix_len())
            .execute()
            .await
            .map_err(KernelError::netlink(format!("adding {addr} to {cif}")))?;
    }
    c.handle
        .link()
        .set(LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await
        .map_err(KernelError::netlink(format!("setting {cif} up")))?;
    for gateway in gateways(plan) {
        c.handle
            .neighbours()
            .add(idx, gateway)
            .link_layer_address(&plan.host_mac)
            .state(NeighbourState::Permanent)
            .execute()
            .await
            .map_err(KernelError::netlink(format!(
                "adding gateway neighbour on {cif}"
            )))?;
        let full = if gateway.is_ipv4() { 32 } else { 128 };
        let gw_route = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(gateway, full)
            .expect("host prefix")
            .output_interface(idx)
            .scope(RouteScope::Link)
            .protocol(protocol(ROUTE_PROTOCOL))
            .build();
        c.handle
            .route()
            .add(gw_route)
            .execute()
            .await
            .map_err(KernelError::netlink(format!(
                "adding gateway route on {cif}"
            )))?;
        let dflt = default_route(gateway);
        let default = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dflt.addr(), 0)
            .expect("default prefix")
            .gateway(gateway)
            .expect("same family")
            .output_interface(idx)
            .protocol(protocol(ROUTE_PROTOCOL))
            .build();
        c.handle
            .route()
            .add(default)
            .execute()
            .await
            .map_err(KernelError::netlink(format!(
                "adding default route on {cif}"
            )))?;
    }

    let hidx = host
        .link(&plan.host_ifname)
        .await?
        .ok_or_else(|| KernelError::Io {
            what: format!(
                "host interface {} vanished after creation",
                plan.host_ifname
            ),
            source: std::io::ErrorKind::NotFound.into(),
        })?
        .index;
    host.handle
        .link()
        .set(LinkUnspec::new_with_index(hidx).up().build())
        .execute()
        .await
        .map_err(KernelError::netlink(format!(
            "setting {} up",
            plan.host_ifname
        )))?;
    for addr in &plan.addresses {
        host.handle
            .route()
            .add(host_route(*addr, hidx))
            .replace()
            .execute()
            .await
            .map_err(KernelError::netlink(format!("adding host route to {addr}")))?;
    }
    Ok(())
}

/// One gateway per family the plan's addresses use.
fn gateways(plan: &AttachmentPlan) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = plan
        .addresses
        .iter()
        .map(|a| gateway_for(a.addr()))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Removes the attachment's veth pair if present; returns whether it was.
pub async fn detach(host: &Netlink, host_ifname: &str) -> Result<bool, KernelError> {
    host.delete_link(host_ifname).await
}

/// Our host routes as (destination, interface index): read once per
/// reconciliation, so that routes in place cost no write.
pub async fn host_routes(host: &Netlink) -> Result<HashSet<(IpNet, u32)>, KernelError> {
    let mut v = host.routes(false).await?;
    v.extend(host.routes(true).await?);
    Ok(v.into_iter()
        .filter(|r| r.protocol == ROUTE_PROTOCOL && r.gateway.is_none())
        .filter_map(|r| Some((r.dst, r.oif?)))
        .collect())
}

/// Restores the host route of an attachment whose veth exists (drift repair
/// after someone deleted it) unless `present` (from [`host_routes`]) shows
/// it in place. Returns false when the veth itself is gone.
pub async fn ensure_host_route(
    host: &Netlink,
    plan: &AttachmentPlan,
    present: &HashSet<(IpNet, u32)>,
) -> Result<bool, KernelError> {
    let Some(link) = host.link(&plan.host_ifname).await? else {
        return Ok(false);
    };
    for addr in &plan.addresses {
        if present.contains(&(*addr, link.index)) {
            continue;
        }
        crate::writes::wrote();
        host.handle
            .route()
            .add(host_route(*addr, link.index))
            .replace()
            .execute()
            .await
            .map_err(KernelError::netlink(format!(
                "restoring host route to {addr}"
            )))?;
    }
    Ok(true)
}

/// Compares the kernel with the plan; an empty list means all is in place.
pub async fn check(
    host: &Netlink,
    plan: &AttachmentPlan,
    ns: &File,
) -> Result<Vec<CheckProblem>, KernelError> {
    let mut problems = Vec::new();
    match host.link(&plan.host_ifname).await? {
        None => problems.push(format!("host interface {} is missing", plan.host_ifname)),
        Some(l) => {
            if !l.up {
                problems.push(format!("host interface {} is down", l.name));
            }
            for addr in &plan.addresses {
                let ok = host.routes(addr.addr().is_ipv6()).await?.iter().any(|r| {
                    r.dst == *addr && r.oif == Some(l.index) && r.protocol == ROUTE_PROTOCOL
                });
                if !ok {
                    problems.push(format!("host route to {addr} via {} is missing", l.name));
                }
            }
        }
    }
    let c = Netlink::in_netns(ns)?;
    let cif = &plan.container_ifname;
    let Some(l) = c.link(cif).await? else {
        problems.push(format!("container interface {cif} is missing"));
        return Ok(problems);
    };
    if !l.up {
        problems.push(format!("container interface {cif} is down"));
    }
    let present = c.addresses(l.index).await?;
    for addr in plan.addresses.iter().filter(|a| !present.contains(a)) {
        problems.push(format!("address {addr} is missing on {cif}"));
    }
    let neigh = c.permanent_neighbours(l.index).await?;
    for gateway in gateways(plan) {
        let routes = c.routes(gateway.is_ipv6()).await?;
        if !routes.iter().any(|r| {
            r.dst.prefix_len() == 0 && r.gateway == Some(gateway) && r.oif == Some(l.index)
        }) {
            problems.push(format!("default route via {gateway} on {cif} is missing"));
        }
        if !neigh
            .iter()
            .any(|(ip, mac)| *ip == gateway && mac[..] == plan.host_mac[..])
        {
            problems.push(format!("gateway neighbour {gateway} on {cif} is missing"));
        }
    }
    Ok(problems)
}
