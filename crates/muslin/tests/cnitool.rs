//! cnitool, the CNI project's reference client, drives Muslin at the head of
//! a conflist chaining Debian's portmap and bandwidth plugins, on hosts
//! built as README's Install section says (the first agent without
//! `--join`). cnitool is built by `test-tools/cnitool/build.sh` from
//! Debian's source package of CNI 1.1.2 against Debian's libcni; that
//! libcni speaks CNI up to 1.0.0 and has no GC or STATUS (they came with
//! libcni 1.2), so the conflist says 1.0.0 and cnitool drives ADD, CHECK and
//! DEL. STATUS and GC are sent to Muslin's plugin directly, with the
//! conflist's Muslin entry at 1.1.0, as a 1.1 runtime sends them to each
//! plugin that speaks 1.1 (Debian's portmap and bandwidth speak 1.0.0, and
//! a 1.2 libcni skips GC and STATUS for a 1.0.0 list altogether). Every DEL
//! runs twice, and each scenario ends with nothing left behind: no veth or
//! ifb, no route to the container, no endpoint in the agent, no portmap
//! rule, no libcni cache entry.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::hosts::{Agent, ReadmePair};
use common::{eventually, must, unique, Netns, ProbeServer, TempDir, BIN, CNI_PLUGINS};
use serde_json::{json, Value};

/// libcni's default cache directory, which cnitool uses.
const LIBCNI_RESULTS: &str = "/var/lib/cni/results";

/// The cnitool binary, built (or found up to date) once per test process.
fn cnitool() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../test-tools/cnitool/build.sh");
        let o = Command::new(&script).output().unwrap();
        assert!(
            o.status.success(),
            "{} failed (run scripts/install-deps.sh): {}",
            script.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        let path = String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .unwrap()
            .to_string();
        PathBuf::from(path)
    })
}

/// What a runtime keeps for one host: CNI_PATH (Muslin's plugin beside
/// Debian's portmap and bandwidth) and NETCONFPATH with the conflist.
/// Removes libcni's cache entries for its network on drop.
struct Runtime {
    dir: TempDir,
    host: String,
    net: String,
    conflist: Value,
}

impl Runtime {
    fn new(agent: &Agent) -> Runtime {
        let dir = TempDir::new("cnitool");
        let bin = dir.0.join("bin");
        let netd = dir.0.join("net.d");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&netd).unwrap();
        std::os::unix::fs::symlink(BIN, bin.join("muslin")).unwrap();
        for p in ["portmap", "bandwidth"] {
            std::os::unix::fs::symlink(format!("{CNI_PLUGINS}/{p}"), bin.join(p)).unwrap();
        }
        let net = unique("net");
        let conflist = json!({
            "cniVersion": "1.0.0", // the newest Debian's libcni and plugins speak
            "name": net,
            "plugins": [
                {"type": "muslin", "socket": agent.socket},
                {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
                {"type": "bandwidth", "capabilities": {"bandwidth": true}},
            ]
        });
        std::fs::write(
            netd.join(format!("10-{net}.conflist")),
            serde_json::to_vec_pretty(&conflist).unwrap(),
        )
        .unwrap();
        // The same network without portmap, for CHECK: Debian's portmap
        // 1.1.1 fails CHECK on a container with no IPv6 address, looking
        // for ip6tables rules it never made (containernetworking/plugins
        // issue 819, fixed upstream after 1.1.1).
        let mut without = conflist.clone();
        without["plugins"]
            .as_array_mut()
            .unwrap()
            .retain(|p| p["type"] != "portmap");
        let netd = dir.0.join("net.d-check");
        std::fs::create_dir_all(&netd).unwrap();
        std::fs::write(
            netd.join(format!("10-{net}.conflist")),
            serde_json::to_vec_pretty(&without).unwrap(),
        )
        .unwrap();
        Runtime {
            dir,
            host: agent.ns_name.clone(),
            net,
            conflist,
        }
    }

    fn cni_path(&self) -> PathBuf {
        self.dir.0.join("bin")
    }

    /// `cnitool VERB NET /var/run/netns/C` in the host's namespace, with
    /// `cap_args` as CAP_ARGS.
    fn cnitool(&self, verb: &str, c: &Netns, cap_args: Option<&Value>) -> Output {
        self.cnitool_in("net.d", verb, c, cap_args)
    }

