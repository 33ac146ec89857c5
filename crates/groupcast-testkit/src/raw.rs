//! A plain WebSocket, as a browser page's `new WebSocket(url)` (relay
//! routes and the raw relay), with bounded waits.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long each wait below lasts at most.
pub const WAIT: Duration = Duration::from_secs(10);

/// Open `url`, with an `Origin` header when given (a browser sends one).
pub async fn open(url: &str, origin: Option<&str>) -> Result<Ws, Error> {
    let mut req = url.into_client_request()?;
    if let Some(o) = origin {
        req.headers_mut()
            .insert("Origin", o.parse().expect("origin is a header value"));
    }
    tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake within 10 s")
        .map(|(ws, _)| ws)
}

/// The next text, binary or close frame (pings are answered by
/// tungstenite and skipped).
pub async fn frame(ws: &mut Ws) -> Message {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("connection open")
            .expect("read");
        if matches!(m, Message::Text(_) | Message::Binary(_) | Message::Close(_)) {
            return m;
        }
    }
}

/// The next text frame, parsed as JSON.
pub async fn json(ws: &mut Ws) -> serde_json::Value {
    match frame(ws).await {
        Message::Text(t) => serde_json::from_str(t.as_str())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", t.as_str())),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// Reads until the server's close frame: its code and reason (1005 for a
/// close frame without a code).
pub async fn closed(ws: &mut Ws) -> (u16, String) {
    loop {
        match frame(ws).await {
            Message::Close(Some(f)) => return (u16::from(f.code), f.reason.to_string()),
            Message::Close(None) => return (1005, String::new()),
            _ => {}
        }
    }
}
