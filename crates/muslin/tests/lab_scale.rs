//! The lab at scale, through the real binary: the kernel's neighbour
//! limits a big lab raises and `down` restores (kernel-wide values shared
//! with every test running beside: only ever raised here, and judged
//! against the machine-wide record read under its lock), the sampled
//! matrix of a lab of more than 20 hosts, and the causes `lab check`
//! names when a path is broken.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::lab::{file, one_segment, Lab};
use muslin_lab::neigh::{self, Machine, FAMILIES};
use muslin_lab::neigh_sys;
use serde_json::Value;

/// The lab's key in the machine-wide record: its registry directory.
fn key(lab: &Lab) -> String {
    lab.root.0.join(&lab.name).display().to_string()
}

/// Every limit is at least what the labs in the record need together and
/// at least the machine's own value.
fn holds_the_record(rec: &neigh::Record, now: &Machine) {
    for f in FAMILIES {
        let total = rec.labs.values().map(|n| n.of(f)).sum();
        let want = neigh::limits_for(total);
        let limits = now.get(f).iter().zip(&want).zip(rec.original.get(f));
        for (i, ((now, want), own)) in limits.enumerate() {
            assert!(
                now >= want && now >= own,
                "{f:?} gc_thresh{}: {now} holds neither {want} for {total} entries nor the machine's {own}",
                i + 1,
            );
        }
    }
}

