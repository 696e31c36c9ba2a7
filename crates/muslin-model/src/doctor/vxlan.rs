//! Pitfalls 13 and 4: the VXLAN port blocked between this host and a peer
//! (hypervisors and firewalls filter UDP 4789 while letting gossip
//! through), and kernels before 5.7 that corrupt VXLAN UDP checksums when
//! transmit checksum offload is on. The first is told by the agent's
//! data-path probes, the second by the kernel release and our devices'
//! offload state.

use super::{AgentView, Finding, HostFacts, LinkFact};
use crate::api::PeerStatus;

pub const PORT: &str = "vxlan-port";
pub const CHECKSUM: &str = "vxlan-checksum";

/// The first kernel release without the checksum bug.
const FIXED_IN: (u32, u32) = (5, 7);

pub fn check(host: &HostFacts, agent: AgentView<'_>) -> Vec<Finding> {
    let mut out = port(agent);
    out.extend(checksum(host));
    out
}

/// Whether kernel `release` (`uname -r`) corrupts VXLAN UDP checksums with
/// transmit checksum offload on; `None` when the release cannot be read.
pub fn checksum_bug(release: &str) -> Option<bool> {
    let mut parts = release.trim().split(['.', '-', '+', '_']);
    let major: u32 = parts.next()?.parse().ok()?;
    // "5.4.0" and "5.4-rc1" alike: only the leading digits of the minor.
    let minor = parts.next()?;
    let digits: String = minor.chars().take_while(char::is_ascii_digit).collect();
    let minor: u32 = digits.parse().ok()?;
    Some((major, minor) < FIXED_IN)
}

/// The peer's direct data path, when its probes go unanswered although
/// the peer answers on the underlay: the prober words this as `UDP PORT
/// to ADDR unanswered, gossip fine` for a VXLAN path.
fn blocked_port(p: &PeerStatus) -> Option<&str> {
    let cause = p.data_path.strip_prefix("failing: ")?;
    let rest = cause.strip_prefix("UDP ")?;
    rest.contains("gossip fine")
        .then(|| rest.split_whitespace().next().unwrap_or("?"))
}

/// Whether the peer is reached, or probed, over VXLAN.
fn vxlan_peer(p: &PeerStatus) -> bool {
    p.path == "vxlan" || blocked_port(p).is_some()
}

fn port(agent: AgentView<'_>) -> Vec<Finding> {
    let Some(c) = agent.ok().and_then(|s| s.cluster.as_deref()) else {
        return vec![Finding::ok(
            PORT,
            "no cluster view (agent down or running alone)",
        )];
    };
    let peers: Vec<&PeerStatus> = c
        .nodes
        .iter()
        .filter(|n| n.path != "self" && vxlan_peer(n))
        .collect();
    if peers.is_empty() {
        return vec![Finding::ok(
            PORT,
            format!(
                "no peer is reached over VXLAN (backend {}): nothing to probe",
                c.backend
            ),
        )];
    }
    let mut out = Vec::new();
    let mut fine = Vec::new();
    for p in &peers {
        let at = p
            .address
            .map(|a| a.to_string())
            .unwrap_or_else(|| "?".into());
        match blocked_port(p) {
            Some(port) => {
                // A relay keeps pods' traffic flowing, but the direct port
                // stays blocked: every packet takes a detour through
                // another host, and that host's loss is this peer's too.
                let relayed = match &p.relay {
                    Some(via) => format!(
                        "; pods' traffic is relayed via {via} and works, but the direct path is blocked"
                    ),
                    None => "; no relay carries pods' traffic meanwhile: pods cannot reach it".into(),
                };
                out.push(Finding::problem(
                    PORT,
                    format!(
                        "VXLAN port UDP {port} to peer {} ({at}) is blocked: its gossip and probes answer, its data path does not ({}){relayed}",
                        p.name,
                        p.data_path.trim_start_matches("failing: ")
                    ),
                    format!(
                        "allow UDP {port} in both directions between this host and {} (their firewalls, security groups and any filter in between), or give every node a port that passes",
                        p.name
                    ),
                ));
            }
            None if p.data_path.starts_with("failing: ")
                && p.data_path.contains("answering again") =>
            {
                out.push(Finding::warning(
                    PORT,
                    format!("VXLAN to peer {} ({at}) is recovering: {}", p.name, p.data_path),
                    "wait a few seconds; if it keeps failing, look for a firewall that blocks VXLAN now and then",
                ));
            }
            None if p.data_path.starts_with("failing: ") => {
                out.push(Finding::warning(
                    PORT,
                    format!(
                        "cannot tell whether VXLAN to peer {} ({at}) is blocked: {}",
                        p.name, p.data_path
                    ),
                    format!("check that {} is up and reachable from this host", p.name),
                ));
            }
            None if p.data_path == "ok" => fine.push(p.name.as_str()),
            None => out.push(Finding::ok(
                PORT,
                format!("VXLAN to peer {} ({at}) not probed long enough yet", p.name),
            )),
        }
    }
    if !fine.is_empty() {
        out.push(Finding::ok(
            PORT,
            format!(
                "VXLAN answers to {} peer(s): {}",
                fine.len(),
                fine.join(", ")
            ),
        ));
    }
    out
}

