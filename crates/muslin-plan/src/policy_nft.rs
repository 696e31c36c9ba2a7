//! Policy enforcement on a host: the policies, the cluster's endpoints and
//! the host's own endpoints compiled into Muslin's policy table
//! (`ip muslin_policy`), and the changes that bring the kernel's table to
//! it in one transaction.
//!
//! Shape, chosen so a packet pays almost nothing:
//! - one `forward` chain: `ct state established,related accept` first, so
//!   only a connection's first packet is looked at; then a verdict map from
//!   the sending pod interface to its egress chain and one from the
//!   receiving pod interface to its ingress chain. Endpoints no policy
//!   selects are in neither map: their packets are done after two lookups.
//!   (A pod's traffic to or from its own host does not pass `forward`: it
//!   is always allowed, as Kubernetes wants.)
//! - a chain per protected endpoint and direction: the deny policies' rules
//!   in order (drop, counted per policy), then the allow policies' rules
//!   (return, so egress of one pod and ingress of another on the same host
//!   are both checked), then, when an allow policy isolates the endpoint,
//!   a counted drop.
//! - a rule's peers are a named interval set of addresses (endpoints by
//!   label, blocks minus exceptions), one per policy rule and network, so
//!   endpoint churn changes set elements and no chain.
//!
//! Rules carry a short tag naming what they do and a hash of all of it;
//! comparing tags tells which chains changed without parsing nft's
//! expressions.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use muslin_model::cluster::EndpointRecord;
use muslin_model::naming::host_ifname;
use muslin_model::policy::{
    self, protecting, Action, Direction, Member, Peer, Policy, Port, Protocol,
};
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Range};
use nftables::expr::{SetItem, Verdict, CT};
use nftables::schema::{
    Chain, Element, FlushObject, NfCmd, NfListObject, NfObject, Rule, Set, SetFlag, SetType,
    SetTypeValue, Table,
};
use nftables::stmt::{Counter, JumpTarget, Match, Operator, Return, Statement, VerdictMap};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use sha2::{Digest, Sha256};

pub const POLICY_TABLE: &str = "muslin_policy";
const FORWARD: &str = "forward";
const VERSION: u32 = 1;

/// An inclusive range of IPv4 addresses, as numbers.
pub type Span = (u32, u32);

/// The policy table a host should have.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyTable {
    pub sets: BTreeMap<String, BTreeSet<Span>>,
    pub chains: BTreeMap<String, Vec<PolicyRule>>,
    pub counters: BTreeSet<String>,
    /// Host interface of each protected endpoint and direction: its chain.
    pub egress: BTreeMap<String, String>,
    pub ingress: BTreeMap<String, String>,
    /// Which counter counts each policy's drops, and each isolated
    /// endpoint's (by its host interface), for `status`.
    pub policy_counters: BTreeMap<String, String>,
    pub isolation_counters: BTreeMap<String, String>,
    /// The endpoints (host interfaces) each policy protects here.
    pub protects: BTreeMap<String, BTreeSet<String>>,
    /// Addresses of each protected endpoint, by host interface.
    pub addresses: BTreeMap<String, Vec<std::net::Ipv4Addr>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRule {
    pub tag: String,
    pub dir: Direction,
    pub set: Option<String>,
    pub protocol: Option<Protocol>,
    /// Destination ports; empty is every port.
    pub ports: Vec<Span>,
    /// Drop counting in this counter, or return (allowed).
    pub drop: Option<String>,
}

/// What the policies compile from.
pub struct Inputs<'a> {
    pub me: &'a str,
    pub policies: &'a [Policy],
    pub endpoints: &'a [&'a EndpointRecord],
    /// Labels of namespaces that have some (the name label is added here).
    pub namespaces: &'a BTreeMap<String, BTreeMap<String, String>>,
}

fn short_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A tag: what the rule is, readable, under nft's comment limit, and a
/// hash of everything that makes it what it is.
fn tag(readable: &str, all: &str) -> String {
    let mut r: String = readable.chars().take(90).collect();
    r.push_str(" #");
    r.push_str(&short_hash(&[all]));
    format!("mp{VERSION} {r}")
}

pub fn policy_counter(p: &Policy) -> String {
    format!("policy_{}", short_hash(&[&p.key()]))
}

pub fn isolation_counter(ifname: &str) -> String {
    format!("isolated_{ifname}")
}

