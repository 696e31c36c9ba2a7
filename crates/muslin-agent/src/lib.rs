//! The per-host agent. It owns the node's endpoint table and is the only
//! writer of its kernel state; the CNI plugin and the CLI are its clients.

mod atomic_file;
mod blocks;
mod dns;
mod gossip_generation;
mod host_firewall;
mod key_locks;
mod leases;
mod membership;
mod metrics;
mod networks;
mod node;
mod prober;
mod relay_state;
mod remembered_state;
mod server;
mod state_store;
mod underlay_select;
mod underlay_state;
mod uninstall;
mod wireguard;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use muslin_model::agent_config::AgentConfig;

pub use node::Node;
pub use server::BindError;
pub use state_store::{StateStore, StoreError};
pub use uninstall::uninstall;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    // Not `#[from]`, which would make the error its own source too and
    // print it twice in a `{:#}` chain.
    #[error("invalid configuration: {0}")]
    Config(muslin_model::agent_config::ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Kernel(#[from] muslin_kernel::KernelError),
    #[error("underlay: {0}")]
    Underlay(String),
    #[error("cannot join the cluster: {0}")]
    Join(String),
    #[error("another muslin agent already runs in this network namespace; two would fight over its interfaces and routes")]
    AlreadyRunning,
}

fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// How long a stopping agent lets requests in flight finish.
pub const DRAIN: Duration = Duration::from_secs(10);

/// What the agent runs on, given from outside so that tests can run the
/// node's logic in-process on a fake executor and a socket of their own.
#[derive(Default)]
pub struct Parts {
    /// Carries out kernel changes; a real one on this host's kernel when
    /// unset.
    pub executor: Option<muslin_kernel::Executor>,
    /// The local API's socket, already bound; `config.socket` when unset.
    pub listener: Option<tokio::net::UnixListener>,
}

impl From<muslin_model::agent_config::ConfigError> for AgentError {
    fn from(e: muslin_model::agent_config::ConfigError) -> Self {
        AgentError::Config(e)
    }
}

/// Runs the agent until `shutdown` resolves. Kernel state is left in place
/// on exit: a restarting agent must not interrupt traffic.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    run_with(config, Parts::default(), shutdown).await
}

