//! `max_token_age` on a JWT authenticator, end to end: `iat` becomes required and a token
//! issued longer ago than the limit (plus leeway) is refused even though `exp` is far off.

mod common;

use common::*;
use serde_json::json;

const CONFIG: &str = r#"
listeners:
  - bind: "127.0.0.1:0"
admin:
  bind: "127.0.0.1:0"
auth:
  jwt:
    type: jwt
    algorithms: [HS256]
    secret: "${WSGATE_JWT_SECRET}"
    leeway: 5s
    max_token_age: 60s
  plain:
    type: jwt
    algorithms: [HS256]
    secret: "${WSGATE_JWT_SECRET}"
    leeway: 5s
routes:
  - path: /aged
    upstream: ws://{up}
    auth: [jwt]
  - path: /plain
    upstream: ws://{up}
    auth: [plain]
limits:
  handshake_rate_per_ip: 0
  max_connections_per_ip: 0
"#;

async fn status(gate: &Gate, target: &str) -> u16 {
    http_request(gate.addr(), &upgrade_request(target, ""))
        .await
        .0
}

async fn failures(gate: &Gate, reason: &str) -> f64 {
    gate.metric(&format!(
        "wsgate_auth_failures_total{{reason=\"{reason}\",route=\"/aged\"}}"
    ))
    .await
}

#[tokio::test]
async fn max_token_age_requires_a_recent_iat() {
    let up = echo_upstream().await;
    let gate = start_gate(Files::new(), &CONFIG.replace("{up}", &up.addr.to_string())).await;
    let now = now_secs();
    let exp = now + 3600;

    // Fresh, and just inside limit + leeway: admitted.
    for iat in [now, now - 63] {
        let t = jwt(json!({"iat": iat, "exp": exp}));
        assert_eq!(
            status(&gate, &format!("/aged?token={t}")).await,
            101,
            "iat {iat}"
        );
    }
    // Issued too long ago, though `exp` is an hour away: expired.
    let old = jwt(json!({"iat": now - 120, "exp": exp}));
    assert_eq!(status(&gate, &format!("/aged?token={old}")).await, 401);
    assert_eq!(failures(&gate, "expired").await, 1.0);
    // No `iat` at all, or not a number: the age cannot be judged.
    let no_iat = jwt(json!({"exp": exp}));
    assert_eq!(status(&gate, &format!("/aged?token={no_iat}")).await, 401);
    let text_iat = jwt(json!({"iat": "yesterday", "exp": exp}));
    assert_eq!(status(&gate, &format!("/aged?token={text_iat}")).await, 401);
    assert_eq!(failures(&gate, "bad_claims").await, 2.0);
    // Issued in the future (beyond the leeway): the age would never grow, so not yet valid.
    let future = jwt(json!({"iat": now + 600, "exp": exp}));
    assert_eq!(status(&gate, &format!("/aged?token={future}")).await, 401);
    assert_eq!(failures(&gate, "not_yet_valid").await, 1.0);
    assert_eq!(up.count(), 2);

    // Without the key nothing changes: old or missing `iat` is fine while `exp` holds.
    for t in [old, no_iat] {
        assert_eq!(status(&gate, &format!("/plain?token={t}")).await, 101);
    }
}
