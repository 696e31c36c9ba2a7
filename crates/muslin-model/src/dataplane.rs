//! The cluster data plane a node should have, computed from the cluster
//! view: routes to every peer's blocks, and for peers reached over VXLAN the
//! neighbour and FDB entries of our VXLAN device. The kernel module makes
//! the host match it; `status` shows the per-peer paths it chose.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::cluster::{ClusterView, NodeRecord};

/// Name of the node's VXLAN device (our prefix, never a veth name).
pub const VXLAN_DEV: &str = "msl-vxlan";
/// Outer IPv4 + UDP + VXLAN + inner Ethernet headers.
pub const VXLAN_OVERHEAD: u32 = 50;
/// Main routing table.
pub const MAIN_TABLE: u32 = 254;
/// Our routing table: routes that only pod-sourced traffic may take (to
/// peers' node addresses through the tunnel), looked up by one rule.
pub const POD_TABLE: u32 = 77;
/// Priority of that rule: after `local` (0), before `main` (32766).
pub const POD_RULE_PRIORITY: u32 = 1077;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Routed,
    Vxlan,
    Auto,
}

impl FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "routed" => Ok(Backend::Routed),
            "vxlan" => Ok(Backend::Vxlan),
            "auto" => Ok(Backend::Auto),
            o => Err(format!("{o:?} is not one of routed, vxlan, auto")),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Routed => "routed",
            Backend::Vxlan => "vxlan",
            Backend::Auto => "auto",
        })
    }
}

