//! Plain WebSocket sessions: `new WebSocket(url)` and nothing else.
//!
//! * [`raw`]: the raw relay (`/ws/relay/{channel}`): every frame goes to
//!   the channel's other connections, cluster-wide.
//! * [`route`]: relay to a backend (`[[relay.routes]]`): frames go to the
//!   application's backend processes, which answer by client id.

pub mod raw;
pub mod route;
