//! [`WireLink`]: a [`NatsLink`] that speaks the NATS client protocol itself, over any
//! [`Connector`].
//!
//! async-nats opens its own sockets, so the production link cannot run on turmoil's simulated
//! network. This link can: on [`TokioTcp`](crate::transport::TokioTcp) it talks to a real
//! nats-server, on `TurmoilTcp` to a simulated one, with the same code. The conformance suite
//! runs over it against a real server too, which is how the simulation's fidelity is measured
//! rather than assumed. It does what the bus needs and no more: plain TCP, user and password or
//! a token, no TLS, no JWT.
//!
//! The pieces:
//! - `protocol.rs`: the bytes: a parser of what a server sends and the encoders of what a client
//!   sends (public, so it can be fuzzed);
//! - `servers.rs`: where to connect and the reconnect policy, settled from [`LinkOptions`];
//! - `supervisor.rs`: the one task that owns the connection: connect, handshake, renew the
//!   subscriptions, read and write, ping, reconnect.
//!
//! Callers talk to that task through one bounded command queue, so whatever `publish` and
//! `subscribe` have handed over is written in the order it was handed over, on one connection
//! (the order [`NatsLink`] promises). While the link is disconnected the queue is not read:
//! what is published waits there (and a full queue makes `publish` wait), to be written after
//! the subscriptions are renewed on the next connection, as async-nats does.
//!
//! Only deterministic primitives are used, so a simulation with the same seed replays the
//! same run: tokio time, one random generator seeded by the caller (inbox names, reconnect
//! jitter), ordered maps, biased `select!`s.

pub mod protocol;
mod servers;
mod supervisor;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_core::Stream;
use futures_core::stream::BoxStream;
use rand::SeedableRng;
use rand::distr::{Alphanumeric, SampleString};
use rand::rngs::StdRng;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::protocol::{HeaderBlock, check_subject};
use self::servers::Plan;
use self::supervisor::Command;
use super::link::{
    LinkError, LinkEvent, LinkMessage, LinkPublish, LinkSubscription, NatsLink, transit_capacity,
};
use super::{EVENT_BACKLOG, LinkOptions, event_stream};
use crate::bus::BusError;
use crate::transport::Connector;

/// How many operations callers may queue for the connection (async-nats's default client
/// capacity); while disconnected, `publish` waits once it is full.
const COMMAND_QUEUE: usize = 2048;

/// The length of the random part of inbox names.
const INBOX_TOKEN_LEN: usize = 22;

/// A [`NatsLink`] over a [`Connector`]; see the module documentation.
///
/// ```no_run
/// # async fn demo() -> Result<(), hubbus::BusError> {
/// use std::sync::Arc;
/// use hubbus::backend::nats::{NatsCoreBus, NatsOptions, WireLink};
/// use hubbus::transport::TokioTcp;
/// use hubbus::BusOptions;
///
/// let nats = NatsOptions::new("nats://127.0.0.1:4222");
/// // Every link needs its own seed: it names the link's inboxes.
/// let link = WireLink::connect(nats.link.clone(), Arc::new(TokioTcp), 17).await?;
/// let bus = NatsCoreBus::start(BusOptions::default(), nats, Arc::new(link))?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct WireLink {
    shared: Arc<Shared>,
}

/// What the link's handle, its subscriptions and its connection task share.
#[derive(Debug)]
struct Shared {
    plan: Plan,
    commands: mpsc::Sender<Command>,
    /// Subscriptions ask to be ended here when dropped; at most one item per subscription.
    unsubscribes: mpsc::UnboundedSender<u64>,
    events: broadcast::Sender<LinkEvent>,
    connected: AtomicBool,
    /// The server's `max_payload`; 0 until the first `INFO`.
    max_payload: AtomicUsize,
    /// `close` was called: every new operation fails with [`LinkError::Closed`].
    closing: AtomicBool,
    /// Why the connection task ended, once it has.
    ended: Mutex<Option<LinkError>>,
    next_sid: AtomicU64,
    /// The one random source: inbox names and reconnect jitter.
    rng: Mutex<StdRng>,
    replies: Mutex<Replies>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

/// The requests waiting for a reply. All replies arrive on one wildcard subscription,
/// `<prefix>*` (sid [`Replies::sid`]), made with the first request, and are routed by the
/// token after the prefix, as async-nats does.
#[derive(Debug)]
struct Replies {
    /// `_INBOX.<random>.`
    prefix: String,
    sid: u64,
    next_token: u64,
    waiting: BTreeMap<u64, oneshot::Sender<LinkMessage>>,
}

impl Shared {
    fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
        // Every update under these locks is a single insert, remove or assignment, so the data
        // stays consistent even if a holder panicked.
        mutex.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn rng(&self) -> MutexGuard<'_, StdRng> {
        Self::lock(&self.rng)
    }

