//! One durable pull consumer per (node, channel): its name, its configuration, and finding,
//! creating, re-creating and deleting it on the server.
//!
//! The durable name is derived from the node id and the channel alone, so a hub that restarts
//! with the same node id finds its consumer again and continues where it left off (unacked
//! deliveries come back, and what was published while it was away is delivered). NATS names may
//! not contain `.`, `*`, `>` or whitespace, and should stay short because the server stores each
//! consumer under its name; so the name is `hubbus_<node>_<channel>_<hash>`, where node and
//! channel keep only `[A-Za-z0-9_-]` (anything else becomes `_`) and at most 48 bytes each, and
//! the hash (64-bit FNV-1a of the exact node id and channel) keeps names unique where
//! replacing or cutting would merge them.
//!
//! A consumer is created with deliver policy `new`: a hub cares about what is published after
//! it subscribed, not about the stream's history. A consumer that vanished while its pull loop
//! ran (deleted by hand, or the server came back with an empty store) is created again so that
//! nothing acknowledged is skipped: in the same stream it starts after the last ack floor it
//! reported (or where it started, before its first ack), in a stream created anew it starts at
//! the stream's beginning, since everything in that stream is newer than what the node had
//! seen. What comes again this way is flagged redelivered by the pull loop.
//!
//! Consumers get an inactive threshold equal to the stream's maximum age (servers from 2.9 on
//! honour it for durables): a consumer whose hub never comes back, for example because hubs
//! generate their node ids, is removed once everything it could still deliver has expired. With
//! no maximum age, such consumers stay until deleted by hand; give hubs stable node ids.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::oneshot;

use super::Shared;
use super::api::{
    self, CONSUMER_NOT_FOUND, CallError, ConsumerConfig, ConsumerInfo, CreateConsumer, DeliverFrom,
};
use super::stream;
use crate::id::NodeId;

/// How many bytes of the node id and of the channel a durable name keeps.
const NAME_PART: usize = 48;

/// The durable consumer name of `channel` on `node`.
pub(super) fn durable_name(node: &NodeId, channel: &str) -> String {
    let mut name = String::from("hubbus_");
    push_name_part(&mut name, node.as_str());
    name.push('_');
    push_name_part(&mut name, channel);
    let _ = write!(name, "_{:016x}", fnv1a(node.as_str(), channel));
    name
}

fn push_name_part(name: &mut String, part: &str) {
    name.extend(part.bytes().take(NAME_PART).map(|b| {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            char::from(b)
        } else {
            '_'
        }
    }));
}

