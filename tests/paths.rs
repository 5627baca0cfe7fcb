//! Canonical request paths (issue 8, High 1): the route wsgate picks must be the route the
//! backend dispatches, whatever encoding, dot segments, path parameters or letter case the
//! attacker uses.
//!
//! - `attacker_*`: the exact requests from the issue against in-process upstreams, one per
//!   route, so the route wsgate chose is the upstream that answered.
//! - `differential_*`: a table of tricky paths through wsgate to real backend stacks (express 4
//!   with express-ws, Node's WHATWG URL parser, Python's stdlib `http.server` and
//!   `websockets`), each listening on two ports: one behind the open route `/`, one behind
//!   the protected route `/admin`. The backend reports the route *it* dispatched; the property
//!   is that wsgate either refuses the path (4xx) or forwarded it to the port of that route.
mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const USER: &str = "alice";
const PASS: &str = "wonder-land";

fn htpasswd(files: &Files) {
    files.write(
        "users.htpasswd",
        &format!("{}\n", htpasswd_line(USER, PASS)),
    );
}

/// Routes: each `(path, upstream, protected)`; upgrade rate limits off (the tables send many).
fn config(routes: &[(&str, SocketAddr, bool)], extra: &str) -> String {
    let mut y = String::from(
        "listeners:\n  - bind: \"127.0.0.1:0\"\nadmin:\n  bind: \"127.0.0.1:0\"\n\
         auth:\n  users:\n    type: basic\n    htpasswd: \"{dir}/users.htpasswd\"\n\
         limits:\n  handshake_rate_per_ip: 0\n  max_connections_per_ip: 0\nroutes:\n",
    );
    for (path, up, protected) in routes {
        y.push_str(&format!("  - path: \"{path}\"\n    upstream: ws://{up}\n"));
        if *protected {
            y.push_str("    auth: [users]\n");
        }
    }
    y.push_str(extra);
    y
}

/// Sends raw bytes (the request line is the attacker's, byte for byte) and reads the answer.
async fn raw(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_response(&mut s).await
}

fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: gate.test\r\nConnection: close\r\n{extra}\r\n")
        .into_bytes()
}

// ---------------------------------------------------------------------------------------
// The issue's exact attacker requests
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn attacker_paths_from_the_issue_never_reach_a_backend_unauthenticated() {
    let open = echo_upstream().await;
    let admin = echo_upstream().await;
    let rec = echo_upstream().await;
    let rec_auth = echo_upstream().await;
    let files = Files::new();
    htpasswd(&files);
    let gate = start_gate(
        files,
        &config(
            &[
                ("/", open.addr, false),
                ("/admin", admin.addr, true),
                ("/rec", rec.addr, false),
                ("/rec-auth", rec_auth.addr, true),
            ],
            "",
        ),
    )
    .await;

    for path in ["/%61dmin", "/admin;x=1", "/ADMIN", "/x/..;/admin"] {
        let (status, head, body) = raw(gate.addr(), &get(path, "")).await;
        assert!(
            [400, 401, 404].contains(&status),
            "GET {path}: {status}\n{head}\n{body}"
        );
    }
    let (status, head, _) = raw(
        gate.addr(),
        upgrade_request("/rec/%2e%2e;/rec-auth", "").as_bytes(),
    )
    .await;
    assert!(
        [400, 401, 404].contains(&status),
        "upgrade: {status}\n{head}"
    );
    assert_eq!(open.count(), 0, "open route reached: {:?}", open.last());
    assert_eq!(rec.count(), 0, "open route reached: {:?}", rec.last());
    assert_eq!(admin.count() + rec_auth.count(), 0);
}

