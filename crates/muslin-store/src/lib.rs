//! Cluster state behind one interface. The agent publishes its record and
//! block claims and reads a [`ClusterView`]; it does not know which store
//! holds them. Gossip (chitchat, embedded, no external store) is the
//! default; etcd comes as a second implementation of the same trait.

mod gossip;
mod sealed;

use std::future::Future;

use ipnet::IpNet;
use muslin_model::cluster::{BlockClaim, ClusterView, NodeRecord};

pub use gossip::{Gossip, GossipConfig, GossipStats};
pub use sealed::{load_secret, SecretError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("gossip: {0}")]
    Gossip(String),
}

/// What the agent needs of cluster state.
pub trait ClusterStore: Send + Sync + 'static {
    fn publish_record(&self, rec: &NodeRecord) -> impl Future<Output = ()> + Send;
    fn claim_block(&self, block: IpNet, claim: BlockClaim) -> impl Future<Output = ()> + Send;
    fn release_block(&self, block: IpNet) -> impl Future<Output = ()> + Send;
    /// Every node known, alive or within its TTL, latest generation each.
    fn view(&self) -> impl Future<Output = ClusterView> + Send;
    /// Whether the view can be trusted to be complete (we heard from a
    /// peer, or there is nobody to hear from): deletions wait for it.
    fn synced(&self) -> bool;
}
