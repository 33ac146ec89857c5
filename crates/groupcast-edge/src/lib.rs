//! The edge role: everything between a client's socket and the [`Node`].
//!
//! `groupcast-edge` terminates WebSockets (axum over tokio-tungstenite),
//! speaks the Centrifugo client protocol v2 (JSON) and the raw relay,
//! authenticates clients with JWTs, enforces per-connection limits, serves
//! the Centrifugo-compatible server HTTP API, `/metrics`, `/healthz`,
//! `/readyz` and the operator dashboard. The entry point is [`run`].
//!
//! # Layout
//! * [`config`]: the configuration tree, layering and validation.
//! * [`auth`]: connection and subscription token verification, minting.
//! * [`conn`]: per-connection outgoing queue (bounded in bytes), writer task, control inbox.
//! * [`limits`]: token buckets for command, publish and new-connection rates.
//! * [`session`]: the Centrifugo protocol session (commands, subscriptions, recovery, pings).
//! * [`relay`]: the raw relay session.
//! * [`api`]: the server HTTP API.
//! * [`cluster`]: API actions on other edges' connections, leaves of dead edges, `info`.
//! * [`dashboard`]: the operator dashboard (`/dashboard`) and its data.
//! * [`backbone`]: which broker and membership the node runs on.
//! * [`state`]: state shared by sessions and the API; the client registry.
//! * [`server`]: the router and [`run`].
//! * [`tls`]: the listener (TCP or TLS with rustls/ring) and certificate reload.
//! * [`metrics`]: Prometheus recorder and cached handles.
//!
//! [`Node`]: groupcast_core::Node

pub mod auth;
pub mod backbone;
pub mod config;
pub mod conn;
pub mod control;
pub mod glob;
pub mod keepalive;
pub mod limits;
pub mod metrics;
pub mod origin;
pub mod proxy;
pub mod relay;
pub mod request_deadlines;
pub mod routes;
pub mod server;
pub mod session;
pub mod state;
pub mod tls;
pub mod webhooks;

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
