//! The command dispatcher: frames (split on NUL bytes) run through a real
//! session (`groupcast_edge::session::replay`) on a shared in-memory node.
//! An even first byte prepends a valid `connect`. Every queued message must
//! be JSON, and the session's end must leave no subscription behind.
#![no_main]

use std::sync::{Arc, OnceLock};

use groupcast_core::broker::memory::MemoryBroker;
use groupcast_core::membership::memory::MemoryMembership;
use groupcast_core::Node;
use groupcast_edge::auth::{mint_hs256, now_unix};
use groupcast_edge::state::EdgeState;
use groupcast_edge::Config;
use libfuzzer_sys::fuzz_target;
use tokio_util::sync::CancellationToken;

struct World {
    rt: tokio::runtime::Runtime,
    state: Arc<EdgeState>,
    node: Arc<Node>,
    connect: String,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let mut config = Config::dev();
        config.client.token_hmac_secret = "fuzz".into();
        config.client.command_rate = 0.0;
        let node = Node::new(
            Arc::new(MemoryBroker::default()),
            Arc::new(MemoryMembership::default()),
        );
        let state =
            EdgeState::new(config, node.clone(), CancellationToken::new()).expect("valid config");
        let token = mint_hs256(
            "fuzz",
            &serde_json::json!({"sub":"f","exp": now_unix() + 86_400}),
        );
        World {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            state,
            node,
            connect: format!(r#"{{"id":1,"connect":{{"token":"{token}"}}}}"#),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let mut frames: Vec<&[u8]> = Vec::new();
    if data.first().is_some_and(|b| b % 2 == 0) {
        frames.push(w.connect.as_bytes());
    }
    frames.extend(
        data.get(1..)
            .unwrap_or_default()
            .split(|b| *b == 0)
            .take(64),
    );
    let out =
        w.rt.block_on(groupcast_edge::session::replay(w.state.clone(), &frames));
    for m in &out.messages {
        // Strict check (numbers must fit a double); serde_json's 128-level
        // nesting limit is not a defect of the message and is tolerated.
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(m) {
            assert!(
                e.to_string().contains("recursion limit exceeded"),
                "queued message is not JSON: {e}"
            );
        }
    }
    assert_eq!(
        w.node.num_local_channels(),
        0,
        "subscriptions outlived the session"
    );
});
