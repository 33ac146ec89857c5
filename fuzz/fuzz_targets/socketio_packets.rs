//! The Socket.IO parser (groupcast-proto `socketio`): any polling body or WebSocket frame is
//! either refused with an error or decoded, never a panic; what decodes encodes back to the
//! same packet; placeholders and `$binary` values go both ways without loss.
#![no_main]

use bytes::Bytes;
use groupcast_proto::socketio::engineio::{self, Message, Packet};
use groupcast_proto::socketio::packet;
use libfuzzer_sys::fuzz_target;

fn check_socketio(text: &str) {
    let Ok(p) = packet::decode(text) else {
        return;
    };
    let data = p.data.as_ref().map(|d| d.to_string());
    let again = packet::encode(p.kind, &p.nsp, p.id, p.attachments, data.as_deref());
    let back = packet::decode(&again).expect("an encoded packet decodes");
    assert_eq!(back, p, "{text:?} -> {again:?}");
    if let Some(mut d) = p.data.clone() {
        let atts: Vec<Bytes> = (0..p.attachments)
            .map(|i| Bytes::from(vec![i as u8; i]))
            .collect();
        if packet::fill_placeholders(&mut d, &atts, &packet::binary_json).is_ok() {
            let mut round = d.clone();
            if let Ok(out) = packet::extract_binary(&mut round) {
                packet::fill_placeholders(&mut round, &out, &packet::binary_json)
                    .expect("extracted attachments fill their placeholders");
                assert_eq!(round, d);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(packets) = engineio::decode_payload(data, 10_000) {
        for p in packets {
            if let Packet::Message(Message::Text(t)) = &p {
                check_socketio(t);
            }
            let mut s = String::new();
            engineio::encode_text(&p, &mut s);
            let again = engineio::decode_payload(s.as_bytes(), 1).expect("an encoded packet decodes");
            assert_eq!(again, vec![p]);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = engineio::decode_text(text);
        check_socketio(text);
    }
});
