//! htpasswd parsing: `user:hash` lines with bcrypt or argon2id hashes, and the weak hashes
//! Apache's `htpasswd` writes (apr1 MD5 by default, `{SHA}` with `-s`) so an nginx-era file
//! works as it is. crypt(3) DES lines are refused: they read only 8 password bytes.
//!
//! Every hash is parsed at load so that a typo shows up in `wsgate check`, not as a
//! mysteriously failing login. Error messages name the line and the user but never
//! echo the hash: a hash in a log is an offline-cracking gift.

use std::collections::HashMap;
use std::str::FromStr;

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use base64::Engine as _;
use sha1::Digest as _;
use subtle::ConstantTimeEq as _;

/// The hint appended to every "unsupported hash" message.
const SUPPORTED_HINT: &str = "use bcrypt or argon2id; see `wsgate hash-password`";

/// The alphabet of crypt(3) salts and checksums.
fn is_crypt64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'/'
}

/// Longest password bcrypt reads in full (it ignores every byte after these).
pub(crate) const BCRYPT_MAX_PASSWORD: usize = 72;

/// A verified-parseable password hash.
#[derive(Clone)]
pub(crate) enum StoredHash {
    /// `$2a$` / `$2b$` / `$2y$` bcrypt, 60 characters.
    Bcrypt(String),
    /// argon2id PHC string.
    Argon2id(String),
    /// Apache's MD5-crypt variant, `$apr1$salt$checksum` (what `htpasswd -m`, the default, writes).
    Apr1(String),
    /// `{SHA}` + base64 of the unsalted SHA-1 digest (`htpasswd -s`), decoded.
    Sha1([u8; 20]),
}

impl StoredHash {
    /// Slow: runs the hash. Call it on a blocking thread.
    pub(crate) fn verify(&self, password: &[u8]) -> bool {
        match self {
            // bcrypt compares the digests in constant time itself (it uses `subtle`).
            // bcrypt reads only the first 72 bytes; a longer password would be judged on a
            // prefix (any suffix accepted), so it is refused. Exactly 72 bytes is checked in full.
            StoredHash::Bcrypt(_) if password.len() > BCRYPT_MAX_PASSWORD => false,
            StoredHash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
            StoredHash::Argon2id(h) => match PasswordHash::new(h) {
                // `verify_password` reads algorithm, version and params from the hash and
                // compares the output in constant time.
                Ok(parsed) => Argon2::default().verify_password(password, &parsed).is_ok(),
                // Cannot happen: the string was parsed at load. Fail closed anyway.
                Err(_) => false,
            },
            // crypt3_rs recomputes the hash with the stored salt; its own comparison is a
            // plain `==`, so the strings are compared here in constant time instead.
            #[allow(deprecated)] // deprecated for new passwords, which is not this use
            StoredHash::Apr1(h) => crypt3_rs::crypt::apr1::hash_with(h.as_str(), password)
                .is_ok_and(|computed| computed.as_str().as_bytes().ct_eq(h.as_bytes()).into()),
            StoredHash::Sha1(digest) => sha1::Sha1::digest(password).ct_eq(digest).into(),
        }
    }

    /// A weak scheme's label for warnings (`None` for bcrypt and argon2id).
    pub(crate) fn weakness(&self) -> Option<&'static str> {
        match self {
            StoredHash::Bcrypt(_) | StoredHash::Argon2id(_) => None,
            StoredHash::Apr1(_) => Some("$apr1$ (MD5, 1000 rounds)"),
            StoredHash::Sha1(_) => Some("{SHA} (one unsalted SHA-1)"),
        }
    }
}

impl std::fmt::Debug for StoredHash {
    // Hashes must not reach logs, even through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoredHash::Bcrypt(_) => f.write_str("Bcrypt(<redacted>)"),
            StoredHash::Argon2id(_) => f.write_str("Argon2id(<redacted>)"),
            StoredHash::Apr1(_) => f.write_str("Apr1(<redacted>)"),
            StoredHash::Sha1(_) => f.write_str("Sha1(<redacted>)"),
        }
    }
}

/// The parsed file: user → hash.
#[derive(Debug, Default)]
pub(crate) struct Htpasswd {
    /// Users in file order's hash map (order is irrelevant for lookups).
    pub(crate) users: HashMap<String, StoredHash>,
    /// A real hash from the file, of its most common algorithm and cost, verified against for
    /// unknown users so that their rejection costs as much as most wrong passwords (no user
    /// enumeration by timing).
    pub(crate) dummy: Option<StoredHash>,
}

