//! Zero-copy bulk on plain tunnels (splice(2) through pooled pipes), over real sockets:
//! byte-exact bulk both ways with frame tracking off and on, half-close each way, bytes
//! hyper read ahead delivered first, a slow reader (bytes held in the tunnel's pipe, none
//! lost), idle tunnels holding no pipe, frame limits still enforced, and `splice: off`.
//!
//! The splice metrics are process-wide (pipes are pooled per thread, not per gateway), so the
//! tests here take turns.
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const IN_USE: &str = "wsgate_splice_pipes{state=\"in_use\"}";
const POOLED: &str = "wsgate_splice_pipes{state=\"pooled\"}";
const SPLICED: &str = "wsgate_splice_bytes_total";
const ACCEPT_101: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

/// Pseudo-random bytes (xorshift64*, seeded from the OS): fast even in a debug build.
fn random_bytes(len: usize) -> Vec<u8> {
    let mut x: u64 = rand::random::<u64>() | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// An upstream that answers the upgrade with a 101 (plus `extra` in the same write) and
/// hands the raw connection to the test.
async fn handing_upstream(extra: Vec<u8>) -> (SocketAddr, mpsc::UnboundedReceiver<TcpStream>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let extra = std::sync::Arc::new(extra);
    let addr = spawn_upstream(move |mut s: TcpStream| {
        let tx = tx.clone();
        let extra = extra.clone();
        async move {
            let (head, rest) = read_head(&mut s).await;
            assert!(head.starts_with("GET "), "{head}");
            assert!(rest.is_empty(), "the gate sent bytes before the 101");
            let mut out = ACCEPT_101.to_vec();
            out.extend_from_slice(&extra);
            s.write_all(&out).await.unwrap();
            let _ = tx.send(s);
        }
    })
    .await;
    (addr, rx)
}

/// Reads an HTTP head; returns it and the bytes read past it.
async fn read_head(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return (String::from_utf8_lossy(&buf).into_owned(), rest);
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("no head within 5 s")
            .unwrap();
        assert!(n > 0, "EOF before the end of the head: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn config(upstream: SocketAddr, route_extra: &str) -> String {
    format!(
        "listeners:\n  - bind: \"127.0.0.1:0\"\nadmin:\n  bind: \"127.0.0.1:0\"\nroutes:\n  - path: /bulk\n    upstream: ws://{upstream}\n{route_extra}"
    )
}

struct Pair {
    client: TcpStream,
    /// Bytes the client read past the 101 head.
    client_rest: Vec<u8>,
    upstream: TcpStream,
}

/// Opens one tunnel; `first` goes in the same write as the upgrade request.
async fn open(gate: &Gate, ups: &mut mpsc::UnboundedReceiver<TcpStream>, first: &[u8]) -> Pair {
    let mut client = TcpStream::connect(gate.addr()).await.unwrap();
    let mut req = upgrade_request("/bulk", "").into_bytes();
    req.extend_from_slice(first);
    client.write_all(&req).await.unwrap();
    let (head, client_rest) = read_head(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let upstream = tokio::time::timeout(Duration::from_secs(5), ups.recv())
        .await
        .expect("upstream not reached")
        .unwrap();
    Pair {
        client,
        client_rest,
        upstream,
    }
}

/// Sends `data` and half-closes, while reading everything the peer sends until EOF.
async fn send_and_drain(s: TcpStream, data: Vec<u8>) -> Vec<u8> {
    let (mut r, mut w) = s.into_split();
    let writer = async move {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
        w
    };
    let reader = async move {
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        got
    };
    let (_w, got) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(writer, reader)
    })
    .await
    .expect("transfer did not finish");
    got
}

async fn spliced(gate: &Gate) -> f64 {
    gate.metric(SPLICED).await
}

/// Waits (5 s at most) for no pipe to be in use: every tunnel gave its pipe back.
async fn assert_no_pipe_in_use(gate: &Gate) {
    assert_eq!(
        wait_metric(gate, IN_USE, 0.0).await,
        0.0,
        "pipes still held"
    );
}

async fn bulk_both_ways(route_extra: &str, len: usize) -> (Gate, f64) {
    let (up, mut ups) = handing_upstream(Vec::new()).await;
    let gate = start_gate(Files::new(), &config(up, route_extra)).await;
    let before = spliced(&gate).await;
    let p = open(&gate, &mut ups, b"").await;
    assert!(p.client_rest.is_empty());
    let (c_data, u_data) = (random_bytes(len), random_bytes(len));
    let c = tokio::spawn(send_and_drain(p.client, c_data.clone()));
    let u = tokio::spawn(send_and_drain(p.upstream, u_data.clone()));
    let at_upstream = u.await.unwrap();
    let at_client = c.await.unwrap();
    assert!(at_upstream == c_data, "client → upstream bytes differ");
    assert!(at_client == u_data, "upstream → client bytes differ");
    let moved = spliced(&gate).await - before;
    assert_no_pipe_in_use(&gate).await;
    (gate, moved)
}

#[tokio::test]
async fn untracked_bulk_is_spliced_byte_exact_both_ways() {
    let _turn = SERIAL.lock().await;
    let len = 8 << 20;
    let (gate, moved) = bulk_both_ways("    track_frames: false\n", len).await;
    // The first read of each way is copied (it shows bulk is coming), the rest spliced.
    assert!(
        moved >= (2 * len - 2 * 65536) as f64,
        "bulk did not go through splice(2): {moved} of {} bytes",
        2 * len
    );
    let bytes = "wsgate_bytes_total{direction=\"client_to_upstream\",route=\"/bulk\"}";
    assert_eq!(wait_metric(&gate, bytes, len as f64).await, len as f64);
}

#[tokio::test]
async fn splice_false_uses_the_copy_path() {
    let _turn = SERIAL.lock().await;
    let len = 2 << 20;
    let (_gate, moved) = bulk_both_ways("    track_frames: false\n    splice: false\n", len).await;
    assert_eq!(moved, 0.0, "splice: false still spliced");
}

async fn half_close(client_first: bool) {
    let (up, mut ups) = handing_upstream(Vec::new()).await;
    let gate = start_gate(Files::new(), &config(up, "    track_frames: false\n")).await;
    let before = spliced(&gate).await;
    let p = open(&gate, &mut ups, b"").await;
    let (mut a, mut b) = if client_first {
        (p.client, p.upstream)
    } else {
        (p.upstream, p.client)
    };
    let words = random_bytes(300_000);
    a.write_all(&words).await.unwrap();
    a.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), b.read_to_end(&mut got))
        .await
        .expect("EOF not forwarded")
        .unwrap();
    assert!(got == words, "bytes before the half-close differ");
    // The other way still flows after the half-close.
    let reply = random_bytes(1 << 20);
    let replier = tokio::spawn(async move {
        b.write_all(&reply).await.unwrap();
        b.shutdown().await.unwrap();
        (b, reply)
    });
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), a.read_to_end(&mut back))
        .await
        .expect("second EOF not forwarded")
        .unwrap();
    let (_b, reply) = replier.await.unwrap();
    assert!(back == reply, "reply after the half-close differs");
    let moved = spliced(&gate).await - before;
    assert!(moved >= (300_000 + (1 << 20) - 2 * 65536) as f64, "{moved}");
    assert_no_pipe_in_use(&gate).await;
    let active = "wsgate_connections_active{route=\"/bulk\"}";
    assert_eq!(wait_metric(&gate, active, 0.0).await, 0.0);
}

