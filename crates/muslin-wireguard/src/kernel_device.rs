//! The kernel's own WireGuard, driven over netlink: a link of kind
//! `wireguard` made with rtnetlink, configured through the `wireguard`
//! generic netlink family (what `wg(8)` speaks).
//!
//! The link outlives the agent like the userspace device's persistent TUN:
//! a restarted agent finds it with its peers and sessions intact and only
//! converges it again.
//!
//! The message building and reply parsing are pure functions of netlink
//! types, tested without a kernel; only [`KernelDevice`]'s methods touch
//! sockets.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt};
use genetlink::GenetlinkHandle;
use ipnet::IpNet;
use netlink_packet_core::{
    Emitable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLA_HEADER_SIZE, NLM_F_ACK,
    NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_generic::constants::GENL_HDRLEN;
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardMessage, WireguardPeer, WireguardPeerAttribute, WireguardPeerFlags,
    WireguardTimeSpec,
};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::{LinkMessageBuilder, LinkUnspec};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::device::{self, DeviceConfig, UserspaceDevice};
use crate::kernel::{kernel_wireguard_available, KernelWireguard};
use crate::keys::{PrivateKey, PublicKey};
use crate::peers::{diff_peers, PeerDiff, PeerListError, PeerSpec, PeerStatus};

/// The most one SET_DEVICE message may take, netlink header included.
/// wg(8) builds its requests in a page-sized buffer, so a page is a size
/// every kernel with the module has been fed; ~30 peers fit in one.
pub(crate) const SET_DEVICE_BUDGET: usize = 4096;

/// A session is usable for this long after its handshake (the protocol's
/// REJECT_AFTER_TIME); a peer with a younger one needs no new handshake.
const SESSION_LIFETIME: Duration = Duration::from_secs(180);

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("interface name {0:?} is not a valid Linux interface name")]
    BadName(String),
    #[error(
        "interface {ifname} exists and is of kind {kind}, not wireguard; \
         delete it to let the kernel device take the name"
    )]
    NotWireguard { ifname: String, kind: String },
    #[error("{what}: {message}")]
    Netlink { what: String, message: String },
    #[error(transparent)]
    Peers(#[from] PeerListError),
}

pub type KernelResult<T> = std::result::Result<T, KernelError>;

fn netlink_err(what: impl Into<String>) -> impl FnOnce(String) -> KernelError {
    let what = what.into();
    move |message| KernelError::Netlink { what, message }
}

/// A WireGuard interface run by the kernel module.
pub struct KernelDevice {
    ifname: String,
    genl: GenetlinkHandle,
    /// The generic netlink socket's task; the socket lives in the network
    /// namespace `start` ran in, so every later call acts there whatever
    /// thread it runs on.
    conn: JoinHandle<()>,
    applied: Mutex<HashMap<PublicKey, PeerSpec>>,
}

