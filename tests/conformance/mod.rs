//! The conformance suite: one set of checks every [`MessageBus`] backend runs, each check
//! parametrised by what the backend [`Promises`].
//!
//! A backend plugs in with a small test file that declares `mod conformance;`, implements
//! [`BusFactory`] (connect one more node to a shared medium with the given [`BusOptions`]) and
//! calls `conformance::conformance_tests!(factory, promises)`. The macro expands to one
//! `#[tokio::test]` per check, named after the promise it checks, so `cargo test` lists each.
//!
//! What every backend must do the same way (typed errors, the channel rule, the payload limit,
//! close and health) is checked unconditionally. What backends differ in is read from the
//! promises: a backend that does not deliver (noop) must deliver *nothing*, and the redelivery
//! and history checks flip with their flags so that an at-least-once backend enables them
//! without new code.
//!
//! Waits are conditions with a deadline (`Promises::deadline`), never fixed sleeps. "Nothing
//! more arrived" is checked after a sentinel message that the backend must deliver after
//! everything before it, and then with a non-blocking `try_recv`; backends without I/O run on
//! tokio's paused clock (`Promises::virtual_time`), where waiting out a deadline is instant.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hubbus::{
    BusError, BusMetrics, BusOptions, Delivery, Guarantee, HealthState, IdGenerator,
    MAX_CHANNEL_LEN, Message, MessageBus, MessageId, NodeId, Subscription, SubscriptionEnd,
    subscribe_with,
};
use prometheus::Registry;
use tokio::runtime::RuntimeFlavor;
use tokio::time::timeout;

/// The namespace of the metrics every node of a check registers.
const METRICS_NAMESPACE: &str = "conformance";

/// How far a delivery's `published_at` may sit from the test's clock (publisher and test may
/// read different clocks on a real broker).
const CLOCK_TOLERANCE: Duration = Duration::from_secs(2);

/// What a backend promises; each check reads the flags that concern it.
#[derive(Debug, Clone, Copy)]
pub struct Promises {
    /// Published messages reach subscribers at all. False for the noop bus: every delivery
    /// check then asserts that nothing arrives.
    pub delivers: bool,
    /// One publisher's messages on a channel arrive at every subscriber in publish order.
    pub ordered_per_publisher: bool,
    /// At most once: a full subscriber queue drops the oldest delivery and `ack` / `nak` are
    /// harmless no-ops. At least once: a delivery declined with `nak` comes back with the same
    /// id, flagged `redelivered`, and a full queue makes the bus wait (then cuts the subscriber
    /// off as lagged) instead of dropping. The bus must report the same through
    /// `MessageBus::guarantee`.
    pub guarantee: Guarantee,
    /// A new subscriber also receives what was published before it subscribed (a stream with
    /// history). Where false, only what is published after `subscribe` returns is delivered.
    pub replays_earlier_messages: bool,
    /// A message's headers arrive in the order they were given. Where false they may arrive
    /// grouped by name in name order instead (NATS: the client keeps headers in a map), the
    /// values of one name still in their order.
    pub headers_in_order: bool,
    /// How long to wait for an expected delivery or condition before failing.
    pub deadline: Duration,
    /// The backend does no I/O, so checks on a current-thread runtime may pause tokio's clock:
    /// waiting out a deadline for "nothing arrives" then completes at once.
    pub virtual_time: bool,
}

/// Connects nodes to one shared medium (a broker, a server, an in-process hub).
///
/// Each check builds a fresh factory, so a factory may own its medium. Checks only use unique
/// channel and node names, so a factory may also share one external server between checks.
pub trait BusFactory {
    /// A new node connected to this factory's medium, set up with exactly `options` (node id,
    /// subscriber queue, payload limit, metrics).
    async fn node(&self, options: BusOptions) -> Arc<dyn MessageBus>;

    /// False when the medium is missing and skipping was allowed (a real server that is not
    /// installed, with `HUBBUS_TEST_SKIP_REAL_SERVERS=1`): the checks then return at once.
    fn available(&self) -> bool {
        true
    }
}

