//! Interop suite (issue #4): the built `wsgate` binary between real third-party peers —
//! Node `ws`, express-ws, Socket.IO, headless Chromium, Python `websockets`, Prometheus.
//!
//! Needs `tests/interop/install.sh` to have run (node_modules, the Python venv, Debian
//! `chromium` and `prometheus`). Every process a test starts is owned by a [`Proc`] guard that
//! kills it on drop, panics included. Everything listens on 127.0.0.1, on ports picked at run time.
// Real sockets against a running gateway: deadlines here are wall-clock on purpose.
#![allow(clippy::disallowed_types)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const USER: &str = "alice";
const PASS: &str = "wonder-land";

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// A child process killed (and reaped) on drop. Its stdout lines are collected (JSON lines from
/// the interop scripts); its stderr goes to a file shown when a test fails.
struct Proc {
    name: String,
    child: Child,
    rx: Receiver<String>,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: PathBuf,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, logs: &Path) -> Proc {
        let stderr = logs.join(format!("{name}.stderr"));
        let err = std::fs::File::create(&stderr).unwrap();
        // Own process group, so Drop also reaches grandchildren (Chromium under playwright).
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start {cmd:?}: {e}"));
        let out = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let lines2 = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                lines2.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        Proc {
            name: name.to_string(),
            child,
            rx,
            lines,
            stderr,
        }
    }

    fn stderr_text(&self) -> String {
        let s = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let tail: Vec<&str> = s.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Waits for the next stdout JSON line satisfying `pred`.
    fn wait_json(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&line)
                        && pred(&v)
                    {
                        return v;
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => panic!(
                    "{}: no {what} within {timeout:?}; stdout:\n{}\nstderr:\n{}",
                    self.name,
                    self.lines.lock().unwrap().join("\n"),
                    self.stderr_text()
                ),
            }
        }
    }

    /// The first JSON line printed (the result of a one-shot client script).
    fn result(&self, timeout: Duration) -> Value {
        self.wait_json("result line", timeout, |_| true)
    }

    /// All JSON lines printed so far with `"event": event`.
    fn events(&self, event: &str) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["event"] == event)
            .collect()
    }

    /// Waits until an event matching `pred` has been printed (already or later).
    fn wait_event(&self, event: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = self.events(event).into_iter().find(|v| pred(v)) {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: no matching {event:?} event; stdout:\n{}\nstderr:\n{}",
                    self.name,
                    self.lines.lock().unwrap().join("\n"),
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let group = format!("-{}", self.child.id());
            let _ = Command::new("kill")
                .args(["-KILL", "--", &group])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- {} stdout:\n{}\n--- {} stderr (tail):\n{}",
                self.name,
                self.lines.lock().unwrap().join("\n"),
                self.name,
                self.stderr_text()
            );
        }
    }
}

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

fn need(path: &Path) {
    assert!(
        path.exists(),
        "{} is missing: run tests/interop/install.sh first",
        path.display()
    );
}

/// Node and the npm packages every interop test uses, plus `extra`; false = skip (see
/// [`common::tools_available`]).
fn ready<const N: usize>(test: &str, extra: [common::Tool<'static>; N]) -> bool {
    let mut tools = common::node_tools();
    tools.extend(extra);
    common::tools_available(test, &tools)
}

/// The Python interpreter the interop tests run (`WSGATE_INTEROP_PYTHON` overrides the venv's).
fn python_tool() -> common::Tool<'static> {
    common::Tool::File(python_path())
}

fn python_path() -> PathBuf {
    std::env::var_os("WSGATE_INTEROP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| interop_dir().join(".venv/bin/python"))
}

/// `node tests/interop/<script> args...`
fn node(script: &str, args: &[&str]) -> Command {
    let dir = interop_dir();
    need(&dir.join("node_modules/ws"));
    let mut c = Command::new("node");
    c.current_dir(&dir).arg(dir.join(script)).args(args);
    c
}

/// The venv python made by install.sh (`WSGATE_INTEROP_PYTHON` overrides).
fn python(script: &str, args: &[&str]) -> Command {
    let py = python_path();
    need(&py);
    let mut c = Command::new(py);
    c.current_dir(interop_dir())
        .env("PYTHONUNBUFFERED", "1")
        .arg(interop_dir().join(script))
        .args(args);
    c
}

/// A port free right now on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts a backend script on a fresh port and waits for its `listening` line.
fn backend(name: &str, mut cmd: Command, logs: &Path) -> Proc {
    cmd.env("NODE_ENV", "production");
    let p = Proc::spawn(name, cmd, logs);
    p.wait_json("listening line", Duration::from_secs(15), |v| {
        v["event"] == "listening"
    });
    p
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// One HTTP/1.1 request (Connection: close); returns (status, head, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    http_with_body(addr, method, path, headers, "")
}

/// [`http`] with a request body (the caller sets its headers).
fn http_with_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, head.to_string(), body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

fn basic_header() -> String {
    common::basic(USER, PASS)
}

// ---------------------------------------------------------------------------------------------
// The gateway
// ---------------------------------------------------------------------------------------------

struct Gate {
    _proc: Proc,
    addr: SocketAddr,
    tls: SocketAddr,
    admin: SocketAddr,
    dir: tempfile::TempDir,
}

/// TLS material for the gateway's wss:// listener (`gate.crt`, `gate.key`).
fn write_cert(dir: &Path) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("gate.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("gate.key"), key.serialize_pem()).unwrap();
}

impl Gate {
    /// Starts `target/debug/wsgate` with the given `routes:` block (YAML, indented by 2) and
    /// authenticators `users` (Basic, realm wsgate, alice), `jwt` (HS256, `?token=`) and `k8s`
    /// (HS256 in a `base64url.bearer.authorization.k8s.io.` subprotocol).
    fn start(routes: &str) -> Gate {
        let dir = tempfile::tempdir().unwrap();
        write_cert(dir.path());
        std::fs::write(
            dir.path().join("users.htpasswd"),
            common::htpasswd_line(USER, PASS) + "\n",
        )
        .unwrap();
        let (p, t, a) = (free_port(), free_port(), free_port());
        let d = dir.path().display();
        let yaml = format!(
            r#"listeners:
  - bind: "127.0.0.1:{p}"
  - bind: "127.0.0.1:{t}"
    tls:
      cert: {d}/gate.crt
      key: {d}/gate.key
admin:
  bind: "127.0.0.1:{a}"
auth:
  users:
    type: basic
    realm: wsgate
    htpasswd: {d}/users.htpasswd
  jwt:
    type: jwt
    query_param: token
    algorithms: [HS256]
    secret: "${{WSGATE_JWT_SECRET}}"
    leeway: 30s
  k8s:
    type: jwt
    algorithms: [HS256]
    secret: "${{WSGATE_JWT_SECRET}}"
    from: [subprotocol: "base64url.bearer.authorization.k8s.io."]
routes:
{routes}
shutdown:
  drain_timeout: 1s
"#
        );
        let config = dir.path().join("wsgate.yaml");
        std::fs::write(&config, &yaml).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsgate"));
        cmd.arg("--config")
            .arg(&config)
            .env("WSGATE_JWT_SECRET", common::JWT_SECRET)
            .env("RUST_LOG", "info");
        let mut proc = Proc::spawn("wsgate", cmd, dir.path());
        let admin: SocketAddr = format!("127.0.0.1:{a}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = proc.child.try_wait() {
                panic!(
                    "wsgate exited with {status} at start-up:\n{}\nconfig:\n{yaml}",
                    proc.stderr_text()
                );
            }
            if TcpStream::connect(admin).is_ok() && http(admin, "GET", "/healthz", &[]).0 == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "wsgate not ready:\n{}",
                proc.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Gate {
            _proc: proc,
            addr: format!("127.0.0.1:{p}").parse().unwrap(),
            tls: format!("127.0.0.1:{t}").parse().unwrap(),
            admin,
            dir,
        }
    }

    fn ws(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    fn ws_creds(&self, user: &str, pass: &str, path: &str) -> String {
        format!("ws://{user}:{pass}@{}{}", self.addr, path)
    }

    fn metrics(&self) -> String {
        let (status, _, body) = http(self.admin, "GET", "/metrics", &[]);
        assert_eq!(status, 200, "admin /metrics");
        body
    }

    /// Sum of the samples of `name` whose labels include all of `labels`.
    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&self.metrics(), name, labels)
    }

    /// Polls until `metric(name, labels) >= want` (5 s); returns the last value.
    fn wait_metric(&self, name: &str, labels: &[(&str, &str)], want: f64) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = self.metric(name, labels);
            if v >= want || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (lbls, value) = if let Some(r) = rest.strip_prefix('{') {
            match r.split_once('}') {
                Some((l, v)) => (l, v),
                None => continue,
            }
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue;
        };
        if labels
            .iter()
            .all(|(k, v)| lbls.contains(&format!("{k}=\"{v}\"")))
        {
            sum += value.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    sum
}

fn route(path: &str, port: u16, auth: &str) -> String {
    let auth = if auth.is_empty() {
        String::new()
    } else {
        format!("\n    auth: [{auth}]")
    };
    format!("  - path: {path}\n    upstream: ws://127.0.0.1:{port}{auth}\n")
}

fn logs() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Runs a one-shot client script and returns its JSON result line.
fn run_client(name: &str, cmd: Command, logs: &Path, timeout: Duration) -> Value {
    let p = Proc::spawn(name, cmd, logs);
    p.result(timeout)
}

fn hdr<'a>(conn: &'a Value, name: &str) -> &'a Value {
    &conn["headers"][name]
}

