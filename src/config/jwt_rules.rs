//! The rules a `type: jwt` authenticator must satisfy, in one place: the config walker
//! reports them under their YAML paths, and `auth::jwt` builds only from what they return,
//! so a programmatic [`JwtConfig`] gets the same checks and the same messages.

use std::path::Path;

use jsonwebtoken::{Algorithm, AlgorithmFamily};

use super::types::{JwksSource, JwtConfig, JwtKey};

/// Algorithm names in the order they are listed in messages.
pub(crate) const ALGORITHMS: &[(&str, Algorithm)] = &[
    ("HS256", Algorithm::HS256),
    ("HS384", Algorithm::HS384),
    ("HS512", Algorithm::HS512),
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
    ("EdDSA", Algorithm::EdDSA),
];

/// Shortest accepted HMAC secret. RFC 7518 §3.2 asks for at least the hash size (32 bytes
/// for HS256); anything shorter can be brute-forced offline from a single token.
pub(crate) const MIN_HMAC_SECRET_BYTES: usize = 32;

/// The key family of an asymmetric algorithm allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PublicFamily {
    /// RS*/PS*.
    Rsa,
    /// ES*.
    Ec,
    /// EdDSA.
    Ed,
}

/// What a valid JWT authenticator verifies with.
#[derive(Debug)]
pub(crate) enum VerifyKey<'a> {
    /// An HMAC secret of at least [`MIN_HMAC_SECRET_BYTES`].
    Secret(&'a [u8]),
    /// A PEM public key file of this family.
    PublicKey(&'a Path, PublicFamily),
    /// Public keys from a JWKS; each key says its own family.
    Jwks(&'a JwksSource),
}

/// Checks `cfg`; returns the first allowed algorithm and the key to verify with, or every
/// problem as (field under the authenticator, message). Messages never quote a secret.
pub(crate) fn check(
    cfg: &JwtConfig,
) -> Result<(Algorithm, VerifyKey<'_>), Vec<(&'static str, String)>> {
    let mut problems = Vec::new();
    if cfg.max_token_age.is_some_and(|d| d.is_zero()) {
        problems.push((
            "max_token_age",
            "must be longer than 0s (omit the key for no limit)".to_string(),
        ));
    }
    let Some(&first) = cfg.algorithms.first() else {
        problems.push((
            "algorithms",
            "at least one algorithm is required".to_string(),
        ));
        return Err(problems);
    };
    let family = first.family();
    if let JwtKey::Jwks(source) = &cfg.key {
        // A JWKS holds one key per family it serves, so families may mix; but it publishes
        // public keys only, and an HMAC secret must never be read from one.
        if let Some(h) = cfg
            .algorithms
            .iter()
            .find(|a| a.family() == AlgorithmFamily::Hmac)
        {
            problems.push((
                "algorithms",
                format!(
                    "{} verifies with a shared secret, which a JWKS does not carry: \
                     list only RS*/PS*/ES*/EdDSA algorithms with a JWKS",
                    alg_name(*h)
                ),
            ));
        }
        return if problems.is_empty() {
            Ok((first, VerifyKey::Jwks(source)))
        } else {
            Err(problems)
        };
    }
    // One authenticator holds one key, and one key verifies one family.
    if let Some(other) = cfg.algorithms.iter().find(|a| a.family() != family) {
        problems.push((
            "algorithms",
            format!(
                "algorithms of different key families cannot be mixed ({} is {}, {} is {}): \
                 one authenticator has one key; define a second authenticator for the other family",
                alg_name(first),
                family_name(family),
                alg_name(*other),
                family_name(other.family()),
            ),
        ));
        return Err(problems);
    }
    let key = match (&cfg.key, public_family(family)) {
        (JwtKey::Secret(s), None) => {
            if s.len() < MIN_HMAC_SECRET_BYTES {
                problems.push((
                    "secret",
                    format!(
                        "an HMAC secret must be at least {MIN_HMAC_SECRET_BYTES} bytes (got {}); \
                         generate one with `openssl rand -base64 48`",
                        s.len()
                    ),
                ));
            }
            VerifyKey::Secret(s.as_bytes())
        }
        (JwtKey::Secret(_), Some(_)) => {
            problems.push((
                "secret",
                format!(
                    "{} verifies with a public key, not a shared secret: \
                     use public_key (a PEM file) instead of secret",
                    alg_name(first)
                ),
            ));
            return Err(problems);
        }
        (JwtKey::PublicKey(_), None) => {
            problems.push((
                "public_key",
                format!(
                    "{} verifies with a shared secret, not a public key: \
                     use secret instead of public_key",
                    alg_name(first)
                ),
            ));
            return Err(problems);
        }
        (JwtKey::PublicKey(p), Some(f)) => VerifyKey::PublicKey(p, f),
        // Handled above.
        (JwtKey::Jwks(source), _) => VerifyKey::Jwks(source),
    };
    if problems.is_empty() {
        Ok((first, key))
    } else {
        Err(problems)
    }
}

fn public_family(f: AlgorithmFamily) -> Option<PublicFamily> {
    match f {
        AlgorithmFamily::Hmac => None,
        AlgorithmFamily::Rsa => Some(PublicFamily::Rsa),
        AlgorithmFamily::Ec => Some(PublicFamily::Ec),
        AlgorithmFamily::Ed => Some(PublicFamily::Ed),
    }
}

/// The name of `a` as written in the config.
pub(crate) fn alg_name(a: Algorithm) -> &'static str {
    ALGORITHMS
        .iter()
        .find(|(_, x)| *x == a)
        .map_or("this algorithm", |(n, _)| n)
}

fn family_name(f: AlgorithmFamily) -> &'static str {
    match f {
        AlgorithmFamily::Hmac => "HMAC",
        AlgorithmFamily::Rsa => "RSA",
        AlgorithmFamily::Ec => "EC",
        AlgorithmFamily::Ed => "EdDSA",
    }
}

