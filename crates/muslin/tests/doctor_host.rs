//! `muslin doctor` meets the host pitfalls on hosts built as README's
//! Install section says: a firewall that drops pod traffic (5), strict
//! rp_filter with an asymmetric route (6), a network manager that would
//! take our interfaces (7) and a route inside the pod network (12). Each
//! scenario creates the pitfall, expects doctor to name it, removes it and
//! expects the check to be ok on the same host.

mod common;

use common::hosts::{findings, level, pod_per_host, run_in, until, Agent, Net};
use common::{Netns, BIN};
use serde_json::Value;

/// What the findings of `check` saw, one per line.
fn saw(report: &Value, check: &str) -> String {
    findings(report, check)
        .iter()
        .map(|f| format!("{} -- {}", f["saw"], f["fix"]))
        .collect::<Vec<_>>()
        .join("\n")
}

fn must_in(ns: &Netns, args: &[&str]) {
    let (ok, out) = run_in(ns, args);
    assert!(ok, "{args:?} in {}: {out}", ns.name);
}

/// Two README hosts whose agents agree on each other's eth1 address.
fn two_hosts() -> (Net, Vec<Netns>, Vec<Agent>) {
    let net = Net::new();
    let hosts = vec![Netns::new("dh"), Netns::new("dh")];
    net.as_readme_hosts(&hosts);
    let a1 = Agent::start(&hosts[0], "h1", &net.secret(), &[]);
    let a2 = Agent::start(&hosts[1], "h2", &net.secret(), &["--join", "192.168.56.11"]);
    until("the agents see each other on eth1", 45, || {
        let (p1, p2) = (a1.peer("h2"), a2.peer("h1"));
        a1.status()["cluster"]["underlay_if"] == "eth1"
            && p1["address"] == "192.168.56.12"
            && p1["alive"] == true
            && p2["address"] == "192.168.56.11"
            && p2["alive"] == true
    });
    (net, hosts, vec![a1, a2])
}

/// One README host with its agent past choosing its address.
fn one_host() -> (Net, Netns, Agent) {
    let net = Net::new();
    let h = Netns::new("dh");
    net.as_readme_hosts(std::slice::from_ref(&h));
    let a = Agent::start(&h, "h1", &net.secret(), &[]);
    until("the agent chose its address", 30, || {
        a.status()["cluster"]["underlay_if"] != ""
    });
    (net, h, a)
}

#[test]
fn a_forward_chain_that_drops_pod_traffic_is_named() {
    let (_net, h, a) = one_host();
    let (_, r) = a.doctor();
    assert_eq!(level(&r, "forward-drop"), "ok", "{r:#}");

    // Docker's policy: the agent's accepts cover it within a round.
    must_in(&h, &["iptables-legacy", "-P", "FORWARD", "DROP"]);
    until("the agent's accepts cover the drop policy", 20, || {
        level(&a.doctor().1, "forward-drop") == "warning"
    });
    let (_, r) = a.doctor();
    let s = saw(&r, "forward-drop");
    assert!(
        s.contains("iptables-legacy table filter chain FORWARD") && s.contains("policy is drop"),
        "{s}"
    );
    assert!(s.contains("re-asserts"), "{s}");

    // An operator's rule that drops pod addresses ahead of our accepts.
    must_in(
        &h,
        &[
            "iptables-legacy",
            "-I",
            "FORWARD",
            "1",
            "-s",
            "10.244.0.0/16",
            "-j",
            "DROP",
        ],
    );
    let (code, r) = a.doctor();
    assert_eq!(level(&r, "forward-drop"), "problem", "{r:#}");
    assert!(
        saw(&r, "forward-drop").contains("`-A FORWARD -s 10.244.0.0/16 -j DROP` drops pod traffic"),
        "{r:#}"
    );
    assert_eq!(code, 1, "{r:#}");

    must_in(
        &h,
        &[
            "iptables-legacy",
            "-D",
            "FORWARD",
            "-s",
            "10.244.0.0/16",
            "-j",
            "DROP",
        ],
    );
    must_in(&h, &["iptables-legacy", "-P", "FORWARD", "ACCEPT"]);
    let (_, r) = a.doctor();
    assert_eq!(level(&r, "forward-drop"), "ok", "{r:#}");
}

#[test]
fn strict_rp_filter_with_an_asymmetric_route_back_is_named() {
    let (_net, hosts, agents) = two_hosts();
    let (h1, a1) = (&hosts[0], &agents[0]);
    let (_, r) = a1.doctor();
    assert_eq!(level(&r, "rp-filter"), "ok", "{r:#}");
    assert!(saw(&r, "rp-filter").contains("strict"), "{r:#}");

    // Packets from h2 arrive on eth1; the route back now leaves by eth0.
    h1.ip(&["route", "add", "192.168.56.12/32", "dev", "eth0"]);
    let (code, r) = a1.doctor();
    assert_eq!(level(&r, "rp-filter"), "problem", "{r:#}");
    let s = saw(&r, "rp-filter");
    assert!(
        s.contains("h2 (192.168.56.12) leaves by eth0") && s.contains("underlay eth1"),
        "{s}"
    );
    assert!(s.contains("net.ipv4.conf.eth1.rp_filter=2"), "{s}");
    assert_eq!(code, 1, "{r:#}");

    for k in ["all", "eth1"] {
        must_in(
            h1,
            &["sysctl", "-qw", &format!("net.ipv4.conf.{k}.rp_filter=2")],
        );
    }
    let (_, r) = a1.doctor();
    assert_eq!(level(&r, "rp-filter"), "ok", "{r:#}");
    assert!(saw(&r, "rp-filter").contains("loose"), "{r:#}");
}

