//! Shared test fixtures: a real gateway on 127.0.0.1:0, real upstreams, certificates,
//! credentials. Every test talks over real sockets.
#![allow(dead_code, clippy::result_large_err)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

pub const JWT_SECRET: &str = "test-secret-0123456789abcdef0123456789";

/// What the upstream saw of one upgrade request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub uri: String,
    pub headers: HashMap<String, Vec<String>>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .and_then(|v| v.first())
            .map(String::as_str)
    }
    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default()
    }
}

/// A real WebSocket echo server (tokio-tungstenite) that records each handshake.
pub struct EchoUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub task: JoinHandle<()>,
}

impl EchoUpstream {
    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream saw no request")
    }
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// Echo server: picks the first offered subprotocol, echoes every data message,
/// answers plain HTTP GETs with `200 plain:<path?query>` and `X-Seen-Auth-User`.
pub async fn echo_upstream() -> EchoUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = seen2.clone();
            tokio::spawn(async move {
                let mut peek = [0u8; 2048];
                let n = match stream.peek(&mut peek).await {
                    Ok(n) => n,
                    Err(_) => return,
                };
                let head = String::from_utf8_lossy(&peek[..n]).to_ascii_lowercase();
                if !head.contains("upgrade: websocket") {
                    plain_http(stream, seen).await;
                    return;
                }
                let cb = |req: &Request, mut resp: Response| {
                    let mut headers: HashMap<String, Vec<String>> = HashMap::new();
                    for (k, v) in req.headers() {
                        headers
                            .entry(k.as_str().to_string())
                            .or_default()
                            .push(v.to_str().unwrap_or("").to_string());
                    }
                    if let Some(p) = req.headers().get("sec-websocket-protocol") {
                        let first = p
                            .to_str()
                            .unwrap()
                            .split(',')
                            .next()
                            .unwrap()
                            .trim()
                            .to_string();
                        resp.headers_mut()
                            .insert("sec-websocket-protocol", first.parse().unwrap());
                    }
                    resp.headers_mut()
                        .insert("x-upstream", "echo".parse().unwrap());
                    seen.lock().unwrap().push(Seen {
                        uri: req.uri().to_string(),
                        headers,
                    });
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, cb).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg.clone()).await.is_err() {
                        return;
                    }
                    if msg.is_close() {
                        let _ = ws.close(None).await;
                        return;
                    }
                }
            });
        }
    });
    EchoUpstream { addr, seen, task }
}

async fn plain_http(mut stream: TcpStream, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("").to_string();
    let uri = request_line.split(' ').nth(1).unwrap_or("").to_string();
    let mut headers: HashMap<String, Vec<String>> = HashMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            headers
                .entry(k.trim().to_ascii_lowercase())
                .or_default()
                .push(v.trim().to_string());
        }
    }
    let user = headers
        .get("x-auth-user")
        .and_then(|v| v.first().cloned())
        .unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        uri: uri.clone(),
        headers,
    });
    let body = format!("plain:{uri}");
    let resp = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-seen-auth-user: {user}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes()).await;
}

/// An upstream that answers every connection with `response` (raw bytes), then waits.
pub async fn raw_upstream(response: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(response).await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    addr
}

/// An upstream that runs `serve` on every accepted connection.
pub async fn spawn_upstream<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(s));
        }
    });
    addr
}

/// An address nobody listens on.
pub async fn dead_addr() -> SocketAddr {
    // Bound but never listening: connects are refused, and the port stays ours so a listener
    // of a test running in parallel cannot take it over (a dropped listener's port could be
    // handed out again, turning "refused" into "accepted, never answered" → 504).
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let a = s.local_addr().unwrap();
    std::mem::forget(s);
    a
}

/// A temp dir holding test files (certs, htpasswd, config).
pub struct Files {
    pub dir: tempfile::TempDir,
}

