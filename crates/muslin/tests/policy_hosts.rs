//! Policies on hosts built by hand as README's Install section says (the
//! first host without `--join`, a NAT NIC with the same address on every
//! host first, strict rp_filter): a policy applied on one host protects
//! endpoints on another, labels changed at run time move endpoints in and
//! out of it within a second, an agent restarted while cut off from the
//! cluster keeps enforcing, and bad input changes nothing.

mod common;

use std::time::{Duration, Instant};

use common::hosts::{plugin, run_in, until, Agent, Net};
use common::{result_ip, Netns, ProbeServer, TempDir, BIN};
use serde_json::{json, Value};

struct World {
    agents: Vec<Agent>,
    hosts: Vec<Netns>,
    net: Net,
}

fn world() -> World {
    let net = Net::new();
    let hosts: Vec<Netns> = (1..=3).map(|i| Netns::new(&format!("ph{i}"))).collect();
    net.as_readme_hosts(&hosts);
    let secret = net.secret();
    let mut agents = vec![Agent::start(&hosts[0], "h1", &secret, &[])];
    for (i, h) in hosts.iter().enumerate().skip(1) {
        agents.push(Agent::start(
            h,
            &format!("h{}", i + 1),
            &secret,
            &["--join", "192.168.56.11"],
        ));
    }
    World { agents, hosts, net }
}

struct Pod {
    ns: Netns,
    id: String,
    addr: String,
    _server: ProbeServer,
}

impl World {
    fn cli(&self, host: usize, args: &[&str]) -> (bool, String) {
        let socket = self.agents[host].socket.to_str().unwrap().to_string();
        let mut v: Vec<&str> = vec![BIN];
        v.extend_from_slice(args);
        v.extend_from_slice(&["--socket", &socket]);
        run_in(&self.hosts[host], &v)
    }

    fn pod(&self, host: usize, name: &str, namespace: &str, labels: &[(&str, &str)]) -> Pod {
        let ns = Netns::new("pc");
        let id = format!("{name}-{}", ns.name);
        let labels: Vec<Value> = labels
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect();
        let conf = json!({"cniVersion": "1.1.0", "name": "muslin", "type": "muslin",
            "socket": self.agents[host].socket, "args": {"cni": {"labels": labels}}});
        let (v, ok) = plugin(
            &self.agents[host].ns_name,
            &conf,
            "ADD",
            &id,
            &ns,
            &[(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}"),
            )],
        );
        assert!(ok, "ADD {name}: {v}\n{}", self.agents[host].log());
        let server = ProbeServer::start(&ns, 7777);
        Pod {
            addr: result_ip(&v),
            ns,
            id,
            _server: server,
        }
    }

    fn apply(&self, host: usize, yaml: &str) -> (bool, String) {
        let dir = TempDir::new("pol");
        let f = dir.0.join("p.yaml");
        std::fs::write(&f, yaml).unwrap();
        self.cli(host, &["policy", "apply", "-f", f.to_str().unwrap()])
    }

    fn policies(&self, host: usize) -> Vec<Value> {
        let (ok, out) = self.cli(host, &["policy", "list", "--json"]);
        assert!(ok, "policy list: {out}");
        serde_json::from_str::<Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }
}

fn reaches(from: &Pod, to: &Pod, timeout_ms: u32) -> bool {
    from.ns
        .exec(&[
            BIN,
            "probe",
            "check",
            &to.addr,
            "--port",
            "7777",
            "--proto",
            "tcp",
            "--timeout-ms",
            &timeout_ms.to_string(),
        ])
        .status
        .success()
}

/// How long until `from` reaches `to` (or stops reaching it), probing
/// continuously; panics after 10 s.
fn time_until(from: &Pod, to: &Pod, want: bool) -> Duration {
    let t0 = Instant::now();
    while reaches(from, to, 150) != want {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{} -> {} still {}",
            from.addr,
            to.addr,
            if want { "refused" } else { "allowed" }
        );
    }
    t0.elapsed()
}

const DB_POLICY: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: db
  namespace: shop
  resourceVersion: \"7\"
spec:
  podSelector:
    matchLabels: {app: db}
  ingress:
  - from:
    - podSelector:
        matchLabels: {app: web}
";

