//! The configuration's shape: one struct per YAML section, and the one place each key and
//! its default are written.
//!
//! The same types give serde's deserializer, the JSON Schema (`wsgate config-schema`; field
//! doc comments become its descriptions) and the typed [`Config`] the rest of wsgate reads.
//! Every value here has already been checked by the schema walk and `semantic`; consumers
//! never re-validate. Paths are already resolved against the config file's directory.
//!
//! Adding a key:
//! 1. a field with a one-line doc comment (it becomes the schema description), its serde/schema
//!    leaf type from `leaf` when it is not a plain string/number/bool;
//! 2. its default in the section's `impl Default` (one line), unless it is required (then
//!    list it in the section's `extend("required" = ...)`);
//! 3. its line in README.md's configuration reference, then `cargo run -- config-schema >
//!    config.schema.json`.
//!
//! Cross-field rules (conflicting binds, references between sections) go in `semantic.rs`;
//! a file name must also be resolved there (`resolve_files`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use super::leaf;

/// The whole gateway configuration.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[schemars(
    title = "wsgate configuration",
    extend("required" = ["listeners", "routes"])
)]
pub struct Config {
    /// Where the config was read from (for reloads and messages).
    #[serde(skip)]
    pub source: PathBuf,
    /// Accepting sockets, plain or TLS; at least one.
    #[schemars(extend("minItems" = 1, "errorMessage" = {"minItems": "at least one listener is required"}))]
    pub listeners: Vec<ListenerConfig>,
    /// The admin listener (/metrics, /healthz, /readyz, admin API); absent = no admin listener.
    pub admin: Option<AdminConfig>,
    /// Named authenticators, referenced by routes.
    pub auth: BTreeMap<String, AuthConfig>,
    /// Path prefix → upstream; at least one; longest segment-aware prefix wins.
    #[schemars(extend("minItems" = 1, "errorMessage" = {"minItems": "at least one route is required"}))]
    pub routes: Vec<RouteConfig>,
    /// Drain behaviour on SIGTERM/SIGINT.
    pub shutdown: ShutdownConfig,
    /// Close codes the gateway sends when it ends a tracked tunnel.
    pub close_codes: CloseCodes,
    /// Timeouts that bound every phase before the splice.
    pub timeouts: TimeoutsConfig,
    /// Resource limits.
    pub limits: LimitsConfig,
    /// Peers (IPs or CIDRs) whose X-Forwarded-For / Forwarded / PROXY headers are believed.
    #[serde(with = "leaf::cidrs")]
    #[schemars(with = "Option<Vec<leaf::Cidr>>")]
    pub trusted_proxies: Option<Vec<ipnet::IpNet>>,
    /// Pass client header names containing `_` (except twins of gateway headers).
    pub underscores_in_headers: bool,
    /// Match routes ignoring ASCII letter case (otherwise a path whose route would change if
    /// case were ignored is refused).
    pub case_insensitive_paths: bool,
    /// Cluster mode: share presence, per-user limits, kicks and pushes with other instances
    /// through Redis; absent = this instance alone.
    pub cluster: Option<ClusterConfig>,
}

impl Default for Config {
    // listeners and routes are required: these empty lists are only placeholders while
    // problems are collected.
    fn default() -> Self {
        Self {
            source: PathBuf::new(),
            listeners: Vec::new(),
            admin: None,
            auth: BTreeMap::new(),
            routes: Vec::new(),
            shutdown: ShutdownConfig::default(),
            close_codes: CloseCodes::default(),
            timeouts: TimeoutsConfig::default(),
            limits: LimitsConfig::default(),
            trusted_proxies: None,
            underscores_in_headers: false,
            case_insensitive_paths: false,
            cluster: None,
        }
    }
}

/// One accepting socket, plain or TLS.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[schemars(extend("required" = ["bind"]))]
pub struct ListenerConfig {
    /// IP:port to bind, e.g. `0.0.0.0:8443` (an IP, not a host name).
    #[serde(with = "leaf::bind")]
    #[schemars(with = "leaf::Bind")]
    pub bind: SocketAddr,
    /// TLS certificate and key; absent = plain ws:// and http://.
    pub tls: Option<TlsFiles>,
    /// Expect a PROXY protocol v1/v2 header before anything else.
    pub proxy_protocol: bool,
    /// HTTP/2 on a TLS listener (ALPN `h2`, WebSockets by RFC 8441); ignored without `tls`.
    pub http2: Http2Config,
}

