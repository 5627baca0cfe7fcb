//! Credentials: a header value and a query string (split at the first NUL byte) go through
//! a route with a Basic, a JWT and a cookie/subprotocol JWT authenticator (the value is sent
//! as `Authorization`, `Cookie` and `Sec-WebSocket-Protocol`), through `strip_query_param`
//! and through the upstream preparation (paths have their own target, `path_canonical`).
//!
//! Invariants: nothing panics; `strip_query_param` is idempotent and never returns an
//! empty query; a query that passes `check_query` has no `;` and, once stripped, no key
//! that is the token parameter in any case; an admission names who was admitted; what goes
//! upstream has no `sid` cookie and no token subprotocol left.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use wsgate::auth::{Authenticator, HashLimiter, RouteAuth};
use wsgate::config::{AuthConfig, BasicConfig, JwtConfig, JwtKey, TokenSourceConfig};

const K8S: &str = "base64url.bearer.authorization.k8s.io.";

struct Fixture {
    route: RouteAuth,
    runtime: tokio::runtime::Runtime,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // Cost 4 keeps a lucky "alice:pw" from slowing the fuzzer down.
        let hash = bcrypt::hash_with_result("pw", 4)
            .unwrap()
            .format_for_version(bcrypt::Version::TwoY);
        let path =
            std::env::temp_dir().join(format!("wsgate-fuzz-{}.htpasswd", std::process::id()));
        std::fs::write(&path, format!("alice:{hash}\n")).unwrap();
        let limiter = Arc::new(HashLimiter::new(1));
        let basic = AuthConfig::Basic(BasicConfig {
            realm: "fuzz".into(),
            htpasswd: path,
            cache_ttl: Duration::from_secs(60),
        });
        let jwt = AuthConfig::Jwt(JwtConfig {
            query_param: "token".into(),
            algorithms: vec![jsonwebtoken::Algorithm::HS256],
            key: JwtKey::Secret("fuzz-secret-0123456789abcdef0123".into()),
            ..JwtConfig::default()
        });
        let jar = AuthConfig::Jwt(JwtConfig {
            algorithms: vec![jsonwebtoken::Algorithm::HS256],
            key: JwtKey::Secret("fuzz-secret-0123456789abcdef0123".into()),
            from: Some(vec![
                TokenSourceConfig {
                    cookie: Some("sid".into()),
                    ..TokenSourceConfig::default()
                },
                TokenSourceConfig {
                    subprotocol: Some(K8S.into()),
                    ..TokenSourceConfig::default()
                },
            ]),
            ..JwtConfig::default()
        });
        let auths = vec![
            Arc::new(Authenticator::build("users", &basic, limiter.clone()).expect("basic")),
            Arc::new(Authenticator::build("jwt", &jwt, limiter.clone()).expect("jwt")),
            Arc::new(Authenticator::build("jar", &jar, limiter).expect("jar")),
        ];
        Fixture {
            route: RouteAuth::new(auths),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let (header, query) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let query = String::from_utf8_lossy(query);

    for name in ["token", "access_token", ""] {
        if let Some(stripped) = wsgate::auth::strip_query_param(&query, name) {
            assert!(!stripped.is_empty(), "Some(\"\") for {query:?}");
            assert_eq!(
                wsgate::auth::strip_query_param(&stripped, name).as_deref(),
                Some(stripped.as_str()),
                "not idempotent for {query:?} / {name:?}"
            );
        }
    }

    let f = fixture();
    let q = (!query.is_empty()).then_some(query.as_ref());
    if f.route.check_query(q).is_ok() {
        assert!(!query.contains(';'), "`;` passed in {query:?}");
        let stripped = wsgate::auth::strip_query_param(&query, "token").unwrap_or_default();
        for pair in stripped.split('&') {
            let key = pair.split_once('=').map_or(pair, |(k, _)| k);
            assert!(
                !key.eq_ignore_ascii_case("token"),
                "{key:?} reaches the upstream from {query:?}"
            );
        }
    }

    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_bytes(header) {
        headers.insert(http::header::AUTHORIZATION, v.clone());
        headers.insert(http::header::COOKIE, v.clone());
        headers.insert(http::header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    let uri: http::Uri = match q {
        Some(q) => format!("/?{q}")
            .parse()
            .unwrap_or_else(|_| http::Uri::from_static("/")),
        None => http::Uri::from_static("/"),
    };
    let localhost = std::net::IpAddr::from([127, 0, 0, 1]);
    let req = wsgate::auth::AuthRequest {
        method: &http::Method::GET,
        uri: &uri,
        headers: &headers,
        client: None,
        client_ip: localhost,
        tls: false,
        peer: localhost,
        trusted_proxies: None,
    };
    if let Ok(admission) = f.runtime.block_on(f.route.check_request(&req)) {
        assert!(!admission.identity.user.is_empty());
    }
    let _ = f.route.challenge();

    // Whatever arrived, the upstream's copy has no credential this route reads.
    let admission = wsgate::auth::Admission {
        identity: wsgate::auth::Identity {
            user: "fuzz".into(),
            expires_at: None,
        },
        authenticator: "jar".into(),
        upstream_headers: Vec::new(),
    };
    let mut up = headers.clone();
    let mut up_query = q.map(str::to_owned);
    f.route.prepare_upstream(&admission, &mut up, &mut up_query);
    assert!(up.get(http::header::AUTHORIZATION).is_none());
    for v in up.get_all(http::header::COOKIE) {
        let v = String::from_utf8_lossy(v.as_bytes());
        for pair in v.split(';') {
            let name = pair.split_once('=').map_or(pair, |(n, _)| n).trim();
            assert_ne!(name, "sid", "sid cookie reaches the upstream from {v:?}");
        }
    }
    for v in up.get_all(http::header::SEC_WEBSOCKET_PROTOCOL) {
        let v = String::from_utf8_lossy(v.as_bytes());
        assert!(
            v.split(',').all(|p| !p.trim().starts_with(K8S)),
            "token subprotocol reaches the upstream: {v:?}"
        );
    }
});
