//! A small cache of recently verified Basic credentials.
//!
//! Browsers and reconnecting clients send the same `user:password` again and again;
//! without a cache each reconnect costs a full bcrypt/argon2 run. Entries are keyed by
//! an HMAC of the pair under a random per-authenticator key, so the cache never holds
//! a password (or anything usable offline), and lookups need no constant-time
//! comparison: an attacker cannot compute the keys being compared without that key.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use tokio::time::Instant;

/// Upper bound on entries: a flood of distinct valid logins cannot grow memory without bound.
pub(crate) const MAX_ENTRIES: usize = 10_000;

/// Cache key: HMAC-SHA256 output.
type Key = [u8; 32];

/// Successful verifications, remembered for `ttl`.
pub(crate) struct SuccessCache {
    /// Keyed once at build; cloned per lookup (cheaper than re-keying).
    mac: Hmac<Sha256>,
    /// How long a success is remembered.
    ttl: Duration,
    /// Key → expiry. A std mutex: critical sections are tiny and never await.
    entries: Mutex<HashMap<Key, Instant>>,
}

impl SuccessCache {
    /// A cache with a fresh random key; `None` when `ttl` is zero (caching disabled).
    pub(crate) fn new(ttl: Duration) -> Option<Self> {
        if ttl.is_zero() {
            return None;
        }
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        // HMAC accepts keys of any length, so this never fails; `ok()?` avoids an unwrap.
        let mac = Hmac::<Sha256>::new_from_slice(&secret).ok()?;
        Some(SuccessCache {
            mac,
            ttl,
            entries: Mutex::new(HashMap::new()),
        })
    }

    /// The cache key of a credential pair: HMAC(user length ‖ user ‖ 0x00 ‖ password).
    /// The length prefix keeps pairs apart even when the user name itself contains NUL
    /// (`("a\0","b")` vs `("a","\0b")`), so a hit always means this exact pair was verified.
    pub(crate) fn key(&self, user: &str, password: &str) -> Key {
        let mut mac = self.mac.clone();
        mac.update(&(user.len() as u64).to_be_bytes());
        mac.update(user.as_bytes());
        mac.update(&[0]);
        mac.update(password.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Whether `key` was verified within the TTL. Expired entries are removed on sight.
    pub(crate) fn hit(&self, key: &Key) -> bool {
        let now = Instant::now();
        let mut entries = self.lock();
        match entries.get(key) {
            Some(expiry) if *expiry > now => true,
            Some(_) => {
                entries.remove(key);
                false
            }
            None => false,
        }
    }

    /// Remembers a success (never call it for a failure).
    pub(crate) fn insert(&self, key: Key) {
        let now = Instant::now();
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&key) {
            entries.retain(|_, expiry| *expiry > now);
            if entries.len() >= MAX_ENTRIES {
                // Still full of live entries: drop a quarter (arbitrary ones; HashMap order
                // is randomised per process). Evicted users just pay one more hash.
                let victims: Vec<Key> = entries.keys().take(MAX_ENTRIES / 4).copied().collect();
                for v in victims {
                    entries.remove(&v);
                }
            }
        }
        entries.insert(key, now + self.ttl);
    }

    /// Number of entries (tests and debugging).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// The map, recovering from poisoning: the data is a plain cache, always consistent.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Instant>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_ttl_disables() {
        assert!(SuccessCache::new(Duration::ZERO).is_none());
    }

    #[test]
    fn hit_after_insert_and_separator_matters() {
        let c = SuccessCache::new(Duration::from_secs(60)).expect("cache");
        let k = c.key("ab", "c");
        assert_ne!(k, c.key("a", "bc"));
        assert_ne!(c.key("a\0", "b"), c.key("a", "\0b"));
        assert!(!c.hit(&k));
        c.insert(k);
        assert!(c.hit(&k));
        assert!(!c.hit(&c.key("a", "bc")));
    }

    #[test]
    fn keys_differ_between_caches() {
        let a = SuccessCache::new(Duration::from_secs(60)).expect("cache");
        let b = SuccessCache::new(Duration::from_secs(60)).expect("cache");
        assert_ne!(a.key("u", "p"), b.key("u", "p"));
    }

    #[test]
    fn expired_entries_miss_and_are_removed() {
        let c = SuccessCache::new(Duration::from_millis(1)).expect("cache");
        let k = c.key("u", "p");
        c.insert(k);
        std::thread::sleep(Duration::from_millis(5));
        assert!(!c.hit(&k));
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn stays_bounded() {
        let c = SuccessCache::new(Duration::from_secs(60)).expect("cache");
        for i in 0..(MAX_ENTRIES + 10) {
            c.insert(c.key(&i.to_string(), "p"));
        }
        assert!(c.len() <= MAX_ENTRIES);
        // The newest entry always survives its own insertion.
        assert!(c.hit(&c.key(&(MAX_ENTRIES + 9).to_string(), "p")));
    }
}
