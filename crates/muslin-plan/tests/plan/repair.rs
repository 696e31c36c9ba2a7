//! The reconciler's repair of attachments on the host.

use muslin_model::ipam::AttachmentKey;
use muslin_model::naming::{host_ifname, is_pod_veth};
use muslin_model::plumbing::{plan, AttachmentPlan};
use muslin_plan::attachment::host_state;
use muslin_plan::object::{Link, LinkKind};
use muslin_plan::repair::{orphans, repair};
use muslin_plan::{Change, HostState};

use crate::common::{applied, ip};

fn record(container: &str, address: &str) -> AttachmentPlan {
    let key = AttachmentKey {
        network: "default".into(),
        container_id: container.into(),
        ifname: "eth0".into(),
    };
    plan(&key, &[ipnet::IpNet::from(ip(address))], 1500)
}

/// The host with every attachment of `records` in place.
fn host_with(records: &[AttachmentPlan]) -> HostState {
    let mut h = applied(&HostState::default());
    for p in records {
        let s = host_state(p);
        h.links.extend(s.links);
        h.routes.extend(s.routes);
    }
    h
}

#[test]
fn intact_attachments_need_nothing() {
    let recs = [record("c1", "10.244.1.5"), record("c2", "fd00:244:1::6")];
    assert_eq!(repair(&recs, &host_with(&recs)), []);
}

#[test]
fn missing_host_route_is_restored() {
    let recs = [record("c1", "10.244.1.5"), record("c2", "10.244.1.6")];
    let mut h = host_with(&recs);
    h.routes.retain(|r| r.dst != recs[1].addresses[0]);
    let out = repair(&recs, &h);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].to_string(),
        format!(
            "route replace 10.244.1.6/32 dev {} scope link proto 77 table 254",
            recs[1].host_ifname
        )
    );
}

#[test]
fn orphaned_pod_veth_is_deleted_and_other_links_are_not() {
    let recs = [record("c1", "10.244.1.5")];
    let mut h = host_with(&recs);
    let orphan = host_ifname("gone", "eth0");
    assert!(is_pod_veth(&orphan));
    let veth = |name: &str| Link {
        name: name.into(),
        kind: LinkKind::Veth(None),
        mtu: Some(1500),
        mac: None,
        up: true,
        group: None,
    };
    h.links.push(veth(&orphan));
    // Not ours by name: someone else's veth, and our VXLAN device's prefix.
    h.links.push(veth("veth1234"));
    h.links.push(veth("msl-vxlan"));
    assert_eq!(orphans(&recs, &h), std::slice::from_ref(&orphan));
    assert_eq!(repair(&recs, &h), [Change::DeleteLink(orphan)]);
}

#[test]
fn recorded_veth_that_is_absent_is_left_alone() {
    let recs = [record("c1", "10.244.1.5"), record("c2", "10.244.1.6")];
    let mut h = host_with(&recs);
    // The container went away and took its veth and route along.
    h.links.retain(|l| l.name != recs[1].host_ifname);
    h.routes.retain(|r| r.dst != recs[1].addresses[0]);
    assert_eq!(repair(&recs, &h), []);
}
