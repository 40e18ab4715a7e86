//! One NATS subscription and one task per channel with local subscribers.
//!
//! Each channel with local subscribers has exactly one NATS subscription, shared by all of
//! them, and one task that reads it in arrival order and fans every message out to the local
//! subscriber queues. The first local subscriber starts the task; when the last one leaves, the
//! task is told to look again, and it unsubscribes and ends only if the channel is still
//! without subscribers. Both the look and every new registration happen under the same lock, so
//! a subscriber arriving in the meantime keeps the running task instead of starting a second
//! one: no channel is left with local subscribers but no NATS subscription, and no message
//! reaches a local subscriber through two subscriptions.
//!
//! A `subscribe` call learns through [`ChannelSignals::subscribed`] when the task holds its
//! link subscription (the SUB is written); the bus then confirms it with a probe round trip.
//! Every task ends when the bus's cancellation token fires; its link subscription goes with it.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt;
use tokio::sync::Notify;

use super::{BACKEND, BusState};
use crate::backend::fan_out;
use crate::backend::nats::link::{LinkMessage, LinkSubscription};
use crate::backoff::Backoff;
use crate::bus::{BusError, Subscription};
use crate::envelope::Envelope;
use crate::metrics::DropReason;
use crate::queue::ChannelName;

/// The channels with a running task.
#[derive(Debug, Default)]
pub(super) struct ChannelTasks {
    by_name: BTreeMap<ChannelName, ChannelTask>,
    /// The number the next task gets.
    next_task: u64,
}

impl ChannelTasks {
    /// Forgets every channel (the bus is closing; its token ends the tasks).
    pub(super) fn clear(&mut self) {
        self.by_name.clear();
    }

    /// True when no channel has a task.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// One channel's task, as the registry holds it while the task runs.
#[derive(Debug)]
struct ChannelTask {
    /// Tells apart this task from a later one for the same channel.
    task: u64,
    signals: Arc<ChannelSignals>,
}

/// What a channel's task, its subscriptions and the `subscribe` calls tell each other.
#[derive(Debug, Default)]
pub(super) struct ChannelSignals {
    /// Asks the task to check whether the channel still has local subscribers.
    recheck: Notify,
    /// True while the task holds a link subscription (its SUB is written).
    subscribed: AtomicBool,
    /// Wakes the `subscribe` calls waiting for `subscribed`.
    subscribed_changed: Notify,
}

impl ChannelSignals {
    /// Waits until the channel's task holds a link subscription.
    pub(super) async fn subscribed(&self) {
        loop {
            let changed = self.subscribed_changed.notified();
            tokio::pin!(changed);
            // Registered before looking, so a change between the look and the wait is kept.
            changed.as_mut().enable();
            if self.subscribed.load(Ordering::Acquire) {
                return;
            }
            changed.await;
        }
    }

