//! Authentication on the upgrade request: Basic (htpasswd), JWT, and forward auth (an HTTP
//! auth service judges each request).
//!
//! Authenticators are built once per config load (files read, hashes and keys parsed),
//! then shared by routes. A route tries its authenticators in order and the first that
//! admits wins; when none does, the reported failure follows the contract's rule (see
//! [`RouteAuth::check`]).

mod basic;
mod cache;
mod claims;
mod forward;
mod htpasswd;
mod jwks;
mod jwt;
mod limiter;
pub mod mint;
mod sources;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};

pub use limiter::{ACQUIRE_TIMEOUT, HashLimiter, WAITERS_PER_PERMIT};

use crate::config::AuthConfig;
use crate::limits::ClientKey;

/// Who was admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The Basic user name or the JWT `sub`.
    pub user: String,
    /// The JWT `exp`; `None` for Basic. Issue 10 (session layer) closes the tunnel then.
    pub expires_at: Option<SystemTime>,
}

/// What an authenticator may look at: the request as routed (its URI carries the canonical
/// path), who sent it, and over what.
#[derive(Debug, Clone, Copy)]
pub struct AuthRequest<'a> {
    /// The request method (`GET` for an HTTP/1.1 upgrade, `CONNECT` for an HTTP/2 one).
    pub method: &'a Method,
    /// The canonical request target, query included.
    pub uri: &'a Uri,
    /// The client's headers, as received.
    pub headers: &'a HeaderMap,
    /// The client, for per-client shares (password hashes); `None` in unit tests.
    pub client: Option<ClientKey>,
    /// The client's address (after trusted-proxy resolution).
    pub client_ip: IpAddr,
    /// Whether the client connection is TLS (`X-Forwarded-Proto`).
    pub tls: bool,
    /// The socket peer (a proxy's address behind `trusted_proxies`), for `X-Forwarded-For`.
    pub peer: IpAddr,
    /// `trusted_proxies`, for `X-Forwarded-For` as the upstream would get it.
    pub trusted_proxies: Option<&'a [ipnet::IpNet]>,
}

impl<'a> AuthRequest<'a> {
    /// The raw query string, if any.
    pub fn query(&self) -> Option<&'a str> {
        self.uri.query()
    }
}

/// A successful check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// Who was admitted.
    pub identity: Identity,
    /// Name of the authenticator that admitted.
    pub authenticator: String,
    /// Headers the admitting authenticator sets on the upstream request (claims, forward-auth
    /// answers). The client's copies of every name any of the route's authenticators owns
    /// ([`RouteAuth::owned_headers`]) are removed first, so none can be spoofed.
    pub upstream_headers: Vec<(HeaderName, HeaderValue)>,
}

/// Why a request was refused; `reason()` gives the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// No credential this route understands.
    #[error("no credentials")]
    Missing,
    /// A credential that cannot be parsed.
    #[error("malformed credentials")]
    Malformed,
    /// Unknown user or wrong password.
    #[error("bad credentials")]
    BadCredentials,
    /// JWT past its `exp` (plus leeway).
    #[error("token expired")]
    Expired,
    /// JWT before its `nbf` (minus leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// JWT signature invalid or algorithm not allowed.
    #[error("bad token signature")]
    BadSignature,
    /// JWT claims missing or not as required (`sub`, `iss`, `aud`, types).
    #[error("bad token claims")]
    BadClaims,
    /// Too many password verifications (or forward-auth requests) in flight; retry later.
    #[error("too many verifications in flight")]
    Busy,
    /// This client already has its share of password verifications in flight.
    #[error("too many password verifications in flight from this client")]
    TooMany,
    /// The forward-auth service refused (401/403); its answer goes to the client.
    #[error("refused by the auth service")]
    Denied,
    /// The forward-auth service could not judge (timeout, connection failure, 5xx, an
    /// answer without the user header): 503.
    #[error("auth service unavailable")]
    Unavailable,
}

/// The forward-auth service's refusal as the client gets it: the status (401 or 403) and
/// the `WWW-Authenticate`/`Location` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthReply {
    /// 401 or 403.
    pub status: StatusCode,
    /// The headers passed on to the client.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// A refused check: the failure (a metric label) and, when an auth service refused, its
/// answer for the client. `AuthFailure` stays `Copy`; the reply travels beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Why.
    pub failure: AuthFailure,
    /// What the auth service answered, for [`AuthFailure::Denied`].
    pub reply: Option<AuthReply>,
}

