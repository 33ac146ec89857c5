//! Relay to a backend: plain WebSocket connections whose frames go to the
//! application's backend processes (docs/backends.md, "Relay to a
//! backend").
//!
//! A `[[relay.routes]]` entry serves a path (`/ws/chat/{room}/`). Each
//! connection on it is bound to a backend **target**, a name such as
//! `chat` or `chat.room-42`: from the route (with the path's parameters
//! filled in), or from the connect proxy's answer or the token's `target`
//! claim. The target receives, in order per connection, the events
//! `join`, `message` (one per text or binary frame), `heartbeat` (every
//! `heartbeat_interval`, when set) and `leave`, as JSON:
//!
//! * over **NATS** on `{nats.prefix}.relay.{target}`: any number of
//!   backend processes share a target with a queue group;
//! * over **HTTP** for targets named in `[[relay.http_targets]]`: batched
//!   POSTs of `{"events": [...]}`, signed and retried like webhooks, in
//!   order. The target's queue is bounded in events and bytes and shared
//!   out between connections: when it is full, a connection within its
//!   share takes the room of the one most over its share, which is closed
//!   with 3013 (reason [`OVER_SHARE`]) and its queued events dropped.
//!
//! The backend answers through the server API by client id, on whichever
//! edge holds the connection: `relay_send` (a text or binary frame),
//! `relay_close`, `relay_transfer` (to another target), `relay_target_gone`
//! (closes every connection of a target with 3015), and `subscribe` to
//! channels, whose publications then arrive as raw frames. On NATS, with
//! `api.over_nats`, the same API is served on `{nats.prefix}.api`
//! (request-reply or plain publish; each command carries the API key).
//!
//! Browsers' `Origin` must be in the route's `allowed_origins`; with none
//! configured, only the deployment's own origins: `client.public_origins`,
//! or without them the scheme, host and port the page connected to, for an
//! IP address or `localhost` only (`crate::origin`).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket};
use axum::http::HeaderMap;
use base64::Engine;
use futures_util::StreamExt;
use groupcast_core::broker::BrokerError;
use groupcast_core::hub::SubscriberKind;
use groupcast_core::{valid_target, BackendBus};
use groupcast_proto::DisconnectCode;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::config::RouteConfig;
use crate::conn::{Conn, Control, Inbound, MAX_CLOSE_REASON};
use crate::keepalive::Keepalive;
use crate::limits::ConnRates;
use crate::metrics::Metrics;
use crate::proxy::{strings, Answer, Granted};
use crate::routes::{fill, HttpTarget};
use crate::state::EdgeState;
use crate::webhooks::queue::{Item, Owner, Refused};

/// Close reason (code 3013) of a connection holding more than its share of
/// a full HTTP target queue when another connection needed the room.
pub(crate) const OVER_SHARE: &str = "too many requests: over its share of the backend queue";

/// Where a target's events go.
#[derive(Clone)]
pub(crate) enum Sink {
    Nats(Arc<dyn BackendBus>),
    Http(HttpTarget),
}

impl EdgeState {
    /// Can this edge send events to `target` (an HTTP target by that name,
    /// or NATS)?
    pub(crate) fn can_reach(&self, target: &str) -> bool {
        self.sink(target).is_some()
    }

    pub(crate) fn sink(&self, target: &str) -> Option<Sink> {
        if let Some(t) = self.routes.http_target(target) {
            return Some(Sink::Http(t.clone()));
        }
        self.node.backend_bus().map(|b| Sink::Nats(b.clone()))
    }
}

/// One event to a target, as the backend receives it.
#[derive(Serialize)]
struct Event<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    client: &'a str,
    user: &'a str,
    node: &'a str,
    target: &'a str,
    /// 0, 1, 2... per connection, across transfers.
    seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<&'a RawValue>,
    #[serde(flatten)]
    body: Body<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Body<'a> {
    Join {
        path: &'a str,
        params: &'a BTreeMap<String, String>,
        /// The NATS subject of this edge's commands, when there is one:
        /// commands sent there skip forwarding.
        #[serde(skip_serializing_if = "Option::is_none")]
        commands: Option<&'a str>,
    },
    Text {
        frame: &'static str,
        data: &'a str,
    },
    Binary {
        frame: &'static str,
        b64data: String,
    },
    Heartbeat {
        uptime_ms: u64,
        messages: u64,
    },
    Leave {
        code: u16,
        reason: &'a str,
    },
}