/// Parses htpasswd text; returns every problem found (messages without the field name).
pub(crate) fn parse(bytes: &[u8]) -> Result<Htpasswd, Vec<String>> {
    let mut out = Htpasswd::default();
    let mut first_line: HashMap<String, usize> = HashMap::new();
    let mut errors = Vec::new();
    // (algorithm and cost, users with it, one of their hashes), in order of first appearance.
    let mut classes: Vec<(CostClass, usize, StoredHash)> = Vec::new();
    for (idx, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let lineno = idx + 1;
        let Ok(line) = std::str::from_utf8(raw) else {
            errors.push(format!("line {lineno}: not valid UTF-8"));
            continue;
        };
        // Tolerate CRLF files and stray trailing blanks.
        let line = line.trim_end();
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            errors.push(format!("line {lineno}: expected `user:hash`"));
            continue;
        };
        if user.is_empty() {
            errors.push(format!("line {lineno}: empty user name"));
            continue;
        }
        let stored = match parse_hash(hash) {
            Ok(h) => h,
            Err(why) => {
                errors.push(format!("line {lineno}: user {user:?}: {why}"));
                continue;
            }
        };
        if let Some(first) = first_line.get(user) {
            errors.push(format!(
                "line {lineno}: user {user:?}: duplicate user (first on line {first})"
            ));
            continue;
        }
        first_line.insert(user.to_owned(), lineno);
        let class = cost_class(&stored);
        match classes.iter_mut().find(|(c, _, _)| *c == class) {
            Some((_, count, _)) => *count += 1,
            None => classes.push((class, 1, stored.clone())),
        }
        out.users.insert(user.to_owned(), stored);
    }
    // Most users; a tie goes to the class seen first (`max_by_key` keeps the last maximum,
    // hence the reversed scan).
    out.dummy = classes
        .into_iter()
        .rev()
        .max_by_key(|(_, count, _)| *count)
        .map(|(_, _, h)| h);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Users whose hash parses but is weak: (line, user, scheme label), in file order. Lines that
/// don't parse are left to [`parse`]'s errors.
pub(crate) fn weak_users(bytes: &[u8]) -> Vec<(usize, String, &'static str)> {
    let text = String::from_utf8_lossy(bytes);
    text.split('\n')
        .enumerate()
        .filter_map(|(idx, line)| {
            let (user, hash) = line.trim_end().split_once(':')?;
            let weakness = parse_hash(hash).ok()?.weakness()?;
            Some((idx + 1, user.to_owned(), weakness))
        })
        .collect()
}

/// What decides how long a verification takes: the algorithm and its cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CostClass {
    /// bcrypt at this cost (the `$2a$`/`$2b$`/`$2y$` variants cost the same).
    Bcrypt(u32),
    /// argon2id with (memory KiB, iterations, lanes, output length).
    Argon2id(u32, u32, u32, Option<usize>),
    /// apr1: fixed 1000 MD5 rounds.
    Apr1,
    /// `{SHA}`: one SHA-1.
    Sha1,
    /// Unreadable parameters (cannot happen after `parse_hash`).
    Unknown,
}

fn cost_class(h: &StoredHash) -> CostClass {
    match h {
        StoredHash::Bcrypt(s) => bcrypt::HashParts::from_str(s)
            .map_or(CostClass::Unknown, |p| CostClass::Bcrypt(p.get_cost())),
        StoredHash::Argon2id(s) => PasswordHash::new(s)
            .ok()
            .and_then(|p| argon2::Params::try_from(&p).ok())
            .map_or(CostClass::Unknown, |p| {
                CostClass::Argon2id(p.m_cost(), p.t_cost(), p.p_cost(), p.output_len())
            }),
        StoredHash::Apr1(_) => CostClass::Apr1,
        StoredHash::Sha1(_) => CostClass::Sha1,
    }
}

/// Classifies and validates one hash; the error never contains the hash itself.
fn parse_hash(hash: &str) -> Result<StoredHash, String> {
    if hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$") {
        return match bcrypt::HashParts::from_str(hash) {
            Ok(_) => Ok(StoredHash::Bcrypt(hash.to_owned())),
            Err(_) => Err("malformed bcrypt hash".to_owned()),
        };
    }
    if hash.starts_with("$argon2id$") {
        return parse_argon2id(hash).map(|()| StoredHash::Argon2id(hash.to_owned()));
    }
    if let Some(rest) = hash.strip_prefix("$apr1$") {
        return parse_apr1(rest).map(|()| StoredHash::Apr1(hash.to_owned()));
    }
    if let Some(b64) = hash.strip_prefix("{SHA}") {
        let digest = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .and_then(|d| <[u8; 20]>::try_from(d).ok())
            .ok_or("malformed {SHA} hash: expected base64 of a 20-byte SHA-1 digest")?;
        return Ok(StoredHash::Sha1(digest));
    }
    if hash.len() == 13 && hash.bytes().all(is_crypt64) {
        return Err(
            "crypt(3) DES hashes are refused: DES crypt reads only the first 8 \
                    characters of a password; re-hash with `wsgate hash-password`"
                .to_owned(),
        );
    }
    Err(format!(
        "unsupported hash {} ({SUPPORTED_HINT})",
        scheme_label(hash)
    ))
}

