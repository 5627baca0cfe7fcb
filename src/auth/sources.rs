//! Reading a token from where a JWT authenticator's `from:` says (query, header, cookie,
//! subprotocol) and removing it from what goes upstream, leaving everything else byte-exact.
//!
//! Two parsers meet here, ours and the backend's: a credential must be found exactly once,
//! and whatever we remove is everything the backend could take for it. A name given twice
//! (two cookies, two subprotocol entries, two headers) is `Malformed` rather than a guess.

use base64::Engine as _;
use http::{HeaderMap, header};

use super::{AuthFailure, Scheme, authorization, query_param, strip_query_param};
use crate::config::TokenSource;

/// The token at `source`, if there is one; `max` bounds its decoded length (the raw form of
/// a query value may be three times longer, for percent-encoding).
pub(crate) fn find(
    source: &TokenSource,
    headers: &HeaderMap,
    query: Option<&str>,
    max: usize,
) -> Result<Option<String>, AuthFailure> {
    let token = match source {
        TokenSource::Query(name) => match query {
            Some(q) => query_param(q, name, max.saturating_mul(3))?,
            None => None,
        },
        TokenSource::Bearer => match authorization(headers)? {
            Some((Scheme::Bearer, rest)) => Some(utf8(rest)?),
            _ => None,
        },
        TokenSource::Header(name) => {
            let mut all = headers.get_all(name).iter();
            match (all.next(), all.next()) {
                (None, _) => None,
                (Some(_), Some(_)) => return Err(AuthFailure::Malformed),
                (Some(v), None) => Some(utf8(v.as_bytes().trim_ascii())?),
            }
        }
        TokenSource::Cookie(name) => {
            let mut found = cookie_values(headers, name);
            match (found.next(), found.next()) {
                (None, _) => None,
                (Some(_), Some(_)) => return Err(AuthFailure::Malformed),
                (Some(v), None) => Some(utf8(unquote(v))?),
            }
        }
        TokenSource::Subprotocol { prefix, base64url } => {
            let mut found = subprotocols(headers).filter_map(|p| p.strip_prefix(prefix.as_str()));
            match (found.next(), found.next()) {
                (None, _) => None,
                (Some(_), Some(_)) => return Err(AuthFailure::Malformed),
                (Some(rest), None) if *base64url => {
                    // Kubernetes writes it unpadded; padding is tolerated.
                    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(rest.trim_end_matches('='))
                        .map_err(|_| AuthFailure::Malformed)?;
                    Some(String::from_utf8(bytes).map_err(|_| AuthFailure::Malformed)?)
                }
                (Some(rest), None) => Some(rest.to_owned()),
            }
        }
    };
    match token {
        Some(t) if t.is_empty() || t.len() > max => Err(AuthFailure::Malformed),
        other => Ok(other),
    }
}

/// Removes `source`'s credential from what goes upstream.
pub(crate) fn strip(source: &TokenSource, headers: &mut HeaderMap, query: &mut Option<String>) {
    match source {
        TokenSource::Query(name) => {
            *query = query.take().and_then(|q| strip_query_param(&q, name));
        }
        TokenSource::Bearer => {
            headers.remove(header::AUTHORIZATION);
        }
        TokenSource::Header(name) => {
            headers.remove(name);
        }
        TokenSource::Cookie(name) => {
            rewrite_list(headers, header::COOKIE, b';', |pair| {
                loose_cookie_name(pair).eq_ignore_ascii_case(name.as_bytes())
            });
        }
        TokenSource::Subprotocol { prefix, .. } => {
            rewrite_list(headers, header::SEC_WEBSOCKET_PROTOCOL, b',', |entry| {
                loose_trim(entry).starts_with(prefix.as_bytes())
            });
        }
    }
}

fn utf8(bytes: &[u8]) -> Result<String, AuthFailure> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| AuthFailure::Malformed)
}

/// A cookie pair's name as lenient servers read it (blanks around it trimmed).
fn cookie_name(pair: &[u8]) -> &[u8] {
    let name = match pair.iter().position(|b| *b == b'=') {
        Some(eq) => &pair[..eq],
        None => pair,
    };
    name.trim_ascii()
}

