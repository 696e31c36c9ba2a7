//! Cluster state behind one interface. The agent publishes its record and
//! block claims and reads a [`ClusterView`]; it does not know which store
//! holds them. Gossip (SWIM membership and anti-entropy, embedded, no external store) is the
//! default; etcd comes as a second implementation of the same trait.

mod etcd;
pub mod freshness;
mod gossip;
pub mod probe_wire;
mod sealed;
pub mod sim;
pub mod socket_buffer;
mod swim;

use std::future::Future;

use ipnet::IpNet;
use std::collections::BTreeMap;

use muslin_model::cluster::{BlockClaim, ClusterView, EndpointRecord, NodeRecord};
use muslin_model::network::NetworkSpec;
use muslin_model::object::{ObjectKey, ObjectRecord};

pub use etcd::{errors as etcd_errors, Etcd, EtcdConfig};
pub use gossip::{next_generation, Gossip, GossipConfig, GossipStats};
pub use sealed::{load_secret, SecretError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("gossip: {0}")]
    Gossip(String),
    #[error("{0}")]
    Etcd(String),
}

/// What the agent needs of cluster state.
pub trait ClusterStore: Send + Sync + 'static {
    fn publish_record(&self, rec: &NodeRecord) -> impl Future<Output = ()> + Send;
    fn claim_block(
        &self,
        network: &str,
        block: IpNet,
        claim: BlockClaim,
    ) -> impl Future<Output = ()> + Send;
    fn release_block(&self, network: &str, block: IpNet) -> impl Future<Output = ()> + Send;
    /// Makes this node's published endpoints exactly `records`: level
    /// triggered, so calling it again after a crash or an outage converges,
    /// and calling it with nothing changed costs no write.
    fn sync_endpoints(&self, records: &[EndpointRecord]) -> impl Future<Output = ()> + Send;
    /// Writes a network record: a creation, or a deletion (a record with
    /// `deleted_at_ms`). etcd refuses to create a name that exists.
    fn put_network(&self, rec: &NetworkSpec) -> impl Future<Output = Result<(), String>> + Send;
    /// Gossip republishes every record `known` holds from this node too, so
    /// a network outlives the node that created it; deletions older than
    /// `network::TOMBSTONE_MS` are dropped. etcd keeps networks itself.
    fn sync_networks(
        &self,
        known: &BTreeMap<String, NetworkSpec>,
        now_ms: u64,
    ) -> impl Future<Output = ()> + Send;
    /// Writes a cluster object, or deletes it (a record with
    /// `deleted_at_ms`); the last write wins. Refuses a record larger than
    /// `object::MAX_BODY_BYTES` on either store.
    fn put_object(&self, rec: &ObjectRecord) -> impl Future<Output = Result<(), String>> + Send;
    /// Writes several records at once: all of them or, on an error, none
    /// (one etcd transaction; one change of this node's gossip state).
    fn put_objects(&self, recs: &[ObjectRecord])
        -> impl Future<Output = Result<(), String>> + Send;
    /// Gossip makes this node's published objects exactly `known`, less
    /// deletions older than `object::TOMBSTONE_MS`, so an object outlives
    /// its writer. etcd keeps objects itself.
    fn sync_objects(
        &self,
        known: &BTreeMap<ObjectKey, ObjectRecord>,
        now_ms: u64,
    ) -> impl Future<Output = ()> + Send;
    /// Every node known, alive or within its TTL, latest generation each.
    fn view(&self) -> impl Future<Output = ClusterView> + Send;
    /// Whether the view can be trusted to be complete (we heard from a
    /// peer, or there is nobody to hear from): deletions wait for it.
    fn synced(&self) -> bool;
}

/// The store the agent runs on, chosen by one setting.
/// Gossip bytes sent and received, and requests made to etcd.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub gossip_bytes_sent: u64,
    pub gossip_bytes_received: u64,
    pub etcd_requests: u64,
}

pub enum AnyStore {
    Gossip(Box<Gossip>),
    Etcd(Box<Etcd>),
}

impl AnyStore {
    /// Why peers refuse us (gossip's cluster secret), if they do.
    pub fn auth_problem(&self) -> Option<String> {
        match self {
            AnyStore::Gossip(g) => g.auth_problem(),
            AnyStore::Etcd(_) => None,
        }
    }

