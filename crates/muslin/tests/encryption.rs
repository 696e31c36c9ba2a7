//! WireGuard encryption on hosts built by hand as README's Install
//! section has them (a NAT NIC first with the same address on every host,
//! the shared segment on eth1, strict rp_filter, the first host without
//! --join), each agent started with `--encryption wireguard`.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::hosts::{until, Agent, Net};
use common::{Netns, ProbeServer, TempDir, BIN};

/// `--encryption wireguard` with a control socket of its own: the hosts
/// of every test share this machine's /var/run/wireguard.
fn encrypt() -> Vec<String> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("mw{}-{n}", std::process::id() % 1_000_000);
    ["--encryption", "wireguard", "--wireguard-uapi", &name]
        .map(String::from)
        .to_vec()
}

fn start(ns: &Netns, name: &str, secret: &std::path::Path, join: bool) -> Agent {
    let mut args = encrypt();
    if join {
        args.extend(["--join".to_string(), "192.168.56.11".to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Agent::start(ns, name, secret, &args)
}

/// `wg ARGS...` in `ns` against `agent`'s device; (success, output).
fn wg(ns: &Netns, agent: &Agent, args: &[&str]) -> (bool, String) {
    let st = agent.status();
    let name = st["cluster"]["wireguard"]["uapi"]
        .as_str()
        .unwrap()
        .to_string();
    let mut all = vec!["wg", args[0], &name];
    all.extend(&args[1..]);
    let o = ns.exec(&all);
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

struct Cluster {
    net: Net,
    /// The hosts' shared segment.
    segment: String,
    hosts: Vec<Netns>,
    agents: Vec<Agent>,
    /// (container namespace, address, its probe server) per host.
    pods: Vec<(Netns, String, ProbeServer)>,
    secret: std::path::PathBuf,
}

impl Drop for Cluster {
    /// Killed agents leave their control sockets behind.
    fn drop(&mut self) {
        for a in &self.agents {
            if let Some(n) = a.status()["cluster"]["wireguard"]["uapi"].as_str() {
                let _ = std::fs::remove_file(format!("/var/run/wireguard/{n}.sock"));
            }
        }
    }
}

/// Three README hosts with encryption and a container each, every pair
/// encrypted and answering.
fn cluster() -> Cluster {
    let net = Net::new();
    let hosts: Vec<Netns> = (1..=3).map(|i| Netns::new(&format!("h{i}"))).collect();
    let segment = net.as_readme_hosts(&hosts);
    let secret = net.secret();
    let mut agents = vec![start(&hosts[0], "h1", &secret, false)];
    for (i, h) in hosts.iter().enumerate().skip(1) {
        agents.push(start(h, &format!("h{}", i + 1), &secret, true));
    }
    let pods = common::hosts::pod_per_host(&agents);
    let c = Cluster {
        net,
        segment,
        hosts,
        agents,
        pods,
        secret,
    };
    for (i, a) in c.agents.iter().enumerate() {
        for j in (0..3).filter(|j| *j != i) {
            let peer = format!("h{}", j + 1);
            until(&format!("{} reaches {peer} encrypted", a.name), 60, || {
                let p = a.peer(&peer);
                p["path"] == "wireguard" && p["data_path"] == "ok"
            });
        }
    }
    c
}

/// `muslin rotate-key` on host `i`.
fn rotate_key(c: &Cluster, i: usize) {
    let socket = c.agents[i].socket.to_str().unwrap();
    let o = c.hosts[i].exec(&[BIN, "rotate-key", "--socket", socket]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// 10 ms pings from `from` to `to` for `count` echoes, in the background.
fn ping(from: &Netns, to: &str, count: u32) -> std::process::Child {
    Command::new("ip")
        .args(["netns", "exec", &from.name, BIN, "probe", "ping", to])
        .args(["--count", &count.to_string(), "--interval-ms", "10"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Echoes lost by a ping started with [`ping`].
fn lost(child: std::process::Child) -> (u64, u64) {
    let o = child.wait_with_output().unwrap();
    let (sent, got) = common::ping_counts(&String::from_utf8_lossy(&o.stdout));
    (sent - got, sent)
}

/// A capture running on `ifname` in `ns` until dropped; `bytes()` reads it.
struct Capture {
    child: Option<std::process::Child>,
    _dir: TempDir,
    file: std::path::PathBuf,
}

impl Capture {
    fn start(ns: &Netns, ifname: &str) -> Capture {
        let dir = TempDir::new("pcap");
        let file = dir.0.join("cap.pcap");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "tcpdump", "-i", ifname, "-U"])
            .args(["-s", "0", "-w", file.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        until("tcpdump writes its capture", 10, || file.exists());
        // tcpdump opens the file before its socket is bound.
        std::thread::sleep(Duration::from_millis(500));
        Capture {
            child: Some(child),
            _dir: dir,
            file,
        }
    }

    /// Stops the capture and returns what it holds.
    fn finish(mut self) -> Vec<u8> {
        std::thread::sleep(Duration::from_millis(300));
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let _ = c.wait();
        }
        std::fs::read(&self.file).unwrap()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Sends `marker` from `c` to `to` over TCP, UDP and ICMP (as the echo's
/// pattern).
fn send_marker(c: &Netns, to: &str, marker: &str) {
    let script = format!(
        "exec 3<>/dev/tcp/{to}/7777 && for i in $(seq 20); do echo {marker} >&3; done; exec 3>&-; \
         for i in $(seq 20); do echo {marker} > /dev/udp/{to}/7777; done"
    );
    // A send can fail without a word (a write after the listener closed
    // the connection: SIGPIPE); it is sent again, which only puts more
    // plaintext in reach of the wire capture.
    let mut o = c.exec(&["bash", "-c", &script]);
    for _ in 0..2 {
        if o.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        o = c.exec(&["bash", "-c", &script]);
    }
    assert!(
        o.status.success(),
        "sending the marker: {} {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let pattern: String = marker
        .bytes()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    let o = c.exec(&["ping", "-c", "5", "-i", "0.05", "-p", &pattern, to]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}

#[test]
fn readme_hosts_encrypt_every_pair_and_no_pod_payload_crosses_in_clear() {
    let c = cluster();
    // The full matrix over TCP, UDP and ICMP, and multi-MB transfers.
    for (i, (from, _, _)) in c.pods.iter().enumerate() {
        for (j, (_, to, _)) in c.pods.iter().enumerate() {
            if i != j {
                from.probe(to, "tcp,udp,icmp")
                    .unwrap_or_else(|e| panic!("h{} -> h{}: {e}", i + 1, j + 1));
            }
        }
    }
    let (h1c, _, _) = &c.pods[0];
    let h3ip = &c.pods[2].1;
    let o = h1c.exec(&[BIN, "probe", "transfer", h3ip, "--bytes", "8000000"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Hosts reach pods too, through the tunnel.
    c.hosts[0].probe(h3ip, "tcp,icmp").unwrap();

    // On the wire only WireGuard: the marker is seen in the pod, never on
    // the host's NIC, where WireGuard's port is.
    let marker = format!("MUSLIN-PLAINTEXT-{}", std::process::id());
    let wire = Capture::start(&c.hosts[0], "eth1");
    let pod = Capture::start(h1c, "eth0");
    send_marker(h1c, h3ip, &marker);
    let (wire, pod) = (wire.finish(), pod.finish());
    assert!(
        contains(&pod, marker.as_bytes()),
        "the capture in the pod misses the marker: the search proves nothing"
    );
    assert!(
        !contains(&wire, marker.as_bytes()),
        "the marker crossed the wire in clear"
    );
    assert!(wire.len() > 4096, "the wire capture holds almost nothing");

    // Operators see the tunnel with the standard tool.
    let (ok, out) = wg(&c.hosts[0], &c.agents[0], &["show"]);
    assert!(ok, "{out}");
    let st = c.agents[2].status();
    let h3key = st["cluster"]["wireguard"]["public_key"].as_str().unwrap();
    assert!(out.contains(h3key), "wg show lacks h3's key {h3key}: {out}");
    assert!(out.contains("latest handshake"), "{out}");
    assert!(out.contains("10.244."), "{out}");
    // Status names each peer with its handshake.
    let w = &c.agents[0].status()["cluster"]["wireguard"];
    assert!(w["path"].as_str().unwrap().contains("userspace"), "{w}");
    let peers = w["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2, "{w}");
    assert!(peers.iter().all(|p| p["handshake_age_s"].is_u64()), "{w}");
    // Pods get the MTU less WireGuard's overhead.
    let mtu = c.pods[0].0.ip_json(&["link", "show", "eth0"])[0]["mtu"]
        .as_u64()
        .unwrap();
    assert_eq!(mtu, 1500 - 60);
}

#[test]
fn a_node_that_does_not_encrypt_is_refused_and_told_why() {
    let c = cluster();
    let h4 = Netns::new("h4");
    let nat = c.net.segment(1500);
    c.net.wire(&h4, "eth0", &nat, "10.0.2.15/24", 1500);
    c.net
        .wire(&h4, "eth1", &c.segment, "192.168.56.14/24", 1500);
    h4.ip(&["route", "add", "default", "via", "10.0.2.2"]);
    let said = Agent::refused(&h4, &c.secret, &["--join", "192.168.56.11"]);
    assert!(
        said.contains("encrypts pod traffic") && said.contains("encryption = \"wireguard\""),
        "{said}"
    );
    // A bad port is refused at start, naming the field.
    let said = Agent::refused(
        &h4,
        &c.secret,
        &["--encryption", "wireguard", "--wireguard-port", "7331"],
    );
    assert!(said.contains("wireguard-port"), "{said}");
    // A node that cannot encrypt as asked refuses, saying why (this
    // kernel has no WireGuard; on one that has, it starts).
    if !std::path::Path::new("/sys/module/wireguard").exists() {
        let args = [
            &encrypt()[..],
            &["--wireguard-implementation".into(), "kernel".into()],
        ]
        .concat();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let said = Agent::refused(&h4, &c.secret, &args);
        assert!(
            said.contains("cannot encrypt") && said.contains("kernel"),
            "{said}"
        );
    }
}

#[test]
fn a_key_peers_do_not_know_is_refused_until_it_is_published() {
    let c = cluster();
    let (h1c, _, _) = &c.pods[0];
    let h3ip = c.pods[2].1.clone();
    let old = c.agents[2].status()["cluster"]["wireguard"]["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    // h1 and h2 stop hearing h3's gossip: its next record cannot reach
    // them.
    let deaf = "table inet encdeaf {\n chain in {\n  type filter hook input priority 0;\n  ip saddr 192.168.56.13 udp dport 7331 drop\n }\n}\n";
    for h in &c.hosts[..2] {
        common::hosts::nft(h, deaf);
    }
    rotate_key(&c, 2);
    let new = c.agents[2].status()["cluster"]["wireguard"]["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(old, new);
    // h3 now speaks with a key h1 does not know: refused.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        h1c.probe(&h3ip, "icmp").is_err(),
        "h1 accepted traffic from a key it never heard of"
    );
    for h in &c.hosts[..2] {
        h.exec(&["nft", "delete", "table", "inet", "encdeaf"]);
    }
    let t = Instant::now();
    until("h1 accepts h3's new key", 30, || {
        h1c.probe(&h3ip, "icmp").is_ok()
    });
    eprintln!(
        "h3's new key accepted {:?} after its record could travel",
        t.elapsed()
    );
    let (_, keys) = wg(&c.hosts[0], &c.agents[0], &["show", "peers"]);
    assert!(
        keys.contains(&new) && !keys.contains(&old),
        "h1's peers {keys} should hold h3's new {new}, not its old {old}"
    );
}

#[test]
fn rotation_keeps_a_running_connection_and_costs_at_most_a_handshake() {
    let c = cluster();
    let (h1c, _, _) = &c.pods[0];
    let h3ip = c.pods[2].1.clone();
    let p = ping(h1c, &h3ip, 500);
    std::thread::sleep(Duration::from_secs(1));
    rotate_key(&c, 2);
    let (lost, sent) = lost(p);
    eprintln!(
        "key rotation: {lost} of {sent} echoes lost ({} ms)",
        lost * 10
    );
    // A handshake is a round trip; gossip carries the new key in a few
    // rounds (100-200 ms). Generous: catches a tunnel that waited for a
    // rekey timer (5 s) or never came back.
    assert!(lost < 300, "{lost} of {sent} echoes lost");
    h1c.probe(&h3ip, "tcp,udp,icmp").unwrap();
}

#[test]
fn an_agent_killed_and_restarted_under_a_ping_resumes_encrypted_traffic() {
    let mut c = cluster();
    let (h1c, _, _) = &c.pods[0];
    let h3ip = c.pods[2].1.clone();
    let p = ping(h1c, &h3ip, 1000);
    std::thread::sleep(Duration::from_secs(2));
    let mut child = c.agents[2].child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    // The interface outlives the agent (its routes too); only the
    // process that encrypts is gone.
    assert!(c.hosts[2].links().contains(&"msl-wg0".to_string()));
    c.agents[2].spawn();
    c.agents[2].wait_ready(Duration::from_secs(30));
    let (lost, sent) = lost(p);
    eprintln!(
        "agent SIGKILL and restart: {lost} of {sent} echoes lost ({} ms)",
        lost * 10
    );
    assert!(lost < 800, "traffic did not resume: {lost} of {sent} lost");
    let (h1c, _, _) = &c.pods[0];
    h1c.probe(&h3ip, "tcp,udp,icmp").unwrap();
}

/// Attaches a container on `a`'s host to `network`; its namespace and
/// address.
fn attach(a: &Agent, network: &str) -> (Netns, String) {
    let ns = Netns::new("n");
    let conf = serde_json::json!({"cniVersion": "1.1.0", "name": network, "type": "muslin",
                                  "socket": a.socket, "network": network});
    let (v, ok) = common::hosts::plugin(&a.ns_name, &conf, "ADD", &common::unique("ctr"), &ns, &[]);
    assert!(ok, "ADD to {network} on {}: {v}\n{}", a.name, a.log());
    (ns, common::result_ip(&v))
}

#[test]
fn overlapping_networks_cross_between_hosts_inside_wireguard_and_stay_apart() {
    let c = cluster();
    for (name, subnet) in [("red", "10.50.0.0/16"), ("blue", "10.50.0.0/16")] {
        let o = c.hosts[0].exec(&[
            BIN,
            "network",
            "create",
            name,
            "--subnet",
            subnet,
            "--socket",
            c.agents[0].socket.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    until("both networks in force on h1 and h3", 30, || {
        [0, 2].iter().all(|h| {
            let n = c.agents[*h].status()["cluster"]["networks"].clone();
            ["red", "blue"].iter().all(|x| {
                n.as_array()
                    .is_some_and(|l| l.iter().any(|y| y["name"] == *x))
            })
        })
    });
    let (red1, _) = attach(&c.agents[0], "red");
    let (red3, red3ip) = attach(&c.agents[2], "red");
    let (blue1, _) = attach(&c.agents[0], "blue");
    let _srv = ProbeServer::start(&red3, 7777);
    until("red reaches across hosts", 30, || {
        red1.probe(&red3ip, "tcp,udp,icmp").is_ok()
    });
    // blue's container has the same addresses in its own network: it
    // does not reach red's.
    assert!(blue1.probe(&red3ip, "tcp").is_err());
    // Pods of a network get the MTU less VXLAN and WireGuard.
    let mtu = red1.ip_json(&["link", "show", "eth0"])[0]["mtu"]
        .as_u64()
        .unwrap();
    assert_eq!(mtu, 1500 - 50 - 60);
    let o = red1.exec(&[BIN, "probe", "transfer", &red3ip, "--bytes", "4000000"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // On the wire, no VXLAN and no marker: only WireGuard.
    let marker = format!("MUSLIN-NETWORK-PLAINTEXT-{}", std::process::id());
    let wire = Capture::start(&c.hosts[0], "eth1");
    let pod = Capture::start(&red1, "eth0");
    send_marker(&red1, &red3ip, &marker);
    let (wire, pod) = (wire.finish(), pod.finish());
    assert!(
        contains(&pod, marker.as_bytes()),
        "the pod's capture misses the marker"
    );
    assert!(
        !contains(&wire, marker.as_bytes()),
        "a network's payload crossed the wire in clear"
    );
}

/// Drops every frame `ns` receives from `from` on eth1.
fn cut(ns: &Netns, from: &Netns) {
    let mac = from.ip_json(&["link", "show", "eth1"])[0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    common::hosts::nft(
        ns,
        &format!(
            "table netdev enccut {{\n chain in {{\n  type filter hook ingress device eth1 priority 0;\n  ether saddr {mac} drop\n }}\n}}\n"
        ),
    );
}

#[test]
fn a_cut_link_is_relayed_inside_wireguard_and_heals() {
    let c = cluster();
    cut(&c.hosts[0], &c.hosts[2]);
    cut(&c.hosts[2], &c.hosts[0]);
    until("both ends relay through h2", 30, || {
        c.agents[0].peer("h3")["relay"] == "h2" && c.agents[2].peer("h1")["relay"] == "h2"
    });
    // h2's device carries h3's blocks for h1 (and h1's for h3); each end
    // keeps the other's tunnel address as a peer of its own, for probes.
    let (h1c, _, _) = &c.pods[0];
    let (h3c, h3ip, _) = &c.pods[2];
    h1c.probe(h3ip, "tcp,udp,icmp").unwrap();
    h3c.probe(&c.pods[0].1, "tcp,udp,icmp").unwrap();
    c.hosts[0].probe(h3ip, "tcp,icmp").unwrap();
    let o = h1c.exec(&[BIN, "probe", "transfer", h3ip, "--bytes", "4000000"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (_, peers) = wg(&c.hosts[1], &c.agents[1], &["show", "allowed-ips"]);
    let h3block = c.agents[2].status()["blocks"][0]["cidr"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(peers.contains(&h3block), "{peers}");
    for h in [&c.hosts[0], &c.hosts[2]] {
        h.exec(&["nft", "delete", "table", "netdev", "enccut"]);
    }
    until("both ends direct again", 40, || {
        c.agents[0].peer("h3")["path"] == "wireguard"
            && c.agents[2].peer("h1")["path"] == "wireguard"
    });
    h1c.probe(h3ip, "tcp,udp,icmp").unwrap();
}

/// Packets counted by the rule of `chain` (table `ip muslin`) whose
/// comment contains `what`, in `ns`.
fn dropped(ns: &Netns, chain: &str, what: &str) -> u64 {
    let o = ns.exec(&["nft", "-j", "list", "chain", "ip", "muslin", chain]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.get("rule"))
        .filter(|r| r["comment"].as_str().is_some_and(|c| c.contains(what)))
        .flat_map(|r| r["expr"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["counter"]["packets"].as_u64())
        .sum()
}

#[test]
fn nothing_of_the_cluster_crosses_in_clear_or_enters_around_wireguard() {
    let c = cluster();
    let (h1c, _, _) = &c.pods[0];
    let h3ip = c.pods[2].1.clone();
    let h3block = c.agents[2].status()["blocks"][0]["cidr"]
        .as_str()
        .unwrap()
        .to_string();
    // The route into the device gone (as for a peer refused, or a device
    // lost): the pod's packets would take the default route, in clear.
    let marker = format!("MUSLIN-LEAK-{}", std::process::id());
    let eth0 = Capture::start(&c.hosts[0], "eth0");
    let eth1 = Capture::start(&c.hosts[0], "eth1");
    let before = dropped(&c.hosts[0], "wireguard_clear", "between hosts in clear");
    c.hosts[0].ip(&["route", "del", &h3block]);
    let _ = h1c.exec(&[
        "bash",
        "-c",
        &format!("for i in $(seq 20); do echo {marker} > /dev/udp/{h3ip}/7777; done"),
    ]);
    let (eth0, eth1) = (eth0.finish(), eth1.finish());
    assert!(
        !contains(&eth0, marker.as_bytes()),
        "the marker left on eth0 in clear"
    );
    assert!(
        !contains(&eth1, marker.as_bytes()),
        "the marker left on eth1 in clear"
    );
    let after = dropped(&c.hosts[0], "wireguard_clear", "between hosts in clear");
    assert!(
        after >= before + 20,
        "{before} -> {after}: not dropped and counted"
    );
    // The agent puts the route back (level-triggered).
    until("the route into the device is back", 15, || {
        h1c.probe(&h3ip, "icmp").is_ok()
    });

    // A host on the segment that spoofs a pod source: refused at h1.
    let h4 = Netns::new("h4");
    c.net
        .wire(&h4, "eth1", &c.segment, "192.168.56.14/24", 1500);
    let h1ip = &c.pods[0].1;
    h4.ip(&["addr", "add", "10.244.250.9/32", "dev", "eth1"]);
    // Its ARP would carry the spoofed address and be refused: the
    // neighbour is known, as an attacker would make it.
    let h1mac = c.hosts[0].ip_json(&["link", "show", "eth1"])[0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    h4.ip(&[
        "neigh",
        "replace",
        "192.168.56.11",
        "lladdr",
        &h1mac,
        "dev",
        "eth1",
    ]);
    h4.ip(&[
        "route",
        "add",
        h1ip,
        "via",
        "192.168.56.11",
        "src",
        "10.244.250.9",
    ]);
    let before = dropped(&c.hosts[0], "wireguard_in", "cluster sources");
    let o = h4.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "1", h1ip]);
    assert!(!o.status.success(), "a spoofed pod source got an answer");
    let after = dropped(&c.hosts[0], "wireguard_in", "cluster sources");
    assert!(
        after >= before + 3,
        "{before} -> {after}: spoofed packets not counted"
    );
}
