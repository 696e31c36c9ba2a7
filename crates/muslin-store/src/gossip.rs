//! The embedded store: SWIM membership and failure detection (foca) with
//! changes spread as broadcasts and repaired by anti-entropy (`swim`),
//! over the sealed transport. Each node writes only its own keys (`node`,
//! claims, endpoints, and its copies of the cluster's networks and
//! objects; see `muslin_model::cluster` for the keys); a node not alive
//! for longer than the block TTL is forgotten, and with it its claims,
//! endpoints and routes.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use muslin_model::cluster::{
    gossip_block_keys, gossip_endpoint_key, gossip_network_key, gossip_object_key,
    parse_gossip_block_key, parse_gossip_object_key, BlockClaim, ClusterView, EndpointRecord,
    NodeRecord, PeerView, ENDPOINT_KEY_PREFIX, NETWORK_KEY_PREFIX, NODE_KEY, OBJECT_KEY_PREFIX,
};
use muslin_model::network::{merge, NetworkSpec, TOMBSTONE_MS};
use muslin_model::object::{self, ObjectKey, ObjectRecord};

use crate::sealed::{AuthState, Redirects, SealedUdp};
use crate::swim::{Engine, EngineConfig, Wire};
use crate::{ClusterStore, StoreError};

#[derive(Debug, Clone)]
pub struct GossipConfig {
    pub node_name: String,
    pub listen: SocketAddr,
    pub advertise: SocketAddr,
    pub seeds: Vec<SocketAddr>,
    pub interval: Duration,
    /// How long a silent node's state (and so its blocks) is kept.
    pub ttl: Duration,
    pub secret: Option<Vec<u8>>,
    /// This run's generation ([`next_generation`], which the agent keeps
    /// for its next run before it starts); `None`: the wall clock's
    /// milliseconds.
    pub generation: Option<u64>,
}

/// A run's generation: the wall clock's milliseconds, or one more than
/// the previous run's when the clock is behind it. Peers hold a node's
/// newest generation and refuse older ones for the TTL and more: a run
/// numbered below the last (an RTC set back at boot, NTP stepping the
/// clock) would be shut out of the cluster that long.
pub fn next_generation(now_ms: u64, previous: u64) -> u64 {
    now_ms.max(previous.saturating_add(1))
}

pub struct Gossip {
    pub(crate) engine: Engine,
    auth: Arc<AuthState>,
    redirects: Redirects,
    me: String,
    generation: u64,
    alone: bool,
    /// Each node's state as last decoded, by the version of its state: a
    /// round decodes only the nodes whose state changed since, not every
    /// record of every node every few hundred milliseconds.
    decoded: std::sync::Mutex<HashMap<String, Decoded>>,
    /// Keys [`Decoded::record_hash`], so no peer can aim for a collision.
    record_hasher: std::hash::RandomState,
    /// The objects merged from `decoded`, while no node's state changed.
    objects: std::sync::Mutex<Option<Arc<BTreeMap<ObjectKey, ObjectRecord>>>>,
}

