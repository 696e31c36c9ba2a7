//! The instruments that exist only as metrics: how long the CNI requests
//! took and how they ended, measured where the local API serves them.
//! Everything else a scrape shows is read from the agent's status, which
//! already counts it.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// The CNI operations the runtime calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Del,
    Check,
    Gc,
}

impl Op {
    const ALL: [Op; 4] = [Op::Add, Op::Del, Op::Check, Op::Gc];

    fn name(self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Del => "del",
            Op::Check => "check",
            Op::Gc => "gc",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Outcome {
    result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct Request {
    op: &'static str,
    result: &'static str,
}

const RESULTS: [&str; 2] = ["ok", "error"];

/// 5 ms to about 80 s: an ADD on a warm host takes tens of milliseconds,
/// one waiting for a settling network or a slow kernel takes seconds.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

type Latency = Family<Outcome, Histogram, fn() -> Histogram>;

/// Cheap to clone: the clones share their values (each scrape registers
/// clones in a registry of its own).
#[derive(Debug, Clone)]
pub struct Live {
    add: Latency,
    del: Latency,
    requests: Family<Request, Counter>,
}

impl Default for Live {
    fn default() -> Self {
        let live = Live {
            add: Family::new_with_constructor(latency),
            del: Family::new_with_constructor(latency),
            requests: Family::default(),
        };
        // Every series exists from the start: a rate over a series that
        // appears only with its first error misses that error.
        for result in RESULTS {
            let _ = live.add.get_or_create(&Outcome { result });
            let _ = live.del.get_or_create(&Outcome { result });
            for op in Op::ALL {
                let _ = live.requests.get_or_create(&Request {
                    op: op.name(),
                    result,
                });
            }
        }
        live
    }
}

impl Live {
    /// Records one CNI request that ended (`ok`) after `took`.
    pub fn cni(&self, op: Op, ok: bool, took: Duration) {
        let result = RESULTS[usize::from(!ok)];
        self.requests
            .get_or_create(&Request {
                op: op.name(),
                result,
            })
            .inc();
        let latency = match op {
            Op::Add => &self.add,
            Op::Del => &self.del,
            Op::Check | Op::Gc => return,
        };
        latency
            .get_or_create(&Outcome { result })
            .observe(took.as_secs_f64());
    }

    pub(super) fn register(&self, r: &mut Registry) {
        r.register_with_unit(
            "cni_add_duration",
            "Time the agent took to serve CNI ADD requests, by result",
            Unit::Seconds,
            self.add.clone(),
        );
        r.register_with_unit(
            "cni_del_duration",
            "Time the agent took to serve CNI DEL requests, by result",
            Unit::Seconds,
            self.del.clone(),
        );
        r.register(
            "cni_requests",
            "CNI requests served (add, del, check, gc), by result",
            self.requests.clone(),
        );
    }
}
