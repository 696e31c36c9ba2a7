//! What probes between agents found, as pure bookkeeping: which of a peer's
//! addresses answer, whether the data path to it works, and the largest
//! packet that crosses the underlay to it with DF set. The agent sends and
//! receives; this decides what the answers (and their absence) mean.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::cluster::PathHealth;
use crate::dataplane::Path;
use crate::peer_map::PeerMap;

/// How often the prober wakes, and how often the data path is probed: a
/// cut link is noticed within [`DATA_DOWN`] and half a tick.
pub const TICK: Duration = Duration::from_millis(500);
/// How often the advertised address is probed (while the data path does
/// not answer for it).
pub const FAST: Duration = Duration::from_secs(1);
/// The data path counts as failing once it left this long unanswered:
/// three probes lost in a row, so one lost datagram is not an outage.
pub const DATA_DOWN: Duration = Duration::from_millis(1600);
/// A data path that failed counts as working again only after answering
/// this long without a gap: a flapping link does not flap routes.
pub const HOLD: Duration = Duration::from_secs(5);
/// How often a peer's other addresses are probed (times the pace, see
/// [`pace`]).
pub const SLOW: Duration = Duration::from_secs(4);
/// How often the path MTU is confirmed.
pub const MTU_EVERY: Duration = Duration::from_secs(30);
/// A peer silent this long is probed only every [`QUIET_EVERY`] ticks,
/// its data path every [`QUIET_DATA_EVERY`] (a healed path is found soon).
const QUIET: Duration = Duration::from_secs(30);
const QUIET_EVERY: u64 = 20;
const QUIET_DATA_EVERY: u64 = 4;
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
    /// Its gossip port, where probes go.
    pub port: u16,
    /// Its VTEP address when a data path to it is programmed, and how.
    pub data: Option<(IpAddr, Path)>,
    /// Which run of its agent it is (`NodeRecord::started_ms`).
    pub incarnation: u64,
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
    /// Start of the data path's current run of answers without a gap of
    /// [`DATA_DOWN`].
    data_run: Option<Instant>,
    incarnation: Option<u64>,
    /// When a new run of the peer's agent was seen.
    restarted: Option<Instant>,
    pmtu: Option<u32>,
    /// The address the MTU was measured to: a new one starts over.
    mtu_target: Option<IpAddr>,
    mtu_due: Option<Instant>,
    /// The MTU probes in flight: when, which sizes, which answered.
    mtu_burst: Option<Burst>,
    /// Confirmations in a row that nothing answered.
    mtu_misses: u32,
    /// The next measurement climbs the whole ladder.
    mtu_ladder: bool,
}

#[derive(Debug, Clone)]
struct Burst {
    at: Instant,
    acked: BTreeSet<u32>,
    ladder: bool,
}

impl PeerState {
    /// Whether `addr` answered within two of its probe periods and a half.
    fn answers(&self, addr: IpAddr, now: Instant) -> bool {
        let period = self.period.get(&addr).copied().unwrap_or(FAST);
        self.answered
            .get(&addr)
            .is_some_and(|t| now.duration_since(*t) < window(period))
    }

    /// Settles the burst in flight and returns the sizes to probe now, if
    /// a measurement is due. The interface's MTU (and what was measured
    /// before, and the next step up) is confirmed; the whole ladder is sent
    /// only when that fails. A measured value stands until a new one
    /// replaces it: one lost datagram must not re-pin every route.
    fn mtu_round(&mut self, adv: IpAddr, local_mtu: u32, now: Instant) -> Option<BTreeSet<u32>> {
        if let Some(b) = &self.mtu_burst {
            if now.duration_since(b.at) < FAST {
                return None;
            }
            match b.acked.last() {
                Some(m) => {
                    self.pmtu = Some(*m);
                    self.mtu_misses = 0;
                    self.mtu_ladder = false;
                }
                None if b.ladder => self.mtu_due = Some(now + SLOW),
                None => {
                    self.mtu_misses += 1;
                    // The first measurement climbs at once; a known value
                    // needs three silent confirmations.
                    self.mtu_ladder = self.pmtu.is_none() || self.mtu_misses >= 3;
                    self.mtu_due = Some(if self.mtu_ladder { now } else { now + SLOW });
                }
            }
            self.mtu_burst = None;
        }
        // Only towards an address that answers: sizes mean nothing when
        // nothing does.
        if !self.answers(adv, now) || self.mtu_due.is_some_and(|d| now < d) {
            return None;
        }
        let mut below = MTU_STEPS.iter().copied().filter(|s| *s < local_mtu);
        let sizes: BTreeSet<u32> = if self.mtu_ladder {
            below.chain([local_mtu]).collect()
        } else {
            let mut v: BTreeSet<u32> = [local_mtu].into();
            if let Some(m) = self.pmtu.filter(|m| *m < local_mtu) {
                v.insert(m);
                // The next step up, in case the last ladder lost a probe.
                // MTU_STEPS descends: the last larger one is the next up.
                v.extend(below.rfind(|s| *s > m));
            }
            v
        };
        self.mtu_burst = Some(Burst {
            at: now,
            acked: BTreeSet::new(),
            ladder: self.mtu_ladder,
        });
        // Jumbo frames are confirmed less often: the probe is as large.
        self.mtu_due = Some(now + MTU_EVERY * (local_mtu / 1500).max(1));
        Some(sizes)
    }
}

