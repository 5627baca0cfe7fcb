//! One request: route → auth → upstream → (on 101) hand both sides to the splice.
//!
//! Holds no sockets of its own: it gets a request and returns a response; the upstream
//! leg and the tunnel are started from here but live in `upstream` and `splice`.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::balance::ActiveGuard;
use crate::limits::{ClientKey, IpSlot};

use crate::auth::{Admission, AuthFailure, Rejection};
use crate::metrics::{NO_ROUTE, Outcome, Protocol};
use crate::proxy::Shared;
use crate::proxy::extended_connect;
use crate::proxy::response::{ProxyBody, Refusal, full};
use crate::runtime::{Route, Runtime};
use crate::splice::{self, Ended};
use crate::upstream::handshake::{Rest, UpgradeResponse};

/// `X-Auth-User`: the authenticated identity, set by wsgate only.
pub const X_AUTH_USER: HeaderName = HeaderName::from_static("x-auth-user");
use crate::forwarded::X_FORWARDED_FOR;
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// What the handler knows about the client connection.
#[derive(Debug, Clone)]
pub struct ClientConn {
    /// The client's address.
    pub peer: SocketAddr,
    /// Whether the client connected over TLS (`X-Forwarded-Proto`).
    pub tls: bool,
}

/// The limit slots one client connection holds; tunnels keep them until they close.
#[derive(Debug)]
pub struct ConnPermits {
    /// One of `limits.max_connections`.
    pub connection: OwnedSemaphorePermit,
    /// This connection in `wsgate_client_connections_open`, for exactly as long as the slot.
    pub open: crate::metrics::OpenConnection,
    /// One of the client's `limits.max_connections_per_ip`, taken at accept; `None` when the
    /// peer is a trusted proxy, whose connection carries many clients: each upgrade then
    /// takes one for the client it names, held by the tunnel.
    pub ip_slot: Option<IpSlot>,
    /// One of `limits.max_pending_handshakes`, given back once the first request is answered.
    pub pending: Mutex<Option<OwnedSemaphorePermit>>,
}

/// Serves requests of one client connection.
///
/// The runtime (routes, authenticators, limits) is loaded afresh for every request, not once
/// per connection: a reload that removes a user or rotates a key must reach keep-alive
/// connections at their next request, or revocation would wait for the client to reconnect.
#[derive(Clone)]
pub struct Handler {
    state: Arc<ArcSwap<Runtime>>,
    client: Arc<ClientConn>,
    shared: Arc<Shared>,
    // Moved into the tunnel on upgrade, so the limits count open tunnels.
    permits: Arc<ConnPermits>,
}

impl Handler {
    /// A handler for one accepted connection.
    pub fn new(
        state: Arc<ArcSwap<Runtime>>,
        client: ClientConn,
        shared: Arc<Shared>,
        permits: ConnPermits,
    ) -> Self {
        Handler {
            state,
            client: Arc::new(client),
            shared,
            permits: Arc::new(permits),
        }
    }

    /// The drain's task tracker (HTTP/2 stream tasks are spawned on it).
    pub fn tracker(&self) -> &tokio_util::task::TaskTracker {
        &self.shared.tracker
    }

    /// Whether no request has arrived on this connection yet.
    pub fn awaiting_first_request(&self) -> bool {
        self.permits
            .pending
            .lock()
            .map(|p| p.is_some())
            .unwrap_or(false)
    }

