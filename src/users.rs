//! Who is online: every admitted or open WebSocket connection of an authenticated user, per
//! (route, user), and the per-user limit (`max_connections_per_user`, `on_user_limit`).
//!
//! Only handshakes, closes and admin calls touch it, never the splice. It is sharded by user,
//! so all of one user's connections (every route) sit behind one lock: a login reserves its
//! slot under that lock right after auth and before the upstream is contacted, which makes
//! two logins of one user at once race-free, and per-user admin calls lock a single shard.
//!
//! A slot exists from admission; its tunnel ([`TunnelInfo`]) only after the upgrade. A stop
//! (eviction, kick) that lands in between is remembered by the slot and applied the moment
//! the tunnel is attached, so a connection evicted while it was still opening never lives on.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus::IntGauge;

use crate::config::OnUserLimit;
use crate::registry::{StopReason, TunnelInfo};

const SHARDS: usize = 16;

/// A route's `max_connections_per_user` and what happens beyond it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserLimit {
    /// Connections one user may hold on the route (admitted and open).
    pub max: usize,
    /// Refuse the new login, or close the oldest connection.
    pub on_limit: OnUserLimit,
}

/// A stop asked of a connection: the reason, and the close code and text when the caller
/// chose them (admin `?code=&reason=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    /// Why (counted and logged under it).
    pub reason: StopReason,
    /// Caller-chosen close code and reason, overriding the reason's own.
    pub close: Option<(u16, String)>,
}

impl Stop {
    /// A stop with the reason's own close code.
    pub fn plain(reason: StopReason) -> Self {
        Stop {
            reason,
            close: None,
        }
    }

    fn apply(&self, t: &TunnelInfo) {
        match &self.close {
            Some((code, text)) => t.stop_with(self.reason, *code, text.clone()),
            None => t.stop(self.reason),
        }
    }
}

/// A login refused by `on_user_limit: reject`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverLimit;

#[derive(Debug)]
enum SlotState {
    /// Admitted, upgrade not done yet; a stop asked meanwhile waits here (first one wins).
    Admitted(Option<Stop>),
    Open(Arc<TunnelInfo>),
}

#[derive(Debug)]
struct Slot {
    seq: u64,
    state: SlotState,
}

impl Slot {
    /// Not asked to stop: counts against the limit and can be evicted.
    fn live(&self) -> bool {
        match &self.state {
            SlotState::Admitted(stop) => stop.is_none(),
            SlotState::Open(t) => t.stop_reason().is_none(),
        }
    }

    fn stop(&mut self, stop: &Stop) {
        match &mut self.state {
            SlotState::Admitted(pending @ None) => *pending = Some(stop.clone()),
            SlotState::Admitted(Some(_)) => {}
            SlotState::Open(t) => stop.apply(t),
        }
    }
}

/// One user's slots on one route, oldest first.
#[derive(Debug)]
struct RouteSlots {
    route: Arc<str>,
    open: usize,
    slots: Vec<Slot>,
}

type Shard = HashMap<Arc<str>, Vec<RouteSlots>>;

/// The index of authenticated connections (see the module docs).
#[derive(Debug)]
pub struct Users {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
    next_seq: AtomicU64,
}

/// One online user as listed by `GET /users`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlineUser {
    /// The user name (Basic user or JWT `sub`).
    pub user: Arc<str>,
    /// Open connections per route (routes with none are left out).
    pub routes: Vec<(Arc<str>, usize)>,
}

/// A reserved place for one connection of a user on a route; held by the tunnel and
/// released on drop (close, or an upgrade that never completed).
#[derive(Debug)]
pub struct UserSlot {
    users: Arc<Users>,
    user: Arc<str>,
    route: Arc<str>,
    seq: u64,
    online: IntGauge,
    limit: Option<UserLimit>,
    /// The slot's place in the cluster-wide limit (cluster mode only).
    ticket: Option<crate::cluster::Ticket>,
}

impl Users {
    /// An empty index.
    pub fn new() -> Arc<Self> {
        Arc::new(Users {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            next_seq: AtomicU64::new(1),
        })
    }

    /// How many shards [`online_in_shard`](Self::online_in_shard) walks.
    pub fn shard_count(&self) -> usize {
        SHARDS
    }

    fn shard_of(&self, user: &str) -> usize {
        (self.hasher.hash_one(user) as usize) % SHARDS
    }

