//! Bounds concurrent password-hash verifications.
//!
//! bcrypt/argon2 are deliberately slow (tens to hundreds of milliseconds of CPU), so
//! unauthenticated clients sending Basic credentials are a CPU-exhaustion lever. A
//! semaphore caps the hashes in flight; a bounded wait queue and an acquire deadline make
//! the excess fail fast with `Busy` instead of piling up memory and latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Waiters allowed per permit before new verifications are refused outright.
pub const WAITERS_PER_PERMIT: usize = 32;
/// Longest a verification waits for a hash slot before giving up with `Busy`.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

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
}

/// Why a permit could not be had; the caller reports `Busy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Saturated;

impl HashLimiter {
    /// `max_concurrent` hashes at once (0 is treated as 1); up to 32 waiters per permit, 2 s wait.
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
        }
    }

    /// A hash slot, or `Saturated` when the queue is full or the deadline passes.
    pub(crate) async fn acquire(&self) -> Result<OwnedSemaphorePermit, Saturated> {
        // Fast path: no queueing bookkeeping when a slot is free.
        if let Ok(p) = self.sem.clone().try_acquire_owned() {
            return Ok(p);
        }
        // Reserve a place in the queue; undo if that overshoots the bound.
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Saturated);
        }
        // Decrement on every exit path, including the caller's future being dropped.
        let _guard = WaitGuard(&self.waiting);
        match tokio::time::timeout(self.acquire_timeout, self.sem.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            // Timeout, or the semaphore was closed (never done, but fail closed).
            _ => Err(Saturated),
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
        let p = l.acquire().await.expect("free slot");
        assert_eq!(l.available(), 0);
        drop(p);
        assert_eq!(l.available(), 1);
    }

    #[tokio::test]
    async fn full_queue_fails_immediately() {
        let l = HashLimiter::with_limits(1, 0, Duration::from_secs(3600));
        let _held = l.try_take().expect("slot");
        assert_eq!(l.acquire().await.err(), Some(Saturated));
    }

    // A real (short) deadline: tokio's `test-util` (paused time) is not a dev-dependency.
    #[tokio::test]
    async fn waiting_too_long_fails() {
        let l = HashLimiter::with_limits(1, 10, Duration::from_millis(20));
        let _held = l.try_take().expect("slot");
        assert_eq!(l.acquire().await.err(), Some(Saturated));
        assert_eq!(l.waiting.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn waiter_gets_released_slot() {
        let l = Arc::new(HashLimiter::with_limits(1, 10, Duration::from_secs(10)));
        let held = l.try_take().expect("slot");
        let l2 = l.clone();
        let waiter = tokio::spawn(async move { l2.acquire().await.is_ok() });
        tokio::task::yield_now().await;
        drop(held);
        assert!(waiter.await.expect("join"));
    }
}
