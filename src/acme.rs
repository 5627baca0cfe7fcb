//! ACME (RFC 8555) certificates for `tls.acme` listeners: obtained and renewed from a CA
//! such as Let's Encrypt with `instant-acme` (account, orders, JWS signing), and swapped into
//! the listener's certificate resolver, so new handshakes get a renewed certificate while
//! open tunnels keep the connection they have.
//!
//! ```text
//!  runtime::build ──► Manager::for_listener (cache read: a valid certificate serves at once)
//!  Gateway::bind / reload ──► acme::start ──► renewal task: sleep until due ──► order
//!      order: account (cached) → new order → answer each authorization → finalize → cache
//!      TLS-ALPN-01: Resolver answers ALPN `acme-tls/1` with the RFC 8737 certificate
//!      HTTP-01: proxy::handler asks http01_answer() first on plain listeners
//! ```
//!
//! A manager lives as long as a runtime state uses it; states built from the same listener
//! and `acme` block share one (found in a registry by that key), so a reload keeps the
//! certificate, the renewal schedule and any order in flight.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::config::{AcmeChallenge, AcmeConfig, ConfigError};
use crate::metrics::Metrics;
use crate::runtime::Runtime;

/// ALPN protocol id of TLS-ALPN-01 validations (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Path prefix of HTTP-01 validation requests (RFC 8555 §8.3).
const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// First wait after a failed order; doubles up to [`MAX_BACKOFF`]. Let's Encrypt allows 5
/// failed validations per name and hour, so retries must slow down quickly.
const INITIAL_BACKOFF: Duration = Duration::from_secs(5);
/// Longest wait between failed orders.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// How long one order may wait for the CA (validation, then issuance).
const ORDER_TIMEOUT: Duration = Duration::from_secs(90);

/// Managers by listener and `acme` block, so states built by reloads share one.
static MANAGERS: LazyLock<Mutex<HashMap<String, Weak<Manager>>>> = LazyLock::new(Default::default);
/// HTTP-01 token → key authorization, for orders in flight (any plain listener answers).
static HTTP01: LazyLock<Mutex<HashMap<String, String>>> = LazyLock::new(Default::default);

/// A poisoned lock only means a thread panicked mid-update of a map that stays usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A certificate in force with its validity window (unix seconds).
struct Issued {
    key: Arc<CertifiedKey>,
    not_before: i64,
    not_after: i64,
}

/// Picks the certificate of each handshake: the issued one, or a TLS-ALPN-01 answer.
#[derive(Default)]
struct Resolver {
    current: ArcSwapOption<Issued>,
    /// Domain → RFC 8737 validation certificate, while an order is in flight.
    alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("acme::Resolver")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let validation = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN));
        if validation {
            // Only a validation for a name with an order in flight gets an answer.
            let name = hello.server_name()?.to_ascii_lowercase();
            return lock(&self.alpn).get(&name).cloned();
        }
        // No certificate yet (first order in flight): the handshake fails, as it must.
        self.current.load().as_ref().map(|c| c.key.clone())
    }
}