    // A poisoned shard only means a panic elsewhere mid-update; the map is still consistent
    // enough to list and release (every update is a single push or remove).
    fn lock(&self, i: usize) -> MutexGuard<'_, Shard> {
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves a slot for `user` on `route` under `limit`: with `evict_oldest` the user's
    /// oldest live connections there are stopped ([`StopReason::Evicted`]) to make room;
    /// with `reject`, a full route refuses. `online` is the route's `wsgate_users_online`.
    pub fn reserve(
        self: &Arc<Self>,
        route: &str,
        user: &str,
        limit: Option<UserLimit>,
        online: IntGauge,
    ) -> Result<UserSlot, OverLimit> {
        let mut shard = self.lock(self.shard_of(user));
        // Reuse the stored name: one allocation per user, not per connection.
        let user_key: Arc<str> = match shard.get_key_value(user) {
            Some((k, _)) => k.clone(),
            None => Arc::from(user),
        };
        let routes = shard.entry(user_key.clone()).or_default();
        let idx = match routes.iter().position(|r| &*r.route == route) {
            Some(i) => i,
            None => {
                routes.push(RouteSlots {
                    route: Arc::from(route),
                    open: 0,
                    slots: Vec::new(),
                });
                routes.len() - 1
            }
        };
        let rs = &mut routes[idx];
        // `evict_oldest` makes room only once the new connection is open (`attach`): a login
        // whose upstream then fails must not have logged the other device out for nothing.
        if let Some(limit) = limit
            && limit.on_limit == OnUserLimit::Reject
            && rs.slots.iter().filter(|s| s.live()).count() >= limit.max
        {
            // Non-empty here (live >= max >= 1), so nothing to clean up.
            return Err(OverLimit);
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        rs.slots.push(Slot {
            seq,
            state: SlotState::Admitted(None),
        });
        Ok(UserSlot {
            users: self.clone(),
            user: user_key,
            route: rs.route.clone(),
            seq,
            online,
            limit,
            ticket: None,
        })
    }

    /// Stops every connection of `user` (admitted ones as soon as they open); `None` when the
    /// user has none, else how many were asked to stop (already stopping ones aren't counted).
    pub fn stop_user(&self, user: &str, stop: &Stop) -> Option<usize> {
        let mut shard = self.lock(self.shard_of(user));
        let routes = shard.get_mut(user)?;
        let mut n = 0;
        for slot in routes.iter_mut().flat_map(|r| r.slots.iter_mut()) {
            if slot.live() {
                slot.stop(stop);
                n += 1;
            }
        }
        Some(n)
    }

    /// The open tunnels of `user` (all routes).
    pub fn open_tunnels(&self, user: &str) -> Vec<Arc<TunnelInfo>> {
        let shard = self.lock(self.shard_of(user));
        shard
            .get(user)
            .into_iter()
            .flatten()
            .flat_map(|r| r.slots.iter())
            .filter_map(|s| match &s.state {
                SlotState::Open(t) => Some(t.clone()),
                SlotState::Admitted(_) => None,
            })
            .collect()
    }

    /// Users of shard `i` with an open connection (on `route` only, when given). The lock
    /// is held only while the names and counts are copied.
    pub fn online_in_shard(&self, i: usize, route: Option<&str>) -> Vec<OnlineUser> {
        let shard = self.lock(i % SHARDS);
        shard
            .iter()
            .filter_map(|(user, routes)| {
                let routes: Vec<(Arc<str>, usize)> = routes
                    .iter()
                    .filter(|r| r.open > 0 && route.is_none_or(|want| &*r.route == want))
                    .map(|r| (r.route.clone(), r.open))
                    .collect();
                (!routes.is_empty()).then(|| OnlineUser {
                    user: user.clone(),
                    routes,
                })
            })
            .collect()
    }
}

impl UserSlot {
    /// Keeps the slot's cluster-wide limit ticket for as long as the slot lives.
    pub fn set_ticket(&mut self, ticket: Option<crate::cluster::Ticket>) {
        self.ticket = ticket;
    }

    /// The slot's cluster-wide limit ticket, if any.
    pub fn ticket(&self) -> Option<&crate::cluster::Ticket> {
        self.ticket.as_ref()
    }