/// How a peer is reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "path", content = "why")]
pub enum Path {
    Routed,
    Vxlan,
    /// Encrypted, through our WireGuard device.
    Wireguard,
    /// Through another node acting as a router, because the direct path
    /// fails; the direct path stays programmed for its probes alone.
    Relay(Relayed),
    /// No path: the backend cannot reach this peer (routed across a router).
    Unreachable(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relayed {
    pub via: String,
    /// The direct path, still probed to tell when it heals.
    pub direct: Box<Path>,
    /// How packets reach the relay.
    pub hop: Box<Path>,
    pub why: String,
}

/// Our end of the underlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Underlay {
    pub ifname: String,
    pub address: IpAddr,
    pub prefix: IpNet,
    pub mtu: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanSettings {
    pub vni: u32,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanDevice {
    pub vni: u32,
    pub port: u16,
    pub local: IpAddr,
    pub underlay_if: String,
    pub mtu: u32,
    pub mac: [u8; 6],
    /// Our VTEP address: the network address of our first block.
    pub address: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClusterRoute {
    pub dst: IpNet,
    pub via: IpAddr,
    pub dev: String,
    pub onlink: bool,
    /// Path MTU pinned on the route, so a pod's oversized packet gets an
    /// ICMP "fragmentation needed" from its own host at once.
    pub mtu: Option<u32>,
    pub table: u32,
    /// Source address of the host's own packets by this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<IpAddr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    pub vxlan: Option<VxlanDevice>,
    pub routes: Vec<ClusterRoute>,
    /// VTEP address -> VTEP MAC, on the VXLAN device.
    pub neighbours: Vec<(IpAddr, [u8; 6])>,
    /// VTEP MAC -> peer underlay address, on the VXLAN device.
    pub fdb: Vec<([u8; 6], IpAddr)>,
    pub paths: BTreeMap<String, Path>,
    /// Source range whose traffic looks up [`POD_TABLE`] first.
    pub pod_rule: Option<IpNet>,
    /// Peers whose direct path fails with no node to relay through, and
    /// why: their direct routes stay, in case the path half works.
    pub stuck: BTreeMap<String, String>,
    /// With encryption: our WireGuard device and its peers (no VXLAN
    /// device then: every peer is reached through this one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<crate::encryption::WgDevice>,
}

impl Desired {
    /// Our end of the data-path probes: the VTEP or tunnel address.
    pub fn tunnel_address(&self) -> Option<IpAddr> {
        match (&self.vxlan, &self.wireguard) {
            (Some(v), _) => Some(v.address),
            (None, Some(w)) => w.address,
            (None, None) => None,
        }
    }
}

/// Everything besides the cluster view that the data plane depends on.
#[derive(Debug, Clone)]
pub struct Params<'a> {
    pub me: &'a str,
    pub backend: Backend,
    pub local: &'a Underlay,
    pub vx: VxlanSettings,
    pub vtep_mac: [u8; 6],
    pub pod_cidr: IpNet,
    /// Every address of this host: a peer advertising one of them chose a
    /// wrong interface and must not become a route to ourselves.
    pub local_addresses: &'a [IpAddr],
    /// Measured path MTU to each peer (IP packet size over the underlay).
    pub path_mtu: &'a BTreeMap<String, u32>,
    /// Where the network lives on the host: its tunnel device, the table
    /// of its routes to peers' blocks, and the table only its pods' traffic
    /// looks up (routes to peers' node addresses).
    pub dev: &'a str,
    pub table: u32,
    /// `None`: pods' packets to peers' node addresses take the main
    /// routing (an isolated network's are dropped there).
    pub pod_table: Option<u32>,
    /// A network other than the default: its tunnel exists whether or not
    /// this node holds a block of it (hosts route to its containers), and
    /// each peer's next hop in the tunnel is the peer's node address, so a
    /// peer without a block is reachable too.
    pub tunnel_always: bool,
    /// What this node's probes found of the data path to each peer just
    /// now; with the peers' reports in the view, it decides relays.
    pub health: &'a crate::peer_map::PeerMap<crate::cluster::PathHealth>,
    /// The relay each relayed peer went through until now (kept across
    /// restarts): it stays while no relay can be verified.
    pub relays: &'a BTreeMap<String, String>,
    /// Pod traffic to peers goes through WireGuard (the default network;
    /// see `encryption`): peers that do not encrypt get none.
    pub encrypt: bool,
    /// The kind of our WireGuard device (`tun` or `wireguard`).
    pub wg_kind: &'a str,
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok())
        .collect::<Option<_>>()?;
    v.try_into().ok()
}

pub fn path_to(backend: Backend, local: &Underlay, peer: &NodeRecord) -> Path {
    // Both ends must agree, or each would take another kind of path to
    // the other and strict rp_filter would drop what arrives.
    let same_l2 =
        local.prefix.contains(&peer.address) && peer.underlay_prefix.contains(&local.address);
    match backend {
        Backend::Vxlan => Path::Vxlan,
        Backend::Auto if same_l2 => Path::Routed,
        Backend::Auto => Path::Vxlan,
        Backend::Routed if same_l2 => Path::Routed,
        Backend::Routed => Path::Unreachable(format!(
            "{} is outside our underlay subnet {}: the routed backend needs a shared L2 segment (use vxlan or auto)",
            peer.address, local.prefix
        )),
    }
}

/// MTU of pod interfaces. `auto` gives pods the full underlay MTU and pins
/// the smaller VXLAN MTU on the routes that use it.
pub fn pod_mtu(backend: Backend, underlay_mtu: u32) -> u32 {
    match backend {
        Backend::Vxlan => underlay_mtu - VXLAN_OVERHEAD,
        Backend::Routed | Backend::Auto => underlay_mtu,
    }
}

/// A peer's block is routed only if it lies in the pod network and clear of
/// our underlay: a bad or hostile claim (`0.0.0.0/0`, the underlay subnet)
/// must never become a route on every host.
fn routable(b: &IpNet, pod_cidr: &IpNet, local: &Underlay) -> bool {
    pod_cidr.contains(b)
        && !b.contains(&local.prefix.network())
        && !local.prefix.contains(&b.network())
}

pub fn desired(view: &ClusterView, p: &Params) -> Desired {
    let (me, local, pod_cidr) = (p.me, p.local, p.pod_cidr);
    let owners = view.block_owners();
    // Grouped once: a scan of every block per peer would cost the square
    // of the cluster every round.
    let mut by_owner: BTreeMap<&str, Vec<IpNet>> = BTreeMap::new();
    for (b, o) in &owners {
        if o == me || routable(b, &pod_cidr, local) {
            by_owner.entry(o.as_str()).or_default().push(*b);
        }
    }
    let blocks_of = |n: &str| -> Vec<IpNet> { by_owner.get(n).cloned().unwrap_or_default() };
    let shared: BTreeMap<IpAddr, Vec<String>> = view.duplicate_addresses().into_iter().collect();
    let mut d = Desired::default();
    let mine = blocks_of(me);
    let vx_mtu = local.mtu - VXLAN_OVERHEAD;
    // A network's tunnel carries this node's underlay address: the host's
    // own packets into the network leave with it as their source, the
    // address peers route back through the tunnel (not whatever address
    // another NIC has, such as a NAT address every host shares).
    let vtep_address = match (mine.first(), p.tunnel_always) {
        (_, true) => Some(local.address),
        (Some(b), false) => Some(b.network()),
        (None, false) => None,
    };
    let encrypt = p.encrypt && !p.tunnel_always;
    if encrypt {
        d.wireguard = Some(crate::encryption::WgDevice {
            kind: p.wg_kind.into(),
            mtu: local.mtu - crate::encryption::overhead(local.address),
            address: vtep_address,
            peers: vec![],
        });
    }
    d.vxlan = vtep_address
        .filter(|_| !encrypt)
        .map(|address| VxlanDevice {
            vni: p.vx.vni,
            port: p.vx.port,
            local: local.address,
            underlay_if: local.ifname.clone(),
            mtu: vx_mtu,
            mac: p.vtep_mac,
            address,
        });
    d.pod_rule = d.tunnel_address().map(|_| pod_cidr);
    // Each peer's direct path first: a relay is reached over its own.
    let mut direct: BTreeMap<&str, (&NodeRecord, Path)> = BTreeMap::new();
    for (name, peer) in &view.nodes {
        if name == me {
            continue;
        }
        let Some(rec) = &peer.record else { continue };
        let path = match (p.local_addresses.contains(&rec.address), shared.get(&rec.address)) {
            (true, _) => Path::Unreachable(format!(
                "advertises {}, an address of this host too: it chose the wrong interface (its own status says why)",
                rec.address
            )),
            (_, Some(names)) => Path::Unreachable(format!(
                "{} is claimed by nodes {}: none of them is programmed until each advertises its own address",
                rec.address,
                names.join(", ")
            )),
            _ if encrypt => match crate::encryption::refusal(view, me, name, rec) {
                Some(why) => Path::Unreachable(why),
                None => Path::Wireguard,
            },
            // A network's VXLAN rides in WireGuard (see `WG_MARK`): only
            // to peers that encrypt.
            _ if p.encrypt => match crate::encryption::refusal(view, me, name, rec) {
                Some(why) => Path::Unreachable(why),
                None => Path::Vxlan,
            },
            _ => path_to(p.backend, local, rec),
        };
        direct.insert(name.as_str(), (rec, path));
    }
    // Encrypted, every hop is a WireGuard tunnel: the same cost each.
    let hop_backend = if encrypt { Backend::Vxlan } else { p.backend };
    let graph = crate::relay::Graph::new(view, me, p.health, hop_backend);
    // For the WireGuard peers: whose blocks go straight to whom, and
    // through whom.
    let mut wg_direct: BTreeMap<String, Vec<IpNet>> = BTreeMap::new();
    let mut wg_relayed: BTreeMap<String, (String, Vec<IpNet>)> = BTreeMap::new();
    let mut wg_probe: BTreeMap<String, IpAddr> = BTreeMap::new();
    // Until a probe measured it, the smaller of the two interfaces.
    // A network's tunnel inside WireGuard: the caller gave our MTU and the
    // measured ones less WireGuard's overhead; peers' own figures need it
    // taken off here.
    let beneath = match p.encrypt && p.tunnel_always {
        true => crate::encryption::overhead(local.address),
        false => 0,
    };
    let pmtu_of = |name: &str, rec: &NodeRecord| {
        p.path_mtu
            .get(name)
            .copied()
            .unwrap_or(local.mtu.min(rec.mtu.saturating_sub(beneath)))
            .min(local.mtu)
    };
    let hop_to = |d: &Desired, name: &str| -> Option<NextHop> {
        let (rec, path) = direct.get(name)?;
        next_hop(p, d, rec, &blocks_of(name), path, pmtu_of(name, rec))
    };
    for (name, (rec, path)) in &direct {
        let name = *name;
        let blocks = blocks_of(name);
        let relay = match path {
            Path::Routed | Path::Vxlan | Path::Wireguard => {
                graph.route(name, p.relays.get(name).map(String::as_str))
            }
            _ => crate::relay::Route::Direct,
        };
        let relayed = match relay {
            crate::relay::Route::Direct => None,
            crate::relay::Route::Stuck(why) => {
                d.stuck.insert(name.to_string(), why);
                None
            }
            crate::relay::Route::Relay { via, why } => match hop_to(&d, &via) {
                Some(h) => Some((via, why, h)),
                None => {
                    d.stuck.insert(
                        name.to_string(),
                        format!("{why}; relay {via} has no programmable path from here"),
                    );
                    None
                }
            },
        };
        let own = hop_to(&d, name);
        match (relayed, own) {
            (Some((via, why, h)), own) => {
                // The far hop's MTU as the relay measured it.
                let far = view
                    .nodes
                    .get(&via)
                    .and_then(|v| v.record.as_ref())
                    .map(|r| {
                        let m = r
                            .health
                            .get(name)
                            .and_then(|x| x.path_mtu)
                            .unwrap_or(r.mtu.min(rec.mtu))
                            .saturating_sub(beneath);
                        match graph.hop(&via, name) {
                            _ if encrypt => {
                                m.saturating_sub(crate::encryption::overhead(rec.address))
                            }
                            Some(crate::relay::Hop::Vxlan) => m.saturating_sub(VXLAN_OVERHEAD),
                            _ => m,
                        }
                    })
                    .unwrap_or(h.mtu);
                let mtu = h.mtu.min(far).max(576);
                let pin = (mtu < pod_mtu(p.backend, local.mtu)).then_some(mtu);
                for b in &blocks {
                    // Through a tunnel the host's packets would leave from
                    // its VTEP address, whose replies the far end sends
                    // down the direct path (its probe route): they leave
                    // from the node address, which the far end routes back
                    // through the relay.
                    let src = h.vxlan.then_some(local.address);
                    d.routes.push(ClusterRoute {
                        src,
                        ..h.route(*b, p.table, pin)
                    });
                }
                // Pods' packets to the peer node itself cross the relay
                // too: the direct path fails for them as well.
                if let Some(t) = p.pod_table {
                    d.routes.push(h.route(IpNet::from(rec.address), t, pin));
                }
                // The direct path stays, for its probes alone: to the
                // peer's VTEP address, which no pod uses.
                if let Some(o) = own.filter(|_| !p.tunnel_always) {
                    d.routes.extend(probe_route(&d, &o, &blocks, p.table));
                    o.entries(&mut d);
                }
                if encrypt {
                    wg_relayed.insert(name.to_string(), (via.clone(), blocks.clone()));
                    if let Some(b) = blocks.first() {
                        wg_probe.insert(name.to_string(), b.network());
                    }
                }
                let hop = direct.get(via.as_str()).map(|(_, x)| x.clone());
                d.paths.insert(
                    name.to_string(),
                    Path::Relay(Relayed {
                        via,
                        direct: Box::new(path.clone()),
                        hop: Box::new(hop.unwrap_or(Path::Routed)),
                        why,
                    }),
                );
                continue;
            }
            (None, Some(o)) => {
                if encrypt {
                    wg_direct.insert(name.to_string(), blocks.clone());
                }
                for b in &blocks {
                    d.routes.push(o.route(*b, p.table, o.pin));
                }
                // A pod's packet to the peer node itself goes through the
                // tunnel too, so it arrives where the node's route back to
                // the pod points: strict rp_filter there accepts it.
                if let (Some(t), true) = (p.pod_table, o.vxlan || encrypt) {
                    d.routes.push(o.route(IpNet::from(rec.address), t, o.pin));
                }
                // A routed peer's probes would leave from the node address
                // by the block's route: they take the probe route always,
                // so what is probed never changes with relaying.
                if (!o.vxlan || encrypt) && !p.tunnel_always {
                    d.routes.extend(probe_route(&d, &o, &blocks, p.table));
                }
                o.entries(&mut d);
            }
            (None, None) => {}
        }
        d.paths.insert(name.to_string(), path.clone());
    }
    if let Some(w) = d.wireguard.as_mut() {
        w.peers = crate::encryption::peers(view, me, &wg_direct, &wg_relayed, &wg_probe);
        // The host's own packets into the tunnel leave from the node
        // address, which every peer's device admits from us (directly or
        // through the relay that carries us), whether or not we hold a
        // block; probes keep their tunnel address.
        for r in d.routes.iter_mut().filter(|r| r.src.is_none()) {
            r.src = Some(local.address);
        }
        // The networks' VXLAN to each peer we reach directly, marked on
        // its way out, goes into the device, which carries that peer's
        // node address.
        for peer in &w.peers {
            let at = peer.endpoint.ip();
            if peer.allowed_ips.contains(&IpNet::from(at)) {
                d.routes.push(ClusterRoute {
                    dst: IpNet::from(at),
                    via: at,
                    dev: crate::encryption::WG_DEV.into(),
                    onlink: true,
                    mtu: None,
                    table: crate::encryption::WG_TABLE,
                    src: Some(local.address),
                });
            }
        }
    }
    d.routes.sort();
    d
}

/// The route of the data-path probes to a peer: to its VTEP address (no
/// pod has it) over the direct path, from our own VTEP address, as the
/// peer's probe route to ours is. A probe and its answer cross the direct
/// path whether or not pods' traffic is relayed, and look like pods'
/// traffic: a node address would be checked by strict rp_filter against
/// the routes to that node, which may point to a relay.
fn probe_route(d: &Desired, o: &NextHop, blocks: &[IpNet], table: u32) -> Option<ClusterRoute> {
    let ours = d.tunnel_address()?;
    let theirs = blocks.first()?.network();
    Some(ClusterRoute {
        src: Some(ours),
        ..o.route(IpNet::from(theirs), table, o.pin)
    })
}

/// How packets for a directly reached peer leave this node.
struct NextHop {
    via: IpAddr,
    dev: String,
    onlink: bool,
    vxlan: bool,
    /// Largest IP packet a pod may send over it.
    mtu: u32,
    /// The MTU pinned on its routes, if any.
    pin: Option<u32>,
    /// The tunnel's neighbour and forwarding entries for the peer.
    entry: Option<(IpAddr, [u8; 6], IpAddr)>,
}

impl NextHop {
    fn route(&self, dst: IpNet, table: u32, mtu: Option<u32>) -> ClusterRoute {
        ClusterRoute {
            dst,
            via: self.via,
            dev: self.dev.clone(),
            onlink: self.onlink,
            mtu,
            table,
            src: None,
        }
    }

    fn entries(&self, d: &mut Desired) {
        if let Some((vtep, mac, underlay)) = self.entry {
            d.neighbours.push((vtep, mac));
            d.fdb.push((mac, underlay));
        }
    }
}

/// The next hop towards a peer reached over `path`, or `None` when there
/// is none to program (no path, or a tunnel without the peer's VTEP).
fn next_hop(
    p: &Params,
    d: &Desired,
    rec: &NodeRecord,
    blocks: &[IpNet],
    path: &Path,
    pmtu: u32,
) -> Option<NextHop> {
    let local = p.local;
    match path {
        Path::Routed => Some(NextHop {
            via: rec.address,
            dev: local.ifname.clone(),
            onlink: false,
            vxlan: false,
            mtu: pmtu,
            pin: (pmtu < local.mtu).then_some(pmtu),
            entry: None,
        }),
        Path::Vxlan => {
            let vtep = match p.tunnel_always {
                true => Some(rec.address),
                false => blocks.first().map(|b| b.network()),
            };
            let (vtep, mac, _) = (vtep?, parse_mac(&rec.vtep_mac)?, d.vxlan.as_ref()?);
            let inner = pmtu.saturating_sub(VXLAN_OVERHEAD).max(576);
            let vx_mtu = local.mtu - VXLAN_OVERHEAD;
            Some(NextHop {
                via: vtep,
                dev: p.dev.into(),
                onlink: true,
                vxlan: true,
                mtu: inner,
                pin: (p.backend == Backend::Auto || inner < vx_mtu).then_some(inner),
                entry: Some((vtep, mac, rec.address)),
            })
        }
        // The device is L3: the next hop only names the peer; WireGuard
        // picks the peer by the packet's destination.
        Path::Wireguard => {
            let w = d.wireguard.as_ref()?;
            let inner = pmtu
                .saturating_sub(crate::encryption::overhead(rec.address))
                .max(576);
            Some(NextHop {
                via: rec.address,
                dev: crate::encryption::WG_DEV.into(),
                onlink: true,
                vxlan: false,
                mtu: inner,
                pin: (inner < w.mtu).then_some(inner),
                entry: None,
            })
        }
        Path::Relay(_) | Path::Unreachable(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{BlockClaim, PeerView};

    fn rec(name: &str, addr: &str, prefix: &str) -> NodeRecord {
        crate::cluster::test_record(name, addr, prefix)
    }

    fn view() -> ClusterView {
        let mut v = ClusterView::default();
        for (n, a, p, b) in [
            ("h1", "192.168.10.11", "192.168.10.0/24", "10.244.1.0/24"),
            ("h2", "192.168.10.12", "192.168.10.0/24", "10.244.2.0/24"),
            ("h3", "192.168.20.11", "192.168.20.0/24", "10.244.3.0/24"),
        ] {
            let mut pv = PeerView {
                record: Some(rec(n, a, p).into()),
                alive: true,
                ..Default::default()
            };
            pv.claims
                .insert(b.parse().unwrap(), BlockClaim { claimed_at_ms: 1 });
            v.nodes.insert(n.into(), pv);
        }
        v
    }

    fn local() -> Underlay {
        Underlay {
            ifname: "eth1".into(),
            address: "192.168.10.11".parse().unwrap(),
            prefix: "192.168.10.0/24".parse().unwrap(),
            mtu: 1500,
        }
    }

    fn run(v: &ClusterView, backend: Backend, mac: [u8; 6]) -> Desired {
        run_with(v, backend, mac, &[], &BTreeMap::new())
    }

    /// h1's plane under `auto`, with what its own probes found.
    fn run_judged(
        v: &ClusterView,
        mine: &crate::peer_map::PeerMap<crate::cluster::PathHealth>,
    ) -> Desired {
        desired(
            v,
            &Params {
                me: "h1",
                backend: Backend::Auto,
                local: &local(),
                vx: VX,
                vtep_mac: [2; 6],
                pod_cidr: POD,
                local_addresses: &[],
                path_mtu: &BTreeMap::new(),
                dev: VXLAN_DEV,
                table: MAIN_TABLE,
                pod_table: Some(POD_TABLE),
                tunnel_always: false,
                health: mine,
                relays: &BTreeMap::new(),
                encrypt: false,
                wg_kind: "tun",
            },
        )
    }

    fn run_with(
        v: &ClusterView,
        backend: Backend,
        mac: [u8; 6],
        local_addresses: &[IpAddr],
        path_mtu: &BTreeMap<String, u32>,
    ) -> Desired {
        desired(
            v,
            &Params {
                me: "h1",
                backend,
                local: &local(),
                vx: VX,
                vtep_mac: mac,
                pod_cidr: POD,
                local_addresses,
                path_mtu,
                dev: VXLAN_DEV,
                table: MAIN_TABLE,
                pod_table: Some(POD_TABLE),
                tunnel_always: false,
                health: &crate::peer_map::PeerMap::new(),
                relays: &BTreeMap::new(),
                encrypt: false,
                wg_kind: "tun",
            },
        )
    }

    const POD: IpNet = IpNet::V4(ipnet::Ipv4Net::new_assert(
        std::net::Ipv4Addr::new(10, 244, 0, 0),
        16,
    ));

    #[test]
    fn claims_outside_the_pod_network_or_over_the_underlay_are_not_routed() {
        let mut v = view();
        for bad in [
            "0.0.0.0/0",
            "192.168.10.0/24",
            "192.168.0.0/16",
            "10.99.0.0/24",
        ] {
            v.nodes
                .get_mut("h2")
                .unwrap()
                .claims
                .insert(bad.parse().unwrap(), BlockClaim { claimed_at_ms: 0 });
        }
        let d = run(&v, Backend::Auto, [2; 6]);
        let dsts: Vec<String> = d
            .routes
            .iter()
            .filter(|r| r.table == MAIN_TABLE)
            .map(|r| r.dst.to_string())
            .collect();
        // (h2's VTEP address by its probe route.)
        assert_eq!(dsts, ["10.244.2.0/24", "10.244.2.0/32", "10.244.3.0/24"]);
    }

    const VX: VxlanSettings = VxlanSettings {
        vni: 4242,
        port: 4789,
    };

    #[test]
    fn auto_routes_same_segment_and_tunnels_the_rest() {
        let d = run(&view(), Backend::Auto, crate::cluster::vtep_mac("h1"));
        assert_eq!(d.paths["h2"], Path::Routed);
        assert_eq!(d.paths["h3"], Path::Vxlan);
        // h2's block, its probe route, h3's block, h3 for pods.
        assert_eq!(d.routes.len(), 4);
        let probe = d
            .routes
            .iter()
            .find(|r| r.dst.to_string() == "10.244.2.0/32")
            .unwrap();
        assert_eq!(
            (probe.via.to_string(), probe.src.map(|s| s.to_string())),
            ("192.168.10.12".into(), Some("10.244.1.0".into()))
        );
        // h3's node address, for pod-sourced traffic only, via the tunnel.
        let n3 = d.routes.iter().find(|r| r.table == POD_TABLE).unwrap();
        assert_eq!(
            (
                n3.dst.to_string().as_str(),
                n3.via.to_string().as_str(),
                n3.dev.as_str()
            ),
            ("192.168.20.11/32", "10.244.3.0", VXLAN_DEV)
        );
        assert_eq!(d.pod_rule, Some(POD));
        let r2 = d
            .routes
            .iter()
            .find(|r| r.dst.to_string() == "10.244.2.0/24")
            .unwrap();
        assert_eq!(
            (
                r2.via.to_string().as_str(),
                r2.dev.as_str(),
                r2.onlink,
                r2.mtu
            ),
            ("192.168.10.12", "eth1", false, None)
        );
        let r3 = d
            .routes
            .iter()
            .find(|r| r.dst.to_string() == "10.244.3.0/24")
            .unwrap();
        assert_eq!(
            (
                r3.via.to_string().as_str(),
                r3.dev.as_str(),
                r3.onlink,
                r3.mtu
            ),
            ("10.244.3.0", VXLAN_DEV, true, Some(1450))
        );
        assert_eq!(
            d.neighbours,
            vec![(
                "10.244.3.0".parse().unwrap(),
                crate::cluster::vtep_mac("h3")
            )]
        );
        assert_eq!(
            d.fdb,
            vec![(
                crate::cluster::vtep_mac("h3"),
                "192.168.20.11".parse().unwrap()
            )]
        );
        let vx = d.vxlan.unwrap();
        assert_eq!(
            (vx.address.to_string().as_str(), vx.mtu, vx.vni),
            ("10.244.1.0", 1450, 4242)
        );
    }

    #[test]
    fn routed_refuses_peers_across_a_router_and_vxlan_tunnels_everyone() {
        let d = run(&view(), Backend::Routed, [2; 6]);
        assert!(matches!(&d.paths["h3"], Path::Unreachable(why) if why.contains("shared L2")));
        // h2's block and its probe route.
        assert_eq!(d.routes.len(), 2);
        let d = run(&view(), Backend::Vxlan, [2; 6]);
        assert!(d.paths.values().all(|p| *p == Path::Vxlan));
        assert!(d
            .routes
            .iter()
            .all(|r| r.dev == VXLAN_DEV && r.mtu.is_none()));
        assert_eq!(d.fdb.len(), 2);
    }

    #[test]
    fn no_block_no_vxlan_device_and_mtus() {
        let mut v = view();
        v.nodes.get_mut("h1").unwrap().claims.clear();
        let d = run(&v, Backend::Vxlan, [2; 6]);
        assert!(d.vxlan.is_none());
        assert!(d.pod_rule.is_none());
        assert_eq!(pod_mtu(Backend::Vxlan, 1500), 1450);
        assert_eq!(pod_mtu(Backend::Auto, 9000), 9000);
        assert_eq!(parse_mac("02:00:00:00:00:0a"), Some([2, 0, 0, 0, 0, 10]));
        assert_eq!("auto".parse::<Backend>(), Ok(Backend::Auto));
        assert!("bgp".parse::<Backend>().is_err());
    }

    #[test]
    fn peers_advertising_our_address_or_a_shared_one_are_never_routes() {
        let mut v = view();
        // h2 advertises the NAT address every host has; so does h4.
        v.nodes.get_mut("h2").unwrap().record_mut().unwrap().address = "10.0.2.15".parse().unwrap();
        let mine: Vec<IpAddr> = vec![
            "10.0.2.15".parse().unwrap(),
            "192.168.10.11".parse().unwrap(),
        ];
        let d = run_with(&v, Backend::Auto, [2; 6], &mine, &BTreeMap::new());
        assert!(
            matches!(&d.paths["h2"], Path::Unreachable(w) if w.contains("address of this host"))
        );
        assert!(d.routes.iter().all(|r| r.via.to_string() != "10.0.2.15"));
        assert!(!d
            .routes
            .iter()
            .any(|r| r.dst.to_string() == "10.244.2.0/24"));
        let mut h4 = v.nodes["h3"].clone();
        h4.record_mut().unwrap().address = "10.0.2.15".parse().unwrap();
        h4.claims.clear();
        v.nodes.insert("h4".into(), h4);
        let d = run_with(&v, Backend::Auto, [2; 6], &[], &BTreeMap::new());
        assert!(matches!(&d.paths["h2"], Path::Unreachable(w) if w.contains("h2, h4")));
        assert!(matches!(&d.paths["h4"], Path::Unreachable(_)));
        assert_eq!(d.paths["h3"], Path::Vxlan);
    }

    #[test]
    fn a_peer_whose_direct_path_fails_is_routed_through_a_relay_and_still_probed_directly() {
        let mut v = view();
        // h1–h2 share a segment (routed); h3 is across a router (VXLAN).
        // h1's data path to h3 fails; h2 reaches both.
        let ok = |ok: bool| crate::cluster::PathHealth {
            ok,
            cause: (!ok).then(|| "UDP 4789 unanswered".into()),
            path_mtu: Some(1500),
        };
        for (a, b, good) in [
            ("h1", "h2", true),
            ("h2", "h1", true),
            ("h2", "h3", true),
            ("h3", "h2", true),
            ("h3", "h1", false),
        ] {
            let r = v.nodes.get_mut(a).unwrap().record_mut().unwrap();
            r.health.insert(b, ok(good));
            r.capabilities = vec![crate::relay::CAPABILITY.into()];
        }
        let mine: crate::peer_map::PeerMap<crate::cluster::PathHealth> =
            [("h2".to_string(), ok(true)), ("h3".to_string(), ok(false))].into();
        let d = run_judged(&v, &mine);
        match &d.paths["h3"] {
            Path::Relay(r) => {
                assert_eq!(r.via, "h2");
                assert_eq!(*r.direct, Path::Vxlan);
                assert_eq!(*r.hop, Path::Routed);
                assert!(r.why.contains("UDP 4789"), "{}", r.why);
            }
            o => panic!("{o:?}"),
        }
        let find = |dst: &str, table: u32| {
            d.routes
                .iter()
                .find(|r| r.dst.to_string() == dst && r.table == table)
                .unwrap_or_else(|| panic!("no route to {dst} in {table}: {:?}", d.routes))
        };
        // h3's block via h2 as a router, at the far hop's (VXLAN) MTU.
        let r3 = find("10.244.3.0/24", MAIN_TABLE);
        assert_eq!(
            (r3.via.to_string().as_str(), r3.dev.as_str(), r3.mtu),
            ("192.168.10.12", "eth1", Some(1450))
        );
        // Pods' packets to h3 itself too.
        assert_eq!(
            find("192.168.20.11/32", POD_TABLE).via.to_string(),
            "192.168.10.12"
        );
        // The direct path stays for the probes: h3's VTEP address through
        // the tunnel, with its neighbour and forwarding entries.
        let probe = find("10.244.3.0/32", MAIN_TABLE);
        assert_eq!(
            (probe.via.to_string().as_str(), probe.dev.as_str()),
            ("10.244.3.0", VXLAN_DEV)
        );
        assert_eq!(d.fdb.len(), 1);
        assert!(d.stuck.is_empty());
        // h2 gone bad as well: no relay is left, the direct routes stay,
        // and why is said.
        let mine: crate::peer_map::PeerMap<crate::cluster::PathHealth> =
            [("h2".to_string(), ok(false)), ("h3".to_string(), ok(false))].into();
        let d = run_judged(&v, &mine);
        assert_eq!(d.paths["h3"], Path::Vxlan);
        assert!(
            d.stuck["h3"].contains("no relay: h2: h1–h2 failing"),
            "{:?}",
            d.stuck
        );
    }

    #[test]
    fn measured_path_mtu_is_pinned_on_the_peer_routes() {
        let pmtu: BTreeMap<String, u32> =
            [("h2".to_string(), 1400), ("h3".to_string(), 1400)].into();
        let d = run_with(&view(), Backend::Auto, [2; 6], &[], &pmtu);
        let mtu_of = |dst: &str| {
            d.routes
                .iter()
                .find(|r| r.dst.to_string() == dst)
                .unwrap()
                .mtu
        };
        assert_eq!(mtu_of("10.244.2.0/24"), Some(1400), "routed: the path MTU");
        assert_eq!(
            mtu_of("10.244.3.0/24"),
            Some(1350),
            "vxlan: path MTU less the overhead"
        );
        assert_eq!(mtu_of("192.168.20.11/32"), Some(1350));
        // The full MTU measured: nothing pinned on routed, the tunnel's on VXLAN.
        let pmtu: BTreeMap<String, u32> =
            [("h2".to_string(), 1500), ("h3".to_string(), 1500)].into();
        let d = run_with(&view(), Backend::Vxlan, [2; 6], &[], &pmtu);
        assert!(d.routes.iter().all(|r| r.mtu.is_none()));
    }
}
