//! Relay routes (`[[relay.routes]]`): path templates such as
//! `/ws/chat/{room}/`, matching a request path, filling `{param}` into a
//! target or channel name, and the HTTP targets' senders
//! (`[[relay.http_targets]]`): one queue per target, bounded in events and
//! bytes and shared out between the connections holding events
//! (`webhooks::queue`, [`Eviction::Whole`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use groupcast_core::valid_target;

use crate::config::{RelayConfig, RouteConfig};
use crate::webhooks::queue::{Eviction, QueueHandle};

/// Paths the edge serves itself: a route there would never be reached.
const RESERVED: &[&str] = &["/api/", "/connection/", "/ws/relay/", "/dashboard/"];
const RESERVED_EXACT: &[&str] = &[
    "/",
    "/metrics",
    "/healthz",
    "/readyz",
    "/dashboard",
    "/ws/relay",
];

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Lit(String),
    Param(String),
}

fn parse_path(path: &str) -> Result<Vec<Seg>, String> {
    if !path.starts_with('/') {
        return Err("must start with /".into());
    }
    if RESERVED_EXACT.contains(&path) || RESERVED.iter().any(|r| path.starts_with(r)) {
        return Err("the edge serves this path itself".into());
    }
    let mut names = HashSet::new();
    path.split('/')
        .skip(1)
        .map(|s| {
            if let Some(name) = s.strip_prefix('{').and_then(|n| n.strip_suffix('}')) {
                let ok = !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !ok {
                    return Err(format!("bad parameter {s:?} (letters, digits, _)"));
                }
                if !names.insert(name.to_string()) {
                    return Err(format!("parameter {s:?} twice"));
                }
                Ok(Seg::Param(name.to_string()))
            } else if s.contains(['{', '}', '*', '?', '#', '%']) {
                Err(format!("bad segment {s:?}"))
            } else {
                Ok(Seg::Lit(s.to_string()))
            }
        })
        .collect()
}

/// Decodes `%XX` escapes of a path segment; `None` when invalid.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Longest path parameter value.
pub const MAX_PARAM_LEN: usize = 64;

