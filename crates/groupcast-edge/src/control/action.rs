//! API actions on connections (`subscribe`, `unsubscribe`, `disconnect`,
//! `refresh` and the `relay_*` commands): checked alike on every edge,
//! carried out on this edge's matching connections ([`ConnAction`]), and
//! forwarded to the other edges that hold the user or client
//! ([`super::forward::fan_out`]).

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use groupcast_core::hub::SubscriberKind;
use groupcast_proto::api::{self, ApiError};
use groupcast_proto::{DisconnectCode, ErrorCode};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::conn::{Control, MAX_CLOSE_REASON};
use crate::metrics::Metrics;
use crate::state::EdgeState;

/// An API action on connections, by user and/or client id: carried out on
/// this node's connections, and (see [`super::forward::fan_out`]) on the
/// other nodes holding that user or client.
pub(crate) enum ConnAction {
    Subscribe(api::SubscribeRequest),
    Unsubscribe(api::UnsubscribeRequest),
    Disconnect(api::DisconnectRequest, u16, String),
    Refresh(api::RefreshRequest),
    /// A frame to a relay connection: bytes, binary.
    RelaySend(String, Bytes, bool),
    RelayClose(String, u16, String),
    RelayTransfer(String, String, Option<Arc<RawValue>>),
    /// Every edge's connections bound to this target.
    RelayTargetGone(String),
    /// Socket.IO: client, namespace, event, args, ack id.
    SioEmit(String, String, String, Vec<Value>, Option<u64>),
    /// Socket.IO: client, namespace, ack id, args.
    SioAck(String, String, u64, Vec<Value>),
    /// Socket.IO: client, the room's channel, join (or leave).
    SioRoom(String, String, bool),
    /// Socket.IO: client, namespace.
    SioDisconnect(String, String),
}

/// The user and client id an action is for; both empty: every connection
/// (only `relay_target_gone`, which picks its connections by target).
pub(crate) struct Target<'a> {
    pub user: &'a str,
    pub client: &'a str,
}

