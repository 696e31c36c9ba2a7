//! Builds a plan's underlay: namespaces, the switch's bridges, veth cables,
//! addresses, routes and blocked pairs. Everything is batched per namespace.

use crate::plan::{LabPlan, NodePlan};
use crate::sys::{in_ns, in_ns_input, ip_batch};
use crate::LabError;

/// Every namespace of the plan, switch first. Containers are not included.
pub fn namespaces(plan: &LabPlan) -> Vec<String> {
    std::iter::once(plan.switch_ns.clone())
        .chain(plan.nodes.iter().map(|n| n.ns.clone()))
        .collect()
}

pub fn underlay(plan: &LabPlan) -> Result<(), LabError> {
    let adds: Vec<String> = namespaces(plan)
        .iter()
        .map(|n| format!("netns add {n}"))
        .collect();
    ip_batch(None, &adds)?;

    let mut sw = vec!["link set lo up".to_string()];
    for b in &plan.bridges {
        sw.push(format!("link add {} type bridge", b.name));
        sw.push(format!("link set {} mtu {} up", b.name, b.mtu));
    }
    for n in &plan.nodes {
        for nic in &n.nics {
            sw.push(format!(
                "link add {} mtu {} type veth peer name {} mtu {} netns {}",
                nic.port, nic.mtu, nic.ifname, nic.mtu, n.ns
            ));
            sw.push(format!("link set {} master {} up", nic.port, nic.bridge));
        }
    }
    ip_batch(Some(&plan.switch_ns), &sw)?;
    // The switch is a plain switch: with br_netfilter loaded (Docker loads
    // it), every frame through a bridge would also pass the IP firewall
    // hooks and conntrack, a cost per frame that a 100-host lab's health
    // probes and gossip pay tens of thousands of times a second. The lab's
    // own drops are `bridge` tables, which do not need it. Per namespace
    // (Linux 5.3+); `-e`: nothing to turn off without the module.
    in_ns(
        &plan.switch_ns,
        &[
            "sysctl",
            "-qe",
            "-w",
            "net.bridge.bridge-nf-call-iptables=0",
            "net.bridge.bridge-nf-call-ip6tables=0",
            "net.bridge.bridge-nf-call-arptables=0",
        ],
    )?;

    std::thread::scope(|s| {
        let handles: Vec<_> = plan
            .nodes
            .iter()
            .map(|n| s.spawn(move || node(n)))
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("node setup does not panic"))
    })?;

    if !plan.blocked.is_empty() {
        let mut rules = String::from("table bridge muslinlab {\n chain forward {\n  type filter hook forward priority 0; policy accept;\n");
        // Counted and named by host, so `lab check` can say what dropped.
        let host = |port: &str| {
            plan.nodes
                .iter()
                .find(|n| n.nics.iter().any(|x| x.port == port))
                .map_or(port.to_string(), |n| n.name.clone())
        };
        for (a, z) in &plan.blocked {
            let (ha, hz) = (host(a), host(z));
            rules.push_str(&format!(
                "  iifname \"{a}\" oifname \"{z}\" counter drop comment \"blocked {ha}>{hz}\"\n  \
                 iifname \"{z}\" oifname \"{a}\" counter drop comment \"blocked {hz}>{ha}\"\n"
            ));
        }
        rules.push_str(" }\n}\n");
        in_ns_input(&plan.switch_ns, &["nft", "-f", "-"], &rules)?;
    }
    Ok(())
}

fn node(n: &NodePlan) -> Result<(), LabError> {
    let mut cmds = vec!["link set lo up".to_string()];
    for nic in &n.nics {
        cmds.push(format!("link set {} up", nic.ifname));
        cmds.push(format!("addr add {} dev {}", nic.address, nic.ifname));
    }
    for r in &n.routes {
        cmds.push(format!("route add {} via {} dev {}", r.dst, r.via, r.dev));
    }
    if let Some((gw, dev)) = &n.default_route {
        cmds.push(format!("route add default via {gw} dev {dev}"));
    }
    ip_batch(Some(&n.ns), &cmds)?;
    if n.router {
        in_ns(&n.ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    }
    Ok(())
}
