//! Userspace WireGuard for hosts whose kernel has no WireGuard module.
//!
//! The protocol engine is gotatun (Mullvad's boringtun fork); the TUN side
//! is ours, built on tun-rs with the kernel's segmentation offloads so bulk
//! TCP crosses the TUN in 64 KB super-packets rather than 1420-byte ones.

pub mod daemon;
pub mod device;
pub mod kernel;
pub mod kernel_device;
pub mod keys;
pub mod peers;
mod tun;
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
