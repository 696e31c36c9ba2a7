//! Policy files: YAML (one or several documents) or TOML, in Muslin's own
//! shape or as a Kubernetes NetworkPolicy applied as-is. Both shapes use
//! Kubernetes' field names (`podSelector`, `ipBlock`, `endPort`...), so a
//! policy moves between them by moving its fields. Muslin's shape is the
//! spec's fields next to `name`, `namespace` and the extensions `action`,
//! `order` and `network` (docs/policy.md).
//!
//! Every error names the field it is about, and a file with any error
//! applies nothing.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::{IpNet, Ipv4Net};
use serde::Deserialize;

use super::selector::{Expression, Operator, Selector};
use super::{Action, Direction, Peer, Policy, Port, PortRule, Protocol, Rule};

/// Why a policy file was refused: where, and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {message}")]
pub struct PolicyError {
    pub at: String,
    pub message: String,
}

fn err(at: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError {
        at: at.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Toml,
}

impl Format {
    /// By file name: `.toml` is TOML, everything else YAML (which JSON is).
    pub fn of_path(path: &str) -> Format {
        if path.ends_with(".toml") {
            Format::Toml
        } else {
            Format::Yaml
        }
    }
}

/// Bounds that keep one policy small enough to travel as one store record
/// and cheap to compile.
/// Policies of one file: written in one etcd transaction, whose default
/// limit is 128 operations.
const MAX_POLICIES: usize = 128;
pub(super) const MAX_RULES: usize = 256;
pub(super) const MAX_PEERS: usize = 256;
pub(super) const MAX_PORTS: usize = 256;
pub(super) const MAX_EXCEPT: usize = 256;
pub(super) const MAX_SELECTOR_TERMS: usize = 64;

/// Every policy of a file.
pub fn parse_document(text: &str, format: Format) -> Result<Vec<Policy>, PolicyError> {
    let docs: Vec<serde_json::Value> = match format {
        Format::Toml => {
            let v: serde_json::Value =
                toml::from_str(text).map_err(|e| err("TOML", e.message().to_string()))?;
            match v.get("policy") {
                Some(serde_json::Value::Array(list))
                    if v.as_object().map(|o| o.len()) == Some(1) =>
                {
                    list.clone()
                }
                Some(_) if v.as_object().map(|o| o.len()) == Some(1) => {
                    return Err(err("policy", "must be an array of tables ([[policy]])"))
                }
                _ => vec![v],
            }
        }
        Format::Yaml => {
            let mut docs = Vec::new();
            for (i, d) in serde_norway::Deserializer::from_str(text).enumerate() {
                let v = serde_json::Value::deserialize(d)
                    .map_err(|e| err(format!("YAML document {}", i + 1), e.to_string()))?;
                if !v.is_null() {
                    docs.push(v);
                }
            }
            docs
        }
    };
    if docs.is_empty() {
        return Err(err("file", "holds no policy"));
    }
    if docs.len() > MAX_POLICIES {
        return Err(err(
            "file",
            format!(
                "holds {} policies; at most {MAX_POLICIES} are applied at once (one etcd transaction)",
                docs.len()
            ),
        ));
    }
    let mut out: Vec<Policy> = Vec::new();
    for (i, d) in docs.into_iter().enumerate() {
        let p = one(d).map_err(|e| err(format!("document {}: {}", i + 1, e.at), e.message))?;
        if out.iter().any(|o| o.key() == p.key()) {
            return Err(err(
                format!("document {}: name", i + 1),
                format!("policy {} appears twice in the file", p.key()),
            ));
        }
        out.push(p);
    }
    Ok(out)
}

/// Kubernetes' envelope: only the name and namespace of its metadata
/// matter here; the rest (uid, labels, annotations...) is ignored, so a
/// policy exported from a cluster applies as it is.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    name: Option<String>,
    namespace: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Envelope {
    api_version: String,
    kind: String,
    metadata: Meta,
    spec: Spec,
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    pod_selector: Option<RawSelector>,
    policy_types: Option<Vec<String>>,
    ingress: Option<Vec<RawIngress>>,
    egress: Option<Vec<RawEgress>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Native {
    name: Option<String>,
    namespace: Option<String>,
    network: Option<String>,
    action: Option<String>,
    order: Option<i32>,
    pod_selector: Option<RawSelector>,
    policy_types: Option<Vec<String>>,
    ingress: Option<Vec<RawIngress>>,
    egress: Option<Vec<RawEgress>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSelector {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
    #[serde(default)]
    match_expressions: Vec<RawExpression>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawExpression {
    key: String,
    operator: String,
    #[serde(default)]
    values: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawIngress {
    from: Option<Vec<RawPeer>>,
    ports: Option<Vec<RawPort>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawEgress {
    to: Option<Vec<RawPeer>>,
    ports: Option<Vec<RawPort>>,
}

/// A rule's peers and ports, whichever direction it is.
type RawRule = (Option<Vec<RawPeer>>, Option<Vec<RawPort>>);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPeer {
    pod_selector: Option<RawSelector>,
    namespace_selector: Option<RawSelector>,
    ip_block: Option<RawBlock>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawBlock {
    cidr: String,
    #[serde(default)]
    except: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPort {
    protocol: Option<String>,
    port: Option<IntOrName>,
    end_port: Option<i64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrName {
    Int(i64),
    Name(String),
}

/// Deserializes `v` as `T`, naming the path of a refused field.
fn typed<T: serde::de::DeserializeOwned>(
    v: serde_json::Value,
    base: &str,
) -> Result<T, PolicyError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let at = match (base.is_empty(), path == ".") {
            (true, _) => path,
            (false, true) => base.to_string(),
            (false, false) => format!("{base}.{path}"),
        };
        err(at, e.into_inner().to_string())
    })
}

fn one(v: serde_json::Value) -> Result<Policy, PolicyError> {
    if !v.is_object() {
        return Err(err("document", "must be a mapping of a policy's fields"));
    }
    if v.get("apiVersion").is_some() || v.get("kind").is_some() {
        let e: Envelope = typed(v, "")?;
        if e.kind != "NetworkPolicy" {
            return Err(err(
                "kind",
                format!("{:?}: only NetworkPolicy is understood", e.kind),
            ));
        }
        if !e.api_version.starts_with("networking.k8s.io/") {
            return Err(err(
                "apiVersion",
                format!("{:?}: expected networking.k8s.io/v1", e.api_version),
            ));
        }
        let n = Native {
            name: e.metadata.name,
            // Kubernetes puts a policy without a namespace in "default".
            namespace: Some(
                e.metadata
                    .namespace
                    .unwrap_or_else(|| super::DEFAULT_NAMESPACE.to_string()),
            ),
            network: None,
            action: None,
            order: None,
            pod_selector: e.spec.pod_selector,
            policy_types: e.spec.policy_types,
            ingress: e.spec.ingress,
            egress: e.spec.egress,
        };
        return build(n, "spec.", "metadata.");
    }
    let n: Native = typed(v, "")?;
    build(n, "", "")
}

fn build(n: Native, spec: &str, meta: &str) -> Result<Policy, PolicyError> {
    let at = |f: &str| format!("{spec}{f}");
    let name = n
        .name
        .ok_or_else(|| err(format!("{meta}name"), "is required"))?;
    if !super::dns_subdomain(&name) {
        return Err(err(
            format!("{meta}name"),
            format!("{name:?}: lowercase letters, digits, '-' and '.', at most 253"),
        ));
    }
    if let Some(ns) = &n.namespace {
        if !super::dns_label(ns) {
            return Err(err(
                format!("{meta}namespace"),
                format!("{ns:?}: lowercase letters, digits and '-', at most 63"),
            ));
        }
    }
    if let Some(net) = &n.network {
        if !crate::cluster::valid_network_id(net) {
            return Err(err("network", format!("{net:?} is not a network name")));
        }
    }
    let action = match n.action.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("allow") => Action::Allow,
        Some("deny") => Action::Deny,
        Some(_) => {
            return Err(err(
                "action",
                format!("{:?}: allow or deny", n.action.unwrap_or_default()),
            ))
        }
    };
    if n.order.is_some() && action == Action::Allow {
        // Allowing is a union; an order would suggest otherwise.
        return Err(err(
            "order",
            "only deny policies are ordered (allow policies add up)",
        ));
    }
    let selector = selector(
        n.pod_selector
            .ok_or_else(|| err(at("podSelector"), "is required ({} selects every endpoint)"))?,
        &at("podSelector"),
    )?;
    let has_egress = n.egress.as_ref().is_some_and(|e| !e.is_empty());
    let mut types = Vec::new();
    for (i, s) in n.policy_types.iter().flatten().enumerate() {
        let d = match s.to_ascii_lowercase().as_str() {
            "ingress" => Direction::Ingress,
            "egress" => Direction::Egress,
            _ => {
                return Err(err(
                    at(&format!("policyTypes[{i}]")),
                    format!("{s:?}: Ingress or Egress"),
                ))
            }
        };
        if !types.contains(&d) {
            types.push(d);
        }
    }
    // Kubernetes' default (an empty list is none): always ingress, egress
    // when it has egress rules.
    if types.is_empty() {
        types.push(Direction::Ingress);
        if has_egress {
            types.push(Direction::Egress);
        }
    }
    types.sort();
    let ingress = n.ingress.unwrap_or_default();
    let egress = n.egress.unwrap_or_default();
    if ingress.len() > MAX_RULES || egress.len() > MAX_RULES {
        return Err(err(
            at(if ingress.len() > MAX_RULES {
                "ingress"
            } else {
                "egress"
            }),
            format!("at most {MAX_RULES} rules"),
        ));
    }
    let rules =
        |list: Vec<RawRule>, field: &str, peers_field: &str| -> Result<Vec<Rule>, PolicyError> {
            list.into_iter()
                .enumerate()
                .map(|(i, (peers, ports))| {
                    let base = at(&format!("{field}[{i}]"));
                    rule(peers, ports, &base, peers_field)
                })
                .collect()
        };
    let ingress = rules(
        ingress.into_iter().map(|r| (r.from, r.ports)).collect(),
        "ingress",
        "from",
    )?;
    let egress = rules(
        egress.into_iter().map(|r| (r.to, r.ports)).collect(),
        "egress",
        "to",
    )?;
    // Rules of a direction the policy does not apply to mean nothing, as
    // in Kubernetes.
    let ingress = if types.contains(&Direction::Ingress) {
        ingress
    } else {
        vec![]
    };
    let egress = if types.contains(&Direction::Egress) {
        egress
    } else {
        vec![]
    };
    Ok(Policy {
        name,
        namespace: n.namespace,
        network: n.network,
        action,
        order: n.order,
        selector,
        types,
        ingress,
        egress,
    })
}

fn rule(
    peers: Option<Vec<RawPeer>>,
    ports: Option<Vec<RawPort>>,
    base: &str,
    peers_field: &str,
) -> Result<Rule, PolicyError> {
    let peers = match peers {
        None => None,
        Some(list) if list.is_empty() => None,
        Some(list) => {
            if list.len() > MAX_PEERS {
                return Err(err(
                    format!("{base}.{peers_field}"),
                    format!("at most {MAX_PEERS} peers"),
                ));
            }
            let mut out = Vec::new();
            for (i, p) in list.into_iter().enumerate() {
                let at = format!("{base}.{peers_field}[{i}]");
                out.push(peer(p, &at)?);
            }
            Some(out)
        }
    };
    let ports = ports.unwrap_or_default();
    if ports.len() > MAX_PORTS {
        return Err(err(
            format!("{base}.ports"),
            format!("at most {MAX_PORTS} ports"),
        ));
    }
    let mut out = Vec::new();
    for (i, p) in ports.into_iter().enumerate() {
        let at = format!("{base}.ports[{i}]");
        out.push(port(p, &at)?);
    }
    out.sort();
    out.dedup();
    Ok(Rule { peers, ports: out })
}

fn peer(p: RawPeer, at: &str) -> Result<Peer, PolicyError> {
    match (p.pod_selector, p.namespace_selector, p.ip_block) {
        (None, None, None) => Err(err(
            at,
            "names no peer: give podSelector, namespaceSelector or ipBlock",
        )),
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => Err(err(
            format!("{at}.ipBlock"),
            "cannot be combined with podSelector or namespaceSelector in one peer",
        )),
        (pods, namespaces, None) => Ok(Peer::Endpoints {
            pods: pods
                .map(|s| selector(s, &format!("{at}.podSelector")))
                .transpose()?,
            namespaces: namespaces
                .map(|s| selector(s, &format!("{at}.namespaceSelector")))
                .transpose()?,
        }),
        (None, None, Some(b)) => {
            let cidr = v4_cidr(&b.cidr, &format!("{at}.ipBlock.cidr"))?;
            if b.except.len() > MAX_EXCEPT {
                return Err(err(
                    format!("{at}.ipBlock.except"),
                    format!("at most {MAX_EXCEPT} blocks"),
                ));
            }
            let mut except = Vec::new();
            for (i, e) in b.except.iter().enumerate() {
                let f = format!("{at}.ipBlock.except[{i}]");
                let e = v4_cidr(e, &f)?;
                if !cidr.contains(&e) || e.prefix_len() <= cidr.prefix_len() {
                    return Err(err(f, format!("{e} is not strictly inside {cidr}")));
                }
                except.push(e);
            }
            Ok(Peer::Block { cidr, except })
        }
    }
}

/// An IPv4 CIDR; host bits are dropped as Kubernetes does.
fn v4_cidr(s: &str, at: &str) -> Result<Ipv4Net, PolicyError> {
    match s.parse::<IpNet>() {
        Ok(IpNet::V4(n)) => Ok(n.trunc()),
        Ok(IpNet::V6(_)) => Err(err(
            at,
            format!("{s:?}: IPv6 blocks are not supported yet (the cluster is IPv4)"),
        )),
        Err(_) => Err(err(at, format!("{s:?} is not a CIDR (such as 10.0.0.0/8)"))),
    }
}

fn port(p: RawPort, at: &str) -> Result<PortRule, PolicyError> {
    let protocol = match p
        .protocol
        .as_deref()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None | Some("TCP") => Protocol::Tcp,
        Some("UDP") => Protocol::Udp,
        Some("SCTP") => Protocol::Sctp,
        Some(_) => {
            return Err(err(
                format!("{at}.protocol"),
                format!("{:?}: TCP, UDP or SCTP", p.protocol.unwrap_or_default()),
            ))
        }
    };
    let number = |n: i64, f: &str| -> Result<u16, PolicyError> {
        u16::try_from(n)
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| err(format!("{at}.{f}"), format!("{n}: a port is 1-65535")))
    };
    let port = match (p.port, p.end_port) {
        (None, None) => None,
        (None, Some(_)) => return Err(err(format!("{at}.endPort"), "needs a numeric port")),
        (Some(IntOrName::Int(n)), end) => {
            let first = number(n, "port")?;
            let last = match end {
                Some(e) => {
                    let e = number(e, "endPort")?;
                    if e < first {
                        return Err(err(
                            format!("{at}.endPort"),
                            format!("{e} is below port {first}"),
                        ));
                    }
                    e
                }
                None => first,
            };
            Some(Port::Range { first, last })
        }
        (Some(IntOrName::Name(_)), Some(_)) => {
            return Err(err(format!("{at}.endPort"), "needs a numeric port"))
        }
        (Some(IntOrName::Name(name)), None) => {
            if let Some(problem) = port_name_problem(&name) {
                return Err(err(format!("{at}.port"), problem));
            }
            Some(Port::Named(name))
        }
    };
    Ok(PortRule { protocol, port })
}

/// Kubernetes' (IANA's) rule for port names.
pub fn port_name_problem(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && name.bytes().any(|c| c.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    (!ok).then(|| {
        format!(
            "{name:?}: a port name is 1-15 lowercase letters, digits and single '-', with a letter"
        )
    })
}

fn selector(s: RawSelector, at: &str) -> Result<Selector, PolicyError> {
    if s.match_labels.len() + s.match_expressions.len() > MAX_SELECTOR_TERMS {
        return Err(err(at, format!("at most {MAX_SELECTOR_TERMS} terms")));
    }
    for (k, v) in &s.match_labels {
        if let Some(p) = super::label_key_problem(k) {
            return Err(err(format!("{at}.matchLabels"), p));
        }
        if let Some(p) = super::label_value_problem(v) {
            return Err(err(format!("{at}.matchLabels.{k}"), p));
        }
    }
    let mut exprs = Vec::new();
    for (i, e) in s.match_expressions.into_iter().enumerate() {
        let f = format!("{at}.matchExpressions[{i}]");
        if let Some(p) = super::label_key_problem(&e.key) {
            return Err(err(format!("{f}.key"), p));
        }
        let operator = match e.operator.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            o => {
                return Err(err(
                    format!("{f}.operator"),
                    format!("{o:?}: In, NotIn, Exists or DoesNotExist"),
                ))
            }
        };
        let needs_values = matches!(operator, Operator::In | Operator::NotIn);
        if needs_values && e.values.is_empty() {
            return Err(err(format!("{f}.values"), "In and NotIn need values"));
        }
        if !needs_values && !e.values.is_empty() {
            return Err(err(
                format!("{f}.values"),
                "Exists and DoesNotExist take no values",
            ));
        }
        for v in &e.values {
            if let Some(p) = super::label_value_problem(v) {
                return Err(err(format!("{f}.values"), p));
            }
        }
        exprs.push(Expression {
            key: e.key,
            operator,
            values: e.values.into_iter().collect::<BTreeSet<_>>(),
        });
    }
    Ok(Selector {
        match_labels: s.match_labels,
        match_expressions: exprs,
    })
}
