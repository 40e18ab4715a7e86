//! NATS Core: at-most-once delivery over plain subjects, above the [`NatsLink`] seam.
//!
//! A [`NatsCoreBus`] publishes each message as an [`Envelope`] frame on the subject
//! `<subject_prefix>.<channel>`. NATS Core acknowledges nothing, so the bus proves what the
//! server has processed with its own round trips ([`probe`]): a message to a subject only this
//! bus subscribes to comes back after everything written before it. Concurrent callers share
//! one such probe.
//!
//! - What `publish`'s `Ok` means is the [`PublishMode`] (`nats.publish_mode`), each bounded by
//!   the publish timeout (50 ms by default):
//!   - [`PublishMode::Server`] (the default): the server has processed the message (a probe
//!     sent after it came back on the same connection). While the server is away the link
//!     buffers what is published and nothing comes back, so `publish` reports
//!     [`BusError::PublishTimeout`]. A connection lost between the write and the proof is
//!     [`BusError::NotConnected`]: the message may or may not have been delivered.
//!   - [`PublishMode::Flush`]: the message was written to the socket (the link's
//!     [`NatsLink::flush`]); no server round trip. What the connection loses after the write
//!     is lost although `publish` said `Ok`. With the server away the flush cannot complete:
//!     [`BusError::PublishTimeout`] (or [`BusError::NotConnected`] from a link that knows).
//!   - [`PublishMode::Buffered`]: the message is queued in the link's outgoing buffer (fire and
//!     forget); the timeout only bounds a wait for room. Everything queued when a connection
//!     breaks is lost although `publish` said `Ok`.
//! - `subscribe` returns once the server has processed the channel's subscription, so what
//!   another node publishes afterwards is delivered; it waits for that up to the link's connect
//!   timeout, connected or not when called. A subscription that cannot be confirmed in time is
//!   undone and reported as [`BusError::NotConnected`] with the reason.
//! - Each channel with local subscribers has one NATS subscription and one task ([`channels`]).
//! - A supervisor task turns the link's events into health, metrics and log lines
//!   ([`LinkHealth`]), and tells the prober about lost connections.
//!
//! Every task runs on the bus's [`TaskTracker`] and ends when its [`CancellationToken`] fires:
//! `close` fires it and waits for them; dropping the bus fires it too.

mod channels;
mod probe;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures_core::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::channels::ChannelSignals;
use self::probe::{ConnectionLost, Prober};
use super::framing;
use super::health::LinkHealth;
use super::identity::{self, Claim};
use super::link::{LinkEvent, LinkPublish, NatsLink};
use super::{NatsOptions, PublishMode, link_error, until};
use crate::backend::{BusOptions, admit_parts, count_publish};
use crate::bus::{
    BusError, Delivery, Health, Message, MessageBus, PublishReceipt, Subscription, validate_channel,
};
use crate::id::MessageId;
use crate::log_limit::LogLimiter;
use crate::metrics::{BackendMetrics, BusMetrics, DropReason};
use crate::queue::{ChannelName, Fanout};
use crate::sync;
use crate::workers::ChannelWorkers;

/// The `backend` label of metrics and field of log lines.
const BACKEND: &str = "nats";

/// Checks the options the core bus depends on, before anything connects.
pub(super) fn check_options(nats: &NatsOptions) -> Result<(), BusError> {
    validate_channel(&nats.subject_prefix).map_err(|error| match error {
        BusError::InvalidChannel { reason, .. } => BusError::config(
            "nats.subject_prefix",
            format!(
                "{:?} is not a subject prefix: {reason}",
                nats.subject_prefix
            ),
        ),
        other => other,
    })?;
    if nats.publish_timeout.is_zero() {
        return Err(BusError::config(
            "nats.publish_timeout",
            "must be greater than zero (the default is 50ms)",
        ));
    }
    Ok(())
}