impl ConnAction {
    /// Checks the request as the API does (same errors on every node).
    pub(crate) fn parse(state: &EdgeState, method: &str, body: Value) -> Result<Self, ApiFailure> {
        let action = match method {
            "subscribe" => {
                let r: api::SubscribeRequest = parse(body)?;
                state.channel(&r.channel).map_err(channel_error)?;
                ConnAction::Subscribe(r)
            }
            "unsubscribe" => {
                let r: api::UnsubscribeRequest = parse(body)?;
                state.channel(&r.channel).map_err(channel_error)?;
                ConnAction::Unsubscribe(r)
            }
            "disconnect" => {
                let r: api::DisconnectRequest = parse(body)?;
                let (code, reason) = disconnect_code(r.disconnect.as_ref())?;
                ConnAction::Disconnect(r, code, reason)
            }
            "refresh" => ConnAction::Refresh(parse(body)?),
            "relay_send" => {
                let r: api::RelaySendRequest = parse(body)?;
                let (bytes, binary) = match (r.text, r.b64data.is_empty()) {
                    (Some(t), true) => (Bytes::from(t), false),
                    (None, false) => (
                        base64::engine::general_purpose::STANDARD
                            .decode(&r.b64data)
                            .map(Bytes::from)
                            .map_err(|_| ApiError::BAD_REQUEST)?,
                        true,
                    ),
                    _ => return Err(ApiError::BAD_REQUEST.into()),
                };
                if bytes.len() > state.config.client.max_message_size {
                    Metrics::limit_hit("max_message_size");
                    return Err(ApiError::LIMIT_EXCEEDED.into());
                }
                ConnAction::RelaySend(r.client, bytes, binary)
            }
            "relay_close" => {
                let r: api::RelayCloseRequest = parse(body)?;
                let code = match r.code {
                    0 => 1000,
                    c @ (1000 | 3000..=4999) => c as u16,
                    _ => return Err(ApiError::BAD_REQUEST.into()),
                };
                if r.reason.len() > MAX_CLOSE_REASON {
                    return Err(ApiError::BAD_REQUEST.into());
                }
                ConnAction::RelayClose(r.client, code, r.reason)
            }
            "relay_transfer" => {
                let r: api::RelayTransferRequest = parse(body)?;
                if !groupcast_core::valid_target(&r.target) {
                    return Err(ApiError::BAD_REQUEST.into());
                }
                // Every edge has the same targets: one this edge cannot
                // reach (no HTTP target by that name, no NATS) is refused
                // here rather than ignored where the connection is.
                if !state.can_reach(&r.target) {
                    return Err(ApiError::NOT_AVAILABLE.into());
                }
                ConnAction::RelayTransfer(r.client, r.target, r.meta.map(Arc::from))
            }
            "relay_target_gone" => {
                let r: api::RelayTargetGoneRequest = parse(body)?;
                if !groupcast_core::valid_target(&r.target) {
                    return Err(ApiError::BAD_REQUEST.into());
                }
                return Ok(ConnAction::RelayTargetGone(r.target));
            }
            "sio_emit" => {
                let r: api::SioEmitRequest = parse(body)?;
                let ns = sio_namespace(state, r.namespace.as_deref())?;
                if !event_name_ok(&r.event)
                    || !r.room.is_empty()
                    || r.ack.is_some_and(|a| a > MAX_ACK_ID)
                {
                    return Err(ApiError::BAD_REQUEST.into());
                }
                check_sio_args(state, &r.args)?;
                ConnAction::SioEmit(r.client, ns, r.event, r.args, r.ack)
            }
            "sio_ack" => {
                let r: api::SioAckRequest = parse(body)?;
                let ns = sio_namespace(state, r.namespace.as_deref())?;
                if r.id > MAX_ACK_ID {
                    return Err(ApiError::BAD_REQUEST.into());
                }
                check_sio_args(state, &r.args)?;
                ConnAction::SioAck(r.client, ns, r.id, r.args)
            }
            "sio_join" | "sio_leave" => {
                let r: api::SioSocketRequest = parse(body)?;
                let channel = sio_room_channel(state, r.namespace.as_deref(), &r.room)?;
                state.channel(&channel).map_err(channel_error)?;
                ConnAction::SioRoom(r.client, channel, method == "sio_join")
            }
            "sio_disconnect" => {
                let r: api::SioSocketRequest = parse(body)?;
                let ns = sio_namespace(state, r.namespace.as_deref())?;
                ConnAction::SioDisconnect(r.client, ns)
            }
            _ => return Err(ApiError::METHOD_NOT_FOUND.into()),
        };
        let t = action.target();
        if t.user.is_empty() && t.client.is_empty() {
            return Err(ApiError::BAD_REQUEST.into());
        }
        Ok(action)
    }

