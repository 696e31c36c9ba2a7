use std::collections::BTreeMap;

use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn yaml(s: &str) -> Result<Vec<Policy>, PolicyError> {
    parse_document(s, Format::Yaml)
}

const K8S: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: test-network-policy
  namespace: prod
  uid: 1234
  labels: {team: a}
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
    - Ingress
    - Egress
  ingress:
    - from:
        - ipBlock:
            cidr: 172.17.0.0/16
            except:
              - 172.17.1.0/24
        - namespaceSelector:
            matchLabels:
              project: myproject
        - podSelector:
            matchLabels:
              role: frontend
      ports:
        - protocol: TCP
          port: 6379
  egress:
    - to:
        - ipBlock:
            cidr: 10.0.0.0/24
      ports:
        - protocol: TCP
          port: 5978
          endPort: 6000
"#;

#[test]
fn a_kubernetes_policy_applies_as_it_is() {
    let p = yaml(K8S).unwrap();
    assert_eq!(p.len(), 1);
    let p = &p[0];
    assert_eq!(p.key(), "prod:test-network-policy");
    assert_eq!(p.types, vec![Direction::Ingress, Direction::Egress]);
    assert_eq!(p.action, Action::Allow);
    let peers = p.ingress[0].peers.as_ref().unwrap();
    assert_eq!(peers.len(), 3);
    assert_eq!(
        peers[0],
        Peer::Block {
            cidr: "172.17.0.0/16".parse().unwrap(),
            except: vec!["172.17.1.0/24".parse().unwrap()]
        }
    );
    assert_eq!(
        p.egress[0].ports,
        vec![PortRule {
            protocol: Protocol::Tcp,
            port: Some(Port::Range {
                first: 5978,
                last: 6000
            })
        }]
    );
}

#[test]
fn policy_types_default_as_in_kubernetes() {
    let only_ingress = yaml("name: a\npodSelector: {}\n").unwrap();
    assert_eq!(only_ingress[0].types, vec![Direction::Ingress]);
    let with_egress = yaml("name: a\npodSelector: {}\negress: [{}]\n").unwrap();
    assert_eq!(
        with_egress[0].types,
        vec![Direction::Ingress, Direction::Egress]
    );
    let ns = yaml("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec: {podSelector: {}}\n").unwrap();
    assert_eq!(ns[0].namespace.as_deref(), Some("default"));
}

#[test]
fn toml_and_several_yaml_documents() {
    let t = parse_document(
        r#"
[[policy]]
name = "guard"
action = "deny"
order = 10
podSelector = {}
policyTypes = ["Egress"]
[[policy.egress]]
to = [{ ipBlock = { cidr = "169.254.169.254/32" } }]

[[policy]]
name = "web"
namespace = "shop"
podSelector = { matchLabels = { app = "web" } }
[[policy.ingress]]
ports = [{ protocol = "UDP", port = 53 }, { port = "http" }]
"#,
        Format::Toml,
    )
    .unwrap();
    assert_eq!(t.len(), 2);
    assert_eq!(t[0].action, Action::Deny);
    assert_eq!(t[0].namespace, None);
    assert!(t[1].ingress[0].ports.contains(&PortRule {
        protocol: Protocol::Tcp,
        port: Some(Port::Named("http".into()))
    }));
    let y = yaml("name: a\npodSelector: {}\n---\nname: b\npodSelector: {}\n").unwrap();
    assert_eq!(y.len(), 2);
}

