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
    Agent(AgentArgs),
    /// Show this node's blocks and attachments, as the agent sees them
    Status(StatusArgs),
    /// Install this binary as the CNI plugin `muslin` (a symlink)
    InstallCni(InstallCniArgs),
    /// Connectivity probe: an echo server and a checker for tcp, udp, icmp and ip253
    #[command(subcommand)]
    Probe(ProbeCommand),
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
    /// Pod address block of this node (repeatable), such as 10.244.1.0/24
    #[arg(long = "block", value_name = "CIDR")]
    pub blocks: Vec<IpNet>,
    /// MTU of container interfaces [default: 1500]
    #[arg(long)]
    pub mtu: Option<u32>,
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
pub struct InstallCniArgs {
    /// Directory runtimes search for CNI plugins
    #[arg(long, default_value = "/opt/cni/bin")]
    pub bin_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum ProbeCommand {
    /// Serve tcp and udp echo on PORT and ip253 echo; prints `ready` when listening
    Serve {
        #[arg(long, default_value_t = crate::probe::DEFAULT_PORT)]
        port: u16,
    },
    /// Check that TARGET answers; exits non-zero if any protocol fails
    Check {
        target: IpAddr,
        #[arg(long, default_value_t = crate::probe::DEFAULT_PORT)]
        port: u16,
        /// Comma-separated: tcp, udp, icmp, ip253
        #[arg(long, default_value = "tcp,udp,icmp")]
        proto: String,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
}
