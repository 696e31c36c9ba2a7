//! The agent's configuration: TOML file, then command-line overrides, then
//! validation that names the offending field.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::dataplane::Backend;
use crate::encryption::Encryption;
use crate::underlay::Method;

/// IPv6 needs at least 1280, and dual-stack is on the roadmap.
pub const MTU_MIN: u32 = 1280;
pub const MTU_MAX: u32 = 65535;

pub const DEFAULT_SOCKET: &str = "/run/muslin/agent.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/muslin";
pub const DEFAULT_GOSSIP_PORT: u16 = 7331;

crate::settings! {
    /// The agent's configuration. Each setting is a TOML key (kebab-case)
    /// and a flag of the same name (unless it says otherwise).
    pub struct AgentConfig;
    /// The agent's settings as command-line flags; a flag given overrides
    /// the file.
    pub struct AgentFlags;

    /// Name of this node in the cluster [default: host name]
    node_name: Option<String>;
    /// Unix socket of the local API, for the plugin and the CLI (mode 0600)
    socket: PathBuf = DEFAULT_SOCKET.into();
    /// Directory of persistent state (the endpoint table and leases)
    state_dir: PathBuf = DEFAULT_STATE_DIR.into();
    /// MTU of container interfaces [default: from the underlay]
    mtu: Option<u32>;
    /// A fixed pod address block of this node (repeatable); without any the
    /// node leases blocks of pod-cidr from the cluster
    #[arg(long = "block", value_name = "CIDR")]
    blocks: Vec<IpNet>;
    /// Peers to join, ADDR or ADDR:PORT (repeatable or comma-separated); the
    /// first node has none
    #[arg(value_delimiter = ',')]
    join: Vec<String>;
    /// UDP port of gossip
    gossip_port: u16 = DEFAULT_GOSSIP_PORT;
    /// Milliseconds between gossip rounds
    gossip_interval_ms: u64 = 200;
    /// File with the cluster secret that authenticates and encrypts gossip
    cluster_secret_file: Option<PathBuf>;
    /// The cluster's pod network, split into per-node blocks: one CIDR, or
    /// at most one per family (comma-separated)
    pod_cidr: PodCidrs = PodCidrs::from("10.244.0.0/16".parse::<IpNet>().expect("literal"));
    /// Prefix length of per-node blocks (/20 to /28 for IPv4)
    block_size: u8 = 24;
    /// Seconds a silent node keeps its blocks before others may claim them
    block_ttl: u64 = 3600;
    /// Data plane between hosts: auto, routed or vxlan
    backend: Backend = Backend::Auto;
    /// VXLAN network identifier
    vxlan_vni: u32 = 4242;
    /// VXLAN UDP port
    vxlan_port: u16 = 4789;
    /// Encryption of pod traffic between hosts: none or wireguard; the
    /// same on every node (a node that does not encrypt cannot join a
    /// cluster that does)
    encryption: Encryption = Encryption::None;
    /// Which WireGuard: auto (the kernel's where present, else the
    /// agent's own in userspace), kernel or userspace
    wireguard_implementation: crate::encryption::Implementation =
        crate::encryption::Implementation::Auto;
    /// WireGuard UDP port (with encryption = wireguard)
    wireguard_port: u16 = crate::encryption::DEFAULT_PORT;
    /// Name of the WireGuard control socket, /var/run/wireguard/NAME.sock
    /// (`wg show NAME`); agents sharing one machine's files (a lab) need
    /// one each
    wireguard_uapi: String = crate::encryption::WG_DEV.into();
    /// How to choose the underlay address: reachability, first-found,
    /// interface=REGEX, skip-interface=REGEX, cidr=CIDR, can-reach=ADDR or
    /// address=ADDR
    underlay: Method = Method::Reachability;
    /// Masquerade pod traffic that leaves the pod network
    masquerade: bool = true;
    /// Where cluster state lives: gossip (embedded) or etcd
    datastore: DatastoreKind = DatastoreKind::Gossip;
    /// etcd client URLs, http:// or https:// (with datastore etcd;
    /// comma-separated)
    #[arg(value_delimiter = ',')]
    etcd_endpoints: Vec<String>;
    /// Key prefix of Muslin's state in etcd
    etcd_prefix: String = "/muslin/".into();
    /// CA certificate (PEM) to verify etcd with
    etcd_ca_file: Option<PathBuf>;
    /// Client certificate (PEM) for etcd
    etcd_cert_file: Option<PathBuf>;
    /// Client key (PEM) for etcd
    etcd_key_file: Option<PathBuf>;
    /// Seconds between full reconciliations of the node's attachments
    reconcile_interval: u64 = 30;
    /// Log filter (tracing), such as info or muslin=debug
    log_level: String = "info".into();
    /// Serve the name service to containers (an embedded DNS per network)
    dns: bool = true;
    /// The cluster domain: containers are NAME.DOMAIN, NAME.NAMESPACE.DOMAIN
    /// and NAME.NETWORK.DOMAIN
    dns_domain: String = crate::dns::DEFAULT_DOMAIN.into();
    /// Resolvers for names outside the cluster domain, ADDR or ADDR:PORT
    /// (repeatable or comma-separated) [default: the nameservers of
    /// dns-resolv-conf]
    #[arg(long = "dns-upstream", value_delimiter = ',')]
    dns_upstreams: Vec<String>;
    /// The host's resolv.conf, whose nameservers are the upstream resolvers
    dns_resolv_conf: PathBuf = "/etc/resolv.conf".into();
    /// Milliseconds an upstream resolver has to answer before the next one
    /// is asked
    dns_upstream_timeout_ms: u64 = 1500;
    /// Address of the Prometheus metrics endpoint, ADDR:PORT (off when
    /// unset)
    #[arg(value_name = "ADDR:PORT")]
    metrics_addr: Option<SocketAddr>;
}