/// Expands to one test per check of the suite, for `$factory` and `$promises`.
///
/// - `conformance_tests!(factory, promises)`: one `#[tokio::test]` per check (the concurrency
///   check on a multi-threaded runtime); both expressions are evaluated once per test.
/// - `conformance_tests!(sim: simulation, factory, promises)`: one `#[test]` per check that
///   builds the turmoil simulation `simulation` (a `turmoil::Sim` with the fake brokers as
///   hosts), runs the check as a client inside it, and runs the simulation to the end; the
///   factory connects its nodes over `TurmoilTcp`. Every check then runs in simulated time on
///   the simulated network (turmoil runs each host on one thread).
macro_rules! conformance_tests {
    ($factory:expr, $promises:expr $(,)?) => {
        $crate::conformance::conformance_tests!(@all on, (tokio::test, $factory, $promises));
        $crate::conformance::conformance_tests!(
            @on (tokio::test(flavor = "multi_thread", worker_threads = 4), $factory, $promises);
            concurrent_subscribe_and_close_while_publishing_is_safe,
        );
    };
    (sim: $sim:expr, $factory:expr, $promises:expr $(,)?) => {
        $crate::conformance::conformance_tests!(@all sim, ($sim, $factory, $promises));
        $crate::conformance::conformance_tests!(
            @sim ($sim, $factory, $promises);
            concurrent_subscribe_and_close_while_publishing_is_safe,
        );
    };
    // Every check but the concurrency one, handed to the `@on` or `@sim` arm.
    (@all $arm:ident, $args:tt) => {
        $crate::conformance::conformance_tests!(
            @$arm $args;
            fan_out_reaches_every_subscriber_on_every_node_once,
            subscriber_sees_only_its_own_channel,
            each_publishers_order_is_kept_at_every_subscriber,
            closed_subscription_receives_nothing_more,
            dropped_subscription_is_unsubscribed,
            publish_and_subscribe_after_close_fail_with_closed,
            closing_the_bus_ends_subscriptions_after_queued_deliveries,
            invalid_channels_are_refused,
            oversized_payload_is_refused_and_the_limit_itself_passes,
            headers_that_cannot_be_framed_are_refused,
            slow_subscriber_never_blocks_the_publisher_nor_loses_silently,
            ack_and_nak_settle_or_redeliver_as_promised,
            delivery_carries_id_origin_time_and_headers,
            health_is_connected_while_open_and_down_after_close,
            late_subscriber_gets_earlier_messages_only_where_promised,
        );
    };
    (@on ($runtime:meta, $factory:expr, $promises:expr); $($check:ident),* $(,)?) => {
        $(
            #[$runtime]
            async fn $check() {
                let factory = $factory;
                if !$crate::conformance::BusFactory::available(&factory) {
                    return;
                }
                $crate::conformance::Suite::new(factory, $promises).$check().await;
            }
        )*
    };
    (@sim ($sim:expr, $factory:expr, $promises:expr); $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                let mut sim = $sim;
                sim.client("conformance", async move {
                    let factory = $factory;
                    if $crate::conformance::BusFactory::available(&factory) {
                        $crate::conformance::Suite::new(factory, $promises).$check().await;
                    }
                    Ok(())
                });
                if let Err(error) = sim.run() {
                    panic!("simulation failed: {error}");
                }
            }
        )*
    };
}
pub(crate) use conformance_tests;

/// One node of a check, with the registry its metrics are read from.
struct Node {
    bus: Arc<dyn MessageBus>,
    registry: Registry,
}

impl Node {
    /// The sum of the node's counter `<ns>_<name>` over all its label sets.
    fn counter(&self, name: &str) -> f64 {
        let name = format!("{METRICS_NAMESPACE}_{name}");
        self.registry
            .gather()
            .iter()
            .filter(|family| family.name() == name)
            .flat_map(|family| family.get_metric())
            .map(|metric| metric.get_counter().get_value())
            .sum()
    }
}

/// The checks, bound to one factory and one set of promises.
pub struct Suite<F> {
    factory: F,
    promises: Promises,
    /// Makes channel and node names unique, so checks can share an external broker.
    prefix: String,
    /// True when this check runs on tokio's paused clock.
    paused: bool,
}

impl<F: BusFactory> Suite<F> {
    /// Binds the checks; pauses tokio's clock where the promises allow it.
    pub fn new(factory: F, promises: Promises) -> Self {
        let paused = promises.virtual_time
            && tokio::runtime::Handle::current().runtime_flavor() == RuntimeFlavor::CurrentThread;
        if paused {
            tokio::time::pause();
        }
        let unique = IdGenerator::from_entropy().random_u64() as u32;
        Suite {
            factory,
            promises,
            prefix: format!("conf{unique:08x}"),
            paused,
        }
    }

    /// Every subscriber, on the publishing node and on the others, gets every message from
    /// every node exactly once.
    pub async fn fan_out_reaches_every_subscriber_on_every_node_once(self) {
        let channel = self.channel("fan_out");
        let nodes = [
            self.node("a").await,
            self.node("b").await,
            self.node("c").await,
        ];
        let mut subscriptions = Vec::new();
        for node in &nodes {
            for _ in 0..2 {
                subscriptions.push(node.bus.subscribe(&channel).await.expect("subscribe"));
            }
        }
        let mut expected = BTreeSet::new();
        for round in 0..10 {
            for node in &nodes {
                let payload = format!("{}-{round}", node.bus.node_id());
                expected.insert(publish(&node.bus, &channel, payload).await);
            }
        }
        for subscription in &mut subscriptions {
            if !self.promises.delivers {
                self.assert_silent(subscription).await;
                continue;
            }
            let received = self.collect(subscription, expected.len()).await;
            assert_exactly_once(&received, &expected);
        }
        if self.promises.delivers {
            let sentinel = publish(&nodes[0].bus, &channel, "sentinel").await;
            for subscription in &mut subscriptions {
                self.assert_ends_with(subscription, sentinel).await;
            }
        }
    }