#[test]
fn bad_input_is_refused_naming_the_field() {
    let cases = [
        ("name: a\npodSelector: {}\ningres: []\n", "ingres"),
        (
            "name: a\npodSelector: {matchExpressions: [{key: x, operator: Has}]}\n",
            "podSelector.matchExpressions[0].operator",
        ),
        (
            "name: a\npodSelector: {matchExpressions: [{key: x, operator: In}]}\n",
            "podSelector.matchExpressions[0].values",
        ),
        (
            "name: a\npodSelector: {}\ningress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]\n",
            "ingress[0].from[0].ipBlock.cidr",
        ),
        (
            "name: a\npodSelector: {}\ningress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]\n",
            "ingress[0].from[0].ipBlock.except[0]",
        ),
        (
            "name: a\npodSelector: {}\ningress: [{ports: [{port: 70000}]}]\n",
            "ingress[0].ports[0].port",
        ),
        (
            "name: a\npodSelector: {}\ningress: [{ports: [{port: 80, endPort: 79}]}]\n",
            "ingress[0].ports[0].endPort",
        ),
        (
            "name: a\npodSelector: {}\ningress: [{ports: [{protocol: ICMP}]}]\n",
            "ingress[0].ports[0].protocol",
        ),
        ("name: A_b\npodSelector: {}\n", "name"),
        ("name: a\n", "podSelector"),
        ("name: a\npodSelector: {}\norder: 3\n", "order"),
        (
            "name: a\npodSelector: {matchLabels: {\"bad key!\": x}}\n",
            "podSelector.matchLabels",
        ),
        (
            "name: a\npodSelector: {}\ningress: [{from: [{}]}]\n",
            "ingress[0].from[0]",
        ),
        (
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec: {podSelector: {}, ingress: [{from: [{podSelectr: {}}]}]}\n",
            "spec.ingress[0].from[0]",
        ),
    ];
    for (text, field) in cases {
        let e = yaml(text).expect_err(text);
        assert!(
            e.at.contains(field),
            "{text}: error {e} should name {field}"
        );
    }
}

#[test]
fn selectors_follow_kubernetes() {
    let s = Selector {
        match_labels: labels(&[("app", "web")]).into_iter().collect(),
        match_expressions: vec![
            Expression {
                key: "tier".into(),
                operator: Operator::NotIn,
                values: ["db".to_string()].into(),
            },
            Expression {
                key: "canary".into(),
                operator: Operator::DoesNotExist,
                values: Default::default(),
            },
        ],
    };
    assert!(s.matches(&labels(&[("app", "web")])));
    assert!(s.matches(&labels(&[("app", "web"), ("tier", "front")])));
    assert!(!s.matches(&labels(&[("app", "web"), ("tier", "db")])));
    assert!(!s.matches(&labels(&[("app", "web"), ("canary", "")])));
    assert!(!s.matches(&labels(&[("app", "api")])));
    assert!(Selector::default().matches(&labels(&[])));
}

#[test]
fn deny_policies_come_first_in_order() {
    let ps = yaml(
        "name: allow-b\npodSelector: {}\n---\nname: deny-late\naction: deny\norder: 20\npodSelector: {}\n---\nname: deny-early\naction: deny\norder: 5\npodSelector: {}\n---\nname: other-ns\nnamespace: x\npodSelector: {}\n",
    )
    .unwrap();
    let l = labels(&[]);
    let ep = Member {
        network: "default",
        namespace: "default",
        labels: &l,
    };
    let names: Vec<&str> = protecting(&ps, &ep, Direction::Ingress)
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["deny-early", "deny-late", "allow-b"]);
}

#[test]
fn peers_by_pod_and_namespace() {
    let p = &yaml(
        "name: a\nnamespace: shop\npodSelector: {}\ningress:\n- from:\n  - podSelector: {matchLabels: {role: fe}}\n  - namespaceSelector: {matchLabels: {team: ops}}\n  - podSelector: {matchLabels: {role: mon}}\n    namespaceSelector: {matchLabels: {team: ops}}\n",
    )
    .unwrap()[0];
    let peers = p.ingress[0].peers.as_ref().unwrap();
    let ns = |n: &str| {
        if n == "ops" {
            labels(&[("team", "ops")])
        } else {
            labels(&[])
        }
    };
    let fe = labels(&[("role", "fe")]);
    let mon = labels(&[("role", "mon")]);
    let m = |namespace, l| Member {
        network: "default",
        namespace,
        labels: l,
    };
    // pod selector alone: the policy's namespace only
    assert!(p.peer_has(&peers[0], &m("shop", &fe), &ns));
    assert!(!p.peer_has(&peers[0], &m("ops", &fe), &ns));
    // namespace selector alone: every pod there
    assert!(p.peer_has(&peers[1], &m("ops", &fe), &ns));
    assert!(!p.peer_has(&peers[1], &m("shop", &fe), &ns));
    // both: pods matching in namespaces matching
    assert!(p.peer_has(&peers[2], &m("ops", &mon), &ns));
    assert!(!p.peer_has(&peers[2], &m("ops", &fe), &ns));
    assert!(!p.peer_has(&peers[2], &m("shop", &mon), &ns));
}