/// State shared by the bus handle, its subscriptions and its tasks.
#[derive(Debug)]
struct BusState {
    options: BusOptions,
    nats: NatsOptions,
    link: Arc<dyn NatsLink>,
    metrics: BackendMetrics,
    bus_metrics: BusMetrics,
    /// Local subscribers by channel.
    fanout: sync::Arc<Fanout<Delivery>>,
    /// One task (one NATS subscription) per channel with local subscribers.
    channels: ChannelWorkers<ChannelSignals>,
    prober: Arc<Prober>,
    health: std::sync::Mutex<Health>,
    /// Wakes `wait_connected` callers whenever health changed, in the order they waited.
    health_changed: tokio::sync::Notify,
    /// Another live process uses this node id (see `identity.rs`): health stays down.
    twin: std::sync::Mutex<Option<String>>,
    closed: AtomicBool,
    /// Fired by `close` and on drop: every task ends.
    cancel: CancellationToken,
    /// Every task of the bus, so `close` can wait for them.
    tasks: TaskTracker,
    malformed_log: std::sync::Mutex<LogLimiter>,
    /// Messages the link dropped because a channel's task read too slowly, counted by the task
    /// and not yet reported in health (with the last such channel); the supervisor takes them.
    slow_reads: std::sync::Mutex<(u64, Option<ChannelName>)>,
    slow_reads_changed: tokio::sync::Notify,
}

impl BusState {
    /// A channel's task found that the link dropped `dropped` messages of its subscription:
    /// counts them now, and has the supervisor log them and degrade health.
    fn read_too_slowly(&self, channel: &ChannelName, dropped: u64) {
        self.metrics.dropped(DropReason::SlowConsumer, dropped);
        let mut slow = self.slow_reads.lock().unwrap_or_else(|e| e.into_inner());
        slow.0 += dropped;
        slow.1 = Some(channel.clone());
        drop(slow);
        self.slow_reads_changed.notify_one();
    }

    fn health(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_health(&self, health: Health, connected: bool) {
        let twin = self.twin.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let health = match twin {
            Some(conflict) => Health::down(conflict),
            None => health,
        };
        self.bus_metrics
            .set_connected(BACKEND, connected && health.is_connected());
        *self.health.lock().unwrap_or_else(|e| e.into_inner()) = health;
        self.health_changed.notify_waiters();
    }

    fn subject(&self, channel: &str) -> String {
        // Once per publish: built by hand, `format!` costs several times as much.
        let prefix = &self.nats.subject_prefix;
        let mut subject = String::with_capacity(prefix.len() + 1 + channel.len());
        subject.push_str(prefix);
        subject.push('.');
        subject.push_str(channel);
        subject
    }

    /// Refuses everything new, ends the local subscriptions (after what is queued), and tells
    /// every task to end.
    fn shut(&self) {
        self.closed.store(true, Ordering::Release);
        self.channels.close(|| {
            self.fanout.close();
        });
        self.cancel.cancel();
        self.tasks.close();
    }
}

/// The supervisor task: turns connection events into health, metrics and log lines until the
/// bus closes, and tells the prober when a connection is lost.
async fn supervise(
    bus: Arc<BusState>,
    mut events: BoxStream<'static, LinkEvent>,
    mut link: LinkHealth,
) {
    loop {
        let expiry = link.next_expiry();
        tokio::select! {
            biased;
            _ = bus.cancel.cancelled() => return,
            event = events.next() => match event {
                Some(event) => {
                    if matches!(event, LinkEvent::Disconnected(_) | LinkEvent::Closed) {
                        bus.prober.connection_lost();
                    }
                    link.apply(event);
                }
                // The link reports nothing more; the last health stays until the bus closes.
                None => return,
            },
            _ = bus.slow_reads_changed.notified() => {
                let (dropped, channel) =
                    std::mem::take(&mut *bus.slow_reads.lock().unwrap_or_else(|e| e.into_inner()));
                if let Some(channel) = channel {
                    link.read_too_slowly(&channel, dropped);
                }
            }
            _ = until(expiry) => link.expire(),
        }
        bus.set_health(link.health(), link.is_up());
    }
}

/// A bus node on NATS Core: at-most-once, per-publisher order kept while connected.
///
/// ```no_run
/// # async fn demo() -> Result<(), hubbus::BusError> {
/// use std::sync::Arc;
/// use hubbus::backend::nats::{AsyncNatsLink, NatsCoreBus, NatsOptions};
/// use hubbus::{BusOptions, MessageBus};
///
/// let nats = NatsOptions::new("nats://127.0.0.1:4222");
/// let link = Arc::new(AsyncNatsLink::connect(nats.link.clone()).await?);
/// let bus = NatsCoreBus::start(BusOptions::default(), nats, link)?;
/// // Waits (up to the connect timeout) until the server has the subscription.
/// let mut room = bus.subscribe("room1").await?;
/// bus.publish("room1", "hello".into()).await?;
/// assert_eq!(room.recv().await.unwrap().payload().as_ref(), b"hello");
/// bus.close().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct NatsCoreBus {
    bus: Arc<BusState>,
}

