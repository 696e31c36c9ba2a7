//! Network policy: which endpoints may open connections to which.
//!
//! The semantics are Kubernetes NetworkPolicy's, so that a policy written
//! for Kubernetes means the same here:
//! - a policy selects endpoints (a label selector, in its namespace, or in
//!   every namespace when it is cluster-wide) for ingress, egress or both;
//! - an endpoint selected by an allow policy for a direction is isolated
//!   in that direction and allows only the union of the rules of every
//!   allow policy selecting it; an endpoint no allow policy selects allows
//!   everything;
//! - a rule allows its peers (endpoints chosen by pod and namespace label
//!   selectors, or address blocks with exceptions) on its ports (all when
//!   none are given);
//! - replies of allowed connections are allowed, and so is traffic from
//!   the endpoint's own host.
//!
//! On top, as operators ask of Calico's global policies: `action = deny`
//! policies drop what their rules match before the allow union is looked
//! at, lower `order` first. A deny policy never isolates an endpoint by
//! itself: what it does not match goes on as if it did not exist.
//!
//! A policy sees endpoints of one network at a time: overlapping networks
//! may reuse addresses, so a peer is always taken from the network of the
//! endpoint the rule protects.

mod parse;
mod selector;

use std::collections::BTreeMap;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

pub use parse::{parse_document, port_name_problem, Format, PolicyError};
pub use selector::{Expression, Operator, Selector};

/// The namespace of endpoints that were given none (containers not run by
/// Kubernetes), as Kubernetes calls its own.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The label every namespace carries with its own name, as Kubernetes
/// sets it: policies written for Kubernetes select namespaces by it.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Store kind of policy records and of namespace label records.
pub const POLICY_KIND: &str = "policy";
pub const NAMESPACE_KIND: &str = "namespace";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// A port an endpoint names, so policies can allow it by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NamedPort {
    pub protocol: Protocol,
    pub port: u16,
}

