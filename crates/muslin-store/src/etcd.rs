//! The etcd store: the same view as gossip, kept in etcd. Block claims are
//! compare-and-create transactions, so two owners of a block are
//! impossible by construction. The view is a local cache filled by one
//! prefix read and then kept current by a watch (no polling); a cut watch
//! resumes from its revision, or re-reads everything when that revision
//! was compacted. While etcd is away the cache, and so the data plane,
//! stays as it was.
//!
//! Keys under the prefix (default `/muslin/`; built and parsed in
//! `muslin_model::cluster`): `nodes/NAME` the node record,
//! `v2/blocks/NETWORK/CIDR` a claim (`{"node", "claimed_at_ms"}`; for the
//! default network also under the previous version's `blocks/CIDR`, both
//! created in one transaction) and `v2/endpoints/NAME/NETWORK/CONTAINER/IFNAME`
//! an endpoint, all on the node's block lease (TTL = block TTL);
//! `alive/NAME` on a short liveness lease. Network records
//! (`v2/networks/NAME`) and cluster objects (`v2/objects/KIND/NAME`) are
//! the cluster's: on no lease.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use ipnet::IpNet;
use muslin_model::cluster::{
    etcd_alive_key, etcd_block_keys, etcd_endpoint_key, etcd_endpoints_prefix, etcd_network_key,
    etcd_node_key, etcd_object_key, parse_etcd_key, BlockClaim, ClusterView, EndpointRecord,
    EtcdKey, NodeRecord,
};
use muslin_model::network::NetworkSpec;
use muslin_model::object::{self, ObjectKey, ObjectRecord};
use serde::{Deserialize, Serialize};

use crate::{ClusterStore, StoreError};

#[derive(Debug, Clone)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub node_name: String,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// How long a silent node keeps its record and blocks.
    pub ttl: Duration,
    /// How long a silent node counts as alive.
    pub alive_ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Claim {
    node: String,
    claimed_at_ms: u64,
}

pub struct Etcd {
    client: Client,
    cfg: EtcdConfig,
    cache: Arc<RwLock<BTreeMap<String, String>>>,
    synced: Arc<AtomicBool>,
    block_lease: Arc<AtomicI64>,
    alive_lease: Arc<AtomicI64>,
    /// Keys this node wants to hold, re-asserted after every reconnection.
    own: Arc<Mutex<BTreeMap<String, String>>>,
    /// Owned keys whose last write or delete failed: retried on every
    /// endpoint sync, so a short outage (no lease lost) heals too.
    unsent: Mutex<BTreeSet<String>>,
    pub requests: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn err(setting: &str, msg: impl std::fmt::Display) -> StoreError {
    StoreError::Etcd(format!("{setting}: {msg}"))
}

/// Requests to etcd that failed (unreachable, timed out, refused), since
/// the process started: the metrics show them, as an outage that the
/// data plane rides out is otherwise seen only in the log.
static ERRORS: AtomicU64 = AtomicU64::new(0);

pub fn errors() -> u64 {
    ERRORS.load(Ordering::Relaxed)
}

fn failed_request() {
    ERRORS.fetch_add(1, Ordering::Relaxed);
}

/// Logs an outage once per interval, not once per attempt.
struct Outage {
    since: Option<Instant>,
    logged: Option<Instant>,
}

impl Outage {
    fn new() -> Self {
        Outage {
            since: None,
            logged: None,
        }
    }
    fn failed(&mut self, what: &str, e: &dyn std::fmt::Display) {
        failed_request();
        let now = Instant::now();
        let since = *self.since.get_or_insert(now);
        if self
            .logged
            .is_none_or(|l| now.duration_since(l) > Duration::from_secs(10))
        {
            tracing::warn!(down_for_s = now.duration_since(since).as_secs(), cause = %e, "etcd unreachable ({what}); the data plane keeps its last state, retrying");
            self.logged = Some(now);
        }
    }
    fn ok(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                down_for_s = since.elapsed().as_secs(),
                "etcd is back; resynchronising"
            );
        }
        self.logged = None;
    }
}

