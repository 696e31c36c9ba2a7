//! Our masquerade table: the JSON handed to `nft`, pinned, and the diff
//! against what the kernel lists.

use std::collections::{BTreeMap, BTreeSet};

use muslin_plan::nft::{
    diff, parse_observed, Masquerade, NftChange, NftFamily, NftNetwork, NftObserved,
};

use crate::common::{ip, net};
use crate::golden;

fn masquerade() -> Masquerade {
    Masquerade {
        pod_cidr: net("10.244.0.0/16"),
        enabled: true,
        // The IPv6 address has no place in the `ip` table's set.
        nodes: [
            "192.168.10.11",
            "192.168.10.12",
            "192.168.20.13",
            "fd00::11",
        ]
        .into_iter()
        .map(ip)
        .collect(),
        networks: vec![],
        vxlan_port: 4789,
        wireguard: false,
    }
}

fn with_networks() -> Masquerade {
    let net = |name: &str, id: u16, subnet: &str, isolated: bool, reach: bool| NftNetwork {
        name: name.into(),
        subnets: vec![subnet.parse().unwrap()],
        group: 77_000 + u32::from(id),
        mark: u32::from(id) << 20,
        zone: id,
        isolated,
        reach,
        dns: None,
    };
    Masquerade {
        networks: vec![
            net("red", 1, "10.50.0.0/16", false, true),
            net("blue", 2, "10.50.0.0/16", false, false),
            net("dark", 3, "10.244.128.0/20", true, false),
        ],
        ..masquerade()
    }
}

fn pretty(c: &NftChange) -> String {
    let v: serde_json::Value = serde_json::from_str(&c.to_json()).unwrap();
    format!("{}\n", serde_json::to_string_pretty(&v).unwrap())
}

#[test]
fn golden_load() {
    golden::check("nft-load-ip", &pretty(&NftChange::Load(masquerade())));
    let v6 = Masquerade {
        pod_cidr: net("fd00:244::/56"),
        ..masquerade()
    };
    golden::check("nft-load-ip6", &pretty(&NftChange::Load(v6)));
}

/// Encrypted, the networks' VXLAN between nodes goes into WireGuard
/// (marked in a route chain on the way out) and is admitted from it
/// (marked, for rp_filter to look up the WireGuard table).
#[test]
fn golden_load_with_networks_through_wireguard() {
    let m = Masquerade {
        wireguard: true,
        ..with_networks()
    };
    golden::check(
        "nft-load-networks-wireguard",
        &pretty(&NftChange::Load(m.clone())),
    );
    let chains = m.chains();
    assert_eq!(
        chains["networks_raw"][0],
        "muslin v1 vxlan through wireguard in"
    );
    assert_eq!(chains["wireguard_out"].len(), 1);
    // Without networks there is no VXLAN to carry.
    let plain = Masquerade {
        wireguard: true,
        ..masquerade()
    };
    assert!(!plain.chains().contains_key("wireguard_out"));
}

/// Networks: marks and zones from their interfaces' groups, drops between
/// them counted, masquerade per network, and replies' marks restored.
#[test]
fn golden_load_with_networks() {
    golden::check(
        "nft-load-networks",
        &pretty(&NftChange::Load(with_networks())),
    );
    let m = with_networks();
    let chains = m.chains();
    assert_eq!(
        chains.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "network_1",
            "network_2",
            "network_3",
            "networks_default_pods",
            "networks_raw",
            "networks_restore",
            "postrouting",
            "tunnel_guard"
        ]
    );
    // The default network's rules are as they were without networks.
    assert!(chains["postrouting"].ends_with(&masquerade().tags()));
    // Loaded, the table converges; a network more, it is loaded again.
    let mut seen = loaded(&m);
    for (c, tags) in &chains {
        seen.rules.insert(c.to_string(), tags.clone());
    }
    assert_eq!(diff(&seen, &m), []);
    let mut fewer = m.clone();
    fewer.networks.pop();
    assert_eq!(diff(&seen, &fewer), [NftChange::Load(fewer.clone())]);
    // Masquerade off, networks on: the table stays, without masquerade.
    let off = Masquerade {
        enabled: false,
        ..m.clone()
    };
    assert!(matches!(diff(&seen, &off)[..], [NftChange::Load(_)]));
    assert!(!off.chains()["postrouting"]
        .iter()
        .any(|t| t.ends_with("masquerade") || t.contains("masquerade 10.244")));
}

#[test]
fn counters_are_read_by_rule_tag() {
    let listing = r#"{"nftables": [
        {"table": {"family": "ip", "name": "muslin", "handle": 1}},
        {"chain": {"family": "ip", "table": "muslin", "name": "networks_forward", "handle": 1}},
        {"rule": {"family": "ip", "table": "muslin", "chain": "networks_forward", "handle": 2,
                  "comment": "t1", "expr": [{"counter": {"packets": 7, "bytes": 420}}, {"drop": null}]}}
    ]}"#;
    let o = parse_observed(listing).unwrap();
    assert_eq!(o.counters["t1"], 7);
    assert_eq!(o.rules["networks_forward"], ["t1"]);
}

#[test]
fn golden_small_changes() {
    let family = NftFamily::Ip;
    golden::check(
        "nft-add-nodes-ip",
        &pretty(&NftChange::AddNodes {
            family,
            nodes: vec![ip("192.168.20.14")],
        }),
    );
    golden::check(
        "nft-delete-nodes-ip",
        &pretty(&NftChange::DeleteNodes {
            family,
            nodes: vec![ip("192.168.10.12")],
        }),
    );
    golden::check(
        "nft-delete-table-ip6",
        &pretty(&NftChange::DeleteTable(NftFamily::Ip6)),
    );
}

