//! Session layer on real sockets: close frames with codes from the gateway (drain, token
//! expiry, lifetime, message too big, keepalive), and closes counted by who sent the first
//! close frame. A tokio-tungstenite client observes the exact code and reason; a recording
//! upstream shows what the backend received.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// An upstream that echoes data messages and reports every message it receives (data,
/// pings, pongs and close frames) on the channel.
async fn recording_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<Message>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = spawn_upstream(move |stream| {
        let tx = tx.clone();
        async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                let _ = tx.send(msg.clone());
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (addr, rx)
}

fn config(upstream: SocketAddr, route_extra: &str, top_extra: &str) -> String {
    [
        "listeners:\n  - bind: \"127.0.0.1:0\"\nadmin:\n  bind: \"127.0.0.1:0\"\n",
        "auth:\n  tokens:\n    type: jwt\n    algorithms: [HS256]\n    secret: \"${WSGATE_JWT_SECRET}\"\n",
        &format!("routes:\n  - path: /ws\n    upstream: ws://{upstream}\n{route_extra}"),
        &format!("  - path: /open\n    upstream: ws://{upstream}\n{route_extra}"),
        top_extra,
    ]
    .concat()
}

/// Reads until the close frame (answering pings as tungstenite does); panics after 10 s.
async fn close_frame<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Option<CloseFrame>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let wait = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => return f,
                Some(Ok(_)) => continue,
                other => panic!("stream ended without a close frame: {other:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("no close frame within 10 s")
}

/// The next close frame the upstream received.
async fn upstream_close(rx: &mut mpsc::UnboundedReceiver<Message>) -> Option<CloseFrame> {
    let wait = async {
        loop {
            match rx.recv().await {
                Some(Message::Close(f)) => return f,
                Some(_) => continue,
                None => panic!("upstream connection ended without a close frame"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("the upstream got no close frame within 10 s")
}

fn assert_close(frame: Option<CloseFrame>, code: u16, reason: &str) {
    let f = frame.expect("close frame without a code");
    assert_eq!(
        (u16::from(f.code), f.reason.as_str()),
        (code, reason),
        "close frame"
    );
}

#[tokio::test]
async fn drain_deadline_sends_going_away_to_both_sides() {
    let (up, mut seen) = recording_upstream().await;
    let mut gate = start_gate(
        Files::new(),
        &config(up, "", "shutdown:\n  drain_timeout: 300ms\n"),
    )
    .await;
    let (mut ws, _) = ws_connect(&gate.ws_url("/open"), &[]).await.unwrap();
    echo_roundtrip(&mut ws, "before").await;
    gate.shutdown();
    assert_close(close_frame(&mut ws).await, 1001, "going away");
    assert_close(upstream_close(&mut seen).await, 1001, "going away");
    tokio::time::timeout(Duration::from_secs(10), &mut gate.task)
        .await
        .expect("gateway did not stop")
        .unwrap();
}

#[tokio::test]
async fn expired_token_closes_with_4001_and_counts_expired() {
    let (up, mut seen) = recording_upstream().await;
    let gate = start_gate(
        Files::new(),
        &config(up, "    expiry_grace: 1s\n", "").replacen(
            "  - path: /ws\n",
            "  - path: /ws\n    auth: tokens\n",
            1,
        ),
    )
    .await;
    // exp is the next whole second (0–1 s away), plus the 1 s grace: the close can't come
    // sooner than 1 s after this point, however slow the handshake below is.
    let started = tokio::time::Instant::now();
    let token = jwt(serde_json::json!({"sub": "alice", "exp": now_secs() + 1}));
    let (mut ws, _) = ws_connect(&gate.ws_url(&format!("/ws?token={token}")), &[])
        .await
        .unwrap();
    echo_roundtrip(&mut ws, "still valid").await;
    assert_close(close_frame(&mut ws).await, 4001, "token expired");
    let waited = started.elapsed();
    // 50 ms for the wall clock (exp) against the monotonic one.
    assert!(
        waited >= Duration::from_millis(950),
        "closed before exp + grace ({waited:?})"
    );
    assert_close(upstream_close(&mut seen).await, 4001, "token expired");
    wait_metric(
        &gate,
        "wsgate_connections_closed_total{reason=\"expired\",route=\"/ws\"}",
        1.0,
    )
    .await;
    assert_eq!(
        gate.metric("wsgate_connections_closed_total{reason=\"expired\",route=\"/ws\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn max_lifetime_closes_with_4003_and_custom_codes_apply() {
    let (up, mut seen) = recording_upstream().await;
    let gate = start_gate(
        Files::new(),
        &config(
            up,
            "    max_lifetime: 500ms\n",
            "close_codes:\n  lifetime: 4100\n",
        ),
    )
    .await;
    let (mut ws, _) = ws_connect(&gate.ws_url("/open"), &[]).await.unwrap();
    echo_roundtrip(&mut ws, "hi").await;
    assert_close(close_frame(&mut ws).await, 4100, "lifetime reached");
    assert_close(upstream_close(&mut seen).await, 4100, "lifetime reached");
    assert_eq!(
        wait_metric(
            &gate,
            "wsgate_connections_closed_total{reason=\"lifetime\",route=\"/open\"}",
            1.0
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn too_big_message_is_not_forwarded_and_closes_with_1009() {
    let (up, mut seen) = recording_upstream().await;
    let gate = start_gate(
        Files::new(),
        &config(up, "    max_message_bytes: 100\n", ""),
    )
    .await;
    let (mut ws, _) = ws_connect(&gate.ws_url("/open"), &[]).await.unwrap();
    echo_roundtrip(&mut ws, &"a".repeat(100)).await;
    ws.send(Message::text("b".repeat(101))).await.unwrap();
    assert_close(close_frame(&mut ws).await, 1009, "message too big");
    // The upstream saw the small message and then our close, never the big one.
    let first = tokio::time::timeout(Duration::from_secs(5), seen.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, Message::text("a".repeat(100)));
    assert_close(upstream_close(&mut seen).await, 1009, "message too big");
    assert_eq!(
        wait_metric(
            &gate,
            "wsgate_connections_closed_total{reason=\"too_big\",route=\"/open\"}",
            1.0
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_fragmented_message_counts_whole_against_the_limit() {
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame, coding::Data, coding::OpCode};
    let (up, mut seen) = recording_upstream().await;
    let gate = start_gate(
        Files::new(),
        &config(up, "    max_message_bytes: 100\n", ""),
    )
    .await;
    let (mut ws, _) = ws_connect(&gate.ws_url("/open"), &[]).await.unwrap();
    // Three 40-byte fragments: each fits, the message (120) does not.
    let mut first = Frame::message(vec![b'x'; 40], OpCode::Data(Data::Text), false);
    first.header_mut().is_final = false;
    ws.send(Message::Frame(first)).await.unwrap();
    ws.send(Message::Frame(Frame::message(
        vec![b'x'; 40],
        OpCode::Data(Data::Continue),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Frame(Frame::message(
        vec![b'x'; 40],
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .unwrap();
    assert_close(close_frame(&mut ws).await, 1009, "message too big");
    assert_close(upstream_close(&mut seen).await, 1009, "message too big");
    drop(gate);
}

#[tokio::test]
async fn keepalive_pings_the_client_and_keeps_its_pongs_from_the_upstream() {
    let (up, mut seen) = recording_upstream().await;
    let gate = start_gate(
        Files::new(),
        &config(up, "    ping_interval: 100ms\n    ping_timeout: 2s\n", ""),
    )
    .await;
    let (mut ws, _) = ws_connect(&gate.ws_url("/open"), &[]).await.unwrap();
    // tungstenite answers each ping with a pong while we read.
    let mut pings = 0;
    let reading = async {
        while pings < 3 {
            match ws.next().await {
                Some(Ok(Message::Ping(p))) => {
                    assert_eq!(p.len(), 8, "gateway pings carry 8 bytes");
                    pings += 1;
                }
                other => panic!("expected pings, got {other:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), reading)
        .await
        .expect("fewer than 3 pings in 10 s");
    echo_roundtrip(&mut ws, "after pings").await;
    ws.close(None).await.unwrap();
    // Everything the upstream got: the echo and the close, no pong.
    let mut got = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), seen.recv()).await {
        let close = m.is_close();
        got.push(m);
        if close {
            break;
        }
    }
    assert!(
        !got.iter().any(|m| matches!(m, Message::Pong(_))),
        "a pong answering the gateway's ping reached the upstream: {got:?}"
    );
    assert_eq!(got.first(), Some(&Message::text("after pings")));
    drop(gate);
}

#[tokio::test]
async fn a_client_that_does_not_answer_pings_is_closed_as_idle() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (up, mut seen) = recording_upstream().await;
    let gate = start_gate(
        Files::new(),
        &config(
            up,
            "    ping_interval: 100ms\n    ping_timeout: 300ms\n",
            "",
        ),
    )
    .await;
    // A raw client: completes the handshake, then never answers anything.
    let mut s = tokio::net::TcpStream::connect(gate.addr()).await.unwrap();
    s.write_all(upgrade_request("/open", "").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_all)
        .await
        .expect("the silent client was not closed");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    let body = &got[text.find("\r\n\r\n").unwrap() + 4..];
    // Unmasked server frames: one ping (0x89, 8 bytes, still unanswered), then a close
    // 1001 "idle" (0x88).
    assert_eq!(&body[..2], &[0x89, 8], "first frame is not our ping");
    let close = &body[10..];
    assert_eq!(close[0], 0x88, "second frame is not a close: {body:?}");
    assert_eq!(usize::from(close[1]), 2 + "idle".len());
    assert_eq!(u16::from_be_bytes([close[2], close[3]]), 1001);
    assert_eq!(&close[4..8], b"idle");
    assert_close(upstream_close(&mut seen).await, 1001, "idle");
    assert_eq!(
        wait_metric(
            &gate,
            "wsgate_connections_closed_total{reason=\"idle\",route=\"/open\"}",
            1.0
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn closes_are_counted_by_who_sent_the_first_close_frame() {
    let echo = echo_upstream().await;
    let gate = start_gate(Files::new(), &config(echo.addr, "", "")).await;
    // Client closes.
    let (mut ws, _) = ws_connect(&gate.ws_url("/open"), &[]).await.unwrap();
    for i in 0..3 {
        echo_roundtrip(&mut ws, &format!("m{i}")).await;
    }
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    assert_eq!(
        wait_metric(
            &gate,
            "wsgate_connections_closed_total{reason=\"client\",route=\"/open\"}",
            1.0
        )
        .await,
        1.0
    );
    assert_eq!(
        gate.metric("wsgate_messages_total{direction=\"client_to_upstream\",route=\"/open\"}")
            .await,
        3.0
    );
    assert_eq!(
        gate.metric("wsgate_messages_total{direction=\"upstream_to_client\",route=\"/open\"}")
            .await,
        3.0
    );
    assert_eq!(
        gate.metric("wsgate_connections_closed_total{reason=\"error\",route=\"/open\"}")
            .await,
        0.0,
        "a clean close counted as an error"
    );
}

#[tokio::test]
async fn an_upstream_close_is_counted_as_upstream() {
    // The upstream closes right after the handshake with 4444.
    let up = spawn_upstream(|stream| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
            return;
        };
        let _ = ws
            .close(Some(CloseFrame {
                code: CloseCode::from(4444),
                reason: "server done".into(),
            }))
            .await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    let gate = start_gate(Files::new(), &config(up, "", "")).await;
    let (mut ws, _) = ws_connect(&gate.ws_url("/open"), &[]).await.unwrap();
    assert_close(close_frame(&mut ws).await, 4444, "server done");
    while let Some(Ok(_)) = ws.next().await {}
    assert_eq!(
        wait_metric(
            &gate,
            "wsgate_connections_closed_total{reason=\"upstream\",route=\"/open\"}",
            1.0
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn untracked_routes_close_at_tcp_level() {
    let (up, _seen) = recording_upstream().await;
    let mut gate = start_gate(
        Files::new(),
        &config(
            up,
            "    track_frames: false\n",
            "shutdown:\n  drain_timeout: 200ms\n",
        ),
    )
    .await;
    let (mut ws, _) = ws_connect(&gate.ws_url("/open"), &[]).await.unwrap();
    echo_roundtrip(&mut ws, "x").await;
    gate.shutdown();
    let end = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("not closed");
    assert!(
        !matches!(end, Some(Ok(Message::Close(Some(_))))),
        "an untracked tunnel got a close frame: {end:?}"
    );
}

#[tokio::test]
async fn after_a_close_handshake_the_client_gets_its_fin_without_hanging_up_first() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The tunnel ends on the upstream's FIN once both close frames passed; the client's
    // socket is closed by dropping it (no shutdown first) and must still see the FIN.
    let (up, mut seen) = recording_upstream().await;
    let gate = start_gate(Files::new(), &config(up, "", "")).await;
    let mut s = tokio::net::TcpStream::connect(gate.addr()).await.unwrap();
    s.write_all(upgrade_request("/open", "").as_bytes())
        .await
        .unwrap();
    let (status, head, rest) = read_response(&mut s).await;
    assert_eq!(status, 101, "{head}");
    assert_eq!(rest, "", "nothing behind the 101");
    let mask = [7u8, 1, 2, 3];
    let code = 1000u16.to_be_bytes();
    s.write_all(&[
        0x88,
        0x82,
        mask[0],
        mask[1],
        mask[2],
        mask[3],
        code[0] ^ mask[0],
        code[1] ^ mask[1],
    ])
    .await
    .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .expect("no FIN within 5 s after the close handshake")
        .expect("a clean FIN, not a reset");
    assert_eq!(got, [0x88, 0x02, 0x03, 0xe8], "the upstream's close frame");
    assert!(matches!(seen.recv().await, Some(Message::Close(_))));
    assert_eq!(
        wait_metric(
            &gate,
            "wsgate_connections_closed_total{reason=\"client\",route=\"/open\"}",
            1.0
        )
        .await,
        1.0
    );
}
