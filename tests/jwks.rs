//! JWT keys from a JWKS served over real HTTP(S) by a small server in the test: selection by
//! `kid`, rotation without a reload, the unknown-`kid` rate limit, start-up without keys,
//! `ca`, OpenID discovery, reloads; and `claims_to_headers`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use common::*;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// A signing key with its public JWK.
#[derive(Clone)]
struct SigningKey {
    kid: String,
    alg: Algorithm,
    enc: EncodingKey,
    jwk: serde_json::Value,
}

impl SigningKey {
    fn new(kid: &str, alg: Algorithm) -> Self {
        let enc = match alg {
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 | Algorithm::PS256 => {
                EncodingKey::from_rsa_pem(rsa_private_pem().as_bytes()).unwrap()
            }
            Algorithm::ES256 => EncodingKey::from_ec_pem(
                rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                    .unwrap()
                    .serialize_pem()
                    .as_bytes(),
            )
            .unwrap(),
            Algorithm::ES384 => EncodingKey::from_ec_pem(
                rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)
                    .unwrap()
                    .serialize_pem()
                    .as_bytes(),
            )
            .unwrap(),
            Algorithm::EdDSA => {
                // jsonwebtoken's JWK export wants a v1 PKCS#8 key; rcgen writes v2: build the
                // OKP JWK from the raw public key instead.
                use base64::Engine as _;
                let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
                let x =
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(kp.public_key_raw());
                let enc = EncodingKey::from_ed_pem(kp.serialize_pem().as_bytes()).unwrap();
                let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA",
                                 "kid": kid, "use": "sig"});
                return SigningKey {
                    kid: kid.into(),
                    alg,
                    enc,
                    jwk,
                };
            }
            other => panic!("no test key for {other:?}"),
        };
        let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&enc, alg).unwrap()).unwrap();
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        SigningKey {
            kid: kid.into(),
            alg,
            enc,
            jwk,
        }
    }

    /// A token for `sub` alice (plus `claims`), with this key's `kid` unless `kid` says another.
    fn token_with_kid(&self, kid: Option<&str>, claims: serde_json::Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = kid.map(str::to_owned);
        let mut body = json!({"sub": "alice", "exp": now_secs() + 600});
        for (k, v) in claims.as_object().unwrap() {
            body[k] = v.clone();
        }
        jsonwebtoken::encode(&header, &body, &self.enc).unwrap()
    }

    fn token(&self) -> String {
        self.token_with_kid(Some(&self.kid.clone()), json!({}))
    }
}

/// A fresh 2048-bit RSA key (PKCS#8 PEM) from the openssl CLI: ring (rcgen's backend) cannot
/// generate RSA keys.
fn rsa_private_pem() -> String {
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl genpkey failed");
    String::from_utf8(out.stdout).unwrap()
}

