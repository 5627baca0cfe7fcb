//! JWT from a query parameter or `Authorization: Bearer`.
//!
//! Decoding is a signature check plus some JSON: microseconds, so it runs inline.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{AlgorithmFamily, DecodingKey, Validation};

use super::jwks::{Jwks, Lookup};
use super::{AuthFailure, Identity, sources};
use crate::config::{ConfigError, JwtConfig, PublicFamily, TokenSource, VerifyKey};

/// Where verification keys come from.
enum Keys {
    /// One key from `secret`/`secret_file`/`public_key`.
    Static(DecodingKey),
    /// A JWKS; `validations` holds one `Validation` per key family in the allow-list
    /// (jsonwebtoken wants every listed algorithm to fit the key).
    Jwks {
        /// The keys and their refresh.
        jwks: Jwks,
        /// (family, validation allowing only that family's listed algorithms).
        validations: Vec<(AlgorithmFamily, Validation)>,
    },
}

/// A verified token: who, and the headers its claims map to.
#[derive(Debug)]
pub(crate) struct Verified {
    /// The admitted identity.
    pub(crate) identity: Identity,
    /// `claims_to_headers` values for the upstream request.
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
}

/// Upper bound on `leeway`, in seconds.
const MAX_LEEWAY_SECS: u64 = 86_400;

/// A ready JWT authenticator.
pub(crate) struct Jwt {
    /// Verification key(s).
    keys: Keys,
    /// claim → upstream header.
    claim_headers: Vec<(String, HeaderName)>,
    /// The header names of `claim_headers` (client copies are removed upstream).
    owned: Vec<HeaderName>,
    /// Allow-list, leeway, required claims, issuer/audience.
    validation: Validation,
    /// Where the token is looked for, in order (`from:`).
    sources: Vec<TokenSource>,
    /// Longer tokens are refused before any decoding.
    max_token_bytes: usize,
    /// Oldest acceptable `iat`, as an age; `None`: `iat` is not looked at.
    max_token_age: Option<Duration>,
}

impl Jwt {
    /// The query parameters this authenticator reads its token from.
    pub(crate) fn query_params(&self) -> impl Iterator<Item = &str> {
        self.sources.iter().filter_map(|s| match s {
            TokenSource::Query(name) => Some(name.as_str()),
            _ => None,
        })
    }

    /// Where this authenticator reads its token (each is removed before forwarding).
    pub(crate) fn sources(&self) -> &[TokenSource] {
        &self.sources
    }

