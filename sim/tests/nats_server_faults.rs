//! What the NATS backends promise when the server fails, on the fake NATS server inside turmoil:
//! the real-server tests of `tests/nats.rs` and `tests/jetstream.rs` that make sense in a
//! simulation, with their assertions, every node a bus over its own `WireLink` over
//! `TurmoilTcp`.
//!
//! NATS Core: a server restart (health goes down, then the nodes reconnect on their own and
//! the subscription is renewed), the publish timeout against a server that is gone and
//! one that is silent, and a `subscribe` made while the server is starting. JetStream:
//! redelivery after `ack_wait` and after `nak`, no acknowledged publish lost when the server is
//! killed and restarted on its store, a server back without its store used again, health across
//! a restart, a bus started while the server is down, a stream and a consumer deleted under the
//! bus (the store's `vanish_stream` and `vanish_consumer`) created again, and a bounded `close`
//! with the server killed or silent.
//!
//! Each test can fail: breaking the promise it checks (in the bus or in the fake) was tried.
//!
//! Killing and starting the server happen outside the simulation (`Sim::crash` and
//! `Sim::bounce` exist only there): a scenario asks through a `HostSwitch`, and the loop that steps
//! the simulation does it between two steps. A kill first resets the server's connections from
//! inside the host and takes it down one step later, as the kernel resets a dead process's
//! connections (see `FakeNatsControl::disconnect_all`). Every wait is bounded in simulated time;
//! the seed is fixed, so a failure replays.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use hubbus::backend::nats::{
    JetStreamBus, JetStreamOptions, NatsCoreBus, NatsLink, NatsOptions, WireLink,
};
use hubbus::transport::TurmoilTcp;
use hubbus::{
    BusError, BusMetrics, BusOptions, Delivery, HealthState, IdGenerator, Message, MessageBus,
    MessageId, NodeId, PublishReceipt, Subscription,
};
use hubbus_sim::harness::SimClock;
use hubbus_sim::host_switch::{HostSwitch, step_until_done};
use hubbus_sim::nats::jetstream::JetStreamStore;
use hubbus_sim::nats::{DEFAULT_PORT, FakeNatsOptions, serve_nats};
use prometheus::Registry;
use tokio::time::Instant;

/// A fixed seed: a failure replays exactly.
const SEED: u64 = 3;

/// Where the nodes find the fake server.
const URL: &str = "nats://nats:4222";

/// The host name of the fake server.
const HOST: &str = "nats";

/// How long a test waits for something that must happen (simulated time).
const DEADLINE: Duration = Duration::from_secs(10);

/// The JetStream stream the nodes share (the default).
const STREAM: &str = "HUBBUS";

/// Runs `scenario` as the client `test` of a simulation with one fake NATS server with
/// JetStream, carrying out the faults it asks for between steps.
fn run<F, Fut>(scenario: F)
where
    F: FnOnce(HostSwitch, FakeNatsOptions) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    let mut sim = turmoil::Builder::new()
        .rng_seed(SEED)
        .simulation_duration(Duration::from_secs(300))
        // Loopback-like latency, as for the real-server tests these mirror: the 50 ms publish
        // timeout is a bound for a server next door.
        .max_message_latency(Duration::from_millis(2))
        .build();
    let options = FakeNatsOptions::new().with_jetstream(JetStreamStore::new());
    let control = options.control();
    let host_options = options.clone();
    sim.host(HOST, move || serve_nats(DEFAULT_PORT, host_options.clone()));
    let server = HostSwitch::default();
    let future = scenario(server.clone(), options);
    sim.client("test", async move {
        future.await;
        Ok(())
    });
    step_until_done(&mut sim, HOST, &server, || control.disconnect_all());
}

/// A node's metrics, namespace `test`.
struct Metrics(Registry);

