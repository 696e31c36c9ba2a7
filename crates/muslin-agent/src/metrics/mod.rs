//! Prometheus metrics (`metrics-addr`). Each scrape builds a registry of
//! its own from the node's status, read the way the local API's `status`
//! reads it, plus the few instruments only metrics keep ([`Live`]): the
//! two can never disagree, and nothing is counted twice.

mod endpoint;
mod exposition;
mod live;

pub use endpoint::{bind, serve};
pub use live::{Live, Op};

use crate::node::Node;

/// The text of one scrape.
async fn scrape(node: &Node) -> String {
    let status = crate::server::status(node).await;
    let networks = match node.networks() {
        Ok(n) => n.ask(crate::networks::Ask::List).await.unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    exposition::encode(
        &exposition::Snapshot {
            status: &status,
            networks: &networks,
            process: exposition::Process::now(),
        },
        &node.metrics,
    )
}