    /// Binds the slot to its now-open tunnel: it counts as online from here, and a stop asked
    /// while it was opening (eviction, kick) is applied now.
    pub fn attach(&self, info: &Arc<TunnelInfo>) {
        let mut shard = self.users.lock(self.users.shard_of(&self.user));
        let Some(rs) = shard
            .get_mut(&self.user)
            .and_then(|routes| routes.iter_mut().find(|r| r.route == self.route))
        else {
            return;
        };
        let Some(slot) = rs.slots.iter_mut().find(|s| s.seq == self.seq) else {
            return;
        };
        let pending = match std::mem::replace(&mut slot.state, SlotState::Open(info.clone())) {
            SlotState::Admitted(pending) => pending,
            // Attached twice: a programming error, but harmless; keep the count exact.
            SlotState::Open(_) => return,
        };
        if rs.open == 0 {
            self.online.inc();
        }
        rs.open += 1;
        if let Some(stop) = pending {
            stop.apply(info);
            return;
        }
        if let Some(limit) = self.limit
            && limit.on_limit == OnUserLimit::EvictOldest
        {
            // Newest wins: of this slot and the older live ones, the oldest beyond the limit
            // close. Newer logins still opening are left alone: they evict us when they open.
            let older_live = rs
                .slots
                .iter()
                .filter(|s| s.seq < self.seq && s.live())
                .count();
            let mut excess = (older_live + 1).saturating_sub(limit.max);
            let evict = Stop::plain(StopReason::Evicted);
            for slot in rs.slots.iter_mut().filter(|s| s.seq < self.seq) {
                if excess == 0 {
                    break;
                }
                if slot.live() {
                    slot.stop(&evict);
                    excess -= 1;
                }
            }
        }
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut shard = self.users.lock(self.users.shard_of(&self.user));
        let Some(routes) = shard.get_mut(&self.user) else {
            return;
        };
        if let Some(ri) = routes.iter().position(|r| r.route == self.route) {
            let rs = &mut routes[ri];
            if let Some(si) = rs.slots.iter().position(|s| s.seq == self.seq) {
                let slot = rs.slots.remove(si);
                if matches!(slot.state, SlotState::Open(_)) {
                    rs.open -= 1;
                    if rs.open == 0 {
                        self.online.dec();
                    }
                }
            }
            if rs.slots.is_empty() {
                routes.swap_remove(ri);
            }
        }
        if routes.is_empty() {
            shard.remove(&self.user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauge() -> IntGauge {
        IntGauge::new("t", "t").unwrap()
    }

    fn tunnel(id: u64, user: &str) -> Arc<TunnelInfo> {
        Arc::new(TunnelInfo::new(
            id,
            "/ws".into(),
            Some(user.into()),
            [127, 0, 0, 1].into(),
        ))
    }

    fn limit(max: usize, on_limit: OnUserLimit) -> Option<UserLimit> {
        Some(UserLimit { max, on_limit })
    }

    #[test]
    fn reject_counts_admitted_and_open_and_frees_on_drop() {
        let users = Users::new();
        let g = gauge();
        let lim = limit(2, OnUserLimit::Reject);
        let a = users.reserve("/ws", "alice", lim, g.clone()).unwrap();
        let b = users.reserve("/ws", "alice", lim, g.clone()).unwrap();
        assert_eq!(
            users.reserve("/ws", "alice", lim, g.clone()).unwrap_err(),
            OverLimit
        );
        // Other users and other routes have their own counts.
        let _c = users.reserve("/ws", "bob", lim, g.clone()).unwrap();
        let _d = users.reserve("/other", "alice", lim, g.clone()).unwrap();
        a.attach(&tunnel(1, "alice"));
        assert_eq!(g.get(), 1, "one distinct user online");
        b.attach(&tunnel(2, "alice"));
        assert_eq!(g.get(), 1, "still one user");
        drop(a);
        assert_eq!(g.get(), 1);
        let _e = users.reserve("/ws", "alice", lim, g.clone()).unwrap();
        drop(b);
        assert_eq!(
            g.get(),
            0,
            "alice's open ones are gone; _e is only admitted"
        );
    }

    #[test]
    fn evict_oldest_stops_the_oldest_once_the_new_one_is_open() {
        let users = Users::new();
        let g = gauge();
        let lim = limit(1, OnUserLimit::EvictOldest);
        let a = users.reserve("/ws", "alice", lim, g.clone()).unwrap();
        let ta = tunnel(1, "alice");
        a.attach(&ta);
        let b = users.reserve("/ws", "alice", lim, g.clone()).unwrap();
        assert_eq!(
            ta.stop_reason(),
            None,
            "evicted before the new login opened"
        );
        let tb = tunnel(2, "alice");
        b.attach(&tb);
        assert_eq!(ta.stop_reason(), Some(StopReason::Evicted));
        assert_eq!(tb.stop_reason(), None);
        // `a` is still closing: the next login evicts `b`, not `a` again.
        let c = users.reserve("/ws", "alice", lim, g.clone()).unwrap();
        c.attach(&tunnel(3, "alice"));
        assert_eq!(tb.stop_reason(), Some(StopReason::Evicted));
    }

    #[test]
    fn a_new_login_that_never_opens_evicts_nobody() {
        let users = Users::new();
        let g = gauge();
        let lim = limit(1, OnUserLimit::EvictOldest);
        let a = users.reserve("/ws", "alice", lim, g.clone()).unwrap();
        let ta = tunnel(1, "alice");
        a.attach(&ta);
        // The new login's upstream fails (502): its slot is dropped unopened.
        drop(users.reserve("/ws", "alice", lim, g.clone()).unwrap());
        assert_eq!(
            ta.stop_reason(),
            None,
            "the working device was logged out for nothing"
        );
    }

    #[test]
    fn of_logins_opening_at_once_the_newest_wins() {
        let users = Users::new();
        let g = gauge();
        let lim = limit(1, OnUserLimit::EvictOldest);
        let a = users.reserve("/ws", "alice", lim, g.clone()).unwrap();
        let b = users.reserve("/ws", "alice", lim, g.clone()).unwrap();
        let c = users.reserve("/ws", "alice", lim, g.clone()).unwrap();
        // The newest opens first: both older ones are evicted, each as it opens.
        let tc = tunnel(3, "alice");
        c.attach(&tc);
        let ta = tunnel(1, "alice");
        a.attach(&ta);
        assert_eq!(ta.stop_reason(), Some(StopReason::Evicted));
        let tb = tunnel(2, "alice");
        b.attach(&tb);
        assert_eq!(tb.stop_reason(), Some(StopReason::Evicted));
        assert_eq!(tc.stop_reason(), None);
    }

    #[test]
    fn kicks_reach_admitted_slots_and_keep_custom_codes() {
        let users = Users::new();
        let g = gauge();
        let a = users.reserve("/ws", "alice", None, g.clone()).unwrap();
        let b = users.reserve("/chat", "alice", None, g.clone()).unwrap();
        let ta = tunnel(1, "alice");
        a.attach(&ta);
        let stop = Stop {
            reason: StopReason::Kicked,
            close: Some((4100, "bye".into())),
        };
        assert_eq!(users.stop_user("alice", &stop), Some(2));
        assert_eq!(users.stop_user("alice", &stop), Some(0), "already stopping");
        assert_eq!(users.stop_user("nobody", &stop), None);
        assert_eq!(ta.close_override(), Some((4100, "bye".into())));
        let tb = tunnel(2, "alice");
        b.attach(&tb);
        assert_eq!(tb.stop_reason(), Some(StopReason::Kicked));
        assert_eq!(tb.close_override(), Some((4100, "bye".into())));
    }

    #[test]
    fn listing_shows_open_connections_per_route() {
        let users = Users::new();
        let g = gauge();
        let a = users.reserve("/ws", "a b@x/y", None, g.clone()).unwrap();
        let b = users.reserve("/ws", "a b@x/y", None, g.clone()).unwrap();
        let c = users.reserve("/chat", "a b@x/y", None, g.clone()).unwrap();
        let _pending = users.reserve("/ws", "carol", None, g.clone()).unwrap();
        a.attach(&tunnel(1, "a b@x/y"));
        b.attach(&tunnel(2, "a b@x/y"));
        c.attach(&tunnel(3, "a b@x/y"));
        let all: Vec<OnlineUser> = (0..users.shard_count())
            .flat_map(|i| users.online_in_shard(i, None))
            .collect();
        assert_eq!(all.len(), 1, "carol is not open yet: {all:?}");
        let mut routes = all[0].routes.clone();
        routes.sort();
        assert_eq!(routes, vec![("/chat".into(), 1), ("/ws".into(), 2)]);
        let chat: Vec<OnlineUser> = (0..users.shard_count())
            .flat_map(|i| users.online_in_shard(i, Some("/chat")))
            .collect();
        assert_eq!(chat[0].routes, vec![("/chat".into(), 1)]);
        assert_eq!(users.open_tunnels("a b@x/y").len(), 3);
        drop((a, b, c));
        assert!(users.open_tunnels("a b@x/y").is_empty());
    }
}
