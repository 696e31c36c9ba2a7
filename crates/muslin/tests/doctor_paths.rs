//! `muslin doctor` on the paths between hosts: a VXLAN port blocked by a
//! host's firewall (pitfall 13), the VXLAN checksum-offload state (pitfall
//! 4), and a link with a smaller MTU between two hosts behind routers that
//! swallow "fragmentation needed" (pitfall 3). Each pitfall is named with
//! exit code 1, and the same hosts without it are ok.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use common::hosts::{doctor, findings, level, nft, pod_per_host, until, Agent, Net};
use common::Netns;
use serde_json::Value;

fn saw(report: &Value, check: &str) -> String {
    findings(report, check)
        .iter()
        .map(|f| format!("{}: {}", f["level"], f["saw"]))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_vxlan_port_blocked_by_a_host_firewall_is_named_with_its_peer() {
    let net = Net::new();
    let h = [Netns::new("dv1"), Netns::new("dv2")];
    net.as_readme_hosts(&h);
    let secret = net.secret();
    let a1 = Agent::start(&h[0], "h1", &secret, &["--backend", "vxlan"]);
    let a2 = Agent::start(
        &h[1],
        "h2",
        &secret,
        &["--join", "192.168.56.11", "--backend", "vxlan"],
    );
    until("h1's VXLAN data path to h2 answers", 45, || {
        a1.peer("h2")["data_path"] == "ok"
    });
    assert_eq!(a1.peer("h2")["path"], "vxlan");
    let (_, r) = a1.doctor();
    assert_eq!(level(&r, "vxlan-port"), "ok", "{r:#}");
    assert!(saw(&r, "vxlan-port").contains("h2"), "{r:#}");
    // This kernel is past 5.7: not affected, and the device's state shown.
    let csum = saw(&r, "vxlan-checksum");
    assert_eq!(level(&r, "vxlan-checksum"), "ok", "{r:#}");
    assert!(csum.contains("not affected"), "{csum}");
    assert!(csum.contains("msl-vxlan: tx checksum offload o"), "{csum}");

    nft(
        &h[1],
        "table inet blockvx {\n chain in {\n  type filter hook input priority -10;\n  udp dport 4789 drop\n }\n}\n",
    );
    for (a, peer) in [(&a1, "h2"), (&a2, "h1")] {
        until(
            &format!("{} finds VXLAN to {peer} failing", a.name),
            20,
            || {
                a.peer(peer)["data_path"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("failing: UDP 4789"))
            },
        );
        let (code, r) = a.doctor();
        assert_eq!(level(&r, "vxlan-port"), "problem", "{r:#}");
        let s = saw(&r, "vxlan-port");
        assert!(s.contains(&format!("UDP 4789 to peer {peer}")), "{s}");
        assert_eq!(code, 1, "{r:#}");
    }
    h[1].exec(&["nft", "delete", "table", "inet", "blockvx"]);
}

/// Two hosts, each behind its own router, the routers joined by a link of
/// MTU `link_mtu`; the routers send no "fragmentation needed" (a PMTU
/// black hole). Different subnets: the path is VXLAN (backend auto).
struct Racks {
    hosts: Vec<Netns>,
    agents: Vec<Agent>,
    _pods: Vec<(Netns, String, common::ProbeServer)>,
    _routers: Vec<Netns>,
    net: Net,
}

fn racks(link_mtu: u32) -> Racks {
    let net = Net::new();
    let hosts: Vec<Netns> = (1..=2).map(|i| Netns::new(&format!("dm{i}"))).collect();
    let (sa, sl, sb) = (net.segment(1500), net.segment(link_mtu), net.segment(1500));
    let (r1, r2) = (net.router(), net.router());
    net.wire(&r1, "ra", &sa, "192.168.10.1/24", 1500);
    net.wire(&r1, "rl", &sl, "10.99.0.1/30", link_mtu);
    net.wire(&r2, "rl", &sl, "10.99.0.2/30", link_mtu);
    net.wire(&r2, "rb", &sb, "192.168.20.1/24", 1500);
    r1.ip(&["route", "add", "192.168.20.0/24", "via", "10.99.0.2"]);
    r2.ip(&["route", "add", "192.168.10.0/24", "via", "10.99.0.1"]);
    for r in [&r1, &r2] {
        nft(
            r,
            "table inet blackhole {\n chain out {\n  type filter hook output priority 0;\n  icmp type destination-unreachable drop\n }\n}\n",
        );
    }
    net.wire(&hosts[0], "eth1", &sa, "192.168.10.11/24", 1500);
    hosts[0].ip(&["route", "add", "default", "via", "192.168.10.1"]);
    net.wire(&hosts[1], "eth1", &sb, "192.168.20.12/24", 1500);
    hosts[1].ip(&["route", "add", "default", "via", "192.168.20.1"]);
    let secret = net.secret();
    let agents = vec![
        Agent::start(&hosts[0], "h1", &secret, &[]),
        Agent::start(&hosts[1], "h2", &secret, &["--join", "192.168.10.11"]),
    ];
    // A pod on each host: each holds a block, which the other routes to.
    let pods = pod_per_host(&agents);
    until("h2 measured the path to h1", 40, || {
        agents[1].peer("h1")["path_mtu"] == link_mtu
            && !agents[1].peer("h1")["blocks"]
                .as_array()
                .is_none_or(|b| b.is_empty())
    });
    Racks {
        hosts,
        agents,
        _pods: pods,
        _routers: vec![r1, r2],
        net,
    }
}

/// Serves one status request on a socket of its own with `status`, as
/// the agent last answered it: doctor then judges the host against a view
/// that no reconcile will change under it.
fn replay(dir: &std::path::Path, status: Value) -> (PathBuf, std::thread::JoinHandle<()>) {
    let path = dir.join("replay.sock");
    let l = UnixListener::bind(&path).unwrap();
    let mut reply = status;
    reply["kind"] = "status".into();
    let t = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        let mut out = serde_json::to_vec(&reply).unwrap();
        out.push(b'\n');
        (&s).write_all(&out).unwrap();
    });
    (path, t)
}