/// Obtains and renews the certificate of one `tls.acme` listener.
pub struct Manager {
    /// The listener's bind address (the expiry metric's `listener` label).
    listener: String,
    config: AcmeConfig,
    resolver: Arc<Resolver>,
    started: AtomicBool,
    stop: CancellationToken,
    /// The metrics of the gateway that started it last.
    metrics: Mutex<Option<Metrics>>,
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Manager {
    /// The manager of a listener (shared with earlier states of the same block) and a TLS
    /// config resolving through it. Reads the cache folder (a valid certificate there serves
    /// at once) but does not contact the CA: `wsgate check` uses this too. Errors are
    /// relative to the listener's `tls.acme`.
    pub fn for_listener(
        bind: SocketAddr,
        config: &AcmeConfig,
        http2: bool,
    ) -> Result<(Arc<Self>, Arc<rustls::ServerConfig>), ConfigError> {
        check_cache_dir(&config.cache).map_err(|m| ConfigError::new("cache", m))?;
        if let Some(ca) = &config.ca {
            read_ca(ca).map_err(|m| ConfigError::new("ca", m))?;
        }
        let id = format!("{bind}|{config:?}");
        let manager = {
            let mut managers = lock(&MANAGERS);
            managers.retain(|_, m| m.strong_count() > 0);
            match managers.get(&id).and_then(Weak::upgrade) {
                Some(m) => m,
                None => {
                    let m = Arc::new(Self::new(bind, config));
                    managers.insert(id, Arc::downgrade(&m));
                    m
                }
            }
        };
        let mut tls = crate::tls::server_config_with(manager.resolver.clone(), http2)
            .map_err(|e| ConfigError::new("", e.to_string()))?;
        if config.challenge == AcmeChallenge::TlsAlpn01 {
            tls.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
        }
        Ok((manager, Arc::new(tls)))
    }

    fn new(bind: SocketAddr, config: &AcmeConfig) -> Self {
        let resolver = Arc::new(Resolver::default());
        let paths = CachePaths::new(config);
        match load_cached(&paths, &config.domains) {
            Ok(Some(issued)) => {
                tracing::info!(listener = %bind, domains = ?config.domains, not_after = issued.not_after, "ACME: using the cached certificate");
                resolver.current.store(Some(Arc::new(issued)));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(listener = %bind, error = %e, "ACME: cached certificate not used; ordering a new one")
            }
        }
        Self {
            listener: bind.to_string(),
            config: config.clone(),
            resolver,
            started: AtomicBool::new(false),
            stop: CancellationToken::new(),
            metrics: Mutex::new(None),
        }
    }

    /// Subject and expiry of the certificate in force, for the expiry metric.
    pub fn leaf_info(&self) -> Option<crate::tls::LeafInfo> {
        let current = self.resolver.current.load_full()?;
        crate::tls::leaf_info(&current.key).ok()
    }

    /// Starts the renewal task once (later calls only switch the metrics it reports to).
    fn start(self: &Arc<Self>, metrics: &Metrics) {
        *lock(&self.metrics) = Some(metrics.clone());
        metrics.acme_enabled();
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(renew_loop(Arc::downgrade(self), self.stop.clone()));
            }
            Err(_) => {
                self.started.store(false, Ordering::SeqCst);
                tracing::error!(listener = %self.listener, "ACME: no async runtime to renew in");
            }
        }
    }

    fn metrics(&self) -> Option<Metrics> {
        lock(&self.metrics).clone()
    }

    /// Time left until the certificate in force is due for renewal (zero: order now).
    fn until_due(&self) -> Duration {
        let Some(current) = self.resolver.current.load_full() else {
            return Duration::ZERO;
        };
        let due = renew_at(
            current.not_before,
            current.not_after,
            self.config.renew_before,
        );
        let now = unix_now();
        Duration::from_secs(u64::try_from(due - now).unwrap_or(0))
    }

    /// One order, counted in `wsgate_acme_orders_total`.
    async fn order(&self) -> Result<(), String> {
        let result = self.try_order().await;
        if let Some(m) = self.metrics() {
            m.acme_order(result.is_ok());
        }
        result
    }

    async fn try_order(&self) -> Result<(), String> {
        let paths = CachePaths::new(&self.config);
        create_cache_dir(&paths.dir)?;
        let account = self.account(&paths).await?;
        let identifiers: Vec<Identifier> = self
            .config
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.trim_end_matches('.').to_ascii_lowercase()))
            .collect();
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| format!("new order: {e}"))?;
        let mut answers = Answers {
            resolver: &self.resolver,
            names: Vec::new(),
            tokens: Vec::new(),
        };
        let kind = match self.config.challenge {
            AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            AcmeChallenge::Http01 => ChallengeType::Http01,
        };
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization.map_err(|e| format!("authorization: {e}"))?;
            match authorization.status {
                AuthorizationStatus::Pending => {}
                // Still valid from an earlier order: nothing to prove.
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("authorization is {other:?}")),
            }
            let name = authorization.identifier().to_string();
            let Some(mut challenge) = authorization.challenge(kind.clone()) else {
                return Err(format!(
                    "the CA offers no {kind:?} challenge for {name}; try the other `challenge`"
                ));
            };
            let key_auth = challenge.key_authorization();
            match self.config.challenge {
                AcmeChallenge::TlsAlpn01 => {
                    let cert = validation_cert(&name, key_auth.digest().as_ref())?;
                    answers.alpn(name.to_ascii_lowercase(), cert);
                }
                AcmeChallenge::Http01 => {
                    answers.http(challenge.token.clone(), key_auth.as_str().to_owned());
                }
            }
            challenge
                .set_ready()
                .await
                .map_err(|e| format!("challenge for {name}: {e}"))?;
        }
        let retry = RetryPolicy::new().timeout(ORDER_TIMEOUT);
        let status = order
            .poll_ready(&retry)
            .await
            .map_err(|e| format!("validation: {e}"))?;
        if status != OrderStatus::Ready {
            return Err(format!("order is {status:?} after validation"));
        }
        let key_pem = order
            .finalize()
            .await
            .map_err(|e| format!("finalize: {e}"))?;
        let chain_pem = order
            .poll_certificate(&retry)
            .await
            .map_err(|e| format!("certificate: {e}"))?;
        drop(answers);
        let issued = issued_from_pem(chain_pem.as_bytes(), key_pem.as_bytes())?;
        // Key first: a crash between the writes leaves a new key with the old chain, which
        // the next start refuses (they don't match) and so orders again.
        write_private(&paths.key, key_pem.as_bytes())?;
        write_private(&paths.chain, chain_pem.as_bytes())?;
        self.install(issued);
        Ok(())
    }

    /// Puts a certificate in force for new handshakes (open connections keep theirs).
    fn install(&self, issued: Issued) {
        tracing::info!(listener = %self.listener, domains = ?self.config.domains, not_after = issued.not_after, "ACME: certificate obtained");
        let info = crate::tls::leaf_info(&issued.key).ok();
        self.resolver.current.store(Some(Arc::new(issued)));
        if let (Some(m), Some(info)) = (self.metrics(), info) {
            m.certificate_renewed(&self.listener, &info.subject, info.not_after);
        }
    }

    /// The ACME account: from the cache, or registered (and cached) on first use.
    async fn account(&self, paths: &CachePaths) -> Result<Account, String> {
        // instant-acme's HTTPS client uses the process's rustls provider; the crate's own
        // (aws-lc-rs) is installed unless something installed one first.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let builder = || match &self.config.ca {
            Some(ca) => Account::builder_with_root(ca),
            None => Account::builder(),
        };
        let builder = builder().map_err(|e| format!("ACME HTTP client: {e}"))?;
        if let Ok(bytes) = std::fs::read(&paths.account) {
            let credentials: AccountCredentials = serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: {e}", paths.account.display()))?;
            return builder
                .from_credentials(credentials)
                .await
                .map_err(|e| format!("account: {e}"));
        }
        let contact = self.config.email.as_ref().map(|e| {
            if e.starts_with("mailto:") {
                e.clone()
            } else {
                format!("mailto:{e}")
            }
        });
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, credentials) = builder
            .create(
                &NewAccount {
                    contact: &contacts,
                    // Configuring a CA is agreeing to its terms (the README says so).
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.config.directory.clone(),
                None,
            )
            .await
            .map_err(|e| format!("new account at {}: {e}", self.config.directory))?;
        let json = serde_json::to_vec(&credentials).map_err(|e| format!("account: {e}"))?;
        write_private(&paths.account, &json)?;
        tracing::info!(listener = %self.listener, directory = %self.config.directory, "ACME: account registered");
        Ok(account)
    }
}

