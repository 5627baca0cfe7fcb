//! The connection registry: every open tunnel, its identity and live byte counts.
//!
//! The byte-moving path never takes a lock here: it only bumps the tunnel's own atomics.
//! Locks (sharded by id) are taken when a tunnel opens or closes, and by the sweeper and
//! admin paths that walk the table. Stopping a tunnel sets a reason and wakes its task,
//! which then closes both sides itself; no per-tunnel timer or cancellation future
//! exists, which keeps an idle tunnel small and its wake-ups cheap. The session layer
//! (listing connections, kicking users, token expiry) builds on the same entries.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use futures_util::task::AtomicWaker;
use tokio::time::Instant;

const SHARDS: usize = 16;

/// Why the gateway stopped a tunnel (set from outside the tunnel's task).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StopReason {
    /// No bytes either way for `timeouts.tunnel_idle`.
    Idle = 1,
    /// The drain deadline passed.
    Shutdown = 2,
    /// An admin `DELETE /connections/{id}` or `DELETE /users/{user}`.
    Kicked = 3,
    /// A newer login of the same user took its place (`on_user_limit: evict_oldest`).
    Evicted = 4,
    /// The token that admitted it expired (plus `expiry_grace`).
    Expired = 5,
    /// The route's `max_lifetime` passed.
    Lifetime = 6,
}

impl StopReason {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(StopReason::Idle),
            2 => Some(StopReason::Shutdown),
            3 => Some(StopReason::Kicked),
            4 => Some(StopReason::Evicted),
            5 => Some(StopReason::Expired),
            6 => Some(StopReason::Lifetime),
            _ => None,
        }
    }

    /// The close code and reason sent to both peers unless the caller chose others.
    pub fn close_frame(self) -> (u16, &'static str) {
        match self {
            StopReason::Idle => (1001, "idle"),
            StopReason::Shutdown => (1001, "going away"),
            StopReason::Kicked => (4000, "kicked"),
            StopReason::Evicted => (4002, "logged in elsewhere"),
            StopReason::Expired => (4001, "token expired"),
            StopReason::Lifetime => (4003, "lifetime reached"),
        }
    }

    /// How the tunnel's end is counted and logged.
    pub fn close_reason(self) -> CloseReason {
        match self {
            StopReason::Idle => CloseReason::Idle,
            StopReason::Shutdown => CloseReason::Shutdown,
            StopReason::Kicked => CloseReason::Kicked,
            StopReason::Evicted => CloseReason::Evicted,
            StopReason::Expired => CloseReason::Expired,
            StopReason::Lifetime => CloseReason::Lifetime,
        }
    }
}

/// Why a tunnel ended: the `reason` label of `wsgate_connections_closed_total`, the access
/// log's `ended` and the `reason` of a `disconnected` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The client closed first (close frame, or TCP when frames are not tracked).
    Client,
    /// The upstream closed first.
    Upstream,
    /// Idle timeout or an unanswered keepalive ping.
    Idle,
    /// Token expiry.
    Expired,
    /// `max_lifetime`.
    Lifetime,
    /// Admin kick.
    Kicked,
    /// Evicted by a newer login of the same user.
    Evicted,
    /// Drain deadline on shutdown.
    Shutdown,
    /// A message exceeded `max_message_bytes`.
    TooBig,
    /// Refused or closed by a limit.
    Limit,
    /// An I/O error on either side.
    Error,
}

impl CloseReason {
    /// Every reason, for pre-registering metric series.
    pub const ALL: [CloseReason; 11] = [
        CloseReason::Client,
        CloseReason::Upstream,
        CloseReason::Idle,
        CloseReason::Expired,
        CloseReason::Lifetime,
        CloseReason::Kicked,
        CloseReason::Evicted,
        CloseReason::Shutdown,
        CloseReason::TooBig,
        CloseReason::Limit,
        CloseReason::Error,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::Upstream => "upstream",
            CloseReason::Idle => "idle",
            CloseReason::Expired => "expired",
            CloseReason::Lifetime => "lifetime",
            CloseReason::Kicked => "kicked",
            CloseReason::Evicted => "evicted",
            CloseReason::Shutdown => "shutdown",
            CloseReason::TooBig => "too_big",
            CloseReason::Limit => "limit",
            CloseReason::Error => "error",
        }
    }
}

