//! The `wsgate` command: CLI, logging, config loading, signals; everything else is the library.

// Not in Cargo.toml's [lints]: there it would also deny unwrap in every test target.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use wsgate::config;

mod cli_docs;
mod cli_summary;

// mimalloc returns freed memory to the OS more eagerly than glibc's malloc and fragments
// less under many short-lived handshake buffers, which is what RSS per idle tunnel measures
// (see bench/RESULTS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for a bad configuration (EX_USAGE in sysexits.h).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "wsgate",
    version = wsgate::LONG_VERSION,
    about = "Authenticated WebSocket gateway: TLS, auth on the upgrade, splice, metrics"
)]
struct Cli {
    /// Config file [default: $WSGATE_CONFIG, else config.yaml]
    #[arg(
        long,
        global = true,
        env = "WSGATE_CONFIG",
        default_value = "config.yaml"
    )]
    config: PathBuf,
    /// Log format on stderr (level from RUST_LOG, default info)
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config and the files it names, without binding any port
    Check,
    /// Probe the running gate (for container health checks); exit 0 when healthy, else 1
    Healthcheck {
        /// Address to probe without reading the config: IP:PORT over HTTP (admin or plain
        /// listener), https://IP:PORT with a TLS handshake [default: the config's admin.bind,
        /// else its first listener]
        #[arg(
            long,
            visible_alias = "admin",
            env = "WSGATE_HEALTHCHECK_ADDR",
            value_name = "[https://]ADDR"
        )]
        addr: Option<String>,
    },
    /// Print a JWT signed with the config's HMAC secret, for trying a JWT route
    Token {
        /// The `sub` claim (the identity the gate forwards as X-Auth-User)
        #[arg(long)]
        sub: String,
        /// Lifetime, e.g. 30m, 1h, 7d
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// Extra claim KEY=VALUE (VALUE read as JSON when it parses, else a string); repeatable
        #[arg(long = "claim", value_name = "KEY=VALUE")]
        claims: Vec<String>,
        /// The jwt authenticator to sign for (its name under auth:), when there are several
        #[arg(long = "auth", value_name = "NAME")]
        auth: Option<String>,
    },
    /// Print the JSON Schema of config.yaml (for editors: see config.schema.json)
    ConfigSchema,
    /// Read a password from stdin and print an htpasswd line (bcrypt, or argon2id)
    HashPassword {
        /// User name for the htpasswd line (omit to print only the hash)
        user: Option<String>,
        /// Use argon2id instead of bcrypt
        #[arg(long)]
        argon2: bool,
    },
    /// Print a shell completion script to stdout (bash, zsh, fish, elvish, powershell)
    Completions {
        /// Shell to print the script for
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout; read it with `wsgate man | man -l -`
    Man,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _log_guard = init_logging(cli.log_format);
    match cli.command {
        Some(Command::Check) => check(&cli.config),
        Some(Command::HashPassword { user, argon2 }) => hash_password(user, argon2),
        Some(Command::ConfigSchema) => config_schema(),
        Some(Command::Token {
            sub,
            ttl,
            claims,
            auth,
        }) => token(&cli.config, &sub, ttl, &claims, auth.as_deref()),
        Some(Command::Healthcheck { addr }) => healthcheck(&cli.config, addr.as_deref()),
        Some(Command::Completions { shell }) => cli_docs::completions(clap_cmd(), shell),
        Some(Command::Man) => cli_docs::man(clap_cmd()),
        None => serve(&cli.config),
    }
}

fn clap_cmd() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// Logs go through a batching writer thread (`wsgate::log_writer`): the access log is one
/// line per tunnel and per refusal, and a stderr write or a thread wake-up per line would
/// sit on the handshake path. The returned guard writes what is queued when dropped at exit.
fn init_logging(format: LogFormat) -> Option<wsgate::log_writer::FlushGuard> {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal());
    let (writer, guard) = match wsgate::log_writer::batch_writer(std::io::stderr()) {
        Ok((w, g)) => (w, Some(g)),
        Err(e) => {
            // No thread to spare: log straight to stderr rather than not at all.
            eprintln!("log writer thread: {e}; logging unbuffered");
            let builder = builder.with_writer(std::io::stderr);
            match format {
                LogFormat::Text => builder.init(),
                LogFormat::Json => builder.json().flatten_event(true).init(),
            }
            return None;
        }
    };
    let builder = builder.with_writer(writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}

/// Pretty JSON with the keys in declaration order: the committed config.schema.json must be
/// byte-for-byte what this prints.
fn config_schema() -> ExitCode {
    match serde_json::to_string_pretty(config::schema()) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot print the schema: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &std::path::Path) -> Result<config::Config, config::ConfigErrors> {
    config::load(path)
}