impl KernelDevice {
    /// Creates the link (or takes over the wireguard link of that name a
    /// previous run left), sets its MTU, private key and, unless
    /// `listen_port` is 0, its port. Only `ifname`, `private_key`,
    /// `listen_port` and `mtu` of the config apply: the kernel has no UAPI
    /// socket, and its link always persists and always offloads.
    ///
    /// With port 0 the kernel picks one when the link is brought up (and an
    /// existing link keeps the one it has), so [`KernelDevice::listen_port`]
    /// says 0 until then. The link is left down: bringing it up is the data
    /// plane's job.
    pub async fn start(config: DeviceConfig) -> KernelResult<KernelDevice> {
        let ifname = config.ifname.clone();
        if ifname.is_empty() || ifname.len() > 15 || ifname.contains(['/', ' ', '\0']) {
            return Err(KernelError::BadName(ifname));
        }
        let created = ensure_link(&ifname, u32::from(config.mtu)).await?;
        let configured = async {
            let (conn, genl, _) = genetlink::new_connection()
                .map_err(|e| netlink_err("opening generic netlink")(e.to_string()))?;
            let conn = tokio::spawn(conn);
            let dev = KernelDevice {
                ifname: ifname.clone(),
                genl,
                conn,
                applied: Mutex::new(HashMap::new()),
            };
            let mut attrs = vec![
                WireguardAttribute::IfName(ifname.clone()),
                WireguardAttribute::PrivateKey(private_bytes(&config.private_key)),
            ];
            if config.listen_port != 0 {
                attrs.push(WireguardAttribute::ListenPort(config.listen_port));
            }
            dev.set_device(
                WireguardMessage {
                    cmd: WireguardCmd::SetDevice,
                    attributes: attrs,
                },
                "setting private key and port",
            )
            .await?;
            Ok::<_, KernelError>(dev)
        }
        .await;
        match configured {
            Ok(dev) => {
                tracing::info!(
                    ifname = %ifname,
                    reused = !created,
                    public_key = %config.private_key.public_key(),
                    "kernel wireguard device configured"
                );
                Ok(dev)
            }
            Err(e) => {
                // A link we made but could not configure would only block
                // the name for a fallback device; one we found stays.
                if created {
                    let _ = crate::device::delete_link(&ifname).await;
                }
                Err(e)
            }
        }
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The kernel segments and coalesces WireGuard traffic itself (GSO/GRO
    /// on the device), so this is always true.
    pub fn offloaded(&self) -> bool {
        true
    }

    /// The kernel's port; 0 if it could not be read, or while a link
    /// configured with port 0 is still down.
    pub async fn listen_port(&self) -> u16 {
        match self.get_device().await {
            Ok(d) => d.listen_port,
            Err(e) => {
                tracing::warn!(ifname = %self.ifname, cause = %e, "reading wireguard listen port");
                0
            }
        }
    }

    /// Makes the device's peers exactly `peers`, with the same semantics as
    /// [`UserspaceDevice::set_peers`]. A large change goes out in several
    /// messages; if one fails, those before it stay applied and the next
    /// call's diff (against the kernel's live list) picks up from there.
    pub async fn set_peers(&self, peers: &[PeerSpec]) -> KernelResult<PeerDiff> {
        let mut applied = self.applied.lock().await;
        let live: HashSet<PublicKey> = self
            .get_device()
            .await?
            .peers
            .into_iter()
            .map(|p| p.public_key)
            .collect();
        let diff = diff_peers(&applied, &live, peers)?;
        if diff.is_empty() {
            return Ok(diff);
        }
        let messages = set_peers_messages(&self.ifname, &diff, SET_DEVICE_BUDGET);
        let total = messages.len();
        for (i, m) in messages.into_iter().enumerate() {
            let what = format!("setting peers (message {} of {total})", i + 1);
            if let Err(e) = self.set_device(m, &what).await {
                // What went out is partly in the kernel: forget the
                // bookkeeping of every peer the diff touched so the next
                // call re-sends them rather than trusting a half-applied
                // state.
                for s in diff.add.iter().chain(&diff.update) {
                    applied.remove(&s.public_key);
                }
                return Err(e);
            }
        }
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
            messages = total,
            "kernel wireguard peers applied"
        );
        Ok(diff)
    }

    /// Rotates the key. The kernel keeps the peers, drops their sessions
    /// and handshakes again on the next packet.
    pub async fn set_private_key(&self, key: &PrivateKey) -> KernelResult<()> {
        self.set_device(
            WireguardMessage {
                cmd: WireguardCmd::SetDevice,
                attributes: vec![
                    WireguardAttribute::IfName(self.ifname.clone()),
                    WireguardAttribute::PrivateKey(private_bytes(key)),
                ],
            },
            "setting private key",
        )
        .await
    }

    /// The kernel has no "handshake now" command, but it sends a keepalive
    /// at once when a peer's persistent keepalive goes from 0 to non-zero,
    /// and a keepalive with no session starts a handshake. So each peer's
    /// keepalive is toggled through 0 and back to what it was (two entries
    /// for the peer, applied in order within one request), then this waits
    /// up to `wait` for every peer to hold a session. Peers that already
    /// hold one only get a keepalive. Needs the link up (the kernel sends
    /// nothing otherwise); errors are logged, as the userspace device's are
    /// ignored.
    pub async fn force_handshakes(&self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        let live = match self.get_device().await {
            Ok(d) => d.peers,
            Err(e) => {
                tracing::warn!(ifname = %self.ifname, cause = %e, "forcing handshakes");
                return;
            }
        };
        let toggles: Vec<(PublicKey, u16)> = live
            .iter()
            .map(|p| (p.public_key, p.persistent_keepalive))
            .collect();
        for m in handshake_messages(&self.ifname, &toggles, SET_DEVICE_BUDGET) {
            if let Err(e) = self.set_device(m, "forcing handshakes").await {
                tracing::warn!(ifname = %self.ifname, cause = %e, "forcing handshakes");
                return;
            }
        }
        loop {
            let Ok(dev) = self.get_device().await else {
                return;
            };
            // Read after the dump: a handshake it reports is then never
            // in the future.
            let now = SystemTime::now();
            let fresh = |t: &Option<SystemTime>| {
                t.and_then(|t| now.duration_since(t).ok())
                    .is_some_and(|age| age < SESSION_LIFETIME)
            };
            if dev.peers.iter().all(|p| fresh(&p.last_handshake)) {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(
                (tokio::time::Instant::now() + Duration::from_millis(50)).min(deadline),
            )
            .await;
        }
    }

    /// Per-peer state, sorted by public key; empty (and logged) if the
    /// kernel could not be asked.
    pub async fn peers_status(&self) -> Vec<PeerStatus> {
        match self.get_device().await {
            Ok(d) => {
                let mut out: Vec<PeerStatus> = d.peers.iter().map(LivePeer::status).collect();
                out.sort_by_key(|p| p.public_key);
                out
            }
            Err(e) => {
                tracing::warn!(ifname = %self.ifname, cause = %e, "reading wireguard peers");
                Vec::new()
            }
        }
    }

    /// Lets go of the device. The link and its configuration stay in the
    /// kernel (and keep carrying traffic) for the next start to take over;
    /// [`KernelDevice::remove`] deletes it.
    pub async fn stop(self) {
        self.conn.abort();
    }

    /// Deletes the interface `ifname` in the current network namespace.
    /// Absent is not an error.
    pub async fn remove(ifname: &str) -> KernelResult<()> {
        crate::device::delete_link(ifname)
            .await
            .map_err(netlink_err(format!("removing interface {ifname}")))
    }

    async fn set_device(&self, msg: WireguardMessage, what: &str) -> KernelResult<()> {
        let what = format!("{what} on {}", self.ifname);
        let mut req = NetlinkMessage::from(GenlMessage::from_payload(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        let mut genl = self.genl.clone();
        let mut replies = genl
            .request(req)
            .await
            .map_err(|e| netlink_err(what.clone())(e.to_string()))?;
        while let Some(reply) = replies.next().await {
            let reply = reply.map_err(|e| netlink_err(what.clone())(e.to_string()))?;
            if let NetlinkPayload::Error(e) = reply.payload {
                if e.code.is_some() {
                    return Err(netlink_err(what)(e.to_io().to_string()));
                }
            }
        }
        Ok(())
    }

    async fn get_device(&self) -> KernelResult<LiveDevice> {
        let what = format!("reading wireguard device {}", self.ifname);
        let mut req = NetlinkMessage::from(GenlMessage::from_payload(WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![WireguardAttribute::IfName(self.ifname.clone())],
        }));
        req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut genl = self.genl.clone();
        let mut replies = genl
            .request(req)
            .await
            .map_err(|e| netlink_err(what.clone())(e.to_string()))?;
        let mut parts = Vec::new();
        while let Some(reply) = replies.next().await {
            let reply = reply.map_err(|e| netlink_err(what.clone())(e.to_string()))?;
            match reply.payload {
                NetlinkPayload::InnerMessage(m) => parts.push(m.payload),
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(netlink_err(what)(e.to_io().to_string()))
                }
                _ => {}
            }
        }
        Ok(parse_device(parts))
    }
}

impl Drop for KernelDevice {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

fn private_bytes(key: &PrivateKey) -> [u8; 32] {
    key.to_x25519().to_bytes()
}

/// Creates the wireguard link `ifname` or finds an existing one, and sets
/// its MTU. Returns whether it was created.
async fn ensure_link(ifname: &str, mtu: u32) -> KernelResult<bool> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| netlink_err("opening rtnetlink")(e.to_string()))?;
    let conn = tokio::spawn(conn);
    let result = async {
        let mut created = false;
        let link = match find_link(&handle, ifname).await? {
            Some(l) => l,
            None => {
                let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Wireguard)
                    .name(ifname.to_string())
                    .mtu(mtu)
                    .build();
                match handle.link().add(msg).execute().await {
                    Ok(()) => created = true,
                    // Someone made it between our look and our add: judge
                    // theirs like any existing link below.
                    Err(rtnetlink::Error::NetlinkError(e))
                        if e.code.map(|c| c.get()) == Some(-libc::EEXIST) => {}
                    Err(e) => {
                        return Err(netlink_err(format!("creating wireguard link {ifname}"))(
                            e.to_string(),
                        ))
                    }
                }
                find_link(&handle, ifname).await?.ok_or_else(|| {
                    netlink_err(format!("finding link {ifname}"))("vanished after creation".into())
                })?
            }
        };
        let kind = link_kind(&link);
        if kind.as_ref() != Some(&InfoKind::Wireguard) {
            return Err(KernelError::NotWireguard {
                ifname: ifname.to_string(),
                kind: kind.map_or_else(|| "none (a plain device)".to_string(), |k| k.to_string()),
            });
        }
        if !created {
            let msg = LinkMessageBuilder::<LinkUnspec>::new()
                .index(link.header.index)
                .mtu(mtu)
                .build();
            if let Err(e) = handle.link().set(msg).execute().await {
                return Err(netlink_err(format!("setting MTU {mtu} on {ifname}"))(
                    e.to_string(),
                ));
            }
        }
        Ok(created)
    }
    .await;
    conn.abort();
    result
}

