//! The session admin API on the admin listener, JSON in and out:
//!
//! | call | answer |
//! |---|---|
//! | `GET /connections?route=&user=` | `{"connections": [{id, route, user, client, since, bytes_in, bytes_out}]}` |
//! | `GET /users?route=` | `{"users": [{user, connections, routes: {route: n}}]}` |
//! | `GET /connections?scope=cluster`, `GET /users?scope=cluster` | the same from every instance (cluster mode), each entry with its `instance` |
//! | `DELETE /connections/{id}`, `DELETE /users/{user}` (`?code=&reason=`) | `{"closed": n}` |
//! | `POST /connections/{id}/messages`, `/users/{user}/messages`, `/routes/{route}/broadcast` | `{"sent": n, "failed": m}` |
//!
//! Path segments are percent-decoded after the path is split, so a user name may carry `/`
//! as `%2F` and a route is written percent-encoded (`/routes/%2Fchat/broadcast`). Reads pass
//! [`guard_read`], the rest [`guard_mutation`]. Listings are streamed shard by shard: each
//! shard's lock is held only while its handles are copied, and no body is built whole.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use serde::Serialize;

use crate::admin::{guard_mutation, guard_read};
use crate::frames::MessageKind;
use crate::proxy::Shared;
use crate::proxy::response::{ProxyBody, full};
use crate::registry::{Outgoing, Registry, StopReason, TunnelInfo};
use crate::runtime::Runtime;
use crate::users::{Stop, Users};

/// Largest message body accepted by the push and broadcast calls.
pub const MAX_MESSAGE_BODY: usize = 1 << 20;
/// Longest close reason: a close frame's payload is at most 125 bytes, two of them the code.
pub const MAX_CLOSE_REASON: usize = 123;
/// Entries serialised per body chunk of a listing.
const CHUNK_ENTRIES: usize = 512;

/// Whether `path` belongs to this API (so the admin listener hands it over).
pub fn is_api_path(path: &str) -> bool {
    let first = path
        .strip_prefix('/')
        .map_or("", |p| p.split('/').next().unwrap_or(""));
    matches!(first, "connections" | "users" | "routes")
}

/// One API call, decoded from method and path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    ListConnections,
    ListUsers,
    KickConnection(String),
    KickUser(String),
    PushConnection(String),
    PushUser(String),
    Broadcast(String),
}

impl Call {
    fn is_read(&self) -> bool {
        matches!(self, Call::ListConnections | Call::ListUsers)
    }
}

/// An answer that isn't a success: status and a message, sent as `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable reason.
    pub message: String,
    /// The `Allow` header of a 405.
    pub allow: Option<&'static str>,
}

impl ApiError {
    /// An error answer with `status`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            allow: None,
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    fn into_response(self) -> Response<ProxyBody> {
        let mut resp = json(self.status, &serde_json::json!({ "error": self.message }));
        if let Some(allow) = self.allow {
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
        }
        resp
    }
}

/// Decodes one path segment (`%2F` → `/`, `%40` → `@`); it must be valid UTF-8 and non-empty.
pub fn decode_segment(seg: &str) -> Result<String, ApiError> {
    let decoded = percent_encoding::percent_decode_str(seg)
        .decode_utf8()
        .map_err(|_| ApiError::bad("path segment is not valid UTF-8 once percent-decoded"))?;
    if decoded.is_empty() {
        return Err(ApiError::not_found("empty path segment"));
    }
    Ok(decoded.into_owned())
}

