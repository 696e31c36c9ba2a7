//! Generic cluster objects: small JSON documents of some kind (network
//! policies, namespace labels, …) that belong to the cluster, not to the
//! node that wrote them.
//!
//! Like network records (see `network`), every node republishes in gossip
//! every object it knows, so an object outlives its writer; records of one
//! (kind, name) merge by the last write, and a deletion is a record with
//! `deleted_at_ms`, kept for [`TOMBSTONE_MS`] so a node that was away
//! learns of it instead of bringing the object back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How long a deletion is remembered: a node away for longer could bring
/// the object back from what it holds.
pub const TOMBSTONE_MS: u64 = 7 * 24 * 3_600_000;

/// The largest serialized record (the gossip value) a store accepts.
///
/// Gossip is what bounds it (etcd takes 1.5 MiB a request), and the same
/// bound applies on both stores so an object never depends on which one
/// the cluster runs. Gossip's anti-entropy carries a value whole in one
/// datagram (at most 60,000 bytes of changes before sealing, split
/// between values, never inside one), and a broadcast carries only a
/// hint of a value over 700 bytes. 16 KiB keeps a datagram that carries
/// one to a dozen IP fragments on a 1500-byte MTU, where losing any
/// fragment loses the datagram, and leaves room for the record beside
/// it. Policies and label sets are far smaller.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The longest kind: short, since every key of the kind repeats it.
const MAX_KIND: usize = 31;
/// The longest name: a Kubernetes namespace (63) and object name (253)
/// joined, with room to spare.
const MAX_NAME: usize = 320;

/// What identifies an object: (kind, name).
pub type ObjectKey = (String, String);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    pub kind: String,
    pub name: String,
    pub body: serde_json::Value,
    pub updated_at_ms: u64,
    /// The node that wrote this version: breaks ties between writes of
    /// one millisecond.
    pub updated_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at_ms: Option<u64>,
}

impl ObjectRecord {
    pub fn deleted(&self) -> bool {
        self.deleted_at_ms.is_some()
    }

    pub fn key(&self) -> ObjectKey {
        (self.kind.clone(), self.name.clone())
    }

    /// When this version was written: a tombstone counts from its deletion
    /// even if its writer left `updated_at_ms` as it found it.
    fn written_at(&self) -> u64 {
        self.deleted_at_ms
            .map_or(self.updated_at_ms, |d| d.max(self.updated_at_ms))
    }
}

/// Whether `kind` can be an object kind: it becomes a key part.
pub fn valid_kind(kind: &str) -> bool {
    (1..=MAX_KIND).contains(&kind.len()) && kind.bytes().all(|b| b.is_ascii_lowercase())
}

/// Whether `name` can be an object name: it becomes a store key part and
/// a file name part, so never `/`, `.` or `..`.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'))
        && name != "."
        && name != ".."
}

/// Whether `new` replaces `have`: the later write, then the greater
/// writer's name. The remaining ties (one writer, one millisecond) are
/// broken too, by the deletion and then the body, so that every node
/// keeps the same record whatever order they arrived in.
pub fn newer(new: &ObjectRecord, have: &ObjectRecord) -> bool {
    let (a, b) = (
        (new.written_at(), new.updated_by.as_str(), new.deleted()),
        (have.written_at(), have.updated_by.as_str(), have.deleted()),
    );
    match a.cmp(&b) {
        // The common tie is the same record, republished by every node:
        // told apart without writing either body out.
        std::cmp::Ordering::Equal if new.body == have.body => false,
        std::cmp::Ordering::Equal => {
            let (n, h) = (new.body.to_string(), have.body.to_string());
            n > h
        }
        o => o.is_gt(),
    }
}

/// Merges `rec` into `known`: the last write of a (kind, name) wins,
/// deletions included. A record with an invalid kind or name is dropped:
/// its key could not be written back.
pub fn merge(known: &mut BTreeMap<ObjectKey, ObjectRecord>, rec: ObjectRecord) {
    if !valid_kind(&rec.kind) || !valid_name(&rec.name) {
        return;
    }
    match known.get(&rec.key()) {
        Some(have) if !newer(&rec, have) => {}
        _ => {
            known.insert(rec.key(), rec);
        }
    }
}

/// Whether a tombstone is still remembered at `now_ms`.
pub fn remembered(rec: &ObjectRecord, now_ms: u64) -> bool {
    rec.deleted_at_ms
        .is_none_or(|t| now_ms.saturating_sub(t) < TOMBSTONE_MS)
}

/// Drops the tombstones older than [`TOMBSTONE_MS`].
pub fn expire(known: &mut BTreeMap<ObjectKey, ObjectRecord>, now_ms: u64) {
    known.retain(|_, r| remembered(r, now_ms));
}

/// Refuses a record gossip could not carry (see [`MAX_BODY_BYTES`]).
pub fn check_size(rec: &ObjectRecord) -> Result<(), String> {
    let len = serde_json::to_string(rec)
        .map_err(|e| format!("object {}/{}: {e}", rec.kind, rec.name))?
        .len();
    if len > MAX_BODY_BYTES {
        return Err(format!(
            "object {}/{} is {len} bytes serialized; the limit is {MAX_BODY_BYTES}",
            rec.kind, rec.name
        ));
    }
    Ok(())
}

