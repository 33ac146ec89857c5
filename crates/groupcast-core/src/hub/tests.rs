//! The hub's fan-out, ordering, recovery merge and delta bases.

use super::*;
use crate::publication::Payload;
use bytes::Bytes;

struct Sink {
    id: u64,
    kind: SubscriberKind,
    got: Mutex<Vec<Bytes>>,
    /// Whether the relay frame was already encoded when pushed.
    relay_encoded: Mutex<Vec<bool>>,
    insufficient: Mutex<Vec<String>>,
}
impl Subscriber for Sink {
    fn id(&self) -> u64 {
        self.id
    }
    fn client(&self) -> &str {
        match self.id {
            1 => "client-1",
            _ => "client-other",
        }
    }
    fn kind(&self) -> SubscriberKind {
        self.kind
    }
    fn push(&self, push: &PreparedPush) {
        self.relay_encoded.lock().push(push.relay.get().is_some());
        let b = match self.kind {
            SubscriberKind::Protocol => push.json().clone(),
            SubscriberKind::Relay => push.relay().unwrap().0.clone(),
            SubscriberKind::SocketIo => {
                // Join and leave have no Socket.IO form: not delivered.
                let Some(p) = push.socketio() else { return };
                let event = p.event.as_deref().unwrap_or("-");
                Bytes::from(format!(
                    "{event}|{}|{}",
                    std::str::from_utf8(&p.args).unwrap(),
                    p.binary
                ))
            }
        };
        self.got.lock().push(b);
    }
    fn insufficient_state(&self, channel: &str) -> bool {
        self.insufficient.lock().push(channel.to_string());
        // As the edge: a relay connection goes on, the others recover.
        self.kind != SubscriberKind::Relay
    }
}
fn sink(id: u64, kind: SubscriberKind) -> Arc<Sink> {
    Arc::new(Sink {
        id,
        kind,
        got: Mutex::new(Vec::new()),
        relay_encoded: Mutex::new(Vec::new()),
        insufficient: Mutex::new(Vec::new()),
    })
}
fn publication(offset: u64, text: &str, origin: Option<u64>) -> Arc<Publication> {
    let mut p = Publication::new(Payload::from_text(text));
    p.offset = offset;
    p.origin = origin;
    Arc::new(p)
}

/// Records what a delta subscription is handed: (delta?, push bytes).
struct DeltaSink {
    id: u64,
    got: Mutex<Vec<(bool, Bytes)>>,
}
impl Subscriber for DeltaSink {
    fn id(&self) -> u64 {
        self.id
    }
    fn kind(&self) -> SubscriberKind {
        SubscriberKind::Protocol
    }
    fn push(&self, push: &PreparedPush) {
        self.got.lock().push((false, push.json().clone()));
    }
    fn push_delta(&self, push: &PreparedPush, delta: bool) {
        let b = match delta.then(|| push.delta_push(false)).flatten() {
            Some(d) => (true, d.clone()),
            None => (false, push.full_for_delta(false).clone()),
        };
        self.got.lock().push(b);
    }
    fn insufficient_state(&self, _: &str) -> bool {
        true
    }
}

/// The `pub.data` of a JSON push, and its `delta` flag.
fn pub_data(b: &[u8]) -> (serde_json::Value, bool) {
    let v: serde_json::Value = serde_json::from_slice(b).unwrap();
    let p = &v["push"]["pub"];
    (p["data"].clone(), p["delta"] == true)
}

