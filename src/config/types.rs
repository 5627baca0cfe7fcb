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
    /// Peers whose `X-Forwarded-For` is believed; `None` = append to whatever the client sent.
    pub trusted_proxies: Option<Vec<ipnet::IpNet>>,
    /// Pass client header names containing `_` (except twins of gateway headers); default off.
    pub underscores_in_headers: bool,
    /// Match routes ignoring ASCII letter case (default false: case-sensitive, and a path
    /// whose route would change if case were ignored is refused).
    pub case_insensitive_paths: bool,
}

/// One accepting socket, plain or TLS.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// Address to bind, e.g. `0.0.0.0:8443`.
    pub bind: SocketAddr,
    /// TLS material; `None` for a plain ws:// listener.
    pub tls: Option<TlsFiles>,
    /// Expect a PROXY protocol v1/v2 header before anything else (opt-in).
    pub proxy_protocol: bool,
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
#[derive(Clone, PartialEq)]
pub struct AdminConfig {
    /// Address to bind.
    pub bind: SocketAddr,
    /// Bearer token that mutating admin calls must present; `None` = loopback peers only.
    pub token: Option<String>,
    /// Open admin connections at once (default 16); more are closed at accept.
    pub max_connections: usize,
}

impl std::fmt::Debug for AdminConfig {
    // The token must never reach logs, even through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("bind", &self.bind)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// Default `admin.max_connections`: a scraper, a few operators and their scripts.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 16;
/// Shortest accepted `admin.token`: it is the only thing between the network and `/reload`.
pub const MIN_ADMIN_TOKEN_BYTES: usize = 16;

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
    /// When set, `iat` is required and a token issued longer ago (plus leeway) is refused.
    pub max_token_age: Option<Duration>,
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
    /// Where accepted requests go: one or more servers (a pool).
    pub upstreams: Vec<UpstreamConfig>,
    /// How a pool picks a server.
    pub balance: Balance,
    /// CA file trusted for `wss://` upstreams instead of the system roots.
    pub ca: Option<PathBuf>,
    /// Allowed browser `Origin`s; `None` = any origin.
    pub origins: Option<Vec<OriginPattern>>,
    /// Names of authenticators (keys of `Config::auth`); empty = open route.
    pub auth: Vec<String>,
}

/// How a route with several upstream servers picks one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Next healthy server in turn.
    RoundRobin,
    /// The healthy server with the fewest open connections.
    LeastConnections,
    /// Same client IP → same server while it is healthy (Socket.IO polling needs this).
    ClientIp,
}

/// One allowed `Origin`: exact, or `scheme://*.domain[:port]` for any subdomain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    /// Compared case-insensitively with the whole `Origin` header.
    Exact(String),
    /// `scheme://` + any non-empty subdomain label(s) + `.suffix` (+ port as written).
    Wildcard {
        /// e.g. `https://`
        scheme: String,
        /// e.g. `.example.com` (with the leading dot), including `:port` if given.
        suffix: String,
    },
}

impl OriginPattern {
    /// Whether a browser `Origin` value matches.
    pub fn matches(&self, origin: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        match self {
            OriginPattern::Exact(o) => origin == *o,
            OriginPattern::Wildcard { scheme, suffix } => origin
                .strip_prefix(scheme.as_str())
                .and_then(|rest| rest.strip_suffix(suffix.as_str()))
                .is_some_and(|label| {
                    !label.is_empty()
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                        && !label.starts_with('.')
                        && !label.ends_with('.')
                }),
        }
    }
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
    /// A tunnel with no bytes either way for this long is closed (default 1h; 0 = never).
    pub tunnel_idle: Duration,
    /// How long a pool server that failed to connect is skipped (default 10s).
    pub upstream_retry: Duration,
}

/// `limits:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    /// Open client connections across all listeners (default 10000).
    pub max_connections: usize,
    /// Concurrent password-hash verifications (default: number of CPUs).
    pub max_concurrent_hashes: usize,
    /// Password hashes in flight (running or queued) per client (default 2; 0 = unlimited).
    pub max_hashes_per_ip: usize,
    /// Open connections per client (default 0 = unlimited; see the README's hardened profile).
    pub max_connections_per_ip: usize,
    /// Sustained upgrades and authenticated requests per second per client (default 0 = off).
    pub handshake_rate_per_ip: u32,
    /// Burst of requests allowed above the rate (default 40).
    pub handshake_burst_per_ip: u32,
    /// IPv6 clients are grouped by this prefix length for per-client limits (default 64).
    pub ipv6_prefix: u8,
    /// Connections accepted but not yet past their first request (default 1024).
    pub max_pending_handshakes: usize,
}
