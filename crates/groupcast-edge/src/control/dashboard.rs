//! The built-in operator dashboard: `GET /dashboard`, one self-contained
//! page (inline CSS and script; it fetches nothing but its own data), and
//! `GET /dashboard/data`, the JSON the page polls every 2 s with the API key.
//!
//! Nothing new is collected: the data is read from what the node already
//! has.
//! * **edges**: every live edge the membership service knows, each with the
//!   counts it reports itself when asked over the node bus (the subject of
//!   forwarded API actions, [`super::forward::reports`]), or as the
//!   membership service counts them when it does not answer; this node
//!   alone without a membership service (`groupcast dev`).
//! * **rates**: each edge's report carries its Prometheus counters (messages
//!   in and out, errors and disconnects by code). Rates are computed here,
//!   from the samples of earlier refreshes kept per edge: messages per
//!   second over the last [`RATE_WINDOW`], errors and disconnects over the
//!   last [`ERROR_WINDOW`]. The first refresh after nobody looked for a
//!   minute has no rate yet (`null`).
//! * **membership**: every replica's own status, asked of each replica
//!   ([`Membership::replicas`]): leader, term, indexes, lag.
//! * **nats**: the backbone's connection ([`Broker::backbone`]).
//! * **channels**: the [`TOP_CHANNELS`] channels with the most subscribers,
//!   cluster-wide (the membership service's counts; this edge's own when it
//!   is unreachable).
//!
//! Cost is bounded whatever the number of viewers: a request without the
//! API key is refused (401) before anything is read; the data is built at
//! most once per [`CACHE_TTL`], one build at a time (concurrent requests
//! wait for it and share it); each part of a build has its own time limit
//! ([`PART_TIMEOUT`]), so an answer comes within about twice that even when
//! the membership service, a replica or an edge is down (shown as
//! unreachable). Samples are kept per live edge, at most [`MAX_SAMPLES`]
//! each.
//!
//! [`Membership::replicas`]: groupcast_core::Membership::replicas
//! [`Broker::backbone`]: groupcast_core::Broker::backbone

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use groupcast_core::{BackboneStatus, ReplicaStatus};
use groupcast_proto::{DisconnectCode, ErrorCode};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;
use crate::state::EdgeState;

/// The data is built at most this often.
pub const CACHE_TTL: Duration = Duration::from_secs(1);
/// Time limit of each part of a build: a membership query, the replicas'
/// statuses (all of them together), the other edges' reports (each).
pub const PART_TIMEOUT: Duration = Duration::from_secs(1);
/// Messages per second are measured over about this long.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);
/// "Recent" errors and disconnects: over about this long.
pub const ERROR_WINDOW: Duration = Duration::from_secs(60);
/// Counter samples kept per edge.
pub const MAX_SAMPLES: usize = 128;
/// Channels listed.
pub const TOP_CHANNELS: usize = 10;

/// The page: no external resources, and it may only talk to this origin.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

const UNAUTHORIZED: &str = r#"{"error":"unauthorized","message":"the dashboard data needs the API key (Authorization: apikey KEY, or X-API-Key: KEY)"}"#;

/// The dashboard's state on one edge: the last data built and the counter
/// samples rates come from.
#[derive(Default)]
pub struct Dashboard {
    cached: Mutex<Option<(Instant, Bytes)>>,
    /// Held while a build runs: one at a time.
    building: tokio::sync::Mutex<()>,
    /// Counter samples by edge uid, oldest first.
    samples: Mutex<HashMap<String, VecDeque<(Instant, Counters)>>>,
}

impl Dashboard {
    fn fresh(&self) -> Option<Bytes> {
        self.cached
            .lock()
            .as_ref()
            .filter(|(at, _)| at.elapsed() < CACHE_TTL)
            .map(|(_, body)| body.clone())
    }

    /// The data as JSON: the cached copy, or a new build.
    async fn data(&self, state: &EdgeState) -> Bytes {
        if let Some(body) = self.fresh() {
            return body;
        }
        let _building = self.building.lock().await;
        // Another request may have built it while this one waited.
        if let Some(body) = self.fresh() {
            return body;
        }
        Metrics::dashboard_refresh();
        let data = build(state, self).await;
        let body = Bytes::from(serde_json::to_vec(&data).expect("dashboard data serializes"));
        *self.cached.lock() = Some((Instant::now(), body.clone()));
        body
    }
}

