//! The name service: the agent's DNS server against aardvark-dns (Podman's
//! name server) serving the same names, at the same addresses, to the same
//! client container, in the same run: queries per second at saturation,
//! latency at a fixed moderate rate (so its p99 is the server's, not a
//! queue's), and memory per name.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use muslin_lab::ops::{self, Ctx, UpOptions};
use serde_json::json;

use crate::cni::Namespaces;
use crate::policy::{cni_add, extra_ns};
use crate::report::Report;
use crate::stats::Series;
use crate::sys::{agent_pid, ip, rss_kib, sh};
use crate::{fail, BenchError, Options, Plan};

const LAB: &str = "mbd";
/// The same lab and containers without names: the endpoints' own cost.
const PLAIN_LAB: &str = "mbdp";
const HOST: &str = "h1";
/// The lab's one container: dnsperf and dig run in its namespace.
const CLIENT: &str = "client";
const TOPOLOGY: &str = r#"
[[segment]]
name = "lan"
cidr = "192.168.62.0/24"
[[host]]
name = "h"
count = 1
containers = [{ name = "client" }]
[[host.nic]]
segment = "lan"
default-route = true
"#;
const DOMAIN: &str = muslin_model::dns::DEFAULT_DOMAIN;
/// The default network's server (network N listens at .1+N); the
/// agent's own address function is checked against it in the tests.
const MUSLIN_ADDR: &str = "169.254.53.1";
/// Local to the host's namespace like the agent's, so the client reaches
/// both through the same default route; below the agent's range
/// (169.254.53.1 up, one address per network).
const AARDVARK_ADDR: &str = "169.254.52.1";
/// The `msl` prefix keeps the agent from taking it for an underlay NIC.
const AARDVARK_LINK: &str = "mslbaard";
const AARDVARK_BIN: &str = "/usr/lib/podman/aardvark-dns";
pub const AARDVARK: &str = "aardvark-dns 1.4.0";
const ALIASES: usize = 9;
/// Names of each container: its name and its aliases.
pub const NAMES_PER_CONTAINER: usize = 1 + ALIASES;
/// Queries per second of the latency runs: well under either server's
/// saturation, so a query rarely waits behind another.
const RATE: u32 = 5000;

/// Container `i`'s names: its name and its aliases.
fn names_of(i: usize) -> Vec<String> {
    std::iter::once(format!("c{i}"))
        .chain((1..=ALIASES).map(|j| format!("c{i}-a{j}")))
        .collect()
}

/// Every name once, in an order that defeats any locality a server's
/// tables might have for names added one after another (xorshift, fixed
/// seed: the same order in every run).
fn shuffled(containers: usize) -> Vec<String> {
    let mut v: Vec<String> = (0..containers).flat_map(names_of).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

/// Ten (container, name) positions spread from the first container's
/// first name to the last container's last alias.
fn sample(containers: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..NAMES_PER_CONTAINER).map(move |k| (k * (containers - 1) / (NAMES_PER_CONTAINER - 1), k))
}

/// dnsperf's input: one A query a line.
fn query_file(names: &[String], suffix: &str) -> String {
    names.iter().map(|n| format!("{n}{suffix} A\n")).collect()
}

/// aardvark-dns's configuration of one network (its file is named after
/// the network): the listening addresses, then a line per container: id,
/// IPv4 addresses, IPv6 addresses (none: the field stays empty), names;
/// all comma-separated, fields separated by one space. The client must be
/// listed too: aardvark answers a name only to an address it knows as a
/// container of that name's network.
fn aardvark_config(listen: &str, containers: &[Container]) -> String {
    let mut out = format!("{listen}\n");
    for (id, addr, names) in containers {
        out.push_str(&format!("{id} {addr}  {}\n", names.join(",")));
    }
    out
}

/// What one dnsperf run gave.
#[derive(Debug, Default)]
struct Perf {
    qps: f64,
    sent: u64,
    lost: u64,
    /// Per answered query with `-v`, microseconds.
    latencies: Series,
}

fn stat<'a>(out: &'a str, label: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .map(str::trim)
}

fn first_number(s: &str) -> Option<f64> {
    s.split_whitespace().next()?.parse().ok()
}

