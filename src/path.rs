//! The canonical form of a request path, computed before routing. Pure, no I/O.
//!
//! Backends decode and normalise paths before they dispatch; a gate that routes on the raw
//! bytes can be made to pick an open route while the backend serves a protected one
//! (`/%61dmin`, `/x/..;/admin`, `/rec/%2e%2e;/rec-auth`). So wsgate computes one canonical
//! form, routes on it, and forwards exactly it: the upstream sees what was authorised.
//!
//! The canonical form (RFC 3986 §6.2.2 normalisation, plus refusals):
//! - percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded; every other
//!   escape keeps its byte with upper-case hex (`%3a` → `%3A`);
//!   printable ASCII that RFC 3986 does not allow raw in a path (`"` `<` `>` `[` `]` `^` `` ` ``
//!   `{` `|` `}`) is percent-encoded;
//! - refused (`400`): anything but a path starting with `/` (asterisk-form, authority-form);
//!   raw non-ASCII or control bytes; `;` raw or as `%3B` (path parameters: Tomcat/Spring strip
//!   them, others don't); backslashes raw or as `%5C`; `%2F`; `%25` (an encoded `%` only serves
//!   double encoding, which a backend or a second proxy that decodes twice turns into anything,
//!   `/%2561dmin` → `/admin`; Spring Security's firewall refuses it for the same reason);
//!   `%00` and other encoded control bytes; escapes without two hex digits; escapes of
//!   bytes ≥ 0x80 that are not valid UTF-8 (overlong `%C0%AE` is a dot to some decoders);
//!   `.` and `..` segments and empty segments (`//`) after decoding, except a final trailing
//!   `/`; segments ending in `.` or a space after decoding (Windows/IIS strip those, so
//!   `/admin.` is `/admin` there); non-ASCII characters whose compatibility form (NFKC)
//!   contains ASCII, such as fullwidth `／` `．` `ａ` or the Kelvin sign (Windows "best fit"
//!   conversion and Unicode-normalising frameworks turn them into `/`, `.`, `a`, `k`).
//!
//! Routing compares the *decoded* segments ([`CanonicalPath::key`]): after the refusals no
//! escape can produce `/`, so segment boundaries are those of the canonical text, and a
//! route matches exactly when a backend that decodes the path would see the same prefix.

use std::fmt::Write as _;

/// A request path in canonical form, with its decoded routing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath {
    text: String,
    key: String,
}

impl CanonicalPath {
    /// The canonical path, as forwarded to the upstream.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The path with every percent-escape decoded (valid UTF-8): what routes are compared with.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl std::fmt::Display for CanonicalPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why a path has no canonical form (each becomes `400 Bad Request` with [`message`](Self::message)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not a path starting with `/` (asterisk-form `*`, authority-form, relative).
    NotAPath,
    /// A raw byte ≥ 0x80.
    NonAscii,
    /// A raw or percent-encoded control byte other than NUL.
    Control,
    /// `%00`.
    Nul,
    /// `;`, raw or `%3B`.
    PathParameter,
    /// `\` raw or `%5C`, or `%2F`.
    EncodedSeparator,
    /// `%25`.
    EncodedPercent,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// Escapes of bytes ≥ 0x80 that are not valid UTF-8.
    BadUtf8,
    /// A `.` or `..` segment after decoding.
    DotSegment,
    /// An empty segment (`//`), except the last one (a trailing `/`).
    EmptySegment,
    /// A segment ending in `.` or a space after decoding.
    TrailingDotOrSpace,
    /// A non-ASCII character whose NFKC form contains ASCII (fullwidth forms, ligatures).
    AsciiLookalike,
}

