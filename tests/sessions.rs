//! The session layer's admin side: listing, users, kicks, pushes, broadcasts, per-user limits
//! and `wsgate_users_online`, through a real gateway with real WebSocket clients.
// Real sockets: deadlines here are wall-clock on purpose.
#![allow(clippy::disallowed_types)]
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

const TOKEN: &str = "admin-token-0123456789";

/// Routes: `/ws` open; `/private` Basic or JWT; `/news` JWT; then `routes` (more route
/// entries). `admin` lines go under `admin:`.
fn config(up: SocketAddr, admin: &str, routes: &str) -> String {
    format!(
        r#"listeners:
  - bind: "127.0.0.1:0"
admin:
  bind: "127.0.0.1:0"
{admin}
auth:
  users:
    type: basic
    htpasswd: users.htpasswd
  jwt:
    type: jwt
    algorithms: [HS256]
    secret: "${{WSGATE_JWT_SECRET}}"
routes:
  - path: /ws
    upstream: ws://{up}
  - path: /private
    upstream: ws://{up}
    auth: [users, jwt]
  - path: /news
    upstream: ws://{up}
    auth: [jwt]
{routes}"#
    )
}

/// `/one`: JWT, one connection per user (reject); `/evict`: one per user (evict_oldest).
const LIMITED: &str = "  - path: /one
    upstream: ws://{up}
    auth: [jwt]
    max_connections_per_user: 1
  - path: /evict
    upstream: ws://{up}
    auth: [jwt]
    max_connections_per_user: 1
    on_user_limit: evict_oldest
";

async fn gate_with(admin: &str, routes: &str) -> (Gate, EchoUpstream) {
    let echo = echo_upstream().await;
    let files = Files::new();
    files.write(
        "users.htpasswd",
        &format!(
            "{}\n{}\n",
            htpasswd_line("alice", "pw-alice"),
            htpasswd_line("bob", "pw-bob")
        ),
    );
    let routes = routes.replace("{up}", &echo.addr.to_string());
    let gate = start_gate(files, &config(echo.addr, admin, &routes)).await;
    (gate, echo)
}

async fn gate() -> (Gate, EchoUpstream) {
    gate_with("", "").await
}

async fn limited_gate() -> (Gate, EchoUpstream) {
    gate_with("", LIMITED).await
}

/// Opens `path` as the Basic user `user` (password `pw-<user>`) and checks the echo.
async fn open_basic(gate: &Gate, path: &str, user: &str) -> Ws {
    let auth = basic(user, &format!("pw-{user}"));
    let (mut ws, _) = ws_connect(&gate.ws_url(path), &[("authorization", &auth)])
        .await
        .unwrap_or_else(|e| panic!("connect {path} as {user}: {e}"));
    echo_roundtrip(&mut ws, "hello").await;
    ws
}

/// Opens `path` with a JWT whose `sub` is `user`.
async fn try_open_jwt(
    gate: &Gate,
    path: &str,
    user: &str,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let token = jwt(serde_json::json!({ "sub": user }));
    ws_connect(&gate.ws_url(&format!("{path}?token={token}")), &[])
        .await
        .map(|(ws, _)| ws)
}

async fn open_jwt(gate: &Gate, path: &str, user: &str) -> Ws {
    let mut ws = try_open_jwt(gate, path, user)
        .await
        .unwrap_or_else(|e| panic!("connect {path} as {user}: {e}"));
    echo_roundtrip(&mut ws, "hello").await;
    ws
}

/// One admin call over a fresh connection: (status, head, body with chunking undone).
async fn call(
    gate: &Gate,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> (u16, String, String) {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("host:"))
    {
        req.push_str("Host: 127.0.0.1\r\n");
    }
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    let mut s = TcpStream::connect(gate.admin.unwrap()).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("admin answer timed out")
        .unwrap();
    let pos = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no response head");
    let head = String::from_utf8_lossy(&raw[..pos]).to_string();
    let mut body = raw[pos + 4..].to_vec();
    if head_header(&head, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        body = dechunk(&body);
    }
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head, String::from_utf8(body).unwrap())
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..line_end]).unwrap().trim(), 16).unwrap();
        b = &b[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// A successful JSON call.
async fn ok_json(gate: &Gate, method: &str, path: &str, body: &str) -> Value {
    let (status, head, text) = call(gate, method, path, &[], body).await;
    assert_eq!(status, 200, "{method} {path}: {head}\n{text}");
    assert_eq!(
        head_header(&head, "content-type").as_deref(),
        Some("application/json"),
        "{head}"
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
}

async fn connections(gate: &Gate, query: &str) -> Vec<Value> {
    let v = ok_json(gate, "GET", &format!("/connections{query}"), "").await;
    v["connections"].as_array().unwrap().clone()
}

/// The close code and reason the client gets, or `None` when the stream ends without one.
async fn close_of(ws: &mut Ws) -> Option<(u16, String)> {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => {
                    return frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return None,
            }
        }
    })
    .await
    .expect("the connection did not end")
}

