//! Request and response header rules where wsgate meets another parser: names the backend
//! could fold into a gateway header, ambiguous `Host`, and the upstream's 101 (pure; the
//! handler calls these).
//!
//! WSGI/CGI stacks turn both `X-Auth-User` and `X_Auth_User` into `HTTP_X_AUTH_USER`, so a
//! client-sent twin would sit next to (or before) the identity wsgate sets.

use base64::Engine;
use http::Uri;
use http::header::{self, HeaderMap, HeaderName};
use sha1::{Digest, Sha1};

/// Header names (as they fold: lower case, `_` → `-`) that wsgate sets, strips or judges;
/// a client's underscore twin of one of them never reaches the upstream.
const RESERVED: &[&str] = &[
    "x-auth-user",
    "x-real-ip",
    "forwarded",
    "authorization",
    "proxy-authorization",
    "host",
    "connection",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "content-length",
    "origin",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
];

/// Whether `name` (any case) folds, `_` → `-`, to a header wsgate sets, strips or judges.
pub fn folds_to_gateway_header(name: &str) -> bool {
    let folded: String = name
        .chars()
        .map(|c| {
            if c == '_' {
                '-'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    folded.starts_with("x-forwarded-") || RESERVED.contains(&folded.as_str())
}

/// Removes client header names containing `_`: all of them unless `allow_underscores`
/// (`underscores_in_headers: true`), and then still those that fold to a gateway header.
pub fn drop_underscored(headers: &mut HeaderMap, allow_underscores: bool) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| {
            let s = n.as_str();
            s.contains('_') && (!allow_underscores || folds_to_gateway_header(s))
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// Refuses a request whose `Host` is ambiguous: more than one `Host`, or an absolute-form
/// target whose authority differs from `Host` (backends disagree on which one wins).
pub fn check_host(headers: &HeaderMap, uri: &Uri) -> Result<(), &'static str> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host header");
    }
    if let (Some(host), Some(authority)) = (host, uri.authority())
        && !host
            .as_bytes()
            .eq_ignore_ascii_case(authority.as_str().as_bytes())
    {
        return Err("Host differs from the request target's authority");
    }
    Ok(())
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub fn websocket_accept(key: &[u8]) -> String {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let digest = Sha1::new().chain_update(key).chain_update(GUID).finalize();
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// Whether an upstream's 101 switches to WebSocket for the key sent: `Upgrade` is exactly
/// `websocket`, `Connection` has `upgrade`, and `Sec-WebSocket-Accept` matches `key`.
/// Anything else (h2c, a half-spoken handshake) must not be spliced.
pub fn is_websocket_101(headers: &HeaderMap, key: &[u8]) -> bool {
    // Runs on every upgrade: token walks instead of collected, lower-cased copies.
    let tokens = |name: &HeaderName| {
        headers
            .get_all(name)
            .iter()
            .flat_map(|v| v.to_str().unwrap_or("\u{0}").split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
    };
    let mut upgrade = tokens(&header::UPGRADE);
    let only_websocket = upgrade
        .next()
        .is_some_and(|t| t.eq_ignore_ascii_case("websocket"))
        && upgrade.next().is_none();
    let mut accepts = headers.get_all(header::SEC_WEBSOCKET_ACCEPT).iter();
    let accept_ok = match (accepts.next(), accepts.next()) {
        (Some(a), None) => {
            const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
            let digest = Sha1::new().chain_update(key).chain_update(GUID).finalize();
            let mut expected = [0u8; 28];
            base64::engine::general_purpose::STANDARD
                .encode_slice(digest, &mut expected)
                .is_ok_and(|n| a.as_bytes() == &expected[..n])
        }
        _ => false,
    };
    only_websocket
        && accept_ok
        && tokens(&header::CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// Joins the `Cookie` fields an HTTP/2 client may send one per cookie into the single
/// header HTTP/1.1 allows, with "; " (RFC 9113 §8.2.3).
pub fn join_cookie_crumbs(headers: &mut http::HeaderMap) {
    let mut all = headers.get_all(http::header::COOKIE).iter();
    if all.next().is_none() || all.next().is_none() {
        return;
    }
    let mut joined: Vec<u8> = Vec::new();
    for v in headers.get_all(http::header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    // Every part was a valid header value, so their join with "; " is one too.
    if let Ok(v) = http::HeaderValue::from_bytes(&joined) {
        headers.insert(http::header::COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn rfc6455_accept_example() {
        assert_eq!(
            websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn folding() {
        for n in [
            "x_auth_user",
            "X_Real_IP",
            "x_forwarded_for",
            "x_forwarded_anything",
            "Sec_WebSocket_Key",
            "transfer_encoding",
        ] {
            assert!(folds_to_gateway_header(n), "{n}");
        }
        for n in ["x_custom", "x_auth_username", "x-forwarded"] {
            assert!(!folds_to_gateway_header(n), "{n}");
        }
    }

    #[test]
    fn underscores_dropped_or_filtered() {
        let base = [
            ("x_auth_user", "root"),
            ("x_custom", "1"),
            ("x-auth-user", "set-later"),
            ("x-plain", "1"),
        ];
        let mut h = map(&base);
        drop_underscored(&mut h, false);
        assert_eq!(h.len(), 2);
        assert!(h.contains_key("x-auth-user") && h.contains_key("x-plain"));
        let mut h = map(&base);
        drop_underscored(&mut h, true);
        assert_eq!(h.len(), 3);
        assert!(h.contains_key("x_custom") && !h.contains_key("x_auth_user"));
    }

    #[test]
    fn host_rules() {
        let uri: Uri = "/ws".parse().unwrap();
        assert!(check_host(&map(&[("host", "a")]), &uri).is_ok());
        assert!(check_host(&map(&[]), &uri).is_ok());
        assert!(check_host(&map(&[("host", "a"), ("host", "a")]), &uri).is_err());
        let abs: Uri = "http://a.test:8080/ws".parse().unwrap();
        assert!(check_host(&map(&[("host", "A.test:8080")]), &abs).is_ok());
        assert!(check_host(&map(&[("host", "a.test")]), &abs).is_err());
        assert!(check_host(&map(&[]), &abs).is_ok());
    }

    #[test]
    fn only_websocket_101s() {
        let key = b"dGhlIHNhbXBsZSBub25jZQ==";
        let ok = [
            ("connection", "Upgrade"),
            ("upgrade", "WebSocket"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ];
        assert!(is_websocket_101(&map(&ok), key));
        assert!(!is_websocket_101(&map(&ok), b"AAAAAAAAAAAAAAAAAAAAAA=="));
        for drop in 0..ok.len() {
            let partial: Vec<_> = ok
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != drop)
                .map(|(_, p)| *p)
                .collect();
            assert!(!is_websocket_101(&map(&partial), key), "without {drop}");
        }
        let mut h2c = ok.to_vec();
        h2c[1] = ("upgrade", "h2c");
        assert!(!is_websocket_101(&map(&h2c), key));
        let mut two = ok.to_vec();
        two.push(("upgrade", "h2c"));
        assert!(!is_websocket_101(&map(&two), key));
        let mut twice = ok.to_vec();
        twice.push(("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        assert!(!is_websocket_101(&map(&twice), key));
    }
}
