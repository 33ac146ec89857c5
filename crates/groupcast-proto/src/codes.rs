//! Error and disconnect codes of the Centrifugo client protocol, in one table.
//!
//! Every client-facing error in Groupcast is one of these values; code that
//! needs to tell a client "no" picks a constant from here rather than writing
//! a number. `docs/protocol.md` lists the same tables for users.

use serde::Serialize;

/// A protocol error: the `error` object of a reply (`{"code":..,"message":..}`).
///
/// Codes below 1000 are the protocol's; the connection stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ErrorCode {
    /// Numeric code from the protocol's table.
    pub code: u32,
    /// Human-readable message, fixed per code.
    pub message: &'static str,
    /// Whether retrying the same command later may succeed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub temporary: bool,
}

const fn err(code: u32, message: &'static str, temporary: bool) -> ErrorCode {
    ErrorCode {
        code,
        message,
        temporary,
    }
}

impl ErrorCode {
    pub const INTERNAL: ErrorCode = err(100, "internal server error", true);
    pub const UNAUTHORIZED: ErrorCode = err(101, "unauthorized", false);
    pub const UNKNOWN_CHANNEL: ErrorCode = err(102, "unknown channel", false);
    pub const PERMISSION_DENIED: ErrorCode = err(103, "permission denied", false);
    pub const METHOD_NOT_FOUND: ErrorCode = err(104, "method not found", false);
    pub const ALREADY_SUBSCRIBED: ErrorCode = err(105, "already subscribed", false);
    pub const LIMIT_EXCEEDED: ErrorCode = err(106, "limit exceeded", false);
    pub const BAD_REQUEST: ErrorCode = err(107, "bad request", false);
    pub const NOT_AVAILABLE: ErrorCode = err(108, "not available", false);
    pub const TOKEN_EXPIRED: ErrorCode = err(109, "token expired", false);
    pub const EXPIRED: ErrorCode = err(110, "expired", false);
    pub const TOO_MANY_REQUESTS: ErrorCode = err(111, "too many requests", true);
    pub const UNRECOVERABLE_POSITION: ErrorCode = err(112, "unrecoverable position", false);

    /// Every error code, for documentation and tests.
    pub const ALL: [ErrorCode; 13] = [
        Self::INTERNAL,
        Self::UNAUTHORIZED,
        Self::UNKNOWN_CHANNEL,
        Self::PERMISSION_DENIED,
        Self::METHOD_NOT_FOUND,
        Self::ALREADY_SUBSCRIBED,
        Self::LIMIT_EXCEEDED,
        Self::BAD_REQUEST,
        Self::NOT_AVAILABLE,
        Self::TOKEN_EXPIRED,
        Self::EXPIRED,
        Self::TOO_MANY_REQUESTS,
        Self::UNRECOVERABLE_POSITION,
    ];
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

/// Why the server closes a connection: sent as the WebSocket close frame's
/// code and reason (over WebSocket the protocol uses no `disconnect` push).
///
/// Codes 3000..3499 tell the client to reconnect; 3500..3999 are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisconnectCode {
    pub code: u16,
    pub reason: &'static str,
}

const fn dis(code: u16, reason: &'static str) -> DisconnectCode {
    DisconnectCode { code, reason }
}

impl DisconnectCode {
    pub const CONNECTION_CLOSED: DisconnectCode = dis(3000, "connection closed");
    pub const SHUTDOWN: DisconnectCode = dis(3001, "shutdown");
    pub const SERVER_ERROR: DisconnectCode = dis(3004, "internal server error");
    pub const EXPIRED: DisconnectCode = dis(3005, "connection expired");
    pub const SUB_EXPIRED: DisconnectCode = dis(3006, "subscription expired");
    pub const SLOW: DisconnectCode = dis(3008, "slow");
    pub const WRITE_ERROR: DisconnectCode = dis(3009, "write error");
    pub const INSUFFICIENT_STATE: DisconnectCode = dis(3010, "insufficient state");
    pub const FORCE_RECONNECT: DisconnectCode = dis(3011, "force reconnect");
    pub const NO_PONG: DisconnectCode = dis(3012, "no pong");
    pub const TOO_MANY_REQUESTS: DisconnectCode = dis(3013, "too many requests");
    pub const STATE_INVALIDATED: DisconnectCode = dis(3014, "state invalidated");
    /// Groupcast's own: the backend target a relay connection is bound to
    /// is gone (declared by the API, or nothing listens on its NATS
    /// subject). The client may reconnect and be given another.
    pub const TARGET_GONE: DisconnectCode = dis(3015, "backend target gone");
    /// Groupcast's own: the edge lost its backbone (NATS) for longer than
    /// `nats.fence_after` and no longer receives publications. The client
    /// reconnects (to another edge) and recovers from history.
    pub const BACKBONE_UNAVAILABLE: DisconnectCode = dis(3016, "backbone unavailable");
    /// Groupcast's own: the membership service expired this edge's lease
    /// (the edge is cut off from it), so the client's presence entries are
    /// gone. The client reconnects (to another edge) and enters presence
    /// again.
    pub const LEASE_LOST: DisconnectCode = dis(3017, "membership lease lost");
    pub const INVALID_TOKEN: DisconnectCode = dis(3500, "invalid token");
    pub const BAD_REQUEST: DisconnectCode = dis(3501, "bad request");
    pub const STALE: DisconnectCode = dis(3502, "stale");
    pub const FORCE_NO_RECONNECT: DisconnectCode = dis(3503, "force disconnect");
    pub const CONNECTION_LIMIT: DisconnectCode = dis(3504, "connection limit");
    pub const CHANNEL_LIMIT: DisconnectCode = dis(3505, "channel limit");
    pub const INAPPROPRIATE_PROTOCOL: DisconnectCode = dis(3506, "inappropriate protocol");
    pub const PERMISSION_DENIED: DisconnectCode = dis(3507, "permission denied");
    pub const NOT_AVAILABLE: DisconnectCode = dis(3508, "not available");
    pub const TOO_MANY_ERRORS: DisconnectCode = dis(3509, "too many errors");
    /// WebSocket's standard "message too big": a frame over the size limit.
    /// Not in the 3xxx table; clients treat it as terminal.
    pub const MESSAGE_TOO_BIG: DisconnectCode = dis(1009, "message too big");

