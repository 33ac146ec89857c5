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
//!
//! The session runs over a [`Transport`]: a WebSocket, or one of the HTTP
//! transports of `stream.rs` (HTTP streaming, SSE), whose client commands after
//! `connect` come through the emulation endpoint (`emulation.rs`) as messages
//! of the same inbound stream. Everything above holds on each.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket};
use axum::http::HeaderMap;
use bytes::Bytes;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, Stream, StreamExt};
use groupcast_core::broker::BrokerError;
use groupcast_core::hub::SubscriberKind;
use groupcast_core::StreamPosition;
use groupcast_proto::client::{self as proto, ClientInfo, Command, RawJson, Reply};
use groupcast_proto::{DisconnectCode, ErrorCode};

use crate::auth::now_unix;
use crate::conn::{Conn, Inbound, OutKind, Writer};
use crate::limits::{ConnRates, Refusal};
use crate::metrics::Metrics;
use crate::proxy::{Answer, Proxy};
use crate::state::{EdgeState, Opened};

mod connect;
mod control;
mod emulation;
mod expiry;
mod publish;
mod stream;
mod subscribe;

/// What a session runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    /// `POST /connection/http_stream`: newline-delimited JSON in the response body.
    HttpStream,
    /// `GET /connection/sse`: an event stream, one `data:` line per message.
    Sse,
}

impl Transport {
    /// Its name, as Centrifugo's event proxies and the metrics say it.
    pub fn name(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::HttpStream => "http_stream",
            Transport::Sse => "sse",
        }
    }
}

/// How a command ended when it did not produce a normal reply.
enum CommandError {
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
) -> Result<serde_json::Value, CommandError> {
    match proxy.call(event, &body, headers).await {
        Ok(Answer::Result(r)) => Ok(r),
        Ok(Answer::Error { code, message }) => Err(CommandError::Backend { code, message }),
        Ok(Answer::Disconnect { code, reason }) => Err(CommandError::Close { code, reason }),
        Err(_) => Err(ErrorCode::INTERNAL.into()),
    }
}

impl From<ErrorCode> for CommandError {
    fn from(e: ErrorCode) -> Self {
        CommandError::Error(e)
    }
}

fn broker_error(e: BrokerError) -> ErrorCode {
    match e {
        BrokerError::Unavailable(_) | BrokerError::Timeout(_) => ErrorCode::NOT_AVAILABLE,
        BrokerError::UnrecoverablePosition => ErrorCode::UNRECOVERABLE_POSITION,
        BrokerError::Internal(_) => ErrorCode::INTERNAL,
        BrokerError::TooLarge(_) => ErrorCode::LIMIT_EXCEEDED,
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
    transport: Transport,
    /// The emulation session id (HTTP transports), sent in the connect reply: the
    /// client names it in its emulation requests.
    emulation: Option<String>,
    /// Publishes sent and waiting for the backbone's answer, oldest first
    /// (at most `client.max_publishes_in_flight`): answered in command
    /// order, and every other command waits until they are. (In a mutex
    /// only to make the session `Sync`; reached with `get_mut`, never locked.)
    publishes: parking_lot::Mutex<Pipeline>,
}

/// The publishes in flight, oldest first: created with the first publish (its queue
/// allocates), so a connection that never publishes holds none.
#[derive(Default)]
struct Pipeline(Option<FuturesOrdered<PendingReply>>);

impl Pipeline {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |f| f.len())
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push_back(&mut self, reply: PendingReply) {
        self.0
            .get_or_insert_with(FuturesOrdered::new)
            .push_back(reply);
    }

    /// The oldest publish's reply, once it is answered; `None` when none is in flight.
    async fn next(&mut self) -> Option<(u32, Instant, Result<Option<Reply>, CommandError>)> {
        match &mut self.0 {
            Some(f) => f.next().await,
            None => None,
        }
    }
}

/// A publish's reply to come: its command id, when it started, and the
/// outcome.
type PendingReply =
    Pin<Box<dyn Future<Output = (u32, Instant, Result<Option<Reply>, CommandError>)> + Send>>;

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
    let mut session = Session::new(state, conn.clone(), HeaderMap::new(), Transport::WebSocket);
    for frame in frames {
        if conn.is_closed() {
            break;
        }
        session.handle_frame(frame).await;
    }
    session.settle_publishes(0).await;
    session.cleanup().await;
    Replay {
        messages: outbox.take_messages(),
        closed: conn.close_code(),
    }
}

