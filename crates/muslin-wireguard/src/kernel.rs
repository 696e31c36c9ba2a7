//! Is the kernel's own WireGuard usable here?

use std::path::Path;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::InfoKind;
use rtnetlink::{LinkMessageBuilder, LinkUnspec};

/// How the answer was found, so the agent can log which path it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelWireguard {
    /// `/sys/module/wireguard` exists: loaded or built in.
    Loaded,
    /// Not loaded, but creating a probe link of kind `wireguard` worked
    /// (the kernel autoloaded the module); the probe link is deleted again.
    Probed,
    /// Neither; the reason says what failed.
    Unavailable(String),
}

impl KernelWireguard {
    pub fn is_available(&self) -> bool {
        !matches!(self, KernelWireguard::Unavailable(_))
    }
}

/// Checks cheaply, in the current network namespace. The probe link, if
/// one is made, has a name unique to this process and call and is deleted
/// before returning; only a module autoload can outlive the call, as it
/// would on the first `ip link add type wireguard`.
pub async fn kernel_wireguard_available() -> KernelWireguard {
    if Path::new("/sys/module/wireguard").exists() {
        return KernelWireguard::Loaded;
    }
    match probe_link().await {
        Ok(()) => KernelWireguard::Probed,
        Err(why) => KernelWireguard::Unavailable(why),
    }
}

async fn probe_link() -> Result<(), String> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "mwgp{:x}.{}",
        std::process::id() & 0x00ff_ffff,
        N.fetch_add(1, Ordering::Relaxed) & 0xff
    );
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| format!("opening netlink: {e}"))?;
    let conn = tokio::spawn(conn);
    let result = async {
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Wireguard)
            .name(name.clone())
            .build();
        handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| format!("creating a link of kind wireguard: {e}"))?;
        let link = handle
            .link()
            .get()
            .match_name(name.clone())
            .execute()
            .try_next()
            .await
            .map_err(|e| format!("finding probe link {name}: {e}"))?
            .ok_or_else(|| format!("probe link {name} vanished"))?;
        handle
            .link()
            .del(link.header.index)
            .execute()
            .await
            .map_err(|e| format!("deleting probe link {name}: {e}"))
    }
    .await;
    conn.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_without_leaving_a_link() {
        let r = kernel_wireguard_available().await;
        eprintln!("kernel wireguard: {r:?}");
        let links = std::fs::read_dir("/sys/class/net").unwrap();
        for l in links {
            let name = l.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                !name.starts_with(&format!("mwgp{:x}.", std::process::id() & 0x00ff_ffff)),
                "probe link {name} left behind"
            );
        }
    }
}
