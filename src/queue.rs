//! The concurrent core every backend shares: a bounded per-subscriber queue and the fan-out
//! registry that feeds it.
//!
//! Memory must never grow without bound, so each subscriber gets a fixed-capacity queue, and a
//! full queue is handled one of two ways, chosen by the backend's delivery promise:
//!
//! - at most once ([`SubscriberQueue::push`], [`Fanout::publish`]): a publisher never waits for a
//!   slow subscriber; the *oldest* delivery is dropped (the newest state is what a real-time
//!   client wants), the drop is counted, and the subscriber can see how many it lost;
//! - at least once ([`SubscriberQueue::offer`], [`Fanout::offer_each`]): nothing is dropped; a
//!   full queue hands the item back, and the caller waits for room ([`SubscriberQueue::poll_room`])
//!   for a bounded time before it cuts the subscriber off with a visible end
//!   ([`SubscriptionEnd::Lagged`], [`SubscriberQueue::close_lagged`]).
//!
//! The registry maps channels to queues in a `BTreeMap` so that fan-out order is deterministic.
//!
//! The module is private; its items are `pub` only so that the loom models in `tests/loom.rs`
//! can reach them through `hubbus::loom_api`, which exists under `--cfg hubbus_loom` alone.

use std::collections::{BTreeMap, VecDeque};
use std::task::{Context, Poll, Waker};

use std::sync::atomic::Ordering;

use crate::sync::{Arc, AtomicU64, Mutex, lock};

/// Channel names are shared, immutable strings (always `std`'s `Arc`: they are data, not
/// synchronisation).
pub type ChannelName = std::sync::Arc<str>;

/// What happened to one pushed item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued with room to spare.
    Queued,
    /// Queued, and the oldest queued item was dropped to make room.
    DroppedOldest,
    /// The queue is closed; the item was discarded.
    Closed,
}

/// What happened to an item offered to a queue that never drops ([`SubscriberQueue::offer`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Offer<T> {
    /// Queued.
    Queued,
    /// The queue is full; the item is handed back.
    Full(T),
    /// The queue is closed; the item is handed back.
    Closed(T),
}

/// Why a subscription ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscriptionEnd {
    /// The subscription or the bus was closed.
    Closed,
    /// The subscriber fell behind: its queue stayed full longer than the bus's `lag_timeout`, so
    /// it was cut off rather than hold back the others. `dropped` deliveries it had not read
    /// (and the one that did not fit) were given up on its behalf. A hub application should
    /// tell its client and let it catch up from its own source of truth (the example hub closes
    /// that client's WebSocket with the reason).
    Lagged {
        /// Deliveries this subscriber will not receive.
        dropped: u64,
    },
}

/// What a non-blocking pop found.
#[derive(Debug, PartialEq, Eq)]
pub enum Pop<T> {
    /// The oldest queued item.
    Item(T),
    /// Nothing queued yet; more may arrive.
    Empty,
    /// Closed and drained: nothing more will ever arrive.
    Closed,
}

#[derive(Debug)]
struct QueueState<T> {
    items: VecDeque<T>,
    /// Set when the queue closes, with the reason.
    end: Option<SubscriptionEnd>,
    /// The consumer waiting for an item.
    waker: Option<Waker>,
    /// The producer waiting for room (queues that never drop have one producer: their
    /// channel's dispatcher).
    room_waker: Option<Waker>,
}

/// A bounded single-consumer queue; see the module documentation for its two ways of handling
/// a full queue.
#[derive(Debug)]
pub struct SubscriberQueue<T> {
    capacity: usize,
    state: Mutex<QueueState<T>>,
    /// Items dropped because the consumer fell behind, read without the state's lock (a
    /// subscriber may look after every delivery). A queue's own drops are counted under the
    /// lock, so a consumer that took an item sees every drop made before that item was pushed.
    dropped: AtomicU64,
}

