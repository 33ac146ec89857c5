//! The conformance suite every [`Broker`] implementation passes.
//!
//! Call [`run_all`] with a factory that returns a fresh broker (on fresh
//! channels): the in-memory broker runs it in its unit tests; backbone
//! implementations run it against a real server in their integration tests.
//! Each check panics with a message naming the broken contract point.
//! [`membership`] is the same for `Membership` implementations.

pub mod membership;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use groupcast_proto::client::ClientInfo;
use parking_lot::Mutex;

use crate::broker::{Broker, BrokerError, BrokerHandler, HistoryQuery, PublishOptions};
use crate::publication::{Payload, Publication, StreamPosition};

/// What a [`Recorder`] saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Pub {
        channel: String,
        offset: u64,
        data: String,
    },
    Join {
        channel: String,
        client: String,
    },
    Leave {
        channel: String,
        client: String,
    },
    Insufficient {
        channel: String,
    },
}

/// A handler that records every delivery.
#[derive(Default)]
pub struct Recorder {
    pub events: Mutex<Vec<Event>>,
}

impl Recorder {
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().clone()
    }

    /// Wait (bounded) until at least `n` events arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<Event> {
        for _ in 0..200 {
            if self.events.lock().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.events()
    }
}

impl BrokerHandler for Recorder {
    fn on_publication(&self, channel: &str, p: Arc<Publication>) {
        let data = p.data.to_json().get().to_string();
        self.events.lock().push(Event::Pub {
            channel: channel.into(),
            offset: p.offset,
            data,
        });
    }
    fn on_join(&self, channel: &str, info: Arc<ClientInfo>) {
        self.events.lock().push(Event::Join {
            channel: channel.into(),
            client: info.client.clone(),
        });
    }
    fn on_leave(&self, channel: &str, info: Arc<ClientInfo>) {
        self.events.lock().push(Event::Leave {
            channel: channel.into(),
            client: info.client.clone(),
        });
    }
    fn on_insufficient_state(&self, channel: &str) {
        self.events.lock().push(Event::Insufficient {
            channel: channel.into(),
        });
    }
}

fn text(s: &str) -> Publication {
    Publication::new(Payload::Json(
        serde_json::value::RawValue::from_string(format!("\"{s}\""))
            .unwrap()
            .into(),
    ))
}

/// History size every history check of the suite publishes with. A broker
/// whose streams are configured up front (JetStream) must give the suite's
/// channels (no namespace) these limits: [`history_options`].
pub const HISTORY_SIZE: usize = 5;

/// The publish options the suite uses for history channels.
pub fn history_options() -> PublishOptions {
    PublishOptions {
        history_size: HISTORY_SIZE,
        history_ttl: Duration::from_secs(60),
        idempotency_key: None,
    }
}

fn unique(prefix: &str) -> String {
    format!("conf-{prefix}-{:x}", rand::random::<u64>())
}

fn offsets(h: &crate::broker::HistoryResult) -> Vec<u64> {
    h.publications.iter().map(|p| p.offset).collect()
}

/// Run every check, each on a fresh broker from `make`.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Broker>>,
{
    offsets_and_history(make().await).await;
    history_window_and_epoch(make().await).await;
    delivery_follows_interest(make().await).await;
    order_under_concurrent_publishers(make().await).await;
    join_and_leave(make().await).await;
    remove_history_keeps_epoch(make().await).await;
    plain_channels_have_no_offsets(make().await).await;
}

/// Publish `n` publications "m1".."mn"; returns their positions.
async fn publish_n(b: &Arc<dyn Broker>, ch: &str, n: usize) -> Vec<StreamPosition> {
    let mut out = Vec::new();
    for i in 1..=n {
        let pos = b
            .publish(ch, text(&format!("m{i}")), &history_options())
            .await
            .unwrap();
        out.push(pos);
    }
    out
}

