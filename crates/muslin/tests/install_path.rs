//! The pitfalls on the install path (issue 9), on hosts built by hand with
//! several NICs and agents started as README's Install section says: the
//! first host with no `--join`, the others joining it.

mod common;

use common::hosts::{nft, run_in, until, Agent, Net};
use common::{Netns, ProbeServer, BIN};

/// Three hosts with three NICs each:
/// - eth0 carries the default route: either behind a router that drops
///   host-to-host traffic, or (Vagrant) the same NAT address 10.0.2.15 on
///   every host;
/// - eth1 reaches the other hosts through two routers whose link has MTU
///   1400 and drops fragments (h1 on 192.168.10.0/24, h2 and h3 on
///   192.168.20.0/24);
/// - eth2 is a clean shared segment, 192.168.56.0/24.
struct World {
    hosts: Vec<Netns>,
    agents: Vec<Agent>,
    containers: Vec<(Netns, String, ProbeServer)>,
    _routers: Vec<Netns>,
    net: Net,
}

fn world(vagrant: bool, agent_args: &[&str]) -> World {
    let net = Net::new();
    let hosts: Vec<Netns> = (1..=3).map(|i| Netns::new(&format!("h{i}"))).collect();
    let mut routers = Vec::new();
    // eth0 and the default route.
    let r0 = net.router();
    for (i, h) in hosts.iter().enumerate() {
        let seg = net.segment(1500);
        if vagrant {
            net.wire(h, "eth0", &seg, "10.0.2.15/24", 1500);
            h.ip(&["route", "add", "default", "via", "10.0.2.2"]);
        } else {
            let n = i + 1;
            net.wire(h, "eth0", &seg, &format!("10.0.{n}.11/24"), 1500);
            net.wire(&r0, &format!("m{n}"), &seg, &format!("10.0.{n}.1/24"), 1500);
            h.ip(&["route", "add", "default", "via", &format!("10.0.{n}.1")]);
        }
    }
    if !vagrant {
        nft(
            &r0,
            "table inet hostile {\n chain forward {\n  type filter hook forward priority 0; policy drop;\n }\n}\n",
        );
    }
    routers.push(r0);
    // eth1: a routed path with a 1400-byte link that drops fragments.
    let (sa, sl, sb) = (net.segment(1500), net.segment(1400), net.segment(1500));
    let (r1, r2) = (net.router(), net.router());
    net.wire(&r1, "ra", &sa, "192.168.10.1/24", 1500);
    net.wire(&r1, "rl", &sl, "10.99.0.1/30", 1400);
    net.wire(&r2, "rl", &sl, "10.99.0.2/30", 1400);
    net.wire(&r2, "rb", &sb, "192.168.20.1/24", 1500);
    r1.ip(&["route", "add", "192.168.20.0/24", "via", "10.99.0.2"]);
    r2.ip(&["route", "add", "192.168.10.0/24", "via", "10.99.0.1"]);
    // Fragments that cross the small link are lost, as behind many
    // clouds' and firewalls' filters.
    for r in [&r1, &r2] {
        nft(
            r,
            "table ip nofrag {\n chain forward {\n  type filter hook forward priority 0;\n  \
             iifname \"rl\" ip frag-off & 0x3fff != 0 counter drop\n }\n}\n",
        );
    }
    routers.push(r1);
    routers.push(r2);
    net.wire(&hosts[0], "eth1", &sa, "192.168.10.11/24", 1500);
    hosts[0].ip(&["route", "add", "192.168.20.0/24", "via", "192.168.10.1"]);
    for (i, h) in hosts.iter().enumerate().skip(1) {
        net.wire(h, "eth1", &sb, &format!("192.168.20.1{}/24", i + 1), 1500);
        h.ip(&["route", "add", "192.168.10.0/24", "via", "192.168.20.1"]);
    }
    // eth2: clean.
    let sc = net.segment(1500);
    for (i, h) in hosts.iter().enumerate() {
        net.wire(h, "eth2", &sc, &format!("192.168.56.1{}/24", i + 1), 1500);
    }
    // README's Install section: the first host without --join, the others
    // joining it.
    let secret = net.secret();
    let mut agents = vec![Agent::start(&hosts[0], "h1", &secret, agent_args)];
    for (i, h) in hosts.iter().enumerate().skip(1) {
        let args = [&["--join", "192.168.10.11"][..], agent_args].concat();
        agents.push(Agent::start(h, &format!("h{}", i + 1), &secret, &args));
    }
    let containers = hosts
        .iter()
        .zip(&agents)
        .map(|(h, a)| {
            let c = Netns::new("c");
            let ip = a.add(&format!("{}-c1", a.name), &c);
            let p = ProbeServer::start(&c, 7777);
            let _ = h;
            (c, ip, p)
        })
        .collect();
    World {
        hosts,
        agents,
        containers,
        _routers: routers,
        net,
    }
}