impl<T> SubscriberQueue<T> {
    /// A queue holding at most `capacity` items (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        SubscriberQueue {
            capacity,
            dropped: AtomicU64::new(0),
            state: Mutex::new(QueueState {
                // Grows on demand up to `capacity`; idle subscribers cost little.
                items: VecDeque::new(),
                end: None,
                waker: None,
                room_waker: None,
            }),
        }
    }

    /// Appends `item`, dropping the oldest item if the queue is full. Never blocks on the
    /// consumer.
    #[cfg_attr(not(any(test, hubbus_loom)), allow(dead_code))]
    pub fn push(&self, item: T) -> Pushed {
        self.push_reporting_backlog(item).0
    }

    /// Like [`SubscriberQueue::push`], and says whether the queue holds at least half its
    /// capacity afterwards (its consumer is falling behind).
    fn push_reporting_backlog(&self, item: T) -> (Pushed, bool) {
        let (outcome, backlogged, waker) = {
            let mut state = lock(&self.state);
            if state.end.is_some() {
                return (Pushed::Closed, false);
            }
            let outcome = if state.items.len() >= self.capacity {
                state.items.pop_front();
                self.dropped.fetch_add(1, Ordering::Relaxed);
                Pushed::DroppedOldest
            } else {
                Pushed::Queued
            };
            state.items.push_back(item);
            let backlogged = state.items.len() * 2 >= self.capacity;
            (outcome, backlogged, state.waker.take())
        };
        // Wake outside the lock so the consumer does not contend with us.
        if let Some(waker) = waker {
            waker.wake();
        }
        (outcome, backlogged)
    }

    /// Appends `item` unless the queue is full or closed, in which case the item comes back.
    /// Never drops anything.
    pub fn offer(&self, item: T) -> Offer<T> {
        let waker = {
            let mut state = lock(&self.state);
            if state.end.is_some() {
                return Offer::Closed(item);
            }
            if state.items.len() >= self.capacity {
                return Offer::Full(item);
            }
            state.items.push_back(item);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Offer::Queued
    }

    /// Ready once the queue has room for one more item or is closed; otherwise registers the
    /// task to be woken by the next pop or close.
    pub fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = lock(&self.state);
        if state.end.is_some() || state.items.len() < self.capacity {
            Poll::Ready(())
        } else {
            state.room_waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// Takes the oldest item without waiting.
    pub fn try_pop(&self) -> Pop<T> {
        let (pop, room) = {
            let mut state = lock(&self.state);
            match state.items.pop_front() {
                Some(item) => (Pop::Item(item), state.room_waker.take()),
                None if state.end.is_some() => (Pop::Closed, None),
                None => (Pop::Empty, None),
            }
        };
        if let Some(room) = room {
            room.wake();
        }
        pop
    }

    /// Takes the oldest item, or registers the task to be woken by the next push or close.
    /// `Ready(None)` means closed and drained.
    pub fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let (poll, room) = {
            let mut state = lock(&self.state);
            match state.items.pop_front() {
                Some(item) => (Poll::Ready(Some(item)), state.room_waker.take()),
                None if state.end.is_some() => (Poll::Ready(None), None),
                None => {
                    state.waker = Some(cx.waker().clone());
                    (Poll::Pending, None)
                }
            }
        };
        if let Some(room) = room {
            room.wake();
        }
        poll
    }

    /// Refuses further pushes; what is queued can still be taken. Wakes a waiting consumer and
    /// a producer waiting for room. The end is [`SubscriptionEnd::Closed`] unless the queue
    /// had ended already.
    pub fn close(&self) {
        self.close_with(SubscriptionEnd::Closed);
    }

    /// Like [`SubscriberQueue::close`], with the given end (unless the queue had ended).
    pub fn close_with(&self, end: SubscriptionEnd) {
        let (waker, room) = {
            let mut state = lock(&self.state);
            state.end.get_or_insert(end);
            (state.waker.take(), state.room_waker.take())
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        if let Some(room) = room {
            room.wake();
        }
    }

    /// Cuts the consumer off as lagged: closes the queue and takes out what it held, so the
    /// caller can give those items up on the consumer's behalf. `not_queued` counts items that
    /// were meant for it but never entered the queue. Returns nothing if the queue had already
    /// ended (a consumer that left in the meantime did not lag).
    pub fn close_lagged(&self, not_queued: u64) -> Vec<T> {
        let (items, waker, room) = {
            let mut state = lock(&self.state);
            if state.end.is_some() {
                return Vec::new();
            }
            let items: Vec<T> = state.items.drain(..).collect();
            let dropped = items.len() as u64 + not_queued;
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
            state.end = Some(SubscriptionEnd::Lagged { dropped });
            (items, state.waker.take(), state.room_waker.take())
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        if let Some(room) = room {
            room.wake();
        }
        items
    }

    /// Closes the queue and takes out everything it still held (the consumer is gone).
    pub fn close_and_drain(&self) -> Vec<T> {
        self.close();
        lock(&self.state).items.drain(..).collect()
    }

    /// Why the queue ended; `None` while it is open.
    pub fn end(&self) -> Option<SubscriptionEnd> {
        lock(&self.state).end
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        lock(&self.state).end.is_some()
    }

    /// Counts `count` items meant for the consumer that were dropped before they reached this
    /// queue (by a full queue that feeds it), so the consumer learns of them too.
    pub fn count_dropped(&self, count: u64) {
        self.dropped.fetch_add(count, Ordering::Relaxed);
    }

    /// How many items were dropped because the consumer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// How many items wait to be taken.
    #[cfg_attr(not(any(test, hubbus_loom)), allow(dead_code))]
    pub fn len(&self) -> usize {
        lock(&self.state).items.len()
    }
}

/// What one [`Fanout::offer_each`] did.
#[derive(Debug)]
pub struct Offered<T> {
    /// Items queued at once.
    pub queued: usize,
    /// Queues that were full, with the item each should get once it has room.
    pub full: Vec<(Arc<SubscriberQueue<T>>, T)>,
    /// Items whose queue closed between counting and queueing.
    pub closed: Vec<T>,
}

/// What one fan-out did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FanoutReport {
    /// Subscribers the item was queued for.
    pub delivered: usize,
    /// Of those, subscribers whose oldest item was dropped to make room.
    pub dropped: usize,
    /// True when some subscriber's queue held at least half its capacity after the item was
    /// queued: its reader is falling behind (a publisher that never waits should then give
    /// the runtime back, so that a reader on its thread gets to run).
    pub backlogged: bool,
}

#[derive(Debug)]
struct Registry<T> {
    channels: BTreeMap<ChannelName, BTreeMap<u64, Arc<SubscriberQueue<T>>>>,
    next_id: u64,
    closed: bool,
}

/// Channel -> subscriber queues, with publish, subscribe, unsubscribe and close racing safely.
///
/// Fan-out happens under the registry lock, so all publishes to one channel are totally ordered
/// and every subscriber sees them in the same order.
#[derive(Debug)]
pub struct Fanout<T> {
    registry: Mutex<Registry<T>>,
}

/// The error of an operation on a closed [`Fanout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FanoutClosed;

impl<T: Clone> Fanout<T> {
    /// An open registry with no subscribers.
    pub fn new() -> Self {
        Fanout {
            registry: Mutex::new(Registry {
                channels: BTreeMap::new(),
                next_id: 0,
                closed: false,
            }),
        }
    }

    /// Registers a new subscriber queue for `channel`; returns its id and the queue.
    pub fn subscribe(
        &self,
        channel: &ChannelName,
        capacity: usize,
    ) -> Result<(u64, Arc<SubscriberQueue<T>>), FanoutClosed> {
        let mut registry = lock(&self.registry);
        if registry.closed {
            return Err(FanoutClosed);
        }
        let id = registry.next_id;
        registry.next_id += 1;
        let queue = Arc::new(SubscriberQueue::new(capacity));
        registry
            .channels
            .entry(channel.clone())
            .or_default()
            .insert(id, queue.clone());
        Ok((id, queue))
    }

    /// Removes subscriber `id` from `channel` and closes its queue; true if it was there and
    /// was the channel's last subscriber.
    pub fn unsubscribe(&self, channel: &str, id: u64) -> bool {
        let mut registry = lock(&self.registry);
        let Some(subscribers) = registry.channels.get_mut(channel) else {
            return false;
        };
        if let Some(queue) = subscribers.remove(&id) {
            queue.close();
        }
        if subscribers.is_empty() {
            registry.channels.remove(channel);
            true
        } else {
            false
        }
    }

    /// Queues `item` for every subscriber of `channel`.
    pub fn publish(&self, channel: &str, item: &T) -> Result<FanoutReport, FanoutClosed> {
        self.publish_with(channel, |_| item)
    }

    /// Like [`Fanout::publish`], with the item made by `make` only if the channel has a
    /// subscriber: a publish nobody receives costs no item, and `make` gets the registry's own
    /// name of the channel to share instead of allocating one.
    pub fn publish_with<'a>(
        &self,
        channel: &str,
        make: impl FnOnce(&ChannelName) -> &'a T,
    ) -> Result<FanoutReport, FanoutClosed>
    where
        T: 'a,
    {
        let registry = lock(&self.registry);
        if registry.closed {
            return Err(FanoutClosed);
        }
        let mut report = FanoutReport::default();
        if let Some((name, subscribers)) = registry.channels.get_key_value(channel) {
            let item = make(name);
            for queue in subscribers.values() {
                let (pushed, backlogged) = queue.push_reporting_backlog(item.clone());
                report.backlogged |= backlogged;
                match pushed {
                    Pushed::Queued => report.delivered += 1,
                    Pushed::DroppedOldest => {
                        report.delivered += 1;
                        report.dropped += 1;
                    }
                    Pushed::Closed => {}
                }
            }
        }
        Ok(report)
    }

    /// Offers one item to every open subscriber queue of `channel`, without dropping anything:
    /// `make(n)` is called once with the number of open queues and must return that many items,
    /// one per queue (each subscriber gets its own copy, for example with its own acker).
    pub fn offer_each(
        &self,
        channel: &str,
        make: impl FnOnce(usize) -> Vec<T>,
    ) -> Result<Offered<T>, FanoutClosed> {
        let registry = lock(&self.registry);
        if registry.closed {
            return Err(FanoutClosed);
        }
        let queues: Vec<&Arc<SubscriberQueue<T>>> = registry
            .channels
            .get(channel)
            .map(|subscribers| {
                subscribers
                    .values()
                    .filter(|queue| !queue.is_closed())
                    .collect()
            })
            .unwrap_or_default();
        let items = make(queues.len());
        let mut offered = Offered {
            queued: 0,
            full: Vec::new(),
            closed: Vec::new(),
        };
        for (queue, item) in queues.into_iter().zip(items) {
            match queue.offer(item) {
                Offer::Queued => offered.queued += 1,
                Offer::Full(item) => offered.full.push((queue.clone(), item)),
                Offer::Closed(item) => offered.closed.push(item),
            }
        }
        Ok(offered)
    }

    /// The queues of `channel`'s subscribers.
    pub fn queues(&self, channel: &str) -> Vec<Arc<SubscriberQueue<T>>> {
        lock(&self.registry)
            .channels
            .get(channel)
            .map(|subscribers| subscribers.values().cloned().collect())
            .unwrap_or_default()
    }

    /// True when `channel` has at least one subscriber.
    pub fn has_subscribers(&self, channel: &str) -> bool {
        lock(&self.registry).channels.contains_key(channel)
    }

    /// How many subscribers `channel` has.
    #[cfg(test)]
    pub(crate) fn subscriber_count(&self, channel: &str) -> usize {
        lock(&self.registry)
            .channels
            .get(channel)
            .map_or(0, BTreeMap::len)
    }

    /// True once [`Fanout::close`] ran.
    pub fn is_closed(&self) -> bool {
        lock(&self.registry).closed
    }

    /// Refuses further publishes and subscriptions and closes every queue; what is queued stays
    /// readable. Returns false if it was already closed.
    pub fn close(&self) -> bool {
        let mut registry = lock(&self.registry);
        if registry.closed {
            return false;
        }
        registry.closed = true;
        for queue in registry.channels.values().flat_map(BTreeMap::values) {
            queue.close();
        }
        registry.channels.clear();
        true
    }
}

