//! The cluster state gossip carries, as plain data: each node's keys,
//! versioned by the node that writes them, and what anti-entropy
//! compares. No I/O and no clock of its own (callers pass `now`), so the
//! merging rules are tested here.
//!
//! Each node (by name, and by generation: a restarted agent is a new
//! generation) writes only its own keys. A write takes the next version;
//! a deletion leaves a tombstone that is dropped after a grace period.
//! A holder of a node's state tracks two versions: the highest it holds,
//! and the watermark, below which it holds every change. Broadcasts may
//! arrive out of order or not at all, so only a contiguous version or a
//! complete delta moves the watermark; anti-entropy compares watermarks.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A node as the membership protocol knows it. `bump` grows when the
/// node rejoins after the cluster declared it down; `generation` when its
/// agent restarts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    /// Shared: the membership protocol asks a member for its name (its
    /// `Addr`) in most of what it does, and a copy must not allocate. A
    /// member read off the wire pays for it (a string, then the shared
    /// copy): once per datagram, against many copies per round.
    pub name: std::sync::Arc<str>,
    pub generation: u64,
    pub bump: u32,
    pub addr: SocketAddr,
}

/// A node is its name: two nodes may advertise one address (a template
/// pinning every host to a shared 10.0.2.15 is the classic mistake), and
/// must still be two members, for the mistake to be seen and named.
impl foca::Identity for Member {
    type Addr = std::sync::Arc<str>;

    fn renew(&self) -> Option<Self> {
        Some(Member {
            bump: self.bump.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> std::sync::Arc<str> {
        self.name.clone()
    }

    /// Two identities of one node: the later start (or rejoin) is the
    /// live one.
    fn win_addr_conflict(&self, other: &Self) -> bool {
        (self.generation, self.bump) > (other.generation, other.bump)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub version: u64,
    /// `None`: deleted (a tombstone).
    pub value: Option<String>,
}

/// One change, as a broadcast carries it. Without `value` and with
/// `hint` set, it only says the change exists: it was too large for a
/// broadcast, and a holder fetches it from the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    pub name: String,
    pub generation: u64,
    pub key: String,
    pub entry: Entry,
    pub hint: bool,
}

/// Every change of a node's state in `(from, to]`: all keys whose
/// current version lies there. With `reset` (for a holder behind the
/// sender's dropped tombstones), the first piece of the whole live state:
/// the receiver drops every key not in `keep` (those deleted meanwhile)
/// and takes `gc` as its own tombstone horizon; the rest follows as
/// ordinary pieces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub name: String,
    pub generation: u64,
    pub from: u64,
    pub to: u64,
    pub reset: bool,
    pub entries: Vec<(String, Entry)>,
    #[serde(default)]
    pub keep: Vec<String>,
    #[serde(default)]
    pub gc: u64,
}

/// A node's state as a holder sees it.
#[derive(Debug, Clone, Default)]
pub struct NodeKv {
    entries: BTreeMap<String, Entry>,
    max_version: u64,
    watermark: u64,
    /// Tombstones up to this version have been dropped.
    gc_version: u64,
    /// When each tombstone was learnt, oldest first, for dropping them.
    tombstones: VecDeque<(Instant, u64, String)>,
    /// Grows with every change of what is held: what a cache of the
    /// decoded state compares (versions alone miss a gap filled below the
    /// highest version).
    revision: u64,
}

impl NodeKv {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).and_then(|e| e.value.as_deref())
    }

    /// The live keys and values.
    pub fn key_values(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .filter_map(|(k, e)| e.value.as_deref().map(|v| (k.as_str(), v)))
    }

