//! Muslin at the head of a conflist, followed by the real reference plugins
//! (Debian's containernetworking-plugins), run the way libcni runs a chain.

mod common;

use common::*;
use serde_json::{json, Value};

const VERSION: &str = "1.0.0"; // the newest the Debian plugins speak

/// Runs one plugin of the chain with the previous result, as libcni does.
fn step(
    host: &Host,
    cmd: &str,
    id: &str,
    c: &Netns,
    mut conf: Value,
    prev: Option<&Value>,
) -> Value {
    conf["cniVersion"] = json!(VERSION);
    conf["name"] = json!("chain");
    if let Some(p) = prev {
        conf["prevResult"] = p.clone();
    }
    let plugin = conf["type"].as_str().unwrap().to_string();
    let (v, code) = host.cni(&plugin, cmd, id, Some(&c.path()), "eth0", &conf);
    assert_eq!(
        code,
        0,
        "{plugin} {cmd} failed: {v}\nagent log:\n{}",
        host.log()
    );
    v
}

fn chain(host: &Host) -> Vec<Value> {
    vec![
        json!({"type": "muslin", "socket": host.socket}),
        json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true,
               "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 7777, "protocol": "tcp"},
                                                   {"hostPort": 18080, "containerPort": 7777, "protocol": "udp"}]}}),
        json!({"type": "bandwidth", "capabilities": {"bandwidth": true},
               "runtimeConfig": {"bandwidth": {"ingressRate": 100000000, "ingressBurst": 1000000}}}),
        json!({"type": "tuning", "sysctl": {"net.core.somaxconn": "517"}}),
    ]
}

#[test]
fn portmap_bandwidth_and_tuning_follow_muslin() {
    let host = Host::new(&["10.71.0.0/24"]);
    let c1 = Netns::new("ch1");
    let c2 = Netns::new("ch2");
    let plugins = chain(&host);

    let mut prev: Option<Value> = None;
    for p in &plugins {
        prev = Some(step(&host, "ADD", "ch1", &c1, p.clone(), prev.as_ref()));
    }
    let result = prev.unwrap();
    assert_eq!(
        result["ips"][0]["interface"], 1,
        "chained result keeps Muslin's IPs"
    );
    // The second container is a client elsewhere on the node.
    host.add("ch2", &c2);

    let _srv = ProbeServer::start(&c1, 7777);
    // portmap: the host port reaches the server in the container, from
    // another container and from the host itself.
    let out = c2.exec(&[
        BIN, "probe", "check", HOST_ADDR, "--port", "18080", "--proto", "tcp,udp",
    ]);
    assert!(
        out.status.success(),
        "container -> hostPort: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = host.ns.exec(&[
        BIN, "probe", "check", HOST_ADDR, "--port", "18080", "--proto", "tcp",
    ]);
    assert!(
        out.status.success(),
        "host -> hostPort: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // bandwidth: a token bucket on Muslin's host-side veth.
    let host_if = result["interfaces"][0]["name"].as_str().unwrap();
    let qdisc = String::from_utf8_lossy(
        &host
            .ns
            .exec(&["tc", "qdisc", "show", "dev", host_if])
            .stdout,
    )
    .into_owned();
    assert!(qdisc.contains("tbf"), "bandwidth shaped {host_if}: {qdisc}");
    // tuning: the sysctl was set inside the container.
    let v = String::from_utf8_lossy(&c1.exec(&["sysctl", "-n", "net.core.somaxconn"]).stdout)
        .trim()
        .to_string();
    assert_eq!(v, "517");

    // CHECK through the chain, with the final result.
    let mut conf = plugins[0].clone();
    conf["cniVersion"] = json!(VERSION);
    conf["name"] = json!("chain");
    conf["prevResult"] = result.clone();
    let (v, code) = host.cni("muslin", "CHECK", "ch1", Some(&c1.path()), "eth0", &conf);
    assert_eq!(code, 0, "CHECK after chained ADD: {v}");

    // DEL in reverse order leaves nothing of ch1.
    for p in plugins.iter().rev() {
        step(&host, "DEL", "ch1", &c1, p.clone(), Some(&result));
    }
    assert_eq!(host.allocations().len(), 1, "only ch2 remains");
    eventually("ch1's interface is gone", || c1.links() == vec!["lo"]);
    let nat = String::from_utf8_lossy(&host.ns.exec(&["iptables", "-t", "nat", "-S"]).stdout)
        .into_owned();
    assert!(!nat.contains("18080"), "portmap rules removed: {nat}");
}
