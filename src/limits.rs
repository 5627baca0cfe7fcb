//! Per-client-IP limits: open connections and the upgrade handshake rate (token bucket).
//!
//! State is sharded by IP hash so concurrent accepts rarely meet on one mutex, and each
//! critical section is a map lookup. The byte-moving hot path never comes here.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;
/// Buckets idle this long are full again and can be forgotten.
const BUCKET_IDLE_FORGET: Duration = Duration::from_secs(300);
/// Prune a shard's buckets when it grows past this many entries.
const PRUNE_AT: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Shared per-IP limit state; lives across reloads (limits are read per call).
#[derive(Debug, Default)]
pub struct Limits {
    conns: [Mutex<HashMap<IpAddr, u32>>; SHARDS],
    buckets: [Mutex<HashMap<IpAddr, Bucket>>; SHARDS],
}

/// Holds one connection slot of an IP; released on drop.
#[derive(Debug)]
pub struct IpSlot {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = lock(&self.limits.conns[shard(self.ip)]);
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

fn shard(ip: IpAddr) -> usize {
    let mut h = std::hash::DefaultHasher::new();
    ip.hash(&mut h);
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
        Arc::new(Limits::default())
    }

    /// Takes a connection slot for `ip` unless it already has `max` (0 = unlimited).
    pub fn try_connect(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut map = lock(&self.conns[shard(ip)]);
        let n = map.entry(ip).or_insert(0);
        if max != 0 && *n as usize >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            limits: self.clone(),
            ip,
        })
    }

    /// Open connections of `ip`.
    #[cfg(test)]
    fn connections(&self, ip: IpAddr) -> u32 {
        lock(&self.conns[shard(ip)]).get(&ip).copied().unwrap_or(0)
    }

    /// Spends one handshake token of `ip`; `Err(wait)` says when the next one is due.
    /// `rate` 0 disables the limit.
    pub fn try_handshake(&self, ip: IpAddr, rate: u32, burst: u32) -> Result<(), Duration> {
        self.try_handshake_at(ip, rate, burst, Instant::now())
    }

    fn try_handshake_at(
        &self,
        ip: IpAddr,
        rate: u32,
        burst: u32,
        now: Instant,
    ) -> Result<(), Duration> {
        if rate == 0 {
            return Ok(());
        }
        let rate = f64::from(rate);
        let burst = f64::from(burst.max(1));
        let mut map = lock(&self.buckets[shard(ip)]);
        if map.len() >= PRUNE_AT {
            map.retain(|_, b| now.duration_since(b.last) < BUCKET_IDLE_FORGET);
        }
        let b = map.entry(ip).or_insert(Bucket {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));
    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 8));

    #[test]
    fn connection_slots_are_counted_and_released() {
        let l = Limits::new();
        let a = l.try_connect(IP, 2).unwrap();
        let _b = l.try_connect(IP, 2).unwrap();
        assert!(l.try_connect(IP, 2).is_none());
        assert!(
            l.try_connect(OTHER, 2).is_some(),
            "other IPs are independent"
        );
        drop(a);
        assert!(l.try_connect(IP, 2).is_some());
        assert!(l.try_connect(IP, 0).is_some(), "0 means unlimited");
    }

    #[test]
    fn slots_leave_no_entry_behind() {
        let l = Limits::new();
        drop(l.try_connect(IP, 1));
        assert_eq!(l.connections(IP), 0);
        assert!(lock(&l.conns[shard(IP)]).is_empty());
    }

    #[test]
    fn token_bucket_allows_burst_then_rate() {
        let l = Limits::new();
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(l.try_handshake_at(IP, 10, 5, t0).is_ok());
        }
        let wait = l.try_handshake_at(IP, 10, 5, t0).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100));
        // 100 ms later one token is back.
        assert!(
            l.try_handshake_at(IP, 10, 5, t0 + Duration::from_millis(100))
                .is_ok()
        );
        assert!(
            l.try_handshake_at(IP, 10, 5, t0 + Duration::from_millis(100))
                .is_err()
        );
        assert!(l.try_handshake_at(OTHER, 10, 5, t0).is_ok());
        assert!(l.try_handshake_at(IP, 0, 5, t0).is_ok(), "rate 0 disables");
    }
}
