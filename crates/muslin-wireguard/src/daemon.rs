//! A wg-compatible userspace daemon: an interface with no key and no
//! peers, configured entirely through the UAPI socket by `wg` and `ip`,
//! as one would configure wireguard-go.

use tokio::signal::unix::{signal, SignalKind};

use crate::device::{Result, UserspaceDevice};
use crate::tun::TunOptions;

#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub mtu: u16,
    /// TUN offloads; off only to measure what they buy.
    pub offload: bool,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            mtu: 1420,
            offload: true,
        }
    }
}

/// Runs until SIGTERM or SIGINT (or until the interface is deleted), then
/// removes the interface and its socket. Must run inside a tokio runtime.
pub async fn run_uapi_daemon(ifname: &str, opts: DaemonOptions) -> Result<()> {
    // Handlers first, so a signal that arrives while we start is not lost
    // to the default action (which would leave the interface behind).
    let mut term = signal(SignalKind::terminate()).map_err(tun_err(ifname))?;
    let mut int = signal(SignalKind::interrupt()).map_err(tun_err(ifname))?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    run_uapi_daemon_until(ifname, opts, stop).await
}

/// [`run_uapi_daemon`] with the caller deciding when to stop.
pub async fn run_uapi_daemon_until(
    ifname: &str,
    opts: DaemonOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let device = UserspaceDevice::open(
        ifname,
        None,
        TunOptions {
            mtu: opts.mtu,
            offload: opts.offload,
            persistent: false,
        },
        Some(ifname),
        0,
    )?;
    tracing::info!(
        ifname,
        offload = device.offloaded(),
        "wireguard device ready for `wg`"
    );
    tokio::select! {
        _ = stop => {}
        _ = device.failed() => tracing::warn!(ifname, "device failed"),
    }
    device.stop().await;
    UserspaceDevice::remove(ifname).await
}

/// Builds a multi-thread runtime and runs [`run_uapi_daemon`] on it.
pub fn run_uapi_daemon_blocking(ifname: &str, opts: DaemonOptions) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(tun_err(ifname))?;
    rt.block_on(run_uapi_daemon(ifname, opts))
}

fn tun_err(ifname: &str) -> impl Fn(std::io::Error) -> crate::device::Error + '_ {
    move |source| crate::device::Error::Tun {
        ifname: ifname.to_string(),
        source,
    }
}