/// Why an event could not be handed over.
pub(crate) enum EmitError {
    /// Nothing listens on the target's subject (only asked when
    /// `relay.target_gone_on_no_responders`).
    Gone,
    /// NATS down, the HTTP queue full past its timeout, no way to reach
    /// the target.
    Failed,
    /// Over its share of a full HTTP target queue, the connection gave its
    /// room to another one: closed already (3013).
    Evicted,
}

/// Closes `conn` for an event that could not be handed over.
pub(crate) fn close_for(conn: &Conn, e: EmitError) {
    match e {
        EmitError::Gone => conn.close(DisconnectCode::TARGET_GONE),
        EmitError::Failed => conn.close(DisconnectCode::SERVER_ERROR),
        EmitError::Evicted => {}
    }
}

/// A connection's binding to its target.
pub(crate) struct Binding {
    pub(crate) target: String,
    pub(crate) meta: Option<Arc<RawValue>>,
    sink: Sink,
    /// Its share of an HTTP target's queue: told when it loses it.
    owner: Option<Arc<Owner>>,
}

impl Binding {
    pub(crate) fn new(
        conn: &Arc<Conn>,
        target: String,
        meta: Option<Arc<RawValue>>,
        sink: Sink,
    ) -> Binding {
        let owner = matches!(sink, Sink::Http(_)).then(|| {
            let (id, conn) = (conn.id, Arc::downgrade(conn));
            let label = target.clone();
            Owner::new(id, move || {
                metrics::counter!("groupcast_relay_http_evictions_total", "target" => label.clone())
                    .increment(1);
                if let Some(c) = conn.upgrade() {
                    c.close_with(
                        DisconnectCode::TOO_MANY_REQUESTS.code,
                        Cow::Borrowed(OVER_SHARE),
                    );
                }
            })
        });
        Binding {
            target,
            meta,
            sink,
            owner,
        }
    }
}

struct RelayConn {
    state: Arc<EdgeState>,
    conn: Arc<Conn>,
    user: String,
    binding: Binding,
    seq: u64,
    messages: u64,
    opened: Instant,
    path: String,
    params: BTreeMap<String, String>,
}

impl RelayConn {
    async fn emit(&mut self, body: Body<'_>) -> Result<(), EmitError> {
        let kind = match &body {
            Body::Join { .. } => "join",
            Body::Text { .. } | Body::Binary { .. } => "message",
            Body::Heartbeat { .. } => "heartbeat",
            Body::Leave { .. } => "leave",
        };
        let ask = matches!(kind, "join" | "heartbeat")
            && self.state.config.relay.target_gone_on_no_responders;
        let event = Event {
            kind,
            client: &self.conn.client,
            user: &self.user,
            node: &self.state.config.name,
            target: &self.binding.target,
            seq: self.seq,
            meta: self.binding.meta.as_deref(),
            body,
        };
        self.seq += 1;
        let outcome = match serde_json::to_string(&event) {
            Err(_) => Err(EmitError::Failed),
            Ok(text) => send(&self.state, &self.binding, kind, text, ask).await,
        };
        let label = match &outcome {
            Ok(()) => "sent",
            Err(EmitError::Gone) => "gone",
            Err(EmitError::Failed) => "failed",
            Err(EmitError::Evicted) => "dropped",
        };
        metrics::counter!("groupcast_relay_backend_events_total", "event" => kind, "outcome" => label)
            .increment(1);
        outcome
    }
}

