use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use muslin_model::agent_config::AgentConfig;
use muslin_model::api::{Request, Response};

use crate::cli::{
    AgentArgs, BenchArgs, Cli, Command, GcArgs, InstallCniArgs, ProbeCommand, StatusArgs,
    UninstallArgs,
};
use muslin_lab::probe;

/// Commands that only print die quietly when their reader goes away
/// (`muslin status | head`), as Unix tools do. Servers keep Rust's default
/// (SIGPIPE ignored) so a vanished client costs them nothing.
fn quiet_on_broken_pipe() {
    // SAFETY: restoring a signal's default disposition has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    if matches!(
        cli.command,
        Command::Status(_)
            | Command::Gc(_)
            | Command::Lab(_)
            | Command::InstallCni(_)
            | Command::Network(_)
            | Command::Policy(_)
            | Command::Label(_)
            | Command::Dns(_)
    ) {
        quiet_on_broken_pipe();
    }
    match cli.command {
        Command::Agent(a) => agent(*a),
        Command::Status(a) => status(a),
        Command::Network(n) => crate::network_cmd::run(n),
        Command::Policy(p) => crate::policy_cmd::run(p),
        Command::Label(l) => crate::policy_cmd::label(l),
        Command::Dns(d) => crate::dns_cmd::run(d),
        Command::Gc(a) => gc(a),
        Command::InstallCni(a) => install_cni(a),
        Command::Uninstall(a) => uninstall(a),
        Command::Lab(l) => crate::lab::run(l),
        Command::Bench(b) => bench(b),
        Command::Probe(p) => probe_cmd(p),
        Command::Doctor(a) => crate::doctor_cmd::doctor(a),
        Command::RotateKey(a) => rotate_key(a),
        Command::WireguardDevice(a) => crate::wireguard_device_cmd::run(a),
    }
}

fn rotate_key(a: StatusArgs) -> Result<ExitCode> {
    match muslin_cni::call(&a.socket, &Request::RotateKey).map_err(|e| anyhow::anyhow!("{e}"))? {
        Response::Rotated { public_key } => {
            println!("new WireGuard public key {public_key}: published; peers renew their sessions as they hear it");
            Ok(ExitCode::SUCCESS)
        }
        Response::Error(e) => bail!("{}", e.msg),
        r => bail!("unexpected reply from the agent: {r:?}"),
    }
}

/// File first, then flags: a flag given on the command line wins.
fn agent_config(a: &AgentArgs) -> Result<AgentConfig> {
    let mut c = match &a.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            AgentConfig::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
        }
        None => AgentConfig::default(),
    };
    a.flags.apply(&mut c);
    Ok(c)
}

