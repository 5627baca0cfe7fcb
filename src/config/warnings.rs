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
    }
    out
}
