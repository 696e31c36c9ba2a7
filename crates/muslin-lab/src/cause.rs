//! Why a pair of the matrix fails, from what the kernel shows along its
//! path (`diagnose` gathers it): the route and the next hop's neighbour
//! entry in each namespace the packets pass, both ways; the drop counters
//! of Muslin's nftables tables (and of the lab's own cuts) while the pair
//! is probed again; and the kernel's neighbour table, shared by every
//! namespace, overflowing. Parsing and judging are pure.

use std::net::IpAddr;

use serde::Serialize;
use serde_json::Value;

/// What broke a pair, as far as the kernel shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Cause {
    /// The kernel's neighbour table (all namespaces share it) is full:
    /// new neighbours are not resolved, packets to them are dropped.
    NeighbourOverflow {
        family: String,
        entries: u64,
        limit: u64,
        /// `table_fulls` risen while the matrix was checked.
        table_fulls: u64,
    },
    /// `at` has no route to `to`.
    NoRoute {
        at: String,
        to: IpAddr,
        error: String,
    },
    /// `at` could not resolve the next hop (its entry is FAILED or
    /// INCOMPLETE).
    NoNeighbour {
        at: String,
        next_hop: IpAddr,
        dev: String,
        state: String,
    },
    /// A drop rule counted packets while the pair was probed again.
    FirewallDrop {
        at: String,
        table: String,
        rule: String,
        packets: u64,
    },
}

impl Cause {
    /// The cell's letter in place of `x`.
    pub fn letter(&self) -> char {
        match self {
            Cause::NeighbourOverflow { .. } => 'O',
            Cause::NoRoute { .. } => 'R',
            Cause::NoNeighbour { .. } => 'N',
            Cause::FirewallDrop { .. } => 'F',
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Cause::NeighbourOverflow {
                family,
                entries,
                limit,
                table_fulls,
            } => format!(
                "neighbour table overflow: the kernel's {family} table holds {entries} entries, \
                 gc_thresh3 is {limit}, and was full {table_fulls} times during the check \
                 (see `neighbor table overflow` in dmesg; raise net.{family}.neigh.default.gc_thresh3)"
            ),
            Cause::NoRoute { at, to, error } => format!("no route in {at} to {to}: {error}"),
            Cause::NoNeighbour {
                at,
                next_hop,
                dev,
                state,
            } => format!("no neighbour in {at}: next hop {next_hop} on {dev} is {state}"),
            Cause::FirewallDrop {
                at,
                table,
                rule,
                packets,
            } => format!(
                "firewall drop in {at}: table {table}, {rule}, dropped {packets} packets \
                 while the pair was probed again"
            ),
        }
    }
}

/// The legend of the cells' cause letters.
pub const LEGEND: &str = "x: failed, cause not seen; O: neighbour table overflow; R: no route; \
                          N: no neighbour; F: firewall drop";

/// A route as `ip route get` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `unicast`, `local`, ...
    pub kind: String,
    pub dev: String,
    pub gateway: Option<IpAddr>,
}

/// One namespace on a pair's path: where the packet to `to` goes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub at: String,
    pub to: IpAddr,
    pub route: Result<Route, String>,
    /// The state of the next hop's neighbour entry (`REACHABLE`,
    /// `FAILED`, ...); none when there is no entry or none is needed.
    pub neighbour: Option<String>,
}

impl Hop {
    /// Where the packet goes from here: the gateway, or the destination
    /// itself on a connected link.
    pub fn next_hop(&self) -> Option<IpAddr> {
        let r = self.route.as_ref().ok()?;
        Some(r.gateway.unwrap_or(self.to))
    }
}

/// A drop rule's count: by node, table and rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drops {
    pub at: String,
    pub table: String,
    pub rule: String,
    pub packets: u64,
}

/// One family's neighbour table: entries, its hard limit, and how often
/// it was found full (summed over CPUs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Table {
    pub entries: u64,
    pub limit: u64,
    pub table_fulls: u64,
}

/// What was seen of a failing pair.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    /// The way there, then the way back.
    pub hops: Vec<Hop>,
    /// Drop rules that counted packets while the pair was probed again.
    pub drops: Vec<Drops>,
    /// The pair's family's neighbour table before and after the check.
    pub table: Option<(String, Table, Table)>,
}

fn unresolved(state: &str) -> bool {
    matches!(state, "FAILED" | "INCOMPLETE")
}

