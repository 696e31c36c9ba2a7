use super::*;
use crate::cluster::{test_record, PeerView};

/// Four nodes on one segment; `links` lists the pairs whose data path
/// both ends report working, `cut` the pairs both report failing.
fn ring(links: &[(&str, &str)], cut: &[(&str, &str)]) -> ClusterView {
    let mut v = ClusterView::default();
    for (i, n) in ["h1", "h2", "h3", "h4"].iter().enumerate() {
        let mut r = test_record(n, &format!("192.168.77.1{}", i + 1), "192.168.77.0/24");
        r.capabilities.push(CAPABILITY.into());
        v.nodes.insert(
            n.to_string(),
            PeerView {
                record: Some(r.into()),
                alive: true,
                ..Default::default()
            },
        );
    }
    let set = |v: &mut ClusterView, a: &str, b: &str, ok: bool| {
        let h = PathHealth {
            ok,
            cause: (!ok).then(|| "routed packets unanswered".to_string()),
            path_mtu: None,
        };
        let rec = v.nodes.get_mut(a).unwrap().record_mut().unwrap();
        rec.health.insert(b, h);
    };
    for (a, b) in links {
        set(&mut v, a, b, true);
        set(&mut v, b, a, true);
    }
    for (a, b) in cut {
        set(&mut v, a, b, false);
        set(&mut v, b, a, false);
    }
    v
}

const RING: &[(&str, &str)] = &[("h1", "h2"), ("h2", "h3"), ("h3", "h4"), ("h4", "h1")];
const ACROSS: &[(&str, &str)] = &[("h1", "h3"), ("h2", "h4")];

fn route(v: &ClusterView, me: &str, peer: &str) -> Route {
    let mine = v.nodes[me].record.as_ref().unwrap().health.clone();
    Graph::new(v, me, &mine, Backend::Auto).route(peer, None)
}

fn via(r: Route) -> String {
    match r {
        Route::Relay { via, .. } => via,
        o => panic!("not relayed: {o:?}"),
    }
}

#[test]
fn working_and_unjudged_links_are_direct() {
    let v = ring(RING, &[]);
    assert_eq!(route(&v, "h1", "h2"), Route::Direct);
    // Nobody judged h1–h3 yet: direct, as before any probe.
    assert_eq!(route(&v, "h1", "h3"), Route::Direct);
}

#[test]
fn opposite_pairs_relay_through_a_neighbour_and_both_ends_pick_the_same() {
    let v = ring(RING, ACROSS);
    for (a, b) in ACROSS {
        let there = via(route(&v, a, b));
        let back = via(route(&v, b, a));
        assert_eq!(there, back, "{a}–{b}: both directions cross one relay");
        assert!(RING
            .iter()
            .any(|(x, y)| (*x == there || *y == there) && (x == a || y == a)));
        assert_ne!(&there, a);
        assert_ne!(&there, b);
    }
    match route(&v, "h1", "h3") {
        Route::Relay { why, .. } => assert!(why.contains("routed packets unanswered"), "{why}"),
        o => panic!("{o:?}"),
    }
}

#[test]
fn one_end_reporting_failure_is_enough_and_its_report_is_named() {
    let mut v = ring(RING, &[]);
    let h3 = v.nodes.get_mut("h3").unwrap().record_mut().unwrap();
    h3.health.insert(
        "h1",
        PathHealth {
            ok: false,
            cause: Some("UDP 4789 unanswered".into()),
            path_mtu: None,
        },
    );
    match route(&v, "h1", "h3") {
        Route::Relay { why, .. } => assert!(why.contains("h3 reports UDP 4789"), "{why}"),
        o => panic!("{o:?}"),
    }
}

#[test]
fn relays_need_verified_links_to_both_ends_and_must_be_alive_and_able() {
    // h2–h3 is only unjudged: h2 cannot relay h1–h3 yet, h4 can.
    let links = &[("h1", "h2"), ("h3", "h4"), ("h4", "h1")];
    let v = ring(links, ACROSS);
    assert_eq!(via(route(&v, "h1", "h3")), "h4");
    // h4 dies: nobody is left.
    let mut dead = v.clone();
    dead.nodes.get_mut("h4").unwrap().alive = false;
    match route(&dead, "h1", "h3") {
        Route::Stuck(why) => {
            assert!(why.contains("h2: h2–h3 not verified yet"), "{why}");
            assert!(why.contains("h4: not alive"), "{why}");
        }
        o => panic!("{o:?}"),
    }
    // An older node does not relay.
    let mut old = v.clone();
    let r = old.nodes.get_mut("h4").unwrap().record_mut().unwrap();
    r.capabilities.retain(|c| c != CAPABILITY);
    assert!(matches!(route(&old, "h1", "h3"), Route::Stuck(w) if w.contains("does not relay")));
}