/// Splits a query string into decoded pairs (`+` is a space, as browsers and curl
/// `--data-urlencode -G` write it); only `allowed` names are accepted, each at most once.
pub fn query_params(
    query: Option<&str>,
    allowed: &[&str],
) -> Result<Vec<(String, String)>, ApiError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| ApiError::bad("query parameter is not valid UTF-8 once decoded"))
        };
        let (k, v) = (decode(k)?, decode(v)?);
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::bad(format!(
                "unknown query parameter {k:?} (accepted here: {})",
                if allowed.is_empty() {
                    "none".to_owned()
                } else {
                    allowed.join(", ")
                }
            )));
        }
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(ApiError::bad(format!("query parameter {k:?} given twice")));
        }
        out.push((k, v));
    }
    Ok(out)
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The stop for a kick: [`StopReason::Kicked`] (4000 "kicked") unless `code`/`reason` say
/// otherwise. `code` must be 1000 or 3000–4999 (the codes RFC 6455 lets an application send:
/// 1000 normal, 3000–3999 registered, 4000–4999 private); `reason` at most 123 bytes of UTF-8.
pub fn kick_stop(code: Option<&str>, reason: Option<&str>) -> Result<Stop, ApiError> {
    let code = match code {
        None => None,
        Some(c) => {
            let n: u16 = c
                .parse()
                .map_err(|_| ApiError::bad(format!("code {c:?} is not a number")))?;
            if n != 1000 && !(3000..=4999).contains(&n) {
                return Err(ApiError::bad(format!(
                    "code {n} cannot be sent: use 1000 or 3000-4999 (RFC 6455 §7.4)"
                )));
            }
            Some(n)
        }
    };
    if let Some(r) = reason
        && r.len() > MAX_CLOSE_REASON
    {
        return Err(ApiError::bad(format!(
            "reason is {} bytes; a close frame carries at most {MAX_CLOSE_REASON} bytes of UTF-8",
            r.len()
        )));
    }
    let default = StopReason::Kicked.close_frame();
    Ok(Stop {
        reason: StopReason::Kicked,
        close: match (code, reason) {
            (None, None) => None,
            (Some(c), r) => Some((c, r.unwrap_or("").to_owned())),
            (None, Some(r)) => Some((default.0, r.to_owned())),
        },
    })
}

fn route_call(method: &Method, path: &str) -> Result<Call, ApiError> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let allow = |methods: &'static str| ApiError {
        allow: Some(methods),
        ..ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method not allowed here; use {methods}"),
        )
    };
    let get = *method == Method::GET;
    let post = *method == Method::POST;
    let delete = *method == Method::DELETE;
    match segs.as_slice() {
        ["connections"] if get => Ok(Call::ListConnections),
        ["connections"] => Err(allow("GET")),
        ["users"] if get => Ok(Call::ListUsers),
        ["users"] => Err(allow("GET")),
        ["connections", id] if delete => Ok(Call::KickConnection(decode_segment(id)?)),
        ["connections", _] => Err(allow("DELETE")),
        ["users", user] if delete => Ok(Call::KickUser(decode_segment(user)?)),
        ["users", _] => Err(allow("DELETE")),
        ["connections", id, "messages"] if post => Ok(Call::PushConnection(decode_segment(id)?)),
        ["connections", _, "messages"] => Err(allow("POST")),
        ["users", user, "messages"] if post => Ok(Call::PushUser(decode_segment(user)?)),
        ["users", _, "messages"] => Err(allow("POST")),
        ["routes", route, "broadcast"] if post => Ok(Call::Broadcast(decode_segment(route)?)),
        ["routes", _, "broadcast"] => Err(allow("POST")),
        _ => Err(ApiError::not_found("no such admin call")),
    }
}

