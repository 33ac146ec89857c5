//! The queue in front of a batched, signed sender (webhooks and HTTP relay
//! targets): bounded in events and in bytes, and shared out between the
//! clients that fill it, so that one of them cannot take it all.
//!
//! Every event has an **owner**: the connection that made it (HTTP relay
//! targets), or the client, or for channel events the channel (webhooks).
//! The queue takes an event while it holds fewer than `max_events` events
//! and, with it, at most `max_bytes` bytes of events' JSON (an empty queue
//! takes any one event). Bytes count until the POST carrying them is done
//! (sent or given up), events until the sender takes them into a batch.
//!
//! When it is full, the owners holding events split it: an owner's
//! **share** is each bound divided by their number (the owner offering an
//! event included). An owner within its share after the event, or holding
//! nothing, may take room from the owner holding the most over its share:
//! with [`Eviction::Whole`] every queued event of that owner is dropped and
//! the owner is told (a relay connection is then closed); with
//! [`Eviction::Newest`] its newest events are dropped, as many as needed
//! (webhooks). Events marked `keep` (a relay connection's `leave`) are
//! never dropped for room. Otherwise the event is refused: the caller
//! drops it (webhooks) or waits for room (relay connections, up to the
//! target's `timeout`).
//!
//! Why not a channel: making room for a newcomer means taking back events
//! already queued by the owner over its share, which a channel cannot.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::value::RawValue;
use tokio::sync::Notify;

/// Who an event belongs to (a connection id, a hash of a client id).
pub(crate) type OwnerId = u64;

/// What happens to the queued events of the owner most over its share
/// when an owner within its share needs room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Eviction {
    /// All of them are dropped and the owner is told ([`Owner`]).
    Whole,
    /// Its newest ones are dropped, one at a time, until the event fits.
    Newest,
}

/// An owner that is told when its events are dropped for room
/// ([`Eviction::Whole`]): a relay connection, which is then closed.
pub(crate) struct Owner {
    pub id: OwnerId,
    evicted: AtomicBool,
    on_evict: Box<dyn Fn() + Send + Sync>,
}

impl Owner {
    pub(crate) fn new(id: OwnerId, on_evict: impl Fn() + Send + Sync + 'static) -> Arc<Owner> {
        Arc::new(Owner {
            id,
            evicted: AtomicBool::new(false),
            on_evict: Box::new(on_evict),
        })
    }

    /// Whether its events were dropped to make room for another owner's.
    pub(crate) fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }
}

/// One queued event.
pub(crate) struct Item {
    pub owner: OwnerId,
    /// The event's type, for the metrics.
    pub kind: &'static str,
    /// Never dropped to make room (a relay connection's `leave`), and
    /// queued even after its owner was evicted.
    pub keep: bool,
    pub event: Box<RawValue>,
}

impl Item {
    pub(crate) fn bytes(&self) -> usize {
        self.event.get().len()
    }
}

/// Why an event was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// No room, and none could be taken from an owner over its share.
    Full,
    /// Its owner's events were dropped to make room for another owner's.
    Evicted,
}

/// What an owner holds.
#[derive(Default)]
struct Usage {
    /// Queued and being sent.
    bytes: usize,
    /// Queued.
    events: usize,
    /// Queued and not `keep`: what eviction can drop.
    droppable: usize,
    owner: Option<Arc<Owner>>,
}

#[derive(Default)]
struct Inner {
    items: VecDeque<Item>,
    /// Queued and being sent.
    bytes: usize,
    usage: HashMap<OwnerId, Usage>,
    closed: bool,
}

/// What making room dropped: reported once the lock is released.
#[derive(Default)]
struct Dropped {
    kinds: Vec<&'static str>,
    owners: Vec<Arc<Owner>>,
}

/// The queue; see the module documentation.
pub(crate) struct Queue {
    inner: Mutex<Inner>,
    /// An event was queued (the sender waits for it).
    pushed: Notify,
    /// Room was made (producers waiting for room wait for it).
    room: Notify,
    max_events: usize,
    max_bytes: usize,
    eviction: Eviction,
    /// Counter of events by `event` and `outcome`: drops count as
    /// `dropped`.
    events_metric: &'static str,
}

/// What the sender gets from [`Queue::next`].
pub(crate) enum Next {
    Item(Item),
    /// The next event is larger than the room asked for.
    TooLarge,
    /// Every producer is gone and nothing is left.
    Closed,
}

