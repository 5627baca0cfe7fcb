//! Cluster mode: three gateways and one real `redis-server` on loopback. Presence seen from
//! every instance, kicks/pushes/broadcasts fanned out, per-user limits across instances, a
//! crashed instance's users expiring, and a Redis outage that traffic does not notice.
// Real sockets and a real Redis: deadlines here are wall-clock on purpose.
#![allow(clippy::disallowed_types)]
mod common;

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// The heartbeat the tests run with: a crashed instance's entries expire after three.
const HEARTBEAT: Duration = Duration::from_millis(200);

/// A `redis-server` on 127.0.0.1, no persistence; killed on drop (even when a test fails).
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Redis {
    /// `None` (test skipped, or failed under tests/run.sh) when redis-server is missing.
    fn start(test: &str) -> Option<Redis> {
        if !tools_available(test, &[Tool::Program("redis-server")]) {
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = Redis {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
        };
        r.restart();
        Some(r)
    }

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn config(redis: &str, up: SocketAddr, instance: &str) -> String {
    format!(
        r#"listeners:
  - bind: "127.0.0.1:0"
admin:
  bind: "127.0.0.1:0"
auth:
  jwt:
    type: jwt
    algorithms: [HS256]
    secret: "${{WSGATE_JWT_SECRET}}"
routes:
  - path: /chat
    upstream: ws://{up}
    auth: [jwt]
  - path: /one
    upstream: ws://{up}
    auth: [jwt]
    max_connections_per_user: 1
  - path: /evict
    upstream: ws://{up}
    auth: [jwt]
    max_connections_per_user: 1
    on_user_limit: evict_oldest
cluster:
  redis: "{redis}"
  instance_id: "{instance}"
  heartbeat: {hb}ms
"#,
        hb = HEARTBEAT.as_millis()
    )
}

/// `n` gateways named a, b, c... on one Redis, each up (`wsgate_cluster_up` 1).
async fn gates(redis: &Redis, n: usize) -> (Vec<Gate>, EchoUpstream) {
    let echo = echo_upstream().await;
    let mut out = Vec::new();
    for name in ["a", "b", "c"].into_iter().take(n) {
        out.push(start_gate(Files::new(), &config(&redis.url(), echo.addr, name)).await);
    }
    for g in &out {
        assert_eq!(wait_metric(g, "wsgate_cluster_up", 1.0).await, 1.0);
    }
    (out, echo)
}

async fn try_open(
    gate: &Gate,
    path: &str,
    user: &str,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let token = jwt(serde_json::json!({ "sub": user }));
    ws_connect(&gate.ws_url(&format!("{path}?token={token}")), &[])
        .await
        .map(|(ws, _)| ws)
}

async fn open(gate: &Gate, path: &str, user: &str) -> Ws {
    let mut ws = try_open(gate, path, user)
        .await
        .unwrap_or_else(|e| panic!("connect {path} as {user}: {e}"));
    echo_roundtrip(&mut ws, "hello").await;
    ws
}

/// One admin call from loopback: (status, body).
async fn call(gate: &Gate, method: &str, path: &str, body: &str) -> (u16, String) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(gate.admin.unwrap()).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("admin answer timed out")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("no response head");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let chunked = head_header(head, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
    (
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    )
}

fn dechunk(mut b: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = b.split_once("\r\n").expect("chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        b = &rest[size + 2..];
    }
}

async fn ok_json(gate: &Gate, method: &str, path: &str, body: &str) -> Value {
    let (status, text) = call(gate, method, path, body).await;
    assert_eq!(status, 200, "{method} {path}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
}

/// `user -> sorted instances` from `GET /users?scope=cluster` on `gate`.
async fn cluster_users(gate: &Gate, route: &str) -> Vec<(String, Vec<String>)> {
    let v = ok_json(
        gate,
        "GET",
        &format!("/users?scope=cluster&route={route}"),
        "",
    )
    .await;
    v["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            let inst = u["instances"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_str().unwrap().to_owned())
                .collect();
            (u["user"].as_str().unwrap().to_owned(), inst)
        })
        .collect()
}

/// Polls `check` every 10 ms until it holds or 5 s pass; returns how long it took.
async fn until<F, Fut>(what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

/// The close code the client gets (`None`: the stream ended without a close frame).
async fn close_code(ws: &mut Ws) -> Option<u16> {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return None,
            }
        }
    })
    .await
    .expect("the connection did not end")
}

