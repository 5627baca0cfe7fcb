//! Upstream failures, client failures, routing, handshake checks, header forwarding and the
//! splice, all over real sockets against a real gateway.
// Real sockets against a running gateway: deadlines here are wall-clock on purpose.
#![allow(clippy::disallowed_types)]
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

// ---------------------------------------------------------------------------------------
// helpers (local to this file)
// ---------------------------------------------------------------------------------------

/// YAML for a gateway on 127.0.0.1:0 with an admin listener and the given routes.
fn config(routes: &[(&str, SocketAddr)], connect: &str, response: &str) -> String {
    let mut y = String::from(
        "listeners:\n  - bind: \"127.0.0.1:0\"\nadmin:\n  bind: \"127.0.0.1:0\"\nroutes:\n",
    );
    for (path, addr) in routes {
        y.push_str(&format!("  - path: {path}\n    upstream: ws://{addr}\n"));
    }
    y.push_str(&format!(
        "timeouts:\n  upstream_connect: {connect}\n  upstream_response: {response}\n"
    ));
    y
}

/// A gateway with 1s upstream timeouts.
async fn gate(routes: &[(&str, SocketAddr)]) -> Gate {
    start_gate(Files::new(), &config(routes, "1s", "1s")).await
}

fn handshakes(outcome: &str, route: &str) -> String {
    format!("wsgate_handshakes_total{{outcome=\"{outcome}\",route=\"{route}\"}}")
}

fn active(route: &str) -> String {
    format!("wsgate_connections_active{{route=\"{route}\"}}")
}

fn bytes(direction: &str, route: &str) -> String {
    format!("wsgate_bytes_total{{direction=\"{direction}\",route=\"{route}\"}}")
}

/// Reads a request head (through the blank line) and a Content-Length body, if any.
async fn read_request(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let pos = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..pos + 4]).to_string();
    let mut body = buf[pos + 4..].to_vec();
    let len = head_header(&head, "content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    while body.len() < len {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    Some((head, body))
}

/// A hand-written 101 answering `head` (accept key computed from its Sec-WebSocket-Key).
fn switching(head: &str, extra: &str) -> String {
    let key = head_header(head, "sec-websocket-key").expect("no key reached the upstream");
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{extra}\r\n",
        derive_accept_key(key.as_bytes())
    )
}

/// Reads from `s` until EOF (or 5 s).
async fn read_to_eof(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    out
}

/// Opens a tunnel on `path` and checks one echo.
async fn check_echo(gate: &Gate, path: &str) {
    let (mut ws, _) = ws_connect(&gate.ws_url(path), &[])
        .await
        .unwrap_or_else(|e| panic!("connect {path}: {e}"));
    echo_roundtrip(&mut ws, "still working").await;
    ws.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
}

/// Sends a raw upgrade request; (status, head, body).
async fn raw_upgrade(gate: &Gate, path: &str, extra: &str) -> (u16, String, String) {
    http_request(gate.addr(), &upgrade_request(path, extra)).await
}

/// Sends a raw upgrade request, reads the refusal, then checks that the gateway really
/// closes the connection (as its `Connection: close` says); (status, head, body).
async fn refused_and_closed(gate: &Gate, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(gate.addr()).await.unwrap();
    s.write_all(upgrade_request(path, "").as_bytes())
        .await
        .unwrap();
    let (status, head, body) = read_response(&mut s).await;
    assert_eq!(
        head_header(&head, "connection").as_deref(),
        Some("close"),
        "{head}"
    );
    let mut b = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(2), s.read(&mut b)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "connection left open after a refusal: {r:?}"
    );
    (status, head, body)
}

