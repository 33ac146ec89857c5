//! The client protocol decoder: any frame decodes or fails, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(commands) = groupcast_proto::client::decode_commands(data) {
        for c in &commands {
            let _ = c.method();
        }
    }
});
