//! The requests and replies as bytes: every message built here is emitted
//! the way the socket would send it and parsed back, so what is checked is
//! what the kernel would read.

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use netlink_packet_wireguard::WireguardTimeSpec;

use super::*;

/// Any family id will do; the kernel's is assigned at module load.
const FAMILY: u16 = 0x1b;

/// Emits `m` as a whole netlink message and parses it back; returns the
/// wire bytes too.
fn wire(m: &WireguardMessage) -> (Vec<u8>, WireguardMessage) {
    let mut genl = GenlMessage::from_payload(m.clone());
    genl.set_resolved_family_id(FAMILY);
    let mut nl = NetlinkMessage::from(genl);
    nl.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    nl.finalize();
    let mut buf = vec![0; nl.buffer_len()];
    nl.serialize(&mut buf);
    assert_eq!(u32::try_from(buf.len()).unwrap(), nl.header.length);
    let back = NetlinkMessage::<GenlMessage<WireguardMessage>>::deserialize(&buf).unwrap();
    assert_eq!(back.header.message_type, FAMILY);
    match back.payload {
        NetlinkPayload::InnerMessage(g) => {
            assert_eq!(g.header.cmd, u8::from(m.cmd));
            (buf, g.payload)
        }
        other => panic!("parsed back as {other:?}"),
    }
}

fn key(n: u8) -> PublicKey {
    let mut k = [n; 32];
    k[0] = 0xa0;
    PublicKey(k)
}

fn spec(n: u8, endpoint: &str, ips: &[&str], keepalive: Option<u16>) -> PeerSpec {
    PeerSpec {
        public_key: key(n),
        endpoint: endpoint.parse().unwrap(),
        allowed_ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
        persistent_keepalive: keepalive,
    }
}

fn peers_of(m: &WireguardMessage) -> &[WireguardPeer] {
    assert_eq!(m.cmd, WireguardCmd::SetDevice);
    assert_eq!(
        m.attributes[0],
        WireguardAttribute::IfName("wg0".into()),
        "every request names the device first"
    );
    match &m.attributes[1] {
        WireguardAttribute::Peers(p) => p,
        other => panic!("want peers, got {other:?}"),
    }
}

fn peer_key(p: &WireguardPeer) -> PublicKey {
    match p.0[0] {
        WireguardPeerAttribute::PublicKey(k) => PublicKey(k),
        ref other => panic!("a peer starts with its key, not {other:?}"),
    }
}

fn flags(p: &WireguardPeer) -> Option<WireguardPeerFlags> {
    p.iter().find_map(|a| match a {
        WireguardPeerAttribute::Flags(f) => Some(*f),
        _ => None,
    })
}

fn ips(p: &WireguardPeer) -> Vec<IpNet> {
    p.iter()
        .flat_map(|a| match a {
            WireguardPeerAttribute::AllowedIps(v) => v.clone(),
            _ => Vec::new(),
        })
        .map(|ip| parse_allowed_ip(&ip).unwrap())
        .collect()
}