/// A path parameter's value: 1 to [`MAX_PARAM_LEN`] ASCII letters, digits,
/// `_` and `-`. Nothing else, so a parameter filled into `channels` or
/// `target` cannot change their meaning: no `#` (user-limited channels),
/// no `$` (private), no `:` (namespace), no `.` (subject levels).
fn param_value_ok(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= MAX_PARAM_LEN
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Fill `{name}` placeholders with the path's parameters.
pub(crate) fn fill(template: &str, params: &BTreeMap<String, String>) -> String {
    let mut out = template.to_string();
    for (k, v) in params {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

/// A route, ready to match request paths.
pub struct Route {
    pub config: RouteConfig,
    segs: Vec<Seg>,
}

impl Route {
    /// The path's parameters when `path` is this route's.
    fn matches(&self, path: &str) -> Option<BTreeMap<String, String>> {
        let parts: Vec<&str> = path.split('/').skip(1).collect();
        if parts.len() != self.segs.len() || !path.starts_with('/') {
            return None;
        }
        let mut params = BTreeMap::new();
        for (seg, part) in self.segs.iter().zip(parts) {
            match seg {
                Seg::Lit(l) if l == part => {}
                Seg::Lit(_) => return None,
                Seg::Param(name) => {
                    let v = percent_decode(part).filter(|v| param_value_ok(v))?;
                    params.insert(name.clone(), v);
                }
            }
        }
        Some(params)
    }
}

/// Is `path` one the edge serves itself (its API, its WebSockets, its pages)?
pub fn served_by_the_edge(path: &str) -> bool {
    RESERVED_EXACT.contains(&path) || RESERVED.iter().any(|r| path.starts_with(r))
}

/// The `[[relay.routes]]` entry (its index) whose path template matches `path`.
pub fn route_matching(c: &RelayConfig, path: &str) -> Option<usize> {
    c.routes.iter().position(|r| {
        parse_path(&r.path)
            .map(|segs| {
                Route {
                    config: r.clone(),
                    segs,
                }
                .matches(path)
                .is_some()
            })
            .unwrap_or(false)
    })
}

/// Checks `[relay]`'s routes and HTTP targets (errors name the setting).
pub fn check(c: &RelayConfig) -> Result<(), String> {
    let mut shapes = HashSet::new();
    for (i, r) in c.routes.iter().enumerate() {
        let key = |f: &str| format!("relay.routes[{i}].{f}");
        let segs = parse_path(&r.path).map_err(|e| format!("{}: {e}", key("path")))?;
        let shape: Vec<Option<String>> = segs
            .iter()
            .map(|s| match s {
                Seg::Lit(l) => Some(l.clone()),
                Seg::Param(_) => None,
            })
            .collect();
        if !shapes.insert(shape) {
            return Err(format!(
                "{}: {:?} matches the same paths as an earlier route",
                key("path"),
                r.path
            ));
        }
        if r.target.is_empty() && r.connect_proxy.is_empty() {
            return Err(format!(
                "{}: required without a connect_proxy (which may name one)",
                key("target")
            ));
        }
        if !r.target.is_empty() {
            // Parameters make it whatever the client sends: check the shape
            // with a stand-in; the filled-in name is checked per connection.
            let sample: BTreeMap<String, String> = segs
                .iter()
                .filter_map(|s| match s {
                    Seg::Param(n) => Some((n.clone(), "x".to_string())),
                    Seg::Lit(_) => None,
                })
                .collect();
            if !valid_target(&fill(&r.target, &sample)) {
                return Err(format!(
                    "{}: {:?} is not a target name (dot-separated letters, digits, _ and -)",
                    key("target"),
                    r.target
                ));
            }
        }
    }
    let mut names = HashSet::new();
    for (i, t) in c.http_targets.iter().enumerate() {
        let key = format!("relay.http_targets[{i}]");
        if !valid_target(&t.name) {
            return Err(format!(
                "{key}.name: {:?} is not a target name (dot-separated letters, digits, _ and -)",
                t.name
            ));
        }
        if !names.insert(t.name.as_str()) {
            return Err(format!("{key}.name: {:?} twice", t.name));
        }
        t.sender().validate_as(&key)?;
    }
    Ok(())
}

/// An HTTP target's sender: its queue, and how long a connection waits
/// for room in it.
#[derive(Clone)]
pub(crate) struct HttpTarget {
    pub queue: Arc<QueueHandle>,
    /// The target's `timeout`.
    pub wait: Duration,
}

/// The routes and the HTTP targets' senders.
#[derive(Default)]
pub struct Routes {
    pub routes: Vec<Route>,
    http: HashMap<String, HttpTarget>,
}

impl Routes {
    /// Starts one sender task per HTTP target (needs a Tokio runtime when
    /// there is one).
    pub fn start(c: &RelayConfig) -> Result<Routes, String> {
        check(c)?;
        let routes = c
            .routes
            .iter()
            .map(|r| {
                Ok(Route {
                    config: r.clone(),
                    segs: parse_path(&r.path)?,
                })
            })
            .collect::<Result<_, String>>()?;
        let mut http = HashMap::new();
        if !c.http_targets.is_empty() {
            let client = crate::proxy::http_client()?;
            for t in &c.http_targets {
                let queue = crate::webhooks::spawn_sender(
                    t.sender(),
                    client.clone(),
                    crate::webhooks::RELAY,
                    Eviction::Whole,
                );
                let target = HttpTarget {
                    queue: Arc::new(queue),
                    wait: t.timeout,
                };
                http.insert(t.name.clone(), target);
            }
        }
        Ok(Routes { routes, http })
    }

    /// The sender of an HTTP target's events; `None`: not an HTTP target.
    pub(crate) fn http_target(&self, name: &str) -> Option<&HttpTarget> {
        self.http.get(name)
    }

    /// The first route serving `path`, with the path's parameters.
    pub fn route(&self, path: &str) -> Option<(usize, BTreeMap<String, String>)> {
        self.routes
            .iter()
            .enumerate()
            .find_map(|(i, r)| r.matches(path).map(|p| (i, p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HttpTargetConfig;

    fn route(path: &str) -> Route {
        Route {
            config: RouteConfig {
                path: path.into(),
                target: "t".into(),
                ..Default::default()
            },
            segs: parse_path(path).unwrap(),
        }
    }

    #[test]
    fn paths_match_with_their_parameters() {
        let r = route("/ws/chat/{room}/");
        let p = r.matches("/ws/chat/lobby/").unwrap();
        assert_eq!(p["room"], "lobby");
        assert_eq!(r.matches("/ws/chat/a%2Db/").unwrap()["room"], "a-b");
        // Only letters, digits, _ and -: a parameter filled into a channel
        // or target cannot reach a user's (#), a private ($) or another
        // namespace's (:) channel, nor add subject levels (.).
        for bad in [
            "%23bob",
            "%24secret",
            "ns%3Ax",
            "a.b",
            "a%20b",
            "%C3%A9",
            "%zz",
        ] {
            assert!(r.matches(&format!("/ws/chat/{bad}/")).is_none(), "{bad}");
        }
        let long = "x".repeat(MAX_PARAM_LEN + 1);
        assert!(r.matches(&format!("/ws/chat/{long}/")).is_none());
        assert!(r.matches("/ws/chat/lobby").is_none(), "trailing slash");
        assert!(r.matches("/ws/chat//").is_none(), "empty parameter");
        assert!(r.matches("/ws/chat/a/b/").is_none());
        assert!(route("/ws/status/").matches("/ws/status/").is_some());
    }

    #[test]
    fn templates_are_filled_from_the_path() {
        let mut p = BTreeMap::new();
        p.insert("room".to_string(), "42".to_string());
        assert_eq!(fill("chat.{room}", &p), "chat.42");
        assert_eq!(fill("chat:{room}", &p), "chat:42");
    }

    #[test]
    fn bad_routes_are_refused_naming_the_setting() {
        let cfg = |routes: Vec<RouteConfig>| RelayConfig {
            routes,
            ..Default::default()
        };
        let r = |path: &str, target: &str| RouteConfig {
            path: path.into(),
            target: target.into(),
            ..Default::default()
        };
        assert!(check(&cfg(vec![r("/ws/chat/{room}/", "chat.{room}")])).is_ok());
        for (path, target, why) in [
            ("ws/x", "t", "must start with /"),
            ("/api/x", "t", "serves this path itself"),
            ("/ws/relay/x", "t", "serves this path itself"),
            ("/a/{b c}", "t", "bad parameter"),
            ("/a/{b}/{b}", "t", "twice"),
            ("/a/x*", "t", "bad segment"),
            ("/a", "", "required without a connect_proxy"),
            ("/a", "bad target", "not a target name"),
        ] {
            let e = check(&cfg(vec![r(path, target)])).unwrap_err();
            assert!(
                e.contains("relay.routes[0]") && e.contains(why),
                "{path}: {e}"
            );
        }
        let e = check(&cfg(vec![r("/a/{x}", "t"), r("/a/{y}", "t")])).unwrap_err();
        assert!(e.contains("relay.routes[1].path"), "{e}");
        let e = check(&RelayConfig {
            http_targets: vec![HttpTargetConfig {
                name: "t".into(),
                url: "http://127.0.0.1:1/".into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("relay.http_targets[0].secret"), "{e}");
    }
}
