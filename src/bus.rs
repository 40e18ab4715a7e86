//! The one seam a hub depends on: [`MessageBus`], what it hands out ([`Subscription`],
//! [`Delivery`], [`PublishReceipt`]) and what it can fail with ([`BusError`]).
//!
//! Every backend implements the same trait and keeps the same rules for channels and payload
//! sizes, so a hub can move from the in-process bus to Redis or NATS by changing one URL. What a
//! backend *promises* about delivery differs (at-most-once, at-least-once); `docs/bus_spec.md`
//! states each promise and the conformance suite in `tests/` checks it.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures_core::Stream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::backend::BusOptions;
use crate::id::{MessageId, NodeId};
use crate::queue::{Pop, SubscriberQueue, SubscriptionEnd};
use crate::settle::{CopyAck, Settle};
use crate::sync::Arc as SyncArc;

/// The longest channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;

/// The payload limit used when the configuration does not set one: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// How many deliveries a subscriber may fall behind before the oldest are dropped.
pub const DEFAULT_SUBSCRIBER_QUEUE: usize = 1024;

/// Everything a bus operation can fail with.
///
/// Variants are stable and matchable: callers decide on the variant, never on the text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The broker did not confirm the publish within the configured timeout (the plan's
    /// `ErrPublishTimeout`). The message may or may not have been delivered.
    #[error("publish timed out after {0:?}; the broker did not confirm in time")]
    PublishTimeout(Duration),
    /// There is no usable connection to the broker right now; the bus keeps reconnecting.
    #[error("not connected to the broker: {0}")]
    NotConnected(String),
    /// The bus (or this subscription) was closed; open a new one to continue.
    #[error("the bus is closed")]
    Closed,
    /// The channel name breaks the channel rule (see [`validate_channel`]).
    #[error("invalid channel {channel:?}: {reason}")]
    InvalidChannel {
        /// The rejected channel name (lossily decoded if it was not UTF-8).
        channel: String,
        /// Which part of the rule it breaks.
        reason: &'static str,
    },
    /// The broker refused this subscription (permissions, a server limit); other channels are
    /// not affected. Retrying only helps once an operator has changed something.
    #[error("the broker refused channel {channel:?}: {reason}")]
    Refused {
        /// The refused channel.
        channel: String,
        /// What the broker said.
        reason: String,
    },
    /// A message header cannot be framed (a key over 65 535 bytes, more than 65 535 headers);
    /// nothing was sent.
    #[error("invalid header {key:?}: {reason}")]
    InvalidHeader {
        /// The offending header key (cut to 64 characters).
        key: String,
        /// Which limit it breaks.
        reason: &'static str,
    },
    /// The payload is larger than the configured limit; nothing was sent.
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// Size of the rejected payload.
        size: usize,
        /// The configured limit (`max_payload`).
        limit: usize,
    },
    /// The configuration is wrong; `key` names the setting to fix.
    #[error("invalid configuration at `{key}`: {reason}")]
    Config {
        /// Dotted path of the offending setting, for example `redis.publish_timeout`.
        key: String,
        /// What is wrong with it and what is accepted instead.
        reason: String,
    },
    /// The backend failed in a way not covered above; the source says how.
    #[error("backend error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl From<crate::id::InvalidNodeId> for BusError {
    fn from(error: crate::id::InvalidNodeId) -> Self {
        BusError::config("node_id", error.to_string())
    }
}