impl NatsCoreBus {
    /// Starts the bus over `link` and spawns its tasks; needs a tokio runtime.
    ///
    /// Fails only for bad options ([`BusError::Config`]). The link may still be connecting, or
    /// the server may be down: the bus is usable at once and health says down until the link
    /// connects; a `subscribe` meanwhile waits for the server up to the link's connect timeout.
    pub fn start(
        options: BusOptions,
        nats: NatsOptions,
        link: Arc<dyn NatsLink>,
    ) -> Result<Self, BusError> {
        check_options(&nats)?;
        // Listen before looking, so a change between the look and the first event is seen.
        let events = link.events();
        let metrics = options.metrics.backend(BACKEND);
        let health = LinkHealth::new(
            BACKEND,
            metrics.clone(),
            options.metrics.clone(),
            link.is_connected(),
        );
        let prober = Arc::new(Prober::new(&nats.subject_prefix, &options.ids));
        let bus = Arc::new(BusState {
            bus_metrics: options.metrics.clone(),
            metrics,
            options,
            nats,
            link,
            fanout: sync::Arc::new(Fanout::new()),
            channels: ChannelWorkers::default(),
            prober,
            health: std::sync::Mutex::new(health.health()),
            health_changed: tokio::sync::Notify::new(),
            twin: std::sync::Mutex::new(None),
            closed: AtomicBool::new(false),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            malformed_log: std::sync::Mutex::new(LogLimiter::default()),
            slow_reads: std::sync::Mutex::default(),
            slow_reads_changed: tokio::sync::Notify::new(),
        });
        bus.set_health(health.health(), health.is_up());
        bus.tasks.spawn(probe::run(
            bus.prober.clone(),
            bus.link.clone(),
            bus.options.ids.clone(),
            bus.cancel.clone(),
        ));
        bus.tasks.spawn(supervise(bus.clone(), events, health));
        let claim = Claim::new(
            bus.link.clone(),
            &bus.nats.subject_prefix,
            &bus.options.node_id,
            &bus.options.ids,
        );
        let twins = bus.clone();
        bus.tasks
            .spawn(identity::hold(claim, bus.cancel.clone(), move |conflict| {
                tracing::error!(node = %twins.options.node_id, %conflict, "another live process uses this node id");
                *twins.twin.lock().unwrap_or_else(|e| e.into_inner()) = Some(conflict.clone());
                twins.set_health(Health::down(conflict), false);
            }));
        Ok(NatsCoreBus { bus })
    }

