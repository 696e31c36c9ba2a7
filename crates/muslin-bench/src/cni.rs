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

struct Namespaces(Vec<String>);

impl Namespaces {
    fn new(prefix: &str, n: usize) -> Result<Self, String> {
        let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
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

pub fn run(o: &Options, plan: &Plan, report: &mut Report) -> Result<(), BenchError> {
    let f = fail("control plane");
    let _ = sh(&["ip", "netns", "del", HOST]);
    sh(&["ip", "netns", "add", HOST]).map_err(&f)?;
    let bin = o.bin.clone();
    let dir = std::env::temp_dir().join("muslin-bench-cni");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| f(e.to_string()))?;
    let n = plan.cni_attachments;
    let rounds = plan.cni_rounds;
    let conc = plan.concurrent_attachments;
    // Plugins inherit the namespace of the thread that starts them, so all
    // of this stage runs on a thread that entered the host namespace.
    let out = std::thread::spawn(move || -> Result<Vec<(String, Series)>, String> {
        enter(HOST)?;
        sh(&["ip", "link", "set", "lo", "up"])?;
        let sock = dir.join("agent.sock");
        let mut agent = Command::new(&bin)
            .args(["agent", "--block", "10.60.0.0/22", "--log-level", "warn", "--socket"])
            .arg(&sock)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            if Instant::now() > deadline {
                let _ = agent.kill();
                return Err("the agent did not start".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let muslin = json!({"cniVersion": "1.0.0", "name": "bench", "type": "muslin", "socket": sock}).to_string();
        let bridge = json!({"cniVersion": "1.0.0", "name": "benchbr", "type": "bridge", "bridge": "mbbr0", "isGateway": true,
            "ipam": {"type": "host-local", "subnet": "10.61.0.0/22", "dataDir": dir.join("host-local")}})
        .to_string();
        let bridge_bin = format!("{REF_PLUGINS}/bridge");
        let bin_s = bin.display().to_string();
        let sets = [("Muslin", bin_s.as_str(), muslin.as_str()), ("bridge + host-local", bridge_bin.as_str(), bridge.as_str())];
        let mut results: Vec<(String, Series)> = vec![];
        let mut s: Vec<[Series; 4]> = vec![Default::default(), Default::default()];
        let mut run = || -> Result<(), String> {
            for round in 0..rounds {
                for k in 0..2 {
                    // Alternate who goes first.
                    let i = (k + round) % 2;
                    let (_, plugin, conf) = sets[i];
                    let ns = Namespaces::new(&format!("mbc{i}x"), n)?;
                    let (mut add, mut del) = (Series::default(), Series::default());
                    for (j, name) in ns.0.iter().enumerate() {
                        add.push(invoke(plugin, "ADD", &format!("b{i}{j}"), &format!("/var/run/netns/{name}"), conf)?.as_secs_f64() * 1e3);
                    }
                    for (j, name) in ns.0.iter().enumerate() {
                        del.push(invoke(plugin, "DEL", &format!("b{i}{j}"), &format!("/var/run/netns/{name}"), conf)?.as_secs_f64() * 1e3);
                    }
                    s[i][0].push(add.median());
                    s[i][1].push(add.pct(0.99));
                    s[i][2].push(del.median());
                    s[i][3].push(del.pct(0.99));
                }
            }
            Ok(())
        };
        let r = run();
        // Eight runtimes at once, Muslin only: attachments per second.
        let mut rate = Series::default();
        let conc_result = r.and_then(|_| {
            let ns = Namespaces::new("mbcc", conc)?;
            let t = Instant::now();
            std::thread::scope(|sc| -> Result<(), String> {
                let hs: Vec<_> = (0..8)
                    .map(|w| {
                        let names: Vec<&String> = ns.0.iter().skip(w).step_by(8).collect();
                        let (plugin, conf) = (sets[0].1, sets[0].2);
                        sc.spawn(move || -> Result<(), String> {
                            enter(HOST)?;
                            for name in names {
                                invoke(plugin, "ADD", &format!("c{name}"), &format!("/var/run/netns/{name}"), conf)?;
                            }
                            Ok(())
                        })
                    })
                    .collect();
                hs.into_iter().try_for_each(|h| h.join().map_err(|_| "worker panicked".to_string())?)
            })?;
            rate.push(conc as f64 / t.elapsed().as_secs_f64());
            Ok(())
        });
        let _ = agent.kill();
        let _ = agent.wait();
        conc_result?;
        for (i, (name, _, _)) in sets.iter().enumerate() {
            for (metric, v) in ["ADD p50", "ADD p99", "DEL p50", "DEL p99"].iter().zip(s[i].iter()) {
                results.push((format!("{name}|{metric}"), v.clone()));
            }
        }
        results.push(("Muslin|attachments per second, 8 runtimes at once".into(), rate));
        Ok(results)
    })
    .join()
    .map_err(|_| f("the CNI stage panicked".into()))?;
    let _ = sh(&["ip", "netns", "del", HOST]);
    for (key, v) in out.map_err(&f)? {
        let (scenario, metric) = key.split_once('|').expect("scenario|metric");
        let unit = if metric.starts_with("attachments") {
            "1/s"
        } else {
            "ms"
        };
        report.add("control plane", scenario, metric, unit, &v, None);
    }
    Ok(())
}
