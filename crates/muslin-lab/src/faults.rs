//! Faults injected into a running lab: cuts of the underlay between two
//! hosts (`lab block` / `lab unblock`) and hosts that die (`lab kill`).
//!
//! A cut is a pair of drop rules per direction in the switch namespace, in a
//! table of its own (`bridge muslinlab_cuts`), so the topology's static
//! `[[blocked]]` pairs (`bridge muslinlab`) are never touched. Each rule
//! carries a comment naming its cut: the rules themselves are the record,
//! so a cut survives nothing but the lab, and `unblock` finds exactly the
//! rules `block` made.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde::Serialize;

use crate::plan::{LabPlan, NodePlan};
use crate::registry;
use crate::sys;
use crate::LabError;

/// The runtime cuts' table in the switch namespace.
pub const CUTS_TABLE: &str = "muslinlab_cuts";
/// Before the static blocks' chain (priority 0); either drop wins anyway,
/// the order only makes `nft list ruleset` read in the order of events.
const CUTS_PRIORITY: i32 = -10;
const COMMENT_PREFIX: &str = "cut ";

/// Traffic between two hosts that the switch drops: all of it, or only
/// UDP to one destination port (a VXLAN port, say, while gossip flows).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Cut {
    pub a: String,
    pub b: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udp_port: Option<u16>,
}

impl Cut {
    /// A cut is symmetric: `h3 h1` is the same cut as `h1 h3`.
    pub fn new(a: &str, b: &str, udp_port: Option<u16>) -> Cut {
        let (a, b) = if a <= b { (a, b) } else { (b, a) };
        Cut {
            a: a.to_string(),
            b: b.to_string(),
            udp_port,
        }
    }

    /// What every rule of this cut says in its comment before `: A>B`.
    fn key(&self) -> String {
        match self.udp_port {
            Some(p) => format!("{COMMENT_PREFIX}{} {} udp {p}", self.a, self.b),
            None => format!("{COMMENT_PREFIX}{} {}", self.a, self.b),
        }
    }

    fn comment(&self, from: &str, to: &str) -> String {
        format!("{}: {from}>{to}", self.key())
    }

    /// Reads a cut back from one of its rules' comments.
    fn from_comment(comment: &str) -> Option<Cut> {
        let (key, _direction) = comment.strip_prefix(COMMENT_PREFIX)?.split_once(": ")?;
        let words: Vec<&str> = key.split(' ').collect();
        match words.as_slice() {
            [a, b] => Some(Cut::new(a, b, None)),
            [a, b, "udp", p] => Some(Cut::new(a, b, Some(p.parse().ok()?))),
            _ => None,
        }
    }

    pub fn describe(&self) -> String {
        match self.udp_port {
            Some(p) => format!("{} <-> {}, UDP to port {p}", self.a, self.b),
            None => format!("{} <-> {}, all traffic", self.a, self.b),
        }
    }
}

/// What `block` or `unblock` did.
#[derive(Debug, Serialize)]
pub struct CutReport {
    pub lab: String,
    pub cut: Cut,
    /// False when the lab already was as asked (blocked twice, or
    /// unblocked where nothing was blocked).
    pub changed: bool,
    /// The underlay addresses matched, per host.
    pub addresses: Vec<(String, Vec<IpAddr>)>,
}

impl CutReport {
    pub fn render(&self, blocked: bool) -> String {
        let verb = match (blocked, self.changed) {
            (true, true) => "blocked",
            (true, false) => "already blocked",
            (false, true) => "unblocked",
            (false, false) => "was not blocked",
        };
        let mut out = format!("lab {}: {verb}: {}\n", self.lab, self.cut.describe());
        if blocked {
            for (host, addrs) in &self.addresses {
                let shown: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
                out.push_str(&format!("  {host}: {}\n", shown.join(", ")));
            }
        }
        out
    }
}

/// A host of the lab by name, or an error that lists the lab's hosts.
fn node<'a>(plan: &'a LabPlan, name: &str) -> Result<&'a NodePlan, LabError> {
    plan.nodes.iter().find(|n| n.name == name).ok_or_else(|| {
        let known: Vec<&str> = plan.nodes.iter().map(|n| n.name.as_str()).collect();
        LabError::Usage(format!(
            "lab {} has no host {name:?}; its hosts and routers: {}",
            plan.name,
            known.join(", ")
        ))
    })
}

