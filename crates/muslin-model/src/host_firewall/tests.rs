//! Decisions against rulesets captured from the real tools
//! (`testdata/host_firewall/regen.sh` makes them).

use super::*;

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!("../../testdata/host_firewall/", $name))
    };
}

const EMPTY_NFT: &str = fixture!("legacy-docker.json");

fn nft(text: &str) -> Value {
    serde_json::from_str(text).expect("fixture is JSON")
}

fn observed(nft_json: &str, iptables: &[(Backend, &str)]) -> Observed {
    Observed {
        nft: nft(nft_json),
        iptables: iptables
            .iter()
            .map(|(backend, save)| IptablesForward {
                backend: *backend,
                family: Family::Ip,
                save: save.to_string(),
            })
            .collect(),
    }
}

fn cidrs(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|c| c.parse().unwrap()).collect()
}

fn pod() -> Vec<IpNet> {
    cidrs(&["10.244.0.0/16"])
}

fn chain(backend: Backend, family: Family, table: &str, name: &str) -> Chain {
    Chain {
        backend,
        family,
        table: table.into(),
        name: name.into(),
    }
}

fn inserts(chain: &Chain, cidr: &str, cause: DropCause) -> Vec<Action> {
    [Direction::Source, Direction::Destination]
        .map(|direction| Action::Insert {
            chain: chain.clone(),
            rule: PodRule {
                direction,
                cidr: cidr.parse().unwrap(),
            },
            cause: cause.clone(),
        })
        .to_vec()
}

fn args(words: &str) -> Vec<String> {
    words.split(' ').map(|w| w.replace('_', " ")).collect()
}

#[test]
fn iptables_nft_host_with_docker_policy_gets_both_accepts_through_iptables_nft() {
    let o = observed(
        fixture!("iptables-nft-docker.json"),
        &[(
            Backend::IptablesNft,
            fixture!("iptables-nft-docker.iptables-nft"),
        )],
    );
    let fwd = chain(Backend::IptablesNft, Family::Ip, "filter", "FORWARD");
    let actions = missing_accepts(&o, &pod()).unwrap();
    assert_eq!(actions, inserts(&fwd, "10.244.0.0/16", DropCause::Policy));
    assert_eq!(
        actions[0].iptables_command(),
        Some((
            "iptables-nft",
            args("-w 5 -I FORWARD 1 -s 10.244.0.0/16 -m comment --comment muslin:_pod_traffic -j ACCEPT")
        ))
    );
    assert_eq!(actions[0].nft_command(), None);
    assert_eq!(fwd.to_string(), "iptables-nft table filter chain FORWARD");
}

#[test]
fn iptables_nft_forward_chain_is_found_in_the_nft_ruleset() {
    let docker = nft(fixture!("iptables-nft-docker.json"));
    assert_eq!(iptables_nft_families(&docker).unwrap(), [Family::Ip]);
    assert_eq!(
        iptables_nft_families(&nft(fixture!("native-drop.json"))).unwrap(),
        []
    );
}

#[test]
fn legacy_host_with_docker_policy_gets_both_accepts_through_iptables_legacy() {
    let o = observed(
        EMPTY_NFT,
        &[(
            Backend::IptablesLegacy,
            fixture!("legacy-docker.iptables-legacy"),
        )],
    );
    let fwd = chain(Backend::IptablesLegacy, Family::Ip, "filter", "FORWARD");
    let actions = missing_accepts(&o, &pod()).unwrap();
    assert_eq!(actions, inserts(&fwd, "10.244.0.0/16", DropCause::Policy));
    assert_eq!(
        actions[1].iptables_command(),
        Some((
            "iptables-legacy",
            args("-w 5 -I FORWARD 1 -d 10.244.0.0/16 -m comment --comment muslin:_pod_traffic -j ACCEPT")
        ))
    );
}

