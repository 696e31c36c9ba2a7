//! Gathers what `cause::judge` needs about a failing pair: the pair is
//! probed again between two readings of the drop counters of every
//! namespace that could drop it, then its path is walked both ways with
//! `ip route get` and `ip neigh`, namespace by namespace. Only commands
//! that read; nothing of the lab changes.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::process::Command;
use std::time::Duration;

use nix::sched::{setns, CloneFlags};

use crate::cause::{self, Drops, Evidence, Hop, Table};
use crate::probe::{self, Proto};
use crate::registry::LabRecord;

/// At most this many failing pairs are looked into per check: each costs
/// a probe and a few dozen reading commands.
pub const MAX_PAIRS: usize = 8;
/// How long the repeated probe waits: the pair already failed once.
const REPROBE: Duration = Duration::from_millis(500);
/// A path longer than this (routers in a row) is not followed further.
const MAX_HOPS: usize = 8;

/// A namespace on a path, as the matrix names it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Place {
    label: String,
    ns: String,
    /// The host a container runs on.
    host: Option<String>,
}

/// Who is where in a lab: nodes by label and by address, containers'
/// hosts.
pub struct Map {
    nodes: BTreeMap<String, String>,
    addresses: BTreeMap<IpAddr, String>,
    containers: BTreeMap<String, (String, String)>,
    routers: Vec<String>,
    switch_ns: String,
}

impl Map {
    pub fn of(rec: &LabRecord) -> Map {
        let lab = &rec.plan.name;
        Map {
            nodes: rec
                .plan
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.ns.clone()))
                .collect(),
            addresses: rec
                .plan
                .nodes
                .iter()
                .flat_map(|n| n.nics.iter().map(|x| (x.address.addr(), n.name.clone())))
                .collect(),
            containers: rec
                .containers
                .iter()
                .map(|c| {
                    (
                        format!("{}/{}", c.host, c.name),
                        (
                            crate::names::container_ns(lab, &c.host, &c.name),
                            c.host.clone(),
                        ),
                    )
                })
                .collect(),
            routers: rec
                .plan
                .nodes
                .iter()
                .filter(|n| n.router)
                .map(|n| n.name.clone())
                .collect(),
            switch_ns: rec.plan.switch_ns.clone(),
        }
    }

    fn place(&self, label: &str) -> Option<Place> {
        if let Some((ns, host)) = self.containers.get(label) {
            return Some(Place {
                label: label.to_string(),
                ns: ns.clone(),
                host: Some(host.clone()),
            });
        }
        Some(Place {
            label: label.to_string(),
            ns: self.nodes.get(label)?.clone(),
            host: None,
        })
    }

    fn node(&self, label: &str) -> Option<Place> {
        self.nodes.get(label).map(|ns| Place {
            label: label.to_string(),
            ns: ns.clone(),
            host: None,
        })
    }

    /// Namespaces whose firewall could drop a pair: every node's (routers
    /// and hosts hold Muslin's tables) and the switch's (the lab's cuts).
    /// Reading them all keeps the judgement simple: a counter that rose
    /// while only this pair was probed again is this pair's.
    fn firewalls(&self, on_path: &[String]) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = on_path
            .iter()
            .filter_map(|l| Some((l.clone(), self.nodes.get(l)?.clone())))
            .collect();
        v.push(("switch".into(), self.switch_ns.clone()));
        v
    }
}

