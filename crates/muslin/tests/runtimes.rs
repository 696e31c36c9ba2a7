//! Real container runtimes on a Muslin network spanning two hosts built by
//! hand as README's Install section says (the first host without `--join`):
//! podman 4.3 (rootful, CNI backend) and containerd 1.6 (`ctr run --cni`),
//! both from Debian, started by the tests themselves with private state so
//! that nothing of the machine's own podman or containerd is touched.
//! Containers run busybox from a plain directory (`--rootfs`): no image,
//! no registry. Each scenario checks that containers on the two hosts reach
//! each other, that removing them leaves nothing behind, and that the DEL a
//! runtime repeats on a retry succeeds and leaks nothing.
//!
//! The commands are those of README's "Run it on your hosts"; keep both in
//! sync.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::hosts::{until, Agent, Net};
use common::{Netns, TempDir, BIN, CNI_PLUGINS};
use serde_json::{json, Value};

/// The CNI version runtimes' libcni (1.1) understands; Muslin answers in
/// the configuration's version.
const CNI_VERSION: &str = "1.0.0";

/// Two hosts on one segment, each with an agent, that see each other.
struct Cluster {
    agents: Vec<Agent>,
    hosts: Vec<Netns>,
    _net: Net,
}

fn cluster() -> Cluster {
    let net = Net::new();
    let hosts = vec![Netns::new("h1"), Netns::new("h2")];
    net.as_readme_hosts(&hosts);
    let secret = net.secret();
    let a1 = Agent::start(&hosts[0], "h1", &secret, &[]);
    let a2 = Agent::start(&hosts[1], "h2", &secret, &["--join", "192.168.56.11"]);
    until("the two agents see each other", 60, || {
        a1.peer("h2")["alive"] == true && a2.peer("h1")["alive"] == true
    });
    Cluster {
        agents: vec![a1, a2],
        hosts,
        _net: net,
    }
}

/// The conflist a runtime reads for network `muslin` on a host whose agent
/// listens at `socket`.
fn conflist(socket: &Path) -> Value {
    json!({"cniVersion": CNI_VERSION, "name": "muslin",
           "plugins": [{"type": "muslin", "socket": socket}]})
}

/// A busybox root filesystem in `dir` whose web server answers `name`.
fn rootfs(dir: &Path, name: &str) -> PathBuf {
    let root = dir.join(format!("rootfs-{name}"));
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "www"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    // busybox-static: no libraries to copy.
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for a in [
        "sh", "ip", "cat", "nc", "httpd", "nslookup", "sleep", "ping",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    std::fs::write(root.join("www/index.html"), name).unwrap();
    root
}

/// A CNI plugin directory: `muslin` (the binary under test) and the
/// reference plugins a bridge network uses.
fn cni_bin(dir: &Path) -> PathBuf {
    let bin = dir.join("cni-bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(BIN, bin.join("muslin")).unwrap();
    for p in ["bridge", "host-local", "portmap", "firewall", "tuning", "loopback"] {
        std::os::unix::fs::symlink(format!("{CNI_PLUGINS}/{p}"), bin.join(p)).unwrap();
    }
    bin
}

/// A command that fetches `/` from the web server at `host` and prints the
/// response. busybox's nc: its wget crashes in a root filesystem without
/// glibc's libraries.
fn http_get(host: &str) -> Vec<String> {
    let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {host} 80");
    vec!["sh".into(), "-c".into(), script]
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// What a host shows of an attachment of address `ip`: container veths
/// (Muslin's own devices are named `msl-...`), routes to it, the agent's
/// record of it.
fn traces(host: &Netns, agent: &Agent, ip: &str) -> Vec<String> {
    let mut t: Vec<String> = host
        .links()
        .into_iter()
        .filter(|l| l.starts_with("msl") && !l.starts_with("msl-"))
        .map(|l| format!("link {l}"))
        .collect();
    t.extend(
        host.our_routes()
            .iter()
            .filter(|r| r["dst"] == ip)
            .map(|r| format!("route {r}")),
    );
    t.extend(
        agent.status()["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["addresses"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| a.as_str().unwrap().split('/').next() == Some(ip))
            })
            .map(|e| format!("endpoint {e}")),
    );
    t
}

/// Waits until `f` holds, at most `secs`; fails with what `f` last said.
fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> (bool, String)) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (ok, said) = f();
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting until {what}: {said}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The plugin's DEL for `container_id`, run again as a runtime retrying a
/// teardown does (the namespace is gone by now); must succeed.
fn del_again(host: &Netns, socket: &Path, container_id: &str) {
    let mut conf = conflist(socket)["plugins"][0].clone();
    conf["cniVersion"] = json!(CNI_VERSION);
    conf["name"] = json!("muslin");
    let mut c = Command::new("ip")
        .args(["netns", "exec", &host.name, BIN])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", "DEL")
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", CNI_PLUGINS)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    c.stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success(), "DEL again: {}", text(&o));
}

/// Removes every cgroup named `name` (and what is under it) in each
/// controller's hierarchy; runtimes leave their parent cgroups behind.
fn remove_cgroups(name: &str) {
    let Ok(ctls) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for c in ctls.flatten() {
        rmdir_tree(&c.path().join(name));
    }
}

fn rmdir_tree(p: &Path) {
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                rmdir_tree(&e.path());
            }
        }
        let _ = std::fs::remove_dir(p);
    }
}

