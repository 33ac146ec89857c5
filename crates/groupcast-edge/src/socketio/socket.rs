//! The Socket.IO side of one Engine.IO session, in its own task: the heartbeat, the client's
//! packets in order (CONNECT with its `auth`, EVENT, ACK, DISCONNECT, binary attachments), and
//! the server's actions from the API (emit, ack, rooms, disconnect).
//!
//! A namespace CONNECT is admitted by the namespace's connect proxy, else by `auth.token` (a
//! connection JWT), else as anonymous where that is allowed; a refusal is a CONNECT_ERROR
//! `{"message", "data": {"code"}}`. The sockets' events go to the namespace's backend target
//! (`connect`, `event`, `ack`, `disconnect`, as JSON with the client id, the user, the
//! namespace and the socket id), in order.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use groupcast_core::broker::HistoryQuery;
use groupcast_core::hub::SioPub;
use groupcast_core::{Publication, StreamPosition};
use groupcast_proto::client::ClientInfo;
use groupcast_proto::codes::UnsubscribeCode;
use groupcast_proto::socketio::engineio::{Message as EioMessage, Packet};
use groupcast_proto::socketio::packet::{self, Kind};
use groupcast_proto::DisconnectCode;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::engine::{packet_frames, Handshake, Session};
use super::recovery::{Pid, Room};
use super::rooms::NsMap;
use super::SioState;
use crate::config::SioNamespaceConfig;
use crate::conn::{Conn, Control};
use crate::limits::ConnRates;
use crate::metrics::Metrics;
use crate::proxy::{strings, Answer, Granted};
use crate::relay::route::{close_for, send, Binding};
use crate::state::Detached;

/// One namespace socket.
struct NsSocket {
    id: String,
    binding: Option<Binding>,
}

/// Who a CONNECT admitted.
struct Admitted {
    user: String,
    meta: Option<Arc<RawValue>>,
    target: String,
    channels: Vec<String>,
}

/// A channel the session is subscribed to, for a room of one of its sockets.
struct Joined {
    /// In the channel's presence as this (the namespace's channels have presence).
    presence: Option<Arc<ClientInfo>>,
    join_leave: bool,
}

/// A room being joined: subscribed and buffering, its history read; [`Task::finish_room`]
/// sends what it missed (a restored room) and makes it live.
struct Joining {
    channel: String,
    /// The stream's top when the history was read (0: the channel keeps no history).
    position: StreamPosition,
    /// Where the client stands in the room: the top for a new room, the restored position
    /// for a restored one (its missed publications move it on as they are written).
    resume: (Arc<str>, u64),
    buffering: bool,
    /// Publications after the restored position, oldest first.
    missed: Vec<Arc<Publication>>,
    /// The channel's namespace options.
    presence: bool,
    join_leave: bool,
}

/// A socket that connection-state recovery restores: its pid's contents, and its rooms
/// subscribed and read since where the client was.
struct Restored {
    pid: Pid,
    /// The pid as the client has it: the CONNECT answers it again, so the client sees
    /// `socket.recovered`.
    token: String,
    rooms: Vec<Joining>,
}

struct Task {
    sio: Arc<SioState>,
    session: Arc<Session>,
    conn: Arc<Conn>,
    hs: Handshake,
    /// The session's user, from its first admitted CONNECT.
    user: Option<String>,
    sockets: HashMap<u32, NsSocket>,
    /// Channels subscribed, for the rooms of the sockets.
    channels: HashMap<String, Joined>,
    /// A binary packet waiting for its attachments.
    pending: Option<(packet::Packet, Vec<Bytes>)>,
    seq: u64,
    rates: ConnRates,
}

