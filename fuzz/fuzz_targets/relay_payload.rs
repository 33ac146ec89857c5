//! The raw relay path: a frame is relayed verbatim to relay clients, and
//! reaches protocol clients as valid JSON (publication data and the encoded
//! push), and Socket.IO sockets as a valid event's arguments, whatever its
//! bytes.
#![no_main]

use std::sync::Arc;

use groupcast_core::hub::{Hub, PreparedPush, Subscriber, SubscriberKind};
use groupcast_core::{BrokerHandler, Payload, Publication};
use libfuzzer_sys::fuzz_target;

/// Strict JSON check (serde_json refuses numbers that overflow a double).
/// Its 128-level nesting limit is not a defect of the data: tolerated.
fn assert_json(bytes: &[u8], what: &str) {
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(bytes) {
        assert!(
            e.to_string().contains("recursion limit exceeded"),
            "{what} is not JSON: {e}"
        );
    }
}

struct Check {
    kind: SubscriberKind,
    expect: Vec<u8>,
}

impl Subscriber for Check {
    fn id(&self) -> u64 {
        match self.kind {
            SubscriberKind::Protocol => 1,
            SubscriberKind::Relay => 2,
            SubscriberKind::SocketIo => 3,
        }
    }
    fn kind(&self) -> SubscriberKind {
        self.kind
    }
    fn insufficient_state(&self, _channel: &str) {}
    fn push(&self, push: &PreparedPush) {
        match self.kind {
            SubscriberKind::Protocol => {
                let v: serde_json::Value =
                    serde_json::from_slice(push.json()).expect("push is JSON");
                assert!(v["push"]["pub"].get("data").is_some());
            }
            SubscriberKind::Relay => {
                let (bytes, _) = push.relay().expect("a publication has a relay frame");
                assert_eq!(&bytes[..], &self.expect[..], "relayed verbatim");
            }
            SubscriberKind::SocketIo => {
                let p = push.socketio().expect("a publication is an event");
                let args = std::str::from_utf8(&p.args).expect("arguments are UTF-8");
                let comma = if args.is_empty() { "" } else { "," };
                let event = format!("[\"message\"{comma}{args}]");
                assert_json(event.as_bytes(), "the Socket.IO event");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let payload = match std::str::from_utf8(data) {
        Ok(text) => Payload::from_text(text),
        Err(_) => Payload::Binary(bytes::Bytes::copy_from_slice(data)),
    };
    assert_json(payload.to_json().get().as_bytes(), "the data");
    let hub = Hub::default();
    hub.add(
        "c",
        Arc::new(Check {
            kind: SubscriberKind::Protocol,
            expect: Vec::new(),
        }),
        false,
    );
    hub.add(
        "c",
        Arc::new(Check {
            kind: SubscriberKind::Relay,
            expect: data.to_vec(),
        }),
        false,
    );
    hub.add(
        "c",
        Arc::new(Check {
            kind: SubscriberKind::SocketIo,
            expect: Vec::new(),
        }),
        false,
    );
    hub.on_publication("c", Arc::new(Publication::new(payload)));
});
