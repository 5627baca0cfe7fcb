//! Who the client is, and what `X-Forwarded-For` and `Forwarded` say upstream: pure
//! functions over the peer address, the request headers and `trusted_proxies` (fuzzed in
//! `fuzz/`).

use std::net::{IpAddr, Ipv6Addr, SocketAddrV4};

use http::HeaderMap;
use http::header::{self, HeaderName};
use ipnet::IpNet;

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

fn is_trusted(trusted: &[IpNet], ip: &IpAddr) -> bool {
    trusted.iter().any(|n| n.contains(ip))
}

/// Whether a PROXY protocol header from the socket peer may be believed: from anyone when
/// `trusted_proxies` is unset (enabling `proxy_protocol` on the listener is the trust), else
/// only from a peer in the list.
pub fn proxy_header_allowed(peer: IpAddr, trusted: Option<&[IpNet]>) -> bool {
    trusted.is_none_or(|t| is_trusted(t, &peer))
}

/// One `X-Forwarded-For` entry as an address: `ip`, `ipv4:port`, `[ipv6]` or `[ipv6]:port`.
/// `None` for anything else (`unknown`, RFC 7239 obfuscated `_ident`s, garbage).
pub fn parse_hop(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = entry.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let ip: Ipv6Addr = ip.parse().ok()?;
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(is_port);
        return port_ok.then_some(IpAddr::V6(ip));
    }
    let (_, port) = entry.rsplit_once(':')?;
    if !is_port(port) {
        return None;
    }
    entry
        .parse::<SocketAddrV4>()
        .ok()
        .map(|a| IpAddr::V4(*a.ip()))
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()
}

/// The hops of every `X-Forwarded-For` line, left to right; `None` for an entry (or a whole
/// non-text line) that is not an address. Empty list elements are ignored (RFC 9110 §5.6.1).
fn hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let mut out = Vec::new();
    for value in headers.get_all(&X_FORWARDED_FOR) {
        match value.to_str() {
            Ok(v) => out.extend(v.split(',').filter(|e| !e.trim().is_empty()).map(parse_hop)),
            Err(_) => out.push(None),
        }
    }
    out
}

/// The client's address: the socket peer, or — with `trusted_proxies` and a trusted peer —
/// the result of walking `X-Forwarded-For` from the right.
///
/// The walk starts at the peer and moves left one entry at a time while the address reached
/// is trusted; it stops at the first untrusted address (the client), at an entry that is not
/// an address, or at the left end. The client is the last address reached: an unparsable
/// entry is never skipped, so the answer is then the trusted hop that wrote it.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: Option<&[IpNet]>) -> IpAddr {
    let Some(trusted) = trusted else {
        return peer;
    };
    let mut client = peer;
    if !is_trusted(trusted, &client) {
        return client;
    }
    for hop in hops(headers).into_iter().rev() {
        let Some(ip) = hop else {
            break;
        };
        client = ip;
        if !is_trusted(trusted, &ip) {
            break;
        }
    }
    client
}

/// The `Forwarded` value (RFC 7239) to send upstream: a trusted peer's elements are kept and
/// the peer's `for=` appended, as `X-Forwarded-For` extends its list; from anyone else
/// (including everyone when `trusted_proxies` is unset) the client's `Forwarded` is dropped
/// and only the peer's element is sent, because nothing in it can be believed.
pub fn forwarded(peer: IpAddr, headers: &HeaderMap, trusted: Option<&[IpNet]>) -> String {
    let node = match peer {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("\"[{ip}]\""),
    };
    let keep = trusted.is_some_and(|t| is_trusted(t, &peer));
    let previous = earlier_hops(headers, &header::FORWARDED, keep);
    if previous.is_empty() {
        format!("for={node}")
    } else {
        format!("{}, for={node}", previous.join(", "))
    }
}

/// The non-empty, visible-ASCII values of `name` when the client's list is `kept`, else none.
fn earlier_hops<'h>(headers: &'h HeaderMap, name: &HeaderName, kept: bool) -> Vec<&'h str> {
    if !kept {
        return Vec::new();
    }
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect()
}

/// The `X-Forwarded-For` value to send upstream.
///
/// Without `trusted_proxies` the client's list is kept and the peer appended (nginx's
/// `$proxy_add_x_forwarded_for`); with it, an untrusted peer's list is replaced by the peer.
/// Values that are not visible ASCII are dropped, so the result is always a valid header.
pub fn x_forwarded_for(peer: IpAddr, headers: &HeaderMap, trusted: Option<&[IpNet]>) -> String {
    let keep = trusted.is_none_or(|t| is_trusted(t, &peer));
    let previous = earlier_hops(headers, &X_FORWARDED_FOR, keep);
    if previous.is_empty() {
        peer.to_string()
    } else {
        format!("{}, {peer}", previous.join(", "))
    }
}

