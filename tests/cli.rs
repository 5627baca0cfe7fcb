//! The `wsgate` binary: `check`, `hash-password`, `--version`/`--help`, config errors at
//! start-up (exit 64, nothing bound), `WSGATE_CONFIG`, SIGTERM drain, SIGHUP reload and
//! JSON logs. Every test runs the real executable.
// Real processes and sockets: deadlines here are wall-clock on purpose.
#![allow(clippy::disallowed_types)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_wsgate");

/// A `wsgate` command with a clean, predictable environment, run in `dir`.
fn wsgate(dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(dir)
        .env_remove("WSGATE_CONFIG")
        .env("RUST_LOG", "info")
        .env("WSGATE_JWT_SECRET", JWT_SECRET)
        .stdin(Stdio::null());
    c
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run wsgate")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn can_bind(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A running `wsgate` process; killed (and reaped) on drop, even when the test fails.
struct Proc {
    child: std::process::Child,
    stderr: PathBuf,
}

impl Proc {
    fn spawn(dir: &Path, args: &[&str], rust_log: &str) -> Proc {
        let stderr = dir.join(format!("stderr-{}.log", std::process::id() ^ rand_suffix()));
        let file = std::fs::File::create(&stderr).unwrap();
        let child = wsgate(dir)
            .args(args)
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("spawn wsgate");
        Proc { child, stderr }
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Polls until the process exits or `limit` passes.
    async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Waits until `/healthz` on `admin` answers 200; panics with the log if the process dies.
    async fn wait_healthy(&mut self, admin: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                panic!("wsgate exited early ({s}):\n{}", self.log());
            }
            if let Some((200, _)) = get(admin, "/healthz").await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("wsgate never became healthy:\n{}", self.log());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(2_654_435_761)
}

/// `GET path` on `addr`; `None` if nothing answers.
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let (status, _, body) = read_response(&mut s).await;
    (status != 0).then_some((status, body))
}

async fn metric_at(admin: SocketAddr, series: &str) -> f64 {
    let (_, body) = get(admin, "/metrics").await.expect("metrics");
    metric_value(&body, series)
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A serve-mode config: an open route `/a` to `up`, plus `extra` YAML appended to `routes:`.
fn serve_yaml(listen: u16, admin: u16, up: SocketAddr, drain: &str, extra_routes: &str) -> String {
    format!(
        r#"listeners:
  - bind: "127.0.0.1:{listen}"
admin:
  bind: "127.0.0.1:{admin}"
auth:
  jwt:
    type: jwt
    algorithms: [HS256]
    secret: "${{WSGATE_JWT_SECRET}}"
routes:
  - path: /a
    upstream: ws://{up}
{extra_routes}shutdown:
  drain_timeout: {drain}
"#
    )
}

// ---------------------------------------------------------------------------------------
// check
// ---------------------------------------------------------------------------------------

/// A valid config using every kind of file: TLS cert/key, htpasswd, JWT secret from env.
fn good_config(files: &Files) -> PathBuf {
    files.cert("tls");
    files.write("users.htpasswd", &htpasswd_line("alice", "pw"));
    files.write(
        "good.yaml",
        r#"listeners:
  - bind: "127.0.0.1:0"
  - bind: "127.0.0.1:0"
    tls:
      cert: tls.crt
      key: tls.key
admin:
  bind: "127.0.0.1:0"
auth:
  users:
    type: basic
    realm: wsgate
    htpasswd: users.htpasswd
  jwt:
    type: jwt
    algorithms: [HS256]
    secret: "${WSGATE_JWT_SECRET}"
    leeway: 30s
routes:
  - path: /open
    upstream: ws://127.0.0.1:3000
  - path: /ws
    upstream: ws://127.0.0.1:3000
    auth: [users, jwt]
shutdown:
  drain_timeout: 5s
"#,
    )
}

#[test]
fn check_good_config_prints_ok() {
    let files = Files::new();
    let cfg = good_config(&files);
    let out = run(wsgate(files.dir.path())
        .arg("check")
        .arg("--config")
        .arg(&cfg));
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(stdout(&out).trim(), "ok");
}

#[test]
fn check_warns_about_basic_routes_without_origins() {
    let files = Files::new();
    let cfg = good_config(&files);
    let out = run(wsgate(files.dir.path())
        .arg("check")
        .arg("--config")
        .arg(&cfg));
    assert_eq!(out.status.code(), Some(0), "a warning is not an error");
    assert_eq!(stdout(&out).trim(), "ok");
    let err = stderr(&out);
    assert!(
        err.lines()
            .any(|l| l.starts_with("warning: routes[1].origins: ")
                && l.contains("Basic")
                && l.contains("cross-site WebSocket hijacking")),
        "no origins warning for the Basic route /ws:\n{err}"
    );
    assert!(
        !err.contains("routes[0]"),
        "the open route needs no origins:\n{err}"
    );
    // With an origins list the warning goes away.
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "    auth: [users, jwt]\n",
        "    auth: [users, jwt]\n    origins: [\"https://app.example\"]\n",
    );
    files.write("good.yaml", &text);
    let out = run(wsgate(files.dir.path())
        .arg("check")
        .arg("--config")
        .arg(&cfg));
    assert_eq!(out.status.code(), Some(0));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
}

#[test]
fn shipped_config_checks_without_warnings() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = run(wsgate(repo)
        .arg("check")
        .arg("--config")
        .arg(repo.join("config.yaml"))
        .env("WSGATE_JWT_SECRET", "dev-only-secret-0123456789abcdef-0123"));
    assert_eq!(
        (out.status.code(), stdout(&out).trim().to_string()),
        (Some(0), "ok".to_string()),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
}

#[test]
fn check_binds_nothing() {
    // A listener on a port we hold: `check` does not try to bind it.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let files = Files::new();
    let cfg = files.write(
        "c.yaml",
        &format!(
            "listeners:\n  - bind: \"127.0.0.1:{port}\"\nroutes:\n  - path: /\n    upstream: ws://127.0.0.1:3000\n"
        ),
    );
    let out = run(wsgate(files.dir.path())
        .args(["check", "--config"])
        .arg(&cfg));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(stdout(&out).trim(), "ok");
}

/// Asserts that each line of `out` starts with a YAML path and that each of `paths` has one.
#[track_caller]
fn assert_problems(out: &str, paths: &[&str]) {
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no problems printed");
    for l in &lines {
        let (path, msg) = l
            .split_once(": ")
            .unwrap_or_else(|| panic!("line without a YAML path: {l:?}\n{out}"));
        assert!(
            !path.is_empty()
                && !path.contains(' ')
                && path
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.[]".contains(c)),
            "line does not start with a YAML path: {l:?}"
        );
        assert!(!msg.trim().is_empty(), "empty message: {l:?}");
    }
    for p in paths {
        let prefix = format!("{p}: ");
        assert!(
            lines.iter().any(|l| l.starts_with(&prefix)),
            "no problem reported at {p} in:\n{out}"
        );
    }
}

#[test]
fn check_reports_every_config_problem_in_one_run() {
    let files = Files::new();
    let cfg = files.write(
        "bad.yaml",
        r#"listeners:
  - bind: "127.0.0.1:0"
    bogus: 1
auth:
  jwt:
    type: jwt
    algorithms: [none]
    secret: "${WSGATE_TEST_SURELY_UNSET_VAR}"
  ldap:
    type: ldap
routes:
  - path: /a
    upstream: ftp://127.0.0.1:21
  - path: /b
    upstream: ws://127.0.0.1:3000
    auth: [nosuch]
colour: blue
"#,
    );
    let out = run(wsgate(files.dir.path())
        .env_remove("WSGATE_TEST_SURELY_UNSET_VAR")
        .args(["check", "--config"])
        .arg(&cfg));
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{text}\nstderr:\n{}",
        stderr(&out)
    );
    assert_problems(
        &text,
        &[
            "listeners[0].bogus",
            "colour",
            "routes[0].upstream",
            "routes[1].auth[0]",
            "auth.ldap.type",
            "auth.jwt.algorithms[0]",
            "auth.jwt.secret",
        ],
    );
    assert!(text.contains("WSGATE_TEST_SURELY_UNSET_VAR"), "{text}");
    assert!(text.contains("nosuch"), "{text}");
    assert!(!text.lines().any(|l| l.trim() == "ok"), "{text}");
}

