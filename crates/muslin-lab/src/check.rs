//! The connectivity matrix, per network: from every container to every
//! container that shares the network (and to every host, on the default
//! network), per protocol; and isolation: a container must NOT reach the
//! addresses of containers it shares no network with. Which probes to make
//! is decided by pure functions; probes run in-process, one thread per
//! source entering the source's namespace, so a 20-host lab is checked in
//! seconds.
//!
//! With policies in force, a pair in a network is expected to connect
//! only over the protocols the policies allow (`policies::PolicySet`):
//! a denied protocol passes when nothing gets through, and fails when
//! something does.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::time::Duration;

use ipnet::IpNet;
use nix::sched::{setns, CloneFlags};
use serde::Serialize;

use muslin_model::policy::NamedPort;

use crate::cause::{self, Cause};
use crate::policies::{PolicyEnd, PolicySet, Target};
use crate::probe::{self, Proto};
use crate::sample::{self, Candidate, Sampling};
use crate::topology::DEFAULT_NETWORK;

/// The longest an isolation probe waits: there, no answer is the pass, so
/// every passing probe waits this long. A lab's answers take milliseconds.
pub const ISOLATION_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    /// `h1/c1` for a container, `h1` for a host.
    pub label: String,
    pub ns: String,
    pub address: IpAddr,
}

/// A container as the matrix sees it: its addresses per network, in
/// attachment order.
#[derive(Debug, Clone)]
pub struct Member {
    pub label: String,
    pub ns: String,
    pub addresses: Vec<(String, IpAddr)>,
    /// The host it runs on (traffic to its own host is never policed).
    pub host: String,
    /// What policies see of it: its namespace, its labels in each network
    /// (labels belong to an attachment) and the ports it names.
    pub namespace: String,
    pub labels: BTreeMap<String, BTreeMap<String, String>>,
    pub ports: BTreeMap<String, NamedPort>,
    /// Its name in the name service (`NAME.NAMESPACE.DOMAIN`).
    pub name: String,
    /// Per network, the name service of its attachment there, as the ADD
    /// result gave it; none where the agent serves no names.
    pub dns: BTreeMap<String, NameService>,
}

/// What an attachment's resolv.conf says: whom to ask, and the cluster
/// domain (the last search domain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameService {
    pub resolver: IpAddr,
    pub domain: String,
}

impl Member {
    fn on(&self, network: &str) -> bool {
        self.addresses.iter().any(|(n, _)| n == network)
    }

    fn address_in(&self, network: &str) -> Option<IpAddr> {
        self.addresses
            .iter()
            .find(|(n, _)| n == network)
            .map(|(_, a)| *a)
    }

    /// The name service its resolv.conf names: its first attachment's.
    fn first_dns(&self) -> Option<&NameService> {
        self.addresses.first().and_then(|(n, _)| self.dns.get(n))
    }

    /// The query for `dst`'s name asked of `dns`.
    fn query_for(dst: &Member, dns: &NameService) -> DnsProbe {
        DnsProbe {
            resolver: dns.resolver,
            qname: format!("{}.{}.{}", dst.name, dst.namespace, dns.domain),
        }
    }

    fn policy_end<'a>(&'a self, network: &'a str, address: IpAddr) -> PolicyEnd<'a> {
        static NONE: BTreeMap<String, String> = BTreeMap::new();
        PolicyEnd {
            network,
            namespace: &self.namespace,
            labels: self.labels.get(network).unwrap_or(&NONE),
            ports: &self.ports,
            address,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PairResult {
    pub network: String,
    pub from: String,
    pub to: String,
    /// Protocols that failed, with why; empty when the pair works.
    pub failed: Vec<(String, String)>,
    /// Protocols policies deny that got nothing through, as expected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied_by_policy: Vec<String>,
    /// Protocols policies deny that got through: failures.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reached_despite_policy: Vec<String>,
    /// The name the source resolved for `dns` and where (a container
    /// target with the name service checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsProbe>,
    /// Why it failed, when the kernel shows it (`lab check` looks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
}

impl PairResult {
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && self.reached_despite_policy.is_empty()
    }
}

/// A source trying an address of a container it shares no network with.
#[derive(Debug, Clone, Serialize)]
pub struct IsolationResult {
    pub from: String,
    pub to: String,
    /// The target's network (one the source is not on) and its address there.
    pub network: String,
    pub address: IpAddr,
    /// Protocols that got through: each a failure. Empty when isolated.
    pub reached: Vec<String>,
    /// Why the probe could not be made at all (also a failure: an
    /// unprobed pair proves nothing).
    pub error: Option<String>,
    /// The target's name the source resolved, and where: it must not
    /// resolve to `address` (`dns` in `reached` when it does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsProbe>,
    /// Protocols whose probe got no answer either way (the resolver was
    /// silent): failures too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unanswered: Vec<(String, String)>,
}

impl IsolationResult {
    pub fn ok(&self) -> bool {
        self.reached.is_empty() && self.error.is_none() && self.unanswered.is_empty()
    }
}

/// A name to resolve from the source, and the resolver to ask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnsProbe {
    pub resolver: IpAddr,
    pub qname: String,
}

/// The name service column's name in `protocols` and in results.
pub const DNS: &str = "dns";

/// Each DNS try waits this long, and a query is tried this often: a
/// resolver that is down fails its probes in seconds, not minutes.
pub const DNS_TIMEOUT: Duration = Duration::from_secs(1);
pub const DNS_TRIES: u32 = 2;

/// A probe the matrix does not make, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub from: String,
    pub to: String,
    pub network: String,
    pub address: IpAddr,
    pub why: String,
}

/// Who probes whom in one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkMatrix {
    pub name: String,
    pub sources: Vec<String>,
    pub targets: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Matrix {
    pub protocols: Vec<String>,
    pub networks: Vec<NetworkMatrix>,
    /// Every network's pairs, each of which must work.
    pub pairs: Vec<PairResult>,
    /// Pairs that share no network, each of which must not work.
    pub isolation: Vec<IsolationResult>,
    pub skipped: Vec<Skipped>,
    /// Keys of the policies the pairs were judged by; empty without any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    /// How the pairs were sampled, when not all were checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Sampling>,
    /// Failing pairs whose cause was looked for (the first ones).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub looked_into: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Reach,
    Isolated,
}

/// One probe to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub from: String,
    pub ns: String,
    pub to: String,
    pub network: String,
    pub address: IpAddr,
    pub expect: Expect,
    /// Protocols policies deny on a `Reach` probe: nothing may get
    /// through over them.
    pub denied: Vec<Proto>,
    /// The target's name to resolve, for a container target of a source
    /// with a name service: to the address on a `Reach` probe, never to it
    /// on an `Isolated` one. Policies do not apply: the resolver is on the
    /// source's own host.
    pub dns: Option<DnsProbe>,
}

