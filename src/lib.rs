//! wsgate: an authenticated WebSocket gateway.
//!
//! ```text
//!  listener ──► proxy_protocol ──► tls ──► proxy::conn ──► proxy::handler ──► route ──► auth ──► balance/upstream ──► splice
//!  (accept,     (opt-in PROXY      (rustls,  (hyper h1 or   (request phases:    (prefix   (basic,   (pick a server,        (one future,
//!   permits,     v1/v2 header)      timeout,  h2 by ALPN,    origin, rate,       match)    jwt,      connect, forward,      both ways,
//!   limits)                         ALPN)     upgrades,      refusals via                  forward)  101 check)             registry entry)
//!                                             drain)         proxy::response;
//!                                                            extended_connect: RFC 8441)
//!  side channels: metrics (handles), admin (/metrics /healthz /readyz, POST /reload, GET /events),
//!                 tracing logs (log_writer: batched stderr), events (connected/disconnected: route webhooks, SSE hub),
//!                 registry (open tunnels: idle sweeper, drain deadline, admin API),
//!                 users (authenticated connections per route and user: per-user limits),
//!                 admin_api (GET /connections /users, kick, push, broadcast),
//!                 cluster (opt-in: presence, per-user limits, kicks and pushes shared in Redis),
//!                 frames (WebSocket frame boundaries seen by the splice; builds injected frames),
//!                 zerocopy (splice(2) through per-thread pooled pipes for plain TCP ↔ TCP tunnels)
//!  leaves: config (YAML → typed), runtime (typed → loaded state, swapped on reload), forwarded
//!          (client address, X-Forwarded-For, Forwarded), headers (underscore twins, Host,
//!          the upstream's 101), limits (per-IP counters)
//!  path: the canonical request path; handler routes on it and forwards exactly it
//!  healthcheck: the `wsgate healthcheck` probe (a client of the above, run as its own process)
//! ```
//!
//! [`Gateway::bind`] builds everything and binds the sockets; [`Gateway::run`] serves until
//! the given shutdown future completes, then drains.
// A client or a config must never be able to panic the gateway; tests may unwrap.
// This stays an attribute: Cargo's [lints] table cannot say "outside cfg(test)", and a
// crate-wide deny there would reach every unit and integration test.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod acme;
pub mod admin;
pub mod admin_api;
pub mod auth;
pub mod balance;
pub mod cluster;
pub mod config;
pub mod deadlines;
pub mod drain;
pub mod events;
pub mod forwarded;
pub mod frames;
pub mod headers;
pub mod healthcheck;
pub mod limits;
pub mod listener;
pub mod log_writer;
pub mod metrics;
pub mod path;
pub mod pinning;
pub mod proxy;
pub mod proxy_protocol;
pub mod registry;
pub mod route;
pub mod runtime;
pub mod splice;
pub mod tls;
pub mod tls_stream;
pub mod upstream;
pub mod users;
pub mod zerocopy;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError, ConfigErrors};
use crate::listener::BoundListener;
use crate::metrics::Metrics;
use crate::proxy::Shared;
use crate::runtime::Runtime;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration (or a file it names) is invalid.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// A socket could not be bound.
    #[error("{0}")]
    Bind(std::io::Error),
    /// Metrics could not be registered (a bug).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The crate version (`Cargo.toml`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit wsgate was built from (short hash), or `unknown` (see build.rs).
pub const COMMIT: &str = env!("WSGATE_GIT_COMMIT");
/// `--version` text: version and commit.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("WSGATE_GIT_COMMIT"),
    ")"
);

/// Publishes what operators alert on about the state just put in force.
fn publish_applied(metrics: &Metrics, runtime: &Runtime) {
    let certs: Vec<(String, String, i64)> = runtime
        .config
        .listeners
        .iter()
        .zip(&runtime.listener_certs)
        .filter_map(|(l, c)| {
            c.as_ref()
                .map(|c| (l.bind.to_string(), c.subject.clone(), c.not_after))
        })
        .collect();
    metrics.config_applied(runtime.config.limits.max_connections, &certs);
}