#[test]
fn a_route_over_another_nodes_block_is_named() {
    let (_net, hosts, agents) = two_hosts();
    let _pods = pod_per_host(&agents);
    let block = agents[1].status()["blocks"][0]["cidr"]
        .as_str()
        .expect("h2 holds a block")
        .to_string();
    until("h1 knows h2's block", 20, || {
        agents[0].peer("h2")["blocks"]
            .as_array()
            .is_some_and(|b| b.iter().any(|x| x == block.as_str()))
    });
    let (_, r) = agents[0].doctor();
    assert_eq!(level(&r, "pod-cidr-overlap"), "ok", "{r:#}");

    // Half of h2's block, more specific than h1's route to it.
    let (net, len) = block.split_once('/').unwrap();
    let half = format!("{net}/{}", len.parse::<u8>().unwrap() + 1);
    hosts[0].ip(&["route", "add", &half, "via", "10.0.2.2"]);
    let (code, r) = agents[0].doctor();
    assert_eq!(level(&r, "pod-cidr-overlap"), "problem", "{r:#}");
    let s = saw(&r, "pod-cidr-overlap");
    assert!(
        s.contains(&format!(
            "route {half} via 10.0.2.2 dev eth0 overlaps block {block} of node h2"
        )),
        "{s}"
    );
    assert_eq!(code, 1, "{r:#}");

    hosts[0].ip(&["route", "del", &half, "via", "10.0.2.2"]);
    let (_, r) = agents[0].doctor();
    assert_eq!(level(&r, "pod-cidr-overlap"), "ok", "{r:#}");
}

/// `muslin doctor --json` on `a`'s host in private PID and mount
/// namespaces: `setup` (shell) runs first, with a tmpfs over /run and over
/// the managers' directories in /etc and /usr/lib, so the fake manager
/// processes and files exist only there and vanish with the namespaces.
fn doctor_isolated(a: &Agent, setup: &str) -> (i32, Value) {
    let script = format!(
        "set -e\n\
         mount -t tmpfs muslin-test /run\n\
         for d in /etc/NetworkManager /etc/systemd/network /usr/lib/NetworkManager /usr/lib/systemd/network /lib/systemd/network; do\n\
           if [ -d \"$d\" ] && [ ! -L \"$d\" ]; then mount -t tmpfs muslin-test \"$d\"; fi\n\
         done\n\
         mkdir -p /run/NetworkManager/conf.d /run/systemd/network /run/fake\n\
         {setup}\n\
         set +e\n\
         {BIN} doctor --json --socket {}\n",
        a.socket.display()
    );
    let o = std::process::Command::new("ip")
        .args(["netns", "exec", &a.ns_name, "unshare", "--pid", "--fork"])
        .args([
            "--mount-proc",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ])
        .output()
        .unwrap();
    common::hosts::doctor_report(&o)
}

/// Starts a process named `name` (a copy of sleep) in the background.
fn fake(name: &str) -> String {
    format!("cp \"$(command -v sleep)\" /run/fake/{name}\n/run/fake/{name} 600 >/dev/null 2>&1 &")
}

#[test]
fn network_manager_without_our_unmanaged_devices_is_named() {
    let (_net, _h, a) = one_host();
    let (_, r) = doctor_isolated(&a, "true");
    assert_eq!(level(&r, "network-managers"), "ok", "{r:#}");
    assert!(
        saw(&r, "network-managers").contains("no NetworkManager or systemd-networkd running"),
        "{r:#}"
    );

    let (code, r) = doctor_isolated(&a, &fake("NetworkManager"));
    assert_eq!(level(&r, "network-managers"), "problem", "{r:#}");
    let s = saw(&r, "network-managers");
    assert!(s.contains("msl-vxlan"), "{s}");
    assert!(
        s.contains("/etc/NetworkManager/conf.d/muslin.conf")
            && s.contains("unmanaged-devices=interface-name:msl*"),
        "{s}"
    );
    assert_eq!(code, 1, "{r:#}");

    let conf = "printf '[keyfile]\\nunmanaged-devices=interface-name:msl*\\n' \
                > /run/NetworkManager/conf.d/muslin.conf";
    let (_, r) = doctor_isolated(&a, &format!("{}\n{conf}", fake("NetworkManager")));
    assert_eq!(level(&r, "network-managers"), "ok", "{r:#}");
    assert!(
        saw(&r, "network-managers").contains("/run/NetworkManager/conf.d/muslin.conf"),
        "{r:#}"
    );
}

#[test]
fn systemd_networkd_matching_our_interfaces_is_named() {
    let (_net, _h, a) = one_host();
    let all = "printf '[Match]\\nName=en* msl*\\n\\n[Network]\\nDHCP=yes\\n' \
               > /run/systemd/network/10-all.network";
    let setup = format!("{}\n{all}", fake("systemd-networkd"));
    let (code, r) = doctor_isolated(&a, &setup);
    assert_eq!(level(&r, "network-managers"), "problem", "{r:#}");
    assert!(
        saw(&r, "network-managers").contains("/run/systemd/network/10-all.network matches"),
        "{r:#}"
    );
    assert_eq!(code, 1, "{r:#}");

    let ours = "printf '[Match]\\nName=msl*\\n\\n[Link]\\nUnmanaged=yes\\n' \
                > /run/systemd/network/00-muslin.network";
    let (_, r) = doctor_isolated(&a, &format!("{setup}\n{ours}"));
    assert_eq!(level(&r, "network-managers"), "ok", "{r:#}");
}
