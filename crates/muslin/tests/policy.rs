//! The cases of Kubernetes' network-policy end-to-end suite in Muslin's
//! terms, on a lab of two hosts with pods in two namespaces (`x`, `y`),
//! on gossip and on etcd: who can and cannot connect, over TCP and UDP,
//! across hosts and on one host, as each policy set says.
//!
//! A connection established before a policy change goes on only if the
//! new policy allows it: the host forgets the tracked connections of the
//! endpoints whose rules narrowed, and judges their next packet as a new
//! connection's. The last case tests exactly that.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::lab::{file, Lab};
use common::{TempDir, BIN};

/// Pods: (host, container, namespace, pod label). `x-a` names port 80
/// `http`.
const PODS: [(&str, &str, &str, &str); 5] = [
    ("h1", "xa", "x", "a"),
    ("h1", "yb", "y", "b"),
    ("h2", "xb", "x", "b"),
    ("h2", "xc", "x", "c"),
    ("h2", "ya", "y", "a"),
];

const TOPOLOGY: &str = r#"
[[segment]]
name = "mgmt"
cidr = "10.0.2.0/24"
per-host = true
gateway = "10.0.2.2"

[[segment]]
name = "cluster"
cidr = "192.168.57.0/24"

[[host]]
name = "h1"
containers = [
  { name = "xa", namespace = "x", labels = { pod = "a" }, ports = { http = 80 } },
  { name = "yb", namespace = "y", labels = { pod = "b" } },
]
[[host.nic]]
segment = "mgmt"
default-route = true
[[host.nic]]
segment = "cluster"

[[host]]
name = "h2"
containers = [
  { name = "xb", namespace = "x", labels = { pod = "b" } },
  { name = "xc", namespace = "x", labels = { pod = "c" } },
  { name = "ya", namespace = "y", labels = { pod = "a" } },
]
[[host.nic]]
segment = "mgmt"
default-route = true
[[host.nic]]
segment = "cluster"

[[namespace]]
name = "x"
labels = { ns = "x" }

[[namespace]]
name = "y"
labels = { ns = "y" }
"#;

