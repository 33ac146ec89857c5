//! Engine.IO v4 transports: the handshake, long-polling (`GET` waits for the session's queue,
//! `POST` hands the client's packets to the session task), WebSocket, and the upgrade from
//! polling to WebSocket (`2probe` / `3probe`, a `6` noop that ends the pending poll, `5`).
//!
//! Outgoing, everything goes through the session's [`Conn`] queue (bounded by
//! `client.max_queue_bytes`): publications of its rooms' channels, pushed there by the hub, and
//! the packets the session task writes. One transport at a time takes from it: the pending
//! poll, or the WebSocket writer once upgraded. A second poll while one waits is refused (400)
//! and ends the session, as Engine.IO does.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use groupcast_core::hub::{SioPub, SubscriberKind};
use groupcast_proto::socketio::engineio::{self, HttpError, Message as EioMessage, Packet};
use groupcast_proto::socketio::packet::{self, Kind};
use groupcast_proto::DisconnectCode;
use tokio::sync::mpsc;

use super::recovery::{self, Key};
use super::rooms::NsMap;
use super::SioState;
use crate::conn::{Conn, Inbound, Outbox, SioOut};
use crate::metrics::Metrics;
use crate::state::Detached;

/// Packets from the client not yet taken by the session task.
const INBOUND_MAX: usize = 1024;
/// Most packets in one polling POST.
const MAX_PACKETS_PER_PAYLOAD: usize = 10_000;

/// One Engine.IO session.
pub(crate) struct Session {
    pub sid: String,
    pub conn: Arc<Conn>,
    outbox: tokio::sync::Mutex<Outbox>,
    /// Boxed: the channel's first block holds 32 slots for the life of the session.
    inbound: mpsc::Sender<Box<Packet>>,
    /// The WebSocket carries the session (from the start, or after an upgrade).
    upgraded: AtomicBool,
    /// An upgrade is under way.
    upgrading: AtomicBool,
    /// Namespaces (their index in `[[socketio.namespaces]]`) the client has connected: a
    /// publication of a channel whose namespace is not connected is not sent.
    pub connected: AtomicU64,
    ns: Arc<NsMap>,
    /// Connection-state recovery: where the rooms of the recovering sockets stand.
    positions: parking_lot::Mutex<Positions>,
    /// Which poll waits and what the last one answered (see [`poll`]).
    polls: parking_lot::Mutex<Polls>,
    /// A poll answered (`Polls::last` set): the same request, retried, shares that answer.
    answered: tokio::sync::Notify,
    /// The session is over and the client has yet to be told: the next poll answers the close
    /// packet (alone, as Engine.IO does, so the client handles the packets before it first).
    close_due: AtomicBool,
    key: Arc<Key>,
}

/// The polls of a polling session, by their `t`.
#[derive(Default)]
struct Polls {
    /// The `t` of the poll waiting now.
    waiting: Option<String>,
    /// The last poll's `t` and answer, kept until the next poll.
    last: Option<(String, String)>,
}

/// A room's `(epoch, offset)`: the last of its events written to the client, or where it was
/// joined.
type Position = (Arc<str>, u64);

/// The sockets of a session that recover (their namespace has `recovery`), by namespace
/// index: the socket id, and its rooms' positions as the client has been sent them.
#[derive(Default)]
struct Positions(HashMap<u32, (Arc<str>, Rooms)>);

/// A socket's rooms by channel.
type Rooms = BTreeMap<Arc<str>, Position>;

impl Session {
    /// Socket `id` of namespace `index` recovers: its rooms are tracked from now on.
    pub fn track(&self, index: u32, id: &str) {
        self.positions
            .lock()
            .0
            .insert(index, (Arc::from(id), BTreeMap::new()));
    }

    pub fn untrack(&self, index: u32) {
        self.positions.lock().0.remove(&index);
    }

    /// Room `channel` of socket `index` stands at `position` (it was just joined or restored).
    pub fn set_room(&self, index: u32, channel: &str, position: Position) {
        if let Some((_, rooms)) = self.positions.lock().0.get_mut(&index) {
            rooms.insert(Arc::from(channel), position);
        }
    }

    pub fn remove_room(&self, index: u32, channel: &str) {
        if let Some((_, rooms)) = self.positions.lock().0.get_mut(&index) {
            rooms.remove(channel);
        }
    }

