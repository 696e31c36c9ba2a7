//! The name service, on hosts built by hand as README's Install section
//! says (the first host without `--join`, a NAT NIC first, strict
//! rp_filter): names, aliases, namespaces and networks across hosts;
//! churn; overlapping networks; forwarding with failover and a dead
//! upstream; hostile packets; restarts during a partition; and, in a lab,
//! an etcd outage.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::hosts::{plugin, until, Agent, Net};
use common::lab::{file, one_segment, Lab};
use common::{result_ip, Netns, TempDir, BIN};
use serde_json::{json, Value};

/// A resolver in a namespace of its own on the hosts' segment, as a
/// site's DNS server is: dnsmasq answering `*.upstream.test`.
struct Upstream {
    ns: Netns,
    child: Option<Child>,
    log: TempDir,
}

impl Upstream {
    fn start(net: &Net, segment: &str) -> Upstream {
        let ns = Netns::new("up");
        net.wire(&ns, "eth0", segment, "192.168.56.53/24", 1500);
        let log = TempDir::new("dnsmasq");
        let mut up = Upstream {
            ns,
            child: None,
            log,
        };
        up.spawn();
        up
    }

    fn spawn(&mut self) {
        let log = self.log.0.join("queries.log");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns.name,
                "dnsmasq",
                "--keep-in-foreground",
            ])
            .args([
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
            ])
            .args(["--listen-address=192.168.56.53", "--user=root"])
            .arg(format!("--pid-file={}", self.log.0.join("pid").display()))
            .arg("--address=/upstream.test/192.0.2.77")
            .arg("--log-queries")
            .arg(format!("--log-facility={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("dnsmasq (Debian package dnsmasq-base)");
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn queries(&self) -> String {
        std::fs::read_to_string(self.log.0.join("queries.log")).unwrap_or_default()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Removes a namespace's resolv.conf (written as a runtime does) on drop.
struct ResolvConf(std::path::PathBuf);

impl ResolvConf {
    fn write(ns: &Netns, dns: &Value) -> ResolvConf {
        let dir = std::path::PathBuf::from(format!("/etc/netns/{}", ns.name));
        std::fs::create_dir_all(&dir).unwrap();
        let mut text = String::new();
        for n in dns["nameservers"].as_array().unwrap() {
            text.push_str(&format!("nameserver {}\n", n.as_str().unwrap()));
        }
        let words = |k: &str| -> Vec<String> {
            dns[k]
                .as_array()
                .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
                .unwrap_or_default()
        };
        text.push_str(&format!("search {}\n", words("search").join(" ")));
        text.push_str(&format!("options {}\n", words("options").join(" ")));
        std::fs::write(dir.join("resolv.conf"), text).unwrap();
        ResolvConf(dir)
    }
}

impl Drop for ResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct World {
    agents: Vec<Agent>,
    hosts: Vec<Netns>,
    upstream: Option<Upstream>,
    net: Net,
}

/// A container: its namespace, its address and its ADD result.
struct Ctr {
    ns: Netns,
    id: String,
    addr: String,
    result: Value,
    host: usize,
    conf: Value,
    args: String,
}

/// `n` hosts on one segment, each with a NAT NIC first, agents started as
/// README says, asking `upstreams` for names outside the cluster.
fn world(n: usize, with_upstream: bool, extra: &[&str]) -> World {
    let net = Net::new();
    let hosts: Vec<Netns> = (1..=n).map(|i| Netns::new(&format!("h{i}"))).collect();
    let shared = net.as_readme_hosts(&hosts);
    let upstream = with_upstream.then(|| Upstream::start(&net, &shared));
    let secret = net.secret();
    // The first upstream is down (no such host): every forwarded query
    // fails over to the second.
    let mut args = vec![
        "--dns-upstream",
        "192.168.56.99,192.168.56.53",
        "--dns-upstream-timeout-ms",
        "400",
    ];
    args.extend_from_slice(extra);
    let mut agents = vec![Agent::start(&hosts[0], "h1", &secret, &args)];
    for (i, h) in hosts.iter().enumerate().skip(1) {
        let mut a = args.clone();
        a.extend_from_slice(&["--join", "192.168.56.11"]);
        agents.push(Agent::start(h, &format!("h{}", i + 1), &secret, &a));
    }
    World {
        agents,
        hosts,
        upstream,
        net,
    }
}

impl World {
    /// Attaches a new container on `host` to `network` with a name,
    /// a namespace and aliases.
    fn ctr(
        &self,
        host: usize,
        network: Option<&str>,
        name: &str,
        namespace: &str,
        aliases: &[&str],
    ) -> Ctr {
        let ns = Netns::new("c");
        let socket = &self.agents[host].socket;
        let mut conf = json!({"cniVersion": "1.1.0", "name": network.unwrap_or("muslin"),
                              "type": "muslin", "socket": socket,
                              "args": {"cni": {"aliases": aliases}}});
        if let Some(n) = network {
            conf["network"] = json!(n);
        }
        let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}");
        let id = common::unique("ctr");
        let (result, ok) = plugin(
            &self.agents[host].ns_name,
            &conf,
            "ADD",
            &id,
            &ns,
            &[("CNI_ARGS", args.clone())],
        );
        assert!(ok, "ADD {name}: {result}\n{}", self.agents[host].log());
        Ctr {
            addr: result_ip(&result),
            ns,
            id,
            result,
            host,
            conf,
            args,
        }
    }

    fn del(&self, c: &Ctr) {
        let (v, ok) = plugin(
            &self.agents[c.host].ns_name,
            &c.conf,
            "DEL",
            &c.id,
            &c.ns,
            &[("CNI_ARGS", c.args.clone())],
        );
        assert!(ok, "DEL: {v}");
    }

    fn network(&self, host: usize, args: &[&str]) {
        let socket = self.agents[host].socket.to_str().unwrap().to_string();
        let mut v: Vec<&str> = vec![BIN, "network"];
        v.extend_from_slice(args);
        v.extend_from_slice(&["--socket", &socket]);
        let o = self.hosts[host].exec(&v);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

impl Ctr {
    /// The resolver the ADD result names.
    fn resolver(&self) -> String {
        self.result["dns"]["nameservers"][0]
            .as_str()
            .expect("a nameserver in the result")
            .to_string()
    }
}

/// A DNS answer: its status and its records' data.
#[derive(Debug)]
struct Answer {
    status: String,
    data: Vec<String>,
}

/// `dig` from inside `from`, at `server`.
fn dig(from: &Netns, server: &str, query: &[&str]) -> Answer {
    let at = format!("@{server}");
    let mut args = vec![
        "dig",
        "+time=1",
        "+tries=2",
        "+noall",
        "+comments",
        "+answer",
        &at,
    ];
    args.extend_from_slice(query);
    let o = from.exec(&args);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("NO ANSWER")
        .to_string();
    let mut data: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().last().map(String::from))
        .collect();
    data.sort();
    Answer { status, data }
}

fn a(from: &Ctr, name: &str) -> Answer {
    dig(&from.ns, &from.resolver(), &[name, "A"])
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[test]
fn names_aliases_namespaces_and_networks_resolve_across_hosts_and_follow_churn() {
    let w = world(3, false, &[]);
    let client = w.ctr(0, None, "client", "shop", &[]);
    let web = w.ctr(2, None, "web", "shop", &["www", "front"]);
    let web2 = w.ctr(1, None, "web2", "shop", &["www"]);
    // The result tells the runtime how to write resolv.conf.
    assert_eq!(client.result["dns"]["nameservers"], json!(["169.254.53.1"]));
    assert_eq!(
        client.result["dns"]["search"],
        json!(["shop.muslin.internal", "muslin.internal"])
    );
    until("h1 knows web on h3", 20, || {
        a(&client, "web.muslin.internal").data == vec![web.addr.clone()]
    });
    let both = sorted(&[&web.addr, &web2.addr]);
    until("h1 knows web2 on h2", 20, || {
        a(&client, "www.muslin.internal").data == both
    });
    for q in [
        "web.shop.muslin.internal",
        "front.shop.muslin.internal",
        "web.default.muslin.internal",
        "WEB.Muslin.Internal",
    ] {
        let r = a(&client, q);
        assert_eq!(
            (r.status.as_str(), r.data.clone()),
            ("NOERROR", vec![web.addr.clone()]),
            "{q}"
        );
    }
    for q in [
        "web.other.muslin.internal",
        "nobody.muslin.internal",
        "front.nosuch.muslin.internal",
    ] {
        assert_eq!(a(&client, q).status, "NXDOMAIN", "{q}");
    }
    let aaaa = dig(&client.ns, "169.254.53.1", &["web.muslin.internal", "AAAA"]);
    assert_eq!((aaaa.status.as_str(), aaaa.data.len()), ("NOERROR", 0));
    let ptr = dig(&client.ns, "169.254.53.1", &["-x", &web.addr]);
    assert_eq!(ptr.data, ["web.muslin.internal."]);
    // Through resolv.conf as a runtime writes it: short names and
    // name.namespace find their way through the search list.
    let _rc = ResolvConf::write(&client.ns, &client.result["dns"]);
    for q in ["web", "web.shop", "front"] {
        let o = client.ns.exec(&["getent", "ahostsv4", q]);
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains(&web.addr), "getent {q}: {text}");
    }
    // What `muslin dns lookup` and `status` show.
    let socket = w.agents[0].socket.to_str().unwrap();
    let o = w.hosts[0].exec(&[BIN, "dns", "lookup", "www", "--socket", socket]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && text.contains(&web.addr) && text.contains(&web2.addr),
        "{text}"
    );
    let st = w.agents[0].status();
    assert!(st["dns"]["names"].as_u64().unwrap() >= 5, "{}", st["dns"]);
    assert_eq!(st["dns"]["listeners"][0]["address"], "169.254.53.1");
    // A departure shows everywhere within 2 s; so does an arrival.
    let far = w.ctr(1, None, "watcher", "shop", &[]);
    until("h2 knows web", 20, || {
        a(&far, "web.muslin.internal").data == vec![web.addr.clone()]
    });
    w.del(&web);
    let t = Instant::now();
    until("web is gone on h1 and h2", 2, || {
        a(&client, "web.muslin.internal").status == "NXDOMAIN"
            && a(&far, "web.muslin.internal").status == "NXDOMAIN"
    });
    eprintln!(
        "DEL seen everywhere after {:.2} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(
        a(&client, "www.muslin.internal").data,
        vec![web2.addr.clone()]
    );
    let t = Instant::now();
    let late = w.ctr(2, None, "late", "shop", &[]);
    until("late resolves on h1 and h2", 2, || {
        a(&client, "late.muslin.internal").data == vec![late.addr.clone()]
            && a(&far, "late.shop.muslin.internal").data == vec![late.addr.clone()]
    });
    eprintln!(
        "ADD seen everywhere after {:.2} s",
        t.elapsed().as_secs_f64()
    );
}

#[test]
fn overlapping_networks_each_resolve_only_their_own_db() {
    let w = world(2, false, &[]);
    w.network(0, &["create", "red", "--subnet", "10.50.0.0/16"]);
    w.network(0, &["create", "blue", "--subnet", "10.50.0.0/16"]);
    let both_ready = || {
        (0..2).all(|h| {
            let st = w.agents[h].status();
            let l = st["dns"]["listeners"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            ["red", "blue"]
                .iter()
                .all(|n| l.iter().any(|x| x["network"] == *n))
        })
    };
    until("both networks served on both hosts", 30, both_ready);
    let db_red = w.ctr(1, Some("red"), "db", "default", &["only-red"]);
    let db_blue = w.ctr(1, Some("blue"), "db", "default", &["only-blue"]);
    // Same host, same block in each network: the same address.
    assert_eq!(db_red.addr, db_blue.addr);
    let red = w.ctr(0, Some("red"), "red-client", "default", &[]);
    let blue = w.ctr(0, Some("blue"), "blue-client", "default", &[]);
    let plain = w.ctr(0, None, "plain", "default", &[]);
    assert_ne!(red.resolver(), blue.resolver());
    assert_ne!(red.resolver(), "169.254.53.1");
    until("red's db resolves in red", 20, || {
        a(&red, "only-red.muslin.internal").data == vec![db_red.addr.clone()]
    });
    until("blue's db resolves in blue", 20, || {
        a(&blue, "only-blue.muslin.internal").data == vec![db_blue.addr.clone()]
    });
    assert_eq!(
        a(&red, "db.muslin.internal").data,
        vec![db_red.addr.clone()]
    );
    assert_eq!(
        a(&red, "db.red.muslin.internal").data,
        vec![db_red.addr.clone()]
    );
    assert_eq!(a(&red, "only-blue.muslin.internal").status, "NXDOMAIN");
    assert_eq!(a(&red, "db.blue.muslin.internal").status, "NXDOMAIN");
    assert_eq!(a(&red, "plain.muslin.internal").status, "NXDOMAIN");
    assert_eq!(a(&blue, "only-red.muslin.internal").status, "NXDOMAIN");
    assert_eq!(
        a(&blue, "db.muslin.internal").data,
        vec![db_blue.addr.clone()]
    );
    let ptr = dig(&red.ns, &red.resolver(), &["-x", &db_red.addr]);
    assert_eq!(ptr.data, ["db.muslin.internal."]);
    // No network reads another's names through its resolver: the
    // firewall drops the query before routing (no answer at all)...
    let dropped = |from: &Netns, server: &str| dig(from, server, &["db.muslin.internal"]).status;
    assert_eq!(dropped(&red.ns, &blue.resolver()), "NO ANSWER");
    assert_eq!(dropped(&red.ns, "169.254.53.1"), "NO ANSWER");
    assert_eq!(dropped(&plain.ns, &red.resolver()), "NO ANSWER");
    assert_eq!(a(&plain, "db.muslin.internal").status, "NXDOMAIN");
    assert_eq!(
        a(&plain, "plain.muslin.internal").data,
        vec![plain.addr.clone()]
    );
    // ...and the resolver itself refuses an asker from outside its
    // network (here the host, asking from its underlay address), while
    // the host asking as itself is answered.
    let host = &w.hosts[0];
    let o = host.exec(&[
        "dig",
        "+time=1",
        "+tries=1",
        "-b",
        "192.168.56.11",
        &format!("@{}", red.resolver()),
        "db.muslin.internal",
    ]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("status: REFUSED"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(
        dig(host, &red.resolver(), &["db.muslin.internal"]).data,
        vec![db_red.addr.clone()]
    );
    // A container on two networks (eth0 default, eth1 red) sees both
    // networks' names, at either resolver; red's is reached through eth1.
    let conf = json!({"cniVersion": "1.1.0", "name": "red", "type": "muslin",
                      "socket": w.agents[0].socket, "network": "red"});
    let (r, ok) = plugin(
        &w.agents[0].ns_name,
        &conf,
        "ADD",
        &plain.id,
        &plain.ns,
        &[
            ("CNI_IFNAME", "eth1".to_string()),
            ("CNI_ARGS", plain.args.clone()),
        ],
    );
    assert!(ok, "{r}");
    let red_resolver = r["dns"]["nameservers"][0].as_str().unwrap().to_string();
    assert_eq!(red_resolver, red.resolver());
    let route = plain.ns.ip(&["route", "get", &red_resolver]);
    assert!(route.contains("dev eth1"), "{route}");
    until("plain sees red's names", 10, || {
        dig(&plain.ns, &red_resolver, &["only-red.muslin.internal"]).data
            == vec![db_red.addr.clone()]
    });
    assert_eq!(
        dig(&plain.ns, &red_resolver, &["plain.muslin.internal"])
            .data
            .len(),
        2
    );
    assert_eq!(
        a(&plain, "only-red.muslin.internal").data,
        vec![db_red.addr.clone()]
    );
    assert_eq!(a(&plain, "only-blue.muslin.internal").status, "NXDOMAIN");
}

#[test]
fn names_outside_the_cluster_go_upstream_with_failover_and_fail_fast_when_it_is_down() {
    let mut w = world(1, true, &[]);
    let c = w.ctr(0, None, "asker", "default", &[]);
    let t = Instant::now();
    let r = a(&c, "www.upstream.test");
    assert_eq!(
        (r.status.as_str(), r.data.clone()),
        ("NOERROR", vec!["192.0.2.77".to_string()])
    );
    eprintln!(
        "forwarded past a dead upstream in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    // Unknown inside the domain: NXDOMAIN at once, never asked upstream.
    let t = Instant::now();
    assert_eq!(a(&c, "ghost.muslin.internal").status, "NXDOMAIN");
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    let queries = w.upstream.as_ref().unwrap().queries();
    assert!(queries.contains("upstream.test"), "{queries}");
    assert!(!queries.contains("muslin.internal"), "{queries}");
    // Every upstream down: SERVFAIL within the timeouts, not a hang.
    w.upstream.as_mut().unwrap().stop();
    let t = Instant::now();
    let r = dig(
        &c.ns,
        "169.254.53.1",
        &["+tries=1", "+time=5", "other.upstream.test"],
    );
    let took = t.elapsed();
    assert_eq!(r.status, "SERVFAIL", "{r:?}");
    assert!(took < Duration::from_secs(4), "SERVFAIL after {took:?}");
    eprintln!("SERVFAIL after {:.2} s", took.as_secs_f64());
    let _ = &w.net;
}

/// Thousands of malformed datagrams, and hostile TCP, at the resolver.
#[test]
fn malformed_packets_never_crash_or_stall_the_server() {
    let mut w = world(1, false, &[]);
    let c = w.ctr(0, None, "target", "default", &[]);
    // A name that is no DNS name is refused before anything is made.
    let other = Netns::new("bad");
    let conf = json!({"cniVersion": "1.1.0", "name": "muslin", "type": "muslin",
                      "socket": w.agents[0].socket, "args": {"cni": {"aliases": ["ok", "Not A Name"]}}});
    let (v, ok) = plugin(&w.agents[0].ns_name, &conf, "ADD", "bad-alias", &other, &[]);
    assert!(!ok && v["code"] == 7, "{v}");
    assert!(
        v["msg"].as_str().unwrap().contains("args.cni.aliases[1]"),
        "{v}"
    );
    assert_eq!(
        w.agents[0].status()["endpoints"].as_array().unwrap().len(),
        1
    );
    let path = c.ns.path();
    let sent = std::thread::spawn(move || {
        let f = std::fs::File::open(path).unwrap();
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let to = "169.254.53.1:53";
        // A valid query for target.muslin.internal, to cut and bend.
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in ["target", "muslin", "internal"] {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut n = 0u32;
        let mut send = |b: &[u8]| {
            let _ = s.send_to(b, to);
            n += 1;
            if n.is_multiple_of(200) {
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        for cut in 0..q.len() {
            send(&q[..cut]);
        }
        // A name pointing at itself, and two pointing at each other.
        send(&[0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1]);
        send(&[
            0, 2, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 14, 0xc0, 12, 0, 1, 0, 1,
        ]);
        // Counts far beyond the data.
        send(&[0, 3, 1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        // A response, which must not be answered (reflection).
        let mut resp = q.clone();
        resp[2] |= 0x80;
        send(&resp);
        // Oversized: the largest datagram, full of labels.
        let mut big = q[..12].to_vec();
        while big.len() < 65_000 {
            big.push(63);
            big.extend(std::iter::repeat_n(b'a', 63));
        }
        send(&big);
        for _ in 0..3000 {
            let len = (rnd() % 600) as usize;
            let b: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
            send(&b);
        }
        for _ in 0..2000 {
            let mut b = q.clone();
            for _ in 0..(1 + rnd() % 4) {
                let i = (rnd() as usize) % b.len();
                b[i] = rnd() as u8;
            }
            send(&b);
        }
        // TCP: a length larger than what follows, then silence; and
        // garbage behind a plausible length.
        let t1 = std::net::TcpStream::connect(to).ok();
        if let Some(mut t) = t1.as_ref() {
            use std::io::Write;
            let _ = t.write_all(&[0xff, 0xff, 1, 2, 3]);
        }
        if let Ok(mut t) = std::net::TcpStream::connect(to) {
            use std::io::Write;
            let _ = t.write_all(&[0, 40]);
            let _ = t.write_all(&[0xab; 40]);
        }
        n
    })
    .join()
    .unwrap();
    assert!(sent > 5000);
    // Still answering, at once, and still running.
    let t = Instant::now();
    let r = a(&c, "target.muslin.internal");
    assert_eq!(r.data, vec![c.addr.clone()], "{r:?}\n{}", w.agents[0].log());
    assert!(t.elapsed() < Duration::from_secs(2));
    let tcp = dig(&c.ns, "169.254.53.1", &["+tcp", "target.muslin.internal"]);
    assert_eq!(tcp.data, vec![c.addr.clone()]);
    assert!(
        w.agents[0]
            .child
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_none(),
        "the agent died: {}",
        w.agents[0].log()
    );
    // An alias of 40 containers: 40 records, past 512 bytes. Without EDNS
    // the answer is truncated and dig asks again over TCP; with EDNS it
    // fits in one datagram.
    let pool: Vec<Ctr> = (0..40)
        .map(|i| w.ctr(0, None, &format!("p{i}"), "default", &["pool"]))
        .collect();
    let mut want: Vec<String> = pool.iter().map(|p| p.addr.clone()).collect();
    want.sort();
    until("the pool resolves", 10, || {
        a(&c, "pool.muslin.internal").data == want
    });
    let plain = dig(&c.ns, "169.254.53.1", &["+noedns", "pool.muslin.internal"]);
    assert_eq!(plain.data, want);
    let o = c.ns.exec(&[
        "dig",
        "+noedns",
        "+ignore",
        "@169.254.53.1",
        "pool.muslin.internal",
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains(" tc"), "no truncation flag: {text}");
}

#[test]
fn names_survive_restarts_and_a_restart_during_a_partition() {
    let mut w = world(3, false, &[]);
    let client = w.ctr(0, None, "client", "default", &[]);
    let web = w.ctr(2, None, "web", "default", &[]);
    until("h1 knows web", 20, || {
        a(&client, "web.muslin.internal").data == vec![web.addr.clone()]
    });
    // While the agent is down its address stays (resolv.conf never
    // changes); once it is back it answers again.
    let child = w.agents[0].child.take();
    if let Some(mut c) = child {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    let held = w.hosts[0].ip(&["-4", "addr", "show", "dev", "msl-dns"]);
    assert!(held.contains("169.254.53.1/32"), "{held}");
    w.agents[0].spawn();
    w.agents[0].wait_ready(Duration::from_secs(30));
    until("h1 answers after its restart", 10, || {
        a(&client, "web.muslin.internal").data == vec![web.addr.clone()]
    });
    // h3 falls silent (its agent paused: no gossip from it); h1 restarts
    // meanwhile and still knows h3's names from what it remembered.
    let pid = w.agents[2].child.as_ref().unwrap().id().to_string();
    Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    struct Resume(String);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = Command::new("kill").args(["-CONT", &self.0]).status();
        }
    }
    let _resume = Resume(pid);
    let child = w.agents[0].child.take();
    if let Some(mut c) = child {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    w.agents[0].spawn();
    w.agents[0].wait_ready(Duration::from_secs(30));
    until("h1 answers for h3 while h3 is silent", 10, || {
        a(&client, "web.muslin.internal").data == vec![web.addr.clone()]
    });
    let _ = &w.net;
}

/// In a lab on etcd: the store goes away, the names stay.
#[test]
fn names_answer_from_the_last_view_while_etcd_is_away() {
    let lab = Lab::on("etcd");
    let (_d, path) = file(&one_segment(2, 1, ""));
    lab.up(&["-f", &path, "--converge-timeout", "30"]);
    let target = lab.container_addr("h2", "c1");
    let ask = || {
        let o = lab.exec(
            "h1/c1",
            &[
                "dig",
                "+short",
                "+time=1",
                "+tries=2",
                "@169.254.53.1",
                "c1.h2.muslin.internal",
            ],
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    until("h1 knows c1 on h2", 20, || ask() == target);
    let (pid, _) = lab.process("etcd1", |a| a.first().is_some_and(|x| x.ends_with("etcd")));
    Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .unwrap();
    struct Resume(i32);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-CONT", &self.0.to_string()])
                .status();
        }
    }
    let _resume = Resume(pid);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(6) {
        assert_eq!(ask(), target, "during the outage, after {:?}", t.elapsed());
        std::thread::sleep(Duration::from_millis(500));
    }
}
