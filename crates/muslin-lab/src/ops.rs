//! The lab's commands. Each takes the lab's lock while it changes the lab,
//! records what it is about to create before creating it, and on failure
//! removes what it made.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::build;

use muslin_model::api::{Request, Response};
use muslin_model::cni::Dns;

use crate::check::Matrix;
pub use crate::matrix::{
    check, check_with, CheckOptions, SAMPLE_ABOVE_HOSTS, SAMPLE_EACH, SAMPLE_PAIRS,
};
use crate::matrix::{explain, matrix};
use crate::names::invalid_name;
use crate::networks;
use crate::plan::{resolve, LabPlan, NodePlan};
use crate::policies;
use crate::probe::Proto;
use crate::registry::{self, Attachment, ContainerRecord, LabRecord, Locked};
use crate::resolv;
use crate::sys;
use crate::topology::{Topology, DEFAULT_NETWORK};
use crate::LabError;
use crate::{diagnose, neigh, neigh_sys};

/// What every command needs: the `muslin` binary agents and plugins run
/// as, and where progress lines go.
pub struct Ctx {
    pub bin: PathBuf,
    pub progress: Box<dyn Fn(&str) + Send + Sync>,
}

impl Ctx {
    fn say(&self, line: &str) {
        (self.progress)(line)
    }
}

pub struct UpOptions {
    pub name: String,
    pub hosts: Option<usize>,
    /// (path shown in errors, text) of a topology file.
    pub topology: Option<(String, String)>,
    pub backend: String,
    /// Encryption of pod traffic between hosts: none or wireguard.
    pub encryption: String,
    pub datastore: String,
    /// etcd members with `--datastore etcd`: 1 or 3.
    pub etcd_members: usize,
    /// Seconds to wait for the full matrix to pass; 0 skips the check.
    pub converge_timeout: u64,
}

#[derive(Debug, Serialize)]
pub struct UpReport {
    pub name: String,
    pub hosts: usize,
    pub containers: usize,
    pub build_seconds: f64,
    /// From the agents' start until the whole matrix passed.
    pub converge_seconds: Option<f64>,
    pub total_seconds: f64,
    pub matrix: Option<Matrix>,
    /// What the lab needs of the kernel's neighbour tables, and what `up`
    /// raised for it.
    pub neighbour: crate::neigh_sys::Report,
}

pub fn up(ctx: &Ctx, o: &UpOptions) -> Result<UpReport, LabError> {
    let t0 = Instant::now();
    if let Some(why) = invalid_name(&o.name) {
        return Err(LabError::Usage(format!("--name: {why}")));
    }
    // The agents' own parsers: the lab accepts exactly what they accept.
    o.backend
        .parse::<muslin_model::dataplane::Backend>()
        .map_err(|m| LabError::Usage(format!("--backend: {m}")))?;
    o.encryption
        .parse::<muslin_model::encryption::Encryption>()
        .map_err(|m| LabError::Usage(format!("--encryption: {m}")))?;
    o.datastore
        .parse::<muslin_model::agent_config::DatastoreKind>()
        .map_err(|m| LabError::Usage(format!("--datastore: {m}")))?;
    if !(o.etcd_members == 1 || o.etcd_members == 3) {
        return Err(LabError::Usage(format!(
            "--etcd-members: {} must be 1 or 3",
            o.etcd_members
        )));
    }
    let text = match (&o.topology, o.hosts) {
        (Some(_), Some(_)) => {
            return Err(LabError::Usage(
                "--hosts applies to the default lab; set `count` in the topology file instead"
                    .into(),
            ))
        }
        (Some((path, text)), None) => {
            Topology::parse(text).map_err(|e| LabError::Usage(format!("{path}: {e}")))?;
            text.clone()
        }
        (None, n) => {
            let n = n.unwrap_or(3);
            if !(1..=250).contains(&n) {
                return Err(LabError::Usage(format!(
                    "--hosts: {n} is out of range 1..250"
                )));
            }
            Topology::default_text(n)
        }
    };
    let mut topology = Topology::parse(&text)?;
    let mut etcd = vec![];
    if o.datastore == "etcd" {
        // etcd members are hosts of their own on the first shared segment,
        // reachable over the underlay like any host.
        let seg = topology
            .hosts
            .iter()
            .flat_map(|h| &h.nics)
            .map(|n| n.segment.get_ref().clone())
            .find(|s| {
                topology
                    .segments
                    .iter()
                    .any(|x| x.name.get_ref() == s && !x.per_host)
            })
            .ok_or_else(|| {
                LabError::Usage("--datastore etcd needs a segment shared by the hosts".into())
            })?;
        let mut more = text.clone();
        for i in 1..=o.etcd_members {
            etcd.push(format!("etcd{i}"));
            more.push_str(&format!("\n[[host]]\nname = \"etcd{i}\"\ncontainers = 0\n[[host.nic]]\nsegment = \"{seg}\"\n"));
        }
        topology = Topology::parse(&more)?;
    }
    let plan = resolve(&o.name, &topology, &[])?;
    if registry::list().contains(&o.name) || sys::netns_exists(&plan.switch_ns) {
        return Err(LabError::Exists(o.name.clone()));
    }
    // Only namespaces the lab creates may be recorded: `down` kills what
    // runs in recorded namespaces.
    let mut wanted = build::namespaces(&plan);
    wanted.extend(
        plan.nodes
            .iter()
            .flat_map(|n| n.containers.iter().map(|c| n.container_ns(&o.name, c))),
    );
    if let Some(taken) = wanted.iter().find(|n| sys::netns_exists(n)) {
        return Err(LabError::Usage(format!("namespace {taken} already exists and is not this lab's; remove it or choose another --name")));
    }
    // What an earlier lab of this name left in /etc/netns goes first.
    resolv::remove_leftovers(&o.name)?;
    let lock = registry::lock(&o.name)?;
    let mut rec = LabRecord {
        plan,
        containers: vec![],
        backend: o.backend.clone(),
        datastore: o.datastore.clone(),
        etcd,
    };
    lock.save(&rec)?;
    match build_all(ctx, &lock, &mut rec, o, t0) {
        Ok(r) => Ok(r),
        Err(e) => {
            ctx.say(&format!(
                "up failed: removing what was made of lab {}",
                o.name
            ));
            drop(lock);
            match down(&o.name) {
                Ok((_, neighbour)) => {
                    for line in neighbour.lines(false) {
                        ctx.say(&line);
                    }
                }
                Err(d) => ctx.say(&format!("clean-up also failed: {d}")),
            }
            Err(e)
        }
    }
}