// ---------------------------------------------------------------------------------------
// upstream failures
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn upstream_down_is_502_with_connection_close() {
    let dead = dead_addr().await;
    let gate = gate(&[("/ws", dead)]).await;
    let (status, head, body) = refused_and_closed(&gate, "/ws").await;
    assert_eq!(status, 502, "head: {head}");
    assert!(!body.is_empty(), "refusals carry a short body");
    assert_eq!(
        wait_metric(&gate, &handshakes("upstream_error", "/ws"), 1.0).await,
        1.0
    );
    // tungstenite sees the same refusal.
    let err = ws_connect(&gate.ws_url("/ws"), &[]).await.unwrap_err();
    assert_eq!(refused_status(err), 502);
}

#[tokio::test]
async fn silent_upstream_is_504() {
    // Accepts TCP, reads the request, never answers.
    let silent = spawn_upstream(|mut s| async move {
        let _ = read_request(&mut s).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let gate = gate(&[("/ws", silent)]).await;
    let started = Instant::now();
    let (status, head, _) = raw_upgrade(&gate, "/ws", "").await;
    let took = started.elapsed();
    assert_eq!(status, 504, "head: {head}");
    assert_eq!(head_header(&head, "connection").as_deref(), Some("close"));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "504 after {took:?}, upstream_response is 1s"
    );
    assert_eq!(
        wait_metric(&gate, &handshakes("timeout", "/ws"), 1.0).await,
        1.0
    );
}

#[tokio::test]
async fn connect_that_cannot_complete_is_504() {
    // A listener with a full accept queue: further SYNs are dropped (Linux, BSDs), so a
    // connect hangs instead of being refused. Verify that before relying on it.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    let mut hangs = false;
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fillers.push(s),
            Ok(Err(e)) => {
                eprintln!("skipping: connect to a full backlog failed fast: {e}");
                return;
            }
            Err(_) => {
                hangs = true;
                break;
            }
        }
    }
    if !hangs {
        eprintln!("skipping: could not make a connect hang on this platform");
        return;
    }
    let gate = gate(&[("/ws", addr)]).await;
    let started = Instant::now();
    let (status, head, _) = raw_upgrade(&gate, "/ws", "").await;
    let took = started.elapsed();
    assert_eq!(status, 504, "head: {head}");
    assert!(took < Duration::from_secs(4), "504 after {took:?}");
    assert_eq!(
        wait_metric(&gate, &handshakes("timeout", "/ws"), 1.0).await,
        1.0
    );
    drop(listener);
    drop(fillers);
}

#[tokio::test]
async fn upstream_refusal_status_body_and_headers_pass_through() {
    let up = raw_upstream(
        b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 15\r\nX-Reason: banned-user\r\n\r\nyou are banned\n",
    )
    .await;
    let gate = gate(&[("/ws", up)]).await;
    let (status, head, body) = refused_and_closed(&gate, "/ws").await;
    assert_eq!(status, 403, "head: {head}");
    assert_eq!(body, "you are banned\n");
    assert_eq!(
        head_header(&head, "x-reason").as_deref(),
        Some("banned-user")
    );
    assert_eq!(head_header(&head, "connection").as_deref(), Some("close"));
    assert_eq!(
        wait_metric(&gate, &handshakes("upstream_rejected", "/ws"), 1.0).await,
        1.0
    );
    assert_eq!(gate.metric(&handshakes("upstream_error", "/ws")).await, 0.0);
}

/// An upstream that reads the request and answers `response`, then closes.
async fn answer_then_close(response: &'static [u8]) -> SocketAddr {
    spawn_upstream(move |mut s| async move {
        if read_request(&mut s).await.is_some() {
            let _ = s.write_all(response).await;
        }
    })
    .await
}