    /// A subscriber to `a` never receives what is published to `b`, nor to `a.b` (a channel is
    /// not a prefix pattern), nor to `ab`; and the other way round.
    pub async fn subscriber_sees_only_its_own_channel(self) {
        let names = ["a", "b", "a.b", "ab"];
        let channels: Vec<String> = names.iter().map(|name| self.channel(name)).collect();
        let publisher = self.node("publisher").await;
        let listener = self.node("listener").await;
        let mut subscriptions = Vec::new();
        for channel in &channels {
            subscriptions.push(listener.bus.subscribe(channel).await.expect("subscribe"));
            subscriptions.push(publisher.bus.subscribe(channel).await.expect("subscribe"));
        }
        let mut expected = vec![BTreeSet::new(); channels.len()];
        for round in 0..3 {
            for (channel, ids) in channels.iter().zip(&mut expected) {
                ids.insert(publish(&publisher.bus, channel, format!("{channel}-{round}")).await);
            }
        }
        let mut sentinels = Vec::new();
        for channel in &channels {
            sentinels.push(publish(&publisher.bus, channel, "sentinel").await);
        }
        for (index, subscription) in subscriptions.iter_mut().enumerate() {
            let channel = index / 2;
            if !self.promises.delivers {
                self.assert_silent(subscription).await;
                continue;
            }
            let received = self.collect(subscription, expected[channel].len()).await;
            for delivery in &received {
                assert_eq!(
                    delivery.channel(),
                    channels[channel],
                    "a subscriber to {} received {:?}",
                    channels[channel],
                    delivery.payload()
                );
            }
            assert_exactly_once(&received, &expected[channel]);
            self.assert_ends_with(subscription, sentinels[channel])
                .await;
        }
    }

    /// Two publishers interleave; at every subscriber each publisher's messages arrive in the
    /// order it published them.
    pub async fn each_publishers_order_is_kept_at_every_subscriber(self) {
        const COUNT: usize = 50;
        if self.promises.delivers && !self.promises.ordered_per_publisher {
            return;
        }
        let channel = self.channel("order");
        let first = self.node("first").await;
        let second = self.node("second").await;
        let listener = self.node("listener").await;
        let mut subscriptions = vec![
            listener.bus.subscribe(&channel).await.expect("subscribe"),
            listener.bus.subscribe(&channel).await.expect("subscribe"),
            first.bus.subscribe(&channel).await.expect("subscribe"),
            second.bus.subscribe(&channel).await.expect("subscribe"),
        ];
        let publish_in_order = |bus: Arc<dyn MessageBus>, channel: String| async move {
            for sequence in 0..COUNT {
                publish(&bus, &channel, sequence.to_string()).await;
                tokio::task::yield_now().await;
            }
        };
        tokio::join!(
            publish_in_order(first.bus.clone(), channel.clone()),
            publish_in_order(second.bus.clone(), channel.clone()),
        );
        let expected: Vec<String> = (0..COUNT).map(|sequence| sequence.to_string()).collect();
        for subscription in &mut subscriptions {
            if !self.promises.delivers {
                self.assert_silent(subscription).await;
                continue;
            }
            let received = self.collect(subscription, 2 * COUNT).await;
            for publisher in [&first, &second] {
                let sequence: Vec<String> = received
                    .iter()
                    .filter(|delivery| delivery.origin() == publisher.bus.node_id())
                    .map(payload_text)
                    .collect();
                assert_eq!(
                    sequence,
                    expected,
                    "messages of {} arrived out of order",
                    publisher.bus.node_id()
                );
            }
        }
    }

    /// Many tasks subscribe, close and drop subscriptions while a publisher runs: nothing
    /// panics or deadlocks, and the subscriptions still open at the end receive a final message.
    pub async fn concurrent_subscribe_and_close_while_publishing_is_safe(self) {
        const TASKS: usize = 8;
        const ROUNDS: usize = 20;
        let channel = self.channel("churn");
        let publisher = self.node("publisher").await;
        let nodes = [self.node("a").await.bus, self.node("b").await.bus];
        let running = Arc::new(AtomicBool::new(true));
        let publishing = tokio::spawn({
            let (bus, channel, running) = (publisher.bus.clone(), channel.clone(), running.clone());
            async move {
                let mut sequence = 0_u64;
                while running.load(Ordering::Relaxed) {
                    publish(&bus, &channel, sequence.to_string()).await;
                    sequence += 1;
                    tokio::task::yield_now().await;
                }
            }
        });
        let churners: Vec<_> = (0..TASKS)
            .map(|task| {
                let (bus, channel) = (nodes[task % nodes.len()].clone(), channel.clone());
                tokio::spawn(async move {
                    for round in 0..ROUNDS {
                        let mut subscription = bus.subscribe(&channel).await.expect("subscribe");
                        let _ = subscription.try_recv();
                        if (task + round) % 2 == 0 {
                            subscription.close().await;
                        } else {
                            drop(subscription);
                        }
                        tokio::task::yield_now().await;
                    }
                    bus.subscribe(&channel).await.expect("subscribe")
                })
            })
            .collect();
        let mut survivors = Vec::new();
        for churner in churners {
            let survivor = timeout(self.promises.deadline, churner)
                .await
                .expect("subscribing and closing deadlocked")
                .expect("a subscribing task panicked");
            survivors.push(survivor);
        }
        running.store(false, Ordering::Relaxed);
        timeout(self.promises.deadline, publishing)
            .await
            .expect("the publisher deadlocked")
            .expect("the publisher panicked");
        let last = publish(&publisher.bus, &channel, "final").await;
        for survivor in &mut survivors {
            if !self.promises.delivers {
                self.assert_silent(survivor).await;
                continue;
            }
            while self.next(survivor).await.id() != last {}
        }
    }