impl BusError {
    /// Builds a [`BusError::Config`].
    pub fn config(key: impl Into<String>, reason: impl Into<String>) -> Self {
        BusError::Config {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Checks a channel name against the one rule every backend shares.
///
/// A channel is 1 to 255 bytes of `[A-Za-z0-9_:.-]` with no empty `.`-separated token (so no
/// leading, trailing or doubled dot). The rule is the intersection of what Redis channels and
/// NATS subjects accept, so a hub can switch backends without renaming anything.
///
/// ```
/// use hubbus::{validate_channel, BusError};
///
/// assert!(validate_channel("room1").is_ok());
/// assert!(validate_channel("chat.room-1:members").is_ok());
/// assert!(matches!(validate_channel("a..b"), Err(BusError::InvalidChannel { .. })));
/// assert!(matches!(validate_channel("a b"), Err(BusError::InvalidChannel { .. })));
/// ```
pub fn validate_channel(channel: &str) -> Result<(), BusError> {
    let reject = |reason| {
        Err(BusError::InvalidChannel {
            channel: channel.to_owned(),
            reason,
        })
    };
    if channel.is_empty() {
        return reject("a channel must not be empty");
    }
    if channel.len() > MAX_CHANNEL_LEN {
        return reject("a channel is at most 255 bytes long");
    }
    // One pass over the bytes (this runs on every publish); a character outside the set is
    // reported before an empty token, wherever each occurs.
    let mut empty_token = false;
    let mut after_dot = true;
    for b in channel.bytes() {
        if b == b'.' {
            empty_token |= after_dot;
            after_dot = true;
        } else if b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-') {
            after_dot = false;
        } else {
            return reject("only A-Z, a-z, 0-9 and _ : . - are allowed");
        }
    }
    if empty_token || after_dot {
        return reject("a channel must not have an empty `.`-separated token");
    }
    Ok(())
}

/// Checks a payload size against a limit, before any I/O happens.
pub(crate) fn check_payload(size: usize, limit: usize) -> Result<(), BusError> {
    if size > limit {
        Err(BusError::PayloadTooLarge { size, limit })
    } else {
        Ok(())
    }
}

/// A message to publish: channel, payload, and optionally its id and headers.
///
/// Most callers use [`MessageBus::publish`]. Build a `Message` when the id matters: a publisher
/// that retries with the same id lets an at-least-once backend discard the duplicate, and a hub
/// that delivers locally before the broker confirms needs the id up front.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub(crate) channel: String,
    pub(crate) payload: Bytes,
    pub(crate) id: Option<MessageId>,
    pub(crate) headers: Vec<(String, String)>,
}

impl Message {
    /// A message for `channel` carrying `payload`; the bus assigns the id.
    pub fn new(channel: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Message {
            channel: channel.into(),
            payload: payload.into(),
            id: None,
            headers: Vec::new(),
        }
    }

    /// Uses `id` instead of a fresh one (for retries and for local-first delivery).
    pub fn with_id(mut self, id: MessageId) -> Self {
        self.id = Some(id);
        self
    }

    /// Adds a header; headers travel with the message and come back on [`Delivery::headers`].
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((key.into(), value.into()));
        self
    }

    /// The channel this message is for.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The id set with [`Message::with_id`], if any.
    pub fn id(&self) -> Option<MessageId> {
        self.id
    }
}

/// What a successful publish tells the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishReceipt {
    /// The id the message travels with (the one given, or the one the bus assigned).
    pub id: MessageId,
    /// The broker's sequence number for the message, where the broker has one (JetStream).
    pub sequence: Option<u64>,
}

/// How a bus sees its connection to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HealthState {
    /// Publishing and receiving work.
    Connected,
    /// Working, but impaired (for example one of several nodes is unreachable).
    Degraded,
    /// Not working; the reason says why. A closed bus is down.
    Down,
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HealthState::Connected => "connected",
            HealthState::Degraded => "degraded",
            HealthState::Down => "down",
        })
    }
}

/// The answer of [`MessageBus::health`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Connected, degraded or down.
    pub state: HealthState,
    /// Why the bus is degraded or down; `None` when connected.
    pub reason: Option<String>,
}

impl Health {
    /// A healthy bus.
    pub fn connected() -> Self {
        Health {
            state: HealthState::Connected,
            reason: None,
        }
    }

    /// A bus that cannot work, and why.
    pub fn down(reason: impl Into<String>) -> Self {
        Health {
            state: HealthState::Down,
            reason: Some(reason.into()),
        }
    }

    /// A bus that works but is impaired, and why.
    pub fn degraded(reason: impl Into<String>) -> Self {
        Health {
            state: HealthState::Degraded,
            reason: Some(reason.into()),
        }
    }

