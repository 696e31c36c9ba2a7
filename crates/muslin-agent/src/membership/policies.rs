//! Policies in the cluster loop: the cluster objects they are kept as (with
//! namespace labels), the operators' requests, and the enforcement of the
//! policies protecting this host's endpoints in its policy table.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use muslin_kernel::{Executor, Lane, OnFailure};
use muslin_model::api::PolicyStatus;
use muslin_model::cluster::{BlockClaim, ClusterView, EndpointRecord};
use muslin_model::cni::{CniError, ErrorCode};
use muslin_model::object::{self, ObjectKey, ObjectRecord};
use muslin_model::policy::{self, Format, Policy, NAMESPACE_KIND, POLICY_KIND};
use muslin_plan::nft::NftChange;
use muslin_plan::policy_nft::{self, PolicyTable};
use muslin_plan::{Change, Step};
use muslin_store::ClusterStore;
use tokio::sync::oneshot;

use super::Cluster;

/// Operators' requests about policies and namespace labels.
pub enum PolicyAsk {
    Apply {
        text: String,
        format: Format,
        reply: oneshot::Sender<Result<Vec<String>, CniError>>,
    },
    Delete {
        key: String,
        reply: oneshot::Sender<Result<(), CniError>>,
    },
    List(oneshot::Sender<Vec<PolicyStatus>>),
    NamespaceLabel {
        namespace: String,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
        reply: oneshot::Sender<Result<BTreeMap<String, String>, CniError>>,
    },
}

/// How far ahead of this node's clock a record may be dated.
const CLOCK_SKEW_MS: u64 = 24 * 3600 * 1000;

fn from_the_future(r: &ObjectRecord, now: u64) -> bool {
    let limit = now.saturating_add(CLOCK_SKEW_MS);
    r.updated_at_ms > limit || r.deleted_at_ms.is_some_and(|t| t > limit)
}

/// Where the objects this node knows are kept across restarts: a restart
/// while the cluster is away must not leave endpoints unprotected.
const OBJECTS_FILE: &str = "objects.json";

pub(super) fn load_objects(dir: &std::path::Path) -> BTreeMap<ObjectKey, ObjectRecord> {
    let file = dir.join(OBJECTS_FILE);
    match std::fs::read(&file).map(|b| serde_json::from_slice::<Vec<ObjectRecord>>(&b)) {
        Ok(Ok(v)) => {
            let mut known = BTreeMap::new();
            for r in v {
                object::merge(&mut known, r);
            }
            known
        }
        Ok(Err(e)) => {
            tracing::warn!(cause = %e, file = ?file, "ignoring an unreadable object list; the cluster will tell it again");
            BTreeMap::new()
        }
        Err(_) => BTreeMap::new(),
    }
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(ErrorCode::InvalidConfig, msg)
}

/// The policy a record holds, if it is one an agent would write.
fn policy_of(r: &ObjectRecord) -> Result<Policy, String> {
    let p: Policy = serde_json::from_value(r.body.clone())
        .map_err(|e| format!("policy record {}: {e}", r.name))?;
    if let Some(problem) = p.problem() {
        return Err(format!("{problem}: ignored"));
    }
    if p.key() != r.name {
        return Err(format!(
            "policy record {} holds policy {}: ignored",
            r.name,
            p.key()
        ));
    }
    Ok(p)
}

fn namespace_labels_of(r: &ObjectRecord) -> BTreeMap<String, String> {
    r.body
        .get("labels")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default()
}

/// What enforcement needs from the objects: policies, namespace labels,
/// and what was wrong with records that could not be used.
pub(super) struct PolicyInputs {
    pub policies: Vec<Policy>,
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pub warnings: Vec<String>,
}

pub(super) fn inputs(known: &BTreeMap<ObjectKey, ObjectRecord>) -> PolicyInputs {
    let mut out = PolicyInputs {
        policies: vec![],
        namespaces: BTreeMap::new(),
        warnings: vec![],
    };
    for r in known.values().filter(|r| !r.deleted()) {
        match r.kind.as_str() {
            POLICY_KIND => match policy_of(r) {
                Ok(p) => out.policies.push(p),
                Err(w) => out.warnings.push(w),
            },
            NAMESPACE_KIND => {
                out.namespaces
                    .insert(r.name.clone(), namespace_labels_of(r));
            }
            _ => {}
        }
    }
    out
}

