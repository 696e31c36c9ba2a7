//! `muslin policy` and `muslin label`: policies as cluster objects, and the
//! labels they select by, managed through the local agent.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use muslin_model::api::{PolicyStatus, Request, Response};
use muslin_model::policy::{self, Format, Peer, Policy, Port};

use crate::cli::{LabelArgs, PolicyCommand};

fn call(socket: &std::path::Path, req: &Request) -> Result<Response> {
    match muslin_cni::call(socket, req).map_err(|e| anyhow::anyhow!("{e}"))? {
        Response::Error(e) => bail!("{}", e.msg),
        r => Ok(r),
    }
}

fn list(socket: &std::path::Path) -> Result<Vec<PolicyStatus>> {
    match call(socket, &Request::PolicyList)? {
        Response::Policies { policies } => Ok(policies),
        other => bail!("unexpected reply from the agent: {other:?}"),
    }
}

/// `NAME`, `NAMESPACE:NAME` or `NAMESPACE/NAME`, or NAME with --namespace.
fn key_of(name: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => policy::key(Some(ns), name),
        None => name.replacen('/', ":", 1),
    }
}

pub fn run(c: PolicyCommand) -> Result<ExitCode> {
    match c {
        PolicyCommand::Apply {
            file,
            format,
            socket,
        } => {
            let path = file.to_string_lossy().to_string();
            let text = if path == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s)?;
                s
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {path}"))?
            };
            let format = match format.as_deref() {
                None => Format::of_path(&path),
                Some("yaml") => Format::Yaml,
                Some("toml") => Format::Toml,
                Some(o) => bail!("--format: {o:?}: yaml or toml"),
            };
            // Checked here too, so a mistake is reported without an agent.
            policy::parse_document(&text, format).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
            let req = Request::PolicyApply {
                text,
                toml: format == Format::Toml,
            };
            let Response::Applied { keys } = call(&socket, &req)? else {
                bail!("unexpected reply from the agent");
            };
            for k in keys {
                println!("policy {k} applied");
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::List { socket, json } => {
            let v = list(&socket)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            print_table(&v);
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Show {
            name,
            namespace,
            socket,
            json,
        } => {
            let key = key_of(&name, namespace.as_deref());
            let Some(s) = list(&socket)?.into_iter().find(|p| p.key == key) else {
                bail!("no policy {key} (a namespaced policy is NAMESPACE:NAME)");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
                return Ok(ExitCode::SUCCESS);
            }
            show(&s);
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Delete {
            name,
            namespace,
            socket,
        } => {
            let key = key_of(&name, namespace.as_deref());
            call(&socket, &Request::PolicyDelete { key: key.clone() })?;
            println!("policy {key} deleted");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The policies as a table (`policy list`, `status`).
pub fn print_table(v: &[PolicyStatus]) {
    println!(
        "{:<32} {:<6} {:<6} {:<16} {:<5} {:>8} {:>8}",
        "POLICY", "ACTION", "ORDER", "DIRECTIONS", "HERE", "DENIED", "ISOLATED"
    );
    for s in v {
        let p = &s.policy;
        println!(
            "{:<32} {:<6} {:<6} {:<16} {:<5} {:>8} {:>8}",
            s.key,
            format!("{:?}", p.action).to_lowercase(),
            p.order.map(|o| o.to_string()).unwrap_or_else(|| "-".into()),
            directions(p),
            s.protects_here.len(),
            s.denied_here,
            s.dropped_isolated_here
        );
    }
}

fn directions(p: &Policy) -> String {
    let v: Vec<&str> = p.types.iter().map(|d| d.name()).collect();
    v.join(",")
}

fn show(s: &PolicyStatus) {
    let p = &s.policy;
    println!("policy    {}", s.key);
    println!(
        "scope     {}",
        p.namespace
            .as_deref()
            .map(|n| format!("namespace {n}"))
            .unwrap_or_else(|| "cluster-wide".into())
    );
    if let Some(n) = &p.network {
        println!("network   {n}");
    }
    println!(
        "action    {}{}",
        format!("{:?}", p.action).to_lowercase(),
        p.order.map(|o| format!(" (order {o})")).unwrap_or_default()
    );
    println!("selects   {}", p.selector);
    println!("applies   {}", directions(p));
    for d in &p.types {
        let rules = p.rules(*d);
        if rules.is_empty() {
            println!("{:<9} nothing allowed", d.name());
        }
        for (i, r) in rules.iter().enumerate() {
            let who = match &r.peers {
                None => "anyone".to_string(),
                Some(peers) => peers.iter().map(peer).collect::<Vec<_>>().join(" | "),
            };
            let ports = if r.ports.is_empty() {
                "any port".to_string()
            } else {
                r.ports
                    .iter()
                    .map(|pr| match &pr.port {
                        None => pr.protocol.name().to_string(),
                        Some(Port::Range { first, last }) if first == last => {
                            format!("{}/{first}", pr.protocol.name())
                        }
                        Some(Port::Range { first, last }) => {
                            format!("{}/{first}-{last}", pr.protocol.name())
                        }
                        Some(Port::Named(n)) => format!("{}/{n}", pr.protocol.name()),
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            };
            println!("{:<9} #{i} {who} on {ports}", d.name());
        }
    }
    println!("here      protects {} endpoints", s.protects_here.len());
    for i in &s.protects_here {
        println!("          {i}");
    }
    println!(
        "drops     {} denied by its rules, {} at endpoints it isolates (here)",
        s.denied_here, s.dropped_isolated_here
    );
    println!("written   by {} at {} ms", s.updated_by, s.updated_at_ms);
}

fn peer(p: &Peer) -> String {
    match p {
        Peer::Block { cidr, except } if except.is_empty() => cidr.to_string(),
        Peer::Block { cidr, except } => {
            let e: Vec<String> = except.iter().map(ToString::to_string).collect();
            format!("{cidr} except {}", e.join(","))
        }
        Peer::Endpoints { pods, namespaces } => {
            let pods = pods
                .as_ref()
                .map(|s| format!("pods {s}"))
                .unwrap_or_else(|| "all pods".into());
            match namespaces {
                Some(n) => format!("{pods} in namespaces {n}"),
                None => format!("{pods} (same namespace)"),
            }
        }
    }
}

/// `key=value` sets, `key-` removes.
fn parse_labels(args: &[String]) -> Result<(BTreeMap<String, String>, Vec<String>)> {
    let mut set = BTreeMap::new();
    let mut remove = Vec::new();
    for a in args {
        if let Some((k, v)) = a.split_once('=') {
            set.insert(k.to_string(), v.to_string());
        } else if let Some(k) = a.strip_suffix('-') {
            remove.push(k.to_string());
        } else {
            bail!("{a:?}: key=value sets a label, key- removes one");
        }
    }
    Ok((set, remove))
}

pub fn label(a: LabelArgs) -> Result<ExitCode> {
    let (set, remove) = parse_labels(&a.labels)?;
    let req = match a.target.strip_prefix("ns:") {
        Some(ns) => Request::NamespaceLabel {
            namespace: ns.to_string(),
            set,
            remove,
        },
        None => Request::Label {
            target: a.target.clone(),
            set,
            remove,
        },
    };
    let Response::Labels { labels } = call(&a.socket, &req)? else {
        bail!("unexpected reply from the agent");
    };
    let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("{}: {}", a.target, l.join(" "));
    Ok(ExitCode::SUCCESS)
}
