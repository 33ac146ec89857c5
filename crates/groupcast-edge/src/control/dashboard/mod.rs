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

mod rates;

use rates::{rates, Counters};

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
        include_str!("page.html"),
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
