use std::collections::BTreeMap;

use muslin_model::cluster::EndpointRecord;
use muslin_model::policy::{parse_document, Format};

use super::*;

fn ep(node: &str, c: &str, addr: &str, labels: &[(&str, &str)]) -> EndpointRecord {
    EndpointRecord {
        network: "default".into(),
        addresses: vec![format!("{addr}/32").parse().unwrap()],
        container_id: c.into(),
        ifname: "eth0".into(),
        node: node.into(),
        pod_namespace: None,
        pod_name: None,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ports: Default::default(),
        aliases: Vec::new(),
        name: None,
    }
}

fn a(s: &str) -> u32 {
    u32::from(s.parse::<std::net::Ipv4Addr>().unwrap())
}

fn compile_for(me: &str, policies: &str, eps: &[EndpointRecord]) -> PolicyTable {
    let ps = parse_document(policies, Format::Yaml).unwrap();
    let refs: Vec<&EndpointRecord> = eps.iter().collect();
    compile(&Inputs {
        me,
        policies: &ps,
        endpoints: &refs,
        namespaces: &BTreeMap::new(),
    })
}

const WEB: &str = "name: web\npodSelector: {matchLabels: {app: web}}\ningress:\n- from: [{podSelector: {matchLabels: {role: client}}}]\n  ports: [{port: 80}]\n";

#[test]
fn only_selected_local_endpoints_get_chains() {
    let eps = [
        ep("h1", "web1", "10.1.0.2", &[("app", "web")]),
        ep("h1", "db1", "10.1.0.3", &[("app", "db")]),
        ep("h2", "web2", "10.1.1.2", &[("app", "web")]),
        ep("h2", "cl", "10.1.1.3", &[("role", "client")]),
    ];
    let t = compile_for("h1", WEB, &eps);
    let web1 = host_ifname("web1", "eth0");
    assert_eq!(t.ingress.keys().collect::<Vec<_>>(), vec![&web1]);
    assert!(t.egress.is_empty());
    let rules = &t.chains[&t.ingress[&web1]];
    assert_eq!(rules.len(), 2, "the allow rule and the isolation drop");
    assert_eq!(rules[0].protocol, Some(Protocol::Tcp));
    assert_eq!(rules[0].ports, vec![(80, 80)]);
    let set = rules[0].set.as_ref().unwrap();
    assert_eq!(
        t.sets[set],
        [(a("10.1.1.3"), a("10.1.1.3"))].into_iter().collect()
    );
    assert!(rules[1].drop.is_some());
    // No policy protects anything on h3: no table at all.
    assert!(!compile_for("h3", WEB, &eps).wanted());
}

#[test]
fn churn_changes_set_elements_only() {
    let mut eps = vec![
        ep("h1", "web1", "10.1.0.2", &[("app", "web")]),
        ep("h2", "cl", "10.1.1.3", &[("role", "client")]),
    ];
    let before = compile_for("h1", WEB, &eps);
    eps.push(ep("h2", "cl2", "10.1.1.4", &[("role", "client")]));
    let after = compile_for("h1", WEB, &eps);
    assert_eq!(before.tags(), after.tags(), "no chain changes");
    let observed = PolicyObserved {
        exists: true,
        rules: before.tags(),
        sets: before.sets.clone(),
        counters: before.counters.iter().map(|c| (c.clone(), 0)).collect(),
    };
    let change = diff(&observed, &after).unwrap();
    assert_eq!(
        change.summary,
        "1 addresses added, 0 removed, 0 chains replaced"
    );
    let observed_after = PolicyObserved {
        sets: after.sets.clone(),
        ..observed
    };
    assert_eq!(diff(&observed_after, &after), None);
}

#[test]
fn deny_rules_come_first_and_do_not_isolate() {
    let eps = [
        ep("h1", "web1", "10.1.0.2", &[("app", "web")]),
        ep("h1", "db1", "10.1.0.3", &[("app", "db")]),
    ];
    let policies = format!(
        "{WEB}---\nname: guard\naction: deny\norder: 1\npodSelector: {{}}\ningress:\n- from: [{{ipBlock: {{cidr: 10.9.0.0/16}}}}]\n"
    );
    let t = compile_for("h1", &policies, &eps);
    let web = &t.chains[&t.ingress[&host_ifname("web1", "eth0")]];
    assert!(web[0].tag.contains("guard deny"), "{:?}", web[0].tag);
    assert!(web[0].drop.is_some());
    assert!(web[1].drop.is_none());
    // db is protected by the deny policy alone: no isolation drop.
    let db = &t.chains[&t.ingress[&host_ifname("db1", "eth0")]];
    assert_eq!(db.len(), 1);
    assert!(db[0].tag.contains("guard deny"));
}

