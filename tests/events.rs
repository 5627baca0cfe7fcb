//! Connection events: the per-route webhook and `GET /events` (Server-Sent Events).
// Real sockets and a real receiver: deadlines here are wall-clock on purpose.
#![allow(clippy::disallowed_types)]
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// What the test receiver saw of one POST.
#[derive(Debug)]
struct Delivery {
    method: String,
    path: String,
    content_type: Option<String>,
    body: Value,
}

/// A real HTTP server (hyper) that answers every request with `status` and reports each
/// request it got; `hits` counts requests, answered or not.
async fn receiver(
    status: u16,
) -> (
    SocketAddr,
    mpsc::UnboundedReceiver<Delivery>,
    Arc<AtomicUsize>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let hits = Arc::new(AtomicUsize::new(0));
    let hits2 = hits.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            let hits = hits2.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        let hits = hits.clone();
                        async move {
                            hits.fetch_add(1, Ordering::SeqCst);
                            let method = req.method().to_string();
                            let path = req.uri().to_string();
                            let content_type = req
                                .headers()
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned);
                            let bytes = req.into_body().collect().await.unwrap().to_bytes();
                            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                            let _ = tx.send(Delivery {
                                method,
                                path,
                                content_type,
                                body,
                            });
                            let mut resp = http::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from_static(b"ok"),
                            ));
                            *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, rx, hits)
}

/// A receiver that accepts connections and never reads or answers.
async fn black_hole() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    addr
}

async fn next_delivery(rx: &mut mpsc::UnboundedReceiver<Delivery>) -> Delivery {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("no webhook delivery within 5 s")
        .expect("receiver gone")
}

fn gate_yaml(routes: &str, extra: &str) -> String {
    format!(
        "listeners:\n  - bind: \"127.0.0.1:0\"\nadmin:\n  bind: \"127.0.0.1:0\"\nroutes:\n{routes}{extra}"
    )
}

const JWT_AUTH: &str = "auth:\n  tokens:\n    type: jwt\n    algorithms: [HS256]\n    secret: \"${WSGATE_JWT_SECRET}\"\n";

/// Closes from the client side and waits for the end of the stream.
async fn client_close(mut ws: Ws) {
    let _ = ws.close(None).await;
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
}

fn assert_rfc3339_utc(v: &Value) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("`at` is not a string: {v}"));
    assert!(s.ends_with('Z'), "not UTC: {s}");
    humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("not RFC 3339: {s}: {e}"));
}

