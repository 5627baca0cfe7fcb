//! Authentication on the upgrade (and on plain HTTP), end to end through a running gate:
//! Basic against htpasswd, JWT (query and Bearer), routes with several authenticators,
//! identity headers, credential stripping and the failure metrics.

mod common;

use std::net::SocketAddr;

use base64::Engine as _;
use common::*;
use serde_json::json;

const ALICE_PW: &str = "wonderland";

/// Routes: `/open` (no auth), `/basic` (users), `/jwt` (jwt, max 512-byte tokens),
/// `/aud` (jwt with issuer + audience), `/both` (users, jwt).
const CONFIG: &str = r#"
listeners:
  - bind: "127.0.0.1:0"
admin:
  bind: "127.0.0.1:0"
auth:
  users:
    type: basic
    realm: testrealm
    htpasswd: "{dir}/users.htpasswd"
  jwt:
    type: jwt
    query_param: token
    algorithms: [HS256]
    secret: "${WSGATE_JWT_SECRET}"
    leeway: 5s
    max_token_bytes: 512
  jwtaud:
    type: jwt
    algorithms: [HS256]
    secret: "${WSGATE_JWT_SECRET}"
    issuer: "https://auth.test"
    audience: "chat"
    leeway: 5s
routes:
  - path: /open
    upstream: ws://{up}
  - path: /basic
    upstream: ws://{up}
    auth: [users]
  - path: /jwt
    upstream: ws://{up}
    auth: [jwt]
  - path: /aud
    upstream: ws://{up}
    auth: [jwtaud]
  - path: /both
    upstream: ws://{up}
    auth: [users, jwt]
"#;

async fn gate_for(up: SocketAddr) -> Gate {
    let files = Files::new();
    files.write(
        "users.htpasswd",
        &format!(
            "{}\n{}\n",
            htpasswd_line("alice", ALICE_PW),
            htpasswd_line("bob", "builder")
        ),
    );
    start_gate(files, &CONFIG.replace("{up}", &up.to_string())).await
}

/// A raw upgrade request; returns (status, head).
async fn upgrade(gate: &Gate, path: &str, extra_headers: &[(&str, &str)]) -> (u16, String) {
    let extra: String = extra_headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let (status, head, _) = http_request(gate.addr(), &upgrade_request(path, &extra)).await;
    (status, head)
}

async fn auth_failures(gate: &Gate, route: &str, reason: &str) -> f64 {
    gate.metric(&format!(
        "wsgate_auth_failures_total{{reason=\"{reason}\",route=\"{route}\"}}"
    ))
    .await
}

async fn handshakes(gate: &Gate, route: &str, outcome: &str) -> f64 {
    gate.metric(&format!(
        "wsgate_handshakes_total{{outcome=\"{outcome}\",route=\"{route}\"}}"
    ))
    .await
}

/// Every `wsgate_auth_failures_total` sample of `route`, summed.
async fn all_auth_failures(gate: &Gate, route: &str) -> f64 {
    let text = gate.metrics().await;
    let suffix = format!(",route=\"{route}\"}}");
    text.lines()
        .filter(|l| l.starts_with("wsgate_auth_failures_total{"))
        .filter_map(|l| l.split_once(' '))
        .filter(|(series, _)| series.ends_with(&suffix))
        .map(|(_, v)| v.trim().parse::<f64>().unwrap())
        .sum()
}

