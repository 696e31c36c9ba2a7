//! `muslin wireguard-device IFNAME`: a wg-compatible userspace WireGuard
//! daemon in the foreground, for benchmarks and interop tests.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct WireguardDeviceArgs {
    /// Interface to create (configure it with `wg` and `ip` afterwards)
    pub ifname: String,
    /// MTU of the interface
    #[arg(long, default_value_t = 1420)]
    pub mtu: u16,
    /// Turn the TUN offloads (TSO/GRO) off, to measure what they buy
    #[arg(long)]
    pub no_offload: bool,
}

pub fn run(a: WireguardDeviceArgs) -> Result<ExitCode> {
    let opts = muslin_wireguard::DaemonOptions {
        mtu: a.mtu,
        offload: !a.no_offload,
    };
    muslin_wireguard::run_uapi_daemon_blocking(&a.ifname, opts)?;
    Ok(ExitCode::SUCCESS)
}