#[test]
fn blocks_with_exceptions_become_disjoint_ranges() {
    let r = block_ranges(
        "10.0.0.0/24".parse().unwrap(),
        &[
            "10.0.0.64/26".parse().unwrap(),
            "10.0.0.0/30".parse().unwrap(),
        ],
    );
    let a = |s: &str| u32::from(s.parse::<std::net::Ipv4Addr>().unwrap());
    assert_eq!(
        r,
        vec![
            (a("10.0.0.4"), a("10.0.0.63")),
            (a("10.0.0.128"), a("10.0.0.255"))
        ]
    );
    let n = normalize(vec![(5, 9), (1, 3), (4, 4), (2, 6)]);
    assert_eq!(n, vec![(1, 9)]);
    // touching ranges stay apart
    assert_eq!(normalize(vec![(1, 1), (2, 2)]), vec![(1, 1), (2, 2)]);
}

#[test]
fn the_plain_meaning_of_a_set_of_policies() {
    let ps = yaml(
        "name: web\nnamespace: shop\npodSelector: {matchLabels: {app: web}}\ningress:\n- from: [{podSelector: {matchLabels: {role: fe}}}]\n  ports: [{port: 80}, {protocol: UDP, port: 5000, endPort: 5010}]\n---\nname: guard\naction: deny\norder: 1\npodSelector: {}\negress:\n- to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]\n  ports: [{port: 22}]\n",
    )
    .unwrap();
    let (web_l, fe_l, other_l) = (
        labels(&[("app", "web")]),
        labels(&[("role", "fe")]),
        labels(&[]),
    );
    let none = BTreeMap::new();
    let end = |namespace, l, addr: &str| End {
        member: Member {
            network: "default",
            namespace,
            labels: l,
        },
        addr: addr.parse().unwrap(),
        ports: &none,
    };
    let web = end("shop", &web_l, "10.1.0.2");
    let fe = end("shop", &fe_l, "10.1.0.3");
    let other = end("shop", &other_l, "10.1.0.4");
    let fe_elsewhere = end("ops", &fe_l, "10.1.0.5");
    let far = end("shop", &other_l, "10.2.0.9");
    let ns = |_: &str| BTreeMap::new();
    assert!(allows(&ps, &fe, &web, Protocol::Tcp, 80, &ns));
    assert!(!allows(&ps, &fe, &web, Protocol::Tcp, 81, &ns));
    assert!(allows(&ps, &fe, &web, Protocol::Udp, 5005, &ns));
    assert!(!allows(&ps, &other, &web, Protocol::Tcp, 80, &ns));
    assert!(!allows(&ps, &fe_elsewhere, &web, Protocol::Tcp, 80, &ns));
    assert!(
        allows(&ps, &web, &other, Protocol::Tcp, 80, &ns),
        "other is not isolated"
    );
    // The guard drops ssh to 10/8 but not to its exception.
    assert!(!allows(&ps, &other, &far, Protocol::Tcp, 22, &ns));
    assert!(allows(&ps, &other, &fe, Protocol::Tcp, 22, &ns));
}

#[test]
fn empty_lists_default_as_in_kubernetes() {
    let p = &yaml("name: a\npodSelector: {}\ningress: []\negress: []\n").unwrap()[0];
    assert_eq!(
        p.types,
        vec![Direction::Ingress],
        "an empty egress list is none"
    );
    let p = &yaml("name: a\npodSelector: {}\npolicyTypes: []\n").unwrap()[0];
    assert_eq!(p.types, vec![Direction::Ingress]);
    let p = &yaml("name: a\npodSelector: {}\npolicyTypes: [Egress]\ningress: [{}]\n").unwrap()[0];
    assert_eq!(p.types, vec![Direction::Egress]);
    assert!(
        p.ingress.is_empty(),
        "rules of a direction not applied are ignored"
    );
}

#[test]
fn records_no_agent_would_write_are_found_out() {
    let good = yaml(K8S).unwrap().remove(0);
    assert_eq!(good.problem(), None, "what the parser makes passes");
    let mut bad = good.clone();
    bad.egress[0].ports[0].port = Some(Port::Range {
        first: 90,
        last: 80,
    });
    assert!(bad.problem().unwrap().contains("90-80"));
    let mut bad = good.clone();
    bad.ingress[0].peers = Some(vec![]);
    assert!(bad.problem().is_some());
    let mut bad = good.clone();
    bad.selector
        .match_labels
        .insert("bad key!".into(), "x".into());
    assert!(bad.problem().is_some());
    let mut bad = good;
    bad.types = vec![Direction::Ingress];
    assert!(
        bad.problem().is_some(),
        "egress rules of a direction not applied"
    );
}