fn chain_name(d: Direction, ifname: &str) -> String {
    format!("{}_{ifname}", d.name())
}

impl PolicyTable {
    /// Whether the table is needed at all: no policy protecting any local
    /// endpoint means no table, and no per-packet cost.
    pub fn wanted(&self) -> bool {
        !self.chains.is_empty()
    }

    /// Every chain's rule tags, the `forward` chain included.
    pub fn tags(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = self
            .chains
            .iter()
            .map(|(c, rules)| (c.clone(), rules.iter().map(|r| r.tag.clone()).collect()))
            .collect();
        out.insert(
            FORWARD.into(),
            self.forward().into_iter().map(|(t, _)| t).collect(),
        );
        out
    }

    fn forward(&self) -> Vec<(String, Vec<Statement<'static>>)> {
        let mut v = vec![(
            tag("established", "established,related"),
            vec![
                Statement::Match(Match {
                    left: Expression::Named(NamedExpression::CT(CT {
                        key: Cow::Borrowed("state"),
                        family: None,
                        dir: None,
                    })),
                    right: Expression::List(vec![
                        Expression::String(Cow::Borrowed("established")),
                        Expression::String(Cow::Borrowed("related")),
                    ]),
                    op: Operator::IN,
                }),
                Statement::Accept(None),
            ],
        )];
        for (key, map, what) in [
            (MetaKey::Iifname, &self.egress, "egress"),
            (MetaKey::Oifname, &self.ingress, "ingress"),
        ] {
            if map.is_empty() {
                continue;
            }
            let all: Vec<String> = map.iter().map(|(i, c)| format!("{i}>{c}")).collect();
            v.push((
                tag(
                    &format!("{what} of {} endpoints", map.len()),
                    &all.join(","),
                ),
                vec![Statement::VerdictMap(VerdictMap {
                    key: Expression::Named(NamedExpression::Meta(Meta { key })),
                    data: Expression::Named(NamedExpression::Set(
                        map.iter()
                            .map(|(ifname, chain)| {
                                SetItem::Mapping(
                                    Expression::String(Cow::Owned(ifname.clone())),
                                    Expression::Verdict(Verdict::Jump(JumpTarget {
                                        target: Cow::Owned(chain.clone()),
                                    })),
                                )
                            })
                            .collect(),
                    )),
                })],
            ));
        }
        v
    }
}