#[tokio::test]
async fn refusals_are_400_with_a_precise_body_and_counted_bad_request() {
    let open = echo_upstream().await;
    let files = Files::new();
    htpasswd(&files);
    let gate = start_gate(files, &config(&[("/", open.addr, false)], "")).await;
    let cases: &[(&str, &str)] = &[
        ("/admin;x=1", ";"),
        ("/x/..;/admin", ";"),
        ("/a/%2e%2e/b", "dot segment"),
        ("/a/../b", "dot segment"),
        ("/a/./b", "dot segment"),
        ("/a%2fb", "encoded"),
        ("/a%5Cb", "encoded"),
        ("/%252e%252e/admin", "double"),
        ("/%2561dmin", "double"),
        ("/a%00", "NUL"),
        ("/a%0d%0a", "control"),
        ("/a//b", "empty segment"),
        ("/a%zz", "percent-escape"),
        ("/a%4", "percent-escape"),
        ("/%c0%ae%c0%ae/admin", "UTF-8"),
        ("/admin.", "ends in"),
        ("/%ef%bc%8e%ef%bc%8e/admin", "normalises to ASCII"),
        ("*", "target"),
    ];
    for (path, want) in cases {
        let (status, head, body) = raw(gate.addr(), &get(path, "")).await;
        assert_eq!(status, 400, "{path}: {head}\n{body}");
        assert!(body.contains(want), "{path}: body {body:?} lacks {want:?}");
        assert_eq!(head_header(&head, "connection").as_deref(), Some("close"));
    }
    let (status, _, body) = raw(gate.addr(), upgrade_request("/a;b", "").as_bytes()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        gate.metric("wsgate_handshakes_total{outcome=\"bad_request\",route=\"unmatched\"}")
            .await,
        1.0
    );
    assert_eq!(open.count(), 0);
}

