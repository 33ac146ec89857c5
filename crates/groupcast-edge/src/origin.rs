//! Which browser pages may open a WebSocket: the `Origin` header against
//! `client.allowed_origins` (or a route's `allowed_origins`, or, without
//! any, the deployment's own origin).
//!
//! An `Origin` is parsed strictly ([`WebOrigin`]: `scheme://host[:port]`,
//! lowercase, the default port filled in); `null`, a value that is not
//! visible ASCII, a malformed one or two `Origin` headers are refused
//! (except by the pattern `*` alone, which allows any origin). Patterns
//! are globs over the canonical text ([`origin_pattern`]), so scheme, host
//! and port all take part. A request without `Origin` is not from a
//! browser page and is allowed.

use std::net::{Ipv4Addr, Ipv6Addr};

use axum::http::{header, HeaderMap, HeaderName, Uri};

use crate::config::client::{origin_pattern, WebOrigin};
use crate::glob::glob_match;

/// What a request says in a header that must appear at most once.
enum Single<'a> {
    Absent,
    One(&'a str),
    /// Repeated, or not visible ASCII.
    Bad,
}

fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Single<'a> {
    let mut all = headers.get_all(name).iter();
    match (all.next(), all.next()) {
        (None, _) => Single::Absent,
        (Some(v), None) => v.to_str().map_or(Single::Bad, Single::One),
        (Some(_), Some(_)) => Single::Bad,
    }
}

/// Is the browser origin allowed by `allowed` (patterns, see
/// [`origin_pattern`])? Requests without `Origin` are not from a browser
/// page and are allowed; `*` allows any `Origin`.
pub fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    let raw = match single(headers, &header::ORIGIN) {
        Single::Absent => return true,
        Single::Bad => return false,
        Single::One(raw) => raw,
    };
    if allowed.iter().any(|p| p == "*") {
        return true;
    }
    let Ok(origin) = WebOrigin::parse(raw) else {
        return false;
    };
    let origin = origin.to_string();
    allowed
        .iter()
        // Patterns were checked at start; one that is not valid matches nothing.
        .filter_map(|p| origin_pattern(p).ok())
        .any(|p| glob_match(&p, &origin))
}

/// Is the browser origin allowed on a relay route? With `allowed_origins`:
/// [`origin_allowed`]. Without: the same origin only. No `Origin`: not a
/// browser page, allowed.
///
/// Same origin means: equal (scheme, host, port) to one of `public`
/// (`client.public_origins`) when set. Otherwise the origin's scheme must
/// be the listener's (`https` when `tls`, else `http`), its host and port
/// those of the request's `Host` (or, without one, the request target's
/// authority), and that host an IP address or `localhost`: a DNS name that
/// appears in both headers may be another site's, its name rebound to this
/// server's address (DNS rebinding), so a deployment served at a DNS name
/// lists its origins in `client.public_origins`.
pub fn route_origin_allowed(
    allowed: &[String],
    public: &[String],
    tls: bool,
    headers: &HeaderMap,
    uri: &Uri,
) -> bool {
    if !allowed.is_empty() {
        return origin_allowed(allowed, headers);
    }
    let raw = match single(headers, &header::ORIGIN) {
        Single::Absent => return true,
        Single::Bad => return false,
        Single::One(raw) => raw,
    };
    let Ok(origin) = WebOrigin::parse(raw) else {
        return false;
    };
    if !public.is_empty() {
        return public
            .iter()
            .filter_map(|p| WebOrigin::parse(p).ok())
            .any(|p| p == origin);
    }
    let scheme = if tls { "https" } else { "http" };
    let host = match single(headers, &header::HOST) {
        Single::One(host) => host,
        Single::Absent => match uri.authority() {
            Some(a) => a.as_str(),
            None => return false,
        },
        Single::Bad => return false,
    };
    let Ok(target) = WebOrigin::parse(&format!("{scheme}://{host}")) else {
        return false;
    };
    origin == target && cannot_be_rebound(&origin.host)
}

