//! A change to the kernel, as a value: computed by the pure planners,
//! carried out by the executor, shown in golden files and logs.

use std::fmt;

use muslin_model::host_firewall::Action;

use crate::nft::NftChange;
use crate::object::{Address, Fdb, Link, Neighbour, Ns, Route, Rule};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    CreateLink(Link),
    /// Sets only what is given: the MTU, the MAC (setting it, even to the
    /// same value, flushes a VXLAN device's neighbours) and up.
    SetLink {
        name: String,
        mtu: Option<u32>,
        mac: Option<crate::object::Mac>,
        up: bool,
        group: Option<u32>,
    },
    DeleteLink(String),
    AddAddress(Address),
    DeleteAddress(Address),
    /// Adds or replaces the route with the same table and destination.
    ReplaceRoute(Route),
    DeleteRoute(Route),
    AddRule(Rule),
    DeleteRule(Rule),
    ReplaceNeighbour(Neighbour),
    DeleteNeighbour(Neighbour),
    ReplaceFdb(Fdb),
    DeleteFdb(Fdb),
    /// nftables changes of our own table, applied in one transaction.
    Nft(NftChange),
    /// A rule of ours in someone else's firewall chain.
    Firewall(Action),
    /// A sysctl under /proc/sys, e.g. `net/ipv4/ip_forward`.
    Sysctl {
        key: String,
        value: String,
    },
    /// Forgets the tracked connections an endpoint opened (`from`) or was
    /// opened to (not `from`), so a changed policy judges their next
    /// packet as it judges a new connection.
    ForgetConnections {
        addr: std::net::IpAddr,
        from: bool,
    },
}

/// A change and the namespace it applies in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub ns: Ns,
    pub change: Change,
}

impl Step {
    pub fn host(change: Change) -> Step {
        Step {
            ns: Ns::Host,
            change,
        }
    }

    /// Whether the change writes through netlink (as opposed to `nft`,
    /// the iptables tools or /proc).
    pub fn is_netlink(&self) -> bool {
        !matches!(
            self.change,
            Change::Nft(_)
                | Change::Firewall(_)
                | Change::Sysctl { .. }
                | Change::ForgetConnections { .. }
        )
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::CreateLink(l) => write!(f, "link add {l}"),
            Change::SetLink {
                name,
                mtu,
                mac,
                up,
                group,
            } => {
                write!(f, "link set {name}")?;
                if let Some(g) = group {
                    write!(f, " group {g}")?;
                }
                if let Some(m) = mac {
                    write!(f, " address {}", muslin_model::naming::format_mac(m))?;
                }
                if let Some(m) = mtu {
                    write!(f, " mtu {m}")?;
                }
                if *up {
                    write!(f, " up")?;
                }
                Ok(())
            }
            Change::DeleteLink(n) => write!(f, "link del {n}"),
            Change::AddAddress(a) => write!(f, "addr add {} dev {}", a.net, a.link),
            Change::DeleteAddress(a) => write!(f, "addr del {} dev {}", a.net, a.link),
            Change::ReplaceRoute(r) => write!(f, "route replace {r}"),
            Change::DeleteRoute(r) => write!(f, "route del {r}"),
            Change::AddRule(r) => write!(f, "rule add {r}"),
            Change::DeleteRule(r) => write!(f, "rule del {r}"),
            Change::ReplaceNeighbour(n) => write!(f, "neigh replace {n}"),
            Change::DeleteNeighbour(n) => write!(f, "neigh del {n}"),
            Change::ReplaceFdb(e) => write!(f, "fdb replace {e}"),
            Change::DeleteFdb(e) => write!(f, "fdb del {e}"),
            Change::Nft(c) => write!(f, "nft {c}"),
            Change::Firewall(a) => write!(f, "firewall {a:?}"),
            Change::Sysctl { key, value } => write!(f, "sysctl {key}={value}"),
            Change::ForgetConnections { addr, from } => write!(
                f,
                "conntrack -D {} {addr}",
                if *from { "--orig-src" } else { "--orig-dst" }
            ),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.ns, self.change)
    }
}
