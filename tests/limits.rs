//! Per-client limits over real sockets: keyed on the resolved client (trusted proxies), IPv6
//! grouped by prefix, fair password hashing under a bad-credential flood, drop-in defaults.
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// A plain listener + admin on 127.0.0.1:0, the given route lines and extra top-level YAML.
fn config(routes: &str, extra: &str) -> String {
    format!(
        "listeners:\n  - bind: \"127.0.0.1:0\"\nadmin:\n  bind: \"127.0.0.1:0\"\nroutes:\n{routes}{extra}"
    )
}

fn route(path: &str, upstream: SocketAddr) -> String {
    format!("  - path: {path}\n    upstream: ws://{upstream}\n")
}

fn auth_route(path: &str, upstream: SocketAddr) -> String {
    format!("  - path: {path}\n    upstream: ws://{upstream}\n    auth: [users]\n")
}

fn handshakes(outcome: &str, route: &str) -> String {
    format!("wsgate_handshakes_total{{outcome=\"{outcome}\",route=\"{route}\"}}")
}

/// A TCP connection to `addr` from the local address `ip` (any 127.0.0.0/8 address works).
async fn connect_from(ip: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Sends `request` from source address `ip` and reads the response head.
async fn request_from(ip: &str, addr: SocketAddr, request: &str) -> (u16, String, TcpStream) {
    let mut s = connect_from(ip, addr).await;
    s.write_all(request.as_bytes()).await.unwrap();
    let (status, head, _) = read_response(&mut s).await;
    (status, head, s)
}

/// A raw upgrade through a trusted proxy (127.0.0.1) on behalf of `client`.
fn upgrade_for(client: &str) -> String {
    upgrade_request("/ws", &format!("X-Forwarded-For: {client}\r\n"))
}

// ---------------------------------------------------------------------------------------
// drop-in defaults
// ---------------------------------------------------------------------------------------

/// A load test from one address (what a new user tries first, or what a load balancer
/// without `trusted_proxies` looks like) must not be capped by per-IP defaults.
#[tokio::test]
async fn default_config_upgrades_100_connections_from_one_address() {
    let echo = echo_upstream().await;
    let gate = start_gate(Files::new(), &config(&route("/ws", echo.addr), "")).await;
    let mut held = Vec::new();
    let mut refused = Vec::new();
    let conns = (0..100).map(|_| {
        let addr = gate.addr();
        tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(upgrade_request("/ws", "").as_bytes())
                .await
                .unwrap();
            let (status, _, _) = read_response(&mut s).await;
            (status, s)
        })
    });
    for c in futures_util::future::join_all(conns).await {
        let (status, s) = c.unwrap();
        if status == 101 {
            held.push(s);
        } else {
            refused.push(status);
        }
    }
    assert!(
        refused.is_empty(),
        "refused with default limits: {refused:?}"
    );
    assert_eq!(held.len(), 100);
    assert_eq!(
        gate.metric("wsgate_connections_active{route=\"/ws\"}")
            .await,
        100.0
    );
}

// ---------------------------------------------------------------------------------------
// keyed on the resolved client
// ---------------------------------------------------------------------------------------

/// Behind a trusted load balancer every client arrives from the balancer's address: the
/// per-IP connection limit must count the client named in `X-Forwarded-For`.
#[tokio::test]
async fn connection_limit_behind_trusted_proxy_counts_each_client() {
    let echo = echo_upstream().await;
    let gate = start_gate(
        Files::new(),
        &config(
            &route("/ws", echo.addr),
            "trusted_proxies: [\"127.0.0.1\"]\nlimits:\n  max_connections_per_ip: 1\n",
        ),
    )
    .await;
    let (a, head, _sa) = request_from("127.0.0.1", gate.addr(), &upgrade_for("203.0.113.1")).await;
    assert_eq!(a, 101, "{head}");
    let (b, head, _sb) = request_from("127.0.0.1", gate.addr(), &upgrade_for("203.0.113.2")).await;
    assert_eq!(b, 101, "a second client behind the same proxy: {head}");
    // The first client's second tunnel is over its limit: refused at the upgrade.
    let (c, head, _) = request_from("127.0.0.1", gate.addr(), &upgrade_for("203.0.113.1")).await;
    assert_eq!(c, 429, "{head}");
    assert!(head_header(&head, "retry-after").is_some(), "{head}");
    assert_eq!(
        wait_metric(&gate, &handshakes("limited", "/ws"), 1.0).await,
        1.0
    );
    // Closing the first tunnel gives the slot back.
    drop(_sa);
    let mut ok = false;
    for _ in 0..50 {
        let (s, _, _keep) =
            request_from("127.0.0.1", gate.addr(), &upgrade_for("203.0.113.1")).await;
        if s == 101 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "slot never released");
}

