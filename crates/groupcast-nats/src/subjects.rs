//! Every NATS subject and stream name Groupcast uses, built here and nowhere
//! else.
//!
//! | what | name |
//! |---|---|
//! | live publications, join/leave of a channel | `{prefix}.g.{ns}.{channel}` |
//! | stored publications (JetStream input) | `{prefix}.h.{ns}.{channel}` |
//! | the JetStream stream of a namespace | `{prefix}_h_{ns}` |
//! | a node's requests from other nodes | `{prefix}.n.{node}` |
//! | events of a backend target's relay connections | `{prefix}.relay.{target}` |
//! | backend commands (every edge, queue group `{prefix}-edges`) | `{prefix}.api` |
//! | backend commands for one edge's connections | `{prefix}.api.{node}` |
//!
//! `{ns}` and `{channel}` are [tokens](encode_token): the namespace (before
//! the first `:`, which picks the stream) and the whole channel name, each
//! encoded so that any channel name is exactly one NATS token and the
//! mapping is reversible. The
//! stream republishes `{prefix}.h.{ns}.*` to `{prefix}.g.{ns}.{{wildcard(1)}}`,
//! so subscribers of the live subject receive stored publications too.

use groupcast_core::ChannelName;

/// Bytes kept as they are in a token; every other byte becomes `~XX`.
fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Encode any string as one NATS subject token (also usable in a stream
/// name): ASCII letters, digits, `_` and `-` stay; every other byte
/// (`.`, `*`, `>`, spaces, `~`, UTF-8 bytes of non-ASCII characters...)
/// becomes `~` and two upper-case hex digits. The empty string is `~`.
/// The encoding is injective and [`decode_token`] reverses it.
pub fn encode_token(s: &str) -> String {
    if s.is_empty() {
        return "~".into();
    }
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if is_plain(b) {
            out.push(b as char);
        } else {
            out.push('~');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
    out
}

/// Reverse [`encode_token`]; `None` for text it cannot have produced.
pub fn decode_token(t: &str) -> Option<String> {
    if t == "~" {
        return Some(String::new());
    }
    if t.is_empty() {
        return None;
    }
    let b = t.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'~' {
            let hex = t.get(i + 1..i + 3)?;
            if !hex
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
            {
                return None;
            }
            let v = u8::from_str_radix(hex, 16).ok()?;
            if is_plain(v) {
                return None; // not canonical: would have been kept as is
            }
            out.push(v);
            i += 3;
        } else if is_plain(b[i]) {
            out.push(b[i]);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

/// The namespace of a channel (`""` for the default one): the same split the
/// namespace lookup uses. It picks the history stream.
pub fn namespace_of(channel: &str) -> &str {
    ChannelName::parse(channel, usize::MAX)
        .map(|c| c.namespace())
        .unwrap_or("")
}

/// Subject and stream names under one prefix (`nats.prefix`, default `gc`).
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// `prefix` must be a valid subject prefix (checked by the config).
    pub fn new(prefix: &str) -> Subjects {
        Subjects {
            prefix: prefix.to_string(),
        }
    }

    fn subject(&self, kind: &str, channel: &str) -> String {
        format!(
            "{}.{kind}.{}.{}",
            self.prefix,
            encode_token(namespace_of(channel)),
            encode_token(channel)
        )
    }

    /// Live subject of a channel: publications (republished from the
    /// stream, or published directly without history), joins and leaves.
    pub fn live(&self, channel: &str) -> String {
        self.subject("g", channel)
    }

    /// Subject a history publication is stored under.
    pub fn history(&self, channel: &str) -> String {
        self.subject("h", channel)
    }

    /// A node's own subject: API actions other nodes ask it to carry out
    /// for its local connections (request-reply).
    pub fn node(&self, name: &str) -> String {
        format!("{}.n.{}", self.prefix, encode_token(name))
    }

    /// Where the relay connections bound to backend `target` send their
    /// events. The target is a valid name ([`groupcast_core::valid_target`]),
    /// used as it is: its dots are subject levels.
    pub fn relay_target(&self, target: &str) -> String {
        format!("{}.relay.{target}", self.prefix)
    }

    /// Where backends send commands (a frame to a client, close,
    /// transfer...): served by every edge in one queue group.
    pub fn commands(&self) -> String {
        format!("{}.api", self.prefix)
    }

    /// Where backends send commands for the connections of `node`.
    pub fn node_commands(&self, node: &str) -> String {
        format!("{}.api.{}", self.prefix, encode_token(node))
    }

    /// The edges' queue group on [`Subjects::commands`].
    pub fn commands_group(&self) -> String {
        format!("{}-edges", self.prefix)
    }

    /// Name of the JetStream stream holding a namespace's history.
    pub fn stream(&self, namespace: &str) -> String {
        format!("{}_h_{}", self.prefix, encode_token(namespace))
    }

    /// The stream's subjects (one wildcard token: the channel).
    pub fn stream_subjects(&self, namespace: &str) -> String {
        format!("{}.h.{}.*", self.prefix, encode_token(namespace))
    }

    /// The stream's RePublish destination for [`Self::stream_subjects`].
    pub fn republish_destination(&self, namespace: &str) -> String {
        format!(
            "{}.g.{}.{{{{wildcard(1)}}}}",
            self.prefix,
            encode_token(namespace)
        )
    }

    /// Name of the JetStream stream of the edges' heartbeats (the quorum
    /// probe: whether JetStream still commits through an edge's server).
    pub fn heartbeat_stream(&self) -> String {
        format!("{}_hb", self.prefix)
    }

    /// The heartbeat stream's subjects (one token: the edge).
    pub fn heartbeat_subjects(&self) -> String {
        format!("{}.hb.*", self.prefix)
    }

    /// The subject an edge's heartbeats are stored under (`who`: its
    /// connection name, or any token unique to the process).
    pub fn heartbeat(&self, who: &str) -> String {
        format!("{}.hb.{}", self.prefix, encode_token(who))
    }

    /// The channel a live or history subject belongs to (the inverse of
    /// [`Self::live`] and [`Self::history`]).
    pub fn channel_of(&self, subject: &str) -> Option<String> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix('.')?;
        let rest = rest
            .strip_prefix("g.")
            .or_else(|| rest.strip_prefix("h."))?;
        let (ns, name) = rest.split_once('.')?;
        let channel = decode_token(name)?;
        (encode_token(namespace_of(&channel)) == ns).then_some(channel)
    }
}

/// Whether `prefix` can start Groupcast's subjects and stream names.
pub fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty() && prefix.len() <= 32 && prefix.bytes().all(is_plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn is_nats_token(t: &str) -> bool {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'.' && b != b'*' && b != b'>')
    }

    #[test]
    fn hard_names_become_one_token_and_come_back() {
        let s = Subjects::new("gc");
        let long = "é".repeat(255);
        for ch in [
            "news",
            "chat:room.1",
            "a*b>c",
            "with space",
            "ns:tab\tand~tilde",
            "ünïcødé:頻道",
            "user#42,43",
            ":leading",
            "trailing:",
            "a:b:c",
            long.as_str(),
        ] {
            let live = s.live(ch);
            let tokens: Vec<&str> = live.split('.').collect();
            assert_eq!(tokens.len(), 4, "{ch:?} -> {live}");
            assert!(tokens.iter().all(|t| is_nats_token(t)), "{live}");
            assert_eq!(s.channel_of(&live).as_deref(), Some(ch), "{live}");
            assert_eq!(s.channel_of(&s.history(ch)).as_deref(), Some(ch));
        }
        assert_ne!(s.live(":leading"), s.live("leading"), "distinct subjects");
        assert_eq!(s.live("chat:room.1"), "gc.g.chat.chat~3Aroom~2E1");
        assert_eq!(s.live("news"), "gc.g.~.news");
        assert_eq!(s.stream(""), "gc_h_~");
        assert_eq!(s.stream("a.b"), "gc_h_a~2Eb");
    }

    #[test]
    fn decoding_rejects_what_encoding_never_makes() {
        for bad in ["", "a.b", "~4", "~zz", "~41", "~e9", "a b"] {
            assert_eq!(decode_token(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn tokens_round_trip_and_are_injective(a in ".{0,40}", b in ".{0,40}") {
            let (ta, tb) = (encode_token(&a), encode_token(&b));
            prop_assert!(is_nats_token(&ta));
            prop_assert_eq!(decode_token(&ta), Some(a.clone()));
            prop_assert_eq!(a == b, ta == tb);
        }
    }
}
