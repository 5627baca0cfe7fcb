//! `wsgate man` and `wsgate completions`: the man page and shell completions, generated from
//! the clap definition so they never drift from `--help`. Part of the binary, not the library.

use std::io::Write;
use std::process::ExitCode;

use clap::ArgAction;
use clap_complete::Shell;
use clap_mangen::roff::{Roff, bold, italic, roman};

/// Prints the completion script for `shell` to stdout.
pub fn completions(mut cmd: clap::Command, shell: Shell) -> ExitCode {
    // Rendered into memory first: clap_complete panics when its writer fails, and a closed
    // stdout (`wsgate completions bash | head`) must not panic the binary.
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "wsgate", &mut out);
    emit(&out)
}

/// Prints the man page (roff, section 1) to stdout: `wsgate man | man -l -`.
pub fn man(cmd: clap::Command) -> ExitCode {
    match render_man(cmd) {
        Ok(page) => emit(&page),
        Err(e) => {
            eprintln!("wsgate: cannot render the man page: {e}");
            ExitCode::FAILURE
        }
    }
}

fn emit(bytes: &[u8]) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsgate: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One page for the whole tool: clap_mangen's default subcommand list points at
/// `wsgate-check(1)` pages that would not exist, so each subcommand gets its own
/// subsection here instead, followed by what `--help` cannot say (exit codes, signals).
fn render_man(mut cmd: clap::Command) -> std::io::Result<Vec<u8>> {
    cmd.build();
    let source = format!("wsgate {}", wsgate::LONG_VERSION);
    // An empty date would shift .TH's later fields (clap_mangen leaves it unquoted).
    let man = clap_mangen::Man::new(cmd.clone())
        .title("WSGATE")
        .date(env!("WSGATE_GIT_DATE"))
        .source(source)
        .manual("User Commands");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    commands_section(&cmd).to_writer(&mut out)?;
    static_sections().to_writer(&mut out)?;
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// Arguments a subcommand documents itself: not the global ones (the top-level OPTIONS
/// section has them) nor the automatic `--help`.
fn own_args(cmd: &clap::Command) -> Vec<&clap::Arg> {
    cmd.get_arguments()
        .filter(|a| !a.is_hide_set() && !a.is_global_set())
        .filter(|a| {
            !matches!(
                a.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
            )
        })
        .collect()
}

fn value_name(arg: &clap::Arg) -> String {
    arg.get_value_names()
        .and_then(|v| v.first())
        .map_or_else(|| arg.get_id().as_str().to_uppercase(), |n| n.to_string())
}

fn takes_value(arg: &clap::Arg) -> bool {
    arg.get_num_args().is_some_and(|n| n.takes_values())
}

/// `--sub <SUB>`, `--argon2` or `<USER>`, without brackets.
fn arg_usage(arg: &clap::Arg) -> String {
    match arg.get_long() {
        Some(long) if takes_value(arg) => format!("--{long} <{}>", value_name(arg)),
        Some(long) => format!("--{long}"),
        None => format!("<{}>", value_name(arg)),
    }
}

fn commands_section(cmd: &clap::Command) -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", ["COMMANDS"]);
    roff.text([roman(
        "Without a command, wsgate runs the gateway on the config file until SIGTERM or SIGINT.",
    )]);
    // clap's own `help` subcommand is `--help` again.
    let subs = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help");
    for sub in subs {
        let args = own_args(sub);
        let mut synopsis = format!("wsgate {}", sub.get_name());
        for arg in &args {
            let usage = arg_usage(arg);
            if arg.is_required_set() {
                synopsis.push_str(&format!(" {usage}"));
            } else {
                synopsis.push_str(&format!(" [{usage}]"));
            }
        }
        roff.control("SS", [synopsis.as_str()]);
        if let Some(about) = sub.get_long_about().or_else(|| sub.get_about()) {
            roff.text([roman(about.to_string())]);
        }
        for arg in args {
            let mut header = vec![bold(arg_usage(arg))];
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            if takes_value(arg) && !defaults.is_empty() && !arg.is_hide_default_value_set() {
                header.push(roman(format!(" [default: {}]", defaults.join(","))));
            }
            roff.control("TP", []);
            roff.text(header);
            let mut body = Vec::new();
            if let Some(help) = arg.get_long_help().or_else(|| arg.get_help()) {
                body.push(roman(help.to_string()));
            }
            let values: Vec<String> = arg
                .get_possible_values()
                .iter()
                .filter(|v| !v.is_hide_set())
                .map(|v| v.get_name().to_owned())
                .collect();
            if !values.is_empty() && !arg.is_hide_possible_values_set() {
                body.push(roman(" (one of: "));
                body.push(italic(values.join(", ")));
                body.push(roman(")"));
            }
            roff.text(body);
        }
    }
    roff
}

/// What a reader of the page needs and `--help` has no room for.
fn static_sections() -> Roff {
    let mut roff = Roff::new();
    let item = |roff: &mut Roff, head: &str, text: &str| {
        roff.control("TP", []);
        roff.text([bold(head)]);
        roff.text([roman(text)]);
    };
    roff.control("SH", ["EXIT STATUS"]);
    item(
        &mut roff,
        "0",
        "Success; the gateway drained and stopped on a signal.",
    );
    item(
        &mut roff,
        "1",
        "check found problems (one line per problem, each naming its YAML path), \
         healthcheck found the gate unhealthy, or a runtime failure.",
    );
    item(
        &mut roff,
        "2",
        "Bad command-line usage or input (an unknown option, an empty password).",
    );
    item(
        &mut roff,
        "64",
        "The configuration is invalid at start-up; nothing was bound.",
    );

    roff.control("SH", ["SIGNALS"]);
    item(
        &mut roff,
        "SIGTERM, SIGINT",
        "Stop accepting, answer 503 on /readyz, let open connections finish for up to \
         shutdown.drain_timeout, then close the rest and exit 0.",
    );
    item(
        &mut roff,
        "SIGHUP",
        "Re-read the config and certificates; new connections use them, open ones are \
         untouched. An invalid new config is logged and the old one stays in force.",
    );

    roff.control("SH", ["ENVIRONMENT"]);
    item(
        &mut roff,
        "WSGATE_CONFIG",
        "The config file when --config is not given (else config.yaml).",
    );
    item(
        &mut roff,
        "RUST_LOG",
        "Log filter for stderr, e.g. info, debug, wsgate=debug (default info).",
    );
    item(
        &mut roff,
        "${VAR} in the config",
        "Any string value may name an environment variable; an unset one is an error naming it.",
    );

    roff.control("SH", ["FILES"]);
    item(
        &mut roff,
        "/etc/wsgate/config.yaml",
        "The configuration read by the packaged systemd unit (wsgate.service).",
    );
    item(
        &mut roff,
        "/usr/share/doc/wsgate/",
        "README: every configuration key, metrics, the admin listener and operations.",
    );

    roff.control("SH", ["SEE ALSO"]);
    roff.text([
        bold("systemctl"),
        roman("(1), "),
        bold("htpasswd"),
        roman("(1), "),
        bold("systemd.exec"),
        roman("(5)"),
    ]);
    roff
}
