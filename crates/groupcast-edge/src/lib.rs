//! The edge role: everything between a client's socket and the [`Node`].
//!
//! `groupcast-edge` terminates WebSockets (axum over tokio-tungstenite),
//! speaks the Centrifugo client protocol v2 (JSON and protobuf), the raw
//! relay and relay to a backend,
//! authenticates clients with JWTs, enforces per-connection limits, serves
//! the Centrifugo-compatible server HTTP API, `/metrics`, `/healthz`,
//! `/readyz` and the operator dashboard. The entry point is [`run`].
//!
//! # Layout
//!
//! Three floors; a module imports only from its own floor or the ones
//! below (no circle: `docs/architecture.md` draws the graph).
//!
//! **Base**: what every session and the control plane stand on.
//! * [`config`]: the configuration tree, layering and validation; imports
//!   nothing else of the crate.
//! * `glob`, `origin`: glob patterns; the `Origin` checks (client and
//!   route `allowed_origins`, same origin).
//! * `routes`: `[[relay.routes]]` path templates and the HTTP targets'
//!   senders.
//! * [`auth`]: connection and subscription tokens (verify, mint), the API key.
//! * `conn`: per-connection outgoing queue (bounded in bytes), writer task,
//!   control inbox. `keepalive`: pings for plain WebSockets.
//! * `limits`: token buckets for command, publish and new-connection rates.
//! * `proxy`: event proxies (HTTP calls to the backend). `webhooks`:
//!   signed, batched event POSTs.
//! * `publish_gate`: what every client publication passes, whatever the
//!   session (size limit, the namespace's publish proxy).
//! * [`metrics`]: Prometheus recorder and cached handles.
//! * `request_deadlines`, `tls`: the listener (TCP or TLS with rustls/ring,
//!   certificate reload) and its deadlines for a request's first byte and head.
//! * [`state`]: [`EdgeState`](state::EdgeState), shared by sessions and the
//!   control plane (node, registry, proxies, webhooks, routes, drain list);
//!   [`check_config`].
//! * [`backbone`]: which broker and membership the [`Node`] runs on.
//!   `fence`: closes the clients of an edge that lost NATS (3016) or its
//!   membership lease (3017).
//! * `holder`: ids that name the edge holding a session (forwarding between
//!   edges over the node bus, no sticky sessions).
//!
//! **Sessions**: one per connection.
//! * [`session`]: the Centrifugo protocol session (connect, subscribe and
//!   recovery, publish, expiry, server-initiated actions), over WebSocket,
//!   HTTP streaming or SSE (`session::stream`, with the emulation endpoint
//!   in `session::emulation`).
//! * `relay`: plain WebSockets: `relay::raw` (the raw relay) and
//!   `relay::route` (relay to a backend).
//! * `socketio`: the Socket.IO server (Engine.IO transports in
//!   `socketio::engine`, the Socket.IO session in `socketio::socket`).
//!
//! **Control plane**: what acts from outside a session.
//! * `control`: the server HTTP API (`control::api`), API actions on
//!   connections (`control::action`), requests between edges
//!   (`control::forward`), membership events (`control::events`), the
//!   operator dashboard (`control::dashboard`).
//!
//! **Top**: `server`, the router and [`run`].
//!
//! [`Node`]: groupcast_core::Node

pub mod auth;
pub mod backbone;
pub mod config;
pub(crate) mod conn;
pub(crate) mod control;
pub(crate) mod fence;
pub(crate) mod glob;
pub(crate) mod holder;
pub(crate) mod keepalive;
pub(crate) mod limits;
pub mod metrics;
pub(crate) mod origin;
pub(crate) mod proxy;
pub(crate) mod publish_gate;
pub(crate) mod relay;
pub(crate) mod request_deadlines;
pub(crate) mod routes;
pub(crate) mod server;
pub mod session;
pub(crate) mod socketio;
pub mod state;
pub(crate) mod tls;
pub(crate) mod webhooks;

pub use config::Config;
pub use server::run;
pub use state::check_config;

/// Errors that stop the edge.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("cluster: {0}")]
    Cluster(String),
}
