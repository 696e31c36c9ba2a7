//! `muslin gc`: an operator's way to reclaim attachments a runtime left
//! behind without DEL (containerd's `ctr task kill` + `ctr containers rm`
//! removes the namespace and never calls the plugin). A dry run by default.

mod common;

use common::*;
use serde_json::Value;

/// Runs `muslin gc --json` with `args` against the host's agent.
fn gc_json(host: &Host, args: &[&str]) -> Value {
    let mut full = vec![
        BIN,
        "gc",
        "--json",
        "--socket",
        host.socket.to_str().unwrap(),
    ];
    full.extend_from_slice(args);
    let out = must(&full);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn stale_ids(v: &Value) -> Vec<String> {
    v["stale"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"]["container_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn gc_lists_then_releases_exactly_the_attachment_whose_namespace_is_gone() {
    // A /30 holds two addresses: a third ADD fits only once one is released.
    let host = Host::new(&["10.86.0.0/30"]);
    let gone = Netns::new("gcgone");
    let kept = Netns::new("gckept");
    let gone_ip = result_ip(&host.add("gone", &gone));
    let kept_ip = result_ip(&host.add("kept", &kept));
    drop(gone); // `ip netns del`, and no DEL
                // The kernel dismantles the namespace, and its veth pair, shortly after.
    common::eventually(
        "the gone container's veth is removed with its namespace",
        || host.our_links().len() == 1,
    );

    // The default is a dry run: listed, nothing released.
    let v = gc_json(&host, &[]);
    assert_eq!(v["applied"], false, "{v}");
    assert_eq!(stale_ids(&v), vec!["gone"], "{v}");
    let s = &v["stale"][0];
    assert_eq!(s["addresses"][0], format!("{gone_ip}/32"));
    assert_eq!(s["released"], false);
    assert!(
        s["why"].as_str().unwrap().contains("no longer exists"),
        "{s}"
    );
    let text = must(&[
        BIN,
        "gc",
        "--dry-run",
        "--socket",
        host.socket.to_str().unwrap(),
    ]);
    assert!(
        text.contains("would release") && text.contains(&gone_ip) && !text.contains(&kept_ip),
        "{text}"
    );
    assert_eq!(host.allocations().len(), 2, "a dry run releases nothing");
    let third = Netns::new("gcthird");
    let (v, code) = host.cni(
        "muslin",
        "ADD",
        "third",
        Some(&third.path()),
        "eth0",
        &host.conf("1.1.0"),
    );
    assert_eq!(
        (code, v["code"].as_u64()),
        (1, Some(101)),
        "still full: {v}"
    );

    // --apply releases it: address, host route and veth.
    let v = gc_json(&host, &["--apply"]);
    assert_eq!(v["applied"], true);
    assert_eq!(stale_ids(&v), vec!["gone"], "{v}");
    assert_eq!(v["stale"][0]["released"], true, "{v}");
    assert_eq!(host.allocations(), vec![kept_ip.clone()]);
    assert_eq!(
        host.ns.our_routes().len(),
        1,
        "only the kept container's route"
    );
    eventually("only the kept container's veth is left", || {
        host.our_links().len() == 1
    });
    assert!(
        stale_ids(&gc_json(&host, &[])).is_empty(),
        "nothing left to do"
    );

    // The healthy one is untouched and reachable.
    host.ns.probe(&kept_ip, "icmp").expect("host -> kept");
    let r = host.add("third", &third);
    assert_eq!(
        result_ip(&r),
        gone_ip,
        "the released address is handed out again"
    );
    host.ns.probe(&gone_ip, "icmp").expect("host -> third");
    host.ns
        .probe(&kept_ip, "icmp")
        .expect("host -> kept, still");
}

#[test]
fn gc_finds_an_attachment_whose_host_veth_is_gone_and_conflicting_flags_are_refused() {
    let host = Host::new(&["10.87.0.0/24"]);
    let c = Netns::new("gcveth");
    let r = host.add("vethless", &c);
    let veth = r["interfaces"][0]["name"].as_str().unwrap().to_string();
    // Deleting one end of a veth pair deletes both, as a dying namespace does.
    host.ns.ip(&["link", "del", &veth]);

    let v = gc_json(&host, &["--dry-run"]);
    assert_eq!(stale_ids(&v), vec!["vethless"], "{v}");
    let why = v["stale"][0]["why"].as_str().unwrap();
    assert!(why.contains(&veth) && !why.contains("namespace"), "{why}");

    let o = sh(&[
        BIN,
        "gc",
        "--apply",
        "--dry-run",
        "--socket",
        host.socket.to_str().unwrap(),
    ]);
    assert!(!o.status.success(), "--apply with --dry-run is refused");
    assert_eq!(host.allocations().len(), 1);

    let text = must(&[
        BIN,
        "gc",
        "--apply",
        "--socket",
        host.socket.to_str().unwrap(),
    ]);
    assert!(text.contains("released"), "{text}");
    assert!(host.allocations().is_empty());
    assert!(host.ns.our_routes().is_empty());
    // The namespace is the runtime's: left alone.
    assert!(c.path().exists());
}
