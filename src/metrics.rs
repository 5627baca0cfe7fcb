//! Prometheus metrics: every name is a constant here, every handle is typed.
//!
//! The hot path never looks a label up: a route's handles are resolved once when the
//! route is built ([`RouteMetrics`]) and reused by every connection on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// Open spliced WebSocket connections ("online"), per route.
pub const CONNECTIONS_ACTIVE: &str = "wsgate_connections_active";
/// Upgrades completed, per route.
pub const CONNECTIONS_TOTAL: &str = "wsgate_connections_total";
/// Upgrade handshakes by outcome, per route.
pub const HANDSHAKES_TOTAL: &str = "wsgate_handshakes_total";
/// Authentication failures by reason, per route.
pub const AUTH_FAILURES_TOTAL: &str = "wsgate_auth_failures_total";
/// Bytes spliced, per route and direction.
pub const BYTES_TOTAL: &str = "wsgate_bytes_total";
/// Request received → 101 sent.
pub const HANDSHAKE_DURATION: &str = "wsgate_handshake_duration_seconds";
/// 101 sent → closed.
pub const CONNECTION_DURATION: &str = "wsgate_connection_duration_seconds";
/// Config reloads by result (`ok`, `error`).
pub const CONFIG_RELOADS_TOTAL: &str = "wsgate_config_reloads_total";
/// Always 1; the `version` and `commit` labels name the running build.
pub const BUILD_INFO: &str = "wsgate_build_info";
/// Unix time at which the configuration in force was applied (start-up or reload).
pub const CONFIG_LAST_RELOAD_SUCCESS: &str = "wsgate_config_last_reload_success_timestamp_seconds";
/// `notAfter` of each TLS listener's leaf certificate, unix seconds, per listener and subject.
pub const TLS_CERTIFICATE_EXPIRY: &str = "wsgate_tls_certificate_expiry_timestamp_seconds";
/// ACME certificate orders by result (`ok`, `error`).
pub const ACME_ORDERS_TOTAL: &str = "wsgate_acme_orders_total";
/// The configured `limits.max_connections`, so alerts can compare the open count to it.
pub const CONNECTIONS_MAX: &str = "wsgate_connections_max";
/// Accepted client connections not yet closed: each holds one of `limits.max_connections`
/// (handshakes in progress and keep-alive HTTP connections as well as spliced tunnels).
pub const CLIENT_CONNECTIONS_OPEN: &str = "wsgate_client_connections_open";

/// Connection events lost, by `reason`: `queue_full` (a webhook's queue was full),
/// `delivery_failed` (the webhook failed every attempt), `lagged` (an SSE subscriber fell
/// behind the stream).
pub const EVENTS_DROPPED_TOTAL: &str = "wsgate_events_dropped_total";
/// Connection events waiting for (or in) webhook delivery.
pub const EVENTS_QUEUED: &str = "wsgate_events_queued";
/// Distinct authenticated users with at least one open connection, per route.
pub const USERS_ONLINE: &str = "wsgate_users_online";
/// Tunnels ended, per route and reason (`CloseReason` values).
pub const CONNECTIONS_CLOSED_TOTAL: &str = "wsgate_connections_closed_total";
/// Whole WebSocket data messages spliced (from the frame tracker), per route and direction.
pub const MESSAGES_TOTAL: &str = "wsgate_messages_total";
/// Tunnels whose framing could not be followed (spliced on as bytes), per route and reason.
pub const FRAMES_UNTRACKABLE_TOTAL: &str = "wsgate_frames_untrackable_total";

/// 1 while cluster mode reaches Redis (heartbeat and pub/sub), 0 while it runs local-only.
pub const CLUSTER_UP: &str = "wsgate_cluster_up";
/// Distinct authenticated users with an open connection on any instance, per route.
pub const CLUSTER_USERS_ONLINE: &str = "wsgate_cluster_users_online";

