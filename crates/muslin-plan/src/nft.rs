//! Muslin's own nftables table (`ip muslin` / `ip6 muslin`): masquerade of
//! pod traffic that leaves the cluster. Pod-to-pod and pod-to-node traffic
//! is never masqueraded (a protocol without ports cannot share one node
//! address between pods).
//!
//! With networks besides the default one it also keeps them apart (see
//! `muslin_model::network`): packets from a network's interfaces (its
//! link group) get its mark, which its routing rule follows, and its
//! conntrack zone, so identical flows of two overlapping networks never
//! meet; traffic leaving a network for another network's range, or
//! entering one from outside it, is dropped and counted. Within the
//! network the zone holds both directions; towards anything else only the
//! original one, so replies from outside (de-masqueraded in the common
//! zone) find their connection, whose mark (kept in the conntrack mark)
//! takes them back to the right network.
//!
//! The table is built with the `nftables` crate's typed JSON. Each rule
//! carries a comment naming its version and parameters, so a comparison
//! with what the kernel has needs no parsing of nft's expressions: when
//! the rules differ the table is replaced in one transaction; when only
//! the node set differs, its elements are added and removed.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use muslin_model::network::MARK_MASK;
use nftables::expr::{
    BinaryOperation, Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, Payload,
    PayloadField, Prefix, SetItem, Verdict, CT,
};
use nftables::schema::{
    Chain, Element, NfCmd, NfListObject, NfObject, Nftables, Rule, Set, SetType, SetTypeValue,
    Table,
};
use nftables::stmt::{
    Accept, Counter, JumpTarget, Mangle, Match, NATFlag, Operator, Return, Statement, VerdictMap,
    NAT,
};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

pub const TABLE: &str = "muslin";
const CHAIN: &str = "postrouting";
const RAW: &str = "networks_raw";
const RESTORE: &str = "networks_restore";
const DEFAULT_PODS: &str = "networks_default_pods";
/// Drops what arrives through our tunnels for anywhere but the cluster.
const TUNNEL_GUARD: &str = "tunnel_guard";
const WG_OUT: &str = "wireguard_out";
const WG_IN: &str = "wireguard_in";
const WG_CLEAR: &str = "wireguard_clear";

/// The chain of a network's packets.
fn net_chain(n: &NftNetwork) -> String {
    format!("network_{}", n.zone)
}
const NODES: &str = "nodes";
/// nft's `srcnat` priority.
const SRCNAT: i32 = 100;
/// Bumped whenever the rules' shape changes, so old tables get replaced.
const RULES_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NftFamily {
    Ip,
    Ip6,
}

impl NftFamily {
    pub fn of(net: &IpNet) -> Self {
        if net.addr().is_ipv4() {
            NftFamily::Ip
        } else {
            NftFamily::Ip6
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            NftFamily::Ip => "ip",
            NftFamily::Ip6 => "ip6",
        }
    }

    fn nf(self) -> NfFamily {
        match self {
            NftFamily::Ip => NfFamily::IP,
            NftFamily::Ip6 => NfFamily::IP6,
        }
    }
}

/// What our table should be: masquerade of `pod_cidr` except towards the
/// pod network itself and towards the cluster's `nodes`, and the
/// separation of `networks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masquerade {
    pub pod_cidr: IpNet,
    pub enabled: bool,
    pub nodes: BTreeSet<IpAddr>,
    pub networks: Vec<NftNetwork>,
    /// The VXLAN port: with networks, VXLAN from our own interfaces is
    /// dropped, or a container could wrap a packet in another network's
    /// VNI and have a host unwrap it there.
    pub vxlan_port: u16,
    /// Pod traffic is encrypted: the networks' VXLAN between nodes goes
    /// through WireGuard (marked out, admitted in).
    pub wireguard: bool,
}

/// A network other than the default, as its firewall rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftNetwork {
    pub name: String,
    pub subnets: Vec<IpNet>,
    pub group: u32,
    pub mark: u32,
    pub zone: u16,
    pub isolated: bool,
    /// Whether this host routes to the network. Where it does not (it is
    /// isolated, or another network with the same addresses is the one
    /// the host routes to), the network's containers do not reach the
    /// host either: the host's replies would go to the other network.
    pub reach: bool,
    /// The network's resolver on this host (the agent's name service),
    /// which its containers reach even where they reach nothing else of
    /// the host.
    pub dns: Option<std::net::Ipv4Addr>,
}

