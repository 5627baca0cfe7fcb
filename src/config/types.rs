//! The typed, validated configuration: what the rest of wsgate reads.
//!
//! Every value here has already been checked by `config::parse`; consumers never
//! re-validate. Paths are already resolved against the config file's directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The whole gateway configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the config was read from (for reloads and messages).
    pub source: PathBuf,
    /// At least one listener.
    pub listeners: Vec<ListenerConfig>,
    /// The admin listener (metrics, health); `None` when the `admin` key is absent.
    pub admin: Option<AdminConfig>,
    /// Named authenticators, referenced by routes.
    pub auth: BTreeMap<String, AuthConfig>,
    /// At least one route; matched by longest segment-aware path prefix.
    pub routes: Vec<RouteConfig>,
    /// Drain behaviour on SIGTERM/SIGINT.
    pub shutdown: ShutdownConfig,
    /// Timeouts that bound every phase before the splice.
    pub timeouts: TimeoutsConfig,
    /// Resource limits.
    pub limits: LimitsConfig,
}

/// One accepting socket, plain or TLS.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// Address to bind, e.g. `0.0.0.0:8443`.
    pub bind: SocketAddr,
    /// TLS material; `None` for a plain ws:// listener.
    pub tls: Option<TlsFiles>,
}

/// Certificate chain and key files for a TLS listener.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key: PKCS#8, PKCS#1 or SEC1.
    pub key: PathBuf,
}

/// The admin listener.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// Address to bind.
    pub bind: SocketAddr,
}

/// One named authenticator.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthConfig {
    /// HTTP Basic against an htpasswd file.
    Basic(BasicConfig),
    /// A JWT from a query parameter or `Authorization: Bearer`.
    Jwt(JwtConfig),
}

/// `type: basic`.
#[derive(Debug, Clone, PartialEq)]
pub struct BasicConfig {
    /// Realm sent in `WWW-Authenticate` (default `wsgate`).
    pub realm: String,
    /// htpasswd file with bcrypt or argon2id hashes.
    pub htpasswd: PathBuf,
    /// How long a verified user/password pair is remembered (default 60s; 0 disables).
    pub cache_ttl: Duration,
}

/// `type: jwt`.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtConfig {
    /// Query parameter carrying the token (default `token`).
    pub query_param: String,
    /// Allowed algorithms; non-empty, all of one key family (HMAC, or asymmetric).
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// Verification key.
    pub key: JwtKey,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Accepted `aud` values (any one matches), when set.
    pub audience: Option<Vec<String>>,
    /// Clock skew allowed on `exp`/`nbf` (default 30s).
    pub leeway: Duration,
    /// Tokens longer than this are refused as malformed before decoding (default 8192).
    pub max_token_bytes: usize,
}

/// Where a JWT verification key comes from.
#[derive(Clone, PartialEq)]
pub enum JwtKey {
    /// Shared secret for HS256/384/512 (the string's UTF-8 bytes).
    Secret(String),
    /// PEM public key file for RS*/PS*/ES*/EdDSA.
    PublicKey(PathBuf),
}

impl std::fmt::Debug for JwtKey {
    // Secrets must never reach logs, even through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwtKey::Secret(_) => f.write_str("Secret(<redacted>)"),
            JwtKey::PublicKey(p) => f.debug_tuple("PublicKey").field(p).finish(),
        }
    }
}

/// One route: a path prefix, an upstream and the authenticators that guard it.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// Path prefix: starts with `/`, no trailing `/` (except the root `/`), no `?`/`#`.
    pub path: String,
    /// Where accepted requests go.
    pub upstream: UpstreamConfig,
    /// Names of authenticators (keys of `Config::auth`); empty = open route.
    pub auth: Vec<String>,
}

/// A parsed `ws://` / `wss://` upstream URL.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// `true` for `wss://`.
    pub tls: bool,
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// Port (defaults 80 / 443).
    pub port: u16,
    /// The URL as written, for messages.
    pub url: String,
}

/// `shutdown:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct ShutdownConfig {
    /// How long open connections may finish after SIGTERM (default 30s).
    pub drain_timeout: Duration,
}

/// `timeouts:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeoutsConfig {
    /// TLS handshake (default 10s).
    pub tls_handshake: Duration,
    /// Reading the request head (default 10s).
    pub request_header: Duration,
    /// TCP (+TLS) connect to the upstream (default 5s); exceeded = 504.
    pub upstream_connect: Duration,
    /// Waiting for the upstream's response head (default 30s); exceeded = 504.
    pub upstream_response: Duration,
}

/// `limits:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    /// Open client connections across all listeners (default 10000).
    pub max_connections: usize,
    /// Concurrent password-hash verifications (default: number of CPUs).
    pub max_concurrent_hashes: usize,
}