impl Etcd {
    /// Connects (failing clearly on bad settings), reads the state once and
    /// starts the watch and the lease keepers.
    pub async fn start(cfg: EtcdConfig) -> Result<Etcd, StoreError> {
        if cfg.endpoints.is_empty() {
            return Err(err(
                "etcd-endpoints",
                "at least one endpoint is required with datastore = \"etcd\"",
            ));
        }
        for e in &cfg.endpoints {
            let ok = (e.starts_with("http://") || e.starts_with("https://"))
                && e.split("://").nth(1).is_some_and(|h| !h.is_empty());
            if !ok {
                return Err(err(
                    "etcd-endpoints",
                    format!("{e:?} is not an http:// or https:// URL"),
                ));
            }
        }
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5))
            // HTTP/2 pings: a silent partition (no RST) ends the watch
            // stream instead of leaving the cache quietly stale.
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        if cfg.ca_file.is_some() || cfg.cert_file.is_some() || cfg.key_file.is_some() {
            let read = |setting: &str, p: &PathBuf| {
                std::fs::read(p).map_err(|e| err(setting, format!("{}: {e}", p.display())))
            };
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &cfg.ca_file {
                let pem = read("etcd-ca-file", ca)?;
                if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                    return Err(err(
                        "etcd-ca-file",
                        format!("{} holds no PEM certificate", ca.display()),
                    ));
                }
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(pem));
            }
            match (&cfg.cert_file, &cfg.key_file) {
                (Some(c), Some(k)) => {
                    let cert = read("etcd-cert-file", c)?;
                    let key = read("etcd-key-file", k)?;
                    if !String::from_utf8_lossy(&cert).contains("-----BEGIN CERTIFICATE-----") {
                        return Err(err(
                            "etcd-cert-file",
                            format!("{} holds no PEM certificate", c.display()),
                        ));
                    }
                    if !String::from_utf8_lossy(&key).contains("PRIVATE KEY-----") {
                        return Err(err(
                            "etcd-key-file",
                            format!("{} holds no PEM private key", k.display()),
                        ));
                    }
                    tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
                }
                (Some(_), None) => {
                    return Err(err("etcd-key-file", "required with etcd-cert-file"))
                }
                (None, Some(_)) => {
                    return Err(err("etcd-cert-file", "required with etcd-key-file"))
                }
                (None, None) => {}
            }
            opts = opts.with_tls(tls);
        }
        let client = Client::connect(&cfg.endpoints, Some(opts))
            .await
            .map_err(|e| {
                err(
                    "etcd-endpoints",
                    format!("cannot connect to {}: {e}", cfg.endpoints.join(",")),
                )
            })?;
        let mut s = Etcd {
            client,
            cfg,
            cache: Arc::default(),
            synced: Arc::default(),
            block_lease: Arc::default(),
            alive_lease: Arc::default(),
            own: Arc::default(),
            unsent: Mutex::default(),
            requests: Arc::default(),
            tasks: vec![],
        };
        // The first read, briefly: a restart must serve its pods from what
        // it holds even while etcd is away, so an unreachable etcd is not
        // fatal. The watch keeps reading and the lease keeper grants leases
        // (and writes our keys) once etcd answers.
        match tokio::time::timeout(Duration::from_millis(500), s.resync()).await {
            Ok(Ok(_)) => {
                if let Err(e) = s.grant_leases().await {
                    failed_request();
                    tracing::warn!(cause = %e, "etcd lease grant failed; retrying in the background");
                }
            }
            Ok(Err(e)) => {
                failed_request();
                tracing::warn!(endpoints = %s.cfg.endpoints.join(","), cause = %e, "etcd unreachable at start; serving from what this node holds and retrying in the background")
            }
            Err(_) => {
                failed_request();
                tracing::warn!(endpoints = %s.cfg.endpoints.join(","), "etcd does not answer at start; serving from what this node holds and retrying in the background")
            }
        }
        s.tasks.push(tokio::spawn(watch_loop(
            s.client.clone(),
            s.cfg.prefix.clone(),
            s.cache.clone(),
            s.synced.clone(),
            s.requests.clone(),
        )));
        s.tasks.push(tokio::spawn(keep_leases(
            s.client.clone(),
            s.cfg.clone(),
            s.block_lease.clone(),
            s.alive_lease.clone(),
            s.own.clone(),
            s.requests.clone(),
        )));
        let alive = etcd_alive_key(&s.cfg.prefix, &s.cfg.node_name);
        s.own_put(alive, "1".into()).await;
        Ok(s)
    }

    async fn resync(&self) -> Result<i64, etcd_client::Error> {
        resync(
            &self.client,
            &self.cfg.prefix,
            &self.cache,
            &self.synced,
            &self.requests,
        )
        .await
    }

    async fn grant_leases(&self) -> Result<(), etcd_client::Error> {
        let mut c = self.client.clone();
        let b = c
            .lease_grant(self.cfg.ttl.as_secs().max(1) as i64, None)
            .await?;
        let a = c
            .lease_grant(self.cfg.alive_ttl.as_secs().max(1) as i64, None)
            .await?;
        self.block_lease.store(b.id(), Ordering::Relaxed);
        self.alive_lease.store(a.id(), Ordering::Relaxed);
        self.requests.fetch_add(2, Ordering::Relaxed);
        Ok(())
    }

    /// Records a key this node owns and writes it (the keeper re-writes it
    /// after an outage).
    async fn own_put(&self, key: String, value: String) {
        self.own
            .lock()
            .expect("own")
            .insert(key.clone(), value.clone());
        let lease = lease_for(&self.cfg, &key, &self.block_lease, &self.alive_lease);
        // Without a lease yet the keeper writes it once one is granted: a
        // key without a lease would outlive this node.
        if lease == 0 {
            return;
        }
        let mut c = self.client.clone();
        self.requests.fetch_add(1, Ordering::Relaxed);
        let unsent = match c
            .put(
                key.clone(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
        {
            Ok(_) => false,
            Err(e) => {
                failed_request();
                tracing::debug!(cause = %e, "etcd put failed; will retry");
                true
            }
        };
        self.mark(key, unsent);
    }

    fn mark(&self, key: String, unsent: bool) {
        let mut u = self.unsent.lock().expect("unsent");
        if unsent {
            u.insert(key);
        } else {
            u.remove(&key);
        }
    }

    /// Forgets an owned key and deletes it; a failed delete is retried.
    async fn own_delete(&self, key: String) {
        self.own.lock().expect("own").remove(&key);
        let mut c = self.client.clone();
        self.requests.fetch_add(1, Ordering::Relaxed);
        let failed = c.delete(key.clone(), None).await.is_err();
        if failed {
            failed_request();
        }
        self.mark(key, failed);
    }

    /// Whether this client's copy of the store holds `key`: the scale
    /// benchmark's cheap question, asked of every client many times a
    /// second.
    pub fn sim_cached(&self, key: &str) -> bool {
        self.cache.read().expect("cache").contains_key(key)
    }

    pub async fn shutdown(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

fn lease_for(cfg: &EtcdConfig, key: &str, block: &AtomicI64, alive: &AtomicI64) -> i64 {
    if matches!(parse_etcd_key(&cfg.prefix, key), Some(EtcdKey::Alive(_))) {
        alive.load(Ordering::Relaxed)
    } else {
        block.load(Ordering::Relaxed)
    }
}

async fn resync(
    client: &Client,
    prefix: &str,
    cache: &RwLock<BTreeMap<String, String>>,
    synced: &AtomicBool,
    requests: &AtomicU64,
) -> Result<i64, etcd_client::Error> {
    let mut c = client.clone();
    requests.fetch_add(1, Ordering::Relaxed);
    let r = c.get(prefix, Some(GetOptions::new().with_prefix())).await?;
    let map: BTreeMap<String, String> = r
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        })
        .collect();
    *cache.write().expect("cache") = map;
    synced.store(true, Ordering::Relaxed);
    Ok(r.header().map(|h| h.revision()).unwrap_or(0))
}

/// Read everything once, then follow the watch from the next revision;
/// start over on any cut (compaction, etcd restart, network).
async fn watch_loop(
    client: Client,
    prefix: String,
    cache: Arc<RwLock<BTreeMap<String, String>>>,
    synced: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
) {
    let mut outage = Outage::new();
    let mut backoff = Duration::from_millis(200);
    let mut from: Option<i64> = None;
    loop {
        let rev = match from {
            Some(r) => r,
            None => match resync(&client, &prefix, &cache, &synced, &requests).await {
                Ok(r) => r + 1,
                Err(e) => {
                    outage.failed("read", &e);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
        };
        let mut c = client.clone();
        requests.fetch_add(1, Ordering::Relaxed);
        let mut stream = match c
            .watch(
                prefix.clone(),
                Some(WatchOptions::new().with_prefix().with_start_revision(rev)),
            )
            .await
        {
            Ok(s) => s,
            Err(e) => {
                outage.failed("watch", &e);
                from = None;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        outage.ok();
        backoff = Duration::from_millis(200);
        let mut next = rev;
        from = loop {
            match stream.message().await {
                Ok(Some(resp)) => {
                    if resp.canceled() || resp.compact_revision() > 0 {
                        tracing::info!(
                            compacted_at = resp.compact_revision(),
                            "etcd watch cancelled; re-reading all state"
                        );
                        break None;
                    }
                    let mut map = cache.write().expect("cache");
                    for ev in resp.events() {
                        if let Some(kv) = ev.kv() {
                            let k = String::from_utf8_lossy(kv.key()).into_owned();
                            match ev.event_type() {
                                EventType::Put => {
                                    map.insert(k, String::from_utf8_lossy(kv.value()).into_owned());
                                }
                                EventType::Delete => {
                                    map.remove(&k);
                                }
                            }
                            next = next.max(kv.mod_revision() + 1);
                        }
                    }
                }
                // A watch that ends cleanly or fails resumes where it was.
                Ok(None) => break Some(next),
                Err(e) => {
                    outage.failed("watch", &e);
                    break Some(next);
                }
            }
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Keeps both leases alive, each on its own schedule (a third of its
/// TTL) over one long-lived keep-alive stream; after an outage long enough
/// for a lease to expire, grants a new one and writes every owned key again.
async fn keep_leases(
    client: Client,
    cfg: EtcdConfig,
    block: Arc<AtomicI64>,
    alive: Arc<AtomicI64>,
    own: Arc<Mutex<BTreeMap<String, String>>>,
    requests: Arc<AtomicU64>,
) {
    type Stream = (etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream);
    let mut outage = Outage::new();
    let mut c = client.clone();
    let leases = [(&alive, cfg.alive_ttl), (&block, cfg.ttl)];
    let mut streams: [Option<Stream>; 2] = [None, None];
    let mut due = [Instant::now(); 2];
    loop {
        let next = *due.iter().min().expect("two leases");
        tokio::time::sleep_until(next.into()).await;
        let mut lost = false;
        for (k, (lease, ttl)) in leases.iter().enumerate() {
            if Instant::now() < due[k] {
                continue;
            }
            due[k] = Instant::now() + (*ttl / 3).max(Duration::from_millis(500));
            let id = lease.load(Ordering::Relaxed);
            requests.fetch_add(1, Ordering::Relaxed);
            // Never granted (etcd was away at start): grant one now.
            if id == 0 {
                match c.lease_grant(ttl.as_secs().max(1) as i64, None).await {
                    Ok(g) => {
                        lease.store(g.id(), Ordering::Relaxed);
                        lost = true;
                    }
                    Err(e) => {
                        due[k] = Instant::now() + Duration::from_secs(1);
                        outage.failed("lease grant", &e);
                    }
                }
                continue;
            }
            // A stopped etcd answers nothing: bound the wait, then report.
            let exchange = async {
                if streams[k].is_none() {
                    streams[k] = Some(c.lease_keep_alive(id).await?);
                }
                let (keeper, stream) = streams[k].as_mut().expect("just opened");
                keeper.keep_alive().await?;
                stream.message().await
            };
            let r = match tokio::time::timeout(Duration::from_secs(3), exchange).await {
                Ok(r) => r,
                Err(_) => Err(etcd_client::Error::InvalidArgs(
                    "no keep-alive answer within 3 s".into(),
                )),
            };
            match r {
                Ok(Some(resp)) if resp.ttl() > 0 => outage.ok(),
                Ok(_) => {
                    // Expired while we were cut off: a new lease, and our keys again.
                    streams[k] = None;
                    match c.lease_grant(ttl.as_secs().max(1) as i64, None).await {
                        Ok(g) => {
                            lease.store(g.id(), Ordering::Relaxed);
                            lost = true;
                        }
                        Err(e) => outage.failed("lease grant", &e),
                    }
                }
                Err(e) => {
                    streams[k] = None;
                    due[k] = Instant::now() + Duration::from_secs(1);
                    outage.failed("lease keep-alive", &e);
                }
            }
        }
        if lost {
            outage.ok();
            let keys: Vec<(String, String)> = own
                .lock()
                .expect("own")
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            // Both key forms of a claim are re-asserted together.
            let mut claims: BTreeMap<(String, IpNet), (Vec<String>, String)> = BTreeMap::new();
            for (k, v) in keys {
                let lease = lease_for(&cfg, &k, &block, &alive);
                // Not granted yet: written once it is (a key without a
                // lease would outlive this node).
                if lease == 0 {
                    continue;
                }
                if let Some(EtcdKey::Block { network, block }) = parse_etcd_key(&cfg.prefix, &k) {
                    claims
                        .entry((network, block))
                        .or_insert_with(|| (vec![], v))
                        .0
                        .push(k);
                } else {
                    requests.fetch_add(1, Ordering::Relaxed);
                    let _ = c.put(k, v, Some(PutOptions::new().with_lease(lease))).await;
                }
            }
            let lease = block.load(Ordering::Relaxed);
            for (keys, v) in claims.into_values() {
                requests.fetch_add(1 + keys.len() as u64, Ordering::Relaxed);
                // A claim is never overwritten: another node may have
                // taken the block while ours had expired.
                if !reassert_claim(&mut c, &keys, &v, lease).await {
                    let mut own = own.lock().expect("own");
                    for k in &keys {
                        own.remove(k);
                    }
                    tracing::warn!(keys = ?keys, "our block claim expired during the outage and another node holds it now");
                }
            }
            tracing::info!("etcd leases renewed and owned keys re-written");
        }
    }
}

/// Puts our claim under every key of `keys` on `lease` only if each holds
/// exactly our claim or nobody's, all in one transaction: never over
/// another node's, and never one key form without the other. Returns
/// whether we hold it.
async fn reassert_claim(c: &mut Client, keys: &[String], value: &str, lease: i64) -> bool {
    let mut when = Vec::new();
    for k in keys {
        let Ok(r) = c.get(k.as_str(), None).await else {
            return false;
        };
        match r.kvs().first() {
            None => when.push(Compare::create_revision(k.as_str(), CompareOp::Equal, 0)),
            Some(kv) if kv.value() == value.as_bytes() => {
                when.push(Compare::value(k.as_str(), CompareOp::Equal, value))
            }
            Some(_) => return false,
        }
    }
    let puts: Vec<TxnOp> = keys
        .iter()
        .map(|k| TxnOp::put(k.as_str(), value, Some(PutOptions::new().with_lease(lease))))
        .collect();
    let txn = Txn::new().when(when).and_then(puts);
    matches!(c.txn(txn).await, Ok(r) if r.succeeded())
}

impl ClusterStore for Etcd {
    async fn publish_record(&self, rec: &NodeRecord) {
        let key = etcd_node_key(&self.cfg.prefix, &self.cfg.node_name);
        self.own_put(key, serde_json::to_string(rec).expect("record serializes"))
            .await;
    }

    async fn claim_block(&self, network: &str, block: IpNet, claim: BlockClaim) {
        let keys = etcd_block_keys(&self.cfg.prefix, network, block);
        let value = serde_json::to_string(&Claim {
            node: self.cfg.node_name.clone(),
            claimed_at_ms: claim.claimed_at_ms,
        })
        .expect("serializes");
        let lease = self.block_lease.load(Ordering::Relaxed);
        if lease == 0 {
            // No lease yet: the claim is made again once etcd answers.
            return;
        }
        let mut c = self.client.clone();
        self.requests.fetch_add(1, Ordering::Relaxed);
        // Create only if nobody holds it under either key form: the whole
        // point of using etcd, and what keeps agents of the previous
        // version (which check only the v1 key) from taking it too.
        let txn = Txn::new()
            .when(
                keys.iter()
                    .map(|k| Compare::create_revision(k.as_str(), CompareOp::Equal, 0))
                    .collect::<Vec<_>>(),
            )
            .and_then(
                keys.iter()
                    .map(|k| {
                        TxnOp::put(
                            k.as_str(),
                            value.as_str(),
                            Some(PutOptions::new().with_lease(lease)),
                        )
                    })
                    .collect::<Vec<_>>(),
            );
        let held = match c.txn(txn).await {
            Ok(r) if r.succeeded() => true,
            Ok(_) => {
                // Ours already, exactly (a restart re-claims with the same
                // time)? Then move it onto our new lease, atomically.
                self.requests
                    .fetch_add(1 + keys.len() as u64, Ordering::Relaxed);
                reassert_claim(&mut c, &keys, &value, lease).await
            }
            Err(e) => {
                failed_request();
                tracing::debug!(cause = %e, block = %block, "claim failed; will retry");
                false
            }
        };
        if held {
            let mut own = self.own.lock().expect("own");
            for k in keys {
                own.insert(k, value.clone());
            }
        }
    }

    async fn release_block(&self, network: &str, block: IpNet) {
        for key in etcd_block_keys(&self.cfg.prefix, network, block) {
            let Some(value) = self.own.lock().expect("own").remove(&key) else {
                continue;
            };
            let mut c = self.client.clone();
            self.requests.fetch_add(1, Ordering::Relaxed);
            // Delete only our own claim, never another node's.
            let txn = Txn::new()
                .when([Compare::value(key.clone(), CompareOp::Equal, value)])
                .and_then([TxnOp::delete(key, None)]);
            let _ = c.txn(txn).await;
        }
    }

    async fn sync_endpoints(&self, records: &[EndpointRecord]) {
        let p = &self.cfg.prefix;
        let me = &self.cfg.node_name;
        let want: BTreeMap<String, String> = records
            .iter()
            .map(|r| {
                (
                    etcd_endpoint_key(p, me, &r.network, &r.container_id, &r.ifname),
                    serde_json::to_string(r).expect("record serializes"),
                )
            })
            .collect();
        let mine = etcd_endpoints_prefix(p, me);
        // What we hold, and what etcd shows of ours: a previous run's keys
        // (on its lease, until it expires) go too when no longer wanted.
        let (gone, stale, unsent): (Vec<String>, Vec<String>, BTreeSet<String>) = {
            let own = self.own.lock().expect("own");
            let cache = self.cache.read().expect("cache");
            let held = own
                .keys()
                .chain(cache.keys().filter(|_| self.synced()))
                .filter(|k| k.starts_with(&mine) && !want.contains_key(*k));
            let gone: BTreeSet<String> = held.cloned().collect();
            let stale = want
                .iter()
                .filter(|(k, v)| own.get(*k) != Some(*v))
                .map(|(k, _)| k.clone())
                .collect();
            let unsent = self.unsent.lock().expect("unsent").clone();
            (gone.into_iter().collect(), stale, unsent)
        };
        for k in gone {
            self.own_delete(k).await;
        }
        for k in stale {
            self.own_put(k.clone(), want[&k].clone()).await;
        }
        // Writes that failed earlier (etcd away, no lease lost) and are
        // still wanted.
        for k in unsent {
            let v = self.own.lock().expect("own").get(&k).cloned();
            match v {
                Some(v) => self.own_put(k, v).await,
                None if k.starts_with(&mine) => self.own_delete(k).await,
                None => self.mark(k, false),
            }
        }
    }

    async fn put_network(&self, rec: &NetworkSpec) -> Result<(), String> {
        let key = etcd_network_key(&self.cfg.prefix, &rec.name);
        let mut c = self.client.clone();
        self.requests.fetch_add(1, Ordering::Relaxed);
        // A network is the cluster's, not this node's: no lease, so it
        // outlives its creator. Created only if the name is free, so two
        // hosts creating one name at once cannot both succeed.
        let txn = if rec.deleted() {
            // Only the record the deletion was decided on: not one that
            // someone created again meanwhile.
            let seen = self.cache.read().expect("cache").get(&key).cloned();
            let same = seen
                .as_deref()
                .and_then(|v| serde_json::from_str::<NetworkSpec>(v).ok())
                .is_some_and(|n| (n.id, n.created_at_ms) == (rec.id, rec.created_at_ms));
            let Some(seen) = seen.filter(|_| same) else {
                return Err(format!(
                    "network {} changed meanwhile; look again",
                    rec.name
                ));
            };
            Txn::new()
                .when([Compare::value(key.as_str(), CompareOp::Equal, seen)])
                .and_then([TxnOp::delete(key.as_str(), None)])
        } else {
            Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.as_str(),
                    serde_json::to_string(rec).expect("record serializes"),
                    None,
                )])
        };
        match c.txn(txn).await {
            Ok(r) if r.succeeded() => {
                let mut cache = self.cache.write().expect("cache");
                if rec.deleted() {
                    cache.remove(&key);
                } else {
                    cache.insert(key, serde_json::to_string(rec).expect("serializes"));
                }
                Ok(())
            }
            Ok(_) if rec.deleted() => Err(format!(
                "network {} changed meanwhile; look again",
                rec.name
            )),
            Ok(_) => Err(format!("network {} exists already", rec.name)),
            Err(e) => {
                failed_request();
                Err(format!("etcd: {e}"))
            }
        }
    }

    async fn sync_networks(&self, _known: &BTreeMap<String, NetworkSpec>, _now_ms: u64) {}

    async fn put_object(&self, rec: &ObjectRecord) -> Result<(), String> {
        // The cluster's, not this node's: no lease, so it outlives its
        // writer. etcd orders writes itself, so the last one stands and a
        // deletion needs no tombstone.
        self.put_objects(std::slice::from_ref(rec)).await
    }

    async fn put_objects(&self, recs: &[ObjectRecord]) -> Result<(), String> {
        for r in recs {
            object::check_put(r)?;
        }
        let keyed: Vec<(String, &ObjectRecord)> = recs
            .iter()
            .map(|r| (etcd_object_key(&self.cfg.prefix, &r.kind, &r.name), r))
            .collect();
        let ops: Vec<TxnOp> = keyed
            .iter()
            .map(|(k, r)| {
                if r.deleted() {
                    TxnOp::delete(k.as_str(), None)
                } else {
                    TxnOp::put(
                        k.as_str(),
                        serde_json::to_string(r).expect("record serializes"),
                        None,
                    )
                }
            })
            .collect();
        let mut c = self.client.clone();
        self.requests.fetch_add(1, Ordering::Relaxed);
        c.txn(Txn::new().and_then(ops)).await.map_err(|e| {
            failed_request();
            format!("etcd: {e}")
        })?;
        let mut cache = self.cache.write().expect("cache");
        for (k, r) in keyed {
            if r.deleted() {
                cache.remove(&k);
            } else {
                cache.insert(k, serde_json::to_string(r).expect("serializes"));
            }
        }
        Ok(())
    }

    async fn sync_objects(&self, _known: &BTreeMap<ObjectKey, ObjectRecord>, _now_ms: u64) {}

    async fn view(&self) -> ClusterView {
        // What we wrote ourselves counts even before etcd shows it back
        // (or while etcd is away): like gossip's own state.
        let mut cache = self.cache.read().expect("cache").clone();
        for (k, v) in self.own.lock().expect("own").iter() {
            cache.entry(k.clone()).or_insert_with(|| v.clone());
        }
        let p = &self.cfg.prefix;
        let mut view = ClusterView::default();
        for (k, v) in cache.iter() {
            match parse_etcd_key(p, k) {
                Some(EtcdKey::Node(name)) => {
                    if let Ok(r) = serde_json::from_str::<NodeRecord>(v) {
                        view.nodes.entry(name).or_default().record = Some(r.into());
                    }
                }
                Some(EtcdKey::Block { network, block }) => {
                    if let Ok(c) = serde_json::from_str::<Claim>(v) {
                        view.nodes.entry(c.node).or_default().add_claim(
                            &network,
                            block,
                            BlockClaim {
                                claimed_at_ms: c.claimed_at_ms,
                            },
                        );
                    }
                }
                Some(EtcdKey::Endpoint { node }) => {
                    if let Ok(mut e) = serde_json::from_str::<EndpointRecord>(v) {
                        // The key says whose it is: only that node writes there.
                        e.node = node.clone();
                        std::sync::Arc::make_mut(
                            &mut view.nodes.entry(node).or_default().endpoints,
                        )
                        .push(e);
                    }
                }
                Some(EtcdKey::Network(name)) => {
                    if let Ok(n) = serde_json::from_str::<NetworkSpec>(v) {
                        if n.name == name && !n.deleted() {
                            view.networks.insert(name, n);
                        }
                    }
                }
                Some(EtcdKey::Object { kind, name }) => {
                    if let Ok(o) = serde_json::from_str::<ObjectRecord>(v) {
                        // Only under its own key, as on gossip.
                        if o.kind == kind && o.name == name && !o.deleted() {
                            std::sync::Arc::make_mut(&mut view.objects).insert((kind, name), o);
                        }
                    }
                }
                Some(EtcdKey::Alive(_)) | None => {}
            }
        }
        for (name, pv) in view.nodes.iter_mut() {
            pv.alive = name == &self.cfg.node_name || cache.contains_key(&etcd_alive_key(p, name));
            std::sync::Arc::make_mut(&mut pv.endpoints).sort();
        }
        view
    }

    fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// A throwaway etcd on loopback, killed and removed on drop.
    struct Server {
        child: std::process::Child,
        dir: PathBuf,
        url: String,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// None when no `etcd` is on the PATH: the lab tests of the `muslin`
    /// crate cover etcd there.
    async fn etcd_server() -> Option<Server> {
        let (client, peer) = (free_port(), free_port());
        let dir = std::env::temp_dir().join(format!("muslin-etcd-{}-{client}", std::process::id()));
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = std::process::Command::new("etcd")
            .args(["--data-dir", &dir.display().to_string()])
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let Ok(child) = child else {
            eprintln!("skipped: no etcd on the PATH");
            return None;
        };
        let server = Server { child, dir, url };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = Client::connect([server.url.as_str()], None).await {
                if c.get("probe", None).await.is_ok() {
                    return Some(server);
                }
            }
            assert!(Instant::now() < deadline, "etcd did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn cfg(url: &str, node: &str) -> EtcdConfig {
        EtcdConfig {
            endpoints: vec![url.to_string()],
            prefix: "/muslin/".into(),
            node_name: node.into(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            ttl: Duration::from_secs(60),
            alive_ttl: Duration::from_secs(10),
        }
    }

    async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !f().await {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn objects_are_put_seen_by_every_node_and_deleted() {
        let Some(server) = etcd_server().await else {
            return;
        };
        let h1 = Etcd::start(cfg(&server.url, "h1")).await.unwrap();
        let h2 = Etcd::start(cfg(&server.url, "h2")).await.unwrap();
        let web = ObjectRecord {
            kind: "policy".into(),
            name: "shop:web".into(),
            body: serde_json::json!({"allow": ["app=db"]}),
            updated_at_ms: 1_000,
            updated_by: "h1".into(),
            deleted_at_ms: None,
        };
        let key = web.key();
        h1.put_object(&web).await.unwrap();
        assert_eq!(
            h1.view().await.objects.get(&key),
            Some(&web),
            "the writer sees it at once"
        );
        until("h2 sees h1's object", async || {
            h2.view().await.objects.get(&key) == Some(&web)
        })
        .await;
        // The cluster's, not h1's: on no lease.
        let mut c = h1.client.clone();
        let k = etcd_object_key("/muslin/", "policy", "shop:web");
        let got = c.get(k.as_str(), None).await.unwrap();
        assert_eq!(got.kvs()[0].lease(), 0);

        // A record under another object's key is nobody's; a later write
        // (h2's) stands.
        let forged = etcd_object_key("/muslin/", "policy", "shop:other");
        c.put(forged, serde_json::to_string(&web).unwrap(), None)
            .await
            .unwrap();
        let newer = ObjectRecord {
            body: serde_json::json!({"allow": []}),
            updated_at_ms: 2_000,
            updated_by: "h2".into(),
            ..web.clone()
        };
        h2.put_object(&newer).await.unwrap();
        until("h1 sees h2's write", async || {
            h1.view().await.objects.get(&key) == Some(&newer)
        })
        .await;
        assert_eq!(
            h1.view().await.objects.len(),
            1,
            "the forged record was taken"
        );
        let big = ObjectRecord {
            name: "big".into(),
            body: serde_json::json!("x".repeat(object::MAX_BODY_BYTES)),
            ..web.clone()
        };
        assert!(h1.put_object(&big).await.is_err());

        let gone = ObjectRecord {
            updated_at_ms: 3_000,
            deleted_at_ms: Some(3_000),
            ..newer.clone()
        };
        h2.put_object(&gone).await.unwrap();
        assert!(!h2.view().await.objects.contains_key(&key));
        until("h1 sees the deletion", async || {
            !h1.view().await.objects.contains_key(&key)
        })
        .await;
        assert!(c.get(k.as_str(), None).await.unwrap().kvs().is_empty());
        h1.shutdown().await;
        h2.shutdown().await;
    }
}
