//! Unit tests of the state machine (pure: no replica, no network).

use groupcast_core::membership::MAX_CHANNELS_PER_QUERY;

use super::*;
use crate::types::{EventKind, Query, QueryResult, RemoveReason};

fn edge(name: &str, inc: u64) -> EdgeId {
    EdgeId {
        name: name.into(),
        incarnation: inc,
    }
}

fn register(s: &mut State, e: &EdgeId) -> CommandResult {
    s.apply(&Command::Register {
        edge: e.clone(),
        addr: "a".into(),
        ttl_ms: 5000,
        version: String::new(),
        started_unix: 0,
    })
}

fn join(channel: &str, client: &str, user: &str, max: u32) -> Delta {
    Delta::Join {
        channel: channel.into(),
        presence: Presence {
            client: client.into(),
            user: user.into(),
            conn_info: None,
            chan_info: Some("{\"x\":1}".into()),
        },
        max_clients: max,
    }
}

fn batch(e: &EdgeId, seq: u64, deltas: Vec<Delta>) -> Command {
    Command::Batch {
        edge: e.clone(),
        seq,
        reset: false,
        deltas,
    }
}

fn presence_clients(s: &State, channel: &str) -> Vec<String> {
    match s.query(&Query::Presence {
        channel: channel.into(),
    }) {
        QueryResult::Presence(p) => p.into_iter().map(|p| p.client).collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_retried_batch_is_applied_once() {
    let mut s = State::default();
    let a = edge("a", 1);
    register(&mut s, &a);
    let b1 = batch(
        &a,
        1,
        vec![Delta::Subscribers {
            channel: "c".into(),
            delta: 1,
        }],
    );
    assert_eq!(
        s.apply(&b1),
        CommandResult::Batch {
            applied: true,
            refused: vec![]
        }
    );
    let after_first = s.clone();
    assert_eq!(
        s.apply(&b1),
        CommandResult::Batch {
            applied: false,
            refused: vec![]
        }
    );
    assert_eq!(s, after_first, "the retry changed nothing");
    assert_eq!(
        s.query(&Query::Channels {
            prefix: String::new(),
            limit: 10
        }),
        QueryResult::Channels([("c".to_string(), 1)].into())
    );
}

#[test]
fn limits_refuse_and_a_retry_reports_the_same_refusals() {
    let mut s = State::default();
    let a = edge("a", 1);
    register(&mut s, &a);
    let b = batch(
        &a,
        1,
        vec![
            join("c", "1", "u", 2),
            join("c", "2", "u", 2),
            join("c", "3", "v", 2),
            join("c", "1", "u", 2),
        ],
    );
    let first = s.apply(&b);
    assert_eq!(
        first,
        CommandResult::Batch {
            applied: true,
            refused: vec![2]
        },
        "the third client is over the limit, re-adding an existing one is not"
    );
    assert_eq!(
        s.apply(&b),
        CommandResult::Batch {
            applied: false,
            refused: vec![2]
        }
    );
    assert_eq!(presence_clients(&s, "c"), ["1", "2"]);
}

fn removals(s: &State, after: u64) -> (u64, Vec<(u64, String)>, bool) {
    match s.query(&Query::Removals { after }) {
        QueryResult::Removals {
            latest,
            removals,
            complete,
        } => (
            latest,
            removals.into_iter().map(|r| (r.seq, r.edge)).collect(),
            complete,
        ),
        other => panic!("{other:?}"),
    }
}

/// Removals with entries are kept for the other edges, at most
/// MAX_REMOVALS_KEPT; a poll from before the oldest kept one is told it
/// missed some. Removals without entries and restarts without entries
/// are not recorded; a restart that replaces entries is.
#[test]
fn removals_are_kept_for_the_other_edges_up_to_the_limit() {
    let mut s = State::default();
    assert_eq!(removals(&s, 0), (0, vec![], true));
    let empty = edge("empty", 1);
    register(&mut s, &empty);
    s.apply(&Command::Remove {
        edge: empty,
        reason: RemoveReason::Left,
    });
    assert_eq!(removals(&s, 0), (0, vec![], true), "no entries, no record");
    let total = MAX_REMOVALS_KEPT as u64 + 6;
    for i in 0..total {
        let e = edge(&format!("e{i}"), 1);
        register(&mut s, &e);
        s.apply(&batch(&e, 1, vec![join("c", &format!("k{i}"), "u", 1000)]));
        if i == 0 {
            // A restart (new incarnation) replaces the old entries.
            register(&mut s, &edge("e0", 2));
            continue;
        }
        s.apply(&Command::Remove {
            edge: e,
            reason: RemoveReason::LeaseExpired,
        });
    }
    let (latest, kept, complete) = removals(&s, 0);
    assert_eq!(latest, total);
    assert_eq!(kept.len(), MAX_REMOVALS_KEPT);
    assert_eq!(
        kept[0].0,
        total - MAX_REMOVALS_KEPT as u64 + 1,
        "oldest dropped"
    );
    assert!(!complete, "a poll from 0 missed the dropped ones");
    let oldest_kept = kept[0].0;
    assert!(
        removals(&s, oldest_kept - 1).2,
        "nothing missed from just before the oldest"
    );
    let (_, tail, complete) = removals(&s, total - 2);
    assert!(complete);
    assert_eq!(
        tail,
        [
            (total - 1, format!("e{}", total - 2)),
            (total, format!("e{}", total - 1))
        ]
    );
    assert_eq!(removals(&s, total), (total, vec![], true));
    assert_eq!(removals(&s, u64::MAX), (total, vec![], true));
}

#[test]
fn removing_an_edge_drops_everything_and_reports_each_leave() {
    let mut s = State::default();
    let (a, b) = (edge("a", 1), edge("b", 1));
    register(&mut s, &a);
    register(&mut s, &b);
    s.apply(&batch(
        &a,
        1,
        vec![
            join("c1", "1", "u", 10),
            join("c2", "2", "u", 10),
            Delta::Subscribers {
                channel: "c1".into(),
                delta: 3,
            },
            Delta::Connections {
                user: "u".into(),
                delta: 2,
            },
        ],
    ));
    s.apply(&batch(
        &b,
        1,
        vec![
            join("c1", "3", "w", 10),
            Delta::Subscribers {
                channel: "c1".into(),
                delta: 1,
            },
            Delta::Connections {
                user: "u".into(),
                delta: 1,
            },
        ],
    ));
    assert_eq!(
        s.query(&Query::UserNodes { user: "u".into() }),
        QueryResult::UserNodes(vec!["a".into(), "b".into()])
    );
    let CommandResult::Removed { leaves } = s.apply(&Command::Remove {
        edge: a.clone(),
        reason: RemoveReason::LeaseExpired,
    }) else {
        panic!()
    };
    let mut left: Vec<_> = leaves
        .iter()
        .map(|l| (l.channel.as_str(), l.presence.client.as_str()))
        .collect();
    left.sort();
    assert_eq!(left, [("c1", "1"), ("c2", "2")]);
    assert_eq!(presence_clients(&s, "c1"), ["3"]);
    assert_eq!(presence_clients(&s, "c2"), Vec::<String>::new());
    assert_eq!(
        s.query(&Query::Channels {
            prefix: "c".into(),
            limit: 10
        }),
        QueryResult::Channels([("c1".to_string(), 1)].into())
    );
    assert_eq!(
        s.query(&Query::UserNodes { user: "u".into() }),
        QueryResult::UserNodes(vec!["b".into()])
    );
    // A batch from the removed edge is refused so it re-registers.
    assert_eq!(s.apply(&batch(&a, 2, vec![])), CommandResult::UnknownEdge);
}

#[test]
fn a_channels_query_returns_at_most_the_named_limit() {
    let mut s = State::default();
    let a = edge("a", 1);
    register(&mut s, &a);
    let n = MAX_CHANNELS_PER_QUERY as usize + 5;
    let deltas = (0..n)
        .map(|i| Delta::Subscribers {
            channel: format!("c{i:06}"),
            delta: 1,
        })
        .collect();
    s.apply(&batch(&a, 1, deltas));
    let count = |prefix: &str, limit| match s.query(&Query::Channels {
        prefix: prefix.into(),
        limit,
    }) {
        QueryResult::Channels(c) => c.len(),
        other => panic!("{other:?}"),
    };
    assert_eq!(count("", u32::MAX), MAX_CHANNELS_PER_QUERY as usize);
    assert_eq!(count("", 3), 3);
    assert_eq!(count("c00001", 100), 10, "prefix c00001x");
}

#[test]
fn a_new_incarnation_replaces_the_old_one() {
    let mut s = State::default();
    let old = edge("a", 1);
    register(&mut s, &old);
    s.apply(&batch(&old, 1, vec![join("c", "1", "u", 10)]));
    let CommandResult::Registered { leaves } = register(&mut s, &edge("a", 2)) else {
        panic!()
    };
    assert_eq!(leaves.len(), 1);
    assert!(presence_clients(&s, "c").is_empty());
    assert_eq!(s.apply(&batch(&old, 2, vec![])), CommandResult::UnknownEdge);
    // The new incarnation starts its own sequence.
    assert!(matches!(
        s.apply(&batch(&edge("a", 2), 1, vec![])),
        CommandResult::Batch { applied: true, .. }
    ));
}

#[test]
fn reset_replaces_the_edges_state_and_counts_never_go_negative() {
    let mut s = State::default();
    let a = edge("a", 1);
    register(&mut s, &a);
    s.apply(&batch(
        &a,
        1,
        vec![
            join("c", "1", "u", 10),
            Delta::Subscribers {
                channel: "c".into(),
                delta: -5,
            },
        ],
    ));
    assert_eq!(
        s.query(&Query::Channels {
            prefix: String::new(),
            limit: 10
        }),
        QueryResult::Channels(BTreeMap::new())
    );
    s.apply(&Command::Batch {
        edge: a.clone(),
        seq: 2,
        reset: true,
        deltas: vec![join("d", "2", "u", 10)],
    });
    assert!(presence_clients(&s, "c").is_empty());
    assert_eq!(presence_clients(&s, "d"), ["2"]);
}

fn subs(channel: &str, delta: i64) -> Delta {
    Delta::Subscribers {
        channel: channel.into(),
        delta,
    }
}

fn channel_events(s: &State, after: u64) -> Vec<(String, bool)> {
    events(s, after)
        .into_iter()
        .filter_map(|(kind, name, _)| match kind {
            EventKind::Occupied => Some((name, true)),
            EventKind::Vacated => Some((name, false)),
            _ => None,
        })
        .collect()
}

fn events(s: &State, after: u64) -> Vec<(EventKind, String, String)> {
    match s.query(&Query::Events { after }) {
        QueryResult::Events { events, .. } => events
            .into_iter()
            .map(|e| (e.kind, e.name, e.edge))
            .collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_channel_is_occupied_by_its_first_subscriber_anywhere_and_vacated_by_its_last() {
    let mut s = State::default();
    let (a, b) = (edge("a", 1), edge("b", 1));
    register(&mut s, &a);
    register(&mut s, &b);
    s.apply(&batch(&a, 1, vec![subs("c", 1)]));
    s.apply(&batch(&b, 1, vec![subs("c", 2)]));
    s.apply(&batch(&a, 2, vec![subs("c", -1)]));
    assert_eq!(channel_events(&s, 0), [("c".to_string(), true)]);
    s.apply(&batch(&b, 2, vec![subs("c", -2)]));
    assert_eq!(channel_events(&s, 1), [("c".to_string(), false)]);
    // Within one batch only the net change counts: on and off again is
    // nothing.
    s.apply(&batch(&a, 3, vec![subs("d", 1), subs("d", -1)]));
    assert!(channel_events(&s, 2).is_empty());
    // A resync (reset) that drops and re-adds what the edge held: none.
    s.apply(&batch(&a, 4, vec![subs("e", 1)]));
    assert_eq!(channel_events(&s, 2), [("e".to_string(), true)]);
    s.apply(&Command::Batch {
        edge: a.clone(),
        seq: 5,
        reset: true,
        deltas: vec![subs("e", 1), Delta::ResyncDone],
    });
    assert!(channel_events(&s, 3).is_empty());
    // A resync over several batches: what the first one drops and a
    // later one brings back is no change; what never comes back is
    // vacated at the end marker.
    s.apply(&batch(&a, 6, vec![subs("f", 1)]));
    assert_eq!(channel_events(&s, 3), [("f".to_string(), true)]);
    s.apply(&Command::Batch {
        edge: a.clone(),
        seq: 7,
        reset: true,
        deltas: vec![subs("e", 1)],
    });
    assert!(channel_events(&s, 4).is_empty(), "f waits for the end");
    s.apply(&batch(&a, 8, vec![subs("f", 1)]));
    s.apply(&Command::Batch {
        edge: a.clone(),
        seq: 9,
        reset: true,
        deltas: vec![subs("e", 1), subs("f", 1)],
    });
    s.apply(&batch(&a, 10, vec![Delta::ResyncDone]));
    assert!(channel_events(&s, 4).is_empty(), "f came back: nothing");
    s.apply(&Command::Batch {
        edge: a.clone(),
        seq: 11,
        reset: true,
        deltas: vec![subs("e", 1)],
    });
    s.apply(&batch(&a, 12, vec![Delta::ResyncDone]));
    assert_eq!(channel_events(&s, 4), [("f".to_string(), false)]);
    // An edge removed with the only subscribers: vacated.
    s.apply(&Command::Remove {
        edge: a.clone(),
        reason: RemoveReason::LeaseExpired,
    });
    assert_eq!(channel_events(&s, 5), [("e".to_string(), false)]);
    // The answer says what was missed; each event names its edge.
    match s.query(&Query::Events { after: 0 }) {
        QueryResult::Events {
            latest, complete, ..
        } => assert_eq!((latest, complete), (6, true)),
        other => panic!("{other:?}"),
    }
    let edges: Vec<String> = events(&s, 0).into_iter().map(|e| e.2).collect();
    assert_eq!(edges, ["a", "b", "a", "a", "a", "a"]);
}

#[test]
fn the_event_log_keeps_the_last_max_events_kept_and_says_what_was_missed() {
    let mut s = State::default();
    let a = edge("a", 1);
    register(&mut s, &a);
    // Each delta turns a channel on: one event each.
    let deltas: Vec<Delta> = (0..MAX_EVENTS_KEPT + 5)
        .map(|i| subs(&format!("c{i}"), 1))
        .collect();
    s.apply(&batch(&a, 1, deltas));
    match s.query(&Query::Events { after: 0 }) {
        QueryResult::Events {
            latest,
            events,
            complete,
        } => {
            assert_eq!(latest, (MAX_EVENTS_KEPT + 5) as u64);
            assert_eq!(events.len(), MAX_EVENTS_KEPT);
            assert_eq!(events[0].seq, 6, "the oldest five forgotten");
            assert!(!complete, "a poller after 0 missed some");
        }
        other => panic!("{other:?}"),
    }
    match s.query(&Query::Events { after: 5 }) {
        QueryResult::Events { complete, .. } => assert!(complete, "after 5: nothing missed"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn user_status_counts_connections_everywhere_and_keeps_the_last_seen_time() {
    let mut s = State::default();
    let (a, b) = (edge("a", 1), edge("b", 1));
    register(&mut s, &a);
    register(&mut s, &b);
    let conns = |user: &str, delta| Delta::Connections {
        user: user.into(),
        delta,
    };
    let seen = |user: &str, unix_ms| Delta::Seen {
        user: user.into(),
        unix_ms,
    };
    s.apply(&batch(&a, 1, vec![conns("u", 1), seen("u", 1000)]));
    s.apply(&batch(&b, 1, vec![conns("u", 2), seen("u", 2000)]));
    assert_eq!(events(&s, 0), [(EventKind::Online, "u".into(), "a".into())]);
    // An edge whose clock is behind does not move it back.
    s.apply(&batch(&a, 2, vec![conns("u", -1), seen("u", 1500)]));
    let status = |s: &State, users: &[&str]| match s.query(&Query::UserStatus {
        users: users.iter().map(|u| u.to_string()).collect(),
    }) {
        QueryResult::UserStatus(v) => v
            .into_iter()
            .map(|u| (u.user, u.connections, u.last_seen_ms))
            .collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        status(&s, &["u", "nobody"]),
        [("u".into(), 2, 2000), ("nobody".into(), 0, 0)]
    );
    // The other edge dies: offline, the last-seen time stays.
    s.apply(&Command::Remove {
        edge: b.clone(),
        reason: RemoveReason::LeaseExpired,
    });
    assert_eq!(status(&s, &["u"]), [("u".into(), 0, 2000)]);
    assert_eq!(
        events(&s, 1),
        [(EventKind::Offline, "u".into(), "b".into())]
    );
    // Bounded: past MAX_LAST_SEEN_USERS the oldest tenth is forgotten.
    let many: Vec<Delta> = (0..MAX_LAST_SEEN_USERS as u64)
        .map(|i| seen(&format!("user-{i}"), 10_000 + i))
        .collect();
    s.apply(&batch(&a, 3, many));
    assert_eq!(
        s.last_seen.len(),
        MAX_LAST_SEEN_USERS + 1 - MAX_LAST_SEEN_USERS / 10
    );
    assert_eq!(
        status(&s, &["u"]),
        [("u".into(), 0, 0)],
        "the oldest: forgotten"
    );
    let newest = format!("user-{}", MAX_LAST_SEEN_USERS - 1);
    assert_ne!(status(&s, &[newest.as_str()])[0].2, 0);
    // A query asks about at most MAX_USERS_PER_QUERY users.
    let asked: Vec<String> = (0..MAX_USERS_PER_QUERY + 5)
        .map(|i| i.to_string())
        .collect();
    match s.query(&Query::UserStatus { users: asked }) {
        QueryResult::UserStatus(v) => assert_eq!(v.len(), MAX_USERS_PER_QUERY),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_snapshot_from_the_first_release_is_read_with_the_new_fields_empty() {
    #[derive(Serialize)]
    struct V1<'a> {
        edges: &'a BTreeMap<String, EdgeState>,
        channels: &'a BTreeMap<String, ChannelState>,
        users: &'a BTreeMap<String, BTreeMap<String, u64>>,
        removals: &'a VecDeque<Removal>,
        removal_seq: u64,
    }
    let mut s = State::default();
    let a = edge("a", 1);
    register(&mut s, &a);
    s.apply(&batch(
        &a,
        1,
        vec![
            subs("c", 1),
            Delta::Connections {
                user: "u".into(),
                delta: 1,
            },
            join("c", "1", "u", 10),
        ],
    ));
    let old = crate::codec::encode(&V1 {
        edges: &s.edges,
        channels: &s.channels,
        users: &s.users,
        removals: &s.removals,
        removal_seq: s.removal_seq,
    })
    .unwrap();
    let read = State::decode_snapshot(&old).unwrap();
    assert_eq!(read.edges, s.edges);
    assert_eq!(read.channels, s.channels);
    assert_eq!(read.users, s.users);
    assert!(read.last_seen.is_empty() && read.events.is_empty());
    // And the current format round-trips as itself.
    let now = crate::codec::encode(&s).unwrap();
    assert_eq!(State::decode_snapshot(&now).unwrap(), s);
    assert!(State::decode_snapshot(b"garbage").is_err());
}
