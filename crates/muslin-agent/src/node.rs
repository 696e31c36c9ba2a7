//! The node: the endpoint table, its persistence and the kernel plumbing of
//! each attachment, behind the operations the local API offers.

use std::collections::HashSet;
use std::sync::Arc;

use ipnet::IpNet;
use muslin_kernel::{Executor, KernelError, Lane, OnFailure};
use muslin_model::agent_config::AgentConfig;
use muslin_model::api::{
    AddRequest, Added, BlockStatus, CheckRequest, ClusterStatus, DelRequest, EndpointStatus,
    GcRequest, NodeStatus,
};
use muslin_model::cluster::EndpointRecord;
use muslin_model::cni::{CniError, ErrorCode};
use muslin_model::ipam::{capacity, AttachmentKey, Endpoint, EndpointTable, IpamError};
use muslin_model::naming::{format_mac, host_ifname};
use muslin_model::network::NetworkSpec;
use muslin_model::plumbing::{plan_in, AttachmentPlan, Placement};
use muslin_plan::object::Ns;
use muslin_plan::{attachment, repair, Change, Step};
use tokio::sync::{watch, Mutex, RwLock};

use crate::blocks::BlockSource;
use crate::key_locks::KeyLocks;
use crate::state_store::StateStore;

mod reap;

pub struct Node {
    pub config: AgentConfig,
    pub node_name: String,
    /// MTU of pod interfaces: configured, or derived from the underlay.
    pub mtu: u32,
    pub blocks: Arc<BlockSource>,
    pub cluster: Option<Arc<RwLock<ClusterStatus>>>,
    /// Networks besides the default one; `None` without a cluster.
    pub networks: Option<Arc<crate::networks::Networks>>,
    /// The name service; `None` when the agent serves no DNS.
    pub dns: Option<Arc<crate::dns::Shared>>,
    executor: Executor,
    table: Mutex<Versioned>,
    writer: Mutex<u64>,
    store: Arc<StateStore>,
    locks: KeyLocks<AttachmentKey>,
    /// The endpoints the cluster should see: recorded and attached. The
    /// cluster loop publishes whatever this holds.
    pub endpoints: watch::Sender<Vec<EndpointRecord>>,
    /// New attachments between their record and their interface: not
    /// published until the ADD succeeds.
    attaching: std::sync::Mutex<HashSet<AttachmentKey>>,
    /// The CNI requests' latencies and outcomes, for the metrics.
    pub metrics: crate::metrics::Live,
}

/// The table and a counter bumped on every change, so that one durable
/// write can cover all changes made while the previous write ran.
struct Versioned {
    table: EndpointTable,
    generation: u64,
}

pub fn kernel_error(e: KernelError) -> CniError {
    match &e {
        KernelError::NetnsMissing(_) => CniError::new(ErrorCode::UnknownContainer, e.to_string()),
        KernelError::NotNetns { path, what } => CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("CNI_NETNS {path:?} is not a network namespace: it is {what}"),
        ),
        KernelError::OwnNetns(p) => CniError::new(
            ErrorCode::InvalidEnvironment,
            format!(
                "CNI_NETNS {p:?} is the host's own network namespace (the agent's): \
                 attaching there would give the host the container's address and \
                 default route; pass the container's namespace"
            ),
        ),
        KernelError::InterfaceExists(_) => CniError::new(ErrorCode::InterfaceExists, e.to_string()),
        KernelError::Netlink { .. } | KernelError::Io { .. } => {
            CniError::new(ErrorCode::Kernel, e.to_string())
        }
    }
}

fn internal(e: impl std::fmt::Display) -> CniError {
    CniError::new(ErrorCode::Internal, e.to_string())
}

