//! A Centrifugo-protocol connection: command dispatch, subscriptions,
//! pings, expiry and server-initiated actions.
//!
//! One task per connection reads frames and runs commands in order; a second
//! task ([`Conn::run_writer`]) writes. Protocol rules (see `docs/protocol.md`):
//! * the first command must be `connect`; anything else, a second `connect`,
//!   an undecodable frame, a binary frame, or a command without `id` (other
//!   than the `{}` pong and `send`) disconnects with 3501 "bad request";
//! * a connection that sends no `connect` within `client.connect_timeout` is
//!   closed with 3502 "stale"; one that misses a pong with 3012 "no pong";
//! * an expired connection that did not refresh within
//!   `client.expired_close_delay` is closed with 3005; an expired subscription is
//!   ended with unsubscribe code 2501 (the SDK resubscribes with a new token);
//! * at shutdown the edge drains connections (see `server.rs`): queued output
//!   is written, then the close frame 3001 "shutdown".

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::WebSocket;
use axum::http::HeaderMap;
use bytes::Bytes;
use futures_util::stream::SplitStream;
use futures_util::StreamExt;
use groupcast_core::broker::{BrokerError, HistoryQuery, PublishOptions};
use groupcast_core::hub::{AddOutcome, SubscriberKind};
use groupcast_core::{ChannelName, ChannelOptions, Payload, Publication, StreamPosition};
use groupcast_proto::client::{self as proto, ClientInfo, Command, RawJson, Reply};
use groupcast_proto::{DisconnectCode, ErrorCode};

use crate::auth::{now_unix, TokenError};
use crate::conn::{Conn, Control, Inbound, OutKind};
use crate::limits::{ConnRates, Refusal};
use crate::metrics::Metrics;
use crate::proxy::{Answer, Proxy};
use crate::state::EdgeState;

/// How a command ended when it did not produce a normal reply.
enum Fail {
    Error(ErrorCode),
    Disconnect(DisconnectCode),
    /// An event proxy's `error`: its code and message, as the backend said.
    Backend {
        code: u32,
        message: String,
    },
    /// An event proxy's `disconnect`.
    Close {
        code: u16,
        reason: String,
    },
}

/// A raw JSON value of a proxy result field, when present and not null.
fn raw_field(result: &serde_json::Value, key: &str) -> Option<RawJson> {
    result
        .get(key)
        .filter(|v| !v.is_null())
        .and_then(|v| serde_json::value::to_raw_value(v).ok())
        .map(Arc::from)
}

/// Asks `proxy` about `event`: its `result` object, or how the command
/// fails (the backend's error or disconnect; 100 "internal" when it could
/// not answer).
async fn ask(
    proxy: &Proxy,
    event: &'static str,
    body: serde_json::Value,
    headers: &HeaderMap,
) -> Result<serde_json::Value, Fail> {
    match proxy.call(event, &body, headers).await {
        Ok(Answer::Result(r)) => Ok(r),
        Ok(Answer::Error { code, message }) => Err(Fail::Backend { code, message }),
        Ok(Answer::Disconnect { code, reason }) => Err(Fail::Close { code, reason }),
        Err(_) => Err(ErrorCode::INTERNAL.into()),
    }
}

impl From<ErrorCode> for Fail {
    fn from(e: ErrorCode) -> Self {
        Fail::Error(e)
    }
}

fn broker_error(e: BrokerError) -> ErrorCode {
    match e {
        BrokerError::Unavailable(_) | BrokerError::Timeout(_) => ErrorCode::NOT_AVAILABLE,
        BrokerError::UnrecoverablePosition => ErrorCode::UNRECOVERABLE_POSITION,
        BrokerError::Internal(_) => ErrorCode::INTERNAL,
    }
}

/// State of one subscription.
struct Sub {
    info: Arc<ClientInfo>,
    presence: bool,
    join_leave: bool,
    /// Unix seconds when the subscription token expires.
    expires_at: Option<i64>,
    /// Extended or ended by the namespace's `sub_refresh_proxy` at expiry
    /// (the client was not told it expires).
    proxy_refresh: Option<Arc<Proxy>>,
}

/// What a refresh proxy decided.
enum Refreshed {
    /// Goes on until this Unix second (with new info, if any).
    Until(i64, Option<RawJson>),
    Expired,
    Close(u16, String),
}

/// When a refresh proxy could not answer, the connection or subscription
/// lives this much longer and the proxy is asked again (as Centrifugo does).
const REFRESH_RETRY_SECS: i64 = 60;

/// How a subscribe was requested.
struct SubscribeSpec<'a> {
    channel: &'a str,
    token: &'a str,
    recover: Option<StreamPosition>,
    /// Answer 112 instead of subscribing when recovery fails
    /// (`proto::FLAG_REJECT_UNRECOVERED`).
    reject_unrecovered: bool,
    /// Server-side subscription (token `channels`, API): no permission check.
    server_side: bool,
    /// The client's subscribe `data` (for the subscribe proxy).
    data: Option<&'a RawJson>,
    /// The client asked for delta compression (`delta: "fossil"`).
    delta: bool,
}

pub struct Session {
    state: Arc<EdgeState>,
    conn: Arc<Conn>,
    connected: bool,
    user: String,
    conn_info: Option<RawJson>,
    expires_at: Option<i64>,
    subs: HashMap<String, Sub>,
    pong_deadline: Option<Instant>,
    rates: ConnRates,
    /// What the event proxies forward of the upgrade request.
    headers: HeaderMap,
}

/// What [`replay`] saw.
#[derive(Debug)]
pub struct Replay {
    /// Everything the session queued (replies, pushes), in order.
    pub messages: Vec<Bytes>,
    /// The close code, when the session closed the connection.
    pub closed: Option<u16>,
}