/// Validates a config the way start-up does (files included) without binding anything.
pub fn check(config: Config) -> Result<(), ConfigErrors> {
    let metrics = Metrics::new().map_err(|e| {
        ConfigErrors(vec![ConfigError {
            path: String::new(),
            message: format!("metrics: {e}"),
        }])
    })?;
    let runtime = runtime::build(config, &metrics)?;
    // Fetch each JWKS once, as start-up would (not from inside a runtime: no blocking there).
    if tokio::runtime::Handle::try_current().is_ok() {
        return Ok(());
    }
    let problems = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(async {
            runtime.start(&metrics, None);
            let problems = runtime.first_fetches().await;
            runtime.stop();
            problems
        }),
        Err(e) => vec![(String::new(), format!("cannot fetch JWKS: {e}"), true)],
    };
    jwks_problems(problems)
}

/// Start-up JWKS fetch failures: errors where `jwks_required_at_start` says so, warnings
/// (logged) otherwise.
fn jwks_problems(problems: Vec<(String, String, bool)>) -> Result<(), ConfigErrors> {
    let mut errors = Vec::new();
    for (path, message, required) in problems {
        if required {
            errors.push(ConfigError::new(
                path,
                format!("cannot fetch the JWKS: {message} (jwks_required_at_start is set)"),
            ));
        } else {
            tracing::warn!(
                "{path}: cannot fetch the JWKS: {message}; starting without its keys: \
                 its tokens get 401 until a refresh succeeds"
            );
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

/// A gateway with its sockets bound, ready to [`run`](Gateway::run).
pub struct Gateway {
    state: Arc<ArcSwap<Runtime>>,
    /// Cluster mode's background tasks: aborted when the gateway (or its `run`) is dropped.
    cluster_tasks: Option<cluster::Tasks>,
    shared: Arc<Shared>,
    listeners: Vec<BoundListener>,
    admin: Option<TcpListener>,
    upstream_tls: Option<Arc<rustls::ClientConfig>>,
    config_path: Option<std::path::PathBuf>,
}

/// Swaps in a new configuration while the gateway runs (SIGHUP, tests).
#[derive(Clone)]
pub struct Reloader {
    state: Arc<ArcSwap<Runtime>>,
    shared: Arc<Shared>,
    metrics: Metrics,
    upstream_tls: Option<Arc<rustls::ClientConfig>>,
}

impl Gateway {
    /// Loads every file, builds the runtime state and binds every listener.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        Self::bind_with(config, None).await
    }

    /// Like [`bind`](Gateway::bind), with a fixed client TLS config for `wss://` upstreams.
    pub async fn bind_with(
        config: Config,
        upstream_tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Self, StartError> {
        let metrics = Metrics::new()?;
        let runtime = runtime::build_with(config, &metrics, upstream_tls.clone())?;
        runtime.start(&metrics, None);
        jwks_problems(runtime.first_fetches().await)?;
        publish_applied(&metrics, &runtime);
        acme::start(&runtime, &metrics);
        let mut listeners = Vec::new();
        for (index, l) in runtime.config.listeners.iter().enumerate() {
            let tcp = listener::bind(l.bind).await.map_err(StartError::Bind)?;
            listeners.push(BoundListener { index, tcp });
        }
        let admin = match &runtime.config.admin {
            Some(a) => Some(listener::bind(a.bind).await.map_err(StartError::Bind)?),
            None => None,
        };
        limits::log_effective(&runtime.config);
        let events = Arc::new(events::Events::new(
            &metrics,
            events::max_streams(&runtime.config),
        ));
        let (max_connections, max_pending) = (
            runtime.config.limits.max_connections,
            runtime.config.limits.max_pending_handshakes,
        );
        let registry = registry::Registry::new();
        let users = users::Users::new();
        let state = Arc::new(ArcSwap::from_pointee(runtime));
        let (cluster, cluster_tasks) =
            cluster::start(&state, &metrics, registry.clone(), users.clone())?;
        let shared = Arc::new(Shared {
            events,
            metrics,
            tracker: TaskTracker::new(),
            draining: CancellationToken::new(),
            registry,
            users,
            cluster,
            deadlines: Arc::new(deadlines::Deadlines::new()),
            limits: limits::Limits::new(),
            connections: Arc::new(Semaphore::new(max_connections)),
            pending: Arc::new(Semaphore::new(max_pending)),
        });
        Ok(Gateway {
            state,
            cluster_tasks,
            shared,
            listeners,
            admin,
            upstream_tls,
            config_path: None,
        })
    }

    /// The bound address of each listener, in config order (useful with port 0).
    pub fn listener_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.tcp.local_addr().ok())
            .collect()
    }

    /// The bound admin address, when configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The metrics handle (for embedding and tests).
    pub fn metrics(&self) -> Metrics {
        self.shared.metrics.clone()
    }

    /// Names the config file, which enables `POST /reload` on the admin listener.
    pub fn set_config_path(&mut self, path: impl Into<std::path::PathBuf>) {
        self.config_path = Some(path.into());
    }

    /// A handle that swaps in new configurations.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            state: self.state.clone(),
            shared: self.shared.clone(),
            metrics: self.shared.metrics.clone(),
            upstream_tls: self.upstream_tls.clone(),
        }
    }

    /// Serves until `shutdown` completes, then drains: stop accepting, `/readyz` 503,
    /// wait for open connections up to `shutdown.drain_timeout`, close the rest.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let _cluster_tasks = self.cluster_tasks.take();
        let admin_stop = CancellationToken::new();
        let mut loops = Vec::new();
        for l in std::mem::take(&mut self.listeners) {
            loops.push(tokio::spawn(listener::accept_loop(
                l,
                self.state.clone(),
                self.shared.clone(),
            )));
        }
        let reload = self.config_path.clone().map(|path| admin::ReloadTarget {
            reloader: self.reloader(),
            path,
        });
        let admin_task = self.admin.take().map(|a| {
            tokio::spawn(admin::serve(
                a,
                self.state.clone(),
                self.shared.clone(),
                reload,
                admin_stop.clone(),
            ))
        });

        let sweeper = tokio::spawn(sweep_idle_tunnels(
            self.state.clone(),
            self.shared.registry.clone(),
        ));
        let deadline_task = tokio::spawn(
            self.shared
                .deadlines
                .clone()
                .run(self.shared.registry.clone()),
        );
        let pruner = tokio::spawn(prune_rate_buckets(
            self.state.clone(),
            self.shared.limits.clone(),
        ));

        shutdown.await;
        let deadline = self.state.load().config.shutdown.drain_timeout;
        let open = self.shared.tracker.len();
        tracing::info!(open_connections = open, drain_timeout = ?deadline, "draining");
        self.shared.draining.cancel();
        for l in loops {
            let _ = l.await;
        }
        let jitter = self.state.load().config.shutdown.close_jitter;
        drain::drain(
            &self.shared.tracker,
            &self.shared.registry,
            deadline,
            jitter,
        )
        .await;
        sweeper.abort();
        deadline_task.abort();
        pruner.abort();
        if let Some(c) = &self.shared.cluster {
            c.leave().await;
        }
        // The drain's own disconnects are the last events: give webhooks a moment for them.
        self.shared.events.flush(EVENTS_FLUSH).await;
        admin_stop.cancel();
        if let Some(t) = admin_task {
            let _ = t.await;
        }
        tracing::info!("stopped");
    }
}