/// The cause the evidence shows, most definite first: a missing route,
/// a drop rule that counted the probe, the table overflowing (which also
/// leaves neighbours unresolved), an unresolved neighbour.
pub fn judge(e: &Evidence) -> Option<Cause> {
    if let Some(h) = e.hops.iter().find(|h| h.route.is_err()) {
        return Some(Cause::NoRoute {
            at: h.at.clone(),
            to: h.to,
            error: h.route.clone().err().unwrap_or_default(),
        });
    }
    if let Some(d) = e.drops.iter().max_by_key(|d| d.packets) {
        return Some(Cause::FirewallDrop {
            at: d.at.clone(),
            table: d.table.clone(),
            rule: d.rule.clone(),
            packets: d.packets,
        });
    }
    if let Some((family, before, after)) = &e.table {
        let rose = after.table_fulls.saturating_sub(before.table_fulls);
        if rose > 0 || after.entries >= after.limit {
            return Some(Cause::NeighbourOverflow {
                family: family.clone(),
                entries: after.entries,
                limit: after.limit,
                table_fulls: rose,
            });
        }
    }
    e.hops.iter().find_map(|h| {
        let state = h.neighbour.as_deref().filter(|s| unresolved(s))?;
        Some(Cause::NoNeighbour {
            at: h.at.clone(),
            next_hop: h.next_hop()?,
            dev: h.route.as_ref().ok()?.dev.clone(),
            state: state.to_string(),
        })
    })
}

/// `ip route get`'s refusal, with what it means where its words do not
/// say (a blackhole route reads as an invalid argument).
pub fn route_error(stderr: &str) -> String {
    let hint = if stderr.contains("Invalid argument") {
        " (a blackhole route)"
    } else if stderr.contains("Permission denied") {
        " (a prohibit route)"
    } else {
        ""
    };
    format!("ip route get: {stderr}{hint}")
}

/// `ip -j route get`'s answer; its error text when it has none.
pub fn parse_route(json: &str) -> Result<Route, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("unreadable route: {e}"))?;
    let r = v
        .as_array()
        .and_then(|a| a.first())
        .ok_or_else(|| "no route".to_string())?;
    let kind = r["type"].as_str().unwrap_or("unicast").to_string();
    if matches!(kind.as_str(), "unreachable" | "blackhole" | "prohibit") {
        return Err(format!("a route of type {kind}"));
    }
    Ok(Route {
        kind,
        dev: r["dev"].as_str().unwrap_or_default().to_string(),
        gateway: r["gateway"].as_str().and_then(|g| g.parse().ok()),
    })
}

/// The state of the first entry `ip -j neigh show ADDR dev DEV` lists.
pub fn parse_neighbour(json: &str) -> Option<String> {
    let v: Value = serde_json::from_str(json).ok()?;
    let states = v.as_array()?.first()?.get("state")?.as_array()?.clone();
    let s: Vec<&str> = states.iter().filter_map(Value::as_str).collect();
    (!s.is_empty()).then(|| s.join(","))
}

/// Tables whose drops count as a firewall's here: Muslin's own (`muslin`,
/// `muslin_policy`) and the lab's cuts and blocks (`muslinlab*`).
fn ours(table: &str) -> bool {
    table.starts_with("muslin")
}

/// Every counted drop of our tables in `nft -j list ruleset`: each rule
/// with a counter and a drop verdict (named by its comment, or chain and
/// handle), and each named counter (the policy table counts its drops in
/// those).
pub fn parse_drops(at: &str, json: &str) -> Vec<Drops> {
    let Ok(v) = serde_json::from_str::<Value>(json) else {
        return vec![];
    };
    let mut out = Vec::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        if let Some(r) = item.get("rule") {
            let table = r["table"].as_str().unwrap_or_default();
            if !ours(table) {
                continue;
            }
            let expr = r["expr"].as_array().cloned().unwrap_or_default();
            let drops = expr.iter().any(|e| e.get("drop").is_some());
            let packets = expr
                .iter()
                .find_map(|e| e.get("counter")?.get("packets")?.as_u64());
            if let (true, Some(packets)) = (drops, packets) {
                let rule = match r["comment"].as_str() {
                    Some(c) => format!("rule \"{c}\""),
                    None => format!(
                        "chain {} rule {}",
                        r["chain"].as_str().unwrap_or("?"),
                        r["handle"]
                    ),
                };
                out.push(Drops {
                    at: at.to_string(),
                    table: table.to_string(),
                    rule,
                    packets,
                });
            }
        } else if let Some(c) = item.get("counter") {
            let table = c["table"].as_str().unwrap_or_default();
            if ours(table) {
                out.push(Drops {
                    at: at.to_string(),
                    table: table.to_string(),
                    rule: format!("counter {}", c["name"].as_str().unwrap_or("?")),
                    packets: c["packets"].as_u64().unwrap_or(0),
                });
            }
        }
    }
    out
}