impl Metrics {
    /// The sum of `test_<name>` over the series whose labels include all of `labels` (counters
    /// and gauges alike).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let name = format!("test_{name}");
        self.0
            .gather()
            .iter()
            .filter(|family| family.name() == name)
            .flat_map(|family| family.get_metric())
            .filter(|metric| {
                labels.iter().all(|(key, value)| {
                    metric
                        .get_label()
                        .iter()
                        .any(|label| label.name() == *key && label.value() == *value)
                })
            })
            .map(|metric| metric.get_counter().get_value() + metric.get_gauge().get_value())
            .sum()
    }

    fn reconnects(&self) -> f64 {
        self.get("bus_nats_reconnects_total", &[])
    }
}

/// Options for node `name`: ids and timestamps from the simulation's seed and clock, metrics
/// into a registry of its own.
fn bus_options(name: &str, seed: u64) -> (BusOptions, Metrics) {
    let registry = Registry::new();
    let options = BusOptions {
        node_id: NodeId::new(name).expect("a valid node id"),
        metrics: BusMetrics::register(&registry, "test").expect("metrics"),
        ids: IdGenerator::seeded(SEED * 1000 + seed, Arc::new(SimClock)),
        ..BusOptions::default()
    };
    (options, Metrics(registry))
}

/// As for the real-server tests: a quick reconnect and a 1 s connect timeout, so restarts are
/// short; a 1 s publish timeout for checks about what a publish confirms (the default bound has
/// tests of its own).
fn nats_options() -> NatsOptions {
    let mut nats = NatsOptions::new(URL);
    nats.link.reconnect_wait = Duration::from_millis(100);
    nats.link.connect_timeout = Duration::from_secs(1);
    nats.publish_timeout = Duration::from_secs(1);
    nats
}

/// A wire link to the fake server; `seed` must differ between the links of one test.
async fn link(nats: &NatsOptions, seed: u64) -> Arc<dyn NatsLink> {
    let link = WireLink::connect(nats.link.clone(), Arc::new(TurmoilTcp), SEED * 1000 + seed)
        .await
        .expect("a wire link");
    Arc::new(link)
}

/// Waits until `condition` holds, in simulated time; false after [`DEADLINE`].
async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    tokio::time::timeout(DEADLINE, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .is_ok()
}

async fn next(subscription: &mut Subscription) -> Delivery {
    tokio::time::timeout(DEADLINE, subscription.recv())
        .await
        .unwrap_or_else(|_| panic!("nothing arrived on {}", subscription.channel()))
        .expect("the subscription is open")
}

struct CoreNode {
    bus: Arc<NatsCoreBus>,
    metrics: Metrics,
}

/// A connected NATS Core node `name` on its own link.
async fn core_node(name: &str, seed: u64, nats: NatsOptions) -> CoreNode {
    let (options, metrics) = bus_options(name, seed);
    let bus = NatsCoreBus::start(options, nats.clone(), link(&nats, seed).await)
        .expect("a NATS Core bus");
    assert!(
        eventually(|| bus.health().is_connected()).await,
        "{name} did not connect: {:?}",
        bus.health()
    );
    CoreNode {
        bus: Arc::new(bus),
        metrics,
    }
}

/// Publishes until one message gets through to `subscription` (at most once: messages sent
/// while a connection is being re-established may be lost) and returns it.
async fn publish_until_received(
    publisher: &NatsCoreBus,
    subscription: &mut Subscription,
    payload: &'static str,
) -> Delivery {
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(
            Instant::now() < deadline,
            "nothing got through to {}",
            subscription.channel()
        );
        let _ = publisher
            .publish(subscription.channel(), payload.into())
            .await;
        if let Ok(Some(delivery)) =
            tokio::time::timeout(Duration::from_millis(100), subscription.recv()).await
        {
            return delivery;
        }
    }
}

mod nats_core {
    use super::*;

    const NATS: [(&str, &str); 1] = [("backend", "nats")];

