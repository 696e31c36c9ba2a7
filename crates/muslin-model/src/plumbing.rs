//! What one attachment looks like in the kernel, computed before anything
//! is touched: the kernel module applies it, CHECK compares against it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::ipam::AttachmentKey;
use crate::naming::{container_mac, host_ifname, HOST_VETH_MAC};

/// Containers route everything via this link-local next hop. The host side
/// of the veth answers for it (a static neighbour in the container), so
/// containers share no L2 segment and the gateway is the same on every host.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentPlan {
    pub host_ifname: String,
    pub host_mac: [u8; 6],
    pub container_ifname: String,
    pub container_mac: [u8; 6],
    /// The container's addresses as host prefixes (/32, /128), at most one
    /// per family; each family routes via its own [`gateway_for`].
    pub addresses: Vec<IpNet>,
    pub mtu: u32,
    pub place: Placement,
}

/// Where an attachment sits in the host's routing, and which routes the
/// container gets through it.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Placement {
    /// Routing table of the host's route to the container (`None`: main).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// Link group of the host's veth (`None`: the default network's 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<u32>,
    /// Destinations the container routes through this interface: empty
    /// for the default route (the container's first attachment), else its
    /// network's subnets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<IpNet>,
}

impl Placement {
    pub fn table(&self) -> u32 {
        self.table.unwrap_or(crate::dataplane::MAIN_TABLE)
    }
}

pub fn gateway_for(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => GATEWAY_V4.into(),
        IpAddr::V6(_) => GATEWAY_V6.into(),
    }
}

pub fn default_route(addr: IpAddr) -> IpNet {
    match addr {
        IpAddr::V4(_) => "0.0.0.0/0".parse().expect("literal"),
        IpAddr::V6(_) => "::/0".parse().expect("literal"),
    }
}

pub fn plan(key: &AttachmentKey, addresses: &[IpNet], mtu: u32) -> AttachmentPlan {
    plan_in(key, addresses, mtu, &Placement::default())
}

pub fn plan_in(
    key: &AttachmentKey,
    addresses: &[IpNet],
    mtu: u32,
    place: &Placement,
) -> AttachmentPlan {
    AttachmentPlan {
        place: place.clone(),
        host_ifname: host_ifname(&key.container_id, &key.ifname),
        host_mac: HOST_VETH_MAC,
        container_ifname: key.ifname.clone(),
        container_mac: container_mac(&key.container_id, &key.ifname),
        // Whatever was recorded, the container holds host prefixes only:
        // its neighbours are all behind the gateway.
        addresses: addresses.iter().map(|a| IpNet::from(a.addr())).collect(),
        mtu,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_is_host_prefix_with_family_gateway() {
        let key = AttachmentKey {
            network: "n".into(),
            container_id: "c".into(),
            ifname: "eth0".into(),
        };
        let n = |s: &str| -> IpNet { s.parse().unwrap() };
        let p = plan(&key, &[n("10.1.0.5/24")], 1400);
        assert_eq!(p.addresses, vec![n("10.1.0.5/32")]);
        assert_eq!(
            gateway_for(p.addresses[0].addr()).to_string(),
            "169.254.1.1"
        );
        assert_eq!(p.container_ifname, "eth0");
        let dual = plan(&key, &[n("10.1.0.5/32"), n("fd00::5/128")], 1400);
        assert_eq!(dual.addresses[1].to_string(), "fd00::5/128");
        assert_eq!(gateway_for(dual.addresses[1].addr()).to_string(), "fe80::1");
        assert_eq!(default_route(dual.addresses[1].addr()).to_string(), "::/0");
    }
}