/// JWKS fetches by authenticator and result (`ok`, `error`).
pub const JWKS_REFRESHES_TOTAL: &str = "wsgate_jwks_refreshes_total";
/// Usable keys in an authenticator's JWKS, as of its last successful fetch.
pub const JWKS_KEYS: &str = "wsgate_jwks_keys";
/// WebSocket upgrades completed, per route and client protocol (`http1`, `h2`).
pub const UPGRADES_BY_PROTOCOL_TOTAL: &str = "wsgate_upgrades_by_protocol_total";
/// Client connections served, by the HTTP protocol they spoke (`http1`, `h2`).
pub const CLIENT_CONNECTIONS_BY_PROTOCOL_TOTAL: &str =
    "wsgate_client_connections_by_protocol_total";

/// The HTTP protocol a client connection speaks (the `protocol` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (WebSockets by `Upgrade`).
    Http1,
    /// HTTP/2 over TLS (WebSockets by extended CONNECT, RFC 8441).
    H2,
}

impl Protocol {
    /// Every value, in label order.
    pub const ALL: [Protocol; 2] = [Protocol::Http1, Protocol::H2];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2 => "h2",
        }
    }
}

/// The `route` label used when no route matched.
pub const NO_ROUTE: &str = "unmatched";

/// Handshake outcome label values (the contract's list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 101 relayed to the client.
    Upgraded,
    /// No credentials on a route that accepts Basic: answered with the Basic challenge, the
    /// normal first round-trip of a browser's Basic login, so not an auth failure.
    Challenged,
    /// Credentials judged and refused, or none on a route without Basic.
    Unauthorized,
    /// Refused by policy (e.g. origin).
    Forbidden,
    /// No route matched.
    NotFound,
    /// Upstream unreachable or broken.
    UpstreamError,
    /// Upstream answered the upgrade with a non-101 status.
    UpstreamRejected,
    /// Malformed request.
    BadRequest,
    /// A timeout expired (upstream too slow, client too slow).
    Timeout,
    /// A limit refused the request.
    Limited,
}

impl Outcome {
    /// Every outcome, so each route exports all of them from the start.
    pub const ALL: [Outcome; 10] = [
        Outcome::Upgraded,
        Outcome::Challenged,
        Outcome::Unauthorized,
        Outcome::Forbidden,
        Outcome::NotFound,
        Outcome::UpstreamError,
        Outcome::UpstreamRejected,
        Outcome::BadRequest,
        Outcome::Timeout,
        Outcome::Limited,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Upgraded => "upgraded",
            Outcome::Challenged => "challenged",
            Outcome::Unauthorized => "unauthorized",
            Outcome::Forbidden => "forbidden",
            Outcome::NotFound => "not_found",
            Outcome::UpstreamError => "upstream_error",
            Outcome::UpstreamRejected => "upstream_rejected",
            Outcome::BadRequest => "bad_request",
            Outcome::Timeout => "timeout",
            Outcome::Limited => "limited",
        }
    }
}

/// The `reason` values of `wsgate_events_dropped_total`, all exported from the start.
pub const EVENTS_DROPPED_REASONS: [&str; 3] = ["queue_full", "delivery_failed", "lagged"];

/// Shared handle to every metric; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    connections_active: IntGaugeVec,
    connections_total: IntCounterVec,
    handshakes_total: IntCounterVec,
    auth_failures_total: IntCounterVec,
    bytes_total: IntCounterVec,
    handshake_duration: HistogramVec,
    connection_duration: HistogramVec,
    config_reloads_total: IntCounterVec,
    acme_orders_total: IntCounterVec,
    config_last_reload_success: Gauge,
    tls_certificate_expiry: IntGaugeVec,
    connections_max: IntGauge,
    client_connections_open: IntGauge,
    events_dropped_total: IntCounterVec,
    events_queued: IntGauge,
    users_online: IntGaugeVec,
    connections_closed_total: IntCounterVec,
    messages_total: IntCounterVec,
    frames_untrackable_total: IntCounterVec,
    jwks: JwksVecs,
    upgrades_by_protocol_total: IntCounterVec,
    client_connections_by_protocol: [IntCounter; 2],
    /// Listener → subject of its exported expiry series, to drop the series a renewed
    /// certificate with another subject leaves behind.
    cert_subjects: Arc<Mutex<HashMap<String, String>>>,
}