/// Reads dnsperf's statistics (and, with `-v`, the `> RCODE NAME TYPE
/// SECONDS` line of each answer). A server that answers anything but
/// NOERROR is not serving the names: an error, not a fast result.
fn parse_dnsperf(out: &str) -> Result<Perf, String> {
    let num = |label: &str| {
        stat(out, label)
            .and_then(first_number)
            .ok_or_else(|| format!("dnsperf printed no `{label}`"))
    };
    let sent = num("Queries sent:")? as u64;
    let lost = num("Queries lost:")? as u64;
    let qps = num("Queries per second:")?;
    let codes = stat(out, "Response codes:").unwrap_or("");
    for code in codes.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        if !code.starts_with("NOERROR ") {
            return Err(format!("answers other than NOERROR: {codes}"));
        }
    }
    if sent == 0 || sent == lost {
        return Err(format!("no answers to {sent} queries"));
    }
    let latencies = Series(
        out.lines()
            .filter_map(|l| l.strip_prefix("> NOERROR "))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|s| s * 1e6)
            .collect(),
    );
    Ok(Perf {
        qps,
        sent,
        lost,
        latencies,
    })
}

/// dnsperf in the client's namespace against `server`: saturated, or at
/// `rate` with every answer's latency.
fn dnsperf(server: &str, queries: &Path, secs: u32, rate: Option<u32>) -> Result<Perf, String> {
    let (secs, file) = (secs.to_string(), queries.display().to_string());
    let ns = format!("{LAB}-{HOST}-{CLIENT}");
    // Four sockets with 100 queries outstanding each: enough to keep
    // either server busy. One thread: the machine's other core is the
    // server's.
    let mut args = vec![
        "netns", "exec", &ns, "dnsperf", "-s", server, "-d", &file, "-l", &secs, "-c", "4", "-T",
        "1", "-q", "100", "-t", "1",
    ];
    let rate = rate.map(|r| r.to_string());
    if let Some(r) = &rate {
        args.extend(["-Q", r, "-v"]);
    }
    let o = Command::new("ip")
        .args(&args)
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("dnsperf: {e}"))?;
    let out = String::from_utf8_lossy(&o.stdout);
    if !o.status.success() {
        // dnsperf says why on stdout or stderr, or `ip netns exec` does
        // (a namespace gone under us).
        let err = String::from_utf8_lossy(&o.stderr);
        let why: Vec<&str> = err.lines().chain(out.lines()).rev().take(3).collect();
        return Err(format!(
            "dnsperf against {server} ({}): {}",
            o.status,
            why.join(" / ")
        ));
    }
    let mut p = parse_dnsperf(&out).map_err(|e| format!("dnsperf against {server}: {e}"))?;
    // A query lost in a latency run took at least the timeout: counted
    // so, a lossy server cannot show a p99 better than its own.
    if rate.is_some() {
        for _ in 0..p.lost {
            p.latencies.push(1e6);
        }
    }
    Ok(p)
}

/// dig in lab `lab`'s client: the address `server` gives `name`
/// (`Ok(None)`: an answer without one, NXDOMAIN say), or no answer.
fn dig(lab: &str, server: &str, name: &str) -> Result<Option<Ipv4Addr>, String> {
    let ns = format!("{lab}-{HOST}-{CLIENT}");
    let at = format!("@{server}");
    let out = sh(&[
        "ip", "netns", "exec", &ns, "dig", "+short", "+time=1", "+tries=1", &at, name, "A",
    ])?;
    Ok(out.lines().find_map(|l| l.trim().parse().ok()))
}

