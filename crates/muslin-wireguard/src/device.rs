//! The device the agent runs in-process.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use futures::TryStreamExt;
use gotatun::device::uapi::UapiServer;
use gotatun::device::{Device, DeviceBuilder, Peer};
use tokio::sync::Mutex;

use crate::keys::{PrivateKey, PublicKey};
use crate::peers::{diff_peers, PeerDiff, PeerListError, PeerSpec, PeerStatus};
use crate::tun::{self, TunOptions, TunReader, TunWriter};
use crate::udp::RebindingUdp;

/// Where wireguard-go and `wg` agree the control sockets live.
pub const UAPI_DIR: &str = "/var/run/wireguard";

type Transports = (RebindingUdp, TunWriter, TunReader);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("interface name {0:?} is not a valid Linux interface name")]
    BadName(String),
    #[error("opening TUN {ifname}: {source}")]
    Tun { ifname: String, source: io::Error },
    #[error("UAPI socket {path}: {message}")]
    Uapi { path: PathBuf, message: String },
    #[error("wireguard device: {0}")]
    Device(#[from] gotatun::device::Error),
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
    device: Device<Transports>,
    applied: Mutex<HashMap<PublicKey, PeerSpec>>,
    uapi_path: Option<PathBuf>,
    offloaded: bool,
}

impl UserspaceDevice {
    /// Opens (or reattaches to) the TUN and starts the device on the
    /// caller's tokio runtime, in the current network namespace.
    pub async fn start(config: DeviceConfig) -> Result<UserspaceDevice> {
        let (device, uapi_path, offloaded) = build(
            &config.ifname,
            Some(&config.private_key),
            TunOptions {
                mtu: config.mtu,
                offload: config.offload,
                persistent: config.persistent,
            },
            config.uapi.as_deref(),
        )
        .await?;
        // gotatun binds its socket only when a reconfiguration asks for it,
        // and a port change is the public way to ask.
        let port = config.listen_port;
        device
            .write(async |d| {
                d.set_listen_port(if port == 0 { 1 } else { 0 });
                d.set_listen_port(port);
            })
            .await?;
        tracing::info!(
            ifname = %config.ifname,
            offload = offloaded,
            public_key = %config.private_key.public_key(),
            "userspace wireguard device up"
        );
        Ok(UserspaceDevice {
            ifname: config.ifname,
            device,
            applied: Mutex::new(HashMap::new()),
            uapi_path,
            offloaded,
        })
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
        self.device.read(async |d| d.listen_port()).await
    }

    /// Makes the device's peers exactly `peers`. Unchanged peers are not
    /// touched (their sessions and counters survive); changed ones are
    /// updated in place; the rest are removed. Returns what was changed.
    pub async fn set_peers(&self, peers: &[PeerSpec]) -> Result<PeerDiff> {
        let mut applied = self.applied.lock().await;
        let live: HashSet<PublicKey> = self
            .device
            .peers()
            .await
            .iter()
            .map(|p| PublicKey::from_x25519(&p.peer.public_key))
            .collect();
        let diff = diff_peers(&applied, &live, peers)?;
        if diff.is_empty() {
            return Ok(diff);
        }
        let (add, update, remove) = (&diff.add, &diff.update, &diff.remove);
        self.device
            .write(async |d| {
                for k in remove {
                    d.remove_peer(&k.to_x25519()).await;
                }
                for s in update {
                    d.modify_peer(&s.public_key.to_x25519(), |p| {
                        p.set_endpoint(Some(s.endpoint));
                        p.set_keepalive(s.persistent_keepalive);
                        p.clear_allowed_ips();
                        p.add_allowed_ips(s.allowed_set().into_iter().map(to_ipnetwork));
                    })
                    .await;
                }
                for s in add {
                    d.add_peer(to_peer(s));
                }
            })
            .await?;
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
        self.device.set_private_key(key.to_x25519()).await?;
        Ok(())
    }

