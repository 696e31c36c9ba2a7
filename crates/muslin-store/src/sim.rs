//! An in-memory network for simulating large gossip clusters in one
//! process: the real gossip code (the engine and [`Gossip`]'s decoding) on
//! every node, datagrams carried by channels with a fixed latency and a
//! loss rate, each node's bytes counted as the sealed UDP transport would
//! put them on the wire. Used by `muslin bench --scale` under tokio's
//! paused clock, so a thousand nodes' rounds run in simulated time and
//! the figures do not depend on how fast this machine is.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::gossip::{Gossip, GossipConfig};
use crate::sealed::{AuthState, Redirects, SEALED_OVERHEAD};
use crate::swim::Wire;

/// What a sealed datagram is refused beyond: the largest UDP payload.
const MAX_DATAGRAM: usize = 65_507;
/// Datagrams queued per node before more are dropped, as a socket
/// buffer would.
const QUEUE: usize = 1024;

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    /// Messages the real transport would refuse: over a datagram.
    oversize: AtomicU64,
    /// Anti-entropy digests sent.
    digests: AtomicU64,
}

type Inbox = mpsc::Sender<(SocketAddr, Vec<u8>)>;

/// The simulated network: one inbox per address.
#[derive(Clone)]
pub struct MemNet {
    inner: Arc<Inner>,
}

struct Inner {
    latency: Duration,
    /// Loss rate in millionths.
    loss_ppm: u32,
    inboxes: Mutex<HashMap<SocketAddr, Inbox>>,
    counters: Mutex<HashMap<SocketAddr, Arc<Counters>>>,
    /// A cheap deterministic generator for loss: runs repeat.
    rng: AtomicU64,
}

/// A node's traffic so far, in bytes as sealed UDP payloads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeTraffic {
    pub sent: u64,
    pub received: u64,
    pub oversize: u64,
    pub digests: u64,
}

impl MemNet {
    pub fn new(latency: Duration, loss: f64) -> MemNet {
        MemNet {
            inner: Arc::new(Inner {
                latency,
                loss_ppm: (loss.clamp(0.0, 1.0) * 1e6) as u32,
                inboxes: Mutex::new(HashMap::new()),
                counters: Mutex::new(HashMap::new()),
                rng: AtomicU64::new(0x9e37_79b9_7f4a_7c15),
            }),
        }
    }

    fn counters(&self, addr: SocketAddr) -> Arc<Counters> {
        self.inner
            .counters
            .lock()
            .expect("counters lock")
            .entry(addr)
            .or_default()
            .clone()
    }

    pub fn traffic(&self, addr: SocketAddr) -> NodeTraffic {
        let c = self.counters(addr);
        NodeTraffic {
            sent: c.sent.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            oversize: c.oversize.load(Ordering::Relaxed),
            digests: c.digests.load(Ordering::Relaxed),
        }
    }

    /// Takes a node off the network: what is sent to it is lost, as to a
    /// host that died.
    pub fn cut(&self, addr: SocketAddr) {
        self.inner
            .inboxes
            .lock()
            .expect("inboxes lock")
            .remove(&addr);
    }

    fn lost(&self) -> bool {
        if self.inner.loss_ppm == 0 {
            return false;
        }
        // xorshift64: loss needs no better randomness, and a seeded
        // sequence makes a run repeatable.
        let mut x = self.inner.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.inner.rng.store(x, Ordering::Relaxed);
        (x % 1_000_000) < u64::from(self.inner.loss_ppm)
    }

