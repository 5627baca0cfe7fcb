//! `wss://` upstreams whose certificate is given as the route's `ca` (pinning): a self-signed
//! CA:TRUE certificate, as `openssl req -x509` makes, is accepted when it is byte-identical to
//! one in the file, with its name and validity still checked; everything else goes through
//! full path validation.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use futures_util::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, date_time_ymd,
};
use tokio::net::TcpListener;

/// What a certificate looks like.
struct Spec {
    /// subjectAltName DNS entries (none: no SAN extension at all).
    sans: Vec<&'static str>,
    /// Subject CN.
    cn: &'static str,
    /// CA:TRUE, like `openssl req -x509` with the default `v3_ca` extensions.
    ca: bool,
    /// Expired a year ago.
    expired: bool,
}

impl Spec {
    fn params(&self) -> CertificateParams {
        let mut p =
            CertificateParams::new(self.sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name.push(DnType::CommonName, self.cn);
        if self.ca {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        if self.expired {
            p.not_before = date_time_ymd(2020, 1, 1);
            p.not_after = date_time_ymd(2021, 1, 1);
        }
        p
    }
}

fn self_signed(spec: Spec) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let cert = spec.params().self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn localhost_ca() -> Spec {
    Spec {
        sans: vec!["localhost"],
        cn: "localhost",
        ca: true,
        expired: false,
    }
}

/// A TLS WebSocket echo server presenting `chain_pem` (leaf first) with `key_pem`.
async fn tls_echo(chain_pem: &str, key_pem: &str) -> SocketAddr {
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

/// A gate with one route `/up` to `wss://localhost:<port>` trusting `ca_pem`.
async fn gate_trusting(ca_pem: &str, up: SocketAddr) -> Gate {
    let files = Files::new();
    files.write("ca.pem", ca_pem);
    let yaml = format!(
        "listeners:\n  - bind: \"127.0.0.1:0\"\nadmin:\n  bind: \"127.0.0.1:0\"\nroutes:\n  - path: /up\n    upstream: wss://localhost:{}\n    ca: \"{{dir}}/ca.pem\"\nlimits:\n  handshake_rate_per_ip: 0\n",
        up.port()
    );
    start_gate(files, &yaml).await
}

async fn upgrade_status(gate: &Gate) -> u16 {
    http_request(gate.addr(), &upgrade_request("/up", ""))
        .await
        .0
}

#[tokio::test]
async fn self_signed_ca_cert_pinned_as_the_route_ca_is_accepted() {
    let (cert, key) = self_signed(localhost_ca());
    let up = tls_echo(&cert, &key).await;
    let gate = gate_trusting(&cert, up).await;
    let (mut ws, _) = ws_connect(&gate.ws_url("/up"), &[])
        .await
        .expect("the pinned self-signed upstream is trusted");
    echo_roundtrip(&mut ws, "pinned").await;
    // Other certificates in the same file don't get in the way.
    let (other, _) = self_signed(localhost_ca());
    let gate = gate_trusting(&format!("{other}{cert}"), up).await;
    assert_eq!(upgrade_status(&gate).await, 101);
}

#[tokio::test]
async fn a_different_self_signed_cert_is_refused() {
    let (cert, key) = self_signed(localhost_ca());
    let up = tls_echo(&cert, &key).await;
    // Same names, different key and bytes.
    let (other, _) = self_signed(localhost_ca());
    let gate = gate_trusting(&other, up).await;
    assert_eq!(upgrade_status(&gate).await, 502);
    assert_eq!(
        wait_metric(
            &gate,
            "wsgate_handshakes_total{outcome=\"upstream_error\",route=\"/up\"}",
            1.0
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_pinned_cert_with_the_wrong_name_is_refused() {
    for spec in [
        Spec {
            sans: vec!["backend.internal"],
            ..localhost_ca()
        },
        // No SAN at all: the CN stands in for it (as OpenSSL does), and it is wrong.
        Spec {
            sans: vec![],
            cn: "backend.internal",
            ..localhost_ca()
        },
        // A SAN that doesn't match wins over a CN that would.
        Spec {
            sans: vec!["backend.internal"],
            cn: "localhost",
            ..localhost_ca()
        },
    ] {
        let (cert, key) = self_signed(spec);
        let up = tls_echo(&cert, &key).await;
        let gate = gate_trusting(&cert, up).await;
        assert_eq!(upgrade_status(&gate).await, 502);
    }
}

#[tokio::test]
async fn a_pinned_cert_without_san_is_matched_on_its_cn() {
    let (cert, key) = self_signed(Spec {
        sans: vec![],
        ..localhost_ca()
    });
    let up = tls_echo(&cert, &key).await;
    let gate = gate_trusting(&cert, up).await;
    assert_eq!(upgrade_status(&gate).await, 101);
}

#[tokio::test]
async fn an_expired_pinned_cert_is_refused() {
    for ca in [true, false] {
        let (cert, key) = self_signed(Spec {
            expired: true,
            ca,
            ..localhost_ca()
        });
        let up = tls_echo(&cert, &key).await;
        let gate = gate_trusting(&cert, up).await;
        assert_eq!(upgrade_status(&gate).await, 502, "ca: {ca}");
    }
}

#[tokio::test]
async fn a_leaf_issued_by_the_route_ca_still_goes_through_path_validation() {
    let ca_key = KeyPair::generate().unwrap();
    let ca = CertifiedIssuer::self_signed(
        Spec {
            sans: vec![],
            cn: "Test Root",
            ca: true,
            expired: false,
        }
        .params(),
        ca_key,
    )
    .unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = Spec {
        sans: vec!["localhost"],
        cn: "localhost",
        ca: false,
        expired: false,
    }
    .params()
    .signed_by(&leaf_key, &ca)
    .unwrap();
    let up = tls_echo(
        &format!("{}{}", leaf.pem(), ca.pem()),
        &leaf_key.serialize_pem(),
    )
    .await;
    let gate = gate_trusting(&ca.pem(), up).await;
    assert_eq!(upgrade_status(&gate).await, 101);
    // A leaf for another name under the same root: path valid, name wrong.
    let wrong_key = KeyPair::generate().unwrap();
    let wrong = Spec {
        sans: vec!["backend.internal"],
        cn: "backend.internal",
        ca: false,
        expired: false,
    }
    .params()
    .signed_by(&wrong_key, &ca)
    .unwrap();
    let up = tls_echo(&wrong.pem(), &wrong_key.serialize_pem()).await;
    let gate = gate_trusting(&ca.pem(), up).await;
    assert_eq!(upgrade_status(&gate).await, 502);
}
