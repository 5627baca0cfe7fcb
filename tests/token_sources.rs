//! Where a JWT is read (`auth.NAME.from`): a cookie, the `Sec-WebSocket-Protocol` header
//! (Kubernetes' `base64url.bearer.authorization.k8s.io.` convention), a custom header or
//! query parameter. End to end through a running gate to a real WebSocket upstream that
//! records what it got: the consumed credential never reaches it, everything else does
//! byte-exact, and the 101 names only a real subprotocol.

mod common;

use base64::Engine as _;
use common::*;
use serde_json::json;

const K8S: &str = "base64url.bearer.authorization.k8s.io.";

fn config(up: std::net::SocketAddr) -> String {
    format!(
        r#"
listeners:
  - bind: "127.0.0.1:0"
admin:
  bind: "127.0.0.1:0"
auth:
  cookie:
    type: jwt
    algorithms: [HS256]
    secret: "${{WSGATE_JWT_SECRET}}"
    from: [cookie: session_jwt]
  proto:
    type: jwt
    algorithms: [HS256]
    secret: "${{WSGATE_JWT_SECRET}}"
    from: [subprotocol: "{K8S}"]
  many:
    type: jwt
    algorithms: [HS256]
    secret: "${{WSGATE_JWT_SECRET}}"
    from: [query: access_token, header: X-Token, cookie: sid, header: Authorization]
routes:
  - path: /cookie
    upstream: ws://{up}
    auth: [cookie]
    origins: ["https://app.example"]
  - path: /proto
    upstream: ws://{up}
    auth: [proto]
  - path: /many
    upstream: ws://{up}
    auth: [many]
    origins: ["https://app.example"]
"#
    )
}

fn token(sub: &str) -> String {
    jwt(json!({"sub": sub, "exp": now_secs() + 300}))
}

/// A raw upgrade of `path` with extra header lines; (status, head).
async fn upgrade(gate: &Gate, path: &str, extra: &[(&str, String)]) -> (u16, String) {
    let extra: String = extra.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let (status, head, _) = http_request(gate.addr(), &upgrade_request(path, &extra)).await;
    (status, head)
}

async fn malformed(gate: &Gate, route: &str) -> f64 {
    gate.metric(&format!(
        "wsgate_auth_failures_total{{reason=\"malformed\",route=\"{route}\"}}"
    ))
    .await
}