/// Hands one event (`kind`, its JSON `text`) to `b`'s target: a NATS publish (a request when
/// `ask`), or the HTTP target's queue.
pub(crate) async fn send(
    state: &EdgeState,
    b: &Binding,
    kind: &'static str,
    text: String,
    ask: bool,
) -> Result<(), EmitError> {
    let cfg = &state.config.relay;
    match &b.sink {
        Sink::Nats(bus) if ask => {
            match bus
                .request_event(&b.target, text.into(), cfg.request_timeout)
                .await
            {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err(EmitError::Gone),
                // No answer in time is not "gone": the event was published
                // and the backend may be busy.
                Err(BrokerError::Timeout(_)) => Ok(()),
                Err(e) => {
                    tracing::warn!(target = %b.target, error = %e, "relay event not published");
                    Err(EmitError::Failed)
                }
            }
        }
        Sink::Nats(bus) => bus
            .publish_event(&b.target, text.into())
            .await
            .map_err(|e| {
                tracing::warn!(target = %b.target, error = %e, "relay event not published");
                EmitError::Failed
            }),
        Sink::Http(t) => {
            let event = RawValue::from_string(text).map_err(|_| EmitError::Failed)?;
            let item = Item {
                owner: b.owner.as_ref().map_or(0, |o| o.id),
                kind,
                // The backend learns that the connection is gone (a relay
                // `leave`, a Socket.IO `disconnect`), even one whose other
                // events were dropped for room.
                keep: matches!(kind, "leave" | "disconnect"),
                event,
            };
            match t.queue.push(item, b.owner.as_ref(), t.wait).await {
                Ok(()) => Ok(()),
                Err(Refused::Evicted) => Err(EmitError::Evicted),
                Err(Refused::Full) => {
                    tracing::warn!(target = %b.target, "relay HTTP target's queue stayed full");
                    Err(EmitError::Failed)
                }
            }
        }
    }
}

/// Who the connection is and where it goes, before it is bound.
struct Admitted {
    user: String,
    meta: Option<Arc<RawValue>>,
    target: String,
    channels: Vec<String>,
}

/// Why a connection is refused after the upgrade.
fn refuse(conn: &Conn, code: u16, reason: &str) {
    let reason = crate::conn::cut_reason(reason.to_string(), MAX_CLOSE_REASON);
    conn.close_with(code, Cow::Owned(reason));
}

/// Authenticate: the connect proxy, else the token, else anonymous (when
/// the route allows it).
async fn admit(
    state: &EdgeState,
    conn: &Conn,
    route: &RouteConfig,
    req: &Request,
) -> Result<Admitted, (u16, String)> {
    let params = &req.params;
    let mut a = Admitted {
        user: String::new(),
        meta: None,
        target: fill(&route.target, params),
        channels: route.channels.iter().map(|c| fill(c, params)).collect(),
    };
    let token = req.query.get("token").filter(|t| !t.is_empty());
    if !route.connect_proxy.is_empty() {
        let proxy = state
            .proxies
            .get(&route.connect_proxy)
            .ok_or((DisconnectCode::SERVER_ERROR.code, "no connect proxy".into()))?;
        let body = json!({
            "client": conn.client,
            "transport": "websocket",
            "protocol": "relay",
            "encoding": "raw",
            "relay": {"path": req.path, "params": params, "query": req.query},
        });
        match proxy.call("connect", &body, &req.headers).await {
            Ok(Answer::Result(r)) => {
                let g = Granted::of(&r);
                (a.user, a.meta) = (g.user, g.meta);
                if let Some(t) = g.target {
                    a.target = t;
                }
                a.channels.extend(strings(&r, "channels"));
            }
            Ok(Answer::Error { code, message }) => {
                return Err((
                    DisconnectCode::PERMISSION_DENIED.code,
                    format!("{message} ({code})"),
                ));
            }
            Ok(Answer::Disconnect { code, reason }) => return Err((code, reason)),
            Err(_) => {
                return Err((
                    DisconnectCode::SERVER_ERROR.code,
                    "connect proxy failed".into(),
                ))
            }
        }
    } else if let Some(t) = token {
        let invalid = DisconnectCode::INVALID_TOKEN;
        let claims = state
            .verifier
            .verify_connect(t)
            .map_err(|e| (invalid.code, e.to_string()))?;
        a.user = claims.sub;
        a.meta = claims.meta.map(Arc::from);
        if let Some(t) = claims.target {
            a.target = t;
        }
        a.channels.extend(claims.channels);
    } else if route.require_token {
        let invalid = DisconnectCode::INVALID_TOKEN;
        return Err((invalid.code, format!("{}: none given", invalid.reason)));
    }
    let per_user = state.config.client.max_connections_per_user;
    if per_user > 0 && !a.user.is_empty() && state.registry.find(&a.user, "").len() >= per_user {
        Metrics::limit_hit("max_connections_per_user");
        let limit = DisconnectCode::CONNECTION_LIMIT;
        return Err((limit.code, limit.reason.into()));
    }
    if !valid_target(&a.target) {
        tracing::warn!(path = %req.path, target = %a.target, "relay route: no valid backend target for a connection");
        let na = DisconnectCode::NOT_AVAILABLE;
        return Err((na.code, format!("{}: no backend target", na.reason)));
    }
    Ok(a)
}

