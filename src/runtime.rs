//! The runtime state built from a validated `Config`: loaded certificates, authenticators,
//! the route table with its metric handles.
//!
//! Built whole (files read, keys parsed) before it is used, so `wsgate check`, start-up
//! and reloads share one code path, and a reload either swaps in a complete new state or
//! leaves the old one in force. Readers get it through `ArcSwap`: no lock per request.

use std::sync::Arc;

use crate::auth::{Authenticator, HashLimiter, RouteAuth};
use crate::balance::Pool;
use crate::config::{Config, ConfigError, ConfigErrors, OriginPattern};
use crate::metrics::{Metrics, RouteMetrics};
use crate::route::Router;

/// One route, ready to serve.
pub struct Route {
    /// The configured path prefix (also the `route` metric label).
    pub path: String,
    /// The upstream servers and how to pick one.
    pub pool: Pool,
    /// Client TLS config for this route's `wss://` servers (route CA or system roots).
    pub upstream_tls: Option<Arc<rustls::ClientConfig>>,
    /// Allowed browser origins (`None` = any).
    pub origins: Option<Vec<OriginPattern>>,
    /// The route's authenticators.
    pub auth: RouteAuth,
    /// Pre-resolved metric handles.
    pub metrics: RouteMetrics,
    /// Where this route's connection events are POSTed (`events.webhook`).
    pub events: Option<crate::events::Webhook>,
    /// `max_connections_per_user` and `on_user_limit` (`None` = unlimited).
    pub user_limit: Option<crate::users::UserLimit>,
    /// What the splice needs (frame tracking, limits, close codes).
    pub session: crate::splice::SessionOptions,
    /// Keepalive `(ping_interval, ping_timeout)`, when pings are on.
    pub keepalive: Option<(std::time::Duration, std::time::Duration)>,
    /// `max_lifetime`.
    pub max_lifetime: Option<std::time::Duration>,
    /// `expiry_grace`.
    pub expiry_grace: std::time::Duration,
}

/// Everything a connection needs, immutable once built.
pub struct Runtime {
    /// The config this state was built from.
    pub config: Config,
    /// Path → route.
    pub router: Router<Arc<Route>>,
    /// TLS server config per listener (same order as `config.listeners`).
    pub listener_tls: Vec<Option<Arc<rustls::ServerConfig>>>,
    /// Leaf certificate subject and expiry per listener (same order; `None` = plain).
    pub listener_certs: Vec<Option<crate::tls::LeafInfo>>,
    /// Every authenticator by name (routes hold the same `Arc`s).
    pub authenticators: std::collections::BTreeMap<String, Arc<Authenticator>>,
    /// ACME certificate managers of `tls.acme` listeners (kept alive by the states using them).
    pub acme: Vec<Arc<crate::acme::Manager>>,
}

impl Runtime {
    /// Starts the authenticators' background work (JWKS refreshes) under `metrics`, after
    /// taking over what `previous` (the state this one replaces) already loaded. Needs a
    /// tokio runtime.
    pub fn start(&self, metrics: &Metrics, previous: Option<&Runtime>) {
        for (name, a) in &self.authenticators {
            if let Some(old) = previous.and_then(|p| p.authenticators.get(name)) {
                a.adopt(old);
            }
            a.start(metrics);
        }
    }

    /// Stops the background work of a state that was replaced.
    pub fn stop(&self) {
        for a in self.authenticators.values() {
            a.stop();
        }
    }

    /// Waits for each JWKS's first fetch (bounded by its `jwks_timeout`); returns the
    /// failures as (config path, message, whether it must stop the start-up).
    pub async fn first_fetches(&self) -> Vec<(String, String, bool)> {
        let mut out = Vec::new();
        for a in self.authenticators.values() {
            out.extend(a.first_fetch().await);
        }
        out
    }
}

fn error(path: String, message: impl Into<String>) -> ConfigError {
    ConfigError::new(path, message)
}

/// Loads every file the config names and builds the runtime state; all problems at once.
pub fn build(config: Config, metrics: &Metrics) -> Result<Runtime, ConfigErrors> {
    build_with(config, metrics, None)
}