/// What to probe, decided before any probe runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckPlan {
    pub networks: Vec<NetworkMatrix>,
    pub probes: Vec<Probe>,
    pub skipped: Vec<Skipped>,
}

/// Decides the probes: per network (in `subnets`' order, then any other a
/// member is on), every member on it to every other member on it, and on
/// the default network to every host too; then isolation between members
/// that share no network. `subnets` gives each network's subnet, which
/// tells when a probe's destination is ambiguous.
pub fn plan(members: &[Member], hosts: &[Endpoint], subnets: &[(String, IpNet)]) -> CheckPlan {
    let mut names: Vec<String> = subnets.iter().map(|(n, _)| n.clone()).collect();
    for (n, _) in members.iter().flat_map(|m| &m.addresses) {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    let subnet = |n: &str| subnets.iter().find(|(x, _)| x == n).map(|(_, s)| *s);
    let mut out = CheckPlan {
        networks: vec![],
        probes: vec![],
        skipped: vec![],
    };
    for net in &names {
        let on: Vec<&Member> = members.iter().filter(|m| m.on(net)).collect();
        if on.is_empty() {
            continue;
        }
        let mut targets: Vec<(String, IpAddr)> = on
            .iter()
            .filter_map(|m| Some((m.label.clone(), m.address_in(net)?)))
            .collect();
        if net == DEFAULT_NETWORK {
            targets.extend(hosts.iter().map(|h| (h.label.clone(), h.address)));
        }
        out.networks.push(NetworkMatrix {
            name: net.clone(),
            sources: on.iter().map(|m| m.label.clone()).collect(),
            targets: targets.iter().map(|(l, _)| l.clone()).collect(),
        });
        for src in &on {
            for (to, address) in targets.iter().filter(|(l, _)| *l != src.label) {
                match ambiguous(src, net, *address, &subnet) {
                    Some(why) => out.skipped.push(Skipped {
                        from: src.label.clone(),
                        to: to.clone(),
                        network: net.clone(),
                        address: *address,
                        why,
                    }),
                    None => out.probes.push(Probe {
                        from: src.label.clone(),
                        ns: src.ns.clone(),
                        to: to.clone(),
                        network: net.clone(),
                        address: *address,
                        expect: Expect::Reach,
                        denied: vec![],
                        // Hosts have no names; a container is asked for
                        // at the resolver of the network they share.
                        dns: on
                            .iter()
                            .find(|m| &m.label == to)
                            .zip(src.dns.get(net))
                            .map(|(dst, dns)| Member::query_for(dst, dns)),
                    }),
                }
            }
        }
    }
    isolation(members, &mut out);
    out
}

/// A source on several networks whose subnets overlap cannot say which one
/// a destination is in: its own routes pick the interface, whatever the
/// network, and an answer may come from the other network's holder of the
/// same address. Such probes prove nothing, either way.
fn ambiguous(
    src: &Member,
    net: &str,
    address: IpAddr,
    subnet: &dyn Fn(&str) -> Option<IpNet>,
) -> Option<String> {
    src.addresses
        .iter()
        .map(|(n, _)| n)
        .find(|n| *n != net && subnet(n).is_some_and(|s| s.contains(&address)))
        .map(|other| {
            format!("{address} is in {other}'s subnet too, and the source is on {other} as well")
        })
}

/// Pairs that share no network: the source tries each of the target's
/// addresses, expecting nothing through. An address that a container holds
/// in a network the source is on is skipped: with overlapping subnets,
/// reaching it there is legitimate.
fn isolation(members: &[Member], out: &mut CheckPlan) {
    for src in members {
        let nets: HashSet<&str> = src.addresses.iter().map(|(n, _)| n.as_str()).collect();
        let held: HashSet<IpAddr> = members
            .iter()
            .flat_map(|m| &m.addresses)
            .filter(|(n, _)| nets.contains(n.as_str()))
            .map(|(_, a)| *a)
            .collect();
        for dst in members.iter().filter(|d| d.label != src.label) {
            if dst.addresses.iter().any(|(n, _)| nets.contains(n.as_str())) {
                continue;
            }
            for (net, address) in &dst.addresses {
                let base = (src.label.clone(), dst.label.clone(), net.clone(), *address);
                if held.contains(address) {
                    out.skipped.push(Skipped {
                        from: base.0,
                        to: base.1,
                        network: base.2,
                        address: base.3,
                        why: format!("{address} is also held in a network the source is on"),
                    });
                    continue;
                }
                out.probes.push(Probe {
                    from: base.0,
                    ns: src.ns.clone(),
                    to: base.1,
                    network: base.2,
                    address: base.3,
                    expect: Expect::Isolated,
                    denied: vec![],
                    // Asked as the source's resolv.conf would ask.
                    dns: src.first_dns().map(|dns| Member::query_for(dst, dns)),
                });
            }
        }
    }
}

/// Marks on each pair the protocols `set` denies over `port`; hosts are
/// judged as addresses (they are no endpoints).
pub fn expect_policies(
    plan: &mut CheckPlan,
    members: &[Member],
    hosts: &[Endpoint],
    set: &PolicySet,
    protos: &[Proto],
    port: u16,
) {
    for p in plan.probes.iter_mut().filter(|p| p.expect == Expect::Reach) {
        let Some(src) = members.iter().find(|m| m.label == p.from) else {
            continue;
        };
        let Some(src_addr) = src.address_in(&p.network) else {
            continue;
        };
        let from = src.policy_end(&p.network, src_addr);
        let to = match members.iter().find(|m| m.label == p.to) {
            Some(dst) => Target::Container(dst.policy_end(&p.network, p.address)),
            None => match hosts.iter().find(|h| h.label == p.to) {
                Some(h) => Target::Host {
                    address: h.address,
                    own: h.label == src.host,
                },
                None => continue,
            },
        };
        p.denied = set.denied(&from, &to, protos, port);
    }
}

/// Keeps a sample of the plan's probes (`sample::pick`): at least `each`
/// of every source, destination and kind of pair (`class` names a
/// probe's), up to `budget` in all, the same for the same `seed`.
pub fn sample_plan(
    plan: &mut CheckPlan,
    class: &dyn Fn(&Probe) -> String,
    each: usize,
    budget: usize,
    seed: u64,
) -> Sampling {
    let all: Vec<Candidate> = plan
        .probes
        .iter()
        .map(|p| Candidate {
            from: p.from.clone(),
            to: p.to.clone(),
            class: class(p),
        })
        .collect();
    let picked = sample::pick(&all, each, budget, seed);
    let classes = sample::classes(&all, &picked);
    let keep: HashSet<usize> = picked.into_iter().collect();
    let of = plan.probes.len();
    let mut i = 0;
    plan.probes.retain(|_| {
        i += 1;
        keep.contains(&(i - 1))
    });
    Sampling {
        checked: plan.probes.len(),
        of,
        seed,
        each_at_least: each,
        classes,
    }
}

/// Makes the planned probes: one thread per source namespace. Isolation
/// probes, and protocols policies deny, wait at most [`ISOLATION_TIMEOUT`].
/// With `dns`, each probe that names a target also resolves the name (a
/// `dns` column after the protocols).
pub fn run(plan: CheckPlan, protos: &[Proto], dns: bool, port: u16, timeout: Duration) -> Matrix {
    let mut by_ns: BTreeMap<&str, Vec<&Probe>> = BTreeMap::new();
    for p in &plan.probes {
        by_ns.entry(&p.ns).or_default().push(p);
    }
    let results: Vec<(&Probe, Outcome)> = std::thread::scope(|s| {
        let handles: Vec<_> = by_ns
            .into_iter()
            .map(|(ns, probes)| s.spawn(move || from_ns(ns, probes, protos, dns, port, timeout)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("probe thread does not panic"))
            .collect()
    });
    let mut m = Matrix {
        protocols: protos
            .iter()
            .map(|p| p.name().to_string())
            .chain(dns.then(|| DNS.to_string()))
            .collect(),
        networks: plan.networks.clone(),
        pairs: vec![],
        isolation: vec![],
        skipped: plan.skipped.clone(),
        policies: vec![],
        sampling: None,
        looked_into: 0,
    };
    for (p, outcome) in results {
        match p.expect {
            Expect::Reach => m.pairs.push(judge(p, outcome, protos, dns)),
            Expect::Isolated => m.isolation.push(IsolationResult {
                from: p.from.clone(),
                to: p.to.clone(),
                network: p.network.clone(),
                address: p.address,
                reached: match &outcome {
                    Outcome::NoEntry(_) => vec![],
                    Outcome::Probed(r) => r.reached.clone(),
                },
                dns: p.dns.clone().filter(|_| dns),
                unanswered: match &outcome {
                    Outcome::NoEntry(_) => vec![],
                    Outcome::Probed(r) => r.unanswered.clone(),
                },
                error: match outcome {
                    Outcome::NoEntry(e) => Some(e),
                    Outcome::Probed(_) => None,
                },
            }),
        }
    }
    m
}

/// A pair's result against what was expected of each protocol: allowed
/// ones must get through, denied ones must not. The name must resolve to
/// the target's address.
fn judge(p: &Probe, outcome: Outcome, protos: &[Proto], dns: bool) -> PairResult {
    let dns = p.dns.clone().filter(|_| dns);
    let mut pair = PairResult {
        network: p.network.clone(),
        from: p.from.clone(),
        to: p.to.clone(),
        failed: vec![],
        denied_by_policy: vec![],
        reached_despite_policy: vec![],
        dns: dns.clone(),
        cause: None,
    };
    match outcome {
        // Unprobed proves nothing, whatever was expected.
        Outcome::NoEntry(e) => {
            pair.failed = protos
                .iter()
                .map(|pr| pr.name())
                .chain(dns.map(|_| DNS))
                .map(|pr| (pr.to_string(), e.clone()))
                .collect()
        }
        Outcome::Probed(r) => {
            let denied = |name: &str| p.denied.iter().any(|d| d.name() == name);
            for (pr, why) in r.failed.into_iter().chain(r.unanswered) {
                if denied(&pr) {
                    pair.denied_by_policy.push(pr);
                } else {
                    pair.failed.push((pr, why));
                }
            }
            pair.reached_despite_policy = r.reached.into_iter().filter(|pr| denied(pr)).collect();
        }
    }
    pair
}

enum Outcome {
    /// The source's namespace could not be entered.
    NoEntry(String),
    Probed(Probed),
}

struct Probed {
    /// Protocols that failed, with why.
    failed: Vec<(String, String)>,
    /// Protocols that got through.
    reached: Vec<String>,
    /// Protocols whose probe got no answer to judge by (a silent
    /// resolver), with why.
    unanswered: Vec<(String, String)>,
}

fn from_ns<'a>(
    ns: &str,
    probes: Vec<&'a Probe>,
    protos: &[Proto],
    dns: bool,
    port: u16,
    timeout: Duration,
) -> Vec<(&'a Probe, Outcome)> {
    let entered = File::open(format!("/var/run/netns/{ns}"))
        .map_err(|e| e.to_string())
        .and_then(|f| setns(f.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string()))
        .map_err(|e| format!("cannot enter {ns}: {e}"));
    probes
        .into_iter()
        .map(|p| {
            let outcome = match &entered {
                Err(e) => Outcome::NoEntry(e.clone()),
                Ok(()) => {
                    let mut r = Probed {
                        failed: vec![],
                        reached: vec![],
                        unanswered: vec![],
                    };
                    for pr in protos {
                        // Where no answer is the pass, every pass waits
                        // the whole timeout: keep it short.
                        let t = if p.expect == Expect::Isolated || p.denied.contains(pr) {
                            timeout.min(ISOLATION_TIMEOUT)
                        } else {
                            timeout
                        };
                        match probe::check(p.address, port, *pr, t) {
                            Ok(_) => r.reached.push(pr.name().to_string()),
                            Err(e) => r.failed.push((pr.name().to_string(), e.reason)),
                        }
                    }
                    if let Some(q) = p.dns.as_ref().filter(|_| dns) {
                        resolve_into(q, p.address, &mut r);
                    }
                    Outcome::Probed(r)
                }
            };
            (p, outcome)
        })
        .collect()
}

/// Resolves `q` from the current namespace: `dns` reached when the answer
/// holds `address`, failed when it does not, unanswered when none came.
fn resolve_into(q: &DnsProbe, address: IpAddr, r: &mut Probed) {
    let asked = format!("{} at {}", q.qname, q.resolver);
    match probe::resolve(q.resolver, &q.qname, DNS_TIMEOUT, DNS_TRIES) {
        Ok(a) if a.addresses.contains(&address) => r.reached.push(DNS.into()),
        Ok(a) => {
            let got = if a.addresses.is_empty() {
                "no address".to_string()
            } else {
                a.addresses
                    .iter()
                    .map(IpAddr::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            r.failed.push((
                DNS.into(),
                format!("{asked}: {} {got}, not {address}", a.rcode),
            ));
        }
        Err(e) => r
            .unanswered
            .push((DNS.into(), format!("{asked}: {}", e.reason))),
    }
}

impl Matrix {
    pub fn ok(&self) -> bool {
        self.pairs.iter().all(PairResult::ok) && self.isolation.iter().all(|i| i.ok())
    }

    /// Pairs that failed or got through where policies deny, and pairs
    /// that should be isolated but are not.
    pub fn failures(&self) -> usize {
        self.pairs.iter().filter(|p| !p.ok()).count()
            + self.isolation.iter().filter(|i| !i.ok()).count()
    }

    /// One line per failed protocol of a pair and per isolation breach.
    pub fn problems(&self) -> Vec<String> {
        let only_default = self.only_default();
        let mut out = Vec::new();
        for p in &self.pairs {
            let net = if only_default {
                String::new()
            } else {
                format!(" (network {})", p.network)
            };
            for (proto, why) in &p.failed {
                out.push(format!("{} -> {}{net} {proto}: {why}", p.from, p.to));
            }
            for proto in &p.reached_despite_policy {
                out.push(format!(
                    "{} -> {}{net} {proto}: got through, but policy denies it",
                    p.from, p.to
                ));
            }
            if let Some(c) = &p.cause {
                out.push(format!(
                    "{} -> {}{net} cause: {}",
                    p.from,
                    p.to,
                    c.describe()
                ));
            }
        }
        for i in self.isolation.iter().filter(|i| !i.ok()) {
            let mut what = match &i.error {
                Some(e) => format!("not probed: {e}"),
                None if i.reached.is_empty() => String::new(),
                None => format!("reached over {}", i.reached.join(",")),
            };
            if let (true, Some(q)) = (i.reached.iter().any(|r| r == DNS), &i.dns) {
                what.push_str(&format!(" ({} at {} names it)", q.qname, q.resolver));
            }
            for (proto, why) in &i.unanswered {
                if !what.is_empty() {
                    what.push_str("; ");
                }
                what.push_str(&format!("{proto} not answered: {why}"));
            }
            out.push(format!(
                "{} -> {} at {} (network {}, not shared) should be isolated: {what}",
                i.from, i.to, i.address, i.network
            ));
        }
        out
    }

    /// A lab with only the default network renders as before networks.
    fn only_default(&self) -> bool {
        self.networks.iter().all(|n| n.name == DEFAULT_NETWORK)
            && self.isolation.is_empty()
            && self.skipped.is_empty()
    }

    /// Per network, a table: rows are sources, columns targets; `ok`, or
    /// the initials of the protocols that failed, `-` for a skipped probe.
    /// Then isolation: how many pairs were isolated, and which were not.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let only_default = self.only_default();
        // A sampled matrix is too big to print, and mostly unchecked.
        for n in self.networks.iter().filter(|_| self.sampling.is_none()) {
            if !only_default {
                out.push_str(&format!("network {}\n", n.name));
            }
            out.push_str(&self.table(n));
        }
        let bad = self.pairs.iter().filter(|p| !p.ok()).count();
        if self.policies.is_empty() {
            out.push_str(&format!(
                "{} of {} pairs ok over {} (x: failed; t=tcp u=udp i=icmp r=ip253 n=dns)\n",
                self.pairs.len() - bad,
                self.pairs.len(),
                self.protocols.join(",")
            ));
        } else {
            let denied = self
                .pairs
                .iter()
                .filter(|p| !p.denied_by_policy.is_empty())
                .count();
            out.push_str(&format!(
                "{} of {} pairs as expected over {} (deny: denied by policy; d:: those protocols \
                 denied by policy, the rest ok; x: failed; !: got through though policy denies; \
                 t=tcp u=udp i=icmp r=ip253 n=dns)\n",
                self.pairs.len() - bad,
                self.pairs.len(),
                self.protocols.join(",")
            ));
            out.push_str(&format!(
                "policy: {} in force ({}); {denied} pairs denied over some protocol, as expected\n",
                self.policies.len(),
                self.policies.join(", ")
            ));
        }
        if !self.isolation.is_empty() {
            let breached = self.isolation.iter().filter(|i| !i.ok()).count();
            out.push_str(&format!(
                "isolation: {} of {} probes across networks got nothing through{}\n",
                self.isolation.len() - breached,
                self.isolation.len(),
                if breached > 0 {
                    format!(" ({breached} NOT isolated)")
                } else {
                    String::new()
                }
            ));
        }
        if !self.skipped.is_empty() {
            out.push_str(&format!(
                "skipped: {} probes whose destination is ambiguous with overlapping subnets (-)\n",
                self.skipped.len()
            ));
        }
        if let Some(s) = &self.sampling {
            out.push_str(&s.describe());
            out.push('\n');
        }
        if self.looked_into > 0 {
            out.push_str(&format!(
                "causes: looked for in {} of {} failing pairs ({})\n",
                self.looked_into,
                bad,
                cause::LEGEND
            ));
        }
        out
    }

    fn table(&self, n: &NetworkMatrix) -> String {
        let w = n.targets.iter().map(String::len).max().unwrap_or(2).max(6) + 2;
        let lw = n.sources.iter().map(String::len).max().unwrap_or(4).max(4) + 2;
        let mut out = format!("{:lw$}", "from\\to");
        for t in &n.targets {
            out.push_str(&format!("{t:>w$}"));
        }
        out.push('\n');
        for s in &n.sources {
            out.push_str(&format!("{s:lw$}"));
            for t in &n.targets {
                let pair = self
                    .pairs
                    .iter()
                    .find(|p| p.network == n.name && &p.from == s && &p.to == t);
                let skipped = self
                    .skipped
                    .iter()
                    .any(|p| p.network == n.name && &p.from == s && &p.to == t);
                let cell = match pair {
                    None if skipped => "-".to_string(),
                    None => "·".to_string(),
                    Some(p) => cell(p, self.protocols.iter().filter(|p| *p != DNS).count()),
                };
                out.push_str(&format!("{cell:>w$}"));
            }
            out.push('\n');
        }
        out
    }
}

/// A pair's cell: `ok`; `deny` when policies deny every protocol and
/// nothing got through; `d:tu` when they deny those only; else what went
/// wrong: `x:` protocols that failed, `!:` protocols that got through
/// though denied.
fn cell(p: &PairResult, protocols: usize) -> String {
    let initials = |v: &mut dyn Iterator<Item = &String>| v.map(|s| initial(s)).collect::<String>();
    if !p.ok() {
        let mut c = String::new();
        if !p.failed.is_empty() {
            c.push_str(&format!(
                "{}:{}",
                p.cause.as_ref().map_or('x', Cause::letter),
                initials(&mut p.failed.iter().map(|(pr, _)| pr))
            ));
        }
        if !p.reached_despite_policy.is_empty() {
            c.push_str(&format!(
                "!:{}",
                initials(&mut p.reached_despite_policy.iter())
            ));
        }
        return c;
    }
    match p.denied_by_policy.len() {
        0 => "ok".to_string(),
        n if n == protocols => "deny".to_string(),
        _ => format!("d:{}", initials(&mut p.denied_by_policy.iter())),
    }
}

fn initial(proto: &str) -> char {
    match proto {
        "ip253" => 'r',
        "icmp" => 'i',
        DNS => 'n',
        p => p.chars().next().unwrap_or('?'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(label: &str, nets: &[(&str, &str)]) -> Member {
        Member {
            label: label.into(),
            ns: format!("lab-{}", label.replace('/', "-")),
            addresses: nets
                .iter()
                .map(|(n, a)| (n.to_string(), a.parse().unwrap()))
                .collect(),
            host: label.split('/').next().unwrap().into(),
            namespace: "default".into(),
            labels: BTreeMap::new(),
            ports: BTreeMap::new(),
            name: label.split('/').nth(1).unwrap().into(),
            dns: BTreeMap::new(),
        }
    }

    fn subnets() -> Vec<(String, IpNet)> {
        [
            ("default", "10.244.0.0/16"),
            ("red", "10.50.0.0/16"),
            ("blue", "10.50.0.0/16"),
        ]
        .iter()
        .map(|(n, s)| (n.to_string(), s.parse().unwrap()))
        .collect()
    }

    fn host(label: &str, a: &str) -> Endpoint {
        Endpoint {
            label: label.into(),
            ns: format!("lab-{label}"),
            address: a.parse().unwrap(),
        }
    }

    fn probes(p: &CheckPlan, expect: Expect) -> Vec<String> {
        let mut v: Vec<String> = p
            .probes
            .iter()
            .filter(|x| x.expect == expect)
            .map(|x| format!("{} {}>{} {}", x.network, x.from, x.to, x.address))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn default_only_is_the_matrix_of_before() {
        let m = [
            member("h1/c1", &[("default", "10.244.0.2")]),
            member("h2/c1", &[("default", "10.244.1.2")]),
        ];
        let p = plan(&m, &[host("h1", "192.168.56.11")], &subnets());
        assert_eq!(
            p.networks,
            [NetworkMatrix {
                name: "default".into(),
                sources: vec!["h1/c1".into(), "h2/c1".into()],
                targets: vec!["h1/c1".into(), "h2/c1".into(), "h1".into()],
            }]
        );
        assert_eq!(
            probes(&p, Expect::Reach),
            [
                "default h1/c1>h1 192.168.56.11",
                "default h1/c1>h2/c1 10.244.1.2",
                "default h2/c1>h1 192.168.56.11",
                "default h2/c1>h1/c1 10.244.0.2",
            ]
        );
        assert!(probes(&p, Expect::Isolated).is_empty());
        assert!(p.skipped.is_empty());
        // The probes of a source run in its namespace.
        assert!(p
            .probes
            .iter()
            .all(|x| x.ns == format!("lab-{}", x.from.replace('/', "-"))));
    }

    #[test]
    fn networks_reach_within_and_isolate_across() {
        let m = [
            member("h1/r", &[("red", "10.50.0.1")]),
            member("h2/r", &[("red", "10.50.1.1")]),
            member("h1/b", &[("blue", "10.50.0.2")]),
            member("h1/d", &[("default", "10.244.0.2")]),
        ];
        let p = plan(&m, &[host("h1", "192.168.56.11")], &subnets());
        let nets: Vec<&str> = p.networks.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(nets, ["default", "red", "blue"]);
        // Hosts are targets of the default network only.
        assert_eq!(p.networks[1].targets, ["h1/r", "h2/r"]);
        assert_eq!(
            probes(&p, Expect::Reach),
            [
                "default h1/d>h1 192.168.56.11",
                "red h1/r>h2/r 10.50.1.1",
                "red h2/r>h1/r 10.50.0.1",
            ]
        );
        assert_eq!(
            probes(&p, Expect::Isolated),
            [
                "blue h1/r>h1/b 10.50.0.2",
                "blue h2/r>h1/b 10.50.0.2",
                "default h1/b>h1/d 10.244.0.2",
                "default h1/r>h1/d 10.244.0.2",
                "default h2/r>h1/d 10.244.0.2",
                "red h1/b>h1/r 10.50.0.1",
                "red h1/b>h2/r 10.50.1.1",
                "red h1/d>h1/r 10.50.0.1",
                "red h1/d>h2/r 10.50.1.1",
                "blue h1/d>h1/b 10.50.0.2",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
        );
    }

    #[test]
    fn an_address_also_held_in_the_sources_network_is_not_an_isolation_probe() {
        // red and blue overlap: blue's h2/b holds 10.50.0.1 as red's h1/r does.
        let m = [
            member("h1/r", &[("red", "10.50.0.1")]),
            member("h2/r", &[("red", "10.50.1.1")]),
            member("h2/b", &[("blue", "10.50.0.1")]),
        ];
        let p = plan(&m, &[], &subnets());
        assert_eq!(
            probes(&p, Expect::Isolated),
            ["red h2/b>h2/r 10.50.1.1"],
            "h2/r -> h2/b at 10.50.0.1 would reach h1/r, legitimately; h2/b -> h1/r likewise; \
             h1/r -> h2/b at 10.50.0.1 is h1/r itself"
        );
        let skipped: Vec<(&str, &str)> = p
            .skipped
            .iter()
            .map(|s| (s.from.as_str(), s.to.as_str()))
            .collect();
        assert_eq!(
            skipped,
            [("h1/r", "h2/b"), ("h2/r", "h2/b"), ("h2/b", "h1/r")]
        );
        assert!(p.skipped[0].why.contains("also held"));
    }

    #[test]
    fn sharing_any_network_means_no_isolation_probe_and_overlaps_make_sources_ambiguous() {
        let m = [
            member("h1/rb", &[("red", "10.50.0.4"), ("blue", "10.50.0.9")]),
            member("h2/r", &[("red", "10.50.1.1")]),
            member("h2/b", &[("blue", "10.50.1.2")]),
            member("h2/dr", &[("default", "10.244.1.3"), ("red", "10.50.1.3")]),
        ];
        let p = plan(&m, &[host("h2", "192.168.56.12")], &subnets());
        // h1/rb shares red or blue with everyone: no isolation probes from
        // or to it. h2/b shares nothing with h2/r or h2/dr: each tries the
        // other's every address.
        assert_eq!(
            probes(&p, Expect::Isolated),
            [
                "blue h2/dr>h2/b 10.50.1.2",
                "blue h2/r>h2/b 10.50.1.2",
                "default h2/b>h2/dr 10.244.1.3",
                "red h2/b>h2/dr 10.50.1.3",
                "red h2/b>h2/r 10.50.1.1"
            ]
        );
        // h1/rb cannot say which of its networks 10.50.x.y is in.
        assert!(p.probes.iter().all(|x| x.from != "h1/rb"));
        assert_eq!(p.skipped.len(), 3);
        assert!(p
            .skipped
            .iter()
            .all(|s| s.from == "h1/rb" && s.why.contains("subnet")));
        // A source on default and red is not ambiguous: they do not overlap.
        assert!(probes(&p, Expect::Reach).contains(&"red h2/dr>h1/rb 10.50.0.4".to_string()));
        assert!(probes(&p, Expect::Reach).contains(&"default h2/dr>h2 192.168.56.12".to_string()));
        // Every target is reached at its own address in each network.
        assert!(probes(&p, Expect::Reach).contains(&"blue h2/b>h1/rb 10.50.0.9".to_string()));
        assert!(probes(&p, Expect::Reach).contains(&"red h2/r>h1/rb 10.50.0.4".to_string()));
    }

    fn named(label: &str, nets: &[(&str, &str, &str)]) -> Member {
        let mut m = member(
            label,
            &nets.iter().map(|(n, a, _)| (*n, *a)).collect::<Vec<_>>(),
        );
        m.namespace = label.split('/').next().unwrap().into();
        m.dns = nets
            .iter()
            .map(|(n, _, r)| {
                (
                    n.to_string(),
                    NameService {
                        resolver: r.parse().unwrap(),
                        domain: "muslin.internal".into(),
                    },
                )
            })
            .collect();
        m
    }

    #[test]
    fn names_are_resolved_at_the_resolver_of_the_shared_network_and_not_across() {
        let m = [
            named(
                "h1/rd",
                &[
                    ("red", "10.50.0.4", "169.254.53.2"),
                    ("default", "10.244.0.4", "169.254.53.1"),
                ],
            ),
            named("h2/r", &[("red", "10.50.1.1", "169.254.53.2")]),
            named("h2/d", &[("default", "10.244.1.2", "169.254.53.1")]),
            named("h3/g", &[("green", "10.60.0.2", "169.254.53.4")]),
        ];
        let p = plan(&m, &[host("h1", "192.168.56.11")], &subnets());
        let q = |from: &str, to: &str, net: &str| {
            p.probes
                .iter()
                .find(|x| x.from == from && x.to == to && x.network == net)
                .unwrap_or_else(|| panic!("{from}>{to} {net}"))
                .dns
                .clone()
                .map(|d| format!("{} @{}", d.qname, d.resolver))
        };
        // Within a network: the source's resolver there.
        assert_eq!(
            q("h2/r", "h1/rd", "red").unwrap(),
            "rd.h1.muslin.internal @169.254.53.2"
        );
        assert_eq!(
            q("h1/rd", "h2/r", "red").unwrap(),
            "r.h2.muslin.internal @169.254.53.2"
        );
        assert_eq!(
            q("h1/rd", "h2/d", "default").unwrap(),
            "d.h2.muslin.internal @169.254.53.1"
        );
        assert_eq!(
            q("h2/d", "h1/rd", "default").unwrap(),
            "rd.h1.muslin.internal @169.254.53.1"
        );
        // Hosts have no names.
        assert_eq!(q("h2/d", "h1", "default"), None);
        // Across: the source's resolv.conf (its first attachment's).
        assert_eq!(
            q("h2/r", "h2/d", "default").unwrap(),
            "d.h2.muslin.internal @169.254.53.2"
        );
        assert_eq!(
            q("h3/g", "h2/d", "default").unwrap(),
            "d.h2.muslin.internal @169.254.53.4"
        );
        assert_eq!(
            q("h2/d", "h3/g", "green").unwrap(),
            "g.h3.muslin.internal @169.254.53.1"
        );
        // A source without a name service asks nothing.
        let mut m2 = m.to_vec();
        m2[1].dns.clear();
        let p = plan(&m2, &[], &subnets());
        assert!(p
            .probes
            .iter()
            .filter(|x| x.from == "h2/r")
            .all(|x| x.dns.is_none()));
        assert!(p
            .probes
            .iter()
            .filter(|x| x.to == "h2/r")
            .all(|x| x.dns.is_some()));
    }

    #[test]
    fn a_name_that_does_not_resolve_fails_the_pair_and_one_that_leaks_breaks_isolation() {
        let probe = |expect| Probe {
            from: "h1/a".into(),
            ns: "lab-h1-a".into(),
            to: "h2/b".into(),
            network: "default".into(),
            address: "10.244.1.2".parse().unwrap(),
            expect,
            denied: vec![],
            dns: Some(DnsProbe {
                resolver: "169.254.53.1".parse().unwrap(),
                qname: "b.h2.muslin.internal".into(),
            }),
        };
        let probed = |failed: &[(&str, &str)], reached: &[&str], unanswered: &[(&str, &str)]| {
            let v = |l: &[(&str, &str)]| {
                l.iter()
                    .map(|(p, w)| (p.to_string(), w.to_string()))
                    .collect::<Vec<_>>()
            };
            Outcome::Probed(Probed {
                failed: v(failed),
                reached: reached.iter().map(|p| p.to_string()).collect(),
                unanswered: v(unanswered),
            })
        };
        let protos = [Proto::Tcp];
        let r = judge(
            &probe(Expect::Reach),
            probed(&[], &["tcp", "dns"], &[]),
            &protos,
            true,
        );
        assert!(r.ok() && r.dns.is_some());
        assert_eq!(cell(&r, 1), "ok");
        let r = judge(
            &probe(Expect::Reach),
            probed(&[("dns", "NXDOMAIN no address")], &["tcp"], &[]),
            &protos,
            true,
        );
        assert!(!r.ok());
        assert_eq!(cell(&r, 1), "x:n");
        let r = judge(
            &probe(Expect::Reach),
            probed(
                &[],
                &["tcp"],
                &[("dns", "b.h2.muslin.internal at 169.254.53.1: no answer")],
            ),
            &protos,
            true,
        );
        assert_eq!(cell(&r, 1), "x:n");
        // Not entered: dns failed too, when checked.
        let r = judge(
            &probe(Expect::Reach),
            Outcome::NoEntry("gone".into()),
            &protos,
            true,
        );
        assert_eq!(r.failed.len(), 2);
        let r = judge(
            &probe(Expect::Reach),
            Outcome::NoEntry("gone".into()),
            &protos,
            false,
        );
        assert_eq!(r.failed.len(), 1);
        assert!(r.dns.is_none());

        // Isolation: a name resolving to the address is a breach; a silent
        // resolver is a failure; NXDOMAIN is the pass.
        let mut m = Matrix {
            protocols: vec!["dns".into()],
            networks: vec![],
            pairs: vec![],
            isolation: vec![IsolationResult {
                from: "h1/a".into(),
                to: "h2/b".into(),
                network: "default".into(),
                address: "10.244.1.2".parse().unwrap(),
                reached: vec![],
                error: None,
                dns: probe(Expect::Isolated).dns,
                unanswered: vec![],
            }],
            skipped: vec![],
            policies: vec![],
            sampling: None,
            looked_into: 0,
        };
        assert!(m.ok(), "NXDOMAIN, or an answer without the address");
        m.isolation[0].reached = vec!["dns".into()];
        assert!(!m.ok());
        assert!(
            m.problems()[0]
                .contains("reached over dns (b.h2.muslin.internal at 169.254.53.1 names it)"),
            "{:?}",
            m.problems()
        );
        m.isolation[0].reached.clear();
        m.isolation[0].unanswered = vec![("dns".into(), "no answer within 1000 ms".into())];
        assert!(!m.ok());
        assert!(
            m.problems()[0].contains("h1/a -> h2/b")
                && m.problems()[0].contains("dns not answered: no answer"),
            "{:?}",
            m.problems()
        );
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["isolation"][0]["dns"]["qname"], "b.h2.muslin.internal");
        assert_eq!(v["isolation"][0]["unanswered"][0][0], "dns");
    }

    fn shop() -> (Vec<Member>, Vec<Endpoint>, PolicySet) {
        let labelled = |label: &str, ns: &str, kv: &[(&str, &str)], a: &str| {
            let mut m = member(label, &[("default", a)]);
            m.namespace = ns.into();
            m.labels.insert(
                "default".into(),
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            );
            m
        };
        let members = vec![
            labelled("h1/web", "shop", &[("app", "web")], "10.244.0.2"),
            labelled("h2/db", "shop", &[("app", "db")], "10.244.1.2"),
            labelled("h2/intruder", "other", &[], "10.244.1.3"),
        ];
        let policies = muslin_model::policy::parse_document(
            r#"
[[policy]]
name = "db"
namespace = "shop"
podSelector = { matchLabels = { app = "db" } }
ingress = [{ from = [{ podSelector = { matchLabels = { app = "web" } } }], ports = [{ port = 7777 }] }]
[[policy]]
name = "out"
namespace = "other"
podSelector = {}
policyTypes = ["Egress"]
"#,
            muslin_model::policy::Format::Toml,
        )
        .unwrap();
        let set = PolicySet {
            policies,
            namespaces: BTreeMap::new(),
        };
        (members, vec![host("h2", "192.168.56.12")], set)
    }

    fn denied(p: &CheckPlan) -> Vec<String> {
        let mut v: Vec<String> = p
            .probes
            .iter()
            .filter(|x| !x.denied.is_empty())
            .map(|x| {
                let d: Vec<&str> = x.denied.iter().map(|d| d.name()).collect();
                format!("{}>{} {}", x.from, x.to, d.join(","))
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn policies_mark_the_protocols_each_pair_must_not_get_through() {
        let (members, hosts, set) = shop();
        let protos = [Proto::Tcp, Proto::Udp, Proto::Icmp];
        let mut p = plan(&members, &hosts, &subnets());
        let before = p.clone();
        check_expectations(&mut p, &members, &hosts, &set, &protos);
        assert_eq!(
            denied(&p),
            [
                // Egress-isolated with no rule: nowhere but its own host.
                "h2/intruder>h1/web tcp,udp,icmp",
                "h2/intruder>h2/db tcp,udp,icmp",
                "h1/web>h2/db udp,icmp",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
        );
        // The same probes, only their expectations differ; none to the
        // intruder's own host is denied, while another host is.
        assert_eq!(p.probes.len(), before.probes.len());
        assert!(p
            .probes
            .iter()
            .all(|x| x.from != "h2/intruder" || x.to != "h2" || x.denied.is_empty()));
        // No policies: the plan of before.
        let mut q = before.clone();
        check_expectations(&mut q, &members, &hosts, &PolicySet::default(), &protos);
        assert_eq!(q, before);
    }

    fn check_expectations(
        p: &mut CheckPlan,
        members: &[Member],
        hosts: &[Endpoint],
        set: &PolicySet,
        protos: &[Proto],
    ) {
        expect_policies(p, members, hosts, set, protos, 7777);
    }

    #[test]
    fn a_pair_is_judged_against_its_expectation_in_both_directions() {
        let probe = Probe {
            from: "h1/web".into(),
            ns: "lab-h1-web".into(),
            to: "h2/db".into(),
            network: "default".into(),
            address: "10.244.1.2".parse().unwrap(),
            expect: Expect::Reach,
            denied: vec![Proto::Udp, Proto::Icmp],
            dns: None,
        };
        let protos = [Proto::Tcp, Proto::Udp, Proto::Icmp];
        let outcome = |failed: &[&str], reached: &[&str]| {
            Outcome::Probed(Probed {
                failed: failed
                    .iter()
                    .map(|p| (p.to_string(), "timed out".to_string()))
                    .collect(),
                reached: reached.iter().map(|p| p.to_string()).collect(),
                unanswered: vec![],
            })
        };
        // As expected: tcp through, udp and icmp denied.
        let r = judge(&probe, outcome(&["udp", "icmp"], &["tcp"]), &protos, false);
        assert!(r.ok());
        assert_eq!(r.denied_by_policy, ["udp", "icmp"]);
        assert_eq!(cell(&r, 3), "d:ui");
        // An allowed protocol that fails, and a denied one that gets through.
        let r = judge(&probe, outcome(&["tcp", "icmp"], &["udp"]), &protos, false);
        assert!(!r.ok());
        assert_eq!(r.failed, [("tcp".to_string(), "timed out".to_string())]);
        assert_eq!(r.reached_despite_policy, ["udp"]);
        assert_eq!(r.denied_by_policy, ["icmp"]);
        assert_eq!(cell(&r, 3), "x:t!:u");
        // Everything denied and nothing through.
        let all = Probe {
            denied: protos.to_vec(),
            ..probe.clone()
        };
        let r = judge(&all, outcome(&["tcp", "udp", "icmp"], &[]), &protos, false);
        assert!(r.ok());
        assert_eq!(cell(&r, 3), "deny");
        // A source that cannot be entered proves nothing: failures all.
        let r = judge(
            &all,
            Outcome::NoEntry("cannot enter".into()),
            &protos,
            false,
        );
        assert!(!r.ok() && r.failed.len() == 3 && r.denied_by_policy.is_empty());
    }

    #[test]
    fn render_with_policies_shows_denied_pairs_apart_from_failures() {
        let mut m = matrix();
        m.pairs[0].denied_by_policy = vec!["tcp".into(), "icmp".into()];
        m.pairs[2].reached_despite_policy = vec!["icmp".into()];
        m.policies = vec!["shop:db".into(), "guard".into()];
        let r = m.render();
        assert!(r.contains("deny"), "{r}");
        assert!(r.contains("!:i"), "{r}");
        assert!(r.contains("1 of 3 pairs as expected over tcp,icmp"), "{r}");
        assert!(
            r.contains("policy: 2 in force (shop:db, guard); 1 pairs denied over some protocol, as expected"),
            "{r}"
        );
        let problems = m.problems();
        assert!(
            problems.contains(
                &"h1/b -> h1/rb (network blue) icmp: got through, but policy denies it".to_string()
            ),
            "{problems:?}"
        );
        assert_eq!(m.failures(), 3);
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(
            v["pairs"][0]["denied_by_policy"],
            serde_json::json!(["tcp", "icmp"])
        );
        assert_eq!(
            v["pairs"][2]["reached_despite_policy"],
            serde_json::json!(["icmp"])
        );
        assert!(v["pairs"][1].get("denied_by_policy").is_none());
        assert_eq!(v["policies"], serde_json::json!(["shop:db", "guard"]));
    }

    fn matrix() -> Matrix {
        let pair = |n: &str, f: &str, t: &str, failed: &[&str]| PairResult {
            network: n.into(),
            from: f.into(),
            to: t.into(),
            failed: failed
                .iter()
                .map(|p| (p.to_string(), "timed out".to_string()))
                .collect(),
            denied_by_policy: vec![],
            reached_despite_policy: vec![],
            dns: None,
            cause: None,
        };
        Matrix {
            protocols: vec!["tcp".into(), "icmp".into()],
            networks: vec![
                NetworkMatrix {
                    name: "red".into(),
                    sources: vec!["h1/r".into(), "h2/r".into()],
                    targets: vec!["h1/r".into(), "h2/r".into()],
                },
                NetworkMatrix {
                    name: "blue".into(),
                    sources: vec!["h1/b".into(), "h1/rb".into()],
                    targets: vec!["h1/b".into(), "h1/rb".into()],
                },
            ],
            pairs: vec![
                pair("red", "h1/r", "h2/r", &[]),
                pair("red", "h2/r", "h1/r", &["icmp"]),
                pair("blue", "h1/b", "h1/rb", &[]),
            ],
            isolation: vec![
                IsolationResult {
                    from: "h1/r".into(),
                    to: "h1/b".into(),
                    network: "blue".into(),
                    address: "10.50.0.2".parse().unwrap(),
                    reached: vec![],
                    error: None,
                    dns: None,
                    unanswered: vec![],
                },
                IsolationResult {
                    from: "h1/b".into(),
                    to: "h1/r".into(),
                    network: "red".into(),
                    address: "10.50.0.1".parse().unwrap(),
                    reached: vec!["icmp".into()],
                    error: None,
                    dns: None,
                    unanswered: vec![],
                },
            ],
            skipped: vec![Skipped {
                from: "h1/rb".into(),
                to: "h1/b".into(),
                network: "blue".into(),
                address: "10.50.0.2".parse().unwrap(),
                why: "ambiguous".into(),
            }],
            policies: vec![],
            sampling: None,
            looked_into: 0,
        }
    }

    #[test]
    fn a_breach_of_isolation_is_a_failure() {
        let mut m = matrix();
        assert!(!m.ok());
        assert_eq!(m.failures(), 2);
        let problems = m.problems();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0], "h2/r -> h1/r (network red) icmp: timed out");
        assert!(problems[1].contains("h1/b -> h1/r at 10.50.0.1 (network red, not shared) should be isolated: reached over icmp"));
        m.pairs.retain(|p| p.failed.is_empty());
        m.isolation[1].reached.clear();
        assert!(m.ok());
        // A probe that could not be made proves nothing: a failure too.
        m.isolation[0].error = Some("cannot enter lab-h1-r".into());
        assert!(!m.ok());
    }

    #[test]
    fn render_has_a_table_per_network_and_an_isolation_line() {
        let r = matrix().render();
        assert!(r.starts_with("network red\n"), "{r}");
        assert!(r.contains("network blue\n"), "{r}");
        assert!(r.contains("x:i"), "{r}");
        assert!(r.contains("2 of 3 pairs ok over tcp,icmp"), "{r}");
        assert!(
            r.contains(
                "isolation: 1 of 2 probes across networks got nothing through (1 NOT isolated)"
            ),
            "{r}"
        );
        assert!(r.contains("skipped: 1 probes"), "{r}");
        // The skipped cell is '-', the diagonal '·'.
        let blue_row = r.lines().find(|l| l.starts_with("h1/rb")).unwrap();
        assert!(
            blue_row.contains('-') && blue_row.contains('·'),
            "{blue_row}"
        );
    }

    #[test]
    fn render_of_a_default_only_lab_is_as_before() {
        let m = Matrix {
            protocols: vec!["tcp".into()],
            networks: vec![NetworkMatrix {
                name: "default".into(),
                sources: vec!["h1/c1".into()],
                targets: vec!["h1/c1".into(), "h1".into()],
            }],
            pairs: vec![PairResult {
                network: "default".into(),
                from: "h1/c1".into(),
                to: "h1".into(),
                failed: vec![],
                denied_by_policy: vec![],
                reached_despite_policy: vec![],
                dns: None,
                cause: None,
            }],
            isolation: vec![],
            skipped: vec![],
            policies: vec![],
            sampling: None,
            looked_into: 0,
        };
        assert_eq!(
            m.render(),
            "from\\to   h1/c1      h1\n\
             h1/c1         ·      ok\n\
             1 of 1 pairs ok over tcp (x: failed; t=tcp u=udp i=icmp r=ip253 n=dns)\n"
        );
        assert_eq!(m.problems(), Vec::<String>::new());
    }
}
