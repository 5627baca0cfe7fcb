//! Configuration: YAML text → validated, typed [`Config`].
//!
//! 1. The YAML is parsed into a generic tree; `key: ~` counts as absent; `${VAR}` references
//!    in strings are expanded.
//! 2. The tree is walked against the JSON Schema generated from `types.rs` (`schema.rs`):
//!    every problem is reported with its YAML path (`routes[1].upstream: ...`), and the
//!    refused values are cut out.
//! 3. serde reads what is left into the typed [`Config`] (defaults from each section's
//!    `impl Default`).
//! 4. `semantic.rs` checks the rules between keys and reads `secret_file`/`token_file`.
//!
//! All problems come back at once. This module binds no ports and opens no files other than
//! the config itself and the secret files it names: certificates, keys and htpasswd files
//! are loaded by `runtime`.

mod acme;
mod duration;
pub(crate) mod env;
mod jwt_rules;
mod leaf;
mod schema;
mod semantic;
mod token_sources;
mod types;
mod validate;
mod warnings;

pub use leaf::Secret;
pub(crate) use leaf::jwks_url;
pub use schema::schema;
pub use types::*;
pub use warnings::warnings;

pub(crate) use jwt_rules::{
    PublicFamily, VerifyKey, alg_name as alg_name_of, check as check_jwt, claim_headers,
};
pub(crate) use token_sources::resolve as resolve_token_sources;

use std::fmt;
use std::path::Path;

use serde_json::Value;

use schema::{Problems, Seg};

/// One configuration problem, located by its YAML path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// YAML path such as `routes[1].upstream`; empty for file-level problems.
    pub path: String,
    /// What is wrong, and when possible how to fix it.
    pub message: String,
}

impl ConfigError {
    /// Creates an error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The same error under `prefix` (`tls` + `cert` → `listeners[0].tls.cert`).
    pub fn under(mut self, prefix: &str) -> Self {
        self.path = match (prefix.is_empty(), self.path.is_empty()) {
            (true, _) => self.path,
            (false, true) => prefix.to_owned(),
            (false, false) => format!("{prefix}.{}", self.path),
        };
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one configuration; never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        Self(vec![e])
    }
}

/// Reads and validates the config file at `path`, expanding `${VAR}` from the process
/// environment and resolving relative file names against the file's directory.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            "",
            format!("cannot read config file {}: {e}", path.display()),
        )
    })?;
    let base_dir = path.parent().unwrap_or(Path::new(""));
    parse_str(&text, path, base_dir, &|name| std::env::var(name).ok())
}

/// Validates config text without touching the real environment.
///
/// `source` is recorded in [`Config::source`]; relative file names are joined to `base_dir`
/// (only `secret_file`/`token_file` are read here); `env` answers `${VAR}` lookups.
pub fn parse_str(
    yaml: &str,
    source: &Path,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let mut tree = parse_tree(yaml, env)?;
    let mut problems = Problems::default();
    expand(&mut tree, &mut Vec::new(), env, &mut problems);
    schema::walk(&tree, schema::schema(), &mut problems);
    let original = tree.clone();
    problems.apply_cuts(&mut tree);
    let mut config: Config = match serde_json::from_value(tree) {
        Ok(c) => c,
        // Everything serde could refuse was cut above; this is a last resort, not a path.
        Err(e) => {
            problems.push(&[], format!("invalid configuration: {e}"));
            return Err(ConfigErrors(problems.errors));
        }
    };
    config.source = source.to_path_buf();
    semantic::check(&mut config, &original, base_dir, &mut problems);
    if problems.errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(problems.errors))
    }
}

/// The YAML document as a JSON tree, with `key: ~` removed (it means "absent").
fn parse_tree(yaml: &str, _env: &dyn Fn(&str) -> Option<String>) -> Result<Value, ConfigErrors> {
    // No snippet: it would quote the source text, which may contain a literal secret.
    let options = serde_saphyr::options! { with_snippet: false };
    let mut tree: Value = serde_saphyr::from_str_with_options(yaml, options)
        .map_err(|e| ConfigError::new("", syntax_message(&e.to_string())))?;
    if tree.is_null() {
        return Err(ConfigError::new(
            "",
            "the configuration is empty: listeners and routes are required",
        )
        .into());
    }
    schema::drop_nulls(&mut tree);
    Ok(tree)
}

/// Expands `${VAR}` in every string of the tree; a string that cannot be expanded is
/// reported (every variable it names) and cut.
fn expand(
    v: &mut Value,
    path: &mut Vec<Seg>,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Problems,
) {
    match v {
        Value::String(s) => match env::expand(s, env) {
            Ok(x) => *s = x,
            Err(messages) => problems.refuse_all(path, messages),
        },
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(Seg::Idx(i));
                expand(item, path, env, problems);
                path.pop();
            }
        }
        Value::Object(m) => {
            for (k, item) in m.iter_mut() {
                path.push(Seg::Key(k.clone()));
                expand(item, path, env, problems);
                path.pop();
            }
        }
        _ => {}
    }
}

