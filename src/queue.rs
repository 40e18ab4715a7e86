//! The concurrent core every backend shares: a bounded per-subscriber queue and the fan-out
//! registry that feeds it.
//!
//! A publisher must never wait for a slow subscriber, and memory must never grow without bound.
//! So each subscriber gets a fixed-capacity queue; when it is full the *oldest* delivery is
//! dropped (the newest state is what a real-time client wants), the drop is counted, and the
//! subscriber can see how many it lost. The registry maps channels to queues in a `BTreeMap` so
//! that fan-out order is deterministic.
//!
//! The module is private; its items are `pub` only so that the loom models in `tests/loom.rs`
//! can reach them through `hubbus::loom_api`, which exists under `--cfg hubbus_loom` alone.

use std::collections::{BTreeMap, VecDeque};
use std::task::{Context, Poll, Waker};

use crate::sync::{Arc, Mutex, lock};

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
    closed: bool,
    dropped: u64,
    waker: Option<Waker>,
}

/// A bounded, drop-oldest, single-consumer queue.
#[derive(Debug)]
pub struct SubscriberQueue<T> {
    capacity: usize,
    state: Mutex<QueueState<T>>,
}

impl<T> SubscriberQueue<T> {
    /// A queue holding at most `capacity` items (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        SubscriberQueue {
            capacity,
            state: Mutex::new(QueueState {
                // Grows on demand up to `capacity`; idle subscribers cost little.
                items: VecDeque::new(),
                closed: false,
                dropped: 0,
                waker: None,
            }),
        }
    }

    /// Appends `item`, dropping the oldest item if the queue is full. Never blocks on the
    /// consumer.
    pub fn push(&self, item: T) -> Pushed {
        let (outcome, waker) = {
            let mut state = lock(&self.state);
            if state.closed {
                return Pushed::Closed;
            }
            let outcome = if state.items.len() >= self.capacity {
                state.items.pop_front();
                state.dropped += 1;
                Pushed::DroppedOldest
            } else {
                Pushed::Queued
            };
            state.items.push_back(item);
            (outcome, state.waker.take())
        };
        // Wake outside the lock so the consumer does not contend with us.
        if let Some(waker) = waker {
            waker.wake();
        }
        outcome
    }

    /// Takes the oldest item without waiting.
    pub fn try_pop(&self) -> Pop<T> {
        let mut state = lock(&self.state);
        match state.items.pop_front() {
            Some(item) => Pop::Item(item),
            None if state.closed => Pop::Closed,
            None => Pop::Empty,
        }
    }

    /// Takes the oldest item, or registers the task to be woken by the next push or close.
    /// `Ready(None)` means closed and drained.
    pub fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = lock(&self.state);
        match state.items.pop_front() {
            Some(item) => Poll::Ready(Some(item)),
            None if state.closed => Poll::Ready(None),
            None => {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Refuses further pushes; what is queued can still be taken. Wakes a waiting consumer.
    pub fn close(&self) {
        let waker = {
            let mut state = lock(&self.state);
            state.closed = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// How many items were dropped because the consumer fell behind.
    pub fn dropped(&self) -> u64 {
        lock(&self.state).dropped
    }

    /// How many items wait to be taken.
    #[cfg_attr(not(any(test, hubbus_loom)), allow(dead_code))]
    pub fn len(&self) -> usize {
        lock(&self.state).items.len()
    }
}

/// What one fan-out did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FanoutReport {
    /// Subscribers the item was queued for.
    pub delivered: usize,
    /// Of those, subscribers whose oldest item was dropped to make room.
    pub dropped: usize,
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
        let registry = lock(&self.registry);
        if registry.closed {
            return Err(FanoutClosed);
        }
        let mut report = FanoutReport::default();
        if let Some(subscribers) = registry.channels.get(channel) {
            for queue in subscribers.values() {
                match queue.push(item.clone()) {
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

    /// True when `channel` has at least one subscriber.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
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
                dropped: 0
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