    /// True when connected (not degraded, not down).
    pub fn is_connected(&self) -> bool {
        self.state == HealthState::Connected
    }
}

/// What a backend promises about delivery, as [`MessageBus::guarantee`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Guarantee {
    /// A message reaches each subscriber at most once; what a subscriber cannot take in time is
    /// dropped (oldest first) and counted. [`Delivery::ack`] and [`Delivery::nak`] are no-ops.
    AtMostOnce,
    /// Every acknowledged publish reaches every subscriber at least once: a delivery must be
    /// settled with [`Delivery::ack`] (or [`Delivery::nak`]), a full subscriber queue makes the
    /// bus wait (up to `lag_timeout`, then the subscriber ends as
    /// [`SubscriptionEnd::Lagged`]) instead of dropping, and what is not settled comes back.
    AtLeastOnce,
}

/// One message as a subscriber receives it.
///
/// Every subscriber's copy of one message shares the message itself (one allocation, one
/// reference count), so handing a message to many subscribers costs one reference-count
/// increment per copy, and the counters of what copies share (channel name, origin, headers)
/// are not touched per copy.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub(crate) message: Arc<DeliveredMessage>,
    /// This subscriber's copy of the message, on at-least-once backends.
    pub(crate) acker: Option<Arc<CopyAck>>,
}

/// The part of a [`Delivery`] every copy of the message shares.
#[derive(Debug)]
pub(crate) struct DeliveredMessage {
    pub(crate) channel: Arc<str>,
    pub(crate) payload: Bytes,
    pub(crate) id: MessageId,
    pub(crate) origin: NodeId,
    pub(crate) published_at_nanos: u64,
    pub(crate) redelivered: bool,
    /// Empty (no allocation) for the many messages without headers.
    pub(crate) headers: Vec<(String, String)>,
}

impl DeliveredMessage {
    /// The first copy of this message, without an acker.
    pub(crate) fn into_delivery(self) -> Delivery {
        Delivery {
            message: Arc::new(self),
            acker: None,
        }
    }
}

impl Delivery {
    /// This delivery as the copy `acker` of its message.
    pub(crate) fn with_acker(&self, acker: Arc<CopyAck>) -> Delivery {
        Delivery {
            message: self.message.clone(),
            acker: Some(acker),
        }
    }

    /// The settlement of this delivery, for handing it on as several copies (the hub).
    pub(crate) fn settle_handle(&self) -> Option<Arc<dyn Settle>> {
        self.acker.clone().map(|acker| acker as Arc<dyn Settle>)
    }

    /// Gives this copy up without declining the message (its subscriber was cut off as lagged,
    /// or left before it got it).
    pub(crate) async fn release(&self) -> Result<(), BusError> {
        match &self.acker {
            Some(acker) => acker.release().await,
            None => Ok(()),
        }
    }

    /// Leaves this copy unsettled: its subscription ended before it was read.
    pub(crate) fn abandon(&self) {
        use crate::settle::Settle as _;
        if let Some(acker) = &self.acker {
            acker.abandon();
        }
    }

    /// The channel the message was published to.
    pub fn channel(&self) -> &str {
        &self.message.channel
    }

    /// The payload, as published.
    pub fn payload(&self) -> &Bytes {
        &self.message.payload
    }

    /// The message id (time-ordered, unique per message, kept across redeliveries).
    pub fn id(&self) -> MessageId {
        self.message.id
    }

    /// The node that published the message; [`NodeId::external`] for a message a publisher
    /// outside the bus put on the broker (see [`crate::ForeignMessages`]).
    pub fn origin(&self) -> &NodeId {
        &self.message.origin
    }

