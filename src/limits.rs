//! Per-client limits: open connections and the request rate (token bucket).
//!
//! Everything here is keyed on a [`ClientKey`]: the client address as resolved by
//! `forwarded::client_ip` (so `trusted_proxies` is honoured), with IPv4-mapped IPv6 folded
//! to IPv4 and other IPv6 addresses cut to `limits.ipv6_prefix` bits, because one host or
//! site usually owns a whole /64 and could otherwise rotate through it to void every limit.
//!
//! State is sharded by key hash so concurrent accepts rarely meet on one mutex, and each
//! critical section is a map lookup. Both tables are bounded:
//! - connection counts hold an entry only while the client has an open connection, so
//!   they never exceed `limits.max_connections` entries;
//! - rate buckets live in a per-shard LRU capped at [`MAX_TRACKED_CLIENTS`] in total. At
//!   the cap the least recently seen client's bucket is forgotten (it starts again with a
//!   full burst), so memory stays bounded under a flood of new source addresses while every
//!   active client keeps its bucket. Buckets that have refilled carry no information and are
//!   dropped by the background sweeper ([`Limits::prune`]), never on the request path.
//!
//! The byte-moving hot path never comes here.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ipnet::IpNet;
use lru::LruCache;
use tokio::time::Instant;

const SHARDS: usize = 16;
/// Most rate buckets kept at once (about 100 bytes each: a few MiB at the cap).
pub const MAX_TRACKED_CLIENTS: usize = 65_536;
const PER_SHARD: usize = MAX_TRACKED_CLIENTS / SHARDS;

/// A client as the limits see it: an IPv4 address, or an IPv6 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    /// The key of `ip`: IPv4-mapped IPv6 counts as IPv4; IPv6 keeps its first `ipv6_prefix` bits.
    pub fn new(ip: IpAddr, ipv6_prefix: u8) -> Self {
        match ip {
            IpAddr::V4(_) => ClientKey(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey(IpAddr::V4(v4)),
                None => {
                    let bits = u32::from(ipv6_prefix.min(128));
                    let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                    ClientKey(IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)))
                }
            },
        }
    }

    /// The (masked) address, for logs.
    pub fn ip(&self) -> IpAddr {
        self.0
    }
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Whether a connection from `peer` takes its per-IP connection slot at accept: yes unless
/// `peer` is a trusted proxy, whose connections carry many clients; those are counted per
/// upgrade, on the client the request names (see `proxy::handler`).
pub fn slot_at_accept(peer: SocketAddr, trusted: Option<&[IpNet]>) -> bool {
    !trusted.is_some_and(|t| t.iter().any(|n| n.contains(&peer.ip())))
}

