//! The relays this node used, kept in the state directory: a restarted
//! agent keeps sending a relayed peer's traffic through the same relay
//! until it can verify one again, instead of falling back to a direct
//! path that is known to fail (see `muslin_model::relay::Graph::route`).

use std::collections::BTreeMap;
use std::path::Path;

const FILE: &str = "relays.json";

/// Peer -> the relay its traffic went through.
pub fn load(dir: &Path) -> BTreeMap<String, String> {
    match std::fs::read(dir.join(FILE)) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            tracing::warn!(cause = %e, "ignoring an unreadable {FILE}");
            BTreeMap::new()
        }),
        Err(_) => BTreeMap::new(),
    }
}

pub fn save(dir: &Path, relays: &BTreeMap<String, String>) {
    let res = std::fs::create_dir_all(dir).and_then(|()| {
        crate::atomic_file::write(
            &dir.join(FILE),
            &serde_json::to_vec(relays).expect("serializes"),
        )
    });
    if let Err(e) = res {
        tracing::warn!(cause = %e, "cannot keep the relays in use for the next run");
    }
}
