//! The only code in Muslin that touches the kernel: the [`Executor`],
//! which observes namespaces and carries out the changes `muslin-plan`
//! computes, and the probe tool's sockets. It decides nothing on its own.

pub mod ethtool;
pub mod executor;
pub mod probe;
mod route_lookup;
pub mod vxlan_offload;

pub use executor::host_facts;
pub use executor::KernelError;
pub use executor::{counters, Answer, Counters, Executor, Lane, OnFailure, Query, Report};
pub use route_lookup::source_towards;