#[test]
fn a_small_diff_is_one_message_with_every_field_in_place() {
    let diff = PeerDiff {
        remove: vec![key(9)],
        update: vec![spec(
            1,
            "192.0.2.1:51820",
            &["10.0.1.7/24", "10.9.0.0/16"],
            None,
        )],
        add: vec![spec(
            2,
            "[2001:db8::2]:4500",
            &["fd00:2::5/64", "10.0.2.0/24"],
            Some(25),
        )],
    };
    let msgs = set_peers_messages("wg0", &diff, SET_DEVICE_BUDGET);
    assert_eq!(msgs.len(), 1);
    let (bytes, back) = wire(&msgs[0]);
    assert_eq!(back, msgs[0]);
    let peers = peers_of(&back);
    assert_eq!(
        peers.iter().map(peer_key).collect::<Vec<_>>(),
        vec![key(9), key(1), key(2)],
        "removals, then updates, then additions"
    );

    // Removal: the key and WGPEER_F_REMOVE_ME (1), nothing else.
    assert_eq!(
        peers[0].0,
        vec![
            WireguardPeerAttribute::PublicKey(key(9).0),
            WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe),
        ]
    );
    assert_eq!(flags(&peers[0]).unwrap().bits(), 1);

    // Update: WGPEER_F_REPLACE_ALLOWEDIPS (2), endpoint, keepalive 0 so an
    // unset keepalive turns an old one off, networks without host bits.
    let p = &peers[1];
    assert_eq!(flags(p).unwrap().bits(), 2);
    assert!(p.contains(&WireguardPeerAttribute::Endpoint(
        "192.0.2.1:51820".parse().unwrap()
    )));
    assert!(p.contains(&WireguardPeerAttribute::PersistentKeepalive(0)));
    let WireguardPeerAttribute::AllowedIps(v) = p.last().unwrap() else {
        panic!("allowed IPs last")
    };
    assert_eq!(
        v[0].0,
        vec![
            WireguardAllowedIpAttr::Family(WireguardAddressFamily::Ipv4),
            WireguardAllowedIpAttr::IpAddr(Ipv4Addr::new(10, 0, 1, 0).into()),
            WireguardAllowedIpAttr::Cidr(24),
        ]
    );
    assert_eq!(
        ips(p),
        vec![
            "10.0.1.0/24".parse::<IpNet>().unwrap(),
            "10.9.0.0/16".parse().unwrap()
        ]
    );

    // Addition over IPv6, keepalive set, mixed families.
    let p = &peers[2];
    assert_eq!(flags(p), Some(WireguardPeerFlags::ReplaceAllowedIps));
    assert!(p.contains(&WireguardPeerAttribute::Endpoint(
        "[2001:db8::2]:4500".parse().unwrap()
    )));
    assert!(p.contains(&WireguardPeerAttribute::PersistentKeepalive(25)));
    let WireguardPeerAttribute::AllowedIps(v) = p.last().unwrap() else {
        panic!("allowed IPs last")
    };
    let v6 = v
        .iter()
        .find(|ip| {
            ip.contains(&WireguardAllowedIpAttr::Family(
                WireguardAddressFamily::Ipv6,
            ))
        })
        .unwrap();
    assert!(v6.contains(&WireguardAllowedIpAttr::IpAddr(
        "fd00:2::".parse::<Ipv6Addr>().unwrap().into()
    )));
    assert!(v6.contains(&WireguardAllowedIpAttr::Cidr(64)));

    // On the wire: raw key bytes, AF_INET = 2 as a host-order u16 and the
    // port in network order, as struct sockaddr_in has them.
    assert!(bytes.windows(32).any(|w| w == key(2).0));
    let sockaddr_in = [2u8, 0, 0xca, 0x6c, 192, 0, 2, 1];
    assert!(bytes.windows(8).any(|w| w == sockaddr_in));
}

#[test]
fn large_diffs_are_split_within_the_budget_and_reassemble() {
    let mut diff = PeerDiff::default();
    for n in 0..120u8 {
        diff.add.push(spec(
            n,
            &format!("192.0.2.{n}:51820"),
            &[&format!("10.{n}.0.0/16"), &format!("fd00:{n}::/64")],
            None,
        ));
    }
    // One peer with more allowed IPs than a message holds.
    let many: Vec<String> = (0..400u32)
        .map(|i| format!("172.{}.{}.0/24", 16 + i / 256, i % 256))
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    diff.update
        .push(spec(200, "198.51.100.1:51820", &many, Some(10)));
    diff.remove = (201..=230).map(key).collect();

    let msgs = set_peers_messages("wg0", &diff, SET_DEVICE_BUDGET);
    assert!(msgs.len() > 3, "split into {} messages", msgs.len());

    let mut order = Vec::new();
    let mut seen: HashMap<PublicKey, BTreeSet<IpNet>> = HashMap::new();
    let mut spans: HashMap<PublicKey, usize> = HashMap::new();
    for (i, m) in msgs.iter().enumerate() {
        let (bytes, back) = wire(m);
        assert!(bytes.len() <= SET_DEVICE_BUDGET, "{} bytes", bytes.len());
        // Packed, not merely under budget: only the last may be short.
        if i + 1 < msgs.len() {
            assert!(
                bytes.len() > SET_DEVICE_BUDGET - 200,
                "message {i}: {} bytes",
                bytes.len()
            );
        }
        for p in peers_of(&back) {
            let k = peer_key(p);
            *spans.entry(k).or_default() += 1;
            if let Some(got) = seen.get_mut(&k) {
                // A continuation: the key and more IPs, nothing that would
                // reset what the first message set.
                assert_eq!(p.len(), 2, "continuation of {k} carries {p:?}");
                assert!(matches!(p.0[1], WireguardPeerAttribute::AllowedIps(_)));
                got.extend(ips(p));
            } else {
                order.push(k);
                seen.insert(k, ips(p).into_iter().collect());
                if diff.remove.contains(&k) {
                    assert_eq!(flags(p), Some(WireguardPeerFlags::RemoveMe));
                } else {
                    assert_eq!(flags(p), Some(WireguardPeerFlags::ReplaceAllowedIps));
                }
            }
        }
    }
    let want_order: Vec<PublicKey> = diff
        .remove
        .iter()
        .copied()
        .chain(diff.update.iter().chain(&diff.add).map(|s| s.public_key))
        .collect();
    assert_eq!(order, want_order);
    for s in diff.add.iter().chain(&diff.update) {
        assert_eq!(seen[&s.public_key], s.allowed_set(), "{}", s.public_key);
    }
    assert!(spans[&key(200)] >= 2, "the big peer spans messages");
}