impl NftNetwork {
    pub fn of(n: &muslin_model::network::NetworkSpec, reach: bool) -> Self {
        NftNetwork {
            name: n.name.clone(),
            subnets: n.subnets.clone(),
            group: n.group(),
            mark: n.mark(),
            zone: n.zone(),
            isolated: n.isolated_from_host,
            reach,
            dns: None,
        }
    }

    /// With the network's resolver at `dns`.
    pub fn with_dns(mut self, dns: Option<std::net::Ipv4Addr>) -> Self {
        self.dns = dns;
        self
    }

    /// Tags of the rules counting the packets dropped on their way out
    /// of the network to another network, and to the host.
    pub fn drop_tags(&self) -> (String, String) {
        (self.tag("leaving"), self.tag("to the host"))
    }

    fn tag(&self, what: &str) -> String {
        let subnets: Vec<String> = self.subnets.iter().map(ToString::to_string).collect();
        format!(
            "muslin v{RULES_VERSION} network {} group {} {}{}{} {what}",
            self.name,
            self.group,
            subnets.join(","),
            if self.isolated { " isolated" } else { "" },
            if self.reach { "" } else { " unreached" }
        )
    }
}

/// Our table as the kernel has it: the tags of each chain's rules and the
/// elements of each set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NftObserved {
    pub exists: bool,
    pub rules: BTreeMap<String, Vec<String>>,
    pub sets: BTreeMap<String, BTreeSet<String>>,
    /// Packets counted by each tagged rule that counts.
    pub counters: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NftChange {
    /// Create or replace the whole table in one transaction.
    Load(Masquerade),
    AddNodes {
        family: NftFamily,
        nodes: Vec<IpAddr>,
    },
    DeleteNodes {
        family: NftFamily,
        nodes: Vec<IpAddr>,
    },
    DeleteTable(NftFamily),
    /// A transaction on the policy table (`crate::policy_nft`).
    Policy(crate::policy_nft::PolicyChange),
}

impl fmt::Display for NftChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NftChange::Load(m) => write!(
                f,
                "load table {} {TABLE}: masquerade {} except to it and {} nodes",
                NftFamily::of(&m.pod_cidr).name(),
                m.pod_cidr,
                m.nodes.len()
            ),
            NftChange::AddNodes { family, nodes } => {
                write!(
                    f,
                    "add element {} {TABLE} {NODES} {}",
                    family.name(),
                    list(nodes)
                )
            }
            NftChange::DeleteNodes { family, nodes } => write!(
                f,
                "delete element {} {TABLE} {NODES} {}",
                family.name(),
                list(nodes)
            ),
            NftChange::DeleteTable(fam) => write!(f, "delete table {} {TABLE}", fam.name()),
            NftChange::Policy(c) => write!(f, "{c}"),
        }
    }
}

fn list(a: &[IpAddr]) -> String {
    let v: Vec<String> = a.iter().map(ToString::to_string).collect();
    format!("{{ {} }}", v.join(", "))
}

impl Masquerade {
    fn family(&self) -> NftFamily {
        NftFamily::of(&self.pod_cidr)
    }

    /// Nodes of the table's family (an IPv6 node address has no place in
    /// an `ip` table's set).
    fn set_nodes(&self) -> Vec<IpAddr> {
        let v4 = self.pod_cidr.addr().is_ipv4();
        self.nodes
            .iter()
            .filter(|a| a.is_ipv4() == v4)
            .copied()
            .collect()
    }

    /// The tags of the rules the masquerade chain should have, in order.
    pub fn tags(&self) -> Vec<String> {
        self.chains().remove(CHAIN).unwrap_or_default()
    }

    /// Every chain's rules as their tags, in order.
    pub fn chains(&self) -> BTreeMap<String, Vec<String>> {
        self.rules()
            .into_iter()
            .map(|(chain, rules)| (chain, rules.into_iter().map(|(t, _)| t).collect()))
            .collect()
    }

    /// The table is always needed: its tunnel guard, whether or not it
    /// masquerades or keeps networks apart.
    fn wanted(&self) -> bool {
        true
    }

    /// The networks' ranges the pod network does not overlap: where the
    /// default network's containers have no business.
    fn guarded(&self) -> Vec<IpNet> {
        muslin_model::network::guarded_ranges(self.subnets(), self.pod_cidr)
    }

