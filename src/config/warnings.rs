//! Advice on valid configurations: things `wsgate check` and start-up point out without
//! refusing them, each with its YAML path like an error.

use super::{AuthConfig, Config, ConfigError};

/// Every warning for `config`, in route order.
pub fn warnings(config: &Config) -> Vec<ConfigError> {
    let mut out = Vec::new();
    for (i, route) in config.routes.iter().enumerate() {
        let basic = route
            .auth
            .iter()
            .any(|name| matches!(config.auth.get(name), Some(AuthConfig::Basic(_))));
        let cookie = route.auth.iter().any(|name| {
            matches!(config.auth.get(name), Some(AuthConfig::Jwt(j))
                if j.from.iter().flatten().any(|s| s.cookie.is_some()))
        });
        if cookie && !basic && route.origins.is_none() {
            // The browser attaches cookies to upgrades that any site's page starts.
            out.push(ConfigError::new(
                format!("routes[{i}].origins"),
                format!(
                    "route {} reads its token from a cookie, which a browser sends on upgrades \
                     started by pages of any site too (cross-site WebSocket hijacking); list \
                     the allowed origins, e.g. origins: [\"https://app.example.com\"]",
                    route.path
                ),
            ));
        }
        if basic && route.origins.is_none() {
            // Browsers replay cached Basic credentials (and cookies) on WebSocket upgrades
            // that any site's page starts; only an Origin check tells those apart.
            out.push(ConfigError::new(
                format!("routes[{i}].origins"),
                format!(
                    "route {} accepts Basic credentials from pages of any site: a browser that \
                     has logged in sends them on upgrades started by other sites too \
                     (cross-site WebSocket hijacking); list the allowed origins, \
                     e.g. origins: [\"https://app.example.com\"]",
                    route.path
                ),
            ));
        }
        if let Some(hook) = route.events.as_ref().map(|e| &e.webhook)
            && !hook.tls
            && !is_this_host(&hook.host)
        {
            // Who is online, from where, is personal data; the URL may also carry the
            // receiver's secret. (The URL itself is not echoed for that reason.)
            out.push(ConfigError::new(
                format!("routes[{i}].events.webhook"),
                format!(
                    "route {}'s events go to {} over plain http://: who connects, from which                      address, and the URL's secret travel in cleartext; use https:// unless the                      receiver is on this host",
                    route.path, hook.authority
                ),
            ));
        }
    }
    for (name, auth) in &config.auth {
        // Unreadable files are errors reported by the load itself; only readable ones are
        // looked at here.
        if let AuthConfig::Basic(b) = auth
            && let Ok(bytes) = std::fs::read(&b.htpasswd)
        {
            for advice in crate::auth::weak_htpasswd_users(&bytes) {
                out.push(ConfigError::new(format!("auth.{name}.htpasswd"), advice));
            }
        }
    }
    out
}

/// Loopback by name or address: a cleartext hop that never leaves the machine.
fn is_this_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
