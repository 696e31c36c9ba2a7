//! Which changes of a node's own record go out at once, and which may wait.
//!
//! A record names every peer (what the node's probes reached of each, and
//! the health of its data path to each), so it grows with the cluster, and
//! each time it is published every peer fetches and decodes it whole: a
//! publish costs the cluster O(N) bytes of O(N) size. While a cluster
//! forms, each node judges a few more peers every round, and its record
//! changed every round: at 100 hosts that was most of the gossip traffic
//! and of the decoding of a cold start.
//!
//! Good news about a peer judged for the first time (it answers at its
//! advertised address; its data path works) waits for [`gap`] since the
//! last publish. Readers go on as if that peer were not judged yet: its
//! traffic flows directly all the same, and what waits is only that the
//! peer counts as a relay for it and as a witness against moving its
//! address (`underlay::move_wait` makes a move wait for such reports).
//! Everything else goes out at once: a path or address that stopped
//! answering, a peer judged failing or reached only at another address,
//! relays, addresses, keys.

use std::net::IpAddr;
use std::time::Duration;

use crate::cluster::NodeRecord;
use crate::peer_map::PeerMap;

/// How a freshly computed record differs from the one peers have, in
/// rising order of urgency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum News {
    /// Nothing to publish.
    None,
    /// Only peers newly judged well: publish once [`gap`] has passed.
    Routine,
    /// Publish now.
    Urgent,
}

/// Time between publishes of routine news: 50 ms a peer, at most 5 s. A
/// small cluster hears its news within a round or two; at 100 nodes a
/// forming cluster's records go out every 5 s instead of every round.
pub fn gap(peers: usize) -> Duration {
    const PER_PEER: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(5);
    PER_PEER
        .saturating_mul(u32::try_from(peers).unwrap_or(u32::MAX))
        .min(MAX)
}

/// What `fresh` brings over `published`; `advertised` gives a peer's
/// advertised address, which a first reach entry must contain to count as
/// good news (one without it may make that peer move its address).
pub fn news(
    published: &NodeRecord,
    fresh: &NodeRecord,
    advertised: impl Fn(&str) -> Option<IpAddr>,
) -> News {
    if !same_besides_peers(published, fresh) {
        return News::Urgent;
    }
    let reach = judged(&published.reach, &fresh.reach, |peer, addrs| {
        advertised(peer).is_some_and(|a| addrs.contains(&a))
    });
    let health = judged(&published.health, &fresh.health, |_, h| h.ok);
    reach.max(health)
}

/// How one per-peer map changed: a changed or dropped entry is urgent, a
/// new one routine when `good` says so.
fn judged<V: PartialEq>(
    old: &PeerMap<V>,
    new: &PeerMap<V>,
    good: impl Fn(&str, &V) -> bool,
) -> News {
    if old.iter().any(|(k, v)| new.get(k) != Some(v)) {
        return News::Urgent;
    }
    let mut out = News::None;
    for (k, v) in new.iter().filter(|(k, _)| !old.contains_key(k)) {
        if !good(k, v) {
            return News::Urgent;
        }
        out = News::Routine;
    }
    out
}