#[cfg(all(test, not(hubbus_loom)))]
mod tests {
    use super::*;

    #[test]
    fn full_queue_drops_the_oldest_and_counts_it() {
        let queue = SubscriberQueue::new(2);
        assert_eq!(queue.push(1), Pushed::Queued);
        assert_eq!(queue.push(2), Pushed::Queued);
        assert_eq!(queue.push(3), Pushed::DroppedOldest);
        assert_eq!(queue.dropped(), 1);
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.try_pop(), Pop::Item(2));
        assert_eq!(queue.try_pop(), Pop::Item(3));
        assert_eq!(queue.try_pop(), Pop::Empty);
    }

    #[test]
    fn closed_queue_drains_then_reports_closed() {
        let queue = SubscriberQueue::new(4);
        queue.push("a");
        queue.close();
        assert_eq!(queue.push("b"), Pushed::Closed);
        assert_eq!(queue.try_pop(), Pop::Item("a"));
        assert_eq!(queue.try_pop(), Pop::Closed);
    }

    #[test]
    fn offer_never_drops_and_pop_makes_room() {
        let queue = SubscriberQueue::new(1);
        assert_eq!(queue.offer(1), Offer::Queued);
        assert_eq!(queue.offer(2), Offer::Full(2));
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(queue.poll_room(&mut cx), Poll::Pending);
        assert_eq!(queue.try_pop(), Pop::Item(1));
        assert_eq!(queue.poll_room(&mut cx), Poll::Ready(()));
        assert_eq!(queue.offer(2), Offer::Queued);
        assert_eq!(queue.dropped(), 0);
        assert_eq!(queue.end(), None);
    }

    #[test]
    fn a_lagged_queue_hands_back_what_it_held_and_says_how_much() {
        let queue = SubscriberQueue::new(2);
        queue.offer("a");
        queue.offer("b");
        assert_eq!(queue.close_lagged(1), vec!["a", "b"]);
        assert_eq!(queue.end(), Some(SubscriptionEnd::Lagged { dropped: 3 }));
        assert_eq!(queue.dropped(), 3);
        assert_eq!(queue.try_pop(), Pop::Closed);
        assert_eq!(queue.offer("c"), Offer::Closed("c"));
        // A queue that ended before it could be cut off did not lag.
        let closed = SubscriberQueue::new(1);
        closed.offer("x");
        closed.close();
        assert!(closed.close_lagged(1).is_empty());
        assert_eq!(closed.end(), Some(SubscriptionEnd::Closed));
        assert_eq!(closed.close_and_drain(), vec!["x"]);
    }

    #[test]
    fn offer_each_gives_every_open_queue_its_own_item() {
        let fanout = Fanout::new();
        let room: ChannelName = "room".into();
        let (_, roomy) = fanout.subscribe(&room, 4).unwrap();
        let (_, full) = fanout.subscribe(&room, 1).unwrap();
        let (_, gone) = fanout.subscribe(&room, 4).unwrap();
        full.offer(0);
        gone.close();
        let offered = fanout
            .offer_each("room", |n| {
                assert_eq!(n, 2, "closed queues get no copy");
                vec![10, 11]
            })
            .unwrap();
        assert_eq!(offered.queued, 1);
        assert_eq!(offered.full.len(), 1);
        assert_eq!(offered.full[0].1, 11);
        assert!(offered.closed.is_empty());
        assert_eq!(roomy.try_pop(), Pop::Item(10));
        let nobody = fanout.offer_each("other", |n| vec![0; n]).unwrap();
        assert_eq!(nobody.queued + nobody.full.len(), 0);
    }

    #[test]
    fn zero_capacity_is_treated_as_one() {
        let queue = SubscriberQueue::new(0);
        assert_eq!(queue.push(1), Pushed::Queued);
        assert_eq!(queue.push(2), Pushed::DroppedOldest);
        assert_eq!(queue.try_pop(), Pop::Item(2));
    }

    #[test]
    fn fanout_reaches_only_the_channel_and_stops_after_unsubscribe() {
        let fanout = Fanout::new();
        let a: ChannelName = "a".into();
        let b: ChannelName = "b".into();
        let (id_a, queue_a) = fanout.subscribe(&a, 8).unwrap();
        let (_, queue_b) = fanout.subscribe(&b, 8).unwrap();
        let report = fanout.publish("a", &1).unwrap();
        assert_eq!(
            report,
            FanoutReport {
                delivered: 1,
                dropped: 0,
                backlogged: false,
            }
        );
        assert_eq!(queue_a.try_pop(), Pop::Item(1));
        assert_eq!(queue_b.try_pop(), Pop::Empty);
        assert!(fanout.unsubscribe("a", id_a));
        assert!(!fanout.unsubscribe("a", id_a));
        assert_eq!(fanout.publish("a", &2).unwrap().delivered, 0);
        assert_eq!(queue_a.try_pop(), Pop::Closed);
        assert_eq!(fanout.subscriber_count("b"), 1);
        assert!(fanout.has_subscribers("b"));
        assert!(!fanout.has_subscribers("a"));
        assert!(fanout.close());
        assert!(!fanout.close());
        assert!(fanout.is_closed());
        assert_eq!(fanout.publish("b", &3), Err(FanoutClosed));
        assert!(fanout.subscribe(&b, 8).is_err());
        assert_eq!(queue_b.try_pop(), Pop::Closed);
    }
}
