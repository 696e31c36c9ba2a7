//! The agent's configuration: TOML file, then command-line overrides, then
//! validation that names the offending field.

use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// IPv6 needs at least 1280, and dual-stack is on the roadmap.
pub const MTU_MIN: u32 = 1280;
pub const MTU_MAX: u32 = 65535;

pub const DEFAULT_SOCKET: &str = "/run/muslin/agent.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/muslin";
pub const DEFAULT_GOSSIP_PORT: u16 = 7331;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct AgentConfig {
    /// Name of this node in the cluster; the host name when unset.
    pub node_name: Option<String>,
    /// Unix socket the plugin and the CLI talk to (created mode 0600).
    pub socket: PathBuf,
    /// Where the endpoint table is persisted.
    pub state_dir: PathBuf,
    /// MTU of container interfaces; detected from the underlay when unset.
    pub mtu: Option<u32>,
    /// Fixed pod address blocks of this node. When empty (the default) the
    /// node leases blocks of `pod-cidr` from the cluster.
    pub blocks: Vec<IpNet>,
    /// Peers to join (`ADDR` or `ADDR:PORT`); the first node has none.
    pub join: Vec<String>,
    pub gossip_port: u16,
    pub gossip_interval_ms: u64,
    /// File holding the cluster secret that seals gossip.
    pub cluster_secret_file: Option<PathBuf>,
    /// The cluster's pod network, split into per-node blocks.
    pub pod_cidr: IpNet,
    /// Prefix length of each node's blocks (/20 to /28 for IPv4).
    pub block_size: u8,
    /// Seconds a silent node keeps its blocks before others may claim them.
    pub block_ttl: u64,
    /// `auto`, `routed` or `vxlan`.
    pub backend: String,
    pub vxlan_vni: u32,
    pub vxlan_port: u16,
    /// How the underlay address is chosen: `reachability` (default),
    /// `first-found`, `interface=REGEX`, `skip-interface=REGEX`,
    /// `cidr=CIDR`, `can-reach=ADDR` or `address=ADDR`.
    pub underlay: String,
    /// Masquerade pod traffic that leaves the pod network.
    pub masquerade: bool,
    /// Where cluster state lives: `gossip` (embedded) or `etcd`.
    pub datastore: String,
    /// etcd client URLs (`http://` or `https://`).
    pub etcd_endpoints: Vec<String>,
    /// Key prefix of Muslin's state in etcd.
    pub etcd_prefix: String,
    pub etcd_ca_file: Option<PathBuf>,
    pub etcd_cert_file: Option<PathBuf>,
    pub etcd_key_file: Option<PathBuf>,
    /// Seconds between full reconciliations of the node's attachments.
    pub reconcile_interval: u64,
    /// `tracing` filter, such as `info` or `muslin=debug`.
    pub log_level: String,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            node_name: None,
            socket: DEFAULT_SOCKET.into(),
            state_dir: DEFAULT_STATE_DIR.into(),
            mtu: None,
            blocks: Vec::new(),
            join: Vec::new(),
            gossip_port: DEFAULT_GOSSIP_PORT,
            gossip_interval_ms: 200,
            cluster_secret_file: None,
            pod_cidr: "10.244.0.0/16".parse().expect("literal"),
            block_size: 24,
            block_ttl: 3600,
            backend: "auto".into(),
            vxlan_vni: 4242,
            vxlan_port: 4789,
            underlay: "reachability".into(),
            masquerade: true,
            datastore: "gossip".into(),
            etcd_endpoints: Vec::new(),
            etcd_prefix: "/muslin/".into(),
            etcd_ca_file: None,
            etcd_cert_file: None,
            etcd_key_file: None,
            reconcile_interval: 30,
            log_level: "info".into(),
        }
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
        if !(10..=10_000).contains(&self.gossip_interval_ms) {
            return Err(err(
                "gossip-interval-ms",
                format!("{} is out of range 10..=10000", self.gossip_interval_ms),
            ));
        }
        if self.pod_cidr.trunc() != self.pod_cidr {
            return Err(err(
                "pod-cidr",
                format!("{} has host bits set", self.pod_cidr),
            ));
        }
        let (lo, hi) = if self.pod_cidr.addr().is_ipv4() {
            (20, 28)
        } else {
            (64, 122)
        };
        if !(lo..=hi).contains(&self.block_size) || self.block_size < self.pod_cidr.prefix_len() {
            return Err(err(
                "block-size",
                format!(
                    "/{} must be between /{lo} and /{hi} and inside pod-cidr {}",
                    self.block_size, self.pod_cidr
                ),
            ));
        }
        if self.block_ttl == 0 {
            return Err(err("block-ttl", "must be at least 1 second"));
        }
        self.backend
            .parse::<crate::dataplane::Backend>()
            .map_err(|m| err("backend", m))?;
        if !(1..=16_777_215).contains(&self.vxlan_vni) {
            return Err(err(
                "vxlan-vni",
                format!("{} is out of range 1..=16777215", self.vxlan_vni),
            ));
        }
        if self.vxlan_port == 0 {
            return Err(err("vxlan-port", "must not be 0"));
        }
        self.underlay
            .parse::<crate::underlay::Method>()
            .map_err(|m| err("underlay", m))?;
        match self.datastore.as_str() {
            "gossip" => {}
            "etcd" => {
                if self.etcd_endpoints.is_empty() {
                    return Err(err("etcd-endpoints", "required with datastore = \"etcd\""));
                }
                for e in &self.etcd_endpoints {
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
                if !self.etcd_prefix.starts_with('/') || !self.etcd_prefix.ends_with('/') {
                    return Err(err(
                        "etcd-prefix",
                        format!("{:?} must start and end with '/'", self.etcd_prefix),
                    ));
                }
            }
            other => {
                return Err(err(
                    "datastore",
                    format!("{other:?} is not one of gossip, etcd"),
                ))
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
            (Box::new(|c| c.backend = "bgp".into()), "backend"),
            (Box::new(|c| c.underlay = "interface=(".into()), "underlay"),
            (Box::new(|c| c.vxlan_vni = 0), "vxlan-vni"),
            (
                Box::new(|c| c.pod_cidr = "10.244.1.0/16".parse().unwrap()),
                "pod-cidr",
            ),
            (Box::new(|c| c.block_ttl = 0), "block-ttl"),
            (Box::new(|c| c.datastore = "consul".into()), "datastore"),
            (Box::new(|c| c.datastore = "etcd".into()), "etcd-endpoints"),
            (
                Box::new(|c| {
                    c.datastore = "etcd".into();
                    c.etcd_endpoints = vec!["localhost:2379".into()];
                }),
                "etcd-endpoints",
            ),
            (
                Box::new(|c| {
                    c.datastore = "etcd".into();
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
        ];
        for (mutate, field) in cases {
            let mut c = base.clone();
            mutate(&mut c);
            let e = c.validate().unwrap_err();
            assert!(e.to_string().contains(field), "{e}");
        }
    }
}