    /// Sends gossip for an advertised address that does not answer to one
    /// of the same node's addresses that does; etcd needs no such help.
    pub fn redirect(
        &self,
        map: std::collections::HashMap<std::net::SocketAddr, std::net::SocketAddr>,
    ) {
        if let AnyStore::Gossip(g) = self {
            g.redirect(map);
        }
    }

    /// Datagrams the gossip transport refused (forged, stale, replayed).
    pub fn dropped(&self) -> u64 {
        match self {
            AnyStore::Gossip(g) => g.dropped(),
            AnyStore::Etcd(_) => 0,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            AnyStore::Gossip(_) => "gossip",
            AnyStore::Etcd(_) => "etcd",
        }
    }

    /// What talking to the cluster cost so far.
    pub fn traffic(&self) -> Traffic {
        match self {
            AnyStore::Gossip(g) => {
                let s = g.stats();
                Traffic {
                    gossip_bytes_sent: s.bytes_sent,
                    gossip_bytes_received: s.bytes_received,
                    etcd_requests: 0,
                }
            }
            AnyStore::Etcd(e) => Traffic {
                etcd_requests: e.requests.load(std::sync::atomic::Ordering::Relaxed),
                ..Traffic::default()
            },
        }
    }
}

impl ClusterStore for AnyStore {
    async fn publish_record(&self, rec: &NodeRecord) {
        match self {
            AnyStore::Gossip(s) => s.publish_record(rec).await,
            AnyStore::Etcd(s) => s.publish_record(rec).await,
        }
    }
    async fn claim_block(&self, network: &str, block: IpNet, claim: BlockClaim) {
        match self {
            AnyStore::Gossip(s) => s.claim_block(network, block, claim).await,
            AnyStore::Etcd(s) => s.claim_block(network, block, claim).await,
        }
    }
    async fn release_block(&self, network: &str, block: IpNet) {
        match self {
            AnyStore::Gossip(s) => s.release_block(network, block).await,
            AnyStore::Etcd(s) => s.release_block(network, block).await,
        }
    }
    async fn sync_endpoints(&self, records: &[EndpointRecord]) {
        match self {
            AnyStore::Gossip(s) => s.sync_endpoints(records).await,
            AnyStore::Etcd(s) => s.sync_endpoints(records).await,
        }
    }
    async fn put_network(&self, rec: &NetworkSpec) -> Result<(), String> {
        match self {
            AnyStore::Gossip(s) => s.put_network(rec).await,
            AnyStore::Etcd(s) => s.put_network(rec).await,
        }
    }
    async fn sync_networks(&self, known: &BTreeMap<String, NetworkSpec>, now_ms: u64) {
        match self {
            AnyStore::Gossip(s) => s.sync_networks(known, now_ms).await,
            AnyStore::Etcd(s) => s.sync_networks(known, now_ms).await,
        }
    }
    async fn put_object(&self, rec: &ObjectRecord) -> Result<(), String> {
        match self {
            AnyStore::Gossip(s) => s.put_object(rec).await,
            AnyStore::Etcd(s) => s.put_object(rec).await,
        }
    }
    async fn put_objects(&self, recs: &[ObjectRecord]) -> Result<(), String> {
        match self {
            AnyStore::Gossip(s) => s.put_objects(recs).await,
            AnyStore::Etcd(s) => s.put_objects(recs).await,
        }
    }
    async fn sync_objects(&self, known: &BTreeMap<ObjectKey, ObjectRecord>, now_ms: u64) {
        match self {
            AnyStore::Gossip(s) => s.sync_objects(known, now_ms).await,
            AnyStore::Etcd(s) => s.sync_objects(known, now_ms).await,
        }
    }
    async fn view(&self) -> ClusterView {
        match self {
            AnyStore::Gossip(s) => s.view().await,
            AnyStore::Etcd(s) => s.view().await,
        }
    }
    fn synced(&self) -> bool {
        match self {
            AnyStore::Gossip(s) => s.synced(),
            AnyStore::Etcd(s) => s.synced(),
        }
    }
}
