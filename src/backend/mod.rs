//! The backends, one folder or file each, and the options every backend takes.
//!
//! A backend knows nothing about another backend. What they share lives outside this folder:
//! the trait and its rules (`bus.rs`), the bounded queues (`queue.rs`), ids and time (`id.rs`),
//! and metrics (`metrics.rs`).

pub mod memory;
#[cfg(feature = "nats")]
pub mod nats;
pub mod noop;
#[cfg(feature = "redis")]
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use crate::bus::{
    BusError, DEFAULT_MAX_PAYLOAD, DEFAULT_SUBSCRIBER_QUEUE, Delivery, Message, check_payload,
    validate_channel,
};
use crate::envelope::{Envelope, EnvelopeError};
use crate::id::{IdGenerator, MessageId, NodeId};
use crate::metrics::{BackendMetrics, BusMetrics, DEFAULT_NAMESPACE, DropReason};
use crate::queue::{Fanout, FanoutReport, Offer, SubscriberQueue};
use crate::settle::{self, Settle};

/// How long an at-least-once backend waits for room in a full subscriber queue before it cuts
/// the subscriber off as lagged, when the configuration does not say.
pub const DEFAULT_LAG_TIMEOUT: Duration = Duration::from_secs(5);

/// What every backend checks before a publish touches anything, in one place: the channel rule,
/// the size limit (payload and headers together), headers that can be framed, and a closed bus.
/// Returns the id the message travels with (its own, or a fresh one).
pub(crate) fn admit(
    options: &BusOptions,
    message: &Message,
    closed: bool,
) -> Result<MessageId, BusError> {
    check(
        options,
        &message.channel,
        message.payload.len(),
        &message.headers,
        closed,
    )?;
    Ok(message.id.unwrap_or_else(|| options.ids.next_id()))
}

/// [`admit`] for a message given in parts: returns its id and the time it was published at,
/// from one clock reading.
pub(crate) fn admit_parts(
    options: &BusOptions,
    channel: &str,
    payload_len: usize,
    headers: &[(String, String)],
    id: Option<MessageId>,
    closed: bool,
) -> Result<(MessageId, u64), BusError> {
    check(options, channel, payload_len, headers, closed)?;
    let now = options.ids.now_nanos();
    Ok((id.unwrap_or_else(|| options.ids.next_id_at(now)), now))
}

fn check(
    options: &BusOptions,
    channel: &str,
    payload_len: usize,
    headers: &[(String, String)],
    closed: bool,
) -> Result<(), BusError> {
    validate_channel(channel)?;
    let header_bytes: usize = headers
        .iter()
        .map(|(key, value)| key.len() + value.len())
        .sum();
    check_payload(payload_len + header_bytes, options.max_payload)?;
    Envelope::check_headers(headers).map_err(header_error)?;
    if closed {
        return Err(BusError::Closed);
    }
    Ok(())
}

/// The envelope frame of an admitted message, for the network backends, stamped
/// `published_at` (the clock reading [`admit_parts`] returned, so a message costs one clock
/// reading).
#[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(dead_code))]
pub(crate) fn frame_at(
    options: &BusOptions,
    id: MessageId,
    published_at: u64,
    headers: Vec<(String, String)>,
    payload: bytes::Bytes,
) -> Result<bytes::Bytes, BusError> {
    Envelope {
        id,
        origin: options.node_id.clone(),
        published_at,
        headers,
        payload,
    }
    .encode()
    .map_err(header_error)
}

fn header_error(error: EnvelopeError) -> BusError {
    match error {
        EnvelopeError::HeaderTooLarge { key, what } => {
            BusError::InvalidHeader { key, reason: what }
        }
        other => BusError::Backend(Box::new(other)),
    }
}

/// What every backend counts after a publish: `published` or `publish_errors`.
pub(crate) fn count_publish<T>(metrics: &BackendMetrics, result: &Result<T, BusError>) {
    match result {
        Ok(_) => metrics.published.inc(),
        Err(_) => metrics.publish_errors.inc(),
    }
}

