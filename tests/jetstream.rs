//! The JetStream bus against a real `nats-server -js`: what at-least-once means for a hub.
//! Acknowledged publishes survive a server crash, retries are de-duplicated by id, unsettled
//! deliveries come back flagged, the node's one durable consumer lives as long as the node id
//! (not as long as a process or a subscription), and the bus copes with streams and consumers
//! that are missing, refused, limited or deleted under it. Every test starts its own server on
//! a free port with its own store.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use hubbus::backend::nats::jetstream::JetStreamBus;
use hubbus::backend::nats::{AsyncNatsLink, JetStreamOptions, NatsOptions};
use hubbus::{
    BusError, BusOptions, HealthState, IdGenerator, Message, MessageBus, MessageId, NodeId,
    Subscription, SubscriptionEnd, subscribe_with,
};
use support::counting::CountingLink;
use support::jetstream::{
    DEADLINE, JsNode as Node, admin, admin_link, announcements, consumer_names, js_node as node,
    js_node_on, js_node_with, link_options, start_js_node, until_announced,
};
use support::links::over_both_links;
use support::{NatsServer, eventually};

async fn start_node(url: String, name: &str, js: JetStreamOptions) -> Result<Node, BusError> {
    start_js_node(url, name, js, |_| {}).await
}

async fn next(subscription: &mut Subscription) -> hubbus::Delivery {
    tokio::time::timeout(DEADLINE, subscription.recv())
        .await
        .unwrap_or_else(|_| panic!("nothing arrived on {}", subscription.channel()))
        .expect("subscription ended")
}

async fn publish(bus: &JetStreamBus, channel: &str, payload: &str) -> hubbus::PublishReceipt {
    bus.publish(channel, Bytes::copy_from_slice(payload.as_bytes()))
        .await
        .unwrap_or_else(|error| panic!("publish to {channel}: {error}"))
}

/// Publishes until the server stores it: right after its stream was deleted or its store lost,
/// nats-server may refuse a publish for a moment (`stream store failed`, JetStream not ready),
/// which the caller sees as an error and retries, as an application would.
async fn publish_once_ready(
    bus: &JetStreamBus,
    channel: &str,
    payload: &str,
) -> hubbus::PublishReceipt {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match bus
            .publish(channel, Bytes::copy_from_slice(payload.as_bytes()))
            .await
        {
            Ok(receipt) => return receipt,
            Err(error) if Instant::now() < deadline => {
                tracing::debug!(%error, "publish refused; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("no publish to {channel} succeeded: {error}"),
        }
    }
}

#[tokio::test]
async fn publishes_are_acknowledged_with_increasing_sequences_and_delivered() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let listener = node(&server, "listener", JetStreamOptions::default()).await;
    let publisher = node(&server, "publisher", JetStreamOptions::default()).await;
    let mut room = listener.bus.subscribe("room1").await.unwrap();

    let mut receipts = Vec::new();
    for index in 0..5 {
        receipts.push(publish(&publisher.bus, "room1", &format!("m{index}")).await);
    }
    let sequences: Vec<u64> = receipts
        .iter()
        .map(|receipt| receipt.sequence.expect("JetStream has sequences"))
        .collect();
    assert!(
        sequences.windows(2).all(|pair| pair[0] < pair[1]),
        "{sequences:?}"
    );
    for (index, receipt) in receipts.iter().enumerate() {
        let delivery = next(&mut room).await;
        assert_eq!(delivery.id(), receipt.id);
        assert_eq!(delivery.payload().as_ref(), format!("m{index}").as_bytes());
        assert_eq!(delivery.origin().as_str(), "publisher");
        assert!(!delivery.redelivered());
        delivery.ack().await.unwrap();
    }
    let jetstream = [("backend", "jetstream")];
    assert_eq!(publisher.metric("bus_published_total", &jetstream), 5.0);
    assert_eq!(
        publisher.metric("bus_publish_errors_total", &jetstream),
        0.0
    );
    assert_eq!(listener.metric("bus_received_total", &jetstream), 5.0);
    assert_eq!(publisher.metrics.nats_reconnects().get(), 0);
    publisher.bus.close().await;
    listener.bus.close().await;
}

#[tokio::test]
async fn a_publish_retried_with_the_same_id_is_delivered_once() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let listener = node(&server, "listener", JetStreamOptions::default()).await;
    let publisher = node(&server, "publisher", JetStreamOptions::default()).await;
    let mut room = listener.bus.subscribe("room1").await.unwrap();

    let id = IdGenerator::from_entropy().next_id();
    let message = Message::new("room1", "once").with_id(id);
    let first = publisher
        .bus
        .publish_message(message.clone())
        .await
        .unwrap();
    let retry = publisher.bus.publish_message(message).await.unwrap();
    assert_eq!(first, retry, "the retry is acknowledged as the original");
    let sentinel = publish(&publisher.bus, "room1", "sentinel").await;

    let delivery = next(&mut room).await;
    assert_eq!(delivery.id(), id);
    delivery.ack().await.unwrap();
    let delivery = next(&mut room).await;
    assert_eq!(delivery.id(), sentinel.id, "the retry was delivered again");
    delivery.ack().await.unwrap();
}