impl Queue {
    pub(crate) fn new(
        max_events: usize,
        max_bytes: usize,
        eviction: Eviction,
        events_metric: &'static str,
    ) -> Queue {
        Queue {
            inner: Mutex::new(Inner::default()),
            pushed: Notify::new(),
            room: Notify::new(),
            max_events: max_events.max(1),
            max_bytes: max_bytes.max(1),
            eviction,
            events_metric,
        }
    }

    /// Queue `item` now, taking room from an owner over its share when
    /// the queue is full and `item`'s owner is within its own; never
    /// waits. `owner`: the item's owner, told when evicted.
    pub(crate) fn offer(&self, item: Item, owner: Option<&Arc<Owner>>) -> Result<(), Refused> {
        self.offer_back(item, owner).map_err(|(_, why)| why)
    }

    /// [`Queue::offer`], waiting up to `wait` for room while the queue is
    /// full.
    pub(crate) async fn push(
        &self,
        mut item: Item,
        owner: Option<&Arc<Owner>>,
        wait: Duration,
    ) -> Result<(), Refused> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.offer_back(item, owner) {
                Ok(()) => return Ok(()),
                Err((_, Refused::Evicted)) => return Err(Refused::Evicted),
                Err((back, Refused::Full)) => item = back,
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return Err(Refused::Full);
            }
        }
    }

    fn offer_back(&self, item: Item, owner: Option<&Arc<Owner>>) -> Result<(), (Item, Refused)> {
        if !item.keep && owner.is_some_and(|o| o.is_evicted()) {
            return Err((item, Refused::Evicted));
        }
        let mut dropped = Dropped::default();
        let outcome = {
            let mut g = self.inner.lock();
            self.offer_locked(&mut g, item, owner, &mut dropped)
        };
        if !dropped.kinds.is_empty() {
            self.room.notify_waiters();
        }
        for kind in dropped.kinds {
            metrics::counter!(self.events_metric, "event" => kind, "outcome" => "dropped")
                .increment(1);
        }
        for o in dropped.owners {
            (o.on_evict)();
        }
        if outcome.is_ok() {
            self.pushed.notify_one();
        }
        outcome
    }

    fn offer_locked(
        &self,
        g: &mut Inner,
        item: Item,
        owner: Option<&Arc<Owner>>,
        dropped: &mut Dropped,
    ) -> Result<(), (Item, Refused)> {
        if g.closed {
            return Err((item, Refused::Full));
        }
        let size = item.bytes();
        loop {
            let fits = g.items.len() < self.max_events
                && (g.bytes == 0 || g.bytes + size <= self.max_bytes);
            if fits {
                g.bytes += size;
                let u = g.usage.entry(item.owner).or_default();
                u.bytes += size;
                u.events += 1;
                u.droppable += usize::from(!item.keep);
                if u.owner.is_none() {
                    u.owner = owner.cloned();
                }
                g.items.push_back(item);
                return Ok(());
            }
            // Full: room is taken only for an owner within its share.
            let holders = g.usage.len() + usize::from(!g.usage.contains_key(&item.owner));
            let (share_events, share_bytes) = (self.max_events / holders, self.max_bytes / holders);
            let (events, bytes) = g
                .usage
                .get(&item.owner)
                .map_or((0, 0), |u| (u.events, u.bytes));
            let within = (events == 0 && bytes == 0)
                || (events < share_events && bytes + size <= share_bytes);
            if !within {
                return Err((item, Refused::Full));
            }
            let victim = g
                .usage
                .iter()
                .filter(|(id, u)| {
                    **id != item.owner
                        && u.droppable > 0
                        && (u.events > share_events || u.bytes > share_bytes)
                })
                // Most over its share: the larger of its two fractions.
                .max_by_key(|(_, u)| {
                    (u.events as u128 * self.max_bytes as u128)
                        .max(u.bytes as u128 * self.max_events as u128)
                })
                .map(|(id, _)| *id);
            let Some(victim) = victim else {
                return Err((item, Refused::Full));
            };
            self.evict(g, victim, dropped);
        }
    }

    /// Drops queued events of `victim` (all, or its newest one).
    fn evict(&self, g: &mut Inner, victim: OwnerId, dropped: &mut Dropped) {
        let mut freed = Vec::new();
        match self.eviction {
            Eviction::Whole => {
                let items = std::mem::take(&mut g.items);
                for it in items {
                    if it.owner == victim && !it.keep {
                        freed.push(it);
                    } else {
                        g.items.push_back(it);
                    }
                }
            }
            Eviction::Newest => {
                if let Some(i) = g
                    .items
                    .iter()
                    .rposition(|it| it.owner == victim && !it.keep)
                {
                    freed.extend(g.items.remove(i));
                }
            }
        }
        let Some(u) = g.usage.get_mut(&victim) else {
            return;
        };
        for it in &freed {
            u.bytes -= it.bytes();
            u.events -= 1;
            u.droppable -= 1;
            g.bytes -= it.bytes();
            dropped.kinds.push(it.kind);
        }
        if self.eviction == Eviction::Whole {
            if let Some(o) = &u.owner {
                if !o.evicted.swap(true, Ordering::AcqRel) {
                    dropped.owners.push(o.clone());
                }
            }
        }
        if u.bytes == 0 && u.events == 0 {
            g.usage.remove(&victim);
        }
    }

    /// The next queued event, waiting for one; [`Next::TooLarge`] when it
    /// is over `room` bytes (a batch's first event asks `usize::MAX`).
    /// Its bytes stay counted until [`Queue::done`].
    pub(crate) async fn next(&self, room: usize) -> Next {
        loop {
            let pushed = self.pushed.notified();
            tokio::pin!(pushed);
            pushed.as_mut().enable();
            {
                let mut g = self.inner.lock();
                if let Some(front) = g.items.front() {
                    if front.bytes() > room {
                        return Next::TooLarge;
                    }
                    let Some(item) = g.items.pop_front() else {
                        unreachable!("the front was just seen")
                    };
                    if let Some(u) = g.usage.get_mut(&item.owner) {
                        u.events -= 1;
                        u.droppable -= usize::from(!item.keep);
                    }
                    drop(g);
                    self.room.notify_waiters();
                    return Next::Item(item);
                }
                if g.closed {
                    return Next::Closed;
                }
            }
            pushed.await;
        }
    }

    /// The POST carrying `batch` is over (sent or given up): its bytes are
    /// free.
    pub(crate) fn done(&self, batch: &[Item]) {
        {
            let mut g = self.inner.lock();
            for it in batch {
                let size = it.bytes();
                g.bytes -= size;
                if let Some(u) = g.usage.get_mut(&it.owner) {
                    u.bytes -= size;
                    if u.bytes == 0 && u.events == 0 {
                        g.usage.remove(&it.owner);
                    }
                }
            }
        }
        self.room.notify_waiters();
    }

    /// No producer is left: the sender ends once the queue is empty.
    fn close(&self) {
        self.inner.lock().closed = true;
        self.pushed.notify_one();
        self.room.notify_waiters();
    }

    /// Events queued and bytes held (queued and being sent).
    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        let g = self.inner.lock();
        (g.items.len(), g.bytes)
    }
}

