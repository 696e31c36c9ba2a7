use super::*;
use crate::cluster::{BlockClaim, PathHealth, PeerView};
use crate::dataplane::{desired, Backend, Params, Path, Underlay, VxlanSettings};

const K1: &str = "YLmSOmZ0XAmLqzQDsiUh5dBHOiF+5EFaw9R8JuLukFs=";
const K2: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
const K3: &str = "bhQRfzgb2jX3rNHIGczsfUD1dJHRYh3Yv05uk/6gSCI=";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// h1, h2 on one segment, h3 on another, each with a block; all encrypt
/// except the names in `clear`.
fn view(clear: &[&str]) -> ClusterView {
    let mut v = ClusterView::default();
    for (i, (n, a, p, b)) in [
        ("h1", "192.168.10.11", "192.168.10.0/24", "10.244.1.0/24"),
        ("h2", "192.168.10.12", "192.168.10.0/24", "10.244.2.0/24"),
        ("h3", "192.168.20.11", "192.168.20.0/24", "10.244.3.0/24"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut rec = crate::cluster::test_record(n, a, p);
        rec.capabilities.push(CAPABILITY.into());
        if !clear.contains(&n) {
            rec.wireguard = Some(WireguardEnd {
                public_key: [K1, K2, K3][i].into(),
                port: DEFAULT_PORT,
            });
        }
        let mut pv = PeerView {
            record: Some(rec.into()),
            alive: true,
            ..Default::default()
        };
        pv.claims.insert(net(b), BlockClaim { claimed_at_ms: 1 });
        v.nodes.insert(n.into(), pv);
    }
    v
}

fn plane(
    v: &ClusterView,
    health: &crate::peer_map::PeerMap<PathHealth>,
) -> crate::dataplane::Desired {
    let local = Underlay {
        ifname: "eth1".into(),
        address: ip("192.168.10.11"),
        prefix: net("192.168.10.0/24"),
        mtu: 1500,
    };
    desired(
        v,
        &Params {
            me: "h1",
            backend: Backend::Auto,
            local: &local,
            vx: VxlanSettings { vni: 1, port: 4789 },
            vtep_mac: [2; 6],
            pod_cidr: net("10.244.0.0/16"),
            local_addresses: &[],
            path_mtu: &BTreeMap::new(),
            dev: crate::dataplane::VXLAN_DEV,
            table: crate::dataplane::MAIN_TABLE,
            pod_table: Some(crate::dataplane::POD_TABLE),
            tunnel_always: false,
            health,
            relays: &BTreeMap::new(),
            encrypt: true,
            wg_kind: "tun",
        },
    )
}

#[test]
fn keys_are_checked_as_base64_of_32_bytes() {
    assert!(valid_key(K1) && valid_key(K2));
    for bad in [
        "",
        "x",
        &K1[..43],
        &format!("{K1}="),
        "YLmSOmZ0XAmLqzQDsiUh5dBHOiF+5EFaw9R8JuLukFt=",
        "YLmSOmZ0XAmLqzQDsiUh5dBHOiF+5EFaw9R8JuLuk-s=",
    ] {
        assert!(!valid_key(bad), "{bad}");
    }
}

#[test]
fn every_peer_is_reached_through_the_tunnel_with_its_blocks_and_node_address() {
    let d = plane(&view(&[]), &crate::peer_map::PeerMap::new());
    assert!(d.vxlan.is_none(), "no VXLAN device when encrypting");
    let w = d.wireguard.as_ref().unwrap();
    assert_eq!(w.mtu, 1440);
    assert_eq!(w.address, Some(ip("10.244.1.0")));
    assert_eq!(d.paths["h2"], Path::Wireguard);
    assert_eq!(d.paths["h3"], Path::Wireguard);
    let h3 = w.peers.iter().find(|p| p.name == "h3").unwrap();
    assert_eq!(h3.endpoint, "192.168.20.11:51820".parse().unwrap());
    assert_eq!(h3.public_key, K3);
    assert_eq!(
        h3.allowed_ips,
        vec![net("10.244.3.0/24"), net("192.168.20.11/32")]
    );
    // Blocks and the peer's node address (pods' traffic only) go into the
    // tunnel; the host's own packets leave from the node address.
    let to = |dst: &str| d.routes.iter().find(|r| r.dst == net(dst)).unwrap();
    let r = to("10.244.3.0/24");
    assert_eq!(r.dev, WG_DEV);
    assert_eq!(r.src, Some(ip("192.168.10.11")));
    assert_eq!(r.table, crate::dataplane::MAIN_TABLE);
    let n = to("192.168.20.11/32");
    assert_eq!(
        (n.dev.as_str(), n.table),
        (WG_DEV, crate::dataplane::POD_TABLE)
    );
    // Probes from our tunnel address to theirs.
    let p = to("10.244.3.0/32");
    assert_eq!(p.src, Some(ip("10.244.1.0")));
    assert_eq!(d.pod_rule, Some(net("10.244.0.0/16")));
}

#[test]
fn a_peer_that_does_not_encrypt_gets_no_route_and_is_told_why() {
    let d = plane(&view(&["h3"]), &crate::peer_map::PeerMap::new());
    match &d.paths["h3"] {
        Path::Unreachable(why) => assert!(why.contains("does not encrypt"), "{why}"),
        o => panic!("{o:?}"),
    }
    assert!(d.routes.iter().all(|r| !r.dst.contains(&ip("10.244.3.1"))));
    let w = d.wireguard.unwrap();
    assert!(w.peers.iter().all(|p| p.name != "h3"));
    // A malformed key is refused as firmly.
    let mut v = view(&[]);
    let r = v.nodes.get_mut("h2").unwrap().record_mut().unwrap();
    r.wireguard.as_mut().unwrap().public_key = "not a key".into();
    let d = plane(&v, &crate::peer_map::PeerMap::new());
    assert!(matches!(&d.paths["h2"], Path::Unreachable(w) if w.contains("malformed")));
}

#[test]
fn a_relayed_peer_is_carried_by_the_relay_and_keeps_its_probe_address() {
    let mut v = view(&[]);
    // h1–h3 fails as both report; h2 reaches both.
    let bad = PathHealth {
        ok: false,
        cause: Some("silent".into()),
        path_mtu: None,
    };
    let good = PathHealth {
        ok: true,
        cause: None,
        path_mtu: None,
    };
    let set = |v: &mut ClusterView, n: &str, peer: &str, h: &PathHealth| {
        let r = v.nodes.get_mut(n).unwrap().record_mut().unwrap();
        r.health.insert(peer, h.clone());
        r.capabilities.push(crate::relay::CAPABILITY.into());
    };
    set(&mut v, "h3", "h1", &bad);
    set(&mut v, "h3", "h2", &good);
    set(&mut v, "h2", "h1", &good);
    set(&mut v, "h2", "h3", &good);
    let mine: crate::peer_map::PeerMap<PathHealth> =
        [("h3".to_string(), bad), ("h2".to_string(), good)].into();
    let d = plane(&v, &mine);
    assert!(
        matches!(&d.paths["h3"], Path::Relay(r) if r.via == "h2"),
        "{:?}",
        d.paths
    );
    let w = d.wireguard.unwrap();
    let peer = |n: &str| {
        w.peers
            .iter()
            .find(|p| p.name == n)
            .unwrap()
            .allowed_ips
            .clone()
    };
    assert_eq!(
        peer("h2"),
        vec![
            net("10.244.2.0/24"),
            net("10.244.3.0/24"),
            net("192.168.10.12/32"),
            net("192.168.20.11/32")
        ]
    );
    assert_eq!(peer("h3"), vec![net("10.244.3.0/32")]);
}

#[test]
fn a_clear_node_may_not_join_an_encrypting_cluster() {
    let v = view(&["h1"]);
    let why = join_refusal("h1", &v).unwrap();
    assert!(
        why.contains("h2, h3") && why.contains("encryption = \"wireguard\""),
        "{why}"
    );
    assert_eq!(join_refusal("h1", &view(&["h1", "h2", "h3"])), None);
    // A dead encrypting node does not decide.
    let mut v = view(&["h1", "h2"]);
    v.nodes.get_mut("h3").unwrap().alive = false;
    assert_eq!(join_refusal("h1", &v), None);
}

#[test]
fn settings_parse_and_print() {
    for e in [Encryption::None, Encryption::Wireguard] {
        assert_eq!(e.to_string().parse::<Encryption>().unwrap(), e);
    }
    assert!("ipsec".parse::<Encryption>().is_err());
}

#[test]
fn nodes_sharing_a_key_are_refused_with_the_twin_named() {
    let mut v = view(&[]);
    let r = v.nodes.get_mut("h3").unwrap().record_mut().unwrap();
    r.wireguard.as_mut().unwrap().public_key = K1.into();
    let d = plane(&v, &crate::peer_map::PeerMap::new());
    match &d.paths["h3"] {
        Path::Unreachable(why) => assert!(why.contains("h1 (ours)"), "{why}"),
        o => panic!("{o:?}"),
    }
    assert!(d.wireguard.unwrap().peers.iter().all(|p| p.name != "h3"));
    assert_eq!(d.paths["h2"], Path::Wireguard);
}
