//! The node's pull loop: what happens to messages between the server and the local subscriber
//! queues, and what happens when the server restarts under it.
//!
//! One task per node, started by the first `subscribe` and stopped by `close`. It subscribes an
//! inbox, makes sure the node's consumer exists, then asks with `$JS.API.CONSUMER.MSG.NEXT` for
//! at most `min(pull_batch, room)` messages, where `room` is `max_ack_pending` minus what the
//! node holds unsettled (the ledger). Once a pull has at most half a batch left to serve, the
//! next request goes out (sized to the room beyond what is already asked), so the server has a
//! request waiting when a batch completes instead of idling for the loop's round trip. So the
//! server never has to hold a pull back, and a node whose subscribers fall behind simply stops
//! asking (back-pressure): memory stays bounded by `max_ack_pending` messages.
//!
//! Each message goes to the local subscribers of its channel (the subject after
//! `<subject_prefix>.`), in stream order, each subscriber with its own copy (see `settle.rs`).
//! It is flagged redelivered when the server counts more than one delivery, and also when its
//! stream sequence is not above the highest this loop has delivered: a consumer hands out first
//! deliveries in sequence order, so anything at or below that mark was delivered before. This
//! catches the replay after a server crash, where the server lost the consumer's delivery counts
//! and reports each message as new. The mark starts again when the stream was created anew.
//!
//! A full subscriber queue holds the loop up to `lag_timeout`, then that subscriber is cut off
//! as lagged (see `deliver_acked`). A message for a channel without a local subscriber is
//! *parked* during the resume window (the first `resume_window` after the consumer started), so
//! that the clients of a restarted hub, subscribing again, get what was published while it was
//! away; a subscriber that arrives hands its channel's parked messages back to the server, which
//! delivers them again at once. Parked messages take at most half of `max_ack_pending` (the
//! oldest is skipped to make room), so live traffic keeps flowing meanwhile. After the window,
//! and for parked messages when it closes, a message nobody on the node subscribes to is
//! acknowledged and counted in `<ns>_bus_jetstream_skipped_total`. A message that claims to be a
//! bus message and does not read as one is terminated (`+TERM`) and counted as
//! `dropped{reason="malformed"}`; one from a publisher outside the bus is delivered (or, with
//! `foreign_messages = "drop"`, acknowledged and counted as dropped) as `framing.rs` says.
//!
//! Status replies steer the loop: `408` (the pull expired), `404` and `409 Exceeded
//! MaxAckPending` end a pull; any other `409` (consumer deleted, leadership change) and `503` (no
//! responders: JetStream not ready, stream gone) make it look the consumer up again,
//! re-creating stream and consumer if they vanished. A pull is over once its `pull_expires` has
//! passed, whether or not the server said so, and the next one goes out at once: nats-server 2.9
//! does not always say so, and drops without a word a pull whose expiry meets the first new
//! message, which then waits for the next pull (see `pull`). A `408` that arrives before the
//! current pull could have expired is the end of the one before and changes nothing. When the
//! inbox brought nothing at all (no message, no status, no heartbeat) for `pull_expires` plus a
//! grace of 250 ms, the server does not hear the loop (one that restarted without its store may
//! drop requests for a consumer it no longer knows), so the loop looks the consumer up again
//! before it pulls. After the link reconnects the loop pulls again at once. Failures back off
//! with jitter from the bus's seeded generator.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::time::Instant;

use super::JetStream;
use super::ack::{RootAck, parse_ack_subject};
use super::api::{self, PullRequest};
use super::consumer::{self, Seen};
use crate::backend::nats::framing::{self, Received};
use crate::backend::nats::link::{LinkMessage, LinkPublish, LinkSubscription};
use crate::backend::nats::until;
use crate::backend::{Delivered, deliver_acked};
use crate::bus::validate_channel;
use crate::config::ForeignMessages;
use crate::metrics::DropReason;
use crate::queue::ChannelName;
use crate::settle::Settle;

/// The loop was told to stop.
struct Stopped;

