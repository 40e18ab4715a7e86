//! The JetStream bus against a real `nats-server -js`: what at-least-once means for a hub.
//! Acknowledged publishes survive a server crash, retries are de-duplicated by id, unsettled
//! deliveries come back flagged, and the bus copes with streams that are missing, refused or
//! deleted under it. Every test starts its own server on a free port with its own store.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use hubbus::backend::nats::jetstream::JetStreamBus;
use hubbus::backend::nats::{
    AsyncNatsLink, JetStreamOptions, LinkOptions, LinkPublish, NatsLink, NatsOptions,
};
use hubbus::{
    BusError, BusMetrics, BusOptions, HealthState, IdGenerator, Message, MessageBus, MessageId,
    NodeId, Subscription,
};
use prometheus::Registry;
use support::{NatsServer, eventually};

const DEADLINE: Duration = Duration::from_secs(10);

fn link_options(url: String) -> LinkOptions {
    LinkOptions {
        url,
        reconnect_wait: Duration::from_millis(100),
        connect_timeout: Duration::from_secs(1),
        subscription_capacity: 8192,
        ..LinkOptions::default()
    }
}

/// One bus node and the metrics it counts into.
struct Node {
    bus: JetStreamBus,
    metrics: BusMetrics,
    registry: Registry,
}

impl Node {
    /// The value of counter `test_<name>` with the label `backend="jetstream"`.
    fn counter(&self, name: &str) -> f64 {
        let name = format!("test_{name}");
        self.registry
            .gather()
            .iter()
            .filter(|family| family.name() == name)
            .flat_map(|family| family.get_metric())
            .filter(|metric| {
                metric
                    .get_label()
                    .iter()
                    .any(|label| label.name() == "backend" && label.value() == "jetstream")
            })
            .map(|metric| metric.get_counter().get_value())
            .sum()
    }
}

async fn start_node(url: String, name: &str, js: JetStreamOptions) -> Result<Node, BusError> {
    let registry = Registry::new();
    let metrics = BusMetrics::register(&registry, "test").unwrap();
    let options = BusOptions {
        node_id: NodeId::new(name).unwrap(),
        metrics: metrics.clone(),
        ..BusOptions::default()
    };
    let mut nats = NatsOptions::new(url.clone());
    nats.link = link_options(url);
    nats.jetstream = Some(js);
    let link = AsyncNatsLink::connect(nats.link.clone()).await?;
    let bus = JetStreamBus::start(options, nats, Arc::new(link)).await?;
    Ok(Node {
        bus,
        metrics,
        registry,
    })
}

/// A node that is connected and has its stream.
async fn node(server: &NatsServer, name: &str, js: JetStreamOptions) -> Node {
    let node = start_node(server.url(), name, js).await.expect("start");
    assert!(
        eventually(DEADLINE, || node.bus.health().is_connected()).await,
        "{name} did not connect: {:?}",
        node.bus.health()
    );
    node
}

/// A plain connection for administering the server behind the bus's back.
async fn admin_link(server: &NatsServer) -> AsyncNatsLink {
    AsyncNatsLink::connect(link_options(server.url()))
        .await
        .unwrap()
}

async fn admin(link: &AsyncNatsLink, subject: &str, body: serde_json::Value) -> serde_json::Value {
    let reply = link
        .request(
            LinkPublish {
                subject: subject.to_owned(),
                reply: None,
                headers: Vec::new(),
                payload: Bytes::from(body.to_string()),
            },
            DEADLINE,
        )
        .await
        .expect("JetStream API request");
    serde_json::from_slice(&reply.payload).expect("JSON reply")
}