/// Extra echo servers (TCP and UDP) in every pod, killed on drop.
struct Servers(Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Cluster {
    lab: Lab,
    addrs: Vec<String>,
    _servers: Servers,
    _dir: TempDir,
}

type Combo = (&'static str, u16);
const TCP80: Combo = ("tcp", 80);
const UDP80: Combo = ("udp", 80);

impl Cluster {
    fn up(datastore: &str) -> Cluster {
        let lab = Lab::on(datastore);
        let (dir, topo) = file(TOPOLOGY);
        lab.up(&["-f", &topo, "--converge-timeout", "60"]);
        let mut servers = Servers(vec![]);
        let mut addrs = vec![];
        for (host, c, _, _) in PODS {
            let addr = lab.container_addr(host, c);
            addrs.push(addr);
            for port in ["80", "81", "82", "53"] {
                servers.0.push(
                    Command::new("ip")
                        .args(["netns", "exec", &ns(&lab, host, c), BIN, "probe", "serve"])
                        .args(["--port", port])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap(),
                );
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        Cluster {
            lab,
            addrs,
            _servers: servers,
            _dir: dir,
        }
    }

    fn socket(&self, host: &str) -> String {
        self.lab
            .root
            .0
            .join(&self.lab.name)
            .join(host)
            .join("agent.sock")
            .display()
            .to_string()
    }

    fn cli(&self, host: &str, args: &[&str]) -> (bool, String) {
        let o = Command::new(BIN)
            .args(args)
            .args(["--socket", &self.socket(host)])
            .output()
            .unwrap();
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    }

    /// Applies `yaml` (through the agent of `h2`, which holds only some
    /// of the pods), then deletes every other policy (through `h1`).
    fn only(&self, yaml: &str) {
        let old = self.keys();
        let new: Vec<String> = if yaml.is_empty() {
            vec![]
        } else {
            let d = TempDir::new("pol");
            let f = d.0.join("p.yaml");
            std::fs::write(&f, yaml).unwrap();
            let (ok, out) = self.cli("h2", &["policy", "apply", "-f", f.to_str().unwrap()]);
            assert!(ok, "{out}");
            muslin_model::policy::parse_document(yaml, muslin_model::policy::Format::Yaml)
                .unwrap()
                .iter()
                .map(|p| p.key())
                .collect()
        };
        for k in old.iter().filter(|k| !new.contains(k)) {
            let (ok, out) = self.cli("h1", &["policy", "delete", k]);
            assert!(ok, "{out}");
        }
    }

    fn keys(&self) -> Vec<String> {
        let (ok, out) = self.cli("h1", &["policy", "list", "--json"]);
        assert!(ok, "{out}");
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["key"].as_str().unwrap().to_string())
            .collect()
    }

    fn label(&self, host: &str, c: &str, l: &str) {
        let id = format!("{}-{host}-{c}", self.lab.name);
        let (ok, out) = self.cli(host, &["label", &id, l]);
        assert!(ok, "{out}");
    }

    /// Waits until every pair of pods connects exactly when `allowed`
    /// says, for every combination; panics with the pairs that differ.
    fn expect(&self, case: &str, combos: &[Combo], allowed: impl Fn(&str, &str, Combo) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let wrong = self.mismatches(combos, &allowed);
            if wrong.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{case} ({}): {}",
                self.lab.datastore,
                wrong.join("; ")
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn mismatches(
        &self,
        combos: &[Combo],
        allowed: &impl Fn(&str, &str, Combo) -> bool,
    ) -> Vec<String> {
        let mut jobs = vec![];
        for (i, from) in PODS.iter().enumerate() {
            for (j, to) in PODS.iter().enumerate() {
                if i == j {
                    continue;
                }
                for c in combos {
                    jobs.push((i, j, *c, allowed(from.1, to.1, *c)));
                }
            }
        }
        std::thread::scope(|s| {
            let hs: Vec<_> = jobs
                .iter()
                .map(|(i, j, c, want)| {
                    s.spawn(move || {
                        let got = self.reaches(*i, *j, *c);
                        (got != *want).then(|| {
                            format!(
                                "{} -> {} {}/{}: {} (expected {})",
                                PODS[*i].1,
                                PODS[*j].1,
                                c.0,
                                c.1,
                                if got { "connects" } else { "refused" },
                                if *want { "to connect" } else { "refused" }
                            )
                        })
                    })
                })
                .collect();
            hs.into_iter().filter_map(|h| h.join().unwrap()).collect()
        })
    }

    fn reaches(&self, from: usize, to: usize, (proto, port): Combo) -> bool {
        let (host, c, _, _) = PODS[from];
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns(&self.lab, host, c),
                BIN,
                "probe",
                "check",
            ])
            .args([
                &self.addrs[to],
                "--port",
                &port.to_string(),
                "--proto",
                proto,
            ])
            .args(["--timeout-ms", "700"])
            .output()
            .unwrap()
            .status
            .success()
    }

    fn addr(&self, c: &str) -> &str {
        &self.addrs[PODS.iter().position(|p| p.1 == c).unwrap()]
    }
}

fn ns(lab: &Lab, host: &str, c: &str) -> String {
    format!("{}-{host}-{c}", lab.name)
}

/// A TCP connection opened from inside a pod (the thread joins the pod's
/// network namespace, connects, and comes back).
fn connect_from(netns: &str, to: SocketAddr) -> TcpStream {
    let netns = netns.to_string();
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/var/run/netns/{netns}")).unwrap();
        // SAFETY: setns on this thread only, with a descriptor we own.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        TcpStream::connect_timeout(&to, Duration::from_secs(3)).unwrap()
    })
    .join()
    .unwrap()
}

