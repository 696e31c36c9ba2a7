//! `muslin bench --scale N,...`: large gossip clusters simulated in one
//! process. Every node runs the real store (the gossip engine and
//! Muslin's decoding) on an in-memory network with latency and loss
//! (`muslin_store::sim`), on tokio's paused clock: rounds happen in
//! simulated time, so a thousand nodes are measured as they would behave
//! on a thousand machines, whatever this one's speed. Each size runs in a
//! child process of its own, so its memory is its own.
//!
//! The workload is an agent's: each node publishes its record, claims a
//! block and publishes two endpoints. Then, per size: cold start until
//! every node knows every record; idle gossip; a new block and an
//! endpoint change until every node holds them; nodes that die until
//! every survivor counts them dead.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use muslin_model::cluster::{
    gossip_block_keys, gossip_endpoint_key, BlockClaim, EndpointRecord, NodeRecord, NODE_KEY,
};
use muslin_store::sim::MemNet;
use muslin_store::{ClusterStore, Gossip, GossipConfig};
use serde::{Deserialize, Serialize};

use crate::report::Report;
use crate::stats::Series;
use crate::{fail, BenchError, Target};

/// How each simulated cluster is run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimPlan {
    /// The agent's default gossip round.
    pub interval: Duration,
    /// One way, per datagram.
    pub latency: Duration,
    /// Fraction of datagrams lost.
    pub loss: f64,
    /// How long idle traffic is counted.
    pub idle: Duration,
    /// Changes (a block, an endpoint) timed to reach every node.
    pub changes: usize,
    /// Nodes that die, one after another.
    pub deaths: usize,
}

impl Default for SimPlan {
    fn default() -> SimPlan {
        SimPlan {
            interval: Duration::from_millis(200),
            latency: Duration::from_millis(1),
            loss: 0.01,
            idle: Duration::from_secs(10),
            changes: 3,
            deaths: 2,
        }
    }
}

/// One size's figures; times in simulated seconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SimResult {
    /// Which store: `gossip` or `etcd`.
    #[serde(default)]
    pub store: String,
    pub nodes: usize,
    /// From the last node's start until every node knows every record;
    /// `None` when that did not happen within the bound.
    pub cold_start_s: Option<f64>,
    /// Sealed UDP payload bytes each node sends per second, idle.
    pub idle_sent_per_node: Vec<f64>,
    /// Messages the real transport would have refused (over a datagram).
    pub oversize: u64,
    /// Per receiving node, how long a new block took to reach it.
    pub block: Vec<f64>,
    pub block_missed: usize,
    pub endpoint: Vec<f64>,
    pub endpoint_missed: usize,
    /// Per surviving node, how long until it counted a dead node dead.
    pub detection: Vec<f64>,
    pub detection_missed: usize,
    /// CPU seconds per simulated second, per node, idle.
    pub cpu_per_node: f64,
    /// Resident memory the cluster added, per node.
    pub memory_per_node_mib: f64,
    /// Real time the simulation took.
    pub wall_s: f64,
}

/// Each change is broadcast a bounded number of times; after a cold
/// start of every node at once they take this long to run out.
pub(crate) const SETTLE: Duration = Duration::from_secs(30);

pub(crate) fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 7946))
}

pub(crate) fn name(i: usize) -> String {
    format!("node-{i:04}")
}

pub(crate) fn endpoint(node: &str, container: &str, a: std::net::Ipv4Addr) -> EndpointRecord {
    EndpointRecord {
        network: "default".into(),
        addresses: vec![ipnet::IpNet::from(std::net::IpAddr::V4(a))],
        container_id: container.into(),
        ifname: "eth0".into(),
        node: node.into(),
        pod_namespace: Some("default".into()),
        pod_name: Some(container.into()),
        labels: [("app".to_string(), "web".to_string())].into(),
        ports: Default::default(),
        aliases: Vec::new(),
        name: None,
    }
}

/// Node `i`'s block: a /26 of 10.128.0.0/9, `k` its k-th claim.
pub(crate) fn block(i: usize, k: usize) -> ipnet::Ipv4Net {
    let n = (i * 4 + k) as u32;
    let base = u32::from(std::net::Ipv4Addr::new(10, 128, 0, 0)) + n * 64;
    ipnet::Ipv4Net::new(base.into(), 26).expect("a /26")
}

struct Node {
    store: Gossip,
    name: String,
    addr: SocketAddr,
    endpoints: Vec<EndpointRecord>,
}

pub(crate) fn cpu_self() -> f64 {
    // SAFETY: getrusage writes only into the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(u.ru_utime) + s(u.ru_stime)
}

