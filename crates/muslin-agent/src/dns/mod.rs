//! The name service: an embedded DNS server per network, answering the
//! cluster's names from the agent's view and forwarding the rest.
//!
//! Each network has its own listening address (`dns::listen_address`) and
//! its own sockets, marked with the network's firewall mark: a query is
//! known to come from a network by the socket it reached, and the answer
//! routes back into that network even where overlapping networks share
//! the asker's address.

mod answer;
mod listen;
mod udp;
mod upstream;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use muslin_model::agent_config::AgentConfig;
use muslin_model::api::{DnsListener, DnsStatus};
use muslin_model::cluster::{ClusterView, EndpointRecord};
use muslin_model::dns::{listen_address, Lookup, NameIndex, ServedNetwork};

use upstream::Upstream;

/// A network the name service listens in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServedNet {
    pub name: String,
    pub id: u16,
    /// The network's firewall mark (0: the default network).
    pub mark: u32,
    pub subnets: Vec<IpNet>,
}

impl ServedNet {
    pub fn address(&self) -> Ipv4Addr {
        listen_address(self.id)
    }
}

/// How often the host's resolv.conf is read again (DHCP rewrites it).
const RESOLV_CONF_REREAD: Duration = Duration::from_secs(10);
/// How long a network whose sockets could not be bound waits to retry.
const BIND_RETRY: Duration = Duration::from_secs(10);

/// What the servers and the local API share.
pub struct Shared {
    index: RwLock<Arc<NameIndex>>,
    /// Bumped when `index` is replaced: a receiver keeps its own handle
    /// until then.
    version: AtomicU64,
    upstream: RwLock<Arc<Upstream>>,
    listeners: RwLock<Vec<DnsListener>>,
    answered: AtomicU64,
    nxdomain: AtomicU64,
    forwarded: AtomicU64,
    refused: AtomicU64,
}

impl Shared {
    fn index(&self) -> Arc<NameIndex> {
        self.index.read().expect("index lock").clone()
    }

    fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    fn upstream(&self) -> Arc<Upstream> {
        self.upstream.read().expect("upstream lock").clone()
    }

    fn count_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counted per thread and added to the shared counters every 64
    /// queries: the answering threads would otherwise share one cache
    /// line they all write on every query.
    fn count(&self, l: &Lookup) {
        use std::cell::Cell;
        thread_local! {
            static PENDING: Cell<[u64; 3]> = const { Cell::new([0; 3]) };
        }
        let i = match l {
            Lookup::NxDomain => 1,
            Lookup::Forward => 2,
            _ => 0,
        };
        PENDING.with(|p| {
            let mut c = p.get();
            c[i] += 1;
            if c.iter().sum::<u64>() >= 64 {
                self.answered.fetch_add(c[0], Ordering::Relaxed);
                self.nxdomain.fetch_add(c[1], Ordering::Relaxed);
                self.forwarded.fetch_add(c[2], Ordering::Relaxed);
                c = [0; 3];
            }
            p.set(c);
        });
    }

    /// Whether `network`'s resolver failed to listen, last it tried.
    pub fn failing(&self, network: &str) -> bool {
        self.listeners
            .read()
            .expect("listeners lock")
            .iter()
            .any(|l| l.network == network && l.error.is_some())
    }

    /// Whether the name service serves `network`.
    pub fn knows(&self, network: &str) -> bool {
        self.index().has_network(network)
    }