/// A delivery of a decoded envelope received on `channel` (network backends); at-least-once
/// backends attach each subscriber's acker when they fan it out.
#[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(dead_code))]
pub(crate) fn delivery(channel: Arc<str>, envelope: Envelope, redelivered: bool) -> Delivery {
    crate::bus::DeliveredMessage {
        channel,
        payload: envelope.payload,
        id: envelope.id,
        origin: envelope.origin,
        published_at_nanos: envelope.published_at,
        redelivered,
        headers: envelope.headers,
    }
    .into_delivery()
}

/// The delivery of a message from a publisher outside the bus: its bytes as the payload, the
/// origin [`NodeId::external`](crate::NodeId::external), `id` and `published_at` as the
/// receiving backend derives them, and whatever headers the broker carried.
#[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(dead_code))]
pub(crate) fn foreign_delivery(
    channel: Arc<str>,
    payload: bytes::Bytes,
    (id, published_at_nanos): (MessageId, u64),
    headers: Vec<(String, String)>,
    redelivered: bool,
) -> Delivery {
    crate::bus::DeliveredMessage {
        channel,
        payload,
        id,
        origin: crate::NodeId::external(),
        published_at_nanos,
        redelivered,
        headers,
    }
    .into_delivery()
}

/// A message from outside the bus on a backend that keeps no time of its own for it (Redis,
/// NATS Core): its delivery, with an id and publish time taken on this receipt from the bus's
/// generator and counted as foreign; or `None`, counted as dropped, when `foreign_messages`
/// says to drop such messages.
#[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(dead_code))]
pub(crate) fn foreign_on_receipt(
    options: &BusOptions,
    metrics: &BackendMetrics,
    channel: Arc<str>,
    payload: bytes::Bytes,
    headers: Vec<(String, String)>,
) -> Option<Delivery> {
    match options.foreign_messages {
        crate::config::ForeignMessages::Deliver => {
            let now = options.ids.now_nanos();
            metrics.foreign.inc();
            let id = options.ids.next_id_at(now);
            Some(foreign_delivery(
                channel,
                payload,
                (id, now),
                headers,
                false,
            ))
        }
        crate::config::ForeignMessages::Drop => {
            metrics.dropped(DropReason::Foreign, 1);
            tracing::debug!(backend = metrics.backend, %channel, "dropped a message from outside the bus");
            None
        }
    }
}

/// Queues `delivery` for its channel's local subscribers and counts what happened: one
/// `received` per subscriber reached, one `slow_consumer` drop per subscriber whose oldest
/// delivery made room. A closed fan-out (the bus is closing) reaches nobody.
pub(crate) fn fan_out(
    fanout: &Fanout<Delivery>,
    metrics: &BackendMetrics,
    delivery: &Delivery,
) -> FanoutReport {
    let report = fanout
        .publish(delivery.channel(), delivery)
        .unwrap_or_default();
    metrics.received.inc_by(report.delivered as u64);
    if report.dropped > 0 {
        metrics.dropped_for_slow_subscribers(delivery.channel(), report.dropped as u64);
    }
    report
}

/// Hands one message to every subscriber of its channel without losing it (at-least-once
/// backends and a hub on one): each subscriber gets its own copy, settled into `parent` through a
/// shared countdown (see `settle.rs`). A full queue is waited for, all of one message's full
/// queues together for at most `lag_timeout`; a subscriber whose queue is still full then is cut
/// off as lagged (counted in `<ns>_bus_lagged_total` and as `dropped{reason="lagged"}`), its
/// queued copies released, so one stuck subscriber cannot hold back the channel for longer.
///
/// The caller, which still holds the message's settlement, decides what a message nobody took
/// means.
pub(crate) async fn deliver_acked(
    fanout: &Fanout<Delivery>,
    metrics: &BackendMetrics,
    template: &Delivery,
    parent: Arc<dyn Settle>,
    lag_timeout: Duration,
) -> Delivered {
    let mut unused = Some(parent);
    let offered = fanout.offer_each(template.channel(), |count| {
        if count == 0 {
            return Vec::new();
        }
        let parent = unused.take().expect("make is called once");
        settle::copies(parent, count)
            .into_iter()
            .map(|acker| template.with_acker(acker))
            .collect()
    });
    let offered = match (offered, unused) {
        (Ok(offered), None) => offered,
        (Ok(_), Some(_)) => return Delivered::Nobody,
        (Err(_closed), _) => return Delivered::Closed,
    };
    let mut reached = offered.queued;
    for delivery in offered.closed {
        release(&delivery).await;
    }
    let deadline = tokio::time::Instant::now() + lag_timeout;
    for (queue, delivery) in offered.full {
        if wait_and_offer(&queue, delivery, deadline, metrics).await {
            reached += 1;
        }
    }
    metrics.received.inc_by(reached as u64);
    Delivered::Queued
}

