//! HTTP Basic against an htpasswd file.

use std::sync::Arc;
#[cfg(test)]
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::cache::SuccessCache;
use super::htpasswd::{self, Htpasswd, StoredHash};
use super::limiter::{HashLimiter, Refused};
use super::{AuthFailure, Identity, Scheme, authorization};
use crate::config::{BasicConfig, ConfigError};
use crate::limits::ClientKey;

/// A ready Basic authenticator: users loaded, cache and limiter wired.
pub(crate) struct Basic {
    /// Sent in the `WWW-Authenticate` challenge.
    pub(crate) realm: String,
    /// user → hash, plus a dummy hash for unknown users.
    users: Htpasswd,
    /// Recent successes; `None` when `cache_ttl` is 0.
    cache: Option<SuccessCache>,
    /// Shared bound on concurrent hashes.
    limiter: Arc<HashLimiter>,
    /// Hash runs started (tests check that a cache hit skips the hash).
    #[cfg(test)]
    hashes: AtomicU64,
}

impl Basic {
    /// Reads and parses the htpasswd file; error paths are relative to the authenticator.
    pub(crate) fn build(
        cfg: &BasicConfig,
        limiter: Arc<HashLimiter>,
    ) -> Result<Self, Vec<ConfigError>> {
        let bytes = std::fs::read(&cfg.htpasswd).map_err(|e| {
            vec![ConfigError::new(
                "htpasswd",
                format!("cannot read {}: {e}", cfg.htpasswd.display()),
            )]
        })?;
        let users = htpasswd::parse(&bytes).map_err(|errs| {
            errs.into_iter()
                .map(|m| ConfigError::new("htpasswd", m))
                .collect::<Vec<_>>()
        })?;
        Ok(Basic {
            realm: cfg.realm.clone(),
            users,
            cache: SuccessCache::new(cfg.cache_ttl),
            limiter,
            #[cfg(test)]
            hashes: AtomicU64::new(0),
        })
    }

    /// Judges the `Authorization: Basic` credential, if any (no per-client hash bound).
    #[cfg(test)]
    #[cfg(test)]
    pub(crate) async fn check(&self, headers: &http::HeaderMap) -> Result<Identity, AuthFailure> {
        self.check_from(headers, None).await
    }

    /// Judges the `Authorization: Basic` credential, if any; a hash counts against
    /// `client`'s share of the hash limiter.
    pub(crate) async fn check_from(
        &self,
        headers: &http::HeaderMap,
        client: Option<ClientKey>,
    ) -> Result<Identity, AuthFailure> {
        let encoded = match authorization(headers)? {
            Some((Scheme::Basic, rest)) => rest,
            // Bearer or anything else is not ours to judge.
            Some((Scheme::Bearer | Scheme::Other, _)) | None => return Err(AuthFailure::Missing),
        };
        let (user, password) = decode_basic(encoded)?;

        let key = self.cache.as_ref().map(|c| c.key(&user, &password));
        if let (Some(cache), Some(key)) = (&self.cache, &key)
            && cache.hit(key)
        {
            return Ok(admitted(user));
        }

        let (hash, known) = match self.users.users.get(&user) {
            Some(h) => (h.clone(), true),
            None => match &self.users.dummy {
                // Same work as a real check so response time does not reveal which
                // user names exist; the result is ignored.
                Some(d) => (d.clone(), false),
                None => return Err(AuthFailure::BadCredentials),
            },
        };
        let ok = self.verify(hash, password, client).await?;
        if !(ok && known) {
            return Err(AuthFailure::BadCredentials);
        }
        if let (Some(cache), Some(key)) = (&self.cache, key) {
            cache.insert(key);
        }
        Ok(admitted(user))
    }

    /// Runs the hash on a blocking thread while holding a limiter slot.
    async fn verify(
        &self,
        hash: StoredHash,
        password: String,
        client: Option<ClientKey>,
    ) -> Result<bool, AuthFailure> {
        let permit = self.limiter.acquire(client).await.map_err(|r| match r {
            Refused::Saturated => AuthFailure::Busy,
            Refused::ClientBusy => AuthFailure::TooMany,
        })?;
        #[cfg(test)]
        self.hashes.fetch_add(1, Ordering::Relaxed);
        // The permit moves into the closure: if the client goes away mid-hash, the slot
        // stays taken until the CPU work really ends.
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            hash.verify(password.as_bytes())
        });
        // A join error means a panic or runtime shutdown: fail closed, retryable.
        task.await.map_err(|_| AuthFailure::Busy)
    }

    /// Hash runs so far.
    #[cfg(test)]
    pub(crate) fn hash_runs(&self) -> u64 {
        self.hashes.load(Ordering::Relaxed)
    }
}