    /// `tests/nats.rs`'s `receives_again_after_server_restart`: the server is killed (health
    /// goes down, saying why) and started again; both nodes reconnect on their own, the
    /// subscription is renewed on the new server, and the reconnect is counted.
    #[test]
    fn receives_again_after_server_restart() {
        run(|server, options| async move {
            let control = options.control();
            let publisher = core_node("pub", 1, nats_options()).await;
            let subscriber = core_node("sub", 2, nats_options()).await;
            let mut room = subscriber.bus.subscribe("room1").await.unwrap();
            publisher.bus.publish("room1", "one".into()).await.unwrap();
            assert_eq!(next(&mut room).await.payload().as_ref(), b"one");
            assert_eq!(control.subscribers("hubbus.room1"), 1);

            server.kill().await;
            for node in [&publisher, &subscriber] {
                assert!(
                    eventually(|| node.bus.health().state == HealthState::Down).await,
                    "the bus noticed the server is gone: {:?}",
                    node.bus.health()
                );
                let reason = node.bus.health().reason.unwrap_or_default();
                assert!(reason.contains("NATS connection lost"), "{reason}");
                assert_eq!(node.metrics.get("bus_connected", &NATS), 0.0);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(subscriber.bus.health().state, HealthState::Down);
            server.start().await;

            assert!(
                eventually(|| subscriber.metrics.reconnects() >= 1.0
                    && subscriber.bus.health().is_connected())
                .await,
                "the subscriber reconnected: {:?}",
                subscriber.bus.health()
            );
            assert_eq!(
                control.subscribers("hubbus.room1"),
                1,
                "the subscription was renewed on the new server"
            );
            let delivered = publish_until_received(&publisher.bus, &mut room, "two").await;
            assert_eq!(delivered.payload().as_ref(), b"two");
            assert!(publisher.metrics.reconnects() >= 1.0);
            assert!(publisher.bus.health().is_connected());
            assert_eq!(subscriber.metrics.get("bus_connected", &NATS), 1.0);
            publisher.bus.close().await;
            subscriber.bus.close().await;
        });
    }

    /// `tests/nats.rs`'s `subscribe_while_the_server_is_starting_waits_and_receives_the_next_publish`:
    /// a bus started while the server is down is usable at once (health says it is down), and
    /// a `subscribe` made meanwhile waits for the server: it returns once the server has the
    /// subscription, so the very next message another node publishes arrives.
    #[test]
    fn subscribe_while_the_server_is_starting_waits_and_receives_the_next_publish() {
        run(|server, _| async move {
            server.kill().await;
            let mut nats = nats_options();
            nats.link.connect_timeout = DEADLINE;
            let (options, metrics) = bus_options("sub", 2);
            let subscriber = Arc::new(
                NatsCoreBus::start(options, nats.clone(), link(&nats, 2).await)
                    .expect("a NATS Core bus"),
            );
            let health = subscriber.health();
            assert_eq!(health.state, HealthState::Down, "{health:?}");
            let bus = subscriber.clone();
            let mut subscribing = tokio::spawn(async move { bus.subscribe("room1").await });
            assert!(
                tokio::time::timeout(Duration::from_millis(300), &mut subscribing)
                    .await
                    .is_err(),
                "subscribe returned while the server was down"
            );

            server.start().await;
            let mut room = tokio::time::timeout(DEADLINE, subscribing)
                .await
                .expect("subscribe returned once the server was up")
                .unwrap()
                .expect("the subscription is confirmed");
            assert!(subscriber.health().is_connected());
            // The first connection is not a reconnect.
            assert_eq!(metrics.reconnects(), 0.0);
            let publisher = core_node("pub", 1, nats_options()).await;
            let sent = publisher
                .bus
                .publish("room1", "hello".into())
                .await
                .unwrap();
            assert_eq!(next(&mut room).await.id(), sent.id);
            publisher.bus.close().await;
            subscriber.close().await;
        });
    }

    /// The default publish timeout (50 ms; the plan's 10 ms timed out on an idle server, see
    /// the bus spec).
    const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

    /// A node with the default publish timeout.
    async fn node_with_the_default_timeout() -> CoreNode {
        let mut nats = nats_options();
        nats.publish_timeout = NatsOptions::new(URL).publish_timeout;
        assert_eq!(nats.publish_timeout, DEFAULT_TIMEOUT, "the default");
        core_node("pub", 1, nats).await
    }

    /// One publish that must give up after exactly the publish timeout with `PublishTimeout`,
    /// counted as an error.
    async fn assert_publish_times_out(node: &CoreNode) {
        let errors_before = node.metrics.get("bus_publish_errors_total", &NATS);
        let started = Instant::now();
        let result = node.bus.publish("room1", "unconfirmed".into()).await;
        let took = started.elapsed();
        assert!(
            matches!(result, Err(BusError::PublishTimeout(d)) if d == DEFAULT_TIMEOUT),
            "{result:?}"
        );
        assert!(
            took >= DEFAULT_TIMEOUT && took < DEFAULT_TIMEOUT + Duration::from_millis(10),
            "gave up after {took:?}"
        );
        assert_eq!(
            node.metrics.get("bus_publish_errors_total", &NATS),
            errors_before + 1.0
        );
    }

    /// `tests/nats.rs`'s `publish_times_out_when_server_down`: with the server gone, publish
    /// gives up after the publish timeout (50 ms) with `PublishTimeout`, and the error counter
    /// rises.
    #[test]
    fn publish_times_out_when_server_down() {
        run(|server, _| async move {
            let node = node_with_the_default_timeout().await;
            node.bus.publish("room1", "before".into()).await.unwrap();
            server.kill().await;
            assert!(
                eventually(|| node.bus.health().state == HealthState::Down).await,
                "the bus noticed the server is gone"
            );
            let reason = node.bus.health().reason.unwrap();
            assert!(reason.contains("NATS connection lost"), "{reason}");
            assert_eq!(node.metrics.get("bus_connected", &NATS), 0.0);
            assert_publish_times_out(&node).await;
            node.bus.close().await;
        });
    }

    /// The same against a server that keeps the connection open and answers nothing (wedged):
    /// nothing tells the bus the connection is gone, and still no publish waits longer than
    /// the publish timeout. Once the server answers again, publishes are confirmed again.
    #[test]
    fn publish_times_out_when_the_server_is_silent() {
        run(|_, options| async move {
            let control = options.control();
            let node = node_with_the_default_timeout().await;
            node.bus.publish("room1", "before".into()).await.unwrap();
            control.wedge(true);
            for _ in 0..3 {
                assert_publish_times_out(&node).await;
            }
            control.wedge(false);
            let confirmed = eventually_async(|| async {
                node.bus.publish("room1", "after".into()).await.is_ok()
            })
            .await;
            assert!(
                confirmed,
                "no publish was confirmed once the server answered"
            );
            node.bus.close().await;
        });
    }

    /// Repeats `attempt` until it returns true, in simulated time; false after [`DEADLINE`].
    async fn eventually_async<F, Fut>(mut attempt: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        tokio::time::timeout(DEADLINE, async {
            while !attempt().await {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .is_ok()
    }
}

mod jetstream {
    use super::*;

    struct JsNode {
        bus: Arc<JetStreamBus>,
        metrics: Metrics,
    }

    /// A connected JetStream node `name` on its own link, with the link options of the
    /// real-server tests.
    async fn js_node(name: &str, seed: u64, js: JetStreamOptions) -> JsNode {
        let (options, metrics) = bus_options(name, seed);
        let mut nats = nats_options();
        nats.link.subscription_capacity = 8192;
        nats.jetstream = Some(js);
        let bus = JetStreamBus::start(options, nats.clone(), link(&nats, seed).await)
            .await
            .expect("a JetStream bus");
        assert!(
            eventually(|| bus.health().is_connected()).await,
            "{name} did not connect: {:?}",
            bus.health()
        );
        JsNode {
            bus: Arc::new(bus),
            metrics,
        }
    }

    async fn publish(bus: &JetStreamBus, channel: &str, payload: &str) -> PublishReceipt {
        bus.publish(channel, Bytes::copy_from_slice(payload.as_bytes()))
            .await
            .unwrap_or_else(|error| panic!("publish to {channel}: {error}"))
    }

    /// Publishes until the server stores it: right after a store loss a publish may be refused
    /// for a moment, which the caller sees as an error and retries, as an application would.
    async fn publish_once_ready(
        bus: &JetStreamBus,
        channel: &str,
        payload: &str,
    ) -> PublishReceipt {
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

    /// `tests/jetstream.rs`'s test of the same name: a delivery left unsettled comes back after
    /// `ack_wait`, with the same id, flagged redelivered; acking the first copy later is
    /// harmless.
    #[test]
    fn an_unacked_delivery_comes_back_after_ack_wait_flagged_redelivered() {
        run(|_, _| async move {
            let ack_wait = Duration::from_millis(500);
            let js = JetStreamOptions {
                ack_wait,
                ..JetStreamOptions::default()
            };
            let listener = js_node("listener", 1, js.clone()).await;
            let publisher = js_node("publisher", 2, js).await;
            let mut room = listener.bus.subscribe("room1").await.unwrap();

            let receipt = publish(&publisher.bus, "room1", "ignored").await;
            let first = next(&mut room).await;
            let delivered_at = Instant::now();
            assert_eq!(first.id(), receipt.id);
            assert!(!first.redelivered());

            let again = next(&mut room).await;
            let waited = delivered_at.elapsed();
            assert_eq!(again.id(), receipt.id);
            assert!(again.redelivered(), "a redelivery is flagged");
            assert!(
                waited >= ack_wait - Duration::from_millis(100) && waited < 2 * ack_wait,
                "came back after {waited:?}, not after ack_wait"
            );
            again.ack().await.unwrap();
            first.ack().await.unwrap();
            let sentinel = publish(&publisher.bus, "room1", "sentinel").await;
            assert_eq!(next(&mut room).await.id(), sentinel.id);
        });
    }

    /// `tests/jetstream.rs`'s test of the same name: a nak brings the delivery back at once, a
    /// nak with a delay after the delay, both long before `ack_wait`; a second settle of the
    /// same delivery is a no-op.
    #[test]
    fn a_nak_brings_a_delivery_back_before_ack_wait() {
        run(|_, _| async move {
            let ack_wait = Duration::from_secs(30);
            let js = JetStreamOptions {
                ack_wait,
                ..JetStreamOptions::default()
            };
            let listener = js_node("listener", 1, js.clone()).await;
            let publisher = js_node("publisher", 2, js).await;
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
            let sentinel = publish(&publisher.bus, "room1", "sentinel").await;
            assert_eq!(
                next(&mut room).await.id(),
                sentinel.id,
                "the acknowledged message came back"
            );
        });
    }

    /// `tests/jetstream.rs`'s `no_acked_message_lost_when_server_killed`: publishers retry with
    /// the same id until acknowledged while the server is killed and started again on its
    /// store; every message whose publish returned `Ok` is delivered, nothing else is, and
    /// every duplicate is flagged redelivered. The subscriber is slower than the publishers, so
    /// at the kill acknowledged messages wait in the store (the test checks that they do) and
    /// the restarted server must deliver them from there.
    #[test]
    fn no_acked_message_lost_when_server_killed() {
        const COUNT: usize = 3000;
        const IN_FLIGHT: usize = 32;
        run(|server, _| async move {
            let js = JetStreamOptions {
                ack_wait: Duration::from_secs(2),
                publish_timeout: Duration::from_secs(1),
                api_timeout: Duration::from_secs(1),
                ..JetStreamOptions::default()
            };
            let subscriber = js_node("subscriber", 1, js.clone()).await;
            let publisher = Arc::new(js_node("publisher", 2, js).await);
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
                        // Slower than the publishers (the real server's test relies on a
                        // busy machine for that): at the kill, acknowledged messages wait in
                        // the store, and some deliveries wait for their ack.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        let _ = delivery.ack().await;
                    }
                }
            });

            let acked: Arc<Mutex<BTreeSet<MessageId>>> = Arc::default();
            let ids: Vec<MessageId> = {
                let generator = IdGenerator::seeded(SEED, Arc::new(SimClock));
                (0..COUNT).map(|_| generator.next_id()).collect()
            };
            let publishing = tokio::spawn({
                let (publisher, acked) = (publisher.clone(), acked.clone());
                async move {
                    futures_util::stream::iter(ids.into_iter().enumerate())
                        .map(|(index, id)| {
                            let (publisher, acked) = (publisher.clone(), acked.clone());
                            async move {
                                // A realistic publisher: retry with the same id until
                                // acknowledged.
                                let give_up = Instant::now() + Duration::from_secs(60);
                                let message = Message::new("crash", index.to_string()).with_id(id);
                                while Instant::now() < give_up {
                                    if publisher.bus.publish_message(message.clone()).await.is_ok()
                                    {
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
                eventually(|| acked.lock().unwrap().len() >= COUNT / 3).await,
                "publishing stalled before the crash"
            );
            server.kill().await;
            let acked_at_kill = acked.lock().unwrap().len();
            let received_at_kill = received.lock().unwrap().len();
            assert!(
                received_at_kill < acked_at_kill,
                "nothing acknowledged was waiting in the store when it was killed"
            );
            assert!(
                acked_at_kill < COUNT,
                "the server was killed after the last publish"
            );
            assert!(
                eventually(|| publisher.bus.health().state == HealthState::Down).await,
                "the publisher did not notice the crash"
            );
            server.start().await;

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
            let all_delivered = tokio::time::timeout(Duration::from_secs(30), async {
                while !acked
                    .iter()
                    .all(|id| received.lock().unwrap().contains_key(id))
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .is_ok();
            let received = received.lock().unwrap().clone();
            let lost: Vec<&MessageId> = acked
                .iter()
                .filter(|id| !received.contains_key(id))
                .collect();
            let duplicates: u32 = received.values().map(|(count, _)| count - 1).sum();
            let flagged: u32 = received.values().map(|(_, flagged)| *flagged).sum();
            eprintln!(
                "acked={} at_kill={acked_at_kill} delivered_at_kill={received_at_kill} \
                 delivered={} lost={} duplicates={duplicates} flagged_redelivered={flagged}",
                acked.len(),
                received.len(),
                lost.len()
            );
            assert!(
                all_delivered && lost.is_empty(),
                "acknowledged but never delivered ({} of {}, {acked_at_kill} acked at the \
                 kill): {lost:?}",
                lost.len(),
                acked.len()
            );
            assert!(
                received.keys().all(|id| acked.contains(id)),
                "something was delivered that nobody published"
            );
            assert_eq!(
                flagged, duplicates,
                "every duplicate is flagged redelivered"
            );
            assert!(publisher.metrics.reconnects() >= 1.0);
            assert!(subscriber.metrics.reconnects() >= 1.0);
            subscriber.bus.close().await;
            let _ = tokio::time::timeout(DEADLINE, receiver).await;
            publisher.bus.close().await;
        });
    }

    /// `tests/jetstream.rs`'s `a_server_back_without_its_store_is_used_again`: the server is
    /// killed, its store lost, and started again knowing no stream and no consumer. What was
    /// stored is gone, but the bus creates stream and consumer again and delivers what is
    /// published from then on, to a subscription that never ended.
    #[test]
    fn a_server_back_without_its_store_is_used_again() {
        run(|server, options| async move {
            let store = options.jetstream().expect("JetStream is on").clone();
            let listener = js_node("listener", 1, JetStreamOptions::default()).await;
            let publisher = js_node("publisher", 2, JetStreamOptions::default()).await;
            let mut room = listener.bus.subscribe("room1").await.unwrap();
            let before = publish(&publisher.bus, "room1", "before").await;
            let delivery = next(&mut room).await;
            assert_eq!(delivery.id(), before.id);
            delivery.ack().await.unwrap();
            let consumers = store.stream(STREAM).expect("the stream").consumers;
            assert!(!consumers.is_empty(), "the listener has its consumer");

            server.kill().await;
            store.wipe();
            assert!(store.stream_names().is_empty());
            server.start().await;
            assert!(
                eventually(|| listener.bus.health().state != HealthState::Down
                    && publisher.bus.health().state != HealthState::Down)
                .await,
                "{:?} {:?}",
                listener.bus.health(),
                publisher.bus.health()
            );
            let after = publish_once_ready(&publisher.bus, "room1", "after").await;
            // A publish that timed out above may have been stored all the same, and comes
            // first.
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
            let stream = store.stream(STREAM).expect("the stream was created again");
            for consumer in &consumers {
                assert!(
                    stream.consumers.contains(consumer),
                    "consumer {consumer} was not created again: {:?}",
                    stream.consumers
                );
            }
        });
    }

    /// `tests/jetstream.rs`'s `a_bus_started_while_the_server_is_down_works_once_it_is_up`:
    /// `start` does not wait for the server (health is down and says why, a publish fails with
    /// a typed error), and the bus works once the server is up.
    #[test]
    fn a_bus_started_while_the_server_is_down_works_once_it_is_up() {
        run(|server, _| async move {
            server.kill().await;
            let js = JetStreamOptions {
                api_timeout: Duration::from_millis(500),
                publish_timeout: Duration::from_millis(500),
                ..JetStreamOptions::default()
            };
            let (options, _metrics) = bus_options("early", 1);
            let mut nats = nats_options();
            nats.jetstream = Some(js);
            let started = Instant::now();
            let hub = JetStreamBus::start(options, nats.clone(), link(&nats, 1).await)
                .await
                .expect("start");
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{:?}",
                started.elapsed()
            );
            let health = hub.health();
            assert_eq!(health.state, HealthState::Down);
            assert!(health.reason.is_some());
            let refused = hub.publish("room1", "too early".into()).await;
            assert!(
                matches!(
                    refused,
                    Err(BusError::PublishTimeout(_) | BusError::NotConnected(_))
                ),
                "{refused:?}"
            );

            server.start().await;
            assert!(
                eventually(|| hub.health().is_connected()).await,
                "{:?}",
                hub.health()
            );
            let mut room = hub.subscribe("room1").await.unwrap();
            let receipt = publish(&hub, "room1", "now").await;
            assert_eq!(next(&mut room).await.id(), receipt.id);
        });
    }

    /// `tests/jetstream.rs`'s `a_deleted_stream_is_created_again_and_delivery_resumes`, with
    /// the store's `vanish_stream` as the operator's delete: the bus creates the stream again,
    /// delivers what is published from then on, counts the re-creation and says so in its
    /// health.
    #[test]
    fn a_deleted_stream_is_created_again_and_delivery_resumes() {
        run(|_, options| async move {
            let store = options.jetstream().expect("JetStream is on").clone();
            let listener = js_node("listener", 1, JetStreamOptions::default()).await;
            let publisher = js_node("publisher", 2, JetStreamOptions::default()).await;
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

            assert!(store.vanish_stream(STREAM), "the stream existed");
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
                    eventually(|| node
                        .metrics
                        .get("bus_jetstream_stream_recreated_total", &[])
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
        });
    }

    /// `tests/jetstream.rs`'s `a_consumer_deleted_under_its_pull_loop_is_created_again_where_it_was`,
    /// with the store's `vanish_consumer` as the operator's delete: the consumer is created
    /// again under its name where it was, so the stream's history is not replayed, what was
    /// handled may come again (flagged), and what is published next arrives.
    #[test]
    fn a_consumer_deleted_under_its_pull_loop_is_created_again_where_it_was() {
        run(|_, options| async move {
            let store = options.jetstream().expect("JetStream is on").clone();
            let listener = js_node("listener", 1, JetStreamOptions::default()).await;
            let publisher = js_node("publisher", 2, JetStreamOptions::default()).await;
            let history = publish(&publisher.bus, "room1", "before anyone listened").await;
            let mut room = listener.bus.subscribe("room1").await.unwrap();
            let handled = publish(&publisher.bus, "room1", "handled").await;
            let delivery = next(&mut room).await;
            assert_eq!(delivery.id(), handled.id);
            delivery.ack().await.unwrap();

            let names = store.stream(STREAM).expect("the stream").consumers;
            assert_eq!(names.len(), 1, "{names:?}");
            assert!(store.vanish_consumer(STREAM, &names[0]));
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
                store.stream(STREAM).expect("the stream").consumers,
                names,
                "created again under its name"
            );
        });
    }

    /// `tests/jetstream.rs`'s `jetstream_close_returns_while_server_is_down`: `close` returns
    /// within the link's connect timeout (plus room) when the server is gone, and when it
    /// keeps the connection but answers nothing while a delivery is unsettled.
    #[test]
    fn close_returns_while_the_server_is_down_or_silent() {
        run(|server, options| async move {
            let control = options.control();
            // What a close may take at most when the server does not answer: the link's
            // connect timeout, plus room.
            let bound = nats_options().link.connect_timeout + Duration::from_millis(500);
            let closes_within = |bus: Arc<JetStreamBus>, what: &'static str| async move {
                let started = Instant::now();
                let closed = tokio::time::timeout(Duration::from_secs(30), bus.close()).await;
                let took = started.elapsed();
                assert!(closed.is_ok(), "close hung {what}");
                assert!(took <= bound, "close took {took:?} {what}");
            };

            // A server that keeps the connection but answers nothing, while a delivery is
            // unsettled.
            let publisher = js_node("publisher", 1, JetStreamOptions::default()).await;
            let hub = js_node("closer", 2, JetStreamOptions::default()).await;
            let mut room = hub.bus.subscribe("room1").await.unwrap();
            publish(&publisher.bus, "room1", "unsettled").await;
            let _held = next(&mut room).await;
            control.wedge(true);
            closes_within(hub.bus.clone(), "with the server answering nothing").await;
            control.wedge(false);

            let hub = js_node("closer-2", 3, JetStreamOptions::default()).await;
            let _room = hub.bus.subscribe("room1").await.unwrap();
            server.kill().await;
            assert!(eventually(|| !hub.bus.health().is_connected()).await);
            closes_within(hub.bus.clone(), "with the server killed").await;
        });
    }

    /// `tests/jetstream.rs`'s `health_follows_a_server_restart_and_subscriptions_resume`: health
    /// goes down with the server, saying why, and up once it is back; the reconnect is counted
    /// once and the subscription receives again.
    #[test]
    fn health_follows_a_server_restart_and_subscriptions_resume() {
        run(|server, _| async move {
            let listener = js_node("listener", 1, JetStreamOptions::default()).await;
            let publisher = js_node("publisher", 2, JetStreamOptions::default()).await;
            let mut room = listener.bus.subscribe("room1").await.unwrap();

            server.kill().await;
            assert!(
                eventually(|| listener.bus.health().state == HealthState::Down).await,
                "{:?}",
                listener.bus.health()
            );
            let reason = listener.bus.health().reason.unwrap_or_default();
            assert!(reason.contains("NATS"), "{reason}");
            server.start().await;
            assert!(
                eventually(|| listener.bus.health().is_connected()
                    && publisher.bus.health().is_connected())
                .await
            );
            assert_eq!(listener.metrics.reconnects(), 1.0);

            let receipt = publish(&publisher.bus, "room1", "after the restart").await;
            let delivery = next(&mut room).await;
            assert_eq!(delivery.id(), receipt.id);
            delivery.ack().await.unwrap();
        });
    }
}