/// A host's underlay addresses other hosts can reach it at. Addresses on a
/// per-host segment are left out: every host has the same one there (a
/// hypervisor's NAT network), so matching it would cut third hosts too.
fn reachable_addresses(n: &NodePlan) -> Vec<IpAddr> {
    n.nics
        .iter()
        .filter(|nic| !nic.per_host)
        .map(|nic| nic.address.addr())
        .collect()
}

/// An nft set (or a single element) of quoted or bare items.
fn nft_set(items: &[String]) -> String {
    match items {
        [one] => one.clone(),
        many => format!("{{ {} }}", many.join(", ")),
    }
}

/// The rule bodies of one direction of a cut. Two rules, because no single
/// match sees every packet between two hosts:
/// - by switch port, for hosts on a common segment: a routed data path
///   carries the pods' own addresses, not the hosts';
/// - by address, for hosts that reach each other through a router, where
///   the frames carry the router's port, not the destination's.
fn direction_rules(from: &NodePlan, to: &NodePlan, udp_port: Option<u16>) -> Vec<String> {
    let only = udp_port
        .map(|p| format!(" udp dport {p}"))
        .unwrap_or_default();
    let mut rules = Vec::new();
    let shared = |f: &&crate::plan::NicPlan| to.nics.iter().any(|t| t.bridge == f.bridge);
    let from_ports: Vec<String> = from
        .nics
        .iter()
        .filter(shared)
        .map(|n| format!("\"{}\"", n.port))
        .collect();
    if !from_ports.is_empty() {
        let to_ports: Vec<String> = to
            .nics
            .iter()
            .filter(|t| from.nics.iter().any(|f| f.bridge == t.bridge))
            .map(|n| format!("\"{}\"", n.port))
            .collect();
        rules.push(format!(
            "iifname {} oifname {}{only}",
            nft_set(&from_ports),
            nft_set(&to_ports)
        ));
    }
    for (family, v4) in [("ip", true), ("ip6", false)] {
        let pick = |n: &NodePlan| -> Vec<String> {
            reachable_addresses(n)
                .into_iter()
                .filter(|a| a.is_ipv4() == v4)
                .map(|a| a.to_string())
                .collect()
        };
        let (src, dst) = (pick(from), pick(to));
        if !src.is_empty() && !dst.is_empty() {
            rules.push(format!(
                "{family} saddr {} {family} daddr {}{only}",
                nft_set(&src),
                nft_set(&dst)
            ));
        }
    }
    rules
}

/// Every rule of a cut as `nft -f` lines, each commented with its cut.
fn cut_lines(plan: &LabPlan, cut: &Cut) -> Result<Vec<String>, LabError> {
    let (a, b) = (node(plan, &cut.a)?, node(plan, &cut.b)?);
    if a.name == b.name {
        return Err(LabError::Usage(format!(
            "a cut needs two different hosts, not {} twice",
            a.name
        )));
    }
    let mut lines = Vec::new();
    for (from, to) in [(a, b), (b, a)] {
        for rule in direction_rules(from, to, cut.udp_port) {
            lines.push(format!(
                "add rule bridge {CUTS_TABLE} forward {rule} counter drop comment \"{}\"",
                cut.comment(&from.name, &to.name)
            ));
        }
    }
    Ok(lines)
}

/// The cut rules in the switch namespace: (handle, comment).
fn cut_rules(plan: &LabPlan) -> Result<Vec<(u64, String)>, LabError> {
    // Listing the family never fails for want of our table, unlike
    // listing the table itself.
    let out = sys::in_ns(&plan.switch_ns, &["nft", "-j", "list", "ruleset", "bridge"])?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| LabError::Command {
        cmd: "nft -j list ruleset bridge".into(),
        stderr: format!("unreadable output: {e}"),
    })?;
    Ok(v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| {
            let r = item.get("rule")?;
            (r["table"] == CUTS_TABLE).then_some(())?;
            Some((r["handle"].as_u64()?, r["comment"].as_str()?.to_string()))
        })
        .collect())
}

/// The cuts in force in a lab, each once.
pub fn cuts(plan: &LabPlan) -> Result<Vec<Cut>, LabError> {
    let set: BTreeSet<Cut> = cut_rules(plan)?
        .iter()
        .filter_map(|(_, c)| Cut::from_comment(c))
        .collect();
    Ok(set.into_iter().collect())
}

fn handles_of(rules: &[(u64, String)], cut: &Cut) -> Vec<u64> {
    rules
        .iter()
        .filter(|(_, c)| Cut::from_comment(c).as_ref() == Some(cut))
        .map(|(h, _)| *h)
        .collect()
}