    /// Loads the key and prepares the validation; error paths are relative to the
    /// authenticator. The config rules (key fits the algorithms, secret length, …) live in
    /// `config::check_jwt`, so a programmatic config gets the same checks and messages.
    pub(crate) fn build(cfg: &JwtConfig) -> Result<Self, Vec<ConfigError>> {
        let sources = crate::config::resolve_token_sources(cfg).map_err(|problems| {
            problems
                .into_iter()
                .map(|(field, m)| ConfigError::new(field, m))
                .collect::<Vec<_>>()
        })?;
        let (first, key) = crate::config::check_jwt(cfg).map_err(|problems| {
            problems
                .into_iter()
                .map(|(field, m)| ConfigError::new(field, m))
                .collect::<Vec<_>>()
        })?;
        let claim_headers = crate::config::claim_headers(cfg).map_err(|problems| {
            problems
                .into_iter()
                .map(|(claim, m)| ConfigError::new(format!("claims_to_headers.{claim}"), m))
                .collect::<Vec<_>>()
        })?;
        let mut jwks_source = None;
        let key = match key {
            VerifyKey::Secret(s) => Some(DecodingKey::from_secret(s)),
            VerifyKey::PublicKey(p, family) => Some(load_public_key(p, family).map_err(|m| {
                vec![ConfigError::new(
                    "public_key",
                    format!("{}: {m}", p.display()),
                )]
            })?),
            VerifyKey::Jwks(source) => {
                jwks_source = Some(source);
                None
            }
        };

        let mut validation = Validation::new(first);
        validation.algorithms = cfg.algorithms.clone();
        // Capped at a day: more is a misconfiguration, and jsonwebtoken computes
        // `now - leeway` in u64, which an absurd leeway would underflow.
        validation.leeway = cfg.leeway.as_secs().min(MAX_LEEWAY_SECS);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        // jsonwebtoken only checks iss/aud when present; a configured value must also be
        // required, or a token could pass by simply omitting the claim.
        if let Some(iss) = &cfg.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match &cfg.audience {
            Some(aud) => {
                validation.set_audience(aud);
                required.push("aud");
            }
            // Otherwise jsonwebtoken would reject every token that carries any `aud`.
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);

        let keys = match (key, jwks_source) {
            (Some(k), _) => Keys::Static(k),
            (None, Some(source)) => {
                let jwks = Jwks::build(source, cfg)
                    .map_err(|(field, m)| vec![ConfigError::new(field, m)])?;
                let mut validations: Vec<(AlgorithmFamily, Validation)> = Vec::new();
                for a in &cfg.algorithms {
                    match validations.iter_mut().find(|(f, _)| *f == a.family()) {
                        Some((_, v)) => v.algorithms.push(*a),
                        None => {
                            let mut v = validation.clone();
                            v.algorithms = vec![*a];
                            validations.push((a.family(), v));
                        }
                    }
                }
                Keys::Jwks { jwks, validations }
            }
            (None, None) => {
                return Err(vec![ConfigError::new("", "no verification key (a bug)")]);
            }
        };
        let owned = claim_headers.iter().map(|(_, h)| h.clone()).collect();

        Ok(Jwt {
            keys,
            claim_headers,
            owned,
            validation,
            sources,
            max_token_bytes: cfg.max_token_bytes,
            max_token_age: cfg.max_token_age,
        })
    }

    /// Header names this authenticator sets upstream (`claims_to_headers`).
    pub(crate) fn owned_headers(&self) -> &[HeaderName] {
        &self.owned
    }

    /// The JWKS, when the keys come from one.
    pub(crate) fn jwks(&self) -> Option<&Jwks> {
        match &self.keys {
            Keys::Jwks { jwks, .. } => Some(jwks),
            Keys::Static(_) => None,
        }
    }

    /// Finds and judges the token. A token in two places (say a Bearer header and a cookie)
    /// is `Malformed`, even the same one twice: which is meant is ambiguous, and whichever we
    /// ignored would reach the upstream.
    pub(crate) async fn check(
        &self,
        headers: &http::HeaderMap,
        query: Option<&str>,
    ) -> Result<Verified, AuthFailure> {
        let mut token: Option<String> = None;
        for source in &self.sources {
            if let Some(found) = sources::find(source, headers, query, self.max_token_bytes)? {
                if token.is_some() {
                    return Err(AuthFailure::Malformed);
                }
                token = Some(found);
            }
        }
        self.verify(&token.ok_or(AuthFailure::Missing)?).await
    }

