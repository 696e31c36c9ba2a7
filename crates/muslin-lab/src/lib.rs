//! `muslin lab`: simulated multi-host clusters on one machine. Hosts,
//! routers and containers are network namespaces, segments are bridges in
//! the lab's switch namespace, every host runs a real `muslin agent`, and
//! containers are attached through the real CNI path. It is the newcomer's
//! first run, the end-to-end test rig and the benchmark stage.

pub mod cause;
pub mod check;
pub mod diagnose;
pub mod faults;
pub mod matrix;
pub mod names;
pub mod neigh;
pub mod neigh_sys;
pub mod networks;
pub mod ops;
pub mod plan;
pub mod policies;
pub use muslin_kernel::probe;
pub mod registry;
pub mod resolv;
pub mod sample;
pub mod topology;

mod build;
mod sys;

use std::path::PathBuf;

pub use topology::TopologyError;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("topology: {0}")]
    Topology(#[from] TopologyError),
    #[error("no lab named {name:?}; labs: {}", list_or_none(.labs))]
    NoSuchLab { name: String, labs: Vec<String> },
    #[error("no lab is up")]
    NoLab,
    #[error("several labs are up ({}); say which with --name", .0.join(", "))]
    WhichLab(Vec<String>),
    #[error("a lab named {0:?} is already up; `muslin lab down --name {0}` first")]
    Exists(String),
    #[error("lab {lab} has no {what} {name:?}")]
    NotFound {
        lab: String,
        what: &'static str,
        name: String,
    },
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("lab record {0:?} is unreadable: {1}")]
    Corrupt(PathBuf, String),
    #[error("the agent on {host} did not start: {reason}\n--- last lines of its log ---\n{log}")]
    AgentFailed {
        host: String,
        reason: String,
        log: String,
    },
    #[error("attaching {container} on {host} failed: {error}")]
    Attach {
        host: String,
        container: String,
        error: String,
    },
    #[error("{0}")]
    Usage(String),
}

fn list_or_none(labs: &[String]) -> String {
    if labs.is_empty() {
        "none".into()
    } else {
        labs.join(", ")
    }
}

impl LabError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| LabError::Io { what, source }
    }
}