/// Issue 8 item 10: a short HMAC secret (the old README's dev value) and `auth: []` are
/// config errors, each on its own line with its YAML path; the secret is never printed.
#[test]
fn check_refuses_a_short_hmac_secret_and_an_empty_auth_list() {
    let files = Files::new();
    let cfg = files.write(
        "short.yaml",
        r#"listeners:
  - bind: "127.0.0.1:0"
auth:
  jwt:
    type: jwt
    algorithms: [HS256]
    secret: "${WSGATE_JWT_SECRET}"
routes:
  - path: /a
    upstream: ws://127.0.0.1:3000
    auth: []
  - path: /b
    upstream: ws://127.0.0.1:3000
    auth: [jwt]
"#,
    );
    let out = run(wsgate(files.dir.path())
        .env("WSGATE_JWT_SECRET", "dev-only-secret")
        .args(["check", "--config"])
        .arg(&cfg));
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "stdout:\n{text}");
    assert_problems(&text, &["auth.jwt.secret", "routes[0].auth"]);
    assert!(text.contains("at least 32 bytes"), "{text}");
    assert!(text.contains("omit the key for an open route"), "{text}");
    assert!(!text.contains("dev-only-secret"), "{text}");
}

#[test]
fn check_reports_every_file_problem_in_one_run() {
    let files = Files::new();
    // Two different keys: a's certificate with b's key.
    files.cert("a");
    files.cert("b");
    // An RSA-family authenticator whose public key file does not exist.
    let cfg = files.write(
        "files.yaml",
        r#"listeners:
  - bind: "127.0.0.1:0"
  - bind: "127.0.0.1:0"
    tls:
      cert: a.crt
      key: b.key
auth:
  users:
    type: basic
    htpasswd: missing.htpasswd
  rsa:
    type: jwt
    algorithms: [RS256]
    public_key: missing.pem
routes:
  - path: /a
    upstream: ws://127.0.0.1:3000
    auth: [users, rsa]
"#,
    );
    let out = run(wsgate(files.dir.path())
        .args(["check", "--config"])
        .arg(&cfg));
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{text}\nstderr:\n{}",
        stderr(&out)
    );
    assert_problems(
        &text,
        &[
            "listeners[1].tls.key",
            "auth.users.htpasswd",
            "auth.rsa.public_key",
        ],
    );
    assert!(text.contains("missing.htpasswd"), "{text}");
    // Key material is never echoed.
    assert!(!text.contains("PRIVATE KEY"), "{text}");
}

