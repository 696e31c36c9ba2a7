//! The gossip engine: one task per node that drives foca (SWIM
//! membership and failure detection, with our changes riding on its
//! packets as broadcasts) and anti-entropy over one datagram socket.
//!
//! Idle, a node sends a probe and its answer each second, a few
//! membership packets each round, and one fixed-size digest a second
//! (four while the state it holds changes): nothing that grows with the
//! cluster. A change spreads by broadcast in O(log N) rounds;
//! anti-entropy repairs what broadcasts missed, exchanging summaries only
//! of the digest buckets that differ.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU8, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use foca::{BroadcastHandler, Config, Foca, Invalidates, OwnedNotification, PostcardCodec, Timer};
use muslin_model::health::BASE_ROUND;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::mpsc;

use super::state::{Cluster, Held, Member, Update};
use super::wire::{self, Sync};

/// A datagram socket: the sealed UDP transport, or the simulation's.
#[async_trait]
pub(crate) trait Wire: Send + 'static {
    async fn send(&mut self, to: SocketAddr, payload: &[u8]);
    /// The next datagram; `None` once the socket is gone for good.
    async fn recv(&mut self) -> Option<(SocketAddr, Vec<u8>)>;
    /// Stops reading before the engine's task ends (the socket itself is
    /// closed when the wire is dropped, right after).
    async fn close(&mut self) {}
}

#[derive(Debug, Clone)]
pub(crate) struct EngineConfig {
    pub name: String,
    pub generation: u64,
    pub advertise: SocketAddr,
    pub seeds: Vec<SocketAddr>,
    /// A gossip round: how often membership packets (carrying changes)
    /// go to a few peers.
    pub interval: Duration,
    /// How long a node that is not alive keeps its state.
    pub ttl: Duration,
    pub rng_seed: u64,
}

/// How long a suspected node has to refute before it is declared down.
const SUSPICION: Duration = Duration::from_secs(3);
/// A probe each second, answered within half of it.
const PROBE_PERIOD: Duration = Duration::from_secs(1);
const PROBE_RTT: Duration = Duration::from_millis(500);
/// The SWIM timings for a gossip round of `interval`: probe period,
/// probe timeout and suspicion. The constants above hold up to
/// [`BASE_ROUND`] (the agent's default round). Slower rounds are chosen
/// for clusters whose nodes have less time for gossip (the lab's hundred
/// agents on two cores): such a node also answers probes later, and must
/// not be declared down for it, so probing and suspicion slow down in
/// proportion (as data-path probing does, see
/// `muslin_model::health::probe_budget`).
fn swim_timings(interval: Duration) -> (Duration, Duration, Duration) {
    let scale = |d: Duration| {
        if interval <= BASE_ROUND {
            d
        } else {
            d.mul_f64(interval.as_secs_f64() / BASE_ROUND.as_secs_f64())
        }
    };
    (scale(PROBE_PERIOD), scale(PROBE_RTT), scale(SUSPICION))
}
/// Anti-entropy: one digest to one peer this often.
const SYNC_PERIOD: Duration = Duration::from_secs(1);
/// And this often while the state changes. Broadcasts carry a few changes
/// per packet; a burst of them (a hundred lab hosts starting at once,
/// each with a record, a claim and endpoints) queues behind the packets,
/// and once-a-second anti-entropy delivered other nodes' block claims a
/// median 3 s and at most 6 s after they were made. Digests are fixed in
/// size: idle, nothing changes and the period stays a second.
const SYNC_PERIOD_BUSY: Duration = Duration::from_millis(250);
/// Seeds not among the members are announced to this often.
const SEED_PERIOD: Duration = Duration::from_secs(5);
/// Deletions are remembered this long, then dropped everywhere.
const TOMBSTONE_GRACE: Duration = Duration::from_secs(3600);
/// Below a typical path MTU with room for sealing: membership packets
/// are never fragmented.
const MAX_PACKET: usize = 1200;
/// A change larger than this travels as a hint, fetched by anti-entropy.
const MAX_BROADCAST: usize = 700;

