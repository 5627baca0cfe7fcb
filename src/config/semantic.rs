//! Rules that span keys, run on the typed [`Config`] once the schema walk is done: binds that
//! conflict, duplicate routes and servers, references to authenticators, JWT keys (with
//! `jwt_rules`), secrets read from files, file names resolved against the config's folder.
//!
//! Values the schema walk refused were replaced by inert placeholders (port 0, empty lists),
//! and problems under an already reported path are dropped, so nothing is reported twice.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use jsonwebtoken::AlgorithmFamily;
use serde_json::Value;

use super::jwt_rules::alg_name;
use super::schema::{Problems, Seg};
use super::types::*;
use super::validate;

fn key(k: &str) -> Seg {
    Seg::Key(k.to_owned())
}

fn p(segs: &[Seg]) -> Vec<Seg> {
    segs.to_vec()
}

/// The path of item `i` of the value at `at`: `at[i]` when the YAML wrote a list, `at`
/// when it wrote the one-value short form.
fn item(tree: &Value, at: &[Seg], i: usize) -> Vec<Seg> {
    let mut v = Some(tree);
    for seg in at {
        v = match (seg, v) {
            (Seg::Key(k), Some(Value::Object(m))) => m.get(k),
            (Seg::Idx(n), Some(Value::Array(a))) => a.get(*n),
            _ => None,
        };
    }
    let mut out = at.to_vec();
    if matches!(v, Some(Value::Array(_))) {
        out.push(Seg::Idx(i));
    }
    out
}

/// Runs every cross-key rule on `c`, reading `secret_file`/`token_file` and resolving files.
pub(crate) fn check(c: &mut Config, tree: &Value, base_dir: &Path, problems: &mut Problems) {
    let listeners = listeners(c, problems);
    if let Some(admin) = &mut c.admin {
        admin_rules(admin, &listeners, base_dir, problems);
    }
    // Every name written under auth counts as defined, valid or not, so a broken
    // authenticator is not also reported as unknown by every route using it.
    let defined: BTreeSet<String> = tree
        .get("auth")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    for name in &defined {
        if let Err(msg) = validate::auth_name(name) {
            problems.push(&[key("auth"), key(name)], msg);
        }
    }
    for (name, auth) in &mut c.auth {
        let at = [key("auth"), key(name)];
        match auth {
            AuthConfig::Basic(b) => b.htpasswd = base_dir.join(&b.htpasswd),
            AuthConfig::Jwt(j) => jwt(j, tree, &at, base_dir, problems),
            AuthConfig::Forward(f) => {
                if let Some(ca) = &mut f.ca {
                    *ca = base_dir.join(&*ca);
                    if !f.url.url.is_empty() && !f.url.tls {
                        problems.push(
                            &[&at[..], &[key("ca")]].concat(),
                            "a CA file only applies to an https:// auth service",
                        );
                    }
                }
            }
        }
    }
    routes(c, tree, &defined, base_dir, problems);
    close_codes(&c.close_codes, problems);
    super::acme::tls_rules(c, problems);
    for l in &mut c.listeners {
        if let Some(tls) = &mut l.tls {
            if tls.acme.is_none() {
                tls.cert = base_dir.join(&tls.cert);
                tls.key = base_dir.join(&tls.key);
            }
            if let Some(acme) = &mut tls.acme {
                acme.cache = base_dir.join(&acme.cache);
                acme.ca = acme.ca.as_ref().map(|ca| base_dir.join(ca));
            }
        }
    }
}

/// Codes a peer must accept in a close frame from the gateway: RFC 6455 §7.4 reserves
/// 1004–1006 and 1015 (never sent), 1010 is for clients, and 1012–2999 belong to the IANA.
pub(crate) fn sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1009 | 1011 | 3000..=4999)
}