/// 64-bit FNV-1a over the node id, a separator no node id contains, and the channel: stable
/// across platforms and releases, unlike the standard library's hasher.
fn fnv1a(node: &str, channel: &str) -> u64 {
    let bytes = node.bytes().chain([0xff]).chain(channel.bytes());
    bytes.fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The consumer of one channel, as its pull loop, `subscribe` and the ack-pending sweep share it.
#[derive(Debug)]
pub(super) struct ConsumerState {
    pub(super) durable: String,
    pub(super) channel: String,
    pub(super) filter_subject: String,
    /// `num_ack_pending` as last reported by the server.
    ack_pending: AtomicU64,
    /// A stream sequence up to which every message of the consumer is settled or was never
    /// its to deliver: the highest of the ack floors the server reported and of where the
    /// consumer started. A consumer created again starts after it.
    floor: AtomicU64,
    readiness: Mutex<Readiness>,
}

/// Whether the consumer has been confirmed once, and who waits for that.
#[derive(Debug, Default)]
struct Readiness {
    ready: bool,
    waiters: Vec<oneshot::Sender<()>>,
}

impl ConsumerState {
    pub(super) fn new(shared: &Shared, channel: &str) -> Self {
        ConsumerState {
            durable: durable_name(&shared.options.node_id, channel),
            channel: channel.to_owned(),
            filter_subject: stream::subject(&shared.js, channel),
            ack_pending: AtomicU64::new(0),
            floor: AtomicU64::new(0),
            readiness: Mutex::new(Readiness::default()),
        }
    }

    fn readiness(&self) -> std::sync::MutexGuard<'_, Readiness> {
        self.readiness.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver that fires once the consumer exists on the server; `None` if it already does.
    pub(super) fn wait_ready(&self) -> Option<oneshot::Receiver<()>> {
        let mut readiness = self.readiness();
        if readiness.ready {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        readiness.waiters.push(tx);
        Some(rx)
    }

    /// The consumer exists: wake everyone waiting for it.
    pub(super) fn mark_ready(&self) {
        let waiters = {
            let mut readiness = self.readiness();
            readiness.ready = true;
            std::mem::take(&mut readiness.waiters)
        };
        for waiter in waiters {
            let _ = waiter.send(());
        }
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

/// What a pull loop remembers between look-ups: the creation time of the stream its consumer
/// lived in when it was last seen, `None` before the first time.
pub(super) type Seen = Option<String>;

/// The configuration the bus creates consumers with (starting at `new`).
fn config(shared: &Shared, consumer: &ConsumerState) -> ConsumerConfig {
    let js = &shared.js;
    ConsumerConfig {
        durable_name: consumer.durable.clone(),
        description: format!(
            "hubbus node {} channel {}",
            shared.options.node_id, consumer.channel
        ),
        deliver_policy: "new",
        opt_start_seq: None,
        ack_policy: "explicit",
        ack_wait: api::nanos(js.ack_wait),
        max_deliver: js.max_deliver.map_or(-1, |n| n as i64),
        filter_subject: consumer.filter_subject.clone(),
        replay_policy: "instant",
        inactive_threshold: (!js.max_age.is_zero()).then(|| api::nanos(js.max_age)),
    }
}

/// True when an existing consumer of this name is one the pull loop can use.
fn usable(info: &ConsumerInfo, consumer: &ConsumerState) -> bool {
    info.config.filter_subject.as_deref() == Some(consumer.filter_subject.as_str())
        && info.config.ack_policy == "explicit"
        && info.config.deliver_subject.is_none()
}

/// Where a consumer created now must start, given what its loop saw before.
fn start_for(seen: &Seen, stream_created: &str, consumer: &ConsumerState) -> DeliverFrom {
    match seen {
        None => DeliverFrom::New,
        Some(created) if created == stream_created => DeliverFrom::Sequence(consumer.floor() + 1),
        Some(_) => DeliverFrom::All,
    }
}

/// Makes sure the stream and the consumer exist, creating whichever is missing. True when the
/// stream is not the one the consumer was seen in before (it was created anew, so its
/// sequences started again).
pub(super) async fn ensure(
    shared: &Shared,
    consumer: &ConsumerState,
    seen: &mut Seen,
) -> Result<bool, String> {
    let js = &shared.js;
    let link = shared.link.as_ref();
    let stream_created = stream::ensure(shared).await.map_err(|p| p.to_string())?;
    let new_stream = seen
        .as_ref()
        .is_some_and(|created| *created != stream_created);
    if new_stream {
        // Its sequences started again: what was known about the old one means nothing here.
        consumer.floor.store(0, Ordering::Release);
    }
    let from = match info(shared, consumer).await {
        Ok(info) if usable(&info, consumer) => {
            consumer.observe(&info);
            *seen = Some(stream_created);
            return Ok(new_stream);
        }
        Ok(_) => {
            // The name is this bus's own (prefix and hash); a consumer under it that pushes,
            // filters another subject or does not ack explicitly was changed by hand.
            delete(shared, consumer).await;
            start_for(seen, &stream_created, consumer)
        }
        Err(error) if error.is(CONSUMER_NOT_FOUND) => start_for(seen, &stream_created, consumer),
        Err(error) => return Err(format!("looking up consumer {}: {error}", consumer.durable)),
    };
    let request = CreateConsumer {
        stream_name: &js.stream,
        config: config(shared, consumer).deliver_from(from),
    };
    let subject = format!(
        "$JS.API.CONSUMER.DURABLE.CREATE.{}.{}",
        js.stream, consumer.durable
    );
    match api::call::<ConsumerInfo>(link, subject, &request, js.api_timeout).await {
        Ok(info) => {
            consumer.observe_created(&info);
            *seen = Some(stream_created);
            Ok(new_stream)
        }
        Err(error) => Err(format!("creating consumer {}: {error}", consumer.durable)),
    }
}

/// `$JS.API.CONSUMER.INFO` for `consumer`.
pub(super) async fn info(
    shared: &Shared,
    consumer: &ConsumerState,
) -> Result<ConsumerInfo, CallError> {
    let subject = format!(
        "$JS.API.CONSUMER.INFO.{}.{}",
        shared.js.stream, consumer.durable
    );
    api::call(
        shared.link.as_ref(),
        subject,
        &api::Empty {},
        shared.js.api_timeout,
    )
    .await
}

/// Deletes `consumer` on the server; failures are left to the inactive threshold.
pub(super) async fn delete(shared: &Shared, consumer: &ConsumerState) {
    let subject = format!(
        "$JS.API.CONSUMER.DELETE.{}.{}",
        shared.js.stream, consumer.durable
    );
    let _ = api::call::<serde::de::IgnoredAny>(
        shared.link.as_ref(),
        subject,
        &api::Empty {},
        shared.js.api_timeout,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> NodeId {
        NodeId::new(id).unwrap()
    }

    #[test]
    fn durable_names_are_valid_nats_names_and_stable() {
        let name = durable_name(&node("hub-a.eu:1"), "chat.room-1:members");
        assert!(
            name.starts_with("hubbus_hub-a_eu_1_chat_room-1_members_"),
            "{name}"
        );
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "{name}"
        );
        assert_eq!(
            name,
            durable_name(&node("hub-a.eu:1"), "chat.room-1:members")
        );
        // Pinned: a hub that restarts after an upgrade must find its consumers again.
        assert_eq!(fnv1a("a", "b"), 0xe57d_a319_03de_37b1);
    }

    #[test]
    fn names_that_sanitise_alike_stay_distinct() {
        let a = durable_name(&node("hub"), "a.b");
        let b = durable_name(&node("hub"), "a:b");
        let c = durable_name(&node("hub.a"), "b");
        assert_ne!(a, b);
        assert_ne!(a, c);
        let long = "x".repeat(255);
        let longer = format!("{}y", "x".repeat(254));
        let (long, longer) = (
            durable_name(&node(&long), &long),
            durable_name(&node(&longer), &longer),
        );
        assert_ne!(long, longer);
        assert!(long.len() <= 7 + 48 + 1 + 48 + 1 + 16, "{}", long.len());
    }
}
