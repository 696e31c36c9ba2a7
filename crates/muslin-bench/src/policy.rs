//! Policy costs: a data path with 100 policies over 1,000 endpoints (set
//! up here, measured by the data-plane stage beside the same path without
//! policy), how long a host takes to apply a policy selecting 10,000
//! addresses, and how fast a label change reaches every host of the scale
//! lab.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use muslin_lab::probe::{self, Proto};
use muslin_lab::registry;
use muslin_model::api::{Request, Response};
use muslin_model::cluster::EndpointRecord;
use muslin_model::policy::{parse_document, Format};
use muslin_plan::policy_nft;

use crate::report::Report;
use crate::stats::Series;
use crate::sys::{enter, sh};
use crate::{fail, BenchError, Plan};

/// Extra endpoints' namespaces are named so `cleanup` finds them.
pub fn extra_ns(lab: &str, host: &str, i: usize) -> String {
    format!("{lab}-{host}-x{i}-hand")
}

fn ask(lab: &str, host: &str, req: &Request) -> Result<Response, String> {
    match muslin_cni::call(&registry::socket(lab, host), req) {
        Ok(Response::Error(e)) => Err(e.msg),
        Ok(r) => Ok(r),
        Err(e) => Err(e.to_string()),
    }
}

/// One CNI ADD through the plugin, as a runtime makes it from the host's
/// namespace, for a container in namespace `ns` with `args` as the
/// configuration's `args`; returns the plugin's result.
pub fn cni_add(
    bin: &std::path::Path,
    lab: &str,
    host: &str,
    ns: &str,
    args: serde_json::Value,
) -> Result<serde_json::Value, String> {
    let conf = serde_json::json!({
        "cniVersion": "1.1.0", "name": "muslin", "type": "muslin",
        "socket": registry::socket(lab, host),
        "args": args
    });
    let mut child = Command::new("ip")
        .args(["netns", "exec", &format!("{lab}-{host}")])
        .arg(bin)
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", ns)
        .env("CNI_NETNS", format!("/var/run/netns/{ns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(conf.to_string().as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "ADD {ns}: {}",
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("ADD {ns}: the result: {e}"))
}

/// Attaches `n` endpoints on `host` of lab `lab` through the plugin, as a
/// runtime does, in groups `g0`..`g99` of label `group`.
pub fn populate(bin: &std::path::Path, lab: &str, host: &str, n: usize) -> Result<(), String> {
    for i in 0..n {
        let ns = extra_ns(lab, host, i);
        sh(&["ip", "netns", "add", &ns])?;
        let args = serde_json::json!({"cni": {"labels": [
            {"key": "group", "value": format!("g{}", i % 100)},
            {"key": "bench", "value": "peer"}
        ]}});
        cni_add(bin, lab, host, &ns, args)?;
    }
    Ok(())
}

/// `n` policies over the measured pair, half protecting the server's
/// ingress, half the client's egress; each also allows its own group of
/// the extra endpoints, so each has a peer set of its own.
pub fn policies(n: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        if i % 2 == 0 {
            out.push_str(&format!(
                "---\nname: in-{i}\npodSelector: {{matchLabels: {{bench: server}}}}\ningress:\n- from: [{{podSelector: {{matchLabels: {{group: g{i}}}}}}}, {{podSelector: {{matchLabels: {{bench: client}}}}}}]\n"
            ));
        } else {
            out.push_str(&format!(
                "---\nname: out-{i}\npodSelector: {{matchLabels: {{bench: client}}}}\npolicyTypes: [Egress]\negress:\n- to: [{{podSelector: {{matchLabels: {{group: g{i}}}}}}}, {{podSelector: {{matchLabels: {{bench: server}}}}}}]\n"
            ));
        }
    }
    out
}

