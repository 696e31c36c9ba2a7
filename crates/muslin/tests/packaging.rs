//! Packaging and deployment (issue 18): the default agent configuration the
//! package ships, the Debian package itself (installed, upgraded, removed and
//! purged in a throwaway root that never touches this host), and the
//! Kubernetes manifest (parsed offline by kubectl).

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::{TempDir, BIN};
use muslin_model::agent_config::AgentConfig;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    let p = repo().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn parse(toml: &str) -> AgentConfig {
    AgentConfig::from_toml(toml).unwrap_or_else(|e| panic!("{e} in:\n{toml}"))
}

/// The agent's settings, as TOML keys: every field of the configuration.
fn setting_keys() -> Vec<String> {
    let v = serde_json::to_value(AgentConfig::default()).expect("serializable");
    v.as_object().expect("a table").keys().cloned().collect()
}

/// The shipped /etc/muslin/agent.toml: valid as it is, with the secret the
/// postinst generates; every setting is there, and each commented line, once
/// uncommented, parses and is the default unless its comment says
/// "default:" (then it is an example).
#[test]
fn agent_toml_is_valid_and_shows_every_setting_with_its_default() {
    let text = read("packaging/agent.toml");
    let c = parse(&text);
    c.validate().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.cluster_secret_file.as_deref(),
        Some(Path::new("/etc/muslin/secret"))
    );
    let expected = AgentConfig {
        cluster_secret_file: c.cluster_secret_file.clone(),
        ..AgentConfig::default()
    };
    assert_eq!(c, expected, "only cluster-secret-file is set");

    let mut shown = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# ") else {
            continue;
        };
        let Some((key, _)) = rest.split_once(" = ") else {
            continue;
        };
        let (setting, note) = rest.split_once("  #").unwrap_or((rest, ""));
        let one = parse(setting.trim());
        one.validate()
            .unwrap_or_else(|e| panic!("{line:?} uncommented: {e}"));
        if key != "join" && !note.contains("default:") {
            assert_eq!(one, AgentConfig::default(), "{line:?} is not the default");
        }
        shown.push(key.to_string());
    }
    for k in setting_keys() {
        assert!(
            k == "cluster-secret-file" || shown.contains(&k),
            "packaging/agent.toml does not show the setting {k}"
        );
    }
}

/// A root of its own: this host's root file system under an overlay whose
/// writable layer is a tmpfs, in a private mount namespace held by one
/// process. Killing it takes the namespace and every mount with it; nothing
/// written in the root ever reaches the host.
struct Throwaway {
    holder: Child,
    dir: TempDir,
}

impl Throwaway {
    fn new() -> Throwaway {
        let dir = TempDir::new("debroot");
        let script = r#"set -eu
d=$1
mount -t tmpfs -o mode=0755 muslin-test "$d"
mkdir "$d/upper" "$d/work" "$d/root"
mount -t overlay muslin-test -o "lowerdir=/,upperdir=$d/upper,workdir=$d/work" "$d/root"
mount --rbind /dev "$d/root/dev"
mount -t proc proc "$d/root/proc"
mount --rbind /sys "$d/root/sys"
mount -t tmpfs -o mode=0755 run "$d/root/run"
mount -t tmpfs -o mode=1777 tmp "$d/root/tmp"
echo ready
exec sleep infinity
"#;
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(script)
            .arg("sh")
            .arg(&dir.0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn unshare");
        let mut line = String::new();
        let _ = BufReader::new(holder.stdout.take().expect("piped")).read_line(&mut line);
        if line.trim() != "ready" {
            let _ = holder.kill();
            let out = holder.wait_with_output().expect("wait");
            panic!(
                "setting up the throwaway root: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Throwaway { holder, dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.0.join("root")
    }

    /// Runs `cmd` with sh in the root, with a clean environment as dpkg
    /// would have under apt.
    fn sh(&self, cmd: &str) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.holder.id().to_string(), "-m", "--", "chroot"])
            .arg(self.root())
            .args(["/bin/sh", "-c", cmd])
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", "/root")
            .env("LC_ALL", "C")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .expect("spawn nsenter")
    }

