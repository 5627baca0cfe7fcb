//! Checks on single string values: socket addresses, route paths, upstream URLs, names.
//!
//! Each function returns the one message that best explains the problem; the caller adds the
//! YAML path.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use super::types::{OriginPattern, UpstreamConfig, WebhookUrl};

/// Parses a bind address, which must be an IP literal: resolving names at bind time would make
/// the listening address depend on DNS.
pub(crate) fn bind_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Err(match ip {
            IpAddr::V4(_) => format!("missing port in \"{text}\": write e.g. \"{ip}:8080\""),
            // Unbracketed, "::1:8443" is itself a valid IPv6 address, so only a hint fits.
            IpAddr::V6(_) => format!(
                "missing port or brackets in \"{text}\": write IPv6 addresses as \"[::1]:8443\""
            ),
        });
    }
    if let Some((host, port)) = text.rsplit_once(':') {
        if !host.starts_with('[') && host.contains(':') {
            return Err(format!(
                "invalid address \"{text}\": write IPv6 addresses in brackets, e.g. \"[::1]:8443\""
            ));
        }
        let port_ok = port.parse::<u16>().is_ok();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<IpAddr>().is_ok() {
            return Err(format!(
                "invalid port \"{port}\" in \"{text}\" (expected 0-65535)"
            ));
        }
        if port_ok && !host.is_empty() {
            return Err(format!(
                "\"{host}\" is not an IP address: bind needs an IP, e.g. \"127.0.0.1:{port}\" \
                 (this host only) or \"0.0.0.0:{port}\" (all interfaces)"
            ));
        }
    }
    Err(format!(
        "invalid address \"{text}\": expected IP:PORT such as \"127.0.0.1:8080\" or \"[::1]:8443\""
    ))
}

/// Whether two bind addresses cannot both be bound (same port, same IP or one is a wildcard of
/// the same family). Port 0 never conflicts: the kernel picks a free port each time.
pub(crate) fn binds_conflict(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() == 0 || a.port() != b.port() {
        return false;
    }
    a.ip() == b.ip()
        || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified()))
}

/// Checks a route path prefix.
pub(crate) fn route_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("must not be empty (use \"/\" to match every path)".to_string());
    }
    if !path.starts_with('/') {
        return Err(format!("\"{path}\" must start with \"/\""));
    }
    if path.contains(['?', '#']) {
        return Err(format!(
            "\"{path}\" must not contain \"?\" or \"#\": routes match on the path only"
        ));
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "\"{path}\" must not contain whitespace or control characters"
        ));
    }
    if !path.is_ascii() {
        return Err(format!(
            "\"{path}\" must be ASCII: percent-encode other characters as they appear in requests"
        ));
    }
    if path != "/" && path.ends_with('/') {
        let trimmed = path.trim_end_matches('/');
        return Err(format!(
            "\"{path}\" must not end with \"/\": write \"{trimmed}\", which also matches \"{trimmed}/...\""
        ));
    }
    if path.contains("//") {
        return Err(format!("\"{path}\" must not contain \"//\""));
    }
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(format!(
            "\"{path}\" must not contain \".\" or \"..\" segments"
        ));
    }
    // Requests are routed on their canonical form, so a route that is not canonical could
    // never match (or would match something else than it reads).
    match crate::path::canonicalize(path) {
        Err(e) => Err(format!("\"{path}\" is refused in requests: {e}")),
        Ok(c) if c.as_str() != path => Err(format!(
            "\"{path}\" is not in canonical form: write \"{c}\" (escapes of letters, digits \
             and -._~ decoded, other escapes in upper case)"
        )),
        Ok(_) => Ok(()),
    }
}

/// Whether two canonical route paths are the same route for some backend: equal once
/// decoded and ASCII letter case is ignored (express folds case by default).
pub(crate) fn same_route(a: &str, b: &str) -> bool {
    crate::route::route_key(a).eq_ignore_ascii_case(&crate::route::route_key(b))
}

