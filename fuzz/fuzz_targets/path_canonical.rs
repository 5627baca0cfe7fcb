//! Request paths: arbitrary bytes (as a path, and as `route prefix \n path`) through
//! `wsgate::path::canonicalize` and `wsgate::route::Router`.
//!
//! Invariants: never panics; an accepted path's canonical form is a fixed point with the same
//! routing key; it parses as an origin-form target (the handler rewrites the URI with it); it
//! has no `;`, no `%2E`/`%2F`/`%5C`/`%25` (any case), no backslash, no `.`/`..` segment and
//! no `//`. And the route chosen for it is the route a backend would dispatch after decoding
//! every escape and resolving dot segments (RFC 3986 §5.2.4), case-sensitively, or ignoring
//! ASCII case under `case_insensitive_paths`; the gate may refuse (ambiguous case), never
//! pick another route.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgate::path::canonicalize;
use wsgate::route::Router;

const ROUTES: &[&str] = &[
    "/", "/admin", "/admin/x", "/a:b", "/%C3%A4", "/x%3Fy", "/ws",
];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // "prefix\npath" adds one route of the input's choosing (when the config would accept it).
    let (extra, path) = match text.split_once('\n') {
        Some((r, p)) => (Some(r), p),
        None => (None, text.as_ref()),
    };
    let Ok(canon) = canonicalize(path) else {
        return;
    };
    let out = canon.as_str();
    let again = canonicalize(out).expect("canonical form refused");
    assert_eq!(again.as_str(), out, "not idempotent");
    assert_eq!(again.key(), canon.key());
    assert!(
        out.parse::<http::uri::PathAndQuery>().is_ok(),
        "{out:?} unparsable"
    );
    let upper = out.to_ascii_uppercase();
    for bad in [";", "%2E", "%2F", "%5C", "%25", "\\", "//"] {
        assert!(!upper.contains(bad), "{out:?} contains {bad}");
    }
    assert!(out.starts_with('/'));
    for seg in out.split('/').skip(1) {
        assert!(seg != "." && seg != "..", "{out:?} has a dot segment");
    }

    let mut routes: Vec<String> = ROUTES.iter().map(|s| s.to_string()).collect();
    if let Some(r) = extra
        && let Ok(c) = canonicalize(r)
        && c.as_str() == r
        && !r.ends_with('/')
        && !routes.iter().any(|q| same(q, r))
    {
        routes.push(r.to_string());
    }
    let router = Router::new(routes.iter().map(|r| (r.clone(), r.clone())));
    let backend = reference(path.as_bytes());
    for fold in [false, true] {
        let want = routes
            .iter()
            .filter(|r| prefix_of(&decode_all(r.as_bytes()), &backend, fold))
            .max_by_key(|r| decode_all(r.as_bytes()).len());
        match router.find(&canon, fold) {
            Ok(got) => assert_eq!(got, want, "{path:?} (canonical {out:?}, fold {fold})"),
            Err(_) => assert!(!fold, "ambiguity reported while folding case"),
        }
    }
});

/// Two route paths that are the same route once decoded and case-folded (the config refuses
/// the second).
fn same(a: &str, b: &str) -> bool {
    decode_all(a.as_bytes()).eq_ignore_ascii_case(&decode_all(b.as_bytes()))
}

/// What a decoding backend dispatches on: every escape decoded, then dot segments removed.
fn reference(raw: &[u8]) -> Vec<u8> {
    remove_dot_segments(&decode_all(raw))
}

fn decode_all(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%'
            && let Some(h) = raw.get(i + 1..i + 3)
            && let Ok(s) = std::str::from_utf8(h)
            && let Ok(v) = u8::from_str_radix(s, 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    out
}

/// RFC 3986 §5.2.4 on byte strings.
fn remove_dot_segments(path: &[u8]) -> Vec<u8> {
    let mut input = path.to_vec();
    let mut out: Vec<u8> = Vec::new();
    while !input.is_empty() {
        if input.starts_with(b"../") {
            input.drain(..3);
        } else if input.starts_with(b"./") {
            input.drain(..2);
        } else if input.starts_with(b"/./") {
            input.drain(..2);
        } else if input == b"/." {
            input = b"/".to_vec();
        } else if input.starts_with(b"/../") || input == b"/.." {
            input.drain(..3);
            if input.is_empty() {
                input = b"/".to_vec();
            }
            if let Some(p) = out.iter().rposition(|&b| b == b'/') {
                out.truncate(p);
            } else {
                out.clear();
            }
        } else if input == b"." || input == b".." {
            input.clear();
        } else {
            let start = usize::from(input[0] == b'/');
            let end = input[start..]
                .iter()
                .position(|&b| b == b'/')
                .map_or(input.len(), |p| p + start);
            out.extend(input.drain(..end));
        }
    }
    out
}

fn prefix_of(prefix: &[u8], path: &[u8], fold: bool) -> bool {
    if prefix == b"/" {
        return path.starts_with(b"/");
    }
    if path.len() < prefix.len() {
        return false;
    }
    let head = &path[..prefix.len()];
    let same = if fold {
        head.eq_ignore_ascii_case(prefix)
    } else {
        head == prefix
    };
    same && (path.len() == prefix.len() || path[prefix.len()] == b'/')
}