    /// Handles one request; never fails (errors become responses).
    pub async fn handle(
        self,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, std::convert::Infallible> {
        let started = Instant::now();
        // The pending-handshake slot covers accept → first response; later requests on a
        // keep-alive connection don't hold one.
        let pending = self
            .permits
            .pending
            .lock()
            .map(|mut p| p.take())
            .unwrap_or(None);
        if let Some(answer) = crate::acme::http01_answer(&req, self.client.tls) {
            return Ok(answer);
        }
        let runtime = self.state.load_full();
        let upgrade = is_websocket_upgrade(&req);
        let h2 = req.version() == Version::HTTP_2;
        let client_ip = self.client_ip(&runtime, req.headers());
        let (route_label, result) = self
            .route_and_forward(&runtime, req, upgrade, client_ip, started)
            .await;
        drop(pending);
        let mut resp = match result {
            Ok(resp) => resp,
            Err(refusal) => {
                if upgrade {
                    self.shared
                        .metrics
                        .handshake(&route_label, refusal.outcome());
                }
                tracing::info!(
                    target: "wsgate::access",
                    route = %route_label,
                    client = %client_ip,
                    status = refusal.status().as_u16(),
                    outcome = refusal.outcome().as_str(),
                    upgrade,
                    duration_ms = started.elapsed().as_millis() as u64,
                    "request refused"
                );
                refusal.into_response()
            }
        };
        if h2 {
            // HTTP/2 has no connection-specific headers (RFC 9113 §8.2.2): `Connection: close`
            // of a refusal or an upstream's hop-by-hop headers would be malformed there.
            strip_hop_by_hop(resp.headers_mut());
        }
        Ok(resp)
    }

    async fn route_and_forward(
        &self,
        runtime: &Runtime,
        mut req: Request<Incoming>,
        upgrade: bool,
        client_ip: IpAddr,
        started: Instant,
    ) -> (String, Result<Response<ProxyBody>, Refusal>) {
        if !upgrade && req.method() == Method::CONNECT {
            // Only WebSocket tunnels are authorised; any other CONNECT would open one to
            // whatever the client names.
            return (
                NO_ROUTE.to_owned(),
                Err(Refusal::BadRequest(
                    "CONNECT is accepted only for WebSockets",
                )),
            );
        }
        if let Err(why) = crate::headers::check_host(req.headers(), req.uri()) {
            return (NO_ROUTE.to_owned(), Err(Refusal::BadRequest(why)));
        }
        if req.version() == Version::HTTP_2 {
            // Before auth, so a cookie token or forward auth reads the cookies as the HTTP/1.1
            // upstream will.
            crate::headers::join_cookie_crumbs(req.headers_mut());
        }
        // Routed on the canonical path, and the request now carries it, so the upstream gets
        // exactly the path that was authorised.
        let route = match crate::path::canonicalize(req.uri().path()) {
            Ok(path) => match canonical_uri(req.uri(), &path) {
                Some(uri) => {
                    *req.uri_mut() = uri;
                    runtime
                        .router
                        .find(&path, runtime.config.case_insensitive_paths)
                }
                None => {
                    return (
                        NO_ROUTE.to_owned(),
                        Err(Refusal::BadRequest("unparsable request target")),
                    );
                }
            },
            Err(e) => return (NO_ROUTE.to_owned(), Err(Refusal::BadRequest(e.message()))),
        };
        let route = match route {
            Ok(Some(route)) => route.clone(),
            Ok(None) => return (NO_ROUTE.to_owned(), Err(Refusal::NotFound)),
            Err(_) => {
                return (
                    NO_ROUTE.to_owned(),
                    Err(Refusal::BadRequest(crate::route::CaseAmbiguous::MESSAGE)),
                );
            }
        };
        let label = route.path.clone();
        // Cross-site WebSocket hijacking: browsers attach cookies and cached credentials to
        // cross-origin upgrades, so a foreign Origin is refused before credentials are read.
        if let (Some(allowed), Some(origin)) = (&route.origins, req.headers().get(header::ORIGIN)) {
            let ok = origin
                .to_str()
                .is_ok_and(|o| allowed.iter().any(|p| p.matches(o)));
            if !ok {
                return (label, Err(Refusal::Forbidden));
            }
        }
        let limits = &runtime.config.limits;
        let key = ClientKey::new(client_ip, limits.ipv6_prefix);
        // Every request that can cost a password hash spends a token, not only upgrades:
        // plain requests reach the same authenticators.
        if upgrade || !route.auth.is_open() {
            let rate = (limits.handshake_rate_per_ip, limits.handshake_burst_per_ip);
            if let Err(wait) = self.shared.limits.try_request(key, rate.0, rate.1) {
                return (
                    label,
                    Err(Refusal::TooManyRequests {
                        retry_after: wait.as_secs_f64().ceil() as u64,
                    }),
                );
            }
        }
        // An HTTP/2 WebSocket costs an upstream socket as an HTTP/1.1 one does but shares its
        // client connection's slots: it takes slots of its own, or one connection would carry
        // max_concurrent_streams tunnels past both limits.
        let h2 = req.version() == Version::HTTP_2;
        let stream_permit = if upgrade && h2 {
            match self.shared.connections.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => return (label, Err(Refusal::Busy)),
            }
        } else {
            None
        };
        let tunnel_slot = if upgrade && (self.permits.ip_slot.is_none() || h2) {
            match self
                .shared
                .limits
                .try_connect(key, limits.max_connections_per_ip)
            {
                Some(slot) => Some(slot),
                None => return (label, Err(Refusal::TooManyRequests { retry_after: 1 })),
            }
        } else {
            None
        };
        if upgrade && let Err(refusal) = check_websocket_request(&req) {
            return (label, Err(refusal));
        }
        if let Err(why) = route.auth.check_query(req.uri().query()) {
            return (label, Err(Refusal::BadRequest(why)));
        }
        let admission = if route.auth.is_open() {
            None
        } else {
            let auth_req = crate::auth::AuthRequest {
                method: req.method(),
                uri: req.uri(),
                headers: req.headers(),
                client: Some(key),
                client_ip,
                tls: self.client.tls,
                peer: self.client.peer.ip(),
                trusted_proxies: runtime.config.trusted_proxies.as_deref(),
            };
            match route.auth.judge(&auth_req).await {
                Ok(a) => Some(a),
                Err(rejection) => return (label, Err(auth_refusal(&route, rejection))),
            }
        };
        // Reserved before the upstream is contacted, under the user's lock: of two logins at
        // once only as many as the limit allows get this far.
        let mut user_slot = match (&admission, upgrade) {
            (Some(a), true) => match self.shared.users.reserve(
                &route.path,
                &a.identity.user,
                route.user_limit,
                route.metrics.users_online.clone(),
            ) {
                Ok(slot) => Some(slot),
                Err(crate::users::OverLimit) => return (label, Err(Refusal::UserLimit)),
            },
            _ => None,
        };
        if let (Some(cluster), Some(slot), Some(a)) =
            (&self.shared.cluster, &mut user_slot, &admission)
        {
            match cluster
                .admit(&route.path, &a.identity.user, route.user_limit)
                .await
            {
                Ok(ticket) => slot.set_ticket(ticket),
                Err(crate::users::OverLimit) => return (label, Err(Refusal::UserLimit)),
            }
        }
        let result = if upgrade {
            let client_upgrade = hyper::upgrade::on(&mut req);
            self.forward_upgrade(
                runtime,
                req,
                client_upgrade,
                &route,
                admission,
                client_ip,
                started,
                (tunnel_slot, user_slot, stream_permit),
            )
            .await
        } else {
            self.forward_http(runtime, req, &route, admission.as_ref(), client_ip)
                .await
        };
        (label, result)
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward_upgrade(
        &self,
        runtime: &Runtime,
        req: Request<Incoming>,
        client_upgrade: hyper::upgrade::OnUpgrade,
        route: &Arc<Route>,
        admission: Option<Admission>,
        client_ip: IpAddr,
        started: Instant,
        (tunnel_slot, user_slot, stream_permit): (
            Option<IpSlot>,
            Option<crate::users::UserSlot>,
            Option<OwnedSemaphorePermit>,
        ),
    ) -> Result<Response<ProxyBody>, Refusal> {
        let h2 = extended_connect::is_websocket_connect(&req);
        let (parts, _body) = req.into_parts();
        let mut up_req = self.upstream_request(
            runtime,
            parts,
            &route.auth,
            admission.as_ref(),
            client_ip,
            true,
            (),
        )?;
        if h2 {
            extended_connect::to_upstream(&mut up_req);
        }
        let key = up_req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
        let (resp, server_guard, server) = self
            .exchange_upgrade(runtime, route, client_ip, &up_req)
            .await?;
        drop(up_req);
        let UpgradeResponse {
            status,
            mut headers,
            rest,
        } = resp;
        if h2 && status.is_success() {
            // A 2xx on an HTTP/2 stream means "tunnel open": the upstream did not upgrade.
            tracing::info!(
                route = %route.path,
                client = %client_ip,
                status = status.as_u16(),
                "upstream answered the upgrade without switching protocols"
            );
            return Err(Refusal::NotWebSocket);
        }
        let (up_stream, ahead) = match rest {
            Rest::Switched(stream, ahead) => (stream, ahead),
            Rest::Body(body) => {
                route.metrics.handshake(Outcome::UpstreamRejected);
                tracing::info!(
                    route = %route.path,
                    client = %client_ip,
                    status = status.as_u16(),
                    "upstream refused the upgrade"
                );
                strip_hop_by_hop(&mut headers);
                // The body was de-chunked: its length is what hyper now sends.
                headers.remove(header::CONTENT_LENGTH);
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
                let mut r = Response::new(full(body));
                *r.status_mut() = status;
                *r.headers_mut() = headers;
                return Ok(r);
            }
        };
        // Splicing any other 101 (h2c, a server that didn't do the handshake) would hand
        // the client a protocol nobody authorised.
        if !key.is_some_and(|k| crate::headers::is_websocket_101(&headers, k.as_bytes())) {
            tracing::info!(
                route = %route.path,
                client = %client_ip,
                upstream = %server,
                "upstream's 101 is not a WebSocket handshake for the key sent"
            );
            return Err(Refusal::NotWebSocket);
        }
        // The upstream's 101 goes back as is: Sec-WebSocket-Accept/Protocol/Extensions
        // must match what the upstream will speak. An HTTP/2 stream gets its 200 instead.
        let client_resp = if h2 {
            extended_connect::client_response(headers)
        } else {
            let mut r = Response::new(full(bytes::Bytes::new()));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            *r.headers_mut() = headers;
            r
        };

        route.metrics.upgraded.inc();
        route
            .metrics
            .upgraded_over(if h2 { Protocol::H2 } else { Protocol::Http1 });
        route.metrics.total.inc();
        route
            .metrics
            .handshake_duration
            .observe(started.elapsed().as_secs_f64());

        let deflate = negotiated_deflate(client_resp.headers());
        let route = route.clone();
        let permits = self.permits.clone();
        let registry = self.shared.registry.clone();
        let events = self.shared.events.clone();
        let deadlines = self.shared.deadlines.clone();
        let cluster = self.shared.cluster.clone();
        let expires_at = admission.as_ref().and_then(|a| a.identity.expires_at);
        let user = admission.map(|a| a.identity.user);
        // Boxed: the tunnel's future keeps a pointer, not the slot, so an open route's idle
        // tunnels don't grow by its size.
        let user_slot = user_slot.map(Box::new);
        self.shared.tracker.spawn(async move {
            let _held = (permits, server_guard, tunnel_slot, stream_permit);
            // Boxed so the waiting state doesn't stay inline in the tunnel's future for its
            // whole life (an idle tunnel's memory is mostly this future).
            let c = match Box::pin(client_upgrade).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "client upgrade did not complete");
                    return;
                }
            };
            let opened = Instant::now();
            let mut info = crate::registry::TunnelInfo::new(
                registry.next_id(),
                route.path.clone(),
                user,
                client_ip,
            );
            if let Some((interval, timeout)) = route.keepalive {
                info = info.with_keepalive(interval, timeout);
            }
            let info = Arc::new(info);
            let _listed = registry.insert(info.clone());
            if let Some(slot) = &user_slot {
                slot.attach(&info);
            }
            let _presence =
                cluster.map(|c| c.opened(&info, user_slot.as_ref().and_then(|s| s.ticket())));
            events.connected(&route, &info);
            if let Some((at, reason)) = deadline(opened, expires_at, &route) {
                deadlines.add(at, info.id, reason);
            }
            let (c, u) = (
                splice::Side::client(c),
                splice::Side::from_upstream(up_stream, ahead),
            );
            let report =
                splice::splice(c, u, &route.metrics, info.clone(), &route.session, deflate).await;
            events.disconnected(&route, &info, &report, opened.elapsed());
            tracing::info!(
                target: "wsgate::access",
                route = %route.path,
                client = %client_ip,
                id = info.id,
                user = info.user.as_deref().unwrap_or("-"),
                upstream = %server,
                status = 101,
                duration_ms = opened.elapsed().as_millis() as u64,
                bytes_in = report.client_to_upstream,
                bytes_out = report.upstream_to_client,
                ended = match report.ended {
                    Ended::Closed => "closed",
                    Ended::Error => "error",
                    Ended::Stopped(r) => r.close_reason().as_str(),
                    Ended::TooBig => "too_big",
                },
                reason = report.reason.as_str(),
                closed_by = report.closed_by.as_str(),
                "tunnel closed"
            );
        });
        Ok(client_resp)
    }

    async fn forward_http(
        &self,
        runtime: &Runtime,
        req: Request<Incoming>,
        route: &Arc<Route>,
        admission: Option<&Admission>,
        client_ip: IpAddr,
    ) -> Result<Response<ProxyBody>, Refusal> {
        let (parts, body) = req.into_parts();
        let up_req = self.upstream_request(
            runtime,
            parts,
            &route.auth,
            admission,
            client_ip,
            false,
            body,
        )?;
        let (resp, _guard, _) = self.exchange(runtime, route, client_ip, up_req).await?;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            // We did not ask for an upgrade; relaying one would leave a half-open tunnel.
            return Err(Refusal::BadGateway);
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, body.boxed_unsync()))
    }

    /// Connects to the route's servers in the pool's order (a failed connect marks the
    /// server down and moves on); the first that accepts, its load guard and its address.
    async fn connect_first(
        &self,
        runtime: &Runtime,
        route: &Route,
        client_ip: IpAddr,
    ) -> Result<(crate::upstream::UpstreamStream, ActiveGuard, String), Refusal> {
        let mut last_error = None;
        for server in route.pool.candidates(client_ip) {
            let connected = crate::upstream::connect(
                &server.config,
                route.upstream_tls.as_ref(),
                runtime.config.timeouts.upstream_connect,
            )
            .await;
            match connected {
                Ok(stream) => {
                    route.pool.mark_ok(&server);
                    return Ok((stream, route.pool.track(&server), server.addr.clone()));
                }
                Err(e) => {
                    tracing::warn!(route = %route.path, upstream = %server.addr, error = %e, "upstream connect failed");
                    route.pool.mark_failed(&server);
                    last_error = Some(e);
                }
            }
        }
        Err(last_error
            .as_ref()
            .map(Refusal::from)
            .unwrap_or(Refusal::BadGateway))
    }

    /// Sends the request to the first upstream that accepts a connection.
    async fn exchange<B>(
        &self,
        runtime: &Runtime,
        route: &Route,
        client_ip: IpAddr,
        req: Request<B>,
    ) -> Result<(Response<Incoming>, ActiveGuard, String), Refusal>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (stream, guard, addr) = self.connect_first(runtime, route, client_ip).await?;
        let timeout = runtime.config.timeouts.upstream_response;
        match crate::upstream::send(stream, &addr, req, timeout).await {
            Ok(resp) => Ok((resp, guard, addr)),
            Err(e) => {
                tracing::warn!(route = %route.path, upstream = %addr, error = %e, "upstream failed");
                Err(Refusal::from(&e))
            }
        }
    }

    /// As [`Self::exchange`], for an upgrade: the request head goes out in one write and the
    /// response head is parsed off the socket, which then becomes the tunnel's upstream side.
    async fn exchange_upgrade(
        &self,
        runtime: &Runtime,
        route: &Route,
        client_ip: IpAddr,
        req: &Request<()>,
    ) -> Result<(UpgradeResponse, ActiveGuard, String), Refusal> {
        let (stream, guard, addr) = self.connect_first(runtime, route, client_ip).await?;
        let exchange = crate::upstream::handshake::upgrade(stream, &addr, req);
        let result =
            match tokio::time::timeout(runtime.config.timeouts.upstream_response, exchange).await {
                Ok(r) => r,
                Err(_) => Err(crate::upstream::UpstreamError::ResponseTimeout(
                    addr.clone(),
                )),
            };
        match result {
            Ok(resp) => Ok((resp, guard, addr)),
            Err(e) => {
                tracing::warn!(route = %route.path, upstream = %addr, error = %e, "upstream failed");
                Err(Refusal::from(&e))
            }
        }
    }

    fn client_ip(&self, runtime: &Runtime, headers: &HeaderMap) -> IpAddr {
        let trusted = runtime.config.trusted_proxies.as_deref();
        crate::forwarded::client_ip(self.client.peer.ip(), headers, trusted)
    }

    /// The request as the upstream sees it: credential removed, forwarding headers added.
    #[allow(clippy::too_many_arguments)]
    fn upstream_request<B>(
        &self,
        runtime: &Runtime,
        parts: http::request::Parts,
        route_auth: &crate::auth::RouteAuth,
        admission: Option<&Admission>,
        client_ip: IpAddr,
        upgrade: bool,
        body: B,
    ) -> Result<Request<B>, Refusal> {
        // Taken by value: the client's header map becomes the upstream's, no copy.
        let http::request::Parts {
            method,
            uri,
            mut headers,
            ..
        } = parts;
        let mut query = uri.query().map(str::to_owned);
        crate::headers::drop_underscored(&mut headers, runtime.config.underscores_in_headers);
        strip_hop_by_hop(&mut headers);
        headers.remove(X_AUTH_USER);
        if let Some(a) = admission {
            route_auth.prepare_upstream(a, &mut headers, &mut query);
            let user = HeaderValue::from_str(&a.identity.user)
                .map_err(|_| Refusal::BadRequest("identity not representable in a header"))?;
            headers.insert(X_AUTH_USER, user);
        }
        let trusted = runtime.config.trusted_proxies.as_deref();
        let xff = crate::forwarded::x_forwarded_for(self.client.peer.ip(), &headers, trusted);
        set(&mut headers, X_FORWARDED_FOR, &xff)?;
        crate::forwarded::drop_untrusted_x_forwarded(self.client.peer.ip(), &mut headers, trusted);
        let fwd = crate::forwarded::forwarded(self.client.peer.ip(), &headers, trusted);
        set(&mut headers, header::FORWARDED, &fwd)?;
        set(&mut headers, X_REAL_IP, &client_ip.to_string())?;
        headers.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(if self.client.tls { "https" } else { "http" }),
        );
        let host = headers.get(header::HOST).cloned().or_else(|| {
            uri.authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        if let Some(host) = host {
            if !headers.contains_key(header::HOST) {
                headers.insert(header::HOST, host.clone());
            }
            headers.insert(X_FORWARDED_HOST, host);
        }
        if upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            // Exactly websocket, whatever else the client offered (`h2c` would be spliced).
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            headers.remove(header::CONTENT_LENGTH);
        }
        // Already origin-form with nothing removed from the query (the usual case): as is.
        let unchanged =
            query.as_deref() == uri.query() && uri.scheme().is_none() && uri.authority().is_none();
        let uri: Uri = if unchanged {
            uri
        } else {
            let path_and_query = match query {
                Some(q) => format!("{}?{}", uri.path(), q),
                None => uri.path().to_owned(),
            };
            path_and_query
                .parse()
                .map_err(|_| Refusal::BadRequest("unparsable request target"))?
        };
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = headers;
        Ok(req)
    }
}

