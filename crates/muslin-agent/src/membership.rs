//! The node in its cluster: underlay choice, gossip, leases and the data
//! plane loop. Level-triggered: every round recomputes the desired data
//! plane from the whole view and converges the kernel to it.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use muslin_kernel::{Executor, Lane, OnFailure};
use muslin_model::agent_config::{AgentConfig, ConfigError, Datastore};
use muslin_model::api::{ClusterStatus, PeerStatus};
use muslin_model::cluster::{
    gossip_block_keys, reserved_in, vtep_mac, BlockClaim, ClusterView, EndpointRecord, NodeRecord,
};
use muslin_model::dataplane::{desired, Backend, Desired, Params, Path, Underlay, VxlanSettings};
use muslin_model::encryption::Encryption;
use muslin_model::health::{probe_budget, PeerPlan, Tracker};
use muslin_model::record_news::{self, News};
use muslin_model::underlay::{
    move_wait, range_conflict, reconsider, usable_addresses, Candidate, Choice, Method,
};
use muslin_model::DEFAULT_NETWORK;
use muslin_plan::data_plane;
use muslin_plan::nft::{Masquerade, NftFamily, NftNetwork};
use muslin_plan::{Change, Step};
use muslin_store::{AnyStore, ClusterStore, Etcd, EtcdConfig, Gossip, GossipConfig};
use tokio::sync::{watch, RwLock};

mod nets;
pub mod policies;

use crate::blocks::BlockSource;
use crate::leases::Leases;
use crate::networks::{Ask, Networks};
use crate::prober::{addresses_of, Plan};
use crate::AgentError;

/// How often the host's interfaces and routes are read again.
const HOST_REFRESH: Duration = Duration::from_secs(10);

/// Refuses ranges that would hand pods the host's own neighbours'
/// addresses (pitfall 12): the pod network when this node uses it, and
/// fixed blocks always, against every address and connected subnet, and
/// fixed blocks against the host's other routes too.
fn refuse_conflicts(config: &AgentConfig, etcd: bool, facts: &HostFacts) -> Result<(), AgentError> {
    let conflict = |field: &str, msg: String| {
        AgentError::Config(ConfigError {
            field: field.into(),
            msg,
        })
    };
    let uses_pod_cidr = config.blocks.is_empty() || !config.join.is_empty() || etcd;
    if uses_pod_cidr {
        if let Some(m) = range_conflict("pod-cidr", config.pod_cidr(), &facts.cands) {
            return Err(conflict("pod-cidr", m));
        }
    }
    for b in &config.blocks {
        if let Some(m) = range_conflict("block", *b, &facts.cands) {
            return Err(conflict("blocks", m));
        }
        if let Some(r) = facts
            .reserved
            .iter()
            .find(|r| r.contains(b) || b.contains(*r))
        {
            return Err(conflict(
                "blocks",
                format!("block {b} overlaps the host's route to {r}: pods would hijack that route's addresses"),
            ));
        }
    }
    Ok(())
}

/// Everything the loop needs, decided at start.
pub struct Cluster {
    pub me: String,
    pub store: AnyStore,
    pub underlay: Underlay,
    pub reason: String,
    pub backend: Backend,
    pub vx: VxlanSettings,
    pub status: Arc<RwLock<ClusterStatus>>,
    leases: Option<Leases>,
    interval: Duration,
    pod_cidr: ipnet::IpNet,
    masquerade: bool,
    /// What we know of ourselves and our peers now: our own decisions
    /// follow it.
    record: NodeRecord,
    /// The record peers have, and when it went out: news that may wait
    /// (see `record_news`) waits against it.
    published: (NodeRecord, Instant),
    /// Only an address chosen by reachability moves when peers cannot
    /// reach it; one the operator pinned stays, with a warning.
    movable: bool,
    host: HostFacts,
    gossip_port: u16,
    tracker: Arc<Mutex<Tracker>>,
    plan: watch::Sender<Arc<Plan>>,
    _prober: Option<tokio::task::JoinHandle<()>>,
    _responder: Option<tokio::task::JoinHandle<()>>,
    /// Why the address would move if the operator had not pinned it.
    pinned_hint: Option<String>,
    /// The address peers' reports would move us to, and since when.
    moving: Option<(IpAddr, Instant)>,
    state_dir: std::path::PathBuf,
    kept_basis: crate::underlay_state::Kept,
    /// Peers seen, kept until their TTL passes since last seen.
    memory: crate::remembered_state::Memory,
    /// Blocks held from the previous run.
    held: Vec<ipnet::IpNet>,
    /// The relay each relayed peer goes through, kept across restarts.
    relays: std::collections::BTreeMap<String, String>,
    ttl: Duration,
    /// How long a new claim waits before IPAM uses it.
    settle: Duration,
    /// Leases of the networks besides the default one.
    nets: std::collections::BTreeMap<String, nets::NetState>,
    /// Every network record this node knows, kept across restarts.
    known_networks: std::collections::BTreeMap<String, muslin_model::network::NetworkSpec>,
    /// When this node first saw each network record (name, creation).
    first_seen: std::collections::BTreeMap<(String, u64), Instant>,
    /// Networks known but not yet settled here.
    settling: std::collections::BTreeMap<String, muslin_model::network::NetworkSpec>,
    /// Every cluster object (policies, namespace labels) this node knows,
    /// kept across restarts.
    known_objects: std::collections::BTreeMap<
        muslin_model::object::ObjectKey,
        muslin_model::object::ObjectRecord,
    >,
    /// Bumped whenever `known_objects` changes.
    objects_version: u64,
    /// The store's object map last merged (gossip hands out the same map
    /// while nothing changed).
    objects_seen: Option<
        std::sync::Arc<
            std::collections::BTreeMap<
                muslin_model::object::ObjectKey,
                muslin_model::object::ObjectRecord,
            >,
        >,
    >,
    /// The version last published to the store, and when.
    objects_synced: Option<(u64, Instant)>,
    /// The policy table: what it was brought to, and its counters.
    policy: policies::PolicyState,
    /// The name service, when the agent serves DNS.
    dns: Option<crate::dns::NameService>,
    /// Pod traffic to peers goes through WireGuard.
    pub encrypt: bool,
    /// The kind of its device (`tun` in userspace, `wireguard`).
    wg_kind: &'static str,
    wireguard: Option<crate::wireguard::Wireguard>,
}

/// How often the objects are published again though unchanged.
const OBJECTS_RESYNC: Duration = Duration::from_secs(10);

