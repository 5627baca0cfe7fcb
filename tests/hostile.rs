//! The hostile-input matrix. Every case runs against a gateway that holds one live echo
//! tunnel, then checks that the tunnel still echoes, that no tunnel leaked
//! (`wsgate_connections_active`) and that the process's open file descriptors are back to
//! where they were (the gateway runs in-process, so `/proc/self/fd` counts its sockets).
//!
//! Cases run one at a time (a process-wide lock taken before each runtime is built), so
//! one case's sockets never show up in another's fd count.
// Real sockets against a running gateway: deadlines here are wall-clock on purpose.
#![allow(clippy::disallowed_types)]
mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

// ---------------------------------------------------------------------------------------
// harness
// ---------------------------------------------------------------------------------------

static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `case` alone, on its own runtime, built after the lock is taken.
fn serial<F: Future<Output = ()>>(case: F) {
    let _guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(case);
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Sockets that may legitimately still be closing when a case ends.
const FD_TOLERANCE: usize = 3;

type Ws = WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

struct Harness {
    gate: Gate,
    echo: EchoUpstream,
    keeper: Ws,
    baseline: usize,
}

/// A gateway with a plain listener (`addrs[0]`), a TLS listener (`addrs[1]`), route `/ws`
/// to an echo upstream plus `routes`, and one open echo tunnel. Upstreams a case needs
/// must exist before this is called, so they are part of the fd baseline.
async fn harness(routes: &[(&str, SocketAddr)]) -> Harness {
    let echo = echo_upstream().await;
    let files = Files::new();
    files.cert("tls");
    let mut yaml = format!(
        "listeners:\n  - bind: \"127.0.0.1:0\"\n  - bind: \"127.0.0.1:0\"\n    tls:\n      cert: \"{{dir}}/tls.crt\"\n      key: \"{{dir}}/tls.key\"\nadmin:\n  bind: \"127.0.0.1:0\"\ntimeouts:\n  request_header: 1s\n  tls_handshake: 1s\n  upstream_connect: 1s\n  upstream_response: 1s\nlimits:\n  handshake_rate_per_ip: 0\n  max_connections_per_ip: 0\nroutes:\n  - path: /ws\n    upstream: ws://{}\n",
        echo.addr
    );
    for (path, addr) in routes {
        yaml.push_str(&format!("  - path: {path}\n    upstream: ws://{addr}\n"));
    }
    let gate = start_gate(files, &yaml).await;
    let (mut keeper, _) = ws_connect(&gate.ws_url("/ws"), &[]).await.unwrap();
    echo_roundtrip(&mut keeper, "keeper").await;
    // Let the admin connection used by nothing yet and the tunnel settle.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let baseline = open_fds();
    Harness {
        gate,
        echo,
        keeper,
        baseline,
    }
}

/// Sum of `wsgate_connections_active` over all routes.
fn active_total(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("wsgate_connections_active{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

impl Harness {
    fn plain(&self) -> SocketAddr {
        self.gate.addrs[0]
    }

    fn tls(&self) -> SocketAddr {
        self.gate.addrs[1]
    }

    /// The keeper still echoes, only it is active, and the fds are back to the baseline.
    async fn finish(mut self, case: &str) {
        echo_roundtrip(&mut self.keeper, &format!("after {case}")).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        let (mut active, mut fds);
        loop {
            active = active_total(&self.gate.metrics().await);
            fds = open_fds();
            if (active == 1.0 && fds <= self.baseline + FD_TOLERANCE) || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            active, 1.0,
            "{case}: tunnels leaked (only the keeper should be open)"
        );
        assert!(
            fds <= self.baseline + FD_TOLERANCE,
            "{case}: fds leaked: {fds} open, baseline {}",
            self.baseline
        );
        drop(self.keeper);
        assert_eq!(
            wait_metric(&self.gate, "wsgate_connections_active{route=\"/ws\"}", 0.0).await,
            0.0,
            "{case}: the keeper's close was not seen"
        );
    }
}

/// Sends `request`, reads one response, and checks the gateway closes the connection.
async fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let (status, head, _) = read_response(&mut s).await;
    let mut buf = [0u8; 256];
    let closed = matches!(
        tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    );
    assert!(closed, "connection left open after {status}: {head}");
    (status, head)
}

/// Reads through the end of a request head; returns the head and any bytes after it.
async fn read_head(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..pos]).to_string();
            return Some((head, buf[pos + 4..].to_vec()));
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// An upstream that completes the upgrade by hand and records every byte it receives
/// after the request head (the tunnel's client → upstream data).
async fn recording_upstream() -> (SocketAddr, Arc<Mutex<Vec<u8>>>, Arc<Mutex<usize>>) {
    let data = Arc::new(Mutex::new(Vec::new()));
    let hits = Arc::new(Mutex::new(0usize));
    let (d, h) = (data.clone(), hits.clone());
    let addr = spawn_upstream(move |mut s| {
        let (data, hits) = (d.clone(), h.clone());
        async move {
            let Some((head, rest)) = read_head(&mut s).await else {
                return;
            };
            *hits.lock().unwrap() += 1;
            data.lock().unwrap().extend_from_slice(&rest);
            let key = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("sec-websocket-key")
                        .then(|| v.trim().to_string())
                })
                .unwrap_or_default();
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                derive_accept_key(key.as_bytes())
            );
            if s.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
            let mut chunk = [0u8; 4096];
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_secs(2), s.read(&mut chunk)).await
            {
                if n == 0 {
                    return;
                }
                data.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        }
    })
    .await;
    (addr, data, hits)
}