    /// The rooms of socket `index` and where they stand (for its pid).
    pub fn rooms(&self, index: u32) -> Vec<recovery::Room> {
        self.positions
            .lock()
            .0
            .get(&index)
            .map(|(_, rooms)| {
                rooms
                    .iter()
                    .map(|(ch, (epoch, off))| (ch.to_string(), epoch.to_string(), *off))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The offset of an event of `channel` at `offset` for socket `index`: that room moves to
    /// `offset`, and the token says where every room of the socket stands.
    fn offset_token(&self, index: u32, channel: &str, offset: u64) -> Option<String> {
        let mut positions = self.positions.lock();
        let (socket, rooms) = positions.0.get_mut(&index)?;
        if let Some(pos) = rooms.get_mut(channel) {
            pos.1 = pos.1.max(offset);
        }
        Some(
            self.key.offset(&recovery::Offset {
                socket,
                rooms: rooms
                    .iter()
                    .map(|(ch, (epoch, off))| (&**ch, &**epoch, *off))
                    .collect(),
            }),
        )
    }
}

/// The Socket.IO side of a session, run in its own task from its handshake to its end
/// (`SioState::session_task`): the inbound packets come from the transports.
pub(crate) type SessionTask = fn(
    Arc<SioState>,
    Arc<Session>,
    Detached,
    mpsc::Receiver<Box<Packet>>,
    Handshake,
) -> futures_util::future::BoxFuture<'static, ()>;

/// Why a request is refused.
pub(crate) enum Refusal {
    Eio(HttpError),
    Status(StatusCode, String),
}

impl From<HttpError> for Refusal {
    fn from(e: HttpError) -> Self {
        Refusal::Eio(e)
    }
}

/// A namespace socket's id (as Socket.IO makes them: 20 URL-safe characters). A session's
/// sid names the edge that holds it (`holder::new_id`).
pub(crate) fn new_socket_id() -> String {
    let bytes: [u8; 15] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What the session task needs from the handshake request.
pub(crate) struct Handshake {
    /// Headers the event proxies forward (`[[proxies]] http_headers`).
    pub headers: HeaderMap,
    /// The application's query parameters (Engine.IO's own left out).
    pub query: HashMap<String, String>,
}

impl Handshake {
    fn new(sio: &SioState, headers: &HeaderMap, query: HashMap<String, String>) -> Handshake {
        Handshake {
            headers: sio.edge.proxies.keep_headers(headers),
            // A new map: usually empty, which allocates nothing for the life of the session.
            query: query
                .into_iter()
                .filter(|(k, _)| !matches!(k.as_str(), "EIO" | "transport" | "sid" | "t" | "b64"))
                .collect(),
        }
    }
}

fn open_packet(sio: &SioState, sid: &str, websocket: bool) -> String {
    let c = &sio.edge.config.socketio;
    let upgrades: &[&str] = if websocket { &[] } else { &["websocket"] };
    let mut s = String::new();
    engineio::encode_text(
        &Packet::Open(engineio::open_json(
            sid,
            upgrades,
            c.ping_interval.as_millis() as u64,
            c.ping_timeout.as_millis() as u64,
            c.max_http_buffer_size,
        )),
        &mut s,
    );
    s
}

/// A new session and its task.
fn start_session(sio: &Arc<SioState>, hs: Handshake, websocket: bool) -> Arc<Session> {
    let (detached, outbox) = sio.edge.open_detached(SubscriberKind::SocketIo);
    let (tx, rx) = mpsc::channel(INBOUND_MAX);
    let session = Arc::new(Session {
        sid: crate::holder::new_id(sio.me.as_deref()),
        conn: detached.conn.clone(),
        outbox: tokio::sync::Mutex::new(outbox),
        inbound: tx,
        upgraded: AtomicBool::new(websocket),
        upgrading: AtomicBool::new(false),
        connected: AtomicU64::new(0),
        ns: sio.ns.clone(),
        positions: Default::default(),
        key: sio.key.clone(),
        polls: Default::default(),
        answered: tokio::sync::Notify::new(),
        close_due: AtomicBool::new(false),
    });
    sio.sessions.insert(session.clone());
    metrics::counter!("groupcast_socketio_sessions_total", "transport" => if websocket { "websocket" } else { "polling" })
        .increment(1);
    let task = (sio.session_task)(sio.clone(), session.clone(), detached, rx, hs);
    sio.edge.tasks.spawn(task);
    session
}

fn admit(sio: &SioState, headers: &HeaderMap, peer: SocketAddr) -> Result<(), Refusal> {
    sio.edge
        .admit_connection(headers, peer)
        .map_err(|(status, why)| Refusal::Status(status, why.into()))
}

/// `GET ?EIO=4&transport=polling`: a new session; the body is its open packet.
pub(crate) async fn polling_handshake(
    sio: &Arc<SioState>,
    peer: SocketAddr,
    headers: &HeaderMap,
    query: HashMap<String, String>,
) -> Result<String, Refusal> {
    admit(sio, headers, peer)?;
    let hs = Handshake::new(sio, headers, query);
    let session = start_session(sio, hs, false);
    Ok(open_packet(sio, &session.sid, false))
}

/// `GET ?EIO=4&transport=websocket` without a sid: a session on a WebSocket from the start.
pub(crate) async fn websocket_handshake(
    sio: Arc<SioState>,
    ws: WebSocketUpgrade,
    peer: SocketAddr,
    headers: HeaderMap,
    query: HashMap<String, String>,
) -> Response {
    if let Err(r) = admit(&sio, &headers, peer) {
        return refusal_response(r);
    }
    let hs = Handshake::new(&sio, &headers, query);
    let state = sio.edge.clone();
    configure(ws, &sio).on_upgrade(move |mut socket| {
        state.tasks.track_future(async move {
            let session = start_session(&sio, hs, true);
            let open = open_packet(&sio, &session.sid, true);
            if socket.send(Message::Text(open.into())).await.is_err() {
                session.conn.closed_by_peer();
                return;
            }
            run_websocket(session, socket).await;
        })
    })
}

fn refusal_response(r: Refusal) -> Response {
    match r {
        Refusal::Eio(e) => (
            StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
            e.body(),
        )
            .into_response(),
        Refusal::Status(s, text) => (s, text).into_response(),
    }
}

fn configure(ws: WebSocketUpgrade, sio: &SioState) -> WebSocketUpgrade {
    let c = &sio.edge.config;
    let max = c.socketio.max_http_buffer_size;
    ws.read_buffer_size(c.socketio.read_buffer_size)
        .write_buffer_size(0)
        .max_write_buffer_size(c.client.max_queue_bytes.saturating_mul(2))
        .max_message_size(max)
        .max_frame_size(max)
}

impl Session {
    /// Polling, and no upgrade under way: a WebSocket may take the session over.
    pub(crate) fn can_upgrade(&self) -> bool {
        !self.upgraded.load(Ordering::Acquire) && !self.upgrading.load(Ordering::Acquire)
    }
}

/// `GET ?transport=websocket&sid=X`: the upgrade of a polling session.
pub(crate) fn websocket_upgrade(
    sio: Arc<SioState>,
    session: Arc<Session>,
    ws: WebSocketUpgrade,
) -> Response {
    if session.upgraded.load(Ordering::Acquire) || session.upgrading.swap(true, Ordering::AcqRel) {
        return refusal_response(HttpError::BadRequest.into());
    }
    let state = sio.edge.clone();
    let timeout = sio.edge.config.socketio.upgrade_timeout;
    configure(ws, &sio).on_upgrade(move |socket| {
        state.tasks.track_future(async move {
            match tokio::time::timeout(timeout, probe(&session, socket)).await {
                Ok(Some(socket)) => {
                    session.upgraded.store(true, Ordering::Release);
                    metrics::counter!("groupcast_socketio_upgrades_total").increment(1);
                    run_websocket(session, socket).await;
                }
                // No probe, no upgrade in time, or the socket went away: polling goes on.
                _ => {
                    session.upgrading.store(false, Ordering::Release);
                }
            }
        })
    })
}

/// The probe: `2probe` answered `3probe`, a noop for the pending poll, then `5`.
async fn probe(session: &Session, mut socket: WebSocket) -> Option<WebSocket> {
    loop {
        match socket.recv().await? {
            Ok(Message::Text(t)) if t.as_str() == "2probe" => break,
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            _ => return None,
        }
    }
    socket.send(Message::Text("3probe".into())).await.ok()?;
    // Ends a poll that waits, so the client can switch.
    session.conn.send_eio(Bytes::from_static(b"6"), false);
    loop {
        match socket.recv().await? {
            Ok(Message::Text(t)) if t.as_str() == "5" => return Some(socket),
            Ok(Message::Text(t)) if t.as_str() == "2probe" => {
                socket.send(Message::Text("3probe".into())).await.ok()?;
            }
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            _ => return None,
        }
    }
}

/// The WebSocket carries the session, in one loop (no split halves, no second task): the
/// queue's packets and events are written as they come, the client's packets handed to the
/// session task in between.
async fn run_websocket(session: Arc<Session>, mut socket: WebSocket) {
    let conn = session.conn.clone();
    let mut outbox = session.outbox.lock().await;
    let m = Metrics::get();
    // Counted once the queue is drained, not per frame: the counters are shared by every
    // connection's writer.
    let (mut frames_out, mut bytes_out) = (0u64, 0u64);
    loop {
        let item = match outbox.try_next_sio(&conn) {
            Some(item) => item,
            None => {
                if frames_out > 0 {
                    m.frames_out.increment(frames_out);
                    m.bytes_out.increment(bytes_out);
                    (frames_out, bytes_out) = (0, 0);
                }
                tokio::select! {
                    biased;
                    item = outbox.next_sio(&conn) => item,
                    // Cancel-safe: a frame read in part stays in the WebSocket's buffer.
                    msg = socket.recv() => {
                        if !read(&session, msg).await {
                            // The client closed, or broke the protocol: the queue ends.
                            conn.closed_by_peer();
                        }
                        continue;
                    }
                }
            }
        };
        let frames = match item {
            SioOut::End => break,
            SioOut::Packet(b, _) if b.is_empty() => continue,
            SioOut::Packet(b, binary) => Frames::One(b, binary),
            SioOut::Pub(p) => match publication(&session, &p) {
                Some(frames) => frames,
                None => continue,
            },
        };
        for (bytes, binary) in frames {
            let len = bytes.len();
            let msg = if binary {
                Message::Binary(bytes)
            } else {
                match Utf8Bytes::try_from(bytes) {
                    Ok(t) => Message::Text(t),
                    Err(_) => continue,
                }
            };
            if socket.send(msg).await.is_err() {
                conn.close(DisconnectCode::WRITE_ERROR);
                return;
            }
            frames_out += 1;
            bytes_out += len as u64;
        }
    }
    m.frames_out.increment(frames_out);
    m.bytes_out.increment(bytes_out);
    if socket.send(Message::Close(None)).await.is_ok() {
        // The client's close frame answers ours; a client that sends none is let go.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            while let Some(Ok(msg)) = socket.recv().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// One read of the session's WebSocket: a packet goes to the session task. False when the
/// connection is over (the close frame, the end of the stream, a read error, a bad packet;
/// a message over max_http_buffer_size: 1009), as for every WebSocket.
async fn read(session: &Session, msg: Option<Result<Message, axum::Error>>) -> bool {
    let conn = &session.conn;
    let (packet, len) = match conn.inbound(msg) {
        Inbound::End => return false,
        Inbound::Control => return true,
        Inbound::Text(t) => match engineio::decode_text(t.as_str()) {
            Ok(p) => (p, t.len()),
            Err(e) => {
                bad_packet(conn, e.0);
                return false;
            }
        },
        Inbound::Binary(b) => {
            let len = b.len();
            (Packet::Message(EioMessage::Binary(b)), len)
        }
    };
    Metrics::get().bytes_in.increment(len as u64);
    session.inbound.send(Box::new(packet)).await.is_ok()
}

/// A packet the client should not have sent: counted, and the session ends ("parse error").
fn bad_packet(conn: &Conn, why: &'static str) {
    metrics::counter!("groupcast_socketio_bad_packets_total").increment(1);
    tracing::debug!(client = %conn.client, why, "socket.io: bad packet; session closed");
    conn.close(DisconnectCode::BAD_REQUEST);
}

/// A `GET` on a polling session: waits for its queue, answers everything queued by then.
///
/// `t` is the request's cache buster, unique per request: the same `t` again is the same
/// request retried by a load balancer (nginx's `proxy_next_upstream` when the edge relaying it
/// died). Every attempt of one request gets the same answer, so whichever attempt still has its
/// asker delivers it: an attempt that comes after the answer gets the kept answer, and one that
/// comes while another waits waits with it. (The attempts can reach the holder in either order:
/// the dead edge's forward may still be on its way through NATS when the retry arrives.) Any
/// other second poll while one waits ends the session, as Engine.IO does.
pub(crate) async fn poll(session: &Arc<Session>, t: Option<&str>) -> Result<String, Refusal> {
    if session.upgraded.load(Ordering::Acquire) {
        return Err(HttpError::BadRequest.into());
    }
    let mut joined = false;
    // Declared before the queue's guard, so dropped after it.
    let mut waiting = Waiting {
        session,
        t,
        armed: false,
    };
    let mut outbox = loop {
        let answered = session.answered.notified();
        tokio::pin!(answered);
        answered.as_mut().enable();
        {
            let mut polls = session.polls.lock();
            if let (Some(t), Some((last, body))) = (t, &polls.last) {
                if t == last {
                    let outcome = if joined { "joined" } else { "answered_again" };
                    metrics::counter!("groupcast_socketio_polls_retried_total", "outcome" => outcome)
                        .increment(1);
                    return Ok(body.clone());
                }
            }
            if t.is_some() && polls.waiting.as_deref() == t {
                // The same request waits already: its answer is this one's.
                joined = true;
            } else if let Ok(outbox) = session.outbox.try_lock() {
                polls.waiting = t.map(String::from);
                waiting.armed = true;
                break outbox;
            } else {
                // Two polls at once: Engine.IO ends the session.
                metrics::counter!("groupcast_socketio_bad_packets_total").increment(1);
                session.conn.close(DisconnectCode::BAD_REQUEST);
                return Err(HttpError::BadRequest.into());
            }
        }
        answered.await;
    };
    let body = next_answer(session, &mut outbox).await;
    session.polls.lock().last = t.map(|t| (t.to_string(), body.clone()));
    Ok(body)
}

/// The poll waiting now: when it ends, answered or dropped (its request went away), the
/// attempts waiting with it are woken, to take the answer or to wait in its place.
struct Waiting<'a> {
    session: &'a Session,
    t: Option<&'a str>,
    armed: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut polls = self.session.polls.lock();
            if polls.waiting.as_deref() == self.t {
                polls.waiting = None;
            }
            drop(polls);
            self.session.answered.notify_waiters();
        }
    }
}

/// What a poll answers: everything queued once there is something (the close packet alone
/// when the session is over).
async fn next_answer(session: &Session, outbox: &mut Outbox) -> String {
    if session.close_due.load(Ordering::Acquire) {
        return close_polling(session);
    }
    let first = outbox.next_sio(&session.conn).await;
    let mut records: Vec<String> = Vec::new();
    let mut item = Some(first);
    while let Some(next) = item.take() {
        match next {
            SioOut::End if records.is_empty() => return close_polling(session),
            SioOut::End => {
                session.close_due.store(true, Ordering::Release);
                break;
            }
            SioOut::Packet(b, binary) => {
                if !b.is_empty() {
                    records.push(record(&b, binary));
                }
            }
            SioOut::Pub(p) => {
                for (b, binary) in publication(session, &p).into_iter().flatten() {
                    records.push(record(&b, binary));
                }
            }
        }
        item = outbox.try_next_sio(&session.conn);
    }
    let body = records.join("\u{1e}");
    let m = Metrics::get();
    m.bytes_out.increment(body.len() as u64);
    m.frames_out.increment(1);
    body
}

/// The close packet: the polling session's last answer. The session is over once it is
/// written (its task ends; the backend hears why).
fn close_polling(session: &Session) -> String {
    session.close_due.store(false, Ordering::Release);
    session.conn.closed_by_peer();
    Metrics::get().frames_out.increment(1);
    "1".into()
}

/// One record of a polling payload: a text packet as it is, binary as `b<base64>`.
fn record(b: &Bytes, binary: bool) -> String {
    if binary {
        let mut s = String::from("b");
        base64::engine::general_purpose::STANDARD.encode_string(b, &mut s);
        s
    } else {
        String::from_utf8_lossy(b).into_owned()
    }
}

/// A `POST` on a polling session: its packets go to the session task, in order.
pub(crate) async fn post(session: &Arc<Session>, body: Bytes) -> Result<String, Refusal> {
    if session.upgraded.load(Ordering::Acquire) {
        return Err(HttpError::BadRequest.into());
    }
    let packets = match engineio::decode_payload(&body, MAX_PACKETS_PER_PAYLOAD) {
        Ok(p) => p,
        Err(e) => {
            bad_packet(&session.conn, e.0);
            return Err(HttpError::BadRequest.into());
        }
    };
    Metrics::get().bytes_in.increment(body.len() as u64);
    for p in packets {
        if session.inbound.send(Box::new(p)).await.is_err() {
            return Err(HttpError::UnknownSid.into());
        }
    }
    Ok("ok".into())
}

/// The frames of a publication for this session: an EVENT in the channel's namespace (none
/// when the client has not connected that namespace), with the socket's offset as its last
/// argument when the namespace recovers.
fn publication(session: &Session, p: &SioPub) -> Option<Frames> {
    let channel = &*p.channel;
    let ns = session.ns.of_channel(channel)?;
    if session.connected.load(Ordering::Acquire) & (1 << ns.index) == 0 {
        return None;
    }
    // A token is base64url and a dot: a JSON string as it is.
    let offset = match ns.config.recovery {
        true => session
            .offset_token(ns.index, channel, p.offset)
            .map(|t| format!(",\"{t}\"")),
        false => None,
    };
    let offset = offset.as_deref().unwrap_or_default();
    // Without an offset, every socket of the channel gets the same bytes, encoded by the
    // first one: the others take them here, on every fan-out, before anything is allocated.
    if offset.is_empty() {
        if let Some(frame) = p.frame.get() {
            return Some(Frames::One(frame.clone(), false));
        }
    }
    let event = p.event.as_deref().unwrap_or(&ns.config.default_event);
    let name = serde_json::to_string(event).ok()?;
    let args = std::str::from_utf8(&p.args).ok()?;
    if p.binary {
        if let Some(frames) = binary_publication(&name, args, offset, &ns.config.name) {
            return Some(Frames::Binary(frames));
        }
        // `$binary` that is not bytes (bad base64, in some client's JSON): sent as the JSON
        // it is.
    }
    let text = |offset: &str| {
        let mut data = String::with_capacity(name.len() + args.len() + offset.len() + 3);
        data.push('[');
        data.push_str(&name);
        if !args.is_empty() {
            data.push(',');
            data.push_str(args);
        }
        data.push_str(offset);
        data.push(']');
        let text = format!(
            "4{}",
            packet::encode(Kind::Event, &ns.config.name, None, 0, Some(&data))
        );
        Bytes::from(text)
    };
    let frame = match offset.is_empty() {
        true => p.frame.get_or_init(|| text("")).clone(),
        false => text(offset),
    };
    Some(Frames::One(frame, false))
}

/// What one publication is on the wire for one session.
enum Frames {
    /// One frame (an EVENT packet is text): binary when the flag says so.
    One(Bytes, bool),
    /// A BINARY_EVENT and its attachments: text, then binary frames.
    Binary(Vec<(Bytes, bool)>),
}

impl IntoIterator for Frames {
    type Item = (Bytes, bool);
    type IntoIter =
        std::iter::Chain<std::option::IntoIter<(Bytes, bool)>, std::vec::IntoIter<(Bytes, bool)>>;

    fn into_iter(self) -> Self::IntoIter {
        let (one, many) = match self {
            Frames::One(b, binary) => (Some((b, binary)), Vec::new()),
            Frames::Binary(v) => (None, v),
        };
        one.into_iter().chain(many)
    }
}

/// A publication whose arguments hold `$binary` values: a BINARY_EVENT and its attachments.
fn binary_publication(
    name: &str,
    args: &str,
    offset: &str,
    nsp: &str,
) -> Option<Vec<(Bytes, bool)>> {
    let mut data: serde_json::Value =
        serde_json::from_str(&format!("[{name},{args}{offset}]")).ok()?;
    let attachments = packet::extract_binary(&mut data).ok()?;
    Some(binary_frames(
        Kind::BinaryEvent,
        nsp,
        None,
        &data,
        attachments,
    ))
}

/// The Engine.IO messages of one Socket.IO packet from the server: its text (`4...`), then
/// its attachments when `data` holds `{"$binary": ...}` values.
pub(crate) fn packet_frames(
    kind: Kind,
    nsp: &str,
    id: Option<u64>,
    data: &serde_json::Value,
) -> Vec<(Bytes, bool)> {
    let mut data = data.clone();
    let attachments = packet::extract_binary(&mut data).unwrap_or_default();
    let kind = match (kind, attachments.is_empty()) {
        (Kind::Event, false) => Kind::BinaryEvent,
        (Kind::Ack, false) => Kind::BinaryAck,
        (k, _) => k,
    };
    binary_frames(kind, nsp, id, &data, attachments)
}

/// A packet's text and its attachments as Engine.IO messages.
pub(crate) fn binary_frames(
    kind: Kind,
    nsp: &str,
    id: Option<u64>,
    data: &serde_json::Value,
    attachments: Vec<Bytes>,
) -> Vec<(Bytes, bool)> {
    let json = (!data.is_null()).then(|| data.to_string());
    let text = format!(
        "4{}",
        packet::encode(kind, nsp, id, attachments.len(), json.as_deref())
    );
    let mut out = vec![(Bytes::from(text), false)];
    out.extend(attachments.into_iter().map(|b| (b, true)));
    out
}
