//! Relay on hosts built by hand as README's Install section has them (a
//! NAT NIC with the same address on every host and the default route, the
//! shared segment on a second NIC, strict rp_filter, the first host
//! without --join): a link cut between two of them is relayed through the
//! third, pods and hosts keep reaching each other, and the heal goes back
//! to direct.

mod common;

use common::hosts::{until, Agent, Net};
use common::{Netns, ProbeServer};

/// MAC of `ifname` in `ns`.
fn mac(ns: &Netns, ifname: &str) -> String {
    ns.ip_json(&["link", "show", ifname])[0]["address"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Drops every frame `ns` receives from `from` on eth1: with the same on
/// the other end, nothing crosses between the two, ARP included.
fn cut(ns: &Netns, from: &str) {
    common::hosts::nft(
        ns,
        &format!(
            "table netdev relaycut {{\n chain in {{\n  type filter hook ingress device eth1 priority 0;\n  ether saddr {from} drop\n }}\n}}\n"
        ),
    );
}

#[test]
fn readme_hosts_relay_a_cut_link_and_return_when_it_heals() {
    let net = Net::new();
    let hosts: Vec<Netns> = (1..=3).map(|i| Netns::new(&format!("h{i}"))).collect();
    net.as_readme_hosts(&hosts);
    let secret = net.secret();
    let mut agents = vec![Agent::start(&hosts[0], "h1", &secret, &[])];
    for (i, h) in hosts.iter().enumerate().skip(1) {
        let name = format!("h{}", i + 1);
        agents.push(Agent::start(
            h,
            &name,
            &secret,
            &["--join", "192.168.56.11"],
        ));
    }
    let pods: Vec<(Netns, String, ProbeServer)> = common::hosts::pod_per_host(&agents);
    let direct = |a: usize, peer: &str| {
        let p = agents[a].peer(peer);
        p["path"] == "routed" && p["data_path"] == "ok"
    };
    until("h1 and h3 reach each other directly", 30, || {
        direct(0, "h3") && direct(2, "h1")
    });

    cut(&hosts[0], &mac(&hosts[2], "eth1"));
    cut(&hosts[2], &mac(&hosts[0], "eth1"));
    until("both ends relay through h2", 30, || {
        agents[0].peer("h3")["relay"] == "h2" && agents[2].peer("h1")["relay"] == "h2"
    });
    let (h1c, _, _) = &pods[0];
    let (h3c, h3ip, _) = &pods[2];
    h1c.probe(h3ip, "tcp,udp,icmp").unwrap();
    h3c.probe(&pods[0].1, "tcp,udp,icmp").unwrap();
    hosts[0].probe(h3ip, "tcp,icmp").unwrap();
    // h2 still reaches both directly.
    assert!(direct(1, "h1") && direct(1, "h3"));

    for h in [&hosts[0], &hosts[2]] {
        h.exec(&["nft", "delete", "table", "netdev", "relaycut"]);
    }
    until("both ends direct again", 40, || {
        direct(0, "h3") && direct(2, "h1")
    });
    assert!(agents[0].peer("h3")["relay"].is_null());
    h1c.probe(h3ip, "tcp,udp,icmp").unwrap();
}