impl From<AuthFailure> for Rejection {
    fn from(failure: AuthFailure) -> Self {
        Rejection {
            failure,
            reply: None,
        }
    }
}

impl AuthFailure {
    /// The `reason` label for `wsgate_auth_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::BadCredentials => "bad_credentials",
            AuthFailure::Expired => "expired",
            AuthFailure::NotYetValid => "not_yet_valid",
            AuthFailure::BadSignature => "bad_signature",
            AuthFailure::BadClaims => "bad_claims",
            AuthFailure::Busy => "busy",
            AuthFailure::TooMany => "too_many",
            AuthFailure::Denied => "denied",
            AuthFailure::Unavailable => "auth_unavailable",
        }
    }
}

/// One named, ready-to-use authenticator (built from config; files already loaded).
#[derive(Debug)]
pub struct Authenticator {
    /// Its key under `auth:`.
    name: String,
    /// The mechanism.
    kind: Kind,
}

/// The mechanisms.
#[derive(Debug)]
enum Kind {
    /// HTTP Basic.
    Basic(basic::Basic),
    /// JWT (query parameter or Bearer).
    Jwt(jwt::Jwt),
    /// An HTTP auth service asked about each request.
    Forward(Box<forward::Forward>),
}

impl Authenticator {
    /// Loads files (htpasswd, PEM public key) and builds; errors are (config field, message).
    pub fn build(
        name: &str,
        cfg: &AuthConfig,
        hash_limiter: Arc<HashLimiter>,
    ) -> Result<Self, Vec<crate::config::ConfigError>> {
        let kind = match cfg {
            AuthConfig::Basic(b) => Kind::Basic(basic::Basic::build(b, hash_limiter)?),
            AuthConfig::Jwt(j) => Kind::Jwt(jwt::Jwt::build(j)?),
            AuthConfig::Forward(f) => Kind::Forward(Box::new(forward::Forward::build(f)?)),
        };
        Ok(Authenticator {
            name: name.to_owned(),
            kind,
        })
    }

    /// Its name (key under `auth:`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The realm, for a Basic authenticator.
    pub fn basic_realm(&self) -> Option<&str> {
        match &self.kind {
            Kind::Basic(b) => Some(&b.realm),
            Kind::Jwt(_) | Kind::Forward(_) => None,
        }
    }

    /// Judges the request with this authenticator alone.
    #[cfg(test)]
    pub async fn check(
        &self,
        headers: &http::HeaderMap,
        query: Option<&str>,
    ) -> Result<Admission, AuthFailure> {
        let uri = test_uri(query);
        self.check_request(&test_request(headers, &uri)).await
    }

    /// Judges the request; a password hash counts against the client's share of the hash
    /// limiter.
    pub async fn check_request(&self, req: &AuthRequest<'_>) -> Result<Admission, AuthFailure> {
        self.judge(req).await.map_err(|r| r.failure)
    }

    /// Judges the request as [`check_request`](Self::check_request) does, keeping an auth
    /// service's refusal for the client.
    pub async fn judge(&self, req: &AuthRequest<'_>) -> Result<Admission, Rejection> {
        let (identity, upstream_headers) = match &self.kind {
            Kind::Basic(b) => (b.check_from(req.headers, req.client).await?, Vec::new()),
            Kind::Jwt(j) => {
                let v = j.check(req.headers, req.query()).await?;
                (v.identity, v.headers)
            }
            Kind::Forward(f) => {
                let answer = f.check(req).await?;
                (answer.identity, answer.headers)
            }
        };
        Ok(Admission {
            identity,
            authenticator: self.name.clone(),
            upstream_headers,
        })
    }

    /// Header names this authenticator sets on upstream requests; client copies are removed.
    pub fn owned_headers(&self) -> &[HeaderName] {
        match &self.kind {
            Kind::Basic(_) => &[],
            Kind::Jwt(j) => j.owned_headers(),
            Kind::Forward(f) => f.owned_headers(),
        }
    }

    /// Starts background work (a JWKS refresh task) under `metrics`; needs a tokio runtime.
    pub fn start(&self, metrics: &crate::metrics::Metrics) {
        if let Kind::Jwt(j) = &self.kind
            && let Some(jwks) = j.jwks()
        {
            jwks.start(&self.name, metrics);
        }
    }

    /// Stops background work (this authenticator was replaced by a reload).
    pub fn stop(&self) {
        if let Kind::Jwt(j) = &self.kind
            && let Some(jwks) = j.jwks()
        {
            jwks.stop();
        }
    }