/// Compiles the policies for the endpoints of `inputs.me`.
pub fn compile(inputs: &Inputs<'_>) -> PolicyTable {
    let mut t = PolicyTable::default();
    if inputs.policies.is_empty() {
        return t;
    }
    let ns_labels = |ns: &str| -> BTreeMap<String, String> {
        let mut l = inputs.namespaces.get(ns).cloned().unwrap_or_default();
        l.insert(policy::NAMESPACE_NAME_LABEL.into(), ns.into());
        l
    };
    // Egress named ports per policy rule and network, like the peer sets:
    // computed once, however many local endpoints the policy protects.
    let mut named: BTreeMap<(String, usize, String), NamedPeers> = BTreeMap::new();
    for ep in inputs.endpoints.iter().filter(|e| e.node == inputs.me) {
        let me = Member::of(ep);
        let ifname = host_ifname(&ep.container_id, &ep.ifname);
        for d in [Direction::Egress, Direction::Ingress] {
            let ps = protecting(inputs.policies, &me, d);
            if ps.is_empty() {
                continue;
            }
            let mut rules = Vec::new();
            let mut isolated = false;
            for p in &ps {
                t.protects
                    .entry(p.key())
                    .or_default()
                    .insert(ifname.clone());
                let counter = match p.action {
                    Action::Deny => {
                        let c = policy_counter(p);
                        t.counters.insert(c.clone());
                        t.policy_counters.insert(p.key(), c.clone());
                        Some(c)
                    }
                    Action::Allow => {
                        isolated = true;
                        None
                    }
                };
                for (ri, r) in p.rules(d).iter().enumerate() {
                    let set = r.peers.as_ref().map(|peers| {
                        let name = format!(
                            "peers_{}",
                            short_hash(&[&p.key(), d.name(), &ri.to_string(), &ep.network])
                        );
                        // One set per rule and network, however many local
                        // endpoints the policy protects.
                        if !t.sets.contains_key(&name) {
                            let spans = peer_spans(p, peers, ep, inputs.endpoints, &ns_labels);
                            t.sets.insert(name.clone(), spans);
                        }
                        name
                    });
                    if d == Direction::Egress {
                        let by_port = named
                            .entry((p.key(), ri, ep.network.clone()))
                            .or_insert_with(|| egress_named(r, ep, p, inputs, &ns_labels));
                        for (&(protocol, port), spans) in by_port.iter() {
                            let name = format!(
                                "peers_{}",
                                short_hash(&[
                                    &p.key(),
                                    d.name(),
                                    &ri.to_string(),
                                    &ep.network,
                                    protocol.name(),
                                    &port.to_string()
                                ])
                            );
                            t.sets.entry(name.clone()).or_insert_with(|| {
                                policy::normalize(spans.clone()).into_iter().collect()
                            });
                            let readable = format!(
                                "{} {} egress #{ri} {} {port} named",
                                p.key(),
                                if counter.is_some() { "deny" } else { "allow" },
                                protocol.name()
                            );
                            let all = format!("{readable} {name} {counter:?} {}", ep.network);
                            rules.push(PolicyRule {
                                tag: tag(&readable, &all),
                                dir: d,
                                set: Some(name),
                                protocol: Some(protocol),
                                ports: vec![(u32::from(port), u32::from(port))],
                                drop: counter.clone(),
                            });
                        }
                    }
                    for (protocol, ports) in port_matches(r, ep, d) {
                        let readable = format!(
                            "{} {} {} #{ri}{}",
                            p.key(),
                            if counter.is_some() { "deny" } else { "allow" },
                            d.name(),
                            protocol
                                .map(|p| format!(" {}", p.name()))
                                .unwrap_or_default()
                        );
                        let all = format!(
                            "{readable} {set:?} {protocol:?} {ports:?} {counter:?} {}",
                            ep.network
                        );
                        rules.push(PolicyRule {
                            tag: tag(&readable, &all),
                            dir: d,
                            set: set.clone(),
                            protocol,
                            ports,
                            drop: counter.clone(),
                        });
                    }
                }
            }
            if isolated {
                let c = isolation_counter(&ifname);
                t.counters.insert(c.clone());
                t.isolation_counters.insert(ifname.clone(), c.clone());
                rules.push(PolicyRule {
                    tag: tag(&format!("isolated {} {}", d.name(), ifname), &c),
                    dir: d,
                    set: None,
                    protocol: None,
                    ports: vec![],
                    drop: Some(c),
                });
            }
            if rules.is_empty() {
                continue;
            }
            let chain = chain_name(d, &ifname);
            t.chains.insert(chain.clone(), rules);
            t.addresses.insert(
                ifname.clone(),
                policy::v4_addresses(&ep.addresses)
                    .map(std::net::Ipv4Addr::from)
                    .collect(),
            );
            match d {
                Direction::Egress => t.egress.insert(ifname.clone(), chain),
                Direction::Ingress => t.ingress.insert(ifname.clone(), chain),
            };
        }
    }
    t
}

/// The addresses of a rule's peers in `ep`'s network.
fn peer_spans(
    p: &Policy,
    peers: &[Peer],
    ep: &EndpointRecord,
    all: &[&EndpointRecord],
    ns_labels: &dyn Fn(&str) -> BTreeMap<String, String>,
) -> BTreeSet<Span> {
    let mut spans = Vec::new();
    for peer in peers {
        match peer {
            Peer::Block { cidr, except } => spans.extend(policy::block_ranges(*cidr, except)),
            Peer::Endpoints { .. } => {
                for other in all.iter().filter(|o| o.network == ep.network) {
                    if p.peer_has(peer, &Member::of(other), ns_labels) {
                        spans.extend(policy::v4_addresses(&other.addresses).map(|a| (a, a)));
                    }
                }
            }
        }
    }
    policy::normalize(spans).into_iter().collect()
}

/// Peers of an egress rule by the protocol and number they give a name.
type NamedPeers = BTreeMap<(Protocol, u16), Vec<Span>>;

