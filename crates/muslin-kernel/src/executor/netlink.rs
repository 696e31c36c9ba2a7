use std::fs::File;
use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::Handle;

use super::error::errno;
use super::netns::socket_in;
use crate::KernelError;

/// A netlink connection bound to one namespace, with the few verbs Muslin
/// needs. The connection task ends when the last clone is dropped.
#[derive(Clone)]
pub struct Netlink {
    pub(crate) handle: Handle,
}

/// The subset of a route Muslin reasons about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub protocol: u8,
    pub mtu: Option<u32>,
    pub src: Option<IpAddr>,
    pub onlink: bool,
    pub table: u32,
    pub scope_link: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub up: bool,
    pub mtu: Option<u32>,
    /// `veth`, `bridge`, `vxlan`, ...
    pub kind: Option<String>,
    pub mac: Option<Vec<u8>>,
    pub vxlan: Option<VxlanInfo>,
    pub group: u32,
}

/// The parameters of a VXLAN device that only a new device can change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: u32,
    pub port: u16,
    pub local: Option<std::net::Ipv4Addr>,
    pub underlay: Option<u32>,
    /// Whether outer packets carry DF; `None` on kernels that do not say.
    pub df: Option<bool>,
}

impl Netlink {
    /// A connection in the calling process's namespace.
    pub fn current() -> Result<Self, KernelError> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(KernelError::io("opening a netlink socket"))?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// A connection inside the namespace `ns`.
    pub fn in_netns(ns: &File) -> Result<Self, KernelError> {
        let (conn, handle, _) = rtnetlink::from_socket(socket_in(ns)?);
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    pub async fn link(&self, name: &str) -> Result<Option<LinkInfo>, KernelError> {
        let res = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_next()
            .await;
        match res {
            Ok(Some(m)) => Ok(Some(link_info(&m))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(KernelError::netlink(format!("looking up link {name}"))(e)),
        }
    }

    pub async fn links(&self) -> Result<Vec<LinkInfo>, KernelError> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(KernelError::netlink("listing links"))?;
        Ok(msgs.iter().map(link_info).collect())
    }

    /// Deletes a link; a link that is already gone is not an error.
    pub async fn delete_link(&self, name: &str) -> Result<bool, KernelError> {
        let Some(l) = self.link(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(l.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(KernelError::netlink(format!("deleting link {name}"))(e)),
        }
    }

    /// Every address of every link, as (link index, address): one dump,
    /// however many links (pod veths) the host has.
    pub async fn all_addresses(&self) -> Result<Vec<(u32, IpNet)>, KernelError> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(KernelError::netlink("listing addresses"))?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => IpNet::new(*ip, m.header.prefix_len)
                        .ok()
                        .map(|n| (m.header.index, n)),
                    _ => None,
                })
            })
            .collect())
    }

    pub async fn routes(&self, v6: bool) -> Result<Vec<RouteInfo>, KernelError> {
        let filter = if v6 {
            rtnetlink::RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()
        } else {
            rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()
        };
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(filter)
            .execute()
            .try_collect()
            .await
            .map_err(KernelError::netlink("listing routes"))?;
        Ok(msgs.iter().filter_map(route_info).collect())
    }
}

fn link_info(m: &LinkMessage) -> LinkInfo {
    use rtnetlink::packet_route::link::{InfoData, InfoVxlan, LinkInfo as Li};
    let mut l = LinkInfo {
        index: m.header.index,
        name: String::new(),
        up: m.header.flags.contains(LinkFlags::Up),
        mtu: None,
        kind: None,
        mac: None,
        vxlan: None,
        group: 0,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Group(g) => l.group = *g,
            LinkAttribute::Mtu(v) => l.mtu = Some(*v),
            LinkAttribute::Address(mac) => l.mac = Some(mac.clone()),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        Li::Kind(k) => l.kind = Some(k.to_string()),
                        Li::Data(InfoData::Vxlan(v)) => {
                            let mut x = VxlanInfo {
                                vni: 0,
                                port: 0,
                                local: None,
                                underlay: None,
                                df: None,
                            };
                            for a in v {
                                match a {
                                    InfoVxlan::Id(i) => x.vni = *i,
                                    InfoVxlan::Port(p) => x.port = *p,
                                    InfoVxlan::Local(a) => x.local = Some(*a),
                                    InfoVxlan::Link(i) => x.underlay = Some(*i),
                                    InfoVxlan::Df(d) => {
                                        x.df =
                                            Some(*d == rtnetlink::packet_route::link::VxlanDf::Set)
                                    }
                                    _ => {}
                                }
                            }
                            l.vxlan = Some(x);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    l
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some((*v).into()),
        RouteAddress::Inet6(v) => Some((*v).into()),
        _ => None,
    }
}

fn route_info(m: &RouteMessage) -> Option<RouteInfo> {
    let v6 = m.header.address_family == rtnetlink::packet_route::AddressFamily::Inet6;
    let mut dst: IpAddr = if v6 {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    };
    let mut gateway = None;
    let mut oif = None;
    let mut mtu = None;
    let mut src = None;
    let mut table = u32::from(m.header.table);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = route_ip(d)?,
            RouteAttribute::Gateway(g) => gateway = route_ip(g),
            RouteAttribute::PrefSource(s) => src = route_ip(s),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Metrics(ms) => {
                for x in ms {
                    if let rtnetlink::packet_route::route::RouteMetric::Mtu(v) = x {
                        mtu = Some(*v);
                    }
                }
            }
            _ => {}
        }
    }
    Some(RouteInfo {
        dst: IpNet::new(dst, m.header.destination_prefix_length).ok()?,
        gateway,
        oif,
        protocol: u8::from(m.header.protocol),
        mtu,
        src,
        onlink: m
            .header
            .flags
            .contains(rtnetlink::packet_route::route::RouteFlags::Onlink),
        table,
        scope_link: m.header.scope == rtnetlink::packet_route::route::RouteScope::Link,
    })
}

pub(crate) fn protocol(p: u8) -> RouteProtocol {
    RouteProtocol::from(p)
}
