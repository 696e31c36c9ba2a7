//! What probes between agents found, as pure bookkeeping: which of a peer's
//! addresses answer, whether the data path to it works, and the largest
//! packet that crosses the underlay to it with DF set. The agent sends and
//! receives; this decides what the answers (and their absence) mean.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::cluster::PathHealth;
use crate::dataplane::Path;

/// How often the advertised address and the data path are probed.
pub const FAST: Duration = Duration::from_secs(1);
/// How often a peer's other addresses are probed.
pub const SLOW: Duration = Duration::from_secs(4);
/// How often the path MTU is confirmed.
pub const MTU_EVERY: Duration = Duration::from_secs(30);
/// A target counts as answering while its last answer is younger than two
/// probe periods and a half: one lost datagram is not an outage.
fn window(period: Duration) -> Duration {
    period * 2 + period / 2
}

/// One peer as the prober should treat it this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPlan {
    pub name: String,
    /// Its addresses, the advertised one first.
    pub addresses: Vec<IpAddr>,
    /// Its VTEP address when a data path to it is programmed, and how.
    pub data: Option<(IpAddr, Path)>,
}

/// What one probe was for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    Address(IpAddr),
    Data,
    /// A DF probe of this IP packet size to the advertised address.
    Mtu(u32),
}

#[derive(Debug, Default, Clone)]
struct PeerState {
    first_probe: Option<Instant>,
    answered: BTreeMap<IpAddr, Instant>,
    /// How often each address is probed: its answers age accordingly.
    period: BTreeMap<IpAddr, Duration>,
    data_since: Option<Instant>,
    data_answered: Option<Instant>,
    pmtu: Option<u32>,
    /// The address the MTU was measured to: a new one starts over.
    mtu_target: Option<IpAddr>,
    mtu_due: Option<Instant>,
    /// Sizes of the MTU probes in flight and when the burst went out.
    mtu_burst: Option<(Instant, BTreeSet<u32>, BTreeSet<u32>)>,
}

/// The prober's memory of every peer.
#[derive(Debug, Default)]
pub struct Tracker {
    peers: BTreeMap<String, PeerState>,
}

/// Sizes tried when the path is smaller than the interface: the common
/// MTUs of tunnels, VPNs and clouds, then IPv6's minimum.
const MTU_STEPS: &[u32] = &[
    9000, 8950, 8500, 4096, 1500, 1480, 1460, 1450, 1440, 1420, 1400, 1380, 1350, 1300, 1280,
];

impl Tracker {
    /// Forgets peers no longer planned and returns what to probe now;
    /// `round` counts rounds of [`FAST`].
    pub fn due(
        &mut self,
        plan: &[PeerPlan],
        local_mtu: u32,
        round: u64,
        now: Instant,
    ) -> Vec<(String, IpAddr, Purpose)> {
        self.peers.retain(|n, _| plan.iter().any(|p| p.name == *n));
        let slow = (SLOW.as_secs() / FAST.as_secs()).max(1);
        let mut out = Vec::new();
        for (i, p) in plan.iter().enumerate() {
            let st = self.peers.entry(p.name.clone()).or_default();
            st.first_probe.get_or_insert(now);
            st.period.retain(|a, _| p.addresses.contains(a));
            for (k, a) in p.addresses.iter().enumerate() {
                st.period.insert(*a, if k == 0 { FAST } else { SLOW });
                // Spread the slow probes of different peers over rounds.
                if k == 0 || (round + i as u64).is_multiple_of(slow) {
                    out.push((p.name.clone(), *a, Purpose::Address(*a)));
                }
            }
            match &p.data {
                Some((vtep, _)) => {
                    st.data_since.get_or_insert(now);
                    out.push((p.name.clone(), *vtep, Purpose::Data));
                }
                None => {
                    st.data_since = None;
                    st.data_answered = None;
                }
            }
            let Some(adv) = p.addresses.first() else {
                continue;
            };
            if st.mtu_target != Some(*adv) {
                // The peer moved: judge its new address afresh.
                st.mtu_target = Some(*adv);
                st.data_since = p.data.as_ref().map(|_| now);
                st.data_answered = None;
                st.pmtu = None;
                st.mtu_due = None;
                st.mtu_burst = None;
            }
            if let Some((at, sent, acked)) = &st.mtu_burst {
                if now.duration_since(*at) < FAST {
                    continue;
                }
                if acked.is_empty() && sent.len() <= 2 {
                    // A confirmation went unanswered: climb the ladder now.
                    st.pmtu = None;
                    st.mtu_due = None;
                } else if acked.is_empty() {
                    // Nothing answered at all: the peer, not the size, is
                    // the problem; ask again soon.
                    st.mtu_due = Some(now + SLOW);
                } else {
                    st.pmtu = acked.last().copied().or(st.pmtu);
                }
                st.mtu_burst = None;
            }
            if st.mtu_due.is_some_and(|d| now < d) {
                continue;
            }
            // Confirm what we know and try the interface's full size; only
            // when neither answers is the whole ladder sent.
            let sizes: BTreeSet<u32> = match st.pmtu {
                Some(m) if m < local_mtu => [m, local_mtu].into(),
                Some(_) => [local_mtu].into(),
                None => MTU_STEPS
                    .iter()
                    .copied()
                    .filter(|s| *s < local_mtu)
                    .chain([local_mtu])
                    .collect(),
            };
            for s in &sizes {
                out.push((p.name.clone(), *adv, Purpose::Mtu(*s)));
            }
            st.mtu_burst = Some((now, sizes, BTreeSet::new()));
            st.mtu_due = Some(now + MTU_EVERY);
        }
        out
    }