/// The named ports of an egress rule: for each protocol and number some
/// peer gives one of the names, the peers that give it that number. Each
/// becomes a rule of its own (those peers, that port), so a peer is
/// reached only on its own number, as in Kubernetes.
fn egress_named(
    r: &policy::Rule,
    ep: &EndpointRecord,
    p: &Policy,
    inputs: &Inputs<'_>,
    ns_labels: &dyn Fn(&str) -> BTreeMap<String, String>,
) -> NamedPeers {
    let mut out = NamedPeers::new();
    let names: Vec<(&str, Protocol)> = r
        .ports
        .iter()
        .filter_map(|pr| match &pr.port {
            Some(Port::Named(n)) => Some((n.as_str(), pr.protocol)),
            _ => None,
        })
        .collect();
    if names.is_empty() {
        return out;
    }
    for o in inputs.endpoints.iter().filter(|o| o.network == ep.network) {
        let addrs: Vec<u32> = policy::v4_addresses(&o.addresses).collect();
        let is_peer = match &r.peers {
            None => true,
            Some(peers) => peers.iter().any(|pe| match pe {
                Peer::Block { cidr, except } => addrs.iter().any(|a| {
                    let a = std::net::Ipv4Addr::from(*a);
                    cidr.contains(&a) && !except.iter().any(|e| e.contains(&a))
                }),
                Peer::Endpoints { .. } => p.peer_has(pe, &Member::of(o), ns_labels),
            }),
        };
        if !is_peer {
            continue;
        }
        for (name, proto) in &names {
            if let Some(np) = o.ports.get(*name).filter(|np| np.protocol == *proto) {
                out.entry((*proto, np.port))
                    .or_default()
                    .extend(addrs.iter().map(|a| (*a, *a)));
            }
        }
    }
    out
}

/// The protocol and port matches of a rule: one per protocol it names
/// (none: every protocol). A named port is the number the destination
/// gives it: for ingress the endpoint itself (egress: `egress_named`).
/// A name nobody defines matches nothing, as in Kubernetes.
fn port_matches(
    r: &policy::Rule,
    ep: &EndpointRecord,
    d: Direction,
) -> Vec<(Option<Protocol>, Vec<Span>)> {
    if r.ports.is_empty() {
        return vec![(None, vec![])];
    }
    let mut by_proto: BTreeMap<Protocol, Option<Vec<Span>>> = BTreeMap::new();
    for pr in &r.ports {
        let entry = by_proto.entry(pr.protocol).or_insert_with(|| Some(vec![]));
        match &pr.port {
            // Every port of the protocol.
            None => *entry = None,
            Some(Port::Range { first, last }) => {
                if let Some(v) = entry {
                    v.push((u32::from(*first), u32::from(*last)));
                }
            }
            // Egress: each destination's own number, in rules of their own
            // (`egress_named`).
            Some(Port::Named(_)) if d == Direction::Egress => {}
            Some(Port::Named(name)) => {
                let number = ep.ports.get(name).filter(|np| np.protocol == pr.protocol);
                if let (Some(v), Some(np)) = (entry, number) {
                    v.push((u32::from(np.port), u32::from(np.port)));
                }
            }
        }
    }
    by_proto
        .into_iter()
        .filter_map(|(proto, ports)| match ports {
            None => Some((Some(proto), vec![])),
            // Only names nobody defines: the entry matches nothing.
            Some(v) if v.is_empty() => None,
            Some(v) => Some((Some(proto), policy::normalize(v))),
        })
        .collect()
}

/// The policy table as the kernel has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyObserved {
    pub exists: bool,
    pub rules: BTreeMap<String, Vec<String>>,
    pub sets: BTreeMap<String, BTreeSet<Span>>,
    pub counters: BTreeMap<String, u64>,
}

/// One transaction that brings the policy table where it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyChange {
    pub summary: String,
    objects: Vec<serde_json::Value>,
}

impl fmt::Display for PolicyChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "policy table: {}", self.summary)
    }
}

impl PolicyChange {
    pub fn to_json(&self) -> String {
        serde_json::json!({ "nftables": self.objects }).to_string()
    }
}

fn fam() -> NfFamily {
    NfFamily::IP
}

fn table() -> NfListObject<'static> {
    NfListObject::Table(Table {
        family: fam(),
        name: Cow::Borrowed(POLICY_TABLE),
        handle: None,
    })
}

fn chain(name: &str, base: bool) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family: fam(),
        table: Cow::Borrowed(POLICY_TABLE),
        name: Cow::Owned(name.to_string()),
        _type: base.then_some(NfChainType::Filter),
        hook: base.then_some(NfHook::Forward),
        prio: base.then_some(0),
        policy: base.then_some(NfChainPolicy::Accept),
        ..Default::default()
    })
}