async fn find_link(handle: &rtnetlink::Handle, ifname: &str) -> KernelResult<Option<LinkMessage>> {
    match handle
        .link()
        .get()
        .match_name(ifname.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(l) => Ok(l),
        Err(rtnetlink::Error::NetlinkError(e))
            if e.code.map(|c| c.get()) == Some(-libc::ENODEV) =>
        {
            Ok(None)
        }
        Err(e) => Err(netlink_err(format!("looking up link {ifname}"))(
            e.to_string(),
        )),
    }
}

fn link_kind(link: &LinkMessage) -> Option<InfoKind> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k.clone()),
            _ => None,
        }),
        _ => None,
    })
}

// ---- Pure: requests from diffs, state from replies ----

/// One peer's part of a SET_DEVICE request before it is split.
struct PeerEntry {
    key: [u8; 32],
    /// What goes with the key in the first message that carries the peer.
    head: Vec<WireguardPeerAttribute>,
    ips: Vec<WireguardAllowedIp>,
}

fn allowed_ip(n: &IpNet) -> WireguardAllowedIp {
    let n = n.trunc();
    let family = match n.addr() {
        IpAddr::V4(_) => WireguardAddressFamily::Ipv4,
        IpAddr::V6(_) => WireguardAddressFamily::Ipv6,
    };
    WireguardAllowedIp(vec![
        WireguardAllowedIpAttr::Family(family),
        WireguardAllowedIpAttr::IpAddr(n.addr()),
        WireguardAllowedIpAttr::Cidr(n.prefix_len()),
    ])
}