    fn subnets(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.networks.iter().flat_map(|n| n.subnets.iter().copied())
    }

    /// Every range inside the cluster: the pod network and every
    /// network's subnets, merged (an nft interval set refuses overlaps).
    fn cluster_ranges(&self) -> Vec<IpNet> {
        let v4 = self.pod_cidr.addr().is_ipv4();
        let same_family = self.subnets().filter(|n| n.addr().is_ipv4() == v4);
        muslin_model::network::cluster_ranges(self.pod_cidr, same_family)
    }

    /// Each chain's rules with their tags.
    fn rules(&self) -> BTreeMap<String, Vec<(String, Vec<Statement<'static>>)>> {
        let fam = self.family();
        let p = self.pod_cidr;
        let mut out: BTreeMap<String, Vec<(String, Vec<Statement<'static>>)>> = BTreeMap::new();
        let ranges = anon_set(&self.cluster_ranges());
        let nodes = || Expression::String(Cow::Owned(format!("@{NODES}")));
        let mut post = Vec::new();
        for n in &self.networks {
            let ours = || is(masked(meta(MetaKey::Mark), MARK_MASK), num(n.mark));
            if n.isolated {
                // Nothing of it leaves the cluster (dropped before routing).
                continue;
            }
            post.push((
                n.tag("in cluster"),
                vec![
                    ours(),
                    is(field(fam, "daddr"), ranges.clone()),
                    Statement::Return(Some(Return {})),
                ],
            ));
            post.push((
                n.tag("to nodes"),
                vec![
                    ours(),
                    is(field(fam, "daddr"), nodes()),
                    Statement::Return(Some(Return {})),
                ],
            ));
            // A connection leaving the cluster keeps the network's mark,
            // for its replies (restored before routing): only these, so
            // the cluster's own connections cost the restore one test.
            post.push((
                n.tag("remember"),
                vec![
                    ours(),
                    Statement::Mangle(Mangle {
                        key: ct("mark", None),
                        value: meta(MetaKey::Mark),
                    }),
                ],
            ));
            if self.enabled {
                post.push((n.tag("masquerade"), vec![ours(), masquerade()]));
            }
        }
        if self.enabled {
            let saddr = || is(field(fam, "saddr"), prefix(p));
            let bodies = vec![
                vec![
                    saddr(),
                    is(field(fam, "daddr"), prefix(p)),
                    Statement::Return(Some(Return {})),
                ],
                vec![
                    saddr(),
                    is(field(fam, "daddr"), nodes()),
                    Statement::Return(Some(Return {})),
                ],
                vec![saddr(), masquerade()],
            ];
            for (i, body) in bodies.into_iter().enumerate() {
                post.push((format!("muslin v{RULES_VERSION} masquerade {p} #{i}"), body));
            }
        }
        out.insert(CHAIN.to_string(), post);
        out.insert(TUNNEL_GUARD.to_string(), self.tunnel_guard());
        if self.wireguard {
            out.extend(self.wireguard_only());
        }
        if self.networks.is_empty() {
            return out;
        }
        // Everything is decided before routing, in the prerouting hook
        // every packet passes anyway: a forward or input chain would cost
        // each forwarded packet of every network, the default one
        // included, a hook more. A packet from the underlay costs one map
        // lookup and one name comparison; only packets from our own
        // interfaces go on, each to its network's chain. What addresses
        // cannot tell apart (overlapping ranges) the networks' routing
        // rules refuse.
        let ranges = self.cluster_ranges();
        let from_ours = || {
            is(
                meta(MetaKey::Iifname),
                Expression::String(Cow::Borrowed("msl*")),
            )
        };
        let vxlan = || self.vxlan_match();
        // VXLAN only ever comes in on the underlay: from one of our own
        // interfaces (a container) it is a forgery, wrapped by hand in
        // another network's VNI to be unwrapped into that network.
        let forged = || {
            let mut v = vec![is(field(fam, "daddr"), nodes())];
            v.extend(vxlan());
            v.extend([count(), drop()]);
            v
        };
        // Or through WireGuard from a node (a container's forgery never
        // leaves its own host, see above): marked, so strict rp_filter
        // checks its source against the WireGuard table.
        let set_wg_mark = || {
            Statement::Mangle(Mangle {
                key: meta(MetaKey::Mark),
                value: Expression::BinaryOperation(Box::new(BinaryOperation::OR(vec![
                    meta(MetaKey::Mark),
                    num(muslin_model::encryption::WG_MARK),
                ]))),
            })
        };
        let mut raw = Vec::new();
        if self.wireguard {
            let mut v = vec![
                is(
                    meta(MetaKey::Iifname),
                    Expression::String(Cow::Borrowed(muslin_model::encryption::WG_DEV)),
                ),
                is(field(fam, "saddr"), nodes()),
            ];
            v.extend(vxlan());
            v.extend([set_wg_mark(), Statement::Accept(None)]);
            raw.push((
                format!("muslin v{RULES_VERSION} vxlan through wireguard in"),
                v,
            ));
            let mut out_rule = vec![is(field(fam, "daddr"), nodes())];
            out_rule.extend(vxlan());
            out_rule.push(set_wg_mark());
            out.insert(
                WG_OUT.to_string(),
                vec![(
                    format!("muslin v{RULES_VERSION} vxlan through wireguard out"),
                    out_rule,
                )],
            );
        }
        let vmap = Expression::Named(NamedExpression::Set(
            self.networks
                .iter()
                .map(|n| {
                    SetItem::Mapping(
                        num(n.group),
                        // Goto: a network's packet never comes back to
                        // the default network's checks.
                        Expression::Verdict(Verdict::Goto(JumpTarget {
                            target: Cow::Owned(net_chain(n)),
                        })),
                    )
                })
                .collect(),
        ));
        let groups: Vec<String> = self.networks.iter().map(|n| n.group.to_string()).collect();
        raw.extend([
            (
                format!(
                    "muslin v{RULES_VERSION} networks by group {}",
                    groups.join(",")
                ),
                vec![Statement::VerdictMap(VerdictMap {
                    key: meta(MetaKey::Iifgroup),
                    data: vmap,
                })],
            ),
            (
                format!("muslin v{RULES_VERSION} networks default pods"),
                vec![
                    from_ours(),
                    Statement::Goto(JumpTarget {
                        target: Cow::Borrowed(DEFAULT_PODS),
                    }),
                ],
            ),
        ]);
        out.insert(RAW.to_string(), raw);
        let mut default_pods = vec![(
            format!("muslin v{RULES_VERSION} networks no vxlan from containers"),
            forged(),
        )];
        let guarded = self.guarded();
        if !guarded.is_empty() {
            default_pods.push((
                default_leaving_tag(),
                vec![is(field(fam, "daddr"), anon_set(&guarded)), count(), drop()],
            ));
        }
        if self.networks.iter().any(|n| n.dns.is_some()) {
            // The default network's pods ask their own resolver only: the
            // others answer with their networks' names.
            default_pods.push((
                format!("muslin v{RULES_VERSION} networks default other resolvers"),
                vec![is(field(fam, "daddr"), resolvers_from(1)), count(), drop()],
            ));
        }
        out.insert(DEFAULT_PODS.to_string(), default_pods);
        for n in &self.networks {
            let mut chain = Vec::new();
            let mark = || {
                Statement::Mangle(Mangle {
                    key: meta(MetaKey::Mark),
                    value: num(n.mark),
                })
            };
            let zone = |dir| {
                Statement::Mangle(Mangle {
                    key: ct("zone", dir),
                    value: num(u32::from(n.zone)),
                })
            };
            // Within: both ends in the network (a reply from a peer node
            // to a pod must find the connection its request began).
            chain.push((
                n.tag("within"),
                vec![
                    is(field(fam, "saddr"), anon_set(&n.subnets)),
                    is(field(fam, "daddr"), anon_set(&n.subnets)),
                    mark(),
                    zone(None),
                    Statement::Accept(Some(Accept {})),
                ],
            ));
            if let Some(dns) = n.dns {
                // Queries to the network's resolver, marked so that the
                // answer's route and rp_filter use the network's table.
                chain.push((
                    n.tag(&format!("dns {dns}")),
                    vec![
                        is(
                            field(fam, "daddr"),
                            Expression::String(Cow::Owned(dns.to_string())),
                        ),
                        is(
                            meta(MetaKey::L4proto),
                            Expression::Named(NamedExpression::Set(vec![
                                SetItem::Element(Expression::String(Cow::Borrowed("udp"))),
                                SetItem::Element(Expression::String(Cow::Borrowed("tcp"))),
                            ])),
                        ),
                        is(
                            Expression::Named(NamedExpression::Payload(Payload::PayloadField(
                                PayloadField {
                                    protocol: Cow::Borrowed("th"),
                                    field: Cow::Borrowed("dport"),
                                },
                            ))),
                            num(53),
                        ),
                        mark(),
                        zone(Some(nftables::expr::CTDir::Original)),
                        Statement::Accept(Some(Accept {})),
                    ],
                ));
                chain.push((
                    n.tag("other resolvers"),
                    vec![is(field(fam, "daddr"), resolvers_from(0)), count(), drop()],
                ));
            }
            if n.isolated {
                // Nothing leaves an isolated network: not to another
                // network, the hosts, or beyond.
                chain.push((n.tag("leaving"), vec![count(), drop()]));
                out.insert(net_chain(n), chain);
                continue;
            }
            chain.push((n.tag("no vxlan"), forged()));
            let others: Vec<IpNet> = ranges
                .iter()
                .filter(|r| !n.subnets.iter().any(|s| s.contains(*r) || r.contains(s)))
                .copied()
                .collect();
            if !others.is_empty() {
                chain.push((
                    n.tag("leaving"),
                    vec![is(field(fam, "daddr"), anon_set(&others)), count(), drop()],
                ));
            }
            if !n.reach {
                chain.push((
                    n.tag("to the host"),
                    vec![
                        is(daddr_type(), Expression::String(Cow::Borrowed("local"))),
                        count(),
                        drop(),
                    ],
                ));
            }
            chain.push((
                n.tag("beyond"),
                vec![mark(), zone(Some(nftables::expr::CTDir::Original))],
            ));
            out.insert(net_chain(n), chain);
        }
        out.insert(
            RESTORE.to_string(),
            vec![(
                format!("muslin v{RULES_VERSION} networks restore"),
                // The connection's mark first: most have none, and the
                // packet is done after one test.
                vec![
                    not(masked(ct("mark", None), MARK_MASK), num(0)),
                    is(masked(meta(MetaKey::Mark), MARK_MASK), num(0)),
                    Statement::Mangle(Mangle {
                        key: meta(MetaKey::Mark),
                        value: masked(ct("mark", None), MARK_MASK),
                    }),
                ],
            )],
        );
        out
    }
}

/// A rule's comment (its identity when the table is compared) and body.
type TaggedRule = (String, Vec<Statement<'static>>);

impl Masquerade {
    /// Matches VXLAN: UDP to our VXLAN port.
    fn vxlan_match(&self) -> [Statement<'static>; 2] {
        [
            is(
                meta(MetaKey::L4proto),
                Expression::String(Cow::Borrowed("udp")),
            ),
            is(
                Expression::Named(NamedExpression::Payload(Payload::PayloadField(
                    PayloadField {
                        protocol: Cow::Borrowed("udp"),
                        field: Cow::Borrowed("dport"),
                    },
                ))),
                num(u32::from(self.vxlan_port)),
            ),
        ]
    }

    /// Encrypted, the cluster's traffic between hosts exists only inside
    /// WireGuard: whatever would leave in clear (a peer with no route into
    /// the device, a device gone) is dropped and counted, and what claims
    /// to come from the cluster on any other interface (spoofed on the
    /// underlay, or VXLAN into a network) is refused.
    fn wireguard_only(&self) -> Vec<(String, Vec<TaggedRule>)> {
        let fam = self.family();
        let ranges = || anon_set(&self.cluster_ranges());
        let nodes = || Expression::String(Cow::Owned(format!("@{NODES}")));
        let name = |n: &'static str| Expression::String(Cow::Borrowed(n));
        let vxlan = || self.vxlan_match();
        let tag = |what: &str| format!("muslin v{RULES_VERSION} encrypted: {what}");
        let mut vx_in = vec![not(meta(MetaKey::Iifname), name("msl-wg*"))];
        vx_in.extend(vxlan());
        vx_in.extend([count(), drop()]);
        let mut vx_out = vec![
            not(meta(MetaKey::Oifname), name("msl-wg*")),
            is(field(fam, "daddr"), nodes()),
        ];
        vx_out.extend(vxlan());
        vx_out.extend([count(), drop()]);
        vec![
            (
                WG_IN.to_string(),
                vec![
                    (
                        tag("cluster sources come from pods or wireguard"),
                        vec![
                            not(meta(MetaKey::Iifname), name("msl*")),
                            not(meta(MetaKey::Iifname), name("lo")),
                            is(field(fam, "saddr"), ranges()),
                            count(),
                            drop(),
                        ],
                    ),
                    (tag("vxlan comes through wireguard"), vx_in),
                ],
            ),
            (
                WG_CLEAR.to_string(),
                vec![
                    (
                        tag("no pod traffic between hosts in clear"),
                        vec![
                            not(meta(MetaKey::Oifname), name("msl*")),
                            is(field(fam, "saddr"), ranges()),
                            is(field(fam, "daddr"), ranges()),
                            count(),
                            drop(),
                        ],
                    ),
                    (
                        tag("no pod traffic to nodes in clear"),
                        vec![
                            not(meta(MetaKey::Oifname), name("msl*")),
                            is(field(fam, "saddr"), ranges()),
                            is(field(fam, "daddr"), nodes()),
                            count(),
                            drop(),
                        ],
                    ),
                    (tag("no vxlan in clear"), vx_out),
                ],
            ),
        ]
    }

    /// A node forwards what its peers send through a tunnel, relayed
    /// traffic included, only into the cluster: its pods, its networks
    /// and the nodes. Anyone who can reach the VXLAN port could otherwise
    /// have a node forward anything anywhere, as an open relay.
    fn tunnel_guard(&self) -> Vec<(String, Vec<Statement<'static>>)> {
        let fam = self.family();
        // WireGuard admits only peers' keys, but a peer is no more
        // entitled than a VXLAN sender to use us as a router to anywhere.
        [("tunnels", "msl-vx*"), ("wireguard", "msl-wg*")]
            .into_iter()
            .map(|(what, devices)| {
                (
                    format!("muslin v{RULES_VERSION} {what} carry only cluster traffic"),
                    vec![
                        is(
                            meta(MetaKey::Iifname),
                            Expression::String(Cow::Borrowed(devices)),
                        ),
                        not(field(fam, "daddr"), anon_set(&self.cluster_ranges())),
                        not(
                            field(fam, "daddr"),
                            Expression::String(Cow::Owned(format!("@{NODES}"))),
                        ),
                        not(daddr_type(), Expression::String(Cow::Borrowed("local"))),
                        count(),
                        drop(),
                    ],
                )
            })
            .collect()
    }
}

/// Tag of the rule counting the default network's packets dropped on
/// their way to another network.
pub fn default_leaving_tag() -> String {
    format!("muslin v{RULES_VERSION} networks default leaving")
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn ct(key: &'static str, dir: Option<nftables::expr::CTDir>) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: Cow::Borrowed(key),
        family: None,
        dir,
    }))
}