// ---------------------------------------------------------------------------------------
// serve: config errors, WSGATE_CONFIG
// ---------------------------------------------------------------------------------------

#[test]
fn serve_with_bad_config_exits_64_without_binding() {
    let files = Files::new();
    let (listen, admin) = (free_port(), free_port());
    let cfg = files.write(
        "bad.yaml",
        &format!(
            "listeners:\n  - bind: \"127.0.0.1:{listen}\"\nadmin:\n  bind: \"127.0.0.1:{admin}\"\nroutes:\n  - path: /a\n    upstream: ws://127.0.0.1:3000\n    extra: 1\n"
        ),
    );
    let start = Instant::now();
    let out = run(wsgate(files.dir.path()).arg("--config").arg(&cfg));
    assert_eq!(out.status.code(), Some(64), "stderr:\n{}", stderr(&out));
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(stderr(&out).contains("routes[0].extra"), "{}", stderr(&out));
    assert!(can_bind(listen), "listener port still bound");
    assert!(can_bind(admin), "admin port still bound");
}

#[test]
fn serve_checks_files_before_binding() {
    // We hold the listener port: had wsgate bound first, it would fail with a bind error
    // (exit 1); the missing htpasswd file must be found first (exit 64).
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let files = Files::new();
    let cfg = files.write(
        "bad.yaml",
        &format!(
            "listeners:\n  - bind: \"127.0.0.1:{port}\"\nauth:\n  users:\n    type: basic\n    htpasswd: nope.htpasswd\nroutes:\n  - path: /a\n    upstream: ws://127.0.0.1:3000\n    auth: [users]\n"
        ),
    );
    let out = run(wsgate(files.dir.path()).arg("--config").arg(&cfg));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(64), "stderr:\n{err}");
    assert!(err.contains("auth.users.htpasswd"), "{err}");
    assert!(!err.contains("cannot bind"), "{err}");
}

#[test]
fn wsgate_config_env_is_honoured() {
    let files = Files::new();
    let good = good_config(&files);
    let bad = files.write("bad.yaml", "listeners: []\nroutes: []\nwhat: 1\n");
    // The working directory has no config.yaml, so only the variable can point at `good`.
    let empty = tempfile::tempdir().unwrap();
    let out = run(wsgate(empty.path())
        .arg("check")
        .env("WSGATE_CONFIG", &good));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(stdout(&out).trim(), "ok");

    let out = run(wsgate(empty.path()).arg("check").env("WSGATE_CONFIG", &bad));
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("what: "), "{}", stdout(&out));

    // Serve mode too: the bad file is the one read (exit 64, its problems reported).
    let out = run(wsgate(empty.path()).env("WSGATE_CONFIG", &bad));
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("what: "), "{}", stderr(&out));

    // --config wins over the variable.
    let out = run(wsgate(empty.path())
        .args(["check", "--config"])
        .arg(&good)
        .env("WSGATE_CONFIG", &bad));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));

    // Neither: config.yaml in the working directory, which does not exist here.
    let out = run(wsgate(empty.path()).arg("check"));
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("config.yaml"), "{}", stdout(&out));
}

// ---------------------------------------------------------------------------------------
// hash-password, --version, --help
// ---------------------------------------------------------------------------------------