/// (from, to) of each pair a matrix checked.
fn pairs(m: &Value) -> BTreeSet<(String, String)> {
    m["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["from"].as_str().unwrap().to_string(),
                p["to"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_big_lab_raises_the_neighbour_limits_checks_a_sample_and_down_restores_the_limits() {
    let lab = Lab::new();
    // 22 hosts on one segment resolve each other: about 570 entries, more
    // than the soft limit the kernel has by default (512).
    let (_d, topo) = file(&one_segment(22, 1, ""));
    let r = lab.up(&["-f", &topo, "--converge-timeout", "120"]);
    let need = r["neighbour"]["need"]["ipv4"].as_u64().unwrap();
    assert!(need > 22 * 21, "{}", r["neighbour"]);
    assert!(r["neighbour"]["problem"].is_null(), "{}", r["neighbour"]);

    let (rec, now) = neigh_sys::snapshot().unwrap();
    let rec = rec.expect("a record while the lab is up");
    assert_eq!(rec.labs[&key(&lab)].ipv4, need, "{rec:?}");
    holds_the_record(&rec, &now);
    // What `up` raised it said, old -> new: only ever up.
    for c in r["neighbour"]["changes"].as_array().unwrap() {
        assert!(c["new"].as_u64() > c["old"].as_u64(), "{c}");
    }

    // More than 20 hosts: `up` waited for a sample of the matrix (here all
    // 946 pairs fit in it).
    let m = &r["matrix"];
    assert!(r["converge_seconds"].is_number(), "{}", m["pairs"]);
    let s = &m["sampling"];
    assert_eq!(s["of"], 22 * (21 + 22), "{s}");
    assert_eq!(s["checked"], s["of"]);

    // A smaller sample: every container a source and every container and
    // host a destination at least twice; the same seed, the same pairs.
    let check = |args: &[&str]| -> Value {
        let mut a = vec![
            "check",
            "--name",
            &lab.name,
            "--json",
            "--proto",
            "tcp",
            "--timeout-ms",
            "1500",
        ];
        a.extend_from_slice(args);
        lab.json(&a)
    };
    let a = check(&["--sample", "300", "--seed", "3"]);
    assert_eq!(a["sampling"]["checked"], 300, "{}", a["sampling"]);
    assert_eq!(a["sampling"]["seed"], 3);
    let picked = pairs(&a);
    assert_eq!(picked.len(), 300);
    let mut from: BTreeMap<&str, usize> = BTreeMap::new();
    let mut to: BTreeMap<&str, usize> = BTreeMap::new();
    for (f, t) in &picked {
        *from.entry(f).or_default() += 1;
        *to.entry(t).or_default() += 1;
    }
    assert_eq!(from.len(), 22, "every container as a source");
    assert_eq!(to.len(), 44, "every container and host as a destination");
    assert!(from.values().chain(to.values()).all(|n| *n >= 2));
    assert!(
        a["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["failed"].as_array().unwrap().is_empty()),
        "{}",
        a["pairs"]
    );
    assert_eq!(pairs(&check(&["--sample", "300", "--seed", "3"])), picked);
    assert_ne!(pairs(&check(&["--sample", "300", "--seed", "4"])), picked);
    let full = check(&["--full"]);
    assert!(full["sampling"].is_null());
    assert_eq!(pairs(&full).len(), 22 * 43);

    // Down: the lab's need is gone, and the limits hold what the labs
    // still up need; with none left, exactly the machine's own values.
    let original = rec.original;
    lab.ok(&["down", "--name", &lab.name]);
    let (rec, now) = neigh_sys::snapshot().unwrap();
    match rec {
        None => assert_eq!(now, original),
        Some(rec) => {
            assert!(!rec.labs.contains_key(&key(&lab)), "{rec:?}");
            assert_eq!(rec.original, original);
            holds_the_record(&rec, &now);
        }
    }
}

#[test]
fn a_lab_killed_while_coming_up_keeps_its_need_until_its_down() {
    let lab = Lab::new();
    let (_d, topo) = file(&one_segment(4, 0, ""));
    let mut up = std::process::Command::new(common::BIN)
        .env("MUSLIN_LAB_ROOT", &lab.root.0)
        .args([
            "lab",
            "up",
            "--name",
            &lab.name,
            "-f",
            &topo,
            "--converge-timeout",
            "0",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed as soon as its need is recorded: the agents may be starting.
    let deadline = Instant::now() + Duration::from_secs(30);
    let original = loop {
        if let (Some(rec), now) = neigh_sys::snapshot().unwrap() {
            if rec.labs.contains_key(&key(&lab)) {
                holds_the_record(&rec, &now);
                break rec.original;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the lab's need was never recorded"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    up.kill().unwrap();
    up.wait().unwrap();
    // Another lab's commands keep it: it is still up (its record is).
    let (rec, _) = neigh_sys::snapshot().unwrap();
    assert!(rec.unwrap().labs.contains_key(&key(&lab)));

    lab.ok(&["down", "--name", &lab.name]);
    assert!(lab.namespaces().is_empty(), "{:?}", lab.namespaces());
    let (rec, now) = neigh_sys::snapshot().unwrap();
    match rec {
        None => assert_eq!(now, original),
        Some(rec) => {
            assert!(!rec.labs.contains_key(&key(&lab)), "{rec:?}");
            holds_the_record(&rec, &now);
        }
    }
}

/// The causes named for `from -> to` in a check's JSON.
fn cause_of(m: &Value, from: &str, to: &str) -> Value {
    m["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["from"] == from && p["to"] == to)
        .unwrap_or_else(|| panic!("no pair {from} -> {to}"))["cause"]
        .clone()
}

#[test]
fn lab_check_names_the_cause_when_a_path_breaks() {
    let lab = Lab::new();
    let (_d, topo) = file(&one_segment(2, 1, ""));
    lab.up(&["-f", &topo, "--converge-timeout", "30"]);
    let c2 = lab.container_addr("h2", "c1");
    let check = || {
        lab.json(&[
            "check",
            "--name",
            &lab.name,
            "--json",
            "--proto",
            "tcp,icmp",
            "--timeout-ms",
            "800",
        ])
    };
    let text = || {
        String::from_utf8_lossy(
            &lab.cmd(&["check", "--name", &lab.name, "--proto", "icmp"])
                .stdout,
        )
        .into_owned()
    };

    // No route: a blackhole in h1 for h2's container, both ways (the
    // reply from h2/c1 to h1/c1 is routed by h1 too).
    let ip = |host: &str, args: &[&str]| {
        let o = lab.exec(host, args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    ip(
        "h1",
        &["ip", "route", "add", "blackhole", &format!("{c2}/32")],
    );
    let m = check();
    let c = cause_of(&m, "h1/c1", "h2/c1");
    assert_eq!(c["kind"], "no_route", "{c}");
    assert_eq!(c["at"], "h1");
    assert!(c["error"].as_str().unwrap().contains("blackhole"), "{c}");
    assert_eq!(cause_of(&m, "h2/c1", "h1/c1")["kind"], "no_route");
    assert!(cause_of(&m, "h1/c1", "h2").is_null(), "the host is reached");
    let t = text();
    assert!(t.contains("R:i") && t.contains("R: no route"), "{t}");
    assert!(t.contains("h1/c1 -> h2/c1 cause: no route in h1"), "{t}");
    ip(
        "h1",
        &["ip", "route", "del", "blackhole", &format!("{c2}/32")],
    );

    // A firewall drop: the lab's own cut, counted on the switch.
    lab.ok(&["block", "--name", &lab.name, "h1", "h2"]);
    let m = check();
    let c = cause_of(&m, "h1/c1", "h2/c1");
    assert_eq!(c["kind"], "firewall_drop", "{c}");
    assert_eq!(c["at"], "switch");
    assert_eq!(c["table"], "muslinlab_cuts");
    assert!(c["rule"].as_str().unwrap().contains("cut h1 h2"), "{c}");
    assert!(text().contains("F:i"));
    lab.ok(&["unblock", "--name", &lab.name, "h1", "h2"]);

    // No neighbour: h2 neither answers nor asks ARP, and h1 forgets it.
    let arp_off = "table arp lab_test_quiet {\n chain in { type filter hook input priority 0; policy drop; }\n chain out { type filter hook output priority 0; policy drop; }\n}\n";
    let nft = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.ns("h2"), "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(arp_off.as_bytes())?;
            c.wait()
        })
        .unwrap();
    assert!(nft.success());
    let h2 = "192.168.40.12";
    ip("h1", &["ip", "neigh", "flush", "to", h2]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let c = loop {
        let c = cause_of(&check(), "h1/c1", "h2/c1");
        if c["kind"] == "no_neighbour" || Instant::now() > deadline {
            break c;
        }
    };
    assert_eq!(c["kind"], "no_neighbour", "{c}");
    assert_eq!(c["at"], "h1");
    assert_eq!(c["next_hop"], h2);
    assert!(
        ["FAILED", "INCOMPLETE"].contains(&c["state"].as_str().unwrap()),
        "{c}"
    );
    ip("h2", &["nft", "delete", "table", "arp", "lab_test_quiet"]);

    // Healed: nothing fails, and no cause is looked for.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = check();
        if m["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["failed"].as_array().unwrap().is_empty())
        {
            assert!(m["looked_into"].is_null(), "{m}");
            break;
        }
        assert!(Instant::now() < deadline, "still failing: {}", m["pairs"]);
        std::thread::sleep(Duration::from_millis(500));
    }
}
