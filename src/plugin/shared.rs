//! State a plugin shares across all its instances and versions, held by the host: named
//! counters and a small bounded key-value store with compare-and-swap. Kept per plugin name
//! for the life of the process, so it survives reloads and new versions.

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

/// Most counters one plugin may create.
pub const MAX_COUNTERS: usize = 1024;
/// Most key-value entries one plugin may hold.
pub const MAX_KV_ENTRIES: usize = 1024;
/// Longest counter name or key, in bytes.
pub const MAX_KEY_LEN: usize = 256;
/// Largest value, in bytes.
pub const MAX_VALUE_LEN: usize = 4096;

/// One plugin's shared counters and key-value store.
#[derive(Debug, Default)]
pub struct SharedState {
    counters: DashMap<String, i64>,
    kv: DashMap<String, Vec<u8>>,
}

impl SharedState {
    /// Adds `delta` (wrapping) and returns the new value. A new name beyond
    /// [`MAX_COUNTERS`], or one longer than [`MAX_KEY_LEN`], is not stored: the answer is 0.
    pub fn counter_add(&self, name: &str, delta: i64) -> i64 {
        if let Some(mut v) = self.counters.get_mut(name) {
            *v = v.wrapping_add(delta);
            return *v;
        }
        if name.len() > MAX_KEY_LEN || self.counters.len() >= MAX_COUNTERS {
            return 0;
        }
        let mut v = self.counters.entry(name.to_owned()).or_insert(0);
        *v = v.wrapping_add(delta);
        *v
    }

    pub fn counter_get(&self, name: &str) -> i64 {
        self.counters.get(name).map_or(0, |v| *v)
    }

    pub fn kv_get(&self, key: &str) -> Option<Vec<u8>> {
        self.kv.get(key).map(|v| v.clone())
    }

    /// False when the key, the value or the number of entries is over its limit.
    pub fn kv_set(&self, key: &str, value: Vec<u8>) -> bool {
        if !self.fits(key, &value) {
            return false;
        }
        if let Some(mut v) = self.kv.get_mut(key) {
            *v = value;
            return true;
        }
        if self.kv.len() >= MAX_KV_ENTRIES {
            return false;
        }
        self.kv.insert(key.to_owned(), value);
        true
    }

    /// Sets `key` to `new` if its value is `expected` (`None`: absent), atomically.
    pub fn kv_cas(&self, key: &str, expected: Option<&[u8]>, new: Vec<u8>) -> bool {
        if !self.fits(key, &new) {
            return false;
        }
        if expected.is_none() && self.kv.len() >= MAX_KV_ENTRIES {
            return false;
        }
        match (self.kv.entry(key.to_owned()), expected) {
            (Entry::Occupied(mut e), Some(want)) if e.get().as_slice() == want => {
                e.insert(new);
                true
            }
            (Entry::Vacant(e), None) => {
                e.insert(new);
                true
            }
            _ => false,
        }
    }

    fn fits(&self, key: &str, value: &[u8]) -> bool {
        key.len() <= MAX_KEY_LEN && value.len() <= MAX_VALUE_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_and_stay_bounded() {
        let s = SharedState::default();
        assert_eq!(s.counter_get("a"), 0);
        assert_eq!(s.counter_add("a", 2), 2);
        assert_eq!(s.counter_add("a", -5), -3);
        assert_eq!(s.counter_add("a", i64::MAX), i64::MAX - 3);
        for i in 0..MAX_COUNTERS {
            s.counter_add(&format!("c{i}"), 1);
        }
        assert_eq!(s.counter_add("one-too-many", 1), 0);
        assert_eq!(s.counter_get("one-too-many"), 0);
        assert_eq!(
            s.counter_add("a", 1),
            i64::MAX - 2,
            "existing names still count"
        );
        assert_eq!(s.counter_add(&"k".repeat(MAX_KEY_LEN + 1), 1), 0);
    }

    #[test]
    fn kv_compare_and_swap() {
        let s = SharedState::default();
        assert!(!s.kv_cas("k", Some(b"x"), b"y".to_vec()), "absent is not x");
        assert!(s.kv_cas("k", None, b"1".to_vec()));
        assert!(!s.kv_cas("k", None, b"2".to_vec()), "present is not absent");
        assert!(!s.kv_cas("k", Some(b"0"), b"2".to_vec()));
        assert!(s.kv_cas("k", Some(b"1"), b"2".to_vec()));
        assert_eq!(s.kv_get("k"), Some(b"2".to_vec()));
        assert!(s.kv_set("k", b"3".to_vec()));
        assert_eq!(s.kv_get("k"), Some(b"3".to_vec()));
        assert!(!s.kv_set("big", vec![0; MAX_VALUE_LEN + 1]));
        for i in 0..MAX_KV_ENTRIES {
            s.kv_set(&format!("e{i}"), vec![]);
        }
        assert!(!s.kv_set("new", vec![]));
        assert!(!s.kv_cas("new2", None, vec![]));
        assert!(
            s.kv_set("k", b"4".to_vec()),
            "existing keys can still change"
        );
    }
}
