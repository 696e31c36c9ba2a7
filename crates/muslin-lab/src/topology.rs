//! Topology files (TOML): segments (L2 switches), routers joining segments,
//! hosts with NICs, blocked pairs, per-host agent settings. Parsing and
//! validation are pure; every error names the line and the field.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;
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

fn default_containers() -> u32 {
    2
}

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
    pub containers: u32,
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
