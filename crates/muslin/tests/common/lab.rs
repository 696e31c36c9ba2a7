//! A lab driven through the real `muslin lab` commands, with a unique name
//! and its own registry root, removed on drop.
#![allow(dead_code)]

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use serde_json::Value;

use super::{TempDir, BIN};

static N: AtomicU32 = AtomicU32::new(0);

/// A lab with a unique name and its own registry root, removed on drop.
pub struct Lab {
    pub name: String,
    pub root: Arc<TempDir>,
    /// `gossip` or `etcd`: what `up` runs the agents on.
    pub datastore: String,
}

impl Lab {
    pub fn new() -> Lab {
        Lab::in_root(Arc::new(TempDir::new("labroot")))
    }

    /// A lab whose agents keep cluster state in `datastore`.
    pub fn on(datastore: &str) -> Lab {
        let mut lab = Lab::new();
        lab.datastore = datastore.to_string();
        lab
    }

    pub fn in_root(root: Arc<TempDir>) -> Lab {
        let name = format!(
            "t{}x{}",
            std::process::id() % 100_000,
            N.fetch_add(1, Ordering::Relaxed)
        );
        Lab {
            name,
            root,
            datastore: "gossip".into(),
        }
    }

    /// JSON on stdout, whatever the exit code.
    pub fn json(&self, args: &[&str]) -> Value {
        let o = self.cmd(args);
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("lab {args:?}: {e}: {}", String::from_utf8_lossy(&o.stderr)))
    }

    pub fn cmd(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .env("MUSLIN_LAB_ROOT", &self.root.0)
            .arg("lab")
            .args(args)
            .output()
            .unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cmd(args);
        assert!(
            o.status.success(),
            "lab {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn up(&self, extra: &[&str]) -> Value {
        let mut args = vec!["up", "--name", &self.name, "--json"];
        if !extra.contains(&"--converge-timeout") {
            args.extend_from_slice(&["--converge-timeout", "0"]);
        }
        args.extend_from_slice(extra);
        if self.datastore != "gossip" {
            args.extend_from_slice(&["--datastore", &self.datastore]);
        }
        serde_json::from_str(&self.ok(&args)).unwrap()
    }

    pub fn status(&self) -> Value {
        serde_json::from_str(&self.ok(&["status", "--name", &self.name, "--json"])).unwrap()
    }

    /// Namespaces of this lab that exist now.
    pub fn namespaces(&self) -> Vec<String> {
        let out = String::from_utf8_lossy(
            &Command::new("ip")
                .args(["netns", "list"])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned();
        let prefix = format!("{}-", self.name);
        out.lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&prefix))
            .map(String::from)
            .collect()
    }

    pub fn exec(&self, target: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["exec", "--name", &self.name, target, "--"];
        args.extend_from_slice(cmd);
        self.cmd(&args)
    }
}

impl Lab {
    /// `muslin status --json` of a host's agent.
    pub fn agent_status(&self, host: &str) -> Value {
        let sock = self.root.0.join(&self.name).join(host).join("agent.sock");
        let o = Command::new(BIN)
            .args(["status", "--json", "--socket", sock.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "status of {host}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// The address of a container the lab attached, from `lab status`.
    pub fn container_addr(&self, host: &str, name: &str) -> String {
        let st = self.status();
        st["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == host)
            .unwrap()["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()["address"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn ns(&self, node: &str) -> String {
        format!("{}-{node}", self.name)
    }

    /// The first process in a node's namespace whose command line
    /// matches (pid, command line).
    pub fn process(&self, node: &str, matches: impl Fn(&[String]) -> bool) -> (i32, Vec<String>) {
        let o = Command::new("ip")
            .args(["netns", "pids", &self.ns(node)])
            .output()
            .unwrap();
        for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<String> = cmd
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if matches(&args) {
                return (pid.parse().unwrap(), args);
            }
        }
        panic!("no such process in {node}");
    }

    /// The agent process of a host.
    pub fn agent_process(&self, host: &str) -> (i32, Vec<String>) {
        self.process(host, |a| a.get(1).map(String::as_str) == Some("agent"))
    }

    /// Routes Muslin installed on a host (protocol 77), as `ip -j route`.
    pub fn routes(&self, host: &str) -> Vec<Value> {
        let o = Command::new("ip")
            .args(["-j", "-n", &self.ns(host), "route", "show", "proto", "77"])
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&o.stdout)
            .unwrap()
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The full connectivity matrix over `protos`.
    pub fn check(&self, protos: &str) -> Value {
        self.json(&[
            "check",
            "--name",
            &self.name,
            "--json",
            "--proto",
            protos,
            "--timeout-ms",
            "1500",
        ])
    }
}

/// Failed pairs of a matrix, as "from -> to: protocols", and pairs of
/// different networks that reached each other (or could not be probed).
pub fn failures(m: &Value) -> Vec<String> {
    let mut v: Vec<String> = m["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| !p["failed"].as_array().unwrap().is_empty())
        .map(|p| format!("{} -> {}: {}", p["from"], p["to"], p["failed"]))
        .collect();
    v.extend(
        m["isolation"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| {
                !p["reached"].as_array().is_none_or(|r| r.is_empty()) || !p["error"].is_null()
            })
            .map(|p| {
                format!(
                    "{} -> {} ({} {}) must not reach: {} {}",
                    p["from"], p["to"], p["network"], p["address"], p["reached"], p["error"]
                )
            }),
    );
    v
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.cmd(&["down", "--name", &self.name]);
    }
}

/// `hosts` hosts h1..hN with `containers` each on one segment
/// 192.168.40.0/24 (so h1 is 192.168.40.11); `head` goes before it
/// (top-level settings such as `block-prefix` or `agent = {...}`).
pub fn one_segment(hosts: u32, containers: u32, head: &str) -> String {
    format!(
        "{head}\n[[segment]]\nname = \"lan\"\ncidr = \"192.168.40.0/24\"\n\
         [[host]]\nname = \"h\"\ncount = {hosts}\ncontainers = {containers}\n\
         [[host.nic]]\nsegment = \"lan\"\ndefault-route = true\n"
    )
}

pub fn file(text: &str) -> (TempDir, String) {
    let d = TempDir::new("topo");
    let p = d.0.join("topology.toml");
    std::fs::write(&p, text).unwrap();
    let s = p.display().to_string();
    (d, s)
}