    /// Records an answer to a probe sent to `peer` for `purpose`.
    pub fn answered(&mut self, peer: &str, purpose: &Purpose, now: Instant) {
        let Some(st) = self.peers.get_mut(peer) else {
            return;
        };
        match purpose {
            Purpose::Address(a) => {
                st.answered.insert(*a, now);
            }
            Purpose::Data => st.data_answered = Some(now),
            Purpose::Mtu(s) => {
                if let Some((_, sent, acked)) = &mut st.mtu_burst {
                    acked.insert(*s);
                    // The largest size answered: done early, and a later
                    // confirmation that failed falls back to the ladder.
                    if acked.last() == sent.last() {
                        st.pmtu = Some(*s);
                        st.mtu_burst = None;
                    }
                } else {
                    st.pmtu = Some(st.pmtu.map_or(*s, |m| m.max(*s)));
                }
            }
        }
    }

    /// Addresses of each peer that answered lately, for peers probed long
    /// enough to judge (a fresh peer reports nothing rather than "none").
    pub fn reach(&self, now: Instant) -> BTreeMap<String, Vec<IpAddr>> {
        self.peers
            .iter()
            // Every address has been probed at least once by then.
            .filter(|(_, st)| {
                st.first_probe
                    .is_some_and(|f| now.duration_since(f) >= SLOW + window(FAST))
            })
            .map(|(n, st)| {
                let r = st
                    .answered
                    .iter()
                    .filter(|(a, t)| {
                        let period = st.period.get(*a).copied().unwrap_or(SLOW);
                        now.duration_since(**t) < window(period)
                    })
                    .map(|(a, _)| *a)
                    .collect();
                (n.clone(), r)
            })
            .collect()
    }

    /// Whether `addr` of `peer` answered within the fast window.
    pub fn answers(&self, peer: &str, addr: IpAddr, now: Instant) -> bool {
        self.peers
            .get(peer)
            .and_then(|st| st.answered.get(&addr))
            .is_some_and(|t| now.duration_since(*t) < window(FAST))
    }

    pub fn path_mtu(&self) -> BTreeMap<String, u32> {
        self.peers
            .iter()
            .filter_map(|(n, st)| st.pmtu.map(|m| (n.clone(), m)))
            .collect()
    }