    /// What `muslin status` shows.
    pub fn status(&self) -> DnsStatus {
        let index = self.index();
        DnsStatus {
            domain: index.domain().to_string(),
            names: index.names() as u64,
            listeners: self.listeners.read().expect("listeners lock").clone(),
            upstreams: self
                .upstream()
                .servers()
                .iter()
                .map(ToString::to_string)
                .collect(),
            answered: self.answered.load(Ordering::Relaxed),
            nxdomain: self.nxdomain.load(Ordering::Relaxed),
            forwarded: self.forwarded.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    /// `muslin dns lookup`: what a container attached to `networks`
    /// would get for `name` (A and AAAA, or PTR for an address).
    pub async fn lookup(&self, name: &str, networks: &[&str]) -> muslin_model::api::DnsAnswer {
        use muslin_model::api::DnsAnswer;
        use muslin_model::dns::{reverse_name, Kind};
        let index = self.index();
        let (qname, kind) = match name.parse::<IpAddr>() {
            Ok(a) => (reverse_name(a), Kind::Ptr),
            Err(_) => (name.to_string(), Kind::Address),
        };
        // A short name is tried in the domain, as a container's search
        // list does.
        let qualified =
            if kind == Kind::Ptr || qname.trim_end_matches('.').ends_with(index.domain()) {
                qname.clone()
            } else {
                format!("{}.{}", qname.trim_end_matches('.'), index.domain())
            };
        let visible = index.visible_by_name(networks);
        let mut out = DnsAnswer {
            query: qualified.clone(),
            networks: networks.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        };
        match index.lookup(&visible, &qualified, kind) {
            Lookup::Addresses(a) => out.addresses = a,
            Lookup::Names(n) => out.names = n,
            Lookup::NoData => out.outcome = "no records of that type".into(),
            Lookup::NxDomain => out.outcome = "NXDOMAIN: no such name in the cluster".into(),
            Lookup::Forward => {
                let upstream = self.upstream();
                let q = hickory_proto::rr::Name::from_ascii(&qname);
                let t = if kind == Kind::Ptr {
                    hickory_proto::rr::RecordType::PTR
                } else {
                    hickory_proto::rr::RecordType::A
                };
                out.outcome = match q {
                    Err(e) => format!("not a DNS name: {e}"),
                    Ok(q) => match upstream.forward(q, t).await {
                        Ok(records) => {
                            out.forwarded = records.iter().map(|r| r.data.to_string()).collect();
                            format!("forwarded to {:?}", upstream.servers())
                        }
                        Err(code) => format!("forwarded to {:?}: {code}", upstream.servers()),
                    },
                };
            }
        }
        if out.outcome.is_empty() {
            out.outcome = "answered from the cluster".into();
        }
        out
    }
}

/// A network's server while it runs; dropping it stops it.
struct Running {
    net: ServedNet,
    _server: listen::Listening,
}

pub struct NameService {
    shared: Arc<Shared>,
    domain: String,
    me: String,
    running: BTreeMap<String, Running>,
    failed: BTreeMap<String, (Instant, String)>,
    fingerprint: Option<u64>,
    configured: Vec<SocketAddr>,
    resolv_conf: PathBuf,
    timeout: Duration,
    upstream_read: Option<Instant>,
}

impl NameService {
    pub fn new(config: &AgentConfig, me: &str) -> Option<NameService> {
        if !config.dns {
            return None;
        }
        let domain = config.dns_domain.trim_end_matches('.').to_ascii_lowercase();
        let configured = config
            .dns_upstreams
            .iter()
            .filter_map(|u| muslin_model::agent_config::upstream_addr(u).ok())
            .collect();
        let timeout = Duration::from_millis(config.dns_upstream_timeout_ms);
        Some(NameService {
            shared: Arc::new(Shared {
                index: RwLock::new(Arc::new(NameIndex::build(&domain, &[], [], me))),
                version: AtomicU64::new(0),
                upstream: RwLock::new(Arc::new(Upstream::new(Vec::new(), timeout))),
                listeners: RwLock::new(Vec::new()),
                answered: AtomicU64::new(0),
                nxdomain: AtomicU64::new(0),
                forwarded: AtomicU64::new(0),
                refused: AtomicU64::new(0),
            }),
            domain,
            me: me.to_string(),
            running: BTreeMap::new(),
            failed: BTreeMap::new(),
            fingerprint: None,
            configured,
            resolv_conf: config.dns_resolv_conf.clone(),
            timeout,
            upstream_read: None,
        })
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Brings the names up to `view` (other nodes' endpoints) and `mine`
    /// (this node's, fresher than the store's copy), rebuilding only when
    /// something a name depends on changed; then the listening sockets up
    /// to `nets` and the upstream resolvers up to the configuration.
    pub fn refresh(&mut self, nets: &[ServedNet], view: &ClusterView, mine: &[EndpointRecord]) {
        let others: Vec<&EndpointRecord> = view
            .endpoints()
            .into_iter()
            .filter(|e| e.node != self.me)
            .collect();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        nets.hash(&mut h);
        for e in others.iter().copied().chain(mine.iter()) {
            (&e.network, &e.addresses, &e.container_id, &e.node).hash(&mut h);
            (&e.pod_namespace, &e.pod_name, &e.aliases).hash(&mut h);
        }
        let fp = h.finish();
        if self.fingerprint != Some(fp) {
            let served: Vec<ServedNetwork> = nets
                .iter()
                .map(|n| ServedNetwork {
                    name: n.name.clone(),
                    subnets: n.subnets.clone(),
                })
                .collect();
            let index = NameIndex::build(
                &self.domain,
                &served,
                others.into_iter().chain(mine.iter()),
                &self.me,
            );
            *self.shared.index.write().expect("index lock") = Arc::new(index);
            self.shared.version.fetch_add(1, Ordering::Release);
            self.fingerprint = Some(fp);
        }
        self.serve(nets);
        self.refresh_upstream();
    }

    fn serve(&mut self, nets: &[ServedNet]) {
        let before: Vec<String> = self.running.keys().cloned().collect();
        self.running
            .retain(|name, r| nets.iter().any(|n| n.name == *name && *n == r.net));
        for name in before.iter().filter(|n| !self.running.contains_key(*n)) {
            tracing::info!(network = %name, "stopped the network's DNS server");
        }
        self.failed
            .retain(|name, _| nets.iter().any(|n| n.name == *name));
        let mut changed = before.len() != self.running.len();
        for n in nets {
            if self.running.contains_key(&n.name)
                || self
                    .failed
                    .get(&n.name)
                    .is_some_and(|(at, _)| at.elapsed() < BIND_RETRY)
            {
                continue;
            }
            changed = true;
            let handler = || answer::NetHandler {
                network: n.name.clone(),
                shared: self.shared.clone(),
            };
            match listen::start(n, handler(), handler()) {
                Ok(server) => {
                    tracing::info!(network = %n.name, address = %n.address(), "serving DNS");
                    self.failed.remove(&n.name);
                    self.running.insert(
                        n.name.clone(),
                        Running {
                            net: n.clone(),
                            _server: server,
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(network = %n.name, address = %n.address(), cause = %e, "cannot serve DNS; retrying");
                    self.failed
                        .insert(n.name.clone(), (Instant::now(), e.to_string()));
                }
            }
        }
        if changed {
            let listeners = nets
                .iter()
                .map(|n| DnsListener {
                    network: n.name.clone(),
                    address: n.address().into(),
                    error: self.failed.get(&n.name).map(|(_, e)| e.clone()),
                })
                .collect();
            *self.shared.listeners.write().expect("listeners lock") = listeners;
        }
    }

    fn refresh_upstream(&mut self) {
        if self
            .upstream_read
            .is_some_and(|t| t.elapsed() < RESOLV_CONF_REREAD)
        {
            return;
        }
        self.upstream_read = Some(Instant::now());
        let servers = if self.configured.is_empty() {
            match std::fs::read_to_string(&self.resolv_conf) {
                Ok(text) => muslin_model::dns::upstreams_of_resolv_conf(&text, &|a| {
                    muslin_model::dns::is_listen_address(a)
                })
                .into_iter()
                .map(|a| SocketAddr::new(a, 53))
                .collect(),
                Err(e) => {
                    tracing::debug!(path = ?self.resolv_conf, cause = %e, "no upstream resolvers");
                    Vec::new()
                }
            }
        } else {
            self.configured.clone()
        };
        if self.shared.upstream().servers() != servers.as_slice() {
            tracing::info!(upstreams = ?servers, "DNS upstream resolvers");
            *self.shared.upstream.write().expect("upstream lock") =
                Arc::new(Upstream::new(servers, self.timeout));
        }
    }
}
