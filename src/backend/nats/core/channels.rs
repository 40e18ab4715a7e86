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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt;
use tokio::sync::Notify;

use super::{BACKEND, BusState};
use crate::backend::nats::framing::{self, Received};
use crate::backend::nats::link::{LinkMessage, LinkSubscription};
use crate::backend::{fan_out, foreign_on_receipt};
use crate::backoff::Backoff;
use crate::bus::{BusError, Subscription};
use crate::metrics::DropReason;
use crate::queue::ChannelName;
use crate::workers::{NewWorker, WorkerShared};

/// What a channel's task tells the `subscribe` calls.
#[derive(Debug, Default)]
pub(crate) struct ChannelSignals {
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
) -> Result<(Subscription, Arc<WorkerShared<ChannelSignals>>), BusError> {
    if bus.closed.load(Ordering::Acquire) {
        return Err(BusError::Closed);
    }
    bus.channels
        .register(&bus.fanout, name, bus.options.subscriber_queue, |task| {
            bus.tasks.spawn(serve_channel(bus.clone(), task));
        })
}

/// Reads one message and queues it for the channel's local subscribers: a bus message in either
/// framing, or one from outside the bus as `foreign_messages` says; counts and logs
/// (rate-limited) what claims to be a bus message and is not.
fn dispatch(bus: &BusState, name: &ChannelName, message: LinkMessage) {
    let delivery = match framing::decode(message.headers, message.payload) {
        Received::Bus(envelope) => crate::backend::delivery(name.clone(), envelope, false),
        Received::Foreign {
            payload, headers, ..
        } => {
            let foreign =
                foreign_on_receipt(&bus.options, &bus.metrics, name.clone(), payload, headers);
            match foreign {
                Some(delivery) => delivery,
                None => return,
            }
        }
        Received::Malformed(error) => {
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
                    "dropped a malformed hubbus message"
                );
            }
            return;
        }
    };
    fan_out(&bus.fanout, &bus.metrics, &delivery);
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
async fn serve_channel(bus: Arc<BusState>, task: NewWorker<ChannelSignals>) {
    let name = &task.channel;
    let signals = &task.shared;
    let retire = || bus.channels.retire(&bus.fanout, name, task.generation);
    let subject = bus.subject(name);
    let backoff = Backoff::default();
    let mut failures: u32 = 0;
    loop {
        let subscribed = tokio::select! {
            biased;
            _ = bus.cancel.cancelled() => return,
            _ = signals.recheck.notified() => {
                if retire() {
                    return;
                }
                continue;
            }
            subscribed = bus.link.subscribe(&subject) => subscribed,
        };
        match subscribed {
            Ok(messages) => {
                failures = 0;
                signals.state.set_subscribed(true);
                if let Served::Retired = relay(&bus, &task, messages).await {
                    return;
                }
                signals.state.set_subscribed(false);
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
                if retire() {
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
    task: &NewWorker<ChannelSignals>,
    mut messages: LinkSubscription,
) -> Served {
    loop {
        tokio::select! {
            biased;
            _ = bus.cancel.cancelled() => return Served::Retired,
            _ = task.shared.recheck.notified() => {
                if bus.channels.retire(&bus.fanout, &task.channel, task.generation) {
                    return Served::Retired;
                }
            }
            message = messages.next() => match message {
                Some(message) => {
                    dispatch(bus, &task.channel, message);
                    // What the link dropped to make room came before this message.
                    let dropped = messages.take_dropped();
                    if dropped > 0 {
                        bus.read_too_slowly(&task.channel, dropped);
                    }
                }
                None => return Served::Lost,
            },
        }
    }
}