fn set(name: &str, spans: Option<&BTreeSet<Span>>) -> NfListObject<'static> {
    NfListObject::Set(Box::new(Set {
        family: fam(),
        table: Cow::Borrowed(POLICY_TABLE),
        name: Cow::Owned(name.to_string()),
        set_type: SetTypeValue::Single(SetType::Ipv4Addr),
        flags: Some([SetFlag::Interval].into()),
        elem: spans
            .filter(|s| !s.is_empty())
            .map(|s| span_elements(s.iter())),
        ..Default::default()
    }))
}

fn counter_obj(name: &str) -> NfListObject<'static> {
    NfListObject::Counter(nftables::schema::Counter {
        family: fam(),
        table: Cow::Borrowed(POLICY_TABLE),
        name: Cow::Owned(name.to_string()),
        handle: None,
        packets: None,
        bytes: None,
    })
}

fn addr(a: u32) -> Expression<'static> {
    Expression::String(Cow::Owned(std::net::Ipv4Addr::from(a).to_string()))
}

fn span_elements<'a>(spans: impl Iterator<Item = &'a Span>) -> Cow<'static, [Expression<'static>]> {
    spans
        .map(|(a, b)| {
            if a == b {
                addr(*a)
            } else {
                Expression::Range(Box::new(Range {
                    range: [addr(*a), addr(*b)],
                }))
            }
        })
        .collect::<Vec<_>>()
        .into()
}

fn elements(name: &str, spans: &[Span]) -> NfListObject<'static> {
    NfListObject::Element(Element {
        family: fam(),
        table: Cow::Borrowed(POLICY_TABLE),
        name: Cow::Owned(name.to_string()),
        elem: span_elements(spans.iter()),
    })
}

fn rule_obj(chain: &str, tag: &str, expr: Vec<Statement<'static>>) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: fam(),
        table: Cow::Borrowed(POLICY_TABLE),
        chain: Cow::Owned(chain.to_string()),
        expr: expr.into(),
        comment: Some(Cow::Owned(tag.to_string())),
        ..Default::default()
    })
}

fn statements(r: &PolicyRule) -> Vec<Statement<'static>> {
    let mut v = Vec::new();
    if let Some(set) = &r.set {
        let field = match r.dir {
            Direction::Ingress => "saddr",
            Direction::Egress => "daddr",
        };
        v.push(Statement::Match(Match {
            left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(
                PayloadField {
                    protocol: Cow::Borrowed("ip"),
                    field: Cow::Borrowed(field),
                },
            ))),
            right: Expression::String(Cow::Owned(format!("@{set}"))),
            op: Operator::EQ,
        }));
    }
    if let Some(p) = r.protocol {
        v.push(Statement::Match(Match {
            left: Expression::Named(NamedExpression::Meta(Meta {
                key: MetaKey::L4proto,
            })),
            right: Expression::String(Cow::Borrowed(p.name())),
            op: Operator::EQ,
        }));
        if !r.ports.is_empty() {
            let port = |n: u32| Expression::Number(n);
            let items: Vec<SetItem<'static>> = r
                .ports
                .iter()
                .map(|(a, b)| {
                    SetItem::Element(if a == b {
                        port(*a)
                    } else {
                        Expression::Range(Box::new(Range {
                            range: [port(*a), port(*b)],
                        }))
                    })
                })
                .collect();
            v.push(Statement::Match(Match {
                left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(
                    PayloadField {
                        protocol: Cow::Borrowed("th"),
                        field: Cow::Borrowed("dport"),
                    },
                ))),
                right: Expression::Named(NamedExpression::Set(items)),
                op: Operator::EQ,
            }));
        }
    }
    match &r.drop {
        Some(c) => {
            v.push(Statement::Counter(Counter::Named(Cow::Owned(c.clone()))));
            v.push(Statement::Drop(None));
        }
        None => v.push(Statement::Return(Some(Return {}))),
    }
    v
}

fn cmd(c: NfCmd<'static>) -> serde_json::Value {
    serde_json::to_value(NfObject::CmdObject(c)).expect("nft JSON serializes")
}

