//! JWKS: an identity provider's public keys, chosen by `kid`, kept fresh off the handshake
//! path.
//!
//! The key set lives in an `ArcSwap`: a handshake loads it without a lock and never fetches
//! while the token's `kid` is cached. A background task (started by the runtime, stopped
//! when the authenticator is dropped or replaced by a reload) fetches the set every
//! `jwks_refresh`, sooner after a failure, and at once when a token names an unknown `kid`
//! — at most once per `jwks_min_interval`, so a flood of random `kid`s costs one fetch.
//! Only the handshake that triggered such a fetch (and those arriving while it runs) waits
//! for it, at most `jwks_timeout`; the others are refused at once.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::{JwksSource, JwtConfig, UpstreamConfig, WebhookUrl};
use crate::metrics::{JwksMetrics, Metrics};

/// Largest JWKS or OpenID configuration document read.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// Keys read from one JWKS at most (real ones hold two or three).
const MAX_KEYS: usize = 64;

/// One usable verification key.
pub(crate) struct Key {
    /// `kid`, when the JWKS names it.
    kid: Option<String>,
    /// The key's `alg`, when the JWKS pins one.
    alg: Option<Algorithm>,
    /// RSA, EC or Ed.
    family: AlgorithmFamily,
    /// The EC curve (ES256 needs P-256, ES384 P-384).
    curve: Option<EllipticCurve>,
    /// The parsed key.
    pub(crate) key: DecodingKey,
}

impl Key {
    /// Whether this key may verify a token signed with `alg`.
    fn fits(&self, alg: Algorithm) -> bool {
        self.family == alg.family()
            && self.alg.is_none_or(|a| a == alg)
            && match (alg, &self.curve) {
                (Algorithm::ES256, Some(c)) => *c == EllipticCurve::P256,
                (Algorithm::ES384, Some(c)) => *c == EllipticCurve::P384,
                _ => true,
            }
    }
}

/// The usable keys of one JWKS.
#[derive(Default)]
pub(crate) struct KeySet {
    keys: Vec<Key>,
}

/// What a token's `kid` and `alg` find in a key set.
pub(crate) enum Lookup<'a> {
    /// Keys to try, in order (several only for a token without `kid`).
    Keys(Vec<&'a Key>),
    /// The `kid` is there, but no key of it may verify this `alg`.
    Unfit,
    /// No key has this `kid` (or the set is empty): a refresh may help.
    Unknown,
}

impl KeySet {
    /// Parses a JWKS document, keeping the keys that can verify one of `allowed`: signature
    /// keys (`use: enc` and keys whose `key_ops` lack `verify` are skipped) of a supported
    /// type and curve whose `alg`, when given, matches their type and is allowed. A set with
    /// no usable key is an error, so a broken answer never replaces good keys.
    pub(crate) fn parse(body: &[u8], allowed: &[Algorithm]) -> Result<Self, String> {
        let doc: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        let Some(entries) = doc.get("keys").and_then(serde_json::Value::as_array) else {
            return Err("not a JWKS: expected {\"keys\": [...]}".into());
        };
        let mut keys = Vec::new();
        let mut skipped = 0usize;
        for entry in entries.iter().take(MAX_KEYS) {
            // One odd key (an encryption key, an unknown curve) must not cost the others.
            match serde_json::from_value::<Jwk>(entry.clone())
                .ok()
                .and_then(|jwk| usable(&jwk, allowed))
            {
                Some(k) => keys.push(k),
                None => skipped += 1,
            }
        }
        if keys.is_empty() {
            let algs: Vec<&str> = allowed
                .iter()
                .map(|a| crate::config::alg_name_of(*a))
                .collect();
            return Err(format!(
                "the JWKS has no key usable for {} ({} keys skipped: wrong use, type, curve or alg)",
                algs.join("/"),
                skipped
            ));
        }
        Ok(KeySet { keys })
    }