impl World {
    fn underlay(&self, i: usize) -> String {
        self.agents[i].status()["cluster"]["underlay_address"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn all_pairs_pass(&self) -> bool {
        self.containers.iter().all(|(c, _, _)| {
            self.containers
                .iter()
                .all(|(_, ip, _)| c.probe(ip, "tcp,icmp").is_ok())
        })
    }

    fn dump(&self) -> String {
        self.agents
            .iter()
            .map(|a| format!("== {}\n{}\n{}", a.name, a.status(), a.log()))
            .collect()
    }
}

fn three_nic_hosts_move_16_mb_between_every_pair(vagrant: bool) {
    let w = world(vagrant, &[]);
    let started = std::time::Instant::now();
    // The first host guessed its default-route NIC; its peers reach it on
    // another address and never on that one, so it moves.
    until("h1 moves off its default-route NIC", 30, || {
        w.underlay(0) == "192.168.10.11"
    });
    eprintln!(
        "first host moved {:.1} s after its peers and containers were up",
        started.elapsed().as_secs_f64()
    );
    let st = w.agents[0].status();
    assert!(
        st["cluster"]["underlay_reason"]
            .as_str()
            .unwrap()
            .contains("moved from"),
        "{st}"
    );
    until("every container reaches every container", 30, || {
        w.all_pairs_pass()
    });
    // No host ever routes through an address that is its own, or through
    // the default-route NIC that cannot carry host-to-host traffic.
    for h in &w.hosts {
        let routes = h.ip(&["route", "show", "proto", "77"]);
        assert!(!routes.contains("via 10.0."), "{routes}");
    }
    // Path MTU: the 1400-byte link is measured and pinned, less VXLAN's 50.
    until("h2 measured the path to h1", 20, || {
        w.agents[1].peer("h1")["path_mtu"] == 1400
    });
    let r = w.hosts[1].ip(&["route", "show", "proto", "77", "dev", "msl-vxlan"]);
    assert!(r.contains("mtu 1350"), "{r}");
    for (i, (c, _, _)) in w.containers.iter().enumerate() {
        for (j, (_, ip, _)) in w.containers.iter().enumerate() {
            if i == j {
                continue;
            }
            let (ok, out) = run_in(c, &[BIN, "probe", "transfer", ip, "--bytes", "16000000"]);
            assert!(ok, "h{} -> h{}: {out}\n{}", i + 1, j + 1, w.dump());
        }
    }
    let _ = &w.net;
}

#[test]
fn three_nic_hosts_default_route_behind_a_router_that_drops_host_to_host() {
    three_nic_hosts_move_16_mb_between_every_pair(false);
}

#[test]
fn three_nic_hosts_with_the_same_nat_address_on_every_host() {
    three_nic_hosts_move_16_mb_between_every_pair(true);
}

/// Two hosts in two racks joined by a router (eth1), and a second shared
/// segment (eth2). Strict reverse-path filtering everywhere, as hardened
/// hosts have it. h2 joins h1 over the router, so their data path is VXLAN.
struct Pair {
    hosts: Vec<Netns>,
    agents: Vec<Agent>,
    containers: Vec<(Netns, String, ProbeServer)>,
    router: Netns,
    _net: Net,
}

fn pair() -> Pair {
    let net = Net::new();
    let hosts: Vec<Netns> = (1..=2).map(|i| Netns::new(&format!("h{i}"))).collect();
    let router = net.router();
    let sc = net.segment(1500);
    for (i, h) in hosts.iter().enumerate() {
        let n = i + 1;
        for k in ["all", "default"] {
            h.exec(&["sysctl", "-qw", &format!("net.ipv4.conf.{k}.rp_filter=1")]);
        }
        let seg = net.segment(1500);
        net.wire(h, "eth1", &seg, &format!("192.168.{n}0.1{n}/24"), 1500);
        net.wire(
            &router,
            &format!("r{n}"),
            &seg,
            &format!("192.168.{n}0.1/24"),
            1500,
        );
        h.ip(&["route", "add", "default", "via", &format!("192.168.{n}0.1")]);
        net.wire(h, "eth2", &sc, &format!("192.168.56.1{n}/24"), 1500);
    }
    let secret = net.secret();
    let agents = vec![
        Agent::start(&hosts[0], "h1", &secret, &[]),
        Agent::start(&hosts[1], "h2", &secret, &["--join", "192.168.10.11"]),
    ];
    let containers = agents
        .iter()
        .map(|a| {
            let c = Netns::new("c");
            let ip = a.add(&format!("{}-c1", a.name), &c);
            let p = ProbeServer::start(&c, 7777);
            (c, ip, p)
        })
        .collect();
    let p = Pair {
        hosts,
        agents,
        containers,
        router,
        _net: net,
    };
    until("pods reach each other", 30, || {
        p.containers[0]
            .0
            .probe(&p.containers[1].1, "tcp,icmp")
            .is_ok()
    });
    p
}

#[test]
fn a_blocked_vxlan_port_is_shown_per_peer_while_gossip_is_fine() {
    let p = pair();
    until("the data path to h2 is probed", 10, || {
        p.agents[0].peer("h2")["data_path"] == "ok"
    });
    assert_eq!(p.agents[0].peer("h2")["path"], "vxlan");
    nft(
        &p.router,
        "table inet hostile {\n chain forward {\n  type filter hook forward priority 0;\n  udp dport 4789 drop\n }\n}\n",
    );
    let started = std::time::Instant::now();
    until("h1 names the blocked port", 15, || {
        p.agents[0].peer("h2")["data_path"]
            == "failing: UDP 4789 to 192.168.20.12 unanswered, gossip fine"
    });
    eprintln!(
        "blocked port shown after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let peer = p.agents[0].peer("h2");
    assert_eq!(peer["alive"], true, "gossip still works: {peer}");
    assert!(p.agents[0].status()["cluster"]["warnings"]
        .to_string()
        .contains("UDP 4789 to 192.168.20.12 unanswered"));
    p.router
        .exec(&["nft", "delete", "table", "inet", "hostile"]);
    until("the data path recovers", 15, || {
        p.agents[0].peer("h2")["data_path"] == "ok"
    });
}

#[test]
fn a_pod_reaches_a_remote_node_under_strict_rp_filter() {
    let p = pair();
    let filtered = |h: &Netns| -> u64 {
        let o = h.exec(&["cat", "/proc/net/netstat"]);
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
        let names: Vec<&str> = lines[0].split_whitespace().collect();
        let vals: Vec<&str> = lines[1].split_whitespace().collect();
        let i = names
            .iter()
            .position(|n| *n == "IPReversePathFilter")
            .unwrap();
        vals[i].parse().unwrap()
    };
    let _server = ProbeServer::start(&p.hosts[1], 7777);
    let before = filtered(&p.hosts[1]);
    // A pod on h1 to h2 the node: the request crosses the underlay
    // unmasqueraded with the pod's source address.
    let r = p.containers[0].0.probe("192.168.20.12", "tcp,udp,icmp");
    assert!(r.is_ok(), "{r:?}\n{}", p.agents[1].log());
    assert_eq!(
        filtered(&p.hosts[1]),
        before,
        "h2 dropped packets by reverse path"
    );
    // And the other way round.
    let _server1 = ProbeServer::start(&p.hosts[0], 7777);
    let r = p.containers[1].0.probe("192.168.10.11", "tcp,udp,icmp");
    assert!(r.is_ok(), "{r:?}");
    // The host's own setting is untouched.
    let o = p.hosts[1].exec(&["sysctl", "-n", "net.ipv4.conf.all.rp_filter"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "1");
}

#[test]
fn a_node_whose_advertised_address_breaks_moves_to_one_peers_reach() {
    let p = pair();
    assert_eq!(
        p.agents[1].status()["cluster"]["underlay_address"],
        "192.168.20.12"
    );
    until("each host reaches both addresses of the other", 20, || {
        p.agents[0].peer("h2")["reached"]
            .as_array()
            .is_some_and(|r| r.len() == 2)
            && p.agents[1].peer("h1")["reached"]
                .as_array()
                .is_some_and(|r| r.len() == 2)
    });
    // The rack router dies: each host still reaches the other on eth2.
    p.router.exec(&["ip", "link", "set", "r2", "down"]);
    p.router.exec(&["ip", "link", "set", "r1", "down"]);
    let started = std::time::Instant::now();
    let moved = || {
        p.agents[1].status()["cluster"]["underlay_address"] == "192.168.56.12"
            && p.agents[0].status()["cluster"]["underlay_address"] == "192.168.56.11"
    };
    while !moved() && started.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        moved(),
        "both hosts move to the segment they share:\n{}\n{}\n{}\n{}",
        p.agents[0].status(),
        p.agents[1].status(),
        p.agents[0].log(),
        p.agents[1].log()
    );
    eprintln!("moved after {:.1} s", started.elapsed().as_secs_f64());
    until("pods reach each other again", 20, || {
        p.containers[0]
            .0
            .probe(&p.containers[1].1, "tcp,icmp")
            .is_ok()
            && p.containers[1]
                .0
                .probe(&p.containers[0].1, "tcp,icmp")
                .is_ok()
    });
    assert_eq!(p.agents[0].peer("h2")["path"], "routed");
}

/// Hosts h1..hN on one segment, 192.168.56.0/24, with `setup` run on each
/// before its agent starts; h1 first, the others joining it.
fn one_segment(
    n: usize,
    setup: impl Fn(usize, &Netns),
    args: &[&str],
) -> (Net, Vec<Netns>, Vec<Agent>) {
    let net = Net::new();
    let seg = net.segment(1500);
    let hosts: Vec<Netns> = (1..=n).map(|i| Netns::new(&format!("h{i}"))).collect();
    for (i, h) in hosts.iter().enumerate() {
        net.wire(h, "eth0", &seg, &format!("192.168.56.1{}/24", i + 1), 1500);
        setup(i, h);
    }
    let mut agents = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let join: &[&str] = if i == 0 {
            &[]
        } else {
            &["--join", "192.168.56.11"]
        };
        agents.push(Agent::start(
            h,
            &format!("h{}", i + 1),
            &net.secret(),
            &[join, args].concat(),
        ));
    }
    (net, hosts, agents)
}

fn blocks_of(a: &Agent) -> Vec<String> {
    a.status()["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["cidr"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_pod_network_over_the_hosts_network_is_refused_naming_both() {
    let net = Net::new();
    let h = Netns::new("h");
    let seg = net.segment(1500);
    net.wire(&h, "eth0", &seg, "192.168.56.11/24", 1500);
    let e = Agent::refused(&h, &net.secret(), &["--pod-cidr", "192.168.0.0/16"]);
    assert!(
        e.contains("pod-cidr") && e.contains("192.168.0.0/16") && e.contains("192.168.56.0/24"),
        "{e}"
    );
    // A fixed block over a route the host has to elsewhere.
    h.ip(&["route", "add", "10.244.5.0/24", "via", "192.168.56.254"]);
    let e = Agent::refused(&h, &net.secret(), &["--block", "10.244.5.0/25"]);
    assert!(
        e.contains("10.244.5.0/25") && e.contains("10.244.5.0/24"),
        "{e}"
    );
    assert!(
        h.links().iter().all(|l| !l.starts_with("msl")),
        "nothing was made"
    );
}

#[test]
fn no_node_leases_a_block_over_a_route_some_host_has() {
    // h1 routes 10.244.5.0/24 to a corporate network; the pod network has
    // four blocks, one of them that range.
    let (_net, hosts, agents) = one_segment(
        3,
        |i, h| {
            if i == 0 {
                h.ip(&["route", "add", "10.244.5.0/24", "via", "192.168.56.254"]);
            }
        },
        &["--pod-cidr", "10.244.4.0/22"],
    );
    let c = Netns::new("c");
    for (i, a) in agents.iter().enumerate() {
        a.add(&format!("c{i}"), &c_for(&c, i));
    }
    let all: Vec<String> = agents.iter().flat_map(blocks_of).collect();
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(!all.contains(&"10.244.5.0/24".to_string()), "{all:?}");
    assert_eq!(
        agents[1].status()["cluster"]["reserved"],
        serde_json::json!(["10.244.5.0/24"])
    );
    // Later, h3 gets a route over h2's block: h2 says so, loudly.
    let b2 = blocks_of(&agents[1])[0].clone();
    hosts[2].ip(&["route", "replace", &b2, "via", "192.168.56.254"]);
    until("h2 warns that its block conflicts", 30, || {
        agents[1].status()["cluster"]["warnings"]
            .to_string()
            .contains(&format!(
                "our block {b2} overlaps {b2}, which node h3 routes"
            ))
    });
    until("the warning is in h2's log", 5, || {
        agents[1].log().contains("which node h3 routes")
    });
}

/// A container namespace per host for tests that need one each.
fn c_for(_shared: &Netns, _i: usize) -> Netns {
    Netns::new("c")
}

#[test]
fn an_idle_cluster_makes_no_kernel_writes_and_runs_no_nft() {
    let p = pair();
    until("probes settle", 15, || {
        p.agents[0].peer("h2")["data_path"] == "ok" && p.agents[1].peer("h1")["data_path"] == "ok"
    });
    // Converged: now nothing may change for three full resyncs.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let before: Vec<u64> = p.agents.iter().map(|a| a.kernel_writes()).collect();
    let nft_before: Vec<u64> = p.agents.iter().map(|a| a.nft_runs()).collect();
    let logs: Vec<usize> = p.agents.iter().map(|a| a.log().lines().count()).collect();
    let neigh = p.hosts[0].ip(&["neigh", "show", "dev", "msl-vxlan"]);
    std::thread::sleep(std::time::Duration::from_secs(16));
    let after: Vec<u64> = p.agents.iter().map(|a| a.kernel_writes()).collect();
    assert_eq!(before, after, "kernel writes while idle");
    let nft_after: Vec<u64> = p.agents.iter().map(|a| a.nft_runs()).collect();
    assert_eq!(nft_before, nft_after, "nft runs while idle");
    for (a, n) in p.agents.iter().zip(logs) {
        let new: Vec<String> = a.log().lines().skip(n).map(String::from).collect();
        assert!(new.is_empty(), "{} logged while idle: {new:?}", a.name);
    }
    assert_eq!(neigh, p.hosts[0].ip(&["neigh", "show", "dev", "msl-vxlan"]));
}

#[test]
fn joining_waits_for_a_peer_that_is_not_up_yet_and_skips_our_own_address() {
    let net = Net::new();
    let seg = net.segment(1500);
    let (h1, h2) = (Netns::new("h1"), Netns::new("h2"));
    net.wire(&h1, "eth0", &seg, "192.168.56.11/24", 1500);
    net.wire(&h2, "eth0", &seg, "192.168.56.12/24", 1500);
    // Config management starts every host at once with one join list;
    // h1's network is not up yet.
    h1.ip(&["link", "set", "eth0", "down"]);
    let join = ["--join", "192.168.56.11,192.168.56.12"];
    let mut a2 = Agent::start_detached(&h2, "h2", &net.secret(), &join);
    std::thread::sleep(std::time::Duration::from_secs(14));
    assert!(
        a2.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "h2 gave up: {}",
        a2.log()
    );
    assert!(a2.log().contains("still trying"), "{}", a2.log());
    h1.ip(&["link", "set", "eth0", "up"]);
    // h1's list has its own address too: not a peer, silently.
    let a1 = Agent::start(&h1, "h1", &net.secret(), &join);
    assert!(
        a1.log().contains("joining peers=[192.168.56.12:7331]"),
        "{}",
        a1.log()
    );
    a2.wait_ready(std::time::Duration::from_secs(40));
    until("h2 and h1 know each other", 20, || {
        a1.peer("h2")["alive"] == true && a2.peer("h1")["alive"] == true
    });
    // A host whose list holds only itself is the first host, at once.
    let h3 = Netns::new("h3");
    net.wire(&h3, "eth0", &seg, "192.168.56.13/24", 1500);
    let started = std::time::Instant::now();
    let a3 = Agent::start(&h3, "h3", &net.secret(), &["--join", "192.168.56.13"]);
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    assert!(!a3.log().contains("WARN"), "{}", a3.log());
}

#[test]
fn pods_cross_hosts_whose_forward_policy_is_drop() {
    let (_net, hosts, agents) = one_segment(
        2,
        |_, h| {
            h.exec(&["iptables-nft", "-P", "FORWARD", "DROP"]);
        },
        &[],
    );
    let cs: Vec<(Netns, String, ProbeServer)> = agents
        .iter()
        .map(|a| {
            let c = Netns::new("c");
            let ip = a.add(&format!("{}-c", a.name), &c);
            let s = ProbeServer::start(&c, 7777);
            (c, ip, s)
        })
        .collect();
    until("pods reach each other across hosts", 30, || {
        cs[0].0.probe(&cs[1].1, "tcp,udp,icmp").is_ok()
            && cs[1].0.probe(&cs[0].1, "tcp,udp,icmp").is_ok()
    });
    let rules = hosts[0].exec(&["iptables-nft", "-S", "FORWARD"]);
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        rules.contains("-P FORWARD DROP") && rules.contains("muslin"),
        "{rules}"
    );
}