    /// Health of the data path to each planned peer, once it has been
    /// probed for a full window; the cause names what still works.
    pub fn health(
        &self,
        plan: &[PeerPlan],
        vxlan_port: u16,
        now: Instant,
    ) -> BTreeMap<String, PathHealth> {
        let mut out = BTreeMap::new();
        for p in plan {
            let (Some(st), Some((vtep, path)), Some(adv)) =
                (self.peers.get(&p.name), &p.data, p.addresses.first())
            else {
                continue;
            };
            let Some(since) = st.data_since else { continue };
            let ok = st
                .data_answered
                .is_some_and(|t| now.duration_since(t) < window(FAST));
            if !ok && now.duration_since(since) < window(FAST) {
                continue;
            }
            let underlay = self.answers(&p.name, *adv, now);
            let cause = (!ok).then(|| match (path, underlay) {
                (Path::Vxlan, true) => format!("UDP {vxlan_port} to {adv} unanswered, gossip fine"),
                (Path::Routed | Path::Unreachable(_), true) => {
                    format!("routed packets to {vtep} via {adv} unanswered, gossip fine")
                }
                (_, false) => format!("{adv} does not answer on the underlay either"),
            });
            out.insert(
                p.name.clone(),
                PathHealth {
                    ok,
                    cause,
                    path_mtu: st.pmtu,
                },
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn plan() -> Vec<PeerPlan> {
        vec![PeerPlan {
            name: "h2".into(),
            addresses: vec![ip("192.168.20.12"), ip("10.0.2.15")],
            data: Some((ip("10.244.2.0"), Path::Vxlan)),
        }]
    }

    #[test]
    fn addresses_answer_until_two_probes_go_missing() {
        let mut t = Tracker::default();
        let t0 = Instant::now();
        let due = t.due(&plan(), 1500, 0, t0);
        assert!(due.contains(&(
            "h2".into(),
            ip("192.168.20.12"),
            Purpose::Address(ip("192.168.20.12"))
        )));
        assert!(due.contains(&("h2".into(), ip("10.244.2.0"), Purpose::Data)));
        t.answered("h2", &Purpose::Address(ip("192.168.20.12")), t0);
        assert!(t.reach(t0).is_empty(), "too early to judge");
        let later = t0 + SLOW + window(FAST);
        t.due(&plan(), 1500, 1, later);
        t.answered("h2", &Purpose::Address(ip("192.168.20.12")), later);
        assert_eq!(t.reach(later)["h2"], vec![ip("192.168.20.12")]);
        assert!(t.answers("h2", ip("192.168.20.12"), later + FAST * 2));
        assert!(!t.answers("h2", ip("192.168.20.12"), later + FAST * 3));
    }

    #[test]
    fn a_blocked_vxlan_port_is_named_while_the_underlay_answers() {
        let mut t = Tracker::default();
        let t0 = Instant::now();
        t.due(&plan(), 1500, 0, t0);
        assert!(t.health(&plan(), 4789, t0).is_empty(), "not judged yet");
        let t1 = t0 + window(FAST);
        t.answered("h2", &Purpose::Address(ip("192.168.20.12")), t1);
        let h = t.health(&plan(), 4789, t1);
        assert!(!h["h2"].ok);
        assert_eq!(
            h["h2"].cause.as_deref(),
            Some("UDP 4789 to 192.168.20.12 unanswered, gossip fine")
        );
        t.answered("h2", &Purpose::Data, t1);
        assert!(t.health(&plan(), 4789, t1)["h2"].ok);
        let h = t.health(&plan(), 4789, t1 + FAST * 3);
        assert!(h["h2"]
            .cause
            .as_deref()
            .unwrap()
            .contains("underlay either"));
    }

    #[test]
    fn path_mtu_comes_from_the_largest_answered_probe() {
        let mut t = Tracker::default();
        let t0 = Instant::now();
        let due = t.due(&plan(), 1500, 0, t0);
        let sizes: Vec<u32> = due
            .iter()
            .filter_map(|(_, _, p)| match p {
                Purpose::Mtu(s) => Some(*s),
                _ => None,
            })
            .collect();
        assert!(sizes.contains(&1500) && sizes.contains(&1400) && sizes.iter().all(|s| *s <= 1500));
        // The small link passes 1400 and below.
        for s in [1280, 1350, 1400] {
            t.answered("h2", &Purpose::Mtu(s), t0);
        }
        assert!(t.path_mtu().is_empty(), "the burst is still out");
        let t1 = t0 + FAST;
        t.due(&plan(), 1500, 1, t1);
        assert_eq!(t.path_mtu()["h2"], 1400);
        // Later confirmations send two probes only.
        let t2 = t1 + MTU_EVERY;
        let due = t.due(&plan(), 1500, 2, t2);
        let n = due
            .iter()
            .filter(|(_, _, p)| matches!(p, Purpose::Mtu(_)))
            .count();
        assert_eq!(n, 2);
        t.answered("h2", &Purpose::Mtu(1500), t2);
        assert_eq!(t.path_mtu()["h2"], 1500, "the path grew");
    }
}
