//! The `connect` command: token or connect proxy, limits, the registry,
//! and the server-side subscriptions it brings.

use std::sync::Arc;

use groupcast_core::StreamPosition;
use groupcast_proto::client::{self as proto, Reply};
use groupcast_proto::{DisconnectCode, ErrorCode};

use crate::auth::{now_unix, TokenError};
use crate::metrics::Metrics;

use super::*;

impl Session {
    pub(super) async fn connect(
        &mut self,
        id: u32,
        req: proto::ConnectRequest,
    ) -> Result<(), CommandError> {
        let state = self.state.clone();
        let cfg = &state.config.client;
        let mut channels = Vec::new();
        let mut connect_data = None;
        let connect_proxy = state.proxies.get(&cfg.connect_proxy);
        if let (true, Some(proxy)) = (req.token.is_empty(), connect_proxy) {
            // No token: the backend authenticates (cookies and other
            // forwarded headers included) and says who this is.
            let mut body = self.proxy_body();
            if let Some(o) = body.as_object_mut() {
                o.remove("user");
            }
            body["name"] = req.name.clone().into();
            body["version"] = req.version.clone().into();
            if let Some(d) = &req.data {
                body["data"] = serde_json::to_value(d).unwrap_or_default();
            }
            let r = ask(&proxy, "connect", body, &self.headers).await?;
            let user = match r.get("user") {
                None | Some(serde_json::Value::Null) => String::new(),
                Some(serde_json::Value::String(u)) => u.clone(),
                Some(_) => return Err(ErrorCode::INTERNAL.into()),
            };
            if user.is_empty() && !cfg.allow_anonymous_connect_without_token {
                // The backend let an anonymous connection through, which
                // this edge does not allow.
                return Err(ErrorCode::UNAUTHORIZED.into());
            }
            let per_user = cfg.max_connections_per_user;
            if per_user > 0 && !user.is_empty() && state.registry.find(&user, "").len() >= per_user
            {
                Metrics::limit_hit("max_connections_per_user");
                return Err(CommandError::Disconnect(DisconnectCode::CONNECTION_LIMIT));
            }
            self.user = user;
            self.conn_info = raw_field(&r, "info");
            self.expires_at = r
                .get("expire_at")
                .and_then(|v| v.as_i64())
                .filter(|&at| at > 0);
            connect_data = raw_field(&r, "data");
            channels = r
                .get("channels")
                .and_then(|c| c.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|c| c.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(subs) = r.get("subs").and_then(|s| s.as_object()) {
                channels.extend(subs.keys().cloned());
            }
        } else if req.token.is_empty() {
            if !cfg.allow_anonymous_connect_without_token {
                return Err(ErrorCode::UNAUTHORIZED.into());
            }
        } else {
            let claims = match self.state.verifier.verify_connect(&req.token) {
                Ok(c) => c,
                Err(TokenError::Expired) => return Err(ErrorCode::TOKEN_EXPIRED.into()),
                Err(TokenError::Invalid(_)) => {
                    return Err(CommandError::Disconnect(DisconnectCode::INVALID_TOKEN))
                }
            };
            let per_user = cfg.max_connections_per_user;
            if per_user > 0
                && !claims.sub.is_empty()
                && state.registry.find(&claims.sub, "").len() >= per_user
            {
                Metrics::limit_hit("max_connections_per_user");
                return Err(CommandError::Disconnect(DisconnectCode::CONNECTION_LIMIT));
            }
            self.user = claims.sub;
            self.conn_info = claims.info.map(Arc::from);
            self.expires_at = claims.exp;
            channels = claims.channels;
        }
        if cfg.subscribe_to_personal && !self.user.is_empty() {
            // The user's personal channel, server-side (Centrifugo's
            // `user_subscribe_to_personal`): `#<user>`, in a namespace if set.
            let personal = match cfg.personal_channel_namespace.as_str() {
                "" => format!("#{}", self.user),
                ns => format!("{ns}:#{}", self.user),
            };
            if !channels.contains(&personal) {
                channels.push(personal);
            }
        }
        self.connected = true;
        self.state.registry.add(self.conn.clone(), &self.user);
        self.state.webhooks.emit(
            "client_connected",
            serde_json::json!({"client": self.conn.client, "user": self.user}),
        );
        if !self.user.is_empty() {
            // Which edges hold which users: API actions by user find them.
            self.state.node.connections_changed(&self.user, 1);
        }

        // Server-side subscriptions from the token, recovering where the
        // client says it was (`subs` in the connect request).
        let mut subs = std::collections::BTreeMap::new();
        let mut positions = Vec::new();
        for channel in channels {
            let recover = req
                .subs
                .get(&channel)
                .filter(|s| s.recover)
                .map(|s| StreamPosition {
                    offset: s.offset,
                    epoch: s.epoch.clone(),
                });
            let spec = SubscribeSpec {
                channel: &channel,
                token: "",
                recover,
                // Server-side subscriptions are never refused for this.
                reject_unrecovered: false,
                server_side: true,
                data: None,
                delta: false,
            };
            match self.subscribe(spec).await {
                Ok((result, position)) => {
                    subs.insert(channel.clone(), result);
                    positions.push((channel, position));
                }
                // A server-side channel that cannot be joined is skipped, as
                // Centrifugo does; the client still connects.
                Err(_) => continue,
            }
        }
        // With a refresh proxy the edge refreshes; the client is not told.
        let (expires, ttl) = match self.refresh_proxy() {
            Some(_) => (false, 0),
            None => self.ttl(),
        };
        let reply = Reply {
            id,
            connect: Some(proto::ConnectResult {
                client: self.conn.client.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
                expires,
                ttl,
                data: connect_data,
                subs,
                ping: cfg.ping_interval.as_secs() as u32,
                pong: true,
                node: self.state.uid.clone(),
                // HTTP transports: where the client sends its next commands.
                session: self.emulation.clone().unwrap_or_default(),
            }),
            ..Default::default()
        };
        self.reply(reply);
        for (channel, position) in positions {
            self.finish_subscribe(&channel, position, |_| {}).await?;
        }
        Ok(())
    }

    pub(super) fn ttl(&self) -> (bool, u32) {
        match self.expires_at {
            Some(exp) => (true, (exp - now_unix()).max(0) as u32),
            None => (false, 0),
        }
    }
}