    /// Takes over what `old` (same name, previous config) already loaded: a JWKS of the same
    /// source, so a reload leaves no gap without keys.
    pub fn adopt(&self, old: &Authenticator) {
        if let (Kind::Jwt(new), Kind::Jwt(old)) = (&self.kind, &old.kind)
            && let (Some(new), Some(old)) = (new.jwks(), old.jwks())
        {
            new.adopt(old);
        }
    }

    /// Waits for the first JWKS fetch; a problem as (config path, message, whether it must
    /// stop the start-up), `None` when there is none.
    pub async fn first_fetch(&self) -> Option<(String, String, bool)> {
        let Kind::Jwt(j) = &self.kind else {
            return None;
        };
        let jwks = j.jwks()?;
        let (message, required) = jwks.first_fetch().await?;
        Some((
            format!("auth.{}.{}", self.name, jwks.source_key()),
            message,
            required,
        ))
    }

    /// Removes the credentials this authenticator reads from what goes upstream: Basic's
    /// `Authorization` header, a JWT's every source (`from:`). Forward auth removes nothing:
    /// the app behind it reads the same session cookie or token (as behind nginx's
    /// `auth_request`).
    fn strip_credentials(&self, headers: &mut HeaderMap, query: &mut Option<String>) {
        match &self.kind {
            Kind::Forward(_) => {}
            Kind::Basic(_) => {
                headers.remove(http::header::AUTHORIZATION);
            }
            Kind::Jwt(j) => {
                for source in j.sources() {
                    sources::strip(source, headers, query);
                }
            }
        }
    }
}

/// A request target carrying `query`, for unit tests.
#[cfg(test)]
fn test_uri(query: Option<&str>) -> Uri {
    match query {
        Some(q) => format!("/?{q}")
            .parse()
            .unwrap_or_else(|_| Uri::from_static("/")),
        None => Uri::from_static("/"),
    }
}

/// A GET from 127.0.0.1 over plain TCP, for unit tests.
#[cfg(test)]
fn test_request<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> AuthRequest<'a> {
    AuthRequest {
        method: &Method::GET,
        uri,
        headers,
        client: None,
        client_ip: IpAddr::from([127, 0, 0, 1]),
        tls: false,
        peer: IpAddr::from([127, 0, 0, 1]),
        trusted_proxies: None,
    }
}

/// The authenticators of one route (any one admits).
#[derive(Debug, Clone, Default)]
pub struct RouteAuth {
    /// In the route's `auth:` order.
    auths: Vec<Arc<Authenticator>>,
}

impl RouteAuth {
    /// The route's authenticators, in order.
    pub fn new(auths: Vec<Arc<Authenticator>>) -> Self {
        RouteAuth { auths }
    }

    /// Query parameters that carry credentials on this route (every JWT authenticator's).
    pub fn credential_query_params(&self) -> impl Iterator<Item = &str> {
        self.auths
            .iter()
            .flat_map(|a| match &a.kind {
                Kind::Jwt(j) => Some(j.query_params()),
                Kind::Basic(_) | Kind::Forward(_) => None,
            })
            .flatten()
    }

