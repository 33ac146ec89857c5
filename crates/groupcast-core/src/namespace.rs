//! Namespace options: what a channel allows, looked up from its name.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::channel::ChannelName;

/// Options of one namespace (or of the default namespace).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelOptions {
    /// Publications kept per channel (0: no history, no offsets, no recovery).
    pub history_size: usize,
    /// How long a publication stays in history.
    #[serde(with = "humantime_serde")]
    pub history_ttl: Duration,
    /// Let clients resubscribe with `recover` to get missed publications.
    pub allow_recovery: bool,
    /// Track presence (who is subscribed) in this namespace.
    pub presence: bool,
    /// Send `join`/`leave` pushes to subscribers.
    pub join_leave: bool,
    /// With `join_leave`: a channel with at least this many subscribers on
    /// an edge gets its joins and leaves gathered for
    /// `join_leave_coalesce` and sent to each subscriber as one frame
    /// (the same pushes, in the same order, encoded once for all). Below,
    /// each join and leave goes out at once. At least 1.
    pub join_leave_coalesce_from: usize,
    /// How long joins and leaves of a channel past
    /// `join_leave_coalesce_from` are gathered (at most 1 s; 0: never
    /// gathered).
    #[serde(with = "humantime_serde")]
    pub join_leave_coalesce: Duration,
    /// With `join_leave`: when a channel has more subscribers than this on
    /// an edge, that edge stops pushing its joins and leaves (counted in
    /// `groupcast_join_leave_suppressed_total`); presence and
    /// presence_stats still answer. Pushes resume once the channel is back
    /// to half of it on that edge. At least 1.
    pub join_leave_max_subscribers: usize,
    /// Connected clients may publish to channels of this namespace.
    pub allow_publish_for_client: bool,
    /// Clients may publish only while subscribed to the channel.
    pub allow_publish_for_subscriber: bool,
    /// Subscribed clients may ask for presence and presence stats.
    pub allow_presence_for_subscriber: bool,
    /// Subscribed clients may read history.
    pub allow_history_for_subscriber: bool,
    /// Any connected client may ask presence and presence stats, subscribed
    /// or not (channels open to all only: not `$` private, not user-limited).
    pub allow_presence_for_client: bool,
    /// Any connected client may read history, subscribed or not (same
    /// restriction).
    pub allow_history_for_client: bool,
    /// Clients may subscribe without a subscription token. When false every
    /// channel of the namespace is private (needs a subscription token).
    pub allow_subscribe_for_client: bool,
    /// Anonymous connections (empty user) may subscribe, publish and read.
    pub allow_anonymous: bool,
    /// `chan#u1,u2` channels: only the listed users may subscribe.
    pub allow_user_limited_channels: bool,
    /// With NATS: replicas of the namespace's JetStream history stream (1 to
    /// 5; 3 in a three-server NATS cluster survives losing one). Ignored by
    /// the in-memory broker.
    pub history_replicas: usize,
    /// With NATS: where JetStream keeps the history, `file` (survives a NATS
    /// restart) or `memory`. Ignored by the in-memory broker.
    pub history_storage: HistoryStorage,
    /// Largest publication data in bytes on this namespace's channels, on
    /// every path (client `publish`, relay frames, API). 0: the global
    /// limit, `client.max_message_size`, which also caps this one.
    pub max_publication_size: usize,
    /// Name of a `[[proxies]]` entry asked before a client subscribes
    /// without a subscription token (the backend decides); empty: none.
    pub subscribe_proxy: String,
    /// Name of a `[[proxies]]` entry asked before a client publishes (the
    /// backend decides and may change the data); empty: none.
    pub publish_proxy: String,
    /// Name of a `[[proxies]]` entry asked when a subscription with an
    /// expiry (from the subscribe proxy) expires; the backend extends it or
    /// ends it, the client does nothing. Empty: the client must
    /// `sub_refresh` with a token.
    pub sub_refresh_proxy: String,
    /// Delta compression a subscriber may ask for (`delta` on subscribe):
    /// `["fossil"]`, or none. Needs history (deltas are against the
    /// previous publication of the stream).
    pub allowed_delta_types: Vec<String>,
}

/// Where a backbone stores history (`history_storage`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryStorage {
    #[default]
    File,
    Memory,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        ChannelOptions {
            history_size: 0,
            history_ttl: Duration::ZERO,
            allow_recovery: false,
            presence: false,
            join_leave: false,
            join_leave_coalesce_from: 100,
            join_leave_coalesce: Duration::from_millis(50),
            join_leave_max_subscribers: 1000,
            allow_publish_for_client: false,
            allow_publish_for_subscriber: false,
            allow_presence_for_subscriber: false,
            allow_history_for_subscriber: false,
            allow_presence_for_client: false,
            allow_history_for_client: false,
            allow_subscribe_for_client: true,
            allow_anonymous: false,
            allow_user_limited_channels: false,
            history_replicas: 1,
            history_storage: HistoryStorage::File,
            max_publication_size: 0,
            subscribe_proxy: String::new(),
            publish_proxy: String::new(),
            sub_refresh_proxy: String::new(),
            allowed_delta_types: Vec::new(),
        }
    }
}