fn echo(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    if s.write_all(b"MSLQ0000000000000001\n").is_err() {
        return false;
    }
    let mut line = String::new();
    BufReader::new(s.try_clone().unwrap())
        .read_line(&mut line)
        .is_ok_and(|n| n > 0)
}

fn same_ns(a: &str, b: &str) -> bool {
    ns_of(a) == ns_of(b)
}

fn ns_of(c: &str) -> &'static str {
    PODS.iter().find(|p| p.1 == c).unwrap().2
}

fn suite(datastore: &str) {
    let k = Cluster::up(datastore);
    let both = [TCP80, UDP80];

    // Default: everything connects.
    k.expect("no policy", &both, |_, _, _| true);

    // Deny all ingress in namespace x.
    k.only("name: deny-ingress\nnamespace: x\npodSelector: {}\npolicyTypes: [Ingress]\n");
    k.expect("deny all ingress in x", &both, |_, to, _| ns_of(to) != "x");
    // h1 shows what it protects (x/a) and what it dropped there.
    let (ok, out) = k.cli("h1", &["policy", "list", "--json"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let p = &v[0];
    assert_eq!(p["key"], "x:deny-ingress");
    assert_eq!(p["protects_here"].as_array().unwrap().len(), 1, "{p}");
    assert!(p["dropped_isolated_here"].as_u64().unwrap() > 0, "{p}");

    // Ingress to x/a from pods labelled pod=b, in x only.
    let from_b = "name: allow-b\nnamespace: x\npodSelector: {matchLabels: {pod: a}}\ningress:\n- from: [{podSelector: {matchLabels: {pod: b}}}]\n";
    k.only(from_b);
    k.expect("from pods with a label", &both, |from, to, _| {
        to != "xa" || from == "xb"
    });
    // A label change moves x/c in (on h2, enforced on h1) and out again.
    k.label("h2", "xc", "pod=b");
    k.expect("x/c relabelled pod=b", &[TCP80], |from, to, _| {
        to != "xa" || from == "xb" || from == "xc"
    });
    k.label("h2", "xc", "pod=c");
    k.expect("x/c labelled back", &[TCP80], |from, to, _| {
        to != "xa" || from == "xb"
    });

    // From a namespace chosen by its labels.
    k.only("name: from-y\nnamespace: x\npodSelector: {matchLabels: {pod: a}}\ningress:\n- from: [{namespaceSelector: {matchLabels: {ns: y}}}]\n");
    k.expect("from a namespace by label", &both, |from, to, _| {
        to != "xa" || ns_of(from) == "y"
    });

    // Pod AND namespace selector in one peer.
    k.only("name: b-in-y\nnamespace: x\npodSelector: {matchLabels: {pod: a}}\ningress:\n- from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]\n");
    k.expect("pod and namespace selector", &both, |from, to, _| {
        to != "xa" || from == "yb"
    });

    // An address block with an exception.
    k.only(&format!(
        "name: block\nnamespace: x\npodSelector: {{matchLabels: {{pod: a}}}}\ningress:\n- from: [{{ipBlock: {{cidr: 10.244.0.0/16, except: [{}/32]}}}}]\n",
        k.addr("yb")
    ));
    k.expect("ipBlock with except", &both, |from, to, _| {
        to != "xa" || from != "yb"
    });

    // Egress of x/a: nothing but UDP 53 (DNS-like).
    k.only("name: dns-only\nnamespace: x\npodSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\negress:\n- ports: [{protocol: UDP, port: 53}]\n");
    k.expect(
        "egress denied but UDP 53",
        &[TCP80, UDP80, ("udp", 53), ("tcp", 53)],
        |from, _, c| from != "xa" || c == ("udp", 53),
    );

    // A named port and a range.
    k.only("name: ports\nnamespace: x\npodSelector: {matchLabels: {pod: a}}\ningress:\n- ports: [{port: http}, {port: 81, endPort: 82}]\n");
    k.expect(
        "named and ranged ports",
        &[TCP80, UDP80, ("tcp", 81), ("tcp", 82), ("tcp", 53)],
        |_, to, c| to != "xa" || [TCP80, ("tcp", 81), ("tcp", 82)].contains(&c),
    );

    // Two policies: their union.
    k.only("name: b-on-80\nnamespace: x\npodSelector: {matchLabels: {pod: a}}\ningress:\n- from: [{podSelector: {matchLabels: {pod: b}}}]\n  ports: [{port: 80}]\n---\nname: c-on-81\nnamespace: x\npodSelector: {matchLabels: {pod: a}}\ningress:\n- from: [{podSelector: {matchLabels: {pod: c}}}]\n  ports: [{port: 81}]\n");
    k.expect(
        "two policies' union",
        &[TCP80, ("tcp", 81)],
        |from, to, c| to != "xa" || (from == "xb" && c == TCP80) || (from == "xc" && c.1 == 81),
    );

    // An update (same name) and a delete take effect for new connections.
    k.only(from_b);
    k.expect("before the update", &[TCP80], |from, to, _| {
        to != "xa" || from == "xb"
    });
    k.only(&from_b.replace("pod: b}", "pod: c}"));
    k.expect("after the update", &[TCP80], |from, to, _| {
        to != "xa" || from == "xc"
    });
    assert_eq!(
        k.keys(),
        vec!["x:allow-b".to_string()],
        "an update, not a second policy"
    );
    k.only("");
    k.expect("after the delete", &[TCP80], |_, _, _| true);

    // An ordered cluster-wide deny beats an allow, and protects pods no
    // allow policy isolates.
    k.only("name: allow-all-to-xa\nnamespace: x\npodSelector: {matchLabels: {pod: a}}\ningress: [{}]\n---\nname: no-c\naction: deny\norder: 10\npodSelector: {}\ningress:\n- from: [{podSelector: {matchLabels: {pod: c}}}]\n");
    k.expect("ordered deny beats an allow", &both, |from, _, _| {
        from != "xc"
    });
    let listed = k.cli("h1", &["policy", "show", "no-c"]);
    assert!(
        listed.0 && listed.1.contains("deny (order 10)"),
        "{}",
        listed.1
    );
    // Deny drops are counted where they happen (x/a is on h1).
    let (ok, out) = k.cli("h1", &["policy", "list", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let no_c = v
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["key"] == "no-c")
        .unwrap();
    assert!(no_c["denied_here"].as_u64().unwrap() > 0, "{no_c}");

    // Established before a policy: it goes on while the new policy allows
    // it, and stops when one refuses it.
    k.only("");
    k.expect("open again", &[TCP80], |_, _, _| true);
    let to = SocketAddr::new(k.addr("xa").parse().unwrap(), 7777);
    let mut held = connect_from(&ns(&k.lab, "h2", "xb"), to);
    let mut other = connect_from(&ns(&k.lab, "h2", "xc"), to);
    assert!(echo(&mut held) && echo(&mut other));
    k.only(from_b);
    k.expect("x/a isolated, x/b allowed", &[TCP80], |from, to, _| {
        to != "xa" || from == "xb"
    });
    assert!(
        echo(&mut held),
        "x/b's open connection is allowed by the new policy"
    );
    assert!(!echo(&mut other), "x/c's open connection is refused by it");
    k.only("name: deny-ingress\nnamespace: x\npodSelector: {}\npolicyTypes: [Ingress]\n");
    k.expect("deny all ingress in x, again", &[TCP80], |_, to, _| {
        ns_of(to) != "x"
    });
    assert!(!echo(&mut held), "x/b's open connection is refused now");
    assert!(same_ns("xa", "xb"));
    k.only("");
}

#[test]
fn kubernetes_policy_cases_on_gossip() {
    suite("gossip");
}

#[test]
fn kubernetes_policy_cases_on_etcd() {
    suite("etcd");
}