/// What either store checks before writing `rec`: a kind and name that
/// make a key, and a size gossip carries.
pub fn check_put(rec: &ObjectRecord) -> Result<(), String> {
    if !valid_kind(&rec.kind) {
        return Err(format!(
            "object kind {:?}: 1 to {MAX_KIND} lowercase letters",
            rec.kind
        ));
    }
    if !valid_name(&rec.name) {
        return Err(format!(
            "object name {:?}: 1 to {MAX_NAME} ASCII letters, digits, '-', '.', '_' or ':', not '.' or '..'",
            rec.name
        ));
    }
    check_size(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, at: u64, by: &str) -> ObjectRecord {
        ObjectRecord {
            kind: "policy".into(),
            name: name.into(),
            body: serde_json::json!({"at": at}),
            updated_at_ms: at,
            updated_by: by.into(),
            deleted_at_ms: None,
        }
    }

    fn gone(r: &ObjectRecord, at: u64, by: &str) -> ObjectRecord {
        ObjectRecord {
            updated_at_ms: at,
            updated_by: by.into(),
            deleted_at_ms: Some(at),
            ..r.clone()
        }
    }

    fn merged(recs: &[ObjectRecord]) -> BTreeMap<ObjectKey, ObjectRecord> {
        let mut known = BTreeMap::new();
        for r in recs {
            merge(&mut known, r.clone());
        }
        known
    }

    fn key(name: &str) -> ObjectKey {
        ("policy".into(), name.into())
    }

    #[test]
    fn the_later_write_wins_in_any_order() {
        let (a, b) = (rec("web", 1, "h1"), rec("web", 2, "h1"));
        assert_eq!(merged(&[a.clone(), b.clone()])[&key("web")], b);
        assert_eq!(merged(&[b.clone(), a.clone()])[&key("web")], b);
        // One millisecond: the writer's name decides.
        let (x, y) = (rec("web", 5, "h1"), rec("web", 5, "h2"));
        assert_eq!(merged(&[x.clone(), y.clone()])[&key("web")], y);
        assert_eq!(merged(&[y.clone(), x.clone()])[&key("web")], y);
        // One writer, one millisecond, two bodies: still one answer.
        let z = ObjectRecord {
            body: serde_json::json!({"other": true}),
            ..y.clone()
        };
        assert_eq!(
            merged(&[y.clone(), z.clone()]),
            merged(&[z.clone(), y.clone()])
        );
        assert_eq!(merged(&[a.clone(), a.clone()]).len(), 1);
    }

    #[test]
    fn a_deletion_wins_over_older_writes_and_loses_to_newer() {
        let a = rec("web", 1, "h1");
        let del = gone(&a, 5, "h2");
        assert!(del.deleted() && !a.deleted());
        let k = merged(&[a.clone(), del.clone()]);
        assert!(k[&key("web")].deleted(), "the tombstone wins");
        let k = merged(&[del.clone(), a.clone()]);
        assert!(k[&key("web")].deleted(), "a stale record cannot undo it");
        let again = rec("web", 9, "h1");
        let k = merged(&[del.clone(), again.clone()]);
        assert_eq!(k[&key("web")], again, "written again after the deletion");
        // A tombstone counts from its deletion time.
        let late = ObjectRecord {
            deleted_at_ms: Some(10),
            ..a.clone()
        };
        assert!(merged(&[again, late])[&key("web")].deleted());
        // Same writer, same millisecond: the deletion.
        let k = merged(&[gone(&a, 1, "h1"), a.clone()]);
        assert!(k[&key("web")].deleted());
    }

    #[test]
    fn invalid_records_never_enter() {
        let bad = [
            ObjectRecord {
                kind: "Policy".into(),
                ..rec("web", 1, "h1")
            },
            ObjectRecord {
                kind: String::new(),
                ..rec("web", 1, "h1")
            },
            rec("a/b", 1, "h1"),
            rec("..", 1, "h1"),
            rec("", 1, "h1"),
        ];
        assert!(merged(&bad).is_empty());
        for b in &bad {
            assert!(check_put(b).is_err(), "{b:?}");
        }
        assert!(check_put(&rec("web", 1, "h1")).is_ok());
        assert!(valid_kind("networkpolicy") && !valid_kind(&"k".repeat(32)));
        assert!(!valid_kind("net-policy") && !valid_kind("v2"));
    }

    #[test]
    fn names_are_safe_key_and_file_parts() {
        for ok in [
            "web",
            "shop:web-0",
            "a.b_c",
            "...",
            "x".repeat(320).as_str(),
        ] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "/",
            "a b",
            "é",
            "a\0",
            "x".repeat(321).as_str(),
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn tombstones_expire_and_live_records_stay() {
        let a = rec("web", 1, "h1");
        let mut k = merged(&[a.clone(), gone(&rec("db", 1, "h1"), 100, "h1")]);
        expire(&mut k, 100 + TOMBSTONE_MS - 1);
        assert_eq!(k.len(), 2, "not yet");
        expire(&mut k, 100 + TOMBSTONE_MS);
        assert_eq!(k.keys().collect::<Vec<_>>(), [&key("web")]);
        expire(&mut k, u64::MAX);
        assert_eq!(k[&key("web")], a, "live records never expire");
    }

    #[test]
    fn oversized_records_are_refused_naming_both_sizes() {
        let mut r = rec("web", 1, "h1");
        assert!(check_size(&r).is_ok());
        r.body = serde_json::json!({"x": "y".repeat(MAX_BODY_BYTES)});
        let e = check_size(&r).unwrap_err();
        let len = serde_json::to_string(&r).unwrap().len();
        assert!(
            e.contains(&len.to_string()) && e.contains(&MAX_BODY_BYTES.to_string()),
            "{e}"
        );
        // A tombstone round-trips; a live record omits `deleted_at_ms`.
        let json = serde_json::to_string(&rec("web", 1, "h1")).unwrap();
        assert!(!json.contains("deleted_at_ms"));
        let del = gone(&r, 3, "h2");
        let back: ObjectRecord =
            serde_json::from_str(&serde_json::to_string(&del).unwrap()).unwrap();
        assert_eq!(back, del);
    }
}
