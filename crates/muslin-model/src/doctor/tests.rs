//! Fixtures shared by the checks' unit tests, and the tests of the checks
//! that judge the agent's view.

use super::*;
use crate::api::{ClusterStatus, NodeStatus, PeerStatus};

/// A node's status with a cluster of `peers` (name, address), itself first.
pub(crate) fn status(me: (&str, &str), peers: &[(&str, &str)]) -> NodeStatus {
    let node = |(n, a): (&str, &str), path: &str| PeerStatus {
        name: n.into(),
        address: Some(a.parse().unwrap()),
        blocks: vec![],
        path: path.into(),
        relay: None,
        path_why: None,
        alive: true,
        data_path: if path == "self" {
            "-".into()
        } else {
            "ok".into()
        },
        path_mtu: Some(1500),
        reached: vec![a.parse().unwrap()],
        endpoints: 0,
        mtu: 1500,
        clock_skew_ms: None,
    };
    let mut nodes = vec![node(me, "self")];
    nodes.extend(peers.iter().map(|p| node(*p, "routed")));
    NodeStatus {
        node_name: me.0.into(),
        version: "0.1.0".into(),
        mtu: 1450,
        blocks: vec![],
        endpoints: vec![],
        can_claim_more: true,
        cluster: Some(Box::new(ClusterStatus {
            underlay_if: "eth1".into(),
            underlay_address: Some(me.1.parse().unwrap()),
            underlay_reason:
                "reaches join peer 192.168.56.11 (route lookup, then ICMP echo in 0.1 ms)".into(),
            underlay_mtu: 1500,
            backend: "auto".into(),
            synced: true,
            nodes,
            datastore: "gossip".into(),
            underlay_addresses: vec![me.1.parse().unwrap()],
            pod_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            ..Default::default()
        })),
        dns: None,
    }
}

/// A host with the addresses of README's Install hosts.
pub(crate) fn host() -> HostFacts {
    HostFacts {
        kernel_release: "6.18.0".into(),
        addresses: vec![
            ("eth0".into(), "10.0.2.15/24".parse().unwrap()),
            ("eth1".into(), "192.168.56.12/24".parse().unwrap()),
        ],
        features: KernelFeatures {
            vxlan: Some(true),
            wireguard: Some(false),
            nftables: Some(true),
        },
        ..Default::default()
    }
}

fn of<'a>(f: &'a [Finding], check: &str) -> Vec<&'a Finding> {
    f.iter().filter(|x| x.check == check).collect()
}

#[test]
fn every_check_reports_in_order_even_without_the_agent() {
    let f = diagnose(
        &host(),
        Err("connecting to /run/muslin/agent.sock: refused"),
    );
    let names: Vec<&str> = f.iter().map(|x| x.check.as_str()).collect();
    let mut dedup = names.clone();
    dedup.dedup();
    assert_eq!(dedup, CHECKS, "one or more findings per check, in order");
    assert_eq!(f[0].level, Level::Problem);
    assert!(f[0].saw.contains("refused"), "{}", f[0].saw);
    assert_eq!(worst(&f), Level::Problem);
    assert!(f.iter().all(|x| (x.level == Level::Ok) == x.fix.is_empty()));
}

#[test]
fn a_healthy_node_is_ok_and_says_why_its_address() {
    let mut h = host();
    let s = status(("h2", "192.168.56.12"), &[("h1", "192.168.56.11")]);
    let f = diagnose(&h, Ok(&s));
    let u = of(&f, underlay::CHECK);
    assert_eq!(u[0].level, Level::Ok);
    assert!(u[0].saw.contains("192.168.56.12 (eth1)"), "{}", u[0].saw);
    assert!(u[0].saw.contains("reaches join peer"), "{}", u[0].saw);
    assert_eq!(of(&f, underlay::DUPLICATE)[0].level, Level::Ok);
    // Two candidates, chosen without verification and no peer yet.
    h.addresses
        .push(("eth2".into(), "172.16.0.2/24".parse().unwrap()));
    let mut lone = status(("h1", "10.0.2.15"), &[]);
    let c = lone.cluster.as_mut().unwrap();
    c.underlay_addresses = vec!["10.0.2.15".parse().unwrap(), "172.16.0.2".parse().unwrap()];
    c.underlay_reason = "first node (no join peers): first-found picked 10.0.2.15 on eth0".into();
    let u = underlay::check(&h, Ok(&lone));
    assert_eq!(u[0].level, Level::Warning, "{u:?}");
    assert!(u[0].saw.contains("2 candidate addresses"), "{}", u[0].saw);
}

#[test]
fn nodes_claiming_one_address_are_a_problem_naming_them() {
    let s = status(
        ("h1", "10.0.2.15"),
        &[("h2", "10.0.2.15"), ("h3", "192.168.56.13")],
    );
    let f = underlay::check(&host(), Ok(&s));
    let d = &f[1];
    assert_eq!(d.check, underlay::DUPLICATE);
    assert_eq!(d.level, Level::Problem);
    assert!(d.saw.contains("h1, h2 all claim 10.0.2.15"), "{}", d.saw);
}

#[test]
fn a_missing_kernel_feature_names_the_fallback() {
    let mut s = status(("h1", "192.168.56.11"), &[]);
    let f = features::check(&host(), Ok(&s));
    assert!(f.iter().all(|x| x.level == Level::Ok), "{f:?}");
    s.cluster.as_mut().unwrap().wireguard = Some(crate::api::WireguardStatus {
        device: "msl-wg0".into(),
        uapi: "msl-wg0".into(),
        path: "userspace (kernel WireGuard not available)".into(),
        public_key: String::new(),
        port: 51820,
        peers: vec![],
    });
    let f = features::check(&host(), Ok(&s));
    let wg = f.iter().find(|x| x.saw.starts_with("WireGuard")).unwrap();
    assert_eq!(wg.level, Level::Warning);
    assert!(wg.saw.contains("userspace"), "{}", wg.saw);
    let mut h = host();
    h.features.vxlan = Some(false);
    s.cluster.as_mut().unwrap().backend = "vxlan".into();
    assert_eq!(worst(&features::check(&h, Ok(&s))), Level::Problem);
}