fn num(n: u32) -> Expression<'static> {
    Expression::Number(n)
}

fn masked(e: Expression<'static>, mask: u32) -> Expression<'static> {
    Expression::BinaryOperation(Box::new(BinaryOperation::AND(e, num(mask))))
}

fn not(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::NEQ,
    })
}

/// The kind of route the destination has (`local` for this host's own
/// addresses).
fn daddr_type() -> Expression<'static> {
    Expression::Named(NamedExpression::Fib(Fib {
        result: FibResult::Type,
        flags: HashSet::from([FibFlag::Daddr]),
    }))
}

fn count() -> Statement<'static> {
    Statement::Counter(Counter::Anonymous(None))
}

fn drop() -> Statement<'static> {
    Statement::Drop(Some(nftables::stmt::Drop {}))
}

fn masquerade() -> Statement<'static> {
    Statement::Masquerade(Some(NAT {
        addr: None,
        family: None,
        port: None,
        flags: Some(HashSet::from([NATFlag::FullyRandom])),
    }))
}

/// The name service's listening addresses from network id `first` on.
fn resolvers_from(first: u16) -> Expression<'static> {
    let (_, last) = muslin_model::dns::listen_range();
    let first = muslin_model::dns::listen_address(first);
    Expression::Range(Box::new(nftables::expr::Range {
        range: [
            Expression::String(Cow::Owned(first.to_string())),
            Expression::String(Cow::Owned(last.to_string())),
        ],
    }))
}

