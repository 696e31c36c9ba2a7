//! The device the agent runs in-process.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::TryStreamExt;
use tokio::sync::Mutex;

use crate::engine::{Config, Engine};
use crate::keys::{PrivateKey, PublicKey};
use crate::peers::{diff_peers, PeerDiff, PeerListError, PeerSpec, PeerStatus};
use crate::tun::{self, TunOptions};
use crate::uapi::UapiServer;

/// Where wireguard-go and `wg` agree the control sockets live.
pub const UAPI_DIR: &str = "/var/run/wireguard";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("interface name {0:?} is not a valid Linux interface name")]
    BadName(String),
    #[error("opening TUN {ifname}: {source}")]
    Tun { ifname: String, source: io::Error },
    #[error("UAPI socket {path}: {message}")]
    Uapi { path: PathBuf, message: String },
    #[error("wireguard device: {0}")]
    Device(#[from] io::Error),
    #[error(transparent)]
    Peers(#[from] PeerListError),
    #[error("removing interface {ifname}: {message}")]
    Remove { ifname: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to start a [`UserspaceDevice`].
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    pub ifname: String,
    pub private_key: PrivateKey,
    /// 0 picks any free port; see [`UserspaceDevice::listen_port`].
    pub listen_port: u16,
    pub mtu: u16,
    /// Serve the standard UAPI socket under this name (`wg show NAME`),
    /// usually the interface's: machines that run several devices of one
    /// name in different namespaces (labs) give each its own.
    pub uapi: Option<String>,
    /// Keep the interface when the process dies, and reattach to it on the
    /// next start.
    pub persistent: bool,
    /// TUN offloads (TSO/GRO). Off only to measure what they buy.
    pub offload: bool,
}

impl DeviceConfig {
    pub fn new(ifname: impl Into<String>, private_key: PrivateKey) -> Self {
        let ifname: String = ifname.into();
        DeviceConfig {
            ifname: ifname.clone(),
            private_key,
            listen_port: 0,
            mtu: 1420,
            uapi: Some(ifname.clone()),
            persistent: true,
            offload: true,
        }
    }
}

/// A running userspace WireGuard interface.
pub struct UserspaceDevice {
    ifname: String,
    engine: Arc<Engine>,
    applied: Mutex<HashMap<PublicKey, PeerSpec>>,
    uapi: Option<UapiServer>,
    offloaded: bool,
}

impl UserspaceDevice {
    /// Opens (or reattaches to) the TUN and starts the device's threads in
    /// the current network namespace (the caller's thread's).
    pub async fn start(config: DeviceConfig) -> Result<UserspaceDevice> {
        let dev = Self::open(
            &config.ifname,
            Some(&config.private_key),
            TunOptions {
                mtu: config.mtu,
                offload: config.offload,
                persistent: config.persistent,
            },
            config.uapi.as_deref(),
            config.listen_port,
        )?;
        tracing::info!(
            ifname = %config.ifname,
            offload = dev.offloaded,
            public_key = %config.private_key.public_key(),
            "userspace wireguard device up"
        );
        Ok(dev)
    }

    pub(crate) fn open(
        ifname: &str,
        key: Option<&PrivateKey>,
        tun_opts: TunOptions,
        uapi: Option<&str>,
        port: u16,
    ) -> Result<UserspaceDevice> {
        if ifname.is_empty() || ifname.len() > 15 || ifname.contains(['/', ' ', '\0']) {
            return Err(Error::BadName(ifname.to_string()));
        }
        let (tun, offloaded) = tun::open(ifname, tun_opts).map_err(|source| Error::Tun {
            ifname: ifname.to_string(),
            source,
        })?;
        let engine = Engine::start(tun, tun_opts.mtu, port)?;
        if let Some(k) = key {
            let bytes = k.to_x25519().to_bytes();
            engine.configure(|c| c.set_private_key(Some(bytes)));
        }
        let mut dev = UserspaceDevice {
            ifname: ifname.to_string(),
            engine,
            applied: Mutex::new(HashMap::new()),
            uapi: None,
            offloaded,
        };
        if let Some(name) = uapi {
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
                return Err(Error::BadName(name.to_string()));
            }
            let path = uapi_socket_path(name);
            let server = UapiServer::start(Path::new(UAPI_DIR), &path, Arc::clone(&dev.engine))
                .map_err(|e| Error::Uapi {
                    path,
                    message: e.to_string(),
                })?;
            dev.uapi = Some(server);
        }
        Ok(dev)
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Whether the kernel accepted the TUN offloads.
    pub fn offloaded(&self) -> bool {
        self.offloaded
    }

    /// The UDP port actually bound (useful when the config said 0).
    pub async fn listen_port(&self) -> u16 {
        self.engine.listen_port()
    }

    /// Makes the device's peers exactly `peers`. Unchanged peers are not
    /// touched (their sessions and counters survive); changed ones are
    /// updated in place; the rest are removed. Returns what was changed.
    pub async fn set_peers(&self, peers: &[PeerSpec]) -> Result<PeerDiff> {
        let mut applied = self.applied.lock().await;
        let live: HashSet<PublicKey> = self
            .engine
            .snapshot()
            .peers
            .keys()
            .map(|k| PublicKey(*k))
            .collect();
        let diff = diff_peers(&applied, &live, peers)?;
        if diff.is_empty() {
            return Ok(diff);
        }
        self.engine.configure(|c| {
            for k in &diff.remove {
                c.remove_peer(&k.0);
            }
            for s in diff.update.iter().chain(&diff.add) {
                apply_spec(c, s);
            }
        });
        for k in &diff.remove {
            applied.remove(k);
        }
        for s in diff.add.iter().chain(&diff.update) {
            applied.insert(s.public_key, s.clone());
        }
        tracing::debug!(
            ifname = %self.ifname,
            added = diff.add.len(),
            updated = diff.update.len(),
            removed = diff.remove.len(),
            "wireguard peers applied"
        );
        Ok(diff)
    }

    /// Rotates the device's key. Peers stay configured; their sessions end
    /// and new handshakes follow as soon as the peers know the new public key.
    pub async fn set_private_key(&self, key: &PrivateKey) -> Result<()> {
        let bytes = key.to_x25519().to_bytes();
        self.engine.configure(|c| c.set_private_key(Some(bytes)));
        Ok(())
    }

    /// Sends a handshake initiation to every peer now, waiting at most
    /// `wait` for the answers. A restarted node holds no session, while
    /// its peers keep sending on theirs (which it drops) until their own
    /// timers renew them: a handshake from us ends that at once.
    pub async fn force_handshakes(&self, wait: Duration) {
        let pending = self.engine.initiate_handshakes();
        let deadline = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < deadline {
            let done = pending.iter().all(|p| {
                p.lock()
                    .tunn
                    .as_ref()
                    .is_none_or(|t| t.has_active_session())
            });
            if done {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Per-peer state for `muslin status`, sorted by public key.
    pub async fn peers_status(&self) -> Vec<PeerStatus> {
        let now = SystemTime::now();
        self.engine
            .snapshot()
            .peers
            .iter()
            .map(|(k, p)| {
                let st = p.lock();
                let (since, tx, rx) = st.tunn.as_ref().map_or((None, 0, 0), |t| {
                    let (since, tx, rx, _, _) = t.stats();
                    (since, tx, rx)
                });
                PeerStatus {
                    public_key: PublicKey(*k),
                    endpoint: st.endpoint,
                    last_handshake: since.and_then(|d| now.checked_sub(d)),
                    rx_bytes: rx as u64,
                    tx_bytes: tx as u64,
                }
            })
            .collect()
    }

    /// Resolves when the device failed (its TUN went away).
    /// Resolves when the device's threads have died (its TUN failed): the
    /// owner must replace it, or traffic through the interface stops.
    pub fn failure(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let engine = Arc::clone(&self.engine);
        async move {
            loop {
                let notified = engine.dead_notify.notified();
                if engine.is_dead() {
                    return;
                }
                notified.await;
            }
        }
    }

    pub(crate) async fn failed(&self) {
        loop {
            let notified = self.engine.dead_notify.notified();
            if self.engine.is_dead() {
                return;
            }
            notified.await;
        }
    }

    /// Stops the device. A persistent interface stays (down to no reader)
    /// for the next start to reattach to; use [`UserspaceDevice::remove`]
    /// to delete it.
    pub async fn stop(mut self) {
        if let Some(mut u) = self.uapi.take() {
            u.stop();
        }
        let e = Arc::clone(&self.engine);
        let _ = tokio::task::spawn_blocking(move || e.shutdown()).await;
    }

    /// Deletes the interface `ifname` in the current network namespace,
    /// persistent or not, and its stale UAPI socket. Absent is not an error.
    pub async fn remove(ifname: &str) -> Result<()> {
        let _ = fs::remove_file(uapi_socket_path(ifname));
        delete_link(ifname).await.map_err(|message| Error::Remove {
            ifname: ifname.to_string(),
            message,
        })
    }
}

impl Drop for UserspaceDevice {
    /// The threads hold the TUN open; a device dropped without `stop` must
    /// still let go of it.
    fn drop(&mut self) {
        if let Some(mut u) = self.uapi.take() {
            u.stop();
        }
        self.engine.shutdown();
    }
}

fn apply_spec(c: &mut Config<'_>, s: &PeerSpec) {
    let p = c.peer(s.public_key.0);
    {
        let mut st = p.lock();
        st.endpoint = Some(s.endpoint);
        st.keepalive = s.persistent_keepalive;
        if let Some(t) = st.tunn.as_mut() {
            t.set_persistent_keepalive(s.persistent_keepalive);
        }
        st.allowed.clear();
    }
    for n in s.allowed_set() {
        c.add_allowed(&p, n);
    }
}

pub fn uapi_socket_path(ifname: &str) -> PathBuf {
    Path::new(UAPI_DIR).join(format!("{ifname}.sock"))
}

/// Deletes link `ifname` whatever its kind; absent is not an error.
pub(crate) async fn delete_link(ifname: &str) -> std::result::Result<(), String> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| format!("opening netlink: {e}"))?;
    let conn = tokio::spawn(conn);
    let result = async {
        let link = match handle
            .link()
            .get()
            .match_name(ifname.to_string())
            .execute()
            .try_next()
            .await
        {
            Ok(Some(l)) => l,
            Ok(None) => return Ok(()),
            Err(rtnetlink::Error::NetlinkError(e))
                if e.code.map(|c| c.get()) == Some(-libc::ENODEV) =>
            {
                return Ok(())
            }
            Err(e) => return Err(e.to_string()),
        };
        match handle.link().del(link.header.index).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e))
                if e.code.map(|c| c.get()) == Some(-libc::ENODEV) =>
            {
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }
    .await;
    conn.abort();
    result
}
