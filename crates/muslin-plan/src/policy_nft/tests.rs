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
