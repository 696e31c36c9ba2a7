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
}

impl Containers {
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
            let path = e.path().to_string();
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
            let Some(nets) = &c.networks else { continue };
            let on = || format!("container {name:?} on host {:?}", h.name.get_ref());
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
