//! Pitfall 17: the kernel's neighbour table is one for the whole machine
//! (`gc_thresh3` entries at most, 1024 by default), shared by the host and
//! every container namespace. Past `gc_thresh2` the kernel evicts entries
//! eagerly; at `gc_thresh3` new neighbours are refused and traffic to them
//! fails. Muslin routes /32s without a shared L2, so it needs about two
//! entries per local endpoint (the host's towards the pod, the pod's
//! towards its gateway) and one per peer node.

use super::{AgentView, Finding, HostFacts};

pub const CHECK: &str = "neighbour-table";

pub fn check(host: &HostFacts, agent: AgentView<'_>) -> Vec<Finding> {
    let t2 = host.sysctl_u64("net.ipv4.neigh.default.gc_thresh2");
    let t3 = host.sysctl_u64("net.ipv4.neigh.default.gc_thresh3");
    let local = agent.map(|s| s.endpoints.len() as u64).unwrap_or(0);
    let nodes = agent
        .ok()
        .and_then(|s| s.cluster.as_deref())
        .map(|c| c.nodes.len() as u64)
        .unwrap_or(0);
    let need = (2 * local + nodes).max(host.neighbours);
    let (Some(t2), Some(t3)) = (t2, t3) else {
        return vec![Finding::warning(
            CHECK,
            format!("about {need} entries needed here; gc_thresh2/3 could not be read"),
            "run doctor as root in the host's own namespace to read the kernel-wide limits",
        )];
    };
    let saw = format!(
        "about {need} neighbour entries needed here ({local} local endpoints, {nodes} nodes; {} now in this namespace) against gc_thresh2 {t2} / gc_thresh3 {t3}, shared by every namespace of this kernel",
        host.neighbours
    );
    let fix = format!(
        "raise the limits (`sysctl -w net.ipv4.neigh.default.gc_thresh2={} net.ipv4.neigh.default.gc_thresh3={}`)",
        need * 2,
        need * 4
    );
    vec![if need >= t3 {
        Finding::problem(CHECK, format!("{saw}: new neighbours are refused"), fix)
    } else if need >= t2 {
        Finding::warning(
            CHECK,
            format!("{saw}: the kernel evicts entries eagerly"),
            fix,
        )
    } else {
        Finding::ok(CHECK, saw)
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::tests::{host, status};
    use crate::doctor::Level;

    #[test]
    fn the_need_is_judged_against_the_kernel_wide_limits() {
        let mut h = host();
        let s = status(("h1", "192.168.56.11"), &[("h2", "192.168.56.12")]);
        assert_eq!(check(&h, Ok(&s))[0].level, Level::Warning, "unreadable");
        h.sysctls
            .insert("net.ipv4.neigh.default.gc_thresh2".into(), "512".into());
        h.sysctls
            .insert("net.ipv4.neigh.default.gc_thresh3".into(), "1024".into());
        let f = check(&h, Ok(&s));
        assert_eq!(f[0].level, Level::Ok);
        assert!(
            f[0].saw.contains("about 2 neighbour entries"),
            "{}",
            f[0].saw
        );
        h.neighbours = 700;
        assert_eq!(check(&h, Ok(&s))[0].level, Level::Warning);
        h.neighbours = 1100;
        let f = check(&h, Ok(&s));
        assert_eq!(f[0].level, Level::Problem);
        assert!(f[0].fix.contains("gc_thresh3=4400"), "{}", f[0].fix);
    }
}
