//! Cluster mode (`cluster:`): several instances share who is online, per-user limits, kicks,
//! pushes and broadcasts through one Redis. Absent from the config, nothing here runs.
//!
//! Keys (all under `cluster.key_prefix`, `{p}` below; `{i}` = an instance id):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{p}alive:{i}` | string, TTL 3 heartbeats | the instance is alive |
//! | `{p}conns:{i}` | hash, TTL 3 heartbeats | tunnel id → JSON record (route, user, client, since) |
//! | `{p}instances` | set | instance ids (a dead one is dropped by the next reader) |
//! | `{p}limit:{route}\n{user}` | sorted set | the user's slots on the route: `{i}\|c{id}` (open) or `{i}\|p{n}` (admitted), scored by admission time |
//! | channel `{p}bus` | pub/sub | kicks, pushes, broadcasts (JSON) for every instance |
//! | channel `{p}evict` | pub/sub | a slot the limit script evicted (`{i}\|c{id}`) |
//!
//! A crashed instance stops refreshing its TTLs, so its presence vanishes within three
//! heartbeats, and the limit script drops its slots as soon as its `conns` hash is gone.
//!
//! Nothing on the handshake path or in the splice waits for Redis, with one bounded
//! exception: a `reject` limit check (at most `cluster.timeout`, then local-only). Presence
//! writes go through one queue to one writer task, which keeps them in order (a close never
//! overtakes its open) and drops them, marking the state dirty, while Redis is unreachable;
//! the next good heartbeat rewrites the instance's whole presence from the registry.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use prometheus::{IntGauge, IntGaugeVec, Opts};
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{ClusterConfig, OnUserLimit};
use crate::frames::MessageKind;
use crate::metrics::{CLUSTER_UP, CLUSTER_USERS_ONLINE, Metrics, MetricsError};
use crate::registry::{Outgoing, Registry, StopReason, TunnelInfo};
use crate::users::{OverLimit, Stop, UserLimit, Users};

/// Presence writes waiting for the writer; beyond this they are dropped and the state is
/// rewritten at the next heartbeat.
const QUEUE: usize = 16_384;
/// Writes sent to Redis in one pipeline.
const BATCH: usize = 512;
/// How long an admitted slot (`{i}|p{n}`) counts against a `reject` limit before its tunnel
/// opens: longer than any handshake (connect, TLS and upstream timeouts).
const PENDING_TTL_MS: u64 = 60_000;
/// A limit set idle this long expires (bounds what crashed instances can leave behind).
const LIMIT_KEY_TTL_MS: u64 = 24 * 3600 * 1000;
/// Bound on admin-side Redis calls (listings, publishes).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Prunes dead slots of one user on one route, then admits `member`.
/// KEYS[1] limit set; ARGV: prefix, member, max, mode (`reject` | `evict` | `add`),
/// pending TTL ms, member it replaces (or ''), tunnel id (or ''), record, presence TTL ms,
/// limit set TTL ms. Returns -1 when `reject` refuses, else how many slots it evicted.
const LIMIT_SCRIPT: &str = r#"
local key, prefix, member = KEYS[1], ARGV[1], ARGV[2]
local max, mode, pending_ttl, replace = tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5]), ARGV[6]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = now
if replace ~= '' then
  local s = redis.call('ZSCORE', key, replace)
  if s then score = tonumber(s) end
  redis.call('ZREM', key, replace)
end
if ARGV[7] ~= '' then
  local conns = prefix .. 'conns:' .. string.match(member, '^(.*)|')
  redis.call('HSET', conns, ARGV[7], ARGV[8])
  redis.call('PEXPIRE', conns, ARGV[9])
end
local all = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
local live = 0
for i = 1, #all, 2 do
  local m, s = all[i], tonumber(all[i + 1])
  local inst, kind, id = string.match(m, '^(.*)|([cp])(%d+)$')
  local ok = false
  if kind == 'c' then
    ok = redis.call('HEXISTS', prefix .. 'conns:' .. inst, id) == 1
  elseif kind == 'p' then
    ok = now - s < pending_ttl and redis.call('EXISTS', prefix .. 'alive:' .. inst) == 1
  end
  if ok then live = live + 1 else redis.call('ZREM', key, m) end
end
if mode == 'reject' and live >= max then return -1 end
redis.call('ZADD', key, score, member)
redis.call('PEXPIRE', key, ARGV[10])
local evicted = 0
if mode == 'evict' then
  local n = live + 1
  while n > max do
    local oldest = redis.call('ZRANGE', key, 0, 0)[1]
    if oldest == nil or oldest == member then break end
    redis.call('ZREM', key, oldest)
    redis.call('PUBLISH', prefix .. 'evict', oldest)
    n = n - 1
    evicted = evicted + 1
  end