#[tokio::test]
async fn client_half_close_keeps_the_spliced_way_back_open() {
    let _turn = SERIAL.lock().await;
    half_close(true).await;
}

#[tokio::test]
async fn upstream_half_close_keeps_the_spliced_way_back_open() {
    let _turn = SERIAL.lock().await;
    half_close(false).await;
}

#[tokio::test]
async fn bytes_read_ahead_with_the_handshake_arrive_first_and_in_order() {
    let _turn = SERIAL.lock().await;
    let (first_c, first_u) = (random_bytes(1000), random_bytes(1500));
    let (up, mut ups) = handing_upstream(first_u.clone()).await;
    let gate = start_gate(Files::new(), &config(up, "    track_frames: false\n")).await;
    let before = spliced(&gate).await;
    let p = open(&gate, &mut ups, &first_c).await;
    let (more_c, more_u) = (random_bytes(2 << 20), random_bytes(2 << 20));
    let c = tokio::spawn(send_and_drain(p.client, more_c.clone()));
    let u = tokio::spawn(send_and_drain(p.upstream, more_u.clone()));
    let at_upstream = u.await.unwrap();
    let mut at_client = p.client_rest;
    at_client.extend_from_slice(&c.await.unwrap());
    assert!(
        at_upstream == [first_c, more_c].concat(),
        "client → upstream out of order"
    );
    assert!(
        at_client == [first_u, more_u].concat(),
        "upstream → client out of order"
    );
    // Read-ahead bytes and the first read of each way are copied, the rest spliced.
    let moved = spliced(&gate).await - before;
    assert!(moved >= ((4 << 20) - 2 * 65536) as f64, "{moved}");
    assert_no_pipe_in_use(&gate).await;
}

