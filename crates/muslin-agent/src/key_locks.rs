//! One lock per attachment key. Operations on one attachment are
//! serialised (a re-ADD waits for a DEL still removing its veth), while
//! different attachments never wait for each other.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

pub struct KeyLocks<K> {
    map: Arc<Mutex<HashMap<K, Arc<AsyncMutex<()>>>>>,
}

/// Held while an operation on the key runs; may move into a background task.
pub struct KeyGuard<K: Eq + Hash> {
    guard: Option<OwnedMutexGuard<()>>,
    key: Option<K>,
    map: Arc<Mutex<HashMap<K, Arc<AsyncMutex<()>>>>>,
}

impl<K: Eq + Hash + Clone> KeyLocks<K> {
    pub fn new() -> Self {
        KeyLocks {
            map: Arc::default(),
        }
    }

    pub async fn lock(&self, key: &K) -> KeyGuard<K> {
        let m = self
            .map
            .lock()
            .expect("lock map")
            .entry(key.clone())
            .or_default()
            .clone();
        KeyGuard {
            guard: Some(m.lock_owned().await),
            key: Some(key.clone()),
            map: self.map.clone(),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }
}

impl<K: Eq + Hash> Drop for KeyGuard<K> {
    fn drop(&mut self) {
        let mut map = self.map.lock().expect("lock map");
        if let Some(key) = self.key.take() {
            // Waiters clone the entry under the map lock, so with the map
            // locked, two references (the map's and ours) mean nobody waits.
            if map.get(&key).is_some_and(|m| Arc::strong_count(m) == 2) {
                map.remove(&key);
            }
        }
        drop(self.guard.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn same_key_waits_other_keys_do_not_and_entries_are_dropped() {
        let locks = Arc::new(KeyLocks::new());
        let g = locks.lock(&"a").await;
        // Another key is free.
        tokio::time::timeout(Duration::from_millis(100), locks.lock(&"b"))
            .await
            .expect("b is independent");
        // The same key waits until the guard is dropped.
        let l2 = locks.clone();
        let waiter = tokio::spawn(async move {
            let _g = l2.lock(&"a").await;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        drop(g);
        waiter.await.unwrap();
        assert_eq!(locks.len(), 0, "no entry outlives its last user");
    }
}