    /// Publishes a message given in parts: `publish` has no `Message` to build, and
    /// `publish_message` takes its own apart.
    async fn send(
        &self,
        channel: &str,
        payload: Bytes,
        id: Option<MessageId>,
        headers: Vec<(String, String)>,
    ) -> Result<PublishReceipt, BusError> {
        let bus = &self.bus;
        let payload_len = payload.len();
        let (id, now) = admit_parts(
            &bus.options,
            channel,
            payload_len,
            &headers,
            id,
            bus.closed.load(Ordering::Acquire),
        )?;
        let (headers, payload) =
            framing::encode(bus.nats.framing, &bus.options, (id, now), headers, payload)?;
        let frame_len = framing::header_block_len(&headers) + payload.len();
        super::check_frame(bus.link.as_ref(), frame_len, payload_len)?;
        let publish = LinkPublish {
            subject: bus.subject(channel),
            reply: None,
            headers,
            payload,
        };
        let timeout = bus.nats.publish_timeout;
        let outcome = match bus.nats.publish_mode {
            // Queued in the link's outgoing buffer; the timeout only bounds a wait for room.
            // A link with room queues at once: the first poll finishes it, and no timer is made.
            PublishMode::Buffered => {
                let mut written = std::pin::pin!(bus.link.publish(publish));
                match (&mut written).now_or_never() {
                    Some(written) => Ok(written.map_err(link_error)),
                    None => tokio::time::timeout(timeout, written)
                        .await
                        .map(|written| written.map_err(link_error)),
                }
            }
            // Written to the socket: the link's flush covers everything handed over before it.
            PublishMode::Flush => {
                let flushed = async {
                    bus.link.publish(publish).await.map_err(link_error)?;
                    bus.link.flush().await.map_err(link_error)
                };
                tokio::time::timeout(timeout, flushed).await
            }
            // The round trip makes `Ok` mean what it means on Redis: the server has the
            // message and routed it to the subscriptions it had, so a subscriber that
            // subscribes after `publish` returned never receives it, and one that subscribed
            // before always does.
            PublishMode::Server => {
                let processed = async {
                    let written_in = bus.prober.epoch();
                    bus.link.publish(publish).await.map_err(link_error)?;
                    bus.prober
                        .round_trip_after(bus.link.as_ref(), written_in)
                        .await
                        .map_err(|ConnectionLost| {
                            BusError::NotConnected(
                                "the NATS connection was lost before the server confirmed the \
                                 message; it may or may not have been delivered"
                                    .to_owned(),
                            )
                        })
                };
                tokio::time::timeout(timeout, processed).await
            }
        };
        match outcome {
            Ok(Ok(())) => Ok(PublishReceipt { id, sequence: None }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(BusError::PublishTimeout(timeout)),
        }
    }

    /// Waits until the server has processed the subscription of `channel` (the channel's task
    /// holds a link subscription, then a probe sent after it came back), up to the link's
    /// connect timeout.
    async fn confirm(&self, channel: &str, signals: &ChannelSignals) -> Result<(), BusError> {
        let bus = &self.bus;
        let wait = bus.nats.link.connect_timeout;
        let confirmed = async {
            signals.subscribed().await;
            bus.prober.round_trip(bus.link.as_ref()).await;
        };
        tokio::select! {
            biased;
            _ = bus.cancel.cancelled() => Err(BusError::Closed),
            confirmed = tokio::time::timeout(wait, confirmed) => match confirmed {
                Ok(()) => Ok(()),
                Err(_) => {
                    let health = bus.health();
                    let state = health.reason.unwrap_or_else(|| "connected".to_owned());
                    let reason = format!(
                        "the NATS server did not confirm the subscription to {} within \
                         {wait:?} ({state})",
                        bus.subject(channel)
                    );
                    tracing::debug!(backend = BACKEND, channel, %reason, "subscribe failed");
                    Err(BusError::NotConnected(reason))
                }
            },
        }
    }
}

#[async_trait]
impl MessageBus for NatsCoreBus {
    async fn publish(&self, channel: &str, payload: Bytes) -> Result<PublishReceipt, BusError> {
        let result = self.send(channel, payload, None, Vec::new()).await;
        count_publish(&self.bus.metrics, &result);
        result
    }

    async fn publish_message(&self, message: Message) -> Result<PublishReceipt, BusError> {
        let Message {
            channel,
            payload,
            id,
            headers,
        } = message;
        let result = self.send(&channel, payload, id, headers).await;
        count_publish(&self.bus.metrics, &result);
        result
    }