/// An upstream resolver as configured: `ADDR` (port 53) or `ADDR:PORT`
/// (`[V6]:PORT`). One of the name service's own addresses is refused: the
/// agent would forward to itself.
pub fn upstream_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    let a = s
        .parse::<std::net::SocketAddr>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
        .map_err(|_| format!("{s:?} is not ADDR or ADDR:PORT"))?;
    if a.port() == 0 || a.ip().is_unspecified() || crate::dns::is_listen_address(a.ip()) {
        return Err(format!("{s:?} cannot be an upstream resolver"));
    }
    Ok(a)
}

/// Which store holds cluster state: the key `datastore`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatastoreKind {
    Gossip,
    Etcd,
}

impl FromStr for DatastoreKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gossip" => Ok(DatastoreKind::Gossip),
            "etcd" => Ok(DatastoreKind::Etcd),
            o => Err(format!("{o:?} is not one of gossip, etcd")),
        }
    }
}

impl fmt::Display for DatastoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DatastoreKind::Gossip => "gossip",
            DatastoreKind::Etcd => "etcd",
        })
    }
}

/// The datastore with the settings it uses, from `AgentConfig::datastore()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datastore {
    Gossip,
    Etcd(EtcdSettings),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl EtcdSettings {
    /// The endpoints written as `scheme://ADDR:PORT`, as socket addresses:
    /// what the underlay must reach. Host names are left out.
    pub fn socket_addrs(&self) -> Vec<SocketAddr> {
        self.endpoints
            .iter()
            .filter_map(|e| {
                e.split("://")
                    .nth(1)?
                    .trim_end_matches('/')
                    .parse::<SocketAddr>()
                    .ok()
            })
            .collect()
    }
}

/// The key `pod-cidr`: one CIDR, or a list. Never empty, so the primary
/// network always exists; the one-per-family rule is `validate`'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCidrs(Vec<IpNet>);

impl PodCidrs {
    pub fn new(cidrs: Vec<IpNet>) -> Result<Self, String> {
        if cidrs.is_empty() {
            return Err("needs at least one CIDR".into());
        }
        Ok(PodCidrs(cidrs))
    }

    pub fn all(&self) -> &[IpNet] {
        &self.0
    }

    pub fn primary(&self) -> IpNet {
        self.0[0]
    }
}

impl From<IpNet> for PodCidrs {
    fn from(c: IpNet) -> Self {
        PodCidrs(vec![c])
    }
}

