//! The shared answer cache in front of all routes.
//!
//! Entries are keyed by name and query type and carry their own expiry, computed from the
//! TTLs when they are stored (see [`crate::config::ResolverConfig`] for the floor and caps).
//! An expired entry is never returned. The cache is a mutex-guarded map: a hit costs one lock,
//! one hash and one `Arc` clone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hickory_resolver::proto::rr::Name;

use crate::answer::{Entry, QueryType};

pub(crate) type Key = (Name, QueryType);

pub(crate) struct Cache {
    entries: Mutex<HashMap<Key, Arc<Entry>>>,
    capacity: usize,
}

impl Cache {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    pub fn get(&self, key: &Key, now: Instant) -> Option<Arc<Entry>> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        entries
            .get(key)
            .filter(|entry| entry.valid_until > now)
            .cloned()
    }

    /// Stores `entry`. When the cache is full, expired entries are dropped first and then, if
    /// it is still full, an arbitrary one.
    pub fn insert(&self, key: Key, entry: Arc<Entry>, now: Instant) {
        if self.capacity == 0 {
            return;
        }

        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, entry| entry.valid_until > now);
            // NOTE: evicting an arbitrary entry is crude, and an LRU would keep hot names. A proxy
            // usually resolves far fewer names than the default capacity.
            if entries.len() >= self.capacity {
                let victim = entries.keys().next().cloned();
                if let Some(victim) = victim {
                    entries.remove(&victim);
                }
            }
        }
        entries.insert(key, entry);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::answer::EntryData;

    fn entry(valid_until: Instant) -> Arc<Entry> {
        Arc::new(Entry {
            data: EntryData::NxDomain,
            valid_until,
        })
    }

    fn key(text: &str) -> Key {
        (Name::from_ascii(text).unwrap(), QueryType::A)
    }

    #[test]
    fn expired_entry_not_returned() {
        let cache = Cache::new(8);
        let now = Instant::now();
        cache.insert(key("a.consul."), entry(now + Duration::from_secs(1)), now);

        assert!(cache.get(&key("a.consul."), now).is_some());
        assert!(
            cache.get(&key("A.Consul."), now).is_some(),
            "names compare case-insensitively"
        );
        assert!(
            cache
                .get(&key("a.consul."), now + Duration::from_secs(1))
                .is_none()
        );
    }

    #[test]
    fn full_cache_drops_expired_first() {
        let cache = Cache::new(2);
        let now = Instant::now();
        cache.insert(key("old.consul."), entry(now), now);
        cache.insert(
            key("live.consul."),
            entry(now + Duration::from_secs(9)),
            now,
        );
        cache.insert(key("new.consul."), entry(now + Duration::from_secs(9)), now);

        assert!(cache.get(&key("live.consul."), now).is_some());
        assert!(cache.get(&key("new.consul."), now).is_some());
        assert_eq!(cache.entries.lock().unwrap().len(), 2);
    }

    #[test]
    fn zero_capacity_stores_nothing() {
        let cache = Cache::new(0);
        let now = Instant::now();
        cache.insert(key("a.consul."), entry(now + Duration::from_secs(1)), now);
        assert!(cache.get(&key("a.consul."), now).is_none());
    }
}