end
return evicted
"#;

/// One open tunnel as stored in Redis (and listed by `?scope=cluster`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// The tunnel id on its instance.
    pub id: u64,
    /// The route's path.
    pub route: String,
    /// The authenticated user, if any.
    pub user: Option<String>,
    /// The client's address.
    pub client: String,
    /// When the 101 went out (RFC 3339).
    pub since: String,
}

impl Record {
    fn of(t: &TunnelInfo) -> Self {
        Record {
            id: t.id,
            route: t.route.clone(),
            user: t.user.clone(),
            client: t.client.to_string(),
            since: humantime::format_rfc3339_millis(t.opened).to_string(),
        }
    }
}

/// A message every instance acts on for its own connections.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Bus {
    KickUser {
        from: String,
        user: String,
        code: Option<u16>,
        reason: Option<String>,
    },
    PushUser {
        from: String,
        user: String,
        binary: bool,
        data: String,
    },
    Broadcast {
        from: String,
        route: String,
        binary: bool,
        data: String,
    },
}

/// A limit operation done by the writer together with a tunnel's presence.
#[derive(Debug)]
struct LimitOp {
    key: String,
    member: String,
    max: usize,
    mode: &'static str,
    replace: String,
}

#[derive(Debug)]
enum Write {
    Open {
        id: u64,
        record: String,
        limit: Option<LimitOp>,
    },
    Close {
        id: u64,
    },
    Forget {
        key: String,
        members: Vec<String>,
    },
}

/// Why a cluster-wide admin call could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

struct Inner {
    id: String,
    prefix: String,
    client: redis::Client,
    heartbeat: Duration,
    timeout: Duration,
    conn: Mutex<Option<MultiplexedConnection>>,
    /// Heartbeats succeed (the writer's view).
    reachable: AtomicBool,
    /// The pub/sub connection is subscribed.
    subscribed: AtomicBool,
    /// Writes were lost: rewrite the presence at the next heartbeat.
    dirty: AtomicBool,
    next_pending: AtomicU64,
    tx: mpsc::Sender<Write>,
    up: IntGauge,
    users_online: IntGaugeVec,
}

/// The cluster backend: cheap to share (`Arc`), every method safe to call from any task.
pub struct Cluster {
    inner: Arc<Inner>,
}

/// The background tasks of cluster mode; dropping this aborts them (a crashed instance's
/// presence then expires on its own).
pub struct Tasks {
    handles: Vec<JoinHandle<()>>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for h in &self.handles {
            h.abort();
        }
    }
}

/// A user's place in a cluster-wide limit; released (its slots removed) on drop.
pub struct Ticket {
    key: String,
    on_limit: OnUserLimit,
    max: usize,
    /// `{i}|p{n}` while the tunnel is not open (`reject` routes only).
    pending: Option<String>,
    /// The tunnel id once open.
    opened: AtomicU64,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("pending", &self.pending)
            .field("opened", &self.opened)
            .finish_non_exhaustive()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut members: Vec<String> = self.pending.iter().cloned().collect();
        let id = self.opened.load(Ordering::Acquire);
        if id != 0 {
            members.push(format!("{}|c{id}", self.inner.id));
        }
        if !members.is_empty()
            && self
                .inner
                .tx
                .try_send(Write::Forget {
                    key: self.key.clone(),
                    members,
                })
                .is_err()
        {
            self.inner.dirty.store(true, Ordering::Release);
        }
    }
}

/// Keeps a tunnel in the cluster's presence until dropped.
pub struct Presence {
    id: u64,
    inner: Arc<Inner>,
}

impl Drop for Presence {
    fn drop(&mut self) {
        if self
            .inner
            .tx
            .try_send(Write::Close { id: self.id })
            .is_err()
        {
            self.inner.dirty.store(true, Ordering::Release);
        }
    }
}

/// The default instance id: host name, process id and a random suffix (several gateways
/// may share one process, as the tests do).
fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "wsgate".to_owned());
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(64)
        .collect();
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Starts cluster mode when the config has a `cluster:` section; `(None, None)` otherwise.
pub fn start(
    state: &Arc<arc_swap::ArcSwap<crate::runtime::Runtime>>,
    metrics: &Metrics,
    registry: Arc<Registry>,
    users: Arc<Users>,
) -> Result<(Option<Arc<Cluster>>, Option<Tasks>), MetricsError> {
    let Some(config) = state.load().config.cluster.clone() else {
        return Ok((None, None));
    };
    let state = state.clone();
    // Read at each use, so a reload's routes and limits apply.
    let limits = Arc::new(move || {
        state
            .load()
            .config
            .routes
            .iter()
            .map(|r| {
                let limit = r.max_connections_per_user.map(|max| UserLimit {
                    max,
                    on_limit: r.on_user_limit,
                });
                (r.path.clone(), limit)
            })
            .collect::<HashMap<String, Option<UserLimit>>>()
    });
    let (cluster, tasks) = Cluster::launch(&config, metrics, registry, users, limits)?;
    Ok((Some(cluster), Some(tasks)))
}