    /// Every disconnect code, for documentation and tests.
    pub const ALL: [DisconnectCode; 25] = [
        Self::CONNECTION_CLOSED,
        Self::SHUTDOWN,
        Self::SERVER_ERROR,
        Self::EXPIRED,
        Self::SUB_EXPIRED,
        Self::SLOW,
        Self::WRITE_ERROR,
        Self::INSUFFICIENT_STATE,
        Self::FORCE_RECONNECT,
        Self::NO_PONG,
        Self::TOO_MANY_REQUESTS,
        Self::STATE_INVALIDATED,
        Self::TARGET_GONE,
        Self::BACKBONE_UNAVAILABLE,
        Self::LEASE_LOST,
        Self::INVALID_TOKEN,
        Self::BAD_REQUEST,
        Self::STALE,
        Self::FORCE_NO_RECONNECT,
        Self::CONNECTION_LIMIT,
        Self::CHANNEL_LIMIT,
        Self::INAPPROPRIATE_PROTOCOL,
        Self::PERMISSION_DENIED,
        Self::NOT_AVAILABLE,
        Self::TOO_MANY_ERRORS,
    ];

    /// Whether a client should reconnect after this disconnect.
    pub fn reconnect(&self) -> bool {
        (3000..3500).contains(&self.code) || (4000..4500).contains(&self.code)
    }

    /// Look a code up in the table (for the server API's `disconnect`).
    pub fn from_code(code: u16) -> Option<DisconnectCode> {
        Self::ALL.iter().copied().find(|d| d.code == code)
    }
}

/// Unsubscribe push codes (2000..2999: the client resubscribes when >= 2500).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsubscribeCode {
    pub code: u32,
    pub reason: &'static str,
}

impl UnsubscribeCode {
    /// Unsubscribed by the server (API call): terminal for the subscription.
    pub const SERVER: UnsubscribeCode = UnsubscribeCode {
        code: 2000,
        reason: "server unsubscribe",
    };
    /// Subscription state lost; the client should resubscribe (and recover).
    pub const INSUFFICIENT: UnsubscribeCode = UnsubscribeCode {
        code: 2500,
        reason: "insufficient state",
    };
    /// The subscription token expired without `sub_refresh`; the client
    /// resubscribes with a new token.
    pub const EXPIRED: UnsubscribeCode = UnsubscribeCode {
        code: 2501,
        reason: "subscription expired",
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_partitioned() {
        let mut seen = std::collections::HashSet::new();
        for e in ErrorCode::ALL {
            assert!(seen.insert(e.code), "duplicate error code {}", e.code);
            assert!(e.code < 1000);
        }
        let mut seen = std::collections::HashSet::new();
        for d in DisconnectCode::ALL {
            assert!(seen.insert(d.code), "duplicate disconnect code {}", d.code);
            assert!((3000..4000).contains(&d.code));
            assert_eq!(d.reconnect(), d.code < 3500);
            assert!(d.reason.len() < 123, "close reason must fit a close frame");
            assert_eq!(DisconnectCode::from_code(d.code), Some(d));
        }
        assert_eq!(DisconnectCode::from_code(4242), None);
    }

    #[test]
    fn error_serializes_like_the_protocol() {
        let v = serde_json::to_value(ErrorCode::TOO_MANY_REQUESTS).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"code":111,"message":"too many requests","temporary":true})
        );
        let v = serde_json::to_value(ErrorCode::BAD_REQUEST).unwrap();
        assert_eq!(v, serde_json::json!({"code":107,"message":"bad request"}));
    }
}
