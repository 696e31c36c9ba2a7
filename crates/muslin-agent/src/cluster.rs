//! The node in its cluster: underlay choice, gossip, leases and the data
//! plane loop. Level-triggered: every round recomputes the desired data
//! plane from the whole view and converges the kernel to it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use muslin_kernel::Netlink;
use muslin_model::agent_config::AgentConfig;
use muslin_model::api::{ClusterStatus, PeerStatus};
use muslin_model::cluster::{vtep_mac, BlockClaim, ClusterView, NodeRecord};
use muslin_model::dataplane::{desired, Backend, Desired, Path, Underlay, VxlanSettings};
use muslin_model::naming::format_mac;
use muslin_model::underlay::{Choice, Method};
use muslin_store::{AnyStore, ClusterStore, Etcd, EtcdConfig, Gossip, GossipConfig};
use tokio::sync::RwLock;

use crate::blocks::BlockSource;
use crate::leases::Leases;
use crate::AgentError;

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
}

/// Chooses the underlay, joins the cluster and publishes this node.
/// `Ok(None)`: no usable underlay and no peers, so the node runs alone.
pub async fn join(
    config: &AgentConfig,
    me: &str,
    host: &Netlink,
) -> Result<Option<Cluster>, AgentError> {
    let peers: Vec<SocketAddr> = config
        .join
        .iter()
        .filter_map(|j| config.join_addr(j).ok())
        .collect();
    let etcd = config.datastore == "etcd";
    // On etcd the nodes need not know each other: the underlay must reach
    // etcd, so its members are what reachability verifies.
    let reach: Vec<SocketAddr> = if peers.is_empty() && etcd {
        config
            .etcd_endpoints
            .iter()
            .filter_map(|e| {
                e.split("://")
                    .nth(1)?
                    .trim_end_matches('/')
                    .parse::<SocketAddr>()
                    .ok()
            })
            .collect()
    } else {
        peers.clone()
    };
    let method: Method = config
        .underlay
        .parse()
        .map_err(|m| AgentError::Underlay(format!("underlay: {m}")))?;
    let Some(choice) = crate::underlay_select::choose(host, &method, &reach)
        .await
        .map_err(AgentError::Underlay)?
    else {
        tracing::warn!("no usable underlay interface and no join peers: running as a single node");
        return Ok(None);
    };
    let Choice {
        ifname,
        address,
        mtu,
        reason,
    } = choice;
    tracing::info!(address = %address.addr(), interface = %ifname, mtu, %reason, "chose the underlay address");
    let backend: Backend = config
        .backend
        .parse()
        .map_err(|m| AgentError::Underlay(format!("backend: {m}")))?;
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
    let gcfg = GossipConfig {
        node_name: me.to_string(),
        listen: SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), config.gossip_port),
        advertise: SocketAddr::new(underlay.address, config.gossip_port),
        seeds: peers.clone(),
        interval,
        ttl,
        secret,
    };
    let leases = if config.blocks.is_empty() {
        // Settling waits out a few gossip rounds, so a competing claim made
        // at the same moment has reached us before we hand out addresses.
        let settle = (interval * 5).max(Duration::from_millis(500));
        Some(
            Leases::load(
                &config.state_dir,
                me,
                config.pod_cidr,
                config.block_size,
                settle,
                ttl,
            )
            .map_err(AgentError::Join)?,
        )
    } else {
        None
    };
    let record = NodeRecord {
        name: me.to_string(),
        address: underlay.address,
        underlay_prefix: underlay.prefix,
        vtep_mac: format_mac(&vtep_mac(me)),
        mtu: underlay.mtu,
        version: env!("CARGO_PKG_VERSION").to_string(),
        address_reason: reason.clone(),
        capabilities: vec!["routed".into(), "vxlan".into()],
    };
    // The record and every claim go out in the first gossip message, so
    // peers never see this generation without them. Static blocks always
    // win: claimed at the beginning of time.
    let claim = |b: &ipnet::IpNet, at: u64| {
        (
            format!("{}{b}", muslin_model::cluster::BLOCK_KEY_PREFIX),
            serde_json::to_string(&BlockClaim { claimed_at_ms: at }).expect("serializes"),
        )
    };
    let mut initial = vec![(
        muslin_model::cluster::NODE_KEY.to_string(),
        serde_json::to_string(&record).expect("serializes"),
    )];
    initial.extend(config.blocks.iter().map(|b| claim(b, 0)));
    if let Some(l) = &leases {
        initial.extend(l.claims.iter().map(|(b, at)| claim(b, *at)));
    }
    let store = if etcd {
        let s = Etcd::start(EtcdConfig {
            endpoints: config.etcd_endpoints.clone(),
            prefix: config.etcd_prefix.clone(),
            node_name: me.to_string(),
            ca_file: config.etcd_ca_file.clone(),
            cert_file: config.etcd_cert_file.clone(),
            key_file: config.etcd_key_file.clone(),
            ttl,
            alive_ttl: (interval * 30).max(Duration::from_secs(6)),
        })
        .await
        .map_err(|e| AgentError::Join(e.to_string()))?;
        let s = AnyStore::Etcd(Box::new(s));
        s.publish_record(&record).await;
        for b in &config.blocks {
            s.claim_block(*b, BlockClaim { claimed_at_ms: 0 }).await;
        }
        if let Some(l) = &leases {
            for (b, at) in &l.claims {
                s.claim_block(*b, BlockClaim { claimed_at_ms: *at }).await;
            }
        }
        tracing::info!(endpoints = ?config.etcd_endpoints, prefix = %config.etcd_prefix, "cluster state in etcd");
        s
    } else {
        AnyStore::Gossip(
            Gossip::start(gcfg, initial)
                .await
                .map_err(|e| AgentError::Join(e.to_string()))?,
        )
    };
    if !peers.is_empty() && !etcd {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !store.synced() && Instant::now() < deadline {
            if let Some(problem) = store.auth_problem() {
                return Err(AgentError::Join(problem));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if store.synced() {
            tracing::info!("joined the cluster");
        } else {
            tracing::warn!(peers = ?peers, "no join peer answered yet; going on and retrying in the background");
        }
    }
    Ok(Some(Cluster {
        me: me.to_string(),
        store,
        underlay,
        reason,
        backend,
        vx: VxlanSettings {
            vni: config.vxlan_vni,
            port: config.vxlan_port,
        },
        status: Arc::new(RwLock::new(ClusterStatus::default())),
        leases,
        interval,
        pod_cidr: config.pod_cidr,
        masquerade: config.masquerade,
    }))
}

impl Cluster {
    /// Runs until dropped: leases, then the data plane, every gossip round.
    pub async fn run(mut self, host: Netlink, blocks: Arc<BlockSource>) {
        let started = Instant::now();
        let mut last: Option<Desired> = None;
        let mut last_full = Instant::now() - Duration::from_secs(3600);
        let mut more = false;
        let mut masq_nodes: Option<Vec<std::net::IpAddr>> = None;
        loop {
            let view = self.store.view().await;
            let nodes: Vec<std::net::IpAddr> = view
                .nodes
                .values()
                .filter_map(|n| n.record.as_ref().map(|r| r.address))
                .collect();
            if masq_nodes.as_ref() != Some(&nodes) {
                match muslin_kernel::cluster::apply_masquerade(
                    self.pod_cidr,
                    self.masquerade,
                    &nodes,
                ) {
                    Ok(()) => masq_nodes = Some(nodes),
                    Err(e) => tracing::warn!(cause = %e, "masquerade not configured; retrying"),
                }
            }
            if let Some(l) = self.leases.as_mut() {
                let step = l.step(&view, more);
                more = false;
                for b in &step.release {
                    self.store.release_block(*b).await;
                }
                for (b, c) in step.reclaim {
                    self.store.claim_block(b, c).await;
                }
                if let Some((b, c)) = step.claim {
                    self.store.claim_block(b, c).await;
                }
                blocks.set(step.settled);
            }
            let d = desired(
                &view,
                &self.me,
                self.backend,
                &self.underlay,
                self.vx,
                vtep_mac(&self.me),
                self.pod_cidr,
            );
            // Deleting needs a complete view: not before we heard from the
            // cluster, and not in the first rounds after a restart.
            let allow_deletes = self.store.synced() && started.elapsed() > self.interval * 10;
            let full = last_full.elapsed() > Duration::from_secs(5);
            if full || last.as_ref() != Some(&d) {
                if let Err(e) = self
                    .converge(&host, &d, last.as_ref(), full, allow_deletes)
                    .await
                {
                    tracing::warn!(cause = %e, "data plane not converged; retrying");
                } else {
                    last = Some(d.clone());
                    if full {
                        last_full = Instant::now();
                    }
                }
            }
            self.publish_status(&view, &d).await;
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = blocks.wanted() => more = true,
            }
        }
    }

    async fn converge(
        &self,
        host: &Netlink,
        d: &Desired,
        last: Option<&Desired>,
        full: bool,
        allow_deletes: bool,
    ) -> Result<(), muslin_kernel::KernelError> {
        if let Some(vx) = &d.vxlan {
            if full || last.and_then(|l| l.vxlan.as_ref()) != Some(vx) {
                muslin_kernel::cluster::ensure_vxlan(host, vx).await?;
            }
        }
        let applied = muslin_kernel::cluster::apply(host, d, allow_deletes).await?;
        if applied.changed() {
            tracing::info!(
                added = applied.added,
                removed = applied.removed,
                routes = d.routes.len(),
                "data plane converged"
            );
        }
        Ok(())
    }

    async fn publish_status(&self, view: &ClusterView, d: &Desired) {
        let owners = view.block_owners();
        let mut warnings = Vec::new();
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
        let nodes = view
            .nodes
            .iter()
            .map(|(name, p)| PeerStatus {
                name: name.clone(),
                address: p.record.as_ref().map(|r| r.address),
                blocks: owners
                    .iter()
                    .filter(|(_, o)| *o == name)
                    .map(|(b, _)| *b)
                    .collect(),
                path: if *name == self.me {
                    "self".into()
                } else {
                    match d.paths.get(name) {
                        Some(Path::Routed) => "routed".into(),
                        Some(Path::Vxlan) => "vxlan".into(),
                        Some(Path::Unreachable(why)) => format!("unreachable: {why}"),
                        None => "unknown".into(),
                    }
                },
                alive: p.alive,
            })
            .collect();
        let (sent, received, requests) = self.store.traffic();
        let mut s = self.status.write().await;
        let was_warned = s.warnings.clone();
        *s = ClusterStatus {
            underlay_if: self.underlay.ifname.clone(),
            underlay_address: Some(self.underlay.address),
            underlay_reason: self.reason.clone(),
            underlay_mtu: self.underlay.mtu,
            backend: format!("{:?}", self.backend).to_lowercase(),
            synced: self.store.synced(),
            nodes,
            warnings,
            datastore: self.store.name().into(),
            gossip_bytes_sent: sent,
            gossip_bytes_received: received,
            etcd_requests: requests,
        };
        for w in s.warnings.iter().filter(|w| !was_warned.contains(w)) {
            tracing::warn!("{w}");
        }
    }
}
