//! The per-protocol parts of the `fanout`, `rooms`, `idle` and `join-storm`
//! scenarios (`--protocol`): opening a connection and subscribing, building
//! publish commands, and reading what a server sends (deliveries, command
//! replies, pings). Everything else (pacing, counting, latency) is shared.
//!
//! * `centrifugo` (default): Groupcast's JSON protocol on
//!   `/connection/websocket`, one command or push per line.
//! * `nats-ws`: the NATS text protocol over a nats-server WebSocket
//!   listener (`websocket { no_tls: true }`), for side-by-side runs
//!   (`benches/peers.sh`). A channel is a subject; subscribing is
//!   `CONNECT` + `SUB` + `PING`, done at the `PONG`. The publisher's
//!   acknowledgements are `+OK` (its connection is `verbose`), or, with
//!   `--nats-jetstream`, JetStream's reply to each `PUB` on an inbox.
//!   Tokens are not sent (the listener is anonymous).

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::Ws;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    #[default]
    Centrifugo,
    NatsWs,
}

/// The `sid` of a NATS connection's channel subscription.
const SID_CHANNEL: &str = "1";
/// The `sid` of the publisher's inbox subscription (JetStream replies).
const SID_INBOX: &str = "2";
/// The publisher's inbox prefix: JetStream's reply to publish `id` goes
/// to `_INBOX.gcbench.<id>`.
const INBOX: &str = "_INBOX.gcbench";

/// How a connection is used: the publisher wants acknowledgements.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Subscriber,
    Publisher,
}

/// One protocol's settings, shared by every connection of a run.
#[derive(Clone, Copy)]
pub struct Wire {
    pub protocol: Protocol,
    /// NATS: publications are JetStream-stored (acknowledged on an inbox).
    pub jetstream: bool,
}

/// Something a server sent, as the scenarios care about it.
#[derive(Debug, PartialEq)]
pub enum Event<'a> {
    /// A publication on a subscribed channel: its data (JSON, carrying the
    /// sender's `"t"`) or the whole line that holds it.
    Publication(&'a [u8]),
    /// The answer to one command: `Err` with the server's words.
    Reply(Result<(), String>),
    /// The server's ping: answer with [`Wire::pong`].
    Ping,
    /// NATS: the answer to our `PING` (the end of a handshake).
    Pong,
    Join,
    Leave,
}

impl Wire {
    pub fn path(&self) -> &'static str {
        match self.protocol {
            Protocol::Centrifugo => "/connection/websocket",
            Protocol::NatsWs => "/",
        }
    }

    pub fn pong(&self) -> Message {
        match self.protocol {
            Protocol::Centrifugo => Message::text("{}"),
            Protocol::NatsWs => Message::binary(b"PONG\r\n".to_vec()),
        }
    }

    /// A reader for one connection.
    pub fn reader(&self) -> Reader {
        Reader {
            protocol: self.protocol,
            nats: NatsParser::default(),
        }
    }

    /// Append one publish command to `frame` (several make one frame).
    pub fn push_publish(&self, frame: &mut String, id: u64, channel: &str, data: &str) {
        match self.protocol {
            Protocol::Centrifugo => {
                if !frame.is_empty() {
                    frame.push('\n');
                }
                frame.push_str(&format!(
                    "{{\"id\":{id},\"publish\":{{\"channel\":\"{channel}\",\"data\":{data}}}}}"
                ));
            }
            Protocol::NatsWs if self.jetstream => frame.push_str(&format!(
                "PUB {channel} {INBOX}.{id} {}\r\n{data}\r\n",
                data.len()
            )),
            Protocol::NatsWs => {
                frame.push_str(&format!("PUB {channel} {}\r\n{data}\r\n", data.len()))
            }
        }
    }

    /// A frame of commands as a WebSocket message.
    pub fn message(&self, frame: String) -> Message {
        match self.protocol {
            Protocol::Centrifugo => Message::text(frame),
            Protocol::NatsWs => Message::binary(frame.into_bytes()),
        }
    }

    /// Connect and subscribe to `channel`, waiting for the answers; every
    /// event read meanwhile goes to `on_event` too.
    pub async fn handshake(
        &self,
        ws: &mut Ws,
        role: Role,
        token: &str,
        channel: &str,
        mut on_event: impl FnMut(&Event<'_>),
        mut on_frame: impl FnMut(),
    ) -> anyhow::Result<()> {
        let frame = match self.protocol {
            Protocol::Centrifugo => format!(
                "{}\n{}",
                json!({"id":1,"connect":{"token":token,"name":"bench"}}),
                json!({"id":2,"subscribe":{"channel":channel}})
            ),
            Protocol::NatsWs => {
                let verbose = role == Role::Publisher && !self.jetstream;
                let mut f = format!(
                    "CONNECT {}\r\nSUB {channel} {SID_CHANNEL}\r\n",
                    json!({"verbose":verbose,"pedantic":false,"protocol":1,"name":"bench"})
                );
                if role == Role::Publisher && self.jetstream {
                    f.push_str(&format!("SUB {INBOX}.* {SID_INBOX}\r\n"));
                }
                f.push_str("PING\r\n");
                f
            }
        };
        ws.send(self.message(frame)).await?;
        let mut reader = self.reader();
        let (mut replies, mut done) = (0, false);
        while !done {
            let msg = match ws.next().await {
                Some(Ok(Message::Close(f))) => bail!("closed: {f:?}"),
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(e.into()),
                None => bail!("closed during handshake"),
            };
            if msg.is_text() || msg.is_binary() {
                on_frame();
            }
            let mut refused = None;
            reader.feed(&msg, |e| {
                match &e {
                    Event::Reply(Err(why)) => refused = Some(why.clone()),
                    Event::Reply(Ok(())) => replies += 1,
                    Event::Pong => done = true,
                    _ => {}
                }
                on_event(&e);
            })?;
            if let Some(why) = refused {
                bail!("server refused: {why}");
            }
            if self.protocol == Protocol::Centrifugo && replies >= 2 {
                done = true;
            }
        }
        Ok(())
    }
}

