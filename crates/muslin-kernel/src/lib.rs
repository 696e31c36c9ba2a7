//! The only code in Muslin that touches the kernel: the [`Executor`],
//! which observes namespaces and carries out the changes `muslin-plan`
//! computes, and the probe tool's sockets. It decides nothing on its own.

mod error;
pub mod executor;
mod netlink;
mod netns;
pub mod probe;
mod route_lookup;

pub use error::KernelError;
pub use executor::{counters, Answer, Counters, Executor, Lane, OnFailure, Query, Report};
pub use netns::open_netns;
pub use route_lookup::source_towards;
