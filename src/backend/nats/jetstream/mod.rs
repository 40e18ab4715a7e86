//! JetStream: at-least-once delivery through one durable stream and one durable pull consumer per
//! node, all above the [`NatsLink`] seam.
//!
//! A [`JetStreamBus`] publishes each message into the stream (`publish.rs`) and waits for the
//! server's PubAck. Receiving is one pull loop per node (`pull.rs`) over the node's durable
//! consumer (`consumer.rs`), which covers the bus's whole subject space; the loop hands each
//! message to the local subscribers of its channel, each with its own copy to settle
//! (`ack.rs`, `settle.rs`), and keeps the node's unsettled messages in a ledger (`ledger.rs`).
//! Everything is plain request/reply on `$JS.API.>` subjects with JSON bodies (`api.rs`), so it
//! runs over any link. `supervisor.rs` follows the connection and the stream.
//!
//! # Layout: one consumer per node
//!
//! A node has exactly one durable consumer, `hubbus_<node>_<hash>`, whatever number of channels
//! it subscribes: subscribing and unsubscribing are local and cost no server call, and an idle
//! node costs one waiting pull, not one per channel. The price is that a node receives every
//! message on the bus's subjects: a message for a channel without a local subscriber is
//! acknowledged at once and counted in `<ns>_bus_jetstream_skipped_total` (after the resume
//! window below), and a message waits behind the messages before it on the node even when they
//! are for other channels (a slow subscriber holds back its node for at most `lag_timeout`).
//!
//! # Promise
//!
//! Every publish that returned `Ok` (the PubAck arrived within `publish_timeout`) is delivered at
//! least once to every local subscriber that was subscribed to its channel when the node's
//! consumer handed it out: in particular to everyone subscribed before the publish was called,
//! across server crashes and restarts on the same store and across reconnects, as long as the
//! message is in the stream (`max_age`, `max_bytes`). A node that restarts with the same node id
//! continues where it stopped: what was published while it was away is held for its subscribers
//! during `resume_window` after its consumer starts again. A message is acknowledged to the
//! server only when every local copy was acknowledged; a copy declined (`nak`) or dropped
//! without an ack brings the message back, flagged [`crate::Delivery::redelivered`], and so
//! does anything not settled within `ack_wait`. A subscriber that falls behind is never skipped
//! silently: the bus waits for it up to `lag_timeout` and then ends its subscription as
//! [`crate::SubscriptionEnd::Lagged`]. One publisher's messages arrive in publish order, except
//! for redeliveries and retries.
//!
//! # Node identity and consumer lifetime
//!
//! The node id names the durable consumer, so it must be configured (a generated id is
//! refused) and unique among live processes: a second live process with the same id is refused
//! at start, or reported in `health()` if both started at once. Closing or dropping never
//! deletes the consumer; the server removes one nobody pulled from for `inactive_threshold`.
//!
//! The server acknowledges a publish once the message is written to its store file, before it
//! is synced to disk (nats-server 2.9 syncs every two minutes; 2.10 made that configurable,
//! `jetstream { sync_interval: always }`). A killed server process loses nothing acknowledged,
//! since the written data survives in the operating system; a machine that loses power can lose
//! what was acknowledged since the last sync unless the stream has replicas.
//!
//! Starting does not need the server: `start` waits up to `api_timeout` for the server's first
//! answer about the stream, fails only for options or an existing stream the bus cannot use
//! ([`BusError::Config`]), and otherwise returns a bus whose health is down until the
//! supervisor has connected and confirmed the stream.

mod ack;
mod api;
mod consumer;
mod ledger;
mod publish;
mod pull;
mod stream;
mod supervisor;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use api::ApiError;

use super::health::LinkHealth;
use super::identity::{self, Claim};
use super::link::{LinkEvent, NatsLink};
use super::{JetStreamOptions, NatsFraming, NatsOptions, link_error};
use crate::backend::{BusOptions, count_publish};
use crate::bus::{
    BusError, Delivery, Guarantee, Health, HealthState, Message, MessageBus, PublishReceipt,
    Subscription, validate_channel,
};
use crate::log_limit::LogLimiter;
use crate::metrics::{BackendMetrics, BusMetrics};
use crate::queue::{ChannelName, Fanout};
use crate::sync;
use consumer::{ConsumerState, Readiness};
use ledger::Ledger;

/// The `backend` label of the message counters: JetStream traffic is told apart from NATS Core
/// traffic on a dashboard.
const BACKEND: &str = "jetstream";

