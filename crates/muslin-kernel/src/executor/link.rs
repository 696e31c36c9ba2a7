//! Links: veth pairs (the peer straight into a container's namespace),
//! VXLAN devices, and their MTU, MAC and state.

use std::net::IpAddr;
use std::os::fd::AsRawFd;

use muslin_plan::object::{Link, LinkKind, Mac, Ns, VethPeer, Vxlan};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, VxlanDf};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVxlan};

use super::apply::Conn;
use super::counters::netlink_write;
use super::error::errno;
use crate::KernelError;

pub(super) async fn create(nl: &Conn, l: &Link) -> Result<(), KernelError> {
    match &l.kind {
        LinkKind::Veth(Some(peer)) => veth(nl, l, peer).await,
        LinkKind::Vxlan(v) => vxlan(nl, l, v).await,
        LinkKind::Other(None) => holder(nl, l).await,
        other => Err(KernelError::Io {
            what: format!("creating a link of kind {other:?} is not supported"),
            source: std::io::ErrorKind::Unsupported.into(),
        }),
    }
}

/// A device that only holds addresses (`LinkKind::Other(None)`): a dummy,
/// or, on a kernel built without dummy devices, a bridge without ports
/// (its addresses are the host's all the same).
async fn holder(nl: &Conn, l: &Link) -> Result<(), KernelError> {
    let build = |kind: InfoKind| {
        let mut b = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(kind).name(l.name.clone());
        if let Some(m) = l.mtu {
            b = b.mtu(m);
        }
        if let Some(g) = l.group {
            b = b.link_group(g);
        }
        if l.up {
            b = b.up();
        }
        b.build()
    };
    let mut res = nl.handle.link().add(build(InfoKind::Dummy)).execute().await;
    let mut kind = "dummy";
    if matches!(&res, Err(e) if matches!(errno(e), Some(libc::EOPNOTSUPP) | Some(libc::EINVAL))) {
        kind = "bridge";
        res = nl
            .handle
            .link()
            .add(build(InfoKind::Bridge))
            .execute()
            .await;
    }
    res.map_err(KernelError::netlink(format!("creating {}", l.name)))?;
    netlink_write();
    tracing::info!(link = %l.name, kind, "created an address-holding device");
    Ok(())
}

async fn veth(nl: &Conn, l: &Link, peer: &VethPeer) -> Result<(), KernelError> {
    let Ns::Container(path) = &peer.ns else {
        return Err(KernelError::Io {
            what: "a veth peer stays in the host only in tests".into(),
            source: std::io::ErrorKind::Unsupported.into(),
        });
    };
    let ns = nl.netns(path)?;
    let p = LinkMessageBuilder::<LinkUnspec>::new()
        .name(peer.name.clone())
        .address(peer.mac.to_vec())
        .mtu(peer.mtu)
        .setns_by_fd(ns.as_raw_fd())
        .build();
    let mut b = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
        .name(l.name.clone())
        .set_info_data(InfoData::Veth(InfoVeth::Peer(p)));
    if let Some(m) = l.mac {
        b = b.address(m.to_vec());
    }
    if let Some(m) = l.mtu {
        b = b.mtu(m);
    }
    if let Some(g) = l.group {
        b = b.link_group(g);
    }
    match nl.handle.link().add(b.build()).execute().await {
        Ok(()) => {
            netlink_write();
            Ok(())
        }
        // The host name is free (a leftover is deleted first), so EEXIST
        // can only be the container-side name.
        Err(e) if errno(&e) == Some(libc::EEXIST) => {
            Err(KernelError::InterfaceExists(peer.name.clone()))
        }
        Err(e) => Err(KernelError::netlink(format!("creating veth {}", l.name))(e)),
    }
}

/// Learning is off: the agent programs every neighbour and FDB entry. DF
/// is set on outer packets so a path with a smaller MTU is found by probes
/// rather than by silent fragmentation; a kernel without the setting
/// (before 5.0) gets the device without it.
async fn vxlan(nl: &Conn, l: &Link, v: &Vxlan) -> Result<(), KernelError> {
    let underlay = match &v.underlay {
        Some(u) => Some(nl.index(u).await?),
        None => None,
    };
    let local = match v.local {
        Some(IpAddr::V4(a)) => Some(a),
        None => None,
        Some(IpAddr::V6(_)) => {
            return Err(KernelError::Io {
                what: "VXLAN over an IPv6 underlay is not supported yet".into(),
                source: std::io::ErrorKind::Unsupported.into(),
            })
        }
    };
    let build = |df: bool| {
        let mut b = LinkVxlan::new(&l.name, v.vni).port(v.port).learning(false);
        if let Some(u) = underlay {
            b = b.dev(u);
        }
        if let Some(a) = local {
            b = b.local(a);
        }
        if let Some(m) = l.mtu {
            b = b.mtu(m);
        }
        if let Some(m) = l.mac {
            b = b.address(m.to_vec());
        }
        if df && v.df == Some(true) {
            b = b.df(VxlanDf::Set);
        }
        if let Some(g) = l.group {
            b = b.append_extra_attribute(LinkAttribute::Group(g));
        }
        if l.up {
            b = b.up();
        }
        b.build()
    };
    let mut res = nl.handle.link().add(build(true)).execute().await;
    if v.df == Some(true)
        && matches!(&res, Err(e) if matches!(errno(e), Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)))
    {
        tracing::warn!("this kernel cannot set DF on VXLAN packets: a path with a smaller MTU relies on the pinned route MTUs alone");
        res = nl.handle.link().add(build(false)).execute().await;
    }
    res.map_err(KernelError::netlink(format!("creating {}", l.name)))?;
    netlink_write();
    tracing::info!(link = %l.name, vni = v.vni, port = v.port, local = ?v.local, underlay = ?v.underlay, mtu = ?l.mtu, "created the VXLAN device");
    Ok(())
}

pub(super) async fn set(
    nl: &Conn,
    name: &str,
    mtu: Option<u32>,
    mac: Option<Mac>,
    up: bool,
    group: Option<u32>,
) -> Result<(), KernelError> {
    let idx = nl.index(name).await?;
    let mut m = LinkUnspec::new_with_index(idx);
    if let Some(g) = group {
        m = m.link_group(g);
    }
    if let Some(v) = mtu {
        m = m.mtu(v);
    }
    if let Some(v) = mac {
        m = m.address(v.to_vec());
    }
    if up {
        m = m.up();
    }
    nl.handle
        .link()
        .set(m.build())
        .execute()
        .await
        .map_err(KernelError::netlink(format!("configuring {name}")))?;
    netlink_write();
    Ok(())
}

/// A link already gone is not an error.
pub(super) async fn delete(nl: &Conn, name: &str) -> Result<(), KernelError> {
    nl.forget(name);
    if nl.delete_link(name).await? {
        netlink_write();
    }
    Ok(())
}