fn build_all(
    ctx: &Ctx,
    lock: &Locked,
    rec: &mut LabRecord,
    o: &UpOptions,
    t0: Instant,
) -> Result<UpReport, LabError> {
    let plan = rec.plan.clone();
    let hosts: Vec<&NodePlan> = rec.agent_hosts().collect();
    let hosts: Vec<&NodePlan> = plan
        .nodes
        .iter()
        .filter(|n| hosts.iter().any(|h| h.name == n.name))
        .collect();
    // The lab's need is recorded before anything exists: a lab killed
    // from here on keeps it until its `down`.
    let need = neigh::need(&neigh::shape(&plan, &rec.backend, &rec.etcd));
    let neighbour = neigh_sys::raise(&lab_key(&plan.name), need);
    for line in neighbour.lines(true) {
        ctx.say(&format!("[1/4] {line}"));
    }
    ctx.say(&format!(
        "[1/4] underlay: {} hosts, {} routers, {} etcd members, {} segments, {} blocked pairs; {} container namespaces",
        hosts.len(),
        plan.nodes.iter().filter(|n| n.router).count(),
        rec.etcd.len(),
        plan.bridges.len(),
        plan.blocked.len(),
        hosts.iter().map(|h| h.containers.len()).sum::<usize>()
    ));
    // The neighbour table as it was before the lab's entries: a lab that
    // overflows it shows it in `table_fulls` risen since.
    let table_at_start = diagnose::table(plan.pod_cidr.addr());
    build::underlay(&plan)?;
    let wanted: Vec<(String, String)> = hosts
        .iter()
        .flat_map(|h| h.containers.iter().map(|c| (h.name.clone(), c.clone())))
        .collect();
    make_containers(lock, rec, &wanted)?;
    let build_seconds = t0.elapsed().as_secs_f64();
    let endpoints = start_etcd(ctx, &plan, &rec.etcd)?;

    ctx.say(&format!(
        "[2/4] agents: starting {} `muslin agent` processes",
        hosts.len()
    ));
    let agents_started = Instant::now();
    start_agents(ctx, &plan, &hosts, &o.backend, &o.encryption, &endpoints)?;
    create_networks(ctx, &plan, &hosts)?;
    apply_policies(ctx, &plan, &hosts)?;

    ctx.say(&format!(
        "[3/4] containers: attaching {} through CNI",
        wanted.len()
    ));
    attach_made(ctx, lock, rec, &wanted)?;

    let mut report = UpReport {
        name: plan.name.clone(),
        hosts: hosts.len(),
        containers: rec.containers.len(),
        build_seconds,
        converge_seconds: None,
        total_seconds: 0.0,
        matrix: None,
        neighbour,
    };
    if o.converge_timeout > 0 && !rec.containers.is_empty() {
        ctx.say(if plan.networks.is_empty() && plan.policy_file.is_none() {
            "[4/4] check: waiting until every container reaches every container and host, and resolves the containers' names"
        } else if plan.policy_file.is_none() {
            "[4/4] check: waiting until every container reaches every container of its networks (and hosts, on the default network) and resolves their names, and no other"
        } else {
            "[4/4] check: waiting until every container reaches what the policies allow in its networks (and hosts, on the default network), and nothing else, and resolves the names of its networks' containers"
        });
        let deadline = Duration::from_secs(o.converge_timeout);
        // Causes are looked for once, in the matrix that is reported.
        let waiting = CheckOptions {
            diagnose: false,
            ..CheckOptions::default()
        };
        loop {
            let mut m = matrix(
                rec,
                &[Proto::Tcp, Proto::Udp, Proto::Icmp],
                true,
                Duration::from_millis(400),
                &waiting,
            )?;
            let done = m.ok();
            if done {
                report.converge_seconds = Some(agents_started.elapsed().as_secs_f64());
            } else if agents_started.elapsed() > deadline {
                explain(rec, &mut m, table_at_start.as_ref());
            }
            report.matrix = Some(m);
            if done || agents_started.elapsed() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    report.total_seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// The WireGuard control socket's name of the agent in `ns`: every lab
/// host's device is `msl-wg0`, but their sockets share the machine's
/// /var/run/wireguard, so each gets a name of its own (15 characters at
/// most, as an interface name).
pub fn wireguard_uapi(ns: &str) -> String {
    let h = ns.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("mwg{:08x}", h as u32)
}

/// The flags a lab gives every agent, unless the topology sets them: the
/// pod network, the other hosts to join, the backend and the lab's secret.
fn lab_agent_flags(
    plan: &LabPlan,
    hosts: &[&NodePlan],
    h: &NodePlan,
    backend: &str,
    encryption: &str,
    secret: &std::path::Path,
    etcd: &[String],
) -> Vec<String> {
    let join: Vec<String> = hosts
        .iter()
        .filter(|n| n.name != h.name)
        .filter_map(|n| n.address().map(|a| a.to_string()))
        .collect();
    let mut defaults: Vec<(&str, String)> = vec![
        ("--pod-cidr", plan.pod_cidr.to_string()),
        ("--block-size", plan.block_prefix.to_string()),
        ("--backend", backend.to_string()),
        ("--encryption", encryption.to_string()),
        ("--wireguard-uapi", wireguard_uapi(&h.ns)),
        (
            "--gossip-interval-ms",
            gossip_interval_ms(hosts.len()).to_string(),
        ),
    ];
    if etcd.is_empty() {
        defaults.push(("--cluster-secret-file", secret.display().to_string()));
        if !join.is_empty() {
            defaults.push(("--join", join.join(",")));
        }
    } else {
        defaults.push(("--datastore", "etcd".into()));
        defaults.push(("--etcd-endpoints", etcd.join(",")));
    }
    let mut out = Vec::new();
    for (flag, value) in defaults {
        if !h.agent_args.iter().any(|a| a == flag) {
            out.extend([flag.to_string(), value]);
        }
    }
    out.extend(h.agent_args.iter().cloned());
    out
}

/// The gossip round of a lab's agents. Short rounds make a small lab
/// converge in a second. But every round an agent re-reads the state of
/// the whole cluster (its view of every node, the paths to each), so its
/// idle cost is about hosts / round, and the lab's, whose agents share
/// one machine, hosts² / round: measured at 60 hosts on two cores, rounds
/// of 300 ms cost the agents 1.74 cores, of 1 s 0.96. Above 20 hosts the
/// round grows with the hosts, so a host's cost stays what it is at 20;
/// the block-lease settle (5 rounds at least) and the spread of changes grow with
/// it, which the cold start pays once. So do the agents' failure-detection
/// timings: an agent that shares two cores with a hundred others answers
/// late, and must not be declared down for it.
/// Above 50 hosts the two cores are full all the same (at 100 hosts and
/// 500 ms the idle agents used 1.5 cores, and attaching containers
/// starved), so there the round grows with the square of the hosts, up to
/// 700 ms from 84 hosts on. Measured at 100 hosts with fixed rounds, when
/// the agents cost more: 1 s rounds came up in 32 to 57 s, 500 ms ones in
/// 75 and 78 s, and 2 s ones no faster than 1 s (in 51 and 54 s) while
/// failure detection slowed further. Once idle agents cost 0.43 cores at
/// 1 s, 700 ms came up faster (17.5 to 17.8 s against 18.0 to 19.8) for
/// 0.52 idle cores: the blocks settle and changes spread in rounds.
pub fn gossip_interval_ms(hosts: usize) -> u64 {
    const SMALL: usize = 20;
    const FULL: usize = 50;
    const BASE_MS: u64 = 100;
    const MAX_MS: u64 = 700;
    let h = hosts as u64;
    if hosts <= SMALL {
        BASE_MS
    } else if hosts <= FULL {
        (BASE_MS * h).div_ceil(SMALL as u64)
    } else {
        (BASE_MS * h * h)
            .div_ceil((SMALL * FULL) as u64)
            .min(MAX_MS)
    }
}

/// A fresh random secret for the lab's gossip, readable by root only.
fn write_secret(path: &std::path::Path) -> Result<(), LabError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut raw = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .map_err(LabError::io("reading /dev/urandom"))?;
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, hex.as_bytes()))
        .map_err(LabError::io(format!("writing {}", path.display())))
}

