//! Header rules over real sockets (issue 8, items 3–5): underscore twins of gateway headers
//! against a real WSGI stack, duplicate and mismatched `Host`, the client's `Forwarded`, only
//! WebSocket 101s spliced, `X-Forwarded-For` hops with ports, and PROXY headers only from
//! trusted peers.
mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A plain listener + admin on 127.0.0.1:0, the given route lines and extra top-level YAML.
fn config(routes: &str, extra: &str) -> String {
    format!(
        "listeners:\n  - bind: \"127.0.0.1:0\"\nadmin:\n  bind: \"127.0.0.1:0\"\nroutes:\n{routes}{extra}"
    )
}

fn route(path: &str, upstream: SocketAddr) -> String {
    format!("  - path: {path}\n    upstream: ws://{upstream}\n")
}

fn handshakes(outcome: &str, route: &str) -> String {
    format!("wsgate_handshakes_total{{outcome=\"{outcome}\",route=\"{route}\"}}")
}

const ALICE_PW: &str = "wonderland";

/// An authenticated route `/app` → `upstream` (Basic, user alice).
fn auth_config(files: &Files, upstream: SocketAddr, extra: &str) -> String {
    files.write("users.htpasswd", &htpasswd_line("alice", ALICE_PW));
    format!(
        "listeners:\n  - bind: \"127.0.0.1:0\"\nadmin:\n  bind: \"127.0.0.1:0\"\nauth:\n  users:\n    type: basic\n    htpasswd: \"{{dir}}/users.htpasswd\"\nroutes:\n  - path: /app\n    upstream: ws://{upstream}\n    auth: [users]\n{extra}"
    )
}

// ---------------------------------------------------------------------------------------
// a real WSGI backend (Python's stdlib wsgiref): it folds `_` and `-` into one CGI name
// ---------------------------------------------------------------------------------------

const WSGI_APP: &str = r#"
from wsgiref.simple_server import make_server, WSGIRequestHandler
class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass
KEYS = ["HTTP_X_AUTH_USER", "HTTP_X_REAL_IP", "HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED",
        "HTTP_X_CUSTOM"]
