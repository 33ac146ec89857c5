//! [`NatsConfig`]: how an edge connects to NATS (`[nats]` in the
//! configuration), with its defaults and `validate()`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::subjects;

/// How an edge connects to NATS (`[nats]` in the configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// NATS server URLs (`nats://host:4222`, `tls://host:4222`); several for a
    /// NATS cluster. Empty: no NATS (the in-memory broker, `groupcast dev`).
    pub urls: Vec<String>,
    /// Connection name shown in NATS monitoring (default: the node name).
    pub name: String,
    /// Prefix of every subject and stream name (letters, digits, `_`, `-`);
    /// separate Groupcast installations sharing one NATS use different ones.
    pub prefix: String,
    /// NATS credentials file (JWT + NKey seed), e.g. from a Kubernetes Secret.
    pub credentials_file: Option<PathBuf>,
    /// User and password authentication.
    pub user: String,
    pub password: String,
    /// Token authentication.
    pub token: String,
    /// CA certificate (PEM) to verify the NATS servers with; setting it
    /// requires TLS.
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for NATS servers that verify clients.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Require TLS even without a CA file (system roots are used).
    pub tls_required: bool,
    /// Time limit for one JetStream request (publish acknowledgement,
    /// history read).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Time limit for the first connection at start.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long start-up retries creating the JetStream streams (a NATS
    /// cluster that just formed answers "timed out" for a few seconds)
    /// before the edge gives up and exits.
    #[serde(with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// How often the edge pings its NATS server. Three intervals without an
    /// answer (a link that went silent: nothing is refused, nothing arrives)
    /// count as a lost connection: `/readyz` answers 503 and the client
    /// reconnects to any server in `urls` or learnt from the cluster. 60 s
    /// in the NATS clients; 1 s here, so a silent backbone is noticed
    /// within 3 s.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// How long the edge keeps its clients while NATS is lost before it
    /// fences itself: it closes every client connection with 3016
    /// (`backbone unavailable`, reconnect) and refuses new ones with HTTP
    /// 503 until NATS is back, so the clients move to an edge that still
    /// receives publications and recover what they missed from history
    /// (docs/failover.md). `0s`: never; the clients stay and the edge
    /// repairs the gap from history once NATS is back.
    #[serde(with = "humantime_serde")]
    pub fence_after: Duration,
    /// With history namespaces, the edge stores a heartbeat in JetStream
    /// every `ping_interval` (the quorum probe): when none has been
    /// acknowledged for this long, its NATS server is taken to be cut from
    /// its cluster (its connection answers, but nothing can be committed
    /// and nothing the majority stores reaches it). The backbone then
    /// counts as lost (`/readyz` 503, the fence after `fence_after`) and the
    /// client tries another server. Above the time JetStream takes to elect
    /// a stream leader (4.3–7.4 s measured; NATS's Raft election timeout is
    /// 4–9 s), so an election is not taken for a cut. `0s`: no probe.
    #[serde(with = "humantime_serde")]
    pub quorum_lost_after: Duration,
    /// How long an edge keeps a channel's NATS subscription after its last local
    /// subscriber left: a client that leaves a channel and comes back within it (a
    /// presence flap, a page reload) costs the NATS cluster no interest change.
    /// Publications arriving meanwhile reach nobody on the edge. `0s`: drop it at once.
    /// At most 60s.
    #[serde(with = "humantime_serde")]
    pub interest_linger: Duration,
    /// Messages buffered per channel subscription before NATS reports a slow
    /// consumer and drops (history channels then repair from JetStream).
    pub subscription_capacity: usize,
    /// The cluster's shared secret: every edge signs what it publishes to
    /// the other edges (publications, joins, leaves, node-bus requests)
    /// with it and drops what is not signed with it, so a NATS client that
    /// is not an edge cannot forge them (docs/security.md). The same value
    /// on every edge; empty: nothing signed or checked.
    pub cluster_secret: String,
    /// With a `cluster_secret`, still accept unsigned messages (a signed
    /// one must still be signed right): only while rolling signing out to
    /// a running cluster, or while history written before it is kept.
    pub accept_unsigned: bool,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            urls: Vec::new(),
            name: String::new(),
            prefix: "gc".into(),
            credentials_file: None,
            user: String::new(),
            password: String::new(),
            token: String::new(),
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_required: false,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            startup_timeout: Duration::from_secs(30),
            ping_interval: Duration::from_secs(1),
            fence_after: Duration::from_secs(2),
            quorum_lost_after: Duration::from_secs(10),
            interest_linger: Duration::from_secs(2),
            subscription_capacity: 65_536,
            cluster_secret: String::new(),
            accept_unsigned: false,
        }
    }
}

