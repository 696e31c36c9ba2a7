//! Containers on different hosts reach each other: gossip, leases, the
//! routed/VXLAN/auto data planes, underlay choice and MTU, all through the
//! lab with real agents gossiping over UDP as separate processes.

mod common;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::lab::{failures, file, one_segment, Lab};
use common::BIN;
use serde_json::Value;

fn eventually(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn path(st: &Value, peer: &str) -> String {
    st["cluster"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == peer)
        .map(|n| n["path"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

fn default_lab_passes_the_full_matrix_with_no_interface_setting(ds: &str) {
    let lab = Lab::on(ds);
    let r = lab.up(&["--converge-timeout", "30"]);
    assert!(
        r["converge_seconds"].is_number(),
        "did not converge: {}",
        r["matrix"]
    );
    let m = lab.check("tcp,udp,icmp,ip253");
    assert!(failures(&m).is_empty(), "{:#?}", failures(&m));
    // The agent chose the cluster NIC by reachability, not the
    // default-route NIC whose address every host shares.
    let st = lab.agent_status("h1");
    assert_eq!(st["cluster"]["underlay_address"], "192.168.56.11");
    assert_eq!(st["cluster"]["underlay_if"], "eth1");
    assert!(st["cluster"]["underlay_reason"]
        .as_str()
        .unwrap()
        .contains("reaches join peer"));
    assert_eq!(path(&st, "h2"), "routed");
    assert_eq!(st["cluster"]["nodes"].as_array().unwrap().len(), 3);
}

const TWO_SUBNETS: &str = r#"
[[segment]]
name = "left"
cidr = "192.168.10.0/24"
[[segment]]
name = "right"
cidr = "192.168.20.0/24"
[[router]]
name = "r1"
[[router.nic]]
segment = "left"
[[router.nic]]
segment = "right"
[[host]]
name = "h"
count = 2
containers = 1
[[host.nic]]
segment = "left"
default-route = true
[[host]]
name = "h3"
containers = 1
[[host.nic]]
segment = "right"
default-route = true
"#;

fn backend_lab(ds: &str, topology: &str, backend: &str) -> (Lab, Value, Value) {
    let lab = Lab::on(ds);
    let (_d, path) = file(topology);
    lab.up(&["-f", &path, "--backend", backend]);
    // Let every agent learn every peer before judging.
    eventually("all peers known", 20, || {
        lab.agent_status("h1")["cluster"]["nodes"]
            .as_array()
            .unwrap()
            .len()
            == 3
    });
    std::thread::sleep(Duration::from_millis(500));
    let st = lab.agent_status("h1");
    let m = lab.check("tcp,udp,icmp");
    (lab, st, m)
}

fn routed_vxlan_and_auto_on_one_segment(ds: &str) {
    for (backend, want) in [("routed", "routed"), ("vxlan", "vxlan"), ("auto", "routed")] {
        let (_lab, st, m) = backend_lab(ds, &one_segment(3, 1, ""), backend);
        assert!(failures(&m).is_empty(), "{backend}: {:#?}", failures(&m));
        assert_eq!(path(&st, "h2"), want, "{backend}");
        assert_eq!(path(&st, "h3"), want, "{backend}");
    }
}

fn auto_and_vxlan_cross_a_router_and_routed_says_why_it_cannot(ds: &str) {
    let (lab, st, m) = backend_lab(ds, TWO_SUBNETS, "auto");
    assert!(failures(&m).is_empty(), "auto: {:#?}", failures(&m));
    assert_eq!(path(&st, "h2"), "routed", "same segment");
    assert_eq!(path(&st, "h3"), "vxlan", "across the router");
    // The router is outside the cluster and has no route to pods: pods
    // reach it only because their traffic is masqueraded.
    let o = lab.exec(
        "h1/c1",
        &[BIN, "probe", "check", "192.168.10.1", "--proto", "icmp"],
    );
    assert!(
        o.status.success(),
        "pod -> outside host (masqueraded): {}",
        String::from_utf8_lossy(&o.stdout)
    );
    drop(lab);

    let (_lab, st, m) = backend_lab(ds, TWO_SUBNETS, "vxlan");
    assert!(failures(&m).is_empty(), "vxlan: {:#?}", failures(&m));
    assert_eq!(path(&st, "h3"), "vxlan");

    let (_lab, st, m) = backend_lab(ds, TWO_SUBNETS, "routed");
    let failed = failures(&m);
    assert!(!failed.is_empty(), "routed cannot cross a router");
    assert!(
        failed.iter().all(|f| f.contains("h3")),
        "only pairs across the router fail: {failed:#?}"
    );
    let p = path(&st, "h3");
    assert!(
        p.starts_with("unreachable") && p.contains("shared L2"),
        "{p}"
    );
    let warnings = st["cluster"]["warnings"].to_string();
    assert!(
        warnings.contains("h3") && warnings.contains("vxlan or auto"),
        "{warnings}"
    );
}

fn eight_agents_started_at_once_hold_eight_distinct_blocks(ds: &str) {
    // Eight /24 blocks for eight nodes: every node must end up with a
    // different one, which is only possible if conflicts resolve.
    let lab = Lab::on(ds);
    let (_d, path) = file(
        r#"
pod-cidr = "10.250.0.0/21"
block-prefix = 24
[[segment]]
name = "lan"
cidr = "192.168.41.0/24"
[[host]]
name = "h"
count = 8
containers = 1
[[host.nic]]
segment = "lan"
default-route = true
"#,
    );
    let r = lab.up(&["-f", &path, "--converge-timeout", "60"]);
    assert!(
        r["converge_seconds"].is_number(),
        "8 hosts did not converge: {:#?}",
        failures(&r["matrix"])
    );
    let mut blocks = HashSet::new();
    for i in 1..=8 {
        let st = lab.agent_status(&format!("h{i}"));
        let b: Vec<String> = st["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["cidr"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(b.len(), 1, "h{i} holds {b:?}");
        assert!(blocks.insert(b[0].clone()), "h{i} holds {} twice", b[0]);
    }
    assert_eq!(blocks.len(), 8);
}

fn a_node_gone_past_its_ttl_loses_its_block_and_its_routes(ds: &str) {
    let lab = Lab::on(ds);
    let (_d, path) = file(&one_segment(3, 1, "agent = { block-ttl = 3 }"));
    lab.up(&["-f", &path, "--converge-timeout", "30"]);
    let b3 = lab.agent_status("h3")["blocks"][0]["cidr"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(lab.routes("h1").iter().any(|r| r["dst"] == b3.as_str()));
    let (pid, _) = lab.agent_process("h3");
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    // Routes stay while the node may come back...
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        lab.routes("h1").iter().any(|r| r["dst"] == b3.as_str()),
        "routes must outlive a short absence"
    );
    // ...and vanish from every host once its TTL has passed.
    for h in ["h1", "h2"] {
        eventually(&format!("{h} drops the route to {b3}"), 40, || {
            !lab.routes(h).iter().any(|r| r["dst"] == b3.as_str())
        });
        eventually(&format!("{h} forgets h3"), 40, || {
            !lab.agent_status(h)["cluster"]["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["name"] == "h3")
        });
    }
}

fn restart(lab: &Lab, host: &str) -> std::process::Child {
    let (pid, args) = lab.agent_process(host);
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(lab.root.0.join(&lab.name).join(host).join("agent.log"))
        .unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.ns(host)])
        .args(&args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let sock = lab.root.0.join(&lab.name).join(host).join("agent.sock");
    eventually(&format!("{host}'s agent is back"), 20, || {
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
    });
    child
}

fn agents_killed_and_restarted_lose_no_ping_replies(ds: &str) {
    let lab = Lab::on(ds);
    let (_d, path) = file(&one_segment(2, 1, ""));
    lab.up(&["-f", &path, "--converge-timeout", "30"]);
    let target = lab.status()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "h2")
        .unwrap()["containers"][0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("h1-c1"),
            BIN,
            "probe",
            "ping",
            &target,
            "--count",
            "500",
            "--interval-ms",
            "10",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let agents = [restart(&lab, "h2"), restart(&lab, "h1")];
    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("lost 0"), "{text}");
    // And the restarted agents serve new containers that are reachable.
    lab.ok(&["run", "--name", &lab.name, "h2", "late"]);
    let addr = lab.status()["nodes"][1]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "late")
        .unwrap()["address"]
        .as_str()
        .unwrap()
        .to_string();
    let o = lab.exec("h1/c1", &[BIN, "probe", "check", &addr, "--proto", "icmp"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    lab.ok(&["down", "--name", &lab.name]);
    for mut a in agents {
        let _ = a.wait();
    }
}

#[test]
fn a_host_without_the_cluster_secret_cannot_join() {
    let lab = Lab::new();
    let (_d, path) = file(&one_segment(2, 1, ""));
    lab.up(&["-f", &path]);
    // A stranger plugged into the lab's segment (bridge s0 of its switch).
    let stranger = common::Netns::new("stranger");
    let port = format!("x{}", std::process::id() % 100_000);
    common::must(&[
        "ip",
        "-n",
        &lab.ns("switch"),
        "link",
        "add",
        &port,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &stranger.name,
    ]);
    common::must(&[
        "ip",
        "-n",
        &lab.ns("switch"),
        "link",
        "set",
        &port,
        "master",
        "s0",
        "up",
    ]);
    stranger.ip(&["addr", "add", "192.168.40.99/24", "dev", "eth0"]);
    stranger.ip(&["link", "set", "eth0", "up"]);
    let dir = common::TempDir::new("stranger");
    let sock = dir.0.join("agent.sock");
    let state = dir.0.join("state");
    // It is told why, by its peers' notices; since anyone can forge a
    // notice, it keeps trying rather than stopping.
    let log = dir.0.join("agent.log");
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &stranger.name,
            BIN,
            "agent",
            "--node-name",
            "intruder",
            "--join",
            "192.168.40.11",
        ])
        .args([
            "--socket",
            sock.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let told = || {
        let l = std::fs::read_to_string(&log).unwrap_or_default();
        l.contains("cluster secret") && l.contains("--cluster-secret-file")
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !told() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let still_running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        told(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        still_running,
        "an unauthenticated notice must not stop an agent"
    );
    let st = lab.agent_status("h1");
    assert!(
        !st["cluster"]["nodes"].to_string().contains("intruder"),
        "it must not be in the cluster"
    );
}

fn mixed_mtus_carry_multi_megabyte_transfers_both_ways(ds: &str) {
    let lab = Lab::on(ds);
    let (_d, path) = file(include_str!("../../../examples/jumbo.toml"));
    lab.up(&["-f", &path, "--converge-timeout", "30"]);
    let st = lab.status();
    let addr = |h: &str| -> String {
        st["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == h)
            .unwrap()["containers"][0]["address"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let mtu = lab.exec("h1/c1", &["ip", "-j", "link", "show", "eth0"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&mtu.stdout).unwrap()[0]["mtu"],
        9000,
        "pods get the jumbo MTU"
    );
    for (from, to) in [
        ("h1/c1", "h3"),
        ("h3/c1", "h1"),
        ("h1/c1", "h2"),
        ("h2/c1", "h3"),
    ] {
        let o = lab.exec(
            from,
            &[BIN, "probe", "transfer", &addr(to), "--bytes", "8000000"],
        );
        assert!(
            o.status.success(),
            "{from} <-> {to}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

fn a_node_that_fills_its_block_claims_another(ds: &str) {
    // /28 blocks hold 14 pods; the fifteenth needs a second block.
    let lab = Lab::on(ds);
    let (_d, path) = file(&one_segment(2, 8, "block-prefix = 28"));
    lab.up(&["-f", &path, "--converge-timeout", "30"]);
    for i in 0..7 {
        lab.ok(&["run", "--name", &lab.name, "h1", &format!("x{i}")]);
    }
    let st = lab.agent_status("h1");
    let blocks = st["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 2, "{blocks:?}");
    // The newest pod, in the second block, is reachable from the other host.
    let last = lab.status()["nodes"][0]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "x6")
        .unwrap()["address"]
        .as_str()
        .unwrap()
        .to_string();
    let o = lab.exec(
        "h2/c1",
        &[BIN, "probe", "check", &last, "--proto", "tcp,icmp"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    // Hosts reach remote pods too.
    let o = lab.exec("h2", &[BIN, "probe", "check", &last, "--proto", "tcp,icmp"]);
    assert!(
        o.status.success(),
        "host -> remote pod: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

/// The multi-host suite runs on both datastores: the same tests, once with
/// embedded gossip and once with a real etcd started in the lab.
macro_rules! on_both_datastores {
    ($($name:ident),* $(,)?) => {
        mod gossip {
            $(#[test] fn $name() { super::$name("gossip") })*
        }
        mod etcd {
            $(#[test] fn $name() { super::$name("etcd") })*
        }
    };
}

on_both_datastores!(
    default_lab_passes_the_full_matrix_with_no_interface_setting,
    routed_vxlan_and_auto_on_one_segment,
    auto_and_vxlan_cross_a_router_and_routed_says_why_it_cannot,
    eight_agents_started_at_once_hold_eight_distinct_blocks,
    a_node_gone_past_its_ttl_loses_its_block_and_its_routes,
    agents_killed_and_restarted_lose_no_ping_replies,
    mixed_mtus_carry_multi_megabyte_transfers_both_ways,
    a_node_that_fills_its_block_claims_another,
);
