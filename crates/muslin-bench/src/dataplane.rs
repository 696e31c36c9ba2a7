//! Data-plane scenarios: TCP throughput (1 and 4 streams), UDP small-packet
//! rate and TCP request/response latency over each path, rotating the order
//! every round so the shared machine's drift spreads over all of them.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use muslin_lab::ops::{self, Ctx, UpOptions};
use serde_json::Value;

use crate::report::Report;
use crate::stats::Series;
use crate::sys::{enter, ip, probe_server, sh};
use crate::{fail, BenchError, Options, Plan};

pub(crate) const TOPOLOGY: &str = r#"
[[segment]]
name = "lan"
cidr = "192.168.60.0/24"
[[host]]
name = "h"
count = 2
containers = 2
[[host.nic]]
segment = "lan"
default-route = true
"#;
/// The same two hosts with a second network (always VXLAN, its own VNI):
/// on each host one container on the default network, one on `second`.
fn topology_networks() -> String {
    let containers = r#"containers = [{ name = "c1" }, { name = "n1", networks = ["second"] }]"#;
    format!(
        "[[network]]\nname = \"second\"\nsubnet = \"10.98.0.0/16\"\n{}",
        TOPOLOGY.replace("containers = 2", containers)
    )
}
pub(crate) const U1: &str = "192.168.60.11";
pub const VXLAN: &str = "Muslin vxlan";
pub const POLICED: &str = "Muslin vxlan, policed (see the policy stage)";
pub const UNPOLICED: &str = "Muslin vxlan, the same endpoints, no policy";
pub(crate) const U2: &str = "192.168.60.12";

pub struct Path {
    pub name: &'static str,
    from: String,
    to: String,
    addr: IpAddr,
}

pub const UNDERLAY: &str = "underlay, host to host";

pub(crate) fn up(o: &Options, name: &str, backend: &str, topology: &str) -> Result<(), String> {
    let ctx = Ctx {
        bin: o.bin.clone(),
        progress: Box::new(|_| {}),
    };
    let up = UpOptions {
        name: name.into(),
        hosts: None,
        topology: Some(("bench topology".into(), topology.into())),
        backend: backend.into(),
        encryption: "none".into(),
        datastore: "gossip".into(),
        etcd_members: 1,
        converge_timeout: 30,
    };
    let r = ops::up(&ctx, &up).map_err(|e| e.to_string())?;
    if r.converge_seconds.is_none() {
        return Err(format!("lab {name} did not converge"));
    }
    Ok(())
}

pub(crate) fn pod(lab: &str, host: &str, c: usize) -> Result<IpAddr, String> {
    let st = ops::status(Some(lab)).map_err(|e| e.to_string())?;
    st.nodes
        .iter()
        .find(|n| n.name == host)
        .and_then(|n| n.containers.get(c))
        .and_then(|c| c.address)
        .ok_or_else(|| format!("no pod {c} on {lab}/{host}"))
}

/// A pod built by hand with `ip`, the same shape as Muslin's: a veth, a /32
/// and a link-local gateway with a static neighbour. `tag` tells apart
/// several hand pods on one host (names stay short: veth `hand{tag}`).
pub(crate) fn hand_pod(
    lab: &str,
    host: &str,
    tag: &str,
    addr: &str,
    mtu: u32,
) -> Result<String, String> {
    let (ns, veth) = if tag.is_empty() {
        (format!("{lab}-{host}-hand"), "hand0".to_string())
    } else {
        (format!("{lab}-{host}-{tag}-hand"), format!("hand{tag}"))
    };
    let hns = format!("{lab}-{host}");
    sh(&["ip", "netns", "add", &ns])?;
    ip(&hns, &format!("link add {veth} mtu {mtu} address ee:ee:ee:ee:ee:ee type veth peer name eth0 mtu {mtu} netns {ns}"))?;
    ip(&hns, &format!("link set {veth} up"))?;
    ip(&ns, "link set lo up")?;
    ip(&ns, &format!("addr add {addr}/32 dev eth0"))?;
    ip(&ns, "link set eth0 up")?;
    ip(&ns, "route add 169.254.1.1 dev eth0 scope link")?;
    ip(&ns, "route add default via 169.254.1.1 dev eth0")?;
    ip(
        &ns,
        "neigh add 169.254.1.1 lladdr ee:ee:ee:ee:ee:ee dev eth0 nud permanent",
    )?;
    ip(&hns, &format!("route add {addr}/32 dev {veth} scope link"))?;
    Ok(ns)
}

