//! A count of the changes this process made to the kernel: an idle agent
//! must make none, and `status` shows the count so a test (or an operator)
//! can tell convergence from churn.

use std::sync::atomic::{AtomicU64, Ordering};

static WRITES: AtomicU64 = AtomicU64::new(0);

/// Kernel changes made since the process started.
pub fn kernel_writes() -> u64 {
    WRITES.load(Ordering::Relaxed)
}

pub(crate) fn wrote() {
    WRITES.fetch_add(1, Ordering::Relaxed);
}
