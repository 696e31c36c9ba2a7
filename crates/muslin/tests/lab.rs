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

/// `/etc/netns` entries of a lab (`ip netns exec` takes resolv.conf there).
fn etc_netns(lab: &Lab) -> Vec<String> {
    let prefix = format!("{}-", lab.name);
    let mut v: Vec<String> = std::fs::read_dir("/etc/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    v.sort();
    v
}

/// Pairs whose `dns` failed, as "from -> to".
fn dns_failures(m: &Value) -> Vec<String> {
    m["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["failed"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f[0] == "dns")
        })
        .map(|p| {
            format!(
                "{} -> {}",
                p["from"].as_str().unwrap(),
                p["to"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn containers_resolve_names_the_check_covers_them_and_resolv_conf_goes_with_them() {
    let lab = Lab::new();
    let r = lab.up(&["--converge-timeout", "60"]);
    assert!(
        !r["converge_seconds"].is_null(),
        "the matrix, names included, passes: {}",
        r["matrix"]
    );
    // `lab check` resolves names by default, each container's at the
    // resolver of the default network.
    let m = lab.json(&["check", "--name", &lab.name, "--json"]);
    assert!(
        common::lab::failures(&m).is_empty(),
        "{:?}",
        common::lab::failures(&m)
    );
    assert_eq!(
        m["protocols"],
        serde_json::json!(["tcp", "udp", "icmp", "dns"])
    );
    let pair = m["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["from"] == "h1/c1" && p["to"] == "h3/c2")
        .unwrap();
    assert_eq!(pair["dns"]["qname"], "c2.h3.muslin.internal");
    assert_eq!(pair["dns"]["resolver"], "169.254.53.1");
    assert!(
        m["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["to"] == "h2")
            .all(|p| p["dns"].is_null()),
        "hosts have no names"
    );

    // The lab wrote each container's resolv.conf from its CNI result, so
    // programs in a container resolve short names as in a real one.
    let conf =
        std::fs::read_to_string(format!("/etc/netns/{}-h1-c1/resolv.conf", lab.name)).unwrap();
    assert!(conf.contains("nameserver 169.254.53.1\n"), "{conf}");
    assert!(
        conf.contains("search h1.muslin.internal muslin.internal\n"),
        "{conf}"
    );
    assert!(conf.contains("options ndots:2\n"), "{conf}");
    let o = lab.exec("h1/c1", &["getent", "hosts", "c2.h3"]);
    let out = String::from_utf8_lossy(&o.stdout);
    let addr = lab.container_addr("h3", "c2");
    assert!(
        o.status.success() && out.split_whitespace().next() == Some(addr.as_str()),
        "getent hosts c2.h3 in h1/c1: {out} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // `muslin probe dns` asks the resolver of resolv.conf.
    let o = lab.exec("h2/c2", &[BIN, "probe", "dns", "c2.h3.muslin.internal"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), addr);
    let o = lab.exec("h2/c2", &[BIN, "probe", "dns", "nobody.h3.muslin.internal"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("NXDOMAIN"));

    // A broken name service fails the dns column, naming the pairs: h1's
    // resolver gets no query through (a table of the test's own, which
    // the agent leaves alone).
    let h1 = lab.ns("h1");
    let nft = |script: &str| common::hosts::nft_in(&h1, script);
    nft(
        "table inet dnslabtest {\n chain input {\n type filter hook input priority -400;\n \
         udp dport 53 drop\n tcp dport 53 drop\n }\n}\n",
    );
    let o = lab.cmd(&["check", "--name", &lab.name, "--proto", "dns"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{text}");
    assert!(
        text.contains("x:n")
            && text
                .contains("h1/c1 -> h2/c1 dns: c1.h2.muslin.internal at 169.254.53.1: no answer"),
        "{text}"
    );
    let m = lab.json(&["check", "--name", &lab.name, "--json", "--proto", "tcp,dns"]);
    let failed = dns_failures(&m);
    assert_eq!(
        failed.len(),
        10,
        "h1's two containers, 5 peers each: {failed:?}"
    );
    assert!(failed.iter().all(|f| f.starts_with("h1/")), "{failed:?}");
    assert!(
        common::lab::failures(&m).iter().all(|f| !f.contains("tcp")),
        "only names are broken"
    );
    nft("delete table inet dnslabtest\n");
    let m = lab.json(&["check", "--name", &lab.name, "--json", "--proto", "dns"]);
    assert!(dns_failures(&m).is_empty(), "{m}");

    // resolv.conf goes with its container, and all of them with the lab.
    let all = etc_netns(&lab);
    assert_eq!(all.len(), 6, "{all:?}");
    lab.ok(&["rm", "--name", &lab.name, "h2", "c1"]);
    assert!(!std::path::Path::new(&format!("/etc/netns/{}-h2-c1", lab.name)).exists());
    assert_eq!(etc_netns(&lab).len(), 5);
    lab.ok(&["down", "--name", &lab.name]);
    assert!(etc_netns(&lab).is_empty(), "left: {:?}", etc_netns(&lab));

    // A crashed lab's leftovers go with `down` even without its record;
    // an entry that is not the lab's stays.
    let ours = format!("/etc/netns/{}-h1-c9", lab.name);
    let theirs = format!("/etc/netns/{}-h1-x9", lab.name);
    for (d, text) in [
        (&ours, format!("# muslin lab {}: h1/c9, from its CNI result; removed with the container\nnameserver 169.254.53.1\n", lab.name)),
        (&theirs, "nameserver 192.0.2.53\n".to_string()),
    ] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(format!("{d}/resolv.conf"), text).unwrap();
    }
    lab.ok(&["down", "--name", &lab.name]);
    assert!(
        !std::path::Path::new(&ours).exists(),
        "the lab's leftover goes"
    );
    assert!(
        std::path::Path::new(&theirs).join("resolv.conf").exists(),
        "another's stays"
    );
    std::fs::remove_dir_all(&theirs).unwrap();
}

#[test]
fn containers_sharing_an_alias_are_both_found_by_it() {
    let lab = Lab::new();
    let (_d, path) = file(
        r#"
[[segment]]
name = "lan"
cidr = "192.168.41.0/24"
[[host]]
name = "h1"
containers = [{ name = "a", aliases = ["web"] }, { name = "c" }]
[[host.nic]]
segment = "lan"
default-route = true
[[host]]
name = "h2"
containers = [{ name = "b", namespace = "shop", aliases = ["web", "api-v1"] }]
[[host.nic]]
segment = "lan"
default-route = true
"#,
    );
    let r = lab.up(&["-f", &path, "--converge-timeout", "60"]);
    assert!(!r["converge_seconds"].is_null(), "{}", r["matrix"]);
    let (a, b) = (lab.container_addr("h1", "a"), lab.container_addr("h2", "b"));
    // Names spread by gossip: the check above saw the containers' own
    // names; aliases travel with them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let listed = loop {
        let o = lab.exec("h1/c", &["getent", "ahostsv4", "web.muslin.internal"]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let found = |x: &str| out.lines().any(|l| l.split_whitespace().next() == Some(x));
        if (found(&a) && found(&b)) || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    for x in [&a, &b] {
        assert!(
            listed
                .lines()
                .any(|l| l.split_whitespace().next() == Some(x.as_str())),
            "web.muslin.internal lists {x}: {listed}"
        );
    }
    // Another alias, and the container's own name in its namespace.
    let o = lab.exec("h1/c", &["getent", "hosts", "api-v1.muslin.internal"]);
    assert!(String::from_utf8_lossy(&o.stdout).starts_with(&format!("{b} ")));
    let o = lab.exec("h1/c", &["getent", "hosts", "b.shop"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with(&format!("{b} ")),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // An invalid alias is refused before anything is made, naming the field.
    let (_d2, bad) = file(
        &std::fs::read_to_string(&path)
            .unwrap()
            .replace("\"api-v1\"", "\"api.v1\""),
    );
    let other = Lab::new();
    let o = other.cmd(&["up", "--name", &other.name, "-f", &bad]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("host[1].containers[0].aliases")
            && err.contains("\"api.v1\" is not a DNS name"),
        "{err}"
    );
    assert!(other.namespaces().is_empty());
}

/// Two segments joined by a router: a1 and a2 on the left (routed to each
/// other by `auto`), b1 and b2 on the right (VXLAN to the left).
const CUTS_TOPOLOGY: &str = r#"
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
name = "a"
count = 2
containers = 1
[[host.nic]]
segment = "left"
default-route = true
[[host]]
name = "b"
count = 2
containers = 0
[[host.nic]]
segment = "right"
default-route = true
"#;
const A1: &str = "192.168.10.11";
const A2: &str = "192.168.10.12";
const B1: &str = "192.168.20.11";
const B2: &str = "192.168.20.12";

/// Whether `from` (a host or HOST/CONTAINER) gets an answer from `to`
/// over each of `protos` (comma-separated).
fn reaches(lab: &Lab, from: &str, to: &str, protos: &str) -> bool {
    lab.exec(
        from,
        &[
            BIN,
            "probe",
            "check",
            to,
            "--proto",
            protos,
            "--timeout-ms",
            "1500",
        ],
    )
    .status
    .success()
}

/// The drop rules of the lab's runtime cuts, as `nft` lists them.
fn cut_rules(lab: &Lab) -> Vec<String> {
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("switch"),
            "nft",
            "list",
            "ruleset",
            "bridge",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut in_cuts = false;
    let mut rules = vec![];
    for line in text.lines() {
        if line.starts_with("table ") {
            in_cuts = line.contains("muslinlab_cuts");
        } else if in_cuts && line.contains(" drop comment ") {
            rules.push(line.trim().to_string());
        }
    }
    rules
}

#[test]
fn block_cuts_only_the_pair_across_a_router_and_unblock_restores_it() {
    let lab = Lab::new();
    let (_d, path) = file(CUTS_TOPOLOGY);
    lab.up(&["-f", &path]);
    assert!(reaches(&lab, "a1", B1, "icmp"), "before the cut");

    let out = lab.ok(&["block", "--name", &lab.name, "a1", "b1"]);
    assert!(
        out.contains("blocked: a1 <-> b1, all traffic") && out.contains(A1) && out.contains(B1),
        "says what it blocked: {out}"
    );
    assert!(!reaches(&lab, "a1", B1, "icmp"), "a1 -> b1 is cut");
    assert!(!reaches(&lab, "b1", A1, "icmp"), "b1 -> a1 is cut");
    assert!(reaches(&lab, "a1", B2, "icmp"), "a1 still reaches b2");
    assert!(reaches(&lab, "a2", B1, "icmp"), "a2 still reaches b1");
    assert!(reaches(&lab, "b1", A2, "tcp,udp,icmp"));
    // Across the router the cut is by address: one rule per direction.
    assert_eq!(cut_rules(&lab).len(), 2, "{:?}", cut_rules(&lab));

    // Twice is once, in either order.
    let out = lab.ok(&["block", "--name", &lab.name, "b1", "a1"]);
    assert!(out.contains("already blocked"), "{out}");
    assert_eq!(cut_rules(&lab).len(), 2, "{:?}", cut_rules(&lab));
    let st = lab.status();
    assert_eq!(st["cuts"], serde_json::json!([{"a": "a1", "b": "b1"}]));

    // Unknown hosts are named; nothing changes.
    let o = lab.cmd(&["block", "--name", &lab.name, "a1", "h9"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no host \"h9\"") && err.contains("a1, a2"),
        "{err}"
    );
    let o = lab.cmd(&["unblock", "--name", &lab.name, "zz", "a1"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("\"zz\""));
    assert_eq!(cut_rules(&lab).len(), 2);

    // Unblocking another cut (a UDP port of the same pair) leaves this one.
    let out = lab.ok(&[
        "unblock",
        "--name",
        &lab.name,
        "a1",
        "b1",
        "--udp-port",
        "4789",
    ]);
    assert!(out.contains("was not blocked"), "{out}");
    assert!(!reaches(&lab, "a1", B1, "icmp"));

    let out = lab.ok(&["unblock", "--name", &lab.name, "a1", "b1"]);
    assert!(out.contains("unblocked: a1 <-> b1"), "{out}");
    assert!(reaches(&lab, "a1", B1, "tcp,udp,icmp"), "restored");
    assert!(reaches(&lab, "b1", A1, "tcp,udp,icmp"), "restored");
    assert!(cut_rules(&lab).is_empty(), "{:?}", cut_rules(&lab));
    assert!(lab.status().get("cuts").is_none());
    // Unblocking what is not blocked succeeds.
    let out = lab.ok(&["unblock", "--name", &lab.name, "b1", "a1"]);
    assert!(out.contains("was not blocked"), "{out}");
}

#[test]
fn a_udp_port_cut_drops_only_that_port_even_between_routed_pods() {
    let lab = Lab::new();
    let (_d, path) = file(CUTS_TOPOLOGY);
    let r = lab.up(&["-f", &path, "--converge-timeout", "30"]);
    assert!(!r["converge_seconds"].is_null(), "{}", r["matrix"]);
    let pod_a2 = lab.container_addr("a2", "c1");
    let udp_cut = |verb| [verb, "--name", &lab.name, "a1", "a2", "--udp-port", "7777"];

    // UDP to the probe port only, on the segment a1 and a2 share.
    lab.ok(&udp_cut("block"));
    assert!(!reaches(&lab, "a1", A2, "udp"), "UDP 7777 a1 -> a2 dropped");
    assert!(!reaches(&lab, "a2", A1, "udp"), "UDP 7777 a2 -> a1 dropped");
    assert!(reaches(&lab, "a1", A2, "icmp,tcp"), "the rest passes");
    assert!(reaches(&lab, "b1", A2, "udp"), "other pairs keep UDP 7777");
    // Pods routed between them cross the same wire with their own
    // addresses; the switch port gives them away. (The agents' data-path
    // probes use the gossip port, so nothing reroutes around this cut.)
    assert!(!reaches(&lab, "a1/c1", &pod_a2, "udp"));
    assert!(reaches(&lab, "a1/c1", &pod_a2, "icmp,tcp"));

    // The whole pair besides: a second cut. (Hosts' own traffic is checked:
    // the agents may relay the pods' around it.)
    lab.ok(&["block", "--name", &lab.name, "a1", "a2"]);
    assert!(!reaches(&lab, "a1", A2, "icmp,tcp"));
    assert_eq!(
        lab.status()["cuts"],
        serde_json::json!([{"a": "a1", "b": "a2"}, {"a": "a1", "b": "a2", "udp_port": 7777}])
    );

    // Each unblock removes exactly its own cut.
    lab.ok(&["unblock", "--name", &lab.name, "a1", "a2"]);
    assert!(reaches(&lab, "a1", A2, "icmp,tcp"));
    assert!(!reaches(&lab, "a1", A2, "udp"), "the port cut stays");
    lab.ok(&udp_cut("unblock"));
    assert!(reaches(&lab, "a1", A2, "tcp,udp,icmp"));
    assert!(reaches(&lab, "a1/c1", &pod_a2, "tcp,udp,icmp"));
    assert!(cut_rules(&lab).is_empty(), "{:?}", cut_rules(&lab));
}

#[test]
fn kill_makes_a_host_unreachable_and_its_agent_gone() {
    let lab = Lab::new();
    let (_d, path) = file(CUTS_TOPOLOGY);
    lab.up(&["-f", &path]);
    let (agent, _) = lab.agent_process("b2");
    assert!(reaches(&lab, "a1", B2, "icmp"));

    let out = lab.ok(&["kill", "--name", &lab.name, "b2"]);
    assert!(
        out.contains("b2 is dead") && out.contains(&format!("killed {agent}:")),
        "{out}"
    );
    let alive = std::fs::read_to_string(format!("/proc/{agent}/stat"))
        .map(|s| !s.contains(") Z"))
        .unwrap_or(false);
    assert!(!alive, "the agent {agent} survived");
    let st = lab.status();
    let b2 = st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "b2")
        .unwrap();
    assert_eq!(b2["agent_up"], false);
    let o = lab.exec("b2", &["ip", "-j", "link", "show", "eth0"]);
    let link: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        !link[0]["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "UP"),
        "eth0 is down: {link}"
    );
    assert!(!reaches(&lab, "a1", B2, "icmp"), "nothing reaches b2");
    assert!(!reaches(&lab, "b1", B2, "icmp"), "not even its neighbour");
    assert!(reaches(&lab, "a1", B1, "icmp"), "the others are fine");

    // A dead host dies again without complaint; an unknown one is named.
    let out = lab.ok(&["kill", "--name", &lab.name, "b2"]);
    assert!(out.contains("no process was running"), "{out}");
    let o = lab.cmd(&["kill", "--name", &lab.name, "b9"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no host \"b9\""));
    // And down still removes everything.
    lab.ok(&["down", "--name", &lab.name]);
    assert!(lab.namespaces().is_empty(), "{:?}", lab.namespaces());
}