fn configure_entry(s: &PeerSpec) -> PeerEntry {
    PeerEntry {
        key: s.public_key.0,
        head: vec![
            WireguardPeerAttribute::Flags(WireguardPeerFlags::ReplaceAllowedIps),
            WireguardPeerAttribute::Endpoint(s.endpoint),
            // Sent even when unset, so an update can turn keepalive off.
            WireguardPeerAttribute::PersistentKeepalive(s.persistent_keepalive.unwrap_or(0)),
        ],
        ips: s.allowed_set().iter().map(allowed_ip).collect(),
    }
}

/// The SET_DEVICE requests that apply `diff` to `ifname`: removals, then
/// updates, then additions (the userspace device's order), packed into
/// messages of at most `budget` bytes. A peer whose allowed IPs do not fit
/// continues in the next message with just its key and the rest of them:
/// the kernel adds those to the set the first message replaced.
pub(crate) fn set_peers_messages(
    ifname: &str,
    diff: &PeerDiff,
    budget: usize,
) -> Vec<WireguardMessage> {
    let removals = diff.remove.iter().map(|k| PeerEntry {
        key: k.0,
        head: vec![WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe)],
        ips: Vec::new(),
    });
    let entries = removals
        .chain(diff.update.iter().map(configure_entry))
        .chain(diff.add.iter().map(configure_entry));
    pack(ifname, entries, budget)
}