/// A data message the admin API asks the gateway to send to a client.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Text or binary.
    pub kind: crate::frames::MessageKind,
    /// The payload, sent as one unfragmented frame.
    pub payload: bytes::Bytes,
}

/// Why a message could not be queued for a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The tunnel is closing or closed.
    Closing,
    /// Frames are not tracked on this tunnel (off for its route, or framing was lost), so
    /// there is no safe place to insert a frame.
    Untracked,
    /// Too many messages already wait for this client (a slow reader).
    Full,
}

/// Messages a tunnel may have waiting at once; more are refused, not buffered.
pub const MAX_QUEUED_MESSAGES: usize = 64;

/// What the outside world has left for a tunnel: rarely used, so boxed and absent on idle
/// tunnels.
#[derive(Debug, Default)]
struct Mailbox {
    /// Close code and reason chosen by an admin call, overriding the stop reason's own.
    close: Option<(u16, String)>,
    messages: std::collections::VecDeque<Outgoing>,
}

const FLAG_TRACKED: u8 = 1;
const FLAG_MAIL: u8 = 2;
const FLAG_PING: u8 = 4;

/// Keepalive state of a tunnel on a route with `ping_interval` (registry milliseconds).
#[derive(Debug)]
struct Keepalive {
    interval_ms: u64,
    timeout_ms: u64,
    /// When the last ping was asked for.
    last_ping_ms: AtomicU64,
    /// When the unanswered ping was asked for; 0 = none outstanding.
    outstanding_ms: AtomicU64,
}

/// One open tunnel as the rest of the gateway sees it.
#[derive(Debug)]
pub struct TunnelInfo {
    /// Unique for the life of the process.
    pub id: u64,
    /// The route's path; issue 10's admin `GET /connections` lists and filters by it.
    pub route: String,
    /// The authenticated user, if any.
    pub user: Option<String>,
    /// The client's address (after PROXY protocol / trusted proxies).
    pub client: IpAddr,
    /// When the 101 went out; issue 10's `GET /connections` reports it as `since`.
    pub opened: SystemTime,
    /// Bytes client → upstream so far.
    pub client_to_upstream: AtomicU64,
    /// Bytes upstream → client so far.
    pub upstream_to_client: AtomicU64,
    stop: AtomicU8,
    flags: AtomicU8,
    mailbox: Mutex<Option<Box<Mailbox>>>,
    keepalive: Option<Box<Keepalive>>,
    waker: AtomicWaker,
    // Owned by the sweeper: the total it last saw, and since when (registry ms) it's unchanged.
    seen_total: AtomicU64,
    quiet_since_ms: AtomicU64,
}

impl TunnelInfo {
    /// Describes a tunnel about to open.
    pub fn new(id: u64, route: String, user: Option<String>, client: IpAddr) -> Self {
        TunnelInfo {
            id,
            route,
            user,
            client,
            opened: SystemTime::now(),
            client_to_upstream: AtomicU64::new(0),
            upstream_to_client: AtomicU64::new(0),
            stop: AtomicU8::new(0),
            flags: AtomicU8::new(0),
            mailbox: Mutex::new(None),
            keepalive: None,
            waker: AtomicWaker::new(),
            seen_total: AtomicU64::new(0),
            quiet_since_ms: AtomicU64::new(0),
        }
    }

