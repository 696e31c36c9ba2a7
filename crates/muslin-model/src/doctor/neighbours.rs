//! Neighbour table limits against endpoints (to be written).

use super::{AgentView, Finding, HostFacts};

pub const CHECK: &str = "neighbour-table";

pub fn check(_host: &HostFacts, _agent: AgentView<'_>) -> Vec<Finding> {
    vec![Finding::ok(CHECK, "not checked yet")]
}
