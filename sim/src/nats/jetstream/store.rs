//! The engine's "disk": streams, their messages and their consumers' state, shared by every
//! start of the host's software, plus the fault switches and read-only views tests use.
//!
//! What lives here survives [`Engine::new`](super::Engine::new) on the same store, as files in
//! a store directory survive a server restart; memory-storage streams are dropped when an
//! engine starts, as a real server loses them (ephemeral consumers are kept, as nats-server 2.9
//! keeps them, and go once idle past their inactive threshold). The faults act on the store
//! from outside the engine: the engine notices at its next call (and [`Engine::next_deadline`]
//! reports that call as due at once), answering the pulls waiting on a consumer that vanished
//! with `409 Consumer Deleted`, as a server does for a consumer deleted under them.
//!
//! [`Engine::next_deadline`]: super::Engine::next_deadline

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::stream::{Storage, StoredMessage, Stream};
use crate::server::lock;

/// The shared state behind a [`JetStreamStore`].
#[derive(Debug, Default)]
pub(crate) struct Disk {
    pub(crate) streams: BTreeMap<String, Stream>,
    /// Source of stream and consumer incarnations and ephemeral consumer names.
    pub(crate) counter: u64,
    /// The last creation time handed out (nanoseconds since the Unix epoch), so two creations
    /// at the same simulated instant still get distinct times.
    pub(crate) last_created: i128,
    /// How long PubAcks are held back, if they are.
    pub(crate) slow_acks: Option<Duration>,
    /// Bumped by every fault applied from outside the engine.
    pub(crate) generation: u64,
}

impl Disk {
    /// A fresh incarnation number.
    pub(crate) fn next_id(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    /// A creation time for something created at `unix_nanos`, later than any before.
    pub(crate) fn creation_time(&mut self, unix_nanos: i128) -> i128 {
        self.last_created = unix_nanos.max(self.last_created + 1);
        self.last_created
    }
}

/// The engine's "disk" and fault switches: survives restarts of the host's software; cloning
/// shares it.
#[derive(Debug, Clone, Default)]
pub struct JetStreamStore {
    inner: Arc<Mutex<Disk>>,
}

/// A read-only view of a stream, for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamView {
    /// Its name.
    pub name: String,
    /// The subjects it captures.
    pub subjects: Vec<String>,
    /// Where it keeps messages.
    pub storage: Storage,
    /// The first sequence it holds (the next one when empty; 0 before the first message).
    pub first_sequence: u64,
    /// The last sequence it assigned.
    pub last_sequence: u64,
    /// The messages it holds, in sequence order.
    pub messages: Vec<StoredMessage>,
    /// The names of its consumers.
    pub consumers: Vec<String>,
}

/// A read-only view of a consumer's state, for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerView {
    /// Its name.
    pub name: String,
    /// The subjects it delivers (empty: all of the stream's).
    pub filter_subject: String,
    /// The last delivery sequence handed out.
    pub delivered_consumer_sequence: u64,
    /// The highest stream sequence handed out (for a new consumer, where it starts).
    pub delivered_stream_sequence: u64,
    /// Ack floor, delivery sequence.
    pub ack_floor_consumer_sequence: u64,
    /// Ack floor, stream sequence: everything at or below is settled.
    pub ack_floor_stream_sequence: u64,
    /// Delivered and unsettled messages: stream sequence to the delivery sequence it was first
    /// handed out with.
    pub pending: BTreeMap<u64, u64>,
    /// Stream sequence to how often it was redelivered.
    pub redelivered: BTreeMap<u64, u64>,
}

impl ConsumerView {
    /// `num_ack_pending` as `CONSUMER.INFO` reports it.
    pub fn num_ack_pending(&self) -> usize {
        self.pending.len()
    }
}

impl JetStreamStore {
    /// An empty store.
    pub fn new() -> Self {
        JetStreamStore::default()
    }

    /// Locks the disk.
    pub(crate) fn disk(&self) -> MutexGuard<'_, Disk> {
        lock(&self.inner)
    }

    /// Holds every PubAck back by `delay` (released by [`Engine::tick`](super::Engine::tick)),
    /// or answers at once again with `None`. The message is stored when it arrives; only the
    /// confirmation is late, as from a server slow to answer.
    pub fn set_slow_acks(&self, delay: Option<Duration>) {
        self.disk().slow_acks = delay;
    }

    /// Removes stream `name` with its messages and consumers, as if an operator deleted it;
    /// false if there was none.
    pub fn vanish_stream(&self, name: &str) -> bool {
        let mut disk = self.disk();
        let removed = disk.streams.remove(name).is_some();
        disk.generation += 1;
        removed
    }

    /// Removes consumer `consumer` of stream `stream`, as if an operator deleted it; false if
    /// there was none.
    pub fn vanish_consumer(&self, stream: &str, consumer: &str) -> bool {
        let mut disk = self.disk();
        let removed = disk
            .streams
            .get_mut(stream)
            .is_some_and(|s| s.consumers.remove(consumer).is_some());
        disk.generation += 1;
        removed
    }

    /// Loses everything stored, as a server whose store directory is gone.
    pub fn wipe(&self) {
        let mut disk = self.disk();
        disk.streams.clear();
        disk.generation += 1;
    }

    /// The names of the streams, in order.
    pub fn stream_names(&self) -> Vec<String> {
        self.disk().streams.keys().cloned().collect()
    }

    /// A view of stream `name`.
    pub fn stream(&self, name: &str) -> Option<StreamView> {
        let disk = self.disk();
        let stream = disk.streams.get(name)?;
        Some(StreamView {
            name: stream.config.name.clone(),
            subjects: stream.config.subjects.clone(),
            storage: stream.config.storage,
            first_sequence: stream.first_seq,
            last_sequence: stream.last_seq,
            messages: stream.messages.values().cloned().collect(),
            consumers: stream.consumers.keys().cloned().collect(),
        })
    }

    /// A view of consumer `consumer` of stream `stream`.
    pub fn consumer(&self, stream: &str, consumer: &str) -> Option<ConsumerView> {
        let disk = self.disk();
        let consumer = disk.streams.get(stream)?.consumers.get(consumer)?;
        let ((delivered_consumer, delivered_stream), (floor_consumer, floor_stream)) =
            consumer.positions();
        Some(ConsumerView {
            name: consumer.name.clone(),
            filter_subject: consumer.config.filter_subject.clone(),
            delivered_consumer_sequence: delivered_consumer,
            delivered_stream_sequence: delivered_stream,
            ack_floor_consumer_sequence: floor_consumer,
            ack_floor_stream_sequence: floor_stream,
            pending: consumer
                .pending
                .iter()
                .map(|(sequence, pending)| (*sequence, pending.delivery))
                .collect(),
            redelivered: consumer.redelivered.clone(),
        })
    }
}
