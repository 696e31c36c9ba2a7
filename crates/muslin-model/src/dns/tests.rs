use super::*;

fn ep(
    node: &str,
    id: &str,
    net: &str,
    addr: &str,
    ns: Option<&str>,
    name: Option<&str>,
    aliases: &[&str],
) -> EndpointRecord {
    EndpointRecord {
        network: net.into(),
        addresses: vec![addr.parse::<IpAddr>().unwrap().into()],
        container_id: id.into(),
        ifname: "eth0".into(),
        node: node.into(),
        pod_namespace: ns.map(Into::into),
        pod_name: name.map(Into::into),
        labels: Default::default(),
        ports: Default::default(),
        aliases: aliases.iter().map(|a| a.to_string()).collect(),
        name: None,
    }
}

fn nets() -> Vec<ServedNetwork> {
    vec![
        ServedNetwork {
            name: "default".into(),
            subnets: vec!["10.244.0.0/16".parse().unwrap()],
        },
        ServedNetwork {
            name: "blue".into(),
            subnets: vec!["10.50.0.0/24".parse().unwrap()],
        },
        ServedNetwork {
            name: "green".into(),
            subnets: vec!["10.50.0.0/24".parse().unwrap()],
        },
    ]
}

fn index() -> NameIndex {
    let eps = [
        ep(
            "h3",
            "c1",
            "default",
            "10.244.3.2",
            Some("shop"),
            Some("web"),
            &["www", "front"],
        ),
        ep(
            "h2",
            "c2",
            "default",
            "10.244.2.2",
            Some("shop"),
            Some("web2"),
            &["www"],
        ),
        ep(
            "h1",
            "c3",
            "default",
            "10.244.1.2",
            None,
            Some("client"),
            &[],
        ),
        ep("h1", "c4", "blue", "10.50.0.2", None, Some("db"), &[]),
        ep("h2", "c5", "green", "10.50.0.2", None, Some("db"), &[]),
        ep("h1", "c6", "green", "10.50.0.3", None, Some("app"), &[]),
        // c3 is also in blue.
        ep("h1", "c3", "blue", "10.50.0.9", None, Some("client"), &[]),
        ep("h1", "c7", "gone", "10.60.0.2", None, Some("ghost"), &[]),
    ];
    NameIndex::build("Muslin.Internal.", &nets(), eps.iter(), "h1")
}

