//! A credential read from the query must be the only token-ish parameter that could reach
//! the upstream: look-alike keys (`TOKEN`, `token[]`, `%74oken`, …), `;` separators and a
//! repeated credential parameter are refused with 400 before any credential is judged.
//! Every case is the attacker's exact request bytes on a real socket.

mod common;

use std::net::SocketAddr;

use common::*;
use serde_json::json;

const CONFIG: &str = r#"
listeners:
  - bind: "127.0.0.1:0"
admin:
  bind: "127.0.0.1:0"
auth:
  users:
    type: basic
    htpasswd: "{dir}/users.htpasswd"
  jwt:
    type: jwt
    query_param: token
    algorithms: [HS256]
    secret: "${WSGATE_JWT_SECRET}"
routes:
  - path: /open
    upstream: ws://{up}
  - path: /basic
    upstream: ws://{up}
    auth: [users]
  - path: /jwt
    upstream: ws://{up}
    auth: [jwt]
  - path: /both
    upstream: ws://{up}
    auth: [users, jwt]
limits:
  handshake_rate_per_ip: 0
  max_connections_per_ip: 0
"#;

async fn gate_for(up: SocketAddr) -> Gate {
    let files = Files::new();
    files.write(
        "users.htpasswd",
        &format!("{}\n", htpasswd_line("alice", "wonderland")),
    );
    start_gate(files, &CONFIG.replace("{up}", &up.to_string())).await
}

/// The attacker's queries; `{t}` is a valid token for alice.
const ATTACKS: &[&str] = &[
    "token={t}&x=1;token=FORGED",
    "x=1;token=FORGED&token={t}",
    "token={t};x=1",
    "token={t}&token[]=FORGED",
    "token={t}&token[0]=FORGED",
    "token={t}&token%5B%5D=FORGED",
    "token={t}&TOKEN=FORGED",
    "token={t}&Token=FORGED",
    "token={t}&%74oken=FORGED",
    "token={t}&%54OKEN=FORGED",
    "token={t}&%2574oken=FORGED",
    "token={t}&+token=FORGED",
    "token={t}&token.x=FORGED",
    "token={t}&token=FORGED",
    "token=FORGED&token={t}",
    "%74oken={t}",
    "TOKEN={t}",
];

#[tokio::test]
async fn look_alike_and_smuggled_credential_params_are_400_and_never_forwarded() {
    let up = echo_upstream().await;
    let gate = gate_for(up.addr).await;
    let t = jwt(json!({"sub": "alice"}));
    let auth = basic("alice", "wonderland");
    for route in ["/jwt", "/both"] {
        for attack in ATTACKS {
            let target = format!("{route}?{}", attack.replace("{t}", &t));
            // Upgrade, as a bare token holder.
            let (status, head, body) =
                http_request(gate.addr(), &upgrade_request(&target, "")).await;
            assert_eq!(status, 400, "upgrade {target}\n{head}\n{body}");
            // Upgrade with valid Basic credentials next to the query.
            let (status, head, _) = http_request(
                gate.addr(),
                &upgrade_request(&target, &format!("Authorization: {auth}\r\n")),
            )
            .await;
            if route == "/both" {
                assert_eq!(status, 400, "upgrade+basic {target}\n{head}");
            }
            // Plain HTTP on the same route.
            let (status, head, _) = http_request(
                gate.addr(),
                &format!("GET {target} HTTP/1.1\r\nHost: gate.test\r\nConnection: close\r\n\r\n"),
            )
            .await;
            assert_eq!(status, 400, "plain {target}\n{head}");
        }
    }
    let seen = up.seen.lock().unwrap().clone();
    assert!(
        seen.is_empty(),
        "the upstream saw requests it should not have: {:?}",
        seen.iter().map(|s| &s.uri).collect::<Vec<_>>()
    );
    assert!(
        gate.metric("wsgate_handshakes_total{outcome=\"bad_request\",route=\"/jwt\"}")
            .await
            >= ATTACKS.len() as f64
    );
}

#[tokio::test]
async fn a_clean_query_still_works_and_the_upstream_sees_no_token() {
    let up = echo_upstream().await;
    let gate = gate_for(up.addr).await;
    let t = jwt(json!({"sub": "alice"}));
    for target in [
        format!("/jwt?token={t}&x=1&tokens=2&mytoken=3"),
        format!("/both?a=%3B&token={t}"),
    ] {
        let (status, head, _) = http_request(gate.addr(), &upgrade_request(&target, "")).await;
        assert_eq!(status, 101, "{target}\n{head}");
    }
    let uris: Vec<String> = up
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.uri.clone())
        .collect();
    assert_eq!(uris, vec!["/jwt?x=1&tokens=2&mytoken=3", "/both?a=%3B"]);
    assert!(!uris.iter().any(|u| u.contains(&t)));

    // Routes without a query credential keep their queries as they are, `;` included.
    let (status, _, _) =
        http_request(gate.addr(), &upgrade_request("/open?a=1;b=2&TOKEN=x", "")).await;
    assert_eq!(status, 101);
    let auth = basic("alice", "wonderland");
    let (status, _, _) = http_request(
        gate.addr(),
        &upgrade_request("/basic?a=1;b=2", &format!("Authorization: {auth}\r\n")),
    )
    .await;
    assert_eq!(status, 101);
    let uris: Vec<String> = up
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.uri.clone())
        .collect();
    assert_eq!(&uris[2..], ["/open?a=1;b=2&TOKEN=x", "/basic?a=1;b=2"]);
}
