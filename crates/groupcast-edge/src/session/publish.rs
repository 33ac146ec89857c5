//! Client publications (with the publish proxy) and the channel reads a
//! client may make: presence and history.

use std::sync::Arc;

use groupcast_core::broker::{HistoryQuery, PublishOptions};
use groupcast_core::{ChannelName, ChannelOptions, Payload, Publication, StreamPosition};
use groupcast_proto::client::{self as proto, ClientInfo};
use groupcast_proto::ErrorCode;

use super::*;

impl Session {
    pub(super) async fn publish(&mut self, req: proto::PublishRequest) -> Result<(), CommandError> {
        let state = self.state.clone();
        let (ch, opts) = state.channel(&req.channel)?;
        // Binary data comes only from protobuf clients: JSON clients get it
        // as base64 with the `encoding` tag, relay connections as a binary
        // frame, protobuf clients as the bytes.
        let data = match &req.binary {
            Some(b) => Payload::Binary(b.clone()),
            None => req
                .data
                .clone()
                .and_then(Payload::json)
                .ok_or(ErrorCode::BAD_REQUEST)?,
        };
        if !state.check_publication_size(opts, data.len()) {
            return Err(ErrorCode::LIMIT_EXCEEDED.into());
        }
        let subscribed = self.subs.get(ch.as_str());
        let mut data = data;
        let mut skip_history = false;
        if let Some(proxy) = state.proxies.get(&opts.publish_proxy) {
            // The backend decides (instead of the namespace's permissions)
            // and may replace the data.
            let mut body = self.proxy_body();
            body["channel"] = req.channel.clone().into();
            match &req.binary {
                // Centrifugo's proxies carry binary data as `b64data`.
                Some(b) => {
                    use base64::Engine as _;
                    body["b64data"] = base64::engine::general_purpose::STANDARD.encode(b).into();
                }
                None => body["data"] = serde_json::to_value(&req.data).unwrap_or_default(),
            }
            let r = ask(&proxy, "publish", body, &self.headers).await?;
            if let Some(new) = raw_field(&r, "data") {
                data = Payload::json(new).ok_or(ErrorCode::INTERNAL)?;
                if !state.check_publication_size(opts, data.len()) {
                    return Err(ErrorCode::LIMIT_EXCEEDED.into());
                }
            }
            skip_history = r.get("skip_history").and_then(|v| v.as_bool()) == Some(true);
        } else {
            // Private and user-limited channels: only a subscriber (who
            // proved access) may publish, whatever allow_publish_for_client
            // says.
            let open_to_all = !state.is_restricted(&ch, opts);
            let allowed = ((opts.allow_publish_for_client && open_to_all)
                || ((opts.allow_publish_for_subscriber || opts.allow_publish_for_client)
                    && subscribed.is_some()))
                && (opts.allow_anonymous || !self.user.is_empty());
            if !allowed {
                return Err(ErrorCode::PERMISSION_DENIED.into());
            }
        }
        let mut p = Publication::new(data);
        if req.exclude_self {
            p.exclude_client = Some(Arc::from(self.conn.client.as_str()));
        }
        p.info = Some(match subscribed {
            Some(sub) => sub.info.clone(),
            None => Arc::new(ClientInfo {
                user: self.user.clone(),
                client: self.conn.client.clone(),
                conn_info: self.conn_info.clone(),
                chan_info: None,
            }),
        });
        let po = match skip_history {
            // The backend's `skip_history`: delivered live, not stored.
            true => PublishOptions::default(),
            false => PublishOptions::for_channel(opts),
        };
        state
            .node
            .publish(ch.as_str(), p, &po)
            .await
            .map_err(broker_error)?;
        Ok(())
    }

    pub(super) fn check_presence(
        &self,
        ch: &ChannelName<'_>,
        opts: &ChannelOptions,
    ) -> Result<(), ErrorCode> {
        if !opts.presence {
            return Err(ErrorCode::NOT_AVAILABLE);
        }
        let allowed = (opts.allow_presence_for_subscriber && self.subs.contains_key(ch.as_str()))
            || (opts.allow_presence_for_client && self.may_read_unsubscribed(ch, opts));
        if !allowed {
            return Err(ErrorCode::PERMISSION_DENIED);
        }
        Ok(())
    }

    /// `allow_presence_for_client` / `allow_history_for_client` let a client
    /// that is not subscribed read a channel, but only one open to all
    /// (not private, not user-limited) and, unless the namespace allows
    /// anonymous access, only an authenticated one.
    pub(super) fn may_read_unsubscribed(
        &self,
        ch: &ChannelName<'_>,
        opts: &ChannelOptions,
    ) -> bool {
        !self.state.is_restricted(ch, opts) && (opts.allow_anonymous || !self.user.is_empty())
    }

    pub(super) async fn history(
        &self,
        req: proto::HistoryRequest,
    ) -> Result<proto::HistoryResult, CommandError> {
        let (ch, opts) = self.state.channel(&req.channel)?;
        if !opts.has_history() {
            return Err(ErrorCode::NOT_AVAILABLE.into());
        }
        let allowed = (opts.allow_history_for_subscriber && self.subs.contains_key(ch.as_str()))
            || (opts.allow_history_for_client && self.may_read_unsubscribed(&ch, opts));
        if !allowed {
            return Err(ErrorCode::PERMISSION_DENIED.into());
        }
        let limit = self
            .state
            .history_limit(req.limit)
            .ok_or(ErrorCode::LIMIT_EXCEEDED)?;
        let since = req.since.map(|s| StreamPosition {
            offset: s.offset,
            epoch: s.epoch,
        });
        let h = self
            .state
            .node
            .history(
                ch.as_str(),
                HistoryQuery {
                    since,
                    limit: Some(limit),
                    reverse: req.reverse,
                },
            )
            .await
            .map_err(broker_error)?;
        Ok(proto::HistoryResult {
            publications: h.publications.iter().map(|p| p.to_out()).collect(),
            epoch: h.position.epoch,
            offset: h.position.offset,
        })
    }
}