#[tokio::test]
async fn upstream_refusal_bodies_in_every_framing_reach_the_client() {
    // Chunked with an extension and a trailer; framed by the close; no body; one too big.
    let chunked = raw_upstream(
        b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\nWWW-Authenticate: Bearer\r\n\r\n4\r\nlog \r\n3;ext=1\r\nin \r\n6\r\nfirst\n\r\n0\r\nX-Trailer: t\r\n\r\n",
    )
    .await;
    let eof = answer_then_close(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\r\nbusy, retry\n",
    )
    .await;
    let empty = raw_upstream(b"HTTP/1.1 204 No Content\r\nX-Why: nothing\r\n\r\n").await;
    let big = spawn_upstream(|mut s| async move {
        if read_request(&mut s).await.is_some() {
            let mut out = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 70000\r\n\r\n".to_vec();
            out.resize(out.len() + 70_000, b'x');
            let _ = s.write_all(&out).await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    })
    .await;
    let gate = gate(&[
        ("/chunked", chunked),
        ("/eof", eof),
        ("/empty", empty),
        ("/big", big),
    ])
    .await;

    let (status, head, body) = refused_and_closed(&gate, "/chunked").await;
    assert_eq!(status, 401, "{head}");
    assert_eq!(body, "log in first\n");
    assert_eq!(
        head_header(&head, "www-authenticate").as_deref(),
        Some("Bearer")
    );
    assert_eq!(
        head_header(&head, "content-length").as_deref(),
        Some("13"),
        "{head}"
    );

    let (status, head, body) = refused_and_closed(&gate, "/eof").await;
    assert_eq!(status, 503, "{head}");
    assert_eq!(body, "busy, retry\n");

    let (status, head, body) = refused_and_closed(&gate, "/empty").await;
    assert_eq!(status, 204, "{head}");
    assert_eq!(head_header(&head, "x-why").as_deref(), Some("nothing"));
    assert_eq!(body, "");
    for path in ["/chunked", "/eof", "/empty"] {
        assert_eq!(
            wait_metric(&gate, &handshakes("upstream_rejected", path), 1.0).await,
            1.0,
            "{path}"
        );
    }

    // A refusal page larger than the gateway relays is the upstream's failure.
    let (status, head, _) = raw_upgrade(&gate, "/big", "").await;
    assert_eq!(status, 502, "{head}");
    assert_eq!(
        wait_metric(&gate, &handshakes("upstream_error", "/big"), 1.0).await,
        1.0
    );
}

#[tokio::test]
async fn interim_answers_are_skipped_and_bytes_behind_the_101_come_first() {
    let up = spawn_upstream(|mut s| async move {
        let Some((head, _)) = read_request(&mut s).await else {
            return;
        };
        // 103, the 101 and a first frame in one write: the frame sits in the gateway's read
        // of the head and must still reach the client, before anything else.
        let mut out = b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n".to_vec();
        out.extend_from_slice(switching(&head, "").as_bytes());
        out.extend_from_slice(&[0x81, 0x05]);
        out.extend_from_slice(b"hello");
        let _ = s.write_all(&out).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
    })
    .await;
    let gate = gate(&[("/ws", up)]).await;
    let (mut ws, resp) = ws_connect(&gate.ws_url("/ws"), &[]).await.unwrap();
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().get("link").is_none(), "{resp:?}");
    let first = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("no frame behind the 101")
        .unwrap()
        .unwrap();
    assert_eq!(first, Message::Text("hello".into()));
}

#[tokio::test]
async fn upstream_garbage_is_502() {
    let text = raw_upstream(b"hello\r\n\r\n").await;
    let binary = raw_upstream(b"\x00\xff\x13\x37garbage\x80\x81\xfe\r\n\r\n\x01\x02").await;
    let gate = gate(&[("/text", text), ("/bin", binary)]).await;
    for path in ["/text", "/bin"] {
        let (status, head, _) = raw_upgrade(&gate, path, "").await;
        assert_eq!(status, 502, "{path}: {head}");
        assert_eq!(head_header(&head, "connection").as_deref(), Some("close"));
        assert_eq!(
            wait_metric(&gate, &handshakes("upstream_error", path), 1.0).await,
            1.0,
            "{path}"
        );
    }
}