impl Files {
    pub fn new() -> Self {
        Files {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, content).unwrap();
        p
    }
    /// Writes `cert.pem`/`key.pem` for localhost + 127.0.0.1; returns the cert DER for trust.
    pub fn cert(&self, prefix: &str) -> rustls_pki_types::CertificateDer<'static> {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        self.write(&format!("{prefix}.crt"), &ck.cert.pem());
        self.write(&format!("{prefix}.key"), &ck.signing_key.serialize_pem());
        ck.cert.der().clone()
    }
}

/// An htpasswd line with a cheap bcrypt cost (tests only).
pub fn htpasswd_line(user: &str, password: &str) -> String {
    let h = bcrypt::hash_with_result(password, 4)
        .unwrap()
        .format_for_version(bcrypt::Version::TwoY);
    format!("{user}:{h}")
}

/// A running gateway.
pub struct Gate {
    pub addrs: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub reloader: wsgate::Reloader,
    pub stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<()>,
    pub files: Files,
}

impl Gate {
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr(), path)
    }
    /// Starts the drain.
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
    /// GET on the admin listener; returns (status, body).
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let (status, _, body) = http_request(
            self.admin.expect("no admin listener"),
            &format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"),
        )
        .await;
        (status, body)
    }
    pub async fn metrics(&self) -> String {
        self.admin_get("/metrics").await.1
    }
    /// The value of one sample line (`name{labels}`); panics when the series is absent, so a
    /// misspelt metric or label fails the test instead of reading as 0.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }
    /// Whether one sample line (`name{labels}`) is exported at all.
    pub async fn has_metric(&self, series: &str) -> bool {
        try_metric_value(&self.metrics().await, series).is_some()
    }
}

/// Finds `series` (e.g. `wsgate_handshakes_total{outcome="upgraded",route="/ws"}`); panics
/// when it is absent (a missing series must never read as 0).
pub fn metric_value(text: &str, series: &str) -> f64 {
    try_metric_value(text, series).unwrap_or_else(|| {
        let name = series.split('{').next().unwrap_or(series);
        let similar: Vec<&str> = text.lines().filter(|l| l.starts_with(name)).collect();
        panic!(
            "series {series} not exported; samples of {name}:\n{}",
            similar.join("\n")
        )
    })
}

/// The value of `series`, or `None` when no sample line has exactly that name and labels.
pub fn try_metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        // The series must end where the value starts: `x_total` must not match `x_total_sum`.
        let rest = l.strip_prefix(series)?;
        rest.starts_with(' ').then(|| rest.trim().parse().ok())?
    })
}

/// Polls until `metric(series) == want` or 5 s pass; returns the last value.
pub async fn wait_metric(gate: &Gate, series: &str, want: f64) -> f64 {
    let mut v = 0.0;
    for _ in 0..100 {
        // Not exported yet (a label set appears at its first event): NaN, keep polling.
        v = try_metric_value(&gate.metrics().await, series).unwrap_or(f64::NAN);
        if v == want {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    v
}

/// Parses `yaml` (with `{dir}` replaced by the temp dir) and starts a gateway.
pub async fn start_gate(files: Files, yaml: &str) -> Gate {
    let yaml = yaml.replace("{dir}", &files.dir.path().display().to_string());
    let env = |name: &str| match name {
        "WSGATE_JWT_SECRET" => Some(JWT_SECRET.to_string()),
        _ => std::env::var(name).ok(),
    };
    let config = wsgate::config::parse_str(&yaml, Path::new("test.yaml"), files.dir.path(), &env)
        .unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
    let gateway = wsgate::Gateway::bind(config)
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addrs = gateway.listener_addrs();
    let admin = gateway.admin_addr();
    let reloader = gateway.reloader();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(gateway.run(async move {
        let _ = rx.await;
    }));
    Gate {
        addrs,
        admin,
        reloader,
        stop: Some(tx),
        task,
        files,
    }
}

/// Sends raw request text, reads the response until close (or 5 s); (status, head, body).
pub async fn http_request(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    read_response(&mut s).await
}

/// Reads one response head (and the body until close or Content-Length).
pub async fn read_response(s: &mut TcpStream) -> (u16, String, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = tokio::time::timeout_at(deadline, s.read(&mut chunk)).await;
        match r {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..pos]).to_string();
            let lower = head.to_ascii_lowercase();
            if lower.starts_with("http/1.1 101") {
                break;
            }
            if let Some(len) = lower
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                && buf.len() >= pos + 4 + len
            {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// A raw upgrade request for `path` with extra header lines.
pub fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: gate.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

/// Case-insensitive header lookup in a raw response head.
pub fn head_header(head: &str, name: &str) -> Option<String> {
    let name = name.to_ascii_lowercase();
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim().to_ascii_lowercase() == name).then(|| v.trim().to_string())
    })
}

