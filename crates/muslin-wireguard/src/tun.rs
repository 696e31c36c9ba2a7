//! The TUN side of the device, with the kernel's offloads turned on.
//!
//! With IFF_VNET_HDR and TSO/USO enabled, the kernel hands us TCP (and UDP)
//! super-packets of up to 64 KB: one read and one pass of the kernel's TCP
//! stack per ~45 MTU-sized segments. tun-rs splits them on read; on write we
//! collect what the decryptor produced and let tun-rs coalesce consecutive
//! segments of a flow (GRO) so the kernel again sees few, large packets.

use std::io;
use std::sync::Arc;

use gotatun::packet::{Ip, Packet, PacketBufPool};
use gotatun::tun::{IpRecv, IpSend, MtuWatcher};
use tokio::sync::mpsc;
use tun_rs::{AsyncDevice, GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

/// Packets queued between the decryptor and the TUN writer. Large enough to
/// hold a few coalescable batches, small enough to push back on the peer.
const WRITE_QUEUE: usize = 1024;

/// How the TUN was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunOptions {
    pub mtu: u16,
    /// IFF_VNET_HDR with TSO/USO on reads and GRO on writes.
    pub offload: bool,
    /// TUNSETPERSIST: the interface (and routes through it) outlive us.
    pub persistent: bool,
}

/// Opens `/dev/net/tun` as `ifname`. An existing TUN of that name (left
/// persistent by a previous agent) is attached to rather than recreated, so
/// the routes pointing at it keep working across restarts.
pub fn open(ifname: &str, opts: TunOptions) -> io::Result<(TunWriter, TunReader, bool)> {
    let dev = tun_rs::DeviceBuilder::new()
        .name(ifname)
        .mtu(opts.mtu)
        .offload(opts.offload)
        .enable(true)
        .build_async()?;
    if opts.persistent {
        dev.persist()?;
    }
    let offloaded = dev.tcp_gso();
    let dev = Arc::new(dev);
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    tokio::spawn(write_loop(Arc::clone(&dev), rx));
    let reader = TunReader {
        dev,
        raw: vec![0; VIRTIO_NET_HDR_LEN + 65535],
        slots: Vec::new(),
        sizes: vec![0; IDEAL_BATCH_SIZE],
        out: Vec::with_capacity(IDEAL_BATCH_SIZE),
        mtu: MtuWatcher::new(opts.mtu),
    };
    Ok((TunWriter { tx }, reader, offloaded))
}

/// The IpSend half: hands decrypted packets to the writer task, which sees
/// whole batches and so can coalesce them. gotatun calls `send` once per
/// packet and never says when a burst ends; a queue drained with
/// `recv_many` recovers that boundary for free.
pub struct TunWriter {
    tx: mpsc::Sender<Packet<Ip>>,
}

impl IpSend for TunWriter {
    async fn send(&mut self, packet: Packet<Ip>) -> io::Result<()> {
        self.tx
            .send(packet)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "TUN writer stopped"))
    }
}

async fn write_loop(dev: Arc<AsyncDevice>, mut rx: mpsc::Receiver<Packet<Ip>>) {
    let mut gro = GROTable::default();
    let mut batch = Vec::with_capacity(IDEAL_BATCH_SIZE);
    let mut bufs: Vec<Vec<u8>> = (0..IDEAL_BATCH_SIZE)
        .map(|_| Vec::with_capacity(VIRTIO_NET_HDR_LEN + 2048))
        .collect();
    loop {
        let n = rx.recv_many(&mut batch, IDEAL_BATCH_SIZE).await;
        if n == 0 {
            return;
        }
        // The virtio header must sit in front of each packet, and gotatun's
        // buffers have no headroom we can claim, so we copy: a memcpy per
        // packet is cheap next to the decryption that produced it.
        for (buf, p) in bufs.iter_mut().zip(batch.drain(..)) {
            buf.clear();
            buf.resize(VIRTIO_NET_HDR_LEN, 0);
            buf.extend_from_slice(&p.into_bytes());
        }
        if let Err(e) = dev
            .send_multiple(&mut gro, &mut bufs[..n], VIRTIO_NET_HDR_LEN)
            .await
        {
            if is_fatal(&e) {
                tracing::error!("TUN write failed, writer stops: {e}");
                return;
            }
            tracing::debug!("TUN write: {e}");
        }
    }
}

/// A pool buffer as tun-rs wants to see it.
struct Slot(Packet<[u8]>);

impl AsRef<[u8]> for Slot {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl AsMut<[u8]> for Slot {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

/// The IpRecv half: one read may yield a whole TSO super-packet, split here
/// into MTU-sized packets, each in its own pool buffer.
pub struct TunReader {
    dev: Arc<AsyncDevice>,
    raw: Vec<u8>,
    slots: Vec<Slot>,
    sizes: Vec<usize>,
    out: Vec<Packet<Ip>>,
    mtu: MtuWatcher,
}

impl IpRecv for TunReader {
    async fn recv<'a>(
        &'a mut self,
        pool: &mut PacketBufPool,
    ) -> io::Result<impl Iterator<Item = Packet<Ip>> + Send + 'a> {
        while self.slots.len() < IDEAL_BATCH_SIZE {
            self.slots.push(Slot(pool.get()));
        }
        loop {
            let n = match self
                .dev
                .recv_multiple(&mut self.raw, &mut self.slots, &mut self.sizes, 0)
                .await
            {
                Ok(n) => n,
                // gotatun treats InvalidData/InvalidInput as "the TUN is gone"
                // and tears the device down; a packet tun-rs cannot split is
                // not that, so it is dropped here.
                Err(e) if e.raw_os_error().is_none() => {
                    tracing::debug!("TUN read: dropping a packet: {e}");
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.out.clear();
            for i in 0..n {
                let mut p = std::mem::replace(&mut self.slots[i].0, pool.get());
                p.truncate(self.sizes[i]);
                if let Ok(ip) = p.try_into_ip() {
                    self.out.push(ip);
                }
            }
            if !self.out.is_empty() {
                return Ok(self.out.drain(..));
            }
        }
    }

    fn mtu(&self) -> MtuWatcher {
        self.mtu.clone()
    }
}

fn is_fatal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADF) | Some(libc::EBADFD) | Some(libc::ENODEV) | Some(libc::EIO)
    )
}