#[test]
fn native_inet_chain_with_policy_drop_gets_tagged_nft_rules_at_the_top() {
    let o = observed(fixture!("native-drop.json"), &[]);
    let fwd = chain(Backend::Nftables, Family::Inet, "filter", "forward");
    let actions = missing_accepts(&o, &pod()).unwrap();
    assert_eq!(actions, inserts(&fwd, "10.244.0.0/16", DropCause::Policy));
    assert_eq!(
        actions[0].nft_command().unwrap(),
        json!({"insert": {"rule": {
            "family": "inet", "table": "filter", "chain": "forward",
            "comment": "muslin: pod traffic",
            "expr": [
                {"match": {"op": "==",
                    "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                    "right": {"prefix": {"addr": "10.244.0.0", "len": 16}}}},
                {"accept": null},
            ],
        }}})
    );
    assert_eq!(actions[0].iptables_command(), None);
    assert_eq!(fwd.to_string(), "nft table inet filter chain forward");
}

#[test]
fn chains_that_accept_need_nothing() {
    for o in [
        observed(fixture!("native-accept.json"), &[]),
        observed(
            fixture!("iptables-nft-accept.json"),
            &[(
                Backend::IptablesNft,
                fixture!("iptables-nft-accept.iptables-nft"),
            )],
        ),
        observed(
            EMPTY_NFT,
            &[(Backend::IptablesLegacy, "-P FORWARD ACCEPT\n")],
        ),
        observed(EMPTY_NFT, &[]),
    ] {
        assert_eq!(missing_accepts(&o, &pod()).unwrap(), [], "{o:?}");
    }
}

#[test]
fn rules_already_in_place_need_nothing() {
    for o in [
        observed(
            fixture!("iptables-nft-ours.json"),
            &[(
                Backend::IptablesNft,
                fixture!("iptables-nft-ours.iptables-nft"),
            )],
        ),
        observed(
            fixture!("legacy-ours.json"),
            &[(
                Backend::IptablesLegacy,
                fixture!("legacy-ours.iptables-legacy"),
            )],
        ),
        observed(fixture!("native-ours.json"), &[]),
    ] {
        assert_eq!(missing_accepts(&o, &pod()).unwrap(), [], "{o:?}");
    }
}

#[test]
fn our_own_table_is_never_considered() {
    let o = observed(fixture!("own-table.json"), &[]);
    assert_eq!(missing_accepts(&o, &pod()).unwrap(), []);
    assert_eq!(removals(&o).unwrap(), []);
}

#[test]
fn an_unconditional_reject_in_an_accepting_chain_is_a_drop() {
    let o = observed(fixture!("native-reject-last.json"), &[]);
    let fwd = chain(Backend::Nftables, Family::Inet, "filter", "forward");
    let actions = missing_accepts(&o, &pod()).unwrap();
    let handle = o.nft["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["rule"]["handle"].as_u64())
        .next_back()
        .unwrap();
    assert_eq!(
        actions,
        inserts(
            &fwd,
            "10.244.0.0/16",
            DropCause::Rule(format!("handle {handle}"))
        )
    );
}

#[test]
fn an_accept_below_a_drop_rule_does_not_count() {
    let save = "-P FORWARD ACCEPT\n\
                -A FORWARD -s 10.244.0.0/16 -m comment --comment \"muslin: pod traffic\" -j ACCEPT\n\
                -A FORWARD -m comment --comment \"deny all\" -j DROP\n\
                -A FORWARD -d 10.244.0.0/16 -m comment --comment \"muslin: pod traffic\" -j ACCEPT\n";
    let o = observed(EMPTY_NFT, &[(Backend::IptablesLegacy, save)]);
    let fwd = chain(Backend::IptablesLegacy, Family::Ip, "filter", "FORWARD");
    let cause = DropCause::Rule(r#"-A FORWARD -m comment --comment "deny all" -j DROP"#.into());
    assert_eq!(
        missing_accepts(&o, &pod()).unwrap(),
        inserts(&fwd, "10.244.0.0/16", cause)[1..]
    );
}

#[test]
fn every_host_firewall_in_the_path_gets_its_own_accepts() {
    let o = observed(
        fixture!("iptables-nft-docker.json"),
        &[
            (
                Backend::IptablesNft,
                fixture!("iptables-nft-docker.iptables-nft"),
            ),
            (
                Backend::IptablesLegacy,
                fixture!("legacy-docker.iptables-legacy"),
            ),
        ],
    );
    let by: Vec<Backend> = missing_accepts(&o, &pod())
        .unwrap()
        .iter()
        .map(|a| a.chain().backend)
        .collect();
    assert_eq!(
        by,
        [
            Backend::IptablesNft,
            Backend::IptablesNft,
            Backend::IptablesLegacy,
            Backend::IptablesLegacy
        ]
    );
}

#[test]
fn each_block_gets_its_rules_and_only_chains_of_its_family() {
    let blocks = cidrs(&["10.91.0.0/24", "10.91.1.5/24", "fd00:244::/64"]);
    let native = observed(fixture!("native-drop.json"), &[]);
    let rules: Vec<String> = missing_accepts(&native, &blocks)
        .unwrap()
        .iter()
        .map(|a| match a {
            Action::Insert { rule, .. } => rule.to_string(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        rules,
        [
            "ip saddr 10.91.0.0/24 accept",
            "ip daddr 10.91.0.0/24 accept",
            "ip saddr 10.91.1.0/24 accept",
            "ip daddr 10.91.1.0/24 accept",
            "ip6 saddr fd00:244::/64 accept",
            "ip6 daddr fd00:244::/64 accept",
        ]
    );
    let legacy = observed(
        EMPTY_NFT,
        &[(
            Backend::IptablesLegacy,
            fixture!("legacy-docker.iptables-legacy"),
        )],
    );
    assert_eq!(missing_accepts(&legacy, &blocks).unwrap().len(), 4);
}

#[test]
fn removals_name_exactly_our_rules() {
    let native = observed(fixture!("native-ours.json"), &[]);
    let fwd = chain(Backend::Nftables, Family::Inet, "filter", "forward");
    let del = removals(&native).unwrap();
    assert_eq!(
        del,
        [4, 5].map(|h| Action::Delete {
            chain: fwd.clone(),
            rule: RuleRef::Handle(h)
        })
    );
    assert_eq!(
        del[0].nft_command().unwrap(),
        json!({"delete": {"rule": {"family": "inet", "table": "filter", "chain": "forward", "handle": 4}}})
    );

    let legacy = observed(
        fixture!("legacy-ours.json"),
        &[(
            Backend::IptablesLegacy,
            fixture!("legacy-ours.iptables-legacy"),
        )],
    );
    let cmds: Vec<_> = removals(&legacy)
        .unwrap()
        .iter()
        .filter_map(Action::iptables_command)
        .collect();
    assert_eq!(
        cmds,
        [
            ("iptables-legacy", args("-w 5 -D FORWARD -s 10.244.0.0/16 -m comment --comment muslin:_pod_traffic -j ACCEPT")),
            ("iptables-legacy", args("-w 5 -D FORWARD -d 10.244.0.0/16 -m comment --comment muslin:_pod_traffic -j ACCEPT")),
        ]
    );
    for host_only in [
        fixture!("iptables-nft-docker.json"),
        fixture!("native-drop.json"),
        fixture!("native-reject-last.json"),
    ] {
        assert_eq!(removals(&observed(host_only, &[])).unwrap(), []);
    }
}

#[test]
fn something_else_than_a_ruleset_is_an_error() {
    let o = Observed {
        nft: json!({"error": "x"}),
        iptables: Vec::new(),
    };
    assert_eq!(missing_accepts(&o, &pod()), Err(ParseError::NotRuleset));
}

#[test]
fn doctor_sees_a_drop_policy_covered_by_our_accepts_or_not() {
    let legacy = chain(Backend::IptablesLegacy, Family::Ip, "filter", "FORWARD");
    let ours = observed(
        fixture!("legacy-ours.json"),
        &[(
            Backend::IptablesLegacy,
            fixture!("legacy-ours.iptables-legacy"),
        )],
    );
    assert_eq!(
        pod_drops(&ours, &pod()).unwrap(),
        [PodDrop {
            chain: legacy.clone(),
            cause: DropCause::Policy,
            covered: true
        }]
    );
    let docker = observed(
        EMPTY_NFT,
        &[(
            Backend::IptablesLegacy,
            fixture!("legacy-docker.iptables-legacy"),
        )],
    );
    let d = pod_drops(&docker, &pod()).unwrap();
    assert_eq!((d.len(), d[0].covered), (1, false));
    // Covered for one pod CIDR is not covered for two.
    let d = pod_drops(&ours, &cidrs(&["10.244.0.0/16", "10.245.0.0/16"])).unwrap();
    assert!(!d[0].covered, "{d:?}");
    let native = observed(fixture!("native-ours.json"), &[]);
    assert!(pod_drops(&native, &pod()).unwrap()[0].covered);
    let native = observed(fixture!("native-drop.json"), &[]);
    assert!(!pod_drops(&native, &pod()).unwrap()[0].covered);
}

#[test]
fn doctor_sees_a_foreign_drop_of_pod_addresses_ahead_of_our_accepts() {
    let legacy = chain(Backend::IptablesLegacy, Family::Ip, "filter", "FORWARD");
    let drop = "-A FORWARD -s 10.244.0.0/16 -j DROP";
    let save = format!(
        "-P FORWARD ACCEPT\n{drop}\n\
         -A FORWARD -s 10.244.0.0/16 -m comment --comment \"muslin: pod traffic\" -j ACCEPT\n\
         -A FORWARD -d 10.244.0.0/16 -m comment --comment \"muslin: pod traffic\" -j ACCEPT\n"
    );
    let o = observed(EMPTY_NFT, &[(Backend::IptablesLegacy, &save)]);
    assert_eq!(
        pod_drops(&o, &pod()).unwrap(),
        [PodDrop {
            chain: legacy,
            cause: DropCause::PodTraffic(drop.into()),
            covered: false
        }]
    );
    // The agent leaves the operator's rule in force.
    assert_eq!(missing_accepts(&o, &pod()).unwrap(), []);
    // Part of the pod network counts; a range beside it does not.
    let part = "-P FORWARD ACCEPT\n-A FORWARD -d 10.244.7.0/24 -j REJECT\n";
    let o = observed(EMPTY_NFT, &[(Backend::IptablesLegacy, part)]);
    assert!(!pod_drops(&o, &pod()).unwrap()[0].covered);
    let beside = "-P FORWARD ACCEPT\n-A FORWARD -d 10.245.0.0/16 -j DROP\n";
    let o = observed(EMPTY_NFT, &[(Backend::IptablesLegacy, beside)]);
    assert_eq!(pod_drops(&o, &pod()).unwrap(), []);
}

#[test]
fn doctor_reads_an_nft_drop_of_pod_addresses() {
    let ruleset = json!({"nftables": [
        {"chain": {"family": "ip", "table": "fw", "name": "fwd", "handle": 1,
                   "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
        {"rule": {"family": "ip", "table": "fw", "chain": "fwd", "handle": 4, "expr": [
            {"match": {"op": "==",
                       "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                       "right": {"prefix": {"addr": "10.244.0.0", "len": 16}}}},
            {"counter": {"packets": 0, "bytes": 0}},
            {"drop": null}]}},
    ]});
    let o = Observed {
        nft: ruleset,
        iptables: vec![],
    };
    let d = pod_drops(&o, &pod()).unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].cause, DropCause::PodTraffic("handle 4".into()));
    assert!(!d[0].covered);
    assert_eq!(d[0].cause.to_string(), "rule `handle 4` drops pod traffic");
}