/// Starts the etcd members (each in its own host namespace) and waits
/// until each serves clients; returns their client URLs.
fn start_etcd(ctx: &Ctx, plan: &LabPlan, members: &[String]) -> Result<Vec<String>, LabError> {
    if members.is_empty() {
        return Ok(vec![]);
    }
    ctx.say(&format!("[1/4] etcd: starting {} member(s)", members.len()));
    let nodes: Vec<&NodePlan> = members
        .iter()
        .filter_map(|m| plan.nodes.iter().find(|n| &n.name == m))
        .collect();
    let addr = |n: &NodePlan| n.address().expect("etcd member has an address");
    let cluster: Vec<String> = nodes
        .iter()
        .map(|n| format!("{}=http://{}:2380", n.name, addr(n)))
        .collect();
    for n in &nodes {
        let dir = registry::host_dir(&plan.name, &n.name);
        std::fs::create_dir_all(&dir)
            .map_err(LabError::io(format!("creating {}", dir.display())))?;
        let a = addr(n);
        let args: Vec<String> = [
            "etcd",
            "--name",
            &n.name,
            "--data-dir",
            &dir.join("data").display().to_string(),
            "--listen-client-urls",
            &format!("http://{a}:2379"),
            "--advertise-client-urls",
            &format!("http://{a}:2379"),
            "--listen-peer-urls",
            &format!("http://{a}:2380"),
            "--initial-advertise-peer-urls",
            &format!("http://{a}:2380"),
            "--initial-cluster",
            &cluster.join(","),
            "--initial-cluster-token",
            &plan.name,
            "--initial-cluster-state",
            "new",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        sys::spawn_detached(&n.ns, &args, &dir.join("etcd.log"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in &nodes {
        let log = registry::host_dir(&plan.name, &n.name).join("etcd.log");
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("ready to serve client requests")
        {
            if Instant::now() > deadline {
                return Err(LabError::AgentFailed {
                    host: n.name.clone(),
                    reason: "etcd did not become ready within 30 s".into(),
                    log: tail(&log, 15),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(nodes
        .iter()
        .map(|n| format!("http://{}:2379", addr(n)))
        .collect())
}

fn start_agents(
    ctx: &Ctx,
    plan: &LabPlan,
    hosts: &[&NodePlan],
    backend: &str,
    encryption: &str,
    etcd: &[String],
) -> Result<(), LabError> {
    let bin = ctx.bin.display().to_string();
    let secret = registry::lab_dir(&plan.name).join("cluster.secret");
    write_secret(&secret)?;
    // Started from several threads: the agents started first are busy
    // joining, and one thread spawning the rest got only its share of a
    // machine they saturate (a 100-host lab spent 15 s here).
    let started = in_parallel(hosts, START_WORKERS, |h| {
        let dir = registry::host_dir(&plan.name, &h.name);
        std::fs::create_dir_all(&dir)
            .map_err(LabError::io(format!("creating {}", dir.display())))?;
        let mut args = vec![
            bin.clone(),
            "agent".into(),
            "--node-name".into(),
            h.name.clone(),
            "--socket".into(),
            registry::socket(&plan.name, &h.name).display().to_string(),
            "--state-dir".into(),
            dir.join("state").display().to_string(),
        ];
        args.extend(lab_agent_flags(
            plan, hosts, h, backend, encryption, &secret, etcd,
        ));
        let child = sys::spawn_detached(&h.ns, &args, &registry::log_file(&plan.name, &h.name))?;
        sys::spawn_detached(
            &h.ns,
            &[bin.clone(), "probe".into(), "serve".into()],
            &dir.join("probe.log"),
        )?;
        Ok::<_, LabError>((h.name.clone(), child))
    });
    let children = started.into_iter().collect::<Result<Vec<_>, _>>()?;
    let deadline = Instant::now() + Duration::from_secs(15);
    for (host, mut child) in children {
        let sock = registry::socket(&plan.name, &host);
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            let fail = |reason: String| LabError::AgentFailed {
                host: host.clone(),
                reason,
                log: tail(&registry::log_file(&plan.name, &host), 15),
            };
            if let Ok(Some(st)) = child.try_wait() {
                return Err(fail(format!("it exited with {st}")));
            }
            if Instant::now() > deadline {
                return Err(fail("its socket did not appear within 15 s".into()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}

/// How long every agent has to learn a network or policy created on
/// another host: 10 s, or 20 of a big lab's longer rounds.
fn spread_timeout(hosts: usize) -> Duration {
    Duration::from_secs(10).max(Duration::from_millis(20 * gossip_interval_ms(hosts)))
}

/// Creates the plan's networks once, on the first host, then waits until
/// every host's agent lists each: a container may only be attached to a
/// network its host's agent knows.
fn create_networks(ctx: &Ctx, plan: &LabPlan, hosts: &[&NodePlan]) -> Result<(), LabError> {
    let Some(first) = hosts.first() else {
        return Ok(());
    };
    if plan.networks.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = plan.networks.iter().map(|n| n.name.as_str()).collect();
    ctx.say(&format!(
        "[2/4] networks: creating {} on {}, waiting until all {} agents know them",
        names.join(", "),
        first.name,
        hosts.len()
    ));
    let bin = ctx.bin.display().to_string();
    let socket = registry::socket(&plan.name, &first.name);
    for n in &plan.networks {
        let mut args = vec![bin.as_str()];
        let rest = networks::create_args(n, &socket);
        args.extend(rest.iter().map(String::as_str));
        sys::in_ns(&first.ns, &args)?;
    }
    let timeout = spread_timeout(hosts.len());
    let deadline = Instant::now() + timeout;
    for h in hosts {
        let socket = registry::socket(&plan.name, &h.name);
        let rest = networks::list_args(&socket);
        let mut args = vec![bin.as_str()];
        args.extend(rest.iter().map(String::as_str));
        loop {
            let known = sys::in_ns(&h.ns, &args)
                .map_err(|e| e.to_string())
                .and_then(|out| networks::listed(&out));
            let missing: Vec<&str> = match &known {
                Ok(k) => names
                    .iter()
                    .copied()
                    .filter(|n| !k.iter().any(|x| x == n))
                    .collect(),
                Err(_) => names.clone(),
            };
            if missing.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                let why = match known {
                    Ok(_) => format!("it does not list {}", missing.join(", ")),
                    Err(e) => format!("listing its networks failed: {e}"),
                };
                return Err(LabError::AgentFailed {
                    host: h.name.clone(),
                    reason: format!(
                        "networks created on {} did not reach it within {} s: {why}",
                        first.name,
                        timeout.as_secs()
                    ),
                    log: tail(&registry::log_file(&plan.name, &h.name), 15),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// Sets the topology's namespace labels and applies its policies on the
/// first host, as an operator would with `muslin label` and `muslin policy
/// apply`, before any container is attached, so containers start out
/// isolated as the policies say; then waits until every agent lists the
/// policies.
fn apply_policies(ctx: &Ctx, plan: &LabPlan, hosts: &[&NodePlan]) -> Result<(), LabError> {
    let Some(first) = hosts.first() else {
        return Ok(());
    };
    if plan.policy_file.is_none() && plan.namespaces.is_empty() {
        return Ok(());
    }
    let bin = ctx.bin.display().to_string();
    let socket = registry::socket(&plan.name, &first.name);
    let run = |rest: Vec<String>| -> Result<String, LabError> {
        let mut args = vec![bin.as_str()];
        args.extend(rest.iter().map(String::as_str));
        sys::in_ns(&first.ns, &args)
    };
    for (ns, labels) in &plan.namespaces {
        if let Some(a) = policies::label_namespace_args(ns, labels, &socket) {
            run(a)?;
        }
    }
    let Some(text) = &plan.policy_file else {
        return Ok(());
    };
    let file = registry::lab_dir(&plan.name).join("policies.toml");
    std::fs::write(&file, text).map_err(LabError::io(format!("writing {}", file.display())))?;
    let keys: Vec<String> =
        muslin_model::policy::parse_document(text, muslin_model::policy::Format::Toml)
            .map_err(|e| LabError::Usage(format!("{}: {e}", file.display())))?
            .iter()
            .map(|p| p.key())
            .collect();
    ctx.say(&format!(
        "[2/4] policies: applying {} on {}, waiting until all {} agents list them",
        keys.join(", "),
        first.name,
        hosts.len()
    ));
    run(policies::apply_args(&file, &socket))?;
    let timeout = spread_timeout(hosts.len());
    let deadline = Instant::now() + timeout;
    for h in hosts {
        loop {
            let listed = match ask(&plan.name, &h.name, &Request::PolicyList) {
                Ok(Response::Policies { policies }) => Ok(policies),
                Ok(other) => Err(format!("unexpected reply {other:?}")),
                Err(e) => Err(e),
            };
            let missing: Vec<&str> = match &listed {
                Ok(l) => keys
                    .iter()
                    .map(String::as_str)
                    .filter(|k| !l.iter().any(|p| p.key == *k))
                    .collect(),
                Err(_) => keys.iter().map(String::as_str).collect(),
            };
            if missing.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                let why = match listed {
                    Ok(_) => format!("it does not list {}", missing.join(", ")),
                    Err(e) => format!("listing its policies failed: {e}"),
                };
                return Err(LabError::AgentFailed {
                    host: h.name.clone(),
                    reason: format!(
                        "policies applied on {} did not reach it within {} s: {why}",
                        first.name,
                        timeout.as_secs()
                    ),
                    log: tail(&registry::log_file(&plan.name, &h.name), 15),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

fn tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Attaches containers (in parallel), recording each before it exists.
fn attach_many(
    ctx: &Ctx,
    lock: &Locked,
    rec: &mut LabRecord,
    wanted: &[(String, String)],
) -> Result<(), LabError> {
    make_containers(lock, rec, wanted)?;
    attach_made(ctx, lock, rec, wanted)
}

/// Records containers, then makes their namespaces with loopback up.
/// `up` does it before any agent starts: beside a hundred starting agents
/// (likely contending for the kernel's routing lock with their routes and
/// dumps; not proven), making 200 namespaces took 14 s rather than under 1 s.
fn make_containers(
    lock: &Locked,
    rec: &mut LabRecord,
    wanted: &[(String, String)],
) -> Result<(), LabError> {
    let lab = rec.plan.name.clone();
    if let Some((h, c)) = wanted
        .iter()
        .find(|(h, c)| sys::netns_exists(&crate::names::container_ns(&lab, h, c)))
    {
        return Err(LabError::Usage(format!(
            "namespace {} already exists and is not this lab's",
            crate::names::container_ns(&lab, h, c)
        )));
    }
    for (h, c) in wanted {
        let host = rec
            .plan
            .nodes
            .iter()
            .find(|n| &n.name == h)
            .expect("caller checked");
        rec.containers.push(ContainerRecord {
            host: h.clone(),
            name: c.clone(),
            ns: host.container_ns(&lab, c),
            address: None,
            networks: host
                .networks_of(c)
                .into_iter()
                .enumerate()
                .map(|(i, network)| Attachment {
                    network,
                    ifname: networks::ifname(i),
                    address: None,
                    dns: None,
                })
                .collect(),
        });
    }
    lock.save(rec)?;
    let adds: Vec<String> = wanted
        .iter()
        .map(|(h, c)| format!("netns add {}", crate::names::container_ns(&lab, h, c)))
        .collect();
    sys::ip_batch(None, &adds)?;
    let up = in_parallel(wanted, ATTACH_WORKERS, |(h, c)| {
        sys::ip_batch(
            Some(&crate::names::container_ns(&lab, h, c)),
            &["link set lo up".to_string()],
        )
    });
    up.into_iter().collect()
}

/// Attaches containers `make_containers` made (their loopback is up), in
/// parallel; records what each ADD gave.
fn attach_made(
    ctx: &Ctx,
    lock: &Locked,
    rec: &mut LabRecord,
    wanted: &[(String, String)],
) -> Result<(), LabError> {
    let results = in_parallel(wanted, ATTACH_WORKERS, |(h, c)| {
        attach_one(ctx, &rec.plan, h, c)
    });
    let mut first_err = None;
    for ((h, c), r) in wanted.iter().zip(results) {
        match r {
            Ok(done) => {
                if let Some(cr) = rec
                    .containers
                    .iter_mut()
                    .find(|x| &x.host == h && &x.name == c)
                {
                    cr.address = done.first().map(|a| a.address);
                    for (at, a) in cr.networks.iter_mut().zip(done) {
                        at.address = Some(a.address);
                        at.dns = a.dns;
                    }
                }
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    lock.save(rec)?;
    first_err.map_or(Ok(()), Err)
}

/// Attachments made at once. Each is a plugin process and a probe server
/// starting, and an agent answering: a hundred at once on a small machine
/// only queue for the CPU, and the plugin gives up on an agent that does
/// not acknowledge its request within 3 s.
const ATTACH_WORKERS: usize = 16;

/// Agents started at once (see `start_agents`).
const START_WORKERS: usize = 8;

/// `f` over `items` on at most `workers` threads; results in order.
fn in_parallel<T: Sync, R: Send>(
    items: &[T],
    workers: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..workers.min(items.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                out.lock().expect("no worker panics")[i] = Some(r);
            });
        }
    });
    out.into_inner()
        .expect("no worker panics")
        .into_iter()
        .map(|r| r.expect("every item done"))
        .collect()
}

pub(crate) fn container_id(lab: &str, host: &str, c: &str) -> String {
    format!("{lab}-{host}-{c}")
}

/// Runs the plugin in the host's namespace, exactly as a runtime would, for
/// the container's attachment to `network` as `ifname`.
fn cni(
    ctx: &Ctx,
    plan: &LabPlan,
    host: &NodePlan,
    c: &str,
    cmd: &str,
    network: &str,
    ifname: &str,
) -> Result<serde_json::Value, String> {
    let ns = host.container_ns(&plan.name, c);
    let mut child = Command::new("ip")
        .args(["netns", "exec", &host.ns])
        .arg(&ctx.bin)
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", container_id(&plan.name, &host.name, c))
        .env("CNI_NETNS", format!("/var/run/netns/{ns}"))
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", "/usr/lib/cni")
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={c}",
                host.namespace_of(c)
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running the plugin: {e}"))?;
    let conf = networks::cni_conf(
        &registry::socket(&plan.name, &host.name),
        network,
        &host.meta_of(c),
    );
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(conf.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{} {}",
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_str(&text).map_err(|e| format!("unreadable result ({e}): {text}"))
}

/// How often an ADD answered "try again later" is tried, and the pause
/// before the next try (times the tries so far).
const ADD_TRIES: u32 = 5;
const ADD_BACKOFF: Duration = Duration::from_millis(500);

/// Whether the plugin's error is CNI's code 11, "try again later": the
/// agent did not acknowledge the request (busy, or still starting), so
/// nothing was done and a runtime would retry.
fn try_again_later(error: &str) -> bool {
    let start = error.find('{').unwrap_or(0);
    serde_json::Deserializer::from_str(&error[start..])
        .into_iter::<serde_json::Value>()
        .next()
        .and_then(Result::ok)
        .is_some_and(|v| v["code"] == 11)
}

/// ADD as a runtime does it: tried again while the plugin says to.
fn add_retrying(
    ctx: &Ctx,
    plan: &LabPlan,
    h: &NodePlan,
    c: &str,
    network: &str,
    ifname: &str,
) -> Result<serde_json::Value, String> {
    let mut tries = 1;
    loop {
        match cni(ctx, plan, h, c, "ADD", network, ifname) {
            Err(e) if tries < ADD_TRIES && try_again_later(&e) => {
                std::thread::sleep(ADD_BACKOFF * tries);
                tries += 1;
            }
            r => return r,
        }
    }
}

/// What an attachment's ADD gave: the address, and the name service to use.
struct Attached {
    address: IpAddr,
    dns: Option<Dns>,
}

/// Attaches a container to each of its networks in order (eth0, eth1, ...),
/// writes its resolv.conf from the first result's `dns` as a runtime does,
/// and starts its probe server; returns what each ADD gave.
fn attach_one(ctx: &Ctx, plan: &LabPlan, host: &str, c: &str) -> Result<Vec<Attached>, LabError> {
    let h = plan
        .nodes
        .iter()
        .find(|n| n.name == host)
        .expect("caller checked");
    let ns = h.container_ns(&plan.name, c);
    let fail = |error: String| LabError::Attach {
        host: host.into(),
        container: c.into(),
        error,
    };
    let mut addrs = Vec::new();
    for (i, network) in h.networks_of(c).iter().enumerate() {
        let ifname = networks::ifname(i);
        let on = |e: String| fail(format!("network {network} ({ifname}): {e}"));
        let result = add_retrying(ctx, plan, h, c, network, &ifname).map_err(on)?;
        let address = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next()?.parse().ok())
            .ok_or_else(|| on(format!("no address in the result: {result}")))?;
        let dns = match result.get("dns") {
            None | Some(serde_json::Value::Null) => None,
            Some(d) => Some(
                serde_json::from_value::<Dns>(d.clone())
                    .map_err(|e| on(format!("unreadable dns in the result ({e}): {d}")))?,
            ),
        }
        .filter(|d| *d != Dns::default());
        if i == 0 {
            let who = format!("{host}/{c}");
            if let Some(text) = dns.as_ref().and_then(|d| resolv::text(&plan.name, &who, d)) {
                resolv::write(&plan.name, &ns, &text).map_err(|e| on(e.to_string()))?;
            }
        }
        addrs.push(Attached { address, dns });
    }
    let log = registry::host_dir(&plan.name, host).join(format!("probe-{c}.log"));
    sys::spawn_detached(
        &ns,
        &[
            ctx.bin.display().to_string(),
            "probe".into(),
            "serve".into(),
        ],
        &log,
    )?;
    Ok(addrs)
}

/// `lab run`: attaches a new container on a host; runs `cmd` in it if given.
pub fn run(
    ctx: &Ctx,
    name: Option<&str>,
    host: &str,
    container: &str,
    cmd: &[String],
) -> Result<i32, LabError> {
    let lab = registry::pick(name)?;
    if let Some(why) = invalid_name(container) {
        return Err(LabError::Usage(format!("container name: {why}")));
    }
    {
        let lock = registry::lock(&lab)?;
        let mut rec = lock.load()?;
        if !rec.agent_hosts().any(|n| n.name == host) {
            return Err(LabError::NotFound {
                lab,
                what: "host",
                name: host.into(),
            });
        }
        if rec
            .containers
            .iter()
            .any(|c| c.host == host && c.name == container)
        {
            return Err(LabError::Usage(format!(
                "{host}/{container} already exists"
            )));
        }
        let ns = crate::names::container_ns(&lab, host, container);
        if sys::netns_exists(&ns) {
            return Err(LabError::Usage(format!(
                "namespace {ns} already exists and is not this lab's"
            )));
        }
        ctx.say(&format!("attaching {host}/{container} through CNI"));
        let res = attach_many(
            ctx,
            &lock,
            &mut rec,
            &[(host.to_string(), container.to_string())],
        );
        if let Err(e) = res {
            // Leave nothing of a failed attachment.
            let _ = remove(&lock, &mut rec, host, container, ctx);
            return Err(e);
        }
    }
    if cmd.is_empty() {
        return Ok(0);
    }
    let ns = crate::names::container_ns(&lab, host, container);
    let st = Command::new("ip")
        .args(["netns", "exec", &ns])
        .args(cmd)
        .status()
        .map_err(LabError::io(format!("running {}", cmd.join(" "))))?;
    Ok(st.code().unwrap_or(1))
}

/// `lab rm`: detaches a container through CNI and removes its namespace.
pub fn rm(ctx: &Ctx, name: Option<&str>, host: &str, container: &str) -> Result<(), LabError> {
    let lab = registry::pick(name)?;
    let lock = registry::lock(&lab)?;
    let mut rec = lock.load()?;
    if !rec
        .containers
        .iter()
        .any(|c| c.host == host && c.name == container)
    {
        return Err(LabError::NotFound {
            lab,
            what: "container",
            name: format!("{host}/{container}"),
        });
    }
    remove(&lock, &mut rec, host, container, ctx)
}

fn remove(
    lock: &Locked,
    rec: &mut LabRecord,
    host: &str,
    container: &str,
    ctx: &Ctx,
) -> Result<(), LabError> {
    let h = rec
        .plan
        .nodes
        .iter()
        .find(|n| n.name == host)
        .expect("recorded")
        .clone();
    let ns = h.container_ns(&rec.plan.name, container);
    let attachments = rec
        .containers
        .iter()
        .find(|c| c.host == host && c.name == container)
        .map(ContainerRecord::attachments)
        .unwrap_or_default();
    // Last attached, first detached.
    for a in attachments.iter().rev() {
        if let Err(e) = cni(ctx, &rec.plan, &h, container, "DEL", &a.network, &a.ifname) {
            ctx.say(&format!(
                "CNI DEL of {host}/{container} {} (network {}) failed ({e}); removing the namespace anyway",
                a.ifname, a.network
            ));
        }
    }
    sys::kill_all_in(std::slice::from_ref(&ns), Duration::from_millis(500));
    sys::delete_ns(std::slice::from_ref(&ns))?;
    resolv::remove(&rec.plan.name, &ns)?;
    rec.containers
        .retain(|c| !(c.host == host && c.name == container));
    lock.save(rec)
}

/// `lab exec HOST[/CONTAINER] -- CMD`: replaces this process.
pub fn exec(name: Option<&str>, target: &str, cmd: &[String]) -> Result<(), LabError> {
    let lab = registry::pick(name)?;
    let rec = registry::lock(&lab)?.load()?;
    let ns = resolve_target(&rec, target)?;
    if cmd.is_empty() {
        return Err(LabError::Usage(
            "nothing to run: `muslin lab exec HOST[/CONTAINER] -- CMD...`".into(),
        ));
    }
    let err = Command::new("ip")
        .args(["netns", "exec", &ns])
        .args(cmd)
        .exec();
    Err(LabError::Io {
        what: format!("running {}", cmd.join(" ")),
        source: err,
    })
}

fn resolve_target(rec: &LabRecord, target: &str) -> Result<String, LabError> {
    let lab = rec.plan.name.clone();
    match target.split_once('/') {
        Some((h, c)) => rec
            .containers
            .iter()
            .find(|x| x.host == h && x.name == c)
            .map(|x| x.ns.clone())
            .ok_or(LabError::NotFound {
                lab,
                what: "container",
                name: target.into(),
            }),
        None => rec
            .plan
            .nodes
            .iter()
            .find(|n| n.name == target)
            .map(|n| n.ns.clone())
            .ok_or(LabError::NotFound {
                lab,
                what: "host or router",
                name: target.into(),
            }),
    }
}

/// An agent's answer to `req`, or why there is none.
pub(crate) fn ask(lab: &str, host: &str, req: &Request) -> Result<Response, String> {
    match muslin_cni::call(&registry::socket(lab, host), req) {
        Ok(Response::Error(e)) => Err(e.msg),
        Ok(r) => Ok(r),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub name: String,
    pub backend: String,
    pub datastore: String,
    pub nodes: Vec<NodeStatus>,
    /// Cuts made with `lab block` and not undone.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cuts: Vec<crate::faults::Cut>,
}

#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub namespace: String,
    pub role: &'static str,
    pub addresses: Vec<String>,
    pub block: Option<String>,
    pub agent_up: Option<bool>,
    pub containers: Vec<ContainerRecord>,
}

pub fn status(name: Option<&str>) -> Result<Status, LabError> {
    let lab = registry::pick(name)?;
    let rec = registry::lock(&lab)?.load()?;
    let nodes = rec
        .plan
        .nodes
        .iter()
        .map(|n| NodeStatus {
            name: n.name.clone(),
            namespace: n.ns.clone(),
            role: if n.router {
                "router"
            } else if rec.etcd.contains(&n.name) {
                "etcd"
            } else {
                "host"
            },
            addresses: n
                .nics
                .iter()
                .map(|x| format!("{} {} ({})", x.ifname, x.address, x.segment))
                .collect(),
            block: (!n.router && !rec.etcd.contains(&n.name))
                .then(|| agent_blocks(&lab, &n.name))
                .flatten(),
            agent_up: (!n.router && !rec.etcd.contains(&n.name)).then(|| {
                std::os::unix::net::UnixStream::connect(registry::socket(&lab, &n.name)).is_ok()
            }),
            containers: rec
                .containers
                .iter()
                .filter(|c| c.host == n.name)
                .cloned()
                .collect(),
        })
        .collect();
    Ok(Status {
        // A switch that cannot be listed shows no cuts: status is for
        // looking, and the rest of it is still worth seeing.
        cuts: crate::faults::cuts(&rec.plan).unwrap_or_default(),
        name: lab,
        backend: rec.backend,
        datastore: rec.datastore,
        nodes,
    })
}

impl Status {
    pub fn render(&self) -> String {
        let mut out = format!(
            "lab {}  (backend {}, datastore {})\n",
            self.name, self.backend, self.datastore
        );
        for n in &self.nodes {
            let agent = match n.agent_up {
                Some(true) => "agent up",
                Some(false) => "agent DOWN",
                None => "",
            };
            out.push_str(&format!(
                "{:<8} {:<7} {:<16} {}\n",
                n.name, n.role, n.namespace, agent
            ));
            for a in &n.addresses {
                out.push_str(&format!("           {a}\n"));
            }
            if let Some(b) = &n.block {
                out.push_str(&format!("           pod block {b}\n"));
            }
            for c in &n.containers {
                out.push_str(&format!(
                    "           container {:<6} {:<15} ns {}\n",
                    c.name,
                    container_addresses(c),
                    c.ns
                ));
            }
        }
        for c in &self.cuts {
            out.push_str(&format!("cut      {}\n", c.describe()));
        }
        out
    }
}

/// A container's addresses as status shows them: the address alone when it
/// is only on the default network, as before networks; else each
/// attachment as `eth0 red 10.50.0.4`.
fn container_addresses(c: &ContainerRecord) -> String {
    let shown = |a: Option<IpAddr>| a.map_or_else(|| "-".to_string(), |a| a.to_string());
    match c.attachments().as_slice() {
        [only] if only.network == DEFAULT_NETWORK => shown(only.address),
        all => all
            .iter()
            .map(|a| format!("{} {} {}", a.ifname, a.network, shown(a.address)))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// The blocks a host's agent holds, asked from the agent itself.
fn agent_blocks(lab: &str, host: &str) -> Option<String> {
    match muslin_cni::call(
        &registry::socket(lab, host),
        &muslin_model::api::Request::Status,
    ) {
        Ok(muslin_model::api::Response::Status(s)) => Some(
            s.blocks
                .iter()
                .map(|b| b.cidr.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        _ => None,
    }
}

pub fn logs(name: Option<&str>, host: &str) -> Result<String, LabError> {
    let lab = registry::pick(name)?;
    let p = registry::log_file(&lab, host);
    std::fs::read_to_string(&p).map_err(|_| LabError::NotFound {
        lab,
        what: "host with an agent log",
        name: host.into(),
    })
}

/// The lab's key in the machine-wide record of neighbour-table needs: its
/// registry directory, absolute, so labs of different registry roots
/// never mix.
fn lab_key(name: &str) -> PathBuf {
    let dir = registry::lab_dir(name);
    std::path::absolute(&dir).unwrap_or(dir)
}

/// `lab down`: removes every namespace, process and file of the lab, even
/// of a half-finished `up`, then lowers the kernel's neighbour limits to
/// what the labs still up need. Idempotent: a lab that is not there is
/// fine. Returns whether there was a lab, and what happened to the limits.
pub fn down(name: &str) -> Result<(bool, crate::neigh_sys::Report), LabError> {
    registry::check_name(name)?;
    let existed = remove_lab(name)?;
    // After the lab's directory is gone, so that a `down` killed before
    // this leaves a need the next lab command forgets (its lab is no
    // longer up), and so that no entry of the lab is left to evict.
    Ok((existed, neigh_sys::release(&lab_key(name))))
}

fn remove_lab(name: &str) -> Result<bool, LabError> {
    let dir = registry::lab_dir(name);
    if !dir.exists() {
        // A lab whose record is gone (a reboot empties /run) may still
        // have left resolv.conf files in /etc/netns.
        resolv::remove_leftovers(name)?;
        return Ok(false);
    }
    let lock = registry::lock(name)?;
    if let Ok(rec) = lock.load() {
        let mut all = build::namespaces(&rec.plan);
        all.extend(rec.containers.iter().map(|c| c.ns.clone()));
        // Containers first: their processes and veths go before the hosts'.
        all.reverse();
        sys::kill_all_in(&all, Duration::from_millis(1500));
        sys::delete_ns(&all)?;
    }
    // With the namespaces gone, every resolv.conf of the lab is a leftover,
    // recorded or not.
    resolv::remove_leftovers(name)?;
    std::fs::remove_dir_all(&dir).map_err(LabError::io(format!("removing {}", dir.display())))?;
    drop(lock);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_try_again_later_is_retried() {
        let busy = r#"{"cniVersion":"1.1.0","code":11,"msg":"the Muslin agent at /run/x.sock accepted the connection but did not acknowledge the request within 3 s"} "#;
        assert!(try_again_later(busy));
        assert!(!try_again_later(&busy.replace("11", "7")));
        assert!(!try_again_later("running the plugin: No such file"));
    }

    #[test]
    fn big_labs_gossip_in_longer_rounds() {
        assert_eq!(gossip_interval_ms(3), 100);
        assert_eq!(gossip_interval_ms(20), 100);
        assert_eq!(gossip_interval_ms(22), 110);
        assert_eq!(gossip_interval_ms(40), 200);
        assert_eq!(gossip_interval_ms(50), 250);
        assert_eq!(gossip_interval_ms(60), 360);
        assert_eq!(gossip_interval_ms(83), 689);
        assert_eq!(gossip_interval_ms(100), 700);
        assert_eq!(gossip_interval_ms(250), 700);
        assert_eq!(spread_timeout(40), Duration::from_secs(10));
        assert_eq!(spread_timeout(100), Duration::from_secs(14));
    }

    #[test]
    fn status_shows_each_attachment_unless_only_on_the_default_network() {
        let mut c = ContainerRecord {
            host: "h1".into(),
            name: "c1".into(),
            ns: "lab-h1-c1".into(),
            address: Some("10.244.0.5".parse().unwrap()),
            networks: vec![],
        };
        assert_eq!(container_addresses(&c), "10.244.0.5");
        c.networks = vec![
            Attachment {
                network: "red".into(),
                ifname: "eth0".into(),
                address: Some("10.50.0.4".parse().unwrap()),
                dns: None,
            },
            Attachment {
                network: "blue".into(),
                ifname: "eth1".into(),
                address: None,
                dns: None,
            },
        ];
        assert_eq!(container_addresses(&c), "eth0 red 10.50.0.4, eth1 blue -");
    }
}
