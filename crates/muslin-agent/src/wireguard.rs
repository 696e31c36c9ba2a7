//! The node's WireGuard device: its key (kept in the state directory), the
//! userspace device that runs in this process, and its peers, converged to
//! what the cluster view wants each round.
//!
//! The device's interface outlives the process (a persistent TUN), so the
//! routes through it stay while the agent restarts; the peers last applied
//! are kept on disk and applied before the cluster is heard, and each gets
//! a handshake at once: a restart costs the time to start and one round
//! trip, not the minutes a peer would otherwise wait before it renews a
//! session we no longer hold.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use muslin_model::api::WireguardStatus;
use muslin_model::encryption::Implementation;
use muslin_model::encryption::{WgPeer, WireguardEnd, WG_DEV};
use muslin_wireguard::{AnyDevice, DeviceConfig, PeerSpec, PrivateKey, PublicKey};

use crate::AgentError;

const KEY_FILE: &str = "wireguard.key";
const PEERS_FILE: &str = "wireguard-peers.json";

pub struct Wireguard {
    device: AnyDevice,
    dir: PathBuf,
    key: PrivateKey,
    port: u16,
    /// Which implementation runs, for the log and `status`.
    path: String,
    uapi: String,
    applied: Option<Vec<WgPeer>>,
}

fn spec(p: &WgPeer) -> Option<PeerSpec> {
    Some(PeerSpec {
        public_key: PublicKey::from_base64(&p.public_key).ok()?,
        endpoint: p.endpoint,
        allowed_ips: p.allowed_ips.clone(),
        persistent_keepalive: None,
    })
}

fn join_err(what: &str, e: impl std::fmt::Display) -> AgentError {
    AgentError::Join(format!("encryption = \"wireguard\": {what}: {e}"))
}

impl Wireguard {
    /// Loads or makes the key, starts the device (reattaching to the one a
    /// previous run left) with the peers that run last applied.
    pub async fn start(
        dir: &Path,
        port: u16,
        mtu: u32,
        uapi: &str,
        prefer: Implementation,
    ) -> Result<Wireguard, AgentError> {
        std::fs::create_dir_all(dir).map_err(|e| join_err("state directory", e))?;
        let key = PrivateKey::load_or_create(&dir.join(KEY_FILE))
            .map_err(|e| join_err(&format!("key {}", dir.join(KEY_FILE).display()), e))?;
        let mut config = DeviceConfig::new(WG_DEV, key.clone());
        config.listen_port = port;
        config.uapi = Some(uapi.to_string());
        config.mtu = u16::try_from(mtu).unwrap_or(u16::MAX);
        let prefer = match prefer {
            Implementation::Auto => muslin_wireguard::Implementation::Auto,
            Implementation::Kernel => muslin_wireguard::Implementation::Kernel,
            Implementation::Userspace => muslin_wireguard::Implementation::Userspace,
        };
        let (device, why) = muslin_wireguard::start_device(config, prefer)
            .await
            .map_err(|e| join_err("this node cannot encrypt", e))?;
        let path = match &device {
            AnyDevice::Kernel(_) => format!("kernel: {why}"),
            AnyDevice::Userspace(d) => format!(
                "userspace, in the agent ({}): {why}",
                if d.offloaded() {
                    "TUN offloads, UDP GSO/GRO"
                } else {
                    "no TUN offloads"
                }
            ),
        };
        tracing::info!(device = WG_DEV, port, %path, public_key = %key.public_key().to_base64(), "WireGuard encryption");
        // Our userspace device dies with its TUN; nothing here could bring
        // it back in place, and traffic through the interface would stop
        // (the firewall drops what would leave in clear). A new run of the
        // agent reattaches within a second.
        if let AnyDevice::Userspace(d) = &device {
            let failed = d.failure();
            tokio::spawn(async move {
                failed.await;
                tracing::error!(
                    device = WG_DEV,
                    "the WireGuard device failed (its TUN is gone); exiting so the agent is restarted"
                );
                std::process::exit(75);
            });
        }
        let mut wg = Wireguard {
            device,
            dir: dir.to_path_buf(),
            key,
            port,
            path,
            uapi: uapi.to_string(),
            applied: None,
        };
        if let Some(peers) = load_peers(dir) {
            wg.converge(&peers, false, true).await;
            wg.device
                .force_handshakes(std::time::Duration::from_millis(300))
                .await;
        }
        Ok(wg)
    }