impl ChannelOptions {
    /// Everything on, as `groupcast dev` configures its default namespace.
    pub fn dev() -> Self {
        ChannelOptions {
            history_size: 100,
            history_ttl: Duration::from_secs(300),
            allow_recovery: true,
            presence: true,
            join_leave: true,
            allow_publish_for_client: true,
            allow_publish_for_subscriber: true,
            allow_presence_for_subscriber: true,
            allow_history_for_subscriber: true,
            // Reading presence/history without subscribing stays off, as in
            // production defaults: dev shows the same permission model.
            allow_presence_for_client: false,
            allow_history_for_client: false,
            allow_subscribe_for_client: true,
            allow_anonymous: true,
            allow_user_limited_channels: true,
            allowed_delta_types: vec!["fossil".into()],
            ..ChannelOptions::default()
        }
    }

    /// Whether channels keep history (and so have offsets and an epoch).
    pub fn has_history(&self) -> bool {
        self.history_size > 0 && !self.history_ttl.is_zero()
    }

    /// Check the options are consistent; `Err` names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        if self.history_size > 0 && self.history_ttl.is_zero() {
            return Err("history_ttl must be set when history_size > 0".into());
        }
        if self.history_size == 0 && !self.history_ttl.is_zero() {
            return Err("history_size must be set when history_ttl is set".into());
        }
        if self.allow_recovery && !self.has_history() {
            return Err("allow_recovery needs history_size and history_ttl".into());
        }
        if !(1..=5).contains(&self.history_replicas) {
            return Err("history_replicas must be between 1 and 5".into());
        }
        if let Some(t) = self.allowed_delta_types.iter().find(|t| *t != "fossil") {
            return Err(format!(
                "allowed_delta_types: unknown type {t:?} (only \"fossil\")"
            ));
        }
        if !self.allowed_delta_types.is_empty() && !self.has_history() {
            return Err("allowed_delta_types needs history (history_size and history_ttl)".into());
        }
        if self.join_leave && !self.presence {
            return Err("join_leave needs presence".into());
        }
        if self.join_leave_coalesce_from == 0 {
            return Err("join_leave_coalesce_from must be at least 1".into());
        }
        if self.join_leave_coalesce > MAX_JOIN_LEAVE_COALESCE {
            return Err("join_leave_coalesce must be at most 1s".into());
        }
        if self.join_leave_max_subscribers == 0 {
            return Err("join_leave_max_subscribers must be at least 1".into());
        }
        Ok(())
    }

    /// How the hub treats this namespace's joins and leaves.
    pub fn join_leave_limits(&self) -> JoinLeaveLimits {
        JoinLeaveLimits {
            coalesce_from: self.join_leave_coalesce_from,
            coalesce: self.join_leave_coalesce,
            max_subscribers: self.join_leave_max_subscribers,
        }
    }
}

/// Longest `join_leave_coalesce`: joins and leaves wait at most this long.
pub const MAX_JOIN_LEAVE_COALESCE: Duration = Duration::from_secs(1);

/// How the hub delivers a channel's joins and leaves ([`crate::hub`]):
/// from its namespace's `join_leave_*` options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinLeaveLimits {
    /// Gather joins and leaves from this many local subscribers on.
    pub coalesce_from: usize,
    /// For this long (zero: never).
    pub coalesce: Duration,
    /// Above this many local subscribers, push none.
    pub max_subscribers: usize,
}

impl Default for JoinLeaveLimits {
    /// Each join and leave at once, whatever the channel's size.
    fn default() -> Self {
        JoinLeaveLimits {
            coalesce_from: usize::MAX,
            coalesce: Duration::ZERO,
            max_subscribers: usize::MAX,
        }
    }
}

/// A named namespace in configuration (`[[namespaces]]`): `name` plus the
/// [`ChannelOptions`] fields at the same level.
///
/// Deserialized by hand: serde's `flatten` would swallow unknown keys, and a
/// misspelled option must be an error that names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Map<String, serde_json::Value>")]
pub struct NamespaceConfig {
    /// Namespace name: letters, digits, `_`, `-`, `.`.
    pub name: String,
    #[serde(flatten)]
    pub options: ChannelOptions,
}

impl TryFrom<serde_json::Map<String, serde_json::Value>> for NamespaceConfig {
    type Error = String;

    fn try_from(mut map: serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        let name = match map.remove("name") {
            Some(serde_json::Value::String(s)) => s,
            Some(other) => return Err(format!("name: expected a string, found {other}")),
            None => return Err("missing field `name`".into()),
        };
        let options = serde_json::from_value(serde_json::Value::Object(map))
            .map_err(|e| format!("namespace {name:?}: {e}"))?;
        Ok(NamespaceConfig { name, options })
    }
}