/// Starts the renewal of every ACME listener of `runtime` (those already running only
/// switch to `metrics`). Not called by `wsgate check`, which must not contact the CA.
pub fn start(runtime: &Runtime, metrics: &Metrics) {
    for m in &runtime.acme {
        m.start(metrics);
    }
}

/// Sleeps until the certificate is due, orders, and on failure retries with backoff.
async fn renew_loop(manager: Weak<Manager>, stop: CancellationToken) {
    let mut backoff = INITIAL_BACKOFF;
    loop {
        // Hold no strong reference while sleeping: dropping the last state stops the loop.
        let wait = match manager.upgrade() {
            Some(m) => m.until_due(),
            None => return,
        };
        if !wait.is_zero() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        let Some(m) = manager.upgrade() else { return };
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = m.order() => r,
        };
        let listener = m.listener.clone();
        drop(m);
        match result {
            Ok(()) => backoff = INITIAL_BACKOFF,
            Err(e) => {
                tracing::warn!(listener = %listener, error = %e, retry_in_s = backoff.as_secs(), "ACME order failed");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// When to renew: `renew_before` ahead of expiry, by default at two thirds of the lifetime.
fn renew_at(not_before: i64, not_after: i64, renew_before: Option<Duration>) -> i64 {
    let lifetime = (not_after - not_before).max(0);
    let before = match renew_before {
        Some(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        None => lifetime / 3,
    };
    not_after.saturating_sub(before)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Challenge answers of one order, withdrawn when the order ends (whatever its outcome).
struct Answers<'r> {
    resolver: &'r Resolver,
    names: Vec<String>,
    tokens: Vec<String>,
}

impl Answers<'_> {
    fn alpn(&mut self, name: String, cert: Arc<CertifiedKey>) {
        lock(&self.resolver.alpn).insert(name.clone(), cert);
        self.names.push(name);
    }
    fn http(&mut self, token: String, key_authorization: String) {
        lock(&HTTP01).insert(token.clone(), key_authorization);
        self.tokens.push(token);
    }
}

impl Drop for Answers<'_> {
    fn drop(&mut self) {
        let mut alpn = lock(&self.resolver.alpn);
        for n in &self.names {
            alpn.remove(n);
        }
        let mut http = lock(&HTTP01);
        for t in &self.tokens {
            http.remove(t);
        }
    }
}

/// The HTTP-01 answer to `req` when it asks for a token of an order in flight, on a plain
/// listener; `None` lets the request go on to the routes (WebSockets included).
pub fn http01_answer<B>(
    req: &http::Request<B>,
    tls: bool,
) -> Option<http::Response<crate::proxy::response::ProxyBody>> {
    let token = req.uri().path().strip_prefix(HTTP01_PREFIX)?;
    if tls || !matches!(*req.method(), http::Method::GET | http::Method::HEAD) {
        return None;
    }
    let answer = lock(&HTTP01).get(token).cloned()?;
    let mut resp = http::Response::new(crate::proxy::response::full(answer));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/octet-stream"),
    );
    Some(resp)
}

/// The RFC 8737 validation certificate for `name`: self-signed, carrying the SHA-256 of the
/// key authorization in the critical acmeIdentifier extension.
fn validation_cert(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let err = |e: rcgen::Error| format!("TLS-ALPN-01 certificate for {name}: {e}");
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(err)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let cert = params.self_signed(&key).map_err(err)?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    // Not `CertifiedKey::from_der`: its key check parses the certificate with webpki, which
    // refuses the critical acmeIdentifier extension that this certificate exists to carry.
    let signer = crate::tls::provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("TLS-ALPN-01 certificate for {name}: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

/// Files of one listener's `acme` block in its cache folder. Names carry a hash of the
/// directory (and domains), so switching CA or names never picks up the wrong files.
struct CachePaths {
    dir: PathBuf,
    account: PathBuf,
    chain: PathBuf,
    key: PathBuf,
}

impl CachePaths {
    fn new(config: &AcmeConfig) -> Self {
        let mut domains: Vec<String> = config
            .domains
            .iter()
            .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
            .collect();
        domains.sort();
        let account = short_hash(&config.directory);
        let cert = short_hash(&format!("{}\n{}", config.directory, domains.join(",")));
        let dir = config.cache.clone();
        Self {
            account: dir.join(format!("account-{account}.json")),
            chain: dir.join(format!("cert-{cert}.pem")),
            key: dir.join(format!("cert-{cert}.key")),
            dir,
        }
    }
}

fn short_hash(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The cache folder is usable: an existing folder, or creatable under an existing one.
fn check_cache_dir(dir: &Path) -> Result<(), String> {
    use std::io::ErrorKind::{NotADirectory, NotFound};
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("{} exists and is not a folder", dir.display())),
        Err(e) if matches!(e.kind(), NotFound | NotADirectory) => {
            let mut parent = dir.parent();
            while let Some(p) = parent {
                let p = if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                };
                match std::fs::metadata(p) {
                    Ok(m) if m.is_dir() => return Ok(()),
                    Ok(_) => {
                        return Err(format!(
                            "cannot be created: {} is not a folder",
                            p.display()
                        ));
                    }
                    Err(e) if matches!(e.kind(), NotFound | NotADirectory) => parent = p.parent(),
                    Err(e) => return Err(format!("cannot check {}: {e}", p.display())),
                }
            }
            Ok(())
        }
        Err(e) => Err(format!("cannot use {}: {e}", dir.display())),
    }
}

/// Creates the cache folder (0700) or tightens an existing one: it holds private keys.
fn create_cache_dir(dir: &Path) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create the cache folder {}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("cannot restrict {} to mode 0700: {e}", dir.display()))
}