/// Answers one API call (the caller checked [`is_api_path`]).
pub async fn respond(
    req: Request<Incoming>,
    shared: &Shared,
    runtime: &Runtime,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let call = match route_call(req.method(), req.uri().path()) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let admin = runtime.config.admin.as_ref();
    let guard = if call.is_read() {
        guard_read(req.headers(), peer, admin)
    } else {
        guard_mutation(req.headers(), peer, admin.and_then(|a| a.token.as_deref()))
    };
    if let Err(refusal) = guard {
        tracing::warn!(client = %peer.ip(), path = req.uri().path(), reason = refusal.reason(), "admin call refused");
        return refusal.into_response();
    }
    match serve(call, req, shared, runtime).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn serve(
    call: Call,
    req: Request<Incoming>,
    shared: &Shared,
    runtime: &Runtime,
) -> Result<Response<ProxyBody>, ApiError> {
    let query = req.uri().query().map(str::to_owned);
    let query = query.as_deref();
    match call {
        Call::ListConnections => {
            let p = query_params(query, &["route", "user", "scope"])?;
            if cluster_scope(&p, shared)? {
                return crate::cluster::admin::connections(
                    shared,
                    param(&p, "route"),
                    param(&p, "user"),
                )
                .await;
            }
            Ok(list_connections(
                shared.registry.clone(),
                param(&p, "route").map(str::to_owned),
                param(&p, "user").map(str::to_owned),
            ))
        }
        Call::ListUsers => {
            let p = query_params(query, &["route", "scope"])?;
            if cluster_scope(&p, shared)? {
                return crate::cluster::admin::users(shared, param(&p, "route")).await;
            }
            Ok(list_users(
                shared.users.clone(),
                param(&p, "route").map(str::to_owned),
            ))
        }
        Call::KickConnection(id) => {
            let p = query_params(query, &["code", "reason"])?;
            let stop = kick_stop(param(&p, "code"), param(&p, "reason"))?;
            let t = connection(&shared.registry, &id)?;
            let live = t.stop_reason().is_none();
            apply(&stop, &t);
            tracing::info!(id = t.id, code = ?stop.close.as_ref().map(|c| c.0), "admin kicked a connection");
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "closed": usize::from(live) }),
            ))
        }
        Call::KickUser(user) => {
            let p = query_params(query, &["code", "reason"])?;
            let stop = kick_stop(param(&p, "code"), param(&p, "reason"))?;
            let local = shared.users.stop_user(&user, &stop);
            if let Some(cluster) = &shared.cluster {
                let others = cluster.kick_user(&user, &stop).await;
                tracing::info!(user = %user, closed = local.unwrap_or(0), instances = ?others.ok(), "admin kicked a user cluster-wide");
                return crate::cluster::admin::fanned_out(
                    local.is_some(),
                    others,
                    serde_json::json!({ "closed": local.unwrap_or(0) }),
                    || format!("user {user:?} has no connection"),
                );
            }
            let n = local
                .ok_or_else(|| ApiError::not_found(format!("user {user:?} has no connection")))?;
            tracing::info!(user = %user, closed = n, "admin kicked a user");
            Ok(json(StatusCode::OK, &serde_json::json!({ "closed": n })))
        }
        Call::PushConnection(id) => {
            query_params(query, &[])?;
            let msg = read_message(req).await?;
            let t = connection(&shared.registry, &id)?;
            Ok(push_all(&[t], &msg))
        }
        Call::PushUser(user) => {
            query_params(query, &[])?;
            let msg = read_message(req).await?;
            let targets = shared.users.open_tunnels(&user);
            if let Some(cluster) = &shared.cluster {
                let others = cluster.push_user(&user, &msg).await;
                let (sent, failed) = push_counts(&targets, &msg);
                return crate::cluster::admin::fanned_out(
                    !targets.is_empty(),
                    others,
                    serde_json::json!({ "sent": sent, "failed": failed }),
                    || format!("user {user:?} has no open connection"),
                );
            }
            if targets.is_empty() {
                return Err(ApiError::not_found(format!(
                    "user {user:?} has no open connection"
                )));
            }
            Ok(push_all(&targets, &msg))
        }
        Call::Broadcast(route) => {
            query_params(query, &[])?;
            if !runtime.config.routes.iter().any(|r| r.path == route) {
                return Err(ApiError::not_found(format!(
                    "no route {route:?} (write the route's path percent-encoded: /routes/%2Fchat/broadcast)"
                )));
            }
            let msg = read_message(req).await?;
            let registry = &shared.registry;
            let targets: Vec<Arc<TunnelInfo>> = (0..registry.shard_count())
                .flat_map(|i| registry.shard_snapshot(i))
                .filter(|t| t.route == route)
                .collect();
            if let Some(cluster) = &shared.cluster {
                let others = cluster.broadcast(&route, &msg).await;
                let (sent, failed) = push_counts(&targets, &msg);
                return crate::cluster::admin::fanned_out(
                    true,
                    others,
                    serde_json::json!({ "sent": sent, "failed": failed }),
                    String::new,
                );
            }
            Ok(push_all(&targets, &msg))
        }
    }
}

