//! One client connection's shared half: the bounded outgoing queue, the
//! writer task, the close signal, and the control inbox for server-initiated
//! actions (API subscribe, unsubscribe, disconnect, refresh).
//!
//! The queue is bounded in *bytes* (`client.max_queue_bytes`): a push that
//! would exceed it closes the connection with 3008 "slow" instead of waiting,
//! so a slow reader never blocks a fan-out or grows the broker's memory.
//! The writer batches queued protocol messages into one frame (newline
//! separated, as the protocol allows); relay frames are written one by one.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use groupcast_core::hub::{PreparedPush, PushType, SioPub, Subscriber, SubscriberKind};
use groupcast_proto::client::RawJson;
use groupcast_proto::codes::UnsubscribeCode;
use groupcast_proto::DisconnectCode;
use parking_lot::Mutex;
use serde_json::value::RawValue;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Most protocol messages batched into one frame.
const MAX_BATCH_MESSAGES: usize = 128;
/// Largest batched frame in bytes (a single larger message is sent alone).
const MAX_BATCH_BYTES: usize = 64 * 1024;
/// Queued server-initiated actions per connection (`control_queue_max`).
pub const MAX_CONTROL_QUEUE: usize = 64;
/// Longest close reason in bytes: a close frame's payload is at most 125
/// bytes, two of which hold the code.
pub const MAX_CLOSE_REASON: usize = 123;
/// `reason` cut to at most `max` bytes, on a character boundary.
pub fn cut_reason(mut reason: String, max: usize) -> String {
    if reason.len() > max {
        let mut end = max;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

/// Most frames a writer writes before it lets its task do something else.
const FRAMES_PER_POLL: usize = 32;

/// Time allowed for the close frame when a connection ends.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What a message is, for metrics.
#[derive(Debug, Clone, Copy)]
pub enum OutKind {
    Pub,
    Join,
    Leave,
    /// Gathered joins and leaves in one message (coalescing).
    JoinLeave {
        joins: u32,
        leaves: u32,
    },
    Reply,
    Ping,
}

enum Out {
    Json(Bytes, OutKind),
    Relay(Bytes, bool),
    /// Socket.IO: a publication of a channel, as an event.
    Sio(Arc<SioPub>),
    /// Socket.IO: an Engine.IO packet the session wrote (text, or binary).
    Eio(Bytes, bool),
    /// A WebSocket-level ping (relay connections).
    WsPing,
    /// End of output: close after everything queued before it.
    Close,
}

impl Out {
    fn len(&self) -> usize {
        match self {
            Out::Json(b, _) | Out::Relay(b, _) | Out::Eio(b, _) => b.len(),
            Out::Sio(p) => p.args.len(),
            Out::WsPing | Out::Close => 0,
        }
    }
}

/// What a Socket.IO session's transport takes from its queue ([`Outbox::next_sio`]).
pub enum SioOut {
    /// A publication of `channel`, as an event.
    Pub(Arc<SioPub>),
    /// An Engine.IO packet: text, or binary.
    Packet(Bytes, bool),
    /// The connection is drained or closed: nothing more comes.
    End,
}

/// A server-initiated action delivered to a session task.
#[derive(Debug)]
pub enum Control {
    Subscribe {
        channel: String,
        data: Option<RawJson>,
    },
    /// End a subscription with an unsubscribe push carrying `code`
    /// (2000: server unsubscribe, terminal; 2500: insufficient state, the
    /// client resubscribes and recovers).
    Unsubscribe {
        channel: String,
        code: UnsubscribeCode,
    },
    /// Close with this code and reason (reason at most [`MAX_CLOSE_REASON`] bytes).
    Disconnect { code: u16, reason: String },
    /// Set a new expiry (Unix seconds; 0: never) or expire now.
    Refresh { expired: bool, expire_at: i64 },
    /// Relay connections of a backend route: bind to another target.
    Transfer {
        target: String,
        meta: Option<Arc<RawValue>>,
    },
    /// Relay connections of a backend route: close with 3015 when bound to
    /// `target`.
    TargetGone { target: String },
    /// Socket.IO: emit `event` with `args` in `namespace` (with ack id `ack`).
    SioEmit {
        namespace: String,
        event: String,
        args: Vec<serde_json::Value>,
        ack: Option<u64>,
    },
    /// Socket.IO: answer the client's event `id` in `namespace` with `args`.
    SioAck {
        namespace: String,
        id: u64,
        args: Vec<serde_json::Value>,
    },
    /// Socket.IO: end the socket of `namespace` (the session stays).
    SioDisconnect { namespace: String },
}

/// One read of a client's socket, as [`Conn::inbound`] sorts it.
pub enum Inbound {
    Text(Utf8Bytes),
    Binary(Bytes),
    /// Ping or pong: nothing to do (tungstenite answers pings).
    Control,
    /// The connection is over; leave the read loop.
    End,
}

/// The shared half of a connection. The session task owns the rest.
pub struct Conn {
    pub id: u64,
    pub kind: SubscriberKind,
    /// Client id given to the client at connect (UUID).
    pub client: String,
    /// The outgoing queue, read by the [`Outbox`] alone.
    queue: Mutex<Queue>,
    /// The reader of the queue: woken when an item comes into an empty queue (it waits only
    /// on an empty one) and when the connection ends (a writer waiting on a slow client).
    ready: AtomicWaker,
    queued: AtomicUsize,
    max_queue: usize,
    cancel: CancellationToken,
    /// `cancel` was cancelled: read on every message, without the token's lock.
    closed: AtomicBool,
    close_reason: Mutex<Option<(u16, Cow<'static, str>)>>,
    /// Protobuf encoding (subprotocol `centrifuge-protobuf`) instead of JSON.
    protobuf: AtomicBool,
    controls: Mutex<VecDeque<Control>>,
    control_notify: Notify,
}

/// A connection's outgoing queue. Not a channel: an idle connection's queue holds no
/// memory (a tokio channel keeps a block of 32 slots and its shared state, about 2 KiB, for
/// the life of the connection), and it gives back what a burst made it grow.
#[derive(Default)]
struct Queue {
    items: VecDeque<Out>,
    /// The [`Outbox`] is gone: nothing reads the queue any more.
    unread: bool,
}

/// Capacity (items) an empty queue keeps; beyond it, an emptied queue is freed.
const QUEUE_KEEP: usize = 16;

/// The receiving half, consumed by [`Conn::run_writer`] (or a Socket.IO transport).
pub struct Outbox(Arc<Conn>);

impl Drop for Outbox {
    fn drop(&mut self) {
        let mut q = self.0.queue.lock();
        q.unread = true;
        q.items = VecDeque::new();
    }
}

impl Outbox {
    /// The next item, waiting for one. Cancel-safe: an item is taken only when returned.
    async fn recv(&mut self) -> Out {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Out> {
        if let Some(item) = self.try_recv() {
            return Poll::Ready(item);
        }
        self.0.ready.register(cx.waker());
        // An item queued before the registration woke nobody.
        match self.try_recv() {
            Some(item) => Poll::Ready(item),
            None => Poll::Pending,
        }
    }

    /// The next item, if one is queued.
    fn try_recv(&mut self) -> Option<Out> {
        let mut q = self.0.queue.lock();
        let item = q.items.pop_front();
        if q.items.is_empty() && q.items.capacity() > QUEUE_KEEP {
            q.items = VecDeque::new();
        }
        item
    }

    /// Socket.IO: the next item of the queue, waiting for one; [`SioOut::End`] once the
    /// connection is closed or drained. Its bytes leave `conn`'s queue count.
    pub async fn next_sio(&mut self, conn: &Conn) -> SioOut {
        // No wait on the cancellation token (a lock and a waiter list per message): a closed
        // connection's queue gets a wake-up item (`Conn::end`).
        if conn.is_closed() {
            return SioOut::End;
        }
        let item = self.recv().await;
        if conn.is_closed() {
            return SioOut::End;
        }
        Self::sio(item, conn)
    }

    /// [`Outbox::next_sio`] without waiting: `None` when the queue is empty.
    pub fn try_next_sio(&mut self, conn: &Conn) -> Option<SioOut> {
        match self.try_recv() {
            Some(item) => Some(Self::sio(item, conn)),
            None if !conn.is_closed() => None,
            None => Some(SioOut::End),
        }
    }

    fn sio(item: Out, conn: &Conn) -> SioOut {
        conn.queued.fetch_sub(item.len(), Ordering::AcqRel);
        match item {
            Out::Sio(p) => SioOut::Pub(p),
            Out::Eio(b, binary) => SioOut::Packet(b, binary),
            Out::Close => SioOut::End,
            // Not queued on Socket.IO connections.
            Out::Json(..) | Out::Relay(..) | Out::WsPing => SioOut::Packet(Bytes::new(), false),
        }
    }

    /// Take every protocol message queued so far (no socket: replay, fuzzing).
    pub fn take_messages(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(item) = self.try_recv() {
            if let Out::Json(b, _) = item {
                out.push(b);
            }
        }
        out
    }
}

impl Conn {
    pub fn new(id: u64, kind: SubscriberKind, max_queue: usize) -> (Arc<Conn>, Outbox) {
        let conn = Arc::new(Conn {
            id,
            kind,
            client: uuid::Uuid::new_v4().to_string(),
            queue: Default::default(),
            ready: AtomicWaker::new(),
            queued: AtomicUsize::new(0),
            max_queue,
            cancel: CancellationToken::new(),
            closed: AtomicBool::new(false),
            close_reason: Mutex::new(None),
            protobuf: AtomicBool::new(false),
            controls: Mutex::new(VecDeque::new()),
            control_notify: Notify::new(),
        });
        (conn.clone(), Outbox(conn))
    }

    /// Queue `out`; gives it back when nothing reads the queue any more.
    fn queue_item(&self, out: Out) -> Result<(), Out> {
        let mut q = self.queue.lock();
        if q.unread {
            return Err(out);
        }
        let was_empty = q.items.is_empty();
        q.items.push_back(out);
        drop(q);
        if was_empty {
            self.ready.wake();
        }
        Ok(())
    }

    fn enqueue(&self, out: Out) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        let len = out.len();
        let prev = self.queued.fetch_add(len, Ordering::AcqRel);
        // An empty queue always takes one message, so a single large
        // publication cannot cut off a reader that is keeping up.
        if prev > 0 && prev + len > self.max_queue {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            Metrics::limit_hit("max_queue_bytes");
            self.close(DisconnectCode::SLOW);
            return false;
        }
        if self.queue_item(out).is_err() {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Speak the protobuf encoding from now on (set by the session before
    /// anything is queued): binary frames of length-prefixed messages, and
    /// protobuf pushes from the hub.
    pub fn set_protobuf(&self) {
        self.protobuf.store(true, Ordering::Release);
    }

    pub fn is_protobuf(&self) -> bool {
        self.protobuf.load(Ordering::Acquire)
    }

    /// Queue one protocol message (a reply, a push, or the `{}` ping).
    pub fn send_json(&self, bytes: Bytes, kind: OutKind) -> bool {
        self.enqueue(Out::Json(bytes, kind))
    }

    /// Queue one raw frame (relay connections): text, or binary when
    /// `binary`.
    pub fn send_frame(&self, bytes: Bytes, binary: bool) -> bool {
        self.enqueue(Out::Relay(bytes, binary))
    }

    /// Queue an Engine.IO packet (Socket.IO connections): text, or binary when `binary`.
    pub fn send_eio(&self, bytes: Bytes, binary: bool) -> bool {
        self.enqueue(Out::Eio(bytes, binary))
    }

    /// Socket.IO: queue a publication of `channel` (one read back from history) as the hub
    /// would.
    pub fn send_sio(&self, p: Arc<SioPub>) -> bool {
        self.enqueue(Out::Sio(p))
    }

    /// Queue a WebSocket ping frame (relay keepalive).
    pub fn send_ws_ping(&self) -> bool {
        self.enqueue(Out::WsPing)
    }

    /// Close with `code` after the output already queued is written
    /// (graceful shutdown). Not bounded by the queue limit.
    pub fn drain(&self, code: DisconnectCode) {
        self.drain_with(code.code, Cow::Borrowed(code.reason));
    }

    /// [`Conn::drain`] with any code and reason (at most
    /// [`MAX_CLOSE_REASON`] bytes).
    pub fn drain_with(&self, code: u16, reason: Cow<'static, str>) {
        {
            let mut r = self.close_reason.lock();
            if r.is_some() || self.closed.load(Ordering::Acquire) {
                return;
            }
            *r = Some((code, reason));
        }
        if self.queue_item(Out::Close).is_err() {
            self.end();
        }
    }

    /// Close the connection with `code` at once (the first reason wins).
    pub fn close(&self, code: DisconnectCode) {
        self.close_with(code.code, Cow::Borrowed(code.reason));
    }

    /// Close with any code and reason (server API `disconnect`, application
    /// codes 4000..4999). The caller keeps `reason` within
    /// [`MAX_CLOSE_REASON`] bytes.
    pub fn close_with(&self, code: u16, reason: Cow<'static, str>) {
        {
            let mut r = self.close_reason.lock();
            if r.is_none() && !self.closed.load(Ordering::Acquire) {
                *r = Some((code, reason));
            }
        }
        self.end();
    }

    /// End the connection without a server close reason (the peer went away).
    pub fn closed_by_peer(&self) {
        self.end();
    }

    /// Sorts one read of the socket: the end of the stream, a close frame
    /// and a read error end the connection here (see `read_failed`) and
    /// give [`Inbound::End`]; data messages are passed on.
    pub fn inbound(&self, msg: Option<Result<Message, axum::Error>>) -> Inbound {
        match msg {
            None | Some(Ok(Message::Close(_))) => {
                self.closed_by_peer();
                Inbound::End
            }
            Some(Err(e)) => {
                self.read_failed(e);
                Inbound::End
            }
            Some(Ok(Message::Text(t))) => Inbound::Text(t),
            Some(Ok(Message::Binary(b))) => Inbound::Binary(b),
            Some(Ok(_)) => Inbound::Control,
        }
    }

    /// The socket could not be read: close with the matching code (1009 for
    /// an oversized message, 3501 for invalid UTF-8 or a protocol
    /// violation), or just end when the peer is gone.
    fn read_failed(&self, e: axum::Error) {
        let code = match e.into_inner().downcast::<tungstenite::Error>().map(|e| *e) {
            Ok(tungstenite::Error::Capacity(_)) => {
                Metrics::limit_hit("max_message_size");
                Some(DisconnectCode::MESSAGE_TOO_BIG)
            }
            // The peer vanished without a close frame (a closed tab, a lost
            // network): gone, not a bad request.
            Ok(tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            )) => None,
            Ok(tungstenite::Error::Utf8(_) | tungstenite::Error::Protocol(_)) => {
                Some(DisconnectCode::BAD_REQUEST)
            }
            _ => None,
        };
        match code {
            Some(code) => self.close(code),
            None => self.closed_by_peer(),
        }
    }

    /// The close code and reason set by the server, if any.
    pub fn close_reason(&self) -> Option<(u16, String)> {
        self.close_reason
            .lock()
            .as_ref()
            .map(|(c, r)| (*c, r.to_string()))
    }

    /// The close code set by the server, if any.
    pub fn close_code(&self) -> Option<u16> {
        self.close_reason.lock().as_ref().map(|(code, _)| *code)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The connection is over: every task waiting on it wakes. The writer waits on its queue
    /// alone (not on the token, which costs a lock per message): an item wakes it, and it
    /// stops on the closed flag, before anything still queued.
    fn end(&self) {
        self.closed.store(true, Ordering::Release);
        self.cancel.cancel();
        let _ = self.queue_item(Out::Close);
        self.ready.wake();
    }

    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    /// Deliver a server-initiated action; false (counted in
    /// `groupcast_control_dropped_total`) when the inbox is full.
    pub fn control(&self, c: Control) -> bool {
        {
            let mut q = self.controls.lock();
            if q.len() >= MAX_CONTROL_QUEUE {
                Metrics::get().control_dropped.increment(1);
                tracing::warn!(client = %self.client, "control inbox full: server action dropped");
                return false;
            }
            q.push_back(c);
        }
        self.control_notify.notify_one();
        true
    }

    /// Wait for the next control action.
    pub async fn next_control(&self) -> Control {
        loop {
            if let Some(c) = self.controls.lock().pop_front() {
                return c;
            }
            self.control_notify.notified().await;
        }
    }

    /// The writer task: drains the queue into the socket until the
    /// connection is closed (at once) or drained (after what was queued
    /// before the drain), then sends the close frame.
    /// `sink`: the WebSocket's, or another transport's that takes the same messages
    /// (HTTP streaming and SSE: `session::stream`).
    pub async fn run_writer<S>(self: Arc<Self>, sink: S, outbox: Outbox)
    where
        S: futures_util::Sink<Message> + Unpin,
    {
        let mut writer = Writer::new(sink, outbox);
        std::future::poll_fn(|cx| writer.poll_write(cx)).await;
        writer.finish().await;
    }
}

/// Writes a connection's queue into its socket, in the task that polls it: its own (see
/// [`Conn::run_writer`]) or the session's, which then reads the same socket
/// ([`Writer::poll_next_in`]): one task per connection.
///
/// Queued protocol messages are batched into one frame; each frame is flushed before the
/// next is taken. The writer is done when the connection is closed (what is still queued is
/// not written), drained (after what was queued before the drain), or the socket fails.
pub struct Writer<S> {
    sink: S,
    outbox: Outbox,
    counts: KindCounts,
    /// An item taken while batching that belongs in the next frame.
    held: Option<Out>,
    /// A frame taken from the queue that the socket has not taken yet, and its bytes.
    pending: Option<(Message, usize)>,
    /// A frame was handed to the socket and is not flushed yet.
    flushing: bool,
    done: bool,
}

impl<S> Writer<S>
where
    S: futures_util::Sink<Message> + Unpin,
{
    pub fn new(sink: S, outbox: Outbox) -> Writer<S> {
        Writer {
            sink,
            outbox,
            counts: KindCounts::default(),
            held: None,
            pending: None,
            flushing: false,
            done: false,
        }
    }

    fn conn(&self) -> &Conn {
        &self.outbox.0
    }

    /// Writes what is queued; ready once the writer is done (and from then on).
    pub fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.done {
            return Poll::Ready(());
        }
        let m = Metrics::get();
        let mut frames = 0;
        loop {
            // Closed at once (not drained): what is still queued is not written.
            if self.conn().is_closed() {
                return self.stop();
            }
            if self.pending.is_some() {
                match self.sink.poll_ready_unpin(cx) {
                    Poll::Pending => return self.wait_for_socket(cx),
                    Poll::Ready(Err(_)) => return self.failed(),
                    Poll::Ready(Ok(())) => {}
                }
                let (msg, bytes) = self.pending.take().expect("a pending frame");
                let sent = self.sink.start_send_unpin(msg);
                self.conn().queued.fetch_sub(bytes, Ordering::AcqRel);
                if sent.is_err() {
                    return self.failed();
                }
                self.flushing = true;
                frames += 1;
                m.frames_out.increment(1);
                m.bytes_out.increment(bytes as u64);
                self.counts.flush(m);
            }
            if self.flushing {
                match self.sink.poll_flush_unpin(cx) {
                    Poll::Pending => return self.wait_for_socket(cx),
                    Poll::Ready(Err(_)) => return self.failed(),
                    Poll::Ready(Ok(())) => self.flushing = false,
                }
            }
            if frames == FRAMES_PER_POLL {
                // The task's other work (the session reads the same socket) gets its turn.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let first = match self.held.take() {
                Some(item) => item,
                None => match self.outbox.poll_recv(cx) {
                    Poll::Ready(item) => item,
                    Poll::Pending => return Poll::Pending,
                },
            };
            if self.conn().is_closed() {
                return self.stop();
            }
            if let Out::Close = first {
                return self.stop();
            }
            self.pending = self.frame(first, m);
        }
    }

    /// The socket cannot take more now: wait for it, or for the connection to end.
    fn wait_for_socket(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.conn().ready.register(cx.waker());
        if self.conn().is_closed() {
            return self.stop();
        }
        Poll::Pending
    }

    fn failed(&mut self) -> Poll<()> {
        self.conn().close(DisconnectCode::WRITE_ERROR);
        self.stop()
    }

    fn stop(&mut self) -> Poll<()> {
        self.done = true;
        Poll::Ready(())
    }

    /// The frame for `first` (and the protocol messages queued after it); `None` for an
    /// item that writes nothing.
    fn frame(&mut self, first: Out, m: &Metrics) -> Option<(Message, usize)> {
        let conn = &self.outbox.0;
        match first {
            Out::Close => None,
            // Socket.IO connections have their own transports.
            Out::Sio(..) | Out::Eio(..) => None,
            Out::WsPing => Some((Message::Ping(Bytes::new()), 0)),
            Out::Relay(b, binary) => {
                m.messages_out_relay.increment(1);
                let len = b.len();
                if binary {
                    return Some((Message::Binary(b), len));
                }
                match Utf8Bytes::try_from(b) {
                    Ok(t) => Some((Message::Text(t), len)),
                    Err(_) => {
                        conn.queued.fetch_sub(len, Ordering::AcqRel);
                        None
                    }
                }
            }
            Out::Json(b, kind) => {
                // Read per frame, not once at the start: the session sets the encoding after
                // the connection opened, but before it queues anything.
                let protobuf = conn.is_protobuf();
                self.counts.add(kind);
                let mut total = b.len();
                let mut messages = 1;
                // A second message starts the batched frame (an idle connection's single
                // replies and pushes allocate nothing).
                let mut first = Some(b);
                let mut batched: Option<BytesMut> = None;
                while messages < MAX_BATCH_MESSAGES && total < MAX_BATCH_BYTES {
                    match self.outbox.try_recv() {
                        Some(Out::Json(b, kind)) => {
                            self.counts.add(kind);
                            total += b.len();
                            messages += 1;
                            let buf = batched.get_or_insert_with(|| {
                                let first = first.take().expect("the first message");
                                let mut buf = BytesMut::with_capacity(4 * (first.len() + b.len()));
                                buf.extend_from_slice(&first);
                                buf
                            });
                            // Protobuf messages carry their length: just concatenated. JSON
                            // ones are `\n`-separated.
                            if !protobuf {
                                buf.extend_from_slice(b"\n");
                            }
                            buf.extend_from_slice(&b);
                        }
                        Some(other) => {
                            self.held = Some(other);
                            break;
                        }
                        None => break,
                    }
                }
                let frame = match batched {
                    Some(buf) => buf.freeze(),
                    None => first.take().expect("the only message"),
                };
                if protobuf {
                    return Some((Message::Binary(frame), total));
                }
                // Replies and pushes are serde_json output: always UTF-8.
                match Utf8Bytes::try_from(frame) {
                    Ok(t) => Some((Message::Text(t), total)),
                    Err(_) => {
                        self.outbox.0.queued.fetch_sub(total, Ordering::AcqRel);
                        None
                    }
                }
            }
        }
    }

    /// Sends the close frame (with the server's code and reason, if any) and closes the
    /// socket, each within [`CLOSE_TIMEOUT`]; then the connection is over.
    pub async fn finish(mut self) {
        let conn = self.outbox.0.clone();
        // Kept (not taken): the session reads it for its leave events and webhooks,
        // possibly after this.
        let reason = conn.close_reason.lock().clone();
        let frame = reason.map(|(code, reason)| {
            Metrics::disconnect(code);
            CloseFrame {
                code,
                reason: Utf8Bytes::from(reason.as_ref()),
            }
        });
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.sink.send(Message::Close(frame))).await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.sink.close()).await;
        // A drained connection ends here: let the session finish.
        conn.end();
    }
}

impl<S> Writer<S>
where
    S: futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    /// The client's next message, from the socket this writer writes.
    pub fn poll_next_in(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Message, axum::Error>>> {
        self.sink.poll_next_unpin(cx)
    }
}

/// Messages of one frame by kind, added to the shared counters once per
/// frame rather than once per message (these counters are hit by every
/// subscriber's writer on every fan-out).
#[derive(Default)]
struct KindCounts([u64; 4]);

impl KindCounts {
    fn add(&mut self, kind: OutKind) {
        match kind {
            OutKind::Pub => self.0[0] += 1,
            OutKind::Join => self.0[1] += 1,
            OutKind::Leave => self.0[2] += 1,
            OutKind::JoinLeave { joins, leaves } => {
                self.0[1] += u64::from(joins);
                self.0[2] += u64::from(leaves);
            }
            OutKind::Reply => self.0[3] += 1,
            OutKind::Ping => {}
        }
    }

    fn flush(&mut self, m: &Metrics) {
        let counters = [
            &m.messages_out_pub,
            &m.messages_out_join,
            &m.messages_out_leave,
            &m.messages_out_reply,
        ];
        for (n, c) in self.0.iter_mut().zip(counters) {
            if *n > 0 {
                c.increment(*n);
                *n = 0;
            }
        }
    }
}

impl Subscriber for Conn {
    fn id(&self) -> u64 {
        self.id
    }

    fn client(&self) -> &str {
        &self.client
    }

    fn kind(&self) -> SubscriberKind {
        self.kind
    }

    fn push(&self, push: &PreparedPush) {
        match self.kind {
            SubscriberKind::Protocol => {
                let kind = match push.push_type() {
                    PushType::Pub => OutKind::Pub,
                    PushType::Join => OutKind::Join,
                    PushType::Leave => OutKind::Leave,
                    PushType::JoinLeave { joins, leaves } => OutKind::JoinLeave { joins, leaves },
                };
                let bytes = if self.is_protobuf() {
                    push.protobuf()
                } else {
                    push.json()
                };
                self.enqueue(Out::Json(bytes.clone(), kind));
            }
            SubscriberKind::Relay => {
                if let Some((bytes, binary)) = push.relay() {
                    self.enqueue(Out::Relay(bytes.clone(), *binary));
                }
            }
            SubscriberKind::SocketIo => {
                if let Some(p) = push.socketio() {
                    self.enqueue(Out::Sio(p.clone()));
                }
            }
        }
    }

    fn push_delta(&self, push: &PreparedPush, delta: bool) {
        if self.kind != SubscriberKind::Protocol {
            return self.push(push);
        }
        let protobuf = self.is_protobuf();
        let bytes = match delta.then(|| push.delta_push(protobuf)).flatten() {
            Some(d) => d,
            None => push.full_for_delta(protobuf),
        };
        self.enqueue(Out::Json(bytes.clone(), OutKind::Pub));
    }

    fn insufficient_state(&self, channel: &str) -> bool {
        // Relay connections are at-most-once and have no recovery: they
        // just go on. Protocol clients resubscribe and recover; a Socket.IO
        // session decides by its room's namespace (it resumes the room when
        // the namespace does not recover). Until then the hub holds the
        // subscription: nothing after the hole reaches the client.
        let stops = matches!(
            self.kind,
            SubscriberKind::Protocol | SubscriberKind::SocketIo
        );
        if stops {
            self.control(Control::Unsubscribe {
                channel: channel.to_string(),
                code: UnsubscribeCode::INSUFFICIENT,
            });
        }
        stops
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that keeps what is written to it, or fails every write.
    #[derive(Default)]
    struct Socket {
        written: Vec<Message>,
        broken: bool,
    }

    impl futures_util::Sink<Message> for Socket {
        type Error = ();
        fn poll_ready(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Ready(if self.broken { Err(()) } else { Ok(()) })
        }
        fn start_send(mut self: std::pin::Pin<&mut Self>, m: Message) -> Result<(), ()> {
            self.written.push(m);
            Ok(())
        }
        fn poll_flush(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Queues `messages`, drains the connection (unless the socket is broken), and runs a
    /// writer to its end.
    async fn write_all(
        protobuf: bool,
        messages: &[&'static str],
        broken: bool,
    ) -> (Arc<Conn>, Vec<Message>) {
        let (conn, outbox) = Conn::new(1, SubscriberKind::Protocol, 1 << 20);
        if protobuf {
            conn.set_protobuf();
        }
        for m in messages {
            conn.send_json(Bytes::from_static(m.as_bytes()), OutKind::Pub);
        }
        if !broken {
            // The writer stops after what was queued (a broken socket stops it sooner).
            conn.drain(DisconnectCode::BAD_REQUEST);
        }
        let mut writer = Writer::new(
            Socket {
                broken,
                ..Default::default()
            },
            outbox,
        );
        std::future::poll_fn(|cx| writer.poll_write(cx)).await;
        let written = std::mem::take(&mut writer.sink.written);
        writer.finish().await;
        (conn, written)
    }

    #[tokio::test]
    async fn the_writer_batches_queued_messages_into_one_frame() {
        let (_, written) = write_all(false, &["a", "b", "c"], false).await;
        assert_eq!(written, vec![Message::Text("a\nb\nc".into())]);
        // One message goes alone; protobuf messages are concatenated (they carry their length).
        let (_, written) = write_all(false, &["a"], false).await;
        assert_eq!(written, vec![Message::Text("a".into())]);
        let (_, written) = write_all(true, &["a", "b"], false).await;
        assert_eq!(written, vec![Message::Binary(Bytes::from_static(b"ab"))]);
    }

    #[tokio::test]
    async fn a_socket_that_fails_a_write_closes_the_connection_with_write_error() {
        let (conn, written) = write_all(false, &["a"], true).await;
        assert!(written.is_empty());
        assert!(conn.is_closed());
        assert_eq!(conn.close_code(), Some(DisconnectCode::WRITE_ERROR.code));
    }

    #[test]
    fn a_peer_that_vanishes_is_gone_not_a_bad_request() {
        use tungstenite::error::ProtocolError;
        let (conn, _outbox) = Conn::new(1, SubscriberKind::Protocol, 1 << 20);
        conn.read_failed(axum::Error::new(tungstenite::Error::Protocol(
            ProtocolError::ResetWithoutClosingHandshake,
        )));
        assert!(conn.is_closed());
        assert_eq!(conn.close_code(), None, "no close code: nothing to tell");

        let (conn, _outbox) = Conn::new(2, SubscriberKind::Protocol, 1 << 20);
        conn.read_failed(axum::Error::new(tungstenite::Error::Protocol(
            ProtocolError::UnmaskedFrameFromClient,
        )));
        assert_eq!(conn.close_code(), Some(DisconnectCode::BAD_REQUEST.code));
    }

    #[test]
    fn control_inbox_is_bounded() {
        let (conn, _outbox) = Conn::new(1, SubscriberKind::Protocol, 1 << 20);
        for _ in 0..MAX_CONTROL_QUEUE {
            assert!(conn.control(Control::Unsubscribe {
                channel: "a".into(),
                code: UnsubscribeCode::SERVER,
            }));
        }
        assert!(
            !conn.control(Control::Unsubscribe {
                channel: "a".into(),
                code: UnsubscribeCode::SERVER,
            }),
            "65th action dropped"
        );
        assert_eq!(conn.controls.lock().len(), MAX_CONTROL_QUEUE);
    }

    #[test]
    fn queue_limit_closes_slow_connection_but_takes_one_large_message() {
        let (conn, _outbox) = Conn::new(1, SubscriberKind::Protocol, 100);
        assert!(
            conn.send_json(Bytes::from(vec![b'x'; 500]), OutKind::Reply),
            "empty queue takes one"
        );
        assert!(!conn.send_json(Bytes::from_static(b"{}"), OutKind::Reply));
        assert!(conn.is_closed());
        assert_eq!(conn.close_code(), Some(3008));
    }
}