/// The dashboard's routes, with their own state: the edge and the cache.
pub fn router(edge: Arc<EdgeState>) -> Router {
    Router::new()
        .route("/dashboard", get(page))
        .route("/dashboard/data", get(data))
        .with_state(Arc::new((edge, Dashboard::default())))
}

type Shared = Arc<(Arc<EdgeState>, Dashboard)>;

/// `GET /dashboard`.
async fn page(State(shared): State<Shared>) -> Response {
    let state = &shared.0;
    if !state.config.dashboard.enabled {
        return (StatusCode::NOT_FOUND, "dashboard disabled").into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("dashboard.html"),
    )
        .into_response()
}

/// `GET /dashboard/data`: 401 without the API key.
async fn data(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    let (state, dashboard) = (&shared.0, &shared.1);
    if !state.config.dashboard.enabled {
        return (StatusCode::NOT_FOUND, "dashboard disabled").into_response();
    }
    let json = (header::CONTENT_TYPE, "application/json");
    let no_store = (header::CACHE_CONTROL, "no-store");
    if !crate::auth::api_key_ok(&state.config.api.key, &headers) {
        Metrics::dashboard_request("unauthorized");
        return (StatusCode::UNAUTHORIZED, [json, no_store], UNAUTHORIZED).into_response();
    }
    Metrics::dashboard_request("ok");
    let body = dashboard.data(state).await;
    ([json, no_store], body).into_response()
}

/// An edge's counters, as its `/metrics` has them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Counters {
    /// `groupcast_messages_in_total`, every kind.
    pub messages_in: u64,
    /// `groupcast_messages_out_total`, every kind.
    pub messages_out: u64,
    /// `groupcast_errors_total` by code.
    pub errors: BTreeMap<u32, u64>,
    /// `groupcast_disconnects_total` by code.
    pub disconnects: BTreeMap<u32, u64>,
}

impl Counters {
    /// This process's counters, read from the Prometheus recorder.
    fn read() -> Counters {
        Counters::parse(&crate::metrics::install().render())
    }

    /// The counters in Prometheus text.
    fn parse(text: &str) -> Counters {
        let mut c = Counters::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let value = value.max(0.0) as u64;
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let code = || {
                labels
                    .trim_end_matches('}')
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("code=\""))
                    .and_then(|v| v.strip_suffix('"'))
                    .and_then(|v| v.parse::<u32>().ok())
            };
            match name {
                "groupcast_messages_in_total" => c.messages_in += value,
                "groupcast_messages_out_total" => c.messages_out += value,
                "groupcast_errors_total" => {
                    if let Some(code) = code() {
                        *c.errors.entry(code).or_default() += value;
                    }
                }
                "groupcast_disconnects_total" => {
                    if let Some(code) = code() {
                        *c.disconnects.entry(code).or_default() += value;
                    }
                }
                _ => {}
            }
        }
        c
    }
}

/// What an edge reports of itself: this node's row, and the answer to
/// another edge's request ([`super::forward::reports`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct EdgeReport {
    pub name: String,
    pub uid: String,
    pub version: String,
    /// Its `listen` address.
    pub address: String,
    pub uptime: u32,
    pub connections: u32,
    pub users: u32,
    pub subscriptions: u32,
    pub channels: u32,
    pub counters: Counters,
}

/// This edge's report.
pub(crate) fn report(state: &EdgeState) -> EdgeReport {
    let n = super::forward::this_node(state);
    EdgeReport {
        name: n.name,
        uid: n.uid,
        version: n.version,
        address: state.config.listen.to_string(),
        uptime: n.uptime,
        // Every open connection (the registry holds connected clients only).
        connections: state.num_connections() as u32,
        users: n.num_users,
        subscriptions: n.num_subs,
        channels: n.num_channels,
        counters: Counters::read(),
    }
}

