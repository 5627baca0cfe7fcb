//! WebSockets over HTTP/2 (RFC 8441 extended CONNECT) on TLS listeners, in front of a plain
//! HTTP/1.1 WebSocket upstream: a hyper HTTP/2 client opens several WebSockets on one
//! connection through the gateway.
// Real sockets: deadlines here are wall-clock on purpose.
#![allow(clippy::disallowed_types)]
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

type H2Ws = WebSocketStream<TokioIo<Upgraded>>;

/// A gateway with one TLS listener (`listener` lines appended to it), `/ws` open, `/private`
/// Basic (alice), both to `up`; an admin listener.
async fn tls_gate(
    up: SocketAddr,
    listener: &str,
) -> (Gate, rustls_pki_types::CertificateDer<'static>) {
    tls_gate_with(up, listener, "").await
}

/// [`tls_gate`] with `top` (top-level YAML sections) appended.
async fn tls_gate_with(
    up: SocketAddr,
    listener: &str,
    top: &str,
) -> (Gate, rustls_pki_types::CertificateDer<'static>) {
    let files = Files::new();
    let der = files.cert("gate");
    files.write(
        "users.htpasswd",
        &format!("{}\n", htpasswd_line("alice", "pw-alice")),
    );
    let yaml = format!(
        r#"listeners:
  - bind: "127.0.0.1:0"
    tls:
      cert: gate.crt
      key: gate.key
{listener}
  - bind: "127.0.0.1:0"
admin:
  bind: "127.0.0.1:0"
auth:
  users:
    type: basic
    htpasswd: users.htpasswd
routes:
  - path: /ws
    upstream: ws://{up}
  - path: /private
    upstream: ws://{up}
    auth: [users]
{top}
"#
    );
    (start_gate(files, &yaml).await, der)
}

fn tls_client(
    der: &rustls_pki_types::CertificateDer<'static>,
    alpn: &[&[u8]],
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// One HTTP/2 connection to the gateway (ALPN `h2` only), driven by a spawned task.
async fn h2_connect(
    addr: SocketAddr,
    der: &rustls_pki_types::CertificateDer<'static>,
) -> SendRequest<Empty<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tls_client(der, &[b"h2"])
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("TLS handshake offering only h2");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tls))
        .await
        .unwrap();
    // The server's SETTINGS (ENABLE_CONNECT_PROTOCOL) arrive right after the handshake; hyper
    // reads them in a task of its own, which wakes nobody here: look every few milliseconds.
    let mut conn = Box::pin(conn);
    let mut enabled = false;
    for _ in 0..500 {
        if tokio::time::timeout(Duration::from_millis(2), conn.as_mut())
            .await
            .is_ok()
        {
            break;
        }
        if conn.is_extended_connect_protocol_enabled() {
            enabled = true;
            break;
        }
    }
    assert!(
        enabled,
        "the gateway did not send SETTINGS_ENABLE_CONNECT_PROTOCOL"
    );
    tokio::spawn(conn);
    sender
}

