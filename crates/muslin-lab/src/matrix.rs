//! `lab check` and the check `lab up` waits for: the matrix of a lab as
//! its agents see it now (the policies in force and the labels they
//! hold), sampled in big labs, and the causes of its failures.

use std::collections::BTreeMap;
use std::time::Duration;

use muslin_model::api::{Request, Response};
use muslin_model::cni::Dns;

use crate::check::{self, Endpoint, Matrix, Member};
use crate::ops::{ask, container_id};
use crate::plan::NodePlan;
use crate::policies::PolicySet;
use crate::probe::{Proto, DEFAULT_PORT};
use crate::registry::{self, LabRecord};
use crate::topology::DEFAULT_NETWORK;
use crate::{cause, diagnose, LabError};

/// Labels of attachments by (container id, interface), as their agents
/// hold them now.
type LiveLabels = BTreeMap<(String, String), BTreeMap<String, String>>;

/// The policies in force and the labels endpoints carry, read from the
/// agents rather than the topology: operators change both with `muslin
/// policy` and `muslin label` after `up`. Policies are cluster objects, so
/// the first agent that answers has them all; labels are each host's.
fn live_policies(rec: &LabRecord) -> Result<(PolicySet, LiveLabels), LabError> {
    let lab = &rec.plan.name;
    let mut policies = None;
    let mut last_error = String::from("no host runs an agent");
    for h in rec.agent_hosts() {
        match ask(lab, &h.name, &Request::PolicyList) {
            Ok(Response::Policies { policies: p }) => {
                policies = Some(p.into_iter().map(|s| s.policy).collect::<Vec<_>>());
                break;
            }
            Ok(other) => last_error = format!("{}: unexpected reply {other:?}", h.name),
            Err(e) => last_error = format!("{}: {e}", h.name),
        }
    }
    let policies = match policies {
        Some(p) => p,
        // Without policies of its own, a lab whose agents cannot say is
        // checked as one without policies, as before them.
        None if rec.plan.policy_file.is_none() => vec![],
        None => {
            return Err(LabError::Command {
                cmd: "policy list".into(),
                stderr: format!("no agent listed the policies in force: {last_error}"),
            })
        }
    };
    let set = PolicySet {
        policies,
        namespaces: rec.plan.namespaces.clone(),
    };
    let mut labels = LiveLabels::new();
    if set.is_empty() {
        return Ok((set, labels));
    }
    for h in rec.agent_hosts() {
        // A host that does not answer keeps the topology's labels.
        if let Ok(Response::Status(s)) = ask(lab, &h.name, &Request::Status) {
            for e in s.endpoints {
                labels.insert((e.key.container_id, e.key.ifname), e.labels);
            }
        }
    }
    Ok((set, labels))
}

/// How `lab check` chooses and explains its pairs.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Every pair, however big the lab.
    pub full: bool,
    /// The sample's seed, and about how many pairs it has.
    pub seed: u64,
    pub budget: usize,
    /// Look for the causes of failures (the first [`diagnose::MAX_PAIRS`]).
    pub diagnose: bool,
}

/// Labs with more hosts are checked on a sample, unless asked otherwise.
pub const SAMPLE_ABOVE_HOSTS: usize = 20;
/// A sample's size: enough that every container and host is in several
/// pairs, few enough for seconds on two cores.
pub const SAMPLE_PAIRS: usize = 2000;
/// Every source, destination and kind of pair is in at least this many.
pub const SAMPLE_EACH: usize = 2;

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            full: false,
            seed: 7,
            budget: SAMPLE_PAIRS,
            diagnose: true,
        }
    }
}

/// A pair's kind, for sampling: where the destination is from the
/// source's host (the same host, a host on a shared segment, one across
/// routers) and whether it is a host or a container, per network.
fn pair_class(rec: &LabRecord, p: &check::Probe) -> String {
    let host_of = |label: &str| label.split('/').next().unwrap_or(label).to_string();
    let (src, dst) = (host_of(&p.from), host_of(&p.to));
    let container = p.to.contains('/');
    let node = |n: &str| rec.plan.nodes.iter().find(|x| x.name == n);
    let shared = match (node(&src), node(&dst)) {
        (Some(a), Some(b)) => a
            .nics
            .iter()
            .any(|x| !x.per_host && b.nics.iter().any(|y| y.bridge == x.bridge)),
        _ => false,
    };
    let place = match (src == dst, shared, container) {
        (true, _, true) => "same host",
        (true, _, false) => "own host",
        (false, true, true) => "same segment",
        (false, true, false) => "host on the same segment",
        (false, false, true) => "across routers",
        (false, false, false) => "host across routers",
    };
    let what = match p.expect {
        check::Expect::Reach => place.to_string(),
        check::Expect::Isolated => "isolation".to_string(),
    };
    if p.network == DEFAULT_NETWORK {
        what
    } else {
        format!("{} {what}", p.network)
    }
}