fn b64url(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

fn assert_challenge(head: &str, realm: &str) {
    let challenge = head_header(head, "www-authenticate")
        .unwrap_or_else(|| panic!("no WWW-Authenticate in:\n{head}"));
    assert!(
        challenge.starts_with(&format!("Basic realm=\"{realm}\"")),
        "challenge: {challenge}"
    );
}

fn assert_closes(head: &str) {
    assert_eq!(
        head_header(head, "connection").map(|v| v.to_ascii_lowercase()),
        Some("close".to_string()),
        "head:\n{head}"
    );
}

// ---------------------------------------------------------------------------------------
// Basic
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn basic_valid_credentials_upgrade_and_identity_forwarded() {
    let up = echo_upstream().await;
    let gate = gate_for(up.addr).await;
    let auth = basic("alice", ALICE_PW);
    let (mut ws, resp) = ws_connect(&gate.ws_url("/basic/chat"), &[("Authorization", &auth)])
        .await
        .expect("upgrade with good Basic credentials");
    assert_eq!(resp.status(), 101);
    echo_roundtrip(&mut ws, "hello alice").await;

    let seen = up.last();
    assert_eq!(seen.uri, "/basic/chat");
    assert_eq!(seen.all("x-auth-user"), vec!["alice".to_string()]);
    assert!(
        seen.header("authorization").is_none(),
        "Authorization reached the upstream: {:?}",
        seen.headers
    );
    assert_eq!(handshakes(&gate, "/basic", "upgraded").await, 1.0);
    assert_eq!(all_auth_failures(&gate, "/basic").await, 0.0);
}

#[tokio::test]
async fn basic_refusals_are_401_with_challenge_and_counted() {
    let up = echo_upstream().await;
    let gate = gate_for(up.addr).await;

    // Missing.
    let (status, head) = upgrade(&gate, "/basic", &[]).await;
    assert_eq!(status, 401, "{head}");
    assert_challenge(&head, "testrealm");
    assert_closes(&head);

    // Wrong password, unknown user.
    let wrong = basic("alice", "not-the-password");
    let (status, head) = upgrade(&gate, "/basic", &[("Authorization", &wrong)]).await;
    assert_eq!(status, 401, "{head}");
    assert_challenge(&head, "testrealm");
    assert_closes(&head);
    let unknown = basic("mallory", ALICE_PW);
    let (status, _) = upgrade(&gate, "/basic", &[("Authorization", &unknown)]).await;
    assert_eq!(status, 401);
    // Bob's password does not open Alice's account.
    let crossed = basic("alice", "builder");
    let err = ws_connect(&gate.ws_url("/basic"), &[("Authorization", &crossed)])
        .await
        .expect_err("crossed credentials must be refused");
    assert_eq!(refused_status(err), 401);

    // Malformed: not base64, and base64 without a colon.
    let (status, head) = upgrade(&gate, "/basic", &[("Authorization", "Basic !!!")]).await;
    assert_eq!(status, 401, "{head}");
    assert_closes(&head);
    let no_colon = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("alicewonderland")
    );
    let (status, _) = upgrade(&gate, "/basic", &[("Authorization", &no_colon)]).await;
    assert_eq!(status, 401);

    assert_eq!(up.count(), 0, "the upstream saw a refused request");
    // The credential-less attempt is a challenge, not a failure (see the test below).
    assert_eq!(auth_failures(&gate, "/basic", "missing").await, 0.0);
    assert_eq!(auth_failures(&gate, "/basic", "bad_credentials").await, 3.0);
    assert_eq!(auth_failures(&gate, "/basic", "malformed").await, 2.0);
    assert_eq!(all_auth_failures(&gate, "/basic").await, 5.0);
    assert_eq!(handshakes(&gate, "/basic", "unauthorized").await, 5.0);
    assert_eq!(handshakes(&gate, "/basic", "challenged").await, 1.0);
    assert_eq!(handshakes(&gate, "/basic", "upgraded").await, 0.0);

    // And the right credentials still work afterwards.
    let good = basic("alice", ALICE_PW);
    let (status, _) = upgrade(&gate, "/basic", &[("Authorization", &good)]).await;
    assert_eq!(status, 101);
    assert_eq!(up.count(), 1);
}