    fn replies(&self) -> MutexGuard<'_, Replies> {
        Self::lock(&self.replies)
    }

    /// Sends `event` to every current [`NatsLink::events`] stream.
    fn report(&self, event: LinkEvent) {
        // No stream listening is fine: events are advisory, and the state is also available
        // from `is_connected`.
        if self.events.send(event).is_err() {
            tracing::trace!("no listener for a NATS link event");
        }
    }

    /// Fails when the link is closed or its connection task has given up.
    fn check_open(&self) -> Result<(), LinkError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(LinkError::Closed);
        }
        match Self::lock(&self.ended).as_ref() {
            Some(ended) => Err(ended.clone()),
            None => Ok(()),
        }
    }

    /// Why an operation could not reach the connection task: it has ended.
    fn ended_error(&self) -> LinkError {
        if self.closing.load(Ordering::Acquire) {
            return LinkError::Closed;
        }
        Self::lock(&self.ended)
            .clone()
            .unwrap_or_else(|| LinkError::NotConnected("the NATS connection task ended".into()))
    }

    /// Hands `command` to the connection task, waiting while the queue is full.
    async fn send(&self, command: Command) -> Result<(), LinkError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| self.ended_error())
    }

    /// Checks `message` and prepares it for the wire.
    fn outgoing(&self, message: LinkPublish) -> Result<Outgoing, LinkError> {
        let invalid = |error: protocol::ProtocolError| LinkError::Invalid(error.to_string());
        check_subject(&message.subject).map_err(invalid)?;
        if let Some(reply) = &message.reply {
            check_subject(reply).map_err(invalid)?;
        }
        let headers = if message.headers.is_empty() {
            None
        } else {
            let block = HeaderBlock {
                headers: message.headers,
                ..HeaderBlock::default()
            };
            Some(block.encode().map_err(invalid)?)
        };
        let outgoing = Outgoing {
            subject: message.subject,
            reply: message.reply,
            headers,
            payload: message.payload,
        };
        let limit = self.max_payload.load(Ordering::Acquire);
        if limit > 0 && outgoing.size() > limit {
            return Err(LinkError::PayloadTooLarge {
                size: outgoing.size(),
                limit,
            });
        }
        Ok(outgoing)
    }

    /// A fresh `_INBOX.<random>` name.
    fn inbox(&self) -> String {
        format!("_INBOX.{}", random_token(&mut self.rng()))
    }

    /// Hands a reply that arrived on the reply subscription to the request waiting for it.
    fn route_reply(&self, message: LinkMessage) {
        let mut replies = self.replies();
        let token = (message.subject.strip_prefix(replies.prefix.as_str()))
            .and_then(|token| token.parse::<u64>().ok());
        // A reply nobody waits for any more (the request timed out) is dropped; so is anything
        // else on the subject.
        if let Some(waiting) = token.and_then(|token| replies.waiting.remove(&token))
            && waiting.send(message).is_err()
        {
            tracing::trace!("a reply arrived as its request gave up");
        }
    }
}

/// `len` random letters and digits.
fn random_token(rng: &mut StdRng) -> String {
    Alphanumeric.sample_string(rng, INBOX_TOKEN_LEN)
}

/// A message ready for the wire: checked, its headers encoded.
#[derive(Debug)]
#[cfg_attr(hubbus_planted, derive(Clone))]
struct Outgoing {
    subject: String,
    reply: Option<String>,
    headers: Option<Bytes>,
    payload: Bytes,
}