/// The next data message the client gets.
async fn next_data(ws: &mut Ws) -> Message {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(m)) if m.is_text() || m.is_binary() => return m,
                Some(Ok(_)) => {}
                other => panic!("stream ended instead of a message: {other:?}"),
            }
        }
    })
    .await
    .expect("no message arrived")
}

fn online(route: &str) -> String {
    format!("wsgate_users_online{{route=\"{route}\"}}")
}

fn active(route: &str) -> String {
    format!("wsgate_connections_active{{route=\"{route}\"}}")
}

// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn connections_are_listed_with_filters() {
    let (gate, _echo) = gate().await;
    let _a1 = open_basic(&gate, "/private", "alice").await;
    let _a2 = open_jwt(&gate, "/news", "alice").await;
    let _b = open_basic(&gate, "/private", "bob").await;
    let _odd = open_jwt(&gate, "/private", "a b@x/y").await;
    let mut anon = ws_connect(&gate.ws_url("/ws"), &[]).await.unwrap().0;
    echo_roundtrip(&mut anon, "hi").await;

    let all = connections(&gate, "").await;
    assert_eq!(all.len(), 5, "{all:?}");
    let bob: Vec<&Value> = all.iter().filter(|c| c["user"] == "bob").collect();
    assert_eq!(bob.len(), 1);
    let bob = bob[0];
    assert_eq!(bob["route"], "/private");
    assert_eq!(bob["client"], "127.0.0.1");
    // "hello" went up in one masked frame (11 bytes) and came back unmasked (7 bytes).
    assert!(bob["bytes_in"].as_u64().unwrap() >= 11, "{bob}");
    assert!(bob["bytes_out"].as_u64().unwrap() >= 7, "{bob}");
    let since = bob["since"].as_str().unwrap();
    assert!(since.ends_with('Z'), "RFC 3339 UTC: {since}");
    let since = humantime::parse_rfc3339(since).unwrap();
    assert!(since.elapsed().unwrap() < Duration::from_secs(60));
    let anon_entry: Vec<&Value> = all.iter().filter(|c| c["user"].is_null()).collect();
    assert_eq!(anon_entry.len(), 1);
    assert_eq!(anon_entry[0]["route"], "/ws");

    assert_eq!(connections(&gate, "?user=alice").await.len(), 2);
    assert_eq!(connections(&gate, "?route=%2Fprivate").await.len(), 3);
    assert_eq!(
        connections(&gate, "?route=/private&user=bob").await.len(),
        1
    );
    let odd = connections(&gate, "?user=a%20b%40x%2Fy").await;
    assert_eq!(odd.len(), 1, "percent-decoded user filter");
    assert_eq!(odd[0]["user"], "a b@x/y");
    assert!(connections(&gate, "?user=nobody").await.is_empty());
    let (status, _, body) = call(&gate, "GET", "/connections?usr=alice", &[], "").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("usr"), "{body}");
    let (status, head, _) = call(&gate, "POST", "/connections", &[], "").await;
    assert_eq!(status, 405);
    assert_eq!(head_header(&head, "allow").as_deref(), Some("GET"));
}