#[tokio::test]
async fn the_upstream_gets_exactly_the_canonical_path_and_the_query() {
    let open = echo_upstream().await;
    let admin = echo_upstream().await;
    let files = Files::new();
    htpasswd(&files);
    let gate = start_gate(
        files,
        &config(&[("/", open.addr, false), ("/admin", admin.addr, true)], ""),
    )
    .await;
    let auth = format!("Authorization: {}\r\n", basic(USER, PASS));
    // Unreserved characters decoded, other escapes upper-cased, the query untouched.
    let (status, _, body) = raw(
        gate.addr(),
        &get("/%61dm%69n/x%7e%2D/%c3%a4%3a?q=%2e%2E&r=1", &auth),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(admin.last().uri, "/admin/x~-/%C3%A4%3A?q=%2e%2E&r=1");
    // The same without credentials is the protected route's 401, not the open route.
    let (status, _, _) = raw(gate.addr(), &get("/%61dmin", "")).await;
    assert_eq!(status, 401);
    // An upgrade gets the canonical path too.
    let (status, head, _) = raw(
        gate.addr(),
        upgrade_request("/%41dmin/%7Echat", &auth).as_bytes(),
    )
    .await;
    // "/Admin" is not "/admin" (paths are case-sensitive) but would be for a case-folding
    // backend: refused rather than sent to "/".
    assert_eq!(status, 400, "{head}");
    let (status, head, _) = raw(
        gate.addr(),
        upgrade_request("/%61dmin/%7Echat", &auth).as_bytes(),
    )
    .await;
    assert_eq!(status, 101, "{head}");
    assert_eq!(admin.last().uri, "/admin/~chat");
    // Absolute-form: routed on its path, forwarded in origin-form.
    let (status, _, body) = raw(gate.addr(), &get("http://gate.test/%61dmin?x=1", "")).await;
    assert_eq!(status, 401, "{body}");
    let (status, _, body) = raw(gate.addr(), &get("http://gate.test/pub%7e", "")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(open.last().uri, "/pub~");
}

#[tokio::test]
async fn letter_case_that_would_change_the_route_is_refused_unless_case_insensitive() {
    let open = echo_upstream().await;
    let admin = echo_upstream().await;
    let files = Files::new();
    htpasswd(&files);
    let routes = [("/", open.addr, false), ("/admin", admin.addr, true)];
    let gate = start_gate(files, &config(&routes, "")).await;
    for path in ["/ADMIN", "/Admin/x", "/aDmIn"] {
        let (status, _, body) = raw(gate.addr(), &get(path, "")).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("letter case"), "{body}");
    }
    // Case that changes nothing is fine: no route differs only by case here.
    let (status, _, _) = raw(gate.addr(), &get("/Other", "")).await;
    assert_eq!(status, 200);
    assert_eq!(open.count(), 1);

    let files = Files::new();
    htpasswd(&files);
    let gate = start_gate(files, &config(&routes, "case_insensitive_paths: true\n")).await;
    for path in ["/ADMIN", "/Admin/x", "/aDmIn"] {
        let (status, _, _) = raw(gate.addr(), &get(path, "")).await;
        assert_eq!(status, 401, "{path}");
    }
    let auth = format!("Authorization: {}\r\n", basic(USER, PASS));
    let (status, _, _) = raw(gate.addr(), &get("/ADMIN/x", &auth)).await;
    assert_eq!(status, 200);
    // The path is forwarded as sent (canonical, case kept): the gate only routes differently.
    assert_eq!(admin.last().uri, "/ADMIN/x");
    assert_eq!(open.count(), 1);
}

// ---------------------------------------------------------------------------------------
// Differential tests against real backend stacks
// ---------------------------------------------------------------------------------------

/// The table: every path is sent as is on the request line.
const TRICKY: &[&str] = &[
    "/",
    "/admin",
    "/admin/",
    "/admin/x",
    "/adminx",
    "/admin%2f",
    "/admin%2F",
    "/admin%2fx",
    "/%61dmin",
    "/%61%64%6d%69%6e",
    "/adm%69n",
    "/adm%49n",
    "/%2561dmin",
    "/%25%36%31dmin",
    "/admin%20",
    "/admin%09",
    "/admin.",
    "/admin..",
    "/admin%2e",
    "/admin/.",
    "/admin/..",
    "/admin/./",
    "/./admin",
    "/x/../admin",
    "/x/%2e%2e/admin",
    "/x/%2E%2e/admin",
    "/x/.%2e/admin",
    "/x/%252e%252e/admin",
    "/x/..%2fadmin",
    "/x/..%5cadmin",
    "/x/..\\admin",
    "/x\\..\\admin",
    "/admin\\x",
    "/ADMIN",
    "/Admin/x",
    "/aDMIN/",
    "/admin%00",
    "/admin%00/x",
    "/admin;/",
    "/admin;x=1",
    "/x/..;/admin",
    "/admin;",
    "//admin",
    "///admin",
    "/x//admin",
    "/admin?x",
    "/admin?x=/../",
    "/x?/admin",
    "/admin#x",
    "/x#/admin",
    "/%c0%ae%c0%ae/admin",
    "/%c0%afadmin",
    "/%e0%80%ae/admin",
    "/%ef%bc%8fadmin",
    "/%ef%bc%8e%ef%bc%8e/admin",
    "/x/%ef%bc%8e%ef%bc%8e/admin",
    "/%ef%bd%81dmin",
    "/%e2%84%aadmin",
    "/%c3%a4dmin",
    "/admin/%c3%a4",
    "/admin%c3",
    "/%ff",
    "/admin%2B",
    "/admin+",
    "/admin%3B",
    "/admin%3bx",
    "/admin%3F",
    "/admin%23",
    "/admin%25",
    "/admin%25x",
    "/%2Fadmin",
    "/%5cadmin",
    "/admin~",
    "/admin%7e",
    "/%7eadmin",
    "/a:b/admin",
    "/admin:x",
    "/admin@x",
    "/admin!",
    "/admin'",
    "/admin\"",
    "/admin{x}",
    "/admin|x",
    "/admin^",
    "/admin`",
    "/admin[0]",
    "/admin%5B0%5D",
    "/admin%zz",
    "/admin%4",
    "/admin%",
    "*",
    "http://gate.test/admin",
    "http://gate.test/%61dmin",
    "http://gate.test/x/../admin",
    "http://gate.test",
];

/// A path repeated to a few KiB (under the 64 KiB head limit).
fn long_paths() -> Vec<String> {
    vec![
        format!("/admin/{}", "a".repeat(8000)),
        format!("/{}/admin", "x".repeat(8000)),
        format!("/admin{}", "/x".repeat(2000)),
        format!("/{}admin", "%2e%2e/".repeat(500)),
    ]
}

/// A backend process listening on two ports; prints `{"event":"listening","ports":[a,b]}`.
struct Backend {
    name: &'static str,
    child: Child,
    ports: [u16; 2],
    /// Whether the backend folds letter case when dispatching (express does by default).
    folds_case: bool,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

async fn spawn_backend(name: &'static str, mut cmd: Command, folds_case: bool) -> Backend {
    cmd.current_dir(interop_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "{name}: cannot start {cmd:?}: {e} (run tests/interop/install.sh: the differential \
             path tests need node and the Python venv)"
        )
    });
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // A thread owns stdout: it hands over the first line, then keeps draining so the backend
    // never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        let _ = tx.send(lines.next());
        for _ in lines {}
    });
    let line = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(20)))
        .await
        .unwrap()
        .unwrap_or_else(|_| panic!("{name}: not listening within 20 s"))
        .unwrap_or_else(|| panic!("{name}: exited before listening"))
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{name}: {line:?}: {e}"));
    assert_eq!(v["event"], "listening", "{name}: {line}");
    let ports = [
        v["ports"][0].as_u64().unwrap() as u16,
        v["ports"][1].as_u64().unwrap() as u16,
    ];
    Backend {
        name,
        child,
        ports,
        folds_case,
    }
}