/// Run text frames through a session with no socket, then end it as a
/// disconnect would. This is the command dispatcher as the fuzz target and
/// the property tests drive it; it shares every line with [`serve`] but the
/// socket loop.
pub async fn replay(state: Arc<EdgeState>, frames: &[&[u8]]) -> Replay {
    let (conn, mut outbox) = Conn::new(
        state.next_conn_id(),
        SubscriberKind::Protocol,
        state.config.client.max_queue_bytes,
    );
    let mut session = Session::new(state, conn.clone(), HeaderMap::new());
    for frame in frames {
        if conn.is_closed() {
            break;
        }
        session.handle_frame(frame).await;
    }
    session.cleanup().await;
    Replay {
        messages: outbox.take_messages(),
        closed: conn.close_code(),
    }
}

/// Serve one upgraded WebSocket with the Centrifugo protocol.
/// `headers`: the upgrade request's headers that event proxies forward.
/// `protobuf`: the client chose the `centrifuge-protobuf` subprotocol.
pub async fn serve(state: Arc<EdgeState>, socket: WebSocket, headers: HeaderMap, protobuf: bool) {
    let (opened, stream) = state.open(socket, SubscriberKind::Protocol);
    if protobuf {
        opened.conn.set_protobuf();
    }
    let mut session = Session::new(state, opened.conn.clone(), headers);
    session.run(stream).await;
    session.cleanup().await;
    opened.finish().await;
}

/// A reply in the connection's encoding.
fn encode_reply(conn: &Conn, reply: &Reply) -> Bytes {
    Bytes::from(if conn.is_protobuf() {
        groupcast_proto::protobuf::encode_reply(reply)
    } else {
        reply.encode()
    })
}

/// An unsubscribe push in the connection's encoding.
fn unsubscribe_push(conn: &Conn, channel: &str, code: u32, reason: &str) -> Bytes {
    Bytes::from(if conn.is_protobuf() {
        groupcast_proto::protobuf::encode_unsubscribe_push(channel, code, reason)
    } else {
        proto::encode_unsubscribe_push(channel, code, reason)
    })
}

fn deadline_from_unix(at: i64) -> tokio::time::Instant {
    let left = at - now_unix();
    tokio::time::Instant::now() + Duration::from_secs(left.max(0) as u64)
}

impl Session {
    fn new(state: Arc<EdgeState>, conn: Arc<Conn>, headers: HeaderMap) -> Session {
        Session {
            headers,
            rates: ConnRates::new(&state.config.client),
            conn,
            connected: false,
            user: String::new(),
            conn_info: None,
            expires_at: None,
            subs: HashMap::new(),
            pong_deadline: None,
            state,
        }
    }

    async fn run(&mut self, mut stream: SplitStream<WebSocket>) {
        let cfg = &self.state.config.client;
        let ping_interval = cfg.ping_interval;
        let pong_timeout = cfg.pong_timeout;
        let stale_at = tokio::time::Instant::now() + cfg.connect_timeout;
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let conn = self.conn.clone();
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
        loop {
            let pong_at = self
                .pong_deadline
                .map(tokio::time::Instant::from_std)
                .unwrap_or(far);
            let expiry_at = self.next_expiry().map(deadline_from_unix).unwrap_or(far);
            tokio::select! {
                _ = conn.cancelled() => break,
                msg = stream.next() => match conn.inbound(msg) {
                    Inbound::End => break,
                    // Text frames carry JSON, binary frames protobuf: each
                    // only on a connection of that encoding.
                    Inbound::Text(t) if !conn.is_protobuf() => {
                        Metrics::get().bytes_in.increment(t.len() as u64);
                        self.handle_frame(t.as_bytes()).await;
                    }
                    Inbound::Binary(b) if conn.is_protobuf() => {
                        Metrics::get().bytes_in.increment(b.len() as u64);
                        self.handle_frame(&b).await;
                    }
                    Inbound::Text(_) | Inbound::Binary(_) => {
                        conn.close(DisconnectCode::BAD_REQUEST);
                        break;
                    }
                    Inbound::Control => {}
                },
                _ = tokio::time::sleep_until(stale_at), if !self.connected => {
                    conn.close(DisconnectCode::STALE);
                    break;
                }
                _ = ping.tick(), if self.connected => {
                    let ping = if conn.is_protobuf() {
                        Bytes::from(groupcast_proto::protobuf::encode_ping())
                    } else {
                        Bytes::from_static(b"{}")
                    };
                    conn.send_json(ping, OutKind::Ping);
                    if self.pong_deadline.is_none() {
                        self.pong_deadline = Some(Instant::now() + pong_timeout);
                    }
                }
                _ = tokio::time::sleep_until(pong_at), if self.pong_deadline.is_some() => {
                    conn.close(DisconnectCode::NO_PONG);
                    break;
                }
                _ = tokio::time::sleep_until(expiry_at), if self.next_expiry().is_some() => {
                    self.expire().await;
                }
                control = conn.next_control() => self.handle_control(control).await,
            }
        }
    }

    /// Seconds an expired connection may still `refresh` before 3005.
    fn close_delay(&self) -> i64 {
        self.state.config.client.expired_close_delay.as_secs() as i64
    }

