//! Pitfall 1: the wrong NIC or address on a multi-NIC host, and every host
//! claiming the same address (10.0.2.15 under Vagrant). Says which
//! addresses could carry the cluster, which one the agent chose and why,
//! and whether another node claims the same one.

use super::{AgentView, Finding, HostFacts};

pub const CHECK: &str = "underlay";
pub const DUPLICATE: &str = "duplicate-address";

pub fn check(host: &HostFacts, agent: AgentView<'_>) -> Vec<Finding> {
    let Some(c) = agent.ok().and_then(|s| s.cluster.as_deref()) else {
        return vec![
            Finding::ok(CHECK, "no cluster view (agent down or running alone)"),
            Finding::ok(DUPLICATE, "no cluster view (agent down or running alone)"),
        ];
    };
    if c.underlay_if.is_empty() {
        return vec![
            Finding::ok(CHECK, "the agent has not chosen its address yet"),
            Finding::ok(DUPLICATE, "the agent has not chosen its address yet"),
        ];
    }
    let chosen = c
        .underlay_address
        .map(|a| a.to_string())
        .unwrap_or_else(|| "-".into());
    let on_host: Vec<String> = c
        .underlay_addresses
        .iter()
        .map(|a| {
            let ifname = host
                .addresses
                .iter()
                .find(|(_, n)| n.addr() == *a)
                .map(|(i, _)| i.as_str())
                .unwrap_or("?");
            format!("{a} ({ifname})")
        })
        .collect();
    let verified = c.underlay_reason.starts_with("reaches")
        || c.underlay_reason.starts_with("can-reach")
        || c.underlay_reason.starts_with("address=")
        || c.nodes
            .iter()
            .any(|n| n.path != "self" && n.alive && n.data_path == "ok");
    let saw = format!(
        "{} candidate address{}: {}; chose {chosen} on {}: {}",
        on_host.len(),
        if on_host.len() == 1 { "" } else { "es" },
        on_host.join(", "),
        c.underlay_if,
        c.underlay_reason
    );
    let underlay = if on_host.len() > 1 && !verified {
        Finding::warning(
            CHECK,
            format!("{saw}; no peer has confirmed it yet"),
            "join a peer (the choice is then verified by reachability) or pin it with `underlay = \"address=ADDR\"`",
        )
    } else {
        Finding::ok(CHECK, saw)
    };
    vec![underlay, duplicates(agent)]
}

fn duplicates(agent: AgentView<'_>) -> Finding {
    let Some(c) = agent.ok().and_then(|s| s.cluster.as_deref()) else {
        return Finding::ok(DUPLICATE, "no cluster view");
    };
    let mut by: std::collections::BTreeMap<std::net::IpAddr, Vec<&str>> = Default::default();
    for n in c.nodes.iter().filter(|n| n.alive || n.path == "self") {
        if let Some(a) = n.address {
            by.entry(a).or_default().push(&n.name);
        }
    }
    let dup: Vec<String> = by
        .iter()
        .filter(|(_, names)| names.len() > 1)
        .map(|(a, names)| format!("{} all claim {a}", names.join(", ")))
        .collect();
    if dup.is_empty() {
        Finding::ok(
            DUPLICATE,
            format!("{} nodes, each at its own underlay address", by.len()),
        )
    } else {
        Finding::problem(
            DUPLICATE,
            format!("nodes {}", dup.join("; ")),
            "give each host an address of its own on the cluster's network (leave `underlay` at reachability, or pin `address=ADDR` per node)",
        )
    }
}