/// A masked client text frame.
fn client_text_frame(text: &str) -> Vec<u8> {
    assert!(text.len() < 126);
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut f = vec![0x81, 0x80 | text.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

fn request_without(drop_header: &str, extra: &str) -> String {
    upgrade_request("/ws", extra)
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with(drop_header))
        .collect::<Vec<_>>()
        .join("\r\n")
}

// ---------------------------------------------------------------------------------------
// client side
// ---------------------------------------------------------------------------------------

#[test]
fn slowloris_headers() {
    serial(async {
        let h = harness(&[]).await;
        let request = upgrade_request("/ws", "");
        let mut s = TcpStream::connect(h.plain()).await.unwrap();
        let started = Instant::now();
        let mut answer = Vec::new();
        let mut buf = [0u8; 512];
        let ended = 'cut: {
            for b in request.as_bytes() {
                if s.write_all(&[*b]).await.is_err() {
                    break 'cut started.elapsed();
                }
                match tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
                    Err(_) => {}
                    Ok(Ok(0)) | Ok(Err(_)) => break 'cut started.elapsed(),
                    Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                }
            }
            panic!("a 1-byte-per-300ms request was never cut off");
        };
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{text:?}"
        );
        assert!(
            ended < Duration::from_millis(2500),
            "cut off after {ended:?}"
        );
        drop(s);
        assert_eq!(h.echo.count(), 1, "only the keeper reached the upstream");
        h.finish("slowloris").await;
    });
}

#[test]
fn oversized_headers() {
    serial(async {
        let h = harness(&[]).await;
        let big = format!("X-Big: {}\r\n", "a".repeat(256 * 1024));
        let request = upgrade_request("/ws", &big);
        let mut s = TcpStream::connect(h.plain()).await.unwrap();
        let (mut r, mut w) = s.split();
        let (_, answer) = tokio::join!(
            async {
                let _ = w.write_all(request.as_bytes()).await;
            },
            async {
                let mut buf = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut buf)).await;
                String::from_utf8_lossy(&buf).to_string()
            }
        );
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
        drop(s);
        assert_eq!(h.echo.count(), 1);
        h.finish("oversized headers").await;
    });
}