    /// Earliest connection or subscription expiry that still needs action.
    fn next_expiry(&self) -> Option<i64> {
        // With a refresh proxy the edge acts at the expiry itself.
        let grace = match self.refresh_proxy() {
            Some(_) => 0,
            None => self.close_delay(),
        };
        let conn = self.expires_at.map(|e| e + grace);
        let subs = self.subs.values().filter_map(|s| s.expires_at).min();
        match (conn, subs) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The refresh proxy, when connections are refreshed server-side.
    fn refresh_proxy(&self) -> Option<Arc<Proxy>> {
        self.state
            .proxies
            .get(&self.state.config.client.refresh_proxy)
    }

    async fn expire(&mut self) {
        let now = now_unix();
        if let Some(e) = self.expires_at {
            match self.refresh_proxy() {
                Some(proxy) if now >= e => match self.ask_refresh(&proxy, None).await {
                    Refreshed::Until(at, info) => {
                        self.expires_at = Some(at);
                        if info.is_some() {
                            self.conn_info = info;
                        }
                    }
                    Refreshed::Expired => {
                        self.conn.close(DisconnectCode::EXPIRED);
                        return;
                    }
                    Refreshed::Close(code, reason) => {
                        self.conn.close_with(code, Cow::Owned(reason));
                        return;
                    }
                },
                None if now >= e + self.close_delay() => {
                    self.conn.close(DisconnectCode::EXPIRED);
                    return;
                }
                _ => {}
            }
        }
        let expired: Vec<(String, Option<Arc<Proxy>>)> = self
            .subs
            .iter()
            .filter(|(_, s)| s.expires_at.is_some_and(|e| now >= e))
            .map(|(c, s)| (c.clone(), s.proxy_refresh.clone()))
            .collect();
        for (channel, proxy) in expired {
            if let Some(proxy) = proxy {
                match self.ask_refresh(&proxy, Some(&channel)).await {
                    Refreshed::Until(at, info) => {
                        if let Some(sub) = self.subs.get_mut(&channel) {
                            sub.expires_at = Some(at);
                            if let Some(info) = info {
                                let mut i = (*sub.info).clone();
                                i.chan_info = Some(info);
                                sub.info = Arc::new(i);
                            }
                        }
                        continue;
                    }
                    Refreshed::Close(code, reason) => {
                        self.conn.close_with(code, Cow::Owned(reason));
                        return;
                    }
                    Refreshed::Expired => {}
                }
            }
            self.remove_sub(&channel).await;
            let u = groupcast_proto::codes::UnsubscribeCode::EXPIRED;
            let push = unsubscribe_push(&self.conn, &channel, u.code, u.reason);
            self.conn.send_json(push, OutKind::Reply);
        }
    }

    /// Asks the refresh proxy (`channel`: the sub_refresh proxy) whether an
    /// expired connection or subscription goes on.
    async fn ask_refresh(&self, proxy: &Proxy, channel: Option<&str>) -> Refreshed {
        let mut body = self.proxy_body();
        let event = match channel {
            Some(c) => {
                body["channel"] = c.into();
                "sub_refresh"
            }
            None => "refresh",
        };
        let retry = || Refreshed::Until(now_unix() + REFRESH_RETRY_SECS, None);
        match proxy.call(event, &body, &self.headers).await {
            Ok(Answer::Result(r)) => {
                let at = r.get("expire_at").and_then(|v| v.as_i64());
                let expired = r.get("expired").and_then(|v| v.as_bool()) == Some(true);
                match at {
                    Some(at) if !expired && at > now_unix() => {
                        Refreshed::Until(at, raw_field(&r, "info"))
                    }
                    // Not expired but no later expiry: never expires again.
                    None if !expired => Refreshed::Until(i64::MAX / 2, raw_field(&r, "info")),
                    _ => Refreshed::Expired,
                }
            }
            Ok(Answer::Disconnect { code, reason }) => Refreshed::Close(code, reason),
            // An error answer or no answer: try again later.
            Ok(Answer::Error { .. }) | Err(_) => retry(),
        }
    }

    async fn handle_frame(&mut self, frame: &[u8]) {
        let decoded = if self.conn.is_protobuf() {
            groupcast_proto::protobuf::decode_commands(frame).map_err(|e| e.to_string())
        } else {
            proto::decode_commands(frame).map_err(|e| e.to_string())
        };
        let commands = match decoded {
            Ok(c) => c,
            Err(e) => {
                if e.contains(proto::TOO_MANY_COMMANDS) {
                    Metrics::limit_hit("max_commands_per_frame");
                }
                tracing::debug!(client = %self.conn.client, error = %e, "undecodable frame");
                self.conn.close(DisconnectCode::BAD_REQUEST);
                return;
            }
        };
        for cmd in commands {
            if self.conn.is_closed() {
                return;
            }
            self.handle_command(cmd).await;
        }
    }

    fn reply(&self, reply: Reply) {
        if let Some(e) = reply.error {
            Metrics::error(e.code);
        }
        self.conn
            .send_json(encode_reply(&self.conn, &reply), OutKind::Reply);
    }

    async fn handle_command(&mut self, cmd: Command) {
        // Params that are not a JSON object name their method too: the same
        // rules apply (id, connection state, rate), then 107 instead of
        // running it.
        let Some(method) = cmd.method().or(cmd.params_not_object) else {
            if cmd.id == 0 {
                // `{}`: the pong to our ping.
                self.pong_deadline = None;
            } else {
                self.reply(Reply::error(cmd.id, ErrorCode::METHOD_NOT_FOUND));
            }
            return;
        };
        Metrics::command_in(method);
        if cmd.id == 0 && (method != "send" || cmd.params_not_object.is_some()) {
            self.conn.close(DisconnectCode::BAD_REQUEST);
            return;
        }
        if self.connected == (method == "connect") {
            // Not connected yet and not a connect, or a second connect.
            self.conn.close(DisconnectCode::BAD_REQUEST);
            return;
        }
        if self.rates.check(cmd.publish.is_some()).is_err() {
            if self.rates.refused() == Refusal::Disconnect {
                self.conn.close(DisconnectCode::TOO_MANY_REQUESTS);
            } else if cmd.id != 0 {
                self.reply(Reply::error(cmd.id, ErrorCode::TOO_MANY_REQUESTS));
            }
            return;
        }
        if cmd.params_not_object.is_some() {
            self.reply(Reply::error(cmd.id, ErrorCode::BAD_REQUEST));
            return;
        }
        let started = Instant::now();
        let id = cmd.id;
        let result = self.dispatch(cmd).await;
        Metrics::command_duration(method, started.elapsed());
        match result {
            Ok(Some(reply)) => self.reply(reply),
            Ok(None) => {}
            Err(Fail::Error(e)) => self.reply(Reply::error(id, e)),
            Err(Fail::Disconnect(d)) => self.conn.close(d),
            Err(Fail::Backend { code, message }) => {
                Metrics::error(code);
                let reply = if self.conn.is_protobuf() {
                    groupcast_proto::protobuf::encode_error_reply(id, code, &message)
                } else {
                    serde_json::json!({"id": id, "error": {"code": code, "message": message}})
                        .to_string()
                        .into_bytes()
                };
                self.conn.send_json(Bytes::from(reply), OutKind::Reply);
            }
            Err(Fail::Close { code, reason }) => self.conn.close_with(code, Cow::Owned(reason)),
        }
    }

    /// The fields every proxy request starts with (Centrifugo's).
    fn proxy_body(&self) -> serde_json::Value {
        let (protocol, encoding) = if self.conn.is_protobuf() {
            ("protobuf", "binary")
        } else {
            ("json", "json")
        };
        serde_json::json!({
            "client": self.conn.client,
            "transport": "websocket",
            "protocol": protocol,
            "encoding": encoding,
            "user": self.user,
        })
    }

    /// Run one command. `Ok(None)`: the reply was already queued (subscribe
    /// merges it with the recovery) or none is due (`send`).
    async fn dispatch(&mut self, cmd: Command) -> Result<Option<Reply>, Fail> {
        let id = cmd.id;
        let ok = |r: Reply| Ok(Some(Reply { id, ..r }));
        if let Some(req) = cmd.connect {
            return self.connect(id, req).await.map(|_| None);
        }
        if let Some(req) = cmd.subscribe {
            if req.kind != 0 {
                // Map and shared-poll subscriptions are not implemented:
                // refused, never served as a plain stream.
                return Err(ErrorCode::NOT_AVAILABLE.into());
            }
            let recover = req.recover.then(|| StreamPosition {
                offset: req.offset,
                epoch: req.epoch.clone(),
            });
            let spec = SubscribeSpec {
                channel: &req.channel,
                token: &req.token,
                recover,
                reject_unrecovered: req.flag & proto::FLAG_REJECT_UNRECOVERED != 0,
                server_side: false,
                data: req.data.as_ref(),
                delta: match req.delta.as_str() {
                    "" => false,
                    proto::DELTA_FOSSIL => true,
                    // A type we do not know: refused, never ignored.
                    _ => return Err(ErrorCode::BAD_REQUEST.into()),
                },
            };
            let result = self.subscribe(spec).await?;
            let reply = Reply {
                id,
                subscribe: Some(result.0),
                ..Default::default()
            };
            self.finish_subscribe(&req.channel, result.1, |conn| {
                conn.send_json(encode_reply(conn, &reply), OutKind::Reply);
            })
            .await?;
            return Ok(None);
        }
        if let Some(req) = cmd.unsubscribe {
            self.remove_sub(&req.channel).await;
            return ok(Reply {
                unsubscribe: Some(proto::Empty {}),
                ..Default::default()
            });
        }
        if let Some(req) = cmd.publish {
            self.publish(req).await?;
            return ok(Reply {
                publish: Some(proto::Empty {}),
                ..Default::default()
            });
        }
        if let Some(req) = cmd.presence {
            let (ch, opts) = self.state.channel(&req.channel)?;
            self.check_presence(&ch, opts)?;
            let presence = self
                .state
                .node
                .membership
                .presence(ch.as_str())
                .await
                .map_err(|_| ErrorCode::NOT_AVAILABLE)?;
            return ok(Reply {
                presence: Some(proto::PresenceResult { presence }),
                ..Default::default()
            });
        }
        if let Some(req) = cmd.presence_stats {
            let (ch, opts) = self.state.channel(&req.channel)?;
            self.check_presence(&ch, opts)?;
            let s = self
                .state
                .node
                .membership
                .presence_stats(ch.as_str())
                .await
                .map_err(|_| ErrorCode::NOT_AVAILABLE)?;
            return ok(Reply {
                presence_stats: Some(proto::PresenceStatsResult {
                    num_clients: s.num_clients,
                    num_users: s.num_users,
                }),
                ..Default::default()
            });
        }
        if let Some(req) = cmd.history {
            return ok(Reply {
                history: Some(self.history(req).await?),
                ..Default::default()
            });
        }
        if cmd.ping.is_some() {
            return ok(Reply {
                ping: Some(proto::Empty {}),
                ..Default::default()
            });
        }
        if let Some(req) = cmd.send {
            // Asynchronous message to the backend (`client.send_proxy`),
            // sent in order with the connection's other commands; nothing
            // is answered. Without a proxy there is nobody to take it.
            let Some(proxy) = self.state.proxies.get(&self.state.config.client.send_proxy) else {
                return if id == 0 {
                    Ok(None)
                } else {
                    Err(ErrorCode::NOT_AVAILABLE.into())
                };
            };
            let mut body = self.proxy_body();
            body["data"] = serde_json::to_value(&req.data).unwrap_or_default();
            let _ = proxy.call("send", &body, &self.headers).await;
            return Ok(None);
        }
        if let Some(req) = cmd.rpc {
            let Some(proxy) = self.state.proxies.get(&self.state.config.client.rpc_proxy) else {
                return Err(ErrorCode::NOT_AVAILABLE.into());
            };
            let mut body = self.proxy_body();
            body["method"] = req.method.into();
            body["data"] = serde_json::to_value(&req.data).unwrap_or_default();
            let result = ask(&proxy, "rpc", body, &self.headers).await?;
            return ok(Reply {
                rpc: Some(proto::RpcResult {
                    data: raw_field(&result, "data"),
                }),
                ..Default::default()
            });
        }
        if let Some(req) = cmd.refresh {
            return ok(Reply {
                refresh: Some(self.refresh(&req.token)?),
                ..Default::default()
            });
        }
        if let Some(req) = cmd.sub_refresh {
            return ok(Reply {
                sub_refresh: Some(self.sub_refresh(&req.channel, &req.token)?),
                ..Default::default()
            });
        }
        Err(ErrorCode::METHOD_NOT_FOUND.into())
    }

    async fn connect(&mut self, id: u32, req: proto::ConnectRequest) -> Result<(), Fail> {
        let state = self.state.clone();
        let cfg = &state.config.client;
        let mut channels = Vec::new();
        let mut connect_data = None;
        let connect_proxy = state.proxies.get(&cfg.connect_proxy);
        if let (true, Some(proxy)) = (req.token.is_empty(), connect_proxy) {
            // No token: the backend authenticates (cookies and other
            // forwarded headers included) and says who this is.
            let mut body = self.proxy_body();
            if let Some(o) = body.as_object_mut() {
                o.remove("user");
            }
            body["name"] = req.name.clone().into();
            body["version"] = req.version.clone().into();
            if let Some(d) = &req.data {
                body["data"] = serde_json::to_value(d).unwrap_or_default();
            }
            let r = ask(&proxy, "connect", body, &self.headers).await?;
            let user = match r.get("user") {
                None | Some(serde_json::Value::Null) => String::new(),
                Some(serde_json::Value::String(u)) => u.clone(),
                Some(_) => return Err(ErrorCode::INTERNAL.into()),
            };
            if user.is_empty() && !cfg.allow_anonymous_connect_without_token {
                // The backend let an anonymous connection through, which
                // this edge does not allow.
                return Err(ErrorCode::UNAUTHORIZED.into());
            }
            let per_user = cfg.max_connections_per_user;
            if per_user > 0 && !user.is_empty() && state.registry.find(&user, "").len() >= per_user
            {
                Metrics::limit_hit("max_connections_per_user");
                return Err(Fail::Disconnect(DisconnectCode::CONNECTION_LIMIT));
            }
            self.user = user;
            self.conn_info = raw_field(&r, "info");
            self.expires_at = r
                .get("expire_at")
                .and_then(|v| v.as_i64())
                .filter(|&at| at > 0);
            connect_data = raw_field(&r, "data");
            channels = r
                .get("channels")
                .and_then(|c| c.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|c| c.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(subs) = r.get("subs").and_then(|s| s.as_object()) {
                channels.extend(subs.keys().cloned());
            }
        } else if req.token.is_empty() {
            if !cfg.allow_anonymous_connect_without_token {
                return Err(ErrorCode::UNAUTHORIZED.into());
            }
        } else {
            let claims = match self.state.verifier.verify_connect(&req.token) {
                Ok(c) => c,
                Err(TokenError::Expired) => return Err(ErrorCode::TOKEN_EXPIRED.into()),
                Err(TokenError::Invalid(_)) => {
                    return Err(Fail::Disconnect(DisconnectCode::INVALID_TOKEN))
                }
            };
            let per_user = cfg.max_connections_per_user;
            if per_user > 0
                && !claims.sub.is_empty()
                && state.registry.find(&claims.sub, "").len() >= per_user
            {
                Metrics::limit_hit("max_connections_per_user");
                return Err(Fail::Disconnect(DisconnectCode::CONNECTION_LIMIT));
            }
            self.user = claims.sub;
            self.conn_info = claims.info.map(Arc::from);
            self.expires_at = claims.exp;
            channels = claims.channels;
        }
        if cfg.subscribe_to_personal && !self.user.is_empty() {
            // The user's personal channel, server-side (Centrifugo's
            // `user_subscribe_to_personal`): `#<user>`, in a namespace if set.
            let personal = match cfg.personal_channel_namespace.as_str() {
                "" => format!("#{}", self.user),
                ns => format!("{ns}:#{}", self.user),
            };
            if !channels.contains(&personal) {
                channels.push(personal);
            }
        }
        self.connected = true;
        self.state.registry.add(self.conn.clone(), &self.user);
        self.state.webhooks.emit(
            "client_connected",
            serde_json::json!({"client": self.conn.client, "user": self.user}),
        );
        if !self.user.is_empty() {
            // Which edges hold which users: API actions by user find them.
            self.state
                .node
                .membership
                .connections_changed(&self.user, 1);
        }

        // Server-side subscriptions from the token, recovering where the
        // client says it was (`subs` in the connect request).
        let mut subs = std::collections::BTreeMap::new();
        let mut positions = Vec::new();
        for channel in channels {
            let recover = req
                .subs
                .get(&channel)
                .filter(|s| s.recover)
                .map(|s| StreamPosition {
                    offset: s.offset,
                    epoch: s.epoch.clone(),
                });
            let spec = SubscribeSpec {
                channel: &channel,
                token: "",
                recover,
                // Server-side subscriptions are never refused for this.
                reject_unrecovered: false,
                server_side: true,
                data: None,
                delta: false,
            };
            match self.subscribe(spec).await {
                Ok((result, position)) => {
                    subs.insert(channel.clone(), result);
                    positions.push((channel, position));
                }
                // A server-side channel that cannot be joined is skipped, as
                // Centrifugo does; the client still connects.
                Err(_) => continue,
            }
        }
        // With a refresh proxy the edge refreshes; the client is not told.
        let (expires, ttl) = match self.refresh_proxy() {
            Some(_) => (false, 0),
            None => self.ttl(),
        };
        let reply = Reply {
            id,
            connect: Some(proto::ConnectResult {
                client: self.conn.client.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
                expires,
                ttl,
                data: connect_data,
                subs,
                ping: cfg.ping_interval.as_secs() as u32,
                pong: true,
                node: self.state.uid.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.reply(reply);
        for (channel, position) in positions {
            self.finish_subscribe(&channel, position, |_| {}).await?;
        }
        Ok(())
    }

    fn ttl(&self) -> (bool, u32) {
        match self.expires_at {
            Some(exp) => (true, (exp - now_unix()).max(0) as u32),
            None => (false, 0),
        }
    }

    /// Check, register (buffering) and position a subscription. The caller
    /// sends the result and then calls [`Self::finish_subscribe`].
    async fn subscribe(
        &mut self,
        spec: SubscribeSpec<'_>,
    ) -> Result<(proto::SubscribeResult, u64), Fail> {
        let state = self.state.clone();
        let (ch, opts) = state.channel(spec.channel)?;
        if self.subs.contains_key(spec.channel) {
            return Err(ErrorCode::ALREADY_SUBSCRIBED.into());
        }
        if self.subs.len() >= state.config.client.max_channels_per_connection {
            Metrics::limit_hit("max_channels_per_connection");
            return Err(ErrorCode::LIMIT_EXCEEDED.into());
        }
        let mut chan_info = None;
        let mut expires_at = None;
        let mut sub_data = None;
        let mut proxy_refresh = None;
        let proxy = state.proxies.get(&opts.subscribe_proxy);
        if let (true, false, Some(proxy)) = (spec.token.is_empty(), spec.server_side, proxy) {
            // The backend decides, instead of the namespace's permissions.
            let mut body = self.proxy_body();
            body["channel"] = spec.channel.into();
            if let Some(d) = spec.data {
                body["data"] = serde_json::to_value(d).unwrap_or_default();
            }
            let r = ask(&proxy, "subscribe", body, &self.headers).await?;
            chan_info = raw_field(&r, "info");
            sub_data = raw_field(&r, "data");
            expires_at = r
                .get("expire_at")
                .and_then(|v| v.as_i64())
                .filter(|&at| at > 0);
            // An expiry from the backend is refreshed by the backend when
            // the namespace has a sub_refresh proxy.
            proxy_refresh = expires_at.and(state.proxies.get(&opts.sub_refresh_proxy));
        } else if !spec.token.is_empty() {
            let claims = match state.verifier.verify_subscribe(spec.token) {
                Ok(c) => c,
                Err(TokenError::Expired) => return Err(ErrorCode::TOKEN_EXPIRED.into()),
                Err(TokenError::Invalid(_)) => return Err(ErrorCode::PERMISSION_DENIED.into()),
            };
            if claims.channel != spec.channel || claims.sub != self.user {
                return Err(ErrorCode::PERMISSION_DENIED.into());
            }
            chan_info = claims.info.map(Arc::from);
            expires_at = claims.exp;
        } else if !spec.server_side && !state.can_subscribe(&ch, opts, &self.user) {
            return Err(ErrorCode::PERMISSION_DENIED.into());
        }
        let info = Arc::new(ClientInfo {
            user: self.user.clone(),
            client: self.conn.client.clone(),
            conn_info: self.conn_info.clone(),
            chan_info,
        });
        let node = &state.node;
        // Delta compression when asked and the namespace allows it (it
        // needs history: validated with the configuration).
        let delta = spec.delta
            && opts
                .allowed_delta_types
                .iter()
                .any(|t| t == proto::DELTA_FOSSIL);
        match node
            .add_subscriber_with_delta(spec.channel, self.conn.clone(), true, delta)
            .await
        {
            Ok(AddOutcome::AlreadySubscribed) => return Err(ErrorCode::ALREADY_SUBSCRIBED.into()),
            Ok(_) => {}
            Err(e) => return Err(broker_error(e).into()),
        }
        let result = self
            .position(spec.channel, opts, spec.recover)
            .await
            .and_then(|r| {
                let failed = r.0.was_recovering && !r.0.recovered;
                match failed && spec.reject_unrecovered {
                    true => Err(ErrorCode::UNRECOVERABLE_POSITION),
                    false => Ok(r),
                }
            });
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                node.remove_subscriber(spec.channel, self.conn.id).await;
                return Err(e.into());
            }
        };
        if opts.presence {
            if let Err(e) = node
                .membership
                .add_presence(spec.channel, (*info).clone())
                .await
            {
                node.remove_subscriber(spec.channel, self.conn.id).await;
                let code = match e {
                    groupcast_core::MembershipError::LimitExceeded(limit) => {
                        Metrics::limit_hit(limit);
                        ErrorCode::LIMIT_EXCEEDED
                    }
                    groupcast_core::MembershipError::Unavailable(_) => ErrorCode::NOT_AVAILABLE,
                };
                return Err(code.into());
            }
            self.state.webhooks.emit(
                "member_added",
                serde_json::json!({"channel": spec.channel, "client": self.conn.client, "user": self.user}),
            );
        }
        let mut result = result;
        result.0.data = sub_data;
        if delta {
            result.0.delta = true;
            if !self.conn.is_protobuf() {
                // Every publication of a delta subscription comes as a JSON
                // string over JSON (the SDKs parse it): recovered ones too.
                for p in &mut result.0.publications {
                    p.data = groupcast_core::publication::json_string(p.data.get());
                }
            }
        }
        if let (Some(exp), None) = (expires_at, &proxy_refresh) {
            result.0.expires = true;
            result.0.ttl = (exp - now_unix()).max(0) as u32;
        }
        self.subs.insert(
            spec.channel.to_string(),
            Sub {
                info,
                presence: opts.presence,
                join_leave: opts.join_leave,
                expires_at,
                proxy_refresh,
            },
        );
        Metrics::get().subscriptions.increment(1.0);
        Ok(result)
    }

    /// Read the stream position (and missed publications when recovering).
    async fn position(
        &self,
        channel: &str,
        opts: &ChannelOptions,
        recover: Option<StreamPosition>,
    ) -> Result<(proto::SubscribeResult, u64), ErrorCode> {
        if !opts.has_history() {
            return Ok((proto::SubscribeResult::default(), 0));
        }
        let broker = &self.state.node.broker;
        let mut result = proto::SubscribeResult {
            recoverable: opts.allow_recovery,
            positioned: true,
            ..Default::default()
        };
        let top_only = HistoryQuery {
            limit: Some(0),
            ..Default::default()
        };
        let recover = recover.filter(|_| opts.allow_recovery);
        let history = match &recover {
            Some(since) => {
                result.was_recovering = true;
                let q = HistoryQuery {
                    since: Some(since.clone()),
                    limit: None,
                    reverse: false,
                };
                match broker.history(channel, q).await {
                    Err(BrokerError::UnrecoverablePosition) => {
                        broker.history(channel, top_only).await
                    }
                    other => other,
                }
            }
            None => broker.history(channel, top_only).await,
        }
        .map_err(broker_error)?;
        result.epoch = history.position.epoch.clone();
        result.offset = history.position.offset;
        if let Some(since) = recover {
            let same_epoch = since.epoch_matches(&history.position.epoch);
            let outcome = if !same_epoch {
                "epoch_changed"
            } else if !history.complete {
                "too_old"
            } else {
                result.recovered = true;
                result.publications = history.publications.iter().map(|p| p.to_out()).collect();
                "recovered"
            };
            metrics::counter!("groupcast_recoveries_total", "outcome" => outcome).increment(1);
        }
        Ok((result, history.position.offset))
    }

    /// Queue the subscribe answer (via `send`) and switch the subscription
    /// from buffering to live, then announce the join.
    async fn finish_subscribe(
        &mut self,
        channel: &str,
        position: u64,
        send: impl FnOnce(&Conn),
    ) -> Result<(), Fail> {
        let conn = self.conn.clone();
        let hub = &self.state.node.hub;
        if hub
            .finish_buffering(channel, conn.id, position, || send(&conn))
            .is_err()
        {
            self.drop_sub(channel, false).await;
            Metrics::limit_hit("recovery_buffer_max");
            return Err(Fail::Disconnect(DisconnectCode::INSUFFICIENT_STATE));
        }
        if let Some(sub) = self.subs.get(channel) {
            if sub.join_leave {
                let _ = self
                    .state
                    .node
                    .broker
                    .publish_join(channel, sub.info.clone())
                    .await;
            }
        }
        Ok(())
    }

    /// Drop a subscription: hub, presence, leave.
    async fn remove_sub(&mut self, channel: &str) {
        self.drop_sub(channel, true).await
    }

    /// Drop a subscription; `announce`: publish the `leave` (only when the
    /// `join` went out).
    async fn drop_sub(&mut self, channel: &str, announce: bool) {
        let Some(sub) = self.subs.remove(channel) else {
            return;
        };
        let node = &self.state.node;
        node.remove_subscriber(channel, self.conn.id).await;
        if sub.presence {
            let _ = node
                .membership
                .remove_presence(channel, &self.conn.client)
                .await;
            self.state.webhooks.emit(
                "member_removed",
                serde_json::json!({"channel": channel, "client": self.conn.client, "user": self.user}),
            );
        }
        if sub.join_leave && announce {
            let _ = node.broker.publish_leave(channel, sub.info).await;
        }
        Metrics::get().subscriptions.decrement(1.0);
    }

    async fn publish(&mut self, req: proto::PublishRequest) -> Result<(), Fail> {
        let state = self.state.clone();
        let (ch, opts) = state.channel(&req.channel)?;
        // Binary data comes only from protobuf clients: JSON clients get it
        // as base64 with the `encoding` tag, relay connections as a binary
        // frame, protobuf clients as the bytes.
        let data = match &req.binary {
            Some(b) => Payload::Binary(b.clone()),
            None => req
                .data
                .clone()
                .and_then(Payload::json)
                .ok_or(ErrorCode::BAD_REQUEST)?,
        };
        if !state.check_publication_size(opts, data.len()) {
            return Err(ErrorCode::LIMIT_EXCEEDED.into());
        }
        let subscribed = self.subs.get(ch.as_str());
        let mut data = data;
        let mut skip_history = false;
        if let Some(proxy) = state.proxies.get(&opts.publish_proxy) {
            // The backend decides (instead of the namespace's permissions)
            // and may replace the data.
            let mut body = self.proxy_body();
            body["channel"] = req.channel.clone().into();
            match &req.binary {
                // Centrifugo's proxies carry binary data as `b64data`.
                Some(b) => {
                    use base64::Engine as _;
                    body["b64data"] = base64::engine::general_purpose::STANDARD.encode(b).into();
                }
                None => body["data"] = serde_json::to_value(&req.data).unwrap_or_default(),
            }
            let r = ask(&proxy, "publish", body, &self.headers).await?;
            if let Some(new) = raw_field(&r, "data") {
                data = Payload::json(new).ok_or(ErrorCode::INTERNAL)?;
                if !state.check_publication_size(opts, data.len()) {
                    return Err(ErrorCode::LIMIT_EXCEEDED.into());
                }
            }
            skip_history = r.get("skip_history").and_then(|v| v.as_bool()) == Some(true);
        } else {
            // Private and user-limited channels: only a subscriber (who
            // proved access) may publish, whatever allow_publish_for_client
            // says.
            let open_to_all = !state.is_restricted(&ch, opts);
            let allowed = ((opts.allow_publish_for_client && open_to_all)
                || ((opts.allow_publish_for_subscriber || opts.allow_publish_for_client)
                    && subscribed.is_some()))
                && (opts.allow_anonymous || !self.user.is_empty());
            if !allowed {
                return Err(ErrorCode::PERMISSION_DENIED.into());
            }
        }
        let mut p = Publication::new(data);
        if req.exclude_self {
            p.exclude_client = Some(Arc::from(self.conn.client.as_str()));
        }
        p.info = Some(match subscribed {
            Some(sub) => sub.info.clone(),
            None => Arc::new(ClientInfo {
                user: self.user.clone(),
                client: self.conn.client.clone(),
                conn_info: self.conn_info.clone(),
                chan_info: None,
            }),
        });
        let po = match skip_history {
            // The backend's `skip_history`: delivered live, not stored.
            true => PublishOptions::default(),
            false => PublishOptions {
                history_size: opts.history_size,
                history_ttl: opts.history_ttl,
                ..Default::default()
            },
        };
        state
            .node
            .broker
            .publish(ch.as_str(), p, &po)
            .await
            .map_err(broker_error)?;
        Ok(())
    }

    fn check_presence(&self, ch: &ChannelName<'_>, opts: &ChannelOptions) -> Result<(), ErrorCode> {
        if !opts.presence {
            return Err(ErrorCode::NOT_AVAILABLE);
        }
        let allowed = (opts.allow_presence_for_subscriber && self.subs.contains_key(ch.as_str()))
            || (opts.allow_presence_for_client && self.may_read_unsubscribed(ch, opts));
        if !allowed {
            return Err(ErrorCode::PERMISSION_DENIED);
        }
        Ok(())
    }

    /// `allow_presence_for_client` / `allow_history_for_client` let a client
    /// that is not subscribed read a channel, but only one open to all
    /// (not private, not user-limited) and, unless the namespace allows
    /// anonymous access, only an authenticated one.
    fn may_read_unsubscribed(&self, ch: &ChannelName<'_>, opts: &ChannelOptions) -> bool {
        !self.state.is_restricted(ch, opts) && (opts.allow_anonymous || !self.user.is_empty())
    }

    async fn history(&self, req: proto::HistoryRequest) -> Result<proto::HistoryResult, Fail> {
        let (ch, opts) = self.state.channel(&req.channel)?;
        if !opts.has_history() {
            return Err(ErrorCode::NOT_AVAILABLE.into());
        }
        let allowed = (opts.allow_history_for_subscriber && self.subs.contains_key(ch.as_str()))
            || (opts.allow_history_for_client && self.may_read_unsubscribed(&ch, opts));
        if !allowed {
            return Err(ErrorCode::PERMISSION_DENIED.into());
        }
        let limit = self
            .state
            .history_limit(req.limit)
            .ok_or(ErrorCode::LIMIT_EXCEEDED)?;
        let since = req.since.map(|s| StreamPosition {
            offset: s.offset,
            epoch: s.epoch,
        });
        let h = self
            .state
            .node
            .broker
            .history(
                ch.as_str(),
                HistoryQuery {
                    since,
                    limit: Some(limit),
                    reverse: req.reverse,
                },
            )
            .await
            .map_err(broker_error)?;
        Ok(proto::HistoryResult {
            publications: h.publications.iter().map(|p| p.to_out()).collect(),
            epoch: h.position.epoch,
            offset: h.position.offset,
        })
    }

    fn refresh(&mut self, token: &str) -> Result<proto::RefreshResult, Fail> {
        let claims = match self.state.verifier.verify_connect(token) {
            Ok(c) => c,
            Err(TokenError::Expired) => return Err(Fail::Disconnect(DisconnectCode::EXPIRED)),
            Err(TokenError::Invalid(_)) => {
                return Err(Fail::Disconnect(DisconnectCode::INVALID_TOKEN))
            }
        };
        if claims.sub != self.user {
            return Err(Fail::Disconnect(DisconnectCode::INVALID_TOKEN));
        }
        self.expires_at = claims.exp;
        if let Some(info) = claims.info {
            self.conn_info = Some(Arc::from(info));
        }
        let (expires, ttl) = self.ttl();
        Ok(proto::RefreshResult {
            client: self.conn.client.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            expires,
            ttl,
        })
    }

    fn sub_refresh(&mut self, channel: &str, token: &str) -> Result<proto::SubRefreshResult, Fail> {
        if !self.subs.contains_key(channel) {
            return Err(ErrorCode::PERMISSION_DENIED.into());
        }
        let claims = match self.state.verifier.verify_subscribe(token) {
            Ok(c) => c,
            Err(TokenError::Expired) => return Err(ErrorCode::EXPIRED.into()),
            Err(TokenError::Invalid(_)) => return Err(ErrorCode::PERMISSION_DENIED.into()),
        };
        if claims.channel != channel || claims.sub != self.user {
            return Err(ErrorCode::PERMISSION_DENIED.into());
        }
        let sub = self.subs.get_mut(channel).expect("checked above");
        sub.expires_at = claims.exp;
        Ok(match claims.exp {
            Some(exp) => proto::SubRefreshResult {
                expires: true,
                ttl: (exp - now_unix()).max(0) as u32,
            },
            None => proto::SubRefreshResult::default(),
        })
    }

    async fn handle_control(&mut self, control: Control) {
        if !self.connected {
            return;
        }
        match control {
            Control::Disconnect { code, reason } => self.conn.close_with(code, reason.into()),
            // For relay connections of backend routes only.
            Control::Transfer { .. } | Control::TargetGone { .. } => {}
            Control::Refresh { expired, expire_at } => {
                if expired {
                    self.conn.close(DisconnectCode::EXPIRED);
                } else {
                    self.expires_at = (expire_at > 0).then_some(expire_at);
                }
            }
            Control::Unsubscribe { channel, code: u } => {
                if self.subs.contains_key(&channel) {
                    self.remove_sub(&channel).await;
                    let push = unsubscribe_push(&self.conn, &channel, u.code, u.reason);
                    self.conn.send_json(push, OutKind::Reply);
                }
            }
            Control::Subscribe { channel, data } => {
                let spec = SubscribeSpec {
                    channel: &channel,
                    token: "",
                    recover: None,
                    reject_unrecovered: false,
                    server_side: true,
                    data: None,
                    delta: false,
                };
                match self.subscribe(spec).await {
                    Ok((mut result, position)) => {
                        result.data = data;
                        let push = if self.conn.is_protobuf() {
                            groupcast_proto::protobuf::encode_subscribe_push(&channel, &result)
                        } else {
                            proto::encode_subscribe_push(&channel, &result)
                        };
                        let done = self
                            .finish_subscribe(&channel, position, |c| {
                                c.send_json(Bytes::from(push), OutKind::Reply);
                            })
                            .await;
                        if let Err(Fail::Disconnect(code)) = done {
                            self.conn.close(code);
                        }
                    }
                    Err(Fail::Disconnect(code)) => self.conn.close(code),
                    // Already subscribed, a limit, an unknown channel: the
                    // client asked for nothing, so there is nothing to answer.
                    Err(Fail::Error(e)) => {
                        tracing::debug!(client = %self.conn.client, %channel, "server-side subscribe refused: {e}")
                    }
                    // Server-side subscribes ask no proxy.
                    Err(Fail::Backend { .. }) => {}
                    Err(Fail::Close { code, reason }) => {
                        self.conn.close_with(code, Cow::Owned(reason))
                    }
                }
            }
        }
    }

    async fn cleanup(&mut self) {
        let channels: Vec<String> = self.subs.keys().cloned().collect();
        for channel in channels {
            self.remove_sub(&channel).await;
        }
        if self.connected {
            self.state.registry.remove(&self.conn.client);
            // The code the server closed with; none: the client left.
            let (code, reason) = match self.conn.close_reason() {
                Some((c, r)) => (serde_json::json!(c), r),
                None => (serde_json::Value::Null, "connection closed".to_string()),
            };
            self.state.webhooks.emit(
                "client_disconnected",
                serde_json::json!({"client": self.conn.client, "user": self.user, "code": code, "reason": reason}),
            );
            if !self.user.is_empty() {
                self.state
                    .node
                    .membership
                    .connections_changed(&self.user, -1);
            }
        }
    }
}
