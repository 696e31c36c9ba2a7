//! A large lab: cold start, convergence (a container attached on one host,
//! until every other host reaches it), agent memory and CPU idle and under
//! churn, gossip traffic, and how fast a network created on one host is
//! known to all.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use muslin_lab::ops::{self, Ctx, UpOptions};
use muslin_lab::probe::{self, Proto};
use muslin_lab::registry;
use muslin_model::api::{Request, Response};
use muslin_model::network::CreateNetwork;

use crate::report::Report;
use crate::stats::Series;
use crate::sys::{agent_pid, cpu_seconds, enter, rss_kib};
use crate::{fail, BenchError, Options, Plan};

const LAB: &str = "mbs";

/// Gossip bytes sent, or requests made to etcd, by a host's agent so far.
fn store_traffic(host: &str) -> u64 {
    match muslin_cni::call(
        &registry::socket(LAB, host),
        &muslin_model::api::Request::Status,
    ) {
        Ok(muslin_model::api::Response::Status(s)) => s
            .cluster
            .map(|c| c.gossip_bytes_sent + c.etcd_requests)
            .unwrap_or(0),
        _ => 0,
    }
}

/// Probe bytes (sent and answered), kernel writes and `nft` runs of a
/// host's agent.
fn probes_and_writes(host: &str) -> (u64, u64, u64) {
    match muslin_cni::call(
        &registry::socket(LAB, host),
        &muslin_model::api::Request::Status,
    ) {
        Ok(muslin_model::api::Response::Status(s)) => s
            .cluster
            .map(|c| {
                (
                    c.probe_bytes_sent + c.probe_bytes_received,
                    c.kernel_writes,
                    c.nft_runs,
                )
            })
            .unwrap_or_default(),
        _ => (0, 0, 0),
    }
}

fn reach_from(ns: &str, target: IpAddr, deadline: Duration) -> Option<Duration> {
    enter(ns).ok()?;
    let t = Instant::now();
    while t.elapsed() < deadline {
        if probe::check(
            target,
            probe::DEFAULT_PORT,
            Proto::Icmp,
            Duration::from_millis(50),
        )
        .is_ok()
        {
            return Some(t.elapsed());
        }
    }
    None
}

/// The networks an agent lists, with whether each is in force there.
fn networks_of(host: &str) -> Vec<(String, bool)> {
    let socket = registry::socket(LAB, host);
    match muslin_cni::call(&socket, &Request::NetworkList) {
        Ok(Response::Networks { networks }) => networks
            .into_iter()
            .map(|n| (n.name, !n.settling))
            .collect(),
        _ => vec![],
    }
}

/// What a host must show of a network: listed, in force, or gone.
#[derive(Clone, Copy, PartialEq)]
enum Seen {
    Known,
    InForce,
    Gone,
}