    /// Like `cnitool`, with NETCONFPATH `netd` under the runtime's dir.
    fn cnitool_in(&self, netd: &str, verb: &str, c: &Netns, cap_args: Option<&Value>) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host])
            .arg(cnitool())
            .args([verb, &self.net])
            .arg(c.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("NETCONFPATH", self.dir.0.join(netd))
            .env("CNI_PATH", self.cni_path())
            .env("CNI_IFNAME", "eth0");
        if let Some(a) = cap_args {
            cmd.env("CAP_ARGS", a.to_string());
        }
        cmd.output().unwrap()
    }

    /// A cnitool verb that must succeed; returns its stdout.
    fn ok(&self, verb: &str, c: &Netns, cap_args: Option<&Value>, agent: &Agent) -> String {
        let o = self.cnitool(verb, c, cap_args);
        assert!(
            o.status.success(),
            "cnitool {verb} {}: {}{}\nagent log:\n{}",
            c.name,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            agent.log()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `cnitool check`: through the whole chain it succeeds or fails only
    /// with portmap's known IPv6 error; through Muslin and bandwidth (the
    /// same network, the same cached result) it succeeds.
    fn check(&self, c: &Netns, cap_args: &Value, agent: &Agent) {
        let o = self.cnitool("check", c, Some(cap_args));
        let err =
            String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() || err.contains("could not check ipv6 dnat"),
            "cnitool check {} through the chain: {err}\nagent log:\n{}",
            c.name,
            agent.log()
        );
        let o = self.cnitool_in("net.d-check", "check", c, Some(cap_args));
        assert!(
            o.status.success(),
            "cnitool check {} (Muslin, bandwidth): {}{}\nagent log:\n{}",
            c.name,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            agent.log()
        );
    }

    /// `cnitool add`: the result it printed.
    fn add(&self, c: &Netns, cap_args: &Value, agent: &Agent) -> Value {
        let out = self.ok("add", c, Some(cap_args), agent);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("cnitool add printed {out:?}: {e}"))
    }

    /// The conflist's Muslin entry as a 1.1 runtime hands it to the plugin
    /// for STATUS and GC.
    fn muslin_conf(&self) -> Value {
        let mut conf = self.conflist["plugins"][0].clone();
        conf["cniVersion"] = json!("1.1.0");
        conf["name"] = json!(self.net);
        conf
    }

    /// Runs Muslin's plugin in the host's namespace for a command with no
    /// container (STATUS, GC); returns its output and exit code.
    fn plugin(&self, command: &str, conf: &Value) -> (String, i32) {
        let o = common::with_stdin(
            Command::new("ip")
                .args(["netns", "exec", &self.host])
                .arg(self.cni_path().join("muslin"))
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("CNI_COMMAND", command)
                .env("CNI_PATH", self.cni_path()),
            conf.to_string().as_bytes(),
        );
        (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            o.status.code().unwrap_or(-1),
        )
    }

    /// libcni's cached results for this network.
    fn cached(&self) -> Vec<String> {
        std::fs::read_dir(LIBCNI_RESULTS)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&format!("{}-", self.net)))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        for f in self.cached() {
            let _ = std::fs::remove_file(Path::new(LIBCNI_RESULTS).join(f));
        }
    }
}

