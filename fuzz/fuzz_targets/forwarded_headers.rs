//! Header rewriting: arbitrary header maps (one `name: value` per line) through
//! `wsgate::proxy::handler::strip_hop_by_hop` and the `X-Forwarded-For` / client-address
//! logic of `wsgate::forwarded` (peer and trusted list derived from the input too).
//!
//! Forwarded invariants: the new `X-Forwarded-For` is a valid header value ending in the
//! peer; without a trusted list the client is the peer; an untrusted peer's list is
//! replaced; the client address is the peer or one of the listed hops (as `parse_hop` reads
//! them, ports and brackets included); the walk never skips an entry that doesn't parse
//! (with a trusted peer and an unparsable rightmost entry, the client is the peer). The new
//! `Forwarded` is a valid header value ending in the peer's `for=` element, and only that
//! element for an untrusted peer, whose other `X-Forwarded-*` headers are dropped too.
//! `headers::drop_underscored` leaves no `_` name (or, when underscores are allowed, none
//! that folds to a gateway header) and touches no other name; `check_host` and
//! `is_websocket_101` never panic.
//!
//! Invariants: no hop-by-hop header survives, every header the `Connection` header names
//! is gone except `Authorization` (consumed or kept explicitly by the handler), and every
//! other header is untouched.
#![no_main]

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let before = headers.clone();
    wsgate::proxy::handler::strip_hop_by_hop(&mut headers);

    for h in HOP {
        assert!(!headers.contains_key(*h), "{h} survived");
    }
    for n in &named {
        if n != header::AUTHORIZATION {
            assert!(!headers.contains_key(n), "{n} named by Connection survived");
        }
    }
    for (name, _) in before.iter() {
        let removed =
            HOP.contains(&name.as_str()) || (named.contains(name) && name != header::AUTHORIZATION);
        if !removed {
            let a: Vec<_> = before.get_all(name).iter().collect();
            let b: Vec<_> = headers.get_all(name).iter().collect();
            assert_eq!(a, b, "{name} was changed");
        }
    }

    // Forwarded-for logic on the original headers.
    let seed = data
        .iter()
        .fold(0u32, |a, &b| a.rotate_left(5) ^ u32::from(b));
    let peer = std::net::IpAddr::from(seed.to_be_bytes());
    let trusted: Vec<ipnet::IpNet> = match seed % 3 {
        0 => Vec::new(),
        1 => vec![
            ipnet::IpNet::new(peer, 8)
                .unwrap_or(ipnet::IpNet::from(peer))
                .trunc(),
        ],
        _ => vec!["10.0.0.0/8".parse().unwrap()],
    };
    for t in [None, Some(trusted.as_slice())] {
        let xff = wsgate::forwarded::x_forwarded_for(peer, &before, t);
        assert!(
            HeaderValue::from_str(&xff).is_ok(),
            "invalid X-Forwarded-For: {xff:?}"
        );
        assert!(
            xff.ends_with(&peer.to_string()),
            "{xff} does not end with the peer"
        );
        let client = wsgate::forwarded::client_ip(peer, &before, t);
        let peer_trusted = t.is_some_and(|t| t.iter().any(|n| n.contains(&peer)));
        if !peer_trusted {
            assert_eq!(client, peer);
        }
        if t.is_some() && !peer_trusted {
            assert_eq!(
                xff,
                peer.to_string(),
                "untrusted peer's list must be replaced"
            );
        }
        let hops: Vec<&str> = before
            .get_all(&wsgate::forwarded::X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        if client != peer {
            assert!(
                hops.iter()
                    .any(|h| wsgate::forwarded::parse_hop(h) == Some(client)),
                "client {client} not among the hops {hops:?}"
            );
        }
        let rightmost = before
            .get_all(&wsgate::forwarded::X_FORWARDED_FOR)
            .iter()
            .last()
            .map(|v| {
                v.to_str()
                    .map(|s| s.split(',').filter(|e| !e.trim().is_empty()).last())
            });
        if peer_trusted
            && let Some(last) = rightmost
            && match last {
                Err(_) => true,
                Ok(Some(e)) => wsgate::forwarded::parse_hop(e).is_none(),
                Ok(None) => false,
            }
        {
            assert_eq!(
                client, peer,
                "skipped an unparsable rightmost entry {last:?}"
            );
        }

        let fwd = wsgate::forwarded::forwarded(peer, &before, t);
        assert!(
            HeaderValue::from_str(&fwd).is_ok(),
            "invalid Forwarded: {fwd:?}"
        );
        let node = match peer {
            std::net::IpAddr::V4(ip) => format!("for={ip}"),
            std::net::IpAddr::V6(ip) => format!("for=\"[{ip}]\""),
        };
        assert!(fwd.ends_with(&node), "{fwd} does not end with {node}");
        if !peer_trusted {
            assert_eq!(fwd, node, "untrusted peer's Forwarded must be dropped");
        }
        let mut h = before.clone();
        wsgate::forwarded::drop_untrusted_x_forwarded(peer, &mut h, t);
        for (name, _) in before.iter() {
            let s = name.as_str();
            let gone = !peer_trusted && s.starts_with("x-forwarded-") && s != "x-forwarded-for";
            assert_eq!(h.contains_key(name), !gone, "{s}");
        }
    }

    // Underscore names, Host and the upstream's 101.
    for allow in [false, true] {
        let mut h = before.clone();
        wsgate::headers::drop_underscored(&mut h, allow);
        for (name, _) in h.iter() {
            let s = name.as_str();
            assert!(!s.contains('_') || (allow && !wsgate::headers::folds_to_gateway_header(s)));
        }
        for (name, _) in before.iter() {
            if !name.as_str().contains('_') {
                assert_eq!(
                    h.get_all(name).iter().count(),
                    before.get_all(name).iter().count()
                );
            }
        }
    }
    let _ = wsgate::headers::check_host(&before, &http::Uri::from_static("/"));
    let _ = wsgate::headers::is_websocket_101(&before, data);
});
