//! Strict reverse-path filtering where it matters (to be written).

use super::{AgentView, Finding, HostFacts};

pub const CHECK: &str = "rp-filter";

pub fn check(_host: &HostFacts, _agent: AgentView<'_>) -> Vec<Finding> {
    vec![Finding::ok(CHECK, "not checked yet")]
}