/// Namespace lookup by channel name.
#[derive(Debug, Clone, Default)]
pub struct Namespaces {
    default: ChannelOptions,
    named: HashMap<String, ChannelOptions>,
}

impl Namespaces {
    pub fn new(default: ChannelOptions, named: &[NamespaceConfig]) -> Result<Self, String> {
        default.validate().map_err(|e| format!("channel: {e}"))?;
        let mut map = HashMap::new();
        for (i, ns) in named.iter().enumerate() {
            let valid = !ns.name.is_empty()
                && ns
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
            if !valid {
                return Err(format!(
                    "namespaces[{i}].name: invalid namespace name {:?}",
                    ns.name
                ));
            }
            ns.options
                .validate()
                .map_err(|e| format!("namespaces[{i}] ({}): {e}", ns.name))?;
            if map.insert(ns.name.clone(), ns.options.clone()).is_some() {
                return Err(format!(
                    "namespaces[{i}].name: duplicate namespace {:?}",
                    ns.name
                ));
            }
        }
        Ok(Namespaces {
            default,
            named: map,
        })
    }

    /// Options for a channel, or `None` when its namespace does not exist.
    pub fn options(&self, channel: &ChannelName<'_>) -> Option<&ChannelOptions> {
        match channel.namespace() {
            "" => Some(&self.default),
            ns => self.named.get(ns),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_by_namespace() {
        let chat = ChannelOptions {
            presence: true,
            ..Default::default()
        };
        let ns = Namespaces::new(
            ChannelOptions::default(),
            &[NamespaceConfig {
                name: "chat".into(),
                options: chat.clone(),
            }],
        )
        .unwrap();
        let c = ChannelName::parse("chat:1", 255).unwrap();
        assert_eq!(ns.options(&c), Some(&chat));
        let c = ChannelName::parse("plain", 255).unwrap();
        assert_eq!(ns.options(&c), Some(&ChannelOptions::default()));
        let c = ChannelName::parse("nope:1", 255).unwrap();
        assert_eq!(ns.options(&c), None);
    }

    #[test]
    fn history_replicas_are_bounded() {
        for (replicas, ok) in [(0, false), (1, true), (5, true), (6, false)] {
            let o = ChannelOptions {
                history_replicas: replicas,
                ..Default::default()
            };
            let r = o.validate();
            assert_eq!(r.is_ok(), ok, "{replicas}: {r:?}");
            if let Err(e) = r {
                assert!(e.contains("history_replicas"), "{e}");
            }
        }
    }

    #[test]
    fn join_leave_limits_are_bounded_and_named() {
        let cases = [
            (
                ChannelOptions {
                    join_leave_coalesce_from: 0,
                    ..ChannelOptions::dev()
                },
                "join_leave_coalesce_from",
            ),
            (
                ChannelOptions {
                    join_leave_coalesce: Duration::from_millis(1001),
                    ..ChannelOptions::dev()
                },
                "join_leave_coalesce",
            ),
            (
                ChannelOptions {
                    join_leave_max_subscribers: 0,
                    ..ChannelOptions::dev()
                },
                "join_leave_max_subscribers",
            ),
        ];
        for (o, key) in cases {
            let err = o.validate().unwrap_err();
            assert!(err.starts_with(key), "{key}: {err}");
        }
        let ok = ChannelOptions {
            join_leave_coalesce: Duration::from_secs(1),
            join_leave_coalesce_from: 1,
            join_leave_max_subscribers: 1,
            ..ChannelOptions::dev()
        };
        assert!(ok.validate().is_ok());
        // From TOML-like input: a duration, and a misspelled key refused.
        let map = serde_json::json!({"name": "chat", "presence": true, "join_leave": true,
            "join_leave_coalesce": "20ms", "join_leave_max_subscribers": 500});
        let ns: NamespaceConfig = serde_json::from_value(map).unwrap();
        assert_eq!(ns.options.join_leave_coalesce, Duration::from_millis(20));
        assert_eq!(ns.options.join_leave_limits().max_subscribers, 500);
        let map = serde_json::json!({"name": "chat", "join_leave_max_subscriber": 5});
        let err = serde_json::from_value::<NamespaceConfig>(map).unwrap_err();
        assert!(
            err.to_string().contains("join_leave_max_subscriber"),
            "{err}"
        );
    }

    #[test]
    fn invalid_options_name_the_key() {
        let bad = ChannelOptions {
            history_size: 10,
            ..Default::default()
        };
        let err = Namespaces::new(
            ChannelOptions::default(),
            &[NamespaceConfig {
                name: "chat".into(),
                options: bad,
            }],
        )
        .unwrap_err();
        assert!(
            err.contains("namespaces[0]") && err.contains("history_ttl"),
            "{err}"
        );
        let err = Namespaces::new(
            ChannelOptions::default(),
            &[NamespaceConfig {
                name: "a b".into(),
                options: ChannelOptions::default(),
            }],
        )
        .unwrap_err();
        assert!(err.contains("namespaces[0].name"), "{err}");
        assert!(ChannelOptions::dev().validate().is_ok());
    }
}