fn close_codes(codes: &super::CloseCodes, problems: &mut Problems) {
    let all = [
        ("shutdown", codes.shutdown),
        ("idle", codes.idle),
        ("kicked", codes.kicked),
        ("expired", codes.expired),
        ("evicted", codes.evicted),
        ("lifetime", codes.lifetime),
        ("too_big", codes.too_big),
    ];
    for (name, code) in all {
        if !sendable_close_code(code) {
            problems.push(
                &[key("close_codes"), key(name)],
                format!("{code} is not a close code a gateway may send (use 1000-1003, 1007-1009, 1011 or 3000-4999)"),
            );
        }
    }
}

fn conflict_message(bind: SocketAddr, other: &[Seg]) -> String {
    format!(
        "{bind} conflicts with {} (same port on an overlapping address)",
        super::schema::display(other)
    )
}

/// Each listener bind that does not conflict with an earlier one, with its path.
fn listeners(c: &Config, problems: &mut Problems) -> Vec<(SocketAddr, Vec<Seg>)> {
    let mut out: Vec<(SocketAddr, Vec<Seg>)> = Vec::new();
    for (i, l) in c.listeners.iter().enumerate() {
        let at = [key("listeners"), Seg::Idx(i), key("bind")];
        if let Some((_, other)) = out
            .iter()
            .find(|(b, _)| validate::binds_conflict(*b, l.bind))
        {
            problems.push(&at, conflict_message(l.bind, other));
            continue;
        }
        out.push((l.bind, p(&at)));
    }
    out
}

fn admin_rules(
    admin: &mut AdminConfig,
    listeners: &[(SocketAddr, Vec<Seg>)],
    base_dir: &Path,
    problems: &mut Problems,
) {
    if let Some((_, other)) = listeners
        .iter()
        .find(|(b, _)| validate::binds_conflict(*b, admin.bind))
    {
        problems.push(
            &[key("admin"), key("bind")],
            conflict_message(admin.bind, other),
        );
    }
    let (token_at, file_at) = (
        [key("admin"), key("token")],
        [key("admin"), key("token_file")],
    );
    if let Some(file) = &mut admin.token_file {
        *file = base_dir.join(&*file);
        if admin.token.is_some() {
            problems.push(&file_at, "set only one of token or token_file");
        } else {
            admin.token = read_secret(file, &file_at, problems);
        }
    }
    let at = if admin.token_file.is_some() {
        &file_at
    } else {
        &token_at
    };
    if let Some(t) = &admin.token
        && t.len() < MIN_ADMIN_TOKEN_BYTES
    {
        problems.push(
            at,
            format!("must be at least {MIN_ADMIN_TOKEN_BYTES} bytes (e.g. `openssl rand -hex 32`)"),
        );
    }
}

/// Reads a secret file: one trailing newline (what `echo` and most editors add) is not part
/// of the secret; an empty secret is refused. The content is never put in a message.
pub(crate) fn read_secret(file: &Path, at: &[Seg], problems: &mut Problems) -> Option<String> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            problems.push(at, format!("cannot read {}: {e}", file.display()));
            return None;
        }
    };
    let text = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if text.is_empty() {
        problems.push(at, format!("{} is empty", file.display()));
        return None;
    }
    Some(text.to_owned())
}

