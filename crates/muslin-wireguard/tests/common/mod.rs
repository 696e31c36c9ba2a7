//! Throwaway network namespaces for the device tests: unique names (tests
//! run in parallel), removed on drop even when an assertion fails.
#![allow(dead_code)]

use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A name unique to this process and call, short enough for an interface.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command that must succeed; its standard output.
pub fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn in_ns(ns: &str, args: &[&str]) -> String {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    run(&v)
}

pub struct Netns(pub String);

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        let ns = Netns(unique(prefix));
        run(&["ip", "netns", "add", &ns.0]);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", &self.0];
        v.extend_from_slice(args);
        run(&v)
    }

    pub fn has_link(&self, name: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.0, "link", "show", name])
            .output()
            .unwrap()
            .status
            .success()
    }

    /// A runtime whose every thread joins this namespace as it starts, so
    /// the sockets the device opens are this namespace's. Work must be
    /// spawned onto it, not run by `block_on` on the caller's thread.
    pub fn runtime(&self) -> tokio::runtime::Runtime {
        let path = format!("/run/netns/{}", self.0);
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || {
                let f = std::fs::File::open(&path).unwrap();
                nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            })
            .build()
            .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}