/// The policy table as last applied, and the counters read then.
#[derive(Default)]
pub(super) struct PolicyState {
    /// The table wanted now, and its version: bumped whenever a
    /// compilation gives a different table.
    pub table: PolicyTable,
    version: u64,
    applied: Option<u64>,
    generation: Option<u32>,
    checked: Option<Instant>,
    pub counters: BTreeMap<String, u64>,
    /// The objects parsed, and the version of the object list they were
    /// parsed from.
    inputs: Option<(u64, PolicyInputs)>,
    /// What the table was last compiled from.
    seen: Option<Seen>,
    warned_conntrack: bool,
}

/// The raw inputs of the last compilation: a round whose inputs are the
/// same (nearly every round) compiles, clones and compares nothing big.
struct Seen {
    objects: u64,
    mine: Vec<EndpointRecord>,
    others: Vec<EndpointRecord>,
    claims: Vec<Claims>,
}

type Claims = (
    String,
    BTreeMap<ipnet::IpNet, BlockClaim>,
    BTreeMap<String, BTreeMap<ipnet::IpNet, BlockClaim>>,
);

/// How often an unchanged table is checked for drift (and its counters
/// read).
const RECHECK: Duration = Duration::from_secs(5);

impl PolicyState {
    pub(super) async fn converge(&mut self, host: &Executor) {
        let unchanged = self.applied == Some(self.version);
        // No table wanted, and none there when last looked: other writers'
        // changes to the ruleset (our masquerade table's included) are
        // none of this table's business.
        if unchanged && !self.table.wanted() {
            return;
        }
        if unchanged && self.checked.is_some_and(|t| t.elapsed() < RECHECK) {
            return;
        }
        self.checked = Some(Instant::now());
        let generation = host.nft_generation().await.ok();
        if unchanged && generation.is_some() && generation == self.generation {
            return;
        }
        let observed = match host.policy_table().await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(cause = %e, "cannot read the policy table; retrying");
                return;
            }
        };
        self.counters = observed.counters.clone();
        let want = &self.table;
        let rejudge = policy_nft::to_rejudge(&observed, want);
        if let Some(change) = policy_nft::diff(&observed, want) {
            let started = Instant::now();
            let summary = change.summary.clone();
            let report = host
                .apply(
                    Lane::Masquerade,
                    vec![Step::host(Change::Nft(NftChange::Policy(change)))],
                    OnFailure::Stop,
                )
                .await;
            if let Err(e) = report.into_result() {
                tracing::warn!(cause = %e, "policy table not configured; retrying");
                self.applied = None;
                return;
            }
            tracing::info!(
                took_ms = started.elapsed().as_millis() as u64,
                "policy table: {summary}"
            );
            // Connections the change may now refuse are forgotten, so
            // their next packet is judged like a new connection's: those
            // the new rules allow go on (conntrack picks them up again),
            // the others stop.
            if !rejudge.is_empty() {
                let steps = rejudge
                    .into_iter()
                    .map(|(addr, from)| Step::host(Change::ForgetConnections { addr, from }))
                    .collect();
                let report = host
                    .apply(Lane::Masquerade, steps, OnFailure::Continue)
                    .await;
                if let Err(e) = report.into_result() {
                    if !self.warned_conntrack {
                        tracing::warn!(cause = %e, "open connections are not judged again by changed policies (is conntrack-tools installed?)");
                        self.warned_conntrack = true;
                    }
                }
            }
        }
        self.applied = Some(self.version);
        self.generation = host.nft_generation().await.ok();
    }

    /// The policies as `status` and `policy list` show them.
    pub(super) fn statuses(
        &self,
        known: &BTreeMap<ObjectKey, ObjectRecord>,
        version: u64,
    ) -> Vec<PolicyStatus> {
        let t = &self.table;
        // The policies as parsed for the table (not parsed again per call).
        let parsed: Vec<Policy> = match &self.inputs {
            Some((v, pin)) if *v == version => pin.policies.clone(),
            _ => inputs(known).policies,
        };
        parsed
            .into_iter()
            .filter_map(|p| Some((known.get(&(POLICY_KIND.to_string(), p.key()))?, p)))
            .map(|(r, p)| {
                let key = p.key();
                let protects: Vec<String> = t
                    .protects
                    .get(&key)
                    .map(|s| s.iter().cloned().collect())
                    .unwrap_or_default();
                let denied = t
                    .policy_counters
                    .get(&key)
                    .and_then(|c| self.counters.get(c))
                    .copied()
                    .unwrap_or(0);
                let isolated = if p.action == policy::Action::Allow {
                    protects
                        .iter()
                        .filter_map(|i| t.isolation_counters.get(i))
                        .filter_map(|c| self.counters.get(c))
                        .sum()
                } else {
                    0
                };
                PolicyStatus {
                    key,
                    policy: p,
                    updated_at_ms: r.updated_at_ms,
                    updated_by: r.updated_by.clone(),
                    protects_here: protects,
                    denied_here: denied,
                    dropped_isolated_here: isolated,
                }
            })
            .collect()
    }
}