/// `nets` as the right side of a match: one prefix is compared directly
/// (a mask and a compare), cheaper per packet than a set lookup.
fn anon_set(nets: &[IpNet]) -> Expression<'static> {
    match nets {
        [one] => prefix(*one),
        _ => Expression::Named(NamedExpression::Set(
            nets.iter().map(|n| SetItem::Element(prefix(*n))).collect(),
        )),
    }
}

/// The changes that bring `observed` to `want`.
pub fn diff(observed: &NftObserved, want: &Masquerade) -> Vec<NftChange> {
    if !want.wanted() {
        return if observed.exists {
            vec![NftChange::DeleteTable(want.family())]
        } else {
            vec![]
        };
    }
    let chains = want.chains();
    let shape_ok = observed.exists
        && observed.rules.len() == chains.len()
        && chains
            .iter()
            .all(|(c, tags)| observed.rules.get(c) == Some(tags))
        && observed.sets.contains_key(NODES);
    if !shape_ok {
        return vec![NftChange::Load(want.clone())];
    }
    let have = &observed.sets[NODES];
    let wanted: BTreeSet<String> = want.set_nodes().iter().map(ToString::to_string).collect();
    let family = want.family();
    let mut out = Vec::new();
    let add: Vec<IpAddr> = want
        .set_nodes()
        .into_iter()
        .filter(|a| !have.contains(&a.to_string()))
        .collect();
    if !add.is_empty() {
        out.push(NftChange::AddNodes { family, nodes: add });
    }
    let del: Vec<IpAddr> = have
        .iter()
        .filter(|e| !wanted.contains(*e))
        .filter_map(|e| e.parse().ok())
        .collect();
    if !del.is_empty() {
        out.push(NftChange::DeleteNodes { family, nodes: del });
    }
    out
}

