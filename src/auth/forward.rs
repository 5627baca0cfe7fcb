//! Forward auth (`type: forward`): the gateway asks an HTTP auth service about each request,
//! as nginx's `auth_request`, Traefik's `forwardAuth` and Caddy's `forward_auth` do.
//!
//! The auth request carries the client's `Cookie` and `Authorization`, the original method
//! and URI (`X-Forwarded-Method`, `X-Forwarded-Uri`) and the forwarding headers the upstream
//! would get, and never a body. A 2xx admits (the user from `user_header`); 401 and 403 go
//! back to the client with their `WWW-Authenticate` and `Location`; anything else, a timeout
//! or a connection failure is a 503 (`auth_unavailable`): the service could not judge.
//!
//! Connections to the service are pooled (hyper-util's client), at most `max_concurrent`
//! requests are in flight (more get 503 at once rather than queueing behind a slow service),
//! and 2xx answers may be remembered for `cache_ttl` under an HMAC of everything the auth
//! request carried.

use std::future::Future;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rand::RngCore;
use sha2::Sha256;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{AuthFailure, AuthReply, AuthRequest, Identity, Rejection};
use crate::config::{ConfigError, ForwardConfig, UpstreamConfig};
use crate::upstream::{UpstreamError, UpstreamStream};

/// `X-Forwarded-Method`: the client's request method.
pub const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
/// `X-Forwarded-Uri`: the client's (canonical) request target, query included.
pub const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Answer body read at most (then dropped): reading it lets the connection be reused.
const MAX_ANSWER_BODY: usize = 64 * 1024;
/// Remembered answers at most; the least recently used goes first.
const MAX_CACHED: usize = 10_000;
/// Idle connections to the service are closed after this (below common keep-alive timeouts
/// of 60 s+, above Node's 5 s default, where the pool's retry covers the race).
const POOL_IDLE: Duration = Duration::from_secs(30);

/// What an admitting answer gives: who, and the headers to set upstream.
#[derive(Debug, Clone)]
pub(super) struct Answer {
    /// The user from `user_header`.
    pub(super) identity: Identity,
    /// `user_header` and `copy_headers` as the service sent them.
    pub(super) headers: Vec<(HeaderName, HeaderValue)>,
}

/// A ready forward authenticator: its client pool, limit and cache.
pub(super) struct Forward {
    /// `scheme://authority/path?query` of the service.
    uri: Uri,
    /// For logs: the URL without its query (which may hold a secret).
    target: String,
    method: Method,
    user_header: HeaderName,
    /// `user_header` first, then `copy_headers` (deduplicated).
    copied: Vec<HeaderName>,
    timeout: Duration,
    client: Client<Connector, Empty<Bytes>>,
    in_flight: Arc<Semaphore>,
    cache: Option<AnswerCache>,
}

impl std::fmt::Debug for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forward")
            .field("target", &self.target)
            .field("method", &self.method)
            .field("user_header", &self.user_header)
            .field("copied", &self.copied)
            .finish_non_exhaustive()
    }
}

