//! The node's durable pull consumer: its name, its configuration, and finding, creating and
//! re-creating it on the server.
//!
//! One consumer per node covers the bus's whole subject space (`<subject_prefix>.>`). Its name is
//! derived from the node id alone, so a hub that restarts with the same node id finds its
//! consumer again and continues where it left off: unacked deliveries come back, and what was
//! published while it was away is delivered. NATS names may not contain `.`, `*`, `>` or
//! whitespace, and should stay short because the server stores each consumer under its name; so
//! the name is `hubbus_<node>_<hash>` (see `node_token`).
//!
//! A consumer is created with deliver policy `new`: a hub cares about what is published after
//! it subscribed, not about the stream's history. A consumer that vanished while the bus ran
//! (deleted by hand, expired, or the server came back with an empty store) is created again so
//! that nothing acknowledged is skipped: in the same stream it starts after the last ack floor
//! it reported (or where it started, before its first ack), in a stream created anew it starts
//! at the stream's beginning, since everything in that stream is newer than what the node had
//! seen. What comes again this way is flagged redelivered by the pull loop.
//!
//! The consumer's `inactive_threshold` is a setting of its own (24 hours by default): the server
//! removes a consumer nobody pulled from for that long, which is how the consumers of hubs that
//! never come back go away. Closing a bus never deletes its consumer.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::oneshot;

use super::JetStream;
use super::api::{
    self, CONSUMER_NOT_FOUND, CallError, ConsumerConfig, ConsumerInfo, CreateConsumer, DeliverFrom,
};
use super::stream;
use crate::backend::nats::{JetStreamOptions, node_token};
use crate::id::NodeId;
use crate::waiters::Waiters;

/// The durable consumer name of `node`.
pub(super) fn durable_name(node: &NodeId) -> String {
    format!("hubbus_{}", node_token(node))
}

/// What `subscribe` learns about the consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Readiness {
    /// It exists on the server.
    Ready,
    /// The server refuses it (a consumer limit, permissions); retrying helps only once an
    /// operator changed something.
    Refused(String),
    /// The server cannot be asked right now.
    Unavailable(String),
}

/// Why the consumer could not be made sure of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ConsumerProblem {
    Refused(String),
    Unavailable(String),
}

impl ConsumerProblem {
    fn reason(&self) -> &str {
        match self {
            ConsumerProblem::Refused(reason) | ConsumerProblem::Unavailable(reason) => reason,
        }
    }
}

/// The node's consumer, as the pull loop, `subscribe` and the ack-pending sweep share it.
#[derive(Debug)]
pub(super) struct ConsumerState {
    pub(super) durable: String,
    pub(super) filter_subject: String,
    /// `num_ack_pending` as last reported by the server.
    ack_pending: AtomicU64,
    /// A stream sequence up to which every message of the consumer is settled or was never
    /// its to deliver: the highest of the ack floors the server reported and of where the
    /// consumer started. A consumer created again starts after it.
    floor: AtomicU64,
    readiness: Mutex<ReadinessState>,
}

/// Whether the consumer has been confirmed once, and who waits for that.
#[derive(Debug, Default)]
struct ReadinessState {
    ready: bool,
    waiters: Waiters<Readiness>,
}

impl ConsumerState {
    pub(super) fn new(node: &NodeId, js: &JetStreamOptions) -> Self {
        ConsumerState {
            durable: durable_name(node),
            filter_subject: format!("{}.>", js.subject_prefix),
            ack_pending: AtomicU64::new(0),
            floor: AtomicU64::new(0),
            readiness: Mutex::new(ReadinessState::default()),
        }
    }

    fn readiness(&self) -> std::sync::MutexGuard<'_, ReadinessState> {
        self.readiness.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True once the consumer was confirmed on the server.
    pub(super) fn is_ready(&self) -> bool {
        self.readiness().ready
    }

    /// A receiver that fires with the next outcome of making sure of the consumer; `None` if
    /// it was confirmed already.
    pub(super) fn wait_ready(&self) -> Option<oneshot::Receiver<Readiness>> {
        let mut readiness = self.readiness();
        if readiness.ready {
            return None;
        }
        Some(readiness.waiters.wait())
    }

    /// Tells everyone waiting what came of the last attempt.
    pub(super) fn settle_waiters(&self, outcome: Readiness) {
        let mut readiness = self.readiness();
        if outcome == Readiness::Ready {
            readiness.ready = true;
        }
        readiness.waiters.wake(outcome);
    }