over_both_links! {
    #[tokio::test]
    async fn an_unacked_delivery_comes_back_after_ack_wait_flagged_redelivered(kind: LinkKind) {
        let Some(server) = NatsServer::start() else {
            return;
        };
        let ack_wait = Duration::from_millis(500);
        let js = JetStreamOptions {
            ack_wait,
            ..JetStreamOptions::default()
        };
        let listener = js_node_on(kind, &server, "listener", js.clone()).await;
        let publisher = js_node_on(kind, &server, "publisher", js).await;
        let mut room = listener.bus.subscribe("room1").await.unwrap();

        let receipt = publish(&publisher.bus, "room1", "ignored").await;
        let first = next(&mut room).await;
        let delivered_at = Instant::now();
        assert_eq!(first.id(), receipt.id);
        assert!(!first.redelivered());

        let again = next(&mut room).await;
        assert_eq!(again.id(), receipt.id);
        assert!(again.redelivered(), "a redelivery is flagged");
        assert!(
            delivered_at.elapsed() >= ack_wait - Duration::from_millis(100),
            "came back after {:?}, before ack_wait",
            delivered_at.elapsed()
        );
        again.ack().await.unwrap();
        // Acking the first copy later is harmless.
        first.ack().await.unwrap();
        let sentinel = publish(&publisher.bus, "room1", "sentinel").await;
        assert_eq!(next(&mut room).await.id(), sentinel.id);
    }
}

over_both_links! {
    #[tokio::test]
    async fn a_nak_brings_a_delivery_back_before_ack_wait(kind: LinkKind) {
        let Some(server) = NatsServer::start() else {
            return;
        };
        let ack_wait = Duration::from_secs(30);
        let js = JetStreamOptions {
            ack_wait,
            ..JetStreamOptions::default()
        };
        let listener = js_node_on(kind, &server, "listener", js.clone()).await;
        let publisher = js_node_on(kind, &server, "publisher", js).await;
        let mut room = listener.bus.subscribe("room1").await.unwrap();
        let receipt = publish(&publisher.bus, "room1", "declined").await;

        let first = next(&mut room).await;
        let naked_at = Instant::now();
        first.nak(None).await.unwrap();
        let second = next(&mut room).await;
        assert_eq!(second.id(), receipt.id);
        assert!(second.redelivered());
        assert!(
            naked_at.elapsed() < Duration::from_secs(5),
            "{:?}",
            naked_at.elapsed()
        );

        let delay = Duration::from_millis(300);
        let naked_at = Instant::now();
        second.nak(Some(delay)).await.unwrap();
        // A second settle of the same delivery is a no-op.
        second.ack().await.unwrap();
        let third = next(&mut room).await;
        let waited = naked_at.elapsed();
        assert_eq!(third.id(), receipt.id);
        assert!(third.redelivered());
        assert!(
            waited >= delay - Duration::from_millis(50) && waited < ack_wait,
            "came back after {waited:?}"
        );
        third.ack().await.unwrap();
    }
}

over_both_links! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_acked_message_lost_when_server_killed(kind: LinkKind) {
        const COUNT: usize = 3000;
        const IN_FLIGHT: usize = 32;
        let Some(mut server) = NatsServer::start() else {
            return;
        };
        let js = JetStreamOptions {
            ack_wait: Duration::from_secs(2),
            publish_timeout: Duration::from_secs(1),
            api_timeout: Duration::from_secs(1),
            ..JetStreamOptions::default()
        };
        let subscriber = js_node_on(kind, &server, "subscriber", js.clone()).await;
        let publisher = Arc::new(js_node_on(kind, &server, "publisher", js).await);
        let mut subscription = subscriber.bus.subscribe("crash").await.unwrap();

        // Every delivery, by id: how often it arrived and how often flagged redelivered.
        let received: Arc<Mutex<BTreeMap<MessageId, (u32, u32)>>> = Arc::default();
        let receiver = tokio::spawn({
            let received = received.clone();
            async move {
                while let Some(delivery) = subscription.recv().await {
                    {
                        let mut received = received.lock().unwrap();
                        let entry = received.entry(delivery.id()).or_default();
                        entry.0 += 1;
                        entry.1 += u32::from(delivery.redelivered());
                    }
                    let _ = delivery.ack().await;
                }
            }
        });

        let acked: Arc<Mutex<BTreeSet<MessageId>>> = Arc::default();
        let ids: Vec<MessageId> = {
            let generator = IdGenerator::from_entropy();
            (0..COUNT).map(|_| generator.next_id()).collect()
        };
        let publishing = tokio::spawn({
            let (publisher, acked) = (publisher.clone(), acked.clone());
            async move {
                futures_util::stream::iter(ids.into_iter().enumerate())
                    .map(|(index, id)| {
                        let (publisher, acked) = (publisher.clone(), acked.clone());
                        async move {
                            // A realistic publisher: retry with the same id until acknowledged.
                            let give_up = Instant::now() + Duration::from_secs(60);
                            let message = Message::new("crash", index.to_string()).with_id(id);
                            while Instant::now() < give_up {
                                if publisher.bus.publish_message(message.clone()).await.is_ok() {
                                    acked.lock().unwrap().insert(id);
                                    return;
                                }
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    })
                    .buffer_unordered(IN_FLIGHT)
                    .collect::<Vec<()>>()
                    .await;
            }
        });

        assert!(
            eventually(DEADLINE, || acked.lock().unwrap().len() >= COUNT / 3).await,
            "publishing stalled before the crash"
        );
        let server = tokio::task::spawn_blocking(move || {
            server.kill();
            server
        })
        .await
        .unwrap();
        let acked_at_kill = acked.lock().unwrap().len();
        assert!(
            acked_at_kill < COUNT,
            "the server was killed after the last publish"
        );
        assert!(
            eventually(DEADLINE, || publisher.bus.health().state
                == HealthState::Down)
            .await,
            "the publisher did not notice the crash"
        );
        let server = tokio::task::spawn_blocking(move || {
            let mut server = server;
            server.restart();
            server
        })
        .await
        .unwrap();

        tokio::time::timeout(Duration::from_secs(90), publishing)
            .await
            .expect("publishing did not finish")
            .unwrap();
        let acked: BTreeSet<MessageId> = acked.lock().unwrap().clone();
        assert_eq!(
            acked.len(),
            COUNT,
            "every publish is eventually acknowledged"
        );
        let all_delivered = eventually(Duration::from_secs(30), || {
            let received = received.lock().unwrap();
            acked.iter().all(|id| received.contains_key(id))
        })
        .await;
        let received = received.lock().unwrap().clone();
        let lost: Vec<&MessageId> = acked
            .iter()
            .filter(|id| !received.contains_key(id))
            .collect();
        let duplicates: u32 = received.values().map(|(count, _)| count - 1).sum();
        let flagged: u32 = received.values().map(|(_, flagged)| *flagged).sum();
        eprintln!(
            "acked={} at_kill={acked_at_kill} delivered={} lost={} duplicates={duplicates} \
             flagged_redelivered={flagged}",
            acked.len(),
            received.len(),
            lost.len()
        );
        assert!(
            all_delivered && lost.is_empty(),
            "acknowledged but never delivered: {lost:?}"
        );
        assert!(
            received.keys().all(|id| acked.contains(id)),
            "something was delivered that nobody published"
        );
        assert_eq!(
            flagged, duplicates,
            "every duplicate is flagged redelivered"
        );
        assert!(publisher.metrics.nats_reconnects().get() >= 1);
        assert!(subscriber.metrics.nats_reconnects().get() >= 1);
        subscriber.bus.close().await;
        let _ = tokio::time::timeout(DEADLINE, receiver).await;
        publisher.bus.close().await;
        drop(server);
    }
}

#[tokio::test]
async fn an_existing_stream_the_bus_cannot_use_is_a_config_error() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let link = admin_link(&server).await;
    let created = admin(
        &link,
        "$JS.API.STREAM.CREATE.VOLATILE",
        serde_json::json!({"name": "VOLATILE", "subjects": ["volatile.>"], "storage": "memory"}),
    )
    .await;
    assert!(created.get("error").is_none(), "{created}");
    let created = admin(
        &link,
        "$JS.API.STREAM.CREATE.ELSEWHERE",
        serde_json::json!({"name": "ELSEWHERE", "subjects": ["elsewhere.>"], "storage": "file"}),
    )
    .await;
    assert!(created.get("error").is_none(), "{created}");

    for (stream, prefix, mentions) in [
        ("VOLATILE", "volatile", "memory"),
        ("ELSEWHERE", "hubbus.js", "does not cover"),
    ] {
        let js = JetStreamOptions {
            stream: stream.into(),
            subject_prefix: prefix.into(),
            ..JetStreamOptions::default()
        };
        match start_node(server.url(), "refused", js).await {
            Err(BusError::Config { key, reason }) => {
                assert_eq!(key, "nats.stream");
                assert!(reason.contains(mentions), "{reason}");
            }
            other => panic!("{stream}: {:?}", other.map(|node| node.bus.health())),
        }
    }
    // The refused streams were left as they were.
    let info = admin(&link, "$JS.API.STREAM.INFO.VOLATILE", serde_json::json!({})).await;
    assert_eq!(info["config"]["storage"], "memory");
}

