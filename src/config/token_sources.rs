//! `auth.NAME.from`: where a JWT authenticator reads its token, checked into
//! [`TokenSource`]s. Shared by config validation (messages under the YAML path) and the
//! authenticator's build (a programmatic config gets the same rules).

use super::types::{JwtConfig, TokenSource, TokenSourceConfig};
use super::validate;

/// The default `query_param`; naming another one next to `from` is a conflict.
const DEFAULT_QUERY_PARAM: &str = "token";

/// Headers that cannot carry a token: hop-by-hop ones are dropped on the way, and the
/// dedicated sources (`cookie:`, `subprotocol:`) read the others field by field.
const NOT_A_TOKEN_HEADER: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "cookie",
    "sec-websocket-protocol",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "x-auth-user",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "forwarded",
];

/// The sources of `j`, in order; errors are (field relative to the authenticator, message),
/// e.g. (`from[1].cookie`, ...).
pub(crate) fn resolve(j: &JwtConfig) -> Result<Vec<TokenSource>, Vec<(String, String)>> {
    let Some(list) = &j.from else {
        return Ok(vec![
            TokenSource::Query(j.query_param.clone()),
            TokenSource::Bearer,
        ]);
    };
    let mut problems = Vec::new();
    if j.query_param != DEFAULT_QUERY_PARAM {
        problems.push((
            "query_param".to_owned(),
            "set either query_param or from, not both: list the parameter in from as \
             `query: NAME`"
                .to_owned(),
        ));
    }
    if list.is_empty() {
        problems.push((
            "from".to_owned(),
            "must list at least one source (remove it for the default: query parameter and \
             Authorization: Bearer)"
                .to_owned(),
        ));
    }
    let mut out: Vec<TokenSource> = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        match one(entry) {
            Ok(source) if out.contains(&source) => {
                problems.push((
                    format!("from[{i}]"),
                    "this source is listed twice".to_owned(),
                ));
            }
            Ok(source) => out.push(source),
            Err((key, message)) => problems.push((format!("from[{i}]{key}"), message)),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// One entry; the error's key is `.query`/`.header`/... or empty for the entry itself.
fn one(entry: &TokenSourceConfig) -> Result<TokenSource, (String, String)> {
    let set: Vec<(&str, &String)> = [
        ("query", &entry.query),
        ("header", &entry.header),
        ("cookie", &entry.cookie),
        ("subprotocol", &entry.subprotocol),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
    .collect();
    let [(key, value)] = set.as_slice() else {
        return Err((
            String::new(),
            "each source is one of query: NAME, header: NAME, cookie: NAME or \
             subprotocol: PREFIX"
                .to_owned(),
        ));
    };
    let at = |m: String| (format!(".{key}"), m);
    match *key {
        "query" => validate::query_param(value)
            .map(|()| TokenSource::Query((*value).clone()))
            .map_err(at),
        "header" => {
            let name = http::HeaderName::from_bytes(value.as_bytes())
                .map_err(|_| at(format!("\"{}\" is not a header name", value.escape_debug())))?;
            if name == http::header::AUTHORIZATION {
                return Ok(TokenSource::Bearer);
            }
            if NOT_A_TOKEN_HEADER.contains(&name.as_str()) {
                let hint = match name.as_str() {
                    "cookie" => " (use cookie: NAME)",
                    "sec-websocket-protocol" => " (use subprotocol: PREFIX)",
                    _ => "",
                };
                return Err(at(format!("{name} cannot carry a token{hint}")));
            }
            Ok(TokenSource::Header(name))
        }
        "cookie" => {
            // RFC 6265 cookie-name is an RFC 2616 token.
            let ok = value
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
            if ok {
                Ok(TokenSource::Cookie((*value).clone()))
            } else {
                Err(at(format!(
                    "\"{}\" is not a cookie name (letters, digits and !#$%&'*+-.^_`|~)",
                    value.escape_debug()
                )))
            }
        }
        _ => {
            // A subprotocol is an RFC 2616 token too; the prefix is the start of one.
            let ok = value
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
            if ok {
                Ok(TokenSource::Subprotocol {
                    prefix: (*value).clone(),
                    base64url: value.starts_with("base64url."),
                })
            } else {
                Err(at(format!(
                    "\"{}\" cannot start a subprotocol (letters, digits and !#$%&'*+-.^_`|~)",
                    value.escape_debug()
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(k: &str, v: &str) -> TokenSourceConfig {
        let mut s = TokenSourceConfig::default();
        let slot = match k {
            "query" => &mut s.query,
            "header" => &mut s.header,
            "cookie" => &mut s.cookie,
            _ => &mut s.subprotocol,
        };
        *slot = Some(v.to_owned());
        s
    }

    fn with(from: Vec<TokenSourceConfig>) -> JwtConfig {
        JwtConfig {
            from: Some(from),
            ..JwtConfig::default()
        }
    }

    #[test]
    fn default_is_the_query_parameter_then_bearer() {
        let j = JwtConfig {
            query_param: "access_token".into(),
            ..JwtConfig::default()
        };
        assert_eq!(
            resolve(&j),
            Ok(vec![
                TokenSource::Query("access_token".into()),
                TokenSource::Bearer
            ])
        );
    }

    #[test]
    fn every_kind_resolves_in_order() {
        let j = with(vec![
            src("cookie", "session_jwt"),
            src("subprotocol", "base64url.bearer.authorization.k8s.io."),
            src("header", "authorization"),
            src("header", "X-Token"),
            src("query", "t"),
            src("subprotocol", "jwt."),
        ]);
        assert_eq!(
            resolve(&j),
            Ok(vec![
                TokenSource::Cookie("session_jwt".into()),
                TokenSource::Subprotocol {
                    prefix: "base64url.bearer.authorization.k8s.io.".into(),
                    base64url: true
                },
                TokenSource::Bearer,
                TokenSource::Header(http::HeaderName::from_static("x-token")),
                TokenSource::Query("t".into()),
                TokenSource::Subprotocol {
                    prefix: "jwt.".into(),
                    base64url: false
                },
            ])
        );
    }

    #[test]
    fn bad_sources_are_named_by_index() {
        let mut two = src("query", "a");
        two.cookie = Some("b".into());
        let j = JwtConfig {
            query_param: "tok".into(),
            ..with(vec![
                two,
                TokenSourceConfig::default(),
                src("header", "Cookie"),
                src("header", "bad header"),
                src("cookie", "a;b"),
                src("subprotocol", "x,y"),
                src("query", "a b"),
                src("cookie", "s"),
                src("cookie", "s"),
                src("header", "Sec-WebSocket-Protocol"),
            ])
        };
        let errs = resolve(&j).expect_err("fails");
        let fields: Vec<&str> = errs.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "query_param",
                "from[0]",
                "from[1]",
                "from[2].header",
                "from[3].header",
                "from[4].cookie",
                "from[5].subprotocol",
                "from[6].query",
                "from[8]",
                "from[9].header",
            ],
            "{errs:?}"
        );
        assert!(errs[3].1.contains("use cookie: NAME"), "{errs:?}");
        assert!(errs[9].1.contains("use subprotocol: PREFIX"), "{errs:?}");
        assert_eq!(errs[8].1, "this source is listed twice");
        assert!(resolve(&with(vec![])).is_err());
    }
}