#[derive(Serialize)]
struct Data {
    /// When this data was built (Unix milliseconds).
    generated_at_ms: u64,
    /// The edge that answered.
    node: NodeRef,
    edges: Vec<EdgeRow>,
    /// Why only this edge is listed (membership unreachable).
    edges_error: Option<String>,
    membership: MembershipPart,
    nats: NatsPart,
    channels: ChannelsPart,
    errors: ErrorsPart,
}

#[derive(Serialize)]
struct NodeRef {
    name: String,
    uid: String,
    version: String,
}

#[derive(Serialize)]
struct EdgeRow {
    name: String,
    uid: String,
    version: String,
    address: Option<String>,
    uptime: u32,
    connections: u32,
    users: u32,
    subscriptions: u32,
    channels: u32,
    messages_in_per_second: Option<f64>,
    messages_out_per_second: Option<f64>,
    /// The edge that answered this request.
    this: bool,
    /// The counts are the edge's own report; false: the membership
    /// service's (connections then count identified users' only), and
    /// `error` says why the edge did not report.
    reported: bool,
    error: Option<String>,
}

#[derive(Serialize)]
struct MembershipPart {
    /// A replicated membership service (false in `groupcast dev`).
    in_use: bool,
    /// This edge's handle reaches it now.
    available: bool,
    replicas: Vec<ReplicaStatus>,
    note: Option<String>,
}

#[derive(Serialize)]
struct NatsPart {
    in_use: bool,
    #[serde(flatten)]
    status: Option<BackboneStatus>,
    note: Option<String>,
}

#[derive(Serialize)]
struct ChannelsPart {
    /// `cluster`; `this node` without a membership service; `this edge`
    /// when the membership service is unreachable.
    scope: &'static str,
    /// Channels with subscribers (at most the query limit).
    total: usize,
    top: Vec<ChannelRow>,
    error: Option<String>,
}

#[derive(Serialize)]
struct ChannelRow {
    channel: String,
    subscribers: u64,
}

#[derive(Serialize)]
struct ErrorsPart {
    /// How many edges' counters are summed.
    edges: usize,
    /// The span `recent` covers (at most a little over [`ERROR_WINDOW`]);
    /// `None` until a second sample exists.
    window_seconds: Option<f64>,
    codes: Vec<CodeRow>,
}

