//! The forward chains in nft's JSON ruleset. Read as untyped JSON on
//! purpose: a typed schema rejects the whole ruleset when one object
//! anywhere is of a kind it does not know (the `nftables` crate 0.6 fails
//! on any verdict map), and the host's ruleset is not ours to constrain.
//! Only the few fields below are read; everything else is skipped.

use ipnet::IpNet;
use serde_json::Value;

use super::{
    Backend, Chain, Direction, Family, ForwardChain, ParseError, PodRule, Rule, RuleRef,
    IPTABLES_CHAIN, IPTABLES_TABLE, OWN_TABLE, RULE_COMMENT,
};

fn objects<'a>(
    nft: &'a Value,
    kind: &'a str,
) -> Result<impl Iterator<Item = &'a Value>, ParseError> {
    let list = nft["nftables"].as_array().ok_or(ParseError::NotRuleset)?;
    Ok(list.iter().filter_map(move |o| o.get(kind)))
}

/// A base chain on the forward hook, outside our own table.
fn forward_chain(c: &Value) -> Option<Chain> {
    if c["hook"] != "forward" || c["table"] == OWN_TABLE {
        return None;
    }
    Some(Chain {
        backend: Backend::Nftables,
        family: Family::parse(c["family"].as_str()?)?,
        table: c["table"].as_str()?.to_string(),
        name: c["name"].as_str()?.to_string(),
    })
}

fn is_iptables_forward(c: &Chain) -> bool {
    c.table == IPTABLES_TABLE && c.name == IPTABLES_CHAIN && c.family != Family::Inet
}

pub(super) fn iptables_nft_families(nft: &Value) -> Result<Vec<Family>, ParseError> {
    Ok(objects(nft, "chain")?
        .filter_map(forward_chain)
        .filter(is_iptables_forward)
        .map(|c| c.family)
        .collect())
}

/// Every forward base chain nft manages itself; `iptables_nft` lists the
/// families whose `filter FORWARD` is read through iptables-nft instead.
pub(super) fn forward_chains(
    nft: &Value,
    iptables_nft: &[Family],
) -> Result<Vec<ForwardChain>, ParseError> {
    let mut chains: Vec<ForwardChain> = objects(nft, "chain")?
        .filter_map(|c| {
            let chain = forward_chain(c)?;
            let by_iptables = is_iptables_forward(&chain) && iptables_nft.contains(&chain.family);
            (!by_iptables).then(|| ForwardChain {
                chain,
                policy_drop: c["policy"] == "drop",
                rules: Vec::new(),
            })
        })
        .collect();
    // nft lists a table's rules after all its chains; match them by name
    // rather than rely on that order.
    for r in objects(nft, "rule")? {
        let Some(c) = chains.iter_mut().find(|c| belongs(r, &c.chain)) else {
            continue;
        };
        c.rules.extend(rule(r));
    }
    Ok(chains)
}

fn belongs(r: &Value, c: &Chain) -> bool {
    r["family"] == c.family.as_str()
        && r["table"] == c.table.as_str()
        && r["chain"] == c.name.as_str()
}

fn rule(r: &Value) -> Option<Rule> {
    let handle = r["handle"].as_u64()?;
    let expr = r["expr"].as_array()?;
    let ours = r["comment"] == RULE_COMMENT;
    let effective: Vec<&Value> = expr.iter().filter(|e| !is_neutral(e)).collect();
    Some(Rule {
        id: RuleRef::Handle(handle),
        text: format!("handle {handle}"),
        ours,
        accepts: if ours { our_accept(&effective) } else { None },
        drops: matches!(effective.as_slice(), [v] if is_drop(v)),
        drops_range: match effective.as_slice() {
            [m, v] if is_drop(v) => address_match(m),
            _ => None,
        },
    })
}

/// The range of an `ip saddr RANGE` (or `daddr`, or ip6) equality match.
fn address_match(m: &Value) -> Option<(Direction, IpNet)> {
    let op = m["match"]["op"].as_str()?;
    if op != "==" && op != "in" {
        return None;
    }
    let payload = &m["match"]["left"]["payload"];
    if !matches!(payload["protocol"].as_str()?, "ip" | "ip6") {
        return None;
    }
    let direction = match payload["field"].as_str()? {
        "saddr" => Direction::Source,
        "daddr" => Direction::Destination,
        _ => return None,
    };
    Some((direction, prefix(&m["match"]["right"])?))
}

/// Statements that neither match nor decide: a rule made only of these and
/// a verdict applies that verdict to every packet.
fn is_neutral(e: &Value) -> bool {
    e.get("counter").is_some()
        || e.get("log").is_some()
        || (e["xt"]["type"] == "match" && e["xt"]["name"] == "comment")
}

fn is_drop(e: &Value) -> bool {
    e.get("drop").is_some()
        || e.get("reject").is_some()
        || (e["xt"]["type"] == "target"
            && matches!(e["xt"]["name"].as_str(), Some("DROP" | "REJECT")))
}

/// The accept our rule stands for, if these statements are exactly one of ours.
fn our_accept(effective: &[&Value]) -> Option<PodRule> {
    let [m, verdict] = effective else {
        return None;
    };
    if verdict.get("accept").is_none() || m["match"]["op"] != "==" {
        return None;
    }
    let payload = &m["match"]["left"]["payload"];
    let direction = match payload["field"].as_str()? {
        "saddr" => Direction::Source,
        "daddr" => Direction::Destination,
        _ => return None,
    };
    let cidr = prefix(&m["match"]["right"])?;
    let protocol = if cidr.addr().is_ipv4() { "ip" } else { "ip6" };
    (payload["protocol"] == protocol).then_some(PodRule { direction, cidr })
}

/// A prefix as nft prints it: `{"prefix": {...}}`, or a bare address for a
/// full-length prefix.
fn prefix(v: &Value) -> Option<IpNet> {
    if let Some(a) = v.as_str() {
        return a.parse::<std::net::IpAddr>().ok().map(IpNet::from);
    }
    let p = &v["prefix"];
    let addr = p["addr"].as_str()?.parse().ok()?;
    let len = u8::try_from(p["len"].as_u64()?).ok()?;
    IpNet::new(addr, len).ok().map(|n| n.trunc())
}
