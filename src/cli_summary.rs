//! The start-up line: version, commit and the shape of the effective config, so that one
//! log line tells an operator what is running. Part of the binary, not the library.

use wsgate::config::Config;

/// Logs one info line describing what is about to run. Only addresses, route paths and
/// authenticator names: never upstream URLs (they may carry credentials) nor secrets.
pub fn log_start(config: &Config) {
    let listeners = config
        .listeners
        .iter()
        .map(|l| {
            let tls = if l.tls.is_some() { "yes" } else { "no" };
            let pp = if l.proxy_protocol {
                ", proxy_protocol"
            } else {
                ""
            };
            format!("{} (tls {tls}{pp})", l.bind)
        })
        .collect::<Vec<_>>()
        .join(", ");
    let admin = config
        .admin
        .as_ref()
        .map_or_else(|| "none".to_owned(), |a| a.bind.to_string());
    let routes = config
        .routes
        .iter()
        .map(|r| {
            if r.auth.is_empty() {
                format!("{} (open)", r.path)
            } else {
                format!("{} (auth {})", r.path, r.auth.join("|"))
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    tracing::info!(
        version = wsgate::VERSION,
        commit = wsgate::COMMIT,
        config = %config.source.display(),
        // As str, not Display: the text format then quotes these values, which hold spaces.
        listeners = listeners.as_str(),
        admin = admin.as_str(),
        route_count = config.routes.len(),
        routes = routes.as_str(),
        "wsgate starting"
    );
}
