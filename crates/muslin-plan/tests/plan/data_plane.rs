//! The cluster data plane of `h1`: a golden file per backend for a first
//! start, and the minimal diffs of the transitions a running node sees.

use muslin_model::dataplane::{Backend, MAIN_TABLE, VXLAN_DEV};
use muslin_model::ROUTE_PROTOCOL;
use muslin_plan::diff;
use muslin_plan::object::{Address, LinkKind, Route, Scope};
use muslin_plan::{Change, HostState};

use crate::common::*;
use crate::golden;

fn first_start(name: &str, backend: Backend) {
    let v = cluster();
    let d = desired(&v, backend);
    let want = muslin_plan::data_plane::host_state(&d);
    let first = diff(&fresh_host(), &want, &own(true));
    let text = format!(
        "# h1 with backend {backend:?}: underlay eth1 192.168.10.11/24 mtu 1500, pod network {POD_CIDR}\n\
         paths:\n{}objects:\n{}first start (the host has only eth1):\n{}",
        render_paths(&d),
        render_state(&want),
        render_diff(&first)
    );
    golden::check(name, &text);
    // Once applied, the same plan asks for nothing more.
    assert_eq!(diff(&applied(&want), &want, &own(true)), Default::default());
}

#[test]
fn golden_routed() {
    first_start("data-plane-routed", Backend::Routed);
}

#[test]
fn golden_vxlan() {
    first_start("data-plane-vxlan", Backend::Vxlan);
}

#[test]
fn golden_auto() {
    first_start("data-plane-auto", Backend::Auto);
}

/// The literal empty observed state: routes through the underlay wait for
/// the device instead of failing the whole batch.
#[test]
fn routes_through_a_missing_device_are_skipped() {
    let want = wanted(&cluster(), Backend::Routed);
    let d = diff(&HostState::default(), &want, &own(true));
    assert!(
        !d.changes
            .iter()
            .any(|c| matches!(c, Change::ReplaceRoute(_))),
        "{:?}",
        d.changes
    );
    assert_eq!(
        d.skipped,
        [
            "10.244.2.0/24: device eth1 is missing",
            "10.244.2.0/32: device eth1 is missing",
            "10.244.12.0/24: device eth1 is missing"
        ]
    );
}

/// A host running the plan of `before`, and the diff towards `after`.
fn transition(
    before: &muslin_model::cluster::ClusterView,
    after: &muslin_model::cluster::ClusterView,
    backend: Backend,
    allow_deletes: bool,
) -> Vec<String> {
    let have = applied(&wanted(before, backend));
    lines(&diff(&have, &wanted(after, backend), &own(allow_deletes)))
}

const H3_ROUTE: &str = "route replace 10.244.3.0/24 via 10.244.3.0 dev msl-vxlan onlink mtu lock 1450 proto 77 table 254";
const H3_NODE_ROUTE: &str = "route replace 192.168.20.13/32 via 10.244.3.0 dev msl-vxlan onlink mtu lock 1450 proto 77 table 77";

fn h3_mac() -> String {
    format_mac_of("h3")
}

fn format_mac_of(node: &str) -> String {
    muslin_model::naming::format_mac(&muslin_model::cluster::vtep_mac(node))
}

#[test]
fn peer_joins_adds_only_its_objects() {
    let before = {
        let mut v = cluster();
        v.nodes.remove("h3");
        v
    };
    let m = h3_mac();
    assert_eq!(
        transition(&before, &cluster(), Backend::Auto, true),
        [
            H3_ROUTE.to_string(),
            H3_NODE_ROUTE.to_string(),
            format!("neigh replace 10.244.3.0 lladdr {m} dev msl-vxlan permanent"),
            format!("fdb replace {m} dev msl-vxlan dst 192.168.20.13 permanent"),
        ]
    );
    // A routed peer joining is one route per block, and its probe route.
    let before = {
        let mut v = cluster();
        v.nodes.remove("h2");
        v
    };
    assert_eq!(
        transition(&before, &cluster(), Backend::Auto, true),
        [
            "route replace 10.244.2.0/24 via 192.168.10.12 dev eth1 proto 77 table 254",
            "route replace 10.244.2.0/32 via 192.168.10.12 dev eth1 src 10.244.1.0 proto 77 table 254",
            "route replace 10.244.12.0/24 via 192.168.10.12 dev eth1 proto 77 table 254",
        ]
    );
}

