//! Which peers this node reaches directly and which through another node,
//! computed over the cluster's verified links. Every node publishes what
//! its probes found of the data path to each peer (`NodeRecord::health`);
//! from the same records every node draws the same graph and picks the
//! same relay for a pair, whichever end asks (a relay's choice depends on
//! the pair, not on who computes it), so both directions of a connection
//! cross the same relay.
//!
//! A link is down when either end says its data path fails, and a relay
//! must have verified links (both ends say they work) to both ends. A
//! relay forwards to the far end over its own direct path, so a packet
//! crosses at most one relay and never comes back: no loops. The
//! hysteresis lives in the reports (`health::HOLD`): a path that failed is
//! reported working only after answering for a while.

use crate::cluster::{ClusterView, NodeRecord, PathHealth};
use crate::dataplane::Backend;
use crate::peer_map::PeerMap;

/// Capability a node advertises when it forwards relayed traffic: nodes
/// of older versions are never chosen.
pub const CAPABILITY: &str = "relay";

/// How one hop of a path carries packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hop {
    Routed,
    Vxlan,
}

impl Hop {
    /// Routed costs less than an encapsulated hop.
    fn cost(self) -> u32 {
        match self {
            Hop::Routed => 1,
            Hop::Vxlan => 2,
        }
    }
}

/// How this node should reach one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Direct,
    /// Through `via`, because the direct path fails (`why`).
    Relay {
        via: String,
        why: String,
    },
    /// The direct path fails and no node can relay: why, in an
    /// operator's words.
    Stuck(String),
}

/// Why a node cannot relay a pair: told in words by [`Graph::explain`].
#[derive(Debug, Clone, Copy)]
enum Unfit {
    NoRecord,
    NotAlive,
    NoRelaying,
    NoPath(Leg),
    Failing(Leg),
    Unverified(Leg),
}

/// Which hop of a relayed path: from us to the relay, or on to the peer.
#[derive(Debug, Clone, Copy)]
enum Leg {
    ToRelay,
    FromRelay,
}

/// The cluster's links as this node sees them.
pub struct Graph<'a> {
    view: &'a ClusterView,
    me: &'a str,
    /// What this node's own probes found just now: fresher than its
    /// record in the view.
    mine: &'a PeerMap<PathHealth>,
    backend: Backend,
}

impl<'a> Graph<'a> {
    pub fn new(
        view: &'a ClusterView,
        me: &'a str,
        mine: &'a PeerMap<PathHealth>,
        backend: Backend,
    ) -> Self {
        Graph {
            view,
            me,
            mine,
            backend,
        }
    }