    /// Signature, then claims. Signature first, so a forger learns nothing about claims.
    pub(crate) async fn verify(&self, token: &str) -> Result<Verified, AuthFailure> {
        if token.is_empty() || token.len() > self.max_token_bytes {
            return Err(AuthFailure::Malformed);
        }
        let claims = match &self.keys {
            Keys::Static(key) => {
                jsonwebtoken::decode::<serde_json::Value>(token, key, &self.validation)
                    .map_err(|e| map_error(e.kind()))?
                    .claims
            }
            Keys::Jwks { jwks, validations } => {
                let header = jsonwebtoken::decode_header(token).map_err(|e| map_error(e.kind()))?;
                let Some((_, validation)) = validations
                    .iter()
                    .find(|(_, v)| v.algorithms.contains(&header.alg))
                else {
                    return Err(AuthFailure::BadSignature);
                };
                let kid = header.kid.as_deref();
                match decode_with(&jwks.keys(), kid, header.alg, token, validation) {
                    Some(r) => r?,
                    None => {
                        // Unknown kid: the only case that may wait for a fetch.
                        jwks.refresh_for_unknown().await;
                        decode_with(&jwks.keys(), kid, header.alg, token, validation)
                            .unwrap_or(Err(AuthFailure::BadSignature))?
                    }
                }
            }
        };
        let user = match claims.get("sub").and_then(serde_json::Value::as_str) {
            Some(s) if !s.is_empty() => s.to_owned(),
            _ => return Err(AuthFailure::BadClaims),
        };
        let expires_at = claims
            .get("exp")
            .and_then(numeric_date)
            .ok_or(AuthFailure::BadClaims)?;
        if let Some(max_age) = self.max_token_age {
            self.check_age(&claims, max_age)?;
        }
        let headers = super::claims::headers(&claims, &self.claim_headers).map_err(|claim| {
            tracing::debug!(
                claim,
                "claim cannot be an upstream header value; token refused"
            );
            AuthFailure::BadClaims
        })?;
        Ok(Verified {
            identity: Identity {
                user,
                expires_at: Some(expires_at),
            },
            headers,
        })
    }
}

/// Decodes `token` with the keys of `set` that fit its `kid` and `alg`: `None` when the set
/// has no key of that `kid` (a refresh may bring it). Without a `kid`, each fitting key is
/// tried until one verifies the signature.
fn decode_with(
    set: &super::jwks::KeySet,
    kid: Option<&str>,
    alg: jsonwebtoken::Algorithm,
    token: &str,
    validation: &Validation,
) -> Option<Result<serde_json::Value, AuthFailure>> {
    let keys = match set.lookup(kid, alg) {
        Lookup::Unknown => return None,
        Lookup::Unfit => return Some(Err(AuthFailure::BadSignature)),
        Lookup::Keys(keys) => keys,
    };
    for k in keys {
        match jsonwebtoken::decode::<serde_json::Value>(token, &k.key, validation) {
            Ok(data) => return Some(Ok(data.claims)),
            // Another key (of a token without kid) may still fit.
            Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {}
            // Past the signature (claims), or the token itself is broken: the verdict.
            Err(e) => return Some(Err(map_error(e.kind()))),
        }
    }
    Some(Err(AuthFailure::BadSignature))
}

impl Jwt {
    /// With `max_token_age`: `iat` must be a NumericDate, not in the future and not older
    /// than the limit, both with the leeway. A future `iat` would never age, so it is refused
    /// as not yet valid rather than letting the limit be skipped.
    fn check_age(&self, claims: &serde_json::Value, max_age: Duration) -> Result<(), AuthFailure> {
        let issued = claims
            .get("iat")
            .and_then(numeric_date)
            .ok_or(AuthFailure::BadClaims)?;
        let leeway = Duration::from_secs(self.validation.leeway);
        let now = SystemTime::now();
        match now.duration_since(issued) {
            Ok(age) if age > max_age.saturating_add(leeway) => Err(AuthFailure::Expired),
            Ok(_) => Ok(()),
            Err(ahead) if ahead.duration() > leeway => Err(AuthFailure::NotYetValid),
            Err(_) => Ok(()),
        }
    }
}

/// A JWT NumericDate (seconds since the epoch, integer or fraction) as a `SystemTime`.
fn numeric_date(v: &serde_json::Value) -> Option<SystemTime> {
    let d = match v.as_u64() {
        Some(secs) => Duration::from_secs(secs),
        None => Duration::try_from_secs_f64(v.as_f64()?).ok()?,
    };
    UNIX_EPOCH.checked_add(d)
}

