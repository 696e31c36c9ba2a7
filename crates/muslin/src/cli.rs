use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use muslin_model::agent_config::AgentFlags;

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
    /// Isolated networks of the cluster, which may reuse each other's addresses
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Network policies: who may connect to whom (Kubernetes NetworkPolicy, plus ordered deny)
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Change the labels of an endpoint of this host, or of a namespace (ns:NAME)
    Label(LabelArgs),
    /// The name service: what containers resolve
    #[command(subcommand)]
    Dns(DnsCommand),
    /// Install this binary as the CNI plugin `muslin` (a symlink)
    InstallCni(InstallCniArgs),
    /// Remove what Muslin added to this host (stop the agent first)
    Uninstall(UninstallArgs),
    /// Simulated multi-host clusters in network namespaces on this machine
    #[command(subcommand)]
    Lab(LabCommand),
    /// Benchmark Muslin against the underlay, hand-built twins and the reference plugins
    Bench(BenchArgs),
    /// Connectivity probe: an echo server, a checker for tcp, udp, icmp and ip253, a DNS query
    #[command(subcommand)]
    Probe(ProbeCommand),
    /// Check this host for the known pitfalls: one line per check, exit 1 on a problem
    Doctor(StatusArgs),
    /// Give this node a new WireGuard key pair and publish it (encryption = wireguard)
    RotateKey(StatusArgs),
    /// A userspace WireGuard device configured only by `wg` (benchmarks, interop tests)
    #[command(hide = true)]
    WireguardDevice(crate::wireguard_device_cmd::WireguardDeviceArgs),
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Fewer, shorter repetitions (under two minutes): a smoke test
    #[arg(long)]
    pub quick: bool,
    /// Cluster state of the scale stage (and of --scale): gossip or etcd
    #[arg(long, default_value = "gossip", value_parser = ["gossip", "etcd"])]
    pub datastore: String,
    /// Write the figures as JSON to FILE
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write a report folder: summary.md, results.json and SVG charts
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Another muslin binary (a previous build) whose CNI ADD/DEL latency
    /// (or, with --scale, gossip) is measured in the same run, alternating
    /// with this one
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
    /// Run only one stage
    #[arg(long, value_parser = ["dataplane", "cni", "policy", "scale", "dns", "relay", "encryption"])]
    pub only: Option<String>,
    /// Instead of the stages: simulate gossip clusters of these sizes in
    /// one process (e.g. 20,100,300,1000), on a simulated clock
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "N,...",
        conflicts_with = "only"
    )]
    pub scale: Vec<usize>,
    /// One simulated cluster, its figures as JSON on stdout (what --scale
    /// runs in a child process per size)
    #[arg(long, hide = true, value_name = "N")]
    pub scale_one: Option<usize>,
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
        /// Encryption of pod traffic between hosts: none or wireguard
        #[arg(long, default_value = "none")]
        encryption: String,
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
    /// Probe every container to every container and host (a sample above 20 hosts), and resolve every container's name; name the cause of failures; non-zero exit if a pair fails
    Check {
        #[command(flatten)]
        lab: LabName,
        /// Comma-separated: tcp, udp, icmp, ip253, dns (names resolve, per network)
        #[arg(long, default_value = "tcp,udp,icmp,dns")]
        proto: String,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        /// Check every pair even in a lab of more than 20 hosts (checked on a sample)
        #[arg(long)]
        full: bool,
        /// Seed of the sample (the same seed picks the same pairs)
        #[arg(long, default_value_t = 7, conflicts_with = "full")]
        seed: u64,
        /// Pairs in the sample (more when needed to cover every container and host twice)
        #[arg(long, default_value_t = muslin_lab::ops::SAMPLE_PAIRS, conflicts_with = "full")]
        sample: usize,
        #[arg(long)]
        json: bool,
    },
    /// Drop the underlay traffic between hosts A and B, both directions (on the lab's switches)
    Block {
        #[command(flatten)]
        lab: LabName,
        a: String,
        b: String,
        /// Drop only UDP to this destination port (4789: VXLAN, while gossip flows)
        #[arg(long)]
        udp_port: Option<u16>,
    },
    /// Undo exactly one `lab block` (the same hosts and --udp-port); nothing blocked is fine
    Unblock {
        #[command(flatten)]
        lab: LabName,
        a: String,
        b: String,
        #[arg(long)]
        udp_port: Option<u16>,
    },
    /// Make HOST die: SIGKILL every process in it (its agent) and set its NICs down
    Kill {
        #[command(flatten)]
        lab: LabName,
        host: String,
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
    #[command(flatten)]
    pub flags: AgentFlags,
}