// ---------------------------------------------------------------------------------------------
// 1. Node `ws`
// ---------------------------------------------------------------------------------------------

#[test]
fn node_ws_server_behind_basic_and_token_routes() {
    if !ready("node_ws_server_behind_basic_and_token_routes", []) {
        return;
    }
    let logs = logs();
    let port = free_port();
    let ws_backend = backend(
        "ws_server",
        node("ws_server.js", &[&port.to_string(), "node-ws"]),
        logs.path(),
    );
    let gate = Gate::start(&(route("/basic", port, "users") + &route("/token", port, "jwt")));

    // Basic in the Authorization header; forged identity headers from the client.
    let headers = json!({
        "Authorization": basic_header(),
        "X-Auth-User": "mallory",
        "X-Forwarded-For": "203.0.113.9",
    })
    .to_string();
    let r = run_client(
        "ws_client_basic",
        node("ws_client.js", &[&gate.ws("/basic/chat?room=1"), &headers]),
        logs.path(),
        Duration::from_secs(20),
    );
    assert_eq!(r["opened"], true, "client result: {r}");
    assert_eq!(r["greeting"], "hello from node-ws", "{r}");
    assert_eq!(r["textEcho"], true, "{r}");
    assert_eq!(r["binaryEcho"], true, "{r}");
    assert_eq!(r["megabyteEcho"], true, "{r}");
    assert_eq!(r["closeCode"], 1000, "{r}");

    let c = ws_backend.wait_event("connection", |v| v["url"] == "/basic/chat?room=1");
    assert_eq!(c["remoteAddress"], "127.0.0.1", "{c}");
    assert_eq!(
        hdr(&c, "x-auth-user"),
        "alice",
        "forged X-Auth-User must be replaced: {c}"
    );
    assert_eq!(hdr(&c, "x-forwarded-for"), "203.0.113.9, 127.0.0.1", "{c}");
    assert_eq!(hdr(&c, "x-real-ip"), "127.0.0.1", "{c}");
    assert_eq!(hdr(&c, "x-forwarded-proto"), "http", "{c}");
    assert!(hdr(&c, "x-forwarded-host").is_string(), "{c}");
    assert!(
        hdr(&c, "authorization").is_null(),
        "consumed Basic credential forwarded: {c}"
    );
    let closed = ws_backend.wait_event("close", |v| v["url"] == "/basic/chat?room=1");
    assert_eq!(closed["code"], 1000, "{closed}");
    assert_eq!(closed["reason"], "bye", "{closed}");

    // JWT in ?token=, between other parameters: gone from the backend's req.url.
    let token = common::jwt(json!({"sub": "carol"}));
    let r = run_client(
        "ws_client_token",
        node(
            "ws_client.js",
            &[&gate.ws(&format!("/token/chat?room=lobby&token={token}&x=1"))],
        ),
        logs.path(),
        Duration::from_secs(20),
    );
    assert_eq!(r["opened"], true, "{r}");
    assert_eq!(r["megabyteEcho"], true, "{r}");
    let c = ws_backend.wait_event("connection", |v| {
        v["url"].as_str().unwrap_or("").starts_with("/token/")
    });
    assert_eq!(
        c["url"], "/token/chat?room=lobby&x=1",
        "token must be removed: {c}"
    );
    assert_eq!(hdr(&c, "x-auth-user"), "carol", "{c}");
    assert_eq!(hdr(&c, "x-forwarded-for"), "127.0.0.1", "{c}");
    assert_eq!(hdr(&c, "x-real-ip"), "127.0.0.1", "{c}");

    // The `ws` client sends URL credentials up front.
    let r = run_client(
        "ws_client_url_creds",
        node(
            "ws_client.js",
            &[&gate.ws_creds(USER, PASS, "/basic/url-creds")],
        ),
        logs.path(),
        Duration::from_secs(20),
    );
    assert_eq!(r["opened"], true, "{r}");
    assert_eq!(r["textEcho"], true, "{r}");
    let c = ws_backend.wait_event("connection", |v| v["url"] == "/basic/url-creds");
    assert_eq!(hdr(&c, "x-auth-user"), "alice", "{c}");

    // Wrong password / bad token: 401 before any upgrade, with the Basic challenge.
    let r = run_client(
        "ws_client_wrong",
        node(
            "ws_client.js",
            &[&gate.ws_creds(USER, "nope", "/basic/wrong")],
        ),
        logs.path(),
        Duration::from_secs(20),
    );
    assert_eq!(r["opened"], false, "{r}");
    assert_eq!(r["status"], 401, "{r}");
    let challenge = r["wwwAuthenticate"].as_str().unwrap_or("");
    assert!(challenge.starts_with("Basic realm=\"wsgate\""), "{r}");
    let bad = common::jwt_with(
        json!({}),
        "another-secret-0123456789abcdef",
        jsonwebtoken::Algorithm::HS256,
    );
    let r = run_client(
        "ws_client_bad_token",
        node(
            "ws_client.js",
            &[&gate.ws(&format!("/token/wrong?token={bad}"))],
        ),
        logs.path(),
        Duration::from_secs(20),
    );
    assert_eq!(r["status"], 401, "{r}");
    std::thread::sleep(Duration::from_millis(200));
    let wrong: Vec<Value> = ws_backend
        .events("connection")
        .into_iter()
        .filter(|v| v["url"].as_str().unwrap_or("").ends_with("/wrong"))
        .collect();
    assert!(
        wrong.is_empty(),
        "refused clients reached the backend: {wrong:?}"
    );

    let m = gate.metrics();
    let upgraded = metric_sum(
        &m,
        "wsgate_handshakes_total",
        &[("route", "/basic"), ("outcome", "upgraded")],
    );
    assert_eq!(upgraded, 2.0, "{m}");
    let unauth = metric_sum(
        &m,
        "wsgate_handshakes_total",
        &[("outcome", "unauthorized")],
    );
    assert_eq!(unauth, 2.0, "{m}");
    let badsig = metric_sum(
        &m,
        "wsgate_auth_failures_total",
        &[("route", "/token"), ("reason", "bad_signature")],
    );
    assert_eq!(badsig, 1.0, "{m}");
    drop(gate);
}