#[test]
fn a_budget_too_small_for_anything_still_sends_everything() {
    let diff = PeerDiff {
        add: vec![spec(
            1,
            "192.0.2.1:1",
            &["10.0.0.0/8", "10.1.0.0/16", "10.2.0.0/16"],
            None,
        )],
        remove: vec![key(2)],
        ..Default::default()
    };
    let msgs = set_peers_messages("wg0", &diff, 1);
    // One removal, then the addition one IP at a time.
    assert_eq!(msgs.len(), 4);
    let all: Vec<IpNet> = msgs
        .iter()
        .flat_map(|m| peers_of(m).iter().flat_map(ips))
        .collect();
    assert_eq!(
        all.into_iter().collect::<BTreeSet<_>>(),
        diff.add[0].allowed_set()
    );
}

#[test]
fn nothing_to_do_is_no_message() {
    assert!(set_peers_messages("wg0", &PeerDiff::default(), SET_DEVICE_BUDGET).is_empty());
}

#[test]
fn handshake_toggles_take_keepalive_through_zero_and_back() {
    let msgs = handshake_messages("wg0", &[(key(1), 0), (key(2), 25)], SET_DEVICE_BUDGET);
    assert_eq!(msgs.len(), 1);
    let (_, back) = wire(&msgs[0]);
    let got: Vec<(PublicKey, u16)> = peers_of(&back)
        .iter()
        .map(|p| {
            assert_eq!(flags(p), Some(WireguardPeerFlags::UpdateOnly));
            assert_eq!(flags(p).unwrap().bits(), 4);
            let k = p
                .iter()
                .find_map(|a| match a {
                    WireguardPeerAttribute::PersistentKeepalive(k) => Some(*k),
                    _ => None,
                })
                .unwrap();
            (peer_key(p), k)
        })
        .collect();
    assert_eq!(
        got,
        vec![(key(1), 1), (key(1), 0), (key(2), 0), (key(2), 25)]
    );
}

fn reply(attributes: Vec<WireguardAttribute>) -> WireguardMessage {
    let m = WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes,
    };
    let (_, back) = wire(&m);
    assert_eq!(back, m);
    back
}

