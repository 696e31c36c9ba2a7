//! The executor: the one task that changes the kernel. Callers compute
//! desired state with `muslin-plan` and submit the changes as values; the
//! executor carries them out in order and reports each one's result. It
//! also answers observations (what a namespace has), so no other code
//! needs a netlink socket or runs `nft`.
//!
//! Jobs run in lanes: the jobs of one lane (one attachment, the cluster
//! data plane, the masquerade table, the host firewall) one after another
//! in submission order, different lanes side by side. A veth takes the
//! kernel some 20 ms to unregister; one container's DEL must not hold up
//! another's ADD.

mod address;
mod apply;
pub mod counters;
mod error;
#[cfg(feature = "fake")]
pub mod fake;
pub mod firewall;
pub mod host_facts;
mod link;
mod neighbour;
mod netlink;
mod netns;
pub mod nft;
mod observe;
mod process;
mod route;
mod rule;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::PathBuf;

use futures::future::{BoxFuture, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};
use muslin_plan::nft::{NftFamily, NftObserved};
use muslin_plan::{HostState, Step};
use tokio::sync::{mpsc, oneshot};

use netlink::Netlink;
pub(crate) use netns::open_netns;

pub use counters::{counters, Counters};
pub use error::KernelError;

/// Jobs of one lane run in order; lanes run side by side.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Lane {
    /// One attachment, by its host interface name.
    Attachment(String),
    Cluster,
    Masquerade,
    Firewall,
    Host,
}

/// What to do when a step fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnFailure {
    /// Stop there; report the rest as not attempted.
    Stop,
    /// Stop, then carry out these steps (undoing what was made).
    Rollback(Vec<Step>),
    /// Go on with the other steps: they are independent.
    Continue,
}

/// One step's outcome.
#[derive(Debug)]
pub struct Outcome {
    pub step: Step,
    pub result: Result<(), KernelError>,
}

#[derive(Debug, Default)]
pub struct Report {
    pub outcomes: Vec<Outcome>,
    /// Whether a rollback ran.
    pub rolled_back: bool,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.outcomes.iter().all(|o| o.result.is_ok())
    }

    /// The first failure, for a caller that needs one error.
    pub fn into_result(self) -> Result<usize, KernelError> {
        let n = self.outcomes.len();
        match self.outcomes.into_iter().find_map(|o| o.result.err()) {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    pub fn errors(&self) -> Vec<String> {
        self.outcomes
            .iter()
            .filter_map(|o| o.result.as_ref().err().map(|e| format!("{}: {e}", o.step)))
            .collect()
    }
}

/// A question about the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// Links, addresses, routes, rules, permanent neighbours and FDB entries.
    Namespace(muslin_plan::object::Ns),
    /// The legacy iptables FORWARD chains (see `firewall::observe_legacy`).
    FirewallLegacy,
    /// Our nftables table of this family.
    Masquerade(NftFamily),
    /// The host's firewalls as `muslin_model::host_firewall` reads them.
    Firewall,
    /// Our policy table (`muslin_plan::policy_nft`).
    PolicyTable,
    /// nftables' ruleset generation: it changes with every ruleset change,
    /// so an unchanged number spares reading the ruleset.
    NftGeneration,
    /// Whether a path names a network namespace other than ours.
    Netns(PathBuf),
}

#[derive(Debug)]
pub enum Answer {
    Namespace(HostState),
    Masquerade(NftObserved),
    PolicyTable(muslin_plan::policy_nft::PolicyObserved),
    Firewall(muslin_model::host_firewall::Observed),
    FirewallLegacy(Vec<String>),
    NftGeneration(u32),
    Netns,
}

pub(crate) enum Job {
    Apply {
        lane: Lane,
        steps: Vec<Step>,
        on_failure: OnFailure,
        reply: oneshot::Sender<Report>,
    },
    Observe {
        query: Query,
        reply: oneshot::Sender<Result<Answer, KernelError>>,
    },
    /// Answered once nothing runs or waits.
    Drain { reply: oneshot::Sender<()> },
}

/// A handle to the executor; clones share it. When the last handle is
/// dropped the executor finishes what it was given and ends.
#[derive(Clone)]
pub struct Executor {
    tx: mpsc::UnboundedSender<Job>,
}

impl fmt::Debug for Executor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Executor")
    }
}

fn gone() -> KernelError {
    KernelError::Io {
        what: "the executor has stopped".into(),
        source: std::io::ErrorKind::BrokenPipe.into(),
    }
}