/// Like [`build`], with an explicit client TLS config for `wss://` upstreams (tests).
pub fn build_with(
    config: Config,
    metrics: &Metrics,
    upstream_tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Runtime, ConfigErrors> {
    let mut errors = Vec::new();

    let mut listener_tls = Vec::with_capacity(config.listeners.len());
    let mut listener_certs = Vec::with_capacity(config.listeners.len());
    let mut acme_managers = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let Some(files) = &l.tls else {
            listener_tls.push(None);
            listener_certs.push(None);
            continue;
        };
        if let Some(acme) = &files.acme {
            match crate::acme::Manager::for_listener(l.bind, acme, l.http2.enabled) {
                Ok((manager, cfg)) => {
                    listener_certs.push(manager.leaf_info());
                    listener_tls.push(Some(cfg));
                    acme_managers.push(manager);
                }
                Err(e) => {
                    errors.push(e.under(&format!("listeners[{i}].tls.acme")));
                    listener_certs.push(None);
                    listener_tls.push(None);
                }
            }
            continue;
        }
        let key = crate::tls::load_certified_key(&files.cert, &files.key);
        // rustls already accepted the leaf; an x509 parse failure here only costs the
        // expiry metric, so it must not refuse a certificate that serves fine.
        listener_certs.push(key.as_ref().ok().and_then(|k| {
            crate::tls::leaf_info(k)
                .inspect_err(|e| tracing::warn!(listener = %l.bind, error = %e, "no certificate expiry metric"))
                .ok()
        }));
        match key {
            Ok(key) => match crate::tls::server_config(key, l.http2.enabled) {
                Ok(cfg) => listener_tls.push(Some(cfg)),
                Err(e) => {
                    errors.push(error(format!("listeners[{i}].tls"), e.to_string()));
                    listener_tls.push(None);
                }
            },
            Err(e) => {
                errors.push(e.under(&format!("listeners[{i}].tls")));
                listener_tls.push(None);
            }
        }
    }

    let limiter = Arc::new(
        HashLimiter::new(config.limits.max_concurrent_hashes)
            .per_client(config.limits.max_hashes_per_ip),
    );
    let mut authenticators = std::collections::BTreeMap::new();
    for (name, cfg) in &config.auth {
        match Authenticator::build(name, cfg, limiter.clone()) {
            Ok(a) => {
                authenticators.insert(name.clone(), Arc::new(a));
            }
            Err(problems) => {
                let at = format!("auth.{name}");
                errors.extend(problems.into_iter().map(|e| e.under(&at)));
            }
        }
    }

    let needs_system_roots = config
        .routes
        .iter()
        .any(|r| r.ca.is_none() && r.upstreams.iter().any(|u| u.tls));
    let system_tls = match upstream_tls {
        Some(c) => Some(c),
        None if needs_system_roots => match crate::tls::upstream_client_config() {
            Ok(c) => Some(c),
            Err(e) => {
                errors.push(error("routes".into(), format!("wss:// upstreams: {e}")));
                None
            }
        },
        None => None,
    };

    let mut routes = Vec::with_capacity(config.routes.len());
    for (i, r) in config.routes.iter().enumerate() {
        // Names were checked by config validation; a missing one here means its
        // authenticator failed to build, which is already reported above.
        let auths: Vec<Arc<Authenticator>> = r
            .auth
            .iter()
            .filter_map(|n| authenticators.get(n).cloned())
            .collect();
        let route_tls = match &r.ca {
            Some(ca) => match crate::tls::client_config_with_ca_file(ca) {
                Ok(c) => Some(c),
                Err(e) => {
                    errors.push(error(format!("routes[{i}].ca"), e));
                    None
                }
            },
            None => system_tls.clone(),
        };
        let events = r.events.as_ref().and_then(|e| {
            crate::events::Webhook::build(e, metrics)
                .map_err(|(key, e)| errors.push(error(format!("routes[{i}].events.{key}"), e)))
                .ok()
        });
        let route = Route {
            events,
            path: r.path.clone(),
            pool: Pool::new(&r.upstreams, r.balance, config.timeouts.upstream_retry),
            upstream_tls: route_tls,
            origins: r.origins.clone(),
            metrics: metrics.route(&r.path, !auths.is_empty()),
            auth: RouteAuth::new(auths),
            user_limit: r
                .max_connections_per_user
                .map(|max| crate::users::UserLimit {
                    max,
                    on_limit: r.on_user_limit,
                }),
            session: crate::splice::SessionOptions {
                track: r.track_frames,
                max_message: r.max_message_bytes.unwrap_or(crate::frames::NO_LIMIT),
                close_wait: config.shutdown.close_wait,
                codes: config.close_codes.clone(),
                splice: r.splice,
            },
            keepalive: r.ping_interval.map(|i| (i, r.ping_timeout)),
            max_lifetime: r.max_lifetime,
            expiry_grace: r.expiry_grace,
        };
        routes.push((r.path.clone(), Arc::new(route)));
    }

    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(Runtime {
        authenticators,
        acme: acme_managers,
        router: Router::new(routes),
        listener_tls,
        listener_certs,
        config,
    })
}
