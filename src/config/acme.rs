//! Rules of `listeners[].tls.acme`: the value formats the schema walk checks (domain,
//! e-mail, directory URL) and the rules between keys (files or ACME, http-01 needs a plain
//! listener). Pure: nothing here contacts the CA or touches the cache folder (`crate::acme`
//! reads that when the runtime state is built).

use super::schema::{Problems, Seg};
use super::types::{AcmeChallenge, Config};

fn key(k: &str) -> Seg {
    Seg::Key(k.to_owned())
}

/// A DNS name a public ACME CA issues for: letters, digits and hyphens in dot-separated
/// labels of 1-63 bytes, 253 bytes in all, at least two labels. Wildcards need DNS-01,
/// which wsgate does not answer; IP addresses are a different identifier type.
pub(crate) fn domain(s: &str) -> Result<(), String> {
    if s.starts_with("*.") {
        return Err(format!(
            "{s:?}: wildcard names need the dns-01 challenge, which wsgate does not answer; \
             list each name"
        ));
    }
    if s.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "{s:?} is an IP address; ACME certificates here are for DNS names"
        ));
    }
    let name = s.strip_suffix('.').unwrap_or(s);
    if name.is_empty() || name.len() > 253 {
        return Err(format!("{s:?} is not a DNS name (1 to 253 characters)"));
    }
    let labels: Vec<&str> = name.split('.').collect();
    for label in &labels {
        let ok_chars = label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if label.is_empty()
            || label.len() > 63
            || !ok_chars
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err(format!(
                "{s:?} is not a DNS name: label {label:?} must be 1-63 letters, digits or \
                 inner hyphens (write internationalized names in their xn-- form)"
            ));
        }
    }
    if labels.len() < 2 {
        return Err(format!(
            "{s:?} is a single label; a CA issues only for fully qualified names (example.com)"
        ));
    }
    Ok(())
}

/// An account contact address: `local@domain` (the CA sends expiry notices there).
pub(crate) fn email(s: &str) -> Result<(), String> {
    let s = s.strip_prefix("mailto:").unwrap_or(s);
    match s.split_once('@') {
        Some((local, host)) if !local.is_empty() && !host.is_empty() && !host.contains('@') => {
            if s.chars().any(|c| c.is_whitespace() || c == ',') {
                Err(format!(
                    "{s:?} is not an e-mail address (one address, no spaces)"
                ))
            } else {
                Ok(())
            }
        }
        _ => Err(format!("{s:?} is not an e-mail address (user@example.com)")),
    }
}

/// An ACME directory URL. RFC 8555 §6.1 requires HTTPS; plain http:// is refused even on
/// loopback so a typo cannot send the account key's signatures in the clear.
pub(crate) fn directory(s: &str) -> Result<(), String> {
    let Some(rest) = s.strip_prefix("https://") else {
        return Err(format!(
            "{s:?}: an ACME directory URL starts with https:// (e.g. {})",
            super::types::LETS_ENCRYPT_DIRECTORY
        ));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains('@') || host.chars().any(char::is_whitespace) {
        return Err(format!("{s:?}: no valid host after https://"));
    }
    let uri: Result<http::Uri, _> = s.parse();
    uri.map(|_| ())
        .map_err(|e| format!("{s:?} is not a valid URL: {e}"))
}

/// Rules between keys of each listener's `tls`: certificate files or `acme`, not both;
/// duplicate domains; `http-01` needs a plain listener to answer on.
pub(crate) fn tls_rules(c: &Config, problems: &mut Problems) {
    let has_plain = c.listeners.iter().any(|l| l.tls.is_none());
    for (i, l) in c.listeners.iter().enumerate() {
        let Some(tls) = &l.tls else { continue };
        let at = [key("listeners"), Seg::Idx(i), key("tls")];
        let sub = |k: &str| [&at[..], &[key(k)]].concat();
        let acme_path = sub("acme");
        match &tls.acme {
            None => {
                // A refused `acme` block was cut: the files are not what is missing then.
                if problems.is_poisoned(&acme_path) {
                    continue;
                }
                for (name, value) in [("cert", &tls.cert), ("key", &tls.key)] {
                    if value.as_os_str().is_empty() {
                        problems.push(
                            &sub(name),
                            "required key is missing (or obtain the certificate with `acme`)",
                        );
                    }
                }
            }
            Some(acme) => {
                for (name, value) in [("cert", &tls.cert), ("key", &tls.key)] {
                    if !value.as_os_str().is_empty() {
                        problems.push(
                            &sub(name),
                            "cannot be combined with `acme` (the CA provides the certificate \
                             and key): remove one of them",
                        );
                    }
                }
                let mut seen = std::collections::BTreeSet::new();
                for (j, d) in acme.domains.iter().enumerate() {
                    let lower = d.trim_end_matches('.').to_ascii_lowercase();
                    if !seen.insert(lower) {
                        problems.push(
                            &[&acme_path[..], &[key("domains"), Seg::Idx(j)]].concat(),
                            format!("{d:?} is listed twice"),
                        );
                    }
                }
                if acme.challenge == AcmeChallenge::Http01 && !has_plain {
                    problems.push(
                        &[&acme_path[..], &[key("challenge")]].concat(),
                        "http-01 is answered on a plain listener, and none is configured: add \
                         one on port 80 (`- bind: \"0.0.0.0:80\"`) or use tls-alpn-01",
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        assert!(domain("example.com").is_ok());
        assert!(domain("a-b.example.com.").is_ok());
        assert!(domain("*.example.com").unwrap_err().contains("dns-01"));
        assert!(domain("127.0.0.1").unwrap_err().contains("IP address"));
        assert!(domain("localhost").unwrap_err().contains("single label"));
        assert!(domain("bad_name.com").unwrap_err().contains("label"));
        assert!(domain("-x.com").is_err());
        assert!(domain("a..com").is_err());
        assert!(domain(&format!("{}.com", "a".repeat(64))).is_err());
    }

    #[test]
    fn emails_and_directories() {
        assert!(email("ops@example.com").is_ok());
        assert!(email("mailto:ops@example.com").is_ok());
        assert!(email("ops").is_err());
        assert!(email("a@b@c").is_err());
        assert!(email("a b@c").is_err());
        assert!(directory("https://acme-v02.api.letsencrypt.org/directory").is_ok());
        assert!(directory("https://127.0.0.1:14000/dir").is_ok());
        assert!(
            directory("http://127.0.0.1:14000/dir")
                .unwrap_err()
                .contains("https://")
        );
        assert!(directory("https:///dir").is_err());
        assert!(directory("letsencrypt").is_err());
    }
}
