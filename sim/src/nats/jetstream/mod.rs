//! The JetStream subset of the fake NATS server, as a state machine without I/O.
//!
//! The server calls [`Engine::publish`] for every message a client publishes to a subject the
//! engine [`handles`](Engine::handles) (`$JS.API.>`, `$JS.ACK.>` and every subject a stream
//! captures) and delivers the [`Outbound`] messages it answers, in order, as if the server had
//! published them. It calls [`Engine::tick`] once simulated time reaches
//! [`Engine::next_deadline`] (ack-wait redelivery, pull expiry, inactive consumers, delayed
//! PubAcks). Time is the simulation's elapsed time, which keeps counting across restarts of
//! the host's software.
//!
//! The [`JetStreamStore`] is the "disk": streams, their messages and consumer state live
//! there, outside the host's software, so they survive a restart; what a real server keeps only
//! in memory (waiting pull requests) lives in the [`Engine`] and dies with it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    /// Where it goes (a reply inbox, mostly).
    pub subject: String,
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

/// The engine's "disk" and fault switches: survives restarts of the host's software; cloning
/// shares it.
#[derive(Debug, Clone, Default)]
pub struct JetStreamStore {
    inner: Arc<Mutex<()>>,
}

impl JetStreamStore {
    /// An empty store.
    pub fn new() -> Self {
        JetStreamStore::default()
    }
}

/// The running JetStream of one start of the host's software.
#[derive(Debug)]
pub struct Engine {
    store: JetStreamStore,
}

impl Engine {
    /// Starts on `store` at simulated time `now` (what the store holds is recovered).
    pub fn new(store: JetStreamStore, now: Duration) -> Self {
        let _ = now;
        Engine { store }
    }

    /// Whether a message published to `subject` is the engine's to take.
    pub fn handles(&self, subject: &str) -> bool {
        let _ = (&self.store.inner, subject);
        false
    }

    /// Takes a published message at time `now`; returns what to deliver, in order.
    pub fn publish(
        &mut self,
        now: Duration,
        message: Inbound,
        router: &dyn Router,
    ) -> Vec<Outbound> {
        let _ = (now, message, router);
        Vec::new()
    }

    /// Does what is due at `now`; returns what to deliver, in order.
    pub fn tick(&mut self, now: Duration, router: &dyn Router) -> Vec<Outbound> {
        let _ = (now, router);
        Vec::new()
    }

    /// When [`Engine::tick`] must be called next, if anything is pending.
    pub fn next_deadline(&self) -> Option<Duration> {
        None
    }
}