fn field<'a>(fam: NftFamily, name: &'a str) -> Expression<'a> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(fam.name()),
            field: Cow::Borrowed(name),
        },
    )))
}

fn is(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn prefix(net: IpNet) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(Cow::Owned(net.network().to_string()))),
        len: u32::from(net.prefix_len()),
    }))
}

fn elements(nodes: &[IpAddr]) -> Cow<'static, [Expression<'static>]> {
    nodes
        .iter()
        .map(|a| Expression::String(Cow::Owned(a.to_string())))
        .collect::<Vec<_>>()
        .into()
}

fn table(fam: NftFamily) -> NfListObject<'static> {
    NfListObject::Table(Table {
        family: fam.nf(),
        name: Cow::Borrowed(TABLE),
        handle: None,
    })
}

fn load(m: &Masquerade) -> Vec<NfObject<'static>> {
    let fam = m.family();
    let add = |o| NfObject::CmdObject(NfCmd::Add(o));
    let mut v = vec![
        // Adding before deleting makes the delete valid on a first load.
        add(table(fam)),
        NfObject::CmdObject(NfCmd::Delete(table(fam))),
        add(table(fam)),
    ];
    let nodes = m.set_nodes();
    v.push(add(NfListObject::Set(Box::new(Set {
        family: fam.nf(),
        table: Cow::Borrowed(TABLE),
        name: Cow::Borrowed(NODES),
        set_type: SetTypeValue::Single(match fam {
            NftFamily::Ip => SetType::Ipv4Addr,
            NftFamily::Ip6 => SetType::Ipv6Addr,
        }),
        elem: (!nodes.is_empty()).then(|| elements(&nodes)),
        ..Default::default()
    }))));
    let rules = m.rules();
    // Every chain before any rule: a rule may jump to a later one.
    for chain in rules.keys() {
        // nft's srcnat, raw and mangle priorities; the networks' own
        // chains are only jumped to.
        let base = match chain.as_str() {
            CHAIN => Some((NfChainType::NAT, NfHook::Postrouting, SRCNAT)),
            RAW => Some((NfChainType::Filter, NfHook::Prerouting, -300)),
            RESTORE => Some((NfChainType::Filter, NfHook::Prerouting, -150)),
            TUNNEL_GUARD => Some((NfChainType::Filter, NfHook::Prerouting, -140)),
            // A route chain: a mark set here makes the kernel route the
            // packet again.
            WG_OUT => Some((NfChainType::Route, NfHook::Output, -150)),
            // Before the networks' raw chain; after every rewrite but
            // masquerade (a pod's source is still its own).
            WG_IN => Some((NfChainType::Filter, NfHook::Prerouting, -310)),
            WG_CLEAR => Some((NfChainType::Filter, NfHook::Postrouting, 0)),
            _ => None,
        };
        v.push(add(NfListObject::Chain(Chain {
            family: fam.nf(),
            table: Cow::Borrowed(TABLE),
            name: Cow::Owned(chain.clone()),
            _type: base.map(|b| b.0),
            hook: base.map(|b| b.1),
            prio: base.map(|b| b.2),
            policy: base.map(|_| NfChainPolicy::Accept),
            ..Default::default()
        })));
    }
    for (chain, rules) in rules {
        for (tag, expr) in rules {
            v.push(add(NfListObject::Rule(Rule {
                family: fam.nf(),
                table: Cow::Borrowed(TABLE),
                chain: Cow::Owned(chain.clone()),
                expr: expr.into(),
                comment: Some(Cow::Owned(tag)),
                ..Default::default()
            })));
        }
    }
    v
}

