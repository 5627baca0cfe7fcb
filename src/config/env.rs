//! `${VAR}` expansion inside string values.
//!
//! Expansion runs on already-parsed YAML strings, so a secret full of YAML-special characters
//! (`:`, `#`, quotes) cannot change the document's structure.

/// Expands every `${NAME}` in `input` from `env`.
///
/// `$${` yields a literal `${`; any other `$` is kept as is. Returns every problem found in the
/// string (unset variables, malformed references); expansion stops at an unclosed `${` because
/// nothing after it can be interpreted reliably.
pub(crate) fn expand(
    input: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(input.len());
    let mut errors = Vec::new();
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let Some(end) = tail.find('}') else {
                errors.push("unclosed \"${\" (write \"$${\" for a literal \"${\")".to_string());
                return Err(errors);
            };
            let name = &tail[..end];
            if name.is_empty() {
                errors.push("empty variable reference \"${}\"".to_string());
            } else if !is_var_name(name) {
                errors.push(format!(
                    "invalid environment variable name \"{name}\" \
                     (use letters, digits and '_', not starting with a digit)"
                ));
            } else {
                match env(name) {
                    Some(value) => out.push_str(&value),
                    None => errors.push(format!("environment variable {name} is not set")),
                }
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".into()),
            "B_2" => Some("b: #\"'".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_several_variables() {
        assert_eq!(expand("x${A}-${B_2}y", &env).unwrap(), "xalpha-b: #\"'y");
        assert_eq!(expand("${EMPTY}", &env).unwrap(), "");
    }

    #[test]
    fn plain_strings_and_lone_dollars_are_untouched() {
        assert_eq!(expand("no vars", &env).unwrap(), "no vars");
        assert_eq!(expand("$ 5$ $A $", &env).unwrap(), "$ 5$ $A $");
        assert_eq!(expand("$$", &env).unwrap(), "$$");
    }

    #[test]
    fn double_dollar_brace_is_literal() {
        assert_eq!(expand("$${A} ${A}", &env).unwrap(), "${A} alpha");
    }

    #[test]
    fn unset_variables_are_all_named() {
        let errs = expand("${NOPE}${A}${ALSO_NOPE}", &env).unwrap_err();
        assert_eq!(
            errs,
            vec![
                "environment variable NOPE is not set",
                "environment variable ALSO_NOPE is not set"
            ]
        );
    }

    #[test]
    fn malformed_references_are_errors() {
        assert!(expand("${A", &env).unwrap_err()[0].contains("unclosed"));
        assert!(expand("${}", &env).unwrap_err()[0].contains("empty"));
        assert!(expand("${1A}", &env).unwrap_err()[0].contains("invalid"));
        assert!(expand("${A-B}", &env).unwrap_err()[0].contains("invalid"));
        // Multi-byte characters around references must not break slicing.
        assert_eq!(expand("é${A}ü$", &env).unwrap(), "éalphaü$");
        assert!(expand("${é}", &env).is_err());
    }
}