#[tokio::test]
async fn cookie_token_admits_and_only_that_cookie_is_removed() {
    let up = echo_upstream().await;
    let gate = start_gate(Files::new(), &config(up.addr)).await;
    let cookies = format!(
        "theme=dark;  session_jwt={}; lang=en-GB; a=b=c",
        token("alice")
    );
    let (status, head) = upgrade(&gate, "/cookie", &[("Cookie", cookies)]).await;
    assert_eq!(status, 101, "{head}");
    let seen = up.last();
    assert_eq!(seen.all("cookie"), ["theme=dark; lang=en-GB; a=b=c"]);
    assert_eq!(seen.header("x-auth-user"), Some("alice"));

    // Alone: the header goes entirely.
    let (status, _) = upgrade(
        &gate,
        "/cookie",
        &[("Cookie", format!("session_jwt={}", token("bob")))],
    )
    .await;
    assert_eq!(status, 101);
    assert_eq!(up.last().all("cookie"), Vec::<String>::new());

    // No such cookie, a look-alike, a bad token, two copies.
    let (status, _) = upgrade(&gate, "/cookie", &[("Cookie", "theme=dark".into())]).await;
    assert_eq!(status, 401);
    let (status, _) = upgrade(
        &gate,
        "/cookie",
        &[("Cookie", format!("Session_JWT={}", token("a")))],
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = upgrade(
        &gate,
        "/cookie",
        &[("Cookie", "session_jwt=not.a.jwt".into())],
    )
    .await;
    assert_eq!(status, 401);
    let two = format!("session_jwt={}; session_jwt={}", token("a"), token("b"));
    let (status, _) = upgrade(&gate, "/cookie", &[("Cookie", two)]).await;
    assert_eq!(status, 401);
    // HTTP/2-style split Cookie headers are read together.
    let (status, _) = upgrade(
        &gate,
        "/cookie",
        &[
            ("Cookie", format!("session_jwt={}", token("a"))),
            ("Cookie", format!("session_jwt={}", token("b"))),
        ],
    )
    .await;
    assert_eq!(status, 401);
    // not.a.jwt, two copies, split copies.
    assert_eq!(malformed(&gate, "/cookie").await, 3.0);
    assert_eq!(up.count(), 2, "refused upgrades never reached the upstream");
}

#[tokio::test]
async fn subprotocol_token_reaches_nobody_and_the_101_names_the_real_subprotocol() {
    let up = echo_upstream().await;
    let gate = start_gate(Files::new(), &config(up.addr)).await;
    let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token("carol"));
    // The echo upstream picks the first offered subprotocol: had the token entry been
    // forwarded, it would be chosen and echoed back to the client.
    let (status, head) = upgrade(
        &gate,
        "/proto",
        &[(
            "Sec-WebSocket-Protocol",
            format!("{K8S}{enc}, chat, superchat"),
        )],
    )
    .await;
    assert_eq!(status, 101, "{head}");
    assert_eq!(
        head_header(&head, "sec-websocket-protocol").as_deref(),
        Some("chat")
    );
    let seen = up.last();
    assert_eq!(seen.all("sec-websocket-protocol"), ["chat, superchat"]);
    assert_eq!(seen.header("x-auth-user"), Some("carol"));

    // With a real client: it offered [token, chat] and speaks chat.
    let (mut ws, resp) = ws_connect(
        &gate.ws_url("/proto"),
        &[("Sec-WebSocket-Protocol", &format!("{K8S}{enc}, chat"))],
    )
    .await
    .expect("upgrade with a subprotocol token");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
    echo_roundtrip(&mut ws, "over a token-authenticated socket").await;

    // Garbage after the prefix, or no token: refused before the upstream.
    let before = up.count();
    let (status, _) = upgrade(
        &gate,
        "/proto",
        &[("Sec-WebSocket-Protocol", format!("{K8S}%%%, chat"))],
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = upgrade(
        &gate,
        "/proto",
        &[("Sec-WebSocket-Protocol", "chat".into())],
    )
    .await;
    assert_eq!(status, 401);
    // A well-formed token signed with another key is a bad signature, not malformed.
    let forged = jwt_with(
        json!({"sub": "carol"}),
        "not-the-gateway-secret-0123456789abcdef",
        jsonwebtoken::Algorithm::HS256,
    );
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged);
    let (status, _) = upgrade(
        &gate,
        "/proto",
        &[("Sec-WebSocket-Protocol", format!("{K8S}{forged}, chat"))],
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(
        gate.metric(r#"wsgate_auth_failures_total{reason="bad_signature",route="/proto"}"#)
            .await,
        1.0
    );
    assert_eq!(malformed(&gate, "/proto").await, 1.0, "only the %%% one");
    assert_eq!(up.count(), before);
}

#[tokio::test]
async fn several_sources_one_token_each_removed_and_two_tokens_refused() {
    let up = echo_upstream().await;
    let gate = start_gate(Files::new(), &config(up.addr)).await;
    let t = token("dave");
    // Each source alone admits; none of them reaches the upstream.
    let cases: Vec<(String, Vec<(&str, String)>)> = vec![
        (format!("/many?access_token={t}&x=1"), vec![]),
        ("/many?x=1".into(), vec![("X-Token", t.clone())]),
        (
            "/many?x=1".into(),
            vec![("Cookie", format!("sid={t}; keep=1"))],
        ),
        (
            "/many?x=1".into(),
            vec![("Authorization", format!("Bearer {t}"))],
        ),
    ];
    for (path, extra) in &cases {
        let (status, head) = upgrade(&gate, path, extra).await;
        assert_eq!(status, 101, "{path} {extra:?}: {head}");
        let seen = up.last();
        assert_eq!(seen.uri, "/many?x=1", "{extra:?}");
        assert_eq!(seen.header("x-token"), None);
        assert_eq!(seen.header("authorization"), None);
        assert!(
            seen.all("cookie").iter().all(|c| !c.contains("sid=")),
            "{seen:?}"
        );
        assert_eq!(seen.header("x-auth-user"), Some("dave"));
    }
    // Two places at once, even the same token: ambiguous.
    let (status, _) = upgrade(
        &gate,
        "/many",
        &[("X-Token", t.clone()), ("Cookie", format!("sid={t}"))],
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = upgrade(
        &gate,
        &format!("/many?access_token={t}"),
        &[("Authorization", format!("Bearer {t}"))],
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(malformed(&gate, "/many").await, 2.0);
    // The old default names are not sources here.
    let (status, _) = upgrade(&gate, &format!("/many?token={t}"), &[]).await;
    assert_eq!(status, 401);
}

#[test]
fn check_names_bad_sources_by_their_path() {
    let files = Files::new();
    let cfg = files.write(
        "wsgate.yaml",
        r#"
listeners:
  - bind: "127.0.0.1:0"
auth:
  j:
    type: jwt
    algorithms: [HS256]
    secret: "0123456789abcdef0123456789abcdef"
    query_param: t
    from: [cookie: "a;b", header: Cookie, {query: x, cookie: zz}, cookie: ok, cookie: ok, nosuch: z]
routes:
  - path: /
    upstream: ws://127.0.0.1:9
    auth: [j]
"#,
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["check", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for want in [
        "auth.j.query_param: set either query_param or from",
        "auth.j.from[0].cookie: \"a;b\" is not a cookie name",
        "auth.j.from[1].header: cookie cannot carry a token (use cookie: NAME)",
        "auth.j.from[2]: each source is one of",
        "auth.j.from[4]: this source is listed twice",
        "auth.j.from[5]",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(want)),
            "missing {want:?} in:\n{text}"
        );
    }
}

#[test]
fn check_warns_about_cookie_routes_without_origins() {
    let files = Files::new();
    let cfg = files.write(
        "wsgate.yaml",
        &config("127.0.0.1:9".parse().unwrap())
            .replace("${WSGATE_JWT_SECRET}", "0123456789abcdef0123456789abcdef"),
    );
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
            .args(["check", "--config"])
            .arg(&cfg)
            .output()
            .unwrap()
    };
    let out = run();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning"),
        "routes with origins"
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replacen("    origins: [\"https://app.example\"]\n", "", 1),
    )
    .unwrap();
    let out = run();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.lines().any(|l| l.starts_with(
            "warning: routes[0].origins: route /cookie reads its token from a cookie"
        )),
        "{err}"
    );
}
