//! The lab's side of policies: the `muslin policy` and `muslin label`
//! commands `up` runs, and what the check expects of a policy set. Pure:
//! `ops` runs what these functions build and gathers what they judge.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use muslin_model::policy::{self, End, Member, NamedPort, Policy, Protocol, Rule};

use crate::probe::Proto;

/// `muslin label ns:NAME k=v ...` arguments (after the binary); `None`
/// for a namespace without labels (the command wants at least one).
pub fn label_namespace_args(
    namespace: &str,
    labels: &BTreeMap<String, String>,
    socket: &Path,
) -> Option<Vec<String>> {
    if labels.is_empty() {
        return None;
    }
    let mut a = vec!["label".to_string(), format!("ns:{namespace}")];
    a.extend(labels.iter().map(|(k, v)| format!("{k}={v}")));
    a.extend(["--socket".into(), socket.display().to_string()]);
    Some(a)
}

/// `muslin policy apply` arguments for the policy file at `file`.
pub fn apply_args(file: &Path, socket: &Path) -> Vec<String> {
    [
        "policy",
        "apply",
        "-f",
        &file.display().to_string(),
        "--socket",
        &socket.display().to_string(),
    ]
    .map(String::from)
    .to_vec()
}

/// The policies in force and the namespaces' labels: all the check needs
/// besides the endpoints.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    pub policies: Vec<Policy>,
    /// Labels set on namespaces; each namespace also carries its name
    /// (`policy::NAMESPACE_NAME_LABEL`), as the agent gives it.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

/// A container as policies see it in one network.
#[derive(Debug, Clone)]
pub struct PolicyEnd<'a> {
    pub network: &'a str,
    pub namespace: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub ports: &'a BTreeMap<String, NamedPort>,
    pub address: IpAddr,
}

/// What a probe's target is to policies.
#[derive(Debug, Clone)]
pub enum Target<'a> {
    Container(PolicyEnd<'a>),
    /// A host's address; `own` when it is the source's host.
    Host {
        address: IpAddr,
        own: bool,
    },
}

impl PolicySet {
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    fn ns_labels(&self, ns: &str) -> BTreeMap<String, String> {
        let mut l = self.namespaces.get(ns).cloned().unwrap_or_default();
        l.insert(policy::NAMESPACE_NAME_LABEL.into(), ns.into());
        l
    }

    /// The protocols of `protos` the policies deny from `from` to `to` on
    /// `port`. Judged only between IPv4 addresses: policies are IPv4.
    pub fn denied(&self, from: &PolicyEnd, to: &Target, protos: &[Proto], port: u16) -> Vec<Proto> {
        if self.is_empty() {
            return vec![];
        }
        let IpAddr::V4(from_addr) = from.address else {
            return vec![];
        };
        let no_ports = BTreeMap::new();
        let no_labels = BTreeMap::new();
        let (to_end, egress_only) = match to {
            Target::Container(t) => {
                let IpAddr::V4(a) = t.address else {
                    return vec![];
                };
                (end_of(t, a), false)
            }
            // A pod's traffic to its own host never passes the policy
            // table (Kubernetes wants it allowed).
            Target::Host { own: true, .. } => return vec![],
            Target::Host {
                address: IpAddr::V4(a),
                own: false,
            } => {
                // A host is no endpoint: only the source's egress rules
                // can judge it, and only by address. A network name no
                // endpoint has keeps endpoint peers from matching it.
                let member = Member {
                    network: "",
                    namespace: "",
                    labels: &no_labels,
                };
                let end = End {
                    member,
                    addr: *a,
                    ports: &no_ports,
                };
                (end, true)
            }
            Target::Host { .. } => return vec![],
        };
        let from_end = end_of(from, from_addr);
        let ns = |n: &str| self.ns_labels(n);
        let tcp_udp = if egress_only {
            egress_view(&self.policies)
        } else {
            self.policies.clone()
        };
        let portless = port_free_view(&tcp_udp);
        protos
            .iter()
            .copied()
            .filter(|pr| {
                let allowed = match pr {
                    Proto::Tcp => {
                        policy::allows(&tcp_udp, &from_end, &to_end, Protocol::Tcp, port, &ns)
                    }
                    Proto::Udp => {
                        policy::allows(&tcp_udp, &from_end, &to_end, Protocol::Udp, port, &ns)
                    }
                    // Neither TCP, UDP nor SCTP: only rules without ports
                    // match them, and those match every protocol.
                    Proto::Icmp | Proto::Raw => {
                        policy::allows(&portless, &from_end, &to_end, Protocol::Tcp, port, &ns)
                    }
                };
                !allowed
            })
            .collect()
    }
}

