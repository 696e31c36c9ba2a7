//! Cryptokey routing: allowed IPs to peer, longest prefix first.
//!
//! One hash map per prefix length in use, probed from the longest: a
//! cluster has a handful of distinct lengths (/32 hosts, a /24 or /16 per
//! node), so a lookup is a few masked hash probes whatever the peer count,
//! and the table is rebuilt wholesale on each (rare) configuration change.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

pub(crate) struct Routes<T> {
    v4: Vec<(u8, HashMap<u32, T>)>,
    v6: Vec<(u8, HashMap<u128, T>)>,
}

impl<T> Default for Routes<T> {
    fn default() -> Self {
        Routes {
            v4: Vec::new(),
            v6: Vec::new(),
        }
    }
}

fn mask4(a: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        a & (u32::MAX << (32 - len))
    }
}

fn mask6(a: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        a & (u128::MAX << (128 - len))
    }
}

impl<T: Clone> Routes<T> {
    /// A later insert of the same network replaces the earlier one, as `wg`
    /// moves an allowed IP to the peer that claims it last.
    pub(crate) fn insert(&mut self, net: IpNet, v: T) {
        let len = net.prefix_len();
        match net {
            IpNet::V4(n) => {
                let i = slot(&mut self.v4, len);
                self.v4[i].1.insert(mask4(n.addr().into(), len), v);
            }
            IpNet::V6(n) => {
                let i = slot(&mut self.v6, len);
                self.v6[i].1.insert(mask6(n.addr().into(), len), v);
            }
        }
    }

    pub(crate) fn get(&self, a: IpAddr) -> Option<&T> {
        match a {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4.iter().find_map(|(len, m)| m.get(&mask4(a, *len)))
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6.iter().find_map(|(len, m)| m.get(&mask6(a, *len)))
            }
        }
    }
}

/// The map for `len`, keeping the list sorted longest first.
fn slot<K>(v: &mut Vec<(u8, HashMap<K, impl Sized>)>, len: u8) -> usize {
    match v.binary_search_by(|(l, _)| len.cmp(l)) {
        Ok(i) => i,
        Err(i) => {
            v.insert(i, (len, HashMap::new()));
            i
        }
    }
}

/// The destination (`dst`) or source address of an IP packet.
pub(crate) fn packet_addr(p: &[u8], dst: bool) -> Option<IpAddr> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => {
            let o = if dst { 16 } else { 12 };
            let b: [u8; 4] = p[o..o + 4].try_into().ok()?;
            Some(IpAddr::from(b))
        }
        6 if p.len() >= 40 => {
            let o = if dst { 24 } else { 8 };
            let b: [u8; 16] = p[o..o + 16].try_into().ok()?;
            Some(IpAddr::from(b))
        }
        _ => None,
    }
}

/// The packet without the zero padding WireGuard adds to a multiple of 16
/// bytes: the TUN's GRO coalesces only segments whose IP length is the
/// buffer's. None when the header claims more than there is.
pub(crate) fn unpadded(p: &[u8]) -> Option<&[u8]> {
    let len = match p.first()? >> 4 {
        4 if p.len() >= 20 => usize::from(u16::from_be_bytes([p[2], p[3]])),
        6 if p.len() >= 40 => 40 + usize::from(u16::from_be_bytes([p[4], p[5]])),
        _ => return None,
    };
    p.get(..len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        let mut r = Routes::default();
        r.insert("10.0.0.0/8".parse().unwrap(), 1);
        r.insert("10.1.0.0/16".parse().unwrap(), 2);
        r.insert("10.1.2.3/32".parse().unwrap(), 3);
        r.insert("0.0.0.0/0".parse().unwrap(), 4);
        r.insert("fd00::/64".parse().unwrap(), 5);
        let g = |s: &str| r.get(s.parse().unwrap()).copied();
        assert_eq!(g("10.1.2.3"), Some(3));
        assert_eq!(g("10.1.2.4"), Some(2));
        assert_eq!(g("10.2.0.1"), Some(1));
        assert_eq!(g("192.0.2.1"), Some(4));
        assert_eq!(g("fd00::1"), Some(5));
        assert_eq!(g("fd01::1"), None);
    }

    #[test]
    fn addresses_of_packets() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[12..16].copy_from_slice(&[10, 0, 0, 1]);
        v4[16..20].copy_from_slice(&[10, 0, 0, 2]);
        assert_eq!(packet_addr(&v4, true), Some("10.0.0.2".parse().unwrap()));
        assert_eq!(packet_addr(&v4, false), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(packet_addr(&v4[..10], true), None);
        v4[3] = 20;
        let padded = [&v4[..], &[0u8; 12]].concat();
        assert_eq!(unpadded(&padded), Some(&v4[..]));
        v4[3] = 40;
        assert_eq!(unpadded(&v4), None);
    }
}