#[test]
fn peer_leaves_removes_only_its_objects_and_only_when_allowed() {
    let after = {
        let mut v = cluster();
        v.nodes.remove("h3");
        v
    };
    let m = h3_mac();
    let del = |s: &str| s.replacen("route replace", "route del", 1);
    assert_eq!(
        transition(&cluster(), &after, Backend::Auto, true),
        [
            del(H3_ROUTE),
            del(H3_NODE_ROUTE),
            format!("neigh del 10.244.3.0 lladdr {m} dev msl-vxlan permanent"),
            format!("fdb del {m} dev msl-vxlan dst 192.168.20.13 permanent"),
        ]
    );
    assert!(transition(&cluster(), &after, Backend::Auto, false).is_empty());
    assert!(transition(&cluster(), &after, Backend::Vxlan, false).is_empty());
}

#[test]
fn block_added_to_a_peer_is_one_route() {
    let mut after = cluster();
    join(
        &mut after,
        "h3",
        "192.168.20.13",
        "192.168.20.0/24",
        &["10.244.3.0/24", "10.244.33.0/24"],
    );
    assert_eq!(
        transition(&cluster(), &after, Backend::Auto, true),
        ["route replace 10.244.33.0/24 via 10.244.3.0 dev msl-vxlan onlink mtu lock 1450 proto 77 table 254"]
    );
}

fn route_mut<'a>(h: &'a mut HostState, dst: &str) -> &'a mut Route {
    h.routes
        .iter_mut()
        .find(|r| r.dst == net(dst) && r.table == MAIN_TABLE)
        .unwrap()
}

#[test]
fn drifted_route_is_one_replace() {
    let want = wanted(&cluster(), Backend::Auto);
    let expect = ["route replace 10.244.2.0/24 via 192.168.10.12 dev eth1 proto 77 table 254"];
    let mut have = applied(&want);
    route_mut(&mut have, "10.244.2.0/24").via = Some(ip("192.168.10.99"));
    assert_eq!(lines(&diff(&have, &want, &own(true))), expect);
    let mut have = applied(&want);
    route_mut(&mut have, "10.244.2.0/24").mtu = Some(1400);
    assert_eq!(lines(&diff(&have, &want, &own(true))), expect);
    let mut have = applied(&want);
    route_mut(&mut have, "10.244.3.0/24").mtu = None;
    assert_eq!(lines(&diff(&have, &want, &own(true))), [H3_ROUTE]);
}

#[test]
fn foreign_route_over_a_peer_block_is_left_alone() {
    let want = wanted(&cluster(), Backend::Auto);
    let mut have = applied(&want);
    let r = route_mut(&mut have, "10.244.2.0/24");
    r.protocol = 4; // static: an operator's
    r.via = Some(ip("192.168.10.1"));
    let d = diff(&have, &want, &own(true));
    assert!(d.changes.is_empty(), "{:?}", d.changes);
    assert_eq!(
        d.skipped,
        ["10.244.2.0/24: a route Muslin does not own already covers it; left alone"]
    );
}

#[test]
fn routes_to_pod_veths_and_other_protocols_are_never_deleted() {
    let want = wanted(&cluster(), Backend::Auto);
    let mut have = applied(&want);
    let extra = |dst: &str, dev: &str, protocol: u8| Route {
        table: MAIN_TABLE,
        dst: net(dst),
        via: None,
        dev: Some(dev.into()),
        onlink: false,
        mtu: None,
        src: None,
        scope: Scope::Link,
        protocol,
    };
    // An attachment's host route, and the kernel's connected route.
    have.routes
        .push(extra("10.244.1.5/32", "msl0123456789ab", ROUTE_PROTOCOL));
    have.routes.push(extra("192.168.10.0/24", "eth1", 2));
    assert_eq!(diff(&have, &want, &own(true)), Default::default());
    // A route of ours to a peer block nobody holds any more does go.
    have.routes.push(Route {
        via: Some(ip("192.168.10.12")),
        scope: Scope::Universe,
        ..extra("10.244.9.0/24", "eth1", ROUTE_PROTOCOL)
    });
    assert_eq!(
        lines(&diff(&have, &want, &own(true))),
        ["route del 10.244.9.0/24 via 192.168.10.12 dev eth1 proto 77 table 254"]
    );
}

fn vxlan_mut(h: &mut HostState) -> &mut muslin_plan::object::Link {
    h.links.iter_mut().find(|l| l.name == VXLAN_DEV).unwrap()
}

