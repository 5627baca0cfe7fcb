//! Who the client is, and what `X-Forwarded-For` says upstream: pure functions over the
//! peer address, the request headers and `trusted_proxies` (fuzzed in `fuzz/`).

use std::net::IpAddr;

use http::HeaderMap;
use http::header::HeaderName;
use ipnet::IpNet;

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

fn is_trusted(trusted: &[IpNet], ip: &IpAddr) -> bool {
    trusted.iter().any(|n| n.contains(ip))
}

/// The client's address: the socket peer, or — with `trusted_proxies` and a trusted peer —
/// the nearest untrusted address in `X-Forwarded-For` (the leftmost if all are trusted).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: Option<&[IpNet]>) -> IpAddr {
    let Some(trusted) = trusted else {
        return peer;
    };
    if !is_trusted(trusted, &peer) {
        return peer;
    }
    let hops: Vec<IpAddr> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|h| h.trim().parse().ok())
        .collect();
    hops.iter()
        .rev()
        .find(|ip| !is_trusted(trusted, ip))
        .or(hops.first())
        .copied()
        .unwrap_or(peer)
}

/// The `X-Forwarded-For` value to send upstream.
///
/// Without `trusted_proxies` the client's list is kept and the peer appended (nginx's
/// `$proxy_add_x_forwarded_for`); with it, an untrusted peer's list is replaced by the peer.
/// Values that are not visible ASCII are dropped, so the result is always a valid header.
pub fn x_forwarded_for(peer: IpAddr, headers: &HeaderMap, trusted: Option<&[IpNet]>) -> String {
    let keep = trusted.is_none_or(|t| is_trusted(t, &peer));
    let previous: Vec<&str> = if keep {
        headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect()
    } else {
        Vec::new()
    };
    if previous.is_empty() {
        peer.to_string()
    } else {
        format!("{}, {peer}", previous.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // Garbage hops are skipped.
        let junk = h(&["not-an-ip, 203.0.113.7"]);
        assert_eq!(
            client_ip(ip("10.0.0.2"), &junk, Some(&t)),
            ip("203.0.113.7")
        );
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
