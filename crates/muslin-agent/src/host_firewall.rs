//! Keeps pod traffic through this host's own firewall: a host whose
//! forward chains drop (Docker sets `iptables -P FORWARD DROP`) gets our
//! tagged accept rules at their top. Re-asserted on a timer, not once:
//! Docker, firewalld or an operator may flush them at any time.

use std::time::Duration;

use ipnet::IpNet;
use muslin_kernel::{Executor, Lane, OnFailure};
use muslin_model::agent_config::AgentConfig;
use muslin_model::host_firewall::{missing_accepts, removals, Action};
use muslin_plan::{Change, Step};

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
/// A round reads the firewalls only when something changed since the last
/// read: nftables' ruleset generation (iptables-nft changes move it too),
/// or the legacy iptables FORWARD chains where legacy tables exist. So an
/// idle host costs a netlink query a round and no `nft` run.
pub fn spawn(
    executor: Executor,
    base: Vec<IpNet>,
    mut networks: Option<NetworksWatch>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut pod_cidrs = with_networks(&base, networks.as_mut());
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error: Option<String> = None;
        let mut seen: Option<(u32, Vec<String>)> = None;
        let mut ours = muslin_kernel::executor::counters::nft_writes();
        loop {
            let grown = async {
                match networks.as_mut() {
                    Some(n) => n.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tick.tick() => {}
                _ = ours.changed() => {}
                true = grown => {
                    pod_cidrs = with_networks(&base, networks.as_mut());
                    seen = None;
                }
            }
            let now = fingerprint(&executor).await;
            if now.is_some() && now == seen {
                continue;
            }
            match ensure(&executor, &pod_cidrs).await {
                Ok(inserted) => {
                    log_inserted(&inserted);
                    if last_error.take().is_some() {
                        tracing::info!("host firewall: pod traffic rules checked again");
                    }
                    // After inserting, the next round reads once more: our
                    // insertions moved the fingerprint, and so may someone
                    // else's change made meanwhile.
                    seen = now;
                }
                Err(e) => warn_on_change(&mut last_error, e),
            }
        }
    })
}

/// The networks in force, whose subnets carry pod traffic too.
pub type NetworksWatch = tokio::sync::watch::Receiver<
    std::collections::BTreeMap<String, muslin_model::network::NetworkSpec>,
>;

fn with_networks(base: &[IpNet], networks: Option<&mut NetworksWatch>) -> Vec<IpNet> {
    let mut all = base.to_vec();
    if let Some(n) = networks {
        all.extend(
            n.borrow_and_update()
                .values()
                .flat_map(|n| n.subnets.iter().copied()),
        );
    }
    IpNet::aggregate(&all)
}

/// What changes whenever a firewall changes; `None` when it cannot be read.
async fn fingerprint(executor: &Executor) -> Option<(u32, Vec<String>)> {
    let generation = executor.nft_generation().await.ok()?;
    let legacy = executor.firewall_legacy().await.ok()?;
    Some((generation, legacy))
}

/// Reads the firewalls, inserts what is missing, returns what it inserted.
pub async fn ensure(executor: &Executor, pod_cidrs: &[IpNet]) -> Result<Vec<Action>, String> {
    let observed = executor.firewall().await.map_err(|e| e.to_string())?;
    let actions = missing_accepts(&observed, pod_cidrs).map_err(|e| e.to_string())?;
    apply(executor, &actions).await?;
    Ok(actions)
}

/// Every rule of ours in anyone's chain, deleted; returns what it deleted.
pub async fn remove_all(executor: &Executor) -> Result<Vec<Action>, String> {
    let observed = executor.firewall().await.map_err(|e| e.to_string())?;
    let actions = removals(&observed).map_err(|e| e.to_string())?;
    apply(executor, &actions).await?;
    Ok(actions)
}

async fn apply(executor: &Executor, actions: &[Action]) -> Result<(), String> {
    let steps = actions
        .iter()
        .map(|a| Step::host(Change::Firewall(a.clone())))
        .collect();
    let report = executor
        .apply(Lane::Firewall, steps, OnFailure::Continue)
        .await;
    match report.errors() {
        e if e.is_empty() => Ok(()),
        e => Err(e.join("; ")),
    }
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
