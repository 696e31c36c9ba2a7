//! Operators' GC (`muslin gc`): attachments whose container is gone though
//! the runtime never sent DEL (containerd's `ctr task kill` and
//! `ctr containers rm` do that), which would otherwise hold their address
//! for ever. CNI GC cannot help there: it needs the runtime's list.

use muslin_kernel::KernelError;
use muslin_model::api::StaleAttachment;
use muslin_model::cni::CniError;
use muslin_model::ipam::{AttachmentKey, Endpoint};

use super::{kernel_error, Node};

/// What an attachment's namespace path opens as, now.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NetnsNow {
    /// A network namespace other than the agent's: the container may live.
    Alive,
    /// Gone, or no longer a container's network namespace; the string says which.
    Gone(String),
    /// Not recorded (older state), or not checkable: only the veth decides.
    Unknown,
}

/// Why the attachment is stale, if it is. A veth pair dies with its
/// namespace, so a missing host veth is what proves the container gone; a
/// namespace path that no longer opens only adds to the reason. A path
/// that does not open while the veth lives (the agent runs where the
/// runtime's mounts are not visible, or a /proc/PID path now names another
/// process) must not cost a running container its address.
fn stale_reason(netns: &NetnsNow, veth: &str, veth_exists: bool) -> Option<String> {
    if veth_exists {
        return None;
    }
    let mut why = vec![format!("host veth {veth} no longer exists")];
    if let NetnsNow::Gone(w) = netns {
        why.push(w.clone());
    }
    Some(why.join("; "))
}

async fn netns_now(executor: &muslin_kernel::Executor, ep: &Endpoint) -> NetnsNow {
    let Some(path) = &ep.netns else {
        return NetnsNow::Unknown;
    };
    match executor.check_netns(path.clone()).await {
        Ok(_) => NetnsNow::Alive,
        Err(KernelError::NetnsMissing(_)) => NetnsNow::Gone(format!(
            "network namespace {} no longer exists",
            path.display()
        )),
        // A /proc/PID/ns/net path whose PID now belongs to a host process.
        Err(e @ (KernelError::NotNetns { .. } | KernelError::OwnNetns(_))) => {
            NetnsNow::Gone(e.to_string())
        }
        Err(e) => {
            tracing::warn!(netns = ?path, cause = %e, "cannot check a recorded namespace; judging by the veth alone");
            NetnsNow::Unknown
        }
    }
}

impl Node {
    /// Lists the stale attachments and, with `apply`, releases them (veth,
    /// host route, address). Each is judged and released under its lock,
    /// against the record as it is then: an ADD in flight has its record
    /// but not yet its veth, and a DEL in flight is about to remove both.
    pub async fn reap(&self, apply: bool) -> Result<Vec<StaleAttachment>, CniError> {
        let keys: Vec<AttachmentKey> = self
            .table
            .lock()
            .await
            .table
            .endpoints
            .keys()
            .cloned()
            .collect();
        let mut stale = Vec::new();
        let host = self.executor.host().await.map_err(kernel_error)?;
        for key in keys {
            let _guard = self.locks.lock(&key).await;
            let ep = self.table.lock().await.table.endpoints.get(&key).cloned();
            let Some(ep) = ep else { continue };
            // A veth seen before the lock was taken: an ADD under way then
            // holds the lock until its veth exists, and only a veth that
            // was absent and still has its record is judged.
            let veth_exists = host.link(&ep.host_ifname).is_some()
                || self
                    .executor
                    .host()
                    .await
                    .map_err(kernel_error)?
                    .link(&ep.host_ifname)
                    .is_some();
            let netns = netns_now(&self.executor, &ep).await;
            let Some(why) = stale_reason(&netns, &ep.host_ifname, veth_exists) else {
                continue;
            };
            let mut s = StaleAttachment {
                key: key.clone(),
                addresses: ep.addresses.clone(),
                host_ifname: ep.host_ifname.clone(),
                netns: ep.netns.clone(),
                why,
                released: false,
                error: None,
            };
            if apply {
                match self.teardown(&key).await {
                    Ok(()) => s.released = true,
                    Err(e) => s.error = Some(e.msg),
                }
            }
            stale.push(s);
        }
        let released = stale.iter().filter(|s| s.released).count();
        tracing::info!(stale = stale.len(), released, "operator GC");
        Ok(stale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_only_when_the_veth_is_gone() {
        let gone = NetnsNow::Gone("network namespace /run/netns/x no longer exists".into());
        assert_eq!(stale_reason(&NetnsNow::Alive, "msl1", true), None);
        assert_eq!(stale_reason(&NetnsNow::Unknown, "msl1", true), None);
        assert_eq!(
            stale_reason(&gone, "msl1", true),
            None,
            "the veth lives: so may the container"
        );
        let w = stale_reason(&NetnsNow::Alive, "msl1", false).unwrap();
        assert!(w.contains("msl1"), "{w}");
        let w = stale_reason(&gone, "msl1", false).unwrap();
        assert!(w.contains("/run/netns/x") && w.contains("msl1"), "{w}");
    }
}
