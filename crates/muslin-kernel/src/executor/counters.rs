//! What the executor did since the process started: an idle agent must
//! make no kernel writes and run no `nft`, and `status` and the metrics
//! show these so a test (or an operator) can tell convergence from churn.

use std::sync::atomic::{AtomicU64, Ordering};

static NETLINK_WRITES: AtomicU64 = AtomicU64::new(0);
static NFT_RUNS: AtomicU64 = AtomicU64::new(0);
static TOOL_WRITES: AtomicU64 = AtomicU64::new(0);
static STEPS_FAILED: AtomicU64 = AtomicU64::new(0);
static OBSERVATIONS: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Changes written through netlink.
    pub netlink_writes: u64,
    /// Runs of `nft`, reads included.
    pub nft_runs: u64,
    /// Changes written by `nft`, the iptables tools or /proc/sys.
    pub tool_writes: u64,
    pub steps_failed: u64,
    pub observations: u64,
}

impl Counters {
    /// Every change made to the kernel.
    pub fn kernel_writes(&self) -> u64 {
        self.netlink_writes + self.tool_writes
    }
}

pub fn counters() -> Counters {
    Counters {
        netlink_writes: NETLINK_WRITES.load(Ordering::Relaxed),
        nft_runs: NFT_RUNS.load(Ordering::Relaxed),
        tool_writes: TOOL_WRITES.load(Ordering::Relaxed),
        steps_failed: STEPS_FAILED.load(Ordering::Relaxed),
        observations: OBSERVATIONS.load(Ordering::Relaxed),
    }
}

pub(crate) fn netlink_write() {
    NETLINK_WRITES.fetch_add(1, Ordering::Relaxed);
}
pub(crate) fn nft_run() {
    NFT_RUNS.fetch_add(1, Ordering::Relaxed);
}
pub(crate) fn tool_write() {
    TOOL_WRITES.fetch_add(1, Ordering::Relaxed);
}
pub(crate) fn step_failed() {
    STEPS_FAILED.fetch_add(1, Ordering::Relaxed);
}
pub(crate) fn observed() {
    OBSERVATIONS.fetch_add(1, Ordering::Relaxed);
}

static NFT_WRITTEN: std::sync::OnceLock<tokio::sync::watch::Sender<u64>> =
    std::sync::OnceLock::new();

fn nft_written() -> &'static tokio::sync::watch::Sender<u64> {
    NFT_WRITTEN.get_or_init(|| tokio::sync::watch::channel(0).0)
}

/// Changes whenever this process changed the nftables ruleset: whoever
/// decides from the ruleset (the host firewall task) looks again at once,
/// rather than finding the change on its next idle round.
pub fn nft_writes() -> tokio::sync::watch::Receiver<u64> {
    nft_written().subscribe()
}

pub(crate) fn nft_wrote() {
    nft_written().send_modify(|n| *n += 1);
}
