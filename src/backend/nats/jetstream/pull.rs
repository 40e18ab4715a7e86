//! The pull loop of one channel: what happens to a channel's messages between the server and the
//! local subscriber queues, and what happens when the server restarts under it.
//!
//! One task per channel with local subscribers, shared by all of them (as the Redis backend
//! shares one Redis subscription). It subscribes an inbox, makes sure the consumer exists, then
//! asks for at most `min(pull_batch, subscriber_queue)` messages at a time with
//! `$JS.API.CONSUMER.MSG.NEXT`, and asks again once that pull is complete: a batch never
//! exceeds what a local queue holds, and one batch is in flight (two at most for a moment after
//! a pull was given up, until the server ends the old one at its expiry).
//!
//! Each message becomes a [`Delivery`] queued for every local subscriber, in stream order, with
//! one shared acker (see `ack.rs`). It is flagged redelivered when the server counts more than
//! one delivery, and also when its stream sequence is not above the highest this loop has
//! delivered: a consumer hands out first deliveries in sequence order, so anything at or below
//! that mark was delivered before. This catches the replay after a server crash, where the
//! server lost the consumer's delivery counts and reports each message as new; it costs one
//! number per channel. The mark starts again when the stream was created anew.
//!
//! A queue that overflows drops its oldest delivery, which is counted as
//! `dropped{reason="slow_consumer"}` and *not* acknowledged: unless another local subscriber
//! acks that message, the server delivers it again after `ack_wait`, flagged redelivered. That
//! is the at-least-once promise; a slow subscriber costs redeliveries, never a blocked loop or
//! unbounded memory. A message that does not decode is terminated (`+TERM`)
//! and counted as `dropped{reason="malformed"}`; one that arrives after the last local
//! subscriber left is nak'd, so it is not held back for `ack_wait`.
//!
//! Status replies steer the loop: `408` (the pull expired) and `404` end a pull; `409` (consumer
//! deleted, leadership change, ...) and `503` (no responders: JetStream not ready, stream gone)
//! make it look the consumer up again, re-creating stream and consumer if they vanished. A pull
//! that gets no answer at all within `pull_expires + api_timeout` was lost with a connection or
//! ignored because its consumer is gone, and is treated the same way. After the link reconnects
//! the loop pulls again at once. Failures back off with jitter from the bus's seeded generator.
//!
//! When the last local subscriber leaves, the loop stops and deletes the consumer: a channel
//! nobody on this node listens to should not accumulate a backlog that a later subscriber would
//! receive as a burst of stale messages. When the bus closes (or the process dies), consumers
//! stay, so a hub restarted with the same node id continues where it stopped.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Shared;
use super::ack::{JetStreamAcker, parse_ack_subject};
use super::api::{self, PullRequest};
use super::consumer::{self, ConsumerState, Seen};
use crate::backend::fan_out;
use crate::backend::nats::link::{LinkMessage, LinkPublish, LinkSubscription};
use crate::bus::{Acker, Delivery};
use crate::envelope::Envelope;
use crate::metrics::DropReason;
use crate::queue::ChannelName;

/// Why a pull loop was told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// The channel's last local subscriber left: delete the consumer.
    Unsubscribed,
    /// The bus is closing: keep the consumer for the node's next run.
    Closed,
}

/// A task handle that aborts the task when dropped (a bus dropped without `close`), unless it
/// was joined or detached first.
#[derive(Debug)]
pub(super) struct AbortOnDrop(Option<JoinHandle<()>>);

impl AbortOnDrop {
    pub(super) fn new(task: JoinHandle<()>) -> Self {
        AbortOnDrop(Some(task))
    }

    /// Waits for the task to end.
    pub(super) async fn join(mut self) {
        if let Some(task) = self.0.take() {
            let _ = task.await;
        }
    }

