use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;

#[derive(Parser, Debug)]
#[command(name = "muslin", version, about = "Multi-host container networking for Linux", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the per-host agent (IPAM, endpoints, local API for the CNI plugin)
    Agent(Box<AgentArgs>),
    /// Show this node's blocks and attachments, as the agent sees them
    Status(StatusArgs),
    /// List attachments whose container is gone without a DEL; --apply releases them
    Gc(GcArgs),
    /// Install this binary as the CNI plugin `muslin` (a symlink)
    InstallCni(InstallCniArgs),
    /// Remove what Muslin added to this host (stop the agent first)
    Uninstall(UninstallArgs),
    /// Simulated multi-host clusters in network namespaces on this machine
    #[command(subcommand)]
    Lab(LabCommand),
    /// Benchmark Muslin against the underlay, hand-built twins and the reference plugins
    Bench(BenchArgs),
    /// Connectivity probe: an echo server and a checker for tcp, udp, icmp and ip253
    #[command(subcommand)]
    Probe(ProbeCommand),
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Fewer, shorter repetitions (under two minutes): a smoke test
    #[arg(long)]
    pub quick: bool,
    /// Cluster state of the scale stage: gossip or etcd
    #[arg(long, default_value = "gossip")]
    pub datastore: String,
    /// Write the figures as JSON to FILE
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write a report folder: summary.md, results.json and SVG charts
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Another muslin binary (a previous build) whose CNI ADD/DEL latency
    /// is measured in the same run, alternating with this one
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
    /// Run only one stage
    #[arg(long, value_parser = ["dataplane", "cni", "scale"])]
    pub only: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct LabName {
    /// The lab to act on [default: the only lab that is up]
    #[arg(long, short = 'n')]
    pub name: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// Build a lab, start an agent on every host, attach containers, check the matrix
    Up {
        /// Name of the lab; its namespaces are NAME-HOST and NAME-HOST-CONTAINER
        #[arg(long, short = 'n', default_value = "demo")]
        name: String,
        /// Hosts in the default lab [default: 3]
        #[arg(long)]
        hosts: Option<usize>,
        /// Data plane between hosts: auto, routed or vxlan
        #[arg(long, default_value = "auto")]
        backend: String,
        /// Cluster state: gossip (embedded) or etcd (started in the lab)
        #[arg(long, default_value = "gossip")]
        datastore: String,
        /// etcd members with --datastore etcd: 1 or 3
        #[arg(long, default_value_t = 1)]
        etcd_members: usize,
        /// Topology file (TOML); see examples/
        #[arg(long, short = 'f')]
        file: Option<PathBuf>,
        /// Seconds to wait for the whole matrix to pass (0: do not check)
        #[arg(long, default_value_t = 30)]
        converge_timeout: u64,
        /// Print a JSON report on stdout (progress stays on stderr)
        #[arg(long)]
        json: bool,
    },
    /// Attach a new container on HOST through CNI; run CMD in it if given
    Run {
        #[command(flatten)]
        lab: LabName,
        host: String,
        container: String,
        #[arg(last = true)]
        cmd: Vec<String>,
    },
    /// Detach a container through CNI and remove it
    Rm {
        #[command(flatten)]
        lab: LabName,
        host: String,
        container: String,
    },
    /// Run CMD in a host, router or container (HOST or HOST/CONTAINER)
    Exec {
        #[command(flatten)]
        lab: LabName,
        target: String,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Show the lab's hosts, addresses, blocks, agents and containers
    Status {
        #[command(flatten)]
        lab: LabName,
        #[arg(long)]
        json: bool,
    },
    /// Probe every container to every container and host; non-zero exit if a pair fails
    Check {
        #[command(flatten)]
        lab: LabName,
        /// Comma-separated: tcp, udp, icmp, ip253
        #[arg(long, default_value = "tcp,udp,icmp")]
        proto: String,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        #[arg(long)]
        json: bool,
    },
    /// Print the agent log of HOST
    Logs {
        #[command(flatten)]
        lab: LabName,
        host: String,
    },
    /// Remove a lab and everything it made (idempotent)
    Down {
        #[command(flatten)]
        lab: LabName,
        /// Remove every lab
        #[arg(long, conflicts_with = "name")]
        all: bool,
    },
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// TOML configuration file; flags override it
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Name of this node [default: host name]
    #[arg(long)]
    pub node_name: Option<String>,
    /// Unix socket of the local API [default: /run/muslin/agent.sock]
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Directory of persistent state [default: /var/lib/muslin]
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// A fixed pod address block of this node (repeatable); without it the
    /// node leases blocks of --pod-cidr from the cluster
    #[arg(long = "block", value_name = "CIDR")]
    pub blocks: Vec<IpNet>,
    /// MTU of container interfaces [default: from the underlay]
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Peers to join, ADDR or ADDR:PORT (repeatable or comma-separated)
    #[arg(long, value_delimiter = ',')]
    pub join: Vec<String>,
    /// UDP port of gossip [default: 7331]
    #[arg(long)]
    pub gossip_port: Option<u16>,
    /// Milliseconds between gossip rounds [default: 200]
    #[arg(long)]
    pub gossip_interval_ms: Option<u64>,
    /// File with the cluster secret that authenticates and encrypts gossip
    #[arg(long)]
    pub cluster_secret_file: Option<PathBuf>,
    /// The cluster's pod network [default: 10.244.0.0/16]
    #[arg(long)]
    pub pod_cidr: Option<IpNet>,
    /// Prefix length of per-node blocks, 20 to 28 [default: 24]
    #[arg(long)]
    pub block_size: Option<u8>,
    /// Seconds a silent node keeps its blocks [default: 3600]
    #[arg(long)]
    pub block_ttl: Option<u64>,
    /// Data plane between hosts: auto, routed or vxlan [default: auto]
    #[arg(long)]
    pub backend: Option<String>,
    /// VXLAN network identifier [default: 4242]
    #[arg(long)]
    pub vxlan_vni: Option<u32>,
    /// VXLAN UDP port [default: 4789]
    #[arg(long)]
    pub vxlan_port: Option<u16>,
    /// How to choose the underlay address: reachability, first-found,
    /// interface=REGEX, skip-interface=REGEX, cidr=CIDR, can-reach=ADDR,
    /// address=ADDR [default: reachability]
    #[arg(long)]
    pub underlay: Option<String>,
    /// Masquerade pod traffic leaving the pod network [default: true]
    #[arg(long)]
    pub masquerade: Option<bool>,
    /// Where cluster state lives: gossip (embedded) or etcd [default: gossip]
    #[arg(long)]
    pub datastore: Option<String>,
    /// etcd client URLs, comma-separated (with --datastore etcd)
    #[arg(long, value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// Key prefix of Muslin's state in etcd [default: /muslin/]
    #[arg(long)]
    pub etcd_prefix: Option<String>,
    /// CA certificate (PEM) to verify etcd with
    #[arg(long)]
    pub etcd_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for etcd
    #[arg(long)]
    pub etcd_cert_file: Option<PathBuf>,
    /// Client key (PEM) for etcd
    #[arg(long)]
    pub etcd_key_file: Option<PathBuf>,
    /// Seconds between full reconciliations [default: 30]
    #[arg(long)]
    pub reconcile_interval: Option<u64>,
    /// Log filter, such as info or debug [default: info]
    #[arg(long)]
    pub log_level: Option<String>,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[arg(long, default_value = muslin_model::agent_config::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct GcArgs {
    #[arg(long, default_value = muslin_model::agent_config::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Release the stale attachments (veth, route, address)
    #[arg(long, conflicts_with = "dry_run")]
    pub apply: bool,
    /// Only list what would be released (the default)
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct UninstallArgs {
    /// Socket of the local agent: uninstall refuses while it answers
    #[arg(long, default_value = muslin_model::agent_config::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

#[derive(Args, Debug)]
pub struct InstallCniArgs {
    /// Directory runtimes search for CNI plugins
    #[arg(long, default_value = "/opt/cni/bin")]
    pub bin_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum ProbeCommand {
    /// Serve tcp and udp echo on PORT and ip253 echo; prints `ready` when listening
    Serve {
        #[arg(long, default_value_t = muslin_lab::probe::DEFAULT_PORT)]
        port: u16,
    },
    /// ICMP echo every INTERVAL; prints sent, received, lost; non-zero exit on loss
    Ping {
        target: IpAddr,
        #[arg(long, default_value_t = 100)]
        count: u16,
        #[arg(long, default_value_t = 10)]
        interval_ms: u64,
    },
    /// Move BYTES to and from TARGET's probe server over TCP; prints both rates
    Transfer {
        target: IpAddr,
        #[arg(long, default_value_t = muslin_lab::probe::DEFAULT_PORT)]
        port: u16,
        #[arg(long, default_value_t = 8_000_000)]
        bytes: u64,
    },
    /// Check that TARGET answers; exits non-zero if any protocol fails
    Check {
        target: IpAddr,
        #[arg(long, default_value_t = muslin_lab::probe::DEFAULT_PORT)]
        port: u16,
        /// Comma-separated: tcp, udp, icmp, ip253
        #[arg(long, default_value = "tcp,udp,icmp")]
        proto: String,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
}
