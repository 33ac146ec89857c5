//! Server-initiated actions from the control inbox (API subscribe,
//! unsubscribe, disconnect, refresh), and the end of the session.

use std::borrow::Cow;

use bytes::Bytes;
use groupcast_proto::client::{self as proto};
use groupcast_proto::DisconnectCode;

use crate::conn::{Control, OutKind};

use super::*;

impl Session {
    pub(super) async fn handle_control(&mut self, control: Control) {
        if !self.connected {
            return;
        }
        match control {
            Control::Disconnect { code, reason } => self.conn.close_with(code, reason.into()),
            // For relay connections of backend routes, and Socket.IO sessions, only.
            Control::Transfer { .. }
            | Control::TargetGone { .. }
            | Control::SioEmit { .. }
            | Control::SioAck { .. }
            | Control::SioDisconnect { .. } => {}
            Control::Refresh { expired, expire_at } => {
                if expired {
                    self.conn.close(DisconnectCode::EXPIRED);
                } else {
                    self.expires_at = (expire_at > 0).then_some(expire_at);
                }
            }
            Control::Unsubscribe { channel, code: u } => {
                if self.subs.contains_key(&channel) {
                    self.remove_sub(&channel).await;
                    let push = unsubscribe_push(&self.conn, &channel, u.code, u.reason);
                    self.conn.send_json(push, OutKind::Reply);
                }
            }
            Control::Subscribe { channel, data } => {
                let spec = SubscribeSpec {
                    channel: &channel,
                    token: "",
                    recover: None,
                    reject_unrecovered: false,
                    server_side: true,
                    data: None,
                    delta: false,
                };
                match self.subscribe(spec).await {
                    Ok((mut result, position)) => {
                        result.data = data;
                        let push = if self.conn.is_protobuf() {
                            groupcast_proto::protobuf::encode_subscribe_push(&channel, &result)
                        } else {
                            proto::encode_subscribe_push(&channel, &result)
                        };
                        let done = self
                            .finish_subscribe(&channel, position, |c| {
                                c.send_json(Bytes::from(push), OutKind::Reply);
                            })
                            .await;
                        if let Err(CommandError::Disconnect(code)) = done {
                            self.conn.close(code);
                        }
                    }
                    Err(CommandError::Disconnect(code)) => self.conn.close(code),
                    // Already subscribed, a limit, an unknown channel: the
                    // client asked for nothing, so there is nothing to answer.
                    Err(CommandError::Error(e)) => {
                        tracing::debug!(client = %self.conn.client, %channel, "server-side subscribe refused: {e}")
                    }
                    // Server-side subscribes ask no proxy.
                    Err(CommandError::Backend { .. }) => {}
                    Err(CommandError::Close { code, reason }) => {
                        self.conn.close_with(code, Cow::Owned(reason))
                    }
                }
            }
        }
    }

    pub(super) async fn cleanup(&mut self) {
        let channels: Vec<String> = self.subs.keys().cloned().collect();
        for channel in channels {
            self.remove_sub(&channel).await;
        }
        if self.connected {
            self.state.registry.remove(&self.conn.client);
            // The code the server closed with; none: the client left.
            let (code, reason) = match self.conn.close_reason() {
                Some((c, r)) => (serde_json::json!(c), r),
                None => (serde_json::Value::Null, "connection closed".to_string()),
            };
            self.state.webhooks.emit(
                "client_disconnected",
                serde_json::json!({"client": self.conn.client, "user": self.user, "code": code, "reason": reason}),
            );
            if !self.user.is_empty() {
                self.state.node.connections_changed(&self.user, -1);
            }
        }
    }
}
