//! The metrics endpoint (`--metrics-addr`) on hosts built by hand as
//! README's Install section has them: what it serves parses as Prometheus
//! text, and its counters move when the hosts do things (CNI ADD and DEL,
//! gossip, a policy's drops, DNS queries).

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

use common::hosts::{pod_per_host, run_in, until, Agent, Net};
use common::{Netns, TempDir, BIN};
use prometheus_parse::{LineInfo, Scrape, Value};

/// Each host is a network namespace: 127.0.0.1 is its own.
const METRICS: &str = "127.0.0.1:9331";

/// `GET path` on the metrics port of `ns`: (status code, content type,
/// body). From a thread that enters the namespace, as a scraper on the
/// host would connect.
fn get(ns: &Netns, path: &str) -> (u16, String, String) {
    let netns = ns.path();
    let path = path.to_string();
    std::thread::spawn(move || {
        let f = std::fs::File::open(netns).unwrap();
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let mut s = std::net::TcpStream::connect(METRICS).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {METRICS}\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        let code = head.split(' ').nth(1).unwrap().parse().unwrap();
        let content_type = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Type: "))
            .unwrap_or_default()
            .to_string();
        (code, content_type, body.to_string())
    })
    .join()
    .unwrap()
}

/// One scrape, parsed: series (`name{k="v",...}`, labels sorted) to value.
struct Metrics {
    text: String,
    values: HashMap<String, f64>,
}

impl Metrics {
    fn of(ns: &Netns) -> Metrics {
        let (code, content_type, text) = get(ns, "/metrics");
        assert_eq!(code, 200, "{text}");
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{content_type}"
        );
        // The parser skips what it does not understand: every line must
        // be one it does, save OpenMetrics' own UNIT and EOF.
        for line in text.lines() {
            let known = !matches!(LineInfo::parse(line), LineInfo::Ignored)
                || line.starts_with("# UNIT ")
                || line == "# EOF";
            assert!(known, "not Prometheus text: {line:?}\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        let mut values = HashMap::new();
        for s in scrape.samples {
            let mut labels: Vec<String> = s
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{v}\""))
                .collect();
            labels.sort();
            let key = if labels.is_empty() {
                s.metric.clone()
            } else {
                format!("{}{{{}}}", s.metric, labels.join(","))
            };
            let v = match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
                Value::Histogram(_) | Value::Summary(_) => continue,
            };
            values.insert(key, v);
        }
        Metrics { text, values }
    }

    /// The value of a series, 0 when absent (as Prometheus reads a
    /// counter that has not moved yet).
    fn get(&self, series: &str) -> f64 {
        self.values.get(series).copied().unwrap_or(0.0)
    }

    fn has(&self, series: &str) -> bool {
        self.values.contains_key(series)
    }

    /// Sum over every series of a family whose labels include `with`.
    fn sum(&self, family: &str, with: &str) -> f64 {
        self.values
            .iter()
            .filter(|(k, _)| k.split('{').next() == Some(family) && k.contains(with))
            .map(|(_, v)| v)
            .sum()
    }
}

fn cli(agent: &Agent, host: &Netns, args: &[&str]) -> (bool, String) {
    let socket = agent.socket.to_str().unwrap().to_string();
    let mut v: Vec<&str> = vec![BIN];
    v.extend_from_slice(args);
    v.extend_from_slice(&["--socket", &socket]);
    run_in(host, &v)
}

fn reaches(from: &Netns, addr: &str) -> bool {
    from.exec(&[
        BIN,
        "probe",
        "check",
        addr,
        "--port",
        "7777",
        "--proto",
        "tcp",
        "--timeout-ms",
        "300",
    ])
    .status
    .success()
}