fn end_of<'a>(e: &PolicyEnd<'a>, addr: Ipv4Addr) -> End<'a> {
    End {
        member: Member {
            network: e.network,
            namespace: e.namespace,
            labels: e.labels,
        },
        addr,
        ports: e.ports,
    }
}

/// The policies as they judge a protocol that has no ports (ICMP, raw
/// IP): a rule that names ports cannot match it, so it is dropped, while
/// the policy still selects, and so isolates, what it did.
pub fn port_free_view(policies: &[Policy]) -> Vec<Policy> {
    let keep = |rules: &[Rule]| -> Vec<Rule> {
        rules
            .iter()
            .filter(|r| r.ports.is_empty())
            .cloned()
            .collect()
    };
    policies
        .iter()
        .map(|p| Policy {
            ingress: keep(&p.ingress),
            egress: keep(&p.egress),
            ..p.clone()
        })
        .collect()
}

/// The policies' egress side alone: for a destination that is no
/// endpoint, which no ingress policy protects.
fn egress_view(policies: &[Policy]) -> Vec<Policy> {
    policies
        .iter()
        .filter(|p| p.applies(policy::Direction::Egress))
        .map(|p| Policy {
            types: vec![policy::Direction::Egress],
            ingress: vec![],
            ..p.clone()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policies of examples/policy.toml, as `up` applies them.
    fn shop() -> String {
        crate::topology::Topology::parse(include_str!("../../../examples/policy.toml"))
            .unwrap()
            .policy_file()
            .unwrap()
    }

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    struct Pod {
        namespace: &'static str,
        labels: BTreeMap<String, String>,
        ports: BTreeMap<String, NamedPort>,
        address: IpAddr,
    }

    fn pod(namespace: &'static str, kv: &[(&str, &str)], address: &str) -> Pod {
        Pod {
            namespace,
            labels: labels(kv),
            ports: BTreeMap::new(),
            address: address.parse().unwrap(),
        }
    }

    impl Pod {
        fn end(&self) -> PolicyEnd<'_> {
            PolicyEnd {
                network: "default",
                namespace: self.namespace,
                labels: &self.labels,
                ports: &self.ports,
                address: self.address,
            }
        }
    }

    fn set(text: &str) -> PolicySet {
        PolicySet {
            policies: policy::parse_document(text, policy::Format::Toml).unwrap(),
            namespaces: BTreeMap::from([("other".to_string(), labels(&[("zone", "untrusted")]))]),
        }
    }

    const ALL: [Proto; 4] = [Proto::Tcp, Proto::Udp, Proto::Icmp, Proto::Raw];

    fn names(v: Vec<Proto>) -> Vec<&'static str> {
        v.into_iter().map(Proto::name).collect()
    }

    #[test]
    fn the_shop_example_denies_what_its_policies_say() {
        let s = set(&shop());
        let mut db = pod("shop", &[("app", "db")], "10.244.1.2");
        db.ports.insert(
            "probe".into(),
            NamedPort {
                protocol: Protocol::Tcp,
                port: 7777,
            },
        );
        let web = pod("shop", &[("app", "web")], "10.244.0.2");
        let client = pod("shop", &[("role", "frontend")], "10.244.0.3");
        let intruder = pod("other", &[("role", "frontend")], "10.244.1.3");
        let denied = |from: &Pod, to: &Pod| {
            names(s.denied(&from.end(), &Target::Container(to.end()), &ALL, 7777))
        };
        // db: TCP on its named probe port from web only; no ICMP (the only
        // rule names a port), no UDP.
        assert_eq!(denied(&web, &db), ["udp", "icmp", "ip253"]);
        assert_eq!(denied(&client, &db), ["tcp", "udp", "icmp", "ip253"]);
        // web: anything from the frontend: a rule without ports.
        assert!(denied(&client, &web).is_empty());
        assert_eq!(denied(&db, &web).len(), 4);
        // The same labels in another namespace are not the frontend, and
        // the guard rail denies its namespace everywhere, even at a pod no
        // allow policy isolates.
        assert_eq!(denied(&intruder, &web).len(), 4);
        assert_eq!(denied(&intruder, &client).len(), 4);
        // Egress is not isolated anywhere, and the intruder isolated by
        // nothing: the shop reaches it.
        assert!(denied(&client, &intruder).is_empty());
        assert!(denied(&db, &intruder).is_empty());
        assert!(denied(&web, &client).is_empty());
        // Ingress-only policies never deny a pod's way to a host.
        for own in [true, false] {
            let host = Target::Host {
                address: "192.168.56.11".parse().unwrap(),
                own,
            };
            assert!(s.denied(&intruder.end(), &host, &ALL, 7777).is_empty());
        }
        // With the port the policy names elsewhere, web gets nothing.
        assert_eq!(
            names(s.denied(
                &web.end(),
                &Target::Container(db.end()),
                &[Proto::Tcp],
                8080
            )),
            ["tcp"]
        );
        // No policies, nothing denied.
        assert!(PolicySet::default()
            .denied(&intruder.end(), &Target::Container(db.end()), &ALL, 7777)
            .is_empty());
    }

    #[test]
    fn hosts_are_judged_by_egress_rules_on_their_address_unless_they_are_the_pods_own() {
        let s = set(r#"
[[policy]]
name = "out"
namespace = "shop"
podSelector = {}
policyTypes = ["Egress"]
egress = [{ to = [{ ipBlock = { cidr = "192.168.56.0/24", except = ["192.168.56.12/32"] } }], ports = [{ protocol = "UDP" }] }, { to = [{ podSelector = {} }] }]
"#);
        let pod_ = pod("shop", &[], "10.244.0.2");
        let host = |a: &str, own| Target::Host {
            address: a.parse().unwrap(),
            own,
        };
        assert_eq!(
            names(s.denied(&pod_.end(), &host("192.168.56.11", false), &ALL, 7777)),
            ["tcp", "icmp", "ip253"],
            "UDP to the block only; a pod peer rule never matches a host"
        );
        assert_eq!(
            s.denied(&pod_.end(), &host("192.168.56.12", false), &ALL, 7777)
                .len(),
            4
        );
        assert!(s
            .denied(&pod_.end(), &host("192.168.56.12", true), &ALL, 7777)
            .is_empty());
        // Pods of its namespace are reached over everything.
        let peer = pod("shop", &[], "10.244.1.9");
        assert!(s
            .denied(&pod_.end(), &Target::Container(peer.end()), &ALL, 7777)
            .is_empty());
    }

    #[test]
    fn the_port_free_view_keeps_isolation_but_no_port_rule() {
        let p = policy::parse_document(&shop(), policy::Format::Toml).unwrap();
        let v = port_free_view(&p);
        assert_eq!(v.len(), 3);
        assert!(v[0].ingress.is_empty(), "db's only rule names a port");
        assert_eq!(v[0].types, p[0].types, "db stays isolated");
        assert_eq!(v[1].ingress, p[1].ingress);
        assert_eq!(v[2], p[2]);
    }

    #[test]
    fn commands_are_the_clis() {
        let s = Path::new("/run/muslin/lab/x/h1/agent.sock");
        assert_eq!(
            label_namespace_args("shop", &labels(&[("team", "a"), ("zone", "b")]), s)
                .unwrap()
                .join(" "),
            "label ns:shop team=a zone=b --socket /run/muslin/lab/x/h1/agent.sock"
        );
        assert!(label_namespace_args("shop", &BTreeMap::new(), s).is_none());
        assert_eq!(
            apply_args(Path::new("/run/muslin/lab/x/policies.toml"), s).join(" "),
            "policy apply -f /run/muslin/lab/x/policies.toml --socket /run/muslin/lab/x/h1/agent.sock"
        );
    }
}
