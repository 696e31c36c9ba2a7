//! Two agents in one process, each on a recording fake executor, gossiping
//! over real UDP: what a peer joining and a peer leaving ask of the
//! kernel. The sockets need a network to talk over, so the test builds a
//! throwaway namespace with a veth pair (root); the kernel changes the
//! agents compute go to the fakes, never to that namespace.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use muslin_kernel::executor::fake::FakeKernel;
use muslin_kernel::Executor;
use muslin_model::agent_config::AgentConfig;
use muslin_model::underlay::Method;
use muslin_plan::object::{Address, HostState, Link, LinkKind, Ns};

struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("msl-churn-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let ip = |args: &[&str]| {
            let ok = Command::new("ip").args(args).status().unwrap().success();
            assert!(ok, "ip {args:?}");
        };
        ip(&["netns", "add", &name]);
        let n = Netns(name.clone());
        ip(&[
            "-n", &name, "link", "add", "wa", "type", "veth", "peer", "name", "wb",
        ]);
        ip(&["-n", &name, "addr", "add", "192.0.2.1/24", "dev", "wa"]);
        ip(&["-n", &name, "addr", "add", "192.0.2.2/24", "dev", "wb"]);
        for l in ["lo", "wa", "wb"] {
            ip(&["-n", &name, "link", "set", l, "up"]);
        }
        n
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A fake kernel whose host has `eth0` with `address`.
fn host_with(address: &str) -> (Executor, FakeKernel) {
    let (ex, k) = Executor::fake();
    k.world.lock().unwrap().insert(
        Ns::Host,
        HostState {
            links: vec![Link {
                name: "eth0".into(),
                kind: LinkKind::Other(None),
                mtu: Some(1500),
                mac: Some([2, 0, 0, 0, 0, 1]),
                up: true,
                group: None,
            }],
            addresses: vec![Address {
                link: "eth0".into(),
                net: address.parse().unwrap(),
            }],
            ..Default::default()
        },
    );
    (ex, k)
}

struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<Result<(), muslin_agent::AgentError>>,
}

fn start(
    dir: &Path,
    name: &str,
    address: &str,
    port: u16,
    join: Vec<String>,
    ex: Executor,
) -> Running {
    let c = AgentConfig {
        node_name: Some(name.into()),
        socket: dir.join(format!("{name}.sock")),
        state_dir: dir.join(name),
        gossip_port: port,
        gossip_interval_ms: 100,
        block_ttl: 3,
        underlay: Method::Address(address.parse().unwrap()),
        join,
        ..Default::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(muslin_agent::run_with(
        c,
        muslin_agent::Parts {
            executor: Some(ex),
            listener: None,
        },
        async move {
            let _ = stopped.await;
        },
    ));
    Running { stop, done }
}

async fn until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Routes to blocks via `via`, and the probe routes to VTEP addresses
/// (host routes) via it.
fn routes_via(k: &FakeKernel, via: &str) -> (Vec<String>, Vec<String>) {
    let all: Vec<_> = k
        .state(&Ns::Host)
        .routes
        .into_iter()
        .filter(|r| r.via.is_some_and(|v| v.to_string() == via))
        .collect();
    let (probes, blocks): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|r| r.dst.prefix_len() == r.dst.max_prefix_len());
    (
        blocks.iter().map(|r| r.to_string()).collect(),
        probes.iter().map(|r| r.to_string()).collect(),
    )
}

#[test]
fn a_peer_joining_and_leaving_asks_for_exactly_its_routes() {
    let ns = Netns::new();
    let dir: PathBuf = std::env::temp_dir().join(format!("muslin-churn-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let name = ns.0.clone();
    let d = dir.clone();
    std::thread::spawn(move || {
        let f = File::open(format!("/var/run/netns/{name}")).unwrap();
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(churn(&d));
    })
    .join()
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

async fn churn(dir: &Path) {
    let (ex1, k1) = host_with("192.0.2.1/24");
    let (ex2, k2) = host_with("192.0.2.2/24");
    let port1 = 17000 + (std::process::id() % 1000) as u16;
    let port2 = port1 + 1000;
    let a1 = start(dir, "h1", "192.0.2.1", port1, vec![], ex1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a2 = start(
        dir,
        "h2",
        "192.0.2.2",
        port2,
        vec![format!("192.0.2.1:{port1}")],
        ex2,
    );

    // h2 joins: h1 routes h2's block via h2's address on the shared
    // segment, and h2 routes h1's; nothing else goes through the peer but
    // the probe route to its VTEP address.
    let one_each = |k: &FakeKernel, via: &str| {
        let (b, p) = routes_via(k, via);
        b.len() == 1 && p.len() == 1
    };
    until("h1 routes to h2's block", 20, || one_each(&k1, "192.0.2.2")).await;
    until("h2 routes to h1's block", 20, || one_each(&k2, "192.0.2.1")).await;
    let (mut blocks, mut probes) = routes_via(&k1, "192.0.2.2");
    let (r, probe) = (blocks.remove(0), probes.remove(0));
    assert!(
        r.starts_with("10.244.") && r.ends_with("via 192.0.2.2 dev eth0 proto 77 table 254"),
        "{r}"
    );
    assert!(
        probe.starts_with("10.244.") && probe.contains("/32 via 192.0.2.2 dev eth0 src 10.244."),
        "{probe}"
    );
    let mut joined: Vec<String> = k1
        .take_log()
        .into_iter()
        .filter(|s| s.contains("192.0.2.2"))
        .collect();
    joined.sort();
    let mut want = vec![
        format!("[host] route replace {r}"),
        format!("[host] route replace {probe}"),
    ];
    want.sort();
    assert_eq!(joined, want, "one change per route for the peer");

    // h2 leaves for good: once its TTL passed, h1 removes that route and
    // only that route.
    let _ = a2.stop.send(());
    a2.done.await.unwrap().unwrap();
    until("h1 drops the route to the departed h2", 30, || {
        routes_via(&k1, "192.0.2.2") == (vec![], vec![])
    })
    .await;
    let mut left: Vec<String> = k1
        .take_log()
        .into_iter()
        .filter(|s| s.contains("route"))
        .collect();
    left.sort();
    let mut want = vec![
        format!("[host] route del {r}"),
        format!("[host] route del {probe}"),
    ];
    want.sort();
    assert_eq!(left, want, "one change per route for the departure");
    let _ = a1.stop.send(());
    a1.done.await.unwrap().unwrap();
}