fn foca_config(cfg: &EngineConfig) -> Config {
    let mut c = Config::new_lan(NonZeroU32::new(1000).expect("non-zero"));
    let (period, rtt, suspicion) = swim_timings(cfg.interval);
    c.probe_period = period;
    c.probe_rtt = rtt;
    c.suspect_to_down_after = suspicion;
    // Down members are forgotten as their state is.
    c.remove_down_after = Some(cfg.ttl.max(Duration::from_secs(1)));
    c.max_packet_size = NonZeroUsize::new(MAX_PACKET).expect("non-zero");
    // Enough retransmissions for a change to reach a thousand nodes.
    c.max_transmissions = NonZeroU8::new(12).expect("non-zero");
    c.periodic_gossip = Some(foca::PeriodicParams {
        frequency: cfg.interval,
        num_members: NonZeroUsize::new(3).expect("non-zero"),
    });
    c
}

/// What the engine and the store share.
pub(crate) struct Shared {
    pub cluster: Cluster,
    up: HashSet<Member>,
    alive: HashMap<String, u32>,
    /// When each node was last seen alive (or first heard of).
    seen: HashMap<String, Instant>,
}

impl Shared {
    pub fn alive(&self, name: &str) -> bool {
        self.alive.get(name).is_some_and(|n| *n > 0)
    }

    fn set_up(&mut self, m: Member, up: bool) {
        let changed = if up {
            self.up.insert(m.clone())
        } else {
            self.up.remove(&m)
        };
        if changed {
            let n = self.alive.entry(m.name.to_string()).or_default();
            if up {
                *n += 1;
            } else {
                *n = n.saturating_sub(1);
            }
        }
    }
}

/// The monotonic clock: tokio's, so the simulation's paused clock
/// drives expiry too.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

enum Cmd {
    Timer(Timer<Member>),
    Broadcast(Vec<u8>),
    Shutdown,
}

pub(crate) struct Engine {
    shared: Arc<Mutex<Shared>>,
    tx: mpsc::UnboundedSender<Cmd>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A store dropped without `shutdown` (an agent stopped in-process) must
/// not keep answering probes for a node that is gone.
impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Engine {
    pub fn start(cfg: EngineConfig, wire: Box<dyn Wire>) -> Engine {
        let shared = Arc::new(Mutex::new(Shared {
            cluster: Cluster::new(&cfg.name, cfg.generation),
            up: HashSet::new(),
            alive: HashMap::new(),
            seen: HashMap::new(),
        }));
        let (tx, rx) = mpsc::unbounded_channel();
        let me = Member {
            name: cfg.name.as_str().into(),
            generation: cfg.generation,
            bump: 0,
            addr: cfg.advertise,
        };
        let foca = Foca::with_custom_broadcast(
            me,
            foca_config(&cfg),
            SmallRng::seed_from_u64(cfg.rng_seed),
            PostcardCodec,
            Changes {
                shared: shared.clone(),
            },
        );
        let driver = Driver {
            cfg,
            foca,
            shared: shared.clone(),
            tx: tx.clone(),
            wire,
            rt: Rt::default(),
            out: Vec::new(),
            rng: SmallRng::seed_from_u64(0x5eed),
            paths: HashMap::new(),
            last_digest: Vec::new(),
        };
        let task = Some(tokio::spawn(driver.run(rx)));
        Engine { shared, tx, task }
    }

    /// Reads the shared state.
    pub fn with<R>(&self, f: impl FnOnce(&Shared) -> R) -> R {
        f(&self.shared.lock().expect("gossip state"))
    }

    /// Writes (`Some`) or deletes (`None`) keys of this node's state; each
    /// change is broadcast.
    pub fn write(&self, changes: impl IntoIterator<Item = (String, Option<String>)>) {
        let now = now();
        let mut updates = Vec::new();
        {
            let mut s = self.shared.lock().expect("gossip state");
            for (k, v) in changes {
                if let Some(u) = s.cluster.write(&k, v, now) {
                    updates.push(u);
                }
            }
        }
        for u in updates {
            let _ = self.tx.send(Cmd::Broadcast(broadcast_item(u)));
        }
    }

    pub async fn shutdown(mut self) {
        let _ = self.tx.send(Cmd::Shutdown);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// A change as broadcast: whole when small, else a hint.
fn broadcast_item(mut u: Update) -> Vec<u8> {
    let whole = postcard::to_allocvec(&u).expect("updates serialize");
    if whole.len() <= MAX_BROADCAST {
        return whole;
    }
    u.entry.value = None;
    u.hint = true;
    postcard::to_allocvec(&u).expect("updates serialize")
}

/// Which broadcast a newer one replaces.
#[derive(Debug)]
struct ChangeKey {
    name: String,
    generation: u64,
    key: String,
    version: u64,
}

impl Invalidates for ChangeKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.name == other.name
            && self.generation == other.generation
            && self.key == other.key
            && self.version >= other.version
    }
}

#[derive(Debug, thiserror::Error)]
#[error("an unreadable change")]
struct BadChange;

/// Applies the changes broadcasts carry.
struct Changes {
    shared: Arc<Mutex<Shared>>,
}

impl BroadcastHandler<Member> for Changes {
    type Key = ChangeKey;
    type Error = BadChange;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&Member>,
    ) -> Result<Option<ChangeKey>, BadChange> {
        let u: Update = postcard::from_bytes(data).map_err(|_| BadChange)?;
        let key = ChangeKey {
            name: u.name.clone(),
            generation: u.generation,
            key: u.key.clone(),
            version: u.entry.version,
        };
        // Our own change: already applied by `write`, to be spread.
        let Some(sender) = sender else {
            return Ok(Some(key));
        };
        let mut s = self.shared.lock().expect("gossip state");
        Ok(s.cluster
            .apply_update(&u, Some(sender.addr), now())
            .then_some(key))
    }
}