/// Flannel host-gw / Calico without encapsulation: routes to the peer's pods.
pub(crate) fn hand_routed(lab: &str) -> Result<(String, String), String> {
    let a = hand_pod(lab, "h1", "", "10.99.1.2", 1500)?;
    let b = hand_pod(lab, "h2", "", "10.99.2.2", 1500)?;
    ip(
        &format!("{lab}-h1"),
        &format!("route add 10.99.2.0/24 via {U2} dev eth0"),
    )?;
    ip(
        &format!("{lab}-h2"),
        &format!("route add 10.99.1.0/24 via {U1} dev eth0"),
    )?;
    Ok((a, b))
}

/// Flannel's vxlan backend / Docker's overlay: a kernel VXLAN device with
/// static FDB and neighbour entries (its own VNI and port).
pub(crate) fn hand_vxlan(lab: &str) -> Result<(String, String), String> {
    let a = hand_pod(lab, "h1", "", "10.99.1.2", 1450)?;
    let b = hand_pod(lab, "h2", "", "10.99.2.2", 1450)?;
    for (h, local, peer, me, them, mac, peer_mac) in [
        (
            "h1",
            U1,
            U2,
            "10.99.1.0",
            "10.99.2.0",
            "02:99:00:00:00:01",
            "02:99:00:00:00:02",
        ),
        (
            "h2",
            U2,
            U1,
            "10.99.2.0",
            "10.99.1.0",
            "02:99:00:00:00:02",
            "02:99:00:00:00:01",
        ),
    ] {
        let ns = format!("{lab}-{h}");
        ip(&ns, &format!("link add hvx mtu 1450 address {mac} type vxlan id 99 dstport 4790 local {local} dev eth0 nolearning"))?;
        ip(&ns, &format!("addr add {me}/32 dev hvx"))?;
        ip(&ns, "link set hvx up")?;
        sh(&[
            "bridge",
            "-n",
            &ns,
            "fdb",
            "append",
            peer_mac,
            "dev",
            "hvx",
            "dst",
            peer,
            "self",
            "permanent",
        ])?;
        ip(
            &ns,
            &format!("neigh add {them} lladdr {peer_mac} dev hvx nud permanent"),
        )?;
        ip(
            &ns,
            &format!("route add {them}/24 via {them} dev hvx onlink"),
        )?;
    }
    Ok((a, b))
}