#[tokio::test]
async fn a_slow_reader_leaves_bytes_in_the_tunnels_pipe_and_none_are_lost() {
    let _turn = SERIAL.lock().await;
    let (up, mut ups) = handing_upstream(Vec::new()).await;
    let gate = start_gate(Files::new(), &config(up, "    track_frames: false\n")).await;
    let mut p = open(&gate, &mut ups, b"").await;
    // More than the socket buffers on the way can hold, so the tunnel must wait.
    let data = random_bytes(24 << 20);
    let writer = tokio::spawn({
        let data = data.clone();
        let mut u = p.upstream;
        async move {
            u.write_all(&data).await.unwrap();
            u.shutdown().await.unwrap();
            u
        }
    });
    let mut held = 0.0;
    for _ in 0..100 {
        held = gate.metric(IN_USE).await;
        if held >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        held, 1.0,
        "a blocked tunnel should hold exactly its one pipe"
    );
    assert!(
        !writer.is_finished(),
        "backpressure did not reach the upstream"
    );
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), p.client.read_to_end(&mut got))
        .await
        .expect("slow reader did not get everything")
        .unwrap();
    assert!(got == data, "bytes lost or reordered under backpressure");
    let _u = writer.await.unwrap();
    assert_no_pipe_in_use(&gate).await;
}

#[tokio::test]
async fn idle_tunnels_hold_no_pipe() {
    let _turn = SERIAL.lock().await;
    let (up, mut ups) = handing_upstream(Vec::new()).await;
    let gate = start_gate(Files::new(), &config(up, "    track_frames: false\n")).await;
    let before = spliced(&gate).await;
    let mut pairs = Vec::new();
    for _ in 0..20 {
        let mut p = open(&gate, &mut ups, b"").await;
        let (c_data, u_data) = (random_bytes(100_000), random_bytes(100_000));
        p.client.write_all(&c_data).await.unwrap();
        p.upstream.write_all(&u_data).await.unwrap();
        let mut got = vec![0u8; c_data.len()];
        p.upstream.read_exact(&mut got).await.unwrap();
        assert!(got == c_data);
        let mut got = vec![0u8; u_data.len()];
        p.client.read_exact(&mut got).await.unwrap();
        assert!(got == u_data);
        pairs.push(p);
    }
    assert!(spliced(&gate).await - before > 0.0, "nothing was spliced");
    // 20 open, idle tunnels: none holds a pipe, and the pool keeps only a few.
    assert_no_pipe_in_use(&gate).await;
    assert!(gate.metric(POOLED).await <= 4.0);
    let active = "wsgate_connections_active{route=\"/bulk\"}";
    assert_eq!(gate.metric(active).await, 20.0);
    drop(pairs);
}

