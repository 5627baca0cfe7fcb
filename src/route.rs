//! Path → route: longest prefix match on segment boundaries. Pure, no I/O.

/// A table of values keyed by path prefix.
#[derive(Debug, Clone)]
pub struct Router<T> {
    // Sorted longest prefix first, so the first match is the most specific one.
    entries: Vec<(String, T)>,
}

impl<T> Router<T> {
    /// Builds a router from `(prefix, value)` pairs; prefixes are validated by the config.
    pub fn new(entries: impl IntoIterator<Item = (String, T)>) -> Self {
        let mut entries: Vec<(String, T)> = entries.into_iter().collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
        Router { entries }
    }

    /// The value whose prefix matches `path` most specifically.
    ///
    /// `/websocket` matches `/websocket` and `/websocket/chat`, never `/websocketx`.
    pub fn find(&self, path: &str) -> Option<&T> {
        self.entries
            .iter()
            .find(|(prefix, _)| segment_prefix(prefix, path))
            .map(|(_, v)| v)
    }
}

fn segment_prefix(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return path.starts_with('/');
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Whether a request path is safe to match by prefix.
///
/// A prefix match on `/open/../admin` would pick the open route while an upstream that
/// normalises paths serves `/admin`: dot segments (also percent-encoded) and empty
/// segments are refused instead of being guessed at.
pub fn is_acceptable_path(path: &str) -> bool {
    if !path.starts_with('/') || path.contains("//") {
        return false;
    }
    path.split('/').skip(1).all(|seg| {
        let decoded = decode_dots(seg);
        decoded != "." && decoded != ".." && !seg.contains('\\') && !has_encoded_slash(seg)
    })
}

fn decode_dots(seg: &str) -> String {
    seg.replace("%2e", ".").replace("%2E", ".")
}

fn has_encoded_slash(seg: &str) -> bool {
    let lower = seg.to_ascii_lowercase();
    lower.contains("%2f") || lower.contains("%5c")
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(r.find("/websocket"), Some(&"ws"));
        assert_eq!(r.find("/websocket/chat"), Some(&"ws"));
        assert_eq!(r.find("/websocket/"), Some(&"ws"));
        assert_eq!(r.find("/test-ws"), Some(&"test"));
    }

    #[test]
    fn segment_boundary_is_respected() {
        let r = router();
        assert_eq!(r.find("/websocketx"), None);
        assert_eq!(r.find("/test-wsx/a"), None);
        assert_eq!(r.find("/"), None);
        assert_eq!(r.find(""), None);
    }

    #[test]
    fn longest_prefix_wins() {
        let r = router();
        assert_eq!(r.find("/websocket/admin"), Some(&"admin"));
        assert_eq!(r.find("/websocket/admin/x"), Some(&"admin"));
        assert_eq!(r.find("/websocket/administrator"), Some(&"ws"));
    }

    #[test]
    fn root_route_catches_all() {
        let r = Router::new(vec![("/".to_string(), 1), ("/a".to_string(), 2)]);
        assert_eq!(r.find("/anything"), Some(&1));
        assert_eq!(r.find("/a/b"), Some(&2));
    }

    #[test]
    fn unsafe_paths_are_refused() {
        assert!(is_acceptable_path("/websocket/chat"));
        assert!(is_acceptable_path("/websocket/"));
        assert!(is_acceptable_path("/a.b/c..d"));
        assert!(!is_acceptable_path("/open/../admin"));
        assert!(!is_acceptable_path("/open/%2e%2E/admin"));
        assert!(!is_acceptable_path("/open/./x"));
        assert!(!is_acceptable_path("/open//x"));
        assert!(!is_acceptable_path("/open%2fadmin"));
        assert!(!is_acceptable_path("relative"));
    }
}