/// The message for a route path that [`same_route`] finds already used.
pub(crate) fn same_route_message(path: &str, earlier: &str, at: &str) -> String {
    if path == earlier {
        format!("\"{path}\" is already used by {at}")
    } else {
        format!(
            "\"{path}\" is the same route as \"{earlier}\" ({at}) once decoded and ignoring \
             letter case, which backends such as express do"
        )
    }
}

/// A webhook URL (`routes[].events.webhook`): http:// or https://, host, optional port,
/// path and query; no credentials (never echoed: they would be a secret).
pub(crate) fn webhook_url(url: &str) -> Result<WebhookUrl, String> {
    http_url(url, "webhook", "https://hooks.internal/wsgate")
}

/// A forward-auth service URL (`auth.NAME.url`), under the rules of [`webhook_url`].
pub(crate) fn auth_url(url: &str) -> Result<WebhookUrl, String> {
    http_url(url, "auth", "http://127.0.0.1:3000/auth")
}

/// An http:// or https:// URL with host, optional port, path and query; `what` names it in
/// messages ("the webhook URL has no host"), `example` shows a good one.
fn http_url(url: &str, what: &str, example: &str) -> Result<WebhookUrl, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("not a URL: expected one such as \"{example}\""));
    };
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "http" => false,
        "https" => true,
        _ => {
            return Err(format!(
                "unsupported scheme \"{}\" (expected http or https)",
                scheme.escape_debug()
            ));
        }
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    if authority.contains('@') {
        return Err(format!(
            "credentials in the {what} URL are not supported (a secret can go in its path or query)"
        ));
    }
    if authority.is_empty() || authority.starts_with(':') {
        return Err(format!("the {what} URL has no host"));
    }
    if tail.contains('#') {
        return Err(format!(
            "a fragment on the {what} URL means nothing to the receiver: remove it"
        ));
    }
    // Host and port follow the upstream rules (same parser, same messages).
    let hp = upstream_url(&format!("{scheme}://{authority}"))?;
    let path_and_query = match tail {
        "" => "/".to_string(),
        t if t.starts_with('?') => format!("/{t}"),
        t => t.to_string(),
    };
    if path_and_query.parse::<http::uri::PathAndQuery>().is_err() {
        return Err(format!(
            "invalid path or query in the {what} URL (percent-encode special characters)"
        ));
    }
    Ok(WebhookUrl {
        tls,
        host: hp.host,
        port: hp.port,
        authority: authority.to_string(),
        path_and_query,
        url: url.to_string(),
    })
}

/// Parses an upstream URL. `http`/`https` are accepted as aliases of `ws`/`wss` so nginx
/// `proxy_pass` targets can be copied as they are.
pub(crate) fn upstream_url(url: &str) -> Result<UpstreamConfig, String> {
    const EXPECTED: &str =
        "expected a URL such as \"ws://127.0.0.1:3000\" or \"wss://backend.internal\"";
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("\"{url}\" is not a URL: {EXPECTED}"));
    };
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "ws" | "http" => false,
        "wss" | "https" => true,
        _ => {
            return Err(format!(
                "unsupported scheme \"{scheme}\" (expected ws, wss, http or https)"
            ));
        }
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    if authority.contains('@') {
        // Not echoing the URL: the userinfo part may hold a password.
        return Err("credentials in the upstream URL are not supported".to_string());
    }
    if tail.contains(['?', '#']) {
        return Err(format!(
            "a query or fragment on the upstream URL \"{url}\" is not supported: requests keep their own"
        ));
    }
    if !tail.is_empty() && tail != "/" {
        return Err(format!(
            "a path on the upstream URL is not supported: requests keep their own path (write \"{scheme}://{authority}\")"
        ));
    }
    let (host, port_text) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((ip, after)) = bracketed.split_once(']') else {
            return Err(format!("unclosed \"[\" in the host of \"{url}\""));
        };
        if ip.parse::<Ipv6Addr>().is_err() {
            return Err(format!("\"{ip}\" is not a valid IPv6 address"));
        }
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(p) => Some(p),
                None => return Err(format!("unexpected \"{after}\" after the IPv6 address")),
            },
        };
        (ip, port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if port.is_some_and(|p| p.contains(':')) {
            return Err("write IPv6 addresses in brackets, e.g. \"ws://[::1]:3000\"".to_string());
        }
        if host.is_empty() {
            return Err(format!("\"{url}\" has no host: {EXPECTED}"));
        }
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        {
            return Err(format!("invalid host \"{host}\""));
        }
        (host, port)
    };
    let port = match port_text {
        None => {
            if tls {
                443
            } else {
                80
            }
        }
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("invalid port \"{p}\" (expected 1-65535)")),
            Ok(n) => n,
        },
    };
    Ok(UpstreamConfig {
        tls,
        host: host.to_string(),
        port,
        url: url.to_string(),
    })
}