/// A cookie pair's name as the loosest upstream might read it, for stripping: besides ASCII
/// blanks, any non-ASCII bytes around it go too (a parser that decodes the header as Latin-1
/// or UTF-8 and trims Unicode blanks reads `\xa0sid` as `sid`: JavaScript's `trim`, Python's
/// `strip`). Compared without case by the caller, for upstreams that fold cookie names.
fn loose_cookie_name(pair: &[u8]) -> &[u8] {
    let name = match pair.iter().position(|b| *b == b'=') {
        Some(eq) => &pair[..eq],
        None => pair,
    };
    loose_trim(name)
}

/// `item` without the blanks, controls and non-ASCII bytes around it (see `loose_cookie_name`).
fn loose_trim(item: &[u8]) -> &[u8] {
    let loose = |b: &u8| b.is_ascii_whitespace() || b.is_ascii_control() || !b.is_ascii();
    let start = item.iter().position(|b| !loose(b)).unwrap_or(item.len());
    let end = item
        .iter()
        .rposition(|b| !loose(b))
        .map_or(start, |e| e + 1);
    &item[start..end]
}

/// The raw values of every `name` cookie, over all `Cookie` headers (HTTP/2 sends one per
/// cookie).
fn cookie_values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .filter_map(move |pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            (cookie_name(pair) == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
}

/// A cookie value without the optional surrounding double quotes (RFC 6265 §4.1.1).
fn unquote(v: &[u8]) -> &[u8] {
    match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    }
}