    /// After `close` of a subscription returns, its handler has stopped for good, and publishing
    /// keeps working for everyone else.
    pub async fn closed_subscription_receives_nothing_more(self) {
        let channel = self.channel("close_one");
        let publisher = self.node("publisher").await;
        let listener = self.node("listener").await;
        let mut witness = listener.bus.subscribe(&channel).await.expect("subscribe");
        let (handled, mut handled_ids) = tokio::sync::mpsc::unbounded_channel();
        let handle = subscribe_with(listener.bus.as_ref(), &channel, move |delivery| {
            let _ = handled.send(delivery.id());
            async { Ok::<(), std::convert::Infallible>(()) }
        })
        .await
        .expect("subscribe_with");
        let closed_directly = listener.bus.subscribe(&channel).await.expect("subscribe");

        let before = publish(&publisher.bus, &channel, "before").await;
        if self.promises.delivers {
            assert_eq!(self.next(&mut witness).await.id(), before);
            let handled_before = timeout(self.promises.deadline, handled_ids.recv()).await;
            assert_eq!(handled_before.expect("the handler ran"), Some(before));
        }
        handle.close().await;
        closed_directly.close().await;

        let after = publish(&publisher.bus, &channel, "after").await;
        if self.promises.delivers {
            self.assert_ends_with(&mut witness, after).await;
        } else {
            self.assert_silent(&mut witness).await;
        }
        // The handler (and with it the sender it owns) is gone once `close` has returned.
        assert_eq!(
            handled_ids.try_recv(),
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected),
            "the handler still ran, or its task outlived close"
        );
    }

    /// Dropping a subscription unsubscribes it: the other subscriptions of the channel keep
    /// receiving, and once the last one is dropped the node receives nothing for the channel.
    pub async fn dropped_subscription_is_unsubscribed(self) {
        let channel = self.channel("dropped");
        let probe_channel = self.channel("probe");
        let publisher = self.node("publisher").await;
        let listener = self.node("listener").await;
        let mut kept = listener.bus.subscribe(&channel).await.expect("subscribe");
        drop(listener.bus.subscribe(&channel).await.expect("subscribe"));

        let first = publish(&publisher.bus, &channel, "first").await;
        if self.promises.delivers {
            self.assert_ends_with(&mut kept, first).await;
        } else {
            self.assert_silent(&mut kept).await;
        }
        drop(kept);
        // A subscribe after the drop: a backend that unsubscribes in the background has
        // processed the drop once this subscription is live.
        let mut probe = listener
            .bus
            .subscribe(&probe_channel)
            .await
            .expect("subscribe");
        let received_before = listener.counter("bus_received_total");
        for index in 0..5 {
            publish(&publisher.bus, &channel, format!("unheard-{index}")).await;
        }
        let sentinel = publish(&publisher.bus, &probe_channel, "sentinel").await;
        let probe_deliveries = if self.promises.delivers {
            self.assert_ends_with(&mut probe, sentinel).await;
            1.0
        } else {
            self.assert_silent(&mut probe).await;
            0.0
        };
        assert_eq!(
            listener.counter("bus_received_total") - received_before,
            probe_deliveries,
            "the node still receives a channel whose subscriptions were all dropped"
        );
    }

    /// A closed bus refuses publishes and subscriptions with `BusError::Closed`, and closing
    /// it again is harmless.
    pub async fn publish_and_subscribe_after_close_fail_with_closed(self) {
        let channel = self.channel("after_close");
        let node = self.node("a").await;
        node.bus.close().await;
        let refused = node
            .bus
            .publish(&channel, Bytes::from_static(b"late"))
            .await;
        assert!(
            matches!(refused, Err(BusError::Closed)),
            "publish: {refused:?}"
        );
        let refused = node
            .bus
            .publish_message(Message::new(channel.clone(), "late").with_header("k", "v"))
            .await;
        assert!(
            matches!(refused, Err(BusError::Closed)),
            "publish_message: {refused:?}"
        );
        let refused = node.bus.subscribe(&channel).await;
        assert!(
            matches!(refused, Err(BusError::Closed)),
            "subscribe: {refused:?}"
        );
        node.bus.close().await;
    }

    /// Closing a bus ends its open subscriptions once what was queued has been read, and
    /// leaves the other nodes working.
    pub async fn closing_the_bus_ends_subscriptions_after_queued_deliveries(self) {
        let channel = self.channel("bus_close");
        let publisher = self.node("publisher").await;
        let closing = self.node("closing").await;
        let mut ending = closing.bus.subscribe(&channel).await.expect("subscribe");
        let mut witness = closing.bus.subscribe(&channel).await.expect("subscribe");
        let mut survivor = publisher.bus.subscribe(&channel).await.expect("subscribe");
        let mut queued = Vec::new();
        for index in 0..3 {
            queued.push(publish(&publisher.bus, &channel, format!("queued-{index}")).await);
        }
        if self.promises.delivers {
            // The node has received all three once its other subscription has them.
            let seen: Vec<MessageId> = self
                .collect(&mut witness, 3)
                .await
                .iter()
                .map(Delivery::id)
                .collect();
            assert_eq!(sorted(seen), sorted(queued.clone()));
        }
        closing.bus.close().await;

        let mut drained = Vec::new();
        loop {
            match timeout(self.promises.deadline, ending.recv()).await {
                Ok(Some(delivery)) => drained.push(delivery.id()),
                Ok(None) => break,
                Err(_) => panic!("the subscription did not end after the bus was closed"),
            }
        }
        let expected = if self.promises.delivers {
            queued
        } else {
            Vec::new()
        };
        assert_eq!(
            sorted(drained),
            sorted(expected),
            "what was queued before close"
        );

        let after = publish(&publisher.bus, &channel, "after").await;
        if self.promises.delivers {
            self.collect(&mut survivor, 3).await;
            self.assert_ends_with(&mut survivor, after).await;
        } else {
            self.assert_silent(&mut survivor).await;
        }
    }

    /// Channels that break the channel rule are refused with `BusError::InvalidChannel`, naming
    /// the channel, by publish and subscribe alike; the longest valid channel is accepted.
    pub async fn invalid_channels_are_refused(self) {
        let node = self.node("a").await;
        let too_long = "x".repeat(MAX_CHANNEL_LEN + 1);
        for channel in [
            "",
            &too_long,
            "a b",
            "a..b",
            ".a",
            "a.",
            "caf\u{e9}",
            "a*",
            "a>",
        ] {
            let refused = node.bus.publish(channel, Bytes::from_static(b"x")).await;
            assert!(
                matches!(&refused, Err(BusError::InvalidChannel { channel: named, .. }) if named == channel),
                "publish to {channel:?}: {refused:?}"
            );
            let refused = node.bus.publish_message(Message::new(channel, "x")).await;
            assert!(
                matches!(&refused, Err(BusError::InvalidChannel { .. })),
                "publish_message to {channel:?}: {refused:?}"
            );
            let refused = node.bus.subscribe(channel).await;
            assert!(
                matches!(&refused, Err(BusError::InvalidChannel { channel: named, .. }) if named == channel),
                "subscribe to {channel:?}: {refused:?}"
            );
        }
        let longest = format!(
            "{}.{}",
            self.prefix,
            "x".repeat(MAX_CHANNEL_LEN - self.prefix.len() - 1)
        );
        assert_eq!(longest.len(), MAX_CHANNEL_LEN);
        let mut subscription = node.bus.subscribe(&longest).await.expect("subscribe");
        let id = publish(&node.bus, &longest, "fits").await;
        if self.promises.delivers {
            self.assert_ends_with(&mut subscription, id).await;
        } else {
            self.assert_silent(&mut subscription).await;
        }
    }

    /// A payload over the limit is refused with `BusError::PayloadTooLarge` and reaches nobody;
    /// a payload exactly at the limit is delivered whole.
    pub async fn oversized_payload_is_refused_and_the_limit_itself_passes(self) {
        const LIMIT: usize = 1024;
        let channel = self.channel("payload");
        let limited = |options: &mut BusOptions| options.max_payload = LIMIT;
        let publisher = self.node_with("publisher", limited).await;
        let listener = self.node_with("listener", limited).await;
        assert_eq!(publisher.bus.max_payload(), LIMIT);
        let mut subscription = listener.bus.subscribe(&channel).await.expect("subscribe");

        let refused = publisher
            .bus
            .publish(&channel, Bytes::from(vec![b'x'; LIMIT + 1]))
            .await;
        assert!(
            matches!(refused, Err(BusError::PayloadTooLarge { size, limit }) if size == LIMIT + 1 && limit == LIMIT),
            "publish: {refused:?}"
        );
        let refused = publisher
            .bus
            .publish_message(Message::new(channel.clone(), vec![b'x'; 2 * LIMIT]))
            .await;
        assert!(
            matches!(refused, Err(BusError::PayloadTooLarge { .. })),
            "publish_message: {refused:?}"
        );
        // Headers count towards the limit, and one that cannot be framed is refused, never cut.
        let refused = publisher
            .bus
            .publish_message(
                Message::new(channel.clone(), vec![b'x'; LIMIT - 4]).with_header("key", "value"),
            )
            .await;
        assert!(
            matches!(refused, Err(BusError::PayloadTooLarge { .. })),
            "payload and headers over the limit: {refused:?}"
        );

        let at_limit = publish(&publisher.bus, &channel, vec![b'y'; LIMIT]).await;
        if self.promises.delivers {
            let delivery = self.next(&mut subscription).await;
            assert_eq!(delivery.id(), at_limit, "a refused payload was delivered");
            assert_eq!(delivery.payload().len(), LIMIT);
            self.assert_silent(&mut subscription).await;
        } else {
            self.assert_silent(&mut subscription).await;
        }
    }

    /// A header the wire format cannot carry (a key over 65 535 bytes) is refused with
    /// `InvalidHeader` before anything is sent, rather than cut to fit; the bus goes on.
    pub async fn headers_that_cannot_be_framed_are_refused(self) {
        let channel = self.channel("headers");
        let publisher = self.node("publisher").await;
        let listener = self.node("listener").await;
        let mut subscription = listener.bus.subscribe(&channel).await.expect("subscribe");
        let refused = publisher
            .bus
            .publish_message(
                Message::new(channel.clone(), "x")
                    .with_header("k".repeat(u16::MAX as usize + 1), "v"),
            )
            .await;
        assert!(
            matches!(&refused, Err(BusError::InvalidHeader { key, .. }) if key.len() <= 64),
            "an unframable header: {refused:?}"
        );
        let fine = publisher
            .bus
            .publish_message(Message::new(channel.clone(), "y").with_header("k".repeat(100), "v"))
            .await
            .expect("a long but framable header");
        if self.promises.delivers {
            let delivery = self.next(&mut subscription).await;
            assert_eq!(delivery.id(), fine.id, "the refused message was delivered");
            assert_eq!(delivery.headers()[0].0.len(), 100, "headers arrive whole");
        }
        self.assert_silent(&mut subscription).await;
    }

    /// A subscriber that does not read never blocks the publisher, and never loses a message
    /// silently: at most once, it keeps the newest `subscriber_queue` deliveries and counts what
    /// was dropped; at least once, it is cut off as lagged after `lag_timeout` (and told how
    /// much it missed) while a subscriber that keeps up gets everything.
    pub async fn slow_subscriber_never_blocks_the_publisher_nor_loses_silently(self) {
        const QUEUE: usize = 8;
        const PUBLISHED: usize = 100;
        let channel = self.channel("slow");
        let small_queue = |options: &mut BusOptions| {
            options.subscriber_queue = QUEUE;
            options.lag_timeout = Duration::from_secs(1);
        };
        let publisher = self.node_with("publisher", small_queue).await;
        let listener = self.node_with("listener", small_queue).await;
        assert_eq!(listener.bus.guarantee(), self.promises.guarantee);
        let mut slow = listener.bus.subscribe(&channel).await.expect("subscribe");
        let mut keeping_up = listener.bus.subscribe(&channel).await.expect("subscribe");

        let mut published = Vec::new();
        let mut received: Vec<MessageId> = Vec::new();
        timeout(self.promises.deadline, async {
            for sequence in 0..PUBLISHED {
                published.push(publish(&publisher.bus, &channel, sequence.to_string()).await);
                if self.promises.delivers && self.promises.guarantee == Guarantee::AtLeastOnce {
                    // Keep up, so only `slow` falls behind.
                    while let Some(delivery) = keeping_up.try_recv() {
                        delivery.ack().await.expect("ack");
                        if !received.contains(&delivery.id()) {
                            received.push(delivery.id());
                        }
                    }
                }
            }
        })
        .await
        .expect("the publisher was blocked by a subscriber that does not read");

        if !self.promises.delivers {
            self.assert_silent(&mut slow).await;
            assert_eq!(slow.dropped(), 0);
            return;
        }
        match self.promises.guarantee {
            Guarantee::AtLeastOnce => {
                while received.len() < PUBLISHED {
                    let delivery = self.next(&mut keeping_up).await;
                    if !received.contains(&delivery.id()) {
                        received.push(delivery.id());
                    }
                }
                received.sort();
                let mut expected = published.clone();
                expected.sort();
                assert_eq!(
                    received, expected,
                    "the subscriber that keeps up gets everything"
                );
                self.wait_until("the slow subscriber to be cut off", || slow.end().is_some())
                    .await;
                let Some(SubscriptionEnd::Lagged { dropped }) = slow.end() else {
                    panic!("ended as {:?}", slow.end());
                };
                assert!(dropped >= 1, "told how much it missed");
                assert_eq!(listener.counter("bus_lagged_total"), 1.0);
            }
            _ => {
                let lost = (PUBLISHED - QUEUE) as u64;
                self.wait_until("the overflow to be counted", || slow.dropped() >= lost)
                    .await;
                let mut kept = Vec::new();
                while let Some(delivery) = slow.try_recv() {
                    kept.push(payload_text(&delivery));
                }
                assert!(
                    kept.len() <= QUEUE,
                    "kept {} of a queue of {QUEUE}",
                    kept.len()
                );
                assert_eq!(kept.len() as u64 + slow.dropped(), PUBLISHED as u64);
                if self.promises.ordered_per_publisher {
                    let newest: Vec<String> = (PUBLISHED - kept.len()..PUBLISHED)
                        .map(|sequence| sequence.to_string())
                        .collect();
                    assert_eq!(kept, newest, "a slow subscriber keeps the newest, in order");
                }
                assert_eq!(
                    listener.counter("bus_dropped_total"),
                    (slow.dropped() + keeping_up.dropped()) as f64,
                    "every drop is counted in the metrics"
                );
                let next = publish(&publisher.bus, &channel, "caught up").await;
                self.assert_ends_with(&mut slow, next).await;
            }
        }
    }

    /// `ack` and `nak` succeed. Where redelivery is promised a nak'd delivery comes back with
    /// the same id flagged `redelivered`; elsewhere neither brings anything back.
    pub async fn ack_and_nak_settle_or_redeliver_as_promised(self) {
        let channel = self.channel("settle");
        let publisher = self.node("publisher").await;
        let listener = self.node("listener").await;
        let mut subscription = listener.bus.subscribe(&channel).await.expect("subscribe");
        let declined = publish(&publisher.bus, &channel, "declined").await;
        if !self.promises.delivers {
            self.assert_silent(&mut subscription).await;
            return;
        }
        let delivery = self.next_unsettled(&mut subscription).await;
        assert_eq!(delivery.id(), declined);
        assert!(
            !delivery.redelivered(),
            "a first delivery is not flagged redelivered"
        );
        delivery.nak(None).await.expect("nak");
        if self.promises.guarantee == Guarantee::AtLeastOnce {
            let again = self.next(&mut subscription).await;
            assert_eq!(again.id(), declined, "the nak'd message comes back");
            assert!(again.redelivered(), "a redelivery is flagged");
            again.ack().await.expect("ack");
        } else {
            delivery.ack().await.expect("ack");
            delivery
                .nak(Some(Duration::from_millis(1)))
                .await
                .expect("nak with delay");
        }
        let sentinel = publish(&publisher.bus, &channel, "sentinel").await;
        let next = self.next(&mut subscription).await;
        assert_eq!(next.id(), sentinel, "an acknowledged message came back");
        next.ack().await.expect("ack");
        self.assert_silent(&mut subscription).await;
    }

    /// A delivery carries the receipt's id (or the one given with `Message::with_id`), the
    /// publishing node as origin, the publish time and the headers, in order.
    pub async fn delivery_carries_id_origin_time_and_headers(self) {
        let channel = self.channel("metadata");
        let publisher = self.node("publisher").await;
        let listener = self.node("listener").await;
        let mut subscription = listener.bus.subscribe(&channel).await.expect("subscribe");

        let chosen = IdGenerator::from_entropy().next_id();
        let start = SystemTime::now();
        let receipt = publisher
            .bus
            .publish_message(
                Message::new(channel.clone(), "with metadata")
                    .with_id(chosen)
                    .with_header("trace", "abc")
                    .with_header("k", "v"),
            )
            .await
            .expect("publish_message");
        assert_eq!(receipt.id, chosen, "the receipt carries the id given");
        let plain = publish(&publisher.bus, &channel, "plain").await;
        assert_ne!(plain, chosen);
        let end = SystemTime::now();
        if !self.promises.delivers {
            self.assert_silent(&mut subscription).await;
            return;
        }

        let delivery = self.next(&mut subscription).await;
        assert_eq!(delivery.id(), chosen);
        assert_eq!(delivery.channel(), channel);
        assert_eq!(delivery.payload().as_ref(), b"with metadata");
        assert_eq!(delivery.origin(), publisher.bus.node_id());
        let mut headers = vec![
            ("trace".to_owned(), "abc".to_owned()),
            ("k".to_owned(), "v".to_owned()),
        ];
        let mut received = delivery.headers().to_vec();
        if !self.promises.headers_in_order {
            headers.sort_by(|a, b| a.0.cmp(&b.0));
            received.sort_by(|a, b| a.0.cmp(&b.0));
        }
        assert_eq!(received, headers);
        assert!(!delivery.redelivered());
        let published_at = delivery.published_at();
        assert!(
            published_at + CLOCK_TOLERANCE >= start && published_at <= end + CLOCK_TOLERANCE,
            "published_at {published_at:?} is not between {start:?} and {end:?}"
        );
        let delivery = self.next(&mut subscription).await;
        assert_eq!(delivery.id(), plain);
        assert!(delivery.headers().is_empty());
        assert_eq!(delivery.origin(), publisher.bus.node_id());
    }

    /// A node reports connected while open (after connecting, within the deadline) and down,
    /// with a reason, once closed.
    pub async fn health_is_connected_while_open_and_down_after_close(self) {
        let node = self.node("a").await;
        self.wait_until("the node to connect", || node.bus.health().is_connected())
            .await;
        assert_eq!(node.bus.health().reason, None);
        node.bus.close().await;
        let health = node.bus.health();
        assert_eq!(health.state, HealthState::Down);
        assert!(health.reason.is_some(), "a down bus says why");
    }

    /// A subscriber receives what was published before it subscribed only where the backend
    /// keeps history; elsewhere it starts with the first message after `subscribe` returned.
    pub async fn late_subscriber_gets_earlier_messages_only_where_promised(self) {
        let channel = self.channel("late");
        let publisher = self.node("publisher").await;
        let listener = self.node("listener").await;
        let early = publish(&publisher.bus, &channel, "early").await;
        let mut late_subscriber = listener.bus.subscribe(&channel).await.expect("subscribe");
        let late = publish(&publisher.bus, &channel, "late").await;
        if !self.promises.delivers {
            self.assert_silent(&mut late_subscriber).await;
            return;
        }
        if self.promises.replays_earlier_messages {
            assert_eq!(self.next(&mut late_subscriber).await.id(), early);
        }
        self.assert_ends_with(&mut late_subscriber, late).await;
    }

    fn channel(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    async fn node(&self, name: &str) -> Node {
        self.node_with(name, |_| {}).await
    }

    async fn node_with(&self, name: &str, adjust: impl FnOnce(&mut BusOptions)) -> Node {
        let registry = Registry::new();
        let mut options = BusOptions {
            node_id: NodeId::new(format!("{}-{name}", self.prefix)).expect("a valid node id"),
            metrics: BusMetrics::register(&registry, METRICS_NAMESPACE).expect("metrics"),
            ..BusOptions::default()
        };
        adjust(&mut options);
        Node {
            bus: self.factory.node(options).await,
            registry,
        }
    }

    /// The next delivery, within the deadline, acknowledged (a no-op where delivery is at most
    /// once): the check has handled it.
    async fn next(&self, subscription: &mut Subscription) -> Delivery {
        let delivery = self.next_unsettled(subscription).await;
        delivery.ack().await.expect("ack");
        delivery
    }

    /// The next delivery, within the deadline, not settled yet.
    async fn next_unsettled(&self, subscription: &mut Subscription) -> Delivery {
        match timeout(self.promises.deadline, subscription.recv()).await {
            Ok(Some(delivery)) => delivery,
            Ok(None) => panic!("the subscription to {} ended", subscription.channel()),
            Err(_) => panic!(
                "nothing arrived on {} within {:?}",
                subscription.channel(),
                self.promises.deadline
            ),
        }
    }

    /// The next `count` deliveries, each within the deadline.
    async fn collect(&self, subscription: &mut Subscription, count: usize) -> Vec<Delivery> {
        let mut received = Vec::with_capacity(count);
        for _ in 0..count {
            received.push(self.next(subscription).await);
        }
        received
    }

    /// The next delivery is `last`, and nothing follows it.
    async fn assert_ends_with(&self, subscription: &mut Subscription, last: MessageId) {
        let delivery = self.next(subscription).await;
        assert_eq!(
            delivery.id(),
            last,
            "expected the last message on {}, got {:?}",
            subscription.channel(),
            delivery.payload()
        );
        self.assert_silent(subscription).await;
    }

    /// Nothing (more) is delivered: nothing is queued once other tasks have run, and on the
    /// paused clock nothing arrives within the deadline either.
    async fn assert_silent(&self, subscription: &mut Subscription) {
        tokio::task::yield_now().await;
        if let Some(delivery) = subscription.try_recv() {
            panic!(
                "unexpected delivery on {}: {:?}",
                subscription.channel(),
                delivery.payload()
            );
        }
        if self.paused
            && let Ok(Some(delivery)) = timeout(self.promises.deadline, subscription.recv()).await
        {
            panic!(
                "unexpected delivery on {}: {:?}",
                subscription.channel(),
                delivery.payload()
            );
        }
    }

    /// Waits until `condition` holds, failing after the deadline.
    async fn wait_until(&self, what: &str, mut condition: impl FnMut() -> bool) {
        let waited = timeout(self.promises.deadline, async {
            while !condition() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "gave up waiting for {what} after {:?}",
            self.promises.deadline
        );
    }
}

/// Publishes `payload` and returns the message id; the publish must succeed.
async fn publish(bus: &Arc<dyn MessageBus>, channel: &str, payload: impl Into<Bytes>) -> MessageId {
    match bus.publish(channel, payload.into()).await {
        Ok(receipt) => receipt.id,
        Err(error) => panic!("publish to {channel} failed: {error}"),
    }
}

fn payload_text(delivery: &Delivery) -> String {
    String::from_utf8_lossy(delivery.payload()).into_owned()
}

fn sorted(mut ids: Vec<MessageId>) -> Vec<MessageId> {
    ids.sort();
    ids
}

/// Every expected id arrived, each exactly once, and nothing else did.
fn assert_exactly_once(received: &[Delivery], expected: &BTreeSet<MessageId>) {
    let ids: Vec<MessageId> = received.iter().map(Delivery::id).collect();
    let distinct: BTreeSet<MessageId> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), ids.len(), "a message arrived twice");
    assert_eq!(
        &distinct, expected,
        "not exactly the published messages arrived"
    );
}