    /// Lets the task run on without this handle.
    pub(super) fn detach(mut self) {
        self.0.take();
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Runs `work` unless the loop is told to stop first.
async fn or_stop<T>(
    stop: &mut oneshot::Receiver<Stop>,
    work: impl Future<Output = T>,
) -> Result<T, Stop> {
    // `biased` everywhere: tokio's default random branch order would make simulation runs
    // differ for the same seed.
    tokio::select! {
        biased;
        reason = stop => Err(reason.unwrap_or(Stop::Closed)),
        value = work => Ok(value),
    }
}

/// The pull loop task of `channel`. Starts once the loops it replaces have ended, so that two
/// loops of one channel never create and delete the same consumer at once.
pub(super) async fn run(
    shared: Arc<Shared>,
    channel: ChannelName,
    consumer: Arc<ConsumerState>,
    predecessors: Vec<AbortOnDrop>,
    mut stop: oneshot::Receiver<Stop>,
    generation: u64,
) {
    for predecessor in predecessors {
        predecessor.join().await;
    }
    let mut puller = Puller {
        shared: &shared,
        channel: &channel,
        consumer: &consumer,
        inbox: shared.link.new_inbox(),
        subscription: None,
        seen: None,
        consumer_ready: false,
        asked_server: false,
        failures: 0,
        highest_sequence: 0,
    };
    let Err(reason) = puller.serve(&mut stop).await;
    if reason == Stop::Unsubscribed && puller.asked_server {
        consumer::delete(&shared, &consumer).await;
    }
    shared.channels().finished(&channel, generation);
}

/// How one pull ended.
enum Outcome {
    /// Complete (the batch arrived, or the server ended the pull): pull again.
    Done,
    /// The link reconnected while waiting: the pull is lost with the old connection.
    Repull,
    /// Something about the consumer is off: look it up (and re-create it) before pulling.
    Recheck,
    /// The pull request could not be sent.
    NotSent,
    /// The inbox subscription ended.
    InboxLost,
}

struct Puller<'a> {
    shared: &'a Shared,
    channel: &'a ChannelName,
    consumer: &'a ConsumerState,
    inbox: String,
    subscription: Option<LinkSubscription>,
    seen: Seen,
    consumer_ready: bool,
    /// True once a look-up or creation was sent: only then can there be a consumer to delete.
    asked_server: bool,
    failures: u32,
    /// The highest stream sequence delivered so far.
    highest_sequence: u64,
}

impl Puller<'_> {
    async fn serve(&mut self, stop: &mut oneshot::Receiver<Stop>) -> Result<Infallible, Stop> {
        loop {
            if !self.shared.link.is_connected() {
                self.back_off(stop).await?;
                continue;
            }
            let mut subscription = match self.subscription.take() {
                Some(subscription) => subscription,
                None => match or_stop(stop, self.shared.link.subscribe(&self.inbox)).await? {
                    Ok(subscription) => subscription,
                    Err(_) => {
                        self.back_off(stop).await?;
                        continue;
                    }
                },
            };
            if !self.consumer_ready {
                self.asked_server = true;
                let ensured = consumer::ensure(self.shared, self.consumer, &mut self.seen);
                match or_stop(stop, ensured).await? {
                    Ok(new_stream) => {
                        if new_stream {
                            self.highest_sequence = 0;
                        }
                    }
                    Err(_) => {
                        self.subscription = Some(subscription);
                        self.back_off(stop).await?;
                        continue;
                    }
                }
                self.consumer_ready = true;
                self.consumer.mark_ready();
            }
            let outcome = self.pull(&mut subscription, stop).await?;
            match outcome {
                Outcome::Done => {
                    self.failures = 0;
                    self.subscription = Some(subscription);
                }
                Outcome::Repull => self.subscription = Some(subscription),
                Outcome::Recheck => {
                    self.consumer_ready = false;
                    self.subscription = Some(subscription);
                    self.back_off(stop).await?;
                }
                Outcome::NotSent => {
                    self.subscription = Some(subscription);
                    self.back_off(stop).await?;
                }
                Outcome::InboxLost => self.back_off(stop).await?,
            }
        }
    }