/// Every route's path and its per-user limit, as the config in force has them.
type Limits = Arc<dyn Fn() -> HashMap<String, Option<UserLimit>> + Send + Sync>;

impl Cluster {
    /// Registers the cluster metrics and starts the writer/heartbeat and pub/sub tasks.
    fn launch(
        config: &ClusterConfig,
        metrics: &Metrics,
        registry: Arc<Registry>,
        users: Arc<Users>,
        limits: Limits,
    ) -> Result<(Arc<Cluster>, Tasks), MetricsError> {
        let up = IntGauge::new(
            CLUSTER_UP,
            "1 while cluster mode reaches Redis, 0 while it runs with local-only state.",
        )?;
        let users_online = IntGaugeVec::new(
            Opts::new(
                CLUSTER_USERS_ONLINE,
                "Distinct authenticated users with an open connection on any instance.",
            ),
            &["route"],
        )?;
        metrics.register_extra(Box::new(up.clone()))?;
        metrics.register_extra(Box::new(users_online.clone()))?;
        for route in limits().keys() {
            users_online.with_label_values(&[route.as_str()]);
        }
        // The URL was checked by the config; a failure here is reported at the first connect.
        let client = redis::Client::open(config.redis.as_str())
            .or_else(|_| redis::Client::open("redis://127.0.0.1:6379/0"))
            .map_err(|e| prometheus::Error::Msg(format!("cluster.redis: {}", e.category())))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let inner = Arc::new(Inner {
            id: config
                .instance_id
                .clone()
                .unwrap_or_else(default_instance_id),
            prefix: config.key_prefix.clone(),
            client,
            heartbeat: config.heartbeat,
            timeout: config.timeout,
            conn: Mutex::new(None),
            reachable: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            dirty: AtomicBool::new(true),
            next_pending: AtomicU64::new(1),
            tx,
            up,
            users_online,
        });
        tracing::info!(instance = %inner.id, heartbeat = ?inner.heartbeat, "cluster mode on");
        let writer = tokio::spawn(writer(inner.clone(), rx, registry.clone(), limits.clone()));
        let bus = tokio::spawn(subscriber(inner.clone(), registry, users));
        Ok((
            Arc::new(Cluster { inner }),
            Tasks {
                handles: vec![writer, bus],
            },
        ))
    }

    /// This instance's id.
    pub fn instance_id(&self) -> &str {
        &self.inner.id
    }

    fn up(&self) -> bool {
        self.inner.reachable.load(Ordering::Acquire)
    }

