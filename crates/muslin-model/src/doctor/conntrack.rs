//! Pitfall 8: a full conntrack table drops new connections (DNS lookups
//! time out first). The count is this network namespace's; the limit,
//! `nf_conntrack_max`, is the kernel's.

use super::{AgentView, Finding, HostFacts};

pub const CHECK: &str = "conntrack";

/// Fill (percent) past which a burst of connections may find it full.
const WARN_PERCENT: u64 = 75;
const PROBLEM_PERCENT: u64 = 90;

pub fn check(host: &HostFacts, _agent: AgentView<'_>) -> Vec<Finding> {
    let count = host.sysctl_u64("net.netfilter.nf_conntrack_count");
    let max = host.sysctl_u64("net.netfilter.nf_conntrack_max");
    let (Some(count), Some(max)) = (count, max) else {
        return vec![Finding::ok(
            CHECK,
            "connection tracking is not loaded here: no table to fill",
        )];
    };
    if max == 0 {
        return vec![Finding::ok(
            CHECK,
            format!("{count} entries; nf_conntrack_max is 0 (no limit)"),
        )];
    }
    let percent = count * 100 / max;
    let saw = format!("{count} of nf_conntrack_max {max} entries in use ({percent}%)");
    let fix = format!(
        "raise the limit (`sysctl -w net.netfilter.nf_conntrack_max={}`) or find what opens so many connections (`conntrack -L`)",
        (max * 2).max(262_144)
    );
    vec![if percent >= PROBLEM_PERCENT {
        Finding::problem(
            CHECK,
            format!("{saw}: new connections are about to be dropped"),
            fix,
        )
    } else if percent >= WARN_PERCENT {
        Finding::warning(CHECK, saw, fix)
    } else {
        Finding::ok(CHECK, saw)
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::tests::host;
    use crate::doctor::Level;

    fn at(count: u64, max: u64) -> Vec<Finding> {
        let mut h = host();
        h.sysctls
            .insert("net.netfilter.nf_conntrack_count".into(), count.to_string());
        h.sysctls
            .insert("net.netfilter.nf_conntrack_max".into(), max.to_string());
        check(&h, Err("-"))
    }

    #[test]
    fn fill_is_judged_against_the_limit() {
        assert_eq!(at(100, 262_144)[0].level, Level::Ok);
        assert_eq!(at(200_000, 262_144)[0].level, Level::Warning);
        let p = at(240_000, 262_144);
        assert_eq!(p[0].level, Level::Problem);
        assert!(
            p[0].saw.contains("240000 of nf_conntrack_max 262144"),
            "{}",
            p[0].saw
        );
        assert!(p[0].fix.contains("nf_conntrack_max=524288"), "{}", p[0].fix);
        assert_eq!(check(&host(), Err("-"))[0].level, Level::Ok, "not loaded");
    }
}
