//! The connectivity matrix: from every container to every container and to
//! every host, per protocol. Probes run in-process: one thread per source
//! enters the source's namespace, so a 20-host lab is checked in seconds.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::time::Duration;

use nix::sched::{setns, CloneFlags};
use serde::Serialize;

use crate::probe::{self, Proto};

#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    /// `h1/c1` for a container, `h1` for a host.
    pub label: String,
    pub ns: String,
    pub address: IpAddr,
}

#[derive(Debug, Clone, Serialize)]
pub struct PairResult {
    pub from: String,
    pub to: String,
    /// Protocols that failed, with why; empty when the pair works.
    pub failed: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Matrix {
    pub sources: Vec<String>,
    pub targets: Vec<String>,
    pub protocols: Vec<String>,
    pub pairs: Vec<PairResult>,
}

impl Matrix {
    pub fn ok(&self) -> bool {
        self.pairs.iter().all(|p| p.failed.is_empty())
    }

    pub fn failures(&self) -> usize {
        self.pairs.iter().filter(|p| !p.failed.is_empty()).count()
    }

    /// A table: rows are sources, columns targets; `ok`, or the initials of
    /// the protocols that failed.
    pub fn render(&self) -> String {
        let w = self
            .targets
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(2)
            .max(6)
            + 2;
        let lw = self
            .sources
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(4)
            .max(4)
            + 2;
        let mut out = format!("{:lw$}", "from\\to");
        for t in &self.targets {
            out.push_str(&format!("{t:>w$}"));
        }
        out.push('\n');
        for s in &self.sources {
            out.push_str(&format!("{s:lw$}"));
            for t in &self.targets {
                let cell = match self.pairs.iter().find(|p| &p.from == s && &p.to == t) {
                    None => "·".to_string(),
                    Some(p) if p.failed.is_empty() => "ok".to_string(),
                    Some(p) => format!(
                        "x:{}",
                        p.failed
                            .iter()
                            .map(|(pr, _)| initial(pr))
                            .collect::<String>()
                    ),
                };
                out.push_str(&format!("{cell:>w$}"));
            }
            out.push('\n');
        }
        out.push_str(&format!(
            "{} of {} pairs ok over {} (x: failed; t=tcp u=udp i=icmp r=ip253)\n",
            self.pairs.len() - self.failures(),
            self.pairs.len(),
            self.protocols.join(",")
        ));
        out
    }
}

fn initial(proto: &str) -> char {
    match proto {
        "ip253" => 'r',
        "icmp" => 'i',
        p => p.chars().next().unwrap_or('?'),
    }
}

/// Probes every (source, target) pair but a source to itself.
pub fn run(
    sources: &[Endpoint],
    targets: &[Endpoint],
    protos: &[Proto],
    port: u16,
    timeout: Duration,
) -> Matrix {
    let pairs: Vec<PairResult> = std::thread::scope(|s| {
        let handles: Vec<_> = sources
            .iter()
            .map(|src| s.spawn(move || from_source(src, targets, protos, port, timeout)))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("probe thread does not panic"))
            .collect()
    });
    Matrix {
        sources: sources.iter().map(|e| e.label.clone()).collect(),
        targets: targets.iter().map(|e| e.label.clone()).collect(),
        protocols: protos.iter().map(|p| p.name().to_string()).collect(),
        pairs,
    }
}

fn from_source(
    src: &Endpoint,
    targets: &[Endpoint],
    protos: &[Proto],
    port: u16,
    timeout: Duration,
) -> Vec<PairResult> {
    let entered = File::open(format!("/var/run/netns/{}", src.ns))
        .map_err(|e| e.to_string())
        .and_then(|f| setns(f.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string()));
    targets
        .iter()
        .filter(|t| t.label != src.label)
        .map(|t| {
            let failed = match &entered {
                Err(e) => protos
                    .iter()
                    .map(|p| {
                        (
                            p.name().to_string(),
                            format!("cannot enter {}: {e}", src.ns),
                        )
                    })
                    .collect(),
                Ok(()) => protos
                    .iter()
                    .filter_map(|p| {
                        probe::check(t.address, port, *p, timeout)
                            .err()
                            .map(|e| (p.name().to_string(), e.reason))
                    })
                    .collect(),
            };
            PairResult {
                from: src.label.clone(),
                to: t.label.clone(),
                failed,
            }
        })
        .collect()
}