#[test]
fn counters_move_when_the_hosts_do_things() {
    let net = Net::new();
    let hosts = [Netns::new("h1"), Netns::new("h2")];
    net.as_readme_hosts(&hosts);
    let m = ["--metrics-addr", METRICS];
    let agents = vec![
        Agent::start(&hosts[0], "h1", &net.secret(), &m),
        Agent::start(
            &hosts[1],
            "h2",
            &net.secret(),
            &[&m[..], &["--join", "192.168.56.11"]].concat(),
        ),
    ];
    until("h1 sees h2's data path answer", 60, || {
        agents[0].peer("h2")["data_path"] == "ok"
    });

    let before = Metrics::of(&hosts[0]);
    let version = format!(
        "muslin_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(before.get(&version), 1.0, "{}", before.text);
    let add_ok = r#"muslin_cni_add_duration_seconds_count{result="ok"}"#;
    let del_ok = r#"muslin_cni_del_duration_seconds_count{result="ok"}"#;
    let attached = r#"muslin_attachments{network="default"}"#;
    assert!(before.has(add_ok), "{}", before.text);
    assert_eq!(before.get(add_ok), 0.0);
    assert_eq!(before.get(attached), 0.0);
    assert_eq!(
        before.get(r#"muslin_peers{health="ok",path="routed"}"#),
        1.0,
        "{}",
        before.text
    );
    assert_eq!(before.get(r#"muslin_peer_up{peer="h2"}"#), 1.0);
    assert_eq!(before.get(r#"muslin_peer_data_path_up{peer="h2"}"#), 1.0);
    assert!(before.get(r#"muslin_peer_path_mtu_bytes{peer="h2"}"#) >= 1280.0);
    assert!(before.get("muslin_gossip_sent_bytes_total") > 0.0);
    assert!(before.get("muslin_probe_sent_bytes_total") > 0.0);
    assert!(before.get("muslin_kernel_changes_total") > 0.0);

    // Three ADDs on h1 (one from pod_per_host, two more), then one DEL.
    let pods = pod_per_host(&agents);
    let extra: Vec<Netns> = (0..2).map(|_| Netns::new("c")).collect();
    for (i, c) in extra.iter().enumerate() {
        agents[0].add(&format!("h1-extra{i}"), c);
    }
    let added = Metrics::of(&hosts[0]);
    assert_eq!(added.get(add_ok), 3.0, "{}", added.text);
    assert_eq!(
        added.get(r#"muslin_cni_requests_total{op="add",result="ok"}"#),
        3.0
    );
    assert_eq!(added.get(attached), 3.0);
    assert_eq!(added.get(del_ok), 0.0);
    assert!(
        added.get("muslin_kernel_changes_total") > before.get("muslin_kernel_changes_total"),
        "an ADD changes the kernel"
    );
    agents[0].del("h1-extra1", &extra[1]);
    let deleted = Metrics::of(&hosts[0]);
    assert_eq!(deleted.get(del_ok), 1.0, "{}", deleted.text);
    assert_eq!(deleted.get(attached), 2.0);
    assert_eq!(deleted.get(add_ok), 3.0);
    // Idle gossip is a probe and a digest a second: give it one.
    until("gossip goes on between scrapes", 10, || {
        let now = Metrics::of(&hosts[0]);
        now.get("muslin_gossip_sent_bytes_total") > before.get("muslin_gossip_sent_bytes_total")
            && now.get("muslin_gossip_received_bytes_total")
                > before.get("muslin_gossip_received_bytes_total")
    });

    // A policy denying h1's pod the way to h2's: h1 counts the drops.
    let (c1, c2) = (&pods[0].0, &pods[1].1);
    assert!(reaches(c1, c2), "h1's pod reaches h2's before any policy");
    let dir = TempDir::new("pol");
    let f = dir.0.join("p.yaml");
    std::fs::write(
        &f,
        format!("name: no-h2\naction: deny\npodSelector: {{}}\negress:\n- to: [{{ipBlock: {{cidr: {c2}/32}}}}]\n"),
    )
    .unwrap();
    let (ok, out) = cli(
        &agents[0],
        &hosts[0],
        &["policy", "apply", "-f", f.to_str().unwrap()],
    );
    assert!(ok, "{out}");
    until("the policy refuses h1's pod", 20, || !reaches(c1, c2));
    let denied = r#"muslin_policy_dropped_packets_total{policy="no-h2",reason="denied"}"#;
    let dropped = Metrics::of(&hosts[0]);
    assert!(dropped.get(denied) > 0.0, "{}", dropped.text);

    // DNS queries: the name service adds its counts up per worker thread,
    // 64 at a time, so enough of them to pass that on either thread.
    let names: Vec<String> = (0..200)
        .map(|i| format!("nobody{i}.muslin.internal"))
        .collect();
    let mut dig = vec!["dig", "+time=1", "+tries=1", "+short", "@169.254.53.1"];
    dig.extend(names.iter().map(String::as_str));
    let (ok, out) = run_in(c1, &dig);
    assert!(ok, "{out}");
    until("h1 counts the DNS queries", 10, || {
        Metrics::of(&hosts[0]).sum("muslin_dns_queries_total", "outcome=") >= 64.0
    });

    // Anything but /metrics is not found.
    let (code, _, _) = get(&hosts[0], "/");
    assert_eq!(code, 404);
    drop(extra);
    drop(pods);
}

#[test]
fn an_address_it_cannot_serve_stops_the_agent_by_name() {
    let net = Net::new();
    let host = Netns::new("h");
    let out = Agent::refused(&host, &net.secret(), &["--metrics-addr", "nonsense"]);
    assert!(out.contains("metrics-addr"), "{out}");
    // A port already taken in the host's namespace.
    let netns = host.path();
    let _taken = std::thread::spawn(move || {
        let f = std::fs::File::open(netns).unwrap();
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        std::net::TcpListener::bind(METRICS).unwrap()
    })
    .join()
    .unwrap();
    let out = Agent::refused(&host, &net.secret(), &["--metrics-addr", METRICS]);
    assert!(
        out.contains("metrics-addr") && out.contains("cannot listen"),
        "{out}"
    );
}