/// A route's pre-resolved handles, so a connection never hashes label values.
#[derive(Clone)]
pub struct RouteMetrics {
    /// The route label value.
    pub route: String,
    /// `wsgate_connections_active{route}`.
    pub active: IntGauge,
    /// `wsgate_connections_total{route}`.
    pub total: IntCounter,
    /// `wsgate_handshakes_total{route,outcome="upgraded"}`, resolved once (the hot outcome).
    pub upgraded: IntCounter,
    /// `wsgate_bytes_total{route,direction="client_to_upstream"}`.
    pub bytes_c2u: IntCounter,
    /// `wsgate_bytes_total{route,direction="upstream_to_client"}`.
    pub bytes_u2c: IntCounter,
    /// `wsgate_handshake_duration_seconds{route}`.
    pub handshake_duration: prometheus::Histogram,
    /// `wsgate_connection_duration_seconds{route}`.
    pub connection_duration: prometheus::Histogram,
    /// `wsgate_users_online{route}` (kept exact by `users::Users`); only exported for
    /// authenticated routes.
    pub users_online: IntGauge,
    /// `wsgate_connections_closed_total{route,reason}`, in `CloseReason::ALL` order.
    pub closed: Arc<[IntCounter]>,
    /// `wsgate_messages_total{route,direction="client_to_upstream"}`.
    pub messages_c2u: IntCounter,
    /// `wsgate_messages_total{route,direction="upstream_to_client"}`.
    pub messages_u2c: IntCounter,
    /// `wsgate_upgrades_by_protocol_total{route,protocol}`, in `Protocol::ALL` order.
    pub upgrades_by_protocol: [IntCounter; 2],
    metrics: Metrics,
}

/// The JWKS metric families.
#[derive(Clone)]
struct JwksVecs {
    refreshes: IntCounterVec,
    keys: IntGaugeVec,
}

impl JwksVecs {
    fn register(registry: &Registry) -> Result<Self, MetricsError> {
        let refreshes = IntCounterVec::new(
            Opts::new(JWKS_REFRESHES_TOTAL, "JWKS fetches by result."),
            &["authenticator", "result"],
        )?;
        let keys = IntGaugeVec::new(
            Opts::new(
                JWKS_KEYS,
                "Usable keys in the JWKS, as of its last good fetch.",
            ),
            &["authenticator"],
        )?;
        registry.register(Box::new(refreshes.clone()))?;
        registry.register(Box::new(keys.clone()))?;
        Ok(JwksVecs { refreshes, keys })
    }
}

/// One JWT authenticator's JWKS handles.
#[derive(Clone)]
pub struct JwksMetrics {
    /// `wsgate_jwks_refreshes_total{authenticator,result="ok"}`.
    pub ok: IntCounter,
    /// `wsgate_jwks_refreshes_total{authenticator,result="error"}`.
    pub error: IntCounter,
    /// `wsgate_jwks_keys{authenticator}`.
    pub keys: IntGauge,
}

/// Errors registering metrics (only possible through a programming error).
pub type MetricsError = prometheus::Error;

