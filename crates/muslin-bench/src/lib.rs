//! `muslin bench`: Muslin's numbers beside the baselines that matter, all
//! measured in one run on one machine: the underlay (the physical limit),
//! the same paths built by hand as the peers program them, and Debian's
//! reference CNI plugins. Every figure is a median of several repetitions
//! with its spread; data-plane figures also appear as a ratio to the
//! underlay measured in the same run.

mod chart;
mod cni;
mod dataplane;
mod dns;
mod encryption;
pub mod etcd_scale;
pub mod gossip_sim;
mod policy;
mod relay;
mod report;
mod scale;
mod stats;
mod sys;

use std::path::PathBuf;

pub use report::{Figure, Report, Target};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{stage}: {msg}")]
    Stage { stage: &'static str, msg: String },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

pub(crate) fn fail(stage: &'static str) -> impl Fn(String) -> BenchError {
    move |msg| BenchError::Stage { stage, msg }
}

pub struct Options {
    /// The `muslin` binary agents and plugins run as.
    pub bin: PathBuf,
    /// Fewer and shorter repetitions: a smoke test under two minutes.
    pub quick: bool,
    /// Cluster state of the scale stage: `gossip` or `etcd`.
    pub datastore: String,
    /// A previous build whose CNI latency is measured in the same run.
    pub baseline: Option<PathBuf>,
    /// Run only this stage: `dataplane`, `cni`, `policy`, `scale`, `dns`,
    /// `relay` or `encryption`.
    pub only: Option<String>,
    pub progress: Box<dyn Fn(&str) + Send + Sync>,
}

/// How much of everything a run does.
pub(crate) struct Plan {
    pub rounds: usize,
    pub iperf_seconds: u32,
    pub rr_messages: usize,
    pub cni_attachments: usize,
    pub cni_rounds: usize,
    pub concurrent_attachments: usize,
    pub scale_hosts: usize,
    pub scale_attachments: usize,
    /// Endpoints in the policed lab, and policies over its measured pair.
    pub policy_endpoints: usize,
    pub policies: usize,
    /// How long probe traffic and kernel writes of an idle cluster are
    /// counted (a path MTU confirmation falls every 30 s per peer).
    pub probe_window: std::time::Duration,
    /// Containers of the name-service lab, ten names each.
    pub dns_containers: usize,
    pub dns_rounds: usize,
    /// Each dnsperf run's length.
    pub dns_seconds: u32,
    /// Cuts and heals of the relay stage, per backend.
    pub relay_rounds: usize,
    /// How long each cut is held before it heals: past the outage (3 s
    /// at most, when the relay works), with relayed traffic after it.
    pub relay_hold: std::time::Duration,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                rounds: 1,
                iperf_seconds: 1,
                rr_messages: 300,
                cni_attachments: 20,
                cni_rounds: 1,
                concurrent_attachments: 16,
                scale_hosts: 5,
                scale_attachments: 10,
                policy_endpoints: 100,
                policies: 10,
                probe_window: std::time::Duration::from_secs(10),
                dns_containers: 100,
                dns_rounds: 1,
                dns_seconds: 2,
                relay_rounds: 3,
                relay_hold: std::time::Duration::from_secs(5),
            }
        } else {
            Plan {
                rounds: 5,
                iperf_seconds: 3,
                rr_messages: 2000,
                cni_attachments: 200,
                cni_rounds: 3,
                concurrent_attachments: 200,
                scale_hosts: 20,
                scale_attachments: 50,
                policy_endpoints: 1000,
                policies: 100,
                probe_window: std::time::Duration::from_secs(60),
                dns_containers: 1000,
                dns_rounds: 3,
                dns_seconds: 5,
                relay_rounds: 10,
                relay_hold: std::time::Duration::from_secs(7),
            }
        }
    }
}

/// Runs every stage and returns the figures.
pub fn run(o: &Options) -> Result<Report, BenchError> {
    let plan = Plan::new(o.quick);
    let started = std::time::Instant::now();
    let root = std::env::temp_dir().join("muslin-bench");
    // Two runs at once would take each other's labs down: each removes
    // every lab under the root before and after its stages.
    let lock_path = std::env::temp_dir().join("muslin-bench.lock");
    let lock_file = std::fs::File::create(&lock_path).map_err(|source| BenchError::Write {
        path: lock_path.display().to_string(),
        source,
    })?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| BenchError::Stage {
            stage: "start",
            msg: format!(
                "another muslin bench is running on this machine (it holds {})",
                lock_path.display()
            ),
        })?;
    // A previous run that died leaves its labs behind; remove them first.
    std::env::set_var("MUSLIN_LAB_ROOT", &root);
    sys::cleanup(&root);
    let mut report = Report::new(o.quick);
    (o.progress)(
        "[1/6] data plane: underlay, pods on one host, Muslin routed/vxlan/auto, hand-built twins",
    );
    let want = |stage: &str| o.only.as_deref().is_none_or(|s| s == stage);
    if want("dataplane") {
        let dp = dataplane::run(o, &plan, &mut report);
        sys::cleanup(&root);
        dp?;
    }
    (o.progress)(
        "[2/6] control plane: CNI ADD/DEL against bridge+host-local, concurrent attachments",
    );
    if want("cni") {
        cni::run(o, &plan, &mut report)?;
    }
    if want("policy") || want("cni") {
        policy::run_apply(&plan, &mut report)?;
    }
    (o.progress)(&format!(
        "[3/6] scale: {}-host lab cold start, convergence, agent memory and CPU, gossip",
        plan.scale_hosts
    ));
    if want("scale") {
        let sc = scale::run(o, &plan, &mut report);
        sys::cleanup(&root);
        sc?;
    }
    (o.progress)(&format!(
        "[4/6] name service: Muslin and aardvark-dns, {} names, dnsperf",
        plan.dns_containers * dns::NAMES_PER_CONTAINER
    ));
    if want("dns") {
        let dns = dns::run(o, &plan, &mut report);
        sys::cleanup(&root);
        dns?;
    }
    (o.progress)(
        "[5/6] relay: 3 hosts, h1-h3 cut: throughput through h2, outage, the pair not cut, return after the heal",
    );
    if want("relay") {
        let relay = relay::run(o, &plan, &mut report);
        sys::cleanup(&root);
        relay?;
    }
    (o.progress)(
        "[6/6] encryption: userspace WireGuard (wireguard-go, boringtun-cli, Muslin) against plain veth and vxlan",
    );
    if want("encryption") {
        let enc = encryption::run(o, &plan, &mut report);
        sys::cleanup(&root);
        enc?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