/// The session task: runs until the session ends, then cleans up.
pub(crate) async fn run(
    sio: Arc<SioState>,
    session: Arc<Session>,
    detached: Detached,
    mut inbound: mpsc::Receiver<Box<Packet>>,
    hs: Handshake,
) {
    let conn = session.conn.clone();
    let cfg = &sio.edge.config.socketio;
    let (ping_interval, ping_timeout) = (cfg.ping_interval, cfg.ping_timeout);
    let connect_by = tokio::time::Instant::now() + cfg.connect_timeout;
    let mut t = Task {
        rates: ConnRates::new(&sio.edge.config.client),
        sio: sio.clone(),
        session: session.clone(),
        conn: conn.clone(),
        hs,
        user: None,
        sockets: HashMap::new(),
        channels: HashMap::new(),
        pending: None,
        seq: 0,
    };
    let start = tokio::time::Instant::now() + ping_interval;
    let mut ping = tokio::time::interval_at(start, ping_interval);
    let mut pong_deadline: Option<tokio::time::Instant> = None;
    let far = tokio::time::Instant::now() + std::time::Duration::from_secs(86_400 * 365);
    loop {
        let deadline = pong_deadline.unwrap_or(far);
        let unconnected = t.user.is_none();
        tokio::select! {
            _ = conn.cancelled() => break,
            _ = tokio::time::sleep_until(connect_by), if unconnected => {
                // Socket.IO's connectTimeout: a session that never connected a namespace.
                metrics::counter!("groupcast_socketio_connect_timeouts_total").increment(1);
                conn.close(DisconnectCode::BAD_REQUEST);
                break;
            }
            _ = ping.tick() => {
                if pong_deadline.is_none() {
                    conn.send_eio(Bytes::from_static(b"2"), false);
                    pong_deadline = Some(tokio::time::Instant::now() + ping_timeout);
                }
            }
            _ = tokio::time::sleep_until(deadline), if pong_deadline.is_some() => {
                metrics::counter!("groupcast_socketio_ping_timeouts_total").increment(1);
                conn.close(DisconnectCode::NO_PONG);
                break;
            }
            // The work is boxed: the session's future stays small while it waits, which is
            // most of its life.
            p = inbound.recv() => match p.map(|p| *p) {
                None => break,
                Some(Packet::Pong(false)) => pong_deadline = None,
                Some(p) => Box::pin(t.packet(p)).await,
            },
            c = conn.next_control() => Box::pin(t.control(c)).await,
        }
    }
    Box::pin(t.end()).await;
    sio.sessions.remove(&session.sid);
    drop(detached);
}

impl Task {
    fn ns_map(&self) -> &NsMap {
        &self.sio.ns
    }

    async fn packet(&mut self, p: Packet) {
        match p {
            Packet::Close => self.conn.closed_by_peer(),
            Packet::Message(EioMessage::Text(t)) => {
                if self.pending.is_some() {
                    return self.bad("a text packet while attachments were due");
                }
                match packet::decode(&t) {
                    Ok(p) if p.kind.is_binary() && p.attachments > 0 => {
                        self.pending = Some((p, Vec::new()));
                    }
                    Ok(p) => self.handle(p, Vec::new()).await,
                    Err(e) => self.bad(e.0),
                }
            }
            Packet::Message(EioMessage::Binary(b)) => {
                let Some((p, mut got)) = self.pending.take() else {
                    return self.bad("an attachment without its packet");
                };
                got.push(b);
                if got.len() == p.attachments {
                    self.handle(p, got).await;
                } else {
                    self.pending = Some((p, got));
                }
            }
            // Heartbeats from the client (Engine.IO 3's direction), probes, upgrades and
            // noops carry nothing for the session.
            Packet::Ping(_) | Packet::Pong(_) | Packet::Upgrade | Packet::Noop => {}
            Packet::Open(_) => self.bad("an open packet from the client"),
        }
    }

    fn bad(&self, why: &'static str) {
        metrics::counter!("groupcast_socketio_bad_packets_total").increment(1);
        tracing::debug!(client = %self.conn.client, why, "socket.io: bad packet; session closed");
        self.conn.close(DisconnectCode::BAD_REQUEST);
    }

    async fn handle(&mut self, mut p: packet::Packet, attachments: Vec<Bytes>) {
        if let Some(data) = p.data.as_mut() {
            if packet::fill_placeholders(data, &attachments, &packet::binary_json).is_err() {
                return self.bad("a placeholder without its attachment");
            }
        }
        let Some(index) = self.ns_map().by_name(&p.nsp).map(|n| n.index) else {
            if p.kind == Kind::Connect {
                metrics::counter!("groupcast_socketio_connect_errors_total").increment(1);
                self.send(
                    Kind::ConnectError,
                    &p.nsp,
                    None,
                    &json!({"message": "Invalid namespace"}),
                );
            }
            return;
        };
        match p.kind {
            Kind::Connect => self.connect(index, &p.nsp, p.data).await,
            Kind::Disconnect => self.disconnect(index, "client namespace disconnect").await,
            Kind::Event | Kind::BinaryEvent => self.event(index, p.id, p.data).await,
            Kind::Ack | Kind::BinaryAck => self.ack(index, p.id, p.data).await,
            Kind::ConnectError => self.bad("CONNECT_ERROR from a client"),
        }
    }