/// jsonwebtoken's error → our failure reason (the metric label).
fn map_error(kind: &ErrorKind) -> AuthFailure {
    match kind {
        ErrorKind::ExpiredSignature => AuthFailure::Expired,
        ErrorKind::ImmatureSignature => AuthFailure::NotYetValid,
        // InvalidAlgorithm: the header names an algorithm outside the allow-list (this is
        // also how HS256-signed-with-the-public-key confusion attempts end up).
        ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => AuthFailure::BadSignature,
        // Our key could not be used for the token's algorithm (e.g. an ES384 token against
        // a P-256 key): the signature cannot be verified.
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => AuthFailure::BadSignature,
        ErrorKind::InvalidIssuer
        | ErrorKind::InvalidAudience
        | ErrorKind::InvalidSubject
        | ErrorKind::MissingRequiredClaim(_)
        | ErrorKind::InvalidClaimFormat(_) => AuthFailure::BadClaims,
        // Not three parts, bad base64/JSON/UTF-8, unknown `alg` such as "none", …
        _ => AuthFailure::Malformed,
    }
}

/// Reads a PEM public key of the given family.
fn load_public_key(path: &std::path::Path, family: PublicFamily) -> Result<DecodingKey, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    // A private key here means a secret sitting where only public material belongs;
    // refuse rather than silently deriving from it.
    if pem
        .windows(b"PRIVATE KEY-----".len())
        .any(|w| w == b"PRIVATE KEY-----")
    {
        return Err("is a private key; give the PEM public key instead".into());
    }
    let (parsed, kind) = match family {
        PublicFamily::Rsa => (DecodingKey::from_rsa_pem(&pem), "an RSA"),
        PublicFamily::Ec => (DecodingKey::from_ec_pem(&pem), "an EC"),
        PublicFamily::Ed => (DecodingKey::from_ed_pem(&pem), "an Ed25519"),
    };
    parsed.map_err(|_| {
        format!("not {kind} public key in PEM form (as the configured algorithms need)")
    })
}

impl std::fmt::Debug for Jwt {
    // The key stays out of logs (an HMAC secret is a secret).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt")
            .field("algorithms", &self.validation.algorithms)
            .field("sources", &self.sources)
            .field("max_token_bytes", &self.max_token_bytes)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::JwtKey;
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    use serde_json::json;
    use std::io::Write as _;

    pub(crate) const SECRET: &str = "test-secret-test-secret-32bytes!";

