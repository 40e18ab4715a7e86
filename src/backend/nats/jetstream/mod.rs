//! JetStream: at-least-once delivery through a durable stream and one durable pull consumer per
//! (node, channel), all above the [`NatsLink`] seam.
//!
//! A [`JetStreamBus`] publishes each message into one stream (`publish.rs`) and waits for the
//! server's PubAck; each channel with local subscribers has one pull loop (`pull.rs`) that reads
//! the node's durable consumer of that channel (`consumer.rs`) and fans deliveries out to the
//! local subscriber queues, each delivery carrying an acker (`ack.rs`). Everything is plain
//! request/reply on `$JS.API.>` subjects with JSON bodies (`api.rs`), so it runs over any link.
//!
//! Promise: every publish that returned `Ok` (the PubAck arrived within `publish_timeout`) is
//! delivered at least once to every node that was subscribed to its channel when it was
//! published, across server crashes and restarts on the same store and across reconnects, as
//! long as the message is in the stream (`max_age`, `max_bytes`) and the node keeps its
//! subscription or comes back under the same node id. A message not acked within `ack_wait` is
//! delivered again, flagged [`crate::Delivery::redelivered`], and so is the replay of a
//! consumer that lost its state in a server crash; a duplicate always carries the original id.
//! One publisher's messages arrive in publish order, except for redeliveries and retries. What
//! was published before a node subscribed is not delivered to it. Subscribers must settle what
//! they receive (the [`crate::Hub`] acks after its local fan-out): a consumer with as many
//! unsettled deliveries as the server's `max_ack_pending` (1000 by default) receives nothing new
//! until some are acked or come back after `ack_wait`.
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
//! supervisor (`supervisor.rs`) has connected and confirmed the stream. Hubs therefore start
//! while NATS is down; publishes meanwhile fail after `publish_timeout`
//! ([`BusError::PublishTimeout`]) and subscriptions start receiving once the server is back.
//!
//! The subscriber-facing rules (shared acks, slow consumers, what happens on unsubscribe and on
//! close) are described where they are implemented, in `pull.rs` and `ack.rs`.

mod ack;
mod api;
mod channels;
mod consumer;
mod publish;
mod pull;
mod stream;
mod supervisor;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

pub use api::ApiError;

use super::link::{LinkError, NatsLink};
use super::{JetStreamOptions, NatsOptions};
use crate::backend::BusOptions;
use crate::bus::{BusError, Delivery, Health, Message, MessageBus, PublishReceipt, Subscription};
use crate::id::NodeId;
use crate::metrics::{BackendMetrics, BusMetrics};
use crate::queue::Fanout;
use crate::sync;

/// The `backend` label of the message counters: JetStream traffic is told apart from NATS Core
/// traffic on a dashboard.
const BACKEND: &str = "jetstream";

/// The `backend` label of `<ns>_bus_connected`: the connection is a NATS connection whichever
/// API runs over it, like `<ns>_bus_nats_reconnects_total`.
const CONNECTION: &str = "nats";

/// The bus's view of its NATS connection.
#[derive(Debug)]
enum Connection {
    /// Not connected yet.
    Connecting,
    Up,
    /// Lost, for this reason; the link reconnects.
    Lost(String),
    /// The link gave up for good.
    Ended,
}

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
struct State {
    connection: Connection,
    stream: StreamStatus,
    closed: bool,
}

impl State {
    fn health(&self, stream: &str) -> Health {
        if self.closed {
            return Health::down("the bus is closed");
        }
        match &self.connection {
            Connection::Up => {}
            Connection::Connecting => return Health::down("connecting to NATS"),
            Connection::Lost(reason) => {
                return Health::down(format!("NATS connection lost ({reason}); reconnecting"));
            }
            Connection::Ended => {
                return Health::down("the NATS connection closed and will not reconnect");
            }
        }
        match &self.stream {
            StreamStatus::Ready => Health::connected(),
            StreamStatus::Unchecked => Health::down(format!("checking JetStream stream {stream}")),
            StreamStatus::Unavailable(reason) => Health::down(format!(
                "JetStream stream {stream} is not available: {reason}"
            )),
            StreamStatus::Refused { key, reason } => {
                Health::down(format!("invalid configuration at `{key}`: {reason}"))
            }
        }
    }
}

