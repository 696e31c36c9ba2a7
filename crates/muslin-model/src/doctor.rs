//! `muslin doctor`: the known pitfalls (`shared/reference/pitfalls.md`)
//! checked on a live host. The kernel crate gathers [`HostFacts`] and the
//! CLI asks the agent for its status; everything here only judges them, so
//! each check is a pure function with unit tests, and the same verdicts
//! serve the command line, `--json` and the tests.
//!
//! A check says what it saw and, unless all is well, the fix in one
//! sentence. A `Problem` breaks or will break pod traffic; a `Warning` is
//! worth knowing but Muslin copes (it says how).

mod agent;
mod clock;
mod conntrack;
mod features;
mod firewall;
mod managers;
mod mtu;
mod neighbours;
mod overlap;
mod rp_filter;
mod underlay;
mod vxlan;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::api::NodeStatus;

/// The agent applies the checksum workaround on the kernels this names.
pub use vxlan::checksum_bug;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warning,
    Problem,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Ok => "ok",
            Level::Warning => "warning",
            Level::Problem => "problem",
        })
    }
}

/// One verdict of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The check's name, such as `forward-drop`.
    pub check: String,
    pub level: Level,
    /// What the check saw, naming the objects involved.
    pub saw: String,
    /// The fix in one sentence; empty when the level is `ok`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fix: String,
}

impl Finding {
    pub fn ok(check: &str, saw: impl Into<String>) -> Finding {
        Finding {
            check: check.into(),
            level: Level::Ok,
            saw: saw.into(),
            fix: String::new(),
        }
    }

    pub fn warning(check: &str, saw: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            check: check.into(),
            level: Level::Warning,
            saw: saw.into(),
            fix: fix.into(),
        }
    }

    pub fn problem(check: &str, saw: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            check: check.into(),
            level: Level::Problem,
            saw: saw.into(),
            fix: fix.into(),
        }
    }
}

/// The names of every check, in the order they are reported.
pub const CHECKS: &[&str] = &[
    agent::CHECK,
    underlay::CHECK,
    underlay::DUPLICATE,
    overlap::CHECK,
    firewall::CHECK,
    rp_filter::CHECK,
    managers::CHECK,
    conntrack::CHECK,
    neighbours::CHECK,
    vxlan::PORT,
    vxlan::CHECKSUM,
    mtu::MISMATCH,
    mtu::PATH,
    features::CHECK,
    clock::CHECK,
];

/// What the agent told us, or why it could not be asked.
pub type AgentView<'a> = Result<&'a NodeStatus, &'a str>;

/// Every check against what was gathered: at least one finding per check,
/// in [`CHECKS`] order.
pub fn diagnose(host: &HostFacts, agent: AgentView<'_>) -> Vec<Finding> {
    let mut all = Vec::new();
    all.extend(agent::check(host, agent));
    all.extend(underlay::check(host, agent));
    all.extend(overlap::check(host, agent));
    all.extend(firewall::check(host, agent));
    all.extend(rp_filter::check(host, agent));
    all.extend(managers::check(host, agent));
    all.extend(conntrack::check(host, agent));
    all.extend(neighbours::check(host, agent));
    all.extend(vxlan::check(host, agent));
    all.extend(mtu::check(host, agent));
    all.extend(features::check(host, agent));
    all.extend(clock::check(host, agent));
    let rank = |c: &str| CHECKS.iter().position(|k| *k == c).unwrap_or(usize::MAX);
    all.sort_by_key(|f| rank(&f.check));
    all
}

/// The worst level among `findings` (`Ok` when empty).
pub fn worst(findings: &[Finding]) -> Level {
    findings.iter().map(|f| f.level).max().unwrap_or(Level::Ok)
}