/// A host no other site can point at this server: an IP address, or
/// `localhost` (browsers resolve it to loopback themselves).
fn cannot_be_rebound(host: &str) -> bool {
    host == "localhost"
        || host.parse::<Ipv4Addr>().is_ok()
        || host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .is_some_and(|h| h.parse::<Ipv6Addr>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        h.insert(header::HOST, host.parse().unwrap());
        h
    }

    fn route(public: &[&str], tls: bool, origin: Option<&str>, host: &str) -> bool {
        let public: Vec<String> = public.iter().map(|s| s.to_string()).collect();
        route_origin_allowed(&[], &public, tls, &h(origin, host), &Uri::from_static("/"))
    }

    #[test]
    fn same_origin_without_public_origins() {
        assert!(route(&[], false, None, "a:80"), "no Origin: not a browser");
        assert!(route(
            &[],
            false,
            Some("http://127.0.0.1:8000"),
            "127.0.0.1:8000"
        ));
        assert!(route(
            &[],
            false,
            Some("http://localhost:8000"),
            "LOCALHOST:8000"
        ));
        assert!(route(&[], false, Some("http://[::1]:8000"), "[::1]:8000"));
        assert!(route(&[], false, Some("http://127.0.0.1"), "127.0.0.1:80"));
        assert!(route(
            &[],
            true,
            Some("https://127.0.0.1:8443"),
            "127.0.0.1:8443"
        ));
        assert!(route(&[], true, Some("https://127.0.0.1"), "127.0.0.1"));
        // The scheme is the listener's.
        assert!(!route(
            &[],
            false,
            Some("https://127.0.0.1:8000"),
            "127.0.0.1:8000"
        ));
        assert!(!route(
            &[],
            true,
            Some("http://127.0.0.1:8443"),
            "127.0.0.1:8443"
        ));
        // Host and port.
        assert!(!route(
            &[],
            false,
            Some("http://127.0.0.2:8000"),
            "127.0.0.1:8000"
        ));
        assert!(!route(
            &[],
            false,
            Some("http://127.0.0.1:8001"),
            "127.0.0.1:8000"
        ));
        assert!(!route(
            &[],
            false,
            Some("http://127.0.0.1"),
            "127.0.0.1:8000"
        ));
        // A DNS name may be rebound: never "same" without public_origins.
        assert!(!route(
            &[],
            false,
            Some("http://rebind.evil.test:8000"),
            "rebind.evil.test:8000"
        ));
        assert!(!route(&[], false, Some("http://a:8000"), "a:8000"));
        // Malformed.
        for bad in [
            "null",
            "127.0.0.1:8000",
            "http://127.0.0.1:8000/",
            "http://127.0.0.1:8000x",
        ] {
            assert!(!route(&[], false, Some(bad), "127.0.0.1:8000"), "{bad}");
        }
        assert!(!route(
            &[],
            false,
            Some("http://127.0.0.1:8000"),
            "127.0.0.1:8000/x"
        ));
    }

    #[test]
    fn same_origin_is_one_of_the_public_origins() {
        let public = ["https://chat.example.com", "http://10.0.0.5:8000"];
        let ok = |o: &str| route(&public, false, Some(o), "edge.internal:8000");
        assert!(ok("https://chat.example.com"));
        assert!(ok("https://CHAT.example.com:443"));
        assert!(ok("http://10.0.0.5:8000"));
        assert!(!ok("http://chat.example.com"), "scheme");
        assert!(!ok("https://chat.example.com:8443"), "port");
        assert!(!ok("https://evil.example.com"), "host");
        assert!(
            !ok("http://edge.internal:8000"),
            "the Host is not the reference"
        );
        assert!(!ok("null"));
        // Host does not matter: the Origin is compared with the list.
        assert!(route(
            &public,
            false,
            Some("https://chat.example.com"),
            "evil:1"
        ));
    }

    #[test]
    fn patterns_compare_scheme_host_and_port() {
        let allowed: Vec<String> = [
            "https://app.example.com",
            "https://*.example.com",
            "http://localhost:*",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let ok = |o: &str| origin_allowed(&allowed, &h(Some(o), "gc:1"));
        assert!(ok("https://app.example.com"));
        assert!(ok("https://APP.example.com:443"));
        assert!(ok("https://b.example.com"));
        assert!(ok("http://localhost:3000"));
        assert!(!ok("http://app.example.com"));
        assert!(!ok("https://app.example.com:8443"));
        assert!(!ok("https://evil.test/.example.com"));
        assert!(!ok("https://evil.test:1.example.com"));
        assert!(!ok("null"));
        assert!(origin_allowed(&allowed, &h(None, "gc:1")));
        let any = vec!["*".to_string()];
        assert!(origin_allowed(&any, &h(Some("null"), "gc:1")), "`*`: any");
        assert!(!origin_allowed(
            &[],
            &h(Some("https://app.example.com"), "gc:1")
        ));
        // Routes with allowed_origins use them, not the same-origin rule.
        assert!(!route_origin_allowed(
            &allowed,
            &[],
            false,
            &h(Some("http://127.0.0.1:1"), "127.0.0.1:1"),
            &Uri::from_static("/")
        ));
        let mut two = h(Some("https://app.example.com"), "gc:1");
        two.append(header::ORIGIN, "https://evil.test".parse().unwrap());
        assert!(!origin_allowed(&allowed, &two), "two Origin headers");
    }
}