// ---------------------------------------------------------------------------------------
// JWT
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn jwt_in_query_is_stripped_other_params_kept() {
    let up = echo_upstream().await;
    let gate = gate_for(up.addr).await;
    let token = jwt(json!({"sub": "carol"}));
    let url = gate.ws_url(&format!("/jwt/room?a=1&token={token}&b=2"));
    let (mut ws, resp) = ws_connect(&url, &[])
        .await
        .expect("upgrade with query token");
    assert_eq!(resp.status(), 101);
    echo_roundtrip(&mut ws, "hi").await;
    let seen = up.last();
    assert_eq!(seen.uri, "/jwt/room?a=1&b=2");
    assert!(!seen.uri.contains(&token));
    assert_eq!(seen.all("x-auth-user"), vec!["carol".to_string()]);

    // Token as the only parameter: no dangling `?`.
    let url = gate.ws_url(&format!("/jwt?token={token}"));
    let (_ws, _) = ws_connect(&url, &[]).await.expect("upgrade");
    assert_eq!(up.last().uri, "/jwt");
    assert_eq!(handshakes(&gate, "/jwt", "upgraded").await, 2.0);
}

#[tokio::test]
async fn jwt_bearer_header_is_removed_upstream() {
    let up = echo_upstream().await;
    let gate = gate_for(up.addr).await;
    let token = jwt(json!({"sub": "dave"}));
    let bearer = format!("Bearer {token}");
    let (mut ws, resp) = ws_connect(&gate.ws_url("/jwt?x=1"), &[("Authorization", &bearer)])
        .await
        .expect("upgrade with Bearer");
    assert_eq!(resp.status(), 101);
    echo_roundtrip(&mut ws, "bearer").await;
    let seen = up.last();
    assert_eq!(seen.uri, "/jwt?x=1");
    assert!(seen.header("authorization").is_none(), "{:?}", seen.headers);
    assert_eq!(seen.all("x-auth-user"), vec!["dave".to_string()]);
}

#[tokio::test]
async fn jwt_refusals_counted_by_reason() {
    let up = echo_upstream().await;
    let gate = gate_for(up.addr).await;
    let now = now_secs();

    let cases: Vec<(&str, String)> = vec![
        // Past exp, well beyond the 5 s leeway.
        ("expired", jwt(json!({"exp": now - 600}))),
        ("not_yet_valid", jwt(json!({"nbf": now + 600}))),
        (
            "bad_signature",
            jwt_with(
                json!({}),
                "some-other-secret-0123456789abcdef",
                jsonwebtoken::Algorithm::HS256,
            ),
        ),
        ("malformed", "not-a-jwt".to_string()),
        ("malformed", "a.b.c".to_string()),
    ];
    for (i, (reason, token)) in cases.iter().enumerate() {
        let before = auth_failures(&gate, "/jwt", reason).await;
        let (status, head) = upgrade(&gate, &format!("/jwt?token={token}"), &[]).await;
        assert_eq!(status, 401, "case {i} ({reason}): {head}");
        assert_closes(&head);
        // A JWT-only route does not invite a Basic login.
        assert_eq!(head_header(&head, "www-authenticate"), None, "{head}");
        assert_eq!(
            auth_failures(&gate, "/jwt", reason).await,
            before + 1.0,
            "case {i} not counted as {reason}"
        );
    }
    // The same verdicts for a Bearer header.
    let expired = jwt(json!({"exp": now - 600}));
    let bearer = format!("Bearer {expired}");
    let (status, _) = upgrade(&gate, "/jwt", &[("Authorization", &bearer)]).await;
    assert_eq!(status, 401);
    assert_eq!(auth_failures(&gate, "/jwt", "expired").await, 2.0);

    // Nothing at all on a JWT route: missing, no Basic challenge.
    let (status, head) = upgrade(&gate, "/jwt", &[]).await;
    assert_eq!(status, 401);
    assert_eq!(head_header(&head, "www-authenticate"), None);
    assert_eq!(auth_failures(&gate, "/jwt", "missing").await, 1.0);

    assert_eq!(up.count(), 0, "the upstream saw a refused request");
    assert_eq!(handshakes(&gate, "/jwt", "unauthorized").await, 7.0);
}