impl NatsConfig {
    /// Check the settings; `Err` names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        if !subjects::valid_prefix(&self.prefix) {
            return Err("nats.prefix: 1 to 32 letters, digits, `_` or `-`".into());
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err("nats.tls_cert_file and nats.tls_key_file go together".into());
        }
        if self.user.is_empty() != self.password.is_empty() {
            return Err("nats.user and nats.password go together".into());
        }
        if self.request_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err("nats.request_timeout and nats.connect_timeout must be > 0".into());
        }
        if self.startup_timeout.is_zero() {
            return Err("nats.startup_timeout must be > 0".into());
        }
        if self.ping_interval < Duration::from_millis(100) {
            return Err("nats.ping_interval must be at least 100ms".into());
        }
        if !self.quorum_lost_after.is_zero() && self.quorum_lost_after < Duration::from_secs(1) {
            return Err("nats.quorum_lost_after must be 0s (off) or at least 1s".into());
        }
        if self.subscription_capacity == 0 {
            return Err("nats.subscription_capacity must be > 0".into());
        }
        if self.interest_linger > Duration::from_secs(60) {
            return Err("nats.interest_linger must be at most 60s".into());
        }
        for u in &self.urls {
            if u.trim().is_empty() {
                return Err("nats.urls: empty URL".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_settings_name_the_key() {
        let base = NatsConfig {
            urls: vec!["nats://127.0.0.1:4222".into()],
            ..Default::default()
        };
        assert_eq!(base.validate(), Ok(()));
        let cases: Vec<(NatsConfig, &str)> = vec![
            (
                NatsConfig {
                    prefix: "g.c".into(),
                    ..base.clone()
                },
                "nats.prefix",
            ),
            (
                NatsConfig {
                    prefix: String::new(),
                    ..base.clone()
                },
                "nats.prefix",
            ),
            (
                NatsConfig {
                    tls_cert_file: Some("c.pem".into()),
                    ..base.clone()
                },
                "nats.tls_cert_file",
            ),
            (
                NatsConfig {
                    user: "u".into(),
                    ..base.clone()
                },
                "nats.user",
            ),
            (
                NatsConfig {
                    request_timeout: Duration::ZERO,
                    ..base.clone()
                },
                "nats.request_timeout",
            ),
            (
                NatsConfig {
                    ping_interval: Duration::from_millis(10),
                    ..base.clone()
                },
                "nats.ping_interval",
            ),
            (
                NatsConfig {
                    quorum_lost_after: Duration::from_millis(500),
                    ..base.clone()
                },
                "nats.quorum_lost_after",
            ),
            (
                NatsConfig {
                    subscription_capacity: 0,
                    ..base.clone()
                },
                "nats.subscription_capacity",
            ),
            (
                NatsConfig {
                    interest_linger: Duration::from_secs(61),
                    ..base.clone()
                },
                "nats.interest_linger",
            ),
            (
                NatsConfig {
                    urls: vec![" ".into()],
                    ..base.clone()
                },
                "nats.urls",
            ),
        ];
        for (config, key) in cases {
            let err = config.validate().unwrap_err();
            assert!(err.contains(key), "{key}: {err}");
        }
    }
}
