//! Bounds concurrent password-hash verifications, globally and per client.
//!
//! bcrypt/argon2 are deliberately slow (tens to hundreds of milliseconds of CPU), so
//! unauthenticated clients sending Basic credentials are a CPU-exhaustion lever. A
//! semaphore caps the hashes in flight; a bounded wait queue and an acquire deadline make
//! the excess fail fast with `Busy` instead of piling up memory and latency.
//!
//! The queue is shared, so without a per-client bound one client flooding bad credentials
//! would fill it and every other user's first login would get `Busy` (503). Each client may
//! therefore have at most `limits.max_hashes_per_ip` verifications running or queued; past
//! that it alone is told to back off (429). The semaphore is FIFO, so with the flooder
//! bounded every other verification starts after at most the hashes already queued ahead
//! of it, even when the per-client bound equals the number of slots.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::limits::ClientKey;

/// Waiters allowed per permit before new verifications are refused outright.
pub const WAITERS_PER_PERMIT: usize = 32;
/// Longest a verification waits for a hash slot before giving up with `Busy`.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// Verifications in flight per client; an entry exists only while its count is above 0,
/// so the map never holds more entries than there are permits plus waiters.
type InFlight = Arc<Mutex<HashMap<ClientKey, usize>>>;

/// Bounds concurrent password-hash verifications (shared by all Basic authenticators).
pub struct HashLimiter {
    /// One permit per concurrent hash.
    sem: Arc<Semaphore>,
    /// Callers currently waiting for a permit.
    waiting: AtomicUsize,
    /// Refuse (Busy) when this many are already waiting.
    max_waiting: usize,
    /// Refuse (Busy) after waiting this long.
    acquire_timeout: Duration,
    /// Running or queued verifications per client.
    in_flight: InFlight,
    /// Most verifications one client may have running or queued; 0 = no bound.
    max_per_client: usize,
}

/// Why a permit could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The shared queue is full or the deadline passed: the caller reports `Busy`.
    Saturated,
    /// This client already has its share in flight: the caller reports `TooMany`.
    ClientBusy,
}

/// A hash slot; also holds the client's in-flight count until dropped.
#[derive(Debug)]
pub(crate) struct HashPermit {
    _slot: OwnedSemaphorePermit,
    _client: Option<ClientGuard>,
}

/// One of a client's in-flight verifications; given back on drop.
#[derive(Debug)]
struct ClientGuard {
    in_flight: InFlight,
    key: ClientKey,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

impl HashLimiter {
    /// `max_concurrent` hashes at once (0 is treated as 1); up to 32 waiters per permit, 2 s
    /// wait; no per-client bound (see [`per_client`](Self::per_client)).
    pub fn new(max_concurrent: usize) -> Self {
        let permits = max_concurrent.max(1);
        Self::with_limits(
            permits,
            permits.saturating_mul(WAITERS_PER_PERMIT),
            ACQUIRE_TIMEOUT,
        )
    }

    /// Explicit limits (tests, tuning): permits, waiting-queue bound, acquire deadline.
    pub fn with_limits(
        max_concurrent: usize,
        max_waiting: usize,
        acquire_timeout: Duration,
    ) -> Self {
        HashLimiter {
            sem: Arc::new(Semaphore::new(max_concurrent.max(1))),
            waiting: AtomicUsize::new(0),
            max_waiting,
            acquire_timeout,
            in_flight: Arc::default(),
            max_per_client: 0,
        }
    }

    /// At most `max` verifications running or queued per client (0 = no bound).
    pub fn per_client(mut self, max: usize) -> Self {
        self.max_per_client = max;
        self
    }

    /// A hash slot for `client`: `ClientBusy` when it already has its share in flight,
    /// `Saturated` when the shared queue is full or the deadline passes.
    pub(crate) async fn acquire(&self, client: Option<ClientKey>) -> Result<HashPermit, Refused> {
        let guard = match client {
            Some(key) if self.max_per_client > 0 => Some(self.enter(key)?),
            _ => None,
        };
        let slot = self.acquire_slot().await.map_err(|()| Refused::Saturated)?;
        Ok(HashPermit {
            _slot: slot,
            _client: guard,
        })
    }

    /// Counts one more verification for `key`, unless it is at its bound.
    fn enter(&self, key: ClientKey) -> Result<ClientGuard, Refused> {
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key).or_insert(0);
        if *n >= self.max_per_client {
            return Err(Refused::ClientBusy);
        }
        *n += 1;
        Ok(ClientGuard {
            in_flight: self.in_flight.clone(),
            key,
        })
    }

