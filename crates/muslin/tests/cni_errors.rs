//! Bad input: each case gets the spec's error code in CNI error JSON on
//! stdout, a non-zero exit, and leaves nothing behind.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Asserts the host is exactly as before: no link, route or allocation.
fn assert_untouched(host: &Host, c: &Netns) {
    assert!(
        host.our_links().is_empty(),
        "links left: {:?}",
        host.our_links()
    );
    assert!(host.ns.our_routes().is_empty(), "routes left");
    assert!(
        host.allocations().is_empty(),
        "allocations left: {:?}",
        host.allocations()
    );
    assert_eq!(c.links(), vec!["lo"], "container interfaces left");
}

/// Asserts the error's code and that its message mentions `mentions`;
/// returns the message for further checks.
fn expect_error(got: (serde_json::Value, i32), code: u64, mentions: &str) -> String {
    let (v, exit) = got;
    assert_ne!(exit, 0, "must fail: {v}");
    assert_eq!(v["code"], code, "{v}");
    assert!(
        v["cniVersion"].is_string(),
        "error JSON carries cniVersion: {v}"
    );
    let msg = v["msg"].as_str().unwrap();
    assert!(
        msg.contains(mentions),
        "message {msg:?} should mention {mentions:?}"
    );
    msg.to_string()
}

#[test]
fn malformed_input_gets_spec_codes_and_changes_nothing() {
    let host = Host::new(&["10.95.0.0/24"]);
    let c = Netns::new("bad");
    let id = unique("bad");
    let env = cni_env("ADD", &id, Some(&c.path()), "eth0");

    expect_error(
        host.cni_raw("muslin", &env, b"{\"cniVersion\": "),
        6,
        "network configuration",
    );
    expect_error(host.cni_raw("muslin", &env, b"[]"), 7, "");
    let mut conf = host.conf("0.9.9");
    expect_error(
        host.cni("muslin", "ADD", &id, Some(&c.path()), "eth0", &conf),
        1,
        "0.9.9",
    );
    conf = host.conf("1.1.0");
    conf["mtu"] = json!(1);
    expect_error(
        host.cni("muslin", "ADD", &id, Some(&c.path()), "eth0", &conf),
        7,
        "mtu",
    );
    conf = host.conf("1.1.0");
    conf["mtuu"] = json!(1400);
    expect_error(
        host.cni("muslin", "ADD", &id, Some(&c.path()), "eth0", &conf),
        7,
        "mtuu",
    );

    let conf = host.conf("1.1.0");
    expect_error(
        host.cni("muslin", "ADD", &id, None, "eth0", &conf),
        4,
        "CNI_NETNS",
    );
    expect_error(
        host.cni(
            "muslin",
            "ADD",
            &id,
            Some(&c.path()),
            "eth0-too-long-name",
            &conf,
        ),
        4,
        "CNI_IFNAME",
    );
    expect_error(
        host.cni("muslin", "ADD", "", Some(&c.path()), "eth0", &conf),
        4,
        "CNI_CONTAINERID",
    );
    let missing = std::path::Path::new("/var/run/netns/muslin-test-does-not-exist");
    expect_error(
        host.cni("muslin", "ADD", &id, Some(missing), "eth0", &conf),
        3,
        "does not exist",
    );
    // A path that exists but is no namespace.
    expect_error(
        host.cni(
            "muslin",
            "ADD",
            &id,
            Some(std::path::Path::new("/etc/hostname")),
            "eth0",
            &conf,
        ),
        4,
        "not a network namespace",
    );
    assert_untouched(&host, &c);

    // The interface name is taken in the container: rolled back.
    c.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ]);
    expect_error(
        host.cni("muslin", "ADD", &id, Some(&c.path()), "eth0", &conf),
        105,
        "eth0",
    );
    assert!(host.our_links().is_empty());
    assert!(host.allocations().is_empty());
}