    /// `num_ack_pending` as last reported.
    pub(super) fn ack_pending(&self) -> u64 {
        self.ack_pending.load(Ordering::Acquire)
    }

    /// Remembers what the server reported about the consumer.
    pub(super) fn observe(&self, info: &ConsumerInfo) {
        self.ack_pending
            .store(info.num_ack_pending, Ordering::Release);
        self.floor
            .fetch_max(info.ack_floor.stream_seq, Ordering::AcqRel);
    }

    /// Remembers a consumer just created: it delivers nothing at or below where it starts, and
    /// the server reports an ack floor of zero until the first ack.
    fn observe_created(&self, info: &ConsumerInfo) {
        self.observe(info);
        self.floor
            .fetch_max(info.delivered.stream_seq, Ordering::AcqRel);
    }

    /// The consumer is gone: nothing is pending on it any more.
    pub(super) fn forget_pending(&self) {
        self.ack_pending.store(0, Ordering::Release);
    }

    fn floor(&self) -> u64 {
        self.floor.load(Ordering::Acquire)
    }
}

/// What the pull loop remembers between look-ups: the creation time of the stream the consumer
/// lived in when it was last seen, `None` before the first time.
pub(super) type Seen = Option<String>;

/// What making sure of the consumer found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ensured {
    /// The stream is not the one the consumer was seen in before (it was created anew, so its
    /// sequences started again).
    pub(super) new_stream: bool,
    /// The highest stream sequence the consumer has handed out (for a consumer just created,
    /// where it starts): anything at or below it that comes is a redelivery.
    pub(super) delivered_up_to: u64,
}

/// The configuration the bus creates its consumer with (starting at `new`).
fn config(js: &JetStream) -> ConsumerConfig {
    let options = &js.js;
    ConsumerConfig {
        durable_name: js.consumer.durable.clone(),
        description: format!("hubbus node {}", js.options.node_id),
        deliver_policy: "new",
        opt_start_seq: None,
        ack_policy: "explicit",
        ack_wait: api::nanos(options.ack_wait),
        max_deliver: options.max_deliver.map_or(-1, |n| n as i64),
        filter_subject: js.consumer.filter_subject.clone(),
        replay_policy: "instant",
        max_ack_pending: i64::try_from(options.max_ack_pending).unwrap_or(i64::MAX),
        inactive_threshold: api::nanos(options.inactive_threshold),
    }
}

/// True when an existing consumer of this name is one the pull loop can use.
fn usable(info: &ConsumerInfo, consumer: &ConsumerState) -> bool {
    info.config.filter_subject.as_deref() == Some(consumer.filter_subject.as_str())
        && info.config.ack_policy == "explicit"
        && info.config.deliver_subject.is_none()
}

/// Where a consumer created now must start, given what the loop saw before.
fn start_for(seen: &Seen, stream_created: &str, consumer: &ConsumerState) -> DeliverFrom {
    // Planted `consumer_deliver_new_after_gap`: a consumer created again starts with what is
    // published from now on, skipping what came while it was missing.
    #[cfg(hubbus_planted)]
    if seen.is_some() && crate::planted::active("consumer_deliver_new_after_gap") {
        return DeliverFrom::New;
    }
    match seen {
        None => DeliverFrom::New,
        Some(created) if created == stream_created => DeliverFrom::Sequence(consumer.floor() + 1),
        Some(_) => DeliverFrom::All,
    }
}

/// Makes sure the stream and the consumer exist, creating whichever is missing.
pub(super) async fn ensure(js: &JetStream, seen: &mut Seen) -> Result<Ensured, ConsumerProblem> {
    let outcome = look_up_or_create(js, seen).await;
    match &outcome {
        Ok(_) => {
            js.update(|status| status.consumer_failing = None);
            js.consumer.settle_waiters(Readiness::Ready);
        }
        Err(problem) => {
            js.bus_metrics.jetstream_consumer_errors().inc();
            tracing::warn!(consumer = %js.consumer.durable, reason = problem.reason(), "the node's JetStream consumer cannot be used");
            let reason = format!(
                "JetStream consumer {} cannot be used: {}",
                js.consumer.durable,
                problem.reason()
            );
            js.update(|status| status.consumer_failing = Some(reason.clone()));
            js.consumer.settle_waiters(match problem {
                ConsumerProblem::Refused(_) => Readiness::Refused(reason),
                ConsumerProblem::Unavailable(_) => Readiness::Unavailable(reason),
            });
        }
    }
    outcome
}

