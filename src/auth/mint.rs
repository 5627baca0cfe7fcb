//! `wsgate token`: signs a test JWT that the configured HMAC authenticator will admit, so a
//! newcomer can try a JWT route without writing code. Public-key authenticators cannot sign
//! here: their private key belongs to the issuer, not to the gate.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{AlgorithmFamily, EncodingKey, Header};
use serde_json::{Map, Value};

use crate::config::{AuthConfig, Config, JwtConfig, JwtKey};

/// Why no token could be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MintError {
    /// The named authenticator does not exist or is not a JWT one.
    #[error("{0}")]
    NoAuthenticator(String),
    /// A `--claim` is malformed or would override a claim the command sets.
    #[error("{0}")]
    BadClaim(String),
    /// Signing failed (a bug: the key and algorithm were checked).
    #[error("signing failed: {0}")]
    Sign(String),
}

/// Picks the JWT authenticator to sign for: `name` when given, else the only HMAC one.
pub fn signing_authenticator<'c>(
    config: &'c Config,
    name: Option<&str>,
) -> Result<&'c JwtConfig, MintError> {
    let hmac = |c: &JwtConfig| matches!(c.key, JwtKey::Secret(_));
    if let Some(name) = name {
        return match config.auth.get(name) {
            Some(AuthConfig::Jwt(j)) if hmac(j) => Ok(j),
            Some(AuthConfig::Jwt(_)) => Err(MintError::NoAuthenticator(format!(
                "auth.{name} verifies with a public key: tokens for it are signed by its issuer"
            ))),
            Some(_) => Err(MintError::NoAuthenticator(format!(
                "auth.{name} is not a jwt authenticator"
            ))),
            None => Err(MintError::NoAuthenticator(format!(
                "no authenticator named {name:?} under auth:"
            ))),
        };
    }
    let candidates: Vec<(&String, &JwtConfig)> = config
        .auth
        .iter()
        .filter_map(|(n, a)| match a {
            AuthConfig::Jwt(j) if hmac(j) => Some((n, j)),
            _ => None,
        })
        .collect();
    match candidates.as_slice() {
        [(_, j)] => Ok(j),
        [] => Err(MintError::NoAuthenticator(
            "no jwt authenticator with a secret in the config (public-key ones can't sign here)"
                .into(),
        )),
        many => Err(MintError::NoAuthenticator(format!(
            "several jwt authenticators ({}): choose one with --auth",
            many.iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Claims the command always sets; `--claim` may not override them.
const RESERVED: [&str; 3] = ["sub", "exp", "iat"];

/// Signs `{sub, iat, exp = now + ttl}` plus `iss`/`aud` as the authenticator requires them,
/// plus `claims` (`key=value`, the value read as JSON when it parses, else as a string).
pub fn mint(
    jwt: &JwtConfig,
    sub: &str,
    ttl: Duration,
    claims: &[String],
) -> Result<String, MintError> {
    let JwtKey::Secret(secret) = &jwt.key else {
        return Err(MintError::NoAuthenticator(
            "this authenticator verifies with a public key".into(),
        ));
    };
    let alg = jwt
        .algorithms
        .iter()
        .copied()
        .find(|a| a.family() == AlgorithmFamily::Hmac)
        .ok_or_else(|| MintError::NoAuthenticator("no HMAC algorithm allowed".into()))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut extra = BTreeMap::new();
    for c in claims {
        let Some((k, v)) = c.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(MintError::BadClaim(format!(
                "--claim {c:?}: expected key=value"
            )));
        };
        if RESERVED.contains(&k) {
            return Err(MintError::BadClaim(format!(
                "--claim {k}: set by the command (use --sub / --ttl)"
            )));
        }
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()));
        extra.insert(k.to_owned(), value);
    }
    let mut body = Map::new();
    if let Some(iss) = &jwt.issuer {
        body.insert("iss".into(), iss.clone().into());
    }
    if let Some(aud) = jwt.audience.as_ref().and_then(|a| a.first()) {
        body.insert("aud".into(), aud.clone().into());
    }
    body.extend(extra);
    body.insert("sub".into(), sub.into());
    body.insert("iat".into(), now.into());
    body.insert("exp".into(), now.saturating_add(ttl.as_secs()).into());
    jsonwebtoken::encode(
        &Header::new(alg),
        &Value::Object(body),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| MintError::Sign(e.to_string()))
}
