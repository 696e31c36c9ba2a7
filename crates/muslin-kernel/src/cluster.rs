//! The cluster data plane on the host: the VXLAN device, routes to peers'
//! blocks, and the VXLAN neighbour and FDB entries. `apply` makes the host
//! match a computed [`Desired`], touching only objects Muslin owns: routes
//! with our protocol number that do not lead to a local pod, and entries on
//! our VXLAN device.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr, UdpSocket};

use futures::TryStreamExt;
use ipnet::IpNet;
use muslin_model::dataplane::{
    ClusterRoute, Desired, VxlanDevice, MAIN_TABLE, POD_RULE_PRIORITY, POD_TABLE, VXLAN_DEV,
};
use muslin_model::naming::is_pod_veth;
use muslin_model::underlay::Candidate;
use muslin_model::ROUTE_PROTOCOL;
use rtnetlink::packet_route::link::VxlanDf;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{RouteFlags, RouteMetric};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{LinkUnspec, LinkVxlan, RouteMessageBuilder};

use crate::error::errno;
use crate::netlink::protocol;
use crate::writes::wrote;
use crate::{KernelError, Netlink};

/// What `apply` changed, for logs and metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub added: usize,
    pub removed: usize,
}

impl Applied {
    pub fn changed(&self) -> bool {
        self.added + self.removed > 0
    }
}

/// Every interface with its addresses: the candidates for the underlay.
pub async fn candidates(host: &Netlink) -> Result<Vec<Candidate>, KernelError> {
    let links = host.links().await?;
    let all = host.all_addresses().await?;
    let mut out = Vec::new();
    for l in links {
        let addresses = all
            .iter()
            .filter(|(i, _)| *i == l.index)
            .map(|(_, a)| *a)
            .collect();
        out.push(Candidate {
            ifname: l.name,
            kind: l.kind,
            up: l.up,
            mtu: l.mtu.unwrap_or(1500),
            addresses,
        });
    }
    Ok(out)
}

/// The source address the kernel would use towards `peer` (a UDP connect
/// sends nothing; it only resolves the route).
pub fn source_towards(peer: IpAddr) -> std::io::Result<IpAddr> {
    let bind: SocketAddr = if peer.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let s = UdpSocket::bind(bind)?;
    s.connect(SocketAddr::new(peer, 9))?;
    Ok(s.local_addr()?.ip())
}

