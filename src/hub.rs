//! [`Hub`]: local fan-out plus cross-node propagation through any [`MessageBus`].
//!
//! A hub is what a WebSocket server keeps per process. Its own clients subscribe to it; a
//! message published on it reaches its local subscribers at once, without a round trip to the
//! broker, and goes out through the bus to every other hub. What comes back through the bus with
//! this hub's own origin is the echo of its own publish and is skipped, so every local subscriber
//! sees each message exactly once.
//!
//! The hub keeps one bus subscription per channel however many local subscribers it has (a
//! *bridge*), opened by the first local subscriber and closed with the last.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backend::fan_out;
use crate::bus::{
    BusError, DEFAULT_SUBSCRIBER_QUEUE, Delivery, Message, MessageBus, PublishReceipt,
    Subscription, check_payload, validate_channel,
};
use crate::id::{IdGenerator, NodeId};
use crate::metrics::{BackendMetrics, BusMetrics};
use crate::queue::{ChannelName, Fanout};
use crate::sync;

const BACKEND: &str = "hub";

/// How a [`Hub`] is set up.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// Capacity of each local subscriber's queue before the oldest deliveries are dropped.
    pub subscriber_queue: usize,
    /// Source of the ids of messages published through the hub.
    pub ids: IdGenerator,
    /// Where local deliveries and drops are counted (`backend="hub"`); none when `None`.
    pub metrics: Option<BusMetrics>,
}

impl Default for HubOptions {
    fn default() -> Self {
        HubOptions {
            subscriber_queue: DEFAULT_SUBSCRIBER_QUEUE,
            ids: IdGenerator::from_entropy(),
            metrics: None,
        }
    }
}

/// One bus subscription shared by the local subscribers of a channel. Dropping the last
/// reference stops the task, which closes the bus subscription.
#[derive(Debug)]
struct Bridge {
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Bridge {
    fn take_task(&self) -> Option<JoinHandle<()>> {
        self.task.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(task) = self.take_task() {
            task.abort();
        }
    }
}

/// A channel's bridge as the hub's map holds it: a weak reference (the local subscribers own
/// the bridge) and a flag that turns true once its task has stopped for good.
///
/// A new bridge for the same channel is opened only after the old task has stopped: otherwise
/// a message could reach a new local subscriber through both the old and the new bridge.
#[derive(Debug)]
struct BridgeSlot {
    bridge: Weak<Bridge>,
    stopped: watch::Receiver<bool>,
}

/// Flips the slot's `stopped` flag when the bridge task ends, whether it returned or was
/// aborted (an aborted task drops its future, and this with it).
struct StoppedOnDrop(watch::Sender<bool>);

impl Drop for StoppedOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

#[derive(Debug)]
struct Local {
    fanout: sync::Arc<Fanout<Delivery>>,
    metrics: Option<BackendMetrics>,
}

impl Local {
    fn deliver(&self, delivery: &Delivery) {
        match &self.metrics {
            Some(metrics) => {
                fan_out(&self.fanout, metrics, delivery);
            }
            None => {
                // No metrics to count into; a closed hub reaches nobody.
                let _ = self.fanout.publish(&delivery.channel, delivery);
            }
        }
    }
}

/// Local fan-out plus propagation through an injected bus.
///
/// ```
/// # async fn demo() -> Result<(), hubbus::BusError> {
/// use std::sync::Arc;
/// use hubbus::{BusOptions, Hub, MemoryBroker, NodeId};
///
/// // Two hubs, as two processes would be, sharing one in-process broker.
/// let broker = MemoryBroker::new();
/// let node = |id: &str| BusOptions { node_id: NodeId::new(id).unwrap(), ..Default::default() };
/// let a = Hub::new(Arc::new(broker.connect(node("a"))));
/// let b = Hub::new(Arc::new(broker.connect(node("b"))));
///
/// let mut on_a = a.subscribe("room1").await?;
/// let mut on_b = b.subscribe("room1").await?;
/// a.publish("room1", "hi".into()).await?;
/// assert_eq!(on_a.recv().await.unwrap().payload().as_ref(), b"hi");
/// assert_eq!(on_b.recv().await.unwrap().origin().as_str(), "a");
/// # Ok(())
/// # }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Debug)]
pub struct Hub {
    bus: Arc<dyn MessageBus>,
    node: NodeId,
    local: Arc<Local>,
    bridges: tokio::sync::Mutex<BTreeMap<ChannelName, BridgeSlot>>,
    options: HubOptions,
}

impl std::fmt::Debug for dyn MessageBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageBus")
            .field("node_id", self.node_id())
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub on `bus` with default options.
    pub fn new(bus: Arc<dyn MessageBus>) -> Self {
        Self::with_options(bus, HubOptions::default())
    }

