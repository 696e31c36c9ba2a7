//! Pod traffic through a host whose own firewall would drop it (pitfall 5:
//! Docker sets the iptables FORWARD policy to DROP). A packet passes the
//! forward hook only if no base chain drops it, so an accept in Muslin's own
//! table cannot help: the accept must sit in the host's chains themselves.
//!
//! This module reads what the host has (the parsed `nft -j list ruleset` and
//! the `iptables -S FORWARD` text of each iptables variant in use) and says,
//! without I/O, which of our accept rules are missing where, and which rules
//! are ours to remove. Each chain is changed with the tool that manages it,
//! so an operator who reads iptables keeps a readable iptables.

mod nft;
mod xtables;

use std::fmt;

use ipnet::IpNet;
use serde_json::{json, Value};

/// Marks a rule as Muslin's: the only rules in the host's chains that Muslin
/// ever inserts or deletes carry exactly this comment.
pub const RULE_COMMENT: &str = "muslin: pod traffic";

/// Muslin's own nftables table (masquerade); never a host firewall.
pub const OWN_TABLE: &str = "muslin";

/// The table and chain of `iptables -A FORWARD`, in every iptables variant.
pub const IPTABLES_TABLE: &str = "filter";
pub const IPTABLES_CHAIN: &str = "FORWARD";

/// Seconds an iptables command waits for the xtables lock that Docker and
/// others hold while they write, instead of failing at once.
pub const XTABLES_LOCK_WAIT: &str = "5";

/// The tool that manages a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// iptables over nf_tables: the chain shows in nft, its rules read
    /// properly only through iptables-nft (matches such as comments are
    /// opaque `xt` expressions to nft).
    IptablesNft,
    /// The legacy x_tables kernel tables; invisible to nft.
    IptablesLegacy,
    /// A chain written with nft itself.
    Nftables,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::IptablesNft => "iptables-nft",
            Backend::IptablesLegacy => "iptables-legacy",
            Backend::Nftables => "nftables",
        })
    }
}

/// An nftables address family that can carry routed pod traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Ip,
    Ip6,
    Inet,
}

impl Family {
    fn parse(s: &str) -> Option<Family> {
        match s {
            "ip" => Some(Family::Ip),
            "ip6" => Some(Family::Ip6),
            "inet" => Some(Family::Inet),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
            Family::Inet => "inet",
        }
    }

    /// Whether traffic of `net`'s address family passes chains of this family.
    pub fn carries(self, net: &IpNet) -> bool {
        match self {
            Family::Ip => matches!(net, IpNet::V4(_)),
            Family::Ip6 => matches!(net, IpNet::V6(_)),
            Family::Inet => true,
        }
    }
}

/// A base chain on the forward hook of the host's firewall.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Chain {
    pub backend: Backend,
    pub family: Family,
    pub table: String,
    pub name: String,
}

/// The iptables program that manages chains of this backend and family;
/// `None` for nft's own.
pub fn iptables_program(backend: Backend, family: Family) -> Option<&'static str> {
    match (backend, family) {
        (Backend::IptablesNft, Family::Ip6) => Some("ip6tables-nft"),
        (Backend::IptablesNft, _) => Some("iptables-nft"),
        (Backend::IptablesLegacy, Family::Ip6) => Some("ip6tables-legacy"),
        (Backend::IptablesLegacy, _) => Some("iptables-legacy"),
        (Backend::Nftables, _) => None,
    }
}

impl Chain {
    pub fn iptables_program(&self) -> Option<&'static str> {
        iptables_program(self.backend, self.family)
    }
}

impl fmt::Display for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.iptables_program() {
            Some(p) => write!(f, "{p} table {} chain {}", self.table, self.name),
            None => write!(
                f,
                "nft table {} {} chain {}",
                self.family.as_str(),
                self.table,
                self.name
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Source,
    Destination,
}

/// One of our accept rules: all traffic from, or all traffic to, a pod CIDR.
/// Both are needed: from covers pods' outgoing traffic, to covers replies
/// and traffic that other hosts or pods send to a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PodRule {
    pub direction: Direction,
    pub cidr: IpNet,
}