    #[cfg(test)]
    pub fn max_version(&self) -> u64 {
        self.max_version
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Whether this state may stand for its node: its record is held, and
    /// so is every change made before the record. A generation writes its
    /// claims first and its record last, so a holder that has the record
    /// but missed a claim (broadcasts arrive in any order) does not take
    /// the node for one without blocks and drop the routes to them.
    pub fn ready(&self) -> bool {
        self.entries
            .get(RECORD_KEY)
            .is_some_and(|e| e.value.is_some() && e.version <= self.watermark)
    }

    #[cfg(test)]
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    #[cfg(test)]
    pub fn live_keys(&self) -> usize {
        self.entries.values().filter(|e| e.value.is_some()).count()
    }

    /// Applies one entry if it is newer than what is held; says whether
    /// it was. A lone change (a broadcast) at or below the tombstone
    /// horizon may be a value deleted since, whose tombstone is gone: it
    /// is refused. Deltas are complete from where they start, so what
    /// they carry stands.
    fn apply(&mut self, key: &str, entry: &Entry, now: Instant, lone: bool) -> bool {
        if lone && entry.version <= self.gc_version {
            return false;
        }
        if self
            .entries
            .get(key)
            .is_some_and(|e| e.version >= entry.version)
        {
            return false;
        }
        if entry.value.is_none() {
            self.tombstones
                .push_back((now, entry.version, key.to_string()));
        }
        self.entries.insert(key.to_string(), entry.clone());
        self.max_version = self.max_version.max(entry.version);
        self.revision += 1;
        true
    }

    /// Moves the watermark over the versions held just above it: a gap
    /// filled by a late broadcast joins what arrived after it.
    fn close_gap(&mut self) {
        if self.max_version <= self.watermark {
            return;
        }
        let above: std::collections::BTreeSet<u64> = self
            .entries
            .values()
            .map(|e| e.version)
            .filter(|v| *v > self.watermark)
            .collect();
        for v in above {
            if v != self.watermark + 1 {
                break;
            }
            self.watermark = v;
        }
    }

    /// Writes one of this node's own keys: the next version. Returns the
    /// entry, or `None` when the value is already there.
    fn write(&mut self, key: &str, value: Option<String>, now: Instant) -> Option<Entry> {
        match self.entries.get(key) {
            Some(e) if e.value == value => return None,
            None if value.is_none() => return None,
            _ => {}
        }
        let entry = Entry {
            version: self.max_version + 1,
            value,
        };
        self.apply(key, &entry, now, false);
        self.watermark = self.max_version;
        Some(entry)
    }

    /// Everything after `from`, or the whole live state when tombstones
    /// it would need are gone.
    pub fn delta(&self, name: &str, generation: u64, from: u64) -> Delta {
        let reset = from < self.gc_version;
        let entries = self
            .entries
            .iter()
            .filter(|(_, e)| {
                if reset {
                    // Live keys, and the deletions still held: a holder
                    // may have a key deleted since, learnt above the
                    // horizon, that `keep` does not drop.
                    e.value.is_some() || e.version > self.gc_version
                } else {
                    e.version > from
                }
            })
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        Delta {
            name: name.to_string(),
            generation,
            from: if reset { 0 } else { from },
            to: self.watermark,
            reset,
            entries,
            keep: if reset {
                self.key_values().map(|(k, _)| k.to_string()).collect()
            } else {
                Vec::new()
            },
            gc: self.gc_version,
        }
    }

    fn apply_delta(&mut self, d: &Delta, now: Instant) -> bool {
        let mut changed = false;
        if d.reset && self.watermark < d.gc {
            // Keys the sender no longer holds were deleted, and their
            // tombstones dropped: drop them too. (A key written after
            // the sender's horizon is newer than any deletion it missed.)
            let keep: std::collections::HashSet<&str> = d.keep.iter().map(String::as_str).collect();
            let before = self.entries.len();
            self.entries
                .retain(|k, e| keep.contains(k.as_str()) || e.version > d.gc);
            if self.entries.len() != before {
                changed = true;
                self.revision += 1;
            }
            self.gc_version = self.gc_version.max(d.gc);
        }
        for (k, e) in &d.entries {
            changed |= self.apply(k, e, now, false);
        }
        if d.from <= self.watermark && d.to > self.watermark {
            self.watermark = d.to;
            self.max_version = self.max_version.max(d.to);
            changed = true;
        }
        if changed {
            self.close_gap();
        }
        changed
    }

    /// Drops tombstones older than `grace`.
    fn drop_tombstones(&mut self, now: Instant, grace: Duration) {
        while let Some((at, version, _)) = self.tombstones.front() {
            // Above the watermark a tombstone still stands for a gap: a
            // version below it may yet arrive, and must not be refused.
            if now.duration_since(*at) < grace || *version > self.watermark {
                break;
            }
            let (_, version_, key) = self.tombstones.pop_front().expect("front");
            if self
                .entries
                .get(&key)
                .is_some_and(|e| e.version == version_ && e.value.is_none())
            {
                self.entries.remove(&key);
                self.gc_version = self.gc_version.max(version_);
                self.revision += 1;
            }
        }
    }
}

/// Buckets of the anti-entropy digest: each node falls in one by its
/// name, so a change costs a summary of one bucket, not of the cluster.
pub const BUCKETS: usize = 64;

/// FNV-1a: stable across builds and platforms, unlike the standard
/// hasher, since two agents built apart must agree on a digest.
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub fn bucket(name: &str) -> usize {
    (fnv(&[name.as_bytes()]) % BUCKETS as u64) as usize
}

/// What a node holds of another, for a summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub name: String,
    pub generation: u64,
    pub watermark: u64,
}

