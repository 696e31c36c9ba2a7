//! Durable storage of the endpoint table: one JSON file replaced atomically
//! (`atomic_file`), so a crash at any instant leaves either the old table
//! or the new one. A table of the previous format is read and converted;
//! the next save writes the current one.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use muslin_model::ipam::EndpointTable;
use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state directory {dir:?}: {source}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("another muslin agent holds the state directory {0:?}")]
    Locked(PathBuf),
    #[error(
        "state file {file:?} is corrupt ({source}); move it away to start with an empty table"
    )]
    Corrupt {
        file: PathBuf,
        source: serde_json::Error,
    },
    #[error("writing {file:?}: {source}")]
    Write {
        file: PathBuf,
        source: std::io::Error,
    },
}

pub struct StateStore {
    dir: PathBuf,
    file: PathBuf,
    _lock: Flock<File>,
}

impl StateStore {
    /// Opens the directory and takes its lock: two agents on one state
    /// directory would hand out the same addresses.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let derr = |source| StoreError::Dir {
            dir: dir.to_owned(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(derr)?;
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join("agent.lock"))
            .map_err(derr)?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| StoreError::Locked(dir.to_owned()))?;
        Ok(StateStore {
            dir: dir.to_owned(),
            file: dir.join("endpoints.json"),
            _lock: lock,
        })
    }

    pub fn load(&self) -> Result<EndpointTable, StoreError> {
        match fs::read(&self.file) {
            Ok(bytes) => EndpointTable::from_json(&bytes).map_err(|source| StoreError::Corrupt {
                file: self.file.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(EndpointTable::new()),
            Err(source) => Err(StoreError::Dir {
                dir: self.dir.clone(),
                source,
            }),
        }
    }

    pub fn save(&self, bytes: &[u8]) -> Result<(), StoreError> {
        crate::atomic_file::write(&self.file, bytes).map_err(|source| StoreError::Write {
            file: self.file.clone(),
            source,
        })
    }

    pub fn path(&self) -> &Path {
        &self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muslin_model::ipam::{AttachmentKey, Endpoint};

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("muslin-store-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn save_load_round_trip_and_exclusive_lock() {
        let dir = tempdir("rt");
        let s = StateStore::open(&dir).unwrap();
        assert!(s.load().unwrap().endpoints.is_empty());
        let mut t = EndpointTable::new();
        let key = AttachmentKey {
            network: "n".into(),
            container_id: "c".into(),
            ifname: "eth0".into(),
        };
        let blocks = ["10.9.0.0/24".parse().unwrap()];
        t.allocate(key, "default", &blocks, |a| {
            Endpoint::new(a, "x".into(), 1500)
        })
        .unwrap();
        s.save(&t.to_json()).unwrap();
        assert_eq!(s.load().unwrap(), t);
        assert!(matches!(StateStore::open(&dir), Err(StoreError::Locked(_))));
        drop(s);
        let s2 = StateStore::open(&dir).unwrap();
        assert_eq!(s2.load().unwrap(), t);
        fs::write(s2.path(), b"{\"version\":").unwrap();
        let e = s2.load().unwrap_err();
        assert!(e.to_string().contains("endpoints.json"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The previous version's file, as it wrote it (testdata/v1): every
    /// endpoint keeps its address, and the first save upgrades the file.
    #[test]
    fn loads_the_previous_versions_table() {
        let dir = tempdir("v1");
        fs::create_dir_all(&dir).unwrap();
        fs::copy(
            concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/v1/endpoints.json"),
            dir.join("endpoints.json"),
        )
        .unwrap();
        let s = StateStore::open(&dir).unwrap();
        let t = s.load().unwrap();
        let got: Vec<(String, Vec<String>, Option<String>)> = t
            .endpoints
            .iter()
            .map(|(k, e)| {
                assert_eq!(e.network_id, muslin_model::DEFAULT_NETWORK);
                assert_eq!(k.network, "muslin", "the CNI name stays in the key");
                (
                    k.container_id.clone(),
                    e.addresses.iter().map(|a| a.to_string()).collect(),
                    e.pod.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "fixture-c1".into(),
                    vec!["10.244.43.1/32".into()],
                    Some("shop/web-0".into())
                ),
                (
                    "fixture-c2".into(),
                    vec!["10.244.43.2/32".into()],
                    Some("shop/web-1".into())
                ),
            ]
        );
        assert_eq!(t.cursor, Some("10.244.43.2".parse().unwrap()));
        s.save(&t.to_json()).unwrap();
        let raw: serde_json::Value = serde_json::from_slice(&fs::read(s.path()).unwrap()).unwrap();
        assert_eq!(raw["version"], 2);
        assert_eq!(s.load().unwrap(), t);
        fs::remove_dir_all(&dir).unwrap();
    }
}