async fn next_text(ws: &mut Ws) -> String {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return t.to_string(),
                Some(Ok(_)) => {}
                other => panic!("stream ended: {other:?}"),
            }
        }
    })
    .await
    .expect("no message came")
}

#[tokio::test]
async fn presence_is_seen_from_every_instance() {
    let Some(redis) = Redis::start("presence_is_seen_from_every_instance") else {
        return;
    };
    let (g, _echo) = gates(&redis, 3).await;
    let _alice = open(&g[0], "/chat", "alice").await;
    let _alice2 = open(&g[2], "/chat", "alice").await;
    let _bob = open(&g[1], "/chat", "bob").await;
    let want = vec![
        ("alice".to_string(), vec!["a".to_string(), "c".to_string()]),
        ("bob".to_string(), vec!["b".to_string()]),
    ];
    for gate in &g {
        until("every instance sees alice on a and c, bob on b", || async {
            cluster_users(gate, "%2Fchat").await == want
        })
        .await;
    }
    // The local view stays local.
    let local = ok_json(&g[1], "GET", "/users", "").await;
    assert_eq!(local["users"].as_array().unwrap().len(), 1, "{local}");
    let conns = ok_json(&g[1], "GET", "/connections?scope=cluster&user=alice", "").await;
    let conns = conns["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 2, "{conns:?}");
    assert_eq!(conns[0]["instance"], "a");
    assert_eq!(conns[0]["route"], "/chat");
    assert_eq!(conns[0]["client"], "127.0.0.1");
    assert_eq!(conns[1]["instance"], "c");
    for gate in &g {
        assert_eq!(
            wait_metric(gate, "wsgate_cluster_users_online{route=\"/chat\"}", 2.0).await,
            2.0
        );
    }
    let (status, body) = call(&g[0], "GET", "/users?scope=everywhere", "").await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn kicks_pushes_and_broadcasts_reach_every_instance() {
    let Some(redis) = Redis::start("kicks_pushes_and_broadcasts_reach_every_instance") else {
        return;
    };
    let (g, _echo) = gates(&redis, 3).await;
    let mut on_b = open(&g[1], "/chat", "alice").await;
    let mut on_c = open(&g[2], "/chat", "alice").await;
    let mut bob = open(&g[2], "/chat", "bob").await;

    let v = ok_json(
        &g[0],
        "POST",
        "/users/bob/messages",
        r#"{"text": "to bob"}"#,
    )
    .await;
    assert_eq!(v["instances"], 2, "{v}");
    assert_eq!(next_text(&mut bob).await, "to bob");

    let v = ok_json(
        &g[1],
        "POST",
        "/routes/%2Fchat/broadcast",
        r#"{"text": "to all"}"#,
    )
    .await;
    assert_eq!(v["sent"], 1, "alice on b, here: {v}");
    for ws in [&mut on_b, &mut on_c, &mut bob] {
        assert_eq!(next_text(ws).await, "to all");
    }

    // Nobody on a: the kick is answered from a and done by b and c.
    let v = ok_json(&g[0], "DELETE", "/users/alice", "").await;
    assert_eq!(v["closed"], 0, "{v}");
    assert_eq!(v["instances"], 2, "{v}");
    assert_eq!(close_code(&mut on_b).await, Some(4000));
    assert_eq!(close_code(&mut on_c).await, Some(4000));
    echo_roundtrip(&mut bob, "bob stays").await;
}

#[tokio::test]
async fn evict_oldest_holds_across_instances() {
    let Some(redis) = Redis::start("evict_oldest_holds_across_instances") else {
        return;
    };
    let (g, _echo) = gates(&redis, 2).await;
    let mut first = open(&g[0], "/evict", "alice").await;
    until("b sees alice's first login", || async {
        cluster_users(&g[1], "%2Fevict").await.len() == 1
    })
    .await;
    let mut second = open(&g[1], "/evict", "alice").await;
    assert_eq!(
        close_code(&mut first).await,
        Some(4002),
        "the older login on a was not evicted by the newer one on b"
    );
    echo_roundtrip(&mut second, "still here").await;
}

#[tokio::test]
async fn simultaneous_logins_with_reject_cannot_both_win() {
    let Some(redis) = Redis::start("simultaneous_logins_with_reject_cannot_both_win") else {
        return;
    };
    let (g, _echo) = gates(&redis, 2).await;
    let mut kept = Vec::new();
    for round in 0..20 {
        let user = format!("racer{round}");
        let (on_a, on_b) = tokio::join!(
            try_open(&g[0], "/one", &user),
            try_open(&g[1], "/one", &user)
        );
        let winners = usize::from(on_a.is_ok()) + usize::from(on_b.is_ok());
        for r in [on_a, on_b] {
            match r {
                Ok(ws) => kept.push(ws),
                Err(e) => assert_eq!(refused_status(e), 409),
            }
        }
        assert_eq!(winners, 1, "round {round}: {winners} logins of {user} won");
    }
}

#[tokio::test]
async fn a_crashed_instances_users_vanish_within_three_heartbeats() {
    let Some(redis) = Redis::start("a_crashed_instances_users_vanish_within_three_heartbeats")
    else {
        return;
    };
    let (mut g, _echo) = gates(&redis, 3).await;
    let _alice = open(&g[2], "/chat", "alice").await;
    until("a sees alice on c", || async {
        cluster_users(&g[0], "%2Fchat").await.len() == 1
    })
    .await;
    // Let a heartbeat (not the open) set the TTL, as for any connection older than one.
    tokio::time::sleep(HEARTBEAT + HEARTBEAT / 4).await;
    // A crash: c's tasks stop where they are, nothing is cleaned up.
    let c = g.pop().unwrap();
    c.task.abort();
    let _ = c.task.await;
    let took = until("alice's presence on c expires", || async {
        cluster_users(&g[0], "%2Fchat").await.is_empty()
    })
    .await;
    eprintln!(
        "crashed instance's users gone after {} ms (heartbeat {} ms)",
        took.as_millis(),
        HEARTBEAT.as_millis()
    );
    assert!(
        took <= HEARTBEAT * 3 + Duration::from_millis(150),
        "took {took:?}, more than three heartbeats"
    );
    assert_eq!(
        wait_metric(&g[1], "wsgate_cluster_users_online{route=\"/chat\"}", 0.0).await,
        0.0
    );
}

#[tokio::test]
async fn a_redis_outage_keeps_traffic_flowing_and_presence_returns() {
    let Some(mut redis) = Redis::start("a_redis_outage_keeps_traffic_flowing_and_presence_returns")
    else {
        return;
    };
    let (g, _echo) = gates(&redis, 2).await;
    let mut before = open(&g[0], "/one", "alice").await;
    redis.stop();
    for gate in &g {
        assert_eq!(wait_metric(gate, "wsgate_cluster_up", 0.0).await, 0.0);
    }
    // Handshakes (a limited route included) and open tunnels go on with local-only state.
    let start = Instant::now();
    let mut during = open(&g[1], "/one", "bob").await;
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "a handshake waited {:?} for Redis",
        start.elapsed()
    );
    echo_roundtrip(&mut before, "still flowing").await;
    let (status, body) = call(&g[0], "GET", "/users?scope=cluster", "").await;
    assert_eq!(status, 503, "{body}");
    // Local limits still hold.
    let e = try_open(&g[0], "/one", "alice").await.unwrap_err();
    assert_eq!(refused_status(e), 409);

    redis.restart();
    for gate in &g {
        assert_eq!(wait_metric(gate, "wsgate_cluster_up", 1.0).await, 1.0);
    }
    until("presence is registered again", || async {
        cluster_users(&g[1], "%2Fone").await
            == vec![
                ("alice".to_string(), vec!["a".to_string()]),
                ("bob".to_string(), vec!["b".to_string()]),
            ]
    })
    .await;
    // The cluster-wide limit counts the connections re-registered from memory.
    let e = try_open(&g[1], "/one", "alice").await.unwrap_err();
    assert_eq!(refused_status(e), 409);
    echo_roundtrip(&mut during, "after").await;
}

#[test]
fn config_errors_name_the_cluster_keys() {
    let yaml = r#"listeners:
  - bind: "127.0.0.1:0"
routes:
  - path: /ws
    upstream: ws://127.0.0.1:1
cluster:
  redis: "http://127.0.0.1:6379"
  instance_id: "a|b"
  heartbeat: 0s
  colour: blue
"#;
    let dir = tempfile::tempdir().unwrap();
    let err =
        wsgate::config::parse_str(yaml, std::path::Path::new("t.yaml"), dir.path(), &|_| None)
            .unwrap_err()
            .to_string();
    for want in [
        "cluster.redis: must start with redis://",
        "cluster.instance_id: '|' is not allowed",
        "cluster.heartbeat: must be greater than 0s",
        "cluster.colour",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    let missing = "listeners:\n  - bind: \"127.0.0.1:0\"\nroutes:\n  - path: /ws\n    upstream: ws://127.0.0.1:1\ncluster:\n  heartbeat: 1s\n";
    let err =
        wsgate::config::parse_str(missing, std::path::Path::new("t.yaml"), dir.path(), &|_| {
            None
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("cluster.redis"), "{err}");
}

/// The deployment examples in contrib/ parse, carry the parts their comments promise, and
/// embed configs that wsgate's own validation accepts (the CI lint for them).
#[test]
fn deployment_examples_are_complete() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");
    let dir = tempfile::tempdir().unwrap();
    let env = |name: &str| match name {
        "WSGATE_JWT_SECRET" => Some("0123456789abcdef0123456789abcdef".to_string()),
        "POD_NAME" => Some("chat-5d9c-x2x".to_string()),
        "WSGATE_INSTANCE" => Some("wsgate-a".to_string()),
        _ => None,
    };
    // Files a config names (certs, the admin token) exist only in the pod: put stand-ins in
    // a temp dir and point the absolute paths there.
    let check_config = |what: &str, yaml: &str| {
        let yaml = yaml.replace("/etc/wsgate/", &format!("{}/", dir.path().display()));
        std::fs::create_dir_all(dir.path().join("tls")).unwrap();
        std::fs::create_dir_all(dir.path().join("auth")).unwrap();
        std::fs::write(dir.path().join("auth/admin-token"), "a".repeat(32)).unwrap();
        let c = wsgate::config::parse_str(&yaml, std::path::Path::new(what), dir.path(), &env)
            .unwrap_or_else(|e| panic!("{what} is not a valid wsgate config:\n{e}"));
        assert!(c.cluster.is_some(), "{what}: no cluster section");
    };

    let text = std::fs::read_to_string(root.join("kubernetes/wsgate.yaml")).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("kubernetes/wsgate.yaml");
    let kind = |k: &str| -> Vec<&Value> { docs.iter().filter(|d| d["kind"] == k).collect() };
    for d in &docs {
        assert!(
            d["apiVersion"].is_string() && d["metadata"]["name"].is_string(),
            "{d}"
        );
    }
    let cm = kind("ConfigMap");
    check_config(
        "ConfigMap config.yaml",
        cm[0]["data"]["config.yaml"].as_str().unwrap(),
    );
    assert!(
        kind("Secret").len() >= 2,
        "a Secret for the JWT key, one for TLS"
    );
    let deploy = kind("Deployment")
        .into_iter()
        .find(|d| d["metadata"]["name"] == "chat")
        .expect("the app's Deployment");
    let pod = &deploy["spec"]["template"];
    let ann = &pod["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], "9190");
    let containers = pod["spec"]["containers"].as_array().unwrap();
    assert_eq!(
        containers.len(),
        2,
        "wsgate runs as a sidecar next to the app"
    );
    let gate = containers
        .iter()
        .find(|c| c["name"] == "wsgate")
        .expect("wsgate container");
    assert_eq!(gate["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(gate["livenessProbe"]["httpGet"]["path"], "/healthz");
    let sleep = gate["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .expect("preStop sleep");
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        grace >= sleep + 30,
        "grace {grace}s leaves no room for the 30s drain"
    );
    let mounts: Vec<&str> = gate["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert!(mounts.contains(&"/etc/wsgate/config.yaml"), "{mounts:?}");

    let text = std::fs::read_to_string(root.join("compose/docker-compose.yml")).unwrap();
    let compose: Value = serde_saphyr::from_str(&text).expect("docker-compose.yml");
    let services = compose["services"].as_object().unwrap();
    for s in ["redis", "echo", "wsgate-a", "wsgate-b"] {
        assert!(services.contains_key(s), "service {s} missing");
    }
    let config = std::fs::read_to_string(root.join("compose/config.yaml")).unwrap();
    check_config("compose/config.yaml", &config);
}

/// The handshake cost cluster mode adds (bench/RESULTS.md "Cluster mode"): sequential JWT
/// upgrades on a gate without `cluster:` and on one with it, interleaved in rounds so both see
/// the same machine noise; on an unlimited route (the presence write is queued, not awaited)
/// and on a `reject` route (one Redis round trip on the handshake). By hand:
/// `cargo test --release --test cluster -- --ignored --nocapture handshake_cost`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn handshake_cost() {
    let Some(redis) = Redis::start("handshake_cost") else {
        return;
    };
    let echo = echo_upstream().await;
    let on = start_gate(Files::new(), &config(&redis.url(), echo.addr, "bench")).await;
    assert_eq!(wait_metric(&on, "wsgate_cluster_up", 1.0).await, 1.0);
    let plain = config(&redis.url(), echo.addr, "unused");
    let plain = &plain[..plain.find("cluster:").unwrap()];
    let off = start_gate(Files::new(), plain).await;
    const PER_ROUND: usize = 200;
    const ROUNDS: usize = 5;
    let mut user = 0usize;
    let mut run = async |gate: &Gate, path: &str| -> f64 {
        let start = Instant::now();
        for _ in 0..PER_ROUND {
            user += 1;
            let token = jwt(serde_json::json!({ "sub": format!("u{user}") }));
            let (mut ws, _) = ws_connect(&gate.ws_url(&format!("{path}?token={token}")), &[])
                .await
                .unwrap();
            ws.close(None).await.unwrap();
        }
        start.elapsed().as_secs_f64() * 1e6 / PER_ROUND as f64
    };
    for path in ["/chat", "/one"] {
        let (mut t_off, mut t_on) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            t_off.push(run(&off, path).await);
            t_on.push(run(&on, path).await);
        }
        t_off.sort_by(f64::total_cmp);
        t_on.sort_by(f64::total_cmp);
        let (m_off, m_on) = (t_off[ROUNDS / 2], t_on[ROUNDS / 2]);
        eprintln!(
            "{path}: client-side cluster off {m_off:.0} µs/handshake, on {m_on:.0} µs (ratio {:.3}, {:+.0} µs); rounds off {t_off:.0?} on {t_on:.0?}",
            m_on / m_off,
            m_on - m_off
        );
        // Server side: request received → 101 sent (wsgate_handshake_duration_seconds).
        let mean = async |gate: &Gate| {
            let text = gate.metrics().await;
            let series = |s: &str| {
                metric_value(
                    &text,
                    &format!("wsgate_handshake_duration_seconds_{s}{{route=\"{path}\"}}"),
                )
            };
            series("sum") * 1e6 / series("count")
        };
        let (s_off, s_on) = (mean(&off).await, mean(&on).await);
        eprintln!(
            "{path}: server-side mean cluster off {s_off:.1} µs, on {s_on:.1} µs (ratio {:.3}, {:+.1} µs)",
            s_on / s_off,
            s_on - s_off
        );
    }
}