    pub(crate) fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
    }

    pub(crate) fn hs_cfg() -> JwtConfig {
        JwtConfig {
            query_param: "token".into(),
            algorithms: vec![Algorithm::HS256],
            key: JwtKey::Secret(SECRET.into()),
            leeway: Duration::from_secs(5),
            ..JwtConfig::default()
        }
    }

    pub(crate) fn hs_token(claims: &serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("encode")
    }

    pub(crate) fn good_claims() -> serde_json::Value {
        json!({"sub": "alice", "exp": now() + 600})
    }

    fn bearer(t: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&format!("Bearer {t}")).expect("header"),
        );
        h
    }

    fn check_bearer(j: &Jwt, t: &str) -> Result<Identity, AuthFailure> {
        check(j, &bearer(t), None)
    }

    /// `Jwt::check` with a static key, which never waits.
    pub(crate) fn check(
        j: &Jwt,
        headers: &http::HeaderMap,
        query: Option<&str>,
    ) -> Result<Identity, AuthFailure> {
        use futures_util::FutureExt as _;
        j.check(headers, query)
            .now_or_never()
            .expect("a static key never waits")
            .map(|v| v.identity)
    }

    fn pem_file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("tempfile");
        f.write_all(text.as_bytes()).expect("write");
        f
    }

    /// An Ed25519 key pair: (private PKCS#8 PEM, public SPKI PEM).
    fn ed25519() -> (String, String) {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("keygen");
        (kp.serialize_pem(), kp.public_key_pem())
    }

    fn ed_cfg(public: &std::path::Path) -> JwtConfig {
        JwtConfig {
            algorithms: vec![Algorithm::EdDSA],
            key: JwtKey::PublicKey(public.to_path_buf()),
            ..hs_cfg()
        }
    }

    #[test]
    fn hs256_valid_in_bearer_header() {
        let j = Jwt::build(&hs_cfg()).expect("build");
        let exp = now() + 600;
        let t = hs_token(&json!({"sub": "alice", "exp": exp}));
        let id = check(&j, &bearer(&t), None).expect("admit");
        assert_eq!(id.user, "alice");
        assert_eq!(id.expires_at, Some(UNIX_EPOCH + Duration::from_secs(exp)));
    }

    #[test]
    fn token_in_query_is_percent_decoded() {
        let j = Jwt::build(&hs_cfg()).expect("build");
        let t = hs_token(&good_claims());
        // Encode the dots and a few letters; the decoded value must verify.
        let enc = t.replace('.', "%2E").replacen('e', "%65", 2);
        let q = format!("a=1&token={enc}&tokens=zzz");
        let id = check(&j, &http::HeaderMap::new(), Some(&q)).expect("admit");
        assert_eq!(id.user, "alice");
    }

    #[test]
    fn duplicate_query_param_and_header_plus_query_are_malformed() {
        let j = Jwt::build(&hs_cfg()).expect("build");
        let t = hs_token(&good_claims());
        let q = format!("token={t}&token={t}");
        assert_eq!(
            check(&j, &http::HeaderMap::new(), Some(&q)).err(),
            Some(AuthFailure::Malformed)
        );
        let q = format!("token={t}");
        assert_eq!(
            check(&j, &bearer(&t), Some(&q)).err(),
            Some(AuthFailure::Malformed)
        );
        assert_eq!(
            check(&j, &http::HeaderMap::new(), Some("token=")).err(),
            Some(AuthFailure::Malformed)
        );
    }

    #[test]
    fn missing_when_no_token() {
        let j = Jwt::build(&hs_cfg()).expect("build");
        assert_eq!(
            check(&j, &http::HeaderMap::new(), Some("a=1&tokens=x")).err(),
            Some(AuthFailure::Missing)
        );
        let mut basic = http::HeaderMap::new();
        basic.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Basic YTpi"),
        );
        assert_eq!(check(&j, &basic, None).err(), Some(AuthFailure::Missing));
    }

    #[test]
    fn expired_and_not_yet_valid() {
        let j = Jwt::build(&hs_cfg()).expect("build");
        let t = hs_token(&json!({"sub": "a", "exp": now() - 60}));
        assert_eq!(check_bearer(&j, &t).err(), Some(AuthFailure::Expired));
        // Within the 5 s leeway: still fine.
        let t = hs_token(&json!({"sub": "a", "exp": now() - 2}));
        assert!(check_bearer(&j, &t).is_ok());
        let t = hs_token(&json!({"sub": "a", "exp": now() + 600, "nbf": now() + 300}));
        assert_eq!(check_bearer(&j, &t).err(), Some(AuthFailure::NotYetValid));
    }

    #[test]
    fn wrong_signature() {
        let j = Jwt::build(&hs_cfg()).expect("build");
        let t = encode(
            &Header::new(Algorithm::HS256),
            &good_claims(),
            &EncodingKey::from_secret(b"another-secret-another-secret-32"),
        )
        .expect("encode");
        assert_eq!(check_bearer(&j, &t).err(), Some(AuthFailure::BadSignature));
        // HS384 is not in the allow-list.
        let t = encode(
            &Header::new(Algorithm::HS384),
            &good_claims(),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("encode");
        assert_eq!(check_bearer(&j, &t).err(), Some(AuthFailure::BadSignature));
    }

    #[test]
    fn alg_none_is_never_accepted() {
        use base64::Engine as _;
        let b64 = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let head = b64(&json!({"alg": "none", "typ": "JWT"}));
        let body = b64(&good_claims());
        let j = Jwt::build(&hs_cfg()).expect("build");
        for t in [format!("{head}.{body}."), format!("{head}.{body}")] {
            assert_eq!(
                check_bearer(&j, &t).err(),
                Some(AuthFailure::Malformed),
                "{t}"
            );
        }
    }

    #[test]
    fn malformed_shapes() {
        let j = Jwt::build(&hs_cfg()).expect("build");
        for t in ["abc", "a.b.c", "a.b.c.d", "!!!.???.###"] {
            assert_eq!(
                check_bearer(&j, t).err(),
                Some(AuthFailure::Malformed),
                "{t}"
            );
        }
    }

    #[test]
    fn oversized_token_is_malformed() {
        let cfg = JwtConfig {
            max_token_bytes: 64,
            ..hs_cfg()
        };
        let j = Jwt::build(&cfg).expect("build");
        let t = hs_token(&good_claims());
        assert!(t.len() > 64);
        assert_eq!(check_bearer(&j, &t).err(), Some(AuthFailure::Malformed));
        let q = format!("token={t}");
        assert_eq!(
            check(&j, &http::HeaderMap::new(), Some(&q)).err(),
            Some(AuthFailure::Malformed)
        );
    }

    #[test]
    fn claims_checks() {
        let cfg = JwtConfig {
            issuer: Some("https://auth.example".into()),
            audience: Some(vec!["chat".into(), "other".into()]),
            ..hs_cfg()
        };
        let j = Jwt::build(&cfg).expect("build");
        let base = |extra: serde_json::Value| {
            let mut c = json!({"sub": "alice", "exp": now() + 600,
                               "iss": "https://auth.example", "aud": "chat"});
            if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
                for (k, v) in e {
                    if v.is_null() {
                        c.remove(k);
                    } else {
                        c.insert(k.clone(), v.clone());
                    }
                }
            }
            hs_token(&c)
        };
        assert!(check_bearer(&j, &base(json!({}))).is_ok());
        assert!(check_bearer(&j, &base(json!({"aud": ["x", "other"]}))).is_ok());
        for (what, extra) in [
            ("wrong aud", json!({"aud": "nope"})),
            ("missing aud", json!({"aud": null})),
            ("wrong iss", json!({"iss": "https://evil.example"})),
            ("missing iss", json!({"iss": null})),
            ("missing sub", json!({"sub": null})),
            ("empty sub", json!({"sub": ""})),
            ("numeric sub", json!({"sub": 42})),
            ("string exp", json!({"exp": "tomorrow"})),
            ("missing exp", json!({"exp": null})),
        ] {
            assert_eq!(
                check_bearer(&j, &base(extra)).err(),
                Some(AuthFailure::BadClaims),
                "{what}"
            );
        }
    }

    #[test]
    fn aud_is_ignored_when_not_configured() {
        let j = Jwt::build(&hs_cfg()).expect("build");
        let t = hs_token(&json!({"sub": "a", "exp": now() + 60, "aud": "whatever"}));
        assert!(check_bearer(&j, &t).is_ok());
    }

    #[test]
    fn eddsa_valid_and_confusion_refused() {
        let (private, public) = ed25519();
        let f = pem_file(&public);
        let j = Jwt::build(&ed_cfg(f.path())).expect("build");
        let exp = now() + 600;
        let t = encode(
            &Header::new(Algorithm::EdDSA),
            &json!({"sub": "bob", "exp": exp}),
            &EncodingKey::from_ed_pem(private.as_bytes()).expect("enc key"),
        )
        .expect("encode");
        let id = check_bearer(&j, &t).expect("admit");
        assert_eq!(id.user, "bob");

        // Key confusion: HS256 "signed" with the public key's bytes must not pass.
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "bob", "exp": exp}),
            &EncodingKey::from_secret(public.as_bytes()),
        )
        .expect("encode");
        assert_eq!(
            check_bearer(&j, &forged).err(),
            Some(AuthFailure::BadSignature)
        );

        // Signed by another Ed25519 key.
        let (other, _) = ed25519();
        let t = encode(
            &Header::new(Algorithm::EdDSA),
            &json!({"sub": "bob", "exp": exp}),
            &EncodingKey::from_ed_pem(other.as_bytes()).expect("enc key"),
        )
        .expect("encode");
        assert_eq!(check_bearer(&j, &t).err(), Some(AuthFailure::BadSignature));
    }

    #[test]
    fn es256_valid() {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
        let f = pem_file(&kp.public_key_pem());
        let cfg = JwtConfig {
            algorithms: vec![Algorithm::ES256],
            key: JwtKey::PublicKey(f.path().to_path_buf()),
            ..hs_cfg()
        };
        let j = Jwt::build(&cfg).expect("build");
        let t = encode(
            &Header::new(Algorithm::ES256),
            &good_claims(),
            &EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).expect("enc key"),
        )
        .expect("encode");
        assert_eq!(check_bearer(&j, &t).expect("admit").user, "alice");
    }

    /// A JWKS file authenticator mixes key families and never waits when nothing fetches.
    #[tokio::test]
    async fn jwks_file_keys_by_kid_across_families() {
        use base64::Engine as _;
        use jsonwebtoken::jwk::Jwk;
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
        let ec_enc = EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).expect("enc");
        let mut ec_jwk =
            serde_json::to_value(Jwk::from_encoding_key(&ec_enc, Algorithm::ES256).expect("jwk"))
                .expect("json");
        ec_jwk["kid"] = json!("ec");
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("keygen");
        let ed_enc = EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).expect("enc");
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ed.public_key_raw());
        let ed_jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "ed"});
        let f = pem_file(&json!({"keys": [ec_jwk, ed_jwk]}).to_string());
        let cfg = JwtConfig {
            algorithms: vec![Algorithm::ES256, Algorithm::EdDSA],
            key: JwtKey::Jwks(crate::config::JwksSource::File(f.path().to_path_buf())),
            ..hs_cfg()
        };
        let j = Jwt::build(&cfg).expect("build");
        let token = |alg, kid: &str, key: &EncodingKey| {
            let mut h = Header::new(alg);
            h.kid = Some(kid.into());
            encode(&h, &good_claims(), key).expect("encode")
        };
        let j = &j;
        let ok =
            |t: String| async move { j.check(&bearer(&t), None).await.map(|v| v.identity.user) };
        assert_eq!(
            ok(token(Algorithm::ES256, "ec", &ec_enc)).await,
            Ok("alice".into())
        );
        assert_eq!(
            ok(token(Algorithm::EdDSA, "ed", &ed_enc)).await,
            Ok("alice".into())
        );
        // Wrong key for the kid, unknown kid (no refresh task: refused at once).
        let start = tokio::time::Instant::now();
        assert_eq!(
            ok(token(Algorithm::EdDSA, "ec", &ed_enc)).await,
            Err(AuthFailure::BadSignature)
        );
        assert_eq!(
            ok(token(Algorithm::ES256, "nope", &ec_enc)).await,
            Err(AuthFailure::BadSignature)
        );
        assert!(start.elapsed() < Duration::from_secs(1));
        // HS256 is never accepted with a JWKS, even with a key's bytes as the secret.
        let cfg = JwtConfig {
            algorithms: vec![Algorithm::HS256],
            ..cfg
        };
        assert_eq!(Jwt::build(&cfg).expect_err("hs")[0].path, "algorithms");
    }

    #[test]
    fn max_token_age_checks_iat() {
        let cfg = JwtConfig {
            max_token_age: Some(Duration::from_secs(60)),
            ..hs_cfg()
        };
        let j = Jwt::build(&cfg).expect("build");
        let exp = now() + 3600;
        let t = |iat: serde_json::Value| hs_token(&json!({"sub": "a", "exp": exp, "iat": iat}));
        assert!(check_bearer(&j, &t(json!(now()))).is_ok());
        // 60 s limit + 5 s leeway.
        assert!(check_bearer(&j, &t(json!(now() - 63))).is_ok());
        assert_eq!(
            check_bearer(&j, &t(json!(now() - 70))).err(),
            Some(AuthFailure::Expired)
        );
        assert!(check_bearer(&j, &t(json!(now() + 3))).is_ok());
        assert_eq!(
            check_bearer(&j, &t(json!(now() + 60))).err(),
            Some(AuthFailure::NotYetValid)
        );
        for bad in [json!("now"), json!(-5), json!(null)] {
            assert_eq!(
                check_bearer(&j, &t(bad)).err(),
                Some(AuthFailure::BadClaims)
            );
        }
        let no_iat = hs_token(&json!({"sub": "a", "exp": exp}));
        assert_eq!(
            check_bearer(&j, &no_iat).err(),
            Some(AuthFailure::BadClaims)
        );
        // Without the limit, `iat` is not looked at.
        let j = Jwt::build(&hs_cfg()).expect("build");
        assert!(check_bearer(&j, &no_iat).is_ok());
        assert!(check_bearer(&j, &t(json!(now() - 86_400))).is_ok());
    }

    #[test]
    fn config_rules_apply_to_a_programmatic_config() {
        let cfg = JwtConfig {
            key: JwtKey::Secret("dev-only-secret".into()),
            ..hs_cfg()
        };
        let errs = Jwt::build(&cfg).expect_err("short secret");
        assert_eq!(errs[0].path, "secret");
        assert!(
            errs[0].message.contains("at least 32 bytes (got 15)"),
            "{}",
            errs[0].message
        );
        let cfg = JwtConfig {
            max_token_age: Some(Duration::ZERO),
            ..hs_cfg()
        };
        assert_eq!(
            Jwt::build(&cfg).expect_err("zero age")[0].path,
            "max_token_age"
        );
        let cfg = JwtConfig {
            algorithms: vec![],
            ..hs_cfg()
        };
        assert_eq!(
            Jwt::build(&cfg).expect_err("no algorithms")[0].path,
            "algorithms"
        );
    }

    #[test]
    fn build_errors() {
        // Wrong kind of PEM for the algorithm family.
        let (private, public) = ed25519();
        let f = pem_file(&public);
        let cfg = JwtConfig {
            algorithms: vec![Algorithm::RS256],
            ..ed_cfg(f.path())
        };
        let errs = Jwt::build(&cfg).expect_err("fails");
        assert_eq!(errs[0].path, "public_key");
        assert!(
            errs[0].message.contains("not an RSA public key"),
            "{}",
            errs[0].message
        );
        // A private key where the public one belongs.
        let fp = pem_file(&private);
        let errs = Jwt::build(&ed_cfg(fp.path())).expect_err("fails");
        assert_eq!(errs[0].path, "public_key");
        assert!(
            errs[0].message.contains("private key"),
            "{}",
            errs[0].message
        );
        // Missing file.
        let errs =
            Jwt::build(&ed_cfg(std::path::Path::new("/nonexistent/k.pem"))).expect_err("fails");
        assert_eq!(errs[0].path, "public_key");
        // Mixed families.
        let cfg = JwtConfig {
            algorithms: vec![Algorithm::EdDSA, Algorithm::ES256],
            ..ed_cfg(f.path())
        };
        assert_eq!(Jwt::build(&cfg).expect_err("fails")[0].path, "algorithms");
        // Secret with asymmetric algorithms, public key with HS*.
        let cfg = JwtConfig {
            algorithms: vec![Algorithm::RS256],
            ..hs_cfg()
        };
        assert_eq!(Jwt::build(&cfg).expect_err("fails")[0].path, "secret");
        let cfg = JwtConfig {
            algorithms: vec![Algorithm::HS256],
            ..ed_cfg(f.path())
        };
        assert_eq!(Jwt::build(&cfg).expect_err("fails")[0].path, "public_key");
    }
}