    /// Sends a handshake initiation to every peer now, waiting at most
    /// `wait` for the answers. A restarted node holds no session, while
    /// its peers keep sending on theirs (which it drops) until their own
    /// timers renew them: a handshake from us ends that at once.
    pub async fn force_handshakes(&self, wait: std::time::Duration) {
        let keys: Vec<_> = self
            .device
            .peers()
            .await
            .into_iter()
            .map(|p| p.peer.public_key)
            .collect();
        let all = futures::future::join_all(keys.iter().map(|k| self.device.force_handshake(k)));
        let _ = tokio::time::timeout(wait, all).await;
    }

    /// Per-peer state for `muslin status`, sorted by public key.
    pub async fn peers_status(&self) -> Vec<PeerStatus> {
        let now = SystemTime::now();
        let mut out: Vec<PeerStatus> = self
            .device
            .peers()
            .await
            .into_iter()
            .map(|p| PeerStatus {
                public_key: PublicKey::from_x25519(&p.peer.public_key),
                endpoint: p.peer.endpoint,
                last_handshake: p.stats.last_handshake.and_then(|d| now.checked_sub(d)),
                rx_bytes: p.stats.rx_bytes as u64,
                tx_bytes: p.stats.tx_bytes as u64,
            })
            .collect();
        out.sort_by_key(|p| p.public_key);
        out
    }

    /// Stops the device. A persistent interface stays (down to no reader)
    /// for the next start to reattach to; use [`UserspaceDevice::remove`]
    /// to delete it.
    pub async fn stop(self) {
        self.device.stop().await;
        if let Some(p) = &self.uapi_path {
            let _ = fs::remove_file(p);
        }
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

pub fn uapi_socket_path(ifname: &str) -> PathBuf {
    Path::new(UAPI_DIR).join(format!("{ifname}.sock"))
}

pub(crate) async fn build(
    ifname: &str,
    key: Option<&PrivateKey>,
    tun_opts: TunOptions,
    uapi: Option<&str>,
) -> Result<(Device<Transports>, Option<PathBuf>, bool)> {
    if ifname.is_empty() || ifname.len() > 15 || ifname.contains(['/', ' ', '\0']) {
        return Err(Error::BadName(ifname.to_string()));
    }
    let (writer, reader, offloaded) = tun::open(ifname, tun_opts).map_err(|source| Error::Tun {
        ifname: ifname.to_string(),
        source,
    })?;
    let mut builder = DeviceBuilder::new()
        .with_udp(RebindingUdp::default())
        .with_ip_pair(writer, reader);
    if let Some(k) = key {
        builder = builder.with_private_key(k.to_x25519());
    }
    let mut uapi_path = None;
    if let Some(name) = uapi {
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
            return Err(Error::BadName(name.to_string()));
        }
        let path = uapi_socket_path(name);
        builder = builder.with_uapi(serve_uapi(name, &path)?);
        uapi_path = Some(path);
    }
    Ok((builder.build().await?, uapi_path, offloaded))
}

/// Same directory and socket modes as wireguard-go (0755, 0600), and a
/// stale socket from a killed predecessor is replaced.
fn serve_uapi(ifname: &str, path: &Path) -> Result<UapiServer> {
    let err = |message: String| Error::Uapi {
        path: path.to_path_buf(),
        message,
    };
    fs::create_dir_all(UAPI_DIR).map_err(|e| err(e.to_string()))?;
    fs::set_permissions(UAPI_DIR, fs::Permissions::from_mode(0o755))
        .map_err(|e| err(e.to_string()))?;
    let server =
        UapiServer::default_unix_socket(ifname, None, None).map_err(|e| err(e.to_string()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|e| err(e.to_string()))?;
    Ok(server)
}

fn to_ipnetwork(n: ipnet::IpNet) -> ipnetwork::IpNetwork {
    // Both sides validate the prefix length the same way, so this cannot fail.
    ipnetwork::IpNetwork::new(n.addr(), n.prefix_len()).expect("valid prefix")
}

fn to_peer(s: &PeerSpec) -> Peer {
    let mut p = Peer::new(s.public_key.to_x25519())
        .with_endpoint(s.endpoint)
        .with_allowed_ips(s.allowed_set().into_iter().map(to_ipnetwork));
    p.keepalive = s.persistent_keepalive;
    p
}

async fn delete_link(ifname: &str) -> std::result::Result<(), String> {
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