/// Serve one upgraded WebSocket with the Centrifugo protocol.
/// `headers`: the upgrade request's headers that event proxies forward.
/// `protobuf`: the client chose the `centrifuge-protobuf` subprotocol.
///
/// One task per connection: the session reads the socket and writes its queue (the
/// [`Writer`] is polled beside everything the session waits for).
pub fn serve(
    state: Arc<EdgeState>,
    socket: WebSocket,
    headers: HeaderMap,
    protobuf: bool,
) -> impl Future<Output = ()> + Send {
    let (opened, writer) = state.open_single(socket, SubscriberKind::Protocol);
    if protobuf {
        opened.conn.set_protobuf();
    }
    let session = Session::new(state, opened.conn.clone(), headers, Transport::WebSocket);
    serve_link(session, writer, opened)
}

/// The socket as the session's loop sees it: the client's messages in, and the connection's
/// queue out when this task writes it.
pub(crate) trait Link {
    /// Writes what is queued (when this task writes); ready once the writer is done.
    fn poll_out(&mut self, cx: &mut Context<'_>) -> Poll<()>;
    /// The client's next message; `None` when it is gone.
    fn poll_in(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, axum::Error>>>;
    /// Once the session is over: the close frame, when this task writes.
    fn finish(self) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

impl Link for Writer<WebSocket> {
    fn poll_out(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_write(cx)
    }

    fn poll_in(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, axum::Error>>> {
        self.poll_next_in(cx)
    }

    fn finish(self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(Writer::finish(self))
    }
}

/// A transport whose writer has a task of its own (HTTP streaming, SSE): reading only.
struct ReadOnly<S>(S);

impl<S> Link for ReadOnly<S>
where
    S: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    fn poll_out(&mut self, _: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }

    fn poll_in(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, axum::Error>>> {
        self.0.poll_next_unpin(cx)
    }

    fn finish(self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(std::future::ready(()))
    }
}

/// What the session's loop does next.
enum Next {
    Stop,
    Nothing,
    /// A frame of the connection's encoding.
    Frame(Bytes),
    Expire,
    Control(Box<crate::conn::Control>),
}

/// What the socket gave the session's loop.
enum Io {
    In(Option<Result<Message, axum::Error>>),
    /// The writer is done (closed, drained, or the socket failed).
    Written,
}

fn poll_io<L: Link>(link: &mut L, cx: &mut Context<'_>) -> Poll<Io> {
    if link.poll_out(cx).is_ready() {
        return Poll::Ready(Io::Written);
    }
    link.poll_in(cx).map(Io::In)
}

/// Awaits `work` (a command, a server action) while the writer goes on writing.
async fn writing<L: Link, F: Future + Unpin>(link: &mut L, mut work: F) -> F::Output {
    std::future::poll_fn(|cx| {
        // Done or not, the work decides when this ends; a done writer stays done.
        let _ = link.poll_out(cx);
        work.poll_unpin(cx)
    })
    .await
}

/// Serve a connection opened on any transport: `inbound` gives the client's
/// messages (text: JSON, binary: protobuf) and ends when the client is gone;
/// `emulation`: the session id of an HTTP transport.
pub(crate) fn serve_on<S>(
    state: Arc<EdgeState>,
    opened: Opened,
    inbound: S,
    headers: HeaderMap,
    transport: Transport,
    emulation: Option<String>,
) -> impl Future<Output = ()> + Send
where
    S: Stream<Item = Result<Message, axum::Error>> + Unpin + Send,
{
    let mut session = Session::new(state, opened.conn.clone(), headers, transport);
    session.emulation = emulation;
    serve_link(session, ReadOnly(inbound), opened)
}

/// The session's task, for the life of its connection. Not an `async fn`, and everything
/// built before it starts: an `async fn` keeps its arguments' room after moving them into
/// its body (the WebSocket, the writer, the headers: a kilobyte and more per connection).
/// Every call out of the loop is boxed for the same reason: a future holds room for the
/// largest state of what it awaits inline.
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn serve_link<L: Link + Send>(
    mut session: Session,
    mut link: L,
    opened: Opened,
) -> impl Future<Output = ()> + Send {
    async move {
        session.run(&mut link).await;
        // The close frame goes out while the session cleans up (leave events, webhooks).
        tokio::join!(Box::pin(session.cleanup()), link.finish());
        Box::pin(opened.finish()).await;
    }
}

/// The HTTP transports (HTTP streaming, SSE and `/emulation`) as `client.http_stream` and
/// `client.sse` say, with the answering of emulation requests forwarded by other edges.
pub(crate) async fn http_transports(state: &Arc<EdgeState>) -> Result<axum::Router, String> {
    let c = &state.config.client;
    if !c.http_stream && !c.sse {
        return Ok(axum::Router::new());
    }
    let streams = stream::start(state);
    emulation::serve_forwarded(&streams).await?;
    Ok(stream::router(streams.clone()).merge(emulation::router(streams)))
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
    fn new(
        state: Arc<EdgeState>,
        conn: Arc<Conn>,
        headers: HeaderMap,
        transport: Transport,
    ) -> Session {
        Session {
            headers,
            transport,
            emulation: None,
            publishes: Default::default(),
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

    async fn run<L: Link>(&mut self, link: &mut L) {
        let cfg = &self.state.config.client;
        let ping_interval = cfg.ping_interval;
        let pong_timeout = cfg.pong_timeout;
        let stale_at = tokio::time::Instant::now() + cfg.connect_timeout;
        // Pings go every `ping_interval` once connected (the first one interval after the
        // connection opened), each one after the last was sent.
        let mut next_ping = tokio::time::Instant::now() + ping_interval;
        // One timer for every deadline (connect, ping, pong, expiry): the session lives as
        // long as its connection, and each timer would take its room in every idle one.
        let timer = tokio::time::sleep_until(stale_at);
        tokio::pin!(timer);
        let conn = self.conn.clone();
        loop {
            let pong_at = self.pong_deadline.map(tokio::time::Instant::from_std);
            let expiry_at = self.next_expiry().map(deadline_from_unix);
            let wake = [
                (!self.connected).then_some(stale_at),
                self.connected.then_some(next_ping),
                pong_at,
                expiry_at,
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(stale_at);
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            // The arms only sort what happened; what awaits is done after the select, so
            // that no arm's output (a publish's reply is 464 bytes) is held in the task for
            // the connection's life.
            let next = tokio::select! {
                _ = conn.cancelled() => Next::Stop,
                io = std::future::poll_fn(|cx| poll_io(link, cx)) => match io {
                    Io::Written => Next::Stop,
                    Io::In(msg) => match conn.inbound(msg) {
                        Inbound::End => Next::Stop,
                        // Text frames carry JSON, binary frames protobuf: each
                        // only on a connection of that encoding.
                        Inbound::Text(t) if !conn.is_protobuf() => {
                            Metrics::get().bytes_in.increment(t.len() as u64);
                            Next::Frame(t.into())
                        }
                        Inbound::Binary(b) if conn.is_protobuf() => {
                            Metrics::get().bytes_in.increment(b.len() as u64);
                            Next::Frame(b)
                        }
                        Inbound::Text(_) | Inbound::Binary(_) => {
                            conn.close(DisconnectCode::BAD_REQUEST);
                            Next::Stop
                        }
                        Inbound::Control => Next::Nothing,
                    },
                },
                _ = &mut timer => {
                    let now = tokio::time::Instant::now();
                    if !self.connected && now >= stale_at {
                        conn.close(DisconnectCode::STALE);
                        Next::Stop
                    } else if pong_at.is_some_and(|at| now >= at) {
                        conn.close(DisconnectCode::NO_PONG);
                        Next::Stop
                    } else {
                        if self.connected && now >= next_ping {
                            next_ping = now + ping_interval;
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
                        if expiry_at.is_some_and(|at| now >= at) {
                            Next::Expire
                        } else {
                            Next::Nothing
                        }
                    }
                }
                control = conn.next_control() => Next::Control(Box::new(control)),
                Some((id, started, result)) = self.publishes.get_mut().next(),
                    if !self.publishes.get_mut().is_empty() => {
                    self.publish_answered(id, started, result);
                    Next::Nothing
                }
            };
            match next {
                Next::Stop => break,
                Next::Nothing => {}
                Next::Frame(frame) => writing(link, Box::pin(self.handle_frame(&frame))).await,
                Next::Expire => writing(link, Box::pin(self.expire())).await,
                Next::Control(control) => {
                    writing(link, Box::pin(self.handle_control(*control))).await
                }
            }
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

    async fn handle_command(&mut self, mut cmd: Command) {
        // Params that are not a JSON object name their method too: the same
        // rules apply (id, connection state, rate), then 107 instead of
        // running it.
        let Some(method) = cmd.method().or(cmd.params_not_object) else {
            if cmd.id == 0 {
                // `{}`: the pong to our ping.
                self.pong_deadline = None;
            } else {
                self.settle_publishes(0).await;
                self.reply(Reply::error(cmd.id, ErrorCode::METHOD_NOT_FOUND));
            }
            return;
        };
        // Replies go out in command order: only a publish may be sent while
        // earlier publishes wait for their answers.
        let pipelined = cmd.publish.is_some() && cmd.params_not_object.is_none();
        if !pipelined {
            self.settle_publishes(0).await;
        }
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
            self.settle_publishes(0).await;
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
        if pipelined {
            let req = cmd.publish.take().expect("a publish");
            let most = self.state.config.client.max_publishes_in_flight;
            self.settle_publishes(most.saturating_sub(1)).await;
            let pending: PendingReply = match self.publish(req).await {
                Ok(answer) => Box::pin(async move {
                    let result = match answer.await {
                        Ok(_) => Ok(Some(Reply {
                            id,
                            publish: Some(proto::Empty {}),
                            ..Default::default()
                        })),
                        Err(e) => Err(broker_error(e).into()),
                    };
                    (id, started, result)
                }),
                Err(e) => Box::pin(std::future::ready((id, started, Err(e)))),
            };
            self.publishes.get_mut().push_back(pending);
            return;
        }
        let result = self.dispatch(cmd).await;
        Metrics::command_duration(method, started.elapsed());
        self.finish(id, result);
    }

    /// Answer publishes, oldest first, until at most `keep` wait.
    async fn settle_publishes(&mut self, keep: usize) {
        while self.publishes.get_mut().len() > keep {
            let Some((id, started, result)) = self.publishes.get_mut().next().await else {
                return;
            };
            self.publish_answered(id, started, result);
        }
    }

    fn publish_answered(
        &mut self,
        id: u32,
        started: Instant,
        result: Result<Option<Reply>, CommandError>,
    ) {
        Metrics::command_duration("publish", started.elapsed());
        self.finish(id, result);
    }

    /// Send a command's reply, or act on how it failed.
    fn finish(&mut self, id: u32, result: Result<Option<Reply>, CommandError>) {
        match result {
            Ok(Some(reply)) => self.reply(reply),
            Ok(None) => {}
            Err(CommandError::Error(e)) => self.reply(Reply::error(id, e)),
            Err(CommandError::Disconnect(d)) => self.conn.close(d),
            Err(CommandError::Backend { code, message }) => {
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
            Err(CommandError::Close { code, reason }) => {
                self.conn.close_with(code, Cow::Owned(reason))
            }
        }
    }

    /// The connection's `protocol` and `encoding`, as proxies are told.
    fn protocol_encoding(&self) -> (&'static str, &'static str) {
        if self.conn.is_protobuf() {
            ("protobuf", "binary")
        } else {
            ("json", "json")
        }
    }

    /// The fields every proxy request starts with (Centrifugo's).
    fn proxy_body(&self) -> serde_json::Value {
        let (protocol, encoding) = self.protocol_encoding();
        serde_json::json!({
            "client": self.conn.client,
            "transport": self.transport.name(),
            "protocol": protocol,
            "encoding": encoding,
            "user": self.user,
        })
    }

    /// Run one command. `Ok(None)`: the reply was already queued (subscribe
    /// merges it with the recovery) or none is due (`send`).
    async fn dispatch(&mut self, cmd: Command) -> Result<Option<Reply>, CommandError> {
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
            // Normally pipelined by `handle_command`; here when run alone.
            self.publish(req).await?.await.map_err(broker_error)?;
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
}
