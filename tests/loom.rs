//! Loom models of the concurrent core every backend shares: the bounded subscriber queue and the
//! fan-out registry. Loom runs each model under every interleaving of its threads (up to the
//! preemption bound), on the library's real code: under `--cfg hubbus_loom` the crate's
//! `Arc` and `Mutex` are loom's.
//!
//! ```text
//! RUSTFLAGS="--cfg hubbus_loom" CARGO_TARGET_DIR=target/loom cargo test --release --test loom
//! ```
//!
//! Without that flag this file compiles to an empty test crate.
#![cfg(hubbus_loom)]

use std::collections::BTreeSet;

use hubbus::loom_api::{
    ChannelName, Fanout, FanoutClosed, Offer, Pop, Pushed, SubscriberQueue, SubscriptionEnd,
};
use loom::future::block_on;
use loom::model::Builder;
use loom::sync::Arc;
use loom::thread;

/// Every model explores all interleavings with up to this many preemptions, which keeps each
/// model within seconds while still reordering every pair of operations.
const PREEMPTION_BOUND: usize = 3;

fn model(body: impl Fn() + Sync + Send + 'static) {
    let mut builder = Builder::new();
    builder.preemption_bound = Some(PREEMPTION_BOUND);
    builder.check(body);
}

/// Takes what is left in a closed queue; a closed queue never reports `Empty`.
fn drain_closed<T>(queue: &SubscriberQueue<T>) -> Vec<T> {
    let mut items = Vec::new();
    loop {
        match queue.try_pop() {
            Pop::Item(item) => items.push(item),
            Pop::Closed => return items,
            Pop::Empty => panic!("a closed queue reported Empty instead of Closed"),
        }
    }
}

/// Two publishers push two items each into a small queue while the consumer pops and then
/// closes it: no item is duplicated, every item is popped, dropped (and counted) or discarded
/// after close, and each publisher's items come out in the order it pushed them.
fn publishers_and_a_closing_consumer_lose_nothing_silently(capacity: usize) {
    model(move || {
        let queue = Arc::new(SubscriberQueue::new(capacity));
        let publishers: Vec<_> = (0..2_u8)
            .map(|publisher| {
                let queue = queue.clone();
                thread::spawn(move || {
                    (0..2_u8)
                        .map(|sequence| queue.push((publisher, sequence)))
                        .collect::<Vec<Pushed>>()
                })
            })
            .collect();

        let mut popped = Vec::new();
        for _ in 0..2 {
            if let Pop::Item(item) = queue.try_pop() {
                popped.push(item);
            }
        }
        queue.close();
        let outcomes: Vec<Pushed> = publishers
            .into_iter()
            .flat_map(|publisher| publisher.join().expect("a publisher panicked"))
            .collect();
        popped.extend(drain_closed(&queue));

        let count = |wanted: Pushed| outcomes.iter().filter(|&&o| o == wanted).count();
        let dropped = usize::try_from(queue.dropped()).expect("small");
        assert_eq!(
            dropped,
            count(Pushed::DroppedOldest),
            "every drop is counted"
        );
        assert_eq!(
            popped.len() + dropped + count(Pushed::Closed),
            4,
            "every item is popped, dropped or discarded after close: {popped:?} {outcomes:?}"
        );
        let distinct: BTreeSet<_> = popped.iter().collect();
        assert_eq!(
            distinct.len(),
            popped.len(),
            "an item came out twice: {popped:?}"
        );
        for publisher in 0..2 {
            let order: Vec<u8> = popped
                .iter()
                .filter(|(from, _)| *from == publisher)
                .map(|&(_, sequence)| sequence)
                .collect();
            assert!(
                order.is_sorted(),
                "publisher {publisher} reordered: {popped:?}"
            );
        }
        assert_eq!(queue.len(), 0);
    });
}

#[test]
fn queue_of_one_loses_nothing_silently() {
    publishers_and_a_closing_consumer_lose_nothing_silently(1);
}

#[test]
fn queue_of_two_loses_nothing_silently() {
    publishers_and_a_closing_consumer_lose_nothing_silently(2);
}

/// A publisher, a subscriber that unsubscribes again, and a closer race on one registry: nothing
/// panics or deadlocks; the subscriber registered before the race gets exactly the publishes
/// that were accepted, in order; every queue ends `Closed` once drained; and the closed registry
/// refuses everything.
#[test]
fn fanout_survives_publish_subscribe_unsubscribe_and_close_racing() {
    model(|| {
        let fanout = Arc::new(Fanout::<u8>::new());
        let room: ChannelName = "room".into();
        let (_, early) = fanout.subscribe(&room, 4).expect("open");

        let publisher = {
            let fanout = fanout.clone();
            thread::spawn(move || [1_u8, 2].map(|item| (item, fanout.publish("room", &item))))
        };
        let churner = {
            let (fanout, room) = (fanout.clone(), room.clone());
            thread::spawn(move || match fanout.subscribe(&room, 4) {
                Ok((id, queue)) => Some((queue, fanout.unsubscribe("room", id))),
                Err(FanoutClosed) => None,
            })
        };
        assert!(fanout.close(), "the first close closes");
        let published = publisher.join().expect("the publisher panicked");
        let churned = churner.join().expect("the churner panicked");

        let mut accepted = Vec::new();
        for (item, result) in published {
            if let Ok(report) = result {
                assert!(report.delivered >= 1, "the early subscriber was skipped");
                accepted.push(item);
            }
        }
        assert!(
            accepted.as_slice() == [1, 2] || accepted.as_slice() == [1] || accepted.is_empty(),
            "a publish after close was accepted: {accepted:?}"
        );
        assert_eq!(drain_closed(&early), accepted);
        if let Some((queue, was_last)) = churned {
            assert!(!was_last, "the early subscriber is still registered");
            let got = drain_closed(&queue);
            assert!(
                got.iter().all(|item| accepted.contains(item)) && got.is_sorted(),
                "the churner got {got:?} of {accepted:?}"
            );
        }
        assert_eq!(fanout.publish("room", &3), Err(FanoutClosed));
        assert!(fanout.subscribe(&room, 4).is_err());
        assert!(!fanout.close(), "closing twice is a no-op");
    });
}