fn jwt(j: &mut JwtConfig, tree: &Value, at: &[Seg], base_dir: &Path, problems: &mut Problems) {
    let under = |k: &str| [at, &[key(k)]].concat();
    if let Err(found) = super::token_sources::resolve(j) {
        for (field, message) in found {
            problems.push(&under(&field), message);
        }
    }
    let algs_at = under("algorithms");
    let mut unique = Vec::new();
    for (i, a) in j.algorithms.iter().enumerate() {
        if unique.contains(a) {
            problems.push(
                &item(tree, &algs_at, i),
                format!("{} is listed twice", alg_name(*a)),
            );
        } else {
            unique.push(*a);
        }
    }
    j.algorithms = unique;
    for f in [
        &mut j.secret_file,
        &mut j.public_key,
        &mut j.jwks_file,
        &mut j.ca,
    ]
    .into_iter()
    .flatten()
    {
        *f = base_dir.join(&*f);
    }
    if let Err(found) = super::jwt_rules::claim_headers(j) {
        for (claim, message) in found {
            problems.push(
                &[&under("claims_to_headers")[..], &[key(&claim)]].concat(),
                message,
            );
        }
    }
    let secret_file_at = under("secret_file");
    let sources = [
        "secret",
        "secret_file",
        "public_key",
        "jwks_url",
        "jwks_file",
        "discovery",
    ];
    // A key value already refused (an unset ${VAR}, a wrong type) says nothing more.
    if sources.iter().any(|k| problems.is_poisoned(&under(k))) {
        return;
    }
    let set: Vec<&str> = sources
        .into_iter()
        .zip([
            j.secret.is_some(),
            j.secret_file.is_some(),
            j.public_key.is_some(),
            j.jwks_url.is_some(),
            j.jwks_file.is_some(),
            j.discovery,
        ])
        .filter_map(|(k, on)| on.then_some(k))
        .collect();
    let jwks = matches!(set.as_slice(), ["jwks_url" | "jwks_file" | "discovery"]);
    let https = j.jwks_url.as_ref().is_some_and(|u| u.tls)
        || (j.discovery
            && j.issuer
                .as_deref()
                .is_some_and(|i| i.starts_with("https://")));
    if !jwks {
        // These would silently do nothing without a JWKS.
        for k in [
            "jwks_refresh",
            "jwks_min_interval",
            "jwks_timeout",
            "jwks_required_at_start",
        ] {
            if present(tree, &under(k)) {
                problems.push(
                    &under(k),
                    "only applies to a JWKS (jwks_url, jwks_file or discovery)",
                );
            }
        }
    }
    if j.ca.is_some() && set.len() == 1 && !https {
        problems.push(
            &under("ca"),
            "a CA file only applies to an https:// jwks_url or discovery",
        );
    }
    let key = match set.as_slice() {
        [] => {
            // Which key is missing depends on the family.
            let msg = match j.algorithms.first() {
                Some(a) if a.family() == AlgorithmFamily::Hmac => format!(
                    "{} needs a shared secret: set secret (or secret_file)",
                    alg_name(*a)
                ),
                Some(a) => format!(
                    "{} needs a public key: set public_key to a PEM file, or jwks_url, \
                     jwks_file or discovery for an identity provider's keys",
                    alg_name(*a)
                ),
                None => "one of secret, secret_file, public_key, jwks_url, jwks_file or \
                         discovery is required"
                    .to_string(),
            };
            problems.push(at, msg);
            None
        }
        ["secret"] => j.secret.take().map(|s| JwtKey::Secret(s.0)),
        ["secret_file"] => j
            .secret_file
            .as_ref()
            .and_then(|f| read_secret(f, &secret_file_at, problems))
            .map(JwtKey::Secret),
        ["public_key"] => j.public_key.clone().map(JwtKey::PublicKey),
        ["jwks_url"] => j.jwks_url.clone().map(|u| JwtKey::Jwks(JwksSource::Url(u))),
        ["jwks_file"] => j
            .jwks_file
            .clone()
            .map(|f| JwtKey::Jwks(JwksSource::File(f))),
        ["discovery"] => discovery_url(j.issuer.as_deref())
            .map_err(|m| problems.push(&under("issuer"), m))
            .ok()
            .map(|u| JwtKey::Jwks(JwksSource::Discovery(u))),
        ["secret", "secret_file"] => {
            problems.push(&secret_file_at, "set only one of secret or secret_file");
            None
        }
        [a, b] => {
            problems.push(at, format!("set only one of {a} or {b}"));
            None
        }
        [rest @ .., last] => {
            problems.push(at, format!("set only one of {} or {last}", rest.join(", ")));
            None
        }
    };
    j.secret = None;
    let Some(key) = key else { return };
    j.key = key;
    // Key/family, secret length and the like are rules on the typed config, shared with the
    // authenticator's build.
    if let Err(found) = super::jwt_rules::check(j) {
        for (field, message) in found {
            let field = if field == "secret" && j.secret_file.is_some() {
                "secret_file"
            } else {
                field
            };
            problems.push(&under(field), message);
        }
    }
}

