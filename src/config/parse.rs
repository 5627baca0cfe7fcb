//! Walks the generic YAML tree, collecting every problem with its YAML path, and builds the
//! typed [`Config`].
//!
//! Invalid values are replaced by defaults so the walk can go on and report the rest; the
//! result is only returned when no error was recorded.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::{Algorithm, AlgorithmFamily};

use super::jwt_rules::{alg_name, parse_algorithm};
use serde_json::{Map, Value};

use super::types::*;
use super::{ConfigError, duration, env, validate};

const TOP_KEYS: &[&str] = &[
    "listeners",
    "admin",
    "auth",
    "routes",
    "shutdown",
    "timeouts",
    "limits",
    "trusted_proxies",
    "underscores_in_headers",
    "case_insensitive_paths",
];
const LISTENER_KEYS: &[&str] = &["bind", "tls", "proxy_protocol"];
const TLS_KEYS: &[&str] = &["cert", "key"];
const ADMIN_KEYS: &[&str] = &["bind", "token", "max_connections"];
const BASIC_KEYS: &[&str] = &["type", "realm", "htpasswd", "cache_ttl"];
const JWT_KEYS: &[&str] = &[
    "type",
    "query_param",
    "algorithms",
    "secret",
    "public_key",
    "issuer",
    "audience",
    "leeway",
    "max_token_bytes",
    "max_token_age",
];
const ROUTE_KEYS: &[&str] = &["path", "upstream", "auth", "balance", "ca", "origins"];
const SHUTDOWN_KEYS: &[&str] = &["drain_timeout"];
const TIMEOUT_KEYS: &[&str] = &[
    "tls_handshake",
    "request_header",
    "upstream_connect",
    "upstream_response",
    "tunnel_idle",
    "upstream_retry",
];
const LIMIT_KEYS: &[&str] = &[
    "max_connections",
    "max_concurrent_hashes",
    "max_connections_per_ip",
    "handshake_rate_per_ip",
    "handshake_burst_per_ip",
    "max_pending_handshakes",
    "max_hashes_per_ip",
    "ipv6_prefix",
];

/// Builds a [`Config`] from a parsed YAML document.
pub(crate) fn build(
    root: &Value,
    source: &Path,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<ConfigError>> {
    let mut w = Walker {
        errors: Vec::new(),
        env,
        base_dir,
    };
    let config = w.config(root, source);
    match config {
        Some(c) if w.errors.is_empty() => Ok(c),
        _ => Err(w.errors),
    }
}

struct Walker<'a> {
    errors: Vec<ConfigError>,
    env: &'a dyn Fn(&str) -> Option<String>,
    base_dir: &'a Path,
}

