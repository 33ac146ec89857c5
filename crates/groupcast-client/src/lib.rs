//! A small Rust client for Groupcast, used by tests, the load tool and
//! `groupcast probe`.
//!
//! This crate owns the client side of the wire as tests see it. [`Client`]
//! speaks the Centrifugo client protocol v2 (JSON): it numbers commands,
//! matches replies by id, keeps pushes that arrive meanwhile, and answers
//! server pings (`{}`) unless told not to. [`RelayClient`] is a plain
//! WebSocket for the raw relay. Both expose the close code the server sent.
//! Replies and pushes are `serde_json::Value`: tests assert on the wire shape.
//!
//! # Layout
//! * this file: [`Client`], [`RelayClient`] and their frames and errors.
//! * [`http`]: the plain HTTP calls the tools and tests make (the server
//!   API, `/metrics`, health endpoints).

pub mod http;

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("timed out")]
    Timeout,
    #[error("connection closed (code {0:?})")]
    Closed(Option<(u16, String)>),
    #[error("invalid JSON from server: {0}")]
    Json(String),
    #[error("invalid request: {0}")]
    Request(String),
}

/// Opcode of a raw frame for [`Client::send_frame`].
#[derive(Debug, Clone, Copy)]
pub enum RawFrame {
    Text,
    Binary,
    Continuation,
    Ping,
}

/// What the server sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Reply(Value),
    Push(Value),
    Ping,
    Close(Option<(u16, String)>),
}

/// Centrifugo-protocol client.
pub struct Client {
    ws: Ws,
    next_id: u32,
    /// Messages read but not yet claimed by a caller.
    queue: VecDeque<Incoming>,
    /// Later messages of a multi-message frame, not yet examined.
    pending: VecDeque<Incoming>,
    /// Answer server pings automatically (default true).
    pub auto_pong: bool,
    closed: Option<Option<(u16, String)>>,
}

/// Default wait for a reply or push.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8192)
        .write_buffer_size(0)
}

/// Open a WebSocket to `url` (`ws://host:port/path`).
pub async fn open(url: &str) -> Result<Ws, ClientError> {
    open_with_headers(url, &[]).await
}

/// Open a WebSocket to `url` with extra headers on the upgrade request
/// (e.g. `Cookie`).
pub async fn open_with_headers(url: &str, headers: &[(&str, &str)]) -> Result<Ws, ClientError> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
    let mut req = url.into_client_request()?;
    for (k, v) in headers {
        let name = HeaderName::try_from(*k).map_err(|e| ClientError::Request(e.to_string()))?;
        let value = HeaderValue::try_from(*v).map_err(|e| ClientError::Request(e.to_string()))?;
        req.headers_mut().append(name, value);
    }
    let (ws, _) =
        tokio_tungstenite::connect_async_with_config(req, Some(ws_config()), false).await?;
    Ok(ws)
}

/// Open a WebSocket to `url` (`ws://host:port/path`, no TLS) from the local
/// address `local` (port chosen by the system): many clients on one machine
/// spread over 127.0.0.x so they do not run out of ephemeral ports.
pub async fn open_from(url: &str, local: std::net::IpAddr) -> Result<Ws, ClientError> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let req = url.into_client_request()?;
    let host = req
        .uri()
        .host()
        .ok_or_else(|| ClientError::Request(format!("no host in {url}")))?;
    let port = req.uri().port_u16().unwrap_or(80);
    let addr = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| ClientError::Request(format!("{host}: {e}")))?
        .find(|a| a.is_ipv4() == local.is_ipv4())
        .ok_or_else(|| ClientError::Request(format!("{host}: no address like {local}")))?;
    let socket = match local {
        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(tokio_tungstenite::tungstenite::Error::Io)?;
    socket
        .bind((local, 0).into())
        .map_err(tokio_tungstenite::tungstenite::Error::Io)?;
    let stream = socket
        .connect(addr)
        .await
        .map_err(tokio_tungstenite::tungstenite::Error::Io)?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        req,
        MaybeTlsStream::Plain(stream),
        Some(ws_config()),
    )
    .await?;
    Ok(ws)
}

impl Client {
    /// Open the socket; no `connect` command is sent yet.
    pub async fn open(url: &str) -> Result<Client, ClientError> {
        Client::open_with_headers(url, &[]).await
    }