/// What comparing a peer's summary with ours calls for.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Deltas to send the peer.
    pub push: Vec<Delta>,
    /// States to ask the peer for: (name, generation, our watermark).
    pub pull: Vec<Held>,
}

/// Every node's state this node holds.
pub struct Cluster {
    me: String,
    generation: u64,
    nodes: BTreeMap<(String, u64), NodeKv>,
    /// States dropped (expired, or replaced by a newer generation), kept
    /// out until this instant so a peer cannot bring them back.
    forgotten: HashMap<(String, u64), Instant>,
    /// Deltas a hint asked for: (name, generation, from, whom to ask).
    pub wanted: Vec<(Held, SocketAddr)>,
    /// How long a dropped state stays refused.
    forget: Duration,
}

/// The key whose presence makes a generation stand for its node.
pub const RECORD_KEY: &str = muslin_model::cluster::NODE_KEY;

impl Cluster {
    pub fn new(me: &str, generation: u64) -> Cluster {
        let mut nodes = BTreeMap::new();
        nodes.insert((me.to_string(), generation), NodeKv::default());
        Cluster {
            me: me.to_string(),
            generation,
            nodes,
            forgotten: HashMap::new(),
            wanted: Vec::new(),
            forget: FORGET,
        }
    }

    pub fn own(&self) -> &NodeKv {
        &self.nodes[&(self.me.clone(), self.generation)]
    }

    /// Writes (or, with `None`, deletes) one of our keys; the update to
    /// broadcast, if anything changed.
    pub fn write(&mut self, key: &str, value: Option<String>, now: Instant) -> Option<Update> {
        let me = (self.me.clone(), self.generation);
        let kv = self.nodes.get_mut(&me).expect("own state");
        let entry = kv.write(key, value, now)?;
        Some(Update {
            name: me.0,
            generation: me.1,
            key: key.to_string(),
            entry,
            hint: false,
        })
    }

    /// Every state held: (name, generation) and the state.
    pub fn nodes(&self) -> impl Iterator<Item = (&(String, u64), &NodeKv)> {
        self.nodes.iter()
    }

    /// The newest generation held of `name`.
    pub fn newest(&self, name: &str) -> Option<&NodeKv> {
        self.nodes
            .range((name.to_string(), 0)..=(name.to_string(), u64::MAX))
            .next_back()
            .map(|(_, kv)| kv)
    }

    pub fn node(&self, name: &str, generation: u64) -> Option<&NodeKv> {
        self.nodes.get(&(name.to_string(), generation))
    }

    /// Whether a state of `name`/`generation` may be held: not ours to
    /// learn from others, not forgotten, not older than a generation of
    /// the same node that has published its record.
    fn admits(&self, name: &str, generation: u64, now: Instant) -> bool {
        if name == self.me {
            return false;
        }
        if self
            .forgotten
            .get(&(name.to_string(), generation))
            .is_some_and(|until| now < *until)
        {
            return false;
        }
        !self
            .nodes
            .range((name.to_string(), generation + 1)..)
            .take_while(|((n, _), _)| n == name)
            .any(|(_, kv)| kv.ready())
    }

    fn state_mut(&mut self, name: &str, generation: u64, now: Instant) -> Option<&mut NodeKv> {
        if !self.admits(name, generation, now) {
            return None;
        }
        Some(
            self.nodes
                .entry((name.to_string(), generation))
                .or_default(),
        )
    }