    async fn acquire_slot(&self) -> Result<OwnedSemaphorePermit, ()> {
        // Fast path: no queueing bookkeeping when a slot is free.
        if let Ok(p) = self.sem.clone().try_acquire_owned() {
            return Ok(p);
        }
        // Reserve a place in the queue; undo if that overshoots the bound.
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(());
        }
        // Decrement on every exit path, including the caller's future being dropped.
        let _guard = WaitGuard(&self.waiting);
        match tokio::time::timeout(self.acquire_timeout, self.sem.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            // Timeout, or the semaphore was closed (never done, but fail closed).
            _ => Err(()),
        }
    }

    /// Free slots right now (tests and debugging).
    pub fn available(&self) -> usize {
        self.sem.available_permits()
    }

    /// A slot taken outside a verification (tests use it to saturate the limiter).
    #[cfg(test)]
    pub(crate) fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        self.sem.clone().try_acquire_owned().ok()
    }
}

impl std::fmt::Debug for HashLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashLimiter")
            .field("available", &self.sem.available_permits())
            .field("waiting", &self.waiting.load(Ordering::Relaxed))
            .field("max_waiting", &self.max_waiting)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("max_per_client", &self.max_per_client)
            .finish()
    }
}

/// Decrements the waiter count when dropped.
struct WaitGuard<'a>(&'a AtomicUsize);

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fast_path_and_release() {
        let l = HashLimiter::new(1);
        let p = l.acquire(None).await.expect("free slot");
        assert_eq!(l.available(), 0);
        drop(p);
        assert_eq!(l.available(), 1);
    }

    #[tokio::test]
    async fn full_queue_fails_immediately() {
        let l = HashLimiter::with_limits(1, 0, Duration::from_secs(3600));
        let _held = l.try_take().expect("slot");
        assert_eq!(l.acquire(None).await.err(), Some(Refused::Saturated));
    }

    // A real (short) deadline: tokio's `test-util` (paused time) is not a dev-dependency.
    #[tokio::test]
    async fn waiting_too_long_fails() {
        let l = HashLimiter::with_limits(1, 10, Duration::from_millis(20));
        let _held = l.try_take().expect("slot");
        assert_eq!(l.acquire(None).await.err(), Some(Refused::Saturated));
        assert_eq!(l.waiting.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn waiter_gets_released_slot() {
        let l = Arc::new(HashLimiter::with_limits(1, 10, Duration::from_secs(10)));
        let held = l.try_take().expect("slot");
        let l2 = l.clone();
        let waiter = tokio::spawn(async move { l2.acquire(None).await.is_ok() });
        tokio::task::yield_now().await;
        drop(held);
        assert!(waiter.await.expect("join"));
    }

    fn key(s: &str) -> Option<ClientKey> {
        Some(ClientKey::new(s.parse().unwrap(), 64))
    }

    #[tokio::test]
    async fn one_client_gets_at_most_its_share() {
        let l = HashLimiter::with_limits(4, 100, Duration::from_secs(10)).per_client(2);
        let a1 = l.acquire(key("192.0.2.1")).await.expect("first");
        let _a2 = l.acquire(key("192.0.2.1")).await.expect("second");
        assert_eq!(
            l.acquire(key("192.0.2.1")).await.err(),
            Some(Refused::ClientBusy),
            "a third from the same client is refused at once"
        );
        assert!(l.acquire(key("192.0.2.2")).await.is_ok(), "others are not");
        assert!(l.acquire(None).await.is_ok(), "unkeyed callers are not");
        drop(a1);
        assert!(
            l.acquire(key("192.0.2.1")).await.is_ok(),
            "released on drop"
        );
    }

    #[tokio::test]
    async fn queued_verifications_count_and_entries_go_away() {
        let l = Arc::new(HashLimiter::with_limits(1, 100, Duration::from_secs(10)).per_client(1));
        let held = l.try_take().expect("slot");
        let l2 = l.clone();
        let queued = tokio::spawn(async move { l2.acquire(key("192.0.2.1")).await.is_ok() });
        tokio::task::yield_now().await;
        assert_eq!(
            l.acquire(key("192.0.2.1")).await.err(),
            Some(Refused::ClientBusy),
            "a queued verification is in flight too"
        );
        drop(held);
        assert!(queued.await.expect("join"));
        assert!(l.in_flight.lock().unwrap().is_empty());
    }
}
