//! One simulated node: a bus of the scenario's backend over `TurmoilTcp`, a [`Hub`] on it with
//! the node's local subscribers and publishers. The path users take (hub, bridge, bus, broker)
//! is the path simulated. A node that restarts closes its hub and bus, waits, and starts both
//! again with its node id; its subscribers subscribe again and its publishers go on where they
//! stopped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use hubbus::{
    BusError, BusMetrics, BusOptions, Hub, IdGenerator, Message, MessageBus, NodeId,
    SubscriptionEnd,
};

use super::event::{Event, Log, now};
use super::workload::{Publisher, Subscriber, channel_name, parse_payload, payload};
use super::{Backend, Scenario, SimClock};

/// How often a node samples its bus's health: often enough to see the short dip of a NATS
/// link that reconnects at once after a restart.
const HEALTH_SAMPLE: Duration = Duration::from_millis(1);

/// How long a subscriber waits before trying again when `subscribe` failed.
const SUBSCRIBE_RETRY: Duration = Duration::from_millis(100);

/// The JetStream nodes' `ack_wait`: short, so what a fault took on its way is redelivered
/// within the run.
pub(super) const JETSTREAM_ACK_WAIT: Duration = Duration::from_secs(2);

/// What a node needs besides the scenario.
pub(super) struct NodeSetup {
    pub(super) node: usize,
    pub(super) seed: u64,
    pub(super) scenario: Scenario,
    pub(super) log: Log,
}

/// Sleeps until simulated time `at` (since the start of the run).
async fn until(at: Duration) {
    tokio::time::sleep(at.saturating_sub(now())).await;
}

/// Runs the node process, and runs it again after each of its restarts, until the run ends.
pub(super) async fn run_node(setup: NodeSetup) -> turmoil::Result {
    let NodeSetup {
        node,
        seed,
        scenario,
        log,
    } = setup;
    let mut restarts: Vec<_> = scenario
        .restarts
        .iter()
        .filter(|r| r.node == node)
        .copied()
        .collect();
    restarts.sort_by_key(|r| r.at);
    // What each publisher sends next, across restarts.
    let next: Vec<Arc<AtomicU32>> = scenario
        .publishers_of(node)
        .map(|_| Arc::new(AtomicU32::new(0)))
        .collect();
    let end = scenario.end();
    let mut incarnation = 0;
    loop {
        let restart = restarts.get(incarnation);
        let stop_at = restart.map_or(end, |r| r.at);
        let process = Process {
            node,
            seed,
            incarnation: incarnation as u64,
            scenario: &scenario,
            log: &log,
            stop_at,
        };
        process.run(&next).await?;
        let Some(restart) = restart else {
            return Ok(());
        };
        log.record(Event::NodeStopped { at: now(), node });
        until(restart.at + restart.down_for).await;
        log.record(Event::NodeStarted { at: now(), node });
        incarnation += 1;
    }
}

/// One run of a node's process, from its start until `stop_at`.
struct Process<'a> {
    node: usize,
    seed: u64,
    incarnation: u64,
    scenario: &'a Scenario,
    log: &'a Log,
    stop_at: Duration,
}