/// The names of the consumers of the default stream.
async fn consumer_names(link: &AsyncNatsLink) -> Vec<String> {
    let reply = admin(link, "$JS.API.CONSUMER.NAMES.HUBBUS", serde_json::json!({})).await;
    reply["consumers"]
        .as_array()
        .map(|names| {
            names
                .iter()
                .filter_map(|name| name.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
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
    assert_eq!(publisher.counter("bus_published_total"), 5.0);
    assert_eq!(publisher.counter("bus_publish_errors_total"), 0.0);
    assert_eq!(listener.counter("bus_received_total"), 5.0);
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

#[tokio::test]
async fn an_unacked_delivery_comes_back_after_ack_wait_flagged_redelivered() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let ack_wait = Duration::from_millis(500);
    let js = JetStreamOptions {
        ack_wait,
        ..JetStreamOptions::default()
    };
    let listener = node(&server, "listener", js.clone()).await;
    let publisher = node(&server, "publisher", js).await;
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

#[tokio::test]
async fn a_nak_brings_a_delivery_back_before_ack_wait() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let ack_wait = Duration::from_secs(30);
    let js = JetStreamOptions {
        ack_wait,
        ..JetStreamOptions::default()
    };
    let listener = node(&server, "listener", js.clone()).await;
    let publisher = node(&server, "publisher", js).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acked_message_lost_when_server_killed() {
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
    let subscriber = node(&server, "subscriber", js.clone()).await;
    let publisher = Arc::new(node(&server, "publisher", js).await);
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
                assert_eq!(key, "nats.jetstream.stream");
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

    let deleted = admin(&link, "$JS.API.STREAM.DELETE.HUBBUS", serde_json::json!({})).await;
    assert_eq!(deleted["success"], true, "{deleted}");
    let after = publish(&publisher.bus, "room1", "after").await;
    assert_eq!(after.sequence, Some(1), "a new stream starts at 1");
    let delivery = next(&mut room).await;
    assert_eq!(delivery.id(), after.id);
    delivery.ack().await.unwrap();
    assert!(listener.bus.health().is_connected());
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
    assert_eq!(next(&mut room).await.id(), unhandled.id);
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
    assert_eq!(got.get(&unhandled.id), Some(&true), "{got:?}");
    assert_eq!(got.get(&while_away.id), Some(&false), "{got:?}");
}

#[tokio::test]
async fn the_last_unsubscribe_deletes_the_consumer() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let link = admin_link(&server).await;
    let hub = node(&server, "hub", JetStreamOptions::default()).await;
    let first = hub.bus.subscribe("room1").await.unwrap();
    let second = hub.bus.subscribe("room1").await.unwrap();
    let other = hub.bus.subscribe("room2").await.unwrap();
    assert_eq!(
        consumer_names(&link).await.len(),
        2,
        "one consumer per channel"
    );
    first.close().await;
    assert_eq!(consumer_names(&link).await.len(), 2);
    drop(second);
    let mut names = consumer_names(&link).await;
    let deadline = Instant::now() + DEADLINE;
    while names.len() != 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        names = consumer_names(&link).await;
    }
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].contains("room2"), "{names:?}");
    hub.bus.close().await;
    drop(other);
    assert_eq!(
        consumer_names(&link).await.len(),
        1,
        "close keeps consumers"
    );
}

#[tokio::test]
async fn deliveries_a_slow_subscriber_lost_come_back_later() {
    const QUEUE: usize = 2;
    const PUBLISHED: usize = 6;
    let Some(server) = NatsServer::start() else {
        return;
    };
    let js = JetStreamOptions {
        ack_wait: Duration::from_secs(1),
        ..JetStreamOptions::default()
    };
    let publisher = node(&server, "publisher", js.clone()).await;
    let metrics = BusMetrics::register(&Registry::new(), "slow").unwrap();
    let mut nats = NatsOptions::new(server.url());
    nats.link = link_options(server.url());
    nats.jetstream = Some(js);
    let link = AsyncNatsLink::connect(nats.link.clone()).await.unwrap();
    let options = BusOptions {
        node_id: NodeId::new("slow").unwrap(),
        subscriber_queue: QUEUE,
        metrics,
        ..BusOptions::default()
    };
    let slow = JetStreamBus::start(options, nats, Arc::new(link))
        .await
        .unwrap();
    let mut room = slow.subscribe("room1").await.unwrap();

    let mut published = BTreeSet::new();
    for index in 0..PUBLISHED {
        published.insert(
            publish(&publisher.bus, "room1", &format!("m{index}"))
                .await
                .id,
        );
    }
    assert!(
        eventually(DEADLINE, || room.dropped() >= (PUBLISHED - QUEUE) as u64).await,
        "dropped {}",
        room.dropped()
    );
    let mut handled = BTreeSet::new();
    let mut redelivered = 0;
    while handled != published {
        let delivery = next(&mut room).await;
        redelivered += usize::from(delivery.redelivered());
        delivery.ack().await.unwrap();
        handled.insert(delivery.id());
    }
    assert!(
        redelivered >= PUBLISHED - QUEUE,
        "{redelivered} redelivered"
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