#[test]
fn a_policy_without_rules_isolates() {
    let eps = [ep("h1", "web1", "10.1.0.2", &[])];
    let t = compile_for(
        "h1",
        "name: deny-all\npodSelector: {}\npolicyTypes: [Ingress, Egress]\n",
        &eps,
    );
    let i = host_ifname("web1", "eth0");
    assert_eq!(t.chains[&t.ingress[&i]].len(), 1);
    assert_eq!(t.chains[&t.egress[&i]].len(), 1);
}

#[test]
fn peers_come_from_the_endpoint_s_own_network() {
    let mut red = ep("h2", "r", "10.1.1.3", &[("role", "client")]);
    red.network = "red".into();
    let eps = [ep("h1", "web1", "10.1.0.2", &[("app", "web")]), red];
    let t = compile_for("h1", WEB, &eps);
    assert!(t.sets.values().all(|s| s.is_empty()));
}

#[test]
fn named_ports_resolve_at_the_destination() {
    let mut web = ep("h1", "web1", "10.1.0.2", &[("app", "web")]);
    web.ports.insert(
        "http".into(),
        muslin_model::policy::NamedPort {
            protocol: Protocol::Tcp,
            port: 8080,
        },
    );
    let t = compile_for(
        "h1",
        "name: web\npodSelector: {matchLabels: {app: web}}\ningress:\n- ports: [{port: http}, {port: metrics}]\n",
        &[web],
    );
    let rules = &t.chains[&t.ingress[&host_ifname("web1", "eth0")]];
    assert_eq!(rules[0].ports, vec![(8080, 8080)]);
    assert_eq!(rules.len(), 2, "the unnamed port matches nothing");
}

#[test]
fn listing_is_read_back() {
    let json = r#"{"nftables":[{"metainfo":{}},{"table":{"family":"ip","name":"muslin_policy","handle":1}},
    {"counter":{"family":"ip","name":"policy_x","table":"muslin_policy","handle":2,"packets":7,"bytes":420}},
    {"set":{"family":"ip","name":"peers_a","table":"muslin_policy","type":"ipv4_addr","flags":["interval"],"elem":["10.1.0.2",{"prefix":{"addr":"10.2.0.0","len":16}},{"range":["10.3.0.4","10.3.0.9"]}]}},
    {"chain":{"family":"ip","table":"muslin_policy","name":"forward","handle":3}},
    {"rule":{"family":"ip","table":"muslin_policy","chain":"forward","handle":4,"comment":"mp1 established #x","expr":[]}}]}"#;
    let o = parse_observed(json).unwrap();
    assert!(o.exists);
    assert_eq!(o.counters["policy_x"], 7);
    assert_eq!(
        o.sets["peers_a"],
        [
            (a("10.1.0.2"), a("10.1.0.2")),
            (a("10.2.0.0"), a("10.2.255.255")),
            (a("10.3.0.4"), a("10.3.0.9"))
        ]
        .into_iter()
        .collect()
    );
    assert_eq!(o.rules["forward"], vec!["mp1 established #x".to_string()]);
}

#[test]
fn only_narrowing_changes_rejudge_open_connections() {
    let mut eps = vec![
        ep("h1", "web1", "10.1.0.2", &[("app", "web")]),
        ep("h2", "cl", "10.1.1.3", &[("role", "client")]),
    ];
    let t = compile_for("h1", WEB, &eps);
    let seen = |t: &PolicyTable| PolicyObserved {
        exists: true,
        rules: t.tags(),
        sets: t.sets.clone(),
        counters: Default::default(),
    };
    let web: std::net::IpAddr = "10.1.0.2".parse().unwrap();
    // A new policy: web's connections are judged again (ingress).
    assert_eq!(
        to_rejudge(&PolicyObserved::default(), &t),
        vec![(web, false)]
    );
    // The same table (an agent restart): nothing.
    assert!(to_rejudge(&seen(&t), &t).is_empty());
    // A peer more: nothing; a peer less: web again.
    eps.push(ep("h2", "cl2", "10.1.1.4", &[("role", "client")]));
    let more = compile_for("h1", WEB, &eps);
    assert!(to_rejudge(&seen(&t), &more).is_empty());
    assert_eq!(to_rejudge(&seen(&more), &t), vec![(web, false)]);
}