impl PodRule {
    /// The rules that let every pod CIDR through, both ways.
    pub fn all(pod_cidrs: &[IpNet]) -> Vec<PodRule> {
        pod_cidrs
            .iter()
            .flat_map(|c| {
                [Direction::Source, Direction::Destination].map(|direction| PodRule {
                    direction,
                    cidr: c.trunc(),
                })
            })
            .collect()
    }

    /// The rule as iptables writes it after `-A CHAIN` in `iptables -S`
    /// (the exact words, so a rule we inserted is recognised when read back).
    pub fn iptables_spec(&self) -> Vec<String> {
        let flag = match self.direction {
            Direction::Source => "-s",
            Direction::Destination => "-d",
        };
        [
            flag,
            &self.cidr.trunc().to_string(),
            "-m",
            "comment",
            "--comment",
            RULE_COMMENT,
            "-j",
            "ACCEPT",
        ]
        .map(String::from)
        .to_vec()
    }

    /// The rule's statements in nft's JSON schema (without the comment,
    /// which nft keeps beside them).
    pub fn nft_expr(&self) -> Value {
        let cidr = self.cidr.trunc();
        json!([
            {"match": {
                "op": "==",
                "left": {"payload": {"protocol": self.protocol(), "field": self.field()}},
                "right": {"prefix": {"addr": cidr.addr().to_string(), "len": cidr.prefix_len()}},
            }},
            {"accept": null},
        ])
    }

    fn protocol(&self) -> &'static str {
        match self.cidr {
            IpNet::V4(_) => "ip",
            IpNet::V6(_) => "ip6",
        }
    }

    fn field(&self) -> &'static str {
        match self.direction {
            Direction::Source => "saddr",
            Direction::Destination => "daddr",
        }
    }
}

impl fmt::Display for PodRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} accept",
            self.protocol(),
            self.field(),
            self.cidr
        )
    }
}

/// Why a chain would drop pod traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropCause {
    /// The chain's policy is drop and nothing before it accepts pod traffic.
    Policy,
    /// A rule drops or rejects everything that reaches it (its text).
    Rule(String),
    /// A rule drops or rejects all traffic from or to addresses that
    /// overlap the pod CIDRs (its text). The agent leaves such a rule in
    /// force, as an operator's deliberate choice; doctor names it.
    PodTraffic(String),
}

impl fmt::Display for DropCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DropCause::Policy => f.write_str("its policy is drop"),
            DropCause::Rule(r) => write!(f, "rule `{r}` drops everything"),
            DropCause::PodTraffic(r) => write!(f, "rule `{r}` drops pod traffic"),
        }
    }
}

/// How a rule of ours is named to delete it: nft by handle; iptables by
/// its full specification, which deletes exactly that rule and no other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleRef {
    Handle(u64),
    Spec(Vec<String>),
}

/// A change to the host's firewall, computed here and carried out by the
/// kernel crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Insert `rule` at the top of `chain`, because of `cause`.
    Insert {
        chain: Chain,
        rule: PodRule,
        cause: DropCause,
    },
    /// Delete one rule of ours.
    Delete { chain: Chain, rule: RuleRef },
}

impl Action {
    pub fn chain(&self) -> &Chain {
        match self {
            Action::Insert { chain, .. } | Action::Delete { chain, .. } => chain,
        }
    }