#[test]
fn a_smaller_link_between_hosts_is_a_mismatch_and_an_unpinned_route_a_problem() {
    let w = racks(1400);
    let a2 = &w.agents[1];
    until("h2 pinned the path MTU on its VXLAN routes", 20, || {
        w.hosts[1]
            .ip(&["route", "show", "proto", "77", "dev", "msl-vxlan"])
            .contains("mtu 1350")
    });
    let (_, r) = a2.doctor();
    assert_eq!(level(&r, "mtu-mismatch"), "warning", "{r:#}");
    let m = saw(&r, "mtu-mismatch");
    assert!(
        m.contains("peer h1 (192.168.10.11) carries at most 1400"),
        "{m}"
    );
    assert!(m.contains("ours 1500"), "{m}");
    assert_eq!(level(&r, "path-mtu"), "ok", "{r:#}");
    let p = saw(&r, "path-mtu");
    assert!(p.contains("1400 (1350 inside VXLAN)"), "{p}");
    assert!(p.contains("pinned:") && p.contains("mtu 1350"), "{p}");

    // The pin lost, with an agent that does not restore it: stopped, its
    // last view replayed to doctor.
    let last = a2.status();
    let mut agents = w.agents;
    let mut a2 = agents.pop().unwrap();
    if let Some(mut c) = a2.child.take() {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    let h2 = &w.hosts[1];
    let routes = h2.ip(&["-o", "route", "show", "table", "all", "proto", "77"]);
    let mut unpinned = 0;
    for line in routes.lines().filter(|l| l.contains(" mtu ")) {
        let mut args: Vec<&str> = vec!["route", "replace"];
        let mut words = line.split_whitespace().peekable();
        while let Some(w) = words.next() {
            if w == "mtu" {
                if words.peek() == Some(&"lock") {
                    words.next();
                }
                words.next();
                continue;
            }
            args.push(w);
        }
        if !args.contains(&"proto") {
            args.extend(["proto", "77"]);
        }
        h2.ip(&args);
        unpinned += 1;
    }
    assert!(unpinned > 0, "{routes}");
    let (path, server) = replay(&a2.dir.0, last);
    let (code, r) = doctor(&h2.name, &path);
    server.join().unwrap();
    assert_eq!(level(&r, "path-mtu"), "problem", "{r:#}");
    let p = saw(&r, "path-mtu");
    assert!(
        p.contains(
            "peer h1 (192.168.10.11) carries 1400 (1350 inside VXLAN), less than the pod MTU 1500"
        ),
        "{p}"
    );
    assert!(p.contains("no MTU pinned"), "{p}");
    assert_eq!(level(&r, "mtu-mismatch"), "warning", "{r:#}");
    assert_eq!(code, 1, "{r:#}");
    let _ = &w.net;
}

#[test]
fn hosts_behind_routers_without_a_smaller_link_have_no_mtu_findings() {
    let w = racks(1500);
    for a in &w.agents {
        let (_, r) = a.doctor();
        assert_eq!(level(&r, "mtu-mismatch"), "ok", "{r:#}");
        assert_eq!(level(&r, "path-mtu"), "ok", "{r:#}");
    }
    let _ = (&w.hosts, &w.net);
}
