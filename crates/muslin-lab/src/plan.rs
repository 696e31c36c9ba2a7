//! A topology resolved into everything `build` creates: namespaces,
//! bridges, veths, addresses, routes, filters, blocks and agent flags.
//! Pure, so the lab's shape is unit-tested without touching the kernel.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use muslin_model::policy::NamedPort;
use serde::{Deserialize, Serialize};

use crate::names::{container_ns, node_ns, switch_ns};
use crate::topology::{Nic, Topology, TopologyError, DEFAULT_NETWORK};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabPlan {
    pub name: String,
    pub pod_cidr: IpNet,
    pub block_prefix: u8,
    pub switch_ns: String,
    pub bridges: Vec<Bridge>,
    pub nodes: Vec<NodePlan>,
    /// Switch ports between which frames are dropped.
    pub blocked: Vec<(String, String)>,
    /// Networks besides the default one, created at `up`; none in records
    /// from before networks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkPlan>,
    /// The topology's `[[policy]]` tables as the policy file `up` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_file: Option<String>,
    /// Labels of the topology's `[[namespace]]` tables, set at `up`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

/// A `[[network]]` table as `up` creates it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPlan {
    pub name: String,
    pub subnet: IpNet,
    pub block_size: Option<u8>,
    pub backend: Option<String>,
    pub vni: Option<u32>,
    pub isolated_from_host: bool,
}

