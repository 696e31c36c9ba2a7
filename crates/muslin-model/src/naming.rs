//! Deterministic names and MAC addresses for attachments.
//!
//! Names are derived from the attachment key rather than stored, so that a
//! DEL after a lost state file, or a retried ADD after a crash, finds the
//! same host interface again.

use sha2::{Digest, Sha256};

use crate::IFACE_PREFIX;

/// Linux limits interface names to 15 bytes (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// MAC of every host-side veth. Each veth is its own point-to-point link, so
/// one locally administered address serves all of them and the container's
/// static gateway neighbour never has to change.
pub const HOST_VETH_MAC: [u8; 6] = [0xee, 0xee, 0xee, 0xee, 0xee, 0xee];

fn digest(container_id: &str, ifname: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(container_id.as_bytes());
    h.update([0u8]);
    h.update(ifname.as_bytes());
    h.finalize().into()
}

/// Host-side interface name for an attachment: our prefix and 48 bits of a
/// hash of the container ID and the container interface name (one container
/// may join with several interfaces).
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let d = digest(container_id, ifname);
    let mut name = String::with_capacity(MAX_IFNAME_LEN);
    name.push_str(IFACE_PREFIX);
    for b in &d[..6] {
        name.push_str(&format!("{b:02x}"));
    }
    name
}

/// Container-side MAC: stable for an attachment, locally administered and
/// unicast.
pub fn container_mac(container_id: &str, ifname: &str) -> [u8; 6] {
    let d = digest(container_id, ifname);
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&d[8..14]);
    mac[0] = (mac[0] & 0xfc) | 0x02;
    mac
}

/// Whether `name` is a pod veth's host end (our prefix and 12 hex digits),
/// as [`host_ifname`] makes them.
pub fn is_pod_veth(name: &str) -> bool {
    name.len() == MAX_IFNAME_LEN
        && name.starts_with(IFACE_PREFIX)
        && name[IFACE_PREFIX.len()..]
            .chars()
            .all(|c| c.is_ascii_hexdigit())
}

/// Formats a MAC the way `ip link` and CNI results do.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Why a proposed interface name is not one the kernel would accept.
pub fn invalid_ifname_reason(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > MAX_IFNAME_LEN {
        Some("must be at most 15 characters")
    } else if name == "." || name == ".." {
        Some("must not be '.' or '..'")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("must not contain '/', ':' or whitespace")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_name_is_short_prefixed_and_stable() {
        let a = host_ifname("abcdef0123456789", "eth0");
        assert_eq!(a.len(), MAX_IFNAME_LEN);
        assert!(a.starts_with(IFACE_PREFIX));
        assert_eq!(a, host_ifname("abcdef0123456789", "eth0"));
        assert_ne!(a, host_ifname("abcdef0123456789", "net1"));
        assert_ne!(a, host_ifname("abcdef012345678", "9eth0"));
        assert!(is_pod_veth(&a));
        assert!(
            !is_pod_veth("msl-vxlan") && !is_pod_veth("mslnothexnames") && !is_pod_veth("eth0")
        );
    }

    #[test]
    fn container_mac_is_local_unicast() {
        let m = container_mac("c1", "eth0");
        assert_eq!(m[0] & 0x01, 0, "unicast");
        assert_eq!(m[0] & 0x02, 0x02, "locally administered");
        assert_eq!(format_mac(&HOST_VETH_MAC), "ee:ee:ee:ee:ee:ee");
    }

    #[test]
    fn ifname_rules() {
        assert!(invalid_ifname_reason("eth0").is_none());
        assert!(invalid_ifname_reason("").is_some());
        assert!(invalid_ifname_reason("a-very-long-name0").is_some());
        assert!(invalid_ifname_reason("..").is_some());
        assert!(invalid_ifname_reason("et h0").is_some());
        assert!(invalid_ifname_reason("eth/0").is_some());
    }
}