#[tokio::test]
async fn ack_pending_gauge_follows_unacked_deliveries() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let listener = node(&server, "listener", JetStreamOptions::default()).await;
    let publisher = node(&server, "publisher", JetStreamOptions::default()).await;
    let mut room = listener.bus.subscribe("room1").await.unwrap();
    for index in 0..3 {
        publish(&publisher.bus, "room1", &format!("m{index}")).await;
    }
    let mut deliveries = Vec::new();
    for _ in 0..3 {
        deliveries.push(next(&mut room).await);
    }
    let gauge = listener.metrics.nats_ack_pending();
    assert!(
        eventually(DEADLINE, || gauge.get() == 3).await,
        "ack pending stayed at {}",
        gauge.get()
    );
    for delivery in &deliveries {
        delivery.ack().await.unwrap();
    }
    assert!(
        eventually(DEADLINE, || gauge.get() == 0).await,
        "ack pending stayed at {}",
        gauge.get()
    );
}

#[tokio::test]
async fn a_bus_started_while_the_server_is_down_works_once_it_is_up() {
    let Some(mut server) = NatsServer::start() else {
        return;
    };
    server.kill();
    let js = JetStreamOptions {
        api_timeout: Duration::from_millis(500),
        publish_timeout: Duration::from_millis(500),
        ..JetStreamOptions::default()
    };
    let started = Instant::now();
    let hub = start_node(server.url(), "early", js.clone())
        .await
        .expect("start");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let health = hub.bus.health();
    assert_eq!(health.state, HealthState::Down);
    assert!(health.reason.is_some());
    let refused = hub.bus.publish("room1", "too early".into()).await;
    assert!(
        matches!(
            refused,
            Err(BusError::PublishTimeout(_) | BusError::NotConnected(_))
        ),
        "{refused:?}"
    );

    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    assert!(
        eventually(DEADLINE, || hub.bus.health().is_connected()).await,
        "{:?}",
        hub.bus.health()
    );
    let mut room = hub.bus.subscribe("room1").await.unwrap();
    let receipt = publish(&hub.bus, "room1", "now").await;
    assert_eq!(next(&mut room).await.id(), receipt.id);
    drop(server);
}