    /// Open the socket with extra upgrade-request headers (`Cookie`, ...).
    pub async fn open_with_headers(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, ClientError> {
        Ok(Client {
            ws: open_with_headers(url, headers).await?,
            next_id: 0,
            queue: VecDeque::new(),
            pending: VecDeque::new(),
            auto_pong: true,
            closed: None,
        })
    }

    /// Open the socket and `connect` with `token` (may be empty).
    pub async fn connect(url: &str, token: &str) -> Result<(Client, Value), ClientError> {
        let mut c = Client::open(url).await?;
        let reply = c.command("connect", json!({ "token": token })).await?;
        Ok((c, reply))
    }

    /// [`Client::connect`] from the local address `local` (see [`open_from`]).
    pub async fn connect_from(
        url: &str,
        token: &str,
        local: std::net::IpAddr,
    ) -> Result<(Client, Value), ClientError> {
        let mut c = Client {
            ws: open_from(url, local).await?,
            next_id: 0,
            queue: VecDeque::new(),
            pending: VecDeque::new(),
            auto_pong: true,
            closed: None,
        };
        let reply = c.command("connect", json!({ "token": token })).await?;
        Ok((c, reply))
    }

    /// Send one text frame as is.
    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<(), ClientError> {
        self.ws.send(Message::text(text.into())).await?;
        Ok(())
    }

    /// Send one binary frame.
    pub async fn send_binary(&mut self, data: Vec<u8>) -> Result<(), ClientError> {
        self.ws.send(Message::Binary(Bytes::from(data))).await?;
        Ok(())
    }

    /// Send one raw WebSocket frame, as a hostile peer would: any opcode,
    /// any payload (invalid UTF-8 in a text frame, oversized control frames),
    /// `fin` false for a fragment.
    pub async fn send_frame(
        &mut self,
        frame: RawFrame,
        payload: Vec<u8>,
        fin: bool,
    ) -> Result<(), ClientError> {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        let payload = Bytes::from(payload);
        let raw = match frame {
            RawFrame::Text => Frame::message(payload, OpCode::Data(Data::Text), fin),
            RawFrame::Binary => Frame::message(payload, OpCode::Data(Data::Binary), fin),
            RawFrame::Continuation => Frame::message(payload, OpCode::Data(Data::Continue), fin),
            RawFrame::Ping => Frame::ping(payload),
        };
        self.ws.send(Message::Frame(raw)).await?;
        Ok(())
    }

    /// Send a command and wait for its reply (the whole reply object).
    pub async fn command(&mut self, method: &str, body: Value) -> Result<Value, ClientError> {
        self.next_id += 1;
        let id = self.next_id;
        let mut cmd = json!({ "id": id });
        cmd[method] = body;
        self.send_text(cmd.to_string()).await?;
        self.reply(id).await
    }

    /// Wait for the reply with `id`, keeping other messages for later.
    pub async fn reply(&mut self, id: u32) -> Result<Value, ClientError> {
        let deadline = tokio::time::Instant::now() + DEFAULT_TIMEOUT;
        if let Some(pos) = self
            .queue
            .iter()
            .position(|m| matches!(m, Incoming::Reply(v) if v["id"] == id))
        {
            let Some(Incoming::Reply(v)) = self.queue.remove(pos) else {
                unreachable!()
            };
            return Ok(v);
        }
        loop {
            match self.read_one(deadline).await? {
                Incoming::Reply(v) if v["id"] == id => return Ok(v),
                Incoming::Close(code) => return Err(ClientError::Closed(code)),
                other => self.queue.push_back(other),
            }
        }
    }

    /// Next push (skipping pings), waiting at most `timeout`.
    pub async fn push(&mut self, timeout: Duration) -> Result<Value, ClientError> {
        if let Some(pos) = self
            .queue
            .iter()
            .position(|m| matches!(m, Incoming::Push(_)))
        {
            let Some(Incoming::Push(v)) = self.queue.remove(pos) else {
                unreachable!()
            };
            return Ok(v);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.read_one(deadline).await? {
                Incoming::Push(v) => return Ok(v),
                Incoming::Close(code) => return Err(ClientError::Closed(code)),
                other => self.queue.push_back(other),
            }
        }
    }

    /// Next push that carries a publication (`{"channel":..,"pub":{..}}`),
    /// skipping join, leave and other pushes, waiting at most `timeout` in
    /// all.
    pub async fn publication(&mut self, timeout: Duration) -> Result<Value, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let p = self.push(left).await?;
            if p.get("pub").is_some() {
                return Ok(p);
            }
        }
    }

    /// Next message of any kind.
    pub async fn next(&mut self, timeout: Duration) -> Result<Incoming, ClientError> {
        if let Some(m) = self.queue.pop_front() {
            return Ok(m);
        }
        self.read_one(tokio::time::Instant::now() + timeout).await
    }

    /// Wait for the server to close; returns its close code and reason.
    pub async fn closed(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<(u16, String)>, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(pos) = self
                .queue
                .iter()
                .position(|m| matches!(m, Incoming::Close(_)))
            {
                let Some(Incoming::Close(c)) = self.queue.remove(pos) else {
                    unreachable!()
                };
                return Ok(c);
            }
            if let Some(c) = &self.closed {
                return Ok(c.clone());
            }
            match self.read_one(deadline).await? {
                Incoming::Close(c) => return Ok(c),
                other => self.queue.push_back(other),
            }
        }
    }

    /// Read the next message from the socket (never from the queue). One
    /// frame may carry several messages: the rest are queued.
    async fn read_one(&mut self, deadline: tokio::time::Instant) -> Result<Incoming, ClientError> {
        if let Some(m) = self.pending.pop_front() {
            return Ok(m);
        }
        loop {
            if let Some(c) = &self.closed {
                return Ok(Incoming::Close(c.clone()));
            }
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| ClientError::Timeout)?;
            let text = match msg {
                None | Some(Err(_)) => {
                    self.closed = Some(None);
                    continue;
                }
                Some(Ok(Message::Close(frame))) => {
                    let c = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                    self.closed = Some(c);
                    continue;
                }
                Some(Ok(Message::Text(t))) => t.to_string(),
                Some(Ok(_)) => continue,
            };
            let mut messages = Vec::new();
            for line in text.split('\n') {
                let v: Value = serde_json::from_str(line)
                    .map_err(|e| ClientError::Json(format!("{e}: {line}")))?;
                messages.push(if v.as_object().is_some_and(|o| o.is_empty()) {
                    if self.auto_pong {
                        self.ws.send(Message::text("{}")).await?;
                    }
                    Incoming::Ping
                } else if v.get("push").is_some() {
                    Incoming::Push(v["push"].clone())
                } else {
                    Incoming::Reply(v)
                });
            }
            let mut it = messages.into_iter();
            let first = it.next().expect("split yields at least one line");
            self.pending.extend(it);
            return Ok(first);
        }
    }

    /// Close from the client side.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// A raw relay connection: frames in, frames out.
