//! Deadlines before the first request: a socket must send its first byte
//! within `client.first_byte_timeout` of being accepted, and a complete
//! HTTP request head (up to the blank line) within
//! `client.request_head_timeout` (a TLS handshake included). Past either,
//! the read fails with `TimedOut` and hyper closes the connection: a silent
//! socket or a slowloris (a request head one byte every few seconds) holds
//! a file descriptor and a little memory for a bounded time only.
//!
//! [`HeadGuard`] wraps the accepted stream and watches only the bytes read
//! before the end of the first head; then it steps aside (a WebSocket's
//! later silences are the session's business: `client.connect_timeout`,
//! pings). The deadlines are counted in
//! `groupcast_handshake_timeouts_total{stage}`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The two limits, from the configuration (`client.*`).
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub first_byte: Duration,
    pub request_head: Duration,
}

/// Counts one expired deadline (`first_byte` or `request_head`).
pub fn timed_out(stage: &'static str) {
    metrics::counter!("groupcast_handshake_timeouts_total", "stage" => stage).increment(1);
}

/// Where the search for the head's end (`\r\n\r\n`) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Nothing,
    Cr,
    CrLf,
    CrLfCr,
}

struct Watch {
    /// Until the first byte arrives.
    first_byte: Option<Pin<Box<Sleep>>>,
    /// Until the head is complete.
    head: Pin<Box<Sleep>>,
    seen: Seen,
}

impl Watch {
    /// Feeds read bytes; true once the head is complete.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        if !bytes.is_empty() {
            self.first_byte = None;
        }
        for &b in bytes {
            self.seen = match (self.seen, b) {
                (Seen::CrLfCr, b'\n') => return true,
                (Seen::Cr, b'\n') => Seen::CrLf,
                (Seen::CrLf, b'\r') => Seen::CrLfCr,
                (_, b'\r') => Seen::Cr,
                _ => Seen::Nothing,
            };
        }
        false
    }
}

/// An accepted stream with the two deadlines (see the module doc).
pub struct HeadGuard<S> {
    inner: S,
    watch: Option<Watch>,
}

impl<S> HeadGuard<S> {
    /// Guards `inner`, accepted at `accepted`. `first_byte: false` when the
    /// first byte was already seen (a TLS ClientHello).
    pub fn new(inner: S, accepted: Instant, limits: HeadLimits, first_byte: bool) -> Self {
        HeadGuard {
            inner,
            watch: Some(Watch {
                first_byte: first_byte
                    .then(|| Box::pin(tokio::time::sleep_until(accepted + limits.first_byte))),
                head: Box::pin(tokio::time::sleep_until(accepted + limits.request_head)),
                seen: Seen::Nothing,
            }),
        }
    }
}

fn expired(stage: &'static str) -> Poll<std::io::Result<()>> {
    timed_out(stage);
    Poll::Ready(Err(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("client.{stage}_timeout"),
    )))
}

impl<S: AsyncRead + Unpin> AsyncRead for HeadGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(w) = &mut this.watch {
            if let Some(first) = &mut w.first_byte {
                if first.as_mut().poll(cx).is_ready() {
                    return expired("first_byte");
                }
            }
            if w.head.as_mut().poll(cx).is_ready() {
                return expired("request_head");
            }
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(w)) = (&read, &mut this.watch) {
            if w.feed(&buf.filled()[before..]) {
                this.watch = None;
            }
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeadGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits(first_byte_ms: u64, head_ms: u64) -> HeadLimits {
        HeadLimits {
            first_byte: Duration::from_millis(first_byte_ms),
            request_head: Duration::from_millis(head_ms),
        }
    }

    #[tokio::test]
    async fn the_head_ends_at_the_first_blank_line_across_reads() {
        let mut w = Watch {
            first_byte: None,
            head: Box::pin(tokio::time::sleep(Duration::ZERO)),
            seen: Seen::Nothing,
        };
        assert!(!w.feed(b"GET / HTTP/1.1\r\nHost: x\r\n"));
        assert!(!w.feed(b"\r"));
        assert!(w.feed(b"\nbody"));
        let mut w2 = Watch {
            seen: Seen::Nothing,
            ..w
        };
        assert!(!w2.feed(b"a\r\n\r"), "\\r\\n\\r is not the end yet");
        assert!(!w2.feed(b"x\r\n"), "a broken sequence starts over");
        assert!(w2.feed(b"\r\n"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_socket_times_out_at_the_first_byte_deadline() {
        let (client, server) = tokio::io::duplex(64);
        let mut g = HeadGuard::new(server, Instant::now(), limits(500, 5_000), true);
        let started = Instant::now();
        let e = g.read(&mut [0u8; 16]).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_millis(500));
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_head_times_out_and_a_complete_one_is_left_alone() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut g = HeadGuard::new(server, Instant::now(), limits(500, 2_000), true);
        let trickle = tokio::spawn(async move {
            for b in b"GET / HTTP/1.1\r\n" {
                client.write_all(&[*b]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            client
        });
        let mut buf = [0u8; 64];
        let e = loop {
            match g.read(&mut buf).await {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::TimedOut,
            "slowloris cut at 2 s"
        );
        trickle.abort();

        let (mut client, server) = tokio::io::duplex(64);
        let mut g = HeadGuard::new(server, Instant::now(), limits(500, 2_000), true);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let n = g.read(&mut buf).await.unwrap();
        assert_eq!(n, 18);
        // Long after both deadlines, a WebSocket may stay silent.
        tokio::time::sleep(Duration::from_secs(60)).await;
        client.write_all(b"later").await.unwrap();
        let n = g.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"later");
    }
}
