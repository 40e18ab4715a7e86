//! The hub's promises: every local subscriber of every hub gets each message exactly once,
//! whether it was published on its own hub (delivered at once, its echo from the bus skipped) or
//! on another hub (through the bus); one bus subscription per channel lives exactly as long as
//! the channel's local subscribers; bad input is refused before anyone receives anything.
//!
//! Every test runs on tokio's paused clock. There, a timer fires only once no task can make
//! progress, so [`until_idle`] is a deterministic barrier ("every bridge task has handled what
//! it was given") and [`assert_nothing_more`] proves that nothing more will arrive.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hubbus::{
    BusError, BusMetrics, BusOptions, Delivery, Hub, HubOptions, MemoryBroker, MemoryBus, Message,
    MessageId, NodeId, NoopBus, Subscription,
};
use prometheus::Registry;
use tokio::time::timeout;

/// How long an expected delivery may take (on the paused clock: until nothing else can run).
const DEADLINE: Duration = Duration::from_secs(5);

const ROOM: &str = "room1";

fn options(node: &str) -> BusOptions {
    BusOptions {
        node_id: NodeId::new(node).expect("a valid node id"),
        ..BusOptions::default()
    }
}

/// Two hubs, as two processes would be, sharing one in-process broker.
fn two_hubs() -> (Hub, Hub) {
    let broker = MemoryBroker::new();
    let a = Hub::new(Arc::new(broker.connect(options("hub-a"))));
    let b = Hub::new(Arc::new(broker.connect(options("hub-b"))));
    (a, b)
}

async fn publish(hub: &Hub, payload: impl Into<Bytes>) -> MessageId {
    hub.publish(ROOM, payload.into()).await.expect("publish").id
}

async fn next(subscription: &mut Subscription) -> Delivery {
    match timeout(DEADLINE, subscription.recv()).await {
        Ok(Some(delivery)) => delivery,
        Ok(None) => panic!("the subscription ended"),
        Err(_) => panic!("nothing arrived within {DEADLINE:?}"),
    }
}

/// Returns once every other task (the hubs' bridges) has run out of work.
async fn until_idle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// Nothing is queued and nothing more can arrive: the paused clock only lets the timeout
/// elapse once every task is idle.
async fn assert_nothing_more(subscription: &mut Subscription) {
    if let Ok(Some(delivery)) = timeout(Duration::from_millis(100), subscription.recv()).await {
        panic!("unexpected extra delivery: {:?}", delivery.payload());
    }
}

#[tokio::test(start_paused = true)]
async fn every_message_reaches_every_local_subscriber_of_both_hubs_once() {
    let (a, b) = two_hubs();
    let mut subscriptions = Vec::new();
    for hub in [&a, &b] {
        for _ in 0..3 {
            subscriptions.push(hub.subscribe(ROOM).await.expect("subscribe"));
        }
    }
    let mut published = BTreeSet::new();
    for round in 0..10 {
        published.insert(publish(&a, format!("a-{round}")).await);
        published.insert(publish(&b, format!("b-{round}")).await);
    }
    for subscription in &mut subscriptions {
        let mut received = Vec::new();
        for _ in 0..published.len() {
            received.push(next(subscription).await);
        }
        let ids: BTreeSet<MessageId> = received.iter().map(Delivery::id).collect();
        assert_eq!(ids.len(), received.len(), "a message arrived twice");
        assert_eq!(ids, published);
        for hub in [&a, &b] {
            let from_hub: Vec<MessageId> = received
                .iter()
                .filter(|delivery| delivery.origin() == hub.node_id())
                .map(Delivery::id)
                .collect();
            assert!(
                from_hub.is_sorted(),
                "{}'s messages arrived out of order",
                hub.node_id()
            );
        }
        assert_nothing_more(subscription).await;
    }
}

/// A message published with an id of its own keeps it, with its headers, on both hubs: what an
/// application retrying a publish relies on.
#[tokio::test(start_paused = true)]
async fn a_message_published_with_its_own_id_keeps_it_everywhere() {
    let (a, b) = two_hubs();
    let mut local = a.subscribe(ROOM).await.expect("subscribe");
    let mut remote = b.subscribe(ROOM).await.expect("subscribe");
    let id = MessageId::from_u128(42 << 64);
    let message = Message::new(ROOM, "retried")
        .with_id(id)
        .with_header("attempt", "2");
    let receipt = a.publish_message(message).await.expect("publish");
    assert_eq!(receipt.id, id);
    for subscription in [&mut local, &mut remote] {
        let delivery = next(subscription).await;
        assert_eq!(delivery.id(), id);
        assert_eq!(delivery.payload().as_ref(), b"retried");
        assert_eq!(
            delivery.headers(),
            &[("attempt".to_owned(), "2".to_owned())][..]
        );
        assert_nothing_more(subscription).await;
    }
}

