//! Prometheus metrics: one recorder per process, handles cached here.
//!
//! `/metrics` renders the recorder (see `server.rs`). Hot paths use the cached
//! handles in [`Metrics`] (an atomic add), never the `counter!` lookup.
//! `docs/operations.md` lists every metric.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static METRICS: OnceLock<Metrics> = OnceLock::new();

/// Command latency buckets in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Install the process-wide recorder (idempotent) and start its upkeep.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), LATENCY_BUCKETS)
                .expect("static buckets are valid")
                .set_buckets_for_metric(Matcher::Suffix("latency_seconds".into()), LATENCY_BUCKETS)
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (embedding application):
            // then our handles record there and this handle renders empty.
            let _ = metrics::set_global_recorder(recorder);
            groupcast_nats::describe_metrics();
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                })
                .expect("spawn metrics upkeep thread");
            handle
        })
        .clone()
}

/// Cached metric handles.
pub struct Metrics {
    /// Centrifugo-protocol connections by transport: WebSocket, HTTP streaming, SSE.
    pub connections_protocol: Gauge,
    pub connections_http_stream: Gauge,
    pub connections_sse: Gauge,
    pub connections_relay: Gauge,
    pub connections_socketio: Gauge,
    pub subscriptions: Gauge,
    pub channels: Gauge,
    pub messages_out_pub: Counter,
    pub messages_out_join: Counter,
    pub messages_out_leave: Counter,
    pub messages_out_reply: Counter,
    pub messages_out_relay: Counter,
    pub messages_in_relay: Counter,
    pub bytes_out: Counter,
    pub bytes_in: Counter,
    pub frames_out: Counter,
    pub control_dropped: Counter,
    pub dead_node_leaves: Counter,
    pub forward_failures: Counter,
}