impl Outgoing {
    /// What the server counts against its `max_payload`: header block and payload.
    fn size(&self) -> usize {
        self.headers.as_ref().map_or(0, Bytes::len) + self.payload.len()
    }
}

/// A request's place in [`Replies::waiting`]; removed when the request ends, however it ends.
struct WaitingReply<'a> {
    shared: &'a Shared,
    token: u64,
}

impl Drop for WaitingReply<'_> {
    fn drop(&mut self) {
        self.shared.replies().waiting.remove(&self.token);
    }
}

/// A live subscription's stream; dropping it asks the connection task to unsubscribe.
struct WireSubscription {
    sid: u64,
    messages: mpsc::Receiver<LinkMessage>,
    unsubscribe: mpsc::UnboundedSender<u64>,
}

impl Stream for WireSubscription {
    type Item = LinkMessage;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<LinkMessage>> {
        self.messages.poll_recv(cx)
    }
}

impl Drop for WireSubscription {
    fn drop(&mut self) {
        // Nothing more is taken in; the connection task sees the channel closed even before it
        // reads the request below.
        self.messages.close();
        if self.unsubscribe.send(self.sid).is_err() {
            tracing::trace!(sid = self.sid, "the NATS link ended before the unsubscribe");
        }
    }
}

impl WireLink {
    /// Starts the link: a background task connects through `connector` and keeps reconnecting
    /// as `options` say (see the module documentation for what is not supported).
    ///
    /// Fails only for options this link cannot honour ([`BusError::Config`]: TLS, WebSocket or
    /// `.creds` URLs and settings, a zero connect timeout, no server); a server that is not up
    /// yet is retried in the background, as after any disconnect.
    ///
    /// `seed` drives everything random the link does (inbox names, reconnect jitter), so the
    /// same seed replays the same run in a simulation. It names the link's inboxes: links that
    /// share a server need different seeds.
    pub async fn connect(
        options: LinkOptions,
        connector: Arc<dyn Connector>,
        seed: u64,
    ) -> Result<Self, BusError> {
        let plan = Plan::new(&options)?;
        let mut rng = StdRng::seed_from_u64(seed);
        let prefix = format!("_INBOX.{}.", random_token(&mut rng));
        let (commands, command_queue) = mpsc::channel(COMMAND_QUEUE);
        let (unsubscribes, unsubscribe_queue) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        let shared = Arc::new(Shared {
            plan,
            commands,
            unsubscribes,
            events,
            connected: AtomicBool::new(false),
            max_payload: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            ended: Mutex::new(None),
            // The reply subscription takes sid 1; the others count on from 2.
            next_sid: AtomicU64::new(2),
            rng: Mutex::new(rng),
            replies: Mutex::new(Replies {
                prefix,
                sid: 1,
                next_token: 1,
                waiting: BTreeMap::new(),
            }),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        shared.tasks.spawn(supervisor::run(
            shared.clone(),
            connector,
            command_queue,
            unsubscribe_queue,
        ));
        Ok(WireLink { shared })
    }
}

impl Drop for WireLink {
    fn drop(&mut self) {
        // The connection task ends at its next turn; its subscriptions end with it.
        self.shared.cancel.cancel();
    }
}

#[async_trait]
impl NatsLink for WireLink {
    /// Queues `message` for the connection. Fails at once, writing nothing, for a message over
    /// the server's `max_payload` or a subject or header that cannot be written. While the link
    /// is disconnected the message waits for the next connection (and this call waits while
    /// the queue is full).
    async fn publish(&self, message: LinkPublish) -> Result<(), LinkError> {
        let shared = &self.shared;
        shared.check_open()?;
        let outgoing = shared.outgoing(message)?;
        shared.send(Command::Publish(outgoing)).await
    }

    /// A `PING` / `PONG` round trip: once it returns, the server has processed everything
    /// written before. Fails at once while disconnected.
    async fn flush(&self) -> Result<(), LinkError> {
        let shared = &self.shared;
        shared.check_open()?;
        if !shared.connected.load(Ordering::Acquire) {
            return Err(LinkError::NotConnected(
                "not connected to a NATS server".into(),
            ));
        }
        let (done, answered) = oneshot::channel();
        shared.send(Command::Flush(done)).await?;
        answered.await.map_err(|_| match shared.check_open() {
            Err(error) => error,
            Ok(()) => {
                LinkError::NotConnected("the connection was lost before the server answered".into())
            }
        })
    }

    /// Publishes with a reply subject on the link's reply subscription and waits up to
    /// `timeout` (queueing included) for the first reply. A `503` status reply is
    /// [`LinkError::NoResponders`].
    async fn request(
        &self,
        message: LinkPublish,
        timeout: Duration,
    ) -> Result<LinkMessage, LinkError> {
        let shared = &self.shared;
        shared.check_open()?;
        let subject = message.subject.clone();
        let mut outgoing = shared.outgoing(message)?;
        let (token, reply) = {
            let mut replies = shared.replies();
            let token = replies.next_token;
            replies.next_token += 1;
            let (sender, reply) = oneshot::channel();
            replies.waiting.insert(token, sender);
            outgoing.reply = Some(format!("{}{token}", replies.prefix));
            (token, reply)
        };
        let _waiting = WaitingReply { shared, token };
        let answered = async {
            shared.send(Command::Request(outgoing)).await?;
            reply.await.map_err(|_| shared.ended_error())
        };
        match tokio::time::timeout(timeout, answered).await {
            Err(_) => Err(LinkError::Timeout(timeout)),
            Ok(Err(error)) => Err(error),
            Ok(Ok(reply)) if reply.status == Some(503) => Err(LinkError::NoResponders(subject)),
            Ok(Ok(reply)) => Ok(reply),
        }
    }

    /// Queues a `SUB`; the subscription is renewed on every new connection until the stream is
    /// dropped. A stream read too slowly drops its oldest messages beyond
    /// `subscription_capacity`, each counted in the subscription
    /// ([`LinkSubscription::take_dropped`]).
    async fn subscribe(&self, subject: &str) -> Result<LinkSubscription, LinkError> {
        let shared = &self.shared;
        shared.check_open()?;
        check_subject(subject).map_err(|error| LinkError::Invalid(error.to_string()))?;
        let sid = shared.next_sid.fetch_add(1, Ordering::Relaxed);
        let capacity = shared.plan.subscription_capacity;
        let (sender, messages) = mpsc::channel(transit_capacity(capacity));
        shared
            .send(Command::Subscribe {
                sid,
                subject: subject.to_owned(),
                sender,
            })
            .await?;
        let subscription = WireSubscription {
            sid,
            messages,
            unsubscribe: shared.unsubscribes.clone(),
        };
        Ok(LinkSubscription::buffered(subscription, capacity))
    }

    fn new_inbox(&self) -> String {
        self.shared.inbox()
    }

    fn events(&self) -> BoxStream<'static, LinkEvent> {
        event_stream(self.shared.events.subscribe())
    }

    fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    fn max_payload(&self) -> Option<usize> {
        Some(self.shared.max_payload.load(Ordering::Acquire)).filter(|max| *max > 0)
    }

    /// Drains (writes what is queued and waits for the server's `PONG` after it, up to the
    /// connect timeout) and closes. Afterwards every operation fails with
    /// [`LinkError::Closed`], subscriptions end, and [`LinkEvent::Closed`] is reported.
    async fn close(&self) {
        let shared = &self.shared;
        if !shared.closing.swap(true, Ordering::AcqRel) && shared.connected.load(Ordering::Acquire)
        {
            let (done, drained) = oneshot::channel();
            let drain = async {
                shared.commands.send(Command::Drain(done)).await.is_ok() && drained.await.is_ok()
            };
            match tokio::time::timeout(shared.plan.connect_timeout, drain).await {
                Ok(true) => tracing::debug!("the NATS connection drained"),
                Ok(false) => tracing::debug!("the NATS connection ended while draining"),
                Err(_) => tracing::debug!(
                    timeout = ?shared.plan.connect_timeout,
                    "the NATS connection did not drain in time; closing it"
                ),
            }
        }
        shared.cancel.cancel();
        shared.tasks.close();
        shared.tasks.wait().await;
    }
}