impl PolicyState {
    /// Brings the wanted table up to date with the objects (`version`
    /// says whether they changed), the view and this node's endpoints;
    /// returns what was wrong with records that could not be used.
    pub(super) fn refresh(
        &mut self,
        me: &str,
        objects: &BTreeMap<ObjectKey, ObjectRecord>,
        version: u64,
        view: &ClusterView,
        mine: &[EndpointRecord],
    ) -> Vec<String> {
        if self.inputs.as_ref().is_none_or(|(v, _)| *v != version) {
            self.inputs = Some((version, inputs(objects)));
            self.seen = None;
        }
        let (_, pin) = self.inputs.as_ref().expect("just set");
        let warnings = pin.warnings.clone();
        if pin.policies.is_empty() {
            self.seen = None;
            self.set(PolicyTable::default());
            return warnings;
        }
        let others: Vec<&EndpointRecord> = view
            .endpoints()
            .into_iter()
            .filter(|e| e.node != me)
            .collect();
        let same = self.seen.as_ref().is_some_and(|s| {
            s.objects == version
                && s.mine == mine
                && s.others.len() == others.len()
                && s.others.iter().zip(&others).all(|(a, b)| a == *b)
                && s.claims.len() == view.nodes.len()
                && s.claims
                    .iter()
                    .zip(&view.nodes)
                    .all(|(c, (n, p))| c.0 == *n && c.1 == p.claims && c.2 == p.network_claims)
        });
        if same {
            return warnings;
        }
        // Our own endpoints as we hold them now (the store may lag behind);
        // of the others', only addresses in blocks their node holds: a
        // node publishing another's address (or 0.0.0.0) must not get it
        // into the peers some policy allows.
        let mut blocks: BTreeMap<(&str, &str), Vec<ipnet::IpNet>> = BTreeMap::new();
        let mut owners_of: BTreeMap<&str, BTreeMap<ipnet::IpNet, String>> = BTreeMap::new();
        let mut endpoints: Vec<EndpointRecord> = Vec::new();
        for e in &others {
            let held = blocks.entry((&e.network, &e.node)).or_insert_with(|| {
                owners_of
                    .entry(&e.network)
                    .or_insert_with(|| {
                        if e.network == muslin_model::DEFAULT_NETWORK {
                            view.block_owners()
                        } else {
                            view.of_network(&e.network).block_owners()
                        }
                    })
                    .iter()
                    .filter(|(_, n)| **n == e.node)
                    .map(|(b, _)| *b)
                    .collect()
            });
            let addresses: Vec<ipnet::IpNet> = e
                .addresses
                .iter()
                .filter(|a| held.iter().any(|b| b.contains(*a)))
                .copied()
                .collect();
            if !addresses.is_empty() {
                endpoints.push(EndpointRecord {
                    addresses,
                    ..(*e).clone()
                });
            }
        }
        endpoints.extend(mine.iter().cloned());
        let refs: Vec<&EndpointRecord> = endpoints.iter().collect();
        let t = policy_nft::compile(&policy_nft::Inputs {
            me,
            policies: &pin.policies,
            endpoints: &refs,
            namespaces: &pin.namespaces,
        });
        self.seen = Some(Seen {
            objects: version,
            mine: mine.to_vec(),
            others: others.into_iter().cloned().collect(),
            claims: view
                .nodes
                .iter()
                .map(|(n, p)| (n.clone(), p.claims.clone(), p.network_claims.clone()))
                .collect(),
        });
        self.set(t);
        warnings
    }