/// The requests behind [`KernelDevice::force_handshakes`]: per peer (key,
/// current keepalive), two entries that take the keepalive from 0 to
/// non-zero and leave it as it was. `UpdateOnly`, so a peer removed in the
/// meantime is not brought back.
pub(crate) fn handshake_messages(
    ifname: &str,
    peers: &[(PublicKey, u16)],
    budget: usize,
) -> Vec<WireguardMessage> {
    let entry = |key: &PublicKey, keepalive: u16| PeerEntry {
        key: key.0,
        head: vec![
            WireguardPeerAttribute::Flags(WireguardPeerFlags::UpdateOnly),
            WireguardPeerAttribute::PersistentKeepalive(keepalive),
        ],
        ips: Vec::new(),
    };
    let entries = peers.iter().flat_map(|(k, keepalive)| {
        let (first, then) = if *keepalive == 0 {
            (1, 0)
        } else {
            (0, *keepalive)
        };
        [entry(k, first), entry(k, then)]
    });
    pack(ifname, entries, budget)
}

fn pack(
    ifname: &str,
    entries: impl Iterator<Item = PeerEntry>,
    budget: usize,
) -> Vec<WireguardMessage> {
    let device = WireguardAttribute::IfName(ifname.to_string());
    let overhead =
        NetlinkHeader::default().buffer_len() + GENL_HDRLEN + device.buffer_len() + NLA_HEADER_SIZE;
    let mut out = Vec::new();
    let mut peers: Vec<WireguardPeer> = Vec::new();
    let mut used = overhead;
    let mut flush = |peers: &mut Vec<WireguardPeer>, used: &mut usize| {
        if !peers.is_empty() {
            out.push(WireguardMessage {
                cmd: WireguardCmd::SetDevice,
                attributes: vec![
                    device.clone(),
                    WireguardAttribute::Peers(std::mem::take(peers)),
                ],
            });
        }
        *used = overhead;
    };
    for e in entries {
        let mut head = vec![WireguardPeerAttribute::PublicKey(e.key)];
        head.extend(e.head);
        let mut ips = &e.ips[..];
        loop {
            let base = NLA_HEADER_SIZE + head.as_slice().buffer_len();
            let first_ip = ips
                .first()
                .map_or(0, |ip| NLA_HEADER_SIZE + ip.buffer_len());
            if used + base + first_ip > budget && !peers.is_empty() {
                flush(&mut peers, &mut used);
                continue;
            }
            // At least one IP per message even over budget, so a budget
            // too small for a single entry still makes progress.
            let mut len = base;
            let mut n = 0;
            if !ips.is_empty() {
                len += NLA_HEADER_SIZE;
                for ip in ips {
                    if n > 0 && used + len + ip.buffer_len() > budget {
                        break;
                    }
                    len += ip.buffer_len();
                    n += 1;
                }
            }
            let mut attrs = std::mem::take(&mut head);
            if n > 0 {
                attrs.push(WireguardPeerAttribute::AllowedIps(ips[..n].to_vec()));
            }
            peers.push(WireguardPeer(attrs));
            used += len;
            ips = &ips[n..];
            if ips.is_empty() {
                break;
            }
            flush(&mut peers, &mut used);
            head = vec![WireguardPeerAttribute::PublicKey(e.key)];
        }
    }
    flush(&mut peers, &mut used);
    out
}

/// What a GET_DEVICE dump says about the device.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct LiveDevice {
    pub listen_port: u16,
    pub public_key: Option<PublicKey>,
    pub peers: Vec<LivePeer>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LivePeer {
    pub public_key: PublicKey,
    pub endpoint: Option<SocketAddr>,
    pub persistent_keepalive: u16,
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub allowed_ips: Vec<IpNet>,
}

impl LivePeer {
    fn new(public_key: PublicKey) -> Self {
        LivePeer {
            public_key,
            endpoint: None,
            persistent_keepalive: 0,
            last_handshake: None,
            rx_bytes: 0,
            tx_bytes: 0,
            allowed_ips: Vec::new(),
        }
    }

    fn status(&self) -> PeerStatus {
        PeerStatus {
            public_key: self.public_key,
            endpoint: self.endpoint,
            last_handshake: self.last_handshake,
            rx_bytes: self.rx_bytes,
            tx_bytes: self.tx_bytes,
        }
    }
}