impl Default for ListenerConfig {
    // `bind` is required; port 0 never conflicts, so the placeholder raises no second error.
    fn default() -> Self {
        Self {
            bind: leaf::PLACEHOLDER_ADDR,
            tls: None,
            proxy_protocol: false,
            http2: Http2Config::default(),
        }
    }
}

/// HTTP/2 on a TLS listener.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Http2Config {
    /// Offer `h2` by ALPN beside `http/1.1` (browsers then carry wss:// on the page's connection).
    pub enabled: bool,
    /// Streams (WebSockets and requests) one HTTP/2 connection may have open at once.
    #[schemars(range(min = 1))]
    pub max_concurrent_streams: u32,
}

impl Default for Http2Config {
    fn default() -> Self {
        Self {
            enabled: true,
            max_concurrent_streams: 100,
        }
    }
}

/// Certificate chain and key files for a TLS listener, or an ACME block that obtains them.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first (with `key`; not with `acme`). Empty when absent.
    #[schemars(with = "leaf::FilePath")]
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) matching the certificate. Empty when absent.
    #[schemars(with = "leaf::FilePath")]
    pub key: PathBuf,
    /// Obtain and renew the certificate from an ACME CA (Let's Encrypt) instead of files.
    pub acme: Option<AcmeConfig>,
}

/// `tls.acme`: certificates obtained and renewed automatically (RFC 8555).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[schemars(extend("required" = ["domains", "cache"]))]
pub struct AcmeConfig {
    /// DNS names the certificate covers; each must resolve to this host.
    #[schemars(with = "Vec<leaf::AcmeDomain>", length(min = 1))]
    pub domains: Vec<String>,
    /// Contact address given to the CA for the account (expiry and policy notices).
    #[schemars(with = "Option<leaf::AcmeEmail>")]
    pub email: Option<String>,
    /// The CA's ACME directory URL (https://); default Let's Encrypt production.
    #[schemars(with = "leaf::AcmeDirectory")]
    pub directory: String,
    /// Folder for the account key and certificates (created with mode 0700, files 0600).
    #[schemars(with = "leaf::FilePath")]
    pub cache: PathBuf,
    /// How the CA checks control of the names: `tls-alpn-01` on this listener's port
    /// (443) or `http-01` on a plain listener (port 80).
    pub challenge: AcmeChallenge,
    /// PEM root certificate to trust for the directory's HTTPS, for test CAs (pebble);
    /// absent = the system's roots.
    #[schemars(with = "Option<leaf::FilePath>")]
    pub ca: Option<PathBuf>,
    /// Renew when this little validity is left; absent = a third of the lifetime.
    #[serde(with = "leaf::opt_duration")]
    #[schemars(with = "Option<leaf::PositiveDuration>")]
    pub renew_before: Option<Duration>,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        Self {
            domains: Vec::new(),
            email: None,
            directory: LETS_ENCRYPT_DIRECTORY.to_owned(),
            cache: PathBuf::new(),
            challenge: AcmeChallenge::default(),
            ca: None,
            renew_before: None,
        }
    }
}

/// Let's Encrypt's production ACME directory (the default of `tls.acme.directory`).
pub const LETS_ENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// The ACME challenge type a listener answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, JsonSchema)]
pub enum AcmeChallenge {
    /// RFC 8737: answered inside the TLS handshake (ALPN `acme-tls/1`) on this listener.
    #[default]
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// RFC 8555 §8.3: `GET /.well-known/acme-challenge/TOKEN` on a plain listener.
    #[serde(rename = "http-01")]
    Http01,
}

/// The admin listener.
#[derive(Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// IP:port to bind (9190: off node_exporter's 9100 and Prometheus' own 9090-9093).
    #[serde(with = "leaf::bind")]
    #[schemars(with = "leaf::Bind")]
    pub bind: SocketAddr,
    /// Bearer token that mutating admin calls must present (at least 16 bytes); absent =
    /// loopback peers only.
    #[schemars(with = "Option<leaf::NonEmpty>")]
    pub token: Option<String>,
    /// File holding `token` (a Docker/Kubernetes secret; one trailing newline is ignored).
    #[schemars(with = "Option<leaf::FilePath>")]
    pub token_file: Option<PathBuf>,
    /// Open admin connections at once; more are closed at accept.
    #[schemars(range(min = 1))]
    pub max_connections: usize,
    /// Let anyone who reaches the listener read `GET /connections`, `/users` and `/events`
    /// (otherwise reads follow the rule of mutating calls).
    pub public_reads: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 9190)),
            token: None,
            token_file: None,
            max_connections: DEFAULT_ADMIN_MAX_CONNECTIONS,
            public_reads: false,
        }
    }
}