fn node(script_args: &[&str]) -> Command {
    let mut c = Command::new("node");
    c.args(script_args);
    c
}

fn python(script_args: &[&str]) -> Command {
    let py = interop_dir().join(".venv/bin/python");
    assert!(
        py.exists(),
        "{} missing: run tests/interop/install.sh",
        py.display()
    );
    let mut c = Command::new(py);
    c.args(script_args);
    c
}

/// What the backend reported for one request: the port it was reached on and its dispatch.
#[derive(Debug)]
struct Dispatch {
    port: u16,
    route: String,
    path: String,
}

fn parse_dispatch(json: &str) -> Dispatch {
    let v: serde_json::Value =
        serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("{json:?}: {e}"));
    Dispatch {
        port: v["port"].as_u64().unwrap_or_else(|| panic!("{json}")) as u16,
        route: v["route"].as_str().unwrap().to_string(),
        path: v["path"].as_str().unwrap_or("").to_string(),
    }
}

/// Reads the first server→client WebSocket frame after a 101 (unmasked, short): its text, or
/// `None` for a close frame (express-ws answers 101 first and closes when its router fails).
async fn first_ws_text(s: &mut TcpStream, already: &[u8]) -> Option<String> {
    let mut buf = already.to_vec();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if buf.len() >= 2 {
            let len7 = (buf[1] & 0x7f) as usize;
            let (hdr, len) = match len7 {
                126 if buf.len() >= 4 => (4, u16::from_be_bytes([buf[2], buf[3]]) as usize),
                126 => (usize::MAX, 0),
                127 => panic!("frame too long"),
                n => (2, n),
            };
            if hdr != usize::MAX && buf.len() >= hdr + len {
                return match buf[0] & 0x0f {
                    1 => Some(String::from_utf8_lossy(&buf[hdr..hdr + len]).into_owned()),
                    8 => None,
                    _ => panic!("unexpected frame {buf:?}"),
                };
            }
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            other => panic!("no WebSocket frame after 101: {other:?}, have {buf:?}"),
        }
    }
}

/// Sends one request; `Ok(dispatch)` when the backend answered, `Err(status)` when refused.
async fn send(gate: SocketAddr, path: &str, creds: bool, upgrade: bool) -> Result<Dispatch, u16> {
    let auth = if creds {
        format!("Authorization: {}\r\n", basic(USER, PASS))
    } else {
        String::new()
    };
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: gate.test\r\n");
    if upgrade {
        req.push_str(
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        );
    } else {
        req.push_str("Connection: close\r\n");
    }
    req.push_str(&auth);
    req.push_str("\r\n");
    let mut s = TcpStream::connect(gate).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    if !upgrade {
        let (status, head, body) = read_response(&mut s).await;
        return match status {
            200 => Ok(parse_dispatch(&body)),
            _ if head_header(&head, "x-backend").is_some() => {
                panic!("{path}: backend answered {status}: {head}\n{body}")
            }
            s => Err(s),
        };
    }
    // Read the head by hand: the bytes after it belong to the WebSocket.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let pos = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            other => panic!("{path}: no response head: {other:?} {buf:?}"),
        }
    };
    let head = String::from_utf8_lossy(&buf[..pos]).to_string();
    let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
    match status {
        101 => match first_ws_text(&mut s, &buf[pos + 4..]).await {
            Some(text) => Ok(parse_dispatch(&text)),
            // Closed before any handler ran: the backend refused it (status 0 in the table).
            None => Err(0),
        },
        // The backend's own refusal of an upgrade it could not dispatch (e.g. a 404 from
        // express-ws): it never ran a handler, so it counts as refused.
        s => Err(s),
    }
}