    /// Refuses a query a backend could read a second credential from, on a route that reads
    /// one from the query: a `;` (some frameworks split on it too), a key that differs from a
    /// credential parameter's name but folds to it (case, `[]`/`[0]`/`.x` suffixes, percent-
    /// encoding, surrounding blanks), or the credential parameter twice. Only the exact name
    /// is read and stripped, so anything a backend might still take for it is refused here.
    pub fn check_query(&self, query: Option<&str>) -> Result<(), &'static str> {
        let Some(query) = query else {
            return Ok(());
        };
        let mut names = self.credential_query_params().peekable();
        if names.peek().is_none() {
            return Ok(());
        }
        if query.contains(';') {
            return Err("`;` in the query of a route that reads a credential from it");
        }
        for name in names {
            let mut seen = false;
            for pair in query.split('&') {
                let key = pair.split_once('=').map_or(pair, |(k, _)| k);
                if key == name {
                    if seen {
                        return Err("credential query parameter given twice");
                    }
                    seen = true;
                } else if folds_to(key, name) {
                    return Err("query parameter that looks like the credential parameter");
                }
            }
        }
        Ok(())
    }

    /// No authenticators: everyone is admitted without a check.
    pub fn is_open(&self) -> bool {
        self.auths.is_empty()
    }

    /// `Basic realm="<realm>", charset="UTF-8"` of the first Basic authenticator, else `None`.
    pub fn challenge(&self) -> Option<String> {
        self.auths
            .iter()
            .find_map(|a| a.basic_realm())
            .map(|realm| {
                // Quotes and backslashes would break the quoted-string; escape them (RFC 9110 §5.6.4).
                let escaped = realm.replace('\\', "\\\\").replace('"', "\\\"");
                format!("Basic realm=\"{escaped}\", charset=\"UTF-8\"")
            })
    }

    /// Tries each authenticator in order; the first that admits wins. Otherwise: `Busy` if
    /// any verification could not get a hash slot (the credential might have been good);
    /// else the first failure from an authenticator that found a credential it could judge;
    /// `Missing` only when none found any. An open route admits nobody here (check
    /// [`is_open`](Self::is_open) first); it answers `Missing`.
    #[cfg(test)]
    pub async fn check(
        &self,
        headers: &http::HeaderMap,
        query: Option<&str>,
    ) -> Result<Admission, AuthFailure> {
        let uri = test_uri(query);
        self.check_request(&test_request(headers, &uri)).await
    }

    /// Judges the request as `check` does: a password hash counts against the client's
    /// share, and `TooMany` (it should back off) wins over `Busy`.
    pub async fn check_request(&self, req: &AuthRequest<'_>) -> Result<Admission, AuthFailure> {
        self.judge(req).await.map_err(|r| r.failure)
    }

    /// [`check_request`](Self::check_request), keeping an auth service's refusal (status,
    /// `WWW-Authenticate`, `Location`) for the client. An auth service that could not judge
    /// (`Unavailable`) counts like `Busy`: the request might have been admitted.
    pub async fn judge(&self, req: &AuthRequest<'_>) -> Result<Admission, Rejection> {
        let mut judged: Option<Rejection> = None;
        let mut busy = None;
        for a in &self.auths {
            match a.judge(req).await {
                Ok(admission) => return Ok(admission),
                Err(r) => match r.failure {
                    AuthFailure::Missing => {}
                    f @ (AuthFailure::Busy | AuthFailure::TooMany | AuthFailure::Unavailable) => {
                        if busy.is_none() || f == AuthFailure::TooMany {
                            busy = Some(f);
                        }
                    }
                    _ => {
                        judged.get_or_insert(r);
                    }
                },
            }
        }
        if let Some(busy) = busy {
            return Err(busy.into());
        }
        Err(judged.unwrap_or(AuthFailure::Missing.into()))
    }

    /// Header names some authenticator of this route sets upstream (see
    /// [`Admission::upstream_headers`]).
    pub fn owned_headers(&self) -> impl Iterator<Item = &HeaderName> {
        self.auths.iter().flat_map(|a| a.owned_headers())
    }

    /// Prepares what goes upstream after an admission: every credential the route
    /// understands is removed, not only the one that admitted (a Basic password sent
    /// alongside a valid token must not reach the backend, nor a second identity); client
    /// copies of owned headers are removed; the admitting authenticator's headers are set.
    pub fn prepare_upstream(
        &self,
        admission: &Admission,
        headers: &mut HeaderMap,
        query: &mut Option<String>,
    ) {
        for a in &self.auths {
            a.strip_credentials(headers, query);
        }
        for name in self.owned_headers() {
            headers.remove(name);
        }
        // With `underscores_in_headers: true`, `X_Auth_Role` would reach a WSGI/CGI backend
        // as the same variable as the `X-Auth-Role` set here: its copies go too.
        let twins: Vec<HeaderName> = headers
            .keys()
            .filter(|n| {
                n.as_str().contains('_')
                    && self
                        .owned_headers()
                        .any(|o| o.as_str() == n.as_str().replace('_', "-"))
            })
            .cloned()
            .collect();
        for name in twins {
            headers.remove(name);
        }
        for (name, value) in &admission.upstream_headers {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// The scheme of an `Authorization` header, as far as we care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    /// `Basic`, any case.
    Basic,
    /// `Bearer`, any case.
    Bearer,
    /// Anything else (not a credential for us).
    Other,
}

/// The single `Authorization` header split into scheme and (trimmed) parameters.
/// Several `Authorization` headers are `Malformed`: which one would be meant, and which
/// one stripped, is ambiguous.
fn authorization(headers: &http::HeaderMap) -> Result<Option<(Scheme, &[u8])>, AuthFailure> {
    let mut all = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(AuthFailure::Malformed);
    }
    let bytes = value.as_bytes().trim_ascii();
    let (scheme, rest) = match bytes.iter().position(|b| *b == b' ' || *b == b'\t') {
        Some(i) => {
            let (scheme, rest) = bytes.split_at(i);
            (scheme, rest.trim_ascii())
        }
        None => (bytes, &b""[..]),
    };
    let scheme = if scheme.eq_ignore_ascii_case(b"basic") {
        Scheme::Basic
    } else if scheme.eq_ignore_ascii_case(b"bearer") {
        Scheme::Bearer
    } else {
        Scheme::Other
    };
    Ok(Some((scheme, rest)))
}