impl LabPlan {
    /// A network's subnet; the default network's is the pod CIDR.
    pub fn subnet(&self, network: &str) -> Option<IpNet> {
        if network == DEFAULT_NETWORK {
            return Some(self.pod_cidr);
        }
        self.networks
            .iter()
            .find(|n| n.name == network)
            .map(|n| n.subnet)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bridge {
    pub name: String,
    pub segment: String,
    pub mtu: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlan {
    pub name: String,
    pub ns: String,
    pub router: bool,
    pub nics: Vec<NicPlan>,
    pub routes: Vec<RoutePlan>,
    /// (gateway, interface) of the default route.
    pub default_route: Option<(IpAddr, String)>,
    /// Hosts only: the containers made at `up` and agent flags.
    pub containers: Vec<String>,
    pub agent_args: Vec<String>,
    /// Networks of the containers not on the default network alone, in
    /// attachment order (eth0, eth1, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub container_networks: BTreeMap<String, Vec<String>>,
    /// What policies see of the containers that set any of it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub container_meta: BTreeMap<String, ContainerMeta>,
}

/// A container's labels, namespace and named ports, as the plugin is given
/// them at ADD.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerMeta {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, NamedPort>,
    /// Its names besides its own for the name service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

impl ContainerMeta {
    fn is_empty(&self) -> bool {
        self == &ContainerMeta::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicPlan {
    pub ifname: String,
    pub address: IpNet,
    pub mtu: u32,
    pub segment: String,
    pub per_host: bool,
    pub bridge: String,
    /// The veth end on the switch.
    pub port: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutePlan {
    pub dst: IpNet,
    pub via: IpAddr,
    pub dev: String,
}

impl NodePlan {
    /// The address other hosts and containers reach this node at: its first
    /// address on a shared segment.
    pub fn address(&self) -> Option<IpAddr> {
        self.nics
            .iter()
            .find(|n| !n.per_host)
            .or(self.nics.first())
            .map(|n| n.address.addr())
    }

    pub fn container_ns(&self, lab: &str, container: &str) -> String {
        container_ns(lab, &self.name, container)
    }

    /// A container's networks in attachment order; the default network
    /// alone for containers the plan does not list (`lab run`'s, and all of
    /// a record from before networks).
    pub fn networks_of(&self, container: &str) -> Vec<String> {
        self.container_networks
            .get(container)
            .cloned()
            .unwrap_or_else(|| vec![DEFAULT_NETWORK.to_string()])
    }

    /// A container's labels, namespace and named ports; none for
    /// containers the plan does not list.
    pub fn meta_of(&self, container: &str) -> ContainerMeta {
        self.container_meta
            .get(container)
            .cloned()
            .unwrap_or_default()
    }

    /// A container's namespace: the host's name unless the topology gives
    /// one, so labs from before namespaces keep theirs.
    pub fn namespace_of(&self, container: &str) -> String {
        self.container_meta
            .get(container)
            .and_then(|m| m.namespace.clone())
            .unwrap_or_else(|| self.name.clone())
    }
}

fn nth(net: &IpNet, n: u32) -> Option<IpAddr> {
    match net {
        IpNet::V4(v) => {
            let a = u32::from(v.network()).checked_add(n)?;
            let a = std::net::Ipv4Addr::from(a);
            v.contains(&a).then_some(IpAddr::V4(a))
        }
        IpNet::V6(v) => {
            let a = u128::from(v.network()).checked_add(u128::from(n))?;
            let a = std::net::Ipv6Addr::from(a);
            v.contains(&a).then_some(IpAddr::V6(a))
        }
    }
}

/// Automatic addresses: routers from .1, hosts from .11 in lab order; on a
/// per-host segment every host is .15, as in a hypervisor's NAT network.
struct Addresser {
    /// Next candidate per (segment, first address of the role).
    next: BTreeMap<(String, u32), u32>,
    used: BTreeMap<String, Vec<IpAddr>>,
}

impl Addresser {
    fn take(&mut self, seg: &crate::topology::Segment, first: u32) -> Option<IpAddr> {
        let name = seg.name.get_ref().clone();
        if seg.per_host {
            return nth(&seg.cidr, 15);
        }
        let n = self.next.entry((name.clone(), first)).or_insert(first);
        loop {
            let a = nth(&seg.cidr, *n)?;
            *n += 1;
            if !self.used.get(&name).is_some_and(|u| u.contains(&a)) {
                self.used.entry(name).or_default().push(a);
                return Some(a);
            }
        }
    }
}

pub fn resolve(
    lab: &str,
    t: &Topology,
    extra_agent_args: &[String],
) -> Result<LabPlan, TopologyError> {
    let segs: BTreeMap<&str, (usize, &crate::topology::Segment)> = t
        .segments
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.get_ref().as_str(), (i, s)))
        .collect();
    let mut addr = Addresser {
        next: BTreeMap::new(),
        used: BTreeMap::new(),
    };
    // Fixed addresses first, so automatic ones avoid them.
    for nic in t
        .routers
        .iter()
        .flat_map(|r| &r.nics)
        .chain(t.hosts.iter().flat_map(|h| &h.nics))
    {
        if let Some(a) = &nic.address {
            let seg = segs[nic.segment.get_ref().as_str()].1;
            if !seg.per_host {
                let used = addr.used.entry(seg.name.get_ref().clone()).or_default();
                if used.contains(a.get_ref()) {
                    return Err(TopologyError {
                        line: None,
                        field: "nic.address".into(),
                        msg: format!(
                            "{} is used twice on segment {}",
                            a.get_ref(),
                            seg.name.get_ref()
                        ),
                    });
                }
                used.push(*a.get_ref());
            }
        }
    }
    let mut bridges: Vec<Bridge> = Vec::new();
    let mut nodes: Vec<NodePlan> = Vec::new();
    let no_room = |seg: &str| TopologyError {
        line: None,
        field: "segment.cidr".into(),
        msg: format!("segment {seg} has no free address left"),
    };

    let mut make_nics = |node_idx: usize,
                         nics: &[Nic],
                         first: u32,
                         addr: &mut Addresser|
     -> Result<Vec<NicPlan>, TopologyError> {
        nics.iter()
            .enumerate()
            .map(|(j, n)| {
                let (si, seg) = segs[n.segment.get_ref().as_str()];
                let a = match &n.address {
                    Some(a) => *a.get_ref(),
                    None => addr
                        .take(seg, first)
                        .ok_or_else(|| no_room(seg.name.get_ref()))?,
                };
                let bridge = if seg.per_host {
                    format!("s{si}h{node_idx}")
                } else {
                    format!("s{si}")
                };
                if !bridges.iter().any(|b| b.name == bridge) {
                    bridges.push(Bridge {
                        name: bridge.clone(),
                        segment: seg.name.get_ref().clone(),
                        mtu: seg.mtu,
                    });
                }
                Ok(NicPlan {
                    ifname: format!("eth{j}"),
                    address: IpNet::new(a, seg.cidr.prefix_len()).expect("prefix of a valid net"),
                    mtu: n.mtu.unwrap_or(seg.mtu),
                    segment: seg.name.get_ref().clone(),
                    per_host: seg.per_host,
                    bridge,
                    port: format!("p{node_idx}n{j}"),
                })
            })
            .collect()
    };

    for r in &t.routers {
        let idx = nodes.len();
        let nics = make_nics(idx, &r.nics, 1, &mut addr)?;
        nodes.push(NodePlan {
            name: r.name.get_ref().clone(),
            ns: node_ns(lab, r.name.get_ref()),
            router: true,
            nics,
            routes: vec![],
            default_route: None,
            containers: vec![],
            agent_args: vec![],
            container_networks: BTreeMap::new(),
            container_meta: BTreeMap::new(),
        });
    }
    for h in &t.hosts {
        for name in t.expand(h) {
            let idx = nodes.len();
            let nics = make_nics(idx, &h.nics, 11, &mut addr)?;
            let mut args = flags(&t.agent);
            args.extend(flags(&h.agent));
            args.extend(extra_agent_args.iter().cloned());
            let containers = h.containers.expand();
            nodes.push(NodePlan {
                ns: node_ns(lab, &name),
                name,
                router: false,
                nics,
                routes: vec![],
                default_route: None,
                containers: containers.iter().map(|(c, _)| c.clone()).collect(),
                agent_args: args,
                container_networks: containers
                    .into_iter()
                    .filter(|(_, nets)| nets != &[DEFAULT_NETWORK])
                    .collect(),
                container_meta: h
                    .containers
                    .specs()
                    .iter()
                    .map(|c| {
                        let meta = ContainerMeta {
                            labels: c.labels(),
                            namespace: c.namespace.as_ref().map(|n| n.get_ref().clone()),
                            ports: c.named_ports(),
                            aliases: c.aliases(),
                        };
                        (c.name.get_ref().clone(), meta)
                    })
                    .filter(|(_, m)| !m.is_empty())
                    .collect(),
            });
        }
    }
    // Routes: hosts reach segments they are not on through a router that
    // shares a segment with them; default routes go to the segment gateway.
    let routers: Vec<NodePlan> = nodes.iter().filter(|n| n.router).cloned().collect();
    let default_nics: BTreeMap<String, String> = t
        .hosts
        .iter()
        .flat_map(|h| t.expand(h).into_iter().map(move |n| (n, h)))
        .filter_map(|(n, h)| {
            h.nics
                .iter()
                .position(|x| x.default_route)
                .map(|j| (n, format!("eth{j}")))
        })
        .collect();
    for node in nodes.iter_mut().filter(|n| !n.router) {
        let on: Vec<String> = node.nics.iter().map(|n| n.segment.clone()).collect();
        for r in &routers {
            for shared in node.nics.iter().filter(|n| !n.per_host) {
                let Some(via) = r.nics.iter().find(|rn| rn.segment == shared.segment) else {
                    continue;
                };
                for other in r.nics.iter().filter(|rn| !on.contains(&rn.segment)) {
                    let dst = other.address.trunc();
                    if !node.routes.iter().any(|x| x.dst == dst) {
                        node.routes.push(RoutePlan {
                            dst,
                            via: via.address.addr(),
                            dev: shared.ifname.clone(),
                        });
                    }
                }
            }
        }
        if let Some(dev) = default_nics.get(&node.name) {
            let nic = node
                .nics
                .iter()
                .find(|n| &n.ifname == dev)
                .expect("named nic");
            let seg = segs[nic.segment.as_str()].1;
            let gw = seg
                .gateway
                .or_else(|| {
                    routers
                        .iter()
                        .flat_map(|r| &r.nics)
                        .find(|rn| rn.segment == nic.segment)
                        .map(|rn| rn.address.addr())
                })
                .or_else(|| nth(&seg.cidr, 1))
                .expect("a segment has a first address");
            node.default_route = Some((gw, dev.clone()));
        }
    }
    let mut blocked = Vec::new();
    for b in &t.blocked {
        let [a, z] = [&b.hosts.get_ref()[0], &b.hosts.get_ref()[1]];
        let na = nodes.iter().find(|n| &n.name == a).expect("validated");
        let nz = nodes.iter().find(|n| &n.name == z).expect("validated");
        for pa in &na.nics {
            for pz in nz.nics.iter().filter(|pz| pz.bridge == pa.bridge) {
                if b.segment
                    .as_ref()
                    .is_none_or(|s| s.get_ref() == &pa.segment)
                {
                    blocked.push((pa.port.clone(), pz.port.clone()));
                }
            }
        }
    }
    Ok(LabPlan {
        name: lab.to_string(),
        pod_cidr: t.pod_cidr,
        block_prefix: t.block_prefix,
        switch_ns: switch_ns(lab),
        bridges,
        nodes,
        blocked,
        networks: t
            .networks
            .iter()
            .map(|n| NetworkPlan {
                name: n.name.get_ref().clone(),
                subnet: *n.subnet.get_ref(),
                block_size: n.block_size,
                backend: n.backend.map(|b| b.as_str().to_string()),
                vni: n.vni,
                isolated_from_host: n.isolated_from_host,
            })
            .collect(),
        policy_file: t.policy_file(),
        namespaces: t
            .namespaces
            .iter()
            .map(|n| {
                let labels = n.labels.as_ref().map(|l| l.get_ref().clone());
                (n.name.get_ref().clone(), labels.unwrap_or_default())
            })
            .collect(),
    })
}

/// `key = value` agent settings as command-line flags.
fn flags(table: &BTreeMap<String, toml::Value>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in table {
        match v {
            toml::Value::Boolean(true) => out.push(format!("--{k}")),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                for i in items {
                    out.push(format!("--{k}"));
                    out.push(scalar(i));
                }
            }
            other => {
                out.push(format!("--{k}"));
                out.push(scalar(other));
            }
        }
    }
    out
}

fn scalar(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &str) -> LabPlan {
        resolve("lab", &Topology::parse(text).unwrap(), &[]).unwrap()
    }

    #[test]
    fn default_lab_shape() {
        let p = plan(&Topology::default_text(3));
        let hosts: Vec<_> = p.nodes.iter().filter(|n| !n.router).collect();
        assert_eq!(hosts.len(), 3);
        for (i, h) in hosts.iter().enumerate() {
            assert_eq!(h.ns, format!("lab-h{}", i + 1));
            // Every host has the same management address, with the default route.
            assert_eq!(h.nics[0].address.to_string(), "10.0.2.15/24");
            assert_eq!(
                h.default_route,
                Some(("10.0.2.2".parse().unwrap(), "eth0".to_string()))
            );
            assert_eq!(
                h.nics[1].address.to_string(),
                format!("192.168.56.{}/24", 11 + i)
            );
            assert_eq!(
                h.address().unwrap().to_string(),
                format!("192.168.56.{}", 11 + i)
            );
            assert_eq!(h.containers, ["c1", "c2"]);
        }
        // Management copies are private: one bridge per host, plus the cluster bridge.
        assert_eq!(p.bridges.len(), 4);
        assert_eq!(hosts[0].nics[0].bridge, "s0h0");
        assert_eq!(hosts[1].nics[1].bridge, "s1");
    }

    #[test]
    fn router_gives_routes_to_other_subnets() {
        let p = plan(include_str!("../../../examples/cross-subnet.toml"));
        let r = p.nodes.iter().find(|n| n.router).unwrap();
        assert_eq!(r.nics[0].address.addr().to_string(), "192.168.10.1");
        let h1 = p.nodes.iter().find(|n| n.name == "h1").unwrap();
        assert_eq!(h1.nics[0].address.to_string(), "192.168.10.11/24");
        assert_eq!(
            h1.routes,
            vec![RoutePlan {
                dst: "192.168.20.0/24".parse().unwrap(),
                via: "192.168.10.1".parse().unwrap(),
                dev: "eth0".into()
            }]
        );
    }

    #[test]
    fn networks_and_container_networks_are_planned() {
        let p = plan(
            r#"[[network]]
name = "red"
subnet = "10.50.0.0/16"
vni = 7
[[segment]]
name = "a"
cidr = "10.0.0.0/24"
[[host]]
name = "h"
count = 2
containers = [{ name = "c1", networks = ["red", "default"] }, { name = "c2" }]
[[host.nic]]
segment = "a"
"#,
        );
        assert_eq!(
            p.networks,
            [NetworkPlan {
                name: "red".into(),
                subnet: "10.50.0.0/16".parse().unwrap(),
                block_size: None,
                backend: None,
                vni: Some(7),
                isolated_from_host: false,
            }]
        );
        assert_eq!(p.subnet("red"), Some("10.50.0.0/16".parse().unwrap()));
        assert_eq!(p.subnet("default"), Some(p.pod_cidr));
        assert_eq!(p.subnet("blue"), None);
        for h in &p.nodes {
            assert_eq!(h.containers, ["c1", "c2"]);
            assert_eq!(h.networks_of("c1"), ["red", "default"]);
            assert_eq!(h.networks_of("c2"), ["default"]);
            // Containers added later by `lab run` are on the default network.
            assert_eq!(h.networks_of("web"), ["default"]);
        }
    }

    #[test]
    fn network_examples_plan() {
        for text in [
            include_str!("../../../examples/networks.toml"),
            include_str!("../../../examples/networks-routed.toml"),
        ] {
            let p = plan(text);
            let names: Vec<&str> = p.networks.iter().map(|n| n.name.as_str()).collect();
            assert_eq!(names, ["red", "blue", "green"]);
            let hosts: Vec<&NodePlan> = p.nodes.iter().filter(|n| !n.router).collect();
            assert!(hosts.len() >= 3);
            for h in hosts {
                assert_eq!(h.containers, ["red", "blue", "plain", "both"]);
                assert_eq!(h.networks_of("red"), ["red"]);
                assert_eq!(h.networks_of("blue"), ["blue"]);
                assert_eq!(h.networks_of("plain"), ["default"]);
                assert_eq!(h.networks_of("both"), ["red", "green"]);
            }
        }
    }

    #[test]
    fn labels_namespaces_ports_and_policies_are_planned() {
        let p = plan(
            r#"[[namespace]]
name = "shop"
labels = { team = "a" }
[[policy]]
name = "web"
namespace = "shop"
podSelector = { matchLabels = { app = "web" } }
[[segment]]
name = "a"
cidr = "10.0.0.0/24"
[[host]]
name = "h"
count = 2
containers = [{ name = "web", namespace = "shop", labels = { app = "web" }, ports = { http = 8080 }, aliases = ["www"] }, { name = "c2" }]
[[host.nic]]
segment = "a"
"#,
        );
        for h in &p.nodes {
            let web = h.meta_of("web");
            assert_eq!(web.labels["app"], "web");
            assert_eq!(web.ports["http"].port, 8080);
            assert_eq!(web.aliases, ["www"]);
            assert_eq!(h.namespace_of("web"), "shop");
            // Without a namespace, a container is in its host's, as before.
            assert_eq!(h.namespace_of("c2"), h.name);
            assert_eq!(h.meta_of("c2"), ContainerMeta::default());
            assert!(!h.container_meta.contains_key("c2"));
        }
        assert_eq!(p.namespaces["shop"]["team"], "a");
        assert!(p.policy_file.as_deref().unwrap().contains("[[policy]]"));
        // A plan without any of it records none of it.
        let v = serde_json::to_value(plan(&Topology::default_text(1))).unwrap();
        assert!(v.get("policy_file").is_none() && v.get("namespaces").is_none());
        assert!(v["nodes"][0].get("container_meta").is_none());
    }

    #[test]
    fn plans_from_before_networks_still_load() {
        let mut v = serde_json::to_value(plan(&Topology::default_text(1))).unwrap();
        v.as_object_mut().unwrap().remove("networks");
        for n in v["nodes"].as_array_mut().unwrap() {
            n.as_object_mut().unwrap().remove("container_networks");
        }
        let p: LabPlan = serde_json::from_value(v).unwrap();
        assert!(p.networks.is_empty());
        assert_eq!(p.nodes[0].networks_of("c1"), ["default"]);
    }

    #[test]
    fn blocked_pairs_become_port_pairs_and_agent_settings_flags() {
        let p = plan(
            r#"agent = { mtu = 1400 }
[[segment]]
name = "a"
cidr = "10.0.0.0/24"
[[host]]
name = "h"
count = 3
agent = { block = ["10.9.0.0/24"], verbose = true }
[[host.nic]]
segment = "a"
[[blocked]]
hosts = ["h1", "h3"]
"#,
        );
        assert_eq!(p.blocked, vec![("p0n0".to_string(), "p2n0".to_string())]);
        assert_eq!(
            p.nodes[0].agent_args,
            ["--mtu", "1400", "--block", "10.9.0.0/24", "--verbose"]
        );
    }
}