/// Runs every path through `gate` to `backend` and checks the property; returns a summary.
async fn check_table(gate: &Gate, backend: &Backend, case_insensitive: bool) -> String {
    let mut paths: Vec<String> = TRICKY.iter().map(|s| s.to_string()).collect();
    paths.extend(long_paths());
    let mut failures = Vec::new();
    let mut summary = Vec::new();
    for path in &paths {
        for upgrade in [false, true] {
            for creds in [false, true] {
                let got = send(gate.addr(), path, creds, upgrade).await;
                let shown = if path.len() > 60 { &path[..60] } else { path };
                let kind = if upgrade { "ws" } else { "http" };
                match &got {
                    Err(status) => {
                        assert!(
                            (400..500).contains(status) || [0, 502].contains(status),
                            "{shown} {kind}: {status}"
                        );
                    }
                    Ok(d) => {
                        let gate_route = if d.port == backend.ports[1] {
                            "admin"
                        } else {
                            assert_eq!(d.port, backend.ports[0]);
                            "root"
                        };
                        if gate_route != d.route {
                            failures.push(format!(
                                "{} {kind} creds={creds} {shown:?}: wsgate chose {gate_route}, \
                                 backend dispatched {} (saw {:?})",
                                backend.name, d.route, d.path
                            ));
                        }
                        if !creds && d.route == "admin" {
                            failures.push(format!(
                                "{} {kind} {shown:?}: admin reached without credentials",
                                backend.name
                            ));
                        }
                    }
                }
                if creds {
                    summary.push(format!(
                        "{kind} {shown:?} -> {}",
                        match got {
                            Ok(d) => format!("{} (backend saw {:?})", d.route, d.path),
                            Err(s) => s.to_string(),
                        }
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} (case_insensitive_paths: {case_insensitive}) route mismatches:\n{}",
        backend.name,
        failures.join("\n")
    );
    let summary = summary.join("\n");
    eprintln!(
        "{} (case_insensitive_paths: {case_insensitive}):\n{summary}",
        backend.name
    );
    summary
}

async fn gate_for(backend: &Backend, extra: &str) -> Gate {
    let files = Files::new();
    htpasswd(&files);
    let a: SocketAddr = format!("127.0.0.1:{}", backend.ports[0]).parse().unwrap();
    let b: SocketAddr = format!("127.0.0.1:{}", backend.ports[1]).parse().unwrap();
    start_gate(
        files,
        &config(&[("/", a, false), ("/admin", b, true)], extra),
    )
    .await
}

#[tokio::test]
async fn differential_express4_and_express_ws() {
    if !tools_available("differential_express4_and_express_ws", &node_tools()) {
        return;
    }
    let backend = spawn_backend("express", node(&["paths_backend.js", "express"]), true).await;
    assert!(backend.folds_case);
    let gate = gate_for(&backend, "").await;
    let summary = check_table(&gate, &backend, false).await;
    // Some requests must get through, or the test proves nothing.
    assert!(
        summary.contains("-> admin") && summary.contains("-> root"),
        "{summary}"
    );
    // Express folds case: with case_insensitive_paths the gate agrees with it exactly.
    let gate = gate_for(&backend, "case_insensitive_paths: true\n").await;
    let summary = check_table(&gate, &backend, true).await;
    assert!(summary.contains("\"/ADMIN\" -> admin"), "{summary}");
}

#[tokio::test]
async fn differential_node_whatwg_url() {
    if !tools_available("differential_node_whatwg_url", &node_tools()) {
        return;
    }
    let backend = spawn_backend("node-url", node(&["paths_backend.js", "url"]), false).await;
    let gate = gate_for(&backend, "").await;
    let summary = check_table(&gate, &backend, false).await;
    assert!(
        summary.contains("-> admin") && summary.contains("-> root"),
        "{summary}"
    );
}

#[tokio::test]
async fn differential_python_stdlib_http_server() {
    if !tools_available("differential_python_stdlib_http_server", &python_tools()) {
        return;
    }
    let backend = spawn_backend(
        "python-stdlib",
        python(&["paths_backend.py", "stdlib"]),
        false,
    )
    .await;
    let gate = gate_for(&backend, "").await;
    let summary = check_table(&gate, &backend, false).await;
    assert!(
        summary.contains("-> admin") && summary.contains("-> root"),
        "{summary}"
    );
}

#[tokio::test]
async fn differential_python_websockets() {
    if !tools_available("differential_python_websockets", &python_tools()) {
        return;
    }
    let backend = spawn_backend(
        "python-websockets",
        python(&["paths_backend.py", "websockets"]),
        false,
    )
    .await;
    let gate = gate_for(&backend, "").await;
    let summary = check_table(&gate, &backend, false).await;
    assert!(
        summary.contains("-> admin") && summary.contains("-> root"),
        "{summary}"
    );
}
