//! Pitfall 12: a pod CIDR that overlaps the host's own networks (defaults
//! such as 192.168.0.0/16 or 10.0.0.0/8). The agent refuses such a CIDR at
//! start and keeps blocks out of ranges some node routes; a route or
//! address added afterwards still shadows pods, which is what this finds.

use ipnet::IpNet;

use super::{AgentView, Finding, HostFacts, RouteFact};
use crate::cluster::reserved_in;

pub const CHECK: &str = "pod-cidr-overlap";

/// Route kinds that only describe this host's own addresses.
const OWN_KINDS: &[&str] = &["local", "broadcast", "anycast", "multicast"];

pub fn check(host: &HostFacts, agent: AgentView<'_>) -> Vec<Finding> {
    let Ok(status) = agent else {
        return vec![Finding::ok(CHECK, "no agent view: the pod CIDR is unknown")];
    };
    let (cidrs, blocks, reserved): (Vec<IpNet>, Vec<(IpNet, String)>, Vec<IpNet>) =
        match &status.cluster {
            Some(c) => (
                c.pod_cidrs.clone(),
                c.nodes
                    .iter()
                    .flat_map(|n| n.blocks.iter().map(|b| (*b, n.name.clone())))
                    .collect(),
                c.reserved.clone(),
            ),
            None => {
                let fixed: Vec<IpNet> = status.blocks.iter().map(|b| b.cidr).collect();
                let mine = fixed
                    .iter()
                    .map(|b| (*b, status.node_name.clone()))
                    .collect();
                (fixed, mine, Vec::new())
            }
        };
    if cidrs.is_empty() {
        return vec![Finding::ok(CHECK, "the agent reports no pod CIDR yet")];
    }
    let mut out: Vec<Finding> = addresses(host, &cidrs);
    out.extend(routes(host, &cidrs, &blocks, &reserved));
    if out.is_empty() {
        out.push(Finding::ok(
            CHECK,
            format!(
                "no host address or route of its own overlaps the pod network ({})",
                super::cidr_list(&cidrs)
            ),
        ));
    }
    out
}

fn addresses(host: &HostFacts, cidrs: &[IpNet]) -> Vec<Finding> {
    host.addresses
        .iter()
        .filter(|(ifname, _)| !ifname.starts_with(crate::IFACE_PREFIX))
        .filter_map(|(ifname, a)| {
            let c = cidrs.iter().find(|c| c.contains(&a.addr()))?;
            Some(Finding::problem(
                CHECK,
                format!("{ifname} has address {a}, inside the pod network {c}: pods given nearby addresses are unreachable from this host"),
                format!("move {ifname} off {c}, or give the cluster a pod-cidr no host network uses"),
            ))
        })
        .collect()
}

/// A route someone else put there: not Muslin's (by protocol or device)
/// and not one the kernel keeps for the host's own addresses.
fn foreign(r: &RouteFact) -> bool {
    r.protocol != crate::ROUTE_PROTOCOL
        && !OWN_KINDS.contains(&r.kind.as_str())
        && !r
            .dev
            .as_deref()
            .is_some_and(|d| d.starts_with(crate::IFACE_PREFIX))
}

