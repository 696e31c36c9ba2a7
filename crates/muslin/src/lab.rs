//! `muslin lab`: argument handling and output; the work is in `muslin-lab`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use muslin_lab::faults::{self, Cut};
use muslin_lab::ops::{self, Ctx, UpOptions};
use muslin_lab::probe::Proto;

use crate::cli::LabCommand;

pub fn protos(list: &str) -> Result<Vec<Proto>> {
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            Proto::parse(s).with_context(|| {
                format!("unknown protocol {s:?}; expected tcp, udp, icmp or ip253")
            })
        })
        .collect()
}

/// `lab check --proto`: the probe's protocols, and whether names are
/// checked (`dns`).
pub fn checks(list: &str) -> Result<(Vec<Proto>, bool)> {
    let (mut protos, mut dns) = (Vec::new(), false);
    for s in list.split(',').filter(|s| !s.is_empty()) {
        if s == muslin_lab::check::DNS {
            dns = true;
            continue;
        }
        protos.push(Proto::parse(s).with_context(|| {
            format!("unknown protocol {s:?}; expected tcp, udp, icmp, ip253 or dns")
        })?);
    }
    if protos.is_empty() && !dns {
        bail!("--proto: nothing to check; expected tcp, udp, icmp, ip253 or dns");
    }
    Ok((protos, dns))
}

fn ctx() -> Result<Ctx> {
    Ok(Ctx {
        bin: std::env::current_exe().context("locating the muslin binary")?,
        progress: Box::new(|line| eprintln!("{line}")),
    })
}

fn require_root() -> Result<()> {
    if !nix_is_root() {
        bail!("the lab creates network namespaces: run it as root");
    }
    Ok(())
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn run(cmd: LabCommand) -> Result<ExitCode> {
    require_root()?;
    match cmd {
        LabCommand::Up {
            name,
            hosts,
            backend,
            encryption,
            datastore,
            etcd_members,
            file,
            converge_timeout,
            json,
        } => {
            let topology = match &file {
                Some(p) => Some((
                    p.display().to_string(),
                    std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?,
                )),
                None => None,
            };
            let o = UpOptions {
                name,
                hosts,
                topology,
                backend,
                encryption,
                datastore,
                etcd_members,
                converge_timeout,
            };
            let r = ops::up(&ctx()?, &o)?;
            let converged = r.matrix.as_ref().is_none_or(|m| m.ok());
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                if let Some(m) = &r.matrix {
                    print!("{}", m.render());
                }
                println!(
                    "lab {} is up: {} hosts, {} containers; underlay and namespaces {:.2} s, total {:.2} s",
                    r.name, r.hosts, r.containers, r.build_seconds, r.total_seconds
                );
                match r.converge_seconds {
                    Some(c) => println!("converged {c:.2} s after the agents started"),
                    None if converge_timeout == 0 => println!("not checked (--converge-timeout 0)"),
                    None => println!("NOT converged within {converge_timeout} s: see `muslin lab check --name {}`", r.name),
                }
                println!("try: ip netns exec {}-h1-c1 ping -c1 <address>   |   muslin lab status   |   muslin lab down", r.name);
            }
            Ok(if converged {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        LabCommand::Run {
            lab,
            host,
            container,
            cmd,
        } => {
            let code = ops::run(&ctx()?, lab.name.as_deref(), &host, &container, &cmd)?;
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        LabCommand::Rm {
            lab,
            host,
            container,
        } => {
            ops::rm(&ctx()?, lab.name.as_deref(), &host, &container)?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Exec { lab, target, cmd } => {
            ops::exec(lab.name.as_deref(), &target, &cmd)?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Status { lab, json } => {
            let s = ops::status(lab.name.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", s.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Check {
            lab,
            proto,
            timeout_ms,
            full,
            seed,
            sample,
            json,
        } => {
            let (protos, dns) = checks(&proto)?;
            let m = ops::check_with(
                lab.name.as_deref(),
                &protos,
                dns,
                Duration::from_millis(timeout_ms),
                &ops::CheckOptions {
                    full,
                    seed,
                    budget: sample,
                    diagnose: true,
                },
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&m)?);
            } else {
                print!("{}", m.render());
                for line in m.problems().iter().take(10) {
                    println!("  {line}");
                }
            }
            Ok(if m.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        LabCommand::Block {
            lab,
            a,
            b,
            udp_port,
        } => {
            let r = faults::block(lab.name.as_deref(), Cut::new(&a, &b, udp_port))?;
            print!("{}", r.render(true));
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Unblock {
            lab,
            a,
            b,
            udp_port,
        } => {
            let r = faults::unblock(lab.name.as_deref(), Cut::new(&a, &b, udp_port))?;
            print!("{}", r.render(false));
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Kill { lab, host } => {
            print!("{}", faults::kill(lab.name.as_deref(), &host)?.render());
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Logs { lab, host } => {
            print!("{}", ops::logs(lab.name.as_deref(), &host)?);
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Down { lab, all } => {
            let names = if all {
                muslin_lab::registry::list()
            } else {
                match lab.name {
                    Some(n) => vec![n],
                    None => match muslin_lab::registry::pick(None) {
                        Ok(n) => vec![n],
                        Err(muslin_lab::LabError::NoLab) => vec![],
                        Err(e) => return Err(e.into()),
                    },
                }
            };
            for n in names {
                let t = std::time::Instant::now();
                let (existed, neighbour) = ops::down(&n)?;
                if existed {
                    eprintln!("lab {n} removed in {:.2} s", t.elapsed().as_secs_f64());
                } else {
                    eprintln!("no lab named {n}; nothing to do");
                }
                for line in neighbour.lines(false) {
                    eprintln!("{line}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_check_takes_dns_besides_the_probes_protocols() {
        let (p, dns) = checks("tcp,udp,icmp,dns").unwrap();
        assert_eq!(p, [Proto::Tcp, Proto::Udp, Proto::Icmp]);
        assert!(dns);
        assert_eq!(checks("dns").unwrap(), (vec![], true));
        assert_eq!(checks("ip253").unwrap(), (vec![Proto::Raw], false));
        let e = checks("tcp,dnz").unwrap_err().to_string();
        assert!(e.contains("\"dnz\"") && e.contains("ip253 or dns"), "{e}");
        assert!(checks("").is_err());
        // `probe check` has no dns: it probes one address.
        assert!(protos("dns").is_err());
    }
}