/// Whether a raw query `key` could be read as `name` by some backend: after percent-decoding
/// (repeatedly, for double encoding) and trimming blanks, it equals `name` ignoring case, or
/// continues it with `[` or `.` (PHP/Rails/qs arrays and nested keys: `token[]`, `token.x`).
/// The exact name folds too; a NUL ends the key as C-string parsers see it.
fn folds_to(raw_key: &str, name: &str) -> bool {
    let mut bytes = raw_key.as_bytes().to_vec();
    // Bounded: each round only shrinks the key.
    for _ in 0..4 {
        let next = percent_decode_lenient(&bytes);
        if next == bytes {
            break;
        }
        bytes = next;
    }
    if let Some(nul) = bytes.iter().position(|b| *b == 0) {
        bytes.truncate(nul);
    }
    let key = String::from_utf8_lossy(&bytes);
    let key = key.trim_matches(|c: char| c.is_ascii_whitespace());
    let same = |k: &str| {
        k.eq_ignore_ascii_case(name)
            || k.to_lowercase() == name.to_lowercase()
            || k.to_uppercase() == name.to_uppercase()
    };
    if same(key) {
        return true;
    }
    key.char_indices()
        .filter(|(_, c)| *c == '[' || *c == '.')
        .any(|(i, _)| key.get(..i).is_some_and(same))
}

/// Percent-decoding as lenient servers do it: `+` is a space and a broken `%` escape stays
/// as it is (so `%zztoken` is not `token`).
fn percent_decode_lenient(bytes: &[u8]) -> Vec<u8> {
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escaped = match (b, bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) => hex(h).zip(hex(l)).map(|(h, l)| (h << 4 | l) as u8),
            _ => None,
        };
        match (b, escaped) {
            (_, Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (_, None) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// The percent-decoded value of the single `name` parameter. More than one occurrence,
/// an empty value, a raw value longer than `max_raw`, or a value that is not UTF-8
/// after decoding: `Malformed`.
fn query_param(query: &str, name: &str, max_raw: usize) -> Result<Option<String>, AuthFailure> {
    let mut found: Option<&str> = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        // Exactly the name: look-alikes never reach here (see `RouteAuth::check_query`).
        if key != name {
            continue;
        }
        if found.is_some() {
            return Err(AuthFailure::Malformed);
        }
        found = Some(value);
    }
    let Some(raw) = found else {
        return Ok(None);
    };
    if raw.is_empty() || raw.len() > max_raw {
        return Err(AuthFailure::Malformed);
    }
    let bytes = percent_decode(raw).ok_or(AuthFailure::Malformed)?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| AuthFailure::Malformed)
}