impl Process<'_> {
    async fn run(&self, next: &[Arc<AtomicU32>]) -> Result<(), Box<dyn std::error::Error>> {
        let node = self.node;
        let ids = IdGenerator::seeded(
            self.seed
                .wrapping_mul(1_000_003)
                .wrapping_add(node as u64)
                .wrapping_add(self.incarnation << 40),
            Arc::new(SimClock),
        );
        let registry = prometheus::Registry::new();
        let options = BusOptions {
            node_id: NodeId::new(format!("node-{node}"))?,
            ids: ids.clone(),
            metrics: BusMetrics::register(&registry, "sim")?,
            subscriber_queue: self.scenario.subscriber_queue,
            ..BusOptions::default()
        };
        let link_seed = self.seed ^ node as u64 ^ (self.incarnation << 32);
        let bus = connect(self.scenario.backend, options, link_seed).await?;
        let watcher = tokio::spawn(watch_health(node, bus.clone(), self.log.clone()));
        let hub = Arc::new(Hub::new(bus.clone()));

        let mut tasks = Vec::new();
        for (index, spec) in self.scenario.subscribers_of(node).enumerate() {
            tasks.push(tokio::spawn(subscriber(
                hub.clone(),
                self.log.clone(),
                index,
                spec.clone(),
                self.stop_at,
            )));
        }
        for ((index, spec), next) in self.scenario.publishers_of(node).enumerate().zip(next) {
            tasks.push(tokio::spawn(publisher(
                hub.clone(),
                ids.clone(),
                self.log.clone(),
                index,
                spec.clone(),
                next.clone(),
                self.stop_at,
            )));
        }
        for task in tasks {
            task.await?;
        }
        self.log.record(Event::DropsCounted {
            at: now(),
            node,
            dropped: dropped_total(&registry),
        });
        // A node whose publishers are done and whose subscribers left still runs its bus.
        until(self.stop_at).await;
        watcher.abort();
        hub.close().await;
        bus.close().await;
        Ok(())
    }
}

/// Subscribes when the subscriber joins (trying again while `subscribe` fails), records every
/// delivery and acks it (taking its time if it is slow), and stops when it leaves or its node
/// stops.
async fn subscriber(hub: Arc<Hub>, log: Log, index: usize, spec: Subscriber, stop_at: Duration) {
    let node = spec.node;
    let leaves = spec.leaves.map_or(stop_at, |leaves| leaves.min(stop_at));
    until(spec.joins).await;
    let channel = spec.channel_name();
    let mut subscription = loop {
        if now() >= leaves {
            return;
        }
        let attempt = tokio::time::timeout(leaves.saturating_sub(now()), hub.subscribe(&channel));
        match attempt.await {
            Ok(Ok(subscription)) => break subscription,
            // The broker's final word: trying again would only ask again.
            Ok(Err(error @ BusError::Refused { .. })) => {
                log.record(Event::Refused {
                    at: now(),
                    node,
                    subscriber: index,
                    reason: error.to_string(),
                });
                return;
            }
            Ok(Err(error)) => {
                tracing::debug!(node, index, %error, "subscribe failed; trying again");
                tokio::time::sleep(SUBSCRIBE_RETRY).await;
            }
            Err(_) => return,
        }
    };
    log.record(Event::Subscribed {
        at: now(),
        node,
        subscriber: index,
    });
    let mut ended = false;
    let mut unread = Vec::new();
    loop {
        let delivery = tokio::select! {
            biased;
            _ = until(leaves) => {
                // What was queued for it when it left, it never reads.
                while let Some(delivery) = subscription.try_recv() {
                    unread.extend(parse_payload(delivery.payload()));
                }
                break;
            }
            delivery = subscription.recv() => delivery,
        };
        let Some(delivery) = delivery else {
            ended = true;
            break;
        };
        if let Some((origin, publisher, seq)) = parse_payload(delivery.payload()) {
            log.record(Event::Delivered {
                at: now(),
                node,
                subscriber: index,
                channel: spec.channel,
                origin,
                publisher,
                seq,
                id: delivery.id().to_string(),
                redelivered: delivery.redelivered(),
            });
        }
        if let Some(slow) = spec.slow {
            tokio::time::sleep(slow).await;
        }
        // Settles at-least-once deliveries; a no-op on at-most-once buses. A failure means the
        // bus lost the delivery's connection: the broker redelivers.
        if let Err(error) = delivery.ack().await {
            tracing::debug!(node, index, %error, "ack failed");
        }
    }
    log.record(Event::Unsubscribed {
        at: now(),
        node,
        subscriber: index,
        dropped: subscription.dropped(),
        lagged: matches!(subscription.end(), Some(SubscriptionEnd::Lagged { .. })),
        ended,
        unread,
    });
}