/// [`run`] on the given parts. The supervisor: it owns the API server, the
/// reconciler, the cluster loop, the host firewall task and the executor.
/// On shutdown it stops accepting, lets requests in flight finish (at most
/// [`DRAIN`]), then stops the background loops, which are level-triggered
/// and pick up where they left off on the next start.
pub async fn run_with(
    config: AgentConfig,
    parts: Parts,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    config.validate()?;
    let node_name = config.node_name.clone().unwrap_or_else(host_name);
    // Abstract Unix sockets belong to a network namespace: holding this
    // name proves no other agent manages this namespace's interfaces. A
    // fake executor manages no namespace.
    let _netns_guard = match parts.executor {
        Some(_) => None,
        None => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(b"muslin-agent")
                .map_err(|e| AgentError::Join(e.to_string()))?;
            Some(
                std::os::unix::net::UnixListener::bind_addr(&addr)
                    .map_err(|_| AgentError::AlreadyRunning)?,
            )
        }
    };
    // Bound before anything is changed: an address that cannot be served
    // stops the agent at once, by the setting's name.
    let metrics_listener = match config.metrics_addr {
        Some(addr) => Some(metrics::bind(addr).await.map_err(|e| {
            AgentError::Config(muslin_model::agent_config::ConfigError {
                field: "metrics-addr".into(),
                msg: format!("cannot listen on {addr}: {e}"),
            })
        })?),
        None => None,
    };
    let store = StateStore::open(&config.state_dir)?;
    let table = store.load()?;
    for (k, e) in &table.endpoints {
        // Leased blocks are not known yet; only fixed ones can be judged.
        for a in &e.addresses {
            if !config.blocks.is_empty() && !config.blocks.iter().any(|b| b.contains(&a.addr())) {
                tracing::warn!(container = %k.container_id, address = %a, "recorded address is outside the configured blocks; it stays until DEL");
            }
        }
    }
    tracing::info!(node = %node_name, endpoints = table.endpoints.len(), state = ?store.path(), "loaded state");
    let executor = match parts.executor {
        Some(e) => e,
        None => muslin_kernel::Executor::spawn()?,
    };
    let forwarding = executor
        .apply(
            muslin_kernel::Lane::Host,
            vec![muslin_plan::Step::host(muslin_plan::Change::Sysctl {
                key: "net/ipv4/ip_forward".into(),
                value: "1".into(),
            })],
            muslin_kernel::OnFailure::Stop,
        )
        .await;
    forwarding.into_result()?;
    // A restart's first state carries the endpoints already here: peers
    // must not see this node's containers vanish (names, policy) while it
    // restarts.
    let endpoints: Vec<muslin_model::cluster::EndpointRecord> = table
        .endpoints
        .iter()
        .map(|(k, e)| node::endpoint_record(&node_name, k, e))
        .collect();
    let cluster = membership::join(&config, &node_name, &executor, &endpoints).await?;
    let mtu = config.mtu.unwrap_or_else(|| match &cluster {
        Some(c) if c.encrypt => {
            c.underlay.mtu - muslin_model::encryption::overhead(c.underlay.address)
        }
        Some(c) => muslin_model::dataplane::pod_mtu(c.backend, c.underlay.mtu),
        None => 1500,
    });
    if let Some(c) = &cluster {
        tracing::info!(pod_mtu = mtu, underlay_mtu = c.underlay.mtu, backend = ?c.backend, "pod MTU");
        let pod_cidr = config.pod_cidr();
        if let Some(b) = config.blocks.iter().find(|b| !pod_cidr.contains(*b)) {
            return Err(AgentError::Config(muslin_model::agent_config::ConfigError {
                field: "blocks".into(),
                msg: format!("{b} lies outside pod-cidr {pod_cidr}: peers route only blocks inside the pod network"),
            }));
        }
    }
    let blocks = Arc::new(blocks::BlockSource::new(
        config.blocks.clone(),
        config.blocks.is_empty() && cluster.is_some(),
    ));
    let listener = match parts.listener {
        Some(l) => l,
        None => server::bind(&config.socket).await?,
    };
    let socket = config.socket.clone();
    let interval = Duration::from_secs(config.reconcile_interval);
    let mut node = Node::new(
        config,
        node_name,
        executor.clone(),
        store,
        table,
        mtu,
        blocks.clone(),
    );
    // The whole table is published at start, before the cluster loop's
    // first round: what a crash left unpublished or published converges.
    node.publish_endpoints().await;
    let mut background = tokio::task::JoinSet::new();
    if let Some(c) = cluster {
        node.cluster = Some(c.status.clone());
        let wg = match c.encrypt {
            true => muslin_model::encryption::overhead(c.underlay.address),
            false => 0,
        };
        let tunnel_mtu = c
            .underlay
            .mtu
            .saturating_sub(muslin_model::dataplane::VXLAN_OVERHEAD + wg);
        let (networks, asks) = networks::Networks::new(blocks.clone(), tunnel_mtu);
        node.networks = Some(networks.clone());
        node.dns = c.dns_shared();
        background.spawn(c.run(
            executor.clone(),
            blocks.clone(),
            node.endpoints.subscribe(),
            networks,
            asks,
        ));
    }
    let node = Arc::new(node);
    let cidrs = host_firewall::pod_cidrs(&node.config);
    let firewall = host_firewall::spawn(
        executor.clone(),
        cidrs,
        node.networks.as_ref().map(|n| n.subscribe()),
    );
    node.reconcile().await;
    {
        let node = node.clone();
        background.spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                node.reconcile().await;
            }
        });
    }
    tracing::info!(socket = ?socket, blocks = ?node.config.blocks, "agent ready");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let metrics_server = metrics_listener.map(|l| {
        tracing::info!(address = ?node.config.metrics_addr, "serving metrics at /metrics");
        tokio::spawn(metrics::serve(l, node.clone(), stopped.clone()))
    });
    let server = tokio::spawn(server::serve(listener, node.clone(), stopped, DRAIN));
    shutdown.await;
    tracing::info!("shutting down: no new requests; letting those in flight finish; kernel state is left in place");
    let _ = stop.send(true);
    let _ = server.await;
    if let Some(m) = metrics_server {
        let _ = m.await;
    }
    background.shutdown().await;
    // The WireGuard interface stays (routes through it with it, for the
    // next run); its control socket would answer no one.
    if node.config.encryption == muslin_model::encryption::Encryption::Wireguard {
        let _ = std::fs::remove_file(muslin_wireguard::uapi_socket_path(
            &node.config.wireguard_uapi,
        ));
    }
    firewall.abort();
    // Jobs already submitted (a DEL's veth removal, a handler's changes)
    // finish before the runtime goes: nothing is left half-made.
    if tokio::time::timeout(DRAIN, executor.drain()).await.is_err() {
        tracing::warn!(
            "kernel changes still running after {}s; stopping anyway",
            DRAIN.as_secs()
        );
    }
    let _ = std::fs::remove_file(&socket);
    tracing::info!("stopped");
    Ok(())
}
