//! Pitfall 3 and its cause: small requests work and large responses hang
//! when a path carries less than the pod MTU and the "fragmentation
//! needed" errors that would say so never arrive. `mtu-mismatch` names the
//! mismatch itself (a smaller link between two hosts, or hosts on one
//! segment that disagree on its MTU); `path-mtu` says whether the pods are
//! protected from it by a route MTU pinned on this host, which answers an
//! oversized packet with the ICMP error at once.

use super::{AgentView, Finding, HostFacts, RouteFact};
use crate::api::{ClusterStatus, PeerStatus};
use crate::dataplane::VXLAN_OVERHEAD;

pub const MISMATCH: &str = "mtu-mismatch";
pub const PATH: &str = "path-mtu";

pub fn check(host: &HostFacts, agent: AgentView<'_>) -> Vec<Finding> {
    let Some((pod_mtu, c)) = agent
        .ok()
        .and_then(|s| Some((s.mtu, s.cluster.as_deref()?)))
    else {
        return vec![
            Finding::ok(MISMATCH, "no cluster view (agent down or running alone)"),
            Finding::ok(PATH, "no cluster view (agent down or running alone)"),
        ];
    };
    let mut out = mismatch(c);
    out.extend(path(host, pod_mtu, c));
    out
}

fn peers(c: &ClusterStatus) -> impl Iterator<Item = &PeerStatus> {
    c.nodes.iter().filter(|n| n.path != "self")
}

fn at(p: &PeerStatus) -> String {
    p.address
        .map(|a| a.to_string())
        .unwrap_or_else(|| "?".into())
}

fn mismatch(c: &ClusterStatus) -> Vec<Finding> {
    let ours = c.underlay_mtu;
    let mut out = Vec::new();
    let mut measured = 0;
    for p in peers(c) {
        let theirs = p.mtu;
        // A peer that published no MTU is judged against ours alone.
        let ends = if theirs > 0 { ours.min(theirs) } else { ours };
        if let Some(pm) = p.path_mtu {
            measured += 1;
            if pm < ends {
                out.push(Finding::warning(
                    MISMATCH,
                    format!(
                        "the path to peer {} ({}) carries at most {pm}-byte packets, below both ends' underlay MTU (ours {ours} on {}, {}'s {}): a router or link in between has a smaller MTU",
                        p.name,
                        at(p),
                        c.underlay_if,
                        p.name,
                        if theirs > 0 { theirs.to_string() } else { "unknown".into() }
                    ),
                    format!(
                        "raise that link's MTU to {ends}, or keep it: Muslin pins {pm} less the tunnel's overhead on the routes to {} (see path-mtu)",
                        p.name
                    ),
                ));
            }
        }
        // On one segment no router answers an oversized frame with an
        // ICMP error: the larger side's big frames just vanish.
        if p.path == "routed" && theirs > 0 && theirs != ours {
            out.push(Finding::warning(
                MISMATCH,
                format!(
                    "peer {} ({}) shares our L2 segment with underlay MTU {theirs}, ours is {ours} on {}: frames above {} are dropped on it without an error",
                    p.name,
                    at(p),
                    c.underlay_if,
                    ours.min(theirs)
                ),
                format!(
                    "set the same MTU ({}) on every host's NIC on that segment",
                    ours.min(theirs)
                ),
            ));
        }
    }
    if out.is_empty() {
        out.push(Finding::ok(
            MISMATCH,
            match measured {
                0 => format!("no path measured yet; underlay MTU {ours} on {}", c.underlay_if),
                n => format!(
                    "{n} path(s) measured, each carrying the underlay MTU of both ends ({ours} on {})",
                    c.underlay_if
                ),
            },
        ));
    }
    out
}

/// What the path to `p` costs a pod's packet: the tunnel's headers.
fn overhead(p: &PeerStatus) -> Option<(u32, &'static str)> {
    match p.path.as_str() {
        "routed" => Some((0, "routed")),
        "vxlan" => Some((VXLAN_OVERHEAD, "VXLAN")),
        "wireguard" => Some((
            p.address
                .map(crate::encryption::overhead)
                .unwrap_or(crate::encryption::OVERHEAD_V4),
            "WireGuard",
        )),
        // Relayed or unreachable: no route of ours goes to it directly.
        _ => None,
    }
}