/// Authenticator names: safe in paths, logs and metric labels.
pub(crate) fn auth_name(name: &str) -> Result<(), String> {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        Ok(())
    } else {
        Err(format!(
            "invalid authenticator name \"{}\": use only letters, digits, '_' and '-'",
            name.escape_debug()
        ))
    }
}

/// The realm is sent inside a quoted-string in `WWW-Authenticate`; these characters would need
/// escaping that browsers handle inconsistently.
pub(crate) fn realm(realm: &str) -> Result<(), String> {
    if realm
        .chars()
        .any(|c| c == '"' || c == '\\' || c.is_control())
    {
        Err("must not contain '\"', '\\' or control characters".to_string())
    } else {
        Ok(())
    }
}

/// Query parameter names must need no percent-encoding so they match the raw query string.
pub(crate) fn query_param(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_string());
    }
    if name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~'))
    {
        Ok(())
    } else {
        Err(format!(
            "\"{}\" may contain only letters, digits, '-', '.', '_' and '~'",
            name.escape_debug()
        ))
    }
}

/// A header name the forward-auth service's answer may set on upstream requests: a valid
/// name, and none the gateway manages itself (hop-by-hop, framing, the WebSocket handshake,
/// the forwarding headers), which a copy would corrupt or spoof.
pub(crate) fn upstream_header(name: &str) -> Result<(), String> {
    let Ok(h) = http::HeaderName::from_bytes(name.as_bytes()) else {
        return Err(format!(
            "\"{}\" is not a valid header name",
            name.escape_debug()
        ));
    };
    let n = h.as_str();
    let managed = matches!(
        n,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authorization"
            | "host"
            | "content-length"
            | "forwarded"
            | "x-real-ip"
    ) || n.starts_with("sec-websocket-")
        || n.starts_with("x-forwarded-");
    if managed {
        Err(format!(
            "\"{name}\" is set by the gateway itself and cannot be copied"
        ))
    } else {
        Ok(())
    }
}

/// An HTTP method token for the forward-auth subrequest.
pub(crate) fn http_method(text: &str) -> Result<(), String> {
    match http::Method::from_bytes(text.as_bytes()) {
        Ok(m) if m != http::Method::CONNECT && m.as_str() == text.to_ascii_uppercase() => Ok(()),
        _ => Err(format!(
            "\"{}\" is not a method for the auth request (e.g. GET, HEAD, POST)",
            text.escape_debug()
        )),
    }
}

/// A CIDR (`10.0.0.0/8`, `::1/128`) or a single IP (taken as a host route).
pub(crate) fn cidr(text: &str) -> Result<ipnet::IpNet, String> {
    let t = text.trim();
    if let Ok(net) = t.parse::<ipnet::IpNet>() {
        return Ok(net.trunc());
    }
    if let Ok(ip) = t.parse::<std::net::IpAddr>() {
        return Ok(ipnet::IpNet::from(ip));
    }
    Err(format!(
        "\"{}\" is not an IP address or CIDR (e.g. 10.0.0.0/8, 192.0.2.7, ::1/128)",
        t.escape_debug()
    ))
}