    fn set(&mut self, t: PolicyTable) {
        if t != self.table {
            self.table = t;
            self.version += 1;
        }
    }
}

impl Cluster {
    /// Every object this node knows: as for networks, on gossip what the
    /// store shows merged into what this node kept; on etcd what etcd says
    /// once it answers, what it said last until then.
    pub(super) fn learn_objects(&mut self, view: &ClusterView) {
        let now = crate::leases::now_ms();
        let known = if self.store.name() == "etcd" {
            if !self.store.synced() {
                // Until etcd answers, what it said last.
                return;
            }
            let live = view
                .objects
                .iter()
                .filter(|(_, r)| !from_the_future(r, now));
            if live.clone().count() == self.known_objects.len()
                && live
                    .clone()
                    .all(|(k, r)| self.known_objects.get(k) == Some(r))
            {
                return;
            }
            live.map(|(k, r)| (k.clone(), r.clone())).collect()
        } else {
            // The same map as last round: nothing new to merge (tombstones
            // still expire, now and then).
            let expiring = self
                .known_objects
                .values()
                .any(|r| !object::remembered(r, now));
            if !expiring
                && self
                    .objects_seen
                    .as_ref()
                    .is_some_and(|o| std::sync::Arc::ptr_eq(o, &view.objects))
            {
                return;
            }
            self.objects_seen = Some(view.objects.clone());
            // A record dated far in the future (a forgery, or a clock
            // years ahead) would win every later write: not taken.
            let fresh: Vec<&ObjectRecord> = view
                .objects
                .values()
                .filter(|r| !from_the_future(r, now))
                .filter(|r| self.known_objects.get(&r.key()) != Some(*r))
                .collect();
            let expiring = self
                .known_objects
                .values()
                .any(|r| !object::remembered(r, now));
            if fresh.is_empty() && !expiring {
                return;
            }
            let mut k = self.known_objects.clone();
            for r in fresh {
                object::merge(&mut k, r.clone());
            }
            object::expire(&mut k, now);
            k
        };
        if known != self.known_objects {
            self.known_objects = known;
            self.objects_version += 1;
            self.save_objects();
        }
    }

    fn save_objects(&self) {
        let file = self.state_dir.join(OBJECTS_FILE);
        let list: Vec<&ObjectRecord> = self.known_objects.values().collect();
        let bytes = serde_json::to_vec(&list).expect("records serialize");
        if let Err(e) = crate::atomic_file::write(&file, &bytes) {
            tracing::warn!(cause = %e, file = ?file, "could not save the object list");
        }
    }

    /// Writes records to the store, and to disk before answering.
    async fn put_objects(&mut self, recs: Vec<ObjectRecord>) -> Result<(), CniError> {
        for r in &recs {
            object::check_put(r).map_err(invalid)?;
        }
        self.store.put_objects(&recs).await.map_err(|e| {
            CniError::new(ErrorCode::TryAgainLater, format!("nothing written: {e}"))
        })?;
        for r in recs {
            object::merge(&mut self.known_objects, r);
        }
        self.objects_version += 1;
        self.save_objects();
        Ok(())
    }

    fn record(&self, kind: &str, name: &str, body: serde_json::Value) -> ObjectRecord {
        let now = crate::leases::now_ms();
        // Later than whatever this node knows of it, even with a clock
        // behind the writer's: the last write must win.
        let after = self
            .known_objects
            .get(&(kind.to_string(), name.to_string()))
            .map(|r| {
                r.updated_at_ms
                    .max(r.deleted_at_ms.unwrap_or(0))
                    .saturating_add(1)
            })
            .unwrap_or(0);
        ObjectRecord {
            kind: kind.into(),
            name: name.into(),
            body,
            updated_at_ms: now.max(after),
            updated_by: self.me.clone(),
            deleted_at_ms: None,
        }
    }

