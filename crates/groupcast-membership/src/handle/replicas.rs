//! [`Conn::replicas`]: every replica asked for its own status, for the
//! operator dashboard (reachable or not, role, term, indexes, lag).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use groupcast_core::membership::ReplicaStatus;

use super::{Conn, MembershipClientError};
use crate::transport::{Status, TransportError};
use crate::types::NodeId;

impl Conn {
    /// Every replica's own status (what `groupcast membership status --via`
    /// prints for one), within `timeout` in all: the seeds are asked in
    /// parallel, then, in parallel again, the members (voters and learners)
    /// of the newest configuration they report that no seed address
    /// reached. A member that did not answer is listed unreachable; when no
    /// seed answered, the seeds are. Lag is measured against the leader of
    /// the highest term that answered.
    pub async fn replicas(&self, timeout: Duration) -> Vec<ReplicaStatus> {
        let deadline = Instant::now() + timeout;
        let ask = |addrs: Vec<String>| {
            join_all(addrs.into_iter().map(move |addr| async move {
                let left = deadline.saturating_duration_since(Instant::now());
                let r = match self.status_of(&addr, left).await {
                    // Said with the limit asked for, not what was left of it.
                    Err(MembershipClientError::Transport(TransportError::Timeout { .. })) => {
                        Err(format!("{addr}: no answer within {timeout:?}"))
                    }
                    r => r.map_err(|e| e.to_string()),
                };
                (addr, r)
            }))
        };
        // Answers by replica id; errors by address asked.
        let mut answers: BTreeMap<NodeId, Status> = BTreeMap::new();
        let mut failed: BTreeMap<String, String> = BTreeMap::new();
        let take = |results: Vec<(String, Result<Status, String>)>,
                    answers: &mut BTreeMap<NodeId, Status>,
                    failed: &mut BTreeMap<String, String>| {
            for (addr, r) in results {
                match r {
                    Ok(s) => {
                        answers.insert(s.id, s);
                    }
                    Err(e) => {
                        failed.insert(addr, e);
                    }
                }
            }
        };
        take(ask(self.seeds.clone()).await, &mut answers, &mut failed);
        // The member list of the answer with the newest view.
        let newest = answers
            .values()
            .max_by_key(|s| (s.term, s.state == "Leader"))
            .cloned();
        let Some(newest) = newest else {
            return self
                .seeds
                .iter()
                .map(|addr| ReplicaStatus {
                    address: addr.clone(),
                    error: failed.get(addr).cloned(),
                    ..Default::default()
                })
                .collect();
        };
        let members: Vec<(NodeId, String, bool)> = newest
            .voters
            .iter()
            .map(|(id, a)| (*id, a.clone(), true))
            .chain(
                newest
                    .learners
                    .iter()
                    .map(|(id, a)| (*id, a.clone(), false)),
            )
            .collect();
        let missing: Vec<String> = members
            .iter()
            .filter(|(id, addr, _)| !answers.contains_key(id) && !failed.contains_key(addr))
            .map(|(_, addr, _)| addr.clone())
            .collect();
        if !missing.is_empty() {
            take(ask(missing).await, &mut answers, &mut failed);
        }
        let leader = answers
            .values()
            .filter(|s| s.state == "Leader")
            .max_by_key(|s| s.term)
            .map(|s| (s.id, s.last_log_index.unwrap_or(0)));
        members
            .into_iter()
            .map(|(id, addr, voter)| match answers.get(&id) {
                Some(s) => ReplicaStatus {
                    id: Some(id),
                    address: addr,
                    reachable: true,
                    error: None,
                    state: s.state.clone(),
                    leader: leader.is_some_and(|(l, _)| l == id),
                    voter,
                    term: Some(s.term),
                    last_log_index: s.last_log_index,
                    commit_index: s.commit_index,
                    applied_index: s.applied_index,
                    lag: leader.map(|(_, last)| last.saturating_sub(s.applied_index.unwrap_or(0))),
                },
                None => ReplicaStatus {
                    id: Some(id),
                    error: Some(
                        failed
                            .get(&addr)
                            .cloned()
                            .unwrap_or_else(|| "no answer from this replica".into()),
                    ),
                    address: addr,
                    voter,
                    ..Default::default()
                },
            })
            .collect()
    }
}