#[test]
fn vxlan_device_with_another_vni_is_recreated_with_what_hung_on_it() {
    let want = wanted(&cluster(), Backend::Auto);
    let mut have = applied(&want);
    match &mut vxlan_mut(&mut have).kind {
        LinkKind::Vxlan(v) => v.vni = 1,
        k => panic!("{k:?}"),
    }
    let m = h3_mac();
    let me = format_mac_of("h1");
    assert_eq!(
        lines(&diff(&have, &want, &own(true))),
        [
            "link del msl-vxlan".to_string(),
            format!("link add msl-vxlan type vxlan id 4242 dstport 4789 local 192.168.10.11 dev eth1 df set nolearning address {me} mtu 1450 up"),
            "addr add 10.244.1.0/32 dev msl-vxlan".to_string(),
            H3_ROUTE.to_string(),
            H3_NODE_ROUTE.to_string(),
            format!("neigh replace 10.244.3.0 lladdr {m} dev msl-vxlan permanent"),
            format!("fdb replace {m} dev msl-vxlan dst 192.168.20.13 permanent"),
        ]
    );
}

#[test]
fn vxlan_mtu_change_sets_only_the_mtu() {
    let want = wanted(&cluster(), Backend::Vxlan);
    let mut have = applied(&want);
    vxlan_mut(&mut have).mtu = Some(1400);
    let d = diff(&have, &want, &own(true));
    assert_eq!(
        d.changes,
        [Change::SetLink {
            name: VXLAN_DEV.into(),
            mtu: Some(1450),
            mac: None,
            up: false,
            group: None,
        }]
    );
    assert_eq!(lines(&d), ["link set msl-vxlan mtu 1450"]);
}

#[test]
fn identical_state_is_an_empty_diff() {
    for backend in [Backend::Routed, Backend::Vxlan, Backend::Auto] {
        let want = wanted(&cluster(), backend);
        assert_eq!(
            diff(&applied(&want), &want, &own(true)),
            Default::default(),
            "{backend:?}"
        );
    }
}

#[test]
fn ipv6_link_local_address_on_the_vxlan_device_is_left_alone() {
    let want = wanted(&cluster(), Backend::Vxlan);
    let mut have = applied(&want);
    have.addresses.push(Address {
        link: VXLAN_DEV.into(),
        net: net("fe80::1c2d:3eff:fe4f:5a6b/64"),
    });
    assert_eq!(diff(&have, &want, &own(true)), Default::default());
    // Any other stray address on our device does go.
    have.addresses.push(Address {
        link: VXLAN_DEV.into(),
        net: net("10.244.7.0/32"),
    });
    assert_eq!(
        lines(&diff(&have, &want, &own(true))),
        ["addr del 10.244.7.0/32 dev msl-vxlan"]
    );
}

/// A tunnelled peer that comes back with another underlay address keeps
/// its VTEP MAC: the kernel keys the FDB entry by MAC, so the replace
/// moves it and no delete of the old destination follows.
#[test]
fn peer_moving_its_underlay_address_replaces_its_fdb_entry() {
    let mut after = cluster();
    join(
        &mut after,
        "h3",
        "192.168.20.23",
        "192.168.20.0/24",
        &["10.244.3.0/24"],
    );
    let m = h3_mac();
    assert_eq!(
        transition(&cluster(), &after, Backend::Auto, true),
        [
            "route replace 192.168.20.23/32 via 10.244.3.0 dev msl-vxlan onlink mtu lock 1450 proto 77 table 77".to_string(),
            format!("fdb replace {m} dev msl-vxlan dst 192.168.20.23 permanent"),
            "route del 192.168.20.13/32 via 10.244.3.0 dev msl-vxlan onlink mtu lock 1450 proto 77 table 77".to_string(),
        ]
    );
}

#[test]
fn neighbour_with_a_stale_mac_is_one_replace() {
    let want = wanted(&cluster(), Backend::Auto);
    let mut have = applied(&want);
    have.neighbours[0].mac = [2, 0, 0, 0, 0, 1];
    let m = h3_mac();
    assert_eq!(
        lines(&diff(&have, &want, &own(true))),
        [format!(
            "neigh replace 10.244.3.0 lladdr {m} dev msl-vxlan permanent"
        )]
    );
}