/// Unmounts whatever is still mounted under `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.display().to_string();
    let mut points: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for m in points {
        let _ = Command::new("umount").args(["-l", m]).output();
    }
}

// ---------------------------------------------------------------- podman

/// Rootful podman with the CNI backend, state and configuration of its own
/// (containers.conf via CONTAINERS_CONF, --root, --runroot, --tmpdir), run
/// in a host's network namespace so that its containers hang off that host.
struct Podman {
    dir: TempDir,
    host: String,
    /// The cgroup parent of its containers (and conmon), removed on drop.
    cgroup: String,
}

impl Podman {
    fn new(host: &Netns, agent_socket: &Path) -> Podman {
        let dir = TempDir::new("podman");
        let d = &dir.0;
        let bin = cni_bin(d);
        let netd = d.join("net.d");
        std::fs::create_dir_all(&netd).unwrap();
        std::fs::write(
            netd.join("muslin.conflist"),
            serde_json::to_string_pretty(&conflist(agent_socket)).unwrap(),
        )
        .unwrap();
        // The sandbox here has no CAP_SYS_RESOURCE: podman's default
        // rootful limits (1048576 files) cannot be set; runc rather than
        // crun, which refuses hybrid cgroup hierarchies.
        let conf = format!(
            "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\"]\n\
             network_config_dir = \"{}\"\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"runc\"\n\
             [containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n",
            bin.display(),
            netd.display()
        );
        std::fs::write(d.join("containers.conf"), conf).unwrap();
        let cgroup = common::unique("podman");
        Podman {
            dir,
            host: host.name.clone(),
            cgroup,
        }
    }

    fn cmd(&self, args: &[&str]) -> Output {
        let d = &self.dir.0;
        Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.host))
            .arg("podman")
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .output()
            .unwrap()
    }

    fn must(&self, args: &[&str]) -> String {
        let o = self.cmd(args);
        assert!(o.status.success(), "podman {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// `podman run -d` of a busybox web server named `name` on `network`;
    /// returns the container's id.
    fn run(&self, name: &str, network: &str) -> String {
        let root = rootfs(&self.dir.0, name);
        let parent = format!("/{}", self.cgroup);
        self.must(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            network,
            "--cgroup-parent",
            &parent,
            "--rootfs",
            root.to_str().unwrap(),
            "httpd",
            "-f",
            "-p",
            "80",
            "-h",
            "/www",
        ])
    }

    fn ip(&self, name: &str, network: &str) -> String {
        let f = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
        self.must(&["inspect", "--format", &f, name])
    }

    fn exec(&self, name: &str, args: &[impl AsRef<str>]) -> (bool, String) {
        let mut full = vec!["exec", name];
        full.extend(args.iter().map(|a| a.as_ref()));
        let o = self.cmd(&full);
        (o.status.success(), text(&o))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd(&["rm", "-af", "-t", "0"]);
        unmount_under(&self.dir.0);
        remove_cgroups(&self.cgroup);
    }
}

