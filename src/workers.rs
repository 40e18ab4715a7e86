//! [`ChannelWorkers`]: one worker task per channel with local subscribers, started by the first
//! subscriber and retired with the last. NATS Core keeps one per channel (its NATS
//! subscription), and so does the hub (its bus subscription).
//!
//! Registering a local subscriber and starting a worker, like a worker deciding to retire,
//! happen under one lock, with the registration in the local [`Fanout`] inside it. When the last
//! local subscriber leaves, the worker is asked to look again ([`WorkerShared::recheck`]); it
//! retires only if the channel is still without subscribers when it looks, and a subscriber
//! arriving in the meantime keeps the running worker instead of starting a second one. So a
//! channel with local subscribers always has exactly one worker, and a retiring worker, which
//! stops forwarding the moment it decides, never overlaps with its successor: no message reaches
//! a local subscriber twice through two workers, and none is missed between them.
//!
//! Each worker carries a generation number, so a worker that was replaced (or whose channel was
//! forgotten on close) recognises itself as stale.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::bus::{BusError, Delivery, Subscription};
use crate::queue::{ChannelName, Fanout};
use crate::sync;

/// What a worker, its channel's subscriptions and the `subscribe` calls share.
#[derive(Debug, Default)]
pub(crate) struct WorkerShared<S> {
    /// Asks the worker to check whether the channel still has local subscribers.
    pub(crate) recheck: Notify,
    /// The user's part (how far the worker got, who waits for it).
    pub(crate) state: S,
}

#[derive(Debug)]
struct Worker<S> {
    generation: u64,
    shared: Arc<WorkerShared<S>>,
}

#[derive(Debug)]
struct Workers<S> {
    by_channel: BTreeMap<ChannelName, Worker<S>>,
    next_generation: u64,
    closed: bool,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct ChannelWorkers<S> {
    workers: Mutex<Workers<S>>,
}

impl<S> Default for ChannelWorkers<S> {
    fn default() -> Self {
        ChannelWorkers {
            workers: Mutex::new(Workers {
                by_channel: BTreeMap::new(),
                next_generation: 0,
                closed: false,
            }),
        }
    }
}

/// A worker to start: its channel, its generation, and what it shares.
pub(crate) struct NewWorker<S> {
    pub(crate) channel: ChannelName,
    pub(crate) generation: u64,
    pub(crate) shared: Arc<WorkerShared<S>>,
}

impl<S: Default + Send + Sync + 'static> ChannelWorkers<S> {
    fn lock(&self) -> MutexGuard<'_, Workers<S>> {
        self.workers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a local subscriber of `channel` (queue of `capacity`) in `fanout` and makes
    /// sure a worker serves the channel, calling `start` for a new one. Returns the subscription
    /// (dropping it undoes the registration, and the last one asks the worker to retire) and the
    /// worker's shared state.
    pub(crate) fn register(
        &self,
        fanout: &sync::Arc<Fanout<Delivery>>,
        channel: &ChannelName,
        capacity: usize,
        start: impl FnOnce(NewWorker<S>),
    ) -> Result<(Subscription, Arc<WorkerShared<S>>), BusError> {
        let mut workers = self.lock();
        if workers.closed {
            return Err(BusError::Closed);
        }
        let (id, queue) = fanout
            .subscribe(channel, capacity)
            .map_err(|_| BusError::Closed)?;
        let Workers {
            by_channel,
            next_generation,
            ..
        } = &mut *workers;
        // A running worker stays: it can only retire after seeing the channel without
        // subscribers under this lock, and the channel has one now.
        let shared = match by_channel.get(channel) {
            Some(worker) => worker.shared.clone(),
            None => {
                let generation = *next_generation;
                *next_generation += 1;
                let shared = Arc::new(WorkerShared::default());
                by_channel.insert(
                    channel.clone(),
                    Worker {
                        generation,
                        shared: shared.clone(),
                    },
                );
                start(NewWorker {
                    channel: channel.clone(),
                    generation,
                    shared: shared.clone(),
                });
                shared
            }
        };
        let fanout = fanout.clone();
        let recheck = shared.clone();
        let key = channel.clone();
        let subscription = Subscription::new(
            channel.clone(),
            queue,
            Box::new(move || {
                if fanout.unsubscribe(&key, id) {
                    recheck.recheck.notify_one();
                }
            }),
        );
        Ok((subscription, shared))
    }

    /// Decides whether worker `generation` of `channel` retires: true (and the channel is
    /// forgotten) when the channel has no local subscriber any more, or the worker was replaced
    /// or forgotten.
    pub(crate) fn retire(
        &self,
        fanout: &Fanout<Delivery>,
        channel: &ChannelName,
        generation: u64,
    ) -> bool {
        let mut workers = self.lock();
        if !is_current(&workers, channel, generation) {
            return true;
        }
        if fanout.has_subscribers(channel) {
            return false;
        }
        workers.by_channel.remove(channel);
        true
    }

    /// Forgets worker `generation` of `channel` if it is still the channel's (it gave up);
    /// true when it was. The next subscriber starts a new one.
    pub(crate) fn forget(&self, channel: &ChannelName, generation: u64) -> bool {
        let mut workers = self.lock();
        let current = is_current(&workers, channel, generation);
        if current {
            workers.by_channel.remove(channel);
        }
        current
    }

    /// Refuses new registrations and forgets every worker (the bus or hub is closing; its
    /// cancellation ends the workers). `and_then` runs under the same lock.
    pub(crate) fn close(&self, and_then: impl FnOnce()) {
        let mut workers = self.lock();
        workers.closed = true;
        workers.by_channel.clear();
        and_then();
    }

    /// True when no channel has a worker.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().by_channel.is_empty()
    }
}

fn is_current<S>(workers: &Workers<S>, channel: &ChannelName, generation: u64) -> bool {
    workers
        .by_channel
        .get(channel)
        .is_some_and(|worker| worker.generation == generation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_worker_per_channel_until_the_last_subscriber_leaves() {
        let fanout = sync::Arc::new(Fanout::new());
        let workers: ChannelWorkers<()> = ChannelWorkers::default();
        let room: ChannelName = "room".into();
        let mut started = Vec::new();
        let (first, shared) = workers
            .register(&fanout, &room, 4, |new| started.push(new.generation))
            .unwrap();
        let (second, again) = workers
            .register(&fanout, &room, 4, |new| started.push(new.generation))
            .unwrap();
        assert_eq!(started, [0], "one worker for the channel");
        assert!(Arc::ptr_eq(&shared, &again));
        drop(first);
        assert!(!workers.retire(&fanout, &room, 0), "one subscriber is left");
        drop(second);
        // A subscriber arriving before the worker looks keeps it.
        let (third, _) = workers
            .register(&fanout, &room, 4, |new| started.push(new.generation))
            .unwrap();
        assert!(!workers.retire(&fanout, &room, 0));
        drop(third);
        assert!(workers.retire(&fanout, &room, 0), "nobody left");
        assert!(workers.is_empty());
        let (_fourth, _) = workers
            .register(&fanout, &room, 4, |new| started.push(new.generation))
            .unwrap();
        assert_eq!(started, [0, 1], "a new worker after the old one retired");
        assert!(
            workers.retire(&fanout, &room, 0),
            "the old generation is stale"
        );
        assert!(!workers.forget(&room, 0));
        assert!(workers.forget(&room, 1));
        workers.close(|| {});
        assert!(matches!(
            workers.register(&fanout, &room, 4, |_| {}),
            Err(BusError::Closed)
        ));
    }
}