/// A peer that is not a trusted proxy is still counted at accept, on its own address,
/// whatever `X-Forwarded-For` it sends.
#[tokio::test]
async fn connection_limit_for_untrusted_peer_is_taken_at_accept() {
    let echo = echo_upstream().await;
    let gate = start_gate(
        Files::new(),
        &config(
            &route("/ws", echo.addr),
            "trusted_proxies: [\"10.0.0.0/8\"]\nlimits:\n  max_connections_per_ip: 1\n",
        ),
    )
    .await;
    let (a, head, _sa) = request_from("127.0.0.3", gate.addr(), &upgrade_for("203.0.113.1")).await;
    assert_eq!(a, 101, "{head}");
    let (b, head, _) = request_from("127.0.0.3", gate.addr(), &upgrade_for("203.0.113.2")).await;
    assert_eq!(b, 429, "a forged X-Forwarded-For buys no slot: {head}");
    assert_eq!(
        wait_metric(&gate, &handshakes("limited", "unmatched"), 1.0).await,
        1.0
    );
}

// ---------------------------------------------------------------------------------------
// IPv6 grouping
// ---------------------------------------------------------------------------------------

fn rate_one(extra: &str) -> String {
    format!(
        "trusted_proxies: [\"127.0.0.1\"]\nlimits:\n  handshake_rate_per_ip: 1\n  handshake_burst_per_ip: 1\n{extra}"
    )
}

/// One /64 is one client by default: an attacker rotating through its 2^64 addresses
/// shares one bucket.
#[tokio::test]
async fn ipv6_clients_in_one_64_share_a_bucket() {
    let echo = echo_upstream().await;
    let gate = start_gate(
        Files::new(),
        &config(&route("/ws", echo.addr), &rate_one("")),
    )
    .await;
    let (s, head, _k1) =
        request_from("127.0.0.1", gate.addr(), &upgrade_for("2001:db8:1:2::1")).await;
    assert_eq!(s, 101, "{head}");
    let (s, head, _) = request_from(
        "127.0.0.1",
        gate.addr(),
        &upgrade_for("2001:db8:1:2:ffff::9"),
    )
    .await;
    assert_eq!(s, 429, "same /64, same bucket: {head}");
    let (s, head, _k2) =
        request_from("127.0.0.1", gate.addr(), &upgrade_for("2001:db8:1:3::1")).await;
    assert_eq!(s, 101, "another /64 has its own: {head}");
    // An IPv4-mapped address is the IPv4 client.
    let (s, head, _k3) = request_from("127.0.0.1", gate.addr(), &upgrade_for("203.0.113.5")).await;
    assert_eq!(s, 101, "{head}");
    let (s, head, _) =
        request_from("127.0.0.1", gate.addr(), &upgrade_for("::ffff:203.0.113.5")).await;
    assert_eq!(s, 429, "IPv4-mapped counts as IPv4: {head}");
}

#[tokio::test]
async fn ipv6_prefix_is_configurable() {
    let echo = echo_upstream().await;
    let gate = start_gate(
        Files::new(),
        &config(&route("/ws", echo.addr), &rate_one("  ipv6_prefix: 128\n")),
    )
    .await;
    let (s, head, _k1) = request_from("127.0.0.1", gate.addr(), &upgrade_for("2001:db8::1")).await;
    assert_eq!(s, 101, "{head}");
    let (s, head, _k2) = request_from("127.0.0.1", gate.addr(), &upgrade_for("2001:db8::2")).await;
    assert_eq!(s, 101, "/128: each address is a client: {head}");
    let gate48 = start_gate(
        Files::new(),
        &config(&route("/ws", echo.addr), &rate_one("  ipv6_prefix: 48\n")),
    )
    .await;
    let (s, head, _k3) =
        request_from("127.0.0.1", gate48.addr(), &upgrade_for("2001:db8:1:1::1")).await;
    assert_eq!(s, 101, "{head}");
    let (s, head, _) =
        request_from("127.0.0.1", gate48.addr(), &upgrade_for("2001:db8:1:2::1")).await;
    assert_eq!(s, 429, "/48 groups the two /64s: {head}");
}