impl std::fmt::Debug for AdminConfig {
    // The token must never reach logs, even through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("bind", &self.bind)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("max_connections", &self.max_connections)
            .field("public_reads", &self.public_reads)
            .finish()
    }
}

/// Default `admin.max_connections`: a scraper, a few operators and their scripts.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 16;
/// Shortest accepted `admin.token`: it is the only thing between the network and `/reload`.
pub const MIN_ADMIN_TOKEN_BYTES: usize = 16;

/// One named authenticator.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
#[schemars(extend("x-tag-noun" = "authenticator type"))]
// Read once per config load, never copied on a request path: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum AuthConfig {
    /// HTTP Basic against an htpasswd file.
    Basic(BasicConfig),
    /// A JWT from a query parameter or `Authorization: Bearer`.
    Jwt(JwtConfig),
    /// Asks an HTTP auth service about each request, as nginx's `auth_request` does.
    Forward(ForwardConfig),
}

/// `type: forward`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[schemars(extend("required" = ["url", "user_header"]))]
pub struct ForwardConfig {
    /// http:// or https:// URL of the auth service; a 2xx answer admits.
    #[serde(with = "leaf::auth_url")]
    #[schemars(with = "leaf::AuthUrlStr")]
    pub url: WebhookUrl,
    /// Method of the auth request (it never carries a body).
    #[schemars(with = "leaf::HttpMethod")]
    pub method: String,
    /// Response header naming the user (copied upstream too); a 2xx without it is a 503.
    #[schemars(with = "leaf::UpstreamHeader")]
    pub user_header: String,
    /// More response headers copied onto the upstream request (client copies removed).
    #[schemars(with = "Vec<leaf::UpstreamHeader>")]
    pub copy_headers: Vec<String>,
    /// How long the auth service may take to answer (connect included); then 503.
    #[serde(with = "leaf::duration")]
    #[schemars(with = "leaf::PositiveDuration")]
    pub timeout: Duration,
    /// How long a 2xx answer is reused for the same credentials and URI (0s = off).
    #[serde(with = "leaf::duration")]
    #[schemars(with = "leaf::DurationStr")]
    pub cache_ttl: Duration,
    /// Auth requests in flight at once; more are refused at once with 503.
    #[schemars(range(min = 1))]
    pub max_concurrent: usize,
    /// CA file trusted for an https:// auth service instead of the system roots.
    #[schemars(with = "Option<leaf::FilePath>")]
    pub ca: Option<PathBuf>,
}

impl Default for ForwardConfig {
    // `url` and `user_header` are required: the empty values are only placeholders while
    // problems are collected.
    fn default() -> Self {
        Self {
            url: WebhookUrl::default(),
            method: "GET".into(),
            user_header: String::new(),
            copy_headers: Vec::new(),
            timeout: Duration::from_secs(2),
            cache_ttl: Duration::ZERO,
            max_concurrent: 64,
            ca: None,
        }
    }
}

/// `type: basic`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[schemars(extend("required" = ["htpasswd"]))]
pub struct BasicConfig {
    /// Realm sent in `WWW-Authenticate`.
    #[schemars(with = "leaf::Realm")]
    pub realm: String,
    /// htpasswd file: user:hash lines, bcrypt ($2a$/$2b$/$2y$) or argon2id; apr1 and {SHA} load with a warning.
    #[schemars(with = "leaf::FilePath")]
    pub htpasswd: PathBuf,
    /// How long a verified user/password pair is remembered (0s = off).
    #[serde(with = "leaf::duration")]
    #[schemars(with = "leaf::DurationStr")]
    pub cache_ttl: Duration,
}

impl Default for BasicConfig {
    fn default() -> Self {
        Self {
            realm: "wsgate".into(),
            htpasswd: PathBuf::new(),
            cache_ttl: Duration::from_secs(60),
        }
    }
}

