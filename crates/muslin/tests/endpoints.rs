//! Endpoints in the cluster view (issue 11): a container attached on one
//! host, with the runtime's labels and Kubernetes arguments, shows in every
//! other host's `status` and leaves it on DEL, on gossip and on etcd; and
//! an agent upgraded over the previous version's state keeps its endpoints'
//! addresses and its blocks.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::hosts::{plugin, until, Agent, Net};
use common::lab::{file, one_segment, Lab};
use common::{result_ip, Netns, BIN};
use serde_json::{json, Value};

/// Runs the plugin in host namespace `host_ns` against the agent at
/// `socket`, with labels in the network configuration and the pod's
/// namespace and name in `CNI_ARGS`, as Kubernetes runtimes pass them.
fn cni(host_ns: &str, socket: &Path, command: &str, id: &str, c: &Netns) -> Value {
    let conf = json!({
        "cniVersion": "1.1.0", "name": "muslin", "type": "muslin", "socket": socket,
        "args": {"cni": {"labels": [
            {"key": "app", "value": "web"},
            {"key": "tier", "value": "front"}
        ]}}
    });
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME={id}");
    let (v, ok) = plugin(host_ns, &conf, command, id, c, &[("CNI_ARGS", args)]);
    assert!(ok, "{command} {id}: {v}");
    v
}

fn cluster_endpoint(status: &Value, id: &str) -> Option<Value> {
    status["cluster"]["endpoints"]
        .as_array()?
        .iter()
        .find(|e| e["container_id"] == id)
        .cloned()
}

fn assert_record(e: &Value, node: &str, ip: &str) {
    assert_eq!(e["node"], node, "{e}");
    assert_eq!(e["network"], "default", "{e}");
    assert_eq!(e["addresses"], json!([format!("{ip}/32")]), "{e}");
    assert_eq!(e["ifname"], "eth0", "{e}");
    assert_eq!(e["pod_namespace"], "shop", "{e}");
    assert_eq!(e["labels"], json!({"app": "web", "tier": "front"}), "{e}");
}