impl Metrics {
    pub fn get() -> &'static Metrics {
        METRICS.get_or_init(|| {
            install();
            describe();
            Metrics {
                connections_protocol: metrics::gauge!("groupcast_connections", "protocol" => "centrifugo", "transport" => "websocket"),
                connections_http_stream: metrics::gauge!("groupcast_connections", "protocol" => "centrifugo", "transport" => "http_stream"),
                connections_sse: metrics::gauge!("groupcast_connections", "protocol" => "centrifugo", "transport" => "sse"),
                connections_relay: metrics::gauge!("groupcast_connections", "protocol" => "relay"),
                connections_socketio: metrics::gauge!("groupcast_connections", "protocol" => "socketio"),
                subscriptions: metrics::gauge!("groupcast_subscriptions"),
                channels: metrics::gauge!("groupcast_channels"),
                messages_out_pub: metrics::counter!("groupcast_messages_out_total", "kind" => "pub"),
                messages_out_join: metrics::counter!("groupcast_messages_out_total", "kind" => "join"),
                messages_out_leave: metrics::counter!("groupcast_messages_out_total", "kind" => "leave"),
                messages_out_reply: metrics::counter!("groupcast_messages_out_total", "kind" => "reply"),
                messages_out_relay: metrics::counter!("groupcast_messages_out_total", "kind" => "relay"),
                messages_in_relay: metrics::counter!("groupcast_messages_in_total", "kind" => "relay"),
                bytes_out: metrics::counter!("groupcast_bytes_out_total"),
                bytes_in: metrics::counter!("groupcast_bytes_in_total"),
                frames_out: metrics::counter!("groupcast_frames_out_total"),
                control_dropped: metrics::counter!("groupcast_control_dropped_total"),
                dead_node_leaves: metrics::counter!("groupcast_dead_node_leaves_total"),
                forward_failures: metrics::counter!("groupcast_api_forward_failures_total"),
            }
        })
    }

    /// A client command arrived (by method).
    pub fn command_in(method: &'static str) {
        metrics::counter!("groupcast_messages_in_total", "kind" => method).increment(1);
    }

    /// How long a client command took (by method).
    pub fn command_duration(method: &'static str, d: Duration) {
        metrics::histogram!("groupcast_command_duration_seconds", "method" => method)
            .record(d.as_secs_f64());
    }

    /// An error reply was sent (by protocol error code).
    pub fn error(code: u32) {
        metrics::counter!("groupcast_errors_total", "code" => code.to_string()).increment(1);
    }

    /// A connection was closed by the server (by disconnect code).
    pub fn disconnect(code: u16) {
        metrics::counter!("groupcast_disconnects_total", "code" => code.to_string()).increment(1);
    }

    /// A named limit refused something (the limit's configuration key).
    pub fn limit_hit(limit: &'static str) {
        metrics::counter!("groupcast_limit_hits_total", "limit" => limit).increment(1);
    }

    /// A server API call (by method and outcome).
    pub fn api_call(method: &str, outcome: &'static str) {
        metrics::counter!("groupcast_api_requests_total", "method" => method.to_string(), "outcome" => outcome)
            .increment(1);
    }

    /// A `/dashboard/data` request (outcome: `ok`, `unauthorized`).
    pub fn dashboard_request(outcome: &'static str) {
        metrics::counter!("groupcast_dashboard_requests_total", "outcome" => outcome).increment(1);
    }

    /// The dashboard data was built afresh (at most once per second,
    /// however many viewers).
    pub fn dashboard_refresh() {
        metrics::counter!("groupcast_dashboard_refreshes_total").increment(1);
    }

    /// How long a served API call took (by method).
    pub fn api_duration(method: &str, d: Duration) {
        metrics::histogram!("groupcast_api_duration_seconds", "method" => method.to_string())
            .record(d.as_secs_f64());
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        "groupcast_connections",
        "Open client connections by protocol (and transport for the Centrifugo protocol: websocket, http_stream, sse)."
    );
    describe_counter!(
        "groupcast_emulation_requests_total",
        "Emulation requests (POST /emulation) by outcome: delivered, forwarded (to the edge holding the session), or why refused."
    );
    describe_counter!(
        "groupcast_stream_refused_total",
        "HTTP streaming and SSE connections refused before their stream opened, by transport and reason."
    );
    describe_gauge!(
        "groupcast_subscriptions",
        "Channel subscriptions held by local connections."
    );
    describe_gauge!(
        "groupcast_channels",
        "Channels with at least one local subscriber."
    );
    describe_counter!(
        "groupcast_join_leave_suppressed_total",
        "Joins and leaves not pushed to a channel's subscribers on this edge because it had more of them than its namespace's join_leave_max_subscribers (once per join or leave)."
    );
    describe_gauge!(
        "groupcast_join_leave_suppressed_channels",
        "Channels whose join/leave pushes are off on this edge (above join_leave_max_subscribers, until back to half of it)."
    );
    describe_counter!(
        "groupcast_join_leave_frames_total",
        "Coalesced join/leave frames: joins and leaves of a channel gathered for join_leave_coalesce and sent to its subscribers together (once per frame and channel, not per subscriber)."
    );
    describe_counter!(
        "groupcast_dead_node_leaves_total",
        "Presence entries of dead edges announced here as leave (lease expired)."
    );
    describe_counter!(
        "groupcast_api_forward_failures_total",
        "API actions by user/client that another edge did not acknowledge in time (answered 108)."
    );
    describe_counter!(
        "groupcast_messages_in_total",
        "Messages received from clients, by command or relay."
    );
    describe_counter!(
        "groupcast_messages_out_total",
        "Messages queued to clients, by kind."
    );
    describe_counter!(
        "groupcast_bytes_out_total",
        Unit::Bytes,
        "Bytes written to client WebSockets."
    );
    describe_counter!(
        "groupcast_bytes_in_total",
        Unit::Bytes,
        "Bytes read from client WebSockets."
    );
    describe_counter!(
        "groupcast_frames_out_total",
        "WebSocket frames written (one frame may batch messages)."
    );
    describe_counter!(
        "groupcast_limit_hits_total",
        "Requests refused by a named limit, by the limit's configuration key."
    );
    describe_counter!(
        "groupcast_control_dropped_total",
        "Server API actions dropped because a connection's inbox was full."
    );
    describe_histogram!(
        "groupcast_command_duration_seconds",
        Unit::Seconds,
        "Client command handling time."
    );
    describe_counter!(
        "groupcast_errors_total",
        "Protocol error replies sent, by code."
    );
    describe_counter!(
        "groupcast_disconnects_total",
        "Server-initiated disconnects, by code."
    );
    describe_counter!(
        "groupcast_api_requests_total",
        "Server API calls by method and outcome."
    );
    describe_counter!(
        "groupcast_dashboard_requests_total",
        "Dashboard data requests by outcome (ok, unauthorized)."
    );
    describe_counter!(
        "groupcast_dashboard_refreshes_total",
        "Times the dashboard data was built afresh (at most once per second)."
    );
    describe_histogram!(
        "groupcast_api_duration_seconds",
        Unit::Seconds,
        "Server API call handling time."
    );
    describe_counter!(
        "groupcast_webhook_events_total",
        "Webhook events by type and outcome (queued; dropped: no room, or given up for another client's event)."
    );
    describe_counter!(
        "groupcast_webhook_requests_total",
        "Webhook POSTs by outcome (ok, retried, failed: batch dropped after its retries)."
    );
    describe_counter!(
        "groupcast_user_status_dropped_total",
        "User status changes not published on client.user_status_channel: 10,000 users already had a change waiting."
    );
    describe_counter!(
        "groupcast_relay_backend_events_total",
        "Relay route events to backend targets, by event (join, message, heartbeat, leave) and outcome (sent, gone: no responders, failed, dropped: its connection lost its share of a full HTTP target queue)."
    );
    describe_counter!(
        "groupcast_relay_http_evictions_total",
        "Relay route connections closed (3013) for holding more than their share of a full HTTP target queue that another connection needed, by target."
    );
    describe_counter!(
        "groupcast_relay_http_requests_total",
        "POSTs to HTTP relay targets by outcome (ok, retried, failed: batch dropped after its retries)."
    );
    describe_counter!(
        "groupcast_proxy_requests_total",
        "Event proxy calls to the backend, by event (connect, refresh, subscribe, sub_refresh, publish, rpc, send) and outcome."
    );
    describe_counter!(
        "groupcast_publish_proxy_refusals_total",
        "Client publications refused at the publish proxy by the edge, by reason (binary_not_accepted: not JSON and the proxy lacks `binary`; unusable_answer)."
    );
    describe_histogram!(
        "groupcast_proxy_duration_seconds",
        Unit::Seconds,
        "Event proxy call time, by event, whatever the outcome."
    );
    describe_histogram!(
        "groupcast_delivery_latency_seconds",
        Unit::Seconds,
        "From a publication accepted (any node) to handed to this node's subscribers, once per publication per node with subscribers."
    );
}