/// An upstream that answers 101 and then closes (FIN) or resets (RST) the connection.
async fn upgrade_then_drop(reset: bool) -> SocketAddr {
    spawn_upstream(move |mut s| async move {
        let Some((head, _)) = read_request(&mut s).await else {
            return;
        };
        let _ = s.write_all(switching(&head, "").as_bytes()).await;
        if reset {
            // Give the 101 time to be read before the RST discards anything.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = s.set_zero_linger();
        }
        drop(s);
    })
    .await
}

#[tokio::test]
async fn upstream_closing_right_after_101_ends_the_client() {
    let fin = upgrade_then_drop(false).await;
    let rst = upgrade_then_drop(true).await;
    let gate = gate(&[("/fin", fin), ("/rst", rst)]).await;
    for path in ["/fin", "/rst"] {
        let (mut ws, resp) = ws_connect(&gate.ws_url(path), &[])
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(resp.status(), 101);
        let end = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match ws.next().await {
                    None | Some(Err(_)) => break,
                    Some(Ok(Message::Close(_))) => {}
                    Some(Ok(other)) => panic!("{path}: unexpected {other:?}"),
                }
            }
        })
        .await;
        assert!(end.is_ok(), "{path}: the client's WebSocket hung");
        drop(ws);
        assert_eq!(wait_metric(&gate, &active(path), 0.0).await, 0.0, "{path}");
        assert_eq!(
            gate.metric(&format!("wsgate_connections_total{{route=\"{path}\"}}"))
                .await,
            1.0
        );
    }
}

// ---------------------------------------------------------------------------------------
// clients that vanish
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn client_vanishing_mid_head_harms_nobody() {
    let echo = echo_upstream().await;
    let gate = gate(&[("/ws", echo.addr)]).await;
    for _ in 0..5 {
        let mut s = TcpStream::connect(gate.addr()).await.unwrap();
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: gate.test\r\nConnection: Upg")
            .await
            .unwrap();
        drop(s);
    }
    // The same with a reset instead of a FIN.
    let mut s = TcpStream::connect(gate.addr()).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nUpgrade: web")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.set_zero_linger().unwrap();
    drop(s);
    check_echo(&gate, "/ws").await;
    assert_eq!(wait_metric(&gate, &active("/ws"), 0.0).await, 0.0);
    assert_eq!(echo.count(), 1, "half requests must not reach the upstream");
}

