//! The only code in Muslin that changes the kernel: netlink, namespaces and
//! sysctls. It applies plans computed by `muslin-model` and reports what it
//! finds; it decides nothing on its own.

mod attach;
pub mod cluster;
mod error;
pub mod host_firewall;
mod netlink;
mod netns;
pub mod probe;
mod sysctl;
mod writes;

pub use attach::{attach, check, detach, ensure_host_route, host_routes, CheckProblem};
pub use error::KernelError;
pub use netlink::{LinkInfo, Netlink, RouteInfo, VxlanInfo};
pub use netns::open_netns;
pub use sysctl::enable_ipv4_forwarding;
pub use writes::kernel_writes;
