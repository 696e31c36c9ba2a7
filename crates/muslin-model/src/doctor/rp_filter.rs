//! Pitfall 6: strict reverse-path filtering that drops a peer's packets.
//! Muslin sets what its own interfaces need, so strict mode alone is fine;
//! it bites on the underlay of a multi-NIC host whose route back to a peer
//! leaves by another interface: the kernel then drops every packet from
//! that peer as spoofed, and the peer looks dead for no visible reason.

use super::{AgentView, Finding, HostFacts};

pub const CHECK: &str = "rp-filter";

pub fn check(host: &HostFacts, agent: AgentView<'_>) -> Vec<Finding> {
    let Some(c) = agent.ok().and_then(|s| s.cluster.as_deref()) else {
        return vec![Finding::ok(
            CHECK,
            "no cluster view (agent down or running alone): no underlay to check",
        )];
    };
    let ifname = c.underlay_if.as_str();
    if ifname.is_empty() {
        return vec![Finding::ok(
            CHECK,
            "the agent has not chosen its underlay yet",
        )];
    }
    let key = |k: &str| super::conf_key(k, "rp_filter");
    let (Some(all), Some(own)) = (host.sysctl_u64(&key("all")), host.sysctl_u64(&key(ifname)))
    else {
        return vec![Finding::warning(
            CHECK,
            format!("could not read {} or {}", key("all"), key(ifname)),
            "run doctor as root in the host's network namespace, where the sysctls show its interfaces",
        )];
    };
    // The kernel applies the larger of the two.
    let mode = all.max(own);
    let settings = format!("all={all}, {ifname}={own}");
    if mode != 1 {
        let name = if mode == 0 { "off" } else { "loose" };
        return vec![Finding::ok(
            CHECK,
            format!("rp_filter on underlay {ifname} is {name} ({settings})"),
        )];
    }
    let peers: Vec<(&str, std::net::IpAddr)> = c
        .nodes
        .iter()
        .filter(|n| n.path != "self")
        .filter_map(|n| Some((n.name.as_str(), n.address?)))
        .collect();
    let asymmetric: Vec<String> = peers
        .iter()
        .filter_map(|(name, a)| {
            let r = host.route_to.get(a)?;
            (r.dev != ifname).then(|| format!("{name} ({a}) leaves by {}", r.dev))
        })
        .collect();
    if asymmetric.is_empty() {
        let checked = peers
            .iter()
            .filter(|(_, a)| host.route_to.contains_key(a))
            .count();
        return vec![Finding::ok(
            CHECK,
            format!(
                "strict rp_filter on underlay {ifname} ({settings}); the route back to each of {checked} peer{} leaves by {ifname}, so Muslin copes",
                if checked == 1 { "" } else { "s" }
            ),
        )];
    }
    vec![Finding::problem(
        CHECK,
        format!(
            "strict rp_filter on underlay {ifname} ({settings}), but the route back to {}: packets from {} arriving on {ifname} are dropped",
            asymmetric.join(", "),
            if asymmetric.len() == 1 { "that peer" } else { "those peers" }
        ),
        format!(
            "set loose mode (`sysctl -w net.ipv4.conf.{ifname}.rp_filter=2`, and in /etc/sysctl.d to keep it) or route the peers' addresses via {ifname}"
        ),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::tests::{host, status};
    use crate::doctor::{Level, RouteGet};

    fn facts(all: &str, eth1: &str, to_peer: &str) -> HostFacts {
        let mut h = host();
        h.sysctls
            .insert("net.ipv4.conf.all.rp_filter".into(), all.into());
        h.sysctls
            .insert("net.ipv4.conf.eth1.rp_filter".into(), eth1.into());
        h.route_to.insert(
            "192.168.56.12".parse().unwrap(),
            RouteGet {
                dev: to_peer.into(),
                src: None,
                gateway: None,
                mtu: None,
            },
        );
        h
    }

    fn me() -> crate::api::NodeStatus {
        status(("h1", "192.168.56.11"), &[("h2", "192.168.56.12")])
    }

    #[test]
    fn strict_with_an_asymmetric_route_back_is_a_problem_naming_peer_and_devices() {
        let f = check(&facts("1", "1", "eth0"), Ok(&me()));
        assert_eq!(f[0].level, Level::Problem, "{f:?}");
        for w in ["h2 (192.168.56.12) leaves by eth0", "underlay eth1"] {
            assert!(f[0].saw.contains(w), "{w}: {}", f[0].saw);
        }
        assert!(
            f[0].fix.contains("net.ipv4.conf.eth1.rp_filter=2"),
            "{}",
            f[0].fix
        );
        // Strict through `all` alone is strict.
        assert_eq!(
            check(&facts("1", "0", "eth0"), Ok(&me()))[0].level,
            Level::Problem
        );
    }

    #[test]
    fn strict_with_symmetric_routes_is_ok() {
        let f = check(&facts("1", "1", "eth1"), Ok(&me()));
        assert_eq!(f[0].level, Level::Ok, "{f:?}");
        assert!(f[0].saw.contains("strict"), "{}", f[0].saw);
    }

    #[test]
    fn loose_or_off_is_ok_whatever_the_routes() {
        for (all, eth1) in [("1", "2"), ("2", "0"), ("0", "0")] {
            let f = check(&facts(all, eth1, "eth0"), Ok(&me()));
            assert_eq!(f[0].level, Level::Ok, "{all}/{eth1}: {f:?}");
        }
    }

    #[test]
    fn without_a_cluster_or_the_sysctls_it_says_so() {
        assert_eq!(check(&host(), Err("down"))[0].level, Level::Ok);
        assert_eq!(check(&host(), Ok(&me()))[0].level, Level::Warning);
    }
}