    /// Subscribes, and returns once the server has processed the subscription, so that what
    /// another node publishes afterwards is delivered. Waits for that up to the link's connect
    /// timeout, whether or not the link is connected when called; if it cannot be confirmed in
    /// time the subscription is undone and the error is [`BusError::NotConnected`] with the
    /// reason (retry, or wait for [`MessageBus::health`] to say connected).
    async fn subscribe(&self, channel: &str) -> Result<Subscription, BusError> {
        validate_channel(channel)?;
        let name: ChannelName = channel.into();
        let (subscription, signals) = channels::register(&self.bus, &name)?;
        // On failure, dropping `subscription` undoes the registration; the channel's task
        // ends with it if nobody else subscribes to the channel.
        self.confirm(channel, &signals.state).await?;
        Ok(subscription)
    }

    fn health(&self) -> Health {
        self.bus.health()
    }

    /// Returns once the link is connected (or the bus closed).
    async fn wait_connected(&self) {
        loop {
            let changed = self.bus.health_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.bus.link.is_connected() || self.bus.closed.load(Ordering::Acquire) {
                return;
            }
            changed.await;
        }
    }

    fn options(&self) -> &BusOptions {
        &self.bus.options
    }

    async fn close(&self) {
        self.bus.shut();
        self.bus.tasks.wait().await;
        // Draining waits for the server; a server that is gone must not hold up `close`.
        let drain = self.bus.nats.link.connect_timeout;
        if tokio::time::timeout(drain, self.bus.link.close())
            .await
            .is_err()
        {
            tracing::warn!(
                backend = BACKEND,
                timeout = ?drain,
                "the NATS connection did not drain in time; closed without draining"
            );
        }
        self.bus
            .set_health(Health::down("the bus is closed"), false);
    }
}

impl Drop for NatsCoreBus {
    fn drop(&mut self) {
        // The tasks end at their next turn and drop their link subscriptions.
        self.bus.shut();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::backend::nats::link::{LinkError, LinkMessage, LinkSubscription};
    use crate::metrics::BusMetrics;

    /// A link that reports only the events the test feeds it and never answers anything: a
    /// publish is queued at once, a flush never completes (the server is away).
    #[derive(Debug)]
    struct ScriptedLink {
        events: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<LinkEvent>>>,
        /// What was handed to `publish`, by subject.
        published: std::sync::Mutex<Vec<String>>,
        /// What subscribing `hubbus.room1` returns (other subscriptions never yield).
        subscription: std::sync::Mutex<Option<LinkSubscription>>,
    }

    #[async_trait]
    impl NatsLink for ScriptedLink {
        async fn publish(&self, message: LinkPublish) -> Result<(), LinkError> {
            self.published.lock().unwrap().push(message.subject);
            Ok(())
        }

        async fn flush(&self) -> Result<(), LinkError> {
            std::future::pending().await
        }

        async fn request(&self, _: LinkPublish, _: Duration) -> Result<LinkMessage, LinkError> {
            Err(LinkError::Other("not used".into()))
        }

        async fn subscribe(&self, subject: &str) -> Result<LinkSubscription, LinkError> {
            let scripted = (subject == "hubbus.room1")
                .then(|| self.subscription.lock().unwrap().take())
                .flatten();
            Ok(scripted.unwrap_or_else(|| LinkSubscription::new(futures_util::stream::pending())))
        }

        fn new_inbox(&self) -> String {
            "_INBOX.unused".into()
        }

        fn events(&self) -> BoxStream<'static, LinkEvent> {
            // The supervisor's stream is the scripted one; later callers (the node id's claim)
            // hear nothing.
            let Some(events) = self.events.lock().unwrap().take() else {
                return futures_util::stream::pending().boxed();
            };
            futures_util::stream::unfold(events, |mut events| async move {
                events.recv().await.map(|event| (event, events))
            })
            .boxed()
        }

        fn is_connected(&self) -> bool {
            false
        }

        fn max_payload(&self) -> Option<usize> {
            None
        }

        async fn close(&self) {}
    }

