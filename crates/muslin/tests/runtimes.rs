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

use common::hosts::{Agent, ReadmePair};
use common::{Netns, TempDir, BIN, CNI_PLUGINS};
use serde_json::{json, Value};

/// The CNI version runtimes' libcni (1.1) understands; Muslin answers in
/// the configuration's version.
const CNI_VERSION: &str = "1.0.0";

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
    for p in [
        "bridge",
        "host-local",
        "portmap",
        "firewall",
        "tuning",
        "loopback",
    ] {
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
    let o = common::with_stdin(
        Command::new("ip")
            .args(["netns", "exec", &host.name, BIN])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_COMMAND", "DEL")
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_PLUGINS),
        conf.to_string().as_bytes(),
    );
    assert!(o.status.success(), "DEL again: {}", text(&o));
}

/// Removes every cgroup named `name` (and what is under it) in each
/// controller's hierarchy; runtimes leave their parent cgroups behind. A
/// monitor (conmon, a shim) may take a moment to leave its cgroup.
fn remove_cgroups(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let Ok(ctls) = std::fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        let mut left = false;
        // cgroup v1 and hybrid hosts: one hierarchy per controller; a
        // pure v2 host: the one unified hierarchy at the root.
        let roots = ctls
            .flatten()
            .map(|c| c.path())
            .chain([std::path::PathBuf::from("/sys/fs/cgroup")]);
        for root in roots {
            let p = root.join(name);
            rmdir_tree(&p);
            left |= p.exists();
        }
        if !left || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
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

/// Removes `dir`, again while a process that just ended may still have
/// been writing in it.
fn remove_dir(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::remove_dir_all(dir).is_err() && dir.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
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
             lock_type = \"file\"\n\
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
        // Also waits for conmon and the cleanup it runs to exit.
        remove_cgroups(&self.cgroup);
        remove_dir(&self.dir.0);
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
    let c = ReadmePair::start();
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
    assert!(
        text(&o).contains("unsupported driver muslin"),
        "{}",
        text(&o)
    );

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

/// Replaces the plugins in podman's CNI directory by wrappers that log
/// how long each invocation took to `log`.
fn time_plugins(p: &Podman, log: &Path) {
    let bin = p.dir.0.join("cni-bin");
    for name in ["muslin", "bridge", "portmap", "firewall", "tuning"] {
        let link = bin.join(name);
        let real = std::fs::read_link(&link).unwrap();
        std::fs::remove_file(&link).unwrap();
        let script = format!(
            "#!/bin/sh\ns=$(date +%s%N)\n'{}' \"$@\"\nrc=$?\n\
             echo \"$CNI_CONTAINERID $CNI_COMMAND {name} $s $(date +%s%N)\" >> '{}'\nexit $rc\n",
            real.display(),
            log.display()
        );
        std::fs::write(&link, script).unwrap();
        let mut perm = std::fs::metadata(&link).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&link, perm).unwrap();
    }
}

/// The time CNI ADD took for container `id`, every plugin of the chain.
fn add_time(log: &Path, id: &str) -> Duration {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let ns: u64 = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.len() == 5 && w[0] == id && w[1] == "ADD")
        .map(|w| w[4].parse::<u64>().unwrap() - w[3].parse::<u64>().unwrap())
        .sum();
    Duration::from_nanos(ns)
}

