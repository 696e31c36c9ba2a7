use std::fs;

use crate::KernelError;

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Containers reach each other through the host's routing table, which
/// needs forwarding on. Returns whether it had to be turned on.
pub fn enable_ipv4_forwarding() -> Result<bool, KernelError> {
    let now =
        fs::read_to_string(IP_FORWARD).map_err(KernelError::io(format!("reading {IP_FORWARD}")))?;
    if now.trim() == "1" {
        return Ok(false);
    }
    fs::write(IP_FORWARD, "1").map_err(KernelError::io(format!("writing {IP_FORWARD}")))?;
    Ok(true)
}