    fn connection(&self) -> Option<MultiplexedConnection> {
        if !self.up() {
            return None;
        }
        self.inner
            .conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn limit_key(&self, route: &str, user: &str) -> String {
        format!("{}limit:{route}\n{user}", self.inner.prefix)
    }

    /// Takes a place in `user`'s cluster-wide limit on `route` (after the local check
    /// passed). `reject` asks Redis, bounded by `cluster.timeout`; `evict_oldest` only
    /// prepares the ticket (eviction happens once the tunnel is open). Redis down, slow or
    /// failing: admitted, with local-only limits.
    pub async fn admit(
        &self,
        route: &str,
        user: &str,
        limit: Option<UserLimit>,
    ) -> Result<Option<Ticket>, OverLimit> {
        let Some(limit) = limit else {
            return Ok(None);
        };
        let mut ticket = Ticket {
            key: self.limit_key(route, user),
            on_limit: limit.on_limit,
            max: limit.max,
            pending: None,
            opened: AtomicU64::new(0),
            inner: self.inner.clone(),
        };
        if limit.on_limit != OnUserLimit::Reject {
            return Ok(Some(ticket));
        }
        let Some(mut conn) = self.connection() else {
            return Ok(Some(ticket));
        };
        let n = self.inner.next_pending.fetch_add(1, Ordering::Relaxed);
        let member = format!("{}|p{n}", self.inner.id);
        // Set before the call: if it times out but still lands, the drop removes it.
        ticket.pending = Some(member.clone());
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(LIMIT_SCRIPT)
            .arg(1)
            .arg(&ticket.key)
            .arg(&self.inner.prefix)
            .arg(&member)
            .arg(limit.max)
            .arg("reject")
            .arg(PENDING_TTL_MS)
            .arg("")
            .arg("")
            .arg("")
            .arg(ms(self.inner.heartbeat * 3))
            .arg(LIMIT_KEY_TTL_MS);
        match tokio::time::timeout(self.inner.timeout, cmd.query_async::<i64>(&mut conn)).await {
            Ok(Ok(-1)) => Err(OverLimit),
            Ok(Ok(_)) => Ok(Some(ticket)),
            Ok(Err(e)) => {
                tracing::debug!(
                    error = e.category(),
                    "cluster: limit check failed; local-only"
                );
                Ok(Some(ticket))
            }
            Err(_) => {
                tracing::debug!(timeout = ?self.inner.timeout, "cluster: limit check timed out; local-only");
                Ok(Some(ticket))
            }
        }
    }

    /// Publishes a just-opened tunnel (and takes its slot in the user's limit: `evict_oldest`
    /// closes the oldest slots beyond it on whichever instance holds them). Never waits.
    pub fn opened(&self, info: &TunnelInfo, ticket: Option<&Ticket>) -> Presence {
        let record = serde_json::to_string(&Record::of(info)).unwrap_or_default();
        let limit = ticket.map(|t| {
            t.opened.store(info.id, Ordering::Release);
            let (mode, replace) = match (t.on_limit, &t.pending) {
                (OnUserLimit::EvictOldest, _) => ("evict", String::new()),
                (OnUserLimit::Reject, Some(p)) => ("add", p.clone()),
                (OnUserLimit::Reject, None) => ("add", String::new()),
            };
            LimitOp {
                key: t.key.clone(),
                member: format!("{}|c{}", self.inner.id, info.id),
                max: t.max,
                mode,
                replace,
            }
        });
        if self
            .inner
            .tx
            .try_send(Write::Open {
                id: info.id,
                record,
                limit,
            })
            .is_err()
        {
            self.inner.dirty.store(true, Ordering::Release);
        }
        Presence {
            id: info.id,
            inner: self.inner.clone(),
        }
    }

    async fn publish(&self, msg: &Bus) -> Result<usize, Unavailable> {
        let mut conn = self.connection().ok_or(Unavailable)?;
        let body = serde_json::to_string(msg).map_err(|_| Unavailable)?;
        let channel = format!("{}bus", self.inner.prefix);
        let receivers = tokio::time::timeout(
            ADMIN_TIMEOUT,
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(body)
                .query_async::<usize>(&mut conn),
        )
        .await
        .map_err(|_| Unavailable)?
        .map_err(|_| Unavailable)?;
        // This instance is subscribed too and ignores its own messages.
        Ok(receivers.saturating_sub(1))
    }

    /// Asks every other instance to stop `user`'s connections; how many instances heard it.
    pub async fn kick_user(&self, user: &str, stop: &Stop) -> Result<usize, Unavailable> {
        self.publish(&Bus::KickUser {
            from: self.inner.id.clone(),
            user: user.to_owned(),
            code: stop.close.as_ref().map(|c| c.0),
            reason: stop.close.as_ref().map(|c| c.1.clone()),
        })
        .await
    }

    /// Asks every other instance to push `msg` to `user`; how many instances heard it.
    pub async fn push_user(&self, user: &str, msg: &Outgoing) -> Result<usize, Unavailable> {
        let (binary, data) = encode(msg);
        self.publish(&Bus::PushUser {
            from: self.inner.id.clone(),
            user: user.to_owned(),
            binary,
            data,
        })
        .await
    }

    /// Asks every other instance to send `msg` on `route`; how many instances heard it.
    pub async fn broadcast(&self, route: &str, msg: &Outgoing) -> Result<usize, Unavailable> {
        let (binary, data) = encode(msg);
        self.publish(&Bus::Broadcast {
            from: self.inner.id.clone(),
            route: route.to_owned(),
            binary,
            data,
        })
        .await
    }

    /// Every live instance's open tunnels, as `(instance, record)`.
    pub async fn connections(&self) -> Result<Vec<(String, Record)>, Unavailable> {
        let mut conn = self.connection().ok_or(Unavailable)?;
        tokio::time::timeout(ADMIN_TIMEOUT, fetch_all(&self.inner, &mut conn))
            .await
            .map_err(|_| Unavailable)?
            .map_err(|_| Unavailable)
    }

    /// Removes this instance from Redis at a clean exit (others stop listing it at once).
    pub async fn leave(&self) {
        let Some(mut conn) = self.connection() else {
            return;
        };
        let p = &self.inner.prefix;
        let id = &self.inner.id;
        let mut pipe = redis::pipe();
        pipe.cmd("DEL")
            .arg(format!("{p}alive:{id}"))
            .arg(format!("{p}conns:{id}"))
            .ignore()
            .cmd("SREM")
            .arg(format!("{p}instances"))
            .arg(id)
            .ignore();
        let _ = tokio::time::timeout(Duration::from_secs(1), pipe.exec_async(&mut conn)).await;
    }
}

fn encode(msg: &Outgoing) -> (bool, String) {
    use base64::Engine;
    match msg.kind {
        MessageKind::Text => (false, String::from_utf8_lossy(&msg.payload).into_owned()),
        MessageKind::Binary => (
            true,
            base64::engine::general_purpose::STANDARD.encode(&msg.payload),
        ),
    }
}

fn decode(binary: bool, data: String) -> Option<Outgoing> {
    use base64::Engine;
    Some(if binary {
        Outgoing {
            kind: MessageKind::Binary,
            payload: base64::engine::general_purpose::STANDARD
                .decode(data)
                .ok()?
                .into(),
        }
    } else {
        Outgoing {
            kind: MessageKind::Text,
            payload: data.into(),
        }
    })
}

/// Reads every live instance's records; forgets instances whose alive key is gone.
async fn fetch_all(
    inner: &Inner,
    conn: &mut MultiplexedConnection,
) -> redis::RedisResult<Vec<(String, Record)>> {
    let p = &inner.prefix;
    let ids: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("{p}instances"))
        .query_async(conn)
        .await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for id in &ids {
        pipe.cmd("EXISTS").arg(format!("{p}alive:{id}"));
        pipe.cmd("HVALS").arg(format!("{p}conns:{id}"));
    }
    let replies: Vec<redis::Value> = pipe.query_async(conn).await?;
    let mut out = Vec::new();
    let mut dead = Vec::new();
    for (id, pair) in ids.iter().zip(replies.chunks(2)) {
        let alive: i64 = redis::from_redis_value_ref(&pair[0]).unwrap_or(0);
        if alive == 0 {
            dead.push(id.clone());
            continue;
        }
        let values: Vec<String> = redis::from_redis_value_ref(&pair[1]).unwrap_or_default();
        out.extend(
            values
                .iter()
                .filter_map(|v| serde_json::from_str::<Record>(v).ok())
                .map(|r| (id.clone(), r)),
        );
    }
    if !dead.is_empty() {
        let _: redis::RedisResult<()> = redis::cmd("SREM")
            .arg(format!("{p}instances"))
            .arg(&dead)
            .query_async(conn)
            .await;
    }
    Ok(out)
}