/// What the kernel crate reads of the host for the checks: plain data, so
/// tests build it by hand. A fact that could not be read is absent (empty,
/// `None`); a check that needs it then says it could not tell.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostFacts {
    /// `uname -r`.
    pub kernel_release: String,
    /// Sysctls by dotted name (`net.ipv4.conf.eth1.rp_filter`), as read in
    /// this network namespace; the kernel-wide ones
    /// (`net.ipv4.neigh.default.gc_thresh3`, `net.netfilter.nf_conntrack_max`)
    /// from the initial namespace when they are not visible here.
    pub sysctls: BTreeMap<String, String>,
    pub links: Vec<LinkFact>,
    /// Addresses by interface.
    pub addresses: Vec<(String, IpNet)>,
    /// Routes of every table, ours included.
    pub routes: Vec<RouteFact>,
    /// The kernel's route to each peer address the agent knows (`ip route
    /// get`).
    pub route_to: BTreeMap<IpAddr, RouteGet>,
    /// Neighbour entries in this namespace.
    pub neighbours: u64,
    /// The host's firewalls, as the host-firewall keeper reads them; `None`
    /// when they could not be read (`firewall_error` says why).
    #[serde(skip)]
    pub firewall: Option<crate::host_firewall::Observed>,
    pub firewall_error: Option<String>,
    /// Names (`comm`) of running processes.
    pub processes: Vec<String>,
    /// Configuration files of network managers: path and text, for
    /// NetworkManager's `conf.d` and systemd-networkd's `.network` files.
    pub manager_files: Vec<(String, String)>,
    pub features: KernelFeatures,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkFact {
    pub name: String,
    /// `vxlan`, `veth`, `bridge`, `tun`, `wireguard`... (`None` for a plain
    /// device).
    pub kind: Option<String>,
    pub mtu: u32,
    pub up: bool,
    /// Whether transmit checksum offload is on, where it was read (our
    /// VXLAN devices).
    pub tx_checksum: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteFact {
    pub dst: IpNet,
    pub dev: Option<String>,
    pub gateway: Option<IpAddr>,
    /// Route protocol number (Muslin's is [`crate::ROUTE_PROTOCOL`]).
    pub protocol: u8,
    pub table: u32,
    /// `unicast`, `local`, `broadcast`, `blackhole`...
    pub kind: String,
    /// A route MTU metric (pinned by Muslin on paths smaller than the
    /// interface).
    pub mtu: Option<u32>,
}

impl RouteFact {
    /// The route as `ip route` would name it, for a finding.
    pub fn describe(&self) -> String {
        let mut s = self.dst.to_string();
        if let Some(g) = self.gateway {
            s.push_str(&format!(" via {g}"));
        }
        if let Some(d) = &self.dev {
            s.push_str(&format!(" dev {d}"));
        }
        if self.table != 254 {
            s.push_str(&format!(" table {}", self.table));
        }
        s
    }
}

/// CIDRs as a finding lists them.
pub(crate) fn cidr_list(cidrs: &[IpNet]) -> String {
    cidrs
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteGet {
    pub dev: String,
    pub src: Option<IpAddr>,
    pub gateway: Option<IpAddr>,
    pub mtu: Option<u32>,
}

/// Which kernel features exist; `None` when it could not be told.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelFeatures {
    pub vxlan: Option<bool>,
    pub wireguard: Option<bool>,
    pub nftables: Option<bool>,
}

impl HostFacts {
    pub fn sysctl(&self, key: &str) -> Option<&str> {
        self.sysctls.get(key).map(|s| s.trim())
    }

    pub fn sysctl_u64(&self, key: &str) -> Option<u64> {
        self.sysctl(key)?.parse().ok()
    }

    pub fn link(&self, name: &str) -> Option<&LinkFact> {
        self.links.iter().find(|l| l.name == name)
    }
}

/// The sysctls the checks read, besides the per-interface ones
/// ([`interface_sysctls`]): what the kernel crate gathers.
pub const SYSCTLS: &[&str] = &[
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.rp_filter",
    "net.ipv4.conf.default.rp_filter",
    "net.netfilter.nf_conntrack_count",
    "net.netfilter.nf_conntrack_max",
    "net.ipv4.neigh.default.gc_thresh1",
    "net.ipv4.neigh.default.gc_thresh2",
    "net.ipv4.neigh.default.gc_thresh3",
];

/// The per-interface sysctls gathered for interface `ifname`.
pub fn interface_sysctls(ifname: &str) -> Vec<String> {
    vec![conf_key(ifname, "rp_filter")]
}

/// `net.ipv4.conf.IFNAME.LEAF` as `sysctl` names it: a dot in the
/// interface's name (a VLAN such as `eth0.100`) is written `/`.
pub fn conf_key(ifname: &str, leaf: &str) -> String {
    format!("net.ipv4.conf.{}.{leaf}", ifname.replace('.', "/"))
}
