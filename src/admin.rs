//! The admin listener: `GET /metrics`, `/healthz`, `/readyz`, `GET /events` (Server-Sent
//! Events) and `POST /reload`, on its own port, with at most `admin.max_connections`
//! connections at once.
//!
//! Mutating calls pass [`guard_mutation`]: without `admin.token` they are taken from loopback
//! peers only, and never from a browser page (an `Origin` header, or a `Host` that is not an IP
//! literal or `localhost`, which is what DNS rebinding looks like); with `admin.token` they need
//! `Authorization: Bearer <token>` and may come from anywhere the listener is reachable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HOST, HeaderValue, ORIGIN, WWW_AUTHENTICATE,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::proxy::Shared;
use crate::proxy::response::{ProxyBody, full};
use crate::runtime::Runtime;

/// What `POST /reload` needs: the reloader and the config file to re-read.
#[derive(Clone)]
pub struct ReloadTarget {
    /// Swaps the runtime state.
    pub reloader: crate::Reloader,
    /// The config file given at start-up.
    pub path: PathBuf,
}

/// Serves admin requests until `stop` fires (after the drain, so `/readyz` can say 503).
pub async fn serve(
    listener: TcpListener,
    state: Arc<ArcSwap<Runtime>>,
    shared: Arc<Shared>,
    reload: Option<ReloadTarget>,
    stop: CancellationToken,
) {
    let max = state
        .load()
        .config
        .admin
        .as_ref()
        .map_or(crate::config::DEFAULT_ADMIN_MAX_CONNECTIONS, |a| {
            a.max_connections
        });
    // Without a cap, anyone who can reach the port can hold sockets and tasks open at will.
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(client = %peer.ip(), max, "admin connection refused: admin.max_connections reached");
            drop(stream);
            continue;
        };
        let shared = shared.clone();
        let state = state.clone();
        let stop = stop.clone();
        let reload = reload.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let streams_stop = stop.clone();
            let service = service_fn(move |req| {
                let shared = shared.clone();
                let reload = reload.clone();
                let runtime = state.load_full();
                let stop = streams_stop.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(
                        respond(req, &shared, &runtime, peer, reload, stop).await,
                    )
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    // A `GET /events` stream ends on `stop` once it has sent what it holds;
                    // let that answer finish rather than cutting it.
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), conn).await;
                }
            }
        });
    }
}

async fn respond(
    req: Request<Incoming>,
    shared: &Shared,
    runtime: &Runtime,
    peer: SocketAddr,
    reload: Option<ReloadTarget>,
    stop: CancellationToken,
) -> Response<ProxyBody> {
    if crate::admin_api::is_api_path(req.uri().path()) {
        return crate::admin_api::respond(req, shared, runtime, peer).await;
    }
    if req.uri().path() == "/reload" {
        if req.method() != Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use POST /reload\n");
        }
        let token = runtime
            .config
            .admin
            .as_ref()
            .and_then(|a| a.token.as_deref());
        if let Err(refusal) = guard_mutation(req.headers(), peer, token) {
            tracing::warn!(client = %peer.ip(), path = "/reload", reason = refusal.reason(), "admin call refused");
            return refusal.into_response();
        }
        return reload_endpoint(reload).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let mut resp = Response::new(full(shared.metrics.render()));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        "/events" => events_endpoint(&req, shared, runtime, peer, stop),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if shared.draining.is_cancelled() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `GET /events[?route=PATH]`: the connection events as Server-Sent Events.
fn events_endpoint(
    req: &Request<Incoming>,
    shared: &Shared,
    runtime: &Runtime,
    peer: SocketAddr,
    stop: CancellationToken,
) -> Response<ProxyBody> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET /events\n");
    }
    if let Err(refusal) = guard_read(req.headers(), peer, runtime.config.admin.as_ref()) {
        tracing::warn!(client = %peer.ip(), path = "/events", reason = refusal.reason(), "admin call refused");
        return refusal.into_response();
    }
    let route = match route_filter(req.uri().query()) {
        Ok(r) => r,
        Err(why) => return text(StatusCode::BAD_REQUEST, why),
    };
    let Some(body) = shared.events.subscribe(route, stop) else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many /events subscribers\n",
        );
    };
    let mut resp = Response::new(body);
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx buffers proxied answers unless told not to; a buffered stream is no stream.
    headers.insert(
        http::HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    resp
}

