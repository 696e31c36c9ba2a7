//! Where labs are recorded: `/run/muslin/lab/NAME/` holds `lab.json` (the
//! plan and what was started), the agents' sockets, state and logs. The
//! record is written before anything is created, so `down` can remove a lab
//! whose `up` crashed half-way.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use muslin_model::cni::Dns;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::plan::LabPlan;
use crate::topology::DEFAULT_NETWORK;
use crate::LabError;

pub const ROOT: &str = "/run/muslin/lab";

/// The root can be moved (tests use their own) with `MUSLIN_LAB_ROOT`.
pub fn root() -> PathBuf {
    std::env::var_os("MUSLIN_LAB_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(ROOT))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabRecord {
    pub plan: LabPlan,
    /// Containers attached so far: (host, container, address).
    pub containers: Vec<ContainerRecord>,
    pub backend: String,
    pub datastore: String,
    /// Hosts of the plan that run etcd instead of an agent.
    #[serde(default)]
    pub etcd: Vec<String>,
}

impl LabRecord {
    /// Hosts that run an agent (not routers, not etcd members).
    pub fn agent_hosts(&self) -> impl Iterator<Item = &crate::plan::NodePlan> {
        self.plan
            .nodes
            .iter()
            .filter(|n| !n.router && !self.etcd.contains(&n.name))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub host: String,
    pub name: String,
    pub ns: String,
    /// The first attachment's (eth0's) address, as before networks.
    pub address: Option<IpAddr>,
    /// Every attachment, in order (eth0, eth1, ...); recorded before it is
    /// made, with its address once it is. Empty in records from before
    /// networks: see `attachments`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<Attachment>,
}

/// A container's attachment to one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub network: String,
    pub ifname: String,
    pub address: Option<IpAddr>,
    /// The ADD result's `dns`: the network's resolver, the search domains.
    /// Absent before the name service, or where the agent serves no names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
}

impl ContainerRecord {
    /// Its attachments; a record from before networks had one: eth0 on
    /// the default network.
    pub fn attachments(&self) -> Vec<Attachment> {
        if !self.networks.is_empty() {
            return self.networks.clone();
        }
        vec![Attachment {
            network: DEFAULT_NETWORK.into(),
            ifname: "eth0".into(),
            address: self.address,
            dns: None,
        }]
    }

    /// Its address in `network`, if it is on it and attached.
    pub fn address_in(&self, network: &str) -> Option<IpAddr> {
        self.attachments()
            .into_iter()
            .find(|a| a.network == network)
            .and_then(|a| a.address)
    }
}

pub fn lab_dir(name: &str) -> PathBuf {
    root().join(name)
}

pub fn host_dir(lab: &str, host: &str) -> PathBuf {
    lab_dir(lab).join(host)
}

pub fn socket(lab: &str, host: &str) -> PathBuf {
    host_dir(lab, host).join("agent.sock")
}

pub fn log_file(lab: &str, host: &str) -> PathBuf {
    host_dir(lab, host).join("agent.log")
}

/// Labs that have a record.
pub fn list() -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(root())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("lab.json").exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    v.sort();
    v
}

/// A lab name is a plain name: never a path that escapes the registry.
pub fn check_name(name: &str) -> Result<(), LabError> {
    match crate::names::invalid_name(name) {
        Some(why) => Err(LabError::Usage(format!("lab name: {why}"))),
        None => Ok(()),
    }
}

/// The lab a command acts on: the named one, or the only one.
pub fn pick(name: Option<&str>) -> Result<String, LabError> {
    if let Some(n) = name {
        check_name(n)?;
        return if lab_dir(n).join("lab.json").exists() {
            Ok(n.to_string())
        } else {
            Err(LabError::NoSuchLab {
                name: n.to_string(),
                labs: list(),
            })
        };
    }
    match list().as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(LabError::NoLab),
        many => Err(LabError::WhichLab(many.to_vec())),
    }
}

/// An exclusive hold on a lab's record while a command changes the lab.
pub struct Locked {
    pub dir: PathBuf,
    _lock: Flock<File>,
}

pub fn lock(name: &str) -> Result<Locked, LabError> {
    check_name(name)?;
    let dir = lab_dir(name);
    fs::create_dir_all(&dir).map_err(LabError::io(format!("creating {}", dir.display())))?;
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(dir.join(".lock"))
        .map_err(LabError::io("opening the lab lock"))?;
    let lock = Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| LabError::Io {
        what: "locking the lab".into(),
        source: e.into(),
    })?;
    Ok(Locked { dir, _lock: lock })
}

impl Locked {
    pub fn load(&self) -> Result<LabRecord, LabError> {
        let p = self.dir.join("lab.json");
        let bytes = fs::read(&p).map_err(LabError::io(format!("reading {}", p.display())))?;
        serde_json::from_slice(&bytes).map_err(|e| LabError::Corrupt(p, e.to_string()))
    }

    pub fn save(&self, rec: &LabRecord) -> Result<(), LabError> {
        write_atomic(
            &self.dir.join("lab.json"),
            &serde_json::to_vec_pretty(rec).expect("record serializes"),
        )
    }
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LabError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(LabError::io(format!("writing {}", tmp.display())))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(LabError::io(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(LabError::io(format!("renaming to {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_records_from_before_networks_read_as_default_eth0() {
        let old = r#"{"host":"h1","name":"c1","ns":"lab-h1-c1","address":"10.244.0.5"}"#;
        let c: ContainerRecord = serde_json::from_str(old).unwrap();
        assert_eq!(
            c.attachments(),
            [Attachment {
                network: "default".into(),
                ifname: "eth0".into(),
                address: Some("10.244.0.5".parse().unwrap()),
                dns: None,
            }]
        );
        assert_eq!(c.address_in("default"), c.address);
        assert_eq!(c.address_in("red"), None);
        // A default-only record is written as before.
        assert_eq!(serde_json::to_string(&c).unwrap(), old);
    }

    #[test]
    fn attachments_are_kept_in_order() {
        let a = |n: &str, i: &str, x: &str| Attachment {
            network: n.into(),
            ifname: i.into(),
            address: Some(x.parse().unwrap()),
            dns: None,
        };
        let c = ContainerRecord {
            host: "h1".into(),
            name: "c4".into(),
            ns: "lab-h1-c4".into(),
            address: Some("10.50.0.4".parse().unwrap()),
            networks: vec![
                a("red", "eth0", "10.50.0.4"),
                a("blue", "eth1", "10.50.0.9"),
            ],
        };
        let back: ContainerRecord =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.attachments()[1].ifname, "eth1");
        assert_eq!(back.address_in("blue"), Some("10.50.0.9".parse().unwrap()));
        assert_eq!(back.address_in("default"), None);
    }
}
