//! Carrying out one job's steps, in order, each in its namespace.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use muslin_plan::object::{LinkKind, Ns};
use muslin_plan::{Change, Step};

use super::netlink::Netlink;
use super::{
    address, counters, firewall, link, neighbour, nft, route, rule, OnFailure, Outcome, Report,
};
use crate::KernelError;

/// A namespace's netlink connection for one job, with the interface
/// indexes it looked up (a job's later steps on the same interface need no
/// second lookup) and the namespace files the job opened.
pub(super) struct Conn {
    nl: Netlink,
    names: Mutex<HashMap<String, u32>>,
    files: Arc<Mutex<BTreeMap<PathBuf, Arc<File>>>>,
}

impl std::ops::Deref for Conn {
    type Target = Netlink;
    fn deref(&self) -> &Netlink {
        &self.nl
    }
}

impl Conn {
    /// The index of interface `name`, looked up once per job.
    pub(super) async fn index(&self, name: &str) -> Result<u32, KernelError> {
        if let Some(i) = self.names.lock().expect("names").get(name) {
            return Ok(*i);
        }
        let i = self
            .nl
            .link(name)
            .await?
            .map(|l| l.index)
            .ok_or_else(|| KernelError::Io {
                what: format!("interface {name} does not exist"),
                source: std::io::ErrorKind::NotFound.into(),
            })?;
        self.names
            .lock()
            .expect("names")
            .insert(name.to_string(), i);
        Ok(i)
    }

    /// Forgets `name`'s index: the interface was deleted.
    pub(super) fn forget(&self, name: &str) {
        self.names.lock().expect("names").remove(name);
    }

    /// The namespace at `path`, opened (and checked) once per job.
    pub(super) fn netns(&self, path: &Path) -> Result<Arc<File>, KernelError> {
        open_once(&self.files, path)
    }
}

fn open_once(
    files: &Mutex<BTreeMap<PathBuf, Arc<File>>>,
    path: &Path,
) -> Result<Arc<File>, KernelError> {
    if let Some(f) = files.lock().expect("files").get(path) {
        return Ok(f.clone());
    }
    let f = Arc::new(super::open_netns(path)?);
    files
        .lock()
        .expect("files")
        .insert(path.to_path_buf(), f.clone());
    Ok(f)
}

/// The namespaces one job touches.
pub(super) struct Namespaces {
    conns: BTreeMap<Ns, Arc<Conn>>,
    host: Netlink,
    files: Arc<Mutex<BTreeMap<PathBuf, Arc<File>>>>,
}

impl Namespaces {
    pub(super) fn new(host: &Netlink) -> Self {
        Namespaces {
            conns: BTreeMap::new(),
            host: host.clone(),
            files: Default::default(),
        }
    }

    pub(super) fn get(&mut self, ns: &Ns) -> Result<Arc<Conn>, KernelError> {
        if let Some(c) = self.conns.get(ns) {
            return Ok(c.clone());
        }
        let nl = match ns {
            Ns::Host => self.host.clone(),
            Ns::Container(p) => Netlink::in_netns(&*open_once(&self.files, p)?)?,
        };
        let c = Arc::new(Conn {
            nl,
            names: Mutex::new(HashMap::new()),
            files: self.files.clone(),
        });
        self.conns.insert(ns.clone(), c.clone());
        Ok(c)
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

async fn one(nss: &mut Namespaces, step: &Step) -> Result<(), KernelError> {
    match &step.change {
        Change::Nft(c) => return nft::apply(c.clone()).await,
        Change::Firewall(a) => return firewall::apply_one(a.clone()).await,
        Change::Sysctl { key, value } => return sysctl(key, value).await,
        Change::ForgetConnections { addr, from } => return forget(*addr, *from).await,
        _ => {}
    }
    let conn = nss.get(&step.ns)?;
    let nl = &*conn;
    match &step.change {
        Change::CreateLink(l) => {
            link::create(nl, l).await?;
            // The ethtool ioctl acts in this process's namespace: the
            // host's, where our VXLAN devices live.
            if step.ns == Ns::Host && matches!(l.kind, LinkKind::Vxlan(_)) {
                crate::vxlan_offload::enforce(&l.name, true);
            }
            Ok(())
        }
        Change::SetLink {
            name,
            mtu,
            mac,
            up,
            group,
        } => link::set(nl, name, *mtu, *mac, *up, *group).await,
        Change::DeleteLink(name) => link::delete(nl, name).await,
        Change::AddAddress(a) => address::add(nl, a).await,
        Change::DeleteAddress(a) => address::delete(nl, a).await,
        Change::ReplaceRoute(r) => route::replace(nl, r).await,
        Change::DeleteRoute(r) => route::delete(nl, r).await,
        Change::AddRule(r) => rule::add(nl, r).await,
        Change::DeleteRule(r) => rule::delete(nl, r).await,
        Change::ReplaceNeighbour(n) => neighbour::replace(nl, n).await,
        Change::DeleteNeighbour(n) => neighbour::delete(nl, n).await,
        Change::ReplaceFdb(e) => neighbour::replace_fdb(nl, e).await,
        Change::DeleteFdb(e) => neighbour::delete_fdb(nl, e).await,
        Change::Nft(_)
        | Change::Firewall(_)
        | Change::Sysctl { .. }
        | Change::ForgetConnections { .. } => {
            unreachable!("handled above")
        }
    }
}

/// Deletes the conntrack entries whose original source (or destination)
/// is `addr`, in every zone, with conntrack-tools (as Calico's Felix
/// does). None to delete is no error.
async fn forget(addr: std::net::IpAddr, from: bool) -> Result<(), KernelError> {
    let a = addr.to_string();
    let which = if from { "--orig-src" } else { "--orig-dst" };
    let out = tokio::task::spawn_blocking(move || {
        super::process::run("conntrack", &["-D", which, &a], None)
    })
    .await
    .map_err(|e| KernelError::Io {
        what: "conntrack task".into(),
        source: std::io::Error::other(e),
    })?
    .map_err(|(what, source)| KernelError::Io { what, source })?;
    let err = String::from_utf8_lossy(&out.stderr);
    // conntrack exits 1 when no entry matched.
    if out.status.success() || err.contains("0 flow entries") {
        counters::tool_write();
        return Ok(());
    }
    Err(KernelError::Io {
        what: format!("conntrack -D {which} {addr}: {}", err.trim()),
        source: std::io::ErrorKind::Other.into(),
    })
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