#[test]
fn our_fresh_judgement_wins_over_what_we_published() {
    let v = ring(RING, &[]);
    let mut mine = v.nodes["h1"].record.as_ref().unwrap().health.clone();
    mine.insert(
        "h3",
        PathHealth {
            ok: false,
            cause: Some("cut".into()),
            path_mtu: None,
        },
    );
    // h3 has not noticed; h1's own probes decide for h1 at once. (h2 and
    // h4 are verified with both ends, so either may relay.)
    let g = Graph::new(&v, "h1", &mine, Backend::Auto);
    assert!(matches!(g.route("h3", None), Route::Relay { .. }));
    assert_eq!(g.down("h1", "h3").as_deref(), Some("cut"));
}

#[test]
fn relay_choice_prefers_routed_hops_and_keeps_the_relay_in_use() {
    // h1, h2 and h4 share a segment; h3 is across a router (VXLAN).
    let mut v = ring(&[], &[]);
    let r = v.nodes.get_mut("h3").unwrap().record_mut().unwrap();
    r.address = "192.168.20.13".parse().unwrap();
    r.underlay_prefix = "192.168.20.0/24".parse().unwrap();
    // h4 sits on a third subnet: two VXLAN hops through it.
    let r = v.nodes.get_mut("h4").unwrap().record_mut().unwrap();
    r.address = "192.168.30.14".parse().unwrap();
    r.underlay_prefix = "192.168.30.0/24".parse().unwrap();
    let set = |v: &mut ClusterView, a: &str, b: &str, ok: bool| {
        for (x, y) in [(a, b), (b, a)] {
            v.nodes
                .get_mut(x)
                .unwrap()
                .record_mut()
                .unwrap()
                .health
                .insert(
                    y,
                    PathHealth {
                        ok,
                        cause: None,
                        path_mtu: None,
                    },
                );
        }
    };
    for (a, b) in [("h1", "h2"), ("h1", "h4"), ("h2", "h3"), ("h3", "h4")] {
        set(&mut v, a, b, true);
    }
    set(&mut v, "h1", "h3", false);
    // h1→h2 routed + h2→h3 VXLAN (3) beats two VXLAN hops through h4 (4).
    assert_eq!(via(route(&v, "h1", "h3")), "h2");
    assert_eq!(via(route(&v, "h3", "h1")), "h2");
    // The relay in use stays while it is fit, though h2 costs less.
    let mine = v.nodes["h1"].record.as_ref().unwrap().health.clone();
    let g = Graph::new(&v, "h1", &mine, Backend::Auto);
    assert_eq!(via(g.route("h3", Some("h4"))), "h4");
}

#[test]
fn a_node_only_reaching_out_is_named_behind_a_nat() {
    let mut v = ring(RING, &[]);
    // Nobody reaches h3; h3 reaches everyone; every data path to h3 fails.
    for n in ["h1", "h2", "h4"] {
        let r = v.nodes.get_mut(n).unwrap().record_mut().unwrap();
        r.reach.insert("h3", vec![]);
        r.health.insert(
            "h3",
            PathHealth {
                ok: false,
                cause: Some("192.168.77.13 does not answer on the underlay either".into()),
                path_mtu: None,
            },
        );
        let addr = r.address;
        let h3 = v.nodes.get_mut("h3").unwrap().record_mut().unwrap();
        h3.reach.insert(n, vec![addr]);
    }
    match route(&v, "h1", "h3") {
        Route::Stuck(why) => {
            assert!(why.contains("behind a NAT"), "{why}");
            assert!(why.contains("h2: h2–h3 failing"), "{why}");
        }
        o => panic!("{o:?}"),
    }
}

#[test]
fn the_spread_hash_is_symmetric_in_the_pair() {
    assert_eq!(spread("h1", "h3", "h2"), spread("h3", "h1", "h2"));
    assert_ne!(spread("h1", "h3", "h2"), spread("h1", "h3", "h4"));
}