    fn scripted() -> (
        tokio::sync::mpsc::UnboundedSender<LinkEvent>,
        Arc<ScriptedLink>,
    ) {
        let (feed, events) = tokio::sync::mpsc::unbounded_channel();
        let link = Arc::new(ScriptedLink {
            events: std::sync::Mutex::new(Some(events)),
            published: std::sync::Mutex::new(Vec::new()),
            subscription: std::sync::Mutex::new(None),
        });
        (feed, link)
    }

    /// Lets the supervisor handle what was sent (the clock is paused: sleeping only yields).
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn health_and_the_connected_gauge_follow_the_connection_events() {
        let (feed, link) = scripted();
        let registry = prometheus::Registry::new();
        let metrics = BusMetrics::register(&registry, "gohub").unwrap();
        let options = BusOptions {
            metrics: metrics.clone(),
            ..BusOptions::default()
        };
        let bus = NatsCoreBus::start(options, NatsOptions::new("nats://fake:4222"), link).unwrap();
        let connected = || {
            registry
                .gather()
                .iter()
                .filter(|family| family.name() == "gohub_bus_connected")
                .flat_map(|family| family.get_metric())
                .map(|metric| metric.get_gauge().get_value())
                .sum::<f64>()
        };
        assert_eq!(bus.health(), Health::down("connecting to NATS"));
        assert_eq!(connected(), 0.0);
        feed.send(LinkEvent::Connected).unwrap();
        settle().await;
        assert_eq!(bus.health(), Health::connected());
        assert_eq!(connected(), 1.0);
        feed.send(LinkEvent::Disconnected("connection lost".into()))
            .unwrap();
        settle().await;
        assert_eq!(bus.health().state, crate::HealthState::Down);
        assert_eq!(connected(), 0.0);
        feed.send(LinkEvent::Connected).unwrap();
        settle().await;
        assert_eq!(metrics.nats_reconnects().get(), 1);
        bus.close().await;
        assert_eq!(bus.health(), Health::down("the bus is closed"));
        assert_eq!(connected(), 0.0);
    }

