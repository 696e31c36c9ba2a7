//! The etcd datastore beyond the shared multi-host suite: outages, a
//! member lost from a 3-member cluster, and bad settings.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::lab::{file, one_segment, Lab};
use common::{Netns, TempDir, BIN};

/// The pid and command line of the etcd process in a member's namespace.
fn etcd_process(lab: &Lab, member: &str) -> (i32, Vec<String>) {
    lab.process(member, |a| a.first().is_some_and(|x| x.ends_with("etcd")))
}

#[test]
fn thirty_seconds_without_etcd_lose_no_traffic_and_allow_adds() {
    let lab = Lab::on("etcd");
    let (_d, path) = file(&one_segment(2, 1, ""));
    lab.up(&["-f", &path, "--converge-timeout", "30"]);
    let target = lab.container_addr("h2", "c1");
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
            "3300",
            "--interval-ms",
            "10",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (pid, args) = etcd_process(&lab, "etcd1");
    Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .unwrap();
    let stopped = Instant::now();
    // An ADD that needs no new block still succeeds while etcd is away.
    std::thread::sleep(Duration::from_secs(2));
    lab.ok(&["run", "--name", &lab.name, "h1", "during"]);
    let during = lab.container_addr("h1", "during");
    let o = lab.exec(
        "h2/c1",
        &[BIN, "probe", "check", &during, "--proto", "icmp"],
    );
    assert!(
        o.status.success(),
        "new pod reachable during the outage: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    std::thread::sleep(Duration::from_secs(30).saturating_sub(stopped.elapsed()));
    Command::new("kill")
        .args(["-CONT", &pid.to_string()])
        .status()
        .unwrap();
    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("lost 0"), "{text}");
    // After etcd returns, a new container on one host is reachable from the other.
    lab.ok(&["run", "--name", &lab.name, "h2", "after"]);
    let after = lab.container_addr("h2", "after");
    let o = lab.exec(
        "h1/c1",
        &[BIN, "probe", "check", &after, "--proto", "tcp,icmp"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    // The outage was logged, and not once per attempt.
    let log =
        std::fs::read_to_string(lab.root.0.join(&lab.name).join("h1").join("agent.log")).unwrap();
    let n = log.matches("etcd unreachable").count();
    assert!((1..=12).contains(&n), "outage logged {n} times");
    let _ = args;
}

#[test]
fn a_three_member_etcd_survives_losing_one() {
    let lab = Lab::on("etcd");
    let (_d, path) = file(&one_segment(2, 1, ""));
    lab.up(&[
        "-f",
        &path,
        "--etcd-members",
        "3",
        "--converge-timeout",
        "30",
    ]);
    let (pid, _) = etcd_process(&lab, "etcd2");
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    // New containers on both hosts, each reachable from the other host.
    lab.ok(&["run", "--name", &lab.name, "h1", "x1"]);
    lab.ok(&["run", "--name", &lab.name, "h2", "x2"]);
    let o = lab.exec(
        "h2/c1",
        &[
            BIN,
            "probe",
            "check",
            &lab.container_addr("h1", "x1"),
            "--proto",
            "tcp,icmp",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let o = lab.exec(
        "h1/c1",
        &[
            BIN,
            "probe",
            "check",
            &lab.container_addr("h2", "x2"),
            "--proto",
            "tcp,icmp",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    // The cluster state is still one view: both nodes, both alive.
    let st = lab.agent_status("h1");
    let nodes = st["cluster"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    assert!(nodes.iter().all(|n| n["alive"] == true), "{nodes:?}");
}

#[test]
fn bad_etcd_settings_are_refused_at_start_naming_the_setting() {
    // An etcd that does not answer is an outage, not a bad setting: the
    // agent starts and keeps trying (see the restart test below).
    let ns = Netns::new("etcdbad");
    let dir = TempDir::new("etcdbad");
    let notpem = dir.0.join("ca.pem");
    std::fs::write(&notpem, "not a certificate").unwrap();
    let notpem = notpem.to_str().unwrap().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--datastore", "etcd"], "etcd-endpoints"),
        (
            vec!["--datastore", "etcd", "--etcd-endpoints", "localhost:2379"],
            "etcd-endpoints",
        ),
        (
            vec![
                "--datastore",
                "etcd",
                "--etcd-endpoints",
                "https://127.0.0.1:1",
                "--etcd-ca-file",
                "/nonexistent/ca.pem",
            ],
            "etcd-ca-file",
        ),
        (
            vec![
                "--datastore",
                "etcd",
                "--etcd-endpoints",
                "https://127.0.0.1:1",
                "--etcd-ca-file",
                &notpem,
            ],
            "etcd-ca-file",
        ),
        (
            vec![
                "--datastore",
                "etcd",
                "--etcd-endpoints",
                "https://127.0.0.1:1",
                "--etcd-cert-file",
                &notpem,
            ],
            "etcd-key-file",
        ),
        (
            vec![
                "--datastore",
                "etcd",
                "--etcd-endpoints",
                "http://e:2379",
                "--etcd-prefix",
                "nope",
            ],
            "etcd-prefix",
        ),
    ];
    let state = dir.0.join("s").display().to_string();
    for (args, setting) in cases {
        let mut full = vec![
            "30",
            "ip",
            "netns",
            "exec",
            &ns.name,
            BIN,
            "agent",
            "--state-dir",
            &state,
            "--socket",
            "/tmp/muslin-etcdbad-never.sock",
            "--underlay",
            "address=127.0.0.1",
        ];
        full.extend(args.iter().copied());
        let o = Command::new("timeout").args(&full).output().unwrap();
        assert!(!o.status.success(), "{args:?} must be refused");
        assert_ne!(
            o.status.code(),
            Some(124),
            "{args:?}: hung instead of refusing"
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(setting), "{args:?}: {err}");
    }
}

#[test]
fn an_agent_restarted_while_etcd_is_away_serves_at_once_and_rejoins() {
    let lab = Lab::on("etcd");
    let (_d, path) = file(&one_segment(2, 1, ""));
    lab.up(&["-f", &path, "--converge-timeout", "30"]);
    let routes = common::peer_routes(&lab.ns("h1"));
    assert_eq!(routes.len(), 1, "{routes:?}");
    let (etcd, _) = etcd_process(&lab, "etcd1");
    Command::new("kill")
        .args(["-STOP", &etcd.to_string()])
        .status()
        .unwrap();
    // h1's agent dies and comes back while etcd is frozen.
    let (pid, args) = lab.process("h1", |a| a.iter().any(|x| x == "agent"));
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let sock = lab.root.0.join(&lab.name).join("h1").join("agent.sock");
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(lab.root.0.join(&lab.name).join("h1").join("agent.log"))
        .unwrap();
    let started = Instant::now();
    let mut agent = Command::new("ip")
        .args(["netns", "exec", &lab.ns("h1")])
        .args(&args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(agent.try_wait().unwrap().is_none(), "the agent exited");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the agent did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = started.elapsed();
    eprintln!(
        "restart to serving with etcd away: {:.2} s",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // It serves ADD from the block it holds, and its pods keep their paths.
    lab.ok(&["run", "--name", &lab.name, "h1", "during"]);
    let during = lab.container_addr("h1", "during");
    let o = lab.exec(
        "h2/c1",
        &[BIN, "probe", "check", &during, "--proto", "icmp"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        common::peer_routes(&lab.ns("h1")),
        routes,
        "routes changed while etcd was away"
    );
    Command::new("kill")
        .args(["-CONT", &etcd.to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while lab.agent_status("h1")["cluster"]["synced"] != true {
        assert!(Instant::now() < deadline, "h1 never heard etcd again");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        common::peer_routes(&lab.ns("h1")),
        routes,
        "routes flapped after etcd returned"
    );
    let o = lab.exec(
        "h2/c1",
        &[BIN, "probe", "check", &during, "--proto", "icmp"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let _ = agent.kill();
    let _ = agent.wait();
}
