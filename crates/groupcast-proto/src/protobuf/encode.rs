//! Replies and pushes: the JSON model's values to framed `Reply` messages.
//!
//! Every `encode_*` function returns one message with its varint length
//! prefix, so a frame of several is their concatenation. Each mirrors the
//! JSON encoder of the same name in `crate::client`.

use std::collections::BTreeMap;

use prost::Message as _;
use serde_json::value::RawValue;

use super::messages::*;
use crate::client;

fn json_bytes(raw: Option<&RawValue>) -> Vec<u8> {
    raw.map(|r| r.get().as_bytes().to_vec()).unwrap_or_default()
}

fn info_from_model(i: &client::ClientInfo) -> ClientInfo {
    ClientInfo {
        user: i.user.clone(),
        client: i.client.clone(),
        conn_info: json_bytes(i.conn_info.as_deref()),
        chan_info: json_bytes(i.chan_info.as_deref()),
    }
}

fn publication(
    data: &RawValue,
    info: Option<&client::ClientInfo>,
    offset: u64,
    tags: &BTreeMap<String, String>,
) -> Publication {
    Publication {
        data: data.get().as_bytes().to_vec(),
        info: info.map(info_from_model),
        offset,
        tags: tags.clone(),
        ..Default::default()
    }
}

/// A stored publication for a protobuf client. Binary data (a base64 JSON
/// string tagged `encoding: base64`, as JSON clients get it) goes back to its
/// bytes, without the tag, as live pushes carry it.
fn publication_from_model(p: &client::PublicationOut) -> Publication {
    if p.tags.get(ENCODING_TAG).map(String::as_str) == Some("base64") {
        let raw = serde_json::from_str::<String>(p.data.get())
            .ok()
            .and_then(|s| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.decode(s).ok()
            });
        if let Some(raw) = raw {
            let mut tags = p.tags.clone();
            tags.remove(ENCODING_TAG);
            return Publication {
                data: raw,
                info: p.info.as_ref().map(info_from_model),
                offset: p.offset,
                tags,
                ..Default::default()
            };
        }
    }
    publication(&p.data, p.info.as_ref(), p.offset, &p.tags)
}

/// The tag that marks binary data carried as base64 in JSON.
pub const ENCODING_TAG: &str = "encoding";

fn subscribe_result_from_model(s: &client::SubscribeResult) -> SubscribeResult {
    SubscribeResult {
        expires: s.expires,
        ttl: s.ttl,
        recoverable: s.recoverable,
        epoch: s.epoch.clone(),
        publications: s.publications.iter().map(publication_from_model).collect(),
        recovered: s.recovered,
        offset: s.offset,
        positioned: s.positioned,
        data: json_bytes(s.data.as_deref()),
        was_recovering: s.was_recovering,
        delta: s.delta,
        ..Default::default()
    }
}

fn reply_from_model(r: &client::Reply) -> Reply {
    Reply {
        id: r.id,
        error: r.error.map(|e| Error {
            code: e.code,
            message: e.message.to_owned(),
            temporary: e.temporary,
        }),
        push: None,
        connect: r.connect.as_ref().map(|c| ConnectResult {
            client: c.client.clone(),
            version: c.version.clone(),
            expires: c.expires,
            ttl: c.ttl,
            data: json_bytes(c.data.as_deref()),
            subs: c
                .subs
                .iter()
                .map(|(k, s)| (k.clone(), subscribe_result_from_model(s)))
                .collect(),
            ping: c.ping,
            pong: c.pong,
            session: c.session.clone(),
            node: c.node.clone(),
            ..Default::default()
        }),
        subscribe: r.subscribe.as_ref().map(subscribe_result_from_model),
        unsubscribe: r.unsubscribe.as_ref().map(|_| UnsubscribeResult {}),
        publish: r.publish.as_ref().map(|_| PublishResult {}),
        presence: r.presence.as_ref().map(|p| PresenceResult {
            presence: p
                .presence
                .iter()
                .map(|(k, i)| (k.clone(), info_from_model(i)))
                .collect(),
        }),
        presence_stats: r.presence_stats.as_ref().map(|s| PresenceStatsResult {
            num_clients: s.num_clients,
            num_users: s.num_users,
        }),
        history: r.history.as_ref().map(|h| HistoryResult {
            publications: h.publications.iter().map(publication_from_model).collect(),
            epoch: h.epoch.clone(),
            offset: h.offset,
        }),
        ping: r.ping.as_ref().map(|_| PingResult {}),
        rpc: r.rpc.as_ref().map(|x| RpcResult {
            data: json_bytes(x.data.as_deref()),
        }),
        refresh: r.refresh.as_ref().map(|x| RefreshResult {
            client: x.client.clone(),
            version: x.version.clone(),
            expires: x.expires,
            ttl: x.ttl,
        }),
        sub_refresh: r.sub_refresh.as_ref().map(|x| SubRefreshResult {
            expires: x.expires,
            ttl: x.ttl,
            items: Vec::new(),
        }),
    }
}