    /// When the publisher sent the message, by the publisher's clock.
    pub fn published_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.message.published_at_nanos)
    }

    /// When the publisher sent the message, in nanoseconds since the Unix epoch.
    pub fn published_at_unix_nanos(&self) -> u64 {
        self.message.published_at_nanos
    }

    /// True when the broker delivered this message before (at-least-once backends only).
    pub fn redelivered(&self) -> bool {
        self.message.redelivered
    }

    /// The headers the publisher attached, in the order given (on NATS grouped by name in
    /// name order, the values of one name in the order given: the NATS client keeps headers
    /// in a map).
    pub fn headers(&self) -> &[(String, String)] {
        &self.message.headers
    }

    /// Confirms the message was handled. On at-least-once backends the broker will not deliver
    /// it again once every local copy of it was acknowledged; elsewhere this does nothing.
    ///
    /// The first `ack` or `nak` of a delivery (or of any of its clones) settles it; later calls
    /// are no-ops that succeed, except that an `ack` made while an earlier one is still in
    /// flight waits for it and tries again if it failed. On an at-least-once backend a delivery
    /// dropped without `ack` or `nak` is declined, so the broker delivers it again.
    pub async fn ack(&self) -> Result<(), BusError> {
        match &self.acker {
            Some(acker) => acker.ack().await,
            None => Ok(()),
        }
    }

    /// Declines the message. On at-least-once backends the broker delivers it again after
    /// `delay` (or at once); elsewhere this does nothing.
    pub async fn nak(&self, delay: Option<Duration>) -> Result<(), BusError> {
        match &self.acker {
            Some(acker) => acker.nak(delay).await,
            None => Ok(()),
        }
    }
}

/// The backend's side of a subscription: what to undo when the subscriber goes away.
pub(crate) trait Detach: Send {
    /// Unregisters the subscriber at once; must not block or await.
    fn detach(self: Box<Self>);
}

impl<F: FnOnce() + Send> Detach for F {
    fn detach(self: Box<Self>) {
        (*self)()
    }
}

/// A stream of [`Delivery`] for one channel.
///
/// The queue behind it is bounded (`subscriber_queue`). What happens when it is full depends on
/// the backend's [`Guarantee`]: at most once, the oldest deliveries are dropped, the bus never
/// waits, and [`Subscription::dropped`] says how many were lost; at least once, the bus waits up
/// to `lag_timeout` for room and then cuts the subscriber off, ending the stream with
/// [`SubscriptionEnd::Lagged`]. The stream ends once the subscription or the bus is closed (and
/// what was already queued has been read), or the subscriber lagged; [`Subscription::end`] says
/// which.
///
/// [`Subscription::close`] unsubscribes and returns after any background task of this
/// subscription has exited. Dropping the subscription unsubscribes too, without waiting. On an
/// at-least-once backend, deliveries still queued when the subscription ends stay unsettled and
/// come back after the broker's ack wait.
pub struct Subscription {
    channel: Arc<str>,
    queue: SyncArc<SubscriberQueue<Delivery>>,
    detach: Option<Box<dyn Detach>>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.channel)
            .field("dropped", &self.queue.dropped())
            .finish_non_exhaustive()
    }
}

impl Subscription {
    pub(crate) fn new(
        channel: Arc<str>,
        queue: SyncArc<SubscriberQueue<Delivery>>,
        detach: Box<dyn Detach>,
    ) -> Self {
        Subscription {
            channel,
            queue,
            detach: Some(detach),
        }
    }

    /// The channel this subscription receives.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// How many deliveries were dropped because this subscriber fell behind.
    pub fn dropped(&self) -> u64 {
        self.queue.dropped()
    }

    /// Why the subscription ended, once it has: `None` while deliveries may still arrive.
    /// [`SubscriptionEnd::Lagged`] means the subscriber was cut off for falling behind.
    pub fn end(&self) -> Option<SubscriptionEnd> {
        self.queue.end()
    }

    /// Receives the next delivery; `None` once the subscription has ended.
    pub async fn recv(&mut self) -> Option<Delivery> {
        std::future::poll_fn(|cx| self.queue.poll_pop(cx)).await
    }

