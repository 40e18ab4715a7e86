//! Proof that the checks can fail: each bug of `hubbus::planted` is planted in turn, and a
//! deterministic scenario on the fake brokers shows that the promise it breaks holds without
//! it and is reported broken with it.
//!
//! Built only with `RUSTFLAGS="--cfg hubbus_planted"` (the bugs exist only there):
//!
//! ```sh
//! RUSTFLAGS="--cfg hubbus_planted" CARGO_TARGET_DIR=target/planted \
//!     cargo test -p hubbus-sim --release --test planted
//! ```
//!
//! | bug | scenario | promise found broken |
//! |---|---|---|
//! | `skip_resubscribe` | Redis and NATS Core: the broker drops every connection, the nodes reconnect | a subscriber receives again after the broker came back |
//! | `ack_before_delivery` | JetStream: a node gets a message and stops before acknowledging it; it starts again under its node id | the acknowledged publish reaches the restarted node |
//! | `consumer_deliver_new_after_gap` | JetStream: the node's consumer is deleted under it and a message is published before the bus notices | the message published during the gap is delivered |
//! | `duplicate_on_reconnect` | NATS Core: a publish is confirmed, then the server drops every connection | no subscriber gets a message twice |
//! | `publish_ok_before_write` | Redis: a publish while the server is down | every publish that returned `Ok` reaches the subscriber |
//! | `channel_error_tears_down_others` | Redis with an ACL: a subscribe to a channel outside the ACL is refused | the node's other channel keeps receiving |
//!
//! A planted bug is process-wide, so the scenarios run one at a time (one lock), and each test
//! removes its bug when it ends, even by a panic. Every scenario runs on a fixed seed
//! (`HUBBUS_TEST_SIM_SEED=<n>` runs them on another; seeds 1 to 40 were tried). A scenario
//! returns `Err` with what it saw when the promise is broken; it panics only when the setup
//! itself fails.

#![cfg(hubbus_planted)]

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use hubbus::backend::nats::{JetStreamBus, JetStreamOptions, NatsCoreBus, NatsOptions, WireLink};
use hubbus::backend::redis::{RedisBus, RedisOptions, RedisTarget};
use hubbus::transport::TurmoilTcp;
use hubbus::{
    BusError, BusMetrics, BusOptions, Delivery, IdGenerator, MessageBus, MessageId, NodeId,
    Subscription,
};
use hubbus_sim::harness::SimClock;
use hubbus_sim::host_switch::{HostSwitch, step_until_done};
use hubbus_sim::nats::jetstream::JetStreamStore;
use hubbus_sim::nats::{DEFAULT_PORT, FakeNatsOptions, serve_nats};
use hubbus_sim::redis::{FakeRedisOptions, serve_redis};
use tokio::time::Instant;

/// The seed of every scenario unless `HUBBUS_TEST_SIM_SEED` names another: a failure replays
/// exactly.
const DEFAULT_SEED: u64 = 5;

