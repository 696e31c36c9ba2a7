//! Relay: when the direct path between two hosts fails, their pods' traffic
//! goes through a third host. On three hosts of one segment (h1, h2, h3,
//! a container c1 on each), per backend: what throughput survives the
//! detour, how long c1@h1 loses packets to c1@h3 when the h1-h3 path is
//! cut, whether the pair that was not cut notices anything, and how soon
//! traffic is direct again once the path heals.

use std::net::IpAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use muslin_lab::faults::{self, Cut};
use muslin_lab::ops;
use muslin_lab::probe::{self, PingLog, Proto};
use muslin_lab::registry;
use serde_json::Value;

use crate::dataplane::{pod, tcp_gbps, up};
use crate::report::Report;
use crate::stats::Series;
use crate::sys::enter;
use crate::{fail, BenchError, Options, Plan};

const TOPOLOGY: &str = r#"
[[segment]]
name = "lan"
cidr = "192.168.61.0/24"
[[host]]
name = "h"
count = 3
containers = 1
[[host.nic]]
segment = "lan"
default-route = true
"#;

/// (lab, backend, how the report names it).
const LABS: [(&str, &str, &str); 2] = [
    ("mbla", "auto", "auto (routed)"),
    ("mblv", "vxlan", "vxlan"),
];
/// The pair that is cut, and the host left to relay between them.
const FROM: &str = "h1";
const TO: &str = "h3";
const VIA: &str = "h2";
/// Longest wait for an agent to show a path change before the stage fails
/// (rather than hang on a build that never reroutes).
const PATH_TIMEOUT: Duration = Duration::from_secs(30);
const PING_INTERVAL: Duration = Duration::from_millis(10);
/// From the start of the pings to the cut: direct traffic on record first.
const BEFORE_CUT: Duration = Duration::from_secs(1);
/// Pinging on after the path is direct again, so late losses count.
const AFTER_RETURN: Duration = Duration::from_secs(1);

/// What an agent's status says of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PeerView {
    path: String,
    relay: Option<String>,
    data_path: String,
}

impl PeerView {
    fn relayed(&self) -> bool {
        self.relay.is_some()
    }

    /// Straight to the peer over the backend's own path, and that path
    /// answers: a pair no node can relay for stays on its failing direct
    /// path, which is not what a round may start from.
    fn direct(&self) -> bool {
        self.relay.is_none()
            && (self.path == "routed" || self.path == "vxlan")
            && self.data_path.starts_with("ok")
    }

    fn describe(&self) -> String {
        format!(
            "path {:?}, relay {}, data path {:?}",
            self.path,
            self.relay.as_deref().unwrap_or("none"),
            self.data_path
        )
    }
}

/// The peer's entry in `muslin status --json` (`cluster.nodes[]`). A relay
/// is a host's name; absent, null or empty means none.
fn peer_view(status: &Value, peer: &str) -> Option<PeerView> {
    let nodes = status["cluster"]["nodes"]
        .as_array()
        .or_else(|| status["nodes"].as_array())?;
    let n = nodes.iter().find(|n| n["name"] == peer)?;
    let text = |k: &str| n[k].as_str().unwrap_or_default().to_string();
    Some(PeerView {
        path: text("path"),
        relay: n["relay"]
            .as_str()
            .filter(|r| !r.is_empty())
            .map(String::from),
        data_path: text("data_path"),
    })
}