impl PathError {
    /// The short body of the `400` response.
    pub fn message(self) -> &'static str {
        match self {
            PathError::NotAPath => "request target must be a path starting with \"/\"",
            PathError::NonAscii => "raw non-ASCII byte in path (percent-encode it)",
            PathError::Control => "control character in path (raw or percent-encoded)",
            PathError::Nul => "encoded NUL (%00) in path",
            PathError::PathParameter => "\";\" path parameters (raw or %3B) are not accepted",
            PathError::EncodedSeparator => {
                "backslash or encoded \"/\" or \"\\\" (%2F, %5C) in path"
            }
            PathError::EncodedPercent => "encoded \"%\" (%25): double percent-encoding in path",
            PathError::BadEscape => "invalid percent-escape in path (\"%\" needs two hex digits)",
            PathError::BadUtf8 => "percent-escapes in path are not valid UTF-8",
            PathError::DotSegment => "\".\" or \"..\" dot segment in path (also percent-encoded)",
            PathError::EmptySegment => "empty segment (\"//\") in path",
            PathError::TrailingDotOrSpace => "path segment ends in \".\" or a space",
            PathError::AsciiLookalike => {
                "non-ASCII character in path that normalises to ASCII (fullwidth or compatibility form)"
            }
        }
    }
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Printable ASCII that may stay raw in a canonical path: `pchar` minus `;`, plus `/`.
fn is_raw_ok(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
                | b':'
                | b'@'
                | b'/'
        )
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The canonical form of `path` (the path of the request target, without the query).
pub fn canonicalize(path: &str) -> Result<CanonicalPath, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAPath);
    }
    let mut text = String::with_capacity(bytes.len());
    let mut key = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadEscape);
            };
            i += 3;
            let v = hi << 4 | lo;
            match v {
                _ if is_unreserved(v) => text.push(char::from(v)),
                0 => return Err(PathError::Nul),
                0x01..=0x1f | 0x7f => return Err(PathError::Control),
                b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                b'%' => return Err(PathError::EncodedPercent),
                b';' => return Err(PathError::PathParameter),
                _ => {
                    // Writing to a String cannot fail.
                    let _ = write!(text, "%{v:02X}");
                }
            }
            key.push(v);
            continue;
        }
        match b {
            0x00..=0x1f | 0x7f => return Err(PathError::Control),
            0x80.. => return Err(PathError::NonAscii),
            b';' => return Err(PathError::PathParameter),
            b'\\' => return Err(PathError::EncodedSeparator),
            _ if is_raw_ok(b) => text.push(char::from(b)),
            // `"` `<` `>` `[` `]` `^` `` ` `` `{` `|` `}` space `?` `#`: data, encoded so
            // that each byte has one spelling.
            _ => {
                let _ = write!(text, "%{b:02X}");
            }
        }
        key.push(b);
        i += 1;
    }
    let key = String::from_utf8(key).map_err(|_| PathError::BadUtf8)?;
    if !key.is_ascii() && key.chars().any(ascii_lookalike) {
        return Err(PathError::AsciiLookalike);
    }
    check_segments(&key)?;
    Ok(CanonicalPath { text, key })
}

fn ascii_lookalike(c: char) -> bool {
    use unicode_normalization::UnicodeNormalization;
    !c.is_ascii() && std::iter::once(c).nfkc().any(|n| n.is_ascii())
}

/// Segment rules on the decoded path (no escape can produce `/`, so these are the segments
/// a decoding backend sees).
fn check_segments(key: &str) -> Result<(), PathError> {
    let segments: Vec<&str> = key.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (n, seg) in segments.iter().enumerate() {
        if seg.is_empty() {
            if n != last {
                return Err(PathError::EmptySegment);
            }
        } else if *seg == "." || *seg == ".." {
            return Err(PathError::DotSegment);
        } else if seg.ends_with(['.', ' ']) {
            return Err(PathError::TrailingDotOrSpace);
        }
    }
    Ok(())
}