pub struct RelayClient {
    ws: Ws,
}

/// A frame from the relay.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
    Close(Option<(u16, String)>),
}

impl RelayClient {
    pub async fn open(url: &str) -> Result<RelayClient, ClientError> {
        Ok(RelayClient {
            ws: open(url).await?,
        })
    }

    pub async fn send_text(&mut self, text: &str) -> Result<(), ClientError> {
        self.ws.send(Message::text(text.to_string())).await?;
        Ok(())
    }

    pub async fn send_binary(&mut self, data: &[u8]) -> Result<(), ClientError> {
        self.ws
            .send(Message::Binary(Bytes::copy_from_slice(data)))
            .await?;
        Ok(())
    }

    /// Next data or close frame (pings are answered by the library).
    pub async fn recv(&mut self, timeout: Duration) -> Result<Frame, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| ClientError::Timeout)?;
            return Ok(match msg {
                None | Some(Err(_)) => Frame::Close(None),
                Some(Ok(Message::Close(f))) => {
                    Frame::Close(f.map(|f| (u16::from(f.code), f.reason.to_string())))
                }
                Some(Ok(Message::Text(t))) => Frame::Text(t.to_string()),
                Some(Ok(Message::Binary(b))) => Frame::Binary(b.to_vec()),
                Some(Ok(_)) => continue,
            });
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
