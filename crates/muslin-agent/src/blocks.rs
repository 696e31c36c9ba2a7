//! The blocks IPAM may allocate from right now: fixed by config, or the
//! leases this node holds and that have settled. ADDs wait briefly for a
//! first block or for one more; the lease manager supplies them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::{watch, Notify};

pub struct BlockSource {
    blocks: watch::Sender<Vec<IpNet>>,
    /// Shared by every network's source: one wake-up for the lease loop.
    wanted: Arc<Notify>,
    /// 0: nobody asked; n + 1: an ADD that saw n blocks wants more (the
    /// most blocks any asker saw).
    asked: AtomicUsize,
    pub leased: bool,
}

impl BlockSource {
    pub fn new(initial: Vec<IpNet>, leased: bool) -> Self {
        BlockSource {
            blocks: watch::Sender::new(initial),
            wanted: Arc::new(Notify::new()),
            asked: AtomicUsize::new(0),
            leased,
        }
    }

    /// An empty, leased source for another network, waking the same loop.
    pub fn sibling(&self) -> Self {
        BlockSource {
            blocks: watch::Sender::new(Vec::new()),
            wanted: self.wanted.clone(),
            asked: AtomicUsize::new(0),
            leased: true,
        }
    }

    /// How many blocks the ADDs that asked for more since the last call
    /// saw (the most of them), if any asked.
    pub fn take_asked(&self) -> Option<usize> {
        self.asked.swap(0, Ordering::Relaxed).checked_sub(1)
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
        self.asked.fetch_max(have + 1, Ordering::Relaxed);
        self.wanted.notify_one();
        let _ = tokio::time::timeout(wait, rx.wait_for(|b| b.len() > have)).await;
        self.current()
    }

    /// Resolves when an ADD found every block full, or found none in a
    /// network this node holds no block of yet.
    pub async fn wanted(&self) {
        self.wanted.notified().await
    }
}