impl Forward {
    /// Loads the CA (or the system roots for https://) and sets up the pool.
    pub(super) fn build(cfg: &ForwardConfig) -> Result<Self, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let tls = match (&cfg.ca, cfg.url.tls) {
            (_, false) => None,
            (Some(ca), true) => crate::tls::client_config_with_ca_file(ca)
                .map_err(|e| errors.push(ConfigError::new("ca", e)))
                .ok(),
            (None, true) => crate::tls::upstream_client_config()
                .map_err(|e| errors.push(ConfigError::new("url", e)))
                .ok(),
        };
        let scheme = if cfg.url.tls { "https" } else { "http" };
        let uri = format!("{scheme}://{}{}", cfg.url.authority, cfg.url.path_and_query)
            .parse::<Uri>()
            .map_err(|e| errors.push(ConfigError::new("url", e.to_string())))
            .ok();
        let method = Method::from_bytes(cfg.method.to_ascii_uppercase().as_bytes())
            .map_err(|e| errors.push(ConfigError::new("method", e.to_string())))
            .ok();
        let header = |field: &'static str, name: &str| {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| ConfigError::new(field, e.to_string()))
        };
        let user_header = header("user_header", &cfg.user_header)
            .map_err(|e| errors.push(e))
            .ok();
        let mut copied: Vec<HeaderName> = user_header.iter().cloned().collect();
        for name in &cfg.copy_headers {
            match header("copy_headers", name) {
                Ok(h) if !copied.contains(&h) => copied.push(h),
                Ok(_) => {}
                Err(e) => errors.push(e),
            }
        }
        let (Some(uri), Some(method), Some(user_header)) = (uri, method, user_header) else {
            return Err(errors);
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let connector = Connector {
            server: Arc::new(UpstreamConfig {
                tls: cfg.url.tls,
                host: cfg.url.host.clone(),
                port: cfg.url.port,
                url: cfg.url.url.clone(),
            }),
            tls,
            timeout: cfg.timeout,
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(cfg.max_concurrent)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        let path = cfg.url.path_and_query.split('?').next().unwrap_or("/");
        Ok(Forward {
            uri,
            target: format!("{scheme}://{}{path}", cfg.url.authority),
            method,
            user_header,
            copied,
            timeout: cfg.timeout,
            client,
            in_flight: Arc::new(Semaphore::new(cfg.max_concurrent)),
            cache: AnswerCache::new(cfg.cache_ttl),
        })
    }

    /// Header names whose values come from the service's answer.
    pub(super) fn owned_headers(&self) -> &[HeaderName] {
        &self.copied
    }

    /// Asks the service (or the cache) about `req`.
    pub(super) async fn check(&self, req: &AuthRequest<'_>) -> Result<Answer, Rejection> {
        let headers = self.auth_headers(req)?;
        let key = self.cache.as_ref().map(|c| c.key(&self.method, &headers));
        if let (Some(cache), Some(key)) = (&self.cache, &key)
            && let Some(answer) = cache.get(key)
        {
            return Ok(answer);
        }
        // Refused at once when full: queueing behind a slow service would hold the client's
        // handshake (and its connection slot) for nothing.
        let Ok(_permit) = self.in_flight.try_acquire() else {
            tracing::warn!(auth = %self.target, "forward auth: too many auth requests in flight");
            return Err(AuthFailure::Busy.into());
        };
        let mut sub = Request::new(Empty::<Bytes>::new());
        *sub.method_mut() = self.method.clone();
        *sub.uri_mut() = self.uri.clone();
        *sub.headers_mut() = headers;
        let exchange = async {
            let resp = self.client.request(sub).await?;
            let (parts, body) = resp.into_parts();
            // Read (bounded) so the connection goes back to the pool; the content is unused.
            let _ = Limited::new(body, MAX_ANSWER_BODY).collect().await;
            Ok::<_, hyper_util::client::legacy::Error>(parts)
        };
        let parts = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(parts)) => parts,
            Ok(Err(e)) => {
                tracing::warn!(auth = %self.target, error = %error_chain(&e), "forward auth: auth service failed");
                return Err(AuthFailure::Unavailable.into());
            }
            Err(_) => {
                tracing::warn!(auth = %self.target, timeout = ?self.timeout, "forward auth: no answer in time");
                return Err(AuthFailure::Unavailable.into());
            }
        };
        let answer = self.judge(parts.status, &parts.headers)?;
        if let (Some(cache), Some(key)) = (&self.cache, key) {
            cache.insert(key, answer.clone());
        }
        Ok(answer)
    }

    /// The verdict of one answer from the service.
    fn judge(&self, status: StatusCode, headers: &HeaderMap) -> Result<Answer, Rejection> {
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let passed = [header::WWW_AUTHENTICATE, header::LOCATION];
            let headers = passed
                .iter()
                .flat_map(|n| headers.get_all(n).iter().map(|v| (n.clone(), v.clone())))
                .collect();
            return Err(Rejection {
                failure: AuthFailure::Denied,
                reply: Some(AuthReply { status, headers }),
            });
        }
        if !status.is_success() {
            tracing::warn!(auth = %self.target, status = status.as_u16(), "forward auth: auth service answered neither 2xx nor 401/403");
            return Err(AuthFailure::Unavailable.into());
        }
        let mut users = headers.get_all(&self.user_header).iter();
        let user = match (users.next().map(HeaderValue::to_str), users.next()) {
            (Some(Ok(u)), None) if !u.trim().is_empty() => u.trim().to_owned(),
            _ => {
                // Admitting with no identity would leave X-Auth-User and per-user limits
                // meaningless: the service and this config disagree, which is an outage.
                tracing::warn!(
                    auth = %self.target,
                    user_header = %self.user_header,
                    "forward auth: a 2xx answer without exactly one usable user header"
                );
                return Err(AuthFailure::Unavailable.into());
            }
        };
        let copied = self
            .copied
            .iter()
            .flat_map(|n| headers.get_all(n).iter().map(|v| (n.clone(), v.clone())))
            .collect();
        Ok(Answer {
            identity: Identity {
                user,
                expires_at: None,
            },
            headers: copied,
        })
    }

    /// The auth request's headers: the client's credentials, the original request, and the
    /// forwarding headers computed as for the upstream.
    fn auth_headers(&self, req: &AuthRequest<'_>) -> Result<HeaderMap, Rejection> {
        let bad = |_| Rejection::from(AuthFailure::Malformed);
        let mut h = HeaderMap::with_capacity(10);
        for name in [header::COOKIE, header::AUTHORIZATION] {
            for v in req.headers.get_all(&name) {
                h.append(name.clone(), v.clone());
            }
        }
        // An RFC 8441 WebSocket arrives as CONNECT; the auth service sees the GET it sees for
        // the same WebSocket over HTTP/1.1, so its rules need no HTTP/2 case. (Any other
        // CONNECT is refused before auth.)
        let method = if *req.method == http::Method::CONNECT {
            "GET"
        } else {
            req.method.as_str()
        };
        h.insert(
            X_FORWARDED_METHOD,
            HeaderValue::from_str(method).map_err(bad)?,
        );
        let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
        h.insert(X_FORWARDED_URI, HeaderValue::from_str(target).map_err(bad)?);
        let xff = crate::forwarded::x_forwarded_for(req.peer, req.headers, req.trusted_proxies);
        h.insert(
            crate::forwarded::X_FORWARDED_FOR,
            HeaderValue::from_str(&xff).map_err(bad)?,
        );
        h.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(if req.tls { "https" } else { "http" }),
        );
        let host = req.headers.get(header::HOST).cloned().or_else(|| {
            req.uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        if let Some(host) = host {
            h.insert(X_FORWARDED_HOST, host);
        }
        h.insert(X_REAL_IP, ip_value(req.client_ip));
        Ok(h)
    }
}