#[test]
fn egress_named_ports_reach_each_peer_on_its_own_number() {
    let named = |c: &str, addr: &str, port: u16| {
        let mut e = ep("h2", c, addr, &[("app", "api")]);
        e.ports.insert(
            "http".into(),
            muslin_model::policy::NamedPort {
                protocol: Protocol::Tcp,
                port,
            },
        );
        e
    };
    let eps = [
        ep("h1", "cl", "10.1.0.2", &[("role", "client")]),
        named("v1", "10.1.1.2", 8080),
        named("v2", "10.1.1.3", 9090),
    ];
    let t = compile_for(
        "h1",
        "name: out\npodSelector: {matchLabels: {role: client}}\npolicyTypes: [Egress]\negress:\n- to: [{podSelector: {matchLabels: {app: api}}}]\n  ports: [{port: http}]\n",
        &eps,
    );
    let rules = &t.chains[&t.egress[&host_ifname("cl", "eth0")]];
    let by_port: Vec<(Vec<Span>, Vec<Span>)> = rules
        .iter()
        .filter(|r| r.drop.is_none())
        .map(|r| {
            (
                r.ports.clone(),
                t.sets[r.set.as_ref().unwrap()].iter().copied().collect(),
            )
        })
        .collect();
    assert_eq!(
        by_port,
        vec![
            (vec![(8080, 8080)], vec![(a("10.1.1.2"), a("10.1.1.2"))]),
            (vec![(9090, 9090)], vec![(a("10.1.1.3"), a("10.1.1.3"))]),
        ]
    );
}

/// What the compiled table does with a connection between two endpoints
/// of this host: the sender's egress chain, then the receiver's ingress
/// chain, rule by rule as nft walks them.
fn simulate(
    t: &PolicyTable,
    from: &EndpointRecord,
    to: &EndpointRecord,
    proto: Protocol,
    port: u16,
) -> bool {
    let addr = |e: &EndpointRecord| policy::v4_addresses(&e.addresses).next().unwrap();
    let judge = |map: &BTreeMap<String, String>, ep: &EndpointRecord, peer: u32| {
        let Some(chain) = map.get(&host_ifname(&ep.container_id, &ep.ifname)) else {
            return true;
        };
        for r in &t.chains[chain] {
            let set_ok = r
                .set
                .as_ref()
                .is_none_or(|s| t.sets[s].iter().any(|(a, b)| *a <= peer && peer <= *b));
            let proto_ok = r.protocol.is_none_or(|p| p == proto);
            let p = u32::from(port);
            let port_ok = r.ports.is_empty() || r.ports.iter().any(|(a, b)| *a <= p && p <= *b);
            if set_ok && proto_ok && port_ok {
                return r.drop.is_none();
            }
        }
        true
    };
    judge(&t.egress, from, addr(to)) && judge(&t.ingress, to, addr(from))
}

fn end(e: &EndpointRecord) -> policy::End<'_> {
    policy::End {
        member: Member::of(e),
        addr: std::net::Ipv4Addr::from(policy::v4_addresses(&e.addresses).next().unwrap()),
        ports: &e.ports,
    }
}

/// A small deterministic generator (xorshift), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn random_selector(r: &mut Rng) -> policy::Selector {
    let mut s = policy::Selector::default();
    if r.chance(60) {
        s.match_labels
            .insert("app".into(), ["x", "y"][r.below(2) as usize].to_string());
    }
    if r.chance(30) {
        let operator = [
            policy::Operator::In,
            policy::Operator::NotIn,
            policy::Operator::Exists,
            policy::Operator::DoesNotExist,
        ][r.below(4) as usize];
        let values = match operator {
            policy::Operator::In | policy::Operator::NotIn => ["1".to_string()].into(),
            _ => Default::default(),
        };
        s.match_expressions.push(policy::Expression {
            key: "tier".into(),
            operator,
            values,
        });
    }
    s
}