/// `path` with `query` appended, ready to be parsed as an origin-form request target.
pub fn with_query(path: &CanonicalPath, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{}?{q}", path.as_str()),
        None => path.as_str().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        match canonicalize(raw) {
            Ok(c) => c.as_str().to_owned(),
            Err(e) => panic!("{raw:?} refused: {e}"),
        }
    }

    fn err(raw: &str) -> PathError {
        match canonicalize(raw) {
            Ok(c) => panic!("{raw:?} accepted as {c}"),
            Err(e) => e,
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded_others_upper_cased() {
        let table = [
            ("/", "/"),
            ("/admin", "/admin"),
            ("/admin/", "/admin/"),
            ("/%61dmin", "/admin"),
            ("/%61%64%6D%69%6e", "/admin"),
            ("/a%2Db%5fc%7E%2e1", "/a-b_c~.1"),
            ("/%c3%a4", "/%C3%A4"),
            ("/%E6%BC%A2%E5%AD%97/%CE%A9", "/%E6%BC%A2%E5%AD%97/%CE%A9"),
            ("/a%3ab%2b%20c", "/a%3Ab%2B%20c"),
            ("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,="),
            (
                "/a\"b<c>d[e]f^g`h{i|j}",
                "/a%22b%3Cc%3Ed%5Be%5Df%5Eg%60h%7Bi%7Cj%7D",
            ),
            ("/a%3Fb%23c", "/a%3Fb%23c"),
            ("/x..y/.z/..w", "/x..y/.z/..w"),
            ("/ADMIN", "/ADMIN"),
        ];
        for (raw, want) in table {
            assert_eq!(ok(raw), want, "{raw}");
        }
        assert_eq!(canonicalize("/%61%3a%c3%a4").unwrap().key(), "/a:ä");
    }

    #[test]
    fn refusals() {
        use PathError::*;
        let table = [
            ("", NotAPath),
            ("*", NotAPath),
            ("admin", NotAPath),
            ("/admin;x=1", PathParameter),
            ("/x/..;/admin", PathParameter),
            ("/admin;", PathParameter),
            ("/admin%3b", PathParameter),
            ("/admin%3B/x", PathParameter),
            ("/a\\b", EncodedSeparator),
            ("/a%5cb", EncodedSeparator),
            ("/a%5Cb", EncodedSeparator),
            ("/a%2fb", EncodedSeparator),
            ("/a%2F", EncodedSeparator),
            ("/%252e%252e/admin", EncodedPercent),
            ("/%2561dmin", EncodedPercent),
            ("/%25", EncodedPercent),
            ("/%25%36%31dmin", EncodedPercent),
            ("/a%00", Nul),
            ("/a%0a", Control),
            ("/a%0D", Control),
            ("/a%7f", Control),
            ("/a\tb", Control),
            ("/a\u{7f}", Control),
            ("/ä", NonAscii),
            ("/a%", BadEscape),
            ("/a%4", BadEscape),
            ("/a%zz", BadEscape),
            ("/a%4g", BadEscape),
            ("/a%%41", BadEscape),
            ("/%c0%ae%c0%ae/admin", BadUtf8),
            ("/%c0%af", BadUtf8),
            ("/%e0%80%ae", BadUtf8),
            ("/%ed%a0%80", BadUtf8),
            ("/%ff", BadUtf8),
            ("/%c3", BadUtf8),
            ("/.", DotSegment),
            ("/..", DotSegment),
            ("/./admin", DotSegment),
            ("/x/../admin", DotSegment),
            ("/x/%2e%2e/admin", DotSegment),
            ("/x/%2E%2e/admin", DotSegment),
            ("/x/.%2E/admin", DotSegment),
            ("/admin/.", DotSegment),
            ("/admin/./", DotSegment),
            ("//admin", EmptySegment),
            ("/x//admin", EmptySegment),
            ("/admin//", EmptySegment),
            ("/admin.", TrailingDotOrSpace),
            ("/admin%2e", TrailingDotOrSpace),
            ("/admin../x", TrailingDotOrSpace),
            ("/...", TrailingDotOrSpace),
            ("/admin%20", TrailingDotOrSpace),
            ("/admin%20/x", TrailingDotOrSpace),
            ("/%EF%BC%8Fadmin", AsciiLookalike),
            ("/x/%EF%BC%8E%EF%BC%8E/admin", AsciiLookalike),
            ("/%EF%BD%81dmin", AsciiLookalike),
            ("/%E2%84%AAey", AsciiLookalike),
            ("/%E2%80%A4", AsciiLookalike),
            ("/%EF%AC%81le", AsciiLookalike),
            ("/%C5%BF", AsciiLookalike),
        ];
        for (raw, want) in table {
            assert_eq!(err(raw), want, "{raw}");
        }
    }

    #[test]
    fn canonical_form_is_a_fixed_point() {
        for raw in [
            "/%61dmin/%c3%a4%3a",
            "/a\"b{c}",
            "/a%3Fb%23c",
            "/a:b@c",
            "/x..y/.z/",
        ] {
            let once = ok(raw);
            assert_eq!(ok(&once), once, "{raw}");
            assert_eq!(
                canonicalize(&once).unwrap().key(),
                canonicalize(raw).unwrap().key()
            );
        }
    }

    #[test]
    fn query_is_appended_as_is() {
        let c = canonicalize("/%61").unwrap();
        assert_eq!(with_query(&c, Some("x=%2e;y")), "/a?x=%2e;y");
        assert_eq!(with_query(&c, None), "/a");
    }
}
