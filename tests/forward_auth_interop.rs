//! Forward auth against a real app: express 4 with `express-session` (its own login, its
//! `GET /app/auth` as the auth service) and a Node `ws` upstream on the same port; then headless
//! Chromium logging in through the gateway and opening the WebSocket with its cookie.
//!
//! Needs `tests/interop/install.sh` (node_modules, Debian chromium); skipped with a line naming
//! what is missing otherwise (failed under `tests/run.sh`, see `common::tools_available`).
// Child processes and their output: wall-clock deadlines on purpose.
#![allow(clippy::disallowed_types)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::Value;

/// A Node process killed (with its process group) on drop; stdout JSON lines on `lines`.
struct Node {
    child: Child,
    lines: Receiver<String>,
}

impl Node {
    fn spawn(script: &str, args: &[&str]) -> Node {
        let dir = interop_tools_dir();
        let mut cmd = Command::new("node");
        cmd.current_dir(&dir)
            .arg(dir.join(script))
            .args(args)
            .env("NODE_ENV", "production")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().expect("node");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Node { child, lines }
    }

    /// The next JSON line with `"event": event` (others are skipped).
    fn next_event(&self, event: &str, timeout: Duration) -> Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {event:?} line within {timeout:?}"));
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && (event.is_empty() || v["event"] == event)
            {
                return v;
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tools(browser: bool) -> Vec<Tool<'static>> {
    let mut t = node_tools();
    for m in ["express", "express-session"] {
        t.push(Tool::File(interop_tools_dir().join("node_modules").join(m)));
    }
    if browser {
        t.push(Tool::File(PathBuf::from("/usr/bin/chromium")));
        t.push(Tool::File(
            interop_tools_dir().join("node_modules/playwright-core"),
        ));
    }
    t
}

/// The app on a fresh port and a gate: `/app` open (login, logout, the page), `/ws` behind
/// the app's `/app/auth`.
async fn app_and_gate() -> (Node, Gate, u16) {
    let port = free_port();
    let app = Node::spawn("forward_auth_app.js", &[&port.to_string()]);
    app.next_event("listening", Duration::from_secs(15));
    let yaml = format!(
        r#"
listeners: [{{bind: "127.0.0.1:0"}}]
admin: {{bind: "127.0.0.1:0"}}
auth:
  app:
    type: forward
    url: "http://127.0.0.1:{port}/app/auth"
    user_header: X-User
    copy_headers: [X-Auth-Roles]
routes:
  - path: /app
    upstream: http://127.0.0.1:{port}
  - path: /ws
    upstream: ws://127.0.0.1:{port}
    auth: [app]
"#
    );
    let gate = start_gate(Files::new(), &yaml).await;
    (app, gate, port)
}

/// POSTs through the gate; returns (status, the `sid=...` cookie if one was set).
async fn post(
    gate: SocketAddr,
    path: &str,
    cookie: Option<&str>,
    body: &str,
) -> (u16, Option<String>) {
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {gate}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{cookie}Connection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, head, _) = http_request(gate, &req).await;
    let sid = head_header(&head, "set-cookie")
        .and_then(|c| c.split(';').next().map(str::to_owned))
        .filter(|c| c.starts_with("sid="));
    (status, sid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn express_session_cookie_opens_the_websocket() {
    if !tools_available("express_session_cookie_opens_the_websocket", &tools(false)) {
        return;
    }
    let (app, gate, _) = app_and_gate().await;

    let (status, sid) = post(gate.addr(), "/app/login", None, r#"{"user":"alice"}"#).await;
    assert_eq!(status, 200);
    let sid = sid.expect("login set the session cookie");
    app.next_event("login", Duration::from_secs(5));

    let cookie = format!("theme=dark; {sid}");
    let (mut ws, _) = ws_connect(
        &gate.ws_url("/ws/chat?room=1"),
        &[
            ("Cookie", &cookie),
            ("X-User", "mallory"),
            ("X-Auth-Roles", "admin"),
        ],
    )
    .await
    .expect("logged-in cookie admitted");
    let asked = app.next_event("auth", Duration::from_secs(5));
    assert_eq!(asked["user"], "alice", "{asked}");
    assert_eq!(asked["uri"], "/ws/chat?room=1", "{asked}");
    assert_eq!(asked["fmethod"], "GET", "{asked}");
    assert_eq!(asked["proto"], "http", "{asked}");
    let greeting = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("greeting")
        .expect("open")
        .expect("ws");
    let seen: Value = serde_json::from_str(greeting.to_text().unwrap()).unwrap();
    assert_eq!(seen["xUser"], "alice", "{seen}");
    assert_eq!(seen["authUser"], "alice", "{seen}");
    assert_eq!(seen["roles"], "chat", "{seen}");
    assert_eq!(seen["hasCookie"], true, "{seen}");
    echo_roundtrip(&mut ws, "hello through forward auth").await;

    // No cookie: the app's 401 and its challenge come back.
    let (status, head, _) = http_request(gate.addr(), &upgrade_request("/ws/chat", "")).await;
    assert_eq!(status, 401);
    assert_eq!(
        head_header(&head, "www-authenticate").as_deref(),
        Some("Session realm=\"app\"")
    );

    // Logged out: the same cookie is refused.
    let (status, _) = post(gate.addr(), "/app/logout", Some(&sid), "{}").await;
    assert_eq!(status, 200);
    let err = ws_connect(&gate.ws_url("/ws/chat"), &[("Cookie", &sid)])
        .await
        .expect_err("logged-out cookie admitted");
    assert_eq!(refused_status(err), 401);
    assert_eq!(
        gate.metric(r#"wsgate_auth_failures_total{reason="denied",route="/ws"}"#)
            .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_logs_in_then_opens_the_websocket() {
    if !tools_available("chromium_logs_in_then_opens_the_websocket", &tools(true)) {
        return;
    }
    let (_app, gate, _) = app_and_gate().await;
    let profile = tempfile::tempdir().unwrap();
    let addr = gate.addr();
    let browser = Node::spawn(
        "browser_forward_auth.js",
        &[
            &profile.path().display().to_string(),
            &format!("http://{addr}/app/"),
            &format!("ws://{addr}/ws/browser"),
            "/app/login",
            "/app/logout",
            "carol",
        ],
    );
    let r = tokio::task::spawn_blocking(move || {
        let v = browser.next_event("", Duration::from_secs(60));
        drop(browser);
        v
    })
    .await
    .unwrap();
    assert!(r.get("fatal").is_none(), "{r}");
    assert_eq!(r["pageStatus"], 200, "{r}");
    assert_eq!(
        r["before"]["opened"], false,
        "opened before logging in: {r}"
    );
    assert_eq!(r["before"]["closeCode"], 1006, "{r}");
    assert_eq!(r["loginStatus"], 200, "{r}");
    assert_eq!(r["loggedIn"]["opened"], true, "{r}");
    let greeting: Value =
        serde_json::from_str(r["loggedIn"]["messages"][0].as_str().expect("greeting")).unwrap();
    assert_eq!(greeting["xUser"], "carol", "{r}");
    assert_eq!(greeting["authUser"], "carol", "{r}");
    assert_eq!(r["loggedIn"]["messages"][1], "echo from chromium", "{r}");
    assert_eq!(r["loggedIn"]["closeCode"], 1000, "{r}");
    assert_eq!(r["logoutStatus"], 200, "{r}");
    assert_eq!(r["after"]["opened"], false, "opened after logging out: {r}");
    assert_eq!(
        gate.metric(r#"wsgate_handshakes_total{outcome="upgraded",route="/ws"}"#)
            .await,
        1.0
    );
}