/// Labels the measured pods, adds the extra endpoints and applies the
/// policies; returns once the client's host enforces them.
pub fn set_up(
    bin: &std::path::Path,
    lab: &str,
    hosts: &[&str],
    endpoints: usize,
    n: usize,
) -> Result<(), String> {
    for (host, c, role) in [(hosts[0], "c1", "client"), (hosts[1], "c1", "server")] {
        ask(
            lab,
            host,
            &Request::Label {
                target: format!("{lab}-{host}-{c}"),
                set: BTreeMap::from([("bench".to_string(), role.to_string())]),
                remove: vec![],
            },
        )?;
    }
    for host in hosts {
        populate(bin, lab, host, endpoints / hosts.len())?;
    }
    if n == 0 {
        return Ok(());
    }
    ask(
        lab,
        hosts[0],
        &Request::PolicyApply {
            text: policies(n),
            toml: false,
        },
    )?;
    let t = Instant::now();
    loop {
        let ready = hosts.iter().all(|h| {
            matches!(ask(lab, h, &Request::PolicyList), Ok(Response::Policies { policies })
                if policies.len() == n && policies.iter().all(|p| !p.protects_here.is_empty()
                    || p.key.starts_with(if *h == hosts[0] { "in-" } else { "out-" })))
        });
        if ready {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(30) {
            return Err("the policies were not in force within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A host's work when a policy selecting `peers` addresses arrives: the
/// compilation, and the nft transaction that loads it into an empty
/// table (in a throwaway namespace); then one endpoint more (a set
/// element). Milliseconds.
fn apply_cost(peers: usize) -> Result<(f64, f64), String> {
    let rec = |node: &str, i: usize, group: &str| EndpointRecord {
        network: "default".into(),
        addresses: vec![IpAddr::from([10, 200 + (i >> 16) as u8, (i >> 8) as u8, i as u8]).into()],
        container_id: format!("c{node}{i}"),
        ifname: "eth0".into(),
        node: node.into(),
        pod_namespace: None,
        pod_name: None,
        labels: BTreeMap::from([("bench".to_string(), group.to_string())]),
        ports: Default::default(),
        aliases: Vec::new(),
        name: None,
    };
    let mut eps: Vec<EndpointRecord> = (0..peers).map(|i| rec("other", i, "peer")).collect();
    eps.extend((0..10).map(|i| rec("me", 60_000 + i, "server")));
    let ps = parse_document(
        "name: wide\npodSelector: {matchLabels: {bench: server}}\ningress:\n- from: [{podSelector: {matchLabels: {bench: peer}}}]\n  ports: [{port: 80}, {protocol: UDP, port: 53}]\n",
        Format::Yaml,
    )
    .map_err(|e| e.to_string())?;
    let ns = "mbq-hand";
    let _ = sh(&["ip", "netns", "del", ns]);
    sh(&["ip", "netns", "add", ns])?;
    let result = (|| {
        let t = Instant::now();
        let refs: Vec<&EndpointRecord> = eps.iter().collect();
        let table = policy_nft::compile(&policy_nft::Inputs {
            me: "me",
            policies: &ps,
            endpoints: &refs,
            namespaces: &BTreeMap::new(),
        });
        let change = policy_nft::diff(&Default::default(), &table).ok_or("no change")?;
        nft(ns, &change.to_json())?;
        let load = t.elapsed().as_secs_f64() * 1e3;
        eps.push(rec("other", peers + 1, "peer"));
        let t = Instant::now();
        let refs: Vec<&EndpointRecord> = eps.iter().collect();
        let more = policy_nft::compile(&policy_nft::Inputs {
            me: "me",
            policies: &ps,
            endpoints: &refs,
            namespaces: &BTreeMap::new(),
        });
        let observed = policy_nft::PolicyObserved {
            exists: true,
            rules: table.tags(),
            sets: table.sets.clone(),
            counters: table.counters.iter().map(|c| (c.clone(), 0)).collect(),
        };
        let change = policy_nft::diff(&observed, &more).ok_or("no change")?;
        nft(ns, &change.to_json())?;
        Ok((load, t.elapsed().as_secs_f64() * 1e3))
    })();
    let _ = sh(&["ip", "netns", "del", ns]);
    result
}

fn nft(ns: &str, doc: &str) -> Result<(), String> {
    let mut c = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-j", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    c.stdin
        .take()
        .expect("piped")
        .write_all(doc.as_bytes())
        .map_err(|e| e.to_string())?;
    let o = c.wait_with_output().map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(format!("nft: {}", String::from_utf8_lossy(&o.stderr)));
    }
    Ok(())
}

/// The apply-cost figures.
pub fn run_apply(plan: &Plan, report: &mut Report) -> Result<(), BenchError> {
    let f = fail("policy");
    let (mut load, mut one) = (Series::default(), Series::default());
    for _ in 0..plan.rounds.max(3) {
        let (l, o) = apply_cost(10_000).map_err(&f)?;
        load.push(l);
        one.push(o);
    }
    report.add(
        "policy",
        "on one host",
        "apply a policy selecting 10,000 addresses (compile + nft)",
        "ms",
        &load,
        None,
    );
    report.add(
        "policy",
        "on one host",
        "one peer endpoint more (set element)",
        "ms",
        &one,
        None,
    );
    Ok(())
}

/// Label changes in the scale lab: the client (first host's `c1`) is
/// given the label a policy protecting one container on every other host
/// allows, then loses it; each time, until every host enforces it
/// (reached from the client / refused). Milliseconds, worst host per
/// change.
pub fn label_spread(
    lab: &str,
    names: &[String],
    rounds: usize,
) -> Result<(Series, Series), String> {
    let policy = "name: spread\npodSelector: {matchLabels: {bench: target}}\ningress:\n- from: [{podSelector: {matchLabels: {bench: client}}}]\n";
    let client = format!("{lab}-{}-c1", names[0]);
    let label = |host: &str, target: &str, set: Option<&str>| {
        ask(
            lab,
            host,
            &Request::Label {
                target: target.to_string(),
                set: set
                    .map(|v| BTreeMap::from([("bench".to_string(), v.to_string())]))
                    .unwrap_or_default(),
                remove: if set.is_none() {
                    vec!["bench".into()]
                } else {
                    vec![]
                },
            },
        )
    };
    let st = muslin_lab::ops::status(Some(lab)).map_err(|e| e.to_string())?;
    let mut targets: Vec<IpAddr> = Vec::new();
    for h in &names[1..] {
        let c = st
            .nodes
            .iter()
            .find(|n| &n.name == h)
            .and_then(|n| n.containers.first())
            .ok_or_else(|| format!("{h} has no container"))?;
        label(h, &format!("{lab}-{h}-{}", c.name), Some("target"))?;
        targets.push(c.address.ok_or("no address")?);
    }
    ask(
        lab,
        &names[0],
        &Request::PolicyApply {
            text: policy.into(),
            toml: false,
        },
    )?;
    // In force everywhere: the client is refused by every target.
    let every = |want: bool, limit: Duration| -> Option<Duration> {
        let t = Instant::now();
        let times: Vec<Option<Duration>> = std::thread::scope(|s| {
            let hs: Vec<_> = targets
                .iter()
                .map(|a| {
                    let client = client.clone();
                    s.spawn(move || {
                        enter(&client).ok()?;
                        while t.elapsed() < limit {
                            let ok = probe::check(
                                *a,
                                probe::DEFAULT_PORT,
                                Proto::Tcp,
                                Duration::from_millis(40),
                            )
                            .is_ok();
                            if ok == want {
                                return Some(t.elapsed());
                            }
                        }
                        None
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap_or(None)).collect()
        });
        times
            .into_iter()
            .try_fold(Duration::ZERO, |m, t| Some(m.max(t?)))
    };
    every(false, Duration::from_secs(20)).ok_or("the policy was not in force everywhere")?;
    let (mut gain, mut lose) = (Series::default(), Series::default());
    for _ in 0..rounds {
        label(&names[0], &client, Some("client"))?;
        let d = every(true, Duration::from_secs(10)).ok_or("the label change did not spread")?;
        gain.push(d.as_secs_f64() * 1e3);
        label(&names[0], &client, None)?;
        let d = every(false, Duration::from_secs(10)).ok_or("the label removal did not spread")?;
        lose.push(d.as_secs_f64() * 1e3);
    }
    Ok((gain, lose))
}