/// Collects what foca asks for while it handles one event.
#[derive(Default)]
struct Rt {
    sends: Vec<(Member, Vec<u8>)>,
    timers: Vec<(Timer<Member>, Duration)>,
    notes: Vec<OwnedNotification<Member>>,
}

impl foca::Runtime<Member> for Rt {
    fn notify(&mut self, n: foca::Notification<'_, Member>) {
        self.notes.push(n.to_owned());
    }

    fn send_to(&mut self, to: Member, data: &[u8]) {
        let mut p = Vec::with_capacity(data.len() + 1);
        p.push(wire::MEMBERSHIP);
        p.extend_from_slice(data);
        self.sends.push((to, p));
    }

    fn submit_after(&mut self, event: Timer<Member>, after: Duration) {
        self.timers.push((event, after));
    }
}

type Membership = Foca<Member, PostcardCodec, SmallRng, Changes>;

struct Driver {
    cfg: EngineConfig,
    foca: Membership,
    shared: Arc<Mutex<Shared>>,
    tx: mpsc::UnboundedSender<Cmd>,
    wire: Box<dyn Wire>,
    rt: Rt,
    /// Anti-entropy datagrams to send.
    out: Vec<(SocketAddr, Vec<u8>)>,
    rng: SmallRng,
    /// Where members' packets come from, by name, where that differs
    /// from the address they advertise: an advertised address may not
    /// reach its node from here (a first host without peers advertises
    /// before any peer can tell it which of its addresses they reach, and
    /// two hosts may advertise one shared address), while the path its
    /// packets came by does, so replies take that.
    paths: HashMap<String, SocketAddr>,
    /// The digest the last sync sent: another one means the state changed.
    last_digest: Vec<u32>,
}

/// Paths remembered at most; beyond, the table starts over.
const MAX_PATHS: usize = 65_536;

