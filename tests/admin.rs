//! The admin listener (health, readiness, metrics), the drain and live reloads.
// Real processes and sockets: deadlines here are wall-clock on purpose.
#![allow(clippy::disallowed_types)]
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// YAML for a gateway on 127.0.0.1:0 with an admin listener, routes and extra sections.
fn config(routes: &[(&str, SocketAddr)], extra: &str) -> String {
    let mut y = String::from(
        "listeners:\n  - bind: \"127.0.0.1:0\"\nadmin:\n  bind: \"127.0.0.1:0\"\nroutes:\n",
    );
    for (path, addr) in routes {
        y.push_str(&format!("  - path: {path}\n    upstream: ws://{addr}\n"));
    }
    y.push_str(extra);
    y
}

/// Routes `/ws` (open) and `/private` (Basic, `users.htpasswd` in the temp dir) to `up`.
fn auth_config(up: SocketAddr) -> String {
    format!(
        "{}  - path: /private\n    upstream: ws://{up}\n    auth: [users]\nauth:\n  users:\n    type: basic\n    realm: wsgate\n    htpasswd: users.htpasswd\n",
        config(&[("/ws", up)], "")
    )
}

fn active(route: &str) -> String {
    format!("wsgate_connections_active{{route=\"{route}\"}}")
}

async fn open(gate: &Gate, path: &str) -> Ws {
    let (mut ws, _) = ws_connect(&gate.ws_url(path), &[])
        .await
        .unwrap_or_else(|e| panic!("connect {path}: {e}"));
    echo_roundtrip(&mut ws, "hello").await;
    ws
}

/// Closes a tunnel cleanly and waits for the end of its stream.
async fn close(mut ws: Ws) {
    let _ = ws.close(None).await;
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
}

/// Waits for the end of `ws` (None, an error or a close frame then end); the elapsed time.
async fn wait_end(ws: &mut Ws, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    tokio::time::timeout(within, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .ok()
    .map(|_| started.elapsed())
}

/// Whether a new client is turned away (connect refused, or closed without an answer).
async fn refused(addr: SocketAddr) -> bool {
    let Ok(Ok(mut s)) =
        tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await
    else {
        return true;
    };
    if s.write_all(upgrade_request("/ws", "").as_bytes())
        .await
        .is_err()
    {
        return true;
    }
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

fn parse(gate: &Gate, yaml: &str) -> wsgate::config::Config {
    let yaml = yaml.replace("{dir}", &gate.files.dir.path().display().to_string());
    let env = |name: &str| match name {
        "WSGATE_JWT_SECRET" => Some(JWT_SECRET.to_string()),
        _ => None,
    };
    wsgate::config::parse_str(&yaml, Path::new("test.yaml"), gate.files.dir.path(), &env)
        .unwrap_or_else(|e| panic!("reload config invalid:\n{e}"))
}

// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn health_readiness_and_unknown_paths() {
    let echo = echo_upstream().await;
    let gate = start_gate(Files::new(), &config(&[("/ws", echo.addr)], "")).await;
    assert_eq!(gate.admin_get("/healthz").await.0, 200);
    assert_eq!(gate.admin_get("/readyz").await.0, 200);
    assert_eq!(gate.admin_get("/nope").await.0, 404);
    assert_eq!(gate.admin_get("/metrics/extra").await.0, 404);
    let admin = gate.admin.unwrap();
    for path in ["/metrics", "/healthz", "/readyz"] {
        let (status, head, _) = http_request(
            admin,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
            ),
        )
        .await;
        assert_eq!(status, 405, "POST {path}: {head}");
    }
    let (status, head, _) = http_request(
        admin,
        "GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        head_header(&head, "content-type")
            .unwrap_or_default()
            .starts_with("text/plain"),
        "{head}"
    );
}