#[tokio::test]
async fn client_vanishing_while_upstream_is_slow_closes_the_upstream_leg() {
    // The upstream reports when it has the request and when its socket sees EOF.
    let (tx, mut rx) = mpsc::unbounded_channel::<&'static str>();
    let tx = Arc::new(tx);
    let slow = spawn_upstream(move |mut s| {
        let tx = tx.clone();
        async move {
            if read_request(&mut s).await.is_none() {
                return;
            }
            let _ = tx.send("request");
            let mut buf = [0u8; 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let _ = tx.send("eof");
        }
    })
    .await;
    let echo = echo_upstream().await;
    // upstream_response is long so that only the client's disappearance can end the wait.
    let gate = start_gate(
        Files::new(),
        &config(&[("/slow", slow), ("/ws", echo.addr)], "1s", "20s"),
    )
    .await;
    let mut client = TcpStream::connect(gate.addr()).await.unwrap();
    client
        .write_all(upgrade_request("/slow", "").as_bytes())
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await;
    assert_eq!(got.ok().flatten(), Some("request"));
    client.shutdown().await.unwrap();
    drop(client);
    let closed_at = Instant::now();

    // Other clients are unaffected meanwhile.
    check_echo(&gate, "/ws").await;
    assert_eq!(gate.metric(&active("/ws")).await, 0.0);
    assert_eq!(gate.metric(&active("/slow")).await, 0.0);

    let eof = tokio::time::timeout(Duration::from_secs(4), rx.recv()).await;
    assert_eq!(
        eof.ok().flatten(),
        Some("eof"),
        "the gateway kept the upstream connection open {:?} after the client left",
        closed_at.elapsed()
    );
    assert_eq!(gate.metric(&active("/slow")).await, 0.0);
}

// ---------------------------------------------------------------------------------------
// routing
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn routing_segments_and_longest_prefix() {
    let ws = echo_upstream().await;
    let a = echo_upstream().await;
    let ab = echo_upstream().await;
    let gate = gate(&[("/websocket", ws.addr), ("/a", a.addr), ("/a/b", ab.addr)]).await;

    let (status, head, _) = raw_upgrade(&gate, "/nowhere", "").await;
    assert_eq!(status, 404, "{head}");
    assert_eq!(head_header(&head, "connection").as_deref(), Some("close"));
    assert_eq!(
        wait_metric(&gate, &handshakes("not_found", "unmatched"), 1.0).await,
        1.0
    );

    let (status, _, _) = raw_upgrade(&gate, "/websocketx", "").await;
    assert_eq!(status, 404, "/websocketx must not match /websocket");
    assert_eq!(
        wait_metric(&gate, &handshakes("not_found", "unmatched"), 2.0).await,
        2.0
    );
    assert_eq!(ws.count(), 0);

    check_echo(&gate, "/websocket/chat").await;
    assert_eq!(ws.count(), 1);
    assert_eq!(ws.last().uri, "/websocket/chat");

    check_echo(&gate, "/a/b/c").await;
    assert_eq!((a.count(), ab.count()), (0, 1), "/a/b/c goes to /a/b");
    assert_eq!(ab.last().uri, "/a/b/c");
    check_echo(&gate, "/a/bc").await;
    assert_eq!((a.count(), ab.count()), (1, 1), "/a/bc goes to /a");
    check_echo(&gate, "/a").await;
    assert_eq!((a.count(), ab.count()), (2, 1));
    assert_eq!(gate.metric(&handshakes("upgraded", "/a/b")).await, 1.0);
    assert_eq!(gate.metric(&handshakes("upgraded", "/a")).await, 2.0);
}

// ---------------------------------------------------------------------------------------
// handshake checks
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_websocket_handshakes_are_refused_before_the_upstream() {
    let echo = echo_upstream().await;
    let gate = gate(&[("/ws", echo.addr)]).await;

    let v8 = "GET /ws HTTP/1.1\r\nHost: gate.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let (status, head, _) = http_request(gate.addr(), v8).await;
    assert_eq!(status, 426, "{head}");
    assert_eq!(
        head_header(&head, "sec-websocket-version").as_deref(),
        Some("13")
    );
    assert_eq!(head_header(&head, "connection").as_deref(), Some("close"));

    let no_key = "GET /ws HTTP/1.1\r\nHost: gate.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let (status, head, _) = http_request(gate.addr(), no_key).await;
    assert_eq!(status, 400, "{head}");
    assert_eq!(head_header(&head, "connection").as_deref(), Some("close"));
    assert_eq!(
        wait_metric(&gate, &handshakes("bad_request", "/ws"), 2.0).await,
        2.0
    );

    for path in ["/ws/../admin", "/ws/%2e%2e/admin", "/ws/./x"] {
        let (status, head, _) = raw_upgrade(&gate, path, "").await;
        assert_eq!(status, 400, "{path}: {head}");
    }
    assert_eq!(
        wait_metric(&gate, &handshakes("bad_request", "unmatched"), 3.0).await,
        3.0
    );
    assert_eq!(
        echo.count(),
        0,
        "refused handshakes must not reach the upstream"
    );
}

#[tokio::test]
async fn subprotocol_negotiation_end_to_end() {
    let echo = echo_upstream().await;
    let gate = gate(&[("/ws", echo.addr)]).await;
    let (mut ws, resp) = ws_connect(
        &gate.ws_url("/ws"),
        &[("Sec-WebSocket-Protocol", "chat, superchat")],
    )
    .await
    .unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
    assert_eq!(resp.headers()["x-upstream"], "echo");
    assert_eq!(
        echo.last().header("sec-websocket-protocol"),
        Some("chat, superchat")
    );
    echo_roundtrip(&mut ws, "hi").await;
}

#[tokio::test]
async fn permessage_deflate_headers_pass_through_untouched() {
    const EXT_REQ: &str = "permessage-deflate; client_max_window_bits";
    const EXT_RESP: &str =
        "permessage-deflate; server_no_context_takeover; client_max_window_bits=10";
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let tx = Arc::new(tx);
    let up = spawn_upstream(move |mut s| {
        let tx = tx.clone();
        async move {
            let Some((head, _)) = read_request(&mut s).await else {
                return;
            };
            let reply = switching(&head, &format!("Sec-WebSocket-Extensions: {EXT_RESP}\r\n"));
            let _ = tx.send(head);
            let _ = s.write_all(reply.as_bytes()).await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    })
    .await;
    let gate = gate(&[("/ws", up)]).await;
    let (status, head, _) = raw_upgrade(
        &gate,
        "/ws",
        &format!("Sec-WebSocket-Extensions: {EXT_REQ}\r\n"),
    )
    .await;
    assert_eq!(status, 101, "{head}");
    assert_eq!(
        head_header(&head, "sec-websocket-extensions").as_deref(),
        Some(EXT_RESP)
    );
    assert_eq!(
        head_header(&head, "sec-websocket-accept"),
        Some(derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="))
    );
    let seen = tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        head_header(&seen, "sec-websocket-key").as_deref(),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );
    assert_eq!(
        head_header(&seen, "sec-websocket-extensions").as_deref(),
        Some(EXT_REQ)
    );
    assert_eq!(
        head_header(&seen, "sec-websocket-version").as_deref(),
        Some("13")
    );
}

// ---------------------------------------------------------------------------------------
// forwarding headers
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn forwarding_headers_on_an_open_route() {
    let echo = echo_upstream().await;
    let gate = gate(&[("/ws", echo.addr)]).await;
    let (mut ws, _) = ws_connect(
        &gate.ws_url("/ws/room?x=1&y=two"),
        &[
            ("X-Forwarded-For", "203.0.113.9"),
            ("X-Auth-User", "mallory"),
        ],
    )
    .await
    .unwrap();
    echo_roundtrip(&mut ws, "hi").await;
    let seen = echo.last();
    assert_eq!(seen.uri, "/ws/room?x=1&y=two");
    assert_eq!(seen.all("x-forwarded-for"), vec!["203.0.113.9, 127.0.0.1"]);
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    let host = gate.addr().to_string();
    assert_eq!(seen.header("x-forwarded-host"), Some(host.as_str()));
    assert_eq!(seen.header("host"), Some(host.as_str()));
    assert_eq!(
        seen.header("x-auth-user"),
        None,
        "client X-Auth-User is removed"
    );
}

#[tokio::test]
async fn forwarded_proto_is_https_on_a_tls_listener() {
    let echo = echo_upstream().await;
    let files = Files::new();
    let der = files.cert("tls");
    let yaml = format!(
        "listeners:\n  - bind: \"127.0.0.1:0\"\n  - bind: \"127.0.0.1:0\"\n    tls:\n      cert: \"{{dir}}/tls.crt\"\n      key: \"{{dir}}/tls.key\"\nroutes:\n  - path: /ws\n    upstream: ws://{}\n",
        echo.addr
    );
    let gate = start_gate(files, &yaml).await;
    let tls_addr = gate.addrs[1];

    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let (mut ws, resp) = tokio_tungstenite::connect_async_tls_with_config(
        format!("wss://{tls_addr}/ws/secure"),
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(Arc::new(client))),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 101);
    echo_roundtrip(&mut ws, "over tls").await;
    let seen = echo.last();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.uri, "/ws/secure");
    let host = tls_addr.to_string();
    assert_eq!(seen.header("x-forwarded-host"), Some(host.as_str()));

    // The plain listener of the same gateway still says http.
    let (mut plain, _) = ws_connect(&gate.ws_url("/ws"), &[]).await.unwrap();
    echo_roundtrip(&mut plain, "plain").await;
    assert_eq!(echo.last().header("x-forwarded-proto"), Some("http"));
}