    /// Queues one packet (text, then its attachments when its data holds `$binary` values).
    fn send(&self, kind: Kind, nsp: &str, id: Option<u64>, data: &Value) {
        for (b, binary) in packet_frames(kind, nsp, id, data) {
            self.conn.send_eio(b, binary);
        }
    }

    async fn connect(&mut self, index: u32, nsp: &str, auth: Option<Value>) {
        if self.sockets.contains_key(&index) {
            return;
        }
        let ns_config = self.ns_map().at(index).config.clone();
        let auth = auth.unwrap_or_else(|| json!({}));
        let restored = match ns_config.recovery {
            true => self.restore(index, &ns_config, &auth).await,
            false => None,
        };
        let admitted = match &restored {
            Some(r) => {
                self.check_user(Admitted {
                    user: r.pid.user.clone(),
                    meta: r.pid.meta.clone(),
                    target: r.pid.target.clone(),
                    channels: Vec::new(),
                })
                .await
            }
            None => self.admit(&ns_config, &auth).await,
        };
        let admitted = match admitted {
            Ok(a) => a,
            Err((message, code)) => {
                if let Some(r) = restored {
                    self.abandon(r.rooms).await;
                }
                metrics::counter!("groupcast_socketio_connect_errors_total").increment(1);
                let data = json!({"message": message, "data": {"code": code}});
                return self.send(Kind::ConnectError, nsp, None, &data);
            }
        };
        let state = self.sio.edge.clone();
        let target = if admitted.target.is_empty() {
            ns_config.target.clone()
        } else {
            admitted.target.clone()
        };
        let binding = if target.is_empty() {
            None
        } else if let Some(sink) = state.sink(&target) {
            Some(Binding::new(
                &self.conn,
                target,
                admitted.meta.clone(),
                sink,
            ))
        } else {
            // As a relay route's connection: refused, not served without its backend.
            tracing::warn!(%target, "socket.io: backend target unreachable (not an HTTP target, and no NATS)");
            if let Some(r) = restored {
                self.abandon(r.rooms).await;
            }
            metrics::counter!("groupcast_socketio_connect_errors_total").increment(1);
            let na = DisconnectCode::NOT_AVAILABLE;
            let data = json!({"message": "backend target unreachable", "data": {"code": na.code}});
            return self.send(Kind::ConnectError, nsp, None, &data);
        };
        if self.user.is_none() {
            state.registry.add(self.conn.clone(), &admitted.user);
            state.webhooks.emit(
                "client_connected",
                json!({"client": self.conn.client, "user": admitted.user, "transport": "socketio"}),
            );
            if !admitted.user.is_empty() {
                state.node.connections_changed(&admitted.user, 1);
            }
            self.user = Some(admitted.user.clone());
        }
        let (id, joining, pid) = match restored {
            Some(r) => (r.pid.socket, r.rooms, Some(r.token)),
            None => (super::engine::new_socket_id(), Vec::new(), None),
        };
        let recovered = pid.is_some();
        self.sockets.insert(
            index,
            NsSocket {
                id: id.clone(),
                binding,
            },
        );
        if ns_config.recovery {
            self.session.track(index, &id);
        }
        // The rooms of the CONNECT are joined (buffering) before its answer, so that the pid
        // names where each starts; a new socket's rooms of the token or the connect proxy too.
        let mut joining = joining;
        for ch in &admitted.channels {
            if let Some(j) = self.start_room(ch, None).await {
                joining.push(j);
            }
        }
        for j in &joining {
            self.session.set_room(index, &j.channel, j.resume.clone());
        }
        self.session
            .connected
            .fetch_or(1 << index, Ordering::AcqRel);
        let mut answer = json!({"sid": id});
        if ns_config.recovery {
            let pid = pid.unwrap_or_else(|| {
                self.session.key().pid(&Pid {
                    socket: id.clone(),
                    namespace: ns_config.name.clone(),
                    user: admitted.user.clone(),
                    meta: admitted.meta.clone(),
                    target: admitted.target.clone(),
                    rooms: self.session.rooms(index),
                })
            });
            answer["pid"] = json!(pid);
        }
        self.send(Kind::Connect, nsp, None, &answer);
        for j in joining {
            self.finish_room(j).await;
        }
        if recovered {
            metrics::counter!("groupcast_socketio_recoveries_total", "outcome" => "recovered")
                .increment(1);
        }
        let mut body = json!({"auth": without_token(auth), "query": self.app_query()});
        if recovered {
            body["recovered"] = json!(true);
        }
        // This edge's own commands subject (with the API over NATS): commands sent there skip
        // forwarding, as for relay routes.
        if let Some(commands) = self.sio.edge.backend_commands.get() {
            body["commands"] = json!(commands);
        }
        self.emit(index, "connect", body).await;
    }

