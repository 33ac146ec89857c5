//! Operator requests (`groupcast membership status|add|remove`): asked of
//! the leader through a [`Conn`], answered with the cluster's status.

use std::time::Duration;

use crate::handle::{Conn, MembershipClientError};
use crate::transport::{Reply, Request, Status};
use crate::types::NodeId;

/// What an operator asks the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRequest {
    /// The leader's view: term, indexes, members.
    Status,
    /// Add a replica (started with an id and an address, no peers) as a
    /// voter.
    AddMember { id: NodeId, addr: String },
    /// Remove a voter.
    RemoveMember { id: NodeId },
}

impl AdminRequest {
    /// How long the answer may take: a status is quick; a member change
    /// waits for the new replica to catch up and the change to commit.
    pub fn timeout(&self) -> Duration {
        match self {
            AdminRequest::Status => Duration::from_secs(5),
            AdminRequest::AddMember { .. } | AdminRequest::RemoveMember { .. } => {
                Duration::from_secs(60)
            }
        }
    }
}

impl Conn {
    /// Sends `req` to the leader within [`AdminRequest::timeout`]; the
    /// status it answers with (after a member change, the new one). A
    /// refusal is [`MembershipClientError::Refused`] with the leader's
    /// reason.
    pub async fn admin(&self, req: AdminRequest) -> Result<Status, MembershipClientError> {
        let timeout = req.timeout();
        let req = match req {
            AdminRequest::Status => Request::Status,
            AdminRequest::AddMember { id, addr } => Request::AddMember { id, addr },
            AdminRequest::RemoveMember { id } => Request::RemoveMember { id },
        };
        match self.call(&req, timeout).await? {
            Reply::Status(s) | Reply::MemberChanged(s) => Ok(s),
            Reply::Failed(reason) => Err(MembershipClientError::Refused(reason)),
            other => Err(MembershipClientError::UnexpectedAnswer(format!(
                "{other:?}"
            ))),
        }
    }
}