#[test]
fn a_delta_subscription_gets_the_first_publication_full_then_deltas_that_apply() {
    let hub = Hub::default();
    let d = Arc::new(DeltaSink {
        id: 7,
        got: Mutex::new(Vec::new()),
    });
    let plain = sink(8, SubscriberKind::Protocol);
    hub.add_with_delta("w", d.clone(), false, true);
    hub.add("w", plain.clone(), false);
    // A world state where each publication moves one entity.
    let state = |n: u64| {
        let xs: Vec<String> = (0..50u64)
            .map(|i| format!("{{\"id\":{i},\"x\":{}}}", if i == n { n * 1000 } else { i }))
            .collect();
        format!("[{}]", xs.join(","))
    };
    for n in 1..=3 {
        hub.on_publication("w", publication(n, &state(n), None));
    }
    let got = d.got.lock().clone();
    // First: full, as a JSON string holding the JSON text.
    let (data, delta) = pub_data(&got[0].1);
    assert!(!delta);
    assert_eq!(data.as_str().unwrap(), state(1));
    // Then deltas, smaller, that rebuild the data from the previous one.
    let mut prev = state(1).into_bytes();
    for (i, (is_delta, bytes)) in got.iter().enumerate().skip(1) {
        let (data, delta) = pub_data(bytes);
        assert!(*is_delta && delta, "publication {} as a delta", i + 1);
        let d = data.as_str().unwrap().as_bytes().to_vec();
        assert!(d.len() < prev.len() / 2, "a delta is small: {}", d.len());
        let next = fossil_delta::apply(&prev, &d).unwrap();
        assert_eq!(
            String::from_utf8(next.clone()).unwrap(),
            state(i as u64 + 1)
        );
        prev = next;
    }
    // The plain subscriber got plain pushes of the same publications.
    let plain_got = plain.got.lock().clone();
    assert_eq!(plain_got.len(), 3);
    assert!(pub_data(&plain_got[2]).0.is_array());
    // A subscription that joins later has no base: its first
    // publication is full, the next a delta.
    let late = Arc::new(DeltaSink {
        id: 9,
        got: Mutex::new(Vec::new()),
    });
    hub.add_with_delta("w", late.clone(), false, true);
    hub.on_publication("w", publication(4, &state(4), None));
    hub.on_publication("w", publication(5, &state(5), None));
    let got = late.got.lock().clone();
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), [false, true]);
    assert_eq!(pub_data(&got[0].1).0.as_str().unwrap(), state(4));
}

/// The offset of a channel's kept delta base.
fn base_of(hub: &Hub, channel: &str) -> Option<u64> {
    hub.get(channel)?.lock().base.as_ref().map(|b| b.0)
}

#[test]
fn only_channels_with_a_delta_subscription_keep_a_base() {
    let hub = Hub::default();
    let plain = sink(1, SubscriberKind::Protocol);
    hub.add("c", plain.clone(), false);
    hub.on_publication("c", publication(1, "{}", None));
    assert!(
        base_of(&hub, "c").is_none(),
        "no delta subscription: no payload kept"
    );
    let d = Arc::new(DeltaSink {
        id: 2,
        got: Mutex::new(Vec::new()),
    });
    hub.add_with_delta("c", d.clone(), false, true);
    hub.on_publication("c", publication(2, "{}", None));
    assert_eq!(base_of(&hub, "c"), Some(2));
    hub.remove("c", 2);
    assert!(
        base_of(&hub, "c").is_none(),
        "gone with the last delta subscription"
    );
    assert_eq!(hub.remove("c", 1), RemoveOutcome::Last);
}

#[test]
fn an_excluded_client_is_left_out_of_the_fan_out_only() {
    let hub = Hub::default();
    let (a, b) = (
        sink(1, SubscriberKind::Protocol),
        sink(2, SubscriberKind::Protocol),
    );
    hub.add("c", a.clone(), false);
    hub.add("c", b.clone(), false);
    let mut p = Publication::new(Payload::from_text("{}"));
    p.offset = 1;
    p.exclude_client = Some(Arc::from("client-1"));
    hub.on_publication("c", Arc::new(p));
    hub.on_publication("c", publication(2, "{}", None));
    assert_eq!(a.got.lock().len(), 1, "client-1 got only the second");
    assert_eq!(b.got.lock().len(), 2, "the others get both");
}

#[test]
fn encodes_once_and_shares_bytes() {
    let hub = Hub::default();
    let (a, b) = (
        sink(1, SubscriberKind::Protocol),
        sink(2, SubscriberKind::Protocol),
    );
    assert_eq!(hub.add("c", a.clone(), false), AddOutcome::First);
    assert_eq!(hub.add("c", b.clone(), false), AddOutcome::Added);
    assert_eq!(
        hub.add("c", b.clone(), false),
        AddOutcome::AlreadySubscribed
    );
    hub.on_publication("c", publication(1, "{}", None));
    let (ga, gb) = (a.got.lock()[0].clone(), b.got.lock()[0].clone());
    assert_eq!(
        ga.as_ptr(),
        gb.as_ptr(),
        "one encoding shared by subscribers"
    );
    assert_eq!(
        *b.relay_encoded.lock(),
        [false],
        "no relay frame is encoded for protocol subscribers"
    );
}

#[test]
fn relay_origin_is_not_echoed_and_gets_no_join() {
    let hub = Hub::default();
    let (r1, r2, p) = (
        sink(1, SubscriberKind::Relay),
        sink(2, SubscriberKind::Relay),
        sink(3, SubscriberKind::Protocol),
    );
    for s in [r1.clone(), r2.clone(), p.clone()] {
        hub.add("relay", s, false);
    }
    hub.on_publication("relay", publication(0, "hello", Some(1)));
    hub.on_join("relay", Arc::new(ClientInfo::default()));
    assert!(
        r1.got.lock().is_empty(),
        "sender does not get its own frame"
    );
    assert_eq!(&r2.got.lock()[..], &[Bytes::from_static(b"hello")]);
    assert_eq!(p.got.lock().len(), 2, "protocol sub gets pub and join");
}