/// How long after `start` every host's agent shows `want` for network
/// `name` (each host polled on its own thread).
fn until_all(names: &[String], name: &str, want: Seen, start: Instant) -> Option<Duration> {
    let deadline = Duration::from_secs(10);
    std::thread::scope(|s| {
        let hs: Vec<_> = names
            .iter()
            .map(|h| {
                s.spawn(move || loop {
                    let listed = networks_of(h);
                    let entry = listed.iter().find(|(n, _)| n == name);
                    let done = match want {
                        Seen::Known => entry.is_some(),
                        Seen::InForce => entry.is_some_and(|(_, in_force)| *in_force),
                        Seen::Gone => entry.is_none(),
                    };
                    if done {
                        return Some(start.elapsed());
                    }
                    if start.elapsed() > deadline {
                        return None;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or(None))
            .collect::<Option<Vec<Duration>>>()
            .and_then(|v| v.into_iter().max())
    })
}

/// Networks created on h1 and deleted again, `rounds` times: how long
/// until every host knows of each (ms), until it is in force on every
/// host (after each host's settle time), and until a deletion is known.
fn network_spread(names: &[String], rounds: usize) -> Result<(Series, Series, Series), String> {
    let h1 = registry::socket(LAB, &names[0]);
    let (mut created, mut in_force, mut deleted) =
        (Series::default(), Series::default(), Series::default());
    for k in 0..rounds {
        let name = format!("bench{k}");
        let req = Request::NetworkCreate(CreateNetwork {
            name: name.clone(),
            subnets: vec![format!("10.{}.0.0/16", 100 + k % 100)
                .parse()
                .expect("literal")],
            ..Default::default()
        });
        let start = Instant::now();
        match muslin_cni::call(&h1, &req) {
            Ok(Response::Network(_)) => {}
            other => return Err(format!("network create: {other:?}")),
        }
        let t = until_all(names, &name, Seen::Known, start)
            .ok_or_else(|| format!("network {name} did not reach every host within 10 s"))?;
        created.push(t.as_secs_f64() * 1e3);
        let t = until_all(names, &name, Seen::InForce, start)
            .ok_or_else(|| format!("network {name} was not in force everywhere within 10 s"))?;
        in_force.push(t.as_secs_f64() * 1e3);
        let start = Instant::now();
        match muslin_cni::call(&h1, &Request::NetworkDelete { name: name.clone() }) {
            Ok(Response::Done) => {}
            other => return Err(format!("network delete: {other:?}")),
        }
        let t = until_all(names, &name, Seen::Gone, start)
            .ok_or_else(|| format!("network {name} was not gone everywhere within 10 s"))?;
        deleted.push(t.as_secs_f64() * 1e3);
    }
    Ok((created, in_force, deleted))
}

pub fn run(o: &Options, plan: &Plan, report: &mut Report) -> Result<(), BenchError> {
    let f = fail("scale");
    let hosts = plan.scale_hosts;
    let ctx = Ctx {
        bin: o.bin.clone(),
        progress: Box::new(|_| {}),
    };
    let up = UpOptions {
        name: LAB.into(),
        hosts: Some(hosts),
        topology: None,
        backend: "auto".into(),
        encryption: "none".into(),
        datastore: o.datastore.clone(),
        etcd_members: 1,
        converge_timeout: 120,
    };
    // Cold starts: several, down in between; the last one stays up.
    let (mut cold, mut conv_start) = (Series::default(), Series::default());
    let label = format!("{hosts}-host lab on {}", o.datastore);
    for k in 0..plan.rounds.min(3) {
        if k > 0 {
            ops::down(LAB).map_err(|e| f(e.to_string()))?;
        }
        let r = ops::up(&ctx, &up).map_err(|e| f(e.to_string()))?;
        cold.push(r.total_seconds);
        conv_start.push(
            r.converge_seconds
                .ok_or_else(|| f(format!("{label} did not converge")))?,
        );
    }
    let names: Vec<String> = (1..=hosts).map(|i| format!("h{i}")).collect();
    let one = |v: f64| Series(vec![v]);
    report.add(
        "scale",
        &label,
        "cold start to a passing matrix",
        "s",
        &cold,
        None,
    );
    report.add(
        "scale",
        &label,
        "converged after the agents started",
        "s",
        &conv_start,
        None,
    );
    let pids: Vec<u32> = names.iter().filter_map(|h| agent_pid(LAB, h)).collect();

    // Idle: five seconds of nothing.
    let (c0, g0): (Vec<f64>, Vec<u64>) = (
        pids.iter().map(|p| cpu_seconds(*p)).collect(),
        names.iter().map(|h| store_traffic(h)).collect(),
    );
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let secs = t.elapsed().as_secs_f64();
    let cpu_idle = Series(
        pids.iter()
            .zip(&c0)
            .map(|(p, c)| (cpu_seconds(*p) - c) / secs * 100.0)
            .collect(),
    );
    let gossip = Series(
        names
            .iter()
            .zip(&g0)
            .map(|(h, g)| (store_traffic(h) - g) as f64 / secs)
            .collect(),
    );
    let rss_idle = Series(pids.iter().map(|p| rss_kib(*p) as f64 / 1024.0).collect());
    report.add(
        "scale",
        &label,
        "agent RSS, idle (per agent)",
        "MiB",
        &rss_idle,
        None,
    );
    report.add(
        "scale",
        &label,
        "agent CPU, idle (per agent)",
        "%",
        &cpu_idle,
        None,
    );
    let (metric, unit) = if o.datastore == "etcd" {
        ("etcd requests per node, idle", "1/s")
    } else {
        ("gossip sent per node, idle", "B/s")
    };
    report.add("scale", &label, metric, unit, &gossip, None);

    // Probing and kernel writes in the steady state: past the first path
    // MTU measurement, which every new peer gets once.
    std::thread::sleep(Duration::from_secs(5));
    let pw0: Vec<(u64, u64, u64)> = names.iter().map(|h| probes_and_writes(h)).collect();
    let t = Instant::now();
    std::thread::sleep(plan.probe_window);
    let secs = t.elapsed().as_secs_f64();
    let pw1: Vec<(u64, u64, u64)> = names.iter().map(|h| probes_and_writes(h)).collect();
    // A pair's cost is both nodes' probes and answers: twice one node's
    // share per peer.
    let peers = (hosts.max(2) - 1) as f64;
    let probe_pair = Series(
        pw0.iter()
            .zip(&pw1)
            .map(|(a, b)| 2.0 * (b.0 - a.0) as f64 / secs / peers)
            .collect(),
    );
    let writes = Series(
        pw0.iter()
            .zip(&pw1)
            .map(|(a, b)| (b.1 - a.1) as f64 * 60.0 / secs)
            .collect(),
    );
    report.add(
        "scale",
        &label,
        "health probes per peer pair, idle",
        "B/s",
        &probe_pair,
        None,
    );
    // What one node's uplink carries for probing all its peers: its own
    // probes and their answers, and as much again answering theirs.
    let probe_node = Series(
        pw0.iter()
            .zip(&pw1)
            .map(|(a, b)| 2.0 * (b.0 - a.0) as f64 / secs)
            .collect(),
    );
    report.add(
        "scale",
        &label,
        "health probes per node, idle",
        "B/s",
        &probe_node,
        None,
    );
    report.add(
        "scale",
        &label,
        "kernel writes per agent, idle",
        "writes/min",
        &writes,
        None,
    );
    let nft = Series(
        pw0.iter()
            .zip(&pw1)
            .map(|(a, b)| (b.2 - a.2) as f64 * 60.0 / secs)
            .collect(),
    );
    report.add(
        "scale",
        &label,
        "nft runs per agent, idle",
        "runs/min",
        &nft,
        None,
    );

    // Churn: attachments one after another, each probed from every other host.
    let c1: Vec<f64> = pids.iter().map(|p| cpu_seconds(*p)).collect();
    let t = Instant::now();
    let mut conv = Series::default();
    for k in 0..plan.scale_attachments {
        let h = &names[k % hosts];
        let c = format!("v{k}");
        ops::run(&ctx, Some(LAB), h, &c, &[]).map_err(|e| f(e.to_string()))?;
        let st = ops::status(Some(LAB)).map_err(|e| f(e.to_string()))?;
        let addr = st
            .nodes
            .iter()
            .find(|n| &n.name == h)
            .and_then(|n| n.containers.iter().find(|x| x.name == c))
            .and_then(|x| x.address)
            .ok_or_else(|| f(format!("no address for {h}/{c}")))?;
        let others: Vec<String> = names
            .iter()
            .filter(|x| *x != h)
            .map(|x| format!("{LAB}-{x}"))
            .collect();
        let times: Vec<Option<Duration>> = std::thread::scope(|s| {
            let hs: Vec<_> = others
                .iter()
                .map(|o| s.spawn(move || reach_from(o, addr, Duration::from_secs(10))))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap_or(None)).collect()
        });
        let worst = times
            .iter()
            .map(|t| t.unwrap_or(Duration::from_secs(10)))
            .max()
            .unwrap_or_default();
        conv.push(worst.as_secs_f64() * 1e3);
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu_churn = Series(
        pids.iter()
            .zip(&c1)
            .map(|(p, c)| (cpu_seconds(*p) - c) / secs * 100.0)
            .collect(),
    );
    let rss_churn = Series(pids.iter().map(|p| rss_kib(*p) as f64 / 1024.0).collect());
    report.add(
        "scale",
        &label,
        "agent CPU, under churn (per agent)",
        "%",
        &cpu_churn,
        None,
    );
    report.add(
        "scale",
        &label,
        "agent RSS, after churn (per agent)",
        "MiB",
        &rss_churn,
        None,
    );
    report.add(
        "scale",
        &label,
        "convergence p50 (attached -> reached from every host)",
        "ms",
        &one(conv.median()),
        None,
    );
    report.add(
        "scale",
        &label,
        "convergence p99",
        "ms",
        &one(conv.pct(0.99)),
        None,
    );
    let (created, in_force, deleted) =
        network_spread(&names, plan.rounds.max(3) * 3).map_err(&f)?;
    report.add(
        "scale",
        &label,
        "network created on one host -> known to all, p50",
        "ms",
        &one(created.median()),
        None,
    );
    report.add(
        "scale",
        &label,
        "network created -> known to all, p99",
        "ms",
        &one(created.pct(0.99)),
        None,
    );
    report.add(
        "scale",
        &label,
        "network created -> in force on all, p50",
        "ms",
        &one(in_force.median()),
        None,
    );
    report.add(
        "scale",
        &label,
        "network created -> in force on all, p99",
        "ms",
        &one(in_force.pct(0.99)),
        None,
    );
    report.add(
        "scale",
        &label,
        "network deleted -> gone from all, p50",
        "ms",
        &one(deleted.median()),
        None,
    );
    let (gain, lose) =
        crate::policy::label_spread(LAB, &names, plan.rounds.max(3) * 3).map_err(&f)?;
    for (what, s) in [
        (
            "label change -> enforced on all (allowed), p50",
            gain.median(),
        ),
        (
            "label change -> enforced on all (allowed), p99",
            gain.pct(0.99),
        ),
        (
            "label removed -> enforced on all (refused), p50",
            lose.median(),
        ),
        (
            "label removed -> enforced on all (refused), p99",
            lose.pct(0.99),
        ),
    ] {
        report.add("scale", &label, what, "ms", &one(s), None);
    }
    let t = Instant::now();
    ops::down(LAB).map_err(|e| f(e.to_string()))?;
    report.add(
        "scale",
        &label,
        "down",
        "s",
        &one(t.elapsed().as_secs_f64()),
        None,
    );
    Ok(())
}
