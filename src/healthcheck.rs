//! `wsgate healthcheck`: is the running gate answering? For container health checks.
//!
//! What is probed, in this order:
//! 1. An address given outright (`--addr`, `$WSGATE_HEALTHCHECK_ADDR`): the config is not read
//!    at all, so editing a mounted config can never turn a healthy container unhealthy, nor
//!    can a config that names an address the running gate has not reloaded yet. The Docker
//!    image sets the variable. `ADDR` is probed over plain HTTP (the admin listener or a plain
//!    listener), `https://ADDR` with a TLS handshake.
//! 2. Otherwise the config file, read leniently (only the addresses; the rest may be
//!    mid-edit): `admin.bind` (`GET /healthz` must answer 200), else the first listener that
//!    expects no PROXY header (plain: an `OPTIONS *` request, which the gate answers itself
//!    with a 400 and never forwards; TLS: a completed handshake, certificate not verified),
//!    else the first listener with a TCP connect only (a PROXY header from loopback would be
//!    refused unless loopback is a trusted proxy). A file that cannot be read or parsed is
//!    read again a few times (an editor's save is brief) before giving up.
//!
//! A plain connect alone proves little (the kernel completes it from the backlog even when
//! the process is wedged), so every probe except the last needs an answer from the gate's
//! own code: an HTTP response, or a TLS handshake, which runs in the connection's task.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Longest wait for each step (connect, handshake, response); Docker's default timeout is 30s,
/// the shipped Dockerfile's 5s.
const STEP_TIMEOUT: Duration = Duration::from_secs(2);
/// Reads of a config file that cannot be read or parsed, and the pause between them.
const CONFIG_ATTEMPTS: u32 = 3;
const CONFIG_RETRY: Duration = Duration::from_millis(400);

/// What to probe and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The admin listener: `GET /healthz` must answer 200.
    Admin(SocketAddr),
    /// A plain HTTP listener (gate or admin): any HTTP response to `OPTIONS *`.
    Http(SocketAddr),
    /// A TLS listener: the handshake must complete.
    Tls(SocketAddr),
    /// A listener expecting a PROXY header: TCP connect only.
    Tcp(SocketAddr),
}

impl Probe {
    /// Parses an address given outright: `HOST:PORT`, `http://HOST:PORT` or `https://HOST:PORT`
    /// (IP literals; a wildcard address means loopback).
    pub fn parse_addr(s: &str) -> Result<Probe, String> {
        let (tls, rest) = match s.split_once("://") {
            Some(("https", rest)) => (true, rest),
            Some(("http", rest)) => (false, rest),
            Some((scheme, _)) => {
                return Err(format!("{s:?}: scheme {scheme:?} is not http or https"));
            }
            None => (false, s),
        };
        let addr: SocketAddr = rest
            .trim_end_matches('/')
            .parse()
            .map_err(|_| format!("{s:?} is not [https://]IP:PORT"))?;
        let addr = loopback_for_wildcard(addr);
        Ok(if tls {
            Probe::Tls(addr)
        } else {
            Probe::Http(addr)
        })
    }

