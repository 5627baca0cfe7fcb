//! TLS: certificate loading (PEM via rustls-pki-types), server and client configs.
//!
//! A listener's `ServerConfig` lives in the swappable runtime state, so a reload that
//! brings a renewed certificate reaches the next handshake without touching open ones.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::ConfigError;

/// The one crypto provider (aws-lc-rs), shared with jsonwebtoken's backend.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A certificate/key problem at `cert` or `key` (relative to the listener's `tls`).
fn err(field: &'static str, message: String) -> ConfigError {
    ConfigError::new(field, message)
}

/// Loads a PEM chain and key and checks that they parse and belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, ConfigError> {
    let cert_bytes = std::fs::read(cert)
        .map_err(|e| err("cert", format!("cannot read {}: {e}", cert.display())))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| err("cert", format!("{}: invalid PEM: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(err(
            "cert",
            format!("{}: no CERTIFICATE block found", cert.display()),
        ));
    }
    let key_bytes = std::fs::read(key)
        .map_err(|e| err("key", format!("cannot read {}: {e}", key.display())))?;
    // Never echo key material: messages name the file only.
    let key_der = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| {
        err(
            "key",
            format!(
                "{}: no usable private key (PKCS#8, PKCS#1 or SEC1 PEM expected): {e}",
                key.display()
            ),
        )
    })?;
    let certified = CertifiedKey::from_der(chain, key_der, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => err(
            "key",
            format!(
                "{} does not match the certificate in {}",
                key.display(),
                cert.display()
            ),
        ),
        other => err(
            "key",
            format!("{}: unusable private key: {other}", key.display()),
        ),
    })?;
    // Fail at load time, not at the first handshake, when the leaf cannot be parsed.
    certified
        .end_entity_cert()
        .map_err(|e| err("cert", format!("{}: {e}", cert.display())))?;
    Ok(Arc::new(certified))
}

#[derive(Debug)]
struct SingleCert(Arc<CertifiedKey>);

impl ResolvesServerCert for SingleCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// ALPN id of HTTP/2 (RFC 7540 §3.1).
pub const ALPN_H2: &[u8] = b"h2";

/// Builds a TLS 1.2/1.3 server config offering `h2` (when `http2`) and `http/1.1` by ALPN.
pub fn server_config(
    key: Arc<CertifiedKey>,
    http2: bool,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    server_config_with(Arc::new(SingleCert(key)), http2).map(Arc::new)
}

/// Like [`server_config`], with certificates picked per handshake by `resolver` (ACME).
pub fn server_config_with(
    resolver: Arc<dyn ResolvesServerCert>,
    http2: bool,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    // The server's order wins (rustls picks its first protocol the client offers): h2 first,
    // so a browser's page and its WebSockets share one connection.
    cfg.alpn_protocols = if http2 {
        vec![ALPN_H2.to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(cfg)
}

/// Builds the client config used for `wss://` upstreams (system trust roots).
pub fn upstream_client_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        // A single unparsable system root must not take wss:// upstreams down.
        let _ = roots.add(cert);
    }
    client_config_with_roots(roots)
}

/// Builds a client config trusting the certificates of a PEM CA file (a route's `ca`): as
/// roots for path validation, and each as a pinned server certificate (see [`crate::pinning`]).
pub fn client_config_with_ca_file(path: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: invalid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no CERTIFICATE block found", path.display()));
    }
    let verifier = crate::pinning::PinningVerifier::new(certs, provider())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Builds a client config trusting exactly `roots` (tests and per-route CAs).
pub fn client_config_with_roots(
    roots: rustls::RootCertStore,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// What operators alert on about a listener's leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    /// The subject's common name, or the whole subject when it has none.
    pub subject: String,
    /// `notAfter` as unix seconds.
    pub not_after: i64,
}

/// Reads the subject and expiry of `key`'s leaf certificate.
pub fn leaf_info(key: &CertifiedKey) -> Result<LeafInfo, String> {
    let der = key.end_entity_cert().map_err(|e| e.to_string())?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("cannot parse the leaf certificate: {e}"))?;
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    Ok(LeafInfo {
        subject: cn.unwrap_or_else(|| subject.to_string()),
        not_after: cert.validity().not_after.timestamp(),
    })
}
