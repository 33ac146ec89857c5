//! Expiry of a connection and of its subscriptions: the refresh proxy
//! asked server-side, or the client's `refresh` / `sub_refresh` with a new
//! token; 3005 after `client.expired_close_delay`, unsubscribe 2501 for an
//! expired subscription.

use std::borrow::Cow;
use std::sync::Arc;

use groupcast_proto::client::{self as proto};
use groupcast_proto::{DisconnectCode, ErrorCode};

use crate::auth::{now_unix, TokenError};
use crate::conn::OutKind;
use crate::proxy::{Answer, Proxy};

use super::*;

impl Session {
    /// Seconds an expired connection may still `refresh` before 3005.
    pub(super) fn close_delay(&self) -> i64 {
        self.state.config.client.expired_close_delay.as_secs() as i64
    }

    /// Earliest connection or subscription expiry that still needs action.
    pub(super) fn next_expiry(&self) -> Option<i64> {
        // With a refresh proxy the edge acts at the expiry itself.
        let grace = match self.refresh_proxy() {
            Some(_) => 0,
            None => self.close_delay(),
        };
        let conn = self.expires_at.map(|e| e + grace);
        let subs = self.subs.values().filter_map(|s| s.expires_at).min();
        match (conn, subs) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The refresh proxy, when connections are refreshed server-side.
    pub(super) fn refresh_proxy(&self) -> Option<Arc<Proxy>> {
        self.state
            .proxies
            .get(&self.state.config.client.refresh_proxy)
    }

    pub(super) async fn expire(&mut self) {
        let now = now_unix();
        if let Some(e) = self.expires_at {
            match self.refresh_proxy() {
                Some(proxy) if now >= e => match self.ask_refresh(&proxy, None).await {
                    Refreshed::Until(at, info) => {
                        self.expires_at = Some(at);
                        if info.is_some() {
                            self.conn_info = info;
                        }
                    }
                    Refreshed::Expired => {
                        self.conn.close(DisconnectCode::EXPIRED);
                        return;
                    }
                    Refreshed::Close(code, reason) => {
                        self.conn.close_with(code, Cow::Owned(reason));
                        return;
                    }
                },
                None if now >= e + self.close_delay() => {
                    self.conn.close(DisconnectCode::EXPIRED);
                    return;
                }
                _ => {}
            }
        }
        let expired: Vec<(String, Option<Arc<Proxy>>)> = self
            .subs
            .iter()
            .filter(|(_, s)| s.expires_at.is_some_and(|e| now >= e))
            .map(|(c, s)| (c.clone(), s.proxy_refresh.clone()))
            .collect();
        for (channel, proxy) in expired {
            if let Some(proxy) = proxy {
                match self.ask_refresh(&proxy, Some(&channel)).await {
                    Refreshed::Until(at, info) => {
                        if let Some(sub) = self.subs.get_mut(&channel) {
                            sub.expires_at = Some(at);
                            if let Some(info) = info {
                                let mut i = (*sub.info).clone();
                                i.chan_info = Some(info);
                                sub.info = Arc::new(i);
                            }
                        }
                        continue;
                    }
                    Refreshed::Close(code, reason) => {
                        self.conn.close_with(code, Cow::Owned(reason));
                        return;
                    }
                    Refreshed::Expired => {}
                }
            }
            self.remove_sub(&channel).await;
            let u = groupcast_proto::codes::UnsubscribeCode::EXPIRED;
            let push = unsubscribe_push(&self.conn, &channel, u.code, u.reason);
            self.conn.send_json(push, OutKind::Reply);
        }
    }

    /// Asks the refresh proxy (`channel`: the sub_refresh proxy) whether an
    /// expired connection or subscription goes on.
    pub(super) async fn ask_refresh(&self, proxy: &Proxy, channel: Option<&str>) -> Refreshed {
        let mut body = self.proxy_body();
        let event = match channel {
            Some(c) => {
                body["channel"] = c.into();
                "sub_refresh"
            }
            None => "refresh",
        };
        let retry = || Refreshed::Until(now_unix() + REFRESH_RETRY_SECS, None);
        match proxy.call(event, &body, &self.headers).await {
            Ok(Answer::Result(r)) => {
                let at = r.get("expire_at").and_then(|v| v.as_i64());
                let expired = r.get("expired").and_then(|v| v.as_bool()) == Some(true);
                match at {
                    Some(at) if !expired && at > now_unix() => {
                        Refreshed::Until(at, raw_field(&r, "info"))
                    }
                    // Not expired but no later expiry: never expires again.
                    None if !expired => Refreshed::Until(i64::MAX / 2, raw_field(&r, "info")),
                    _ => Refreshed::Expired,
                }
            }
            Ok(Answer::Disconnect { code, reason }) => Refreshed::Close(code, reason),
            // An error answer or no answer: try again later.
            Ok(Answer::Error { .. }) | Err(_) => retry(),
        }
    }

    pub(super) fn refresh(&mut self, token: &str) -> Result<proto::RefreshResult, CommandError> {
        let claims = match self.state.verifier.verify_connect(token) {
            Ok(c) => c,
            Err(TokenError::Expired) => {
                return Err(CommandError::Disconnect(DisconnectCode::EXPIRED))
            }
            Err(TokenError::Invalid(_)) => {
                return Err(CommandError::Disconnect(DisconnectCode::INVALID_TOKEN))
            }
        };
        if claims.sub != self.user {
            return Err(CommandError::Disconnect(DisconnectCode::INVALID_TOKEN));
        }
        self.expires_at = claims.exp;
        if let Some(info) = claims.info {
            self.conn_info = Some(Arc::from(info));
        }
        let (expires, ttl) = self.ttl();
        Ok(proto::RefreshResult {
            client: self.conn.client.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            expires,
            ttl,
        })
    }

    pub(super) fn sub_refresh(
        &mut self,
        channel: &str,
        token: &str,
    ) -> Result<proto::SubRefreshResult, CommandError> {
        if !self.subs.contains_key(channel) {
            return Err(ErrorCode::PERMISSION_DENIED.into());
        }
        let claims = match self.state.verifier.verify_subscribe(token) {
            Ok(c) => c,
            Err(TokenError::Expired) => return Err(ErrorCode::EXPIRED.into()),
            Err(TokenError::Invalid(_)) => return Err(ErrorCode::PERMISSION_DENIED.into()),
        };
        if claims.channel != channel || claims.sub != self.user {
            return Err(ErrorCode::PERMISSION_DENIED.into());
        }
        let sub = self.subs.get_mut(channel).expect("checked above");
        sub.expires_at = claims.exp;
        Ok(match claims.exp {
            Some(exp) => proto::SubRefreshResult {
                expires: true,
                ttl: (exp - now_unix()).max(0) as u32,
            },
            None => proto::SubRefreshResult::default(),
        })
    }
}