/// Whether the upstream's 101 accepted permessage-deflate (the tracker then allows RSV1).
fn negotiated_deflate(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|ext| {
            ext.split(';')
                .next()
                .is_some_and(|name| name.trim().eq_ignore_ascii_case("permessage-deflate"))
        })
}

/// The earlier of the token's expiry (plus the route's grace) and the route's lifetime cap.
fn deadline(
    opened: Instant,
    expires_at: Option<std::time::SystemTime>,
    route: &Route,
) -> Option<(Instant, crate::registry::StopReason)> {
    use crate::registry::StopReason;
    let expiry = expires_at.map(|exp| {
        let left = (exp + route.expiry_grace)
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        (opened + left, StopReason::Expired)
    });
    let lifetime = route
        .max_lifetime
        .map(|d| (opened + d, StopReason::Lifetime));
    match (expiry, lifetime) {
        (Some(e), Some(l)) => Some(if l.0 < e.0 { l } else { e }),
        (e, l) => e.or(l),
    }
}

/// `uri` with its path replaced by the canonical one; scheme and authority (absolute-form,
/// HTTP/2) and the query are kept.
/// The refusal for a failed auth check, counted. A request with no credential at all on a
/// route that accepts Basic gets the challenge browsers wait for before sending `user:pass`:
/// that round-trip is normal traffic, so it is `challenged` and not an auth failure. Busy
/// verifiers are a limit (503/429), not a failure; a forward-auth service's refusal goes
/// back as it answered, and one that could not judge is a 503.
fn auth_refusal(route: &Route, rejection: Rejection) -> Refusal {
    match (rejection.failure, rejection.reply, route.auth.challenge()) {
        (AuthFailure::Busy, ..) => Refusal::Busy,
        (AuthFailure::TooMany, ..) => Refusal::TooManyRequests { retry_after: 1 },
        (AuthFailure::Missing, None, Some(challenge)) => Refusal::Challenged { challenge },
        (failure @ AuthFailure::Unavailable, ..) => {
            route.metrics.auth_failure(failure.reason());
            Refusal::AuthUnavailable
        }
        (failure, Some(reply), _) => {
            route.metrics.auth_failure(failure.reason());
            Refusal::AuthDenied(reply)
        }
        (failure, None, challenge) => {
            route.metrics.auth_failure(failure.reason());
            Refusal::Unauthorized { challenge }
        }
    }
}

