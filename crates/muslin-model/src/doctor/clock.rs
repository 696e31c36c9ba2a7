//! Clock skew between nodes. Probes and sealed gossip are accepted only
//! within 30 s of the receiver's clock, and block leases and claims compare
//! times written by different nodes: a node whose clock drifts first has
//! its claims judged wrongly, then is cut off. Readings come from the send
//! times of peers' probes (see `muslin_store::probe_wire::clocks`).

use super::{AgentView, Finding, HostFacts};

pub const CHECK: &str = "clock-skew";

/// Beyond this, clocks are not synchronised at all (NTP keeps them within
/// milliseconds).
pub const WARN_MS: i64 = 1_000;
/// A third of the window within which probes and sealed gossip are
/// accepted: past it, a little more drift partitions the node.
pub const PROBLEM_MS: i64 = 10_000;

pub fn check(_host: &HostFacts, agent: AgentView<'_>) -> Vec<Finding> {
    let Some(c) = agent.ok().and_then(|s| s.cluster.as_deref()) else {
        return vec![Finding::ok(
            CHECK,
            "no cluster view: no peer to compare clocks with",
        )];
    };
    let mut read: Vec<(&str, i64)> = c
        .nodes
        .iter()
        .filter(|n| n.path != "self")
        .filter_map(|n| Some((n.name.as_str(), n.clock_skew_ms?)))
        .collect();
    if read.is_empty() {
        return vec![Finding::ok(
            CHECK,
            "no peer has probed this node yet: no clock readings",
        )];
    }
    read.sort_by_key(|(_, s)| std::cmp::Reverse(s.abs()));
    let describe = |(n, s): &(&str, i64)| {
        let side = if *s >= 0 { "ahead of" } else { "behind" };
        format!(
            "{n} is {:.1} s {side} this host",
            s.unsigned_abs() as f64 / 1e3
        )
    };
    let worst = read[0].1.abs();
    let far: Vec<String> = read
        .iter()
        .filter(|(_, s)| s.abs() >= WARN_MS)
        .map(describe)
        .collect();
    let fix = "synchronise every node's clock (NTP: chrony or systemd-timesyncd)";
    if worst >= PROBLEM_MS {
        vec![Finding::problem(
            CHECK,
            format!(
                "{}; probes and sealed gossip are refused past 30 s, and leases compare times written by different nodes",
                far.join("; ")
            ),
            fix,
        )]
    } else if worst >= WARN_MS {
        vec![Finding::warning(
            CHECK,
            format!("{}: clocks are not synchronised", far.join("; ")),
            fix,
        )]
    } else {
        vec![Finding::ok(
            CHECK,
            format!(
                "{} peers' clocks within {} ms of this host's",
                read.len(),
                worst
            ),
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::tests::{host, status};
    use crate::doctor::Level;

    fn with_skews(skews: &[Option<i64>]) -> crate::api::NodeStatus {
        let mut s = status(
            ("h1", "192.168.56.11"),
            &[("h2", "192.168.56.12"), ("h3", "192.168.56.13")],
        );
        for (n, k) in s.cluster.as_mut().unwrap().nodes[1..].iter_mut().zip(skews) {
            n.clock_skew_ms = *k;
        }
        s
    }

    #[test]
    fn skew_is_judged_by_the_peer_farthest_off() {
        let f = check(&host(), Ok(&with_skews(&[None, None])));
        assert_eq!(f[0].level, Level::Ok);
        let f = check(&host(), Ok(&with_skews(&[Some(3), Some(-40)])));
        assert_eq!(f[0].level, Level::Ok);
        assert!(f[0].saw.contains("within 40 ms"), "{}", f[0].saw);
        let f = check(&host(), Ok(&with_skews(&[Some(2_500), Some(10)])));
        assert_eq!(f[0].level, Level::Warning);
        assert!(f[0].saw.contains("h2 is 2.5 s ahead of"), "{}", f[0].saw);
        let f = check(&host(), Ok(&with_skews(&[Some(1_200), Some(-12_000)])));
        assert_eq!(f[0].level, Level::Problem);
        assert!(f[0].saw.starts_with("h3 is 12.0 s behind"), "{}", f[0].saw);
        assert!(f[0].saw.contains("h2 is 1.2 s ahead"), "{}", f[0].saw);
    }
}