/// How long the exit waits for webhook queues to empty after the drain.
const EVENTS_FLUSH: Duration = Duration::from_secs(5);

/// Closes tunnels idle for `timeouts.tunnel_idle` (read at each tick, so reloads apply).
/// One task for all tunnels instead of a timer in each keeps idle tunnels small.
async fn sweep_idle_tunnels(state: Arc<ArcSwap<Runtime>>, registry: Arc<registry::Registry>) {
    loop {
        let (idle, ping) = {
            let s = state.load();
            let ping = s
                .config
                .routes
                .iter()
                .filter_map(|r| r.ping_interval.map(|i| i.min(r.ping_timeout)))
                .min();
            (s.config.timeouts.tunnel_idle, ping)
        };
        // Four looks per period: a tunnel is closed between 1 and 1.25 periods idle, and a
        // keepalive ping goes out (or times out) within a quarter period of its time.
        let period = match (idle.is_zero(), ping) {
            (true, None) => Duration::from_secs(4),
            (true, Some(p)) => p,
            (false, None) => idle,
            (false, Some(p)) => idle.min(p),
        };
        let tick = (period / 4).clamp(Duration::from_millis(10), Duration::from_secs(60));
        tokio::time::sleep(tick).await;
        if !idle.is_zero() {
            let n = registry.sweep_idle(idle);
            if n > 0 {
                tracing::debug!(tunnels = n, "closing idle tunnels");
            }
        }
        if ping.is_some() {
            let n = registry.sweep_keepalive();
            if n > 0 {
                tracing::debug!(tunnels = n, "closing tunnels that did not answer a ping");
            }
        }
    }
}