fn ip_value(ip: IpAddr) -> HeaderValue {
    // An address always formats as a valid header value; the fallback is unreachable.
    HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// The error with its causes ("client error (Connect): connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// Remembered 2xx answers, keyed by an HMAC (random key per authenticator) of the auth
/// request, so the cache holds no cookie or token and a key cannot be computed outside.
struct AnswerCache {
    mac: Hmac<Sha256>,
    ttl: Duration,
    entries: Mutex<lru::LruCache<[u8; 32], (Instant, Answer)>>,
}

impl AnswerCache {
    /// `None` when `ttl` is zero (no caching).
    fn new(ttl: Duration) -> Option<Self> {
        if ttl.is_zero() {
            return None;
        }
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        Some(AnswerCache {
            // HMAC takes keys of any length: this never fails.
            mac: Hmac::<Sha256>::new_from_slice(&secret).ok()?,
            ttl,
            entries: Mutex::new(lru::LruCache::new(NonZeroUsize::new(MAX_CACHED)?)),
        })
    }

    /// The key covers everything the auth request carries (method, the client's cookies and
    /// credentials, the original method and URI, the forwarding headers), so a hit stands
    /// for an identical question: an answer that depends on the URI or the client's address
    /// is never reused for another. Each part is length-prefixed so none can run into the
    /// next.
    fn key(&self, method: &Method, headers: &HeaderMap) -> [u8; 32] {
        let mut mac = self.mac.clone();
        let mut part = |b: &[u8]| {
            mac.update(&(b.len() as u64).to_be_bytes());
            mac.update(b);
        };
        part(method.as_str().as_bytes());
        for (name, value) in headers {
            part(name.as_str().as_bytes());
            part(value.as_bytes());
        }
        mac.finalize().into_bytes().into()
    }

    fn get(&self, key: &[u8; 32]) -> Option<Answer> {
        let mut entries = self.lock();
        match entries.get(key) {
            Some((expiry, answer)) if *expiry > Instant::now() => Some(answer.clone()),
            Some(_) => {
                entries.pop(key);
                None
            }
            None => None,
        }
    }

    fn insert(&self, key: [u8; 32], answer: Answer) {
        let expiry = Instant::now() + self.ttl;
        self.lock().put(key, (expiry, answer));
    }

    /// The map, recovering from poisoning: it is a plain cache, always consistent.
    fn lock(&self) -> std::sync::MutexGuard<'_, lru::LruCache<[u8; 32], (Instant, Answer)>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Connects the pool to the one configured service (TCP, TLS for https://), whatever the
/// request URI says, with the `timeout` as the connect bound.
#[derive(Clone)]
struct Connector {
    server: Arc<UpstreamConfig>,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<UpstreamStream>;
    type Error = UpstreamError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            crate::upstream::connect(&me.server, me.tls.as_ref(), me.timeout)
                .await
                .map(TokioIo::new)
        })
    }
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(ttl: Duration) -> Forward {
        let cfg = ForwardConfig {
            url: crate::config::WebhookUrl {
                tls: false,
                host: "127.0.0.1".into(),
                port: 9,
                authority: "127.0.0.1:9".into(),
                path_and_query: "/auth?k=s".into(),
                url: "http://127.0.0.1:9/auth?k=s".into(),
            },
            user_header: "X-User".into(),
            copy_headers: vec!["X-Roles".into(), "x-user".into()],
            cache_ttl: ttl,
            ..ForwardConfig::default()
        };
        Forward::build(&cfg).expect("build")
    }

    #[test]
    fn an_h2_websocket_is_forwarded_as_get() {
        let f = forward(Duration::ZERO);
        let headers = HeaderMap::new();
        let uri = Uri::from_static("/chat?room=1");
        for (method, want) in [
            (Method::CONNECT, "GET"),
            (Method::GET, "GET"),
            (Method::POST, "POST"),
        ] {
            let req = AuthRequest {
                method: &method,
                uri: &uri,
                headers: &headers,
                client: None,
                client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
                tls: true,
                peer: std::net::IpAddr::from([127, 0, 0, 1]),
                trusted_proxies: None,
            };
            let h = f.auth_headers(&req).expect("headers");
            assert_eq!(h[X_FORWARDED_METHOD], want);
            assert_eq!(h[X_FORWARDED_URI], "/chat?room=1");
        }
    }

    #[test]
    fn copied_headers_start_with_the_user_header_once() {
        let f = forward(Duration::ZERO);
        let names: Vec<&str> = f.owned_headers().iter().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-user", "x-roles"]);
        assert_eq!(f.target, "http://127.0.0.1:9/auth");
        assert!(!format!("{f:?}").contains("k=s"));
    }

    #[test]
    fn judging_answers() {
        let f = forward(Duration::ZERO);
        let mut h = HeaderMap::new();
        h.insert("x-user", HeaderValue::from_static(" alice "));
        h.append("x-roles", HeaderValue::from_static("a"));
        h.append("x-roles", HeaderValue::from_static("b"));
        h.insert("x-other", HeaderValue::from_static("no"));
        let a = f.judge(StatusCode::NO_CONTENT, &h).expect("admits");
        assert_eq!(a.identity.user, "alice");
        assert_eq!(a.headers.len(), 3);
        // Two user headers, or none: the service is not answering as configured.
        h.append("x-user", HeaderValue::from_static("bob"));
        let e = f.judge(StatusCode::OK, &h).expect_err("two users");
        assert_eq!(e.failure, AuthFailure::Unavailable);
        let e = f
            .judge(StatusCode::OK, &HeaderMap::new())
            .expect_err("none");
        assert_eq!(e.failure, AuthFailure::Unavailable);
        let e = f
            .judge(StatusCode::FOUND, &HeaderMap::new())
            .expect_err("3xx");
        assert_eq!(e.failure, AuthFailure::Unavailable);
        let mut h = HeaderMap::new();
        h.insert("location", HeaderValue::from_static("/login"));
        h.insert("set-cookie", HeaderValue::from_static("x=1"));
        let e = f.judge(StatusCode::FORBIDDEN, &h).expect_err("403");
        assert_eq!(e.failure, AuthFailure::Denied);
        let reply = e.reply.expect("reply");
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
        assert_eq!(
            reply.headers,
            vec![(header::LOCATION, HeaderValue::from_static("/login"))]
        );
    }

    #[test]
    fn cache_keys_cover_every_header_and_expire() {
        let c = AnswerCache::new(Duration::from_millis(30)).expect("cache");
        let mut a = HeaderMap::new();
        a.insert(header::COOKIE, HeaderValue::from_static("s=1"));
        a.insert(X_FORWARDED_URI, HeaderValue::from_static("/ws"));
        let mut b = a.clone();
        b.insert(X_FORWARDED_URI, HeaderValue::from_static("/ws2"));
        let ka = c.key(&Method::GET, &a);
        assert_ne!(ka, c.key(&Method::GET, &b));
        assert_ne!(ka, c.key(&Method::HEAD, &a));
        let answer = Answer {
            identity: Identity {
                user: "u".into(),
                expires_at: None,
            },
            headers: Vec::new(),
        };
        c.insert(ka, answer);
        assert_eq!(c.get(&ka).map(|a| a.identity.user), Some("u".into()));
        std::thread::sleep(Duration::from_millis(40));
        assert!(c.get(&ka).is_none());
    }
}