fn agent(a: AgentArgs) -> Result<ExitCode> {
    // glibc gives each thread that allocates an arena of its own; the
    // agent's few allocations need no more than two, and each arena keeps
    // freed memory resident.
    // SAFETY: mallopt only tunes the allocator; called before any thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    // The name service holds sockets for containers' queries in flight
    // (two per network, one per forwarded query, one per TCP client): the
    // usual soft limit of 1024 descriptors is too few to be sure CNI
    // requests always find one. The hard limit is ours to take.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    let config = agent_config(&a)?;
    // The DNS library logs every query at info; containers' lookups are
    // not the agent's news. A filter that names hickory still wins.
    let mut filter = config.log_level.clone();
    if !filter.contains("hickory") {
        filter.push_str(
            ",hickory_server=warn,hickory_resolver=warn,hickory_net=warn,hickory_proto=warn",
        );
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&filter).context("log-level")?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Two workers: the agent's work is short netlink round trips and fsyncs.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // glibc keeps what is freed mapped (inside an arena, below its top);
    // an agent's rounds free and allocate much the same each time, so
    // what a busy moment (a join, a burst of ADDs) took stays resident.
    // Handing whole free pages back now and then keeps the idle agent
    // small; it costs a walk of the free lists.
    rt.spawn(async {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            // SAFETY: only returns free pages to the kernel.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    });
    rt.block_on(async {
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("signal handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        muslin_agent::run(config, shutdown).await
    })?;
    Ok(ExitCode::SUCCESS)
}

fn status(a: StatusArgs) -> Result<ExitCode> {
    let resp = muslin_cni::call(&a.socket, &Request::Status).map_err(|e| anyhow::anyhow!("{e}"))?;
    let Response::Status(s) = resp else {
        bail!("unexpected reply from the agent: {resp:?}");
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "node     {}  (muslin {}, mtu {})",
        s.node_name, s.version, s.mtu
    );
    for b in &s.blocks {
        println!(
            "block    {:<20} {}/{} addresses in use",
            b.cidr.to_string(),
            b.used,
            b.capacity
        );
    }
    if let Some(c) = &s.cluster {
        let addr = c
            .underlay_address
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into());
        println!(
            "underlay {addr} on {} (mtu {}): {}",
            c.underlay_if, c.underlay_mtu, c.underlay_reason
        );
        let store = if c.datastore == "etcd" {
            format!("etcd, {} requests", c.etcd_requests)
        } else {
            format!(
                "gossip, {} B sent / {} B received",
                c.gossip_bytes_sent, c.gossip_bytes_received
            )
        };
        println!(
            "cluster  backend {}, {} nodes, {} endpoints, {}, {store}",
            c.backend,
            c.nodes.len(),
            c.endpoints.len(),
            if c.synced { "synced" } else { "not synced yet" },
        );
        println!(
            "kernel   {} changes made, {} nft runs since start (both constant while idle)",
            c.kernel_writes, c.nft_runs
        );
        if c.underlay_addresses.len() > 1 {
            let all: Vec<String> = c.underlay_addresses.iter().map(|a| a.to_string()).collect();
            println!(
                "         other addresses peers may use: {}",
                all[1..].join(", ")
            );
        }
        if !c.reserved.is_empty() {
            let r: Vec<String> = c.reserved.iter().map(|a| a.to_string()).collect();
            println!(
                "reserved {} (routed elsewhere by some host; never leased)",
                r.join(", ")
            );
        }
        println!(
            "\n{:<12} {:<16} {:<20} {:<7} {:<11} {:<6} {:<5} DATA PATH",
            "NODE", "ADDRESS", "BLOCKS", "GOSSIP", "PATH", "MTU", "EPS"
        );
        for n in &c.nodes {
            let blocks: Vec<String> = n.blocks.iter().map(|b| b.to_string()).collect();
            let (path, why) = match n.path.split_once(": ") {
                Some((p, why)) => (p.to_string(), Some(why)),
                None => (n.path.clone(), n.path_why.as_deref()),
            };
            println!(
                "{:<12} {:<16} {:<20} {:<7} {:<11} {:<6} {:<5} {}",
                n.name,
                n.address
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "-".into()),
                blocks.join(","),
                if n.alive { "alive" } else { "DOWN" },
                path,
                n.path_mtu
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "-".into()),
                n.endpoints,
                if n.data_path.is_empty() {
                    "-"
                } else {
                    &n.data_path
                },
            );
            if let Some(why) = why {
                println!("{:<12} {why}", "");
            }
        }
        if let Some(w) = &c.wireguard {
            println!(
                "\nwireguard {} port {}, {} (wg show {})\n          public key {}",
                w.device, w.port, w.path, w.uapi, w.public_key
            );
            println!(
                "{:<12} {:<46} {:<22} {:<10} {:>12} {:>12}",
                "PEER", "PUBLIC KEY", "ENDPOINT", "HANDSHAKE", "RX BYTES", "TX BYTES"
            );
            for p in &w.peers {
                println!(
                    "{:<12} {:<46} {:<22} {:<10} {:>12} {:>12}",
                    if p.name.is_empty() { "?" } else { &p.name },
                    p.public_key,
                    p.endpoint
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| "-".into()),
                    p.handshake_age_s
                        .map(|s| format!("{s}s ago"))
                        .unwrap_or_else(|| "none".into()),
                    p.rx_bytes,
                    p.tx_bytes
                );
            }
        }
        if !c.networks.is_empty() {
            println!(
                "\n{:<16} {:<20} {:<9} {:<6} {:<5} NODES WITH BLOCKS",
                "NETWORK", "SUBNET", "VNI", "HOSTS", "EPS"
            );
            for n in &c.networks {
                println!(
                    "{:<16} {:<20} {:<9} {:<6} {:<5} {}",
                    n.name,
                    join(&n.subnets),
                    n.vni,
                    if n.host_reach { "yes" } else { "no" },
                    n.endpoints.len(),
                    n.nodes.join(",")
                );
                if let Some(why) = &n.host_reach_why {
                    println!("{:<16} hosts do not route to it: {why}", "");
                }
            }
        }
        if !c.policies.is_empty() {
            println!();
            crate::policy_cmd::print_table(&c.policies);
        }
        for w in &c.warnings {
            println!("WARNING  {w}");
        }
        if let Some(d) = &s.dns {
            crate::dns_cmd::print_status(d);
        }
        let mut by_network = c.endpoints.clone();
        by_network.sort_by(|a, b| (&a.network, &a.node).cmp(&(&b.network, &b.node)));
        print_cluster_endpoints(&by_network);
        println!();
    }
    if s.endpoints.is_empty() {
        println!("no attachments");
    } else {
        println!(
            "\n{:<16} {:<18} {:<16} {:<10} POD",
            "ADDRESS", "HOST IF", "NETWORK", "IFNAME"
        );
        for e in &s.endpoints {
            println!(
                "{:<16} {:<18} {:<16} {:<10} {}  ({})",
                join(&e.addresses),
                e.host_ifname,
                e.network_id,
                e.key.ifname,
                e.pod.as_deref().unwrap_or("-"),
                e.key.container_id
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn join(v: &[impl std::fmt::Display]) -> String {
    let v: Vec<String> = v.iter().map(|a| a.to_string()).collect();
    v.join(",")
}

/// The cluster's endpoints, as many as a terminal shows; `--json` has all.
fn print_cluster_endpoints(eps: &[muslin_model::cluster::EndpointRecord]) {
    const SHOWN: usize = 50;
    if eps.is_empty() {
        return;
    }
    println!(
        "\n{:<20} {:<12} {:<10} {:<24} LABELS",
        "CLUSTER ENDPOINT", "NODE", "NETWORK", "POD"
    );
    for e in eps.iter().take(SHOWN) {
        let pod = match (&e.pod_namespace, &e.pod_name) {
            (Some(ns), Some(n)) => format!("{ns}/{n}"),
            (None, Some(n)) => n.clone(),
            _ => format!("({})", e.container_id.chars().take(12).collect::<String>()),
        };
        let labels: Vec<String> = e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{:<20} {:<12} {:<10} {:<24} {}",
            join(&e.addresses),
            e.node,
            e.network,
            pod,
            labels.join(",")
        );
    }
    if eps.len() > SHOWN {
        println!(
            "... and {} more (status --json lists all)",
            eps.len() - SHOWN
        );
    }
}

/// Operators' GC: a dry run unless `--apply`. Fails if anything stale
/// could not be released.
fn gc(a: GcArgs) -> Result<ExitCode> {
    let req = Request::Reap { apply: a.apply };
    let resp = muslin_cni::call(&a.socket, &req).map_err(|e| anyhow::anyhow!("{e}"))?;
    let stale = match resp {
        Response::Reaped { stale } => stale,
        Response::Error(e) => bail!("{e}"),
        other => bail!("unexpected reply from the agent: {other:?}"),
    };
    if a.json {
        let out = serde_json::json!({ "applied": a.apply, "stale": stale });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_stale(&stale, a.apply);
    }
    Ok(if stale.iter().any(|s| s.error.is_some()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn print_stale(stale: &[muslin_model::api::StaleAttachment], applied: bool) {
    if stale.is_empty() {
        println!("no stale attachments");
        return;
    }
    for s in stale {
        let verb = match (&s.error, s.released) {
            (Some(_), _) => "NOT released",
            (None, true) => "released",
            (None, false) => "would release",
        };
        println!(
            "{verb:<13} {:<16} {}/{}/{}  ({})",
            join(&s.addresses),
            s.key.network,
            s.key.container_id,
            s.key.ifname,
            s.why
        );
        if let Some(e) = &s.error {
            println!("{:<13} {e}", "");
        }
    }
    if !applied {
        println!(
            "{} stale; nothing released (dry run): run `muslin gc --apply` to release",
            stale.len()
        );
    }
}

fn bench(b: BenchArgs) -> Result<ExitCode> {
    if let Some(n) = b.scale_one {
        anyhow::ensure!(n >= 2, "a simulated cluster needs at least 2 nodes");
        let r = match b.datastore.as_str() {
            "etcd" => muslin_bench::etcd_scale::run_one(n)?,
            _ => muslin_bench::gossip_sim::run_one(n, &Default::default())?,
        };
        println!("{}", serde_json::to_string(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    if !b.scale.is_empty() {
        anyhow::ensure!(
            b.scale.iter().all(|n| *n >= 2),
            "--scale: a simulated cluster needs at least 2 nodes"
        );
        let bin = std::env::current_exe().context("locating the muslin binary")?;
        let started = std::time::Instant::now();
        let mut r = muslin_bench::Report::new(false);
        muslin_bench::gossip_sim::run(
            &bin,
            b.baseline.as_deref(),
            &b.datastore,
            &b.scale,
            &|l| eprintln!("{l}"),
            &mut r,
        )?;
        r.seconds = started.elapsed().as_secs_f64();
        return finish_bench(&b, r);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark builds labs in network namespaces: run it as root");
    }
    let o = muslin_bench::Options {
        bin: std::env::current_exe().context("locating the muslin binary")?,
        quick: b.quick,
        datastore: b.datastore.clone(),
        baseline: b.baseline.clone(),
        only: b.only.clone(),
        progress: Box::new(|l| eprintln!("{l}")),
    };
    let r = muslin_bench::run(&o)?;
    finish_bench(&b, r)
}

/// Prints the figures and writes what was asked for.
fn finish_bench(b: &BenchArgs, r: muslin_bench::Report) -> Result<ExitCode> {
    print!("{}", r.table());
    if let Some(p) = &b.json {
        std::fs::write(p, serde_json::to_string_pretty(&r)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(d) = &b.report {
        r.write_dir(d)?;
        eprintln!("report written to {}", d.display());
    }
    let missing = r.missing();
    if !missing.is_empty() {
        bail!("these scenarios produced no number: {}", missing.join("; "));
    }
    Ok(ExitCode::SUCCESS)
}

fn install_cni(a: InstallCniArgs) -> Result<ExitCode> {
    let exe = std::env::current_exe().context("locating this binary")?;
    std::fs::create_dir_all(&a.bin_dir)
        .with_context(|| format!("creating {}", a.bin_dir.display()))?;
    let link = a.bin_dir.join("muslin");
    let tmp = a.bin_dir.join(".muslin.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&exe, &tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    // rename replaces atomically: a runtime never finds the plugin missing.
    std::fs::rename(&tmp, &link).with_context(|| format!("installing {}", link.display()))?;
    println!("{} -> {}", link.display(), exe.display());
    Ok(ExitCode::SUCCESS)
}

/// Removes the host firewall accept rules, the cluster data plane and our
/// nftables table. A running agent would put them back at once, so it must
/// be stopped first.
fn uninstall(a: UninstallArgs) -> Result<ExitCode> {
    if std::os::unix::net::UnixStream::connect(&a.socket).is_ok() {
        bail!(
            "an agent answers at {}: stop it first, or it puts everything back",
            a.socket.display()
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let done = rt.block_on(muslin_agent::uninstall())?;
    if done.is_empty() {
        println!("nothing of Muslin's was left on this host");
    }
    for d in done {
        println!("removed {d}");
    }
    Ok(ExitCode::SUCCESS)
}

fn probe_cmd(p: ProbeCommand) -> Result<ExitCode> {
    match p {
        ProbeCommand::Serve { port } => {
            probe::serve(port).with_context(|| format!("probe server on port {port}"))?;
            Ok(ExitCode::SUCCESS)
        }
        ProbeCommand::Ping {
            target,
            count,
            interval_ms,
        } => {
            let interval = Duration::from_millis(interval_ms);
            let log = probe::ping_log(target, interval, |sent| sent >= usize::from(count))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let (sent, got) = (log.sent(), log.received());
            print!("{target}: sent {sent} received {got} lost {}", log.lost());
            // The longest outage, as the lost echoes alone cannot tell one
            // long gap from scattered drops.
            let (first, run) = log.longest_loss_run(0..sent);
            if run > 0 {
                print!(
                    ", longest loss run {run} ({} ms) from echo {first}",
                    run as u128 * interval.as_millis()
                );
            }
            println!();
            Ok(if got == sent {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        ProbeCommand::Transfer {
            target,
            port,
            source_port,
            bytes,
        } => {
            // A fixed source port makes one flow: a second connection on
            // the same 4-tuple would meet the first one's TIME_WAIT.
            let dirs: &[(bool, &str)] = match source_port {
                Some(_) => &[(true, "upload")],
                None => &[(true, "upload"), (false, "download")],
            };
            for &(upload, dir) in dirs {
                let t = probe::transfer_from(
                    target,
                    port,
                    source_port,
                    bytes,
                    upload,
                    Duration::from_secs(30),
                )
                .map_err(|e| anyhow::anyhow!("{dir}: {e}"))?;
                let mbps = bytes as f64 * 8.0 / t.as_secs_f64() / 1e6;
                println!(
                    "{dir} {bytes} bytes to {target} in {:.3} s ({mbps:.0} Mbit/s)",
                    t.as_secs_f64()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ProbeCommand::Check {
            target,
            port,
            proto,
            timeout_ms,
        } => {
            let mut ok = true;
            for p in crate::lab::protos(&proto)? {
                match probe::check(target, port, p, Duration::from_millis(timeout_ms)) {
                    Ok(rtt) => {
                        println!("{} {target} ok {:.3}ms", p.name(), rtt.as_secs_f64() * 1e3)
                    }
                    Err(e) => {
                        ok = false;
                        println!("{} {target} FAIL {}", p.name(), e.reason);
                    }
                }
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        ProbeCommand::Dns {
            name,
            server,
            timeout_ms,
            tries,
        } => {
            let server = match server {
                Some(s) => s,
                None => first_nameserver(
                    &std::fs::read_to_string("/etc/resolv.conf")
                        .context("reading /etc/resolv.conf (or give --server)")?,
                )
                .context("/etc/resolv.conf names no nameserver; give --server")?,
            };
            let a = probe::resolve(server, &name, Duration::from_millis(timeout_ms), tries)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            for addr in &a.addresses {
                println!("{addr}");
            }
            if a.addresses.is_empty() {
                eprintln!("{name}: {} from {server}, no address", a.rcode);
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The first `nameserver` of a resolv.conf.
fn first_nameserver(text: &str) -> Option<std::net::IpAddr> {
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some("nameserver"))
            .then(|| w.next()?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_first_nameserver_of_resolv_conf_is_asked() {
        let text = "# muslin lab demo: h1/c1\nsearch a.b\nnameserver bogus\nnameserver 169.254.53.2\nnameserver 10.0.0.1\n";
        assert_eq!(
            super::first_nameserver(text),
            Some("169.254.53.2".parse().unwrap())
        );
        assert_eq!(super::first_nameserver("search x\n"), None);
    }
}