    fn deliver(&self, from: SocketAddr, to: SocketAddr, msg: Vec<u8>) {
        let len = msg.len() + SEALED_OVERHEAD;
        let sender = self.counters(from);
        if len > MAX_DATAGRAM {
            sender.oversize.fetch_add(1, Ordering::Relaxed);
            return;
        }
        sender.sent.fetch_add(len as u64, Ordering::Relaxed);
        if crate::swim::is_digest(&msg) {
            sender.digests.fetch_add(1, Ordering::Relaxed);
        }
        if self.lost() {
            return;
        }
        let Some(inbox) = self
            .inner
            .inboxes
            .lock()
            .expect("inboxes lock")
            .get(&to)
            .cloned()
        else {
            return;
        };
        let receiver = self.counters(to);
        let latency = self.inner.latency;
        let hand_over = move || {
            if inbox.try_send((from, msg)).is_ok() {
                receiver.received.fetch_add(len as u64, Ordering::Relaxed);
            }
        };
        if latency.is_zero() {
            hand_over();
        } else {
            tokio::spawn(async move {
                tokio::time::sleep(latency).await;
                hand_over();
            });
        }
    }

    /// Starts a gossip node on this network, as the agent starts one on
    /// UDP (no secret: the simulated bytes include sealing's overhead).
    pub fn start(&self, cfg: GossipConfig, initial: Vec<(String, String)>) -> Gossip {
        let (tx, rx) = mpsc::channel(QUEUE);
        self.inner
            .inboxes
            .lock()
            .expect("inboxes lock")
            .insert(cfg.listen, tx);
        let socket = MemSocket {
            net: self.clone(),
            me: cfg.listen,
            rx,
        };
        Gossip::start_on(
            cfg,
            initial,
            Box::new(socket),
            Arc::new(AuthState::default()),
            Redirects::default(),
        )
    }
}

struct MemSocket {
    net: MemNet,
    me: SocketAddr,
    rx: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
}

#[async_trait]
impl Wire for MemSocket {
    async fn send(&mut self, to: SocketAddr, payload: &[u8]) {
        self.net.deliver(self.me, to, payload.to_vec());
    }

    async fn recv(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        match self.rx.recv().await {
            Some(m) => Some(m),
            // Cut off: silent from now on, like a dead host's socket.
            None => std::future::pending().await,
        }
    }
}

/// Cheap questions the simulation asks of every node many times a
/// second: one lookup each, where `view` decodes the whole state.
impl Gossip {
    /// Whether this node holds `key` in the newest state of `node` it has.
    pub fn sim_holds(&self, node: &str, key: &str) -> bool {
        self.engine.with(|s| {
            s.cluster
                .newest(node)
                .is_some_and(|kv| kv.get(key).is_some())
        })
    }

    /// Whether this node's failure detector counts `node` alive.
    pub fn sim_alive(&self, node: &str) -> bool {
        self.engine.with(|s| s.alive(node))
    }

    /// How many nodes' states this node holds, its own included.
    pub fn sim_known(&self) -> usize {
        self.engine.with(|s| s.cluster.nodes().count())
    }