// ---------------------------------------------------------------------------------------
// splice
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn splice_large_and_many_messages_and_counts_bytes() {
    let echo = echo_upstream().await;
    let gate = gate(&[("/ws", echo.addr)]).await;
    let (mut ws, _) = ws_connect(&gate.ws_url("/ws"), &[]).await.unwrap();

    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("1 MiB echo timed out")
        .unwrap()
        .unwrap();
    assert_eq!(got.into_data().as_ref(), big.as_slice());

    let texts: Vec<String> = (0..200).map(|i| format!("message number {i}")).collect();
    for t in &texts {
        ws.send(Message::text(t.clone())).await.unwrap();
    }
    for t in &texts {
        let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("text echo timed out")
            .unwrap()
            .unwrap();
        assert_eq!(got, Message::text(t.clone()));
    }
    assert_eq!(gate.metric(&active("/ws")).await, 1.0);
    ws.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    drop(ws);
    assert_eq!(wait_metric(&gate, &active("/ws"), 0.0).await, 0.0);

    let payload = (big.len() + texts.iter().map(String::len).sum::<usize>()) as f64;
    let metrics = gate.metrics().await;
    let c2u = metric_value(&metrics, &bytes("client_to_upstream", "/ws"));
    let u2c = metric_value(&metrics, &bytes("upstream_to_client", "/ws"));
    assert!(
        c2u >= payload,
        "client_to_upstream {c2u} < payload {payload}"
    );
    assert!(
        u2c >= payload,
        "upstream_to_client {u2c} < payload {payload}"
    );
    assert_eq!(
        metric_value(&metrics, "wsgate_connections_total{route=\"/ws\"}"),
        1.0
    );
}

