//! The node's pending messages: every message its consumer handed out that the bus has not
//! settled yet, by stream sequence.
//!
//! The ledger is what bounds the pull loop (it asks for no more than `max_ack_pending` minus
//! what is pending, so the server never has to hold a pull back), what makes the resume window
//! work (messages for channels without a local subscriber are *parked* here until one
//! subscribes or the window closes), and what `close` declines so that the node's next run gets
//! its unfinished work at once instead of after `ack_wait`.
//!
//! An entry is one of:
//! - *live*: handed to local subscribers, their copies not settled yet;
//! - *parked*: for a channel without a local subscriber, held during the resume window;
//! - *abandoned*: every copy's subscription ended before it was read; the server delivers it
//!   again after `ack_wait`. Abandoned entries do not count against the budget (the server
//!   sends them again, at which point they are live again), and only the newest
//!   `max_ack_pending` are remembered.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::Notify;

use super::ack::RootAck;
use crate::queue::ChannelName;

#[derive(Debug)]
enum Entry {
    Live {
        subject: String,
        root: Weak<RootAck>,
    },
    Parked {
        subject: String,
        channel: ChannelName,
        root: Arc<RootAck>,
    },
    Abandoned {
        subject: String,
    },
}

impl Entry {
    fn subject(&self) -> &str {
        match self {
            Entry::Live { subject, .. }
            | Entry::Parked { subject, .. }
            | Entry::Abandoned { subject } => subject,
        }
    }

    fn counts(&self) -> bool {
        !matches!(self, Entry::Abandoned { .. })
    }
}

/// See the module documentation.
#[derive(Debug)]
pub(super) struct Ledger {
    entries: Mutex<BTreeMap<u64, Entry>>,
    /// Wakes the pull loop when an entry stopped counting against the budget.
    freed: Notify,
    capacity: usize,
}

/// What `close` must decline: roots still held somewhere, and bare ack subjects.
#[derive(Debug, Default)]
pub(super) struct Unsettled {
    pub(super) roots: Vec<Arc<RootAck>>,
    pub(super) subjects: Vec<String>,
}