/// State shared by the bus handle, its subscriptions, its pull loops and its supervisor.
#[derive(Debug)]
struct Shared {
    options: BusOptions,
    js: JetStreamOptions,
    link: Arc<dyn NatsLink>,
    metrics: BackendMetrics,
    bus_metrics: BusMetrics,
    /// Local subscribers by channel; a channel with subscribers has a pull loop.
    fanout: sync::Arc<Fanout<Delivery>>,
    state: Mutex<State>,
    channels: Mutex<channels::Channels>,
    /// Wakes the pull loops after a reconnect, in the order they started waiting.
    reconnected: Notify,
    closed: AtomicBool,
}

impl Shared {
    fn channels(&self) -> MutexGuard<'_, channels::Channels> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the state, then publishes the resulting health to `<ns>_bus_connected`.
    fn update<T>(&self, change: impl FnOnce(&mut State) -> T) -> T {
        let (result, connected) = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            // The first `Connected` event can pass before the link reports itself connected,
            // and so be missed by `start`; the link's own state settles it.
            if matches!(state.connection, Connection::Connecting) && self.link.is_connected() {
                state.connection = Connection::Up;
            }
            let result = change(&mut state);
            (result, state.health(&self.js.stream).is_connected())
        };
        self.bus_metrics.set_connected(CONNECTION, connected);
        result
    }

    fn health(&self) -> Health {
        self.update(|state| state.health(&self.js.stream))
    }

    fn stream_ready(&self) {
        self.update(|state| state.stream = StreamStatus::Ready);
    }

    fn stream_unavailable(&self, reason: String) {
        self.update(|state| state.stream = StreamStatus::Unavailable(reason));
    }

    fn stream_refused(&self, key: &'static str, reason: String) {
        self.update(|state| state.stream = StreamStatus::Refused { key, reason });
    }

    /// `Closed` after close, the configuration error while the stream is refused.
    fn refuse_if_unusable(&self) -> Result<(), BusError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        match &self.state.lock().unwrap_or_else(|e| e.into_inner()).stream {
            StreamStatus::Refused { key, reason } => Err(BusError::config(*key, reason.clone())),
            _ => Ok(()),
        }
    }
}

/// Maps a link failure to the bus's error.
fn link_error(error: LinkError) -> BusError {
    match error {
        LinkError::NotConnected(reason) => BusError::NotConnected(reason),
        LinkError::Closed => BusError::Closed,
        LinkError::NoResponders(subject) => {
            BusError::NotConnected(format!("no responders on {subject}"))
        }
        other => BusError::Backend(Box::new(other)),
    }
}

/// A background task and how to stop it.
#[derive(Debug)]
struct Background {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// A bus node on NATS JetStream: at-least-once, acknowledged publishes, durable consumers.
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
    shared: Arc<Shared>,
    background: Mutex<Vec<Background>>,
}

