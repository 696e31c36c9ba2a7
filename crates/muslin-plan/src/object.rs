//! Kernel objects as values: what a host (or a container's namespace) has
//! or should have. Interfaces are named, never indexed, so that a desired
//! state can be written down before any interface exists and compared
//! across runs; the executor resolves names to indexes.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use muslin_model::naming::format_mac;
use serde::{Deserialize, Serialize};

pub type Mac = [u8; 6];

/// The network namespace an object lives in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Ns {
    /// The agent's own namespace: the host.
    Host,
    /// A container's namespace, by the path the runtime gave.
    Container(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Link {
    pub name: String,
    pub kind: LinkKind,
    /// `None`: whatever the kernel chose (only in observed state).
    pub mtu: Option<u32>,
    pub mac: Option<Mac>,
    pub up: bool,
    /// The link group: a network's interfaces share one, which its
    /// firewall rules match. `None` in a desired link: left as it is.
    #[serde(default)]
    pub group: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LinkKind {
    Vxlan(Vxlan),
    /// A veth; the peer is known only when we create the pair.
    Veth(Option<VethPeer>),
    /// Any other kind (`bridge`, `ethernet`, ...), as the kernel names it.
    /// `None` in a desired link: a device that only holds addresses
    /// (created as a dummy, or a bridge where the kernel has no dummy).
    Other(Option<String>),
}

/// The VXLAN parameters that only a new device can change.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Vxlan {
    pub vni: u32,
    pub port: u16,
    pub local: Option<IpAddr>,
    /// The underlay interface's name.
    pub underlay: Option<String>,
    /// DF on outer packets; `None` when the kernel does not report it.
    pub df: Option<bool>,
}

impl Vxlan {
    /// Whether a device with `have` serves as one with `self`. A kernel
    /// that does not report DF cannot set it either, so it is not asked to.
    pub fn satisfied_by(&self, have: &Vxlan) -> bool {
        (self.vni, self.port, &self.local, &self.underlay)
            == (have.vni, have.port, &have.local, &have.underlay)
            && have.df != Some(false)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VethPeer {
    pub name: String,
    pub mac: Mac,
    pub mtu: u32,
    pub ns: Ns,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Address {
    pub link: String,
    pub net: IpNet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Scope {
    Universe,
    Link,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Route {
    pub table: u32,
    pub dst: IpNet,
    pub via: Option<IpAddr>,
    pub dev: Option<String>,
    pub onlink: bool,
    /// Path MTU pinned on the route.
    pub mtu: Option<u32>,
    /// Preferred source address of packets the host sends by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<IpAddr>,
    pub scope: Scope,
    pub protocol: u8,
}

impl Route {
    pub fn family(&self) -> Family {
        Family::of(&self.dst.addr())
    }

    /// Same forwarding behaviour (what a reconciliation compares).
    pub fn same_as(&self, o: &Route) -> bool {
        (
            self.table, self.dst, self.via, &self.dev, self.mtu, self.src,
        ) == (o.table, o.dst, o.via, &o.dev, o.mtu, o.src)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Rule {
    pub family: Family,
    pub priority: u32,
    pub src: Option<IpNet>,
    #[serde(default)]
    pub dst: Option<IpNet>,
    /// Firewall mark and mask.
    #[serde(default)]
    pub fwmark: Option<(u32, u32)>,
    /// Only packets entering on this interface (`lo`: the host's own).
    #[serde(default)]
    pub iif: Option<String>,
    /// Refuses ("network unreachable") instead of looking up `table`
    /// (0 then).
    #[serde(default)]
    pub unreachable: bool,
    pub table: u32,
}

/// A permanent neighbour entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Neighbour {
    pub link: String,
    pub ip: IpAddr,
    pub mac: Mac,
}

/// A forwarding entry of a VXLAN device: frames to `mac` go to `dst`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Fdb {
    pub link: String,
    pub mac: Mac,
    pub dst: IpAddr,
}

/// Everything of one namespace that a diff looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostState {
    pub links: Vec<Link>,
    pub addresses: Vec<Address>,
    pub routes: Vec<Route>,
    pub rules: Vec<Rule>,
    pub neighbours: Vec<Neighbour>,
    pub fdb: Vec<Fdb>,
}

impl HostState {
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }
}

impl fmt::Display for Ns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ns::Host => write!(f, "host"),
            Ns::Container(p) => write!(f, "netns {}", p.display()),
        }
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name)?;
        match &self.kind {
            LinkKind::Vxlan(v) => {
                write!(f, " type vxlan id {} dstport {}", v.vni, v.port)?;
                if let Some(l) = v.local {
                    write!(f, " local {l}")?;
                }
                if let Some(u) = &v.underlay {
                    write!(f, " dev {u}")?;
                }
                if v.df == Some(true) {
                    write!(f, " df set")?;
                }
                write!(f, " nolearning")?;
            }
            LinkKind::Veth(Some(p)) => write!(
                f,
                " type veth peer name {} address {} mtu {} ({})",
                p.name,
                format_mac(&p.mac),
                p.mtu,
                p.ns
            )?,
            LinkKind::Veth(None) => write!(f, " type veth")?,
            LinkKind::Other(k) => write!(f, " type {}", k.as_deref().unwrap_or("?"))?,
        }
        if let Some(m) = &self.mac {
            write!(f, " address {}", format_mac(m))?;
        }
        if let Some(m) = self.mtu {
            write!(f, " mtu {m}")?;
        }
        if let Some(g) = self.group.filter(|g| *g != 0) {
            write!(f, " group {g}")?;
        }
        if self.up {
            write!(f, " up")?;
        }
        Ok(())
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(v) = self.via {
            write!(f, " via {v}")?;
        }
        if let Some(d) = &self.dev {
            write!(f, " dev {d}")?;
        }
        if self.onlink {
            write!(f, " onlink")?;
        }
        if self.scope == Scope::Link {
            write!(f, " scope link")?;
        }
        if let Some(m) = self.mtu {
            write!(f, " mtu lock {m}")?;
        }
        if let Some(s) = self.src {
            write!(f, " src {s}")?;
        }
        write!(f, " proto {} table {}", self.protocol, self.table)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fam = match self.family {
            Family::V4 => "-4",
            Family::V6 => "-6",
        };
        write!(f, "{fam} priority {}", self.priority)?;
        if let Some(s) = self.src {
            write!(f, " from {s}")?;
        }
        if let Some(d) = self.dst {
            write!(f, " to {d}")?;
        }
        if let Some((m, k)) = self.fwmark {
            write!(f, " fwmark {m:#x}/{k:#x}")?;
        }
        if let Some(i) = &self.iif {
            write!(f, " iif {i}")?;
        }
        match self.unreachable {
            true => write!(f, " unreachable"),
            false => write!(f, " lookup {}", self.table),
        }
    }
}

impl fmt::Display for Neighbour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} lladdr {} dev {} permanent",
            self.ip,
            format_mac(&self.mac),
            self.link
        )
    }
}

impl fmt::Display for Fdb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} dev {} dst {} permanent",
            format_mac(&self.mac),
            self.link,
            self.dst
        )
    }
}
