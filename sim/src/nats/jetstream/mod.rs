//! The JetStream subset of the fake NATS server, as a state machine without I/O.
//!
//! The server calls [`Engine::publish`] for every message a client publishes to a subject the
//! engine [`handles`](Engine::handles) (`$JS.API.>`, the ack subjects of the consumers that
//! exist and every subject a stream captures) and delivers the [`Outbound`] messages it
//! answers, in order, as if the server had published them. It calls [`Engine::tick`] once simulated time reaches
//! [`Engine::next_deadline`] (ack-wait redelivery, pull expiry, inactive consumers, delayed
//! PubAcks). Time is the simulation's elapsed time, which keeps counting across restarts of
//! the host's software.
//!
//! The [`JetStreamStore`] is the "disk": streams, their messages and consumer state live
//! there, outside the host's software, so they survive a restart; what a real server keeps only
//! in memory (waiting pull requests, redelivery queues, timers) lives in the [`Engine`] and dies
//! with it.
//!
//! What the server around the engine must do, as nats-server does:
//! - a message on a stream's subject still goes to ordinary subscriptions too (a stream is one
//!   more subscriber); the engine only adds the PubAck;
//! - a request to a subject the engine handles has a responder, whether or not the engine
//!   answers (a real server is subscribed to `$JS.API.>` and stays silent for an unknown API
//!   subject or a pull on a missing consumer), so it never gets `503 No Responders`;
//! - an [`Outbound`] goes to the subscriptions matching its `subject`; when
//!   [`Outbound::message_subject`] is set (a delivery to a pull request's inbox), the receiving
//!   client sees that subject in its `MSG`/`HMSG` line instead.
//!
//! The module follows nats-server 2.9.10: `api.rs` answers the API, `stream.rs` stores
//! messages, `consumer.rs` keeps a consumer's state and acks, `pull.rs` holds the waiting pull
//! requests, `ack.rs` reads ack subjects, `engine.rs` runs the delivery loop and the timers,
//! `store.rs` is the disk with its faults, `json.rs` reads and writes JSON as Go does, and
//! `subject.rs` matches subjects. Replies were compared with a real 2.9.10 server's, byte for
//! byte where the tests say "recorded", and `sim/tests/nats_differential.rs` keeps comparing
//! them, field by field, on generated sequences of API calls, publishes, pulls and acks.
//!
//! # Where it differs from nats-server 2.9.10
//!
//! None of these touches what the JetStream bus sends or reads:
//! - Time is exact. Pull expiry, heartbeats and ack-wait checks fire at their deadline (the
//!   server: when its goroutines get to it); the random parts are fixed: a restored consumer
//!   checks its pending messages after 1 s (the server: 0.5 to 1.5 s), the inactivity check
//!   runs `inactive_threshold` + 100 ms after the last activity (the server: + 100 ms to 1 s).
//!   A message id leaves the duplicate window exactly when the window ends (the server purges
//!   on a timer, a little later).
//! - Times are 2023-01-01T00:00:00Z plus the simulated elapsed time ([`EPOCH_UNIX_NANOS`]). A
//!   consumer's `created` stays the same across restarts (the server re-reads it, a few
//!   microseconds off; a stream's `created` stays on both).
//! - Consumer state is persisted exactly as it is in memory. The server writes it
//!   asynchronously, so a killed server may redeliver the last acknowledged messages, and
//!   messages dropped for `max_deliver` come back as pending after a restart until delivered
//!   (and dropped) once more: the real server redelivers more than the engine after a crash.
//! - Not modelled, answered with the configuration echoed: push delivery (a push consumer is
//!   stored and reported; a pull on it gets `409 Consumer is push based`), mirrors and
//!   sources, republish, `interest` and `workqueue` retention (stored as limits), replay
//!   `original`, rate limits, flow control, `headers_only`, `deliver_policy`
//!   `by_start_time` (starts at the first message) and `last_per_subject` (starts at the last
//!   message), `Nats-Expected-*` and rollup headers, `mem_storage` consumers; storage `any`
//!   reads as `file`.
//! - Not answered (no reply, as for any subject without a handler): `STREAM.PURGE`,
//!   `STREAM.LIST`, `STREAM.MSG.GET/DELETE`, `DIRECT.GET`, `CONSUMER.LIST`, templates,
//!   snapshots, peer and leader operations. No advisories or metrics on `$JS.EVENT.>`.
//! - One account, no limits (account info reports -1 everywhere), no clustering or domains,
//!   so no `408 Interest Expired` (a cross-account pull) and no `409 Leadership Change`.
//! - Ephemeral consumers are named `EPH<counter>` (the server: 8 random characters).
//! - The reason in `400 Bad Request - <reason>` for broken pull JSON is serde's wording, not
//!   Go's; every other error description is the server's.
//! - A fault on the store (a vanished stream or consumer, a wipe) takes effect at the engine's
//!   next call, which [`Engine::next_deadline`] reports as due at once.
//! - Slow acks store the message at once and only hold its PubAck back.

mod ack;
mod api;
mod consumer;
mod engine;
mod json;
mod pull;
mod store;
mod stream;
mod subject;

#[cfg(test)]
mod tests;

use bytes::Bytes;

pub use engine::Engine;
pub use json::{ApiError, EPOCH_UNIX_NANOS};
pub use store::{ConsumerView, JetStreamStore, StreamView};
pub use stream::{Storage, StoredMessage};

/// A message a client published that the engine takes: an API request, an ack, or a message
/// on a subject a stream captures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// The subject it was published to.
    pub subject: String,
    /// The reply subject the publisher set.
    pub reply: Option<String>,
    /// Its headers, in order.
    pub headers: Vec<(String, String)>,
    /// Its payload.
    pub payload: Bytes,
}

/// A message the engine asks the server to deliver to every subscription matching `subject`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outbound {
    /// Where it goes (a reply inbox, mostly).
    pub subject: String,
    /// The subject the receiving client sees, when it differs from `subject`: a JetStream
    /// delivery goes to the pull request's inbox but shows the stored message's subject
    /// (`hubbus_js.room1`), which the bus reads its channel from.
    pub message_subject: Option<String>,
    /// The reply subject (a JetStream delivery: its `$JS.ACK...` subject).
    pub reply: Option<String>,
    /// A status line, sent as the header block `NATS/1.0 <code> <description>`.
    pub status: Option<(u16, String)>,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// The payload.
    pub payload: Bytes,
}

/// What the engine may ask of the server it runs in.
pub trait Router {
    /// Whether any subscription of any connected client matches `subject`.
    fn has_interest(&self, subject: &str) -> bool;
}
