//! The per-peer maps of a node record (`reach`, `health`). Every record
//! names every peer, so each node holds the square of the cluster in them:
//! at 100 nodes they were 2.9 MB of an idle agent's 6.7 MB heap as
//! `BTreeMap<String, _>`. Here a map is one sorted vector, and a peer's
//! name is one allocation shared by every record that names it. On the
//! wire and on disk it is exactly the map it replaces.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Names to values, sorted by name, each name at most once.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PeerMap<V> {
    entries: Vec<(Arc<str>, V)>,
}

impl<V> Default for PeerMap<V> {
    fn default() -> Self {
        PeerMap {
            entries: Vec::new(),
        }
    }
}

type Entry<V> = (Arc<str>, V);
pub type Iter<'a, V> =
    std::iter::Map<std::slice::Iter<'a, Entry<V>>, fn(&'a Entry<V>) -> (&'a str, &'a V)>;

fn pair<V>(e: &Entry<V>) -> (&str, &V) {
    (&e.0, &e.1)
}

impl<V> PeerMap<V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(n: usize) -> Self {
        PeerMap {
            entries: Vec::with_capacity(n),
        }
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|(n, _)| (**n).cmp(name))
    }

    pub fn get(&self, name: &str) -> Option<&V> {
        self.find(name).ok().map(|i| &self.entries[i].1)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut V> {
        self.find(name).ok().map(|i| &mut self.entries[i].1)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    /// The value `name` had, as `BTreeMap::insert` returns it.
    pub fn insert(&mut self, name: &str, value: V) -> Option<V> {
        match self.find(name) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.entries.insert(i, (intern(name), value));
                None
            }
        }
    }

    pub fn remove(&mut self, name: &str) -> Option<V> {
        self.find(name).ok().map(|i| self.entries.remove(i).1)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// In the order of the names.
    pub fn iter(&self) -> Iter<'_, V> {
        self.entries.iter().map(pair as fn(&Entry<V>) -> (&str, &V))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| &**n)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, v)| v)
    }
}

impl<'a, V> IntoIterator for &'a PeerMap<V> {
    type Item = (&'a str, &'a V);
    type IntoIter = Iter<'a, V>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<V> std::ops::Index<&str> for PeerMap<V> {
    type Output = V;
    fn index(&self, name: &str) -> &V {
        self.get(name).expect("no entry for that peer")
    }
}

/// A later entry for a name wins, as in a `BTreeMap` built the same way.
impl<K: AsRef<str>, V> FromIterator<(K, V)> for PeerMap<V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut entries: Vec<Entry<V>> = iter
            .into_iter()
            .map(|(k, v)| (intern(k.as_ref()), v))
            .collect();
        settle(&mut entries);
        // Our own record keeps what it was built from: no slack from a
        // filtered iterator's guess.
        entries.shrink_to_fit();
        PeerMap { entries }
    }
}

impl<K: AsRef<str>, V, const N: usize> From<[(K, V); N]> for PeerMap<V> {
    fn from(entries: [(K, V); N]) -> Self {
        entries.into_iter().collect()
    }
}

/// Sorts by name, keeping the last of equal names.
fn settle<V>(entries: &mut Vec<Entry<V>>) {
    if entries.windows(2).all(|w| w[0].0 < w[1].0) {
        return;
    }
    // Stable: equal names keep their order, and the last of each is kept.
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: Vec<Entry<V>> = Vec::with_capacity(entries.len());
    for e in entries.drain(..) {
        match out.last_mut() {
            Some(last) if last.0 == e.0 => *last = e,
            _ => out.push(e),
        }
    }
    *entries = out;
}

impl<V: fmt::Debug> fmt::Debug for PeerMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V: Serialize> Serialize for PeerMap<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for PeerMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Entries<V> {
            type Value = PeerMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of peer names")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                // The size is the sender's word: a bound, not a promise.
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(4096));
                while let Some((Interned(k), v)) = map.next_entry::<Interned, V>()? {
                    entries.push((k, v));
                }
                settle(&mut entries);
                entries.shrink_to_fit();
                Ok(PeerMap { entries })
            }
        }
        d.deserialize_map(Entries(std::marker::PhantomData))
    }
}

/// A name read straight into the shared set, without a `String` first.
struct Interned(Arc<str>);

impl<'de> Deserialize<'de> for Interned {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name;
        impl Visitor<'_> for Name {
            type Value = Interned;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a peer's name")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Interned, E> {
                Ok(Interned(intern(v)))
            }
        }
        d.deserialize_str(Name)
    }
}