fn jwks_of(keys: &[&SigningKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

/// A tiny HTTP/1.1 server: `GET /jwks` answers the current JWKS (or 503 while `down`),
/// `GET /.well-known/openid-configuration` a discovery document; each request is counted.
#[derive(Clone)]
struct KeyServer {
    addr: std::net::SocketAddr,
    jwks: Arc<Mutex<String>>,
    down: Arc<AtomicBool>,
    jwks_hits: Arc<AtomicUsize>,
    tls: bool,
}

impl KeyServer {
    async fn start(jwks: String) -> Self {
        Self::start_with(jwks, None).await
    }

    async fn start_with(jwks: String, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = KeyServer {
            addr: listener.local_addr().unwrap(),
            jwks: Arc::new(Mutex::new(jwks)),
            down: Arc::new(AtomicBool::new(false)),
            jwks_hits: Arc::new(AtomicUsize::new(0)),
            tls: tls.is_some(),
        };
        let s = server.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let s = s.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                s.serve(stream).await;
                            }
                        }
                        None => s.serve(tcp).await,
                    }
                });
            }
        });
        server
    }

    fn base(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.addr.port())
    }

    fn url(&self) -> String {
        format!("{}/jwks", self.base())
    }

    fn set(&self, jwks: String) {
        *self.jwks.lock().unwrap() = jwks;
    }

    fn hits(&self) -> usize {
        self.jwks_hits.load(Ordering::SeqCst)
    }

    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(&self, mut stream: S) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let head = String::from_utf8_lossy(&buf).to_string();
        let path = head.split(' ').nth(1).unwrap_or("").to_string();
        let (status, body) = match path.as_str() {
            "/jwks" => {
                self.jwks_hits.fetch_add(1, Ordering::SeqCst);
                if self.down.load(Ordering::SeqCst) {
                    ("503 Service Unavailable", "down".to_string())
                } else {
                    ("200 OK", self.jwks.lock().unwrap().clone())
                }
            }
            "/.well-known/openid-configuration" => (
                "200 OK",
                json!({"issuer": self.base(), "jwks_uri": self.url()}).to_string(),
            ),
            _ => ("404 Not Found", String::new()),
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(resp.as_bytes()).await;
        let _ = stream.shutdown().await;
    }
}

fn config(upstream: std::net::SocketAddr, auth: &str) -> String {
    format!(
        "listeners:\n  - bind: \"127.0.0.1:0\"\nadmin:\n  bind: \"127.0.0.1:0\"\nauth:\n{auth}routes:\n  - path: /ws\n    upstream: ws://{upstream}\n    auth: [idp]\n"
    )
}

fn jwks_auth(url: &str, algs: &str, extra: &str) -> String {
    format!("  idp:\n    type: jwt\n    algorithms: [{algs}]\n    jwks_url: \"{url}\"\n{extra}")
}

/// The status of an upgrade with `token` as a Bearer header.
async fn status_with(gate: &Gate, token: &str) -> u16 {
    let (status, _, _) = http_request(
        gate.addr(),
        &upgrade_request("/ws", &format!("Authorization: Bearer {token}\r\n")),
    )
    .await;
    status
}

