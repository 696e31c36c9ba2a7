//! Pitfall 7: a network manager that takes over our interfaces and
//! rewrites their addresses and routes under the agent (NetworkManager,
//! systemd-networkd). The agent reconciles drift, but a manager fighting it
//! flaps pod traffic; the fix is one configuration file, which the finding
//! prints.

mod glob;
mod ini;
mod networkd;
mod nm;

use super::{AgentView, Finding, HostFacts};

pub const CHECK: &str = "network-managers";

/// What NetworkManager needs to leave our interfaces alone.
pub const NM_SNIPPET_PATH: &str = "/etc/NetworkManager/conf.d/muslin.conf";
pub const NM_SNIPPET: &str = "[keyfile]\nunmanaged-devices=interface-name:msl*\n";
/// What systemd-networkd needs: a file that sorts before the others.
pub const NETWORKD_SNIPPET_PATH: &str = "/etc/systemd/network/00-muslin.network";
pub const NETWORKD_SNIPPET: &str = "[Match]\nName=msl*\n\n[Link]\nUnmanaged=yes\n";

/// One of our interfaces, as a manager's match sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    /// `vxlan`, `wireguard`, `veth`.
    pub kind: String,
}

impl Iface {
    pub fn new(name: &str, kind: &str) -> Iface {
        Iface {
            name: name.into(),
            kind: kind.into(),
        }
    }
}

/// Every kind of interface Muslin makes, whether or not it exists yet (a
/// manager grabs it the moment it appears), and those on the host now.
fn ours(host: &HostFacts) -> Vec<Iface> {
    let iface = Iface::new;
    let mut v = vec![
        iface(crate::dataplane::VXLAN_DEV, "vxlan"),
        iface(crate::encryption::WG_DEV, "wireguard"),
        iface(&crate::naming::host_ifname("example", "eth0"), "veth"),
    ];
    for l in &host.links {
        if l.name.starts_with(crate::IFACE_PREFIX) && !v.iter().any(|i| i.name == l.name) {
            v.push(iface(&l.name, l.kind.as_deref().unwrap_or("")));
        }
    }
    v
}

fn running(host: &HostFacts, comm: &str) -> bool {
    // The kernel keeps 15 bytes of a process name: `systemd-network`.
    let short = &comm[..comm.len().min(15)];
    host.processes.iter().any(|p| p == comm || p == short)
}