/// Simulates one cluster of `n` nodes in this process.
pub fn run_one(n: usize, plan: &SimPlan) -> Result<SimResult, BenchError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| fail("scale simulation")(e.to_string()))?;
    let wall = Instant::now();
    let mut r = rt.block_on(simulate(n, plan));
    r.wall_s = wall.elapsed().as_secs_f64();
    Ok(r)
}

async fn simulate(n: usize, plan: &SimPlan) -> SimResult {
    let rss0 = crate::sys::rss_kib(std::process::id());
    let net = MemNet::new(plan.latency, plan.loss);
    let mut nodes: Vec<Node> = Vec::with_capacity(n);
    for i in 0..n {
        let cfg = GossipConfig {
            node_name: name(i),
            listen: addr(i),
            advertise: addr(i),
            // As README's install: the first node joins nobody, the
            // others join it.
            seeds: if i == 0 { vec![] } else { vec![addr(0)] },
            interval: plan.interval,
            ttl: Duration::from_secs(3600),
            secret: None,
            generation: None,
        };
        let store = net.start(cfg, vec![]);
        let me = name(i);
        let ip = |k: u32| std::net::Ipv4Addr::from(u32::from(block(i, 0).network()) + k);
        let rec = NodeRecord::new(&me, addr(i).ip(), "10.0.0.0/8".parse().expect("cidr"), 1500);
        store.publish_record(&rec).await;
        store
            .claim_block(
                "default",
                block(i, 0).into(),
                BlockClaim { claimed_at_ms: 1 },
            )
            .await;
        let endpoints = vec![
            endpoint(&me, &format!("{me}-a"), ip(1)),
            endpoint(&me, &format!("{me}-b"), ip(2)),
        ];
        store.sync_endpoints(&endpoints).await;
        nodes.push(Node {
            store,
            name: me,
            addr: addr(i),
            endpoints,
        });
    }
    let mut r = SimResult {
        nodes: n,
        store: "gossip".into(),
        ..Default::default()
    };

    // Cold start: every node knows every record.
    let start = tokio::time::Instant::now();
    let bound = Duration::from_secs(300);
    let mut done = false;
    while start.elapsed() < bound {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if all_know_all(&nodes).await {
            done = true;
            break;
        }
    }
    r.cold_start_s = done.then(|| start.elapsed().as_secs_f64());

    // Idle: once the joins' broadcasts have run their course, count.
    tokio::time::sleep(SETTLE).await;
    let before: Vec<u64> = nodes.iter().map(|x| net.traffic(addr_of(x)).sent).collect();
    let cpu0 = cpu_self();
    tokio::time::sleep(plan.idle).await;
    let cpu = cpu_self() - cpu0;
    let secs = plan.idle.as_secs_f64();
    r.idle_sent_per_node = nodes
        .iter()
        .zip(&before)
        .map(|(x, b)| (net.traffic(addr_of(x)).sent - b) as f64 / secs)
        .collect();
    r.cpu_per_node = cpu / secs / n as f64;
    r.oversize = nodes.iter().map(|x| net.traffic(addr_of(x)).oversize).sum();
    // Memory of the settled cluster, read while every node is up.
    let rss = crate::sys::rss_kib(std::process::id());
    r.memory_per_node_mib = rss.saturating_sub(rss0) as f64 / 1024.0 / n as f64;

    // Changes reaching every node.
    let mut block_times = Vec::new();
    let mut endpoint_times = Vec::new();
    for t in 0..plan.changes {
        let k = (t * 7919 + 13) % n;
        let b = block(k, 1 + t % 3);
        let key = gossip_block_keys("default", b.into())
            .into_iter()
            .next()
            .expect("a key");
        nodes[k]
            .store
            .claim_block("default", b.into(), BlockClaim { claimed_at_ms: 2 })
            .await;
        r.block_missed += spread(
            nodes.len(),
            k,
            |j| nodes[j].store.sim_holds(&nodes[k].name, &key),
            &mut block_times,
        )
        .await;

        let me = name(k);
        let c = format!("{me}-new{t}");
        let a = std::net::Ipv4Addr::from(u32::from(b.network()) + 1);
        nodes[k].endpoints.push(endpoint(&me, &c, a));
        let eps = nodes[k].endpoints.clone();
        nodes[k].store.sync_endpoints(&eps).await;
        let key = gossip_endpoint_key("default", &c, "eth0");
        r.endpoint_missed += spread(
            nodes.len(),
            k,
            |j| nodes[j].store.sim_holds(&nodes[k].name, &key),
            &mut endpoint_times,
        )
        .await;
    }
    r.block = block_times;
    r.endpoint = endpoint_times;

    // Deaths: the last nodes die one at a time.
    let mut detection = Vec::new();
    for _ in 0..plan.deaths.min(n.saturating_sub(2)) {
        let dead = nodes.pop().expect("a node");
        net.cut(addr_of(&dead));
        let id = dead.name.clone();
        dead.store.shutdown().await;
        r.detection_missed += detect(
            nodes.len(),
            |j| !nodes[j].store.sim_alive(&id),
            &mut detection,
        )
        .await;
    }
    r.detection = detection;
    for x in nodes {
        x.store.shutdown().await;
    }
    r
}

