//! `muslin dns`: what the local agent's name service answers.

use std::process::ExitCode;

use anyhow::{bail, Result};
use muslin_model::api::{DnsStatus, Request, Response};

use crate::cli::DnsCommand;

pub fn run(c: DnsCommand) -> Result<ExitCode> {
    match c {
        DnsCommand::Lookup {
            name,
            networks,
            socket,
            json,
        } => {
            let req = Request::DnsLookup { name, networks };
            let a = match muslin_cni::call(&socket, &req).map_err(|e| anyhow::anyhow!("{e}"))? {
                Response::Dns(a) => a,
                Response::Error(e) => bail!("{}", e.msg),
                other => bail!("unexpected reply from the agent: {other:?}"),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&a)?);
            } else {
                println!("{}  (as seen from {})", a.query, a.networks.join(", "));
                for addr in &a.addresses {
                    println!("  {addr}");
                }
                for n in a.names.iter().chain(a.forwarded.iter()) {
                    println!("  {n}");
                }
                println!("  {}", a.outcome);
            }
            let found = !a.addresses.is_empty() || !a.names.is_empty() || !a.forwarded.is_empty();
            Ok(if found {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// The name service's lines of `muslin status`.
pub fn print_status(d: &DnsStatus) {
    let upstreams = if d.upstreams.is_empty() {
        "none (names outside the domain get SERVFAIL)".to_string()
    } else {
        d.upstreams.join(", ")
    };
    println!(
        "dns      {} names in {}; upstream {upstreams}; {} answered, {} NXDOMAIN, {} forwarded, {} refused",
        d.names, d.domain, d.answered, d.nxdomain, d.forwarded, d.refused
    );
    for l in &d.listeners {
        match &l.error {
            None => println!("         network {} at {}", l.network, l.address),
            Some(e) => println!(
                "         network {} at {}: NOT SERVING: {e}",
                l.network, l.address
            ),
        }
    }
}