/// Folds the messages of one dump into the device. The kernel splits a
/// dump wherever its buffer fills: a peer whose allowed IPs did not fit is
/// repeated at the start of the next message with only its key and the
/// rest of its IPs, so repeats are merged into the first.
pub(crate) fn parse_device(messages: impl IntoIterator<Item = WireguardMessage>) -> LiveDevice {
    let mut dev = LiveDevice::default();
    let mut index: HashMap<PublicKey, usize> = HashMap::new();
    for m in messages {
        for attr in m.attributes {
            match attr {
                WireguardAttribute::ListenPort(p) => dev.listen_port = p,
                WireguardAttribute::PublicKey(k) => dev.public_key = Some(PublicKey(k)),
                WireguardAttribute::Peers(peers) => {
                    for WireguardPeer(attrs) in peers {
                        let Some(key) = attrs.iter().find_map(|a| match a {
                            WireguardPeerAttribute::PublicKey(k) => Some(PublicKey(*k)),
                            _ => None,
                        }) else {
                            continue;
                        };
                        let i = *index.entry(key).or_insert_with(|| {
                            dev.peers.push(LivePeer::new(key));
                            dev.peers.len() - 1
                        });
                        merge_peer(&mut dev.peers[i], attrs);
                    }
                }
                _ => {}
            }
        }
    }
    dev
}

fn merge_peer(p: &mut LivePeer, attrs: Vec<WireguardPeerAttribute>) {
    for a in attrs {
        match a {
            WireguardPeerAttribute::Endpoint(e) => p.endpoint = Some(e),
            WireguardPeerAttribute::PersistentKeepalive(k) => p.persistent_keepalive = k,
            WireguardPeerAttribute::LastHandshake(t) => p.last_handshake = handshake_time(t),
            WireguardPeerAttribute::RxBytes(n) => p.rx_bytes = n,
            WireguardPeerAttribute::TxBytes(n) => p.tx_bytes = n,
            WireguardPeerAttribute::AllowedIps(ips) => p
                .allowed_ips
                .extend(ips.iter().filter_map(parse_allowed_ip)),
            _ => {}
        }
    }
}

/// The kernel reports wall-clock time, zero for "never".
fn handshake_time(t: WireguardTimeSpec) -> Option<SystemTime> {
    if t.seconds == 0 && t.nano_seconds == 0 {
        return None;
    }
    let secs = u64::try_from(t.seconds).ok()?;
    let nanos = u32::try_from(t.nano_seconds).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

fn parse_allowed_ip(ip: &WireguardAllowedIp) -> Option<IpNet> {
    let addr = ip.iter().find_map(|a| match a {
        WireguardAllowedIpAttr::IpAddr(a) => Some(*a),
        _ => None,
    })?;
    let cidr = ip.iter().find_map(|a| match a {
        WireguardAllowedIpAttr::Cidr(c) => Some(*c),
        _ => None,
    })?;
    IpNet::new(addr, cidr).ok()
}

// ---- Choosing an implementation ----

/// Which WireGuard the agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Implementation {
    /// The kernel's when it has the module, else userspace.
    #[default]
    Auto,
    Kernel,
    Userspace,
}

impl fmt::Display for Implementation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Implementation::Auto => "auto",
            Implementation::Kernel => "kernel",
            Implementation::Userspace => "userspace",
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown WireGuard implementation {0:?}; want auto, kernel or userspace")]
pub struct ParseImplementationError(String);

