//! The rule that keeps kernel changes reviewable: only the executor
//! (`crates/muslin-kernel/src/executor/`) speaks netlink or runs `nft`,
//! `ip` or the iptables tools. Everything else computes changes as values
//! and submits them. The lab and the benchmark build simulated hosts and
//! hand-built twins with `ip`: they are test rigs, not Muslin's data
//! plane, and are exempt. The WireGuard device (`muslin-wireguard`) is a
//! driver, not a decision maker: it owns its TUN and its socket, or
//! drives the kernel's WireGuard by generic netlink; the agent hands it
//! peers as values, and the executor makes every route and rule to it.

use std::path::{Path, PathBuf};

const EXEMPT: &[&str] = &[
    "crates/muslin-lab/",
    "crates/muslin-bench/",
    "crates/muslin-wireguard/",
];
const EXECUTOR: &str = "crates/muslin-kernel/src/executor/";

/// What only the executor may write.
const FORBIDDEN: &[&str] = &[
    "rtnetlink",
    "netlink_packet",
    "netlink-packet",
    "NETLINK_",
    "Command::new(\"nft\")",
    "Command::new(\"ip\")",
    "Command::new(\"iptables",
    "Command::new(\"ip6tables",
    "/proc/sys/",
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_module_outside_the_executor_calls_netlink_or_runs_nft() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    for c in std::fs::read_dir(root.join("crates")).unwrap().flatten() {
        let src = c.path().join("src");
        if src.is_dir() {
            sources(&src, &mut files);
        }
    }
    assert!(files.len() > 50, "found only {} source files", files.len());
    let mut offenders = Vec::new();
    for f in &files {
        let rel = f
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if rel.starts_with(EXECUTOR) || EXEMPT.iter().any(|e| rel.starts_with(e)) {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            for bad in FORBIDDEN {
                if line.contains(bad) {
                    offenders.push(format!("{rel}:{}: {bad}: {}", n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "kernel access outside the executor (submit changes to muslin_kernel::Executor instead):\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_rule_would_catch_an_offender() {
    // The scan above only means something if it recognises the calls.
    let sample = "let (conn, handle, _) = rtnetlink::new_connection()?;";
    assert!(FORBIDDEN.iter().any(|b| sample.contains(b)));
    let sample = "std::process::Command::new(\"nft\").arg(\"-f\")";
    assert!(FORBIDDEN.iter().any(|b| sample.contains(b)));
}
