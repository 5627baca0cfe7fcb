//! Tunnel deadlines (token expiry, `max_lifetime`): one timer task for every tunnel.
//!
//! A timer inside each tunnel's future would make every idle tunnel bigger; instead the
//! handler files `(when, tunnel id, reason)` here and one task sleeps until the earliest,
//! then stops that tunnel through the registry (which sends the close frames). Entries of
//! tunnels that closed earlier are simply not found when they fall due.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::registry::{Registry, StopReason};

/// The pending deadlines.
#[derive(Debug, Default)]
pub struct Deadlines {
    heap: Mutex<BinaryHeap<Reverse<(Instant, u64, u8)>>>,
    changed: Notify,
}

fn reason_code(r: StopReason) -> u8 {
    r as u8
}

fn reason_from(code: u8) -> StopReason {
    match code {
        5 => StopReason::Expired,
        6 => StopReason::Lifetime,
        3 => StopReason::Kicked,
        4 => StopReason::Evicted,
        1 => StopReason::Idle,
        _ => StopReason::Shutdown,
    }
}

impl Deadlines {
    /// No deadlines yet.
    pub fn new() -> Self {
        Self::default()
    }

    // A poisoned heap only means a panic elsewhere mid-push; its entries are still valid.
    fn heap(&self) -> MutexGuard<'_, BinaryHeap<Reverse<(Instant, u64, u8)>>> {
        self.heap.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops tunnel `id` with `reason` at `at`.
    pub fn add(&self, at: Instant, id: u64, reason: StopReason) {
        let earliest = {
            let mut heap = self.heap();
            let earlier = heap.peek().is_none_or(|Reverse((first, ..))| at < *first);
            heap.push(Reverse((at, id, reason_code(reason))));
            earlier
        };
        if earliest {
            self.changed.notify_one();
        }
    }

    /// Deadlines waiting (including those of tunnels that already closed).
    pub fn len(&self) -> usize {
        self.heap().len()
    }

    /// Whether none wait.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fires deadlines as they fall due, forever (the caller aborts it at shutdown).
    pub async fn run(self: Arc<Self>, registry: Arc<Registry>) {
        loop {
            let next = self.heap().peek().map(|Reverse((at, ..))| *at);
            let notified = self.changed.notified();
            match next {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = notified => continue,
                    }
                }
                None => {
                    notified.await;
                    continue;
                }
            }
            let now = Instant::now();
            let due: Vec<(u64, u8)> = {
                let mut heap = self.heap();
                let mut due = Vec::new();
                while let Some(Reverse((at, id, r))) = heap.peek().copied() {
                    if at > now {
                        break;
                    }
                    heap.pop();
                    due.push((id, r));
                }
                due
            };
            for (id, r) in due {
                if let Some(t) = registry.get(id) {
                    t.stop(reason_from(r));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::TunnelInfo;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn deadlines_fire_in_order_and_skip_closed_tunnels() {
        let registry = Registry::new();
        let deadlines = Arc::new(Deadlines::new());
        let task = tokio::spawn(deadlines.clone().run(registry.clone()));
        let mk = || {
            Arc::new(TunnelInfo::new(
                registry.next_id(),
                "/t".into(),
                None,
                [127, 0, 0, 1].into(),
            ))
        };
        let (a, b, gone) = (mk(), mk(), mk());
        let _ga = registry.insert(a.clone());
        let _gb = registry.insert(b.clone());
        let g = registry.insert(gone.clone());
        let now = Instant::now();
        deadlines.add(now + Duration::from_secs(10), a.id, StopReason::Lifetime);
        deadlines.add(now + Duration::from_secs(20), gone.id, StopReason::Expired);
        // Filed later but due sooner: the task must wake for it.
        deadlines.add(now + Duration::from_secs(5), b.id, StopReason::Expired);
        drop(g);
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(b.stop_reason(), Some(StopReason::Expired));
        assert_eq!(a.stop_reason(), None, "fired early");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(a.stop_reason(), Some(StopReason::Lifetime));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(gone.stop_reason(), None, "a closed tunnel was stopped");
        assert!(deadlines.is_empty());
        task.abort();
    }
}