/// The MTU the kernel enforces on `r`: its own metric, else its device's.
fn effective(host: &HostFacts, r: &RouteFact) -> Option<u32> {
    r.mtu
        .or_else(|| host.link(r.dev.as_deref()?).map(|l| l.mtu))
}

fn path(host: &HostFacts, pod_mtu: u32, c: &ClusterStatus) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut fine = Vec::new();
    for p in peers(c) {
        let (Some(pm), Some((over, kind))) = (p.path_mtu, overhead(p)) else {
            continue;
        };
        let fits = pm.saturating_sub(over);
        let carried = match over {
            0 => format!("{pm}"),
            _ => format!("{pm} ({fits} inside {kind})"),
        };
        if pod_mtu <= fits {
            fine.push(format!("{} {carried}", p.name));
            continue;
        }
        if p.blocks.is_empty() {
            fine.push(format!("{} {carried}, no pods there", p.name));
            continue;
        }
        let routes: Vec<&RouteFact> = host
            .routes
            .iter()
            .filter(|r| r.protocol == crate::ROUTE_PROTOCOL && r.kind == "unicast")
            .filter(|r| p.blocks.iter().any(|b| b.contains(&r.dst)))
            .collect();
        let saw = format!(
            "the path to peer {} ({}) carries {carried}, less than the pod MTU {pod_mtu}",
            p.name,
            at(p)
        );
        if routes.is_empty() {
            out.push(Finding::warning(
                PATH,
                format!(
                    "{saw}, and this host has no route of ours to its blocks ({})",
                    p.blocks
                        .iter()
                        .map(|b| b.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                "read the agent's log for why it programs no route to that peer",
            ));
            continue;
        }
        let loose: Vec<String> = routes
            .iter()
            .filter(|r| effective(host, r).is_none_or(|m| m > fits))
            .map(|r| match effective(host, r) {
                Some(m) if r.mtu.is_some() => format!("{} (mtu {m})", r.describe()),
                Some(m) => format!("{} (no MTU pinned; device MTU {m})", r.describe()),
                None => format!("{} (no MTU pinned)", r.describe()),
            })
            .collect();
        if loose.is_empty() {
            let pinned: Vec<String> = routes
                .iter()
                .map(|r| match r.mtu {
                    Some(m) => format!("{} mtu {m}", r.describe()),
                    None => format!("{} (device MTU fits)", r.describe()),
                })
                .collect();
            fine.push(format!(
                "{} {carried}, pinned: {}",
                p.name,
                pinned.join(", ")
            ));
        } else {
            out.push(Finding::problem(
                PATH,
                format!(
                    "{saw}, and route {} lets larger packets out: where the \"fragmentation needed\" error is filtered, pods' large packets to {} vanish and connections hang",
                    loose.join(", "),
                    p.name
                ),
                format!(
                    "pin the path MTU on the route (`ip route change ROUTE mtu {fits}`; the agent does so on its next reconcile: is it running?) or raise the smaller link's MTU"
                ),
            ));
        }
    }
    if out.is_empty() || !fine.is_empty() {
        out.push(Finding::ok(
            PATH,
            match fine.is_empty() {
                true => format!("pod MTU {pod_mtu}; no path measured yet"),
                false => format!("pod MTU {pod_mtu} fits: {}", fine.join("; ")),
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::{host, status};
    use super::super::{worst, Level, LinkFact};
    use super::*;

    /// h1 with peer h2 across a router whose link has MTU 1400, over VXLAN
    /// with backend auto (pods at 1500, the VXLAN routes pinned).
    fn across_a_small_link(pin: Option<u32>) -> (HostFacts, crate::api::NodeStatus) {
        let mut s = status(("h1", "192.168.10.11"), &[("h2", "192.168.20.12")]);
        s.mtu = 1500;
        let c = s.cluster.as_mut().unwrap();
        let h2 = &mut c.nodes[1];
        h2.path = "vxlan".into();
        h2.path_mtu = Some(1400);
        h2.blocks = vec!["10.244.2.0/24".parse().unwrap()];
        let mut h = host();
        h.links.push(LinkFact {
            name: "msl-vxlan".into(),
            kind: Some("vxlan".into()),
            mtu: 1450,
            up: true,
            tx_checksum: Some(true),
        });
        h.routes.push(RouteFact {
            dst: "10.244.2.0/24".parse().unwrap(),
            dev: Some("msl-vxlan".into()),
            gateway: Some("10.244.2.0".parse().unwrap()),
            protocol: crate::ROUTE_PROTOCOL,
            table: 254,
            kind: "unicast".into(),
            mtu: pin,
        });
        (h, s)
    }

    #[test]
    fn a_smaller_link_between_is_a_mismatch_and_a_pinned_route_is_ok() {
        let (h, s) = across_a_small_link(Some(1350));
        let f = check(&h, Ok(&s));
        let m: Vec<_> = f.iter().filter(|x| x.check == MISMATCH).collect();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].level, Level::Warning);
        assert!(
            m[0].saw
                .contains("peer h2 (192.168.20.12) carries at most 1400"),
            "{}",
            m[0].saw
        );
        assert!(
            m[0].saw.contains("ours 1500 on eth1, h2's 1500"),
            "{}",
            m[0].saw
        );
        let p: Vec<_> = f.iter().filter(|x| x.check == PATH).collect();
        assert_eq!(
            worst(
                &f.iter()
                    .filter(|x| x.check == PATH)
                    .cloned()
                    .collect::<Vec<_>>()
            ),
            Level::Ok
        );
        assert!(
            p[0].saw.contains("1400 (1350 inside VXLAN)"),
            "{}",
            p[0].saw
        );
        assert!(
            p[0].saw
                .contains("pinned: 10.244.2.0/24 via 10.244.2.0 dev msl-vxlan mtu 1350"),
            "{}",
            p[0].saw
        );
    }

    #[test]
    fn a_path_below_the_pod_mtu_without_a_pin_is_a_problem_naming_the_route() {
        let (h, s) = across_a_small_link(None);
        let f = path(&h, s.mtu, s.cluster.as_deref().unwrap());
        assert_eq!(f[0].level, Level::Problem, "{f:?}");
        assert!(f[0].saw.contains("peer h2 (192.168.20.12) carries 1400 (1350 inside VXLAN), less than the pod MTU 1500"), "{}", f[0].saw);
        assert!(
            f[0].saw.contains(
                "10.244.2.0/24 via 10.244.2.0 dev msl-vxlan (no MTU pinned; device MTU 1450)"
            ),
            "{}",
            f[0].saw
        );
        assert!(f[0].fix.contains("mtu 1350"), "{}", f[0].fix);
        // A pin that is still too large is no protection either.
        let (h, s) = across_a_small_link(Some(1400));
        assert_eq!(
            worst(&path(&h, s.mtu, s.cluster.as_deref().unwrap())),
            Level::Problem
        );
    }

    #[test]
    fn full_paths_and_a_pod_mtu_that_fits_are_ok() {
        let s = status(("h1", "192.168.56.11"), &[("h2", "192.168.56.12")]);
        let f = check(&host(), Ok(&s));
        assert!(f.iter().all(|x| x.level == Level::Ok), "{f:?}");
        // Pods whose MTU the tunnel carries need no pin.
        let (h, mut s) = across_a_small_link(None);
        s.mtu = 1350;
        assert_eq!(
            worst(&path(&h, s.mtu, s.cluster.as_deref().unwrap())),
            Level::Ok
        );
    }

    #[test]
    fn peers_on_one_segment_with_different_mtus_are_a_mismatch() {
        let mut s = status(("h1", "192.168.56.11"), &[("h2", "192.168.56.12")]);
        s.cluster.as_mut().unwrap().nodes[1].mtu = 9000;
        let f = mismatch(s.cluster.as_deref().unwrap());
        assert_eq!(f[0].level, Level::Warning);
        assert!(
            f[0].saw.contains("underlay MTU 9000, ours is 1500 on eth1"),
            "{}",
            f[0].saw
        );
        assert!(f[0].fix.contains("same MTU (1500)"), "{}", f[0].fix);
    }
}