    /// Applies a broadcast; says whether it was news (then it spreads on).
    pub fn apply_update(&mut self, u: &Update, from: Option<SocketAddr>, now: Instant) -> bool {
        let Some(kv) = self.state_mut(&u.name, u.generation, now) else {
            return false;
        };
        if u.hint {
            let behind = kv
                .entries
                .get(&u.key)
                .is_none_or(|e| e.version < u.entry.version);
            if behind && u.entry.version > kv.watermark {
                let held = Held {
                    name: u.name.clone(),
                    generation: u.generation,
                    watermark: kv.watermark,
                };
                if let Some(from) = from {
                    self.wanted.push((held, from));
                }
                return true;
            }
            return false;
        }
        let new = kv.apply(&u.key, &u.entry, now, true);
        if new && u.entry.version == kv.watermark + 1 {
            kv.watermark = u.entry.version;
            kv.close_gap();
        }
        if new {
            self.retire_older(&u.name.clone(), now);
        }
        new
    }

    pub fn apply_delta(&mut self, d: &Delta, now: Instant) -> bool {
        let Some(kv) = self.state_mut(&d.name, d.generation, now) else {
            return false;
        };
        let changed = kv.apply_delta(d, now);
        if changed {
            self.retire_older(&d.name.clone(), now);
        }
        changed
    }

    /// Once a newer generation of a node is ready (its record and all
    /// before it held), the older ones stand for nothing: they are
    /// dropped, and kept out for `FORGET`.
    fn retire_older(&mut self, name: &str, now: Instant) {
        let gens: Vec<u64> = self
            .nodes
            .range((name.to_string(), 0)..)
            .take_while(|((n, _), _)| n == name)
            .map(|((_, g), _)| *g)
            .collect();
        let Some(newest_ready) = gens
            .iter()
            .rev()
            .find(|g| self.nodes[&(name.to_string(), **g)].ready())
        else {
            return;
        };
        for g in gens.iter().filter(|g| *g < newest_ready) {
            self.nodes.remove(&(name.to_string(), *g));
            self.forgotten
                .insert((name.to_string(), *g), now + self.forget);
        }
    }

    /// Drops the states of nodes `expired` says are gone, and old
    /// tombstones; forgets what was forgotten long enough ago. A dropped
    /// state is refused for `forget` (at least 10 minutes): at least the
    /// TTL, so a peer that learnt it late, and keeps it a TTL from then,
    /// cannot hand it back.
    pub fn expire(
        &mut self,
        now: Instant,
        expired: impl Fn(&str) -> bool,
        tombstone_grace: Duration,
        forget: Duration,
    ) {
        self.forget = forget.max(FORGET);
        let gone: Vec<(String, u64)> = self
            .nodes
            .keys()
            .filter(|(n, _)| *n != self.me && expired(n))
            .cloned()
            .collect();
        for k in gone {
            self.nodes.remove(&k);
            self.forgotten.insert(k, now + self.forget);
        }
        for kv in self.nodes.values_mut() {
            kv.drop_tombstones(now, tombstone_grace);
        }
        self.forgotten.retain(|_, until| now < *until);
    }

    /// The digest: one hash per bucket of (name, generation, watermark).
    pub fn digest(&self) -> Vec<u32> {
        let mut d = vec![0u32; BUCKETS];
        for ((name, generation), kv) in &self.nodes {
            let h = fnv(&[
                name.as_bytes(),
                &generation.to_be_bytes(),
                &kv.watermark.to_be_bytes(),
            ]);
            // XOR: the order nodes are visited in does not matter.
            d[bucket(name)] ^= (h ^ (h >> 32)) as u32;
        }
        d
    }

    /// Buckets where `theirs` differs from ours.
    pub fn differing(&self, theirs: &[u32]) -> Vec<u8> {
        let ours = self.digest();
        (0..BUCKETS)
            .filter(|b| theirs.get(*b) != Some(&ours[*b]))
            .map(|b| b as u8)
            .collect()
    }

    /// What we hold of the nodes in `buckets`.
    pub fn summary(&self, buckets: &[u8]) -> Vec<Held> {
        self.nodes
            .iter()
            .filter(|((n, _), _)| buckets.contains(&(bucket(n) as u8)))
            .map(|((name, generation), kv)| Held {
                name: name.clone(),
                generation: *generation,
                watermark: kv.watermark,
            })
            .collect()
    }

