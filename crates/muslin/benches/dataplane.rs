//! Pod-to-pod data plane across hosts: Muslin's routed and VXLAN paths
//! against the same paths built by hand with `ip` (veth pairs and routes as
//! Flannel host-gw or Calico without encapsulation program them; a kernel
//! VXLAN as Flannel's vxlan backend or Docker's overlay), and against
//! host-to-host over the same underlay. All in one lab, in the same run.
//!
//! TCP throughput (iperf3, 1 and 4 streams) and TCP request/response
//! latency (1-byte-line echo, p50 and p99), medians over rounds.
//! Run: `cargo bench -p muslin --bench dataplane` (root, iperf3 installed).
//! Environment: `BENCH_ROUNDS` (3), `BENCH_SECONDS` per iperf3 run (2),
//! `BENCH_JSON` a file for the figures.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use muslin_lab::ops::{self, Ctx, UpOptions};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_muslin");

const TOPOLOGY: &str = r#"
[[segment]]
name = "lan"
cidr = "192.168.60.0/24"
[[host]]
name = "h"
count = 2
containers = 1
[[host.nic]]
segment = "lan"
default-route = true
"#;

fn sh(args: &[&str]) {
    let o = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn ip(ns: &str, cmd: &str) {
    let args: Vec<&str> = ["ip", "-n", ns]
        .into_iter()
        .chain(cmd.split_whitespace())
        .collect();
    sh(&args);
}

/// A hand-built pod on `host`: a namespace and a veth pair with a /32 and a
/// link-local gateway, exactly the shape Muslin builds, made with `ip`.
fn hand_pod(lab: &str, host: &str, addr: &str, mtu: u32) -> String {
    let ns = format!("{lab}-{host}-hand");
    let hns = format!("{lab}-{host}");
    sh(&["ip", "netns", "add", &ns]);
    ip(&hns, &format!("link add hand0 mtu {mtu} address ee:ee:ee:ee:ee:ee type veth peer name eth0 mtu {mtu} netns {ns}"));
    ip(&hns, "link set hand0 up");
    ip(&ns, "link set lo up");
    ip(&ns, &format!("addr add {addr}/32 dev eth0"));
    ip(&ns, "link set eth0 up");
    ip(&ns, "route add 169.254.1.1 dev eth0 scope link");
    ip(&ns, "route add default via 169.254.1.1 dev eth0");
    ip(
        &ns,
        "neigh add 169.254.1.1 lladdr ee:ee:ee:ee:ee:ee dev eth0 nud permanent",
    );
    ip(&hns, &format!("route add {addr}/32 dev hand0 scope link"));
    ns
}

fn iperf(from: &str, to_ns: &str, addr: &str, streams: u32, secs: u32) -> f64 {
    let mut srv = Command::new("ip")
        .args(["netns", "exec", to_ns, "iperf3", "-s", "-1", "-p", "5299"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server (install iperf3)");
    std::thread::sleep(Duration::from_millis(150));
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            from,
            "iperf3",
            "-c",
            addr,
            "-p",
            "5299",
            "-J",
            "-t",
            &secs.to_string(),
            "-P",
            &streams.to_string(),
        ])
        .output()
        .expect("iperf3 client");
    let _ = srv.wait();
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9
}

/// Request/response over one TCP connection to the probe server: the
/// round-trip time of small messages, in microseconds (p50, p99).
fn rr(from: &str, addr: IpAddr, n: usize) -> (f64, f64) {
    let from = from.to_string();
    std::thread::spawn(move || {
        let f = File::open(format!("/var/run/netns/{from}")).unwrap();
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let s = TcpStream::connect_timeout(&SocketAddr::new(addr, 7777), Duration::from_secs(3))
            .expect("probe server");
        s.set_nodelay(true).unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        let mut t = Vec::with_capacity(n);
        for i in 0..n + 100 {
            let start = Instant::now();
            w.write_all(b"MSLQ0000000000000001\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            if i >= 100 {
                t.push(start.elapsed().as_secs_f64() * 1e6);
            }
        }
        t.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (t[t.len() / 2], t[(t.len() * 99) / 100])
    })
    .join()
    .unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

struct Path {
    name: &'static str,
    from: String,
    to_ns: String,
    addr: IpAddr,
}

fn serve_probe(ns: &str) -> std::process::Child {
    let mut c = Command::new("ip")
        .args(["netns", "exec", ns, BIN, "probe", "serve"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut l = String::new();
    BufReader::new(c.stdout.take().unwrap())
        .read_line(&mut l)
        .unwrap();
    c
}

fn lab(name: &str, backend: &str) -> (Vec<Path>, Vec<std::process::Child>) {
    let ctx = Ctx {
        bin: PathBuf::from(BIN),
        progress: Box::new(|_| {}),
    };
    let o = UpOptions {
        name: name.into(),
        hosts: None,
        topology: Some(("dataplane".into(), TOPOLOGY.into())),
        backend: backend.into(),
        datastore: "gossip".into(),
        etcd_members: 1,
        converge_timeout: 30,
    };
    let r = ops::up(&ctx, &o).expect("lab up");
    assert!(r.converge_seconds.is_some(), "lab did not converge");
    let st = ops::status(Some(name)).unwrap();
    let pod = |h: &str| {
        st.nodes.iter().find(|n| n.name == h).unwrap().containers[0]
            .address
            .unwrap()
    };
    let (u1, u2) = ("192.168.60.11", "192.168.60.12");
    let (h1, h2) = (format!("{name}-h1"), format!("{name}-h2"));
    let mut servers = vec![];
    let mut paths = vec![Path {
        name: if backend == "routed" {
            "muslin routed"
        } else {
            "muslin vxlan"
        },
        from: format!("{h1}-c1"),
        to_ns: format!("{h2}-c1"),
        addr: pod("h2"),
    }];
    if backend == "routed" {
        // The underlay itself, and the host-gw twin.
        paths.push(Path {
            name: "host to host",
            from: h1.clone(),
            to_ns: h2.clone(),
            addr: u2.parse().unwrap(),
        });
        let a = hand_pod(name, "h1", "10.99.1.2", 1500);
        let b = hand_pod(name, "h2", "10.99.2.2", 1500);
        ip(&h1, &format!("route add 10.99.2.0/24 via {u2} dev eth0"));
        ip(&h2, &format!("route add 10.99.1.0/24 via {u1} dev eth0"));
        servers.push(serve_probe(&b));
        paths.push(Path {
            name: "hand-built routed",
            from: a,
            to_ns: b,
            addr: "10.99.2.2".parse().unwrap(),
        });
    } else {
        // The kernel VXLAN twin: its own device, VNI and port, same shape.
        let a = hand_pod(name, "h1", "10.99.1.2", 1450);
        let b = hand_pod(name, "h2", "10.99.2.2", 1450);
        for (h, local, peer, me, them, mac, peer_mac) in [
            (
                &h1,
                u1,
                u2,
                "10.99.1.0",
                "10.99.2.0",
                "02:99:00:00:00:01",
                "02:99:00:00:00:02",
            ),
            (
                &h2,
                u2,
                u1,
                "10.99.2.0",
                "10.99.1.0",
                "02:99:00:00:00:02",
                "02:99:00:00:00:01",
            ),
        ] {
            ip(h, &format!("link add hvx mtu 1450 address {mac} type vxlan id 99 dstport 4790 local {local} dev eth0 nolearning"));
            ip(h, &format!("addr add {me}/32 dev hvx"));
            ip(h, "link set hvx up");
            sh(&[
                "bridge",
                "-n",
                h,
                "fdb",
                "append",
                peer_mac,
                "dev",
                "hvx",
                "dst",
                peer,
                "self",
                "permanent",
            ]);
            ip(
                h,
                &format!("neigh add {them} lladdr {peer_mac} dev hvx nud permanent"),
            );
            ip(h, &format!("route add {them}/24 via {them} dev hvx onlink"));
        }
        servers.push(serve_probe(&b));
        paths.push(Path {
            name: "hand-built vxlan",
            from: a,
            to_ns: b,
            addr: "10.99.2.2".parse().unwrap(),
        });
    }
    (paths, servers)
}

/// Removes the bench's labs and its hand-built pods (not part of any lab).
fn cleanup(root: &std::path::Path) {
    for name in ["dpr", "dpv"] {
        for h in ["h1", "h2"] {
            let ns = format!("{name}-{h}-hand");
            if std::path::Path::new("/var/run/netns").join(&ns).exists() {
                let _ = Command::new("ip").args(["netns", "del", &ns]).status();
            }
        }
        let _ = ops::down(name);
    }
    let _ = std::fs::remove_dir_all(root);
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let secs: u32 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    // Fixed names: a run that died (release benches abort on panic) is
    // cleaned up by the next one.
    let root = std::env::temp_dir().join("muslin-bench-dataplane");
    std::env::set_var("MUSLIN_LAB_ROOT", &root);
    cleanup(&root);
    let mut results: BTreeMap<&str, Vec<(f64, f64, f64, f64)>> = BTreeMap::new();
    let mut children = vec![];
    let mut paths = vec![];
    for (name, backend) in [("dpr", "routed"), ("dpv", "vxlan")] {
        let (p, c) = lab(name, backend);
        paths.extend(p);
        children.extend(c);
    }
    for round in 0..rounds {
        // Rotate the order so drift on a shared machine spreads over all paths.
        let order: Vec<&Path> = paths.iter().cycle().skip(round).take(paths.len()).collect();
        for p in order {
            let g1 = iperf(&p.from, &p.to_ns, &p.addr.to_string(), 1, secs);
            let g4 = iperf(&p.from, &p.to_ns, &p.addr.to_string(), 4, secs);
            let (l50, l99) = rr(&p.from, p.addr, 2000);
            results.entry(p.name).or_default().push((g1, g4, l50, l99));
        }
        eprintln!("  round {}/{rounds} done", round + 1);
    }
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    cleanup(&root);

    let med = |name: &str, k: usize| -> f64 {
        median(
            results[name]
                .iter()
                .map(|r| [r.0, r.1, r.2, r.3][k])
                .collect(),
        )
    };
    let base = med("host to host", 0);
    println!("pod-to-pod across two lab hosts, medians of {rounds} rounds ({secs} s iperf3 runs)");
    println!(
        "{:<20} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "path", "1 stream", "4 streams", "x host", "RR p50 us", "RR p99 us"
    );
    let mut out = serde_json::Map::new();
    for name in [
        "host to host",
        "hand-built routed",
        "muslin routed",
        "hand-built vxlan",
        "muslin vxlan",
    ] {
        let (g1, g4, l50, l99) = (med(name, 0), med(name, 1), med(name, 2), med(name, 3));
        println!(
            "{name:<20} {g1:>8.2}Gb {g4:>8.2}Gb {:>10.2} {l50:>10.1} {l99:>10.1}",
            g1 / base
        );
        out.insert(name.into(), json!({"gbps_1": g1, "gbps_4": g4, "ratio_to_host": g1 / base, "rr_p50_us": l50, "rr_p99_us": l99}));
    }
    let ratio = |a: &str, b: &str, k: usize| med(a, k) / med(b, k);
    println!(
        "muslin/hand-built: routed throughput {:.3} (1 stream) {:.3} (4), RR p50 {:.3}; vxlan throughput {:.3} (1) {:.3} (4), RR p50 {:.3}",
        ratio("muslin routed", "hand-built routed", 0),
        ratio("muslin routed", "hand-built routed", 1),
        ratio("muslin routed", "hand-built routed", 2),
        ratio("muslin vxlan", "hand-built vxlan", 0),
        ratio("muslin vxlan", "hand-built vxlan", 1),
        ratio("muslin vxlan", "hand-built vxlan", 2),
    );
    if let Ok(path) = std::env::var("BENCH_JSON") {
        std::fs::write(
            path,
            serde_json::to_vec_pretty(&Value::Object(out)).unwrap(),
        )
        .unwrap();
    }
}
