//! Choosing the underlay address on this host: the pure rules of
//! `muslin_model::underlay` applied to the interfaces the kernel reports,
//! with route lookups and ICMP probes to verify reachability.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use muslin_kernel::cluster::{candidates, source_towards};
use muslin_kernel::probe::ping_from;
use muslin_kernel::Netlink;
use muslin_model::underlay::{describe, eligible, select, Candidate, Choice, Method};

/// How long to keep trying peers that do not answer yet (a host still
/// booting).
const VERIFY_FOR: Duration = Duration::from_secs(10);
const PING: Duration = Duration::from_millis(700);

pub async fn choose(
    host: &Netlink,
    method: &Method,
    peers: &[SocketAddr],
) -> Result<Option<Choice>, String> {
    let cands = candidates(host).await.map_err(|e| e.to_string())?;
    match method {
        Method::Reachability if peers.is_empty() => match select(&Method::FirstFound, &cands) {
            Ok(mut c) => {
                c.reason = format!(
                    "first node (no join peers): first-found picked {} on {}",
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
/// default-route interface merely because it has the default route.
fn verify(cands: &[Candidate], peers: &[IpAddr]) -> Result<Choice, String> {
    let deadline = Instant::now() + VERIFY_FOR;
    let by_addr = |a: IpAddr| select(&Method::Address(a), cands).ok();
    loop {
        for p in peers {
            if let Ok(src) = source_towards(*p) {
                if let (Some(c), Ok(rtt)) = (by_addr(src), ping_from(src, *p, PING)) {
                    return Ok(Choice {
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
                        return Ok(Choice {
                            ifname: c.ifname.clone(),
                            address: *a,
                            mtu: c.mtu,
                            reason: format!("reaches join peer {p} by ICMP echo in {:.1} ms (the routed source did not)", rtt.as_secs_f64() * 1e3),
                        });
                    }
                }
            }
        }
        if Instant::now() > deadline {
            let list: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
            return Err(format!(
                "no local address reaches the join peers {} (route lookup and ICMP echo); candidates: {}",
                list.join(", "),
                describe(cands)
            ));
        }
    }
}
