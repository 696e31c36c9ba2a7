//! CNI ADD and DEL as a runtime sees them (process start to exit), Muslin
//! against Debian's bridge + host-local in the same run, and attachments
//! per second with several runtimes at once.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::report::Report;
use crate::stats::Series;
use crate::sys::{enter, sh};
use crate::{fail, BenchError, Options, Plan};

const REF_PLUGINS: &str = "/usr/lib/cni";
const HOST: &str = "mbcni-host";
const BASE_HOST: &str = "mbcni-base";

fn invoke(plugin: &str, cmd: &str, id: &str, netns: &str, conf: &str) -> Result<Duration, String> {
    let t = Instant::now();
    let mut c = Command::new(plugin)
        .env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", REF_PLUGINS)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{plugin}: {e}"))?;
    c.stdin
        .take()
        .expect("piped")
        .write_all(conf.as_bytes())
        .map_err(|e| e.to_string())?;
    let o = c.wait_with_output().map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(format!(
            "{plugin} {cmd}: {}",
            String::from_utf8_lossy(&o.stdout)
        ));
    }
    Ok(t.elapsed())
}

/// Network namespaces made and removed in one `ip -batch` each: a
/// thousand `ip netns add` processes cost seconds.
pub(crate) struct Namespaces(pub Vec<String>);

impl Namespaces {
    fn new(prefix: &str, n: usize) -> Result<Self, String> {
        Self::named((0..n).map(|i| format!("{prefix}{i}")).collect())
    }

