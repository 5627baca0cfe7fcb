//! Trust for a route's `ca` file: full path validation, plus pinning of the exact
//! certificates the file holds.
//!
//! Internal `wss://` backends often serve a self-signed certificate made with
//! `openssl req -x509`, which marks it CA:TRUE. Given that same file as `ca`, webpki refuses
//! it (`CaUsedAsEndEntity`: a CA certificate may not be a server's own certificate), while
//! OpenSSL-based proxies accept it. An end-entity certificate byte-identical to one in the
//! file was put there deliberately, so it is accepted without a chain, as long as it is
//! within its validity period, valid for the name we connected to, and not restricted to
//! other purposes. Everything else goes through webpki unchanged.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// Verifies upstream certificates against a route's `ca` file (see the module docs).
#[derive(Debug)]
pub struct PinningVerifier {
    /// Path validation against the file's certificates as roots; also checks signatures.
    webpki: Arc<WebPkiServerVerifier>,
    /// The file's certificates, accepted as end-entity certificates when byte-identical.
    pinned: Vec<CertificateDer<'static>>,
}

impl PinningVerifier {
    /// A verifier trusting `certs` both as roots and as pinned end-entity certificates.
    pub fn new(
        certs: Vec<CertificateDer<'static>>,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in &certs {
            roots
                .add(cert.clone())
                .map_err(|e| format!("unusable CA certificate: {e}"))?;
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(PinningVerifier {
            webpki,
            pinned: certs,
        })
    }
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            check_pinned(end_entity, server_name, now)?;
            return Ok(ServerCertVerified::assertion());
        }
        self.webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.webpki.root_hint_subjects()
    }
}

/// What a pinned certificate must still satisfy: validity period, name, purpose.
fn check_pinned(
    der: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Result<(), Error> {
    let bad = || Error::InvalidCertificate(CertificateError::BadEncoding);
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|_| bad())?;

    let now = i64::try_from(now.as_secs()).map_err(|_| bad())?;
    let validity = cert.validity();
    if now < validity.not_before.timestamp() {
        return Err(Error::InvalidCertificate(CertificateError::NotValidYet));
    }
    if now > validity.not_after.timestamp() {
        return Err(Error::InvalidCertificate(CertificateError::Expired));
    }

    // An extended key usage that leaves out server authentication forbids this use, pinned
    // or not (OpenSSL checks the same purpose).
    if let Some(eku) = cert.extended_key_usage().map_err(|_| bad())?
        && !(eku.value.any || eku.value.server_auth)
    {
        return Err(Error::InvalidCertificate(CertificateError::InvalidPurpose));
    }

    let has_san = cert
        .subject_alternative_name()
        .map_err(|_| bad())?
        .is_some();
    if has_san {
        let parsed = rustls::server::ParsedCertificate::try_from(der)?;
        return rustls::client::verify_server_name(&parsed, server_name);
    }
    // No subjectAltName at all (`openssl req -x509 -subj /CN=host` makes exactly that): fall
    // back to the subject CN like OpenSSL's hostname check does; an exact, case-insensitive
    // match, no wildcards.
    let wanted = match server_name {
        ServerName::DnsName(d) => d.as_ref().trim_end_matches('.').to_owned(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        _ => return Err(Error::InvalidCertificate(CertificateError::NotValidForName)),
    };
    let matches = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .any(|cn| cn.eq_ignore_ascii_case(&wanted));
    if matches {
        Ok(())
    } else {
        Err(Error::InvalidCertificate(CertificateError::NotValidForName))
    }
}