/// `type: jwt`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[schemars(extend("required" = ["algorithms"]))]
pub struct JwtConfig {
    /// Query parameter carrying the token (also accepted: `Authorization: Bearer`).
    #[schemars(with = "leaf::QueryParam")]
    pub query_param: String,
    /// Allowed algorithms, all of one key family; `none` is never accepted.
    #[serde(with = "leaf::algorithms")]
    #[schemars(with = "leaf::OneOrMany<leaf::Alg>")]
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// The verification key, from `secret`, `secret_file` or `public_key` (set by validation).
    #[serde(skip)]
    pub key: JwtKey,
    /// HS256/384/512 shared secret, at least 32 bytes.
    #[schemars(with = "Option<leaf::NonEmpty>")]
    pub secret: Option<leaf::Secret>,
    /// File holding `secret` (a Docker/Kubernetes secret; one trailing newline is ignored).
    #[schemars(with = "Option<leaf::FilePath>")]
    pub secret_file: Option<PathBuf>,
    /// PEM public key file for RS*/PS*/ES*/EdDSA.
    #[schemars(with = "Option<leaf::FilePath>")]
    pub public_key: Option<PathBuf>,
    /// Required `iss`, when set.
    #[schemars(with = "Option<leaf::NonEmpty>")]
    pub issuer: Option<String>,
    /// Accepted `aud` values (any one matches), when set: a string or a list.
    #[serde(with = "leaf::audience")]
    #[schemars(
        with = "Option<leaf::OneOrMany<leaf::NonEmpty>>",
        extend("errorMessage" = {"minItems": "must not be an empty list (remove the key to accept any audience)"})
    )]
    pub audience: Option<Vec<String>>,
    /// Clock skew allowed on `exp`/`nbf`.
    #[serde(with = "leaf::duration")]
    #[schemars(with = "leaf::DurationStr")]
    pub leeway: Duration,
    /// Tokens longer than this are refused as malformed before decoding.
    #[schemars(range(min = 1))]
    pub max_token_bytes: usize,
    /// When set, `iat` is required and a token issued longer ago (plus leeway) is refused.
    #[serde(with = "leaf::opt_duration")]
    #[schemars(with = "Option<leaf::DurationStr>")]
    pub max_token_age: Option<Duration>,
    /// http:// or https:// URL of a JWKS (the identity provider's public keys, chosen by `kid`).
    #[serde(with = "leaf::opt_jwks_url")]
    #[schemars(with = "Option<leaf::JwksUrlStr>")]
    pub jwks_url: Option<WebhookUrl>,
    /// A JWKS file (JSON `{"keys": [...]}`), re-read every `jwks_refresh`.
    #[schemars(with = "Option<leaf::FilePath>")]
    pub jwks_file: Option<PathBuf>,
    /// Find the JWKS through `issuer` + `/.well-known/openid-configuration` (its `jwks_uri`).
    pub discovery: bool,
    /// CA file trusted for an https:// `jwks_url` or discovery instead of the system roots.
    #[schemars(with = "Option<leaf::FilePath>")]
    pub ca: Option<PathBuf>,
    /// How often the JWKS is fetched again (a token with an unknown `kid` also triggers a fetch).
    #[serde(with = "leaf::duration")]
    #[schemars(with = "leaf::PositiveDuration")]
    pub jwks_refresh: Duration,
    /// Shortest time between two JWKS fetches triggered by unknown `kid`s.
    #[serde(with = "leaf::duration")]
    #[schemars(with = "leaf::PositiveDuration")]
    pub jwks_min_interval: Duration,
    /// How long one JWKS fetch (connect, request, answer) may take.
    #[serde(with = "leaf::duration")]
    #[schemars(with = "leaf::PositiveDuration")]
    pub jwks_timeout: Duration,
    /// Refuse to start (or reload) when the first JWKS fetch fails; otherwise start and answer
    /// 401 to tokens until the keys arrive.
    pub jwks_required_at_start: bool,
    /// Claim → upstream header (`role: X-Auth-Role`); the client's copies are removed first.
    #[schemars(with = "BTreeMap<String, leaf::NonEmpty>")]
    pub claims_to_headers: BTreeMap<String, String>,
    /// Where the token is read, each a one-key map: `query: NAME`, `header: NAME`,
    /// `cookie: NAME`, `subprotocol: PREFIX`; default `[query: <query_param>, header: Authorization]`.
    pub from: Option<Vec<TokenSourceConfig>>,
}

