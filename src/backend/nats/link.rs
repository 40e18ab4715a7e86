//! The narrow seam below the NATS backend: [`NatsLink`], a message-level NATS client.
//!
//! async-nats opens its own sockets and cannot run on turmoil's simulated network, so every
//! piece of bus logic (the subscription registry, JetStream stream and consumer lifecycle, the
//! pull loop, ack/nak, de-duplication, consumer re-creation after restarts, metrics) lives above
//! this trait, and the trait itself only moves NATS messages. The production implementation
//! wraps async-nats ([`super::AsyncNatsLink`]); a simulated one speaks the NATS protocol over a
//! `Connector`. The conformance suite runs over both, so the simulation's fidelity is measured.
//!
//! JetStream needs nothing more than this: its API is request/reply on `$JS.API.>` subjects,
//! pull consumers deliver to an inbox subscription, and acks are publishes to a reply subject.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_core::Stream;
use futures_core::stream::BoxStream;

/// One NATS message as the link delivers it.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkMessage {
    /// The subject it was published to.
    pub subject: String,
    /// The reply subject, if the publisher set one (JetStream: the ack subject).
    pub reply: Option<String>,
    /// Headers, in order (a key may repeat).
    pub headers: Vec<(String, String)>,
    /// The payload.
    pub payload: Bytes,
    /// The status code of a status message (`NATS/1.0 404 No Messages`), if it is one.
    pub status: Option<u16>,
    /// The status description, if any (`No Messages`).
    pub description: Option<String>,
}

impl fmt::Debug for LinkMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkMessage")
            .field("subject", &self.subject)
            .field("reply", &self.reply)
            .field("headers", &self.headers)
            .field("payload_len", &self.payload.len())
            .field("status", &self.status)
            .finish()
    }
}

impl LinkMessage {
    /// The first value of header `key` (case-sensitive, as NATS headers are).
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A message to publish through the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkPublish {
    /// The subject.
    pub subject: String,
    /// A reply subject for the receiver (JetStream: where the PubAck goes).
    pub reply: Option<String>,
    /// Headers (`Nats-Msg-Id`, ...).
    pub headers: Vec<(String, String)>,
    /// The payload.
    pub payload: Bytes,
}

/// How a link operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// No connection right now (the link keeps reconnecting) or it broke under the operation.
    #[error("not connected: {0}")]
    NotConnected(String),
    /// A request got no reply in time.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// A request was answered with "no responders" (nobody subscribes to the subject).
    #[error("no responders on {0}")]
    NoResponders(String),
    /// The link was closed.
    #[error("the link is closed")]
    Closed,
    /// The message is larger than the server's `max_payload` (headers and payload together);
    /// nothing was written (the server would have closed the connection).
    #[error("a message of {size} bytes is over the server's limit of {limit} bytes")]
    PayloadTooLarge {
        /// The message's size: header block and payload.
        size: usize,
        /// The server's `max_payload`.
        limit: usize,
    },
    /// The message cannot be written as it is (a subject or header that would break the
    /// protocol's framing); nothing was written.
    #[error("cannot be written: {0}")]
    Invalid(String),
    /// Anything else the client reported.
    #[error("{0}")]
    Other(String),
}

/// What happened to the connection, as the link reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkEvent {
    /// Connected (the first time or again after a disconnect).
    Connected,
    /// The connection was lost; the link is reconnecting.
    Disconnected(String),
    /// The client dropped a message for subscription `sid` because it was not read fast enough
    /// (one event per message; drops a [`LinkSubscription`] counts itself are not reported here).
    SlowConsumer(u64),
    /// The server reported an error (authorization, ...).
    ServerError(String),
    /// The link will not reconnect any more (closed, or out of reconnect attempts).
    Closed,
}

/// A live core subscription: its messages in arrival order, as a [`Stream`], and how many of
/// them the link dropped because the stream was read too slowly. Dropping it unsubscribes.
///
/// A link that buffers the subscription's messages counts each one it drops in the counter
/// given to [`LinkSubscription::counting_drops`]; the reader takes the count with
/// [`LinkSubscription::take_dropped`] after each message, so no drop goes uncounted and each is
/// counted once. (A link that can only report drops through [`LinkEvent::SlowConsumer`] uses
/// [`LinkSubscription::new`], whose count stays zero.)
pub struct LinkSubscription {
    messages: BoxStream<'static, LinkMessage>,
    dropped: Arc<AtomicU64>,
}

impl LinkSubscription {
    /// A subscription whose drops, if any, are reported as events only.
    pub fn new(messages: impl Stream<Item = LinkMessage> + Send + 'static) -> Self {
        Self::counting_drops(messages, Arc::default())
    }

    /// A subscription whose link adds every message it drops to `dropped`.
    pub fn counting_drops(
        messages: impl Stream<Item = LinkMessage> + Send + 'static,
        dropped: Arc<AtomicU64>,
    ) -> Self {
        LinkSubscription {
            messages: Box::pin(messages),
            dropped,
        }
    }

