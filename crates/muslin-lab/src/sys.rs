//! The lab's side effects on the host: `ip` batches, detached processes,
//! namespace clean-up. Only namespaces the lab recorded are ever touched.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::LabError;

fn run(cmd: &mut Command, input: Option<&str>) -> Result<String, LabError> {
    let shown = format!("{cmd:?}").replace('"', "");
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(LabError::io(format!("running {shown}")))?;
    if let Some(text) = input {
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(text.as_bytes())
            .map_err(LabError::io(format!("feeding {shown}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(LabError::io(format!("running {shown}")))?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: shown,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip [-n NS] -batch -` with one command per line: one process for
/// many changes.
pub fn ip_batch(ns: Option<&str>, lines: &[String]) -> Result<(), LabError> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut c = Command::new("ip");
    if let Some(ns) = ns {
        c.args(["-n", ns]);
    }
    c.args(["-batch", "-"]);
    run(&mut c, Some(&(lines.join("\n") + "\n"))).map(|_| ())
}

pub fn in_ns(ns: &str, args: &[&str]) -> Result<String, LabError> {
    run(
        Command::new("ip").args(["netns", "exec", ns]).args(args),
        None,
    )
}

pub fn in_ns_input(ns: &str, args: &[&str], input: &str) -> Result<String, LabError> {
    run(
        Command::new("ip").args(["netns", "exec", ns]).args(args),
        Some(input),
    )
}

pub fn netns_exists(ns: &str) -> bool {
    Path::new("/var/run/netns").join(ns).exists()
}

/// Starts `args` inside `ns` in its own process group (so a Ctrl-C at the
/// terminal that ran `lab up` does not reach it), logging to `log`.
pub fn spawn_detached(ns: &str, args: &[String], log: &Path) -> Result<Child, LabError> {
    let f =
        std::fs::File::create(log).map_err(LabError::io(format!("creating {}", log.display())))?;
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdin(Stdio::null())
        .stdout(f.try_clone().map_err(LabError::io("log file"))?)
        .stderr(f)
        .process_group(0)
        .spawn()
        .map_err(LabError::io(format!("starting {} in {ns}", args.join(" "))))
}

/// The processes whose network namespace is one of `ns`, found in one
/// pass over /proc: a namespace is the same (device, inode) as its file
/// in /var/run/netns. No `ip netns pids` per namespace: a lab of 100
/// hosts has 300 namespaces, and on a loaded machine each process spawned
/// costs a scheduling delay.
fn pids_in_any(ns: &[String]) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let ids: Vec<(u64, u64)> = ns
        .iter()
        .filter_map(|n| std::fs::metadata(Path::new("/var/run/netns").join(n)).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect();
    if ids.is_empty() {
        return vec![];
    }
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| p != me)
        .filter(|p| {
            std::fs::metadata(format!("/proc/{p}/ns/net"))
                .is_ok_and(|m| ids.contains(&(m.dev(), m.ino())))
        })
        .collect()
}

/// Kills every process inside `ns` (TERM, then KILL after a grace period).
pub fn kill_all_in(ns: &[String], grace: Duration) {
    let all = pids_in_any(ns);
    for p in &all {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*p),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && all.iter().any(|p| alive(*p)) {
        std::thread::sleep(Duration::from_millis(10));
    }
    for p in &all {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// SIGKILLs every process inside `ns` at once, as a host that loses power
/// would stop, and waits until they are gone; returns (pid, command line)
/// of each.
pub fn kill_now(ns: &str) -> Result<Vec<(i32, String)>, LabError> {
    if !netns_exists(ns) {
        return Err(LabError::Usage(format!("namespace {ns} does not exist")));
    }
    let killed: Vec<(i32, String)> = pids_in_any(&[ns.to_string()])
        .into_iter()
        .filter(|p| alive(*p))
        .map(|p| (p, cmdline(p)))
        .collect();
    for (p, _) in &killed {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while killed.iter().any(|(p, _)| alive(*p)) {
        if Instant::now() > deadline {
            return Err(LabError::Usage(format!(
                "processes in {ns} survived SIGKILL for 5 s"
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(killed)
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Running, not a zombie: orphans of `lab up` may never be reaped here.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

pub fn delete_ns(ns: &[String]) -> Result<(), LabError> {
    let lines: Vec<String> = ns
        .iter()
        .filter(|n| netns_exists(n))
        .map(|n| format!("netns del {n}"))
        .collect();
    ip_batch(None, &lines)
}
