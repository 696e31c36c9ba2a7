//! Carrying out one job's steps, in order, each in its namespace.

use std::collections::BTreeMap;

use muslin_plan::object::Ns;
use muslin_plan::{Change, Step};

use super::netlink::Netlink;
use super::{
    address, counters, firewall, link, neighbour, nft, route, rule, OnFailure, Outcome, Report,
};
use crate::KernelError;

/// Netlink connections of the namespaces one job touches, opened once.
pub(super) struct Namespaces<'a> {
    host: &'a Netlink,
    others: BTreeMap<std::path::PathBuf, Netlink>,
}

impl<'a> Namespaces<'a> {
    pub(super) fn new(host: &'a Netlink) -> Self {
        Namespaces {
            host,
            others: BTreeMap::new(),
        }
    }

    pub(super) fn get(&mut self, ns: &Ns) -> Result<Netlink, KernelError> {
        match ns {
            Ns::Host => Ok(self.host.clone()),
            Ns::Container(p) => {
                if let Some(n) = self.others.get(p) {
                    return Ok(n.clone());
                }
                let f = super::open_netns(p)?;
                let n = Netlink::in_netns(&f)?;
                self.others.insert(p.clone(), n.clone());
                Ok(n)
            }
        }
    }
}

pub(super) async fn apply(host: &Netlink, steps: Vec<Step>, on_failure: OnFailure) -> Report {
    let mut nss = Namespaces::new(host);
    let mut report = Report::default();
    let mut failed = false;
    for step in steps {
        if failed && on_failure != OnFailure::Continue {
            report.outcomes.push(Outcome {
                step,
                result: Err(KernelError::Io {
                    what: "not attempted after an earlier step failed".into(),
                    source: std::io::ErrorKind::Interrupted.into(),
                }),
            });
            continue;
        }
        let result = one(&mut nss, &step).await;
        if let Err(e) = &result {
            counters::step_failed();
            tracing::debug!(%step, cause = %e, "step failed");
            failed = true;
        }
        report.outcomes.push(Outcome { step, result });
    }
    if let (true, OnFailure::Rollback(undo)) = (failed, on_failure) {
        report.rolled_back = true;
        for step in undo {
            if let Err(e) = one(&mut nss, &step).await {
                tracing::warn!(%step, cause = %e, "rollback step failed");
            }
        }
    }
    report
}

async fn one(nss: &mut Namespaces<'_>, step: &Step) -> Result<(), KernelError> {
    match &step.change {
        Change::Nft(c) => return nft::apply(c.clone()).await,
        Change::Firewall(a) => return firewall::apply_one(a.clone()).await,
        Change::Sysctl { key, value } => return sysctl(key, value).await,
        _ => {}
    }
    let nl = nss.get(&step.ns)?;
    match &step.change {
        Change::CreateLink(l) => link::create(&nl, l).await,
        Change::SetLink { name, mtu, mac, up } => link::set(&nl, name, *mtu, *mac, *up).await,
        Change::DeleteLink(name) => link::delete(&nl, name).await,
        Change::AddAddress(a) => address::add(&nl, a).await,
        Change::DeleteAddress(a) => address::delete(&nl, a).await,
        Change::ReplaceRoute(r) => route::replace(&nl, r).await,
        Change::DeleteRoute(r) => route::delete(&nl, r).await,
        Change::AddRule(r) => rule::add(&nl, r).await,
        Change::DeleteRule(r) => rule::delete(&nl, r).await,
        Change::ReplaceNeighbour(n) => neighbour::replace(&nl, n).await,
        Change::DeleteNeighbour(n) => neighbour::delete(&nl, n).await,
        Change::ReplaceFdb(e) => neighbour::replace_fdb(&nl, e).await,
        Change::DeleteFdb(e) => neighbour::delete_fdb(&nl, e).await,
        Change::Nft(_) | Change::Firewall(_) | Change::Sysctl { .. } => {
            unreachable!("handled above")
        }
    }
}

/// Writes a sysctl unless it already has the value.
async fn sysctl(key: &str, value: &str) -> Result<(), KernelError> {
    if key.split('/').any(|p| p.is_empty() || p == "..") {
        return Err(KernelError::Io {
            what: format!("sysctl {key:?} is not a plain path"),
            source: std::io::ErrorKind::InvalidInput.into(),
        });
    }
    let path = format!("/proc/sys/{key}");
    let value = value.to_string();
    tokio::task::spawn_blocking(move || {
        if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == value) {
            return Ok(());
        }
        std::fs::write(&path, &value).map_err(KernelError::io(format!("writing {path}")))?;
        counters::tool_write();
        Ok(())
    })
    .await
    .map_err(|e| KernelError::Io {
        what: "sysctl task".into(),
        source: std::io::Error::other(e),
    })?
}