/// What the upgrade request carried.
pub struct Request {
    pub route: usize,
    pub path: String,
    pub params: BTreeMap<String, String>,
    pub query: BTreeMap<String, String>,
    /// The upgrade's headers the event proxies forward.
    pub headers: HeaderMap,
}

/// Serve one connection of a backend relay route.
pub async fn serve(state: Arc<EdgeState>, socket: WebSocket, req: Request) {
    let (opened, mut stream) = state.open(socket, SubscriberKind::Relay);
    let conn = opened.conn.clone();
    let route = &state.routes.routes[req.route].config;
    let admitted = match admit(&state, &conn, route, &req).await {
        Ok(a) => a,
        Err((code, reason)) => {
            refuse(&conn, code, &reason);
            opened.finish().await;
            return;
        }
    };
    let Some(sink) = state.sink(&admitted.target) else {
        tracing::warn!(target = %admitted.target, "relay target unreachable: not an HTTP target, and no NATS");
        let na = DisconnectCode::NOT_AVAILABLE;
        refuse(&conn, na.code, "backend target unreachable");
        opened.finish().await;
        return;
    };
    let mut rc = RelayConn {
        state: state.clone(),
        conn: conn.clone(),
        user: admitted.user,
        binding: Binding::new(&conn, admitted.target, admitted.meta, sink),
        seq: 0,
        messages: 0,
        opened: Instant::now(),
        path: req.path,
        params: req.params,
    };
    rc.run(&mut stream, admitted.channels, route.heartbeat_interval)
        .await;
    opened.finish().await;
}

impl RelayConn {
    async fn run(
        &mut self,
        stream: &mut futures_util::stream::SplitStream<WebSocket>,
        channels: Vec<String>,
        heartbeat: Duration,
    ) {
        let state = self.state.clone();
        let conn = self.conn.clone();
        state.registry.add(conn.clone(), &self.user);
        state.webhooks.emit(
            "client_connected",
            json!({"client": conn.client, "user": self.user, "transport": "relay"}),
        );
        if !self.user.is_empty() {
            state.node.connections_changed(&self.user, 1);
        }
        let mut subs = HashSet::new();
        for ch in channels {
            self.subscribe(&mut subs, &ch).await;
        }
        let commands = state.backend_commands.get().cloned();
        let (path, params) = (self.path.clone(), self.params.clone());
        match self
            .emit(Body::Join {
                path: &path,
                params: &params,
                commands: commands.as_deref(),
            })
            .await
        {
            Ok(()) => {}
            Err(e) => close_for(&conn, e),
        }
        let cfg = &state.config.client;
        let mut keepalive = Keepalive::new(cfg);
        // Never ticks without heartbeats.
        let beat_every = if heartbeat.is_zero() {
            Duration::from_secs(86_400 * 365)
        } else {
            heartbeat
        };
        let mut beat =
            tokio::time::interval_at(tokio::time::Instant::now() + beat_every, beat_every);
        let mut rates = ConnRates::new(cfg);
        let mut peer_close: Option<(u16, String)> = None;
        let m = Metrics::get();
        while !conn.is_closed() {
            tokio::select! {
                _ = conn.cancelled() => break,
                alive = keepalive.tick(&conn) => if !alive { break },
                _ = beat.tick() => {
                    let body = Body::Heartbeat {
                        uptime_ms: self.opened.elapsed().as_millis() as u64,
                        messages: self.messages,
                    };
                    if let Err(e) = self.emit(body).await {
                        close_for(&conn, e);
                    }
                }
                control = conn.next_control() => self.control(&mut subs, control).await,
                msg = stream.next() => {
                    keepalive.heard();
                    if let Some(Ok(Message::Close(f))) = &msg {
                        peer_close = Some(match f {
                            Some(f) => (f.code, f.reason.to_string()),
                            None => (1005, "no status code".into()),
                        });
                    }
                    let frame = match conn.inbound(msg) {
                        Inbound::End => break,
                        Inbound::Control => continue,
                        Inbound::Text(t) => Ok(t),
                        Inbound::Binary(b) => Err(b),
                    };
                    // The relay has no error reply: over the rate, it
                    // closes with 3013 (the client may reconnect).
                    if rates.check(true).is_err() {
                        conn.close(DisconnectCode::TOO_MANY_REQUESTS);
                        break;
                    }
                    m.messages_in_relay.increment(1);
                    self.messages += 1;
                    let body = match frame {
                        Ok(t) => {
                            m.bytes_in.increment(t.len() as u64);
                            self.text(&t).await
                        }
                        Err(b) => {
                            m.bytes_in.increment(b.len() as u64);
                            let b64data = base64::engine::general_purpose::STANDARD.encode(&b);
                            self.emit(Body::Binary { frame: "binary", b64data }).await
                        }
                    };
                    if let Err(e) = body {
                        close_for(&conn, e);
                    }
                }
            }
        }
        // Why it ended: the server's close, else the client's close frame,
        // else the connection was lost (1006).
        let (code, reason) = conn
            .close_reason()
            .or(peer_close)
            .unwrap_or((1006, "connection lost".into()));
        let _ = self
            .emit(Body::Leave {
                code,
                reason: &reason,
            })
            .await;
        for ch in subs {
            state.node.remove_subscriber(&ch, conn.id).await;
        }
        state.registry.remove(&conn.client);
        // As for protocol connections: the server's code, none when the
        // client left.
        let (hook_code, hook_reason) = match conn.close_reason() {
            Some((c, r)) => (json!(c), r),
            None => (Value::Null, "connection closed".to_string()),
        };
        state.webhooks.emit(
            "client_disconnected",
            json!({"client": conn.client, "user": self.user, "code": hook_code,
                   "reason": hook_reason, "transport": "relay"}),
        );
        if !self.user.is_empty() {
            state.node.connections_changed(&self.user, -1);
        }
    }