#[derive(Serialize)]
struct CodeRow {
    /// `error` (a protocol error reply) or `disconnect` (a server close).
    kind: &'static str,
    code: u32,
    name: String,
    /// Since each edge started.
    total: u64,
    /// Within `window_seconds`; `None` when there is no window yet.
    recent: Option<u64>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn build(state: &EdgeState, dashboard: &Dashboard) -> Data {
    let this = report(state);
    let node = NodeRef {
        name: this.name.clone(),
        uid: this.uid.clone(),
        version: this.version.clone(),
    };
    let ((mut reports, edges_error), membership, channels) =
        tokio::join!(edges(state, this), membership(state), channels(state));
    let errors = rates(dashboard, &mut reports);
    let nats = match state.node.backbone() {
        Some(status) => NatsPart {
            in_use: true,
            status: Some(status),
            note: None,
        },
        None => NatsPart {
            in_use: false,
            status: None,
            note: Some("not in use: in-memory bus, this node only".into()),
        },
    };
    Data {
        generated_at_ms: unix_ms(),
        node,
        edges: reports.into_iter().map(|(row, _)| row).collect(),
        edges_error,
        membership,
        nats,
        channels,
        errors,
    }
}

/// Every edge's row (this one first) with its counters when it reported,
/// and why the list holds this edge only.
async fn edges(
    state: &EdgeState,
    this: EdgeReport,
) -> (Vec<(EdgeRow, Option<Counters>)>, Option<String>) {
    let membership = &state.node;
    let mut rows = vec![row(this, true)];
    let Some((me, _)) = membership.local_node() else {
        return (rows, None);
    };
    let nodes = match tokio::time::timeout(PART_TIMEOUT, membership.nodes()).await {
        Ok(Ok(nodes)) => nodes,
        Ok(Err(e)) => return (rows, Some(e.to_string())),
        Err(_) => {
            return (
                rows,
                Some(format!(
                    "membership service: no answer within {PART_TIMEOUT:?}"
                )),
            )
        }
    };
    let mut others: Vec<_> = nodes.into_iter().filter(|n| n.name != me).collect();
    others.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<String> = others.iter().map(|n| n.name.clone()).collect();
    let answers = super::forward::reports(state, &names, PART_TIMEOUT).await;
    for (n, answer) in others.into_iter().zip(answers) {
        let report = answer.and_then(|bytes| {
            serde_json::from_slice::<EdgeReport>(&bytes)
                .map_err(|_| "answered without a report (an older version?)".to_string())
        });
        rows.push(match report {
            Ok(r) => row(r, false),
            Err(error) => (
                EdgeRow {
                    name: n.name,
                    uid: n.uid,
                    version: n.version,
                    address: None,
                    uptime: n.uptime,
                    connections: n.num_clients,
                    users: n.num_users,
                    subscriptions: n.num_subs,
                    channels: n.num_channels,
                    messages_in_per_second: None,
                    messages_out_per_second: None,
                    this: false,
                    reported: false,
                    error: Some(error),
                },
                None,
            ),
        });
    }
    (rows, None)
}

fn row(r: EdgeReport, this: bool) -> (EdgeRow, Option<Counters>) {
    (
        EdgeRow {
            name: r.name,
            uid: r.uid,
            version: r.version,
            address: Some(r.address),
            uptime: r.uptime,
            connections: r.connections,
            users: r.users,
            subscriptions: r.subscriptions,
            channels: r.channels,
            messages_in_per_second: None,
            messages_out_per_second: None,
            this,
            reported: true,
            error: None,
        },
        Some(r.counters),
    )
}

async fn membership(state: &EdgeState) -> MembershipPart {
    let m = &state.node;
    if m.local_node().is_none() {
        return MembershipPart {
            in_use: false,
            available: true,
            replicas: Vec::new(),
            note: Some(
                "not in use: presence and counts are kept in memory, for this node only".into(),
            ),
        };
    }
    // `replicas` keeps to its own limit; this one is a backstop.
    let replicas =
        tokio::time::timeout(PART_TIMEOUT + PART_TIMEOUT / 2, m.replicas(PART_TIMEOUT)).await;
    let (replicas, note) = match replicas {
        Ok(r) => (r.unwrap_or_default(), None),
        Err(_) => (
            Vec::new(),
            Some("the replicas did not answer in time".into()),
        ),
    };
    MembershipPart {
        in_use: true,
        available: m.membership_available(),
        replicas,
        note,
    }
}

async fn channels(state: &EdgeState) -> ChannelsPart {
    let m = &state.node;
    let limit = groupcast_core::membership::MAX_CHANNELS_PER_QUERY;
    let (scope, mut all, error): (_, Vec<(String, u64)>, _) =
        match tokio::time::timeout(PART_TIMEOUT, m.channels("", limit)).await {
            Ok(Ok(map)) if m.local_node().is_none() => {
                ("this node", map.into_iter().collect(), None)
            }
            Ok(Ok(map)) => ("cluster", map.into_iter().collect(), None),
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("membership service: no answer within {PART_TIMEOUT:?}"),
                };
                let local = state
                    .node
                    .local_channels()
                    .into_iter()
                    .map(|(c, n)| (c, n as u64))
                    .collect();
                ("this edge", local, Some(error))
            }
        };
    let total = all.len();
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.truncate(TOP_CHANNELS);
    ChannelsPart {
        scope,
        total,
        top: all
            .into_iter()
            .map(|(channel, subscribers)| ChannelRow {
                channel,
                subscribers,
            })
            .collect(),
        error,
    }
}