/// `parent.key`, or `key` at the top level.
fn at(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

fn idx(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

/// A key's value; an explicit YAML null (`key:` with nothing after it) counts as absent.
fn field<'v>(m: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    m.get(key).filter(|v| !v.is_null())
}

impl Walker<'_> {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError::new(path, message));
    }

    fn map<'v>(
        &mut self,
        v: &'v Value,
        path: &str,
        allowed: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        let m = self.any_map(v, path)?;
        self.check_keys(m, path, allowed);
        Some(m)
    }

    fn any_map<'v>(&mut self, v: &'v Value, path: &str) -> Option<&'v Map<String, Value>> {
        match v {
            Value::Object(m) => Some(m),
            other => {
                self.err(path, format!("expected a map, got {}", kind(other)));
                None
            }
        }
    }

    fn check_keys(&mut self, m: &Map<String, Value>, path: &str, allowed: &[&str]) {
        for key in m.keys() {
            if !allowed.contains(&key.as_str()) {
                self.err(
                    at(path, key),
                    format!("unknown key (expected one of: {})", allowed.join(", ")),
                );
            }
        }
    }

    fn required<'v>(
        &mut self,
        m: &'v Map<String, Value>,
        path: &str,
        key: &str,
    ) -> Option<&'v Value> {
        let v = field(m, key);
        if v.is_none() {
            self.err(at(path, key), "required key is missing");
        }
        v
    }

    fn list<'v>(&mut self, v: &'v Value, path: &str) -> Option<&'v [Value]> {
        match v {
            Value::Array(items) => Some(items),
            other => {
                self.err(path, format!("expected a list, got {}", kind(other)));
                None
            }
        }
    }

    /// A required, non-empty top-level list; empty (with the error recorded) otherwise.
    fn required_list<'v>(
        &mut self,
        root: &'v Map<String, Value>,
        key: &str,
        what: &str,
    ) -> &'v [Value] {
        let Some(v) = self.required(root, "", key) else {
            return &[];
        };
        let Some(items) = self.list(v, key) else {
            return &[];
        };
        if items.is_empty() {
            self.err(key, format!("at least one {what} is required"));
        }
        items
    }

    /// A string value with `${VAR}` expanded.
    fn string(&mut self, v: &Value, path: &str) -> Option<String> {
        let Value::String(raw) = v else {
            self.err(path, format!("expected a string, got {}", kind(v)));
            return None;
        };
        match env::expand(raw, self.env) {
            Ok(s) => Some(s),
            Err(messages) => {
                for m in messages {
                    self.err(path, m);
                }
                None
            }
        }
    }

    fn nonempty_string(&mut self, v: &Value, path: &str) -> Option<String> {
        let s = self.string(v, path)?;
        if s.is_empty() {
            self.err(path, "must not be empty");
            return None;
        }
        Some(s)
    }

    /// A file name, resolved against the config file's directory (not opened here).
    fn file(&mut self, v: &Value, path: &str) -> Option<PathBuf> {
        self.nonempty_string(v, path).map(|s| self.base_dir.join(s))
    }

    fn duration(&mut self, v: &Value, path: &str) -> Option<Duration> {
        if let Value::Number(n) = v {
            self.err(path, duration::bare_number(&n.to_string()));
            return None;
        }
        let s = self.string(v, path)?;
        match duration::parse(&s) {
            Ok(d) => Some(d),
            Err(m) => {
                self.err(path, m);
                None
            }
        }
    }

    fn opt_duration(
        &mut self,
        m: &Map<String, Value>,
        path: &str,
        key: &str,
        default: Duration,
    ) -> Duration {
        field(m, key)
            .and_then(|v| self.duration(v, &at(path, key)))
            .unwrap_or(default)
    }

    /// Quoted numbers are refused so that every integer in the file is written the same way.
    fn positive_int(&mut self, v: &Value, path: &str) -> Option<usize> {
        let n = match v {
            Value::Number(n) => n.as_u64().and_then(|n| usize::try_from(n).ok()),
            Value::String(s) if s.trim().parse::<u64>().is_ok() => {
                self.err(
                    path,
                    format!(
                        "expected an integer, got a quoted string: write {} without quotes",
                        s.trim()
                    ),
                );
                return None;
            }
            other => {
                self.err(
                    path,
                    format!("expected a positive integer, got {}", kind(other)),
                );
                return None;
            }
        };
        match n {
            Some(n) if n > 0 => Some(n),
            _ => {
                self.err(path, format!("expected a positive integer, got {v}"));
                None
            }
        }
    }

    fn opt_bool(&mut self, m: &Map<String, Value>, path: &str, key: &str) -> bool {
        match field(m, key) {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                self.err(
                    at(path, key),
                    format!("expected true or false, got {}", kind(other)),
                );
                false
            }
        }
    }

    /// Like `opt_positive_int`, but 0 is allowed (it means "off").
    fn opt_count(
        &mut self,
        m: &Map<String, Value>,
        path: &str,
        key: &str,
        default: usize,
    ) -> usize {
        match field(m, key) {
            Some(Value::Number(n)) if n.as_u64() == Some(0) => 0,
            Some(v) => self.positive_int(v, &at(path, key)).unwrap_or(default),
            None => default,
        }
    }

    fn opt_positive_int(
        &mut self,
        m: &Map<String, Value>,
        path: &str,
        key: &str,
        default: usize,
    ) -> usize {
        field(m, key)
            .and_then(|v| self.positive_int(v, &at(path, key)))
            .unwrap_or(default)
    }

    fn bind(&mut self, v: &Value, path: &str) -> Option<SocketAddr> {
        let s = self.string(v, path)?;
        match validate::bind_addr(&s) {
            Ok(a) => Some(a),
            Err(m) => {
                self.err(path, m);
                None
            }
        }
    }

    fn config(&mut self, root: &Value, source: &Path) -> Option<Config> {
        let m = match root {
            Value::Null => {
                self.err(
                    "",
                    "the configuration is empty: listeners and routes are required",
                );
                return None;
            }
            other => self.map(other, "", TOP_KEYS)?,
        };
        let listeners = self.listeners(m);
        let admin = field(m, "admin").and_then(|v| self.admin(v, &listeners));
        let (auth, auth_names) = self.auths(m);
        let routes = self.routes(m, &auth_names);
        let shutdown = self.shutdown(m);
        let timeouts = self.timeouts(m);
        let limits = self.limits(m);
        let trusted_proxies = field(m, "trusted_proxies").and_then(|v| self.trusted_proxies(v));
        let underscores_in_headers = self.opt_bool(m, "", "underscores_in_headers");
        let case_insensitive_paths = self.opt_bool(m, "", "case_insensitive_paths");
        Some(Config {
            source: source.to_path_buf(),
            listeners: listeners.into_iter().map(|(l, _)| l).collect(),
            admin,
            auth,
            routes,
            shutdown,
            timeouts,
            limits,
            trusted_proxies,
            underscores_in_headers,
            case_insensitive_paths,
        })
    }

    fn trusted_proxies(&mut self, v: &Value) -> Option<Vec<ipnet::IpNet>> {
        self.validated_list(v, "trusted_proxies", validate::cidr)
    }

    /// A list of strings, each checked by `check`; every bad entry is reported with its path.
    fn validated_list<T>(
        &mut self,
        v: &Value,
        path: &str,
        check: fn(&str) -> Result<T, String>,
    ) -> Option<Vec<T>> {
        let items = self.list(v, path)?;
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = idx(path, i);
            let Some(s) = self.string(item, &p) else {
                continue;
            };
            match check(&s) {
                Ok(x) => out.push(x),
                Err(m) => self.err(p, m),
            }
        }
        Some(out)
    }

    /// Returns each valid listener with its YAML path, for conflict messages.
    fn listeners(&mut self, root: &Map<String, Value>) -> Vec<(ListenerConfig, String)> {
        let mut out: Vec<(ListenerConfig, String)> = Vec::new();
        let items = self.required_list(root, "listeners", "listener");
        for (i, item) in items.iter().enumerate() {
            let path = idx("listeners", i);
            let Some(m) = self.map(item, &path, LISTENER_KEYS) else {
                continue;
            };
            let bind_path = at(&path, "bind");
            let bind = self
                .required(m, &path, "bind")
                .and_then(|v| self.bind(v, &bind_path));
            let tls = field(m, "tls").and_then(|v| self.tls(v, &at(&path, "tls")));
            let proxy_protocol = self.opt_bool(m, &path, "proxy_protocol");
            let Some(bind) = bind else { continue };
            if let Some((_, other)) = out
                .iter()
                .find(|(l, _)| validate::binds_conflict(l.bind, bind))
            {
                let msg = conflict_message(bind, other);
                self.err(bind_path, msg);
                continue;
            }
            out.push((
                ListenerConfig {
                    bind,
                    tls,
                    proxy_protocol,
                },
                bind_path,
            ));
        }
        out
    }

    fn tls(&mut self, v: &Value, path: &str) -> Option<TlsFiles> {
        let m = self.map(v, path, TLS_KEYS)?;
        let cert = self
            .required(m, path, "cert")
            .and_then(|v| self.file(v, &at(path, "cert")));
        let key = self
            .required(m, path, "key")
            .and_then(|v| self.file(v, &at(path, "key")));
        Some(TlsFiles {
            cert: cert?,
            key: key?,
        })
    }

    fn admin(&mut self, v: &Value, listeners: &[(ListenerConfig, String)]) -> Option<AdminConfig> {
        let m = self.map(v, "admin", ADMIN_KEYS)?;
        let bind = self
            .required(m, "admin", "bind")
            .and_then(|v| self.bind(v, "admin.bind"))?;
        if let Some((_, other)) = listeners
            .iter()
            .find(|(l, _)| validate::binds_conflict(l.bind, bind))
        {
            let msg = conflict_message(bind, other);
            self.err("admin.bind", msg);
        }
        let token = field(m, "token").and_then(|v| self.nonempty_string(v, "admin.token"));
        if let Some(t) = &token
            && t.len() < MIN_ADMIN_TOKEN_BYTES
        {
            self.err(
                "admin.token",
                format!(
                    "must be at least {MIN_ADMIN_TOKEN_BYTES} bytes (e.g. `openssl rand -hex 32`)"
                ),
            );
        }
        let max_connections =
            self.opt_positive_int(m, "admin", "max_connections", DEFAULT_ADMIN_MAX_CONNECTIONS);
        Some(AdminConfig {
            bind,
            token,
            max_connections,
        })
    }

    /// Returns the valid authenticators and the names of all those defined, valid or not, so
    /// a broken authenticator is not also reported as unknown by every route using it.
    fn auths(
        &mut self,
        root: &Map<String, Value>,
    ) -> (BTreeMap<String, AuthConfig>, BTreeSet<String>) {
        let mut out = BTreeMap::new();
        let mut names = BTreeSet::new();
        let Some(v) = field(root, "auth") else {
            return (out, names);
        };
        let Some(m) = self.any_map(v, "auth") else {
            return (out, names);
        };
        for (name, v) in m {
            names.insert(name.clone());
            let path = at("auth", name);
            if let Err(msg) = validate::auth_name(name) {
                self.err(&path, msg);
                continue;
            }
            if let Some(a) = self.authenticator(v, &path) {
                out.insert(name.clone(), a);
            }
        }
        (out, names)
    }

    fn authenticator(&mut self, v: &Value, path: &str) -> Option<AuthConfig> {
        let m = self.any_map(v, path)?;
        let type_path = at(path, "type");
        let ty = self
            .required(m, path, "type")
            .and_then(|v| self.string(v, &type_path))?;
        match ty.as_str() {
            "basic" => {
                self.check_keys(m, path, BASIC_KEYS);
                self.basic(m, path).map(AuthConfig::Basic)
            }
            "jwt" => {
                self.check_keys(m, path, JWT_KEYS);
                self.jwt(m, path).map(AuthConfig::Jwt)
            }
            other => {
                self.err(
                    type_path,
                    format!(
                        "unknown authenticator type \"{}\" (expected one of: basic, jwt)",
                        other.escape_debug()
                    ),
                );
                None
            }
        }
    }

    fn basic(&mut self, m: &Map<String, Value>, path: &str) -> Option<BasicConfig> {
        let realm_path = at(path, "realm");
        let realm = match field(m, "realm").and_then(|v| self.string(v, &realm_path)) {
            Some(r) => {
                if let Err(msg) = validate::realm(&r) {
                    self.err(realm_path, msg);
                }
                r
            }
            None => "wsgate".to_string(),
        };
        let htpasswd = self
            .required(m, path, "htpasswd")
            .and_then(|v| self.file(v, &at(path, "htpasswd")));
        let cache_ttl = self.opt_duration(m, path, "cache_ttl", Duration::from_secs(60));
        Some(BasicConfig {
            realm,
            htpasswd: htpasswd?,
            cache_ttl,
        })
    }

    fn jwt(&mut self, m: &Map<String, Value>, path: &str) -> Option<JwtConfig> {
        let qp_path = at(path, "query_param");
        let query_param = match field(m, "query_param").and_then(|v| self.string(v, &qp_path)) {
            Some(q) => {
                if let Err(msg) = validate::query_param(&q) {
                    self.err(qp_path, msg);
                }
                q
            }
            None => "token".to_string(),
        };
        let algorithms = self.algorithms(m, path);
        let key = self.jwt_key(m, path, algorithms.as_deref());
        let issuer = field(m, "issuer").and_then(|v| self.nonempty_string(v, &at(path, "issuer")));
        let audience = field(m, "audience").and_then(|v| self.audience(v, &at(path, "audience")));
        let leeway = self.opt_duration(m, path, "leeway", Duration::from_secs(30));
        let max_token_bytes = self.opt_positive_int(m, path, "max_token_bytes", 8192);
        let max_token_age =
            field(m, "max_token_age").and_then(|v| self.duration(v, &at(path, "max_token_age")));
        let cfg = JwtConfig {
            query_param,
            algorithms: algorithms?,
            key: key?,
            issuer,
            audience,
            leeway,
            max_token_bytes,
            max_token_age,
        };
        // Key/family, secret length and the like are rules on the typed config, shared
        // with the authenticator's build.
        if let Err(problems) = super::jwt_rules::check(&cfg) {
            for (field, message) in problems {
                self.err(at(path, field), message);
            }
            return None;
        }
        Some(cfg)
    }

    /// Parses the allow-list (its emptiness and key families are judged by `jwt_rules`).
    fn algorithms(&mut self, m: &Map<String, Value>, path: &str) -> Option<Vec<Algorithm>> {
        let list_path = at(path, "algorithms");
        let v = self.required(m, path, "algorithms")?;
        let entries: Vec<(&Value, String)> = match v {
            Value::String(_) => vec![(v, list_path.clone())],
            other => self
                .list(other, &list_path)?
                .iter()
                .enumerate()
                .map(|(i, e)| (e, idx(&list_path, i)))
                .collect(),
        };
        let mut algs: Vec<(&'static str, Algorithm)> = Vec::new();
        let mut ok = true;
        for (e, p) in entries {
            let Some(name) = self.string(e, &p) else {
                ok = false;
                continue;
            };
            match parse_algorithm(&name) {
                Ok(found) => {
                    if algs.iter().any(|(_, a)| *a == found.1) {
                        self.err(p, format!("{} is listed twice", found.0));
                    } else {
                        algs.push(found);
                    }
                }
                Err(msg) => {
                    self.err(p, msg);
                    ok = false;
                }
            }
        }
        ok.then(|| algs.into_iter().map(|(_, a)| a).collect())
    }

    fn jwt_key(
        &mut self,
        m: &Map<String, Value>,
        path: &str,
        algorithms: Option<&[Algorithm]>,
    ) -> Option<JwtKey> {
        let secret = field(m, "secret");
        let public_key = field(m, "public_key");
        // Which key is missing depends on the family; whether the given key fits it is a
        // `jwt_rules` check.
        let hmac = algorithms
            .and_then(|a| a.first())
            .map(|a| (a.family() == AlgorithmFamily::Hmac, alg_name(*a)));
        match (secret, public_key) {
            (Some(_), Some(_)) => {
                self.err(path, "set only one of secret or public_key");
                None
            }
            (None, None) => {
                let msg = match hmac {
                    Some((true, alg)) => format!("{alg} needs a shared secret: set secret"),
                    Some((false, alg)) => {
                        format!("{alg} needs a public key: set public_key to a PEM file")
                    }
                    None => "one of secret or public_key is required".to_string(),
                };
                self.err(path, msg);
                None
            }
            (Some(v), None) => self
                .nonempty_string(v, &at(path, "secret"))
                .map(JwtKey::Secret),
            (None, Some(v)) => self.file(v, &at(path, "public_key")).map(JwtKey::PublicKey),
        }
    }

    fn audience(&mut self, v: &Value, path: &str) -> Option<Vec<String>> {
        if let Value::String(_) = v {
            return self.nonempty_string(v, path).map(|s| vec![s]);
        }
        let items = self.list(v, path)?;
        if items.is_empty() {
            self.err(
                path,
                "must not be an empty list (remove the key to accept any audience)",
            );
            return None;
        }
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            out.extend(self.nonempty_string(item, &idx(path, i)));
        }
        (out.len() == items.len()).then_some(out)
    }

    fn routes(
        &mut self,
        root: &Map<String, Value>,
        auth_names: &BTreeSet<String>,
    ) -> Vec<RouteConfig> {
        let mut out: Vec<RouteConfig> = Vec::new();
        let mut seen: Vec<(String, String)> = Vec::new();
        let items = self.required_list(root, "routes", "route");
        for (i, item) in items.iter().enumerate() {
            let path = idx("routes", i);
            let Some(m) = self.map(item, &path, ROUTE_KEYS) else {
                continue;
            };
            let path_path = at(&path, "path");
            let route_path = self
                .required(m, &path, "path")
                .and_then(|v| self.string(v, &path_path))
                .and_then(|p| match validate::route_path(&p) {
                    Ok(()) => Some(p),
                    Err(msg) => {
                        self.err(&path_path, msg);
                        None
                    }
                });
            if let Some(p) = &route_path {
                if let Some((q, other)) = seen.iter().find(|(q, _)| validate::same_route(q, p)) {
                    self.err(&path_path, validate::same_route_message(p, q, other));
                } else {
                    seen.push((p.clone(), path_path.clone()));
                }
            }
            let up_path = at(&path, "upstream");
            let upstreams = self
                .required(m, &path, "upstream")
                .map(|v| self.upstreams(v, &up_path))
                .unwrap_or_default();
            let balance = field(m, "balance")
                .and_then(|v| self.balance(v, &at(&path, "balance")))
                .unwrap_or(Balance::RoundRobin);
            let ca = field(m, "ca").and_then(|v| self.file(v, &at(&path, "ca")));
            if ca.is_some() && !upstreams.iter().any(|u| u.tls) {
                self.err(
                    at(&path, "ca"),
                    "a CA file only applies to wss:// upstreams, and this route has none",
                );
            }
            let origins = field(m, "origins").and_then(|v| self.origins(v, &at(&path, "origins")));
            let auth = field(m, "auth")
                .map(|v| self.route_auth(v, &at(&path, "auth"), auth_names))
                .unwrap_or_default();
            if let Some(path) = route_path
                && !upstreams.is_empty()
            {
                out.push(RouteConfig {
                    path,
                    upstreams,
                    balance,
                    ca,
                    origins,
                    auth,
                });
            }
        }
        out
    }

    /// One URL, or a non-empty list of URLs (a pool).
    fn upstreams(&mut self, v: &Value, path: &str) -> Vec<UpstreamConfig> {
        let entries: Vec<(&Value, String)> = match v {
            Value::Array(items) => {
                if items.is_empty() {
                    self.err(path, "at least one upstream URL is required");
                }
                items
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (e, idx(path, i)))
                    .collect()
            }
            other => vec![(other, path.to_string())],
        };
        let mut out: Vec<UpstreamConfig> = Vec::new();
        for (e, p) in entries {
            let Some(u) = self.string(e, &p) else {
                continue;
            };
            match validate::upstream_url(&u) {
                Ok(up) => {
                    if out.iter().any(|o| o.host == up.host && o.port == up.port) {
                        self.err(&p, "this server is listed twice");
                    } else {
                        out.push(up);
                    }
                }
                Err(msg) => self.err(&p, msg),
            }
        }
        out
    }

    fn balance(&mut self, v: &Value, path: &str) -> Option<Balance> {
        let s = self.string(v, path)?;
        match s.as_str() {
            "round_robin" => Some(Balance::RoundRobin),
            "least_connections" => Some(Balance::LeastConnections),
            "client_ip" => Some(Balance::ClientIp),
            other => {
                self.err(
                    path,
                    format!(
                        "unknown balance \"{}\" (expected round_robin, least_connections or client_ip)",
                        other.escape_debug()
                    ),
                );
                None
            }
        }
    }

    fn origins(&mut self, v: &Value, path: &str) -> Option<Vec<OriginPattern>> {
        if matches!(v, Value::Array(items) if items.is_empty()) {
            self.err(
                path,
                "an empty list would refuse every browser: remove the key to allow any origin",
            );
        }
        self.validated_list(v, path, validate::origin)
    }

    fn route_auth(&mut self, v: &Value, path: &str, defined: &BTreeSet<String>) -> Vec<String> {
        let entries: Vec<(&Value, String)> = match v {
            Value::String(_) => vec![(v, path.to_string())],
            // `auth: []` reads like "nobody" yet would mean "anyone" (no authenticator = open).
            Value::Array(items) if items.is_empty() => {
                self.err(
                    path,
                    "an empty list names no authenticator: omit the key for an open route, \
                     or list at least one authenticator",
                );
                return Vec::new();
            }
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, e)| (e, idx(path, i)))
                .collect(),
            other => {
                self.err(
                    path,
                    format!(
                        "expected a list of authenticator names, got {}",
                        kind(other)
                    ),
                );
                return Vec::new();
            }
        };
        let mut out: Vec<String> = Vec::new();
        for (e, p) in entries {
            let Some(name) = self.string(e, &p) else {
                continue;
            };
            if !defined.contains(&name) {
                let known = if defined.is_empty() {
                    "no authenticators are defined under auth".to_string()
                } else {
                    format!(
                        "defined: {}",
                        defined
                            .iter()
                            .map(String::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                self.err(
                    p,
                    format!(
                        "unknown authenticator \"{}\" ({known})",
                        name.escape_debug()
                    ),
                );
            } else if out.contains(&name) {
                self.err(p, format!("\"{name}\" is listed twice"));
            } else {
                out.push(name);
            }
        }
        out
    }

    fn section<'v>(
        &mut self,
        root: &'v Map<String, Value>,
        key: &str,
        allowed: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        field(root, key).and_then(|v| self.map(v, key, allowed))
    }

    fn shutdown(&mut self, root: &Map<String, Value>) -> ShutdownConfig {
        let drain_timeout = match self.section(root, "shutdown", SHUTDOWN_KEYS) {
            Some(m) => self.opt_duration(m, "shutdown", "drain_timeout", Duration::from_secs(30)),
            None => Duration::from_secs(30),
        };
        ShutdownConfig { drain_timeout }
    }

    fn timeouts(&mut self, root: &Map<String, Value>) -> TimeoutsConfig {
        let defaults = [
            ("tls_handshake", 10),
            ("request_header", 10),
            ("upstream_connect", 5),
            ("upstream_response", 30),
            ("tunnel_idle", 3600),
            ("upstream_retry", 10),
        ];
        let section = self.section(root, "timeouts", TIMEOUT_KEYS);
        let mut values = defaults.map(|(_, secs)| Duration::from_secs(secs));
        if let Some(m) = section {
            for ((key, secs), value) in defaults.iter().zip(values.iter_mut()) {
                let p = at("timeouts", key);
                *value = self.opt_duration(m, "timeouts", key, Duration::from_secs(*secs));
                if value.is_zero() && *key != "tunnel_idle" {
                    // A zero timeout would fail every connection.
                    self.err(p, "must be greater than 0s");
                }
            }
        }
        let [
            tls_handshake,
            request_header,
            upstream_connect,
            upstream_response,
            tunnel_idle,
            upstream_retry,
        ] = values;
        TimeoutsConfig {
            tls_handshake,
            request_header,
            upstream_connect,
            upstream_response,
            tunnel_idle,
            upstream_retry,
        }
    }

    fn limits(&mut self, root: &Map<String, Value>) -> LimitsConfig {
        let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        let empty = Map::new();
        let m = self.section(root, "limits", LIMIT_KEYS).unwrap_or(&empty);
        let to_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        LimitsConfig {
            max_connections: self.opt_positive_int(m, "limits", "max_connections", 10_000),
            max_concurrent_hashes: self.opt_positive_int(
                m,
                "limits",
                "max_concurrent_hashes",
                cpus,
            ),
            // Per-client caps are off unless set: behind a NAT or a load balancer without
            // `trusted_proxies` they would cap the whole site (README: hardened profile).
            max_connections_per_ip: self.opt_count(m, "limits", "max_connections_per_ip", 0),
            handshake_rate_per_ip: to_u32(self.opt_count(m, "limits", "handshake_rate_per_ip", 0)),
            // On by default: it only bites a client with several uncached password checks
            // at once, and stops one client from filling the hash queue for everyone.
            max_hashes_per_ip: self.opt_count(m, "limits", "max_hashes_per_ip", 2),
            ipv6_prefix: self.ipv6_prefix(m),
            handshake_burst_per_ip: to_u32(self.opt_positive_int(
                m,
                "limits",
                "handshake_burst_per_ip",
                40,
            )),
            max_pending_handshakes: self.opt_positive_int(
                m,
                "limits",
                "max_pending_handshakes",
                1024,
            ),
        }
    }

    fn ipv6_prefix(&mut self, m: &Map<String, Value>) -> u8 {
        let path = at("limits", "ipv6_prefix");
        let n = field(m, "ipv6_prefix").and_then(|v| self.positive_int(v, &path));
        match n.map(u8::try_from) {
            None => 64,
            Some(Ok(n)) if n <= 128 => n,
            Some(_) => {
                self.err(&path, "expected a prefix length from 1 to 128");
                64
            }
        }
    }
}

fn conflict_message(bind: SocketAddr, other: &str) -> String {
    format!("{bind} conflicts with {other} (same port on an overlapping address)")
}