/// Encode a reply to a command (result or error), length-prefixed.
pub fn encode_reply(reply: &client::Reply) -> Vec<u8> {
    reply_from_model(reply).encode_length_delimited_to_vec()
}

/// An error reply with any code and message (a backend's error from an
/// event proxy, which [`client::Reply`]'s fixed table cannot hold).
pub fn encode_error_reply(id: u32, code: u32, message: &str) -> Vec<u8> {
    Reply {
        id,
        error: Some(Error {
            code,
            message: message.to_owned(),
            temporary: false,
        }),
        ..Default::default()
    }
    .encode_length_delimited_to_vec()
}

/// The server's ping: an empty `Reply`, length-prefixed (the byte `0x00`).
/// The client answers with an empty `Command`.
pub fn encode_ping() -> Vec<u8> {
    Reply::default().encode_length_delimited_to_vec()
}

fn encode_push(push: Push) -> Vec<u8> {
    Reply {
        push: Some(push),
        ..Default::default()
    }
    .encode_length_delimited_to_vec()
}

/// A publication push in `channel`, as [`client::encode_pub_push`]: encode
/// once per fan-out and share the bytes.
pub fn encode_pub_push(channel: &str, p: client::PubView<'_>) -> Vec<u8> {
    encode_push(Push {
        channel: channel.to_owned(),
        publication: Some(publication(p.data, p.info, p.offset, p.tags)),
        ..Default::default()
    })
}

/// A publication push whose data are `data` as they are: the full JSON
/// text, or (`delta`) a Fossil delta against the subscription's previous
/// publication's data.
pub fn encode_pub_push_bytes(
    channel: &str,
    data: &[u8],
    delta: bool,
    offset: u64,
    info: Option<&client::ClientInfo>,
    tags: &BTreeMap<String, String>,
) -> Vec<u8> {
    encode_push(Push {
        channel: channel.to_owned(),
        publication: Some(Publication {
            data: data.to_vec(),
            info: info.map(info_from_model),
            offset,
            tags: tags.clone(),
            delta,
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// A join push, as [`client::encode_join_push`].
pub fn encode_join_push(channel: &str, info: &client::ClientInfo) -> Vec<u8> {
    encode_push(Push {
        channel: channel.to_owned(),
        join: Some(Join {
            info: Some(info_from_model(info)),
        }),
        ..Default::default()
    })
}

/// A leave push, as [`client::encode_leave_push`].
pub fn encode_leave_push(channel: &str, info: &client::ClientInfo) -> Vec<u8> {
    encode_push(Push {
        channel: channel.to_owned(),
        leave: Some(Leave {
            info: Some(info_from_model(info)),
        }),
        ..Default::default()
    })
}

/// A server unsubscribe push, as [`client::encode_unsubscribe_push`].
pub fn encode_unsubscribe_push(channel: &str, code: u32, reason: &str) -> Vec<u8> {
    encode_push(Push {
        channel: channel.to_owned(),
        unsubscribe: Some(Unsubscribe {
            code,
            reason: reason.to_owned(),
        }),
        ..Default::default()
    })
}

/// A server-side subscription push, as [`client::encode_subscribe_push`].
/// The schema's `Subscribe` has no `expires`, `ttl`, `publications`,
/// `recovered` or `was_recovering`: those of `result` are not sent.
pub fn encode_subscribe_push(channel: &str, result: &client::SubscribeResult) -> Vec<u8> {
    encode_push(Push {
        channel: channel.to_owned(),
        subscribe: Some(Subscribe {
            recoverable: result.recoverable,
            epoch: result.epoch.clone(),
            offset: result.offset,
            positioned: result.positioned,
            data: json_bytes(result.data.as_deref()),
        }),
        ..Default::default()
    })
}
