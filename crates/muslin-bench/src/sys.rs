//! Processes and namespaces the bench drives.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};

pub fn sh(args: &[&str]) -> Result<String, String> {
    let o = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if !o.status.success() {
        return Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// `ip -n NS ...`, one command given as one string.
pub fn ip(ns: &str, cmd: &str) -> Result<(), String> {
    let args: Vec<&str> = ["ip", "-n", ns]
        .into_iter()
        .chain(cmd.split_whitespace())
        .collect();
    sh(&args).map(|_| ())
}

/// Moves the calling thread into a namespace (threads only: the bench's
/// main thread stays where it is).
pub fn enter(ns: &str) -> Result<(), String> {
    let f = File::open(format!("/var/run/netns/{ns}")).map_err(|e| format!("{ns}: {e}"))?;
    nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("entering {ns}: {e}"))
}

/// A probe echo server in `ns`, once it listens.
pub fn probe_server(bin: &std::path::Path, ns: &str) -> Result<Child, String> {
    let mut c = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(bin)
        .args(["probe", "serve"])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut l = String::new();
    BufReader::new(c.stdout.take().expect("piped"))
        .read_line(&mut l)
        .map_err(|e| e.to_string())?;
    Ok(c)
}

pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// User plus system CPU time of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // /proc reports in USER_HZ, which Linux fixes at 100.
    ticks / 100.0
}

/// The agent process of a lab host.
pub fn agent_pid(lab: &str, host: &str) -> Option<u32> {
    let out = sh(&["ip", "netns", "pids", &format!("{lab}-{host}")]).ok()?;
    out.split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| c.split(|b| *b == 0).nth(1) == Some(b"agent"))
                .unwrap_or(false)
        })
}

/// Removes every lab of the bench's registry and the hand-built pods.
pub fn cleanup(root: &std::path::Path) {
    for lab in muslin_lab::registry::list() {
        let _ = muslin_lab::ops::down(&lab);
    }
    if let Ok(out) = sh(&["ip", "netns", "list"]) {
        for ns in out
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with("mb") && n.ends_with("-hand"))
        {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
    }
    let _ = std::fs::remove_dir_all(root);
}