/// What the host looks like, refreshed now and then (addresses come and go).
struct HostFacts {
    cands: Vec<Candidate>,
    /// Every address of every interface: a peer advertising one of them
    /// would be a route to ourselves.
    addresses: Vec<IpAddr>,
    reserved: Vec<ipnet::IpNet>,
    /// Routes that are not Muslin's: a new network must not cover them.
    foreign: Vec<ipnet::IpNet>,
    at: Instant,
}

impl HostFacts {
    /// `ranges`: the pod network and every network's subnets, inside
    /// which this host's own routes are reported as reserved.
    async fn read(
        host: &Executor,
        ranges: &[ipnet::IpNet],
    ) -> Result<HostFacts, muslin_kernel::KernelError> {
        let state = host.host().await?;
        let cands = muslin_plan::facts::candidates(&state);
        let addresses = cands
            .iter()
            .flat_map(|c| c.addresses.iter().map(|a| a.addr()))
            .collect();
        let foreign = muslin_plan::facts::foreign_routes(&state);
        let mut reserved: Vec<ipnet::IpNet> = ranges
            .iter()
            .flat_map(|r| reserved_in(*r, &foreign))
            .collect();
        reserved.sort();
        reserved.dedup();
        Ok(HostFacts {
            cands,
            addresses,
            reserved,
            foreign,
            at: Instant::now(),
        })
    }

    fn usable(&self, first: IpAddr) -> Vec<IpAddr> {
        let mut v = vec![first];
        v.extend(
            usable_addresses(&self.cands)
                .into_iter()
                .map(|(_, a, _)| a.addr())
                .filter(|a| *a != first),
        );
        v
    }
}

/// Chooses the underlay, joins the cluster and publishes this node.
/// `Ok(None)`: no usable underlay and no peers, so the node runs alone.
/// The least time a claimed block waits on gossip before it serves.
const GOSSIP_SETTLE: Duration = Duration::from_secs(3);