#[test]
fn exhausted_block_is_a_clear_error_that_leaves_nothing() {
    // A /30 has two usable addresses.
    let host = Host::new(&["10.96.0.0/30"]);
    let keep: Vec<Netns> = (0..2).map(|_| Netns::new("full")).collect();
    for (i, c) in keep.iter().enumerate() {
        host.add(&format!("full{i}"), c);
    }
    let c = Netns::new("over");
    let (v, code) = host.cni(
        "muslin",
        "ADD",
        "over",
        Some(&c.path()),
        "eth0",
        &host.conf("1.1.0"),
    );
    expect_error((v, code), 101, "10.96.0.0/30");
    assert_eq!(c.links(), vec!["lo"]);
    assert_eq!(host.allocations().len(), 2);
    assert_eq!(host.our_links().len(), 2);
    // STATUS says the plugin cannot serve ADDs now.
    let (v, code) = host.cni("muslin", "STATUS", "", None, "", &host.conf("1.1.0"));
    assert_ne!(code, 0);
    assert_eq!(v["code"], 50);
    // Releasing one makes room again.
    host.del("full0", Some(&keep[0]));
    host.add("over", &c);
}

#[test]
fn agent_down_fails_at_once_with_try_again_later() {
    let mut host = Host::new(&["10.97.0.0/24"]);
    host.kill_agent();
    let c = Netns::new("down");
    let t = std::time::Instant::now();
    let (v, code) = host.cni(
        "muslin",
        "ADD",
        "down",
        Some(&c.path()),
        "eth0",
        &host.conf("1.1.0"),
    );
    expect_error((v, code), 11, host.socket.to_str().unwrap());
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "never hangs"
    );
    assert_eq!(c.links(), vec!["lo"]);
    let (v, _) = host.cni("muslin", "STATUS", "", None, "", &host.conf("1.1.0"));
    assert_eq!(v["code"], 50);
}