impl FromStr for Implementation {
    type Err = ParseImplementationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Implementation::Auto),
            "kernel" => Ok(Implementation::Kernel),
            "userspace" => Ok(Implementation::Userspace),
            other => Err(ParseImplementationError(other.to_string())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AnyError {
    #[error("kernel wireguard: {0}")]
    Kernel(#[from] KernelError),
    #[error("userspace wireguard: {0}")]
    Userspace(#[from] device::Error),
    #[error("kernel wireguard was asked for but is unavailable: {0}")]
    KernelUnavailable(String),
    #[error("kernel wireguard failed ({kernel}) and so did userspace ({userspace})")]
    Both {
        kernel: KernelError,
        userspace: device::Error,
    },
}

/// Either device, behind the methods they share.
pub enum AnyDevice {
    Kernel(KernelDevice),
    Userspace(UserspaceDevice),
}

impl AnyDevice {
    /// Which one this is (never `Auto`).
    pub fn implementation(&self) -> Implementation {
        match self {
            AnyDevice::Kernel(_) => Implementation::Kernel,
            AnyDevice::Userspace(_) => Implementation::Userspace,
        }
    }

    pub fn ifname(&self) -> &str {
        match self {
            AnyDevice::Kernel(d) => d.ifname(),
            AnyDevice::Userspace(d) => d.ifname(),
        }
    }

    pub fn offloaded(&self) -> bool {
        match self {
            AnyDevice::Kernel(d) => d.offloaded(),
            AnyDevice::Userspace(d) => d.offloaded(),
        }
    }

    pub async fn listen_port(&self) -> u16 {
        match self {
            AnyDevice::Kernel(d) => d.listen_port().await,
            AnyDevice::Userspace(d) => d.listen_port().await,
        }
    }

    pub async fn set_peers(&self, peers: &[PeerSpec]) -> Result<PeerDiff, AnyError> {
        match self {
            AnyDevice::Kernel(d) => Ok(d.set_peers(peers).await?),
            AnyDevice::Userspace(d) => Ok(d.set_peers(peers).await?),
        }
    }

    pub async fn set_private_key(&self, key: &PrivateKey) -> Result<(), AnyError> {
        match self {
            AnyDevice::Kernel(d) => Ok(d.set_private_key(key).await?),
            AnyDevice::Userspace(d) => Ok(d.set_private_key(key).await?),
        }
    }

    pub async fn force_handshakes(&self, wait: Duration) {
        match self {
            AnyDevice::Kernel(d) => d.force_handshakes(wait).await,
            AnyDevice::Userspace(d) => d.force_handshakes(wait).await,
        }
    }

    pub async fn peers_status(&self) -> Vec<PeerStatus> {
        match self {
            AnyDevice::Kernel(d) => d.peers_status().await,
            AnyDevice::Userspace(d) => d.peers_status().await,
        }
    }

    pub async fn stop(self) {
        match self {
            AnyDevice::Kernel(d) => d.stop().await,
            AnyDevice::Userspace(d) => d.stop().await,
        }
    }

    /// Deletes the interface whichever kind it is, and a userspace
    /// device's stale control socket of that name.
    pub async fn remove(ifname: &str) -> Result<(), AnyError> {
        Ok(UserspaceDevice::remove(ifname).await?)
    }
}

/// Starts the device `prefer` asks for and says why it is that one.
///
/// `Auto` takes the kernel's when [`kernel_wireguard_available`] finds the
/// module and falls back to userspace if the kernel device cannot be
/// created or configured (e.g. a TUN of that name left by an earlier
/// userspace run); `Kernel` fails rather than fall back; `Userspace` never
/// looks at the kernel.
pub async fn start_device(
    config: DeviceConfig,
    prefer: Implementation,
) -> Result<(AnyDevice, String), AnyError> {
    let userspace = |config: DeviceConfig| async move {
        UserspaceDevice::start(config)
            .await
            .map(AnyDevice::Userspace)
    };
    if prefer == Implementation::Userspace {
        return Ok((
            userspace(config).await?,
            "userspace was asked for".to_string(),
        ));
    }
    let probe = kernel_wireguard_available().await;
    if !probe.is_available() {
        let why = match probe {
            KernelWireguard::Unavailable(why) => why,
            _ => unreachable!("is_available said otherwise"),
        };
        if prefer == Implementation::Kernel {
            return Err(AnyError::KernelUnavailable(why));
        }
        let reason = format!("the kernel has no WireGuard ({why})");
        tracing::info!(%reason, "using userspace wireguard");
        return Ok((userspace(config).await?, reason));
    }
    match KernelDevice::start(config.clone()).await {
        Ok(d) => Ok((
            AnyDevice::Kernel(d),
            format!("the kernel has WireGuard ({probe:?})"),
        )),
        Err(e) if prefer == Implementation::Kernel => Err(e.into()),
        Err(kernel) => {
            let reason = format!("the kernel has WireGuard but its device failed: {kernel}");
            tracing::warn!(%reason, "falling back to userspace wireguard");
            match userspace(config).await {
                Ok(d) => Ok((d, reason)),
                Err(userspace) => Err(AnyError::Both { kernel, userspace }),
            }
        }
    }
}

#[cfg(test)]
mod tests;