    pub(crate) fn target(&self) -> Target<'_> {
        let (user, client) = match self {
            ConnAction::Subscribe(r) => (r.user.as_str(), r.client.as_str()),
            ConnAction::Unsubscribe(r) => (r.user.as_str(), r.client.as_str()),
            ConnAction::Disconnect(r, ..) => (r.user.as_str(), r.client.as_str()),
            ConnAction::Refresh(r) => (r.user.as_str(), r.client.as_str()),
            ConnAction::RelaySend(c, ..)
            | ConnAction::RelayClose(c, ..)
            | ConnAction::RelayTransfer(c, ..)
            | ConnAction::SioEmit(c, ..)
            | ConnAction::SioAck(c, ..)
            | ConnAction::SioRoom(c, ..)
            | ConnAction::SioDisconnect(c, ..) => ("", c.as_str()),
            ConnAction::RelayTargetGone(_) => ("", ""),
        };
        Target { user, client }
    }

    /// Acts on this node's matching connections; returns how many.
    pub(crate) fn apply_local(&self, state: &EdgeState) -> usize {
        let t = self.target();
        let conns = state.registry.find(t.user, t.client);
        for conn in &conns {
            match self {
                ConnAction::Subscribe(r) => {
                    conn.control(Control::Subscribe {
                        channel: r.channel.clone(),
                        data: r.data.clone(),
                    });
                }
                ConnAction::Unsubscribe(r) => {
                    conn.control(Control::Unsubscribe {
                        channel: r.channel.clone(),
                        code: groupcast_proto::codes::UnsubscribeCode::SERVER,
                    });
                }
                ConnAction::Disconnect(r, code, reason) => {
                    if !r.whitelist.contains(&conn.client) {
                        conn.control(Control::Disconnect {
                            code: *code,
                            reason: reason.clone(),
                        });
                    }
                }
                ConnAction::Refresh(r) => {
                    conn.control(Control::Refresh {
                        expired: r.expired,
                        expire_at: r.expire_at,
                    });
                }
                // Frames and closes only for relay connections (a frame
                // would break a protocol client's stream).
                ConnAction::RelaySend(_, bytes, binary) => {
                    if conn.kind == SubscriberKind::Relay {
                        conn.send_frame(bytes.clone(), *binary);
                    }
                }
                ConnAction::RelayClose(_, code, reason) => {
                    // After the frames already queued (a backend's last
                    // `relay_send` before its close arrives first).
                    if conn.kind == SubscriberKind::Relay {
                        conn.drain_with(*code, reason.clone().into());
                    }
                }
                ConnAction::RelayTransfer(_, target, meta) => {
                    conn.control(Control::Transfer {
                        target: target.clone(),
                        meta: meta.clone(),
                    });
                }
                ConnAction::RelayTargetGone(target) => {
                    if matches!(conn.kind, SubscriberKind::Relay | SubscriberKind::SocketIo) {
                        conn.control(Control::TargetGone {
                            target: target.clone(),
                        });
                    }
                }
                ConnAction::SioEmit(_, namespace, event, args, ack) => {
                    if conn.kind == SubscriberKind::SocketIo {
                        conn.control(Control::SioEmit {
                            namespace: namespace.clone(),
                            event: event.clone(),
                            args: args.clone(),
                            ack: *ack,
                        });
                    }
                }
                ConnAction::SioAck(_, namespace, id, args) => {
                    if conn.kind == SubscriberKind::SocketIo {
                        conn.control(Control::SioAck {
                            namespace: namespace.clone(),
                            id: *id,
                            args: args.clone(),
                        });
                    }
                }
                ConnAction::SioRoom(_, channel, join) => {
                    if conn.kind == SubscriberKind::SocketIo {
                        conn.control(if *join {
                            Control::Subscribe {
                                channel: channel.clone(),
                                data: None,
                            }
                        } else {
                            Control::Unsubscribe {
                                channel: channel.clone(),
                                code: groupcast_proto::codes::UnsubscribeCode::SERVER,
                            }
                        });
                    }
                }
                ConnAction::SioDisconnect(_, namespace) => {
                    if conn.kind == SubscriberKind::SocketIo {
                        conn.control(Control::SioDisconnect {
                            namespace: namespace.clone(),
                        });
                    }
                }
            }
        }
        conns.len()
    }
}

/// Largest Socket.IO acknowledgement id (JavaScript's safe integers).
const MAX_ACK_ID: u64 = groupcast_proto::socketio::packet::MAX_ACK_ID;

/// A configured Socket.IO namespace's name (default `/`); 102 "unknown channel" for another
/// one, 108 when Socket.IO is off.
pub(crate) fn sio_namespace(state: &EdgeState, ns: Option<&str>) -> Result<String, ApiFailure> {
    let cfg = &state.config.socketio;
    if !cfg.enabled {
        return Err(ApiError::NOT_AVAILABLE.into());
    }
    let name = ns.unwrap_or("/");
    cfg.namespaces
        .iter()
        .find(|n| n.name == name)
        .map(|n| n.name.clone())
        .ok_or(ApiError::UNKNOWN_CHANNEL.into())
}

