//! NATS Core: at-most-once delivery over plain subjects, above the [`NatsLink`] seam.
//!
//! A [`NatsCoreBus`] publishes each message as an [`Envelope`] frame on the subject
//! `<subject_prefix>.<channel>`. `publish` returns `Ok` once the frame is written, flushed and
//! processed by the server (a round trip on the same connection comes back) within the publish
//! timeout (10 ms by default). While the server is away the link buffers what is published and
//! nothing comes back, so `publish` reports [`BusError::PublishTimeout`]; the link reconnects
//! forever in the background.
//!
//! Each channel with local subscribers has exactly one NATS subscription, shared by all of
//! them, and one task that reads it in arrival order and fans every message out to the local
//! subscriber queues. The first local subscriber starts the task; when the last one leaves, the
//! task is told to look again, and it unsubscribes and ends only if the channel is still
//! without subscribers. Both the look and every new registration happen under the same lock, so
//! a subscriber arriving in the meantime keeps the running task instead of starting a second
//! one: no channel is left with local subscribers but no NATS subscription, and no message
//! reaches a local subscriber through two subscriptions. While connected, `subscribe` returns
//! once the server has processed the subscription (proven by a round trip), so what another node
//! publishes afterwards is delivered; while disconnected it returns at once and the link
//! subscribes when it reconnects.
//!
//! A supervisor task turns the link's connection events into health and metrics: down until
//! connected, down with the reason while reconnecting, `<ns>_bus_nats_reconnects_total` for
//! every reconnect. When the NATS client drops messages because a subscription was read too
//! slowly, each drop is counted as `<ns>_bus_dropped_total{backend="nats",reason="slow_consumer"}`
//! and health reports degraded, with the reason, for a minute after the last drop: long enough
//! for a probe or an operator to notice, short enough to clear by itself once the load passes.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_core::stream::BoxStream;
use futures_util::StreamExt;
use tokio::sync::{Notify, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::NatsOptions;
use super::link::{LinkError, LinkEvent, LinkMessage, LinkPublish, LinkSubscription, NatsLink};
use crate::backend::{BusOptions, fan_out};
use crate::backoff::Backoff;
use crate::bus::{
    BusError, Delivery, Health, Message, MessageBus, PublishReceipt, Subscription, check_payload,
    validate_channel,
};
use crate::envelope::Envelope;
use crate::metrics::{BackendMetrics, BusMetrics, DropReason};
use crate::queue::{ChannelName, Fanout};
use crate::sync;

const BACKEND: &str = "nats";

/// How long health stays degraded after the NATS client last dropped messages of a
/// subscription that was read too slowly.
const SLOW_CONSUMER_VISIBLE: Duration = Duration::from_secs(60);

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
            "must be greater than zero (the default is 10ms)",
        ));
    }
    Ok(())
}

/// One channel's NATS subscription, as the registry holds it while its task runs.
#[derive(Debug)]
struct ChannelTask {
    /// Tells apart this task from a later one for the same channel.
    task: u64,
    /// Asks the task to check whether the channel still has local subscribers.
    recheck: Arc<Notify>,
    /// True once the link subscription exists (the SUB is on its way to the server).
    subscribed: bool,
    /// `subscribe` calls waiting for `subscribed`.
    waiters: Vec<oneshot::Sender<()>>,
}

/// The channels with a running task, and those tasks.
#[derive(Debug, Default)]
struct Channels {
    by_name: BTreeMap<ChannelName, ChannelTask>,
    tasks: JoinSet<()>,
    next_task: u64,
}

/// State shared by the bus handle, its subscriptions, the channel tasks and the supervisor.
#[derive(Debug)]
struct Shared {
    options: BusOptions,
    nats: NatsOptions,
    link: Arc<dyn NatsLink>,
    metrics: BackendMetrics,
    bus_metrics: BusMetrics,
    /// Local subscribers by channel.
    fanout: sync::Arc<Fanout<Delivery>>,
    /// Registrations in `fanout` and changes to `channels` happen under this lock, which is what
    /// keeps one task per channel with subscribers.
    channels: std::sync::Mutex<Channels>,
    health: std::sync::Mutex<Health>,
    closed: AtomicBool,
}