/// Checks `salt$checksum` after `$apr1$`: a salt of 1–8 and a checksum of 22 crypt(3)
/// characters, as `htpasswd` writes them. A longer salt would be cut to 8 by the hashing
/// library, so such a line could never match; it is refused here rather than at login.
fn parse_apr1(rest: &str) -> Result<(), String> {
    let bad =
        || "malformed $apr1$ hash: expected $apr1$<1-8 character salt>$<22 characters>".to_owned();
    let (salt, checksum) = rest.split_once('$').ok_or_else(bad)?;
    let salt_ok = (1..=8).contains(&salt.len()) && salt.bytes().all(is_crypt64);
    let sum_ok = checksum.len() == 22 && checksum.bytes().all(is_crypt64);
    if salt_ok && sum_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// Checks an argon2id PHC string completely (version, params, salt, output).
fn parse_argon2id(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash).map_err(|e| format!("malformed argon2id hash: {e}"))?;
    // Version 0x10 is the pre-standard variant; only v=19 (0x13) is accepted. An absent
    // version means 0x13 per the PHC format used by the argon2 crate.
    if parsed.version.is_some_and(|v| v != 19) {
        return Err("malformed argon2id hash: only v=19 is supported".to_owned());
    }
    argon2::Params::try_from(&parsed)
        .map_err(|e| format!("malformed argon2id hash: bad parameters: {e}"))?;
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err("malformed argon2id hash: missing salt or output".to_owned());
    }
    Ok(())
}