/// The names in use, each once. A name no record holds any more is
/// dropped when the set has doubled since its last sweep: the set holds at
/// most twice the names alive at that sweep (the cluster's nodes and the
/// departed ones still remembered), or 64, and a sweep costs one pass.
/// After the cluster shrinks, dead names wait for that many new ones.
#[derive(Default)]
struct Names {
    set: HashSet<Arc<str>>,
    swept: usize,
}

impl Names {
    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(a) = self.set.get(name) {
            return a.clone();
        }
        if self.set.len() >= (self.swept * 2).max(64) {
            // Only the set holds it: no record can, and one that reads the
            // name again needs this lock to get it.
            self.set.retain(|a| Arc::strong_count(a) > 1);
            self.set.shrink_to(self.set.len() * 2);
            self.swept = self.set.len();
        }
        let a: Arc<str> = Arc::from(name);
        self.set.insert(a.clone());
        a
    }
}

fn intern(name: &str) -> Arc<str> {
    static NAMES: OnceLock<Mutex<Names>> = OnceLock::new();
    let names = NAMES.get_or_init(Mutex::default);
    // A panic elsewhere while holding it left the set whole: use it.
    names.lock().unwrap_or_else(|p| p.into_inner()).get(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn reads_and_writes_exactly_the_map_it_replaces() {
        let m: BTreeMap<String, Vec<u8>> = [("h2", vec![1]), ("h10", vec![]), ("a", vec![2, 3])]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let json = serde_json::to_string(&m).unwrap();
        let p: PeerMap<Vec<u8>> = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), json);
        assert_eq!(p.keys().collect::<Vec<_>>(), vec!["a", "h10", "h2"]);
        assert_eq!(p["h10"], Vec::<u8>::new());
        // Out of order, and a name twice: sorted, the last one kept.
        let p: PeerMap<u8> = serde_json::from_str(r#"{"b":1,"a":2,"b":3}"#).unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"a":2,"b":3}"#);
        let empty: PeerMap<u8> = serde_json::from_str("{}").unwrap();
        assert!(empty.is_empty());
        assert!(serde_json::from_str::<PeerMap<u8>>("[1]").is_err());
    }

    #[test]
    fn behaves_as_a_sorted_map() {
        let mut p = PeerMap::new();
        assert_eq!(p.insert("h3", 3), None);
        assert_eq!(p.insert("h1", 1), None);
        assert_eq!(p.insert("h3", 30), Some(3));
        assert_eq!(p.get("h3"), Some(&30));
        *p.get_mut("h1").unwrap() += 10;
        assert_eq!(p.iter().collect::<Vec<_>>(), vec![("h1", &11), ("h3", &30)]);
        assert!(p.contains_key("h1") && !p.contains_key("h2"));
        assert_eq!(p.remove("h1"), Some(11));
        assert_eq!(p.remove("h1"), None);
        assert_eq!(p.len(), 1);
        let q: PeerMap<i32> = [("h3".to_string(), 30)].into_iter().collect();
        assert_eq!(p, q);
    }

    #[test]
    fn records_share_each_name() {
        let a: PeerMap<u8> = serde_json::from_str(r#"{"shared-name-1":1}"#).unwrap();
        let b: PeerMap<u8> = serde_json::from_str(r#"{"shared-name-1":2}"#).unwrap();
        assert!(Arc::ptr_eq(&a.entries[0].0, &b.entries[0].0));
    }

    #[test]
    fn names_no_record_holds_are_forgotten() {
        let mut names = Names::default();
        for i in 0..10_000 {
            let _ = names.get(&format!("gone-{i}"));
        }
        let kept = names.get("kept-name");
        for i in 0..10_000 {
            let _ = names.get(&format!("gone-again-{i}"));
        }
        // Swept whenever it doubles past 64: dead names never pile up.
        assert!(names.set.len() <= 128, "{} names held", names.set.len());
        assert!(Arc::ptr_eq(&kept, &names.get("kept-name")));
        // Names held by records survive every sweep.
        let held: Vec<Arc<str>> = (0..500).map(|i| names.get(&format!("node-{i}"))).collect();
        for i in 0..5_000 {
            let _ = names.get(&format!("churn-{i}"));
        }
        assert!(held.iter().all(|h| Arc::ptr_eq(h, &names.get(h))));
        assert!(
            names.set.len() <= 2 * 501 + 1,
            "{} names held",
            names.set.len()
        );
    }
}
