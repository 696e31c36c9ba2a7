//! Transmit checksum offload of one of our devices, through the ethtool
//! ioctl: kernels before 5.7 corrupt the UDP checksum of VXLAN packets
//! when it is on (pitfall 4), so the agent turns it off on those kernels
//! and `doctor` reports its state. Only the legacy get/set commands are
//! used; they act on every checksum feature of the device at once, which
//! is what the workaround needs.

use std::io;
use std::os::fd::AsRawFd;

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut EthtoolValue,
    _pad: [u8; 16],
}

fn call(ifname: &str, value: &mut EthtoolValue) -> io::Result<()> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{ifname:?} is not an interface name"),
        ));
    }
    let sock =
        std::net::UdpSocket::bind("0.0.0.0:0").or_else(|_| std::net::UdpSocket::bind("[::]:0"))?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: value,
        _pad: [0; 16],
    };
    for (d, s) in req.name.iter_mut().zip(ifname.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq whose data points at a live
    // ethtool_value for the duration of the call.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether transmit checksum offload is on for `ifname` (in this
/// process's network namespace).
pub fn tx_checksum(ifname: &str) -> io::Result<bool> {
    let mut v = EthtoolValue {
        cmd: ETHTOOL_GTXCSUM,
        data: 0,
    };
    call(ifname, &mut v)?;
    Ok(v.data != 0)
}

/// Turns transmit checksum offload of `ifname` on or off.
pub fn set_tx_checksum(ifname: &str, on: bool) -> io::Result<()> {
    let mut v = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: on as u32,
    };
    call(ifname, &mut v)
}