fn sim_seed() -> u64 {
    std::env::var("HUBBUS_TEST_SIM_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(DEFAULT_SEED)
}

/// How long a scenario waits for something that must happen (simulated time).
const DEADLINE: Duration = Duration::from_secs(10);

/// The host name of the broker in every scenario.
const BROKER: &str = "broker";

const REDIS_PORT: u16 = 6379;

/// What a scenario found: `Err` says how the promise was broken.
type Verdict = Result<(), String>;

// ---------------------------------------------------------------------------------------------
// Planting, one scenario at a time.

/// Held while a scenario runs: the one lock of this process's planted bug.
static SERIAL: Mutex<()> = Mutex::new(());

/// The planted bug for one scenario; removed when dropped (also by a panic).
struct Planted {
    _serial: MutexGuard<'static, ()>,
}

impl Planted {
    fn new(bug: Option<&str>) -> Self {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        match bug {
            Some(bug) => hubbus::planted::plant(bug).expect("a known bug"),
            None => hubbus::planted::clear(),
        }
        Planted { _serial: serial }
    }
}

impl Drop for Planted {
    fn drop(&mut self) {
        hubbus::planted::clear();
    }
}

/// Runs `scenario` without any bug (the promise must hold), then with `bug` planted (it must
/// be found broken).
fn caught(bug: &str, scenario: impl Fn() -> Verdict) {
    {
        let _clean = Planted::new(None);
        if let Err(broken) = scenario() {
            panic!("without `{bug}` the promise must hold, but: {broken}");
        }
    }
    let _planted = Planted::new(Some(bug));
    match scenario() {
        Ok(()) => panic!("`{bug}` was planted and nothing noticed"),
        Err(broken) => eprintln!("`{bug}` caught: {broken}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The simulation: one broker host, the nodes in one client, faults between steps.

/// Runs `scenario` as the client of a simulation whose broker host runs `serve`;
/// `disconnect_all` resets the broker's connections from inside before a kill.
fn simulate<S, SF, C, F>(
    serve: S,
    disconnect_all: C,
    scenario: impl FnOnce(HostSwitch) -> F,
) -> Verdict
where
    S: Fn() -> SF + 'static,
    SF: Future<Output = turmoil::Result> + 'static,
    C: Fn(),
    F: Future<Output = Verdict> + 'static,
{
    let mut sim = turmoil::Builder::new()
        .rng_seed(sim_seed())
        .epoch(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        .simulation_duration(Duration::from_secs(300))
        // Every hop takes 1 to 2 ms: one hop is always over before three others are, which
        // orders what the JetStream gap scenario needs whatever the seed.
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(2))
        .build();
    sim.host(BROKER, serve);
    let broker = HostSwitch::default();
    let verdict: Rc<RefCell<Option<Verdict>>> = Rc::default();
    let future = scenario(broker.clone());
    let slot = verdict.clone();
    sim.client("nodes", async move {
        *slot.borrow_mut() = Some(future.await);
        Ok(())
    });
    step_until_done(&mut sim, BROKER, &broker, disconnect_all);
    let verdict = verdict.borrow_mut().take();
    verdict.expect("the scenario finished")
}

/// Options for node `name`; `seed` must differ between the nodes of one scenario.
fn bus_options(name: &str, seed: u64) -> BusOptions {
    BusOptions {
        node_id: NodeId::new(name).expect("a valid node id"),
        metrics: BusMetrics::unregistered("planted").expect("metrics"),
        ids: IdGenerator::seeded(sim_seed() * 1000 + seed, Arc::new(SimClock)),
        ..BusOptions::default()
    }
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

/// The next delivery within `wait`: `Err` says whether the subscription ended or nothing came.
async fn next_within(subscription: &mut Subscription, wait: Duration) -> Result<Delivery, String> {
    match tokio::time::timeout(wait, subscription.recv()).await {
        Ok(Some(delivery)) => Ok(delivery),
        Ok(None) => Err(format!(
            "the subscription to {} ended ({:?})",
            subscription.channel(),
            subscription.end()
        )),
        Err(_) => Err(format!(
            "nothing arrived on {} within {wait:?}",
            subscription.channel()
        )),
    }
}

/// Publishes until one message gets through to `subscription` (at most once: what is sent
/// while a connection is being re-established may be lost), then returns it; `Err` when nothing
/// got through within [`DEADLINE`].
async fn publish_until_received(
    publisher: &dyn MessageBus,
    subscription: &mut Subscription,
    payload: &'static str,
) -> Result<Delivery, String> {
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        let _ = publisher
            .publish(subscription.channel(), payload.into())
            .await;
        match next_within(subscription, Duration::from_millis(100)).await {
            Ok(delivery) => return Ok(delivery),
            Err(ended) if ended.contains("ended") => return Err(ended),
            Err(_) => {}
        }
    }
    Err(format!(
        "nothing published got through to {} within {DEADLINE:?}",
        subscription.channel()
    ))
}

// ---------------------------------------------------------------------------------------------
// Redis nodes.

/// A simulation with one fake Redis configured by `options`.
fn redis_simulation<F>(options: FakeRedisOptions, scenario: impl FnOnce(HostSwitch) -> F) -> Verdict
where
    F: Future<Output = Verdict> + 'static,
{
    let control = options.control();
    simulate(
        move || serve_redis(REDIS_PORT, options.clone()),
        move || control.disconnect_all(),
        scenario,
    )
}

/// A connected Redis node `name`; `credentials` as in a URL (`user:password@`), or empty.
async fn redis_node(name: &str, seed: u64, credentials: &str) -> Arc<RedisBus> {
    let target = RedisTarget::parse(&format!("redis://{credentials}{BROKER}:{REDIS_PORT}"))
        .expect("a Redis URL");
    let mut redis = RedisOptions::new(target);
    redis.connector = Arc::new(TurmoilTcp);
    let bus = RedisBus::start(bus_options(name, seed), redis).expect("a Redis bus");
    assert!(
        eventually(|| bus.health().is_connected()).await,
        "{name} did not connect: {:?}",
        bus.health()
    );
    Arc::new(bus)
}

// ---------------------------------------------------------------------------------------------
// NATS nodes.

/// A simulation with one fake NATS server with JetStream; the scenario gets its options (for
/// the control and the store).
fn nats_simulation<F>(scenario: impl FnOnce(HostSwitch, FakeNatsOptions) -> F) -> Verdict
where
    F: Future<Output = Verdict> + 'static,
{
    let options = FakeNatsOptions::new().with_jetstream(JetStreamStore::new());
    let control = options.control();
    let host_options = options.clone();
    simulate(
        move || serve_nats(DEFAULT_PORT, host_options.clone()),
        move || control.disconnect_all(),
        |broker| scenario(broker, options),
    )
}

/// A quick reconnect, a 1 s connect timeout and a 1 s publish timeout: the checks are about
/// what happens after a reconnect, not about the 10 ms bound.
fn nats_options() -> NatsOptions {
    let mut nats = NatsOptions::new(format!("nats://{BROKER}:{DEFAULT_PORT}"));
    nats.link.reconnect_wait = Duration::from_millis(100);
    nats.link.connect_timeout = Duration::from_secs(1);
    nats.publish_timeout = Duration::from_secs(1);
    nats
}

async fn wire_link(nats: &NatsOptions, seed: u64) -> Arc<WireLink> {
    let link = WireLink::connect(
        nats.link.clone(),
        Arc::new(TurmoilTcp),
        sim_seed() * 1000 + seed,
    )
    .await
    .expect("a wire link");
    Arc::new(link)
}

/// A connected NATS Core node `name`.
async fn core_node(name: &str, seed: u64) -> Arc<NatsCoreBus> {
    let nats = nats_options();
    let bus = NatsCoreBus::start(
        bus_options(name, seed),
        nats.clone(),
        wire_link(&nats, seed).await,
    )
    .expect("a NATS Core bus");
    assert!(
        eventually(|| bus.health().is_connected()).await,
        "{name} did not connect: {:?}",
        bus.health()
    );
    Arc::new(bus)
}

/// A connected JetStream node `name`.
async fn js_node(name: &str, seed: u64) -> Arc<JetStreamBus> {
    let mut nats = nats_options();
    nats.jetstream = Some(JetStreamOptions::default());
    let bus = JetStreamBus::start(
        bus_options(name, seed),
        nats.clone(),
        wire_link(&nats, seed).await,
    )
    .await
    .expect("a JetStream bus");
    assert!(
        eventually(|| bus.health().is_connected()).await,
        "{name} did not connect: {:?}",
        bus.health()
    );
    Arc::new(bus)
}

async fn js_publish(bus: &JetStreamBus, channel: &str, payload: &'static str) -> MessageId {
    bus.publish(channel, Bytes::from_static(payload.as_bytes()))
        .await
        .unwrap_or_else(|error| panic!("publish to {channel}: {error}"))
        .id
}

/// Reads `subscription`, acknowledging everything, until `id` arrives; `Err` when it does not
/// within [`DEADLINE`].
async fn js_until_received(subscription: &mut Subscription, id: MessageId) -> Verdict {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let delivery = next_within(subscription, left)
            .await
            .map_err(|why| format!("the acknowledged publish {id} never arrived: {why}"))?;
        let _ = delivery.ack().await;
        if delivery.id() == id {
            return Ok(());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The scenarios.

/// Redis: the server drops every connection; both nodes reconnect, and a message published
/// afterwards must reach the subscriber.
fn redis_subscriptions_resume_after_a_reconnect() -> Verdict {
    let options = FakeRedisOptions::new();
    let control = options.control();
    redis_simulation(options, |_| async move {
        let publisher = redis_node("pub", 1, "").await;
        let subscriber = redis_node("sub", 2, "").await;
        let mut room = subscriber.subscribe("room1").await.expect("subscribed");
        publish_until_received(publisher.as_ref(), &mut room, "before").await?;

        control.disconnect_all();
        assert!(
            eventually(|| !subscriber.health().is_connected()).await,
            "the drop was noticed"
        );
        assert!(
            eventually(|| subscriber.health().is_connected() && publisher.health().is_connected())
                .await,
            "both nodes reconnected"
        );
        let verdict = publish_until_received(publisher.as_ref(), &mut room, "after")
            .await
            .map(drop)
            .map_err(|why| {
                format!(
                    "Redis: after the reconnect {why} (Redis has {} subscriber(s) of room1)",
                    control.subscribers("room1")
                )
            });
        publisher.close().await;
        subscriber.close().await;
        verdict
    })
}

/// NATS Core: the same on the fake NATS server, each node on its own wire link.
fn nats_subscriptions_resume_after_a_reconnect() -> Verdict {
    nats_simulation(|_, options| async move {
        let control = options.control();
        let publisher = core_node("pub", 1).await;
        let subscriber = core_node("sub", 2).await;
        let mut room = subscriber.subscribe("room1").await.expect("subscribed");
        publish_until_received(publisher.as_ref(), &mut room, "before").await?;

        control.disconnect_all();
        assert!(
            eventually(|| !subscriber.health().is_connected()).await,
            "the drop was noticed"
        );
        assert!(
            eventually(|| subscriber.health().is_connected() && publisher.health().is_connected())
                .await,
            "both nodes reconnected"
        );
        let verdict = publish_until_received(publisher.as_ref(), &mut room, "after")
            .await
            .map(drop)
            .map_err(|why| {
                format!(
                    "NATS Core: after the reconnect {why} (the server has {} subscriber(s) of \
                     hubbus.room1)",
                    control.subscribers("hubbus.room1")
                )
            });
        publisher.close().await;
        subscriber.close().await;
        verdict
    })
}

#[test]
fn skip_resubscribe_on_redis() {
    caught(
        "skip_resubscribe",
        redis_subscriptions_resume_after_a_reconnect,
    );
}

#[test]
fn skip_resubscribe_on_nats_core() {
    caught(
        "skip_resubscribe",
        nats_subscriptions_resume_after_a_reconnect,
    );
}

/// JetStream: a node gets a message and stops before it acknowledged it (its `close` hands it
/// back); started again under the same node id, it must get the message again.
fn jetstream_unhandled_message_survives_a_node_restart() -> Verdict {
    nats_simulation(|_, _| async move {
        let publisher = js_node("publisher", 1).await;
        let listener = js_node("listener", 2).await;
        let mut room = listener.subscribe("room1").await.expect("subscribed");
        let id = js_publish(&publisher, "room1", "handed to a node that stops").await;
        let delivery = next_within(&mut room, DEADLINE)
            .await
            .expect("delivered to the listener");
        assert_eq!(delivery.id(), id);
        // The node stops before its subscriber handled the message.
        listener.close().await;
        drop(delivery);
        drop(room);

        let restarted = js_node("listener", 3).await;
        let mut room = restarted.subscribe("room1").await.expect("subscribed");
        let verdict = js_until_received(&mut room, id).await;
        restarted.close().await;
        publisher.close().await;
        verdict
    })
}

#[test]
fn ack_before_delivery() {
    caught(
        "ack_before_delivery",
        jetstream_unhandled_message_survives_a_node_restart,
    );
}

/// JetStream: the node's consumer is deleted under its pull loop and a message is published at
/// once, before the bus noticed; the consumer created again must deliver it.
fn jetstream_message_published_while_the_consumer_was_missing_arrives() -> Verdict {
    nats_simulation(|_, options| async move {
        let store = options.jetstream().expect("JetStream is on").clone();
        let publisher = js_node("publisher", 1).await;
        let listener = js_node("listener", 2).await;
        let mut room = listener.subscribe("room1").await.expect("subscribed");
        let handled = js_publish(&publisher, "room1", "handled").await;
        js_until_received(&mut room, handled).await?;

        let names = store.stream("HUBBUS").expect("the stream").consumers;
        assert_eq!(names.len(), 1, "the listener's consumer: {names:?}");
        // The PUB reaches the server one hop from now; the consumer can be created again only
        // four hops from now at the earliest (the server ends the pull, the bus looks the
        // consumer up, then creates it), and after the bus's backoff.
        assert!(store.vanish_consumer("HUBBUS", &names[0]));
        let gap = js_publish(&publisher, "room1", "published during the gap").await;
        let verdict = js_until_received(&mut room, gap)
            .await
            .map_err(|why| format!("the consumer was created again but {why}"));
        listener.close().await;
        publisher.close().await;
        verdict
    })
}

#[test]
fn consumer_deliver_new_after_gap() {
    caught(
        "consumer_deliver_new_after_gap",
        jetstream_message_published_while_the_consumer_was_missing_arrives,
    );
}

/// NATS Core: a node publishes to a channel it subscribes itself and to another node's; the
/// publish is confirmed, then the server drops every connection. After the reconnect, no
/// subscriber may see the message again.
fn nats_core_delivers_at_most_once_across_a_reconnect() -> Verdict {
    nats_simulation(|_, options| async move {
        let control = options.control();
        let node = core_node("node", 1).await;
        let mut own = node.subscribe("room1").await.expect("subscribed");
        let sent = node
            .publish("room1", "once".into())
            .await
            .expect("confirmed");
        let first = next_within(&mut own, DEADLINE).await.expect("delivered");
        assert_eq!(first.id(), sent.id);

        control.disconnect_all();
        assert!(
            eventually(|| !node.health().is_connected()).await,
            "the drop was noticed"
        );
        assert!(
            eventually(|| node.health().is_connected()).await,
            "the node reconnected"
        );
        let after = publish_until_received(node.as_ref(), &mut own, "after").await?;
        let mut seen = vec![after];
        // Whatever else is queued arrives within a moment.
        while let Ok(delivery) = next_within(&mut own, Duration::from_millis(500)).await {
            seen.push(delivery);
        }
        node.close().await;
        let again = seen.iter().filter(|d| d.id() == sent.id).count();
        if again > 0 {
            return Err(format!(
                "the confirmed message {} was delivered {} times",
                sent.id,
                again + 1
            ));
        }
        Ok(())
    })
}

#[test]
fn duplicate_on_reconnect() {
    caught(
        "duplicate_on_reconnect",
        nats_core_delivers_at_most_once_across_a_reconnect,
    );
}

/// Redis: the server is killed, a node publishes, the server starts again; every publish that
/// returned `Ok` must reach the other node's subscriber.
fn redis_confirmed_publishes_are_delivered() -> Verdict {
    redis_simulation(FakeRedisOptions::new(), |broker| async move {
        let publisher = redis_node("pub", 1, "").await;
        let subscriber = redis_node("sub", 2, "").await;
        let mut room = subscriber.subscribe("room1").await.expect("subscribed");
        let mut confirmed = vec![
            publish_until_received(publisher.as_ref(), &mut room, "before")
                .await?
                .id(),
        ];

        broker.kill().await;
        assert!(
            eventually(|| !publisher.health().is_connected()).await,
            "the kill was noticed"
        );
        let during = publisher
            .publish("room1", "while Redis is down".into())
            .await;
        match &during {
            Ok(receipt) => confirmed.push(receipt.id),
            Err(error) => assert!(
                matches!(
                    error,
                    BusError::PublishTimeout(_) | BusError::NotConnected(_)
                ),
                "{error}"
            ),
        }
        // Down for longer than any publish may wait (50 ms), so a publish that went on in the
        // background cannot find the next connection.
        tokio::time::sleep(Duration::from_millis(500)).await;
        broker.start().await;
        assert!(
            eventually(|| subscriber.health().is_connected() && publisher.health().is_connected())
                .await,
            "both nodes reconnected"
        );
        let mut received = Vec::new();
        received.push(
            publish_until_received(publisher.as_ref(), &mut room, "after")
                .await?
                .id(),
        );
        while let Ok(delivery) = next_within(&mut room, Duration::from_millis(500)).await {
            received.push(delivery.id());
        }
        publisher.close().await;
        subscriber.close().await;
        // What arrived before the kill was checked on arrival.
        let lost: Vec<&MessageId> = confirmed[1..]
            .iter()
            .filter(|id| !received.contains(id))
            .collect();
        if lost.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "publish returned Ok while Redis was down ({during:?}), and {lost:?} never arrived"
            ))
        }
    })
}

#[test]
fn publish_ok_before_write() {
    caught(
        "publish_ok_before_write",
        redis_confirmed_publishes_are_delivered,
    );
}

/// Redis with an ACL that allows `room*` only: a node subscribes `room1`, then `secret`, which
/// Redis refuses; `room1` must keep receiving.
fn redis_refused_channel_concerns_only_its_own_subscribers() -> Verdict {
    let options = FakeRedisOptions::new()
        .with_user("app", "pw")
        .with_channels(["room*"]);
    redis_simulation(options, |_| async move {
        let publisher = redis_node("pub", 1, "app:pw@").await;
        let subscriber = redis_node("sub", 2, "app:pw@").await;
        let mut room = subscriber.subscribe("room1").await.expect("subscribed");
        publish_until_received(publisher.as_ref(), &mut room, "before").await?;

        let refused = subscriber.subscribe("secret").await;
        assert!(
            matches!(&refused, Err(BusError::Refused { channel, reason })
                if channel == "secret" && reason.contains("NOPERM")),
            "{refused:?}"
        );
        let verdict = publish_until_received(publisher.as_ref(), &mut room, "after")
            .await
            .map(drop)
            .map_err(|why| format!("after `secret` was refused, {why}"));
        publisher.close().await;
        subscriber.close().await;
        verdict
    })
}

#[test]
fn channel_error_tears_down_others() {
    caught(
        "channel_error_tears_down_others",
        redis_refused_channel_concerns_only_its_own_subscribers,
    );
}

/// Every bug of `hubbus::planted::ALL` has a scenario above, in the same order, and the
/// interface refuses what it does not know.
#[test]
fn every_planted_bug_has_a_scenario() {
    let tested = [
        "skip_resubscribe",
        "ack_before_delivery",
        "consumer_deliver_new_after_gap",
        "duplicate_on_reconnect",
        "publish_ok_before_write",
        "channel_error_tears_down_others",
    ];
    assert_eq!(hubbus::planted::ALL, tested);
    let error = hubbus::planted::plant("no_such_bug").unwrap_err();
    assert!(error.contains("skip_resubscribe"), "{error}");
}

// ---------------------------------------------------------------------------------------------
// The generated runs catch every planted bug too: what `hubbus-sim soak --backend all --plant
// <name> --seeds 500` does, stopping at the first failure.

/// How many generated runs (seeds 1 on, every backend in turn) each bug may take to be found;
/// `docs/testing.md` lists how many each took.
const SOAK_SEEDS: u64 = 500;

#[test]
fn every_planted_bug_is_caught_by_generated_runs() {
    use hubbus_sim::harness::Backend;
    use hubbus_sim::soak::{Soak, soak};

    {
        // Without a bug, the same first runs keep every promise.
        let _clean = Planted::new(None);
        let plan = Soak {
            backends: Backend::ALL.to_vec(),
            first_seed: 1,
            seeds: 40,
            jobs: 2,
            shrink: 0,
            stop_after: Some(1),
        };
        let failed: Vec<_> = soak(&plan, &|_| {})
            .into_iter()
            .filter_map(|result| result.failure)
            .collect();
        assert!(failed.is_empty(), "without a bug: {failed:#?}");
    }
    for bug in hubbus::planted::ALL {
        let _planted = Planted::new(Some(bug));
        let plan = Soak {
            backends: Backend::ALL.to_vec(),
            first_seed: 1,
            seeds: SOAK_SEEDS,
            jobs: 2,
            shrink: 0,
            stop_after: Some(1),
        };
        let results = soak(&plan, &|_| {});
        let first = results
            .iter()
            .filter(|result| result.failure.is_some())
            .min_by_key(|result| result.seed)
            .unwrap_or_else(|| panic!("`{bug}` was planted and {SOAK_SEEDS} runs noticed nothing"));
        let why = first.failure.as_deref().unwrap_or_default();
        eprintln!(
            "`{bug}` caught by {} seed {} after {} runs: {}",
            first.backend,
            first.seed,
            results.len(),
            why.lines().next().unwrap_or_default()
        );
    }
}