#[tokio::test]
async fn a_deleted_stream_is_created_again_and_delivery_resumes() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let link = admin_link(&server).await;
    let listener = node(&server, "listener", JetStreamOptions::default()).await;
    let publisher = node(&server, "publisher", JetStreamOptions::default()).await;
    let mut room = listener.bus.subscribe("room1").await.unwrap();
    let before = publish(&publisher.bus, "room1", "before").await;
    let delivery = next(&mut room).await;
    assert_eq!(delivery.id(), before.id);
    delivery.ack().await.unwrap();

    // Three more the listener holds unacknowledged: the deletion takes them along.
    for index in 0..3 {
        publish(&publisher.bus, "room1", &format!("pending {index}")).await;
    }
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(next(&mut room).await);
    }

    let deleted = admin(&link, "$JS.API.STREAM.DELETE.HUBBUS", serde_json::json!({})).await;
    assert_eq!(deleted["success"], true, "{deleted}");
    let after = publish_once_ready(&publisher.bus, "room1", "after").await;
    let delivery = next(&mut room).await;
    assert_eq!(delivery.id(), after.id);
    assert!(
        after.sequence.is_some_and(|sequence| sequence < 4),
        "a new stream starts again: {after:?}"
    );
    delivery.ack().await.unwrap();
    // Not silent: counted, and health says what happened for a while.
    for node in [&publisher, &listener] {
        assert!(
            eventually(DEADLINE, || node
                .metric("bus_jetstream_stream_recreated_total", &[])
                >= 1.0)
            .await,
            "the re-creation was not counted"
        );
        let health = node.bus.health();
        assert_eq!(health.state, HealthState::Degraded, "{health:?}");
        assert!(
            health
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("deleted and created again")),
            "{health:?}"
        );
    }
    drop(held);
}

/// A server that comes back without its store (a lost disk) knows no stream and no consumer:
/// what was stored is gone, as the spec says, but the bus creates both again and delivers what
/// is published from then on, to a subscription that never ended.
#[tokio::test]
async fn a_server_back_without_its_store_is_used_again() {
    let Some(mut server) = NatsServer::start() else {
        return;
    };
    let listener = node(&server, "listener", JetStreamOptions::default()).await;
    let publisher = node(&server, "publisher", JetStreamOptions::default()).await;
    let mut room = listener.bus.subscribe("room1").await.unwrap();
    let before = publish(&publisher.bus, "room1", "before").await;
    let delivery = next(&mut room).await;
    assert_eq!(delivery.id(), before.id);
    delivery.ack().await.unwrap();

    let server = tokio::task::spawn_blocking(move || {
        server.kill();
        server.wipe_store();
        server.restart();
        server
    })
    .await
    .unwrap();
    assert!(
        eventually(DEADLINE, || listener.bus.health().state
            != HealthState::Down
            && publisher.bus.health().state != HealthState::Down)
        .await,
        "{:?} {:?}",
        listener.bus.health(),
        publisher.bus.health()
    );
    let after = publish_once_ready(&publisher.bus, "room1", "after").await;
    // A publish that timed out above may have been stored all the same, and comes first.
    loop {
        let delivery = next(&mut room).await;
        assert_ne!(
            delivery.id(),
            before.id,
            "the lost store cannot give it back"
        );
        delivery.ack().await.unwrap();
        if delivery.id() == after.id {
            break;
        }
    }
    drop(server);
}

#[tokio::test]
async fn a_consumer_deleted_under_its_pull_loop_is_created_again_where_it_was() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let link = admin_link(&server).await;
    let listener = node(&server, "listener", JetStreamOptions::default()).await;
    let publisher = node(&server, "publisher", JetStreamOptions::default()).await;
    let history = publish(&publisher.bus, "room1", "before anyone listened").await;
    let mut room = listener.bus.subscribe("room1").await.unwrap();
    let handled = publish(&publisher.bus, "room1", "handled").await;
    let delivery = next(&mut room).await;
    assert_eq!(delivery.id(), handled.id);
    delivery.ack().await.unwrap();

    let names = consumer_names(&link).await;
    assert_eq!(names.len(), 1, "{names:?}");
    let subject = format!("$JS.API.CONSUMER.DELETE.HUBBUS.{}", names[0]);
    // nats-server 2.9 can fail a delete that races the consumer writing its state (err_code
    // 10051, "directory not empty") after it has stopped the consumer; the retry then finds
    // nothing left to delete.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let deleted = admin(&link, &subject, serde_json::json!({})).await;
        let code = deleted["error"]["err_code"].as_u64();
        if deleted["success"] == true || code == Some(10014) {
            break;
        }
        assert!(Instant::now() < deadline, "{deleted}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = publish(&publisher.bus, "room1", "after").await;
    loop {
        let delivery = next(&mut room).await;
        assert_ne!(
            delivery.id(),
            history.id,
            "the stream's history was replayed"
        );
        delivery.ack().await.unwrap();
        if delivery.id() == after.id {
            assert!(!delivery.redelivered());
            break;
        }
        assert_eq!(delivery.id(), handled.id);
        assert!(delivery.redelivered(), "a repeat is flagged");
    }
    assert_eq!(
        consumer_names(&link).await,
        names,
        "created again under its name"
    );
}

#[tokio::test]
async fn a_hub_restarted_with_its_node_id_resumes_its_consumer() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let js = JetStreamOptions {
        ack_wait: Duration::from_secs(1),
        ..JetStreamOptions::default()
    };
    let publisher = node(&server, "publisher", js.clone()).await;
    let hub = node(&server, "hub", js.clone()).await;
    let mut room = hub.bus.subscribe("room1").await.unwrap();
    let handled = publish(&publisher.bus, "room1", "handled").await;
    let unhandled = publish(&publisher.bus, "room1", "unhandled").await;
    let delivery = next(&mut room).await;
    assert_eq!(delivery.id(), handled.id);
    delivery.ack().await.unwrap();
    let declined = next(&mut room).await;
    assert_eq!(declined.id(), unhandled.id);
    drop(declined);
    hub.bus.close().await;

    let while_away = publish(&publisher.bus, "room1", "while away").await;
    let hub = node(&server, "hub", js).await;
    let mut room = hub.bus.subscribe("room1").await.unwrap();
    let mut got = BTreeMap::new();
    while got.len() < 2 {
        let delivery = next(&mut room).await;
        assert_ne!(
            delivery.id(),
            handled.id,
            "an acknowledged message came back"
        );
        got.insert(delivery.id(), delivery.redelivered());
        delivery.ack().await.unwrap();
    }
    // Declined (dropped unacknowledged) in the first run, so it comes again; the server may
    // count a declined delivery as not delivered, so only its id marks it as a repeat here.
    assert!(got.contains_key(&unhandled.id), "{got:?}");
    assert_eq!(got.get(&while_away.id), Some(&false), "{got:?}");
}