impl FromStr for PodCidrs {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let cidrs = s
            .split(',')
            .map(|c| {
                let c = c.trim();
                c.parse().map_err(|e| format!("bad CIDR {c:?}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        PodCidrs::new(cidrs)
    }
}

impl fmt::Display for PodCidrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

impl Serialize for PodCidrs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // One network is written as today's single string.
        match self.0.as_slice() {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for PodCidrs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor rather than an untagged enum: the parse error of a bad
        // CIDR reaches the user instead of "no variant matched".
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = PodCidrs;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a CIDR or a list of CIDRs")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PodCidrs, E> {
                v.parse::<IpNet>()
                    .map(PodCidrs::from)
                    .map_err(|e| E::custom(format!("bad CIDR {v:?}: {e}")))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<PodCidrs, A::Error> {
                let mut v = Vec::new();
                while let Some(c) = a.next_element()? {
                    v.push(c);
                }
                PodCidrs::new(v).map_err(serde::de::Error::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A config error names the field it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {msg}")]
pub struct ConfigError {
    pub field: String,
    pub msg: String,
}

fn err(field: &str, msg: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        msg: msg.into(),
    }
}

impl AgentConfig {
    /// The primary pod network: the one of the first family listed.
    pub fn pod_cidr(&self) -> IpNet {
        self.pod_cidr.primary()
    }

    /// Every pod network, at most one per family once validated.
    pub fn pod_cidrs(&self) -> &[IpNet] {
        self.pod_cidr.all()
    }

    /// The datastore with its settings; the etcd keys matter only for etcd.
    pub fn datastore(&self) -> Datastore {
        match self.datastore {
            DatastoreKind::Gossip => Datastore::Gossip,
            DatastoreKind::Etcd => Datastore::Etcd(EtcdSettings {
                endpoints: self.etcd_endpoints.clone(),
                prefix: self.etcd_prefix.clone(),
                ca_file: self.etcd_ca_file.clone(),
                cert_file: self.etcd_cert_file.clone(),
                key_file: self.etcd_key_file.clone(),
            }),
        }
    }

    fn validate_pod_cidr(&self) -> Result<(), ConfigError> {
        let cidrs = self.pod_cidrs();
        for c in cidrs {
            if c.trunc() != *c {
                return Err(err("pod-cidr", format!("{c} has host bits set")));
            }
        }
        for (i, a) in cidrs.iter().enumerate() {
            for b in &cidrs[i + 1..] {
                if a.addr().is_ipv4() == b.addr().is_ipv4() {
                    return Err(err(
                        "pod-cidr",
                        format!("{a} and {b} are of the same family: one pod network per family"),
                    ));
                }
            }
        }
        if cidrs.len() > 1 {
            return Err(err(
                "pod-cidr",
                "one pod network per family; using IPv4 and IPv6 together (dual stack) is not supported yet",
            ));
        }
        Ok(())
    }

    /// A join peer as a socket address (the gossip port when none is given).
    pub fn join_addr(&self, j: &str) -> Result<std::net::SocketAddr, String> {
        if let Ok(a) = j.parse::<std::net::SocketAddr>() {
            return Ok(a);
        }
        j.parse::<std::net::IpAddr>()
            .map(|ip| std::net::SocketAddr::new(ip, self.gossip_port))
            .map_err(|_| format!("{j:?} is not an address or address:port"))
    }

    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let msg = inner.message().to_string();
            // toml names unknown keys in its message; the path is the parent.
            let field = if path == "." { "config".into() } else { path };
            let at = inner
                .span()
                .map(|s| {
                    let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            err(&field, format!("{msg}{at}"))
        })
    }

    /// Checks everything a running agent relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(n) = &self.node_name {
            let ok = !n.is_empty()
                && n.len() <= 253
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
            if !ok {
                return Err(err(
                    "node-name",
                    format!("{n:?} must be 1-253 letters, digits, '-', '.' or '_'"),
                ));
            }
        }
        if !self.socket.is_absolute() {
            return Err(err(
                "socket",
                format!("{:?} must be an absolute path", self.socket),
            ));
        }
        if !self.state_dir.is_absolute() {
            return Err(err(
                "state-dir",
                format!("{:?} must be an absolute path", self.state_dir),
            ));
        }
        if let Some(mtu) = self.mtu {
            if !(MTU_MIN..=MTU_MAX).contains(&mtu) {
                return Err(err(
                    "mtu",
                    format!("{mtu} is out of range {MTU_MIN}..={MTU_MAX}"),
                ));
            }
        }
        for j in &self.join {
            self.join_addr(j).map_err(|m| err("join", m))?;
        }
        if self.gossip_port == 0 {
            return Err(err("gossip-port", "must not be 0"));
        }
        if self.encryption == Encryption::Wireguard {
            let clash = [
                (self.gossip_port, "gossip-port"),
                (self.vxlan_port, "vxlan-port"),
            ]
            .into_iter()
            .find(|(p, _)| *p == self.wireguard_port);
            if self.wireguard_port == 0 {
                return Err(err("wireguard-port", "must not be 0"));
            }
            if self.wireguard_uapi.is_empty()
                || self.wireguard_uapi.len() > 15
                || !self
                    .wireguard_uapi
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.=+".contains(c))
            {
                return Err(err(
                    "wireguard-uapi",
                    format!(
                        "{:?} must be 1-15 letters, digits or -_.=+ (an interface name)",
                        self.wireguard_uapi
                    ),
                ));
            }
            if let Some((p, other)) = clash {
                return Err(err(
                    "wireguard-port",
                    format!("{p} is the {other} too: each needs a port of its own"),
                ));
            }
        }
        if !(10..=10_000).contains(&self.gossip_interval_ms) {
            return Err(err(
                "gossip-interval-ms",
                format!("{} is out of range 10..=10000", self.gossip_interval_ms),
            ));
        }
        if let Some(p) = crate::dns::domain_problem(&self.dns_domain) {
            return Err(err("dns-domain", p));
        }
        for u in &self.dns_upstreams {
            crate::agent_config::upstream_addr(u).map_err(|m| err("dns-upstream", m))?;
        }
        if !(50..=30_000).contains(&self.dns_upstream_timeout_ms) {
            return Err(err(
                "dns-upstream-timeout-ms",
                format!(
                    "{} is out of range 50..=30000",
                    self.dns_upstream_timeout_ms
                ),
            ));
        }
        if !self.dns_resolv_conf.is_absolute() {
            return Err(err(
                "dns-resolv-conf",
                format!("{:?} must be an absolute path", self.dns_resolv_conf),
            ));
        }
        self.validate_pod_cidr()?;
        let pod_cidr = self.pod_cidr();
        let (lo, hi) = if pod_cidr.addr().is_ipv4() {
            (20, 28)
        } else {
            (64, 122)
        };
        if !(lo..=hi).contains(&self.block_size) || self.block_size < pod_cidr.prefix_len() {
            return Err(err(
                "block-size",
                format!(
                    "/{} must be between /{lo} and /{hi} and inside pod-cidr {pod_cidr}",
                    self.block_size
                ),
            ));
        }
        if self.block_ttl == 0 {
            return Err(err("block-ttl", "must be at least 1 second"));
        }
        if !(1..=16_777_215).contains(&self.vxlan_vni) {
            return Err(err(
                "vxlan-vni",
                format!("{} is out of range 1..=16777215", self.vxlan_vni),
            ));
        }
        if self.vxlan_port == 0 {
            return Err(err("vxlan-port", "must not be 0"));
        }
        if let Datastore::Etcd(etcd) = self.datastore() {
            if etcd.endpoints.is_empty() {
                return Err(err("etcd-endpoints", "required with datastore = \"etcd\""));
            }
            for e in &etcd.endpoints {
                let host = e
                    .strip_prefix("http://")
                    .or_else(|| e.strip_prefix("https://"));
                if host.is_none_or(str::is_empty) {
                    return Err(err(
                        "etcd-endpoints",
                        format!("{e:?} is not an http:// or https:// URL"),
                    ));
                }
            }
            if !etcd.prefix.starts_with('/') || !etcd.prefix.ends_with('/') {
                return Err(err(
                    "etcd-prefix",
                    format!("{:?} must start and end with '/'", etcd.prefix),
                ));
            }
        }
        for b in &self.blocks {
            if b.trunc() != *b {
                return Err(err(
                    "blocks",
                    format!("{b} has host bits set; did you mean {}?", b.trunc()),
                ));
            }
            let max = match b {
                IpNet::V4(_) => 30,
                IpNet::V6(_) => 126,
            };
            if b.prefix_len() > max {
                return Err(err(
                    "blocks",
                    format!("{b} is too small: the prefix must be /{max} or shorter"),
                ));
            }
        }
        for (i, a) in self.blocks.iter().enumerate() {
            for b in &self.blocks[i + 1..] {
                if a.contains(b) || b.contains(a) {
                    return Err(err("blocks", format!("{a} and {b} overlap")));
                }
            }
        }
        if self.reconcile_interval == 0 {
            return Err(err("reconcile-interval", "must be at least 1 second"));
        }
        if self.metrics_addr.is_some_and(|a| a.port() == 0) {
            // A port the kernel picks is one no scraper knows.
            return Err(err("metrics-addr", "the port must not be 0"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
node-name = "h1"
socket = "/run/muslin/agent.sock"
state-dir = "/var/lib/muslin"
mtu = 1450
blocks = ["10.244.1.0/24"]
"#;

    #[test]
    fn good_config_parses_and_validates() {
        let c = AgentConfig::from_toml(GOOD).unwrap();
        c.validate().unwrap();
        assert_eq!(c.mtu, Some(1450));
        assert_eq!(c.blocks[0].to_string(), "10.244.1.0/24");
        assert_eq!(c.reconcile_interval, 30);
    }

    #[test]
    fn parse_errors_name_the_field() {
        let cases = [
            ("mtu = \"big\"", "mtu"),
            ("blocks = [\"10.0.0.0/99\"]", "blocks"),
            ("bloks = []", "bloks"),
            ("socket = 3", "socket"),
            ("backend = \"bgp\"", "backend"),
            ("encryption = \"ipsec\"", "encryption"),
            ("wireguard-port = 70000", "wireguard-port"),
            ("underlay = \"interface=(\"", "underlay"),
            ("underlay = \"nearest\"", "underlay"),
            ("datastore = \"consul\"", "datastore"),
            ("pod-cidr = \"10.244.0.0\"", "pod-cidr"),
            ("pod-cidr = []", "pod-cidr"),
            ("pod-cidr = [\"10.244.0.0/16\", \"nope\"]", "pod-cidr"),
        ];
        for (text, field) in cases {
            let e = AgentConfig::from_toml(text).unwrap_err();
            assert!(e.to_string().contains(field), "{text}: {e}");
        }
        let e = AgentConfig::from_toml("\n\nmtu = \"x\"").unwrap_err();
        assert!(e.to_string().contains("line 3"), "{e}");
    }

    #[test]
    fn validation_errors_name_the_field() {
        let base = AgentConfig::from_toml(GOOD).unwrap();
        type Mutation = Box<dyn Fn(&mut AgentConfig)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|c| c.mtu = Some(100)), "mtu"),
            (Box::new(|c| c.join = vec!["nowhere".into()]), "join"),
            (Box::new(|c| c.block_size = 16), "block-size"),
            (Box::new(|c| c.block_size = 29), "block-size"),
            (Box::new(|c| c.vxlan_vni = 0), "vxlan-vni"),
            (
                Box::new(|c| {
                    c.encryption = Encryption::Wireguard;
                    c.wireguard_port = c.gossip_port;
                }),
                "wireguard-port",
            ),
            (
                Box::new(|c| {
                    c.encryption = Encryption::Wireguard;
                    c.wireguard_port = 0;
                }),
                "wireguard-port",
            ),
            (
                Box::new(|c| {
                    c.encryption = Encryption::Wireguard;
                    c.wireguard_uapi = "../etc/passwd".into();
                }),
                "wireguard-uapi",
            ),
            (
                Box::new(|c| c.pod_cidr = "10.244.1.0/16".parse().unwrap()),
                "pod-cidr",
            ),
            (
                Box::new(|c| c.pod_cidr = "10.244.0.0/16,10.245.0.0/16".parse().unwrap()),
                "pod-cidr",
            ),
            (Box::new(|c| c.block_ttl = 0), "block-ttl"),
            (
                Box::new(|c| c.datastore = DatastoreKind::Etcd),
                "etcd-endpoints",
            ),
            (
                Box::new(|c| {
                    c.datastore = DatastoreKind::Etcd;
                    c.etcd_endpoints = vec!["localhost:2379".into()];
                }),
                "etcd-endpoints",
            ),
            (
                Box::new(|c| {
                    c.datastore = DatastoreKind::Etcd;
                    c.etcd_endpoints = vec!["http://e:2379".into()];
                    c.etcd_prefix = "muslin".into();
                }),
                "etcd-prefix",
            ),
            (
                Box::new(|c| c.blocks = vec!["10.0.0.1/24".parse().unwrap()]),
                "blocks",
            ),
            (
                Box::new(|c| c.blocks = vec!["10.0.0.0/31".parse().unwrap()]),
                "blocks",
            ),
            (
                Box::new(|c| {
                    c.blocks = vec![
                        "10.0.0.0/16".parse().unwrap(),
                        "10.0.1.0/24".parse().unwrap(),
                    ]
                }),
                "overlap",
            ),
            (Box::new(|c| c.socket = "rel.sock".into()), "socket"),
            (Box::new(|c| c.state_dir = "rel".into()), "state-dir"),
            (
                Box::new(|c| c.node_name = Some("bad name".into())),
                "node-name",
            ),
            (Box::new(|c| c.reconcile_interval = 0), "reconcile-interval"),
            (
                Box::new(|c| c.metrics_addr = Some("127.0.0.1:0".parse().unwrap())),
                "metrics-addr",
            ),
        ];
        for (mutate, field) in cases {
            let mut c = base.clone();
            mutate(&mut c);
            let e = c.validate().unwrap_err();
            assert!(e.to_string().contains(field), "{e}");
        }
    }

    fn flags_command() -> clap::Command {
        use clap::Args;
        AgentFlags::augment_args(clap::Command::new("agent").no_binary_name(true))
    }

    fn flags(argv: &[&str]) -> Result<AgentFlags, clap::Error> {
        use clap::FromArgMatches;
        let m = flags_command().try_get_matches_from(argv)?;
        AgentFlags::from_arg_matches(&m)
    }

    /// Every key as the JSON value of `c`: the same serde names as TOML,
    /// with unset options still present (as null).
    fn keyed(c: &AgentConfig) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::to_value(c).unwrap() {
            serde_json::Value::Object(m) => m,
            v => panic!("not a table: {v}"),
        }
    }

    #[test]
    fn every_key_has_a_flag_and_every_flag_a_key() {
        let keys: std::collections::BTreeSet<String> =
            keyed(&AgentConfig::default()).keys().cloned().collect();
        let cmd = flags_command();
        let flagged: std::collections::BTreeSet<String> = cmd
            .get_arguments()
            .filter(|a| a.get_id() != "help")
            .map(|a| {
                assert!(a.get_long().is_some(), "{} has no long flag", a.get_id());
                a.get_id().as_str().replace('_', "-")
            })
            .collect();
        assert_eq!(keys, flagged);
        // The key list is the one the TOML parser accepts.
        let text = toml::to_string(&AgentConfig::default()).unwrap();
        assert_eq!(
            AgentConfig::from_toml(&text).unwrap(),
            AgentConfig::default()
        );
    }

    /// A config in which every setting differs from its default.
    fn all_changed() -> AgentConfig {
        AgentConfig {
            node_name: Some("n1".into()),
            socket: "/run/x.sock".into(),
            state_dir: "/var/lib/x".into(),
            mtu: Some(1400),
            blocks: vec![
                "10.9.0.0/24".parse().unwrap(),
                "10.9.1.0/24".parse().unwrap(),
            ],
            join: vec!["10.0.0.1".into(), "10.0.0.2:7000".into()],
            gossip_port: 7000,
            gossip_interval_ms: 100,
            cluster_secret_file: Some("/etc/secret".into()),
            pod_cidr: "10.9.0.0/16".parse().unwrap(),
            block_size: 26,
            block_ttl: 60,
            backend: Backend::Vxlan,
            vxlan_vni: 7,
            vxlan_port: 8472,
            encryption: Encryption::Wireguard,
            wireguard_port: 51821,
            wireguard_uapi: "msl-wg9".into(),
            wireguard_implementation: crate::encryption::Implementation::Userspace,
            underlay: "interface=eth.*,en.*".parse().unwrap(),
            masquerade: false,
            datastore: DatastoreKind::Etcd,
            etcd_endpoints: vec!["http://10.0.0.9:2379".into(), "https://e:2379".into()],
            etcd_prefix: "/x/".into(),
            etcd_ca_file: Some("/etc/ca.pem".into()),
            etcd_cert_file: Some("/etc/cert.pem".into()),
            etcd_key_file: Some("/etc/key.pem".into()),
            reconcile_interval: 5,
            log_level: "debug".into(),
            dns: false,
            dns_domain: "cluster.example".into(),
            dns_upstreams: vec!["192.0.2.53".into(), "192.0.2.54:5353".into()],
            dns_resolv_conf: "/run/resolv.conf".into(),
            dns_upstream_timeout_ms: 700,
            metrics_addr: Some("127.0.0.1:9331".parse().unwrap()),
        }
    }

    /// Each setting written as its flag, under the flag's own long name.
    fn as_argv(c: &AgentConfig) -> Vec<String> {
        let cmd = flags_command();
        let mut argv = Vec::new();
        for (key, v) in keyed(c) {
            let id = key.replace('-', "_");
            let arg = cmd.get_arguments().find(|a| a.get_id() == id.as_str());
            let long = arg.and_then(|a| a.get_long()).expect("a flag per key");
            // Lists as a repeated flag: every list flag takes that form.
            let values: Vec<String> = match v {
                serde_json::Value::Null => continue,
                serde_json::Value::String(s) => vec![s],
                serde_json::Value::Array(a) => {
                    a.iter().map(|v| v.as_str().unwrap().to_string()).collect()
                }
                v => vec![v.to_string()],
            };
            for v in values {
                argv.push(format!("--{long}"));
                argv.push(v);
            }
        }
        argv
    }

    #[test]
    fn each_flag_sets_its_setting() {
        let want = all_changed();
        let default = keyed(&AgentConfig::default());
        for (k, v) in keyed(&want) {
            assert_ne!(
                default[&k], v,
                "{k}: the sample must differ from the default"
            );
        }
        let argv = as_argv(&want);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut c = AgentConfig::default();
        flags(&argv).unwrap().apply(&mut c);
        assert_eq!(c, want);
    }

    #[test]
    fn flags_override_the_file_and_absent_flags_leave_it() {
        let file = AgentConfig::from_toml(
            r#"
node-name = "from-file"
mtu = 1450
blocks = ["10.244.1.0/24"]
join = ["10.0.0.1"]
backend = "routed"
masquerade = false
etcd-prefix = "/file/"
"#,
        )
        .unwrap();
        let mut c = file.clone();
        flags(&[]).unwrap().apply(&mut c);
        assert_eq!(c, file, "no flags change nothing");

        let mut c = file.clone();
        let f = flags(&[
            "--node-name",
            "from-flag",
            "--block",
            "10.244.2.0/24",
            "--block",
            "10.244.3.0/24",
            "--join",
            "10.0.0.2,10.0.0.3",
            "--backend",
            "vxlan",
            "--masquerade",
            "true",
        ])
        .unwrap();
        f.apply(&mut c);
        assert_eq!(c.node_name.as_deref(), Some("from-flag"));
        assert_eq!(c.blocks.len(), 2);
        assert_eq!(c.blocks[1].to_string(), "10.244.3.0/24");
        assert_eq!(c.join, ["10.0.0.2", "10.0.0.3"]);
        assert_eq!(c.backend, Backend::Vxlan);
        assert!(c.masquerade);
        // Not given on the command line: still the file's.
        assert_eq!(c.mtu, Some(1450));
        assert_eq!(c.etcd_prefix, "/file/");
        assert_eq!(c.gossip_port, DEFAULT_GOSSIP_PORT);
    }

    #[test]
    fn bad_flag_values_are_refused_by_name() {
        for (flag, value) in [
            ("--backend", "bgp"),
            ("--underlay", "interface=("),
            ("--datastore", "consul"),
            ("--pod-cidr", "10.0.0.0"),
            ("--block", "10.0.0.0/99"),
            ("--metrics-addr", "nonsense"),
        ] {
            let e = flags(&[flag, value]).unwrap_err().to_string();
            assert!(e.contains(flag), "{flag} {value}: {e}");
        }
    }

    #[test]
    fn enums_round_trip_through_text_toml_and_flags() {
        for m in [
            "reachability",
            "first-found",
            "interface=eth0",
            "interface=eth.*,en(p|s)[0-9]+",
            "skip-interface=docker.*",
            "cidr=10.0.0.0/8,fd00::/8",
            "cidr=192.168.1.5/24",
            "can-reach=10.0.0.1",
            "address=fd00::1",
        ] {
            let parsed: Method = m.parse().unwrap();
            assert_eq!(parsed.to_string(), m);
            assert_eq!(parsed.to_string().parse::<Method>().unwrap(), parsed);
        }
        for b in [Backend::Auto, Backend::Routed, Backend::Vxlan] {
            assert_eq!(b.to_string().parse::<Backend>().unwrap(), b);
        }
        for d in [DatastoreKind::Gossip, DatastoreKind::Etcd] {
            assert_eq!(d.to_string().parse::<DatastoreKind>().unwrap(), d);
        }
        let c = all_changed();
        let text = toml::to_string(&c).unwrap();
        assert!(
            text.contains("underlay = \"interface=eth.*,en.*\""),
            "{text}"
        );
        assert!(text.contains("datastore = \"etcd\""), "{text}");
        assert!(text.contains("backend = \"vxlan\""), "{text}");
        assert_eq!(AgentConfig::from_toml(&text).unwrap(), c);
    }

    #[test]
    fn datastore_carries_its_settings() {
        assert_eq!(AgentConfig::default().datastore(), Datastore::Gossip);
        let c = AgentConfig::from_toml(
            r#"
datastore = "etcd"
etcd-endpoints = ["http://10.0.0.9:2379", "https://etcd.example:2379"]
etcd-ca-file = "/etc/ca.pem"
"#,
        )
        .unwrap();
        c.validate().unwrap();
        let Datastore::Etcd(e) = c.datastore() else {
            panic!("not etcd");
        };
        assert_eq!(e.prefix, "/muslin/");
        assert_eq!(e.ca_file, Some("/etc/ca.pem".into()));
        assert_eq!(e.socket_addrs(), ["10.0.0.9:2379".parse().unwrap()]);
    }

    #[test]
    fn pod_cidr_is_one_cidr_or_one_per_family() {
        let one = AgentConfig::from_toml("pod-cidr = \"10.250.0.0/21\"").unwrap();
        one.validate().unwrap();
        assert_eq!(one.pod_cidr().to_string(), "10.250.0.0/21");
        assert_eq!(one.pod_cidrs().len(), 1);
        // A single network is written back as today's single string.
        let text = toml::to_string(&one).unwrap();
        assert!(text.contains("pod-cidr = \"10.250.0.0/21\""), "{text}");

        let listed = AgentConfig::from_toml("pod-cidr = [\"10.250.0.0/21\"]").unwrap();
        assert_eq!(listed, one);

        let dual = AgentConfig::from_toml(
            "pod-cidr = [\"10.250.0.0/21\", \"fd00:10::/48\"]\nblock-size = 24",
        )
        .unwrap();
        assert_eq!(dual.pod_cidrs().len(), 2);
        assert_eq!(dual.pod_cidr().to_string(), "10.250.0.0/21");
        let e = dual.validate().unwrap_err().to_string();
        assert!(
            e.starts_with("pod-cidr: ") && e.contains("dual stack) is not supported yet"),
            "{e}"
        );

        let twice =
            AgentConfig::from_toml("pod-cidr = [\"10.250.0.0/21\", \"10.251.0.0/21\"]").unwrap();
        let e = twice.validate().unwrap_err().to_string();
        assert!(
            e.contains("pod-cidr") && e.contains("one pod network per family"),
            "{e}"
        );

        let mut c = AgentConfig::default();
        flags(&["--pod-cidr", "10.250.0.0/21,fd00:10::/48"])
            .unwrap()
            .apply(&mut c);
        assert_eq!(c.pod_cidr, dual.pod_cidr);
    }
}