fn names(list: &[&Iface]) -> String {
    list.iter()
        .map(|i| i.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn check(host: &HostFacts, _agent: AgentView<'_>) -> Vec<Finding> {
    let ours = ours(host);
    let mut out = Vec::new();
    if running(host, "NetworkManager") {
        out.push(network_manager(host, &ours));
    }
    if running(host, "systemd-networkd") {
        out.push(systemd_networkd(host, &ours));
    }
    if out.is_empty() {
        out.push(Finding::ok(
            CHECK,
            "no NetworkManager or systemd-networkd running",
        ));
    }
    out
}

fn network_manager(host: &HostFacts, ours: &[Iface]) -> Finding {
    // NetworkManager's own udev rule marks every veth unmanaged, so only
    // our other devices need its configuration.
    let devices: Vec<Iface> = ours.iter().filter(|i| i.kind != "veth").cloned().collect();
    let (left, why) = nm::managed(&host.manager_files, &devices);
    if left.is_empty() {
        return Finding::ok(
            CHECK,
            format!(
                "NetworkManager runs; {} mark{} our interfaces unmanaged",
                why.join(", "),
                if why.len() == 1 { "s" } else { "" }
            ),
        );
    }
    Finding::problem(
        CHECK,
        format!(
            "NetworkManager runs and no configuration marks {} unmanaged: it may take them over and rewrite their addresses and routes",
            names(&left)
        ),
        format!(
            "write {NM_SNIPPET_PATH} with `{}` and run `nmcli general reload conf`",
            NM_SNIPPET.trim_end().replace('\n', "\\n")
        ),
    )
}

fn systemd_networkd(host: &HostFacts, ours: &[Iface]) -> Finding {
    let taken = networkd::managed(&host.manager_files, ours);
    if taken.is_empty() {
        return Finding::ok(
            CHECK,
            "systemd-networkd runs; none of its .network files matches our interfaces",
        );
    }
    let mut files: Vec<&str> = taken.iter().map(|(_, f)| *f).collect();
    files.dedup();
    let saw: Vec<String> = files
        .iter()
        .map(|f| {
            let of: Vec<&Iface> = taken
                .iter()
                .filter(|(_, g)| g == f)
                .map(|(i, _)| *i)
                .collect();
            format!("{f} matches {}", names(&of))
        })
        .collect();
    Finding::problem(
        CHECK,
        format!(
            "systemd-networkd runs and {}: it configures them and may rewrite their addresses and routes",
            saw.join("; ")
        ),
        format!(
            "write {NETWORKD_SNIPPET_PATH} with `{}` (it sorts first) and run `networkctl reload`",
            NETWORKD_SNIPPET.trim_end().replace('\n', "\\n")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::tests::host;
    use crate::doctor::Level;

    fn with(processes: &[&str], files: &[(&str, &str)]) -> HostFacts {
        let mut h = host();
        h.processes = processes.iter().map(|s| s.to_string()).collect();
        h.manager_files = files
            .iter()
            .map(|(p, t)| (p.to_string(), t.to_string()))
            .collect();
        h
    }

    #[test]
    fn no_manager_running_is_ok() {
        let f = check(&with(&["sshd", "muslin"], &[]), Err("down"));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].level, Level::Ok);
        assert!(f[0].saw.contains("no NetworkManager or systemd-networkd"));
    }

    #[test]
    fn network_manager_without_the_snippet_is_a_problem_printing_it() {
        let f = check(&with(&["NetworkManager"], &[]), Err("down"));
        assert_eq!(f[0].level, Level::Problem, "{f:?}");
        assert!(f[0].saw.contains("msl-vxlan, msl-wg0"), "{}", f[0].saw);
        assert!(f[0].fix.contains(NM_SNIPPET_PATH), "{}", f[0].fix);
        assert!(
            f[0].fix
                .contains("[keyfile]\\nunmanaged-devices=interface-name:msl*"),
            "{}",
            f[0].fix
        );
        let h = with(&["NetworkManager"], &[(NM_SNIPPET_PATH, NM_SNIPPET)]);
        let f = check(&h, Err("down"));
        assert_eq!(f[0].level, Level::Ok, "{f:?}");
        assert!(f[0].saw.contains(NM_SNIPPET_PATH), "{}", f[0].saw);
    }

    #[test]
    fn an_existing_interface_of_ours_must_be_covered_too() {
        let mut h = with(
            &["NetworkManager"],
            &[(
                NM_SNIPPET_PATH,
                "[keyfile]\nunmanaged-devices=interface-name:msl-vxlan;interface-name:msl-wg0\n",
            )],
        );
        assert_eq!(check(&h, Err("down"))[0].level, Level::Ok);
        h.links.push(crate::doctor::LinkFact {
            name: "msl-vx3".into(),
            kind: Some("vxlan".into()),
            ..Default::default()
        });
        let f = check(&h, Err("down"));
        assert_eq!(f[0].level, Level::Problem);
        assert!(f[0].saw.contains("msl-vx3"), "{}", f[0].saw);
    }

    #[test]
    fn networkd_matching_our_names_is_a_problem_naming_the_file() {
        let file = "/etc/systemd/network/99-all.network";
        // Its process name as the kernel truncates it.
        let h = with(
            &["systemd-network"],
            &[(file, "[Match]\nName=en* msl*\n[Network]\nDHCP=yes\n")],
        );
        let f = check(&h, Err("down"));
        assert_eq!(f[0].level, Level::Problem, "{f:?}");
        assert!(f[0].saw.contains(file), "{}", f[0].saw);
        assert!(f[0].fix.contains(NETWORKD_SNIPPET_PATH), "{}", f[0].fix);
        let h = with(
            &["systemd-networkd"],
            &[
                (file, "[Match]\nName=*\n"),
                (NETWORKD_SNIPPET_PATH, NETWORKD_SNIPPET),
            ],
        );
        assert_eq!(check(&h, Err("down"))[0].level, Level::Ok);
        let h = with(&["systemd-networkd"], &[(file, "[Match]\nName=en*\n")]);
        assert_eq!(check(&h, Err("down"))[0].level, Level::Ok);
    }

    #[test]
    fn both_running_give_one_finding_each() {
        let h = with(&["NetworkManager", "systemd-networkd"], &[]);
        let f = check(&h, Err("down"));
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].level, Level::Problem);
        assert_eq!(f[1].level, Level::Ok);
    }
}
