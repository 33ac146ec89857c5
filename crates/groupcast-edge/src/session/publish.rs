//! Client publications (through `crate::publish_gate`, the raw relay's
//! gate too) and the channel reads a client may make: presence and
//! history (in a namespace with a subscribe proxy, only by a subscriber).

use std::sync::Arc;

use groupcast_core::broker::{HistoryQuery, PendingPublish, PublishOptions};
use groupcast_core::{ChannelName, ChannelOptions, Payload, Publication, StreamPosition};
use groupcast_proto::client::{self as proto, ClientInfo};
use groupcast_proto::ErrorCode;

use super::*;
use crate::publish_gate::{self, Passed, Publisher, Refusal};

impl Session {
    /// Check and send a publication; its answer comes from the returned
    /// future (see `Session::publishes`).
    pub(super) async fn publish(
        &mut self,
        req: proto::PublishRequest,
    ) -> Result<PendingPublish, CommandError> {
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
        let subscribed = self.subs.get(ch.as_str());
        // Size, then the namespace's publish proxy: the same gate as the
        // raw relay's.
        let (protocol, encoding) = self.protocol_encoding();
        let who = Publisher {
            client: &self.conn.client,
            transport: self.transport.name(),
            user: &self.user,
            protocol,
            encoding,
            headers: &self.headers,
        };
        let passed = publish_gate::check(&state, opts, &req.channel, who, data)
            .await
            .map_err(|r| match r {
                Refusal::TooBig => ErrorCode::LIMIT_EXCEEDED.into(),
                Refusal::NotJson => ErrorCode::BAD_REQUEST.into(),
                Refusal::Backend { code, message } => CommandError::Backend { code, message },
                Refusal::Disconnect { code, reason } => CommandError::Close { code, reason },
                Refusal::Failed => ErrorCode::INTERNAL.into(),
            })?;
        let (data, skip_history) = match passed {
            // The backend decided (instead of the namespace's permissions)
            // and may have replaced the data.
            Passed::Proxied { data, skip_history } => (data, skip_history),
            Passed::Unproxied(data) => {
                // Private and user-limited channels: only a subscriber (who
                // proved access) may publish, whatever
                // allow_publish_for_client says.
                let open_to_all = !state.is_restricted(&ch, opts);
                let allowed = ((opts.allow_publish_for_client && open_to_all)
                    || ((opts.allow_publish_for_subscriber || opts.allow_publish_for_client)
                        && subscribed.is_some()))
                    && (opts.allow_anonymous || !self.user.is_empty());
                if !allowed {
                    return Err(ErrorCode::PERMISSION_DENIED.into());
                }
                (data, false)
            }
        };
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
            .publish_begin(ch.as_str(), p, &po)
            .await
            .map_err(|e| broker_error(e).into())
    }

    pub(super) fn check_presence(
        &self,
        ch: &ChannelName<'_>,
        opts: &ChannelOptions,
    ) -> Result<(), ErrorCode> {
        if !opts.presence {
            return Err(ErrorCode::NOT_AVAILABLE);
        }
        let allowed = self.may_read(
            ch,
            opts,
            opts.allow_presence_for_subscriber,
            opts.allow_presence_for_client,
        );
        if !allowed {
            return Err(ErrorCode::PERMISSION_DENIED);
        }
        Ok(())
    }

    /// May this connection read `ch` (presence or history), given the
    /// namespace's `allow_*_for_subscriber` and `allow_*_for_client` for
    /// that read? In a namespace with a `subscribe_proxy` the backend
    /// decides who sees the channel, so `allow_*_for_client` needs a
    /// subscription there too (the proxy allowed it, or a token or the
    /// backend made it); elsewhere it lets a client that is not subscribed
    /// read ([`Self::may_read_unsubscribed`]).
    fn may_read(
        &self,
        ch: &ChannelName<'_>,
        opts: &ChannelOptions,
        for_subscriber: bool,
        for_client: bool,
    ) -> bool {
        let subscribed = self.subs.contains_key(ch.as_str());
        let backend_decides = !opts.subscribe_proxy.is_empty();
        (for_subscriber && subscribed)
            || (for_client
                && match backend_decides {
                    true => subscribed,
                    false => self.may_read_unsubscribed(ch, opts),
                })
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
        let allowed = self.may_read(
            &ch,
            opts,
            opts.allow_history_for_subscriber,
            opts.allow_history_for_client,
        );
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