/// Publishes the publisher's messages on schedule from `next` on, until they are all out or the
/// node stops; a failed publish is tried again with the same id up to `retries` times.
async fn publisher(
    hub: Arc<Hub>,
    ids: IdGenerator,
    log: Log,
    index: usize,
    spec: Publisher,
    next: Arc<AtomicU32>,
    stop_at: Duration,
) {
    let node = spec.node;
    let channel = channel_name(spec.channel);
    loop {
        let seq = next.load(Ordering::SeqCst);
        let due = spec.start + spec.interval * seq;
        if seq >= spec.messages || due >= stop_at {
            return;
        }
        until(due).await;
        next.store(seq + 1, Ordering::SeqCst);
        let body = payload(node, index, seq, spec.payload);
        let id = ids.next_id();
        for attempt in 0..=spec.retries {
            let started = now();
            let message = Message::new(channel.as_str(), body.clone()).with_id(id);
            let outcome = hub
                .publish_message(message)
                .await
                .map(|receipt| receipt.id.to_string())
                .map_err(|error| error.to_string());
            let confirmed = outcome.is_ok();
            log.record(Event::Published {
                started,
                at: now(),
                node,
                publisher: index,
                channel: spec.channel,
                seq,
                attempt,
                outcome,
            });
            if confirmed || now() >= stop_at {
                break;
            }
        }
    }
}

/// The sum of `sim_bus_dropped_total` over its labels.
fn dropped_total(registry: &prometheus::Registry) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|family| family.name() == "sim_bus_dropped_total")
        .flat_map(|family| family.get_metric())
        .map(|metric| metric.get_counter().get_value() as u64)
        .sum()
}

/// The scenario's bus, connected through `TurmoilTcp` to the broker the harness set up.
async fn connect(
    backend: Backend,
    options: BusOptions,
    seed: u64,
) -> Result<Arc<dyn MessageBus>, Box<dyn std::error::Error>> {
    use hubbus::backend::nats::jetstream::JetStreamBus;
    use hubbus::backend::nats::{JetStreamOptions, NatsCoreBus, NatsOptions, WireLink};
    use hubbus::backend::redis::{RedisBus, RedisOptions, RedisTarget};
    use hubbus::transport::TurmoilTcp;

    Ok(match backend {
        Backend::Redis | Backend::RedisSentinel | Backend::RedisSharded => {
            let mut redis = RedisOptions::new(RedisTarget::parse(&backend.url())?);
            redis.connector = Arc::new(TurmoilTcp);
            Arc::new(RedisBus::start(options, redis)?)
        }
        Backend::NatsCore => {
            let nats = NatsOptions::new(backend.url());
            let link = WireLink::connect(nats.link.clone(), Arc::new(TurmoilTcp), seed).await?;
            Arc::new(NatsCoreBus::start(options, nats, Arc::new(link))?)
        }
        Backend::JetStream => {
            let mut nats = NatsOptions::new(backend.url());
            nats.jetstream = Some(JetStreamOptions {
                ack_wait: JETSTREAM_ACK_WAIT,
                ..JetStreamOptions::default()
            });
            let link = WireLink::connect(nats.link.clone(), Arc::new(TurmoilTcp), seed).await?;
            Arc::new(JetStreamBus::start(options, nats, Arc::new(link)).await?)
        }
    })
}

/// Records the node's health when the process starts and every change between connected and
/// not, sampled every [`HEALTH_SAMPLE`] of simulated time.
async fn watch_health(node: usize, bus: Arc<dyn MessageBus>, log: Log) {
    let mut connected = None;
    loop {
        let health = bus.health();
        if Some(health.is_connected()) != connected {
            connected = Some(health.is_connected());
            log.record(Event::Health {
                at: now(),
                node,
                connected: health.is_connected(),
                reason: health.reason.unwrap_or_default(),
            });
        }
        tokio::time::sleep(HEALTH_SAMPLE).await;
    }
}