#[test]
fn bad_sec_websocket_key() {
    serial(async {
        let h = harness(&[]).await;
        let missing = request_without("sec-websocket-key", "");
        let duplicate = upgrade_request("/ws", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n");
        let invalid = request_without("sec-websocket-key", "Sec-WebSocket-Key: c2hvcnQ=\r\n");
        let not_base64 = request_without("sec-websocket-key", "Sec-WebSocket-Key: !!!!\r\n");
        for (name, req) in [
            ("missing", missing),
            ("duplicate", duplicate),
            ("invalid", invalid),
            ("not base64", not_base64),
        ] {
            let (status, head) = exchange(h.plain(), req.as_bytes()).await;
            assert_eq!(status, 400, "{name} key: {head}");
        }
        assert_eq!(h.echo.count(), 1, "refused before the upstream");
        assert_eq!(
            h.gate
                .metric("wsgate_handshakes_total{outcome=\"bad_request\",route=\"/ws\"}")
                .await,
            4.0
        );
        h.finish("bad Sec-WebSocket-Key").await;
    });
}

#[test]
fn wrong_sec_websocket_version() {
    serial(async {
        let h = harness(&[]).await;
        for version in ["8", "14", "13, 8"] {
            let req = request_without(
                "sec-websocket-version",
                &format!("Sec-WebSocket-Version: {version}\r\n"),
            );
            let (status, head) = exchange(h.plain(), req.as_bytes()).await;
            assert_eq!(status, 426, "version {version}: {head}");
            assert_eq!(
                head_header(&head, "sec-websocket-version").as_deref(),
                Some("13"),
                "{head}"
            );
        }
        assert_eq!(h.echo.count(), 1);
        h.finish("wrong version").await;
    });
}

#[test]
fn http10_upgrade_request() {
    serial(async {
        let h = harness(&[]).await;
        let req = upgrade_request("/ws", "").replacen("HTTP/1.1", "HTTP/1.0", 1);
        let (status, head) = exchange(h.plain(), req.as_bytes()).await;
        assert_eq!(status, 400, "{head}");
        assert_eq!(h.echo.count(), 1);
        h.finish("HTTP/1.0 upgrade").await;
    });
}

/// A GET upgrade carries no body (RFC 9110 §9.3.1: a GET body has no semantics), and the
/// handler forwards the upgrade with an empty body and no `Content-Length`. Two answers
/// are safe: refuse with 400 before the upstream (what the gateway should do, since hyper
/// hands over the connection at the end of the head whatever the body), or upgrade while
/// the upstream's first tunnel bytes are exactly the client's first frame. The body
/// reaching the upstream as WebSocket data is the one wrong answer.
/// `mode`: 0 = body in the same write as the head, 1 = body 100 ms later.
async fn body_case(mode: u8) {
    let (up, data, hits) = recording_upstream().await;
    let h = harness(&[("/rec", up)]).await;
    let head = "GET /rec HTTP/1.1\r\nHost: gate.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nContent-Length: 5\r\n\r\n";
    let mut s = TcpStream::connect(h.plain()).await.unwrap();
    if mode == 0 {
        s.write_all(format!("{head}hello").as_bytes())
            .await
            .unwrap();
    } else {
        s.write_all(head.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.write_all(b"hello").await.unwrap();
    }
    let (status, head, _) = read_response(&mut s).await;
    if status == 400 {
        assert_eq!(*hits.lock().unwrap(), 0, "refused before the upstream");
        drop(s);
        h.finish("body on upgrade").await;
        return;
    }
    assert_eq!(status, 101, "mode {mode}: {head}");
    s.write_all(&client_text_frame("frame")).await.unwrap();
    let frame = client_text_frame("frame");
    let deadline = Instant::now() + Duration::from_secs(3);
    while data.lock().unwrap().len() < frame.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = data.lock().unwrap().clone();
    assert_eq!(
        got,
        frame,
        "mode {mode}: the upstream's tunnel data must be exactly the client's frame, got {:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(*hits.lock().unwrap(), 1);
    drop(s);
    h.finish("body on upgrade").await;
}

#[test]
fn body_on_the_upgrade_request_same_write() {
    serial(body_case(0));
}

#[test]
fn body_on_the_upgrade_request_late() {
    serial(body_case(1));
}

#[test]
fn bytes_pipelined_after_the_upgrade_request() {
    serial(async {
        let h = harness(&[]).await;
        let mut bytes = upgrade_request("/ws", "").into_bytes();
        bytes.extend_from_slice(&client_text_frame("early bird"));
        let mut s = TcpStream::connect(h.plain()).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        let deadline = Instant::now() + Duration::from_secs(5);
        // 101 head, then the echo upstream's (unmasked) copy of the frame.
        let echoed = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..pos]).to_string();
                assert!(head.starts_with("HTTP/1.1 101"), "{head}");
                let frame = &buf[pos + 4..];
                if frame.len() >= 2 && frame.len() >= 2 + usize::from(frame[1] & 0x7f) {
                    break frame.to_vec();
                }
            }
            assert!(Instant::now() < deadline, "no echo of the pipelined frame");
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                other => panic!("stream ended before the echo: {other:?}"),
            }
        };
        assert_eq!(echoed[0], 0x81, "a text frame");
        assert_eq!(&echoed[2..2 + usize::from(echoed[1])], b"early bird");
        drop(s);
        h.finish("pipelined bytes").await;
    });
}