    fn set_subscribed(&self, subscribed: bool) {
        self.subscribed.store(subscribed, Ordering::Release);
        if subscribed {
            self.subscribed_changed.notify_waiters();
        }
    }
}

/// Registers a local subscriber of `name` and makes sure a task serves the channel; returns
/// the subscription (dropping it undoes the registration) and the channel's signals.
pub(super) fn register(
    bus: &Arc<BusState>,
    name: &ChannelName,
) -> Result<(Subscription, Arc<ChannelSignals>), BusError> {
    let mut channels = bus.channels();
    if bus.closed.load(Ordering::Acquire) {
        return Err(BusError::Closed);
    }
    let (id, queue) = bus
        .fanout
        .subscribe(name, bus.options.subscriber_queue)
        .map_err(|_| BusError::Closed)?;
    let ChannelTasks { by_name, next_task } = &mut *channels;
    let signals = match by_name.entry(name.clone()) {
        // The running task stays: it can only end after seeing the channel without
        // subscribers under this lock, and the channel has one now.
        Entry::Occupied(entry) => entry.get().signals.clone(),
        Entry::Vacant(entry) => {
            let task = *next_task;
            *next_task += 1;
            let signals = Arc::new(ChannelSignals::default());
            bus.tasks.spawn(serve_channel(
                bus.clone(),
                name.clone(),
                task,
                signals.clone(),
            ));
            entry.insert(ChannelTask {
                task,
                signals: signals.clone(),
            });
            signals
        }
    };
    let fanout = bus.fanout.clone();
    let recheck = signals.clone();
    let key = name.clone();
    let subscription = Subscription::new(
        name.clone(),
        queue,
        Box::new(move || {
            if fanout.unsubscribe(&key, id) {
                recheck.recheck.notify_one();
            }
        }),
    );
    Ok((subscription, signals))
}

/// Decides whether task `task` of `name` ends: true (and the channel is forgotten) when the
/// channel has no local subscribers any more, or the task was replaced.
fn retire(bus: &BusState, name: &ChannelName, task: u64) -> bool {
    let mut channels = bus.channels();
    let current = channels
        .by_name
        .get(name)
        .is_some_and(|channel| channel.task == task);
    if !current {
        return true;
    }
    if bus.fanout.has_subscribers(name) {
        return false;
    }
    channels.by_name.remove(name);
    true
}

/// Decodes one message and queues it for the channel's local subscribers; counts and logs
/// (rate-limited) what is not a bus frame.
fn dispatch(bus: &BusState, name: &ChannelName, message: LinkMessage) {
    match Envelope::decode(message.payload) {
        Ok(envelope) => {
            let delivery = crate::backend::delivery(name.clone(), envelope, false);
            fan_out(&bus.fanout, &bus.metrics, &delivery);
        }
        Err(error) => {
            bus.metrics.dropped(DropReason::Malformed, 1);
            let admitted = bus
                .malformed_log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .admit(1);
            if let Some(left_out) = admitted {
                tracing::warn!(
                    backend = BACKEND,
                    channel = %name,
                    subject = %message.subject,
                    %error,
                    left_out,
                    "dropped a message that is not a hubbus frame"
                );
            }
        }
    }
}

/// How serving one link subscription ended.
enum Served {
    /// The task is done: the channel has no subscribers, or the bus is closing.
    Retired,
    /// The link ended the subscription (it is closing, or lost it): subscribe again.
    Lost,
}

/// The task of one channel: subscribes on the link, then hands every message to the local
/// subscribers in arrival order until the channel has none left or the bus closes.
async fn serve_channel(
    bus: Arc<BusState>,
    name: ChannelName,
    task: u64,
    signals: Arc<ChannelSignals>,
) {
    let subject = bus.subject(&name);
    let backoff = Backoff::default();
    let mut failures: u32 = 0;
    loop {
        let subscribed = tokio::select! {
            biased;
            _ = bus.cancel.cancelled() => return,
            _ = signals.recheck.notified() => {
                if retire(&bus, &name, task) {
                    return;
                }
                continue;
            }
            subscribed = bus.link.subscribe(&subject) => subscribed,
        };
        match subscribed {
            Ok(messages) => {
                failures = 0;
                signals.set_subscribed(true);
                if let Served::Retired = relay(&bus, &name, task, &signals, messages).await {
                    return;
                }
                signals.set_subscribed(false);
            }
            Err(error) => {
                tracing::debug!(backend = BACKEND, channel = %name, %error, "cannot subscribe")
            }
        }
        // The link re-establishes its connection by itself; this only paces our retries.
        let delay = backoff.delay(failures, &bus.options.ids);
        failures = failures.saturating_add(1);
        tokio::select! {
            biased;
            _ = bus.cancel.cancelled() => return,
            _ = signals.recheck.notified() => {
                if retire(&bus, &name, task) {
                    return;
                }
            }
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Relays `messages` until the task retires or the link ends the stream. Dropping `messages`
/// on return unsubscribes.
async fn relay(
    bus: &BusState,
    name: &ChannelName,
    task: u64,
    signals: &ChannelSignals,
    mut messages: LinkSubscription,
) -> Served {
    loop {
        tokio::select! {
            biased;
            _ = bus.cancel.cancelled() => return Served::Retired,
            _ = signals.recheck.notified() => {
                if retire(bus, name, task) {
                    return Served::Retired;
                }
            }
            message = messages.next() => match message {
                Some(message) => dispatch(bus, name, message),
                None => return Served::Lost,
            },
        }
    }
}
