//! Header rewriting: arbitrary header maps (one `name: value` per line) through
//! `wsgate::proxy::handler::strip_hop_by_hop`.
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
});
