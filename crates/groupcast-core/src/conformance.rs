//! The conformance suite every [`Broker`] implementation passes.
//!
//! Call [`run_all`] with a factory that returns a fresh broker (on fresh
//! channels): the in-memory broker runs it in its unit tests; backbone
//! implementations run it against a real server in their integration tests.
//! Each check panics with a message naming the broken contract point.

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
}

fn text(s: &str) -> Publication {
    Publication::new(Payload::Json(
        serde_json::value::RawValue::from_string(format!("\"{s}\""))
            .unwrap()
            .into(),
    ))
}

fn history_opts(size: usize) -> PublishOptions {
    PublishOptions {
        history_size: size,
        history_ttl: Duration::from_secs(60),
    }
}

fn unique(prefix: &str) -> String {
    format!("conf-{prefix}-{:x}", rand::random::<u64>())
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
    remove_history_keeps_position(make().await).await;
    plain_channels_have_no_offsets(make().await).await;
}

/// Offsets are 1, 2, 3... per channel; history returns them in order.
pub async fn offsets_and_history(b: Arc<dyn Broker>) {
    let ch = unique("offsets");
    let mut epoch = String::new();
    for i in 1..=5u64 {
        let pos = b
            .publish(&ch, text(&format!("m{i}")), &history_opts(10))
            .await
            .unwrap();
        assert_eq!(pos.offset, i, "offsets must be consecutive from 1");
        if i > 1 {
            assert_eq!(pos.epoch, epoch, "epoch must be stable within a stream");
        }
        epoch = pos.epoch;
    }
    assert!(!epoch.is_empty(), "a history stream has an epoch");
    let h = b.history(&ch, HistoryQuery::default()).await.unwrap();
    let offs: Vec<u64> = h.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offs, vec![1, 2, 3, 4, 5], "history in offset order");
    assert_eq!(
        h.position,
        StreamPosition {
            offset: 5,
            epoch: epoch.clone()
        }
    );
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
    let offs: Vec<u64> = h.publications.iter().map(|p| p.offset).collect();
    assert_eq!(
        offs,
        vec![5, 4],
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
    assert_eq!(h.position.offset, 5);
}

/// `since` reads after a position; size bounds the window; a foreign epoch is refused.
pub async fn history_window_and_epoch(b: Arc<dyn Broker>) {
    let ch = unique("window");
    let mut epoch = String::new();
    for i in 1..=8 {
        epoch = b
            .publish(&ch, text(&format!("m{i}")), &history_opts(3))
            .await
            .unwrap()
            .epoch;
    }
    let h = b.history(&ch, HistoryQuery::default()).await.unwrap();
    let offs: Vec<u64> = h.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offs, vec![6, 7, 8], "history keeps the newest history_size");
    let since = StreamPosition {
        offset: 6,
        epoch: epoch.clone(),
    };
    let h = b
        .history(
            &ch,
            HistoryQuery {
                since: Some(since),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let offs: Vec<u64> = h.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offs, vec![7, 8], "since returns only later publications");
    let since = StreamPosition {
        offset: 8,
        epoch: epoch.clone(),
    };
    let q = HistoryQuery {
        since: Some(since),
        limit: Some(10),
        reverse: true,
    };
    let offs: Vec<u64> = b
        .history(&ch, q)
        .await
        .unwrap()
        .publications
        .iter()
        .map(|p| p.offset)
        .collect();
    assert_eq!(
        offs,
        vec![7, 6],
        "reverse with since walks back from the position"
    );
    let foreign = StreamPosition {
        offset: 6,
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
}

/// Deliveries happen only between subscribe and unsubscribe.
pub async fn delivery_follows_interest(b: Arc<dyn Broker>) {
    let rec = Arc::new(Recorder::default());
    b.set_handler(rec.clone());
    let ch = unique("interest");
    b.publish(&ch, text("before"), &history_opts(10))
        .await
        .unwrap();
    b.subscribe(&ch).await.unwrap();
    b.publish(&ch, text("during"), &history_opts(10))
        .await
        .unwrap();
    let ev = rec.wait_for(1).await;
    b.unsubscribe(&ch).await.unwrap();
    b.publish(&ch, text("after"), &history_opts(10))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ev2 = rec.events();
    assert_eq!(
        ev,
        vec![Event::Pub {
            channel: ch.clone(),
            offset: 2,
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
            for i in 0..50 {
                b.publish(&ch, text(&format!("{t}-{i}")), &history_opts(1000))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let ev = rec.wait_for(200).await;
    let offs: Vec<u64> = ev
        .iter()
        .map(|e| match e {
            Event::Pub { offset, .. } => *offset,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        offs,
        (1..=200).collect::<Vec<_>>(),
        "deliveries in stored order, none lost"
    );
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

pub async fn remove_history_keeps_position(b: Arc<dyn Broker>) {
    let ch = unique("remove");
    let pos = b.publish(&ch, text("a"), &history_opts(10)).await.unwrap();
    b.remove_history(&ch).await.unwrap();
    let h = b.history(&ch, HistoryQuery::default()).await.unwrap();
    assert!(h.publications.is_empty(), "history removed");
    assert_eq!(h.position, pos, "position survives history_remove");
    let next = b.publish(&ch, text("b"), &history_opts(10)).await.unwrap();
    assert_eq!(
        next.offset,
        pos.offset + 1,
        "offsets continue after history_remove"
    );
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