#[tokio::test]
async fn unsubscribing_keeps_the_node_consumer_and_closing_never_deletes_it() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let link = admin_link(&server).await;
    let hub = node(&server, "hub", JetStreamOptions::default()).await;
    let first = hub.bus.subscribe("room1").await.unwrap();
    let second = hub.bus.subscribe("room1").await.unwrap();
    let other = hub.bus.subscribe("room2").await.unwrap();
    let names = consumer_names(&link).await;
    assert_eq!(names.len(), 1, "one consumer per node: {names:?}");
    assert!(names[0].starts_with("hubbus_hub_"), "{names:?}");
    first.close().await;
    drop(second);
    drop(other);
    assert_eq!(consumer_names(&link).await, names, "unsubscribing keeps it");
    hub.bus.close().await;
    assert_eq!(consumer_names(&link).await, names, "closing keeps it");
}

#[tokio::test]
async fn a_slow_subscriber_holds_back_delivery_and_loses_nothing() {
    const QUEUE: usize = 2;
    const PUBLISHED: usize = 6;
    let Some(server) = NatsServer::start() else {
        return;
    };
    let publisher = node(&server, "publisher", JetStreamOptions::default()).await;
    let slow = js_node_with(&server, "slow", JetStreamOptions::default(), |options| {
        options.subscriber_queue = QUEUE;
    })
    .await;
    let mut room = slow.bus.subscribe("room1").await.unwrap();

    let mut published = Vec::new();
    for index in 0..PUBLISHED {
        published.push(
            publish(&publisher.bus, "room1", &format!("m{index}"))
                .await
                .id,
        );
    }
    let mut received = Vec::new();
    while received.len() < PUBLISHED {
        // Slower than the publisher, well within the lag timeout.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let delivery = next(&mut room).await;
        received.push(delivery.id());
        delivery.ack().await.unwrap();
    }
    assert_eq!(received, published, "everything, in order");
    assert_eq!(room.dropped(), 0, "nothing was dropped");
    assert_eq!(room.end(), None, "still subscribed");
    assert_eq!(slow.metric("bus_lagged_total", &[]), 0.0);
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_cut_off_as_lagged_and_told() {
    const QUEUE: usize = 2;
    const PUBLISHED: usize = 10;
    let Some(server) = NatsServer::start() else {
        return;
    };
    let lag_timeout = Duration::from_millis(500);
    let publisher = node(&server, "publisher", JetStreamOptions::default()).await;
    let hub = js_node_with(&server, "hub", JetStreamOptions::default(), |options| {
        options.subscriber_queue = QUEUE;
        options.lag_timeout = lag_timeout;
    })
    .await;
    let mut reader = hub.bus.subscribe("room1").await.unwrap();
    let mut stuck = hub.bus.subscribe("room1").await.unwrap();

    let mut published = BTreeSet::new();
    for index in 0..PUBLISHED {
        published.insert(
            publish(&publisher.bus, "room1", &format!("m{index}"))
                .await
                .id,
        );
    }
    let mut received = BTreeSet::new();
    while received != published {
        let delivery = next(&mut reader).await;
        received.insert(delivery.id());
        delivery.ack().await.unwrap();
    }
    assert!(
        eventually(DEADLINE, || stuck.end().is_some()).await,
        "the stuck subscriber was never cut off"
    );
    match stuck.end() {
        Some(SubscriptionEnd::Lagged { dropped }) => {
            assert!(dropped >= 1, "told how far behind: {dropped}");
            assert_eq!(stuck.dropped(), dropped);
        }
        other => panic!("ended as {other:?}"),
    }
    assert!(stuck.recv().await.is_none(), "a lagged subscription ends");
    assert_eq!(
        hub.metric("bus_lagged_total", &[("backend", "jetstream")]),
        1.0
    );
    assert!(hub.metric("bus_dropped_total", &[("reason", "lagged")]) >= 1.0);
    // The channel goes on for the subscriber that keeps up.
    let after = publish(&publisher.bus, "room1", "after").await;
    let delivery = next(&mut reader).await;
    assert_eq!(delivery.id(), after.id);
    delivery.ack().await.unwrap();
}

#[tokio::test]
async fn consumers_do_not_leak_across_restarts() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let link = admin_link(&server).await;
    let publisher = node(&server, "publisher", JetStreamOptions::default()).await;
    for run in 0..10 {
        let hub = node(&server, "restarting", JetStreamOptions::default()).await;
        let mut rooms = Vec::new();
        for channel in ["room1", "room2", "room3"] {
            rooms.push(hub.bus.subscribe(channel).await.unwrap());
        }
        let sent = publish(&publisher.bus, "room2", &format!("run {run}")).await;
        let delivery = next(&mut rooms[1]).await;
        assert_eq!(delivery.id(), sent.id);
        delivery.ack().await.unwrap();
        hub.bus.close().await;
    }
    let names = consumer_names(&link).await;
    assert_eq!(names.len(), 1, "ten restarts, one consumer: {names:?}");

    // A node that never comes back: the server removes its consumer after the threshold.
    let js = JetStreamOptions {
        inactive_threshold: Duration::from_secs(2),
        ..JetStreamOptions::default()
    };
    let gone = node(&server, "gone", js).await;
    let _room = gone.bus.subscribe("room1").await.unwrap();
    assert_eq!(consumer_names(&link).await.len(), 2);
    gone.bus.close().await;
    let deadline = Instant::now() + DEADLINE;
    let mut left = consumer_names(&link).await;
    while left.len() > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = consumer_names(&link).await;
    }
    assert_eq!(
        left, names,
        "the abandoned consumer expired, the other stayed"
    );
}