/// A policy as stored: validated, in one canonical shape whatever file
/// format it came in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub name: String,
    /// `None`: cluster-wide (selects endpoints of every namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Only endpoints of this network (every network when `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    pub action: Action,
    /// Deny policies are evaluated lowest order first; allow policies are a
    /// union, their order does not matter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<i32>,
    pub selector: Selector,
    /// The directions the policy applies to; an empty rule list in one of
    /// them isolates without allowing anything.
    pub types: Vec<Direction>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Rule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Rule {
    /// Who: `None` is everyone; `Some(empty)` cannot happen (parsing makes
    /// an empty list `None`, as Kubernetes reads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<Peer>>,
    /// On which ports: empty is every port of every protocol.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Peer {
    Endpoints {
        /// `None`: every endpoint of the namespaces chosen.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pods: Option<Selector>,
        /// `None`: the policy's own namespace (every namespace for a
        /// cluster-wide policy).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        namespaces: Option<Selector>,
    },
    Block {
        cidr: Ipv4Net,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        except: Vec<Ipv4Net>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortRule {
    pub protocol: Protocol,
    /// `None`: every port of the protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Port {
    /// `first..=last`; one port has both equal.
    Range { first: u16, last: u16 },
    /// A port the destination endpoint names (`args.cni.ports`).
    Named(String),
}

impl Policy {
    /// The store name: unique per namespace as in Kubernetes, so the
    /// namespace is part of it (names hold no `:`).
    pub fn key(&self) -> String {
        key(self.namespace.as_deref(), &self.name)
    }

    pub fn applies(&self, d: Direction) -> bool {
        self.types.contains(&d)
    }

    pub fn rules(&self, d: Direction) -> &[Rule] {
        match d {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Whether the policy protects `ep` (for the directions it applies to).
    pub fn selects(&self, ep: &Member<'_>) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| ns == ep.namespace)
            && self.network.as_deref().is_none_or(|n| n == ep.network)
            && self.selector.matches(ep.labels)
    }

    /// Whether `ep` is among `peer`'s endpoints. `ns_labels` gives a
    /// namespace's labels.
    pub fn peer_has(
        &self,
        peer: &Peer,
        ep: &Member<'_>,
        ns_labels: &dyn Fn(&str) -> BTreeMap<String, String>,
    ) -> bool {
        match peer {
            Peer::Block { .. } => false,
            Peer::Endpoints { pods, namespaces } => {
                let ns_ok = match namespaces {
                    Some(sel) => sel.matches(&ns_labels(ep.namespace)),
                    None => self
                        .namespace
                        .as_deref()
                        .is_none_or(|ns| ns == ep.namespace),
                };
                ns_ok && pods.as_ref().is_none_or(|s| s.matches(ep.labels))
            }
        }
    }

    /// What is wrong with a policy that did not come through the parser (a
    /// record from the cluster store, written by another agent): the
    /// parser's rules checked again, so a record no agent would write is
    /// never compiled (one nft refuses would stop every later change).
    pub fn problem(&self) -> Option<String> {
        use parse::{MAX_EXCEPT, MAX_PEERS, MAX_PORTS, MAX_RULES, MAX_SELECTOR_TERMS};
        let key = self.key();
        let bad = |what: String| Some(format!("policy {key}: {what}"));
        if !dns_subdomain(&self.name) || self.name.len() > 253 {
            return bad("bad name".into());
        }
        if self.namespace.as_deref().is_some_and(|n| !dns_label(n)) {
            return bad("bad namespace".into());
        }
        if self
            .network
            .as_deref()
            .is_some_and(|n| !crate::cluster::valid_network_id(n))
        {
            return bad("bad network".into());
        }
        if self.order.is_some() && self.action == Action::Allow {
            return bad("an allow policy with an order".into());
        }
        let mut types = self.types.clone();
        types.dedup();
        if types.is_empty() || types.len() != self.types.len() {
            return bad("bad policyTypes".into());
        }
        let selector = |s: &Selector| -> Option<String> {
            if s.match_labels.len() + s.match_expressions.len() > MAX_SELECTOR_TERMS {
                return Some("a selector with too many terms".into());
            }
            for (k, v) in &s.match_labels {
                if let Some(p) = label_key_problem(k).or_else(|| label_value_problem(v)) {
                    return Some(p);
                }
            }
            for e in &s.match_expressions {
                if let Some(p) = label_key_problem(&e.key) {
                    return Some(p);
                }
                let needs = matches!(e.operator, Operator::In | Operator::NotIn);
                if needs == e.values.is_empty() {
                    return Some(format!("expression on {} with bad values", e.key));
                }
                if let Some(p) = e.values.iter().find_map(|v| label_value_problem(v)) {
                    return Some(p);
                }
            }
            None
        };
        if let Some(p) = selector(&self.selector) {
            return bad(p);
        }
        for d in [Direction::Ingress, Direction::Egress] {
            let rules = self.rules(d);
            if rules.len() > MAX_RULES || (!self.applies(d) && !rules.is_empty()) {
                return bad(format!("bad {} rules", d.name()));
            }
            for r in rules {
                if let Some(peers) = &r.peers {
                    if peers.is_empty() || peers.len() > MAX_PEERS {
                        return bad("a rule with a bad peer list".into());
                    }
                    for p in peers {
                        let problem = match p {
                            Peer::Endpoints { pods, namespaces } => {
                                if pods.is_none() && namespaces.is_none() {
                                    Some("a peer naming nobody".into())
                                } else {
                                    pods.iter().chain(namespaces).find_map(selector)
                                }
                            }
                            Peer::Block { cidr, except } => (except.len() > MAX_EXCEPT
                                || cidr.trunc() != *cidr
                                || except.iter().any(|e| {
                                    !cidr.contains(e) || e.prefix_len() <= cidr.prefix_len()
                                }))
                            .then(|| format!("bad block {cidr}")),
                        };
                        if let Some(p) = problem {
                            return bad(p);
                        }
                    }
                }
                if r.ports.len() > MAX_PORTS {
                    return bad("too many ports".into());
                }
                for p in &r.ports {
                    let problem = match &p.port {
                        None => None,
                        Some(Port::Range { first, last }) => (*first == 0 || first > last)
                            .then(|| format!("bad port range {first}-{last}")),
                        Some(Port::Named(n)) => port_name_problem(n),
                    };
                    if let Some(p) = problem {
                        return bad(p);
                    }
                }
            }
        }
        None
    }
}

pub fn key(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{ns}:{name}"),
        None => name.to_string(),
    }
}

/// An endpoint as policies see it.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    pub network: &'a str,
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

impl<'a> Member<'a> {
    pub fn of(e: &'a crate::cluster::EndpointRecord) -> Self {
        Member {
            network: &e.network,
            namespace: e.pod_namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE),
            labels: &e.labels,
        }
    }
}

/// The policies that protect `ep` in direction `d`, deny ones first in
/// their order (then by key, so every host agrees), then allow ones by key.
pub fn protecting<'p>(policies: &'p [Policy], ep: &Member<'_>, d: Direction) -> Vec<&'p Policy> {
    let mut v: Vec<&Policy> = policies
        .iter()
        .filter(|p| p.applies(d) && p.selects(ep))
        .collect();
    v.sort_by_key(|p| {
        (
            p.action != Action::Deny,
            p.order.unwrap_or(i32::MAX),
            p.key(),
        )
    });
    v
}

/// One end of a connection: an endpoint, its address, and the ports it
/// names.
#[derive(Debug, Clone, Copy)]
pub struct End<'a> {
    pub member: Member<'a>,
    pub addr: std::net::Ipv4Addr,
    pub ports: &'a BTreeMap<String, NamedPort>,
}

/// Whether policies let `from` open a connection to `to` on `protocol`
/// and `port`: the meaning the compiled table must have, written plainly
/// (the lab's check and the tests judge the data plane by it).
pub fn allows(
    policies: &[Policy],
    from: &End<'_>,
    to: &End<'_>,
    protocol: Protocol,
    port: u16,
    ns_labels: &dyn Fn(&str) -> BTreeMap<String, String>,
) -> bool {
    let side = |me: &End<'_>, peer: &End<'_>, d: Direction| {
        let rule_matches = |p: &Policy, r: &Rule| {
            let who = r.peers.as_ref().is_none_or(|peers| {
                peers.iter().any(|pe| match pe {
                    Peer::Block { cidr, except } => {
                        cidr.contains(&peer.addr) && !except.iter().any(|e| e.contains(&peer.addr))
                    }
                    Peer::Endpoints { .. } => {
                        peer.member.network == me.member.network
                            && p.peer_has(pe, &peer.member, ns_labels)
                    }
                })
            });
            let on = r.ports.is_empty()
                || r.ports.iter().any(|pr| {
                    pr.protocol == protocol
                        && match &pr.port {
                            None => true,
                            Some(Port::Range { first, last }) => (*first..=*last).contains(&port),
                            Some(Port::Named(n)) => to
                                .ports
                                .get(n)
                                .is_some_and(|np| np.protocol == protocol && np.port == port),
                        }
                });
            who && on
        };
        let ps = protecting(policies, &me.member, d);
        if ps
            .iter()
            .filter(|p| p.action == Action::Deny)
            .any(|p| p.rules(d).iter().any(|r| rule_matches(p, r)))
        {
            return false;
        }
        let allow: Vec<&&Policy> = ps.iter().filter(|p| p.action == Action::Allow).collect();
        allow.is_empty()
            || allow
                .iter()
                .any(|p| p.rules(d).iter().any(|r| rule_matches(p, r)))
    };
    side(from, to, Direction::Egress) && side(to, from, Direction::Ingress)
}

/// `block` minus `except`, as disjoint inclusive ranges of addresses.
pub fn block_ranges(block: Ipv4Net, except: &[Ipv4Net]) -> Vec<(u32, u32)> {
    let mut out = vec![(u32::from(block.network()), u32::from(block.broadcast()))];
    for e in except {
        let (lo, hi) = (u32::from(e.network()), u32::from(e.broadcast()));
        out = out
            .into_iter()
            .flat_map(|(a, b)| {
                let mut parts = Vec::new();
                if hi < a || lo > b {
                    parts.push((a, b));
                } else {
                    if lo > a {
                        parts.push((a, lo - 1));
                    }
                    if hi < b {
                        parts.push((hi + 1, b));
                    }
                }
                parts
            })
            .collect();
    }
    out
}

/// Overlapping ranges merged (an nft interval set refuses overlaps).
/// Touching ranges stay apart: an endpoint's address stays its own
/// element, so its coming and going changes only that element.
pub fn normalize(mut ranges: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    ranges.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// The IPv4 host addresses of an endpoint.
pub fn v4_addresses(addresses: &[IpNet]) -> impl Iterator<Item = u32> + '_ {
    addresses.iter().filter_map(|a| match a {
        IpNet::V4(n) => Some(u32::from(n.addr())),
        IpNet::V6(_) => None,
    })
}

/// Kubernetes' rules for a label key: an optional DNS-subdomain prefix and
/// `/`, then a name of at most 63 characters, alphanumeric at both ends,
/// with `-`, `_`, `.` inside.
pub fn label_key_problem(k: &str) -> Option<String> {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        if p.is_empty() || p.len() > 253 || !dns_subdomain(p) {
            return Some(format!(
                "label key {k:?}: the prefix must be a DNS subdomain"
            ));
        }
    }
    if name.is_empty() || name.len() > 63 || !label_chars(name) {
        return Some(format!(
            "label key {k:?}: the name must be 1-63 characters, alphanumeric at both ends, with -, _ or . inside"
        ));
    }
    None
}

pub fn label_value_problem(v: &str) -> Option<String> {
    if v.len() > 63 || (!v.is_empty() && !label_chars(v)) {
        return Some(format!(
            "label value {v:?}: at most 63 characters, alphanumeric at both ends, with -, _ or . inside"
        ));
    }
    None
}

fn label_chars(s: &str) -> bool {
    let b = s.as_bytes();
    b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A DNS-1123 subdomain (names of Kubernetes objects and namespaces).
pub fn dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

/// A DNS-1123 label (namespace names).
pub fn dns_label(s: &str) -> bool {
    s.len() <= 63 && !s.contains('.') && dns_subdomain(s)
}

#[cfg(test)]
mod tests;
