//! A `Hub` on JetStream against a real `nats-server -js`: at-least-once must hold for the hub's
//! local subscribers, not only for the bus. A slow local subscriber either receives every
//! message or is told it fell behind; the server's message is acknowledged only once every
//! local copy was; and a hub shut down the way the example hub shuts down, then started again
//! with its node id, gets what was published while it was away.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hubbus::backend::nats::JetStreamOptions;
use hubbus::{Hub, MessageBus, MessageId, Subscription, SubscriptionEnd};
use support::jetstream::{DEADLINE, js_node, js_node_with};
use support::{NatsServer, eventually};

async fn next(subscription: &mut Subscription) -> hubbus::Delivery {
    tokio::time::timeout(DEADLINE, subscription.recv())
        .await
        .unwrap_or_else(|_| panic!("nothing arrived on {}", subscription.channel()))
        .expect("subscription ended")
}

async fn publish_many(bus: &dyn MessageBus, channel: &str, count: usize) -> BTreeSet<MessageId> {
    let mut ids = BTreeSet::new();
    for index in 0..count {
        let receipt = bus
            .publish(channel, Bytes::from(format!("m{index}")))
            .await
            .expect("publish");
        ids.insert(receipt.id);
    }
    ids
}

#[tokio::test]
async fn hub_on_jetstream_slow_subscriber_never_misses_silently() {
    const PUBLISHED: usize = 50;
    let Some(server) = NatsServer::start() else {
        return;
    };
    let js = JetStreamOptions {
        ack_wait: Duration::from_secs(1),
        ..JetStreamOptions::default()
    };
    let lag_timeout = Duration::from_secs(3);
    let publisher = js_node(&server, "publisher", js.clone()).await;
    let node = js_node_with(&server, "hub", js, |options| {
        options.subscriber_queue = 4;
        options.lag_timeout = lag_timeout;
    })
    .await;
    let hub = Hub::new(node.dyn_bus());
    let mut pausing = hub.subscribe("room").await.unwrap();
    let mut never_reads = hub.subscribe("room").await.unwrap();

    let published = publish_many(publisher.bus.as_ref(), "room", PUBLISHED).await;
    // A pause shorter than the lag timeout: the hub waits for this subscriber.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut received = BTreeSet::new();
    while received != published {
        let delivery = next(&mut pausing).await;
        assert!(published.contains(&delivery.id()), "not published");
        assert!(
            received.insert(delivery.id()) || delivery.redelivered(),
            "a repeat that is not flagged"
        );
        delivery.ack().await.unwrap();
    }
    assert_eq!(
        pausing.dropped(),
        0,
        "nothing was dropped for the pausing subscriber"
    );
    assert_eq!(
        pausing.end(),
        None,
        "the pausing subscriber is still subscribed"
    );

    // The one that never reads was cut off and told, and held the other back only so long.
    assert!(
        eventually(DEADLINE, || never_reads.end().is_some()).await,
        "the stuck subscriber was never cut off"
    );
    assert!(
        matches!(never_reads.end(), Some(SubscriptionEnd::Lagged { dropped }) if dropped >= 1),
        "{:?}",
        never_reads.end()
    );
    assert_eq!(node.metric("bus_lagged_total", &[("backend", "hub")]), 1.0);
    let rest: Vec<_> = std::iter::from_fn(|| never_reads.try_recv()).collect();
    drop(rest);
    assert!(never_reads.recv().await.is_none());
}

#[tokio::test]
async fn hub_on_jetstream_ack_waits_for_every_local_copy() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let publisher = js_node(&server, "publisher", JetStreamOptions::default()).await;
    let node = js_node(&server, "hub", JetStreamOptions::default()).await;
    let hub = Hub::new(node.dyn_bus());
    let mut acks = hub.subscribe("room").await.unwrap();
    let mut drops = hub.subscribe("room").await.unwrap();

    let id = *publish_many(publisher.bus.as_ref(), "room", 1)
        .await
        .first()
        .unwrap();
    let acked = next(&mut acks).await;
    assert_eq!(acked.id(), id);
    acked.ack().await.unwrap();
    let dropped = next(&mut drops).await;
    assert_eq!(dropped.id(), id);
    // One local copy is dropped without an ack: the message must come back (ack_wait is 30 s,
    // so only the decline can bring it back within the deadline).
    drop(dropped);
    for subscription in [&mut acks, &mut drops] {
        let again = next(subscription).await;
        assert_eq!(again.id(), id);
        assert!(again.redelivered(), "a repeat is flagged");
        again.ack().await.unwrap();
    }
    // Both copies acknowledged now: it does not come again.
    let sentinel = *publish_many(publisher.bus.as_ref(), "room", 1)
        .await
        .first()
        .unwrap();
    for subscription in [&mut acks, &mut drops] {
        let delivery = next(subscription).await;
        assert_eq!(delivery.id(), sentinel, "the message came a third time");
        delivery.ack().await.unwrap();
    }
}

/// The example hub's shutdown order: its clients' connections end (their subscriptions are
/// dropped), then `Hub::close`, then the bus's `close`.
async fn shut_down_like_the_example(hub: Hub, subscription: Option<Subscription>) {
    drop(subscription);
    hub.close().await;
    hub.bus().close().await;
}

#[tokio::test]
async fn durable_resumes_after_hub_close_and_restart() {
    const WHILE_AWAY: usize = 5;
    let Some(server) = NatsServer::start() else {
        return;
    };
    let publisher = js_node(&server, "publisher", JetStreamOptions::default()).await;
    // Twice: clients gone before the hub closes, and a client still subscribed when it does.
    for keep_client in [false, true] {
        let node = js_node(&server, "hub", JetStreamOptions::default()).await;
        let hub = Hub::new(node.dyn_bus());
        let mut room = hub.subscribe("room").await.unwrap();
        let before = *publish_many(publisher.bus.as_ref(), "room", 1)
            .await
            .first()
            .unwrap();
        let delivery = next(&mut room).await;
        assert_eq!(delivery.id(), before);
        delivery.ack().await.unwrap();
        if keep_client {
            hub.close().await;
            hub.bus().close().await;
            drop(room);
        } else {
            shut_down_like_the_example(hub, Some(room)).await;
        }

        let while_away = publish_many(publisher.bus.as_ref(), "room", WHILE_AWAY).await;
        let node = js_node(&server, "hub", JetStreamOptions::default()).await;
        let hub = Hub::new(Arc::clone(&node.dyn_bus()));
        let mut room = hub.subscribe("room").await.unwrap();
        let mut received = BTreeSet::new();
        while received != while_away {
            let delivery = next(&mut room).await;
            assert_ne!(delivery.id(), before, "an acknowledged message came back");
            received.insert(delivery.id());
            delivery.ack().await.unwrap();
        }
        shut_down_like_the_example(hub, Some(room)).await;
    }
}