#[tokio::test(start_paused = true)]
async fn hub_on_the_noop_bus_delivers_to_its_own_subscribers() {
    let hub = Hub::new(Arc::new(NoopBus::new()));
    let mut first = hub.subscribe(ROOM).await.expect("subscribe");
    let mut second = hub.subscribe(ROOM).await.expect("subscribe");
    let mut published = Vec::new();
    for index in 0..3 {
        published.push(publish(&hub, format!("m{index}")).await);
    }
    for subscription in [&mut first, &mut second] {
        for &id in &published {
            let delivery = next(subscription).await;
            assert_eq!(delivery.id(), id);
            assert_eq!(delivery.origin(), hub.node_id());
        }
        assert_nothing_more(subscription).await;
    }
}

#[tokio::test(start_paused = true)]
async fn hub_does_not_deliver_its_own_publish_twice() {
    // The bus hands a node its own publishes too; the hub must skip that echo.
    let hub = Hub::new(Arc::new(MemoryBus::new()));
    let mut subscription = hub.subscribe(ROOM).await.expect("subscribe");
    let id = publish(&hub, "once").await;
    assert_eq!(next(&mut subscription).await.id(), id);
    assert_nothing_more(&mut subscription).await;
}

#[tokio::test(start_paused = true)]
async fn last_local_unsubscribe_closes_the_bridge() {
    let broker = MemoryBroker::new();
    let registry = Registry::new();
    let a_options = BusOptions {
        metrics: BusMetrics::register(&registry, "hub_a").expect("metrics"),
        ..options("hub-a")
    };
    let a = Hub::new(Arc::new(broker.connect(a_options)));
    let b = Hub::new(Arc::new(broker.connect(options("hub-b"))));
    // What hub a's bus queued for its subscriptions: one per message while a bridge is open,
    // however many local subscribers share it.
    let bridged = || {
        support::metric(
            &registry,
            "hub_a_bus_received_total",
            &[("backend", "memory")],
        )
    };

    let mut first = a.subscribe(ROOM).await.expect("subscribe");
    let mut second = a.subscribe(ROOM).await.expect("subscribe");
    let shared = publish(&b, "shared").await;
    assert_eq!(next(&mut first).await.id(), shared);
    assert_eq!(next(&mut second).await.id(), shared);
    assert_eq!(
        bridged(),
        1.0,
        "two local subscribers share one bus subscription"
    );

    drop(first);
    let still_open = publish(&b, "still open").await;
    assert_eq!(next(&mut second).await.id(), still_open);
    assert_eq!(bridged(), 2.0);

    drop(second);
    until_idle().await;
    for index in 0..3 {
        publish(&b, format!("nobody listens {index}")).await;
    }
    until_idle().await;
    assert_eq!(
        bridged(),
        2.0,
        "the bridge outlived its last local subscriber"
    );

    let mut third = a.subscribe(ROOM).await.expect("subscribe");
    let fresh = publish(&b, "fresh").await;
    assert_eq!(next(&mut third).await.id(), fresh);
    assert_nothing_more(&mut third).await;
    assert_eq!(bridged(), 3.0);
}

#[tokio::test(start_paused = true)]
async fn closing_the_hub_ends_local_subscriptions_and_leaves_the_bus_open() {
    let (a, b) = two_hubs();
    let mut local = a.subscribe(ROOM).await.expect("subscribe");
    let mut remote = b.subscribe(ROOM).await.expect("subscribe");
    let queued = [publish(&a, "one").await, publish(&a, "two").await];
    a.close().await;

    for id in queued {
        assert_eq!(next(&mut local).await.id(), id, "queued before close");
    }
    assert!(
        timeout(DEADLINE, local.recv())
            .await
            .expect("ended")
            .is_none(),
        "the subscription ends after what was queued"
    );
    let refused = a.publish(ROOM, Bytes::from_static(b"late")).await;
    assert!(
        matches!(refused, Err(BusError::Closed)),
        "publish: {refused:?}"
    );
    let refused = a.subscribe(ROOM).await;
    assert!(
        matches!(refused, Err(BusError::Closed)),
        "subscribe: {refused:?}"
    );

    for id in queued {
        assert_eq!(next(&mut remote).await.id(), id);
    }
    let through_bus = a
        .bus()
        .publish(ROOM, Bytes::from_static(b"bus still open"))
        .await
        .expect("the hub does not own its bus");
    assert_eq!(next(&mut remote).await.id(), through_bus.id);
    assert_nothing_more(&mut remote).await;
}