impl Metrics {
    /// Creates and registers every metric, plus the standard `process_*` collector.
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let connections_active = IntGaugeVec::new(
            Opts::new(
                CONNECTIONS_ACTIVE,
                "Open spliced WebSocket connections (online clients).",
            ),
            &["route"],
        )?;
        let connections_total = IntCounterVec::new(
            Opts::new(CONNECTIONS_TOTAL, "WebSocket upgrades completed."),
            &["route"],
        )?;
        let handshakes_total = IntCounterVec::new(
            Opts::new(HANDSHAKES_TOTAL, "Upgrade handshakes by outcome."),
            &["route", "outcome"],
        )?;
        let auth_failures_total = IntCounterVec::new(
            Opts::new(AUTH_FAILURES_TOTAL, "Authentication failures by reason."),
            &["route", "reason"],
        )?;
        let bytes_total = IntCounterVec::new(
            Opts::new(BYTES_TOTAL, "Bytes spliced between client and upstream."),
            &["route", "direction"],
        )?;
        let handshake_duration = HistogramVec::new(
            HistogramOpts::new(
                HANDSHAKE_DURATION,
                "Time from request received to 101 sent.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["route"],
        )?;
        let connection_duration = HistogramVec::new(
            HistogramOpts::new(CONNECTION_DURATION, "Time from 101 sent to close.").buckets(vec![
                0.1, 1.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0, 86400.0,
            ]),
            &["route"],
        )?;
        let config_reloads_total = IntCounterVec::new(
            Opts::new(CONFIG_RELOADS_TOTAL, "Configuration reloads by result."),
            &["result"],
        )?;
        let acme_orders_total = IntCounterVec::new(
            Opts::new(ACME_ORDERS_TOTAL, "ACME certificate orders by result."),
            &["result"],
        )?;
        registry.register(Box::new(acme_orders_total.clone()))?;
        registry.register(Box::new(connections_active.clone()))?;
        registry.register(Box::new(connections_total.clone()))?;
        registry.register(Box::new(handshakes_total.clone()))?;
        registry.register(Box::new(auth_failures_total.clone()))?;
        registry.register(Box::new(bytes_total.clone()))?;
        registry.register(Box::new(handshake_duration.clone()))?;
        registry.register(Box::new(connection_duration.clone()))?;
        let build_info = IntGaugeVec::new(
            Opts::new(BUILD_INFO, "Always 1; labels name the running build."),
            &["version", "commit"],
        )?;
        let config_last_reload_success = Gauge::new(
            CONFIG_LAST_RELOAD_SUCCESS,
            "Unix time the configuration in force was applied (start-up or reload).",
        )?;
        let tls_certificate_expiry = IntGaugeVec::new(
            Opts::new(
                TLS_CERTIFICATE_EXPIRY,
                "notAfter of each TLS listener's leaf certificate, unix seconds.",
            ),
            &["listener", "subject"],
        )?;
        let connections_max = IntGauge::new(
            CONNECTIONS_MAX,
            "Configured limits.max_connections (gateway-wide cap on client connections).",
        )?;
        let client_connections_open = IntGauge::new(
            CLIENT_CONNECTIONS_OPEN,
            "Accepted client connections not yet closed (each holds a max_connections slot).",
        )?;
        registry.register(Box::new(client_connections_open.clone()))?;
        let users_online = IntGaugeVec::new(
            Opts::new(
                USERS_ONLINE,
                "Distinct authenticated users with an open WebSocket connection.",
            ),
            &["route"],
        )?;
        registry.register(Box::new(users_online.clone()))?;
        let connections_closed_total = IntCounterVec::new(
            Opts::new(CONNECTIONS_CLOSED_TOTAL, "Tunnels ended, by reason."),
            &["route", "reason"],
        )?;
        let messages_total = IntCounterVec::new(
            Opts::new(MESSAGES_TOTAL, "Whole WebSocket data messages spliced."),
            &["route", "direction"],
        )?;
        let frames_untrackable_total = IntCounterVec::new(
            Opts::new(
                FRAMES_UNTRACKABLE_TOTAL,
                "Tunnels whose WebSocket framing could not be followed (spliced on as bytes).",
            ),
            &["route", "reason"],
        )?;
        registry.register(Box::new(connections_closed_total.clone()))?;
        registry.register(Box::new(messages_total.clone()))?;
        registry.register(Box::new(frames_untrackable_total.clone()))?;
        let upgrades_by_protocol_total = IntCounterVec::new(
            Opts::new(
                UPGRADES_BY_PROTOCOL_TOTAL,
                "WebSocket upgrades completed, by the client's HTTP protocol.",
            ),
            &["route", "protocol"],
        )?;
        let client_connections_by_protocol_total = IntCounterVec::new(
            Opts::new(
                CLIENT_CONNECTIONS_BY_PROTOCOL_TOTAL,
                "Client connections served, by the HTTP protocol they spoke.",
            ),
            &["protocol"],
        )?;
        registry.register(Box::new(upgrades_by_protocol_total.clone()))?;
        registry.register(Box::new(client_connections_by_protocol_total.clone()))?;
        let client_connections_by_protocol = Protocol::ALL
            .map(|p| client_connections_by_protocol_total.with_label_values(&[p.as_str()]));
        registry.register(Box::new(config_reloads_total.clone()))?;
        registry.register(Box::new(build_info.clone()))?;
        registry.register(Box::new(config_last_reload_success.clone()))?;
        registry.register(Box::new(tls_certificate_expiry.clone()))?;
        registry.register(Box::new(connections_max.clone()))?;
        build_info
            .with_label_values(&[crate::VERSION, crate::COMMIT])
            .set(1);
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        for result in ["ok", "error"] {
            config_reloads_total.with_label_values(&[result]);
        }
        let events_dropped_total = IntCounterVec::new(
            Opts::new(
                EVENTS_DROPPED_TOTAL,
                "Connection events lost (webhook queue full or failing, slow SSE subscriber).",
            ),
            &["reason"],
        )?;
        let events_queued = IntGauge::new(
            EVENTS_QUEUED,
            "Connection events waiting for (or in) webhook delivery.",
        )?;
        registry.register(Box::new(events_dropped_total.clone()))?;
        registry.register(Box::new(events_queued.clone()))?;
        for reason in EVENTS_DROPPED_REASONS {
            events_dropped_total.with_label_values(&[reason]);
        }
        let jwks = JwksVecs::register(&registry)?;
        crate::zerocopy::register(&registry)?;
        Ok(Metrics {
            jwks,
            registry,
            connections_active,
            connections_total,
            handshakes_total,
            auth_failures_total,
            bytes_total,
            handshake_duration,
            connection_duration,
            config_reloads_total,
            acme_orders_total,
            config_last_reload_success,
            tls_certificate_expiry,
            connections_max,
            client_connections_open,
            events_dropped_total,
            events_queued,
            users_online,
            connections_closed_total,
            messages_total,
            frames_untrackable_total,
            upgrades_by_protocol_total,
            client_connections_by_protocol,
            cert_subjects: Arc::default(),
        })
    }