    /// Number of usable keys.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The keys that may verify a token with this `kid` and `alg`.
    pub(crate) fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Lookup<'_> {
        let named: Vec<&Key> = match kid {
            Some(kid) => self
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect(),
            None => self.keys.iter().collect(),
        };
        if named.is_empty() {
            return Lookup::Unknown;
        }
        let fit: Vec<&Key> = named.into_iter().filter(|k| k.fits(alg)).collect();
        if fit.is_empty() {
            Lookup::Unfit
        } else {
            Lookup::Keys(fit)
        }
    }
}

/// The JWS algorithm a JWK's `alg` names; `None` for anything else (encryption algorithms).
fn signing_alg(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// The key, if it may verify signatures of one of `allowed`.
fn usable(jwk: &Jwk, allowed: &[Algorithm]) -> Option<Key> {
    let common = &jwk.common;
    if matches!(common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    if let Some(ops) = &common.key_operations
        && !ops.iter().any(|o| matches!(o, KeyOperations::Verify))
    {
        return None;
    }
    let (family, curve) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (AlgorithmFamily::Rsa, None),
        AlgorithmParameters::EllipticCurve(p)
            if matches!(p.curve, EllipticCurve::P256 | EllipticCurve::P384) =>
        {
            (AlgorithmFamily::Ec, Some(p.curve.clone()))
        }
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            (AlgorithmFamily::Ed, None)
        }
        // Symmetric keys never come from a JWKS here; P-521 and others are not supported.
        _ => return None,
    };
    let alg = match common.key_algorithm {
        Some(a) => Some(signing_alg(a)?),
        None => None,
    };
    let key = Key {
        kid: common.key_id.clone(),
        alg,
        family,
        curve,
        key: DecodingKey::from_jwk(jwk).ok()?,
    };
    allowed.iter().any(|a| key.fits(*a)).then_some(key)
}

/// A JWKS source with its cached keys and the refresh task's controls.
pub(crate) struct Jwks {
    inner: Arc<Inner>,
    /// Stops the refresh task when the authenticator goes away.
    _stop: DropGuard,
}

struct Inner {
    source: JwksSource,
    /// The configured `issuer`, which a discovery document must repeat.
    issuer: Option<String>,
    allowed: Vec<Algorithm>,
    refresh: Duration,
    min_interval: Duration,
    timeout: Duration,
    /// Fail start-up when the first fetch fails.
    required: bool,
    /// `ca` (loaded at build); `None`: system roots, loaded at the first https fetch.
    ca: Option<Arc<rustls::ClientConfig>>,
    system_roots: OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
    keys: ArcSwap<KeySet>,
    /// Wakes the task for an on-demand fetch.
    wake: Notify,
    /// Completed fetch attempts (waiters watch it move).
    attempts: watch::Sender<u64>,
    /// The last fetch attempt's error, `None` after a success.
    last_error: Mutex<Option<String>>,
    /// When the last fetch started (or an on-demand one was asked for): the rate limit.
    last_start: Mutex<Option<Instant>>,
    in_flight: AtomicBool,
    /// The set was copied from the authenticator this one replaces (reload).
    seeded: AtomicBool,
    /// Set by [`Jwks::start`]: the authenticator name (logs) and metric handles.
    started: OnceLock<(String, JwksMetrics)>,
    stop: CancellationToken,
}