#[tokio::test]
async fn two_processes_with_one_node_id_are_refused_or_reported() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    // Watch the announcements, to start the second process only once the first answers.
    let watcher = admin_link(&server).await;
    let mut announcements = announcements(&watcher).await;
    let first = node(&server, "twin", JetStreamOptions::default()).await;
    until_announced(&mut announcements).await;
    match start_node(server.url(), "twin", JetStreamOptions::default()).await {
        Err(BusError::Config { key, reason }) => {
            assert_eq!(key, "node_id");
            assert!(reason.contains("another live process"), "{reason}");
        }
        other => panic!(
            "a second process with the id started: {:?}",
            other.map(|n| n.bus.health())
        ),
    }
    assert!(
        first.bus.health().is_connected(),
        "the holder is not disturbed"
    );
    first.bus.close().await;

    // Two starting at the same moment may both pass the start check; then both report it.
    let (a, b) = tokio::join!(
        start_node(server.url(), "pair", JetStreamOptions::default()),
        start_node(server.url(), "pair", JetStreamOptions::default()),
    );
    let started: Vec<Node> = [a, b].into_iter().filter_map(Result::ok).collect();
    assert!(!started.is_empty(), "at least one of the two starts");
    if started.len() == 2 {
        let reported = eventually(Duration::from_secs(15), || {
            started.iter().all(|node| {
                node.bus
                    .health()
                    .reason
                    .is_some_and(|reason| reason.contains("another live process"))
            })
        })
        .await;
        assert!(
            reported,
            "both run silently: {:?}",
            started.iter().map(|n| n.bus.health()).collect::<Vec<_>>()
        );
    }
}

#[tokio::test]
async fn jetstream_subscribe_ok_means_the_consumer_exists() {
    let Some(mut server) = NatsServer::start() else {
        return;
    };
    let url = server.url();
    server.kill();
    let early = start_node(url.clone(), "early", JetStreamOptions::default())
        .await
        .expect("starts without the server");
    match early.bus.subscribe("room1").await {
        Err(BusError::NotConnected(reason)) => assert!(reason.contains("consumer"), "{reason}"),
        other => panic!("subscribe without a consumer: {:?}", other.map(|_| ())),
    }

    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    let link = admin_link(&server).await;
    assert!(eventually(DEADLINE, || early.bus.health().is_connected()).await);
    let mut room = early.bus.subscribe("room1").await.expect("subscribe");
    let names = consumer_names(&link).await;
    assert!(
        names.iter().any(|name| name.starts_with("hubbus_early_")),
        "subscribe returned before the consumer existed: {names:?}"
    );
    let publisher = node(&server, "publisher", JetStreamOptions::default()).await;
    let mut published = Vec::new();
    for index in 0..5 {
        published.push(
            publish(&publisher.bus, "room1", &format!("m{index}"))
                .await
                .id,
        );
    }
    for id in published {
        let delivery = next(&mut room).await;
        assert_eq!(delivery.id(), id);
        delivery.ack().await.unwrap();
    }
}

#[tokio::test]
async fn jetstream_consumer_limit_is_reported() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let link = admin_link(&server).await;
    let created = admin(
        &link,
        "$JS.API.STREAM.CREATE.HUBBUS",
        serde_json::json!({
            "name": "HUBBUS", "subjects": ["hubbus_js.>"], "storage": "file", "max_consumers": 1
        }),
    )
    .await;
    assert!(created.get("error").is_none(), "{created}");
    let first = node(&server, "first", JetStreamOptions::default()).await;
    let _room = first
        .bus
        .subscribe("room1")
        .await
        .expect("the one consumer");
    let second = node(&server, "second", JetStreamOptions::default()).await;
    match second.bus.subscribe("room1").await {
        Err(BusError::Refused { channel, reason }) => {
            assert_eq!(channel, "room1");
            assert!(reason.contains("consumer"), "{reason}");
        }
        other => panic!("subscribe past the consumer limit: {:?}", other.map(|_| ())),
    }
    let health = second.bus.health();
    assert_eq!(health.state, HealthState::Down, "{health:?}");
    assert!(
        health
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("consumer")),
        "{health:?}"
    );
    assert!(second.metric("bus_jetstream_consumer_errors_total", &[]) >= 1.0);
    assert!(first.bus.health().is_connected());
}

#[tokio::test]
async fn subscribe_with_on_jetstream_acks_and_keeps_flowing() {
    const PUBLISHED: usize = 1100;
    let Some(server) = NatsServer::start() else {
        return;
    };
    let publisher = node(&server, "publisher", JetStreamOptions::default()).await;
    let handler_node = node(&server, "handler", JetStreamOptions::default()).await;
    let seen = Arc::new(Mutex::new(BTreeMap::<MessageId, usize>::new()));
    let failed_once = Arc::new(AtomicUsize::new(0));
    let (seen_by_handler, failed) = (seen.clone(), failed_once.clone());
    let handle = subscribe_with(handler_node.bus.as_ref(), "room1", move |delivery| {
        let (seen, failed) = (seen_by_handler.clone(), failed.clone());
        async move {
            *seen.lock().unwrap().entry(delivery.id()).or_default() += 1;
            // The very first message fails once: it must come back.
            if failed.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err("not now");
            }
            Ok(())
        }
    })
    .await
    .unwrap();
    let ids: Vec<MessageId> = futures_util::stream::iter(0..PUBLISHED)
        .map(|index| {
            let bus = publisher.bus.clone();
            async move { publish(&bus, "room1", &format!("m{index}")).await.id }
        })
        .buffered(32)
        .collect()
        .await;
    let all_handled = eventually(Duration::from_secs(30), || {
        let seen = seen.lock().unwrap();
        ids.iter().all(|id| seen.contains_key(id))
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    assert!(
        all_handled,
        "{} of {PUBLISHED} reached the handler",
        seen.len()
    );
    assert_eq!(
        seen.get(&ids[0]).copied(),
        Some(2),
        "the failed one came back once"
    );
    assert!(
        seen.values().filter(|&&count| count > 1).count() == 1,
        "everything else was acknowledged the first time"
    );
    handle.close().await;
}

/// Closes `hub` and checks that it took no longer than `bound`.
async fn closes_within(hub: &Node, bound: Duration, what: &str) {
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(30), hub.bus.close()).await;
    let took = started.elapsed();
    assert!(closed.is_ok(), "close hung {what}");
    assert!(took <= bound, "close took {took:?} {what}");
}