    /// The device's kind as the kernel names it.
    pub fn kind(&self) -> &'static str {
        match self.device {
            AnyDevice::Kernel(_) => "wireguard",
            AnyDevice::Userspace(_) => "tun",
        }
    }

    pub fn end(&self) -> WireguardEnd {
        WireguardEnd {
            public_key: self.key.public_key().to_base64(),
            port: self.port,
        }
    }

    /// Makes the device's peers `peers` when they changed since last time,
    /// or always when `full` (someone may have changed the device behind
    /// our back: the device compares with what it holds and keeps
    /// unchanged peers' sessions). Until `deletes`, a peer missing from
    /// `peers` stays: the view of the first rounds after a start lacks
    /// records that are on their way.
    pub async fn converge(&mut self, peers: &[WgPeer], full: bool, deletes: bool) {
        let mut peers = peers.to_vec();
        if !deletes {
            for old in self.applied.iter().flatten() {
                if !peers.iter().any(|p| p.public_key == old.public_key) {
                    peers.push(old.clone());
                }
            }
            peers.sort();
        }
        if !full && self.applied.as_deref() == Some(&peers[..]) {
            return;
        }
        let specs: Vec<PeerSpec> = peers.iter().filter_map(spec).collect();
        match self.device.set_peers(&specs).await {
            Ok(diff) => {
                if !diff.is_empty() {
                    tracing::info!(
                        added = diff.add.len(),
                        updated = diff.update.len(),
                        removed = diff.remove.len(),
                        "WireGuard peers changed"
                    );
                }
                save_peers(&self.dir, &peers);
                self.applied = Some(peers);
            }
            Err(e) => tracing::warn!(cause = %e, "WireGuard peers not applied; retrying"),
        }
    }

    /// A new key pair: on disk first (a crash after it must not leave the
    /// device with a key no file holds), then in the device. The caller
    /// publishes the new public key; peers renew their sessions with it.
    pub async fn rotate(&mut self) -> Result<String, String> {
        let key = PrivateKey::generate().map_err(|e| e.to_string())?;
        key.save(&self.dir.join(KEY_FILE))
            .map_err(|e| format!("cannot write the new key: {e}"))?;
        self.device
            .set_private_key(&key)
            .await
            .map_err(|e| format!("the device refused the new key: {e}"))?;
        self.key = key;
        let public = self.key.public_key().to_base64();
        tracing::info!(public_key = %public, "WireGuard key rotated");
        Ok(public)
    }

    pub async fn status(&self) -> WireguardStatus {
        let names: std::collections::BTreeMap<String, String> = self
            .applied
            .iter()
            .flatten()
            .map(|p| (p.public_key.clone(), p.name.clone()))
            .collect();
        let peers = self
            .device
            .peers_status()
            .await
            .into_iter()
            .map(|s| {
                let key = s.public_key.to_base64();
                muslin_model::api::WireguardPeerStatus {
                    name: names.get(&key).cloned().unwrap_or_default(),
                    public_key: key,
                    endpoint: s.endpoint,
                    handshake_age_s: s
                        .last_handshake
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .map(|d| d.as_secs()),
                    rx_bytes: s.rx_bytes,
                    tx_bytes: s.tx_bytes,
                }
            })
            .collect();
        WireguardStatus {
            device: WG_DEV.into(),
            uapi: self.uapi.clone(),
            path: self.path.clone(),
            public_key: self.key.public_key().to_base64(),
            port: self.port,
            peers,
        }
    }
}

fn load_peers(dir: &Path) -> Option<Vec<WgPeer>> {
    let b = std::fs::read(dir.join(PEERS_FILE)).ok()?;
    serde_json::from_slice(&b)
        .map_err(|e| tracing::warn!(cause = %e, "ignoring an unreadable {PEERS_FILE}"))
        .ok()
}

fn save_peers(dir: &Path, peers: &[WgPeer]) {
    let res = crate::atomic_file::write(
        &dir.join(PEERS_FILE),
        &serde_json::to_vec(peers).expect("serializes"),
    );
    if let Err(e) = res {
        tracing::warn!(cause = %e, "cannot keep the WireGuard peers for the next run");
    }
}