def app(environ, start):
    body = "\n".join(k + "=" + environ.get(k, "-") for k in KEYS).encode()
    start("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
srv = make_server("127.0.0.1", 0, app, handler_class=Quiet)
print(srv.server_port, flush=True)
srv.serve_forever()
"#;

/// The wsgiref process; killed (by its own handle) when dropped.
struct Wsgi {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Wsgi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wsgi_backend() -> Wsgi {
    let mut child = Command::new("python3")
        .args(["-c", WSGI_APP])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 must be installed");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().parse().expect("wsgiref printed its port");
    Wsgi {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

/// The app's `KEY=value` lines as a map.
fn environ(body: &str) -> std::collections::HashMap<String, String> {
    body.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn wsgi_app_sees_only_the_gateways_identity() {
    let wsgi = wsgi_backend();
    let files = Files::new();
    let yaml = auth_config(&files, wsgi.addr, "");
    let gate = start_gate(files, &yaml).await;
    // The attacker's exact bytes: underscore twins of every header the gateway sets.
    let request = format!(
        "GET /app HTTP/1.1\r\nHost: gate.test\r\nAuthorization: {}\r\nX_Auth_User: root\r\nX_Real_IP: 6.6.6.6\r\nX_Forwarded_For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nConnection: close\r\n\r\n",
        basic("alice", ALICE_PW)
    );
    let (status, _, body) = http_request(gate.addr(), &request).await;
    assert_eq!(status, 200, "{body}");
    let env = environ(&body);
    assert_eq!(env["HTTP_X_AUTH_USER"], "alice", "{body}");
    assert_eq!(env["HTTP_X_REAL_IP"], "127.0.0.1", "{body}");
    assert_eq!(env["HTTP_X_FORWARDED_FOR"], "127.0.0.1", "{body}");
    // No trusted_proxies: the client's Forwarded is dropped, the gateway's own element stays.
    assert_eq!(env["HTTP_FORWARDED"], "for=127.0.0.1", "{body}");
}

#[tokio::test]
async fn underscore_names_are_dropped_by_default() {
    let echo = echo_upstream().await;
    let gate = start_gate(Files::new(), &config(&route("/ws", echo.addr), "")).await;
    let (status, head, _) = http_request(
        gate.addr(),
        &upgrade_request(
            "/ws",
            "X_Auth_User: root\r\nX_Real_IP: 6.6.6.6\r\nX_Forwarded_For: 6.6.6.6\r\nX_Custom: 1\r\nX-Auth_User: root\r\n",
        ),
    )
    .await;
    assert_eq!(status, 101, "{head}");
    let seen = echo.last();
    let underscored: Vec<&String> = seen.headers.keys().filter(|k| k.contains('_')).collect();
    assert!(
        underscored.is_empty(),
        "reached the upstream: {underscored:?}"
    );
}

#[tokio::test]
async fn underscores_allowed_still_drop_twins_of_gateway_headers() {
    let wsgi = wsgi_backend();
    let files = Files::new();
    let yaml = auth_config(&files, wsgi.addr, "underscores_in_headers: true\n");
    let gate = start_gate(files, &yaml).await;
    let request = format!(
        "GET /app HTTP/1.1\r\nHost: gate.test\r\nAuthorization: {}\r\nX_Custom: kept\r\nx_auth_USER: root\r\nX_Real_Ip: 6.6.6.6\r\nX_Forwarded_Port: 1\r\nConnection: close\r\n\r\n",
        basic("alice", ALICE_PW)
    );
    let (status, _, body) = http_request(gate.addr(), &request).await;
    assert_eq!(status, 200, "{body}");
    let env = environ(&body);
    assert_eq!(env["HTTP_X_CUSTOM"], "kept", "{body}");
    assert_eq!(env["HTTP_X_AUTH_USER"], "alice", "{body}");
    assert_eq!(env["HTTP_X_REAL_IP"], "127.0.0.1", "{body}");
}

#[tokio::test]
async fn underscores_in_headers_must_be_a_bool() {
    let yaml = "listeners:\n  - bind: \"127.0.0.1:0\"\nroutes:\n  - path: /ws\n    upstream: ws://127.0.0.1:1\nunderscores_in_headers: yes please\n";
    let env = |_: &str| None;
    let err = wsgate::config::parse_str(
        yaml,
        std::path::Path::new("t.yaml"),
        std::path::Path::new("."),
        &env,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("underscores_in_headers: expected true or false"),
        "{err}"
    );
}

#[tokio::test]
async fn duplicate_host_is_refused() {
    let echo = echo_upstream().await;
    let gate = start_gate(Files::new(), &config(&route("/ws", echo.addr), "")).await;
    let (status, _, _) = http_request(
        gate.addr(),
        "GET /ws HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400);
    let (status, _, _) =
        http_request(gate.addr(), &upgrade_request("/ws", "Host: evil.test\r\n")).await;
    assert_eq!(status, 400);
    assert_eq!(echo.count(), 0);
}

#[tokio::test]
async fn host_must_match_absolute_form_authority() {
    let echo = echo_upstream().await;
    let gate = start_gate(Files::new(), &config(&route("/ws", echo.addr), "")).await;
    let (status, _, _) = http_request(
        gate.addr(),
        "GET http://a.test/ws HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(echo.count(), 0);
    // Matching (case-insensitively) is fine.
    let (status, _, body) = http_request(
        gate.addr(),
        "GET http://A.test/ws HTTP/1.1\r\nHost: a.TEST\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn forwarded_is_kept_only_from_trusted_peers() {
    let echo = echo_upstream().await;
    let extra = "Forwarded: for=6.6.6.6;proto=https\r\nForwarded: for=\"[2001:db8::1]:80\"\r\n";
    // Untrusted (no list): replaced by the gateway's own element.
    let gate = start_gate(Files::new(), &config(&route("/ws", echo.addr), "")).await;
    let (status, _, _) = http_request(gate.addr(), &upgrade_request("/ws", extra)).await;
    assert_eq!(status, 101);
    assert_eq!(echo.last().all("forwarded"), vec!["for=127.0.0.1"]);
    // Peer outside the list: the same.
    let gate = start_gate(
        Files::new(),
        &config(
            &route("/ws", echo.addr),
            "trusted_proxies: [\"10.0.0.0/8\"]\n",
        ),
    )
    .await;
    let (status, _, _) = http_request(gate.addr(), &upgrade_request("/ws", extra)).await;
    assert_eq!(status, 101);
    assert_eq!(echo.last().all("forwarded"), vec!["for=127.0.0.1"]);
    // Trusted peer: its elements are kept and the peer appended, like X-Forwarded-For.
    let gate = start_gate(
        Files::new(),
        &config(
            &route("/ws", echo.addr),
            "trusted_proxies: [\"127.0.0.1\"]\n",
        ),
    )
    .await;
    let (status, _, _) = http_request(gate.addr(), &upgrade_request("/ws", extra)).await;
    assert_eq!(status, 101);
    assert_eq!(
        echo.last().all("forwarded"),
        vec!["for=6.6.6.6;proto=https, for=\"[2001:db8::1]:80\", for=127.0.0.1"]
    );
}

// ---------------------------------------------------------------------------------------
// item 4: only WebSocket upgrades are tunnelled
// ---------------------------------------------------------------------------------------

/// The h2c smuggling request from the review, byte for byte.
const H2C_ATTACK: &str = "GET /ws HTTP/1.1\r\nHost: gate.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nUpgrade: websocket\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// An upstream that records each request head and answers `101 Upgrade: h2c` + an HTTP/2
/// server preface when asked for h2c, else a correct WebSocket 101.
async fn h2c_upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let heads = Arc::new(Mutex::new(Vec::new()));
    let heads2 = heads.clone();
    let addr = spawn_upstream(move |mut s: TcpStream| {
        let heads = heads2.clone();
        async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let head = String::from_utf8_lossy(&buf).to_string();
            heads.lock().unwrap().push(head.clone());
            let h2c = head
                .lines()
                .any(|l| l.to_ascii_lowercase().starts_with("upgrade:") && l.contains("h2c"));
            let resp: &[u8] = if h2c {
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"
            } else {
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
            };
            let _ = s.write_all(resp).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    })
    .await;
    (addr, heads)
}

#[tokio::test]
async fn h2c_smuggling_upstream_sees_only_websocket() {
    let (up, heads) = h2c_upstream().await;
    let gate = start_gate(Files::new(), &config(&route("/ws", up), "")).await;
    let (status, head, _) = http_request(gate.addr(), H2C_ATTACK).await;
    let seen = heads
        .lock()
        .unwrap()
        .last()
        .cloned()
        .expect("upstream saw nothing");
    let upgrades: Vec<String> = seen
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("upgrade:"))
        .map(|l| l.to_string())
        .collect();
    assert_eq!(upgrades, vec!["upgrade: websocket"], "{seen}");
    assert!(
        !seen.to_ascii_lowercase().contains("http2-settings"),
        "{seen}"
    );
    assert_eq!(status, 101, "{head}");
    assert_eq!(
        head_header(&head, "upgrade").as_deref(),
        Some("websocket"),
        "{head}"
    );
}

#[tokio::test]
async fn only_correct_websocket_101s_are_spliced() {
    // The key sent is upgrade_request's `dGhlIHNhbXBsZSBub25jZQ==` (RFC 6455's example).
    const GOOD: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    let bad: &[(&str, &'static [u8])] = &[
        (
            "h2c",
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
        ),
        (
            "h2c with accept",
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        ),
        (
            "missing accept",
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        ),
        (
            "wrong accept",
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
        ),
        (
            "no upgrade",
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        ),
        (
            "no connection",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        ),
        (
            "two protocols",
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket, h2c\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        ),
    ];
    let mut routes = String::new();
    let good = raw_upstream(GOOD).await;
    routes.push_str(&route("/good", good));
    for (i, (_, resp)) in bad.iter().enumerate() {
        routes.push_str(&route(&format!("/bad{i}"), raw_upstream(resp).await));
    }
    let gate = start_gate(Files::new(), &config(&routes, "")).await;
    let (status, head, _) = http_request(gate.addr(), &upgrade_request("/good", "")).await;
    assert_eq!(status, 101, "control: {head}");
    for (i, (what, _)) in bad.iter().enumerate() {
        let path = format!("/bad{i}");
        let (status, head, _) = http_request(gate.addr(), &upgrade_request(&path, "")).await;
        assert_eq!(status, 502, "{what}: {head}");
        assert_eq!(
            gate.metric(&handshakes("upstream_rejected", &path)).await,
            1.0,
            "{what}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// item 5: trusted_proxies never skip a hop; PROXY headers only from trusted peers
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn forwarded_for_hops_with_ports_are_not_skipped() {
    let echo = echo_upstream().await;
    let gate = start_gate(
        Files::new(),
        &config(
            &route("/ws", echo.addr),
            "trusted_proxies: [\"127.0.0.1\", \"10.0.0.0/8\"]\n",
        ),
    )
    .await;
    let cases = [
        ("6.6.6.6, 203.0.113.5:4444", "203.0.113.5"),
        ("6.6.6.6, [2001:db8::5]:4444", "2001:db8::5"),
        ("6.6.6.6, [2001:db8::6]", "2001:db8::6"),
        ("6.6.6.6, 203.0.113.5:4444, 10.0.0.9:80", "203.0.113.5"),
        // An entry that still doesn't parse ends the walk at the trusted hop after it.
        ("6.6.6.6, unknown", "127.0.0.1"),
        ("6.6.6.6, _hidden, 10.0.0.9", "10.0.0.9"),
        ("6.6.6.6, 203.0.113.5:port", "127.0.0.1"),
    ];
    for (xff, want) in cases {
        let (status, head, _) = http_request(
            gate.addr(),
            &upgrade_request("/ws", &format!("X-Forwarded-For: {xff}\r\n")),
        )
        .await;
        assert_eq!(status, 101, "{xff}: {head}");
        assert_eq!(echo.last().header("x-real-ip"), Some(want), "{xff}");
    }
}

#[tokio::test]
async fn proxy_header_only_from_trusted_peers() {
    let echo = echo_upstream().await;
    let listener = "listeners:\n  - bind: \"127.0.0.1:0\"\n    proxy_protocol: true\nadmin:\n  bind: \"127.0.0.1:0\"\nroutes:\n";
    let untrusted = format!(
        "{listener}{}trusted_proxies: [\"10.0.0.0/8\"]\n",
        route("/ws", echo.addr)
    );
    let gate = start_gate(Files::new(), &untrusted).await;
    let mut s = TcpStream::connect(gate.addr()).await.unwrap();
    s.write_all(b"PROXY TCP4 6.6.6.6 127.0.0.1 5555 80\r\n")
        .await
        .unwrap();
    s.write_all(upgrade_request("/ws", "").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf)).await;
    assert!(
        r.is_ok(),
        "connection from an untrusted PROXY sender left open"
    );
    assert!(
        !String::from_utf8_lossy(&buf).contains("101"),
        "upgraded behind an untrusted PROXY header"
    );
    assert_eq!(echo.count(), 0);
    assert_eq!(
        wait_metric(&gate, &handshakes("bad_request", "unmatched"), 1.0).await,
        1.0
    );

    // The same bytes from a trusted peer are believed.
    let trusted = format!(
        "{listener}{}trusted_proxies: [\"127.0.0.1\"]\n",
        route("/ws", echo.addr)
    );
    let gate = start_gate(Files::new(), &trusted).await;
    let mut s = TcpStream::connect(gate.addr()).await.unwrap();
    s.write_all(b"PROXY TCP4 6.6.6.6 127.0.0.1 5555 80\r\n")
        .await
        .unwrap();
    s.write_all(upgrade_request("/ws", "").as_bytes())
        .await
        .unwrap();
    let (status, head, _) = read_response(&mut s).await;
    assert_eq!(status, 101, "{head}");
    assert_eq!(echo.last().header("x-real-ip"), Some("6.6.6.6"));
}

#[tokio::test]
async fn other_x_forwarded_headers_only_from_trusted_peers() {
    let echo = echo_upstream().await;
    let extra = "X-Forwarded-Prefix: /evil\r\nX-Forwarded-Port: 1\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.test\r\n";
    for (yaml, trusted) in [
        ("", false),
        ("trusted_proxies: [\"10.0.0.0/8\"]\n", false),
        ("trusted_proxies: [\"127.0.0.1\"]\n", true),
    ] {
        let gate = start_gate(Files::new(), &config(&route("/ws", echo.addr), yaml)).await;
        let (status, _, _) = http_request(gate.addr(), &upgrade_request("/ws", extra)).await;
        assert_eq!(status, 101);
        let seen = echo.last();
        // wsgate's own values always win.
        assert_eq!(seen.all("x-forwarded-proto"), vec!["http"], "{yaml}");
        assert_eq!(seen.all("x-forwarded-host"), vec!["gate.test"], "{yaml}");
        let want: Vec<String> = if trusted {
            vec!["/evil".into()]
        } else {
            vec![]
        };
        assert_eq!(seen.all("x-forwarded-prefix"), want, "{yaml}");
        let want: Vec<String> = if trusted { vec!["1".into()] } else { vec![] };
        assert_eq!(seen.all("x-forwarded-port"), want, "{yaml}");
    }
}
