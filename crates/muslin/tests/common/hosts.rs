//! Hosts built by hand, the way an operator's machines look: network
//! namespaces wired with veth pairs to bridges in a switch namespace,
//! routers that are namespaces with forwarding on, and `muslin agent`
//! started with its own flags exactly as README's Install section says
//! (the first host without `--join`). Nothing here uses `muslin lab`, whose
//! convenience of joining every host to all the others once hid the
//! founding pitfall.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{cni_env, must, Netns, TempDir, BIN};

static WIRE: AtomicU32 = AtomicU32::new(0);

/// The switch (one bridge per segment) and the cluster secret.
pub struct Net {
    pub switch: Netns,
    pub dir: TempDir,
}

impl Default for Net {
    fn default() -> Self {
        Self::new()
    }
}

impl Net {
    pub fn new() -> Net {
        let dir = TempDir::new("net");
        std::fs::write(dir.0.join("secret"), "a-test-cluster-secret-0123456789\n").unwrap();
        Net {
            switch: Netns::new("sw"),
            dir,
        }
    }

    pub fn secret(&self) -> PathBuf {
        self.dir.0.join("secret")
    }

    /// A new segment (a bridge in the switch); returns its name.
    pub fn segment(&self, mtu: u32) -> String {
        let name = format!("b{}", WIRE.fetch_add(1, Ordering::Relaxed));
        self.switch.ip(&[
            "link",
            "add",
            &name,
            "mtu",
            &mtu.to_string(),
            "type",
            "bridge",
        ]);
        self.switch.ip(&["link", "set", &name, "up"]);
        name
    }

    /// A NIC `ifname` of `ns` on `segment`, with `addr` (CIDR) and `mtu`.
    pub fn wire(&self, ns: &Netns, ifname: &str, segment: &str, addr: &str, mtu: u32) {
        let port = format!("p{}", WIRE.fetch_add(1, Ordering::Relaxed));
        let m = mtu.to_string();
        self.switch.ip(&[
            "link", "add", &port, "mtu", &m, "type", "veth", "peer", "name", ifname, "mtu", &m,
            "netns", &ns.name,
        ]);
        self.switch
            .ip(&["link", "set", &port, "master", segment, "up"]);
        ns.ip(&["addr", "add", addr, "dev", ifname]);
        ns.ip(&["link", "set", ifname, "up"]);
    }

    /// Hosts as README's Install section has them: a first NIC on a private
    /// NAT network with the same address on every host (as on Vagrant
    /// hosts) and the default route, a second NIC on a shared segment at
    /// 192.168.56.1N, strict rp_filter. Returns the shared segment.
    pub fn as_readme_hosts(&self, hosts: &[Netns]) -> String {
        let shared = self.segment(1500);
        for (i, h) in hosts.iter().enumerate() {
            for k in ["all", "default"] {
                h.exec(&["sysctl", "-qw", &format!("net.ipv4.conf.{k}.rp_filter=1")]);
            }
            let nat = self.segment(1500);
            self.wire(h, "eth0", &nat, "10.0.2.15/24", 1500);
            let at = format!("192.168.56.1{}/24", i + 1);
            self.wire(h, "eth1", &shared, &at, 1500);
            h.ip(&["route", "add", "default", "via", "10.0.2.2"]);
        }
        shared
    }

