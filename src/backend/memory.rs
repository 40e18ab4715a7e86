//! The in-process bus: several nodes in one process, tests, and the embedded default.
//!
//! A [`MemoryBroker`] plays the part of the broker; each [`MemoryBus`] connected to it is one
//! node with its own subscriptions, node id and metrics. A publish is fanned out under the
//! broker's lock, so every live subscriber of every node receives every message published after
//! it subscribed, in one global publish order. Each subscriber's queue is bounded: a slow
//! subscriber loses its oldest deliveries (counted as
//! `<ns>_bus_dropped_total{backend="memory",reason="slow_consumer"}`), and the publisher never
//! waits for it. A publish still gives the runtime back once a reader falls behind (its queue
//! half full), so that a publish loop does not starve subscribers on its own thread.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;

use bytes::Bytes;

use crate::backend::{BusOptions, admit_parts, count_publish};
use crate::bus::{
    BusError, DeliveredMessage, Delivery, Health, Message, MessageBus, PublishReceipt,
    Subscription, validate_channel,
};
use crate::id::MessageId;
use crate::metrics::BackendMetrics;
use crate::queue::{ChannelName, Fanout};
use crate::sync;

const BACKEND: &str = "memory";

/// One connected node as the broker sees it.
#[derive(Debug)]
struct Node {
    fanout: sync::Arc<Fanout<Delivery>>,
    metrics: BackendMetrics,
}

/// The shared medium of in-process buses: connect one [`MemoryBus`] per node.
///
/// Cloning gives another handle to the same broker.
///
/// ```
/// # async fn demo() -> Result<(), hubbus::BusError> {
/// use hubbus::{BusOptions, MemoryBroker, MessageBus, NodeId};
///
/// let broker = MemoryBroker::new();
/// let a = broker.connect(BusOptions { node_id: NodeId::new("a")?, ..Default::default() });
/// let b = broker.connect(BusOptions { node_id: NodeId::new("b")?, ..Default::default() });
/// let mut inbox = b.subscribe("room1").await?;
/// a.publish("room1", "hi".into()).await?;
/// assert_eq!(inbox.recv().await.unwrap().origin().as_str(), "a");
/// # Ok(())
/// # }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryBroker {
    nodes: Arc<std::sync::Mutex<BTreeMap<u64, Node>>>,
    next_node: Arc<std::sync::atomic::AtomicU64>,
}

impl MemoryBroker {
    /// A broker with no nodes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Connects a new node.
    pub fn connect(&self, options: BusOptions) -> MemoryBus {
        let key = self.next_node.fetch_add(1, Ordering::Relaxed);
        let fanout = sync::Arc::new(Fanout::new());
        let metrics = options.metrics.backend(BACKEND);
        lock_nodes(&self.nodes).insert(
            key,
            Node {
                fanout: fanout.clone(),
                metrics: metrics.clone(),
            },
        );
        MemoryBus {
            broker: self.clone(),
            key,
            fanout,
            metrics,
            options,
            closed: AtomicBool::new(false),
            backlogged: AtomicBool::new(false),
        }
    }

    /// Queues the delivery `make` builds for every subscriber of `channel` on every node. The
    /// delivery is built once, and only if some node has a subscriber; it shares the channel
    /// name the registry holds. True when some subscriber's queue is at least half full
    /// afterwards (its reader is falling behind).
    fn fan_out(&self, channel: &str, make: impl FnOnce(ChannelName) -> Delivery) -> bool {
        let nodes = lock_nodes(&self.nodes);
        let mut make = Some(make);
        let mut delivery: Option<Delivery> = None;
        let mut backlogged = false;
        for node in nodes.values() {
            // A node closing concurrently refuses the delivery; that is the close winning.
            let report = node
                .fanout
                .publish_with(channel, |name| {
                    delivery.get_or_insert_with(|| (make.take().expect("built once"))(name.clone()))
                })
                .unwrap_or_default();
            backlogged |= report.backlogged;
            node.metrics.received.inc_by(report.delivered as u64);
            if report.dropped > 0 {
                node.metrics
                    .dropped_for_slow_subscribers(channel, report.dropped as u64);
            }
        }
        backlogged
    }

    fn disconnect(&self, key: u64) {
        lock_nodes(&self.nodes).remove(&key);
    }
}

