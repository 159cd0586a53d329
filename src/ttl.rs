//! A small bounded map whose entries expire: the mirror's penalties, negative cache and known
//! providers, and the registry's verification results.

use crate::sync::MutexExt;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most `capacity` entries, each until its own expiry. When full, expired entries are
/// pruned; if none has expired the map is emptied: every user treats a lost entry as merely
/// "not known" (ask again, re-verify), so forgetting is always safe and memory stays bounded.
pub struct TtlMap<K, V> {
    capacity: usize,
    entries: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash, V: Clone> TtlMap<K, V> {
    pub fn new(capacity: usize) -> Self {
        TtlMap {
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Insert or replace `key`, valid for `ttl` from now.
    pub fn insert(&self, key: K, value: V, ttl: Duration) {
        let now = Instant::now();
        // A TTL too long to represent is as good as "until pruned".
        let until = now
            .checked_add(ttl)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400));
        let mut map = self.entries.locked();
        if map.len() >= self.capacity && !map.contains_key(&key) {
            map.retain(|_, (until, _)| *until > now);
            if map.len() >= self.capacity {
                map.clear();
            }
        }
        map.insert(key, (until, value));
    }

    /// The value of `key` if it has not expired (an expired one is dropped).
    pub fn get(&self, key: &K) -> Option<V> {
        let mut map = self.entries.locked();
        match map.get(key) {
            Some((until, v)) if *until > Instant::now() => Some(v.clone()),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn contains(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    pub fn remove(&self, key: &K) {
        self.entries.locked().remove(key);
    }

    /// Entries held, expired or not.
    pub fn len(&self) -> usize {
        self.entries.locked().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_the_map_stays_bounded() {
        let m = TtlMap::new(3);
        m.insert("a", 1, Duration::from_secs(60));
        m.insert("b", 2, Duration::ZERO);
        assert_eq!(m.get(&"a"), Some(1));
        assert_eq!(m.get(&"b"), None);
        assert_eq!(m.len(), 1, "an expired entry is dropped when read");
        m.insert("b", 2, Duration::ZERO);
        m.insert("c", 3, Duration::from_secs(60));
        // Full: the expired one makes room.
        m.insert("d", 4, Duration::from_secs(60));
        assert_eq!(m.len(), 3);
        assert!(m.contains(&"a") && m.contains(&"c") && m.contains(&"d"));
        // Replacing an entry never prunes.
        m.insert("a", 5, Duration::from_secs(60));
        assert_eq!(m.get(&"a"), Some(5));
        // Full of live entries: forget everything rather than grow.
        m.insert("e", 6, Duration::MAX);
        assert_eq!(m.len(), 1);
        assert_eq!(m.get(&"e"), Some(6));
        m.remove(&"e");
        assert!(m.is_empty());
    }
}
