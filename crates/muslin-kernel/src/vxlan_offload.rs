//! The workaround for pitfall 4: kernels before 5.7 corrupt the UDP
//! checksum of VXLAN packets when transmit checksum offload is on, and
//! peers drop them until TCP retries its way around (63-second stalls).
//! On such a kernel our VXLAN devices get the offload turned off when they
//! are created and again whenever a reconcile finds it back on; on a fixed
//! kernel they are left alone, offload being cheaper for the CPU.

use std::sync::OnceLock;

/// What to do with our VXLAN devices on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The kernel is fixed: offload stays as it is.
    Leave,
    /// The kernel has the bug, or its release could not be read: a
    /// device with offload on may corrupt checksums, one without it only
    /// costs some CPU, so offload goes off.
    TurnOff,
}

/// `uname -r` of the running kernel.
fn release() -> String {
    // SAFETY: utsname is plain bytes, for which all zeroes is valid.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname fills the struct it is given; its fields end in NUL.
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The policy for this kernel, decided (and logged) once per process.
pub fn policy() -> Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    *POLICY.get_or_init(|| {
        let release = release();
        match muslin_model::doctor::checksum_bug(&release) {
            Some(false) => {
                tracing::info!(kernel = %release, "kernel not affected by the VXLAN checksum bug (fixed in 5.7): tx checksum offload of our VXLAN devices left as is");
                Policy::Leave
            }
            Some(true) => {
                tracing::info!(kernel = %release, "kernel corrupts VXLAN UDP checksums with tx checksum offload (before 5.7): turning it off on our VXLAN devices");
                Policy::TurnOff
            }
            None => {
                tracing::warn!(kernel = %release, "cannot tell whether this kernel has the VXLAN checksum bug (before 5.7): turning tx checksum offload off on our VXLAN devices to be safe");
                Policy::TurnOff
            }
        }
    })
}

/// Applies the policy to our VXLAN device `ifname` (in this process's
/// network namespace); returns whether offload was turned off. `created`
/// only words the log: a device found with offload back on has drifted.
pub fn enforce(ifname: &str, created: bool) -> bool {
    enforce_with(policy(), ifname, created)
}

/// [`enforce`] under `policy` rather than this kernel's: how the turn-off
/// path is exercised on kernels that do not need it.
pub fn enforce_with(policy: Policy, ifname: &str, created: bool) -> bool {
    if policy == Policy::Leave {
        return false;
    }
    match crate::ethtool::tx_checksum(ifname) {
        Ok(false) => return false,
        Ok(true) => {}
        Err(e) => {
            tracing::warn!(link = ifname, cause = %e, "cannot read tx checksum offload: leaving it as is");
            return false;
        }
    }
    match crate::ethtool::set_tx_checksum(ifname, false) {
        Ok(()) if created => {
            tracing::info!(
                link = ifname,
                "turned tx checksum offload off on the new VXLAN device"
            );
            true
        }
        Ok(()) => {
            tracing::warn!(
                link = ifname,
                "tx checksum offload was back on (changed by someone else): turned it off again"
            );
            true
        }
        Err(e) => {
            tracing::warn!(link = ifname, cause = %e, "cannot turn tx checksum offload off: VXLAN packets may carry corrupt checksums");
            false
        }
    }
}
