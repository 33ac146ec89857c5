//! Which browser pages may open a WebSocket: the `Origin` header against
//! `client.allowed_origins` (or a route's `allowed_origins`, or, without
//! any, the page's own origin).

use axum::http::{header, HeaderMap};

use crate::glob::glob_match;

/// Is the browser origin allowed? Requests without `Origin` are not from a
/// browser page and are allowed.
pub fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    allowed
        .iter()
        .any(|p| p == "*" || glob_match(&p.to_ascii_lowercase(), &origin.to_ascii_lowercase()))
}

/// Is the browser origin allowed on a route? No `Origin`: not a browser
/// page, allowed. No `allowed_origins`: the origin must be the host the
/// request was made to.
pub fn route_origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    if !allowed.is_empty() {
        return origin_allowed(allowed, headers);
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let (Ok(origin), Some(Ok(host))) = (
        origin.to_str(),
        headers.get(header::HOST).map(|h| h.to_str()),
    ) else {
        return false;
    };
    origin
        .split_once("://")
        .is_some_and(|(_, o)| o.eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_origin_only_without_allowed_origins() {
        let h = |origin: Option<&str>, host: &str| {
            let mut h = HeaderMap::new();
            if let Some(o) = origin {
                h.insert(header::ORIGIN, o.parse().unwrap());
            }
            h.insert(header::HOST, host.parse().unwrap());
            h
        };
        assert!(
            route_origin_allowed(&[], &h(None, "a:80")),
            "no Origin: not a browser"
        );
        assert!(route_origin_allowed(
            &[],
            &h(Some("http://a:8000"), "a:8000")
        ));
        assert!(!route_origin_allowed(
            &[],
            &h(Some("http://evil:8000"), "a:8000")
        ));
        let allowed = vec!["https://app.example.com".to_string()];
        assert!(route_origin_allowed(
            &allowed,
            &h(Some("https://app.example.com"), "gc:1")
        ));
        assert!(!route_origin_allowed(
            &allowed,
            &h(Some("http://a:1"), "a:1")
        ));
    }
}
