//! The blocks IPAM may allocate from right now: fixed by config, or the
//! leases this node holds and that have settled. ADDs wait briefly for a
//! first block or for one more; the lease manager supplies them.

use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::{watch, Notify};

pub struct BlockSource {
    blocks: watch::Sender<Vec<IpNet>>,
    wanted: Notify,
    pub leased: bool,
}

impl BlockSource {
    pub fn new(initial: Vec<IpNet>, leased: bool) -> Self {
        BlockSource {
            blocks: watch::Sender::new(initial),
            wanted: Notify::new(),
            leased,
        }
    }

    pub fn current(&self) -> Vec<IpNet> {
        self.blocks.borrow().clone()
    }

    pub fn set(&self, blocks: Vec<IpNet>) {
        self.blocks.send_if_modified(|b| {
            if *b != blocks {
                *b = blocks;
                true
            } else {
                false
            }
        });
    }

    /// Waits until there are more than `have` blocks, asking the lease
    /// manager for one; returns the blocks then (or as they are at the end).
    pub async fn more_than(&self, have: usize, wait: Duration) -> Vec<IpNet> {
        let mut rx = self.blocks.subscribe();
        if have > 0 {
            self.wanted.notify_one();
        }
        let _ = tokio::time::timeout(wait, rx.wait_for(|b| b.len() > have)).await;
        self.current()
    }

    /// Resolves when an ADD found every block full.
    pub async fn wanted(&self) {
        self.wanted.notified().await
    }
}