    /// Takes the next delivery if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        match self.queue.try_pop() {
            Pop::Item(item) => Some(item),
            Pop::Empty | Pop::Closed => None,
        }
    }

    /// Unsubscribes; when this returns the backend no longer routes anything to this
    /// subscription and any work it did for it has stopped.
    pub async fn close(mut self) {
        self.detach_now();
    }

    fn detach_now(&mut self) {
        // Nobody will read what is queued: on an at-least-once backend it stays unsettled, so
        // the broker delivers it again after its ack wait (also to this node's next run).
        for delivery in self.queue.close_and_drain() {
            delivery.abandon();
        }
        if let Some(detach) = self.detach.take() {
            detach.detach();
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.detach_now();
    }
}

impl Stream for Subscription {
    type Item = Delivery;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.queue.poll_pop(cx)
    }
}

/// A running handler started by [`subscribe_with`]; closing it stops the handler task.
#[derive(Debug)]
pub struct CloseHandle {
    stop: CancellationToken,
    task: Option<AbortOnDropHandle<()>>,
}

impl CloseHandle {
    /// Stops the handler and returns once its task has exited (the plan's `CloseFunc`). A
    /// handler call in progress is not interrupted; the task stops after it.
    pub async fn close(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take()
            && let Err(error) = task.await
            && error.is_panic()
        {
            tracing::error!(%error, "a subscribe_with handler panicked");
        }
    }
}

/// Subscribes to `channel` and calls `handler` for each delivery, in order, on a task of its own.
///
/// The handler-style convenience on top of [`MessageBus::subscribe`] (the plan's `Handler`):
/// when the handler returns `Ok` the delivery is acknowledged, when it returns `Err` it is
/// declined (`nak`), so an at-least-once backend delivers it again; the error is logged. The
/// task ends when the subscription ends or when the returned [`CloseHandle`] is closed or
/// dropped.
///
/// ```
/// # async fn demo() -> Result<(), hubbus::BusError> {
/// use std::sync::Arc;
/// use hubbus::{subscribe_with, MemoryBus, MessageBus};
///
/// let bus: Arc<dyn MessageBus> = Arc::new(MemoryBus::new());
/// let handle = subscribe_with(bus.as_ref(), "room1", |delivery| async move {
///     println!("{:?}", delivery.payload());
///     Ok::<(), std::convert::Infallible>(())
/// })
/// .await?;
/// bus.publish("room1", "hello".into()).await?;
/// handle.close().await;
/// # Ok(())
/// # }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
pub async fn subscribe_with<B, F, Fut, E>(
    bus: &B,
    channel: &str,
    mut handler: F,
) -> Result<CloseHandle, BusError>
where
    B: MessageBus + ?Sized,
    F: FnMut(Delivery) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), E>> + Send,
    E: fmt::Display + Send,
{
    let mut subscription = bus.subscribe(channel).await?;
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        loop {
            let delivery = tokio::select! {
                biased;
                _ = stopped.cancelled() => break,
                next = subscription.recv() => match next {
                    Some(delivery) => delivery,
                    None => break,
                },
            };
            let settle = delivery.clone();
            let settled = match handler(delivery).await {
                Ok(()) => settle.ack().await,
                Err(error) => {
                    tracing::warn!(channel = %settle.channel(), id = %settle.id(), %error,
                        "handler failed; the delivery is declined");
                    settle.nak(None).await
                }
            };
            if let Err(error) = settled {
                tracing::warn!(channel = %settle.channel(), id = %settle.id(), %error,
                    "settling a handled delivery failed; it may come again");
            }
        }
        if let Some(SubscriptionEnd::Lagged { dropped }) = subscription.end() {
            tracing::warn!(channel = %subscription.channel(), dropped,
                "a subscribe_with handler fell behind and was cut off");
        }
        subscription.close().await;
    });
    Ok(CloseHandle {
        stop,
        task: Some(AbortOnDropHandle::new(task)),
    })
}