#[derive(Subcommand, Debug)]
pub enum NetworkCommand {
    /// Create a network; every host learns it within a second
    Create {
        name: String,
        /// The network's address range (one IPv4 CIDR)
        #[arg(long, required = true)]
        subnet: Vec<ipnet::IpNet>,
        /// Prefix length of the blocks hosts lease [default: /26, or the subnet's if longer]
        #[arg(long)]
        block_size: Option<u8>,
        /// auto or vxlan: a network other than the default is always encapsulated
        #[arg(long)]
        backend: Option<String>,
        /// VXLAN network identifier [default: chosen, unique]
        #[arg(long)]
        vni: Option<u32>,
        /// Hosts neither reach its containers nor are reached by them
        #[arg(long)]
        isolated_from_host: bool,
        #[arg(long, default_value = muslin_model::agent_config::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Every network, with endpoints, nodes and this host's drop counters
    List {
        #[arg(long, default_value = muslin_model::agent_config::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// One network in detail
    Show {
        name: String,
        #[arg(long, default_value = muslin_model::agent_config::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Delete a network (refused while it has endpoints, naming them)
    Delete {
        name: String,
        #[arg(long, default_value = muslin_model::agent_config::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Apply every policy of a file (YAML, several documents, or TOML with
    /// [[policy]]; a Kubernetes NetworkPolicy as it is): all or none
    Apply {
        /// The policy file, `-` for standard input
        #[arg(long, short = 'f')]
        file: PathBuf,
        /// yaml or toml [default: by the file's extension, else yaml]
        #[arg(long)]
        format: Option<String>,
        #[arg(long, default_value = muslin_model::agent_config::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Every policy, with what it protects on this host and its drops here
    List {
        #[arg(long, default_value = muslin_model::agent_config::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// One policy in detail
    Show {
        /// NAME, or NAMESPACE:NAME (or --namespace)
        name: String,
        #[arg(long, short = 'n')]
        namespace: Option<String>,
        #[arg(long, default_value = muslin_model::agent_config::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Delete a policy
    Delete {
        /// NAME, or NAMESPACE:NAME (or --namespace)
        name: String,
        #[arg(long, short = 'n')]
        namespace: Option<String>,
        #[arg(long, default_value = muslin_model::agent_config::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum DnsCommand {
    /// What a container gets for NAME (NAME, NAME.NAMESPACE, NAME.NETWORK,
    /// a name in the cluster domain, an address for its PTR, or a name
    /// outside the cluster, which is forwarded)
    Lookup {
        name: String,
        /// Answer as a container attached to this network (repeatable)
        /// [default: the default network]
        #[arg(long = "network")]
        networks: Vec<String>,
        #[arg(long, default_value = muslin_model::agent_config::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct LabelArgs {
    /// A container id (or a unique prefix of it, 6 characters or more),
    /// NAMESPACE/POD, or ns:NAMESPACE for a namespace's labels
    pub target: String,
    /// key=value sets a label, key- removes it
    #[arg(required = true)]
    pub labels: Vec<String>,
    #[arg(long, default_value = muslin_model::agent_config::DEFAULT_SOCKET)]
    pub socket: PathBuf,
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
    /// ICMP echo every INTERVAL; prints sent, received, lost and the longest run of losses; non-zero exit on loss
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
        /// Connect from this local port: one upload on a fixed 5-tuple
        #[arg(long)]
        source_port: Option<u16>,
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
    /// Ask a resolver for NAME's IPv4 addresses (NAME as given: no search list); prints each; non-zero exit if none
    Dns {
        name: String,
        /// The resolver [default: the first nameserver of /etc/resolv.conf]
        #[arg(long)]
        server: Option<IpAddr>,
        /// How long each try waits for the answer
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        #[arg(long, default_value_t = 2)]
        tries: u32,
    },
}