/// A publication as a Socket.IO event: a `sio_event` tag names the event and its data is
/// the argument list; without it, the data is the one argument (of the namespace's default
/// event); binary data is one `$binary` argument.
#[test]
fn socketio_subscribers_get_events() {
    let hub = Hub::default();
    let s = sink(1, SubscriberKind::SocketIo);
    hub.add("room", s.clone(), false);
    let mut named = Publication::new(crate::Payload::from_text(r#"[1, {"a":2}]"#));
    named
        .tags
        .insert(super::TAG_SIO_EVENT.into(), "news".into());
    hub.on_publication("room", Arc::new(named));
    let plain = Publication::new(crate::Payload::from_text(r#"{"text":"hi"}"#));
    hub.on_publication("room", Arc::new(plain));
    let binary = Publication::new(crate::Payload::Binary(Bytes::from_static(&[1, 2])));
    hub.on_publication("room", Arc::new(binary));
    hub.on_join("room", Arc::new(ClientInfo::default()));
    let got: Vec<_> = s
        .got
        .lock()
        .iter()
        .map(|b| String::from_utf8(b.to_vec()).unwrap())
        .collect();
    assert_eq!(
        got,
        [
            r#"news|1, {"a":2}|false"#,
            r#"-|{"text":"hi"}|false"#,
            r#"-|{"$binary":"AQI="}|true"#,
        ],
        "no join for Socket.IO subscribers"
    );
}

#[test]
fn buffering_merges_without_gap_or_duplicate() {
    let hub = Hub::default();
    let s = sink(1, SubscriberKind::Relay);
    hub.add("c", s.clone(), true);
    for off in 3..=6 {
        hub.on_publication("c", publication(off, &off.to_string(), None));
    }
    // History covered up to offset 4; the reply goes first.
    hub.finish_buffering("c", 1, 4, || {
        s.got.lock().push(Bytes::from_static(b"reply"))
    })
    .unwrap();
    hub.on_publication("c", publication(6, "6", None)); // duplicate
    hub.on_publication("c", publication(7, "7", None));
    let got: Vec<_> = s
        .got
        .lock()
        .iter()
        .map(|b| String::from_utf8(b.to_vec()).unwrap())
        .collect();
    assert_eq!(got, ["reply", "5", "6", "7"]);
}

#[test]
fn buffer_overflow_is_reported() {
    let hub = Hub::default();
    let s = sink(1, SubscriberKind::Relay);
    hub.add("c", s.clone(), true);
    for off in 1..=(MAX_RECOVERY_BUFFER as u64 + 1) {
        hub.on_publication("c", publication(off, "x", None));
    }
    assert_eq!(
        hub.finish_buffering("c", 1, 0, || panic!("not run")),
        Err(BufferOverflow)
    );
}

#[test]
fn remove_reports_last_subscriber() {
    let hub = Hub::default();
    hub.add("c", sink(1, SubscriberKind::Relay), false);
    hub.add("c", sink(2, SubscriberKind::Relay), false);
    assert_eq!(hub.remove("c", 1), RemoveOutcome::Removed);
    assert_eq!(hub.remove("c", 1), RemoveOutcome::NotSubscribed);
    assert_eq!(hub.remove("c", 2), RemoveOutcome::Last);
    assert_eq!(hub.num_channels(), 0);
}

#[test]
fn insufficient_state_restarts_live_and_recovering_subscribers() {
    let hub = Hub::default();
    let live = sink(1, SubscriberKind::Protocol);
    let recovering = sink(2, SubscriberKind::Protocol);
    let other = sink(3, SubscriberKind::Protocol);
    hub.add("c", live.clone(), false);
    hub.add("c", recovering.clone(), true);
    hub.add("d", other.clone(), false);
    hub.on_insufficient_state("c");
    assert_eq!(*live.insufficient.lock(), ["c"], "live one told once");
    assert_eq!(
        hub.finish_buffering("c", 2, 0, || panic!("not run")),
        Err(BufferOverflow),
        "a recovering one must restart its recovery"
    );
    assert!(
        other.insufficient.lock().is_empty(),
        "other channels untouched"
    );
}

#[test]
fn a_subscriber_told_insufficient_state_gets_nothing_after_the_hole() {
    let hub = Hub::default();
    let client = sink(1, SubscriberKind::Protocol);
    let relay = sink(2, SubscriberKind::Relay);
    hub.add("c", client.clone(), false);
    hub.add("c", relay.clone(), false);
    hub.on_publication("c", publication(1, "one", None));
    // Offsets 2..4 were lost; the broker says so, then delivers 5.
    hub.on_insufficient_state("c");
    hub.on_publication("c", publication(5, "five", None));
    assert_eq!(
        client.got.lock().len(),
        1,
        "the client must not see 5 before it resubscribes: its position would skip 2..4"
    );
    assert_eq!(relay.got.lock().len(), 2, "a relay connection goes on");
    // Its session removes it (the unsubscribe push); a new subscription is live.
    assert_eq!(hub.remove("c", 1), RemoveOutcome::Removed);
    hub.add("c", client.clone(), false);
    hub.on_publication("c", publication(6, "six", None));
    assert_eq!(client.got.lock().len(), 2);
    // Resumed instead (it goes on without recovering): live from the next one.
    hub.on_insufficient_state("c");
    hub.on_publication("c", publication(8, "eight", None));
    assert!(hub.resume("c", 1));
    assert!(!hub.resume("c", 1), "only a held subscription resumes");
    hub.on_publication("c", publication(9, "nine", None));
    assert_eq!(client.got.lock().len(), 3);
}

// Joins and leaves at scale: coalescing and the ceiling.

fn limits(coalesce_from: usize, coalesce_ms: u64, max_subscribers: usize) -> JoinLeaveLimitsFn {
    Arc::new(move |_: &str| JoinLeaveLimits {
        coalesce_from,
        coalesce: std::time::Duration::from_millis(coalesce_ms),
        max_subscribers,
    })
}

fn user(name: &str) -> Arc<ClientInfo> {
    Arc::new(ClientInfo {
        user: name.into(),
        client: format!("c-{name}"),
        ..Default::default()
    })
}

/// What a sink got, one entry per push handed to it: the pushes it
/// holds as `join:<user>`, `leave:<user>` or `pub:<data>`.
fn seen(s: &Sink) -> Vec<Vec<String>> {
    s.got
        .lock()
        .iter()
        .map(|frame| {
            std::str::from_utf8(frame)
                .unwrap()
                .split('\n')
                .map(|line| {
                    let v: serde_json::Value = serde_json::from_str(line).unwrap();
                    let v = &v["push"];
                    if let Some(j) = v.get("join") {
                        format!("join:{}", j["info"]["user"].as_str().unwrap())
                    } else if let Some(l) = v.get("leave") {
                        format!("leave:{}", l["info"]["user"].as_str().unwrap())
                    } else {
                        format!("pub:{}", v["pub"]["data"])
                    }
                })
                .collect()
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn gathered_joins_and_leaves_go_as_one_frame_in_order() {
    let hub = Hub::default();
    hub.set_join_leave_limits(limits(2, 50, 100));
    let (a, b) = (
        sink(1, SubscriberKind::Protocol),
        sink(2, SubscriberKind::Protocol),
    );
    hub.add("room", a.clone(), false);
    hub.add("room", b.clone(), false);
    for i in 0..5 {
        hub.on_join("room", user(&format!("u{i}")));
    }
    hub.on_leave("room", user("u1"));
    assert!(a.got.lock().is_empty(), "gathered, not sent yet");
    tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    let want: Vec<String> = [
        "join:u0", "join:u1", "join:u2", "join:u3", "join:u4", "leave:u1",
    ]
    .map(String::from)
    .into();
    assert_eq!(
        seen(&a),
        vec![want.clone()],
        "one frame, every push, in order"
    );
    assert_eq!(seen(&b), vec![want]);
    assert_eq!(
        a.got.lock()[0].as_ptr(),
        b.got.lock()[0].as_ptr(),
        "encoded once, shared"
    );
    // The same frame in protobuf: the pushes one after the other.
    let push = PreparedPush::new(
        "room",
        PushKind::Batch {
            batch: Arc::new(JoinLeaveBatch::new(vec![
                PushKind::Join(user("x")),
                PushKind::Leave(user("y")),
            ])),
            skip: 0,
        },
    );
    let mut one_by_one = groupcast_proto::protobuf::encode_join_push("room", &user("x"));
    one_by_one.extend(groupcast_proto::protobuf::encode_leave_push(
        "room",
        &user("y"),
    ));
    assert_eq!(push.protobuf()[..], one_by_one[..]);
    assert_eq!(
        push.push_type(),
        PushType::JoinLeave {
            joins: 1,
            leaves: 1
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_publication_sends_the_gathered_joins_before_it() {
    let hub = Hub::default();
    hub.set_join_leave_limits(limits(1, 50, 100));
    let a = sink(1, SubscriberKind::Protocol);
    hub.add("room", a.clone(), false);
    hub.on_join("room", user("u0"));
    hub.on_publication("room", publication(0, "1", None));
    hub.on_leave("room", user("u0"));
    tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    assert_eq!(
        seen(&a),
        vec![
            vec!["join:u0".to_string()],
            vec!["pub:1".into()],
            vec!["leave:u0".into()]
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_added_while_gathering_gets_the_joins_from_its_own_on() {
    let hub = Hub::default();
    hub.set_join_leave_limits(limits(1, 50, 100));
    let (a, c) = (
        sink(1, SubscriberKind::Protocol),
        sink(3, SubscriberKind::Protocol),
    );
    hub.add("room", a.clone(), false);
    hub.on_join("room", user("a"));
    hub.add("room", c.clone(), false);
    hub.on_join("room", user("c"));
    tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    assert_eq!(seen(&a), vec![vec!["join:a".to_string(), "join:c".into()]]);
    assert_eq!(
        seen(&c),
        vec![vec!["join:c".to_string()]],
        "not the join before it"
    );
    // Its frame is the tail of the same bytes.
    let (fa, fc) = (a.got.lock()[0].clone(), c.got.lock()[0].clone());
    assert_eq!(
        fa.as_ptr() as usize + fa.len() - fc.len(),
        fc.as_ptr() as usize
    );
}

#[tokio::test(start_paused = true)]
async fn below_coalesce_from_each_join_goes_at_once() {
    let hub = Hub::default();
    hub.set_join_leave_limits(limits(3, 50, 100));
    let (a, b) = (
        sink(1, SubscriberKind::Protocol),
        sink(2, SubscriberKind::Protocol),
    );
    hub.add("room", a.clone(), false);
    hub.add("room", b.clone(), false);
    hub.on_join("room", user("u0"));
    assert_eq!(a.got.lock().len(), 1, "not gathered: no time passed");
    hub.on_leave("room", user("u0"));
    assert_eq!(
        seen(&a),
        vec![vec!["join:u0".to_string()], vec!["leave:u0".into()]]
    );
}

#[tokio::test(start_paused = true)]
async fn no_more_than_max_coalesced_wait() {
    let hub = Hub::default();
    hub.set_join_leave_limits(limits(1, 1000, 100));
    let a = sink(1, SubscriberKind::Protocol);
    hub.add("room", a.clone(), false);
    for i in 0..MAX_COALESCED + 1 {
        hub.on_join("room", user(&format!("u{i}")));
    }
    // Full: sent without waiting for the timer.
    let frames = seen(&a);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].len(), MAX_COALESCED);
    tokio::time::sleep(std::time::Duration::from_millis(1001)).await;
    assert_eq!(seen(&a)[1], vec![format!("join:u{MAX_COALESCED}")]);
}

#[tokio::test(start_paused = true)]
async fn above_the_ceiling_no_joins_until_back_to_half() {
    let hub = Hub::default();
    hub.set_join_leave_limits(limits(1, 50, 4));
    let subs: Vec<_> = (1..=5).map(|i| sink(i, SubscriberKind::Protocol)).collect();
    for s in &subs[..4] {
        hub.add("room", s.clone(), false);
    }
    hub.on_join("room", user("below"));
    // The fifth passes the ceiling: what was gathered goes out first.
    hub.add("room", subs[4].clone(), false);
    assert_eq!(seen(&subs[0]), vec![vec!["join:below".to_string()]]);
    hub.on_join("room", user("above"));
    hub.on_leave("room", user("above"));
    tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    assert!(subs[4].got.lock().is_empty(), "nothing above the ceiling");
    assert_eq!(subs[0].got.lock().len(), 1);
    // Publications still go.
    hub.on_publication("room", publication(0, "1", None));
    assert_eq!(seen(&subs[4]), vec![vec!["pub:1".to_string()]]);
    // At the ceiling, and at 3, still off; at 2 (half) on again.
    hub.remove("room", 5);
    hub.remove("room", 4);
    hub.on_join("room", user("at3"));
    tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    assert_eq!(subs[0].got.lock().len(), 2, "the publication only");
    hub.remove("room", 3);
    hub.on_join("room", user("back"));
    tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    assert_eq!(
        seen(&subs[0]).last().unwrap(),
        &vec!["join:back".to_string()]
    );
}
