//! Sends the probes `muslin_model::health::Tracker` asks for, to peers'
//! gossip ports, and feeds it the answers: which peer addresses answer, the
//! data path (to the peer's VTEP address, so it crosses the path pods use)
//! and DF probes of the path MTU. Decisions stay in the tracker.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use muslin_model::health::{PeerPlan, Purpose, Tracker, TICK};
use muslin_store::probe_wire::{name_tag, ProbeWire};
use tokio::net::UdpSocket;
use tokio::sync::watch;

/// IPv4 + UDP headers: a probe of IP size S carries S - 28 bytes.
const IP_UDP: u32 = 28;

/// Bytes of probes sent and of answers received (IP packets, headers
/// included), for `status`: what probing costs.
pub static SENT: AtomicU64 = AtomicU64::new(0);
pub static RECEIVED: AtomicU64 = AtomicU64::new(0);

/// What the cluster loop hands the prober each round.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub peers: Vec<PeerPlan>,
    /// MTU of our underlay interface: the largest probe.
    pub local_mtu: u32,
}

pub fn spawn(
    wire: ProbeWire,
    port: u16,
    plan: watch::Receiver<Arc<Plan>>,
    tracker: Arc<Mutex<Tracker>>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let std = std::net::UdpSocket::bind("0.0.0.0:0")?;
    std.set_nonblocking(true)?;
    // DF on every probe, and the kernel's cached path MTU ignored, so a
    // probe larger than the path is lost (or refused) rather than split.
    let v: libc::c_int = libc::IP_PMTUDISC_PROBE;
    // SAFETY: a valid socket and an int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            std.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            &v as *const _ as *const libc::c_void,
            std::mem::size_of_val(&v) as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Answers to a round's probes arrive together.
    if let Err(e) =
        muslin_store::socket_buffer::widen(&std, muslin_store::socket_buffer::RECEIVE_BUFFER)
    {
        tracing::warn!(cause = %e, "probe socket keeps the default receive buffer");
    }
    let sock = UdpSocket::from_std(std)?;
    Ok(tokio::spawn(run(sock, wire, port, plan, tracker)))
}

async fn run(
    sock: UdpSocket,
    wire: ProbeWire,
    port: u16,
    plan: watch::Receiver<Arc<Plan>>,
    tracker: Arc<Mutex<Tracker>>,
) {
    let mut pending: HashMap<u64, (String, Purpose, Instant)> = HashMap::new();
    let mut next_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round = 0u64;
    let mut buf = vec![0u8; 65_536];
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let p = Arc::clone(&plan.borrow());
                let now = Instant::now();
                let due = tracker
                    .lock()
                    .expect("tracker lock")
                    .due(&p.peers, p.local_mtu, round, now);
                round += 1;
                let ports: HashMap<&str, u16> =
                    p.peers.iter().map(|x| (x.name.as_str(), x.port)).collect();
                for (peer, addr, purpose) in due {
                    let to = SocketAddr::new(addr, ports.get(peer.as_str()).copied().unwrap_or(port));
                    next_id = next_id.wrapping_add(1);
                    let size = match purpose {
                        Purpose::Mtu(s) => s.saturating_sub(IP_UDP) as usize,
                        _ => 0,
                    };
                    let frame = wire.request(next_id, size);
                    // EMSGSIZE (larger than our own interface) and an
                    // unreachable network both mean: no answer.
                    if sock.send_to(&frame, to).await.is_ok() {
                        SENT.fetch_add(frame.len() as u64 + u64::from(IP_UDP), Ordering::Relaxed);
                        pending.insert(next_id, (peer, purpose, now));
                    }
                }
                pending.retain(|_, (_, _, at)| now.duration_since(*at) < Duration::from_secs(10));
            }
            r = sock.recv_from(&mut buf) => {
                let Ok((n, _)) = r else { continue };
                RECEIVED.fetch_add(n as u64 + u64::from(IP_UDP), Ordering::Relaxed);
                let Some(ack) = wire.ack(&buf[..n]) else { continue };
                let Some((peer, purpose, _)) = pending.remove(&ack.id) else { continue };
                // Only the peer itself counts: a probe that landed on
                // another host (or on us) proves nothing about the peer.
                if ack.from == name_tag(&peer) {
                    tracker
                        .lock()
                        .expect("tracker lock")
                        .answered(&peer, &purpose, Instant::now());
                }
            }
        }
    }
}

/// The addresses a peer's record offers, the advertised one first.
pub fn addresses_of(rec: &muslin_model::cluster::NodeRecord) -> Vec<IpAddr> {
    let mut v = vec![rec.address];
    v.extend(rec.addresses.iter().filter(|a| **a != rec.address).take(7));
    v
}
