//! The reconciler's pass over the node's attachments: host routes that
//! something removed come back, and veths of ours that no record names
//! (left by a crash between releasing a record and removing its veth) go.

use std::collections::BTreeSet;

use muslin_model::naming::is_pod_veth;
use muslin_model::plumbing::AttachmentPlan;
use muslin_model::ROUTE_PROTOCOL;

use crate::attachment::host_route;
use crate::change::Change;
use crate::object::{HostState, LinkKind};

/// Changes that repair the host side of `records` in `observed`. The
/// links must have been observed *before* the records were read: an ADD
/// records before it creates its veth, so every veth seen then that is
/// still wanted has a record by now.
pub fn repair(records: &[AttachmentPlan], observed: &HostState) -> Vec<Change> {
    let mut out = Vec::new();
    for p in records {
        if observed.link(&p.host_ifname).is_none() {
            // Veth gone: the container is gone; DEL or GC releases it.
            continue;
        }
        for a in &p.addresses {
            let r = host_route(p, *a);
            let present = observed
                .routes
                .iter()
                .any(|o| o.protocol == ROUTE_PROTOCOL && o.dst == r.dst && o.dev == r.dev);
            if !present {
                out.push(Change::ReplaceRoute(r));
            }
        }
    }
    out.extend(
        orphans(records, observed)
            .into_iter()
            .map(Change::DeleteLink),
    );
    out
}

/// Host veths of ours that no record names.
pub fn orphans(records: &[AttachmentPlan], observed: &HostState) -> Vec<String> {
    let known: BTreeSet<&str> = records.iter().map(|p| p.host_ifname.as_str()).collect();
    observed
        .links
        .iter()
        .filter(|l| {
            is_pod_veth(&l.name)
                && matches!(l.kind, LinkKind::Veth(_))
                && !known.contains(l.name.as_str())
        })
        .map(|l| l.name.clone())
        .collect()
}