    /// The command in nft's JSON schema, for chains nft manages itself.
    /// An `insert` without a position goes to the top of the chain.
    pub fn nft_command(&self) -> Option<Value> {
        let chain = self.chain();
        if chain.backend != Backend::Nftables {
            return None;
        }
        let at = json!({
            "family": chain.family.as_str(),
            "table": chain.table,
            "chain": chain.name,
        });
        Some(match self {
            Action::Insert { rule, .. } => {
                let mut r = at;
                r["expr"] = rule.nft_expr();
                r["comment"] = RULE_COMMENT.into();
                json!({"insert": {"rule": r}})
            }
            Action::Delete { rule, .. } => {
                let mut r = at;
                if let RuleRef::Handle(h) = rule {
                    r["handle"] = (*h).into();
                }
                json!({"delete": {"rule": r}})
            }
        })
    }

    /// Program and arguments, for chains an iptables variant manages.
    pub fn iptables_command(&self) -> Option<(&'static str, Vec<String>)> {
        let chain = self.chain();
        let program = chain.iptables_program()?;
        let mut args: Vec<String> = vec!["-w".into(), XTABLES_LOCK_WAIT.into()];
        match self {
            Action::Insert { rule, .. } => {
                args.extend(["-I".into(), chain.name.clone(), "1".into()]);
                args.extend(rule.iptables_spec());
            }
            Action::Delete { rule, .. } => {
                args.extend(["-D".into(), chain.name.clone()]);
                if let RuleRef::Spec(spec) = rule {
                    args.extend(spec.iter().cloned());
                }
            }
        }
        Some((program, args))
    }
}

/// The `FORWARD` chain of the `filter` table as one iptables variant
/// prints it with `-S FORWARD` (the iptables-save syntax).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptablesForward {
    pub backend: Backend,
    /// `Ip` for iptables, `Ip6` for ip6tables.
    pub family: Family,
    pub save: String,
}

/// What was read from the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// The parsed output of `nft -j list ruleset`.
    pub nft: Value,
    /// One entry per iptables variant and family whose FORWARD chain exists.
    pub iptables: Vec<IptablesForward>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("nft's JSON ruleset has no `nftables` list; is this `nft -j list ruleset` output?")]
    NotRuleset,
}

/// The families whose iptables-nft `filter FORWARD` chain is in the nft
/// ruleset: these chains are read and changed through iptables-nft.
pub fn iptables_nft_families(nft: &Value) -> Result<Vec<Family>, ParseError> {
    nft::iptables_nft_families(nft)
}

/// Our accept rules missing in the host chains that would drop pod traffic.
/// Empty when every such chain already lets pod traffic through, so a
/// caller that applies it makes no change.
pub fn missing_accepts(
    observed: &Observed,
    pod_cidrs: &[IpNet],
) -> Result<Vec<Action>, ParseError> {
    let wanted = PodRule::all(pod_cidrs);
    Ok(forward_chains(observed)?
        .iter()
        .flat_map(|c| c.missing(&wanted))
        .collect())
}

/// Deletion of every rule carrying our comment, and of nothing else.
pub fn removals(observed: &Observed) -> Result<Vec<Action>, ParseError> {
    Ok(forward_chains(observed)?
        .iter()
        .flat_map(ForwardChain::removals)
        .collect())
}

/// A forward base chain that would drop pod traffic, as `muslin doctor`
/// reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodDrop {
    pub chain: Chain,
    /// The first rule that drops pod traffic, or the policy.
    pub cause: DropCause,
    /// Whether every accept of ours that the chain's family needs sits
    /// before that rule, so pod traffic passes anyway.
    pub covered: bool,
}

/// Each forward base chain that would drop traffic of `pod_cidrs`, and
/// whether our accepts let it through. Unlike [`missing_accepts`], a rule
/// that drops only traffic from or to part of the pod network counts: the
/// agent never overrides it, so only an operator can.
pub fn pod_drops(observed: &Observed, pod_cidrs: &[IpNet]) -> Result<Vec<PodDrop>, ParseError> {
    let wanted = PodRule::all(pod_cidrs);
    Ok(forward_chains(observed)?
        .iter()
        .filter_map(|c| c.pod_drop(&wanted))
        .collect())
}