impl Jwks {
    /// Prepares the source; a `jwks_file` is read now (its problems are config errors at
    /// `jwks_file`), a URL is only fetched once [`start`](Self::start)ed.
    pub(crate) fn build(
        source: &JwksSource,
        cfg: &JwtConfig,
    ) -> Result<Self, (&'static str, String)> {
        let ca = match (&cfg.ca, source) {
            (Some(ca), JwksSource::Url(_) | JwksSource::Discovery(_)) => {
                Some(crate::tls::client_config_with_ca_file(ca).map_err(|e| ("ca", e))?)
            }
            _ => None,
        };
        let keys = match source {
            JwksSource::File(path) => {
                let body = std::fs::read(path)
                    .map_err(|e| ("jwks_file", format!("cannot read {}: {e}", path.display())))?;
                KeySet::parse(&body, &cfg.algorithms)
                    .map_err(|e| ("jwks_file", format!("{}: {e}", path.display())))?
            }
            _ => KeySet::default(),
        };
        let stop = CancellationToken::new();
        Ok(Jwks {
            inner: Arc::new(Inner {
                source: source.clone(),
                issuer: cfg.issuer.clone(),
                allowed: cfg.algorithms.clone(),
                refresh: cfg.jwks_refresh,
                min_interval: cfg.jwks_min_interval,
                timeout: cfg.jwks_timeout,
                required: cfg.jwks_required_at_start,
                ca,
                system_roots: OnceLock::new(),
                keys: ArcSwap::from_pointee(keys),
                wake: Notify::new(),
                attempts: watch::Sender::new(0),
                last_error: Mutex::new(None),
                last_start: Mutex::new(None),
                in_flight: AtomicBool::new(false),
                seeded: AtomicBool::new(matches!(source, JwksSource::File(_))),
                started: OnceLock::new(),
                stop: stop.clone(),
            }),
            _stop: stop.drop_guard(),
        })
    }

    /// The cached keys.
    pub(crate) fn keys(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.inner.keys.load()
    }

    /// Takes over the keys of the authenticator this one replaces, when both read the same
    /// source and this one has none yet: a reload must not leave a gap, nor lose the keys
    /// when the provider happens to be down.
    pub(crate) fn adopt(&self, old: &Jwks) {
        if self.inner.source != old.inner.source || self.inner.allowed != old.inner.allowed {
            return;
        }
        let theirs = old.inner.keys.load_full();
        if theirs.len() > 0 && *self.inner.attempts.borrow() == 0 {
            self.inner.keys.store(theirs);
            self.inner.seeded.store(true, Ordering::Relaxed);
            if let Some(when) = *lock(&old.inner.last_start) {
                *lock(&self.inner.last_start) = Some(when);
            }
        }
    }

    /// Starts the refresh task (once; needs a tokio runtime). `name` labels logs and metrics.
    pub(crate) fn start(&self, name: &str, metrics: &Metrics) {
        // Without a runtime nothing would ever fetch: stay "not started", so handshakes
        // with unknown kids don't wait for a fetch that cannot come.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let handles = metrics.jwks(name);
        handles.keys.set(gauge(self.inner.keys.load().len()));
        if self.inner.started.set((name.to_owned(), handles)).is_err() {
            return;
        }
        runtime.spawn(run(self.inner.clone()));
    }

    /// Stops the refresh task (the authenticator was replaced).
    pub(crate) fn stop(&self) {
        self.inner.stop.cancel();
    }

    /// Waits for the first fetch attempt (at most `jwks_timeout` and a second); its error,
    /// if it failed or did not finish, and whether the config requires it to succeed.
    /// `None` when there is nothing to wait for (a file, or keys adopted on reload).
    pub(crate) async fn first_fetch(&self) -> Option<(String, bool)> {
        if self.inner.seeded.load(Ordering::Relaxed) {
            return None;
        }
        let mut rx = self.inner.attempts.subscribe();
        let wait = self.inner.timeout + Duration::from_secs(1);
        if tokio::time::timeout(wait, rx.wait_for(|n| *n > 0))
            .await
            .is_err()
        {
            return Some((
                format!("no answer within {:?}", self.inner.timeout),
                self.inner.required,
            ));
        }
        lock(&self.inner.last_error)
            .clone()
            .map(|e| (e, self.inner.required))
    }

