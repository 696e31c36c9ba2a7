//! `muslin doctor` on hosts built as README's Install section says: each
//! check meets its pitfall, names it and exits non-zero, and the same host
//! without the pitfall reports that check ok.

mod common;

use common::hosts::{findings, level, until, Agent, Net};
use common::Netns;

#[test]
fn a_stopped_agent_is_a_problem_and_a_running_one_is_ok() {
    let net = Net::new();
    let h = [Netns::new("dr")];
    net.as_readme_hosts(&h);
    let mut a = Agent::start(&h[0], "h1", &net.secret(), &[]);
    until("the agent chose its address", 30, || {
        a.status()["cluster"]["underlay_if"] != ""
    });
    let (code, r) = a.doctor();
    assert_eq!(level(&r, "agent"), "ok", "{r:#}");
    assert_eq!(
        level(&r, "underlay"),
        "warning",
        "two NICs, no peer yet: {r:#}"
    );
    let _ = code;
    if let Some(mut c) = a.child.take() {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    let (code, r) = a.doctor();
    assert_eq!(level(&r, "agent"), "problem", "{r:#}");
    assert_eq!(code, 1, "{r:#}");
}

/// Opens `flows` distinct UDP flows from inside `ns` towards `to` (a
/// conntrack entry each: nothing answers, so they stay for the UDP timeout).
/// `to` needs a resolved neighbour: datagrams waiting for ARP would hold
/// the socket's buffer and block the sender.
fn open_flows(ns: &Netns, to: std::net::Ipv4Addr, flows: u32) {
    let path = ns.path();
    std::thread::spawn(move || {
        let f = std::fs::File::open(path).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let mut sent = 0u32;
        while sent < flows {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            for port in 1..=u16::MAX {
                if sent == flows {
                    break;
                }
                // A full neighbour queue refuses some sends; the entry
                // exists once the packet passed the firewall hooks.
                let _ = s.send_to(b"x", (to, port));
                sent += 1;
            }
        }
    })
    .join()
    .unwrap();
}

#[test]
fn a_full_conntrack_table_is_a_problem() {
    let net = Net::new();
    let h = [Netns::new("dct")];
    net.as_readme_hosts(&h);
    let a = Agent::start(&h[0], "h1", &net.secret(), &[]);
    until("the agent chose its address", 30, || {
        a.status()["cluster"]["underlay_if"] != ""
    });
    let (_, r) = a.doctor();
    assert_eq!(level(&r, "conntrack"), "ok", "{r:#}");
    let max: u32 = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The limit is the kernel's; the count is this namespace's own, so
    // filling it leaves every other namespace alone.
    h[0].ip(&[
        "neigh",
        "add",
        "192.168.56.200",
        "lladdr",
        "02:00:00:00:00:c8",
        "dev",
        "eth1",
        "nud",
        "permanent",
    ]);
    open_flows(&h[0], "192.168.56.200".parse().unwrap(), max / 100 * 93);
    let (code, r) = a.doctor();
    assert_eq!(level(&r, "conntrack"), "problem", "{r:#}");
    let saw = findings(&r, "conntrack")[0]["saw"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(saw.contains(&format!("of nf_conntrack_max {max}")), "{saw}");
    assert_eq!(code, 1);
}

#[test]
fn the_neighbour_table_limits_are_read_from_the_kernel() {
    let net = Net::new();
    let h = [Netns::new("dnb")];
    net.as_readme_hosts(&h);
    let a = Agent::start(&h[0], "h1", &net.secret(), &[]);
    let (_, r) = a.doctor();
    assert_eq!(level(&r, "neighbour-table"), "ok", "{r:#}");
    let saw = findings(&r, "neighbour-table")[0]["saw"]
        .as_str()
        .unwrap()
        .to_string();
    let t3 = std::fs::read_to_string("/proc/sys/net/ipv4/neigh/default/gc_thresh3").unwrap();
    assert!(
        saw.contains(&format!("gc_thresh3 {}", t3.trim())),
        "read from the initial namespace: {saw}"
    );
}

/// Debian's libfaketime, wherever the architecture puts it.
fn libfaketime() -> String {
    let o = std::process::Command::new("dpkg")
        .args(["-L", "libfaketime"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .find(|l| l.ends_with("/faketime/libfaketime.so.1"))
        .expect("libfaketime is installed (scripts/install-deps.sh)")
        .to_string()
}

#[test]
fn a_node_whose_clock_is_off_is_named() {
    let net = Net::new();
    let h = [Netns::new("dck"), Netns::new("dck"), Netns::new("dck")];
    net.as_readme_hosts(&h);
    let join = ["--join", "192.168.56.11"];
    let a1 = Agent::start(&h[0], "h1", &net.secret(), &[]);
    let _a2 = Agent::start(&h[1], "h2", &net.secret(), &join);
    let skew = |a: &Agent, peer: &str| a.peer(peer)["clock_skew_ms"].as_i64();
    until("h1 reads h2's clock", 60, || skew(&a1, "h2").is_some());
    let (_, r) = a1.doctor();
    assert_eq!(level(&r, "clock-skew"), "ok", "{r:#}");
    // libfaketime moves the wall clock of h3's agent only; within the 30 s
    // that probes and sealed gossip allow, so h3 still joins.
    // `env` execs the agent itself (the `faketime` wrapper would fork it,
    // and killing the wrapper would leave the agent running).
    let preload = format!("LD_PRELOAD={}", libfaketime());
    let mut a3 = Agent::start_wrapped(
        &h[2],
        "h3",
        &net.secret(),
        &join,
        &[
            "env",
            &preload,
            "FAKETIME=+12",
            "FAKETIME_DONT_FAKE_MONOTONIC=1",
        ],
    );
    // libfaketime keeps a shared-memory segment and a semaphore per
    // process, named by its pid, and removes them at exit; a killed agent
    // cannot.
    struct FaketimeShm(u32);
    impl Drop for FaketimeShm {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(format!("/dev/shm/faketime_shm_{}", self.0));
            let _ = std::fs::remove_file(format!("/dev/shm/sem.faketime_sem_{}", self.0));
        }
    }
    let _shm = FaketimeShm(a3.child.as_ref().unwrap().id());
    a3.wait_ready(std::time::Duration::from_secs(60));
    until("h1 reads h3's clock", 60, || skew(&a1, "h3").is_some());
    let s = skew(&a1, "h3").unwrap();
    assert!((11_000..13_500).contains(&s), "h3 is 12 s ahead: {s}");
    let (code, r) = a1.doctor();
    assert_eq!(level(&r, "clock-skew"), "problem", "{r:#}");
    let saw = findings(&r, "clock-skew")[0]["saw"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(saw.starts_with("h3 is 1"), "{saw}");
    assert!(!saw.contains("h2"), "h2's clock is right: {saw}");
    assert_eq!(code, 1);
}

#[test]
fn nodes_claiming_one_address_are_named_and_a_verified_choice_is_ok() {
    let net = Net::new();
    let h = [Netns::new("ddu"), Netns::new("ddu"), Netns::new("ddu")];
    net.as_readme_hosts(&h);
    let join = ["--join", "192.168.56.11"];
    // Every host has 10.0.2.15 on its NAT NIC, as under Vagrant; h1 and
    // h2 are pinned to it, as a template copied to every host would do.
    let pinned = ["--underlay", "address=10.0.2.15"];
    let a1 = Agent::start(&h[0], "h1", &net.secret(), &pinned);
    let a3 = Agent::start(&h[2], "h3", &net.secret(), &join);
    until("h3 sees h1", 60, || a3.peer("h1")["alive"] == true);
    let (_, r) = a3.doctor();
    assert_eq!(level(&r, "duplicate-address"), "ok", "{r:#}");
    assert_eq!(level(&r, "underlay"), "ok", "{r:#}");
    let saw = findings(&r, "underlay")[0]["saw"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        saw.contains("192.168.56.13 (eth1)") && saw.contains("10.0.2.15 (eth0)"),
        "both candidates named: {saw}"
    );
    assert!(
        saw.contains("chose 192.168.56.13 on eth1: reaches join peer"),
        "{saw}"
    );
    let _a2 = Agent::start(
        &h[1],
        "h2",
        &net.secret(),
        &[&pinned[..], &join[..]].concat(),
    );
    let mut last = serde_json::Value::Null;
    until("doctor names the duplicate", 60, || {
        let (code, r) = a1.doctor();
        last = r.clone();
        code == 1 && level(&r, "duplicate-address") == "problem"
    });
    let saw = findings(&last, "duplicate-address")[0]["saw"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(saw.contains("h1, h2 all claim 10.0.2.15"), "{saw}");
}

#[test]
fn the_userspace_wireguard_fallback_is_named() {
    let net = Net::new();
    let h = [Netns::new("dwg")];
    net.as_readme_hosts(&h);
    let plain = Agent::start(&h[0], "h1", &net.secret(), &[]);
    let wg_line = |r: &serde_json::Value| {
        findings(r, "kernel-features")
            .into_iter()
            .find(|f| f["saw"].as_str().unwrap().starts_with("WireGuard"))
            .cloned()
            .unwrap()
    };
    let (_, r) = plain.doctor();
    let f = wg_line(&r);
    assert_eq!(f["level"], "ok", "{f}");
    drop(plain);
    // The hosts of every test share this machine's /var/run/wireguard,
    // and a killed agent leaves its control socket there.
    let uapi = format!("mwd{}", std::process::id() % 1_000_000);
    struct Unlink(String);
    impl Drop for Unlink {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _socket = Unlink(format!("/var/run/wireguard/{uapi}.sock"));
    let enc = Agent::start(
        &h[0],
        "h1",
        &net.secret(),
        &["--encryption", "wireguard", "--wireguard-uapi", &uapi],
    );
    until("the WireGuard device is up", 30, || {
        enc.status()["cluster"]["wireguard"].is_object()
    });
    let (_, r) = enc.doctor();
    let f = wg_line(&r);
    if f["saw"].as_str().unwrap().contains("not in this kernel") {
        assert_eq!(f["level"], "warning", "{f}");
        assert!(f["saw"].as_str().unwrap().contains("userspace"), "{f}");
    } else {
        assert_eq!(f["level"], "ok", "a kernel with WireGuard: {f}");
    }
}