/// The producers' handle on a [`Queue`]: when the last one is dropped, the
/// sender finishes what is queued and ends.
pub(crate) struct QueueHandle(pub(super) Arc<Queue>);

impl std::ops::Deref for QueueHandle {
    type Target = Queue;

    fn deref(&self) -> &Queue {
        &self.0
    }
}

impl Drop for QueueHandle {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn item(owner: OwnerId, bytes: usize) -> Item {
        let text = format!("\"{}\"", "x".repeat(bytes - 2));
        Item {
            owner,
            kind: "message",
            keep: false,
            event: RawValue::from_string(text).unwrap(),
        }
    }

    fn counted(id: OwnerId) -> (Arc<Owner>, Arc<AtomicUsize>) {
        let told = Arc::new(AtomicUsize::new(0));
        let t = told.clone();
        let owner = Owner::new(id, move || {
            t.fetch_add(1, Ordering::SeqCst);
        });
        (owner, told)
    }

    #[test]
    fn bounded_in_events_and_in_bytes() {
        let q = Queue::new(3, 100, Eviction::Whole, "m");
        for _ in 0..3 {
            assert!(q.offer(item(1, 10), None).is_ok());
        }
        assert_eq!(q.offer(item(1, 10), None), Err(Refused::Full), "events");
        let q = Queue::new(100, 100, Eviction::Whole, "m");
        assert!(q.offer(item(1, 60), None).is_ok());
        assert_eq!(q.offer(item(1, 60), None), Err(Refused::Full), "bytes");
        assert!(q.offer(item(1, 40), None).is_ok(), "exactly full");
        assert_eq!(q.held(), (2, 100));
        // An empty queue takes any one event.
        let q = Queue::new(100, 100, Eviction::Whole, "m");
        assert!(q.offer(item(1, 500), None).is_ok());
    }