    async fn text(&mut self, t: &str) -> Result<(), EmitError> {
        self.emit(Body::Text {
            frame: "text",
            data: t,
        })
        .await
    }

    /// Subscribe to a channel: its publications arrive as raw frames.
    async fn subscribe(&self, subs: &mut HashSet<String>, channel: &str) {
        if subs.contains(channel) {
            return;
        }
        if subs.len() >= self.state.config.client.max_channels_per_connection {
            Metrics::limit_hit("max_channels_per_connection");
            tracing::warn!(client = %self.conn.client, channel, "relay connection: channel limit; not subscribed");
            return;
        }
        if let Err(e) = self.state.channel(channel) {
            tracing::warn!(client = %self.conn.client, channel, error = %e, "relay connection: cannot subscribe");
            return;
        }
        match self
            .state
            .node
            .add_subscriber(channel, self.conn.clone(), false)
            .await
        {
            Ok(_) => {
                subs.insert(channel.to_string());
            }
            Err(e) => {
                tracing::warn!(client = %self.conn.client, channel, error = %e, "relay connection: subscribe failed");
            }
        }
    }

    async fn control(&mut self, subs: &mut HashSet<String>, control: Control) {
        match control {
            Control::Disconnect { code, reason } => self.conn.close_with(code, reason.into()),
            Control::Subscribe { channel, .. } => self.subscribe(subs, &channel).await,
            Control::Unsubscribe { channel, .. } => {
                if subs.remove(&channel) {
                    self.state
                        .node
                        .remove_subscriber(&channel, self.conn.id)
                        .await;
                }
            }
            Control::Refresh { expired, .. } => {
                if expired {
                    self.conn.close(DisconnectCode::EXPIRED);
                }
            }
            Control::Transfer { target, meta } => {
                let Some(sink) = self.state.sink(&target) else {
                    tracing::warn!(client = %self.conn.client, %target, "relay transfer to an unreachable target refused");
                    return;
                };
                let _ = self
                    .emit(Body::Leave {
                        code: 0,
                        reason: "transferred",
                    })
                    .await;
                let meta = meta.or(self.binding.meta.take());
                self.binding = Binding::new(&self.conn, target, meta, sink);
                let commands = self.state.backend_commands.get().cloned();
                let (path, params) = (self.path.clone(), self.params.clone());
                let joined = self
                    .emit(Body::Join {
                        path: &path,
                        params: &params,
                        commands: commands.as_deref(),
                    })
                    .await;
                if let Err(e) = joined {
                    close_for(&self.conn, e);
                }
            }
            Control::TargetGone { target } => {
                if target == self.binding.target {
                    self.conn.close(DisconnectCode::TARGET_GONE);
                }
            }
            // Socket.IO sessions only.
            Control::SioEmit { .. } | Control::SioAck { .. } | Control::SioDisconnect { .. } => {}
        }
    }
}
