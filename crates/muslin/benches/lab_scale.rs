//! The lab as a benchmark stage: default-lab up and down times, a 20-host
//! cluster's cold start, agent memory and gossip traffic, and convergence
//! (a container attached on one host, until every other host reaches it).
//!
//! Run: `cargo bench -p muslin --bench lab_scale` (root). Environment:
//! `BENCH_HOSTS` (20), `BENCH_ATTACH` attachments measured (50),
//! `BENCH_ROUNDS` default-lab rounds (5), `BENCH_JSON` a file for the figures.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use muslin_lab::ops::{self, Ctx, UpOptions};
use muslin_lab::probe::{self, Proto};
use muslin_lab::registry;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_muslin");

fn ctx() -> Ctx {
    Ctx {
        bin: PathBuf::from(BIN),
        progress: Box::new(|_| {}),
    }
}

fn datastore() -> String {
    std::env::var("BENCH_DATASTORE").unwrap_or_else(|_| "gossip".into())
}

fn up(name: &str, hosts: usize, converge: u64) -> ops::UpReport {
    let o = UpOptions {
        name: name.into(),
        hosts: Some(hosts),
        topology: None,
        backend: "auto".into(),
        datastore: datastore(),
        etcd_members: 1,
        converge_timeout: converge,
    };
    ops::up(&ctx(), &o).expect("lab up")
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn agent_pids(lab: &str, hosts: usize) -> Vec<u32> {
    (1..=hosts)
        .filter_map(|i| {
            let o = std::process::Command::new("ip")
                .args(["netns", "pids", &format!("{lab}-h{i}")])
                .output()
                .ok()?;
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .find(|p| {
                    std::fs::read(format!("/proc/{p}/cmdline"))
                        .map(|c| c.split(|b| *b == 0).nth(1) == Some(b"agent"))
                        .unwrap_or(false)
                })
        })
        .collect()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Gossip bytes sent, or etcd requests made, by a host's agent so far.
fn store_traffic(lab: &str, host: &str) -> u64 {
    match muslin_cni::call(
        &registry::socket(lab, host),
        &muslin_model::api::Request::Status,
    ) {
        Ok(muslin_model::api::Response::Status(s)) => s
            .cluster
            .map(|c| c.gossip_bytes_sent + c.etcd_requests)
            .unwrap_or(0),
        _ => 0,
    }
}

/// Time until `target` answers ICMP from inside `ns`.
fn reach_from(ns: &str, target: std::net::IpAddr, deadline: Duration) -> Option<Duration> {
    let f = File::open(format!("/var/run/netns/{ns}")).ok()?;
    nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
    let t = Instant::now();
    while t.elapsed() < deadline {
        if probe::check(
            target,
            probe::DEFAULT_PORT,
            Proto::Icmp,
            Duration::from_millis(50),
        )
        .is_ok()
        {
            return Some(t.elapsed());
        }
    }
    None
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let hosts = env("BENCH_HOSTS", 20);
    let attach = env("BENCH_ATTACH", 50);
    let rounds = env("BENCH_ROUNDS", 5);
    let root = std::env::temp_dir().join(format!("muslin-bench-lab-{}", std::process::id()));
    std::env::set_var("MUSLIN_LAB_ROOT", &root);

    // Default lab: up (to a fully passing matrix) and down.
    let (mut ups, mut downs, mut converge3) = (vec![], vec![], vec![]);
    for r in 0..rounds {
        let name = format!("bd{r}");
        let rep = up(&name, 3, 30);
        assert!(
            rep.converge_seconds.is_some(),
            "default lab did not converge"
        );
        ups.push(rep.total_seconds);
        converge3.push(rep.converge_seconds.unwrap());
        let t = Instant::now();
        ops::down(&name).unwrap();
        downs.push(t.elapsed().as_secs_f64());
        eprintln!(
            "  default lab round {}/{rounds}: up {:.2} s, down {:.2} s",
            r + 1,
            rep.total_seconds,
            downs[r]
        );
    }

    // A large lab: cold start, memory, gossip, convergence.
    eprintln!("  {hosts}-host lab: cold start");
    let big = "bbig";
    let rep = up(big, hosts, 120);
    let cold = rep.total_seconds;
    let cold_converged = rep.converge_seconds;
    let pids = agent_pids(big, hosts);
    let rss: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();
    let g0: Vec<u64> = (1..=hosts)
        .map(|i| store_traffic(big, &format!("h{i}")))
        .collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let g1: Vec<u64> = (1..=hosts)
        .map(|i| store_traffic(big, &format!("h{i}")))
        .collect();
    let gossip_bps = g1.iter().zip(&g0).map(|(a, b)| (a - b) as f64).sum::<f64>()
        / hosts as f64
        / t0.elapsed().as_secs_f64();

    eprintln!("  {hosts}-host lab: {attach} attachments, each probed from every other host");
    let mut conv = vec![];
    let mut unreached = 0;
    for k in 0..attach {
        let h = format!("h{}", k % hosts + 1);
        let c = format!("v{k}");
        ops::run(&ctx(), Some(big), &h, &c, &[]).expect("attach");
        let attached = Instant::now();
        let st = ops::status(Some(big)).unwrap();
        let addr = st
            .nodes
            .iter()
            .find(|n| n.name == h)
            .unwrap()
            .containers
            .iter()
            .find(|x| x.name == c)
            .unwrap()
            .address
            .unwrap();
        let others: Vec<String> = (1..=hosts)
            .map(|i| format!("h{i}"))
            .filter(|x| *x != h)
            .collect();
        let times: Vec<Option<Duration>> = std::thread::scope(|s| {
            let hs: Vec<_> = others
                .iter()
                .map(|o| {
                    s.spawn(move || {
                        reach_from(&format!("{big}-{o}"), addr, Duration::from_secs(10))
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let _ = attached;
        if times.iter().any(Option::is_none) {
            unreached += 1;
        }
        let worst = times
            .iter()
            .flatten()
            .max()
            .copied()
            .unwrap_or(Duration::from_secs(10));
        conv.push(worst.as_secs_f64() * 1e3);
    }
    let t = Instant::now();
    ops::down(big).unwrap();
    let big_down = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&root);

    let median = |v: &mut Vec<f64>| pct(v, 0.5);
    let (c50, c99) = (pct(&mut conv.clone(), 0.5), pct(&mut conv, 0.99));
    let rss_total: u64 = rss.iter().sum();
    let rss_max = rss.iter().max().copied().unwrap_or(0);
    println!(
        "lab benchmark on {} (medians of {rounds} rounds where repeated)",
        datastore()
    );
    println!("  default lab (3 hosts, 6 containers) up to a passing matrix: {:.2} s (min {:.2}, max {:.2})", median(&mut ups.clone()), ups.iter().cloned().fold(f64::MAX, f64::min), ups.iter().cloned().fold(0.0, f64::max));
    println!(
        "  default lab converged after agents started:                {:.2} s",
        median(&mut converge3)
    );
    println!(
        "  default lab down:                                          {:.3} s",
        median(&mut downs.clone())
    );
    println!("  {hosts}-host lab cold start to a passing matrix:              {cold:.2} s (converged: {})", cold_converged.map(|c| format!("{c:.2} s after agents started")).unwrap_or_else(|| "NO".into()));
    println!(
        "  {hosts}-host lab agents RSS: total {:.1} MiB, max {:.1} MiB per agent",
        rss_total as f64 / 1024.0,
        rss_max as f64 / 1024.0
    );
    if datastore() == "etcd" {
        println!("  etcd requests per node, idle: {gossip_bps:.2} /s");
    } else {
        println!("  gossip sent per node, idle: {gossip_bps:.0} B/s");
    }
    println!("  convergence over {attach} attachments (attached -> reachable from all {} other hosts): p50 {c50:.1} ms, p99 {c99:.1} ms, never reached: {unreached}", hosts - 1);
    println!("  {hosts}-host lab down: {big_down:.2} s");
    if let Ok(path) = std::env::var("BENCH_JSON") {
        let v: Value = json!({
            "default_up_s": ups, "default_down_s": downs, "hosts": hosts, "cold_start_s": cold,
            "rss_kib": rss, "gossip_bytes_per_s_per_node": gossip_bps, "convergence_ms": {"p50": c50, "p99": c99, "unreached": unreached},
            "big_down_s": big_down,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    }
}
