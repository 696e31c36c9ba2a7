//! A recording fake of the executor for in-process tests of the agent's
//! logic: it applies steps to an in-memory kernel (`muslin_plan::simulate`)
//! and keeps every step it was given. Built only with the `fake` feature,
//! which only tests enable.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use muslin_plan::object::Ns;
use muslin_plan::simulate::simulate;
use muslin_plan::{HostState, Step};
use tokio::sync::mpsc;

use super::{Answer, Executor, Job, OnFailure, Outcome, Query, Report};
use crate::KernelError;

/// The fake kernel: what each namespace holds, and the steps applied.
#[derive(Clone, Default)]
pub struct FakeKernel {
    pub world: Arc<Mutex<BTreeMap<Ns, HostState>>>,
    pub log: Arc<Mutex<Vec<Step>>>,
    /// Steps whose Display contains this fail (to test rollbacks).
    pub fail_on: Arc<Mutex<Option<String>>>,
}

impl FakeKernel {
    /// The steps applied so far, rendered, and forgets them.
    pub fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    pub fn state(&self, ns: &Ns) -> HostState {
        self.world
            .lock()
            .unwrap()
            .get(ns)
            .cloned()
            .unwrap_or_default()
    }
}

impl Executor {
    /// An executor over a fake kernel.
    pub fn fake() -> (Executor, FakeKernel) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let k = FakeKernel::default();
        let kk = k.clone();
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                match job {
                    Job::Apply {
                        steps,
                        on_failure,
                        reply,
                        ..
                    } => {
                        let _ = reply.send(run(&kk, steps, on_failure));
                    }
                    Job::Drain { reply } => {
                        let _ = reply.send(());
                    }
                    Job::Observe { query, reply } => {
                        let a = match query {
                            Query::Namespace(ns) => Ok(Answer::Namespace(kk.state(&ns))),
                            Query::Netns(p) if p.to_string_lossy().contains("missing") => {
                                Err(KernelError::NetnsMissing(p))
                            }
                            Query::Netns(_) => Ok(Answer::Netns),
                            Query::NftGeneration => Ok(Answer::NftGeneration(1)),
                            Query::FirewallLegacy => Ok(Answer::FirewallLegacy(vec![])),
                            Query::Masquerade(_) => Ok(Answer::Masquerade(Default::default())),
                            Query::PolicyTable => Ok(Answer::PolicyTable(Default::default())),
                            Query::Firewall => {
                                Ok(Answer::Firewall(muslin_model::host_firewall::Observed {
                                    nft: serde_json::json!({"nftables": []}),
                                    iptables: vec![],
                                }))
                            }
                        };
                        let _ = reply.send(a);
                    }
                }
            }
        });
        (Executor::from_sender(tx), k)
    }
}

fn run(k: &FakeKernel, steps: Vec<Step>, on_failure: OnFailure) -> Report {
    let mut report = Report::default();
    let mut failed = false;
    for step in steps {
        let fail = k
            .fail_on
            .lock()
            .unwrap()
            .as_deref()
            .is_some_and(|f| step.to_string().contains(f));
        let result = if failed && on_failure != OnFailure::Continue {
            Err("not attempted".to_string())
        } else if fail {
            Err("injected failure".to_string())
        } else {
            k.log.lock().unwrap().push(step.clone());
            simulate(&mut k.world.lock().unwrap(), &step)
        };
        failed |= result.is_err();
        report.outcomes.push(Outcome {
            step,
            result: result.map_err(|what| KernelError::Io {
                what,
                source: std::io::ErrorKind::Other.into(),
            }),
        });
    }
    if let (true, OnFailure::Rollback(undo)) = (failed, on_failure) {
        report.rolled_back = true;
        for step in undo {
            k.log.lock().unwrap().push(step.clone());
            let _ = simulate(&mut k.world.lock().unwrap(), &step);
        }
    }
    report
}