/// An allowed origin: `https://app.example.com[:port]` or `https://*.example.com[:port]`.
pub(crate) fn origin(text: &str) -> Result<OriginPattern, String> {
    let t = text.trim().to_ascii_lowercase();
    let bad = || {
        format!(
            "\"{}\" is not an origin: write scheme://host[:port] (e.g. https://app.example.com) or \
             https://*.example.com, without a path",
            text.escape_debug()
        )
    };
    let (scheme, rest) = t.split_once("://").ok_or_else(bad)?;
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
        || rest.is_empty()
        || rest.contains('/')
        || rest.contains('?')
        || rest.contains('#')
        || rest.contains('@')
    {
        return Err(bad());
    }
    if let Some(suffix) = rest.strip_prefix("*.") {
        if suffix.is_empty() || suffix.contains('*') {
            return Err(bad());
        }
        return Ok(OriginPattern::Wildcard {
            scheme: format!("{scheme}://"),
            suffix: format!(".{suffix}"),
        });
    }
    if rest.contains('*') {
        return Err(bad());
    }
    Ok(OriginPattern::Exact(t))
}

/// Checks a Redis URL; the message never repeats the URL, which may hold a password.
pub(crate) fn redis_url(s: &str) -> Result<(), String> {
    if s.starts_with("rediss://") {
        return Err("rediss:// (TLS) is not built in: use redis:// on a private network".into());
    }
    if !s.starts_with("redis://") {
        return Err("must start with redis:// (e.g. \"redis://127.0.0.1:6379/0\")".into());
    }
    redis::Client::open(s)
        .map(|_| ())
        .map_err(|e| format!("not a usable Redis URL: {}", e.category()))
}