#[test]
fn agent_rejects_bad_config_naming_the_field() {
    let dir = TempDir::new("badconf");
    // Even an agent that should refuse to start runs in a throwaway
    // namespace: if it wrongly started, it must not touch this host.
    let ns = Netns::new("badconf");
    let cases: &[(&[&str], &str)] = &[
        (&["--block", "10.0.0.1/24"], "blocks"),
        (&["--mtu", "99"], "mtu"),
        (&["--socket", "relative.sock"], "socket"),
        (&["--join", "not-an-address"], "join"),
        (&["--block-size", "30"], "block-size"),
        (&["--backend", "bgp"], "backend"),
        (&["--underlay", "interface=("], "underlay"),
        (
            &["--underlay", "interface=wlan9", "--join", "192.0.2.1"],
            "wlan9",
        ),
        (
            &[
                "--cluster-secret-file",
                "/nonexistent/secret",
                "--underlay",
                "address=127.0.0.1",
            ],
            "cluster-secret-file",
        ),
    ];
    let state = dir.0.join("s").display().to_string();
    for (args, field) in cases {
        let mut full = vec![
            BIN,
            "agent",
            "--state-dir",
            &state,
            "--socket",
            "/tmp/muslin-badconf-never.sock",
        ];
        full.extend_from_slice(args);
        let mut cmd = std::process::Command::new("timeout");
        cmd.args(["20", "ip", "netns", "exec", &ns.name])
            .args(&full);
        let o = cmd.output().unwrap();
        assert!(!o.status.success(), "{args:?} must be refused");
        assert_ne!(
            o.status.code(),
            Some(124),
            "{args:?}: the agent started instead of refusing"
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(field), "{args:?}: {err}");
    }
    let file = dir.0.join("agent.toml");
    std::fs::write(&file, "blocks = [\"10.0.0.0/24\"]\nmtuu = 1400\n").unwrap();
    let o = std::process::Command::new(BIN)
        .args(["agent", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("mtuu") && err.contains("line 2"), "{err}");
}

#[test]
fn the_hosts_own_namespace_or_a_non_network_one_is_refused_and_nothing_is_made() {
    let host = Host::new(&["10.93.0.0/24"]);
    let c = Netns::new("own");
    let conf = host.conf("1.1.0");
    // The agent runs in host.ns: its path and its /proc/self/ns/net are the
    // host's own namespace; /proc/self/ns/uts is a namespace, but not a
    // network one (nsfs alike).
    let cases = [
        (host.ns.path(), "host's own network namespace"),
        (
            PathBuf::from("/proc/self/ns/net"),
            "host's own network namespace",
        ),
        (PathBuf::from("/proc/self/ns/uts"), "uts namespace"),
    ];
    for (path, mentions) in &cases {
        let got = host.cni("muslin", "ADD", "own", Some(path), "eth0", &conf);
        expect_error(got, 4, mentions);
    }
    // Without the check, ADD put the address and a default route (proto 77)
    // in the host's main table and the container end among its links.
    let defaults = host
        .ns
        .ip_json(&["route", "show", "default", "proto", "77"]);
    assert_eq!(defaults, json!([]), "a default route was installed");
    assert_eq!(host.ns.links(), vec!["lo"], "links made in the host");
    assert_untouched(&host, &c);
    // The same agent still attaches a real container.
    host.add("own", &c);
}

#[test]
fn over_long_input_is_refused_at_once_naming_the_field_and_its_limit() {
    let host = Host::new(&["10.92.0.0/24"]);
    let c = Netns::new("long");
    let env = cni_env("ADD", "long", Some(&c.path()), "eth0");

    // Was code 11 (try again later): runtimes retried it for ever.
    let mut conf = host.conf("1.1.0");
    conf["name"] = json!("n".repeat(10 << 20));
    let t = Instant::now();
    let got = host.cni_raw("muslin", &env, conf.to_string().as_bytes());
    expect_error(got, 7, "1048576");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    conf["name"] = json!("n".repeat(100_000));
    let msg = expect_error(
        host.cni_raw("muslin", &env, conf.to_string().as_bytes()),
        7,
        "name:",
    );
    assert!(msg.contains("255") && msg.len() < 300, "{msg}");

    // Below the kernel's 128 KiB bound on one environment string.
    let long = "a".repeat(100_000);
    let conf = host.conf("1.1.0").to_string();
    for (var, value) in [
        ("CNI_CONTAINERID", long.clone()),
        ("CNI_NETNS", format!("/{long}")),
        ("CNI_IFNAME", long.clone()),
        ("CNI_ARGS", format!("K8S_POD_NAME={long}")),
    ] {
        let mut env = env.clone();
        env.retain(|(k, _)| k != var);
        env.push((var.to_string(), value));
        let msg = expect_error(host.cni_raw("muslin", &env, conf.as_bytes()), 4, var);
        assert!(msg.len() < 300, "the value is not echoed: {msg}");
    }
    assert_untouched(&host, &c);
}

#[test]
fn a_socket_that_accepts_and_never_answers_fails_within_seconds_naming_it() {
    let host = Host::new(&["10.91.0.0/24"]);
    let dir = TempDir::new("mute");
    let path = dir.0.join("mute.sock");
    let listener = UnixListener::bind(&path).unwrap();
    // Accepts, reads nothing, answers nothing; keeps every connection open.
    std::thread::spawn(move || {
        let held: Vec<UnixStream> = listener.incoming().map_while(Result::ok).collect();
        drop(held);
    });
    let c = Netns::new("mute");
    let mut conf = host.conf("1.1.0");
    conf["socket"] = json!(path);
    let t = Instant::now();
    let got = host.cni("muslin", "ADD", "mute", Some(&c.path()), "eth0", &conf);
    let elapsed = t.elapsed();
    let msg = expect_error(got, 11, path.to_str().unwrap());
    assert!(msg.contains("acknowledge"), "{msg}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert_eq!(c.links(), vec!["lo"]);

    // `muslin status` uses the same client: bounded too.
    let t = Instant::now();
    let o = sh(&[BIN, "status", "--socket", path.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(String::from_utf8_lossy(&o.stderr).contains("acknowledge"));
}

/// Reads one JSON line from the agent.
fn reply_line(r: &mut impl BufRead) -> serde_json::Value {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

fn connect(socket: &Path) -> UnixStream {
    let s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

#[test]
fn agent_acknowledges_then_answers_and_refuses_an_over_size_request_with_an_error() {
    let host = Host::new(&["10.90.0.0/24"]);
    let mut s = connect(&host.socket);
    s.write_all(b"{\"op\":\"status\"}\n").unwrap();
    let mut r = BufReader::new(&s);
    assert_eq!(reply_line(&mut r), json!({"kind": "accepted"}));
    assert_eq!(reply_line(&mut r)["kind"], "status");

    // Past the agent's 1 MiB: an answer, not a closed connection. The agent
    // stops reading at its limit, so the rest of the write may fail.
    let mut s = connect(&host.socket);
    let _ = s.write_all(&vec![b' '; 2 << 20]);
    let v = reply_line(&mut BufReader::new(&s));
    assert_eq!(v["kind"], "error", "{v}");
    assert_eq!(v["code"], 7, "{v}");
    assert!(v["msg"].as_str().unwrap().contains("too large"), "{v}");
    // And it goes on serving.
    assert!(host.allocations().is_empty());
}
