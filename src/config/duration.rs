//! Duration strings (`30s`, `5m`, `1m30s`, `500ms`).

use std::time::Duration;

/// Parses a human duration; a bare number is refused because its unit would be a guess.
pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("expected a duration such as \"30s\", got an empty string".to_string());
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bare_number(text));
    }
    humantime::parse_duration(text).map_err(|e| {
        format!(
            "invalid duration \"{text}\" ({e}); write e.g. \"30s\", \"5m\", \"1h\", \"500ms\" or \"1m30s\""
        )
    })
}

/// The message for a duration written without a unit.
pub(crate) fn bare_number(number: &str) -> String {
    format!("a bare number is not a duration: add a unit, e.g. \"{number}s\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_common_forms() {
        assert_eq!(parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn bare_numbers_suggest_a_unit() {
        let e = parse("30").unwrap_err();
        assert!(e.contains("\"30s\""), "{e}");
        assert!(parse("0").is_err());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse("").is_err());
        assert!(parse("thirty seconds").is_err());
        assert!(parse("-5s").is_err());
        assert!(parse("5 parsecs").is_err());
    }
}
