//! Pitfall 5: a host firewall that drops forwarded pod traffic (Docker's
//! `iptables -P FORWARD DROP`, firewalld, an operator's rule). The agent
//! keeps tagged accepts at the top of such chains, so a drop it covers is
//! only worth knowing; a drop it does not cover (agent down, rules just
//! flushed, a rule that drops pod addresses ahead of ours) breaks pods.

use ipnet::IpNet;

use super::{AgentView, Finding, HostFacts};
use crate::host_firewall::{pod_drops, Backend, DropCause, PodDrop};

pub const CHECK: &str = "forward-drop";

pub fn check(host: &HostFacts, agent: AgentView<'_>) -> Vec<Finding> {
    let Some(observed) = &host.firewall else {
        let why = host.firewall_error.as_deref().unwrap_or("no reason given");
        return vec![Finding::warning(
            CHECK,
            format!("could not read the host's firewalls: {why}"),
            "run doctor as root with nft and iptables installed to check the forward chains",
        )];
    };
    let cidrs = pod_cidrs(agent);
    let drops = match pod_drops(observed, &cidrs) {
        Ok(d) => d,
        Err(e) => {
            return vec![Finding::warning(
                CHECK,
                format!("could not read the host's firewalls: {e}"),
                "check that `nft -j list ruleset` works",
            )]
        }
    };
    if drops.is_empty() {
        return vec![Finding::ok(
            CHECK,
            format!(
                "no forward chain drops pod traffic ({})",
                super::cidr_list(&cidrs)
            ),
        )];
    }
    drops.iter().map(|d| finding(d, &cidrs, agent)).collect()
}

fn finding(d: &PodDrop, cidrs: &[IpNet], agent: AgentView<'_>) -> Finding {
    // The chain's name starts with the tool that manages it: the backend.
    let saw = format!(
        "{} would drop pod traffic ({}): {}",
        d.chain,
        super::cidr_list(cidrs),
        d.cause
    );
    if d.covered {
        return Finding::warning(
            CHECK,
            format!("{saw}; Muslin's accept rules ahead of it let pod traffic through"),
            if agent.is_ok() {
                "nothing to do: the agent re-asserts its accept rules every 10 s; allow pod traffic in the host's own firewall to stop depending on them"
            } else {
                "start the agent, which re-asserts these accept rules every 10 s; until then a flush of the chain stops pod traffic"
            },
        );
    }
    let fix = match (&d.cause, agent) {
        (DropCause::PodTraffic(_), _) => format!(
            "delete that rule (or move it below Muslin's accepts) unless pods must not pass this host: {}",
            delete_hint(d)
        ),
        (_, Err(_)) => {
            "start the agent: it inserts tagged accept rules for pod traffic at the top of this chain"
                .to_string()
        }
        _ => "wait 10 s for the agent to re-assert its accept rules; if they stay missing, read the agent's log for the failing firewall command".to_string(),
    };
    Finding::problem(
        CHECK,
        format!("{saw}, and Muslin's accept rules are not ahead of it"),
        fix,
    )
}

fn delete_hint(d: &PodDrop) -> String {
    let DropCause::PodTraffic(rule) = &d.cause else {
        return String::new();
    };
    match d.chain.backend {
        Backend::Nftables => format!(
            "`nft delete rule {} {} {} {rule}`",
            d.chain.family.as_str(),
            d.chain.table,
            d.chain.name
        ),
        _ => format!(
            "`{} {}`",
            d.chain.iptables_program().unwrap_or("iptables"),
            rule.replacen("-A ", "-D ", 1)
        ),
    }
}

