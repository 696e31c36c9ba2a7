//! IPAM under concurrency, crashes, restarts and garbage collection.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn fifty_concurrent_adds_get_fifty_distinct_reachable_addresses() {
    let host = Host::new(&["10.81.0.0/24"]);
    let cs: Vec<Netns> = (0..50).map(|_| Netns::new("par")).collect();
    let results: Vec<serde_json::Value> = std::thread::scope(|s| {
        let hs: Vec<_> = cs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let host = &host;
                s.spawn(move || host.add(&format!("par{i}"), c))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ips: HashSet<String> = results.iter().map(result_ip).collect();
    assert_eq!(ips.len(), 50, "50 distinct addresses");
    assert_eq!(host.allocations().len(), 50);
    assert_eq!(host.our_links().len(), 50);
    // Every one answers, from the host and from another container.
    let list: Vec<&str> = ips.iter().map(String::as_str).collect();
    for ip in &list {
        host.ns
            .probe(ip, "icmp")
            .unwrap_or_else(|e| panic!("host -> {ip}: {e}"));
    }
    let _srv = ProbeServer::start(&cs[0], 7777);
    let first = result_ip(&results[0]);
    for c in cs.iter().skip(1).step_by(7) {
        c.probe(&first, "tcp,udp").expect("container -> container");
    }
}

#[test]
fn gc_after_a_runtime_crash_frees_exactly_the_stale_attachments() {
    let host = Host::new(&["10.82.0.0/24"]);
    let cs: Vec<Netns> = (0..6).map(|_| Netns::new("gc")).collect();
    let ids: Vec<String> = (0..6).map(|i| format!("gc{i}")).collect();
    let mut ip_of = std::collections::HashMap::new();
    for (id, c) in ids.iter().zip(&cs) {
        ip_of.insert(id.clone(), result_ip(&host.add(id, c)));
    }
    // Another network's attachment must survive this network's GC.
    let other = Netns::new("gco");
    let mut oconf = host.conf("1.1.0");
    oconf["name"] = json!("othernet");
    let (r, code) = host.cni(
        "muslin",
        "ADD",
        "other0",
        Some(&other.path()),
        "eth0",
        &oconf,
    );
    assert_eq!(code, 0, "{r}");

    // The runtime crashed and forgot gc0, gc2, gc4 without DEL; it still
    // holds the others.
    let valid: Vec<_> = ["gc1", "gc3", "gc5"]
        .iter()
        .map(|id| json!({"containerID": id, "ifname": "eth0"}))
        .collect();
    let mut conf = host.conf("1.1.0");
    conf["cni.dev/valid-attachments"] = json!(valid);
    let (v, code) = host.cni("muslin", "GC", "", None, "", &conf);
    assert_eq!(code, 0, "{v}");

    let left: HashSet<String> = host.allocations().into_iter().collect();
    let expect: HashSet<String> = ["gc1", "gc3", "gc5"]
        .iter()
        .map(|i| ip_of[*i].clone())
        .chain([result_ip(&r)])
        .collect();
    assert_eq!(left, expect, "exactly the stale ones were freed");
    assert_eq!(host.our_links().len(), 4);
    assert_eq!(host.ns.our_routes().len(), 4);
    for gone in ["gc0", "gc2", "gc4"] {
        let i: usize = gone[2..].parse().unwrap();
        assert_eq!(cs[i].links(), vec!["lo"], "{gone}'s interface removed");
    }
    // Survivors still work.
    host.ns.probe(&ip_of["gc3"], "icmp").unwrap();
}

#[test]
fn agent_killed_mid_add_leaves_no_duplicate_and_no_unreclaimable_leak() {
    let mut host = Host::new(&["10.83.0.0/24"]);
    // The kill must land while ADDs are in flight; on a fast machine it may
    // land after all of them, so try again with fresh containers.
    let mut attempt = 0;
    let (cs, outcomes, prefix) = loop {
        let prefix = format!("crash{attempt}x");
        let cs: Vec<Netns> = (0..32).map(|_| Netns::new("crash")).collect();
        let done = AtomicUsize::new(0);
        let outcomes: Vec<(String, i32)> = std::thread::scope(|s| {
            let hs: Vec<_> = cs
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let (host, done, prefix) = (&host, &done, &prefix);
                    s.spawn(move || {
                        let (v, code) = host.cni(
                            "muslin",
                            "ADD",
                            &format!("{prefix}{i}"),
                            Some(&c.path()),
                            "eth0",
                            &host.conf("1.1.0"),
                        );
                        done.fetch_add(1, Ordering::SeqCst);
                        if code == 0 {
                            (result_ip(&v), 0)
                        } else {
                            (v["code"].to_string(), code)
                        }
                    })
                })
                .collect();
            // Kill as soon as one ADD finished: others are between
            // allocation and plumbing.
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while done.load(Ordering::SeqCst) < 1 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(200));
            }
            let pid = host.agent.as_ref().unwrap().id();
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        host.kill_agent();
        host.start_agent();
        let failed = outcomes.iter().filter(|o| o.1 != 0).count();
        eprintln!(
            "attempt {attempt}: {} of {} ADDs succeeded before the kill",
            outcomes.len() - failed,
            outcomes.len()
        );
        attempt += 1;
        if failed > 0 || attempt == 4 {
            break (cs, outcomes, prefix);
        }
        // A clean slate for the next attempt.
        for (i, c) in cs.iter().enumerate() {
            host.del(&format!("{prefix}{i}"), Some(c));
        }
        eventually("the attempt's veths are gone", || {
            host.our_links().is_empty()
        });
    };
    let succeeded: Vec<usize> = (0..cs.len()).filter(|i| outcomes[*i].1 == 0).collect();
    assert!(
        succeeded.len() < cs.len(),
        "the kill landed after every ADD in {attempt} attempts; the test proved nothing"
    );
    // No address was given twice, and every success is still recorded.
    let ok_ips: Vec<&String> = succeeded.iter().map(|i| &outcomes[*i].0).collect();
    let uniq: HashSet<_> = ok_ips.iter().collect();
    assert_eq!(
        uniq.len(),
        ok_ips.len(),
        "duplicate address handed out: {ok_ips:?}"
    );
    let recorded: HashSet<String> = host.allocations().into_iter().collect();
    for ip in &ok_ips {
        assert!(recorded.contains(*ip), "{ip} succeeded but was lost");
    }
    // The runtime GCs with the attachments it believes in: whatever the
    // crash left half-made is reclaimed, nothing else.
    let valid: Vec<_> = succeeded
        .iter()
        .map(|i| json!({"containerID": format!("{prefix}{i}"), "ifname": "eth0"}))
        .collect();
    let mut conf = host.conf("1.1.0");
    conf["cni.dev/valid-attachments"] = json!(valid);
    let (v, code) = host.cni("muslin", "GC", "", None, "", &conf);
    assert_eq!(code, 0, "{v}");
    let after: HashSet<String> = host.allocations().into_iter().collect();
    let want: HashSet<String> = ok_ips.iter().map(|s| s.to_string()).collect();
    assert_eq!(after, want);
    assert_eq!(host.our_links().len(), succeeded.len(), "no orphaned veth");
    // A failed attachment retried after the restart works.
    for i in (0..cs.len()).filter(|i| outcomes[*i].1 != 0).take(3) {
        let r = host.add(&format!("{prefix}{i}"), &cs[i]);
        assert!(!want.contains(&result_ip(&r)));
    }
}

