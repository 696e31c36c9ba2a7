//! Peers as the agent describes them, and the diff that turns one desired
//! list into the fewest changes to a running device.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::SystemTime;

use ipnet::IpNet;

use crate::keys::PublicKey;

/// One peer as the agent wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub public_key: PublicKey,
    pub endpoint: SocketAddr,
    pub allowed_ips: Vec<IpNet>,
    pub persistent_keepalive: Option<u16>,
}

impl PeerSpec {
    /// Allowed IPs as a set of canonical networks, so that order, host bits
    /// and duplicates do not count as a change.
    pub(crate) fn allowed_set(&self) -> BTreeSet<IpNet> {
        self.allowed_ips.iter().map(|n| n.trunc()).collect()
    }

    fn same_as(&self, other: &PeerSpec) -> bool {
        self.endpoint == other.endpoint
            && self.persistent_keepalive == other.persistent_keepalive
            && self.allowed_set() == other.allowed_set()
    }
}

/// What `peers_status` reports per peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub public_key: PublicKey,
    /// Where the peer is now: the configured endpoint, or where its last
    /// authenticated packet came from if it roamed.
    pub endpoint: Option<SocketAddr>,
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// Changes to apply, computed by [`diff_peers`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PeerDiff {
    pub add: Vec<PeerSpec>,
    /// Peers whose endpoint, keepalive or allowed IPs changed; updated in
    /// place so their session survives.
    pub update: Vec<PeerSpec>,
    pub remove: Vec<PublicKey>,
}

impl PeerDiff {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.update.is_empty() && self.remove.is_empty()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeerListError {
    #[error("peer {0} is listed twice")]
    Duplicate(PublicKey),
}

/// Compares the desired list with what was last applied (`applied`) and
/// what the device actually holds (`live`).
///
/// The comparison is against the last *applied* spec rather than the live
/// endpoint, because a peer that roamed has a different live endpoint and
/// re-applying an unchanged list must not yank it back. `live` catches a
/// peer removed behind our back (e.g. by `wg set ... remove`): it is added
/// again.
pub fn diff_peers(
    applied: &HashMap<PublicKey, PeerSpec>,
    live: &HashSet<PublicKey>,
    desired: &[PeerSpec],
) -> Result<PeerDiff, PeerListError> {
    let mut seen = HashSet::with_capacity(desired.len());
    let mut diff = PeerDiff::default();
    for want in desired {
        if !seen.insert(want.public_key) {
            return Err(PeerListError::Duplicate(want.public_key));
        }
        if !live.contains(&want.public_key) {
            diff.add.push(want.clone());
            continue;
        }
        match applied.get(&want.public_key) {
            Some(had) if had.same_as(want) => {}
            _ => diff.update.push(want.clone()),
        }
    }
    let mut remove: Vec<PublicKey> = live.iter().filter(|k| !seen.contains(k)).copied().collect();
    remove.sort();
    diff.remove = remove;
    Ok(diff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> PublicKey {
        PublicKey([n; 32])
    }

    fn spec(n: u8, ips: &[&str]) -> PeerSpec {
        PeerSpec {
            public_key: key(n),
            endpoint: format!("192.0.2.{n}:51820").parse().unwrap(),
            allowed_ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            persistent_keepalive: None,
        }
    }

    fn state(specs: &[PeerSpec]) -> (HashMap<PublicKey, PeerSpec>, HashSet<PublicKey>) {
        (
            specs.iter().map(|s| (s.public_key, s.clone())).collect(),
            specs.iter().map(|s| s.public_key).collect(),
        )
    }

    #[test]
    fn same_list_twice_is_a_no_op() {
        let list = vec![spec(1, &["10.0.1.0/24"]), spec(2, &["10.0.2.0/24"])];
        let (applied, live) = state(&list);
        assert!(diff_peers(&applied, &live, &list).unwrap().is_empty());
    }

    #[test]
    fn allowed_ip_order_and_host_bits_do_not_count() {
        let a = spec(1, &["10.0.1.0/24", "fd00::/64"]);
        let (applied, live) = state(std::slice::from_ref(&a));
        let b = spec(1, &["fd00::1/64", "10.0.1.7/24", "10.0.1.0/24"]);
        assert!(diff_peers(&applied, &live, &[b]).unwrap().is_empty());
    }

    #[test]
    fn add_update_remove() {
        let (applied, live) = state(&[spec(1, &["10.0.1.0/24"]), spec(2, &["10.0.2.0/24"])]);
        let mut moved = spec(1, &["10.0.1.0/24"]);
        moved.endpoint = "198.51.100.1:1".parse().unwrap();
        let desired = vec![moved.clone(), spec(3, &["10.0.3.0/24"])];
        let d = diff_peers(&applied, &live, &desired).unwrap();
        assert_eq!(d.add, vec![spec(3, &["10.0.3.0/24"])]);
        assert_eq!(d.update, vec![moved]);
        assert_eq!(d.remove, vec![key(2)]);
    }

    #[test]
    fn keepalive_and_allowed_ips_changes_are_updates() {
        let (applied, live) = state(&[spec(1, &["10.0.1.0/24"])]);
        let mut k = spec(1, &["10.0.1.0/24"]);
        k.persistent_keepalive = Some(25);
        assert_eq!(diff_peers(&applied, &live, &[k]).unwrap().update.len(), 1);
        let ips = spec(1, &["10.0.1.0/24", "10.9.0.0/16"]);
        assert_eq!(diff_peers(&applied, &live, &[ips]).unwrap().update.len(), 1);
    }

    #[test]
    fn peer_removed_behind_our_back_is_added_again() {
        let list = vec![spec(1, &["10.0.1.0/24"])];
        let (applied, _) = state(&list);
        let d = diff_peers(&applied, &HashSet::new(), &list).unwrap();
        assert_eq!(d.add, list);
    }

    #[test]
    fn peer_added_behind_our_back_is_removed() {
        let (applied, mut live) = state(&[]);
        live.insert(key(9));
        let d = diff_peers(&applied, &live, &[]).unwrap();
        assert_eq!(d.remove, vec![key(9)]);
    }

    #[test]
    fn duplicates_are_refused() {
        let (applied, live) = state(&[]);
        let err = diff_peers(&applied, &live, &[spec(1, &[]), spec(1, &[])]).unwrap_err();
        assert_eq!(err, PeerListError::Duplicate(key(1)));
    }
}
