//! `muslin lab` end to end, through the real binary, as a user runs it.

mod common;

use std::process::Command;

use common::lab::{file, Lab};
use common::BIN;
use serde_json::Value;

#[test]
fn default_lab_has_the_multi_nic_trap_and_down_leaves_nothing() {
    let lab = Lab::new();
    let r = lab.up(&[]);
    assert_eq!(r["hosts"], 3);
    assert_eq!(r["containers"], 6);
    let ns = lab.namespaces();
    for n in ["h1", "h2", "h3", "h1-c1", "h1-c2", "h3-c2", "switch"] {
        assert!(ns.contains(&format!("{}-{n}", lab.name)), "{n} in {ns:?}");
    }
    let st = lab.status();
    for h in st["nodes"].as_array().unwrap() {
        assert_eq!(h["agent_up"], true);
    }
    // Two NICs per host; the default route is on the management NIC, whose
    // address is the same on every host and reaches no other host.
    let route = lab.exec("h1", &["ip", "-j", "route", "show", "default"]);
    let route: Value = serde_json::from_slice(&route.stdout).unwrap();
    assert_eq!(route[0]["dev"], "eth0");
    for h in ["h1", "h2"] {
        let a = lab.exec(h, &["ip", "-j", "-4", "addr", "show", "eth0"]);
        let a: Value = serde_json::from_slice(&a.stdout).unwrap();
        assert_eq!(a[0]["addr_info"][0]["local"], "10.0.2.15");
    }
    assert!(!lab
        .exec(
            "h1",
            &[
                BIN,
                "probe",
                "check",
                "10.0.2.16",
                "--proto",
                "icmp",
                "--timeout-ms",
                "300"
            ]
        )
        .status
        .success());
    // The cluster segment joins them.
    let o = lab.exec(
        "h1",
        &[BIN, "probe", "check", "192.168.56.12", "--proto", "icmp"],
    );
    assert!(
        o.status.success(),
        "h1 -> h2 on the cluster segment: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    // Containers on one host reach each other and their host.
    let m = lab.json(&[
        "check",
        "--name",
        &lab.name,
        "--json",
        "--timeout-ms",
        "500",
    ]);
    let pair = |from: &str, to: &str| {
        m["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["from"] == from && p["to"] == to)
            .cloned()
            .unwrap()
    };
    assert!(pair("h1/c1", "h1/c2")["failed"]
        .as_array()
        .unwrap()
        .is_empty());
    assert!(pair("h2/c2", "h2")["failed"].as_array().unwrap().is_empty());

    // exec, run, rm work by name.
    let o = lab.exec("h2/c1", &["ip", "-br", "addr", "show", "eth0"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("10.244."),
        "a pod address"
    );
    lab.ok(&["run", "--name", &lab.name, "h2", "web"]);
    assert!(lab.namespaces().contains(&format!("{}-h2-web", lab.name)));
    lab.ok(&["rm", "--name", &lab.name, "h2", "web"]);
    assert!(!lab.namespaces().contains(&format!("{}-h2-web", lab.name)));
    assert!(lab
        .ok(&["logs", "--name", &lab.name, "h1"])
        .contains("agent ready"));

    let agents: Vec<String> = ["h1", "h2", "h3"]
        .iter()
        .flat_map(|h| {
            let o = Command::new("ip")
                .args(["netns", "pids", &format!("{}-{h}", lab.name)])
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(!agents.is_empty());
    lab.ok(&["down", "--name", &lab.name]);
    assert!(
        lab.namespaces().is_empty(),
        "namespaces left: {:?}",
        lab.namespaces()
    );
    for pid in agents {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z"))
            .unwrap_or(false);
        assert!(!alive, "process {pid} of the lab survived down");
    }
    assert!(!lab.root.0.join(&lab.name).exists(), "state files left");
    // down is idempotent.
    lab.ok(&["down", "--name", &lab.name]);
}

#[test]
fn underlay_follows_the_topology_routers_mtus_and_blocked_pairs() {
    let lab = Lab::new();
    let (_d, path) = file(
        r#"
[[segment]]
name = "left"
cidr = "192.168.10.0/24"
mtu = 9000
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
name = "a"
count = 3
containers = 1
[[host.nic]]
segment = "left"
default-route = true
[[host]]
name = "b"
containers = 0
[[host.nic]]
segment = "right"
default-route = true
[[blocked]]
hosts = ["a1", "a3"]
"#,
    );
    lab.up(&["-f", &path]);
    let reach = |from: &str, to: &str| {
        lab.exec(
            from,
            &[
                BIN,
                "probe",
                "check",
                to,
                "--proto",
                "icmp",
                "--timeout-ms",
                "500",
            ],
        )
        .status
        .success()
    };
    assert!(reach("a1", "192.168.10.12"), "same segment");
    assert!(reach("a1", "192.168.20.11"), "through the router");
    assert!(reach("b", "192.168.10.12"), "back through the router");
    assert!(!reach("a1", "192.168.10.13"), "a1-a3 is blocked");
    assert!(!reach("a3", "192.168.10.11"), "a3-a1 is blocked");
    assert!(reach("a2", "192.168.10.13"));
    let mtu = |h: &str| {
        let o = lab.exec(h, &["ip", "-j", "link", "show", "eth0"]);
        serde_json::from_slice::<Value>(&o.stdout).unwrap()[0]["mtu"].clone()
    };
    assert_eq!(mtu("a1"), 9000);
    assert_eq!(mtu("b"), 1500);
}

#[test]
fn failed_up_cleans_up_and_says_why() {
    // An agent that refuses its settings.
    let lab = Lab::new();
    let (_d, path) = file(
        r#"
agent = { mtu = 99 }
[[segment]]
name = "s"
cidr = "192.168.30.0/24"
[[host]]
name = "h"
count = 2
[[host.nic]]
segment = "s"
"#,
    );
    let o = lab.cmd(&["up", "--name", &lab.name, "-f", &path]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("did not start") && err.contains("mtu"),
        "{err}"
    );
    assert!(lab.namespaces().is_empty(), "left: {:?}", lab.namespaces());
    assert!(!lab.root.0.join(&lab.name).exists());

    // An invalid topology: nothing is made, the line and field are named.
    let (_d2, bad) = file("[[segment]]\nname = \"s\"\ncidr = \"192.168.30.0/24\"\n[[host]]\nname = \"h1\"\n[[host.nic]]\nsegment = \"nope\"\n");
    let o = lab.cmd(&["up", "--name", &lab.name, "-f", &bad]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("line 7") && err.contains("segment"), "{err}");
    assert!(lab.namespaces().is_empty());
}

#[test]
fn two_labs_coexist_without_interfering() {
    let a = Lab::new();
    // Same registry root: both are listed; commands without --name refuse.
    let b = Lab::in_root(a.root.clone());
    a.up(&["--hosts", "2"]);
    b.up(&["--hosts", "2"]);
    let o = a.cmd(&["status"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&b.name),
        "lists the labs"
    );
    // Both use the same addresses inside, yet each works.
    let peer = |lab: &Lab| -> String {
        lab.status()["nodes"][1]["containers"][0]["address"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let block = |a: String| a.rsplit_once('.').unwrap().0.to_string();
    assert_eq!(
        block(peer(&a)),
        block(peer(&b)),
        "the same pod blocks in both labs"
    );
    for lab in [&a, &b] {
        let o = lab.exec(
            "h1/c1",
            &[BIN, "probe", "check", &peer(lab), "--proto", "tcp,icmp"],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    }
    a.ok(&["down", "--name", &a.name]);
    assert!(a
        .namespaces()
        .iter()
        .all(|n| !n.starts_with(&format!("{}-", a.name))));
    assert_eq!(
        b.status()["nodes"].as_array().unwrap().len(),
        2,
        "b untouched"
    );
    let o = b.exec(
        "h1/c1",
        &[BIN, "probe", "check", &peer(&b), "--proto", "tcp"],
    );
    assert!(o.status.success(), "b still works after a is gone");
}