pub async fn join(
    config: &AgentConfig,
    me: &str,
    host: &Executor,
    endpoints: &[EndpointRecord],
) -> Result<Option<Cluster>, AgentError> {
    let datastore = config.datastore();
    let etcd = matches!(datastore, Datastore::Etcd(_));
    let facts = HostFacts::read(host, &[config.pod_cidr()]).await?;
    refuse_conflicts(config, etcd, &facts)?;
    // Our own address in the join list (one list for every host) is
    // simply not a peer.
    let peers: Vec<SocketAddr> = config
        .join
        .iter()
        .filter_map(|j| config.join_addr(j).ok())
        .filter(|a| !facts.addresses.contains(&a.ip()))
        .collect();
    // On etcd the nodes need not know each other: the underlay must reach
    // etcd, so its members are what reachability verifies.
    let reach: Vec<SocketAddr> = match &datastore {
        Datastore::Etcd(e) if peers.is_empty() => e.socket_addrs(),
        _ => peers.clone(),
    };
    let method = &config.underlay;
    let movable = matches!(method, Method::Reachability);
    // A restart keeps what the last run chose (peers' probes keep it true)
    // rather than wait for join peers that may be unreachable right now.
    let basis = crate::underlay_state::Kept {
        node: me.to_string(),
        method: method.to_string(),
        join: config.join.clone(),
        choice: Choice {
            ifname: String::new(),
            address: ipnet::IpNet::default(),
            mtu: 0,
            reason: String::new(),
        },
    };
    let kept = if matches!(method, Method::Reachability | Method::CanReach(_)) {
        crate::underlay_state::load(&config.state_dir, &basis, &facts.cands)
    } else {
        None
    };
    let restart = kept.is_some();
    let choice = match kept {
        Some(c) => c,
        None => {
            let Some(c) = crate::underlay_select::choose(&facts.cands, method, &reach)
                .await
                .map_err(AgentError::Underlay)?
            else {
                tracing::warn!(
                    "no usable underlay interface and no join peers: running as a single node"
                );
                return Ok(None);
            };
            crate::underlay_state::save(&config.state_dir, &basis, &c);
            c
        }
    };
    let Choice {
        ifname,
        address,
        mtu,
        reason,
    } = choice;
    tracing::info!(address = %address.addr(), interface = %ifname, mtu, %reason, "chose the underlay address");
    let backend = config.backend;
    let secret = match &config.cluster_secret_file {
        Some(p) => Some(muslin_store::load_secret(p).map_err(|e| AgentError::Join(e.to_string()))?),
        None => None,
    };
    if secret.is_none() && !etcd {
        tracing::warn!("no cluster secret: gossip is neither authenticated nor encrypted (set cluster-secret-file)");
    }
    let interval = Duration::from_millis(config.gossip_interval_ms);
    let ttl = Duration::from_secs(config.block_ttl);
    let underlay = Underlay {
        ifname,
        address: address.addr(),
        prefix: address.trunc(),
        mtu,
    };
    let probes = || muslin_store::probe_wire::ProbeWire::new(secret.as_deref(), me);
    let gcfg = GossipConfig {
        node_name: me.to_string(),
        listen: SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), config.gossip_port),
        advertise: SocketAddr::new(underlay.address, config.gossip_port),
        seeds: peers.clone(),
        interval,
        ttl,
        secret: secret.clone(),
        generation: None,
    };
    // Settling waits until a competing claim made at the same moment has
    // reached us, before we hand out addresses: a few rounds on etcd; on
    // gossip also the broadcasts' spread and a few anti-entropy rounds
    // (once a second, four times while the state changes), which a
    // cluster starting all at once needs (22 lab hosts started together
    // allocated from one block with 550 ms).
    let settle = match etcd {
        true => (interval * 5).max(Duration::from_millis(500)),
        false => (interval * 5).max(GOSSIP_SETTLE),
    };
    let leases = if config.blocks.is_empty() {
        Some(
            Leases::load(
                &config.state_dir,
                me,
                config.pod_cidr(),
                config.block_size,
                settle,
                ttl,
            )
            .map_err(AgentError::Join)?,
        )
    } else {
        None
    };
    let known = nets::load_known(&config.state_dir);
    let known_objects = policies::load_objects(&config.state_dir);
    let encrypt = config.encryption == Encryption::Wireguard;
    let wireguard = match encrypt {
        true => Some(
            crate::wireguard::Wireguard::start(
                &config.state_dir,
                config.wireguard_port,
                underlay.mtu - muslin_model::encryption::overhead(underlay.address),
                &config.wireguard_uapi,
                config.wireguard_implementation,
            )
            .await?,
        ),
        false => None,
    };
    if encrypt {
        // The networks' VXLAN arrives from the device marked (see
        // `encryption::WG_MARK`): strict rp_filter must look its source up
        // with the mark, in the WireGuard table.
        host.apply(
            Lane::Host,
            vec![Step::host(Change::Sysctl {
                key: format!(
                    "net/ipv4/conf/{}/src_valid_mark",
                    muslin_model::encryption::WG_DEV
                ),
                value: "1".into(),
            })],
            OnFailure::Stop,
        )
        .await
        .into_result()?;
    }
    let mut record = NodeRecord {
        address_reason: reason.clone(),
        addresses: facts.usable(underlay.address),
        reserved: facts.reserved.clone(),
        gossip_port: config.gossip_port,
        started_ms: crate::leases::now_ms(),
        wireguard: wireguard.as_ref().map(crate::wireguard::Wireguard::end),
        ..NodeRecord::new(me, underlay.address, underlay.prefix, underlay.mtu)
    };
    if encrypt {
        record
            .capabilities
            .push(muslin_model::encryption::CAPABILITY.into());
    }
    if !facts.reserved.is_empty() {
        tracing::info!(ranges = ?facts.reserved, "routes of this host lie inside the pod network: no node will lease blocks overlapping them");
    }
    // Every claim is written before the record: peers take this
    // generation for the node only once they hold its record and all
    // written before it, so they never see it without its blocks. Static
    // blocks always win: claimed at the beginning of time.
    let claim = |network: &str, b: &ipnet::IpNet, at: u64| {
        let value = serde_json::to_string(&BlockClaim { claimed_at_ms: at }).expect("serializes");
        gossip_block_keys(network, *b)
            .into_iter()
            .map(move |k| (k, value.clone()))
    };
    let mut initial: Vec<(String, String)> = Vec::new();
    initial.extend(
        config
            .blocks
            .iter()
            .flat_map(|b| claim(DEFAULT_NETWORK, b, 0)),
    );
    if let Some(l) = &leases {
        initial.extend(
            l.claims
                .iter()
                .flat_map(|(b, at)| claim(l.network(), b, *at)),
        );
    }
    // The other networks' blocks held before a restart go out with the
    // rest (their leases are taken up again once the networks settle):
    // peers must not see the node without them meanwhile.
    for n in known
        .values()
        .filter(|n| n.deleted_at_ms.is_none() && !n.subnets.is_empty())
    {
        if let Ok(l) = Leases::load_network(&config.state_dir, me, n, settle, ttl) {
            initial.extend(l.claims.iter().flat_map(|(b, at)| claim(&n.name, b, *at)));
        }
    }
    initial.extend(endpoints.iter().map(|r| {
        (
            muslin_model::cluster::gossip_endpoint_key(&r.network, &r.container_id, &r.ifname),
            serde_json::to_string(r).expect("serializes"),
        )
    }));
    initial.push((
        muslin_model::cluster::NODE_KEY.to_string(),
        serde_json::to_string(&record).expect("serializes"),
    ));
    let store = if let Datastore::Etcd(settings) = datastore {
        let (endpoints, prefix) = (settings.endpoints.clone(), settings.prefix.clone());
        let s = Etcd::start(EtcdConfig {
            endpoints: settings.endpoints,
            prefix: settings.prefix,
            node_name: me.to_string(),
            ca_file: settings.ca_file,
            cert_file: settings.cert_file,
            key_file: settings.key_file,
            ttl,
            alive_ttl: (interval * 30).max(Duration::from_secs(6)),
        })
        .await
        .map_err(|e| AgentError::Join(e.to_string()))?;
        let s = AnyStore::Etcd(Box::new(s));
        s.publish_record(&record).await;
        for b in &config.blocks {
            s.claim_block(DEFAULT_NETWORK, *b, BlockClaim { claimed_at_ms: 0 })
                .await;
        }
        if let Some(l) = &leases {
            for (b, at) in &l.claims {
                s.claim_block(l.network(), *b, BlockClaim { claimed_at_ms: *at })
                    .await;
            }
        }
        tracing::info!(?endpoints, %prefix, "cluster state in etcd");
        s
    } else {
        // Kept before the first datagram: a run that crashed after
        // speaking must never have its number reused.
        let generation = crate::gossip_generation::next(&config.state_dir).map_err(|e| {
            AgentError::Join(format!(
                "cannot keep the gossip generation in {}: {e}",
                config.state_dir.display()
            ))
        })?;
        let gcfg = GossipConfig {
            generation: Some(generation),
            ..gcfg
        };
        AnyStore::Gossip(Box::new(
            Gossip::start(gcfg, initial)
                .await
                .map_err(|e| AgentError::Join(e.to_string()))?,
        ))
    };
    // A first start waits briefly to hear the cluster before claiming; a
    // restart holds its blocks already and serves at once.
    let holds_blocks =
        !config.blocks.is_empty() || leases.as_ref().is_some_and(|l| !l.claims.is_empty());
    let serving_already = restart && holds_blocks;
    if !peers.is_empty() && !etcd && !serving_already {
        let deadline = Instant::now() + Duration::from_secs(5);
        tracing::info!(peers = ?peers, "joining");
        // A notice that our secret is wrong is unauthenticated (anyone can
        // forge one from a seed's address): it is a hint to report, never
        // a reason to stop joining.
        while !store.synced() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if store.synced() {
            tracing::info!("joined the cluster");
            // Refused rather than left half in: peers that encrypt send
            // nothing in clear, so our pods would reach none of theirs.
            // Their records arrive a round or two after the first answer.
            while !encrypt && Instant::now() < deadline {
                let view = store.view().await;
                if let Some(why) = muslin_model::encryption::join_refusal(me, &view) {
                    return Err(AgentError::Join(why));
                }
                let heard = view
                    .nodes
                    .iter()
                    .any(|(n, p)| n != me && p.alive && p.record.is_some());
                if heard {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        } else {
            let hint = store.auth_problem().unwrap_or_default();
            tracing::warn!(peers = ?peers, %hint, "no join peer answered yet; going on and retrying in the background");
        }
    }
    // Probes travel to the gossip port; on etcd nothing else listens there.
    // Without it peers cannot judge our data path, but we still serve pods.
    let responder = if etcd {
        let at = SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), config.gossip_port);
        match tokio::net::UdpSocket::bind(at).await {
            Ok(sock) => Some(tokio::spawn(muslin_store::probe_wire::serve(
                sock,
                probes(),
            ))),
            Err(e) => {
                tracing::warn!(port = config.gossip_port, cause = %e, "cannot answer health probes: peers will show this node's data path as failing");
                None
            }
        }
    } else {
        None
    };
    let tracker = Arc::new(Mutex::new(Tracker::with_budget(probe_budget(interval))));
    let (plan, plan_rx) = watch::channel(Arc::new(Plan::default()));
    let prober = crate::prober::spawn(probes(), config.gossip_port, plan_rx, tracker.clone())
        .map_err(|e| AgentError::Join(format!("opening the probe socket: {e}")))?;
    Ok(Some(Cluster {
        me: me.to_string(),
        store,
        published: (record.clone(), Instant::now()),
        record,
        movable,
        host: facts,
        gossip_port: config.gossip_port,
        tracker,
        plan,
        _prober: Some(prober),
        _responder: responder,
        pinned_hint: None,
        moving: None,
        state_dir: config.state_dir.clone(),
        kept_basis: basis,
        memory: crate::remembered_state::Memory::load(&config.state_dir, me),
        relays: crate::relay_state::load(&config.state_dir),
        held: leases
            .as_ref()
            .map(|l| l.claims.keys().copied().collect())
            .unwrap_or_default(),
        ttl,
        underlay,
        reason,
        backend,
        vx: VxlanSettings {
            vni: config.vxlan_vni,
            port: config.vxlan_port,
        },
        status: Arc::new(RwLock::new(ClusterStatus::default())),
        leases,
        settle,
        nets: Default::default(),
        // Networks known before the restart are in force at once: their
        // containers' traffic must not stop while the agent restarts.
        first_seen: known
            .values()
            .map(|n| {
                let long_ago = Instant::now()
                    .checked_sub(settle)
                    .unwrap_or_else(Instant::now);
                ((n.name.clone(), n.created_at_ms), long_ago)
            })
            .collect(),
        known_networks: known,
        known_objects,
        objects_version: 0,
        objects_seen: None,
        objects_synced: None,
        policy: Default::default(),
        dns: crate::dns::NameService::new(config, me),
        settling: Default::default(),
        interval,
        pod_cidr: config.pod_cidr(),
        masquerade: config.masquerade,
        encrypt,
        wg_kind: wireguard
            .as_ref()
            .map_or("tun", crate::wireguard::Wireguard::kind),
        wireguard,
    }))
}