#[tokio::test]
async fn users_are_counted_per_route_and_online_goes_up_and_down() {
    let (gate, _echo) = gate().await;
    assert_eq!(gate.metric(&online("/private")).await, 0.0);
    assert!(
        !gate.has_metric(&online("/ws")).await,
        "an open route has no users"
    );
    let a1 = open_basic(&gate, "/private", "alice").await;
    let a2 = open_jwt(&gate, "/private", "alice").await;
    let a3 = open_jwt(&gate, "/news", "alice").await;
    let b = open_basic(&gate, "/private", "bob").await;
    assert_eq!(gate.metric(&online("/private")).await, 2.0, "alice and bob");
    assert_eq!(gate.metric(&online("/news")).await, 1.0);

    let v = ok_json(&gate, "GET", "/users", "").await;
    let users = v["users"].as_array().unwrap();
    assert_eq!(users.len(), 2, "{v}");
    let alice = users.iter().find(|u| u["user"] == "alice").unwrap();
    assert_eq!(alice["connections"], 3);
    assert_eq!(
        alice["routes"],
        serde_json::json!({"/private": 2, "/news": 1})
    );
    let v = ok_json(&gate, "GET", "/users?route=%2Fnews", "").await;
    assert_eq!(
        v["users"],
        serde_json::json!([{"user": "alice", "connections": 1, "routes": {"/news": 1}}])
    );

    drop(a1);
    drop(a2);
    assert_eq!(wait_metric(&gate, &active("/private"), 1.0).await, 1.0);
    assert_eq!(gate.metric(&online("/private")).await, 1.0, "only bob left");
    drop((a3, b));
    assert_eq!(wait_metric(&gate, &online("/private"), 0.0).await, 0.0);
    assert_eq!(wait_metric(&gate, &online("/news"), 0.0).await, 0.0);
    let v = ok_json(&gate, "GET", "/users", "").await;
    assert_eq!(v["users"], serde_json::json!([]));
}

