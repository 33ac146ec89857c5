//! The command dispatcher under arbitrary input (the quick, in-suite
//! version of the `dispatch` fuzz target in `fuzz/`): no panic, every queued
//! message is JSON, replies answer commands that were sent, and a session's
//! end leaves no subscription, channel or presence entry behind.

use std::collections::HashSet;
use std::sync::Arc;

use groupcast_core::broker::memory::MemoryBroker;
use groupcast_core::membership::memory::MemoryMembership;
use groupcast_core::Node;
use groupcast_edge::auth::{mint_hs256, now_unix};
use groupcast_edge::session::replay;
use groupcast_edge::state::EdgeState;
use groupcast_testkit::{TestServer, SECRET};
use proptest::prelude::*;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const CHANNELS: &[&str] = &["a", "b", "$p", "dm#u1,u2", "nope:x", "", "c\u{1}d"];

fn token_for(kind: u8) -> String {
    match kind % 4 {
        0 => mint_hs256(SECRET, &json!({"sub":"u1","exp": now_unix() + 60})),
        1 => mint_hs256(SECRET, &json!({"sub":"u2","exp": now_unix() - 60})),
        2 => "x.y.z".into(),
        _ => String::new(),
    }
}

fn line() -> impl Strategy<Value = String> {
    let channel = prop::sample::select(CHANNELS);
    let id = 0u32..40;
    prop_oneof![
        (id.clone(), any::<u8>())
            .prop_map(|(id, t)| json!({"id":id,"connect":{"token":token_for(t)}}).to_string()),
        (id.clone(), channel.clone(), any::<bool>(), 0u64..5).prop_map(|(id, ch, rec, off)| {
            json!({"id":id,"subscribe":{"channel":ch,"recover":rec,"offset":off,"epoch":"e"}})
                .to_string()
        }),
        (id.clone(), channel.clone())
            .prop_map(|(id, ch)| json!({"id":id,"unsubscribe":{"channel":ch}}).to_string()),
        (id.clone(), channel.clone()).prop_map(|(id, ch)| {
            json!({"id":id,"publish":{"channel":ch,"data":{"k":id}}}).to_string()
        }),
        (id.clone(), channel.clone())
            .prop_map(|(id, ch)| json!({"id":id,"presence":{"channel":ch}}).to_string()),
        (id.clone(), channel.clone(), -2i32..5).prop_map(|(id, ch, l)| {
            json!({"id":id,"history":{"channel":ch,"limit":l}}).to_string()
        }),
        (id.clone(), any::<u8>())
            .prop_map(|(id, t)| json!({"id":id,"refresh":{"token":token_for(t)}}).to_string()),
        (id.clone(), channel).prop_map(|(id, ch)| {
            json!({"id":id,"sub_refresh":{"channel":ch,"token":"t"}}).to_string()
        }),
        id.clone()
            .prop_map(|id| json!({"id":id,"ping":{}}).to_string()),
        id.prop_map(|id| json!({"id":id,"rpc":{"method":"m"}}).to_string()),
        Just("{}".to_string()),
        // Junk: arbitrary text, and JSON of the wrong shape.
        ".{0,40}",
        any::<i64>().prop_map(|n| format!(r#"{{"id":{n},"ping":{{}}}}"#)),
    ]
}

fn frames() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        prop::collection::vec(line(), 1..4).prop_map(|l| l.join("\n")),
        1..12,
    )
}

fn sent_ids(frames: &[String]) -> HashSet<u64> {
    frames
        .iter()
        .flat_map(|f| f.split('\n'))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["id"].as_u64())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn dispatcher_never_panics_and_leaves_nothing_behind(connect_first in any::<bool>(), frames in frames()) {
        let mut frames = frames;
        if connect_first {
            frames.insert(0, json!({"id":1,"connect":{"token":token_for(0)}}).to_string());
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let node = Node::new(Arc::new(MemoryBroker::default()), Arc::new(MemoryMembership::default()));
        let state = EdgeState::new(TestServer::dev_config(), node.clone(), CancellationToken::new()).unwrap();
        let bytes: Vec<&[u8]> = frames.iter().map(|f| f.as_bytes()).collect();
        let out = rt.block_on(replay(state, &bytes));
        let ids = sent_ids(&frames);
        for m in &out.messages {
            let v: Value = serde_json::from_slice(m)
                .map_err(|e| TestCaseError::fail(format!("queued message is not JSON ({e}): {m:?}")))?;
            prop_assert!(v.is_object());
            if let Some(id) = v.get("id").and_then(Value::as_u64) {
                prop_assert!(ids.contains(&id), "reply to an id never sent: {v}");
            }
        }
        if let Some(code) = out.closed {
            prop_assert!(code == 1009 || (3000..4000).contains(&code), "close code {code}");
        }
        if connect_first {
            prop_assert!(out.messages.first().is_some_and(|m| m.starts_with(br#"{"id":1,"connect""#)), "connected");
        }
        prop_assert_eq!(node.num_local_channels(), 0, "subscriptions outlived the session");
        for ch in CHANNELS {
            let stats = rt.block_on(node.presence_stats(ch)).unwrap();
            prop_assert_eq!(stats.num_clients, 0, "presence outlived the session in {}", ch);
        }
    }
}