    async fn back_off(&mut self, stop: &mut oneshot::Receiver<Stop>) -> Result<(), Stop> {
        let delay =
            crate::backoff::Backoff::default().delay(self.failures, &self.shared.options.ids);
        self.failures = self.failures.saturating_add(1);
        or_stop(stop, tokio::time::sleep(delay)).await
    }

    /// Sends one pull request and hands what it brings to the local subscribers.
    async fn pull(
        &mut self,
        subscription: &mut LinkSubscription,
        stop: &mut oneshot::Receiver<Stop>,
    ) -> Result<Outcome, Stop> {
        let js = &self.shared.js;
        let batch = js
            .pull_batch
            .min(self.shared.options.subscriber_queue)
            .max(1);
        let request = PullRequest {
            batch,
            expires: api::nanos(js.pull_expires),
        };
        let Ok(payload) = serde_json::to_vec(&request) else {
            return Ok(Outcome::NotSent);
        };
        let request = LinkPublish {
            subject: format!(
                "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
                js.stream, self.consumer.durable
            ),
            reply: Some(self.inbox.clone()),
            headers: Vec::new(),
            payload: Bytes::from(payload),
        };
        // Registered before the request goes out, so a reconnect while it is pending is seen.
        let reconnected = self.shared.reconnected.notified();
        tokio::pin!(reconnected);
        reconnected.as_mut().enable();
        if or_stop(stop, self.shared.link.publish(request))
            .await?
            .is_err()
        {
            return Ok(Outcome::NotSent);
        }
        let deadline = Instant::now() + js.pull_expires + js.api_timeout;
        let mut received = 0;
        loop {
            let message = tokio::select! {
                biased;
                reason = &mut *stop => return Err(reason.unwrap_or(Stop::Closed)),
                _ = &mut reconnected => return Ok(Outcome::Repull),
                message = subscription.next() => message,
                _ = tokio::time::sleep_until(deadline) => return Ok(Outcome::Recheck),
            };
            let Some(message) = message else {
                return Ok(Outcome::InboxLost);
            };
            match message.status {
                None => {
                    self.deliver(message).await;
                    received += 1;
                    if received >= batch {
                        return Ok(Outcome::Done);
                    }
                }
                // An idle heartbeat: the pull is alive.
                Some(100) => {}
                Some(404 | 408) => return Ok(Outcome::Done),
                Some(_) => return Ok(Outcome::Recheck),
            }
        }
    }

    /// Turns one message into a delivery for every local subscriber.
    async fn deliver(&mut self, message: LinkMessage) {
        let shared = self.shared;
        let Some(ack) = message.reply.as_deref().and_then(parse_ack_subject) else {
            // Not a JetStream delivery: there is nothing to settle it with.
            shared.metrics.dropped(DropReason::Malformed, 1);
            return;
        };
        let redelivered = ack.delivered > 1 || ack.stream_sequence <= self.highest_sequence;
        self.highest_sequence = self.highest_sequence.max(ack.stream_sequence);
        if redelivered {
            shared.bus_metrics.jetstream_redeliveries().inc();
        }
        let acker = Arc::new(JetStreamAcker::new(
            shared.link.clone(),
            message.reply.unwrap_or_default(),
        ));
        let envelope = match Envelope::decode(message.payload) {
            Ok(envelope) => envelope,
            Err(_) => {
                shared.metrics.dropped(DropReason::Malformed, 1);
                // It would fail the same way every time it came back.
                let _ = acker.terminate().await;
                return;
            }
        };
        let delivery = Delivery::from_envelope(
            self.channel.clone(),
            envelope,
            redelivered,
            Some(acker.clone() as Arc<dyn Acker>),
        );
        if fan_out(&shared.fanout, &shared.metrics, &delivery).delivered == 0 {
            // Nobody local took it (the last subscriber just left): let the server offer it
            // again.
            let _ = acker.nak(None).await;
        }
    }
}