fn addrs(l: Lookup) -> Vec<String> {
    match l {
        Lookup::Addresses(mut a) => {
            a.sort();
            a.iter().map(ToString::to_string).collect()
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn listen_addresses_are_per_network_and_fixed() {
    assert_eq!(listen_address(0), Ipv4Addr::new(169, 254, 53, 1));
    assert_eq!(listen_address(1), Ipv4Addr::new(169, 254, 53, 2));
    assert_eq!(listen_address(4095), Ipv4Addr::new(169, 254, 69, 0));
    assert!(is_listen_address(listen_address(4095).into()));
    assert!(!is_listen_address(Ipv4Addr::new(169, 254, 53, 0).into()));
}

#[test]
fn names_aliases_namespaces_and_networks_resolve() {
    let ix = index();
    let from_client = ix.visible("default", "10.244.1.2".parse().unwrap());
    assert_eq!(
        addrs(ix.lookup(from_client, "web.muslin.internal", Kind::A)),
        ["10.244.3.2"]
    );
    assert_eq!(
        addrs(ix.lookup(from_client, "WEB.muslin.internal.", Kind::A)),
        ["10.244.3.2"]
    );
    assert_eq!(
        addrs(ix.lookup(from_client, "www.muslin.internal", Kind::A)),
        ["10.244.2.2", "10.244.3.2"]
    );
    assert_eq!(
        addrs(ix.lookup(from_client, "front.shop.muslin.internal", Kind::A)),
        ["10.244.3.2"]
    );
    assert_eq!(
        addrs(ix.lookup(from_client, "web.default.muslin.internal", Kind::A)),
        ["10.244.3.2"]
    );
    assert_eq!(
        ix.lookup(from_client, "web.other.muslin.internal", Kind::A),
        Lookup::NxDomain
    );
    assert_eq!(
        ix.lookup(from_client, "web.muslin.internal", Kind::Aaaa),
        Lookup::NoData
    );
    assert_eq!(
        ix.lookup(from_client, "web.muslin.internal", Kind::Other),
        Lookup::NoData
    );
    assert_eq!(
        ix.lookup(from_client, "nobody.muslin.internal", Kind::A),
        Lookup::NxDomain
    );
    assert_eq!(
        ix.lookup(from_client, "muslin.internal", Kind::A),
        Lookup::NoData
    );
    assert_eq!(
        ix.lookup(from_client, "example.com", Kind::A),
        Lookup::Forward
    );
    assert_eq!(
        ix.lookup(from_client, "xmuslin.internal", Kind::A),
        Lookup::Forward
    );
    // Endpoints of a network not served are not named.
    assert_eq!(
        ix.lookup(from_client, "ghost.muslin.internal", Kind::A),
        Lookup::NxDomain
    );
    // Per network: web, www, front, web2, client; db, client; db, app.
    assert_eq!(ix.names(), 9);
}

#[test]
fn a_container_sees_the_networks_it_is_attached_to() {
    let ix = index();
    // client is in default and blue: blue's db, never green's.
    let v = ix.visible("default", "10.244.1.2".parse().unwrap());
    assert_eq!(
        addrs(ix.lookup(v, "db.muslin.internal", Kind::A)),
        ["10.50.0.2"]
    );
    assert_eq!(
        addrs(ix.lookup(v, "db.blue.muslin.internal", Kind::A)),
        ["10.50.0.2"]
    );
    assert_eq!(
        ix.lookup(v, "db.green.muslin.internal", Kind::A),
        Lookup::NxDomain
    );
    assert_eq!(
        ix.lookup(v, "app.muslin.internal", Kind::A),
        Lookup::NxDomain
    );
    // app is in green only: green's db, not the default network's names.
    let g = ix.visible("green", "10.50.0.3".parse().unwrap());
    assert_eq!(
        addrs(ix.lookup(g, "db.muslin.internal", Kind::A)),
        ["10.50.0.2"]
    );
    assert_eq!(
        ix.lookup(g, "web.muslin.internal", Kind::A),
        Lookup::NxDomain
    );
    // An address no local container holds sees the resolver's network.
    let stranger = ix.visible("blue", "10.50.0.77".parse().unwrap());
    assert_eq!(
        ix.lookup(stranger, "client.muslin.internal", Kind::A),
        addrs_of(&["10.50.0.9"])
    );
    assert!(ix
        .visible("nosuch", "10.50.0.77".parse().unwrap())
        .is_empty());
}

fn addrs_of(a: &[&str]) -> Lookup {
    Lookup::Addresses(a.iter().map(|a| a.parse().unwrap()).collect())
}

#[test]
fn reverse_answers_only_within_the_askers_networks() {
    let ix = index();
    let v = ix.visible("default", "10.244.1.2".parse().unwrap());
    let q = reverse_name("10.244.3.2".parse().unwrap());
    assert_eq!(q, "2.3.244.10.in-addr.arpa");
    assert_eq!(
        ix.lookup(v, &q, Kind::Ptr),
        Lookup::Names(vec!["web.muslin.internal".into()])
    );
    assert_eq!(ix.lookup(v, &q, Kind::A), Lookup::NoData);
    // 10.50.0.2 is db in blue and in green; the client sees blue's.
    let q = reverse_name("10.50.0.2".parse().unwrap());
    assert_eq!(
        ix.lookup(v, &q, Kind::Ptr),
        Lookup::Names(vec!["db.muslin.internal".into()])
    );
    // app's address is in green: not the client's.
    let q = reverse_name("10.50.0.3".parse().unwrap());
    assert_eq!(ix.lookup(v, &q, Kind::Ptr), Lookup::NxDomain);
    // Cluster ranges never go upstream; the rest does.
    assert_eq!(
        ix.lookup(v, "9.9.244.10.in-addr.arpa", Kind::Ptr),
        Lookup::NxDomain
    );
    assert_eq!(
        ix.lookup(v, "1.1.168.192.in-addr.arpa", Kind::Ptr),
        Lookup::Forward
    );
    assert_eq!(
        ix.lookup(v, "168.192.in-addr.arpa", Kind::Ptr),
        Lookup::Forward
    );
}

#[test]
fn reverse_names_round_trip() {
    for a in [
        "10.1.2.3",
        "255.0.0.1",
        "fd00::1:2",
        "2001:db8::ff00:42:8329",
    ] {
        let ip: IpAddr = a.parse().unwrap();
        assert_eq!(reverse_address(&reverse_name(ip)), Some(ip));
    }
    for bad in [
        "1.2.3.in-addr.arpa",
        "1.2.3.4.5.in-addr.arpa",
        "256.1.1.1.in-addr.arpa",
        "a.1.1.1.in-addr.arpa",
        ".1.1.1.in-addr.arpa",
        "1.ip6.arpa",
        "x.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa",
    ] {
        assert_eq!(reverse_address(bad), None, "{bad}");
    }
}

#[test]
fn domains_are_checked() {
    assert_eq!(domain_problem("muslin.internal"), None);
    assert_eq!(domain_problem("cluster.example.com."), None);
    for bad in [
        "",
        "internal",
        "muslin.local",
        "UPPER.case",
        "a..b",
        "-a.b",
        &"x.".repeat(150),
    ] {
        assert!(domain_problem(bad).is_some(), "{bad}");
    }
    assert!(name_problem("web-0").is_none());
    assert!(name_problem("Web").is_some());
    // One label: `db.shop` would stand in for db in namespace shop.
    assert!(name_problem("db.shop").is_some());
    assert!(name_problem("a b").is_some());
}

#[test]
fn upstreams_come_from_resolv_conf_without_ourselves() {
    let text = "# comment\nsearch example.com\nnameserver 192.0.2.53\nnameserver  fe80::1%eth0\nnameserver 169.254.53.1\nnameserver bogus\noptions ndots:2\n";
    let got = upstreams_of_resolv_conf(text, &|a| is_listen_address(a));
    assert_eq!(
        got,
        vec![
            "192.0.2.53".parse::<IpAddr>().unwrap(),
            "fe80::1".parse().unwrap()
        ]
    );
}

#[test]
fn ten_thousand_names_build_fast_and_answer() {
    let eps: Vec<EndpointRecord> = (0..10_000u32)
        .map(|i| {
            let a = format!("10.244.{}.{}", i / 250, i % 250 + 2);
            ep(
                if i % 2 == 0 { "h1" } else { "h2" },
                &format!("c{i}"),
                "default",
                &a,
                None,
                Some(&format!("c{i}")),
                &[],
            )
        })
        .collect();
    let ix = NameIndex::build(DEFAULT_DOMAIN, &nets(), eps.iter(), "h1");
    assert_eq!(ix.names(), 10_000);
    let v = ix.visible("default", "10.244.0.2".parse().unwrap());
    assert_eq!(
        addrs(ix.lookup(v, "c9999.muslin.internal", Kind::A)),
        ["10.244.39.251"]
    );
}

#[test]
fn a_namespace_wins_over_a_network_of_the_same_name() {
    let mut named = ep(
        "h2",
        "c9",
        "default",
        "10.244.2.9",
        None,
        Some("pod-xyz"),
        &[],
    );
    named.name = Some("api".into());
    let eps = [
        ep(
            "h1",
            "c1",
            "default",
            "10.244.1.2",
            Some("shop"),
            Some("web"),
            &[],
        ),
        ep("h1", "c2", "default", "10.244.1.3", None, Some("web"), &[]),
        named,
    ];
    let ix = NameIndex::build(DEFAULT_DOMAIN, &nets(), eps.iter(), "h1");
    let v = ix.visible("default", "10.244.1.3".parse().unwrap());
    // `default` is a namespace and a network: the namespace's web only.
    assert_eq!(
        addrs(ix.lookup(v, "web.default.muslin.internal", Kind::A)),
        ["10.244.1.3"]
    );
    assert_eq!(
        addrs(ix.lookup(v, "web.muslin.internal", Kind::A)),
        ["10.244.1.2", "10.244.1.3"]
    );
    // A network's name when no namespace of that name has the name.
    assert_eq!(
        addrs(ix.lookup(v, "web.shop.muslin.internal", Kind::A)),
        ["10.244.1.2"]
    );
    // `args.cni.name` is the name; the pod's name is not.
    assert_eq!(
        addrs(ix.lookup(v, "api.muslin.internal", Kind::A)),
        ["10.244.2.9"]
    );
    assert_eq!(
        ix.lookup(v, "pod-xyz.muslin.internal", Kind::A),
        Lookup::NxDomain
    );
    // Deeper names are nobody's.
    assert_eq!(
        ix.lookup(v, "web.shop.default.muslin.internal", Kind::A),
        Lookup::NxDomain
    );
}