/// The `backend` label of `<ns>_bus_connected`: the connection is a NATS connection whichever
/// API runs over it, like `<ns>_bus_nats_reconnects_total`.
const CONNECTION: &str = "nats";

/// How long health stays degraded after the stream was found deleted and was created again.
const STREAM_RECREATED_VISIBLE: Duration = Duration::from_secs(600);

/// The bus's view of its stream.
#[derive(Debug)]
enum StreamStatus {
    Unchecked,
    Ready,
    Unavailable(String),
    /// Unusable until an operator changes something; publishes and subscribes fail with this.
    Refused {
        key: &'static str,
        reason: String,
    },
}

/// Everything health is made of.
#[derive(Debug)]
struct Status {
    /// The connection, from the link's events (shared with NATS Core).
    link: LinkHealth,
    stream: StreamStatus,
    /// Why the node's consumer cannot be used, while that lasts.
    consumer_failing: Option<String>,
    /// When the stream was last found deleted and created again, and what that means.
    stream_recreated: Option<(Instant, String)>,
    /// Another live process uses this node id.
    twin: Option<String>,
    closed: bool,
}

impl Status {
    fn health(&self, stream: &str, now: Instant) -> Health {
        if self.closed {
            return Health::down("the bus is closed");
        }
        if let Some(twin) = &self.twin {
            return Health::down(twin.clone());
        }
        let link = self.link.health();
        if link.state == HealthState::Down {
            return link;
        }
        match &self.stream {
            StreamStatus::Ready => {}
            StreamStatus::Unchecked => {
                return Health::down(format!("checking JetStream stream {stream}"));
            }
            StreamStatus::Unavailable(reason) => {
                return Health::down(format!(
                    "JetStream stream {stream} is not available: {reason}"
                ));
            }
            StreamStatus::Refused { key, reason } => {
                return Health::down(format!("invalid configuration at `{key}`: {reason}"));
            }
        }
        if let Some(reason) = &self.consumer_failing {
            return Health::down(reason.clone());
        }
        let mut degraded: Vec<String> = link.reason.into_iter().collect();
        if let Some((until, reason)) = &self.stream_recreated
            && now < *until
        {
            degraded.push(reason.clone());
        }
        if degraded.is_empty() {
            Health::connected()
        } else {
            Health::degraded(degraded.join("; "))
        }
    }

    /// Connected and the stream confirmed: publishing works and subscribing can.
    fn usable(&self) -> bool {
        !self.closed && self.link.is_up() && matches!(self.stream, StreamStatus::Ready)
    }
}