#[tokio::test]
async fn drain_keeps_open_tunnels_and_refuses_new_clients() {
    let echo = echo_upstream().await;
    let mut gate = start_gate(
        Files::new(),
        &config(&[("/ws", echo.addr)], "shutdown:\n  drain_timeout: 5s\n"),
    )
    .await;
    let mut ws = open(&gate, "/ws").await;
    gate.shutdown();

    let mut ready = 0;
    for _ in 0..50 {
        ready = gate.admin_get("/readyz").await.0;
        if ready == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ready, 503, "/readyz while draining");
    assert_eq!(
        gate.admin_get("/healthz").await.0,
        200,
        "healthz while draining"
    );

    let mut turned_away = false;
    for _ in 0..20 {
        if refused(gate.addr()).await {
            turned_away = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(turned_away, "a new client was served while draining");

    // The open tunnel still works, for a while.
    echo_roundtrip(&mut ws, "during drain").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    echo_roundtrip(&mut ws, "still during drain").await;
    assert!(
        !gate.task.is_finished(),
        "gateway stopped with a tunnel open"
    );

    let closed = Instant::now();
    close(ws).await;
    tokio::time::timeout(Duration::from_secs(3), &mut gate.task)
        .await
        .expect("gateway did not stop after the last tunnel closed")
        .unwrap();
    assert!(
        closed.elapsed() < Duration::from_secs(3),
        "stop took {:?}",
        closed.elapsed()
    );
}

#[tokio::test]
async fn drain_deadline_closes_remaining_tunnels() {
    let echo = echo_upstream().await;
    let mut gate = start_gate(
        Files::new(),
        &config(&[("/ws", echo.addr)], "shutdown:\n  drain_timeout: 1s\n"),
    )
    .await;
    let mut ws = open(&gate, "/ws").await;
    let started = Instant::now();
    gate.shutdown();
    let ended = wait_end(&mut ws, Duration::from_secs(5))
        .await
        .expect("the tunnel outlived the drain deadline");
    assert!(
        ended >= Duration::from_millis(800),
        "tunnel closed after {ended:?}, before the 1s deadline"
    );
    tokio::time::timeout(Duration::from_secs(4), &mut gate.task)
        .await
        .expect("gateway did not stop after the drain deadline")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "stop took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn metrics_names_and_active_gauge() {
    let echo = echo_upstream().await;
    let files = Files::new();
    files.write("users.htpasswd", &htpasswd_line("alice", "wonderland"));
    let gate = start_gate(files, &auth_config(echo.addr)).await;
    // Series with an outcome/reason label exist once something was counted.
    let (status, _, _) = http_request(gate.addr(), &upgrade_request("/private", "")).await;
    assert_eq!(status, 401);
    let text = gate.metrics().await;
    for name in [
        "wsgate_connections_active",
        "wsgate_connections_total",
        "wsgate_handshakes_total",
        "wsgate_auth_failures_total",
        "wsgate_bytes_total",
        "wsgate_handshake_duration_seconds",
        "wsgate_connection_duration_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "no TYPE line for {name}"
        );
    }
    assert!(
        text.lines().any(|l| l.starts_with("process_")),
        "no process_ metrics"
    );
    assert!(text.contains("# TYPE wsgate_handshake_duration_seconds histogram"));
    assert!(text.contains("# TYPE wsgate_connection_duration_seconds histogram"));
    assert!(text.contains("# TYPE wsgate_connections_active gauge"));
    assert!(text.contains("# TYPE wsgate_connections_total counter"));

    let series = active("/ws");
    assert_eq!(gate.metric(&series).await, 0.0);
    let a = open(&gate, "/ws").await;
    let b = open(&gate, "/ws").await;
    let c = open(&gate, "/ws").await;
    assert_eq!(wait_metric(&gate, &series, 3.0).await, 3.0);
    close(b).await;
    assert_eq!(wait_metric(&gate, &series, 2.0).await, 2.0);
    // A client that vanishes without a close frame is also counted out.
    drop(a);
    assert_eq!(wait_metric(&gate, &series, 1.0).await, 1.0);
    close(c).await;
    assert_eq!(wait_metric(&gate, &series, 0.0).await, 0.0);
    assert_eq!(
        gate.metric("wsgate_connections_total{route=\"/ws\"}").await,
        3.0
    );
    let text = gate.metrics().await;
    assert_eq!(
        metric_value(
            &text,
            "wsgate_handshake_duration_seconds_count{route=\"/ws\"}"
        ),
        3.0
    );
    assert_eq!(
        metric_value(
            &text,
            "wsgate_connection_duration_seconds_count{route=\"/ws\"}"
        ),
        3.0
    );
}

/// Every accepted client connection holds one of `limits.max_connections` from accept to
/// close, upgraded or not: the gauge the near-limit alert compares with the cap.
#[tokio::test]
async fn client_connections_open_counts_every_held_connection() {
    let echo = echo_upstream().await;
    let gate = start_gate(Files::new(), &config(&[("/ws", echo.addr)], "")).await;
    let series = "wsgate_client_connections_open";
    assert_eq!(gate.metric(series).await, 0.0);

    // A connection that has sent nothing yet (a handshake in progress) holds a slot.
    let idle = TcpStream::connect(gate.addr()).await.unwrap();
    assert_eq!(wait_metric(&gate, series, 1.0).await, 1.0);
    // A spliced tunnel too, until it closes.
    let ws = open(&gate, "/ws").await;
    assert_eq!(wait_metric(&gate, series, 2.0).await, 2.0);
    assert_eq!(gate.metric(&active("/ws")).await, 1.0);
    drop(idle);
    assert_eq!(wait_metric(&gate, series, 1.0).await, 1.0);
    close(ws).await;
    assert_eq!(wait_metric(&gate, series, 0.0).await, 0.0);
    // The admin listener's own connections (these scrapes) are not client connections.
    assert_eq!(gate.metric(series).await, 0.0);
}

#[tokio::test]
async fn metrics_pass_promtool_check() {
    let promtool = Path::new("/usr/bin/promtool");
    if !tools_available(
        "metrics_pass_promtool_check",
        &[Tool::File(promtool.into())],
    ) {
        return;
    }
    let echo = echo_upstream().await;
    let files = Files::new();
    files.write("users.htpasswd", &htpasswd_line("alice", "wonderland"));
    let gate = start_gate(files, &auth_config(echo.addr)).await;

    // Populate every metric: an upgrade with bytes both ways, 401s with reasons, a 404.
    let ws = open(&gate, "/ws").await;
    close(ws).await;
    let (status, _, _) = http_request(gate.addr(), &upgrade_request("/private", "")).await;
    assert_eq!(status, 401);
    let bad = format!("Authorization: {}\r\n", basic("alice", "wrong"));
    let (status, _, _) = http_request(gate.addr(), &upgrade_request("/private", &bad)).await;
    assert_eq!(status, 401);
    let good = format!("Authorization: {}\r\n", basic("alice", "wonderland"));
    let (status, _, _) = http_request(gate.addr(), &upgrade_request("/private", &good)).await;
    assert_eq!(status, 101);
    let (status, _, _) = http_request(gate.addr(), &upgrade_request("/nowhere", "")).await;
    assert_eq!(status, 404);
    assert_eq!(wait_metric(&gate, &active("/ws"), 0.0).await, 0.0);

    let text = gate.metrics().await;
    for series in [
        "wsgate_handshakes_total{outcome=\"challenged\",route=\"/private\"}",
        "wsgate_auth_failures_total{reason=\"bad_credentials\",route=\"/private\"}",
        "wsgate_handshakes_total{outcome=\"unauthorized\",route=\"/private\"}",
        "wsgate_handshakes_total{outcome=\"upgraded\",route=\"/ws\"}",
        "wsgate_handshakes_total{outcome=\"not_found\",route=\"unmatched\"}",
    ] {
        assert!(metric_value(&text, series) >= 1.0, "{series} not counted");
    }
    assert!(
        metric_value(
            &text,
            "wsgate_bytes_total{direction=\"client_to_upstream\",route=\"/ws\"}"
        ) > 0.0
    );
    assert!(
        metric_value(
            &text,
            "wsgate_bytes_total{direction=\"upstream_to_client\",route=\"/ws\"}"
        ) > 0.0
    );

    let file = gate.files.write("metrics.txt", &text);
    let out = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::from(std::fs::File::open(&file).unwrap()))
        .output()
        .expect("running promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\nstdout: {}\nstderr: {}\n--- metrics ---\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn reload_adds_routes_keeps_tunnels_and_refuses_listener_changes() {
    let old_up = echo_upstream().await;
    let new_up = echo_upstream().await;
    let gate = start_gate(Files::new(), &config(&[("/ws", old_up.addr)], "")).await;
    let mut tunnel = open(&gate, "/ws").await;
    let (status, _, _) = http_request(gate.addr(), &upgrade_request("/new", "")).await;
    assert_eq!(status, 404, "/new before the reload");

    // The old route now points elsewhere too: the open tunnel must not care.
    let reloaded = config(&[("/ws", new_up.addr), ("/new", new_up.addr)], "");
    gate.reloader
        .reload(parse(&gate, &reloaded))
        .expect("valid reload refused");
    assert_eq!(
        gate.metric("wsgate_config_reloads_total{result=\"ok\"}")
            .await,
        1.0
    );

    let fresh = open(&gate, "/new").await;
    assert_eq!(new_up.count(), 1, "/new reached the new upstream");
    assert_eq!(new_up.last().uri, "/new");
    echo_roundtrip(&mut tunnel, "old tunnel after reload").await;
    assert_eq!(old_up.count(), 1);
    close(fresh).await;

    // A listener change needs a restart: refused, old config (with /new) stays in force.
    let moved = config(&[("/ws", new_up.addr), ("/other", new_up.addr)], "")
        .replace("\"127.0.0.1:0\"\nadmin", "\"127.0.0.1:1\"\nadmin");
    assert!(moved.contains("127.0.0.1:1\""));
    let err = gate
        .reloader
        .reload(parse(&gate, &moved))
        .expect_err("a listener change was accepted");
    assert!(err.to_string().contains("restart"), "{err}");
    assert_eq!(
        gate.metric("wsgate_config_reloads_total{result=\"error\"}")
            .await,
        1.0
    );
    let (status, _, _) = http_request(gate.addr(), &upgrade_request("/other", "")).await;
    assert_eq!(status, 404, "the refused config was applied");
    let again = open(&gate, "/new").await;
    close(again).await;
    echo_roundtrip(&mut tunnel, "old tunnel after refused reload").await;
    close(tunnel).await;
    assert_eq!(wait_metric(&gate, &active("/ws"), 0.0).await, 0.0);
}

/// One request on an already open keep-alive connection; (status, head).
async fn on_same_connection(s: &mut TcpStream, request: &str) -> (u16, String) {
    s.write_all(request.as_bytes()).await.unwrap();
    let (status, head, _) = read_response(s).await;
    (status, head)
}

#[tokio::test]
async fn reload_revokes_users_and_keys_on_keep_alive_connections() {
    let up = echo_upstream().await;
    let files = Files::new();
    files.write(
        "users.htpasswd",
        &format!(
            "{}\n{}\n",
            htpasswd_line("alice", "pw-a"),
            htpasswd_line("bob", "pw-b")
        ),
    );
    let old_secret = "first-secret-0123456789abcdef0123456789";
    let new_secret = "second-secret-0123456789abcdef012345678";
    let yaml = |secret: &str| {
        format!(
            "listeners:\n  - bind: \"127.0.0.1:0\"\nadmin:\n  bind: \"127.0.0.1:0\"\nroutes:\n  - path: /private\n    upstream: ws://{up}\n    auth: [users]\n  - path: /jwt\n    upstream: ws://{up}\n    auth: [tokens]\nauth:\n  users:\n    type: basic\n    htpasswd: users.htpasswd\n  tokens:\n    type: jwt\n    algorithms: [HS256]\n    secret: \"{secret}\"\n",
            up = up.addr
        )
    };
    let gate = start_gate(files, &yaml(old_secret)).await;
    let alice = basic("alice", "pw-a");
    let get_private =
        format!("GET /private HTTP/1.1\r\nHost: gate.test\r\nAuthorization: {alice}\r\n\r\n");
    let mut keep_alive = TcpStream::connect(gate.addr()).await.unwrap();
    assert_eq!(
        on_same_connection(&mut keep_alive, &get_private).await.0,
        200
    );
    let token = jwt_with(
        serde_json::json!({"sub": "carol"}),
        old_secret,
        jsonwebtoken::Algorithm::HS256,
    );
    let mut jwt_conn = TcpStream::connect(gate.addr()).await.unwrap();
    let get_jwt = format!("GET /jwt?token={token} HTTP/1.1\r\nHost: gate.test\r\n\r\n");
    assert_eq!(on_same_connection(&mut jwt_conn, &get_jwt).await.0, 200);

    // Remove alice, rotate the JWT secret, reload.
    gate.files.write(
        "users.htpasswd",
        &format!("{}\n", htpasswd_line("bob", "pw-b")),
    );
    gate.reloader
        .reload(parse(&gate, &yaml(new_secret)))
        .expect("valid reload refused");

    let (status, head) = on_same_connection(&mut keep_alive, &get_private).await;
    assert_eq!(
        status, 401,
        "removed user still admitted on a keep-alive connection: {head}"
    );
    let (status, head) = on_same_connection(
        &mut jwt_conn,
        &upgrade_request(&format!("/jwt?token={token}"), ""),
    )
    .await;
    assert_eq!(
        status, 401,
        "old-secret JWT upgraded on a keep-alive connection: {head}"
    );
}

/// A raw admin request; (status, head, body).
async fn admin_raw(gate: &Gate, request: &str) -> (u16, String, String) {
    http_request(gate.admin.expect("no admin listener"), request).await
}

fn post_reload(headers: &str) -> String {
    format!("POST /reload HTTP/1.1\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n")
}

#[tokio::test]
async fn mutating_admin_calls_refuse_browsers_and_rebinding() {
    let echo = echo_upstream().await;
    let gate = start_gate(Files::new(), &config(&[("/ws", echo.addr)], "")).await;
    // A page on any site can make the browser POST here; it always sends Origin.
    let (status, head, _) = admin_raw(
        &gate,
        &post_reload("Host: 127.0.0.1:9190\r\nOrigin: https://evil.example\r\n"),
    )
    .await;
    assert_eq!(status, 403, "POST with Origin: {head}");
    let (status, head, _) =
        admin_raw(&gate, &post_reload("Host: 127.0.0.1\r\nOrigin: null\r\n")).await;
    assert_eq!(status, 403, "POST with Origin: null: {head}");
    // DNS rebinding: the browser thinks it talks to evil.example, so Host says so.
    for host in [
        "evil.example",
        "evil.example:9190",
        "localhost.evil.example",
        "127.0.0.1.nip.io",
    ] {
        let (status, head, _) = admin_raw(&gate, &post_reload(&format!("Host: {host}\r\n"))).await;
        assert_eq!(status, 403, "POST with Host {host}: {head}");
    }
    // Scripts and curl: IP literal or localhost Host, no Origin. This gate has no config file,
    // so passing the guard shows as 409.
    for host in [
        "127.0.0.1:9190",
        "127.0.0.1",
        "[::1]:9190",
        "localhost:9190",
        "LOCALHOST",
    ] {
        let (status, head, _) = admin_raw(&gate, &post_reload(&format!("Host: {host}\r\n"))).await;
        assert_eq!(status, 409, "POST with Host {host}: {head}");
    }
    // Reads stay open to browsers (Prometheus UIs, dashboards).
    let (status, _, _) = admin_raw(
        &gate,
        "GET /metrics HTTP/1.1\r\nHost: evil.example\r\nOrigin: https://evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn admin_token_is_required_for_mutations_and_lets_them_past_the_browser_rule() {
    let echo = echo_upstream().await;
    let token = "admin-token-0123456789abcdef";
    let gate = start_gate(
        Files::new(),
        &config(&[("/ws", echo.addr)], "").replace(
            "admin:\n  bind: \"127.0.0.1:0\"\n",
            &format!("admin:\n  bind: \"127.0.0.1:0\"\n  token: \"{token}\"\n"),
        ),
    )
    .await;
    let (status, head, _) = admin_raw(&gate, &post_reload("Host: 127.0.0.1\r\n")).await;
    assert_eq!(status, 401, "no token: {head}");
    assert_eq!(
        head_header(&head, "www-authenticate").as_deref(),
        Some("Bearer")
    );
    let (status, head, _) = admin_raw(
        &gate,
        &post_reload(&format!(
            "Host: 127.0.0.1\r\nAuthorization: Bearer {token}x\r\n"
        )),
    )
    .await;
    assert_eq!(status, 401, "wrong token: {head}");
    let (status, head, _) = admin_raw(
        &gate,
        &post_reload(&format!(
            "Host: 127.0.0.1\r\nAuthorization: Basic {token}\r\n"
        )),
    )
    .await;
    assert_eq!(status, 401, "token in the wrong scheme: {head}");
    // The token is what a browser page cannot have: with it, Origin and Host don't matter.
    let (status, head, _) = admin_raw(
        &gate,
        &post_reload(&format!(
            "Host: wsgate.internal\r\nOrigin: https://ops.example\r\nAuthorization: Bearer {token}\r\n"
        )),
    )
    .await;
    assert_eq!(status, 409, "right token: {head}");
}

#[tokio::test]
async fn admin_connections_are_capped() {
    let echo = echo_upstream().await;
    let gate = start_gate(
        Files::new(),
        &config(&[("/ws", echo.addr)], "").replace(
            "admin:\n  bind: \"127.0.0.1:0\"\n",
            "admin:\n  bind: \"127.0.0.1:0\"\n  max_connections: 2\n",
        ),
    )
    .await;
    let admin = gate.admin.unwrap();
    let idle1 = TcpStream::connect(admin).await.unwrap();
    let _idle2 = TcpStream::connect(admin).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = TcpStream::connect(admin).await.unwrap();
    let _ = third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await;
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(2), third.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "a third admin connection was served past max_connections: 2 ({read:?})"
    );
    drop(idle1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(gate.admin_get("/healthz").await.0, 200, "a slot came back");
}

/// Writes `{name}.crt`/`{name}.key`: a self-signed leaf with subject CN `cn` valid until
/// midnight UTC of `not_after` (y, m, d).
fn write_leaf(files: &Files, name: &str, cn: &str, not_after: (i32, u8, u8)) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    files.write(&format!("{name}.crt"), &cert.pem());
    files.write(&format!("{name}.key"), &key.serialize_pem());
}

fn tls_listener_config(up: SocketAddr, cert: &str) -> String {
    format!(
        "listeners:\n  - bind: \"127.0.0.1:0\"\n    tls:\n      cert: {{dir}}/{cert}.crt\n      key: {{dir}}/{cert}.key\n\
         admin:\n  bind: \"127.0.0.1:0\"\nlimits:\n  max_connections: 123\n\
         routes:\n  - path: /ws\n    upstream: ws://{up}\n"
    )
}

#[tokio::test]
async fn operator_metrics_build_info_reload_time_and_certificate_expiry() {
    let echo = echo_upstream().await;
    let files = Files::new();
    write_leaf(&files, "old", "gate.example", (2031, 5, 17));
    write_leaf(&files, "new", "renewed.example", (2032, 1, 2));
    let before = now_secs() as f64;
    let gate = start_gate(files, &tls_listener_config(echo.addr, "old")).await;
    let text = gate.metrics().await;

    let info = format!(
        "wsgate_build_info{{commit=\"{}\",version=\"{}\"}}",
        wsgate::COMMIT,
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(metric_value(&text, &info), 1.0);
    assert!(!wsgate::COMMIT.is_empty());
    assert_eq!(metric_value(&text, "wsgate_connections_max"), 123.0);
    let old_series = "wsgate_tls_certificate_expiry_timestamp_seconds{listener=\"127.0.0.1:0\",subject=\"gate.example\"}";
    // 2031-05-17T00:00:00Z
    assert_eq!(metric_value(&text, old_series), 1_936_742_400.0);
    let started = metric_value(&text, "wsgate_config_last_reload_success_timestamp_seconds");
    assert!(
        started >= before && started <= now_secs() as f64 + 1.0,
        "{started}"
    );

    // A failed reload changes nothing.
    let mut bad = parse(&gate, &tls_listener_config(echo.addr, "new"));
    bad.listeners[0].tls.as_mut().unwrap().key = gate.files.path("old.key");
    assert!(gate.reloader.reload(bad).is_err());
    let text = gate.metrics().await;
    assert_eq!(
        metric_value(&text, "wsgate_config_last_reload_success_timestamp_seconds"),
        started
    );
    assert_eq!(metric_value(&text, old_series), 1_936_742_400.0);

    tokio::time::sleep(Duration::from_millis(20)).await;
    gate.reloader
        .reload(parse(&gate, &tls_listener_config(echo.addr, "new")))
        .unwrap();
    let text = gate.metrics().await;
    let reloaded = metric_value(&text, "wsgate_config_last_reload_success_timestamp_seconds");
    assert!(reloaded > started, "{reloaded} <= {started}");
    // 2032-01-02T00:00:00Z; the old subject's series is gone with its certificate.
    assert_eq!(
        metric_value(
            &text,
            "wsgate_tls_certificate_expiry_timestamp_seconds{listener=\"127.0.0.1:0\",subject=\"renewed.example\"}"
        ),
        1_956_614_400.0
    );
    assert!(try_metric_value(&text, old_series).is_none(), "{text}");
}

#[test]
fn alert_rules_pass_promtool_check() {
    let promtool = Path::new("/usr/bin/promtool");
    if !tools_available(
        "alert_rules_pass_promtool_check",
        &[Tool::File(promtool.into())],
    ) {
        return;
    }
    let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");
    let rules = contrib.join("alerts.yml");
    // `check` validates syntax and expressions; `test` proves each alert fires on the series
    // wsgate exports (contrib/alerts_test.yml).
    for (command, file) in [
        ("check", &rules),
        ("test", &contrib.join("alerts_test.yml")),
    ] {
        let out = std::process::Command::new(promtool)
            .args([command, "rules"])
            .arg(file)
            .output()
            .expect("running promtool");
        assert!(
            out.status.success(),
            "promtool {command} rules failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every wsgate metric an alert reads must exist, or the alert silently never fires.
    let text = std::fs::read_to_string(&rules).unwrap();
    for name in [
        "wsgate_tls_certificate_expiry_timestamp_seconds",
        "wsgate_config_reloads_total",
        "wsgate_handshakes_total",
        "wsgate_client_connections_open",
        "wsgate_connections_max",
        "wsgate_events_dropped_total",
    ] {
        assert!(text.contains(name), "alerts.yml does not use {name}");
    }
}