/// One place a JWT may be read from (exactly one key set).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TokenSourceConfig {
    /// A query parameter (removed before forwarding, look-alikes refused).
    #[schemars(with = "Option<leaf::QueryParam>")]
    pub query: Option<String>,
    /// A request header; `Authorization` means its `Bearer` scheme.
    #[schemars(with = "Option<leaf::NonEmpty>")]
    pub header: Option<String>,
    /// A cookie of the `Cookie` header (only it is removed; the others go on byte-exact).
    #[schemars(with = "Option<leaf::NonEmpty>")]
    pub cookie: Option<String>,
    /// A `Sec-WebSocket-Protocol` entry starting with this prefix; base64url-decoded when the
    /// prefix starts with `base64url.` (the Kubernetes convention).
    #[schemars(with = "Option<leaf::NonEmpty>")]
    pub subprotocol: Option<String>,
}

/// A validated token source (see [`TokenSourceConfig`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `?NAME=token`.
    Query(String),
    /// `Authorization: Bearer token`.
    Bearer,
    /// `NAME: token` (any other header, lower-case name).
    Header(http::HeaderName),
    /// `Cookie: NAME=token`.
    Cookie(String),
    /// `Sec-WebSocket-Protocol: PREFIXtoken`; `base64url`: the rest is base64url of the token.
    Subprotocol {
        /// The entry's prefix.
        prefix: String,
        /// Whether the rest is base64url-encoded.
        base64url: bool,
    },
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            query_param: "token".into(),
            algorithms: Vec::new(),
            key: JwtKey::default(),
            secret: None,
            secret_file: None,
            public_key: None,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
            max_token_bytes: 8192,
            max_token_age: None,
            jwks_url: None,
            jwks_file: None,
            discovery: false,
            ca: None,
            jwks_refresh: Duration::from_secs(300),
            jwks_min_interval: Duration::from_secs(10),
            jwks_timeout: Duration::from_secs(5),
            jwks_required_at_start: false,
            claims_to_headers: BTreeMap::new(),
            from: None,
        }
    }
}

/// Where a JWT verification key comes from.
#[derive(Clone, PartialEq)]
pub enum JwtKey {
    /// Shared secret for HS256/384/512 (the string's UTF-8 bytes).
    Secret(String),
    /// PEM public key file for RS*/PS*/ES*/EdDSA.
    PublicKey(PathBuf),
    /// Public keys from a JWKS (`jwks_url`, `jwks_file` or `discovery`).
    Jwks(JwksSource),
}

/// Where a JWKS comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// Fetched from this URL.
    Url(WebhookUrl),
    /// Read from this file.
    File(PathBuf),
    /// `jwks_uri` of the OpenID configuration under this issuer URL.
    Discovery(WebhookUrl),
}

impl Default for JwtKey {
    // Only a placeholder until validation sets the real key; an empty secret is refused.
    fn default() -> Self {
        JwtKey::Secret(String::new())
    }
}

impl std::fmt::Debug for JwtKey {
    // Secrets must never reach logs, even through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwtKey::Secret(_) => f.write_str("Secret(<redacted>)"),
            JwtKey::PublicKey(p) => f.debug_tuple("PublicKey").field(p).finish(),
            JwtKey::Jwks(s) => f.debug_tuple("Jwks").field(s).finish(),
        }
    }
}

