//! The executor's read-only side, for `muslin doctor`: reads what the
//! checks judge (`muslin_model::doctor::HostFacts`): links, addresses,
//! routes, sysctls, firewalls, processes and network managers' files. It
//! changes nothing on the host. Each fact that cannot be read is left
//! empty, and the check that needs it says so. `ip -j` is read rather than
//! netlink so the facts are exactly what an operator sees when they look
//! for themselves.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use ipnet::IpNet;
use muslin_model::doctor::{
    interface_sysctls, HostFacts, KernelFeatures, LinkFact, RouteFact, RouteGet, SYSCTLS,
};
use serde_json::Value;

/// Everything, with the kernel's route to each of `peers`.
pub fn gather(peers: &[IpAddr]) -> HostFacts {
    let links = links();
    let mut sysctls = BTreeMap::new();
    let per_if = links.iter().flat_map(|l| interface_sysctls(&l.name));
    for key in SYSCTLS.iter().map(|s| s.to_string()).chain(per_if) {
        if let Some(v) = read_sysctl(&key) {
            sysctls.insert(key, v);
        }
    }
    let wide: Vec<&str> = SYSCTLS
        .iter()
        .copied()
        .filter(|k| is_kernel_wide(k) && !sysctls.contains_key(*k))
        .collect();
    sysctls.extend(read_in_initial_namespace(&wide));
    let (firewall, firewall_error) = match crate::executor::firewall::observe_now() {
        Ok(o) => (Some(o), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let features = KernelFeatures {
        vxlan: kernel_has("vxlan", &links),
        wireguard: kernel_has("wireguard", &links),
        nftables: Some(module("nf_tables") == Some(true) || firewall.is_some()),
    };
    HostFacts {
        kernel_release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        sysctls,
        addresses: addresses(),
        routes: routes(),
        route_to: peers
            .iter()
            .filter_map(|p| Some((*p, route_get(*p)?)))
            .collect(),
        // gc_thresh of IPv4 limits ARP entries only.
        neighbours: ip_json(&["-4", "neigh", "show"])
            .and_then(|v| v.as_array().map(|a| a.len() as u64))
            .unwrap_or(0),
        links,
        firewall,
        firewall_error,
        processes: processes(),
        manager_files: manager_files(),
        features,
    }
}

fn ip_json(args: &[&str]) -> Option<Value> {
    let o = Command::new("ip").arg("-j").args(args).output().ok()?;
    if !o.status.success() {
        return None;
    }
    serde_json::from_slice(&o.stdout).ok()
}

fn links() -> Vec<LinkFact> {
    let Some(Value::Array(all)) = ip_json(&["-d", "link", "show"]) else {
        return Vec::new();
    };
    all.iter()
        .filter_map(|l| {
            let name = l["ifname"].as_str()?.to_string();
            let kind = l["linkinfo"]["info_kind"].as_str().map(str::to_string);
            let tx_checksum = (kind.as_deref() == Some("vxlan")
                && name.starts_with(muslin_model::IFACE_PREFIX))
            .then(|| crate::ethtool::tx_checksum(&name).ok())
            .flatten();
            Some(LinkFact {
                up: l["flags"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x == "UP")),
                mtu: l["mtu"].as_u64().unwrap_or(0) as u32,
                name,
                kind,
                tx_checksum,
            })
        })
        .collect()
}

fn addresses() -> Vec<(String, IpNet)> {
    let Some(Value::Array(all)) = ip_json(&["addr", "show"]) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for l in &all {
        let Some(name) = l["ifname"].as_str() else {
            continue;
        };
        for a in l["addr_info"].as_array().into_iter().flatten() {
            let net = a["local"]
                .as_str()
                .and_then(|ip| ip.parse::<IpAddr>().ok())
                .and_then(|ip| IpNet::new(ip, a["prefixlen"].as_u64()? as u8).ok());
            if let Some(n) = net {
                out.push((name.to_string(), n));
            }
        }
    }
    out
}

fn routes() -> Vec<RouteFact> {
    let mut out = Vec::new();
    for family in ["-4", "-6"] {
        let Some(Value::Array(all)) = ip_json(&[family, "route", "show", "table", "all"]) else {
            continue;
        };
        out.extend(all.iter().filter_map(|r| route_fact(r, family == "-6")));
    }
    out
}

/// One route of `ip -j route show table all`.
pub fn route_fact(r: &Value, v6: bool) -> Option<RouteFact> {
    let dst = match r["dst"].as_str()? {
        "default" if v6 => "::/0".parse().ok()?,
        "default" => "0.0.0.0/0".parse().ok()?,
        d if d.contains('/') => d.parse().ok()?,
        d => IpNet::from(d.parse::<IpAddr>().ok()?),
    };
    let mtu = route_mtu(r);
    Some(RouteFact {
        dst,
        dev: r["dev"].as_str().map(str::to_string),
        gateway: r["gateway"].as_str().and_then(|g| g.parse().ok()),
        protocol: protocol_number(&r["protocol"]),
        table: match &r["table"] {
            Value::Null => 254,
            Value::String(t) => match t.as_str() {
                "main" => 254,
                "local" => 255,
                "default" => 253,
                n => n.parse().unwrap_or(0),
            },
            Value::Number(n) => n.as_u64().unwrap_or(0) as u32,
            _ => 0,
        },
        kind: r["type"].as_str().unwrap_or("unicast").to_string(),
        mtu,
    })
}

/// A route's MTU metric: `{"mtu": N}` in `metrics`, or `{"mtu": {"value":
/// N, ...}}` in versions that print its lock. (iproute2 6.1's JSON drops
/// the lock, so whether it is locked is not read.)
fn route_mtu(r: &Value) -> Option<u32> {
    r["metrics"]
        .as_array()?
        .iter()
        .find_map(|m| match &m["mtu"] {
            Value::Number(n) => n.as_u64().map(|v| v as u32),
            Value::Object(o) => o.get("value").and_then(Value::as_u64).map(|v| v as u32),
            _ => None,
        })
}

fn protocol_number(p: &Value) -> u8 {
    match p {
        Value::Number(n) => n.as_u64().unwrap_or(0) as u8,
        Value::String(s) => match s.as_str() {
            "redirect" => 1,
            "kernel" => 2,
            "boot" => 3,
            "static" => 4,
            "dhcp" => 16,
            "bird" => 12,
            "zebra" => 11,
            "ra" => 9,
            s => s.parse().unwrap_or(0),
        },
        _ => 0,
    }
}

fn route_get(peer: IpAddr) -> Option<RouteGet> {
    let v = ip_json(&["route", "get", &peer.to_string()])?;
    let r = v.as_array()?.first()?;
    Some(RouteGet {
        dev: r["dev"].as_str()?.to_string(),
        src: r["prefsrc"].as_str().and_then(|s| s.parse().ok()),
        gateway: r["gateway"].as_str().and_then(|s| s.parse().ok()),
        mtu: route_mtu(r),
    })
}

/// `key` as `sysctl` names it: dots separate the path's parts, and a `/`
/// inside a part stands for a dot (`net.ipv4.conf.eth0/100.rp_filter`).
fn read_sysctl(key: &str) -> Option<String> {
    let parts: Vec<String> = key.split('.').map(|p| p.replace('/', ".")).collect();
    let path = format!("/proc/sys/{}", parts.join("/"));
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Sysctls whose limit is one for the whole kernel, shown only in the
/// initial network namespace.
fn is_kernel_wide(key: &str) -> bool {
    key.starts_with("net.ipv4.neigh.default.gc_thresh") || key == "net.netfilter.nf_conntrack_max"
}

/// Reads `keys` from the initial network namespace, on a thread of its
/// own that enters it, so this process stays where it is. That namespace
/// is PID 1's; where PID 1 is out of reach (a container), it is the first
/// namespace of a running process in which the keys are visible.
fn read_in_initial_namespace(keys: &[&str]) -> BTreeMap<String, String> {
    if keys.is_empty() {
        return BTreeMap::new();
    }
    let keys: Vec<String> = keys.iter().map(|s| s.to_string()).collect();
    std::thread::spawn(move || {
        let mut seen = std::collections::BTreeSet::new();
        for ns in namespaces_of_processes() {
            let Ok(f) = std::fs::File::open(&ns) else {
                continue;
            };
            let inode = std::os::unix::fs::MetadataExt::ino(&f.metadata().ok()?);
            if !seen.insert(inode) {
                continue;
            }
            if nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
                continue;
            }
            // /proc/sys/net shows the namespace of the task that opens it:
            // this thread's, now that one.
            let read: BTreeMap<String, String> = keys
                .iter()
                .filter_map(|k| Some((k.clone(), read_sysctl(k)?)))
                .collect();
            if !read.is_empty() {
                return Some(read);
            }
        }
        None
    })
    .join()
    .ok()
    .flatten()
    .unwrap_or_default()
}

/// `/proc/PID/ns/net` of PID 1 first, then of every other process.
fn namespaces_of_processes() -> impl Iterator<Item = std::path::PathBuf> {
    let others = process_dirs().map(|d| d.join("ns/net"));
    std::iter::once(std::path::PathBuf::from("/proc/1/ns/net")).chain(others)
}

/// Whether the kernel has `kind` (a link kind of the same name as its
/// module): a link of that kind exists, or the module does.
fn kernel_has(kind: &str, links: &[LinkFact]) -> Option<bool> {
    if links.iter().any(|l| l.kind.as_deref() == Some(kind)) {
        return Some(true);
    }
    module(kind)
}

/// Loaded, built in, or installed to be loaded on first use; `None` when
/// the kernel's module lists cannot be read (inside a container). Never
/// loads anything itself.
fn module(name: &str) -> Option<bool> {
    if Path::new("/sys/module").join(name).exists() {
        return Some(true);
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let dir = Path::new("/lib/modules").join(release.trim());
    let file = format!("/{name}.ko");
    let mut readable = false;
    for list in ["modules.dep", "modules.builtin"] {
        let Ok(t) = std::fs::read_to_string(dir.join(list)) else {
            continue;
        };
        readable = true;
        let listed = t
            .lines()
            .filter_map(|l| l.split(':').next())
            .any(|m| m.ends_with(&file) || m.contains(&format!("{file}.")));
        if listed {
            return Some(true);
        }
    }
    readable.then_some(false)
}

/// `/proc/PID` of every process.
fn process_dirs() -> impl Iterator<Item = std::path::PathBuf> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .map(|e| e.path())
}

fn processes() -> Vec<String> {
    let mut names: Vec<String> = process_dirs()
        .filter_map(|d| std::fs::read_to_string(d.join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Where NetworkManager and systemd-networkd read their configuration.
const MANAGER_DIRS: &[(&str, &str)] = &[
    ("/etc/NetworkManager", "NetworkManager.conf"),
    ("/etc/NetworkManager/conf.d", ".conf"),
    ("/run/NetworkManager/conf.d", ".conf"),
    ("/usr/lib/NetworkManager/conf.d", ".conf"),
    ("/etc/systemd/network", ".network"),
    ("/run/systemd/network", ".network"),
    ("/usr/lib/systemd/network", ".network"),
];

/// Files larger than this are not configuration a check needs.
const MAX_FILE: u64 = 1 << 20;

fn manager_files() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (dir, suffix) in MANAGER_DIRS {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<_> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(suffix))
            .filter(|p| {
                p.metadata()
                    .is_ok_and(|m| m.is_file() && m.len() < MAX_FILE)
            })
            .collect();
        files.sort();
        for p in files {
            if let Ok(text) = std::fs::read_to_string(&p) {
                out.push((p.to_string_lossy().into_owned(), text));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_read_as_ip_prints_them() {
        let v: Value = serde_json::from_str(
            r#"[{"dst":"default","gateway":"10.0.2.2","dev":"eth0","flags":[]},
                {"dst":"10.244.1.0/24","gateway":"192.168.56.12","dev":"msl-vxlan","protocol":"77","metrics":[{"mtu":{"lock":true,"value":1350}}],"flags":["onlink"]},
                {"type":"local","dst":"192.168.56.11","dev":"eth1","table":"local","protocol":"kernel","scope":"host","prefsrc":"192.168.56.11","flags":[]},
                {"dst":"10.9.0.0/16","dev":"eth1","protocol":"static","metrics":[{"mtu":1400}],"flags":[]}]"#,
        )
        .unwrap();
        let r: Vec<RouteFact> = v
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| route_fact(r, false))
            .collect();
        assert_eq!(r.len(), 4);
        assert_eq!(r[0].dst.to_string(), "0.0.0.0/0");
        assert_eq!(r[0].table, 254);
        assert_eq!((r[1].protocol, r[1].mtu), (77, Some(1350)));
        assert_eq!((r[2].table, r[2].kind.as_str()), (255, "local"));
        assert_eq!(r[2].dst.to_string(), "192.168.56.11/32");
        assert_eq!((r[3].protocol, r[3].mtu), (4, Some(1400)));
    }
}