#[tokio::test]
async fn jwt_alg_none_is_refused() {
    let up = echo_upstream().await;
    let gate = gate_for(up.addr).await;
    let header = b64url(&json!({"alg": "none", "typ": "JWT"}));
    let claims = b64url(&json!({"sub": "alice", "exp": now_secs() + 600}));
    let token = format!("{header}.{claims}.");
    for (path, extra) in [
        (format!("/jwt?token={token}"), None),
        ("/jwt".to_string(), Some(format!("Bearer {token}"))),
    ] {
        let headers: Vec<(&str, &str)> = extra
            .as_deref()
            .map(|v| vec![("Authorization", v)])
            .unwrap_or_default();
        let (status, head) = upgrade(&gate, &path, &headers).await;
        assert_eq!(status, 401, "alg none admitted via {path}: {head}");
    }
    // Also with "None"/"NONE" spelled differently and a junk signature.
    let header2 = b64url(&json!({"alg": "NONE", "typ": "JWT"}));
    let (status, _) = upgrade(&gate, &format!("/jwt?token={header2}.{claims}.c2ln"), &[]).await;
    assert_eq!(status, 401);
    assert_eq!(all_auth_failures(&gate, "/jwt").await, 3.0);
    assert_eq!(auth_failures(&gate, "/jwt", "missing").await, 0.0);
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn jwt_oversized_token_is_malformed() {
    let up = echo_upstream().await;
    let gate = gate_for(up.addr).await;
    // A validly signed token of ~2 KB (max_token_bytes is 512).
    let big = jwt(json!({"pad": "x".repeat(1500)}));
    assert!(big.len() > 2000, "{}", big.len());
    let (status, _) = upgrade(&gate, &format!("/jwt?token={big}"), &[]).await;
    assert_eq!(status, 401);
    let bearer = format!("Bearer {big}");
    let (status, _) = upgrade(&gate, "/jwt", &[("Authorization", &bearer)]).await;
    assert_eq!(status, 401);
    assert_eq!(auth_failures(&gate, "/jwt", "malformed").await, 2.0);
    // Between 512 and 3 * 512 raw bytes: the decoded length counts too.
    let medium = jwt(json!({"pad": "y".repeat(500)}));
    assert!(
        medium.len() > 512 && medium.len() < 1536,
        "{}",
        medium.len()
    );
    let (status, _) = upgrade(&gate, &format!("/jwt?token={medium}"), &[]).await;
    assert_eq!(status, 401);
    assert_eq!(auth_failures(&gate, "/jwt", "malformed").await, 3.0);
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn jwt_issuer_and_audience_are_enforced() {
    let up = echo_upstream().await;
    let gate = gate_for(up.addr).await;
    let good = json!({"iss": "https://auth.test", "aud": "chat"});
    let token = jwt(good.clone());
    let (status, _) = upgrade(&gate, &format!("/aud?token={token}"), &[]).await;
    assert_eq!(status, 101);
    // `aud` may be a list containing the configured value.
    let token = jwt(json!({"iss": "https://auth.test", "aud": ["other", "chat"]}));
    let (status, _) = upgrade(&gate, &format!("/aud?token={token}"), &[]).await;
    assert_eq!(status, 101);
    assert_eq!(up.count(), 2);

    let bad = [
        json!({"iss": "https://auth.test", "aud": "billing"}),
        json!({"iss": "https://evil.test", "aud": "chat"}),
        // Omitting a configured claim must not pass.
        json!({"iss": "https://auth.test"}),
        json!({"aud": "chat"}),
    ];
    for (i, claims) in bad.iter().enumerate() {
        let token = jwt(claims.clone());
        let (status, head) = upgrade(&gate, &format!("/aud?token={token}"), &[]).await;
        assert_eq!(status, 401, "case {i}: {head}");
        assert_eq!(
            auth_failures(&gate, "/aud", "bad_claims").await,
            (i + 1) as f64,
            "case {i} not counted as bad_claims"
        );
    }
    assert_eq!(up.count(), 2);
}

// ---------------------------------------------------------------------------------------
// Several authenticators
// ---------------------------------------------------------------------------------------

/// A browser's Basic login always starts with a credential-less attempt answered by the
/// challenge: that is `challenged`, so a 401-rate alert on `unauthorized` sees only
/// credentials that were judged and refused. A route without Basic has no challenge to
/// give, so its credential-less attempt stays `unauthorized` + `missing`.
#[tokio::test]
async fn challenge_round_trip_is_its_own_outcome() {
    let up = echo_upstream().await;
    let gate = gate_for(up.addr).await;

    // Every route exports the outcome at zero from the start.
    for route in ["/open", "/basic", "/jwt", "/both"] {
        assert_eq!(handshakes(&gate, route, "challenged").await, 0.0, "{route}");
    }

    // Basic route, no credentials: the challenge, counted as such and nothing else.
    let (status, head) = upgrade(&gate, "/basic", &[]).await;
    assert_eq!(status, 401, "{head}");
    assert_challenge(&head, "testrealm");
    assert_closes(&head);
    assert_eq!(handshakes(&gate, "/basic", "challenged").await, 1.0);
    assert_eq!(handshakes(&gate, "/basic", "unauthorized").await, 0.0);
    assert_eq!(all_auth_failures(&gate, "/basic").await, 0.0);

    // The browser's retry with a wrong password: judged and refused.
    let wrong = basic("alice", "not-the-password");
    let (status, head) = upgrade(&gate, "/basic", &[("Authorization", &wrong)]).await;
    assert_eq!(status, 401, "{head}");
    assert_challenge(&head, "testrealm");
    assert_eq!(handshakes(&gate, "/basic", "unauthorized").await, 1.0);
    assert_eq!(handshakes(&gate, "/basic", "challenged").await, 1.0);
    assert_eq!(auth_failures(&gate, "/basic", "bad_credentials").await, 1.0);

    // JWT-only route, no token: no challenge to give, so unauthorized + missing.
    let (status, head) = upgrade(&gate, "/jwt", &[]).await;
    assert_eq!(status, 401, "{head}");
    assert_eq!(head_header(&head, "www-authenticate"), None);
    assert_eq!(handshakes(&gate, "/jwt", "unauthorized").await, 1.0);
    assert_eq!(handshakes(&gate, "/jwt", "challenged").await, 0.0);
    assert_eq!(auth_failures(&gate, "/jwt", "missing").await, 1.0);
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn mixed_route_reports_the_judged_failure() {
    let up = echo_upstream().await;
    let gate = gate_for(up.addr).await;

    // Expired JWT and no Basic: 401 with the Basic challenge, counted `expired`.
    let expired = jwt(json!({"exp": now_secs() - 600}));
    let (status, head) = upgrade(&gate, &format!("/both?token={expired}"), &[]).await;
    assert_eq!(status, 401);
    assert_challenge(&head, "testrealm");
    assert_closes(&head);
    assert_eq!(auth_failures(&gate, "/both", "expired").await, 1.0);
    assert_eq!(auth_failures(&gate, "/both", "missing").await, 0.0);

    // Nothing at all: the route accepts Basic, so this is the browser's challenge round-trip.
    let (status, head) = upgrade(&gate, "/both", &[]).await;
    assert_eq!(status, 401);
    assert_challenge(&head, "testrealm");
    assert_eq!(auth_failures(&gate, "/both", "missing").await, 0.0);
    assert_eq!(up.count(), 0);
    assert_eq!(handshakes(&gate, "/both", "unauthorized").await, 1.0);
    assert_eq!(handshakes(&gate, "/both", "challenged").await, 1.0);

    // Basic admits.
    let auth = basic("alice", ALICE_PW);
    let (mut ws, _) = ws_connect(&gate.ws_url("/both?q=1"), &[("Authorization", &auth)])
        .await
        .expect("Basic on a mixed route");
    echo_roundtrip(&mut ws, "basic").await;
    let seen = up.last();
    assert_eq!(seen.all("x-auth-user"), vec!["alice".to_string()]);
    assert!(seen.header("authorization").is_none());
    assert_eq!(seen.uri, "/both?q=1");

    // JWT admits, in the query and as Bearer.
    let token = jwt(json!({"sub": "erin"}));
    let (mut ws, _) = ws_connect(&gate.ws_url(&format!("/both?token={token}")), &[])
        .await
        .expect("JWT on a mixed route");
    echo_roundtrip(&mut ws, "jwt").await;
    let seen = up.last();
    assert_eq!(seen.all("x-auth-user"), vec!["erin".to_string()]);
    assert_eq!(seen.uri, "/both");
    let bearer = format!("Bearer {token}");
    let (_ws, _) = ws_connect(&gate.ws_url("/both"), &[("Authorization", &bearer)])
        .await
        .expect("Bearer on a mixed route");
    let seen = up.last();
    assert_eq!(seen.all("x-auth-user"), vec!["erin".to_string()]);
    assert!(seen.header("authorization").is_none());
    assert_eq!(handshakes(&gate, "/both", "upgraded").await, 3.0);
}

// ---------------------------------------------------------------------------------------
// Identity spoofing
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn client_sent_x_auth_user_never_reaches_upstream() {
    let up = echo_upstream().await;
    let gate = gate_for(up.addr).await;

    // Open route: removed, nothing put in its place.
    let (mut ws, _) = ws_connect(
        &gate.ws_url("/open"),
        &[("X-Auth-User", "mallory"), ("x-auth-user", "root")],
    )
    .await
    .expect("open route");
    echo_roundtrip(&mut ws, "open").await;
    let seen = up.last();
    assert!(
        seen.all("x-auth-user").is_empty(),
        "spoofed identity reached the upstream: {:?}",
        seen.all("x-auth-user")
    );

    // Authenticated route: only the real user.
    let auth = basic("alice", ALICE_PW);
    let (_ws, _) = ws_connect(
        &gate.ws_url("/basic"),
        &[("X-Auth-User", "mallory"), ("Authorization", &auth)],
    )
    .await
    .expect("basic route");
    assert_eq!(up.last().all("x-auth-user"), vec!["alice".to_string()]);

    let token = jwt(json!({"sub": "frank"}));
    let (_ws, _) = ws_connect(
        &gate.ws_url(&format!("/jwt?token={token}")),
        &[("X-Auth-User", "mallory")],
    )
    .await
    .expect("jwt route");
    assert_eq!(up.last().all("x-auth-user"), vec!["frank".to_string()]);

    // A raw request naming X-Auth-User in Connection (hop-by-hop trick) changes nothing.
    let (status, _) = upgrade(
        &gate,
        "/open",
        &[("X-Auth-User", "mallory"), ("Connection", "X-Auth-User")],
    )
    .await;
    assert_eq!(status, 101);
    assert!(up.last().all("x-auth-user").is_empty());

    // Plain HTTP too.
    let (status, head, body) = http_request(
        gate.addr(),
        "GET /open/plain HTTP/1.1\r\nHost: gate.test\r\nX-Auth-User: mallory\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, "plain:/open/plain");
    assert_eq!(head_header(&head, "x-seen-auth-user").as_deref(), Some(""));
}

// ---------------------------------------------------------------------------------------
// Plain HTTP under the same auth
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn plain_http_on_authenticated_route_needs_credentials() {
    let up = echo_upstream().await;
    let gate = gate_for(up.addr).await;

    let (status, head, _) = http_request(
        gate.addr(),
        "GET /basic/poll?x=1 HTTP/1.1\r\nHost: gate.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 401, "{head}");
    assert_challenge(&head, "testrealm");
    assert_eq!(up.count(), 0, "unauthenticated plain request was proxied");
    // A challenge, not an auth failure; and not an upgrade: no handshake outcome.
    assert_eq!(auth_failures(&gate, "/basic", "missing").await, 0.0);
    assert_eq!(handshakes(&gate, "/basic", "unauthorized").await, 0.0);
    assert_eq!(handshakes(&gate, "/basic", "challenged").await, 0.0);

    let auth = basic("alice", ALICE_PW);
    let (status, head, body) = http_request(
        gate.addr(),
        &format!(
            "GET /basic/poll?x=1 HTTP/1.1\r\nHost: gate.test\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, "plain:/basic/poll?x=1");
    assert_eq!(
        head_header(&head, "x-seen-auth-user").as_deref(),
        Some("alice")
    );
    let seen = up.last();
    assert!(seen.header("authorization").is_none(), "{:?}", seen.headers);

    // JWT in the query of a plain request: admitted and stripped.
    let token = jwt(json!({"sub": "gina"}));
    let (status, head, body) = http_request(
        gate.addr(),
        &format!(
            "GET /jwt/poll?EIO=4&token={token}&transport=polling HTTP/1.1\r\nHost: gate.test\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, "plain:/jwt/poll?EIO=4&transport=polling");
    assert_eq!(
        head_header(&head, "x-seen-auth-user").as_deref(),
        Some("gina")
    );
}

// ---------------------------------------------------------------------------------------
// Percent-encoding in the query
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn percent_encoded_token_value_is_decoded_and_encoded_key_refused() {
    let up = echo_upstream().await;
    let gate = gate_for(up.addr).await;
    let token = jwt(json!({"sub": "hank"}));

    // The value percent-encoded (dots as %2E): decoded before verification.
    let encoded = token.replace('.', "%2E");
    let (status, head) = upgrade(&gate, &format!("/jwt?a=1&token={encoded}"), &[]).await;
    assert_eq!(status, 101, "{head}");
    let seen = up.last();
    assert_eq!(seen.uri, "/jwt?a=1");
    assert_eq!(seen.header("x-auth-user"), Some("hank"));

    // The key percent-encoded: `%74oken` decodes to `token` but is not spelt `token`; a
    // backend might read either, so it is refused before anything is judged or forwarded.
    let before = up.count();
    let (status, head) = upgrade(&gate, &format!("/jwt?%74oken={token}&b=2"), &[]).await;
    assert_eq!(status, 400, "{head}");
    assert_eq!(handshakes(&gate, "/jwt", "bad_request").await, 1.0);
    // Both spellings at once: refused the same way, never forwarded.
    let (status, _) = upgrade(&gate, &format!("/jwt?token={token}&%74oken={token}"), &[]).await;
    assert_eq!(status, 400);
    assert_eq!(up.count(), before);

    // A look-alike name is not the token and stays.
    let (status, _) = upgrade(&gate, &format!("/jwt?token={token}&tokens=keep"), &[]).await;
    assert_eq!(status, 101);
    assert_eq!(up.last().uri, "/jwt?tokens=keep");
}

/// Every credential the route understands is removed upstream, not only the one that
/// admitted: a Basic password sent next to a valid token must not reach the backend.
#[tokio::test]
async fn unused_credentials_are_stripped_too() {
    let up = echo_upstream().await;
    let gate = gate_for(up.addr).await;

    // Token admits; a (wrong) Basic password rides along.
    let token = jwt(json!({"sub": "bob"}));
    let guess = basic("alice", "guess-of-alices-password");
    let (_ws, _) = ws_connect(
        &gate.ws_url(&format!("/both?a=1&token={token}")),
        &[("Authorization", &guess)],
    )
    .await
    .expect("a valid token admits");
    let seen = up.last();
    assert_eq!(seen.all("x-auth-user"), vec!["bob".to_string()]);
    assert!(
        seen.header("authorization").is_none(),
        "the unused Basic header reached the upstream"
    );
    assert_eq!(seen.uri, "/both?a=1");

    // Basic admits; a garbage token in the query must not be forwarded either.
    let auth = basic("alice", ALICE_PW);
    let (_ws, _) = ws_connect(
        &gate.ws_url("/both?token=garbage&b=2"),
        &[("Authorization", &auth)],
    )
    .await
    .expect("Basic admits");
    let seen = up.last();
    assert_eq!(seen.all("x-auth-user"), vec!["alice".to_string()]);
    assert_eq!(seen.uri, "/both?b=2");
}
