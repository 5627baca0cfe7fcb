//! The drain after SIGTERM/SIGINT: wait for open connections up to the deadline, then ask the
//! remaining tunnels to close and give them a bounded moment to do it.

use std::time::Duration;

use tokio_util::task::TaskTracker;

use crate::registry::{Registry, StopReason};

/// How long stopped tunnels get to finish their final writes once the deadline has passed; a
/// peer that stalls those writes must not hold the process.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainEnd {
    /// Every connection finished on its own before the deadline.
    Drained,
    /// The deadline passed; the remaining tunnels were stopped with [`StopReason::Shutdown`].
    DeadlineReached {
        /// Connections still open at the deadline.
        open_at_deadline: usize,
    },
}

/// Closes `tracker` and waits for its tasks up to `deadline`; then stops every tunnel left in
/// `registry`, spread evenly over `jitter` in random order (so their clients don't all
/// reconnect at once), and waits at most [`STOP_GRACE`] after the last stop.
pub async fn drain(
    tracker: &TaskTracker,
    registry: &Registry,
    deadline: Duration,
    jitter: Duration,
) -> DrainEnd {
    tracker.close();
    if tokio::time::timeout(deadline, tracker.wait()).await.is_ok() {
        return DrainEnd::Drained;
    }
    let open_at_deadline = tracker.len();
    tracing::info!(
        open_connections = open_at_deadline,
        close_jitter = ?jitter,
        "drain deadline reached, closing the remaining connections"
    );
    if jitter.is_zero() {
        registry.stop_all(StopReason::Shutdown);
    } else {
        let mut open = registry.snapshot();
        open.sort_by_key(|_| rand::random::<u64>());
        let start = tokio::time::Instant::now();
        let n = open.len().max(1) as u32;
        for (i, t) in open.into_iter().enumerate() {
            tokio::time::sleep_until(start + jitter * (i as u32) / n).await;
            t.stop(StopReason::Shutdown);
        }
        // Tunnels that opened during the spread (none should: accepting has stopped).
        registry.stop_all(StopReason::Shutdown);
    }
    let _ = tokio::time::timeout(STOP_GRACE, tracker.wait()).await;
    DrainEnd::DeadlineReached { open_at_deadline }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;

    use tokio::time::Instant;

    use super::*;
    use crate::registry::TunnelInfo;

    /// A tracked "tunnel" that ends `after` on its own, or when the gateway stops it
    /// (`None` = only when stopped; `stubborn` = ignores the stop too).
    fn tunnel(
        tracker: &TaskTracker,
        registry: &Arc<Registry>,
        after: Option<Duration>,
        stubborn: bool,
    ) -> Arc<TunnelInfo> {
        let info = Arc::new(TunnelInfo::new(
            registry.next_id(),
            "/ws".into(),
            None,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
        ));
        let guard = registry.insert(info.clone());
        let t = info.clone();
        tracker.spawn(async move {
            let _guard = guard;
            let stopped = std::future::poll_fn(|cx| {
                t.register_waker(cx.waker());
                match t.stop_reason() {
                    Some(_) if !stubborn => std::task::Poll::Ready(()),
                    _ => std::task::Poll::Pending,
                }
            });
            match after {
                Some(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = stopped => {}
                    }
                }
                None => stopped.await,
            }
        });
        info
    }

    #[tokio::test(start_paused = true)]
    async fn connections_that_finish_in_time_are_never_stopped() {
        let (tracker, registry) = (TaskTracker::new(), Registry::new());
        let a = tunnel(&tracker, &registry, Some(Duration::from_secs(3)), false);
        let b = tunnel(&tracker, &registry, Some(Duration::from_secs(7)), false);
        let start = Instant::now();
        let end = drain(&tracker, &registry, Duration::from_secs(30), Duration::ZERO).await;
        assert_eq!(end, DrainEnd::Drained);
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(7),
            "returns when the last one ends"
        );
        assert_eq!((a.stop_reason(), b.stop_reason()), (None, None));
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_stops_the_rest_with_reason_shutdown() {
        let (tracker, registry) = (TaskTracker::new(), Registry::new());
        let quick = tunnel(&tracker, &registry, Some(Duration::from_secs(1)), false);
        let held = tunnel(&tracker, &registry, None, false);
        let start = Instant::now();
        let end = drain(&tracker, &registry, Duration::from_secs(30), Duration::ZERO).await;
        assert_eq!(
            end,
            DrainEnd::DeadlineReached {
                open_at_deadline: 1
            }
        );
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(30),
            "stopped at the deadline, not later"
        );
        assert_eq!(quick.stop_reason(), None);
        assert_eq!(held.stop_reason(), Some(StopReason::Shutdown));
        assert!(tracker.is_empty() && registry.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_that_ignores_the_stop_holds_the_exit_only_for_the_grace() {
        let (tracker, registry) = (TaskTracker::new(), Registry::new());
        let _stuck = tunnel(&tracker, &registry, None, true);
        let start = Instant::now();
        let end = drain(&tracker, &registry, Duration::from_secs(2), Duration::ZERO).await;
        assert_eq!(
            end,
            DrainEnd::DeadlineReached {
                open_at_deadline: 1
            }
        );
        assert_eq!(start.elapsed(), Duration::from_secs(2) + STOP_GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_deadline_stops_everything_at_once() {
        let (tracker, registry) = (TaskTracker::new(), Registry::new());
        let held = tunnel(&tracker, &registry, None, false);
        let start = Instant::now();
        let end = drain(&tracker, &registry, Duration::ZERO, Duration::ZERO).await;
        assert_eq!(
            end,
            DrainEnd::DeadlineReached {
                open_at_deadline: 1
            }
        );
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(held.stop_reason(), Some(StopReason::Shutdown));
    }

    #[tokio::test(start_paused = true)]
    async fn close_jitter_spreads_the_stops_evenly() {
        let (tracker, registry) = (TaskTracker::new(), Registry::new());
        let held: Vec<_> = (0..4)
            .map(|_| tunnel(&tracker, &registry, None, false))
            .collect();
        let stopped = || held.iter().filter(|t| t.stop_reason().is_some()).count();
        let drain = tokio::spawn({
            let (tracker, registry) = (tracker.clone(), registry.clone());
            async move {
                drain(
                    &tracker,
                    &registry,
                    Duration::from_secs(10),
                    Duration::from_secs(4),
                )
                .await
            }
        });
        tokio::time::sleep(Duration::from_millis(10_500)).await;
        assert_eq!(
            stopped(),
            1,
            "one stop per second of jitter, the first at the deadline"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(stopped(), 2);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(stopped(), 4);
        assert_eq!(
            drain.await.unwrap(),
            DrainEnd::DeadlineReached {
                open_at_deadline: 4
            }
        );
    }
}