fn routes(
    host: &HostFacts,
    cidrs: &[IpNet],
    blocks: &[(IpNet, String)],
    reserved: &[IpNet],
) -> Vec<Finding> {
    let mut out = Vec::new();
    for r in host.routes.iter().filter(|r| foreign(r)) {
        // Only a route inside the pod network shadows pods: one covering
        // all of it (the default route) is less specific than any block.
        let Some(c) = cidrs
            .iter()
            .find(|c| !reserved_in(**c, &[r.dst]).is_empty())
        else {
            continue;
        };
        let route = r.describe();
        let held: Vec<String> = blocks
            .iter()
            .filter(|(b, _)| crate::host_firewall::overlaps(b, &r.dst))
            .map(|(b, n)| format!("{b} of node {n}"))
            .collect();
        if held.is_empty() {
            let kept = reserved
                .iter()
                .any(|x| crate::host_firewall::overlaps(x, &r.dst));
            out.push(Finding::warning(
                CHECK,
                format!(
                    "route {route} lies inside the pod network {c}, where no node holds a block; Muslin reserves it{}, so no block will be leased there",
                    if kept { " (listed in the cluster's reserved ranges)" } else { "" }
                ),
                format!("nothing breaks; to use that space for pods, delete the route (`ip route del {}`) or move the network it leads to", r.dst),
            ));
        } else {
            out.push(Finding::problem(
                CHECK,
                format!(
                    "route {route} overlaps block {}: traffic from this host to those pods follows the route instead of reaching them",
                    held.join(", ")
                ),
                format!(
                    "delete the route (`ip route del {}{}`) or renumber the network it leads to out of the pod network {c}",
                    r.dst,
                    if r.table == 254 { String::new() } else { format!(" table {}", r.table) }
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::tests::{host, status};
    use crate::doctor::Level;

    fn route(dst: &str, dev: &str, protocol: u8, kind: &str, table: u32) -> RouteFact {
        RouteFact {
            dst: dst.parse().unwrap(),
            dev: Some(dev.into()),
            gateway: None,
            protocol,
            table,
            kind: kind.into(),
            mtu: None,
        }
    }

    fn cluster() -> crate::api::NodeStatus {
        let mut s = status(("h1", "192.168.56.11"), &[("h2", "192.168.56.12")]);
        let c = s.cluster.as_mut().unwrap();
        c.nodes[0].blocks = vec!["10.244.1.0/24".parse().unwrap()];
        c.nodes[1].blocks = vec!["10.244.2.0/24".parse().unwrap()];
        s
    }

    fn with(routes: Vec<RouteFact>) -> HostFacts {
        let mut h = host();
        h.routes = routes;
        h
    }

    #[test]
    fn routes_of_the_host_outside_the_pod_network_and_ours_are_ok() {
        let h = with(vec![
            route("0.0.0.0/0", "eth0", 3, "unicast", 254),
            route("10.0.0.0/8", "eth0", 4, "unicast", 254),
            route("10.244.0.0/16", "eth0", 4, "unicast", 254),
            route("192.168.56.0/24", "eth1", 2, "unicast", 254),
            route(
                "10.244.2.0/24",
                "eth1",
                crate::ROUTE_PROTOCOL,
                "unicast",
                254,
            ),
            route("10.244.1.7/32", "msl0a1b2c3d4e5f", 3, "unicast", 254),
            route("10.244.1.1/32", "eth1", 2, "local", 255),
        ]);
        let f = check(&h, Ok(&cluster()));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].level, Level::Ok, "{f:?}");
    }

    #[test]
    fn a_route_over_a_held_block_is_a_problem_naming_route_and_block() {
        let mut r = route("10.244.2.0/25", "eth0", 4, "unicast", 254);
        r.gateway = Some("10.0.2.2".parse().unwrap());
        let f = check(&with(vec![r]), Ok(&cluster()));
        assert_eq!(f[0].level, Level::Problem, "{f:?}");
        assert!(
            f[0].saw.contains(
                "route 10.244.2.0/25 via 10.0.2.2 dev eth0 overlaps block 10.244.2.0/24 of node h2"
            ),
            "{}",
            f[0].saw
        );
        assert!(
            f[0].fix.contains("ip route del 10.244.2.0/25"),
            "{}",
            f[0].fix
        );
        // In any table.
        let f = check(
            &with(vec![route("10.244.1.0/24", "eth0", 4, "unicast", 100)]),
            Ok(&cluster()),
        );
        assert_eq!(f[0].level, Level::Problem, "{f:?}");
        assert!(f[0].fix.contains("table 100"), "{}", f[0].fix);
    }

    #[test]
    fn a_route_over_unleased_space_is_a_warning() {
        let f = check(
            &with(vec![route("10.244.9.0/24", "eth2", 4, "unicast", 254)]),
            Ok(&cluster()),
        );
        assert_eq!(f[0].level, Level::Warning, "{f:?}");
        assert!(f[0].saw.contains("10.244.9.0/24"), "{}", f[0].saw);
    }

    #[test]
    fn a_host_address_inside_the_pod_network_is_a_problem() {
        let mut h = host();
        h.addresses
            .push(("eth2".into(), "10.244.200.5/24".parse().unwrap()));
        h.addresses
            .push(("msl-wg0".into(), "10.244.1.1/32".parse().unwrap()));
        let f = check(&h, Ok(&cluster()));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].level, Level::Problem);
        assert!(
            f[0].saw.contains("eth2 has address 10.244.200.5/24"),
            "{}",
            f[0].saw
        );
    }

    #[test]
    fn a_lone_node_checks_its_fixed_blocks() {
        let mut s = cluster();
        s.cluster = None;
        s.blocks = vec![crate::api::BlockStatus {
            cidr: "10.50.0.0/24".parse().unwrap(),
            used: 0,
            capacity: 254,
        }];
        let h = with(vec![route("10.50.0.128/25", "eth0", 4, "unicast", 254)]);
        assert_eq!(check(&h, Ok(&s))[0].level, Level::Problem);
        assert_eq!(check(&h, Err("down"))[0].level, Level::Ok);
    }
}