    /// A hub on `bus` with the given options.
    pub fn with_options(bus: Arc<dyn MessageBus>, options: HubOptions) -> Self {
        Hub {
            node: bus.node_id().clone(),
            local: Arc::new(Local {
                fanout: sync::Arc::new(Fanout::new()),
                metrics: options.metrics.as_ref().map(|m| m.backend(BACKEND)),
            }),
            bus,
            bridges: tokio::sync::Mutex::new(BTreeMap::new()),
            options,
        }
    }

    /// The bus this hub propagates through.
    pub fn bus(&self) -> &Arc<dyn MessageBus> {
        &self.bus
    }

    /// This hub's node id: the origin of what it publishes.
    pub fn node_id(&self) -> &NodeId {
        &self.node
    }

    /// Publishes to local subscribers at once, then to the other hubs through the bus.
    ///
    /// Invalid channels and oversized payloads are refused before anyone receives anything. If
    /// the bus then fails, local subscribers have the message and the error is returned.
    pub async fn publish(&self, channel: &str, payload: Bytes) -> Result<PublishReceipt, BusError> {
        let result = self.publish_local_then_bus(channel, payload).await;
        if let Some(metrics) = &self.local.metrics {
            match &result {
                Ok(_) => metrics.published.inc(),
                Err(_) => metrics.publish_errors.inc(),
            }
        }
        result
    }

    async fn publish_local_then_bus(
        &self,
        channel: &str,
        payload: Bytes,
    ) -> Result<PublishReceipt, BusError> {
        validate_channel(channel)?;
        check_payload(payload.len(), self.bus.max_payload())?;
        if self.local.fanout.is_closed() {
            return Err(BusError::Closed);
        }
        let id = self.options.ids.next_id();
        let delivery = Delivery {
            channel: channel.into(),
            payload: payload.clone(),
            id,
            origin: self.node.clone(),
            published_at_nanos: self.options.ids.now_nanos(),
            redelivered: false,
            headers: Arc::new([]),
            acker: None,
        };
        self.local.deliver(&delivery);
        self.bus
            .publish_message(Message::new(channel, payload).with_id(id))
            .await
    }

    /// Subscribes a local client to `channel`: it receives what this hub publishes and what
    /// other hubs publish through the bus, each message once.
    pub async fn subscribe(&self, channel: &str) -> Result<Subscription, BusError> {
        validate_channel(channel)?;
        let name: ChannelName = channel.into();
        let bridge = self.bridge(&name).await?;
        let (id, queue) = self
            .local
            .fanout
            .subscribe(&name, self.options.subscriber_queue)
            .map_err(|_| BusError::Closed)?;
        let fanout = self.local.fanout.clone();
        let key = name.clone();
        Ok(Subscription::new(
            name,
            queue,
            Box::new(move || {
                fanout.unsubscribe(&key, id);
                // The last local subscriber of a channel takes the bridge down with it.
                drop(bridge);
            }),
        ))
    }

    /// The bridge for `channel`, opening the bus subscription if there is none.
    async fn bridge(&self, channel: &ChannelName) -> Result<Arc<Bridge>, BusError> {
        let mut bridges = self.bridges.lock().await;
        if self.local.fanout.is_closed() {
            return Err(BusError::Closed);
        }
        if let Some(slot) = bridges.get(channel) {
            if let Some(bridge) = slot.bridge.upgrade() {
                return Ok(bridge);
            }
            // The last subscriber just left; let the old task finish before replacing it.
            let mut stopped = slot.stopped.clone();
            let _ = stopped.wait_for(|stopped| *stopped).await;
        }
        bridges.retain(|_, slot| slot.bridge.strong_count() > 0 || !*slot.stopped.borrow());
        let subscription = self.bus.subscribe(channel).await?;
        let (stopped_tx, stopped) = watch::channel(false);
        let guard = StoppedOnDrop(stopped_tx);
        let node = self.node.clone();
        let local = self.local.clone();
        let task = tokio::spawn(async move {
            let _guard = guard;
            forward(subscription, node, local).await;
        });
        let bridge = Arc::new(Bridge {
            task: Mutex::new(Some(task)),
        });
        bridges.insert(
            channel.clone(),
            BridgeSlot {
                bridge: Arc::downgrade(&bridge),
                stopped,
            },
        );
        Ok(bridge)
    }

    /// Ends every local subscription (after what is queued has been read) and returns once the
    /// bridges' tasks have exited. The bus itself stays open: the hub does not own it.
    pub async fn close(&self) {
        let mut bridges = self.bridges.lock().await;
        self.local.fanout.close();
        let tasks: Vec<_> = std::mem::take(&mut *bridges)
            .into_values()
            .filter_map(|slot| slot.bridge.upgrade()?.take_task())
            .collect();
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
    }
}

/// The bridge task: hands what the bus delivers to local subscribers, skipping this hub's echo.
async fn forward(mut subscription: Subscription, node: NodeId, local: Arc<Local>) {
    while let Some(delivery) = subscription.recv().await {
        if delivery.origin != node {
            local.deliver(&delivery);
        }
        // Handed over (or deliberately skipped): the broker need not deliver it again.
        let _ = delivery.ack().await;
    }
}