/// Polls until an upgrade with `token` gets `want` or `within` passes; returns the last status.
async fn eventually(gate: &Gate, token: &str, want: u16, within: Duration) -> u16 {
    let deadline = Instant::now() + within;
    loop {
        let s = status_with(gate, token).await;
        if s == want || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn kid_selects_the_key_among_rsa_ec_and_ed_keys() {
    let rsa = SigningKey::new("r1", Algorithm::RS256);
    let ec = SigningKey::new("e1", Algorithm::ES256);
    let ed = SigningKey::new("d1", Algorithm::EdDSA);
    let ps = SigningKey::new("p1", Algorithm::PS256);
    let server = KeyServer::start(jwks_of(&[&rsa, &ec, &ed, &ps])).await;
    let up = echo_upstream().await;
    let gate = start_gate(
        Files::new(),
        &config(
            up.addr,
            &jwks_auth(&server.url(), "RS256, PS256, ES256, EdDSA", ""),
        ),
    )
    .await;
    for k in [&rsa, &ec, &ed, &ps] {
        assert_eq!(status_with(&gate, &k.token()).await, 101, "{}", k.kid);
    }
    assert_eq!(up.last().header("x-auth-user"), Some("alice"));
    // Signed by r1 but naming e1's kid: e1 is an EC key, it cannot verify RS256.
    let wrong = rsa.token_with_kid(Some("e1"), json!({}));
    assert_eq!(status_with(&gate, &wrong).await, 401);
    // Signed by another RSA key under r1's kid.
    let other = SigningKey::new("r1", Algorithm::RS256);
    assert_eq!(status_with(&gate, &other.token()).await, 401);
    // p1's JWK pins alg PS256: an RS256 token signed by the same key under p1 is refused.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("p1".into());
    let pinned = jsonwebtoken::encode(
        &header,
        &json!({"sub": "alice", "exp": now_secs() + 600}),
        &ps.enc,
    )
    .unwrap();
    assert_eq!(status_with(&gate, &pinned).await, 401);
    // No kid: every key of the token's type is tried.
    assert_eq!(
        status_with(&gate, &ec.token_with_kid(None, json!({}))).await,
        101
    );
    assert_eq!(
        gate.metric("wsgate_jwks_keys{authenticator=\"idp\"}").await,
        4.0
    );
    assert_eq!(
        gate.metric("wsgate_jwks_refreshes_total{authenticator=\"idp\",result=\"ok\"}")
            .await,
        1.0
    );
    assert_eq!(
        gate.metric("wsgate_auth_failures_total{reason=\"bad_signature\",route=\"/ws\"}")
            .await,
        3.0
    );
}

#[tokio::test]
async fn a_new_kid_is_fetched_on_demand_and_a_removed_key_is_refused() {
    let k1 = SigningKey::new("k1", Algorithm::ES256);
    let k2 = SigningKey::new("k2", Algorithm::ES256);
    let server = KeyServer::start(jwks_of(&[&k1])).await;
    let up = echo_upstream().await;
    let gate = start_gate(
        Files::new(),
        &config(
            up.addr,
            &jwks_auth(
                &server.url(),
                "ES256",
                "    jwks_refresh: 1h\n    jwks_min_interval: 1s\n",
            ),
        ),
    )
    .await;
    assert_eq!(status_with(&gate, &k1.token()).await, 101);
    assert_eq!(server.hits(), 1);
    // The provider rotates: k2 replaces k1.
    server.set(jwks_of(&[&k2]));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The first k2 token triggers the fetch and waits for it: admitted, no reload.
    assert_eq!(status_with(&gate, &k2.token()).await, 101);
    assert_eq!(server.hits(), 2);
    // k1 is gone from the set; within the interval it costs no fetch either.
    assert_eq!(status_with(&gate, &k1.token()).await, 401);
    assert_eq!(server.hits(), 2);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Past the interval it may fetch once more, and is still refused.
    assert_eq!(status_with(&gate, &k1.token()).await, 401);
    assert_eq!(server.hits(), 3);
    assert_eq!(status_with(&gate, &k2.token()).await, 101);
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn a_flood_of_random_kids_costs_one_fetch_per_interval() {
    let k = SigningKey::new("good", Algorithm::ES256);
    let server = KeyServer::start(jwks_of(&[&k])).await;
    let up = echo_upstream().await;
    let gate = start_gate(
        Files::new(),
        &config(
            up.addr,
            &jwks_auth(
                &server.url(),
                "ES256",
                "    jwks_refresh: 1h\n    jwks_min_interval: 3s\n",
            ),
        ),
    )
    .await;
    assert_eq!(server.hits(), 1);
    // Within the interval after the start-up fetch: refused at once, no fetch.
    let started = Instant::now();
    for i in 0..20 {
        let t = k.token_with_kid(Some(&format!("random-{i}")), json!({}));
        assert_eq!(status_with(&gate, &t).await, 401);
    }
    assert_eq!(server.hits(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refusals waited"
    );
    tokio::time::sleep(Duration::from_millis(3100)).await;
    // A flood at once: one fetch for all of them.
    let mut flood = Vec::new();
    for i in 0..50 {
        let t = k.token_with_kid(Some(&format!("flood-{i}")), json!({}));
        let addr = gate.addr();
        flood.push(tokio::spawn(async move {
            http_request(
                addr,
                &upgrade_request("/ws", &format!("Authorization: Bearer {t}\r\n")),
            )
            .await
            .0
        }));
    }
    for f in flood {
        assert_eq!(f.await.unwrap(), 401);
    }
    assert_eq!(server.hits(), 2);
    // A cached kid never fetches.
    for _ in 0..5 {
        assert_eq!(status_with(&gate, &k.token()).await, 101);
    }
    assert_eq!(server.hits(), 2);
    assert_eq!(
        gate.metric("wsgate_jwks_refreshes_total{authenticator=\"idp\",result=\"ok\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn the_gate_starts_without_keys_answers_401_and_admits_once_they_arrive() {
    let k = SigningKey::new("k", Algorithm::RS256);
    let server = KeyServer::start(jwks_of(&[&k])).await;
    server.down.store(true, Ordering::SeqCst);
    let up = echo_upstream().await;
    let gate = start_gate(
        Files::new(),
        &config(
            up.addr,
            &jwks_auth(&server.url(), "RS256", "    jwks_min_interval: 1s\n"),
        ),
    )
    .await;
    assert_eq!(status_with(&gate, &k.token()).await, 401);
    assert!(
        gate.metric("wsgate_jwks_refreshes_total{authenticator=\"idp\",result=\"error\"}")
            .await
            >= 1.0
    );
    assert_eq!(
        gate.metric("wsgate_jwks_keys{authenticator=\"idp\"}").await,
        0.0
    );
    server.down.store(false, Ordering::SeqCst);
    // The retry after a failure comes after jwks_min_interval (doubling), or sooner on demand.
    assert_eq!(
        eventually(&gate, &k.token(), 101, Duration::from_secs(5)).await,
        101
    );
    assert_eq!(
        gate.metric("wsgate_jwks_keys{authenticator=\"idp\"}").await,
        1.0
    );
}

#[tokio::test]
async fn jwks_required_at_start_refuses_to_start_without_keys() {
    let k = SigningKey::new("k", Algorithm::ES256);
    let server = KeyServer::start(jwks_of(&[&k])).await;
    server.down.store(true, Ordering::SeqCst);
    let up = echo_upstream().await;
    let files = Files::new();
    let yaml = config(
        up.addr,
        &jwks_auth(&server.url(), "ES256", "    jwks_required_at_start: true\n"),
    );
    let cfg = wsgate::config::parse_str(
        &yaml,
        std::path::Path::new("t.yaml"),
        files.dir.path(),
        &|_| None,
    )
    .unwrap();
    let err = match wsgate::Gateway::bind(cfg).await {
        Ok(_) => panic!("started without keys"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("auth.idp.jwks_url: cannot fetch the JWKS") && err.contains("503"),
        "{err}"
    );
}

#[tokio::test]
async fn https_jwks_with_a_ca_file() {
    let files = Files::new();
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    files.write("idp-ca.pem", &ck.cert.pem());
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![ck.cert.der().clone()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into()),
    )
    .unwrap();
    let k = SigningKey::new("k", Algorithm::ES384);
    let server = KeyServer::start_with(
        jwks_of(&[&k]),
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg))),
    )
    .await;
    let up = echo_upstream().await;
    let gate = start_gate(
        files,
        &config(
            up.addr,
            &jwks_auth(&server.url(), "ES384", "    ca: \"{dir}/idp-ca.pem\"\n"),
        ),
    )
    .await;
    assert_eq!(status_with(&gate, &k.token()).await, 101);
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn openid_discovery_finds_the_jwks() {
    let k = SigningKey::new("k", Algorithm::RS256);
    let server = KeyServer::start(jwks_of(&[&k])).await;
    let up = echo_upstream().await;
    let auth = format!(
        "  idp:\n    type: jwt\n    algorithms: [RS256]\n    issuer: \"{}\"\n    discovery: true\n",
        server.base()
    );
    let gate = start_gate(Files::new(), &config(up.addr, &auth)).await;
    let t = k.token_with_kid(Some("k"), json!({"iss": server.base()}));
    assert_eq!(status_with(&gate, &t).await, 101);
    // The issuer is still checked on the token.
    let t = k.token_with_kid(Some("k"), json!({"iss": "https://evil.example"}));
    assert_eq!(status_with(&gate, &t).await, 401);
}

#[tokio::test]
async fn a_reload_keeps_the_keys_and_stops_the_old_refresh_task() {
    let k = SigningKey::new("k", Algorithm::ES256);
    let server = KeyServer::start(jwks_of(&[&k])).await;
    let up = echo_upstream().await;
    let yaml = config(
        up.addr,
        &jwks_auth(&server.url(), "ES256", "    jwks_refresh: 1s\n"),
    );
    let gate = start_gate(Files::new(), &yaml).await;
    assert_eq!(status_with(&gate, &k.token()).await, 101);
    // The provider goes down, then the config is reloaded (twice): the keys stay.
    server.down.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        let cfg = wsgate::config::parse_str(
            &yaml,
            std::path::Path::new("t.yaml"),
            gate.files.dir.path(),
            &|_| None,
        )
        .unwrap();
        gate.reloader.reload(cfg).unwrap();
    }
    assert_eq!(status_with(&gate, &k.token()).await, 101);
    // One task refreshes, not three: about one fetch per second, retries included.
    let before = server.hits();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let fetched = server.hits() - before;
    assert!((2..=4).contains(&fetched), "{fetched} fetches in 3.5 s");
    assert_eq!(status_with(&gate, &k.token()).await, 101);
}

// ---- claims_to_headers ----

fn claims_config(upstream: std::net::SocketAddr, files: &Files) -> String {
    files.write("users", &htpasswd_line("bob", "pw"));
    format!(
        "listeners:\n  - bind: \"127.0.0.1:0\"\nadmin:\n  bind: \"127.0.0.1:0\"\nauth:\n  users:\n    type: basic\n    htpasswd: users\n  jwt:\n    type: jwt\n    algorithms: [HS256]\n    secret: \"${{WSGATE_JWT_SECRET}}\"\n    claims_to_headers:\n      role: X-Auth-Role\n      realm_access.roles: X-Auth-Roles\n      device_id: X-Auth-Device\nroutes:\n  - path: /ws\n    upstream: ws://{upstream}\n    auth: [users, jwt]\n"
    )
}

async fn upgrade(gate: &Gate, extra: &str) -> u16 {
    http_request(gate.addr(), &upgrade_request("/ws", extra))
        .await
        .0
}

#[tokio::test]
async fn claims_become_upstream_headers_and_client_copies_are_removed() {
    let files = Files::new();
    let up = echo_upstream().await;
    let yaml = claims_config(up.addr, &files);
    let gate = start_gate(files, &yaml).await;

    let t = jwt(json!({"role": "admin", "realm_access": {"roles": ["a", "b"]}, "device_id": 7}));
    let status = upgrade(
        &gate,
        &format!(
            "Authorization: Bearer {t}\r\nX-Auth-Role: root\r\nx-auth-role: root2\r\nX-Auth-Roles: spoof\r\n"
        ),
    )
    .await;
    assert_eq!(status, 101);
    let seen = up.last();
    assert_eq!(seen.all("x-auth-role"), vec!["admin".to_string()]);
    assert_eq!(seen.all("x-auth-roles"), vec!["a,b".to_string()]);
    assert_eq!(seen.all("x-auth-device"), vec!["7".to_string()]);

    // A token without the claims: no header, and the spoofed copies are gone.
    let t = jwt(json!({}));
    let status = upgrade(
        &gate,
        &format!("Authorization: Bearer {t}\r\nX-Auth-Role: root\r\nX-Auth-Device: 1\r\n"),
    )
    .await;
    assert_eq!(status, 101);
    let seen = up.last();
    assert!(seen.all("x-auth-role").is_empty(), "{seen:?}");
    assert!(seen.all("x-auth-device").is_empty(), "{seen:?}");

    // Admitted by Basic: the JWT's headers are still the gateway's, so the spoof is removed.
    let status = upgrade(
        &gate,
        &format!(
            "Authorization: {}\r\nX-Auth-Role: root\r\n",
            basic("bob", "pw")
        ),
    )
    .await;
    assert_eq!(status, 101);
    let seen = up.last();
    assert_eq!(seen.header("x-auth-user"), Some("bob"));
    assert!(seen.all("x-auth-role").is_empty(), "{seen:?}");
}

#[tokio::test]
async fn underscore_twins_of_claim_headers_are_removed_too() {
    let files = Files::new();
    let up = echo_upstream().await;
    let yaml = claims_config(up.addr, &files)
        .replace("listeners:", "underscores_in_headers: true\nlisteners:");
    let gate = start_gate(files, &yaml).await;
    let t = jwt(json!({"role": "user"}));
    let status = upgrade(
        &gate,
        &format!("Authorization: Bearer {t}\r\nX_Auth_Role: root\r\nX_Other: kept\r\n"),
    )
    .await;
    assert_eq!(status, 101);
    let seen = up.last();
    assert_eq!(seen.all("x-auth-role"), vec!["user".to_string()]);
    assert!(seen.all("x_auth_role").is_empty(), "{seen:?}");
    assert_eq!(seen.header("x_other"), Some("kept"));
}

#[tokio::test]
async fn a_claim_that_cannot_be_a_header_value_refuses_the_token() {
    let files = Files::new();
    let up = echo_upstream().await;
    let yaml = claims_config(up.addr, &files);
    let gate = start_gate(files, &yaml).await;
    for bad in [
        json!({"role": {"nested": true}}),
        json!({"role": "admin\r\nX-Evil: 1"}),
        json!({"realm_access": {"roles": ["a,b"]}}),
    ] {
        let t = jwt(bad.clone());
        let status = upgrade(&gate, &format!("Authorization: Bearer {t}\r\n")).await;
        assert_eq!(status, 401, "{bad}");
    }
    assert_eq!(up.count(), 0);
    assert_eq!(
        gate.metric("wsgate_auth_failures_total{reason=\"bad_claims\",route=\"/ws\"}")
            .await,
        3.0
    );
}

// ---- a real OpenID provider ----

/// `node tests/interop/oidc_provider.js PORT KID ALG`, running until dropped.
struct Provider {
    child: std::process::Child,
    port: u16,
}

impl Provider {
    async fn start(port: u16, kid: &str, alg: &str) -> Provider {
        use std::io::BufRead as _;
        let dir = interop_tools_dir();
        let mut child = std::process::Command::new("node")
            .current_dir(&dir)
            .arg(dir.join("oidc_provider.js"))
            .args([&port.to_string(), kid, alg])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("node");
        let stdout = child.stdout.take().unwrap();
        let line = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                std::io::BufReader::new(stdout)
                    .read_line(&mut line)
                    .unwrap();
                line
            }),
        )
        .await
        .expect("oidc-provider did not start within 30 s")
        .unwrap();
        let port = line
            .strip_prefix("READY ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("oidc-provider said {line:?}"));
        Provider { child, port }
    }

    fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A JWT access token from the client-credentials grant.
    async fn token(&self) -> String {
        let body = "grant_type=client_credentials&scope=ws&resource=urn%3Awsgate";
        let (status, _, answer) = http_request(
            ([127, 0, 0, 1], self.port).into(),
            &format!(
                "POST /token HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                self.port,
                basic("wsgate-test", "wsgate-test-secret-0123456789"),
                body.len()
            ),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
        v["access_token"].as_str().unwrap().to_owned()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

#[tokio::test]
async fn oidc_provider_tokens_keep_working_across_a_key_rotation_without_a_reload() {
    if !tools_available(
        "oidc_provider_tokens_keep_working_across_a_key_rotation_without_a_reload",
        &[
            Tool::Program("node"),
            Tool::File(interop_tools_dir().join("node_modules/oidc-provider")),
        ],
    ) {
        return;
    }
    let provider = Provider::start(0, "rsa-1", "RS256").await;
    let port = provider.port;
    let up = echo_upstream().await;
    // Discovery: the issuer's OpenID configuration names the JWKS.
    let auth = format!(
        "  idp:\n    type: jwt\n    algorithms: [RS256, ES256]\n    issuer: \"{}\"\n    audience: \"urn:wsgate\"\n    discovery: true\n    jwks_min_interval: 1s\n    claims_to_headers:\n      client_id: X-Auth-Client\n      scope: X-Auth-Scope\n",
        provider.issuer()
    );
    let gate = start_gate(Files::new(), &config(up.addr, &auth)).await;

    let old = provider.token().await;
    assert_eq!(kid_of(&old), "rsa-1");
    let bearer = format!("Bearer {old}");
    let (mut ws, _) = ws_connect(&gate.ws_url("/ws"), &[("Authorization", &bearer)])
        .await
        .expect("token from oidc-provider admitted");
    echo_roundtrip(&mut ws, "hello idp").await;
    let seen = up.last();
    assert_eq!(seen.header("x-auth-user"), Some("wsgate-test"));
    assert_eq!(seen.header("x-auth-client"), Some("wsgate-test"));
    assert_eq!(seen.header("x-auth-scope"), Some("ws"));

    // Rotation: the provider restarts with a new key (another kid and type); the old one is
    // gone from its JWKS.
    drop(provider);
    let provider = Provider::start(port, "ec-2", "ES256").await;
    let new = provider.token().await;
    assert_eq!(kid_of(&new), "ec-2");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let bearer = format!("Bearer {new}");
    let (mut ws2, _) = ws_connect(&gate.ws_url("/ws"), &[("Authorization", &bearer)])
        .await
        .expect("token signed by the new key admitted without a reload");
    echo_roundtrip(&mut ws2, "after rotation").await;
    // The token signed by the removed key is refused now.
    let bearer = format!("Bearer {old}");
    let Err(err) = ws_connect(&gate.ws_url("/ws"), &[("Authorization", &bearer)]).await else {
        panic!("a token signed by the removed key was admitted");
    };
    assert_eq!(refused_status(err), 401);
    // The connection opened with the old key is not cut by the rotation.
    echo_roundtrip(&mut ws, "still here").await;
}

// ---- the added cost of a JWKS key lookup ----

/// Times `check_request` for the same ES256/RS256 token with a static PEM key and with the key
/// picked from a JWKS by `kid`. Not a pass/fail test: run it in release, pinned to one core:
/// `taskset -c 1 cargo test --release --test jwks bench_jwks_lookup -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn bench_jwks_lookup() {
    use wsgate::auth::{AuthRequest, Authenticator, HashLimiter};
    use wsgate::config::{AuthConfig, JwksSource, JwtConfig, JwtKey};
    let files = Files::new();
    for (alg, name) in [(Algorithm::ES256, "ES256"), (Algorithm::RS256, "RS256")] {
        let k = SigningKey::new("k2", alg);
        // Three keys in the set, the token's in the middle.
        let others = [SigningKey::new("k1", alg), SigningKey::new("k3", alg)];
        let jwks = files.write("jwks.json", &jwks_of(&[&others[0], &k, &others[1]]));
        // The static key: a fresh key of the same type (same verification cost) as a PEM.
        let pem = {
            match alg {
                Algorithm::ES256 => {
                    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
                    (
                        kp.public_key_pem(),
                        EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap(),
                    )
                }
                _ => {
                    let private = rsa_private_pem();
                    let out = std::process::Command::new("openssl")
                        .args(["pkey", "-pubout"])
                        .stdin(std::process::Stdio::piped())
                        .stdout(std::process::Stdio::piped())
                        .spawn()
                        .and_then(|mut c| {
                            use std::io::Write as _;
                            c.stdin.take().unwrap().write_all(private.as_bytes())?;
                            c.wait_with_output()
                        })
                        .unwrap();
                    (
                        String::from_utf8(out.stdout).unwrap(),
                        EncodingKey::from_rsa_pem(private.as_bytes()).unwrap(),
                    )
                }
            }
        };
        let pem_file = files.write("static.pem", &pem.0);
        let base = JwtConfig {
            algorithms: vec![alg],
            ..JwtConfig::default()
        };
        let static_auth = Authenticator::build(
            "static",
            &AuthConfig::Jwt(JwtConfig {
                key: JwtKey::PublicKey(pem_file),
                ..base.clone()
            }),
            Arc::new(HashLimiter::new(1)),
        )
        .unwrap();
        let jwks_auth = Authenticator::build(
            "jwks",
            &AuthConfig::Jwt(JwtConfig {
                key: JwtKey::Jwks(JwksSource::File(jwks)),
                ..base.clone()
            }),
            Arc::new(HashLimiter::new(1)),
        )
        .unwrap();
        let claims = json!({"sub": "alice", "exp": now_secs() + 600});
        let static_token = jsonwebtoken::encode(&Header::new(alg), &claims, &pem.1).unwrap();
        let jwks_token = k.token();

        async fn time(a: &Authenticator, token: &str, n: u32) -> f64 {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                http::header::AUTHORIZATION,
                format!("Bearer {token}").parse().unwrap(),
            );
            let uri: http::Uri = "/ws".parse().unwrap();
            let req = AuthRequest {
                method: &http::Method::GET,
                uri: &uri,
                headers: &headers,
                client: None,
                client_ip: [127, 0, 0, 1].into(),
                tls: false,
                peer: [127, 0, 0, 1].into(),
                trusted_proxies: None,
            };
            let start = Instant::now();
            for _ in 0..n {
                a.check_request(&req).await.unwrap();
            }
            start.elapsed().as_secs_f64() * 1e6 / f64::from(n)
        }
        let n = if alg == Algorithm::RS256 {
            20_000
        } else {
            10_000
        };
        // Warm-up, then alternate five rounds each and keep the best (least disturbed) round.
        time(&static_auth, &static_token, n / 10).await;
        time(&jwks_auth, &jwks_token, n / 10).await;
        let (mut s, mut j) = (f64::MAX, f64::MAX);
        for _ in 0..5 {
            s = s.min(time(&static_auth, &static_token, n).await);
            j = j.min(time(&jwks_auth, &jwks_token, n).await);
        }
        println!(
            "{name}: static key {s:.2} µs/check, JWKS by kid (3 keys) {j:.2} µs/check, added {:.2} µs",
            j - s
        );
    }
}

/// `wsgate check` fetches the JWKS as start-up would: an error with
/// `jwks_required_at_start`, a warning (and `ok`) without.
#[tokio::test]
async fn wsgate_check_reports_an_unreachable_jwks() {
    let k = SigningKey::new("k", Algorithm::ES256);
    let server = KeyServer::start(jwks_of(&[&k])).await;
    server.down.store(true, Ordering::SeqCst);
    let files = Files::new();
    let up = echo_upstream().await;
    let run = |extra: &str| {
        let cfg = files.write(
            "config.yaml",
            &config(up.addr, &jwks_auth(&server.url(), "ES256", extra)),
        );
        let bin = env!("CARGO_BIN_EXE_wsgate");
        async move {
            tokio::task::spawn_blocking(move || {
                std::process::Command::new(bin)
                    .args(["check", "--config"])
                    .arg(cfg)
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let out = run("    jwks_required_at_start: true\n").await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("auth.idp.jwks_url: cannot fetch the JWKS:") && stdout.contains("503"),
        "{stdout}"
    );
    let out = run("").await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(stdout.trim(), "ok");
    assert!(
        stderr.contains("auth.idp.jwks_url: cannot fetch the JWKS"),
        "{stderr}"
    );
    server.down.store(false, Ordering::SeqCst);
    let out = run("    jwks_required_at_start: true\n").await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(server.hits(), 3);
}
