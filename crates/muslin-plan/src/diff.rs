//! The minimal set of changes that turns what a namespace has into what it
//! should have, touching only what Muslin owns there.

use std::collections::BTreeSet;

use ipnet::IpNet;

use crate::change::Change;
use crate::object::{HostState, Link, LinkKind, Route};

/// What of a namespace belongs to the state being converged; everything
/// else is someone else's and is never changed.
#[derive(Debug, Clone)]
pub struct Ownership {
    /// Routes with this protocol number in these tables are ours...
    pub protocol: u8,
    pub tables: Vec<u32>,
    /// ...unless they lead to a device this says belongs to another owner
    /// (pod veths belong to their attachments).
    pub foreign_dev: fn(&str) -> bool,
    /// Rules with one of these priorities and a table in its range are
    /// ours.
    pub rules: Vec<(u32, std::ops::RangeInclusive<u32>)>,
    /// Table whose routes of other protocols Muslin never replaces.
    pub main_table: u32,
    /// Whether anything of ours that is not desired may be removed. A view
    /// that may be incomplete (right after a restart) must not remove
    /// routes that are still wanted.
    pub allow_deletes: bool,
}

/// The changes, and why wanted objects were left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    pub changes: Vec<Change>,
    pub skipped: Vec<String>,
}

fn link_local(n: &IpNet) -> bool {
    matches!(n.addr(), std::net::IpAddr::V6(v) if (v.segments()[0] & 0xffc0) == 0xfe80)
}

/// Whether an existing link can be brought to `want` without recreating it.
fn reusable(have: &Link, want: &Link) -> bool {
    match (&want.kind, &have.kind) {
        (LinkKind::Vxlan(w), LinkKind::Vxlan(h)) => w.satisfied_by(h),
        (LinkKind::Veth(_), LinkKind::Veth(_)) => true,
        (LinkKind::Other(w), LinkKind::Other(h)) => w.is_none() || w == h,
        _ => false,
    }
}