impl Node {
    pub fn new(
        config: AgentConfig,
        node_name: String,
        executor: Executor,
        store: StateStore,
        table: EndpointTable,
        mtu: u32,
        blocks: Arc<BlockSource>,
    ) -> Self {
        Node {
            config,
            node_name,
            mtu,
            blocks,
            cluster: None,
            networks: None,
            dns: None,
            executor,
            table: Mutex::new(Versioned {
                table,
                generation: 0,
            }),
            writer: Mutex::new(0),
            store: Arc::new(store),
            locks: KeyLocks::new(),
            endpoints: watch::Sender::new(Vec::new()),
            attaching: std::sync::Mutex::new(HashSet::new()),
            metrics: crate::metrics::Live::default(),
        }
    }

    /// The networks, or why there are none.
    pub fn networks(&self) -> Result<&Arc<crate::networks::Networks>, CniError> {
        self.networks.as_ref().ok_or_else(|| {
            CniError::new(
                ErrorCode::NotAvailable,
                "this agent runs without a cluster (no underlay, no peers): it has only the default network",
            )
        })
    }

    /// Recomputes what the cluster should see of this node's endpoints.
    /// Level-triggered: called after every change and by the reconciler.
    pub async fn publish_endpoints(&self) {
        // Computed and sent under the table's lock: two ADDs finishing at
        // once must not send their snapshots in the wrong order, which
        // would leave the older one published (its container unnamed and
        // unknown to other hosts) until the next change or reconcile.
        let v = self.table.lock().await;
        let records: Vec<EndpointRecord> = {
            let attaching = self.attaching.lock().expect("attaching");
            v.table
                .endpoints
                .iter()
                .filter(|(k, _)| !attaching.contains(*k))
                .map(|(k, e)| endpoint_record(&self.node_name, k, e))
                .collect()
        };
        self.endpoints.send_if_modified(|r| {
            if *r != records {
                *r = records;
                true
            } else {
                false
            }
        });
        drop(v);
    }