/// Create a JetStream stream for `subject` (file storage, 1 replica, the
/// last 100 messages): what `groupcast dev --nats` keeps for a history
/// channel of the dev profile. One that exists already is kept.
pub async fn create_stream(server: std::net::SocketAddr, subject: &str) -> anyhow::Result<()> {
    let wire = Wire {
        protocol: Protocol::NatsWs,
        jetstream: true,
    };
    let name: String = subject
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let mut ws = crate::open_at(server, wire.path(), 0, 1).await?;
    let setup = format!(
        "CONNECT {}\r\nSUB {INBOX}.* {SID_INBOX}\r\n",
        json!({"verbose":false,"pedantic":false,"protocol":1})
    );
    let config = json!({"name": name, "subjects": [subject], "storage": "file",
        "num_replicas": 1, "max_msgs_per_subject": 100})
    .to_string();
    let create = format!(
        "PUB $JS.API.STREAM.CREATE.{name} {INBOX}.0 {}\r\n{config}\r\n",
        config.len()
    );
    ws.send(wire.message(setup + &create)).await?;
    let mut reader = wire.reader();
    loop {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .context("no JetStream reply in 10 s (is JetStream on?)")?
            .context("closed")??;
        let mut answer = None;
        reader.feed(&msg, |e| {
            if let Event::Reply(r) = e {
                answer = Some(r);
            }
        })?;
        match answer {
            None => continue,
            Some(Ok(())) => break,
            // 10058: a stream of that name with another configuration.
            Some(Err(why)) if why.contains("10058") => break,
            Some(Err(why)) => bail!("JetStream stream {name}: {why}"),
        }
    }
    let _ = ws.close(None).await;
    Ok(())
}

/// Reads one connection's WebSocket messages as [`Event`]s.
pub struct Reader {
    protocol: Protocol,
    nats: NatsParser,
}

