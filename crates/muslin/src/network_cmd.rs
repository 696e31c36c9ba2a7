//! `muslin network`: networks besides the default one, as cluster objects
//! managed through the local agent.

use std::process::ExitCode;

use anyhow::{bail, Result};
use muslin_model::api::{NetworkStatus, Request, Response};
use muslin_model::network::CreateNetwork;

use crate::cli::NetworkCommand;

fn call(socket: &std::path::Path, req: &Request) -> Result<Response> {
    match muslin_cni::call(socket, req).map_err(|e| anyhow::anyhow!("{e}"))? {
        Response::Error(e) => bail!("{}", e.msg),
        r => Ok(r),
    }
}

fn list(socket: &std::path::Path) -> Result<Vec<NetworkStatus>> {
    match call(socket, &Request::NetworkList)? {
        Response::Networks { networks } => Ok(networks),
        other => bail!("unexpected reply from the agent: {other:?}"),
    }
}

pub fn run(c: NetworkCommand) -> Result<ExitCode> {
    match c {
        NetworkCommand::Create {
            name,
            subnet,
            block_size,
            backend,
            vni,
            isolated_from_host,
            socket,
            json,
        } => {
            let req = CreateNetwork {
                name,
                subnets: subnet,
                block_size,
                backend: backend
                    .map(|b| {
                        b.parse()
                            .map_err(|e: String| anyhow::anyhow!("--backend: {e}"))
                    })
                    .transpose()?,
                vni,
                isolated_from_host,
            };
            let Response::Network(n) = call(&socket, &Request::NetworkCreate(req))? else {
                bail!("unexpected reply from the agent");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&n)?);
            } else {
                println!(
                    "network {} created: subnet {}, VNI {}, table {}{}",
                    n.name,
                    join(&n.subnets),
                    n.vni,
                    n.table(),
                    if n.isolated_from_host {
                        ", isolated from the hosts"
                    } else {
                        ""
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        NetworkCommand::Delete { name, socket } => {
            call(&socket, &Request::NetworkDelete { name: name.clone() })?;
            println!("network {name} deleted");
            Ok(ExitCode::SUCCESS)
        }
        NetworkCommand::List { socket, json } => {
            let v = list(&socket)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<16} {:<20} {:<9} {:<6} {:<5} {:<6} DROPPED (OTHER NET/HOST)",
                "NETWORK", "SUBNET", "VNI", "HOSTS", "EPS", "NODES"
            );
            for n in &v {
                println!(
                    "{:<16} {:<20} {:<9} {:<6} {:<5} {:<6} {}/{}{}",
                    n.name,
                    join(&n.subnets),
                    n.vni,
                    if n.host_reach { "yes" } else { "no" },
                    n.endpoints.len(),
                    n.nodes.len(),
                    n.dropped_leaving,
                    n.dropped_to_host,
                    if n.settling { "  (settling)" } else { "" }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        NetworkCommand::Show { name, socket, json } => {
            let Some(n) = list(&socket)?.into_iter().find(|n| n.name == name) else {
                bail!("network {name} does not exist");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&n)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("network   {} (id {})", n.name, n.id);
            println!("subnets   {}", join(&n.subnets));
            println!("vni       {}", n.vni);
            println!(
                "hosts     {}",
                match (&n.host_reach, &n.host_reach_why) {
                    (true, _) => "route to its containers".to_string(),
                    (false, Some(why)) => format!("do not route to its containers: {why}"),
                    (false, None) => "do not route to its containers".to_string(),
                }
            );
            println!(
                "dropped   {} packets leaving it for another network, {} for this host (here)",
                n.dropped_leaving, n.dropped_to_host
            );
            println!("nodes     {}", n.nodes.join(", "));
            println!("endpoints {}", n.endpoints.len());
            for e in &n.endpoints {
                println!("          {e}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn join(v: &[impl std::fmt::Display]) -> String {
    let v: Vec<String> = v.iter().map(|a| a.to_string()).collect();
    v.join(",")
}