fn iperf(from: &str, to: &str, addr: IpAddr, extra: &[&str], secs: u32) -> Result<Value, String> {
    let mut srv = Command::new("ip")
        .args(["netns", "exec", to, "iperf3", "-s", "-1", "-p", "5299"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("iperf3 server (is iperf3 installed?): {e}"))?;
    std::thread::sleep(Duration::from_millis(150));
    let a = addr.to_string();
    let s = secs.to_string();
    let mut args = vec![
        "netns", "exec", from, "iperf3", "-c", &a, "-p", "5299", "-J", "-t", &s,
    ];
    args.extend_from_slice(extra);
    let o = Command::new("ip")
        .args(&args)
        .output()
        .map_err(|e| e.to_string());
    let _ = srv.kill();
    let _ = srv.wait();
    let v: Value = serde_json::from_slice(&o?.stdout).map_err(|e| format!("iperf3 output: {e}"))?;
    if let Some(e) = v["error"].as_str() {
        return Err(format!("iperf3 {from} -> {addr}: {e}"));
    }
    Ok(v)
}

pub(crate) fn tcp_gbps(
    from: &str,
    to: &str,
    addr: IpAddr,
    streams: u32,
    secs: u32,
) -> Result<f64, String> {
    let v = iperf(from, to, addr, &["-P", &streams.to_string()], secs)?;
    Ok(v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9)
}

/// Received rate of 64-byte UDP datagrams, in thousands per second.
fn udp_kpps(from: &str, to: &str, addr: IpAddr, secs: u32) -> Result<f64, String> {
    let v = iperf(from, to, addr, &["-u", "-b", "0", "-l", "64"], secs)?;
    let sum = &v["end"]["sum"];
    let packets =
        sum["packets"].as_f64().unwrap_or(0.0) - sum["lost_packets"].as_f64().unwrap_or(0.0);
    Ok(packets / sum["seconds"].as_f64().unwrap_or(1.0).max(1e-9) / 1e3)
}

/// Request/response over one TCP connection to the probe server (a short
/// line echoed): round-trip times in microseconds.
pub(crate) fn rr(from: &str, addr: IpAddr, n: usize) -> Result<Series, String> {
    let from = from.to_string();
    std::thread::spawn(move || -> Result<Series, String> {
        enter(&from)?;
        let s = TcpStream::connect_timeout(&SocketAddr::new(addr, 7777), Duration::from_secs(3))
            .map_err(|e| format!("rr to {addr}: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        let mut w = s.try_clone().map_err(|e| e.to_string())?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        let mut t = Series::default();
        for i in 0..n + n / 10 {
            let start = Instant::now();
            w.write_all(b"MSLQ0000000000000001\n")
                .map_err(|e| e.to_string())?;
            line.clear();
            r.read_line(&mut line).map_err(|e| e.to_string())?;
            if i >= n / 10 {
                t.push(start.elapsed().as_secs_f64() * 1e6);
            }
        }
        Ok(t)
    })
    .join()
    .map_err(|_| "rr thread panicked".to_string())?
}

pub fn run(o: &Options, plan: &Plan, report: &mut Report) -> Result<(), BenchError> {
    let f = fail("data plane");
    let mut servers = vec![];
    let mut paths = vec![];
    let networks = topology_networks();
    for (lab, backend, topology) in [
        ("mbr", "routed", TOPOLOGY),
        ("mbv", "vxlan", TOPOLOGY),
        ("mba", "auto", TOPOLOGY),
        ("mbn", "vxlan", networks.as_str()),
        ("mbp", "vxlan", TOPOLOGY),
        ("mbe", "vxlan", TOPOLOGY),
    ] {
        up(o, lab, backend, topology).map_err(&f)?;
    }
    // 1,000 endpoints in the cluster (the lab's four and the rest in
    // groups), 100 policies over the measured pair.
    // The same endpoints without any policy: the policed path's baseline.
    for (lab, policies) in [("mbp", plan.policies), ("mbe", 0)] {
        crate::policy::set_up(
            &o.bin,
            lab,
            &["h1", "h2"],
            plan.policy_endpoints - 4,
            policies,
        )
        .map_err(&f)?;
    }
    paths.push(Path {
        name: UNDERLAY,
        from: "mbr-h1".into(),
        to: "mbr-h2".into(),
        addr: U2.parse().expect("literal"),
    });
    paths.push(Path {
        name: "pods on one host",
        from: "mbr-h1-c1".into(),
        to: "mbr-h1-c2".into(),
        addr: pod("mbr", "h1", 1).map_err(&f)?,
    });
    paths.push(Path {
        name: "Muslin routed",
        from: "mbr-h1-c1".into(),
        to: "mbr-h2-c1".into(),
        addr: pod("mbr", "h2", 0).map_err(&f)?,
    });
    let (a, b) = hand_routed("mbr").map_err(&f)?;
    servers.push(probe_server(&o.bin, &b).map_err(&f)?);
    paths.push(Path {
        name: "hand-built routed (host-gw)",
        from: a,
        to: b,
        addr: "10.99.2.2".parse().expect("literal"),
    });
    paths.push(Path {
        name: VXLAN,
        from: "mbv-h1-c1".into(),
        to: "mbv-h2-c1".into(),
        addr: pod("mbv", "h2", 0).map_err(&f)?,
    });
    let (a, b) = hand_vxlan("mbv").map_err(&f)?;
    servers.push(probe_server(&o.bin, &b).map_err(&f)?);
    paths.push(Path {
        name: "hand-built vxlan",
        from: a,
        to: b,
        addr: "10.99.2.2".parse().expect("literal"),
    });
    paths.push(Path {
        name: "Muslin auto (same segment)",
        from: "mba-h1-c1".into(),
        to: "mba-h2-c1".into(),
        addr: pod("mba", "h2", 0).map_err(&f)?,
    });
    paths.push(Path {
        name: "Muslin vxlan beside a second network",
        from: "mbn-h1-c1".into(),
        to: "mbn-h2-c1".into(),
        addr: pod("mbn", "h2", 0).map_err(&f)?,
    });
    paths.push(Path {
        name: POLICED,
        from: "mbp-h1-c1".into(),
        to: "mbp-h2-c1".into(),
        addr: pod("mbp", "h2", 0).map_err(&f)?,
    });
    paths.push(Path {
        name: UNPOLICED,
        from: "mbe-h1-c1".into(),
        to: "mbe-h2-c1".into(),
        addr: pod("mbe", "h2", 0).map_err(&f)?,
    });
    paths.push(Path {
        name: "Muslin second network (own VNI)",
        from: "mbn-h1-n1".into(),
        to: "mbn-h2-n1".into(),
        addr: pod("mbn", "h2", 1).map_err(&f)?,
    });

    let mut series: Vec<[Series; 5]> = (0..paths.len()).map(|_| Default::default()).collect();
    let result = (|| -> Result<(), String> {
        for round in 0..plan.rounds {
            for k in 0..paths.len() {
                let i = (k + round) % paths.len();
                let p = &paths[i];
                series[i][0].push(tcp_gbps(&p.from, &p.to, p.addr, 1, plan.iperf_seconds)?);
                series[i][1].push(tcp_gbps(&p.from, &p.to, p.addr, 4, plan.iperf_seconds)?);
                series[i][2].push(udp_kpps(&p.from, &p.to, p.addr, plan.iperf_seconds)?);
                let rt = rr(&p.from, p.addr, plan.rr_messages)?;
                series[i][3].push(rt.median());
                series[i][4].push(rt.pct(0.99));
            }
            (o.progress)(&format!(
                "      data plane round {}/{} done",
                round + 1,
                plan.rounds
            ));
        }
        Ok(())
    })();
    for mut s in servers {
        let _ = s.kill();
        let _ = s.wait();
    }
    result.map_err(&f)?;
    // Every figure also relative to the underlay (for latency, > 1 is slower).
    let base: Vec<f64> = series[0].iter().map(Series::median).collect();
    for (p, s) in paths.iter().zip(&series) {
        let metrics = [
            ("TCP throughput, 1 stream", "Gbit/s", Some(base[0])),
            ("TCP throughput, 4 streams", "Gbit/s", Some(base[1])),
            ("UDP 64-byte rate", "kpps", Some(base[2])),
            ("TCP request/response p50", "µs", Some(base[3])),
            ("TCP request/response p99", "µs", Some(base[4])),
        ];
        for ((metric, unit, b), v) in metrics.into_iter().zip(s.iter()) {
            report.add("data plane", p.name, metric, unit, v, b);
        }
    }
    // The policed path against the same path without policy.
    let at = |name: &str| paths.iter().position(|p| p.name == name).expect("listed");
    let (plain, policed) = (&series[at(UNPOLICED)], &series[at(POLICED)]);
    for (k, (metric, unit)) in [
        ("TCP throughput, 1 stream", "Gbit/s"),
        ("TCP throughput, 4 streams", "Gbit/s"),
        ("UDP 64-byte rate", "kpps"),
        ("TCP request/response p50", "µs"),
        ("TCP request/response p99", "µs"),
    ]
    .into_iter()
    .enumerate()
    {
        report.add(
            "policy",
            &format!(
                "vxlan, {} policies, {} endpoints (vs the same endpoints, no policy)",
                plan.policies, plan.policy_endpoints
            ),
            metric,
            unit,
            &policed[k],
            Some(plain[k].median()),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_networks_topology_is_the_plain_one_with_a_second_network() {
        let t = muslin_lab::topology::Topology::parse(&topology_networks()).unwrap();
        assert_eq!(t.networks.len(), 1);
        assert!(
            !topology_networks().contains("containers = 2"),
            "n1 joins it"
        );
        assert!(muslin_lab::topology::Topology::parse(TOPOLOGY)
            .unwrap()
            .networks
            .is_empty());
    }
}