/// The identity of an admitted Basic user.
fn admitted(user: String) -> Identity {
    Identity {
        user,
        expires_at: None,
    }
}

/// `base64(user:password)` → (user, password); anything undecodable is `Malformed`.
fn decode_basic(encoded: &[u8]) -> Result<(String, String), AuthFailure> {
    let raw = STANDARD
        .decode(encoded)
        .map_err(|_| AuthFailure::Malformed)?;
    let colon = raw
        .iter()
        .position(|b| *b == b':')
        .ok_or(AuthFailure::Malformed)?;
    let (user, rest) = raw.split_at(colon);
    let password = rest.get(1..).unwrap_or_default();
    let user = String::from_utf8(user.to_vec()).map_err(|_| AuthFailure::Malformed)?;
    let password = String::from_utf8(password.to_vec()).map_err(|_| AuthFailure::Malformed)?;
    Ok((user, password))
}

impl std::fmt::Debug for Basic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Basic")
            .field("realm", &self.realm)
            .field("users", &self.users.users.len())
            .field("cache", &self.cache.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::time::Duration;

    fn bcrypt4(pw: &str) -> String {
        bcrypt::hash_with_result(pw, 4)
            .expect("hash")
            .format_for_version(bcrypt::Version::TwoY)
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("tempfile");
        f.write_all(text.as_bytes()).expect("write");
        f
    }

    fn basic_with(ttl: Duration, limiter: Arc<HashLimiter>) -> (Basic, tempfile::NamedTempFile) {
        let f = file(&format!("alice:{}\n", bcrypt4("s3cret")));
        let cfg = BasicConfig {
            realm: "wsgate".into(),
            htpasswd: f.path().to_path_buf(),
            cache_ttl: ttl,
        };
        (Basic::build(&cfg, limiter).expect("build"), f)
    }

    fn basic(ttl: Duration) -> (Basic, tempfile::NamedTempFile) {
        basic_with(ttl, Arc::new(HashLimiter::new(2)))
    }

    pub(crate) fn basic_header(v: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(v).expect("header"),
        );
        h
    }

    fn creds(user: &str, pw: &str) -> http::HeaderMap {
        basic_header(&format!(
            "Basic {}",
            STANDARD.encode(format!("{user}:{pw}"))
        ))
    }

    #[tokio::test]
    async fn admits_good_password_case_insensitive_scheme() {
        let (b, _f) = basic(Duration::ZERO);
        let id = b.check(&creds("alice", "s3cret")).await.expect("admit");
        assert_eq!(id.user, "alice");
        assert_eq!(id.expires_at, None);
        let h = basic_header(&format!("bAsIc   {}", STANDARD.encode("alice:s3cret")));
        assert!(b.check(&h).await.is_ok());
    }

    #[tokio::test]
    async fn wrong_password_and_unknown_user_both_hash() {
        let (b, _f) = basic(Duration::from_secs(60));
        assert_eq!(
            b.check(&creds("alice", "nope")).await.err(),
            Some(AuthFailure::BadCredentials)
        );
        assert_eq!(b.hash_runs(), 1);
        // Unknown user: same answer, and a dummy hash still runs (timing parity).
        assert_eq!(
            b.check(&creds("mallory", "s3cret")).await.err(),
            Some(AuthFailure::BadCredentials)
        );
        assert_eq!(b.hash_runs(), 2);
        // Failures are never cached.
        assert_eq!(
            b.check(&creds("alice", "nope")).await.err(),
            Some(AuthFailure::BadCredentials)
        );
        assert_eq!(b.hash_runs(), 3);
    }

    #[tokio::test]
    async fn malformed_headers() {
        let (b, _f) = basic(Duration::ZERO);
        for v in [
            "Basic !!!notbase64",
            "Basic ".to_owned().as_str(),
            &format!("Basic {}", STANDARD.encode("nocolon")),
        ] {
            assert_eq!(
                b.check(&basic_header(v)).await.err(),
                Some(AuthFailure::Malformed),
                "{v}"
            );
        }
        let non_utf8 = format!("Basic {}", STANDARD.encode(b"al\xffice:pw"));
        assert_eq!(
            b.check(&basic_header(&non_utf8)).await.err(),
            Some(AuthFailure::Malformed)
        );
        assert_eq!(b.hash_runs(), 0);
    }

    #[tokio::test]
    async fn bearer_or_absent_is_missing() {
        let (b, _f) = basic(Duration::ZERO);
        assert_eq!(
            b.check(&basic_header("Bearer abc.def.ghi")).await.err(),
            Some(AuthFailure::Missing)
        );
        assert_eq!(
            b.check(&http::HeaderMap::new()).await.err(),
            Some(AuthFailure::Missing)
        );
    }

    #[tokio::test]
    async fn cache_hit_skips_the_hash() {
        let (b, _f) = basic(Duration::from_secs(60));
        b.check(&creds("alice", "s3cret")).await.expect("admit");
        b.check(&creds("alice", "s3cret")).await.expect("admit");
        assert_eq!(b.hash_runs(), 1);
        // A different password for the same user is not a hit.
        assert!(b.check(&creds("alice", "s3creT")).await.is_err());
        assert_eq!(b.hash_runs(), 2);
    }

    #[tokio::test]
    async fn zero_ttl_hashes_every_time() {
        let (b, _f) = basic(Duration::ZERO);
        b.check(&creds("alice", "s3cret")).await.expect("admit");
        b.check(&creds("alice", "s3cret")).await.expect("admit");
        assert_eq!(b.hash_runs(), 2);
    }

    #[tokio::test]
    async fn busy_when_limiter_saturated() {
        let limiter = Arc::new(HashLimiter::with_limits(1, 0, Duration::from_secs(60)));
        let (b, _f) = basic_with(Duration::from_secs(60), limiter.clone());
        let held = limiter.try_take().expect("slot");
        assert_eq!(
            b.check(&creds("alice", "s3cret")).await.err(),
            Some(AuthFailure::Busy)
        );
        drop(held);
        assert!(b.check(&creds("alice", "s3cret")).await.is_ok());
        // Cached now: admitted even while saturated, with no hash.
        let _held = limiter.try_take().expect("slot");
        assert!(b.check(&creds("alice", "s3cret")).await.is_ok());
        assert_eq!(b.hash_runs(), 1);
    }

    #[tokio::test]
    async fn too_many_when_the_client_has_its_share_in_flight() {
        let limiter =
            Arc::new(HashLimiter::with_limits(2, 10, Duration::from_secs(60)).per_client(1));
        let (b, _f) = basic_with(Duration::from_secs(60), limiter.clone());
        let me = Some(ClientKey::new("192.0.2.1".parse().unwrap(), 64));
        let mine = limiter.acquire(me).await.expect("slot");
        assert_eq!(
            b.check_from(&creds("alice", "s3cret"), me).await.err(),
            Some(AuthFailure::TooMany)
        );
        let other = Some(ClientKey::new("192.0.2.2".parse().unwrap(), 64));
        assert!(b.check_from(&creds("alice", "s3cret"), other).await.is_ok());
        drop(mine);
        // A cache hit needs no hash, so no share either.
        let _mine = limiter.acquire(me).await.expect("slot");
        assert!(b.check_from(&creds("alice", "s3cret"), me).await.is_ok());
    }

    #[test]
    fn missing_file_is_a_htpasswd_error() {
        let cfg = BasicConfig {
            realm: "r".into(),
            htpasswd: "/nonexistent/wsgate-test.htpasswd".into(),
            cache_ttl: Duration::ZERO,
        };
        let errs = Basic::build(&cfg, Arc::new(HashLimiter::new(1))).expect_err("fails");
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "htpasswd");
        assert!(
            errs[0].message.contains("cannot read"),
            "{}",
            errs[0].message
        );
    }

    #[test]
    fn bad_line_is_a_htpasswd_error_without_hash() {
        let f = file("# x\nbob:$6$salt$SECRETHASH\n");
        let cfg = BasicConfig {
            realm: "r".into(),
            htpasswd: f.path().to_path_buf(),
            cache_ttl: Duration::ZERO,
        };
        let errs = Basic::build(&cfg, Arc::new(HashLimiter::new(1))).expect_err("fails");
        assert_eq!(errs[0].path, "htpasswd");
        assert!(
            errs[0].message
                == ("line 2: user \"bob\": unsupported hash $6$ (use bcrypt or argon2id; see `wsgate hash-password`)"),
            "{}",
            errs[0].message
        );
        assert!(!errs[0].message.contains("SECRETHASH"));
    }
}