fn delete_lines(handles: &[u64]) -> Vec<String> {
    handles
        .iter()
        .map(|h| format!("delete rule bridge {CUTS_TABLE} forward handle {h}"))
        .collect()
}

fn nft_apply(plan: &LabPlan, lines: &[String]) -> Result<(), LabError> {
    sys::in_ns_input(
        &plan.switch_ns,
        &["nft", "-f", "-"],
        &(lines.join("\n") + "\n"),
    )
    .map(|_| ())
}

fn report(plan: &LabPlan, cut: Cut, changed: bool) -> CutReport {
    let addresses = [&cut.a, &cut.b]
        .into_iter()
        .filter_map(|h| plan.nodes.iter().find(|n| &n.name == h))
        .map(|n| (n.name.clone(), reachable_addresses(n)))
        .collect();
    CutReport {
        lab: plan.name.clone(),
        cut,
        changed,
        addresses,
    }
}

/// `lab block`: drops the traffic of `cut` on the lab's switches, in both
/// directions. Blocking twice leaves one cut.
pub fn block(name: Option<&str>, cut: Cut) -> Result<CutReport, LabError> {
    let lab = registry::pick(name)?;
    let lock = registry::lock(&lab)?;
    let plan = lock.load()?.plan;
    let wanted = cut_lines(&plan, &cut)?;
    if wanted.is_empty() {
        return Err(LabError::Usage(format!(
            "{} share no segment and no address family: there is nothing between them to cut",
            cut.describe()
        )));
    }
    let present = handles_of(&cut_rules(&plan)?, &cut);
    if present.len() == wanted.len() {
        return Ok(report(&plan, cut, false));
    }
    // A partial cut (someone deleted a rule by hand) is made whole in the
    // same transaction that removes what is left of it.
    let mut lines = vec![
        format!("add table bridge {CUTS_TABLE}"),
        format!(
            "add chain bridge {CUTS_TABLE} forward {{ type filter hook forward priority {CUTS_PRIORITY}; policy accept; }}"
        ),
    ];
    lines.extend(delete_lines(&present));
    lines.extend(wanted);
    nft_apply(&plan, &lines)?;
    Ok(report(&plan, cut, true))
}

/// `lab unblock`: removes exactly the rules of `cut`; nothing to remove is
/// fine.
pub fn unblock(name: Option<&str>, cut: Cut) -> Result<CutReport, LabError> {
    let lab = registry::pick(name)?;
    let lock = registry::lock(&lab)?;
    let plan = lock.load()?.plan;
    // Validates the hosts, so a typo is an error rather than a no-op.
    cut_lines(&plan, &cut)?;
    let present = handles_of(&cut_rules(&plan)?, &cut);
    if present.is_empty() {
        return Ok(report(&plan, cut, false));
    }
    nft_apply(&plan, &delete_lines(&present))?;
    Ok(report(&plan, cut, true))
}

/// What `kill` did.
#[derive(Debug, Serialize)]
pub struct KillReport {
    pub lab: String,
    pub host: String,
    /// Processes killed: (pid, command line).
    pub killed: Vec<(i32, String)>,
    /// NICs set down.
    pub nics: Vec<String>,
}

impl KillReport {
    pub fn render(&self) -> String {
        let mut out = format!("lab {}: {} is dead\n", self.lab, self.host);
        if self.killed.is_empty() {
            out.push_str("  no process was running there\n");
        }
        for (pid, cmd) in &self.killed {
            out.push_str(&format!("  killed {pid}: {cmd}\n"));
        }
        out.push_str(&format!("  NICs down: {}\n", self.nics.join(", ")));
        out
    }
}

