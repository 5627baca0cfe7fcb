//! Header rewriting: arbitrary header maps (one `name: value` per line) through
//! `wsgate::proxy::handler::strip_hop_by_hop` and the `X-Forwarded-For` / client-address
//! logic of `wsgate::forwarded` (peer and trusted list derived from the input too).
//!
//! Forwarded invariants: the new `X-Forwarded-For` is a valid header value ending in the
//! peer; without a trusted list the client is the peer; an untrusted peer's list is
//! replaced; the client address is the peer or one of the listed hops.
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
    let seed = data.iter().fold(0u32, |a, &b| a.rotate_left(5) ^ u32::from(b));
    let peer = std::net::IpAddr::from(seed.to_be_bytes());
    let trusted: Vec<ipnet::IpNet> = match seed % 3 {
        0 => Vec::new(),
        1 => vec![ipnet::IpNet::new(peer, 8).unwrap_or(ipnet::IpNet::from(peer)).trunc()],
        _ => vec!["10.0.0.0/8".parse().unwrap()],
    };
    for t in [None, Some(trusted.as_slice())] {
        let xff = wsgate::forwarded::x_forwarded_for(peer, &before, t);
        assert!(HeaderValue::from_str(&xff).is_ok(), "invalid X-Forwarded-For: {xff:?}");
        assert!(xff.ends_with(&peer.to_string()), "{xff} does not end with the peer");
        let client = wsgate::forwarded::client_ip(peer, &before, t);
        let peer_trusted = t.is_some_and(|t| t.iter().any(|n| n.contains(&peer)));
        if !peer_trusted {
            assert_eq!(client, peer);
        }
        if t.is_some() && !peer_trusted {
            assert_eq!(xff, peer.to_string(), "untrusted peer's list must be replaced");
        }
        if client != peer && client.is_ipv4() {
            assert!(xff.contains(&client.to_string()), "client {client} not among the hops {xff}");
        }
    }
});