impl NftChange {
    /// The nft JSON document (for `nft -j -f -`) that carries it out.
    pub fn to_json(&self) -> String {
        if let NftChange::Policy(c) = self {
            return c.to_json();
        }
        let objects: Vec<NfObject<'static>> = match self {
            NftChange::Load(m) => load(m),
            NftChange::AddNodes { family, nodes } | NftChange::DeleteNodes { family, nodes } => {
                let e = NfListObject::Element(Element {
                    family: family.nf(),
                    table: Cow::Borrowed(TABLE),
                    name: Cow::Borrowed(NODES),
                    elem: elements(nodes),
                });
                vec![NfObject::CmdObject(match self {
                    NftChange::AddNodes { .. } => NfCmd::Add(e),
                    _ => NfCmd::Delete(e),
                })]
            }
            NftChange::DeleteTable(fam) => vec![NfObject::CmdObject(NfCmd::Delete(table(*fam)))],
            NftChange::Policy(_) => unreachable!("written above"),
        };
        serde_json::to_string(&Nftables {
            objects: objects.into(),
        })
        .expect("nft JSON serializes")
    }
}

/// Reads `nft -j list table FAMILY muslin` output. Only names, comments
/// and set elements are read, as plain JSON: the `nftables` crate's typed
/// schema rejects some of what nft itself lists (nft 1.0 writes a single
/// masquerade flag as `"flags": "fully-random"`, the crate wants an
/// array), and a table of ours that cannot be read would never converge.
pub fn parse_observed(json: &str) -> Result<NftObserved, String> {
    use serde_json::Value;
    let doc: Value = serde_json::from_str(json).map_err(|e| format!("nft JSON: {e}"))?;
    let objects = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or("nft JSON: no \"nftables\" array")?;
    let str_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let ours = |v: &Value| v.get("table").and_then(Value::as_str) == Some(TABLE);
    let mut o = NftObserved::default();
    for obj in objects {
        if let Some(t) = obj.get("table") {
            if t.get("name").and_then(Value::as_str) == Some(TABLE) {
                o.exists = true;
            }
        } else if let Some(s) = obj.get("set").filter(|s| ours(s)) {
            let Some(name) = str_of(s, "name") else {
                continue;
            };
            let elems = s
                .get("elem")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(element)
                .collect();
            o.sets.insert(name, elems);
        } else if let Some(c) = obj.get("chain").filter(|c| ours(c)) {
            if let Some(name) = str_of(c, "name") {
                o.rules.entry(name).or_default();
            }
        } else if let Some(r) = obj.get("rule").filter(|r| ours(r)) {
            if let Some(chain) = str_of(r, "chain") {
                let tag = str_of(r, "comment").unwrap_or_default();
                let packets = r
                    .get("expr")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find_map(|e| e.get("counter")?.get("packets")?.as_u64());
                if let Some(p) = packets {
                    o.counters.insert(tag.clone(), p);
                }
                o.rules.entry(chain).or_default().push(tag);
            }
        }
    }
    Ok(o)
}

/// A set element as [`diff`] writes addresses. nft lists a plain element
/// as a string and one with a timeout or comment as `{"elem": {"val": ..}}`.
fn element(e: &serde_json::Value) -> Option<String> {
    let v = e.as_str().or_else(|| e.get("elem")?.get("val")?.as_str())?;
    Some(
        v.parse::<IpAddr>()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| v.to_string()),
    )
}
