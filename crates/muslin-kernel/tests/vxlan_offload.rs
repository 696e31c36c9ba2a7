//! Transmit checksum offload of a VXLAN device, read and set through the
//! ethtool ioctl as the agent does on kernels with the VXLAN checksum bug
//! (pitfall 4), on a device in a throwaway network namespace that a thread
//! of the test enters. Needs root.

use std::fs::File;
use std::os::fd::AsFd;
use std::process::Command;

use muslin_kernel::ethtool::{set_tx_checksum, tx_checksum};
use muslin_kernel::vxlan_offload::{enforce, enforce_with, policy, Policy};
use nix::sched::{setns, CloneFlags};

/// A network namespace deleted on drop, with one VXLAN device `vx0`.
struct Ns(String);

impl Ns {
    fn with_vxlan(tag: &str) -> Ns {
        let ns = Ns(format!("mk{}-{tag}", std::process::id()));
        ip(&["netns", "add", &ns.0]);
        ip(&[
            "-n", &ns.0, "link", "add", "vx0", "type", "vxlan", "id", "42", "dstport", "4789",
        ]);
        ns
    }

    /// Runs `f` on a thread inside the namespace: the ioctl acts in the
    /// namespace of the thread that makes it.
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
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn tx_checksum_offload_of_a_vxlan_device_round_trips() {
    let ns = Ns::with_vxlan("csum");
    let (before, off, on) = ns.run(|| {
        let before = tx_checksum("vx0").unwrap();
        set_tx_checksum("vx0", false).unwrap();
        let off = tx_checksum("vx0").unwrap();
        set_tx_checksum("vx0", true).unwrap();
        (before, off, tx_checksum("vx0").unwrap())
    });
    assert!(before, "a new VXLAN device offloads tx checksums");
    assert!(!off, "turned off");
    assert!(on, "turned on again");
    // Only ours in this namespace: a missing device is an error, not a
    // device elsewhere.
    assert!(ns.run(|| tx_checksum("msl-none").is_err()));
}

#[test]
fn the_workaround_follows_the_kernel() {
    let ns = Ns::with_vxlan("policy");
    let (changed, after) = ns.run(|| {
        let changed = enforce("vx0", true);
        (changed, tx_checksum("vx0").unwrap())
    });
    match policy() {
        // A fixed kernel (this one, most likely) keeps the offload.
        Policy::Leave => assert!(!changed && after),
        Policy::TurnOff => assert!(changed && !after),
    }
    // Already off: nothing to do either way.
    let changed = ns.run(|| {
        set_tx_checksum("vx0", false).unwrap();
        enforce("vx0", false)
    });
    assert!(!changed);
}

#[test]
fn the_workaround_turns_offload_off_and_again_after_drift() {
    let ns = Ns::with_vxlan("turnoff");
    let (created, after_create, drifted, after_drift, idle) = ns.run(|| {
        let created = enforce_with(Policy::TurnOff, "vx0", true);
        let after_create = tx_checksum("vx0").unwrap();
        set_tx_checksum("vx0", true).unwrap();
        let drifted = enforce_with(Policy::TurnOff, "vx0", false);
        let after_drift = tx_checksum("vx0").unwrap();
        (
            created,
            after_create,
            drifted,
            after_drift,
            enforce_with(Policy::TurnOff, "vx0", false),
        )
    });
    assert!(created && !after_create, "off on creation");
    assert!(
        drifted && !after_drift,
        "off again after someone turned it on"
    );
    assert!(!idle, "nothing to do while it stays off");
}