/// An extended CONNECT for a WebSocket on `path`; the response head, and the WebSocket when
/// the gateway answered 200.
async fn h2_ws(
    sender: &mut SendRequest<Empty<Bytes>>,
    path: &str,
    headers: &[(&str, &str)],
) -> (http::response::Parts, Option<H2Ws>) {
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("https://localhost{path}"))
        .header("sec-websocket-version", "13")
        .extension(hyper::ext::Protocol::from_static("websocket"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    sender.ready().await.unwrap();
    let mut resp = sender
        .send_request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    if resp.status() != StatusCode::OK {
        let (parts, _) = resp.into_parts();
        return (parts, None);
    }
    let upgraded = hyper::upgrade::on(&mut resp).await.unwrap();
    let (parts, _) = resp.into_parts();
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    (parts, Some(ws))
}

async fn open(
    sender: &mut SendRequest<Empty<Bytes>>,
    path: &str,
    headers: &[(&str, &str)],
) -> H2Ws {
    let (parts, ws) = h2_ws(sender, path, headers).await;
    ws.unwrap_or_else(|| panic!("{path}: refused with {}", parts.status))
}

async fn close_of(ws: &mut H2Ws) -> Option<(u16, String)> {
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

fn upgrades(route: &str, protocol: &str) -> String {
    format!("wsgate_upgrades_by_protocol_total{{protocol=\"{protocol}\",route=\"{route}\"}}")
}

#[tokio::test]
async fn several_authenticated_websockets_share_one_h2_connection() {
    let echo = echo_upstream().await;
    let (gate, der) = tls_gate(echo.addr, "").await;
    let mut h2 = h2_connect(gate.addr(), &der).await;
    let auth = basic("alice", "pw-alice");

    let mut a = open(&mut h2, "/private/a", &[("authorization", &auth)]).await;
    let (parts, b) = h2_ws(
        &mut h2,
        "/private/b?x=1",
        &[
            ("authorization", &auth),
            ("sec-websocket-protocol", "chat, superchat"),
        ],
    )
    .await;
    let mut b = b.expect("b refused");
    // A 200 for the stream: the negotiated subprotocol comes back, the HTTP/1.1 handshake
    // headers (computed for the gateway's own key) don't.
    assert_eq!(parts.headers["sec-websocket-protocol"], "chat");
    assert_eq!(parts.headers["x-upstream"], "echo");
    for h in ["sec-websocket-accept", "upgrade", "connection"] {
        assert!(parts.headers.get(h).is_none(), "{h} in {:?}", parts.headers);
    }
    let mut c = open(&mut h2, "/ws/c", &[]).await;
    for round in 0..3 {
        echo_roundtrip(&mut a, &format!("a{round}")).await;
        echo_roundtrip(&mut c, &format!("c{round}")).await;
        echo_roundtrip(&mut b, &format!("b{round}")).await;
    }

    // The upstream got ordinary HTTP/1.1 upgrades with a key of the gateway's making.
    let seen = echo.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    let b_seen = seen.iter().find(|s| s.uri == "/private/b?x=1").unwrap();
    assert_eq!(b_seen.header("x-auth-user"), Some("alice"));
    assert_eq!(b_seen.header("authorization"), None);
    assert_eq!(b_seen.header("host"), Some("localhost"));
    assert_eq!(b_seen.header("upgrade"), Some("websocket"));
    assert_eq!(b_seen.header("sec-websocket-version"), Some("13"));
    assert_eq!(b_seen.header("x-forwarded-proto"), Some("https"));
    let keys: Vec<_> = seen
        .iter()
        .map(|s| s.header("sec-websocket-key").unwrap().to_owned())
        .collect();
    assert!(keys[0] != keys[1] && keys[1] != keys[2], "{keys:?}");

    assert_eq!(gate.metric(&upgrades("/private", "h2")).await, 2.0);
    assert_eq!(gate.metric(&upgrades("/ws", "h2")).await, 1.0);
    assert_eq!(gate.metric(&upgrades("/private", "http1")).await, 0.0);
    assert_eq!(
        gate.metric("wsgate_connections_active{route=\"/private\"}")
            .await,
        2.0
    );
    assert_eq!(
        gate.metric("wsgate_client_connections_by_protocol_total{protocol=\"h2\"}")
            .await,
        1.0
    );

    // Refusals are ordinary HTTP/2 responses on their stream; the connection stays usable.
    let (parts, ws) = h2_ws(
        &mut h2,
        "/private/x",
        &[("authorization", &basic("alice", "wrong"))],
    )
    .await;
    assert!(ws.is_none());
    assert_eq!(parts.status, StatusCode::UNAUTHORIZED);
    assert!(parts.headers.get("www-authenticate").is_some());
    assert!(parts.headers.get("connection").is_none());
    let (parts, _) = h2_ws(&mut h2, "/private/x", &[]).await;
    assert_eq!(parts.status, StatusCode::UNAUTHORIZED);
    let (parts, _) = h2_ws(&mut h2, "/nowhere", &[]).await;
    assert_eq!(parts.status, StatusCode::NOT_FOUND);
    assert_eq!(
        gate.metric("wsgate_handshakes_total{outcome=\"unauthorized\",route=\"/private\"}")
            .await,
        1.0
    );
    echo_roundtrip(&mut a, "still open").await;
    assert_eq!(echo.count(), 3, "refused streams never reach the upstream");

    // An HTTP/1.1 upgrade on the same listener is counted apart.
    let tcp = TcpStream::connect(gate.addr()).await.unwrap();
    let tls = tls_client(&der, &[b"http/1.1"])
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut h1, _) = tokio_tungstenite::client_async("wss://localhost/ws/h1", tls)
        .await
        .unwrap();
    echo_roundtrip(&mut h1, "h1").await;
    assert_eq!(gate.metric(&upgrades("/ws", "http1")).await, 1.0);
}

#[tokio::test]
async fn h2_websocket_needs_version_13() {
    let echo = echo_upstream().await;
    let (gate, der) = tls_gate(echo.addr, "").await;
    let mut h2 = h2_connect(gate.addr(), &der).await;
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri("https://localhost/ws")
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .body(Empty::new())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UPGRADE_REQUIRED);
    assert_eq!(echo.count(), 0);
}