/// Drops counted between two readings (new rules count from zero).
pub fn risen(before: &[Drops], after: &[Drops]) -> Vec<Drops> {
    after
        .iter()
        .filter_map(|a| {
            let was = before
                .iter()
                .find(|b| b.at == a.at && b.table == a.table && b.rule == a.rule)
                .map_or(0, |b| b.packets);
            (a.packets > was).then(|| Drops {
                packets: a.packets - was,
                ..a.clone()
            })
        })
        .collect()
}

/// `/proc/net/stat/arp_cache` (or `ndisc_cache`): a header, then a line
/// of hexadecimal counters per CPU. `entries` is the table's, repeated on
/// every line; `table_fulls` is per CPU.
pub fn parse_stat(text: &str, limit: u64) -> Option<Table> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (e, f) = (col("entries")?, col("table_fulls")?);
    let mut t = Table {
        limit,
        ..Table::default()
    };
    for line in lines {
        let v: Vec<u64> = line
            .split_whitespace()
            .map(|x| u64::from_str_radix(x, 16).unwrap_or(0))
            .collect();
        t.entries = *v.get(e)?;
        t.table_fulls += v.get(f)?;
    }
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(at: &str, to: &str, route: Result<(&str, Option<&str>), &str>, n: Option<&str>) -> Hop {
        Hop {
            at: at.into(),
            to: to.parse().unwrap(),
            route: route
                .map(|(dev, gw)| Route {
                    kind: "unicast".into(),
                    dev: dev.into(),
                    gateway: gw.map(|g| g.parse().unwrap()),
                })
                .map_err(String::from),
            neighbour: n.map(String::from),
        }
    }

    fn ok_path() -> Vec<Hop> {
        vec![
            hop(
                "h1/c1",
                "10.244.1.2",
                Ok(("eth0", Some("169.254.1.1"))),
                Some("PERMANENT"),
            ),
            hop(
                "h1",
                "10.244.1.2",
                Ok(("eth1", Some("192.168.56.12"))),
                Some("REACHABLE"),
            ),
            hop("h2", "10.244.1.2", Ok(("msl0123", None)), Some("REACHABLE")),
        ]
    }

    #[test]
    fn nothing_wrong_is_no_cause() {
        let e = Evidence {
            hops: ok_path(),
            drops: vec![],
            table: Some((
                "ipv4".into(),
                Table {
                    entries: 300,
                    limit: 1024,
                    table_fulls: 7,
                },
                Table {
                    entries: 300,
                    limit: 1024,
                    table_fulls: 7,
                },
            )),
        };
        assert_eq!(judge(&e), None);
    }

    #[test]
    fn each_cause_is_named_and_the_most_definite_wins() {
        let mut e = Evidence {
            hops: ok_path(),
            ..Default::default()
        };
        e.hops[2].neighbour = Some("FAILED".into());
        let c = judge(&e).unwrap();
        assert_eq!(c.letter(), 'N');
        assert_eq!(
            c.describe(),
            "no neighbour in h2: next hop 10.244.1.2 on msl0123 is FAILED"
        );

        let full = Table {
            entries: 1024,
            limit: 1024,
            table_fulls: 90,
        };
        e.table = Some((
            "ipv4".into(),
            Table {
                table_fulls: 10,
                ..full
            },
            full,
        ));
        let c = judge(&e).unwrap();
        assert_eq!(c.letter(), 'O');
        assert!(
            c.describe().contains("was full 80 times"),
            "{}",
            c.describe()
        );

        e.drops = vec![
            Drops {
                at: "h2".into(),
                table: "muslin_policy".into(),
                rule: "counter policy_ab".into(),
                packets: 1,
            },
            Drops {
                at: "switch".into(),
                table: "muslinlab_cuts".into(),
                rule: "rule \"cut h1 h2: h1>h2\"".into(),
                packets: 3,
            },
        ];
        let c = judge(&e).unwrap();
        assert_eq!(
            c.describe(),
            "firewall drop in switch: table muslinlab_cuts, rule \"cut h1 h2: h1>h2\", dropped 3 \
             packets while the pair was probed again"
        );

        e.hops[1].route = Err("RTNETLINK answers: Network is unreachable".into());
        let c = judge(&e).unwrap();
        assert_eq!(c.letter(), 'R');
        assert_eq!(
            c.describe(),
            "no route in h1 to 10.244.1.2: RTNETLINK answers: Network is unreachable"
        );
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["kind"], "no_route");
        assert_eq!(v["at"], "h1");
    }

    #[test]
    fn a_full_table_is_overflow_even_when_no_failure_was_counted() {
        let t = Table {
            entries: 1024,
            limit: 1024,
            table_fulls: 0,
        };
        let e = Evidence {
            hops: ok_path(),
            table: Some(("ipv4".into(), t, t)),
            ..Default::default()
        };
        assert_eq!(judge(&e).unwrap().letter(), 'O');
    }

    #[test]
    fn route_and_neighbour_answers_parse() {
        let r = parse_route(
            r#"[{"dst":"10.244.190.2","gateway":"192.168.56.12","dev":"eth1","prefsrc":"192.168.56.50","flags":[],"uid":0,"cache":[]}]"#,
        )
        .unwrap();
        assert_eq!(r.dev, "eth1");
        assert_eq!(r.gateway, Some("192.168.56.12".parse().unwrap()));
        assert_eq!(r.kind, "unicast");
        let r = parse_route(r#"[{"type":"local","dst":"10.0.2.15","dev":"lo","prefsrc":"10.0.2.15","flags":[],"uid":0,"cache":["local"]}]"#).unwrap();
        assert_eq!((r.kind.as_str(), r.gateway), ("local", None));
        assert!(parse_route(r#"[{"type":"blackhole","dst":"10.9.0.1","flags":[]}]"#).is_err());
        assert!(parse_route("[]").is_err());
        assert_eq!(
            parse_neighbour(
                r#"[{"dst":"192.168.56.12","dev":"eth1","lladdr":"a2:18:db:98:64:74","state":["REACHABLE"]}]"#
            ),
            Some("REACHABLE".into())
        );
        assert_eq!(
            parse_neighbour(r#"[{"dst":"192.168.56.99","dev":"eth1","state":["FAILED"]}]"#),
            Some("FAILED".into())
        );
        assert_eq!(parse_neighbour("[]"), None);
        assert_eq!(
            route_error("RTNETLINK answers: Invalid argument"),
            "ip route get: RTNETLINK answers: Invalid argument (a blackhole route)"
        );
    }

    #[test]
    fn drops_are_read_from_our_tables_only_and_compared() {
        let before = r#"{"nftables":[
          {"metainfo":{"version":"1.0.6"}},
          {"table":{"family":"ip","name":"muslin","handle":1}},
          {"rule":{"family":"ip","table":"muslin","chain":"forward","handle":7,"comment":"muslin v3 network red leaving","expr":[{"counter":{"packets":4,"bytes":336}},{"drop":null}]}},
          {"rule":{"family":"ip","table":"muslin","chain":"forward","handle":8,"expr":[{"counter":{"packets":9,"bytes":1}},{"accept":null}]}},
          {"rule":{"family":"ip","table":"filter","chain":"FORWARD","handle":2,"expr":[{"counter":{"packets":50,"bytes":1}},{"drop":null}]}},
          {"counter":{"family":"ip","name":"policy_5e1f","table":"muslin_policy","handle":3,"packets":2,"bytes":120}}
        ]}"#;
        let b = parse_drops("h2", before);
        assert_eq!(b.len(), 2, "{b:?}");
        assert_eq!(b[0].rule, "rule \"muslin v3 network red leaving\"");
        assert_eq!(b[1].rule, "counter policy_5e1f");
        let after = before.replace("\"packets\":2,", "\"packets\":5,");
        let r = risen(&b, &parse_drops("h2", &after));
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].rule.as_str(), r[0].packets),
            ("counter policy_5e1f", 3)
        );
        assert!(parse_drops("h2", "not json").is_empty());
    }

    #[test]
    fn the_kernels_table_statistics_parse() {
        let text = "entries  allocs   destroys hash_grows lookups  hits     res_failed rcv_probes_mcast rcv_probes_ucast periodic_gc_runs forced_gc_runs unresolved_discards table_fulls\n\
                    00000400 00027059 000260f5 00000002   0006d0c6 0001df0e 00000291   00000000         00000000         000012f6         00000011       00003521            0000000a\n\
                    00000400 00022094 00022ff6 00000007   000603b6 0001a0ea 00000288   00000000         00000000         00000000         0000000a       00002ca7            00000005\n";
        assert_eq!(
            parse_stat(text, 1024),
            Some(Table {
                entries: 1024,
                limit: 1024,
                table_fulls: 15
            })
        );
        assert_eq!(parse_stat("", 1024), None);
    }
}