#[tokio::test]
async fn jetstream_close_returns_while_server_is_down() {
    let Some(mut killed) = NatsServer::start() else {
        return;
    };
    let Some(paused) = NatsServer::start() else {
        return;
    };
    // What a close may take at most when the server does not answer: the link's connect
    // timeout (1 s here), plus room for a busy machine.
    let bound = link_options(killed.url()).connect_timeout + Duration::from_millis(500);

    let hub = node(&killed, "closer", JetStreamOptions::default()).await;
    let _room = hub.bus.subscribe("room1").await.unwrap();
    killed.kill();
    assert!(eventually(DEADLINE, || !hub.bus.health().is_connected()).await);
    closes_within(&hub, bound, "with the server killed").await;

    // A server that keeps the connection but answers nothing, while a delivery is unsettled.
    let publisher = node(&paused, "publisher", JetStreamOptions::default()).await;
    let hub = node(&paused, "closer", JetStreamOptions::default()).await;
    let mut room = hub.bus.subscribe("room1").await.unwrap();
    publish(&publisher.bus, "room1", "unsettled").await;
    let _held = next(&mut room).await;
    paused.pause();
    closes_within(&hub, bound, "with the server answering nothing").await;
    paused.resume();
}

/// A JetStream bus with default settings over a link that logs every call, connected.
async fn counted_bus(
    server: &NatsServer,
    node_id: &str,
) -> (JetStreamBus, Arc<CountingLink>, JetStreamOptions) {
    let link = Arc::new(CountingLink::new(
        AsyncNatsLink::connect(link_options(server.url()))
            .await
            .unwrap(),
    ));
    let js = JetStreamOptions::default();
    let mut nats = NatsOptions::new(server.url());
    nats.jetstream = Some(js.clone());
    let options = BusOptions {
        node_id: NodeId::new(node_id).unwrap(),
        ..BusOptions::default()
    };
    let bus = JetStreamBus::start(options, nats, link.clone())
        .await
        .unwrap();
    assert!(eventually(DEADLINE, || bus.health().is_connected()).await);
    (bus, link, js)
}

#[tokio::test]
async fn jetstream_thousand_channels_subscribe_quickly_and_cost_nothing_idle() {
    const CHANNELS: usize = 1000;
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (bus, link, js) = counted_bus(&server, "many").await;
    link.take();

    let mut rooms = Vec::new();
    for index in 0..CHANNELS {
        rooms.push(bus.subscribe(&format!("room{index}")).await.unwrap());
    }
    let subscribing = link.take();
    let api_calls = CountingLink::sum(&subscribing, |call| {
        call.contains(" $JS.API.") && !call.contains("MSG.NEXT")
    });
    // A handful for the stream and the node's consumer, however many channels.
    assert!(
        api_calls <= 6,
        "{CHANNELS} subscribes asked the server {api_calls} times: {subscribing:?}"
    );

    // Idle: one waiting pull at a time and the ack-pending sweep, whatever the channel count.
    let idle = Duration::from_secs(3);
    tokio::time::sleep(idle).await;
    let idling = link.take();
    let pulls = CountingLink::sum(&idling, |call| call.contains(" $JS.API.CONSUMER.MSG.NEXT."));
    let infos = CountingLink::sum(&idling, |call| call.contains(" $JS.API.CONSUMER.INFO."));
    let max_pulls = (idle.as_millis() / js.pull_expires.as_millis()) as usize + 2;
    assert!(
        pulls <= max_pulls,
        "{pulls} pulls in {idle:?} idle: {idling:?}"
    );
    assert!(
        infos <= 2,
        "{infos} consumer infos in {idle:?} idle: {idling:?}"
    );

    // And every channel still works.
    let publisher = node(&server, "publisher", JetStreamOptions::default()).await;
    let sent = publish(&publisher.bus, "room999", "last room").await;
    let delivery = next(&mut rooms[999]).await;
    assert_eq!(delivery.id(), sent.id);
    delivery.ack().await.unwrap();
}