/// The `route` of `GET /events?route=...` (percent-decoded); other parameters are refused
/// so a misspelt filter can't silently mean "everything".
fn route_filter(query: Option<&str>) -> Result<Option<String>, &'static str> {
    let mut route = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "route" {
            return Err("unknown parameter: GET /events takes only ?route=PATH\n");
        }
        let value = percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| "route is not UTF-8\n")?;
        if value.is_empty() || route.is_some() {
            return Err("give one non-empty ?route=PATH\n");
        }
        route = Some(value.into_owned());
    }
    Ok(route)
}

/// Why a mutating admin call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MutationRefusal {
    /// `admin.token` is set and the call did not present it.
    BadToken,
    /// No token configured and the peer is not on loopback.
    NotLoopback,
    /// The call carries `Origin`: it comes from a browser page.
    BrowserOrigin,
    /// `Host` is a name other than `localhost`: a page on a rebound DNS name.
    ForeignHost,
}

impl MutationRefusal {
    /// Short label for logs.
    pub fn reason(self) -> &'static str {
        match self {
            MutationRefusal::BadToken => "bad_token",
            MutationRefusal::NotLoopback => "not_loopback",
            MutationRefusal::BrowserOrigin => "origin",
            MutationRefusal::ForeignHost => "host",
        }
    }

    /// The refusal on the wire (401 with a Bearer challenge, or 403).
    pub fn into_response(self) -> Response<ProxyBody> {
        match self {
            MutationRefusal::BadToken => {
                let mut resp = text(
                    StatusCode::UNAUTHORIZED,
                    "admin.token required: Authorization: Bearer <token>\n",
                );
                resp.headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                resp
            }
            MutationRefusal::NotLoopback => text(
                StatusCode::FORBIDDEN,
                "accepted from loopback only (or set admin.token)\n",
            ),
            MutationRefusal::BrowserOrigin => text(
                StatusCode::FORBIDDEN,
                "refused: requests from browser pages (Origin header) need admin.token\n",
            ),
            MutationRefusal::ForeignHost => text(
                StatusCode::FORBIDDEN,
                "refused: Host must be an IP address or localhost (or present admin.token)\n",
            ),
        }
    }
}

/// The rule for every mutating admin call (`POST /reload` and the admin API to come).
///
/// A browser page can make a loopback POST (CSRF), and through DNS rebinding even read the
/// answer; it always sends `Origin` on a POST/DELETE and the page's own host name as `Host`.
/// Scripts and curl send neither, so refusing both keeps operators working and pages out.
pub fn guard_mutation(
    headers: &HeaderMap,
    peer: SocketAddr,
    token: Option<&str>,
) -> Result<(), MutationRefusal> {
    if let Some(token) = token {
        return if presents_token(headers, token) {
            Ok(())
        } else {
            Err(MutationRefusal::BadToken)
        };
    }
    if !peer.ip().is_loopback() && !peer.ip().to_canonical().is_loopback() {
        return Err(MutationRefusal::NotLoopback);
    }
    if headers.contains_key(ORIGIN) {
        return Err(MutationRefusal::BrowserOrigin);
    }
    // Every Host header must pass: a duplicate must not smuggle a name past the check.
    if !headers.get_all(HOST).iter().all(is_local_host) {
        return Err(MutationRefusal::ForeignHost);
    }
    Ok(())
}

fn presents_token(headers: &HeaderMap, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let Some((scheme, presented)) = value.to_str().ok().and_then(|v| v.split_once(' ')) else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && bool::from(presented.trim().as_bytes().ct_eq(token.as_bytes()))
}