impl Cluster {
    /// The WireGuard device as `muslin status` shows it.
    pub(crate) async fn wireguard_status(&self) -> Option<muslin_model::api::WireguardStatus> {
        match &self.wireguard {
            Some(w) => Some(w.status().await),
            None => None,
        }
    }

    /// A new key pair, published at once: peers drop the old key as they
    /// hear the new record, and renew sessions with the new one.
    pub(crate) async fn rotate_key(&mut self) -> Result<String, muslin_model::cni::CniError> {
        use muslin_model::cni::{CniError, ErrorCode};
        let Some(wg) = self.wireguard.as_mut() else {
            return Err(CniError::new(
                ErrorCode::InvalidConfig,
                "this node does not encrypt (encryption = \"none\"): it has no key to rotate",
            ));
        };
        let key = wg
            .rotate()
            .await
            .map_err(|e| CniError::new(ErrorCode::Internal, e))?;
        self.record.wireguard = Some(wg.end());
        self.publish().await;
        Ok(key)
    }

    /// What `muslin status`, `muslin dns lookup` and ADD's results read of
    /// the name service.
    pub fn dns_shared(&self) -> Option<Arc<crate::dns::Shared>> {
        self.dns.as_ref().map(crate::dns::NameService::shared)
    }

    /// The networks the name service listens in: the default one and
    /// every network in force; none without the name service.
    fn served(
        &self,
        live: &std::collections::BTreeMap<String, muslin_model::network::NetworkSpec>,
    ) -> Vec<crate::dns::ServedNet> {
        if self.dns.is_none() {
            return Vec::new();
        }
        let mut out = vec![crate::dns::ServedNet {
            name: muslin_model::DEFAULT_NETWORK.into(),
            id: 0,
            mark: 0,
            subnets: vec![self.pod_cidr],
        }];
        out.extend(live.values().map(|n| crate::dns::ServedNet {
            name: n.name.clone(),
            id: n.id,
            mark: n.mark(),
            subnets: n.subnets.clone(),
        }));
        out
    }