    #[test]
    fn an_owner_within_its_share_takes_the_room_of_the_one_over_it() {
        let q = Queue::new(100, 1000, Eviction::Whole, "m");
        let (hog, hog_told) = counted(1);
        for _ in 0..10 {
            assert!(q.offer(item(1, 100), Some(&hog)).is_ok());
        }
        // Alone, over its share: refused, not evicted (it waits).
        assert_eq!(q.offer(item(1, 100), Some(&hog)), Err(Refused::Full));
        assert_eq!(hog_told.load(Ordering::SeqCst), 0);
        // A newcomer: every queued event of the hog goes, and it is told
        // once.
        let (new, new_told) = counted(2);
        assert!(q.offer(item(2, 100), Some(&new)).is_ok());
        assert_eq!(hog_told.load(Ordering::SeqCst), 1);
        assert_eq!(new_told.load(Ordering::SeqCst), 0);
        assert_eq!(q.held(), (1, 100));
        assert!(hog.is_evicted());
        assert_eq!(q.offer(item(1, 10), Some(&hog)), Err(Refused::Evicted));
        // Its `leave` still goes.
        let mut leave = item(1, 10);
        leave.keep = true;
        assert!(q.offer(leave, Some(&hog)).is_ok());
    }

    #[tokio::test]
    async fn owners_at_their_share_wait_and_events_being_sent_stay() {
        let q = Queue::new(100, 1000, Eviction::Whole, "m");
        let (a, a_told) = counted(1);
        let (b, b_told) = counted(2);
        for _ in 0..5 {
            assert!(q.offer(item(1, 100), Some(&a)).is_ok());
            assert!(q.offer(item(2, 100), Some(&b)).is_ok());
        }
        // Full, both at their share (500 of 1000): neither takes the
        // other's room.
        assert_eq!(q.offer(item(1, 100), Some(&a)), Err(Refused::Full));
        assert_eq!(q.offer(item(2, 100), Some(&b)), Err(Refused::Full));
        assert_eq!(
            a_told.load(Ordering::SeqCst) + b_told.load(Ordering::SeqCst),
            0
        );
        // What is being sent cannot be taken back: owner 1's events, all
        // in a POST, leave nothing to drop.
        let q = Queue::new(100, 1000, Eviction::Whole, "m");
        for _ in 0..10 {
            assert!(q.offer(item(1, 100), Some(&a)).is_ok());
        }
        for _ in 0..10 {
            assert!(matches!(q.next(usize::MAX).await, Next::Item(_)));
        }
        assert_eq!(q.offer(item(2, 100), Some(&b)), Err(Refused::Full));
        assert_eq!(a_told.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn newest_eviction_takes_only_what_is_needed() {
        let q = Queue::new(10, 10_000, Eviction::Newest, "m");
        for _ in 0..10 {
            assert!(q.offer(item(1, 10), None).is_ok());
        }
        assert_eq!(q.offer(item(1, 10), None), Err(Refused::Full));
        assert!(q.offer(item(2, 10), None).is_ok());
        assert!(q.offer(item(3, 10), None).is_ok());
        assert_eq!(q.held(), (10, 100), "two of owner 1's gave way");
    }

    #[tokio::test]
    async fn bytes_count_until_the_post_is_done_and_waiters_get_the_room() {
        let q = Arc::new(Queue::new(100, 100, Eviction::Whole, "m"));
        assert!(q.offer(item(1, 60), None).is_ok());
        let Next::Item(sending) = q.next(usize::MAX).await else {
            panic!("an item")
        };
        assert_eq!(q.held(), (0, 60), "being sent still counts");
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.push(item(1, 60), None, Duration::from_secs(10)).await })
        };
        tokio::task::yield_now().await;
        q.done(&[sending]);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        assert_eq!(q.held(), (1, 60));
        // A batch asks for what still fits.
        assert!(matches!(q.next(10).await, Next::TooLarge));
        // No room within the wait: refused.
        assert_eq!(
            q.push(item(1, 60), None, Duration::from_millis(10)).await,
            Err(Refused::Full)
        );
    }

    #[tokio::test]
    async fn the_sender_ends_when_the_producers_are_gone() {
        let handle = QueueHandle(Arc::new(Queue::new(10, 100, Eviction::Newest, "m")));
        let q = handle.0.clone();
        assert!(handle.offer(item(1, 10), None).is_ok());
        drop(handle);
        assert!(matches!(q.next(usize::MAX).await, Next::Item(_)));
        assert!(matches!(q.next(usize::MAX).await, Next::Closed));
    }
}