    /// Compares a peer's summary of `buckets` with what we hold.
    pub fn compare(&self, buckets: &[u8], theirs: &[Held], now: Instant) -> Plan {
        let mut plan = Plan::default();
        let theirs_by: HashMap<(&str, u64), u64> = theirs
            .iter()
            .map(|h| ((h.name.as_str(), h.generation), h.watermark))
            .collect();
        for ((name, generation), kv) in &self.nodes {
            if !buckets.contains(&(bucket(name) as u8)) {
                continue;
            }
            let theirs = theirs_by.get(&(name.as_str(), *generation)).copied();
            match theirs {
                Some(w) if w >= kv.watermark => {}
                Some(w) => plan.push.push(kv.delta(name, *generation, w)),
                None => plan.push.push(kv.delta(name, *generation, 0)),
            }
        }
        for h in theirs {
            let ours = self.node(&h.name, h.generation).map(|kv| kv.watermark);
            let behind = match ours {
                Some(w) => h.watermark > w,
                None => self.admits(&h.name, h.generation, now),
            };
            if behind && h.name != self.me {
                plan.pull.push(Held {
                    watermark: ours.unwrap_or(0),
                    ..h.clone()
                });
            }
        }
        plan
    }

    /// The delta a pull asks for, if we hold that state.
    pub fn answer_pull(&self, h: &Held) -> Option<Delta> {
        let kv = self.node(&h.name, h.generation)?;
        (kv.watermark > h.watermark || h.watermark == 0)
            .then(|| kv.delta(&h.name, h.generation, h.watermark))
    }
}

/// How long a dropped state is kept out.
const FORGET: Duration = Duration::from_secs(600);