/// Logs the limits in force (one line at start), so an operator sees what caps the site.
pub fn log_effective(config: &crate::config::Config) {
    let l = &config.limits;
    let off = |n: usize| {
        if n == 0 {
            "off".to_owned()
        } else {
            n.to_string()
        }
    };
    tracing::info!(
        max_connections = l.max_connections,
        max_pending_handshakes = l.max_pending_handshakes,
        max_concurrent_hashes = l.max_concurrent_hashes,
        max_hashes_per_ip = %off(l.max_hashes_per_ip),
        max_connections_per_ip = %off(l.max_connections_per_ip),
        handshake_rate_per_ip = %off(l.handshake_rate_per_ip as usize),
        handshake_burst_per_ip = l.handshake_burst_per_ip,
        ipv6_prefix = l.ipv6_prefix,
        trusted_proxies = config.trusted_proxies.as_ref().map_or(0, Vec::len),
        "effective limits"
    );
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Shared per-client limit state; lives across reloads (limits are read per call).
#[derive(Debug)]
pub struct Limits {
    conns: [Mutex<HashMap<ClientKey, u32>>; SHARDS],
    buckets: [Mutex<LruCache<ClientKey, Bucket>>; SHARDS],
}

/// Holds one connection slot of a client; released on drop.
#[derive(Debug)]
pub struct IpSlot {
    limits: Arc<Limits>,
    key: ClientKey,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = lock(&self.limits.conns[shard(&self.key)]);
        if let Some(n) = map.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

fn shard(key: &ClientKey) -> usize {
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

// A poisoned lock only means another thread panicked mid-update of a counter map;
// the map is still structurally sound, so keep serving rather than cascade the panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Limits {
    /// Empty state.
    pub fn new() -> Arc<Self> {
        Self::with_capacity(PER_SHARD)
    }

    fn with_capacity(per_shard: usize) -> Arc<Self> {
        let cap = NonZeroUsize::new(per_shard).unwrap_or(NonZeroUsize::MIN);
        Arc::new(Limits {
            conns: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            buckets: std::array::from_fn(|_| Mutex::new(LruCache::new(cap))),
        })
    }

    /// Takes a connection slot for `key` unless it already has `max` (0 = unlimited).
    pub fn try_connect(self: &Arc<Self>, key: ClientKey, max: usize) -> Option<IpSlot> {
        let mut map = lock(&self.conns[shard(&key)]);
        let n = map.entry(key).or_insert(0);
        // A refusal needs n >= max > 0: the entry existed already, none is left empty.
        if max != 0 && *n as usize >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            limits: self.clone(),
            key,
        })
    }

    /// Open connections of `key`.
    #[cfg(test)]
    fn connections(&self, key: ClientKey) -> u32 {
        lock(&self.conns[shard(&key)])
            .get(&key)
            .copied()
            .unwrap_or(0)
    }

    /// Spends one request token of `key`; `Err(wait)` says when the next one is due.
    /// `rate` 0 disables the limit.
    pub fn try_request(&self, key: ClientKey, rate: u32, burst: u32) -> Result<(), Duration> {
        if rate == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let rate = f64::from(rate);
        let burst = f64::from(burst.max(1));
        let mut map = lock(&self.buckets[shard(&key)]);
        // `get_or_insert_mut` evicts the least recently used bucket when the shard is full.
        let b = map.get_or_insert_mut(key, || Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }

    /// Drops buckets that have refilled (idle for `burst / rate`), oldest first; returns how
    /// many. Called by the background sweeper: each shard's LRU end is popped only while it
    /// is stale, so the work is proportional to what is removed.
    pub fn prune(&self, rate: u32, burst: u32) -> usize {
        let now = Instant::now();
        let full_after = if rate == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(f64::from(burst.max(1)) / f64::from(rate))
        };
        let mut removed = 0;
        for shard in &self.buckets {
            let mut map = lock(shard);
            while let Some((_, b)) = map.peek_lru() {
                if now.saturating_duration_since(b.last) < full_after {
                    break;
                }
                map.pop_lru();
                removed += 1;
            }
        }
        removed
    }

    /// Rate buckets held now.
    pub fn tracked_clients(&self) -> usize {
        self.buckets.iter().map(|s| lock(s).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> ClientKey {
        ClientKey::new(s.parse().unwrap(), 64)
    }

    #[test]
    fn connection_slots_are_counted_and_released() {
        let (ip, other) = (key("192.0.2.7"), key("192.0.2.8"));
        let l = Limits::new();
        let a = l.try_connect(ip, 2).unwrap();
        let _b = l.try_connect(ip, 2).unwrap();
        assert!(l.try_connect(ip, 2).is_none());
        assert!(
            l.try_connect(other, 2).is_some(),
            "other IPs are independent"
        );
        drop(a);
        assert!(l.try_connect(ip, 2).is_some());
        assert!(l.try_connect(ip, 0).is_some(), "0 means unlimited");
    }

    #[test]
    fn slots_leave_no_entry_behind() {
        let ip = key("192.0.2.7");
        let l = Limits::new();
        drop(l.try_connect(ip, 1));
        assert_eq!(l.connections(ip), 0);
        assert!(lock(&l.conns[shard(&ip)]).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn token_bucket_allows_burst_then_rate() {
        let (ip, other) = (key("192.0.2.7"), key("192.0.2.8"));
        let l = Limits::new();
        for _ in 0..5 {
            assert!(l.try_request(ip, 10, 5).is_ok());
        }
        let wait = l.try_request(ip, 10, 5).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100));
        // 100 ms later one token is back.
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(l.try_request(ip, 10, 5).is_ok());
        assert!(l.try_request(ip, 10, 5).is_err());
        assert!(l.try_request(other, 10, 5).is_ok());
        assert!(l.try_request(ip, 0, 5).is_ok(), "rate 0 disables");
    }

    #[test]
    fn ipv6_is_grouped_by_prefix_and_mapped_v4_is_v4() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            key("2001:db8:1:2::1"),
            key("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("2001:db8:1:2::1").ip(), ip("2001:db8:1:2::"));
        assert_eq!(key("::ffff:203.0.113.5"), key("203.0.113.5"));
        assert_eq!(key("::ffff:203.0.113.5").ip(), ip("203.0.113.5"));
        assert_ne!(
            ClientKey::new(ip("2001:db8::1"), 128),
            ClientKey::new(ip("2001:db8::2"), 128)
        );
        assert_eq!(
            ClientKey::new(ip("2001:db8:1::1"), 32),
            ClientKey::new(ip("2001:db8:2::1"), 32)
        );
        assert_eq!(ClientKey::new(ip("2001:db8::1"), 1).ip(), ip("::"));
        assert_eq!(ClientKey::new(ip("8001:db8::1"), 1).ip(), ip("8000::"));
        // IPv4 is never masked.
        assert_eq!(ClientKey::new(ip("192.0.2.7"), 8).ip(), ip("192.0.2.7"));
    }

    // Paused time: every request below happens at the same instant, so no bucket refills.
    #[tokio::test(start_paused = true)]
    async fn bucket_table_is_capped_and_forgets_the_least_recently_seen() {
        let l = Limits::with_capacity(2);
        // Far more clients than the cap (2 per shard): the table never grows past it.
        for i in 0..10_000u32 {
            let k = ClientKey::new(IpAddr::V4(i.into()), 64);
            assert!(l.try_request(k, 1, 1).is_ok());
        }
        assert!(l.tracked_clients() <= 2 * SHARDS, "{}", l.tracked_clients());
        // An active client keeps its (empty) bucket while others churn through its shard.
        let hot = key("192.0.2.7");
        assert!(l.try_request(hot, 1, 1).is_ok());
        assert!(l.try_request(hot, 1, 1).is_err());
        let same_shard: Vec<ClientKey> = (0..100_000u32)
            .map(|i| ClientKey::new(IpAddr::V4(i.into()), 64))
            .filter(|k| shard(k) == shard(&hot) && *k != hot)
            .take(1)
            .collect();
        assert!(l.try_request(same_shard[0], 1, 1).is_ok());
        assert!(
            l.try_request(hot, 1, 1).is_err(),
            "one newcomer does not evict a recently seen client"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn prune_drops_only_refilled_buckets() {
        let l = Limits::new();
        let (old, fresh) = (key("192.0.2.7"), key("192.0.2.8"));
        l.try_request(old, 10, 20).unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        l.try_request(fresh, 10, 20).unwrap();
        // burst 20 at 10/s is full again after 2 s.
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(l.prune(10, 20), 0);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(l.prune(10, 20), 1);
        assert_eq!(l.tracked_clients(), 1);
        assert_eq!(l.prune(0, 20), 1, "rate off: nothing to remember");
        assert_eq!(l.tracked_clients(), 0);
    }

    #[test]
    fn trusted_peers_are_counted_per_request() {
        let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(slot_at_accept(peer("10.1.2.3:5"), None));
        assert!(slot_at_accept(peer("192.0.2.1:5"), Some(&nets)));
        assert!(!slot_at_accept(peer("10.1.2.3:5"), Some(&nets)));
    }
}