/// Network `red` (id 1, 10.50.0.0/16) on h1: its own tunnel in its link
/// group with no address, every peer's next hop its node address (h4 has
/// no block of red and is still reachable), routes in red's tables, and
/// the three rules; a second pass asks for nothing more.
#[test]
fn golden_network() {
    use muslin_model::network::NetworkSpec;
    let red = NetworkSpec {
        name: "red".into(),
        subnets: vec![net("10.50.0.0/16")],
        block_size: 26,
        backend: Backend::Vxlan,
        vni: 4243,
        isolated_from_host: false,
        id: 1,
        created_at_ms: 1,
        created_by: "h1".into(),
        deleted_at_ms: None,
    };
    let mut v = muslin_model::cluster::ClusterView::default();
    join(&mut v, "h1", "192.168.10.11", "192.168.10.0/24", &[]);
    join(&mut v, "h2", "192.168.10.12", "192.168.10.0/24", &[]);
    join(&mut v, "h4", "192.168.20.14", "192.168.20.0/24", &[]);
    for (n, b) in [("h1", "10.50.1.0/26"), ("h2", "10.50.2.0/26")] {
        v.nodes.get_mut(n).unwrap().add_claim(
            "red",
            net(b),
            muslin_model::cluster::BlockClaim { claimed_at_ms: 1 },
        );
    }
    let local = underlay();
    let addrs = [local.address];
    let dev = red.vxlan_dev();
    let d = muslin_model::dataplane::desired(
        &v.of_network("red"),
        &muslin_model::dataplane::Params {
            me: ME,
            backend: Backend::Vxlan,
            local: &local,
            vx: muslin_model::dataplane::VxlanSettings {
                vni: red.vni,
                port: 4789,
            },
            vtep_mac: muslin_model::cluster::vtep_mac(ME),
            pod_cidr: red.subnets[0],
            local_addresses: &addrs,
            path_mtu: &Default::default(),
            dev: &dev,
            table: red.table(),
            pod_table: Some(red.pod_table()),
            tunnel_always: true,
            health: &Default::default(),
            relays: &Default::default(),
            encrypt: false,
            wg_kind: "tun",
        },
    );
    let ranges = [net("10.50.0.0/16"), net(POD_CIDR)];
    let want = muslin_plan::data_plane::network_state(&d, &red, true, &ranges);
    let own = muslin_plan::data_plane::all_ownership(&[&red], true);
    let first = diff(&fresh_host(), &want, &own);
    golden::check(
        "data-plane-network",
        &format!(
            "# network red on h1, reached by the hosts\nobjects:\n{}first start:\n{}",
            render_state(&want),
            render_diff(&first)
        ),
    );
    assert_eq!(diff(&applied(&want), &want, &own), Default::default());
    assert_eq!(
        want.addresses[0].net.to_string(),
        "192.168.10.11/32",
        "the node's own address: the network's would collide with an overlapping one's"
    );
    assert_eq!(want.links[0].group, Some(77_001));
    // Isolated from the hosts: no rule for the hosts, none to nodes.
    let dark = NetworkSpec {
        isolated_from_host: true,
        ..red.clone()
    };
    let iso = muslin_plan::data_plane::network_state(&d, &dark, false, &ranges);
    let prios: Vec<u32> = iso.rules.iter().map(|r| r.priority).collect();
    assert_eq!(prios, [1070, 1073, 1073]);
    // Outside the default network, its subnet is guarded from everyone
    // else; over the default network it is not (the default's own routes).
    let guards = muslin_plan::data_plane::network_guards(&[&red], net(POD_CIDR));
    assert_eq!(guards.len(), 1);
    assert_eq!(
        guards[0].to_string(),
        "-4 priority 1074 to 10.50.0.0/16 unreachable"
    );
    let inside = NetworkSpec {
        subnets: vec![net("10.244.128.0/20")],
        ..red.clone()
    };
    assert!(muslin_plan::data_plane::network_guards(&[&inside], net(POD_CIDR)).is_empty());
    // Deleted: its tunnel goes, the default network's stays.
    let mut host = applied(&want);
    host.links.push(muslin_plan::object::Link {
        name: VXLAN_DEV.into(),
        kind: LinkKind::Other(Some("vxlan".into())),
        mtu: None,
        mac: None,
        up: true,
        group: None,
    });
    assert_eq!(
        muslin_plan::data_plane::stale_tunnels(&host, &[]),
        [Change::DeleteLink("msl-vx1".into())]
    );
    // With no networks, their rules are still ours to remove.
    let left = diff(
        &host,
        &HostState::default(),
        &muslin_plan::data_plane::all_ownership(&[], true),
    );
    assert_eq!(
        left.changes
            .iter()
            .filter(|c| matches!(c, Change::DeleteRule(_)))
            .count(),
        5
    );
}
