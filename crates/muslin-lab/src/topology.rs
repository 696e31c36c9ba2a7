//! Topology files (TOML): segments (L2 switches), routers joining segments,
//! hosts with NICs and containers, blocked pairs, per-host agent settings,
//! and the cluster's networks. Parsing and validation are pure; every error
//! names the line and the field.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::de::{self, Deserializer, SeqAccess, Unexpected, Visitor};
use serde::Deserialize;
use toml::Spanned;

use muslin_model::policy::{self, NamedPort, Protocol};

use crate::names::invalid_name;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Topology {
    /// Cluster pod network the hosts' blocks come from.
    #[serde(default = "default_pod_cidr")]
    pub pod_cidr: IpNet,
    /// Prefix length of each host's block.
    #[serde(default = "default_block_prefix")]
    pub block_prefix: u8,
    #[serde(default, rename = "segment")]
    pub segments: Vec<Segment>,
    #[serde(default, rename = "router")]
    pub routers: Vec<Router>,
    #[serde(default, rename = "host")]
    pub hosts: Vec<Host>,
    #[serde(default, rename = "blocked")]
    pub blocked: Vec<Blocked>,
    /// Networks besides the default one (`pod-cidr`), created at `up`.
    #[serde(default, rename = "network")]
    pub networks: Vec<Network>,
    /// Agent settings for every host (`key = value` becomes `--key value`).
    #[serde(default)]
    pub agent: BTreeMap<String, toml::Value>,
    /// Policies `up` applies: the tables of a TOML policy file, kept as
    /// written so the file `up` hands to `muslin policy apply` is theirs.
    #[serde(default, rename = "policy")]
    pub policies: Vec<Spanned<toml::Table>>,
    /// Namespace labels `up` sets, for policies' namespace selectors.
    #[serde(default, rename = "namespace")]
    pub namespaces: Vec<Namespace>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Namespace {
    pub name: Spanned<String>,
    #[serde(default)]
    pub labels: Option<Spanned<BTreeMap<String, String>>>,
}

fn default_pod_cidr() -> IpNet {
    "10.244.0.0/16".parse().expect("literal")
}

fn default_block_prefix() -> u8 {
    24
}

fn default_mtu() -> u32 {
    1500
}

fn default_containers() -> Containers {
    Containers::Count(2)
}

/// The name of the network every cluster has: the topology's `pod-cidr`.
pub const DEFAULT_NETWORK: &str = "default";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Segment {
    pub name: Spanned<String>,
    pub cidr: IpNet,
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// Every host gets a private copy of this segment, with the same
    /// addresses on each: a hypervisor's NAT network.
    #[serde(default)]
    pub per_host: bool,
    /// Next hop of default routes on this segment; defaults to a router's
    /// address on it, else the first address.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Router {
    pub name: Spanned<String>,
    #[serde(rename = "nic")]
    pub nics: Vec<Nic>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Host {
    /// With `count`, the prefix of `name1` .. `nameN`.
    pub name: Spanned<String>,
    #[serde(default)]
    pub count: Option<u32>,
    #[serde(default, rename = "nic")]
    pub nics: Vec<Nic>,
    /// Containers attached at `up`.
    #[serde(default = "default_containers")]
    pub containers: Containers,
    #[serde(default)]
    pub agent: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Nic {
    pub segment: Spanned<String>,
    /// Fixed address; automatic when absent.
    #[serde(default)]
    pub address: Option<Spanned<IpAddr>>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub default_route: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Blocked {
    /// Two hosts whose underlay traffic is dropped.
    pub hosts: Spanned<Vec<String>>,
    /// Only on this segment; on every segment they share when absent.
    #[serde(default)]
    pub segment: Option<Spanned<String>>,
}

/// A host's containers: a count (`c1` .. `cN`, on the default network), or
/// a list naming each container and its networks.
#[derive(Debug, Clone)]
pub enum Containers {
    Count(u32),
    List(Vec<ContainerSpec>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ContainerSpec {
    pub name: Spanned<String>,
    /// In attachment order: eth0, eth1, ...; the default network alone
    /// when absent.
    #[serde(default)]
    pub networks: Option<Spanned<Vec<String>>>,
    /// What policies select it by (`args.cni.labels` of each attachment).
    #[serde(default)]
    pub labels: Option<Spanned<BTreeMap<String, String>>>,
    /// Its namespace (`K8S_POD_NAMESPACE`); the host's name when absent,
    /// as in labs before policies.
    #[serde(default)]
    pub namespace: Option<Spanned<String>>,
    /// Ports it names for policies (`args.cni.ports`): `http = 8080`,
    /// `dns = "53/udp"`.
    #[serde(default)]
    pub ports: Option<Spanned<BTreeMap<String, toml::Value>>>,
    /// More names for the name service (`args.cni.aliases` of each
    /// attachment): `aliases = ["web", "shop-web"]`.
    #[serde(default)]
    pub aliases: Option<Spanned<Vec<String>>>,
}

impl ContainerSpec {
    pub fn labels(&self) -> BTreeMap<String, String> {
        self.labels
            .as_ref()
            .map(|l| l.get_ref().clone())
            .unwrap_or_default()
    }

    /// Its named ports; those that do not parse are left out (validation
    /// refused them already).
    pub fn named_ports(&self) -> BTreeMap<String, NamedPort> {
        self.ports
            .iter()
            .flat_map(|p| p.get_ref())
            .filter_map(|(k, v)| Some((k.clone(), port_value(v).ok()?)))
            .collect()
    }

    /// Its aliases, in the order given, each once.
    pub fn aliases(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for a in self.aliases.iter().flat_map(|a| a.get_ref()) {
            if !out.contains(a) {
                out.push(a.clone());
            }
        }
        out
    }
}

/// A named port's value: a number (TCP), or `"PORT/PROTOCOL"`.
pub fn port_value(v: &toml::Value) -> Result<NamedPort, String> {
    let bad = || format!("{v}: a port 1-65535, or \"PORT/PROTOCOL\" such as \"53/udp\"");
    let number = |n: i64| u16::try_from(n).ok().filter(|n| *n >= 1);
    match v {
        toml::Value::Integer(n) => number(*n)
            .map(|port| NamedPort {
                protocol: Protocol::Tcp,
                port,
            })
            .ok_or_else(bad),
        toml::Value::String(s) => {
            let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
            let protocol = match proto.to_ascii_lowercase().as_str() {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                "sctp" => Protocol::Sctp,
                _ => return Err(bad()),
            };
            let port = port.parse().ok().and_then(number).ok_or_else(bad)?;
            Ok(NamedPort { protocol, port })
        }
        _ => Err(bad()),
    }
}

impl Containers {
    /// The containers the list form describes; none for a count.
    pub fn specs(&self) -> &[ContainerSpec] {
        match self {
            Containers::Count(_) => &[],
            Containers::List(v) => v,
        }
    }

    /// Each container's name and networks, in attachment order.
    pub fn expand(&self) -> Vec<(String, Vec<String>)> {
        match self {
            Containers::Count(n) => (1..=*n)
                .map(|i| (format!("c{i}"), vec![DEFAULT_NETWORK.to_string()]))
                .collect(),
            Containers::List(v) => v
                .iter()
                .map(|c| {
                    let nets = c.networks.as_ref().map_or_else(
                        || vec![DEFAULT_NETWORK.to_string()],
                        |n| n.get_ref().clone(),
                    );
                    (c.name.get_ref().clone(), nets)
                })
                .collect(),
        }
    }
}

// Either form, with the list's errors kept precise: the list goes through
// the derived `ContainerSpec` (an untagged enum would only say "no variant
// matched").
impl<'de> Deserialize<'de> for Containers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Containers;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number of containers, or a list of { name, networks } tables")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Containers, E> {
                u32::try_from(v)
                    .map(Containers::Count)
                    .map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Containers, E> {
                u32::try_from(v)
                    .map(Containers::Count)
                    .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Containers, A::Error> {
                Vec::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(Containers::List)
            }
        }
        d.deserialize_any(V)
    }
}

/// A network of the cluster besides the default one; `up` creates it with
/// `muslin network create`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Network {
    pub name: Spanned<String>,
    pub subnet: Spanned<IpNet>,
    /// Prefix length of each host's block; the agent chooses when absent.
    #[serde(default)]
    pub block_size: Option<u8>,
    #[serde(default)]
    pub backend: Option<NetworkBackend>,
    #[serde(default)]
    pub vni: Option<u32>,
    #[serde(default)]
    pub isolated_from_host: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkBackend {
    Auto,
    Vxlan,
}

impl NetworkBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkBackend::Auto => "auto",
            NetworkBackend::Vxlan => "vxlan",
        }
    }
}

/// Why `name` is not a valid network name: it is also the CNI network
/// name, so it keeps to lowercase letters, digits and `-`.
pub fn invalid_network_name(name: &str) -> Option<String> {
    let ok = (1..=63).contains(&name.len())
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        Some(format!(
            "{name:?} must be 1-63 lowercase letters, digits and '-', not starting with '-'"
        ))
    } else if name == DEFAULT_NETWORK {
        Some(format!(
            "{name:?} is reserved for the default network (the topology's pod-cidr)"
        ))
    } else {
        None
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{field}: {msg}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct TopologyError {
    pub line: Option<usize>,
    pub field: String,
    pub msg: String,
}

/// Where a span starts, as a 1-based line of `text`.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

impl Topology {
    pub fn parse(text: &str) -> Result<Topology, TopologyError> {
        let de = toml::Deserializer::new(text);
        let t: Topology = serde_path_to_error::deserialize(de).map_err(|e| {
            // `Spanned` fields deserialize through a private wrapper that
            // is no field of the file.
            let path = e
                .path()
                .to_string()
                .replace(".$__serde_spanned_private_value", "");
            let inner = e.into_inner();
            TopologyError {
                line: inner.span().map(|s| line_of(text, s.start)),
                field: if path == "." { "topology".into() } else { path },
                msg: inner.message().to_string(),
            }
        })?;
        t.validate(text)?;
        Ok(t)
    }

    /// The lab `muslin lab up` builds without a file: `hosts` hosts, each
    /// with a management NIC that has the default route but joins no other
    /// host (every host has 10.0.2.15 there, as under Vagrant), and a
    /// cluster NIC on a shared segment. A network that picks the
    /// default-route interface, or the first interface, fails here.
    pub fn default_text(hosts: usize) -> String {
        format!(
            r#"# The default lab: the multi-NIC pitfall, live.
[[segment]]
name = "mgmt"
cidr = "10.0.2.0/24"
per-host = true
gateway = "10.0.2.2"

[[segment]]
name = "cluster"
cidr = "192.168.56.0/24"

[[host]]
name = "h"
count = {hosts}
containers = 2

[[host.nic]]
segment = "mgmt"
default-route = true

[[host.nic]]
segment = "cluster"
"#
        )
    }

    fn validate(&self, text: &str) -> Result<(), TopologyError> {
        let err = |span: Option<std::ops::Range<usize>>, field: &str, msg: String| TopologyError {
            line: span.map(|s| line_of(text, s.start)),
            field: field.to_string(),
            msg,
        };
        // The agent's limits: /20 to /28 blocks for IPv4.
        let (lo, hi) = if self.pod_cidr.addr().is_ipv4() {
            (20, 28)
        } else {
            (64, 122)
        };
        let lo = lo.max(self.pod_cidr.prefix_len());
        if !(lo..=hi).contains(&self.block_prefix) {
            return Err(err(
                None,
                "block-prefix",
                format!(
                    "/{} must be between /{lo} and /{hi} for pod-cidr {}",
                    self.block_prefix, self.pod_cidr
                ),
            ));
        }
        let networks = self.validate_networks(text)?;
        self.validate_namespaces(text)?;
        self.validate_policies(text, &networks)?;
        let mut segs = HashMap::new();
        for (i, s) in self.segments.iter().enumerate() {
            let field = format!("segment[{i}].name");
            if let Some(why) = invalid_name(s.name.get_ref()) {
                return Err(err(Some(s.name.span()), &field, why));
            }
            if segs.insert(s.name.get_ref().clone(), s).is_some() {
                return Err(err(
                    Some(s.name.span()),
                    &field,
                    format!("segment {:?} is defined twice", s.name.get_ref()),
                ));
            }
            if !(576..=65535).contains(&s.mtu) {
                return Err(err(
                    Some(s.name.span()),
                    &format!("segment[{i}].mtu"),
                    format!("{} is out of range 576..65535", s.mtu),
                ));
            }
            if let Some(g) = s.gateway {
                if !s.cidr.contains(&g) {
                    return Err(err(
                        Some(s.name.span()),
                        &format!("segment[{i}].gateway"),
                        format!("{g} is outside {}", s.cidr),
                    ));
                }
            }
        }
        let mut nodes = HashSet::new();
        let check_nics = |kind: &str, i: usize, nics: &[Nic]| -> Result<(), TopologyError> {
            for (j, n) in nics.iter().enumerate() {
                let field = format!("{kind}[{i}].nic[{j}]");
                let Some(seg) = segs.get(n.segment.get_ref()) else {
                    return Err(err(
                        Some(n.segment.span()),
                        &format!("{field}.segment"),
                        format!("no segment named {:?}", n.segment.get_ref()),
                    ));
                };
                if let Some(a) = &n.address {
                    if !seg.cidr.contains(a.get_ref()) {
                        return Err(err(
                            Some(a.span()),
                            &format!("{field}.address"),
                            format!(
                                "{} is outside segment {} ({})",
                                a.get_ref(),
                                seg.name.get_ref(),
                                seg.cidr
                            ),
                        ));
                    }
                }
                if let Some(m) = n.mtu {
                    if !(576..=65535).contains(&m) {
                        return Err(err(
                            Some(n.segment.span()),
                            &format!("{field}.mtu"),
                            format!("{m} is out of range 576..65535"),
                        ));
                    }
                }
            }
            if nics.iter().filter(|n| n.default_route).count() > 1 {
                return Err(err(
                    None,
                    &format!("{kind}[{i}].nic"),
                    "at most one NIC may have the default route".into(),
                ));
            }
            Ok(())
        };
        for (i, r) in self.routers.iter().enumerate() {
            if let Some(why) = invalid_name(r.name.get_ref()) {
                return Err(err(Some(r.name.span()), &format!("router[{i}].name"), why));
            }
            if !nodes.insert(r.name.get_ref().clone()) {
                return Err(err(
                    Some(r.name.span()),
                    &format!("router[{i}].name"),
                    format!("{:?} is used twice", r.name.get_ref()),
                ));
            }
            check_nics("router", i, &r.nics)?;
            if r.nics.len() < 2 {
                return Err(err(
                    Some(r.name.span()),
                    &format!("router[{i}].nic"),
                    "a router joins at least two segments".into(),
                ));
            }
            if r.nics.iter().any(|n| segs[n.segment.get_ref()].per_host) {
                return Err(err(
                    Some(r.name.span()),
                    &format!("router[{i}].nic"),
                    "a router cannot join a per-host segment".into(),
                ));
            }
        }
        for (i, h) in self.hosts.iter().enumerate() {
            let field = format!("host[{i}].name");
            for name in self.expand(h) {
                if let Some(why) = invalid_name(&name) {
                    return Err(err(Some(h.name.span()), &field, why));
                }
                if !nodes.insert(name.clone()) {
                    return Err(err(
                        Some(h.name.span()),
                        &field,
                        format!("{name:?} is used twice"),
                    ));
                }
            }
            if h.count == Some(0) {
                return Err(err(
                    Some(h.name.span()),
                    &format!("host[{i}].count"),
                    "must be at least 1".into(),
                ));
            }
            if h.nics.is_empty() {
                return Err(err(
                    Some(h.name.span()),
                    &format!("host[{i}].nic"),
                    "a host needs at least one NIC".into(),
                ));
            }
            check_nics("host", i, &h.nics)?;
            self.validate_containers(text, i, h, &networks)?;
            if h.count.unwrap_or(1) > 1
                && h.nics
                    .iter()
                    .any(|n| n.address.is_some() && !segs[n.segment.get_ref()].per_host)
            {
                return Err(err(
                    Some(h.name.span()),
                    &format!("host[{i}].nic"),
                    "hosts made with `count` cannot share a fixed address on a shared segment"
                        .into(),
                ));
            }
        }
        let hosts: HashSet<String> = self.hosts.iter().flat_map(|h| self.expand(h)).collect();
        if hosts.is_empty() {
            return Err(err(None, "host", "the topology has no host".into()));
        }
        for (i, b) in self.blocked.iter().enumerate() {
            let field = format!("blocked[{i}].hosts");
            if b.hosts.get_ref().len() != 2 || b.hosts.get_ref()[0] == b.hosts.get_ref()[1] {
                return Err(err(
                    Some(b.hosts.span()),
                    &field,
                    "name two different hosts".into(),
                ));
            }
            for h in b.hosts.get_ref() {
                if !hosts.contains(h) {
                    return Err(err(
                        Some(b.hosts.span()),
                        &field,
                        format!("no host named {h:?}"),
                    ));
                }
            }
            if let Some(s) = &b.segment {
                if !segs.contains_key(s.get_ref()) {
                    return Err(err(
                        Some(s.span()),
                        &format!("blocked[{i}].segment"),
                        format!("no segment named {:?}", s.get_ref()),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The `[[network]]` tables; returns every network name containers may
    /// use, `default` included.
    fn validate_networks(&self, text: &str) -> Result<HashSet<String>, TopologyError> {
        let err = |span: std::ops::Range<usize>, field: String, msg: String| TopologyError {
            line: Some(line_of(text, span.start)),
            field,
            msg,
        };
        let mut names = HashSet::from([DEFAULT_NETWORK.to_string()]);
        for (i, n) in self.networks.iter().enumerate() {
            let name = n.name.get_ref();
            if let Some(why) = invalid_network_name(name) {
                return Err(err(n.name.span(), format!("network[{i}].name"), why));
            }
            if !names.insert(name.clone()) {
                return Err(err(
                    n.name.span(),
                    format!("network[{i}].name"),
                    format!("network {name:?} is defined twice"),
                ));
            }
            let subnet = n.subnet.get_ref();
            let field = format!("network[{i}].subnet");
            if !subnet.addr().is_ipv4() {
                return Err(err(
                    n.subnet.span(),
                    field,
                    format!("{subnet} is not IPv4; networks are IPv4 only"),
                ));
            }
            if *subnet != subnet.trunc() {
                return Err(err(
                    n.subnet.span(),
                    field,
                    format!(
                        "{subnet} has host bits set; did you mean {}?",
                        subnet.trunc()
                    ),
                ));
            }
            // The agent's own limits; it refuses what is outside them anyway,
            // but `up` would only find out after building the underlay.
            if let Some(b) = n.block_size {
                if b < subnet.prefix_len() || b > 30 {
                    return Err(err(
                        n.name.span(),
                        format!("network[{i}].block-size"),
                        format!(
                            "/{b} must be between /{} (the subnet) and /30",
                            subnet.prefix_len()
                        ),
                    ));
                }
            }
            if let Some(v) = n.vni {
                if !(1..=16_777_215).contains(&v) {
                    return Err(err(
                        n.name.span(),
                        format!("network[{i}].vni"),
                        format!("{v} is out of range 1..=16777215"),
                    ));
                }
            }
        }
        Ok(names)
    }

    /// The `[[namespace]]` tables: distinct namespace names, valid labels.
    fn validate_namespaces(&self, text: &str) -> Result<(), TopologyError> {
        let err = |span: std::ops::Range<usize>, field: String, msg: String| TopologyError {
            line: Some(line_of(text, span.start)),
            field,
            msg,
        };
        let mut seen = HashSet::new();
        for (i, n) in self.namespaces.iter().enumerate() {
            let name = n.name.get_ref();
            if !policy::dns_label(name) {
                return Err(err(
                    n.name.span(),
                    format!("namespace[{i}].name"),
                    format!("{name:?}: lowercase letters, digits and '-', at most 63"),
                ));
            }
            if !seen.insert(name) {
                return Err(err(
                    n.name.span(),
                    format!("namespace[{i}].name"),
                    format!("namespace {name:?} is defined twice"),
                ));
            }
            let Some(labels) = &n.labels else { continue };
            let why = if labels.get_ref().contains_key(policy::NAMESPACE_NAME_LABEL) {
                // The agent sets it to the name whatever is asked: a
                // different value here would only mislead.
                Some(format!(
                    "{} is every namespace's own name; it cannot be set",
                    policy::NAMESPACE_NAME_LABEL
                ))
            } else {
                labels_problem(labels.get_ref())
            };
            if let Some(why) = why {
                return Err(err(
                    labels.span(),
                    format!("namespace[{i}].labels"),
                    format!("namespace {name:?}: {why}"),
                ));
            }
        }
        Ok(())
    }

    /// The `[[policy]]` tables, through the parser `muslin policy apply`
    /// uses, so `up` never finds out after building the lab; and the
    /// networks they name must be the topology's.
    fn validate_policies(
        &self,
        text: &str,
        networks: &HashSet<String>,
    ) -> Result<(), TopologyError> {
        let Some(file) = self.policy_file() else {
            return Ok(());
        };
        let line = |i: usize| self.policies.get(i).map(|p| line_of(text, p.span().start));
        let parsed = policy::parse_document(&file, policy::Format::Toml).map_err(|e| {
            // "document N: FIELD" is the file's N-th table: the N-th here.
            let (i, at) =
                e.at.strip_prefix("document ")
                    .and_then(|rest| {
                        let (n, at) = rest.split_once(": ").unwrap_or((rest, ""));
                        Some((n.parse::<usize>().ok()?.checked_sub(1)?, at))
                    })
                    .unwrap_or((0, e.at.as_str()));
            let at = at.trim_matches('.');
            TopologyError {
                line: line(i),
                field: if at.is_empty() {
                    format!("policy[{i}]")
                } else {
                    format!("policy[{i}].{at}")
                },
                msg: e.message.clone(),
            }
        })?;
        for (i, p) in parsed.iter().enumerate() {
            if let Some(net) = &p.network {
                if !networks.contains(net) {
                    return Err(TopologyError {
                        line: line(i),
                        field: format!("policy[{i}].network"),
                        msg: format!("no network named {net:?}"),
                    });
                }
            }
        }
        Ok(())
    }

    /// The `[[policy]]` tables as a TOML policy file; `None` without any.
    pub fn policy_file(&self) -> Option<String> {
        if self.policies.is_empty() {
            return None;
        }
        let tables: Vec<toml::Value> = self
            .policies
            .iter()
            .map(|p| toml::Value::Table(p.get_ref().clone()))
            .collect();
        let mut doc = toml::Table::new();
        doc.insert("policy".into(), toml::Value::Array(tables));
        Some(toml::to_string(&doc).expect("a TOML table serializes"))
    }

    /// A host's containers: valid, distinct names, and known networks, each
    /// at most once per container.
    fn validate_containers(
        &self,
        text: &str,
        i: usize,
        h: &Host,
        networks: &HashSet<String>,
    ) -> Result<(), TopologyError> {
        let Containers::List(list) = &h.containers else {
            return Ok(());
        };
        let err = |span: std::ops::Range<usize>, field: String, msg: String| TopologyError {
            line: Some(line_of(text, span.start)),
            field,
            msg,
        };
        let mut seen = HashSet::new();
        for (j, c) in list.iter().enumerate() {
            let name = c.name.get_ref();
            let field = format!("host[{i}].containers[{j}]");
            if let Some(why) = invalid_name(name) {
                return Err(err(c.name.span(), format!("{field}.name"), why));
            }
            if !seen.insert(name) {
                return Err(err(
                    c.name.span(),
                    format!("{field}.name"),
                    format!(
                        "container {name:?} is listed twice on host {:?}",
                        h.name.get_ref()
                    ),
                ));
            }
            let on = || format!("container {name:?} on host {:?}", h.name.get_ref());
            if let Some(labels) = &c.labels {
                if let Some(why) = labels_problem(labels.get_ref()) {
                    return Err(err(
                        labels.span(),
                        format!("{field}.labels"),
                        format!("{}: {why}", on()),
                    ));
                }
            }
            if let Some(ns) = &c.namespace {
                if !policy::dns_label(ns.get_ref()) {
                    return Err(err(
                        ns.span(),
                        format!("{field}.namespace"),
                        format!(
                            "{}: {:?} is not a namespace name (lowercase letters, digits and '-', at most 63)",
                            on(),
                            ns.get_ref()
                        ),
                    ));
                }
            }
            if let Some(ports) = &c.ports {
                for (pname, v) in ports.get_ref() {
                    if let Some(why) = policy::port_name_problem(pname) {
                        return Err(err(
                            ports.span(),
                            format!("{field}.ports"),
                            format!("{}: {why}", on()),
                        ));
                    }
                    if let Err(why) = port_value(v) {
                        return Err(err(
                            ports.span(),
                            format!("{field}.ports.{pname}"),
                            format!("{}: {why}", on()),
                        ));
                    }
                }
            }
            if let Some(aliases) = &c.aliases {
                if let Some(why) = aliases_problem(aliases.get_ref()) {
                    return Err(err(
                        aliases.span(),
                        format!("{field}.aliases"),
                        format!("{}: {why}", on()),
                    ));
                }
            }
            let Some(nets) = &c.networks else { continue };
            if nets.get_ref().is_empty() {
                return Err(err(
                    nets.span(),
                    format!("{field}.networks"),
                    format!(
                        "{} is on no network; leave `networks` out for the default one",
                        on()
                    ),
                ));
            }
            let mut once = HashSet::new();
            for net in nets.get_ref() {
                if !networks.contains(net) {
                    return Err(err(
                        nets.span(),
                        format!("{field}.networks"),
                        format!("{}: no network named {net:?}", on()),
                    ));
                }
                if !once.insert(net) {
                    return Err(err(
                        nets.span(),
                        format!("{field}.networks"),
                        format!("{}: network {net:?} is listed twice", on()),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Host names a `[[host]]` entry stands for.
    pub fn expand(&self, h: &Host) -> Vec<String> {
        match h.count {
            Some(n) => (1..=n)
                .map(|i| format!("{}{i}", h.name.get_ref()))
                .collect(),
            None => vec![h.name.get_ref().clone()],
        }
    }
}

/// What is wrong with a container's aliases, as the plugin would refuse
/// them at ADD: each a lowercase DNS name, at most `MAX_ALIASES` of them.
fn aliases_problem(aliases: &[String]) -> Option<String> {
    use muslin_model::dns::{name_problem, MAX_ALIASES};
    if let Some(why) = aliases.iter().find_map(|a| name_problem(a)) {
        return Some(format!("alias {why}"));
    }
    let distinct: HashSet<&String> = aliases.iter().collect();
    (distinct.len() > MAX_ALIASES).then(|| {
        format!(
            "{} aliases; at most {MAX_ALIASES} are accepted",
            distinct.len()
        )
    })
}

/// What is wrong with a label set, as the plugin would refuse it at ADD.
fn labels_problem(labels: &BTreeMap<String, String>) -> Option<String> {
    use muslin_model::cni::{LABELS_MAX, LABELS_TOTAL_MAX};
    if labels.len() > LABELS_MAX {
        return Some(format!(
            "{} labels; at most {LABELS_MAX} are accepted",
            labels.len()
        ));
    }
    if labels.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() > LABELS_TOTAL_MAX {
        return Some(format!(
            "more than {LABELS_TOTAL_MAX} bytes of keys and values"
        ));
    }
    labels
        .iter()
        .find_map(|(k, v)| policy::label_key_problem(k).or_else(|| policy::label_value_problem(v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_topology_parses() {
        let t = Topology::parse(&Topology::default_text(3)).unwrap();
        assert_eq!(t.hosts.len(), 1);
        assert_eq!(t.expand(&t.hosts[0]), ["h1", "h2", "h3"]);
        assert!(t.segments[0].per_host);
    }

    #[test]
    fn errors_name_line_and_field() {
        let cases = [
            ("[[segment]]\nname = \"a\"\ncidr = \"10.0.0.0/24\"\nmtuu = 1\n", 4, "mtuu"),
            ("[[segment]]\nname = \"a\"\ncidr = \"nonsense\"\n", 3, "cidr"),
            ("[[segment]]\nname = \"a\"\ncidr = \"10.0.0.0/24\"\n[[host]]\nname = \"h1\"\n[[host.nic]]\nsegment = \"b\"\n", 7, "host[0].nic[0].segment"),
            ("[[segment]]\nname = \"a\"\ncidr = \"10.0.0.0/24\"\n[[host]]\nname = \"h1\"\n[[host.nic]]\nsegment = \"a\"\naddress = \"10.1.0.1\"\n", 8, "address"),
            ("[[segment]]\nname = \"a\"\ncidr = \"10.0.0.0/24\"\n[[host]]\nname = \"H1\"\n[[host.nic]]\nsegment = \"a\"\n", 5, "host[0].name"),
            ("[[segment]]\nname = \"a\"\ncidr = \"10.0.0.0/24\"\n[[host]]\nname = \"h1\"\n[[host.nic]]\nsegment = \"a\"\n[[blocked]]\nhosts = [\"h1\", \"h9\"]\n", 9, "blocked[0].hosts"),
            ("[[segment]]\nname = \"a\"\ncidr = \"10.0.0.0/24\"\n[[segment]]\nname = \"a\"\ncidr = \"10.1.0.0/24\"\n", 5, "segment[1].name"),
        ];
        for (text, line, field) in cases {
            let e = Topology::parse(text).unwrap_err();
            assert_eq!(e.line, Some(line), "{text}\n=> {e}");
            assert!(e.to_string().contains(field), "{e} should name {field}");
        }
        let e = Topology::parse("").unwrap_err();
        assert!(e.to_string().contains("no host"), "{e}");
    }

    const ONE_HOST: &str = "[[segment]]\nname = \"a\"\ncidr = \"10.0.0.0/24\"\n";

    /// `ONE_HOST`'s segment, `head` before it, and host h1 with `containers`.
    fn with(head: &str, containers: &str) -> String {
        format!("{head}\n{ONE_HOST}[[host]]\nname = \"h1\"\ncontainers = {containers}\n[[host.nic]]\nsegment = \"a\"\n")
    }

    const RED_BLUE: &str = "[[network]]\nname = \"red\"\nsubnet = \"10.50.0.0/16\"\n\
        [[network]]\nname = \"blue\"\nsubnet = \"10.50.0.0/16\"\nbackend = \"vxlan\"\n\
        vni = 5000\nblock-size = 26\nisolated-from-host = true\n";

    #[test]
    fn networks_and_container_lists_parse() {
        let t = Topology::parse(&with(
            RED_BLUE,
            r#"[{ name = "c1", networks = ["red", "blue"] }, { name = "c2" }, { name = "web", networks = ["default", "red"] }]"#,
        ))
        .unwrap();
        assert_eq!(t.networks.len(), 2);
        let blue = &t.networks[1];
        assert_eq!(blue.backend, Some(NetworkBackend::Vxlan));
        assert_eq!((blue.vni, blue.block_size), (Some(5000), Some(26)));
        assert!(blue.isolated_from_host && !t.networks[0].isolated_from_host);
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            t.hosts[0].containers.expand(),
            [
                ("c1".to_string(), s(&["red", "blue"])),
                ("c2".to_string(), s(&["default"])),
                ("web".to_string(), s(&["default", "red"])),
            ]
        );
        // The count form is unchanged: c1..cN on the default network.
        let t = Topology::parse(&with("", "3")).unwrap();
        assert_eq!(
            t.hosts[0].containers.expand(),
            [
                ("c1".to_string(), s(&["default"])),
                ("c2".to_string(), s(&["default"])),
                ("c3".to_string(), s(&["default"])),
            ]
        );
        let t = Topology::parse(&with("", "[]")).unwrap();
        assert!(t.hosts[0].containers.expand().is_empty());
    }

    #[test]
    fn network_errors_name_line_and_field() {
        let net = |body: &str| format!("[[network]]\n{body}\n");
        let cases = [
            (
                with(&net("name = \"default\"\nsubnet = \"10.50.0.0/16\""), "1"),
                2,
                "network[0].name",
                "reserved",
            ),
            (
                with(&net("name = \"Red\"\nsubnet = \"10.50.0.0/16\""), "1"),
                2,
                "network[0].name",
                "lowercase",
            ),
            (
                with(&net("name = \"r_1\"\nsubnet = \"10.50.0.0/16\""), "1"),
                2,
                "network[0].name",
                "lowercase",
            ),
            (
                with(
                    &format!(
                        "{}{}",
                        net("name = \"red\"\nsubnet = \"10.50.0.0/16\""),
                        net("name = \"red\"\nsubnet = \"10.60.0.0/16\"")
                    ),
                    "1",
                ),
                5,
                "network[1].name",
                "twice",
            ),
            (
                with(&net("name = \"red\"\nsubnet = \"fd00::/64\""), "1"),
                3,
                "network[0].subnet",
                "IPv4",
            ),
            (
                with(&net("name = \"red\"\nsubnet = \"10.50.0.1/16\""), "1"),
                3,
                "network[0].subnet",
                "10.50.0.0/16",
            ),
            (
                with(&net("name = \"red\"\nsubnet = \"bogus\""), "1"),
                3,
                "subnet",
                "invalid",
            ),
            (
                with(
                    &net("name = \"red\"\nsubnet = \"10.50.0.0/16\"\nblock-size = 12"),
                    "1",
                ),
                2,
                "network[0].block-size",
                "/12",
            ),
            (
                with(
                    &net("name = \"red\"\nsubnet = \"10.50.0.0/16\"\nvni = 0"),
                    "1",
                ),
                2,
                "network[0].vni",
                "out of range",
            ),
            (
                with(
                    &net("name = \"red\"\nsubnet = \"10.50.0.0/16\"\nbackend = \"routed\""),
                    "1",
                ),
                4,
                "backend",
                "unknown variant",
            ),
            (
                with(
                    &net("name = \"red\"\nsubnet = \"10.50.0.0/16\"\ncolour = 1"),
                    "1",
                ),
                4,
                "colour",
                "unknown field",
            ),
        ];
        for (text, line, field, msg) in cases {
            let e = Topology::parse(&text).unwrap_err();
            assert_eq!(e.line, Some(line), "{text}\n=> {e}");
            assert!(e.to_string().contains(field), "{e} should name {field}");
            assert!(e.to_string().contains(msg), "{e} should say {msg}");
        }
    }

    #[test]
    fn container_errors_name_container_host_and_field() {
        let cases = [
            (
                r#"[{ name = "c1", networks = ["green"] }]"#,
                "host[0].containers[0].networks",
                "container \"c1\" on host \"h1\": no network named \"green\"",
            ),
            (
                r#"[{ name = "c1" }, { name = "c2", networks = ["red", "red"] }]"#,
                "host[0].containers[1].networks",
                "listed twice",
            ),
            (
                r#"[{ name = "c1", networks = [] }]"#,
                "host[0].containers[0].networks",
                "on no network",
            ),
            (
                r#"[{ name = "c1" }, { name = "c1" }]"#,
                "host[0].containers[1].name",
                "listed twice on host \"h1\"",
            ),
            (
                r#"[{ name = "C1" }]"#,
                "host[0].containers[0].name",
                "lowercase",
            ),
            (
                r#"[{ name = "c1", network = ["red"] }]"#,
                "host[0].containers[0]",
                "unknown field",
            ),
            (
                r#"[{ networks = ["red"] }]"#,
                "host[0].containers[0]",
                "missing field `name`",
            ),
            ("-1", "host[0].containers", "a number of containers"),
            ("\"two\"", "host[0].containers", "a number of containers"),
        ];
        for (containers, field, msg) in cases {
            let text = with(RED_BLUE, containers);
            let e = Topology::parse(&text).unwrap_err();
            assert_eq!(e.line, Some(17), "{text}\n=> {e}");
            assert!(e.to_string().contains(field), "{e} should name {field}");
            assert!(e.to_string().contains(msg), "{e} should say {msg}");
        }
    }

    const SHOP: &str = r#"[{ name = "web", namespace = "shop", labels = { app = "web", "example.com/tier" = "front" }, ports = { http = 8080, dns = "53/udp", probe = "7777/TCP" } }, { name = "plain" }]"#;

    #[test]
    fn container_labels_namespace_and_ports_parse() {
        let t = Topology::parse(&with("", SHOP)).unwrap();
        let Containers::List(list) = &t.hosts[0].containers else {
            panic!("a list")
        };
        let web = &list[0];
        assert_eq!(
            web.labels(),
            BTreeMap::from([
                ("app".to_string(), "web".to_string()),
                ("example.com/tier".to_string(), "front".to_string()),
            ])
        );
        assert_eq!(web.namespace.as_ref().unwrap().get_ref(), "shop");
        let np = |protocol, port| NamedPort { protocol, port };
        assert_eq!(
            web.named_ports(),
            BTreeMap::from([
                ("dns".to_string(), np(Protocol::Udp, 53)),
                ("http".to_string(), np(Protocol::Tcp, 8080)),
                ("probe".to_string(), np(Protocol::Tcp, 7777)),
            ])
        );
        let plain = &list[1];
        assert!(plain.labels().is_empty() && plain.named_ports().is_empty());
        assert!(plain.namespace.is_none());
        assert!(plain.aliases().is_empty());
        let t = Topology::parse(&with(
            "",
            r#"[{ name = "web", aliases = ["www", "shop-web-front", "www"] }]"#,
        ))
        .unwrap();
        // Each alias once, in the order given.
        assert_eq!(
            t.hosts[0].containers.specs()[0].aliases(),
            ["www", "shop-web-front"]
        );
        let many: Vec<String> = (0..=muslin_model::dns::MAX_ALIASES)
            .map(|i| format!("\"a{i}\""))
            .collect();
        let e = Topology::parse(&with(
            "",
            &format!("[{{ name = \"web\", aliases = [{}] }}]", many.join(", ")),
        ))
        .unwrap_err();
        assert!(e.to_string().contains("aliases; at most"), "{e}");
        // Only the list form has them; the networks stay as they were.
        assert_eq!(
            t.hosts[0].containers.expand()[0],
            ("web".to_string(), vec!["default".to_string()])
        );
    }

    #[test]
    fn container_label_namespace_and_port_errors_name_the_field() {
        let cases = [
            (
                r#"[{ name = "c1" }, { name = "c2", labels = { "-app" = "web" } }]"#,
                "host[0].containers[1].labels",
                "label key \"-app\"",
            ),
            (
                r#"[{ name = "c1", labels = { app = "a b" } }]"#,
                "host[0].containers[0].labels",
                "label value \"a b\"",
            ),
            (
                r#"[{ name = "c1", labels = { app = 1 } }]"#,
                "host[0].containers[0].labels.app",
                "invalid type",
            ),
            (
                r#"[{ name = "c1", namespace = "Shop" }]"#,
                "host[0].containers[0].namespace",
                "not a namespace name",
            ),
            (
                r#"[{ name = "c1", namespace = "a.b" }]"#,
                "host[0].containers[0].namespace",
                "not a namespace name",
            ),
            (
                r#"[{ name = "c1", ports = { HTTP = 80 } }]"#,
                "host[0].containers[0].ports",
                "a port name is",
            ),
            (
                r#"[{ name = "c1", ports = { http = 0 } }]"#,
                "host[0].containers[0].ports.http",
                "a port 1-65535",
            ),
            (
                r#"[{ name = "c1", ports = { dns = "53/icmp" } }]"#,
                "host[0].containers[0].ports.dns",
                "PORT/PROTOCOL",
            ),
            (
                r#"[{ name = "c1", ports = { dns = "x/udp" } }]"#,
                "host[0].containers[0].ports.dns",
                "PORT/PROTOCOL",
            ),
            (
                r#"[{ name = "c1", ports = { dns = true } }]"#,
                "host[0].containers[0].ports.dns",
                "PORT/PROTOCOL",
            ),
            (
                r#"[{ name = "c1", aliases = ["web", "Web"] }]"#,
                "host[0].containers[0].aliases",
                "alias \"Web\" is not a DNS name",
            ),
            (
                r#"[{ name = "c1", aliases = ["a b"] }]"#,
                "host[0].containers[0].aliases",
                "not a DNS name",
            ),
            (
                r#"[{ name = "c1", aliases = "web" }]"#,
                "host[0].containers[0].aliases",
                "invalid type",
            ),
            (
                r#"[{ name = "c1", aliases = [1] }]"#,
                "host[0].containers[0].aliases",
                "invalid type",
            ),
        ];
        for (containers, field, msg) in cases {
            let text = with("", containers);
            let e = Topology::parse(&text).unwrap_err();
            assert_eq!(e.line, Some(7), "{text}\n=> {e}");
            assert!(e.to_string().contains(field), "{e} should name {field}");
            assert!(e.to_string().contains(msg), "{e} should say {msg}");
        }
    }

    const POLICIES: &str = r#"
[[namespace]]
name = "shop"
labels = { team = "a" }

[[namespace]]
name = "other"

[[policy]]
name = "db"
namespace = "shop"
podSelector = { matchLabels = { app = "db" } }
ingress = [{ from = [{ podSelector = { matchLabels = { app = "web" } } }], ports = [{ protocol = "TCP", port = 7777 }] }]

[[policy]]
name = "guard"
action = "deny"
order = 10
podSelector = {}
ingress = [{ from = [{ namespaceSelector = { matchLabels = { "kubernetes.io/metadata.name" = "other" } } }] }]
"#;

    #[test]
    fn policies_and_namespaces_parse_and_make_a_policy_file() {
        let t = Topology::parse(&with(POLICIES, "1")).unwrap();
        assert_eq!(t.namespaces.len(), 2);
        assert_eq!(t.namespaces[0].name.get_ref(), "shop");
        assert_eq!(
            t.namespaces[0].labels.as_ref().unwrap().get_ref(),
            &BTreeMap::from([("team".to_string(), "a".to_string())])
        );
        assert!(t.namespaces[1].labels.is_none());
        // The file `up` applies holds the same policies.
        let file = t.policy_file().unwrap();
        let p = policy::parse_document(&file, policy::Format::Toml).unwrap();
        let keys: Vec<String> = p.iter().map(|p| p.key()).collect();
        assert_eq!(keys, ["shop:db", "guard"]);
        assert_eq!(p[1].action, policy::Action::Deny);
        assert_eq!(p[1].order, Some(10));
        assert!(Topology::parse(&with("", "1"))
            .unwrap()
            .policy_file()
            .is_none());
    }

    #[test]
    fn policy_and_namespace_errors_name_the_table_and_field() {
        let pol = |body: &str| format!("[[policy]]\nname = \"p\"\npodSelector = {{}}\n{body}\n");
        let cases = [
            (
                format!("{}{}", pol(""), pol("action = \"maybe\"")),
                Some(5),
                "policy[1].action",
                "allow or deny",
            ),
            (
                pol("ingress = [{ from = [{ podSelector = { matchLabels = { \"-x\" = \"y\" } } }] }]"),
                Some(1),
                "policy[0].ingress[0].from[0].podSelector.matchLabels",
                "label key",
            ),
            (
                pol("colour = 1"),
                Some(1),
                "policy[0]",
                "unknown field `colour`",
            ),
            (
                "[[policy]]\nname = \"p\"\n".to_string(),
                Some(1),
                "policy[0].podSelector",
                "is required",
            ),
            (
                format!("{}{}", pol(""), pol("")),
                Some(5),
                "policy[1].name",
                "appears twice",
            ),
            (
                pol("network = \"red\""),
                Some(1),
                "policy[0].network",
                "no network named \"red\"",
            ),
            (
                "[[namespace]]\nname = \"Shop\"\n".to_string(),
                Some(2),
                "namespace[0].name",
                "lowercase",
            ),
            (
                "[[namespace]]\nname = \"a\"\n[[namespace]]\nname = \"a\"\n".to_string(),
                Some(4),
                "namespace[1].name",
                "defined twice",
            ),
            (
                "[[namespace]]\nname = \"a\"\nlabels = { \"x y\" = \"1\" }\n".to_string(),
                Some(3),
                "namespace[0].labels",
                "label key \"x y\"",
            ),
            (
                "[[namespace]]\nname = \"a\"\nlabels = { \"kubernetes.io/metadata.name\" = \"b\" }\n"
                    .to_string(),
                Some(3),
                "namespace[0].labels",
                "cannot be set",
            ),
            (
                "[[namespace]]\nname = \"a\"\nteam = \"b\"\n".to_string(),
                Some(3),
                "namespace[0]",
                "unknown field",
            ),
        ];
        for (head, line, field, msg) in cases {
            let text = with(&head, "1");
            let e = Topology::parse(&text).unwrap_err();
            assert_eq!(e.line, line, "{text}\n=> {e}");
            assert!(e.to_string().contains(field), "{e} should name {field}");
            assert!(e.to_string().contains(msg), "{e} should say {msg}");
        }
    }

    #[test]
    fn readme_example_parses() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("### Topology files").expect("section");
        let body = &readme[start..];
        let toml_start = body.find("```toml\n").expect("example") + 8;
        let text = &body[toml_start..toml_start + body[toml_start..].find("```").expect("end")];
        let t = Topology::parse(text).unwrap_or_else(|e| panic!("README example: {e}"));
        assert_eq!(t.expand(&t.hosts[0]), ["h1", "h2"]);
    }

    #[test]
    fn shipped_examples_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&p).unwrap();
                Topology::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
        assert!(n >= 5, "examples/ ships the topologies");
    }
}