    /// A namespace that forwards between its NICs.
    pub fn router(&self) -> Netns {
        let r = Netns::new("rt");
        must(&[
            "ip",
            "netns",
            "exec",
            &r.name,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        r
    }
}

/// Runs an nftables script inside `ns`.
pub fn nft(ns: &Netns, script: &str) {
    nft_in(&ns.name, script)
}

/// `nft -f -` with `script` in the namespace named `ns`.
pub fn nft_in(ns: &str, script: &str) {
    let o = super::with_stdin(
        Command::new("ip").args(["netns", "exec", ns, "nft", "-f", "-"]),
        script.as_bytes(),
    );
    assert!(
        o.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A `muslin agent` on a host namespace, killed on drop.
pub struct Agent {
    pub child: Option<Child>,
    pub dir: TempDir,
    pub socket: PathBuf,
    pub name: String,
    pub ns_name: String,
    args: Vec<String>,
    /// A command the agent runs under, such as `faketime -f +12s`.
    wrapper: Vec<String>,
}

impl Agent {
    /// Starts `muslin agent --cluster-secret-file SECRET ARGS...` in `ns`
    /// (plus the socket, state and node name a shared machine needs) and
    /// waits until it serves its socket.
    pub fn start(ns: &Netns, name: &str, secret: &Path, args: &[&str]) -> Agent {
        let mut a = Agent::start_detached(ns, name, secret, args);
        a.wait_ready(Duration::from_secs(60));
        a
    }

    /// Like `start`, without waiting until it serves.
    pub fn start_detached(ns: &Netns, name: &str, secret: &Path, args: &[&str]) -> Agent {
        Agent::start_wrapped(ns, name, secret, args, &[])
    }

    /// Like `start_detached`, the agent running under `wrapper` (a command
    /// and its arguments, such as `faketime -f +12s`).
    pub fn start_wrapped(
        ns: &Netns,
        name: &str,
        secret: &Path,
        args: &[&str],
        wrapper: &[&str],
    ) -> Agent {
        let dir = TempDir::new("agent");
        let mut a = Agent {
            child: None,
            socket: dir.0.join("agent.sock"),
            dir,
            name: name.to_string(),
            ns_name: ns.name.clone(),
            args: [
                &["--cluster-secret-file", secret.to_str().unwrap()][..],
                args,
            ]
            .concat()
            .iter()
            .map(|s| s.to_string())
            .collect(),
            wrapper: wrapper.iter().map(|s| s.to_string()).collect(),
        };
        a.spawn();
        a
    }

    /// Starts the agent without waiting for it.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.0.join("agent.log"))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns_name])
            .args(&self.wrapper)
            .args([BIN, "agent"])
            .args(["--socket", self.socket.to_str().unwrap()])
            .args(["--state-dir", self.dir.0.join("state").to_str().unwrap()])
            .args(["--node-name", &self.name])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Starts an agent that must refuse to run; returns what it said.
    pub fn refused(ns: &Netns, secret: &Path, args: &[&str]) -> String {
        let mut a = Agent::start_detached(ns, "refused", secret, args);
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(st) = a.child.as_mut().unwrap().try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < deadline, "the agent started: {}", a.log());
            std::thread::sleep(Duration::from_millis(20));
        };
        a.child = None;
        assert!(!status.success(), "the agent started: {}", a.log());
        a.log()
    }

    pub fn wait_ready(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("agent {} exited with {st}: {}", self.name, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "agent {} did not start: {}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("agent.log")).unwrap_or_default()
    }

    pub fn status(&self) -> Value {
        let o = super::status_of(&self.socket);
        serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
    }

    /// This agent's view of `peer`: path, alive, data_path, path_mtu.
    pub fn peer(&self, peer: &str) -> Value {
        self.status()["cluster"]["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["name"] == peer).cloned())
            .unwrap_or(Value::Null)
    }

    pub fn kernel_writes(&self) -> u64 {
        self.status()["cluster"]["kernel_writes"].as_u64().unwrap()
    }

    pub fn nft_runs(&self) -> u64 {
        self.status()["cluster"]["nft_runs"].as_u64().unwrap()
    }

    /// Attaches container namespace `c` through the CNI plugin; returns its
    /// address.
    pub fn add(&self, id: &str, c: &Netns) -> String {
        let v = self.cni("ADD", id, c);
        super::result_ip(&v)
    }

    /// Detaches it through the CNI plugin.
    pub fn del(&self, id: &str, c: &Netns) {
        self.cni("DEL", id, c);
    }

    fn cni(&self, command: &str, id: &str, c: &Netns) -> Value {
        let conf = json!({"cniVersion": "1.1.0", "name": "muslin", "type": "muslin", "socket": self.socket});
        let (v, ok) = plugin(&self.ns_name, &conf, command, id, c, &[]);
        assert!(ok, "{command} {id} on {}: {v}\n{}", self.name, self.log());
        v
    }
}

/// Runs the plugin in host namespace `host_ns` with network configuration
/// `conf`, as a runtime does, plus `extra` environment; returns its output
/// and whether it succeeded.
pub fn plugin(
    host_ns: &str,
    conf: &Value,
    command: &str,
    id: &str,
    c: &Netns,
    extra: &[(&str, String)],
) -> (Value, bool) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", host_ns, BIN]);
    for (k, v) in cni_env(command, id, Some(&c.path()), "eth0") {
        cmd.env(k, v);
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let o = super::with_stdin(&mut cmd, conf.to_string().as_bytes());
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
    (v, o.status.success())
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until `f` holds, at most `secs`.
pub fn until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs a command in `ns` and returns whether it succeeded and its output.
pub fn run_in(ns: &Netns, args: &[&str]) -> (bool, String) {
    let o = ns.exec(args);
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// A container `NAME-c1` on each agent's host, with a probe server on
/// port 7777: (its namespace, address, server).
pub fn pod_per_host(agents: &[Agent]) -> Vec<(Netns, String, super::ProbeServer)> {
    agents
        .iter()
        .map(|a| {
            let c = Netns::new("c");
            let ip = a.add(&format!("{}-c1", a.name), &c);
            let s = super::ProbeServer::start(&c, 7777);
            (c, ip, s)
        })
        .collect()
}

/// `muslin doctor --json` run in host namespace `ns` against the agent at
/// `socket`: its exit code and report.
pub fn doctor(ns: &str, socket: &Path) -> (i32, Value) {
    let o = Command::new("ip")
        .args(["netns", "exec", ns, BIN, "doctor", "--json", "--socket"])
        .arg(socket)
        .output()
        .unwrap();
    doctor_report(&o)
}

/// The exit code and JSON report of a finished `muslin doctor --json`.
pub fn doctor_report(o: &std::process::Output) -> (i32, Value) {
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code().unwrap_or(-1), v)
}

/// The findings of `report` for `check`.
pub fn findings<'a>(report: &'a Value, check: &str) -> Vec<&'a Value> {
    report["findings"]
        .as_array()
        .map(|f| f.iter().filter(|x| x["check"] == check).collect())
        .unwrap_or_default()
}

/// The worst level among `report`'s findings for `check`.
pub fn level(report: &Value, check: &str) -> String {
    let rank = |l: &str| ["ok", "warning", "problem"].iter().position(|x| *x == l);
    findings(report, check)
        .iter()
        .filter_map(|f| f["level"].as_str())
        .max_by_key(|l| rank(l))
        .unwrap_or("missing")
        .to_string()
}

impl Agent {
    /// `muslin doctor` on this agent's host.
    pub fn doctor(&self) -> (i32, Value) {
        doctor(&self.ns_name, &self.socket)
    }
}

/// Two hosts as README's Install section has them (the first without
/// `--join`), whose agents see each other's data path answer.
pub struct ReadmePair {
    pub agents: Vec<Agent>,
    pub hosts: Vec<Netns>,
    pub net: Net,
}

impl ReadmePair {
    pub fn start() -> ReadmePair {
        let net = Net::new();
        let hosts = vec![Netns::new("h1"), Netns::new("h2")];
        net.as_readme_hosts(&hosts);
        let agents = vec![
            Agent::start(&hosts[0], "h1", &net.secret(), &[]),
            Agent::start(&hosts[1], "h2", &net.secret(), &["--join", "192.168.56.11"]),
        ];
        until("h1 and h2 see each other's data path answer", 60, || {
            agents[0].peer("h2")["data_path"] == "ok" && agents[1].peer("h1")["alive"] == true
        });
        ReadmePair { agents, hosts, net }
    }
}
