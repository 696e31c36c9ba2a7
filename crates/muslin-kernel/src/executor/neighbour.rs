//! Permanent neighbours, and the FDB entries of VXLAN devices.

use std::net::IpAddr;

use muslin_plan::object::{Fdb, Neighbour};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::AddressFamily;

use super::apply::Conn;
use super::counters::netlink_write;
use super::error::errno;
use crate::KernelError;

pub(super) async fn replace(nl: &Conn, n: &Neighbour) -> Result<(), KernelError> {
    let idx = nl.index(&n.link).await?;
    nl.handle
        .neighbours()
        .add(idx, n.ip)
        .link_layer_address(&n.mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(KernelError::netlink(format!("adding neighbour {n}")))?;
    netlink_write();
    Ok(())
}

fn address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }
}

fn gone_ok(res: Result<(), rtnetlink::Error>, what: String) -> Result<(), KernelError> {
    match res {
        Ok(()) => {
            netlink_write();
            Ok(())
        }
        Err(e) if matches!(errno(&e), Some(libc::ENOENT) | Some(libc::ESRCH)) => Ok(()),
        Err(e) => Err(KernelError::netlink(what)(e)),
    }
}

pub(super) async fn delete(nl: &Conn, n: &Neighbour) -> Result<(), KernelError> {
    let Some(l) = nl.link(&n.link).await? else {
        return Ok(());
    };
    let mut m = NeighbourMessage::default();
    m.header.family = if n.ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    m.header.ifindex = l.index;
    m.attributes
        .push(NeighbourAttribute::Destination(address(n.ip)));
    gone_ok(
        nl.handle.neighbours().del(m).execute().await,
        format!("removing neighbour {n}"),
    )
}

pub(super) async fn replace_fdb(nl: &Conn, e: &Fdb) -> Result<(), KernelError> {
    let idx = nl.index(&e.link).await?;
    nl.handle
        .neighbours()
        .add_bridge(idx, &e.mac)
        .destination(e.dst)
        .flags(NeighbourFlags::Own)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(KernelError::netlink(format!("adding FDB entry {e}")))?;
    netlink_write();
    Ok(())
}

pub(super) async fn delete_fdb(nl: &Conn, e: &Fdb) -> Result<(), KernelError> {
    let Some(l) = nl.link(&e.link).await? else {
        return Ok(());
    };
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = l.index;
    m.header.flags = NeighbourFlags::Own;
    m.header.state = NeighbourState::Permanent;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(e.mac.to_vec()));
    m.attributes
        .push(NeighbourAttribute::Destination(address(e.dst)));
    gone_ok(
        nl.handle.neighbours().del(m).execute().await,
        format!("removing FDB entry {e}"),
    )
}