/// Online users per route from every instance's records (`?scope=cluster`, the gauge).
pub fn users_by_route(records: &[(String, Record)]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (_, r) in records {
        if let Some(u) = &r.user {
            out.entry(r.route.clone()).or_default().insert(u.clone());
        }
    }
    out
}

impl Inner {
    fn set_conn(&self, conn: Option<MultiplexedConnection>) {
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = conn;
    }

    /// Logs each change of state once and updates `wsgate_cluster_up`.
    fn set_reachable(&self, reachable: bool, why: &str) {
        let was = self.reachable.swap(reachable, Ordering::AcqRel);
        if was != reachable {
            if reachable {
                tracing::info!(instance = %self.id, "cluster: Redis reachable; presence registered");
            } else {
                tracing::warn!(instance = %self.id, reason = why, "cluster: Redis unreachable; running with local-only state");
            }
        }
        self.publish_up();
    }

    fn publish_up(&self) {
        let up = self.reachable.load(Ordering::Acquire) && self.subscribed.load(Ordering::Acquire);
        self.up.set(i64::from(up));
    }

    fn ttl_ms(&self) -> u64 {
        ms(self.heartbeat * 3)
    }
}

fn limit_eval(pipe: &mut redis::Pipeline, inner: &Inner, op: &LimitOp, id: u64, record: &str) {
    pipe.cmd("EVAL")
        .arg(LIMIT_SCRIPT)
        .arg(1)
        .arg(&op.key)
        .arg(&inner.prefix)
        .arg(&op.member)
        .arg(op.max)
        .arg(op.mode)
        .arg(PENDING_TTL_MS)
        .arg(&op.replace)
        .arg(id)
        .arg(record)
        .arg(inner.ttl_ms())
        .arg(LIMIT_KEY_TTL_MS)
        .ignore();
}