/// Waits until the agent of lab `lab` answers at all (its server starts
/// with the agent; its first answers may set up buffers and caches that
/// belong in the empty agent's memory, not in the names').
fn until_serving(lab: &str) -> Result<(), String> {
    let t = Instant::now();
    while dig(lab, MUSLIN_ADDR, &format!("nobody.{DOMAIN}")).is_err() {
        if t.elapsed() > Duration::from_secs(15) {
            return Err(format!(
                "the agent of lab {lab} does not answer DNS at {MUSLIN_ADDR} after 15 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Waits until `server` answers each `(name, address)` pair rightly.
fn until_answers(server: &str, who: &str, want: &[(String, Ipv4Addr)]) -> Result<(), String> {
    let t = Instant::now();
    for (name, addr) in want {
        loop {
            let got = dig(LAB, server, name).ok().flatten();
            if got == Some(*addr) {
                break;
            }
            if t.elapsed() > Duration::from_secs(15) {
                return Err(format!(
                    "{who} at {server} does not answer {name} with {addr} (got {got:?}) after 15 s"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// A lab, down when the stage ends however it ends.
struct Lab(&'static str);

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = ops::down(self.0);
    }
}

/// A container attached by the bench: its namespace (its id), address
/// and names.
type Container = (String, Ipv4Addr, Vec<String>);

/// A one-host lab with `n` containers attached through the plugin as a
/// runtime attaches them. Fields drop in order: the lab goes down before
/// its containers' namespaces go.
struct SetUp {
    _lab: Lab,
    _netns: Namespaces,
    pid: u32,
    client: Ipv4Addr,
    /// The agent's VmRSS (KiB) once the lab was up, before the `n`.
    rss_empty: u64,
    containers: Vec<Container>,
}

/// The lab, with each container named `c{i}` and aliased when `named`.
fn set_up(o: &Options, lab: &'static str, n: usize, named: bool) -> Result<SetUp, String> {
    let netns = Namespaces::named((0..n).map(|i| extra_ns(lab, HOST, i)).collect())?;
    let ctx = Ctx {
        bin: o.bin.clone(),
        progress: Box::new(|_| {}),
    };
    let up = UpOptions {
        name: lab.into(),
        hosts: None,
        topology: Some(("dns bench topology".into(), TOPOLOGY.into())),
        backend: "routed".into(),
        encryption: "none".into(),
        datastore: "gossip".into(),
        etcd_members: 1,
        converge_timeout: 30,
    };
    let guard = Lab(lab);
    ops::up(&ctx, &up).map_err(|e| e.to_string())?;
    let st = ops::status(Some(lab)).map_err(|e| e.to_string())?;
    let client = st
        .nodes
        .iter()
        .flat_map(|n| &n.containers)
        .find(|c| c.name == CLIENT)
        .and_then(|c| c.address)
        .and_then(|a| match a {
            std::net::IpAddr::V4(a) => Some(a),
            _ => None,
        })
        .ok_or("the client container has no IPv4 address")?;
    let pid = agent_pid(lab, HOST).ok_or("no agent process")?;
    until_serving(lab)?;
    let rss_empty = rss_kib(pid);
    let t = Instant::now();
    let mut containers: Vec<Container> = Vec::with_capacity(n + 1);
    for (i, ns) in netns.0.iter().enumerate() {
        let names = names_of(i);
        let args = if named {
            json!({"cni": {"name": names[0], "aliases": names[1..]}})
        } else {
            json!({})
        };
        let added = cni_add(&o.bin, lab, HOST, ns, args)?;
        let addr = added["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next()?.parse().ok())
            .ok_or_else(|| format!("ADD {ns}: no IPv4 address in {added}"))?;
        containers.push((ns.clone(), addr, names));
    }
    (o.progress)(&format!(
        "      dns: {n} containers{} attached in {:.0} s",
        if named {
            ", ten names each,"
        } else {
            " without names"
        },
        t.elapsed().as_secs_f64()
    ));
    Ok(SetUp {
        _lab: guard,
        _netns: netns,
        pid,
        client,
        rss_empty,
        containers,
    })
}

/// The bench's own files, removed at the end.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// aardvark's listening address on a link of its own in the host's
/// namespace.
struct Listen;

impl Listen {
    fn add() -> Result<Listen, String> {
        let ns = format!("{LAB}-{HOST}");
        let _ = ip(&ns, &format!("link del {AARDVARK_LINK}"));
        ip(&ns, &format!("link add {AARDVARK_LINK} type bridge"))?;
        let l = Listen;
        ip(
            &ns,
            &format!("addr add {AARDVARK_ADDR}/32 dev {AARDVARK_LINK}"),
        )?;
        ip(&ns, &format!("link set {AARDVARK_LINK} up"))?;
        Ok(l)
    }
}

impl Drop for Listen {
    fn drop(&mut self) {
        let _ = ip(
            &format!("{LAB}-{HOST}"),
            &format!("link del {AARDVARK_LINK}"),
        );
    }
}

/// A running aardvark-dns. `run` forks a daemon (its own session, so no
/// child of ours) and returns once it wrote its pid file, before it
/// listens; the pid file is how it is found and stopped.
struct Aardvark {
    pid: u32,
}

impl Aardvark {
    fn start(dir: &Path) -> Result<Aardvark, String> {
        let o = Command::new("ip")
            .args(["netns", "exec", &format!("{LAB}-{HOST}"), AARDVARK_BIN])
            .arg("--config")
            .arg(dir)
            .args(["-p", "53", "run"])
            .output()
            .map_err(|e| format!("{AARDVARK_BIN}: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "aardvark-dns run: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        let pid_file = dir.join("aardvark.pid");
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| format!("aardvark-dns wrote no pid to {}", pid_file.display()))?;
        Ok(Aardvark { pid })
    }

    fn alive(&self) -> bool {
        std::fs::read(format!("/proc/{}/cmdline", self.pid))
            .map(|c| c.windows(12).any(|w| w == b"aardvark-dns"))
            .unwrap_or(false)
    }
}

impl Drop for Aardvark {
    fn drop(&mut self) {
        // Only while the pid is still aardvark's: a pid is reused.
        for sig in [nix::sys::signal::SIGTERM, nix::sys::signal::SIGKILL] {
            if !self.alive() {
                return;
            }
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), sig);
            let t = Instant::now();
            while self.alive() && t.elapsed() < Duration::from_secs(2) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// aardvark with `containers` in a fresh configuration directory, once it
/// answers `check`.
fn aardvark_with(
    dir: &Path,
    containers: &[Container],
    check: &[(String, Ipv4Addr)],
) -> Result<Aardvark, String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    std::fs::write(
        dir.join("muslin"),
        aardvark_config(AARDVARK_ADDR, containers),
    )
    .map_err(|e| e.to_string())?;
    let a = Aardvark::start(dir)?;
    until_answers(AARDVARK_ADDR, AARDVARK, check)?;
    Ok(a)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Bytes of resident memory per name, from two VmRSS readings (KiB).
fn per_name(before: u64, after: u64, names: usize) -> f64 {
    after.saturating_sub(before) as f64 * 1024.0 / names.max(1) as f64
}

pub fn run(o: &Options, plan: &Plan, report: &mut Report) -> Result<(), BenchError> {
    let f = fail("dns");
    for (what, ok) in [
        (
            "dnsperf (Debian package dnsperf)",
            Command::new("dnsperf")
                .arg("-h")
                .output()
                .map(|o| !o.stdout.is_empty() || !o.stderr.is_empty())
                .unwrap_or(false),
        ),
        (
            "dig (Debian package dnsutils)",
            Command::new("dig").arg("-v").output().is_ok(),
        ),
        (AARDVARK_BIN, Path::new(AARDVARK_BIN).exists()),
    ] {
        if !ok {
            return Err(f(format!(
                "{what} is missing; scripts/install-deps.sh installs it"
            )));
        }
    }
    let n = plan.dns_containers;
    let names = n * NAMES_PER_CONTAINER;
    let dir = TempDir(std::env::temp_dir().join("muslin-bench-dns"));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).map_err(|e| f(e.to_string()))?;

    // The same containers without names first: what the endpoints
    // alone cost the agent, to tell the name service's share.
    let plain = set_up(o, PLAIN_LAB, n, false).map_err(&f)?;
    let rss_plain = rss_kib(plain.pid);
    let rss_plain_empty = plain.rss_empty;
    drop(plain);

    let mut named = set_up(o, LAB, n, true).map_err(&f)?;
    let (pid, client, rss_empty) = (named.pid, named.client, named.rss_empty);
    let containers = &mut named.containers;
    // Ten names from first to last (the first container's name, the last
    // one's last alias): every attachment's names are in, and an answer
    // is an address, not an empty NOERROR that dnsperf would count.
    let check = |suffix: &str| -> Vec<(String, Ipv4Addr)> {
        sample(n)
            .map(|(i, j)| (format!("{}{suffix}", containers[i].2[j]), containers[i].1))
            .collect()
    };
    until_answers(
        MUSLIN_ADDR,
        "Muslin's name server",
        &check(&format!(".{DOMAIN}")),
    )
    .map_err(&f)?;
    let rss_names = rss_kib(pid);

    // aardvark: its memory with only the client, then with every name.
    let _listen = Listen::add().map_err(&f)?;
    let client_entry: Container = (
        "client".to_string(),
        client,
        vec!["benchclient".to_string()],
    );
    let adir = dir.0.join("aardvark");
    let rss_aardvark_empty = {
        let a = aardvark_with(
            &adir,
            std::slice::from_ref(&client_entry),
            &[("benchclient".into(), client)],
        )
        .map_err(&f)?;
        rss_kib(a.pid)
    };
    let aardvark_check = check("");
    containers.push(client_entry);
    let aardvark = aardvark_with(&adir, containers, &aardvark_check).map_err(&f)?;
    let rss_aardvark = rss_kib(aardvark.pid);

    // The same names in the same order: the agent's under its domain,
    // aardvark's bare (its table holds them so; a search-domain suffix
    // would take its slow path, a scan of every name).
    let order = shuffled(n);
    let muslin_q = dir.0.join("muslin.queries");
    let aardvark_q = dir.0.join("aardvark.queries");
    std::fs::write(&muslin_q, query_file(&order, &format!(".{DOMAIN}")))
        .map_err(|e| f(e.to_string()))?;
    std::fs::write(&aardvark_q, query_file(&order, "")).map_err(|e| f(e.to_string()))?;

    // [qps, lost %, p50, p99] for Muslin, then aardvark; per-round ratios.
    let mut s: [[Series; 4]; 2] = Default::default();
    let mut ratio = Series::default();
    let servers = [(MUSLIN_ADDR, &muslin_q), (AARDVARK_ADDR, &aardvark_q)];
    for r in 0..plan.dns_rounds {
        let mut qps = [0.0; 2];
        // Alternate who goes first, so drift hits both.
        for k in 0..2 {
            let i = (k + r) % 2;
            let (addr, q) = servers[i];
            let sat = dnsperf(addr, q, plan.dns_seconds, None).map_err(&f)?;
            let lat = dnsperf(addr, q, plan.dns_seconds, Some(RATE)).map_err(&f)?;
            qps[i] = sat.qps;
            s[i][0].push(sat.qps);
            s[i][1].push(sat.lost as f64 * 100.0 / sat.sent as f64);
            s[i][2].push(lat.latencies.median());
            s[i][3].push(lat.latencies.pct(0.99));
        }
        ratio.push(qps[0] / qps[1]);
    }
    drop(aardvark);

    let who = ["Muslin", AARDVARK];
    let names_s = muslin_lab::sample::thousands(names);
    let rate_s = muslin_lab::sample::thousands(RATE as usize);
    let metrics = [
        (
            format!("queries per second, saturated, {names_s} names"),
            "1/s",
        ),
        ("lost queries, saturated".to_string(), "%"),
        (format!("latency p50 at {rate_s} queries/s"), "µs"),
        (
            format!("latency p99 at {rate_s} queries/s (Muslin's target ≤ 1,000 µs)"),
            "µs",
        ),
    ];
    for (k, (metric, unit)) in metrics.iter().enumerate() {
        for i in 0..2 {
            // Muslin beside aardvark measured in the same rounds.
            let base = (i == 0).then(|| s[1][k].median());
            report.add("dns", who[i], metric, unit, &s[i][k], base);
        }
    }
    report.add(
        "dns",
        "Muslin",
        "queries per second, Muslin / aardvark-dns, per round (target ≥ 2)",
        "x",
        &ratio,
        None,
    );
    let one = |v: f64| Series(vec![v]);
    for (i, (before, after)) in [(rss_empty, rss_names), (rss_aardvark_empty, rss_aardvark)]
        .into_iter()
        .enumerate()
    {
        report.add(
            "dns",
            who[i],
            &format!("server RSS with {names_s} names"),
            "MiB",
            &one(mib(after)),
            None,
        );
        report.add(
            "dns",
            who[i],
            "RSS growth per name, containers' other state included (target ≤ 1,024 B)",
            "B",
            &one(per_name(before, after, names)),
            None,
        );
    }
    // Two readings of two agents: within their noise the share may come
    // out at zero or below.
    report.add(
        "dns",
        "Muslin",
        "RSS growth per name less the same containers without names",
        "B",
        &one(per_name(rss_empty, rss_names, names) - per_name(rss_plain_empty, rss_plain, names)),
        None,
    );
    report.add(
        "dns",
        "Muslin, the same containers without names",
        &format!("agent RSS growth per container, {n} containers"),
        "B",
        &one(per_name(rss_plain_empty, rss_plain, n)),
        None,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_once_in_a_shuffled_order() {
        let v = shuffled(100);
        assert_eq!(v.len(), 1000);
        let mut sorted = v.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 1000);
        assert_ne!(v[..10], names_of(0)[..]);
        assert_eq!(v, shuffled(100), "the same order every run");
        assert_eq!(
            query_file(&v[..1], ".muslin.internal"),
            format!("{}.muslin.internal A\n", v[0])
        );
    }

    #[test]
    fn aardvark_config_has_its_listen_line_and_an_empty_ipv6_field() {
        let c = aardvark_config(
            "169.254.52.1",
            &[(
                "x0".into(),
                Ipv4Addr::new(10, 0, 0, 2),
                names_of(0)[..3].to_vec(),
            )],
        );
        assert_eq!(c, "169.254.52.1\nx0 10.0.0.2  c0,c0-a1,c0-a2\n");
    }

    #[test]
    fn dnsperf_statistics_and_latencies() {
        let out = "> NOERROR c0 A 0.000213\n> NOERROR c0-a1 A 0.000500\n> T c1 A\n\
            Statistics:\n\n  Queries sent:         3\n  Queries completed:    2 (66.67%)\n  \
            Queries lost:         1 (33.33%)\n\n  Response codes:       NOERROR 2 (100.00%)\n  \
            Queries per second:   19.993822\n";
        let p = parse_dnsperf(out).unwrap();
        assert_eq!((p.sent, p.lost), (3, 1));
        assert!((p.qps - 19.993822).abs() < 1e-9);
        assert_eq!(p.latencies.0.len(), 2);
        assert!((p.latencies.0[1] - 500.0).abs() < 1e-6);
        let bad = out.replace(
            "NOERROR 2 (100.00%)",
            "NOERROR 1 (50.00%), NXDOMAIN 1 (50.00%)",
        );
        assert!(parse_dnsperf(&bad).unwrap_err().contains("NXDOMAIN"));
        let silent = "  Queries sent:         5\n  Queries lost:         5 (100.00%)\n  Queries per second:   0.0\n";
        assert!(parse_dnsperf(silent).is_err());
    }

    #[test]
    fn the_servers_addresses_are_the_agents_and_outside_its_range() {
        let muslin = muslin_model::dns::listen_address(0);
        assert_eq!(muslin.to_string(), MUSLIN_ADDR);
        let aardvark: Ipv4Addr = AARDVARK_ADDR.parse().unwrap();
        assert!(aardvark < muslin);
    }

    #[test]
    fn the_sample_spans_first_to_last() {
        let v: Vec<(usize, usize)> = sample(1000).collect();
        assert_eq!(v.len(), 10);
        assert_eq!((v[0], v[9]), ((0, 0), (999, 9)));
        assert_eq!(sample(1).last(), Some((0, 9)));
    }

    #[test]
    fn memory_and_numbers() {
        assert_eq!(per_name(1000, 1010, 10), 1024.0);
        assert_eq!(per_name(1010, 1000, 10), 0.0);
        assert_eq!(muslin_lab::sample::thousands(10000), "10,000");
        assert_eq!(muslin_lab::sample::thousands(999), "999");
        assert_eq!(muslin_lab::sample::thousands(1000000), "1,000,000");
    }
}