/// Every offered subprotocol, over all `Sec-WebSocket-Protocol` headers.
fn subprotocols(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Drops the items of a `sep`-separated header that `drop` matches, keeping every other item
/// byte for byte (bytes, not text: a value with non-ASCII bytes elsewhere is cleaned all the
/// same); a header left empty is removed.
fn rewrite_list(
    headers: &mut HeaderMap,
    name: header::HeaderName,
    sep: u8,
    drop: impl Fn(&[u8]) -> bool,
) {
    let old: Vec<http::HeaderValue> = headers.get_all(&name).iter().cloned().collect();
    if !old
        .iter()
        .any(|v| v.as_bytes().split(|b| *b == sep).any(&drop))
    {
        return;
    }
    headers.remove(&name);
    for value in old {
        let kept: Vec<&[u8]> = value
            .as_bytes()
            .split(|b| *b == sep)
            .filter(|item| !drop(item))
            .collect();
        let joined = kept.join(&sep);
        // The first kept item may carry the blank that followed a removed separator.
        let joined = joined.trim_ascii_start();
        if joined.trim_ascii().is_empty() {
            continue;
        }
        // Every byte came from a valid value, so the result is one too.
        if let Ok(v) = http::HeaderValue::from_bytes(joined) {
            headers.append(&name, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn cookie(name: &str) -> TokenSource {
        TokenSource::Cookie(name.into())
    }

    fn k8s() -> TokenSource {
        TokenSource::Subprotocol {
            prefix: "base64url.bearer.authorization.k8s.io.".into(),
            base64url: true,
        }
    }

    #[test]
    fn cookies_an_upstream_could_read_as_the_credential_are_removed_too() {
        // Found by the `credentials` fuzz target: a Latin-1 NBSP before the name.
        for raw in [
            &b"\xa0sid=t; keep=1"[..],
            b"\xc2\xa0sid=t; keep=1",
            b"sid\xe2\x80\x83=t; keep=1",
            b"\xef\xbb\xbfsid=t;keep=1",
            b"SID=t; keep=1",
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::COOKIE, http::HeaderValue::from_bytes(raw).unwrap());
            let mut q = None;
            strip(&cookie("sid"), &mut h, &mut q);
            assert_eq!(
                h.get(header::COOKIE).map(|v| v.as_bytes()),
                Some(&b"keep=1"[..]),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn token_subprotocols_behind_non_ascii_blanks_are_removed_too() {
        let mut h = HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_bytes(
                b"chat, \xc2\xa0base64url.bearer.authorization.k8s.io.dA",
            )
            .unwrap(),
        );
        let mut q = None;
        strip(&k8s(), &mut h, &mut q);
        assert_eq!(
            h.get(header::SEC_WEBSOCKET_PROTOCOL).map(|v| v.as_bytes()),
            Some(&b"chat"[..])
        );
    }

    #[test]
    fn cookie_is_found_once_and_removed_leaving_the_others_byte_exact() {
        let mut h = headers(&[("cookie", "a=1;  tok=\"abc\"; b=x=y;c")]);
        assert_eq!(find(&cookie("tok"), &h, None, 100), Ok(Some("abc".into())));
        let mut q = None;
        strip(&cookie("tok"), &mut h, &mut q);
        assert_eq!(h.get("cookie").unwrap(), "a=1; b=x=y;c");
        // First and last positions, several headers (HTTP/2), and a header left empty.
        let mut h = headers(&[
            ("cookie", "tok=1; a=2"),
            ("cookie", "tok=1"),
            ("cookie", "z=9; tok=1"),
        ]);
        assert_eq!(
            find(&cookie("tok"), &h, None, 100),
            Err(AuthFailure::Malformed),
            "three copies are ambiguous"
        );
        strip(&cookie("tok"), &mut h, &mut q);
        let left: Vec<_> = h.get_all("cookie").iter().collect();
        assert_eq!(left, ["a=2", "z=9"]);
        // Names are exact (case-sensitive, as cookie parsers read them); look-alikes stay.
        let h = headers(&[("cookie", "Tok=1; toke=2; tok2=3")]);
        assert_eq!(find(&cookie("tok"), &h, None, 100), Ok(None));
        // Blank-padded names are read by lenient backends, so they count as the name.
        let h = headers(&[("cookie", "tok=1; tok =2")]);
        assert_eq!(
            find(&cookie("tok"), &h, None, 100),
            Err(AuthFailure::Malformed)
        );
        // A non-ASCII byte elsewhere in the header does not shield the token from removal.
        let mut h = HeaderMap::new();
        h.insert(
            "cookie",
            http::HeaderValue::from_bytes(b"x=\xff; tok=abc; y=2").unwrap(),
        );
        assert_eq!(find(&cookie("tok"), &h, None, 100), Ok(Some("abc".into())));
        strip(&cookie("tok"), &mut h, &mut q);
        assert_eq!(h.get("cookie").unwrap().as_bytes(), b"x=\xff; y=2");
        let h = headers(&[("cookie", "tok=")]);
        assert_eq!(
            find(&cookie("tok"), &h, None, 100),
            Err(AuthFailure::Malformed)
        );
    }

    #[test]
    fn kubernetes_subprotocol_is_decoded_and_only_it_is_removed() {
        let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln";
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token);
        let mut h = headers(&[(
            "sec-websocket-protocol",
            &format!("chat, base64url.bearer.authorization.k8s.io.{enc}, v2.chat"),
        )]);
        assert_eq!(find(&k8s(), &h, None, 4096), Ok(Some(token.into())));
        let mut q = None;
        strip(&k8s(), &mut h, &mut q);
        assert_eq!(h.get("sec-websocket-protocol").unwrap(), "chat, v2.chat");
        // Only the token offered: the header goes.
        let mut h = headers(&[(
            "sec-websocket-protocol",
            &format!("base64url.bearer.authorization.k8s.io.{enc}"),
        )]);
        strip(&k8s(), &mut h, &mut q);
        assert!(h.get("sec-websocket-protocol").is_none());
        // Not base64url, or two of them: malformed.
        let h = headers(&[(
            "sec-websocket-protocol",
            "base64url.bearer.authorization.k8s.io.!!!",
        )]);
        assert_eq!(find(&k8s(), &h, None, 4096), Err(AuthFailure::Malformed));
        let h = headers(&[
            (
                "sec-websocket-protocol",
                &format!("base64url.bearer.authorization.k8s.io.{enc}"),
            ),
            (
                "sec-websocket-protocol",
                &format!("base64url.bearer.authorization.k8s.io.{enc}"),
            ),
        ]);
        assert_eq!(find(&k8s(), &h, None, 4096), Err(AuthFailure::Malformed));
        // A plain prefix takes the rest as it is.
        let plain = TokenSource::Subprotocol {
            prefix: "jwt.".into(),
            base64url: false,
        };
        let h = headers(&[("sec-websocket-protocol", &format!("jwt.{token}, chat"))]);
        assert_eq!(find(&plain, &h, None, 4096), Ok(Some(token.into())));
    }

    #[test]
    fn custom_header_once_and_bounded() {
        let name = TokenSource::Header(http::HeaderName::from_static("x-token"));
        let h = headers(&[("x-token", " abc ")]);
        assert_eq!(find(&name, &h, None, 100), Ok(Some("abc".into())));
        let h = headers(&[("x-token", "a"), ("x-token", "b")]);
        assert_eq!(find(&name, &h, None, 100), Err(AuthFailure::Malformed));
        let h = headers(&[("x-token", "abcdef")]);
        assert_eq!(find(&name, &h, None, 5), Err(AuthFailure::Malformed));
    }
}
