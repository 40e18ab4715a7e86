//! [`Hub`]: local fan-out plus cross-node propagation through any [`MessageBus`].
//!
//! A hub is what a WebSocket server keeps per process. Its own clients subscribe to it, and it
//! keeps one bus subscription per channel however many local subscribers the channel has (a
//! *bridge*), opened by the first local subscriber and closed with the last.
//!
//! How the hub hands messages on follows the bus's [`Guarantee`]:
//!
//! - **At most once** (memory, Redis, NATS Core): a message published on the hub reaches its
//!   local subscribers at once, without a round trip to the broker, and goes out through the
//!   bus to every other hub; its echo coming back through the bus (this hub's own origin) is
//!   skipped, so every local subscriber sees each message once. A local subscriber that falls
//!   behind loses its oldest deliveries, counted as
//!   `<ns>_bus_dropped_total{backend="hub",reason="slow_consumer"}`; the hub never waits. What
//!   the bus drops before it reaches the hub (the channel's bridge fell behind a burst) is
//!   counted by the bus, and in the `dropped()` of every local subscriber of the channel, who
//!   all missed it.
//! - **At least once** (JetStream): a message published on the hub goes through the bus only
//!   and reaches the local subscribers like everyone else's, after the broker stored it. Each
//!   local subscriber gets its own copy of the bus's delivery, and the bus's delivery is
//!   acknowledged only when every local copy was; a copy declined or dropped unacked brings the
//!   message back. A full local queue makes the hub wait (so the bus stops pulling) up to the
//!   bus's `lag_timeout`; a subscriber still behind then is cut off, its subscription ending as
//!   [`crate::SubscriptionEnd::Lagged`] and counted in `<ns>_bus_lagged_total{backend="hub"}`.
//!   No subscriber misses an acknowledged message without being told.
//!
//! The hub counts into the bus's metrics under `backend="hub"` and takes its queue size and
//! lag timeout from the bus, unless [`HubOptions`] say otherwise.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{DEFAULT_LAG_TIMEOUT, Delivered, admit, deliver_acked, fan_out};
use crate::bus::{
    BusError, DEFAULT_SUBSCRIBER_QUEUE, Delivery, Guarantee, Message, MessageBus, PublishReceipt,
    Subscription, validate_channel,
};
use crate::id::{IdGenerator, NodeId};
use crate::metrics::{BackendMetrics, BusMetrics};
use crate::queue::{ChannelName, Fanout, SubscriptionEnd};
use crate::sync;
use crate::waiters::Waiters;
use crate::workers::{ChannelWorkers, NewWorker};

const BACKEND: &str = "hub";

/// How a [`Hub`] is set up. [`HubOptions::for_bus`] takes every setting from the bus (what
/// [`Hub::new`] does); override fields from there.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// Capacity of each local subscriber's queue.
    pub subscriber_queue: usize,
    /// On an at-least-once bus: how long a full local queue may hold back delivery before its
    /// subscriber is cut off as lagged.
    pub lag_timeout: Duration,
    /// Source of the ids of messages published through the hub.
    pub ids: IdGenerator,
    /// Where local deliveries and drops are counted (`backend="hub"`); none when `None`.
    pub metrics: Option<BusMetrics>,
}

impl HubOptions {
    /// The bus's settings: its queue size, lag timeout, id source and metrics.
    pub fn for_bus(bus: &dyn MessageBus) -> Self {
        let options = bus.options();
        HubOptions {
            subscriber_queue: options.subscriber_queue,
            lag_timeout: options.lag_timeout,
            ids: options.ids.clone(),
            metrics: Some(options.metrics.clone()),
        }
    }
}

impl Default for HubOptions {
    /// Standalone defaults: the default queue size and lag timeout, ids from the OS, no metrics.
    fn default() -> Self {
        HubOptions {
            subscriber_queue: DEFAULT_SUBSCRIBER_QUEUE,
            lag_timeout: DEFAULT_LAG_TIMEOUT,
            ids: IdGenerator::from_entropy(),
            metrics: None,
        }
    }
}