/// Adds the new samples, fills in each row's message rates and sums the
/// errors and disconnects of the edges that reported.
fn rates(d: &Dashboard, rows: &mut [(EdgeRow, Option<Counters>)]) -> ErrorsPart {
    let now = Instant::now();
    let mut samples = d.samples.lock();
    // Edges no longer listed go, with their samples.
    samples.retain(|uid, _| rows.iter().any(|(r, _)| r.uid == *uid));
    let mut totals: BTreeMap<(&'static str, u32), u64> = BTreeMap::new();
    let mut recent: BTreeMap<(&'static str, u32), u64> = BTreeMap::new();
    let mut window: Option<Duration> = None;
    let mut edges = 0;
    for (row, counters) in rows.iter_mut() {
        let Some(counters) = counters.take() else {
            continue;
        };
        edges += 1;
        let q = samples.entry(row.uid.clone()).or_default();
        q.push_back((now, counters));
        prune(q, now);
        let (t1, newest) = q.back().expect("just pushed");
        if let Some((t0, base)) = rate_base(q, now) {
            let secs = t1.duration_since(*t0).as_secs_f64();
            let per_second = |a: u64, b: u64| Some(round2(a.saturating_sub(b) as f64 / secs));
            row.messages_in_per_second = per_second(newest.messages_in, base.messages_in);
            row.messages_out_per_second = per_second(newest.messages_out, base.messages_out);
        }
        let oldest = (q.len() > 1).then(|| q.front().expect("not empty"));
        if let Some((t0, _)) = oldest {
            let span = t1.duration_since(*t0);
            window = Some(window.map_or(span, |w| w.max(span)));
        }
        for (kind, now_map, base_map) in [
            ("error", &newest.errors, oldest.map(|(_, c)| &c.errors)),
            (
                "disconnect",
                &newest.disconnects,
                oldest.map(|(_, c)| &c.disconnects),
            ),
        ] {
            for (code, n) in now_map {
                *totals.entry((kind, *code)).or_default() += n;
                if let Some(base) = base_map {
                    let before = base.get(code).copied().unwrap_or(0);
                    *recent.entry((kind, *code)).or_default() += n.saturating_sub(before);
                }
            }
        }
    }
    let codes = totals
        .into_iter()
        .map(|((kind, code), total)| CodeRow {
            kind,
            code,
            name: code_name(kind, code),
            total,
            recent: window.map(|_| recent.get(&(kind, code)).copied().unwrap_or(0)),
        })
        .collect();
    ErrorsPart {
        edges,
        window_seconds: window.map(|w| round2(w.as_secs_f64())),
        codes,
    }
}

/// Drops samples no longer needed: the front stays only while it is the
/// last one at least [`ERROR_WINDOW`] old (the base of the error window),
/// and never when it is much older than that (nobody looked for a while).
fn prune(q: &mut VecDeque<(Instant, Counters)>, now: Instant) {
    let stale = ERROR_WINDOW + RATE_WINDOW;
    while q.len() > 1
        && (now.duration_since(q[1].0) >= ERROR_WINDOW || now.duration_since(q[0].0) > stale)
    {
        q.pop_front();
    }
    while q.len() > MAX_SAMPLES {
        q.pop_front();
    }
}

/// The sample message rates are measured from: the oldest within
/// [`RATE_WINDOW`], else the one before the newest; none when there is only
/// the newest or it is too close to be meaningful.
fn rate_base(q: &VecDeque<(Instant, Counters)>, now: Instant) -> Option<&(Instant, Counters)> {
    let before_newest = q.len().checked_sub(2)?;
    let base = q
        .iter()
        .take(before_newest + 1)
        .find(|(t, _)| now.duration_since(*t) <= RATE_WINDOW)
        .unwrap_or(&q[before_newest]);
    let newest = q.back()?;
    (newest.0.duration_since(base.0) >= Duration::from_millis(200)).then_some(base)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn code_name(kind: &str, code: u32) -> String {
    let known = if kind == "error" {
        ErrorCode::ALL
            .iter()
            .find(|e| e.code == code)
            .map(|e| e.message.to_string())
    } else {
        u16::try_from(code)
            .ok()
            .and_then(DisconnectCode::from_code)
            .map(|d| d.reason.to_string())
    };
    known.unwrap_or_else(|| match (kind, code) {
        ("disconnect", 4000..=4999) => "application (API disconnect)".into(),
        _ => String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP groupcast_errors_total Protocol error replies sent, by code.
# TYPE groupcast_errors_total counter
groupcast_errors_total{code="102"} 3
groupcast_errors_total{code="103"} 1
groupcast_disconnects_total{code="3008"} 2
groupcast_messages_in_total{kind="connect"} 5
groupcast_messages_in_total{kind="relay"} 7
groupcast_messages_out_total{kind="pub"} 11
groupcast_messages_in_totally_else 100
groupcast_command_duration_seconds_bucket{method="connect",le="0.001"} 4
"#;

    #[test]
    fn counters_are_read_from_prometheus_text() {
        let c = Counters::parse(TEXT);
        assert_eq!(c.messages_in, 12);
        assert_eq!(c.messages_out, 11);
        assert_eq!(c.errors, BTreeMap::from([(102, 3), (103, 1)]));
        assert_eq!(c.disconnects, BTreeMap::from([(3008, 2)]));
    }

    fn sample(at: Instant, messages_in: u64, errors: u64) -> (Instant, Counters) {
        (
            at,
            Counters {
                messages_in,
                errors: BTreeMap::from([(102, errors)]),
                ..Default::default()
            },
        )
    }

    fn edge_row(uid: &str) -> EdgeRow {
        EdgeRow {
            name: uid.into(),
            uid: uid.into(),
            version: String::new(),
            address: None,
            uptime: 0,
            connections: 0,
            users: 0,
            subscriptions: 0,
            channels: 0,
            messages_in_per_second: None,
            messages_out_per_second: None,
            this: false,
            reported: true,
            error: None,
        }
    }

    #[test]
    fn rates_come_from_earlier_samples_and_none_before_the_second() {
        let d = Dashboard::default();
        let counters = |messages_in, errors| {
            let (_, c) = sample(Instant::now(), messages_in, errors);
            Some(c)
        };
        let mut rows = vec![(edge_row("a"), counters(100, 4))];
        let first = rates(&d, &mut rows);
        assert_eq!(rows[0].0.messages_in_per_second, None);
        assert_eq!(first.window_seconds, None);
        assert_eq!(first.codes[0].total, 4);
        assert_eq!(first.codes[0].recent, None);
        // Pretend the first sample was taken 2 s ago.
        {
            let mut s = d.samples.lock();
            let q = s.get_mut("a").unwrap();
            q[0].0 = Instant::now() - Duration::from_secs(2);
        }
        let mut rows = vec![(edge_row("a"), counters(140, 6)), (edge_row("gone"), None)];
        let second = rates(&d, &mut rows);
        let r = rows[0].0.messages_in_per_second.unwrap();
        assert!((19.0..=20.5).contains(&r), "{r}");
        assert_eq!(second.codes[0].recent, Some(2));
        assert_eq!(second.codes[0].name, "unknown channel");
        assert_eq!(second.edges, 1);
        assert!(!d.samples.lock().contains_key("gone"));
    }

    #[test]
    fn samples_stay_bounded_and_forget_what_nobody_looked_at() {
        let now = Instant::now();
        let mut q: VecDeque<_> = (0..400)
            .map(|i| sample(now - Duration::from_millis(400 - i), i, 0))
            .collect();
        prune(&mut q, now);
        assert_eq!(q.len(), MAX_SAMPLES);
        // Ten minutes without a look: the old sample is no base.
        let mut q: VecDeque<_> = [
            sample(now - Duration::from_secs(600), 0, 0),
            sample(now, 10, 0),
        ]
        .into();
        prune(&mut q, now);
        assert_eq!(q.len(), 1);
        assert!(rate_base(&q, now).is_none());
        // The base of the error window is the last sample a minute old.
        let mut q: VecDeque<_> = [
            sample(now - Duration::from_secs(65), 0, 0),
            sample(now - Duration::from_secs(61), 0, 0),
            sample(now - Duration::from_secs(30), 0, 0),
            sample(now, 0, 0),
        ]
        .into();
        prune(&mut q, now);
        assert_eq!(q.len(), 3);
        assert_eq!(now.duration_since(q[0].0).as_secs(), 61);
    }
}