impl Executor {
    /// Starts the executor on the kernel of the calling process's namespace.
    pub fn spawn() -> Result<Executor, KernelError> {
        let host = Netlink::current()?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, host));
        Ok(Executor { tx })
    }

    #[cfg_attr(not(feature = "fake"), allow(dead_code))]
    pub(crate) fn from_sender(tx: mpsc::UnboundedSender<Job>) -> Executor {
        Executor { tx }
    }

    /// Carries out `steps` in `lane`, in order. The job is queued before
    /// this returns, so a caller holding a lock while it submits orders
    /// its job before any job submitted after the lock is released.
    pub fn apply(
        &self,
        lane: Lane,
        steps: Vec<Step>,
        on_failure: OnFailure,
    ) -> impl std::future::Future<Output = Report> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let queued = !steps.is_empty()
            && self
                .tx
                .send(Job::Apply {
                    lane,
                    steps: steps.clone(),
                    on_failure,
                    reply,
                })
                .is_ok();
        async move {
            if steps.is_empty() {
                return Report::default();
            }
            if !queued {
                return failed(steps);
            }
            rx.await.unwrap_or_else(|_| failed(steps))
        }
    }

    pub async fn observe(&self, query: Query) -> Result<Answer, KernelError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Observe { query, reply })
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    pub async fn namespace(&self, ns: muslin_plan::object::Ns) -> Result<HostState, KernelError> {
        match self.observe(Query::Namespace(ns)).await? {
            Answer::Namespace(s) => Ok(s),
            _ => Err(gone()),
        }
    }

    pub async fn host(&self) -> Result<HostState, KernelError> {
        self.namespace(muslin_plan::object::Ns::Host).await
    }

    pub async fn masquerade(&self, fam: NftFamily) -> Result<NftObserved, KernelError> {
        match self.observe(Query::Masquerade(fam)).await? {
            Answer::Masquerade(s) => Ok(s),
            _ => Err(gone()),
        }
    }

    pub async fn policy_table(
        &self,
    ) -> Result<muslin_plan::policy_nft::PolicyObserved, KernelError> {
        match self.observe(Query::PolicyTable).await? {
            Answer::PolicyTable(s) => Ok(s),
            _ => Err(gone()),
        }
    }

    pub async fn firewall(&self) -> Result<muslin_model::host_firewall::Observed, KernelError> {
        match self.observe(Query::Firewall).await? {
            Answer::Firewall(s) => Ok(s),
            _ => Err(gone()),
        }
    }

    pub async fn firewall_legacy(&self) -> Result<Vec<String>, KernelError> {
        match self.observe(Query::FirewallLegacy).await? {
            Answer::FirewallLegacy(s) => Ok(s),
            _ => Err(gone()),
        }
    }

    pub async fn nft_generation(&self) -> Result<u32, KernelError> {
        match self.observe(Query::NftGeneration).await? {
            Answer::NftGeneration(g) => Ok(g),
            _ => Err(gone()),
        }
    }

    /// Returns once every job submitted so far has finished (and whatever
    /// was queued behind them): a stopping agent leaves no change half-made.
    pub async fn drain(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Job::Drain { reply }).is_ok() {
            let _ = rx.await;
        }
    }

    /// Refuses a path that is not a network namespace, or is the agent's.
    pub async fn check_netns(&self, path: PathBuf) -> Result<(), KernelError> {
        self.observe(Query::Netns(path)).await.map(|_| ())
    }
}

fn failed(steps: Vec<Step>) -> Report {
    Report {
        outcomes: steps
            .into_iter()
            .map(|step| Outcome {
                step,
                result: Err(gone()),
            })
            .collect(),
        rolled_back: false,
    }
}

type Running = BoxFuture<'static, Option<Lane>>;

/// One job as a future that always yields its lane back, even when the job
/// panics (a panic would otherwise take every later job with it; the
/// caller sees its reply dropped and reports the job failed).
fn start(job: Job, host: &Netlink) -> Running {
    let host = host.clone();
    let lane = match &job {
        Job::Apply { lane, .. } => Some(lane.clone()),
        _ => None,
    };
    let work = async move {
        match job {
            Job::Apply {
                steps,
                on_failure,
                reply,
                ..
            } => {
                let report = apply::apply(&host, steps, on_failure).await;
                let _ = reply.send(report);
            }
            Job::Observe { query, reply } => {
                let _ = reply.send(observe::answer(&host, query).await);
            }
            Job::Drain { .. } => unreachable!("drains are kept by the loop"),
        }
    };
    Box::pin(async move {
        if std::panic::AssertUnwindSafe(work)
            .catch_unwind()
            .await
            .is_err()
        {
            tracing::error!(?lane, "an executor job panicked; its caller sees it failed");
        }
        lane
    })
}

async fn run(mut rx: mpsc::UnboundedReceiver<Job>, host: Netlink) {
    let mut waiting: HashMap<Lane, VecDeque<Job>> = HashMap::new();
    let mut running: FuturesUnordered<Running> = FuturesUnordered::new();
    let mut drains: Vec<oneshot::Sender<()>> = Vec::new();
    let mut open = true;
    while open || !running.is_empty() {
        tokio::select! {
            job = rx.recv(), if open => match job {
                None => open = false,
                Some(Job::Drain { reply }) => drains.push(reply),
                Some(job) => match &job {
                    Job::Apply { lane, .. } => {
                        if let Some(q) = waiting.get_mut(lane) {
                            q.push_back(job);
                        } else {
                            waiting.insert(lane.clone(), VecDeque::new());
                            running.push(start(job, &host));
                        }
                    }
                    _ => running.push(start(job, &host)),
                },
            },
            Some(done) = running.next() => {
                if let Some(lane) = done {
                    match waiting.get_mut(&lane).and_then(VecDeque::pop_front) {
                        Some(next) => running.push(start(next, &host)),
                        None => {
                            waiting.remove(&lane);
                        }
                    }
                }
            }
        }
        if running.is_empty() {
            for d in drains.drain(..) {
                let _ = d.send(());
            }
        }
    }
    for d in drains {
        let _ = d.send(());
    }
}
