//! The host firewall through the executor, against the real nft and
//! iptables tools: observe, let the model decide, apply. Each test runs in
//! a throwaway network namespace that a thread of the test enters; the
//! executor's runtime lives on that thread, so the tools it spawns inherit
//! the namespace. Needs root.

use std::fs::File;
use std::os::fd::AsFd;
use std::process::Command;

use ipnet::IpNet;
use muslin_kernel::{Executor, Lane, OnFailure};
use muslin_model::host_firewall::{missing_accepts, removals, Action, Observed, ParseError};
use muslin_plan::{Change, Step};
use nix::sched::{setns, CloneFlags};

/// Observe, decide with `decide`, apply; returns what was applied.
fn converge(
    decide: fn(&Observed) -> Result<Vec<Action>, ParseError>,
) -> Result<Vec<Action>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ex = Executor::spawn().map_err(|e| e.to_string())?;
        let observed = ex.firewall().await.map_err(|e| e.to_string())?;
        let actions = decide(&observed).map_err(|e| e.to_string())?;
        let steps = actions
            .iter()
            .map(|a| Step::host(Change::Firewall(a.clone())))
            .collect();
        let report = ex.apply(Lane::Firewall, steps, OnFailure::Continue).await;
        match report.errors() {
            e if e.is_empty() => Ok(actions),
            e => Err(e.join("; ")),
        }
    })
}

fn ensure(cidrs: &[IpNet]) -> Result<Vec<Action>, String> {
    thread_local!(static CIDRS: std::cell::RefCell<Vec<IpNet>> = const { std::cell::RefCell::new(Vec::new()) });
    CIDRS.with(|c| *c.borrow_mut() = cidrs.to_vec());
    converge(|o| CIDRS.with(|c| missing_accepts(o, &c.borrow())))
}

fn remove_all() -> Result<Vec<Action>, String> {
    converge(removals)
}

const TAG: &str = "muslin: pod traffic";

/// A host firewall of each kind, each dropping forwarded traffic, each with
/// a rule of the host's own that must survive us.
const EVERY_KIND_DROPS: &str = r#"
iptables-legacy -P FORWARD DROP
iptables-legacy -A FORWARD -i eth9 -j ACCEPT
iptables-nft -P FORWARD DROP
iptables-nft -A FORWARD -o eth9 -j ACCEPT
nft -f - <<EOF
table inet filter {
  chain forward {
    type filter hook forward priority filter; policy drop;
    iifname "eth9" accept
  }
}
EOF
"#;

struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!("mk{}-{tag}", std::process::id());
        sh(&format!("ip netns add {name}"));
        Ns(name)
    }

    /// Runs a shell script in the namespace; it must succeed.
    fn sh(&self, script: &str) -> String {
        sh(&format!("ip netns exec {} sh -e -c '{script}'", self.0))
    }

    /// Runs `f` on a thread inside the namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let ns = File::open(format!("/var/run/netns/{}", self.0)).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).unwrap();
                f()
            })
            .join()
            .unwrap()
        })
    }

    /// Every rule and policy of the three firewalls, nft's with handles:
    /// a rule deleted and inserted again would show a new handle.
    fn snapshot(&self) -> String {
        self.sh("iptables-legacy -S FORWARD; iptables-nft -S FORWARD; nft -a list ruleset")
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn sh(script: &str) -> String {
    let o = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(
        o.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn pod() -> Vec<IpNet> {
    vec!["10.244.0.0/16".parse().unwrap()]
}

#[test]
fn ensure_opens_every_dropping_chain_once_and_remove_all_restores_the_host() {
    let ns = Ns::new("fwall");
    ns.sh(EVERY_KIND_DROPS);
    let before = ns.snapshot();

    let inserted = ns.run(|| ensure(&pod())).unwrap();
    assert_eq!(inserted.len(), 6, "{inserted:?}");
    for tool in ["iptables-legacy", "iptables-nft"] {
        let rules = ns.sh(&format!("{tool} -S FORWARD"));
        let lines: Vec<&str> = rules.lines().collect();
        assert_eq!(lines[0], "-P FORWARD DROP", "{tool}");
        assert!(
            lines[1].contains(TAG) && lines[2].contains(TAG),
            "{tool}: ours first: {rules}"
        );
    }
    let native = ns.sh("nft list chain inet filter forward");
    assert_eq!(native.matches(TAG).count(), 2, "{native}");
    assert!(
        native.find(TAG).unwrap() < native.find("iifname").unwrap(),
        "{native}"
    );

    let settled = ns.snapshot();
    assert_eq!(ns.run(|| ensure(&pod())).unwrap(), []);
    assert_eq!(ns.snapshot(), settled, "a second ensure wrote nothing");

    let removed = ns.run(remove_all).unwrap();
    assert_eq!(removed.len(), 6, "{removed:?}");
    assert_eq!(ns.snapshot(), before, "only our rules were removed");
    assert_eq!(ns.run(remove_all).unwrap(), []);
}

#[test]
fn a_host_that_drops_nothing_is_only_read() {
    let ns = Ns::new("fwnone");
    assert_eq!(ns.run(|| ensure(&pod())).unwrap(), []);
    assert_eq!(ns.run(remove_all).unwrap(), []);
    assert_eq!(ns.sh("nft list ruleset"), "");
    assert!(
        !ns.sh("cat /proc/net/ip_tables_names").contains("filter"),
        "the legacy filter table was created by reading it"
    );
}