fn print_errors(errors: &config::ConfigErrors) {
    let mut err = std::io::stderr().lock();
    for e in &errors.0 {
        let _ = writeln!(err, "{e}");
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let result = load(path).and_then(|c| {
        let warnings = config::warnings(&c);
        wsgate::check(c).map(|()| warnings)
    });
    match result {
        Ok(warnings) => {
            // Warnings go to stderr so that stdout stays exactly `ok` for scripts.
            let mut err = std::io::stderr().lock();
            for w in &warnings {
                let _ = writeln!(err, "warning: {w}");
            }
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(errors) => {
            // One line per problem on stdout too, so `wsgate check | grep` works.
            for e in &errors.0 {
                println!("{e}");
            }
            ExitCode::FAILURE
        }
    }
}

fn token(
    path: &std::path::Path,
    sub: &str,
    ttl: std::time::Duration,
    claims: &[String],
    auth: Option<&str>,
) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(errors) => {
            print_errors(&errors);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    use wsgate::auth::mint;
    match mint::signing_authenticator(&config, auth).and_then(|j| mint::mint(j, sub, ttl, claims)) {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wsgate: {e}");
            ExitCode::from(2)
        }
    }
}

/// Exit 1 for every failure, config problems included: Docker reads 1 as unhealthy and
/// reserves 2.
fn healthcheck(path: &std::path::Path, addr: Option<&str>) -> ExitCode {
    match wsgate::healthcheck::check(path, addr) {
        Ok(_) => {
            println!("healthy");
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("wsgate: unhealthy: {why}");
            ExitCode::FAILURE
        }
    }
}

fn hash_password(user: Option<String>, argon2: bool) -> ExitCode {
    if let Some(u) = &user
        && (u.is_empty() || u.contains(':') || u.chars().any(char::is_control))
    {
        eprintln!("wsgate: user name must be non-empty, without ':' or control characters");
        return ExitCode::from(2);
    }
    let password = match read_new_password() {
        Ok(p) => p,
        Err(PasswordInput::Mismatch) => {
            eprintln!("wsgate: passwords do not match");
            return ExitCode::from(2);
        }
        Err(PasswordInput::Io(e)) => {
            eprintln!("wsgate: cannot read the password: {e}");
            return ExitCode::FAILURE;
        }
    };
    let password = password.as_str();
    if password.is_empty() {
        eprintln!("wsgate: empty password refused");
        return ExitCode::from(2);
    }
    match wsgate::auth::hash_password(password, argon2) {
        Ok(hash) => {
            match user {
                Some(u) => println!("{u}:{hash}"),
                None => println!("{hash}"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wsgate: hashing failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Why no password was read.
enum PasswordInput {
    /// The two entries on a terminal differ.
    Mismatch,
    /// stdin or the terminal failed.
    Io(std::io::Error),
}

/// The password to hash. On a terminal it is read twice without echo (the screen, scrollback
/// and anyone looking over a shoulder never see it, and a typo is caught); from a pipe it is
/// one line, the trailing newline not part of it.
fn read_new_password() -> Result<String, PasswordInput> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ").map_err(PasswordInput::Io)?;
        let again = rpassword::prompt_password("Password again: ").map_err(PasswordInput::Io)?;
        return if first == again {
            Ok(first)
        } else {
            Err(PasswordInput::Mismatch)
        };
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(PasswordInput::Io)?;
    let trimmed = line
        .strip_suffix('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .unwrap_or(&line);
    Ok(trimmed.to_owned())
}

fn serve(path: &std::path::Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(errors) => {
            print_errors(&errors);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    cli_summary::log_start(&config);
    for w in config::warnings(&config) {
        tracing::warn!("config: {w}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wsgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let mut gateway = match wsgate::Gateway::bind(config).await {
            Ok(g) => g,
            Err(wsgate::StartError::Config(errors)) => {
                print_errors(&errors);
                return ExitCode::from(EXIT_CONFIG);
            }
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        for addr in gateway.listener_addrs() {
            tracing::info!(%addr, "listening");
        }
        if let Some(addr) = gateway.admin_addr() {
            tracing::info!(%addr, "admin listening");
        }
        gateway.set_config_path(path);
        let reloader = gateway.reloader();
        let reload_path = path.to_path_buf();
        tokio::spawn(async move { reload_on_sighup(reloader, reload_path).await });
        gateway.run(shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

async fn reload_on_sighup(reloader: wsgate::Reloader, path: PathBuf) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler; reloads are off");
        return;
    };
    while hup.recv().await.is_some() {
        let r = reloader.clone();
        let p = path.clone();
        // Reading and parsing files is blocking work: keep it off the async workers.
        let result = tokio::task::spawn_blocking(move || r.reload_from(&p))
            .await
            .unwrap_or_else(|e| Err(wsgate::ReloadError::NeedsRestart(e.to_string())));
        match result {
            Ok(()) => tracing::info!(config = %path.display(), "configuration reloaded"),
            Err(e) => {
                for line in e.to_string().lines() {
                    tracing::error!(config = %path.display(), "reload refused, old configuration stays: {line}");
                }
            }
        }
    }
}
