//! One simulated node: a bus of the scenario's backend over `TurmoilTcp`, a [`Hub`] on it with
//! local subscribers, and the publishing loop. The path users take (hub, bridge, bus, broker)
//! is the path simulated.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hubbus::{BusMetrics, BusOptions, Hub, IdGenerator, MessageBus, NodeId};

use super::event::{Event, Log, now};
use super::{Backend, CHANNEL, Scenario, SimClock};

/// How often a node samples its bus's health: often enough to see the short dip of a NATS
/// link that reconnects at once after a restart.
const HEALTH_SAMPLE: Duration = Duration::from_millis(1);

/// The JetStream nodes' `ack_wait`: short, so what a fault took on its way is redelivered
/// within the run.
pub(super) const JETSTREAM_ACK_WAIT: Duration = Duration::from_secs(2);

/// What a node needs besides the scenario.
pub(super) struct NodeSetup {
    pub(super) node: usize,
    pub(super) seed: u64,
    pub(super) scenario: Scenario,
    pub(super) log: Log,
    /// How many nodes have their local subscribers in place.
    pub(super) subscribed: Arc<AtomicUsize>,
}

/// Connect, subscribe every local subscriber, wait for the other nodes, publish, keep
/// receiving a while, close.
pub(super) async fn run_node(setup: NodeSetup) -> turmoil::Result {
    let NodeSetup {
        node,
        seed,
        scenario,
        log,
        subscribed,
    } = setup;
    let ids = IdGenerator::seeded(
        seed.wrapping_mul(1_000_003).wrapping_add(node as u64),
        Arc::new(SimClock),
    );
    let options = BusOptions {
        node_id: NodeId::new(format!("node-{node}"))?,
        ids,
        metrics: BusMetrics::unregistered("sim")?,
        ..BusOptions::default()
    };
    let bus = connect(scenario.backend, options, seed ^ node as u64).await?;
    while !bus.health().is_connected() {
        tokio::time::sleep(HEALTH_SAMPLE).await;
    }
    let watcher = tokio::spawn(watch_health(node, bus.clone(), log.clone()));
    let hub = Hub::new(bus.clone());

    let mut readers = Vec::new();
    for subscriber in 0..scenario.subscribers {
        let mut subscription = hub.subscribe(CHANNEL).await?;
        let log = log.clone();
        readers.push(tokio::spawn(async move {
            while let Some(delivery) = subscription.recv().await {
                let text = String::from_utf8_lossy(delivery.payload()).into_owned();
                if let Some((origin, seq)) = text
                    .split_once(':')
                    .and_then(|(o, s)| Some((o.parse::<usize>().ok()?, s.parse::<u32>().ok()?)))
                {
                    log.record(Event::Delivered {
                        at: now(),
                        node,
                        subscriber,
                        origin,
                        seq,
                        id: delivery.id().to_string(),
                        redelivered: delivery.redelivered(),
                    });
                }
                // Settles at-least-once deliveries; a no-op on at-most-once buses. A failure
                // means the bus lost the delivery's connection: the broker redelivers.
                if let Err(error) = delivery.ack().await {
                    tracing::debug!(node, subscriber, %error, "ack failed");
                }
            }
        }));
    }
    // Everyone subscribes before anyone publishes, so every message has every subscriber.
    subscribed.fetch_add(1, Ordering::SeqCst);
    while subscribed.load(Ordering::SeqCst) < scenario.nodes {
        tokio::time::sleep(HEALTH_SAMPLE).await;
    }

    for seq in 0..scenario.messages {
        let outcome = hub
            .publish(CHANNEL, format!("{node}:{seq}").into())
            .await
            .map(|receipt| receipt.id.to_string())
            .map_err(|error| error.to_string());
        log.record(Event::Published {
            at: now(),
            node,
            seq,
            outcome,
        });
        tokio::time::sleep(scenario.interval).await;
    }
    // Let the last messages (and redeliveries) arrive everywhere before closing.
    tokio::time::sleep(scenario.linger).await;
    watcher.abort();
    hub.close().await;
    for reader in readers {
        reader.await?;
    }
    bus.close().await;
    Ok(())
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
        Backend::Redis | Backend::RedisSentinel => {
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

/// Records every change of the node's health, sampled every [`HEALTH_SAMPLE`] of simulated
/// time.
async fn watch_health(node: usize, bus: Arc<dyn MessageBus>, log: Log) {
    let mut connected = true;
    loop {
        let health = bus.health();
        if health.is_connected() != connected {
            connected = health.is_connected();
            log.record(Event::Health {
                at: now(),
                node,
                connected,
                reason: health.reason.unwrap_or_default(),
            });
        }
        tokio::time::sleep(HEALTH_SAMPLE).await;
    }
}