/// Our VXLAN devices: the default network's and each network's.
fn ours(host: &HostFacts) -> Vec<&LinkFact> {
    host.links
        .iter()
        .filter(|l| l.kind.as_deref() == Some("vxlan") && l.name.starts_with(crate::IFACE_PREFIX))
        .collect()
}

fn offload_state(l: &LinkFact) -> String {
    match l.tx_checksum {
        Some(true) => format!("{}: tx checksum offload on", l.name),
        Some(false) => format!("{}: tx checksum offload off", l.name),
        None => format!("{}: tx checksum offload unreadable", l.name),
    }
}

fn checksum(host: &HostFacts) -> Vec<Finding> {
    let release = host.kernel_release.trim();
    let devices = ours(host);
    let states = if devices.is_empty() {
        "no VXLAN device of ours".to_string()
    } else {
        devices
            .iter()
            .map(|l| offload_state(l))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let names = |f: fn(&LinkFact) -> bool| -> Vec<&str> {
        devices
            .iter()
            .filter(|l| f(l))
            .map(|l| l.name.as_str())
            .collect()
    };
    let on = names(|l| l.tx_checksum == Some(true));
    let unread = names(|l| l.tx_checksum.is_none());
    let fix = |devs: &[&str]| {
        format!(
            "turn it off with `ethtool -K {} tx off` (the agent does so when it creates the device and on every reconcile: is it running this version?), or upgrade to Linux 5.7 or later",
            devs.join("/")
        )
    };
    let finding = match checksum_bug(release) {
        Some(false) => Finding::ok(
            CHECKSUM,
            format!("kernel {release} is not affected by the VXLAN checksum bug (fixed in 5.7); {states}"),
        ),
        Some(true) if !on.is_empty() => Finding::problem(
            CHECKSUM,
            format!(
                "kernel {release} corrupts VXLAN UDP checksums with tx checksum offload on (fixed in 5.7), and it is on: {states}; expect pod connections to stall for a minute"
            ),
            fix(&on),
        ),
        Some(true) if !unread.is_empty() => Finding::warning(
            CHECKSUM,
            format!(
                "kernel {release} corrupts VXLAN UDP checksums with tx checksum offload on (fixed in 5.7); could not read it: {states}"
            ),
            format!("check with `ethtool -k {}`", unread.join("/")),
        ),
        Some(true) if devices.is_empty() => Finding::ok(
            CHECKSUM,
            format!("kernel {release} has the VXLAN checksum bug (fixed in 5.7), but {states}: the agent turns offload off on each one it creates"),
        ),
        Some(true) => Finding::ok(
            CHECKSUM,
            format!("kernel {release} has the VXLAN checksum bug (fixed in 5.7); workaround applied: {states}"),
        ),
        None if !on.is_empty() => Finding::warning(
            CHECKSUM,
            format!(
                "cannot tell from kernel release {release:?} whether it has the VXLAN checksum bug (fixed in 5.7): {states}"
            ),
            fix(&on),
        ),
        None => Finding::ok(
            CHECKSUM,
            format!("cannot tell from kernel release {release:?} whether it has the VXLAN checksum bug, but {states}"),
        ),
    };
    vec![finding]
}

#[cfg(test)]
mod tests {
    use super::super::tests::{host, status};
    use super::super::Level;
    use super::*;

    #[test]
    fn kernels_before_5_7_have_the_checksum_bug() {
        for (release, bug) in [
            ("4.19.0-21-amd64", Some(true)),
            ("5.4.0-150-generic", Some(true)),
            ("5.6.19", Some(true)),
            ("3.10.0-1160.el7.x86_64", Some(true)),
            ("5.7.0", Some(false)),
            ("5.7-rc1", Some(false)),
            ("5.10.0-28-cloud-amd64", Some(false)),
            ("6.18.0", Some(false)),
            ("6.1.0+", Some(false)),
            ("10.0", Some(false)),
            ("", None),
            ("linux", None),
            ("5", None),
            ("5.x", None),
        ] {
            assert_eq!(checksum_bug(release), bug, "{release:?}");
        }
    }

    fn with_vxlan(release: &str, tx: Option<bool>) -> HostFacts {
        let mut h = host();
        h.kernel_release = release.into();
        h.links.push(LinkFact {
            name: "msl-vxlan".into(),
            kind: Some("vxlan".into()),
            mtu: 1450,
            up: true,
            tx_checksum: tx,
        });
        // Not ours: never judged.
        h.links.push(LinkFact {
            name: "flannel.1".into(),
            kind: Some("vxlan".into()),
            mtu: 1450,
            up: true,
            tx_checksum: Some(true),
        });
        h
    }

    #[test]
    fn offload_on_an_affected_kernel_is_a_problem_and_off_is_the_workaround() {
        let f = checksum(&with_vxlan("5.4.0-150-generic", Some(true)));
        assert_eq!(f[0].level, Level::Problem, "{f:?}");
        assert!(
            f[0].saw.contains("msl-vxlan: tx checksum offload on"),
            "{}",
            f[0].saw
        );
        assert!(
            f[0].fix.contains("ethtool -K msl-vxlan tx off"),
            "{}",
            f[0].fix
        );
        let f = checksum(&with_vxlan("5.4.0-150-generic", Some(false)));
        assert_eq!(f[0].level, Level::Ok);
        assert!(f[0].saw.contains("workaround applied"), "{}", f[0].saw);
        let f = checksum(&with_vxlan("6.18.0", Some(true)));
        assert_eq!(f[0].level, Level::Ok);
        assert!(f[0].saw.contains("not affected"), "{}", f[0].saw);
        assert!(
            f[0].saw.contains("msl-vxlan: tx checksum offload on"),
            "{}",
            f[0].saw
        );
        assert!(!f[0].saw.contains("flannel"), "{}", f[0].saw);
        let f = checksum(&with_vxlan("?", Some(true)));
        assert_eq!(f[0].level, Level::Warning);
        assert_eq!(
            checksum(&with_vxlan("5.4.0", None))[0].level,
            Level::Warning
        );
    }

    fn vxlan_status() -> crate::api::NodeStatus {
        let mut s = status(
            ("h1", "192.168.56.11"),
            &[("h2", "192.168.56.12"), ("h3", "192.168.56.13")],
        );
        let c = s.cluster.as_mut().unwrap();
        c.backend = "vxlan".into();
        for n in c.nodes.iter_mut().filter(|n| n.path != "self") {
            n.path = "vxlan".into();
        }
        s
    }

    #[test]
    fn a_blocked_port_to_a_live_peer_is_a_problem_naming_peer_and_port() {
        let mut s = vxlan_status();
        let f = port(Ok(&s));
        assert!(f.iter().all(|x| x.level == Level::Ok), "{f:?}");
        assert!(f[0].saw.contains("h2, h3"), "{}", f[0].saw);
        let h2 = &mut s.cluster.as_mut().unwrap().nodes[1];
        h2.data_path = "failing: UDP 4789 to 192.168.56.12 unanswered, gossip fine".into();
        let f = port(Ok(&s));
        let p = f.iter().find(|x| x.level == Level::Problem).unwrap();
        assert!(
            p.saw.contains("UDP 4789 to peer h2 (192.168.56.12)"),
            "{}",
            p.saw
        );
        assert!(p.saw.contains("no relay"), "{}", p.saw);
        assert!(p.fix.contains("allow UDP 4789"), "{}", p.fix);
        assert!(f
            .iter()
            .any(|x| x.level == Level::Ok && x.saw.contains("h3")));
        // Relayed because of it: traffic flows, the port is still blocked.
        let h2 = &mut s.cluster.as_mut().unwrap().nodes[1];
        h2.path = "via h3".into();
        h2.relay = Some("h3".into());
        let f = port(Ok(&s));
        let p = f.iter().find(|x| x.level == Level::Problem).unwrap();
        assert!(p.saw.contains("relayed via h3 and works"), "{}", p.saw);
    }

    #[test]
    fn a_silent_peer_or_no_vxlan_peer_is_not_a_blocked_port() {
        let mut s = vxlan_status();
        let h2 = &mut s.cluster.as_mut().unwrap().nodes[1];
        h2.data_path = "failing: 192.168.56.12 does not answer on the underlay either".into();
        let f = port(Ok(&s));
        assert_eq!(super::super::worst(&f), Level::Warning, "{f:?}");
        let routed = status(("h1", "192.168.56.11"), &[("h2", "192.168.56.12")]);
        let f = port(Ok(&routed));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].level, Level::Ok);
        assert!(
            f[0].saw.contains("no peer is reached over VXLAN"),
            "{}",
            f[0].saw
        );
    }
}
