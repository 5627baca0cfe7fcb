//! `secret_file` / `token_file`: secrets read from files (Docker and Kubernetes secrets), with
//! one trailing newline trimmed, through a running gate, and re-read on reload.

mod common;

use common::*;
use jsonwebtoken::Algorithm::HS256;
use serde_json::json;

const SECRET: &str = "file-secret-0123456789abcdef-0123456789";
const ROTATED: &str = "rotated-secret-0123456789abcdef-012345";
const ADMIN_TOKEN: &str = "admin-token-from-a-file-0123456789";

const CONFIG: &str = r#"
listeners:
  - bind: "127.0.0.1:0"
admin:
  bind: "127.0.0.1:0"
  token_file: admin.token
auth:
  jwt:
    type: jwt
    algorithms: [HS256]
    secret_file: jwt.secret
routes:
  - path: /jwt
    upstream: ws://{up}
    auth: [jwt]
"#;

async fn gate(files: Files, up: std::net::SocketAddr) -> Gate {
    let yaml = CONFIG.replace("{up}", &up.to_string());
    files.write("gate.yaml", &yaml);
    start_gate(files, &yaml).await
}

async fn upgrade_status(gate: &Gate, secret: &str) -> u16 {
    let token = jwt_with(json!({"sub": "alice"}), secret, HS256);
    match ws_connect(&gate.ws_url(&format!("/jwt?token={token}")), &[]).await {
        Ok((_ws, resp)) => resp.status().as_u16(),
        Err(e) => refused_status(e),
    }
}

#[tokio::test]
async fn jwt_secret_file_trailing_newline_is_not_part_of_the_secret() {
    let up = echo_upstream().await;
    let files = Files::new();
    // What `echo "$SECRET" > jwt.secret` or a Kubernetes secret from a file gives.
    files.write("jwt.secret", &format!("{SECRET}\n"));
    files.write("admin.token", &format!("{ADMIN_TOKEN}\n"));
    let gate = gate(files, up.addr).await;
    assert_eq!(upgrade_status(&gate, SECRET).await, 101);
    assert_eq!(up.last().header("x-auth-user"), Some("alice"));
    assert_eq!(upgrade_status(&gate, &format!("{SECRET}\n")).await, 401);
}

#[tokio::test]
async fn reload_rereads_the_secret_file() {
    let up = echo_upstream().await;
    let files = Files::new();
    files.write("jwt.secret", SECRET);
    files.write("admin.token", ADMIN_TOKEN);
    let gate = gate(files, up.addr).await;
    assert_eq!(upgrade_status(&gate, SECRET).await, 101);
    gate.files.write("jwt.secret", &format!("{ROTATED}\n"));
    gate.reloader
        .reload_from(&gate.files.path("gate.yaml"))
        .expect("reload with the rotated secret");
    assert_eq!(upgrade_status(&gate, ROTATED).await, 101);
    assert_eq!(upgrade_status(&gate, SECRET).await, 401);
    // An emptied secret file is refused and the running secret stays in force.
    gate.files.write("jwt.secret", "\n");
    let err = gate
        .reloader
        .reload_from(&gate.files.path("gate.yaml"))
        .expect_err("an empty secret file must be refused");
    assert!(err.to_string().contains("auth.jwt.secret_file"), "{err}");
    assert!(err.to_string().contains("is empty"), "{err}");
    assert_eq!(upgrade_status(&gate, ROTATED).await, 101);
}

#[tokio::test]
async fn admin_token_file_guards_mutating_calls() {
    let up = echo_upstream().await;
    let files = Files::new();
    files.write("jwt.secret", SECRET);
    files.write("admin.token", &format!("{ADMIN_TOKEN}\n"));
    let gate = gate(files, up.addr).await;
    let admin = gate.admin.expect("admin listener");
    let post = |auth: &str| {
        format!(
            "POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
    };
    let (status, head, _) = http_request(admin, &post("")).await;
    assert_eq!(status, 401, "no token: {head}");
    let (status, head, _) = http_request(
        admin,
        &post(&format!("Authorization: Bearer {ADMIN_TOKEN}\r\n")),
    )
    .await;
    assert_ne!(status, 401, "token from the file: {head}");
}