#[test]
fn a_dump_split_mid_peer_parses_into_one_peer_each() {
    let own = [7u8; 32];
    // As the kernel fills a dump: device attributes and whole peers in the
    // first message; the second repeats peer 2's key with the rest of its
    // allowed IPs.
    let first = reply(vec![
        WireguardAttribute::IfIndex(5),
        WireguardAttribute::IfName("wg0".into()),
        WireguardAttribute::PrivateKey([3; 32]),
        WireguardAttribute::PublicKey(own),
        WireguardAttribute::ListenPort(51820),
        WireguardAttribute::Fwmark(0),
        WireguardAttribute::Peers(vec![
            WireguardPeer(vec![
                WireguardPeerAttribute::PublicKey(key(1).0),
                WireguardPeerAttribute::PresharedKey([0; 32]),
                WireguardPeerAttribute::LastHandshake(WireguardTimeSpec {
                    seconds: 1_700_000_000,
                    nano_seconds: 250_000_000,
                }),
                WireguardPeerAttribute::PersistentKeepalive(25),
                WireguardPeerAttribute::TxBytes(1234),
                WireguardPeerAttribute::RxBytes(5678),
                WireguardPeerAttribute::ProtocolVersion(1),
                WireguardPeerAttribute::Endpoint("192.0.2.1:51820".parse().unwrap()),
                WireguardPeerAttribute::AllowedIps(vec![allowed_ip(
                    &"10.0.1.0/24".parse().unwrap(),
                )]),
            ]),
            WireguardPeer(vec![
                WireguardPeerAttribute::PublicKey(key(2).0),
                WireguardPeerAttribute::LastHandshake(WireguardTimeSpec::default()),
                WireguardPeerAttribute::PersistentKeepalive(0),
                WireguardPeerAttribute::TxBytes(0),
                WireguardPeerAttribute::RxBytes(0),
                WireguardPeerAttribute::Endpoint("[2001:db8::2]:4500".parse().unwrap()),
                WireguardPeerAttribute::AllowedIps(vec![allowed_ip(
                    &"10.0.2.0/24".parse().unwrap(),
                )]),
            ]),
        ]),
    ]);
    let second = reply(vec![
        WireguardAttribute::IfIndex(5),
        WireguardAttribute::IfName("wg0".into()),
        WireguardAttribute::Peers(vec![WireguardPeer(vec![
            WireguardPeerAttribute::PublicKey(key(2).0),
            WireguardPeerAttribute::AllowedIps(vec![
                allowed_ip(&"fd00:2::/64".parse().unwrap()),
                allowed_ip(&"10.2.0.0/16".parse().unwrap()),
            ]),
        ])]),
    ]);
    let dev = parse_device([first, second]);
    assert_eq!(dev.listen_port, 51820);
    assert_eq!(dev.public_key, Some(PublicKey(own)));
    assert_eq!(dev.peers.len(), 2);

    let p1 = &dev.peers[0];
    assert_eq!(p1.public_key, key(1));
    assert_eq!(p1.persistent_keepalive, 25);
    assert_eq!(
        p1.last_handshake,
        Some(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 250_000_000))
    );
    assert_eq!(
        p1.status(),
        PeerStatus {
            public_key: key(1),
            endpoint: Some("192.0.2.1:51820".parse::<SocketAddr>().unwrap()),
            last_handshake: p1.last_handshake,
            rx_bytes: 5678,
            tx_bytes: 1234,
        }
    );

    let p2 = &dev.peers[1];
    assert_eq!(p2.last_handshake, None, "zero means never");
    assert_eq!(p2.endpoint, Some("[2001:db8::2]:4500".parse().unwrap()));
    assert_eq!(
        p2.allowed_ips,
        ["10.0.2.0/24", "fd00:2::/64", "10.2.0.0/16"]
            .iter()
            .map(|s| s.parse::<IpNet>().unwrap())
            .collect::<Vec<_>>()
    );
}

#[test]
fn an_empty_dump_is_a_device_without_peers() {
    let dev = parse_device([reply(vec![
        WireguardAttribute::IfName("wg0".into()),
        WireguardAttribute::ListenPort(0),
    ])]);
    assert_eq!(dev, LiveDevice::default());
}

#[test]
fn implementation_names_round_trip() {
    for i in [
        Implementation::Auto,
        Implementation::Kernel,
        Implementation::Userspace,
    ] {
        assert_eq!(i.to_string().parse::<Implementation>(), Ok(i));
    }
    assert_eq!(Implementation::default(), Implementation::Auto);
    let err = "wireguard-go".parse::<Implementation>().unwrap_err();
    assert!(
        err.to_string().contains("auto, kernel or userspace"),
        "{err}"
    );
}