/// The pod traffic this host forwards: the cluster's pod CIDRs, a lone
/// node's fixed blocks, or the default pod CIDR when the agent is down.
fn pod_cidrs(agent: AgentView<'_>) -> Vec<IpNet> {
    let from_agent: Vec<IpNet> = match agent {
        Ok(s) => match &s.cluster {
            Some(c) => c.pod_cidrs.clone(),
            None => s.blocks.iter().map(|b| b.cidr).collect(),
        },
        Err(_) => Vec::new(),
    };
    if from_agent.is_empty() {
        crate::agent_config::AgentConfig::default()
            .pod_cidrs()
            .to_vec()
    } else {
        from_agent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::tests::{host, status};
    use crate::doctor::Level;
    use crate::host_firewall::{Family, IptablesForward, Observed};

    fn with(save: &str) -> HostFacts {
        let mut h = host();
        h.firewall = Some(Observed {
            nft: serde_json::json!({"nftables": []}),
            iptables: vec![IptablesForward {
                backend: Backend::IptablesNft,
                family: Family::Ip,
                save: save.into(),
            }],
        });
        h
    }

    const OURS: &str = "-A FORWARD -s 10.244.0.0/16 -m comment --comment \"muslin: pod traffic\" -j ACCEPT\n\
                        -A FORWARD -d 10.244.0.0/16 -m comment --comment \"muslin: pod traffic\" -j ACCEPT\n";

    #[test]
    fn an_accepting_chain_is_ok() {
        let s = status(("h1", "192.168.56.11"), &[]);
        let f = check(&with("-P FORWARD ACCEPT\n"), Ok(&s));
        assert_eq!(f[0].level, Level::Ok, "{f:?}");
        assert!(f[0].saw.contains("10.244.0.0/16"), "{}", f[0].saw);
    }

    #[test]
    fn a_covered_drop_policy_is_a_warning_naming_chain_backend_and_cause() {
        let s = status(("h1", "192.168.56.11"), &[]);
        let f = check(&with(&format!("-P FORWARD DROP\n{OURS}")), Ok(&s));
        assert_eq!(f[0].level, Level::Warning, "{f:?}");
        for word in [
            "iptables-nft table filter chain FORWARD",
            "policy is drop",
            "re-asserts",
        ] {
            assert!(
                f[0].saw.contains(word) || f[0].fix.contains(word),
                "{word}: {f:?}"
            );
        }
    }

    #[test]
    fn an_uncovered_drop_is_a_problem_whose_fix_depends_on_the_agent() {
        let h = with("-P FORWARD DROP\n-A FORWARD -j DOCKER-USER\n");
        let s = status(("h1", "192.168.56.11"), &[]);
        let f = check(&h, Ok(&s));
        assert_eq!(f[0].level, Level::Problem, "{f:?}");
        assert!(f[0].fix.contains("re-assert"), "{}", f[0].fix);
        let f = check(&h, Err("refused"));
        assert_eq!(f[0].level, Level::Problem, "{f:?}");
        assert!(f[0].fix.contains("start the agent"), "{}", f[0].fix);
    }

    #[test]
    fn a_foreign_drop_of_pod_addresses_ahead_of_ours_is_a_problem_naming_it() {
        let h = with(&format!(
            "-P FORWARD ACCEPT\n-A FORWARD -s 10.244.0.0/16 -j DROP\n{OURS}"
        ));
        let s = status(("h1", "192.168.56.11"), &[]);
        let f = check(&h, Ok(&s));
        assert_eq!(f[0].level, Level::Problem, "{f:?}");
        assert!(
            f[0].saw
                .contains("`-A FORWARD -s 10.244.0.0/16 -j DROP` drops pod traffic"),
            "{}",
            f[0].saw
        );
        assert!(
            f[0].fix
                .contains("iptables-nft -D FORWARD -s 10.244.0.0/16 -j DROP"),
            "{}",
            f[0].fix
        );
    }

    #[test]
    fn the_pod_cidrs_come_from_the_cluster_or_the_fixed_blocks() {
        let mut s = status(("h1", "192.168.56.11"), &[]);
        s.cluster.as_mut().unwrap().pod_cidrs = vec!["10.50.0.0/16".parse().unwrap()];
        let h = with("-P FORWARD ACCEPT\n-A FORWARD -d 10.244.0.0/16 -j DROP\n");
        assert_eq!(check(&h, Ok(&s))[0].level, Level::Ok);
        s.cluster = None;
        s.blocks = vec![crate::api::BlockStatus {
            cidr: "10.244.9.0/24".parse().unwrap(),
            used: 0,
            capacity: 254,
        }];
        assert_eq!(check(&h, Ok(&s))[0].level, Level::Problem);
        assert_eq!(check(&h, Err("down"))[0].level, Level::Problem);
    }

    #[test]
    fn an_unreadable_firewall_is_a_warning_saying_why() {
        let mut h = host();
        h.firewall_error = Some("nft: command not found".into());
        let f = check(&h, Err("down"));
        assert_eq!(f[0].level, Level::Warning);
        assert!(f[0].saw.contains("nft: command not found"), "{}", f[0].saw);
    }
}