/// Writes queued presence changes; every `heartbeat`, reconnects when needed, rewrites the
/// presence when it is dirty, refreshes the TTLs and recounts the cluster's online users.
async fn writer(
    inner: Arc<Inner>,
    mut rx: mpsc::Receiver<Write>,
    registry: Arc<Registry>,
    limits: Limits,
) {
    let mut tick = tokio::time::interval(inner.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn: Option<MultiplexedConnection> = None;
    let mut backoff = Duration::from_millis(100);
    let mut next_attempt = tokio::time::Instant::now();
    let conns_key = format!("{}conns:{}", inner.prefix, inner.id);
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if conn.is_none() && tokio::time::Instant::now() >= next_attempt {
                    match connect(&inner).await {
                        Ok(c) => {
                            conn = Some(c);
                            backoff = Duration::from_millis(100);
                        }
                        Err(why) => {
                            inner.set_reachable(false, &why);
                            next_attempt = tokio::time::Instant::now() + backoff;
                            backoff = (backoff * 2).min(inner.heartbeat.max(Duration::from_millis(100)));
                        }
                    }
                }
                let Some(c) = conn.as_mut() else { continue };
                match heartbeat(&inner, c, &registry, &limits).await {
                    Ok(()) => {
                        inner.set_conn(Some(c.clone()));
                        inner.set_reachable(true, "");
                        if let Ok(Ok(all)) = tokio::time::timeout(inner.heartbeat, fetch_all(&inner, c)).await {
                            let by_route = users_by_route(&all);
                            for route in limits().keys() {
                                inner.users_online.with_label_values(&[route.as_str()]).set(0);
                            }
                            for (route, users) in by_route {
                                inner.users_online.with_label_values(&[route.as_str()]).set(users.len() as i64);
                            }
                        }
                    }
                    Err(e) => {
                        let why = e.category().to_owned();
                        if is_connection_error(&e) {
                            conn = None;
                            inner.set_conn(None);
                            next_attempt = tokio::time::Instant::now() + backoff;
                        }
                        inner.dirty.store(true, Ordering::Release);
                        inner.set_reachable(false, &why);
                    }
                }
            }
            n = rx.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    return;
                }
                let Some(c) = conn.as_mut().filter(|_| inner.reachable.load(Ordering::Acquire)) else {
                    batch.clear();
                    inner.dirty.store(true, Ordering::Release);
                    continue;
                };
                let mut pipe = redis::pipe();
                let mut touched = false;
                for w in batch.drain(..) {
                    match w {
                        Write::Open { id, record, limit: Some(op) } => limit_eval(&mut pipe, &inner, &op, id, &record),
                        Write::Open { id, record, limit: None } => {
                            pipe.cmd("HSET").arg(&conns_key).arg(id).arg(record).ignore();
                            touched = true;
                        }
                        Write::Close { id } => {
                            pipe.cmd("HDEL").arg(&conns_key).arg(id).ignore();
                        }
                        Write::Forget { key, members } => {
                            pipe.cmd("ZREM").arg(key).arg(members).ignore();
                        }
                    }
                }
                if touched {
                    // A hash created here must not outlive a crash before the next heartbeat.
                    pipe.cmd("PEXPIRE").arg(&conns_key).arg(inner.ttl_ms()).ignore();
                }
                match tokio::time::timeout(inner.heartbeat, pipe.exec_async(c)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) if !is_connection_error(&e) => {
                        tracing::warn!(error = e.category(), detail = e.detail().unwrap_or(""), "cluster: a presence write failed; rewriting at the next heartbeat");
                        inner.dirty.store(true, Ordering::Release);
                    }
                    Ok(Err(e)) => {
                        conn = None;
                        inner.set_conn(None);
                        inner.dirty.store(true, Ordering::Release);
                        inner.set_reachable(false, e.category());
                    }
                    Err(_) => {
                        conn = None;
                        inner.set_conn(None);
                        inner.dirty.store(true, Ordering::Release);
                        inner.set_reachable(false, "timeout");
                    }
                }
            }
        }
    }
}

async fn connect(inner: &Inner) -> Result<MultiplexedConnection, String> {
    let limit = inner
        .heartbeat
        .clamp(Duration::from_millis(100), Duration::from_secs(5));
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(limit))
        .set_response_timeout(Some(limit));
    inner
        .client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| e.category().to_owned())
}

/// One heartbeat: rewrites the presence when dirty (Redis came back, or writes were lost),
/// then refreshes the TTLs.
async fn heartbeat(
    inner: &Inner,
    conn: &mut MultiplexedConnection,
    registry: &Registry,
    limits: &Limits,
) -> redis::RedisResult<()> {
    let p = &inner.prefix;
    let id = &inner.id;
    let ttl = inner.ttl_ms();
    let conns_key = format!("{p}conns:{id}");
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg(format!("{p}alive:{id}"))
        .arg(1)
        .arg("PX")
        .arg(ttl)
        .ignore()
        .cmd("SADD")
        .arg(format!("{p}instances"))
        .arg(id)
        .ignore();
    let resync = inner.dirty.swap(false, Ordering::AcqRel);
    if resync {
        let limits = limits();
        pipe.cmd("DEL").arg(&conns_key).ignore();
        for t in registry.snapshot() {
            let record = serde_json::to_string(&Record::of(&t)).unwrap_or_default();
            pipe.cmd("HSET")
                .arg(&conns_key)
                .arg(t.id)
                .arg(record)
                .ignore();
            if let (Some(user), Some(Some(_))) = (&t.user, limits.get(&t.route)) {
                let since = t
                    .opened
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(ms)
                    .unwrap_or(0);
                pipe.cmd("ZADD")
                    .arg(format!("{p}limit:{}\n{user}", t.route))
                    .arg("NX")
                    .arg(since)
                    .arg(format!("{id}|c{}", t.id))
                    .ignore();
            }
        }
    }
    pipe.cmd("PEXPIRE").arg(&conns_key).arg(ttl).ignore();
    let r = pipe.exec_async(conn).await;
    if r.is_err() && resync {
        inner.dirty.store(true, Ordering::Release);
    }
    r
}

