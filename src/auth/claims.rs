//! `claims_to_headers`: JWT claims as upstream request headers.
//!
//! A claim is found by its exact name first (Auth0's namespaced claims are URLs with dots),
//! then, for a name with dots, as a path into nested objects (Keycloak's
//! `realm_access.roles`). Strings, numbers and booleans become their text; a list of them is
//! joined with `,`. An absent or `null` claim, or an empty list, sets no header. A value that
//! cannot be one header value — an object, a nested list, a list item containing a comma
//! (the backend could not split it back), a control character, more than
//! [`MAX_VALUE_BYTES`] — refuses the token (`bad_claims`): the backend relies on these
//! headers, so it must not get a silently different one.

use http::{HeaderName, HeaderValue};
use serde_json::Value;

/// Longest header value made from a claim.
pub(crate) const MAX_VALUE_BYTES: usize = 4096;

/// The value of `name` in `claims`.
fn find<'a>(claims: &'a Value, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    if !name.contains('.') {
        return None;
    }
    name.split('.').try_fold(claims, |v, part| v.get(part))
}

/// One scalar as text; `None` for anything else.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The header value of one claim: `Ok(None)` sets no header, `Err` names the claim.
fn value(v: &Value) -> Result<Option<HeaderValue>, ()> {
    let text = match v {
        Value::Null => return Ok(None),
        Value::Array(items) if items.is_empty() => return Ok(None),
        Value::Array(items) => {
            let parts = items
                .iter()
                .map(|i| scalar(i).filter(|s| !s.contains(',')))
                .collect::<Option<Vec<_>>>()
                .ok_or(())?;
            parts.join(",")
        }
        v => scalar(v).ok_or(())?,
    };
    // UTF-8 passes as bytes (obs-text); control characters never do.
    if text.len() > MAX_VALUE_BYTES || text.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(());
    }
    HeaderValue::from_str(&text).map(Some).map_err(|_| ())
}

/// The upstream headers for `map` (claim → header); the first unrepresentable claim's name
/// on failure.
pub(crate) fn headers<'m>(
    claims: &Value,
    map: &'m [(String, HeaderName)],
) -> Result<Vec<(HeaderName, HeaderValue)>, &'m str> {
    let mut out = Vec::with_capacity(map.len());
    for (claim, header) in map {
        let Some(v) = find(claims, claim) else {
            continue;
        };
        match value(v) {
            Ok(Some(v)) => out.push((header.clone(), v)),
            Ok(None) => {}
            Err(()) => return Err(claim),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(pairs: &[(&str, &str)]) -> Vec<(String, HeaderName)> {
        pairs
            .iter()
            .map(|(c, h)| {
                (
                    (*c).to_owned(),
                    HeaderName::from_bytes(h.as_bytes()).expect("name"),
                )
            })
            .collect()
    }

    fn one(claims: Value, claim: &str) -> Result<Option<String>, ()> {
        let m = map(&[(claim, "x-out")]);
        headers(&claims, &m)
            .map(|h| {
                h.first()
                    .map(|(_, v)| String::from_utf8_lossy(v.as_bytes()).into_owned())
            })
            .map_err(|_| ())
    }

    #[test]
    fn kinds_of_values() {
        assert_eq!(one(json!({"r": "admin"}), "r"), Ok(Some("admin".into())));
        assert_eq!(one(json!({"r": 42}), "r"), Ok(Some("42".into())));
        assert_eq!(one(json!({"r": 1.5}), "r"), Ok(Some("1.5".into())));
        assert_eq!(one(json!({"r": true}), "r"), Ok(Some("true".into())));
        assert_eq!(
            one(json!({"r": ["a", "b", 3]}), "r"),
            Ok(Some("a,b,3".into()))
        );
        assert_eq!(one(json!({"r": "José"}), "r"), Ok(Some("José".into())));
        assert_eq!(one(json!({"r": ""}), "r"), Ok(Some(String::new())));
        assert_eq!(one(json!({"r": []}), "r"), Ok(None));
        assert_eq!(one(json!({"r": null}), "r"), Ok(None));
        assert_eq!(one(json!({"other": 1}), "r"), Ok(None));
        for bad in [
            json!({"r": {"a": 1}}),
            json!({"r": [["a"]]}),
            json!({"r": ["a,b", "c"]}),
            json!({"r": "a\r\nX-Evil: 1"}),
            json!({"r": "tab\there"}),
            json!({"r": "x".repeat(MAX_VALUE_BYTES + 1)}),
        ] {
            assert_eq!(one(bad.clone(), "r"), Err(()), "{bad}");
        }
    }

    #[test]
    fn exact_name_first_then_nested_path() {
        let c = json!({
            "https://app.example/roles": ["a"],
            "realm_access": {"roles": ["admin", "user"]},
            "a.b": "flat",
            "a": {"b": "nested"},
        });
        assert_eq!(
            one(c.clone(), "https://app.example/roles"),
            Ok(Some("a".into()))
        );
        assert_eq!(
            one(c.clone(), "realm_access.roles"),
            Ok(Some("admin,user".into()))
        );
        assert_eq!(one(c.clone(), "a.b"), Ok(Some("flat".into())));
        assert_eq!(one(c, "realm_access.missing"), Ok(None));
    }

    #[test]
    fn the_failing_claim_is_named() {
        let m = map(&[("ok", "x-ok"), ("bad", "x-bad")]);
        assert_eq!(headers(&json!({"ok": 1, "bad": {}}), &m), Err("bad"));
        let h = headers(&json!({"ok": 1}), &m).expect("ok");
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].0, "x-ok");
    }
}
