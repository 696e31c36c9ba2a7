//! MTU mismatches along a path, and path MTUs below the pod MTU without a
//! pinned route MTU (to be written).

use super::{AgentView, Finding, HostFacts};

pub const MISMATCH: &str = "mtu-mismatch";
pub const PATH: &str = "path-mtu";

pub fn check(_host: &HostFacts, _agent: AgentView<'_>) -> Vec<Finding> {
    vec![
        Finding::ok(MISMATCH, "not checked yet"),
        Finding::ok(PATH, "not checked yet"),
    ]
}