#[tokio::test]
async fn webhook_gets_connected_then_disconnected() {
    tokio::time::timeout(Duration::from_secs(10), async {
        let up = echo_upstream().await;
        let (hook, mut rx, _) = receiver(200).await;
        let routes = format!(
            "  - path: /ws\n    upstream: ws://{}\n    auth: [tokens]\n    events:\n      webhook: http://{hook}/hooks/ws?src=gate\n",
            up.addr
        );
        let gate = start_gate(Files::new(), &gate_yaml(&routes, JWT_AUTH)).await;
        let token = jwt(serde_json::json!({"sub": "alice"}));
        let (mut ws, _) = ws_connect(&gate.ws_url(&format!("/ws?token={token}")), &[])
            .await
            .unwrap();
        let connected = next_delivery(&mut rx).await;
        assert_eq!(connected.method, "POST");
        assert_eq!(connected.path, "/hooks/ws?src=gate");
        assert_eq!(connected.content_type.as_deref(), Some("application/json"));
        let c = &connected.body;
        assert_eq!(c["event"], "connected", "{c}");
        assert_eq!(c["route"], "/ws");
        assert_eq!(c["user"], "alice");
        assert_eq!(c["client"], "127.0.0.1");
        assert!(c["id"].as_u64().is_some(), "{c}");
        assert_rfc3339_utc(&c["at"]);

        echo_roundtrip(&mut ws, "hello").await;
        client_close(ws).await;
        let d = next_delivery(&mut rx).await.body;
        assert_eq!(d["event"], "disconnected", "{d}");
        assert_eq!(d["id"], c["id"]);
        assert_eq!(d["route"], "/ws");
        assert_eq!(d["user"], "alice");
        assert_eq!(d["client"], "127.0.0.1");
        assert_eq!(d["reason"], "client", "{d}");
        assert!(d["duration_ms"].as_u64().is_some(), "{d}");
        assert_rfc3339_utc(&d["at"]);
        // The same counts the byte metrics give for the route's only tunnel.
        let bytes_in = gate
            .metric("wsgate_bytes_total{direction=\"client_to_upstream\",route=\"/ws\"}")
            .await;
        let bytes_out = gate
            .metric("wsgate_bytes_total{direction=\"upstream_to_client\",route=\"/ws\"}")
            .await;
        assert!(bytes_in >= 11.0 && bytes_out >= 7.0, "{bytes_in} {bytes_out}");
        assert_eq!(d["bytes_in"].as_f64(), Some(bytes_in), "{d}");
        assert_eq!(d["bytes_out"].as_f64(), Some(bytes_out), "{d}");
        assert_eq!(
            gate.metric("wsgate_events_dropped_total{reason=\"delivery_failed\"}")
                .await,
            0.0
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn anonymous_user_is_null_and_routes_without_webhook_post_nothing() {
    tokio::time::timeout(Duration::from_secs(10), async {
        let up = echo_upstream().await;
        let (hook, mut rx, hits) = receiver(200).await;
        let routes = format!(
            "  - path: /quiet\n    upstream: ws://{up}\n  - path: /open\n    upstream: ws://{up}\n    events:\n      webhook: http://{hook}/\n",
            up = up.addr
        );
        let gate = start_gate(Files::new(), &gate_yaml(&routes, "")).await;
        let (mut ws, _) = ws_connect(&gate.ws_url("/quiet"), &[]).await.unwrap();
        echo_roundtrip(&mut ws, "x").await;
        client_close(ws).await;
        let (ws, _) = ws_connect(&gate.ws_url("/open"), &[]).await.unwrap();
        let c = next_delivery(&mut rx).await.body;
        assert_eq!(c["route"], "/open", "the route without a webhook posted: {c}");
        assert!(c["user"].is_null(), "{c}");
        assert!(c.get("user").is_some(), "user is present (null): {c}");
        client_close(ws).await;
        next_delivery(&mut rx).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn failing_webhook_is_retried_then_counted_as_dropped() {
    tokio::time::timeout(Duration::from_secs(10), async {
        let up = echo_upstream().await;
        let (hook, _rx, hits) = receiver(500).await;
        let routes = format!(
            "  - path: /ws\n    upstream: ws://{}\n    events:\n      webhook: http://{hook}/\n",
            up.addr
        );
        let gate = start_gate(Files::new(), &gate_yaml(&routes, "")).await;
        let series = "wsgate_events_dropped_total{reason=\"delivery_failed\"}";
        assert_eq!(gate.metric(series).await, 0.0);
        let (ws, _) = ws_connect(&gate.ws_url("/ws"), &[]).await.unwrap();
        assert_eq!(wait_metric(&gate, series, 1.0).await, 1.0);
        assert_eq!(
            hits.load(Ordering::SeqCst),
            3,
            "three attempts, then dropped"
        );
        client_close(ws).await;
        assert_eq!(wait_metric(&gate, series, 2.0).await, 2.0);
        assert_eq!(hits.load(Ordering::SeqCst), 6);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn dead_webhook_never_delays_handshakes_or_the_splice() {
    tokio::time::timeout(Duration::from_secs(10), async {
        let up = echo_upstream().await;
        let hole = black_hole().await;
        let routes = format!(
            "  - path: /ws\n    upstream: ws://{}\n    events:\n      webhook: http://{hole}/\n      timeout: 30s\n",
            up.addr
        );
        let gate = start_gate(Files::new(), &gate_yaml(&routes, "")).await;
        // Each event waits on a receiver that never answers (30 s each): any coupling with
        // the tunnels would blow the test's 10 s.
        for i in 0..30 {
            let (mut ws, _) = ws_connect(&gate.ws_url("/ws"), &[]).await.unwrap();
            echo_roundtrip(&mut ws, &format!("m{i}")).await;
            client_close(ws).await;
        }
        let (mut a, _) = ws_connect(&gate.ws_url("/ws"), &[]).await.unwrap();
        let (mut b, _) = ws_connect(&gate.ws_url("/ws"), &[]).await.unwrap();
        echo_roundtrip(&mut a, "a").await;
        echo_roundtrip(&mut b, "b").await;
    })
    .await
    .expect("a dead webhook delayed the gateway");
}

#[tokio::test]
async fn full_webhook_queue_drops_and_counts() {
    tokio::time::timeout(Duration::from_secs(10), async {
        let up = echo_upstream().await;
        let hole = black_hole().await;
        let routes = format!(
            "  - path: /ws\n    upstream: ws://{}\n    events:\n      webhook: http://{hole}/\n      timeout: 30s\n      queue: 2\n",
            up.addr
        );
        let gate = start_gate(Files::new(), &gate_yaml(&routes, "")).await;
        // 1 in flight + 2 queued; the 4 others are dropped.
        for _ in 0..7 {
            let (ws, _) = ws_connect(&gate.ws_url("/ws"), &[]).await.unwrap();
            drop(ws);
        }
        let series = "wsgate_events_dropped_total{reason=\"queue_full\"}";
        // Each connection makes two events; how many disconnects fit depends on timing,
        // so wait for the total to settle at its bound: 14 events − 3 held.
        assert_eq!(wait_metric(&gate, series, 11.0).await, 11.0);
    })
    .await
    .expect("test timed out");
}

/// Reads one SSE stream over a raw socket.
struct Sse {
    s: TcpStream,
    buf: String,
}

impl Sse {
    async fn open(admin: SocketAddr, target: &str, extra: &str) -> (u16, String, Sse) {
        let mut s = TcpStream::connect(admin).await.unwrap();
        s.write_all(format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let pos = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
                .await
                .expect("no response head")
                .unwrap();
            assert!(n > 0, "closed before the head");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..pos]).to_string();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let rest = String::from_utf8_lossy(&buf[pos + 4..]).to_string();
        (status, head, Sse { s, buf: rest })
    }

    /// The next event (name, data JSON), skipping comments; `None` at the end of the stream.
    async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut name = None;
                let mut data = None;
                for line in block.lines() {
                    if let Some(n) = line.strip_prefix("event: ") {
                        name = Some(n.to_string());
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(d).unwrap());
                    }
                }
                if let (Some(n), Some(d)) = (name, data) {
                    return Some((n, d));
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut chunk))
                .await
                .expect("no event within 5 s")
                .ok()?;
            if n == 0 {
                return None;
            }
            // Chunked transfer coding: size lines sit alone between events, so they never
            // look like `event:`/`data:` lines.
            self.buf
                .push_str(&String::from_utf8_lossy(&chunk[..n]).replace("\r\n", "\n"));
        }
    }
}

#[tokio::test]
async fn sse_stream_shows_both_events_and_filters_by_route() {
    tokio::time::timeout(Duration::from_secs(10), async {
        let up = echo_upstream().await;
        let routes = format!(
            "  - path: /a\n    upstream: ws://{up}\n  - path: /b\n    upstream: ws://{up}\n",
            up = up.addr
        );
        let gate = start_gate(Files::new(), &gate_yaml(&routes, "")).await;
        let admin = gate.admin.unwrap();
        let (status, head, mut all) = Sse::open(admin, "/events", "").await;
        assert_eq!(status, 200, "{head}");
        assert_eq!(
            head_header(&head, "content-type").as_deref(),
            Some("text/event-stream")
        );
        let (_, _, mut only_b) = Sse::open(admin, "/events?route=%2Fb", "").await;

        let (mut ws, _) = ws_connect(&gate.ws_url("/a"), &[]).await.unwrap();
        echo_roundtrip(&mut ws, "hi").await;
        client_close(ws).await;
        let (ws, _) = ws_connect(&gate.ws_url("/b"), &[]).await.unwrap();
        client_close(ws).await;

        let (name, c) = all.next().await.unwrap();
        assert_eq!(
            (name.as_str(), &c["event"], &c["route"]),
            ("connected", &"connected".into(), &"/a".into())
        );
        assert!(c["user"].is_null());
        let (name, d) = all.next().await.unwrap();
        assert_eq!(name, "disconnected");
        assert_eq!(d["id"], c["id"]);
        assert_eq!(d["reason"], "client");
        assert!(d["bytes_in"].as_u64().unwrap() >= 8, "{d}");
        assert_eq!(all.next().await.unwrap().1["route"], "/b");

        let (name, b) = only_b.next().await.unwrap();
        assert_eq!(
            (name.as_str(), b["route"].as_str()),
            ("connected", Some("/b"))
        );
        let (name, b) = only_b.next().await.unwrap();
        assert_eq!(
            (name.as_str(), b["route"].as_str()),
            ("disconnected", Some("/b"))
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn sse_is_guarded_capped_and_ends_with_the_admin_listener() {
    tokio::time::timeout(Duration::from_secs(10), async {
        let up = echo_upstream().await;
        let routes = format!("  - path: /ws\n    upstream: ws://{}\n", up.addr);
        let extra = "shutdown:\n  drain_timeout: 200ms\n";
        let mut gate = start_gate(Files::new(), &gate_yaml(&routes, extra)).await;
        let admin = gate.admin.unwrap();
        let (status, _, _) = Sse::open(admin, "/events", "Origin: http://evil.example\r\n").await;
        assert_eq!(status, 403, "a browser page must not follow presence");
        let (status, _, _) = Sse::open(admin, "/events", "Host: evil.example\r\n").await;
        assert_eq!(status, 403, "DNS rebinding");
        let (status, _, _) = Sse::open(admin, "/events?route=", "").await;
        assert_eq!(status, 400);

        // Half the admin connections at most (default 16): scrapes keep their slots.
        let mut streams = Vec::new();
        for _ in 0..8 {
            let (status, _, s) = Sse::open(admin, "/events", "").await;
            assert_eq!(status, 200);
            streams.push(s);
        }
        let (status, _, _) = Sse::open(admin, "/events", "").await;
        assert_eq!(status, 503, "subscriber cap");
        assert_eq!(gate.admin_get("/healthz").await.0, 200);
        let mut s = streams.pop().unwrap();
        drop(streams);
        // A freed slot is reusable (the cap counts open streams, not requests).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, _, _) = Sse::open(admin, "/events", "").await;
        assert_eq!(status, 200);

        // A tunnel the drain deadline closes: its disconnect still reaches the stream,
        // then the stream ends.
        let (ws, _) = ws_connect(&gate.ws_url("/ws"), &[]).await.unwrap();
        assert_eq!(s.next().await.unwrap().0, "connected");
        gate.shutdown();
        let (name, d) = s.next().await.expect("stream ended before the disconnect");
        assert_eq!(
            (name.as_str(), d["reason"].as_str()),
            ("disconnected", Some("shutdown"))
        );
        assert!(s.next().await.is_none(), "stream did not end");
        drop(ws);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn webhook_urls_are_checked_at_load() {
    let cases = [
        ("ftp://h/x", "routes[0].events.webhook"),
        ("http://", "routes[0].events.webhook"),
        ("http://user:pw@h/", "routes[0].events.webhook"),
        ("hook.example/x", "routes[0].events.webhook"),
    ];
    for (url, path) in cases {
        let yaml = gate_yaml(
            &format!(
                "  - path: /ws\n    upstream: ws://127.0.0.1:1\n    events:\n      webhook: \"{url}\"\n"
            ),
            "",
        );
        let err = wsgate::config::parse_str(
            &yaml,
            std::path::Path::new("t.yaml"),
            std::path::Path::new("."),
            &|_| None,
        )
        .err()
        .unwrap_or_else(|| panic!("{url} accepted"))
        .to_string();
        assert!(err.starts_with(path), "{url}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            !err.contains("pw"),
            "a password in the URL is echoed: {err}"
        );
    }
    for (events, want) in [
        ("{timeout: 2s}", "routes[0].events.webhook: required"),
        (
            "{webhook: \"http://h/\", ca: ca.pem}",
            "routes[0].events.ca: ",
        ),
        (
            "{webhook: \"http://h/\", queue: 0}",
            "routes[0].events.queue: ",
        ),
    ] {
        let yaml = gate_yaml(
            &format!("  - path: /ws\n    upstream: ws://127.0.0.1:1\n    events: {events}\n"),
            "",
        );
        let err = wsgate::config::parse_str(
            &yaml,
            std::path::Path::new("t.yaml"),
            std::path::Path::new("."),
            &|_| None,
        )
        .err()
        .unwrap_or_else(|| panic!("{events} accepted"))
        .to_string();
        assert!(err.starts_with(want), "{events}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    let yaml = gate_yaml(
        "  - path: /ws\n    upstream: ws://127.0.0.1:1\n    events:\n      webhook: https://[::1]:8443/hook\n      timeout: 2s\n",
        "",
    );
    wsgate::config::parse_str(
        &yaml,
        std::path::Path::new("t.yaml"),
        std::path::Path::new("."),
        &|_| None,
    )
    .unwrap();
}

#[tokio::test]
async fn a_reload_brings_webhooks_to_new_connections() {
    tokio::time::timeout(Duration::from_secs(10), async {
        let up = echo_upstream().await;
        let (hook, mut rx, hits) = receiver(200).await;
        let plain = format!("  - path: /ws\n    upstream: ws://{}\n", up.addr);
        let gate = start_gate(Files::new(), &gate_yaml(&plain, "")).await;
        let (before, _) = ws_connect(&gate.ws_url("/ws"), &[]).await.unwrap();
        let hooked = format!("{plain}    events:\n      webhook: http://{hook}/\n");
        let config = wsgate::config::parse_str(
            &gate_yaml(&hooked, ""),
            std::path::Path::new("t.yaml"),
            std::path::Path::new("."),
            &|_| None,
        )
        .unwrap();
        gate.reloader.reload(config).unwrap();
        let (after, _) = ws_connect(&gate.ws_url("/ws"), &[]).await.unwrap();
        let c = next_delivery(&mut rx).await.body;
        assert_eq!(c["event"], "connected");
        client_close(before).await;
        client_close(after).await;
        let d = next_delivery(&mut rx).await.body;
        assert_eq!((&d["event"], &d["id"]), (&"disconnected".into(), &c["id"]));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            hits.load(Ordering::SeqCst),
            2,
            "the connection opened before the reload keeps its old (webhook-less) route"
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn the_drains_disconnects_reach_the_webhook_before_exit() {
    tokio::time::timeout(Duration::from_secs(10), async {
        let up = echo_upstream().await;
        let (hook, mut rx, _) = receiver(200).await;
        let routes = format!(
            "  - path: /ws\n    upstream: ws://{}\n    events:\n      webhook: http://{hook}/\n",
            up.addr
        );
        let extra = "shutdown:\n  drain_timeout: 100ms\n";
        let mut gate = start_gate(Files::new(), &gate_yaml(&routes, extra)).await;
        let (ws, _) = ws_connect(&gate.ws_url("/ws"), &[]).await.unwrap();
        assert_eq!(next_delivery(&mut rx).await.body["event"], "connected");
        gate.shutdown();
        (&mut gate.task).await.unwrap();
        let d = rx
            .try_recv()
            .expect("run() returned before the last event was delivered");
        assert_eq!(
            (d.body["event"].as_str(), d.body["reason"].as_str()),
            (Some("disconnected"), Some("shutdown"))
        );
        drop(ws);
    })
    .await
    .expect("test timed out");
}

#[test]
fn a_cleartext_webhook_off_this_host_is_warned_about() {
    let load = |url: &str| {
        let yaml = gate_yaml(
            &format!(
                "  - path: /ws\n    upstream: ws://127.0.0.1:1\n    events:\n      webhook: \"{url}\"\n"
            ),
            "",
        );
        let c = wsgate::config::parse_str(
            &yaml,
            std::path::Path::new("t.yaml"),
            std::path::Path::new("."),
            &|_| None,
        )
        .unwrap();
        wsgate::config::warnings(&c)
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    };
    let w = load("http://hooks.example/in?key=s3cret");
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].starts_with("routes[0].events.webhook: "), "{w:?}");
    assert!(
        !w[0].contains("s3cret"),
        "the warning shows the secret: {w:?}"
    );
    for quiet in [
        "https://hooks.example/in",
        "http://127.0.0.1:8000/",
        "http://localhost/",
        "http://[::1]/",
    ] {
        assert!(load(quiet).is_empty(), "{quiet}: {:?}", load(quiet));
    }
}
