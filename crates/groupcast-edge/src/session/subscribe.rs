//! Subscriptions: checks, recovery from history (buffering live
//! publications meanwhile), presence and `join`, and their end.

use std::sync::Arc;

use groupcast_core::broker::{BrokerError, HistoryQuery};
use groupcast_core::hub::AddOutcome;
use groupcast_core::{ChannelOptions, StreamPosition};
use groupcast_proto::client::{self as proto, ClientInfo};
use groupcast_proto::{DisconnectCode, ErrorCode};

use crate::auth::{now_unix, TokenError};
use crate::conn::Conn;
use crate::metrics::Metrics;

use super::*;

impl Session {
    /// Check, register (buffering) and position a subscription. The caller
    /// sends the result and then calls [`Self::finish_subscribe`].
    pub(super) async fn subscribe(
        &mut self,
        spec: SubscribeSpec<'_>,
    ) -> Result<(proto::SubscribeResult, u64), CommandError> {
        let state = self.state.clone();
        let (ch, opts) = state.channel(spec.channel)?;
        if self.subs.contains_key(spec.channel) {
            return Err(ErrorCode::ALREADY_SUBSCRIBED.into());
        }
        if self.subs.len() >= state.config.client.max_channels_per_connection {
            Metrics::limit_hit("max_channels_per_connection");
            return Err(ErrorCode::LIMIT_EXCEEDED.into());
        }
        let mut chan_info = None;
        let mut expires_at = None;
        let mut sub_data = None;
        let mut proxy_refresh = None;
        let proxy = state.proxies.get(&opts.subscribe_proxy);
        if let (true, false, Some(proxy)) = (spec.token.is_empty(), spec.server_side, proxy) {
            // The backend decides, instead of the namespace's permissions.
            let mut body = self.proxy_body();
            body["channel"] = spec.channel.into();
            if let Some(d) = spec.data {
                body["data"] = serde_json::to_value(d).unwrap_or_default();
            }
            let r = ask(&proxy, "subscribe", body, &self.headers).await?;
            chan_info = raw_field(&r, "info");
            sub_data = raw_field(&r, "data");
            expires_at = r
                .get("expire_at")
                .and_then(|v| v.as_i64())
                .filter(|&at| at > 0);
            // An expiry from the backend is refreshed by the backend when
            // the namespace has a sub_refresh proxy.
            proxy_refresh = expires_at.and(state.proxies.get(&opts.sub_refresh_proxy));
        } else if !spec.token.is_empty() {
            let claims = match state.verifier.verify_subscribe(spec.token) {
                Ok(c) => c,
                Err(TokenError::Expired) => return Err(ErrorCode::TOKEN_EXPIRED.into()),
                Err(TokenError::Invalid(_)) => return Err(ErrorCode::PERMISSION_DENIED.into()),
            };
            if claims.channel != spec.channel || claims.sub != self.user {
                return Err(ErrorCode::PERMISSION_DENIED.into());
            }
            chan_info = claims.info.map(Arc::from);
            expires_at = claims.exp;
        } else if !spec.server_side && !state.can_subscribe(&ch, opts, &self.user) {
            return Err(ErrorCode::PERMISSION_DENIED.into());
        }
        let info = Arc::new(ClientInfo {
            user: self.user.clone(),
            client: self.conn.client.clone(),
            conn_info: self.conn_info.clone(),
            chan_info,
        });
        let node = &state.node;
        // Delta compression when asked and the namespace allows it (it
        // needs history: validated with the configuration).
        let delta = spec.delta
            && opts
                .allowed_delta_types
                .iter()
                .any(|t| t == proto::DELTA_FOSSIL);
        match node
            .add_subscriber_with_delta(spec.channel, self.conn.clone(), true, delta)
            .await
        {
            Ok(AddOutcome::AlreadySubscribed) => return Err(ErrorCode::ALREADY_SUBSCRIBED.into()),
            Ok(_) => {}
            Err(e) => return Err(broker_error(e).into()),
        }
        let result = self
            .position(spec.channel, opts, spec.recover)
            .await
            .and_then(|r| {
                let failed = r.0.was_recovering && !r.0.recovered;
                match failed && spec.reject_unrecovered {
                    true => Err(ErrorCode::UNRECOVERABLE_POSITION),
                    false => Ok(r),
                }
            });
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                node.remove_subscriber(spec.channel, self.conn.id).await;
                return Err(e.into());
            }
        };
        if opts.presence {
            // The `join` push goes out once recovery is over
            // (`finish_subscribe`).
            if let Err(e) = node.join(spec.channel, info.clone(), true, false).await {
                node.remove_subscriber(spec.channel, self.conn.id).await;
                let code = match e {
                    groupcast_core::MembershipError::LimitExceeded(limit) => {
                        Metrics::limit_hit(limit);
                        ErrorCode::LIMIT_EXCEEDED
                    }
                    groupcast_core::MembershipError::Unavailable(_) => ErrorCode::NOT_AVAILABLE,
                };
                return Err(code.into());
            }
            self.state.webhooks.emit(
                "member_added",
                serde_json::json!({"channel": spec.channel, "client": self.conn.client, "user": self.user}),
            );
        }
        let mut result = result;
        result.0.data = sub_data;
        if delta {
            result.0.delta = true;
            if !self.conn.is_protobuf() {
                // Every publication of a delta subscription comes as a JSON
                // string over JSON (the SDKs parse it): recovered ones too.
                for p in &mut result.0.publications {
                    p.data = groupcast_core::publication::json_string(p.data.get());
                }
            }
        }
        if let (Some(exp), None) = (expires_at, &proxy_refresh) {
            result.0.expires = true;
            result.0.ttl = (exp - now_unix()).max(0) as u32;
        }
        self.subs.insert(
            spec.channel.to_string(),
            Sub {
                info,
                presence: opts.presence,
                join_leave: opts.join_leave,
                expires_at,
                proxy_refresh,
            },
        );
        Metrics::get().subscriptions.increment(1.0);
        Ok(result)
    }

    /// Read the stream position (and missed publications when recovering).
    pub(super) async fn position(
        &self,
        channel: &str,
        opts: &ChannelOptions,
        recover: Option<StreamPosition>,
    ) -> Result<(proto::SubscribeResult, u64), ErrorCode> {
        if !opts.has_history() {
            return Ok((proto::SubscribeResult::default(), 0));
        }
        let node = &self.state.node;
        let mut result = proto::SubscribeResult {
            recoverable: opts.allow_recovery,
            positioned: true,
            ..Default::default()
        };
        let top_only = HistoryQuery {
            limit: Some(0),
            ..Default::default()
        };
        let recover = recover.filter(|_| opts.allow_recovery);
        let history = match &recover {
            Some(since) => {
                result.was_recovering = true;
                let q = HistoryQuery {
                    since: Some(since.clone()),
                    limit: None,
                    reverse: false,
                };
                match node.history(channel, q).await {
                    Err(BrokerError::UnrecoverablePosition) => {
                        node.history(channel, top_only).await
                    }
                    other => other,
                }
            }
            None => node.history(channel, top_only).await,
        }
        .map_err(broker_error)?;
        result.epoch = history.position.epoch.clone();
        result.offset = history.position.offset;
        if let Some(since) = recover {
            let same_epoch = since.epoch_matches(&history.position.epoch);
            let outcome = if !same_epoch {
                "epoch_changed"
            } else if !history.complete {
                "too_old"
            } else {
                result.recovered = true;
                result.publications = history.publications.iter().map(|p| p.to_out()).collect();
                "recovered"
            };
            metrics::counter!("groupcast_recoveries_total", "outcome" => outcome).increment(1);
        }
        Ok((result, history.position.offset))
    }

    /// Queue the subscribe answer (via `send`) and switch the subscription
    /// from buffering to live, then announce the join.
    pub(super) async fn finish_subscribe(
        &mut self,
        channel: &str,
        position: u64,
        send: impl FnOnce(&Conn),
    ) -> Result<(), CommandError> {
        let conn = self.conn.clone();
        if self
            .state
            .node
            .finish_buffering(channel, conn.id, position, || send(&conn))
            .is_err()
        {
            self.drop_sub(channel, false).await;
            Metrics::limit_hit("recovery_buffer_max");
            return Err(CommandError::Disconnect(DisconnectCode::INSUFFICIENT_STATE));
        }
        if let Some(sub) = self.subs.get(channel) {
            if sub.join_leave {
                self.state
                    .node
                    .announce_join(channel, sub.info.clone())
                    .await;
            }
        }
        Ok(())
    }

    /// Drop a subscription: hub, presence, leave.
    pub(super) async fn remove_sub(&mut self, channel: &str) {
        self.drop_sub(channel, true).await
    }

    /// Drop a subscription; `announce`: publish the `leave` (only when the
    /// `join` went out).
    pub(super) async fn drop_sub(&mut self, channel: &str, announce: bool) {
        let Some(sub) = self.subs.remove(channel) else {
            return;
        };
        let node = &self.state.node;
        node.remove_subscriber(channel, self.conn.id).await;
        node.leave(channel, sub.info, sub.presence, sub.join_leave && announce)
            .await;
        if sub.presence {
            self.state.webhooks.emit(
                "member_removed",
                serde_json::json!({"channel": channel, "client": self.conn.client, "user": self.user}),
            );
        }
        Metrics::get().subscriptions.decrement(1.0);
    }
}