    /// What the link dropped because a channel's task read its subscription too slowly is
    /// counted as a slow-consumer drop as soon as the task sees it, once, and degrades health
    /// naming the channel.
    #[tokio::test(start_paused = true)]
    async fn drops_a_subscription_counts_are_counted_once_and_degrade_health() {
        let (feed, link) = scripted();
        let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel::<LinkMessage>();
        let messages = futures_util::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|message| (message, receiver))
        });
        *link.subscription.lock().unwrap() =
            Some(LinkSubscription::counting_drops(messages, dropped.clone()));
        let registry = prometheus::Registry::new();
        let metrics = BusMetrics::register(&registry, "gohub").unwrap();
        let options = BusOptions {
            metrics,
            ..BusOptions::default()
        };
        let bus = NatsCoreBus::start(options, NatsOptions::new("nats://fake:4222"), link).unwrap();
        let slow_consumer_drops = || crate::backend::nats::health::dropped_slow(&registry);
        feed.send(LinkEvent::Connected).unwrap();
        settle().await;
        let (mut room, _signals) = channels::register(&bus.bus, &"room1".into()).unwrap();
        let kept = |payload: &'static str| LinkMessage {
            subject: "hubbus.room1".into(),
            reply: None,
            headers: Vec::new(),
            payload: bytes::Bytes::from_static(payload.as_bytes()),
            status: None,
            description: None,
        };
        // The link dropped seven older messages to make room for this one.
        dropped.store(7, Ordering::Release);
        sender.send(kept("kept")).unwrap();
        settle().await;
        assert_eq!(room.try_recv().unwrap().payload().as_ref(), b"kept");
        assert_eq!(slow_consumer_drops(), 7.0);
        assert_eq!(
            room.dropped(),
            0,
            "the subscriber's own queue dropped nothing"
        );
        let health = bus.health();
        assert_eq!(health.state, crate::HealthState::Degraded, "{health:?}");
        let reason = health.reason.unwrap_or_default();
        assert!(reason.contains("channel room1"), "{reason}");
        assert!(reason.contains("read too slowly"), "{reason}");
        sender.send(kept("next")).unwrap();
        settle().await;
        assert_eq!(room.try_recv().unwrap().payload().as_ref(), b"next");
        assert_eq!(slow_consumer_drops(), 7.0, "counted once");
        bus.close().await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_unconfirmed_subscribe_waits_the_connect_timeout_then_is_undone() {
        let (_feed, link) = scripted();
        let mut nats = NatsOptions::new("nats://fake:4222");
        nats.link.connect_timeout = Duration::from_secs(3);
        let bus = NatsCoreBus::start(BusOptions::default(), nats, link).unwrap();
        let started = tokio::time::Instant::now();
        let refused = bus.subscribe("room1").await;
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        match refused {
            Err(BusError::NotConnected(reason)) => {
                assert!(reason.contains("hubbus.room1"), "{reason}");
                assert!(reason.contains("connecting to NATS"), "{reason}");
            }
            other => panic!("expected NotConnected, got {other:?}"),
        }
        assert!(!bus.bus.fanout.has_subscribers("room1"));
        settle().await;
        assert!(
            bus.bus.channels.is_empty(),
            "the channel's task ended with its only subscriber"
        );
        bus.close().await;
    }

    #[tokio::test(start_paused = true)]
    async fn close_ends_a_waiting_subscribe_with_closed() {
        let (_feed, link) = scripted();
        let bus = Arc::new(
            NatsCoreBus::start(
                BusOptions::default(),
                NatsOptions::new("nats://fake:4222"),
                link,
            )
            .unwrap(),
        );
        let waiting = {
            let bus = bus.clone();
            tokio::spawn(async move { bus.subscribe("room1").await })
        };
        settle().await;
        bus.close().await;
        assert!(matches!(waiting.await.unwrap(), Err(BusError::Closed)));
    }

    /// A bus over a link whose server is away, in `mode`, with a 10 ms publish timeout.
    fn away(mode: PublishMode) -> (NatsCoreBus, Arc<ScriptedLink>) {
        let (_feed, link) = scripted();
        let mut nats = NatsOptions::new("nats://fake:4222");
        nats.publish_mode = mode;
        nats.publish_timeout = Duration::from_millis(10);
        let bus = NatsCoreBus::start(BusOptions::default(), nats, link.clone()).unwrap();
        (bus, link)
    }

    /// `server` and `flush` mode against a server that never answers (no probe comes back, no
    /// flush completes): the message is written, and the publish fails after exactly the
    /// publish timeout. Only `server` mode writes a probe behind it.
    #[tokio::test(start_paused = true)]
    async fn server_and_flush_modes_wait_the_publish_timeout_for_a_server_that_never_answers() {
        for (mode, probes) in [(PublishMode::Server, 1), (PublishMode::Flush, 0)] {
            let (bus, link) = away(mode);
            settle().await;
            let started = tokio::time::Instant::now();
            let result = bus.publish("room1", "x".into()).await;
            assert!(
                matches!(result, Err(BusError::PublishTimeout(d)) if d == Duration::from_millis(10)),
                "{mode:?}: {result:?}"
            );
            assert_eq!(started.elapsed(), Duration::from_millis(10), "{mode:?}");
            let published = link.published.lock().unwrap().clone();
            assert_eq!(published.first().map(String::as_str), Some("hubbus.room1"));
            assert_eq!(
                published.iter().filter(|s| s.contains(".$probe.")).count(),
                probes,
                "{mode:?}: {published:?}"
            );
            bus.close().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn buffered_mode_is_ok_once_the_link_took_the_message() {
        let (bus, link) = away(PublishMode::Buffered);
        let started = tokio::time::Instant::now();
        for _ in 0..3 {
            bus.publish("room1", "x".into()).await.unwrap();
        }
        assert_eq!(started.elapsed(), Duration::ZERO, "no waiting at all");
        assert_eq!(link.published.lock().unwrap().len(), 3, "no probe either");
        bus.close().await;
    }
}
