//! `wss://` upstreams whose certificate is given as the route's `ca` (pinning): a self-signed
//! CA:TRUE certificate, as `openssl req -x509` makes, is accepted when it is byte-identical to
//! one in the file, with its name and validity still checked; everything else goes through
//! full path validation.

mod common;

use std::net::SocketAddr;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, date_time_ymd,
};

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
    let up = tls_echo_upstream_pem(&cert, &key).await;
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
    let up = tls_echo_upstream_pem(&cert, &key).await;
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
        let up = tls_echo_upstream_pem(&cert, &key).await;
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
    let up = tls_echo_upstream_pem(&cert, &key).await;
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
        let up = tls_echo_upstream_pem(&cert, &key).await;
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
    let up = tls_echo_upstream_pem(
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
    let up = tls_echo_upstream_pem(&wrong.pem(), &wrong_key.serialize_pem()).await;
    let gate = gate_trusting(&ca.pem(), up).await;
    assert_eq!(upgrade_status(&gate).await, 502);
}