fn addr_of(x: &Node) -> SocketAddr {
    x.addr
}

async fn all_know_all(nodes: &[Node]) -> bool {
    let n = nodes.len();
    for x in nodes {
        if x.store.sim_known() < n {
            return false;
        }
    }
    for x in nodes {
        for y in nodes {
            if !x.store.sim_holds(&y.name, NODE_KEY) {
                return false;
            }
        }
    }
    true
}

/// Times a change made on node `from` reaching every other node of
/// `count` (`holds(j)`: whether node `j` has it); returns how many it did
/// not reach within the bound.
pub(crate) async fn spread(
    count: usize,
    from: usize,
    holds: impl Fn(usize) -> bool,
    times: &mut Vec<f64>,
) -> usize {
    let t0 = tokio::time::Instant::now();
    let mut pending: Vec<usize> = (0..count).filter(|j| *j != from).collect();
    while !pending.is_empty() && t0.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        pending.retain(|j| {
            let has = holds(*j);
            if has {
                times.push(t0.elapsed().as_secs_f64());
            }
            !has
        });
    }
    pending.len()
}

/// Times a death reaching the `count` survivors (`knows(j)`: whether
/// survivor `j` counts the dead node dead); returns how many never did.
pub(crate) async fn detect(
    count: usize,
    knows: impl Fn(usize) -> bool,
    times: &mut Vec<f64>,
) -> usize {
    let t0 = tokio::time::Instant::now();
    let mut pending: Vec<usize> = (0..count).collect();
    while !pending.is_empty() && t0.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        pending.retain(|j| {
            let knows = knows(*j);
            if knows {
                times.push(t0.elapsed().as_secs_f64());
            }
            !knows
        });
    }
    pending.len()
}

/// How long one size may take in real time before it is given up on.
const CHILD_BOUND: Duration = Duration::from_secs(900);

/// Runs `bin bench --scale-one n` and reads its figures; `None` when it
/// ran out of time.
fn child(bin: &std::path::Path, n: usize, store: &str) -> Result<Option<SimResult>, BenchError> {
    let err = fail("scale simulation");
    let out = std::env::temp_dir().join(format!("muslin-scale-{}-{n}.json", std::process::id()));
    let file = std::fs::File::create(&out).map_err(|e| err(format!("{}: {e}", out.display())))?;
    let mut c = std::process::Command::new(bin)
        .args(["bench", "--scale-one", &n.to_string(), "--datastore", store])
        .stdout(file)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("running {}: {e}", bin.display())))?;
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = c.try_wait().map_err(|e| err(e.to_string()))? {
            break s;
        }
        if t0.elapsed() > CHILD_BOUND {
            let _ = c.kill();
            let _ = c.wait();
            let _ = std::fs::remove_file(&out);
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = std::fs::read(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    if !status.success() {
        let mut stderr = String::new();
        if let Some(mut e) = c.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut stderr);
        }
        return Err(err(format!(
            "{} nodes, {}: {}",
            n,
            bin.display(),
            stderr.trim()
        )));
    }
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| err(format!("{n} nodes: unreadable result: {e}")))
}

/// Runs each size in a child process (`muslin bench --scale-one N`) and
/// puts the figures in the report; with a baseline build, the same sizes
/// on it too, each right before this build's.
pub fn run(
    bin: &std::path::Path,
    baseline: Option<&std::path::Path>,
    store: &str,
    sizes: &[usize],
    progress: &dyn Fn(&str),
    report: &mut Report,
) -> Result<(), BenchError> {
    for &n in sizes {
        let ours = if store == "etcd" { " on etcd" } else { "" };
        let runs = baseline
            .map(|b| (b, " (baseline)"))
            .into_iter()
            .chain([(bin, ours)]);
        for (b, label) in runs {
            progress(&format!("{n} nodes{label}: simulating"));
            match child(b, n, store)? {
                Some(r) => record(&r, label, report),
                None => report.note(
                    STAGE,
                    &format!(
                        "{n} nodes{label}: did not finish within {} s of real time",
                        CHILD_BOUND.as_secs()
                    ),
                ),
            }
        }
    }
    Ok(())
}

