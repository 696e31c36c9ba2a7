//! Facts about the host the agent decides with, read off an observed
//! namespace: the underlay candidates and the ranges someone else routes.

use ipnet::IpNet;
use muslin_model::underlay::Candidate;
use muslin_model::{IFACE_PREFIX, ROUTE_PROTOCOL};

use crate::object::{HostState, LinkKind};

/// Every interface with its addresses: the candidates for the underlay.
pub fn candidates(s: &HostState) -> Vec<Candidate> {
    s.links
        .iter()
        .map(|l| Candidate {
            ifname: l.name.clone(),
            kind: match &l.kind {
                LinkKind::Vxlan(_) => Some("vxlan".into()),
                LinkKind::Veth(_) => Some("veth".into()),
                LinkKind::Other(k) => k.clone(),
            },
            up: l.up,
            mtu: l.mtu.unwrap_or(1500),
            addresses: s
                .addresses
                .iter()
                .filter(|a| a.link == l.name)
                .map(|a| a.net)
                .collect(),
        })
        .collect()
}

/// Destinations of routes in the main table that Muslin does not own and
/// that do not lead to our own devices: ranges the node must not lease.
pub fn foreign_routes(s: &HostState) -> Vec<IpNet> {
    s.routes
        .iter()
        .filter(|r| r.table == muslin_model::dataplane::MAIN_TABLE && r.protocol != ROUTE_PROTOCOL)
        .filter(|r| {
            !r.dev
                .as_deref()
                .is_some_and(|d| d.starts_with(IFACE_PREFIX))
        })
        .map(|r| r.dst)
        .collect()
}
