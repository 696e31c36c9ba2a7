//! Whether the agent answers on its socket: without it no container on
//! this host gets an address, and the other checks lose its view.

use super::{AgentView, Finding, HostFacts};

pub const CHECK: &str = "agent";

pub fn check(_host: &HostFacts, agent: AgentView<'_>) -> Vec<Finding> {
    vec![match agent {
        Err(why) => Finding::problem(
            CHECK,
            format!("the agent does not answer: {why}"),
            "start `muslin agent` on this host (or pass --socket with the socket it serves)",
        ),
        Ok(s) => match &s.cluster {
            None => Finding::ok(
                CHECK,
                format!(
                    "agent {} (muslin {}) answers; it runs alone, without a cluster",
                    s.node_name, s.version
                ),
            ),
            Some(c) if c.underlay_if.is_empty() => Finding::warning(
                CHECK,
                format!(
                    "agent {} (muslin {}) answers, but is still starting: it has not chosen its underlay address yet",
                    s.node_name, s.version
                ),
                "wait a few seconds; if it stays so, read the agent's log for the address it cannot verify",
            ),
            Some(c) if !c.synced => Finding::warning(
                CHECK,
                format!(
                    "agent {} (muslin {}) answers, but its view of the cluster ({}) is not complete yet",
                    s.node_name, s.version, c.datastore
                ),
                "wait for the view to sync; if it never does, check that the datastore or a join peer is reachable",
            ),
            Some(c) => Finding::ok(
                CHECK,
                format!(
                    "agent {} (muslin {}) answers; {} nodes in its view ({}), {} endpoints",
                    s.node_name,
                    s.version,
                    c.nodes.len(),
                    c.datastore,
                    c.endpoints.len()
                ),
            ),
        },
    }]
}
