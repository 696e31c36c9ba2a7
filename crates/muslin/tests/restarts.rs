//! Restarts and gossip under faults (issue 10), on hosts built by hand with
//! real agents: a restart while the join peers are unreachable, a flood of
//! forged datagrams, notices forged from a seed's address.

mod common;

use std::time::{Duration, Instant};

use common::hosts::{nft, until, Agent, Net};
use common::{Netns, ProbeServer, BIN};

/// Hosts h1..hN on 192.168.56.0/24, h1 first, the others joining it, one
/// container each with a probe server.
struct Cluster {
    hosts: Vec<Netns>,
    agents: Vec<Agent>,
    pods: Vec<(Netns, String, ProbeServer)>,
    net: Net,
}

fn cluster(n: usize) -> Cluster {
    let net = Net::new();
    let seg = net.segment(1500);
    let hosts: Vec<Netns> = (1..=n).map(|i| Netns::new(&format!("h{i}"))).collect();
    let mut agents = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        net.wire(h, "eth0", &seg, &format!("192.168.56.1{}/24", i + 1), 1500);
        let join: &[&str] = if i == 0 {
            &[]
        } else {
            &["--join", "192.168.56.11"]
        };
        agents.push(Agent::start(h, &format!("h{}", i + 1), &net.secret(), join));
    }
    let pods: Vec<(Netns, String, ProbeServer)> = common::hosts::pod_per_host(&agents);
    let c = Cluster {
        hosts,
        agents,
        pods,
        net,
    };
    until("every pod reaches every pod", 30, || {
        c.pods
            .iter()
            .all(|(p, _, _)| c.pods.iter().all(|(_, ip, _)| p.probe(ip, "tcp").is_ok()))
    });
    c
}

#[test]
fn an_agent_restarted_while_its_join_peer_is_unreachable_serves_at_once() {
    let mut c = cluster(3);
    let routes = common::peer_routes(&c.hosts[2].name);
    assert_eq!(routes.len(), 2, "{routes:?}");
    // h3 loses h1, its only join peer; h2 stays reachable.
    nft(
        &c.hosts[2],
        "table inet partition {\n chain input {\n  type filter hook input priority 0;\n  ip saddr 192.168.56.11 drop\n }\n chain output {\n  type filter hook output priority 0;\n  ip daddr 192.168.56.11 drop\n }\n}\n",
    );
    let a3 = &mut c.agents[2];
    if let Some(mut ch) = a3.child.take() {
        let _ = ch.kill();
        let _ = ch.wait();
    }
    let started = Instant::now();
    a3.spawn();
    a3.wait_ready(Duration::from_secs(30));
    let took = started.elapsed();
    eprintln!("restart to serving: {:.2} s", took.as_secs_f64());
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(
        !c.agents[2].log().contains("outside the configured blocks"),
        "false warnings about leased addresses: {}",
        c.agents[2].log()
    );
    // It serves ADD and DEL from the block it holds.
    let extra = Netns::new("c");
    let ip = c.agents[2].add("h3-extra", &extra);
    let block = c.agents[2].status()["blocks"][0]["cidr"]
        .as_str()
        .unwrap()
        .to_string();
    let net: ipnet::IpNet = block.parse().unwrap();
    assert!(
        net.contains(&ip.parse::<std::net::IpAddr>().unwrap()),
        "{ip} outside {block}"
    );
    c.agents[2].del("h3-extra", &extra);
    assert!(!c.agents[2].status()["endpoints"].to_string().contains(&ip));
    // Its pods keep reaching the peer it can reach, and no route moved.
    assert!(c.pods[2].0.probe(&c.pods[1].1, "tcp,icmp").is_ok());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        common::peer_routes(&c.hosts[2].name),
        routes,
        "routes changed during the partition"
    );
    // Heal: it hears h1 again, and still nothing flapped.
    c.hosts[2].exec(&["nft", "delete", "table", "inet", "partition"]);
    until("h3 hears h1 again", 30, || {
        c.agents[2].peer("h1")["alive"] == true
    });
    assert_eq!(common::peer_routes(&c.hosts[2].name), routes);
    assert!(c.pods[2].0.probe(&c.pods[0].1, "tcp,icmp").is_ok());
    let _ = &c.net;
}

