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

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
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
    /// The client dropped messages for subscription `sid` because it was not read fast enough.
    SlowConsumer(u64),
    /// The server reported an error (authorization, ...).
    ServerError(String),
    /// The link will not reconnect any more (closed, or out of reconnect attempts).
    Closed,
}

/// A live core subscription; dropping it unsubscribes.
pub type LinkSubscription = BoxStream<'static, LinkMessage>;

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