/// One route: a path prefix, an upstream and the authenticators that guard it.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[schemars(extend("required" = ["path", "upstream"]))]
pub struct RouteConfig {
    /// Path prefix: starts with `/`, no trailing `/` (except the root `/`), canonical form.
    #[schemars(with = "leaf::RoutePath")]
    pub path: String,
    /// ws:// or wss:// URL (http/https accepted as aliases), or a list of them (a pool).
    #[serde(rename = "upstream", with = "leaf::upstreams")]
    #[schemars(
        with = "leaf::OneOrMany<leaf::UpstreamUrl>",
        extend("errorMessage" = {"minItems": "at least one upstream URL is required"})
    )]
    pub upstreams: Vec<UpstreamConfig>,
    /// Authenticator names (any one admits); absent = open route.
    #[serde(with = "leaf::names")]
    #[schemars(
        with = "leaf::OneOrMany<String>",
        extend("errorMessage" = {
            "minItems": "an empty list names no authenticator: omit the key for an open route, or list at least one authenticator",
            "type": "expected a list of authenticator names"
        })
    )]
    pub auth: Vec<String>,
    /// How a pool picks a server.
    pub balance: Balance,
    /// CA file trusted for `wss://` upstreams instead of the system roots.
    #[schemars(with = "Option<leaf::FilePath>")]
    pub ca: Option<PathBuf>,
    /// Allowed browser `Origin`s (`https://app.example.com`, `https://*.example.com`);
    /// absent = any origin.
    #[serde(with = "leaf::origins")]
    #[schemars(
        with = "Option<Vec<leaf::Origin>>",
        extend("minItems" = 1, "errorMessage" = {"minItems": "an empty list would refuse every browser: remove the key to allow any origin"})
    )]
    pub origins: Option<Vec<OriginPattern>>,
    /// Follow WebSocket frame boundaries in the tunnel (close frames with codes, pushed
    /// messages, keepalive pings, size limits, message counts); false = a blind byte pipe
    /// whose gateway-side closes are TCP closes.
    pub track_frames: bool,
    /// Move bytes between plain (non-TLS) client and upstream sockets with splice(2), without
    /// copying them through user space (default true; copying resumes by itself where the
    /// kernel refuses splice); false = always copy.
    pub splice: bool,
    /// A data message (all its fragments) larger than this closes the tunnel with 1009;
    /// absent = no limit. Needs `track_frames`.
    #[schemars(range(min = 1))]
    pub max_message_bytes: Option<u64>,
    /// A tunnel open this long is closed with 4003 "lifetime reached"; absent = no cap.
    #[serde(with = "leaf::opt_duration")]
    #[schemars(with = "Option<leaf::PositiveDuration>")]
    pub max_lifetime: Option<Duration>,
    /// A tunnel admitted by a JWT with `exp` closes this long after `exp` (4001 "token expired").
    #[serde(with = "leaf::duration")]
    #[schemars(with = "leaf::DurationStr")]
    pub expiry_grace: Duration,
    /// Ping the client this often; absent = no gateway pings. Needs `track_frames`.
    #[serde(with = "leaf::opt_duration")]
    #[schemars(with = "Option<leaf::PositiveDuration>")]
    pub ping_interval: Option<Duration>,
    /// A client that hasn't answered a gateway ping after this long is closed (1001 "idle").
    #[serde(with = "leaf::duration")]
    #[schemars(with = "leaf::PositiveDuration")]
    pub ping_timeout: Duration,
    /// Connection events (`connected`/`disconnected`) POSTed to a webhook; absent = none.
    pub events: Option<EventsConfig>,
    /// Open WebSocket connections one user may hold on this route (authenticated routes
    /// only); absent = unlimited.
    #[schemars(range(min = 1))]
    pub max_connections_per_user: Option<usize>,
    /// What a login beyond `max_connections_per_user` does: `reject` (409) or `evict_oldest`.
    pub on_user_limit: OnUserLimit,
}

impl Default for RouteConfig {
    fn default() -> Self {
        Self {
            path: String::new(),
            upstreams: Vec::new(),
            auth: Vec::new(),
            balance: Balance::default(),
            ca: None,
            origins: None,
            track_frames: true,
            splice: true,
            max_message_bytes: None,
            max_lifetime: None,
            expiry_grace: Duration::ZERO,
            ping_interval: None,
            ping_timeout: Duration::from_secs(20),
            events: None,
            max_connections_per_user: None,
            on_user_limit: OnUserLimit::Reject,
        }
    }
}

/// `routes[].events`: where this route's connection events are delivered.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[schemars(extend("required" = ["webhook"]))]
pub struct EventsConfig {
    /// http:// or https:// URL that receives each event as a JSON POST (path and query kept).
    #[serde(with = "leaf::webhook")]
    #[schemars(with = "leaf::WebhookUrlStr")]
    pub webhook: WebhookUrl,
    /// How long one delivery attempt may take (connect, request, answer).
    #[serde(with = "leaf::duration")]
    #[schemars(with = "leaf::PositiveDuration")]
    pub timeout: Duration,
    /// Events waiting for the webhook at most; more are dropped (and counted).
    #[schemars(range(min = 1))]
    pub queue: usize,
    /// CA file trusted for an https:// webhook instead of the system roots.
    #[schemars(with = "Option<leaf::FilePath>")]
    pub ca: Option<PathBuf>,
}