// ---------------------------------------------------------------------------------------------
// 2. express-ws
// ---------------------------------------------------------------------------------------------

#[test]
fn express_ws_app_and_router_routes() {
    if !ready("express_ws_app_and_router_routes", []) {
        return;
    }
    let logs = logs();
    let port = free_port();
    let app = backend(
        "express_server",
        node("express_server.js", &[&port.to_string()]),
        logs.path(),
    );
    let gate =
        Gate::start(&(route("/test-ws", port, "") + &route("/websocket", port, "users, jwt")));

    let greeting = |r: &Value| -> Value {
        assert_eq!(r["opened"], true, "{r}");
        assert_eq!(r["textEcho"], true, "{r}");
        assert_eq!(r["megabyteEcho"], true, "{r}");
        serde_json::from_str(r["greeting"].as_str().unwrap()).unwrap()
    };

    // app.ws('/test-ws') on the open route.
    let r = run_client(
        "client_app",
        node("ws_client.js", &[&gate.ws("/test-ws?room=a&n=1")]),
        logs.path(),
        Duration::from_secs(20),
    );
    let g = greeting(&r);
    assert_eq!(g["where"], "app", "{g}");
    assert_eq!(g["query"], json!({"room": "a", "n": "1"}), "{g}");
    assert_eq!(g["user"], Value::Null, "{g}");
    assert_eq!(g["xff"], "127.0.0.1", "{g}");

    // router.ws('/test-ws') under app.use('/websocket'), JWT in the query.
    let token = common::jwt(json!({"sub": "dave"}));
    let r = run_client(
        "client_router_jwt",
        node(
            "ws_client.js",
            &[&gate.ws(&format!("/websocket/test-ws?token={token}&room=b"))],
        ),
        logs.path(),
        Duration::from_secs(20),
    );
    let g = greeting(&r);
    assert_eq!(g["where"], "router", "{g}");
    assert_eq!(
        g["query"],
        json!({"room": "b"}),
        "token must be stripped, the rest kept: {g}"
    );
    assert_eq!(g["user"], "dave", "{g}");

    // Same router route with Basic (URL credentials, `ws` client sends them up front).
    let r = run_client(
        "client_router_basic",
        node(
            "ws_client.js",
            &[&gate.ws_creds(USER, PASS, "/websocket/test-ws?room=c")],
        ),
        logs.path(),
        Duration::from_secs(20),
    );
    let g = greeting(&r);
    assert_eq!(g["where"], "router", "{g}");
    assert_eq!(g["query"], json!({"room": "c"}), "{g}");
    assert_eq!(g["user"], "alice", "{g}");
    assert_eq!(g["authorization"], Value::Null, "{g}");
    assert_eq!(app.events("connection").len(), 3);

    // Unauthenticated upgrade on the guarded route: 401, never reaches express.
    let r = run_client(
        "client_router_none",
        node("ws_client.js", &[&gate.ws("/websocket/test-ws?room=d")]),
        logs.path(),
        Duration::from_secs(20),
    );
    assert_eq!(r["status"], 401, "{r}");

    // Plain HTTP routes of the same app answer through wsgate, under the same auth.
    let (s, _, body) = http(gate.addr, "GET", "/test-ws/health?x=1", &[]);
    assert_eq!(s, 200, "{body}");
    let b: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(b["ok"], true);
    assert_eq!(b["query"], json!({"x": "1"}));
    let (s, _, body) = http(
        gate.addr,
        "GET",
        &format!("/websocket/hello?token={token}&y=2"),
        &[],
    );
    assert_eq!(s, 200, "{body}");
    let b: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(b["hello"], true, "{b}");
    assert_eq!(b["query"], json!({"y": "2"}), "{b}");
    assert_eq!(b["user"], "dave", "{b}");
    let (s, _, body) = http(
        gate.addr,
        "GET",
        "/websocket/hello",
        &[("Authorization", &basic_header())],
    );
    assert_eq!(s, 200, "{body}");
    let b: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(b["user"], "alice", "{b}");
    assert_eq!(b["authorization"], Value::Null, "{b}");
    let (s, head, _) = http(gate.addr, "GET", "/websocket/hello", &[]);
    assert_eq!(s, 401, "{head}");
    let challenge = header(&head, "www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Basic realm=\"wsgate\""), "{head}");
    assert_eq!(
        app.events("connection").len(),
        3,
        "a refused upgrade reached express"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Socket.IO
// ---------------------------------------------------------------------------------------------

#[test]
fn socket_io_polling_then_websocket_with_query_token() {
    if !ready("socket_io_polling_then_websocket_with_query_token", []) {
        return;
    }
    let logs = logs();
    let port = free_port();
    let sio = backend(
        "sio_server",
        node("sio_server.js", &[&port.to_string(), "sio-a"]),
        logs.path(),
    );
    let gate = Gate::start(&route("/socket.io", port, "jwt"));

    // Without the token even the polling handshake is refused.
    let (s, head, _) = http(gate.addr, "GET", "/socket.io/?EIO=4&transport=polling", &[]);
    assert_eq!(s, 401, "{head}");

    let token = common::jwt(json!({"sub": "erin"}));
    let base = format!("http://{}", gate.addr);
    let r = run_client(
        "sio_client",
        node("sio_client.js", &[&base, &token]),
        logs.path(),
        Duration::from_secs(25),
    );
    assert_eq!(r["connected"], true, "{r}");
    assert_eq!(r["firstTransport"], "polling", "{r}");
    assert_eq!(r["upgradedTo"], "websocket", "{r}");
    assert_eq!(
        r["transport"], "websocket",
        "the upgrade to websocket did not happen: {r}"
    );
    assert_eq!(r["welcome"]["user"], "erin", "server→client event: {r}");
    assert_eq!(
        r["reply"]["pong"], "hi over ws",
        "client→server event + ack: {r}"
    );
    assert_eq!(r["reply"]["transport"], "websocket", "{r}");

    let c = sio.wait_event("connection", |_| true);
    assert_eq!(c["transport"], "polling", "{c}");
    assert_eq!(c["user"], "erin", "{c}");
    assert_eq!(c["query"]["room"], "lobby", "{c}");
    assert!(
        c["query"].get("token").is_none(),
        "token reached Socket.IO: {c}"
    );
    let u = sio.wait_event("upgrade", |_| true);
    assert_eq!(u["transport"], "websocket", "{u}");
    let u = sio.wait_event("upgrade-request", |_| true);
    assert_eq!(u["user"], "erin", "{u}");
    assert_eq!(u["xff"], "127.0.0.1", "{u}");
    let url = u["url"].as_str().unwrap_or("");
    assert!(
        url.contains("transport=websocket") && !url.contains("token="),
        "{u}"
    );
    let p = sio.wait_event("ping-server", |_| true);
    assert_eq!(p["transport"], "websocket", "{p}");
    assert!(gate.wait_metric("wsgate_connections_total", &[("route", "/socket.io")], 1.0) >= 1.0);
}

#[test]
fn socket_io_two_backends_sticky_by_client_ip() {
    if !ready("socket_io_two_backends_sticky_by_client_ip", []) {
        return;
    }
    // One route, two Socket.IO backends, `balance: client_ip`: the polling requests and
    // the websocket upgrade of one client must all land on the same backend (Socket.IO's
    // polling sessions are per process, so a non-sticky pool fails with "Session ID unknown").
    let logs = logs();
    let (pa, pb) = (free_port(), free_port());
    let a = backend(
        "sio_a",
        node("sio_server.js", &[&pa.to_string(), "sio-a"]),
        logs.path(),
    );
    let b = backend(
        "sio_b",
        node("sio_server.js", &[&pb.to_string(), "sio-b"]),
        logs.path(),
    );
    // Pool shape as drafted in src/config (issue 3): a list of upstreams + `balance`.
    let gate = Gate::start(&format!(
        "  - path: /socket.io\n    upstream: [ws://127.0.0.1:{pa}, ws://127.0.0.1:{pb}]\n    balance: client_ip\n    auth: [jwt]\n"
    ));
    let base = format!("http://{}", gate.addr);
    for i in 0..4 {
        let token = common::jwt(json!({"sub": format!("user{i}")}));
        let r = run_client(
            "sio_client",
            node("sio_client.js", &[&base, &token]),
            logs.path(),
            Duration::from_secs(25),
        );
        assert_eq!(r["transport"], "websocket", "{r}");
        assert_eq!(r["reply"]["name"], r["welcome"]["name"], "not sticky: {r}");
    }
    let (na, nb) = (a.events("connection").len(), b.events("connection").len());
    assert!(
        na == 4 || nb == 4,
        "one client IP must map to one backend: a={na} b={nb}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Headless Chromium
// ---------------------------------------------------------------------------------------------

fn browser(name: &str, logs: &Path, page: &str, ws: &[String], spki: Option<&str>) -> Value {
    need(Path::new("/usr/bin/chromium"));
    let profile = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = vec![profile.path().display().to_string(), page.to_string()];
    args.extend(ws.iter().cloned());
    if let Some(s) = spki {
        args.push("--spki".into());
        args.push(s.into());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let v = run_client(
        name,
        node("browser.js", &refs),
        logs,
        Duration::from_secs(60),
    );
    assert!(v.get("fatal").is_none(), "{name}: {v}");
    assert_eq!(v["pageStatus"], 200, "{name}: {v}");
    v
}

fn assert_echoed(r: &Value) {
    assert_eq!(r["opened"], true, "{r}");
    assert_eq!(
        r["messages"],
        json!(["hello from page server", "echo from chromium"]),
        "{r}"
    );
    assert_eq!(r["closeCode"], 1000, "{r}");
}

#[test]
fn chromium_basic_challenge_token_and_wss() {
    if !ready(
        "chromium_basic_challenge_token_and_wss",
        [common::Tool::File(PathBuf::from("/usr/bin/chromium"))],
    ) {
        return;
    }
    let logs = logs();
    let port = free_port();
    let pages = backend(
        "page_server",
        node("page_server.js", &[&port.to_string()]),
        logs.path(),
    );
    let gate = Gate::start(
        &(route("/page", port, "")
            + &route("/basic", port, "users")
            + &route("/token", port, "jwt")),
    );
    let spki = spki_of(gate.dir.path());

    // Page served through wsgate (same origin as the ws:// URLs). Order matters: Chromium
    // caches credentials that worked, so the wrong-password case runs first.
    let token = common::jwt(json!({"sub": "frank"}));
    let before = gate.metric(
        "wsgate_handshakes_total",
        &[("route", "/basic"), ("outcome", "unauthorized")],
    );
    assert_eq!(before, 0.0);
    let v = browser(
        "chromium_ws",
        logs.path(),
        &format!("http://{}/page/index.html", gate.addr),
        &[
            gate.ws_creds(USER, "wrong-password", "/basic/wrong"),
            gate.ws(&format!("/token/jwt?token={token}&q=1")),
            gate.ws_creds(USER, PASS, "/basic/ok"),
        ],
        None,
    );
    let res = &v["results"];
    assert_eq!(res[0]["opened"], false, "wrong credentials opened: {v}");
    assert_eq!(res[0]["closeCode"], 1006, "{v}");
    assert_echoed(&res[1]);
    assert_echoed(&res[2]);
    let unauth = gate.metric(
        "wsgate_handshakes_total",
        &[("route", "/basic"), ("outcome", "unauthorized")],
    );
    let challenged = gate.metric(
        "wsgate_handshakes_total",
        &[("route", "/basic"), ("outcome", "challenged")],
    );
    // The bare attempts (wrong and ok) get the challenge; the retry with bad credentials is
    // the one judged and refused.
    assert!(
        challenged >= 2.0,
        "challenged handshakes on /basic: {challenged}"
    );
    assert!(unauth >= 1.0, "unauthorized handshakes on /basic: {unauth}");
    let badcred = gate.metric(
        "wsgate_auth_failures_total",
        &[("route", "/basic"), ("reason", "bad_credentials")],
    );
    assert!(badcred >= 1.0, "bad_credentials: {badcred}");
    assert!(
        pages
            .events("connection")
            .iter()
            .all(|c| c["url"] != "/basic/wrong")
    );
    let c = pages.wait_event("connection", |c| c["url"] == "/token/jwt?q=1");
    assert_eq!(c["user"], "frank", "{c}");
    let c = pages.wait_event("connection", |c| c["url"] == "/basic/ok");
    assert_eq!(c["user"], "alice", "{c}");
    assert_eq!(c["authorization"], Value::Null, "{c}");
    assert_eq!(c["proto"], "http", "{c}");

    // Page from 127.0.0.1 on another port (the page server directly): same site (scheme + host,
    // ports don't count), so Chromium still sends the URL credentials after the challenge.
    let v = browser(
        "chromium_other_port",
        logs.path(),
        &format!("http://127.0.0.1:{port}/"),
        &[gate.ws_creds(USER, PASS, "/basic/other-port")],
        None,
    );
    assert_echoed(&v["results"][0]);
    let c = pages.wait_event("connection", |c| c["url"] == "/basic/other-port");
    assert_eq!(c["user"], "alice", "{c}");

    // wss:// against the test certificate, trusted by its SPKI hash.
    let v = browser(
        "chromium_wss",
        logs.path(),
        &format!("https://{}/page/index.html", gate.tls),
        &[format!("wss://{USER}:{PASS}@{}/basic/tls", gate.tls)],
        Some(&spki),
    );
    assert_echoed(&v["results"][0]);
    let c = pages.wait_event("connection", |c| c["url"] == "/basic/tls");
    assert_eq!(c["user"], "alice", "{c}");
    assert_eq!(c["proto"], "https", "{c}");
}

/// RFC 8441 in a real browser: a page loaded over HTTPS from the gateway (HTTP/2 by ALPN)
/// opens several wss:// WebSockets at once on that origin; Chromium carries them as extended
/// CONNECT streams on the page's own connection, and the gateway's metrics say so.
#[test]
fn chromium_holds_several_websockets_on_one_http2_connection() {
    if !ready(
        "chromium_holds_several_websockets_on_one_http2_connection",
        [common::Tool::File(PathBuf::from("/usr/bin/chromium"))],
    ) {
        return;
    }
    need(Path::new("/usr/bin/chromium"));
    let logs = logs();
    let port = free_port();
    let pages = backend(
        "page_server",
        node("page_server.js", &[&port.to_string()]),
        logs.path(),
    );
    let gate = Gate::start(
        &(route("/page", port, "")
            + &route("/basic", port, "users")
            + &route("/token", port, "jwt")),
    );
    let spki = spki_of(gate.dir.path());
    let token = common::jwt(json!({"sub": "frank"}));
    let profile = tempfile::tempdir().unwrap();
    let t = gate.tls;
    let args = [
        profile.path().display().to_string(),
        format!("https://{t}/page/index.html"),
        format!("wss://{t}/token/h2-a?token={token}"),
        format!("wss://{t}/token/h2-b?token={token}"),
        format!("wss://{USER}:{PASS}@{t}/basic/h2-c"),
        "--spki".into(),
        spki,
    ];
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    // Chromium's own record of its HTTP/2 sessions: which requests went on which connection.
    let netlog = logs.path().join("chromium-netlog.json");
    let mut cmd = node("browser_many.js", &refs);
    cmd.env("NETLOG", &netlog);
    let v = run_client("chromium_h2", cmd, logs.path(), Duration::from_secs(60));
    assert!(v.get("fatal").is_none(), "{v}");
    assert_eq!(v["pageStatus"], 200, "{v}");
    assert_eq!(
        v["httpVersion"], "h2",
        "the page itself came over HTTP/2: {v}"
    );
    for r in v["results"].as_array().unwrap() {
        assert_eq!(r["opened"], true, "{v}");
        assert_eq!(r["openWhenAllEchoed"], true, "all held open at once: {v}");
        assert_eq!(r["messages"][0], "hello from page server", "{v}");
        assert_eq!(r["closeCode"], 1000, "{v}");
    }
    let c = pages.wait_event("connection", |c| c["url"] == "/basic/h2-c");
    assert_eq!(c["user"], "alice", "{c}");
    assert_eq!(c["proto"], "https", "{c}");
    let c = pages.wait_event("connection", |c| c["url"] == "/token/h2-a");
    assert_eq!(c["user"], "frank", "{c}");

    let h2 = gate.metric("wsgate_upgrades_by_protocol_total", &[("protocol", "h2")]);
    let h1 = gate.metric(
        "wsgate_upgrades_by_protocol_total",
        &[("protocol", "http1")],
    );
    assert_eq!((h2, h1), (3.0, 0.0), "upgrades over h2 / http1");
    // Chromium preconnects a spare socket or two, so the gateway may count more than one h2
    // connection; its net log says which one carried what.
    let conns = gate.metric(
        "wsgate_client_connections_by_protocol_total",
        &[("protocol", "h2")],
    );
    let h1_conns = gate.metric(
        "wsgate_client_connections_by_protocol_total",
        &[("protocol", "http1")],
    );
    assert!(
        conns >= 1.0 && h1_conns == 0.0,
        "h2 {conns}, http1 {h1_conns}"
    );
    let sessions = http2_sessions(&netlog);
    let used: Vec<_> = sessions.values().filter(|h| !h.is_empty()).collect();
    assert_eq!(
        used.len(),
        1,
        "one HTTP/2 session carried requests: {sessions:?}"
    );
    let heads = used[0];
    assert!(
        heads
            .iter()
            .any(|h| h.contains(":method: GET") && h.contains(":path: /page/index.html")),
        "{heads:?}"
    );
    let connects: Vec<&String> = heads
        .iter()
        .filter(|h| h.contains(":method: CONNECT") && h.contains(":protocol: websocket"))
        .collect();
    // The Basic one twice: bare, refused with the challenge (a 401 on its stream), then with
    // the credentials, on the same connection.
    let mut paths: Vec<(&str, bool)> = connects
        .iter()
        .filter_map(|h| {
            let path = h.lines().find_map(|l| l.strip_prefix(":path: "))?;
            let path = path.split('?').next().unwrap_or(path);
            Some((path, h.contains("\nauthorization:")))
        })
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            ("/basic/h2-c", false),
            ("/basic/h2-c", true),
            ("/token/h2-a", false),
            ("/token/h2-b", false)
        ],
        "{heads:?}"
    );
    let challenged = gate.metric(
        "wsgate_handshakes_total",
        &[("route", "/basic"), ("outcome", "challenged")],
    );
    assert_eq!(challenged, 1.0);
}

/// Chromium's net log (`--log-net-log`): the request headers sent on each HTTP/2 session, by
/// session id, one string of `name: value` lines per request.
fn http2_sessions(netlog: &Path) -> std::collections::BTreeMap<u64, Vec<String>> {
    let text = std::fs::read_to_string(netlog).expect("Chromium wrote no net log");
    // Chromium writes one event per line and closes the list at exit; a browser stopped
    // before that leaves the log cut after some event: keep the complete ones.
    let log: Value = serde_json::from_str(&text)
        .or_else(|_| {
            let end = text.rfind("},\n").map_or(0, |i| i + 1);
            serde_json::from_str(&format!("{}]}}", &text[..end]))
        })
        .unwrap_or_else(|e| panic!("net log is not JSON ({e}): {} bytes", text.len()));
    let id_of = |kind: &str| log["constants"]["logEventTypes"][kind].as_u64().unwrap();
    let (session, send_headers) = (id_of("HTTP2_SESSION"), id_of("HTTP2_SESSION_SEND_HEADERS"));
    let mut sessions = std::collections::BTreeMap::new();
    for e in log["events"].as_array().unwrap() {
        let Some(source) = e["source"]["id"].as_u64() else {
            continue;
        };
        let kind = e["type"].as_u64();
        if kind == Some(session) {
            sessions.entry(source).or_insert_with(Vec::new);
        } else if kind == Some(send_headers) {
            let lines: Vec<&str> = e["params"]["headers"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            sessions.entry(source).or_default().push(lines.join("\n"));
        }
    }
    sessions
}

/// base64(sha256(SPKI)) of the gateway's certificate, via openssl.
fn spki_of(dir: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg("openssl x509 -in gate.crt -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | openssl base64 -A")
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

// ---------------------------------------------------------------------------------------------
// 5. Python websockets
// ---------------------------------------------------------------------------------------------

#[test]
fn python_websockets_deflate_big_inflight_subprotocol_close_codes() {
    if !ready(
        "python_websockets_deflate_big_inflight_subprotocol_close_codes",
        [python_tool()],
    ) {
        return;
    }
    let logs = logs();
    let port = free_port();
    let server = backend(
        "py_server",
        python("py_server.py", &[&port.to_string()]),
        logs.path(),
    );
    let gate = Gate::start(&route("/py", port, "users"));
    let r = run_client(
        "py_client",
        python("py_client.py", &[&gate.ws("/py"), &basic_header()]),
        logs.path(),
        Duration::from_secs(90),
    );
    assert_eq!(r["subprotocol"], "chat.v1", "{r}");
    let ext = r["response_extensions"].as_str().unwrap_or("");
    assert!(ext.contains("permessage-deflate"), "client's 101: {r}");
    assert_eq!(r["negotiated"], json!(["PerMessageDeflate"]), "{r}");
    assert_eq!(r["big_ok"], true, "5 MB binary: {r}");
    assert_eq!(r["big_text_ok"], true, "5 MB text: {r}");
    assert_eq!(r["inflight_ok"], true, "1,000 in flight: {r}");
    assert_eq!(r["server_close_code"], 4321, "{r}");
    assert_eq!(r["server_close_reason"], "server says bye ✓", "{r}");

    let c = server.wait_event("connection", |c| c["path"] == "/py/a");
    assert_eq!(c["subprotocol"], "chat.v1", "{c}");
    assert_eq!(c["user"], "alice", "{c}");
    let req_ext = c["request_extensions"].as_str().unwrap_or("");
    assert!(req_ext.contains("permessage-deflate"), "{c}");
    let resp_ext = c["response_extensions"].as_str().unwrap_or("");
    assert_eq!(
        resp_ext, ext,
        "server's and client's extension headers differ: {c}"
    );
    let closed = server.wait_event("close", |c| c["path"] == "/py/a");
    assert_eq!(closed["code"], 4123, "{closed}");
    assert_eq!(closed["reason"], "client says bye ☃", "{closed}");
    assert_eq!(closed["messages"], 1002, "{closed}");
}

// ---------------------------------------------------------------------------------------------
// 5b. Session layer: close codes as real clients see them
// ---------------------------------------------------------------------------------------------

/// Token expiry (Python `websockets`), message too big (Node `ws`), and the drain's close
/// frame (Node `ws` and headless Chromium): each client reports the exact code and reason,
/// and the Node `ws` backend reports the close frame it got from the gateway.
#[test]
fn session_close_codes_seen_by_python_node_and_chromium() {
    if !ready(
        "session_close_codes_seen_by_python_node_and_chromium",
        [
            python_tool(),
            common::Tool::File(PathBuf::from("/usr/bin/chromium")),
        ],
    ) {
        return;
    }
    let logs = logs();
    let port = free_port();
    let server = backend(
        "ws_server",
        node("ws_server.js", &[&port.to_string()]),
        logs.path(),
    );
    let page_port = free_port();
    let _pages = backend(
        "page_server",
        node("page_server.js", &[&page_port.to_string()]),
        logs.path(),
    );
    let gate = Gate::start(
        &(route("/exp", port, "jwt")
            + &route("/big", port, "")
            + "    max_message_bytes: 100\n"
            + &route("/drain", port, "")
            + &route("/page", page_port, "")),
    );

    // Python: a token that expires in 2 s closes with 4001 at exp.
    let token = common::jwt(json!({"sub": "erin", "exp": common::now_secs() + 2}));
    let py = Proc::spawn(
        "py_session",
        python(
            "session_client.py",
            &[&gate.ws(&format!("/exp?token={token}"))],
        ),
        logs.path(),
    );
    py.wait_json("open", Duration::from_secs(30), |v| v["event"] == "open");
    let closed = py.wait_json("close", Duration::from_secs(30), |v| v["event"] == "closed");
    assert_eq!(closed["code"], 4001, "python: {closed}");
    assert_eq!(closed["reason"], "token expired", "python: {closed}");
    let up = server.wait_event("close", |c| {
        c["url"].as_str().is_some_and(|u| u.starts_with("/exp"))
    });
    assert_eq!(
        (up["code"].clone(), up["reason"].clone()),
        (json!(4001), json!("token expired")),
        "backend: {up}"
    );

    // Node: a 101-byte message on a 100-byte route closes with 1009; the backend never got it.
    let node_big = Proc::spawn(
        "node_big",
        node("session_client.js", &[&gate.ws("/big/2"), "big", "101"]),
        logs.path(),
    );
    let closed = node_big.wait_json("close", Duration::from_secs(30), |v| v["event"] == "closed");
    assert_eq!(
        (closed["code"].clone(), closed["reason"].clone()),
        (json!(1009), json!("message too big")),
        "node: {closed}"
    );
    let up = server.wait_event("close", |c| c["url"] == "/big/2");
    assert_eq!(up["code"], 1009, "backend: {up}");

    // Drain: Node and Chromium both open, then SIGTERM; after drain_timeout (1 s) both get
    // 1001 "going away", cleanly.
    let node_wait = Proc::spawn(
        "node_drain",
        node("session_client.js", &[&gate.ws("/drain/node"), "wait"]),
        logs.path(),
    );
    node_wait.wait_json("open", Duration::from_secs(30), |v| v["event"] == "open");
    need(Path::new("/usr/bin/chromium"));
    let profile = tempfile::tempdir().unwrap();
    let chromium = Proc::spawn(
        "chromium_drain",
        node(
            "browser_close.js",
            &[
                &profile.path().display().to_string(),
                &format!("http://{}/page/index.html", gate.addr),
                &gate.ws("/page/ws"),
            ],
        ),
        logs.path(),
    );
    chromium.wait_json("open", Duration::from_secs(60), |v| v["event"] == "open");
    let pid = gate._proc.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let closed = node_wait.wait_json("close", Duration::from_secs(30), |v| v["event"] == "closed");
    assert_eq!(
        (closed["code"].clone(), closed["reason"].clone()),
        (json!(1001), json!("going away")),
        "node: {closed}"
    );
    let closed = chromium.wait_json("close", Duration::from_secs(30), |v| v["event"] == "closed");
    assert_eq!(closed["closeCode"], 1001, "chromium: {closed}");
    assert_eq!(closed["reason"], "going away", "chromium: {closed}");
    assert_eq!(closed["wasClean"], true, "chromium: {closed}");
    let up = server.wait_event("close", |c| c["url"] == "/drain/node");
    assert_eq!(
        (up["code"].clone(), up["reason"].clone()),
        (json!(1001), json!("going away")),
        "backend: {up}"
    );
}

/// An admin API call with a JSON body (or none) from loopback; (status, body).
fn admin_call(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let len = body.len().to_string();
    let headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", &len[..]),
    ];
    let (status, _, body) = http_with_body(addr, method, path, &headers, body);
    (status, body)
}

/// The express-ws app our users run, behind the gateway: push to one user, broadcast to a
/// route, "a new login logs the other device out" (evict_oldest, 4002) and an admin kick
/// (4000), each seen by the Node `ws` clients and by the express-ws app's close handler.
#[test]
fn express_ws_push_broadcast_evict_and_kick() {
    if !ready("express_ws_push_broadcast_evict_and_kick", []) {
        return;
    }
    let logs = logs();
    let port = free_port();
    let app = backend(
        "express_server",
        node("express_server.js", &[&port.to_string()]),
        logs.path(),
    );
    let gate = Gate::start(
        &(route("/websocket", port, "jwt")
            + "    max_connections_per_user: 1\n    on_user_limit: evict_oldest\n"),
    );
    let client = |name: &str, user: &str| {
        let token = common::jwt(json!({"sub": user}));
        let p = Proc::spawn(
            name,
            node(
                "session_client.js",
                &[
                    &gate.ws(&format!("/websocket/test-ws?token={token}")),
                    "wait",
                ],
            ),
            logs.path(),
        );
        // The express-ws greeting is the first message.
        p.wait_json("greeting", Duration::from_secs(30), |v| {
            v["event"] == "message"
        });
        p
    };
    let alice = client("alice_phone", "alice");
    let bob = client("bob", "bob");

    let (status, body) = admin_call(
        gate.admin,
        "POST",
        "/users/alice/messages",
        r#"{"text":"notice for alice"}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["sent"],
        1,
        "{body}"
    );
    alice.wait_json("pushed message", Duration::from_secs(10), |v| {
        v["data"] == "notice for alice"
    });

    let (status, body) = admin_call(
        gate.admin,
        "POST",
        "/routes/%2Fwebsocket/broadcast",
        r#"{"text":"to everyone"}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["sent"],
        2,
        "{body}"
    );
    alice.wait_json("broadcast", Duration::from_secs(10), |v| {
        v["data"] == "to everyone"
    });
    bob.wait_json("broadcast", Duration::from_secs(10), |v| {
        v["data"] == "to everyone"
    });
    assert!(
        !bob.events("message")
            .iter()
            .any(|m| m["data"] == "notice for alice"),
        "bob got alice's notice"
    );

    // Alice logs in on a second device: the first one is logged out.
    let _alice_laptop = client("alice_laptop", "alice");
    let closed = alice.wait_json("close", Duration::from_secs(10), |v| v["event"] == "closed");
    assert_eq!(
        (closed["code"].clone(), closed["reason"].clone()),
        (json!(4002), json!("logged in elsewhere")),
        "{closed}"
    );
    let seen = app.wait_event("close", |c| c["user"] == "alice");
    assert_eq!(seen["code"], 4002, "express-ws saw: {seen}");

    let (status, body) = admin_call(gate.admin, "DELETE", "/users/bob", "");
    assert_eq!(status, 200, "{body}");
    let closed = bob.wait_json("close", Duration::from_secs(10), |v| v["event"] == "closed");
    assert_eq!(
        (closed["code"].clone(), closed["reason"].clone()),
        (json!(4000), json!("kicked")),
        "{closed}"
    );
    let seen = app.wait_event("close", |c| c["user"] == "bob");
    assert_eq!(
        (seen["code"].clone(), seen["reason"].clone()),
        (json!(4000), json!("kicked")),
        "express-ws saw: {seen}"
    );
    assert_eq!(
        gate.wait_metric(
            "wsgate_connections_closed_total",
            &[("route", "/websocket"), ("reason", "evicted")],
            1.0
        ),
        1.0
    );
    assert_eq!(
        gate.metric(
            "wsgate_connections_closed_total",
            &[("route", "/websocket"), ("reason", "kicked")]
        ),
        1.0
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Prometheus
// ---------------------------------------------------------------------------------------------

type Ws = tokio_tungstenite::tungstenite::WebSocket<
    tokio_tungstenite::tungstenite::stream::MaybeTlsStream<TcpStream>,
>;

fn ws_open(url: &str) -> Ws {
    let (ws, resp) = tokio_tungstenite::tungstenite::connect(url)
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

/// Gateway + `ws` backend with one finished connection, one open, one refused, so every
/// wsgate metric family has samples.
fn gate_with_traffic(logs: &Path) -> (Proc, Gate, Ws) {
    let port = free_port();
    let b = backend(
        "ws_server",
        node("ws_server.js", &[&port.to_string()]),
        logs,
    );
    let gate = Gate::start(&(route("/echo", port, "") + &route("/secure", port, "users")));
    let mut first = ws_open(&gate.ws("/echo/1"));
    first.close(None).unwrap();
    while first.read().is_ok() {}
    drop(first); // the TCP close; wsgate counts the connection closed once both sides are done
    let open = ws_open(&gate.ws("/echo/2"));
    let (s, _, _) = http(
        gate.addr,
        "GET",
        "/secure",
        &[("Authorization", &common::basic(USER, "x"))],
    );
    assert_eq!(s, 401);
    let n = gate.wait_metric(
        "wsgate_connection_duration_seconds_count",
        &[("route", "/echo")],
        1.0,
    );
    assert_eq!(n, 1.0, "closed connection not counted");
    (b, gate, open)
}

#[test]
fn promtool_check_metrics_passes() {
    if !ready(
        "promtool_check_metrics_passes",
        [common::Tool::Program("promtool")],
    ) {
        return;
    }
    let logs = logs();
    let (_b, gate, _open) = gate_with_traffic(logs.path());
    let text = gate.metrics();
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian prometheus): run tests/interop/install.sh");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- metrics:\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every metric name referenced by an `expr` of the shipped Grafana dashboard.
fn dashboard_exprs() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/grafana-dashboard.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if k == "expr" {
                        out.push(x.as_str().expect("expr is a string").to_string());
                    } else {
                        walk(x, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&v, &mut out);
    out
}

/// Metric names in a PromQL expression (identifiers that are not functions, keywords, label
/// names, grouping labels, strings, ranges or `$variables`).
fn promql_metric_names(expr: &str) -> Vec<String> {
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan", // aggregations may put `by (...)` before their `(`:
        "sum",
        "avg",
        "min",
        "max",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
        "limitk",
        "limit_ratio",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let (mut i, mut names) = (0, Vec::new());
    let (mut braces, mut brackets) = (0, 0);
    let mut skip_group = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            '{' => braces += 1,
            '}' => braces -= 1,
            '[' => brackets += 1,
            ']' => brackets -= 1,
            '$' => {
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                continue;
            }
            '(' if skip_group => {
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                skip_group = false;
            }
            c if c.is_ascii_digit() => {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
                continue;
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i]))
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let next = chars[i..].iter().find(|c| !c.is_whitespace());
                if braces > 0 || brackets > 0 {
                    continue;
                }
                if [
                    "by",
                    "without",
                    "on",
                    "ignoring",
                    "group_left",
                    "group_right",
                ]
                .contains(&word.as_str())
                {
                    skip_group = true;
                } else if next != Some(&'(')
                    && !KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
                {
                    names.push(word);
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    names
}

#[test]
fn grafana_dashboard_uses_only_exported_metrics() {
    if !ready("grafana_dashboard_uses_only_exported_metrics", []) {
        return;
    }
    assert_eq!(
        promql_metric_names(
            r#"histogram_quantile(0.95, sum by (le, route) (rate(a_bucket{route=~"$route"}[$__rate_interval]))) / on(route) group_left sum without (x) (b) > bool 2 or count(c_total offset 5m)"#
        ),
        ["a_bucket", "b", "c_total"],
        "the PromQL scanner itself"
    );
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 6, "dashboard has {} exprs", exprs.len());
    let logs = logs();
    let (_b, gate, _open) = gate_with_traffic(logs.path());
    let text = gate.metrics();
    let exported: std::collections::HashSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect();
    for expr in &exprs {
        let names = promql_metric_names(expr);
        assert!(!names.is_empty(), "no metric found in expr {expr:?}");
        for n in names {
            assert!(
                exported.contains(n.as_str()),
                "dashboard expr {expr:?} uses {n}, which /metrics does not export:\n{text}"
            );
        }
    }
}

#[test]
fn prometheus_server_scrapes_online_count() {
    if !ready(
        "prometheus_server_scrapes_online_count",
        [common::Tool::Program("prometheus")],
    ) {
        return;
    }
    let logs = logs();
    let (_b, gate, first) = gate_with_traffic(logs.path());
    let mut clients = vec![first];
    for i in 0..3 {
        clients.push(ws_open(&gate.ws(&format!("/echo/held{i}"))));
    }
    let n = clients.len();

    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("prometheus.yml");
    std::fs::write(
        &conf,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: wsgate\n    static_configs:\n      - targets: [\"{}\"]\n",
            gate.admin
        ),
    )
    .unwrap();
    let port = free_port();
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", conf.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn");
    let prom = Proc::spawn("prometheus", cmd, logs.path());
    let api: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let query = |q: &str| -> Value {
        let mut enc = String::new();
        for b in q.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                enc.push(b as char);
            } else {
                enc.push_str(&format!("%{b:02X}"));
            }
        }
        if TcpStream::connect(api).is_err() {
            return Value::Null;
        }
        let (_, _, body) = http(api, "GET", &format!("/api/v1/query?query={enc}"), &[]);
        serde_json::from_str(&body).unwrap_or(Value::Null)
    };
    let online = |want: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = Value::Null;
        let want_s = want.to_string();
        while Instant::now() < deadline {
            last = query("sum(wsgate_connections_active)");
            if last["data"]["result"][0]["value"][1] == want_s.as_str() {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!("prometheus never reported {want} online; last answer: {last}");
    };
    online(n);
    drop(clients.pop());
    online(n - 1);

    // Every dashboard query is valid PromQL for this Prometheus and returns data.
    for expr in dashboard_exprs() {
        let q = expr
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "1m")
            .replace("$route", ".*")
            .replace("$job", ".*");
        let v = query(&q);
        assert_eq!(v["status"], "success", "dashboard expr {expr:?}: {v}");
    }
    drop(prom);
}

#[test]
fn chromium_subprotocol_token_reaches_upstream_as_the_real_subprotocol_only() {
    if !ready(
        "chromium_subprotocol_token_reaches_upstream_as_the_real_subprotocol_only",
        [common::Tool::File(PathBuf::from("/usr/bin/chromium"))],
    ) {
        return;
    }
    use base64::Engine as _;
    let logs = logs();
    let port = free_port();
    let pages = backend(
        "page_server",
        node("page_server.js", &[&port.to_string()]),
        logs.path(),
    );
    let gate = Gate::start(&(route("/page", port, "") + &route("/k8s", port, "k8s")));
    let token = common::jwt(json!({"sub": "grace"}));
    let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&token);
    let protocols = format!("base64url.bearer.authorization.k8s.io.{enc},chat");
    let forged = common::jwt_with(
        json!({"sub": "grace", "exp": common::now_secs() + 300}),
        "not-the-gateway-secret-0123456789abcdef",
        jsonwebtoken::Algorithm::HS256,
    );
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&forged);
    let v = browser(
        "chromium_subprotocol",
        logs.path(),
        &format!("http://{}/page/index.html", gate.addr),
        &[
            // A forged token first: refused before the upstream.
            format!(
                "{}|base64url.bearer.authorization.k8s.io.{forged},chat",
                gate.ws("/k8s/bad")
            ),
            format!("{}|{protocols}", gate.ws("/k8s/ok")),
        ],
        None,
    );
    let res = &v["results"];
    assert_eq!(res[0]["opened"], false, "forged token opened: {v}");
    assert_echoed(&res[1]);
    assert_eq!(res[1]["protocol"], "chat", "the page speaks chat: {v}");
    let c = pages.wait_event("connection", |c| c["url"] == "/k8s/ok");
    assert_eq!(c["user"], "grace", "{c}");
    assert_eq!(c["protocols"], "chat", "the upstream saw the token: {c}");
    assert!(
        pages
            .events("connection")
            .iter()
            .all(|c| c["url"] != "/k8s/bad")
    );
    let text = gate.metrics();
    assert_eq!(
        metric_sum(
            &text,
            "wsgate_auth_failures_total",
            &[("route", "/k8s"), ("reason", "bad_signature")],
        ),
        1.0,
        "{}",
        text.lines()
            .filter(|l| l.contains("/k8s"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