    fn record(&self, n: &str) -> Option<&'a NodeRecord> {
        self.view.nodes.get(n)?.record.as_deref()
    }

    /// What `a` says of its data path to `b`. Our own judgement wins;
    /// until it exists (a peer just appeared) the record we published
    /// stands.
    fn says(&self, a: &str, b: &str) -> Option<&'a PathHealth> {
        let published = || self.record(a)?.health.get(b);
        match a == self.me {
            true => self.mine.get(b).or_else(published),
            false => published(),
        }
    }

    /// Why the link a–b is down, if either end says so.
    pub fn down(&self, a: &str, b: &str) -> Option<String> {
        let cause = |h: &PathHealth| h.cause.clone().unwrap_or_else(|| "no answer".into());
        if let Some(h) = self.failing(a, b) {
            return Some(match a == self.me {
                true => cause(h),
                false => format!("{a} reports {}", cause(h)),
            });
        }
        self.failing(b, a)
            .map(|h| format!("{b} reports {}", cause(h)))
    }

    /// What `a` says of a failing data path to `b`, if it says so.
    fn failing(&self, a: &str, b: &str) -> Option<&'a PathHealth> {
        self.says(a, b).filter(|h| !h.ok)
    }

    /// Both ends say the link works.
    fn verified(&self, a: &str, b: &str) -> bool {
        let ok = |x: &str, y: &str| self.says(x, y).is_some_and(|h| h.ok);
        ok(a, b) && ok(b, a)
    }

    /// How `a` would carry packets to `b` directly, by the backend's rule
    /// (the same one `dataplane::path_to` applies to our own peers).
    pub fn hop(&self, a: &str, b: &str) -> Option<Hop> {
        let (ra, rb) = (self.record(a)?, self.record(b)?);
        let same_l2 =
            ra.underlay_prefix.contains(&rb.address) && rb.underlay_prefix.contains(&ra.address);
        match (self.backend, same_l2) {
            (Backend::Vxlan, _) | (Backend::Auto, false) => Some(Hop::Vxlan),
            (Backend::Auto | Backend::Routed, true) => Some(Hop::Routed),
            (Backend::Routed, false) => None,
        }
    }

    /// Why `r` cannot relay between us and `peer`, if it cannot. Told
    /// in words only when no relay is found ([`Graph::explain`]): in a
    /// large cluster most nodes are checked and most are fit.
    fn unfit(&self, r: &str, peer: &str) -> Option<Unfit> {
        let Some(rec) = self.record(r) else {
            return Some(Unfit::NoRecord);
        };
        if !self.view.nodes.get(r).is_some_and(|p| p.alive) {
            return Some(Unfit::NotAlive);
        }
        if !rec.capabilities.iter().any(|c| c == CAPABILITY) {
            return Some(Unfit::NoRelaying);
        }
        for (leg, (x, y)) in [(Leg::ToRelay, (self.me, r)), (Leg::FromRelay, (r, peer))] {
            if self.hop(x, y).is_none() {
                return Some(Unfit::NoPath(leg));
            }
            if self.failing(x, y).is_some() || self.failing(y, x).is_some() {
                return Some(Unfit::Failing(leg));
            }
            if !self.verified(x, y) {
                return Some(Unfit::Unverified(leg));
            }
        }
        None
    }

    /// [`Graph::unfit`]'s reason in an operator's words.
    fn explain(&self, r: &str, peer: &str, why: Unfit) -> String {
        let ends = |leg| match leg {
            Leg::ToRelay => (self.me, r),
            Leg::FromRelay => (r, peer),
        };
        match why {
            Unfit::NoRecord => "no record".into(),
            Unfit::NotAlive => "not alive".into(),
            Unfit::NoRelaying => format!(
                "runs {}, which does not relay",
                self.record(r).map_or("?", |x| x.version.as_str())
            ),
            Unfit::NoPath(leg) => {
                let (x, y) = ends(leg);
                format!("no {x}–{y} path with this backend")
            }
            Unfit::Failing(leg) => {
                let (x, y) = ends(leg);
                let c = self.down(x, y).unwrap_or_default();
                format!("{x}–{y} failing ({c})")
            }
            // A node without a block has no VTEP address to probe.
            Unfit::Unverified(leg) => {
                let (x, y) = ends(leg);
                format!("{x}–{y} not verified yet (no report from both ends)")
            }
        }
    }

    /// How to reach `peer`: directly unless the link is down, else through
    /// the relay with the cheapest two hops; among equals, one picked by a
    /// hash of the pair, so pairs spread over relays. `kept`: the relay
    /// used until now, which stays while no relay is verified and it does
    /// not say the far end fails: while a relay's agent restarts (or ours,
    /// or the far end's) nobody can verify it and gossip may call it dead
    /// for a while, yet its kernel forwards, and the direct path is known
    /// to fail. Keeping a relay that really died loses nothing the direct
    /// path would not; a verified relay or a healed direct path wins.
    pub fn route(&self, peer: &str, kept: Option<&str>) -> Route {
        let Some(cause) = self.down(self.me, peer) else {
            return Route::Direct;
        };
        let mut fit = Vec::new();
        let mut unfit: Vec<(&str, Unfit)> = Vec::new();
        for r in self.view.nodes.keys() {
            if r == self.me || r == peer {
                continue;
            }
            match self.unfit(r, peer) {
                None => {
                    let cost = self.hop(self.me, r).map_or(0, Hop::cost)
                        + self.hop(r, peer).map_or(0, Hop::cost);
                    fit.push((cost, spread(self.me, peer, r), r.clone()));
                }
                Some(why) => unfit.push((r, why)),
            }
        }
        fit.sort();
        // A relay in use stays while it is fit: a new node or another
        // candidate coming and going moves no pair. Both ends must agree,
        // and each knows its own choice before the other's: where they
        // differ, the choice of the end whose name sorts first wins.
        let theirs = self.record(peer).and_then(|r| r.relays.get(self.me));
        let (first, second) = match self.me < peer {
            true => (kept, theirs.map(String::as_str)),
            false => (theirs.map(String::as_str), kept),
        };
        let keep = [first, second]
            .into_iter()
            .flatten()
            .find_map(|k| fit.iter().position(|(_, _, r)| r == k));
        if let Some((_, _, via)) = keep
            .map(|i| fit.swap_remove(i))
            .or_else(|| fit.into_iter().next())
        {
            return Route::Relay {
                via,
                why: format!("direct path failing: {cause}"),
            };
        }
        if let Some(r) = kept.filter(|r| self.may_keep(r, peer)) {
            return Route::Relay {
                via: r.to_string(),
                why: format!("direct path failing: {cause}; kept {r}: no relay is verified now"),
            };
        }
        let mut why = format!("direct path failing: {cause}; ");
        for n in [peer, self.me] {
            if let Some(nat) = self.outbound_only(n) {
                why.push_str(&nat);
                why.push_str("; ");
            }
        }
        why.push_str(&match unfit.is_empty() {
            true => "no other node to relay through".to_string(),
            false => {
                let more = unfit.len().saturating_sub(3);
                let first: Vec<String> = unfit
                    .iter()
                    .take(3)
                    .map(|(r, why)| format!("{r}: {}", self.explain(r, peer, *why)))
                    .collect();
                let mut s = format!("no relay: {}", first.join(", "));
                if more > 0 {
                    s.push_str(&format!(" and {more} more"));
                }
                s
            }
        });
        Route::Stuck(why)
    }

    fn may_keep(&self, r: &str, peer: &str) -> bool {
        // A far end nobody hears (its agent restarts) says nothing
        // against the relay.
        let heard = self
            .view
            .nodes
            .keys()
            .filter(|x| *x == self.me || self.view.nodes.get(*x).is_some_and(|p| p.alive))
            .any(|x| x != peer && x != r && self.says(x, peer).is_some_and(|h| h.ok));
        let far_fails = heard
            && self
                .record(r)
                .and_then(|x| x.health.get(peer))
                .is_some_and(|h| !h.ok);
        r != self.me
            && r != peer
            && self
                .record(r)
                .is_some_and(|x| x.capabilities.iter().any(|c| c == CAPABILITY))
            && self.hop(self.me, r).is_some()
            && !far_fails
    }

    /// Pitfall 20: a node that reaches its peers while none of them
    /// reaches it sits behind a NAT or a firewall that admits only what it
    /// opens. Every data path here needs inbound reachability.
    fn outbound_only(&self, n: &str) -> Option<String> {
        let rec = self.record(n)?;
        let peers: Vec<&String> = self.view.nodes.keys().filter(|x| *x != n).collect();
        let reaches_out = peers
            .iter()
            .any(|x| rec.reach.get(x).is_some_and(|r| !r.is_empty()));
        let reached = peers.iter().any(|x| {
            self.record(x)
                .and_then(|r| r.reach.get(n))
                .is_some_and(|r| !r.is_empty())
        });
        (reaches_out && !reached).then(|| {
            format!(
                "no node reaches {n} while {n} reaches them: it is behind a NAT or a firewall that admits only connections it opens, and routed and VXLAN paths need {n} to accept packets; open UDP to it (the gossip port and VXLAN) or give it an address peers reach"
            )
        })
    }
}

/// A stable hash of the pair (either order) and the candidate relay.
fn spread(a: &str, b: &str, r: &str) -> u64 {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [lo, "\0", hi, "\0", r] {
        for byte in part.bytes() {
            h ^= u64::from(byte);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests;