impl Ledger {
    /// A ledger for a consumer with `max_ack_pending` = `capacity`.
    pub(super) fn new(capacity: usize) -> Self {
        Ledger {
            entries: Mutex::new(BTreeMap::new()),
            freed: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn entries(&self) -> MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Entries that count against `max_ack_pending` (live and parked).
    pub(super) fn pending(&self) -> usize {
        self.entries()
            .values()
            .filter(|entry| entry.counts())
            .count()
    }

    /// How many more messages the loop may ask for.
    pub(super) fn room(&self) -> usize {
        self.capacity.saturating_sub(self.pending())
    }

    /// Resolves once an entry stopped counting (registered before the caller looks at `room`).
    pub(super) fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }

    /// Records the delivery of sequence `sequence` with ack subject `subject` (a redelivery
    /// replaces what was there).
    pub(super) fn live(&self, sequence: u64, subject: &str, root: &Arc<RootAck>) {
        let replaced = self.entries().insert(
            sequence,
            Entry::Live {
                subject: subject.to_owned(),
                root: Arc::downgrade(root),
            },
        );
        // Dropped after the lock: a parked root that goes with it abandons itself here.
        drop(replaced);
    }

    /// Holds `root` for `channel` until a local subscriber comes or the window closes.
    pub(super) fn park(&self, sequence: u64, channel: ChannelName, root: Arc<RootAck>) {
        let replaced = self.entries().insert(
            sequence,
            Entry::Parked {
                subject: root.subject().to_owned(),
                channel,
                root,
            },
        );
        drop(replaced);
    }

    /// How many messages are parked.
    pub(super) fn parked(&self) -> usize {
        self.entries()
            .values()
            .filter(|entry| matches!(entry, Entry::Parked { .. }))
            .count()
    }

    /// Takes the oldest parked message out, to make room.
    pub(super) fn unpark_oldest(&self) -> Option<Arc<RootAck>> {
        let mut entries = self.entries();
        let sequence = entries
            .iter()
            .find(|(_, entry)| matches!(entry, Entry::Parked { .. }))
            .map(|(sequence, _)| *sequence)?;
        match entries.remove(&sequence) {
            Some(Entry::Parked { root, .. }) => Some(root),
            _ => None,
        }
    }

    /// Takes out the messages parked for `channel` (a subscriber arrived).
    pub(super) fn claim(&self, channel: &str) -> Vec<Arc<RootAck>> {
        self.take_parked(|parked| parked == channel)
    }

    /// Takes out every parked message (the resume window closed).
    pub(super) fn unpark_all(&self) -> Vec<Arc<RootAck>> {
        self.take_parked(|_| true)
    }

    fn take_parked(&self, wanted: impl Fn(&str) -> bool) -> Vec<Arc<RootAck>> {
        let mut entries = self.entries();
        let sequences: Vec<u64> = entries
            .iter()
            .filter(|(_, entry)| matches!(entry, Entry::Parked { channel, .. } if wanted(channel)))
            .map(|(sequence, _)| *sequence)
            .collect();
        let roots = sequences
            .into_iter()
            .filter_map(|sequence| match entries.remove(&sequence) {
                Some(Entry::Parked { root, .. }) => Some(root),
                _ => None,
            })
            .collect();
        drop(entries);
        self.freed.notify_one();
        roots
    }

    /// The delivery with ack subject `subject` was settled.
    pub(super) fn settled(&self, sequence: u64, subject: &str) {
        let mut entries = self.entries();
        if entries
            .get(&sequence)
            .is_some_and(|entry| entry.subject() == subject)
        {
            let removed = entries.remove(&sequence);
            drop(entries);
            drop(removed);
            self.freed.notify_one();
        }
    }

    /// Nobody will settle the delivery with ack subject `subject`: the server sends it again
    /// after `ack_wait` (or at once, when `close` declines it).
    pub(super) fn abandoned(&self, sequence: u64, subject: &str) {
        let mut entries = self.entries();
        let Some(entry) = entries.get_mut(&sequence) else {
            return;
        };
        if entry.subject() != subject || matches!(entry, Entry::Abandoned { .. }) {
            return;
        }
        *entry = Entry::Abandoned {
            subject: subject.to_owned(),
        };
        // Remember only the newest abandoned entries; older ones come back after `ack_wait`.
        let abandoned: Vec<u64> = entries
            .iter()
            .filter(|(_, entry)| matches!(entry, Entry::Abandoned { .. }))
            .map(|(sequence, _)| *sequence)
            .collect();
        for sequence in abandoned
            .iter()
            .take(abandoned.len().saturating_sub(self.capacity))
        {
            entries.remove(sequence);
        }
        drop(entries);
        self.freed.notify_one();
    }

    /// Everything unsettled, emptying the ledger (the bus closes).
    pub(super) fn take_unsettled(&self) -> Unsettled {
        let mut unsettled = Unsettled::default();
        for (_, entry) in std::mem::take(&mut *self.entries()) {
            match entry {
                Entry::Live { subject, root } => match root.upgrade() {
                    Some(root) => unsettled.roots.push(root),
                    None => unsettled.subjects.push(subject),
                },
                Entry::Parked { root, .. } => unsettled.roots.push(root),
                Entry::Abandoned { subject } => unsettled.subjects.push(subject),
            }
        }
        unsettled
    }

    /// Forgets everything (the stream was created anew: its sequences mean other messages).
    pub(super) fn clear(&self) {
        let forgotten = std::mem::take(&mut *self.entries());
        drop(forgotten);
        self.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::backend::nats::NatsOptions;
    use crate::backend::nats::link::NatsLink;
    use crate::backend::nats::wire::WireLink;
    use crate::transport::TokioTcp;

    /// A root's `Drop` tells the ledger it was abandoned, which takes the ledger's lock: an
    /// entry that holds the last reference to a root (a parked message) must be dropped after
    /// the lock is released, whether a redelivery replaces it, the stream's re-creation clears
    /// it, or it is settled. Run on a thread of its own, so a deadlock fails the test instead of
    /// hanging it.
    #[tokio::test]
    async fn dropping_a_parked_root_never_deadlocks_the_ledger() {
        let options = NatsOptions::new("nats://127.0.0.1:9").link;
        let link: Arc<dyn NatsLink> = Arc::new(
            WireLink::connect(options, Arc::new(TokioTcp), 1)
                .await
                .unwrap(),
        );
        let (done, finished) = std::sync::mpsc::channel();
        let worker_link = link.clone();
        std::thread::spawn(move || {
            let ledger = Arc::new(Ledger::new(10));
            let track = |sequence: u64, delivered: u64| {
                RootAck::track(
                    worker_link.clone(),
                    ledger.clone(),
                    sequence,
                    format!("$JS.ACK.HUBBUS.c.{delivered}.{sequence}.{sequence}.0.0"),
                )
            };
            // A message parked for a channel nobody subscribes to yet, delivered again.
            ledger.park(5, "room".into(), track(5, 1));
            let again = track(5, 2);
            assert_eq!(ledger.parked(), 0);
            // Parked messages forgotten with a stream created anew.
            ledger.park(6, "room".into(), track(6, 1));
            ledger.clear();
            drop(again);
            done.send(()).unwrap();
        });
        assert!(
            finished.recv_timeout(Duration::from_secs(10)).is_ok(),
            "the ledger deadlocked on a root dropped under its lock"
        );
        link.close().await;
    }
}
