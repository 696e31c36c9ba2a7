//! The peers this node has seen, kept in the state directory (see
//! `muslin_model::cluster::Remembered`): a restarted agent knows the
//! cluster it belonged to before the store has told it anything, and keeps
//! routes to peers it cannot hear (paused, partitioned) until their TTL.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use muslin_model::cluster::Remembered;

const FILE: &str = "peers.json";
/// How often the memory is written (it changes every round: last-seen times).
const SAVE_EVERY: Duration = Duration::from_secs(10);

/// The file: whose memory it is, and the peers.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    node: String,
    peers: Remembered,
}

pub struct Memory {
    pub peers: Remembered,
    me: String,
    file: PathBuf,
    saved: Option<Instant>,
    /// The peers (without their last-seen times) as last written.
    written: Vec<(String, muslin_model::cluster::PeerView)>,
}

impl Memory {
    pub fn load(dir: &Path, me: &str) -> Memory {
        let file = dir.join(FILE);
        let peers = match std::fs::read(&file).map(|b| serde_json::from_slice::<Stored>(&b)) {
            // A renamed node starts afresh: its old name is a peer now.
            Ok(Ok(s)) if s.node == me => s.peers,
            Ok(Ok(_)) => Remembered::default(),
            Ok(Err(e)) => {
                tracing::warn!(cause = %e, file = ?file, "ignoring unreadable remembered peers");
                Remembered::default()
            }
            Err(_) => Remembered::default(),
        };
        if !peers.peers.is_empty() {
            tracing::info!(peers = ?peers.peers.keys().collect::<Vec<_>>(), "remembering the peers of the previous run until the cluster speaks or their TTL passes");
        }
        Memory {
            peers,
            me: me.to_string(),
            file,
            saved: None,
            written: Vec::new(),
        }
    }

    /// Writes the memory when a peer came, went or changed, and otherwise
    /// every [`SAVE_EVERY`] for the last-seen times.
    pub fn save_if_due(&mut self) {
        let now: Vec<(String, muslin_model::cluster::PeerView)> = self
            .peers
            .peers
            .iter()
            .map(|(n, (p, _))| (n.clone(), p.clone()))
            .collect();
        if now == self.written && self.saved.is_some_and(|t| t.elapsed() < SAVE_EVERY) {
            return;
        }
        self.written = now;
        self.saved = Some(Instant::now());
        let res = crate::atomic_file::write(
            &self.file,
            &serde_json::to_vec(&Stored {
                node: self.me.clone(),
                peers: self.peers.clone(),
            })
            .expect("serializes"),
        );
        if let Err(e) = res {
            tracing::warn!(cause = %e, file = ?self.file, "could not keep the remembered peers");
        }
    }
}