/// Splits a delta into pieces of about `max` bytes of keys and values,
/// each covering a contiguous range of versions, so each applies alone
/// once the ones before it have. A reset's first piece carries the reset.
pub fn split(d: Delta, max: usize) -> Vec<Delta> {
    let size = |(k, e): &(String, Entry)| k.len() + e.value.as_ref().map_or(0, |v| v.len()) + 16;
    let keep_size: usize = d.keep.iter().map(|k| k.len() + 2).sum();
    if d.entries.iter().map(size).sum::<usize>() + keep_size <= max {
        return vec![d];
    }
    let mut entries = d.entries.clone();
    entries.sort_by_key(|(_, e)| e.version);
    let piece = |from: u64, to: u64, entries: Vec<(String, Entry)>, first: bool| Delta {
        name: d.name.clone(),
        generation: d.generation,
        from,
        // Never past what the sender holds completely: entries above its
        // watermark (a gap it has not filled) ride along, claiming nothing.
        to: to.min(d.to).max(from),
        reset: first && d.reset,
        entries,
        keep: if first && d.reset {
            d.keep.clone()
        } else {
            Vec::new()
        },
        gc: d.gc,
    };
    let mut out = Vec::new();
    let mut from = d.from;
    let mut chunk: Vec<(String, Entry)> = Vec::new();
    let mut bytes = keep_size;
    for e in entries {
        let s = size(&e);
        if bytes + s > max && !chunk.is_empty() {
            let to = chunk.last().expect("non-empty").1.version;
            let p = piece(from, to, std::mem::take(&mut chunk), out.is_empty());
            from = p.to;
            out.push(p);
            bytes = 0;
        }
        bytes += s;
        chunk.push(e);
    }
    let last = piece(from, d.to, chunk, out.is_empty());
    out.push(last);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    fn set(c: &mut Cluster, k: &str, v: &str, now: Instant) -> Update {
        c.write(k, Some(v.into()), now).expect("a change")
    }

    #[test]
    fn writes_version_and_an_unchanged_value_is_no_write() {
        let now = t0();
        let mut a = Cluster::new("a", 1);
        let u = set(&mut a, "k", "v", now);
        assert_eq!((u.entry.version, u.name.as_str()), (1, "a"));
        assert!(a.write("k", Some("v".into()), now).is_none());
        assert!(a.write("absent", None, now).is_none());
        let d = a.write("k", None, now).unwrap();
        assert_eq!((d.entry.version, d.entry.value), (2, None));
        assert_eq!(a.own().watermark(), 2);
        assert_eq!(a.own().get("k"), None);
    }

    #[test]
    fn broadcasts_out_of_order_hold_the_watermark_until_a_delta_fills_the_gap() {
        let now = t0();
        let mut a = Cluster::new("a", 1);
        let u1 = set(&mut a, "k1", "1", now);
        let u2 = set(&mut a, "k2", "2", now);
        let mut b = Cluster::new("b", 7);
        assert!(b.apply_update(&u2, None, now));
        assert!(!b.apply_update(&u2, None, now), "a repeat is no news");
        assert_eq!(b.node("a", 1).unwrap().watermark(), 0);
        assert_eq!(b.node("a", 1).unwrap().max_version(), 2);
        // Digests differ (on a, and on b, which a lacks); the summaries
        // say b is behind on a, and a lacks b.
        let diff = b.differing(&a.digest());
        assert!(diff.contains(&(bucket("a") as u8)));
        let plan = a.compare(&diff, &b.summary(&diff), now);
        assert_eq!(plan.push.len(), 1);
        assert!(b.apply_delta(&plan.push[0], now));
        assert_eq!(b.node("a", 1).unwrap().watermark(), 2);
        assert_eq!(b.node("a", 1).unwrap().get("k1"), Some("1"));
        assert_eq!(plan.pull.len(), 1);
        assert_eq!(plan.pull[0].name, "b");
        let d = b.answer_pull(&plan.pull[0]).unwrap();
        a.apply_delta(&d, now);
        assert_eq!(a.digest(), b.digest());
        assert!(a.differing(&b.digest()).is_empty());
        drop(u1);
    }

    #[test]
    fn a_node_is_never_taught_its_own_state() {
        let now = t0();
        let mut a = Cluster::new("a", 1);
        set(&mut a, "k", "v", now);
        let mut old = Cluster::new("a", 0);
        let stale = set(&mut old, "k", "old", now);
        assert!(!a.apply_update(&stale, None, now));
        assert!(a.node("a", 0).is_none());
    }

    #[test]
    fn a_newer_generation_with_its_record_retires_the_older_one_for_good() {
        let now = t0();
        let mut a1 = Cluster::new("a", 1);
        let r1 = set(&mut a1, RECORD_KEY, "{}", now);
        let mut b = Cluster::new("b", 9);
        b.apply_update(&r1, None, now);
        let mut a2 = Cluster::new("a", 2);
        // Until the new generation's record arrives, both are held: the
        // old one's blocks keep their routes.
        let other = set(&mut a2, "block/x", "{}", now);
        b.apply_update(&other, None, now);
        assert!(b.node("a", 1).is_some() && b.node("a", 2).is_some());
        let r2 = set(&mut a2, RECORD_KEY, "{}", now);
        b.apply_update(&r2, None, now);
        assert!(b.node("a", 1).is_none());
        assert!(b.node("a", 2).unwrap().ready());
        // A peer still holding generation 1 cannot bring it back.
        assert!(!b.apply_delta(&a1.own().delta("a", 1, 0), now));
        assert!(b.node("a", 1).is_none());
    }

    #[test]
    fn a_new_generation_whose_record_outran_its_claims_waits_for_them() {
        let now = t0();
        let mut a1 = Cluster::new("a", 1);
        let mut b = Cluster::new("b", 9);
        b.apply_update(&set(&mut a1, "block/x", "{}", now), None, now);
        b.apply_update(&set(&mut a1, RECORD_KEY, "{}", now), None, now);
        assert!(b.node("a", 1).unwrap().ready());
        // The restarted node claims first and publishes its record last;
        // here the record arrives first.
        let mut a2 = Cluster::new("a", 2);
        let claim = set(&mut a2, "block/x", "{}", now);
        let record = set(&mut a2, RECORD_KEY, "{}", now);
        assert!(b.apply_update(&record, None, now));
        assert!(!b.node("a", 2).unwrap().ready());
        assert!(
            b.node("a", 1).is_some(),
            "the old generation's claims stand until the new one's arrive"
        );
        // Its updates are still taken.
        assert!(b.apply_update(&set(&mut a1, "block/y", "{}", now), None, now));
        b.apply_update(&claim, None, now);
        assert!(b.node("a", 2).unwrap().ready());
        assert!(b.node("a", 1).is_none());
    }

    #[test]
    fn a_reset_carries_the_deletions_a_holder_may_have_missed() {
        let now = t0();
        let mut a = Cluster::new("a", 1);
        set(&mut a, "old", "x", now);
        a.write("old", None, now).unwrap();
        let later = now + Duration::from_secs(61);
        a.expire(later, |_| false, Duration::from_secs(60), Duration::ZERO);
        // A late holder hears of `k` by broadcast, then misses its
        // deletion; it is behind the horizon, so it gets a reset.
        let k = set(&mut a, "k", "v", later);
        let mut late = Cluster::new("late", 1);
        assert!(late.apply_update(&k, None, later));
        a.write("k", None, later).unwrap();
        let held = late.node("a", 1).unwrap().watermark();
        let d = a.own().delta("a", 1, held);
        assert!(d.reset);
        late.apply_delta(&d, later);
        let kv = late.node("a", 1).unwrap();
        assert_eq!(kv.get("k"), None, "the deleted key stays deleted");
        assert_eq!(kv.watermark(), a.own().watermark());
    }

    #[test]
    fn expired_nodes_leave_and_stay_out_while_forgotten() {
        let now = t0();
        let mut a = Cluster::new("a", 1);
        let u = set(&mut a, RECORD_KEY, "{}", now);
        let mut b = Cluster::new("b", 1);
        b.apply_update(&u, None, now);
        b.expire(now, |n| n == "a", Duration::from_secs(60), Duration::ZERO);
        assert!(b.node("a", 1).is_none());
        assert!(!b.apply_update(&u, None, now));
        // Its next generation is welcome.
        let mut a2 = Cluster::new("a", 2);
        let u2 = set(&mut a2, RECORD_KEY, "{}", now);
        assert!(b.apply_update(&u2, None, now));
        // And so is the old one once forgotten long enough.
        let later = now + FORGET + Duration::from_secs(1);
        b.expire(later, |_| false, Duration::from_secs(60), Duration::ZERO);
        assert!(b.forgotten.is_empty());
    }

    #[test]
    fn tombstones_go_after_their_grace_and_a_late_peer_gets_a_reset() {
        let now = t0();
        let mut a = Cluster::new("a", 1);
        set(&mut a, "gone", "x", now);
        set(&mut a, "kept", "y", now);
        let mut late = Cluster::new("late", 1);
        late.apply_delta(&a.own().delta("a", 1, 0), now);
        a.write("gone", None, now).unwrap();
        let later = now + Duration::from_secs(61);
        a.expire(later, |_| false, Duration::from_secs(60), Duration::ZERO);
        assert_eq!(a.own().entries.len(), 1, "the tombstone is dropped");
        let d = a
            .own()
            .delta("a", 1, late.node("a", 1).unwrap().watermark());
        assert!(d.reset);
        late.apply_delta(&d, later);
        let kv = late.node("a", 1).unwrap();
        assert_eq!(kv.get("gone"), None);
        assert_eq!(kv.get("kept"), Some("y"));
        assert_eq!(kv.watermark(), a.own().watermark());
    }

    #[test]
    fn a_hint_asks_the_sender_for_what_it_lacks() {
        let now = t0();
        let mut a = Cluster::new("a", 1);
        let mut u = set(&mut a, "big", &"x".repeat(5000), now);
        u.entry.value = None;
        u.hint = true;
        let mut b = Cluster::new("b", 1);
        let from: SocketAddr = "10.0.0.1:7946".parse().unwrap();
        assert!(b.apply_update(&u, Some(from), now));
        assert_eq!(b.wanted.len(), 1);
        let (held, whom) = b.wanted.pop().unwrap();
        assert_eq!(whom, from);
        let d = a.answer_pull(&held).unwrap();
        b.apply_delta(&d, now);
        assert_eq!(b.node("a", 1).unwrap().get("big").map(str::len), Some(5000));
    }

    #[test]
    fn split_pieces_apply_one_by_one() {
        let now = t0();
        let mut a = Cluster::new("a", 1);
        for i in 0..50 {
            set(&mut a, &format!("k{i}"), &"v".repeat(100), now);
        }
        let pieces = split(a.own().delta("a", 1, 0), 1000);
        assert!(pieces.len() > 5, "{}", pieces.len());
        let mut b = Cluster::new("b", 1);
        for p in &pieces {
            b.apply_delta(p, now);
        }
        assert_eq!(b.node("a", 1).unwrap().watermark(), 50);
        assert_eq!(b.node("a", 1).unwrap().live_keys(), 50);
        // Out of order: the watermark waits for the gap.
        let mut c = Cluster::new("c", 1);
        c.apply_delta(&pieces[1], now);
        assert_eq!(c.node("a", 1).unwrap().watermark(), 0);
    }

    #[test]
    fn digests_do_not_grow_with_the_cluster() {
        let now = t0();
        let mut c = Cluster::new("me", 1);
        for i in 0..1000 {
            let mut n = Cluster::new(&format!("node-{i}"), 1);
            let u = set(&mut n, RECORD_KEY, "{}", now);
            c.apply_update(&u, None, now);
        }
        assert_eq!(c.digest().len(), BUCKETS);
        // One change differs in one bucket only.
        let before = c.digest();
        let mut n = Cluster::new("node-7", 1);
        set(&mut n, RECORD_KEY, "{}", now);
        let u = set(&mut n, "k", "v", now);
        c.apply_update(&u, None, now);
        assert_eq!(c.differing(&before), vec![bucket("node-7") as u8]);
    }

    #[test]
    fn a_reset_too_big_for_one_datagram_arrives_in_pieces_and_deletes_what_it_must() {
        let now = t0();
        let mut a = Cluster::new("a", 1);
        set(&mut a, "gone", "x", now);
        let mut late = Cluster::new("late", 1);
        late.apply_delta(&a.own().delta("a", 1, 0), now);
        for i in 0..100 {
            set(&mut a, &format!("k{i}"), &"v".repeat(200), now);
        }
        a.write("gone", None, now).unwrap();
        let later = now + Duration::from_secs(61);
        a.expire(later, |_| false, Duration::from_secs(60), Duration::ZERO);
        let d = a
            .own()
            .delta("a", 1, late.node("a", 1).unwrap().watermark());
        assert!(d.reset);
        let pieces = split(d, 4000);
        assert!(pieces.len() > 3);
        assert!(pieces[0].reset && pieces[1..].iter().all(|p| !p.reset));
        for p in &pieces {
            late.apply_delta(p, later);
        }
        let kv = late.node("a", 1).unwrap();
        assert_eq!(kv.get("gone"), None);
        assert_eq!(kv.live_keys(), 100);
        assert_eq!(kv.watermark(), a.own().watermark());
        assert_eq!(
            kv.gc_version,
            a.own().gc_version,
            "the horizon is passed on"
        );
    }

    #[test]
    fn pieces_never_claim_more_than_the_sender_holds_completely() {
        let now = t0();
        let mut a = Cluster::new("a", 1);
        let mut relay = Cluster::new("r", 1);
        let mut ups = Vec::new();
        for i in 0..40 {
            ups.push(set(&mut a, &format!("k{i}"), &"v".repeat(100), now));
        }
        // The relay holds 1..=20 completely and 30..=40 beside a gap.
        for u in ups[..20].iter().chain(&ups[29..]) {
            relay.apply_update(u, None, now);
        }
        let held = relay.node("a", 1).unwrap();
        assert_eq!((held.watermark(), held.max_version()), (20, 40));
        let pieces = split(held.delta("a", 1, 0), 1000);
        assert!(
            pieces.iter().all(|p| p.to <= 20),
            "{:?}",
            pieces.iter().map(|p| (p.from, p.to)).collect::<Vec<_>>()
        );
        let mut b = Cluster::new("b", 1);
        for p in &pieces {
            b.apply_delta(p, now);
        }
        assert_eq!(b.node("a", 1).unwrap().watermark(), 20);
        // Filling the gap below the highest version changes the revision.
        let before = b.node("a", 1).unwrap().revision();
        b.apply_update(&ups[24], None, now);
        assert!(b.node("a", 1).unwrap().revision() > before);
    }
}