/// nats-server 2.9 drops a pull without a word when its expiry meets the first new message:
/// the message, and everything published behind it, waits for the next pull. The loop must send
/// that pull as soon as the dropped one expired, not wait a grace on top, look the consumer up
/// and back off as if the server had lost it; then the backlog drains in full pulls.
#[tokio::test]
async fn a_pull_dropped_without_a_word_is_followed_by_the_next_at_its_expiry() {
    const BACKLOG: usize = 2000;
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (bus, link, js) = counted_bus(&server, "dropped-pull").await;
    let mut room = bus.subscribe("room").await.unwrap();
    let publisher = node(&server, "publisher", JetStreamOptions::default()).await;

    // Let the loop idle through a pull or two, then lose its next pull request.
    tokio::time::sleep(js.pull_expires + js.pull_expires / 2).await;
    link.swallow_next_pull();
    assert!(eventually(DEADLINE, || link.pull_swallowed()).await);
    let from = link.log().len();
    let receipts: Vec<_> = futures_util::stream::iter(0..BACKLOG)
        .map(|index| {
            let bus = publisher.bus.clone();
            async move {
                bus.publish("room", Bytes::from(format!("m{index}")))
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert_eq!(receipts.len(), BACKLOG);
    let mut received = BTreeSet::new();
    while received.len() < BACKLOG {
        let delivery = next(&mut room).await;
        received.insert(delivery.id());
        delivery.ack().await.unwrap();
    }
    let log = link.log();
    let swallowed_at = log[from - 1].0;
    // What the loop asked of the server, acks aside.
    let after: Vec<&(Instant, String)> = log[from..]
        .iter()
        .filter(|(_, call)| !call.contains(" $JS.ACK."))
        .collect();
    let pulls: Vec<Instant> = after
        .iter()
        .filter(|(_, call)| call.contains(" $JS.API.CONSUMER.MSG.NEXT."))
        .map(|(at, _)| *at)
        .collect();
    // Looking the consumer up starts with the stream (the ack-pending sweep reads the consumer's
    // info on its own schedule, so that is no sign).
    let lookups = after
        .iter()
        .filter(|(_, call)| call.contains(" $JS.API.STREAM."))
        .count();
    assert_eq!(
        lookups, 0,
        "a dropped pull made the loop look its consumer up: {after:?}"
    );
    let first = pulls.first().expect("the loop pulled again");
    assert!(
        *first - swallowed_at < js.pull_expires + Duration::from_millis(200),
        "the next pull went out {:?} after the dropped one (expires {:?})",
        *first - swallowed_at,
        js.pull_expires
    );
    // Full pulls drain the backlog: no pull ends early or waits for its expiry.
    let full = BACKLOG.div_ceil(js.pull_batch);
    assert!(
        pulls.len() <= full + 2,
        "{} pulls for {BACKLOG} waiting messages in batches of {}",
        pulls.len(),
        js.pull_batch
    );
}

/// While messages flow, the server always has the loop's next pull request waiting: the next
/// goes out once the one before has at most half its batch left, so no batch ends in an idle
/// round trip. Replays the log of what the loop asked and received: every pull sent while
/// messages flow finds an earlier, unexpired request still waiting for messages.
#[tokio::test]
async fn the_next_pull_is_waiting_at_the_server_before_a_batch_completes() {
    const MESSAGES: usize = 3000;
    let Some(server) = NatsServer::start() else {
        return;
    };
    let (bus, link, js) = counted_bus(&server, "pipelined").await;
    let mut room = bus.subscribe("room").await.unwrap();
    let publisher = node(&server, "publisher", JetStreamOptions::default()).await;
    let from = link.log().len();
    let reader = tokio::spawn(async move {
        let mut received = BTreeSet::new();
        while received.len() < MESSAGES {
            let delivery = next(&mut room).await;
            received.insert(delivery.id());
            delivery.ack().await.unwrap();
        }
    });
    futures_util::stream::iter(0..MESSAGES)
        .for_each_concurrent(64, |index| {
            let bus = publisher.bus.clone();
            async move {
                bus.publish("room", Bytes::from(format!("m{index}")))
                    .await
                    .unwrap();
            }
        })
        .await;
    reader.await.unwrap();

    // The whole log, for the requests sent while the loop idled before the messages came.
    let log = link.log();
    let last_receive = log
        .iter()
        .rposition(|(_, entry)| entry.starts_with("receive _INBOX"))
        .filter(|last| *last >= from)
        .expect("messages came through the pull inbox");
    // The requests the server may still be serving: (messages left, sent at), oldest first.
    let mut waiting: std::collections::VecDeque<(usize, Instant)> = Default::default();
    let mut flowing = false;
    let mut checked = 0;
    for (index, (at, entry)) in log[..last_receive].iter().enumerate() {
        waiting.retain(|(_, sent)| *at < *sent + js.pull_expires);
        if let Some(batch) = entry.strip_prefix("pull batch=") {
            if flowing {
                let asked: usize = waiting.iter().map(|(left, _)| left).sum();
                assert!(
                    asked > 0,
                    "a pull went out only after every earlier one was served ({checked} before it were pipelined)"
                );
                checked += 1;
            }
            waiting.push_back((batch.parse().unwrap(), *at));
        } else if entry.starts_with("receive _INBOX") {
            flowing = index >= from;
            if let Some(oldest) = waiting.front_mut() {
                oldest.0 -= 1;
                if oldest.0 == 0 {
                    waiting.pop_front();
                }
            }
        }
    }
    assert!(
        checked >= MESSAGES / js.pull_batch - 2,
        "only {checked} pulls while {MESSAGES} messages flowed in batches of {}",
        js.pull_batch
    );
}

#[tokio::test]
async fn health_follows_a_server_restart_and_subscriptions_resume() {
    let Some(mut server) = NatsServer::start() else {
        return;
    };
    let listener = node(&server, "listener", JetStreamOptions::default()).await;
    let publisher = node(&server, "publisher", JetStreamOptions::default()).await;
    let mut room = listener.bus.subscribe("room1").await.unwrap();

    let mut server = tokio::task::spawn_blocking(move || {
        server.kill();
        server
    })
    .await
    .unwrap();
    assert!(
        eventually(DEADLINE, || listener.bus.health().state
            == HealthState::Down)
        .await,
        "{:?}",
        listener.bus.health()
    );
    let reason = listener.bus.health().reason.unwrap_or_default();
    assert!(reason.contains("NATS"), "{reason}");
    let server = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    })
    .await
    .unwrap();
    assert!(
        eventually(DEADLINE, || listener.bus.health().is_connected()
            && publisher.bus.health().is_connected())
        .await
    );
    assert_eq!(listener.metrics.nats_reconnects().get(), 1);

    let receipt = publish(&publisher.bus, "room1", "after the restart").await;
    let delivery = next(&mut room).await;
    assert_eq!(delivery.id(), receipt.id);
    delivery.ack().await.unwrap();
    drop(server);
}
