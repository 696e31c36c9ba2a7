//! What a host should look like, as values: kernel objects, the changes
//! between two states, and the planners that turn an attachment, the
//! cluster data plane and the masquerade table into them. No I/O: the
//! executor in `muslin-kernel` observes the kernel and carries the changes
//! out, and golden tests pin every output here without root.

pub mod attachment;
pub mod change;
pub mod data_plane;
pub mod diff;
pub mod facts;
pub mod nft;
pub mod object;
pub mod policy_nft;
pub mod repair;
pub mod simulate;

pub use change::{Change, Step};
pub use diff::{diff, Diff, Ownership};
pub use object::HostState;