    /// Runs until dropped: leases, then the data plane, every gossip round.
    /// `endpoints` is what the node wants the cluster to see of its
    /// endpoints; it is published every round (level-triggered: a store
    /// outage or a crash between steps converges) and as soon as it changes.
    pub async fn run(
        mut self,
        host: Executor,
        blocks: Arc<BlockSource>,
        mut endpoints: watch::Receiver<Vec<EndpointRecord>>,
        networks: Arc<Networks>,
        mut asks: tokio::sync::mpsc::Receiver<Ask>,
    ) {
        let started = Instant::now();
        let mut last: Option<(Desired, Vec<nets::NetPlane>)> = None;
        let mut last_full = Instant::now() - Duration::from_secs(3600);
        let mut masq = MasqueradeState::default();
        loop {
            if self.host.at.elapsed() > HOST_REFRESH {
                let mut ranges = vec![self.pod_cidr];
                ranges.extend(self.known_networks.values().flat_map(|n| n.subnets.clone()));
                match HostFacts::read(&host, &ranges).await {
                    Ok(f) => self.host = f,
                    Err(e) => tracing::warn!(cause = %e, "could not read the host's interfaces"),
                }
            }
            // What the store shows now, completed with the peers we saw and
            // the cluster has not forgotten: a restart, or a store that
            // hears only part of the cluster, drops no route before a
            // peer's TTL.
            let live = self.store.view().await;
            let completed = self.memory.peers.complete(
                &live,
                &self.me,
                crate::leases::now_ms(),
                self.ttl.as_millis() as u64,
            );
            self.memory.save_if_due();
            // etcd, once read, is the whole truth: memory only bridges
            // until then. Gossip may always hear only part of the cluster.
            let mut view = if self.store.name() == "etcd" && self.store.synced() {
                live
            } else {
                completed
            };
            // Until the store is heard, the blocks we hold (kept across the
            // restart) are ours: nobody can contradict what we cannot hear,
            // and pods must keep being served from them.
            // A block claimed since needs the store's word first. Held ones
            // stay ours until another node shows a claim on them (then the
            // lease rules decide), also between etcd's return and our
            // re-claim reaching it.
            if let Some(l) = &self.leases {
                let others: Vec<ipnet::IpNet> = view
                    .nodes
                    .iter()
                    .filter(|(n, _)| **n != self.me)
                    .flat_map(|(_, p)| p.claims.keys().copied())
                    .collect();
                let me = view.nodes.entry(self.me.clone()).or_default();
                for (b, at) in l.claims.iter().filter(|(b, _)| {
                    self.held.contains(b) && !others.iter().any(|o| o.contains(*b) || b.contains(o))
                }) {
                    me.claims
                        .entry(*b)
                        .or_insert(BlockClaim { claimed_at_ms: *at });
                }
            }
            // Networks: every node republishes every record it knows, so a
            // network outlives the node that created it.
            let known = self.learn_networks(&view);
            let (live, mut net_warnings) = muslin_model::network::effective(&known, self.vx.vni);
            let live = self.settled(live);
            networks.set_settling(self.settling.keys().cloned().collect());
            networks.set_live(&live);
            let reach = self.reach(&live);
            let served = self.served(&live);
            let resolver = |name: &str| {
                served
                    .iter()
                    .find(|s| s.name == name)
                    .map(crate::dns::ServedNet::address)
            };
            for n in live.values() {
                if let Some(r) = self.shadowed(n) {
                    net_warnings.push(format!(
                        "network {}'s subnet overlaps {r}, a route of this host: the host does not route to the network",
                        n.name
                    ));
                }
            }
            self.store
                .sync_networks(&known, crate::leases::now_ms())
                .await;
            let nodes: Vec<std::net::IpAddr> = view
                .nodes
                .values()
                .filter_map(|n| n.record.as_ref().map(|r| r.address))
                .collect();
            masq.converge(
                &host,
                Masquerade {
                    pod_cidr: self.pod_cidr,
                    enabled: self.masquerade,
                    nodes: nodes.into_iter().collect(),
                    networks: live
                        .values()
                        .map(|n| {
                            NftNetwork::of(n, reach.contains(&n.name)).with_dns(resolver(&n.name))
                        })
                        .collect(),
                    vxlan_port: self.vx.port,
                    wireguard: self.encrypt,
                },
            )
            .await;
            let in_use: std::collections::BTreeSet<String> = endpoints
                .borrow()
                .iter()
                .map(|e| e.network.clone())
                .collect();
            self.lease_networks(&view, &live, &networks, &in_use).await;
            if let Some(l) = self.leases.as_mut() {
                let step = l.step(&view, blocks.take_asked());
                let network = l.network();
                for b in &step.release {
                    self.store.release_block(network, *b).await;
                }
                for (b, c) in step.reclaim {
                    self.store.claim_block(network, b, c).await;
                }
                if let Some((b, c)) = step.claim {
                    self.store.claim_block(network, b, c).await;
                }
                blocks.set(step.settled);
            }
            let mine = endpoints.borrow_and_update().clone();
            self.store.sync_endpoints(&mine).await;
            if let Some(dns) = self.dns.as_mut() {
                dns.refresh(&served, &view, &mine);
            }
            self.learn_objects(&view);
            // Every node republishes every object: when they change, and
            // now and then (tombstones expire).
            if self
                .objects_synced
                .is_none_or(|(v, t)| v != self.objects_version || t.elapsed() > OBJECTS_RESYNC)
            {
                self.store
                    .sync_objects(&self.known_objects, crate::leases::now_ms())
                    .await;
                self.objects_synced = Some((self.objects_version, Instant::now()));
            }
            net_warnings.extend(self.policy.refresh(
                &self.me,
                &self.known_objects,
                self.objects_version,
                &view,
                &mine,
            ));
            self.policy.converge(&host).await;
            self.reconsider_underlay(&view).await;
            let path_mtu = self.tracker.lock().expect("tracker lock").path_mtu();
            let d = desired(
                &view,
                &Params {
                    me: &self.me,
                    backend: self.backend,
                    local: &self.underlay,
                    vx: self.vx,
                    vtep_mac: vtep_mac(&self.me),
                    pod_cidr: self.pod_cidr,
                    local_addresses: &self.host.addresses,
                    path_mtu: &path_mtu,
                    dev: muslin_model::dataplane::VXLAN_DEV,
                    table: muslin_model::dataplane::MAIN_TABLE,
                    pod_table: Some(muslin_model::dataplane::POD_TABLE),
                    tunnel_always: false,
                    health: &self.record.health,
                    relays: &self.relays,
                    encrypt: self.encrypt,
                    wg_kind: self.wg_kind,
                },
            );
            let relays: std::collections::BTreeMap<String, String> = d
                .paths
                .iter()
                .filter_map(|(n, p)| match p {
                    Path::Relay(r) => Some((n.clone(), r.via.clone())),
                    _ => None,
                })
                .collect();
            if relays != self.relays {
                tracing::info!(?relays, "relays in use changed");
                crate::relay_state::save(&self.state_dir, &relays);
                self.relays = relays;
            }
            let planes = self.network_planes(&view, &live, &path_mtu);
            // Deleting needs a complete view: not before we heard from the
            // cluster, and not in the first rounds after a restart.
            let allow_deletes = self.store.synced() && started.elapsed() > self.interval * 10;
            let full = last_full.elapsed() > Duration::from_secs(5);
            if let (Some(wg), Some(w)) = (self.wireguard.as_mut(), &d.wireguard) {
                wg.converge(&w.peers, full, allow_deletes).await;
            }
            let wanted = (d.clone(), planes);
            if full || last.as_ref() != Some(&wanted) {
                let listen: Vec<std::net::Ipv4Addr> =
                    served.iter().map(crate::dns::ServedNet::address).collect();
                if let Err(e) = self
                    .converge(&host, &d, &wanted.1, &listen, allow_deletes)
                    .await
                {
                    tracing::warn!(cause = %e, "data plane not converged; retrying");
                } else {
                    last = Some(wanted.clone());
                    if full {
                        last_full = Instant::now();
                    }
                }
            }
            let plan = self.plan_probes(&view, &d);
            self.refresh_record(&plan).await;
            self.redirect_gossip(&view, &plan);
            self.publish_status(&view, &d, &path_mtu, &live, net_warnings)
                .await;
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                Some(ask) = asks.recv() => {
                    self.answer(ask, &view, &live, &host).await
                }
                // The ask itself is read from `blocks` next round.
                _ = blocks.wanted() => {}
                r = endpoints.changed() => {
                    // The node is gone (shutting down): rounds go on by time.
                    if r.is_err() {
                        tokio::time::sleep(self.interval).await;
                    }
                }
            }
        }
    }

    /// Moves off an advertised address that no peer reaches when they reach
    /// another of ours (the first host's first-found guess, a NIC gone bad).
    async fn reconsider_underlay(&mut self, view: &ClusterView) {
        // A peer is heard when gossip says it lives or our own probes reach
        // it: right after an address broke, gossip may still call it dead.
        let probed = self
            .tracker
            .lock()
            .expect("tracker lock")
            .reach(Instant::now());
        let heard = |n: &String| probed.get(n).is_some_and(|r| !r.is_empty());
        let reports: Vec<(&str, &Vec<IpAddr>)> = view
            .nodes
            .iter()
            .filter(|(n, p)| **n != self.me && (p.alive || heard(n)))
            .filter_map(|(n, p)| Some((n.as_str(), p.record.as_ref()?.reach.get(&self.me)?)))
            .collect();
        let lists: Vec<Vec<IpAddr>> = reports.iter().map(|(_, r)| (*r).clone()).collect();
        let old = self.underlay.address;
        let Some(new) = reconsider(old, &self.record.addresses, &lists) else {
            self.pinned_hint = None;
            self.moving = None;
            return;
        };
        // A peer reaching only another address of ours says so at once, one
        // reaching the advertised address (which vetoes the move) only
        // after its record's gap: the move waits until all had their say.
        let since = match self.moving {
            Some((to, since)) if to == new => since,
            _ => {
                self.moving = Some((new, Instant::now()));
                return;
            }
        };
        if since.elapsed() < move_wait(view.nodes.len(), self.interval) {
            return;
        }
        self.moving = None;
        let who: Vec<&str> = reports
            .iter()
            .filter(|(_, r)| r.contains(&new))
            .map(|(n, _)| *n)
            .collect();
        let Some((ifname, net, mtu)) = usable_addresses(&self.host.cands)
            .into_iter()
            .find(|(_, a, _)| a.addr() == new)
        else {
            return;
        };
        if !self.movable {
            self.pinned_hint = Some(format!(
                "peers {} reach {new} ({ifname}) but none reaches the advertised {old}: the underlay setting pins it",
                who.join(", ")
            ));
            return;
        }
        self.reason = format!(
            "moved from {old} ({}): peers {} reach {new}, none reached {old}",
            self.underlay.ifname,
            who.join(", ")
        );
        tracing::warn!(from = %old, to = %new, interface = %ifname, "underlay address changed: {}", self.reason);
        crate::underlay_state::save(
            &self.state_dir,
            &self.kept_basis,
            &Choice {
                ifname: ifname.clone(),
                address: net,
                mtu,
                reason: self.reason.clone(),
            },
        );
        self.underlay = Underlay {
            ifname,
            address: new,
            prefix: net.trunc(),
            mtu,
        };
        self.record.address = new;
        self.record.underlay_prefix = net.trunc();
        self.record.mtu = mtu;
        self.record.address_reason = self.reason.clone();
        self.record.addresses = self.host.usable(new);
        // Gossip keeps its first advertised address: peers send to one of
        // ours that answers instead (see `redirect_gossip`), and nothing of
        // the view is lost, as restarting gossip under a new address would.
        self.publish().await;
    }

    /// Sends our record as it is now to the store.
    async fn publish(&mut self) {
        self.store.publish_record(&self.record).await;
        self.published = (self.record.clone(), Instant::now());
    }

    /// Tells the prober whom to probe: every peer in the view at each of
    /// its addresses, and at its VTEP address when a data path to it
    /// exists. Peers gossip calls dead too: gossip to them may only need
    /// another of their addresses (see `redirect_gossip`).
    fn plan_probes(&self, view: &ClusterView, d: &Desired) -> Arc<Plan> {
        // Each owner's first block, and the routed destinations, found
        // once: lookups per peer in every block and route would cost the
        // square of the cluster every round.
        let mut first_block: std::collections::HashMap<&str, ipnet::IpNet> =
            std::collections::HashMap::new();
        let owners = view.block_owners();
        for (b, o) in &owners {
            first_block.entry(o.as_str()).or_insert(*b);
        }
        let routed: std::collections::HashSet<ipnet::IpNet> =
            d.routes.iter().map(|r| r.dst).collect();
        let peers = view
            .nodes
            .iter()
            .filter(|(n, _)| **n != self.me)
            .filter_map(|(n, p)| {
                let rec = p.record.as_ref()?;
                let first = first_block.get(n.as_str()).copied();
                let data = match (d.paths.get(n), first) {
                    (Some(path @ (Path::Routed | Path::Vxlan | Path::Wireguard)), Some(b))
                        if routed.contains(&b) =>
                    {
                        Some((b.network(), path.clone()))
                    }
                    // Relayed: the direct path is still probed, over its
                    // route to the peer's VTEP address alone.
                    (Some(Path::Relay(r)), Some(b))
                        if routed.contains(&ipnet::IpNet::from(b.network())) =>
                    {
                        Some((b.network(), (*r.direct).clone()))
                    }
                    _ => None,
                };
                Some(PeerPlan {
                    name: n.clone(),
                    addresses: addresses_of(rec),
                    incarnation: rec.started_ms,
                    port: match rec.gossip_port {
                        0 => self.gossip_port,
                        p => p,
                    },
                    data,
                })
            })
            .collect();
        // Shared with the prober, which reads it every tick.
        let plan = Arc::new(Plan {
            peers,
            local_mtu: self.underlay.mtu,
        });
        self.plan.send_replace(plan.clone());
        plan
    }

    /// Gossip for a peer whose advertised address does not answer goes to
    /// one of its addresses that does, so that a node whose address broke
    /// still hears the reports that make it move.
    fn redirect_gossip(&self, view: &ClusterView, plan: &Plan) {
        let now = Instant::now();
        let t = self.tracker.lock().expect("tracker lock");
        let reach = t.reach(now);
        let map = plan
            .peers
            .iter()
            .filter_map(|p| {
                let adv = *p.addresses.first()?;
                // Gossip goes where the peer's gossip first advertised
                // itself, which outlives a move of its address.
                let rec = view.nodes.get(&p.name)?.record.as_ref()?;
                let gossips_at = rec.gossip_address.unwrap_or(adv);
                if t.answers(&p.name, gossips_at, now) {
                    return None;
                }
                let alt = if gossips_at != adv && t.answers(&p.name, adv, now) {
                    adv
                } else {
                    *reach.get(&p.name)?.iter().find(|a| **a != gossips_at)?
                };
                Some((
                    SocketAddr::new(gossips_at, p.port),
                    SocketAddr::new(alt, p.port),
                ))
            })
            .collect();
        tracing::debug!(?map, "gossip redirects");
        self.store.redirect(map);
    }

    /// Publishes our record again when what probes found, our addresses or
    /// our reserved ranges changed.
    async fn refresh_record(&mut self, plan: &Plan) {
        let now = Instant::now();
        let mut rec = self.record.clone();
        {
            let t = self.tracker.lock().expect("tracker lock");
            rec.reach = t.reach(now);
            rec.health = t.health(&plan.peers, self.vx.port, now);
        }
        rec.reserved = self.host.reserved.clone();
        rec.addresses = self.host.usable(self.underlay.address);
        rec.relays = self.relays.clone();
        self.record = rec;
        let advertised = |peer: &str| {
            plan.peers
                .iter()
                .find(|p| p.name == peer)
                .and_then(|p| p.addresses.first().copied())
        };
        let due = match record_news::news(&self.published.0, &self.record, advertised) {
            News::None => false,
            News::Urgent => true,
            News::Routine => {
                now.duration_since(self.published.1) >= record_news::gap(plan.peers.len())
            }
        };
        if due {
            tracing::debug!(reach = ?self.record.reach, "record changed");
            self.publish().await;
        }
    }

    /// Reads the host, computes the changes that make it match `d` and
    /// has the executor carry them out. `last` and `full` only decide
    /// whether to look at all: an unchanged plan is re-checked every few
    /// seconds.
    async fn converge(
        &self,
        host: &Executor,
        d: &Desired,
        planes: &[nets::NetPlane],
        dns: &[std::net::Ipv4Addr],
        allow_deletes: bool,
    ) -> Result<(), muslin_kernel::KernelError> {
        let observed = host.host().await?;
        // Pitfall 4: offload turned back on under us (by hand, by a
        // driver reset) would corrupt checksums again on affected kernels.
        for l in observed.links.iter().filter(|l| {
            matches!(l.kind, muslin_plan::object::LinkKind::Vxlan(_))
                && l.name.starts_with(muslin_model::IFACE_PREFIX)
        }) {
            muslin_kernel::vxlan_offload::enforce(&l.name, false);
        }
        let mut want = data_plane::host_state(d);
        if !dns.is_empty() {
            let s = data_plane::dns_state(dns);
            want.links.extend(s.links);
            want.addresses.extend(s.addresses);
        }
        let specs: Vec<&muslin_model::network::NetworkSpec> =
            planes.iter().map(|p| &p.spec).collect();
        let ranges = muslin_model::network::cluster_ranges(
            self.pod_cidr,
            specs.iter().flat_map(|n| n.subnets.iter().copied()),
        );
        want.rules
            .extend(data_plane::network_guards(&specs, self.pod_cidr));
        for p in planes {
            let s = data_plane::network_state(&p.desired, &p.spec, p.reach, &ranges);
            want.links.extend(s.links);
            want.addresses.extend(s.addresses);
            want.routes.extend(s.routes);
            want.rules.extend(s.rules);
            want.neighbours.extend(s.neighbours);
            want.fdb.extend(s.fdb);
        }
        let mut plan = muslin_plan::diff(
            &observed,
            &want,
            &data_plane::all_ownership(&specs, allow_deletes),
        );
        for why in &plan.skipped {
            tracing::debug!("not programmed: {why}");
        }
        if allow_deletes {
            plan.changes
                .extend(data_plane::stale_tunnels(&observed, &specs));
        }
        // A network's new tunnel: strict rp_filter must check the sources
        // arriving on it with the network's mark (see attachment::create).
        let marks: Vec<Change> = plan
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::CreateLink(l)
                    if muslin_model::network::parse_vxlan_dev(&l.name).is_some() =>
                {
                    Some(Change::Sysctl {
                        key: format!("net/ipv4/conf/{}/src_valid_mark", l.name),
                        value: "1".into(),
                    })
                }
                _ => None,
            })
            .collect();
        plan.changes.extend(marks);
        if plan.changes.is_empty() {
            return Ok(());
        }
        let n = plan.changes.len();
        let report = host
            .apply(
                Lane::Cluster,
                plan.changes.into_iter().map(Step::host).collect(),
                OnFailure::Continue,
            )
            .await;
        let errors = report.errors();
        tracing::info!(
            changes = n,
            failed = errors.len(),
            routes = d.routes.len(),
            "data plane converged"
        );
        match errors.is_empty() {
            true => Ok(()),
            false => Err(muslin_kernel::KernelError::Io {
                what: errors.join("; "),
                source: std::io::ErrorKind::Other.into(),
            }),
        }
    }

    async fn publish_status(
        &self,
        view: &ClusterView,
        d: &Desired,
        path_mtu: &std::collections::BTreeMap<String, u32>,
        live: &std::collections::BTreeMap<String, muslin_model::network::NetworkSpec>,
        net_warnings: Vec<String>,
    ) {
        let owners = view.block_owners();
        let mut warnings = net_warnings;
        warnings.extend(self.pinned_hint.clone());
        if !self.store.synced() {
            warnings.push(format!(
                "not in touch with the cluster yet ({}): serving pods from the blocks held, keeping every route, retrying",
                if self.store.name() == "etcd" {
                    "etcd does not answer"
                } else {
                    "no authenticated answer from the join peers"
                }
            ));
        }
        // A block that became conflicting after we leased it: loud, since
        // pods in it shadow a network some host routes elsewhere.
        for (b, _) in owners.iter().filter(|(_, o)| **o == self.me) {
            for (n, p) in &view.nodes {
                let Some(r) = p.record.as_ref() else { continue };
                for x in r
                    .reserved
                    .iter()
                    .filter(|x| x.contains(b) || b.contains(*x))
                {
                    warnings.push(format!(
                        "our block {b} overlaps {x}, which node {n} routes outside the cluster: its pods there are unreachable from {n}; move them off this block"
                    ));
                }
            }
        }
        for (name, h) in &self.record.health {
            if let Some(c) = h.cause.as_ref().filter(|_| !h.ok) {
                warnings.push(format!("{name}: data path failing: {c}"));
            }
        }
        for (addr, names) in view.duplicate_addresses() {
            warnings.push(format!(
                "nodes {} all claim underlay address {addr}: choose the address by reachability or pin it per node",
                names.join(", ")
            ));
        }
        if let Some(p) = self.store.auth_problem() {
            warnings.push(p);
        }
        for (name, path) in &d.paths {
            if let Path::Unreachable(why) = path {
                warnings.push(format!("{name}: {why}"));
            }
        }
        for (name, why) in &d.stuck {
            warnings.push(format!("{name}: {why}"));
        }
        if !self.encrypt {
            warnings.extend(muslin_model::encryption::join_refusal(&self.me, view));
        }
        let clocks = muslin_store::probe_wire::clocks::offsets();
        // Each node's blocks, found once: a lookup per node in the list of
        // every block would cost the square of the cluster every round.
        let mut blocks_of: std::collections::BTreeMap<&str, Vec<ipnet::IpNet>> =
            std::collections::BTreeMap::new();
        for (b, o) in &owners {
            blocks_of.entry(o.as_str()).or_default().push(*b);
        }
        let nodes = view
            .nodes
            .iter()
            .map(|(name, p)| PeerStatus {
                name: name.clone(),
                address: p.record.as_ref().map(|r| r.address),
                blocks: blocks_of.get(name.as_str()).cloned().unwrap_or_default(),
                path: if *name == self.me {
                    "self".into()
                } else {
                    match d.paths.get(name) {
                        Some(Path::Routed) => "routed".into(),
                        Some(Path::Vxlan) => "vxlan".into(),
                        Some(Path::Wireguard) => "wireguard".into(),
                        Some(Path::Relay(r)) => format!("via {}", r.via),
                        Some(Path::Unreachable(why)) => format!("unreachable: {why}"),
                        None => "unknown".into(),
                    }
                },
                relay: match d.paths.get(name) {
                    Some(Path::Relay(r)) => Some(r.via.clone()),
                    _ => None,
                },
                path_why: match d.paths.get(name) {
                    Some(Path::Relay(r)) => Some(r.why.clone()),
                    _ => d.stuck.get(name).cloned(),
                },
                alive: p.alive,
                data_path: match self.record.health.get(name) {
                    Some(h) if h.ok => "ok".into(),
                    Some(h) => format!("failing: {}", h.cause.as_deref().unwrap_or("no answer")),
                    None => "-".into(),
                },
                path_mtu: path_mtu.get(name).copied(),
                reached: self.record.reach.get(name).cloned().unwrap_or_default(),
                endpoints: p.endpoints.len() as u64,
                mtu: p.record.as_ref().map(|r| r.mtu).unwrap_or(0),
                // Only a reading that came from one of the peer's own
                // addresses: a name in a probe is only a claim.
                clock_skew_ms: clocks.get(name).and_then(|readings| {
                    let r = p.record.as_ref()?;
                    let own = |a: &IpAddr| {
                        r.address == *a
                            || r.addresses.contains(a)
                            || blocks_of
                                .get(name.as_str())
                                .is_some_and(|bs| bs.iter().any(|b| b.contains(a)))
                    };
                    readings.iter().find(|(a, _)| own(a)).map(|(_, s)| *s)
                }),
            })
            .collect();
        let traffic = self.store.traffic();
        let mut s = self.status.write().await;
        let was_warned = s.warnings.clone();
        // The cluster's endpoint table is copied only when it changed: it
        // grows with the cluster, and this runs every gossip round.
        let listed = view.endpoints();
        let endpoints =
            if s.endpoints.len() == listed.len() && s.endpoints.iter().eq(listed.iter().copied()) {
                std::mem::take(&mut s.endpoints)
            } else {
                listed.into_iter().cloned().collect()
            };
        *s = ClusterStatus {
            underlay_if: self.underlay.ifname.clone(),
            underlay_address: Some(self.underlay.address),
            underlay_reason: self.reason.clone(),
            underlay_mtu: self.underlay.mtu,
            backend: self.backend.to_string(),
            synced: self.store.synced(),
            nodes,
            warnings,
            datastore: self.store.name().into(),
            gossip_bytes_sent: traffic.gossip_bytes_sent,
            gossip_bytes_received: traffic.gossip_bytes_received,
            etcd_requests: traffic.etcd_requests,
            underlay_addresses: self.record.addresses.clone(),
            reserved: view.reserved(),
            kernel_writes: muslin_kernel::counters().kernel_writes(),
            nft_runs: muslin_kernel::counters().nft_runs,
            gossip_dropped: self.store.dropped(),
            probe_bytes_sent: crate::prober::SENT.load(std::sync::atomic::Ordering::Relaxed),
            probe_bytes_received: crate::prober::RECEIVED
                .load(std::sync::atomic::Ordering::Relaxed),
            endpoints,
            networks: self.statuses(view, live, None),
            // Listed when asked (`status`, `policy list`), with fresh
            // counters: not built every round.
            policies: Vec::new(),
            wireguard: None,
            pod_cidrs: std::iter::once(self.pod_cidr)
                .chain(self.known_networks.values().flat_map(|n| n.subnets.clone()))
                .collect(),
        };
        for w in s.warnings.iter().filter(|w| !was_warned.contains(w)) {
            tracing::warn!("{w}");
        }
    }
}