impl JetStreamBus {
    /// Starts the bus over `link` with the JetStream settings in `nats.jetstream`.
    ///
    /// Fails with [`BusError::Config`] when `nats.jetstream` is `None` or invalid, and when the
    /// stream exists with a configuration the bus cannot use (key `nats.jetstream.stream`); it
    /// never changes an existing stream. A server that does not answer within `api_timeout` does
    /// not fail the start: the bus reports down and keeps trying in the background.
    pub async fn start(
        options: BusOptions,
        nats: NatsOptions,
        link: Arc<dyn NatsLink>,
    ) -> Result<Self, BusError> {
        let Some(js) = nats.jetstream else {
            return Err(BusError::config(
                "nats.jetstream",
                "JetStream settings are missing: set them, or use the NATS Core bus",
            ));
        };
        stream::validate(&js)?;
        // Subscribed before the first look at the connection, so no event falls in between.
        let events = link.events();
        let connection = if link.is_connected() {
            Connection::Up
        } else {
            Connection::Connecting
        };
        let shared = Arc::new(Shared {
            metrics: options.metrics.backend(BACKEND),
            bus_metrics: options.metrics.clone(),
            options,
            js,
            link,
            fanout: sync::Arc::new(Fanout::new()),
            state: Mutex::new(State {
                connection,
                stream: StreamStatus::Unchecked,
                closed: false,
            }),
            channels: Mutex::new(channels::Channels::default()),
            reconnected: Notify::new(),
            closed: AtomicBool::new(false),
        });
        shared.update(|_| ());
        let stream_ready = match stream::ensure(&shared).await {
            Ok(_) => true,
            Err(stream::StreamProblem::Incompatible { key, reason }) => {
                return Err(BusError::config(key, reason));
            }
            Err(stream::StreamProblem::Unavailable(reason)) => {
                shared.stream_unavailable(reason);
                false
            }
        };
        let (stop_supervisor, stopped) = oneshot::channel();
        let supervisor = tokio::spawn(supervisor::supervise(
            shared.clone(),
            events,
            stopped,
            stream_ready,
        ));
        let (stop_sweep, stopped) = oneshot::channel();
        let sweep = tokio::spawn(supervisor::sweep_ack_pending(shared.clone(), stopped));
        Ok(JetStreamBus {
            shared,
            background: Mutex::new(vec![
                Background {
                    stop: stop_supervisor,
                    task: supervisor,
                },
                Background {
                    stop: stop_sweep,
                    task: sweep,
                },
            ]),
        })
    }

    fn take_background(&self) -> Vec<Background> {
        std::mem::take(&mut *self.background.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[async_trait]
impl MessageBus for JetStreamBus {
    async fn publish_message(&self, message: Message) -> Result<PublishReceipt, BusError> {
        let result = publish::publish(&self.shared, message).await;
        match &result {
            Ok(_) => self.shared.metrics.published.inc(),
            Err(_) => self.shared.metrics.publish_errors.inc(),
        }
        result
    }

    async fn subscribe(&self, channel: &str) -> Result<Subscription, BusError> {
        channels::subscribe(&self.shared, channel).await
    }

    fn health(&self) -> Health {
        self.shared.health()
    }

    fn node_id(&self) -> &NodeId {
        &self.shared.options.node_id
    }

    fn max_payload(&self) -> usize {
        self.shared.options.max_payload
    }

    /// Ends every subscription (after what is queued has been read), stops the pull loops and
    /// the supervisor, and drains the link. The node's consumers stay on the server, so a hub
    /// that starts again with the same node id continues where this one stopped; unacked
    /// deliveries come back to it.
    async fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.fanout.close();
        let background = self.take_background();
        let loops = self.shared.channels().close_all();
        let mut tasks = Vec::new();
        for Background { stop, task } in background {
            let _ = stop.send(());
            tasks.push(task);
        }
        for task in tasks {
            let _ = task.await;
        }
        for task in loops {
            task.join().await;
        }
        // The loops' inbox subscriptions are gone and the last acks are written. One round trip
        // (the server handles a connection's messages in order) makes sure the server has
        // processed both before the connection goes: otherwise a pull still pending there could
        // take a message published after `close` returned, for a connection that no longer
        // reads, and the node's next run would get it only after `ack_wait`.
        if self.shared.link.is_connected() {
            let _ = api::call::<serde::de::IgnoredAny>(
                self.shared.link.as_ref(),
                "$JS.API.INFO".to_owned(),
                &api::Empty {},
                self.shared.js.api_timeout,
            )
            .await;
        }
        self.shared.link.close().await;
        self.shared.bus_metrics.nats_ack_pending().set(0);
        self.shared.update(|state| state.closed = true);
    }
}

impl Drop for JetStreamBus {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.fanout.close();
        for Background { task, .. } in self.take_background() {
            task.abort();
        }
        // Dropping the handles aborts the loops.
        drop(self.shared.channels().close_all());
        self.shared.update(|state| state.closed = true);
    }
}
