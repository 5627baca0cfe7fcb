//! ACME (`tls.acme`) against a real ACME server: Debian's `pebble` (Let's Encrypt's test
//! CA) with `pebble-challtestsrv` as its DNS, so every name resolves to 127.0.0.1 and
//! pebble's validation authority dials the gateway's own ports.
//!
//! Each test starts its own pebble on free loopback ports. pebble's HTTPS API uses a
//! certificate from a CA made here (trusted through `acme.ca`); the certificates pebble
//! issues chain to a root fetched from its management interface (`/roots/0`).
mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use common::*;
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const DOMAIN: &str = "gate.wsgate.test";
const BIN: &str = env!("CARGO_BIN_EXE_wsgate");

type Wss = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A child process killed on drop, so a failing test leaves nothing running.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The gateway's logs in the test's output (shown when a test fails).
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("wsgate=info")
        .with_test_writer()
        .try_init();
}

/// Whether pebble is installed (tests/run.sh installs it; a bare `cargo test` skips).
fn has_pebble(test: &str) -> bool {
    tools_available(
        test,
        &[
            Tool::Program("pebble"),
            Tool::Program("pebble-challtestsrv"),
        ],
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running pebble and its DNS server.
struct Pebble {
    /// The ACME directory URL.
    directory: String,
    /// PEM file of the CA that signed pebble's HTTPS certificate (for `acme.ca`).
    api_ca: PathBuf,
    /// The root of the certificates pebble issues.
    root: CertificateDer<'static>,
    log: PathBuf,
    pebble: Option<Child>,
    _dns: Child,
}

impl Pebble {
    /// Starts pebble whose validation authority dials `http_port` (HTTP-01) and `tls_port`
    /// (TLS-ALPN-01) on 127.0.0.1; `validity` = issued certificates' lifetime in seconds.
    async fn start(files: &Files, http_port: u16, tls_port: u16, validity: Option<u64>) -> Self {
        let dir = files.path("pebble");
        std::fs::create_dir_all(&dir).unwrap();
        // pebble's own HTTPS certificate, from a CA made here.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pebble API test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let api_ca = dir.join("api-ca.pem");
        std::fs::write(&api_ca, ca_cert.pem()).unwrap();
        std::fs::write(dir.join("api.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.join("api.key"), leaf_key.serialize_pem()).unwrap();

        let (api, mgmt, dns, dns_mgmt) = (free_port(), free_port(), free_port(), free_port());
        let mut config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{api}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": dir.join("api.pem"),
            "privateKey": dir.join("api.key"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }});
        if let Some(v) = validity {
            config["pebble"]["certificateValidityPeriod"] = v.into();
        }
        std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
        let log = dir.join("pebble.log");
        let dns_log = std::fs::File::create(dir.join("dns.log")).unwrap();
        let dns_child = Child(
            Command::new("pebble-challtestsrv")
                .args(["-dns01", &format!("127.0.0.1:{dns}")])
                .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .stdout(dns_log.try_clone().unwrap())
                .stderr(dns_log)
                .spawn()
                .expect("pebble-challtestsrv (Debian package pebble) must be installed"),
        );
        let out = std::fs::File::create(&log).unwrap();
        let pebble = Child(
            Command::new("pebble")
                .arg("-config")
                .arg(dir.join("pebble.json"))
                .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
                // No random 0-15 s sleeps before validations; every order validates afresh.
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_AUTHZREUSE", "0")
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .stdin(Stdio::null())
                .spawn()
                .expect("pebble (Debian package pebble) must be installed"),
        );
        let api_ca_der = CertificateDer::from_pem_file(&api_ca).unwrap();
        let mgmt_addr: SocketAddr = format!("127.0.0.1:{mgmt}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        let root_pem = loop {
            if let Some(pem) = https_get(mgmt_addr, "/roots/0", &api_ca_der).await {
                break pem;
            }
            assert!(
                Instant::now() < deadline,
                "pebble did not start:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let root = CertificateDer::from_pem_slice(root_pem.as_bytes()).unwrap();
        Pebble {
            directory: format!("https://127.0.0.1:{api}/dir"),
            api_ca,
            root,
            log,
            pebble: Some(pebble),
            _dns: dns_child,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(&mut self) {
        self.pebble.take();
    }
}

fn tls_client(root: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// `GET path` over HTTPS trusting `ca`; the body of a 200, else `None`.
async fn https_get(addr: SocketAddr, path: &str, ca: &CertificateDer<'static>) -> Option<String> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let connector = tokio_rustls::TlsConnector::from(tls_client(ca));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// Opens `wss://DOMAIN:port/ws` over a connection to 127.0.0.1 (SNI = DOMAIN); returns the
/// socket and the serial number of the certificate the gateway presented.
async fn wss(port: u16, root: &CertificateDer<'static>) -> Result<(Wss, Vec<u8>), String> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let (ws, _) = tokio_tungstenite::client_async_tls_with_config(
        format!("wss://{DOMAIN}:{port}/ws"),
        tcp,
        None,
        Some(tokio_tungstenite::Connector::Rustls(tls_client(root))),
    )
    .await
    .map_err(|e| e.to_string())?;
    let serial = match ws.get_ref() {
        MaybeTlsStream::Rustls(s) => {
            let der = &s.get_ref().1.peer_certificates().unwrap()[0];
            let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
            cert.raw_serial().to_vec()
        }
        _ => panic!("not TLS"),
    };
    Ok((ws, serial))
}

async fn echo(ws: &mut Wss, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("no echo within 5 s")
        .unwrap()
        .unwrap();
    assert_eq!(got, Message::text(text));
}

/// Polls until `wsgate_acme_orders_total{result="ok"}` reaches `n` (or fails with logs).
async fn wait_orders(gate: &Gate, pebble: &Pebble, n: f64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let text = gate.metrics().await;
        let ok = try_metric_value(&text, "wsgate_acme_orders_total{result=\"ok\"}").unwrap_or(0.0);
        if ok >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} ACME orders not done in {within:?}; metrics:\n{}\npebble log:\n{}",
            text.lines()
                .filter(|l| l.contains("acme"))
                .collect::<Vec<_>>()
                .join("\n"),
            pebble.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn gate_yaml(
    files: &Files,
    pebble: &Pebble,
    tls_port: u16,
    http_port: u16,
    challenge: &str,
    upstream: SocketAddr,
) -> String {
    format!(
        "listeners:\n  - bind: \"127.0.0.1:{tls_port}\"\n    tls:\n      acme:\n        \
         domains: [{DOMAIN}]\n        email: ops@wsgate.test\n        directory: \"{}\"\n        \
         cache: {}\n        ca: {}\n        challenge: {challenge}\n  \
         - bind: \"127.0.0.1:{http_port}\"\n\
         admin:\n  bind: \"127.0.0.1:0\"\n\
         routes:\n  - path: /ws\n    upstream: ws://{upstream}\n",
        pebble.directory,
        files.path("acme-cache").display(),
        pebble.api_ca.display(),
    )
}

fn leaf_not_after(der: &CertificateDer<'_>) -> i64 {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    cert.validity().not_after.timestamp()
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn tls_alpn_01_obtains_a_certificate_and_serves_wss() {
    if !has_pebble("tls_alpn_01_obtains_a_certificate_and_serves_wss") {
        return;
    }
    logs();
    let files = Files::new();
    let echo_up = echo_upstream().await;
    let (tls_port, http_port) = (free_port(), free_port());
    let pebble = Pebble::start(&files, http_port, tls_port, None).await;
    let yaml = gate_yaml(
        &files,
        &pebble,
        tls_port,
        http_port,
        "tls-alpn-01",
        echo_up.addr,
    );
    let cache = files.path("acme-cache");
    let gate = start_gate(files, &yaml).await;
    wait_orders(&gate, &pebble, 1.0, Duration::from_secs(30)).await;
    assert_eq!(
        gate.metric("wsgate_acme_orders_total{result=\"error\"}")
            .await,
        0.0
    );
    // pebble logs HTTP-01 attempts but not TLS-ALPN-01 ones: validated, and not over HTTP.
    let log = pebble.log();
    assert!(
        log.contains("set VALID by completed challenge") && !log.contains("validate w/ HTTP"),
        "no tls-alpn-01 validation:\n{log}"
    );

    let (mut ws, serial) = wss(tls_port, &pebble.root).await.unwrap();
    echo(&mut ws, "over an ACME certificate").await;

    // A reload (SIGHUP) keeps the certificate and orders nothing new.
    let config =
        wsgate::config::parse_str(&yaml, Path::new("test.yaml"), &cache, &|_| None).unwrap();
    gate.reloader.reload(config).unwrap();
    let (_, serial_after_reload) = wss(tls_port, &pebble.root).await.unwrap();
    assert_eq!(serial, serial_after_reload);
    assert_eq!(
        gate.metric("wsgate_acme_orders_total{result=\"ok\"}").await,
        1.0
    );

    // The expiry metric covers the ACME certificate.
    let leaf = match ws.get_ref() {
        MaybeTlsStream::Rustls(s) => s.get_ref().1.peer_certificates().unwrap()[0].clone(),
        _ => unreachable!(),
    };
    let text = gate.metrics().await;
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("wsgate_tls_certificate_expiry_timestamp_seconds{")
                && l.contains(&format!("listener=\"127.0.0.1:{tls_port}\""))
        })
        .unwrap_or_else(|| panic!("no expiry series for the ACME listener:\n{text}"));
    let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(value as i64, leaf_not_after(&leaf));

    // Account key and certificate are cached, readable by the owner only.
    assert_eq!(mode(&cache), 0o700);
    let names: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    for f in &names {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
}

#[tokio::test]
async fn http_01_is_answered_on_the_plain_listener_beside_websockets() {
    if !has_pebble("http_01_is_answered_on_the_plain_listener_beside_websockets") {
        return;
    }
    logs();
    let files = Files::new();
    let echo_up = echo_upstream().await;
    let (tls_port, http_port) = (free_port(), free_port());
    let pebble = Pebble::start(&files, http_port, tls_port, None).await;
    let yaml = gate_yaml(
        &files,
        &pebble,
        tls_port,
        http_port,
        "http-01",
        echo_up.addr,
    );
    let gate = start_gate(files, &yaml).await;
    wait_orders(&gate, &pebble, 1.0, Duration::from_secs(30)).await;
    let validation =
        format!("validate w/ HTTP: http://{DOMAIN}:{http_port}/.well-known/acme-challenge/");
    assert!(
        pebble.log().contains(&validation),
        "pebble validated no http-01 challenge on the plain listener:\n{}",
        pebble.log()
    );

    let (mut ws, _) = wss(tls_port, &pebble.root).await.unwrap();
    echo(&mut ws, "wss after http-01").await;
    // The plain listener still carries WebSockets, and a token of no order in flight goes
    // on to the routes like any path (no route here: 404).
    let (mut plain, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{http_port}/ws"))
        .await
        .unwrap();
    plain.send(Message::text("plain")).await.unwrap();
    assert_eq!(plain.next().await.unwrap().unwrap(), Message::text("plain"));
    let (status, _, _) = http_request(
        format!("127.0.0.1:{http_port}").parse().unwrap(),
        "GET /.well-known/acme-challenge/unknown HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn renewal_swaps_the_certificate_while_open_tunnels_continue() {
    if !has_pebble("renewal_swaps_the_certificate_while_open_tunnels_continue") {
        return;
    }
    logs();
    let files = Files::new();
    let echo_up = echo_upstream().await;
    let (tls_port, http_port) = (free_port(), free_port());
    // 6 s certificates: renewal is due at two thirds of that, 4 s after issuance.
    let pebble = Pebble::start(&files, http_port, tls_port, Some(6)).await;
    let yaml = gate_yaml(
        &files,
        &pebble,
        tls_port,
        http_port,
        "tls-alpn-01",
        echo_up.addr,
    );
    let gate = start_gate(files, &yaml).await;
    wait_orders(&gate, &pebble, 1.0, Duration::from_secs(30)).await;
    let (mut before, first_serial) = wss(tls_port, &pebble.root).await.unwrap();
    echo(&mut before, "before the renewal").await;

    wait_orders(&gate, &pebble, 2.0, Duration::from_secs(30)).await;
    let (mut after, second_serial) = wss(tls_port, &pebble.root).await.unwrap();
    assert_ne!(
        first_serial, second_serial,
        "new handshakes get the renewed certificate"
    );
    // The tunnel opened on the old certificate carries on.
    echo(&mut before, "after the renewal").await;
    echo(&mut after, "on the new certificate").await;
    assert_eq!(
        gate.metric("wsgate_acme_orders_total{result=\"error\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn restart_with_a_valid_cached_certificate_needs_no_ca() {
    if !has_pebble("restart_with_a_valid_cached_certificate_needs_no_ca") {
        return;
    }
    logs();
    let files = Files::new();
    let echo_up = echo_upstream().await;
    let (tls_port, http_port) = (free_port(), free_port());
    let mut pebble = Pebble::start(&files, http_port, tls_port, None).await;
    let yaml = gate_yaml(
        &files,
        &pebble,
        tls_port,
        http_port,
        "tls-alpn-01",
        echo_up.addr,
    );
    let config_path = files.write("gate.yaml", &yaml);
    let mut gate = start_gate(files, &yaml).await;
    wait_orders(&gate, &pebble, 1.0, Duration::from_secs(30)).await;
    let (_, serial) = wss(tls_port, &pebble.root).await.unwrap();
    gate.shutdown();
    (&mut gate.task).await.unwrap();

    // The CA is gone: a restart must serve from the cache, at once.
    pebble.stop();
    let admin = free_port();
    let yaml2 = yaml.replace("127.0.0.1:0", &format!("127.0.0.1:{admin}"));
    std::fs::write(&config_path, yaml2).unwrap();
    let log = gate.files.path("gate.log");
    let out = std::fs::File::create(&log).unwrap();
    let _proc = Child(
        Command::new(BIN)
            .args(["--config", config_path.to_str().unwrap()])
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut ws, cached_serial) = loop {
        match wss(tls_port, &pebble.root).await {
            Ok(x) => break x,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "restarted gateway serves no certificate: {e}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(serial, cached_serial);
    echo(&mut ws, "from the cache").await;
    let admin_addr: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let (_, _, metrics) = http_request(
        admin_addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        metric_value(&metrics, "wsgate_acme_orders_total{result=\"ok\"}"),
        0.0
    );
    assert_eq!(
        metric_value(&metrics, "wsgate_acme_orders_total{result=\"error\"}"),
        0.0
    );
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        log_text.contains("using the cached certificate"),
        "{log_text}"
    );
}

fn check(files: &Files, yaml: &str) -> (i32, String) {
    let path = files.write("check.yaml", yaml);
    let out = Command::new(BIN)
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn check_validates_the_acme_block_without_contacting_the_ca() {
    let files = Files::new();
    files.write("not-a-folder", "x");
    files.write("c.crt", "x");
    // Nothing listens on port 9 of loopback: `check` passes because it never dials it.
    let good = "listeners:\n  - bind: \"127.0.0.1:0\"\n    tls:\n      acme:\n        \
                domains: [example.com, www.example.com]\n        \
                directory: \"https://127.0.0.1:9/dir\"\n        cache: acme\n\
                routes:\n  - {path: /, upstream: \"ws://127.0.0.1:1\"}\n";
    let (code, out) = check(&files, good);
    assert_eq!(code, 0, "{out}");
    assert!(out.lines().any(|l| l.trim() == "ok"), "{out}");
    assert!(
        !files.path("acme").exists(),
        "check must not create the cache folder"
    );

    let bad = "listeners:\n  - bind: \"127.0.0.1:0\"\n    tls:\n      cert: c.crt\n      acme:\n        \
               domains: [\"*.example.com\", localhost, a.example.com, A.example.com, \"10.0.0.1\"]\n        \
               email: nobody\n        directory: \"http://127.0.0.1:9/dir\"\n        \
               cache: not-a-folder\n        challenge: dns-01\n  \
               - bind: \"127.0.0.1:1\"\n    tls:\n      acme: {domains: [], cache: x}\n  \
               - bind: \"127.0.0.1:2\"\n    tls:\n      acme: {domains: [b.example.com], cache: x, challenge: http-01}\n  \
               - bind: \"127.0.0.1:3\"\n    tls: {}\n\
               routes:\n  - {path: /, upstream: \"ws://127.0.0.1:1\"}\n";
    let (code, out) = check(&files, bad);
    assert_eq!(code, 1, "{out}");
    for (path, words) in [
        ("listeners[0].tls.acme.domains[0]:", "dns-01"),
        ("listeners[0].tls.acme.domains[1]:", "single label"),
        ("listeners[0].tls.acme.domains[4]:", "IP address"),
        ("listeners[0].tls.acme.email:", "e-mail"),
        ("listeners[0].tls.acme.directory:", "https://"),
        ("listeners[0].tls.acme.challenge:", "tls-alpn-01"),
        ("listeners[0].tls.cert:", "cannot be combined with `acme`"),
        ("listeners[1].tls.acme.domains:", "at least one"),
        ("listeners[2].tls.acme.challenge:", "plain listener"),
        ("listeners[3].tls.cert:", "required"),
        ("listeners[3].tls.key:", "required"),
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(path) && l.contains(words)),
            "no `{path} ...{words}...` in:\n{out}"
        );
    }

    // Values right, but the duplicate name and the cache folder under a file are caught.
    let bad2 = "listeners:\n  - bind: \"127.0.0.1:0\"\n    tls:\n      acme:\n        \
                domains: [a.example.com, A.example.com]\n        cache: not-a-folder/acme\n\
                routes:\n  - {path: /, upstream: \"ws://127.0.0.1:1\"}\n";
    let (code, out) = check(&files, bad2);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("listeners[0].tls.acme.domains[1]: \"A.example.com\" is listed twice"),
        "{out}"
    );
    let bad3 = "listeners:\n  - bind: \"127.0.0.1:0\"\n    tls:\n      acme:\n        \
                domains: [a.example.com]\n        cache: not-a-folder/acme\n\
                routes:\n  - {path: /, upstream: \"ws://127.0.0.1:1\"}\n";
    let (code, out) = check(&files, bad3);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("listeners[0].tls.acme.cache:") && l.contains("not a folder")),
        "{out}"
    );
}
