//! A stopping agent (SIGTERM, as a service manager stops it) finishes the
//! requests it accepted and refuses the rest: every ADD either completes
//! and is recorded, or fails with a CNI error and leaves nothing behind.

mod common;

use std::time::{Duration, Instant};

use common::{Host, Netns};

#[test]
fn sigterm_during_32_concurrent_adds_leaves_nothing_half_made() {
    let mut h = Host::new(&["10.77.0.0/24"]);
    let containers: Vec<Netns> = (0..32).map(|i| Netns::new(&format!("t{i}"))).collect();
    let pid = h.agent.as_ref().unwrap().id().to_string();
    let results: Vec<(String, serde_json::Value, i32)> = std::thread::scope(|s| {
        let hr = &h;
        let handles: Vec<_> = containers
            .iter()
            .enumerate()
            .map(|(i, c)| {
                s.spawn(move || {
                    let id = format!("term{i}");
                    let (v, code) = hr.cni(
                        "muslin",
                        "ADD",
                        &id,
                        Some(&c.path()),
                        "eth0",
                        &hr.conf("1.1.0"),
                    );
                    (id, v, code)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(40));
        common::must(&["kill", "-TERM", &pid]);
        handles.into_iter().map(|t| t.join().unwrap()).collect()
    });
    // The agent stops on its own, within its drain bound.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = h.agent.as_mut().unwrap().try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not stop: {}",
            h.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit {status}: {}", h.log());
    h.agent = None;

    let mut done = Vec::new();
    for (id, v, code) in &results {
        if *code == 0 {
            done.push(id.clone());
        } else {
            assert!(
                v["code"].as_u64().is_some() && v["msg"].as_str().is_some(),
                "{id} failed without a CNI error: {v}"
            );
        }
    }
    let failed = results.len() - done.len();
    eprintln!("{} completed, {failed} refused", done.len());

    h.start_agent();
    let st = h.status();
    let mut recorded: Vec<String> = st["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"]["container_id"].as_str().unwrap().to_string())
        .collect();
    recorded.sort();
    done.sort();
    assert_eq!(
        recorded, done,
        "recorded attachments are exactly the completed ADDs"
    );
    let veths: Vec<String> = h
        .our_links()
        .into_iter()
        .filter(|l| l.len() == 15)
        .collect();
    assert_eq!(
        veths.len(),
        done.len(),
        "one veth per completed ADD: {veths:?}"
    );
    for (i, c) in containers.iter().enumerate() {
        let has = c.links().iter().any(|l| l == "eth0");
        assert_eq!(
            has,
            done.contains(&format!("term{i}")),
            "container term{i}: eth0 present = {has}"
        );
    }
}