#[tokio::test]
async fn half_close_is_forwarded() {
    // After the 101 the upstream reads until EOF, then answers "bye" and closes.
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let tx = Arc::new(tx);
    let up = spawn_upstream(move |mut s| {
        let tx = tx.clone();
        async move {
            let Some((head, _)) = read_request(&mut s).await else {
                return;
            };
            s.write_all(switching(&head, "").as_bytes()).await.unwrap();
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got).await;
            let _ = tx.send(got);
            let _ = s.write_all(b"bye").await;
            let _ = s.shutdown().await;
        }
    })
    .await;
    let gate = gate(&[("/ws", up)]).await;

    let mut client = TcpStream::connect(gate.addr()).await.unwrap();
    client
        .write_all(upgrade_request("/ws", "").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut byte))
            .await
            .expect("no 101")
            .unwrap();
        assert_eq!(n, 1, "EOF before the 101 head ended");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    assert_eq!(wait_metric(&gate, &active("/ws"), 1.0).await, 1.0);

    client.write_all(b"raw bytes, then EOF").await.unwrap();
    client.shutdown().await.unwrap();
    let rest = read_to_eof(&mut client).await;
    assert_eq!(
        rest, b"bye",
        "the reply after our half-close did not arrive"
    );
    let upstream_got = tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(upstream_got, b"raw bytes, then EOF");
    assert_eq!(wait_metric(&gate, &active("/ws"), 0.0).await, 0.0);
    let metrics = gate.metrics().await;
    assert_eq!(
        metric_value(&metrics, &bytes("client_to_upstream", "/ws")),
        19.0
    );
    assert_eq!(
        metric_value(&metrics, &bytes("upstream_to_client", "/ws")),
        3.0
    );
}