/// What [`deliver_acked`] did with a message.
#[derive(Debug)]
pub(crate) enum Delivered {
    /// Handed to the channel's subscribers (some may have been cut off as lagged meanwhile).
    Queued,
    /// The channel has no open subscriber.
    Nobody,
    /// The fan-out is closed (the bus or hub is closing): leave the message unsettled for the
    /// next run.
    Closed,
}

/// Offers `delivery` to `queue` once it has room, until `deadline`; then cuts the queue's
/// subscriber off as lagged. True when the delivery was queued.
async fn wait_and_offer(
    queue: &SubscriberQueue<Delivery>,
    mut delivery: Delivery,
    deadline: tokio::time::Instant,
    metrics: &BackendMetrics,
) -> bool {
    loop {
        let room = std::future::poll_fn(|cx| queue.poll_room(cx));
        if tokio::time::timeout_at(deadline, room).await.is_err() {
            let given_up = queue.close_lagged(1);
            let dropped = given_up.len() as u64 + 1;
            metrics.lagged.inc();
            metrics.dropped(DropReason::Lagged, dropped);
            tracing::warn!(
                backend = metrics.backend,
                channel = %delivery.channel(),
                dropped,
                "a subscriber fell behind and was cut off"
            );
            for copy in given_up.iter().chain([&delivery]) {
                release(copy).await;
            }
            return false;
        }
        match queue.offer(delivery) {
            Offer::Queued => return true,
            // Someone else took the room (cannot happen with one dispatcher, but harmless).
            Offer::Full(back) => delivery = back,
            Offer::Closed(back) => {
                // The subscriber left while we waited: its copy no longer holds the message.
                release(&back).await;
                return false;
            }
        }
    }
}

async fn release(delivery: &Delivery) {
    if let Err(error) = delivery.release().await {
        tracing::debug!(%error, channel = %delivery.channel(), "releasing a copy failed; the message comes back after its ack wait");
    }
}

/// The runtime settings every backend takes, already checked.
///
/// [`crate::connect`] builds these from a [`crate::BusConfig`]; build them by hand to construct a
/// backend directly, for example in tests or a simulation with a seeded [`IdGenerator`].
#[derive(Debug, Clone)]
pub struct BusOptions {
    /// The origin stamped on everything this bus publishes.
    pub node_id: NodeId,
    /// Largest accepted payload, in bytes.
    pub max_payload: usize,
    /// Capacity of each subscriber's queue: at most once, the oldest deliveries are dropped
    /// beyond it; at least once, the bus waits for room (see `lag_timeout`).
    pub subscriber_queue: usize,
    /// At-least-once backends (and a hub on one): how long a full subscriber queue may hold
    /// back delivery before its subscriber is cut off as lagged.
    pub lag_timeout: Duration,
    /// What to do with a message from a publisher outside the bus.
    pub foreign_messages: crate::config::ForeignMessages,
    /// Source of message ids and timestamps.
    pub ids: IdGenerator,
    /// Where the bus counts what it does.
    pub metrics: BusMetrics,
}

impl Default for BusOptions {
    /// A generated node id, the default limits, ids from the OS, metrics registered nowhere.
    ///
    /// A generated node id changes on every start; JetStream refuses it (durable state is kept
    /// under the node id), so set `node_id` there.
    fn default() -> Self {
        let ids = IdGenerator::from_entropy();
        BusOptions {
            node_id: NodeId::generate(&ids),
            max_payload: DEFAULT_MAX_PAYLOAD,
            subscriber_queue: DEFAULT_SUBSCRIBER_QUEUE,
            lag_timeout: DEFAULT_LAG_TIMEOUT,
            foreign_messages: crate::config::ForeignMessages::default(),
            ids,
            metrics: BusMetrics::unregistered(DEFAULT_NAMESPACE)
                .expect("the default namespace is a valid Prometheus name"),
        }
    }
}