#[test]
fn restart_keeps_addresses_and_traffic_and_repairs_drift() {
    let dir = TempDir::new("conf");
    let conf_file = dir.0.join("agent.toml");
    std::fs::write(&conf_file, "reconcile-interval = 1\n").unwrap();
    let mut host = Host::with_args(
        &["10.84.0.0/24"],
        &["--config", conf_file.to_str().unwrap()],
    );
    let c1 = Netns::new("rs1");
    let c2 = Netns::new("rs2");
    let ip1 = result_ip(&host.add("rs1", &c1));
    let ip2 = result_ip(&host.add("rs2", &c2));
    let _srv = ProbeServer::start(&c2, 7777);

    host.kill_agent();
    // The data plane does not depend on the agent.
    c1.probe(&ip2, "tcp,udp,icmp")
        .expect("traffic flows while the agent is down");
    host.start_agent();
    let recorded: HashSet<String> = host.allocations().into_iter().collect();
    assert_eq!(recorded, HashSet::from([ip1.clone(), ip2.clone()]));
    let c3 = Netns::new("rs3");
    let ip3 = result_ip(&host.add("rs3", &c3));
    assert!(ip3 != ip1 && ip3 != ip2, "no address reused after restart");

    // Someone deletes a host route: the agent puts it back.
    host.ns.ip(&["route", "del", &format!("{ip2}/32")]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !host
        .ns
        .our_routes()
        .iter()
        .any(|r| r["dst"] == ip2.as_str())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "route to {ip2} not restored"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    c1.probe(&ip2, "tcp").expect("traffic after repair");

    // A veth of ours that no record names (a crash between DEL's release
    // and the veth's removal) is swept; look-alikes that are not ours stay.
    host.ns.ip(&[
        "link",
        "add",
        "msl0123456789ab",
        "type",
        "veth",
        "peer",
        "name",
        "mslpeer",
    ]);
    host.ns.ip(&[
        "link",
        "add",
        "mslnothexnames",
        "type",
        "veth",
        "peer",
        "name",
        "other1",
    ]);
    eventually("the orphaned veth is removed", || {
        !host.ns.links().iter().any(|l| l == "msl0123456789ab")
    });
    assert!(
        host.ns.links().iter().any(|l| l == "mslnothexnames"),
        "not ours: untouched"
    );
    assert_eq!(host.our_links().len(), 4, "3 attachments + the look-alike");
}

#[test]
fn plugin_killed_mid_add_then_retried_leaks_and_duplicates_nothing() {
    let host = Host::new(&["10.85.0.0/24"]);
    let cs: Vec<Netns> = (0..10).map(|_| Netns::new("pk")).collect();
    // Start every ADD and SIGKILL each plugin process right away, as a
    // runtime that crashed (or timed out) would leave them.
    for (i, c) in cs.iter().enumerate() {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &host.ns.name, BIN]).env_clear();
        for (k, v) in cni_env("ADD", &format!("pk{i}"), Some(&c.path()), "eth0") {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        let _ = child
            .stdin
            .take()
            .unwrap()
            .write_all(host.conf("1.1.0").to_string().as_bytes());
        if i % 2 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    // The runtime retries every ADD: each succeeds, and the node ends with
    // exactly one distinct address per attachment.
    let ips: HashSet<String> = cs
        .iter()
        .enumerate()
        .map(|(i, c)| result_ip(&host.add(&format!("pk{i}"), c)))
        .collect();
    assert_eq!(ips.len(), 10);
    let recorded: HashSet<String> = host.allocations().into_iter().collect();
    assert_eq!(recorded, ips, "no leak, no duplicate");
    assert_eq!(host.our_links().len(), 10);
    for ip in &ips {
        host.ns.probe(ip, "icmp").unwrap();
    }
}