/// (name, kind) of every link in `ns`.
fn links_by_kind(ns: &Netns) -> Vec<(String, String)> {
    ns.ip_json(&["-d", "link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["ifname"].as_str().unwrap_or_default().to_string(),
                l["linkinfo"]["info_kind"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

/// The agent's endpoint holding `addr`, if any.
fn endpoint_of(agent: &Agent, addr: &str) -> Option<Value> {
    agent.status()["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["addresses"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a.as_str().unwrap().split('/').next() == Some(addr))
        })
        .cloned()
}

fn nat_rules(host: &Netns) -> String {
    let o = host.exec(&["iptables-save", "-t", "nat"]);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// One container attached through cnitool: its address, Muslin's host
/// veth, the veths and ifbs that appeared on the host with it, and its
/// host port.
struct Attached {
    ip: String,
    host_if: String,
    links: Vec<String>,
    host_port: u16,
}

/// `cnitool add` of `c` with a port mapping from `host_port` and shaping.
fn attach(rt: &Runtime, agent: &Agent, host: &Netns, c: &Netns, host_port: u16) -> Attached {
    let before = links_by_kind(host);
    let result = rt.add(c, &caps(host_port), agent);
    let ip = common::result_ip(&result);
    let host_if = result["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["sandbox"].is_null())
        .and_then(|i| i["name"].as_str())
        .unwrap_or_else(|| panic!("no host interface in {result}"))
        .to_string();
    let links = links_by_kind(host)
        .into_iter()
        .filter(|(n, k)| (k == "veth" || k == "ifb") && !before.iter().any(|(b, _)| b == n))
        .map(|(n, _)| n)
        .collect();
    Attached {
        ip,
        host_if,
        links,
        host_port,
    }
}

/// DEL through cnitool twice (the second finds nothing and must succeed
/// all the same), then nothing of the attachment is left.
fn del_twice_leaves_nothing(rt: &Runtime, agent: &Agent, host: &Netns, c: &Netns, a: &Attached) {
    // A runtime hands DEL the capabilities it gave ADD: portmap finds its
    // rules by them.
    let cap_args = caps(a.host_port);
    rt.ok("del", c, Some(&cap_args), agent);
    rt.ok("del", c, Some(&cap_args), agent);
    eventually("the container's interface is gone", || c.links() == ["lo"]);
    eventually(
        "no veth or ifb of the container is left on the host",
        || {
            let now = host.links();
            !a.links.iter().any(|l| now.contains(l))
        },
    );
    let ip = &a.ip;
    let to_c = host.ip(&["route", "show", "table", "all", "to", &format!("{ip}/32")]);
    assert!(to_c.trim().is_empty(), "a route to {ip} is left: {to_c}");
    assert!(
        !host
            .our_routes()
            .iter()
            .any(|r| r["dst"].as_str() == Some(ip.as_str())),
        "a protocol 77 route to {ip} is left"
    );
    assert_eq!(endpoint_of(agent, ip), None, "{ip} is still allocated");
    let nat = nat_rules(host);
    assert!(
        !nat.contains(&format!("--dport {} ", a.host_port)) && !nat.contains(&format!("{ip}:")),
        "portmap rules for {ip}:{} are left:\n{nat}",
        a.host_port
    );
}

fn caps(host_port: u16) -> Value {
    json!({
        "portMappings": [{"hostPort": host_port, "containerPort": 7777, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": 100_000_000, "ingressBurst": 1_000_000,
                      "egressRate": 100_000_000, "egressBurst": 1_000_000},
    })
}

#[test]
fn cnitool_adds_checks_and_deletes_through_muslin_portmap_and_bandwidth() {
    let cl = ReadmePair::start();
    let (h1, h2) = (&cl.hosts[0], &cl.hosts[1]);
    let (a1, a2) = (&cl.agents[0], &cl.agents[1]);

    // A container on the other host, attached by the plugin as a runtime.
    let remote = Netns::new("c2");
    let remote_ip = a2.add("remote", &remote);
    let _remote_srv = ProbeServer::start(&remote, 7777);

    let rt = Runtime::new(a1);
    let c = Netns::new("c1");
    let att = attach(&rt, a1, h1, &c, 18081);
    let (ip, host_if) = (att.ip.clone(), att.host_if.clone());
    assert_eq!(rt.cached().len(), 1, "libcni cached the result");

    // Muslin's address, as its agent recorded it for cnitool's container.
    let ep = endpoint_of(a1, &ip).unwrap_or_else(|| panic!("no endpoint for {ip}"));
    assert!(
        ep["key"]["container_id"]
            .as_str()
            .unwrap()
            .starts_with("cnitool-"),
        "{ep}"
    );
    assert_eq!(ep["host_ifname"], host_if.as_str());
    // It reaches the container on the other host, and back.
    c.probe(&remote_ip, "tcp,udp,icmp")
        .unwrap_or_else(|e| panic!("{ip} -> {remote_ip}: {e}"));
    let _srv = ProbeServer::start(&c, 7777);
    remote
        .probe(&ip, "tcp,udp,icmp")
        .unwrap_or_else(|e| panic!("{remote_ip} -> {ip}: {e}"));

    // portmap: its DNAT is there, and h1's port 18081 on the shared
    // segment reaches the container from the other host.
    let nat = nat_rules(h1);
    assert!(
        nat.contains("--dport 18081") && nat.contains(&format!("{ip}:7777")),
        "portmap's DNAT:\n{nat}"
    );
    let o = h2.exec(&[
        BIN,
        "probe",
        "check",
        "192.168.56.11",
        "--port",
        "18081",
        "--proto",
        "tcp",
        "--timeout-ms",
        "3000",
    ]);
    assert!(
        o.status.success(),
        "h2 -> 192.168.56.11:18081: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );

    // bandwidth: a token bucket on Muslin's host veth (ingress) and on an
    // ifb that the veth's ingress is redirected to (egress).
    let qdisc = must(&["tc", "-n", &h1.name, "qdisc", "show", "dev", &host_if]);
    assert!(
        qdisc.contains("tbf"),
        "ingress shaped on {host_if}: {qdisc}"
    );
    let ifbs: Vec<String> = links_by_kind(h1)
        .into_iter()
        .filter(|(n, k)| k == "ifb" && att.links.contains(n))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(ifbs.len(), 1, "one ifb for egress: {ifbs:?}");
    let qdisc = must(&["tc", "-n", &h1.name, "qdisc", "show", "dev", &ifbs[0]]);
    assert!(
        qdisc.contains("tbf"),
        "egress shaped on {}: {qdisc}",
        ifbs[0]
    );

    // CHECK through the whole chain, with libcni's cached result.
    rt.check(&c, &caps(18081), a1);

    del_twice_leaves_nothing(&rt, a1, h1, &c, &att);
    assert!(rt.cached().is_empty(), "libcni's cache entry is gone");
    // The other host's container is untouched.
    assert!(endpoint_of(a2, &remote_ip).is_some());
}

#[test]
fn status_and_gc_reach_muslin_beside_cnitool_and_del_after_gc_leaves_nothing() {
    let cl = ReadmePair::start();
    let h1 = &cl.hosts[0];
    let a1 = &cl.agents[0];
    let rt = Runtime::new(a1);

    // STATUS: the agent is there and has free addresses.
    let (out, code) = rt.plugin("STATUS", &rt.muslin_conf());
    assert_eq!(code, 0, "STATUS: {out}\n{}", a1.log());

    let kept = Netns::new("kept");
    let stale = Netns::new("stale");
    let kept_att = attach(&rt, a1, h1, &kept, 18082);
    let stale_att = attach(&rt, a1, h1, &stale, 18083);
    let kept_id = endpoint_of(a1, &kept_att.ip).unwrap()["key"]["container_id"].clone();
    let stale_id = endpoint_of(a1, &stale_att.ip).unwrap()["key"]["container_id"].clone();
    assert_ne!(kept_id, stale_id);

    // GC without the valid list is refused, not taken as "all stale".
    let (out, code) = rt.plugin("GC", &rt.muslin_conf());
    assert_ne!(code, 0, "GC without cni.dev/valid-attachments: {out}");
    assert!(endpoint_of(a1, &stale_att.ip).is_some());

    // GC, as a runtime that still holds only `kept`: Muslin releases the
    // other one (address, veth, route) and keeps `kept` working.
    let mut conf = rt.muslin_conf();
    conf["cni.dev/valid-attachments"] = json!([{"containerID": kept_id, "ifname": "eth0"}]);
    let (out, code) = rt.plugin("GC", &conf);
    assert_eq!(code, 0, "GC: {out}\n{}", a1.log());
    assert_eq!(
        endpoint_of(a1, &stale_att.ip),
        None,
        "GC released the stale one"
    );
    eventually("GC removed the stale veth", || {
        !h1.links().contains(&stale_att.host_if)
    });
    assert!(
        endpoint_of(a1, &kept_att.ip).is_some(),
        "GC kept the valid one"
    );
    h1.probe(&kept_att.ip, "icmp")
        .unwrap_or_else(|e| panic!("host -> kept {}: {e}", kept_att.ip));
    rt.check(&kept, &caps(18082), a1);

    // STATUS again, after the churn.
    let (out, code) = rt.plugin("STATUS", &rt.muslin_conf());
    assert_eq!(code, 0, "STATUS: {out}");

    // The runtime's DEL after GC finds Muslin's part gone and still clears
    // portmap's and bandwidth's; then `kept` goes the ordinary way.
    del_twice_leaves_nothing(&rt, a1, h1, &stale, &stale_att);
    del_twice_leaves_nothing(&rt, a1, h1, &kept, &kept_att);
    assert!(rt.cached().is_empty(), "libcni's cache entries are gone");
    assert!(a1.status()["endpoints"].as_array().unwrap().is_empty());
}
