//! Signed backbone messages: what edges publish to each other carries an
//! HMAC-SHA256 of the cluster secret (`nats.cluster_secret`), so a NATS
//! client that is not an edge cannot forge a publication, a join or leave,
//! or a request on an edge's node subject, even on a NATS server without
//! permissions.
//!
//! The tag travels in the `Gc-Sig` header (hex). It covers a domain
//! (`pub` for a channel's messages, `node` for node-bus requests), the
//! channel or the node's name, and the payload:
//!
//! ```text
//! HMAC-SHA256(cluster_secret, "groupcast/1\n" + domain + "\n" + name + "\n" + payload)
//! ```
//!
//! Channel messages keep their header through JetStream (stored with the
//! message, republished to the live subject, returned by history reads),
//! so a stored publication is checked again when it is read back.
//!
//! With a secret, an unsigned or wrongly signed message is dropped and
//! counted (`groupcast_backbone_rejected_total{reason}`), unless
//! `nats.accept_unsigned` is set: the step of a rolling upgrade in which
//! edges without the secret are still running (docs/security.md). Without
//! a secret nothing is signed or checked (`groupcast dev --nats`), and the
//! backbone is as trustworthy as the NATS permissions around it.
//!
//! What signing does not do: hide anything (reading a subject needs NATS
//! permissions), or stop a captured message from being published again
//! unchanged on the same channel (NATS permissions stop that too).

use async_nats::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header that carries the tag.
pub const SIGNATURE_HEADER: &str = "Gc-Sig";

/// What a signature is for: the same bytes signed for one cannot pass as
/// the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// A channel's publication, join or leave (`name`: the channel).
    Channel,
    /// A request on an edge's node subject (`name`: the node).
    Node,
}

impl Domain {
    fn label(self) -> &'static str {
        match self {
            Domain::Channel => "pub",
            Domain::Node => "node",
        }
    }
}

/// Why a message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// No `Gc-Sig` header.
    Unsigned,
    /// A header that is not this cluster's tag for this message.
    BadSignature,
}

impl Rejected {
    /// The `reason` label of the rejection metric.
    pub fn reason(self) -> &'static str {
        match self {
            Rejected::Unsigned => "unsigned",
            Rejected::BadSignature => "bad_signature",
        }
    }
}

/// Signs and checks backbone messages; cheap to clone.
#[derive(Clone, Default)]
pub struct Signer {
    key: Option<Hmac<Sha256>>,
    accept_unsigned: bool,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("signing", &self.key.is_some())
            .field("accept_unsigned", &self.accept_unsigned)
            .finish()
    }
}

impl Signer {
    /// `secret` empty: nothing is signed or checked.
    pub fn new(secret: &str, accept_unsigned: bool) -> Signer {
        let key = (!secret.is_empty())
            .then(|| Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length"));
        Signer {
            key,
            accept_unsigned,
        }
    }

    /// Whether messages are signed (a cluster secret is set).
    pub fn is_signing(&self) -> bool {
        self.key.is_some()
    }

    fn mac(&self, domain: Domain, name: &str, payload: &[u8]) -> Option<Hmac<Sha256>> {
        let mut mac = self.key.clone()?;
        mac.update(b"groupcast/1\n");
        mac.update(domain.label().as_bytes());
        mac.update(b"\n");
        mac.update(name.as_bytes());
        mac.update(b"\n");
        mac.update(payload);
        Some(mac)
    }

    /// Adds the tag to `headers` (nothing without a secret).
    pub fn sign(&self, headers: &mut HeaderMap, domain: Domain, name: &str, payload: &[u8]) {
        if let Some(mac) = self.mac(domain, name, payload) {
            let tag = hex(&mac.finalize().into_bytes());
            headers.insert(SIGNATURE_HEADER, tag.as_str());
        }
    }

    /// Headers holding only the tag (`None` without a secret).
    pub fn headers(&self, domain: Domain, name: &str, payload: &[u8]) -> Option<HeaderMap> {
        self.key.as_ref()?;
        let mut h = HeaderMap::new();
        self.sign(&mut h, domain, name, payload);
        Some(h)
    }

    /// Checks a received message (always `Ok` without a secret).
    pub fn check(
        &self,
        headers: Option<&HeaderMap>,
        domain: Domain,
        name: &str,
        payload: &[u8],
    ) -> Result<(), Rejected> {
        let Some(mac) = self.mac(domain, name, payload) else {
            return Ok(());
        };
        let Some(tag) = headers.and_then(|h| h.get(SIGNATURE_HEADER)) else {
            return match self.accept_unsigned {
                true => Ok(()),
                false => Err(Rejected::Unsigned),
            };
        };
        let tag = unhex(tag.as_str()).ok_or(Rejected::BadSignature)?;
        // `verify_slice` compares in constant time.
        mac.verify_slice(&tag).map_err(|_| Rejected::BadSignature)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Counts a rejected message.
pub fn count_rejected(why: Rejected, domain: Domain) {
    metrics::counter!(
        "groupcast_backbone_rejected_total",
        "reason" => why.reason(),
        "kind" => domain.label(),
    )
    .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_message_passes_and_any_change_fails() {
        let s = Signer::new("cluster secret", false);
        let mut h = HeaderMap::new();
        s.sign(&mut h, Domain::Channel, "chat:lobby", b"payload");
        assert_eq!(
            s.check(Some(&h), Domain::Channel, "chat:lobby", b"payload"),
            Ok(())
        );
        for (domain, name, payload) in [
            (Domain::Channel, "chat:lobby", &b"payloaD"[..]),
            (Domain::Channel, "$alice", &b"payload"[..]),
            (Domain::Node, "chat:lobby", &b"payload"[..]),
        ] {
            assert_eq!(
                s.check(Some(&h), domain, name, payload),
                Err(Rejected::BadSignature),
                "{domain:?} {name} {payload:?}"
            );
        }
        // Another cluster's secret.
        let other = Signer::new("another secret", false);
        assert_eq!(
            other.check(Some(&h), Domain::Channel, "chat:lobby", b"payload"),
            Err(Rejected::BadSignature)
        );
    }

    #[test]
    fn unsigned_and_garbled_tags_are_refused_unless_allowed() {
        let s = Signer::new("k", false);
        assert_eq!(
            s.check(None, Domain::Node, "a", b"x"),
            Err(Rejected::Unsigned)
        );
        let mut h = HeaderMap::new();
        h.insert(SIGNATURE_HEADER, "zz");
        assert_eq!(
            s.check(Some(&h), Domain::Node, "a", b"x"),
            Err(Rejected::BadSignature)
        );
        let lenient = Signer::new("k", true);
        assert_eq!(lenient.check(None, Domain::Node, "a", b"x"), Ok(()));
        // A tag that is present is still checked.
        assert_eq!(
            lenient.check(Some(&h), Domain::Node, "a", b"x"),
            Err(Rejected::BadSignature)
        );
    }

    #[test]
    fn without_a_secret_nothing_is_signed_or_checked() {
        let s = Signer::new("", false);
        assert!(!s.is_signing());
        assert!(s.headers(Domain::Channel, "c", b"x").is_none());
        assert_eq!(s.check(None, Domain::Channel, "c", b"x"), Ok(()));
    }
}