impl Default for EventsConfig {
    // `webhook` is required: the empty URL is only a placeholder while problems are collected.
    fn default() -> Self {
        Self {
            webhook: WebhookUrl::default(),
            timeout: Duration::from_secs(5),
            queue: 10_000,
            ca: None,
        }
    }
}

/// A parsed webhook URL.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct WebhookUrl {
    /// `true` for https://.
    pub tls: bool,
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// Port (defaults 80 / 443).
    pub port: u16,
    /// What goes in the `Host` header: the URL's authority.
    pub authority: String,
    /// Path and query, `/` when the URL has none.
    pub path_and_query: String,
    /// The URL as written, for messages.
    pub url: String,
}

impl std::fmt::Debug for WebhookUrl {
    // The query may carry the receiver's secret (`?key=...`): it must not reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = self.path_and_query.split('?').next().unwrap_or("");
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "WebhookUrl({scheme}://{}{path}", self.authority)?;
        if self.path_and_query.contains('?') {
            f.write_str("?<redacted>")?;
        }
        f.write_str(")")
    }
}

/// What a handshake over a route's `max_connections_per_user` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnUserLimit {
    /// The new handshake gets 409 Conflict.
    #[default]
    Reject,
    /// The user's oldest connection on the route closes (4002 "logged in elsewhere") and the
    /// new one proceeds.
    EvictOldest,
}

/// How a route with several upstream servers picks one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Next healthy server in turn.
    #[default]
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

/// `close_codes:` section: the WebSocket close code sent to both peers for each reason the
/// gateway ends a tunnel (1000, 1001, 1008, 1009, 1011 or 3000–4999).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CloseCodes {
    /// Drain deadline on shutdown.
    #[schemars(with = "leaf::CloseCode")]
    pub shutdown: u16,
    /// `timeouts.tunnel_idle` or an unanswered keepalive ping.
    #[schemars(with = "leaf::CloseCode")]
    pub idle: u16,
    /// Admin kick (`DELETE /connections/{id}`, `DELETE /users/{user}`).
    #[schemars(with = "leaf::CloseCode")]
    pub kicked: u16,
    /// Token expiry.
    #[schemars(with = "leaf::CloseCode")]
    pub expired: u16,
    /// A newer login of the same user (`on_user_limit: evict_oldest`).
    #[schemars(with = "leaf::CloseCode")]
    pub evicted: u16,
    /// `max_lifetime`.
    #[schemars(with = "leaf::CloseCode")]
    pub lifetime: u16,
    /// `max_message_bytes` exceeded.
    #[schemars(with = "leaf::CloseCode")]
    pub too_big: u16,
}

impl Default for CloseCodes {
    fn default() -> Self {
        Self {
            shutdown: 1001,
            idle: 1001,
            kicked: 4000,
            expired: 4001,
            evicted: 4002,
            lifetime: 4003,
            too_big: 1009,
        }
    }
}

/// `shutdown:` section.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long open connections may finish after SIGTERM/SIGINT.
    #[serde(with = "leaf::duration")]
    #[schemars(with = "leaf::DurationStr")]
    pub drain_timeout: Duration,
    /// Tunnels still open at the drain deadline are closed spread evenly over this window,
    /// so their clients don't all reconnect in the same second (0s = all at once).
    #[serde(with = "leaf::duration")]
    #[schemars(with = "leaf::DurationStr")]
    pub close_jitter: Duration,
    /// How long a gateway-initiated close waits for both peers to answer the close frame
    /// before closing TCP.
    #[serde(with = "leaf::duration")]
    #[schemars(with = "leaf::PositiveDuration")]
    pub close_wait: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_timeout: Duration::from_secs(30),
            close_jitter: Duration::ZERO,
            close_wait: Duration::from_secs(1),
        }
    }
}