#[tokio::test(start_paused = true)]
async fn hub_refuses_invalid_channels_and_oversized_payloads_before_delivering() {
    const LIMIT: usize = 64;
    let broker = MemoryBroker::new();
    let limited = |node| BusOptions {
        max_payload: LIMIT,
        ..options(node)
    };
    let a = Hub::new(Arc::new(broker.connect(limited("hub-a"))));
    let b = Hub::new(Arc::new(broker.connect(limited("hub-b"))));
    let mut local = a.subscribe(ROOM).await.expect("subscribe");
    let mut remote = b.subscribe(ROOM).await.expect("subscribe");

    let refused = a.publish(ROOM, Bytes::from(vec![b'x'; LIMIT + 1])).await;
    assert!(
        matches!(refused, Err(BusError::PayloadTooLarge { size, limit }) if size == LIMIT + 1 && limit == LIMIT),
        "oversized: {refused:?}"
    );
    for channel in ["", "a..b", "a b", ".a", "caf\u{e9}"] {
        let refused = a.publish(channel, Bytes::from_static(b"x")).await;
        assert!(
            matches!(refused, Err(BusError::InvalidChannel { .. })),
            "publish to {channel:?}: {refused:?}"
        );
        let refused = a.subscribe(channel).await;
        assert!(
            matches!(refused, Err(BusError::InvalidChannel { .. })),
            "subscribe to {channel:?}: {refused:?}"
        );
    }

    let at_limit = publish(&a, vec![b'y'; LIMIT]).await;
    for subscription in [&mut local, &mut remote] {
        assert_eq!(
            next(subscription).await.id(),
            at_limit,
            "a refused message was delivered"
        );
        assert_nothing_more(subscription).await;
    }
}

#[tokio::test(start_paused = true)]
async fn hub_counts_slow_consumer_drops_in_its_metrics() {
    const QUEUE: usize = 4;
    const PUBLISHED: usize = 10;
    let registry = Registry::new();
    let hub = Hub::with_options(
        Arc::new(MemoryBus::new()),
        HubOptions {
            subscriber_queue: QUEUE,
            metrics: Some(BusMetrics::register(&registry, "hub_test").expect("metrics")),
            ..HubOptions::default()
        },
    );
    let mut slow = hub.subscribe(ROOM).await.expect("subscribe");
    let mut published = Vec::new();
    for index in 0..PUBLISHED {
        published.push(publish(&hub, format!("m{index}")).await);
    }
    // Let the bridge see (and skip) the echoes, which must not count as deliveries.
    until_idle().await;

    let lost = (PUBLISHED - QUEUE) as u64;
    assert_eq!(slow.dropped(), lost);
    let hub_labels = [("backend", "hub"), ("reason", "slow_consumer")];
    assert_eq!(
        support::metric(&registry, "hub_test_bus_dropped_total", &hub_labels),
        lost as f64
    );
    assert_eq!(
        support::metric(
            &registry,
            "hub_test_bus_received_total",
            &[("backend", "hub")]
        ),
        PUBLISHED as f64
    );
    for &id in &published[PUBLISHED - QUEUE..] {
        assert_eq!(
            next(&mut slow).await.id(),
            id,
            "the newest are kept, in order"
        );
    }
    assert_nothing_more(&mut slow).await;
}

/// Deliveries the bus drops before they reach the hub (its bridge's bus subscription fell
/// behind) were lost for every local subscriber of the channel: each one's `dropped()` says
/// so, as the bus's metrics do, so a subscriber never misses a message silently.
#[tokio::test(start_paused = true)]
async fn drops_before_the_hub_count_for_every_local_subscriber() {
    const QUEUE: usize = 2;
    const PUBLISHED: usize = 6;
    let broker = MemoryBroker::new();
    let small = |node| BusOptions {
        subscriber_queue: QUEUE,
        ..options(node)
    };
    let receiving = Hub::new(Arc::new(broker.connect(small("hub-a"))));
    let sending = Hub::new(Arc::new(broker.connect(small("hub-b"))));
    let mut first = receiving.subscribe(ROOM).await.expect("subscribe");
    let mut second = receiving.subscribe(ROOM).await.expect("subscribe");
    // A burst: the receiving hub's bridge runs only after all of it was queued for it.
    for index in 0..PUBLISHED {
        publish(&sending, format!("m{index}")).await;
    }
    until_idle().await;

    let lost = (PUBLISHED - QUEUE) as u64;
    for subscription in [&mut first, &mut second] {
        let mut received = 0;
        while let Ok(Some(_)) = timeout(Duration::from_millis(10), subscription.recv()).await {
            received += 1;
        }
        assert_eq!(received, QUEUE, "the bridge kept the newest");
        assert_eq!(
            subscription.dropped(),
            lost,
            "every loss is the subscriber's to know"
        );
    }
}
