//! HTTP side of a client connection: serving (`conn`), per-request logic (`handler`), the
//! HTTP/2 WebSocket specifics (`extended_connect`) and the mapping of refusals to responses
//! (`response`).

pub mod conn;
pub mod extended_connect;
pub mod handler;
pub mod response;

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::registry::Registry;

/// Process-wide pieces every connection shares.
pub struct Shared {
    /// Metric handles.
    pub metrics: Metrics,
    /// Every connection and tunnel task, so the drain can wait for them.
    pub tracker: TaskTracker,
    /// Fired when draining starts: stop accepting, finish in-flight requests.
    pub draining: CancellationToken,
    /// Every open tunnel (the drain deadline and the idle sweeper stop them through it).
    pub registry: Arc<Registry>,
    /// Authenticated connections per (route, user): per-user limits, `GET /users`, kicks.
    pub users: Arc<crate::users::Users>,
    /// Token-expiry and lifetime deadlines of open tunnels.
    pub deadlines: Arc<crate::deadlines::Deadlines>,
    /// Per-client-IP connection counts and handshake buckets.
    pub limits: Arc<Limits>,
    /// Open client connections (`limits.max_connections`).
    pub connections: Arc<Semaphore>,
    /// Connections not yet past their first request (`limits.max_pending_handshakes`).
    pub pending: Arc<Semaphore>,
    /// Connection events: route webhooks and `GET /events` subscribers.
    pub events: Arc<crate::events::Events>,
    /// Cluster mode's shared state in Redis (`None`: this instance alone).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}
