//! Path → route: longest prefix match on segment boundaries, on canonical paths. Pure, no I/O.
//!
//! Routes are compared with the request's decoded path ([`CanonicalPath::key`]), so `/a:b`
//! and `/a%3Ab` reach the same route, as they reach the same handler in a backend that
//! decodes. Letter case: see [`Router::find`].

use crate::path::CanonicalPath;

/// A table of values keyed by path prefix.
#[derive(Debug, Clone)]
pub struct Router<T> {
    // Sorted longest key first, so the first match is the most specific one.
    entries: Vec<(String, T)>,
}

/// The request path matches a route only when letter case is ignored, and a different one
/// (or none) when it is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaseAmbiguous;

impl CaseAmbiguous {
    /// The short body of the `400` response.
    pub const MESSAGE: &'static str = "path matches a route only when letter case is ignored \
         (paths are case-sensitive; refused rather than routed elsewhere)";
}

impl<T> Router<T> {
    /// Builds a router from `(prefix, value)` pairs; prefixes are canonical (checked by the
    /// config) and compared in decoded form.
    pub fn new(entries: impl IntoIterator<Item = (String, T)>) -> Self {
        let mut entries: Vec<(String, T)> = entries
            .into_iter()
            .map(|(prefix, v)| (route_key(&prefix), v))
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
        Router { entries }
    }

    /// The value whose prefix matches `path` most specifically.
    ///
    /// `/websocket` matches `/websocket` and `/websocket/chat`, never `/websocketx`. With
    /// `case_insensitive`, ASCII letter case is ignored. Without it, matching is
    /// case-sensitive, but a path whose route would change if case were ignored (`/ADMIN`
    /// with routes `/` and `/admin`) is [`CaseAmbiguous`]: backends that fold case (express
    /// does by default) would serve `/admin` to what the gate routed to `/`.
    pub fn find(
        &self,
        path: &CanonicalPath,
        case_insensitive: bool,
    ) -> Result<Option<&T>, CaseAmbiguous> {
        let key = path.key();
        let folded = self
            .entries
            .iter()
            .position(|(prefix, _)| segment_prefix(prefix, key, true));
        if !case_insensitive {
            let exact = self
                .entries
                .iter()
                .position(|(prefix, _)| segment_prefix(prefix, key, false));
            if exact != folded {
                return Err(CaseAmbiguous);
            }
        }
        Ok(folded.map(|i| &self.entries[i].1))
    }
}

/// The decoded form a route prefix is compared in (the prefix itself if it is not canonical,
/// which the config refuses).
pub fn route_key(prefix: &str) -> String {
    crate::path::canonicalize(prefix)
        .map(|c| c.key().to_owned())
        .unwrap_or_else(|_| prefix.to_owned())
}

fn segment_prefix(prefix: &str, path: &str, fold: bool) -> bool {
    if prefix == "/" {
        return path.starts_with('/');
    }
    let (p, b) = (prefix.as_bytes(), path.as_bytes());
    if b.len() < p.len() {
        return false;
    }
    let head = &b[..p.len()];
    let same = if fold {
        head.eq_ignore_ascii_case(p)
    } else {
        head == p
    };
    same && (b.len() == p.len() || b[p.len()] == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a, T>(r: &'a Router<T>, path: &str) -> Option<&'a T> {
        match crate::path::canonicalize(path) {
            Ok(c) => r.find(&c, false).unwrap(),
            Err(_) => None,
        }
    }

    fn router() -> Router<&'static str> {
        Router::new(vec![
            ("/websocket".to_string(), "ws"),
            ("/websocket/admin".to_string(), "admin"),
            ("/test-ws".to_string(), "test"),
        ])
    }

    #[test]
    fn exact_and_sub_paths_match() {
        let r = router();
        assert_eq!(find(&r, "/websocket"), Some(&"ws"));
        assert_eq!(find(&r, "/websocket/chat"), Some(&"ws"));
        assert_eq!(find(&r, "/websocket/"), Some(&"ws"));
        assert_eq!(find(&r, "/test-ws"), Some(&"test"));
    }

    #[test]
    fn segment_boundary_is_respected() {
        let r = router();
        assert_eq!(find(&r, "/websocketx"), None);
        assert_eq!(find(&r, "/test-wsx/a"), None);
        assert_eq!(find(&r, "/"), None);
        assert_eq!(find(&r, ""), None);
    }

    #[test]
    fn longest_prefix_wins() {
        let r = router();
        assert_eq!(find(&r, "/websocket/admin"), Some(&"admin"));
        assert_eq!(find(&r, "/websocket/admin/x"), Some(&"admin"));
        assert_eq!(find(&r, "/websocket/administrator"), Some(&"ws"));
    }

    #[test]
    fn root_route_catches_all() {
        let r = Router::new(vec![("/".to_string(), 1), ("/a".to_string(), 2)]);
        assert_eq!(find(&r, "/anything"), Some(&1));
        assert_eq!(find(&r, "/a/b"), Some(&2));
    }

    #[test]
    fn routes_compare_decoded() {
        let r = Router::new(vec![
            ("/".to_string(), "root"),
            ("/a:b".to_string(), "colon"),
            ("/x%3Fy".to_string(), "question"),
        ]);
        assert_eq!(find(&r, "/a%3Ab/c"), Some(&"colon"));
        assert_eq!(find(&r, "/a:b"), Some(&"colon"));
        assert_eq!(find(&r, "/%61:b"), Some(&"colon"));
        assert_eq!(find(&r, "/x%3fy"), Some(&"question"));
        assert_eq!(find(&r, "/a:bc"), Some(&"root"));
    }

    #[test]
    fn case_that_changes_the_route_is_ambiguous() {
        let r = Router::new(vec![
            ("/".to_string(), "root"),
            ("/admin".to_string(), "admin"),
        ]);
        let p = |s: &str| crate::path::canonicalize(s).unwrap();
        assert_eq!(r.find(&p("/ADMIN"), false), Err(CaseAmbiguous));
        assert_eq!(r.find(&p("/Admin/x"), false), Err(CaseAmbiguous));
        assert_eq!(r.find(&p("/admin/X"), false), Ok(Some(&"admin")));
        assert_eq!(r.find(&p("/Other"), false), Ok(Some(&"root")));
        assert_eq!(r.find(&p("/ADMIN"), true), Ok(Some(&"admin")));
        assert_eq!(r.find(&p("/ADMINX"), true), Ok(Some(&"root")));
        // Without a catch-all, a case-only match is ambiguous too (not a plain 404).
        let r = Router::new(vec![("/admin".to_string(), 1)]);
        assert_eq!(r.find(&p("/Admin"), false), Err(CaseAmbiguous));
        assert_eq!(r.find(&p("/other"), false), Ok(None));
        // Non-ASCII never folds: only ASCII letters are compared case-insensitively.
        let r = Router::new(vec![("/".to_string(), 0), ("/%C3%A4".to_string(), 1)]);
        assert_eq!(r.find(&p("/%C3%84"), false), Ok(Some(&0)));
    }
}