/// A printable name for an unsupported hash scheme that cannot leak the hash:
/// only a short, purely alphanumeric `$id$` or `{ID}` prefix is ever shown.
fn scheme_label(hash: &str) -> String {
    let short_ident = |s: &str| {
        !s.is_empty() && s.len() <= 12 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if let Some(rest) = hash.strip_prefix('$')
        && let Some((id, _)) = rest.split_once('$')
        && short_ident(id)
    {
        return format!("${id}$");
    }
    if let Some(rest) = hash.strip_prefix('{')
        && let Some((id, _)) = rest.split_once('}')
        && short_ident(id)
    {
        return format!("{{{id}}}");
    }
    if hash.is_empty() {
        return "(empty)".to_owned();
    }
    "(plain crypt or unknown format)".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Cost 4 keeps the tests fast; parsing does not care about the cost.
    fn bcrypt_hash(pw: &str) -> String {
        bcrypt::hash_with_result(pw, 4)
            .expect("bcrypt hash")
            .format_for_version(bcrypt::Version::TwoY)
    }

    fn argon_hash(pw: &str) -> String {
        crate::auth::hash_argon2id(pw, argon2::Params::new(64, 1, 1, None).expect("params"))
            .expect("argon2 hash")
    }

    #[test]
    fn parses_good_lines_comments_and_blanks() {
        let b = bcrypt_hash("pw1");
        let b2a = b.replacen("$2y$", "$2a$", 1);
        let a = argon_hash("pw2");
        let text = format!("# users\n\nalice:{b}\r\n  \nbob:{a}\ncarol:{b2a}\n");
        let h = parse(text.as_bytes()).expect("parses");
        assert_eq!(h.users.len(), 3);
        assert!(h.users["alice"].verify(b"pw1"));
        assert!(!h.users["alice"].verify(b"pw2"));
        assert!(h.users["bob"].verify(b"pw2"));
        assert!(!h.users["bob"].verify(b"pw1"));
        assert!(h.users["carol"].verify(b"pw1"));
        assert!(h.dummy.is_some());
    }

    fn one_error(text: &str) -> String {
        let errs = parse(text.as_bytes()).expect_err("must fail");
        assert_eq!(errs.len(), 1, "{errs:?}");
        errs.into_iter().next().unwrap_or_default()
    }

    #[test]
    fn verifies_apr1_and_sha_from_published_vectors() {
        // OpenSSL's documented `openssl passwd -apr1 -salt xxxxxxxx password`, and
        // base64(SHA-1("password")) as `htpasswd -s` writes it.
        let text = "a:$apr1$xxxxxxxx$dxHfLAsjHkDRmG83UXe8K0\ns:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n";
        let h = parse(text.as_bytes()).expect("parses");
        assert!(h.users["a"].verify(b"password"));
        assert!(h.users["s"].verify(b"password"));
        for wrong in [&b"Password"[..], b"password ", b"passwor", b""] {
            assert!(!h.users["a"].verify(wrong));
            assert!(!h.users["s"].verify(wrong));
        }
        // A short salt (older htpasswd builds, hand-made lines) is read as written.
        // (`openssl passwd -apr1 -salt ab password`.)
        let h = parse(b"a:$apr1$ab$vZXhMKiOqO1yMl8FLQFrs0\n").expect("2-character salt");
        assert!(h.users["a"].verify(b"password"));
        assert!(!h.users["a"].verify(b"passworD"));
        // Unknown users of an apr1 file are judged against an apr1 dummy (timing parity).
        assert_eq!(class_of(h.dummy.as_ref().expect("dummy")), "apr1");
    }

    #[test]
    fn rejects_malformed_weak_hashes_and_des_without_printing_them() {
        for bad in [
            "u:$apr1$toolongsalt$dxHfLAsjHkDRmG83UXe8K0\n",
            "u:$apr1$xxxxxxxx$dxHfLAsjHkDRmG83UXe8K\n",
            "u:$apr1$xx!xxxxx$dxHfLAsjHkDRmG83UXe8K0\n",
            "u:$apr1$$dxHfLAsjHkDRmG83UXe8K0\n",
            "u:$apr1$xxxxxxxx\n",
        ] {
            let e = one_error(bad);
            assert!(
                e.starts_with("line 1: user \"u\": malformed $apr1$ hash"),
                "{bad}: {e}"
            );
            assert!(!e.contains("dxHf"), "{e}");
        }
        let e = one_error("u:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g\n");
        assert!(e.contains("malformed {SHA} hash"), "{e}");
        let e = one_error("u:{SHA}AAAA\n");
        assert!(e.contains("malformed {SHA} hash"), "{e}");
        assert!(!e.contains("AAAA"), "{e}");
        let e = one_error("u:abJnggxhB/yWI\n");
        assert!(e.contains("crypt(3) DES hashes are refused"), "{e}");
        assert!(!e.contains("abJngg"), "{e}");
    }

    #[test]
    fn weak_users_are_listed_with_their_lines() {
        let b = bcrypt_hash("x");
        let text = format!(
            "# c\nbc:{b}\na:$apr1$xxxxxxxx$dxHfLAsjHkDRmG83UXe8K0\nbad:$apr1$\ns:{{SHA}}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n"
        );
        let weak = weak_users(text.as_bytes());
        assert_eq!(
            weak,
            vec![
                (3, "a".to_owned(), "$apr1$ (MD5, 1000 rounds)"),
                (5, "s".to_owned(), "{SHA} (one unsalted SHA-1)"),
            ]
        );
    }

    #[test]
    fn rejects_unsupported_schemes_without_printing_hash() {
        let e = one_error("u:$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo\n");
        assert!(e.contains("unsupported hash $argon2i$"), "{e}");
        let e = one_error("u:$argon2d$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo\n");
        assert!(e.contains("unsupported hash $argon2d$"), "{e}");
        let e = one_error("u:$6$salt$hash\n");
        assert!(e.contains("unsupported hash $6$"), "{e}");
        assert!(!e.contains("salt"), "{e}");
        let e = one_error("u:{SSHA}c2FsdHNhbHQ=\n");
        assert!(e.contains("unsupported hash {SSHA}"), "{e}");
        let e = one_error("u:\n");
        assert!(e.contains("unsupported hash (empty)"), "{e}");
    }

    #[test]
    fn rejects_malformed_supported_hashes() {
        let e = one_error("u:$2y$12$tooshort\n");
        assert_eq!(e, "line 1: user \"u\": malformed bcrypt hash");
        let e = one_error("u:$argon2id$v=19$m=64,t=1,p=1$!!!$@@@\n");
        assert!(
            e.starts_with("line 1: user \"u\": malformed argon2id hash"),
            "{e}"
        );
        let e = one_error("u:$argon2id$v=16$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo\n");
        assert!(e.contains("v=19"), "{e}");
    }

    #[test]
    fn rejects_duplicates_missing_colon_empty_user_and_non_utf8() {
        let b = bcrypt_hash("x");
        let e = one_error(&format!("a:{b}\nb:{b}\na:{b}\n"));
        assert_eq!(e, "line 3: user \"a\": duplicate user (first on line 1)");
        assert_eq!(one_error("justauser\n"), "line 1: expected `user:hash`");
        assert_eq!(one_error(&format!(":{b}\n")), "line 1: empty user name");
        let mut bytes = format!("a:{b}\n").into_bytes();
        bytes.extend_from_slice(b"\xff\xfe:x\n");
        let errs = parse(&bytes).expect_err("must fail");
        assert_eq!(errs, vec!["line 2: not valid UTF-8".to_owned()]);
    }

    #[test]
    fn reports_every_bad_line() {
        let errs = parse(b"a:$apr1$x$y\nb:{SHA}zz\n").expect_err("must fail");
        assert_eq!(errs.len(), 2);
    }

    fn bcrypt_at(pw: &str, cost: u32) -> String {
        bcrypt::hash_with_result(pw, cost)
            .expect("bcrypt hash")
            .format_for_version(bcrypt::Version::TwoY)
    }

    /// (algorithm, cost parameters) of a stored hash, read back from the hash string.
    fn class_of(h: &StoredHash) -> String {
        match h {
            StoredHash::Bcrypt(s) => {
                let cost = bcrypt::HashParts::from_str(s).expect("bcrypt").get_cost();
                format!("bcrypt cost {cost}")
            }
            StoredHash::Argon2id(s) => {
                let parsed = PasswordHash::new(s).expect("argon2");
                let p = argon2::Params::try_from(&parsed).expect("params");
                format!(
                    "argon2id m={} t={} p={}",
                    p.m_cost(),
                    p.t_cost(),
                    p.p_cost()
                )
            }
            StoredHash::Apr1(_) => "apr1".to_owned(),
            StoredHash::Sha1(_) => "sha1".to_owned(),
        }
    }

    #[test]
    fn dummy_matches_the_most_common_algorithm_and_cost() {
        // The first user is the odd one out: the dummy must follow the majority, or every
        // unknown name would answer at the odd user's speed.
        let text = format!(
            "root:{}\nalice:{}\nbob:{}\ncarol:{}\n",
            bcrypt_at("a", 4),
            bcrypt_at("b", 5),
            bcrypt_at("c", 5),
            argon_hash("d"),
        );
        let h = parse(text.as_bytes()).expect("parses");
        assert_eq!(class_of(h.dummy.as_ref().expect("dummy")), "bcrypt cost 5");

        let cheap = |pw: &str| {
            crate::auth::hash_argon2id(pw, argon2::Params::new(32, 2, 1, None).expect("params"))
                .expect("argon2 hash")
        };
        let text = format!(
            "root:{}\nalice:{}\nbob:{}\ncarol:{}\ndave:{}\neve:{}\n",
            bcrypt_at("a", 4),
            argon_hash("b"),
            cheap("c"),
            cheap("d"),
            bcrypt_at("e", 4),
            cheap("f"),
        );
        let h = parse(text.as_bytes()).expect("parses");
        assert_eq!(
            class_of(h.dummy.as_ref().expect("dummy")),
            "argon2id m=32 t=2 p=1"
        );

        // A tie goes to the class seen first.
        let text = format!("a:{}\nb:{}\n", bcrypt_at("a", 5), bcrypt_at("b", 4));
        let h = parse(text.as_bytes()).expect("parses");
        assert_eq!(class_of(h.dummy.as_ref().expect("dummy")), "bcrypt cost 5");
    }

    #[test]
    fn bcrypt_refuses_passwords_longer_than_72_bytes() {
        // bcrypt reads 72 bytes; accepting more would accept any suffix of a 72-byte password.
        let long = "p".repeat(72);
        let h = parse(format!("u:{}\n", bcrypt_at(&long, 4)).as_bytes()).expect("parses");
        assert!(h.users["u"].verify(long.as_bytes()));
        assert!(!h.users["u"].verify(format!("{long}x").as_bytes()));
        assert!(!h.users["u"].verify(format!("{long}{long}").as_bytes()));
        // argon2id has no such limit.
        let longer = "q".repeat(200);
        let h = parse(format!("u:{}\n", argon_hash(&longer)).as_bytes()).expect("parses");
        assert!(h.users["u"].verify(longer.as_bytes()));
        assert!(!h.users["u"].verify(format!("{longer}x").as_bytes()));
    }

    #[test]
    fn empty_file_has_no_users() {
        let h = parse(b"# nobody yet\n").expect("parses");
        assert!(h.users.is_empty());
        assert!(h.dummy.is_none());
    }
}