/// `lab kill`: a host that dies at once. Every process in its namespace
/// (its agent, its probe server) gets SIGKILL, with no chance to say
/// goodbye to its peers, and every NIC goes down, so nothing reaches the
/// host and it forwards nothing. Its containers stay, cut off with it.
pub fn kill(name: Option<&str>, host: &str) -> Result<KillReport, LabError> {
    let lab = registry::pick(name)?;
    let lock = registry::lock(&lab)?;
    let plan = lock.load()?.plan;
    let n = node(&plan, host)?;
    let killed = sys::kill_now(&n.ns)?;
    let nics: Vec<String> = n.nics.iter().map(|x| x.ifname.clone()).collect();
    let down: Vec<String> = nics.iter().map(|i| format!("link set {i} down")).collect();
    sys::ip_batch(Some(&n.ns), &down)?;
    Ok(KillReport {
        lab,
        host: host.to_string(),
        killed,
        nics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::resolve;
    use crate::topology::Topology;

    fn plan(text: &str) -> LabPlan {
        resolve("lab", &Topology::parse(text).unwrap(), &[]).unwrap()
    }

    const ROUTED: &str = r#"
[[segment]]
name = "left"
cidr = "192.168.10.0/24"
[[segment]]
name = "right"
cidr = "192.168.20.0/24"
[[segment]]
name = "nat"
cidr = "10.0.2.0/24"
per-host = true
[[router]]
name = "r1"
[[router.nic]]
segment = "left"
[[router.nic]]
segment = "right"
[[host]]
name = "a"
count = 2
[[host.nic]]
segment = "nat"
[[host.nic]]
segment = "left"
default-route = true
[[host]]
name = "b"
[[host.nic]]
segment = "right"
default-route = true
"#;

    #[test]
    fn a_cut_is_symmetric_and_reads_back_from_its_comments() {
        let c = Cut::new("h3", "h1", Some(4789));
        assert_eq!(c, Cut::new("h1", "h3", Some(4789)));
        assert_eq!(c.comment("h3", "h1"), "cut h1 h3 udp 4789: h3>h1");
        assert_eq!(Cut::from_comment(&c.comment("h3", "h1")), Some(c.clone()));
        let all = Cut::new("h1", "h3", None);
        assert_eq!(Cut::from_comment(&all.comment("h1", "h3")), Some(all));
        for other in ["muslin", "cut h1: x", "cut h1 h3 tcp 1: h1>h3", ""] {
            assert_eq!(Cut::from_comment(other), None, "{other}");
        }
    }

    #[test]
    fn hosts_on_one_segment_are_cut_by_port_and_address() {
        let p = plan(ROUTED);
        let lines = cut_lines(&p, &Cut::new("a1", "a2", None)).unwrap();
        assert_eq!(
            lines,
            [
                "add rule bridge muslinlab_cuts forward iifname \"p1n1\" oifname \"p2n1\" counter drop comment \"cut a1 a2: a1>a2\"",
                "add rule bridge muslinlab_cuts forward ip saddr 192.168.10.11 ip daddr 192.168.10.12 counter drop comment \"cut a1 a2: a1>a2\"",
                "add rule bridge muslinlab_cuts forward iifname \"p2n1\" oifname \"p1n1\" counter drop comment \"cut a1 a2: a2>a1\"",
                "add rule bridge muslinlab_cuts forward ip saddr 192.168.10.12 ip daddr 192.168.10.11 counter drop comment \"cut a1 a2: a2>a1\"",
            ],
            "the NAT segment's shared 10.0.2.15 is nobody's own"
        );
    }

    #[test]
    fn hosts_behind_a_router_are_cut_by_address_and_a_port_cut_names_its_port() {
        let p = plan(ROUTED);
        let lines = cut_lines(&p, &Cut::new("b", "a1", Some(4789))).unwrap();
        assert_eq!(
            lines,
            [
                "add rule bridge muslinlab_cuts forward ip saddr 192.168.10.11 ip daddr 192.168.20.11 udp dport 4789 counter drop comment \"cut a1 b udp 4789: a1>b\"",
                "add rule bridge muslinlab_cuts forward ip saddr 192.168.20.11 ip daddr 192.168.10.11 udp dport 4789 counter drop comment \"cut a1 b udp 4789: b>a1\"",
            ]
        );
    }

    #[test]
    fn unknown_or_repeated_hosts_are_named() {
        let p = plan(ROUTED);
        let e = cut_lines(&p, &Cut::new("a1", "h9", None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"h9\"") && e.contains("r1, a1, a2, b"), "{e}");
        let e = cut_lines(&p, &Cut::new("a1", "a1", None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a1 twice"), "{e}");
    }

    #[test]
    fn only_the_cut_asked_for_is_found() {
        let all = Cut::new("h1", "h3", None);
        let udp = Cut::new("h1", "h3", Some(4789));
        let rules = vec![
            (4, all.comment("h1", "h3")),
            (5, all.comment("h3", "h1")),
            (6, udp.comment("h1", "h3")),
            (7, "something else".to_string()),
        ];
        assert_eq!(handles_of(&rules, &all), [4, 5]);
        assert_eq!(handles_of(&rules, &udp), [6]);
        assert!(handles_of(&rules, &Cut::new("h1", "h2", None)).is_empty());
    }
}