/// The channel of a room of a Socket.IO namespace (`channel_prefix` + room).
pub(crate) fn sio_room_channel(
    state: &EdgeState,
    ns: Option<&str>,
    room: &str,
) -> Result<String, ApiFailure> {
    let name = sio_namespace(state, ns)?;
    if room.is_empty() {
        return Err(ApiError::BAD_REQUEST.into());
    }
    let namespaces = &state.config.socketio.namespaces;
    let ns = namespaces
        .iter()
        .find(|n| n.name == name)
        .ok_or(ApiFailure::Api(ApiError::UNKNOWN_CHANNEL))?;
    let channel = format!("{}{room}", ns.channel_prefix);
    // The channel must lead back to this namespace (the longest matching prefix): a room of
    // `/` (prefix "") named `chat:x` would be a room of `/chat` (prefix "chat:").
    let owner = namespaces
        .iter()
        .filter(|n| channel.starts_with(n.channel_prefix.as_str()))
        .max_by_key(|n| n.channel_prefix.len());
    if owner.map(|n| &n.name) != Some(&name) {
        return Err(ApiError::BAD_REQUEST.into());
    }
    Ok(channel)
}

/// An event name a server may emit: not empty, and not one the Socket.IO API keeps
/// (`connect`, `disconnect`...), which clients would not deliver to a listener.
pub(crate) fn event_name_ok(event: &str) -> bool {
    !event.is_empty() && !groupcast_proto::socketio::packet::RESERVED_EVENTS.contains(&event)
}

/// An event's arguments fit a client message (the JSON and the bytes of its attachments),
/// and their `$binary` values are base64.
pub(crate) fn check_sio_args(state: &EdgeState, args: &[Value]) -> Result<(), ApiFailure> {
    let mut all = Value::Array(args.to_vec());
    let attachments = groupcast_proto::socketio::packet::extract_binary(&mut all)
        .map_err(|_| ApiFailure::Api(ApiError::BAD_REQUEST))?;
    let bytes: usize = attachments.iter().map(|a| a.len()).sum();
    if all.to_string().len() + bytes > state.config.client.max_message_size {
        Metrics::limit_hit("max_message_size");
        return Err(ApiError::LIMIT_EXCEEDED.into());
    }
    Ok(())
}

/// Why an API call failed.
pub(crate) enum ApiFailure {
    /// The body does not have the method's shape: HTTP 400.
    BadBody,
    /// A Centrifugo API error: HTTP 200 with `error`.
    Api(ApiError),
}

impl From<ApiError> for ApiFailure {
    fn from(e: ApiError) -> Self {
        ApiFailure::Api(e)
    }
}

/// A method's params: a JSON object only (serde would also read a struct
/// from an array, e.g. a `batch` command `{"publish":["ch",{}]}`).
pub(crate) fn parse<T: DeserializeOwned>(v: Value) -> Result<T, ApiFailure> {
    if !v.is_object() {
        return Err(ApiFailure::BadBody);
    }
    serde_json::from_value(v).map_err(|_| ApiFailure::BadBody)
}

pub(crate) fn channel_error(e: ErrorCode) -> ApiError {
    match e {
        ErrorCode::UNKNOWN_CHANNEL => ApiError::UNKNOWN_CHANNEL,
        _ => ApiError::BAD_REQUEST,
    }
}

/// The close code and reason for an API `disconnect`: none given means 3503
/// "force disconnect"; otherwise any code in 3000..=4999 (4000..4999 are
/// the application's), with the given reason or the table's. Reasons over
/// [`MAX_CLOSE_REASON`] bytes are refused (they cannot fit a close frame).
pub(crate) fn disconnect_code(
    d: Option<&api::DisconnectObject>,
) -> Result<(u16, String), ApiError> {
    let Some(d) = d.filter(|d| d.code != 0) else {
        let c = DisconnectCode::FORCE_NO_RECONNECT;
        return Ok((c.code, c.reason.to_string()));
    };
    let code = u16::try_from(d.code)
        .ok()
        .filter(|c| (3000..=4999).contains(c))
        .ok_or(ApiError::BAD_REQUEST)?;
    if d.reason.len() > MAX_CLOSE_REASON {
        return Err(ApiError::BAD_REQUEST);
    }
    let reason = match (d.reason.is_empty(), DisconnectCode::from_code(code)) {
        (false, _) => d.reason.clone(),
        (true, Some(known)) => known.reason.to_string(),
        // Clients treat an empty reason as "reconnect"; never send one.
        (true, None) => "disconnect".to_string(),
    };
    Ok((code, reason))
}