/// Creates or corrects the VXLAN device; returns its index. Learning is off:
/// the agent programs every neighbour and FDB entry itself. Only what
/// differs is written: setting the MAC, even to the same value, makes the
/// kernel flush the device's neighbours.
pub async fn ensure_vxlan(host: &Netlink, dev: &VxlanDevice) -> Result<u32, KernelError> {
    let underlay = host
        .link(&dev.underlay_if)
        .await?
        .ok_or_else(|| KernelError::Io {
            what: format!("underlay interface {} is gone", dev.underlay_if),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
    let local = match dev.local {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => {
            return Err(KernelError::Io {
                what: "VXLAN over an IPv6 underlay is not supported yet".into(),
                source: std::io::ErrorKind::Unsupported.into(),
            })
        }
    };
    let mut existing = host.link(VXLAN_DEV).await?;
    if let Some(l) = &existing {
        let have = l.vxlan;
        let same = have.is_some_and(|v| {
            (v.vni, v.port, v.local, v.underlay)
                == (dev.vni, dev.port, Some(local), Some(underlay.index))
                // A kernel that does not report DF cannot set it either.
                && v.df != Some(false)
        });
        if !same {
            tracing::info!(was = ?have, vni = dev.vni, port = dev.port, %local, underlay = %dev.underlay_if, "recreating the VXLAN device with new parameters");
            host.delete_link(VXLAN_DEV).await?;
            wrote();
            existing = None;
        }
    }
    let l = match existing {
        Some(l) => l,
        None => create_vxlan(host, dev, local, underlay.index).await?,
    };
    let mut set = LinkUnspec::new_with_index(l.index);
    let mut changed = false;
    if l.mtu != Some(dev.mtu) {
        set = set.mtu(dev.mtu);
        changed = true;
    }
    if l.mac.as_deref() != Some(&dev.mac[..]) {
        set = set.address(dev.mac.to_vec());
        changed = true;
    }
    if !l.up {
        set = set.up();
        changed = true;
    }
    if changed {
        host.handle
            .link()
            .set(set.build())
            .execute()
            .await
            .map_err(KernelError::netlink(format!("configuring {VXLAN_DEV}")))?;
        wrote();
    }
    // Exactly one address: the VTEP address.
    let want_addr = IpNet::from(dev.address);
    let have = host.addresses(l.index).await?;
    for a in &have {
        if *a != want_addr
            && !matches!(a.addr(), IpAddr::V6(v) if (v.segments()[0] & 0xffc0) == 0xfe80)
        {
            let mut req = host
                .handle
                .address()
                .get()
                .set_link_index_filter(l.index)
                .set_address_filter(a.addr())
                .execute();
            while let Ok(Some(m)) = req.try_next().await {
                let _ = host.handle.address().del(m).execute().await;
                wrote();
            }
        }
    }
    if !have.contains(&want_addr) {
        match host
            .handle
            .address()
            .add(l.index, want_addr.addr(), want_addr.prefix_len())
            .execute()
            .await
        {
            Ok(()) => wrote(),
            Err(e) if errno(&e) == Some(libc::EEXIST) => {}
            Err(e) => {
                return Err(KernelError::netlink(format!(
                    "adding {want_addr} to {VXLAN_DEV}"
                ))(e))
            }
        }
    }
    Ok(l.index)
}

/// Creates the device with DF on outer packets, so that a path with a
/// smaller MTU is found by probes rather than by silent fragmentation; a
/// kernel without the setting (before 5.0) gets the device without it.
async fn create_vxlan(
    host: &Netlink,
    dev: &VxlanDevice,
    local: std::net::Ipv4Addr,
    underlay: u32,
) -> Result<crate::LinkInfo, KernelError> {
    let build = |df: bool| {
        let mut b = LinkVxlan::new(VXLAN_DEV, dev.vni)
            .dev(underlay)
            .port(dev.port)
            .local(local)
            .learning(false)
            .mtu(dev.mtu)
            .address(dev.mac.to_vec());
        if df {
            b = b.df(VxlanDf::Set);
        }
        b.up().build()
    };
    let mut res = host.handle.link().add(build(true)).execute().await;
    if matches!(&res, Err(e) if matches!(errno(e), Some(libc::EINVAL) | Some(libc::EOPNOTSUPP))) {
        tracing::warn!("this kernel cannot set DF on VXLAN packets: a path with a smaller MTU relies on the pinned route MTUs alone");
        res = host.handle.link().add(build(false)).execute().await;
    }
    res.map_err(KernelError::netlink(format!("creating {VXLAN_DEV}")))?;
    wrote();
    tracing::info!(vni = dev.vni, port = dev.port, %local, underlay = %dev.underlay_if, mtu = dev.mtu, "created the VXLAN device");
    host.link(VXLAN_DEV).await?.ok_or_else(|| KernelError::Io {
        what: format!("{VXLAN_DEV} vanished"),
        source: std::io::ErrorKind::NotFound.into(),
    })
}

fn route_msg(r: &ClusterRoute, oif: u32) -> rtnetlink::packet_route::route::RouteMessage {
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(r.dst.addr(), r.dst.prefix_len())
        .expect("prefix of a valid net")
        .gateway(r.via)
        .expect("same family")
        .output_interface(oif)
        .table_id(r.table)
        .protocol(protocol(ROUTE_PROTOCOL));
    if r.onlink {
        b = b.onlink();
    }
    let mut m = b.build();
    if let Some(mtu) = r.mtu {
        m.attributes
            .push(rtnetlink::packet_route::route::RouteAttribute::Metrics(
                vec![RouteMetric::Mtu(mtu)],
            ));
    }
    m
}

/// Destinations of routes in the main table that Muslin does not own and
/// that do not lead to our own devices: ranges the node must not lease.
pub async fn foreign_routes(host: &Netlink) -> Result<Vec<IpNet>, KernelError> {
    let ours: BTreeSet<u32> = host
        .links()
        .await?
        .into_iter()
        .filter(|l| l.name.starts_with(muslin_model::IFACE_PREFIX))
        .map(|l| l.index)
        .collect();
    Ok(host
        .routes(false)
        .await?
        .into_iter()
        .filter(|r| r.table == MAIN_TABLE && r.protocol != ROUTE_PROTOCOL)
        .filter(|r| !r.oif.is_some_and(|i| ours.contains(&i)))
        .map(|r| r.dst)
        .collect())
}

/// Converges routes, the pod rule, neighbours and FDB entries to `d`.
/// Deletions happen only when `allow_deletes` (a view that may be
/// incomplete, right after a restart, must not remove routes that are still
/// wanted).
pub async fn apply(
    host: &Netlink,
    d: &Desired,
    allow_deletes: bool,
) -> Result<Applied, KernelError> {
    let mut applied = Applied::default();
    let links = host.links().await?;
    let index: BTreeMap<String, u32> = links.iter().map(|l| (l.name.clone(), l.index)).collect();
    let name_of: BTreeMap<u32, String> = links.iter().map(|l| (l.index, l.name.clone())).collect();

    // Routes.
    let all = host.routes(false).await?;
    // Destinations someone else routes in the main table: never replaced.
    let foreign: BTreeSet<IpNet> = all
        .iter()
        .filter(|r| r.table == MAIN_TABLE && r.protocol != ROUTE_PROTOCOL)
        .map(|r| r.dst)
        .collect();
    let current: Vec<_> = all
        .into_iter()
        .filter(|r| r.protocol == ROUTE_PROTOCOL && (r.table == MAIN_TABLE || r.table == POD_TABLE))
        .filter(|r| {
            r.oif
                .and_then(|i| name_of.get(&i))
                .is_some_and(|n| !is_pod_veth(n))
        })
        .collect();
    let same = |r: &crate::RouteInfo, w: &ClusterRoute| {
        r.dst == w.dst
            && r.table == w.table
            && r.gateway == Some(w.via)
            && r.oif == index.get(&w.dev).copied()
            && r.mtu == w.mtu
    };
    for w in &d.routes {
        if current.iter().any(|r| same(r, w)) {
            continue;
        }
        if w.table == MAIN_TABLE && foreign.contains(&w.dst) {
            tracing::warn!(dst = %w.dst, "a route Muslin does not own already covers this block; left alone");
            continue;
        }
        let Some(oif) = index.get(&w.dev) else {
            tracing::warn!(dev = %w.dev, dst = %w.dst, "route device missing; skipped");
            continue;
        };
        host.handle
            .route()
            .add(route_msg(w, *oif))
            .replace()
            .execute()
            .await
            .map_err(KernelError::netlink(format!(
                "adding route {} via {} dev {} table {}",
                w.dst, w.via, w.dev, w.table
            )))?;
        wrote();
        applied.added += 1;
    }
    if allow_deletes {
        for r in current
            .iter()
            .filter(|r| !d.routes.iter().any(|w| same(r, w)))
        {
            // A replaced route (same destination, new next hop) is already gone.
            if d.routes
                .iter()
                .any(|w| w.dst == r.dst && w.table == r.table)
            {
                continue;
            }
            let Some(gw) = r.gateway else { continue };
            let w = ClusterRoute {
                dst: r.dst,
                via: gw,
                dev: String::new(),
                onlink: false,
                mtu: None,
                table: r.table,
            };
            let mut m = route_msg(&w, r.oif.unwrap_or(0));
            if r.onlink {
                m.header.flags |= RouteFlags::Onlink;
            }
            match host.handle.route().del(m).execute().await {
                Ok(()) => {
                    wrote();
                    applied.removed += 1
                }
                Err(e) if errno(&e) == Some(libc::ESRCH) => {}
                Err(e) => return Err(KernelError::netlink(format!("removing route {}", r.dst))(e)),
            }
        }
    }
    apply_pod_rule(host, d.pod_rule, allow_deletes, &mut applied).await?;

    // Neighbours and FDB entries of the VXLAN device.
    if let Some(&vx) = index.get(VXLAN_DEV) {
        let have: BTreeSet<(IpAddr, Vec<u8>)> =
            host.permanent_neighbours(vx).await?.into_iter().collect();
        let want: BTreeSet<(IpAddr, Vec<u8>)> = d
            .neighbours
            .iter()
            .map(|(ip, mac)| (*ip, mac.to_vec()))
            .collect();
        for (ip, mac) in want.difference(&have) {
            host.handle
                .neighbours()
                .add(vx, *ip)
                .link_layer_address(mac)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(KernelError::netlink(format!(
                    "adding neighbour {ip} on {VXLAN_DEV}"
                )))?;
            wrote();
            applied.added += 1;
        }
        let fdb_have = fdb(host, vx).await?;
        let fdb_want: BTreeSet<(Vec<u8>, IpAddr)> =
            d.fdb.iter().map(|(mac, ip)| (mac.to_vec(), *ip)).collect();
        for (mac, ip) in fdb_want
            .iter()
            .filter(|w| !fdb_have.iter().any(|(k, _)| k == *w))
        {
            host.handle
                .neighbours()
                .add_bridge(vx, mac)
                .destination(*ip)
                .flags(NeighbourFlags::Own)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(KernelError::netlink(format!(
                    "adding FDB entry to {ip} on {VXLAN_DEV}"
                )))?;
            wrote();
            applied.added += 1;
        }
        if allow_deletes {
            for (ip, mac) in have.difference(&want) {
                let mut m = NeighbourMessage::default();
                m.header.family = if ip.is_ipv4() {
                    AddressFamily::Inet
                } else {
                    AddressFamily::Inet6
                };
                m.header.ifindex = vx;
                m.attributes.push(NeighbourAttribute::Destination(match ip {
                    IpAddr::V4(a) => NeighbourAddress::Inet(*a),
                    IpAddr::V6(a) => NeighbourAddress::Inet6(*a),
                }));
                m.attributes
                    .push(NeighbourAttribute::LinkLayerAddress(mac.clone()));
                if host.handle.neighbours().del(m).execute().await.is_ok() {
                    wrote();
                    applied.removed += 1;
                }
            }
            for (key, msg) in fdb_have {
                if !fdb_want.contains(&key)
                    && host.handle.neighbours().del(msg).execute().await.is_ok()
                {
                    wrote();
                    applied.removed += 1;
                }
            }
        }
    }
    Ok(applied)
}

/// Our rule (`from POD_CIDR lookup POD_TABLE`), known by its priority and
/// table; any other rule is someone else's.
async fn apply_pod_rule(
    host: &Netlink,
    want: Option<IpNet>,
    allow_deletes: bool,
    applied: &mut Applied,
) -> Result<(), KernelError> {
    let rules: Vec<RuleMessage> = host
        .handle
        .rule()
        .get(rtnetlink::IpVersion::V4)
        .execute()
        .try_collect()
        .await
        .map_err(KernelError::netlink("listing rules"))?;
    let ours: Vec<(Option<IpNet>, RuleMessage)> = rules
        .into_iter()
        .filter(|m| {
            let prio = m.attributes.iter().find_map(|a| match a {
                RuleAttribute::Priority(p) => Some(*p),
                _ => None,
            });
            let table = m
                .attributes
                .iter()
                .find_map(|a| match a {
                    RuleAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(m.header.table));
            prio == Some(POD_RULE_PRIORITY) && table == POD_TABLE
        })
        .map(|m| {
            let src = m.attributes.iter().find_map(|a| match a {
                RuleAttribute::Source(ip) => IpNet::new(*ip, m.header.src_len).ok(),
                _ => None,
            });
            (src, m)
        })
        .collect();
    let present = want.is_some_and(|w| ours.iter().any(|(s, _)| *s == Some(w)));
    if let (Some(IpNet::V4(w)), false) = (want, present) {
        host.handle
            .rule()
            .add()
            .v4()
            .source_prefix(w.addr(), w.prefix_len())
            .table_id(POD_TABLE)
            .priority(POD_RULE_PRIORITY)
            .action(RuleAction::ToTable)
            .execute()
            .await
            .map_err(KernelError::netlink(format!(
                "adding rule from {w} lookup {POD_TABLE}"
            )))?;
        wrote();
        applied.added += 1;
    }
    if allow_deletes {
        for (src, m) in ours {
            if src != want && host.handle.rule().del(m).execute().await.is_ok() {
                wrote();
                applied.removed += 1;
            }
        }
    }
    Ok(())
}

/// FDB entries of `vx` that point at a remote VTEP.
async fn fdb(
    host: &Netlink,
    vx: u32,
) -> Result<Vec<((Vec<u8>, IpAddr), NeighbourMessage)>, KernelError> {
    let msgs: Vec<NeighbourMessage> = host
        .handle
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute()
        .try_collect()
        .await
        .map_err(KernelError::netlink("listing FDB entries"))?;
    Ok(msgs
        .into_iter()
        .filter(|m| m.header.ifindex == vx)
        .filter_map(|m| {
            let mut mac = None;
            let mut dst = None;
            for a in &m.attributes {
                match a {
                    NeighbourAttribute::LinkLayerAddress(l) => mac = Some(l.clone()),
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => {
                        dst = Some(IpAddr::V4(*d))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(d)) => {
                        dst = Some(IpAddr::V6(*d))
                    }
                    // Bridge-family messages carry the address as raw bytes.
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                        dst = match b.len() {
                            4 => <[u8; 4]>::try_from(&b[..]).ok().map(IpAddr::from),
                            16 => <[u8; 16]>::try_from(&b[..]).ok().map(IpAddr::from),
                            _ => None,
                        }
                    }
                    _ => {}
                }
            }
            Some(((mac?, dst?), m))
        })
        .collect())
}

/// Our own nftables table: masquerade pod traffic leaving the cluster.
/// Pod-to-pod and pod-to-node traffic is never masqueraded (a protocol
/// without ports cannot share one node address between pods). Replaced
/// atomically in one transaction.
pub fn apply_masquerade(
    pod_cidr: IpNet,
    enabled: bool,
    nodes: &[IpAddr],
) -> Result<(), KernelError> {
    let fam = if pod_cidr.addr().is_ipv4() {
        "ip"
    } else {
        "ip6"
    };
    let ty = if pod_cidr.addr().is_ipv4() {
        "ipv4_addr"
    } else {
        "ipv6_addr"
    };
    let mut script = format!("table {fam} muslin {{}}\ndelete table {fam} muslin\n");
    if enabled {
        let elems: Vec<String> = nodes
            .iter()
            .filter(|a| a.is_ipv4() == pod_cidr.addr().is_ipv4())
            .map(|a| a.to_string())
            .collect();
        let set = if elems.is_empty() {
            String::new()
        } else {
            format!("  elements = {{ {} }}\n", elems.join(", "))
        };
        script.push_str(&format!(
            "table {fam} muslin {{\n set nodes {{\n  type {ty}\n{set} }}\n chain postrouting {{\n  \
             type nat hook postrouting priority srcnat; policy accept;\n  \
             {fam} saddr {pod_cidr} {fam} daddr {pod_cidr} return\n  \
             {fam} saddr {pod_cidr} {fam} daddr @nodes return\n  \
             {fam} saddr {pod_cidr} masquerade fully-random\n }}\n}}\n"
        ));
    }
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(KernelError::io(
            "running nft (is the nftables package installed?)",
        ))?;
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .map_err(KernelError::io("feeding nft"))?;
    let out = child
        .wait_with_output()
        .map_err(KernelError::io("running nft"))?;
    wrote();
    if !out.status.success() {
        return Err(KernelError::Io {
            what: format!(
                "nft refused the muslin table: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            source: std::io::ErrorKind::InvalidInput.into(),
        });
    }
    Ok(())
}

/// Removes everything of the cluster data plane Muslin made on this host:
/// the VXLAN device (and with it the routes through it), its other routes
/// to peers, the pod rule and its table, and the masquerade table. Pod
/// veths stay: they belong to containers that may still run. Returns what
/// it removed.
pub async fn uninstall(host: &Netlink) -> Result<Vec<String>, KernelError> {
    let mut done = Vec::new();
    if host.delete_link(VXLAN_DEV).await? {
        wrote();
        done.push(format!("link {VXLAN_DEV}"));
    }
    let empty = Desired::default();
    let applied = apply(host, &empty, true).await?;
    if applied.removed > 0 {
        done.push(format!(
            "{} routes and rules to peers (protocol {ROUTE_PROTOCOL}, table {POD_TABLE})",
            applied.removed
        ));
    }
    for fam in ["ip", "ip6"] {
        let out = std::process::Command::new("nft")
            .args(["delete", "table", fam, "muslin"])
            .output()
            .map_err(KernelError::io("running nft"))?;
        if out.status.success() {
            wrote();
            done.push(format!("nftables table {fam} muslin"));
        }
    }
    Ok(done)
}