/// State shared by the bus handle, its subscriptions, its pull loop and its background tasks.
#[derive(Debug)]
struct JetStream {
    options: BusOptions,
    js: JetStreamOptions,
    /// How messages are written (both framings are read).
    framing: NatsFraming,
    link: Arc<dyn NatsLink>,
    metrics: BackendMetrics,
    bus_metrics: BusMetrics,
    /// Local subscribers by channel.
    fanout: sync::Arc<Fanout<Delivery>>,
    /// The node's durable consumer.
    consumer: ConsumerState,
    ledger: Arc<Ledger>,
    status: Mutex<Status>,
    /// The creation time of the stream as this bus last saw it: a different one means the
    /// stream was deleted and created again.
    stream_created: Mutex<Option<String>>,
    /// Parking a message and a subscriber claiming parked messages happen under this lock, so
    /// a subscriber arriving while a message is parked for its channel always gets it.
    claims: Mutex<()>,
    /// Wakes the pull loop after a reconnect, so it pulls again at once.
    reconnected: Notify,
    /// Wakes `wait_connected` callers whenever the status changed.
    status_changed: Notify,
    /// The pull loop runs from the first subscribe on.
    pulling: AtomicBool,
    /// Rate-limits the log line about messages that are not bus messages.
    malformed_log: Mutex<LogLimiter>,
    closed: AtomicBool,
    /// How long `subscribe` waits for the consumer, and `close` for the server.
    wait: Duration,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl JetStream {
    fn status(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the status, then publishes the resulting health to `<ns>_bus_connected`.
    fn update<T>(&self, change: impl FnOnce(&mut Status) -> T) -> T {
        let (result, connected) = {
            let mut status = self.status();
            // The first `Connected` event can pass before the link reports itself connected,
            // and so be missed by `start`; the link's own state settles it (a `Connected`
            // applied twice counts once).
            if !status.link.is_up() && self.link.is_connected() {
                status.link.apply(LinkEvent::Connected);
            }
            let result = change(&mut status);
            let health = status.health(&self.js.stream, Instant::now());
            (result, health.is_connected())
        };
        self.bus_metrics.set_connected(CONNECTION, connected);
        self.status_changed.notify_waiters();
        result
    }

    fn health(&self) -> Health {
        self.update(|status| status.health(&self.js.stream, Instant::now()))
    }

    fn stream_ready(&self, created: &str) {
        let recreated = {
            let mut seen = self
                .stream_created
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let recreated = seen.as_deref().is_some_and(|before| before != created);
            *seen = Some(created.to_owned());
            recreated
        };
        if recreated {
            self.bus_metrics.jetstream_stream_recreated().inc();
            let reason = format!(
                "JetStream stream {} was deleted and created again (created {created}); the \
                 messages it held are lost, and delivery continues with what is published now",
                self.js.stream
            );
            tracing::error!(stream = %self.js.stream, %created, "JetStream stream was deleted and created again; the messages it held are lost");
            self.update(|status| {
                status.stream_recreated = Some((Instant::now() + STREAM_RECREATED_VISIBLE, reason));
            });
        }
        self.update(|status| status.stream = StreamStatus::Ready);
    }

    fn stream_unavailable(&self, reason: String) {
        self.update(|status| status.stream = StreamStatus::Unavailable(reason));
    }

    fn stream_refused(&self, key: &'static str, reason: String) {
        self.update(|status| status.stream = StreamStatus::Refused { key, reason });
    }

    /// `Closed` after close, the configuration error while the stream is refused.
    fn refuse_if_unusable(&self) -> Result<(), BusError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        match &self.status().stream {
            StreamStatus::Refused { key, reason } => Err(BusError::config(*key, reason.clone())),
            _ => Ok(()),
        }
    }

    /// Starts the pull loop unless it runs already.
    fn start_pulling(self: &Arc<Self>) {
        if !self.pulling.swap(true, Ordering::AcqRel) {
            self.tasks.spawn(pull::run(self.clone()));
        }
    }

    /// Hands the messages parked for `channel` back to the server, which delivers them again
    /// at once (now to the new subscriber).
    async fn claim_parked(&self, channel: &str) {
        let parked = {
            let _claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
            self.ledger.claim(channel)
        };
        for root in parked {
            if let Err(error) = crate::settle::Settle::nak(root.as_ref(), None).await {
                tracing::debug!(%error, channel, "handing back a parked message failed; it comes back after ack_wait");
            }
        }
    }
}

/// A bus node on NATS JetStream: at-least-once, acknowledged publishes, one durable consumer.
///
/// ```no_run
/// # async fn demo() -> Result<(), hubbus::BusError> {
/// use std::sync::Arc;
/// use hubbus::backend::nats::jetstream::JetStreamBus;
/// use hubbus::backend::nats::{AsyncNatsLink, JetStreamOptions, NatsOptions};
/// use hubbus::{BusOptions, MessageBus, NodeId};
///
/// let mut nats = NatsOptions::new("nats://127.0.0.1:4222");
/// nats.jetstream = Some(JetStreamOptions::default());
/// let link = Arc::new(AsyncNatsLink::connect(nats.link.clone()).await?);
/// let options = BusOptions { node_id: NodeId::new("hub-1")?, ..BusOptions::default() };
/// let bus = JetStreamBus::start(options, nats, link).await?;
///
/// let mut room = bus.subscribe("room1").await?;
/// let receipt = bus.publish("room1", "hello".into()).await?;
/// assert!(receipt.sequence.is_some());
/// let delivery = room.recv().await.expect("delivered");
/// delivery.ack().await?;
/// bus.close().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct JetStreamBus {
    inner: Arc<JetStream>,
}