impl Driver {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        self.announce_to_seeds();
        let sync = tokio::time::sleep(SYNC_PERIOD);
        tokio::pin!(sync);
        let mut seeds = tokio::time::interval(SEED_PERIOD);
        let mut expire = tokio::time::interval(Duration::from_secs(1));
        for t in [&mut seeds, &mut expire] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                d = self.wire.recv() => match d {
                    Some((from, data)) => self.datagram(from, &data),
                    None => break,
                },
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Timer(t)) => {
                        let _ = self.foca.handle_timer(t, &mut self.rt);
                    }
                    Some(Cmd::Broadcast(item)) => {
                        if let Err(e) = self.foca.add_broadcast(&item) {
                            tracing::debug!(cause = %e, "a change was not broadcast; anti-entropy carries it");
                        }
                    }
                    Some(Cmd::Shutdown) | None => break,
                },
                _ = &mut sync => {
                    let period = if self.sync() { SYNC_PERIOD_BUSY } else { SYNC_PERIOD };
                    sync.as_mut().reset(tokio::time::Instant::now() + period);
                }
                _ = seeds.tick() => self.announce_to_seeds(),
                _ = expire.tick() => self.expire(),
            }
            self.flush().await;
        }
        self.wire.close().await;
    }

    fn datagram(&mut self, from: SocketAddr, data: &[u8]) {
        match data.split_first() {
            Some((&wire::MEMBERSHIP, packet)) => {
                let readdressed = self.readdress(from, packet);
                let packet = readdressed.as_deref().unwrap_or(packet);
                if let Err(e) = self.foca.handle_data(packet, &mut self.rt) {
                    tracing::debug!(peer = %from, cause = %e, "membership packet refused");
                }
            }
            Some((&wire::SYNC, body)) => match wire::decode(body) {
                Some(m) => self.on_sync(from, m),
                None => tracing::debug!(peer = %from, "unreadable anti-entropy message"),
            },
            _ => tracing::debug!(peer = %from, "datagram of an unknown kind"),
        }
    }

    /// Notes the path a member's packet came by; an announce to a seed
    /// (sent before its identity is known) is addressed to us, so foca
    /// takes it whichever of our addresses it reached.
    fn readdress(&mut self, from: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
        let (mut h, rest) = postcard::take_from_bytes::<foca::Header<Member>>(packet).ok()?;
        if h.src.addr == from {
            self.paths.remove(&*h.src.name);
        } else if self.paths.get(&*h.src.name) != Some(&from) {
            if self.paths.len() >= MAX_PATHS {
                self.paths.clear();
            }
            self.paths.insert(h.src.name.to_string(), from);
        }
        if !h.dst.name.is_empty() || h.message != foca::Message::Announce {
            return None;
        }
        h.dst = self.foca.identity().clone();
        let mut out = postcard::to_allocvec(&h).ok()?;
        out.extend_from_slice(rest);
        Some(out)
    }

    /// Where to send what is meant for a member.
    fn path(&self, to: &Member) -> SocketAddr {
        self.paths.get(&*to.name).copied().unwrap_or(to.addr)
    }

    fn send_sync(&mut self, to: SocketAddr, m: &Sync) {
        self.out.push((to, wire::encode(m)));
    }

    fn on_sync(&mut self, from: SocketAddr, m: Sync) {
        let now = now();
        let mut replies = Vec::new();
        {
            let mut s = self.shared.lock().expect("gossip state");
            match m {
                Sync::Digest(theirs) => {
                    let diff = s.cluster.differing(&theirs);
                    if !diff.is_empty() {
                        let held = s.cluster.summary(&diff);
                        replies.extend(wire::summaries(&diff, held));
                    }
                }
                Sync::Summary { buckets, held } => {
                    let plan = s.cluster.compare(&buckets, &held, now);
                    replies.extend(wire::deltas(plan.push));
                    for chunk in plan.pull.chunks(1000) {
                        replies.push(Sync::Pull(chunk.to_vec()));
                    }
                }
                Sync::Deltas(ds) => {
                    for d in &ds {
                        s.cluster.apply_delta(d, now);
                    }
                }
                Sync::Pull(hs) => {
                    let ds: Vec<_> = hs
                        .iter()
                        .take(10_000)
                        .filter_map(|h| s.cluster.answer_pull(h))
                        .collect();
                    replies.extend(wire::deltas(ds));
                }
            }
        }
        for r in &replies {
            self.send_sync(from, r);
        }
    }

    /// One digest to one live member, chosen at random. Whether the state
    /// changed since the last one.
    fn sync(&mut self) -> bool {
        let digest = {
            let s = self.shared.lock().expect("gossip state");
            if s.up.is_empty() {
                None
            } else {
                let i = self.rng.random_range(0..s.up.len());
                let to = s.up.iter().nth(i).expect("in range").clone();
                Some((to, s.cluster.digest()))
            }
        };
        let Some((to, d)) = digest else {
            return false;
        };
        let changed = d != self.last_digest;
        let msg = Sync::Digest(d);
        self.send_sync(self.path(&to), &msg);
        if let Sync::Digest(d) = msg {
            self.last_digest = d;
        }
        changed
    }

    /// Seeds that are not members yet (or any more) are announced to:
    /// how a node joins, and how a partition heals.
    fn announce_to_seeds(&mut self) {
        let members: HashSet<SocketAddr> = self
            .foca
            .iter_members()
            .map(|m| self.path(m.id()))
            .collect();
        for seed in self.cfg.seeds.clone() {
            if members.contains(&seed) || seed == self.cfg.advertise {
                continue;
            }
            let unknown = Member {
                name: "".into(),
                generation: 0,
                bump: 0,
                addr: seed,
            };
            let _ = self.foca.announce(unknown, &mut self.rt);
        }
    }

    /// Drops the state of nodes not alive for longer than the TTL.
    fn expire(&mut self) {
        let now = now();
        let ttl = self.cfg.ttl;
        let mut s = self.shared.lock().expect("gossip state");
        let names: Vec<String> = s.cluster.nodes().map(|((n, _), _)| n.clone()).collect();
        for n in names {
            let alive = s.alive(&n);
            let e = s.seen.entry(n).or_insert(now);
            if alive {
                *e = now;
            }
        }
        let Shared { cluster, seen, .. } = &mut *s;
        cluster.expire(
            now,
            |n| seen.get(n).is_some_and(|t| now.duration_since(*t) >= ttl),
            TOMBSTONE_GRACE,
            ttl + Duration::from_secs(600),
        );
        let held: HashSet<String> = cluster.nodes().map(|((n, _), _)| n.clone()).collect();
        seen.retain(|n, _| held.contains(n));
    }

    /// Sends what the last event produced, arms its timers and applies
    /// membership changes; then fetches what hints asked for.
    async fn flush(&mut self) {
        let rt = std::mem::take(&mut self.rt);
        if !rt.notes.is_empty() {
            let mut s = self.shared.lock().expect("gossip state");
            for n in rt.notes {
                match n {
                    OwnedNotification::MemberUp(m) => s.set_up(m, true),
                    OwnedNotification::MemberDown(m) => s.set_up(m, false),
                    OwnedNotification::Rename(old, new) if s.up.contains(&old) => {
                        s.set_up(old, false);
                        s.set_up(new, true);
                    }
                    OwnedNotification::Rejoin(m) => {
                        tracing::info!(
                            bump = m.bump,
                            "the cluster had declared this node down; rejoined"
                        );
                    }
                    _ => {}
                }
            }
        }
        for (t, after) in rt.timers {
            let tx = self.tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = tx.send(Cmd::Timer(t));
            });
        }
        let wanted: Vec<(Held, SocketAddr)> = {
            let mut s = self.shared.lock().expect("gossip state");
            std::mem::take(&mut s.cluster.wanted)
        };
        let mut pulls: HashMap<SocketAddr, Vec<Held>> = HashMap::new();
        for (h, whom) in wanted {
            pulls.entry(whom).or_default().push(h);
        }
        for (whom, hs) in pulls {
            self.send_sync(whom, &Sync::Pull(hs));
        }
        for (to, p) in rt.sends {
            let to = self.path(&to);
            self.wire.send(to, &p).await;
        }
        for (to, p) in std::mem::take(&mut self.out) {
            self.wire.send(to, &p).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slower_rounds_slow_probing_and_suspicion_in_proportion() {
        let ms = Duration::from_millis;
        for fast in [ms(50), ms(100), BASE_ROUND] {
            assert_eq!(swim_timings(fast), (PROBE_PERIOD, PROBE_RTT, SUSPICION));
        }
        let (period, rtt, suspicion) = swim_timings(ms(500));
        assert_eq!(period, ms(2500));
        assert_eq!(rtt, ms(1250));
        assert_eq!(suspicion, ms(7500));
        // foca requires a probe timeout below the period (documented,
        // not checked).
        assert!(rtt < period);
    }
}