/// A WebSocket frame header (FIN set) for `len` payload bytes, masked when `mask`.
fn header(opcode: u8, len: usize, mask: bool) -> Vec<u8> {
    let mut h = vec![0x80 | opcode];
    let m = if mask { 0x80 } else { 0 };
    if len < 126 {
        h.push(m | len as u8);
    } else if len <= 0xFFFF {
        h.push(m | 126);
        h.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        h.push(m | 127);
        h.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if mask {
        h.extend_from_slice(&rand::random::<[u8; 4]>());
    }
    h
}

/// `big` binary frames of `size` bytes, each followed by a small text frame. Payloads are
/// random: masked or not, the tracker doesn't look inside data frames.
fn frames(big: usize, size: usize, mask: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..big {
        out.extend_from_slice(&header(0x2, size, mask));
        out.extend_from_slice(&random_bytes(size));
        out.extend_from_slice(&header(0x1, 2, mask));
        out.extend_from_slice(b"hi");
    }
    out
}

#[tokio::test]
async fn tracked_bulk_splices_payloads_and_still_counts_and_limits_messages() {
    let _turn = SERIAL.lock().await;
    let (up, mut ups) = handing_upstream(Vec::new()).await;
    let extra = "    track_frames: true\n    max_message_bytes: 2097152\n";
    let gate = start_gate(Files::new(), &config(up, extra)).await;
    let before = spliced(&gate).await;
    let p = open(&gate, &mut ups, b"").await;
    let (c_data, u_data) = (frames(6, 1 << 20, true), frames(6, 1 << 20, false));
    let (mut cr, mut cw) = p.client.into_split();
    let (mut ur, mut uw) = p.upstream.into_split();
    let moves = async {
        let (a, b, c, d) = tokio::join!(
            cw.write_all(&c_data),
            uw.write_all(&u_data),
            async {
                let mut got = vec![0u8; c_data.len()];
                ur.read_exact(&mut got).await.map(|_| got)
            },
            async {
                let mut got = vec![0u8; u_data.len()];
                cr.read_exact(&mut got).await.map(|_| got)
            },
        );
        a.unwrap();
        b.unwrap();
        (c.unwrap(), d.unwrap())
    };
    let (at_upstream, at_client) = tokio::time::timeout(Duration::from_secs(30), moves)
        .await
        .expect("tracked bulk did not finish");
    assert!(at_upstream == c_data, "client → upstream frames differ");
    assert!(at_client == u_data, "upstream → client frames differ");
    let moved = spliced(&gate).await - before;
    assert!(
        moved >= 0.75 * (12 << 20) as f64,
        "large payloads were not spliced: {moved} bytes"
    );
    assert_no_pipe_in_use(&gate).await;
    for dir in ["client_to_upstream", "upstream_to_client"] {
        let series = format!("wsgate_messages_total{{direction=\"{dir}\",route=\"/bulk\"}}");
        assert_eq!(wait_metric(&gate, &series, 12.0).await, 12.0, "{dir}");
    }
    // A message over max_message_bytes still gets its 1009 close, at its frame's start.
    let mut too_big = header(0x2, 3 << 20, true);
    too_big.extend_from_slice(&random_bytes(3 << 20));
    // Spawned: once the gate closes, nobody need read the rest.
    let _w = tokio::spawn(async move {
        let _ = cw.write_all(&too_big).await;
        cw
    });
    let mut close = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), cr.read_exact(&mut close))
        .await
        .expect("no close frame")
        .unwrap();
    assert_eq!(close[0], 0x88, "not a close frame: {close:?}");
    assert_eq!(u16::from_be_bytes([close[2], close[3]]), 1009);
    let mut up_head = [0u8; 2];
    ur.read_exact(&mut up_head).await.unwrap();
    assert_eq!(up_head[0], 0x88, "upstream got part of the oversized frame");
    let closed = "wsgate_connections_closed_total{reason=\"too_big\",route=\"/bulk\"}";
    assert_eq!(wait_metric(&gate, closed, 1.0).await, 1.0);
    assert_no_pipe_in_use(&gate).await;
}