/// Forgets refilled per-client rate buckets off the request path (the table is also capped,
/// see `limits`), so a burst of one-off clients does not keep memory for long.
async fn prune_rate_buckets(state: Arc<ArcSwap<Runtime>>, limits: Arc<limits::Limits>) {
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let l = &state.load().config.limits;
        let n = limits.prune(l.handshake_rate_per_ip, l.handshake_burst_per_ip);
        if n > 0 {
            tracing::debug!(buckets = n, "forgot refilled rate buckets");
        }
    }
}

/// Why a reload was refused (the old configuration stays in force).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new configuration is invalid.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// Listener or admin addresses changed: that needs a restart.
    #[error("{0}")]
    NeedsRestart(String),
}

impl Reloader {
    /// Validates and swaps in `config`; open connections keep the state they started with.
    pub fn reload(&self, config: Config) -> Result<(), ReloadError> {
        let result = self.try_reload(config);
        self.metrics.reload(result.is_ok());
        result
    }

    /// Re-reads the config file at `path` (and every file it names) and swaps it in.
    pub fn reload_from(&self, path: &std::path::Path) -> Result<(), ReloadError> {
        let result = config::load(path)
            .map_err(ReloadError::from)
            .and_then(|c| self.try_reload(c));
        self.metrics.reload(result.is_ok());
        result
    }

    fn try_reload(&self, config: Config) -> Result<(), ReloadError> {
        let current = self.state.load();
        let old = &current.config;
        let same_listeners = old.listeners.len() == config.listeners.len()
            && old
                .listeners
                .iter()
                .zip(&config.listeners)
                .all(|(a, b)| a.bind == b.bind && a.tls.is_some() == b.tls.is_some());
        if !same_listeners {
            return Err(ReloadError::NeedsRestart(
                "listeners changed (bind addresses or plain/TLS): restart wsgate to apply".into(),
            ));
        }
        // admin.token is read per request, so it may change; the socket and its cap may not.
        let admin_socket = |c: &Config| c.admin.as_ref().map(|a| (a.bind, a.max_connections));
        if admin_socket(old) != admin_socket(&config) {
            return Err(ReloadError::NeedsRestart(
                "admin.bind or admin.max_connections changed: restart wsgate to apply".into(),
            ));
        }
        // The cluster's connections, instance id and heartbeat are set up once, at start.
        if old.cluster != config.cluster {
            return Err(ReloadError::NeedsRestart(
                "cluster changed: restart wsgate to apply".into(),
            ));
        }
        let runtime = runtime::build_with(config, &self.metrics, self.upstream_tls.clone())?;
        let (old_limits, new_limits) = (&current.config.limits, &runtime.config.limits);
        resize(
            &self.shared.connections,
            old_limits.max_connections,
            new_limits.max_connections,
        );
        resize(
            &self.shared.pending,
            old_limits.max_pending_handshakes,
            new_limits.max_pending_handshakes,
        );
        if old_limits != new_limits
            || current.config.trusted_proxies != runtime.config.trusted_proxies
        {
            limits::log_effective(&runtime.config);
        }
        publish_applied(&self.metrics, &runtime);
        // The same advice as at start-up: a reload may bring a weak hash or a risky route.
        for w in config::warnings(&runtime.config) {
            tracing::warn!("config: {w}");
        }
        runtime.start(&self.metrics, Some(&**current));
        acme::start(&runtime, &self.metrics);
        self.state.store(Arc::new(runtime));
        current.stop();
        Ok(())
    }
}

/// Grows or shrinks a limit semaphore in place. Held permits stay valid; a shrink below
/// the number in use takes the rest back as they are released.
fn resize(sem: &Arc<Semaphore>, old: usize, new: usize) {
    if new > old {
        sem.add_permits(new - old);
    } else if old > new {
        let owed = (old - new) - sem.forget_permits(old - new);
        if owed > 0 {
            let sem = sem.clone();
            let owed = u32::try_from(owed).unwrap_or(u32::MAX);
            tokio::spawn(async move {
                if let Ok(p) = sem.acquire_many_owned(owed).await {
                    p.forget();
                }
            });
        }
    }
}
