//! The kernel's behaviour on our changes, on values: what a namespace
//! holds after a step. It stands in for the kernel wherever the node's
//! logic is tested in-process (a recording fake executor), and it is what
//! a diff test uses to check that applying a diff reaches the desired
//! state.

use std::collections::BTreeMap;

use crate::change::{Change, Step};
use crate::object::{HostState, Link, LinkKind, Ns};

/// Applies `step` to `world` as the kernel would; errors are the kernel's
/// refusals (a name taken, an interface missing).
pub fn simulate(world: &mut BTreeMap<Ns, HostState>, step: &Step) -> Result<(), String> {
    let s = world.entry(step.ns.clone()).or_default();
    let need = |s: &HostState, l: &str| {
        s.link(l)
            .map(|_| ())
            .ok_or_else(|| format!("no interface {l}"))
    };
    match &step.change {
        Change::CreateLink(l) => {
            if s.link(&l.name).is_some() {
                return Err(format!("interface {} exists", l.name));
            }
            let mut own = l.clone();
            if let LinkKind::Veth(Some(peer)) = &l.kind {
                own.kind = LinkKind::Veth(None);
                let p = world.entry(peer.ns.clone()).or_default();
                if p.link(&peer.name).is_some() {
                    return Err(format!("interface {} exists in {}", peer.name, peer.ns));
                }
                p.links.push(Link {
                    name: peer.name.clone(),
                    kind: LinkKind::Veth(None),
                    mtu: Some(peer.mtu),
                    mac: Some(peer.mac),
                    up: false,
                    group: None,
                });
            }
            world.entry(step.ns.clone()).or_default().links.push(own);
        }
        Change::SetLink {
            name,
            mtu,
            mac,
            up,
            group,
        } => {
            let l = s
                .links
                .iter_mut()
                .find(|l| l.name == *name)
                .ok_or_else(|| format!("no interface {name}"))?;
            if mtu.is_some() {
                l.mtu = *mtu;
            }
            if mac.is_some() {
                l.mac = *mac;
                // The kernel flushes a device's neighbours on a MAC change.
                s.neighbours.retain(|n| n.link != *name);
            }
            if *up {
                l.up = true;
            }
            if group.is_some() {
                l.group = *group;
            }
        }
        Change::DeleteLink(name) => {
            // Deleting one end of a veth removes the other, wherever it is;
            // the peer's name is not known here, which a test of veths
            // accepts: it checks the host side.
            s.links.retain(|l| l.name != *name);
            s.addresses.retain(|a| a.link != *name);
            s.routes.retain(|r| r.dev.as_deref() != Some(name));
            s.neighbours.retain(|n| n.link != *name);
            s.fdb.retain(|e| e.link != *name);
        }
        Change::AddAddress(a) => {
            need(s, &a.link)?;
            if !s.addresses.contains(a) {
                s.addresses.push(a.clone());
            }
        }
        Change::DeleteAddress(a) => s.addresses.retain(|x| x != a),
        Change::ReplaceRoute(r) => {
            if let Some(d) = &r.dev {
                need(s, d)?;
            }
            s.routes.retain(|x| !(x.table == r.table && x.dst == r.dst));
            s.routes.push(r.clone());
        }
        Change::DeleteRoute(r) => s.routes.retain(|x| !x.same_as(r)),
        Change::AddRule(r) => {
            if !s.rules.contains(r) {
                s.rules.push(r.clone());
            }
        }
        Change::DeleteRule(r) => s.rules.retain(|x| x != r),
        Change::ReplaceNeighbour(n) => {
            need(s, &n.link)?;
            s.neighbours.retain(|x| !(x.link == n.link && x.ip == n.ip));
            s.neighbours.push(n.clone());
        }
        Change::DeleteNeighbour(n) => s.neighbours.retain(|x| !(x.link == n.link && x.ip == n.ip)),
        Change::ReplaceFdb(e) => {
            need(s, &e.link)?;
            if !s.fdb.contains(e) {
                s.fdb.push(e.clone());
            }
        }
        Change::DeleteFdb(e) => s.fdb.retain(|x| x != e),
        Change::Nft(_)
        | Change::Firewall(_)
        | Change::Sysctl { .. }
        | Change::ForgetConnections { .. } => {}
    }
    Ok(())
}