/// The transaction that turns `observed` into `want`, if any is needed.
pub fn diff(observed: &PolicyObserved, want: &PolicyTable) -> Option<PolicyChange> {
    if !want.wanted() {
        return observed.exists.then(|| PolicyChange {
            summary: "delete (no policy protects an endpoint here)".into(),
            objects: vec![cmd(NfCmd::Delete(table()))],
        });
    }
    let tags = want.tags();
    let forward = want.forward();
    let mut o = Vec::new();
    // The table as we build it starts with the established rule; without
    // it (someone flushed the chain or the table) it is loaded again.
    let full = !observed.exists
        || observed.rules.get(FORWARD).and_then(|t| t.first()) != tags[FORWARD].first();
    if full {
        o.push(cmd(NfCmd::Add(table())));
        o.push(cmd(NfCmd::Delete(table())));
        o.push(cmd(NfCmd::Add(table())));
        for c in &want.counters {
            o.push(cmd(NfCmd::Add(counter_obj(c))));
        }
        for (name, spans) in &want.sets {
            o.push(cmd(NfCmd::Add(set(name, Some(spans)))));
        }
        for name in want.chains.keys() {
            o.push(cmd(NfCmd::Add(chain(name, false))));
        }
        for (name, rules) in &want.chains {
            for r in rules {
                o.push(cmd(NfCmd::Add(rule_obj(name, &r.tag, statements(r)))));
            }
        }
        o.push(cmd(NfCmd::Add(chain(FORWARD, true))));
        for (t, s) in forward {
            o.push(cmd(NfCmd::Add(rule_obj(FORWARD, &t, s))));
        }
        return Some(PolicyChange {
            summary: format!(
                "load {} chains, {} sets, {} addresses",
                want.chains.len(),
                want.sets.len(),
                want.sets.values().map(BTreeSet::len).sum::<usize>()
            ),
            objects: o,
        });
    }
    let (mut added, mut removed, mut replaced) = (0, 0, 0);
    for c in want
        .counters
        .iter()
        .filter(|c| !observed.counters.contains_key(*c))
    {
        o.push(cmd(NfCmd::Add(counter_obj(c))));
    }
    for (name, spans) in &want.sets {
        match observed.sets.get(name) {
            None => o.push(cmd(NfCmd::Add(set(name, Some(spans))))),
            Some(have) => {
                let del: Vec<Span> = have.difference(spans).copied().collect();
                let add: Vec<Span> = spans.difference(have).copied().collect();
                if !del.is_empty() {
                    removed += del.len();
                    o.push(cmd(NfCmd::Delete(elements(name, &del))));
                }
                if !add.is_empty() {
                    added += add.len();
                    o.push(cmd(NfCmd::Add(elements(name, &add))));
                }
            }
        }
    }
    for name in want
        .chains
        .keys()
        .filter(|c| !observed.rules.contains_key(*c))
    {
        o.push(cmd(NfCmd::Add(chain(name, false))));
    }
    for (name, rules) in &want.chains {
        let have = observed.rules.get(name);
        if have == tags.get(name) {
            continue;
        }
        replaced += 1;
        if have.is_some() {
            o.push(cmd(NfCmd::Flush(FlushObject::Chain(
                match chain(name, false) {
                    NfListObject::Chain(c) => c,
                    _ => unreachable!(),
                },
            ))));
        }
        for r in rules {
            o.push(cmd(NfCmd::Add(rule_obj(name, &r.tag, statements(r)))));
        }
    }
    if observed.rules.get(FORWARD) != tags.get(FORWARD) {
        replaced += 1;
        o.push(cmd(NfCmd::Flush(FlushObject::Chain(
            match chain(FORWARD, true) {
                NfListObject::Chain(c) => c,
                _ => unreachable!(),
            },
        ))));
        for (t, s) in forward {
            o.push(cmd(NfCmd::Add(rule_obj(FORWARD, &t, s))));
        }
    }
    // What nothing uses any more, after the rules that used it went.
    for name in observed
        .rules
        .keys()
        .filter(|c| *c != FORWARD && !want.chains.contains_key(*c))
    {
        replaced += 1;
        let NfListObject::Chain(c) = chain(name, false) else {
            unreachable!()
        };
        o.push(cmd(NfCmd::Flush(FlushObject::Chain(c))));
        o.push(cmd(NfCmd::Delete(chain(name, false))));
    }
    for name in observed.sets.keys().filter(|s| !want.sets.contains_key(*s)) {
        o.push(cmd(NfCmd::Delete(set(name, None))));
    }
    for c in observed
        .counters
        .keys()
        .filter(|c| !want.counters.contains(*c))
    {
        o.push(cmd(NfCmd::Delete(counter_obj(c))));
    }
    if o.is_empty() {
        return None;
    }
    Some(PolicyChange {
        summary: format!("{added} addresses added, {removed} removed, {replaced} chains replaced"),
        objects: o,
    })
}