#[tokio::test]
async fn bytes_right_after_the_101_are_not_lost() {
    // The upstream sends a greeting frame in the same write as its 101.
    let up = spawn_upstream(|mut s| async move {
        let Some((head, _)) = read_request(&mut s).await else {
            return;
        };
        let mut out = switching(&head, "").into_bytes();
        out.extend_from_slice(&[0x81, 0x05]);
        out.extend_from_slice(b"hello");
        let _ = s.write_all(&out).await;
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got).await;
    })
    .await;
    // The client sends bytes right behind its upgrade request, before any 101.
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let tx = Arc::new(tx);
    let early = spawn_upstream(move |mut s| {
        let tx = tx.clone();
        async move {
            let Some((head, mut got)) = read_request(&mut s).await else {
                return;
            };
            let _ = s.write_all(switching(&head, "").as_bytes()).await;
            let mut buf = [0u8; 64];
            while got.len() < 5 {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let _ = tx.send(got);
        }
    })
    .await;
    let gate = gate(&[("/greet", up), ("/early", early)]).await;

    let (mut ws, _) = ws_connect(&gate.ws_url("/greet"), &[]).await.unwrap();
    let greeting = tokio::time::timeout(Duration::from_secs(3), ws.next())
        .await
        .expect("the frame sent with the 101 was lost")
        .unwrap()
        .unwrap();
    assert_eq!(greeting, Message::text("hello"));

    let mut c = TcpStream::connect(gate.addr()).await.unwrap();
    let mut req = upgrade_request("/early", "").into_bytes();
    req.extend_from_slice(b"EARLY");
    c.write_all(&req).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(3), rx.recv())
        .await
        .expect("bytes pipelined behind the upgrade request were lost")
        .unwrap();
    assert_eq!(got, b"EARLY");
}

// ---------------------------------------------------------------------------------------
// plain HTTP on a route
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn plain_http_is_proxied() {
    let echo = echo_upstream().await;
    let gate = gate(&[("/ws", echo.addr)]).await;
    let (status, head, body) = http_request(
        gate.addr(),
        "GET /ws/socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: gate.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, "plain:/ws/socket.io/?EIO=4&transport=polling");
    let seen = echo.last();
    assert_eq!(seen.header("x-forwarded-host"), Some("gate.test"));
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
    // Plain requests are not handshakes.
    let metrics = gate.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "wsgate_handshakes_total{outcome=\"upgraded\",route=\"/ws\"}"
        ),
        0.0
    );
    for outcome in ["upstream_error", "bad_request", "unauthorized"] {
        let series = format!("wsgate_handshakes_total{{outcome=\"{outcome}\",route=\"/ws\"}}");
        assert_eq!(metric_value(&metrics, &series), 0.0, "{series}");
    }
}

#[tokio::test]
async fn post_bodies_reach_the_upstream() {
    let up = spawn_upstream(|mut s| async move {
        let Some((head, body)) = read_request(&mut s).await else {
            return;
        };
        let line = head.lines().next().unwrap_or("").to_string();
        let answer = format!(
            "{line}|len={}|sum={}",
            body.len(),
            body.iter().map(|b| *b as u64).sum::<u64>()
        );
        let _ = s
            .write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{answer}",
                    answer.len()
                )
                .as_bytes(),
            )
            .await;
    })
    .await;
    let gate = gate(&[("/api", up)]).await;
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 256) as u8).collect();
    let sum: u64 = body.iter().map(|b| *b as u64).sum();
    let mut s = TcpStream::connect(gate.addr()).await.unwrap();
    s.write_all(
        format!(
            "POST /api/items?id=7 HTTP/1.1\r\nHost: gate.test\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    s.write_all(&body).await.unwrap();
    let (status, head, answer) = read_response(&mut s).await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(
        answer,
        format!("POST /api/items?id=7 HTTP/1.1|len=100000|sum={sum}")
    );
}