    /// The probe for a config's text: see the module documentation.
    pub fn from_config_text(
        yaml: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Probe, String> {
        let options = serde_saphyr::options! { with_snippet: false };
        let tree: serde_json::Value = serde_saphyr::from_str_with_options(yaml, options)
            .map_err(|e| format!("invalid YAML: {e}"))?;
        let bind = |v: &serde_json::Value, at: &str| -> Result<SocketAddr, String> {
            let raw = v
                .get("bind")
                .and_then(|b| b.as_str())
                .ok_or_else(|| format!("{at}.bind: missing"))?;
            let text = crate::config::env::expand(raw, env)
                .map_err(|errors| format!("{at}.bind: {}", errors.join("; ")))?;
            text.parse::<SocketAddr>()
                .map(loopback_for_wildcard)
                .map_err(|_| format!("{at}.bind: {text:?} is not IP:PORT"))
        };
        if let Some(admin) = tree.get("admin").filter(|a| !a.is_null()) {
            return bind(admin, "admin").map(Probe::Admin);
        }
        let listeners = tree
            .get("listeners")
            .and_then(|l| l.as_array())
            .filter(|l| !l.is_empty())
            .ok_or("no admin listener and no listeners to probe")?;
        let proxied = |l: &serde_json::Value| l.get("proxy_protocol") == Some(&true.into());
        match listeners.iter().enumerate().find(|(_, l)| !proxied(l)) {
            Some((i, l)) => {
                let addr = bind(l, &format!("listeners[{i}]"))?;
                let tls = l.get("tls").is_some_and(|t| !t.is_null());
                Ok(if tls {
                    Probe::Tls(addr)
                } else {
                    Probe::Http(addr)
                })
            }
            None => bind(&listeners[0], "listeners[0]").map(Probe::Tcp),
        }
    }

    /// Runs the probe; `Err` says why the gate is not healthy.
    pub fn run(self) -> Result<(), String> {
        let addr = self.addr();
        let mut s = TcpStream::connect_timeout(&addr, STEP_TIMEOUT)
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let io = |e: std::io::Error| format!("{addr}: {e}");
        s.set_read_timeout(Some(STEP_TIMEOUT)).map_err(io)?;
        s.set_write_timeout(Some(STEP_TIMEOUT)).map_err(io)?;
        match self {
            Probe::Admin(_) => {
                let status = http_status(&mut s, "GET /healthz").map_err(io)?;
                match status {
                    Some(200) => Ok(()),
                    Some(other) => Err(format!("{addr}: /healthz answered {other}")),
                    None => Err(format!("{addr}: no HTTP response")),
                }
            }
            Probe::Http(_) => match http_status(&mut s, "OPTIONS *").map_err(io)? {
                Some(_) => Ok(()),
                None => Err(format!("{addr}: no HTTP response")),
            },
            Probe::Tls(_) => tls_handshake(s).map_err(|e| format!("{addr}: TLS handshake: {e}")),
            Probe::Tcp(_) => Ok(()),
        }
    }

    fn addr(self) -> SocketAddr {
        match self {
            Probe::Admin(a) | Probe::Http(a) | Probe::Tls(a) | Probe::Tcp(a) => a,
        }
    }
}

/// `wsgate healthcheck`: probes `addr` when given (the config is then not read), else what
/// the config at `config` names. `Ok` carries what was probed, for the log line.
pub fn check(config: &Path, addr: Option<&str>) -> Result<Probe, String> {
    let probe = match addr.filter(|a| !a.is_empty()) {
        Some(a) => Probe::parse_addr(a)?,
        None => probe_from_config(config)?,
    };
    probe.run().map(|()| probe)
}

fn probe_from_config(path: &Path) -> Result<Probe, String> {
    let env = |name: &str| std::env::var(name).ok();
    let mut attempt = 1;
    loop {
        let result = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
            .and_then(|text| Probe::from_config_text(&text, &env));
        match result {
            Ok(p) => return Ok(p),
            Err(e) if attempt >= CONFIG_ATTEMPTS => {
                return Err(format!(
                    "{e} (set WSGATE_HEALTHCHECK_ADDR so the health check needs no config)"
                ));
            }
            Err(_) => {
                attempt += 1;
                std::thread::sleep(CONFIG_RETRY);
            }
        }
    }
}

/// Sends `<request_line> HTTP/1.1` and returns the status of the answer, if it is HTTP/1.x.
fn http_status(s: &mut TcpStream, request_line: &str) -> std::io::Result<Option<u16>> {
    s.write_all(
        format!("{request_line} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )?;
    // `HTTP/1.1 200` is all we need; waiting for more could wait for a body.
    let mut head = [0u8; 12];
    let mut n = 0;
    while n < head.len() {
        match s.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    let text = String::from_utf8_lossy(&head[..n]);
    Ok(text
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok()))
}

/// Completes a TLS handshake without judging the certificate: liveness, not identity (the
/// certificate may be self-signed, and its names are not known here).
fn tls_handshake(mut s: TcpStream) -> Result<(), String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut s).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Accepts any server certificate, but still checks that the handshake is signed by it.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A wildcard bind is reachable on loopback.
fn loopback_for_wildcard(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "PORT").then(|| "9000".into())
    }

    #[test]
    fn addresses_given_outright() {
        let a: SocketAddr = "127.0.0.1:9100".parse().unwrap();
        assert_eq!(Probe::parse_addr("127.0.0.1:9100"), Ok(Probe::Http(a)));
        assert_eq!(
            Probe::parse_addr("http://0.0.0.0:9100/"),
            Ok(Probe::Http(a))
        );
        assert_eq!(
            Probe::parse_addr("https://127.0.0.1:9100"),
            Ok(Probe::Tls(a))
        );
        assert!(Probe::parse_addr("localhost:9100").is_err());
        assert!(Probe::parse_addr("ftp://127.0.0.1:1").is_err());
    }

    #[test]
    fn config_admin_first_then_the_first_listener_without_proxy_header() {
        let p = |y: &str| Probe::from_config_text(y, &env);
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            p(
                "listeners: [{bind: \"0.0.0.0:8080\"}]\nadmin: {bind: \"[::]:${PORT}\"}\nroutes: oops"
            ),
            Ok(Probe::Admin(a("[::1]:9000")))
        );
        assert_eq!(
            p(
                "listeners:\n  - bind: \"127.0.0.1:1\"\n    proxy_protocol: true\n  - bind: \"127.0.0.1:2\"\n    tls: {cert: c, key: k}\n"
            ),
            Ok(Probe::Tls(a("127.0.0.1:2")))
        );
        assert_eq!(
            p("listeners:\n  - bind: \"127.0.0.1:1\"\n    proxy_protocol: true\n"),
            Ok(Probe::Tcp(a("127.0.0.1:1")))
        );
        assert_eq!(
            p("listeners: [{bind: \"127.0.0.1:3\"}]"),
            Ok(Probe::Http(a("127.0.0.1:3")))
        );
        assert!(p("listeners: [").is_err());
        assert!(p("routes: []").is_err());
        assert!(
            p("admin: {bind: \"${UNSET}\"}")
                .unwrap_err()
                .contains("admin.bind")
        );
    }
}