/// Looks for the causes of the first failing pairs.
pub(crate) fn explain(rec: &LabRecord, m: &mut Matrix, before: Option<&(String, cause::Table)>) {
    let map = diagnose::Map::of(rec);
    let member_address = |label: &str, network: &str| {
        rec.containers
            .iter()
            .find(|c| format!("{}/{}", c.host, c.name) == label)
            .and_then(|c| c.address_in(network))
            .or_else(|| {
                rec.plan
                    .nodes
                    .iter()
                    .find(|n| n.name == label)
                    .and_then(NodePlan::address)
            })
    };
    let mut looked = 0;
    for p in m.pairs.iter_mut().filter(|p| !p.failed.is_empty()) {
        if looked == diagnose::MAX_PAIRS {
            break;
        }
        // A name alone failing says nothing of the path.
        let Some(proto) = p.failed.iter().find_map(|(pr, _)| Proto::parse(pr)) else {
            continue;
        };
        let (Some(src), Some(address)) = (
            member_address(&p.from, &p.network),
            member_address(&p.to, &p.network),
        ) else {
            continue;
        };
        looked += 1;
        let f = diagnose::Failing {
            from: &p.from,
            to: &p.to,
            src,
            address,
            default_network: p.network == DEFAULT_NETWORK,
            proto,
            port: DEFAULT_PORT,
        };
        p.cause = cause::judge(&diagnose::evidence(&map, &f, before));
    }
    m.looked_into = looked;
}

pub(crate) fn matrix(
    rec: &LabRecord,
    protos: &[Proto],
    dns: bool,
    timeout: Duration,
    opts: &CheckOptions,
) -> Result<Matrix, LabError> {
    let (set, live) = live_policies(rec)?;
    let lab = &rec.plan.name;
    let members: Vec<Member> = rec
        .containers
        .iter()
        .map(|c| {
            let (meta, namespace) = rec
                .plan
                .nodes
                .iter()
                .find(|n| n.name == c.host)
                .map(|n| (n.meta_of(&c.name), n.namespace_of(&c.name)))
                .unwrap_or_else(|| (Default::default(), c.host.clone()));
            let id = container_id(lab, &c.host, &c.name);
            Member {
                label: format!("{}/{}", c.host, c.name),
                ns: c.ns.clone(),
                addresses: c
                    .attachments()
                    .into_iter()
                    .filter_map(|a| Some((a.network, a.address?)))
                    .collect(),
                host: c.host.clone(),
                namespace,
                labels: c
                    .attachments()
                    .into_iter()
                    .map(|a| {
                        let l = live
                            .get(&(id.clone(), a.ifname))
                            .cloned()
                            .unwrap_or_else(|| meta.labels.clone());
                        (a.network, l)
                    })
                    .collect(),
                ports: meta.ports,
                name: c.name.clone(),
                dns: c
                    .attachments()
                    .into_iter()
                    .filter_map(|a| Some((a.network, name_service(a.dns.as_ref()?)?)))
                    .collect(),
            }
        })
        .filter(|m| !m.addresses.is_empty())
        .collect();
    let hosts: Vec<Endpoint> = rec
        .agent_hosts()
        .filter_map(|n| {
            Some(Endpoint {
                label: n.name.clone(),
                ns: n.ns.clone(),
                address: n.address()?,
            })
        })
        .collect();
    let subnets: Vec<(String, ipnet::IpNet)> =
        std::iter::once((DEFAULT_NETWORK.to_string(), rec.plan.pod_cidr))
            .chain(rec.plan.networks.iter().map(|n| (n.name.clone(), n.subnet)))
            .collect();
    // Hosts are targets on the default network only: whether they reach
    // another network depends on its `isolated-from-host` and on overlaps.
    let mut plan = check::plan(&members, &hosts, &subnets);
    let sampling = (!opts.full && hosts.len() > SAMPLE_ABOVE_HOSTS).then(|| {
        check::sample_plan(
            &mut plan,
            &|p| pair_class(rec, p),
            SAMPLE_EACH,
            opts.budget,
            opts.seed,
        )
    });
    check::expect_policies(&mut plan, &members, &hosts, &set, protos, DEFAULT_PORT);
    let before = diagnose::table(rec.plan.pod_cidr.addr());
    let mut m = check::run(plan, protos, dns, DEFAULT_PORT, timeout);
    m.policies = set.policies.iter().map(|p| p.key()).collect();
    m.sampling = sampling;
    if opts.diagnose && !m.ok() {
        explain(rec, &mut m, before.as_ref());
    }
    Ok(m)
}

/// The name service an attachment's ADD result names: its first
/// nameserver, and the cluster domain, the last of its search domains.
fn name_service(dns: &Dns) -> Option<check::NameService> {
    Some(check::NameService {
        resolver: *dns.nameservers.first()?,
        domain: dns
            .search
            .last()
            .cloned()
            .unwrap_or_else(|| muslin_model::dns::DEFAULT_DOMAIN.to_string()),
    })
}

/// `lab check`: the matrix (sampled above [`SAMPLE_ABOVE_HOSTS`]
/// hosts), over `protos` and, with `dns`, names; the causes of failures.
pub fn check(
    name: Option<&str>,
    protos: &[Proto],
    dns: bool,
    timeout: Duration,
) -> Result<Matrix, LabError> {
    check_with(name, protos, dns, timeout, &CheckOptions::default())
}

pub fn check_with(
    name: Option<&str>,
    protos: &[Proto],
    dns: bool,
    timeout: Duration,
    opts: &CheckOptions,
) -> Result<Matrix, LabError> {
    let lab = registry::pick(name)?;
    let rec = registry::lock(&lab)?.load()?;
    matrix(&rec, protos, dns, timeout, opts)
}
