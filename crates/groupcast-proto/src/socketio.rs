//! Socket.IO on the wire: Engine.IO protocol v4 (the transport: handshake, heartbeat, long-polling
//! payloads, upgrade) and Socket.IO protocol v5 (namespaces, events, acknowledgements, binary
//! attachments), as `socket.io-client` 3.x/4.x and `python-socketio` 5.x speak them.
//!
//! Pure functions, no I/O: the edge's `socketio` module runs the sessions. Everything here is
//! checked against the published protocol descriptions (the packet examples in the tests are
//! theirs) and bounded: a malformed packet is an [`Error`], never a panic.

use base64::Engine as _;
use bytes::Bytes;
use serde_json::Value;

/// Why a packet or payload was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub &'static str);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Error {}

/// Engine.IO v4: the transport layer.
pub mod engineio {
    use super::*;

    /// The record separator between packets of a long-polling payload.
    pub const SEPARATOR: u8 = 0x1e;

    /// One Engine.IO packet.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Packet {
        /// `0{json}`: the handshake, sent by the server.
        Open(String),
        /// `1`: the session ends.
        Close,
        /// `2` (heartbeat from the server) or `2probe` (the client probing a WebSocket).
        Ping(bool),
        /// `3` (the client's heartbeat answer) or `3probe` (the server's probe answer).
        Pong(bool),
        /// `4...`: a message (a Socket.IO packet, or one of its binary attachments).
        Message(Message),
        /// `5`: the client switched to the WebSocket.
        Upgrade,
        /// `6`: nothing (ends a pending poll during an upgrade).
        Noop,
    }

    /// A message's content.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Message {
        Text(String),
        Binary(Bytes),
    }

    /// One text packet: a WebSocket text frame, or one record of a polling payload (without
    /// the `b` binary form, see [`decode_payload`]).
    pub fn decode_text(s: &str) -> Result<Packet, Error> {
        let mut chars = s.chars();
        let kind = chars.next().ok_or(Error("empty packet"))?;
        let rest = chars.as_str();
        Ok(match kind {
            '0' => Packet::Open(rest.to_string()),
            '1' if rest.is_empty() => Packet::Close,
            '2' => Packet::Ping(probe(rest)?),
            '3' => Packet::Pong(probe(rest)?),
            '4' => Packet::Message(Message::Text(rest.to_string())),
            '5' if rest.is_empty() => Packet::Upgrade,
            '6' if rest.is_empty() => Packet::Noop,
            _ => return Err(Error("unknown packet type")),
        })
    }

    fn probe(rest: &str) -> Result<bool, Error> {
        match rest {
            "" => Ok(false),
            "probe" => Ok(true),
            _ => Err(Error("unexpected ping or pong data")),
        }
    }

    /// A long-polling POST body: packets separated by `\x1e`; a binary message is `b` and its
    /// base64. At most `max_packets` packets.
    pub fn decode_payload(body: &[u8], max_packets: usize) -> Result<Vec<Packet>, Error> {
        let text = std::str::from_utf8(body).map_err(|_| Error("payload is not UTF-8"))?;
        if text.is_empty() {
            return Err(Error("empty payload"));
        }
        let mut out = Vec::new();
        for record in text.split(SEPARATOR as char) {
            if out.len() >= max_packets {
                return Err(Error("too many packets in one payload"));
            }
            if let Some(b64) = record.strip_prefix('b') {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|_| Error("bad base64 in a binary packet"))?;
                out.push(Packet::Message(Message::Binary(Bytes::from(bytes))));
            } else {
                out.push(decode_text(record)?);
            }
        }
        Ok(out)
    }

    /// One packet as text: a WebSocket text frame, or one record of a polling payload. A binary
    /// message in a polling payload is `b<base64>`; over a WebSocket it is a binary frame of
    /// its bytes instead ([`Message::Binary`] is not encoded here for a WebSocket).
    pub fn encode_text(p: &Packet, out: &mut String) {
        match p {
            Packet::Open(json) => {
                out.push('0');
                out.push_str(json);
            }
            Packet::Close => out.push('1'),
            Packet::Ping(probe) => {
                out.push('2');
                if *probe {
                    out.push_str("probe");
                }
            }
            Packet::Pong(probe) => {
                out.push('3');
                if *probe {
                    out.push_str("probe");
                }
            }
            Packet::Message(Message::Text(t)) => {
                out.push('4');
                out.push_str(t);
            }
            Packet::Message(Message::Binary(b)) => {
                out.push('b');
                base64::engine::general_purpose::STANDARD.encode_string(b, out);
            }
            Packet::Upgrade => out.push('5'),
            Packet::Noop => out.push('6'),
        }
    }

    /// The handshake's JSON (`0` packet body).
    pub fn open_json(
        sid: &str,
        upgrades: &[&str],
        ping_interval_ms: u64,
        ping_timeout_ms: u64,
        max_payload: usize,
    ) -> String {
        serde_json::json!({
            "sid": sid,
            "upgrades": upgrades,
            "pingInterval": ping_interval_ms,
            "pingTimeout": ping_timeout_ms,
            "maxPayload": max_payload,
        })
        .to_string()
    }

    /// Engine.IO's HTTP errors: status 400 (403 for `Forbidden`) with `{"code", "message"}`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum HttpError {
        TransportUnknown,
        UnknownSid,
        BadHandshakeMethod,
        BadRequest,
        Forbidden,
        UnsupportedProtocolVersion,
    }

    impl HttpError {
        pub fn code(self) -> u8 {
            self as u8
        }

        pub fn from_code(code: u8) -> Option<HttpError> {
            Some(match code {
                0 => HttpError::TransportUnknown,
                1 => HttpError::UnknownSid,
                2 => HttpError::BadHandshakeMethod,
                3 => HttpError::BadRequest,
                4 => HttpError::Forbidden,
                5 => HttpError::UnsupportedProtocolVersion,
                _ => return None,
            })
        }

        pub fn message(self) -> &'static str {
            match self {
                HttpError::TransportUnknown => "Transport unknown",
                HttpError::UnknownSid => "Session ID unknown",
                HttpError::BadHandshakeMethod => "Bad handshake method",
                HttpError::BadRequest => "Bad request",
                HttpError::Forbidden => "Forbidden",
                HttpError::UnsupportedProtocolVersion => "Unsupported protocol version",
            }
        }

        pub fn status(self) -> u16 {
            if self == HttpError::Forbidden {
                403
            } else {
                400
            }
        }

        pub fn body(self) -> String {
            serde_json::json!({"code": self.code(), "message": self.message()}).to_string()
        }
    }
}