    /// Has the gateway ping the client every `interval` and close it (idle) when a ping
    /// is unanswered after `timeout`.
    pub fn with_keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        self.keepalive = Some(Box::new(Keepalive {
            interval_ms: ms(interval),
            timeout_ms: ms(timeout),
            last_ping_ms: AtomicU64::new(0),
            outstanding_ms: AtomicU64::new(0),
        }));
        self
    }

    /// Asks the tunnel to ping the client now (the keepalive sweep does this on schedule).
    pub fn request_ping(&self) {
        self.flags.fetch_or(FLAG_PING, Ordering::AcqRel);
        self.waker.wake();
    }

    /// Takes a pending request to send a keepalive ping.
    pub fn take_ping_request(&self) -> bool {
        self.flags.load(Ordering::Acquire) & FLAG_PING != 0
            && self.flags.fetch_and(!FLAG_PING, Ordering::AcqRel) & FLAG_PING != 0
    }

    /// The client answered the gateway's ping.
    pub fn pong_received(&self) {
        if let Some(k) = &self.keepalive {
            k.outstanding_ms.store(0, Ordering::Release);
        }
    }

    /// Asks the tunnel to close (first reason wins) and wakes its task.
    pub fn stop(&self, reason: StopReason) {
        if self
            .stop
            .compare_exchange(0, reason as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.waker.wake();
        }
    }

    /// Like [`stop`](Self::stop), with a close code and reason chosen by the caller (admin
    /// `?code=&reason=`); a later stop doesn't replace them.
    pub fn stop_with(&self, reason: StopReason, code: u16, text: String) {
        if self.stop_reason().is_some() {
            return;
        }
        self.mail().get_or_insert_with(Box::default).close = Some((code, text));
        self.stop(reason);
    }

    /// The caller-chosen close code and reason, if any.
    pub fn close_override(&self) -> Option<(u16, String)> {
        self.mail().as_ref().and_then(|m| m.close.clone())
    }

    /// Queues a message for the client; the tunnel sends it at the next frame boundary
    /// outside a fragmented message.
    pub fn push(&self, msg: Outgoing) -> Result<(), PushError> {
        if self.stop_reason().is_some() {
            return Err(PushError::Closing);
        }
        if !self.is_tracked() {
            return Err(PushError::Untracked);
        }
        {
            let mut mail = self.mail();
            let mail = mail.get_or_insert_with(Box::default);
            if mail.messages.len() >= MAX_QUEUED_MESSAGES {
                return Err(PushError::Full);
            }
            mail.messages.push_back(msg);
        }
        self.flags.fetch_or(FLAG_MAIL, Ordering::AcqRel);
        self.waker.wake();
        Ok(())
    }

    /// Whether messages wait (one atomic load: the splice checks it on every poll).
    pub fn has_mail(&self) -> bool {
        self.flags.load(Ordering::Acquire) & FLAG_MAIL != 0
    }

    /// The next queued message, if any.
    pub fn next_message(&self) -> Option<Outgoing> {
        let mut mail = self.mail();
        let m = mail.as_mut()?;
        let msg = m.messages.pop_front();
        if m.messages.is_empty() {
            self.flags.fetch_and(!FLAG_MAIL, Ordering::AcqRel);
            if m.close.is_none() {
                // Give the memory back: most tunnels never see a second push.
                *mail = None;
            }
        }
        msg
    }

    /// Marks whether frames are tracked on this tunnel (pushes need it).
    pub fn set_tracked(&self, tracked: bool) {
        if tracked {
            self.flags.fetch_or(FLAG_TRACKED, Ordering::AcqRel);
        } else {
            self.flags.fetch_and(!FLAG_TRACKED, Ordering::AcqRel);
        }
    }

    /// Whether frames are tracked on this tunnel.
    pub fn is_tracked(&self) -> bool {
        self.flags.load(Ordering::Acquire) & FLAG_TRACKED != 0
    }

    // A poisoned mailbox only means a panic elsewhere mid-push; its contents are still valid.
    fn mail(&self) -> MutexGuard<'_, Option<Box<Mailbox>>> {
        self.mailbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The reason the tunnel was asked to stop, if it was.
    pub fn stop_reason(&self) -> Option<StopReason> {
        StopReason::from_u8(self.stop.load(Ordering::Acquire))
    }

    /// Registers the task to wake on [`stop`](Self::stop); call before checking the reason.
    pub fn register_waker(&self, waker: &std::task::Waker) {
        self.waker.register(waker);
    }

    fn total(&self) -> u64 {
        self.client_to_upstream.load(Ordering::Relaxed)
            + self.upstream_to_client.load(Ordering::Relaxed)
    }
}

