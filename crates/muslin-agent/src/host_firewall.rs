//! Keeps pod traffic through this host's own firewall: a host whose
//! forward chains drop (Docker sets `iptables -P FORWARD DROP`) gets our
//! tagged accept rules at their top. Re-asserted on a timer, not once:
//! Docker, firewalld or an operator may flush them at any time.

use std::time::Duration;

use ipnet::IpNet;
use muslin_model::agent_config::AgentConfig;
use muslin_model::host_firewall::Action;

/// How soon a flushed rule comes back. Each round only reads when the
/// rules are in place: a few `nft`/`iptables` listings.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// The pod traffic of this node: its fixed blocks when it has them (a node
/// without a cluster routes nothing else), otherwise the cluster's pod CIDR,
/// which covers every pod on every node this host forwards for.
pub fn pod_cidrs(config: &AgentConfig) -> Vec<IpNet> {
    if config.blocks.is_empty() {
        config.pod_cidrs().to_vec()
    } else {
        config.blocks.clone()
    }
}

/// Ensures the rules now and every `INTERVAL` until the task is aborted.
pub fn spawn(pod_cidrs: Vec<IpNet>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error: Option<String> = None;
        loop {
            tick.tick().await;
            let cidrs = pod_cidrs.clone();
            // nft and iptables are processes: keep them off the runtime.
            let outcome =
                tokio::task::spawn_blocking(move || muslin_kernel::host_firewall::ensure(&cidrs))
                    .await;
            match outcome {
                Ok(Ok(inserted)) => {
                    log_inserted(&inserted);
                    if last_error.take().is_some() {
                        tracing::info!("host firewall: pod traffic rules checked again");
                    }
                }
                Ok(Err(e)) => warn_on_change(&mut last_error, e.to_string()),
                Err(e) => warn_on_change(&mut last_error, e.to_string()),
            }
        }
    })
}

fn log_inserted(actions: &[Action]) {
    for a in actions {
        if let Action::Insert { chain, rule, cause } = a {
            tracing::info!(
                chain = %chain,
                filter = %chain.backend,
                rule = %rule,
                why = %cause,
                "host firewall would drop pod traffic; inserted our accept rule at the top of its chain"
            );
        }
    }
}

/// A broken host firewall fails every round: say so once per distinct error.
fn warn_on_change(last: &mut Option<String>, error: String) {
    if last.as_deref() != Some(error.as_str()) {
        tracing::warn!(cause = %error, "host firewall: cannot ensure pod traffic passes; retrying every {}s", INTERVAL.as_secs());
        *last = Some(error);
    }
}