fn apply(stop: &Stop, t: &TunnelInfo) {
    match &stop.close {
        Some((code, text)) => t.stop_with(stop.reason, *code, text.clone()),
        None => t.stop(stop.reason),
    }
}

fn connection(registry: &Registry, id: &str) -> Result<Arc<TunnelInfo>, ApiError> {
    id.parse::<u64>()
        .ok()
        .and_then(|n| registry.get(n))
        .ok_or_else(|| ApiError::not_found(format!("no open connection with id {id:?}")))
}

/// `?scope=cluster` (true), `?scope=local` or none (false); cluster needs cluster mode.
fn cluster_scope(params: &[(String, String)], shared: &Shared) -> Result<bool, ApiError> {
    match param(params, "scope") {
        None | Some("local") => Ok(false),
        Some("cluster") if shared.cluster.is_some() => Ok(true),
        Some("cluster") => Err(ApiError::bad(
            "scope=cluster needs cluster mode (a cluster: section in the config)",
        )),
        Some(other) => Err(ApiError::bad(format!(
            "scope {other:?} is not known: use local or cluster"
        ))),
    }
}

/// Pushes `msg` to each target: (sent, failed).
fn push_counts(targets: &[Arc<TunnelInfo>], msg: &Outgoing) -> (usize, usize) {
    let (mut sent, mut failed) = (0usize, 0usize);
    for t in targets {
        // Bytes clones share one buffer: a broadcast to 100,000 sockets copies nothing.
        match t.push(msg.clone()) {
            Ok(()) => sent += 1,
            Err(_) => failed += 1,
        }
    }
    (sent, failed)
}

fn push_all(targets: &[Arc<TunnelInfo>], msg: &Outgoing) -> Response<ProxyBody> {
    let (sent, failed) = push_counts(targets, msg);
    json(
        StatusCode::OK,
        &serde_json::json!({ "sent": sent, "failed": failed }),
    )
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageBody {
    text: Option<String>,
    binary: Option<String>,
}

/// Parses `{"text": "..."}` or `{"binary": "<base64>"}` (exactly one).
pub fn parse_message(body: &[u8]) -> Result<Outgoing, ApiError> {
    let m: MessageBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad(format!(
            "body must be {{\"text\": \"...\"}} or {{\"binary\": \"<base64>\"}}: {e}"
        ))
    })?;
    match (m.text, m.binary) {
        (Some(t), None) => Ok(Outgoing {
            kind: MessageKind::Text,
            payload: Bytes::from(t),
        }),
        (None, Some(b)) => {
            use base64::Engine;
            let payload = base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .map_err(|e| ApiError::bad(format!("binary is not valid base64: {e}")))?;
            Ok(Outgoing {
                kind: MessageKind::Binary,
                payload: Bytes::from(payload),
            })
        }
        _ => Err(ApiError::bad("give exactly one of \"text\" and \"binary\"")),
    }
}

async fn read_message(req: Request<Incoming>) -> Result<Outgoing, ApiError> {
    let too_big = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("message body over {MAX_MESSAGE_BODY} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_MESSAGE_BODY as u64) {
        return Err(too_big());
    }
    let body = Limited::new(req.into_body(), MAX_MESSAGE_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_big()
            } else {
                ApiError::bad("could not read the request body")
            }
        })?
        .to_bytes();
    parse_message(&body)
}