/// Awaits the next item of `queue` on the current loom thread.
fn pop(queue: &SubscriberQueue<u8>) -> Option<u8> {
    block_on(std::future::poll_fn(|cx| queue.poll_pop(cx)))
}

/// A consumer that registered its waker is woken by a concurrent push: no lost wakeup (loom
/// reports a deadlock if the consumer could sleep forever).
#[test]
fn push_wakes_a_waiting_consumer() {
    model(|| {
        let queue = Arc::new(SubscriberQueue::new(1));
        let producer = {
            let queue = queue.clone();
            thread::spawn(move || queue.push(7))
        };
        assert_eq!(pop(&queue), Some(7));
        assert_eq!(
            producer.join().expect("the producer panicked"),
            Pushed::Queued
        );
    });
}

/// A consumer waiting on an empty queue is woken by a concurrent close and sees the end.
#[test]
fn close_wakes_a_waiting_consumer() {
    model(|| {
        let queue = Arc::new(SubscriberQueue::new(1));
        let closer = {
            let queue = queue.clone();
            thread::spawn(move || queue.close())
        };
        assert_eq!(pop(&queue), None);
        closer.join().expect("the closer panicked");
    });
}

/// A consumer awaiting item after item gets everything pushed before a concurrent close, in
/// order, and then the end.
#[test]
fn waiting_consumer_gets_every_item_then_the_end() {
    model(|| {
        let queue = Arc::new(SubscriberQueue::new(2));
        let producer = {
            let queue = queue.clone();
            thread::spawn(move || {
                queue.push(1);
                queue.push(2);
                queue.close();
            })
        };
        let mut received = Vec::new();
        while let Some(item) = pop(&queue) {
            received.push(item);
        }
        assert_eq!(received, [1, 2]);
        producer.join().expect("the producer panicked");
    });
}

/// Awaits room in `queue` on the current loom thread.
fn room(queue: &SubscriberQueue<u8>) {
    block_on(std::future::poll_fn(|cx| queue.poll_room(cx)));
}

/// A producer that never drops (at-least-once) waits for room in a full queue while the
/// consumer pops: it is woken (no lost wakeup: loom reports a deadlock otherwise), and every
/// item comes out once, in order.
#[test]
fn a_waiting_producer_is_woken_by_a_pop_and_loses_nothing() {
    model(|| {
        let queue = Arc::new(SubscriberQueue::new(1));
        let producer = {
            let queue = queue.clone();
            thread::spawn(move || {
                for item in [1_u8, 2] {
                    let mut item = item;
                    loop {
                        match queue.offer(item) {
                            Offer::Queued => break,
                            Offer::Full(back) => {
                                item = back;
                                room(&queue);
                            }
                            Offer::Closed(_) => panic!("nobody closed the queue"),
                        }
                    }
                }
                queue.close();
            })
        };
        let mut received = Vec::new();
        while let Some(item) = pop(&queue) {
            received.push(item);
        }
        assert_eq!(received, [1, 2]);
        assert_eq!(queue.dropped(), 0);
        producer.join().expect("the producer panicked");
    });
}

/// Cutting a subscriber off as lagged races with the consumer popping: every item is either
/// popped or handed back to the cutter, never both and never neither, the count the consumer
/// is told matches what was handed back, and the consumer ends with the lagged end.
#[test]
fn lagging_a_queue_hands_back_exactly_what_the_consumer_did_not_take() {
    model(|| {
        let queue = Arc::new(SubscriberQueue::new(2));
        assert_eq!(queue.offer(1_u8), Offer::Queued);
        assert_eq!(queue.offer(2), Offer::Queued);
        let cutter = {
            let queue = queue.clone();
            thread::spawn(move || queue.close_lagged(1))
        };
        let mut popped = Vec::new();
        while let Some(item) = pop(&queue) {
            popped.push(item);
        }
        let handed_back = cutter.join().expect("the cutter panicked");
        let mut all: Vec<u8> = popped.iter().chain(&handed_back).copied().collect();
        all.sort();
        assert_eq!(
            all,
            [1, 2],
            "popped {popped:?}, handed back {handed_back:?}"
        );
        assert_eq!(
            queue.end(),
            Some(SubscriptionEnd::Lagged {
                dropped: handed_back.len() as u64 + 1
            })
        );
    });
}
