//! The TUN side of the device, with the kernel's offloads turned on.
//!
//! With IFF_VNET_HDR and TSO/USO enabled, the kernel hands us TCP (and UDP)
//! super-packets of up to 64 KB: one read and one pass of the kernel's TCP
//! stack per ~45 MTU-sized segments. The engine splits them on read and
//! coalesces what it decrypted (GRO) on write, so the kernel again sees
//! few, large packets.

use std::io;

use tun_rs::SyncDevice;

/// How the TUN was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunOptions {
    pub mtu: u16,
    /// IFF_VNET_HDR with TSO/USO on reads and GRO on writes.
    pub offload: bool,
    /// TUNSETPERSIST: the interface (and routes through it) outlive us.
    pub persistent: bool,
}

/// Opens `/dev/net/tun` as `ifname`. An existing TUN of that name (left
/// persistent by a previous agent) is attached to rather than recreated, so
/// the routes pointing at it keep working across restarts. Returns whether
/// the kernel accepted the offloads.
pub fn open(ifname: &str, opts: TunOptions) -> io::Result<(SyncDevice, bool)> {
    let dev = tun_rs::DeviceBuilder::new()
        .name(ifname)
        .mtu(opts.mtu)
        .offload(opts.offload)
        .enable(true)
        .build_sync()?;
    if opts.persistent {
        dev.persist()?;
    }
    let offloaded = dev.tcp_gso();
    Ok((dev, offloaded))
}
