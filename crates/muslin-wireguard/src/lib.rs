//! Userspace WireGuard for hosts whose kernel has no WireGuard module.
//!
//! The protocol core is gotatun's `noise` (Mullvad's boringtun fork): the
//! handshake, sessions, timers and the per-packet AEAD. The I/O around it
//! is ours and batched end to end: TSO super-packets from the TUN go out as
//! UDP GSO sends, UDP GRO reads come back as GRO-coalesced TUN writes.

pub mod daemon;
pub mod device;
mod engine;
pub mod kernel;
pub mod kernel_device;
pub mod keys;
pub mod peers;
mod routes;
mod tun;
mod uapi;
mod udp;

pub use daemon::{run_uapi_daemon, run_uapi_daemon_blocking, run_uapi_daemon_until, DaemonOptions};
pub use device::{uapi_socket_path, DeviceConfig, Error, UserspaceDevice, UAPI_DIR};
pub use kernel::{kernel_wireguard_available, KernelWireguard};
pub use kernel_device::{
    start_device, AnyDevice, AnyError, Implementation, KernelDevice, KernelError,
    ParseImplementationError,
};
pub use keys::{KeyError, KeyPair, PrivateKey, PublicKey};
pub use peers::{diff_peers, PeerDiff, PeerListError, PeerSpec, PeerStatus};
