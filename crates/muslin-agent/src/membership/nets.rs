//! Networks besides the default one in the cluster loop: their leases,
//! their data planes, and the operators' requests to create, delete and
//! list them.

use std::collections::BTreeMap;

use muslin_model::api::NetworkStatus;
use muslin_model::cni::{CniError, ErrorCode};
use muslin_model::dataplane::{desired, Backend, Desired, Params, VxlanSettings};
use muslin_model::network::{self, CreateContext, NetworkSpec};
use muslin_plan::nft::{NftFamily, NftNetwork, NftObserved};
use muslin_store::ClusterStore;

use super::Cluster;
use crate::leases::Leases;
use crate::networks::{Ask, Networks};

/// One network's leases on this node.
pub(super) struct NetState {
    spec: NetworkSpec,
    leases: Leases,
}

/// One network's data plane on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NetPlane {
    pub spec: NetworkSpec,
    pub desired: Desired,
    /// Whether the hosts route to its containers.
    pub reach: bool,
}

/// Where the network records this node knows are kept across restarts.
const KNOWN_FILE: &str = "networks.json";

pub(super) fn load_known(dir: &std::path::Path) -> BTreeMap<String, NetworkSpec> {
    let file = dir.join(KNOWN_FILE);
    match std::fs::read(&file).map(|b| serde_json::from_slice(&b)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            tracing::warn!(cause = %e, file = ?file, "ignoring an unreadable network list; the cluster will tell it again");
            BTreeMap::new()
        }
        Err(_) => BTreeMap::new(),
    }
}

impl Cluster {
    /// Every network record this node knows. On gossip, what the store
    /// shows merged into what this node kept: a network must not vanish
    /// when every node that held it restarts (a cluster of one, a full
    /// power cut). etcd keeps the records itself and is believed alone.
    pub(super) fn learn_networks(
        &mut self,
        view: &muslin_model::cluster::ClusterView,
    ) -> BTreeMap<String, NetworkSpec> {
        // A record no agent would write (a broken or hostile node's) is
        // neither kept nor passed on; a deletion needs only a good name.
        let usable = |n: &&NetworkSpec| {
            if n.deleted() {
                network_name_ok(&n.name)
            } else {
                n.problem().is_none()
            }
        };
        let mut known = if self.store.name() == "etcd" {
            if self.store.synced() {
                view.networks
                    .values()
                    .filter(usable)
                    .map(|n| (n.name.clone(), n.clone()))
                    .collect()
            } else {
                // Until etcd answers, what it said last.
                self.known_networks.clone()
            }
        } else {
            let mut k = self.known_networks.clone();
            for n in view.networks.values().filter(usable) {
                network::merge(&mut k, n.clone());
            }
            // Deletions are forgotten after a while, as in the store.
            let now = crate::leases::now_ms();
            k.retain(|_, n| {
                n.deleted_at_ms
                    .is_none_or(|t| now.saturating_sub(t) < network::TOMBSTONE_MS)
            });
            k
        };
        if known != self.known_networks {
            self.save_known(&known);
            std::mem::swap(&mut self.known_networks, &mut known);
            known = self.known_networks.clone();
        }
        known
    }

    fn save_known(&self, known: &BTreeMap<String, NetworkSpec>) {
        let file = self.state_dir.join(KNOWN_FILE);
        let bytes = serde_json::to_vec(known).expect("records serialize");
        if let Err(e) = crate::atomic_file::write(&file, &bytes) {
            tracing::warn!(cause = %e, file = ?file, "could not save the network list");
        }
    }

    /// Records a write of this node's on disk before it is answered: a
    /// network created (or deleted) here survives a crash right after.
    fn remember(&mut self, rec: &NetworkSpec) {
        let mut known = self.known_networks.clone();
        network::merge(&mut known, rec.clone());
        self.save_known(&known);
        self.known_networks = known;
    }

    /// The networks in force here: those `effective` keeps, once this node
    /// has known each for the settle time (like a block claim), so that a
    /// network created at the same moment on another host with the same
    /// id or VNI is seen, and the rule that the earlier one wins has
    /// decided, before any container joins either.
    pub(super) fn settled(
        &mut self,
        live: BTreeMap<String, NetworkSpec>,
    ) -> BTreeMap<String, NetworkSpec> {
        let now = std::time::Instant::now();
        self.first_seen
            .retain(|(name, at), _| live.get(name).is_some_and(|n| n.created_at_ms == *at));
        let settle = self.settle;
        let (settled, settling): (BTreeMap<_, _>, BTreeMap<_, _>) =
            live.into_iter().partition(|(name, n)| {
                let seen = self
                    .first_seen
                    .entry((name.clone(), n.created_at_ms))
                    .or_insert(now);
                now.duration_since(*seen) >= settle
            });
        self.settling = settling;
        settled
    }