#[test]
fn a_flood_of_forged_datagrams_costs_a_few_log_lines() {
    let c = cluster(2);
    let before = c.agents[1].log().lines().count();
    // 10,000 datagrams that look sealed but are not, from one host.
    let o = c.hosts[0].exec(&[
        "bash",
        "-c",
        "f=$(printf '\\001%.0s' {1..61}); \
         for i in $(seq 10000); do printf '%s' \"$f\" > /dev/udp/192.168.56.12/7331; done",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // What the kernel did not drop for a full socket buffer is counted.
    let dropped = || {
        c.agents[1].status()["cluster"]["gossip_dropped"]
            .as_u64()
            .unwrap_or(0)
    };
    until("the datagrams are counted", 20, || dropped() >= 1_000);
    let mut last = 0;
    until("counting settles", 20, || {
        let n = dropped();
        let settled = n == last;
        last = n;
        std::thread::sleep(Duration::from_millis(500));
        settled
    });
    eprintln!("{last} forged datagrams counted");
    let new: Vec<String> = c.agents[1]
        .log()
        .lines()
        .skip(before)
        .map(String::from)
        .collect();
    assert!(new.len() <= 3, "{} lines: {new:#?}", new.len());
    // The cluster never noticed.
    assert!(c.pods[0].0.probe(&c.pods[1].1, "tcp").is_ok());
    let _ = BIN;
}

/// Sends "your secret is wrong" notices from `from` (a seed's address) to
/// `to`, from inside `ns`, until dropped.
struct Forger {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Forger {
    fn start(ns: &Netns, from: &str, to: &str) -> Forger {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (path, from, to, flag) = (ns.path(), from.to_string(), to.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            let f = std::fs::File::open(path).unwrap();
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let s = std::net::UdpSocket::bind(from).unwrap();
            let mut sent = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                // BAD_SECRET: one unauthenticated byte.
                let _ = s.send_to(&[3], &to);
                sent += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            sent
        });
        Forger {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Forger {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn notices_forged_from_a_seeds_address_never_stop_a_join() {
    let net = Net::new();
    let seg = net.segment(1500);
    let (h1, h2, forger) = (Netns::new("h1"), Netns::new("h2"), Netns::new("fg"));
    net.wire(&h1, "eth0", &seg, "192.168.56.11/24", 1500);
    net.wire(&h2, "eth0", &seg, "192.168.56.12/24", 1500);
    // The forger wears the seed's address but never answers ARP for it.
    net.wire(&forger, "eth0", &seg, "192.168.56.11/24", 1500);
    forger.ip(&["link", "set", "eth0", "arp", "off"]);
    let mac = h2.ip_json(&["link", "show", "eth0"])[0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    forger.ip(&[
        "neigh",
        "add",
        "192.168.56.12",
        "lladdr",
        &mac,
        "dev",
        "eth0",
    ]);
    let a1 = Agent::start(&h1, "h1", &net.secret(), &[]);
    let f = Forger::start(&forger, "192.168.56.11:7331", "192.168.56.12:7331");
    let a2 = Agent::start(&h2, "h2", &net.secret(), &["--join", "192.168.56.11"]);
    until("h2 joins despite the notices", 20, || {
        a2.peer("h1")["alive"] == true && a1.peer("h2")["alive"] == true
    });
    // Healthy now: more forged notices leave no false secret error behind.
    std::thread::sleep(Duration::from_secs(2));
    let lines = a2.log().lines().count();
    std::thread::sleep(Duration::from_secs(3));
    drop(f);
    let new: Vec<String> = a2.log().lines().skip(lines).map(String::from).collect();
    assert!(
        !new.iter().any(|l| l.contains("secret")),
        "false secret errors: {new:#?}"
    );
    assert!(
        !a2.status()["cluster"]["warnings"]
            .to_string()
            .contains("secret"),
        "{}",
        a2.status()
    );
}

fn signal(a: &Agent, sig: &str) {
    let pid = a.child.as_ref().unwrap().id().to_string();
    common::must(&["kill", sig, &pid]);
}

#[test]
fn a_restart_while_peers_are_paused_keeps_every_route_to_them() {
    let mut c = cluster(3);
    let routes = common::peer_routes(&c.hosts[0].name);
    assert_eq!(routes.len(), 2, "{routes:?}");
    // h2 and h3 stop gossiping; their data planes keep working.
    signal(&c.agents[1], "-STOP");
    signal(&c.agents[2], "-STOP");
    let targets = [c.pods[1].1.clone(), c.pods[2].1.clone()];
    let pinger = |ip: String, ns: String| {
        std::thread::spawn(move || {
            std::process::Command::new("ip")
                .args(["netns", "exec", &ns, BIN, "probe", "ping", &ip])
                .args(["--count", "1200", "--interval-ms", "10"])
                .output()
                .unwrap()
        })
    };
    let pings: Vec<_> = targets
        .iter()
        .map(|ip| pinger(ip.clone(), c.pods[0].0.name.clone()))
        .collect();
    // h1 (the first host: it joins nobody) restarts...
    let a1 = &mut c.agents[0];
    if let Some(mut ch) = a1.child.take() {
        let _ = ch.kill();
        let _ = ch.wait();
    }
    a1.spawn();
    a1.wait_ready(Duration::from_secs(30));
    // ...and a new node joins it, knowing nothing of h2 and h3.
    let h4 = Netns::new("h4");
    let seg = c
        .net
        .switch
        .ip(&["-j", "link", "show", "type", "bridge"])
        .split("\"ifname\":\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    c.net.wire(&h4, "eth0", &seg, "192.168.56.14/24", 1500);
    let a4 = Agent::start(&h4, "h4", &c.net.secret(), &["--join", "192.168.56.11"]);
    until("h1 hears h4", 20, || {
        c.agents[0].peer("h4")["alive"] == true
    });
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        routes
            .iter()
            .all(|r| common::peer_routes(&c.hosts[0].name).contains(r)),
        "routes to paused peers removed: {:?} -> {:?}\n{}",
        routes,
        common::peer_routes(&c.hosts[0].name),
        c.agents[0].log()
    );
    for p in pings {
        let o = p.join().unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success() && out.contains("lost 0"), "{out}");
    }
    signal(&c.agents[1], "-CONT");
    signal(&c.agents[2], "-CONT");
    drop(a4);
}