#[test]
fn the_relay_in_use_is_kept_while_nothing_can_be_verified() {
    // h2's agent restarts: nobody hears it on the data path, yet its
    // kernel forwards, and h1–h3 is cut.
    let mut v = ring(&[("h1", "h2"), ("h2", "h3")], &[("h1", "h3")]);
    for n in ["h1", "h3"] {
        let r = v.nodes.get_mut(n).unwrap().record_mut().unwrap();
        r.health.insert(
            "h2",
            PathHealth {
                ok: false,
                cause: Some("no answer".into()),
                path_mtu: None,
            },
        );
    }
    v.nodes.get_mut("h4").unwrap().alive = false;
    let mine = v.nodes["h1"].record.as_ref().unwrap().health.clone();
    let g = Graph::new(&v, "h1", &mine, Backend::Auto);
    assert!(matches!(g.route("h3", None), Route::Stuck(_)));
    match g.route("h3", Some("h2")) {
        Route::Relay { via, why } => {
            assert_eq!(via, "h2");
            assert!(why.contains("kept h2"), "{why}");
        }
        o => panic!("{o:?}"),
    }
    // Gossip calling it dead (its agent is away) changes nothing; its
    // saying the far end fails does.
    let mut dead = v.clone();
    dead.nodes.get_mut("h2").unwrap().alive = false;
    let g = Graph::new(&dead, "h1", &mine, Backend::Auto);
    assert!(matches!(g.route("h3", Some("h2")), Route::Relay { .. }));
    let mut far = v.clone();
    far.nodes
        .get_mut("h2")
        .unwrap()
        .record_mut()
        .unwrap()
        .health
        .insert(
            "h3",
            PathHealth {
                ok: false,
                cause: None,
                path_mtu: None,
            },
        );
    // (It says so while h3 itself is silent to everyone: no evidence.)
    let g = Graph::new(&far, "h1", &mine, Backend::Auto);
    assert!(matches!(g.route("h3", Some("h2")), Route::Relay { .. }));
    // (A dead node's report is no evidence: h4 lives again.)
    far.nodes.get_mut("h4").unwrap().alive = true;
    let r4 = far.nodes.get_mut("h4").unwrap().record_mut().unwrap();
    r4.health.insert(
        "h3",
        PathHealth {
            ok: true,
            cause: None,
            path_mtu: None,
        },
    );
    let g = Graph::new(&far, "h1", &mine, Backend::Auto);
    assert!(matches!(g.route("h3", Some("h2")), Route::Stuck(_)));
    // A healed direct path wins over any kept relay.
    let healed = ring(RING, &[]);
    let mine = healed.nodes["h1"].record.as_ref().unwrap().health.clone();
    let g = Graph::new(&healed, "h1", &mine, Backend::Auto);
    assert_eq!(g.route("h3", Some("h2")), Route::Direct);
}

#[test]
fn ends_that_kept_different_relays_settle_on_the_first_ends_choice() {
    // h1 and h3 are cut; h2 and h4 both reach both. h1 kept h4, h3 kept
    // h2 (each saw the other fail first): h1 sorts first, so both take h4.
    let mut v = ring(RING, ACROSS);
    v.nodes
        .get_mut("h1")
        .unwrap()
        .record_mut()
        .unwrap()
        .relays
        .insert("h3".into(), "h4".into());
    v.nodes
        .get_mut("h3")
        .unwrap()
        .record_mut()
        .unwrap()
        .relays
        .insert("h1".into(), "h2".into());
    let at = |me: &str, peer: &str, kept: &str| {
        let mine = v.nodes[me].record.as_ref().unwrap().health.clone();
        via(Graph::new(&v, me, &mine, Backend::Auto).route(peer, Some(kept)))
    };
    assert_eq!(at("h1", "h3", "h4"), "h4");
    assert_eq!(at("h3", "h1", "h2"), "h4");
    // The first end's choice unfit: the other's stands for both.
    let mut v2 = v.clone();
    v2.nodes.get_mut("h4").unwrap().alive = false;
    let mine = v2.nodes["h3"].record.as_ref().unwrap().health.clone();
    assert_eq!(
        via(Graph::new(&v2, "h3", &mine, Backend::Auto).route("h1", Some("h2"))),
        "h2"
    );
}