/// Changes that make `observed` match `desired` within `own`. Desired
/// links are wholly ours: their addresses, neighbours and FDB entries are
/// converged; a link whose fixed parameters differ is recreated (and what
/// hung on it is re-added). Adds come before deletions, so traffic moves
/// to a new route before the old one goes.
pub fn diff(observed: &HostState, desired: &HostState, own: &Ownership) -> Diff {
    let mut out = Diff::default();
    let mut recreated: BTreeSet<&str> = BTreeSet::new();
    // Setting a MAC flushes the device's neighbours, permanent ones too.
    let mut mac_set: BTreeSet<&str> = BTreeSet::new();
    let mut present: BTreeSet<&str> = observed.links.iter().map(|l| l.name.as_str()).collect();

    for want in &desired.links {
        match observed.link(&want.name) {
            Some(have) if reusable(have, want) => {
                let mtu = want.mtu.filter(|m| have.mtu != Some(*m));
                let mac = want.mac.filter(|m| have.mac != Some(*m));
                let up = want.up && !have.up;
                let group = want.group.filter(|g| have.group.unwrap_or(0) != *g);
                if mac.is_some() {
                    mac_set.insert(&want.name);
                }
                if mtu.is_some() || mac.is_some() || up || group.is_some() {
                    out.changes.push(Change::SetLink {
                        name: want.name.clone(),
                        mtu,
                        mac,
                        up,
                        group,
                    });
                }
            }
            Some(_) => {
                out.changes.push(Change::DeleteLink(want.name.clone()));
                out.changes.push(Change::CreateLink(want.clone()));
                recreated.insert(&want.name);
            }
            None => {
                out.changes.push(Change::CreateLink(want.clone()));
                recreated.insert(&want.name);
                present.insert(&want.name);
            }
        }
    }
    let survives = |link: &str| !recreated.contains(link);
    let ours: BTreeSet<&str> = desired.links.iter().map(|l| l.name.as_str()).collect();

    // Addresses of our links: exactly the desired ones (IPv6 link-local
    // addresses are the kernel's).
    let want_addr: BTreeSet<_> = desired.addresses.iter().collect();
    let have_addr: BTreeSet<_> = observed
        .addresses
        .iter()
        .filter(|a| ours.contains(a.link.as_str()) && survives(&a.link) && !link_local(&a.net))
        .collect();
    for a in want_addr.difference(&have_addr) {
        out.changes.push(Change::AddAddress((*a).clone()));
    }
    let mut deletions: Vec<Change> = have_addr
        .difference(&want_addr)
        .map(|a| Change::DeleteAddress((*a).clone()))
        .collect();

    // Routes.
    // A route whose device could not be named (a link that appeared after
    // the links were read, such as a pod veth an ADD is making) is never
    // ours: every route of ours names its device.
    let owned = |r: &&Route| {
        r.protocol == own.protocol
            && own.tables.contains(&r.table)
            && r.dev
                .as_deref()
                .is_some_and(|d| !(own.foreign_dev)(d) && survives(d))
    };
    let current: Vec<&Route> = observed.routes.iter().filter(owned).collect();
    let foreign: BTreeSet<IpNet> = observed
        .routes
        .iter()
        .filter(|r| r.table == own.main_table && r.protocol != own.protocol)
        .map(|r| r.dst)
        .collect();
    for w in &desired.routes {
        if current.iter().any(|r| r.same_as(w)) {
            continue;
        }
        if w.table == own.main_table && foreign.contains(&w.dst) {
            out.skipped.push(format!(
                "{}: a route Muslin does not own already covers it; left alone",
                w.dst
            ));
            continue;
        }
        if let Some(dev) = w.dev.as_deref().filter(|d| !present.contains(d)) {
            out.skipped
                .push(format!("{}: device {dev} is missing", w.dst));
            continue;
        }
        out.changes.push(Change::ReplaceRoute(w.clone()));
    }
    if own.allow_deletes {
        for r in &current {
            let wanted = desired
                .routes
                .iter()
                .any(|w| w.same_as(r) || (w.dst == r.dst && w.table == r.table));
            if !wanted {
                deletions.push(Change::DeleteRoute((*r).clone()));
            }
        }
    }

    // Rules.
    if !own.rules.is_empty() {
        let have: Vec<_> = observed
            .rules
            .iter()
            .filter(|r| {
                own.rules
                    .iter()
                    .any(|(p, t)| *p == r.priority && t.contains(&r.table))
            })
            .collect();
        for w in &desired.rules {
            if !have.contains(&w) {
                out.changes.push(Change::AddRule(w.clone()));
            }
        }
        if own.allow_deletes {
            for r in have.into_iter().filter(|r| !desired.rules.contains(r)) {
                deletions.push(Change::DeleteRule(r.clone()));
            }
        }
    }

    // Neighbours and FDB entries of our links.
    let have_n: Vec<_> = observed
        .neighbours
        .iter()
        .filter(|n| {
            ours.contains(n.link.as_str())
                && survives(&n.link)
                && !mac_set.contains(n.link.as_str())
        })
        .collect();
    for w in &desired.neighbours {
        if !have_n.contains(&w) {
            out.changes.push(Change::ReplaceNeighbour(w.clone()));
        }
    }
    let have_f: Vec<_> = observed
        .fdb
        .iter()
        .filter(|e| ours.contains(e.link.as_str()) && survives(&e.link))
        .collect();
    for w in &desired.fdb {
        if !have_f.contains(&w) {
            out.changes.push(Change::ReplaceFdb(w.clone()));
        }
    }
    if own.allow_deletes {
        // A neighbour whose MAC changed was replaced above; deleting by
        // address would remove the new entry.
        for n in have_n.into_iter().filter(|n| {
            !desired
                .neighbours
                .iter()
                .any(|w| w.link == n.link && w.ip == n.ip)
        }) {
            deletions.push(Change::DeleteNeighbour(n.clone()));
        }
        // Likewise a VXLAN FDB entry is keyed by MAC: replacing it moved
        // it to the new destination, and the old one is gone already.
        for e in have_f.into_iter().filter(|e| {
            !desired
                .fdb
                .iter()
                .any(|w| w.link == e.link && w.mac == e.mac)
        }) {
            deletions.push(Change::DeleteFdb(e.clone()));
        }
    }
    out.changes.extend(deletions);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::{Link, LinkKind, Neighbour, Scope, Vxlan};

    fn own() -> Ownership {
        Ownership {
            protocol: 77,
            tables: vec![254, 77],
            foreign_dev: |d| d.starts_with("pod"),
            rules: vec![],
            main_table: 254,
            allow_deletes: true,
        }
    }

    #[test]
    fn a_route_whose_device_is_unnamed_is_never_deleted() {
        // A pod veth made after the links were read: its host route shows
        // without a device name and must not be taken for ours.
        let observed = HostState {
            routes: vec![Route {
                table: 254,
                dst: "10.1.0.5/32".parse().unwrap(),
                via: None,
                dev: None,
                onlink: false,
                mtu: None,
                src: None,
                scope: Scope::Link,
                protocol: 77,
            }],
            ..Default::default()
        };
        let d = diff(&observed, &HostState::default(), &own());
        assert_eq!(d.changes, vec![]);
    }

    #[test]
    fn a_new_mac_brings_the_flushed_neighbours_back_at_once() {
        let link = |mac| Link {
            name: "vx".into(),
            kind: LinkKind::Vxlan(Vxlan {
                vni: 1,
                port: 4789,
                local: None,
                underlay: None,
                df: Some(true),
            }),
            mtu: Some(1450),
            mac: Some(mac),
            up: true,
            group: None,
        };
        let n = Neighbour {
            link: "vx".into(),
            ip: "10.1.0.0".parse().unwrap(),
            mac: [2, 0, 0, 0, 0, 9],
        };
        let observed = HostState {
            links: vec![link([2, 0, 0, 0, 0, 1])],
            neighbours: vec![n.clone()],
            ..Default::default()
        };
        let desired = HostState {
            links: vec![link([2, 0, 0, 0, 0, 2])],
            neighbours: vec![n.clone()],
            ..Default::default()
        };
        let d = diff(&observed, &desired, &own());
        assert_eq!(
            d.changes,
            vec![
                Change::SetLink {
                    name: "vx".into(),
                    mtu: None,
                    mac: Some([2, 0, 0, 0, 0, 2]),
                    up: false,
                    group: None,
                },
                Change::ReplaceNeighbour(n)
            ]
        );
    }
}