/// The endpoints whose open connections a change makes a policy refuse
/// that it allowed: their connections in that direction must be judged
/// again (`true`: those the address opened; `false`: those opened to it).
/// A newly protected endpoint, a replaced chain, an allow rule's peers
/// that lost addresses or a deny rule's that gained some; a peer coming,
/// or an agent restart finding its table as it left it, re-judges nothing.
pub fn to_rejudge(observed: &PolicyObserved, want: &PolicyTable) -> Vec<(std::net::IpAddr, bool)> {
    let mut out = Vec::new();
    let tags = want.tags();
    let empty = BTreeSet::new();
    for (map, from) in [(&want.egress, true), (&want.ingress, false)] {
        for (ifname, chain) in map {
            let rules = &want.chains[chain];
            let replaced = observed.rules.get(chain) != tags.get(chain);
            let narrowed = rules.iter().any(|r| {
                let Some(set) = &r.set else { return false };
                let have = observed.sets.get(set).unwrap_or(&empty);
                let will = &want.sets[set];
                match r.drop {
                    Some(_) => will.difference(have).next().is_some(),
                    None => have.difference(will).next().is_some(),
                }
            });
            if replaced || narrowed {
                for a in want.addresses.get(ifname).into_iter().flatten() {
                    out.push((std::net::IpAddr::V4(*a), from));
                }
            }
        }
    }
    out
}

/// Reads `nft -j list table ip muslin_policy`.
pub fn parse_observed(json: &str) -> Result<PolicyObserved, String> {
    use serde_json::Value;
    let doc: Value = serde_json::from_str(json).map_err(|e| format!("nft JSON: {e}"))?;
    let objects = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or("nft JSON: no \"nftables\" array")?;
    let ours = |v: &Value| v.get("table").and_then(Value::as_str) == Some(POLICY_TABLE);
    let name = |v: &Value| v.get("name").and_then(Value::as_str).map(str::to_string);
    let mut o = PolicyObserved::default();
    for obj in objects {
        if let Some(t) = obj.get("table") {
            o.exists |= name(t).as_deref() == Some(POLICY_TABLE);
        } else if let Some(s) = obj.get("set").filter(|s| ours(s)) {
            let Some(n) = name(s) else { continue };
            let spans = s
                .get("elem")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(span_of)
                .collect();
            o.sets.insert(n, spans);
        } else if let Some(c) = obj.get("counter").filter(|c| ours(c)) {
            if let Some(n) = name(c) {
                let packets = c.get("packets").and_then(Value::as_u64).unwrap_or(0);
                o.counters.insert(n, packets);
            }
        } else if let Some(c) = obj.get("chain").filter(|c| ours(c)) {
            if let Some(n) = name(c) {
                o.rules.entry(n).or_default();
            }
        } else if let Some(r) = obj.get("rule").filter(|r| ours(r)) {
            if let Some(c) = r.get("chain").and_then(Value::as_str) {
                let tag = r
                    .get("comment")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                o.rules.entry(c.to_string()).or_default().push(tag);
            }
        }
    }
    Ok(o)
}

/// An interval set element as nft lists it: an address, a prefix or a
/// range (with or without an `elem` wrapper).
fn span_of(e: &serde_json::Value) -> Option<Span> {
    let e = e.get("elem").and_then(|x| x.get("val")).unwrap_or(e);
    let a = |v: &serde_json::Value| -> Option<u32> {
        v.as_str()?
            .parse::<std::net::Ipv4Addr>()
            .ok()
            .map(u32::from)
    };
    if let Some(x) = a(e) {
        return Some((x, x));
    }
    if let Some(p) = e.get("prefix") {
        let base = a(p.get("addr")?)?;
        let len = p.get("len")?.as_u64()? as u32;
        let net = ipnet::Ipv4Net::new(base.into(), len as u8).ok()?;
        return Some((u32::from(net.network()), u32::from(net.broadcast())));
    }
    if let Some(r) = e.get("range").and_then(serde_json::Value::as_array) {
        return Some((a(r.first()?)?, a(r.get(1)?)?));
    }
    None
}

#[cfg(test)]
mod tests;
