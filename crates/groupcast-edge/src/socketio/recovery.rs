//! Connection-state recovery tokens (Socket.IO 4.6's `connectionStateRecovery`, across edges).
//!
//! Socket.IO's protocol gives the server two strings to work with: the `pid` it sends in the
//! CONNECT answer, and the *offset* it appends as the last argument of the events it
//! broadcasts; the client keeps the last of each and sends both back in its next CONNECT
//! (`auth.pid`, `auth.offset`). Socket.IO's adapters look them up in one server's memory, so
//! a client recovers only on the server it left. Here both strings carry what recovery needs,
//! signed with a key every edge has, so any edge can restore the socket:
//!
//! * the **pid**: the socket's id, namespace, user, `meta`, backend target, and its rooms with
//!   the stream position each was joined at;
//! * the **offset**: the socket's id and its rooms with the position of the last event of each
//!   that was written to the client.
//!
//! A token is `base64url(JSON) "." base64url(HMAC-SHA256(key, kind "\n" JSON)[..16])`; `kind`
//! keeps a pid from passing as an offset. The edge that takes the CONNECT reads the rooms'
//! channel history since those positions (JetStream on a cluster): the socket is recovered only
//! when every room's history is complete and in the same epoch. What recovery cannot know: a
//! room joined after the client's last event (the pid names the rooms of the CONNECT, the
//! offset those of the last event), so a room joined later and silent since is not restored.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::Sha256;

/// Bytes of the HMAC kept in a token (128 bits).
const TAG_LEN: usize = 16;

/// The key that signs and checks the tokens.
pub(crate) struct Key([u8; 32]);

impl Key {
    /// From `socketio.recovery_secret`, else `nats.cluster_secret` (so every edge of a cluster
    /// agrees without another setting), else random: recovery on this process only.
    pub fn new(recovery_secret: &str, cluster_secret: &str) -> Key {
        let secret = if recovery_secret.is_empty() {
            cluster_secret
        } else {
            recovery_secret
        };
        if secret.is_empty() {
            return Key(rand::random());
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(b"groupcast/socketio-recovery/1");
        Key(mac.finalize().into_bytes().into())
    }

    fn tag(&self, kind: &str, json: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("any key length");
        mac.update(kind.as_bytes());
        mac.update(b"\n");
        mac.update(json);
        mac.finalize().into_bytes().into()
    }

    fn sign<T: Serialize>(&self, kind: &str, value: &T) -> String {
        let json = serde_json::to_vec(value).unwrap_or_default();
        let tag = self.tag(kind, &json);
        let mut s = URL_SAFE_NO_PAD.encode(&json);
        s.push('.');
        URL_SAFE_NO_PAD.encode_string(&tag[..TAG_LEN], &mut s);
        s
    }

    fn open<T: for<'de> Deserialize<'de>>(&self, kind: &str, token: &str) -> Option<T> {
        let (body, tag) = token.split_once('.')?;
        let json = URL_SAFE_NO_PAD.decode(body).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("any key length");
        mac.update(kind.as_bytes());
        mac.update(b"\n");
        mac.update(&json);
        mac.verify_truncated_left(&tag).ok()?;
        if tag.len() != TAG_LEN {
            return None;
        }
        serde_json::from_slice(&json).ok()
    }

    pub fn pid(&self, pid: &Pid) -> String {
        self.sign("pid", pid)
    }

    pub fn open_pid(&self, token: &str) -> Option<Pid> {
        self.open("pid", token)
    }

    pub fn offset(&self, offset: &Offset<'_>) -> String {
        self.sign("offset", offset)
    }

    pub fn open_offset(&self, token: &str) -> Option<OwnedOffset> {
        self.open("offset", token)
    }
}

/// Where a room stands: `(channel, epoch, offset)`.
pub(crate) type Room = (String, String, u64);

/// What a `pid` says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Pid {
    /// The socket id (restored with the socket).
    #[serde(rename = "s")]
    pub socket: String,
    /// The namespace.
    #[serde(rename = "n")]
    pub namespace: String,
    #[serde(rename = "u")]
    pub user: String,
    #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Arc<RawValue>>,
    /// The backend target the CONNECT chose ("": the namespace's).
    #[serde(rename = "t", default, skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// The rooms at CONNECT, at the positions they were joined.
    #[serde(rename = "r")]
    pub rooms: Vec<Room>,
}

/// An offset being written: the socket and where its rooms stand.
#[derive(Serialize)]
pub(crate) struct Offset<'a> {
    #[serde(rename = "s")]
    pub socket: &'a str,
    #[serde(rename = "r")]
    pub rooms: Vec<(&'a str, &'a str, u64)>,
}

/// An offset read back.
#[derive(Debug, Deserialize)]
pub(crate) struct OwnedOffset {
    #[serde(rename = "s")]
    pub socket: String,
    #[serde(rename = "r")]
    pub rooms: Vec<Room>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid() -> Pid {
        Pid {
            socket: "abc".into(),
            namespace: "/".into(),
            user: "u1".into(),
            meta: None,
            target: String::new(),
            rooms: vec![("r1".into(), "e1".into(), 7)],
        }
    }

    #[test]
    fn a_token_opens_with_the_same_secret_on_another_edge() {
        let a = Key::new("", "cluster");
        let b = Key::new("", "cluster");
        let back = b.open_pid(&a.pid(&pid())).unwrap();
        assert_eq!(
            serde_json::to_string(&back).unwrap(),
            serde_json::to_string(&pid()).unwrap()
        );
        let off = a.offset(&Offset {
            socket: "abc",
            rooms: vec![("r1", "e1", 9)],
        });
        let back = b.open_offset(&off).unwrap();
        assert_eq!(
            (back.socket.as_str(), back.rooms),
            ("abc", vec![("r1".into(), "e1".into(), 9)])
        );
    }

    #[test]
    fn forged_altered_or_cross_kind_tokens_do_not_open() {
        let k = Key::new("s", "");
        let t = k.pid(&pid());
        assert!(Key::new("other", "").open_pid(&t).is_none(), "another key");
        assert!(Key::new("", "").open_pid(&t).is_none(), "a random key");
        // Another room in the body, same tag.
        let (_, tag) = t.split_once('.').unwrap();
        let mut p = pid();
        p.rooms.push(("secret".into(), "e".into(), 0));
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&p).unwrap());
        assert!(
            k.open_pid(&format!("{body}.{tag}")).is_none(),
            "altered body"
        );
        // A pid is not an offset.
        assert!(k.open_offset(&t).is_none());
        // A shortened tag.
        assert!(k.open_pid(&t[..t.len() - 4]).is_none());
        for junk in ["", ".", "abc", "a.b", "hello world"] {
            assert!(k.open_pid(junk).is_none(), "{junk:?}");
        }
    }
}