    /// A subscription over a client's channel of messages (`messages`), read through a buffer
    /// of `capacity` messages that drops its oldest when full and counts each drop.
    ///
    /// A client that drops a message when a subscription's channel is full can only report it
    /// as an event (async-nats through an event channel that itself drops events when full), so
    /// under a flood drops would go uncounted. Instead every read first moves everything
    /// waiting in the client's channel into this buffer: a reader that falls behind loses
    /// messages here, each counted once. The client's channel ([`transit_capacity`], at least
    /// [`MIN_TRANSIT`]) then only holds what arrives between two reads; it overflows, reported
    /// as [`LinkEvent::SlowConsumer`], only if the subscription is not read at all for as long
    /// as it takes to fill it.
    pub(crate) fn buffered<S>(messages: S, capacity: usize) -> Self
    where
        S: Stream + Unpin + Send + 'static,
        S::Item: Into<LinkMessage> + Send,
    {
        let dropped = Arc::new(AtomicU64::new(0));
        let drained = Drained {
            subscriber: messages,
            buffer: VecDeque::new(),
            capacity: capacity.max(1),
            dropped: dropped.clone(),
            ended: false,
        };
        Self::counting_drops(drained, dropped)
    }

    /// The same subscription with its message stream passed through `wrap` (to observe or
    /// transform it); the drop count stays with it.
    pub fn wrap<S>(self, wrap: impl FnOnce(BoxStream<'static, LinkMessage>) -> S) -> Self
    where
        S: Stream<Item = LinkMessage> + Send + 'static,
    {
        Self::counting_drops(wrap(self.messages), self.dropped)
    }

    /// The messages dropped since the last call (each drop is returned by exactly one call).
    pub fn take_dropped(&self) -> u64 {
        if self.dropped.load(Ordering::Relaxed) == 0 {
            // The common case, without a write to a line the link's side may be using.
            return 0;
        }
        self.dropped.swap(0, Ordering::AcqRel)
    }
}

impl Stream for LinkSubscription {
    type Item = LinkMessage;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<LinkMessage>> {
        self.messages.as_mut().poll_next(cx)
    }
}

/// The least a client's own channel of one subscription holds (see
/// [`LinkSubscription::buffered`]).
pub(crate) const MIN_TRANSIT: usize = 65_536;

/// The size of a client's channel for a subscription read through a buffer of `capacity`.
pub(crate) fn transit_capacity(capacity: usize) -> usize {
    capacity.max(MIN_TRANSIT)
}

/// A subscription's messages, moved out of the client's channel into the link's own buffer at
/// every read.
///
/// See [`LinkSubscription::buffered`].
struct Drained<S: Stream> {
    subscriber: S,
    buffer: VecDeque<S::Item>,
    capacity: usize,
    dropped: Arc<AtomicU64>,
    /// The client ended the subscription; what is buffered is still delivered.
    ended: bool,
}

// Nothing in it is pinned: the buffered messages are moved freely.
impl<S: Stream + Unpin> Unpin for Drained<S> {}

impl<S> Stream for Drained<S>
where
    S: Stream + Unpin,
    S::Item: Into<LinkMessage>,
{
    type Item = LinkMessage;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<LinkMessage>> {
        // One unit of the task's cooperative budget per message handed out, as any tokio
        // channel spends, so that a busy channel's reader still yields to other tasks.
        let progress = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        let this = &mut *self;
        // Emptying the client's channel spends none: were it limited to the budget's 128
        // messages per turn, a reader scheduled less often than every 128 arrivals would leave
        // the rest in the client's channel until it overflowed there, uncounted.
        let mut drain = std::pin::pin!(tokio::task::coop::unconstrained(std::future::poll_fn(
            |cx| Poll::Ready(this.drain(cx))
        )));
        let Poll::Ready(dropped) = drain.as_mut().poll(cx) else {
            unreachable!("draining never waits")
        };
        if dropped > 0 {
            this.dropped.fetch_add(dropped, Ordering::AcqRel);
        }
        match this.buffer.pop_front() {
            Some(message) => {
                progress.made_progress();
                Poll::Ready(Some(message.into()))
            }
            None if this.ended => Poll::Ready(None),
            None => Poll::Pending,
        }
    }
}

impl<S> Drained<S>
where
    S: Stream + Unpin,
{
    /// Moves what waits in the client's channel into the buffer (at most one channel's worth,
    /// so a producer as fast as this loop cannot keep it going), dropping the oldest beyond
    /// the capacity; returns how many it dropped.
    fn drain(&mut self, cx: &mut Context<'_>) -> u64 {
        let mut dropped = 0;
        for _ in 0..transit_capacity(self.capacity) {
            if self.ended {
                break;
            }
            match Pin::new(&mut self.subscriber).poll_next(cx) {
                Poll::Ready(Some(message)) => {
                    if self.buffer.len() >= self.capacity {
                        self.buffer.pop_front();
                        dropped += 1;
                    }
                    self.buffer.push_back(message);
                }
                Poll::Ready(None) => self.ended = true,
                Poll::Pending => break,
            }
        }
        dropped
    }
}

impl fmt::Debug for LinkSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkSubscription")
            .field("dropped", &self.dropped.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A message-level NATS client: everything the NATS backend needs from the wire.
///
/// Implementations reconnect by themselves (the production link as async-nats configures it),
/// keep their subscriptions across reconnects, and report what happened through
/// [`NatsLink::events`].
///
/// NATS Core confirms publishes and subscriptions with round trips through the link (a
/// message to a subject only the bus subscribes to comes back after everything written before
/// it), so implementations must keep the order the server relies on:
/// - what [`NatsLink::publish`] and [`NatsLink::subscribe`] have handed over by the time they
///   return is written to the server before anything handed over later, on one connection;
/// - after a reconnect the subscriptions are renewed on the new connection before anything
///   else is written;
/// - the connection receives its own messages (no `no_echo`);
/// - a lost connection is reported through [`NatsLink::events`] as soon as it is noticed.
#[async_trait]
pub trait NatsLink: Send + Sync + fmt::Debug + 'static {
    /// Writes `message` (buffered; see [`NatsLink::flush`]).
    async fn publish(&self, message: LinkPublish) -> Result<(), LinkError>;

    /// Returns once everything [`NatsLink::publish`] handed over before the call has been
    /// written to the connection's socket (NATS Core's `flush` publish mode relies on it).
    /// async-nats flushes its buffer; a link may do more (the wire link waits for a `PONG`).
    async fn flush(&self) -> Result<(), LinkError>;

    /// Sends a request and waits up to `timeout` for the first reply (JetStream API calls,
    /// publishes that want a PubAck). Many requests may be in flight at once.
    async fn request(
        &self,
        message: LinkPublish,
        timeout: Duration,
    ) -> Result<LinkMessage, LinkError>;

    /// Subscribes to `subject` (wildcards allowed). Messages arrive in order on the stream,
    /// across reconnects, until the stream is dropped.
    async fn subscribe(&self, subject: &str) -> Result<LinkSubscription, LinkError>;

    /// A fresh, unique inbox subject for replies.
    fn new_inbox(&self) -> String;

    /// The connection events since this call: each call returns an independent stream.
    fn events(&self) -> BoxStream<'static, LinkEvent>;

    /// True while connected.
    fn is_connected(&self) -> bool;

    /// The largest message (headers and payload) the server accepts, once known from the
    /// server's `INFO`; `None` before the first connection.
    fn max_payload(&self) -> Option<usize>;

    /// Drains and closes the connection; afterwards every operation fails with
    /// [`LinkError::Closed`].
    async fn close(&self);
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    fn numbered(n: u32) -> LinkMessage {
        LinkMessage {
            subject: "s".into(),
            reply: None,
            headers: Vec::new(),
            payload: bytes::Bytes::from(n.to_string()),
            status: None,
            description: None,
        }
    }

    /// Everything waiting in the client's channel is moved into the buffer at the next read; what
    /// does not fit drops the oldest, and every drop is counted once.
    #[tokio::test]
    async fn a_read_takes_all_that_waits_and_counts_each_drop_of_the_oldest() {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        let mut subscription = LinkSubscription::buffered(tokio_stream_of(receiver), 10);
        for n in 0..100 {
            sender.send(numbered(n)).unwrap();
        }
        let first = subscription.next().await.unwrap();
        assert_eq!(first.payload.as_ref(), b"90", "the newest ten are kept");
        assert_eq!(subscription.take_dropped(), 90);
        assert_eq!(subscription.take_dropped(), 0, "each drop is taken once");
        for n in 91..100 {
            let message = subscription.next().await.unwrap();
            assert_eq!(message.payload, bytes::Bytes::from(n.to_string()));
        }
        // A reader that keeps up drops nothing.
        for n in 100..150 {
            sender.send(numbered(n)).unwrap();
            let message = subscription.next().await.unwrap();
            assert_eq!(message.payload, bytes::Bytes::from(n.to_string()));
        }
        assert_eq!(subscription.take_dropped(), 0);
        // What was buffered when the client ended the subscription is still delivered.
        sender.send(numbered(150)).unwrap();
        drop(sender);
        assert_eq!(subscription.next().await.unwrap().payload.as_ref(), b"150");
        assert!(subscription.next().await.is_none());
    }

    /// A read empties the client's channel whatever the task's cooperative budget (128): a
    /// reader scheduled less often than every 128 arrivals would otherwise leave the rest to
    /// overflow there, uncounted.
    #[tokio::test]
    async fn a_read_empties_the_clients_channel_beyond_the_cooperative_budget() {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        let mut subscription = LinkSubscription::buffered(tokio_stream_of(receiver), 10);
        for n in 0..1_000 {
            sender.send(numbered(n)).unwrap();
        }
        let first = subscription.next().await.unwrap();
        assert_eq!(first.payload.as_ref(), b"990");
        assert_eq!(subscription.take_dropped(), 990);
    }

    fn tokio_stream_of(
        receiver: tokio::sync::mpsc::UnboundedReceiver<LinkMessage>,
    ) -> BoxStream<'static, LinkMessage> {
        futures_util::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|message| (message, receiver))
        })
        .boxed()
    }
}
