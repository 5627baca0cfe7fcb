//! Basic passwords against bcrypt's 72-byte limit, end to end: bcrypt reads only the first
//! 72 bytes, so a longer password is refused rather than checked on a prefix.

mod common;

use common::*;

#[tokio::test]
async fn bcrypt_password_longer_than_72_bytes_is_refused() {
    let up = echo_upstream().await;
    let files = Files::new();
    let pw72 = "correct horse battery staple ".repeat(3)[..72].to_string();
    files.write(
        "users.htpasswd",
        &format!("{}\n", htpasswd_line("alice", &pw72)),
    );
    let yaml = format!(
        "listeners:\n  - bind: \"127.0.0.1:0\"\nadmin:\n  bind: \"127.0.0.1:0\"\nauth:\n  users:\n    type: basic\n    htpasswd: \"{{dir}}/users.htpasswd\"\n    cache_ttl: 0s\nroutes:\n  - path: /ws\n    upstream: ws://{}\n    auth: [users]\nlimits:\n  handshake_rate_per_ip: 0\n",
        up.addr
    );
    let gate = start_gate(files, &yaml).await;
    let send = |pw: String| {
        let req = upgrade_request(
            "/ws",
            &format!("Authorization: {}\r\n", basic("alice", &pw)),
        );
        let addr = gate.addr();
        async move { http_request(addr, &req).await.0 }
    };
    assert_eq!(send(pw72.clone()).await, 101, "all 72 bytes are checked");
    assert_eq!(send(format!("{pw72}!")).await, 401, "73 bytes: refused");
    assert_eq!(send(format!("{pw72}{pw72}")).await, 401);
    assert_eq!(send(pw72[..71].to_string()).await, 401);
    assert_eq!(
        gate.metric("wsgate_auth_failures_total{reason=\"bad_credentials\",route=\"/ws\"}")
            .await,
        3.0
    );
    assert_eq!(up.count(), 1);
}
