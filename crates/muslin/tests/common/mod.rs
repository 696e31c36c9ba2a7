//! Test fixtures that act like a container runtime on a throwaway host:
//! every host, container and agent lives in a network namespace with a
//! unique name and is removed on drop, even when the test fails.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub mod hosts;
pub mod lab;

use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_muslin");
pub const CNI_PLUGINS: &str = "/usr/lib/cni";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique across parallel tests and concurrent test processes.
pub fn unique(tag: &str) -> String {
    format!(
        "mt{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        tag
    )
}

pub fn sh(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn")
}

pub fn must(args: &[&str]) -> String {
    let o = sh(args);
    assert!(
        o.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        must(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    pub fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        must(&full)
    }

    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["ip", "-j", "-n", &self.name];
        full.extend_from_slice(args);
        serde_json::from_str(&must(&full)).unwrap_or(Value::Array(vec![]))
    }

    /// Names of all links in the namespace.
    pub fn links(&self) -> Vec<String> {
        self.ip_json(&["link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .collect()
    }

    /// IPv4 routes carrying Muslin's protocol number.
    pub fn our_routes(&self) -> Vec<Value> {
        self.ip_json(&["route", "show", "proto", "77"])
            .as_array()
            .unwrap()
            .clone()
    }

    /// Runs a probe check from this namespace.
    pub fn probe(&self, target: &str, protos: &str) -> Result<String, String> {
        let o = self.exec(&[
            BIN,
            "probe",
            "check",
            target,
            "--proto",
            protos,
            "--timeout-ms",
            "3000",
        ]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        if o.status.success() {
            Ok(out)
        } else {
            Err(format!("{out}{}", String::from_utf8_lossy(&o.stderr)))
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.name]);
    }
}

/// A throwaway directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A host: a namespace with an address of its own (so containers have
/// something to reach) and a Muslin agent running in it.
pub struct Host {
    pub agent: Option<Child>,
    pub dir: TempDir,
    pub socket: PathBuf,
    pub blocks: Vec<String>,
    pub extra_args: Vec<String>,
    pub ns: Netns,
}

pub const HOST_ADDR: &str = "198.51.100.1";

impl Host {
    pub fn new(blocks: &[&str]) -> Host {
        Host::with_args(blocks, &[])
    }

    pub fn with_args(blocks: &[&str], extra: &[&str]) -> Host {
        Host::with_setup(blocks, extra, |_| {})
    }

    /// A host whose namespace `setup` prepares before the agent starts,
    /// as a host's own firewall is there before Muslin is installed.
    pub fn with_setup(blocks: &[&str], extra: &[&str], setup: impl FnOnce(&Netns)) -> Host {
        let ns = Netns::new("host");
        ns.ip(&["addr", "add", &format!("{HOST_ADDR}/32"), "dev", "lo"]);
        setup(&ns);
        let dir = TempDir::new("agent");
        let socket = dir.0.join("run/agent.sock");
        let mut h = Host {
            agent: None,
            socket,
            dir,
            blocks: blocks.iter().map(|s| s.to_string()).collect(),
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            ns,
        };
        h.start_agent();
        h
    }

    pub fn start_agent(&mut self) {
        let mut args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            self.ns.name.clone(),
            BIN.into(),
            "agent".into(),
            "--socket".into(),
            self.socket.display().to_string(),
            "--state-dir".into(),
            self.dir.0.join("state").display().to_string(),
            "--node-name".into(),
            "testnode".into(),
        ];
        for b in &self.blocks {
            args.push("--block".into());
            args.push(b.clone());
        }
        args.extend(self.extra_args.iter().cloned());
        let log = std::fs::File::create(self.dir.0.join("agent.log")).unwrap();
        let child = Command::new("ip")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agent = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        // A killed agent leaves its socket file behind: wait for a listener.
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Some(st) = self.agent.as_mut().unwrap().try_wait().unwrap() {
                panic!("agent exited with {st}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "agent did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL: the agent gets no chance to clean up.
    pub fn kill_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            // `ip netns exec` execs the agent, so the child is the agent.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("agent.log")).unwrap_or_default()
    }

    pub fn conf(&self, version: &str) -> Value {
        json!({"cniVersion": version, "name": "testnet", "type": "muslin", "socket": self.socket})
    }

    pub fn status(&self) -> Value {
        let o = status_of(&self.socket);
        assert!(
            o.status.success(),
            "status: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// Addresses the agent has recorded, without their prefix length.
    pub fn allocations(&self) -> Vec<String> {
        self.status()["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|e| e["addresses"].as_array().unwrap().clone())
            .map(|a| a.as_str().unwrap().split('/').next().unwrap().to_string())
            .collect()
    }

    /// Runs a CNI plugin in this host's namespace, as a runtime does.
    pub fn cni(
        &self,
        plugin: &str,
        cmd: &str,
        id: &str,
        netns: Option<&Path>,
        ifname: &str,
        conf: &Value,
    ) -> (Value, i32) {
        self.cni_raw(
            plugin,
            &cni_env(cmd, id, netns, ifname),
            conf.to_string().as_bytes(),
        )
    }

    pub fn cni_raw(&self, plugin: &str, env: &[(String, String)], stdin: &[u8]) -> (Value, i32) {
        let exe = if plugin == "muslin" {
            BIN.to_string()
        } else {
            format!("{CNI_PLUGINS}/{plugin}")
        };
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns.name, &exe]);
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        // A plugin may refuse an over-size input without reading all of
        // it; like Go's os/exec, which runtimes use, ignore the broken pipe.
        match child.stdin.take().unwrap().write_all(stdin) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => panic!("writing stdin: {e}"),
            _ => {}
        }
        let o = child.wait_with_output().unwrap();
        let v = if o.stdout.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
                panic!(
                    "{plugin}: stdout is not JSON ({e}): {:?} stderr {:?}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
        };
        (v, o.status.code().unwrap_or(-1))
    }

    /// ADD through Muslin; panics with the error JSON if it fails.
    pub fn add(&self, id: &str, c: &Netns) -> Value {
        let (v, code) = self.cni(
            "muslin",
            "ADD",
            id,
            Some(&c.path()),
            "eth0",
            &self.conf("1.1.0"),
        );
        assert_eq!(code, 0, "ADD {id} failed: {v}\nagent log:\n{}", self.log());
        v
    }

    pub fn del(&self, id: &str, c: Option<&Netns>) {
        let p = c.map(|c| c.path());
        let (v, code) = self.cni(
            "muslin",
            "DEL",
            id,
            p.as_deref(),
            "eth0",
            &self.conf("1.1.0"),
        );
        assert_eq!(code, 0, "DEL {id} failed: {v}");
    }

    /// Host veths of ours in this host.
    pub fn our_links(&self) -> Vec<String> {
        self.ns
            .links()
            .into_iter()
            .filter(|l| l.starts_with("msl"))
            .collect()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill_agent();
    }
}

/// `muslin status --json` against the agent at `socket`.
pub fn status_of(socket: &Path) -> Output {
    sh(&[
        BIN,
        "status",
        "--json",
        "--socket",
        socket.to_str().unwrap(),
    ])
}

pub fn cni_env(cmd: &str, id: &str, netns: Option<&Path>, ifname: &str) -> Vec<(String, String)> {
    let mut e = vec![
        ("CNI_COMMAND".to_string(), cmd.to_string()),
        ("CNI_CONTAINERID".to_string(), id.to_string()),
        ("CNI_IFNAME".to_string(), ifname.to_string()),
        ("CNI_PATH".to_string(), CNI_PLUGINS.to_string()),
        (
            "CNI_ARGS".to_string(),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web".to_string(),
        ),
    ];
    if let Some(p) = netns {
        e.push(("CNI_NETNS".to_string(), p.display().to_string()));
    }
    e
}

/// Routes to peers' blocks in namespace `ns` (protocol 77, via a next
/// hop), sorted: what a restart or an outage must leave as it was.
pub fn peer_routes(ns: &str) -> Vec<String> {
    let mut v: Vec<String> = must(&["ip", "-n", ns, "route", "show", "proto", "77"])
        .lines()
        .filter(|l| l.contains(" via "))
        // Not the probe routes to peers' VTEP addresses (host routes).
        .filter(|l| l.split_whitespace().next().is_some_and(|d| d.contains('/')))
        .map(String::from)
        .collect();
    v.sort();
    v
}

/// A probe echo server in a namespace, killed on drop.
pub struct ProbeServer(Child);

impl ProbeServer {
    pub fn start(ns: &Netns, port: u16) -> ProbeServer {
        let mut c = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                BIN,
                "probe",
                "serve",
                "--port",
                &port.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(c.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "probe server did not start");
        ProbeServer(c)
    }
}

impl Drop for ProbeServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The container-side address of an ADD result, without prefix.
pub fn result_ip(r: &Value) -> String {
    r["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

/// Waits until `f` holds; DEL finishes removing a veth in the background,
/// so "no trace" is a state the host reaches, not one it is in at once.
pub fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Parses `muslin probe ping` output: (sent, received).
pub fn ping_counts(out: &str) -> (u64, u64) {
    let words: Vec<&str> = out.split_whitespace().collect();
    let n = |key: &str| -> u64 {
        let i = words
            .iter()
            .position(|w| *w == key)
            .unwrap_or_else(|| panic!("{out}"));
        words[i + 1].parse().unwrap()
    };
    (n("sent"), n("received"))
}

/// Runs `cmd` with `input` on its standard input and its output captured.
pub fn with_stdin(cmd: &mut std::process::Command, input: &[u8]) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}