    /// Adds a collector owned elsewhere (cluster mode's gauges) to the exported set.
    pub fn register_extra(
        &self,
        collector: Box<dyn prometheus::core::Collector>,
    ) -> Result<(), MetricsError> {
        self.registry.register(collector)?;
        Ok(())
    }

    /// Records a configuration just put in force: its time, its connection cap and its
    /// listeners' certificates as `(listener, subject, notAfter)`. Series of listeners
    /// absent from `certs`, or whose subject changed, are removed.
    pub fn config_applied(&self, max_connections: usize, certs: &[(String, String, i64)]) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.config_last_reload_success.set(now);
        self.connections_max
            .set(i64::try_from(max_connections).unwrap_or(i64::MAX));
        // A poisoned lock only means another thread panicked mid-update; the map is still
        // a usable record of what is exported.
        let mut exported = self.cert_subjects.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = HashMap::with_capacity(certs.len());
        for (listener, subject, not_after) in certs {
            self.tls_certificate_expiry
                .with_label_values(&[listener.as_str(), subject.as_str()])
                .set(*not_after);
            next.insert(listener.clone(), subject.clone());
        }
        for (listener, subject) in exported.iter() {
            if next.get(listener) != Some(subject) {
                let _ = self
                    .tls_certificate_expiry
                    .remove_label_values(&[listener.as_str(), subject.as_str()]);
            }
        }
        *exported = next;
    }

    /// Resolves (and so exports at zero) a route's series: every handshake outcome, and every
    /// auth failure reason when the route has authenticators. A series that appears only at
    /// its first event breaks `rate()` and alerts written as `x > 0`.
    pub fn route(&self, route: &str, authenticated: bool) -> RouteMetrics {
        for outcome in Outcome::ALL {
            self.handshakes_total
                .with_label_values(&[route, outcome.as_str()]);
        }
        if authenticated {
            for reason in AUTH_FAILURE_REASONS {
                self.auth_failures_total.with_label_values(&[route, reason]);
            }
        }
        // Open routes have no users: their gauge is a detached handle nobody exports.
        let users_online = if authenticated {
            self.users_online.with_label_values(&[route])
        } else {
            IntGauge::new(USERS_ONLINE, "unexported")
                .unwrap_or_else(|_| self.users_online.with_label_values(&[route]))
        };
        RouteMetrics {
            route: route.to_owned(),
            active: self.connections_active.with_label_values(&[route]),
            total: self.connections_total.with_label_values(&[route]),
            upgraded: self
                .handshakes_total
                .with_label_values(&[route, Outcome::Upgraded.as_str()]),
            bytes_c2u: self
                .bytes_total
                .with_label_values(&[route, "client_to_upstream"]),
            bytes_u2c: self
                .bytes_total
                .with_label_values(&[route, "upstream_to_client"]),
            handshake_duration: self.handshake_duration.with_label_values(&[route]),
            connection_duration: self.connection_duration.with_label_values(&[route]),
            users_online,
            closed: crate::registry::CloseReason::ALL
                .iter()
                .map(|r| {
                    self.connections_closed_total
                        .with_label_values(&[route, r.as_str()])
                })
                .collect(),
            messages_c2u: self
                .messages_total
                .with_label_values(&[route, "client_to_upstream"]),
            messages_u2c: self
                .messages_total
                .with_label_values(&[route, "upstream_to_client"]),
            upgrades_by_protocol: Protocol::ALL.map(|p| {
                self.upgrades_by_protocol_total
                    .with_label_values(&[route, p.as_str()])
            }),
            metrics: self.clone(),
        }
    }

    /// `wsgate_events_dropped_total{reason}` (one of [`EVENTS_DROPPED_REASONS`]).
    pub fn events_dropped(&self, reason: &str) -> IntCounter {
        self.events_dropped_total.with_label_values(&[reason])
    }

    /// The JWKS handles of authenticator `name`, exported at zero from now on.
    pub fn jwks(&self, name: &str) -> JwksMetrics {
        JwksMetrics {
            ok: self.jwks.refreshes.with_label_values(&[name, "ok"]),
            error: self.jwks.refreshes.with_label_values(&[name, "error"]),
            keys: self.jwks.keys.with_label_values(&[name]),
        }
    }

    /// `wsgate_events_queued`.
    pub fn events_queued(&self) -> IntGauge {
        self.events_queued.clone()
    }

    /// Counts a tunnel whose framing was lost, by the tracker's violation.
    pub fn untrackable(&self, route: &str, reason: &str) {
        self.frames_untrackable_total
            .with_label_values(&[route, reason])
            .inc();
    }

    /// Counts a handshake outcome for a route label (or [`NO_ROUTE`]).
    pub fn handshake(&self, route: &str, outcome: Outcome) {
        self.handshakes_total
            .with_label_values(&[route, outcome.as_str()])
            .inc();
    }

    /// Counts a client connection served with `protocol`.
    pub fn client_connection_protocol(&self, protocol: Protocol) {
        self.client_connections_by_protocol[protocol as usize].inc();
    }

    /// Counts a client connection as open until the returned guard is dropped.
    pub fn client_connection_opened(&self) -> OpenConnection {
        self.client_connections_open.inc();
        OpenConnection(self.client_connections_open.clone())
    }

    /// Counts a configuration reload.
    pub fn reload(&self, ok: bool) {
        self.config_reloads_total
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// Exports the ACME order series at zero (`ok`, `error`): called when an ACME listener starts.
    pub fn acme_enabled(&self) {
        for result in ["ok", "error"] {
            self.acme_orders_total.with_label_values(&[result]);
        }
    }

    /// Counts one finished ACME order.
    pub fn acme_order(&self, ok: bool) {
        self.acme_orders_total
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    /// Records the certificate an ACME renewal just put in force on `listener`; replaces
    /// the listener's series when the subject changed.
    pub fn certificate_renewed(&self, listener: &str, subject: &str, not_after: i64) {
        let mut exported = self.cert_subjects.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = exported.get(listener)
            && old != subject
        {
            let _ = self
                .tls_certificate_expiry
                .remove_label_values(&[listener, old.as_str()]);
        }
        self.tls_certificate_expiry
            .with_label_values(&[listener, subject])
            .set(not_after);
        exported.insert(listener.to_owned(), subject.to_owned());
    }

    /// Renders the Prometheus text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        // Encoding into a Vec cannot fail on I/O; a failure would mean an invalid metric,
        // which we'd rather expose partially than panic on.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// One open client connection in `wsgate_client_connections_open`; counted out on drop, so
/// every path that ends a connection (refusal, error, tunnel close, drain) is covered.
#[derive(Debug)]
pub struct OpenConnection(IntGauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl RouteMetrics {
    /// Counts a tunnel's end.
    pub fn closed(&self, reason: crate::registry::CloseReason) {
        if let Some(i) = crate::registry::CloseReason::ALL
            .iter()
            .position(|r| *r == reason)
            && let Some(c) = self.closed.get(i)
        {
            c.inc();
        }
    }

    /// Counts a completed upgrade by the client's protocol.
    pub fn upgraded_over(&self, protocol: Protocol) {
        self.upgrades_by_protocol[protocol as usize].inc();
    }

    /// Counts a tunnel whose framing was lost.
    pub fn untrackable(&self, reason: &str) {
        self.metrics.untrackable(&self.route, reason);
    }

    /// Counts a handshake outcome on this route.
    pub fn handshake(&self, outcome: Outcome) {
        self.metrics.handshake(&self.route, outcome);
    }

    /// Counts an authentication failure reason on this route.
    pub fn auth_failure(&self, reason: &str) {
        self.metrics
            .auth_failures_total
            .with_label_values(&[self.route.as_str(), reason])
            .inc();
    }
}

/// The `reason` label values of `wsgate_auth_failures_total` (the contract's list).
/// `denied`: a forward-auth service answered 401/403; `auth_unavailable`: it could not judge
/// (the handshake is then counted `upstream_error`, answered 503).
pub const AUTH_FAILURE_REASONS: [&str; 9] = [
    "missing",
    "malformed",
    "bad_credentials",
    "expired",
    "not_yet_valid",
    "bad_signature",
    "bad_claims",
    "denied",
    "auth_unavailable",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_series_exist_at_zero() {
        let m = Metrics::new().unwrap();
        let open = m.route("/open", false);
        drop(open);
        let r = m.route("/ws", true);
        r.handshake(Outcome::Upgraded);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains("wsgate_connections_active{route=\"/ws\"} 0"));
        assert!(text.contains("wsgate_handshakes_total{outcome=\"upgraded\",route=\"/ws\"} 1"));
        assert!(
            text.contains("wsgate_bytes_total{direction=\"client_to_upstream\",route=\"/ws\"} 0")
        );
        for o in Outcome::ALL {
            let line = format!(
                "wsgate_handshakes_total{{outcome=\"{}\",route=\"/open\"}} ",
                o.as_str()
            );
            assert!(text.contains(&line), "{line}");
        }
        for reason in AUTH_FAILURE_REASONS {
            let line = format!("wsgate_auth_failures_total{{reason=\"{reason}\",route=\"/ws\"}} 0");
            assert!(text.contains(&line), "{line}");
        }
        assert!(!text.contains("wsgate_auth_failures_total{reason=\"missing\",route=\"/open\"}"));
    }

    #[test]
    fn build_info_and_config_applied() {
        let m = Metrics::new().unwrap();
        let text = String::from_utf8(m.render()).unwrap();
        let info = format!(
            "wsgate_build_info{{commit=\"{}\",version=\"{}\"}} 1",
            crate::COMMIT,
            crate::VERSION
        );
        assert!(text.contains(&info), "{text}");

        let cert = |l: &str, s: &str, t: i64| (l.to_owned(), s.to_owned(), t);
        m.config_applied(
            7,
            &[
                cert("0.0.0.0:443", "a.example", 100),
                cert("[::]:8443", "b", 200),
            ],
        );
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains("wsgate_connections_max 7"));
        assert!(text.contains("wsgate_client_connections_open 0"));
        let (a, b) = (m.client_connection_opened(), m.client_connection_opened());
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains("wsgate_client_connections_open 2"));
        drop((a, b));
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains("wsgate_client_connections_open 0"));
        assert!(text.contains(
            "wsgate_tls_certificate_expiry_timestamp_seconds{listener=\"0.0.0.0:443\",subject=\"a.example\"} 100"
        ));
        // Renewed with another subject on one listener, dropped on the other.
        m.config_applied(9, &[cert("0.0.0.0:443", "c.example", 300)]);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains("wsgate_connections_max 9"));
        assert!(text.contains(
            "wsgate_tls_certificate_expiry_timestamp_seconds{listener=\"0.0.0.0:443\",subject=\"c.example\"} 300"
        ));
        assert!(!text.contains("subject=\"a.example\""), "{text}");
        assert!(!text.contains("[::]:8443"), "{text}");
    }
}