/// The prober's memory of every peer.
#[derive(Debug)]
pub struct Tracker {
    peers: BTreeMap<String, PeerState>,
    /// Ticks between data probes to one peer (see [`pace`]).
    pace: u32,
    /// Data probes per tick at most (see [`probe_budget`]).
    budget: usize,
    /// After the pace quickened: the slower one, and until when its
    /// windows still apply (the last answers of peers probed every few
    /// seconds must not count as gaps at once).
    slower: Option<(u32, Instant)>,
}

/// Data probes a node sends per tick at most, over all its peers. Up to
/// this many peers each is probed every tick; beyond, every peer less
/// often, so a node's probing stays bounded as the cluster grows (at 100
/// peers every 2 s instead of twice a second: 50 probes a second rather
/// than 200, with answers as many again) and a failing path is declared
/// after the same three lost probes, only later.
pub const DATA_PROBES_PER_TICK: usize = 25;

/// The gossip round the probing timings are made for (the agent's
/// default).
pub const BASE_ROUND: Duration = Duration::from_millis(200);

/// Data probes per tick for a node whose gossip round is `interval`. A
/// round slower than [`BASE_ROUND`] is chosen for nodes with less time to
/// spare (the lab's hundred agents on two cores): their probing shrinks in
/// proportion. Every window stretches with the pace that follows, so such
/// a node, which also answers late, is not taken for a failing path.
pub fn probe_budget(interval: Duration) -> usize {
    if interval <= BASE_ROUND {
        return DATA_PROBES_PER_TICK;
    }
    let scaled = DATA_PROBES_PER_TICK as u128 * BASE_ROUND.as_nanos() / interval.as_nanos();
    (scaled as usize).max(1)
}

/// Ticks between data probes to one peer among `peers`, at most `budget`
/// data probes a tick.
pub fn pace(peers: usize, budget: usize) -> u32 {
    // A budget of 0 would never probe; the tracker's is at least 1.
    peers.div_ceil(budget.max(1)).max(1) as u32
}

/// Sizes tried when the path is smaller than the interface: the common
/// MTUs of tunnels, VPNs and clouds, then IPv6's minimum.
const MTU_STEPS: &[u32] = &[
    9000, 8950, 8500, 4096, 1500, 1480, 1460, 1450, 1440, 1420, 1400, 1380, 1350, 1300, 1280,
];

impl Default for Tracker {
    fn default() -> Tracker {
        Tracker {
            peers: BTreeMap::new(),
            pace: 1,
            budget: DATA_PROBES_PER_TICK,
            slower: None,
        }
    }
}

impl Tracker {
    /// A tracker sending at most `budget` data probes a tick (see
    /// [`probe_budget`]).
    pub fn with_budget(budget: usize) -> Tracker {
        Tracker {
            budget: budget.max(1),
            ..Tracker::default()
        }
    }

    /// How long the data path may go unanswered before it counts as
    /// failing: three probes lost in a row, at the current pace.
    fn data_down(&self, now: Instant) -> Duration {
        DATA_DOWN * self.windows_pace(now)
    }

    /// The pace the windows follow: the current one, or a slower one that
    /// was in force until lately.
    fn windows_pace(&self, now: Instant) -> u32 {
        match self.slower {
            Some((p, until)) if now < until => p.max(self.pace),
            _ => self.pace,
        }
    }

    /// How long a data path that failed must answer without a gap before
    /// it is trusted again: [`HOLD`], and at least three probe periods.
    fn hold(&self, now: Instant) -> Duration {
        HOLD.max(TICK * self.windows_pace(now) * 3)
    }