/// Whether the two records agree on everything but what they say of each
/// peer. Spelt out field by field, so a new field must be placed here.
fn same_besides_peers(a: &NodeRecord, b: &NodeRecord) -> bool {
    let NodeRecord {
        name,
        address,
        underlay_prefix,
        vtep_mac,
        mtu,
        version,
        address_reason,
        capabilities,
        addresses,
        reach: _,
        health: _,
        reserved,
        gossip_port,
        gossip_address,
        started_ms,
        relays,
        wireguard,
    } = a;
    *name == b.name
        && *address == b.address
        && *underlay_prefix == b.underlay_prefix
        && *vtep_mac == b.vtep_mac
        && *mtu == b.mtu
        && *version == b.version
        && *address_reason == b.address_reason
        && *capabilities == b.capabilities
        && *addresses == b.addresses
        && *reserved == b.reserved
        && *gossip_port == b.gossip_port
        && *gossip_address == b.gossip_address
        && *started_ms == b.started_ms
        && *relays == b.relays
        && *wireguard == b.wireguard
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::PathHealth;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn rec() -> NodeRecord {
        NodeRecord::new("h1", ip("10.0.0.1"), "10.0.0.0/24".parse().unwrap(), 1500)
    }

    fn adv(peer: &str) -> Option<IpAddr> {
        Some(match peer {
            "h2" => ip("10.0.0.2"),
            "h3" => ip("10.0.0.3"),
            _ => return None,
        })
    }

    fn health(ok: bool) -> PathHealth {
        PathHealth {
            ok,
            cause: (!ok).then(|| "no answer".into()),
            path_mtu: None,
        }
    }

    #[test]
    fn peers_newly_judged_well_are_routine() {
        let old = rec();
        assert_eq!(news(&old, &old.clone(), adv), News::None);
        let mut new = old.clone();
        new.reach.insert("h2", vec![ip("10.0.0.2")]);
        assert_eq!(news(&old, &new, adv), News::Routine);
        new.health.insert("h2", health(true));
        assert_eq!(news(&old, &new, adv), News::Routine);
        // A peer with two addresses answering at both is good news too.
        new.reach.insert("h3", vec![ip("10.0.0.3"), ip("10.1.0.3")]);
        assert_eq!(news(&old, &new, adv), News::Routine);
    }

    #[test]
    fn bad_news_and_news_of_ourselves_are_urgent() {
        let mut old = rec();
        old.reach.insert("h2", vec![ip("10.0.0.2")]);
        old.health.insert("h2", health(true));
        let after = |f: &dyn Fn(&mut NodeRecord)| {
            let mut new = old.clone();
            new.reach.insert("h3", vec![ip("10.0.0.3")]);
            f(&mut new);
            news(&old, &new, adv)
        };
        assert_eq!(after(&|_| {}), News::Routine, "the baseline");
        // A path that stopped working, or an address that stopped answering.
        assert_eq!(
            after(&|r| r.health.get_mut("h2").unwrap().ok = false),
            News::Urgent
        );
        assert_eq!(
            after(&|r| r.reach.get_mut("h2").unwrap().clear()),
            News::Urgent
        );
        // Peers that left.
        assert_eq!(after(&|r| drop(r.reach.remove("h2"))), News::Urgent);
        assert_eq!(after(&|r| drop(r.health.remove("h2"))), News::Urgent);
        // A peer judged failing from the first: its far end needs to know.
        assert_eq!(
            after(&|r| drop(r.health.insert("h3", health(false)))),
            News::Urgent
        );
        // A peer reached only at another address than it advertises, or
        // at none: it may have to move.
        assert_eq!(
            after(&|r| drop(r.reach.insert("h3", vec![ip("10.1.0.3")]))),
            News::Urgent
        );
        assert_eq!(after(&|r| drop(r.reach.insert("h3", vec![]))), News::Urgent);
        // A peer nobody advertised (no plan for it yet) is not good news.
        assert_eq!(
            after(&|r| drop(r.reach.insert("h9", vec![ip("10.0.0.9")]))),
            News::Urgent
        );
        // Everything of the node itself.
        assert_eq!(
            after(&|r| drop(r.relays.insert("h3".into(), "h2".into()))),
            News::Urgent
        );
        assert_eq!(after(&|r| r.addresses.push(ip("10.1.0.1"))), News::Urgent);
        assert_eq!(
            after(&|r| r.reserved.push("10.9.0.0/16".parse().unwrap())),
            News::Urgent
        );
        assert_eq!(after(&|r| r.address = ip("10.1.0.1")), News::Urgent);
        assert_eq!(after(&|r| r.mtu = 1400), News::Urgent);
        // A peer judged before whose entry changes, even for the better.
        assert_eq!(
            after(&|r| r.health.get_mut("h2").unwrap().path_mtu = Some(1450)),
            News::Urgent
        );
        assert_eq!(
            after(&|r| r.reach.get_mut("h2").unwrap().push(ip("10.1.0.2"))),
            News::Urgent
        );
    }

    #[test]
    fn the_gap_grows_with_the_cluster_up_to_five_seconds() {
        assert_eq!(gap(0), Duration::ZERO);
        assert_eq!(gap(3), Duration::from_millis(150));
        assert_eq!(gap(20), Duration::from_secs(1));
        assert_eq!(gap(100), Duration::from_secs(5));
        assert_eq!(gap(usize::MAX), Duration::from_secs(5));
    }
}