/// What the kernel lists once `masquerade()` was loaded.
fn loaded(m: &Masquerade) -> NftObserved {
    let set = m
        .nodes
        .iter()
        .filter(|a| a.is_ipv4())
        .map(ToString::to_string)
        .collect();
    NftObserved {
        exists: true,
        rules: m.chains(),
        sets: BTreeMap::from([("nodes".to_string(), set)]),
        counters: BTreeMap::new(),
    }
}

#[test]
fn same_table_needs_nothing() {
    assert_eq!(diff(&loaded(&masquerade()), &masquerade()), []);
}

#[test]
fn one_node_more_or_less_is_one_element_change() {
    let have = loaded(&masquerade());
    let mut more = masquerade();
    more.nodes.insert(ip("192.168.20.14"));
    assert_eq!(
        diff(&have, &more),
        [NftChange::AddNodes {
            family: NftFamily::Ip,
            nodes: vec![ip("192.168.20.14")],
        }]
    );
    let mut less = masquerade();
    less.nodes.remove(&ip("192.168.10.12"));
    let d = diff(&have, &less);
    assert_eq!(
        d,
        [NftChange::DeleteNodes {
            family: NftFamily::Ip,
            nodes: vec![ip("192.168.10.12")],
        }]
    );
    assert_eq!(
        d[0].to_string(),
        "delete element ip muslin nodes { 192.168.10.12 }"
    );
}

#[test]
fn other_pod_cidr_or_missing_table_is_a_load() {
    let mut other = masquerade();
    other.pod_cidr = net("10.245.0.0/16");
    assert_eq!(
        diff(&loaded(&masquerade()), &other),
        [NftChange::Load(other)]
    );
    assert_eq!(
        diff(&NftObserved::default(), &masquerade()),
        [NftChange::Load(masquerade())]
    );
    // A table someone emptied is reloaded too.
    let mut gutted = loaded(&masquerade());
    gutted.sets.clear();
    assert_eq!(
        diff(&gutted, &masquerade()),
        [NftChange::Load(masquerade())]
    );
}

#[test]
fn without_masquerade_the_table_keeps_its_tunnel_guard() {
    let off = Masquerade {
        enabled: false,
        ..masquerade()
    };
    assert!(off.networks.is_empty());
    let chains = off.chains();
    assert!(chains["postrouting"].is_empty());
    assert_eq!(chains["tunnel_guard"].len(), 2, "VXLAN and WireGuard");
    assert_eq!(
        diff(&loaded(&masquerade()), &off),
        [NftChange::Load(off.clone())]
    );
    assert_eq!(
        diff(&NftObserved::default(), &off),
        [NftChange::Load(off.clone())]
    );
    assert_eq!(diff(&loaded(&off), &off), []);
}

/// `nft -j list table ip muslin` after loading `nft-load-ip.txt` and
/// applying the two element changes into a throwaway namespace (see
/// tests/nft-roundtrip.sh): the real kernel's listing reads back as the
/// table we asked for.
#[test]
fn real_listing_round_trips() {
    let listing = include_str!("../fixtures/nft-list-table.json");
    let have = parse_observed(listing).unwrap();
    let mut want = masquerade();
    want.nodes.insert(ip("192.168.20.14"));
    want.nodes.remove(&ip("192.168.10.12"));
    assert_eq!(diff(&have, &want), []);
    assert_eq!(
        have.sets["nodes"],
        ["192.168.10.11", "192.168.20.13", "192.168.20.14"]
            .into_iter()
            .map(String::from)
            .collect::<BTreeSet<_>>()
    );
}

#[test]
fn real_ip6_listing_round_trips() {
    let listing = include_str!("../fixtures/nft-list-table-ip6.json");
    let want = Masquerade {
        pod_cidr: net("fd00:244::/56"),
        ..masquerade()
    };
    assert_eq!(diff(&parse_observed(listing).unwrap(), &want), []);
}

/// Shapes nft lists that our own table does not have today: an empty
/// set, elements with attributes, and addresses written another way.
#[test]
fn listing_shapes_nft_uses() {
    let listing = r#"{"nftables": [
        {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
        {"table": {"family": "ip6", "name": "muslin", "handle": 1}},
        {"set": {"family": "ip6", "name": "empty", "table": "muslin", "type": "ipv6_addr", "handle": 1}},
        {"set": {"family": "ip6", "name": "nodes", "table": "muslin", "type": "ipv6_addr", "handle": 2,
                 "elem": ["fd00:0:0::1", {"elem": {"val": "fd00::2", "timeout": 3600, "expires": 3599}}]}},
        {"set": {"family": "ip6", "name": "nodes", "table": "other", "type": "ipv6_addr", "handle": 3,
                 "elem": ["fd00::3"]}}
    ]}"#;
    let o = parse_observed(listing).unwrap();
    assert!(o.exists);
    assert_eq!(o.sets["empty"], BTreeSet::new());
    assert_eq!(
        o.sets["nodes"],
        BTreeSet::from(["fd00::1".to_string(), "fd00::2".to_string()])
    );
    assert!(parse_observed("{}").is_err());
    assert!(parse_observed("not json").is_err());
}