    /// Forgets peers no longer planned and returns what to probe now;
    /// `round` counts ticks of [`TICK`].
    pub fn due(
        &mut self,
        plan: &[PeerPlan],
        local_mtu: u32,
        round: u64,
        now: Instant,
    ) -> Vec<(String, IpAddr, Purpose)> {
        let planned: std::collections::HashSet<&str> =
            plan.iter().map(|p| p.name.as_str()).collect();
        self.peers.retain(|n, _| planned.contains(n.as_str()));
        // Paced by the peers with a data path to probe.
        let want = pace(
            plan.iter().filter(|p| p.data.is_some()).count(),
            self.budget,
        );
        if want < self.pace {
            let old = self.pace.max(self.slower.map_or(0, |(p, _)| p));
            // Until the answers of the slower pace have aged out: the data
            // path's (three periods) and the slow addresses' (their window).
            self.slower = Some((old, now + (DATA_DOWN * old * 2).max(window(SLOW * old))));
        }
        self.pace = want;
        let pace = u64::from(self.pace);
        let per = |d: Duration| (d.as_millis() / TICK.as_millis()).max(1) as u64;
        // The slow probes (addresses of peers plainly there, and the
        // peers' other addresses) slow down with the data probes, so a
        // node's probing as a whole stays bounded as the cluster grows.
        // Their answers age by the period of before a slow-down for as
        // long as the data path's do.
        let (fast, slow) = (per(FAST), per(SLOW) * pace);
        let slow_period = SLOW * self.windows_pace(now);
        // Data answers come once a pace: at a slow one (a big cluster, a
        // slow round) more than the slow window apart.
        let data_lately_within = window(SLOW).max(self.data_down(now));
        let mut out = Vec::new();
        for (i, p) in plan.iter().enumerate() {
            // Looked up before inserting: a key is allocated only for a
            // new peer, not for every peer every tick.
            if !self.peers.contains_key(&p.name) {
                self.peers.insert(p.name.clone(), PeerState::default());
            }
            let st = self.peers.get_mut(&p.name).expect("inserted above");
            // Ticks of this peer, spread so that peers' rounds interleave.
            let turn = round + i as u64;
            st.first_probe.get_or_insert(now);
            // A peer that answered nothing for a while (gone, or its probe
            // port closed) is asked far less often.
            let last = st
                .answered
                .values()
                .max()
                .copied()
                .max(st.data_answered)
                .or(st.first_probe);
            let quiet = last.is_some_and(|t| now.duration_since(t) > QUIET);
            let ask_addresses = !quiet || turn.is_multiple_of(QUIET_EVERY);
            let ask_data = !quiet || turn.is_multiple_of(QUIET_DATA_EVERY);
            if !ask_addresses && !ask_data {
                continue;
            }
            st.period.retain(|a, _| p.addresses.contains(a));
            // A new run of the peer's agent: its last run's silence said
            // nothing of the path, so answers need not prove themselves.
            if st
                .incarnation
                .replace(p.incarnation)
                .is_some_and(|i| i != p.incarnation)
            {
                st.restarted = Some(now);
            }
            // While the advertised address is silent, the others are asked
            // every round: whether they answer decides whether the peer
            // is down or only that address is.
            let silent = p.addresses.first().is_some_and(|a| !st.answers(*a, now));
            // While the data path answers, the peer is plainly there: its
            // advertised address (the gossip port) is asked only now and
            // then. Once two data probes go missing, every round again,
            // so a failure's cause is known when it is declared.
            let data_fresh = p.data.is_some()
                && st
                    .data_answered
                    .is_some_and(|t| now.duration_since(t) < (TICK * 2 + TICK / 2) * pace as u32);
            // The advertised address's answers age by the slow period
            // while the data path answered lately: a moment of missing
            // data probes must not make its last answer look stale, and
            // the node look unreached there.
            let data_lately = st
                .data_answered
                .is_some_and(|t| now.duration_since(t) < data_lately_within);
            for (k, a) in p.addresses.iter().enumerate() {
                let every = if k == 0 && !data_lately {
                    FAST
                } else {
                    slow_period
                };
                st.period.insert(*a, every);
                let due = match k {
                    // Slowly only while it is known to answer.
                    0 if data_fresh && !silent => turn.is_multiple_of(slow),
                    0 => turn.is_multiple_of(fast),
                    // Spread the slow probes of different peers over ticks.
                    _ => (silent && turn.is_multiple_of(fast)) || turn.is_multiple_of(slow),
                };
                if due && ask_addresses {
                    out.push((p.name.clone(), *a, Purpose::Address(*a)));
                }
            }
            match &p.data {
                Some((vtep, _)) => {
                    st.data_since.get_or_insert(now);
                    if ask_data && turn.is_multiple_of(pace) {
                        out.push((p.name.clone(), *vtep, Purpose::Data));
                    }
                }
                None => {
                    st.data_since = None;
                    st.data_answered = None;
                    st.data_run = None;
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
                st.data_run = None;
                st.pmtu = None;
                st.mtu_due = None;
                st.mtu_burst = None;
                st.mtu_misses = 0;
                st.mtu_ladder = false;
            }
            if let Some(sizes) = st.mtu_round(*adv, local_mtu, now) {
                out.extend(
                    sizes
                        .into_iter()
                        .map(|s| (p.name.clone(), *adv, Purpose::Mtu(s))),
                );
            }
        }
        out
    }

    /// Records an answer to a probe sent to `peer` for `purpose`.
    pub fn answered(&mut self, peer: &str, purpose: &Purpose, now: Instant) {
        let data_down = self.data_down(now);
        let Some(st) = self.peers.get_mut(peer) else {
            return;
        };
        match purpose {
            Purpose::Address(a) => {
                st.answered.insert(*a, now);
            }
            Purpose::Data => {
                let gap = st
                    .data_answered
                    .is_none_or(|t| now.duration_since(t) >= data_down);
                if gap {
                    st.data_run = Some(now);
                }
                st.data_answered = Some(now);
            }
            Purpose::Mtu(s) => {
                if let Some(b) = &mut st.mtu_burst {
                    b.acked.insert(*s);
                }
            }
        }
    }

    /// Addresses of each peer that answered lately, for peers probed long
    /// enough to judge (a fresh peer reports nothing rather than "none").
    pub fn reach(&self, now: Instant) -> PeerMap<Vec<IpAddr>> {
        self.peers
            .iter()
            // Judged after a window: by then the advertised address has
            // had its chances, and while it is silent every other address
            // is asked each round.
            .filter(|(_, st)| {
                st.first_probe
                    .is_some_and(|f| now.duration_since(f) >= window(FAST))
            })
            .map(|(n, st)| {
                let r = st
                    .answered
                    .iter()
                    .filter(|(a, t)| {
                        let period = st.period.get(*a).copied().unwrap_or(SLOW);
                        if now.duration_since(**t) < window(period) {
                            return true;
                        }
                        // The advertised address went silent: it counts as
                        // unreached only once another address answered
                        // after it did, so a peer that was merely down
                        // (restarting) is never reported as "reached
                        // elsewhere" and never made to move.
                        Some(**a) == st.mtu_target
                            && !st
                                .answered
                                .iter()
                                .any(|(b, tb)| b != *a && *tb > **t + FAST)
                    })
                    .map(|(a, _)| *a)
                    .collect();
                (n.as_str(), r)
            })
            .collect()
    }

    /// Whether `addr` of `peer` answered within the fast window.
    pub fn answers(&self, peer: &str, addr: IpAddr, now: Instant) -> bool {
        self.peers.get(peer).is_some_and(|st| st.answers(addr, now))
    }

    pub fn path_mtu(&self) -> BTreeMap<String, u32> {
        self.peers
            .iter()
            .filter_map(|(n, st)| st.pmtu.map(|m| (n.clone(), m)))
            .collect()
    }

    /// Health of the data path to each planned peer, once it has been
    /// probed for a full window; the cause names what still works.
    pub fn health(&self, plan: &[PeerPlan], vxlan_port: u16, now: Instant) -> PeerMap<PathHealth> {
        let mut out = PeerMap::with_capacity(plan.len());
        let (data_down, hold) = (self.data_down(now), self.hold(now));
        for p in plan {
            let (Some(st), Some((vtep, path)), Some(adv)) =
                (self.peers.get(&p.name), &p.data, p.addresses.first())
            else {
                continue;
            };
            let Some(since) = st.data_since else { continue };
            let answering = st
                .data_answered
                .is_some_and(|t| now.duration_since(t) < data_down);
            if !answering && now.duration_since(since) < data_down {
                continue;
            }
            // Down at once, up again only after [`HOLD`] of answers; a
            // path that answered from its first probes, or from a new run
            // of the peer's agent, never waits.
            let restarted = st
                .restarted
                .is_some_and(|x| now.duration_since(x) < hold * 2);
            let ok = answering
                && st.data_run.is_some_and(|r| {
                    r.duration_since(since) < data_down
                        || now.duration_since(r) >= hold
                        || restarted
                });
            // Whether the underlay answers now, not lately: the address
            // is asked every second again once data probes go missing.
            // Until those have had their window, its slower answers stand,
            // so the cause does not flip right after the failure.
            let settling = st
                .data_answered
                .is_some_and(|t| now.duration_since(t) < data_down + window(FAST));
            // Its slower answers come as often as it was asked lately.
            let slow = st.period.get(adv).copied().unwrap_or(SLOW).max(SLOW);
            let underlay = st.answered.get(adv).is_some_and(|t| {
                let age = now.duration_since(*t);
                age < window(FAST) || (settling && age < window(slow))
            });
            let cause = (!ok).then(|| match (path, underlay) {
                // Worded the same all along: the record is not published
                // again every second of the wait.
                _ if answering => format!(
                    "answering again, trusted after {}s without a gap",
                    hold.as_secs()
                ),
                (Path::Vxlan, true) => format!("UDP {vxlan_port} to {adv} unanswered, gossip fine"),
                (Path::Wireguard, true) => format!(
                    "WireGuard to {adv} unanswered (its UDP port, or a key it does not know), gossip fine"
                ),
                (_, true) => {
                    format!("routed packets to {vtep} via {adv} unanswered, gossip fine")
                }
                (_, false) => format!("{adv} does not answer on the underlay either"),
            });
            out.insert(
                &p.name,
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
            port: 7331,
            data: Some((ip("10.244.2.0"), Path::Vxlan)),
            incarnation: 1,
        }]
    }

    #[test]
    fn a_big_cluster_is_probed_at_a_bounded_rate_and_failures_wait_for_three_lost_probes() {
        let peers = hundred_peers();
        let mut t = Tracker::default();
        let t0 = Instant::now();
        let mut per_peer: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for round in 0..16u64 {
            let at = t0 + TICK * round as u32;
            let data = data_due(&mut t, &peers, round, at);
            assert!(
                data.len() <= DATA_PROBES_PER_TICK,
                "{} data probes in one tick",
                data.len()
            );
            for n in data {
                per_peer.entry(n.clone()).or_default().push(round);
                t.answered(&n, &Purpose::Data, at);
            }
        }
        assert_eq!(per_peer.len(), 100, "every peer is probed");
        assert!(per_peer
            .values()
            .all(|r| r.windows(2).all(|w| w[1] - w[0] == 4)));
        // Answers every 2 s keep every path up; silence for less than three
        // probe periods is no failure, for more it is.
        let last = t0 + TICK * 15;
        assert!(t.health(&peers, 4789, last).values().all(|h| h.ok));
        let h = t.health(&peers, 4789, last + TICK * 4 * 2);
        assert!(h.values().all(|h| h.ok));
        let h = t.health(&peers, 4789, last + TICK * 4 * 4);
        assert!(h.values().all(|h| !h.ok));
        // The cluster shrinks: answers two seconds old are no gap yet, and
        // the faster probes that follow keep every path up.
        let few = &peers[..20];
        let at = last + TICK;
        let data = t
            .due(few, 1500, 16, at)
            .into_iter()
            .filter(|(_, _, p)| *p == Purpose::Data)
            .count();
        assert_eq!(data, 20, "every peer's data path each tick again");
        assert!(t.health(few, 4789, at).values().all(|h| h.ok));
        for p in few {
            t.answered(&p.name, &Purpose::Data, at);
        }
        assert!(t.health(few, 4789, at + TICK).values().all(|h| h.ok));
        // A small cluster keeps probing every peer every tick.
        assert_eq!(pace(20, DATA_PROBES_PER_TICK), 1);
    }

    #[test]
    fn slower_gossip_rounds_probe_fewer_paths_and_wait_longer_to_judge_them() {
        let ms = Duration::from_millis;
        for fast in [ms(50), ms(100), BASE_ROUND] {
            assert_eq!(probe_budget(fast), DATA_PROBES_PER_TICK);
        }
        assert_eq!(probe_budget(ms(500)), 10);
        assert_eq!(probe_budget(ms(10_000)), 1);
        let peers = hundred_peers();
        let mut t = Tracker::with_budget(probe_budget(ms(500)));
        let t0 = Instant::now();
        let mut sent = 0;
        for round in 0..40u64 {
            let at = t0 + TICK * round as u32;
            let data = data_due(&mut t, &peers, round, at);
            assert!(data.len() <= 10, "{} data probes in one tick", data.len());
            sent += data.len();
            for n in data {
                t.answered(&n, &Purpose::Data, at);
            }
        }
        // Every peer every 10 ticks (5 s): 400 probes in 40 ticks.
        assert_eq!(sent, 400);
        // Answers 10 s old are no failure at that pace (three probes lost
        // is 16 s); 20 s of silence is.
        let last = t0 + TICK * 39;
        let h = t.health(&peers, 4789, last + Duration::from_secs(10));
        assert!(h.values().all(|h| h.ok));
        let h = t.health(&peers, 4789, last + Duration::from_secs(20));
        assert!(h.values().all(|h| !h.ok));

        // Slower still (pace 50: each data path every 25 s): while the
        // data paths answer, the peers' addresses stay on the slow period,
        // not asked every second between two data answers.
        let mut t = Tracker::with_budget(2);
        let mut addresses = 0;
        for round in 0..200u64 {
            let at = t0 + TICK * round as u32;
            for (n, _, p) in t.due(&peers, 1500, round, at) {
                match p {
                    Purpose::Data => t.answered(&n, &Purpose::Data, at),
                    Purpose::Address(a) => {
                        t.answered(&n, &Purpose::Address(a), at);
                        addresses += usize::from(round >= 100);
                    }
                    Purpose::Mtu(_) => {}
                }
            }
        }
        assert!(addresses <= 100, "{addresses} address probes in 50 s");
    }

    /// The peers whose data path is probed this tick.
    fn data_due(t: &mut Tracker, peers: &[PeerPlan], round: u64, at: Instant) -> Vec<String> {
        t.due(peers, 1500, round, at)
            .into_iter()
            .filter(|(_, _, p)| *p == Purpose::Data)
            .map(|(n, _, _)| n)
            .collect()
    }

    /// 100 routed peers with one address each.
    fn hundred_peers() -> Vec<PeerPlan> {
        (0..100u32)
            .map(|i| PeerPlan {
                name: format!("p{i}"),
                addresses: vec![IpAddr::from([192, 168, 1, (i + 2) as u8])],
                port: 7331,
                data: Some((IpAddr::from([10, 244, i as u8, 0]), Path::Routed)),
                incarnation: 1,
            })
            .collect()
    }

    fn hundred_peers_with_two_addresses() -> Vec<PeerPlan> {
        (0..100u32)
            .map(|i| PeerPlan {
                name: format!("p{i}"),
                addresses: vec![
                    IpAddr::from([192, 168, 1, (i + 2) as u8]),
                    IpAddr::from([192, 168, 2, (i + 2) as u8]),
                ],
                port: 7331,
                data: Some((IpAddr::from([10, 244, i as u8, 0]), Path::Routed)),
                incarnation: 1,
            })
            .collect()
    }

    #[test]
    fn a_big_clusters_addresses_are_asked_as_seldom_as_its_data_paths() {
        let peers = hundred_peers_with_two_addresses();
        let mut t = Tracker::default();
        let t0 = Instant::now();
        let mut asked: BTreeMap<IpAddr, usize> = BTreeMap::new();
        // 16 s of answered probes, counted after the first 8 s.
        for round in 0..48u64 {
            let at = t0 + TICK * round as u32;
            for (n, a, p) in t.due(&peers, 1500, round, at) {
                if round >= 16 {
                    if let Purpose::Address(_) = p {
                        *asked.entry(a).or_default() += 1;
                    }
                }
                t.answered(&n, &p, at);
            }
        }
        // At 4 s each, 16 s would ask each address 4 times: paced by 4
        // (100 peers), once.
        assert_eq!(asked.len(), 200, "every address is still asked");
        assert!(asked.values().all(|n| *n <= 2), "{asked:?}");
        // Their answers stand as long as they are asked for.
        let at = t0 + TICK * 47;
        let reach = t.reach(at);
        assert!(
            peers
                .iter()
                .all(|p| reach.get(&p.name) == Some(&p.addresses)),
            "{reach:?}"
        );
        assert!(t.health(&peers, 4789, at).values().all(|h| h.ok));
    }

    #[test]
    fn a_shrinking_cluster_keeps_its_addresses_answering_through_one_lost_probe() {
        let peers = hundred_peers_with_two_addresses();
        let mut t = Tracker::default();
        let t0 = Instant::now();
        for round in 0..48u64 {
            let at = t0 + TICK * round as u32;
            for (n, _, p) in t.due(&peers, 1500, round, at) {
                t.answered(&n, &p, at);
            }
        }
        // 60 peers leave (pace 4 to 2); the first probe of each address
        // after that is lost.
        let few = &peers[..40];
        let mut lost = std::collections::BTreeSet::new();
        for round in 48..200u64 {
            let at = t0 + TICK * round as u32;
            for (n, a, p) in t.due(few, 1500, round, at) {
                if matches!(p, Purpose::Address(_)) && lost.insert(a) {
                    continue;
                }
                t.answered(&n, &p, at);
            }
            let reach = t.reach(at);
            for p in few {
                assert_eq!(reach.get(&p.name), Some(&p.addresses), "round {round}");
            }
        }
        assert_eq!(lost.len(), 80, "every address lost one probe");
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
        let later = t0 + window(FAST);
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
        // It heals: trusted only after answering for HOLD.
        t.answered("h2", &Purpose::Data, t1);
        let h = t.health(&plan(), 4789, t1);
        assert!(!h["h2"].ok);
        assert!(h["h2"]
            .cause
            .as_deref()
            .unwrap()
            .contains("answering again"));
        let mut at = t1;
        while at < t1 + HOLD {
            at += TICK;
            t.answered("h2", &Purpose::Data, at);
        }
        assert!(t.health(&plan(), 4789, at)["h2"].ok);
        // Right after the failure the address's last answer stands; once
        // it had its chances to answer again, it is named as silent too.
        let h = t.health(&plan(), 4789, at + DATA_DOWN);
        assert!(h["h2"].cause.as_deref().unwrap().contains("gossip fine"));
        let h = t.health(&plan(), 4789, at + FAST * 5);
        assert!(h["h2"]
            .cause
            .as_deref()
            .unwrap()
            .contains("underlay either"));
    }

    #[test]
    fn the_data_path_fails_fast_and_returns_slowly() {
        let mut t = Tracker::default();
        let t0 = Instant::now();
        t.due(&plan(), 1500, 0, t0);
        // Answering from the first probes: trusted at once.
        let mut at = t0;
        for _ in 0..4 {
            at += TICK;
            t.answered("h2", &Purpose::Data, at);
        }
        assert!(t.health(&plan(), 4789, at)["h2"].ok);
        // Two probes lost is not an outage; three are.
        assert!(t.health(&plan(), 4789, at + TICK * 3)["h2"].ok);
        let cut = at + DATA_DOWN;
        assert!(!t.health(&plan(), 4789, cut)["h2"].ok);
        // Back, but flapping: a gap of DATA_DOWN starts the wait over.
        let back = cut + TICK;
        t.answered("h2", &Purpose::Data, back);
        t.answered("h2", &Purpose::Data, back + HOLD / 2);
        let h = t.health(&plan(), 4789, back + HOLD / 2);
        assert!(!h["h2"].ok, "the gap reset the run");
        let mut at = back + HOLD / 2;
        let start = at;
        while at < start + HOLD {
            assert!(!t.health(&plan(), 4789, at)["h2"].ok);
            at += TICK;
            t.answered("h2", &Purpose::Data, at);
        }
        assert!(t.health(&plan(), 4789, at)["h2"].ok);
    }

    #[test]
    fn a_restarted_agent_is_judged_afresh_not_held() {
        let mut t = Tracker::default();
        let t0 = Instant::now();
        t.due(&plan(), 1500, 0, t0);
        t.answered("h2", &Purpose::Data, t0 + TICK);
        // Its agent stops for 3 s: failing.
        let t1 = t0 + TICK + Duration::from_secs(3);
        t.due(&plan(), 1500, 1, t1);
        assert!(!t.health(&plan(), 4789, t1)["h2"].ok);
        // The old run answers again: held.
        t.answered("h2", &Purpose::Data, t1);
        assert!(!t.health(&plan(), 4789, t1)["h2"].ok);
        // A new run: still failing until it answers, then trusted at its
        // first answer.
        let mut p = plan();
        p[0].incarnation = 2;
        t.due(&p, 1500, 2, t1 + TICK);
        t.answered("h2", &Purpose::Data, t1);
        let silent = t1 + TICK + DATA_DOWN;
        assert!(!t.health(&p, 4789, silent)["h2"].ok);
        t.answered("h2", &Purpose::Data, silent + TICK);
        assert!(t.health(&p, 4789, silent + TICK)["h2"].ok);
        t.answered("h2", &Purpose::Data, t1 + TICK);
        assert!(t.health(&p, 4789, t1 + TICK)["h2"].ok);
    }

    #[test]
    fn a_working_data_path_slows_the_address_probes_down() {
        let adv = ip("192.168.20.12");
        let mut t = Tracker::default();
        let t0 = Instant::now();
        let asked = |due: Vec<(String, IpAddr, Purpose)>| {
            due.iter().any(|(_, _, p)| *p == Purpose::Address(adv))
        };
        assert!(asked(t.due(&plan(), 1500, 0, t0)));
        t.answered("h2", &Purpose::Address(adv), t0);
        t.answered("h2", &Purpose::Data, t0);
        // While the data path answers: the address every 4 s only, and it
        // still counts as answering in between.
        let mut times = 0;
        for k in 1..=8u64 {
            let at = t0 + TICK * k as u32;
            let due = t.due(&plan(), 1500, k, at);
            assert!(due.iter().any(|(_, _, p)| *p == Purpose::Data));
            if asked(due) {
                times += 1;
                t.answered("h2", &Purpose::Address(adv), at);
            }
            t.answered("h2", &Purpose::Data, at);
            assert!(t.answers("h2", adv, at), "tick {k}");
        }
        assert_eq!(times, 1, "once in 4 s");
        // Two data probes missing: the address is asked every second.
        let later = t0 + TICK * 8 + TICK * 3;
        let asks = (9..13u64)
            .filter(|k| asked(t.due(&plan(), 1500, *k, later)))
            .count();
        assert_eq!(asks, 2);
    }

    fn mtu_sizes(due: &[(String, IpAddr, Purpose)]) -> Vec<u32> {
        due.iter()
            .filter_map(|(_, _, p)| match p {
                Purpose::Mtu(s) => Some(*s),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn path_mtu_confirms_first_climbs_the_ladder_only_when_needed() {
        let adv = Purpose::Address(ip("192.168.20.12"));
        let mut t = Tracker::default();
        let t0 = Instant::now();
        assert!(
            mtu_sizes(&t.due(&plan(), 1500, 0, t0)).is_empty(),
            "nothing answered yet"
        );
        t.answered("h2", &adv, t0);
        let t1 = t0 + FAST;
        assert_eq!(
            mtu_sizes(&t.due(&plan(), 1500, 1, t1)),
            [1500],
            "the interface's MTU first"
        );
        // Lost behind the 1400-byte link: the whole ladder next.
        let t2 = t1 + FAST;
        t.answered("h2", &adv, t2);
        let ladder = mtu_sizes(&t.due(&plan(), 1500, 2, t2));
        assert!(ladder.len() > 5 && ladder.contains(&1400) && ladder.iter().all(|s| *s <= 1500));
        for s in [1280, 1350, 1400] {
            t.answered("h2", &Purpose::Mtu(s), t2);
        }
        let t3 = t2 + FAST;
        t.answered("h2", &adv, t3);
        t.due(&plan(), 1500, 3, t3);
        assert_eq!(t.path_mtu()["h2"], 1400);
        // Confirmations: what we know, the next step up, the full size.
        let t4 = t3 + MTU_EVERY;
        t.answered("h2", &adv, t4);
        assert_eq!(mtu_sizes(&t.due(&plan(), 1500, 4, t4)), [1400, 1420, 1500]);
        // One lost confirmation changes nothing.
        let t5 = t4 + FAST;
        t.answered("h2", &adv, t5);
        t.due(&plan(), 1500, 5, t5);
        assert_eq!(t.path_mtu()["h2"], 1400);
        // The path grew.
        let t6 = t5 + SLOW;
        t.answered("h2", &adv, t6);
        assert!(mtu_sizes(&t.due(&plan(), 1500, 6, t6)).contains(&1500));
        t.answered("h2", &Purpose::Mtu(1500), t6);
        let t7 = t6 + FAST;
        t.answered("h2", &adv, t7);
        t.due(&plan(), 1500, 7, t7);
        assert_eq!(t.path_mtu()["h2"], 1500);
    }

    #[test]
    fn a_peer_that_was_down_is_not_reported_as_reached_elsewhere() {
        let (a, b) = (ip("192.168.20.12"), ip("10.0.2.15"));
        let mut t = Tracker::default();
        let t0 = Instant::now();
        t.due(&plan(), 1500, 0, t0);
        t.answered("h2", &Purpose::Address(a), t0);
        t.answered("h2", &Purpose::Address(b), t0);
        // Both silent (the peer restarts): the advertised address still
        // counts, so nobody tells it to move.
        let t1 = t0 + SLOW + window(FAST);
        t.due(&plan(), 1500, 1, t1);
        assert!(t.reach(t1)["h2"].contains(&a), "{:?}", t.reach(t1));
        // Only the other address answers again: now the advertised one is
        // reported unreached, and it is probed every round meanwhile.
        let t2 = t1 + FAST;
        let due = t.due(&plan(), 1500, 2, t2);
        assert!(
            due.iter().any(|(_, x, _)| *x == b),
            "the others are asked every round"
        );
        t.answered("h2", &Purpose::Address(b), t2);
        assert_eq!(t.reach(t2)["h2"], vec![b]);
    }
}