    pub fn named(names: Vec<String>) -> Result<Self, String> {
        let lines: String = names.iter().map(|n| format!("netns add {n}\n")).collect();
        let mut c = Command::new("ip")
            .args(["-batch", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        c.stdin
            .take()
            .expect("piped")
            .write_all(lines.as_bytes())
            .map_err(|e| e.to_string())?;
        c.wait().map_err(|e| e.to_string())?;
        Ok(Namespaces(names))
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        let lines: String = self.0.iter().map(|n| format!("netns del {n}\n")).collect();
        if let Ok(mut c) = Command::new("ip")
            .args(["-batch", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
        {
            let _ = c.stdin.take().expect("piped").write_all(lines.as_bytes());
            let _ = c.wait();
        }
    }
}

/// An agent of `bin` serving block `block` in namespace `ns`.
struct AgentIn {
    child: std::process::Child,
    ns: String,
}

impl AgentIn {
    fn start(
        bin: &std::path::Path,
        ns: &str,
        dir: &std::path::Path,
        block: &str,
    ) -> Result<AgentIn, String> {
        let _ = sh(&["ip", "netns", "del", ns]);
        sh(&["ip", "netns", "add", ns])?;
        sh(&["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"])?;
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let sock = dir.join("agent.sock");
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(bin)
            .args(["agent", "--block", block, "--log-level", "warn", "--socket"])
            .arg(&sock)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut a = AgentIn {
            child,
            ns: ns.to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            if Instant::now() > deadline {
                let _ = a.child.kill();
                return Err(format!("the agent {} did not start", bin.display()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(a)
    }
}

impl Drop for AgentIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = sh(&["ip", "netns", "del", &self.ns]);
    }
}

/// One plugin set: who, which binary, its network config, the namespace
/// a runtime would invoke it in.
struct Set {
    name: String,
    plugin: String,
    conf: String,
    ns: String,
}

/// Invokes ADD then DEL for `n` fresh containers, from a thread that
/// entered the set's host namespace (plugins inherit the caller's).
fn round(set: &Set, tag: &str, n: usize) -> Result<(Series, Series), String> {
    std::thread::scope(|sc| {
        sc.spawn(|| -> Result<(Series, Series), String> {
            enter(&set.ns)?;
            let ns = Namespaces::new(&format!("mbc{tag}x"), n)?;
            let (mut add, mut del) = (Series::default(), Series::default());
            for (j, name) in ns.0.iter().enumerate() {
                add.push(
                    invoke(
                        &set.plugin,
                        "ADD",
                        &format!("b{tag}{j}"),
                        &format!("/var/run/netns/{name}"),
                        &set.conf,
                    )?
                    .as_secs_f64()
                        * 1e3,
                );
            }
            for (j, name) in ns.0.iter().enumerate() {
                del.push(
                    invoke(
                        &set.plugin,
                        "DEL",
                        &format!("b{tag}{j}"),
                        &format!("/var/run/netns/{name}"),
                        &set.conf,
                    )?
                    .as_secs_f64()
                        * 1e3,
                );
            }
            Ok((add, del))
        })
        .join()
        .map_err(|_| "a CNI round panicked".to_string())?
    })
}

pub fn run(o: &Options, plan: &Plan, report: &mut Report) -> Result<(), BenchError> {
    let f = fail("control plane");
    let dir = std::env::temp_dir().join("muslin-bench-cni");
    let _ = std::fs::remove_dir_all(&dir);
    let n = plan.cni_attachments;
    let rounds = plan.cni_rounds;
    let conc = plan.concurrent_attachments;
    let agent = AgentIn::start(&o.bin, HOST, &dir.join("muslin"), "10.60.0.0/22").map_err(&f)?;
    let conf = |sock: std::path::PathBuf| {
        json!({"cniVersion": "1.0.0", "name": "bench", "type": "muslin", "socket": sock})
            .to_string()
    };
    let mut sets = vec![
        Set {
            name: "Muslin".into(),
            plugin: o.bin.display().to_string(),
            conf: conf(dir.join("muslin/agent.sock")),
            ns: HOST.into(),
        },
        Set {
            name: "bridge + host-local".into(),
            plugin: format!("{REF_PLUGINS}/bridge"),
            conf: json!({"cniVersion": "1.0.0", "name": "benchbr", "type": "bridge", "bridge": "mbbr0", "isGateway": true,
                "ipam": {"type": "host-local", "subnet": "10.61.0.0/22", "dataDir": dir.join("host-local")}})
            .to_string(),
            ns: HOST.into(),
        },
    ];
    // The previous build, measured in the same run and alternated with
    // this one, so a noisy machine shows as noise in both.
    let _baseline = match &o.baseline {
        Some(b) => {
            let a =
                AgentIn::start(b, BASE_HOST, &dir.join("baseline"), "10.62.0.0/22").map_err(&f)?;
            sets.push(Set {
                name: "Muslin baseline".into(),
                plugin: b.display().to_string(),
                conf: conf(dir.join("baseline/agent.sock")),
                ns: BASE_HOST.into(),
            });
            Some(a)
        }
        None => None,
    };
    let mut s: Vec<[Series; 4]> = sets.iter().map(|_| Default::default()).collect();
    for r in 0..rounds {
        for k in 0..sets.len() {
            // Rotate who goes first.
            let i = (k + r) % sets.len();
            let (add, del) = round(&sets[i], &i.to_string(), n).map_err(&f)?;
            s[i][0].push(add.median());
            s[i][1].push(add.pct(0.99));
            s[i][2].push(del.median());
            s[i][3].push(del.pct(0.99));
        }
    }
    // Eight runtimes at once, Muslin only: attachments per second.
    let mut rate = Series::default();
    let (plugin, mconf) = (sets[0].plugin.clone(), sets[0].conf.clone());
    std::thread::scope(|sc| -> Result<(), String> {
        sc.spawn(|| -> Result<(), String> {
            enter(HOST)?;
            let ns = Namespaces::new("mbcc", conc)?;
            let t = Instant::now();
            std::thread::scope(|sc| -> Result<(), String> {
                let hs: Vec<_> = (0..8)
                    .map(|w| {
                        let names: Vec<&String> = ns.0.iter().skip(w).step_by(8).collect();
                        let (plugin, conf) = (&plugin, &mconf);
                        sc.spawn(move || -> Result<(), String> {
                            enter(HOST)?;
                            for name in names {
                                invoke(
                                    plugin,
                                    "ADD",
                                    &format!("c{name}"),
                                    &format!("/var/run/netns/{name}"),
                                    conf,
                                )?;
                            }
                            Ok(())
                        })
                    })
                    .collect();
                hs.into_iter()
                    .try_for_each(|h| h.join().map_err(|_| "worker panicked".to_string())?)
            })?;
            rate.push(conc as f64 / t.elapsed().as_secs_f64());
            Ok(())
        })
        .join()
        .map_err(|_| "the concurrent stage panicked".to_string())?
    })
    .map_err(&f)?;
    drop(agent);
    for (i, set) in sets.iter().enumerate() {
        for (metric, v) in ["ADD p50", "ADD p99", "DEL p50", "DEL p99"]
            .iter()
            .zip(s[i].iter())
        {
            report.add("control plane", &set.name, metric, "ms", v, None);
        }
    }
    report.add(
        "control plane",
        "Muslin",
        "attachments per second, 8 runtimes at once",
        "1/s",
        &rate,
        None,
    );
    Ok(())
}