/// How far a channel's bridge got with its bus subscription.
#[derive(Debug)]
enum Opening {
    /// Not open yet; `subscribe` calls wait for it.
    Pending(Waiters<Result<(), OpenFailed>>),
    Open,
    /// The bus refused; the bridge is forgotten, and the next subscriber starts a new one.
    Failed(OpenFailed),
}

impl Default for Opening {
    fn default() -> Self {
        Opening::Pending(Waiters::default())
    }
}

/// What a bridge shares with its channel's subscribe calls.
type BridgeState = Mutex<Opening>;

/// State shared by the hub handle, its subscriptions and its bridge tasks.
#[derive(Debug)]
struct Local {
    bus: Arc<dyn MessageBus>,
    node: NodeId,
    guarantee: Guarantee,
    options: HubOptions,
    fanout: sync::Arc<Fanout<Delivery>>,
    /// The bus's metrics under `backend="hub"` (unregistered ones when the options have none).
    metrics: BackendMetrics,
    /// True when the options gave metrics, so publishes are counted.
    counted: bool,
    /// One bridge per channel with local subscribers.
    bridges: ChannelWorkers<BridgeState>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Local {
    /// Queues an at-most-once delivery for the channel's local subscribers.
    fn deliver_at_most_once(&self, delivery: &Delivery) {
        fan_out(&self.fanout, &self.metrics, delivery);
    }

    /// Hands one delivery of the bus to the local subscribers.
    async fn forward(&self, delivery: Delivery) {
        let parent = match (self.guarantee, delivery.settle_handle()) {
            (Guarantee::AtLeastOnce, Some(parent)) => parent,
            _ => {
                // At most once: what this hub published reached its subscribers already.
                if delivery.origin() != &self.node {
                    self.deliver_at_most_once(&delivery);
                }
                return;
            }
        };
        match deliver_acked(
            &self.fanout,
            &self.metrics,
            &delivery,
            parent,
            self.options.lag_timeout,
        )
        .await
        {
            Delivered::Queued => {}
            // The channel's last local subscriber just left, or the hub is closing (its clients
            // go first): either way the message stays with the broker, which delivers it again
            // after its ack wait (to the bus, which knows whether anyone still wants it, or to
            // this node's next run).
            Delivered::Nobody | Delivered::Closed => delivery.abandon(),
        }
    }

    /// Records how opening the bus subscription of a bridge went, waking the `subscribe` calls
    /// waiting for it; a failed bridge is forgotten, so the next subscribe tries again.
    fn opened(&self, bridge: &NewWorker<BridgeState>, outcome: Result<(), BusError>) {
        let mut opening = bridge
            .shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let next = match outcome {
            Ok(()) => Opening::Open,
            Err(error) => {
                self.bridges.forget(&bridge.channel, bridge.generation);
                Opening::Failed(OpenFailed(Arc::new(error)))
            }
        };
        if let Opening::Pending(waiters) = &mut *opening {
            waiters.wake(match &next {
                Opening::Failed(failed) => Err(failed.clone()),
                _ => Ok(()),
            });
        }
        *opening = next;
    }
}

/// Why a bridge's bus subscription could not be opened, shared by everyone who waited for it.
#[derive(Debug, Clone)]
struct OpenFailed(Arc<BusError>);

impl OpenFailed {
    /// The bus's error for one waiter: the same variant where it can be rebuilt (a `BusError`
    /// may carry a boxed source, which does not clone).
    fn error(&self) -> BusError {
        match self.0.as_ref() {
            BusError::NotConnected(reason) => BusError::NotConnected(reason.clone()),
            BusError::Closed => BusError::Closed,
            BusError::InvalidChannel { channel, reason } => BusError::InvalidChannel {
                channel: channel.clone(),
                reason,
            },
            BusError::Refused { channel, reason } => BusError::Refused {
                channel: channel.clone(),
                reason: reason.clone(),
            },
            BusError::Config { key, reason } => BusError::Config {
                key: key.clone(),
                reason: reason.clone(),
            },
            BusError::PublishTimeout(timeout) => BusError::PublishTimeout(*timeout),
            other => BusError::Backend(other.to_string().into()),
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
    local: Arc<Local>,
}

impl std::fmt::Debug for dyn MessageBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageBus")
            .field("node_id", self.node_id())
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub on `bus`, with the bus's settings and metrics ([`HubOptions::for_bus`]).
    pub fn new(bus: Arc<dyn MessageBus>) -> Self {
        let options = HubOptions::for_bus(bus.as_ref());
        Self::with_options(bus, options)
    }

    /// A hub on `bus` with the given options.
    pub fn with_options(bus: Arc<dyn MessageBus>, options: HubOptions) -> Self {
        let metrics = options
            .metrics
            .clone()
            .unwrap_or_else(|| bus.options().metrics.clone());
        Hub {
            local: Arc::new(Local {
                node: bus.node_id().clone(),
                guarantee: bus.guarantee(),
                metrics: metrics.backend(BACKEND),
                counted: options.metrics.is_some(),
                fanout: sync::Arc::new(Fanout::new()),
                bridges: ChannelWorkers::default(),
                cancel: CancellationToken::new(),
                tasks: TaskTracker::new(),
                bus,
                options,
            }),
        }
    }

    /// The bus this hub propagates through.
    pub fn bus(&self) -> &Arc<dyn MessageBus> {
        &self.local.bus
    }

    /// This hub's node id: the origin of what it publishes.
    pub fn node_id(&self) -> &NodeId {
        &self.local.node
    }

    /// Publishes to this hub's local subscribers and, through the bus, to every other hub.
    ///
    /// Invalid channels and oversized payloads are refused before anyone receives anything. On
    /// an at-most-once bus the local subscribers have the message at once, even if the bus then
    /// fails (the error is returned); on an at-least-once bus the message reaches everyone,
    /// local subscribers included, through the broker, so `Ok` means it was stored.
    pub async fn publish(&self, channel: &str, payload: Bytes) -> Result<PublishReceipt, BusError> {
        self.publish_message(Message::new(channel, payload)).await
    }

    /// Publishes `message` as [`Hub::publish`] does, with its id if it has one: an application
    /// that retries a failed publish with the id of the first attempt lets an at-least-once bus
    /// store it once (JetStream de-duplicates by id); on an at-most-once bus a retry is a new
    /// delivery, so subscribers may see the id twice. Headers are passed to the bus.
    pub async fn publish_message(&self, message: Message) -> Result<PublishReceipt, BusError> {
        let result = self.publish_now(message).await;
        if self.local.counted {
            match &result {
                Ok(_) => self.local.metrics.published.inc(),
                Err(_) => self.local.metrics.publish_errors.inc(),
            }
        }
        result
    }

    async fn publish_now(&self, message: Message) -> Result<PublishReceipt, BusError> {
        let local = &self.local;
        let id = message.id().unwrap_or_else(|| local.options.ids.next_id());
        let message = message.with_id(id);
        // The bus's own checks, before anyone (even locally) receives anything.
        admit(local.bus.options(), &message, local.fanout.is_closed())?;
        if local.guarantee == Guarantee::AtMostOnce {
            let delivery = crate::bus::DeliveredMessage {
                channel: message.channel().into(),
                payload: message.payload().clone(),
                id,
                origin: local.node.clone(),
                published_at_nanos: local.options.ids.now_nanos(),
                redelivered: false,
                headers: message.headers.clone(),
            }
            .into_delivery();
            local.deliver_at_most_once(&delivery);
        }
        local.bus.publish_message(message).await
    }

    /// Subscribes a local client to `channel`: it receives what this hub publishes and what
    /// other hubs publish through the bus, each message once (at least once on an
    /// at-least-once bus). Returns once the channel's bus subscription exists; fails with the
    /// bus's error when it cannot be opened.
    pub async fn subscribe(&self, channel: &str) -> Result<Subscription, BusError> {
        validate_channel(channel)?;
        let local = &self.local;
        let name: ChannelName = channel.into();
        let (subscription, bridge) = local.bridges.register(
            &local.fanout,
            &name,
            local.options.subscriber_queue,
            |new| {
                local.tasks.spawn(bridge(local.clone(), new));
            },
        )?;
        let opened = match &mut *bridge.state.lock().unwrap_or_else(|e| e.into_inner()) {
            Opening::Open => None,
            Opening::Pending(waiters) => Some(waiters.wait()),
            Opening::Failed(failed) => return Err(failed.error()),
        };
        match opened {
            None => Ok(subscription),
            Some(opened) => match opened.await {
                Ok(Ok(())) => Ok(subscription),
                Ok(Err(failed)) => Err(failed.error()),
                Err(_) => Err(BusError::Closed),
            },
        }
    }

    /// Ends every local subscription (after what is queued has been read) and returns once the
    /// bridges' tasks have exited. The bus itself stays open: the hub does not own it. On an
    /// at-least-once bus, what was not yet read stays unsettled and comes back after the
    /// broker's ack wait (to this node's next run, if the bus closes too).
    pub async fn close(&self) {
        let local = &self.local;
        local.bridges.close(|| {
            local.fanout.close();
        });
        local.cancel.cancel();
        local.tasks.close();
        local.tasks.wait().await;
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.local.fanout.close();
        self.local.cancel.cancel();
    }
}

/// The bridge task of a channel: opens the bus subscription, then hands every delivery to the
/// local subscribers until the channel has none left or the hub closes.
async fn bridge(local: Arc<Local>, bridge: NewWorker<BridgeState>) {
    let channel = &bridge.channel;
    let opened = tokio::select! {
        biased;
        _ = local.cancel.cancelled() => Err(BusError::Closed),
        opened = local.bus.subscribe(channel) => opened,
    };
    let mut subscription = match opened {
        Ok(subscription) => {
            local.opened(&bridge, Ok(()));
            subscription
        }
        Err(error) => {
            local.opened(&bridge, Err(error));
            return;
        }
    };
    // What the bus dropped before it reached the bridge, every local subscriber missed.
    let mut dropped_upstream = 0;
    loop {
        tokio::select! {
            biased;
            _ = local.cancel.cancelled() => break,
            _ = bridge.shared.recheck.notified() => {
                if local.bridges.retire(&local.fanout, channel, bridge.generation) {
                    break;
                }
            }
            delivery = subscription.recv() => match delivery {
                Some(delivery) => {
                    let dropped = subscription.dropped();
                    if dropped > dropped_upstream {
                        for queue in local.fanout.queues(channel) {
                            queue.count_dropped(dropped - dropped_upstream);
                        }
                        dropped_upstream = dropped;
                    }
                    local.forward(delivery).await;
                }
                None => {
                    local.bridges.forget(channel, bridge.generation);
                    end_local(&local, channel, subscription.end());
                    break;
                }
            },
        }
    }
}

/// The bus ended the channel's subscription: end the local ones the same way, so a local
/// subscriber learns that it lagged (or that the bus closed) rather than waiting forever.
fn end_local(local: &Local, channel: &ChannelName, end: Option<SubscriptionEnd>) {
    let end = end.unwrap_or(SubscriptionEnd::Closed);
    if end != SubscriptionEnd::Closed {
        tracing::warn!(%channel, ?end, "the bus ended a hub bridge; ending its local subscriptions the same way");
    }
    // What the local subscribers already have stays readable; then they see why it ended.
    for queue in local.fanout.queues(channel) {
        queue.close_with(end);
    }
}
