//! Host firewalls that drop pod traffic (to be written).

use super::{AgentView, Finding, HostFacts};

pub const CHECK: &str = "forward-drop";

pub fn check(_host: &HostFacts, _agent: AgentView<'_>) -> Vec<Finding> {
    vec![Finding::ok(CHECK, "not checked yet")]
}