/// A forward base chain as the model sees it, whichever tool manages it.
#[derive(Debug)]
struct ForwardChain {
    chain: Chain,
    policy_drop: bool,
    rules: Vec<Rule>,
}

/// What matters of one rule.
#[derive(Debug)]
struct Rule {
    id: RuleRef,
    /// The rule as its tool prints it, to say which rule drops.
    text: String,
    /// Carries our comment.
    ours: bool,
    /// Ours and exactly one of our accepts.
    accepts: Option<PodRule>,
    /// Drops or rejects whatever reaches it.
    drops: bool,
    /// Drops or rejects all traffic from, or all traffic to, this range,
    /// and has no other condition.
    drops_range: Option<(Direction, IpNet)>,
}

impl Rule {
    fn drops_pods(&self, wanted: &[&PodRule]) -> bool {
        self.drops_range
            .is_some_and(|(_, r)| wanted.iter().any(|w| overlaps(&r, &w.cidr)))
    }
}

/// Whether two ranges share an address: one contains the other.
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

impl ForwardChain {
    fn drop_cause(&self) -> Option<DropCause> {
        match self.rules.iter().find(|r| r.drops) {
            Some(r) => Some(DropCause::Rule(r.text.clone())),
            None if self.policy_drop => Some(DropCause::Policy),
            None => None,
        }
    }

    /// Our accepts that take effect: those before the first rule that drops.
    fn effective(&self) -> impl Iterator<Item = PodRule> + '_ {
        self.rules
            .iter()
            .take_while(|r| !r.drops)
            .filter_map(|r| r.accepts)
    }

    fn missing(&self, wanted: &[PodRule]) -> Vec<Action> {
        let Some(cause) = self.drop_cause() else {
            return Vec::new();
        };
        let present: Vec<PodRule> = self.effective().collect();
        wanted
            .iter()
            .filter(|w| self.chain.family.carries(&w.cidr) && !present.contains(w))
            .map(|&rule| Action::Insert {
                chain: self.chain.clone(),
                rule,
                cause: cause.clone(),
            })
            .collect()
    }

    fn pod_drop(&self, wanted: &[PodRule]) -> Option<PodDrop> {
        let wanted: Vec<&PodRule> = wanted
            .iter()
            .filter(|w| self.chain.family.carries(&w.cidr))
            .collect();
        if wanted.is_empty() {
            return None;
        }
        let first = self
            .rules
            .iter()
            .position(|r| r.drops || r.drops_pods(&wanted));
        let cause = match first.map(|i| &self.rules[i]) {
            Some(r) if r.drops => DropCause::Rule(r.text.clone()),
            Some(r) => DropCause::PodTraffic(r.text.clone()),
            None if self.policy_drop => DropCause::Policy,
            None => return None,
        };
        let before = &self.rules[..first.unwrap_or(self.rules.len())];
        let covered = wanted
            .iter()
            .all(|w| before.iter().any(|r| r.accepts == Some(**w)));
        Some(PodDrop {
            chain: self.chain.clone(),
            cause,
            covered,
        })
    }

    fn removals(&self) -> Vec<Action> {
        self.rules
            .iter()
            .filter(|r| r.ours)
            .map(|r| Action::Delete {
                chain: self.chain.clone(),
                rule: r.id.clone(),
            })
            .collect()
    }
}

fn forward_chains(observed: &Observed) -> Result<Vec<ForwardChain>, ParseError> {
    let managed: Vec<Family> = observed
        .iptables
        .iter()
        .filter(|x| x.backend == Backend::IptablesNft)
        .map(|x| x.family)
        .collect();
    let mut chains = nft::forward_chains(&observed.nft, &managed)?;
    chains.extend(observed.iptables.iter().map(xtables::forward_chain));
    Ok(chains)
}

#[cfg(test)]
mod tests;