struct Decoded {
    generation: u64,
    /// The state's revision when decoded.
    revision: u64,
    view: PeerView,
    /// The network records the node republishes.
    networks: Vec<NetworkSpec>,
    /// The object records the node republishes.
    objects: Vec<ObjectRecord>,
    /// Hash of the record's JSON: a state decoded again for a new endpoint
    /// or claim keeps the record it had (one allocation fewer, and the
    /// same `Arc`, which the agent's caches key on).
    record_hash: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct GossipStats {
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Gossip {
    pub async fn start(
        cfg: GossipConfig,
        initial: Vec<(String, String)>,
    ) -> Result<Gossip, StoreError> {
        let auth = Arc::new(AuthState::default());
        let redirects = Redirects::default();
        let transport = SealedUdp {
            secret: cfg.secret.clone(),
            auth: auth.clone(),
            seeds: cfg.seeds.clone(),
            probes: Arc::new(crate::probe_wire::ProbeWire::new(
                cfg.secret.as_deref(),
                &cfg.node_name,
            )),
            redirects: redirects.clone(),
        };
        let sock = transport
            .bind(cfg.listen)
            .await
            .map_err(|e| StoreError::Gossip(format!("{e:#}")))?;
        Ok(Gossip::start_on(
            cfg,
            initial,
            Box::new(sock),
            auth,
            redirects,
        ))
    }

    /// Starts on any datagram socket: the agent's sealed UDP, or the
    /// simulation's in-memory network (`crate::sim`).
    pub(crate) fn start_on(
        cfg: GossipConfig,
        initial: Vec<(String, String)>,
        wire: Box<dyn Wire>,
        auth: Arc<AuthState>,
        redirects: Redirects,
    ) -> Gossip {
        // A restarted agent is a new generation: its state starts empty
        // and replaces the previous one's once its record is out.
        let generation = cfg.generation.unwrap_or_else(now_ms);
        let seed = cfg
            .node_name
            .bytes()
            .fold(generation, |h, b| h.rotate_left(5) ^ u64::from(b));
        let engine = Engine::start(
            EngineConfig {
                name: cfg.node_name.clone(),
                generation,
                advertise: cfg.advertise,
                seeds: cfg.seeds.clone(),
                interval: cfg.interval,
                ttl: cfg.ttl,
                rng_seed: seed,
            },
            wire,
        );
        engine.write(initial.into_iter().map(|(k, v)| (k, Some(v))));
        Gossip {
            engine,
            auth,
            redirects,
            me: cfg.node_name,
            generation,
            alone: cfg.seeds.is_empty(),
            decoded: Default::default(),
            record_hasher: Default::default(),
            objects: Default::default(),
        }
    }

    /// This run's generation, for the next run to go beyond.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Why peers refuse us, if they do (no or wrong cluster secret).
    pub fn auth_problem(&self) -> Option<String> {
        self.auth.problem()
    }

    /// Datagrams the transport refused.
    pub fn dropped(&self) -> u64 {
        self.auth.dropped.load(Ordering::Relaxed)
    }

    /// Replaces where gossip to unanswering advertised addresses goes.
    pub fn redirect(&self, map: std::collections::HashMap<SocketAddr, SocketAddr>) {
        let mut r = self.redirects.write().expect("redirects lock");
        if *r != map {
            *r = map;
        }
    }

    pub fn stats(&self) -> GossipStats {
        GossipStats {
            bytes_sent: self.auth.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.auth.bytes_received.load(Ordering::Relaxed),
        }
    }

    async fn set(&self, key: String, value: String) {
        self.engine.write([(key, Some(value))]);
    }

    /// Makes this node's keys under `prefix` exactly `want`: the others
    /// deleted, the wanted set (an unchanged value costs nothing).
    async fn sync_prefix(&self, prefix: &str, want: BTreeMap<String, String>) {
        let gone: Vec<String> = self.engine.with(|s| {
            s.cluster
                .own()
                .key_values()
                .filter(|(k, _)| k.starts_with(prefix) && !want.contains_key(*k))
                .map(|(k, _)| k.to_string())
                .collect()
        });
        self.engine.write(
            gone.into_iter()
                .map(|k| (k, None))
                .chain(want.into_iter().map(|(k, v)| (k, Some(v)))),
        );
    }

    pub async fn shutdown(self) {
        self.engine.shutdown().await;
    }
}

impl ClusterStore for Gossip {
    async fn publish_record(&self, rec: &NodeRecord) {
        self.set(
            NODE_KEY.into(),
            serde_json::to_string(rec).expect("record serializes"),
        )
        .await;
    }

    async fn claim_block(&self, network: &str, block: IpNet, claim: BlockClaim) {
        let value = serde_json::to_string(&claim).expect("claim serializes");
        for key in gossip_block_keys(network, block) {
            self.set(key, value.clone()).await;
        }
    }

    async fn release_block(&self, network: &str, block: IpNet) {
        self.engine.write(
            gossip_block_keys(network, block)
                .into_iter()
                .map(|k| (k, None)),
        );
    }

    async fn sync_endpoints(&self, records: &[EndpointRecord]) {
        let want: BTreeMap<String, String> = records
            .iter()
            .map(|r| {
                (
                    gossip_endpoint_key(&r.network, &r.container_id, &r.ifname),
                    serde_json::to_string(r).expect("record serializes"),
                )
            })
            .collect();
        self.sync_prefix(ENDPOINT_KEY_PREFIX, want).await;
    }

    async fn put_network(&self, rec: &NetworkSpec) -> Result<(), String> {
        self.set(
            gossip_network_key(&rec.name),
            serde_json::to_string(rec).expect("record serializes"),
        )
        .await;
        Ok(())
    }

    async fn sync_networks(&self, known: &BTreeMap<String, NetworkSpec>, now_ms: u64) {
        let want: BTreeMap<String, String> = known
            .values()
            .filter(|n| {
                n.deleted_at_ms
                    .is_none_or(|t| now_ms.saturating_sub(t) < TOMBSTONE_MS)
            })
            .map(|n| {
                (
                    gossip_network_key(&n.name),
                    serde_json::to_string(n).expect("record serializes"),
                )
            })
            .collect();
        self.sync_prefix(NETWORK_KEY_PREFIX, want).await;
    }

    async fn put_objects(&self, recs: &[ObjectRecord]) -> Result<(), String> {
        for r in recs {
            object::check_put(r)?;
        }
        self.engine.write(recs.iter().map(|r| {
            (
                gossip_object_key(&r.kind, &r.name),
                Some(serde_json::to_string(r).expect("record serializes")),
            )
        }));
        Ok(())
    }

    async fn put_object(&self, rec: &ObjectRecord) -> Result<(), String> {
        self.put_objects(std::slice::from_ref(rec)).await
    }

    async fn sync_objects(&self, known: &BTreeMap<ObjectKey, ObjectRecord>, now_ms: u64) {
        let want: BTreeMap<String, String> = known
            .values()
            .filter(|r| object::remembered(r, now_ms))
            // Nothing put_object would refuse: a key with a `/` in its name
            // would not parse back, and an oversized value would stall this
            // node's gossip behind it (see `object::MAX_BODY_BYTES`).
            .filter(|r| object::valid_kind(&r.kind) && object::valid_name(&r.name))
            .filter(|r| object::check_size(r).is_ok())
            .map(|r| {
                (
                    gossip_object_key(&r.kind, &r.name),
                    serde_json::to_string(r).expect("record serializes"),
                )
            })
            .collect();
        self.sync_prefix(OBJECT_KEY_PREFIX, want).await;
    }

    async fn view(&self) -> ClusterView {
        let mut view = ClusterView::default();
        let mut decoded = self.decoded.lock().expect("decoded");
        let mut changed = false;
        self.engine.with(|s| {
            // Of each node name, the newest generation that is ready (its
            // record and every claim before it held) stands for the node,
            // else the newest with a record: a restarted agent's fresh
            // generation must not hide the previous one's claims (and so
            // drop routes to it) before its own state has spread.
            let mut best: BTreeMap<&str, (bool, u64)> = BTreeMap::new();
            for ((name, generation), kv) in s.cluster.nodes() {
                if kv.get(NODE_KEY).is_none() && *name != self.me {
                    continue;
                }
                let rank = (*name == self.me || kv.ready(), *generation);
                let e = best.entry(name.as_str()).or_insert(rank);
                *e = (*e).max(rank);
            }
            let newest: BTreeMap<&str, u64> = best.into_iter().map(|(n, (_, g))| (n, g)).collect();
            let before = decoded.len();
            decoded.retain(|n, _| newest.contains_key(n.as_str()));
            // Whether some node's state was decoded again (or left): only
            // then are the objects merged again.
            changed = decoded.len() != before;
            for (name, generation) in newest {
                let Some(state) = s.cluster.node(name, generation) else {
                    continue;
                };
                let alive = name == self.me || s.alive(name);
                let revision = state.revision();
                if let Some(d) = decoded
                    .get(name)
                    .filter(|d| d.generation == generation && d.revision == revision)
                {
                    let mut pv = d.view.clone();
                    pv.alive = alive;
                    view.nodes.insert(name.to_string(), pv);
                    for n in &d.networks {
                        merge(&mut view.networks, n.clone());
                    }
                    continue;
                }
                changed = true;
                let known = decoded
                    .get(name)
                    .and_then(|d| Some((d.record_hash?, d.view.record.clone()?)));
                let record = |json: &str| {
                    let h = std::hash::BuildHasher::hash_one(&self.record_hasher, json);
                    match &known {
                        Some((k, r)) if *k == h => (Some(r.clone()), h),
                        _ => (serde_json::from_str(json).ok(), h),
                    }
                };
                let (pv, networks, objects, record_hash) = decode(name, state.key_values(), record);
                for n in &networks {
                    merge(&mut view.networks, n.clone());
                }
                decoded.insert(
                    name.to_string(),
                    Decoded {
                        generation,
                        revision,
                        view: pv.clone(),
                        networks,
                        objects,
                        record_hash,
                    },
                );
                view.nodes
                    .insert(name.to_string(), PeerView { alive, ..pv });
            }
        });
        let mut cached = self.objects.lock().expect("objects");
        if changed || cached.is_none() {
            // Every node republishes every object, so the same records
            // come from each: the winners are chosen by reference and
            // cloned once.
            let mut winners: BTreeMap<ObjectKey, &ObjectRecord> = BTreeMap::new();
            for o in decoded.values().flat_map(|d| &d.objects) {
                if !object::valid_kind(&o.kind) || !object::valid_name(&o.name) {
                    continue;
                }
                match winners.get(&o.key()) {
                    Some(have) if !object::newer(o, have) => {}
                    _ => {
                        winners.insert(o.key(), o);
                    }
                }
            }
            let merged: BTreeMap<ObjectKey, ObjectRecord> =
                winners.into_iter().map(|(k, o)| (k, o.clone())).collect();
            if cached.as_deref() != Some(&merged) {
                *cached = Some(Arc::new(merged));
            }
        }
        view.objects = cached.clone().expect("just set");
        view
    }

    fn synced(&self) -> bool {
        self.alone || self.auth.heard.load(Ordering::Relaxed)
    }
}

/// A node's state as the view holds it: its record (parsed by `record`,
/// with the hash it keeps), claims and endpoints, and the network and
/// object records it republishes.
fn decode<'a>(
    name: &str,
    key_values: impl Iterator<Item = (&'a str, &'a str)>,
    mut record: impl FnMut(&str) -> (Option<Arc<NodeRecord>>, u64),
) -> (PeerView, Vec<NetworkSpec>, Vec<ObjectRecord>, Option<u64>) {
    let mut record_hash = None;
    let mut pv = PeerView::default();
    let mut endpoints = Vec::new();
    let mut networks = Vec::new();
    let mut objects = Vec::new();
    for (k, v) in key_values {
        if k == NODE_KEY {
            let (r, h) = record(v);
            (pv.record, record_hash) = (r, Some(h));
        } else if k.starts_with(ENDPOINT_KEY_PREFIX) {
            if let Ok(mut e) = serde_json::from_str::<EndpointRecord>(v) {
                // A node writes only its own state: that is who holds it.
                e.node = name.to_string();
                endpoints.push(e);
            }
        } else if k.starts_with(NETWORK_KEY_PREFIX) {
            if let Ok(n) = serde_json::from_str::<NetworkSpec>(v) {
                if gossip_network_key(&n.name) == k {
                    networks.push(n);
                }
            }
        } else if let Some(key) = parse_gossip_object_key(k) {
            if let Ok(o) = serde_json::from_str::<ObjectRecord>(v) {
                // Only under its own key: a node cannot slip a record of
                // one object in under another's key.
                if o.key() == key {
                    objects.push(o);
                }
            }
        } else if let Some((network, b)) = parse_gossip_block_key(k) {
            if let Ok(claim) = serde_json::from_str::<BlockClaim>(v) {
                pv.add_claim(&network, b, claim);
            }
        }
    }
    endpoints.sort();
    pv.endpoints = Arc::new(endpoints);
    (pv, networks, objects, record_hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn a_run_numbers_itself_after_the_previous_one_whatever_the_clock() {
        assert_eq!(next_generation(5_000, 0), 5_000, "first start: the clock");
        assert_eq!(next_generation(5_000, 4_000), 5_000);
        assert_eq!(next_generation(5_000, 9_000), 9_001, "clock set back");
    }

    fn cfg(name: &str, port: u16, seeds: &[u16], secret: Option<&str>) -> GossipConfig {
        let a = SocketAddr::from(([127, 0, 0, 1], port));
        GossipConfig {
            node_name: name.into(),
            listen: a,
            advertise: a,
            seeds: seeds
                .iter()
                .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
                .collect(),
            interval: Duration::from_millis(50),
            ttl: Duration::from_secs(60),
            secret: secret.map(|s| s.as_bytes().to_vec()),
            generation: None,
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
    async fn sealed_gossip_spreads_claims_and_keeps_strangers_out() {
        const SECRET: &str = "0123456789abcdef-cluster";
        let (pa, pb, pc, pd) = (free_port(), free_port(), free_port(), free_port());
        let a = Gossip::start(cfg("a", pa, &[], Some(SECRET)), vec![])
            .await
            .unwrap();
        let b = Gossip::start(cfg("b", pb, &[pa], Some(SECRET)), vec![])
            .await
            .unwrap();
        let block: IpNet = "10.244.7.0/24".parse().unwrap();
        // Peers count a node once its record is out.
        let record = |name: &str| {
            NodeRecord::new(
                name,
                "127.0.0.1".parse().unwrap(),
                "127.0.0.0/8".parse().unwrap(),
                1500,
            )
        };
        a.publish_record(&record("a")).await;
        a.claim_block("default", block, BlockClaim { claimed_at_ms: 42 })
            .await;
        until("b sees a's claim", async || {
            b.view().await.blocks_of("a") == vec![block]
        })
        .await;
        assert!(b.synced());
        // Endpoints spread, and leave when no longer published.
        let ep = |c: &str| EndpointRecord {
            network: "default".into(),
            addresses: vec!["10.244.7.1/32".parse().unwrap()],
            container_id: c.into(),
            ifname: "eth0".into(),
            node: "a".into(),
            pod_namespace: None,
            pod_name: None,
            labels: [("app".to_string(), "web".to_string())].into(),
            ports: Default::default(),
            aliases: Vec::new(),
            name: None,
        };
        a.sync_endpoints(&[ep("c1"), ep("c2")]).await;
        until("b sees a's endpoints", async || {
            b.view().await.endpoints().len() == 2
        })
        .await;
        let record_seen = b.view().await.nodes["a"].record.clone().unwrap();
        a.sync_endpoints(&[ep("c2")]).await;
        until("b sees c1 gone", async || {
            b.view().await.endpoints() == vec![&ep("c2")]
        })
        .await;
        // a's state was decoded again, its unchanged record was not.
        let again = b.view().await.nodes["a"].record.clone().unwrap();
        assert!(Arc::ptr_eq(&record_seen, &again));
        let mut moved = record("a");
        moved.mtu = 1400;
        a.publish_record(&moved).await;
        until("b sees a's new record", async || {
            b.view().await.nodes["a"].record.as_ref().unwrap().mtu == 1400
        })
        .await;
        // The previous version's claim key still counts, for the default network.
        a.release_block("default", block).await;
        until("b sees the claim released", async || {
            b.view().await.blocks_of("a").is_empty()
        })
        .await;
        a.set(
            format!("block/{block}"),
            r#"{"claimed_at_ms":42}"#.to_string(),
        )
        .await;
        until("b reads a v1 claim", async || {
            b.view().await.blocks_of("a") == vec![block]
        })
        .await;

        // No secret: refused, and told why.
        let c = Gossip::start(cfg("c", pc, &[pa], None), vec![])
            .await
            .unwrap();
        until("c learns it needs the secret", async || {
            c.auth_problem().is_some()
        })
        .await;
        assert!(c.auth_problem().unwrap().contains("cluster secret"));
        assert!(!c.view().await.nodes.contains_key("a"), "c reads nothing");
        // A wrong secret: likewise, and nothing it says reaches the cluster.
        let d = Gossip::start(cfg("d", pd, &[pa], Some("another-secret-of-16+")), vec![])
            .await
            .unwrap();
        d.publish_record(&record("d")).await;
        d.claim_block("default", block, BlockClaim { claimed_at_ms: 1 })
            .await;
        until("d is told its secret is wrong", async || {
            d.auth_problem().is_some()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let v = a.view().await;
        assert!(
            !v.nodes.contains_key("c") && !v.nodes.contains_key("d"),
            "strangers joined: {:?}",
            v.nodes.keys()
        );
        assert_eq!(
            v.blocks_of("a"),
            vec![block],
            "d's earlier claim was not injected"
        );
    }

    /// Whether `by`'s copy of `node`'s state holds `key`.
    async fn holds(by: &Gossip, node: &str, key: &str) -> bool {
        by.engine.with(|s| {
            s.cluster
                .nodes()
                .any(|((n, _), kv)| n == node && kv.get(key).is_some())
        })
    }

    #[tokio::test]
    async fn objects_spread_outlive_their_writer_and_tombstones_hide_them() {
        let (pa, pb) = (free_port(), free_port());
        let a = Gossip::start(cfg("a", pa, &[], None), vec![])
            .await
            .unwrap();
        let b = Gossip::start(cfg("b", pb, &[pa], None), vec![])
            .await
            .unwrap();
        for (g, name) in [(&a, "a"), (&b, "b")] {
            g.publish_record(&NodeRecord::new(
                name,
                "127.0.0.1".parse().unwrap(),
                "127.0.0.0/8".parse().unwrap(),
                1500,
            ))
            .await;
        }
        let web = ObjectRecord {
            kind: "policy".into(),
            name: "shop:web".into(),
            body: serde_json::json!({"allow": ["app=db"]}),
            updated_at_ms: 1_000,
            updated_by: "a".into(),
            deleted_at_ms: None,
        };
        let key = web.key();
        a.put_object(&web).await.unwrap();
        until("b sees a's object", async || {
            b.view().await.objects.get(&key) == Some(&web)
        })
        .await;

        // b republishes what it knows; a stops publishing: it stays.
        let mut known = BTreeMap::new();
        for r in b.view().await.objects.values().cloned() {
            object::merge(&mut known, r);
        }
        b.sync_objects(&known, 2_000).await;
        a.sync_objects(&BTreeMap::new(), 2_000).await;
        let a_key = gossip_object_key("policy", "shop:web");
        until("b learns a dropped its copy", async || {
            !holds(&b, "a", &a_key).await
        })
        .await;
        until("a hears b's copy", async || holds(&a, "b", &a_key).await).await;
        for g in [&a, &b] {
            assert_eq!(g.view().await.objects.get(&key), Some(&web));
        }

        // A record under another object's key is nobody's.
        let mut forged = web.clone();
        forged.updated_at_ms = 1_500;
        a.set(
            gossip_object_key("policy", "shop:other"),
            serde_json::to_string(&forged).unwrap(),
        )
        .await;
        // An oversized record is refused before it could stall gossip.
        let big = ObjectRecord {
            name: "big".into(),
            body: serde_json::json!("x".repeat(object::MAX_BODY_BYTES)),
            ..web.clone()
        };
        let e = a.put_object(&big).await.unwrap_err();
        assert!(e.contains(&object::MAX_BODY_BYTES.to_string()), "{e}");

        // A deletion by a: it wins over b's older copy, everywhere.
        let gone = ObjectRecord {
            updated_at_ms: 3_000,
            deleted_at_ms: Some(3_000),
            ..web.clone()
        };
        a.put_object(&gone).await.unwrap();
        until("b sees the deletion", async || {
            b.view().await.objects.get(&key) == Some(&gone)
        })
        .await;
        let v = b.view().await;
        assert!(v.objects.values().all(|r| r.deleted()), "{:?}", v.objects);
        assert_eq!(v.objects.len(), 1, "the forged record was taken");
        // b republishes the tombstone, then forgets it once it expires.
        object::merge(&mut known, gone.clone());
        b.sync_objects(&known, 4_000).await;
        assert!(b.view().await.objects[&key].deleted());
        b.sync_objects(&known, 3_000 + object::TOMBSTONE_MS).await;
        assert!(!holds(&b, "b", &a_key).await);
        a.shutdown().await;
        b.shutdown().await;
    }
}