    /// Which networks this host routes to: `network::host_reach`, less any
    /// whose subnet covers a route of this host's own (the host's traffic
    /// there must not be pulled into the network).
    pub(super) fn reach(&self, live: &BTreeMap<String, NetworkSpec>) -> Vec<String> {
        network::host_reach(live, self.pod_cidr)
            .into_iter()
            .filter(|name| self.shadowed(&live[name]).is_none())
            .collect()
    }

    /// A route of this host's own that `n`'s subnet overlaps.
    pub(super) fn shadowed(&self, n: &NetworkSpec) -> Option<ipnet::IpNet> {
        self.host
            .foreign
            .iter()
            .find(|r| {
                r.prefix_len() > 0 && n.subnets.iter().any(|s| s.contains(*r) || r.contains(s))
            })
            .copied()
    }

    /// Leases blocks of every network in force (a first one when an ADD
    /// asks) and gives up the blocks of networks gone, unless containers
    /// of this node still hold addresses in them (their blocks stay
    /// claimed, so no other node hands those addresses out again).
    pub(super) async fn lease_networks(
        &mut self,
        view: &muslin_model::cluster::ClusterView,
        live: &BTreeMap<String, NetworkSpec>,
        networks: &Networks,
        in_use: &std::collections::BTreeSet<String>,
    ) {
        let gone: Vec<String> = self
            .nets
            .iter()
            .filter(|(name, st)| live.get(*name).is_none_or(|n| !same_network(n, &st.spec)))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if in_use.contains(&name) {
                tracing::warn!(network = %name, "network gone while containers of this node are on it: its blocks stay claimed until they leave");
                continue;
            }
            let mut st = self.nets.remove(&name).expect("listed");
            for b in st.leases.release_all() {
                self.store.release_block(&name, b).await;
            }
            networks.forget(&name);
            tracing::info!(network = %name, "network gone; its blocks are released");
        }
        for n in live.values() {
            if self
                .nets
                .get(&n.name)
                .is_some_and(|st| !same_network(n, &st.spec))
            {
                // Held for containers of a previous network of this name.
                continue;
            }
            if !self.nets.contains_key(&n.name) {
                match Leases::load_network(&self.state_dir, &self.me, n, self.settle, self.ttl) {
                    Ok(leases) => {
                        self.nets.insert(
                            n.name.clone(),
                            NetState {
                                spec: n.clone(),
                                leases,
                            },
                        );
                    }
                    Err(e) => {
                        tracing::error!(network = %n.name, cause = %e, "cannot load the network's leases");
                        continue;
                    }
                }
            }
            let st = self.nets.get_mut(&n.name).expect("inserted");
            let source = networks.blocks(&n.name);
            let step = st
                .leases
                .step(&view.of_network(&n.name), source.take_asked());
            for b in &step.release {
                self.store.release_block(&n.name, *b).await;
            }
            for (b, c) in step.reclaim {
                self.store.claim_block(&n.name, b, c).await;
            }
            if let Some((b, c)) = step.claim {
                self.store.claim_block(&n.name, b, c).await;
            }
            source.set(step.settled);
        }
    }

    /// Each network's data plane: always a tunnel of its own VNI.
    pub(super) fn network_planes(
        &self,
        view: &muslin_model::cluster::ClusterView,
        live: &BTreeMap<String, NetworkSpec>,
        path_mtu: &BTreeMap<String, u32>,
    ) -> Vec<NetPlane> {
        let reach = self.reach(live);
        // Encrypted, a network's VXLAN crosses inside WireGuard: its
        // packets are that much smaller.
        let wg = match self.encrypt {
            true => muslin_model::encryption::overhead(self.underlay.address),
            false => 0,
        };
        let underlay = muslin_model::dataplane::Underlay {
            mtu: self.underlay.mtu - wg,
            ..self.underlay.clone()
        };
        let path_mtu: BTreeMap<String, u32> = path_mtu
            .iter()
            .map(|(n, m)| (n.clone(), m.saturating_sub(wg)))
            .collect();
        live.values()
            .map(|n| {
                let dev = n.vxlan_dev();
                let d = desired(
                    &view.of_network(&n.name),
                    &Params {
                        me: &self.me,
                        backend: Backend::Vxlan,
                        local: &underlay,
                        vx: VxlanSettings {
                            vni: n.vni,
                            port: self.vx.port,
                        },
                        vtep_mac: muslin_model::cluster::vtep_mac(&self.me),
                        pod_cidr: n.subnets[0],
                        local_addresses: &self.host.addresses,
                        path_mtu: &path_mtu,
                        dev: &dev,
                        table: n.table(),
                        // An isolated network's packets to the hosts take
                        // the main routing, where they are dropped.
                        pod_table: (!n.isolated_from_host).then(|| n.pod_table()),
                        tunnel_always: true,
                        health: &self.record.health,
                        relays: &self.relays,
                        encrypt: self.encrypt,
                        wg_kind: self.wg_kind,
                    },
                );
                NetPlane {
                    spec: n.clone(),
                    desired: d,
                    reach: reach.contains(&n.name),
                }
            })
            .collect()
    }

    /// Answers an operator's request.
    pub(super) async fn answer(
        &mut self,
        ask: Ask,
        view: &muslin_model::cluster::ClusterView,
        live: &BTreeMap<String, NetworkSpec>,
        host: &muslin_kernel::Executor,
    ) {
        match ask {
            Ask::Create(req, reply) => {
                let _ = reply.send(self.create(&req, view, live).await);
            }
            Ask::Delete(name, reply) => {
                let _ = reply.send(self.delete(&name, view, live).await);
            }
            Ask::List(reply) => {
                let counters = match host.masquerade(NftFamily::Ip).await {
                    Ok(o) => Some(o),
                    Err(e) => {
                        tracing::warn!(cause = %e, "cannot read the network drop counters");
                        None
                    }
                };
                let mut all = vec![self.default_status(view, counters.as_ref())];
                all.extend(self.statuses(view, live, counters.as_ref()));
                let settling = self.settling.clone();
                all.extend(self.statuses(view, &settling, None).into_iter().map(|s| {
                    NetworkStatus {
                        settling: true,
                        ..s
                    }
                }));
                let _ = reply.send(all);
            }
            Ask::Policy(p) => self.answer_policy(p, host).await,
            Ask::RotateKey(reply) => {
                let _ = reply.send(self.rotate_key().await);
            }
            Ask::WireguardStatus(reply) => {
                let _ = reply.send(self.wireguard_status().await);
            }
        }
    }

    async fn create(
        &mut self,
        req: &network::CreateNetwork,
        view: &muslin_model::cluster::ClusterView,
        live: &BTreeMap<String, NetworkSpec>,
    ) -> Result<NetworkSpec, CniError> {
        // The host's own routes and every node's underlay subnet.
        let mut routes = self.host.foreign.clone();
        routes.extend(
            view.nodes
                .values()
                .filter_map(|p| p.record.as_ref().map(|r| r.underlay_prefix)),
        );
        let cx = CreateContext {
            default_cidr: self.pod_cidr,
            default_vni: self.vx.vni,
            host_routes: &routes,
            me: &self.me,
            now_ms: crate::leases::now_ms(),
        };
        // A deleted name may be created again; the records merge by time.
        if live.contains_key(&req.name) {
            return Err(CniError::new(
                ErrorCode::InvalidConfig,
                format!("name: network {} exists already", req.name),
            ));
        }
        let spec = network::create(req, &self.known_networks, &cx)
            .map_err(|e| CniError::new(ErrorCode::InvalidConfig, e.to_string()))?;
        self.store
            .put_network(&spec)
            .await
            .map_err(|e| CniError::new(ErrorCode::InvalidConfig, format!("name: {e}")))?;
        self.remember(&spec);
        tracing::info!(network = %spec.name, subnets = ?spec.subnets, vni = spec.vni, id = spec.id, "network created");
        Ok(spec)
    }

    async fn delete(
        &mut self,
        name: &str,
        view: &muslin_model::cluster::ClusterView,
        live: &BTreeMap<String, NetworkSpec>,
    ) -> Result<(), CniError> {
        if name == muslin_model::DEFAULT_NETWORK {
            return Err(CniError::new(
                ErrorCode::InvalidConfig,
                "name: the default network cannot be deleted",
            ));
        }
        let Some(spec) = live.get(name).or(self.settling.get(name)).cloned() else {
            return Err(CniError::new(
                ErrorCode::InvalidConfig,
                format!("name: network {name} does not exist"),
            ));
        };
        let users: Vec<String> = view
            .endpoints()
            .into_iter()
            .filter(|e| e.network == name)
            .map(|e| format!("{}/{}/{}", e.node, e.container_id, e.ifname))
            .collect();
        if !users.is_empty() {
            return Err(CniError::new(
                ErrorCode::InvalidConfig,
                format!(
                    "network {name} still has {} endpoint(s): {}; detach them first",
                    users.len(),
                    users.join(", ")
                ),
            ));
        }
        let now = crate::leases::now_ms().max(spec.created_at_ms + 1);
        let tombstone = NetworkSpec {
            deleted_at_ms: Some(now),
            created_by: self.me.clone(),
            ..spec.clone()
        };
        self.store
            .put_network(&tombstone)
            .await
            .map_err(|e| CniError::new(ErrorCode::Internal, e))?;
        self.remember(&tombstone);
        tracing::info!(network = %name, "network deleted");
        Ok(())
    }

    fn default_status(
        &self,
        view: &muslin_model::cluster::ClusterView,
        counters: Option<&NftObserved>,
    ) -> NetworkStatus {
        let owners = view.block_owners();
        NetworkStatus {
            name: muslin_model::DEFAULT_NETWORK.into(),
            subnets: vec![self.pod_cidr],
            vni: self.vx.vni,
            id: 0,
            isolated_from_host: false,
            host_reach: true,
            host_reach_why: None,
            endpoints: endpoints_of(view, muslin_model::DEFAULT_NETWORK),
            nodes: nodes_of(&owners),
            dropped_leaving: counters
                .and_then(|c| c.counters.get(&muslin_plan::nft::default_leaving_tag()))
                .copied()
                .unwrap_or(0),
            dropped_to_host: 0,
            created_by: None,
            settling: false,
        }
    }

    /// The networks in force as `status` and `network list` show them.
    pub(super) fn statuses(
        &self,
        view: &muslin_model::cluster::ClusterView,
        live: &BTreeMap<String, NetworkSpec>,
        counters: Option<&NftObserved>,
    ) -> Vec<NetworkStatus> {
        let reach = self.reach(live);
        live.values()
            .map(|n| {
                let (leaving, to_host) = NftNetwork::of(n, reach.contains(&n.name)).drop_tags();
                let count = |t: &String| {
                    counters
                        .and_then(|c| c.counters.get(t))
                        .copied()
                        .unwrap_or(0)
                };
                let reached = reach.contains(&n.name);
                NetworkStatus {
                    name: n.name.clone(),
                    subnets: n.subnets.clone(),
                    vni: n.vni,
                    id: n.id,
                    isolated_from_host: n.isolated_from_host,
                    host_reach: reached,
                    host_reach_why: (!reached).then(|| match self.shadowed(n) {
                        _ if n.isolated_from_host => "isolated from the hosts".to_string(),
                        Some(r) => format!("its subnet overlaps {r}, a route of this host"),
                        None => {
                            "it overlaps the default network or an older network the hosts route to"
                                .to_string()
                        }
                    }),
                    endpoints: endpoints_of(view, &n.name),
                    nodes: nodes_of(&view.of_network(&n.name).block_owners()),
                    dropped_leaving: count(&leaving),
                    dropped_to_host: count(&to_host),
                    created_by: Some(n.created_by.clone()),
                    settling: false,
                }
            })
            .collect()
    }
}

fn network_name_ok(name: &str) -> bool {
    muslin_model::cluster::valid_network_id(name) && name != muslin_model::DEFAULT_NETWORK
}

/// A record of the same network: a name deleted and created again is
/// another network (new id, maybe another subnet).
fn same_network(a: &NetworkSpec, b: &NetworkSpec) -> bool {
    (a.id, &a.subnets, a.block_size, a.created_at_ms)
        == (b.id, &b.subnets, b.block_size, b.created_at_ms)
}

fn endpoints_of(view: &muslin_model::cluster::ClusterView, network: &str) -> Vec<String> {
    view.endpoints()
        .into_iter()
        .filter(|e| e.network == network)
        .map(|e| format!("{}/{}/{}", e.node, e.container_id, e.ifname))
        .collect()
}

fn nodes_of(owners: &BTreeMap<ipnet::IpNet, String>) -> Vec<String> {
    let mut v: Vec<String> = owners.values().cloned().collect();
    v.sort();
    v.dedup();
    v
}