/// Checks a cluster instance id: it is part of Redis keys and of `instance|member` strings.
pub(crate) fn instance_id(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 128 {
        return Err("must be 1 to 128 characters".into());
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(format!(
            "{c:?} is not allowed: use letters, digits, '.', '_', ':' and '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_accepts_ip_socket_addresses() {
        for ok in ["127.0.0.1:8080", "[::1]:8443", "0.0.0.0:8443", "[::]:0"] {
            assert!(bind_addr(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn bind_hostname_suggests_an_ip() {
        let e = bind_addr("localhost:8080").unwrap_err();
        assert!(
            e.contains("127.0.0.1:8080") && e.contains("not an IP"),
            "{e}"
        );
    }

    #[test]
    fn bind_other_mistakes() {
        assert!(bind_addr("127.0.0.1").unwrap_err().contains("missing port"));
        assert!(bind_addr("::1").unwrap_err().contains("[::1]:8443"));
        assert!(bind_addr("::1:8443").unwrap_err().contains("brackets"));
        assert!(
            bind_addr("127.0.0.1:99999")
                .unwrap_err()
                .contains("invalid port")
        );
        assert!(bind_addr("").unwrap_err().contains("IP:PORT"));
        assert!(bind_addr(":8080").unwrap_err().contains("IP:PORT"));
    }

    #[test]
    fn conflicting_binds() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(binds_conflict(a("127.0.0.1:80"), a("127.0.0.1:80")));
        assert!(binds_conflict(a("0.0.0.0:80"), a("127.0.0.1:80")));
        assert!(binds_conflict(a("127.0.0.1:80"), a("0.0.0.0:80")));
        assert!(!binds_conflict(a("127.0.0.1:80"), a("127.0.0.2:80")));
        assert!(!binds_conflict(a("127.0.0.1:80"), a("127.0.0.1:81")));
        assert!(!binds_conflict(a("127.0.0.1:0"), a("127.0.0.1:0")));
        assert!(!binds_conflict(a("[::]:80"), a("127.0.0.1:80")));
    }

    #[test]
    fn route_paths() {
        for ok in ["/", "/ws", "/a/b-c_d.e/%20x", "/a..b", "/a:b", "/%C3%A4"] {
            assert!(route_path(ok).is_ok(), "{ok}");
        }
        let cases = [
            ("", "empty"),
            ("ws", "start with"),
            ("/ws/", "end with"),
            ("/ws?x=1", "\"?\""),
            ("/ws#x", "\"#\""),
            ("/w s", "whitespace"),
            ("/w\ts", "whitespace"),
            ("/a//b", "\"//\""),
            ("/a/./b", "segments"),
            ("/a/..", "segments"),
            ("/é", "ASCII"),
            ("/%61dmin", "write \"/admin\""),
            ("/a%3ab", "write \"/a%3Ab\""),
            ("/a{b}", "write \"/a%7Bb%7D\""),
            ("/a;b", "path parameters"),
            ("/a%2Fb", "encoded"),
            ("/a%2561", "double"),
            ("/a/%2e%2e/b", "dot segment"),
            ("/admin.", "ends in"),
            ("/%C0%AE", "UTF-8"),
        ];
        for (bad, want) in cases {
            let e = route_path(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn same_routes() {
        assert!(same_route("/a", "/a"));
        assert!(same_route("/admin", "/Admin"));
        assert!(same_route("/a:b", "/a%3Ab"));
        assert!(!same_route("/a", "/a/b"));
        assert!(same_route_message("/Admin", "/admin", "routes[0].path").contains("letter case"));
    }

    #[test]
    fn upstream_urls() {
        let u = upstream_url("ws://127.0.0.1:3000").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port), (false, "127.0.0.1", 3000));
        assert_eq!(u.url, "ws://127.0.0.1:3000");
        let u = upstream_url("wss://backend.internal/").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port),
            (true, "backend.internal", 443)
        );
        let u = upstream_url("http://h").unwrap();
        assert_eq!((u.tls, u.port), (false, 80));
        let u = upstream_url("HTTPS://h:8443").unwrap();
        assert_eq!((u.tls, u.port), (true, 8443));
        let u = upstream_url("ws://[::1]:9000").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9000));
        let u = upstream_url("wss://[fe80::1]").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("fe80::1", 443));
    }

    #[test]
    fn upstream_url_errors() {
        let cases = [
            ("127.0.0.1:3000", "not a URL"),
            ("ftp://h", "unsupported scheme"),
            ("ws://user:pw@h", "credentials"),
            ("ws://h/chat", "a path on the upstream URL is not supported"),
            ("ws://h?x=1", "query"),
            ("ws://h/#f", "query or fragment"),
            ("ws://", "no host"),
            ("ws://:80", "no host"),
            ("ws://h:0", "invalid port"),
            ("ws://h:70000", "invalid port"),
            ("ws://h:", "invalid port"),
            ("ws://::1:80", "brackets"),
            ("ws://[::1", "unclosed"),
            ("ws://[nope]", "IPv6"),
            ("ws://[::1]x", "unexpected"),
            ("ws://bad host", "invalid host"),
        ];
        for (bad, want) in cases {
            let e = upstream_url(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
        assert!(
            !upstream_url("ws://user:hunter2@h")
                .unwrap_err()
                .contains("hunter2")
        );
    }

    #[test]
    fn names_realms_and_query_params() {
        assert!(auth_name("users_2-b").is_ok());
        assert!(auth_name("").is_err());
        assert!(auth_name("a b").is_err());
        assert!(realm("wsgate staff").is_ok());
        assert!(realm("a\"b").is_err());
        assert!(realm("a\\b").is_err());
        assert!(realm("a\nb").is_err());
        assert!(query_param("access_token.v2~").is_ok());
        assert!(query_param("").is_err());
        assert!(query_param("a&b").is_err());
        assert!(query_param("a=b").is_err());
    }
}