/// What the masquerade table was last brought to, and the nftables
/// generation then: the table is read again (an `nft` run) only when the
/// wanted table changed or someone changed the ruleset.
#[derive(Default)]
struct MasqueradeState {
    applied: Option<Masquerade>,
    generation: Option<u32>,
    checked: Option<Instant>,
}

/// How often an unchanged masquerade table is checked for drift.
const MASQUERADE_RECHECK: Duration = Duration::from_secs(5);

impl MasqueradeState {
    async fn converge(&mut self, host: &Executor, want: Masquerade) {
        let unchanged = self.applied.as_ref() == Some(&want);
        if unchanged
            && self
                .checked
                .is_some_and(|t| t.elapsed() < MASQUERADE_RECHECK)
        {
            return;
        }
        self.checked = Some(Instant::now());
        let generation = host.nft_generation().await.ok();
        if self.applied.as_ref() == Some(&want)
            && generation.is_some()
            && generation == self.generation
        {
            return;
        }
        let fam = NftFamily::of(&want.pod_cidr);
        let observed = match host.masquerade(fam).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(cause = %e, "cannot read the masquerade table; retrying");
                return;
            }
        };
        let changes = muslin_plan::nft::diff(&observed, &want);
        if !changes.is_empty() {
            let report = host
                .apply(
                    Lane::Masquerade,
                    changes
                        .into_iter()
                        .map(|c| Step::host(Change::Nft(c)))
                        .collect(),
                    OnFailure::Stop,
                )
                .await;
            if let Err(e) = report.into_result() {
                tracing::warn!(cause = %e, "masquerade not configured; retrying");
                return;
            }
        }
        self.applied = Some(want);
        self.generation = host.nft_generation().await.ok();
    }
}