/// podman's CNI result cache entries (libcni keeps them in /var/lib/cni)
/// for container `id`.
fn cni_cache_entries(id: &str) -> Vec<String> {
    std::fs::read_dir("/var/lib/cni/results")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(id))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn podman_containers_on_two_hosts_reach_each_other_and_leave_nothing() {
    let c = cluster();
    let p: Vec<Podman> = c
        .hosts
        .iter()
        .zip(&c.agents)
        .map(|(h, a)| Podman::new(h, &a.socket))
        .collect();

    // The network as podman sees it: the hand-written conflist.
    let nets = p[0].must(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"]);
    assert!(nets.lines().any(|l| l == "muslin muslin"), "{nets}");
    // podman 4.3's CNI backend writes conflists for its own drivers only.
    let o = p[0].cmd(&["network", "create", "-d", "muslin", "other"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("unsupported driver muslin"), "{}", text(&o));

    let id1 = p[0].run("web1", "muslin");
    let id2 = p[1].run("web2", "muslin");
    let ip1 = p[0].ip("web1", "muslin");
    let ip2 = p[1].ip("web2", "muslin");
    assert_ne!(ip1, ip2);

    // By address, both ways, across hosts.
    for (from, name, to, want) in [(&p[0], "web1", &ip2, "web2"), (&p[1], "web2", &ip1, "web1")] {
        wait_for(&format!("{name} reaches {to}"), 30, || {
            let (ok, out) = from.exec(name, &http_get(to));
            (ok && out.ends_with(want), out)
        });
    }

    // By name: podman writes the result's DNS into resolv.conf.
    let (_, resolv) = p[0].exec("web1", &["cat", "/etc/resolv.conf"]);
    assert!(resolv.contains("nameserver 169.254.53.1"), "{resolv}");
    assert!(resolv.contains("muslin.internal"), "{resolv}");
    wait_for("web1 resolves web2.muslin.internal", 30, || {
        let (ok, out) = p[0].exec("web1", &["nslookup", "web2.muslin.internal"]);
        (ok && out.contains(&ip2), out)
    });
    let (ok, out) = p[0].exec("web1", &http_get("web2"));
    assert!(ok && out.ends_with("\r\n\r\nweb2"), "by short name: {out}");

    // podman rm -f leaves nothing on either host.
    for (i, (pod, (name, id, ip))) in p
        .iter()
        .zip([("web1", &id1, &ip1), ("web2", &id2, &ip2)])
        .enumerate()
    {
        let host = &c.hosts[i];
        let agent = &c.agents[i];
        assert!(!traces(host, agent, ip).is_empty(), "attached before rm");
        pod.must(&["rm", "-f", "-t", "0", name]);
        wait_for(&format!("{name} leaves no trace"), 10, || {
            let t = traces(host, agent, ip);
            (t.is_empty(), format!("{t:#?}"))
        });
        assert!(cni_cache_entries(id).is_empty(), "libcni cache of {name}");
        // The DEL again, twice, as a runtime retrying: still nothing.
        del_again(host, &agent.socket, id);
        del_again(host, &agent.socket, id);
        assert!(traces(host, agent, ip).is_empty());
        assert!(
            agent.status()["endpoints"].as_array().unwrap().is_empty(),
            "{}",
            agent.status()["endpoints"]
        );
    }
    let left = p[0].must(&["ps", "-aq"]);
    assert!(left.is_empty(), "{left}");
}
