//! The conformance suite over the in-process bus: every node is a [`MemoryBus`] connected to
//! one [`MemoryBroker`], which promises that every live subscriber gets every message, in
//! publish order.

mod conformance;

use std::sync::Arc;
use std::time::Duration;

use hubbus::{BusOptions, Guarantee, MemoryBroker, MessageBus};

use conformance::{BusFactory, Promises};

/// Nodes on one fresh broker per check.
#[derive(Default)]
struct MemoryNodes {
    broker: MemoryBroker,
}

impl BusFactory for MemoryNodes {
    async fn node(&self, options: BusOptions) -> Arc<dyn MessageBus> {
        Arc::new(self.broker.connect(options))
    }
}

const MEMORY: Promises = Promises {
    delivers: true,
    ordered_per_publisher: true,
    guarantee: Guarantee::AtMostOnce,
    replays_earlier_messages: false,
    headers_in_order: true,
    deadline: Duration::from_secs(5),
    virtual_time: true,
};

conformance::conformance_tests!(MemoryNodes::default(), MEMORY);

/// Publishes `count` messages in a tight loop on a single-threaded runtime, with one subscriber
/// task on the same thread; returns what it received and what it was told it dropped.
async fn tight_loop(queue: usize, count: u64) -> (u64, u64) {
    let bus = MemoryBroker::new().connect(BusOptions {
        subscriber_queue: queue,
        ..Default::default()
    });
    let mut subscription = bus.subscribe("room1").await.unwrap();
    let reader = tokio::spawn(async move {
        let mut received = 0;
        while subscription.recv().await.is_some() {
            received += 1;
        }
        (received, subscription.dropped())
    });
    for _ in 0..count {
        bus.publish("room1", bytes::Bytes::from_static(b"x"))
            .await
            .unwrap();
    }
    bus.close().await;
    reader.await.unwrap()
}

/// A publish never waits, so without cooperative yielding a publish loop would keep the thread
/// until it ends, and a subscriber on that thread would read only the last queue-full.
#[tokio::test(flavor = "current_thread")]
async fn a_publish_loop_does_not_starve_its_subscribers() {
    let (received, dropped) = tight_loop(1024, 100_000).await;
    assert_eq!(received + dropped, 100_000);
    assert_eq!(
        dropped, 0,
        "the subscriber read between bursts, so its queue never overflowed"
    );
}

/// Under overload (a queue smaller than a burst), the drops are spread over the run: the
/// subscriber keeps receiving throughout, not only the last queue-full.
#[tokio::test(flavor = "current_thread")]
async fn under_overload_a_publish_loop_spreads_the_drops() {
    let (received, dropped) = tight_loop(8, 100_000).await;
    assert_eq!(received + dropped, 100_000, "every drop is counted");
    assert!(
        received > 1_000,
        "the subscriber received {received} of 100 000 (its queue holds 8): it was starved"
    );
}

/// A publish gives the runtime back only once a subscriber falls behind: while every queue it
/// delivered to is less than half full it spends nothing (a yield would hand the publisher to
/// another worker for nothing), and once one is half full the next publishes spend the task's
/// cooperative budget, so another task on the thread runs within one budget (128) of it.
#[tokio::test(flavor = "current_thread")]
async fn a_publish_gives_the_runtime_back_once_a_subscriber_falls_behind() {
    const QUEUE: u64 = 4096;
    let bus = MemoryBroker::new().connect(BusOptions {
        subscriber_queue: QUEUE as usize,
        ..Default::default()
    });
    // Nobody reads it while the loop runs: its queue only grows.
    let subscription = bus.subscribe("room1").await.unwrap();
    let published = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = published.clone();
    let other = tokio::spawn(async move { seen.load(std::sync::atomic::Ordering::Relaxed) });
    for _ in 0..QUEUE - 1 {
        bus.publish("room1", bytes::Bytes::from_static(b"x"))
            .await
            .unwrap();
        published.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let ran_after = other.await.unwrap();
    assert!(
        (QUEUE / 2..=QUEUE / 2 + 128).contains(&ran_after),
        "the other task ran after {ran_after} publishes: a publish yields from the first one that \
         leaves a queue half full ({}), within one budget",
        QUEUE / 2
    );
    assert_eq!(subscription.dropped(), 0);
}