/// How long after a pull's expiry its last messages (or its 408) may still be on their way: a
/// loop that heard nothing at all for `pull_expires` plus this looks the consumer up again.
const EXPIRY_GRACE: std::time::Duration = std::time::Duration::from_millis(250);

/// Runs `work` unless the bus closes first.
async fn or_stop<T>(js: &JetStream, work: impl Future<Output = T>) -> Result<T, Stopped> {
    // `biased` everywhere: tokio's default random branch order would make simulation runs
    // differ for the same seed.
    tokio::select! {
        biased;
        _ = js.cancel.cancelled() => Err(Stopped),
        value = work => Ok(value),
    }
}

/// The pull loop task.
pub(super) async fn run(js: Arc<JetStream>) {
    let mut puller = Puller {
        inbox: js.link.new_inbox(),
        js: &js,
        subscription: None,
        seen: None,
        consumer_ready: false,
        failures: 0,
        highest_sequence: 0,
        window_closes: None,
        last_heard: Instant::now(),
    };
    let Err(Stopped) = puller.serve().await;
}

/// A pull request the server may still be serving.
struct Requested {
    /// How many messages it may still bring.
    remaining: usize,
    /// When the server ends it, brought or not.
    expires: Instant,
}

/// How one pull ended.
enum Outcome {
    /// Every request is complete (its batch arrived, the server ended it, or its expiry
    /// passed): pull again.
    Done,
    /// The server holds back deliveries (its `max_ack_pending` is reached): wait for acks.
    Saturated,
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
    js: &'a JetStream,
    inbox: String,
    subscription: Option<LinkSubscription>,
    seen: Seen,
    consumer_ready: bool,
    failures: u32,
    /// The highest stream sequence delivered so far.
    highest_sequence: u64,
    /// When the resume window closes; `None` before the consumer first started.
    window_closes: Option<Instant>,
    /// When the inbox last brought anything (a message, a status, a heartbeat).
    last_heard: Instant,
}