    /// Writes one key of this node's own state.
    pub fn sim_set(&self, key: String, value: String) {
        self.engine.write([(key, Some(value))]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(i: u16, seeds: &[u16]) -> GossipConfig {
        let a = |p: u16| SocketAddr::from(([10, 0, 0, 1], p));
        GossipConfig {
            node_name: format!("n{i}"),
            listen: a(i),
            advertise: a(i),
            seeds: seeds.iter().map(|p| a(*p)).collect(),
            interval: Duration::from_millis(200),
            ttl: Duration::from_secs(3600),
            secret: None,
            generation: None,
        }
    }

    async fn until(what: &str, bound: Duration, mut f: impl FnMut() -> bool) {
        let t0 = tokio::time::Instant::now();
        while !f() {
            assert!(t0.elapsed() < bound, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_simulated_cluster_converges_counts_bytes_and_notices_a_death() {
        let net = MemNet::new(Duration::from_millis(1), 0.0);
        let mut nodes = Vec::new();
        for i in 1..=5u16 {
            let seeds: &[u16] = if i == 1 { &[] } else { &[1] };
            nodes.push(net.start(cfg(i, seeds), vec![]));
        }
        nodes[0].sim_set("k".into(), "v".into());
        until("k everywhere", Duration::from_secs(30), || {
            nodes[1..].iter().all(|n| n.sim_holds("n1", "k"))
        })
        .await;
        let t = net.traffic(SocketAddr::from(([10, 0, 0, 1], 1)));
        assert!(t.sent > 0 && t.received > 0 && t.oversize == 0, "{t:?}");

        // The last node dies: the others stop counting it alive.
        until("n5 alive", Duration::from_secs(30), || {
            nodes[..4].iter().all(|n| n.sim_alive("n5"))
        })
        .await;
        net.cut(SocketAddr::from(([10, 0, 0, 1], 5)));
        nodes.pop().unwrap().shutdown().await;
        until("n5 dead", Duration::from_secs(30), || {
            nodes.iter().all(|n| !n.sim_alive("n5"))
        })
        .await;
        for n in nodes {
            n.shutdown().await;
        }
    }

    /// Anti-entropy runs once a second while nothing changes, and faster
    /// while the state does: a burst of changes must not wait behind the
    /// broadcasts' queue.
    #[tokio::test(start_paused = true)]
    async fn anti_entropy_speeds_up_while_the_state_changes() {
        let net = MemNet::new(Duration::from_millis(1), 0.0);
        let nodes: Vec<Gossip> = (1..=4u16)
            .map(|i| net.start(cfg(i, if i == 1 { &[] } else { &[1] }), vec![]))
            .collect();
        until("all know all", Duration::from_secs(30), || {
            nodes.iter().all(|n| n.sim_known() == 4)
        })
        .await;
        let n1 = SocketAddr::from(([10, 0, 0, 1], 1));
        let digests = || net.traffic(n1).digests;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let before = digests();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let idle = digests() - before;
        assert!((8..=12).contains(&idle), "idle: {idle} digests in 10 s");

        // Another node changes a key every 100 ms: n1's state changes with it.
        let before = digests();
        for i in 0..100 {
            nodes[1].sim_set("k".into(), i.to_string());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let busy = digests() - before;
        assert!(busy >= 18, "busy: {busy} digests in 10 s");

        tokio::time::sleep(Duration::from_secs(5)).await;
        let before = digests();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let calm = digests() - before;
        assert!(
            (8..=12).contains(&calm),
            "idle again: {calm} digests in 10 s"
        );
        for n in nodes {
            n.shutdown().await;
        }
    }

    /// A run numbers its generation above the previous run's even when
    /// the wall clock went back in between: peers refuse older generations
    /// for an hour and more, and the restarted node would be shut out.
    #[tokio::test(start_paused = true)]
    async fn a_restart_with_the_clock_set_back_is_still_the_newer_run() {
        let net = MemNet::new(Duration::from_millis(1), 0.0);
        let n1 = net.start(cfg(1, &[]), vec![]);
        // The first run's clock was an hour ahead.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let ahead = now + 3_600_000;
        let first = net.start(
            GossipConfig {
                generation: Some(ahead),
                ..cfg(2, &[1])
            },
            vec![("first".into(), "1".into())],
        );
        assert_eq!(first.generation(), ahead);
        until("the first run's key at n1", Duration::from_secs(30), || {
            n1.sim_holds("n2", "first")
        })
        .await;
        let kept = first.generation();
        first.shutdown().await;
        let second = net.start(
            GossipConfig {
                generation: Some(crate::gossip::next_generation(now, kept)),
                ..cfg(2, &[1])
            },
            vec![("second".into(), "1".into())],
        );
        assert_eq!(second.generation(), ahead + 1);
        until(
            "the second run's key at n1",
            Duration::from_secs(30),
            || n1.sim_holds("n2", "second"),
        )
        .await;
        second.shutdown().await;
        n1.shutdown().await;
    }

    /// A restarted node's new generation stands for it only once its
    /// claims are there: on a lossy network its record may arrive first,
    /// and a peer that took it for a node without blocks would drop the
    /// routes to them while the restart lasts.
    #[tokio::test(start_paused = true)]
    async fn a_restart_never_shows_the_node_without_its_claims() {
        use crate::ClusterStore;
        use muslin_model::cluster::{gossip_block_keys, BlockClaim, NODE_KEY};
        let net = MemNet::new(Duration::from_millis(2), 0.25);
        let blocks: Vec<ipnet::IpNet> = (0..12)
            .map(|i| format!("10.244.{i}.0/26").parse().unwrap())
            .collect();
        let claim = serde_json::to_string(&BlockClaim { claimed_at_ms: 1 }).unwrap();
        let record = serde_json::json!({
            "name": "n3", "address": "10.0.0.1", "gossip_port": 3,
            "pod_cidr": "10.244.0.0/16", "vtep_mac": "02:00:00:00:00:03",
        })
        .to_string();
        // As the agent writes them: claims first, the record last.
        let initial = || {
            let mut v: Vec<(String, String)> = blocks
                .iter()
                .flat_map(|b| gossip_block_keys("default", *b))
                .map(|k| (k, claim.clone()))
                .collect();
            v.push((NODE_KEY.to_string(), record.clone()));
            v
        };
        let mut others = Vec::new();
        for i in [1u16, 2, 4, 5] {
            let seeds: &[u16] = if i == 1 { &[] } else { &[1] };
            others.push(net.start(cfg(i, seeds), vec![]));
        }
        let mut n3 = net.start(cfg(3, &[1]), initial());
        async fn claims(g: &Gossip) -> usize {
            g.view().await.nodes.get("n3").map_or(0, |p| p.claims.len())
        }
        let t0 = tokio::time::Instant::now();
        loop {
            let mut all = true;
            for o in &others {
                all &= claims(o).await == blocks.len();
            }
            if all {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "n3's claims never spread"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for round in 0..3 {
            n3.shutdown().await;
            // A new generation: the next millisecond of the wall clock.
            std::thread::sleep(Duration::from_millis(2));
            n3 = net.start(cfg(3, &[1]), initial());
            for _ in 0..200 {
                for (i, o) in others.iter().enumerate() {
                    let n = claims(o).await;
                    assert_eq!(
                        n,
                        blocks.len(),
                        "restart {round}: node {i} sees n3 with {n} claims"
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        n3.shutdown().await;
        for o in others {
            o.shutdown().await;
        }
    }

    /// A first host advertises, before any peer has told it which of its
    /// addresses they reach, one they cannot (a shared 10.0.2.15, say):
    /// replies take the path its packets came by, and both see each other.
    #[tokio::test(start_paused = true)]
    async fn a_node_advertising_an_address_nobody_reaches_is_still_heard() {
        let net = MemNet::new(Duration::from_millis(1), 0.0);
        let mut first = cfg(1, &[]);
        first.advertise = SocketAddr::from(([10, 0, 2, 15], 1));
        let a = net.start(first, vec![]);
        let b = net.start(cfg(2, &[1]), vec![]);
        a.sim_set("k".into(), "a".into());
        b.sim_set("k".into(), "b".into());
        until(
            "both alive and both keys across",
            Duration::from_secs(30),
            || {
                a.sim_alive("n2")
                    && b.sim_alive("n1")
                    && a.sim_holds("n2", "k")
                    && b.sim_holds("n1", "k")
            },
        )
        .await;
        // A second node pinned to the same address is a member of its own.
        let mut twin = cfg(3, &[1]);
        twin.advertise = SocketAddr::from(([10, 0, 2, 15], 1));
        let c = net.start(twin, vec![]);
        c.sim_set("k".into(), "c".into());
        until("the twin seen by both", Duration::from_secs(30), || {
            a.sim_alive("n3")
                && b.sim_alive("n3")
                && a.sim_holds("n3", "k")
                && b.sim_holds("n3", "k")
        })
        .await;
        // And they stay so: probes are answered by the same path.
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(a.sim_alive("n2") && b.sim_alive("n1") && a.sim_alive("n3") && c.sim_alive("n1"));
        for n in [a, b, c] {
            n.shutdown().await;
        }
    }
}