    /// Connection-state recovery: the socket `auth.pid` names, when its token opens, it is of
    /// this namespace, and every room's history since `auth.offset` (else since the pid's
    /// positions) is complete; its rooms are then subscribed (buffering). `None`: a new socket
    /// (Socket.IO's rule: `socket.recovered` is false, the client joins its rooms again).
    async fn restore(
        &mut self,
        index: u32,
        ns: &SioNamespaceConfig,
        auth: &Value,
    ) -> Option<Restored> {
        let token = auth.get("pid").and_then(Value::as_str)?;
        let outcome = |o: &'static str| {
            metrics::counter!("groupcast_socketio_recoveries_total", "outcome" => o).increment(1);
        };
        let key = self.session.key();
        let Some(pid) = key.open_pid(token).filter(|p| p.namespace == ns.name) else {
            outcome("bad_pid");
            return None;
        };
        let rooms: Vec<Room> = match auth.get("offset").and_then(Value::as_str) {
            // The client's last event, when it is one of this socket's.
            Some(o) => match key.open_offset(o).filter(|o| o.socket == pid.socket) {
                Some(o) => o.rooms,
                None => {
                    outcome("bad_offset");
                    return None;
                }
            },
            // No event since the CONNECT.
            None => pid.rooms.clone(),
        };
        let mut joined = Vec::new();
        for (channel, epoch, offset) in rooms {
            let of_ns = self.ns_map().of_channel(&channel).map(|n| n.index) == Some(index);
            let since = StreamPosition { offset, epoch };
            match of_ns {
                true => match self.start_room(&channel, Some(since)).await {
                    Some(j) => joined.push(j),
                    None => {
                        self.abandon(joined).await;
                        outcome("not_recovered");
                        return None;
                    }
                },
                false => {
                    self.abandon(joined).await;
                    outcome("bad_offset");
                    return None;
                }
            }
        }
        Some(Restored {
            pid,
            token: token.to_string(),
            rooms: joined,
        })
    }

    /// Rooms started for a socket that is not connected after all.
    async fn abandon(&mut self, rooms: Vec<Joining>) {
        for j in rooms {
            self.sio
                .edge
                .node
                .remove_subscriber(&j.channel, self.conn.id)
                .await;
        }
    }

    /// The handshake's query without Engine.IO's own parameters.
    fn app_query(&self) -> serde_json::Map<String, Value> {
        self.hs
            .query
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect()
    }

    async fn admit(
        &self,
        ns: &SioNamespaceConfig,
        auth: &Value,
    ) -> Result<Admitted, (String, u16)> {
        let state = &self.sio.edge;
        let mut a = Admitted {
            user: String::new(),
            meta: None,
            target: String::new(),
            channels: Vec::new(),
        };
        let token = auth
            .get("token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty());
        if !ns.connect_proxy.is_empty() {
            let Some(proxy) = state.proxies.get(&ns.connect_proxy) else {
                return Err(("no connect proxy".into(), DisconnectCode::SERVER_ERROR.code));
            };
            let body = json!({
                "client": self.conn.client,
                "transport": "socketio",
                "protocol": "socketio",
                "encoding": "json",
                "socketio": {"namespace": ns.name, "auth": auth, "query": self.app_query()},
            });
            match proxy.call("connect", &body, &self.hs.headers).await {
                Ok(Answer::Result(r)) => {
                    let g = Granted::of(&r);
                    (a.user, a.meta) = (g.user, g.meta);
                    if let Some(t) = g.target {
                        a.target = t;
                    }
                    a.channels.extend(strings(&r, "channels"));
                    if let Some(n) = self.ns_map().by_name(&ns.name) {
                        for room in strings(&r, "rooms") {
                            match self.ns_map().room_channel(n, &room) {
                                Some(ch) => a.channels.push(ch),
                                None => {
                                    tracing::warn!(room, namespace = %ns.name, "socket.io: a connect proxy's room that is another namespace's channel; not joined")
                                }
                            }
                        }
                    }
                }
                Ok(Answer::Error { code, message }) => {
                    return Err((message, code.try_into().unwrap_or(u16::MAX)))
                }
                Ok(Answer::Disconnect { code, reason }) => return Err((reason, code)),
                Err(_) => {
                    return Err((
                        "connect proxy failed".into(),
                        DisconnectCode::SERVER_ERROR.code,
                    ))
                }
            }
        } else if let Some(t) = token {
            let claims = state.verifier.verify_connect(t).map_err(|e| {
                // The client sees what is wrong, not the JWT library's words.
                let message = match e {
                    crate::auth::TokenError::Expired => "token expired",
                    crate::auth::TokenError::Invalid(why) => {
                        tracing::debug!(%why, "socket.io: invalid connection token");
                        "invalid token"
                    }
                };
                (message.to_string(), DisconnectCode::INVALID_TOKEN.code)
            })?;
            a.user = claims.sub;
            a.meta = claims.meta.map(Arc::from);
            if let Some(t) = claims.target {
                a.target = t;
            }
            a.channels.extend(claims.channels);
        } else if ns.require_token || !state.config.client.allow_anonymous_connect_without_token {
            let invalid = DisconnectCode::INVALID_TOKEN;
            return Err((format!("{}: none given", invalid.reason), invalid.code));
        }
        self.check_user(a).await
    }

    /// What every CONNECT must pass whoever admitted it: one user per session, the per-user
    /// connection limit, a valid backend target.
    async fn check_user(&self, a: Admitted) -> Result<Admitted, (String, u16)> {
        let state = &self.sio.edge;
        if let Some(u) = &self.user {
            if *u != a.user {
                return Err((
                    "another user on the same connection".into(),
                    DisconnectCode::INVALID_TOKEN.code,
                ));
            }
        } else {
            let per_user = state.config.client.max_connections_per_user;
            if per_user > 0
                && !a.user.is_empty()
                && state.registry.find(&a.user, "").len() >= per_user
            {
                Metrics::limit_hit("max_connections_per_user");
                let limit = DisconnectCode::CONNECTION_LIMIT;
                return Err((limit.reason.into(), limit.code));
            }
        }
        if !a.target.is_empty() && !groupcast_core::valid_target(&a.target) {
            let na = DisconnectCode::NOT_AVAILABLE;
            return Err((format!("{}: no backend target", na.reason), na.code));
        }
        Ok(a)
    }

    /// One event for the socket's backend target (none: nothing to do).
    async fn emit(&mut self, index: u32, kind: &'static str, body: Value) {
        let Some(sock) = self.sockets.get(&index) else {
            return;
        };
        let Some(b) = &sock.binding else {
            return;
        };
        let mut event = json!({
            "type": kind,
            "client": self.conn.client,
            "user": self.user.as_deref().unwrap_or_default(),
            "node": self.sio.edge.config.name,
            "target": b.target,
            "seq": self.seq,
            "namespace": self.ns_map().at(index).config.name,
            "sid": sock.id,
        });
        if let Some(m) = &b.meta {
            event["meta"] = serde_json::from_str(m.get()).unwrap_or(Value::Null);
        }
        if let (Value::Object(e), Value::Object(extra)) = (&mut event, body) {
            e.extend(extra);
        }
        self.seq += 1;
        let outcome = send(&self.sio.edge, b, kind, event.to_string(), false).await;
        let label = if outcome.is_ok() { "sent" } else { "failed" };
        metrics::counter!("groupcast_socketio_backend_events_total", "event" => kind, "outcome" => label)
            .increment(1);
        if let Err(e) = outcome {
            close_for(&self.conn, e);
        }
    }

    async fn event(&mut self, index: u32, id: Option<u64>, data: Option<Value>) {
        if !self.sockets.contains_key(&index) {
            return;
        }
        if self.rates.check(true).is_err() {
            self.conn.close(DisconnectCode::TOO_MANY_REQUESTS);
            return;
        }
        let Some(Value::Array(mut args)) = data else {
            return;
        };
        let name = args.remove(0);
        let has_target = self.sockets[&index].binding.is_some();
        if !has_target {
            metrics::counter!("groupcast_socketio_backend_events_total", "event" => "event", "outcome" => "no_target")
                .increment(1);
            return;
        }
        let mut body = json!({"event": name, "args": args});
        if let Some(id) = id {
            body["ack"] = json!(id);
        }
        self.emit(index, "event", body).await;
    }

    async fn ack(&mut self, index: u32, id: Option<u64>, data: Option<Value>) {
        if !self.sockets.contains_key(&index) {
            return;
        }
        self.emit(index, "ack", json!({"id": id, "args": data}))
            .await;
    }

    /// The socket of namespace `index` is gone: its rooms left, its backend told why.
    async fn disconnect(&mut self, index: u32, reason: &str) {
        if !self.sockets.contains_key(&index) {
            return;
        }
        let code = self.conn.close_code();
        self.emit(index, "disconnect", json!({"reason": reason, "code": code}))
            .await;
        self.sockets.remove(&index);
        self.session
            .connected
            .fetch_and(!(1 << index), Ordering::AcqRel);
        let rooms: Vec<String> = self
            .channels
            .keys()
            .filter(|c| self.ns_map().of_channel(c).map(|n| n.index) == Some(index))
            .cloned()
            .collect();
        for ch in rooms {
            self.unsubscribe(&ch).await;
        }
        self.session.untrack(index);
    }

    /// The backend joins the socket to a room (`sio_join`, the `channels` of a connect proxy).
    async fn subscribe(&mut self, channel: &str) {
        let Some(index) = self.ns_map().of_channel(channel).map(|n| n.index) else {
            return;
        };
        if !self.sockets.contains_key(&index) {
            return;
        }
        if let Some(j) = self.start_room(channel, None).await {
            self.session.set_room(index, channel, j.resume.clone());
            self.finish_room(j).await;
        }
    }

    /// Subscribes the session to `channel`, buffering where the channel keeps history, and
    /// reads where its stream stands: its top, or (`since`: recovery) everything after
    /// `since`. `None` when the room cannot be joined (a limit, an unknown channel, the
    /// backbone) or, with `since`, its missed publications are not all in history.
    async fn start_room(
        &mut self,
        channel: &str,
        since: Option<StreamPosition>,
    ) -> Option<Joining> {
        if self.channels.contains_key(channel) {
            return None;
        }
        let state = self.sio.edge.clone();
        if self.channels.len() >= state.config.client.max_channels_per_connection {
            Metrics::limit_hit("max_channels_per_connection");
            tracing::warn!(client = %self.conn.client, channel, "socket.io: channel limit; room not joined");
            return None;
        }
        let opts = match state.channel(channel) {
            Ok((_, opts)) => opts.clone(),
            Err(e) => {
                tracing::warn!(client = %self.conn.client, channel, error = ?e, "socket.io: cannot join the room's channel");
                return None;
            }
        };
        let buffering = opts.has_history();
        if since.is_some() && !(buffering && opts.allow_recovery) {
            return None;
        }
        let node = &state.node;
        match node
            .add_subscriber(channel, self.conn.clone(), buffering)
            .await
        {
            Ok(groupcast_core::hub::AddOutcome::AlreadySubscribed) => return None,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(client = %self.conn.client, channel, error = %e, "socket.io: join failed");
                return None;
            }
        }
        let mut joining = Joining {
            channel: channel.to_string(),
            position: StreamPosition {
                offset: 0,
                epoch: String::new(),
            },
            resume: (Arc::from(""), 0),
            buffering,
            missed: Vec::new(),
            presence: opts.presence,
            join_leave: opts.join_leave,
        };
        if !buffering {
            return Some(joining);
        }
        let query = HistoryQuery {
            limit: if since.is_some() { None } else { Some(0) },
            since: since.clone(),
            reverse: false,
        };
        match node.history(channel, query).await {
            Ok(h) => {
                let whole = since
                    .as_ref()
                    .is_none_or(|s| h.complete && s.epoch_matches(&h.position.epoch));
                if whole {
                    let epoch: Arc<str> = Arc::from(h.position.epoch.as_str());
                    joining.resume = (epoch, since.map_or(h.position.offset, |s| s.offset));
                    joining.position = h.position;
                    joining.missed = h.publications;
                    return Some(joining);
                }
            }
            Err(e) => {
                tracing::debug!(client = %self.conn.client, channel, error = %e, "socket.io: history unavailable; room not joined");
            }
        }
        node.remove_subscriber(channel, self.conn.id).await;
        None
    }

    /// A started room goes live: the publications it missed first (a restored room), then the
    /// ones that came while it was started; the session joins the channel's presence.
    async fn finish_room(&mut self, j: Joining) {
        let node = self.sio.edge.node.clone();
        if j.buffering {
            let conn = self.conn.clone();
            let channel: Arc<str> = Arc::from(j.channel.as_str());
            let missed = &j.missed;
            let live = node.finish_buffering(&j.channel, conn.id, j.position.offset, || {
                for p in missed {
                    conn.send_sio(Arc::new(SioPub::of(channel.clone(), p)));
                }
            });
            if live.is_err() {
                // More came while the history was read than the recovery buffer holds.
                node.remove_subscriber(&j.channel, self.conn.id).await;
                if let Some(index) = self.ns_map().of_channel(&j.channel).map(|n| n.index) {
                    self.session.remove_room(index, &j.channel);
                }
                tracing::warn!(client = %self.conn.client, channel = %j.channel, "socket.io: recovery buffer overflow; session closed to recover again");
                self.conn.close(DisconnectCode::INSUFFICIENT_STATE);
                return;
            }
        }
        let presence = match j.presence {
            true => {
                let info = Arc::new(ClientInfo {
                    user: self.user.clone().unwrap_or_default(),
                    client: self.conn.client.clone(),
                    conn_info: None,
                    chan_info: None,
                });
                match node
                    .join(&j.channel, info.clone(), true, j.join_leave)
                    .await
                {
                    Ok(()) => Some(info),
                    Err(e) => {
                        tracing::warn!(client = %self.conn.client, channel = %j.channel, error = ?e, "socket.io: presence join failed");
                        None
                    }
                }
            }
            false => None,
        };
        self.channels.insert(
            j.channel,
            Joined {
                presence,
                join_leave: j.join_leave,
            },
        );
    }

    async fn unsubscribe(&mut self, channel: &str) {
        let Some(joined) = self.channels.remove(channel) else {
            return;
        };
        let node = &self.sio.edge.node;
        node.remove_subscriber(channel, self.conn.id).await;
        if let Some(info) = joined.presence {
            node.leave(channel, info, true, joined.join_leave).await;
        }
        if let Some(index) = self.ns_map().of_channel(channel).map(|n| n.index) {
            self.session.remove_room(index, channel);
        }
    }

    async fn control(&mut self, c: Control) {
        match c {
            Control::Subscribe { channel, .. } => self.subscribe(&channel).await,
            Control::Unsubscribe { channel, code } if code == UnsubscribeCode::INSUFFICIENT => {
                // The backbone lost some of the room's publications. A recovering socket
                // gets them back from history: its session ends, the client reconnects and
                // recovers (a socket that does not recover misses them, as it would in a
                // Socket.IO cluster, and goes on from the next one).
                let recovers = self
                    .ns_map()
                    .of_channel(&channel)
                    .is_some_and(|n| n.config.recovery);
                if recovers {
                    self.conn.close(DisconnectCode::INSUFFICIENT_STATE);
                } else {
                    self.sio.edge.node.resume_subscriber(&channel, self.conn.id);
                }
            }
            Control::Unsubscribe { channel, .. } => self.unsubscribe(&channel).await,
            Control::Disconnect { code, reason } => self.server_close(code, reason).await,
            Control::Refresh { expired, .. } => {
                if expired {
                    let e = DisconnectCode::EXPIRED;
                    self.server_close(e.code, e.reason.into()).await;
                }
            }
            Control::Transfer { .. } => {}
            Control::TargetGone { target } => {
                let gone: Vec<u32> = self
                    .sockets
                    .iter()
                    .filter(|(_, s)| s.binding.as_ref().is_some_and(|b| b.target == target))
                    .map(|(i, _)| *i)
                    .collect();
                for index in gone {
                    self.server_disconnect(index).await;
                }
            }
            Control::SioEmit {
                namespace,
                event,
                args,
                ack,
            } => {
                if let Some(n) = self.ns_map().by_name(&namespace) {
                    if self.sockets.contains_key(&n.index) {
                        let mut data = vec![Value::String(event)];
                        data.extend(args);
                        self.send(Kind::Event, &namespace, ack, &Value::Array(data));
                    }
                }
            }
            Control::SioAck {
                namespace,
                id,
                args,
            } => {
                if let Some(n) = self.ns_map().by_name(&namespace) {
                    if self.sockets.contains_key(&n.index) {
                        self.send(Kind::Ack, &namespace, Some(id), &Value::Array(args));
                    }
                }
            }
            Control::SioDisconnect { namespace } => {
                if let Some(index) = self.ns_map().by_name(&namespace).map(|n| n.index) {
                    self.server_disconnect(index).await;
                }
            }
        }
    }

    /// The server ends one namespace socket: a DISCONNECT packet (the client's reason is
    /// "io server disconnect"), its rooms left.
    async fn server_disconnect(&mut self, index: u32) {
        if !self.sockets.contains_key(&index) {
            return;
        }
        let nsp = self.ns_map().at(index).config.name.clone();
        self.send(Kind::Disconnect, &nsp, None, &Value::Null);
        self.disconnect(index, "server namespace disconnect").await;
    }

    /// The server ends the session: a DISCONNECT for each socket, then the transport closes
    /// once they are written.
    async fn server_close(&mut self, code: u16, reason: String) {
        let indices: Vec<u32> = self.sockets.keys().copied().collect();
        for index in indices {
            self.server_disconnect(index).await;
        }
        self.conn.drain_with(code, reason.into());
    }

    /// The session is over: every socket's backend hears why, the rooms are left.
    async fn end(&mut self) {
        // Socket.IO's reasons where one fits; the backend also gets the close code.
        let code = self.conn.close_code();
        let reason = match code {
            None => "transport close",
            Some(c) if c == DisconnectCode::NO_PONG.code => "ping timeout",
            Some(c) if c == DisconnectCode::BAD_REQUEST.code => "parse error",
            Some(c) if c == DisconnectCode::SHUTDOWN.code => "server shutting down",
            Some(c) if c == DisconnectCode::WRITE_ERROR.code => "transport error",
            Some(_) => "forced server close",
        };
        let indices: Vec<u32> = self.sockets.keys().copied().collect();
        for index in indices {
            self.disconnect(index, reason).await;
        }
        let channels: Vec<String> = self.channels.keys().cloned().collect();
        for ch in channels {
            self.unsubscribe(&ch).await;
        }
        let state = &self.sio.edge;
        if let Some(user) = self.user.take() {
            state.registry.remove(&self.conn.client);
            let (code, why) = match self.conn.close_reason() {
                Some((c, r)) => (json!(c), r),
                None => (Value::Null, "connection closed".to_string()),
            };
            state.webhooks.emit(
                "client_disconnected",
                json!({"client": self.conn.client, "user": user, "code": code,
                       "reason": why, "transport": "socketio"}),
            );
            if !user.is_empty() {
                state.node.connections_changed(&user, -1);
            }
        }
    }
}

/// `auth` as the backend gets it: without the token (already checked).
fn without_token(mut auth: Value) -> Value {
    if let Value::Object(o) = &mut auth {
        o.remove("token");
    }
    auth
}