#[test]
fn gossip_spreads_endpoints_with_labels_and_drops_them_on_del() {
    let net = Net::new();
    let seg = net.segment(1500);
    let (h1, h2) = (Netns::new("h1"), Netns::new("h2"));
    net.wire(&h1, "eth0", &seg, "192.168.56.11/24", 1500);
    net.wire(&h2, "eth0", &seg, "192.168.56.12/24", 1500);
    let a1 = Agent::start(&h1, "h1", &net.secret(), &[]);
    let a2 = Agent::start(&h2, "h2", &net.secret(), &["--join", "192.168.56.11"]);
    until("the hosts hear each other", 20, || {
        a2.peer("h1")["alive"] == true && a1.peer("h2")["alive"] == true
    });
    let c = Netns::new("c");
    let ip = result_ip(&cni(&h1.name, &a1.socket, "ADD", "web-1", &c));
    until("h2's status lists h1's endpoint", 10, || {
        cluster_endpoint(&a2.status(), "web-1").is_some()
    });
    let e = cluster_endpoint(&a2.status(), "web-1").unwrap();
    assert_record(&e, "h1", &ip);
    assert_eq!(e["pod_name"], "web-1", "{e}");
    assert_eq!(a2.peer("h1")["endpoints"], 1);
    assert_eq!(a2.peer("h2")["endpoints"], 0);
    // The node's own table has them too.
    let own = &a1.status()["endpoints"][0];
    assert_eq!(own["labels"]["app"], "web", "{own}");
    assert_eq!(own["network_id"], "default", "{own}");
    // And the text status shows the cluster's endpoints.
    let o = Command::new(BIN)
        .args(["status", "--socket", a2.socket.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("1 endpoints") && text.contains("shop/web-1") && text.contains("app=web"),
        "{text}"
    );

    cni(&h1.name, &a1.socket, "DEL", "web-1", &c);
    until("h2's status drops it", 10, || {
        cluster_endpoint(&a2.status(), "web-1").is_none()
    });
    assert_eq!(a2.peer("h1")["endpoints"], 0);
}

#[test]
fn etcd_spreads_endpoints_with_labels_and_drops_them_on_del() {
    let lab = Lab::on("etcd");
    let (_d, path) = file(&one_segment(2, 0, ""));
    lab.up(&["-f", &path, "--converge-timeout", "30"]);
    let socket = lab.root.0.join(&lab.name).join("h1").join("agent.sock");
    let c = Netns::new("c");
    let ip = result_ip(&cni(&lab.ns("h1"), &socket, "ADD", "web-2", &c));
    until("h2's status lists h1's endpoint", 10, || {
        cluster_endpoint(&lab.agent_status("h2"), "web-2").is_some()
    });
    let e = cluster_endpoint(&lab.agent_status("h2"), "web-2").unwrap();
    assert_record(&e, "h1", &ip);
    cni(&lab.ns("h1"), &socket, "DEL", "web-2", &c);
    until("h2's status drops it", 10, || {
        cluster_endpoint(&lab.agent_status("h2"), "web-2").is_none()
    });
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn an_agent_on_the_previous_versions_state_keeps_addresses_and_blocks() {
    let net = Net::new();
    let seg = net.segment(1500);
    let h1 = Netns::new("h1");
    net.wire(&h1, "eth0", &seg, "192.168.56.11/24", 1500);
    let mut a = Agent::start_detached(&h1, "h1", &net.secret(), &[]);
    // Only the struct is wanted: the state must be the old version's from
    // the first start on.
    let mut first = a.child.take().unwrap();
    first.kill().unwrap();
    first.wait().unwrap();
    let state = a.dir.0.join("state");
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state).unwrap();
    let testdata = concat!(env!("CARGO_MANIFEST_DIR"), "/../muslin-agent/testdata/v1");
    std::fs::copy(
        format!("{testdata}/endpoints.json"),
        state.join("endpoints.json"),
    )
    .unwrap();
    // The fixture's leases were alive when it was written; a restart long
    // after the TTL would rightly give them up.
    let mut leases: Value =
        serde_json::from_slice(&std::fs::read(format!("{testdata}/leases.json")).unwrap()).unwrap();
    assert!(leases.get("version").is_none(), "a version-1 file");
    leases["alive_at_ms"] = json!(now_ms());
    std::fs::write(state.join("leases.json"), leases.to_string()).unwrap();
    a.spawn();
    a.wait_ready(Duration::from_secs(60));

    let st = a.status();
    let kept: Vec<(String, Value)> = st["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["key"]["container_id"].as_str().unwrap().to_string(),
                e["addresses"].clone(),
            )
        })
        .collect();
    assert_eq!(
        kept,
        vec![
            ("fixture-c1".to_string(), json!(["10.244.43.1/32"])),
            ("fixture-c2".to_string(), json!(["10.244.43.2/32"])),
        ],
        "{st}"
    );
    until("the kept block settles", 20, || {
        a.status()["blocks"][0]["cidr"] == "10.244.43.0/24"
    });
    assert_eq!(a.status()["blocks"].as_array().unwrap().len(), 1);
    until("the kept endpoints are published", 10, || {
        cluster_endpoint(&a.status(), "fixture-c2").is_some()
    });
    let e = cluster_endpoint(&a.status(), "fixture-c1").unwrap();
    assert_eq!(e["addresses"], json!(["10.244.43.1/32"]), "{e}");
    assert_eq!(e["pod_name"], "web-0", "{e}");

    // A new attachment comes from the kept block, past the kept addresses,
    // and the files are written in the new format.
    let c = Netns::new("c");
    let ip = result_ip(&cni(&h1.name, &a.socket, "ADD", "new-1", &c));
    assert_eq!(ip, "10.244.43.3");
    let table: Value =
        serde_json::from_slice(&std::fs::read(state.join("endpoints.json")).unwrap()).unwrap();
    assert_eq!(table["version"], 2, "{table}");
    assert_eq!(table["endpoints"].as_array().unwrap().len(), 3, "{table}");
    until("the lease file is rewritten", 15, || {
        let l: Value =
            serde_json::from_slice(&std::fs::read(state.join("leases.json")).unwrap()).unwrap();
        l["version"] == 2 && l["blocks"][0]["cidr"] == "10.244.43.0/24"
    });
}