/// The bus a hub publishes to and subscribes from.
///
/// Object safe: hubs hold an `Arc<dyn MessageBus>` and never know which backend is behind it.
///
/// ```
/// # async fn demo() -> Result<(), hubbus::BusError> {
/// use std::sync::Arc;
/// use hubbus::{MemoryBus, MessageBus};
///
/// let bus: Arc<dyn MessageBus> = Arc::new(MemoryBus::new());
/// let mut room = bus.subscribe("room1").await?;
/// let receipt = bus.publish("room1", "hello".into()).await?;
/// let delivery = room.recv().await.expect("delivered");
/// assert_eq!(delivery.payload().as_ref(), b"hello");
/// assert_eq!(delivery.id(), receipt.id);
/// bus.close().await;
/// # Ok(())
/// # }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
#[async_trait]
pub trait MessageBus: Send + Sync + 'static {
    /// Publishes `message`; what `Ok` means depends on the backend (see `docs/bus_spec.md`).
    ///
    /// Fails with [`BusError::InvalidChannel`] or [`BusError::PayloadTooLarge`] before any I/O,
    /// with [`BusError::Closed`] after [`MessageBus::close`], and with
    /// [`BusError::PublishTimeout`] when the broker does not confirm in time.
    async fn publish_message(&self, message: Message) -> Result<PublishReceipt, BusError>;

    /// Publishes `payload` to `channel` with a fresh id.
    async fn publish(&self, channel: &str, payload: Bytes) -> Result<PublishReceipt, BusError> {
        self.publish_message(Message::new(channel, payload)).await
    }

    /// Starts receiving `channel`. At-most-once backends deliver only what is published after
    /// this returns.
    async fn subscribe(&self, channel: &str) -> Result<Subscription, BusError>;

    /// Connected, degraded or down, with the reason.
    fn health(&self) -> Health;

    /// Waits until the bus has connected to its broker once (and, where the backend needs more,
    /// is ready to subscribe). Returns at once for backends without a broker. Callers bound it
    /// with a timeout; [`crate::connect`] does.
    async fn wait_connected(&self) {}

    /// The settings the bus runs with: node id, limits, id source, metrics.
    fn options(&self) -> &BusOptions;

    /// What the bus promises about delivery; [`crate::Hub`] chooses its policies by it.
    fn guarantee(&self) -> Guarantee {
        Guarantee::AtMostOnce
    }

    /// The id this bus stamps on what it publishes (the `origin` of its deliveries).
    fn node_id(&self) -> &NodeId {
        &self.options().node_id
    }

    /// The largest payload [`MessageBus::publish`] accepts, in bytes.
    fn max_payload(&self) -> usize {
        self.options().max_payload
    }

    /// Stops accepting publishes and subscriptions, ends every subscription (after what is
    /// queued has been read) and returns once the bus's background tasks have exited.
    async fn close(&self);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The channel rule written plainly, as the specification states it: the single pass of
    /// `validate_channel` must agree with it on every input, reason included.
    fn by_the_rule(channel: &str) -> Result<(), &'static str> {
        if channel.is_empty() {
            return Err("a channel must not be empty");
        }
        if channel.len() > MAX_CHANNEL_LEN {
            return Err("a channel is at most 255 bytes long");
        }
        if !channel
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'.' | b'-'))
        {
            return Err("only A-Z, a-z, 0-9 and _ : . - are allowed");
        }
        if channel.split('.').any(str::is_empty) {
            return Err("a channel must not have an empty `.`-separated token");
        }
        Ok(())
    }

    fn reason(result: Result<(), BusError>) -> Result<(), &'static str> {
        result.map_err(|error| match error {
            BusError::InvalidChannel { reason, .. } => reason,
            other => panic!("not a channel error: {other}"),
        })
    }

    proptest! {
        #[test]
        fn validate_channel_follows_the_rule(channel in "[a-c.:_$ -]{0,12}|.{0,300}") {
            prop_assert_eq!(reason(validate_channel(&channel)), by_the_rule(&channel));
        }
    }

    #[test]
    fn validate_channel_cases() {
        for (channel, ok) in [
            ("room1", true),
            ("tenant-42.orders:eu_1", true),
            (".room", false),
            ("room.", false),
            ("a..b", false),
            ("a..b$", false),
            ("room 1", false),
            ("", false),
        ] {
            assert_eq!(validate_channel(channel).is_ok(), ok, "{channel:?}");
            assert_eq!(
                reason(validate_channel(channel)),
                by_the_rule(channel),
                "{channel:?}"
            );
        }
    }
}