#[test]
fn policies_follow_labels_and_survive_an_isolated_restart() {
    let mut w = world();
    let web = w.pod(0, "web", "shop", &[("app", "web")]);
    let other = w.pod(0, "other", "shop", &[("app", "other")]);
    let db = w.pod(2, "db", "shop", &[("app", "db")]);
    // The cluster converges: everyone reaches db before any policy.
    until("web and other reach db", 30, || {
        reaches(&web, &db, 1000) && reaches(&other, &db, 1000)
    });

    // Applied on h2, which holds none of the endpoints; enforced on h3.
    let (ok, out) = w.apply(1, DB_POLICY);
    assert!(ok, "{out}");
    assert!(out.contains("shop:db"), "{out}");
    until("other is refused by db", 10, || !reaches(&other, &db, 300));
    assert!(reaches(&web, &db, 2000), "web stays allowed");
    assert!(
        reaches(&db, &web, 2000),
        "db itself is not isolated for egress"
    );
    assert!(
        reaches(&web, &other, 2000),
        "other is not selected by the policy"
    );
    let shown = w
        .policies(2)
        .into_iter()
        .find(|p| p["key"] == "shop:db")
        .expect("h3 knows the policy");
    assert_eq!(
        shown["protects_here"].as_array().unwrap().len(),
        1,
        "{shown}"
    );
    until("h3 counts the refused packets", 10, || {
        w.policies(2)
            .iter()
            .find(|p| p["key"] == "shop:db")
            .is_some_and(|p| p["dropped_isolated_here"].as_u64().unwrap_or(0) > 0)
    });

    // A label change moves an endpoint into the policy's peers and out
    // again, each within a second.
    let (ok, out) = w.cli(0, &["label", &other.id, "app=web"]);
    assert!(ok, "{out}");
    let took_in = time_until(&other, &db, true);
    let (ok, out) = w.cli(0, &["label", &other.id, "app-"]);
    assert!(ok, "{out}");
    let took_out = time_until(&other, &db, false);
    eprintln!("label change reached enforcement in {took_in:?} (in), {took_out:?} (out)");
    assert!(
        took_in < Duration::from_secs(3) && took_out < Duration::from_secs(3),
        "label changes took {took_in:?} / {took_out:?}"
    );
    // And a label change of the protected endpoint itself.
    let (ok, out) = w.cli(2, &["label", &db.id, "app=cache"]);
    assert!(ok, "{out}");
    time_until(&other, &db, true);
    let (ok, out) = w.cli(2, &["label", &db.id, "app=db"]);
    assert!(ok, "{out}");
    time_until(&other, &db, false);

    // Bad input changes nothing, and names the field.
    let before = w.policies(0);
    for (bad, field) in [
        (
            DB_POLICY.replace("podSelector:\n        matchLabels", "podSelectr:\n        matchLabels"),
            "podSelectr",
        ),
        (
            format!("{DB_POLICY}  - ports: [{{port: 70000}}]\n"),
            "spec.ingress[1].ports[0].port",
        ),
        (
            format!("{DB_POLICY}---\nname: x\npodSelector: {{}}\ningress: [{{from: [{{ipBlock: {{cidr: 10.0.0.0/40}}}}]}}]\n"),
            "ipBlock.cidr",
        ),
        (
            format!("name: huge\npodSelector: {{matchLabels: {{app: db}}}}\ningress:\n{}", "- from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16, 10.2.0.0/16, 10.3.0.0/16]}}]\n  ports: [{protocol: UDP, port: 1}, {port: 2}, {port: 3}]\n".repeat(200)),
            "huge",
        ),
    ] {
        let (ok, out) = w.apply(0, &bad);
        assert!(!ok, "accepted: {bad}");
        assert!(out.contains(field), "the error names {field}: {out}");
    }
    // The agent checks too (a client other than the CLI): a file whose
    // second policy is wrong applies nothing.
    let two = "name: fine\npodSelector: {}\n---\nname: wrong\npodSelector: {matchExpressions: [{key: a, operator: In}]}\n".to_string();
    match muslin_cni::call(
        &w.agents[0].socket,
        &muslin_model::api::Request::PolicyApply {
            text: two,
            toml: false,
        },
    ) {
        Ok(muslin_model::api::Response::Error(e)) => assert!(
            e.msg
                .contains("document 2: podSelector.matchExpressions[0].values"),
            "{}",
            e.msg
        ),
        other => panic!("the agent accepted a bad file: {other:?}"),
    }
    let (ok, out) = w.cli(0, &["label", &web.id, "bad key!=x"]);
    assert!(!ok && out.contains("bad key!"), "{out}");
    let (ok, out) = w.cli(0, &["label", "no-such-container", "a=b"]);
    assert!(!ok && out.contains("no endpoint"), "{out}");
    assert_eq!(w.policies(0), before, "nothing changed");
    assert!(!reaches(&other, &db, 500) && reaches(&web, &db, 2000));

    // h3's agent restarts while it hears nobody: it keeps enforcing what
    // it knew (a restart must not open the endpoints it protects).
    w.agents[2].child.take().map(|mut c| {
        c.kill().unwrap();
        c.wait().unwrap()
    });
    // Gossip cut both ways (the underlay itself still answers, so the
    // agent can start): it hears nobody, not even its join peer.
    common::hosts::nft(
        &w.hosts[2],
        "table ip cut { chain i { type filter hook input priority -10; udp dport 7331 drop; udp sport 7331 drop; }; chain o { type filter hook output priority -10; udp dport 7331 drop; udp sport 7331 drop; }; }",
    );
    w.agents[2].spawn();
    w.agents[2].wait_ready(Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(3));
    let (ok, out) = w.cli(2, &["policy", "list", "--json"]);
    assert!(
        ok && out.contains("shop:db"),
        "{out}\n{}",
        w.agents[2].log()
    );
    let listing = String::from_utf8_lossy(
        &w.hosts[2]
            .exec(&["nft", "list", "table", "ip", "muslin_policy"])
            .stdout,
    )
    .into_owned();
    assert!(listing.contains("ingress_msl"), "{listing}");
    let status = w.agents[2].status();
    assert_eq!(
        status["cluster"]["synced"], false,
        "h3 heard nobody: {status}"
    );
    w.hosts[2].exec(&["nft", "delete", "table", "ip", "cut"]);
    until("the cluster meets again", 30, || reaches(&web, &db, 1000));
    assert!(
        !reaches(&other, &db, 500),
        "still refused after the restart"
    );

    // Deleting the policy opens db again.
    let (ok, out) = w.cli(1, &["policy", "delete", "db", "-n", "shop"]);
    assert!(ok, "{out}");
    time_until(&other, &db, true);
    let (ok, out) = w.cli(1, &["policy", "delete", "db", "-n", "shop"]);
    assert!(!ok && out.contains("no policy"), "{out}");
    until("h3 removed its policy table", 10, || {
        !w.hosts[2]
            .exec(&["nft", "list", "table", "ip", "muslin_policy"])
            .status
            .success()
    });
    drop(w.net);
}
