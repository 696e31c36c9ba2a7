//! `muslin doctor`: gathers this host's facts and the agent's view, runs
//! every check of `muslin_model::doctor`, prints one line per finding and
//! exits non-zero when one is a problem. It changes nothing on the host.

use std::process::ExitCode;

use anyhow::Result;
use muslin_model::api::{NodeStatus, Request, Response};
use muslin_model::doctor::{diagnose, worst, Finding, Level};

use crate::cli::StatusArgs;

/// Exit status when a check found a problem.
const PROBLEM: u8 = 1;

pub fn doctor(a: StatusArgs) -> Result<ExitCode> {
    let agent: Result<NodeStatus, String> = match muslin_cni::call(&a.socket, &Request::Status) {
        Ok(Response::Status(s)) => Ok(s),
        Ok(other) => Err(format!(
            "unexpected reply on {}: {other:?}",
            a.socket.display()
        )),
        Err(e) => Err(e.to_string()),
    };
    let peers: Vec<std::net::IpAddr> = agent
        .as_ref()
        .ok()
        .and_then(|s| s.cluster.as_ref())
        .map(|c| {
            c.nodes
                .iter()
                .filter(|n| n.path != "self")
                .filter_map(|n| n.address)
                .collect()
        })
        .unwrap_or_default();
    let host = muslin_kernel::host_facts::gather(&peers);
    let findings = diagnose(&host, agent.as_ref().map_err(String::as_str));
    let level = worst(&findings);
    if a.json {
        let problems = findings
            .iter()
            .filter(|f| f.level == Level::Problem)
            .count();
        let warnings = findings
            .iter()
            .filter(|f| f.level == Level::Warning)
            .count();
        let out = serde_json::json!({
            "level": level,
            "problems": problems,
            "warnings": warnings,
            "findings": findings,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for f in &findings {
            println!("{}", line(f));
        }
    }
    Ok(if level == Level::Problem {
        ExitCode::from(PROBLEM)
    } else {
        ExitCode::SUCCESS
    })
}

fn line(f: &Finding) -> String {
    let mut s = format!("{:<8} {:<18} {}", f.level.to_string(), f.check, f.saw);
    if !f.fix.is_empty() {
        s.push_str(" -- fix: ");
        s.push_str(&f.fix);
    }
    s
}
