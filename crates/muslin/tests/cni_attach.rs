//! ADD, CHECK and DEL driven like a runtime drives them, against the real
//! kernel, checked against the spec and with real traffic.

mod common;

use common::*;
use serde_json::Value;

fn assert_result_shape(r: &Value, version: &str, netns: &str, block_prefix: &str) {
    assert_eq!(r["cniVersion"], version);
    let ifs = r["interfaces"].as_array().unwrap();
    assert_eq!(ifs.len(), 2, "host and container interface: {r}");
    assert!(ifs[0]["name"].as_str().unwrap().starts_with("msl"));
    assert!(ifs[0].get("sandbox").is_none(), "host side has no sandbox");
    assert_eq!(ifs[0]["mac"], "ee:ee:ee:ee:ee:ee");
    assert_eq!(ifs[1]["name"], "eth0");
    assert_eq!(ifs[1]["sandbox"], netns);
    assert_eq!(ifs[1]["mac"].as_str().unwrap().len(), 17);
    let ip = &r["ips"][0];
    assert!(
        ip["address"].as_str().unwrap().starts_with(block_prefix),
        "{ip}"
    );
    assert!(ip["address"].as_str().unwrap().ends_with("/32"));
    assert_eq!(ip["gateway"], "169.254.1.1");
    assert_eq!(ip["interface"], 1);
    assert_eq!(
        ip.get("version").is_some(),
        version == "0.4.0",
        "0.4.0 tags the family"
    );
    assert_eq!(
        ifs[1].get("mtu").is_some(),
        version == "1.1.0",
        "1.1.0 adds mtu"
    );
    assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
    assert_eq!(r["routes"][0]["gw"], "169.254.1.1");
    assert!(r["dns"].is_object());
}

#[test]
fn add_gives_spec_results_and_containers_reach_each_other_and_the_host() {
    let host = Host::with_args(&["10.91.0.0/24"], &["--mtu", "1400"]);
    let c1 = Netns::new("c1");
    let c2 = Netns::new("c2");
    let c3 = Netns::new("c3");
    let mut ips = vec![];
    for (c, v) in [(&c1, "0.4.0"), (&c2, "1.0.0"), (&c3, "1.1.0")] {
        let id = unique("ctr");
        let (r, code) = host.cni("muslin", "ADD", &id, Some(&c.path()), "eth0", &host.conf(v));
        assert_eq!(code, 0, "{r}");
        assert_result_shape(&r, v, &c.path().display().to_string(), "10.91.0.");
        ips.push(result_ip(&r));
    }
    // The container end: /32, up, MTU from the agent; no shared L2.
    let link = &c1.ip_json(&["link", "show", "eth0"])[0];
    assert_eq!(link["mtu"], 1400);
    assert!(link["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    let addr = &c1.ip_json(&["addr", "show", "eth0"])[0]["addr_info"][0];
    assert_eq!(addr["prefixlen"], 32);
    let host_side = host.our_links();
    assert_eq!(host_side.len(), 3);
    for l in &host_side {
        assert_eq!(host.ns.ip_json(&["link", "show", l])[0]["mtu"], 1400);
    }
    assert_eq!(
        host.ns.our_routes().len(),
        3,
        "one host route per container"
    );

    let _s2 = ProbeServer::start(&c2, 7777);
    let _sh = ProbeServer::start(&host.ns, 7777);
    let _s1 = ProbeServer::start(&c1, 7777);
    let all = "tcp,udp,icmp,ip253";
    c1.probe(&ips[1], all).expect("container to container");
    c3.probe(&ips[1], all)
        .expect("container to container (another version)");
    c1.probe(HOST_ADDR, all).expect("container to host");
    host.ns.probe(&ips[0], all).expect("host to container");
}

#[test]
fn check_detects_a_deleted_route_or_address() {
    let host = Host::new(&["10.92.0.0/24"]);
    for broken in ["route", "address", "host-route"] {
        let c = Netns::new("chk");
        let id = unique("chk");
        let r = host.add(&id, &c);
        let mut conf = host.conf("1.1.0");
        conf["prevResult"] = r.clone();
        let check = || host.cni("muslin", "CHECK", &id, Some(&c.path()), "eth0", &conf);
        assert_eq!(check().1, 0, "CHECK right after ADD passes");
        let ip = result_ip(&r);
        match broken {
            "route" => {
                c.ip(&["route", "del", "default"]);
            }
            "address" => {
                c.ip(&["addr", "del", &format!("{ip}/32"), "dev", "eth0"]);
            }
            _ => {
                host.ns.ip(&["route", "del", &format!("{ip}/32")]);
            }
        }
        let (v, code) = check();
        assert_ne!(code, 0, "CHECK must fail after deleting the {broken}");
        assert_eq!(v["code"], 102, "{v}");
        host.del(&id, Some(&c));
    }
}

#[test]
fn del_leaves_no_trace_and_is_idempotent() {
    let host = Host::new(&["10.93.0.0/24"]);
    let c = Netns::new("del");
    let id = unique("del");
    let before_links = host.ns.links();
    host.add(&id, &c);
    assert_eq!(host.allocations().len(), 1);
    host.del(&id, Some(&c));
    assert!(
        host.allocations().is_empty(),
        "the allocation is released when DEL returns"
    );
    eventually("no link is left on the host", || {
        host.ns.links() == before_links
    });
    assert!(host.ns.our_routes().is_empty(), "no route left on the host");
    assert_eq!(c.links(), vec!["lo"], "no interface left in the container");
    assert!(c.ip_json(&["route", "show"]).as_array().unwrap().is_empty());
    assert!(host.allocations().is_empty(), "no allocation left");
    // Again, and again without a namespace: both succeed.
    host.del(&id, Some(&c));
    host.del(&id, None);

    // DEL after the runtime already destroyed the namespace.
    let c2 = Netns::new("gone");
    let id2 = unique("gone");
    host.add(&id2, &c2);
    let path = c2.path();
    drop(c2);
    let (v, code) = host.cni(
        "muslin",
        "DEL",
        &id2,
        Some(&path),
        "eth0",
        &host.conf("1.1.0"),
    );
    assert_eq!(code, 0, "{v}");
    assert!(host.allocations().is_empty());
    eventually("the veth is gone", || host.our_links().is_empty());
}

#[test]
fn version_is_answered_without_agent_or_namespace() {
    let host = Host::new(&["10.94.0.0/24"]);
    let env = vec![
        ("CNI_COMMAND".to_string(), "VERSION".to_string()),
        ("CNI_NETNS".to_string(), "dummy".to_string()),
    ];
    let (v, code) = host.cni_raw("muslin", &env, br#"{"cniVersion":"1.0.0"}"#);
    assert_eq!(code, 0);
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(
        v["supportedVersions"],
        serde_json::json!(["0.4.0", "1.0.0", "1.1.0"])
    );
    let (_, code) = host.cni("muslin", "STATUS", "", None, "", &host.conf("1.1.0"));
    assert_eq!(
        code, 0,
        "STATUS succeeds while the agent is up and has addresses"
    );
}