/// Offsets strictly increase per channel; history returns them in order.
pub async fn offsets_and_history(b: Arc<dyn Broker>) {
    let ch = unique("offsets");
    let pos = publish_n(&b, &ch, HISTORY_SIZE).await;
    let offs: Vec<u64> = pos.iter().map(|p| p.offset).collect();
    assert!(offs[0] > 0, "offsets start above 0");
    assert!(
        offs.windows(2).all(|w| w[0] < w[1]),
        "offsets strictly increase: {offs:?}"
    );
    let epoch = pos[0].epoch.clone();
    assert!(!epoch.is_empty(), "a history stream has an epoch");
    assert!(
        pos.iter().all(|p| p.epoch == epoch),
        "epoch must be stable within a stream"
    );
    let h = b.history(&ch, HistoryQuery::default()).await.unwrap();
    assert_eq!(offsets(&h), offs, "history in offset order");
    let data: Vec<String> = h
        .publications
        .iter()
        .map(|p| p.data.to_json().get().to_string())
        .collect();
    assert_eq!(data[0], "\"m1\"", "history keeps the data");
    assert_eq!(&h.position, pos.last().unwrap(), "position is the top");
    let h = b
        .history(
            &ch,
            HistoryQuery {
                limit: Some(2),
                reverse: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        offsets(&h),
        vec![offs[4], offs[3]],
        "reverse with limit gives the newest first"
    );
    let h = b
        .history(
            &ch,
            HistoryQuery {
                limit: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(
        h.publications.is_empty(),
        "limit 0 returns only the position"
    );
    assert_eq!(h.position.offset, offs[4]);
    let fresh = b.history(&unique("fresh"), HistoryQuery::default()).await;
    let fresh = fresh.unwrap();
    assert!(fresh.publications.is_empty(), "an unused channel is empty");
    assert_eq!(fresh.position.offset, 0, "an unused channel is at offset 0");
}

/// `since` reads after a position and says whether the read is complete;
/// size bounds the window; a foreign epoch is refused.
pub async fn history_window_and_epoch(b: Arc<dyn Broker>) {
    let ch = unique("window");
    let pos = publish_n(&b, &ch, HISTORY_SIZE + 3).await;
    let offs: Vec<u64> = pos.iter().map(|p| p.offset).collect();
    let epoch = pos[0].epoch.clone();
    let h = b.history(&ch, HistoryQuery::default()).await.unwrap();
    assert_eq!(
        offsets(&h),
        offs[3..],
        "history keeps the newest history_size"
    );
    let since = |i: usize| HistoryQuery {
        since: Some(pos[i].clone()),
        ..Default::default()
    };
    let h = b.history(&ch, since(5)).await.unwrap();
    assert_eq!(
        offsets(&h),
        offs[6..],
        "since returns only later publications"
    );
    assert!(h.complete, "a read from a kept position is complete");
    let h = b.history(&ch, since(7)).await.unwrap();
    assert!(h.publications.is_empty(), "nothing after the top");
    assert!(h.complete, "a read from the top is complete");
    let h = b.history(&ch, since(0)).await.unwrap();
    assert!(
        !h.complete,
        "publications after the position were trimmed: not complete"
    );
    let q = HistoryQuery {
        since: Some(pos[7].clone()),
        limit: Some(10),
        reverse: true,
    };
    let h = b.history(&ch, q).await.unwrap();
    let mut back = offs[3..7].to_vec();
    back.reverse();
    assert_eq!(
        offsets(&h),
        back,
        "reverse with since walks back from the position"
    );
    let foreign = StreamPosition {
        offset: offs[5],
        epoch: format!("{epoch}x"),
    };
    let err = b
        .history(
            &ch,
            HistoryQuery {
                since: Some(foreign),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        err,
        BrokerError::UnrecoverablePosition,
        "foreign epoch must be refused"
    );
    // An empty epoch is "any epoch" (Centrifugo's rule: an SDK without a
    // saved position asks with `epoch: ""`): the read works from the offset.
    let any = |offset: u64| HistoryQuery {
        since: Some(StreamPosition {
            offset,
            epoch: String::new(),
        }),
        ..Default::default()
    };
    let h = b.history(&ch, any(offs[5])).await.unwrap();
    assert_eq!(offsets(&h), offs[6..], "empty epoch matches");
    assert!(h.complete);
    assert_eq!(h.position.epoch, epoch, "the answer names the real epoch");
    let h = b.history(&ch, any(0)).await.unwrap();
    assert_eq!(offsets(&h), offs[3..], "from 0: what is kept");
    assert!(!h.complete, "from 0 after trimming: not complete");
}

/// Deliveries happen only between subscribe and unsubscribe.
pub async fn delivery_follows_interest(b: Arc<dyn Broker>) {
    let rec = Arc::new(Recorder::default());
    b.set_handler(rec.clone());
    let ch = unique("interest");
    b.publish(&ch, text("before"), &history_options())
        .await
        .unwrap();
    b.subscribe(&ch).await.unwrap();
    let during = b
        .publish(&ch, text("during"), &history_options())
        .await
        .unwrap();
    let ev = rec.wait_for(1).await;
    b.unsubscribe(&ch).await.unwrap();
    b.publish(&ch, text("after"), &history_options())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ev2 = rec.events();
    assert_eq!(
        ev,
        vec![Event::Pub {
            channel: ch.clone(),
            offset: during.offset,
            data: "\"during\"".into()
        }],
        "only the publication made while subscribed is delivered"
    );
    assert_eq!(ev, ev2, "nothing is delivered after unsubscribe");
}

/// Concurrent publishers: every delivery on a channel arrives in offset order.
pub async fn order_under_concurrent_publishers(b: Arc<dyn Broker>) {
    let rec = Arc::new(Recorder::default());
    b.set_handler(rec.clone());
    let ch = unique("order");
    b.subscribe(&ch).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..4 {
        let (b, ch) = (b.clone(), ch.clone());
        tasks.push(tokio::spawn(async move {
            let mut offs = Vec::new();
            for i in 0..50 {
                let pos = b
                    .publish(&ch, text(&format!("{t}-{i}")), &history_options())
                    .await
                    .unwrap();
                offs.push(pos.offset);
            }
            offs
        }));
    }
    let mut published = Vec::new();
    for t in tasks {
        published.extend(t.await.unwrap());
    }
    published.sort_unstable();
    let ev = rec.wait_for(200).await;
    let offs: Vec<u64> = ev
        .iter()
        .map(|e| match e {
            Event::Pub { offset, .. } => *offset,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(offs, published, "deliveries in stored order, none lost");
    b.unsubscribe(&ch).await.unwrap();
}

pub async fn join_and_leave(b: Arc<dyn Broker>) {
    let rec = Arc::new(Recorder::default());
    b.set_handler(rec.clone());
    let ch = unique("presence");
    b.subscribe(&ch).await.unwrap();
    let info = Arc::new(ClientInfo {
        user: "u".into(),
        client: "c1".into(),
        ..Default::default()
    });
    b.publish_join(&ch, info.clone()).await.unwrap();
    b.publish_leave(&ch, info).await.unwrap();
    let ev = rec.wait_for(2).await;
    assert_eq!(
        ev,
        vec![
            Event::Join {
                channel: ch.clone(),
                client: "c1".into()
            },
            Event::Leave {
                channel: ch.clone(),
                client: "c1".into()
            }
        ]
    );
}

/// `remove_history` empties the history; the epoch stays and later offsets
/// are still above every earlier one.
pub async fn remove_history_keeps_epoch(b: Arc<dyn Broker>) {
    let ch = unique("remove");
    let pos = b.publish(&ch, text("a"), &history_options()).await.unwrap();
    b.remove_history(&ch).await.unwrap();
    let h = b.history(&ch, HistoryQuery::default()).await.unwrap();
    assert!(h.publications.is_empty(), "history removed");
    assert_eq!(h.position.epoch, pos.epoch, "epoch survives history_remove");
    assert!(
        h.position.offset <= pos.offset,
        "position never moves ahead"
    );
    let next = b.publish(&ch, text("b"), &history_options()).await.unwrap();
    assert!(
        next.offset > pos.offset,
        "offsets keep increasing after history_remove"
    );
    assert_eq!(next.epoch, pos.epoch);
}

pub async fn plain_channels_have_no_offsets(b: Arc<dyn Broker>) {
    let rec = Arc::new(Recorder::default());
    b.set_handler(rec.clone());
    let ch = unique("plain");
    b.subscribe(&ch).await.unwrap();
    let pos = b
        .publish(&ch, text("x"), &PublishOptions::default())
        .await
        .unwrap();
    assert_eq!(pos.offset, 0, "no history: no offset");
    let ev = rec.wait_for(1).await;
    assert_eq!(
        ev,
        vec![Event::Pub {
            channel: ch.clone(),
            offset: 0,
            data: "\"x\"".into()
        }]
    );
}
