//! `muslin`: one binary with three roles. With `CNI_COMMAND` in the
//! environment it is the CNI plugin; otherwise it is the CLI, whose `agent`
//! command runs the per-host daemon.

mod cli;
mod commands;
mod dns_cmd;
mod doctor_cmd;
mod lab;
mod network_cmd;
mod policy_cmd;
mod wireguard_device_cmd;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    if std::env::var_os("CNI_COMMAND").is_some() {
        return cni_main();
    }
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("muslin: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The plugin speaks only JSON on stdout; diagnostics, if any, go to stderr.
fn cni_main() -> ExitCode {
    let stdin = muslin_cni::read_config(std::io::stdin().lock()).unwrap_or_else(|e| {
        eprintln!("muslin: reading stdin: {e}");
        Vec::new()
    });
    let out = muslin_cni::run(|k| std::env::var(k).ok(), &stdin);
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.stdout.as_bytes());
    let _ = stdout.flush();
    ExitCode::from(out.exit_code as u8)
}
