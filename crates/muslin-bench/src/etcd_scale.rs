//! The workload of `gossip_sim` on etcd, for comparison: one real etcd
//! server and N clients (the agent's etcd store) in one process, in real
//! time (etcd cannot run on a simulated clock). Each client watches the
//! whole prefix and keeps a copy, as an agent does.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use muslin_model::cluster::{
    etcd_alive_key, etcd_block_keys, etcd_endpoint_key, etcd_node_key, BlockClaim, NodeRecord,
};
use muslin_store::{ClusterStore, Etcd, EtcdConfig};

use crate::gossip_sim::{block, cpu_self, detect, endpoint, name, spread, SimResult, SETTLE};
use crate::{fail, BenchError};

const PREFIX: &str = "/muslin-scale/";

/// One etcd server in a scratch directory, killed and removed on drop.
struct Server {
    child: std::process::Child,
    dir: PathBuf,
    client: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> Result<u16, BenchError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| fail("scale on etcd")(e.to_string()))
}

fn start_server() -> Result<Server, BenchError> {
    let err = fail("scale on etcd");
    let (c, p) = (free_port()?, free_port()?);
    let dir = std::env::temp_dir().join(format!("muslin-scale-etcd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
    let log = std::fs::File::create(dir.join("etcd.log")).map_err(|e| err(e.to_string()))?;
    let child = std::process::Command::new("etcd")
        .args([
            "--name",
            "scale",
            "--data-dir",
            &dir.join("data").display().to_string(),
            "--listen-client-urls",
            &format!("http://127.0.0.1:{c}"),
            "--advertise-client-urls",
            &format!("http://127.0.0.1:{c}"),
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{p}"),
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{p}"),
            "--initial-cluster",
            &format!("scale=http://127.0.0.1:{p}"),
        ])
        .stdout(log.try_clone().map_err(|e| err(e.to_string()))?)
        .stderr(log)
        .spawn()
        .map_err(|e| err(format!("starting etcd (Debian's etcd-server): {e}")))?;
    let server = Server {
        child,
        dir,
        client: SocketAddr::from(([127, 0, 0, 1], c)),
    };
    let t0 = Instant::now();
    while metrics(server.client).is_none() {
        if t0.elapsed() > Duration::from_secs(30) {
            return Err(err("etcd did not answer within 30 s".into()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(server)
}

/// Bytes the server received from and sent to its clients, from its
/// Prometheus metrics.
fn metrics(at: SocketAddr) -> Option<(f64, f64)> {
    let mut s = TcpStream::connect_timeout(&at, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {at}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let value = |metric: &str| {
        text.lines()
            .filter(|l| l.starts_with(metric))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    text.contains("etcd_").then(|| {
        (
            value("etcd_network_client_grpc_received_bytes_total"),
            value("etcd_network_client_grpc_sent_bytes_total"),
        )
    })
}

/// The `gossip_sim` workload on one etcd with `n` clients.
pub fn run_one(n: usize) -> Result<SimResult, BenchError> {
    let err = fail("scale on etcd");
    let server = start_server()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| err(e.to_string()))?;
    let wall = Instant::now();
    let mut r = rt.block_on(simulate(n, server.client))?;
    r.wall_s = wall.elapsed().as_secs_f64();
    Ok(r)
}

async fn simulate(n: usize, at: SocketAddr) -> Result<SimResult, BenchError> {
    let err = fail("scale on etcd");
    let rss0 = crate::sys::rss_kib(std::process::id());
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let me = name(i);
        let c = Etcd::start(EtcdConfig {
            endpoints: vec![format!("http://{at}")],
            prefix: PREFIX.into(),
            node_name: me.clone(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            ttl: Duration::from_secs(3600),
            // The agent's, at its default 200 ms gossip round.
            alive_ttl: Duration::from_secs(6),
        })
        .await
        .map_err(|e| err(e.to_string()))?;
        let ip = |k: u32| std::net::Ipv4Addr::from(u32::from(block(i, 0).network()) + k);
        let rec = NodeRecord::new(
            &me,
            crate::gossip_sim::addr(i).ip(),
            "10.0.0.0/8".parse().expect("cidr"),
            1500,
        );
        c.publish_record(&rec).await;
        c.claim_block(
            "default",
            block(i, 0).into(),
            BlockClaim { claimed_at_ms: 1 },
        )
        .await;
        c.sync_endpoints(&[
            endpoint(&me, &format!("{me}-a"), ip(1)),
            endpoint(&me, &format!("{me}-b"), ip(2)),
        ])
        .await;
        clients.push((me, c));
    }
    let mut r = SimResult {
        nodes: n,
        store: "etcd".into(),
        ..Default::default()
    };
    let start = tokio::time::Instant::now();
    let keys: Vec<String> = clients
        .iter()
        .map(|(m, _)| etcd_node_key(PREFIX, m))
        .collect();
    while start.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if clients
            .iter()
            .all(|(_, c)| keys.iter().all(|k| c.sim_cached(k)))
        {
            r.cold_start_s = Some(start.elapsed().as_secs_f64());
            break;
        }
    }
    tokio::time::sleep(SETTLE.min(Duration::from_secs(10))).await;
    let idle = Duration::from_secs(10);
    let before = metrics(at).unwrap_or_default();
    let cpu0 = cpu_self();
    tokio::time::sleep(idle).await;
    let cpu = cpu_self() - cpu0;
    let after = metrics(at).unwrap_or_default();
    let secs = idle.as_secs_f64();
    // What each client sends is what the server receives, shared out.
    let per = (after.0 - before.0).max(0.0) / n as f64 / secs;
    r.idle_sent_per_node = vec![per];
    r.cpu_per_node = cpu / secs / n as f64;
    let rss = crate::sys::rss_kib(std::process::id());
    r.memory_per_node_mib = rss.saturating_sub(rss0) as f64 / 1024.0 / n as f64;

    let mut block_times = Vec::new();
    let mut endpoint_times = Vec::new();
    for t in 0..3 {
        let k = (t * 7919 + 13) % n;
        let b = block(k, 1 + t % 3);
        let key = etcd_block_keys(PREFIX, "default", b.into())
            .into_iter()
            .next()
            .expect("a key");
        clients[k]
            .1
            .claim_block("default", b.into(), BlockClaim { claimed_at_ms: 2 })
            .await;
        r.block_missed += spread(n, k, |j| clients[j].1.sim_cached(&key), &mut block_times).await;
        let me = name(k);
        let c = format!("{me}-new{t}");
        let a = std::net::Ipv4Addr::from(u32::from(b.network()) + 1);
        let ip = |x: u32| std::net::Ipv4Addr::from(u32::from(block(k, 0).network()) + x);
        clients[k]
            .1
            .sync_endpoints(&[
                endpoint(&me, &format!("{me}-a"), ip(1)),
                endpoint(&me, &format!("{me}-b"), ip(2)),
                endpoint(&me, &c, a),
            ])
            .await;
        let key = etcd_endpoint_key(PREFIX, &me, "default", &c, "eth0");
        r.endpoint_missed +=
            spread(n, k, |j| clients[j].1.sim_cached(&key), &mut endpoint_times).await;
    }
    r.block = block_times;
    r.endpoint = endpoint_times;

    // Deaths: a client stops without a word; its alive lease runs out.
    let mut detection = Vec::new();
    for _ in 0..2.min(n.saturating_sub(2)) {
        let (dead, c) = clients.pop().expect("a client");
        c.shutdown().await;
        let key = etcd_alive_key(PREFIX, &dead);
        r.detection_missed += detect(
            clients.len(),
            |j| !clients[j].1.sim_cached(&key),
            &mut detection,
        )
        .await;
    }
    r.detection = detection;
    for (_, c) in clients {
        c.shutdown().await;
    }
    Ok(r)
}
