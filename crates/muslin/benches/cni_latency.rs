//! CNI ADD and DEL latency of Muslin against Debian's reference plugins
//! (`bridge` + `host-local`), measured in the same run on the same machine.
//!
//! Each round builds a fresh host namespace, attaches N containers one after
//! another with each plugin set, then detaches them, timing every plugin
//! invocation as a runtime sees it (process start to exit). The bench
//! process itself enters the host namespace, so neither plugin pays for an
//! `ip netns exec` wrapper. Rounds alternate the order of the two plugins;
//! the figures are medians over rounds of each round's percentile.
//!
//! Run: `cargo bench -p muslin --bench cni_latency` (root). Environment:
//! `BENCH_N` attachments per round (200), `BENCH_ROUNDS` (5),
//! `BENCH_JSON` a file to write the figures to.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_muslin");
const REF_PLUGINS: &str = "/usr/lib/cni";

fn sh(args: &[&str]) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect("spawn");
    assert!(st.success(), "{args:?}");
}

struct Ns(String);
impl Ns {
    fn new(name: String) -> Ns {
        sh(&["ip", "netns", "add", &name]);
        Ns(name)
    }
    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }
}
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn invoke(plugin: &str, cmd: &str, id: &str, netns: &str, conf: &str) -> Duration {
    let t = Instant::now();
    let mut c = Command::new(plugin)
        .env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", REF_PLUGINS)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plugin");
    c.stdin.take().unwrap().write_all(conf.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    let dt = t.elapsed();
    assert!(
        o.status.success(),
        "{plugin} {cmd}: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    dt
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

struct Round {
    add: Vec<Duration>,
    del: Vec<Duration>,
}

fn run_set(name: &str, n: usize, conf: &str, plugin: &str, tag: &str) -> Round {
    let cs: Vec<Ns> = (0..n)
        .map(|i| Ns::new(format!("mb{}-{tag}-{i}", std::process::id())))
        .collect();
    let mut r = Round {
        add: vec![],
        del: vec![],
    };
    for (i, c) in cs.iter().enumerate() {
        r.add.push(invoke(
            plugin,
            "ADD",
            &format!("{name}{i}"),
            &c.path(),
            conf,
        ));
    }
    for (i, c) in cs.iter().enumerate() {
        r.del.push(invoke(
            plugin,
            "DEL",
            &format!("{name}{i}"),
            &c.path(),
            conf,
        ));
    }
    r
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a listing
    }
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let pid = std::process::id();
    let host = Ns::new(format!("mb{pid}-host"));
    let host_ns = File::open(host.path()).unwrap();
    // The plugins inherit the namespace of the process that starts them.
    setns(host_ns.as_fd(), CloneFlags::CLONE_NEWNET).expect("enter host namespace (needs root)");
    sh(&["ip", "link", "set", "lo", "up"]);
    let dir = std::env::temp_dir().join(format!("muslin-bench-{pid}"));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("agent.sock");
    let mut agent: Child = Command::new(BIN)
        .args(["agent", "--block", "10.60.0.0/22", "--log-level", "warn"])
        .arg("--socket")
        .arg(&sock)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    let idle_rss = rss_kib(agent.id());

    let muslin_conf =
        json!({"cniVersion": "1.0.0", "name": "bench", "type": "muslin", "socket": sock})
            .to_string();
    let bridge_conf =
        json!({"cniVersion": "1.0.0", "name": "benchbr", "type": "bridge", "bridge": "mbbr0",
        "isGateway": true, "ipam": {"type": "host-local", "subnet": "10.61.0.0/22",
        "dataDir": dir.join("host-local")}})
        .to_string();
    let bridge = format!("{REF_PLUGINS}/bridge");

    let mut m_add = vec![];
    let mut m_del = vec![];
    let mut b_add = vec![];
    let mut b_del = vec![];
    let mut peak_rss = 0;
    eprintln!("cni_latency: {rounds} rounds of {n} sequential ADDs then DELs per plugin");
    for round in 0..rounds {
        let mut one = |which: &str| {
            if which == "muslin" {
                let mut r = run_set("m", n, &muslin_conf, BIN, &format!("m{round}"));
                m_add.push((pct(&mut r.add, 0.5), pct(&mut r.add, 0.99)));
                m_del.push((pct(&mut r.del, 0.5), pct(&mut r.del, 0.99)));
            } else {
                let mut r = run_set("b", n, &bridge_conf, &bridge, &format!("b{round}"));
                b_add.push((pct(&mut r.add, 0.5), pct(&mut r.add, 0.99)));
                b_del.push((pct(&mut r.del, 0.5), pct(&mut r.del, 0.99)));
            }
        };
        // Alternate who goes first so drift on a shared machine hits both.
        if round % 2 == 0 {
            one("muslin");
            one("bridge");
        } else {
            one("bridge");
            one("muslin");
        }
        peak_rss = peak_rss.max(rss_kib(agent.id()));
        eprintln!("  round {}/{rounds} done", round + 1);
    }
    std::thread::sleep(Duration::from_millis(500));
    let after_rss = rss_kib(agent.id());
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = std::fs::remove_dir_all(&dir);

    let stat = |v: &Vec<(f64, f64)>| {
        (
            median(v.iter().map(|x| x.0).collect()),
            median(v.iter().map(|x| x.1).collect()),
        )
    };
    let (ma50, ma99) = stat(&m_add);
    let (md50, md99) = stat(&m_del);
    let (ba50, ba99) = stat(&b_add);
    let (bd50, bd99) = stat(&b_del);
    let spread = |v: &Vec<(f64, f64)>| {
        let p: Vec<f64> = v.iter().map(|x| x.0).collect();
        (
            p.iter().cloned().fold(f64::MAX, f64::min),
            p.iter().cloned().fold(0.0, f64::max),
        )
    };
    println!("CNI latency, ms (median over {rounds} rounds of {n} sequential attachments; p50 range in brackets)");
    println!(
        "{:<28} {:>8} {:>8} {:>18}",
        "", "p50", "p99", "p50 min..max"
    );
    let row = |label: &str, p50: f64, p99: f64, s: (f64, f64)| {
        println!(
            "{label:<28} {p50:>8.2} {p99:>8.2} {:>18}",
            format!("{:.2}..{:.2}", s.0, s.1)
        );
    };
    row("muslin ADD", ma50, ma99, spread(&m_add));
    row("bridge+host-local ADD", ba50, ba99, spread(&b_add));
    row("muslin DEL", md50, md99, spread(&m_del));
    row("bridge+host-local DEL", bd50, bd99, spread(&b_del));
    println!(
        "ratio muslin/bridge: ADD p50 {:.2}, p99 {:.2}; DEL p50 {:.2}, p99 {:.2}",
        ma50 / ba50,
        ma99 / ba99,
        md50 / bd50,
        md99 / bd99
    );
    println!(
        "agent RSS: idle at start {} KiB, peak {} KiB, idle after churn {} KiB",
        idle_rss, peak_rss, after_rss
    );
    if let Ok(path) = std::env::var("BENCH_JSON") {
        let v: Value = json!({
            "n": n, "rounds": rounds,
            "muslin": {"add_p50_ms": ma50, "add_p99_ms": ma99, "del_p50_ms": md50, "del_p99_ms": md99},
            "bridge_host_local": {"add_p50_ms": ba50, "add_p99_ms": ba99, "del_p50_ms": bd50, "del_p99_ms": bd99},
            "agent_rss_kib": {"idle": idle_rss, "peak": peak_rss, "after": after_rss},
        });
        std::fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    }
}