fn canonical_uri(uri: &Uri, path: &crate::path::CanonicalPath) -> Option<Uri> {
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(crate::path::with_query(path, uri.query()).parse().ok()?);
    Uri::from_parts(parts).ok()
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) -> Result<(), Refusal> {
    let v = HeaderValue::from_str(value)
        .map_err(|_| Refusal::BadRequest("invalid forwarding header"))?;
    headers.insert(name, v);
    Ok(())
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those named by `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        // Never let a client make us drop the credential-carrying or identity headers
        // silently; those are handled explicitly.
        if name != header::AUTHORIZATION {
            headers.remove(name);
        }
    }
    for name in [
        header::CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
}

fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether the request asks for a WebSocket: an HTTP/1.1 `GET` with the upgrade headers, or
/// an HTTP/2 extended CONNECT with `:protocol = websocket` (RFC 8441).
pub fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    (req.method() == Method::GET
        && has_token(req.headers(), &header::CONNECTION, "upgrade")
        && has_token(req.headers(), &header::UPGRADE, "websocket"))
        || extended_connect::is_websocket_connect(req)
}

/// RFC 6455 §4.2.1 checks the gateway can make without the upstream.
fn check_websocket_request<B>(req: &Request<B>) -> Result<(), Refusal> {
    // HTTP/2 carries no key (the stream is the handshake); the gateway makes one upstream.
    let h2 = extended_connect::is_websocket_connect(req);
    if req.version() != Version::HTTP_11 && !h2 {
        return Err(Refusal::BadRequest("WebSocket upgrade needs HTTP/1.1"));
    }
    // The connection is handed over right after the head: a body would be spliced to the
    // upstream as if it were WebSocket data.
    let has_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes().trim_ascii() != b"0");
    if has_body {
        return Err(Refusal::BadRequest(
            "a WebSocket upgrade request has no body",
        ));
    }
    let versions: Vec<_> = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_VERSION)
        .iter()
        .collect();
    if versions.len() != 1 || versions[0] != "13" {
        return Err(Refusal::UpgradeRequired);
    }
    if h2 {
        return Ok(());
    }
    let keys: Vec<_> = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_KEY)
        .iter()
        .collect();
    let valid_key = keys.len() == 1 && {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(keys[0].as_bytes())
            .is_ok_and(|k| k.len() == 16)
    };
    if !valid_key {
        return Err(Refusal::BadRequest("missing or invalid Sec-WebSocket-Key"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws_request() -> http::request::Builder {
        Request::builder()
            .method("GET")
            .uri("/ws")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "websocket")
    }

    #[test]
    fn detects_upgrade_with_token_lists() {
        assert!(is_websocket_upgrade(&ws_request().body(()).unwrap()));
        let post = Request::builder()
            .method("POST")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert!(!is_websocket_upgrade(&post));
        let h2c = Request::builder()
            .header("connection", "upgrade")
            .header("upgrade", "h2c")
            .body(())
            .unwrap();
        assert!(!is_websocket_upgrade(&h2c));
    }

    #[test]
    fn websocket_request_checks() {
        let ok = ws_request()
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .unwrap();
        assert_eq!(check_websocket_request(&ok), Ok(()));
        let v8 = ws_request()
            .header("sec-websocket-version", "8")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .unwrap();
        assert_eq!(check_websocket_request(&v8), Err(Refusal::UpgradeRequired));
        let short_key = ws_request()
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "c2hvcnQ=")
            .body(())
            .unwrap();
        assert!(matches!(
            check_websocket_request(&short_key),
            Err(Refusal::BadRequest(_))
        ));
        let two_keys = ws_request()
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .unwrap();
        assert!(check_websocket_request(&two_keys).is_err());
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("close, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-end-to-end", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret-hop").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get("connection").is_none());
        assert_eq!(h["x-end-to-end"], "1");
    }
}