impl JetStreamBus {
    /// Starts the bus over `link` with the JetStream settings in `nats.jetstream`.
    ///
    /// Fails with [`BusError::Config`] when `nats.jetstream` is `None` or invalid, when the node
    /// id was generated rather than configured (key `node_id`), when another live process
    /// already uses the node id (key `node_id`), and when the stream exists with a
    /// configuration the bus cannot use (key `nats.stream`); it never changes an existing
    /// stream. A server that does not answer within `api_timeout` does not fail the start: the
    /// bus reports down and keeps trying in the background.
    pub async fn start(
        options: BusOptions,
        nats: NatsOptions,
        link: Arc<dyn NatsLink>,
    ) -> Result<Self, BusError> {
        // Node-id claims travel under the core subject prefix (see `identity.rs`).
        let claim_prefix = nats.subject_prefix.clone();
        let Some(js) = nats.jetstream else {
            return Err(BusError::config(
                "nats.jetstream",
                "JetStream settings are missing: set them, or use the NATS Core bus",
            ));
        };
        stream::validate(&js)?;
        if options.node_id.is_generated() {
            return Err(BusError::config(
                "node_id",
                "JetStream keeps each node's durable consumer under its node id, so the id must \
                 stay the same across restarts: set node_id (for example from the host name and \
                 listen address); a generated id would start a new consumer on every start",
            ));
        }
        // Subscribed before the first look at the connection, so no event falls in between.
        let events = link.events();
        let link_health = LinkHealth::new(
            BACKEND,
            options.metrics.backend(BACKEND),
            options.metrics.clone(),
            link.is_connected(),
        );
        let inner = Arc::new(JetStream {
            metrics: options.metrics.backend(BACKEND),
            bus_metrics: options.metrics.clone(),
            consumer: ConsumerState::new(&options.node_id, &js),
            ledger: Arc::new(Ledger::new(js.max_ack_pending)),
            wait: nats.link.connect_timeout,
            framing: nats.framing,
            options,
            js,
            link,
            fanout: sync::Arc::new(Fanout::new()),
            status: Mutex::new(Status {
                link: link_health,
                stream: StreamStatus::Unchecked,
                consumer_failing: None,
                stream_recreated: None,
                twin: None,
                closed: false,
            }),
            stream_created: Mutex::new(None),
            claims: Mutex::new(()),
            reconnected: Notify::new(),
            status_changed: Notify::new(),
            pulling: AtomicBool::new(false),
            malformed_log: Mutex::new(LogLimiter::default()),
            closed: AtomicBool::new(false),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        inner.update(|_| ());
        let stream_ready = match stream::ensure(&inner).await {
            Ok(_) => true,
            Err(stream::StreamProblem::Incompatible { key, reason }) => {
                return Err(BusError::config(key, reason));
            }
            Err(stream::StreamProblem::Unavailable(reason)) => {
                inner.stream_unavailable(reason);
                false
            }
        };
        let claim = Claim::new(
            inner.link.clone(),
            &claim_prefix,
            &inner.options.node_id,
            &inner.options.ids,
        );
        // Asked once the server has answered about the stream (so the link is up); without a
        // server, the heartbeats tell later.
        if stream_ready && let Err(holder) = claim.probe(inner.js.api_timeout).await {
            return Err(BusError::config(
                "node_id",
                format!(
                    "node id {} is in use by another live process ({holder}); every process \
                     needs a node id of its own",
                    inner.options.node_id
                ),
            ));
        }
        inner
            .tasks
            .spawn(supervisor::supervise(inner.clone(), events, stream_ready));
        inner
            .tasks
            .spawn(supervisor::sweep_ack_pending(inner.clone()));
        let twins = inner.clone();
        inner.tasks.spawn(identity::hold(
            claim,
            inner.cancel.clone(),
            move |conflict| {
                tracing::error!(node = %twins.options.node_id, %conflict, "another live process uses this node id");
                twins.update(|status| status.twin = Some(conflict));
            },
        ));
        Ok(JetStreamBus { inner })
    }

    /// Registers a local subscriber and makes sure the node's consumer exists.
    async fn subscribe_now(&self, channel: &str) -> Result<Subscription, BusError> {
        let js = &self.inner;
        validate_channel(channel)?;
        js.refuse_if_unusable()?;
        let name: ChannelName = channel.into();
        let (id, queue) = js
            .fanout
            .subscribe(&name, js.options.subscriber_queue)
            .map_err(|_| BusError::Closed)?;
        let fanout = js.fanout.clone();
        let key = name.clone();
        let subscription = Subscription::new(
            name,
            queue,
            Box::new(move || {
                fanout.unsubscribe(&key, id);
            }),
        );
        let ready = js.consumer.wait_ready();
        js.start_pulling();
        js.claim_parked(channel).await;
        let outcome = match ready {
            None => Ok(()),
            Some(ready) => match tokio::time::timeout(js.wait, ready).await {
                Ok(Ok(readiness)) => match readiness {
                    Readiness::Ready => Ok(()),
                    Readiness::Refused(reason) => Err(BusError::Refused {
                        channel: channel.to_owned(),
                        reason,
                    }),
                    Readiness::Unavailable(reason) => Err(BusError::NotConnected(reason)),
                },
                Ok(Err(_)) => Err(BusError::Closed),
                Err(_) => Err(BusError::NotConnected(format!(
                    "the node's JetStream consumer {} was not confirmed within {:?}",
                    js.consumer.durable, js.wait
                ))),
            },
        };
        // On failure dropping the subscription undoes the registration.
        outcome.map(|()| subscription)
    }
}

#[async_trait]
impl MessageBus for JetStreamBus {
    async fn publish(&self, channel: &str, payload: Bytes) -> Result<PublishReceipt, BusError> {
        let result = publish::publish(&self.inner, channel, payload, None, Vec::new()).await;
        count_publish(&self.inner.metrics, &result);
        result
    }

    async fn publish_message(&self, message: Message) -> Result<PublishReceipt, BusError> {
        let Message {
            channel,
            payload,
            id,
            headers,
        } = message;
        let result = publish::publish(&self.inner, &channel, payload, id, headers).await;
        count_publish(&self.inner.metrics, &result);
        result
    }

    /// Subscribes; returns `Ok` only once the node's durable consumer exists on the server, so
    /// everything published after this returns is delivered. Fails with
    /// [`BusError::NotConnected`] when that cannot be confirmed within the link's connect
    /// timeout, and with [`BusError::Refused`] when the server refuses the consumer (a consumer
    /// limit); the registration is then undone.
    async fn subscribe(&self, channel: &str) -> Result<Subscription, BusError> {
        self.subscribe_now(channel).await
    }

    fn health(&self) -> Health {
        self.inner.health()
    }

    async fn wait_connected(&self) {
        loop {
            let changed = self.inner.status_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.inner.status().usable() || self.inner.closed.load(Ordering::Acquire) {
                return;
            }
            changed.await;
        }
    }

    fn options(&self) -> &BusOptions {
        &self.inner.options
    }

    fn guarantee(&self) -> Guarantee {
        Guarantee::AtLeastOnce
    }

    /// Ends every subscription (after what is queued has been read), stops the pull loop and
    /// the background tasks, hands what the node has not settled back to the server (its next
    /// run gets it at once), and closes the link. The node's consumer stays on the server, so a
    /// hub that starts again with the same node id continues where this one stopped. Bounded by
    /// the link's connect timeout when the server does not answer.
    async fn close(&self) {
        let js = &self.inner;
        let deadline = Instant::now() + js.wait;
        js.closed.store(true, Ordering::Release);
        js.fanout.close();
        js.cancel.cancel();
        js.tasks.close();
        if tokio::time::timeout_at(deadline, js.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("JetStream background tasks did not stop in time");
        }
        let unsettled = js.ledger.take_unsettled();
        if js.link.is_connected() {
            let decline = async {
                for root in &unsettled.roots {
                    let _ = crate::settle::Settle::nak(root.as_ref(), None).await;
                }
                for subject in &unsettled.subjects {
                    let _ = js
                        .link
                        .publish(super::link::LinkPublish {
                            subject: subject.clone(),
                            reply: None,
                            headers: Vec::new(),
                            payload: bytes::Bytes::from_static(b"-NAK"),
                        })
                        .await;
                }
                // The inbox subscription is gone and the naks are written. One round trip (the
                // server handles a connection's messages in order) makes sure the server has
                // processed both before the connection goes: otherwise a pull still pending
                // there could take a message for a connection that no longer reads, and the
                // node's next run would get it only after `ack_wait`.
                let left = deadline.saturating_duration_since(Instant::now());
                let _ = api::call::<serde::de::IgnoredAny>(
                    js.link.as_ref(),
                    "$JS.API.INFO".to_owned(),
                    &api::Empty {},
                    left.max(Duration::from_millis(1)),
                )
                .await;
            };
            if tokio::time::timeout_at(deadline, decline).await.is_err() {
                tracing::warn!(
                    "the server did not answer while the bus closed; unsettled deliveries come back after ack_wait"
                );
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, js.link.close()).await.is_err() {
            tracing::warn!("draining the NATS connection timed out");
        }
        js.bus_metrics.nats_ack_pending().set(0);
        js.update(|status| status.closed = true);
    }
}

impl Drop for JetStreamBus {
    fn drop(&mut self) {
        let js = &self.inner;
        js.closed.store(true, Ordering::Release);
        js.fanout.close();
        js.cancel.cancel();
        js.update(|status| status.closed = true);
    }
}
