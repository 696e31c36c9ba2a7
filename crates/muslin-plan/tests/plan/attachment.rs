//! One attachment: the steps that create it and undo it, pinned per
//! address family, and what CHECK reports.

use std::path::Path;

use muslin_model::ipam::AttachmentKey;
use muslin_model::plumbing::{plan, AttachmentPlan};
use muslin_plan::attachment::{check, container_state, create, host_state, rollback};

use crate::common::ip;
use crate::golden;

const NETNS: &str = "/var/run/netns/c1";

fn fixed(address: &str, mtu: u32) -> AttachmentPlan {
    let key = AttachmentKey {
        network: "default".into(),
        container_id: "c1".into(),
        ifname: "eth0".into(),
    };
    plan(&key, &[ipnet::IpNet::from(ip(address))], mtu)
}

fn render(p: &AttachmentPlan) -> String {
    let mut out = format!("# {} in {NETNS}, mtu {}\ncreate:\n", p.addresses[0], p.mtu);
    for s in create(p, Path::new(NETNS)) {
        out.push_str(&format!("  {s}\n"));
    }
    out.push_str("rollback:\n");
    for s in rollback(p) {
        out.push_str(&format!("  {s}\n"));
    }
    out
}

#[test]
fn golden_ipv4() {
    golden::check("attachment-v4", &render(&fixed("10.244.1.5", 1500)));
}

#[test]
fn golden_ipv6() {
    golden::check("attachment-v6", &render(&fixed("fd00:244:1::5", 1450)));
}

#[test]
fn check_of_a_complete_attachment_finds_nothing() {
    for p in [fixed("10.244.1.5", 1500), fixed("fd00:244:1::5", 1450)] {
        assert_eq!(
            check(&p, &host_state(&p), &container_state(&p)),
            Vec::<String>::new()
        );
    }
}

#[test]
fn check_names_each_missing_piece() {
    let p = fixed("10.244.1.5", 1500);
    let h = p.host_ifname.clone();
    let (host, cont) = (host_state(&p), container_state(&p));
    let one = |host: &muslin_plan::HostState, cont: &muslin_plan::HostState| check(&p, host, cont);

    let mut x = host.clone();
    x.links.clear();
    assert_eq!(one(&x, &cont), [format!("host interface {h} is missing")]);
    let mut x = host.clone();
    x.links[0].up = false;
    assert_eq!(one(&x, &cont), [format!("host interface {h} is down")]);
    let mut x = host.clone();
    x.routes.clear();
    assert_eq!(
        one(&x, &cont),
        [format!("host route to 10.244.1.5/32 via {h} is missing")]
    );

    let mut x = cont.clone();
    x.links.clear();
    assert_eq!(one(&host, &x), ["container interface eth0 is missing"]);
    let mut x = cont.clone();
    x.links[0].up = false;
    assert_eq!(one(&host, &x), ["container interface eth0 is down"]);
    let mut x = cont.clone();
    x.addresses.clear();
    assert_eq!(one(&host, &x), ["address 10.244.1.5/32 is missing on eth0"]);
    let mut x = cont.clone();
    x.neighbours.clear();
    assert_eq!(
        one(&host, &x),
        ["gateway neighbour 169.254.1.1 (ee:ee:ee:ee:ee:ee) on eth0 is missing"]
    );
    let mut x = cont.clone();
    x.routes.retain(|r| r.via.is_none());
    assert_eq!(
        one(&host, &x),
        ["default route via 169.254.1.1 on eth0 is missing"]
    );
    let mut x = cont.clone();
    x.routes.retain(|r| r.via.is_some());
    assert_eq!(
        one(&host, &x),
        ["route to the gateway 169.254.1.1/32 on eth0 is missing"]
    );
}