/// Listens on the bus and evict channels (reconnecting with backoff) and acts on this
/// instance's connections.
async fn subscriber(inner: Arc<Inner>, registry: Arc<Registry>, users: Arc<Users>) {
    let bus = format!("{}bus", inner.prefix);
    let evict = format!("{}evict", inner.prefix);
    let mut backoff = Duration::from_millis(100);
    let cap = inner.heartbeat.max(Duration::from_millis(100));
    loop {
        let limit = inner
            .heartbeat
            .clamp(Duration::from_millis(100), Duration::from_secs(5));
        if let Ok(Ok(mut ps)) = tokio::time::timeout(limit, inner.client.get_async_pubsub()).await
            && ps.subscribe(&bus).await.is_ok()
            && ps.subscribe(&evict).await.is_ok()
        {
            backoff = Duration::from_millis(100);
            inner.subscribed.store(true, Ordering::Release);
            inner.publish_up();
            let mut stream = ps.on_message();
            while let Some(msg) = stream.next().await {
                let Ok(payload) = msg.get_payload::<String>() else {
                    continue;
                };
                if msg.get_channel_name() == evict {
                    on_evict(&inner, &registry, &payload);
                } else {
                    on_bus(&inner, &registry, &users, &payload);
                }
            }
            inner.subscribed.store(false, Ordering::Release);
            inner.publish_up();
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(cap);
    }
}

fn on_evict(inner: &Inner, registry: &Registry, member: &str) {
    let Some((instance, slot)) = member.rsplit_once('|') else {
        return;
    };
    if instance != inner.id {
        return;
    }
    if let Some(t) = slot
        .strip_prefix('c')
        .and_then(|id| id.parse::<u64>().ok())
        .and_then(|id| registry.get(id))
    {
        tracing::info!(
            id = t.id,
            "cluster: evicted by a newer login on another instance"
        );
        t.stop(StopReason::Evicted);
    }
}

fn on_bus(inner: &Inner, registry: &Registry, users: &Users, payload: &str) {
    let Ok(msg) = serde_json::from_str::<Bus>(payload) else {
        tracing::debug!("cluster: ignoring a bus message this version does not know");
        return;
    };
    match msg {
        Bus::KickUser { from, .. } | Bus::PushUser { from, .. } | Bus::Broadcast { from, .. }
            if from == inner.id => {}
        Bus::KickUser {
            user, code, reason, ..
        } => {
            let default = StopReason::Kicked.close_frame();
            let stop = Stop {
                reason: StopReason::Kicked,
                close: match (code, reason) {
                    (None, None) => None,
                    (c, r) => Some((c.unwrap_or(default.0), r.unwrap_or_default())),
                },
            };
            let n = users.stop_user(&user, &stop).unwrap_or(0);
            tracing::info!(user = %user, closed = n, "cluster: kicked a user for another instance");
        }
        Bus::PushUser {
            user, binary, data, ..
        } => {
            if let Some(msg) = decode(binary, data) {
                for t in users.open_tunnels(&user) {
                    let _ = t.push(msg.clone());
                }
            }
        }
        Bus::Broadcast {
            route,
            binary,
            data,
            ..
        } => {
            if let Some(msg) = decode(binary, data) {
                for i in 0..registry.shard_count() {
                    for t in registry.shard_snapshot(i) {
                        if t.route == route {
                            let _ = t.push(msg.clone());
                        }
                    }
                }
            }
        }
    }
}

/// Cluster mode's admin answers (`?scope=cluster`, fanned-out calls).
pub mod admin {
    use std::collections::BTreeMap;

    use http::{Response, StatusCode};

    use super::{Record, Unavailable};
    use crate::admin_api::{ApiError, json};
    use crate::proxy::Shared;
    use crate::proxy::response::ProxyBody;

    fn unavailable() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster state unavailable: Redis is unreachable (scope=local still answers)",
        )
    }

    async fn records(shared: &Shared) -> Result<Vec<(String, Record)>, ApiError> {
        let cluster = shared.cluster.as_ref().ok_or_else(unavailable)?;
        cluster.connections().await.map_err(|_| unavailable())
    }

    /// `GET /connections?scope=cluster`: every instance's open tunnels (no byte counts:
    /// those live in each instance's memory only).
    pub async fn connections(
        shared: &Shared,
        route: Option<&str>,
        user: Option<&str>,
    ) -> Result<Response<ProxyBody>, ApiError> {
        let mut all = records(shared).await?;
        all.retain(|(_, r)| {
            route.is_none_or(|want| r.route == want)
                && user.is_none_or(|want| r.user.as_deref() == Some(want))
        });
        all.sort_by(|a, b| (&a.0, a.1.id).cmp(&(&b.0, b.1.id)));
        let list: Vec<serde_json::Value> = all
            .into_iter()
            .map(|(instance, r)| {
                serde_json::json!({
                    "instance": instance,
                    "id": r.id,
                    "route": r.route,
                    "user": r.user,
                    "client": r.client,
                    "since": r.since,
                })
            })
            .collect();
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "connections": list }),
        ))
    }

    /// `GET /users?scope=cluster`: each user online anywhere, with counts per route and the
    /// instances holding them.
    pub async fn users(
        shared: &Shared,
        route: Option<&str>,
    ) -> Result<Response<ProxyBody>, ApiError> {
        type Entry = (BTreeMap<String, usize>, std::collections::BTreeSet<String>);
        let mut by_user: BTreeMap<String, Entry> = BTreeMap::new();
        for (instance, r) in records(shared).await? {
            let Some(user) = r.user else { continue };
            if route.is_some_and(|want| r.route != want) {
                continue;
            }
            let e = by_user.entry(user).or_default();
            *e.0.entry(r.route).or_default() += 1;
            e.1.insert(instance);
        }
        let list: Vec<serde_json::Value> = by_user
            .into_iter()
            .map(|(user, (routes, instances))| {
                serde_json::json!({
                    "user": user,
                    "connections": routes.values().sum::<usize>(),
                    "routes": routes,
                    "instances": instances,
                })
            })
            .collect();
        Ok(json(StatusCode::OK, &serde_json::json!({ "users": list })))
    }

    /// The answer of a call done here and published to the other instances: `body` (this
    /// instance's counts) plus `instances`, how many other instances received it. 404 when
    /// nothing here matched and no other instance heard; 503 when nothing here matched and
    /// Redis is unreachable.
    pub fn fanned_out(
        found_here: bool,
        others: Result<usize, Unavailable>,
        mut body: serde_json::Value,
        not_found: impl FnOnce() -> String,
    ) -> Result<Response<ProxyBody>, ApiError> {
        match others {
            Ok(0) if !found_here => Err(ApiError::new(StatusCode::NOT_FOUND, not_found())),
            Err(Unavailable) if !found_here => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{} here, and Redis is unreachable", not_found()),
            )),
            Ok(n) => {
                body["instances"] = serde_json::Value::from(n);
                Ok(json(StatusCode::OK, &body))
            }
            Err(Unavailable) => {
                body["instances"] = serde_json::Value::Null;
                Ok(json(StatusCode::OK, &body))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_messages_round_trip() {
        let m = Bus::KickUser {
            from: "a".into(),
            user: "alice/x".into(),
            code: Some(4100),
            reason: Some("bye".into()),
        };
        let s = serde_json::to_string(&m).unwrap();
        assert!(s.contains("\"op\":\"kick_user\""), "{s}");
        assert_eq!(serde_json::from_str::<Bus>(&s).unwrap(), m);
        let bin = Outgoing {
            kind: MessageKind::Binary,
            payload: bytes::Bytes::from_static(&[0, 1, 255]),
        };
        let (b, d) = encode(&bin);
        let back = decode(b, d).unwrap();
        assert_eq!(back.kind, MessageKind::Binary);
        assert_eq!(&back.payload[..], &[0, 1, 255]);
    }

    #[test]
    fn users_are_counted_once_per_route() {
        let rec = |id, route: &str, user: Option<&str>| Record {
            id,
            route: route.into(),
            user: user.map(Into::into),
            client: "127.0.0.1".into(),
            since: String::new(),
        };
        let all = vec![
            ("a".to_string(), rec(1, "/ws", Some("alice"))),
            ("b".to_string(), rec(1, "/ws", Some("alice"))),
            ("b".to_string(), rec(2, "/ws", Some("bob"))),
            ("b".to_string(), rec(3, "/ws", None)),
            ("c".to_string(), rec(1, "/chat", Some("alice"))),
        ];
        let by = users_by_route(&all);
        assert_eq!(by["/ws"].len(), 2);
        assert_eq!(by["/chat"].len(), 1);
    }

    #[test]
    fn default_ids_fit_keys_and_members() {
        let a = default_instance_id();
        assert!(!a.is_empty() && a.len() <= 128, "{a}");
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')),
            "{a}"
        );
    }
}