    /// Returns once a snapshot at least as new as `generation` is on disk.
    async fn persist(&self, generation: u64) -> Result<(), CniError> {
        let mut written = self.writer.lock().await;
        if *written >= generation {
            return Ok(());
        }
        let (gen, bytes) = {
            let v = self.table.lock().await;
            (v.generation, v.table.to_json())
        };
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.save(&bytes))
            .await
            .map_err(internal)?
            .map_err(internal)?;
        *written = gen;
        Ok(())
    }

    async fn mutate<T>(&self, f: impl FnOnce(&mut EndpointTable) -> T) -> (T, u64) {
        let mut v = self.table.lock().await;
        let out = f(&mut v.table);
        v.generation += 1;
        (out, v.generation)
    }

    /// Changes the labels of the endpoints of one container of this host
    /// (every interface of it): found by container id, a unique prefix of
    /// it, or `NAMESPACE/POD`. Persisted, then published: policies follow
    /// on every host within a gossip round or two.
    pub async fn relabel(
        &self,
        target: &str,
        set: std::collections::BTreeMap<String, String>,
        remove: Vec<String>,
    ) -> Result<std::collections::BTreeMap<String, String>, CniError> {
        use muslin_model::cni::{LABELS_MAX, LABELS_TOTAL_MAX};
        crate::membership::policies::check_labels(&set, &remove)?;
        let bad = |m: String| CniError::new(ErrorCode::InvalidConfig, m);
        let (res, gen) = self
            .mutate(|t| {
                let keys: Vec<AttachmentKey> = t
                    .endpoints
                    .iter()
                    .filter(|(k, e)| {
                        k.container_id == target
                            || (target.len() >= 6 && k.container_id.starts_with(target))
                            || e.pod.as_deref() == Some(target)
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                let containers: std::collections::BTreeSet<&str> =
                    keys.iter().map(|k| k.container_id.as_str()).collect();
                if containers.is_empty() {
                    return Err(bad(format!(
                        "no endpoint {target:?} on this host: labels are changed on the host that holds the endpoint"
                    )));
                }
                if containers.len() > 1 {
                    return Err(bad(format!(
                        "{target:?} names {} containers; give more of the container id",
                        containers.len()
                    )));
                }
                let mut labels = t.endpoints[&keys[0]].labels.clone();
                for k in &remove {
                    labels.remove(k);
                }
                labels.extend(set);
                let total: usize = labels.iter().map(|(k, v)| k.len() + v.len()).sum();
                if labels.len() > LABELS_MAX || total > LABELS_TOTAL_MAX {
                    return Err(bad(format!(
                        "at most {LABELS_MAX} labels of {LABELS_TOTAL_MAX} bytes in all"
                    )));
                }
                for k in &keys {
                    if let Some(e) = t.endpoints.get_mut(k) {
                        e.labels = labels.clone();
                    }
                }
                Ok(labels)
            })
            .await;
        let labels = res?;
        self.persist(gen).await?;
        self.publish_endpoints().await;
        Ok(labels)
    }

    pub async fn add(&self, req: AddRequest) -> Result<Added, CniError> {
        self.executor
            .check_netns(req.netns.clone())
            .await
            .map_err(kernel_error)?;
        let _guard = self.locks.lock(&req.key).await;
        // A retried ADD of a published attachment stays published.
        let new = !self
            .table
            .lock()
            .await
            .table
            .endpoints
            .contains_key(&req.key);
        if new {
            self.attaching
                .lock()
                .expect("attaching")
                .insert(req.key.clone());
        }
        let r = self.attach(&req).await;
        self.attaching.lock().expect("attaching").remove(&req.key);
        self.publish_endpoints().await;
        r
    }

    /// The network an ADD joins: the configuration's `network`, else the
    /// network named like the configuration, else the default network
    /// (`None`).
    async fn network_of(&self, req: &AddRequest) -> Result<Option<NetworkSpec>, CniError> {
        let name = req.network.as_deref().unwrap_or(&req.key.network);
        if name == muslin_model::DEFAULT_NETWORK {
            return Ok(None);
        }
        if let Some(n) = &self.networks {
            if !n.ready().await {
                return Err(CniError::new(
                    ErrorCode::TryAgainLater,
                    "the agent does not know the cluster's networks yet (it is starting)",
                ));
            }
        }
        let found = match &self.networks {
            Some(n) => n.get_or_wait(name).await,
            None => None,
        };
        match (found, &req.network) {
            (Some(n), _) => Ok(Some(n)),
            (None, None) => Ok(None),
            (None, Some(_)) if self.networks.is_none() => Err(CniError::new(
                ErrorCode::InvalidConfig,
                format!("network {name:?}: this agent runs without a cluster, so it has only the default network"),
            )),
            (None, Some(_)) => Err(CniError::new(
                ErrorCode::InvalidConfig,
                format!("network {name:?} does not exist (`muslin network list` shows those that do; `muslin network create` makes one)"),
            )),
        }
    }

    async fn attach(&self, req: &AddRequest) -> Result<Added, CniError> {
        let net = self.network_of(req).await?;
        let default_mtu = match (&net, &self.networks) {
            (Some(_), Some(n)) => n.tunnel_mtu,
            _ => self.mtu,
        };
        let mtu = req.mtu.unwrap_or(default_mtu);
        let (addresses, place, fresh) = self.allocate(req, net.as_ref(), mtu).await?;
        let p = plan_in(&req.key, &addresses, mtu, &place);
        let dns = self.dns_for(net.as_ref(), req.pod_namespace.as_deref(), &addresses);
        // A retried ADD (the runtime timed out, the plugin was killed) of an
        // attachment that is complete gets its result, not a rebuilt veth.
        if !fresh && matches!(self.problems(&p, &req.netns).await, Ok(v) if v.is_empty()) {
            return Ok(added(&p, dns));
        }
        let report = self
            .executor
            .apply(
                Lane::Attachment(p.host_ifname.clone()),
                attachment::create(&p, &req.netns),
                OnFailure::Rollback(attachment::rollback(&p)),
            )
            .await;
        if let Err(e) = report.into_result() {
            tracing::warn!(container = %req.key.container_id, cause = %e, "ADD failed; rolled back");
            self.release(&req.key).await;
            return Err(kernel_error(e));
        }
        tracing::info!(container = %req.key.container_id, ifname = %req.key.ifname, addresses = ?p.addresses, host_if = %p.host_ifname, "attached");
        Ok(added(&p, dns))
    }

    /// Records the attachment with an address, waiting for a first block
    /// (a lease still settling) or for one more block when all are full.
    async fn allocate(
        &self,
        req: &AddRequest,
        net: Option<&NetworkSpec>,
        mtu: u32,
    ) -> Result<(Vec<IpNet>, Placement, bool), CniError> {
        const WAIT: std::time::Duration = std::time::Duration::from_secs(10);
        let source = match (net, &self.networks) {
            (Some(n), Some(nets)) => nets.blocks(&n.name),
            _ => self.blocks.clone(),
        };
        let network_id = net
            .map(|n| n.name.clone())
            .unwrap_or_else(|| muslin_model::DEFAULT_NETWORK.to_string());
        let mut blocks = source.current();
        if blocks.is_empty() {
            blocks = source.more_than(0, WAIT).await;
            if blocks.is_empty() {
                return Err(CniError::new(
                    ErrorCode::TryAgainLater,
                    format!("this node holds no address block of network {network_id} yet (its lease is still settling)"),
                ));
            }
        }
        let mut asked_more = false;
        loop {
            let (allocated, gen) = self
                .mutate(|t| {
                    // The container's first interface carries its default
                    // route; a further one routes its network's subnets.
                    let further = t.endpoints.iter().any(|(k, e)| {
                        k.container_id == req.key.container_id
                            && k.ifname != req.key.ifname
                            && e.place.routes.is_empty()
                    });
                    let place = Placement {
                        table: net.map(NetworkSpec::table),
                        group: net.map(NetworkSpec::group),
                        routes: match (further, net) {
                            (false, _) => vec![],
                            (true, n) => {
                                let mut r = n.map_or_else(
                                    || self.config.pod_cidrs().to_vec(),
                                    |n| n.subnets.clone(),
                                );
                                // The network's resolver, which the
                                // default route of the first interface
                                // would reach in the wrong network.
                                if self.dns.is_some() {
                                    let at =
                                        muslin_model::dns::listen_address(n.map_or(0, |n| n.id));
                                    r.push(IpNet::from(std::net::IpAddr::from(at)));
                                }
                                r
                            }
                        },
                    };
                    t.allocate(req.key.clone(), &network_id, &blocks, |address| Endpoint {
                        network_id: network_id.clone(),
                        netns: Some(req.netns.clone()),
                        pod: req.pod.clone(),
                        pod_namespace: req.pod_namespace.clone(),
                        pod_name: req.pod_name.clone(),
                        labels: req.labels.clone(),
                        ports: req.ports.clone(),
                        aliases: req.aliases.clone(),
                        name: req.name.clone(),
                        place,
                        ..Endpoint::new(
                            address,
                            host_ifname(&req.key.container_id, &req.key.ifname),
                            mtu,
                        )
                    })
                    .map(|(e, fresh)| (e.addresses.clone(), e.place.clone(), fresh))
                })
                .await;
            match allocated {
                Ok(a) => {
                    // The allocation is durable before any interface exists,
                    // so a crash from here on leaves a record that DEL or GC
                    // can find.
                    if let Err(e) = self.persist(gen).await {
                        self.release(&req.key).await;
                        return Err(e);
                    }
                    return Ok(a);
                }
                Err(IpamError::Exhausted { .. }) if source.leased && !asked_more => {
                    asked_more = true;
                    tracing::info!(
                        blocks = blocks.len(),
                        "every block is full; claiming another"
                    );
                    blocks = source.more_than(blocks.len(), WAIT).await;
                }
                Err(e) => return Err(CniError::new(ErrorCode::AddressesExhausted, e.to_string())),
            }
        }
    }

    /// Best-effort removal of a record during rollback.
    async fn release(&self, key: &AttachmentKey) {
        let (_, gen) = self.mutate(|t| t.release(key)).await;
        if let Err(e) = self.persist(gen).await {
            tracing::error!(cause = %e, "could not persist a released address; GC will reclaim it");
        }
    }

    /// Releases the record durably, then removes the veth in the
    /// background: the kernel spends about 20 ms unregistering a veth (RCU
    /// grace periods), which the runtime need not wait for. The key's lock
    /// is held until the veth is gone, so a re-ADD of the same attachment
    /// waits for it; a crash before then leaves an orphaned veth, which the
    /// reconciler removes because no record names it.
    pub async fn del(&self, req: DelRequest) -> Result<(), CniError> {
        let guard = self.locks.lock(&req.key).await;
        self.forget(&req.key).await?;
        let name = host_ifname(&req.key.container_id, &req.key.ifname);
        let done = self.executor.apply(
            Lane::Attachment(name.clone()),
            vec![Step::host(Change::DeleteLink(name.clone()))],
            OnFailure::Stop,
        );
        tokio::spawn(async move {
            if let Err(e) = done.await.into_result() {
                tracing::warn!(link = %name, cause = %e, "could not remove veth; the reconciler will retry");
            }
            drop(guard);
        });
        Ok(())
    }

    /// Removes the record (if any) and waits until that is on disk.
    async fn forget(&self, key: &AttachmentKey) -> Result<(), CniError> {
        let (removed, gen) = self.mutate(|t| t.release(key)).await;
        if let Some(e) = removed {
            self.persist(gen).await?;
            tracing::info!(container = %key.container_id, ifname = %key.ifname, addresses = ?e.addresses, "detached");
            self.publish_endpoints().await;
        }
        Ok(())
    }

    /// Synchronous teardown, for GC: veth first, then the record.
    /// Idempotent, and works without a record (the name is derived).
    async fn teardown(&self, key: &AttachmentKey) -> Result<(), CniError> {
        let name = host_ifname(&key.container_id, &key.ifname);
        self.executor
            .apply(
                Lane::Attachment(name.clone()),
                vec![Step::host(Change::DeleteLink(name))],
                OnFailure::Stop,
            )
            .await
            .into_result()
            .map_err(kernel_error)?;
        self.forget(key).await
    }

    pub async fn check(&self, req: CheckRequest) -> Result<(), CniError> {
        let _guard = self.locks.lock(&req.key).await;
        let ep = self
            .table
            .lock()
            .await
            .table
            .endpoints
            .get(&req.key)
            .cloned();
        let Some(ep) = ep else {
            return Err(CniError::new(
                ErrorCode::CheckFailed,
                format!(
                    "no attachment of container {} as {} is recorded",
                    req.key.container_id, req.key.ifname
                ),
            ));
        };
        let p = plan_in(&req.key, &ep.addresses, ep.mtu, &ep.place);
        if let Some(bad) = req.expect.iter().find(|a| !p.addresses.contains(a)) {
            let had: Vec<String> = p.addresses.iter().map(|a| a.to_string()).collect();
            return Err(CniError::new(
                ErrorCode::CheckFailed,
                format!(
                    "prevResult has {bad} but the agent allocated {}",
                    had.join(", ")
                ),
            ));
        }
        let problems = self.problems(&p, &req.netns).await.map_err(kernel_error)?;
        if problems.is_empty() {
            Ok(())
        } else {
            Err(CniError::new(ErrorCode::CheckFailed, problems.join("; ")))
        }
    }

    pub async fn gc(&self, req: GcRequest) -> Result<Vec<AttachmentKey>, CniError> {
        let valid: HashSet<(String, String)> = req.valid.into_iter().collect();
        let stale = self.table.lock().await.table.stale(&req.network, &valid);
        let mut errors = Vec::new();
        for key in &stale {
            let _guard = self.locks.lock(key).await;
            if let Err(e) = self.teardown(key).await {
                errors.push(e.msg);
            }
        }
        match self.executor.host().await {
            Ok(host) => errors.extend(self.sweep_orphans(&host).await),
            Err(e) => errors.push(e.to_string()),
        }
        if !errors.is_empty() {
            return Err(CniError::new(
                ErrorCode::Kernel,
                format!("GC could not remove everything: {}", errors.join("; ")),
            ));
        }
        tracing::info!(network = %req.network, released = stale.len(), "GC done");
        Ok(stale)
    }

    /// The resolv.conf of a container in network `id` and `namespace`:
    /// the network's resolver; its namespace's names first, so a short
    /// name finds the container of its own namespace; `ndots:2`, so that
    /// `name.namespace` and `name.network` are tried in the cluster domain
    /// before upstream.
    /// None for a container without an IPv4 address (the resolvers
    /// listen on IPv4 only), and while the network's resolver cannot
    /// listen (its address might be another server's).
    fn dns_for(
        &self,
        net: Option<&NetworkSpec>,
        namespace: Option<&str>,
        addresses: &[IpNet],
    ) -> Option<muslin_model::cni::Dns> {
        let network = net.map_or(muslin_model::DEFAULT_NETWORK, |n| n.name.as_str());
        let id = net.map_or(0, |n| n.id);
        if self.dns.as_ref()?.failing(network) || !addresses.iter().any(|a| a.addr().is_ipv4()) {
            return None;
        }
        let domain = self
            .config
            .dns_domain
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let mut search = Vec::new();
        if let Some(ns) = namespace.filter(|ns| muslin_model::policy::dns_label(ns)) {
            search.push(format!("{ns}.{domain}"));
        }
        search.push(domain);
        Some(muslin_model::cni::Dns {
            nameservers: vec![muslin_model::dns::listen_address(id).into()],
            domain: None,
            search,
            options: vec!["ndots:2".into()],
        })
    }

    pub async fn status(&self) -> NodeStatus {
        let v = self.table.lock().await;
        let blocks = self
            .blocks
            .current()
            .iter()
            .map(|b| BlockStatus {
                cidr: *b,
                used: v
                    .table
                    .endpoints
                    .values()
                    .filter(|e| e.addresses.iter().any(|a| b.contains(&a.addr())))
                    .count() as u64,
                capacity: capacity(b).min(u64::MAX as u128) as u64,
            })
            .collect();
        let endpoints = v
            .table
            .endpoints
            .iter()
            .map(|(k, e)| EndpointStatus {
                key: k.clone(),
                network_id: e.network_id.clone(),
                addresses: e.addresses.clone(),
                host_ifname: e.host_ifname.clone(),
                pod: e.pod.clone(),
                labels: e.labels.clone(),
            })
            .collect();
        NodeStatus {
            node_name: self.node_name.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            mtu: self.mtu,
            blocks,
            endpoints,
            can_claim_more: self.blocks.leased,
            cluster: match &self.cluster {
                Some(c) => Some(Box::new(c.read().await.clone())),
                None => None,
            },
            dns: self.dns.as_ref().map(|d| Box::new(d.status())),
        }
    }

    /// How the attachment in `netns` differs from its plan.
    async fn problems(
        &self,
        p: &AttachmentPlan,
        netns: &std::path::Path,
    ) -> Result<Vec<String>, KernelError> {
        let host = self.executor.host().await?;
        let container = self
            .executor
            .namespace(Ns::Container(netns.to_path_buf()))
            .await?;
        Ok(attachment::check(p, &host, &container))
    }

    /// The plans of every recorded attachment.
    async fn plans(&self) -> Vec<(AttachmentKey, Endpoint, AttachmentPlan)> {
        self.table
            .lock()
            .await
            .table
            .endpoints
            .iter()
            .map(|(k, e)| {
                (
                    k.clone(),
                    e.clone(),
                    plan_in(k, &e.addresses, e.mtu, &e.place),
                )
            })
            .collect()
    }

    /// Removes host veths of ours that no record names (left by a crash
    /// between releasing a record and removing its veth, or by a lost state
    /// file). Returns what it could not remove.
    /// `host` must have been observed before this reads the records: ADD
    /// records before it creates a link, so every link listed there that is
    /// still wanted has a record in the table read here.
    async fn sweep_orphans(&self, host: &muslin_plan::HostState) -> Vec<String> {
        let pending = {
            let v = self.table.lock().await;
            let records: Vec<AttachmentPlan> = v
                .table
                .endpoints
                .iter()
                .map(|(k, e)| plan_in(k, &e.addresses, e.mtu, &e.place))
                .collect();
            // Queued while the table is locked: an ADD that records this
            // name later queues its veth after our deletion, never before.
            repair::orphans(&records, host)
                .into_iter()
                .map(|name| {
                    let done = self.executor.apply(
                        Lane::Attachment(name.clone()),
                        vec![Step::host(Change::DeleteLink(name.clone()))],
                        OnFailure::Stop,
                    );
                    (name, done)
                })
                .collect::<Vec<_>>()
        };
        let mut errors = Vec::new();
        for (name, done) in pending {
            match done.await.into_result() {
                Ok(_) => tracing::info!(link = %name, "removed an orphaned veth"),
                Err(e) => errors.push(e.to_string()),
            }
        }
        errors
    }

    /// Level-triggered repair: every recorded attachment whose veth exists
    /// gets its host route back if something removed it, and veths of ours
    /// that nothing records are removed.
    pub async fn reconcile(&self) {
        let host = match self.executor.host().await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(cause = %e, "reconcile could not read the host");
                return;
            }
        };
        for (key, ep, p) in self.plans().await {
            let changes = repair::repair(std::slice::from_ref(&p), &host);
            let restore: Vec<Step> = changes
                .into_iter()
                .filter(|c| matches!(c, Change::ReplaceRoute(_)))
                .map(Step::host)
                .collect();
            if restore.is_empty() {
                continue;
            }
            // Under the attachment's lock, and only if the record is still
            // the one we read: a DEL and a re-ADD may have moved the address.
            let _guard = self.locks.lock(&key).await;
            if self.table.lock().await.table.endpoints.get(&key) != Some(&ep) {
                continue;
            }
            tracing::info!(container = %key.container_id, "restoring a removed host route");
            let report = self
                .executor
                .apply(
                    Lane::Attachment(p.host_ifname.clone()),
                    restore,
                    OnFailure::Continue,
                )
                .await;
            for e in report.errors() {
                tracing::warn!(container = %key.container_id, cause = %e, "reconcile failed");
            }
        }
        // The host as read before the records: no second observation.
        for e in self.sweep_orphans(&host).await {
            tracing::warn!(cause = %e, "could not remove an orphaned veth");
        }
        self.publish_endpoints().await;
    }
}

pub(crate) fn endpoint_record(node: &str, k: &AttachmentKey, e: &Endpoint) -> EndpointRecord {
    EndpointRecord {
        network: e.network_id.clone(),
        addresses: e.addresses.clone(),
        container_id: k.container_id.clone(),
        ifname: k.ifname.clone(),
        node: node.to_string(),
        pod_namespace: e.pod_namespace.clone(),
        pod_name: e.pod_name.clone(),
        labels: e.labels.clone(),
        ports: e.ports.clone(),
        aliases: e.aliases.clone(),
        name: e.name.clone(),
    }
}

fn added(p: &AttachmentPlan, dns: Option<muslin_model::cni::Dns>) -> Added {
    Added {
        host_ifname: p.host_ifname.clone(),
        host_mac: format_mac(&p.host_mac),
        container_ifname: p.container_ifname.clone(),
        container_mac: format_mac(&p.container_mac),
        addresses: p.addresses.clone(),
        mtu: p.mtu,
        routes: p.place.routes.clone(),
        dns,
    }
}