impl Shared {
    fn channels(&self) -> std::sync::MutexGuard<'_, Channels> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_health(&self, health: Health, connected: bool) {
        self.bus_metrics.set_connected(BACKEND, connected);
        *self.health.lock().unwrap_or_else(|e| e.into_inner()) = health;
    }

    fn subject(&self, channel: &str) -> String {
        format!("{}.{channel}", self.nats.subject_prefix)
    }

    /// Registers a local subscriber of `name` and makes sure a task serves the channel.
    ///
    /// Returns the subscription and, when the task has not subscribed on the link yet, a
    /// receiver that fires once it has.
    fn register(
        self: &Arc<Self>,
        name: &ChannelName,
    ) -> Result<(Subscription, Option<oneshot::Receiver<()>>), BusError> {
        let mut channels = self.channels();
        if self.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        let (id, queue) = self
            .fanout
            .subscribe(name, self.options.subscriber_queue)
            .map_err(|_| BusError::Closed)?;
        let Channels {
            by_name,
            tasks,
            next_task,
        } = &mut *channels;
        let channel = match by_name.entry(name.clone()) {
            // The running task stays: it can only end after seeing the channel without
            // subscribers under this lock, and the channel has one now.
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                let task = *next_task;
                *next_task += 1;
                let recheck = Arc::new(Notify::new());
                // Reap what has finished so the set only holds live tasks.
                while tasks.try_join_next().is_some() {}
                tasks.spawn(serve_channel(
                    self.clone(),
                    name.clone(),
                    task,
                    recheck.clone(),
                ));
                entry.insert(ChannelTask {
                    task,
                    recheck,
                    subscribed: false,
                    waiters: Vec::new(),
                })
            }
        };
        let subscribed = if channel.subscribed {
            None
        } else {
            let (tx, rx) = oneshot::channel();
            channel.waiters.retain(|waiter| !waiter.is_closed());
            channel.waiters.push(tx);
            Some(rx)
        };
        let fanout = self.fanout.clone();
        let recheck = channel.recheck.clone();
        let key = name.clone();
        let subscription = Subscription::new(
            name.clone(),
            queue,
            Box::new(move || {
                if fanout.unsubscribe(&key, id) {
                    recheck.notify_one();
                }
            }),
        );
        Ok((subscription, subscribed))
    }

    /// A round trip to the server: a request to a subject nobody subscribes to is answered ("no
    /// responders") only after the server has processed everything this connection sent before
    /// it. A flush alone only proves the bytes left this process.
    async fn round_trip(&self, timeout: Duration) -> Result<(), LinkError> {
        let probe = LinkPublish {
            subject: self.link.new_inbox(),
            reply: None,
            headers: Vec::new(),
            payload: Bytes::new(),
        };
        match self.link.request(probe, timeout).await {
            Ok(_) | Err(LinkError::NoResponders(_)) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Waits until the channel's link subscription exists, then for a round trip: once the
    /// server has processed the SUB, a message another node publishes afterwards reaches it.
    async fn confirm(&self, subscribed: Option<oneshot::Receiver<()>>, wait: Duration) {
        if let Some(subscribed) = subscribed
            && subscribed.await.is_err()
        {
            return;
        }
        // A failed round trip leaves the subscription to take effect when the server answers.
        let _ = self.round_trip(wait).await;
    }

    /// Records whether task `task` of `name` holds a link subscription; wakes waiting
    /// `subscribe` calls once it does.
    fn set_subscribed(&self, name: &ChannelName, task: u64, subscribed: bool) {
        let mut channels = self.channels();
        if let Some(channel) = channels.by_name.get_mut(name)
            && channel.task == task
        {
            channel.subscribed = subscribed;
            if subscribed {
                for waiter in channel.waiters.drain(..) {
                    let _ = waiter.send(());
                }
            }
        }
    }

    /// Decides whether task `task` of `name` ends: true (and the channel is forgotten) when the
    /// channel has no local subscribers any more, the bus is closed, or the task was replaced.
    fn retire(&self, name: &ChannelName, task: u64) -> bool {
        let mut channels = self.channels();
        let current = channels
            .by_name
            .get(name)
            .is_some_and(|channel| channel.task == task);
        if !current {
            return true;
        }
        if self.fanout.has_subscribers(name) {
            return false;
        }
        channels.by_name.remove(name);
        true
    }

    /// Decodes one message and queues it for the channel's local subscribers.
    fn dispatch(&self, name: &ChannelName, message: LinkMessage) {
        let Ok(envelope) = Envelope::decode(message.payload) else {
            self.metrics.dropped(DropReason::Malformed, 1);
            return;
        };
        let delivery = crate::backend::delivery(name.clone(), envelope, false);
        fan_out(&self.fanout, &self.metrics, &delivery);
    }

    /// Refuses everything new, ends the local subscriptions (after what is queued), asks every
    /// channel task to end, and hands over the tasks to await.
    fn shut(&self) -> JoinSet<()> {
        self.closed.store(true, Ordering::Release);
        let mut channels = self.channels();
        self.fanout.close();
        for channel in std::mem::take(&mut channels.by_name).into_values() {
            channel.recheck.notify_one();
        }
        std::mem::take(&mut channels.tasks)
    }
}

/// The task of one channel: subscribes on the link, then hands every message to the local
/// subscribers in arrival order until the channel has none left.
async fn serve_channel(shared: Arc<Shared>, name: ChannelName, task: u64, recheck: Arc<Notify>) {
    let subject = shared.subject(&name);
    let backoff = Backoff::default();
    let mut failures: u32 = 0;
    loop {
        let subscribed = tokio::select! {
            biased;
            _ = recheck.notified() => {
                if shared.retire(&name, task) {
                    return;
                }
                continue;
            }
            subscribed = shared.link.subscribe(&subject) => subscribed,
        };
        if let Ok(messages) = subscribed {
            failures = 0;
            shared.set_subscribed(&name, task, true);
            if relay(&shared, &name, task, &recheck, messages).await {
                return;
            }
            // The link ended the subscription (it is closing, or lost it): subscribe again.
            shared.set_subscribed(&name, task, false);
        }
        // The link re-establishes its connection by itself; this only paces our retries.
        let delay = backoff.delay(failures, &shared.options.ids);
        failures = failures.saturating_add(1);
        tokio::select! {
            biased;
            _ = recheck.notified() => {
                if shared.retire(&name, task) {
                    return;
                }
            }
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Relays `messages` until the task retires (true) or the link ends the stream (false).
/// Dropping `messages` on return unsubscribes.
async fn relay(
    shared: &Shared,
    name: &ChannelName,
    task: u64,
    recheck: &Notify,
    mut messages: LinkSubscription,
) -> bool {
    loop {
        tokio::select! {
            biased;
            _ = recheck.notified() => {
                if shared.retire(name, task) {
                    return true;
                }
            }
            message = messages.next() => match message {
                Some(message) => shared.dispatch(name, message),
                None => return false,
            },
        }
    }
}

/// What the supervisor knows about the connection.
#[derive(Debug, Default)]
struct Connection {
    up: bool,
    /// Why the connection went away, from the `Disconnected` until the next `Connected` (which
    /// is then a reconnect).
    lost: Option<String>,
    /// Why the last connection attempt failed, while down.
    failed: Option<String>,
    /// The link gave up for good.
    ended: bool,
    /// Until when health reports the last client-side drop, and of which subscription.
    slow_consumer: Option<(Instant, u64)>,
}

impl Connection {
    fn apply(&mut self, event: LinkEvent, shared: &Shared) {
        match event {
            LinkEvent::Connected => {
                if self.lost.take().is_some() {
                    shared.bus_metrics.nats_reconnects().inc();
                }
                self.up = true;
                self.failed = None;
            }
            LinkEvent::Disconnected(reason) => {
                self.up = false;
                self.lost = Some(reason);
                self.failed = None;
            }
            LinkEvent::ServerError(error) => {
                // While connected a server error concerns one operation, which reports it
                // itself; while down it is why connecting fails (authorization, TLS, ...).
                if !self.up {
                    self.failed = Some(error);
                }
            }
            LinkEvent::SlowConsumer(sid) => {
                shared.metrics.dropped(DropReason::SlowConsumer, 1);
                self.slow_consumer = Some((Instant::now() + SLOW_CONSUMER_VISIBLE, sid));
            }
            LinkEvent::Closed => {
                self.up = false;
                self.ended = true;
            }
        }
    }

    fn health(&self) -> Health {
        if self.ended {
            return Health::down("the NATS connection closed and will not reconnect");
        }
        if !self.up {
            return Health::down(match (&self.lost, &self.failed) {
                (None, None) => "connecting to NATS".to_owned(),
                (None, Some(failed)) => format!("cannot connect to NATS: {failed}"),
                (Some(lost), None) => format!("NATS connection lost ({lost}); reconnecting"),
                (Some(lost), Some(failed)) => {
                    format!("NATS connection lost ({lost}); reconnecting, last attempt: {failed}")
                }
            });
        }
        match self.slow_consumer {
            Some((_, sid)) => Health::degraded(format!(
                "the NATS client dropped messages of subscription {sid}, which was read too \
                 slowly (counted in bus_dropped_total{{reason=\"slow_consumer\"}})"
            )),
            None => Health::connected(),
        }
    }
}

/// Sleeps until `deadline`; never wakes without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The supervisor task: turns connection events into health and metrics until stopped.
async fn supervise(
    shared: Arc<Shared>,
    mut events: BoxStream<'static, LinkEvent>,
    mut connection: Connection,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        let clear_slow_consumer = connection.slow_consumer.map(|(until, _)| until);
        // `biased` everywhere: tokio's default random branch order would make simulation runs
        // differ for the same seed.
        tokio::select! {
            biased;
            _ = &mut stop => return,
            event = events.next() => match event {
                Some(event) => connection.apply(event, &shared),
                None => {
                    // The link reports nothing more; keep the last health until closed.
                    let _ = (&mut stop).await;
                    return;
                }
            },
            _ = until(clear_slow_consumer) => connection.slow_consumer = None,
        }
        shared.set_health(connection.health(), connection.up);
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
/// let mut room = bus.subscribe("room1").await?;
/// bus.publish("room1", "hello".into()).await?;
/// assert_eq!(room.recv().await.unwrap().payload().as_ref(), b"hello");
/// bus.close().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct NatsCoreBus {
    shared: Arc<Shared>,
    supervisor: std::sync::Mutex<Option<(JoinHandle<()>, oneshot::Sender<()>)>>,
}

impl NatsCoreBus {
    /// Starts the bus over `link` and spawns its supervisor; needs a tokio runtime.
    ///
    /// Fails only for bad options ([`BusError::Config`]). The link may still be connecting, or
    /// the server may be down: the bus is usable at once, health says down until the link
    /// connects, and subscriptions made meanwhile take effect when it does.
    pub fn start(
        options: BusOptions,
        nats: NatsOptions,
        link: Arc<dyn NatsLink>,
    ) -> Result<Self, BusError> {
        check_options(&nats)?;
        // Listen before looking, so a change between the look and the first event is seen.
        let events = link.events();
        let connection = Connection {
            up: link.is_connected(),
            ..Connection::default()
        };
        let shared = Arc::new(Shared {
            metrics: options.metrics.backend(BACKEND),
            bus_metrics: options.metrics.clone(),
            options,
            nats,
            link,
            fanout: sync::Arc::new(Fanout::new()),
            channels: std::sync::Mutex::new(Channels::default()),
            health: std::sync::Mutex::new(connection.health()),
            closed: AtomicBool::new(false),
        });
        shared.set_health(connection.health(), connection.up);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(supervise(shared.clone(), events, connection, stopped));
        Ok(NatsCoreBus {
            shared,
            supervisor: std::sync::Mutex::new(Some((task, stop))),
        })
    }

    fn take_supervisor(&self) -> Option<(JoinHandle<()>, oneshot::Sender<()>)> {
        self.supervisor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    async fn send(&self, message: Message) -> Result<PublishReceipt, BusError> {
        validate_channel(&message.channel)?;
        check_payload(message.payload.len(), self.shared.options.max_payload)?;
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        let ids = &self.shared.options.ids;
        let id = message.id.unwrap_or_else(|| ids.next_id());
        let payload_len = message.payload.len();
        let frame = Envelope {
            id,
            origin: self.shared.options.node_id.clone(),
            published_at: ids.now_nanos(),
            headers: message.headers,
            payload: message.payload,
        }
        .encode();
        super::check_frame(self.shared.link.as_ref(), frame.len(), payload_len)?;
        let publish = LinkPublish {
            subject: self.shared.subject(&message.channel),
            reply: None,
            headers: Vec::new(),
            payload: frame,
        };
        let timeout = self.shared.nats.publish_timeout;
        // The round trip makes `Ok` mean what it means on Redis: the server has the message
        // and routed it to the subscriptions it had, so a subscriber that subscribes after
        // `publish` returned never receives it, and one that subscribed before always does.
        let processed = async {
            self.shared.link.publish(publish).await?;
            self.shared.round_trip(timeout).await
        };
        match tokio::time::timeout(timeout, processed).await {
            Ok(Ok(())) => Ok(PublishReceipt { id, sequence: None }),
            Ok(Err(error)) => Err(link_error(error, timeout)),
            Err(_) => Err(BusError::PublishTimeout(timeout)),
        }
    }
}

fn link_error(error: LinkError, publish_timeout: Duration) -> BusError {
    match error {
        LinkError::NotConnected(reason) => BusError::NotConnected(reason),
        LinkError::Timeout(_) => BusError::PublishTimeout(publish_timeout),
        LinkError::Closed => BusError::Closed,
        other => BusError::Backend(Box::new(other)),
    }
}

#[async_trait]
impl MessageBus for NatsCoreBus {
    async fn publish_message(&self, message: Message) -> Result<PublishReceipt, BusError> {
        let result = self.send(message).await;
        match &result {
            Ok(_) => self.shared.metrics.published.inc(),
            Err(_) => self.shared.metrics.publish_errors.inc(),
        }
        result
    }

    /// Subscribes; when connected, returns once the server has the subscription (bounded by the
    /// link's connect timeout). While disconnected it returns at once: the subscription takes
    /// effect when the link reconnects.
    async fn subscribe(&self, channel: &str) -> Result<Subscription, BusError> {
        validate_channel(channel)?;
        let name: ChannelName = channel.into();
        let (subscription, subscribed) = self.shared.register(&name)?;
        if self.shared.link.is_connected() {
            let wait = self.shared.nats.link.connect_timeout;
            // A timeout leaves the subscription registered; it works once the server answers.
            let _ = tokio::time::timeout(wait, self.shared.confirm(subscribed, wait)).await;
        }
        Ok(subscription)
    }

    fn health(&self) -> Health {
        self.shared
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn options(&self) -> &BusOptions {
        &self.shared.options
    }

    async fn close(&self) {
        let mut tasks = self.shared.shut();
        let supervisor = self.take_supervisor();
        while tasks.join_next().await.is_some() {}
        if let Some((task, stop)) = supervisor {
            let _ = stop.send(());
            let _ = task.await;
        }
        // Draining waits for the server; a server that is gone must not hold up `close`.
        let drain = self.shared.nats.link.connect_timeout;
        let _ = tokio::time::timeout(drain, self.shared.link.close()).await;
        self.shared
            .set_health(Health::down("the bus is closed"), false);
    }
}

impl Drop for NatsCoreBus {
    fn drop(&mut self) {
        // Dropping the task set aborts the channel tasks, which drops their link subscriptions.
        drop(self.shared.shut());
        if let Some((task, _stop)) = self.take_supervisor() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::BusMetrics;

    /// A link that only reports the events the test feeds it.
    #[derive(Debug)]
    struct ScriptedLink {
        events: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<LinkEvent>>>,
    }

    #[async_trait]
    impl NatsLink for ScriptedLink {
        async fn publish(&self, _: LinkPublish) -> Result<(), LinkError> {
            Ok(())
        }

        async fn flush(&self) -> Result<(), LinkError> {
            Ok(())
        }

        async fn request(&self, _: LinkPublish, _: Duration) -> Result<LinkMessage, LinkError> {
            Err(LinkError::NoResponders("probe".into()))
        }

        async fn subscribe(&self, _: &str) -> Result<LinkSubscription, LinkError> {
            Ok(futures_util::stream::pending().boxed())
        }

        fn new_inbox(&self) -> String {
            "_INBOX.probe".into()
        }

        fn events(&self) -> BoxStream<'static, LinkEvent> {
            let events = self
                .events
                .lock()
                .unwrap()
                .take()
                .expect("one event stream");
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

    /// Lets the supervisor handle what was sent (the clock is paused: sleeping only yields).
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn health_and_metrics_follow_the_connection_events() {
        let (feed, events) = tokio::sync::mpsc::unbounded_channel();
        let registry = prometheus::Registry::new();
        let metrics = BusMetrics::register(&registry, "gohub").unwrap();
        let options = BusOptions {
            metrics: metrics.clone(),
            ..BusOptions::default()
        };
        let link = Arc::new(ScriptedLink {
            events: std::sync::Mutex::new(Some(events)),
        });
        let bus = NatsCoreBus::start(options, NatsOptions::new("nats://fake:4222"), link).unwrap();
        let slow_consumer_drops = || {
            registry
                .gather()
                .iter()
                .filter(|family| family.name() == "gohub_bus_dropped_total")
                .flat_map(|family| family.get_metric())
                .filter(|metric| {
                    metric
                        .get_label()
                        .iter()
                        .any(|l| l.value() == "slow_consumer")
                })
                .map(|metric| metric.get_counter().get_value())
                .sum::<f64>()
        };
        assert_eq!(bus.health(), Health::down("connecting to NATS"));

        feed.send(LinkEvent::ServerError(
            "nats: authorization violation".into(),
        ))
        .unwrap();
        settle().await;
        assert_eq!(
            bus.health(),
            Health::down("cannot connect to NATS: nats: authorization violation")
        );

        feed.send(LinkEvent::Connected).unwrap();
        settle().await;
        assert_eq!(bus.health(), Health::connected());
        assert_eq!(metrics.nats_reconnects().get(), 0, "the first connect");

        feed.send(LinkEvent::Disconnected("connection lost".into()))
            .unwrap();
        settle().await;
        assert_eq!(
            bus.health(),
            Health::down("NATS connection lost (connection lost); reconnecting")
        );
        feed.send(LinkEvent::Connected).unwrap();
        settle().await;
        assert_eq!(bus.health(), Health::connected());
        assert_eq!(metrics.nats_reconnects().get(), 1);

        feed.send(LinkEvent::SlowConsumer(7)).unwrap();
        settle().await;
        assert_eq!(bus.health().state, crate::HealthState::Degraded);
        assert!(bus.health().reason.unwrap().contains("subscription 7"));
        assert_eq!(slow_consumer_drops(), 1.0);
        tokio::time::sleep(SLOW_CONSUMER_VISIBLE - Duration::from_secs(1)).await;
        assert_eq!(bus.health().state, crate::HealthState::Degraded);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(bus.health(), Health::connected(), "the drop is old news");

        feed.send(LinkEvent::Closed).unwrap();
        settle().await;
        assert_eq!(
            bus.health(),
            Health::down("the NATS connection closed and will not reconnect")
        );
        bus.close().await;
        assert_eq!(bus.health(), Health::down("the bus is closed"));
    }
}