#[tokio::test]
async fn kick_by_id_and_by_user_closes_with_the_code() {
    let (gate, _echo) = gate().await;
    let mut a1 = open_basic(&gate, "/private", "alice").await;
    let mut a2 = open_jwt(&gate, "/news", "alice").await;
    let mut b = open_basic(&gate, "/private", "bob").await;
    let bob_id = connections(&gate, "?user=bob").await[0]["id"]
        .as_u64()
        .unwrap();

    let v = ok_json(&gate, "DELETE", &format!("/connections/{bob_id}"), "").await;
    assert_eq!(v, serde_json::json!({"closed": 1}));
    assert_eq!(close_of(&mut b).await, Some((4000, "kicked".into())));

    let (status, _, body) = call(&gate, "DELETE", "/users/alice?code=1001", &[], "").await;
    assert_eq!(status, 400, "1001 is the gateway's own: {body}");
    let long = "x".repeat(124);
    let (status, _, body) = call(
        &gate,
        "DELETE",
        &format!("/users/alice?reason={long}"),
        &[],
        "",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("123"), "{body}");

    let v = ok_json(&gate, "DELETE", "/users/alice?code=4100&reason=see+you", "").await;
    assert_eq!(v, serde_json::json!({"closed": 2}));
    assert_eq!(close_of(&mut a1).await, Some((4100, "see you".into())));
    assert_eq!(close_of(&mut a2).await, Some((4100, "see you".into())));

    assert_eq!(wait_metric(&gate, &online("/private"), 0.0).await, 0.0);
    let (status, _, _) = call(&gate, "DELETE", "/users/alice", &[], "").await;
    assert_eq!(status, 404, "no connection left");
    let (status, _, _) = call(&gate, "DELETE", &format!("/connections/{bob_id}"), &[], "").await;
    assert_eq!(status, 404);
    let (status, _, _) = call(&gate, "DELETE", "/connections/not-a-number", &[], "").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn push_to_a_connection_a_user_and_a_route() {
    let (gate, _echo) = gate().await;
    let mut a = open_jwt(&gate, "/private", "a b@x/y").await;
    let mut b = open_basic(&gate, "/private", "bob").await;
    let mut other = open_jwt(&gate, "/news", "carol").await;

    let v = ok_json(
        &gate,
        "POST",
        "/users/a%20b%40x%2Fy/messages",
        r#"{"text": "notice"}"#,
    )
    .await;
    assert_eq!(v, serde_json::json!({"sent": 1, "failed": 0}));
    assert_eq!(next_data(&mut a).await, Message::text("notice"));

    let bob_id = connections(&gate, "?user=bob").await[0]["id"]
        .as_u64()
        .unwrap();
    let v = ok_json(
        &gate,
        "POST",
        &format!("/connections/{bob_id}/messages"),
        r#"{"binary": "AAEC/w=="}"#,
    )
    .await;
    assert_eq!(v, serde_json::json!({"sent": 1, "failed": 0}));
    assert_eq!(
        next_data(&mut b).await,
        Message::binary(vec![0u8, 1, 2, 255])
    );

    let v = ok_json(
        &gate,
        "POST",
        "/routes/%2Fprivate/broadcast",
        r#"{"text": "to all"}"#,
    )
    .await;
    assert_eq!(v, serde_json::json!({"sent": 2, "failed": 0}));
    assert_eq!(next_data(&mut a).await, Message::text("to all"));
    assert_eq!(next_data(&mut b).await, Message::text("to all"));
    // The tunnels still work both ways afterwards, and the other route got nothing.
    echo_roundtrip(&mut a, "still there").await;
    echo_roundtrip(&mut other, "quiet").await;

    for (path, body, want) in [
        ("/users/nobody/messages", r#"{"text": "x"}"#, 404),
        ("/connections/999999/messages", r#"{"text": "x"}"#, 404),
        ("/routes/%2Fnope/broadcast", r#"{"text": "x"}"#, 404),
        (
            "/users/bob/messages",
            r#"{"text": "x", "binary": "AA=="}"#,
            400,
        ),
        ("/users/bob/messages", r#"{"text": 1"#, 400),
        ("/users/bob/messages", r#"{"binary": "%%%"}"#, 400),
    ] {
        let (status, _, text) = call(&gate, "POST", path, &[], body).await;
        assert_eq!(status, want, "{path} {body}: {text}");
        assert!(text.contains("\"error\""), "{text}");
    }
    let huge = format!(r#"{{"text": "{}"}}"#, "x".repeat(2 << 20));
    let (status, _, _) = call(&gate, "POST", "/users/bob/messages", &[], &huge).await;
    assert_eq!(status, 413);
    b.send(Message::Close(None)).await.unwrap();
}

#[tokio::test]
async fn a_user_over_the_limit_gets_409() {
    let (gate, _echo) = limited_gate().await;
    let first = open_jwt(&gate, "/one", "alice").await;
    let limited = "wsgate_handshakes_total{outcome=\"limited\",route=\"/one\"}";
    assert_eq!(gate.metric(limited).await, 0.0);
    let Err(err) = try_open_jwt(&gate, "/one", "alice").await else {
        panic!("second login admitted");
    };
    assert_eq!(refused_status(err), 409);
    assert_eq!(gate.metric(limited).await, 1.0);
    // Other users and other routes are not affected.
    let _bob = open_jwt(&gate, "/one", "bob").await;
    let _elsewhere = open_jwt(&gate, "/private", "alice").await;
    drop(first);
    assert_eq!(wait_metric(&gate, &active("/one"), 1.0).await, 1.0);
    let _again = open_jwt(&gate, "/one", "alice").await;
}

#[tokio::test]
async fn twenty_logins_at_once_admit_exactly_one() {
    let (gate, _echo) = limited_gate().await;
    let url = gate.ws_url("/one");
    let token = jwt(serde_json::json!({ "sub": "alice" }));
    let attempts = (0..20).map(|_| {
        let url = format!("{url}?token={token}");
        tokio::spawn(async move { ws_connect(&url, &[]).await.map(|(ws, _)| ws) })
    });
    let results = futures_util::future::join_all(attempts).await;
    let mut admitted = Vec::new();
    let mut refused = 0;
    for r in results {
        match r.unwrap() {
            Ok(ws) => admitted.push(ws),
            Err(e) => {
                assert_eq!(refused_status(e), 409);
                refused += 1;
            }
        }
    }
    assert_eq!((admitted.len(), refused), (1, 19));
    echo_roundtrip(&mut admitted[0], "the one").await;
    assert_eq!(gate.metric(&online("/one")).await, 1.0);
}

#[tokio::test]
async fn evict_oldest_closes_the_old_login_with_4002() {
    let (gate, _echo) = limited_gate().await;
    let mut old = open_jwt(&gate, "/evict", "alice").await;
    let mut new = open_jwt(&gate, "/evict", "alice").await;
    assert_eq!(
        close_of(&mut old).await,
        Some((4002, "logged in elsewhere".into()))
    );
    echo_roundtrip(&mut new, "I stay").await;
    assert_eq!(wait_metric(&gate, &active("/evict"), 1.0).await, 1.0);
    assert_eq!(gate.metric(&online("/evict")).await, 1.0);

    // Many logins at once: every one is admitted, and only one stays.
    let url = gate.ws_url("/evict");
    let token = jwt(serde_json::json!({ "sub": "alice" }));
    let attempts = (0..10).map(|_| {
        let url = format!("{url}?token={token}");
        tokio::spawn(async move { ws_connect(&url, &[]).await.map(|(ws, _)| ws) })
    });
    let all: Vec<Ws> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.unwrap().expect("evict_oldest admits every login"))
        .collect();
    assert_eq!(wait_metric(&gate, &active("/evict"), 1.0).await, 1.0);
    assert_eq!(
        close_of(&mut new).await,
        Some((4002, "logged in elsewhere".into()))
    );
    assert_eq!(gate.metric(&online("/evict")).await, 1.0);
    drop(all);
    assert_eq!(wait_metric(&gate, &online("/evict"), 0.0).await, 0.0);
}

#[tokio::test]
async fn reads_and_mutations_follow_the_admin_rules() {
    let (gate, _echo) = gate().await;
    for (method, path) in [
        ("GET", "/connections"),
        ("GET", "/users"),
        ("DELETE", "/users/alice"),
    ] {
        let (status, _, body) = call(&gate, method, path, &["Origin: http://127.0.0.1"], "").await;
        assert_eq!(status, 403, "{method} {path} with Origin: {body}");
        let (status, _, body) = call(&gate, method, path, &["Host: evil.example"], "").await;
        assert_eq!(status, 403, "{method} {path} with a foreign Host: {body}");
    }
    let (status, _, _) = call(
        &gate,
        "POST",
        "/routes/%2Fprivate/broadcast",
        &["Origin: http://127.0.0.1"],
        r#"{"text": "x"}"#,
    )
    .await;
    assert_eq!(status, 403);

    // With a token: everything needs it.
    let (gate, _echo2) = gate_with(&format!("  token: \"{TOKEN}\""), "").await;
    let bearer = format!("Authorization: Bearer {TOKEN}");
    for (method, path) in [
        ("GET", "/connections"),
        ("GET", "/users"),
        ("DELETE", "/users/alice"),
    ] {
        let (status, head, _) = call(&gate, method, path, &[], "").await;
        assert_eq!(status, 401, "{method} {path} without the token");
        assert_eq!(
            head_header(&head, "www-authenticate").as_deref(),
            Some("Bearer")
        );
        let (status, _, _) = call(&gate, method, path, &[&bearer, "Host: evil.example"], "").await;
        assert_eq!(
            status,
            if method == "GET" { 200 } else { 404 },
            "{method} {path} with the token"
        );
    }

    // public_reads: reads are open, mutations are not.
    let (gate, _echo3) =
        gate_with(&format!("  token: \"{TOKEN}\"\n  public_reads: true"), "").await;
    for path in ["/connections", "/users"] {
        let (status, _, _) = call(&gate, "GET", path, &["Host: evil.example"], "").await;
        assert_eq!(status, 200, "{path}");
    }
    let (status, _, _) = call(&gate, "DELETE", "/users/alice", &[], "").await;
    assert_eq!(status, 401);
    let (status, _, _) = call(&gate, "POST", "/users/alice/messages", &[], "{}").await;
    assert_eq!(status, 401);
    // /metrics and /healthz stay public.
    let (status, _, _) = call(&gate, "GET", "/healthz", &["Host: evil.example"], "").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_user_limit_on_an_open_route_is_a_config_error() {
    let yaml = "listeners:\n  - bind: \"127.0.0.1:0\"\nroutes:\n  - path: /ws\n    upstream: ws://127.0.0.1:1\n    max_connections_per_user: 2\n  - path: /x\n    upstream: ws://127.0.0.1:1\n    on_user_limit: kick\n";
    let dir = tempfile::tempdir().unwrap();
    let err =
        wsgate::config::parse_str(yaml, std::path::Path::new("t.yaml"), dir.path(), &|_| None)
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("routes[0].max_connections_per_user: needs auth"),
        "{err}"
    );
    assert!(err.contains("routes[1].on_user_limit"), "{err}");
}