/// Writes a file readable by its owner only (0600), atomically (temporary file + rename).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    // A leftover temporary file could have looser permissions than `mode` would give it.
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    file.write_all(bytes).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

/// Reads the `ca` file: at least one PEM certificate.
fn read_ca(path: &Path) -> Result<(), String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: invalid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no CERTIFICATE block found", path.display()));
    }
    Ok(())
}

/// Parses an issued chain and its key, with the leaf's validity window.
fn issued_from_pem(chain: &[u8], key: &[u8]) -> Result<Issued, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate chain: invalid PEM: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("private key: {e}"))?;
    let certified = CertifiedKey::from_der(certs, key, &crate::tls::provider())
        .map_err(|e| format!("certificate and key: {e}"))?;
    let (not_before, not_after, _) = leaf_details(&certified)?;
    Ok(Issued {
        key: Arc::new(certified),
        not_before,
        not_after,
    })
}

/// The leaf's notBefore, notAfter and DNS names.
fn leaf_details(key: &CertifiedKey) -> Result<(i64, i64, Vec<String>), String> {
    let der = key.end_entity_cert().map_err(|e| e.to_string())?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("cannot parse the certificate: {e}"))?;
    let names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok((
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
        names,
    ))
}

/// The cached certificate for `domains`, when there is one that is valid now and covers
/// every name; `Ok(None)` when none is cached.
fn load_cached(paths: &CachePaths, domains: &[String]) -> Result<Option<Issued>, String> {
    let (Ok(chain), Ok(key)) = (std::fs::read(&paths.chain), std::fs::read(&paths.key)) else {
        return Ok(None);
    };
    let issued =
        issued_from_pem(&chain, &key).map_err(|e| format!("{}: {e}", paths.chain.display()))?;
    let (_, _, names) = leaf_details(&issued.key)?;
    let missing: Vec<&String> = domains
        .iter()
        .filter(|d| !names.contains(&d.trim_end_matches('.').to_ascii_lowercase()))
        .collect();
    if !missing.is_empty() {
        return Err(format!("it does not cover {missing:?}"));
    }
    let now = unix_now();
    if now >= issued.not_after || now < issued.not_before {
        return Err("it is not valid now".into());
    }
    Ok(Some(issued))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_at_two_thirds_or_renew_before() {
        assert_eq!(renew_at(0, 90, None), 60);
        assert_eq!(renew_at(100, 190, Some(Duration::from_secs(10))), 180);
        assert_eq!(renew_at(0, 90, Some(Duration::from_secs(1000))), -910);
    }

    #[test]
    fn validation_cert_carries_the_acme_identifier() {
        let cert = validation_cert("example.com", &[7u8; 32]).unwrap();
        let der = cert.end_entity_cert().unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        // id-pe-acmeIdentifier, RFC 8737 §3: critical.
        let ext = parsed
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .unwrap();
        assert!(ext.critical);
        assert!(ext.value.ends_with(&[7u8; 32]));
    }

    #[test]
    fn private_files_and_folder_modes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("a/b");
        check_cache_dir(&cache).unwrap();
        create_cache_dir(&cache).unwrap();
        let mode = std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let f = cache.join("x.key");
        write_private(&f, b"secret").unwrap();
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(check_cache_dir(&f).unwrap_err().contains("not a folder"));
        assert!(
            check_cache_dir(&f.join("sub"))
                .unwrap_err()
                .contains("not a folder")
        );
    }
}