/// Puts one figure in the report: the `p` quantile of `v` (min and max
/// beside it), held to `target` if given.
#[allow(clippy::too_many_arguments)]
pub(crate) fn figure(
    report: &mut Report,
    scenario: &str,
    metric: &str,
    unit: &str,
    v: &[f64],
    p: f64,
    target: Option<Target>,
) {
    let all = Series(v.to_vec());
    let q = all.pct(p);
    match target {
        Some(t) => report.add_target(STAGE, scenario, metric, unit, &Series(vec![q]), t),
        None => report.add(STAGE, scenario, metric, unit, &Series(vec![q]), None),
    }
    let f = report.figures.last_mut().expect("just added");
    f.min = all.min();
    f.max = all.max();
    f.repetitions = v.len();
}

const STAGE: &str = "gossip-sim";

/// The targets of issue 19 hold at 1,000 nodes; smaller clusters are
/// reported beside them without one.
pub(crate) fn record(r: &SimResult, label: &str, report: &mut Report) {
    let target =
        |t: Target| (r.nodes >= 1000 && r.store == "gossip" && label.is_empty()).then_some(t);
    let sc = format!("{} nodes{label}", r.nodes);
    let sc = sc.as_str();
    match r.cold_start_s {
        Some(s) => figure(
            report,
            sc,
            "cold start: every record on every node",
            "s",
            &[s],
            0.5,
            None,
        ),
        None => report.note(
            STAGE,
            &format!("{sc}: cold start did not converge within 300 s"),
        ),
    }
    let kb: Vec<f64> = r.idle_sent_per_node.iter().map(|b| b / 1e3).collect();
    figure(
        report,
        sc,
        "idle traffic sent per node",
        "kB/s",
        &kb,
        0.5,
        target(Target::AtMost(10.0)),
    );
    for (what, v, missed) in [
        ("new block reaches a node", &r.block, r.block_missed),
        (
            "endpoint change reaches a node",
            &r.endpoint,
            r.endpoint_missed,
        ),
    ] {
        if !v.is_empty() {
            figure(report, sc, &format!("{what}, p50"), "s", v, 0.5, None);
            figure(
                report,
                sc,
                &format!("{what}, p99"),
                "s",
                v,
                0.99,
                target(Target::AtMost(2.0)),
            );
        }
        if missed > 0 {
            report.note(
                STAGE,
                &format!("{sc}: {missed} nodes never saw a change ({what}) within 60 s"),
            );
        }
    }
    if !r.detection.is_empty() {
        figure(
            report,
            sc,
            "dead node detected, p50",
            "s",
            &r.detection,
            0.5,
            None,
        );
        figure(
            report,
            sc,
            "dead node detected by all",
            "s",
            &r.detection,
            1.0,
            target(Target::AtMost(10.0)),
        );
    }
    if r.detection_missed > 0 {
        report.note(
            STAGE,
            &format!(
                "{sc}: {} survivors never counted a dead node dead within 120 s",
                r.detection_missed
            ),
        );
    }
    figure(
        report,
        sc,
        "CPU per node, idle",
        "%",
        &[r.cpu_per_node * 100.0],
        0.5,
        None,
    );
    figure(
        report,
        sc,
        "store memory per node",
        "MiB",
        &[r.memory_per_node_mib],
        0.5,
        target(Target::AtMost(20.0)),
    );
    if r.oversize > 0 {
        report.note(
            STAGE,
            &format!("{sc}: {} gossip messages exceeded a UDP datagram (64 KiB): the real transport refuses them", r.oversize),
        );
    }
    report.note(STAGE, &format!("{sc}: took {:.0} s of real time", r.wall_s));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn median(v: &[f64]) -> f64 {
        Series(v.to_vec()).median()
    }

    /// The protocol's promises, in simulated time: every change and every
    /// death reaches every node, and idle traffic does not grow with the
    /// cluster.
    #[test]
    fn simulated_clusters_converge_detect_deaths_and_idle_alike_at_any_size() {
        let plan = SimPlan::default();
        let small = run_one(10, &plan).unwrap();
        let large = run_one(60, &plan).unwrap();
        for r in [&small, &large] {
            assert!(
                r.cold_start_s.is_some(),
                "{} nodes never converged",
                r.nodes
            );
            assert_eq!(
                (r.block_missed, r.endpoint_missed, r.detection_missed),
                (0, 0, 0),
                "{r:?}"
            );
            assert_eq!(r.block.len(), plan.changes * (r.nodes - 1));
            assert_eq!(r.detection.len(), (r.nodes - 1) + (r.nodes - 2));
            assert_eq!(r.oversize, 0);
        }
        let (s, l) = (
            median(&small.idle_sent_per_node),
            median(&large.idle_sent_per_node),
        );
        assert!(s > 0.0);
        assert!(
            l < 2.0 * s + 200.0,
            "idle traffic grew with the cluster: {s:.0} B/s at 10 nodes, {l:.0} B/s at 60"
        );
    }
}