impl Reader {
    pub fn feed(&mut self, msg: &Message, mut on: impl FnMut(Event<'_>)) -> anyhow::Result<()> {
        match self.protocol {
            Protocol::Centrifugo => {
                let Message::Text(t) = msg else { return Ok(()) };
                for line in t.split('\n') {
                    if line == "{}" {
                        on(Event::Ping);
                    } else if line.starts_with("{\"id\":") {
                        on(Event::Reply(if line.contains("\"error\"") {
                            Err(line.to_string())
                        } else {
                            Ok(())
                        }));
                    } else if line.contains("\"pub\":") {
                        on(Event::Publication(line.as_bytes()));
                    } else if line.starts_with("{\"push\":") {
                        if line.contains("\"join\":") {
                            on(Event::Join);
                        } else if line.contains("\"leave\":") {
                            on(Event::Leave);
                        }
                    }
                }
                Ok(())
            }
            Protocol::NatsWs => {
                let bytes: &[u8] = match msg {
                    Message::Binary(b) => b,
                    Message::Text(t) => t.as_bytes(),
                    _ => return Ok(()),
                };
                self.nats.feed(bytes, |op| match op {
                    NatsOp::Msg { sid, payload } if sid == SID_INBOX => {
                        on(Event::Reply(if contains(payload, b"\"error\"") {
                            Err(String::from_utf8_lossy(payload).into_owned())
                        } else {
                            Ok(())
                        }))
                    }
                    NatsOp::Msg { payload, .. } => on(Event::Publication(payload)),
                    NatsOp::Ping => on(Event::Ping),
                    NatsOp::Pong => on(Event::Pong),
                    NatsOp::Ok => on(Event::Reply(Ok(()))),
                    NatsOp::Err(why) => on(Event::Reply(Err(why.to_string()))),
                    NatsOp::Info => {}
                })
            }
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// One operation a NATS server sends.
#[derive(Debug, PartialEq)]
pub enum NatsOp<'a> {
    Info,
    Msg { sid: &'a str, payload: &'a [u8] },
    Ping,
    Pong,
    Ok,
    Err(&'a str),
}

/// The NATS server-to-client protocol, fed with WebSocket payloads: a
/// payload may hold several operations, or end in the middle of one (the
/// rest comes in the next).
#[derive(Default)]
pub struct NatsParser {
    /// An unfinished operation from earlier payloads.
    pending: Vec<u8>,
}

impl NatsParser {
    pub fn feed(&mut self, bytes: &[u8], mut on: impl FnMut(NatsOp<'_>)) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            let used = parse(bytes, &mut on)?;
            self.pending.extend_from_slice(&bytes[used..]);
        } else {
            self.pending.extend_from_slice(bytes);
            let used = parse(&self.pending, &mut on)?;
            self.pending.drain(..used);
        }
        Ok(())
    }
}

/// Parse the complete operations at the start of `buf`; returns how many
/// bytes they took.
fn parse(buf: &[u8], on: &mut impl FnMut(NatsOp<'_>)) -> anyhow::Result<usize> {
    let mut pos = 0;
    while let Some(eol) = buf[pos..].windows(2).position(|w| w == b"\r\n") {
        let line = std::str::from_utf8(&buf[pos..pos + eol]).context("NATS: not UTF-8")?;
        let (verb, args) = line.split_once(' ').unwrap_or((line, ""));
        let op = if verb.eq_ignore_ascii_case("MSG") {
            // MSG <subject> <sid> [reply-to] <#bytes>
            let f: Vec<&str> = args.split_whitespace().collect();
            if !(3..=4).contains(&f.len()) {
                bail!("NATS: bad MSG line {line:?}");
            }
            let len: usize = f[f.len() - 1]
                .parse()
                .with_context(|| format!("NATS: bad MSG size in {line:?}"))?;
            let start = pos + eol + 2;
            if buf.len() < start + len + 2 {
                break; // the payload comes in a later frame
            }
            if &buf[start + len..start + len + 2] != b"\r\n" {
                bail!("NATS: MSG payload longer than {len} bytes in {line:?}");
            }
            on(NatsOp::Msg {
                sid: f[1],
                payload: &buf[start..start + len],
            });
            pos = start + len + 2;
            continue;
        } else if verb.eq_ignore_ascii_case("PING") {
            NatsOp::Ping
        } else if verb.eq_ignore_ascii_case("PONG") {
            NatsOp::Pong
        } else if verb.eq_ignore_ascii_case("+OK") {
            NatsOp::Ok
        } else if verb.eq_ignore_ascii_case("-ERR") {
            NatsOp::Err(args)
        } else if verb.eq_ignore_ascii_case("INFO") {
            NatsOp::Info
        } else {
            bail!("NATS: unexpected operation {line:?}");
        };
        on(op);
        pos += eol + 2;
    }
    Ok(pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(p: &mut NatsParser, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        p.feed(bytes, |op| {
            out.push(match op {
                NatsOp::Msg { sid, payload } => {
                    format!("MSG {sid} {}", String::from_utf8_lossy(payload))
                }
                other => format!("{other:?}"),
            })
        })
        .expect("parse");
        out
    }

    #[test]
    fn several_operations_in_one_frame() {
        let mut p = NatsParser::default();
        let got = ops(
            &mut p,
            b"INFO {\"server_id\":\"x\"}\r\n+OK\r\nPING\r\nMSG a.b 1 5\r\nhello\r\nMSG c 2 _INBOX.gcbench.7 2\r\n{}\r\nPONG\r\n-ERR 'Slow Consumer'\r\n",
        );
        assert_eq!(
            got,
            [
                "Info",
                "Ok",
                "Ping",
                "MSG 1 hello",
                "MSG 2 {}",
                "Pong",
                "Err(\"'Slow Consumer'\")"
            ]
        );
        assert!(p.pending.is_empty());
    }

    #[test]
    fn operations_split_over_frames_at_every_byte() {
        let all = b"MSG s 1 9\r\n{\"t\":1}\r\n\r\nPING\r\nMSG s 1 0\r\n\r\n";
        // The payload may itself hold CRLF: only its size ends it.
        let whole = ops(&mut NatsParser::default(), all);
        assert_eq!(whole, ["MSG 1 {\"t\":1}\r\n", "Ping", "MSG 1 "]);
        for cut in 1..all.len() {
            let mut p = NatsParser::default();
            let mut got = ops(&mut p, &all[..cut]);
            got.extend(ops(&mut p, &all[cut..]));
            assert_eq!(got, whole, "cut at {cut}");
            assert!(p.pending.is_empty());
        }
        // One byte at a time.
        let mut p = NatsParser::default();
        let got: Vec<String> = all.iter().flat_map(|b| ops(&mut p, &[*b])).collect();
        assert_eq!(got, whole);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(NatsParser::default().feed(b"MSG x\r\n", |_| {}).is_err());
        assert!(NatsParser::default()
            .feed(b"MSG x 1 many\r\n", |_| {})
            .is_err());
        assert!(NatsParser::default().feed(b"HELLO\r\n", |_| {}).is_err());
        // The size does not match the payload.
        assert!(NatsParser::default()
            .feed(b"MSG x 1 2\r\nabc\r\n", |_| {})
            .is_err());
    }

    #[test]
    fn publish_commands() {
        let mut f = String::new();
        let core = Wire {
            protocol: Protocol::NatsWs,
            jetstream: false,
        };
        core.push_publish(&mut f, 11, "bench", "{\"t\":5}");
        core.push_publish(&mut f, 12, "bench", "{}");
        assert_eq!(f, "PUB bench 7\r\n{\"t\":5}\r\nPUB bench 2\r\n{}\r\n");
        let mut f = String::new();
        let js = Wire {
            protocol: Protocol::NatsWs,
            jetstream: true,
        };
        js.push_publish(&mut f, 11, "hist", "{}");
        assert_eq!(f, "PUB hist _INBOX.gcbench.11 2\r\n{}\r\n");
        let mut f = String::new();
        let c = Wire {
            protocol: Protocol::Centrifugo,
            jetstream: false,
        };
        c.push_publish(&mut f, 11, "a", "{}");
        c.push_publish(&mut f, 12, "a", "{}");
        assert_eq!(
            f,
            "{\"id\":11,\"publish\":{\"channel\":\"a\",\"data\":{}}}\n{\"id\":12,\"publish\":{\"channel\":\"a\",\"data\":{}}}"
        );
    }

    #[test]
    fn reader_events() {
        let mut r = Wire {
            protocol: Protocol::NatsWs,
            jetstream: true,
        }
        .reader();
        let mut got = Vec::new();
        let msg = Message::binary(
            b"MSG _INBOX.gcbench.3 2 22\r\n{\"error\":{\"code\":503}}\r\nMSG hist 1 2\r\n{}\r\n"
                .to_vec(),
        );
        r.feed(&msg, |e| got.push(format!("{e:?}"))).expect("feed");
        assert_eq!(got.len(), 2);
        assert!(got[0].starts_with("Reply(Err("), "{}", got[0]);
        assert!(got[1].starts_with("Publication("), "{}", got[1]);
    }
}