/// Whether the YAML wrote a value at `at`.
fn present(tree: &Value, at: &[Seg]) -> bool {
    let mut v = Some(tree);
    for seg in at {
        v = match (seg, v) {
            (Seg::Key(k), Some(Value::Object(m))) => m.get(k),
            (Seg::Idx(n), Some(Value::Array(a))) => a.get(*n),
            _ => None,
        };
    }
    v.is_some()
}

/// The OpenID configuration URL of an issuer (OpenID Connect Discovery 1.0, §4).
fn discovery_url(issuer: Option<&str>) -> Result<WebhookUrl, String> {
    let Some(issuer) = issuer else {
        return Err("discovery needs issuer: the identity provider's URL".to_string());
    };
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    super::leaf::jwks_url(&url).map_err(|e| {
        format!("discovery needs issuer to be the provider's http:// or https:// URL: {e}")
    })
}

fn routes(
    c: &mut Config,
    tree: &Value,
    defined: &BTreeSet<String>,
    base_dir: &Path,
    problems: &mut Problems,
) {
    let mut seen: Vec<(String, Vec<Seg>)> = Vec::new();
    for (i, r) in c.routes.iter_mut().enumerate() {
        let at = [key("routes"), Seg::Idx(i)];
        let under = |k: &str| [&at[..], &[key(k)]].concat();
        let path_at = under("path");
        // An empty path is the placeholder of a refused one.
        if !r.path.is_empty() {
            if let Some((q, other)) = seen.iter().find(|(q, _)| validate::same_route(q, &r.path)) {
                let msg = validate::same_route_message(&r.path, q, &super::schema::display(other));
                problems.push(&path_at, msg);
            } else {
                seen.push((r.path.clone(), path_at));
            }
        }
        let up_at = under("upstream");
        let mut servers: Vec<UpstreamConfig> = Vec::new();
        for (n, u) in r.upstreams.iter().enumerate() {
            if servers.iter().any(|o| o.host == u.host && o.port == u.port) {
                problems.push(&item(tree, &up_at, n), "this server is listed twice");
            } else {
                servers.push(u.clone());
            }
        }
        if let Some(ca) = &mut r.ca {
            *ca = base_dir.join(&*ca);
            if !r.upstreams.is_empty() && !r.upstreams.iter().any(|u| u.tls) {
                problems.push(
                    &under("ca"),
                    "a CA file only applies to wss:// upstreams, and this route has none",
                );
            }
        }
        if let Some(ev) = &mut r.events
            && let Some(ca) = &mut ev.ca
        {
            *ca = base_dir.join(&*ca);
            if !ev.webhook.url.is_empty() && !ev.webhook.tls {
                problems.push(
                    &[&under("events")[..], &[key("ca")]].concat(),
                    "a CA file only applies to an https:// webhook",
                );
            }
        }
        let auth_at = under("auth");
        let mut names: Vec<String> = Vec::new();
        for (n, name) in r.auth.iter().enumerate() {
            let at = item(tree, &auth_at, n);
            if !defined.contains(name) {
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
                problems.push(
                    &at,
                    format!(
                        "unknown authenticator \"{}\" ({known})",
                        name.escape_debug()
                    ),
                );
            } else if names.contains(name) {
                problems.push(&at, format!("\"{name}\" is listed twice"));
            } else {
                names.push(name.clone());
            }
        }
        // An open route has no users to count: the key would silently do nothing.
        if r.auth.is_empty() && r.max_connections_per_user.is_some() {
            problems.push(
                &under("max_connections_per_user"),
                "needs auth: an open route has no users to count (add auth: [...] or remove the key)",
            );
        }
        if !r.track_frames {
            // These act on frames: without tracking they would silently do nothing.
            for (k, set) in [
                ("max_message_bytes", r.max_message_bytes.is_some()),
                ("ping_interval", r.ping_interval.is_some()),
            ] {
                if set {
                    problems.push(
                        &under(k),
                        "needs track_frames: true (frames are not followed on this route)",
                    );
                }
            }
        }
    }
}
