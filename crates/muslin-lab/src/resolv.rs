//! A container's resolv.conf, as a runtime writes it from the CNI result's
//! `dns`: `ip netns exec NS` bind-mounts `/etc/netns/NS/resolv.conf` over
//! `/etc/resolv.conf`, so a program run in a lab container resolves names
//! as it would in a real one. Every file the lab writes starts with a line
//! naming the lab and the container; only such files are ever removed, so
//! an `/etc/netns` entry that is not the lab's is never touched.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use muslin_model::cni::Dns;

use crate::LabError;

/// Where `ip netns exec` looks for a namespace's files.
pub const ETC_NETNS: &str = "/etc/netns";

pub fn dir(ns: &str) -> PathBuf {
    Path::new(ETC_NETNS).join(ns)
}

fn marker(lab: &str) -> String {
    format!("# muslin lab {lab}: ")
}

/// The file for `who` (`h1/c1`) of `lab`: nameserver, search and options
/// lines from the result's `dns`; `None` when it names no nameserver (the
/// agent serves no names), and the container keeps the host's resolver.
pub fn text(lab: &str, who: &str, dns: &Dns) -> Option<String> {
    if dns.nameservers.is_empty() {
        return None;
    }
    let mut out = format!(
        "{}{who}, from its CNI result; removed with the container\n",
        marker(lab)
    );
    for n in &dns.nameservers {
        out.push_str(&format!("nameserver {n}\n"));
    }
    if let Some(d) = &dns.domain {
        out.push_str(&format!("domain {d}\n"));
    }
    if !dns.search.is_empty() {
        out.push_str(&format!("search {}\n", dns.search.join(" ")));
    }
    if !dns.options.is_empty() {
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Some(out)
}

/// Whether the file at `path` is one `lab` wrote.
fn ours(path: &Path, lab: &str) -> bool {
    fs::read_to_string(path).is_ok_and(|t| t.starts_with(&marker(lab)))
}

/// Writes `text` as namespace `ns`'s resolv.conf. A resolv.conf there
/// that the lab did not write is left alone, and the attachment fails.
pub fn write(lab: &str, ns: &str, text: &str) -> Result<(), LabError> {
    let d = dir(ns);
    let file = d.join("resolv.conf");
    if file.exists() && !ours(&file, lab) {
        return Err(LabError::Usage(format!(
            "{} exists and is not lab {lab}'s; remove it to run this container",
            file.display()
        )));
    }
    fs::create_dir_all(&d).map_err(LabError::io(format!("creating {}", d.display())))?;
    let tmp = d.join(".resolv.conf.tmp");
    fs::write(&tmp, text).map_err(LabError::io(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, &file).map_err(LabError::io(format!("writing {}", file.display())))
}

/// Removes what the lab wrote for `ns`: its resolv.conf, and the directory
/// when nothing else is in it. Idempotent.
pub fn remove(lab: &str, ns: &str) -> Result<(), LabError> {
    let d = dir(ns);
    let file = d.join("resolv.conf");
    if !ours(&file, lab) {
        return Ok(());
    }
    let gone = |r: std::io::Result<()>| match r {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    };
    let _ = fs::remove_file(d.join(".resolv.conf.tmp"));
    gone(fs::remove_file(&file)).map_err(LabError::io(format!("removing {}", file.display())))?;
    // Only an empty directory goes: anything else in it is someone else's.
    match fs::remove_dir(&d) {
        Err(e) if e.kind() != ErrorKind::NotFound && e.kind() != ErrorKind::DirectoryNotEmpty => {
            Err(LabError::io(format!("removing {}", d.display()))(e))
        }
        _ => Ok(()),
    }
}

/// `/etc/netns` entries of `lab` (`LAB-...`, with a resolv.conf the lab
/// wrote) whose namespace is gone: what a lab that crashed, or whose
/// record was lost, left behind.
pub fn leftovers(lab: &str) -> Vec<String> {
    let prefix = format!("{lab}-");
    let mut v: Vec<String> = fs::read_dir(ETC_NETNS)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix))
        .filter(|n| !crate::sys::netns_exists(n))
        .filter(|n| ours(&dir(n).join("resolv.conf"), lab))
        .collect();
    v.sort();
    v
}

/// Removes every leftover of `lab`.
pub fn remove_leftovers(lab: &str) -> Result<(), LabError> {
    leftovers(lab).iter().try_for_each(|ns| remove(lab, ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_carries_the_results_dns_under_the_labs_marker() {
        let dns = Dns {
            nameservers: vec!["169.254.53.2".parse().unwrap()],
            domain: None,
            search: vec!["shop.muslin.internal".into(), "muslin.internal".into()],
            options: vec!["ndots:2".into()],
        };
        assert_eq!(
            text("demo", "h1/web", &dns).unwrap(),
            "# muslin lab demo: h1/web, from its CNI result; removed with the container\n\
             nameserver 169.254.53.2\n\
             search shop.muslin.internal muslin.internal\n\
             options ndots:2\n"
        );
        // No nameserver, no file: the container keeps the host's.
        assert_eq!(text("demo", "h1/web", &Dns::default()), None);
        // Another lab's marker is not this lab's, even a prefix of it.
        assert!(marker("demo").starts_with("# muslin lab demo: "));
        assert!(!marker("demo2").starts_with(&marker("demo")));
    }
}