    /// The config key the source was given under (for messages).
    pub(crate) fn source_key(&self) -> &'static str {
        match self.inner.source {
            JwksSource::Url(_) => "jwks_url",
            JwksSource::File(_) => "jwks_file",
            JwksSource::Discovery(_) => "issuer",
        }
    }

    /// A token named a `kid` we don't have (or we have no keys): asks the task for a fetch
    /// unless one started less than `jwks_min_interval` ago, and waits for the fetch under
    /// way, if any, at most `jwks_timeout`. Returns at once when no fetch will come.
    pub(crate) async fn refresh_for_unknown(&self) {
        let inner = &self.inner;
        if inner.started.get().is_none() || inner.stop.is_cancelled() {
            return;
        }
        let mut rx = inner.attempts.subscribe();
        let seen = *rx.borrow_and_update();
        if !inner.in_flight.load(Ordering::Acquire) {
            let now = Instant::now();
            let mut last = lock(&inner.last_start);
            if last.is_some_and(|t| now.duration_since(t) < inner.min_interval) {
                return;
            }
            // Reserved here, so the rest of a flood sees the limit before the task runs.
            *last = Some(now);
            drop(last);
            inner.wake.notify_one();
        }
        let _ = tokio::time::timeout(inner.timeout, rx.wait_for(|n| *n > seen)).await;
    }
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("source", &self.inner.source)
            .field("keys", &self.inner.keys.load().len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The data (an instant, a message) stays consistent even if a holder panicked.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The refresh task: a fetch now (unless the keys came from a file or a reload), then one
/// per `jwks_refresh`, sooner after failures (from `jwks_min_interval`, doubling), and
/// whenever a handshake asks; ends when the authenticator is dropped or replaced.
async fn run(inner: Arc<Inner>) {
    let mut failures: u32 = 0;
    if !inner.seeded.load(Ordering::Relaxed) && !attempt(&inner).await {
        failures = 1;
    }
    loop {
        let wait = match failures {
            0 => inner.refresh,
            n => inner
                .min_interval
                .saturating_mul(2u32.saturating_pow(n - 1))
                .min(inner.refresh),
        };
        tokio::select! {
            () = inner.stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
            () = inner.wake.notified() => {}
        }
        if attempt(&inner).await {
            failures = 0;
        } else {
            failures = failures.saturating_add(1);
        }
    }
}

/// One fetch; stores the keys on success. Returns whether it succeeded.
async fn attempt(inner: &Inner) -> bool {
    *lock(&inner.last_start) = Some(Instant::now());
    inner.in_flight.store(true, Ordering::Release);
    let result = match tokio::time::timeout(inner.timeout, fetch(inner)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", inner.timeout)),
    };
    let (name, metrics) = match inner.started.get() {
        Some((n, m)) => (n.as_str(), Some(m)),
        None => ("", None),
    };
    let ok = result.is_ok();
    match result {
        Ok(set) => {
            let n = set.len();
            let before = inner.keys.swap(Arc::new(set)).len();
            if let Some(m) = metrics {
                m.ok.inc();
                m.keys.set(gauge(n));
            }
            if lock(&inner.last_error).take().is_some() || before != n {
                tracing::info!(authenticator = name, keys = n, "JWKS loaded");
            }
        }
        Err(e) => {
            if let Some(m) = metrics {
                m.error.inc();
            }
            let mut last = lock(&inner.last_error);
            // Once per failing streak at warn; the cached keys (if any) stay in use.
            if last.is_none() {
                tracing::warn!(
                    authenticator = name,
                    error = %e,
                    cached_keys = inner.keys.load().len(),
                    "JWKS fetch failed; keeping the cached keys and retrying"
                );
            } else {
                tracing::debug!(authenticator = name, error = %e, "JWKS fetch failed again");
            }
            *last = Some(e);
        }
    }
    inner.in_flight.store(false, Ordering::Release);
    inner.attempts.send_modify(|n| *n += 1);
    ok
}

/// Reads the source and parses the keys.
async fn fetch(inner: &Inner) -> Result<KeySet, String> {
    let body = match &inner.source {
        JwksSource::File(path) => read_file(path).await?,
        JwksSource::Url(url) => get(inner, url).await?,
        JwksSource::Discovery(url) => {
            let doc = get(inner, url).await?;
            let jwks_url = jwks_uri(&doc, inner.issuer.as_deref())
                .map_err(|e| format!("{}: {e}", redacted(url)))?;
            get(inner, &jwks_url).await?
        }
    };
    KeySet::parse(&body, &inner.allowed)
}

async fn read_file(path: &Path) -> Result<Bytes, String> {
    tokio::fs::read(path)
        .await
        .map(Bytes::from)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The `jwks_uri` of an OpenID configuration whose `issuer` is ours (OpenID Connect
/// Discovery §4.3: a document for another issuer must not be used).
fn jwks_uri(doc: &[u8], issuer: Option<&str>) -> Result<WebhookUrl, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(doc).map_err(|e| format!("not JSON: {e}"))?;
    let theirs = doc.get("issuer").and_then(serde_json::Value::as_str);
    if theirs != issuer {
        return Err(format!(
            "the OpenID configuration is for issuer {:?}, not {:?}",
            theirs.unwrap_or(""),
            issuer.unwrap_or("")
        ));
    }
    let uri = doc
        .get("jwks_uri")
        .and_then(serde_json::Value::as_str)
        .ok_or("the OpenID configuration has no jwks_uri")?;
    crate::config::jwks_url(uri).map_err(|e| format!("jwks_uri: {e}"))
}

/// `scheme://authority/path` without the query (it may carry a key).
fn redacted(url: &WebhookUrl) -> String {
    let path = url.path_and_query.split('?').next().unwrap_or("");
    let scheme = if url.tls { "https" } else { "http" };
    format!("{scheme}://{}{path}", url.authority)
}

/// One GET over a fresh connection: a 200 with a body of at most [`MAX_DOCUMENT_BYTES`].
/// Redirects are not followed (identity providers serve their keys where they say).
async fn get(inner: &Inner, url: &WebhookUrl) -> Result<Bytes, String> {
    let at = redacted(url);
    let tls = if url.tls {
        Some(match &inner.ca {
            Some(c) => c.clone(),
            None => inner
                .system_roots
                .get_or_init(crate::tls::upstream_client_config)
                .clone()
                .map_err(|e| format!("{at}: system CA roots: {e}"))?,
        })
    } else {
        None
    };
    let server = UpstreamConfig {
        tls: url.tls,
        host: url.host.clone(),
        port: url.port,
        url: url.url.clone(),
    };
    let stream = crate::upstream::connect(&server, tls.as_ref(), inner.timeout)
        .await
        .map_err(|e| format!("{at}: {e}"))?;
    let (mut sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{at}: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = driver.await;
    });
    let req = http::Request::get(url.path_and_query.as_str())
        .header(http::header::HOST, url.authority.as_str())
        .header(http::header::ACCEPT, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("wsgate/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("{at}: {e}"))?;
    let result = async {
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        if status != http::StatusCode::OK {
            return Err(format!("answered {status}"));
        }
        Limited::new(resp.into_body(), MAX_DOCUMENT_BYTES)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| format!("reading the answer: {e}"))
    }
    .await
    .map_err(|e| format!("{at}: {e}"));
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rsa_jwk(kid: &str) -> serde_json::Value {
        // A real 2048-bit modulus is not needed to test selection: parsing only stores it.
        json!({"kty": "RSA", "kid": kid, "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"})
    }

    fn ec_jwk(kid: &str, crv: &str) -> serde_json::Value {
        let kp = rcgen::KeyPair::generate_for(match crv {
            "P-384" => &rcgen::PKCS_ECDSA_P384_SHA384,
            _ => &rcgen::PKCS_ECDSA_P256_SHA256,
        })
        .expect("keygen");
        let enc =
            jsonwebtoken::EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).expect("enc");
        let alg = if crv == "P-384" {
            Algorithm::ES384
        } else {
            Algorithm::ES256
        };
        let mut v =
            serde_json::to_value(Jwk::from_encoding_key(&enc, alg).expect("jwk")).expect("json");
        v["kid"] = json!(kid);
        v
    }

    fn parse(keys: serde_json::Value, allowed: &[Algorithm]) -> Result<KeySet, String> {
        KeySet::parse(json!({ "keys": keys }).to_string().as_bytes(), allowed)
    }

    #[test]
    fn selection_by_kid_alg_use_and_curve() {
        let set = parse(
            json!([
                rsa_jwk("r1"),
                {"use": "enc", "kid": "e1", "kty": "RSA", "n": rsa_jwk("x")["n"], "e": "AQAB"},
                {"alg": "RSA-OAEP", "kid": "e2", "kty": "RSA", "n": rsa_jwk("x")["n"], "e": "AQAB"},
                {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
                {"kty": "weird", "kid": "w"},
                ec_jwk("p256", "P-256"),
                ec_jwk("p384", "P-384"),
            ]),
            &[Algorithm::RS256, Algorithm::ES256, Algorithm::ES384],
        )
        .expect("parse");
        // RSA, P-256 and P-384 survive; enc, RSA-OAEP, oct and unknown types do not.
        assert_eq!(set.len(), 3);
        assert!(matches!(
            set.lookup(Some("r1"), Algorithm::RS256),
            Lookup::Keys(k) if k.len() == 1
        ));
        // An RSA key for PS256 is fine by type; an EC key is not.
        assert!(matches!(
            set.lookup(Some("r1"), Algorithm::PS256),
            Lookup::Keys(_)
        ));
        assert!(matches!(
            set.lookup(Some("r1"), Algorithm::ES256),
            Lookup::Unfit
        ));
        // The curve must match the algorithm; the JWK's own alg pins it too.
        assert!(matches!(
            set.lookup(Some("p384"), Algorithm::ES256),
            Lookup::Unfit
        ));
        assert!(matches!(
            set.lookup(Some("p384"), Algorithm::ES384),
            Lookup::Keys(_)
        ));
        assert!(matches!(
            set.lookup(Some("e1"), Algorithm::RS256),
            Lookup::Unknown
        ));
        assert!(matches!(
            set.lookup(Some("nope"), Algorithm::RS256),
            Lookup::Unknown
        ));
        // No kid: every key of the right type.
        assert!(matches!(
            set.lookup(None, Algorithm::RS256),
            Lookup::Keys(k) if k.len() == 1
        ));
        assert!(matches!(
            KeySet::default().lookup(None, Algorithm::RS256),
            Lookup::Unknown
        ));
    }

    #[test]
    fn key_alg_outside_the_allow_list_is_skipped() {
        let mut k = rsa_jwk("r");
        k["alg"] = json!("RS512");
        let e = parse(json!([k]), &[Algorithm::RS256])
            .err()
            .expect("refused");
        assert!(e.contains("no key usable for RS256"), "{e}");
        let mut k = rsa_jwk("r");
        k["alg"] = json!("ES256");
        assert!(parse(json!([k]), &[Algorithm::RS256, Algorithm::ES256]).is_err());
    }

    #[test]
    fn broken_documents_are_errors() {
        for body in ["", "{}", "[]", "{\"keys\": 1}", "{\"keys\": []}"] {
            assert!(
                KeySet::parse(body.as_bytes(), &[Algorithm::RS256]).is_err(),
                "{body}"
            );
        }
    }

    #[test]
    fn discovery_document_checks_the_issuer() {
        let doc = json!({"issuer": "https://idp.example/realms/a", "jwks_uri": "https://idp.example/certs"})
            .to_string();
        let u = jwks_uri(doc.as_bytes(), Some("https://idp.example/realms/a")).expect("ok");
        assert_eq!(u.path_and_query, "/certs");
        let e = jwks_uri(doc.as_bytes(), Some("https://idp.example/realms/b")).expect_err("other");
        assert!(e.contains("for issuer"), "{e}");
        let doc = json!({"issuer": "x"}).to_string();
        assert!(jwks_uri(doc.as_bytes(), Some("x")).is_err());
    }
}