/// Asks `host`'s agent through the CLI, as an operator would: the JSON
/// carries every field the agent knows, whatever this build's types hold.
fn view_of(o: &Options, lab: &str, host: &str, peer: &str) -> Result<PeerView, String> {
    let socket = registry::socket(lab, host);
    let out = Command::new(&o.bin)
        .args(["status", "--json", "--socket"])
        .arg(&socket)
        .output()
        .map_err(|e| format!("muslin status: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "muslin status of {host}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("muslin status of {host}: unreadable JSON: {e}"))?;
    peer_view(&v, peer).ok_or_else(|| format!("{host}'s status lists no peer {peer}"))
}

/// Polls h1's view of h3 until `want` holds; how long that took.
fn wait_path(
    o: &Options,
    lab: &str,
    what: &str,
    after: &str,
    want: fn(&PeerView) -> bool,
) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let seen = view_of(o, lab, FROM, TO);
        if seen.as_ref().is_ok_and(want) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > PATH_TIMEOUT {
            let last = seen.map_or_else(|e| e, |v| v.describe());
            return Err(format!(
                "{lab}: {FROM}'s agent did not show {TO} {what} within {} s {after} (last seen: {last})",
                PATH_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_relayed(o: &Options, lab: &str) -> Result<Duration, String> {
    wait_path(
        o,
        lab,
        "relayed",
        &format!("of `lab block {FROM} {TO}`; an agent that relays shows `\"relay\": \"{VIA}\"`"),
        PeerView::relayed,
    )
}

fn wait_direct(o: &Options, lab: &str) -> Result<Duration, String> {
    wait_path(
        o,
        lab,
        "direct",
        &format!("of `lab unblock {FROM} {TO}`"),
        PeerView::direct,
    )
}

fn cut() -> Cut {
    Cut::new(FROM, TO, None)
}

fn block(lab: &str) -> Result<(), String> {
    faults::block(Some(lab), cut())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn unblock(lab: &str) -> Result<(), String> {
    faults::unblock(Some(lab), cut())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Until c1@h1 gets an ICMP answer from `addr`: an agent may show the
/// relay a moment before every kernel on the way carries it.
fn wait_reachable(ns: &str, addr: IpAddr) -> Result<(), String> {
    let ns = ns.to_string();
    std::thread::spawn(move || -> Result<(), String> {
        enter(&ns)?;
        probe::check(addr, probe::DEFAULT_PORT, Proto::Icmp, PATH_TIMEOUT)
            .map(|_| ())
            .map_err(|e| format!("relayed, yet {ns} cannot reach {addr}: {e}"))
    })
    .join()
    .map_err(|_| "reachability thread panicked".to_string())?
}

/// The containers of one lab and their addresses.
struct Pods {
    lab: &'static str,
    from_ns: String,
    to_ns: String,
    to: IpAddr,
    via: IpAddr,
}

impl Pods {
    fn of(lab: &'static str) -> Result<Pods, String> {
        Ok(Pods {
            lab,
            from_ns: format!("{lab}-{FROM}-c1"),
            to_ns: format!("{lab}-{TO}-c1"),
            to: pod(lab, TO, 0)?,
            via: pod(lab, VIA, 0)?,
        })
    }
}

/// TCP throughput c1@h1 -> c1@h3 direct and relayed, alternating within
/// each round: (direct, relayed, relayed / direct per round), Gbit/s.
fn throughput(o: &Options, plan: &Plan, p: &Pods) -> Result<[Series; 3], String> {
    let mut s: [Series; 3] = Default::default();
    for _ in 0..plan.rounds {
        wait_direct(o, p.lab)?;
        let direct = tcp_gbps(&p.from_ns, &p.to_ns, p.to, 1, plan.iperf_seconds)?;
        block(p.lab)?;
        let relayed = wait_relayed(o, p.lab)
            .and_then(|_| wait_reachable(&p.from_ns, p.to))
            .and_then(|_| tcp_gbps(&p.from_ns, &p.to_ns, p.to, 1, plan.iperf_seconds));
        unblock(p.lab)?;
        let relayed = relayed?;
        s[0].push(direct);
        s[1].push(relayed);
        s[2].push(relayed / direct);
    }
    wait_direct(o, p.lab)?;
    Ok(s)
}

/// An ICMP stream from a container until told to stop: when it started,
/// and which echoes were answered.
struct Pinger {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<(Instant, PingLog), String>>,
}

impl Pinger {
    fn start(ns: &str, target: IpAddr) -> Pinger {
        let stop = Arc::new(AtomicBool::new(false));
        let (ns, flag) = (ns.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            enter(&ns)?;
            let start = Instant::now();
            probe::ping_log(target, PING_INTERVAL, |_| flag.load(Ordering::Relaxed))
                .map(|log| (start, log))
                .map_err(|e| format!("pinging {target} from {ns}: {e}"))
        });
        Pinger { stop, thread }
    }

    fn finish(self) -> Result<(Instant, PingLog), String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| "ping thread panicked".to_string())?
    }
}

/// One cut and heal under two ping streams.
struct Round {
    /// Block until h1's agent showed the relay.
    relay_seen: Duration,
    /// The longest run of lost echoes between the cut and the heal.
    outage: Duration,
    /// Echoes lost to h2 over the whole round.
    unaffected_lost: usize,
    /// Unblock until h1's agent showed h3 direct.
    returned: Duration,
    /// Echoes to h3 lost from the unblock on.
    return_lost: usize,
}

/// Cuts h1-h3 while c1@h1 pings c1@h3 (cut) and c1@h2 (not cut), holds
/// the cut, heals it, and waits until h1 is direct to h3 again.
fn cut_and_heal(o: &Options, p: &Pods, hold: Duration) -> Result<Round, String> {
    wait_direct(o, p.lab)?;
    let cut_pair = Pinger::start(&p.from_ns, p.to);
    let other_pair = Pinger::start(&p.from_ns, p.via);
    std::thread::sleep(BEFORE_CUT);
    let events = (|| -> Result<(Instant, Duration, Instant, Duration), String> {
        let cut_at = Instant::now();
        block(p.lab)?;
        let relay_seen = wait_relayed(o, p.lab)?;
        std::thread::sleep(hold.saturating_sub(cut_at.elapsed()));
        let heal_at = Instant::now();
        unblock(p.lab)?;
        let returned = wait_direct(o, p.lab)?;
        std::thread::sleep(AFTER_RETURN);
        Ok((cut_at, relay_seen, heal_at, returned))
    })();
    let logs = (cut_pair.finish(), other_pair.finish());
    let (cut_at, relay_seen, heal_at, returned) = match events {
        Ok(e) => e,
        Err(e) => {
            // Leave the lab whole for whoever looks at it next.
            let _ = unblock(p.lab);
            return Err(e);
        }
    };
    let ((started, log), (_, other)) = (logs.0?, logs.1?);
    let at = |t: Instant| log.index_at(t.saturating_duration_since(started));
    let (cut_i, heal_i) = (at(cut_at), at(heal_at));
    let (_, run) = log.longest_loss_run(cut_i..heal_i);
    Ok(Round {
        relay_seen,
        outage: PING_INTERVAL * u32::try_from(run).unwrap_or(u32::MAX),
        unaffected_lost: other.lost(),
        returned,
        return_lost: log.answered[heal_i..].iter().filter(|a| !**a).count(),
    })
}

fn add_throughput(report: &mut Report, label: &str, [direct, relayed, ratio]: &[Series; 3]) {
    let base = Some(direct.median());
    let tcp = "TCP throughput c1@h1 -> c1@h3, 1 stream";
    let direct_label = format!("{label}: direct");
    let relayed_label = format!("{label}: relayed via {VIA}");
    report.add("relay", &direct_label, tcp, "Gbit/s", direct, base);
    report.add("relay", &relayed_label, tcp, "Gbit/s", relayed, base);
    let per_round = "relayed / direct throughput, per round";
    report.add("relay", label, per_round, "x", ratio, None);
}

fn add_cuts(report: &mut Report, label: &str, rounds: &[Round]) {
    let ms = |f: fn(&Round) -> Duration| {
        Series(rounds.iter().map(|r| f(r).as_secs_f64() * 1e3).collect())
    };
    let count = |f: fn(&Round) -> usize| Series(rounds.iter().map(|r| f(r) as f64).collect());
    let (outage, returned) = (ms(|r| r.outage), ms(|r| r.returned));
    let p99 = |s: &Series| Series(vec![s.pct(0.99)]);
    let figures = [
        (
            "relay shown in status after a cut",
            "ms",
            ms(|r| r.relay_seen),
        ),
        (
            "outage after a cut (longest loss run)",
            "ms",
            outage.clone(),
        ),
        ("outage after a cut, p99", "ms", p99(&outage)),
        (
            "echoes lost by the pair not cut (h1 -> h2)",
            "packets",
            count(|r| r.unaffected_lost),
        ),
        ("return to direct after the heal", "ms", returned.clone()),
        ("return to direct after the heal, p99", "ms", p99(&returned)),
        (
            "echoes lost during the return",
            "packets",
            count(|r| r.return_lost),
        ),
    ];
    for (metric, unit, s) in figures {
        report.add("relay", label, metric, unit, &s, None);
    }
}

/// Every figure of one backend.
fn measure(
    o: &Options,
    plan: &Plan,
    lab: &'static str,
    label: &str,
    report: &mut Report,
) -> Result<(), String> {
    let p = Pods::of(lab)?;
    add_throughput(report, label, &throughput(o, plan, &p)?);
    let mut rounds = vec![];
    for k in 0..plan.relay_rounds {
        rounds.push(cut_and_heal(o, &p, plan.relay_hold)?);
        (o.progress)(&format!(
            "      relay {label}: cut {}/{} done",
            k + 1,
            plan.relay_rounds
        ));
    }
    add_cuts(report, label, &rounds);
    Ok(())
}

pub fn run(o: &Options, plan: &Plan, report: &mut Report) -> Result<(), BenchError> {
    let f = fail("relay");
    for (lab, backend, label) in LABS {
        up(o, lab, backend, TOPOLOGY).map_err(&f)?;
        let measured = measure(o, plan, lab, label, report);
        let _ = ops::down(lab);
        measured.map_err(&f)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_peer_is_relayed_when_it_names_a_relay_and_direct_on_its_own_path() {
        let status = json!({"node_name": "h1", "cluster": {"nodes": [
            {"name": "h1", "path": "self"},
            {"name": "h2", "path": "routed", "relay": null, "data_path": "ok"},
            {"name": "h3", "path": "via h2", "relay": "h2", "data_path": "failing: x"},
            {"name": "h4", "path": "unreachable: routed across a router"},
            {"name": "h5", "path": "vxlan", "relay": "", "data_path": "ok"},
        ]}});
        let v = |p: &str| peer_view(&status, p).unwrap();
        assert!(v("h2").direct() && !v("h2").relayed());
        assert!(v("h3").relayed() && !v("h3").direct());
        assert_eq!(v("h3").relay.as_deref(), Some("h2"));
        assert!(!v("h4").direct() && !v("h4").relayed());
        assert!(v("h5").direct(), "an empty relay is none");
        assert!(!v("h1").direct(), "not ourselves");
        assert_eq!(peer_view(&status, "h9"), None);
        // A build from before relays has no `relay` at all: direct.
        let old =
            json!({"cluster": {"nodes": [{"name": "h3", "path": "vxlan", "data_path": "ok"}]}});
        assert!(peer_view(&old, "h3").unwrap().direct());
        let stuck = json!({"cluster": {"nodes": [
            {"name": "h3", "path": "routed", "data_path": "failing: x", "path_why": "no relay"}
        ]}});
        assert!(
            !peer_view(&stuck, "h3").unwrap().direct(),
            "stuck is not direct"
        );
        assert!(v("h3").describe().contains("relay h2"));
    }

    #[test]
    fn the_topology_has_three_hosts_with_one_container_each() {
        let t = muslin_lab::topology::Topology::parse(TOPOLOGY).unwrap();
        let p = muslin_lab::plan::resolve("mbla", &t, &[]).unwrap();
        let hosts: Vec<&str> = p.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(hosts, [FROM, VIA, TO]);
        assert!(p.nodes.iter().all(|n| n.containers == ["c1"]));
    }
}