fn random_rule(r: &mut Rng) -> policy::Rule {
    let peers = r.chance(70).then(|| {
        (0..1 + r.below(2))
            .map(|_| match r.below(4) {
                0 => Peer::Endpoints {
                    pods: Some(random_selector(r)),
                    namespaces: None,
                },
                1 => Peer::Endpoints {
                    pods: None,
                    namespaces: Some(policy::Selector {
                        match_labels: [("env".to_string(), "prod".to_string())].into(),
                        match_expressions: vec![],
                    }),
                },
                2 => Peer::Endpoints {
                    pods: Some(random_selector(r)),
                    namespaces: Some(policy::Selector::default()),
                },
                _ => Peer::Block {
                    cidr: "10.0.0.0/29".parse().unwrap(),
                    except: if r.chance(50) {
                        vec!["10.0.0.4/30".parse().unwrap()]
                    } else {
                        vec![]
                    },
                },
            })
            .collect()
    });
    let ports = (0..r.below(3))
        .map(|_| policy::PortRule {
            protocol: if r.chance(70) {
                Protocol::Tcp
            } else {
                Protocol::Udp
            },
            port: match r.below(4) {
                0 => None,
                1 => Some(Port::Range {
                    first: 80,
                    last: 80,
                }),
                2 => Some(Port::Range {
                    first: 81,
                    last: 82,
                }),
                _ => Some(Port::Named("http".into())),
            },
        })
        .collect();
    policy::Rule { peers, ports }
}

fn random_policy(r: &mut Rng, i: usize) -> Policy {
    let deny = r.chance(25);
    let mut types = vec![];
    if r.chance(80) {
        types.push(Direction::Ingress);
    }
    if types.is_empty() || r.chance(40) {
        types.push(Direction::Egress);
    }
    let mut rules = |d| {
        if types.contains(&d) {
            (0..r.below(3)).map(|_| random_rule(r)).collect()
        } else {
            vec![]
        }
    };
    let (ingress, egress) = (rules(Direction::Ingress), rules(Direction::Egress));
    Policy {
        name: format!("p{i}"),
        namespace: [None, Some("a".to_string()), Some("b".to_string())][r.below(3) as usize]
            .clone(),
        network: None,
        action: if deny { Action::Deny } else { Action::Allow },
        order: deny.then(|| r.below(3) as i32),
        selector: random_selector(r),
        types,
        ingress,
        egress,
    }
}

#[test]
fn the_compiled_table_means_what_the_policies_say() {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let namespaces: BTreeMap<String, BTreeMap<String, String>> = [(
        "a".to_string(),
        [("env".to_string(), "prod".to_string())].into(),
    )]
    .into();
    let ns_labels = |ns: &str| {
        let mut l = namespaces.get(ns).cloned().unwrap_or_default();
        l.insert(policy::NAMESPACE_NAME_LABEL.into(), ns.into());
        l
    };
    let mut checked = 0;
    for case in 0..400 {
        let eps: Vec<EndpointRecord> = (1..=7u8)
            .map(|i| {
                let mut labels = vec![];
                let app = ["x", "y", ""][r.below(3) as usize];
                if !app.is_empty() {
                    labels.push(("app", app));
                }
                if r.chance(50) {
                    labels.push(("tier", ["1", "2"][r.below(2) as usize]));
                }
                let mut e = ep("me", &format!("c{i}"), &format!("10.0.0.{i}"), &labels);
                e.pod_namespace = Some(["a", "b"][r.below(2) as usize].to_string());
                if r.chance(50) {
                    e.ports.insert(
                        "http".into(),
                        policy::NamedPort {
                            protocol: Protocol::Tcp,
                            port: [80, 81][r.below(2) as usize],
                        },
                    );
                }
                e
            })
            .collect();
        let ps: Vec<Policy> = (0..1 + r.below(4) as usize)
            .map(|i| random_policy(&mut r, i))
            .collect();
        let refs: Vec<&EndpointRecord> = eps.iter().collect();
        let t = compile(&Inputs {
            me: "me",
            policies: &ps,
            endpoints: &refs,
            namespaces: &namespaces,
        });
        for from in &eps {
            for to in eps.iter().filter(|t| t.container_id != from.container_id) {
                for proto in [Protocol::Tcp, Protocol::Udp] {
                    for port in [80, 81, 82] {
                        let want =
                            policy::allows(&ps, &end(from), &end(to), proto, port, &ns_labels);
                        let got = simulate(&t, from, to, proto, port);
                        assert_eq!(
                            got, want,
                            "case {case}: {} -> {} {proto:?}/{port}\npolicies: {ps:#?}\nendpoints: {eps:#?}",
                            from.container_id, to.container_id
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked > 10_000);
}