fn syntax_message(raw: &str) -> String {
    // The parser's advice names its own API, which means nothing to someone editing YAML.
    let raw = raw.replace(", set DuplicateKeyPolicy in Options if acceptable", "");
    format!("invalid YAML: {raw}")
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::time::Duration;

    use jsonwebtoken::Algorithm;

    use super::*;

    const MINIMAL: &str = "listeners:\n  - bind: \"127.0.0.1:8080\"\nroutes:\n  - path: /ws\n    upstream: ws://127.0.0.1:3000\n";

    fn env(name: &str) -> Option<String> {
        match name {
            "WSGATE_JWT_SECRET" => Some("s3cr#t: \"quoted\" and long enough to sign".into()),
            "PORT" => Some("9000".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn parse(yaml: &str) -> Result<Config, ConfigErrors> {
        parse_str(
            yaml,
            Path::new("/etc/wsgate/config.yaml"),
            Path::new("/etc/wsgate"),
            &env,
        )
    }

    fn ok(yaml: &str) -> Config {
        match parse(yaml) {
            Ok(c) => {
                standard_validator_agrees(yaml);
                c
            }
            Err(e) => panic!("expected a valid config, got:\n{e}"),
        }
    }

    /// A standard JSON Schema validator must accept every config we accept, or editors
    /// using config.schema.json would flag valid files.
    #[track_caller]
    fn standard_validator_agrees(yaml: &str) {
        let mut tree = parse_tree(yaml, &env).unwrap();
        expand(&mut tree, &mut Vec::new(), &env, &mut Problems::default());
        let validator = jsonschema::validator_for(schema()).unwrap();
        let problems: Vec<String> = validator
            .iter_errors(&tree)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(
            problems.is_empty(),
            "jsonschema refuses a valid config:\n{}",
            problems.join("\n")
        );
    }

    #[test]
    fn standard_validator_refuses_structural_mistakes_too() {
        let validator = jsonschema::validator_for(schema()).unwrap();
        for yaml in [
            "listeners: []\nroutes: [{path: /, upstream: ws://h}]\n",
            &with("extra: 1\n"),
            &with("limits: {max_connections: 0}\n"),
            &with("auth: {a: {type: ldap}}\n"),
            &with("auth: {a: {type: basic}}\n"),
            &with("routes2: []\n"),
        ] {
            let tree = parse_tree(yaml, &env).unwrap();
            assert!(!validator.is_valid(&tree), "{yaml}");
            assert!(parse(yaml).is_err(), "{yaml}");
        }
    }

    #[test]
    fn schema_required_keys_are_properties() {
        fn visit(v: &serde_json::Value) {
            if let Some(m) = v.as_object() {
                if let Some(req) = m.get("required").and_then(|r| r.as_array()) {
                    let props = m.get("properties").and_then(|p| p.as_object()).unwrap();
                    for r in req {
                        assert!(props.contains_key(r.as_str().unwrap()), "{r} in {m:?}");
                    }
                }
                m.values().for_each(visit);
            } else if let Some(a) = v.as_array() {
                a.iter().for_each(visit);
            }
        }
        visit(schema());
    }

    fn errs(yaml: &str) -> Vec<String> {
        match parse(yaml) {
            Ok(c) => panic!("expected errors, got {c:?}"),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    /// Asserts that some error starts with `path: ` and contains `needle`.
    #[track_caller]
    fn has(errors: &[String], path: &str, needle: &str) {
        let prefix = format!("{path}: ");
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with(&prefix) && e.contains(needle)),
            "no error at {path} containing {needle:?} in:\n{}",
            errors.join("\n")
        );
    }

    /// MINIMAL plus extra top-level YAML.
    fn with(extra: &str) -> String {
        format!("{MINIMAL}{extra}")
    }

    fn jwt(body: &str) -> String {
        with(&format!("auth:\n  j:\n    type: jwt\n{body}"))
    }

    fn jwt_config(c: &Config) -> &JwtConfig {
        match c.auth.get("j") {
            Some(AuthConfig::Jwt(j)) => j,
            other => panic!("expected jwt, got {other:?}"),
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn contract_example_parses() {
        let yaml = r#"
listeners:
  - bind: "127.0.0.1:8080"
  - bind: "0.0.0.0:8443"
    tls:
      cert: certs/dev.crt
      key: /abs/dev.key
admin:
  bind: "127.0.0.1:9100"
auth:
  users:
    type: basic
    realm: wsgate
    htpasswd: users.htpasswd
  jwt:
    type: jwt
    query_param: token
    algorithms: [HS256]
    secret: "${WSGATE_JWT_SECRET}"
    issuer: "https://auth.example"
    audience: "chat"
    leeway: 30s
routes:
  - path: /test-ws
    upstream: ws://127.0.0.1:3000
  - path: /websocket
    upstream: ws://127.0.0.1:3000
    auth: [users, jwt]
"#;
        let c = ok(yaml);
        assert_eq!(c.source, PathBuf::from("/etc/wsgate/config.yaml"));
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(c.listeners[0].bind, addr("127.0.0.1:8080"));
        assert_eq!(c.listeners[0].tls, None);
        assert_eq!(
            c.listeners[1].tls,
            Some(TlsFiles {
                cert: PathBuf::from("/etc/wsgate/certs/dev.crt"),
                key: PathBuf::from("/abs/dev.key"),
                acme: None,
            })
        );
        assert_eq!(
            c.admin,
            Some(AdminConfig {
                bind: addr("127.0.0.1:9100"),
                token: None,
                token_file: None,
                max_connections: DEFAULT_ADMIN_MAX_CONNECTIONS,
                public_reads: false,
            })
        );
        assert_eq!(
            c.auth.get("users"),
            Some(&AuthConfig::Basic(BasicConfig {
                realm: "wsgate".into(),
                htpasswd: PathBuf::from("/etc/wsgate/users.htpasswd"),
                cache_ttl: Duration::from_secs(60),
            }))
        );
        let j = match c.auth.get("jwt") {
            Some(AuthConfig::Jwt(j)) => j,
            other => panic!("{other:?}"),
        };
        assert_eq!(j.query_param, "token");
        assert_eq!(j.algorithms, vec![Algorithm::HS256]);
        assert_eq!(
            j.key,
            JwtKey::Secret("s3cr#t: \"quoted\" and long enough to sign".into())
        );
        assert_eq!(j.issuer.as_deref(), Some("https://auth.example"));
        assert_eq!(j.audience, Some(vec!["chat".to_string()]));
        assert_eq!(j.leeway, Duration::from_secs(30));
        assert_eq!(j.max_token_bytes, 8192);
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[0].path, "/test-ws");
        assert!(c.routes[0].auth.is_empty());
        assert_eq!(
            c.routes[1].auth,
            vec!["users".to_string(), "jwt".to_string()]
        );
        assert_eq!(
            c.routes[1].upstreams[0],
            UpstreamConfig {
                tls: false,
                host: "127.0.0.1".into(),
                port: 3000,
                url: "ws://127.0.0.1:3000".into(),
            }
        );
    }

    #[test]
    fn absent_sections_take_their_default() {
        // The default values themselves are written once, in types.rs; the README's
        // reference is checked against them (tests/config_schema.rs).
        let c = ok(MINIMAL);
        assert_eq!(c.admin, None);
        assert!(c.auth.is_empty());
        assert_eq!(c.shutdown, ShutdownConfig::default());
        assert_eq!(c.timeouts, TimeoutsConfig::default());
        assert_eq!(c.limits, LimitsConfig::default());
        assert_eq!(c.trusted_proxies, None);
        assert!(!c.underscores_in_headers);
        assert!(!c.listeners[0].proxy_protocol);
        assert_eq!(c.routes[0].balance, Balance::RoundRobin);
        assert_eq!(c.routes[0].origins, None);
        // Safety-relevant defaults, restated on purpose: changing one must be deliberate.
        assert_eq!(c.limits.max_connections_per_ip, 0, "per-client caps off");
        assert_eq!(c.limits.handshake_rate_per_ip, 0);
        assert_eq!(c.limits.max_hashes_per_ip, 2);
        assert!(c.limits.max_concurrent_hashes >= 1);
        assert_eq!(c.timeouts.tunnel_idle, Duration::from_secs(3600));
    }

    #[test]
    fn display_formats() {
        let e = ConfigErrors(vec![
            ConfigError::new("a.b", "bad"),
            ConfigError::new("", "file-level"),
        ]);
        assert_eq!(e.to_string(), "a.b: bad\nfile-level");
    }

    #[test]
    fn yaml_syntax_error_is_one_error_with_position() {
        let e = errs("listeners: [\n  - bind: x\nroutes: {");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("invalid YAML") && e[0].contains("line"),
            "{e:?}"
        );
    }

    #[test]
    fn syntax_errors_do_not_quote_the_source() {
        let e = errs("auth:\n  j:\n    secret: \"hunter2-very-secret\n");
        assert!(!e[0].contains("hunter2"), "{e:?}");
    }

    #[test]
    fn duplicate_yaml_keys_are_errors() {
        let e = errs(&with("shutdown: {}\nshutdown: {}\n"));
        assert!(
            e[0].contains("duplicate") && !e[0].contains("DuplicateKeyPolicy"),
            "{e:?}"
        );
    }

    #[test]
    fn empty_document_and_wrong_root() {
        assert!(errs("")[0].contains("empty"));
        assert!(errs("# nothing\n")[0].contains("empty"));
        assert!(errs("- a\n")[0].contains("expected a map"));
    }

    #[test]
    fn all_errors_are_reported_at_once() {
        let e = errs(
            "listeners:\n  - bind: localhost:80\nroutes:\n  - path: ws\n    upstream: ftp://x\n    auth: [nope]\nextra: 1\n",
        );
        has(&e, "listeners[0].bind", "not an IP");
        has(&e, "routes[0].path", "start with");
        has(&e, "routes[0].upstream", "scheme");
        has(&e, "routes[0].auth[0]", "unknown authenticator \"nope\"");
        has(&e, "extra", "unknown key");
        assert_eq!(e.len(), 5, "{e:?}");
    }

    #[test]
    fn unknown_keys_list_the_expected_ones() {
        let e = errs(
            "listeners:\n  - bind: \"127.0.0.1:1\"\nroutes:\n  - path: /\n    upsteam: ws://h\n",
        );
        has(
            &e,
            "routes[0].upsteam",
            // A prefix: every new route key extends the list.
            "unknown key (expected one of: path, upstream, auth, balance, ca, origins, ",
        );
        has(&e, "routes[0].upstream", "required");
        let e = errs(&with("admin: {bind: \"127.0.0.1:1\", port: 2}\n"));
        has(&e, "admin.port", "unknown key");
        let e = errs(&with("timeouts: {connect: 5s}\n"));
        has(&e, "timeouts.connect", "unknown key");
    }

    #[test]
    fn wrong_types_are_errors() {
        let e = errs("listeners: \"127.0.0.1:80\"\nroutes: {path: /}\n");
        has(&e, "listeners", "expected a list, got a string");
        has(&e, "routes", "expected a list, got a map");
        let e = errs(&with("shutdown: 5\n"));
        has(&e, "shutdown", "expected a map");
        let e = errs("listeners:\n  - bind: [1]\nroutes:\n  - path: 5\n    upstream: ws://h\n");
        has(&e, "listeners[0].bind", "expected a string, got a list");
        has(&e, "routes[0].path", "expected a string, got a number");
    }

    #[test]
    fn required_sections() {
        let e = errs("admin: {bind: \"127.0.0.1:1\"}\n");
        has(&e, "listeners", "required");
        has(&e, "routes", "required");
        let e = errs("listeners: []\nroutes: []\n");
        has(&e, "listeners", "at least one");
        has(&e, "routes", "at least one");
    }

    #[test]
    fn env_expansion_in_any_string() {
        let c = ok(
            "listeners:\n  - bind: \"127.0.0.1:${PORT}\"\nroutes:\n  - path: /a\n    upstream: ws://h:${PORT}\n",
        );
        assert_eq!(c.listeners[0].bind.port(), 9000);
        assert_eq!(c.routes[0].upstreams[0].port, 9000);
        assert_eq!(c.routes[0].upstreams[0].url, "ws://h:9000");
    }

    #[test]
    fn env_unset_variable_names_it() {
        let e = errs(&jwt(
            "    algorithms: [HS256]\n    secret: \"${WSGATE_MISSING}\"\n",
        ));
        has(
            &e,
            "auth.j.secret",
            "environment variable WSGATE_MISSING is not set",
        );
        assert_eq!(e.len(), 1, "{e:?}");
    }

    #[test]
    fn env_literal_and_malformed() {
        let c = ok(&jwt(
            "    algorithms: [HS256]\n    secret: \"a$${b} $ c 0123456789abcdef0123456789\"\n",
        ));
        assert_eq!(
            jwt_config(&c).key,
            JwtKey::Secret("a${b} $ c 0123456789abcdef0123456789".into())
        );
        let e = errs(&jwt("    algorithms: [HS256]\n    secret: \"${OOPS\"\n"));
        has(&e, "auth.j.secret", "unclosed");
        let e = errs(&jwt("    algorithms: [HS256]\n    secret: \"${}\"\n"));
        has(&e, "auth.j.secret", "empty");
    }

    #[test]
    fn listener_bind_rules() {
        let e = errs(
            "listeners:\n  - bind: localhost:8080\n  - {}\nroutes:\n  - {path: /, upstream: ws://h}\n",
        );
        has(&e, "listeners[0].bind", "127.0.0.1:8080");
        has(&e, "listeners[1].bind", "required");
        let c = ok(
            "listeners:\n  - bind: \"[::1]:8443\"\n  - bind: \"0.0.0.0:8443\"\nroutes:\n  - {path: /, upstream: ws://h}\n",
        );
        assert_eq!(c.listeners[0].bind, addr("[::1]:8443"));
    }

    #[test]
    fn duplicate_binds_are_errors_but_port_zero_is_not() {
        let e = errs(
            "listeners:\n  - bind: \"0.0.0.0:80\"\n  - bind: \"127.0.0.1:80\"\n  - bind: \"0.0.0.0:80\"\nroutes:\n  - {path: /, upstream: ws://h}\n",
        );
        has(&e, "listeners[1].bind", "conflicts with listeners[0].bind");
        has(&e, "listeners[2].bind", "conflicts with listeners[0].bind");
        let c = ok(
            "listeners:\n  - bind: \"127.0.0.1:0\"\n  - bind: \"127.0.0.1:0\"\nadmin:\n  bind: \"127.0.0.1:0\"\nroutes:\n  - {path: /, upstream: ws://h}\n",
        );
        assert_eq!(c.listeners.len(), 2);
    }

    #[test]
    fn tls_needs_cert_and_key() {
        let e = errs(
            "listeners:\n  - bind: \"127.0.0.1:1\"\n    tls: {cert: a.crt}\n  - bind: \"127.0.0.1:2\"\n    tls: {key: \"\", extra: 1}\nroutes:\n  - {path: /, upstream: ws://h}\n",
        );
        has(&e, "listeners[0].tls.key", "required");
        has(&e, "listeners[1].tls.cert", "required");
        has(&e, "listeners[1].tls.key", "must not be empty");
        has(&e, "listeners[1].tls.extra", "unknown key");
    }

    #[test]
    fn admin_bind_must_differ_from_listeners() {
        let e = errs(&with("admin:\n  bind: \"127.0.0.1:8080\"\n"));
        has(&e, "admin.bind", "conflicts with listeners[0].bind");
        // admin.bind defaults to 127.0.0.1:9190 (off node_exporter's 9100).
        let c = ok(&with("admin: {}\n"));
        assert_eq!(c.admin.unwrap().bind, addr("127.0.0.1:9190"));
        let e = errs(&with("admin:\n  bind: nope\n"));
        has(&e, "admin.bind", "invalid address");
    }

    #[test]
    fn auth_names_and_types() {
        let e = errs(&with(
            "auth:\n  \"bad name\": {type: basic, htpasswd: x}\n  t: {type: ldap}\n  n: {realm: x}\n  s: plain\n",
        ));
        has(&e, "auth.bad name", "invalid authenticator name");
        has(
            &e,
            "auth.t.type",
            "unknown authenticator type \"ldap\" (expected one of: basic, jwt, forward)",
        );
        has(&e, "auth.n.type", "required");
        has(&e, "auth.s", "expected a map");
        let e = errs(&with("auth: [a]\n"));
        has(&e, "auth", "expected a map");
    }

    #[test]
    fn basic_rules() {
        let c = ok(&with(
            "auth:\n  u:\n    type: basic\n    htpasswd: ../h\n    realm: Staff only\n    cache_ttl: 0s\n",
        ));
        assert_eq!(
            c.auth.get("u"),
            Some(&AuthConfig::Basic(BasicConfig {
                realm: "Staff only".into(),
                htpasswd: PathBuf::from("/etc/wsgate/../h"),
                cache_ttl: Duration::ZERO,
            }))
        );
        let e = errs(&with(
            "auth:\n  u:\n    type: basic\n    realm: 'a\"b'\n    cache_ttl: 60\n    secret: x\n",
        ));
        has(&e, "auth.u.htpasswd", "required");
        has(&e, "auth.u.realm", "must not contain");
        has(&e, "auth.u.cache_ttl", "\"60s\"");
        has(
            &e,
            "auth.u.secret",
            "unknown key (expected one of: type, realm, htpasswd, cache_ttl)",
        );
    }

    #[test]
    fn jwt_defaults_and_public_key() {
        let c = ok(&jwt(
            "    algorithms: [RS256, PS512]\n    public_key: keys/pub.pem\n    audience: [a, b]\n    leeway: 1m30s\n    max_token_bytes: 4096\n    query_param: access_token\n",
        ));
        let j = jwt_config(&c);
        assert_eq!(j.algorithms, vec![Algorithm::RS256, Algorithm::PS512]);
        assert_eq!(
            j.key,
            JwtKey::PublicKey(PathBuf::from("/etc/wsgate/keys/pub.pem"))
        );
        assert_eq!(j.audience, Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(j.leeway, Duration::from_secs(90));
        assert_eq!(j.max_token_bytes, 4096);
        assert_eq!(j.query_param, "access_token");
        assert_eq!(j.issuer, None);
        for (alg, expected) in [("ES384", Algorithm::ES384), ("EdDSA", Algorithm::EdDSA)] {
            let c = ok(&jwt(&format!(
                "    algorithms: {alg}\n    public_key: k.pem\n"
            )));
            assert_eq!(jwt_config(&c).algorithms, vec![expected]);
        }
    }

    #[test]
    fn jwt_algorithm_none_is_refused() {
        for none in ["none", "None", "NONE"] {
            let e = errs(&jwt(&format!(
                "    algorithms: [HS256, {none}]\n    secret: x\n"
            )));
            has(
                &e,
                "auth.j.algorithms[1]",
                "algorithm \"none\" is never accepted",
            );
        }
    }

    #[test]
    fn jwt_algorithm_unknown_or_missing() {
        let e = errs(&jwt("    algorithms: [HS999, hs256]\n    secret: x\n"));
        has(&e, "auth.j.algorithms[0]", "valid: HS256, HS384");
        has(&e, "auth.j.algorithms[1]", "did you mean \"HS256\"");
        let e = errs(&jwt("    secret: x\n"));
        has(&e, "auth.j.algorithms", "required");
        let e = errs(&jwt("    algorithms: []\n    secret: x\n"));
        has(&e, "auth.j.algorithms", "at least one");
        let e = errs(&jwt("    algorithms: [HS256, HS256]\n    secret: x\n"));
        has(&e, "auth.j.algorithms[1]", "listed twice");
    }

    #[test]
    fn jwt_families_cannot_mix() {
        let e = errs(&jwt("    algorithms: [HS256, RS256]\n    secret: x\n"));
        has(&e, "auth.j.algorithms", "HS256 is HMAC, RS256 is RSA");
        let e = errs(&jwt("    algorithms: [ES256, EdDSA]\n    public_key: k\n"));
        has(&e, "auth.j.algorithms", "different key families");
        ok(&jwt("    algorithms: [RS256, PS256]\n    public_key: k\n"));
    }

    #[test]
    fn jwt_hmac_secret_needs_32_bytes() {
        for alg in ["HS256", "HS384", "HS512"] {
            let e = errs(&jwt(&format!(
                "    algorithms: [{alg}]\n    secret: dev-only-secret\n"
            )));
            has(&e, "auth.j.secret", "at least 32 bytes (got 15)");
            assert!(!e.iter().any(|m| m.contains("dev-only-secret")), "{e:?}");
        }
        let c = ok(&jwt(
            "    algorithms: [HS256]\n    secret: 0123456789abcdef0123456789abcdef\n",
        ));
        assert!(matches!(&jwt_config(&c).key, JwtKey::Secret(s) if s.len() == 32));
    }

    #[test]
    fn jwt_max_token_age() {
        let c = ok(&jwt(
            "    algorithms: [HS256]\n    secret: \"${WSGATE_JWT_SECRET}\"\n    max_token_age: 10m\n",
        ));
        assert!(
            format!("{:?}", jwt_config(&c)).contains("max_token_age: Some(600s)"),
            "{:?}",
            jwt_config(&c)
        );
        let c = ok(&jwt(
            "    algorithms: [HS256]\n    secret: \"${WSGATE_JWT_SECRET}\"\n",
        ));
        assert!(format!("{:?}", jwt_config(&c)).contains("max_token_age: None"));
        let e = errs(&jwt(
            "    algorithms: [HS256]\n    secret: \"${WSGATE_JWT_SECRET}\"\n    max_token_age: 0s\n",
        ));
        has(&e, "auth.j.max_token_age", "omit the key");
        let e = errs(&jwt(
            "    algorithms: [HS256]\n    secret: \"${WSGATE_JWT_SECRET}\"\n    max_token_age: 600\n",
        ));
        has(&e, "auth.j.max_token_age", "");
    }

    #[test]
    fn jwt_key_must_match_family() {
        let e = errs(&jwt(
            "    algorithms: [RS256]\n    secret: \"${WSGATE_JWT_SECRET}\"\n",
        ));
        has(&e, "auth.j.secret", "use public_key");
        assert!(!e.iter().any(|m| m.contains("s3cr#t")), "{e:?}");
        let e = errs(&jwt("    algorithms: [HS256]\n    public_key: k.pem\n"));
        has(&e, "auth.j.public_key", "use secret");
        let e = errs(&jwt(
            "    algorithms: [HS256]\n    public_key: k.pem\n    secret: x\n",
        ));
        has(&e, "auth.j", "only one of secret or public_key");
        let e = errs(&jwt("    algorithms: [HS256]\n"));
        has(&e, "auth.j", "HS256 needs a shared secret");
        let e = errs(&jwt("    algorithms: [ES256]\n"));
        has(&e, "auth.j", "ES256 needs a public key");
        let e = errs(&jwt("    algorithms: [HS256]\n    secret: \"${EMPTY}\"\n"));
        has(&e, "auth.j.secret", "must not be empty");
    }

    #[test]
    fn jwt_other_fields() {
        let e = errs(&jwt(
            "    algorithms: [HS256]\n    secret: x\n    query_param: \"a b\"\n    issuer: \"\"\n    audience: []\n    leeway: 30\n    max_token_bytes: 0\n    realm: x\n",
        ));
        has(&e, "auth.j.query_param", "may contain only");
        has(&e, "auth.j.issuer", "must not be empty");
        has(&e, "auth.j.audience", "empty list");
        has(&e, "auth.j.leeway", "\"30s\"");
        has(&e, "auth.j.max_token_bytes", "positive integer");
        has(&e, "auth.j.realm", "unknown key");
        let e = errs(&jwt(
            "    algorithms: [HS256]\n    secret: x\n    audience: [ok, 5, \"\"]\n    query_param: \"\"\n",
        ));
        has(&e, "auth.j.audience[1]", "expected a string");
        has(&e, "auth.j.audience[2]", "must not be empty");
        has(&e, "auth.j.query_param", "must not be empty");
    }

    #[test]
    fn jwt_jwks_sources() {
        let c = ok(&jwt(
            "    algorithms: [RS256, ES256, EdDSA]\n    jwks_url: \"https://idp.example/certs?x=1\"\n    ca: ca.pem\n    jwks_refresh: 1m\n",
        ));
        let j = jwt_config(&c);
        match &j.key {
            JwtKey::Jwks(JwksSource::Url(u)) => {
                assert!(u.tls);
                assert_eq!(u.path_and_query, "/certs?x=1");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(j.jwks_refresh, std::time::Duration::from_secs(60));
        assert_eq!(j.jwks_min_interval, std::time::Duration::from_secs(10));
        assert!(j.ca.as_ref().is_some_and(|p| p.is_absolute()));
        let c = ok(&jwt("    algorithms: [RS256]\n    jwks_file: keys.json\n"));
        assert!(
            matches!(&jwt_config(&c).key, JwtKey::Jwks(JwksSource::File(p)) if p.ends_with("keys.json"))
        );
        let c = ok(&jwt(
            "    algorithms: [RS256]\n    issuer: \"https://sso.example/realms/a/\"\n    discovery: true\n",
        ));
        match &jwt_config(&c).key {
            JwtKey::Jwks(JwksSource::Discovery(u)) => {
                assert_eq!(
                    u.path_and_query,
                    "/realms/a/.well-known/openid-configuration"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn jwt_jwks_rules() {
        let e = errs(&jwt(
            "    algorithms: [HS256, RS256]\n    jwks_url: \"http://idp\"\n",
        ));
        has(
            &e,
            "auth.j.algorithms",
            "HS256 verifies with a shared secret, which a JWKS does not carry",
        );
        let e = errs(&jwt(
            "    algorithms: [RS256]\n    jwks_url: \"ftp://idp\"\n",
        ));
        has(&e, "auth.j.jwks_url", "unsupported scheme");
        let e = errs(&jwt(
            "    algorithms: [RS256]\n    jwks_url: \"http://idp\"\n    public_key: k.pem\n",
        ));
        has(&e, "auth.j", "set only one of public_key or jwks_url");
        let e = errs(&jwt(
            "    algorithms: [RS256]\n    jwks_url: \"http://idp\"\n    jwks_file: f\n    discovery: true\n",
        ));
        has(
            &e,
            "auth.j",
            "set only one of jwks_url, jwks_file or discovery",
        );
        let e = errs(&jwt("    algorithms: [RS256]\n    discovery: true\n"));
        has(&e, "auth.j.issuer", "discovery needs issuer");
        let e = errs(&jwt(
            "    algorithms: [RS256]\n    discovery: true\n    issuer: \"urn:x\"\n",
        ));
        has(&e, "auth.j.issuer", "http:// or https://");
        let e = errs(&jwt(
            "    algorithms: [RS256]\n    jwks_url: \"http://idp\"\n    ca: ca.pem\n    jwks_refresh: 0s\n",
        ));
        has(&e, "auth.j.ca", "only applies to an https://");
        has(&e, "auth.j.jwks_refresh", "greater than 0s");
        let e = errs(&jwt(
            "    algorithms: [RS256]\n    public_key: k.pem\n    jwks_refresh: 1m\n    jwks_required_at_start: true\n",
        ));
        has(&e, "auth.j.jwks_refresh", "only applies to a JWKS");
        has(
            &e,
            "auth.j.jwks_required_at_start",
            "only applies to a JWKS",
        );
        let e = errs(&jwt("    algorithms: [ES256]\n"));
        has(&e, "auth.j", "jwks_url");
    }

    #[test]
    fn jwt_claims_to_headers_rules() {
        let c = ok(&jwt(
            "    algorithms: [HS256]\n    secret: 0123456789abcdef0123456789abcdef\n    claims_to_headers: {role: X-Auth-Role, realm_access.roles: x-roles}\n",
        ));
        assert_eq!(jwt_config(&c).claims_to_headers.len(), 2);
        let e = errs(&jwt(
            "    algorithms: [HS256]\n    secret: 0123456789abcdef0123456789abcdef\n    claims_to_headers: {a: \"bad name\", b: X-Auth-User, c: Sec-WebSocket-Protocol, d: X-Forwarded-For, e: X-Role, f: x-role, g: \"\"}\n",
        ));
        has(&e, "auth.j.claims_to_headers.a", "not a valid header name");
        has(&e, "auth.j.claims_to_headers.b", "set by the gateway");
        has(&e, "auth.j.claims_to_headers.c", "set by the gateway");
        has(&e, "auth.j.claims_to_headers.d", "set by the gateway");
        has(
            &e,
            "auth.j.claims_to_headers.f",
            "already the header of claim \"e\"",
        );
        has(&e, "auth.j.claims_to_headers.g", "must not be empty");
    }

    #[test]
    fn route_path_rules() {
        let e = errs(
            "listeners:\n  - bind: \"127.0.0.1:1\"\nroutes:\n  - {path: /a/, upstream: ws://h}\n  - {path: \"/a?b\", upstream: ws://h}\n  - {path: /a/../b, upstream: ws://h}\n  - {path: /x, upstream: ws://h}\n  - {path: /x, upstream: ws://h}\n",
        );
        has(&e, "routes[0].path", "must not end with \"/\"");
        has(&e, "routes[1].path", "\"?\"");
        has(&e, "routes[2].path", "segments");
        has(&e, "routes[4].path", "already used by routes[3].path");
        assert_eq!(e.len(), 4, "{e:?}");
    }

    #[test]
    fn route_paths_must_be_canonical_and_distinct_for_case_folding_backends() {
        let e = errs(
            "listeners:\n  - bind: \"127.0.0.1:1\"\nroutes:\n  - {path: /%61dmin, upstream: ws://h}\n  - {path: \"/a;b\", upstream: ws://h}\n  - {path: /x, upstream: ws://h}\n  - {path: /X, upstream: ws://h}\n  - {path: \"/a:b\", upstream: ws://h}\n  - {path: /a%3Ab, upstream: ws://h}\n",
        );
        has(&e, "routes[0].path", "write \"/admin\"");
        has(&e, "routes[1].path", "path parameters");
        has(
            &e,
            "routes[3].path",
            "same route as \"/x\" (routes[2].path)",
        );
        has(
            &e,
            "routes[5].path",
            "same route as \"/a:b\" (routes[4].path)",
        );
        assert_eq!(e.len(), 4, "{e:?}");
    }

    #[test]
    fn case_insensitive_paths_is_an_opt_in_bool() {
        assert!(!ok(MINIMAL).case_insensitive_paths);
        assert!(ok(&with("case_insensitive_paths: true\n")).case_insensitive_paths);
        let e = errs(&with("case_insensitive_paths: \"yes\"\n"));
        has(&e, "case_insensitive_paths", "expected true or false");
    }

    #[test]
    fn route_upstream_rules() {
        let c = ok(
            "listeners:\n  - bind: \"127.0.0.1:1\"\nroutes:\n  - {path: /a, upstream: \"wss://[::1]\"}\n  - {path: /b, upstream: \"https://example.com:8443/\"}\n",
        );
        assert_eq!(c.routes[0].upstreams[0].host, "::1");
        assert_eq!(c.routes[0].upstreams[0].port, 443);
        assert!(c.routes[1].upstreams[0].tls);
        assert_eq!(c.routes[1].upstreams[0].url, "https://example.com:8443/");
        let e = errs(
            "listeners:\n  - bind: \"127.0.0.1:1\"\nroutes:\n  - {path: /a, upstream: ws://h/chat}\n  - {path: /b, upstream: \"ws://u:hunter2@h\"}\n",
        );
        has(
            &e,
            "routes[0].upstream",
            "a path on the upstream URL is not supported: requests keep their own path",
        );
        has(&e, "routes[1].upstream", "credentials");
        assert!(!e.iter().any(|m| m.contains("hunter2")));
    }

    #[test]
    fn route_auth_rules() {
        let base = "auth:\n  users: {type: basic, htpasswd: h}\n  jwt: {type: jwt, algorithms: [HS256], secret: \"${WSGATE_JWT_SECRET}\"}\nlisteners:\n  - bind: \"127.0.0.1:1\"\nroutes:\n";
        let c = ok(&format!(
            "{base}  - {{path: /a, upstream: ws://h, auth: users}}\n  - {{path: /b, upstream: ws://h}}\n"
        ));
        assert_eq!(c.routes[0].auth, vec!["users".to_string()]);
        assert!(c.routes[1].auth.is_empty());
        // An empty list reads like "no one" but would have meant "anyone": refused.
        let e = errs(&format!(
            "{base}  - {{path: /b, upstream: ws://h, auth: []}}\n"
        ));
        has(&e, "routes[0].auth", "omit the key for an open route");
        let e = errs(&format!(
            "{base}  - {{path: /a, upstream: ws://h}}\n  - {{path: /b, upstream: ws://h, auth: [userz, jwt, jwt]}}\n  - {{path: /c, upstream: ws://h, auth: {{a: 1}}}}\n"
        ));
        has(
            &e,
            "routes[1].auth[0]",
            "unknown authenticator \"userz\" (defined: jwt, users)",
        );
        has(&e, "routes[1].auth[2]", "listed twice");
        has(
            &e,
            "routes[2].auth",
            "expected a list of authenticator names",
        );
        let e = errs(
            "listeners:\n  - bind: \"127.0.0.1:1\"\nroutes:\n  - {path: /a, upstream: ws://h, auth: x}\n",
        );
        has(&e, "routes[0].auth", "no authenticators are defined");
    }

    #[test]
    fn broken_authenticator_is_not_also_unknown_to_routes() {
        let e = errs(
            "auth:\n  users: {type: basic}\nlisteners:\n  - bind: \"127.0.0.1:1\"\nroutes:\n  - {path: /a, upstream: ws://h, auth: [users]}\n",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        has(&e, "auth.users.htpasswd", "required");
    }

    #[test]
    fn durations_in_sections() {
        let c = ok(&with(
            "shutdown: {drain_timeout: 0s}\ntimeouts: {tls_handshake: 500ms, upstream_response: 1h}\n",
        ));
        assert_eq!(c.shutdown.drain_timeout, Duration::ZERO);
        assert_eq!(c.timeouts.tls_handshake, Duration::from_millis(500));
        assert_eq!(c.timeouts.request_header, Duration::from_secs(10));
        assert_eq!(c.timeouts.upstream_response, Duration::from_secs(3600));
        let e = errs(&with(
            "shutdown: {drain_timeout: 30}\ntimeouts: {upstream_connect: 0s, request_header: soon}\n",
        ));
        has(
            &e,
            "shutdown.drain_timeout",
            "a bare number is not a duration: add a unit, e.g. \"30s\"",
        );
        has(&e, "timeouts.upstream_connect", "greater than 0s");
        has(&e, "timeouts.request_header", "invalid duration");
    }

    #[test]
    fn limits_rules() {
        let c = ok(&with(
            "limits: {max_connections: 5, max_concurrent_hashes: 2}\n",
        ));
        assert_eq!(
            c.limits,
            LimitsConfig {
                max_connections: 5,
                max_concurrent_hashes: 2,
                ..LimitsConfig::default()
            }
        );
        let c = ok(&with(
            "limits: {max_connections_per_ip: 8, handshake_rate_per_ip: 5, max_hashes_per_ip: 0, ipv6_prefix: 48}\n",
        ));
        assert_eq!(c.limits.max_connections_per_ip, 8);
        assert_eq!(c.limits.handshake_rate_per_ip, 5);
        assert_eq!(c.limits.max_hashes_per_ip, 0, "0 = unlimited");
        assert_eq!(c.limits.ipv6_prefix, 48);
        for bad in ["0", "129", "-1", "\"64\""] {
            let e = errs(&with(&format!("limits: {{ipv6_prefix: {bad}}}\n")));
            assert_eq!(e.len(), 1, "{bad}: {e:?}");
            has(&e, "limits.ipv6_prefix", "");
        }
        let e = errs(&with("limits: {ipv6_prefix: 129}\n"));
        has(&e, "limits.ipv6_prefix", "1 to 128");
        let c = ok(&with(
            "limits: {max_connections_per_ip: 0, handshake_rate_per_ip: 0}\n",
        ));
        assert_eq!(c.limits.max_connections_per_ip, 0, "0 = unlimited");
        assert_eq!(c.limits.handshake_rate_per_ip, 0);
        let e = errs(&with(
            "limits: {max_connections: 0, max_concurrent_hashes: \"4\"}\n",
        ));
        has(&e, "limits.max_connections", "positive integer");
        has(&e, "limits.max_concurrent_hashes", "without quotes");
        let e = errs(&with(
            "limits: {max_connections: -1, max_concurrent_hashes: 1.5}\n",
        ));
        has(&e, "limits.max_connections", "positive integer");
        has(&e, "limits.max_concurrent_hashes", "positive integer");
    }

    #[test]
    fn null_sections_mean_defaults() {
        let c = ok(&with("admin:\nauth:\nshutdown:\ntimeouts:\nlimits:\n"));
        assert_eq!(c.admin, None);
        assert_eq!(c.shutdown.drain_timeout, Duration::from_secs(30));
    }

    #[test]
    fn load_reads_file_and_resolves_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gate.yaml");
        std::fs::write(
            &file,
            "listeners:\n  - bind: \"127.0.0.1:1\"\n    tls: {cert: c.pem, key: k.pem}\nroutes:\n  - {path: /, upstream: ws://h}\n",
        )
        .unwrap();
        let c = load(&file).unwrap();
        assert_eq!(c.source, file);
        let tls = c.listeners[0].tls.as_ref().unwrap();
        assert_eq!(tls.cert, dir.path().join("c.pem"));
        let e = load(&dir.path().join("missing.yaml")).unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert!(e.to_string().contains("missing.yaml"), "{e}");
    }

    #[test]
    fn never_panics_on_odd_input() {
        let inputs = [
            "listeners: [~, 1, \"x\", [], {bind: {}}]\nroutes: [~, {path: ~, upstream: ~, auth: ~}]\n",
            "auth: {j: {type: jwt, algorithms: [~, 1, {}], secret: [], public_key: {}}}\n",
            "auth: {j: {type: [jwt]}}\nlisteners: {}\n",
            "? [a]\n: b\n",
            "a: &x [*x]\n",
            "listeners:\n  - bind: \"999.1.1.1:80\"\nroutes:\n  - {path: \"/\\u0000\", upstream: \"ws://[\"}\n",
            "timeouts: {tls_handshake: 99999999999999999999h}\n",
            "limits: {max_connections: 99999999999999999999999}\n",
        ];
        for input in inputs {
            let _ = parse(input);
        }
        // Deep nesting must be refused by the parser's depth budget, not overflow the stack.
        let deep = format!("a: {}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(errs(&deep).len(), 1);
    }

    #[test]
    fn hardening_keys() {
        let yaml = r#"
listeners:
  - bind: "127.0.0.1:8080"
    proxy_protocol: true
trusted_proxies: ["10.0.0.0/8", "192.0.2.7", "::1/128"]
timeouts: {tunnel_idle: 0s, upstream_retry: 3s}
routes:
  - path: /ws
    upstream: [ws://127.0.0.1:3001, "wss://[::1]:3002"]
    balance: client_ip
    ca: ca.pem
    origins: ["https://app.example.com", "https://*.example.com:8443"]
"#;
        let c = ok(yaml);
        assert!(c.listeners[0].proxy_protocol);
        let t = c.trusted_proxies.clone().unwrap();
        assert_eq!(t.len(), 3);
        assert!(t[0].contains(&"10.1.2.3".parse::<std::net::IpAddr>().unwrap()));
        assert!(t[1].contains(&"192.0.2.7".parse::<std::net::IpAddr>().unwrap()));
        assert!(!t[1].contains(&"192.0.2.8".parse::<std::net::IpAddr>().unwrap()));
        assert_eq!(c.timeouts.tunnel_idle, Duration::ZERO);
        assert_eq!(c.timeouts.upstream_retry, Duration::from_secs(3));
        let r = &c.routes[0];
        assert_eq!(r.upstreams.len(), 2);
        assert_eq!(r.upstreams[1].port, 3002);
        assert_eq!(r.balance, Balance::ClientIp);
        assert!(r.ca.as_ref().unwrap().ends_with("ca.pem"));
        let o = r.origins.clone().unwrap();
        assert!(o[0].matches("https://app.example.com"));
        assert!(o[0].matches("HTTPS://APP.example.com"));
        assert!(!o[0].matches("https://app.example.com.evil.net"));
        assert!(o[1].matches("https://a.example.com:8443"));
        assert!(o[1].matches("https://a.b.example.com:8443"));
        assert!(
            !o[1].matches("https://example.com:8443"),
            "the bare domain is not a subdomain"
        );
        assert!(!o[1].matches("https://a.example.com"), "port must match");
        assert!(
            !o[1].matches("http://a.example.com:8443"),
            "scheme must match"
        );
        assert!(!o[1].matches("https://evil.com/.example.com:8443"));
    }

    #[test]
    fn http2_keys_defaults_and_errors() {
        let c = ok(
            "listeners:\n  - bind: \"127.0.0.1:8443\"\nroutes:\n  - {path: /ws, upstream: ws://127.0.0.1:3001}\n",
        );
        assert!(c.listeners[0].http2.enabled, "h2 is offered by default");
        assert_eq!(c.listeners[0].http2.max_concurrent_streams, 100);
        let c = ok(r#"
listeners:
  - bind: "127.0.0.1:8443"
    http2: {enabled: false, max_concurrent_streams: 7}
routes:
  - {path: /ws, upstream: ws://127.0.0.1:3001}
"#);
        assert!(!c.listeners[0].http2.enabled);
        assert_eq!(c.listeners[0].http2.max_concurrent_streams, 7);
        let e = errs(
            r#"
listeners:
  - bind: "127.0.0.1:8443"
    http2: {enabled: 1, max_concurrent_streams: 0, window: 5}
routes:
  - {path: /ws, upstream: ws://127.0.0.1:3001}
"#,
        );
        has(&e, "listeners[0].http2.enabled", "true or false");
        has(
            &e,
            "listeners[0].http2.max_concurrent_streams",
            "positive integer",
        );
        has(&e, "listeners[0].http2.window", "unknown key");
    }

    #[test]
    fn hardening_key_errors() {
        let yaml = r#"
listeners:
  - bind: "127.0.0.1:8080"
    proxy_protocol: "yes"
trusted_proxies: ["10.0.0.0/33", "proxy.example"]
timeouts: {upstream_retry: 0s}
routes:
  - path: /ws
    upstream: [ws://127.0.0.1:3001, ws://127.0.0.1:3001]
    balance: random
    ca: ca.pem
    origins: ["app.example.com", "https://*", "https://a.example.com/path"]
  - path: /empty
    upstream: []
    origins: []
"#;
        let e = errs(yaml);
        has(&e, "listeners[0].proxy_protocol", "true or false");
        has(&e, "trusted_proxies[0]", "CIDR");
        has(&e, "trusted_proxies[1]", "CIDR");
        has(&e, "timeouts.upstream_retry", "greater than 0");
        has(&e, "routes[0].upstream[1]", "twice");
        has(&e, "routes[0].balance", "round_robin");
        has(&e, "routes[0].ca", "wss://");
        has(&e, "routes[0].origins[0]", "not an origin");
        has(&e, "routes[0].origins[1]", "not an origin");
        has(&e, "routes[0].origins[2]", "not an origin");
        has(&e, "routes[1].upstream", "at least one");
        has(&e, "routes[1].origins", "empty list");
    }

    #[test]
    fn admin_token_and_cap() {
        let c = ok(&with(
            "admin:\n  bind: \"127.0.0.1:9100\"\n  token: \"0123456789abcdef\"\n  max_connections: 4\n",
        ));
        let a = c.admin.unwrap();
        assert_eq!(a.token.as_deref(), Some("0123456789abcdef"));
        assert_eq!(a.max_connections, 4);
        assert!(
            !format!("{a:?}").contains("0123456789abcdef"),
            "token in Debug"
        );
        let e = errs(&with(
            "admin:\n  bind: \"127.0.0.1:9100\"\n  token: \"short\"\n  max_connections: 0\n",
        ));
        assert!(
            e.iter()
                .any(|l| l.starts_with("admin.token: must be at least 16 bytes")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|l| l.starts_with("admin.max_connections:")),
            "{e:?}"
        );
    }

    /// Parses `yaml` with files resolved against `dir` (for `secret_file`/`token_file`).
    fn parse_in(dir: &Path, yaml: &str) -> Result<Config, Vec<String>> {
        parse_str(yaml, &dir.join("config.yaml"), dir, &env)
            .map_err(|e| e.0.iter().map(ToString::to_string).collect())
    }

    const SECRET_32: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn jwt_secret_file_is_read_with_one_trailing_newline_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("jwt.secret"), format!("{SECRET_32}\n")).unwrap();
        let c = parse_in(
            dir.path(),
            &jwt("    algorithms: [HS256]\n    secret_file: jwt.secret\n"),
        )
        .unwrap();
        let j = jwt_config(&c);
        assert_eq!(j.key, JwtKey::Secret(SECRET_32.into()));
        assert_eq!(j.secret_file, Some(dir.path().join("jwt.secret")));
        assert!(j.secret.is_none(), "the secret is held once, in key");
        // Only one newline goes: a second one is part of the secret (and \r\n counts as one).
        std::fs::write(dir.path().join("jwt.secret"), format!("{SECRET_32}\n\n")).unwrap();
        let c = parse_in(
            dir.path(),
            &jwt("    algorithms: [HS256]\n    secret_file: jwt.secret\n"),
        )
        .unwrap();
        assert_eq!(jwt_config(&c).key, JwtKey::Secret(format!("{SECRET_32}\n")));
        std::fs::write(dir.path().join("jwt.secret"), format!("{SECRET_32}\r\n")).unwrap();
        let c = parse_in(
            dir.path(),
            &jwt("    algorithms: [HS256]\n    secret_file: jwt.secret\n"),
        )
        .unwrap();
        assert_eq!(jwt_config(&c).key, JwtKey::Secret(SECRET_32.into()));
    }

    #[test]
    fn jwt_secret_file_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let file = |content: &str| {
            std::fs::write(dir.path().join("jwt.secret"), content).unwrap();
        };
        let body = "    algorithms: [HS256]\n    secret_file: jwt.secret\n";
        file(SECRET_32);
        let e = parse_in(
            dir.path(),
            &jwt(&format!("{body}    secret: \"${{WSGATE_JWT_SECRET}}\"\n")),
        )
        .unwrap_err();
        has(
            &e,
            "auth.j.secret_file",
            "set only one of secret or secret_file",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        let e = parse_in(
            dir.path(),
            &jwt("    algorithms: [HS256]\n    secret_file: nope.secret\n"),
        )
        .unwrap_err();
        has(&e, "auth.j.secret_file", "cannot read");
        has(&e, "auth.j.secret_file", "nope.secret");
        file("short-file-secret\n");
        let e = parse_in(dir.path(), &jwt(body)).unwrap_err();
        has(&e, "auth.j.secret_file", "at least 32 bytes (got 17)");
        assert!(!e.iter().any(|m| m.contains("short-file-secret")), "{e:?}");
        file("\n");
        let e = parse_in(dir.path(), &jwt(body)).unwrap_err();
        has(&e, "auth.j.secret_file", "is empty");
        let e = parse_in(
            dir.path(),
            &jwt("    algorithms: [RS256]\n    secret_file: jwt.secret\n    public_key: k.pem\n"),
        )
        .unwrap_err();
        has(&e, "auth.j", "set only one of secret_file or public_key");
    }

    #[test]
    fn admin_token_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admin.token"), "0123456789abcdef\n").unwrap();
        let c = parse_in(dir.path(), &with("admin:\n  token_file: admin.token\n")).unwrap();
        let a = c.admin.unwrap();
        assert_eq!(a.token.as_deref(), Some("0123456789abcdef"));
        assert!(
            !format!("{a:?}").contains("0123456789abcdef"),
            "token in Debug"
        );
        let e = parse_in(
            dir.path(),
            &with("admin:\n  token: \"0123456789abcdef\"\n  token_file: admin.token\n"),
        )
        .unwrap_err();
        has(
            &e,
            "admin.token_file",
            "set only one of token or token_file",
        );
        std::fs::write(dir.path().join("admin.token"), "short\n").unwrap();
        let e = parse_in(dir.path(), &with("admin:\n  token_file: admin.token\n")).unwrap_err();
        has(&e, "admin.token_file", "at least 16 bytes");
        assert!(!e.iter().any(|m| m.contains("short")), "{e:?}");
        let e = parse_in(dir.path(), &with("admin:\n  token_file: gone\n")).unwrap_err();
        has(&e, "admin.token_file", "cannot read");
    }

    #[test]
    fn admin_bind_defaults_to_9190() {
        let c = ok(&with("admin: {}\n"));
        let a = c.admin.unwrap();
        assert_eq!(a.bind, addr("127.0.0.1:9190"));
        assert_eq!(a.max_connections, DEFAULT_ADMIN_MAX_CONNECTIONS);
        assert_eq!(
            ok(&with("admin:\n  token: \"0123456789abcdef\"\n"))
                .admin
                .unwrap()
                .bind
                .port(),
            9190
        );
    }

    #[test]
    fn unknown_keys_suggest_the_closest_one() {
        let e = errs(&with("timeouts: {tunel_idle: 5s}\n"));
        has(&e, "timeouts.tunel_idle", "did you mean \"tunnel_idle\"");
        let e = errs(&with("limits: {zzz: 1}\n"));
        assert!(!e[0].contains("did you mean"), "{e:?}");
    }
}