/// Removes the client's other `X-Forwarded-*` headers (`-Prefix`, `-Port`, `-Server`, …)
/// unless the peer is in `trusted_proxies`: frameworks believe them as they believe
/// `Forwarded`. `X-Forwarded-For` is left to [`x_forwarded_for`]; the handler sets `-Proto`
/// and `-Host` itself.
pub fn drop_untrusted_x_forwarded(
    peer: IpAddr,
    headers: &mut HeaderMap,
    trusted: Option<&[IpNet]>,
) {
    if trusted.is_some_and(|t| is_trusted(t, &peer)) {
        return;
    }
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with("x-forwarded-") && **n != X_FORWARDED_FOR)
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(xff: &[&str]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for v in xff {
            m.append(X_FORWARDED_FOR, v.parse().unwrap());
        }
        m
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn default_appends_and_trusts_nobody() {
        let headers = h(&["203.0.113.9"]);
        assert_eq!(
            x_forwarded_for(ip("127.0.0.1"), &headers, None),
            "203.0.113.9, 127.0.0.1"
        );
        assert_eq!(client_ip(ip("127.0.0.1"), &headers, None), ip("127.0.0.1"));
        assert_eq!(x_forwarded_for(ip("127.0.0.1"), &h(&[]), None), "127.0.0.1");
    }

    #[test]
    fn trusted_peer_is_believed() {
        let t = nets(&["10.0.0.0/8"]);
        let headers = h(&["198.51.100.1, 203.0.113.9", "10.1.1.1"]);
        assert_eq!(
            client_ip(ip("10.0.0.2"), &headers, Some(&t)),
            ip("203.0.113.9")
        );
        assert_eq!(
            x_forwarded_for(ip("10.0.0.2"), &headers, Some(&t)),
            "198.51.100.1, 203.0.113.9, 10.1.1.1, 10.0.0.2"
        );
        // All hops trusted: the leftmost is the best guess.
        let all = h(&["10.9.9.9, 10.8.8.8"]);
        assert_eq!(client_ip(ip("10.0.0.2"), &all, Some(&t)), ip("10.9.9.9"));
        // Garbage left of the client is never looked at.
        let junk = h(&["not-an-ip, 203.0.113.7"]);
        assert_eq!(
            client_ip(ip("10.0.0.2"), &junk, Some(&t)),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn hops_with_ports_parse() {
        for (entry, want) in [
            ("203.0.113.5", Some("203.0.113.5")),
            (" 203.0.113.5:4444 ", Some("203.0.113.5")),
            ("2001:db8::1", Some("2001:db8::1")),
            ("[2001:db8::1]", Some("2001:db8::1")),
            ("[2001:db8::1]:443", Some("2001:db8::1")),
            ("203.0.113.5:", None),
            ("203.0.113.5:+80", None),
            ("203.0.113.5:70000", None),
            ("[2001:db8::1]443", None),
            ("[203.0.113.5]", None),
            ("unknown", None),
            ("_hidden", None),
            ("", None),
        ] {
            assert_eq!(parse_hop(entry), want.map(ip), "{entry:?}");
        }
    }

    #[test]
    fn the_walk_never_skips_an_entry() {
        let t = nets(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.2");
        let client = |xff: &[&str]| client_ip(peer, &h(xff), Some(&t));
        // The review's case: a port used to make the real hop vanish.
        assert_eq!(client(&["6.6.6.6, 203.0.113.5:4444"]), ip("203.0.113.5"));
        assert_eq!(client(&["6.6.6.6, [2001:db8::5]:1"]), ip("2001:db8::5"));
        // Unparsable: the trusted hop that wrote it (or the peer).
        assert_eq!(client(&["6.6.6.6, unknown"]), peer);
        assert_eq!(client(&["6.6.6.6, unknown, 10.1.1.1:80"]), ip("10.1.1.1"));
        assert_eq!(client(&["6.6.6.6", "unknown"]), peer);
        // Empty list elements are not entries.
        assert_eq!(client(&["6.6.6.6, , 10.1.1.1,"]), ip("6.6.6.6"));
        let mut bin = h(&["6.6.6.6"]);
        bin.append(X_FORWARDED_FOR, HeaderValue::from_bytes(b"\xff").unwrap());
        assert_eq!(client_ip(peer, &bin, Some(&t)), peer);
    }

    #[test]
    fn forwarded_only_from_trusted_peers() {
        let t = nets(&["10.0.0.0/8"]);
        let mut m = HeaderMap::new();
        m.append(header::FORWARDED, "for=6.6.6.6".parse().unwrap());
        assert_eq!(forwarded(ip("192.0.2.1"), &m, None), "for=192.0.2.1");
        assert_eq!(forwarded(ip("192.0.2.1"), &m, Some(&t)), "for=192.0.2.1");
        assert_eq!(
            forwarded(ip("10.0.0.2"), &m, Some(&t)),
            "for=6.6.6.6, for=10.0.0.2"
        );
        assert_eq!(forwarded(ip("::1"), &m, None), "for=\"[::1]\"");
    }

    #[test]
    fn other_x_forwarded_only_from_trusted_peers() {
        let t = nets(&["10.0.0.0/8"]);
        let mut m = h(&["6.6.6.6"]);
        m.append("x-forwarded-prefix", "/p".parse().unwrap());
        m.append("x-forwarded-port", "1".parse().unwrap());
        let mut kept = m.clone();
        drop_untrusted_x_forwarded(ip("10.0.0.2"), &mut kept, Some(&t));
        assert_eq!(kept, m);
        for trusted in [None, Some(t.as_slice())] {
            let mut dropped = m.clone();
            drop_untrusted_x_forwarded(ip("192.0.2.1"), &mut dropped, trusted);
            assert_eq!(dropped.len(), 1);
            assert!(dropped.contains_key(X_FORWARDED_FOR));
        }
    }

    #[test]
    fn proxy_headers_only_from_trusted_peers() {
        let t = nets(&["10.0.0.0/8"]);
        assert!(proxy_header_allowed(ip("192.0.2.1"), None));
        assert!(proxy_header_allowed(ip("10.0.0.2"), Some(&t)));
        assert!(!proxy_header_allowed(ip("192.0.2.1"), Some(&t)));
    }

    #[test]
    fn untrusted_peer_is_replaced() {
        let t = nets(&["10.0.0.0/8"]);
        let headers = h(&["203.0.113.9"]);
        assert_eq!(
            client_ip(ip("192.0.2.1"), &headers, Some(&t)),
            ip("192.0.2.1")
        );
        assert_eq!(
            x_forwarded_for(ip("192.0.2.1"), &headers, Some(&t)),
            "192.0.2.1"
        );
    }
}