#[tokio::test]
async fn upstream_without_a_websocket_answer_is_a_502_not_a_tunnel() {
    // A 200 to the upgrade would read as "tunnel open" to an HTTP/2 client.
    let up = raw_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let (gate, der) = tls_gate(up, "").await;
    let mut h2 = h2_connect(gate.addr(), &der).await;
    let (parts, ws) = h2_ws(&mut h2, "/ws", &[]).await;
    assert!(ws.is_none());
    assert_eq!(parts.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn plain_requests_over_h2_reach_the_upstream_as_http11() {
    let echo = echo_upstream().await;
    let (gate, der) = tls_gate(echo.addr, "").await;
    let tcp = TcpStream::connect(gate.addr()).await.unwrap();
    let tls = tls_client(&der, &[b"h2"])
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("https://localhost/private/poll?x=1")
        .header("authorization", basic("alice", "pw-alice"))
        .body(Empty::new())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-seen-auth-user"], "alice");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"plain:/private/poll?x=1");
    let seen = echo.last();
    assert_eq!(seen.header("host"), Some("localhost"));
    assert_eq!(seen.header("authorization"), None);
}

#[tokio::test]
async fn a_stalled_stream_does_not_stall_the_others_and_closing_one_leaves_them_open() {
    let echo = echo_upstream().await;
    let (gate, der) = tls_gate(echo.addr, "").await;
    let mut h2 = h2_connect(gate.addr(), &der).await;
    let stalled = open(&mut h2, "/ws/stalled", &[]).await;
    let mut b = open(&mut h2, "/ws/b", &[]).await;
    let mut c = open(&mut h2, "/ws/c", &[]).await;

    // `stalled` sends far more than every window and buffer on the way can hold and never
    // reads its echoes: the upstream's writes back block, then its reads, then the gateway's.
    let (mut tx, rx) = stalled.split();
    let pushed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let pushed2 = pushed.clone();
    let writer = tokio::spawn(async move {
        let chunk = Bytes::from(vec![7u8; 64 * 1024]);
        for _ in 0..1024 {
            if tx.send(Message::binary(chunk.clone())).await.is_err() {
                return;
            }
            pushed2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    // Wait until the writer is blocked (no progress for a while).
    let mut last = usize::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = pushed.load(std::sync::atomic::Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    assert!(
        last < 1024,
        "64 MiB went through without anyone reading: nothing pushed back"
    );
    for round in 0..20 {
        echo_roundtrip(&mut b, &format!("b{round}")).await;
        echo_roundtrip(&mut c, &format!("c{round}")).await;
    }
    b.close(None).await.unwrap();
    assert_eq!(close_of(&mut b).await, None);
    assert_eq!(
        wait_metric(&gate, "wsgate_connections_active{route=\"/ws\"}", 2.0).await,
        2.0
    );
    echo_roundtrip(&mut c, "c after b closed").await;
    let d = open(&mut h2, "/ws/d", &[]).await;
    drop((d, rx, writer));
}

async fn admin(gate: &Gate, method: &str, path: &str, body: &str) -> (u16, String) {
    let (status, _, body) = http_request(
        gate.admin.unwrap(),
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    (status, body)
}

#[tokio::test]
async fn admin_push_and_kick_reach_h2_tunnels() {
    let echo = echo_upstream().await;
    let (gate, der) = tls_gate(echo.addr, "").await;
    let mut h2 = h2_connect(gate.addr(), &der).await;
    let auth = basic("alice", "pw-alice");
    let mut a = open(&mut h2, "/private/a", &[("authorization", &auth)]).await;
    let mut other = open(&mut h2, "/ws/other", &[]).await;
    echo_roundtrip(&mut a, "hi").await;

    let (status, body) = admin(
        &gate,
        "POST",
        "/users/alice/messages",
        r#"{"text":"pushed"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let got = tokio::time::timeout(Duration::from_secs(5), a.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, Message::text("pushed"));

    let (status, body) = admin(&gate, "DELETE", "/users/alice", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(close_of(&mut a).await, Some((4000, "kicked".into())));
    assert_eq!(
        wait_metric(
            &gate,
            "wsgate_connections_closed_total{reason=\"kicked\",route=\"/private\"}",
            1.0
        )
        .await,
        1.0
    );
    echo_roundtrip(&mut other, "the kick closed one stream only").await;
}

#[tokio::test]
async fn http2_can_be_turned_off_per_listener() {
    let echo = echo_upstream().await;
    let (gate, der) = tls_gate(echo.addr, "    http2:\n      enabled: false").await;
    let tcp = TcpStream::connect(gate.addr()).await.unwrap();
    let res = tls_client(&der, &[b"h2"])
        .connect("localhost".try_into().unwrap(), tcp)
        .await;
    assert!(res.is_err(), "h2 negotiated on a listener with http2 off");
    let tcp = TcpStream::connect(gate.addr()).await.unwrap();
    let tls = tls_client(&der, &[b"h2", b"http/1.1"])
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[tokio::test]
async fn max_concurrent_streams_is_advertised() {
    let echo = echo_upstream().await;
    let (gate, der) = tls_gate(echo.addr, "    http2:\n      max_concurrent_streams: 2").await;
    let mut h2 = h2_connect(gate.addr(), &der).await;
    let a = open(&mut h2, "/ws/a", &[]).await;
    let mut b = open(&mut h2, "/ws/b", &[]).await;
    // A third stream waits for a free slot (the client honours the server's limit).
    let mut h2b = h2.clone();
    let third = tokio::spawn(async move { open(&mut h2b, "/ws/c", &[]).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "a third stream opened past the limit");
    assert_eq!(
        gate.metric("wsgate_connections_active{route=\"/ws\"}")
            .await,
        2.0
    );
    drop(a);
    let mut c = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the third stream never opened")
        .unwrap();
    echo_roundtrip(&mut c, "c").await;
    echo_roundtrip(&mut b, "b").await;
}

#[tokio::test]
async fn each_h2_websocket_counts_toward_the_connection_limits() {
    // A WebSocket costs an upstream socket whichever protocol carried it: on HTTP/2 each
    // stream takes a slot of its own, or one connection would carry max_concurrent_streams
    // tunnels past both limits.
    let echo = echo_upstream().await;
    let (gate, der) = tls_gate_with(
        echo.addr,
        "",
        "limits:\n  max_connections_per_ip: 3\n  handshake_rate_per_ip: 0",
    )
    .await;
    let mut h2 = h2_connect(gate.addr(), &der).await;
    let a = open(&mut h2, "/ws/a", &[]).await;
    let mut b = open(&mut h2, "/ws/b", &[]).await;
    let (parts, ws) = h2_ws(&mut h2, "/ws/c", &[]).await;
    assert!(ws.is_none());
    assert_eq!(parts.status, StatusCode::TOO_MANY_REQUESTS);
    drop(a);
    assert_eq!(
        wait_metric(&gate, "wsgate_connections_active{route=\"/ws\"}", 1.0).await,
        1.0
    );
    let mut c = open(&mut h2, "/ws/c", &[]).await;
    echo_roundtrip(&mut c, "c").await;
    echo_roundtrip(&mut b, "b").await;

    let echo = echo_upstream().await;
    let (gate, der) = tls_gate_with(echo.addr, "", "limits:\n  max_connections: 2").await;
    let mut h2 = h2_connect(gate.addr(), &der).await;
    let mut a = open(&mut h2, "/ws/a", &[]).await;
    let (parts, ws) = h2_ws(&mut h2, "/ws/b", &[]).await;
    assert!(ws.is_none());
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    echo_roundtrip(&mut a, "a").await;
}

#[tokio::test]
async fn connect_for_anything_but_a_websocket_is_refused() {
    let echo = echo_upstream().await;
    let (gate, der) = tls_gate(echo.addr, "").await;
    let mut h2 = h2_connect(gate.addr(), &der).await;
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri("https://localhost/ws")
        .header("sec-websocket-version", "13")
        .extension(hyper::ext::Protocol::from_static("connect-udp"))
        .body(Empty::new())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(echo.count(), 0, "never forwarded");
}

#[tokio::test]
async fn drain_closes_h2_tunnels_with_1001() {
    let echo = echo_upstream().await;
    let (mut gate, der) = tls_gate_with(echo.addr, "", "shutdown:\n  drain_timeout: 1s").await;
    let mut h2 = h2_connect(gate.addr(), &der).await;
    let mut a = open(&mut h2, "/ws/a", &[]).await;
    echo_roundtrip(&mut a, "a").await;
    gate.shutdown();
    let code = close_of(&mut a).await.map(|(c, _)| c);
    assert_eq!(code, Some(1001));
    tokio::time::timeout(Duration::from_secs(5), &mut gate.task)
        .await
        .expect("the gateway did not finish draining")
        .unwrap();
}

/// RFC 9113 §8.2.3: HTTP/2 clients may split `Cookie` into one field per cookie; before an
/// HTTP/1.1 hop they are joined with "; " into one header (HTTP/1.1 allows only one).
#[tokio::test]
async fn h2_cookie_crumbs_reach_the_http11_upstream_as_one_cookie_header() {
    let echo = echo_upstream().await;
    let (gate, der) = tls_gate(echo.addr, "").await;
    let mut h2 = h2_connect(gate.addr(), &der).await;
    let mut ws = open(
        &mut h2,
        "/ws/cookies",
        &[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")],
    )
    .await;
    echo_roundtrip(&mut ws, "crumbs").await;
    assert_eq!(echo.last().all("cookie"), ["a=1; b=2; c=3"]);
}