fn ip(ns: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(["-n", ns, "-j"])
        .args(args)
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn drops(at: &str, ns: &str) -> Vec<Drops> {
    Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-j", "list", "ruleset"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| cause::parse_drops(at, &String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_default()
}

fn route(ns: &str, to: IpAddr, from: Option<(IpAddr, &str)>) -> Result<cause::Route, String> {
    let to = to.to_string();
    let text = match from {
        Some((src, dev)) => {
            let src = src.to_string();
            ip(ns, &["route", "get", &to, "from", &src, "iif", dev])
        }
        None => ip(ns, &["route", "get", &to]),
    }
    .map_err(|e| cause::route_error(&e))?;
    cause::parse_route(&text)
}

/// The next hop's neighbour state; none where no entry is needed (a
/// local route, a WireGuard device) or there is none.
fn neighbour(ns: &str, r: &cause::Route, next: IpAddr) -> Option<String> {
    if r.kind == "local" || r.dev.starts_with("msl-wg") {
        return None;
    }
    let next = next.to_string();
    cause::parse_neighbour(&ip(ns, &["neigh", "show", &next, "dev", &r.dev]).ok()?)
}

fn tunnel(dev: &str) -> bool {
    dev.starts_with("msl-vx") || dev.starts_with("msl-wg")
}

/// The path from `start` to `to` (of a pair whose other end is on
/// `far_host`, where a tunnel leads), namespace by namespace. From the
/// second namespace on, packets are forwarded: the route is asked for
/// them as they arrive (`from SRC iif DEV`), on the default network only
/// (other networks' packets are routed by a mark `ip route get` cannot
/// see, so their path is not followed past its first namespace).
fn walk(
    map: &Map,
    start: Place,
    src: IpAddr,
    to: IpAddr,
    far_host: Option<&str>,
    follow: bool,
) -> Vec<Hop> {
    let mut hops: Vec<Hop> = Vec::new();
    let mut here = start;
    let mut first = true;
    for _ in 0..MAX_HOPS {
        let arrived_on = if first || here.host.is_some() {
            None
        } else {
            route(&here.ns, src, None).ok().map(|r| r.dev)
        };
        let r = route(&here.ns, to, arrived_on.as_deref().map(|d| (src, d)));
        let mut hop = Hop {
            at: here.label.clone(),
            to,
            route: r.clone(),
            neighbour: None,
        };
        let Ok(r) = r else {
            hops.push(hop);
            break;
        };
        let next = r.gateway.unwrap_or(to);
        hop.neighbour = neighbour(&here.ns, &r, next);
        hops.push(hop);
        if !follow || r.kind == "local" {
            break;
        }
        let step = if let Some(h) = &here.host {
            map.node(h)
        } else if tunnel(&r.dev) {
            far_host
                .filter(|h| *h != here.label)
                .and_then(|h| map.node(h))
        } else if next == to {
            None
        } else {
            map.addresses.get(&next).and_then(|n| map.node(n))
        };
        match step {
            Some(p) if p != here => here = p,
            _ => break,
        }
        first = false;
    }
    hops
}

/// A failing pair to look into.
pub struct Failing<'a> {
    pub from: &'a str,
    pub to: &'a str,
    /// The source's address in the pair's network.
    pub src: IpAddr,
    pub address: IpAddr,
    pub default_network: bool,
    /// The protocol to probe again (one that failed).
    pub proto: Proto,
    pub port: u16,
}

/// Probes again from inside `ns`, on a thread of its own (entering a
/// namespace is per thread).
fn reprobe(ns: &str, f: &Failing) -> bool {
    let path = format!("/var/run/netns/{ns}");
    let (address, port, proto) = (f.address, f.port, f.proto);
    std::thread::scope(|s| {
        s.spawn(|| {
            let Ok(file) = File::open(&path) else {
                return false;
            };
            if setns(file.as_fd(), CloneFlags::CLONE_NEWNET).is_err() {
                return false;
            }
            probe::check(address, port, proto, REPROBE).is_ok()
        })
        .join()
        .unwrap_or(false)
    })
}

/// The pair's family's neighbour table now. It is the kernel's, seen only
/// from the machine's first network namespace: elsewhere, none.
pub fn table(address: IpAddr) -> Option<(String, Table)> {
    let (family, file, limits) = match address {
        IpAddr::V4(_) => ("ipv4", "/proc/net/stat/arp_cache", 0),
        IpAddr::V6(_) => ("ipv6", "/proc/net/stat/ndisc_cache", 1),
    };
    let m = crate::neigh_sys::read().ok()?;
    let limit = [m.ipv4, m.ipv6][limits][2];
    let text = std::fs::read_to_string(file).ok()?;
    Some((family.to_string(), cause::parse_stat(&text, limit)?))
}

/// What can be seen of a failing pair. `before` is the neighbour table
/// as it was when the check began.
pub fn evidence(map: &Map, f: &Failing, before: Option<&(String, Table)>) -> Evidence {
    let (Some(src), Some(dst)) = (map.place(f.from), map.place(f.to)) else {
        return Evidence::default();
    };
    let src_host = src.host.clone().unwrap_or_else(|| src.label.clone());
    let dst_host = dst.host.clone().unwrap_or_else(|| dst.label.clone());
    // Routers can be on any path; hosts only on their own pairs'.
    let mut on_path: Vec<String> = vec![src_host.clone(), dst_host.clone()];
    on_path.extend(map.routers.iter().cloned());
    on_path.dedup();
    let walls = map.firewalls(&on_path);
    let read = || -> Vec<Drops> { walls.iter().flat_map(|(l, ns)| drops(l, ns)).collect() };
    let first = read();
    let _ = reprobe(&src.ns, f);
    let drops = cause::risen(&first, &read());
    let mut hops = walk(
        map,
        src.clone(),
        f.src,
        f.address,
        Some(&dst_host),
        f.default_network,
    );
    hops.extend(walk(
        map,
        dst,
        f.address,
        f.src,
        Some(&src_host),
        f.default_network,
    ));
    let table = before
        .zip(table(f.address))
        .filter(|((a, _), (b, _))| a == b)
        .map(|((family, b), (_, a))| (family.clone(), *b, a));
    Evidence { hops, drops, table }
}