/// `application/x-www-form-urlencoded` decoding (`%XX` and `+` as space); `None` on a
/// broken `%` escape.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let hex = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    };
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hi = hex(*bytes.get(i + 1)?)?;
                let lo = hex(*bytes.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

/// Removes every `name` parameter, and every key that folds to it, from a raw query,
/// keeping the other pairs byte-for-byte and in order; `None` if nothing remains.
///
/// Look-alikes are refused before this runs ([`RouteAuth::check_query`]); removing them too
/// means none could reach a backend even if that check were skipped. When something is
/// removed, empty pairs (`a=1&&b=2`) are dropped too, so no stray `&` is left behind; when
/// nothing matches, the query comes back unchanged.
pub fn strip_query_param(query: &str, name: &str) -> Option<String> {
    let matches = |pair: &str| folds_to(pair.split_once('=').map_or(pair, |(k, _)| k), name);
    if !query.split('&').any(matches) {
        return (!query.is_empty()).then(|| query.to_owned());
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !matches(p))
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// One advice line per user of an htpasswd file whose hash is weak (apr1, `{SHA}`), naming
/// the line and user but never the hash.
pub fn weak_htpasswd_users(bytes: &[u8]) -> Vec<String> {
    htpasswd::weak_users(bytes)
        .into_iter()
        .map(|(line, user, scheme)| {
            format!(
                "line {line}: user {user:?} has a weak {scheme} hash, fast to crack if the \
                 file leaks; re-hash it with `wsgate hash-password`"
            )
        })
        .collect()
}

/// Why `hash_password` failed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// bcrypt only uses the first 72 bytes; longer passwords would be silently truncated.
    #[error("password is 72 bytes or longer, which bcrypt truncates; use --argon2")]
    TooLong,
    /// The bcrypt library failed (e.g. no OS randomness).
    #[error("bcrypt: {0}")]
    Bcrypt(String),
    /// The argon2 library failed (e.g. no OS randomness).
    #[error("argon2: {0}")]
    Argon2(String),
}

/// bcrypt cost used by `wsgate hash-password` (~250 ms on a current core).
pub const BCRYPT_COST: u32 = 12;

/// For `wsgate hash-password`: bcrypt (`$2y$`, cost 12) or argon2id (default params, PHC string).
pub fn hash_password(password: &str, argon2: bool) -> Result<String, HashError> {
    if argon2 {
        return hash_argon2id(password, argon2::Params::default());
    }
    match bcrypt::non_truncating_hash_with_result(password, BCRYPT_COST) {
        Ok(parts) => Ok(parts.format_for_version(bcrypt::Version::TwoY)),
        Err(bcrypt::BcryptError::Truncation(_)) => Err(HashError::TooLong),
        Err(e) => Err(HashError::Bcrypt(e.to_string())),
    }
}

/// argon2id with explicit params (tests use cheap ones).
fn hash_argon2id(password: &str, params: argon2::Params) -> Result<String, HashError> {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError::Argon2(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BasicConfig;
    use base64::Engine as _;
    use serde_json::json;
    use std::io::Write as _;
    use std::time::Duration;

    #[test]
    fn reasons() {
        let all = [
            (AuthFailure::Missing, "missing"),
            (AuthFailure::Malformed, "malformed"),
            (AuthFailure::BadCredentials, "bad_credentials"),
            (AuthFailure::Expired, "expired"),
            (AuthFailure::NotYetValid, "not_yet_valid"),
            (AuthFailure::BadSignature, "bad_signature"),
            (AuthFailure::BadClaims, "bad_claims"),
            (AuthFailure::Busy, "busy"),
            (AuthFailure::Denied, "denied"),
            (AuthFailure::Unavailable, "auth_unavailable"),
        ];
        for (f, r) in all {
            assert_eq!(f.reason(), r);
            // Busy is answered 503 and not counted as an auth failure; every other reason is
            // exported at zero from the start, so it must be in the metrics' list.
            assert_eq!(
                crate::metrics::AUTH_FAILURE_REASONS.contains(&r),
                f != AuthFailure::Busy,
                "{r}"
            );
        }
    }

    #[test]
    fn strip_cases() {
        let s = |q: &str| strip_query_param(q, "token");
        assert_eq!(s("token=x&a=1&b=2"), Some("a=1&b=2".into()));
        assert_eq!(s("a=1&token=x&b=2"), Some("a=1&b=2".into()));
        assert_eq!(s("a=1&b=2&token=x"), Some("a=1&b=2".into()));
        assert_eq!(s("token=x"), None);
        assert_eq!(s("token=x&token=y"), None);
        assert_eq!(s("token=x&a=1&token=y&token"), Some("a=1".into()));
        assert_eq!(s("a=1&&token=x&&b=%2F+c&"), Some("a=1&b=%2F+c".into()));
        assert_eq!(
            s("tokens=1&token=x&xtoken=2"),
            Some("tokens=1&xtoken=2".into())
        );
        assert_eq!(s("%74oken=x&a=1"), Some("a=1".into()));
        assert_eq!(s("TOKEN=x&a=1&token[]=y"), Some("a=1".into()));
        // Nothing to strip: unchanged, even odd bytes.
        assert_eq!(s("tokens=1&&a"), Some("tokens=1&&a".into()));
        assert_eq!(s(""), None);
    }

    #[test]
    fn fold_cases() {
        for k in [
            "token",
            "TOKEN",
            "Token",
            "token[]",
            "token[0]",
            "token%5B%5D",
            "%74oken",
            "%54OKEN",
            "%2574oken",
            "+token",
            "%20token%20",
            "token.x",
            "token%00x",
            "to\u{212A}en",
        ] {
            assert!(folds_to(k, "token"), "{k}");
        }
        for k in ["tokens", "mytoken", "x", "", "%zztoken", "token_", "tok[en"] {
            assert!(!folds_to(k, "token"), "{k}");
        }
        // Names with a dot are matched as a whole first.
        assert!(folds_to("ACCESS.TOKEN", "access.token"));
        assert!(!folds_to("access", "access.token"));
    }

    #[test]
    fn check_query_cases() {
        let f = htpasswd_file();
        let r = route(&f, Arc::new(HashLimiter::new(1)));
        assert_eq!(r.check_query(None), Ok(()));
        assert_eq!(r.check_query(Some("token=a&x=1&tokens=2")), Ok(()));
        assert_eq!(r.check_query(Some("x=%3B")), Ok(()));
        for bad in [
            "token=a&x=1;token=b",
            "token=a&token=b",
            "token=a&TOKEN=b",
            "token=a&token[]=b",
            "%74oken=a",
        ] {
            assert!(r.check_query(Some(bad)).is_err(), "{bad}");
        }
        // Routes that read no credential from the query don't care.
        let basic_only = RouteAuth::new(vec![r.auths[0].clone()]);
        assert_eq!(
            basic_only.check_query(Some("a;b&TOKEN=1&token=1&token=2")),
            Ok(())
        );
        assert_eq!(RouteAuth::default().check_query(Some("a;b")), Ok(()));
    }

    #[test]
    fn query_param_cases() {
        assert_eq!(
            query_param("a=1&token=a%2Eb+c", "token", 100),
            Ok(Some("a.b c".into()))
        );
        assert_eq!(query_param("a=1&tokens=x", "token", 100), Ok(None));
        assert_eq!(
            query_param("token=1&token=2", "token", 100),
            Err(AuthFailure::Malformed)
        );
        assert_eq!(
            query_param("token", "token", 100),
            Err(AuthFailure::Malformed)
        );
        assert_eq!(
            query_param("token=%zz", "token", 100),
            Err(AuthFailure::Malformed)
        );
        assert_eq!(
            query_param("token=%ff", "token", 100),
            Err(AuthFailure::Malformed)
        );
        assert_eq!(
            query_param("token=abcdef", "token", 5),
            Err(AuthFailure::Malformed)
        );
    }

    #[test]
    fn two_authorization_headers_are_malformed() {
        let mut h = http::HeaderMap::new();
        h.append(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Basic YTpi"),
        );
        h.append(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Bearer x"),
        );
        assert_eq!(authorization(&h), Err(AuthFailure::Malformed));
    }

    #[test]
    fn hash_password_bcrypt_verifies() {
        let h = hash_password("correct horse", false).expect("hash");
        assert!(h.starts_with("$2y$12$"), "{h}");
        assert!(bcrypt::verify("correct horse", &h).expect("verify"));
        // It is also accepted by our own htpasswd loader.
        let parsed = htpasswd::parse(format!("u:{h}\n").as_bytes()).expect("loads");
        assert!(parsed.users["u"].verify(b"correct horse"));
        assert!(matches!(
            hash_password(&"x".repeat(80), false),
            Err(HashError::TooLong)
        ));
    }

    #[test]
    fn hash_password_argon2id_verifies() {
        let h = hash_password("correct horse", true).expect("hash");
        assert!(h.starts_with("$argon2id$v=19$"), "{h}");
        let parsed = htpasswd::parse(format!("u:{h}\n").as_bytes()).expect("loads");
        assert!(parsed.users["u"].verify(b"correct horse"));
        assert!(!parsed.users["u"].verify(b"wrong horse"));
    }

    fn htpasswd_file() -> tempfile::NamedTempFile {
        let h = bcrypt::hash_with_result("pw", 4)
            .expect("hash")
            .format_for_version(bcrypt::Version::TwoY);
        let mut f = tempfile::NamedTempFile::new().expect("tempfile");
        writeln!(f, "alice:{h}").expect("write");
        f
    }

    fn route(f: &tempfile::NamedTempFile, limiter: Arc<HashLimiter>) -> RouteAuth {
        let basic = AuthConfig::Basic(BasicConfig {
            realm: "my \"realm\"".into(),
            htpasswd: f.path().to_path_buf(),
            cache_ttl: Duration::from_secs(60),
        });
        let jwt = AuthConfig::Jwt(jwt::tests::hs_cfg());
        RouteAuth::new(vec![
            Arc::new(Authenticator::build("users", &basic, limiter).expect("basic")),
            Arc::new(
                Authenticator::build("jwt", &jwt, Arc::new(HashLimiter::new(1))).expect("jwt"),
            ),
        ])
    }

    fn basic_header(user: &str, pw: &str) -> http::HeaderMap {
        let v = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
        );
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&v).expect("header"),
        );
        h
    }

    #[tokio::test]
    async fn failure_selection_across_authenticators() {
        let f = htpasswd_file();
        let r = route(&f, Arc::new(HashLimiter::new(2)));
        assert!(!r.is_open());
        assert!(RouteAuth::new(vec![]).is_open());
        let none = http::HeaderMap::new();

        // Nothing at all: Missing.
        assert_eq!(r.check(&none, None).await.err(), Some(AuthFailure::Missing));
        assert_eq!(
            r.check(&none, Some("a=1")).await.err(),
            Some(AuthFailure::Missing)
        );

        // Expired JWT in the query, no Basic header: the JWT's verdict, not Missing.
        let expired = jwt::tests::hs_token(&json!({"sub": "a", "exp": jwt::tests::now() - 600}));
        let q = format!("token={expired}");
        assert_eq!(
            r.check(&none, Some(&q)).await.err(),
            Some(AuthFailure::Expired)
        );

        // Wrong Basic password and an expired JWT: the first judged failure (Basic, listed first).
        let bad = basic_header("alice", "nope");
        assert_eq!(
            r.check(&bad, Some(&q)).await.err(),
            Some(AuthFailure::BadCredentials)
        );

        // Wrong Basic password but a good JWT in the query: admitted by the JWT.
        let good = jwt::tests::hs_token(&jwt::tests::good_claims());
        let a = r
            .check(&bad, Some(&format!("x=1&token={good}")))
            .await
            .expect("admit");
        assert_eq!(a.authenticator, "jwt");
        assert_eq!(a.identity.user, "alice");

        // Good Basic: admitted by the first authenticator.
        let a = r
            .check(&basic_header("alice", "pw"), None)
            .await
            .expect("admit");
        assert_eq!(a.authenticator, "users");
        assert_eq!(a.identity.expires_at, None);
    }

    #[test]
    fn check_future_is_send() {
        // The integrator awaits `check` inside spawned connection tasks.
        fn assert_send<T: Send>(_: &T) {}
        let f = htpasswd_file();
        let r = route(&f, Arc::new(HashLimiter::new(1)));
        let h = http::HeaderMap::new();
        assert_send(&r.check(&h, None));
    }

    #[tokio::test]
    async fn busy_wins_when_nothing_admits() {
        let f = htpasswd_file();
        let limiter = Arc::new(HashLimiter::with_limits(1, 0, Duration::from_secs(60)));
        let r = route(&f, limiter.clone());
        let _held = limiter.try_take().expect("slot");
        let expired = jwt::tests::hs_token(&json!({"sub": "a", "exp": jwt::tests::now() - 600}));
        let q = format!("token={expired}");
        assert_eq!(
            r.check(&basic_header("alice", "pw"), Some(&q)).await.err(),
            Some(AuthFailure::Busy)
        );
        // ...but a JWT that admits still admits while hashing is saturated.
        let good = jwt::tests::hs_token(&jwt::tests::good_claims());
        let q = format!("token={good}");
        assert!(
            r.check(&basic_header("alice", "pw"), Some(&q))
                .await
                .is_ok()
        );
    }

    #[test]
    fn challenge_is_first_basic_realm_escaped() {
        let f = htpasswd_file();
        let r = route(&f, Arc::new(HashLimiter::new(1)));
        assert_eq!(
            r.challenge().as_deref(),
            Some(r#"Basic realm="my \"realm\"", charset="UTF-8""#)
        );
        let jwt_only = RouteAuth::new(vec![Arc::new(
            Authenticator::build(
                "jwt",
                &AuthConfig::Jwt(jwt::tests::hs_cfg()),
                Arc::new(HashLimiter::new(1)),
            )
            .expect("jwt"),
        )]);
        assert_eq!(jwt_only.challenge(), None);
        assert_eq!(jwt_only.auths[0].name(), "jwt");
        assert_eq!(jwt_only.auths[0].basic_realm(), None);
    }
}