/// A JSON answer with `status` (also for cluster mode's admin answers).
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<ProxyBody> {
    let mut body = value.to_string();
    body.push('\n');
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

#[derive(Serialize)]
struct ConnectionView<'a> {
    id: u64,
    route: &'a str,
    user: Option<&'a str>,
    client: std::net::IpAddr,
    since: String,
    bytes_in: u64,
    bytes_out: u64,
}

impl<'a> ConnectionView<'a> {
    fn of(t: &'a TunnelInfo) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        ConnectionView {
            id: t.id,
            route: &t.route,
            user: t.user.as_deref(),
            client: t.client,
            since: humantime::format_rfc3339_millis(t.opened).to_string(),
            bytes_in: t.client_to_upstream.load(Relaxed),
            bytes_out: t.upstream_to_client.load(Relaxed),
        }
    }
}

#[derive(Serialize)]
struct UserView<'a> {
    user: &'a str,
    connections: usize,
    routes: serde_json::Map<String, serde_json::Value>,
}

/// A JSON array body `{"<key>": [ ... ]}` produced one shard at a time: `items(i)` is called
/// lazily as the client reads, and serialises shard `i`'s entries into chunks.
fn streamed_list<F>(key: &'static str, shards: usize, mut items: F) -> Response<ProxyBody>
where
    F: FnMut(usize, &mut bool) -> Vec<Bytes> + Send + 'static,
{
    let head = futures_util::stream::iter([Bytes::from(format!("{{\"{key}\":["))]);
    let mut first = true;
    let body = futures_util::stream::iter(0..shards)
        .flat_map(move |i| futures_util::stream::iter(items(i, &mut first)))
        .filter(|b| futures_util::future::ready(!b.is_empty()));
    let tail = futures_util::stream::iter([Bytes::from_static(b"]}\n")]);
    let frames = head
        .chain(body)
        .chain(tail)
        .map(|b| Ok::<_, Infallible>(Frame::data(b)));
    let mut resp = Response::new(
        StreamBody::new(frames)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Serialises `items` as comma-separated JSON values, `CHUNK_ENTRIES` per chunk.
fn chunks<T: Serialize>(items: &[T], first: &mut bool) -> Vec<Bytes> {
    items
        .chunks(CHUNK_ENTRIES)
        .map(|part| {
            let mut buf = Vec::with_capacity(part.len() * 160);
            for item in part {
                if !std::mem::replace(first, false) {
                    buf.push(b',');
                }
                // Serialising plain structs into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut buf, item);
            }
            Bytes::from(buf)
        })
        .collect()
}

/// The streamed `GET /connections` answer (public for the timing test).
pub fn list_connections(
    registry: Arc<Registry>,
    route: Option<String>,
    user: Option<String>,
) -> Response<ProxyBody> {
    let shards = registry.shard_count();
    streamed_list("connections", shards, move |i, first| {
        let mut entries = registry.shard_snapshot(i);
        entries.retain(|t| {
            route.as_deref().is_none_or(|r| t.route == r)
                && user.as_deref().is_none_or(|u| t.user.as_deref() == Some(u))
        });
        entries.sort_unstable_by_key(|t| t.id);
        let views: Vec<ConnectionView<'_>> =
            entries.iter().map(|t| ConnectionView::of(t)).collect();
        chunks(&views, first)
    })
}

/// The streamed `GET /users` answer (public for the timing test).
pub fn list_users(users: Arc<Users>, route: Option<String>) -> Response<ProxyBody> {
    let shards = users.shard_count();
    streamed_list("users", shards, move |i, first| {
        let mut online = users.online_in_shard(i, route.as_deref());
        online.sort_unstable_by(|a, b| a.user.cmp(&b.user));
        let views: Vec<UserView<'_>> = online
            .iter()
            .map(|u| {
                let mut routes: Vec<&(Arc<str>, usize)> = u.routes.iter().collect();
                routes.sort();
                UserView {
                    user: &u.user,
                    connections: u.routes.iter().map(|(_, n)| n).sum(),
                    routes: routes
                        .into_iter()
                        .map(|(r, n)| (r.to_string(), serde_json::Value::from(*n)))
                        .collect(),
                }
            })
            .collect();
        chunks(&views, first)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_and_reasons() {
        assert_eq!(kick_stop(None, None).unwrap().close, None);
        assert_eq!(
            kick_stop(Some("4100"), Some("moved")).unwrap().close,
            Some((4100, "moved".into()))
        );
        assert_eq!(
            kick_stop(Some("1000"), None).unwrap().close,
            Some((1000, String::new()))
        );
        assert_eq!(
            kick_stop(None, Some("bye")).unwrap().close,
            Some((4000, "bye".into())),
            "a reason alone keeps the kick's code"
        );
        for ok in ["3000", "4999"] {
            assert!(kick_stop(Some(ok), None).is_ok(), "{ok}");
        }
        for bad in [
            "1001", "1005", "2999", "5000", "999", "0", "-1", "x", "", "65536",
        ] {
            let e = kick_stop(Some(bad), None).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
        assert!(kick_stop(None, Some(&"é".repeat(61))).is_ok(), "122 bytes");
        let e = kick_stop(None, Some(&"é".repeat(62))).unwrap_err();
        assert!(e.message.contains("124 bytes"), "{}", e.message);
        assert!(kick_stop(None, Some(&"a".repeat(123))).is_ok());
        assert!(kick_stop(None, Some(&"a".repeat(124))).is_err());
    }

    #[test]
    fn segments_and_queries_are_percent_decoded() {
        assert_eq!(decode_segment("a%40b.c").unwrap(), "a@b.c");
        assert_eq!(decode_segment("a%20b%2Fc").unwrap(), "a b/c");
        assert_eq!(decode_segment("%2Fchat").unwrap(), "/chat");
        assert_eq!(decode_segment("caf%C3%A9").unwrap(), "café");
        assert_eq!(decode_segment("%FF").unwrap_err().status, 400);
        assert_eq!(decode_segment("").unwrap_err().status, 404);
        assert_eq!(
            route_call(&Method::DELETE, "/users/a%2Fb").unwrap(),
            Call::KickUser("a/b".into()),
            "%2F stays inside the segment"
        );
        assert_eq!(
            route_call(&Method::POST, "/routes/%2Fchat%2Froom/broadcast").unwrap(),
            Call::Broadcast("/chat/room".into())
        );
        assert_eq!(
            route_call(&Method::GET, "/users/x").unwrap_err().status,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            route_call(&Method::GET, "/users/x/y").unwrap_err().status,
            404
        );
        let q = query_params(Some("user=a%20b+c&route=%2Fws"), &["route", "user"]).unwrap();
        assert_eq!(param(&q, "user"), Some("a b c"));
        assert_eq!(param(&q, "route"), Some("/ws"));
        assert!(query_params(Some("usr=a"), &["user"]).is_err());
        assert!(query_params(Some("user=a&user=b"), &["user"]).is_err());
        assert!(query_params(None, &[]).unwrap().is_empty());
    }

    #[test]
    fn message_bodies() {
        let t = parse_message(br#"{"text": "hi"}"#).unwrap();
        assert_eq!(t.kind, MessageKind::Text);
        assert_eq!(&t.payload[..], b"hi");
        let b = parse_message(br#"{"binary": "AAEC"}"#).unwrap();
        assert_eq!(b.kind, MessageKind::Binary);
        assert_eq!(&b.payload[..], &[0, 1, 2]);
        for bad in [
            &br#"{"text": "a", "binary": "AA=="}"#[..],
            br#"{}"#,
            br#"{"binary": "!!"}"#,
            br#"{"txt": "a"}"#,
            b"not json",
        ] {
            assert_eq!(parse_message(bad).unwrap_err().status, 400);
        }
    }
}