/// Parses an algorithm name (case-sensitive, as JWT `alg` values are); `none` never passes.
pub(crate) fn parse_algorithm(name: &str) -> Result<(&'static str, Algorithm), String> {
    if name.eq_ignore_ascii_case("none") {
        return Err("algorithm \"none\" is never accepted".to_string());
    }
    if let Some(found) = ALGORITHMS.iter().find(|(n, _)| *n == name) {
        return Ok(*found);
    }
    let valid = ALGORITHMS
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ");
    // A near miss is pointed out rather than accepted.
    let hint = ALGORITHMS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(n, _)| format!("did you mean \"{n}\"? "))
        .unwrap_or_default();
    Err(format!(
        "unknown algorithm \"{}\" ({hint}valid: {valid})",
        name.escape_debug()
    ))
}

/// Header names a claim may not be mapped to: the gateway sets them itself, they carry
/// credentials, or they are part of the HTTP/WebSocket handshake.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "authorization",
    "proxy-authorization",
    "cookie",
    "connection",
    "upgrade",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "content-length",
    "forwarded",
    "x-real-ip",
    "x-auth-user",
];

/// `claims_to_headers` checked: (claim, header) pairs.
pub(crate) type ClaimHeaders = Vec<(String, http::HeaderName)>;

/// Checks `claims_to_headers`: each target a valid header name that the gateway does not own,
/// each used once. Returns (claim, header) pairs, or every problem as (claim, message).
pub(crate) fn claim_headers(cfg: &JwtConfig) -> Result<ClaimHeaders, Vec<(String, String)>> {
    let mut out: Vec<(String, http::HeaderName)> = Vec::new();
    let mut problems = Vec::new();
    for (claim, header) in &cfg.claims_to_headers {
        if claim.is_empty() {
            problems.push((claim.clone(), "a claim name must not be empty".to_string()));
            continue;
        }
        let Ok(name) = http::HeaderName::from_bytes(header.as_bytes()) else {
            problems.push((
                claim.clone(),
                format!("\"{}\" is not a valid header name", header.escape_debug()),
            ));
            continue;
        };
        let lower = name.as_str();
        if RESERVED_HEADERS.contains(&lower)
            || lower.starts_with("sec-websocket-")
            || lower.starts_with("x-forwarded-")
            || lower.starts_with("proxy-")
        {
            problems.push((
                claim.clone(),
                format!(
                    "{header} is set by the gateway or part of the HTTP handshake: \
                     choose another name (e.g. X-Auth-Role)"
                ),
            ));
            continue;
        }
        if let Some((other, _)) = out.iter().find(|(_, n)| *n == name) {
            problems.push((
                claim.clone(),
                format!(
                    "{header} is already the header of claim \"{}\"",
                    other.escape_debug()
                ),
            ));
            continue;
        }
        out.push((claim.clone(), name));
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}