/// Basic credentials header value.
pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Mints an HS256 JWT with `claims` merged over {sub, exp: now+600}.
pub fn jwt(claims: serde_json::Value) -> String {
    jwt_with(claims, JWT_SECRET, jsonwebtoken::Algorithm::HS256)
}

pub fn jwt_with(claims: serde_json::Value, secret: &str, alg: jsonwebtoken::Algorithm) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut base = serde_json::json!({"sub": "alice", "exp": now + 600});
    if let (Some(b), Some(c)) = (base.as_object_mut(), claims.as_object()) {
        for (k, v) in c {
            b.insert(k.clone(), v.clone());
        }
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        &base,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Connects a WebSocket client with extra headers; returns the stream and response.
pub async fn ws_connect(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    tokio_tungstenite::connect_async(req).await
}

/// Sends a text message and expects the same text back.
pub async fn echo_roundtrip<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, text: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(text)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("echo timed out")
        .expect("stream ended")
        .expect("ws error");
    assert_eq!(got, Message::text(text));
}

/// Status of a refused WebSocket handshake (tungstenite's Http error), or panics.
pub fn refused_status(err: tokio_tungstenite::tungstenite::Error) -> u16 {
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => resp.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
}

/// A TLS WebSocket echo server presenting `chain_pem` (leaf first) with `key_pem`.
pub async fn tls_echo_upstream_pem(chain_pem: &str, key_pem: &str) -> SocketAddr {
    use rustls_pki_types::pem::PemObject;
    let certs: Vec<rustls_pki_types::CertificateDer<'static>> =
        rustls_pki_types::CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Something outside Cargo a test runs: a program on `PATH` or an installed file.
pub enum Tool<'a> {
    /// A program looked up on `PATH` (`node`, `promtool`).
    Program(&'a str),
    /// A file installed by `tests/interop/install.sh` (node_modules, the Python venv, chromium).
    File(PathBuf),
}

/// Whether every tool `test` needs is installed. When one is missing, `tests/run.sh` (which
/// installs them and sets `WSGATE_REQUIRE_TOOLS=1`) fails the test; a bare `cargo test` skips it
/// with a line on the terminal naming what is missing, so a fresh machine without Node or
/// Chromium gets a clear message instead of a cryptic spawn error.
pub fn tools_available(test: &str, tools: &[Tool<'_>]) -> bool {
    use std::io::Write as _;
    let missing: Vec<String> = tools
        .iter()
        .filter_map(|t| match t {
            Tool::Program(name) => (!on_path(name)).then(|| format!("`{name}` on PATH")),
            Tool::File(path) => (!path.exists()).then(|| path.display().to_string()),
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let what = missing.join(", ");
    if std::env::var_os("WSGATE_REQUIRE_TOOLS").is_some_and(|v| v == "1") {
        panic!("{test}: missing {what}: run tests/interop/install.sh (tests/run.sh does)");
    }
    // Straight to the terminal: the test harness captures print!/eprint! of passing tests.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: missing {what} (tests/run.sh installs it and runs every test)"
    );
    false
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// The interop suite's install directory (node_modules, the Python venv, the scripts).
pub fn interop_tools_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Node with the interop suite's npm packages.
pub fn node_tools() -> Vec<Tool<'static>> {
    vec![
        Tool::Program("node"),
        Tool::File(interop_tools_dir().join("node_modules/ws")),
    ]
}

/// The interop suite's Python venv (websockets).
pub fn python_tools() -> Vec<Tool<'static>> {
    vec![Tool::File(interop_tools_dir().join(".venv/bin/python"))]
}
