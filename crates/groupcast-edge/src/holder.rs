//! Ids that name the edge holding what they identify, so that a request a load balancer sends
//! to any edge can be forwarded to the holder over the node bus (`Node::bus`), with no sticky
//! sessions: `<random>.<the holder's node name in base64url>`. Without a node bus (one edge)
//! an id is just the random part.
//!
//! Used for the emulation sessions of the Centrifugo HTTP transports (`session::stream`)
//! and for Socket.IO's sids (`socketio::forward`).

use base64::Engine as _;

/// A new id for something held by node `me` (`None`: no node bus). The random part is a
/// UUID v4 (122 random bits): the id is also what lets a request act on what it names.
pub fn new_id(me: Option<&str>) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    match me {
        Some(n) => format!(
            "{random}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(n)
        ),
        None => random,
    }
}

/// The node named by `id`, when it names one.
pub fn node_of(id: &str) -> Option<String> {
    let (_, node) = id.split_once('.')?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(node)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// The node-bus address of `service` on `node` (one subject per service, so each module
/// answers its own requests).
pub fn bus_address(node: &str, service: &str) -> String {
    format!("{node}.{service}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_names_its_edge() {
        let id = new_id(Some("edge-2"));
        assert_eq!(node_of(&id).as_deref(), Some("edge-2"));
        assert_ne!(new_id(Some("edge-2")), id, "random");
        let alone = new_id(None);
        assert_eq!(alone.len(), 32);
        assert_eq!(node_of(&alone), None);
        assert_eq!(node_of("abc.!!"), None);
        assert_eq!(bus_address("edge-2", "emulation"), "edge-2.emulation");
    }
}