/// All open tunnels.
#[derive(Debug)]
pub struct Registry {
    shards: Vec<Mutex<HashMap<u64, Arc<TunnelInfo>>>>,
    next_id: AtomicU64,
    epoch: Instant,
}

/// Keeps a tunnel listed until dropped.
#[derive(Debug)]
pub struct Registered {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.shard(self.id).remove(&self.id);
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Arc<Self> {
        Arc::new(Registry {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            next_id: AtomicU64::new(1),
            epoch: Instant::now(),
        })
    }

    // A poisoned shard only means a panic elsewhere mid-insert; the map is still usable.
    fn shard(&self, id: u64) -> MutexGuard<'_, HashMap<u64, Arc<TunnelInfo>>> {
        self.shards[(id as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A fresh tunnel id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Lists `info` until the returned guard drops.
    pub fn insert(self: &Arc<Self>, info: Arc<TunnelInfo>) -> Registered {
        let now = self.now_ms();
        info.quiet_since_ms.store(now, Ordering::Relaxed);
        if let Some(k) = &info.keepalive {
            // The first ping is due one interval after the tunnel opened.
            k.last_ping_ms.store(now, Ordering::Relaxed);
        }
        let id = info.id;
        self.shard(id).insert(id, info);
        Registered {
            registry: self.clone(),
            id,
        }
    }

    /// Open tunnels.
    pub fn len(&self) -> usize {
        (0..SHARDS).map(|i| self.shard(i as u64).len()).sum()
    }

    /// Whether no tunnel is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of every entry (for admin listings).
    pub fn snapshot(&self) -> Vec<Arc<TunnelInfo>> {
        (0..SHARDS)
            .flat_map(|i| self.shard(i as u64).values().cloned().collect::<Vec<_>>())
            .collect()
    }

    /// Stops every tunnel (drain deadline).
    pub fn stop_all(&self, reason: StopReason) {
        for t in self.snapshot() {
            t.stop(reason);
        }
    }

    /// The open tunnel with this id.
    pub fn get(&self, id: u64) -> Option<Arc<TunnelInfo>> {
        self.shard(id).get(&id).cloned()
    }

    /// Asks keepalive tunnels for a ping when their interval has passed, and stops (idle)
    /// those whose ping went unanswered for their timeout; returns how many were stopped.
    pub fn sweep_keepalive(&self) -> usize {
        let now = self.now_ms().max(1);
        let mut stopped = 0;
        for shard in &self.shards {
            let tunnels: Vec<Arc<TunnelInfo>> = shard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .filter(|t| t.keepalive.is_some())
                .cloned()
                .collect();
            for t in tunnels {
                let Some(k) = &t.keepalive else { continue };
                let outstanding = k.outstanding_ms.load(Ordering::Acquire);
                if outstanding != 0 {
                    if now.saturating_sub(outstanding) >= k.timeout_ms {
                        t.stop(StopReason::Idle);
                        stopped += 1;
                    }
                    continue;
                }
                let last = k.last_ping_ms.load(Ordering::Relaxed);
                if now.saturating_sub(last) >= k.interval_ms && t.is_tracked() {
                    k.last_ping_ms.store(now, Ordering::Relaxed);
                    k.outstanding_ms.store(now, Ordering::Release);
                    t.flags.fetch_or(FLAG_PING, Ordering::AcqRel);
                    t.waker.wake();
                }
            }
        }
        stopped
    }

    /// Stops tunnels that moved no byte for `idle`; returns how many.
    pub fn sweep_idle(&self, idle: Duration) -> usize {
        let now = self.now_ms();
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let mut stopped = 0;
        for t in self.snapshot() {
            let total = t.total();
            if total != t.seen_total.load(Ordering::Relaxed) {
                t.seen_total.store(total, Ordering::Relaxed);
                t.quiet_since_ms.store(now, Ordering::Relaxed);
            } else if now.saturating_sub(t.quiet_since_ms.load(Ordering::Relaxed)) >= idle_ms {
                t.stop(StopReason::Idle);
                stopped += 1;
            }
        }
        stopped
    }
}

/// Lookups for the admin API (issue 10): one shard at a time, so a listing never
/// holds a lock for more than the copy of one shard's handles.
impl Registry {
    /// How many shards [`shard_snapshot`](Self::shard_snapshot) walks.
    pub fn shard_count(&self) -> usize {
        SHARDS
    }

    /// A copy of shard `i`'s entries (the lock is held only while the `Arc`s are cloned).
    pub fn shard_snapshot(&self, i: usize) -> Vec<Arc<TunnelInfo>> {
        self.shard(i as u64).values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(r: &Arc<Registry>) -> Arc<TunnelInfo> {
        Arc::new(TunnelInfo::new(
            r.next_id(),
            "/ws".into(),
            None,
            [127, 0, 0, 1].into(),
        ))
    }

    #[test]
    fn entries_live_as_long_as_their_guard() {
        let r = Registry::new();
        let a = r.insert(info(&r));
        let b = r.insert(info(&r));
        assert_eq!(r.len(), 2);
        drop(a);
        assert_eq!(r.len(), 1);
        drop(b);
        assert!(r.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_stops_only_quiet_tunnels() {
        let r = Registry::new();
        let quiet = info(&r);
        let busy = info(&r);
        let _g1 = r.insert(quiet.clone());
        let _g2 = r.insert(busy.clone());
        tokio::time::advance(Duration::from_millis(30)).await;
        busy.client_to_upstream.fetch_add(10, Ordering::Relaxed);
        assert_eq!(r.sweep_idle(Duration::from_millis(20)), 1);
        assert_eq!(quiet.stop_reason(), Some(StopReason::Idle));
        assert_eq!(
            busy.stop_reason(),
            None,
            "traffic since the last sweep resets the clock"
        );
        tokio::time::advance(Duration::from_millis(30)).await;
        assert_eq!(
            r.sweep_idle(Duration::from_millis(20)),
            2,
            "quiet again: both"
        );
        assert_eq!(busy.stop_reason(), Some(StopReason::Idle));
    }

    #[test]
    fn first_stop_reason_wins() {
        let r = Registry::new();
        let t = info(&r);
        let _g = r.insert(t.clone());
        r.stop_all(StopReason::Shutdown);
        t.stop(StopReason::Idle);
        assert_eq!(t.stop_reason(), Some(StopReason::Shutdown));
    }

    fn text(s: &'static str) -> Outgoing {
        Outgoing {
            kind: crate::frames::MessageKind::Text,
            payload: bytes::Bytes::from_static(s.as_bytes()),
        }
    }

    #[test]
    fn pushes_need_tracking_an_open_tunnel_and_room() {
        let r = Registry::new();
        let t = info(&r);
        assert_eq!(t.push(text("a")), Err(PushError::Untracked));
        t.set_tracked(true);
        assert!(!t.has_mail());
        for _ in 0..MAX_QUEUED_MESSAGES {
            t.push(text("a")).unwrap();
        }
        assert!(t.has_mail());
        assert_eq!(t.push(text("b")), Err(PushError::Full));
        let mut n = 0;
        while t.next_message().is_some() {
            n += 1;
        }
        assert_eq!(n, MAX_QUEUED_MESSAGES);
        assert!(!t.has_mail(), "drained mailbox still flagged");
        t.stop_with(StopReason::Kicked, 4100, "bye".into());
        assert_eq!(t.push(text("c")), Err(PushError::Closing));
        assert_eq!(t.close_override(), Some((4100, "bye".into())));
        t.stop_with(StopReason::Evicted, 4200, "late".into());
        assert_eq!(t.stop_reason(), Some(StopReason::Kicked), "first stop wins");
        assert_eq!(t.close_override(), Some((4100, "bye".into())));
    }
}