#[test]
fn client_closing_mid_handshake() {
    serial(async {
        let h = harness(&[]).await;
        let request = upgrade_request("/ws", "");
        // Half a head, then gone.
        for _ in 0..20 {
            let mut s = TcpStream::connect(h.plain()).await.unwrap();
            s.write_all(&request.as_bytes()[..request.len() / 2])
                .await
                .unwrap();
            drop(s);
        }
        // The whole head, then gone before the answer (with and without a reset).
        for reset in [false, true] {
            for _ in 0..10 {
                let mut s = TcpStream::connect(h.plain()).await.unwrap();
                s.write_all(request.as_bytes()).await.unwrap();
                if reset {
                    s.set_zero_linger().unwrap();
                }
                drop(s);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        h.finish("client closing mid-handshake").await;
    });
}

// ---------------------------------------------------------------------------------------
// upstream side
// ---------------------------------------------------------------------------------------

async fn upstream_case(case: &str, up: SocketAddr, want: u16) {
    let h = harness(&[("/bad", up)]).await;
    for _ in 0..3 {
        let req = upgrade_request("/bad", "");
        let (status, head) = exchange(h.plain(), req.as_bytes()).await;
        assert_eq!(status, want, "{case}: {head}");
    }
    assert_eq!(
        h.gate
            .metric("wsgate_handshakes_total{outcome=\"upstream_error\",route=\"/bad\"}")
            .await,
        3.0,
        "{case}"
    );
    h.finish(case).await;
}

#[test]
fn upstream_closing_mid_handshake() {
    serial(async {
        let up = spawn_upstream(|mut s| async move {
            let _ = read_head(&mut s).await;
        })
        .await;
        upstream_case("upstream closing mid-handshake", up, 502).await;
    });
}

#[test]
fn upstream_sending_garbage() {
    serial(async {
        let up = spawn_upstream(|mut s| async move {
            let _ = read_head(&mut s).await;
            let _ = s
                .write_all(b"\x00\x01garbage\xff\xfe not http at all\r\n\r\n")
                .await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        })
        .await;
        upstream_case("upstream garbage", up, 502).await;
    });
}

#[test]
fn upstream_accepting_then_resetting() {
    serial(async {
        let up = spawn_upstream(|mut s| async move {
            let _ = read_head(&mut s).await;
            let _ = s.set_zero_linger();
            drop(s);
        })
        .await;
        upstream_case("upstream reset", up, 502).await;
    });
}

// ---------------------------------------------------------------------------------------
// volume and protocol confusion
// ---------------------------------------------------------------------------------------

#[test]
fn ten_thousand_connect_disconnect_cycles() {
    serial(async {
        let h = harness(&[]).await;
        let addr = h.plain();
        let started = Instant::now();
        // Half the workers close with FIN, half with a reset (which also keeps their
        // client sockets out of TIME_WAIT).
        let workers: Vec<_> = (0..8)
            .map(|worker| {
                tokio::spawn(async move {
                    for _ in 0..1250 {
                        let s = TcpStream::connect(addr).await.unwrap();
                        if worker % 2 == 0 {
                            let _ = s.set_zero_linger();
                        }
                        drop(s);
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.unwrap();
        }
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(30),
            "10,000 cycles took {took:?}"
        );
        eprintln!("10,000 connect/disconnect cycles in {took:?}");
        // Still serving.
        let (mut ws, _) = ws_connect(&h.gate.ws_url("/ws"), &[]).await.unwrap();
        echo_roundtrip(&mut ws, "after the storm").await;
        drop(ws);
        h.finish("10,000 cycles").await;
    });
}

#[test]
fn plain_http_to_the_tls_listener() {
    serial(async {
        let h = harness(&[]).await;
        let mut s = TcpStream::connect(h.tls()).await.unwrap();
        s.write_all(upgrade_request("/ws", "").as_bytes())
            .await
            .unwrap();
        let mut buf = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
        assert!(r.is_ok(), "plain HTTP on the TLS port left open");
        assert!(
            !String::from_utf8_lossy(&buf).contains("HTTP/1.1 101"),
            "upgraded over plain text on the TLS port"
        );
        drop(s);
        assert_eq!(h.echo.count(), 1);
        h.finish("plain HTTP to TLS").await;
    });
}

#[test]
fn tls_client_hello_to_the_plain_listener() {
    serial(async {
        let h = harness(&[]).await;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let mut conn = rustls::ClientConnection::new(
            Arc::new(config),
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).unwrap();
        assert_eq!(hello[0], 0x16, "a TLS handshake record");

        let mut s = TcpStream::connect(h.plain()).await.unwrap();
        s.write_all(&hello).await.unwrap();
        let mut buf = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
        assert!(r.is_ok(), "ClientHello on the plain port left open");
        let text = String::from_utf8_lossy(&buf);
        assert!(
            buf.is_empty() || text.starts_with("HTTP/1.1 400"),
            "expected 400 or a close, got {text:?}"
        );
        drop(s);
        assert_eq!(h.echo.count(), 1);
        h.finish("ClientHello to plain").await;
    });
}
