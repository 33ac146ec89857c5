//! The handle's settings ([`MembershipClientConfig`], checked by
//! `validate`) and its error type.

use std::time::Duration;

use crate::certs::{self, TlsFiles};

/// Settings of the edge handle (`[membership]` in the edge's config).
#[derive(Debug, Clone)]
pub struct MembershipClientConfig {
    /// Replica addresses (`host:port`); any of them, the leader is found.
    pub seeds: Vec<String>,
    pub tls: TlsFiles,
    /// This edge's name (unique in the cluster).
    pub edge_name: String,
    /// This edge's advertised address (informational).
    pub edge_addr: String,
    pub lease_ttl: Duration,
    pub renew_every: Duration,
    pub flush_interval: Duration,
    /// Most deltas per batch.
    pub batch_max: usize,
    /// Most deltas kept while the service is unreachable.
    pub buffer_max: usize,
    /// How long a request may take before the service counts as unavailable.
    pub request_timeout: Duration,
    /// `presence_max_clients`: most presence entries per channel.
    pub presence_max_clients: u32,
    /// How often to ask for removed edges whose entries left.
    pub removal_poll: Duration,
}

impl MembershipClientConfig {
    pub fn new(
        seeds: Vec<String>,
        tls: TlsFiles,
        edge_name: impl Into<String>,
    ) -> MembershipClientConfig {
        MembershipClientConfig {
            seeds,
            tls,
            edge_name: edge_name.into(),
            edge_addr: String::new(),
            lease_ttl: Duration::from_secs(5),
            renew_every: Duration::from_secs(1),
            flush_interval: Duration::from_millis(20),
            batch_max: 1024,
            buffer_max: 100_000,
            request_timeout: Duration::from_secs(2),
            presence_max_clients: groupcast_core::membership::memory::DEFAULT_MAX_PER_CHANNEL
                as u32,
            removal_poll: Duration::from_millis(250),
        }
    }

    /// Refuses settings the handle cannot work with, naming the field.
    pub fn validate(&self) -> Result<(), MembershipClientError> {
        let bad =
            |field: &str, why: &str| Err(MembershipClientError::Config(format!("{field}: {why}")));
        if self.seeds.is_empty() {
            return Err(MembershipClientError::NoSeeds);
        }
        if self.edge_name.is_empty() {
            return bad("edge_name", "must not be empty");
        }
        if self.batch_max == 0 {
            return bad("batch_max", "must be at least 1");
        }
        if self.buffer_max == 0 {
            return bad("buffer_max", "must be at least 1");
        }
        if self.flush_interval.is_zero() || self.request_timeout.is_zero() {
            return bad("flush_interval / request_timeout", "must be above zero");
        }
        if self.removal_poll.is_zero() {
            return bad("removal_poll", "must be above zero");
        }
        if self.renew_every.is_zero() || self.renew_every >= self.lease_ttl {
            return bad("renew_every", "must be above zero and below lease_ttl");
        }
        Ok(())
    }
}

/// Why the handle, or a [`super::Conn`], could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum MembershipClientError {
    #[error(transparent)]
    Certs(#[from] certs::CertError),
    #[error("no membership seed addresses")]
    NoSeeds,
    #[error("membership client configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Endpoint(String),
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    #[error("membership: {0}")]
    Service(String),
    /// The leader refused an operator request (its reason, as is).
    #[error("{0}")]
    Refused(String),
    /// An answer that does not fit the request.
    #[error("unexpected answer: {0}")]
    UnexpectedAnswer(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_it_cannot_work_with_are_refused_by_name() {
        let tls = TlsFiles::in_dir(std::path::Path::new("."), "edge");
        let ok = MembershipClientConfig::new(vec!["127.0.0.1:1".into()], tls, "e");
        ok.validate().unwrap();
        let refused = |f: fn(&mut MembershipClientConfig), needle: &str| {
            let mut c = ok.clone();
            f(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        };
        refused(|c| c.seeds.clear(), "no membership seed");
        refused(|c| c.edge_name.clear(), "edge_name");
        refused(|c| c.batch_max = 0, "batch_max");
        refused(|c| c.buffer_max = 0, "buffer_max");
        refused(|c| c.flush_interval = Duration::ZERO, "flush_interval");
        refused(|c| c.renew_every = c.lease_ttl, "renew_every");
        refused(|c| c.removal_poll = Duration::ZERO, "removal_poll");
    }
}