// ---------------------------------------------------------------------------------------
// fair password hashing
// ---------------------------------------------------------------------------------------

/// bcrypt cost high enough that a hash takes real time in a debug build, so a flood fills
/// the hash queue on a gateway without per-client fairness.
fn slow_htpasswd_line(user: &str, password: &str) -> String {
    let h = bcrypt::hash_with_result(password, 8)
        .unwrap()
        .format_for_version(bcrypt::Version::TwoY);
    format!("{user}:{h}")
}

fn basic_gate_yaml(upstream: SocketAddr, limits: &str) -> String {
    config(
        &auth_route("/ws", upstream),
        &format!(
            "auth:\n  users:\n    type: basic\n    htpasswd: \"{{dir}}/users.htpasswd\"\nlimits:\n  max_concurrent_hashes: 2\n{limits}"
        ),
    )
}

fn get_with(auth: &str) -> String {
    format!(
        "GET /ws/poll HTTP/1.1\r\nHost: gate.test\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
    )
}

/// One client flooding bad Basic credentials on plain (non-upgrade) requests must not make
/// other users' first (uncached) logins fail with 503: the flooder is capped at its fair
/// share of hash slots and told to back off with 429 + Retry-After.
#[tokio::test]
async fn bad_basic_flood_on_plain_requests_does_not_lock_out_other_users() {
    let echo = echo_upstream().await;
    let files = Files::new();
    files.write(
        "users.htpasswd",
        &format!(
            "{}\n{}\n",
            slow_htpasswd_line("alice", "alice-pw"),
            slow_htpasswd_line("bob", "bob-pw")
        ),
    );
    let gate = start_gate(files, &basic_gate_yaml(echo.addr, "")).await;
    let addr = gate.addr();

    let stop = Arc::new(AtomicBool::new(false));
    let throttled = Arc::new(AtomicUsize::new(0));
    let retry_after = Arc::new(AtomicUsize::new(0));
    let mut attackers = Vec::new();
    for _ in 0..120 {
        let (stop, throttled, retry_after) = (stop.clone(), throttled.clone(), retry_after.clone());
        attackers.push(tokio::spawn(async move {
            let req = get_with(&basic("alice", "wrong"));
            while !stop.load(Ordering::Relaxed) {
                let (status, head, _) = request_from("127.0.0.2", addr, &req).await;
                if status == 429 {
                    throttled.fetch_add(1, Ordering::Relaxed);
                    if head_header(&head, "retry-after").is_some() {
                        retry_after.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // Let the flood fill whatever it can.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let (status, head, _) =
        request_from("127.0.0.1", addr, &get_with(&basic("bob", "bob-pw"))).await;
    assert_eq!(status, 200, "legit plain request during the flood: {head}");
    let (status, head, _tunnel) = request_from(
        "127.0.0.1",
        addr,
        &upgrade_request(
            "/ws",
            &format!("Authorization: {}\r\n", basic("alice", "alice-pw")),
        ),
    )
    .await;
    assert_eq!(status, 101, "legit upgrade during the flood: {head}");

    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.abort();
    }
    let t = throttled.load(Ordering::Relaxed);
    assert!(t > 0, "the flooder was never throttled");
    assert_eq!(
        retry_after.load(Ordering::Relaxed),
        t,
        "every 429 carries Retry-After"
    );
}

/// The per-client rate covers every request that reaches an authenticator, not only
/// upgrades: plain requests with credentials spend tokens too.
#[tokio::test]
async fn handshake_rate_applies_to_plain_requests_on_auth_routes() {
    let echo = echo_upstream().await;
    let files = Files::new();
    files.write(
        "users.htpasswd",
        &format!("{}\n", htpasswd_line("alice", "alice-pw")),
    );
    let gate = start_gate(
        files,
        &basic_gate_yaml(
            echo.addr,
            "  handshake_rate_per_ip: 1\n  handshake_burst_per_ip: 2\n",
        ),
    )
    .await;
    let req = get_with(&basic("alice", "wrong"));
    for _ in 0..2 {
        let (status, head, _) = http_request(gate.addr(), &req).await;
        assert_eq!(status, 401, "{head}");
    }
    let (status, head, _) = http_request(gate.addr(), &req).await;
    assert_eq!(status, 429, "third request past the burst: {head}");
    let retry: u64 = head_header(&head, "retry-after")
        .expect("429 without Retry-After")
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
}