    pub(super) async fn answer_policy(&mut self, ask: PolicyAsk, host: &Executor) {
        match ask {
            PolicyAsk::Apply {
                text,
                format,
                reply,
            } => {
                let r = async {
                    let ps = policy::parse_document(&text, format)
                        .map_err(|e| invalid(e.to_string()))?;
                    let recs: Vec<ObjectRecord> = ps
                        .iter()
                        .map(|p| {
                            self.record(
                                POLICY_KIND,
                                &p.key(),
                                serde_json::to_value(p).expect("policy serializes"),
                            )
                        })
                        .collect();
                    // All checked before any is written.
                    for r in &recs {
                        object::check_put(r).map_err(invalid)?;
                    }
                    self.put_objects(recs).await?;
                    Ok(ps.iter().map(Policy::key).collect())
                }
                .await;
                let _ = reply.send(r);
            }
            PolicyAsk::Delete { key, reply } => {
                let k = (POLICY_KIND.to_string(), key.clone());
                let r = match self.known_objects.get(&k) {
                    Some(r) if !r.deleted() => {
                        let mut t = self.record(POLICY_KIND, &key, serde_json::Value::Null);
                        t.deleted_at_ms = Some(t.updated_at_ms);
                        self.put_objects(vec![t]).await
                    }
                    _ => Err(CniError::new(
                        ErrorCode::InvalidConfig,
                        format!("no policy {key} (a namespaced policy is NAMESPACE:NAME)"),
                    )),
                };
                let _ = reply.send(r);
            }
            PolicyAsk::List(reply) => {
                // Counters as they are now (an idle agent reads nothing on
                // its own).
                if self.policy.table.wanted() {
                    match host.policy_table().await {
                        Ok(o) => self.policy.counters = o.counters,
                        Err(e) => tracing::warn!(cause = %e, "cannot read the policy counters"),
                    }
                }
                let _ = reply.send(
                    self.policy
                        .statuses(&self.known_objects, self.objects_version),
                );
            }
            PolicyAsk::NamespaceLabel {
                namespace,
                set,
                remove,
                reply,
            } => {
                let r = async {
                    // Labels are read, changed and written whole: from a
                    // view that may lack the latest write, that write would
                    // be lost.
                    if !self.store.synced() {
                        return Err(CniError::new(
                            ErrorCode::TryAgainLater,
                            "not in touch with the cluster: namespace labels are changed once it is heard",
                        ));
                    }
                    if !policy::dns_label(&namespace) {
                        return Err(invalid(format!(
                            "namespace {namespace:?}: lowercase letters, digits and '-', at most 63"
                        )));
                    }
                    check_labels(&set, &remove)?;
                    let k = (NAMESPACE_KIND.to_string(), namespace.clone());
                    let mut labels = self
                        .known_objects
                        .get(&k)
                        .filter(|r| !r.deleted())
                        .map(namespace_labels_of)
                        .unwrap_or_default();
                    for k in &remove {
                        labels.remove(k);
                    }
                    labels.extend(set);
                    let rec = self.record(
                        NAMESPACE_KIND,
                        &namespace,
                        serde_json::json!({ "labels": labels }),
                    );
                    self.put_objects(vec![rec]).await?;
                    Ok(labels)
                }
                .await;
                let _ = reply.send(r);
            }
        }
    }
}

/// Labels as `muslin label` may set them: Kubernetes' syntax.
pub fn check_labels(set: &BTreeMap<String, String>, remove: &[String]) -> Result<(), CniError> {
    for (k, v) in set {
        if let Some(p) = policy::label_key_problem(k).or_else(|| policy::label_value_problem(v)) {
            return Err(invalid(p));
        }
    }
    for k in remove {
        if let Some(p) = policy::label_key_problem(k) {
            return Err(invalid(p));
        }
    }
    Ok(())
}