/// The rule for admin reads (`GET /connections`, `/users`, `/events`): open to anyone who
/// reaches the listener with `admin.public_reads: true`, else the rule of [`guard_mutation`]
/// (they list users and addresses, and a rebound page must not read them either).
pub fn guard_read(
    headers: &HeaderMap,
    peer: SocketAddr,
    admin: Option<&crate::config::AdminConfig>,
) -> Result<(), MutationRefusal> {
    match admin {
        Some(a) if a.public_reads => Ok(()),
        _ => guard_mutation(headers, peer, admin.and_then(|a| a.token.as_deref())),
    }
}

/// An IP literal (with or without port, IPv6 in brackets) or `localhost`.
fn is_local_host(value: &HeaderValue) -> bool {
    let Ok(host) = value.to_str() else {
        return false;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, port)) if port.is_empty() || port.strip_prefix(':').is_some_and(is_port) => {
                return v6.parse::<std::net::Ipv6Addr>().is_ok();
            }
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return false,
            None => host,
        }
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<u16>().is_ok()
}

async fn reload_endpoint(reload: Option<ReloadTarget>) -> Response<ProxyBody> {
    let Some(target) = reload else {
        return text(
            StatusCode::CONFLICT,
            "this gateway was not started from a config file\n",
        );
    };
    let result =
        tokio::task::spawn_blocking(move || target.reloader.reload_from(&target.path)).await;
    match result {
        Ok(Ok(())) => {
            tracing::info!("configuration reloaded (POST /reload)");
            text(StatusCode::OK, "reloaded\n")
        }
        Ok(Err(e)) => {
            tracing::error!("reload refused, old configuration stays: {e}");
            let mut resp = Response::new(full(format!(
                "reload refused, old configuration stays:\n{e}\n"
            )));
            *resp.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            resp
        }
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "reload failed\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }
    const LOCAL: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 40000);
    const REMOTE: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)),
        40000,
    );

    #[test]
    fn local_hosts() {
        for ok in [
            "127.0.0.1",
            "127.0.0.1:9190",
            "10.0.0.5:80",
            "[::1]",
            "[::1]:9190",
            "localhost",
            "LocalHost:9190",
        ] {
            assert!(is_local_host(&HeaderValue::from_static(ok)), "{ok}");
        }
        for bad in [
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "localhost:",
            "localhost:+80",
            "localhost:99999",
            "[::1]x",
            "[::1]:",
            "[evil]:80",
            "",
            "127.0.0.1:80:80",
        ] {
            assert!(!is_local_host(&HeaderValue::from_static(bad)), "{bad}");
        }
    }

    #[test]
    fn mutation_rule() {
        let host = [("host", "127.0.0.1:9190")];
        assert_eq!(guard_mutation(&headers(&host), LOCAL, None), Ok(()));
        assert_eq!(guard_mutation(&HeaderMap::new(), LOCAL, None), Ok(()));
        assert_eq!(
            guard_mutation(&headers(&host), REMOTE, None),
            Err(MutationRefusal::NotLoopback)
        );
        assert_eq!(
            guard_mutation(
                &headers(&[("host", "127.0.0.1"), ("origin", "http://127.0.0.1")]),
                LOCAL,
                None
            ),
            Err(MutationRefusal::BrowserOrigin)
        );
        assert_eq!(
            guard_mutation(
                &headers(&[("host", "127.0.0.1"), ("host", "evil.example")]),
                LOCAL,
                None
            ),
            Err(MutationRefusal::ForeignHost),
            "a second Host must not hide"
        );
        let token = Some("0123456789abcdef");
        let bearer = [("authorization", "Bearer 0123456789abcdef")];
        assert_eq!(guard_mutation(&headers(&bearer), REMOTE, token), Ok(()));
        assert_eq!(
            guard_mutation(&headers(&host), LOCAL, token),
            Err(MutationRefusal::BadToken),
            "loopback alone is not enough once a token is set"
        );
        assert_eq!(
            guard_mutation(
                &headers(&[
                    ("authorization", "Bearer 0123456789abcdef"),
                    ("authorization", "Bearer x")
                ]),
                LOCAL,
                token
            ),
            Err(MutationRefusal::BadToken)
        );
        assert_eq!(
            guard_mutation(
                &headers(&[("authorization", "Bearer 0123456789abcde")]),
                LOCAL,
                token
            ),
            Err(MutationRefusal::BadToken)
        );
    }
}