fn hash_password(args: &[&str], stdin: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut child = wsgate(dir.path())
        .arg("hash-password")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        // Dropped at the end of the block, which closes stdin.
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

#[test]
fn hash_password_bcrypt() {
    let out = hash_password(&["alice"], "secret\n");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let line = text.trim_end();
    assert_eq!(line.lines().count(), 1, "{text}");
    let hash = line
        .strip_prefix("alice:")
        .unwrap_or_else(|| panic!("{line}"));
    assert!(hash.starts_with("$2y$"), "{hash}");
    assert!(bcrypt::verify("secret", hash).unwrap());
    assert!(!bcrypt::verify("secret\n", hash).unwrap());
    // The password never appears in the output.
    assert!(!text.contains("secret") && !stderr(&out).contains("secret"));
}

#[test]
fn hash_password_argon2id_without_user() {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    let out = hash_password(&["--argon2"], "secret\r\n");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let hash = text.trim_end();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let parsed = PasswordHash::new(hash).unwrap();
    let argon = argon2::Argon2::default();
    assert!(argon.verify_password(b"secret", &parsed).is_ok());
    assert!(argon.verify_password(b"secret\r", &parsed).is_err());
    assert!(argon.verify_password(b"secret\r\n", &parsed).is_err());

    let out = hash_password(&["--argon2", "bob"], "pw\n");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("bob:$argon2id$"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn hash_password_refuses_empty_password_and_bad_user() {
    for input in ["\n", "", "\r\n"] {
        let out = hash_password(&["alice"], input);
        assert!(!out.status.success(), "empty password {input:?} accepted");
        assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    }
    let out = hash_password(&["al:ice"], "secret\n");
    assert!(!out.status.success());
    assert!(stdout(&out).is_empty());
}

#[test]
fn token_signs_for_the_configured_secret_and_refuses_what_it_cannot_sign() {
    let files = Files::new();
    let cfg = good_config(&files);
    let token = |args: &[&str]| {
        run(wsgate(files.dir.path())
            .arg("token")
            .arg("--config")
            .arg(&cfg)
            .args(args))
    };
    let out = token(&[
        "--sub",
        "alice",
        "--ttl",
        "10m",
        "--claim",
        "role=admin",
        "--claim",
        "n=3",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let jwt = stdout(&out).trim().to_string();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        &jwt,
        &jsonwebtoken::DecodingKey::from_secret(JWT_SECRET.as_bytes()),
        &validation,
    )
    .unwrap_or_else(|e| panic!("token {jwt:?} does not verify with the config's secret: {e}"))
    .claims;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["role"], "admin");
    assert_eq!(claims["n"], 3);
    let ttl = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(ttl, 600);

    for (args, why) in [
        (
            &["--sub", "a", "--auth", "users"][..],
            "not a jwt authenticator",
        ),
        (
            &["--sub", "a", "--auth", "nope"][..],
            "no authenticator named",
        ),
        (
            &["--sub", "a", "--claim", "exp=1"][..],
            "set by the command",
        ),
        (
            &["--sub", "a", "--claim", "novalue"][..],
            "expected key=value",
        ),
    ] {
        let out = token(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stdout(&out));
        assert!(stderr(&out).contains(why), "{args:?}: {}", stderr(&out));
        assert!(stdout(&out).is_empty(), "{args:?} printed a token");
    }
}

#[test]
fn version_and_help() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(wsgate(dir.path()).arg("--version"));
    assert!(out.status.success());
    assert!(
        stdout(&out).contains(env!("CARGO_PKG_VERSION")),
        "{}",
        stdout(&out)
    );
    // The commit (build.rs: short hash, or `unknown` outside a git checkout).
    assert!(stdout(&out).contains("(commit "), "{}", stdout(&out));
    let out = run(wsgate(dir.path()).arg("--help"));
    assert!(out.status.success());
    let help = stdout(&out);
    for word in ["check", "hash-password", "--config"] {
        assert!(help.contains(word), "--help lacks {word}:\n{help}");
    }
}

// ---------------------------------------------------------------------------------------
// Operator's kit: completions, man page, start-up line
// ---------------------------------------------------------------------------------------

/// The subcommands `--help` lists (without `help`), so the completion test follows new ones.
fn subcommands_from_help(dir: &Path) -> Vec<String> {
    let help = stdout(&run(wsgate(dir).arg("--help")));
    let names: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|n| n != "help")
        .collect();
    assert!(names.iter().any(|n| n == "check"), "{help}");
    names
}

/// The Debian package's /etc/wsgate/config.yaml must start as installed: no secret to set,
/// no file to create, nothing to warn about.
#[test]
fn packaged_config_checks_without_secrets_or_warnings() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = run(wsgate(repo)
        .arg("check")
        .arg("--config")
        .arg(repo.join("contrib/deb/config.yaml"))
        .env_remove("WSGATE_JWT_SECRET"));
    assert_eq!(
        (out.status.code(), stdout(&out).trim().to_string()),
        (Some(0), "ok".to_string()),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}

#[test]
fn completions_cover_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let subcommands = subcommands_from_help(dir.path());
    let out = run(wsgate(dir.path()).args(["completions", "bash"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let bash = stdout(&out);
    assert!(bash.contains("complete -F _wsgate"), "{bash}");
    for sub in &subcommands {
        assert!(bash.contains(sub.as_str()), "bash completion lacks {sub}");
    }
    for (shell, marker) in [("zsh", "#compdef wsgate"), ("fish", "complete -c wsgate")] {
        let out = run(wsgate(dir.path()).args(["completions", shell]));
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        assert!(script.contains(marker), "{shell}:\n{script}");
        assert!(script.contains("hash-password"), "{shell}:\n{script}");
    }
}

#[test]
fn completions_for_an_unknown_shell_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(wsgate(dir.path()).args(["completions", "bogus"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("invalid value 'bogus'"), "{err}");
    assert!(
        err.contains("bash") && err.contains("zsh") && err.contains("fish"),
        "{err}"
    );
}

#[test]
fn man_page_documents_each_subcommand_exit_codes_and_signals() {
    let dir = tempfile::tempdir().unwrap();
    let subcommands = subcommands_from_help(dir.path());
    let out = run(wsgate(dir.path()).arg("man"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let page = stdout(&out);
    assert!(page.contains(".TH WSGATE 1"), "{page}");
    assert!(page.contains(env!("CARGO_PKG_VERSION")), "{page}");
    for sub in &subcommands {
        // Each subcommand has its own subsection on this one page (clap_mangen's default
        // would point at separate wsgate-check(1) pages that do not exist).
        let heading = format!(".SS \"wsgate {sub}");
        assert!(page.contains(&heading), "man page lacks {heading}:\n{page}");
    }
    assert!(!page.contains("wsgate\\-check(1)"), "{page}");
    for section in [
        ".SH OPTIONS",
        ".SH \"EXIT STATUS\"",
        ".SH SIGNALS",
        ".SH ENVIRONMENT",
    ] {
        assert!(page.contains(section), "man page lacks {section}:\n{page}");
    }
    assert!(page.contains("WSGATE_CONFIG"), "{page}");
    // The token subcommand's own options, with their defaults.
    assert!(page.contains("\\-\\-ttl"), "{page}");
    // Renders without warnings where a formatter is installed.
    if Command::new("groff").arg("--version").output().is_ok() {
        let mut child = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(page.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert!(
            out.stderr.is_empty(),
            "groff: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_logs_version_commit_listeners_admin_and_routes() {
    let files = Files::new();
    files.cert("tls");
    let hash_line = htpasswd_line("alice", "pw");
    files.write("users.htpasswd", &hash_line);
    let (plain, tls, admin) = (free_port(), free_port(), free_port());
    let cfg = files.write(
        "cfg.yaml",
        &format!(
            r#"listeners:
  - bind: "127.0.0.1:{plain}"
  - bind: "127.0.0.1:{tls}"
    tls:
      cert: tls.crt
      key: tls.key
admin:
  bind: "127.0.0.1:{admin}"
auth:
  users:
    type: basic
    realm: wsgate
    htpasswd: users.htpasswd
  jwt:
    type: jwt
    algorithms: [HS256]
    secret: "${{WSGATE_JWT_SECRET}}"
routes:
  - path: /open
    upstream: ws://127.0.0.1:3000
  - path: /ws
    upstream: ws://127.0.0.1:3000
    auth: [users, jwt]
    origins: ["http://127.0.0.1:8000"]
"#
        ),
    );
    let mut gate = Proc::spawn(
        files.dir.path(),
        &["--log-format", "json", "--config", cfg.to_str().unwrap()],
        "info",
    );
    gate.wait_healthy(addr(admin)).await;
    gate.signal("TERM");
    gate.wait_exit(Duration::from_secs(6)).await.expect("exit");
    let log = gate.log();
    let starts: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "wsgate starting")
        .collect();
    assert_eq!(starts.len(), 1, "one start-up line expected:\n{log}");
    let line = &starts[0];
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["version"], env!("CARGO_PKG_VERSION"), "{line}");
    // The same commit `--version` shows.
    let version = stdout(&run(wsgate(files.dir.path()).arg("--version")));
    let commit = line["commit"].as_str().unwrap_or_default();
    assert!(!commit.is_empty(), "{line}");
    assert!(
        version.contains(&format!("(commit {commit})")),
        "{version} vs {line}"
    );
    assert_eq!(
        line["listeners"],
        format!("127.0.0.1:{plain} (tls no), 127.0.0.1:{tls} (tls yes)"),
        "{line}"
    );
    assert_eq!(line["admin"], format!("127.0.0.1:{admin}"), "{line}");
    assert_eq!(line["route_count"], 2, "{line}");
    assert_eq!(
        line["routes"], "/open (open), /ws (auth users|jwt)",
        "{line}"
    );
    // Names and addresses only: no secret, hash or upstream reaches the log.
    let hash = hash_line.trim().split_once(':').unwrap().1;
    for secret in [JWT_SECRET, hash, "127.0.0.1:3000"] {
        assert!(!log.contains(secret), "{secret} logged:\n{log}");
    }
}

// ---------------------------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_tunnel_then_exits_0() {
    let up = echo_upstream().await;
    let files = Files::new();
    let (listen, admin) = (free_port(), free_port());
    let cfg = files.write("cfg.yaml", &serve_yaml(listen, admin, up.addr, "10s", ""));
    let mut gate = Proc::spawn(
        files.dir.path(),
        &["--config", cfg.to_str().unwrap()],
        "info",
    );
    gate.wait_healthy(addr(admin)).await;
    assert_eq!(get(addr(admin), "/readyz").await.map(|r| r.0), Some(200));
    // The limits in force are logged once at start, per-client caps off by default.
    let log = gate.log();
    let line = log
        .lines()
        .find(|l| l.contains("effective limits"))
        .unwrap_or_else(|| panic!("no effective limits line:\n{log}"));
    for field in [
        "max_connections=10000",
        "max_connections_per_ip=off",
        "handshake_rate_per_ip=off",
        "max_hashes_per_ip=2",
        "ipv6_prefix=64",
    ] {
        assert!(line.contains(field), "{field} missing in: {line}");
    }

    let url = format!("ws://127.0.0.1:{listen}/a");
    let (mut ws, _) = ws_connect(&url, &[]).await.expect("tunnel");
    echo_roundtrip(&mut ws, "before").await;

    gate.signal("TERM");
    let signalled = Instant::now();

    // Draining: /readyz says 503 while the admin listener is still up.
    let mut ready = None;
    for _ in 0..100 {
        ready = get(addr(admin), "/readyz").await.map(|r| r.0);
        if ready == Some(503) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ready, Some(503), "readyz never turned 503:\n{}", gate.log());
    assert_eq!(get(addr(admin), "/healthz").await.map(|r| r.0), Some(200));

    // The open tunnel still works.
    echo_roundtrip(&mut ws, "during drain").await;

    // New connections are refused.
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(addr(listen)).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the listener still accepts while draining");
    assert!(
        gate.child.try_wait().unwrap().is_none(),
        "exited with a tunnel open:\n{}",
        gate.log()
    );

    // The client leaves; the process ends well before the 10 s deadline.
    ws.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(2), ws.next()).await {}
    // The close handshake is done; the TCP connection ends with the client object.
    drop(ws);
    let status = gate
        .wait_exit(Duration::from_secs(6))
        .await
        .unwrap_or_else(|| panic!("did not exit after the last tunnel closed:\n{}", gate.log()));
    assert_eq!(status.code(), Some(0), "{}", gate.log());
    assert!(
        signalled.elapsed() < Duration::from_secs(7),
        "{:?}",
        signalled.elapsed()
    );
    assert!(can_bind(listen) && can_bind(admin));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_leftover_tunnels_at_drain_deadline() {
    let up = echo_upstream().await;
    let files = Files::new();
    let (listen, admin) = (free_port(), free_port());
    let cfg = files.write("cfg.yaml", &serve_yaml(listen, admin, up.addr, "1s", ""));
    let mut gate = Proc::spawn(
        files.dir.path(),
        &["--config", cfg.to_str().unwrap()],
        "info",
    );
    gate.wait_healthy(addr(admin)).await;
    let (mut ws, _) = ws_connect(&format!("ws://127.0.0.1:{listen}/a"), &[])
        .await
        .expect("tunnel");
    echo_roundtrip(&mut ws, "x").await;

    gate.signal("TERM");
    let signalled = Instant::now();
    let status = gate
        .wait_exit(Duration::from_secs(8))
        .await
        .unwrap_or_else(|| panic!("still running after the drain deadline:\n{}", gate.log()));
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{}", gate.log());
    assert!(
        took >= Duration::from_millis(900),
        "exited too early: {took:?}"
    );
    assert!(took < Duration::from_secs(6), "exited too late: {took:?}");

    // The client sees its connection end (a close frame, EOF or a reset).
    let ended = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "client connection still open after exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_routes_and_keeps_old_config_on_error() {
    let up = echo_upstream().await;
    let files = Files::new();
    let (listen, admin) = (free_port(), free_port());
    let cfg = files.write("cfg.yaml", &serve_yaml(listen, admin, up.addr, "2s", ""));
    let mut gate = Proc::spawn(
        files.dir.path(),
        &["--log-format", "json", "--config", cfg.to_str().unwrap()],
        "debug",
    );
    gate.wait_healthy(addr(admin)).await;
    let ok = "wsgate_config_reloads_total{result=\"ok\"}";
    let err = "wsgate_config_reloads_total{result=\"error\"}";

    let b_url = format!("ws://127.0.0.1:{listen}/b");
    let refused = ws_connect(&b_url, &[]).await.expect_err("no route /b yet");
    assert_eq!(refused_status(refused), 404);

    let (mut tunnel, _) = ws_connect(&format!("ws://127.0.0.1:{listen}/a"), &[])
        .await
        .expect("tunnel on /a");
    echo_roundtrip(&mut tunnel, "before reload").await;

    // Add /b (JWT-protected), then HUP.
    let route_b = format!(
        "  - path: /b\n    upstream: ws://{}\n    auth: [jwt]\n",
        up.addr
    );
    std::fs::write(&cfg, serve_yaml(listen, admin, up.addr, "2s", &route_b)).unwrap();
    gate.signal("HUP");
    let token = jwt(serde_json::json!({"sub": "zoe"}));
    let b_with_token = format!("{b_url}?token={token}");
    let mut admitted = None;
    for _ in 0..100 {
        if let Ok((ws, resp)) = ws_connect(&b_with_token, &[]).await {
            admitted = Some((ws, resp.status()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let (mut ws_b, status) =
        admitted.unwrap_or_else(|| panic!("route /b never appeared:\n{}", gate.log()));
    assert_eq!(status, 101);
    echo_roundtrip(&mut ws_b, "via b").await;
    assert_eq!(up.last().header("x-auth-user"), Some("zoe"));
    // The new route is authenticated.
    let expired = jwt(serde_json::json!({"exp": now_secs() - 600}));
    let err_b = ws_connect(&format!("{b_url}?token={expired}"), &[])
        .await
        .expect_err("expired token");
    assert_eq!(refused_status(err_b), 401);

    // The tunnel opened before the reload is untouched.
    echo_roundtrip(&mut tunnel, "after reload").await;
    assert_eq!(metric_at(addr(admin), ok).await, 1.0);
    assert_eq!(metric_at(addr(admin), err).await, 0.0);

    // An invalid config: refused, the old one stays.
    std::fs::write(&cfg, "listeners: [\n  this is not yaml").unwrap();
    gate.signal("HUP");
    let mut errors = 0.0;
    for _ in 0..100 {
        errors = metric_at(addr(admin), err).await;
        if errors == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(errors, 1.0, "{}", gate.log());
    assert_eq!(metric_at(addr(admin), ok).await, 1.0);
    let (mut ws_b2, _) = ws_connect(&b_with_token, &[])
        .await
        .expect("/b still served by the old config");
    echo_roundtrip(&mut ws_b2, "still b").await;
    echo_roundtrip(&mut tunnel, "after bad reload").await;
    assert!(gate.child.try_wait().unwrap().is_none());

    // Stop cleanly.
    for mut ws in [tunnel, ws_b, ws_b2] {
        let _ = ws.close(None).await;
    }
    gate.signal("TERM");
    let status = gate.wait_exit(Duration::from_secs(6)).await.expect("exit");
    assert_eq!(status.code(), Some(0), "{}", gate.log());

    // --log-format json: every stderr line is a JSON object.
    let log = gate.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n---\n{log}"))
        })
        .collect();
    assert!(lines.len() >= 3, "{log}");
    assert!(
        lines
            .iter()
            .all(|v| v.is_object() && v.get("level").is_some()),
        "{log}"
    );
    let message = |v: &serde_json::Value| {
        v.get("message")
            .and_then(|m| m.as_str())
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        lines.iter().any(|v| message(v).contains("reloaded")),
        "no reload logged:\n{log}"
    );
    assert!(
        lines
            .iter()
            .any(|v| message(v).contains("reload refused") && v["level"] == "ERROR"),
        "no refused reload logged:\n{log}"
    );
    // Secrets and tokens never reach the logs, even at debug level.
    assert!(!log.contains(JWT_SECRET), "JWT secret logged:\n{log}");
    assert!(!log.contains(&token), "token logged:\n{log}");
    assert!(!log.contains(&expired), "token logged:\n{log}");
}

// ---------------------------------------------------------------------------------------
// healthcheck
// ---------------------------------------------------------------------------------------

/// `wsgate healthcheck` against `cfg`, with `WSGATE_HEALTHCHECK_ADDR` set when `addr` is given
/// (the Dockerfile's form) and unset otherwise.
fn healthcheck(dir: &Path, cfg: &Path, addr: Option<&str>) -> Output {
    let mut cmd = wsgate(dir);
    cmd.env_remove("WSGATE_HEALTHCHECK_ADDR")
        .env("WSGATE_CONFIG", cfg)
        .arg("healthcheck");
    if let Some(a) = addr {
        cmd.env("WSGATE_HEALTHCHECK_ADDR", a);
    }
    run(&mut cmd)
}

fn assert_healthy(o: &Output, what: &str) {
    assert!(
        o.status.success() && stdout(o).trim() == "healthy",
        "{what}: expected healthy, got {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
}

fn assert_unhealthy(o: &Output, what: &str) {
    assert_eq!(
        o.status.code(),
        Some(1),
        "{what}: expected exit 1\nstdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
}

/// Waits until `addr` accepts TCP connections (a gate without an admin listener).
async fn wait_listening(gate: &mut Proc, addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(s) = gate.child.try_wait().unwrap() {
            panic!("wsgate exited early ({s}):\n{}", gate.log());
        }
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("wsgate never listened on {addr}:\n{}", gate.log());
}

/// The Docker image's health check must not depend on the config file: the Dockerfile
/// gives the address in the environment and the HEALTHCHECK runs the bare subcommand.
#[test]
fn dockerfile_healthcheck_does_not_need_the_config() {
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile")).unwrap();
    assert!(
        dockerfile
            .lines()
            .any(|l| l.trim_start().starts_with("ENV WSGATE_HEALTHCHECK_ADDR=")),
        "Dockerfile sets no WSGATE_HEALTHCHECK_ADDR:\n{dockerfile}"
    );
    assert!(
        dockerfile.contains(r#"CMD ["/usr/local/bin/wsgate", "healthcheck"]"#),
        "{dockerfile}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_with_admin_survives_config_edits_and_fails_once_stopped() {
    let up = echo_upstream().await;
    let files = Files::new();
    let (listen, admin) = (free_port(), free_port());
    let cfg = files.write("cfg.yaml", &serve_yaml(listen, admin, up.addr, "1s", ""));
    let mut gate = Proc::spawn(
        files.dir.path(),
        &["--config", cfg.to_str().unwrap()],
        "info",
    );
    gate.wait_healthy(addr(admin)).await;
    let dir = files.dir.path();
    let docker = addr(admin).to_string();

    assert_healthy(&healthcheck(dir, &cfg, None), "admin from the config");
    assert_healthy(&healthcheck(dir, &cfg, Some(&docker)), "Docker form");
    // An empty variable (`-e WSGATE_HEALTHCHECK_ADDR=`) means: use the config.
    assert_healthy(&healthcheck(dir, &cfg, Some("")), "empty variable");

    // Someone is editing the mounted config: the gate still runs on the old one.
    std::fs::write(
        &cfg,
        "listeners: [ {bind: \"127.0.0.1:\n  garbage ::: {{{\n",
    )
    .unwrap();
    assert_healthy(
        &healthcheck(dir, &cfg, Some(&docker)),
        "Docker form, garbage config",
    );
    std::fs::remove_file(&cfg).unwrap();
    assert_healthy(
        &healthcheck(dir, &cfg, Some(&docker)),
        "Docker form, config removed",
    );

    gate.signal("TERM");
    gate.wait_exit(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("gate did not exit:\n{}", gate.log()));
    assert_unhealthy(
        &healthcheck(dir, &cfg, Some(&docker)),
        "Docker form, gate stopped",
    );
    std::fs::write(&cfg, serve_yaml(listen, admin, up.addr, "1s", "")).unwrap();
    assert_unhealthy(&healthcheck(dir, &cfg, None), "config form, gate stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_without_admin_probes_the_first_listener() {
    let up = echo_upstream().await;
    let files = Files::new();
    files.cert("tls");
    let (plain, tls) = (free_port(), free_port());
    let routes = format!("routes:\n  - path: /a\n    upstream: ws://{}\n", up.addr);
    let plain_cfg = files.write(
        "plain.yaml",
        &format!("listeners:\n  - bind: \"127.0.0.1:{plain}\"\n{routes}"),
    );
    let tls_cfg = files.write(
        "tls.yaml",
        &format!(
            "listeners:\n  - bind: \"127.0.0.1:{tls}\"\n    tls:\n      cert: tls.crt\n      key: tls.key\n{routes}"
        ),
    );
    let dir = files.dir.path();
    let mut plain_gate = Proc::spawn(dir, &["--config", plain_cfg.to_str().unwrap()], "info");
    let mut tls_gate = Proc::spawn(dir, &["--config", tls_cfg.to_str().unwrap()], "info");
    wait_listening(&mut plain_gate, addr(plain)).await;
    wait_listening(&mut tls_gate, addr(tls)).await;

    assert_healthy(&healthcheck(dir, &plain_cfg, None), "plain listener");
    assert_healthy(&healthcheck(dir, &tls_cfg, None), "TLS listener");
    // The Docker form pointed at a listener instead of an admin listener.
    let plain_addr = addr(plain).to_string();
    let tls_url = format!("https://{}", addr(tls));
    assert_healthy(
        &healthcheck(dir, &plain_cfg, Some(&plain_addr)),
        "plain, env",
    );
    assert_healthy(&healthcheck(dir, &tls_cfg, Some(&tls_url)), "TLS, env");
    // The probe never reached an upstream (it is answered by the gate itself).
    assert_eq!(up.count(), 0);

    plain_gate.signal("TERM");
    tls_gate.signal("TERM");
    for g in [&mut plain_gate, &mut tls_gate] {
        g.wait_exit(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("gate did not exit:\n{}", g.log()));
    }
    assert_unhealthy(&healthcheck(dir, &plain_cfg, None), "plain, stopped");
    assert_unhealthy(&healthcheck(dir, &tls_cfg, None), "TLS, stopped");
    assert_unhealthy(
        &healthcheck(dir, &tls_cfg, Some(&tls_url)),
        "TLS env, stopped",
    );
}

/// The access log says who sent the first close frame and that a normal close over wss is
/// a close, not an error (a client that drops TCP without TLS close_notify after the close
/// handshake, as browsers do).
#[tokio::test]
async fn access_log_tells_who_closed_first_over_wss() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let files = Files::new();
    let der = files.cert("tls");
    let echo = echo_upstream().await;
    let (port, admin) = (free_port(), free_port());
    let cfg = files.write(
        "wss.yaml",
        &format!(
            "listeners:\n  - bind: \"127.0.0.1:{port}\"\n    tls:\n      cert: tls.crt\n      key: tls.key\n\
             admin:\n  bind: \"127.0.0.1:{admin}\"\n\
             routes:\n  - path: /ws\n    upstream: ws://{}\n",
            echo.addr
        ),
    );
    let cfg = cfg.to_str().unwrap().to_string();
    let mut gate = Proc::spawn(files.dir.path(), &["--config", &cfg], "info");
    gate.wait_healthy(format!("127.0.0.1:{admin}").parse().unwrap())
        .await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let (mut ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        format!("wss://localhost:{port}/ws"),
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(std::sync::Arc::new(
            tls,
        ))),
    )
    .await
    .unwrap();
    echo_roundtrip(&mut ws, "hello").await;
    ws.send(Message::Close(Some(CloseFrame {
        code: 1000.into(),
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    // Read the answer, then drop the socket without a TLS close_notify.
    let _ = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    drop(ws);
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        if let Some(l) = gate.log().lines().find(|l| l.contains("tunnel closed")) {
            break l.to_string();
        }
        assert!(Instant::now() < deadline, "no access line:\n{}", gate.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(line.contains("ended=\"closed\""), "{line}");
    assert!(line.contains("closed_by=\"client\""), "{line}");
    assert!(line.contains("reason=\"client\""), "{line}");
}

/// `wsgate hash-password ARGS` on a pseudo-terminal answering the prompts containing `word`
/// in turn; returns what the terminal showed, ending with `exit=<code>`.
fn hash_password_on_a_terminal(args: &[&str], answers: &[(&str, &str)]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/pty_run.py");
    let out = Command::new("python3")
        .arg(script)
        .args(answers.iter().map(|(w, a)| format!("{w}={a}")))
        .arg("--")
        .arg(BIN)
        .arg("hash-password")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

#[test]
fn hash_password_on_a_terminal_hides_the_password_and_asks_twice() {
    if !tools_available(
        "hash_password_on_a_terminal_hides_the_password_and_asks_twice",
        &[Tool::Program("python3")],
    ) {
        return;
    }
    let screen = hash_password_on_a_terminal(
        &["--argon2", "alice"],
        &[("assword", "tty-Secret-1"), ("again", "tty-Secret-1")],
    );
    assert!(screen.contains("exit=0"), "{screen}");
    assert!(
        !screen.contains("tty-Secret-1"),
        "the terminal echoed the password:\n{screen}"
    );
    let line = screen
        .lines()
        .find(|l| l.starts_with("alice:$argon2id$"))
        .unwrap_or_else(|| panic!("no htpasswd line:\n{screen}"));
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    let parsed = PasswordHash::new(line.trim_end().trim_start_matches("alice:")).unwrap();
    assert!(
        argon2::Argon2::default()
            .verify_password(b"tty-Secret-1", &parsed)
            .is_ok()
    );

    let screen = hash_password_on_a_terminal(
        &["alice"],
        &[("assword", "tty-Secret-1"), ("again", "tty-Secret-2")],
    );
    assert!(screen.contains("passwords do not match"), "{screen}");
    assert!(!screen.contains("exit=0"), "{screen}");
    assert!(!screen.contains("alice:$"), "{screen}");
    assert!(!screen.contains("tty-Secret"), "{screen}");
}
