//! Choosing the underlay address on this host: the pure rules of
//! `muslin_model::underlay` applied to the interfaces the kernel reports,
//! with route lookups and ICMP probes to verify reachability.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use muslin_kernel::probe::ping_from;
use muslin_kernel::source_towards;
use muslin_model::underlay::{describe, eligible, select, Candidate, Choice, Method};

const PING: Duration = Duration::from_millis(700);
/// Longest pause between rounds of probing join peers that do not answer.
const MAX_BACKOFF: Duration = Duration::from_secs(8);

pub async fn choose(
    cands: &[Candidate],
    method: &Method,
    peers: &[SocketAddr],
) -> Result<Option<Choice>, String> {
    let cands = cands.to_vec();
    match method {
        Method::Reachability if peers.is_empty() => match select(&Method::FirstFound, &cands) {
            Ok(mut c) => {
                c.reason = format!(
                    "first node (no join peers): first-found picked {} on {}; moves if joining peers reach another address but not this one",
                    c.address.addr(),
                    c.ifname
                );
                Ok(Some(c))
            }
            // A lone host without any usable interface still serves its own
            // containers; there is simply no cluster to join.
            Err(_) => Ok(None),
        },
        Method::Reachability => {
            let targets: Vec<IpAddr> = peers.iter().map(|p| p.ip()).collect();
            let c = tokio::task::spawn_blocking(move || verify(&cands, &targets))
                .await
                .map_err(|e| e.to_string())??;
            Ok(Some(c))
        }
        Method::CanReach(target) => {
            let t = *target;
            let c = tokio::task::spawn_blocking(move || verify(&cands, &[t]))
                .await
                .map_err(|e| e.to_string())??;
            Ok(Some(Choice {
                reason: format!("can-reach={t}: {}", c.reason),
                ..c
            }))
        }
        other => select(other, &cands).map(Some),
    }
}

/// The address the kernel routes towards a peer from, if an ICMP echo from
/// it is answered; otherwise any other usable address that is. Never the
/// default-route interface merely because it has the default route. Peers
/// that do not answer yet (hosts still booting, every host started at
/// once) are tried again with backoff, for as long as it takes.
fn verify(cands: &[Candidate], peers: &[IpAddr]) -> Result<Choice, String> {
    let started = Instant::now();
    let mut backoff = Duration::from_secs(1);
    loop {
        if let Some(c) = try_once(cands, peers) {
            return Ok(c);
        }
        let list: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
        tracing::warn!(
            waited_s = started.elapsed().as_secs(),
            retry_in_s = backoff.as_secs(),
            "no local address reaches the join peers {} yet (route lookup and ICMP echo); candidates: {}; still trying",
            list.join(", "),
            describe(cands)
        );
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn try_once(cands: &[Candidate], peers: &[IpAddr]) -> Option<Choice> {
    let by_addr = |a: IpAddr| select(&Method::Address(a), cands).ok();
    for p in peers {
        if let Ok(src) = source_towards(*p) {
            if let (Some(c), Ok(rtt)) = (by_addr(src), ping_from(src, *p, PING)) {
                return Some(Choice {
                    reason: format!(
                        "reaches join peer {p} (route lookup, then ICMP echo in {:.1} ms)",
                        rtt.as_secs_f64() * 1e3
                    ),
                    ..c
                });
            }
        }
    }
    for c in cands.iter().filter(|c| eligible(c)) {
        for a in c.addresses.iter().filter(|a| a.addr().is_ipv4()) {
            for p in peers {
                if let Ok(rtt) = ping_from(a.addr(), *p, PING) {
                    return Some(Choice {
                        ifname: c.ifname.clone(),
                        address: *a,
                        mtu: c.mtu,
                        reason: format!(
                            "reaches join peer {p} by ICMP echo in {:.1} ms (the routed source did not)",
                            rtt.as_secs_f64() * 1e3
                        ),
                    });
                }
            }
        }
    }
    None
}