async fn look_up_or_create(js: &JetStream, seen: &mut Seen) -> Result<Ensured, ConsumerProblem> {
    let consumer = &js.consumer;
    let stream_created = stream::ensure(js)
        .await
        .map_err(|problem| ConsumerProblem::Unavailable(problem.to_string()))?;
    let new_stream = seen
        .as_ref()
        .is_some_and(|created| *created != stream_created);
    if new_stream {
        // Its sequences started again: what was known about the old one means nothing here.
        consumer.floor.store(0, Ordering::Release);
    }
    let from = match info(js).await {
        Ok(info) if usable(&info, consumer) => {
            consumer.observe(&info);
            *seen = Some(stream_created);
            return Ok(Ensured {
                new_stream,
                delivered_up_to: info.delivered.stream_seq,
            });
        }
        Ok(_) => {
            // The name is this bus's own (prefix and hash); a consumer under it that pushes,
            // filters another subject or does not ack explicitly was changed by hand.
            tracing::warn!(consumer = %consumer.durable, "replacing a consumer whose configuration was changed by hand");
            delete(js).await;
            start_for(seen, &stream_created, consumer)
        }
        Err(error) if error.is(CONSUMER_NOT_FOUND) => {
            if seen.is_some() {
                tracing::warn!(consumer = %consumer.durable, "the node's JetStream consumer vanished; creating it again where it had settled");
            }
            start_for(seen, &stream_created, consumer)
        }
        Err(error) => {
            return Err(ConsumerProblem::Unavailable(format!(
                "looking it up: {error}"
            )));
        }
    };
    let request = CreateConsumer {
        stream_name: &js.js.stream,
        config: config(js).deliver_from(from),
    };
    let subject = format!(
        "$JS.API.CONSUMER.DURABLE.CREATE.{}.{}",
        js.js.stream, consumer.durable
    );
    match api::call::<ConsumerInfo>(js.link.as_ref(), subject, &request, js.js.api_timeout).await {
        Ok(info) => {
            consumer.observe_created(&info);
            *seen = Some(stream_created);
            tracing::info!(consumer = %consumer.durable, "created the node's JetStream consumer");
            Ok(Ensured {
                new_stream,
                delivered_up_to: info.delivered.stream_seq,
            })
        }
        // The server understood and said no (a consumer limit, permissions, a bad setting).
        Err(CallError::Api(error)) if (400..500).contains(&error.code) => Err(
            ConsumerProblem::Refused(format!("the server refused to create it: {error}")),
        ),
        Err(error) => Err(ConsumerProblem::Unavailable(format!(
            "creating it: {error}"
        ))),
    }
}

/// `$JS.API.CONSUMER.INFO` for the node's consumer.
pub(super) async fn info(js: &JetStream) -> Result<ConsumerInfo, CallError> {
    let subject = format!(
        "$JS.API.CONSUMER.INFO.{}.{}",
        js.js.stream, js.consumer.durable
    );
    api::call(js.link.as_ref(), subject, &api::Empty {}, js.js.api_timeout).await
}

/// Deletes the node's consumer on the server (only to replace one changed by hand); failures
/// are left to the inactive threshold.
async fn delete(js: &JetStream) {
    let subject = format!(
        "$JS.API.CONSUMER.DELETE.{}.{}",
        js.js.stream, js.consumer.durable
    );
    if let Err(error) = api::call::<serde::de::IgnoredAny>(
        js.link.as_ref(),
        subject,
        &api::Empty {},
        js.js.api_timeout,
    )
    .await
    {
        tracing::warn!(consumer = %js.consumer.durable, %error, "deleting a consumer changed by hand failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> NodeId {
        NodeId::new(id).unwrap()
    }

    #[test]
    fn durable_names_are_valid_nats_names_and_stable() {
        let name = durable_name(&node("hub-a.eu:1"));
        assert!(name.starts_with("hubbus_hub-a_eu_1_"), "{name}");
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "{name}"
        );
        assert_eq!(name, durable_name(&node("hub-a.eu:1")));
        // Pinned: a hub that restarts after an upgrade must find its consumer again.
        assert_eq!(durable_name(&node("a")), "hubbus_a_af63dc4c8601ec8c");
    }

    #[test]
    fn names_that_sanitise_alike_stay_distinct() {
        assert_ne!(durable_name(&node("hub.a")), durable_name(&node("hub:a")));
        let long = durable_name(&node(&"x".repeat(255)));
        let longer = durable_name(&node(&format!("{}y", "x".repeat(254))));
        assert_ne!(long, longer);
        assert!(long.len() <= 7 + 48 + 1 + 16, "{}", long.len());
    }
}