/// Socket.IO v5: the packets inside Engine.IO messages.
pub mod packet {
    use super::*;

    /// A Socket.IO packet's type.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Kind {
        Connect = 0,
        Disconnect = 1,
        Event = 2,
        Ack = 3,
        ConnectError = 4,
        BinaryEvent = 5,
        BinaryAck = 6,
    }

    impl Kind {
        fn from_digit(c: u8) -> Option<Kind> {
            Some(match c {
                b'0' => Kind::Connect,
                b'1' => Kind::Disconnect,
                b'2' => Kind::Event,
                b'3' => Kind::Ack,
                b'4' => Kind::ConnectError,
                b'5' => Kind::BinaryEvent,
                b'6' => Kind::BinaryAck,
                _ => return None,
            })
        }

        pub fn is_binary(self) -> bool {
            matches!(self, Kind::BinaryEvent | Kind::BinaryAck)
        }
    }

    /// Longest namespace name accepted.
    pub const MAX_NAMESPACE: usize = 256;
    /// Most binary attachments of one packet.
    pub const MAX_ATTACHMENTS: usize = 64;
    /// Largest acknowledgement id (JavaScript's safe integers).
    pub const MAX_ACK_ID: u64 = (1 << 53) - 1;
    /// Event names a client may not emit (the Socket.IO API keeps them).
    pub const RESERVED_EVENTS: [&str; 6] = [
        "connect",
        "connect_error",
        "disconnect",
        "disconnecting",
        "newListener",
        "removeListener",
    ];

    /// A decoded packet. Binary packets still hold `{"_placeholder": true, "num": n}` in their
    /// data until [`fill_placeholders`] puts the attachments in.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Packet {
        pub kind: Kind,
        /// `/` or `/name`.
        pub nsp: String,
        pub id: Option<u64>,
        pub data: Option<Value>,
        pub attachments: usize,
    }

    /// Decodes a packet from a client. Its data must have the shape its type requires (an
    /// object for CONNECT, an array with a non-reserved event name first for EVENT...).
    pub fn decode(s: &str) -> Result<Packet, Error> {
        let b = s.as_bytes();
        let kind = b
            .first()
            .and_then(|c| Kind::from_digit(*c))
            .ok_or(Error("unknown packet type"))?;
        let mut i = 1;
        let mut attachments = 0;
        if kind.is_binary() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i == start || i >= b.len() || b[i] != b'-' || i - start > 3 {
                return Err(Error("bad attachment count"));
            }
            attachments = s[start..i]
                .parse()
                .map_err(|_| Error("bad attachment count"))?;
            if attachments > MAX_ATTACHMENTS {
                return Err(Error("too many attachments"));
            }
            i += 1;
        }
        let mut nsp = String::from("/");
        if b.get(i) == Some(&b'/') {
            let end = s[i..].find(',').map_or(b.len(), |e| i + e);
            if end - i > MAX_NAMESPACE {
                return Err(Error("namespace too long"));
            }
            nsp = s[i..end].to_string();
            i = (end + 1).min(b.len());
        }
        let mut id = None;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i > start {
            let n: u64 = s[start..i].parse().map_err(|_| Error("bad ack id"))?;
            if n > MAX_ACK_ID {
                return Err(Error("bad ack id"));
            }
            id = Some(n);
        }
        let data = if i < b.len() {
            Some(serde_json::from_str::<Value>(&s[i..]).map_err(|_| Error("data is not JSON"))?)
        } else {
            None
        };
        let p = Packet {
            kind,
            nsp,
            id,
            data,
            attachments,
        };
        if !valid(&p) {
            return Err(Error("data of the wrong shape for its packet type"));
        }
        Ok(p)
    }

    fn valid(p: &Packet) -> bool {
        match p.kind {
            Kind::Connect => p.id.is_none() && matches!(p.data, None | Some(Value::Object(_))),
            Kind::Disconnect => p.id.is_none() && p.data.is_none(),
            Kind::ConnectError => matches!(p.data, Some(Value::Object(_) | Value::String(_))),
            Kind::Event | Kind::BinaryEvent => match &p.data {
                Some(Value::Array(a)) => match a.first() {
                    Some(Value::String(name)) => !RESERVED_EVENTS.contains(&name.as_str()),
                    Some(Value::Number(_)) => true,
                    _ => false,
                },
                _ => false,
            },
            Kind::Ack | Kind::BinaryAck => {
                p.id.is_some() && matches!(p.data, Some(Value::Array(_)))
            }
        }
    }

    /// Replaces each `{"_placeholder": true, "num": n}` in `data` with `f(attachment n)`;
    /// every attachment must be used exactly once... or at least every placeholder must name
    /// one of them.
    pub fn fill_placeholders(
        data: &mut Value,
        attachments: &[Bytes],
        f: &impl Fn(&Bytes) -> Value,
    ) -> Result<(), Error> {
        fill(data, attachments, f, 0)
    }

    fn fill(
        v: &mut Value,
        att: &[Bytes],
        f: &impl Fn(&Bytes) -> Value,
        depth: usize,
    ) -> Result<(), Error> {
        if depth > 64 {
            return Err(Error("data nested too deeply"));
        }
        match v {
            Value::Object(o) if o.get("_placeholder") == Some(&Value::Bool(true)) => {
                let n = o
                    .get("num")
                    .and_then(Value::as_u64)
                    .filter(|n| (*n as usize) < att.len())
                    .ok_or(Error("placeholder without its attachment"))?;
                *v = f(&att[n as usize]);
                Ok(())
            }
            Value::Object(o) => o.values_mut().try_for_each(|x| fill(x, att, f, depth + 1)),
            Value::Array(a) => a.iter_mut().try_for_each(|x| fill(x, att, f, depth + 1)),
            _ => Ok(()),
        }
    }

    /// Takes each `{"$binary": "<base64>"}` out of `data` (the way Groupcast's API and backend
    /// events write bytes in JSON), leaving Socket.IO's placeholders; returns the attachments.
    pub fn extract_binary(data: &mut Value) -> Result<Vec<Bytes>, Error> {
        let mut out = Vec::new();
        extract(data, &mut out, 0)?;
        Ok(out)
    }

    fn extract(v: &mut Value, out: &mut Vec<Bytes>, depth: usize) -> Result<(), Error> {
        if depth > 64 {
            return Err(Error("data nested too deeply"));
        }
        match v {
            Value::Object(o) if o.len() == 1 && o.contains_key(BINARY_KEY) => {
                let b64 = o[BINARY_KEY]
                    .as_str()
                    .ok_or(Error("$binary is not a string"))?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|_| Error("bad base64 in $binary"))?;
                if out.len() >= MAX_ATTACHMENTS {
                    return Err(Error("too many attachments"));
                }
                *v = serde_json::json!({"_placeholder": true, "num": out.len()});
                out.push(Bytes::from(bytes));
                Ok(())
            }
            Value::Object(o) => o.values_mut().try_for_each(|x| extract(x, out, depth + 1)),
            Value::Array(a) => a.iter_mut().try_for_each(|x| extract(x, out, depth + 1)),
            _ => Ok(()),
        }
    }

    /// How bytes are written in Groupcast's JSON: `{"$binary": "<base64>"}`.
    pub const BINARY_KEY: &str = "$binary";

    /// `{"$binary": "<base64 of b>"}`.
    pub fn binary_json(b: &Bytes) -> Value {
        serde_json::json!({ BINARY_KEY: base64::engine::general_purpose::STANDARD.encode(b) })
    }

    /// Encodes a packet from the server: `<type>[<n>-][<nsp>,][<id>][<data>]`, with `data`
    /// already serialized JSON.
    pub fn encode(
        kind: Kind,
        nsp: &str,
        id: Option<u64>,
        attachments: usize,
        data: Option<&str>,
    ) -> String {
        let mut out = String::with_capacity(8 + nsp.len() + data.map_or(0, str::len));
        out.push((b'0' + kind as u8) as char);
        if kind.is_binary() {
            out.push_str(&attachments.to_string());
            out.push('-');
        }
        if nsp != "/" {
            out.push_str(nsp);
            out.push(',');
        }
        if let Some(id) = id {
            out.push_str(&id.to_string());
        }
        if let Some(d) = data {
            out.push_str(d);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::engineio::{self, Message, Packet as E};
    use super::packet::{self, Kind};
    use super::*;
    use serde_json::json;

    #[test]
    fn engineio_packets_from_the_protocol_description() {
        assert_eq!(engineio::decode_text("2").unwrap(), E::Ping(false));
        assert_eq!(engineio::decode_text("2probe").unwrap(), E::Ping(true));
        assert_eq!(engineio::decode_text("3").unwrap(), E::Pong(false));
        assert_eq!(engineio::decode_text("1").unwrap(), E::Close);
        assert_eq!(engineio::decode_text("5").unwrap(), E::Upgrade);
        assert_eq!(engineio::decode_text("6").unwrap(), E::Noop);
        assert_eq!(
            engineio::decode_text("4hello").unwrap(),
            E::Message(Message::Text("hello".into()))
        );
        for bad in ["", "7", "x", "2pong", "5x", "1x"] {
            assert!(engineio::decode_text(bad).is_err(), "{bad:?}");
        }
        let mut s = String::new();
        engineio::encode_text(&E::Pong(true), &mut s);
        assert_eq!(s, "3probe");
    }

    #[test]
    fn polling_payloads_split_on_the_record_separator_with_base64_binary() {
        let body = b"4hello\x1e4\xe2\x82\xac\x1ebAQIDBA==";
        let p = engineio::decode_payload(body, 16).unwrap();
        assert_eq!(
            p,
            vec![
                E::Message(Message::Text("hello".into())),
                E::Message(Message::Text("\u{20ac}".into())),
                E::Message(Message::Binary(Bytes::from_static(&[1, 2, 3, 4]))),
            ]
        );
        assert!(engineio::decode_payload(b"4a\x1e4b\x1e4c", 2).is_err());
        assert!(engineio::decode_payload(b"b!!", 16).is_err());
        assert!(engineio::decode_payload(b"", 16).is_err());
        assert!(engineio::decode_payload(b"4\xff", 16).is_err());
        let mut s = String::new();
        engineio::encode_text(
            &E::Message(Message::Binary(Bytes::from_static(&[1, 2, 3, 4]))),
            &mut s,
        );
        assert_eq!(s, "bAQIDBA==");
    }

    #[test]
    fn socketio_packets_from_the_protocol_description() {
        let p = packet::decode("0").unwrap();
        assert_eq!((p.kind, p.nsp.as_str(), p.data), (Kind::Connect, "/", None));
        let p = packet::decode("0/admin,{\"token\":\"123\"}").unwrap();
        assert_eq!(p.nsp, "/admin");
        assert_eq!(p.data, Some(json!({"token": "123"})));
        let p = packet::decode("2[\"hello\",1]").unwrap();
        assert_eq!((p.kind, p.id), (Kind::Event, None));
        assert_eq!(p.data, Some(json!(["hello", 1])));
        let p = packet::decode("2/admin,456[\"project:delete\",123]").unwrap();
        assert_eq!((p.nsp.as_str(), p.id), ("/admin", Some(456)));
        let p = packet::decode("3/admin,456[]").unwrap();
        assert_eq!(
            (p.kind, p.id, p.data),
            (Kind::Ack, Some(456), Some(json!([])))
        );
        let p = packet::decode("1/admin,").unwrap();
        assert_eq!((p.kind, p.nsp.as_str()), (Kind::Disconnect, "/admin"));
        let p = packet::decode("51-[\"hello\",{\"_placeholder\":true,\"num\":0}]").unwrap();
        assert_eq!((p.kind, p.attachments), (Kind::BinaryEvent, 1));
        let p = packet::decode("61-/admin,456[{\"_placeholder\":true,\"num\":0}]").unwrap();
        assert_eq!(
            (p.kind, p.attachments, p.id),
            (Kind::BinaryAck, 1, Some(456))
        );
    }

    #[test]
    fn socketio_refuses_packets_of_the_wrong_shape() {
        for bad in [
            "",
            "9",
            "2",                            // an event without data
            "2{}",                          // not an array
            "2[]",                          // no event name
            "2[\"connect\"]",               // a reserved name
            "2[true]",                      // a name that is not a string or number
            "0[]",                          // CONNECT data that is not an object
            "1{}",                          // DISCONNECT with data
            "3[]",                          // ACK without id
            "3/admin,1{}",                  // ACK data not an array
            "5[\"a\"]",                     // binary without count
            "5999-[\"a\"]",                 // too many attachments
            "2[\"a\"",                      // bad JSON
            "299999999999999999999[\"a\"]", // id overflow
        ] {
            assert!(packet::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn encoding_matches_the_description() {
        assert_eq!(
            packet::encode(Kind::Connect, "/", None, 0, Some("{\"sid\":\"x\"}")),
            "0{\"sid\":\"x\"}"
        );
        assert_eq!(
            packet::encode(Kind::Event, "/admin", Some(12), 0, Some("[\"a\"]")),
            "2/admin,12[\"a\"]"
        );
        assert_eq!(
            packet::encode(Kind::BinaryAck, "/", Some(3), 2, Some("[]")),
            "62-3[]"
        );
        assert_eq!(
            packet::encode(Kind::Disconnect, "/admin", None, 0, None),
            "1/admin,"
        );
    }

    #[test]
    fn binary_goes_through_placeholders_both_ways() {
        let mut data =
            json!(["upload", {"name": "a", "file": {"$binary": "AQID"}}, {"$binary": "BA=="}]);
        let att = packet::extract_binary(&mut data).unwrap();
        assert_eq!(
            att,
            vec![Bytes::from_static(&[1, 2, 3]), Bytes::from_static(&[4])]
        );
        assert_eq!(
            data,
            json!(["upload", {"name": "a", "file": {"_placeholder": true, "num": 0}}, {"_placeholder": true, "num": 1}])
        );
        packet::fill_placeholders(&mut data, &att, &packet::binary_json).unwrap();
        assert_eq!(
            data,
            json!(["upload", {"name": "a", "file": {"$binary": "AQID"}}, {"$binary": "BA=="}])
        );
        let mut missing = json!([{"_placeholder": true, "num": 3}]);
        assert!(packet::fill_placeholders(&mut missing, &att, &packet::binary_json).is_err());
    }

    /// Found by the `socketio_packets` fuzzer: a number that is not a double as written must
    /// come back the same after a decode and an encode (serde_json's `float_roundtrip`).
    #[test]
    fn numbers_survive_a_round_trip() {
        let text = format!("2[{}]", "9".repeat(89));
        let p = packet::decode(&text).unwrap();
        let data = p.data.as_ref().unwrap().to_string();
        let again = packet::decode(&packet::encode(p.kind, &p.nsp, p.id, 0, Some(&data))).unwrap();
        assert_eq!(again, p);
    }

    #[test]
    fn http_errors_are_engineio_s() {
        use engineio::HttpError;
        assert_eq!(
            HttpError::UnknownSid.body(),
            r#"{"code":1,"message":"Session ID unknown"}"#
        );
        assert_eq!(HttpError::UnsupportedProtocolVersion.code(), 5);
        assert_eq!(HttpError::Forbidden.status(), 403);
    }
}
