//! The networks in force, shared by the local API (an ADD joins one,
//! `muslin network` manages them) and the cluster loop, which learns them
//! from the store, leases their blocks and programs them. Creating and
//! deleting go through the cluster loop: it holds the store, the view and
//! the host's routes that a new network is checked against.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use muslin_model::api::NetworkStatus;
use muslin_model::cni::{CniError, ErrorCode};
use muslin_model::network::{CreateNetwork, NetworkSpec};
use tokio::sync::{mpsc, oneshot, watch};

use crate::blocks::BlockSource;

/// A request for the cluster loop.
pub enum Ask {
    Create(
        CreateNetwork,
        oneshot::Sender<Result<NetworkSpec, CniError>>,
    ),
    Delete(String, oneshot::Sender<Result<(), CniError>>),
    List(oneshot::Sender<Vec<NetworkStatus>>),
    Policy(crate::membership::policies::PolicyAsk),
    /// A new WireGuard key: the new public key, or why not.
    RotateKey(oneshot::Sender<Result<String, CniError>>),
    WireguardStatus(oneshot::Sender<Option<muslin_model::api::WireguardStatus>>),
}

pub struct Networks {
    live: watch::Sender<BTreeMap<String, NetworkSpec>>,
    /// Whether the cluster loop has said which networks are in force yet.
    ready: watch::Sender<bool>,
    /// Networks known but not yet in force here.
    settling: Mutex<std::collections::BTreeSet<String>>,
    blocks: Mutex<BTreeMap<String, Arc<BlockSource>>>,
    default_blocks: Arc<BlockSource>,
    asks: mpsc::Sender<Ask>,
    /// MTU of pods of a network: its traffic is always encapsulated.
    pub tunnel_mtu: u32,
}

impl Networks {
    pub fn new(
        default_blocks: Arc<BlockSource>,
        tunnel_mtu: u32,
    ) -> (Arc<Self>, mpsc::Receiver<Ask>) {
        let (asks, rx) = mpsc::channel(16);
        let n = Networks {
            live: watch::Sender::new(BTreeMap::new()),
            ready: watch::Sender::new(false),
            settling: Mutex::new(Default::default()),
            blocks: Mutex::new(BTreeMap::new()),
            default_blocks,
            asks,
            tunnel_mtu,
        };
        (Arc::new(n), rx)
    }

    pub fn subscribe(&self) -> watch::Receiver<BTreeMap<String, NetworkSpec>> {
        self.live.subscribe()
    }

    pub fn get(&self, name: &str) -> Option<NetworkSpec> {
        self.live.borrow().get(name).cloned()
    }

    pub fn set_settling(&self, names: std::collections::BTreeSet<String>) {
        *self.settling.lock().expect("settling") = names;
    }

    /// The network `name` once it is in force, waiting for one that is
    /// settling (created a moment ago) rather than failing the ADD.
    pub async fn get_or_wait(&self, name: &str) -> Option<NetworkSpec> {
        if let Some(n) = self.get(name) {
            return Some(n);
        }
        if !self.settling.lock().expect("settling").contains(name) {
            return None;
        }
        let mut rx = self.live.subscribe();
        let limit = std::time::Duration::from_secs(10);
        let found = tokio::time::timeout(limit, rx.wait_for(|l| l.contains_key(name))).await;
        match found {
            Ok(Ok(l)) => l.get(name).cloned(),
            _ => None,
        }
    }

    /// Waits (a little) until the networks in force are known: right
    /// after a start, an ADD naming a network must not take it for the
    /// default network because the list is still empty.
    pub async fn ready(&self) -> bool {
        let mut rx = self.ready.subscribe();
        let limit = std::time::Duration::from_secs(5);
        let ok = matches!(
            tokio::time::timeout(limit, rx.wait_for(|r| *r)).await,
            Ok(Ok(_))
        );
        ok
    }

    pub fn set_live(&self, live: &BTreeMap<String, NetworkSpec>) {
        self.ready.send_if_modified(|r| !std::mem::replace(r, true));
        self.live.send_if_modified(|l| {
            if l != live {
                *l = live.clone();
                true
            } else {
                false
            }
        });
    }

    /// The block source of `network`, made on first use.
    pub fn blocks(&self, network: &str) -> Arc<BlockSource> {
        self.blocks
            .lock()
            .expect("blocks")
            .entry(network.to_string())
            .or_insert_with(|| Arc::new(self.default_blocks.sibling()))
            .clone()
    }

    pub fn forget(&self, network: &str) {
        self.blocks.lock().expect("blocks").remove(network);
    }

    /// Sends a request to the cluster loop and waits for its answer.
    pub async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Ask,
    ) -> Result<T, CniError> {
        let (tx, rx) = oneshot::channel();
        let gone = || {
            CniError::new(
                ErrorCode::TryAgainLater,
                "the cluster loop is not running (the agent is starting or stopping)",
            )
        };
        self.asks.send(make(tx)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }
}
