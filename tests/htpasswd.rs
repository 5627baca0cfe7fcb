//! nginx-era htpasswd files made by Apache's own `htpasswd` (Debian `apache2-utils`): apr1
//! (its default), `{SHA}` and bcrypt lines all admit their users through a running gate,
//! wrong passwords are refused, `wsgate check` names every weak-hash user without printing the
//! hash, and crypt(3) DES lines are refused with a message saying why.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_wsgate");

/// Runs Apache's `htpasswd -b` (password on the command line: test-only) in `mode`.
fn apache_htpasswd(file: &Path, create: bool, mode: &str, user: &str, password: &str) {
    let mut cmd = Command::new("htpasswd");
    cmd.arg(if create { "-cb" } else { "-b" });
    if !mode.is_empty() {
        cmd.arg(mode);
    }
    if mode == "-B" {
        // The cheapest cost keeps the test fast; the hash format is the same.
        cmd.args(["-C", "4"]);
    }
    let out = cmd.arg(file).arg(user).arg(password).output().unwrap();
    assert!(
        out.status.success(),
        "htpasswd {mode} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A file with one user per scheme: `apr` (default mode, apr1), `sha` (`-s`), `bc` (`-B`).
fn apache_file(files: &Files) -> std::path::PathBuf {
    let file = files.path("users.htpasswd");
    apache_htpasswd(&file, true, "", "apr", "apr-secret");
    apache_htpasswd(&file, false, "-s", "sha", "sha-secret");
    apache_htpasswd(&file, false, "-B", "bc", "bc-secret");
    let text = std::fs::read_to_string(&file).unwrap();
    // The file really holds the three schemes, or this test proves nothing.
    assert!(text.contains("apr:$apr1$"), "{text}");
    assert!(text.contains("sha:{SHA}"), "{text}");
    assert!(text.contains("bc:$2y$04$"), "{text}");
    file
}

fn config(up: std::net::SocketAddr) -> String {
    format!(
        r#"
listeners:
  - bind: "127.0.0.1:0"
admin:
  bind: "127.0.0.1:0"
auth:
  users:
    type: basic
    htpasswd: "{{dir}}/users.htpasswd"
    cache_ttl: 0s
routes:
  - path: /ws
    upstream: ws://{up}
    auth: [users]
    origins: ["https://app.example"]
"#
    )
}

#[tokio::test]
async fn apache_htpasswd_apr1_sha_and_bcrypt_users_are_admitted() {
    if !tools_available(
        "apache_htpasswd_apr1_sha_and_bcrypt_users_are_admitted",
        &[Tool::Program("htpasswd")],
    ) {
        return;
    }
    let up = echo_upstream().await;
    let files = Files::new();
    apache_file(&files);
    let gate = start_gate(files, &config(up.addr)).await;
    for (user, password) in [
        ("apr", "apr-secret"),
        ("sha", "sha-secret"),
        ("bc", "bc-secret"),
    ] {
        let auth = basic(user, password);
        let (status, head, _) = http_request(
            gate.addr(),
            &upgrade_request("/ws", &format!("Authorization: {auth}\r\n")),
        )
        .await;
        assert_eq!(status, 101, "{user} with the right password: {head}");
        for wrong in [
            format!("{password}x"),
            password[..password.len() - 1].to_owned(),
            String::new(),
            "apr-secret".replace("apr", "APR"),
        ] {
            let auth = basic(user, &wrong);
            let (status, head, _) = http_request(
                gate.addr(),
                &upgrade_request("/ws", &format!("Authorization: {auth}\r\n")),
            )
            .await;
            assert_eq!(status, 401, "{user} with {wrong:?}: {head}");
        }
    }
    // Another user's password never opens a weak-hash account.
    let auth = basic("sha", "apr-secret");
    let (status, _, _) = http_request(
        gate.addr(),
        &upgrade_request("/ws", &format!("Authorization: {auth}\r\n")),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(
        gate.metric(r#"wsgate_auth_failures_total{reason="bad_credentials",route="/ws"}"#)
            .await,
        13.0
    );
}

fn check(files: &Files) -> std::process::Output {
    let cfg = files.write(
        "wsgate.yaml",
        &config("127.0.0.1:9".parse().unwrap())
            .replace("{dir}", &files.dir.path().display().to_string()),
    );
    Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(cfg)
        .output()
        .unwrap()
}

#[test]
fn check_names_each_weak_hash_user_without_the_hash() {
    if !tools_available(
        "check_names_each_weak_hash_user_without_the_hash",
        &[Tool::Program("htpasswd")],
    ) {
        return;
    }
    let files = Files::new();
    let file = apache_file(&files);
    let out = check(&files);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(stdout.trim(), "ok");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning: auth.users.htpasswd: "))
        .collect();
    assert_eq!(warnings.len(), 2, "one per weak user:\n{stderr}");
    assert!(
        warnings[0].contains("line 1: user \"apr\" has a weak $apr1$")
            && warnings[0].contains("wsgate hash-password"),
        "{stderr}"
    );
    assert!(
        warnings[1].contains("line 2: user \"sha\" has a weak {SHA}"),
        "{stderr}"
    );
    assert!(!stderr.contains("\"bc\""), "bcrypt is not weak:\n{stderr}");
    // No hash, not even its salt, reaches the output.
    let text = std::fs::read_to_string(&file).unwrap();
    for line in text.lines() {
        let hash = line.split_once(':').unwrap().1;
        let secret_part = hash.rsplit('$').next().unwrap().trim_start_matches("{SHA}");
        assert!(!stderr.contains(secret_part), "hash leaked:\n{stderr}");
    }
}

#[test]
fn check_refuses_des_crypt_lines_with_the_reason() {
    let files = Files::new();
    // `htpasswd -d` (crypt) output for "password" with salt "ab".
    files.write("users.htpasswd", "old:abJnggxhB/yWI\n");
    let out = check(&files);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_ne!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("auth.users.htpasswd")
            && stdout.contains("line 1: user \"old\": crypt(3) DES hashes are refused")
            && stdout.contains("first 8"),
        "{stdout}"
    );
    assert!(!stdout.contains("abJngg"), "hash leaked: {stdout}");
}
