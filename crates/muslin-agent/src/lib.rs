//! The per-host agent. It owns the node's endpoint table and is the only
//! writer of its kernel state; the CNI plugin and the CLI are its clients.

mod atomic_file;
mod blocks;
mod cluster;
mod host_firewall;
mod key_locks;
mod leases;
mod node;
mod prober;
mod remembered_state;
mod server;
mod state_store;
mod underlay_select;
mod underlay_state;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use muslin_model::agent_config::AgentConfig;

pub use node::Node;
pub use server::BindError;
pub use state_store::{StateStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid configuration: {0}")]
    Config(#[from] muslin_model::agent_config::ConfigError),
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

/// Runs the agent until `shutdown` resolves. Kernel state is left in place
/// on exit: a restarting agent must not interrupt traffic.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    config.validate()?;
    let node_name = config.node_name.clone().unwrap_or_else(host_name);
    // Abstract Unix sockets belong to a network namespace: holding this
    // name proves no other agent manages this namespace's interfaces.
    let _netns_guard = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(b"muslin-agent")
            .map_err(|e| AgentError::Join(e.to_string()))?;
        std::os::unix::net::UnixListener::bind_addr(&addr)
            .map_err(|_| AgentError::AlreadyRunning)?
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
    if muslin_kernel::enable_ipv4_forwarding()? {
        tracing::info!("enabled net.ipv4.ip_forward");
    }
    let netlink = muslin_kernel::Netlink::current()?;
    let cluster = cluster::join(&config, &node_name, &netlink).await?;
    let mtu = config.mtu.unwrap_or_else(|| match &cluster {
        Some(c) => muslin_model::dataplane::pod_mtu(c.backend, c.underlay.mtu),
        None => 1500,
    });
    if let Some(c) = &cluster {
        tracing::info!(pod_mtu = mtu, underlay_mtu = c.underlay.mtu, backend = ?c.backend, "pod MTU");
        if let Some(b) = config.blocks.iter().find(|b| !config.pod_cidr.contains(*b)) {
            return Err(AgentError::Config(muslin_model::agent_config::ConfigError {
                field: "blocks".into(),
                msg: format!("{b} lies outside pod-cidr {}: peers route only blocks inside the pod network", config.pod_cidr),
            }));
        }
    }
    let blocks = Arc::new(blocks::BlockSource::new(
        config.blocks.clone(),
        config.blocks.is_empty() && cluster.is_some(),
    ));
    let listener = server::bind(&config.socket).await?;
    let socket = config.socket.clone();
    let interval = Duration::from_secs(config.reconcile_interval);
    let mut node = Node::new(
        config,
        node_name,
        netlink.clone(),
        store,
        table,
        mtu,
        blocks.clone(),
    );
    // The whole table is published at start, before the cluster loop's
    // first round: what a crash left unpublished or published converges.
    node.publish_endpoints().await;
    let cluster_task = cluster.map(|c| {
        node.cluster = Some(c.status.clone());
        tokio::spawn(c.run(netlink.clone(), blocks.clone(), node.endpoints.subscribe()))
    });
    let node = Arc::new(node);
    let firewall = host_firewall::spawn(host_firewall::pod_cidrs(&node.config));
    node.reconcile().await;

    let reconciler = {
        let node = node.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                node.reconcile().await;
            }
        })
    };
    tracing::info!(socket = ?socket, blocks = ?node.config.blocks, "agent ready");
    tokio::select! {
        _ = server::serve(listener, node.clone()) => {}
        _ = shutdown => tracing::info!("shutting down; kernel state is left in place"),
    }
    reconciler.abort();
    firewall.abort();
    if let Some(t) = cluster_task {
        t.abort();
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