/// `timeouts:` section. A zero timeout would fail every connection, so all but
/// `tunnel_idle` must be longer than 0s.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// TLS handshake.
    #[serde(with = "leaf::duration")]
    #[schemars(with = "leaf::PositiveDuration")]
    pub tls_handshake: Duration,
    /// Reading the request head; slow request heads are dropped.
    #[serde(with = "leaf::duration")]
    #[schemars(with = "leaf::PositiveDuration")]
    pub request_header: Duration,
    /// TCP (+TLS) connect to the upstream; exceeded = 504.
    #[serde(with = "leaf::duration")]
    #[schemars(with = "leaf::PositiveDuration")]
    pub upstream_connect: Duration,
    /// Waiting for the upstream's response head; exceeded = 504.
    #[serde(with = "leaf::duration")]
    #[schemars(with = "leaf::PositiveDuration")]
    pub upstream_response: Duration,
    /// A tunnel with no bytes either way for this long is closed (0s = never).
    #[serde(with = "leaf::duration")]
    #[schemars(with = "leaf::DurationStr")]
    pub tunnel_idle: Duration,
    /// How long a pool server that failed to connect is skipped.
    #[serde(with = "leaf::duration")]
    #[schemars(with = "leaf::PositiveDuration")]
    pub upstream_retry: Duration,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        Self {
            tls_handshake: Duration::from_secs(10),
            request_header: Duration::from_secs(10),
            upstream_connect: Duration::from_secs(5),
            upstream_response: Duration::from_secs(30),
            tunnel_idle: Duration::from_secs(3600),
            upstream_retry: Duration::from_secs(10),
        }
    }
}

/// `limits:` section.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Open client connections across all listeners (tunnels included).
    #[schemars(range(min = 1))]
    pub max_connections: usize,
    /// Password-hash verifications at once (default: the number of CPUs).
    // No schema default: it depends on the machine, and the schema file must not.
    #[serde(skip_serializing)]
    #[schemars(range(min = 1))]
    pub max_concurrent_hashes: usize,
    /// Password checks running or queued per client (0 = unlimited).
    // On by default: it only bites a client with several uncached password checks at
    // once, and stops one client from filling the hash queue for everyone.
    pub max_hashes_per_ip: usize,
    /// Open connections per client (0 = unlimited; see the README's hardened profile).
    // Per-client caps are off unless set: behind a NAT or a load balancer without
    // `trusted_proxies` they would cap the whole site.
    pub max_connections_per_ip: usize,
    /// Sustained upgrades and authenticated requests per second per client (0 = off).
    pub handshake_rate_per_ip: u32,
    /// Burst of requests allowed above the rate.
    #[schemars(range(min = 1))]
    pub handshake_burst_per_ip: u32,
    /// IPv6 clients are grouped by this prefix length for per-client limits.
    #[schemars(range(min = 1, max = 128))]
    pub ipv6_prefix: u8,
    /// Connections accepted but not yet past their first request.
    #[schemars(range(min = 1))]
    pub max_pending_handshakes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_concurrent_hashes: std::thread::available_parallelism()
                .map_or(1, std::num::NonZeroUsize::get),
            max_hashes_per_ip: 2,
            max_connections_per_ip: 0,
            handshake_rate_per_ip: 0,
            handshake_burst_per_ip: 40,
            ipv6_prefix: 64,
            max_pending_handshakes: 1024,
        }
    }
}

/// `cluster:` section: several wsgate instances sharing one Redis (`src/cluster.rs`).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[schemars(extend("required" = ["redis"]))]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port/db`.
    #[schemars(with = "leaf::RedisUrl")]
    pub redis: String,
    /// This instance's name in Redis (letters, digits, `.`, `_`, `:`, `-`); absent = the
    /// host name, the process id and a random suffix.
    #[schemars(with = "Option<leaf::InstanceId>")]
    pub instance_id: Option<String>,
    /// How often the instance refreshes its presence; a crashed instance's entries expire
    /// after three heartbeats.
    #[serde(with = "leaf::duration")]
    #[schemars(with = "leaf::PositiveDuration")]
    pub heartbeat: Duration,
    /// Longest wait for Redis on the handshake path (the `reject` limit check); past it the
    /// handshake goes on with local-only limits.
    #[serde(with = "leaf::duration")]
    #[schemars(with = "leaf::PositiveDuration")]
    pub timeout: Duration,
    /// Prefix of every key and channel, so several clusters can share one Redis database.
    #[schemars(with = "leaf::NonEmpty")]
    pub key_prefix: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis: String::new(),
            instance_id: None,
            heartbeat: Duration::from_secs(5),
            timeout: Duration::from_millis(100),
            key_prefix: "wsgate:".to_string(),
        }
    }
}