/// Whether a TCP connection to `ip`:80 from namespace `ns` succeeds.
fn connects(ns: &Netns, ip: &str) -> bool {
    let path = ns.path();
    let addr: std::net::SocketAddr = format!("{ip}:80").parse().unwrap();
    std::thread::spawn(move || {
        let f = std::fs::File::open(path).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    })
    .join()
    .unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `podman run -d` until the container answers TCP from its host, on the
/// Muslin network and on podman's own kind of network (a CNI bridge made
/// by `podman network create`: bridge, host-local, portmap, firewall,
/// tuning) in the same run, interleaved; prints medians and the share of
/// each that CNI ADD took. Figures, not assertions: a debug build.
#[test]
fn podman_run_to_reachable_muslin_beside_the_cni_bridge() {
    const ROUNDS: usize = 7;
    let c = ReadmePair::start();
    let p = Podman::new(&c.hosts[0], &c.agents[0].socket);
    p.must(&["network", "create", "--subnet", "10.89.7.0/24", "podbr"]);
    // host-local keeps its leases in the test's directory, not the host's
    // /var/lib/cni.
    let f = p.dir.0.join("net.d/podbr.conflist");
    let mut conf: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
    conf["plugins"][0]["ipam"]["dataDir"] = json!(p.dir.0.join("host-local"));
    std::fs::write(&f, conf.to_string()).unwrap();
    let log = p.dir.0.join("cni-times.log");
    time_plugins(&p, &log);

    let mut total: [Vec<Duration>; 2] = Default::default();
    let mut add: [Vec<Duration>; 2] = Default::default();
    for round in 0..=ROUNDS {
        for (k, network) in ["muslin", "podbr"].iter().enumerate() {
            let name = format!("t{round}-{network}");
            let t0 = Instant::now();
            let id = p.run(&name, network);
            let ran = t0.elapsed();
            // Learning the address is not part of it.
            let ip = p.ip(&name, network);
            let t1 = Instant::now();
            while !connects(&c.hosts[0], &ip) {
                assert!(t1.elapsed() < Duration::from_secs(30), "{name} unreachable");
                std::thread::sleep(Duration::from_millis(1));
            }
            // Round 0 warms podman's storage and caches up.
            if round > 0 {
                total[k].push(ran + t1.elapsed());
                add[k].push(add_time(&log, &id));
            }
            p.must(&["rm", "-f", "-t", "0", &name]);
        }
    }
    let m: Vec<(Duration, Duration)> = (0..2)
        .map(|k| (median(total[k].clone()), median(add[k].clone())))
        .collect();
    println!("podman run -d to a container reachable from its host, median of {ROUNDS}:");
    for (k, label) in ["Muslin", "CNI bridge (podman network create)"]
        .iter()
        .enumerate()
    {
        println!(
            "  {label:<36} {:7.1} ms, of which CNI ADD {:6.1} ms ({:4.1} %)",
            ms(m[k].0),
            ms(m[k].1),
            100.0 * ms(m[k].1) / ms(m[k].0)
        );
    }
    println!(
        "  Muslin / bridge: total {:.2}x, CNI ADD {:.2}x",
        ms(m[0].0) / ms(m[1].0),
        ms(m[0].1) / ms(m[1].1)
    );
}

// ------------------------------------------------------------ containerd

/// A containerd of its own (root, state, sockets and `opt` under a temp
/// dir; no CRI plugin), and a ctr namespace for this test.
struct Containerd {
    dir: TempDir,
    child: Option<Child>,
    ns: String,
}

impl Containerd {
    fn start() -> Containerd {
        let dir = TempDir::new("containerd");
        let d = dir.0.display().to_string();
        let conf = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/containerd.sock\"\n\
             [ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\
             [debug]\n  address = \"{d}/debug.sock\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n"
        );
        std::fs::write(dir.0.join("config.toml"), conf).unwrap();
        let log = std::fs::File::create(dir.0.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.0.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let c = Containerd {
            dir,
            child: Some(child),
            ns: common::unique("ctr"),
        };
        wait_for("containerd serves", 30, || {
            let o = c.ctr(&["version"]);
            (o.status.success(), text(&o) + &c.log())
        });
        c
    }

    fn socket(&self) -> PathBuf {
        self.dir.0.join("containerd.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("containerd.log")).unwrap_or_default()
    }

    /// `ctr` against this containerd, in this test's namespace.
    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("-a")
            .arg(self.socket())
            .args(["-n", &self.ns])
            .args(args)
            .output()
            .unwrap()
    }

    /// `ctr run --rm --cni` of a busybox web server `id`, in the
    /// foreground as ctr's `--cni` wants (it tears the network down when
    /// the task ends; a detached task's never is), from host `host`.
    /// ctr reads /etc/cni/net.d and /opt/cni/bin: a private mount
    /// namespace puts `netd` and `bin` there for this ctr alone.
    fn run(&self, host: &Netns, bin: &Path, netd: &Path, id: &str) -> CtrRun {
        let root = rootfs(&self.dir.0, id);
        let script = "set -e\n\
            ns=$1 bin=$2 netd=$3; shift 3\n\
            mount -t tmpfs tmpfs /opt\n\
            mkdir -p /opt/cni/bin\n\
            mount --bind \"$bin\" /opt/cni/bin\n\
            mount --bind \"$netd\" /etc/cni/net.d\n\
            if [ -d /var/lib/cni ]; then mount -t tmpfs tmpfs /var/lib/cni; \
            else mount -t tmpfs tmpfs /var/lib; fi\n\
            exec nsenter --net=/var/run/netns/$ns \"$@\"\n";
        let log = self.dir.0.join(format!("{id}.log"));
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
            .arg(&host.name)
            .arg(bin)
            .arg(netd)
            .arg("ctr")
            .arg("-a")
            .arg(self.socket())
            .args(["-n", &self.ns, "run", "--rm", "--cni", "--null-io"])
            .arg("--fifo-dir")
            .arg(self.dir.0.join("fifo"))
            .arg("--runc-root")
            .arg(self.dir.0.join("runc"))
            .args(["--env", "PATH=/bin", "--rootfs"])
            .arg(&root)
            .args([id, "httpd", "-f", "-p", "80", "-h", "/www"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        CtrRun {
            child: Some(child),
            id: id.to_string(),
            cni_id: format!("{}-{id}", self.ns),
            log,
        }
    }

    fn exec(&self, id: &str, args: &[impl AsRef<str>]) -> (bool, String) {
        let fifo = self.dir.0.join("fifo");
        let mut full = vec!["task", "exec", "--fifo-dir", fifo.to_str().unwrap()];
        full.extend(["--exec-id", "probe", id]);
        full.extend(args.iter().map(|a| a.as_ref()));
        let o = self.ctr(&full);
        (o.status.success(), text(&o))
    }

    /// Ends task `run` as an operator does (ctr forwards no signal to a
    /// task it does not attach) and waits for ctr to tear it down.
    fn stop(&self, run: &mut CtrRun) {
        let o = self.ctr(&["task", "kill", "-s", "SIGKILL", &run.id]);
        assert!(o.status.success(), "{}", text(&o));
        let mut child = run.child.take().unwrap();
        wait_for(&format!("ctr run {} ends", run.id), 30, || {
            (child.try_wait().unwrap().is_some(), run.log())
        });
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let tasks = String::from_utf8_lossy(&self.ctr(&["task", "ls", "-q"]).stdout).into_owned();
        for t in tasks.split_whitespace() {
            let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", t]);
            let _ = self.ctr(&["task", "rm", "-f", t]);
        }
        let cs = String::from_utf8_lossy(&self.ctr(&["container", "ls", "-q"]).stdout).into_owned();
        for c in cs.split_whitespace() {
            let _ = self.ctr(&["container", "rm", c]);
        }
        let _ = self.ctr(&["namespace", "rm", &self.ns]);
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        unmount_under(&self.dir.0);
        remove_cgroups(&self.ns);
        remove_dir(&self.dir.0);
        // Shims' sockets live there whatever the configuration says;
        // removed when empty, as a host without containerd had it.
        let _ = std::fs::remove_dir("/run/containerd/s");
        let _ = std::fs::remove_dir("/run/containerd");
    }
}

/// A foreground `ctr run`, killed on drop (its container is then left to
/// `Containerd`'s drop).
struct CtrRun {
    child: Option<Child>,
    id: String,
    /// The container id ctr gives CNI: NAMESPACE-ID.
    cni_id: String,
    log: PathBuf,
}

impl CtrRun {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for CtrRun {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The address agent `a` gave CNI container `cni_id`.
fn endpoint_ip(a: &Agent, cni_id: &str) -> Option<String> {
    a.status()["endpoints"].as_array()?.iter().find_map(|e| {
        (e["key"]["container_id"] == cni_id).then(|| {
            let a = e["addresses"][0].as_str().unwrap();
            a.split('/').next().unwrap().to_string()
        })
    })
}

#[test]
fn containerd_ctr_containers_on_two_hosts_reach_each_other_and_leave_nothing() {
    let c = ReadmePair::start();
    let ctd = Containerd::start();
    // What an operator installs on each host: the plugin and a conflist.
    let host_dirs: Vec<(TempDir, PathBuf, PathBuf)> = c
        .agents
        .iter()
        .map(|a| {
            let d = TempDir::new("ctr-cni");
            let bin = cni_bin(&d.0);
            let netd = d.0.join("net.d");
            std::fs::create_dir_all(&netd).unwrap();
            std::fs::write(
                netd.join("10-muslin.conflist"),
                conflist(&a.socket).to_string(),
            )
            .unwrap();
            (d, bin, netd)
        })
        .collect();
    let mut runs: Vec<CtrRun> = ["web1", "web2"]
        .iter()
        .enumerate()
        .map(|(i, id)| ctd.run(&c.hosts[i], &host_dirs[i].1, &host_dirs[i].2, id))
        .collect();
    let mut ips = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        let mut ip = None;
        wait_for(&format!("{} is attached", r.id), 30, || {
            ip = endpoint_ip(&c.agents[i], &r.cni_id);
            (ip.is_some(), r.log() + &ctd.log())
        });
        ips.push(ip.unwrap());
    }

    // By address, both ways, across hosts. (ctr writes no resolv.conf:
    // names are for runtimes that do.)
    for (from, to, want) in [("web1", &ips[1], "web2"), ("web2", &ips[0], "web1")] {
        wait_for(&format!("{from} reaches {to}"), 30, || {
            let (ok, out) = ctd.exec(from, &http_get(to));
            (ok && out.ends_with(want), out)
        });
    }

    // Ending the task: ctr's DEL leaves nothing; the DEL again, twice, as
    // a retrying runtime would, still nothing.
    for (i, r) in runs.iter_mut().enumerate() {
        let (host, agent, ip) = (&c.hosts[i], &c.agents[i], &ips[i]);
        assert!(
            !traces(host, agent, ip).is_empty(),
            "attached before the end"
        );
        ctd.stop(r);
        wait_for(&format!("{} leaves no trace", r.id), 10, || {
            let t = traces(host, agent, ip);
            (t.is_empty(), format!("{t:#?}\n{}", r.log()))
        });
        del_again(host, &agent.socket, &r.cni_id);
        del_again(host, &agent.socket, &r.cni_id);
        assert!(traces(host, agent, ip).is_empty());
        assert!(
            agent.status()["endpoints"].as_array().unwrap().is_empty(),
            "{}",
            agent.status()["endpoints"]
        );
    }
    let left = String::from_utf8_lossy(&ctd.ctr(&["container", "ls", "-q"]).stdout).into_owned();
    assert!(
        left.trim().is_empty(),
        "ctr run --rm removed its containers: {left}"
    );
}