    /// Runs `cmd` in the root; it must succeed. Returns its standard output.
    fn ok(&self, cmd: &str) -> String {
        let o = self.sh(cmd);
        assert!(
            o.status.success(),
            "{cmd:?} in the throwaway root: {}\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn exists(&self, path: &str) -> bool {
        self.sh(&format!("test -e {path} || test -L {path}"))
            .status
            .success()
    }

    /// Copies a host file into the root's /tmp.
    fn put(&self, host: &Path, name: &str) {
        let o = Command::new("nsenter")
            .args(["-t", &self.holder.id().to_string(), "-m", "--", "cp"])
            .arg(host)
            .arg(self.root().join("tmp").join(name))
            .output()
            .expect("spawn nsenter");
        assert!(
            o.status.success(),
            "copying {}: {}",
            host.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// What a path of the host is (device, inode, size), to check it is the
/// same after the test.
fn host_state(paths: &[&str]) -> Vec<Option<(u64, u64, u64)>> {
    paths
        .iter()
        .map(|p| {
            std::fs::symlink_metadata(p)
                .ok()
                .map(|m| (m.dev(), m.ino(), m.size()))
        })
        .collect()
}

fn build_deb(out: &Path) -> PathBuf {
    let o = Command::new(repo().join("packaging/build-deb.sh"))
        .args(["--binary", BIN, "--out"])
        .arg(out)
        .arg("--fast")
        .output()
        .expect("spawn build-deb.sh");
    assert!(
        o.status.success(),
        "build-deb.sh: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let path = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with(&format!("muslin_{}_", env!("CARGO_PKG_VERSION")))
            && name.ends_with(".deb"),
        "{name}"
    );
    path
}

const UNIT: &str = "/usr/lib/systemd/system/muslin-agent.service";
const WANTS: &str = "/etc/systemd/system/multi-user.target.wants/muslin-agent.service";

/// The whole life of the package: install, what it put where, the unit
/// verified by systemd, reinstall (the secret and an edited conffile kept),
/// remove (the conffile kept), purge (everything gone).
fn package_life(r: &Throwaway) {
    // Install.
    r.ok("dpkg -i /tmp/muslin.deb");
    let v = r.ok("muslin --version");
    assert_eq!(v.trim(), format!("muslin {}", env!("CARGO_PKG_VERSION")));
    assert_eq!(r.ok("command -v muslin").trim(), "/usr/bin/muslin");
    for link in ["/opt/cni/bin/muslin", "/usr/lib/cni/muslin"] {
        assert_eq!(
            r.ok(&format!("readlink -f {link}")).trim(),
            "/usr/bin/muslin"
        );
        // Through the link, the binary is the CNI plugin.
        let out = r.ok(&format!("CNI_COMMAND=VERSION {link} </dev/null"));
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert!(v["supportedVersions"].as_array().is_some(), "{out}");
    }
    assert_eq!(
        r.ok("stat -c '%a %U %G' /etc/muslin/secret").trim(),
        "600 root root"
    );
    assert_eq!(r.ok("base64 -d /etc/muslin/secret | wc -c").trim(), "32");
    let secret = r.ok("cat /etc/muslin/secret");
    assert!(
        r.ok("dpkg-query -W -f='${Conffiles}' muslin")
            .contains("/etc/muslin/agent.toml"),
        "agent.toml is a conffile"
    );
    assert_eq!(
        r.ok("cat /etc/muslin/agent.toml"),
        read("packaging/agent.toml")
    );
    assert!(r.exists(UNIT));
    assert!(r.exists("/usr/lib/tmpfiles.d/muslin.conf"));
    // Not enabled, not started: the host needs the cluster's secret and a join.
    assert!(!r.exists(WANTS));
    // What the sandboxed unit writes outside its own directories.
    assert!(r.exists("/run/wireguard") && r.exists("/run/xtables.lock"));

    // systemd's own check of the unit as installed (no running systemd needed).
    let o = r.sh(&format!("systemd-analyze verify --man=no {UNIT}"));
    let complaints = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        o.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify: {}\n{complaints}",
        o.status
    );
    let o = r.sh(&format!("systemd-analyze security --offline=yes {UNIT}"));
    eprintln!(
        "{}",
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .unwrap_or_default()
    );

    // Reinstall (an upgrade to the same version): the secret stays, and so
    // does the administrator's edit of the conffile, without a prompt.
    r.ok("echo 'join = [\"192.0.2.1\"]' >>/etc/muslin/agent.toml");
    r.ok("dpkg -i /tmp/muslin.deb");
    assert_eq!(r.ok("cat /etc/muslin/secret"), secret);
    assert!(r.ok("cat /etc/muslin/agent.toml").contains("192.0.2.1"));

    // The administrator enables the agent; purge must not leave the link.
    r.ok("systemctl enable muslin-agent.service");
    assert!(r.exists(WANTS));

    // Remove: the program and its links go, configuration stays.
    r.ok("mkdir -p /var/lib/muslin && touch /var/lib/muslin/leases.json");
    r.ok("dpkg -r muslin");
    for gone in [
        "/usr/bin/muslin",
        "/opt/cni/bin/muslin",
        "/usr/lib/cni/muslin",
        UNIT,
    ] {
        assert!(!r.exists(gone), "{gone} is left after dpkg -r");
    }
    assert!(r.ok("cat /etc/muslin/agent.toml").contains("192.0.2.1"));
    assert_eq!(r.ok("cat /etc/muslin/secret"), secret);

    // Purge: nothing of Muslin's is left.
    r.ok("dpkg -P muslin");
    for gone in [
        "/etc/muslin",
        "/var/lib/muslin",
        "/etc/systemd/system/muslin-agent.service",
        WANTS,
    ] {
        assert!(!r.exists(gone), "{gone} is left after dpkg -P");
    }
    let o = r.sh("dpkg-query -W -f='${Status}' muslin");
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("installed"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn deb_installs_upgrades_removes_and_purges_in_a_throwaway_root() {
    let watched = [
        "/usr/bin/muslin",
        "/opt/cni/bin/muslin",
        "/usr/lib/cni/muslin",
        "/etc/muslin",
        "/var/lib/muslin",
        UNIT,
    ];
    let before = host_state(&watched);
    let out = TempDir::new("deb");
    let deb = build_deb(&out.0);
    {
        let r = Throwaway::new();
        r.put(&deb, "muslin.deb");
        package_life(&r);
    }
    assert_eq!(
        host_state(&watched),
        before,
        "the host changed under {watched:?}"
    );
}

/// Every object of the manifest, as kubectl reads it (offline: `--local`
/// asks no server).
fn manifest_objects() -> Vec<Value> {
    let home = TempDir::new("kube");
    let kubeconfig = home.0.join("config");
    std::fs::write(&kubeconfig, "").unwrap();
    let manifest = repo().join("deploy/kubernetes/muslin.yaml");
    let o = Command::new("kubectl")
        .args(["annotate", "--local", "-o", "json", "-f"])
        .arg(&manifest)
        .arg("muslin.test/parsed=true")
        .env("KUBECONFIG", &kubeconfig)
        .env("HOME", &home.0)
        .output()
        .unwrap_or_else(|e| panic!("kubectl ({e}): scripts/install-deps.sh installs it"));
    assert!(
        o.status.success(),
        "kubectl: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut objects = Vec::new();
    for v in serde_json::Deserializer::from_slice(&o.stdout).into_iter::<Value>() {
        let v = v.expect("kubectl prints JSON");
        match v["kind"].as_str() {
            Some("List") => objects.extend(v["items"].as_array().unwrap().iter().cloned()),
            _ => objects.push(v),
        }
    }
    objects
}

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .and_then(|l| l.iter().find(|i| i["name"] == name))
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

/// The volume mounted at `path` in `container`, from the pod's volumes.
fn volume_at<'a>(pod: &'a Value, container: &Value, path: &str) -> &'a Value {
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == path)
        .unwrap_or_else(|| panic!("{} mounts nothing at {path}", container["name"]));
    named(&pod["volumes"], mount["name"].as_str().unwrap())
}

#[test]
fn kubernetes_manifest_runs_a_privileged_agent_on_every_node() {
    let objects = manifest_objects();
    let kinds: Vec<&str> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["Namespace", "Secret", "ConfigMap", "DaemonSet"]);
    for o in &objects[1..] {
        assert_eq!(o["metadata"]["namespace"], "muslin-system", "{}", o["kind"]);
    }
    let (secret, config, ds) = (&objects[1], &objects[2], &objects[3]);

    let spec = &ds["spec"];
    let labels = &spec["template"]["metadata"]["labels"];
    for (k, v) in spec["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&labels[k], v, "the selector matches the pods");
    }
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert!(
        pod["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none()),
        "tolerates every taint"
    );
    let image = format!("muslin:{}", env!("CARGO_PKG_VERSION"));

    // The agent: privileged, named after the node, with the host's paths.
    let agent = named(&pod["containers"], "agent");
    assert_eq!(agent["image"], image.as_str());
    assert_eq!(agent["securityContext"]["privileged"], true);
    let args: Vec<&str> = agent["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let at = args
        .iter()
        .position(|a| *a == "--node-name")
        .expect("--node-name");
    assert_eq!(args[at + 1], "$(NODE_NAME)");
    assert_eq!(
        named(&agent["env"], "NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    let at = args
        .iter()
        .position(|a| *a == "--config")
        .expect("--config");
    assert_eq!(args[at + 1], "/etc/muslin/agent.toml");
    for (path, host) in [
        ("/run/muslin", "/run/muslin"),
        ("/var/lib/muslin", "/var/lib/muslin"),
        ("/run/netns", "/run/netns"),
        ("/lib/modules", "/lib/modules"),
        ("/run/xtables.lock", "/run/xtables.lock"),
    ] {
        assert_eq!(volume_at(pod, agent, path)["hostPath"]["path"], host);
    }
    let mounts = agent["volumeMounts"].as_array().unwrap();
    let netns = mounts
        .iter()
        .find(|m| m["mountPath"] == "/run/netns")
        .unwrap();
    assert_eq!(netns["mountPropagation"], "HostToContainer");

    // /etc/muslin: agent.toml from the ConfigMap, the secret from the Secret.
    let etc = volume_at(pod, agent, "/etc/muslin");
    let sources = etc["projected"]["sources"].as_array().expect("projected");
    let path_of = |kind: &str, key: &str| -> String {
        let s = sources.iter().find(|s| s.get(kind).is_some()).unwrap();
        let item = s[kind]["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["key"] == key)
            .unwrap();
        format!("/etc/muslin/{}", item["path"].as_str().unwrap())
    };
    assert_eq!(path_of("configMap", "agent.toml"), "/etc/muslin/agent.toml");
    let toml = config["data"]["agent.toml"].as_str().unwrap();
    let c = parse(toml);
    assert_eq!(
        c.cluster_secret_file.as_deref(),
        Some(Path::new(&path_of("secret", "secret")))
    );
    // Unedited, the agent refuses the placeholders: no island clusters, no
    // cluster on a secret everyone knows.
    let e = c.validate().expect_err("the join placeholder is refused");
    assert_eq!(e.field, "join");
    let joined = parse(&toml.replace("REPLACE-WITH-JOIN-ADDRESS", "192.0.2.1"));
    joined.validate().unwrap_or_else(|e| panic!("{e}"));
    let placeholder = secret["stringData"]["secret"].as_str().unwrap();
    assert!(placeholder.len() < 16, "a placeholder the agent refuses");

    // The init container installs the plugin and the network configuration
    // into the node's directories.
    let init = named(&pod["initContainers"], "install-cni");
    assert_eq!(init["image"], image.as_str());
    let script = init["command"].to_string();
    assert!(script.contains("/host/opt/cni/bin/muslin"), "{script}");
    assert!(
        script.contains("/host/etc/cni/net.d/10-muslin.conflist"),
        "{script}"
    );
    assert_eq!(
        volume_at(pod, init, "/host/opt/cni/bin")["hostPath"]["path"],
        "/opt/cni/bin"
    );
    assert_eq!(
        volume_at(pod, init, "/host/etc/cni/net.d")["hostPath"]["path"],
        "/etc/cni/net.d"
    );
    let conflist: Value =
        serde_json::from_str(config["data"]["10-muslin.conflist"].as_str().unwrap())
            .expect("the conflist is JSON");
    assert_eq!(conflist["plugins"][0]["type"], "muslin");
    // containerd 1.6/1.7 and CRI-O's libcni 1.1 refuse a 1.1.0 result, and
    // portmap before 1.5 a 1.1.0 configuration.
    assert_eq!(conflist["cniVersion"], "1.0.0");
}