impl Puller<'_> {
    async fn serve(&mut self) -> Result<std::convert::Infallible, Stopped> {
        loop {
            if !self.js.link.is_connected() {
                self.back_off().await?;
                continue;
            }
            let mut subscription = match self.subscription.take() {
                Some(subscription) => subscription,
                None => match or_stop(self.js, self.js.link.subscribe(&self.inbox)).await? {
                    Ok(subscription) => subscription,
                    Err(error) => {
                        tracing::debug!(%error, "subscribing the pull inbox failed");
                        self.back_off().await?;
                        continue;
                    }
                },
            };
            if !self.consumer_ready {
                match or_stop(self.js, consumer::ensure(self.js, &mut self.seen)).await? {
                    Ok(ensured) => {
                        if ensured.new_stream {
                            self.highest_sequence = 0;
                            self.js.ledger.clear();
                        }
                        // What the consumer handed out before (in an earlier run of this node,
                        // say) and comes again is a redelivery.
                        self.highest_sequence = self.highest_sequence.max(ensured.delivered_up_to);
                    }
                    Err(_) => {
                        self.subscription = Some(subscription);
                        self.back_off().await?;
                        continue;
                    }
                }
                self.consumer_ready = true;
                self.last_heard = Instant::now();
                self.window_closes
                    .get_or_insert_with(|| Instant::now() + self.js.js.resume_window);
            }
            self.close_window_if_due().await;
            let room = self.room().await?;
            let outcome = self.pull(&mut subscription, room).await?;
            match outcome {
                Outcome::Done => {
                    self.failures = 0;
                    self.subscription = Some(subscription);
                }
                Outcome::Saturated => {
                    self.subscription = Some(subscription);
                    let freed = self.js.ledger.freed();
                    let wait = tokio::time::sleep(self.js.js.pull_expires);
                    or_stop(self.js, async {
                        tokio::select! {
                            biased;
                            _ = freed => {}
                            _ = wait => {}
                        }
                    })
                    .await?;
                }
                Outcome::Repull => {
                    self.last_heard = Instant::now();
                    self.subscription = Some(subscription);
                }
                Outcome::Recheck => {
                    self.consumer_ready = false;
                    self.subscription = Some(subscription);
                    self.back_off().await?;
                }
                Outcome::NotSent => {
                    self.subscription = Some(subscription);
                    self.back_off().await?;
                }
                Outcome::InboxLost => self.back_off().await?,
            }
        }
    }

    async fn back_off(&mut self) -> Result<(), Stopped> {
        let delay = crate::backoff::Backoff::default().delay(self.failures, &self.js.options.ids);
        self.failures = self.failures.saturating_add(1);
        let reconnected = self.js.reconnected.notified();
        or_stop(self.js, async {
            tokio::select! {
                biased;
                _ = reconnected => {}
                _ = tokio::time::sleep(delay) => {}
            }
        })
        .await
    }

    /// Once the resume window has closed, skips whatever is still parked.
    async fn close_window_if_due(&mut self) {
        if self
            .window_closes
            .is_some_and(|closes| Instant::now() >= closes)
            && self.js.ledger.parked() > 0
        {
            let parked = self.js.ledger.unpark_all();
            tracing::info!(
                skipped = parked.len(),
                "resume window closed; skipping messages no local subscriber claimed"
            );
            for root in parked {
                skip(self.js, &root).await;
            }
        }
    }

    fn in_window(&self) -> bool {
        self.window_closes
            .is_some_and(|closes| Instant::now() < closes)
    }

    /// How many messages the next pull may ask for; waits while that is none.
    async fn room(&mut self) -> Result<usize, Stopped> {
        loop {
            let freed = self.js.ledger.freed();
            let room = self.js.ledger.room();
            if room > 0 {
                return Ok(room);
            }
            let closes = self.window_closes.filter(|_| self.js.ledger.parked() > 0);
            or_stop(self.js, async {
                tokio::select! {
                    biased;
                    _ = freed => {}
                    _ = until(closes) => {}
                }
            })
            .await?;
            self.close_window_if_due().await;
        }
    }

    /// Sends one pull request (at most `room` messages) and hands what it brings to the local
    /// subscribers, keeping the next request waiting at the server while messages flow.
    ///
    /// Once the oldest request has at most half a batch left to serve and no second one is
    /// out, the next goes out (sized to what the ledger has room for beyond what is already
    /// asked), so the server never waits for the loop between two batches: without it, each
    /// batch ended with an idle round trip in which nothing could be delivered. The server
    /// serves waiting requests in order, so each message counts against the oldest request.
    async fn pull(
        &mut self,
        subscription: &mut LinkSubscription,
        room: usize,
    ) -> Result<Outcome, Stopped> {
        let options = &self.js.js;
        // Registered before the request goes out, so a reconnect while it is pending is seen.
        let reconnected = self.js.reconnected.notified();
        tokio::pin!(reconnected);
        reconnected.as_mut().enable();
        let mut pending = VecDeque::with_capacity(2);
        match self.request(options.pull_batch.min(room).max(1)).await? {
            Some(first) => pending.push_back(first),
            None => return Ok(Outcome::NotSent),
        }
        // The server ends a pull at `expires`, but does not always say so: nats-server 2.9
        // answers 408 for a pull that got nothing, stays silent for one that got part of its
        // batch, and drops without a word one whose expiry met the first new message (the
        // message then waits for the next pull). So a pull is over once its expiry has passed,
        // whatever was heard, and the next one goes out at once, not after a grace: waiting
        // would leave that message, and everything published behind it, without a pull. What
        // an old pull still sends arrives during the next one and counts there like any other,
        // and its 408 is told apart by its time, since a pull cannot expire before its own
        // `expires` has passed.
        // A loop that hears nothing at all (no message, no status, no heartbeat) for a whole
        // pull and the grace before it is not heard: a server that restarted without its store,
        // say, does not know the consumer and may drop the request. Pulling again would go
        // unheard the same way, so the consumer is looked up (and re-created) first.
        loop {
            if let [oldest] = pending.as_slices().0
                && oldest.remaining <= options.pull_batch / 2
            {
                self.close_window_if_due().await;
                let room = self.js.ledger.room().saturating_sub(oldest.remaining);
                let next = options.pull_batch.min(room);
                if next > 0 && next >= options.pull_batch / 2 {
                    match self.request(next).await? {
                        Some(request) => pending.push_back(request),
                        None => return Ok(Outcome::NotSent),
                    }
                }
            }
            let Some(oldest) = pending.front_mut() else {
                return Ok(Outcome::Done);
            };
            let expires = oldest.expires;
            let message = tokio::select! {
                biased;
                _ = self.js.cancel.cancelled() => return Err(Stopped),
                _ = &mut reconnected => return Ok(Outcome::Repull),
                message = subscription.next() => message,
                _ = tokio::time::sleep_until(expires) => {
                    pending.pop_front();
                    if !pending.is_empty() {
                        continue;
                    }
                    let quiet = self.last_heard + options.pull_expires + EXPIRY_GRACE;
                    return Ok(if Instant::now() >= quiet { Outcome::Recheck } else { Outcome::Done });
                }
            };
            let Some(message) = message else {
                return Ok(Outcome::InboxLost);
            };
            self.last_heard = Instant::now();
            match message.status {
                None => {
                    or_stop(self.js, self.deliver(message)).await?;
                    if let Some(oldest) = pending.front_mut() {
                        oldest.remaining = oldest.remaining.saturating_sub(1);
                        if oldest.remaining == 0 {
                            pending.pop_front();
                        }
                    }
                }
                // An idle heartbeat: the pull is alive.
                Some(100) => {}
                // The end of an earlier pull, which expired here before the server said so.
                Some(408) if Instant::now() < expires => {}
                Some(404 | 408) => {
                    pending.pop_front();
                }
                Some(409)
                    if message
                        .description
                        .as_deref()
                        .is_some_and(|d| d.contains("MaxAckPending")) =>
                {
                    return Ok(Outcome::Saturated);
                }
                Some(status) => {
                    tracing::debug!(status, description = ?message.description, "pull ended; looking the consumer up again");
                    return Ok(Outcome::Recheck);
                }
            }
        }
    }

    /// Asks the server for the next `batch` messages; `None` if the request could not be sent.
    async fn request(&mut self, batch: usize) -> Result<Option<Requested>, Stopped> {
        let options = &self.js.js;
        let request = PullRequest {
            batch,
            expires: api::nanos(options.pull_expires),
        };
        let Ok(payload) = serde_json::to_vec(&request) else {
            return Ok(None);
        };
        let request = LinkPublish {
            subject: format!(
                "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
                options.stream, self.js.consumer.durable
            ),
            reply: Some(self.inbox.clone()),
            headers: Vec::new(),
            payload: Bytes::from(payload),
        };
        let sent = or_stop(self.js, self.js.link.publish(request)).await?;
        Ok(sent.is_ok().then(|| Requested {
            remaining: batch,
            expires: Instant::now() + options.pull_expires,
        }))
    }

    /// Hands one message to the channel's local subscribers, or parks or skips it.
    async fn deliver(&mut self, message: LinkMessage) {
        let js = self.js;
        let Some(subject) = message.reply.clone() else {
            // Not a JetStream delivery: there is nothing to settle it with.
            js.metrics.dropped(DropReason::Malformed, 1);
            return;
        };
        let Some(ack) = parse_ack_subject(&subject) else {
            js.metrics.dropped(DropReason::Malformed, 1);
            return;
        };
        let redelivered = ack.delivered > 1 || ack.stream_sequence <= self.highest_sequence;
        self.highest_sequence = self.highest_sequence.max(ack.stream_sequence);
        if redelivered {
            js.bus_metrics.jetstream_redeliveries().inc();
        }
        let root = RootAck::track(
            js.link.clone(),
            js.ledger.clone(),
            ack.stream_sequence,
            subject,
        );
        let channel = message
            .subject
            .strip_prefix(js.js.subject_prefix.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .filter(|channel| validate_channel(channel).is_ok());
        let decoded =
            channel.map(|channel| (channel, framing::decode(message.headers, message.payload)));
        let (channel, template) = match decoded {
            Some((channel, Received::Bus(envelope))) => {
                let channel: ChannelName = channel.into();
                let template = crate::backend::delivery(channel.clone(), envelope, redelivered);
                (channel, template)
            }
            Some((
                channel,
                Received::Foreign {
                    payload,
                    headers,
                    given_id,
                },
            )) => {
                if js.options.foreign_messages == ForeignMessages::Drop {
                    js.metrics.dropped(DropReason::Foreign, 1);
                    if let Err(error) = root.ack().await {
                        tracing::debug!(%error, "acknowledging a dropped foreign message failed; it comes back after ack_wait");
                    }
                    return;
                }
                js.metrics.foreign.inc();
                let channel: ChannelName = channel.into();
                let id = framing::foreign_stream_id(given_id, ack.timestamp, ack.stream_sequence);
                let template = crate::backend::foreign_delivery(
                    channel.clone(),
                    payload,
                    (id, ack.timestamp),
                    headers,
                    redelivered,
                );
                (channel, template)
            }
            malformed => {
                js.metrics.dropped(DropReason::Malformed, 1);
                let admitted = js
                    .malformed_log
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .admit(1);
                if let Some(left_out) = admitted {
                    let error = match malformed {
                        Some((_, Received::Malformed(error))) => error,
                        _ => "the subject names no valid channel".to_owned(),
                    };
                    tracing::warn!(subject = %message.subject, %error, left_out, "terminating a JetStream message that claims to be a bus message and is not one");
                }
                // It would fail the same way every time it came back.
                if let Err(error) = root.terminate().await {
                    tracing::debug!(%error, "terminating a malformed message failed");
                }
                return;
            }
        };
        // Planted `ack_before_delivery`: the server is told the message was handled before any
        // subscriber has it; whatever happens to the copies, it never comes back.
        #[cfg(hubbus_planted)]
        if crate::planted::active("ack_before_delivery") {
            let _ = root.ack().await;
        }
        loop {
            let parent = root.clone() as Arc<dyn Settle>;
            match deliver_acked(
                &js.fanout,
                &js.metrics,
                &template,
                parent,
                js.options.lag_timeout,
            )
            .await
            {
                Delivered::Queued => return,
                // The bus is closing: the message stays with the server for the next run.
                Delivered::Closed => {
                    root.abandon();
                    return;
                }
                Delivered::Nobody => {}
            }
            if !self.in_window() {
                skip(js, &root).await;
                return;
            }
            // Parked under the claims lock: a subscriber registered before the lock is seen
            // here (and gets the message now), one registered after claims it.
            let parked = {
                let _claims = js.claims.lock().unwrap_or_else(|e| e.into_inner());
                if js.fanout.has_subscribers(&channel) {
                    false
                } else {
                    js.ledger
                        .park(ack.stream_sequence, channel.clone(), root.clone());
                    true
                }
            };
            if parked {
                self.limit_parked().await;
                return;
            }
        }
    }

    /// Keeps parked messages to half of `max_ack_pending`, skipping the oldest.
    async fn limit_parked(&mut self) {
        let limit = (self.js.js.max_ack_pending / 2).max(1);
        while self.js.ledger.parked() > limit {
            match self.js.ledger.unpark_oldest() {
                Some(root) => skip(self.js, &root).await,
                None => return,
            }
        }
    }
}

/// Acknowledges a message no local subscriber wants.
async fn skip(js: &JetStream, root: &RootAck) {
    js.bus_metrics.jetstream_skipped().inc();
    if let Err(error) = root.ack().await {
        tracing::debug!(%error, "acknowledging a skipped message failed; it comes back after ack_wait");
    }
}