fn lock_nodes(
    nodes: &std::sync::Mutex<BTreeMap<u64, Node>>,
) -> std::sync::MutexGuard<'_, BTreeMap<u64, Node>> {
    // Inserts and removes are single map operations: the map is consistent after a panic.
    nodes.lock().unwrap_or_else(|e| e.into_inner())
}

/// One node on a [`MemoryBroker`].
#[derive(Debug)]
pub struct MemoryBus {
    broker: MemoryBroker,
    key: u64,
    fanout: sync::Arc<Fanout<Delivery>>,
    metrics: BackendMetrics,
    options: BusOptions,
    closed: AtomicBool,
    /// Set by a publish that left some subscriber's queue at least half full, cleared by one
    /// that did not: while set, publishes spend the task's cooperative budget.
    backlogged: AtomicBool,
}

impl MemoryBus {
    /// A node on a broker of its own, with default options: the single-process bus.
    pub fn new() -> Self {
        MemoryBroker::new().connect(BusOptions::default())
    }

    /// The broker this node is connected to (connect more nodes to it).
    pub fn broker(&self) -> &MemoryBroker {
        &self.broker
    }
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBus {
    fn publish_now(
        &self,
        channel: &str,
        payload: Bytes,
        id: Option<MessageId>,
        headers: Vec<(String, String)>,
    ) -> Result<PublishReceipt, BusError> {
        let closed = self.closed.load(Ordering::Acquire);
        let (id, now) = admit_parts(&self.options, channel, payload.len(), &headers, id, closed)?;
        let origin = &self.options.node_id;
        let backlogged = self.broker.fan_out(channel, |channel| {
            DeliveredMessage {
                channel,
                payload,
                id,
                origin: origin.clone(),
                published_at_nanos: now,
                redelivered: false,
                headers,
            }
            .into_delivery()
        });
        // Only a change is written, so that publishers on several threads do not contend for
        // the flag while readers keep up.
        if backlogged != self.backlogged.load(Ordering::Relaxed) {
            self.backlogged.store(backlogged, Ordering::Relaxed);
        }
        Ok(PublishReceipt { id, sequence: None })
    }

    /// A publish never waits, so a loop of them would never give the runtime back, and a
    /// subscriber on the publisher's thread would read only the last queue-full. Once a
    /// publish left some subscriber's queue half full, the next ones spend the task's
    /// cooperative budget before they publish (tokio yields once it is spent, every 128
    /// operations), so that reader gets to run well before its queue overflows. While every
    /// reader keeps up nothing is spent: a yield hands the publisher to the other worker to
    /// steal, and that migration, once per 128 publishes, cost a third of the rate.
    async fn cooperate(&self) {
        if self.backlogged.load(Ordering::Relaxed) {
            tokio::task::consume_budget().await;
        }
    }
}

#[async_trait]
impl MessageBus for MemoryBus {
    async fn publish(&self, channel: &str, payload: Bytes) -> Result<PublishReceipt, BusError> {
        self.cooperate().await;
        let result = self.publish_now(channel, payload, None, Vec::new());
        count_publish(&self.metrics, &result);
        result
    }

    async fn publish_message(&self, message: Message) -> Result<PublishReceipt, BusError> {
        self.cooperate().await;
        let result = self.publish_now(
            &message.channel,
            message.payload,
            message.id,
            message.headers,
        );
        count_publish(&self.metrics, &result);
        result
    }

    async fn subscribe(&self, channel: &str) -> Result<Subscription, BusError> {
        validate_channel(channel)?;
        let channel: ChannelName = channel.into();
        let (id, queue) = self
            .fanout
            .subscribe(&channel, self.options.subscriber_queue)
            .map_err(|_| BusError::Closed)?;
        let fanout = self.fanout.clone();
        let name = channel.clone();
        Ok(Subscription::new(
            channel,
            queue,
            Box::new(move || {
                fanout.unsubscribe(&name, id);
            }),
        ))
    }

    fn health(&self) -> Health {
        if self.closed.load(Ordering::Acquire) {
            Health::down("the bus is closed")
        } else {
            Health::connected()
        }
    }

    fn options(&self) -> &BusOptions {
        &self.options
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.broker.disconnect(self.key);
        self.fanout.close();
    }
}

impl Drop for MemoryBus {
    fn drop(&mut self) {
        self.broker.disconnect(self.key);
        self.fanout.close();
    }
}
