//! A consumer: its configuration and the state a server keeps on disk for it, and what acks,
//! naks, terms, progress and the ack wait do to that state.
//!
//! The state is nats-server's: `sseq` is the next stream sequence to look at, `dseq` the next
//! delivery sequence; `pending` holds every delivered, unsettled message (stream sequence to its
//! first delivery sequence and when it was last handed out); `redelivered` counts redeliveries.
//! The ack floor moves the way the server moves it: with the lowest pending message acked, up to
//! just below the next one still pending, and to the delivered point once nothing is pending.
//! A message that exceeds `max_deliver` is dropped from `pending` without moving the floor, as
//! on the real server.
//!
//! What the server keeps only in memory (the redelivery queue, waiting pulls, timers) lives in
//! the engine's runtime and is passed in.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

use super::json::{ApiError, Request, choice, is_false, is_zero, is_zero_u64};
use super::stream::Stream;
use super::subject;

/// The default `max_waiting` of a pull consumer.
const DEFAULT_MAX_WAITING: i64 = 512;
/// The default `ack_wait`: 30 s.
const DEFAULT_ACK_WAIT: i64 = 30_000_000_000;
/// The default `max_ack_pending` of an acking consumer.
const DEFAULT_MAX_ACK_PENDING: i64 = 1000;
/// The inactive threshold an ephemeral consumer gets when it names none: 5 s.
pub(crate) const EPHEMERAL_INACTIVE_THRESHOLD: i64 = 5_000_000_000;

/// A consumer's configuration after defaults, as `CONSUMER.INFO` reports it (field order as
/// nats-server 2.9 writes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct ConsumerConfig {
    #[serde(rename = "durable_name", skip_serializing_if = "String::is_empty")]
    pub(crate) durable: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) description: String,
    pub(crate) deliver_policy: String,
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub(crate) opt_start_seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) opt_start_time: Option<String>,
    pub(crate) ack_policy: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) ack_wait: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) max_deliver: i64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) backoff: Vec<i64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) filter_subject: String,
    pub(crate) replay_policy: String,
    #[serde(rename = "rate_limit_bps", skip_serializing_if = "is_zero_u64")]
    pub(crate) rate_limit: u64,
    #[serde(rename = "sample_freq", skip_serializing_if = "String::is_empty")]
    pub(crate) sample_frequency: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) max_waiting: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) max_ack_pending: i64,
    #[serde(rename = "idle_heartbeat", skip_serializing_if = "is_zero")]
    pub(crate) heartbeat: i64,
    #[serde(skip_serializing_if = "is_false")]
    pub(crate) flow_control: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub(crate) headers_only: bool,
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) max_batch: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) max_expires: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) max_bytes: i64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) deliver_subject: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) deliver_group: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) inactive_threshold: i64,
    pub(crate) num_replicas: i64,
    #[serde(rename = "mem_storage", skip_serializing_if = "is_false")]
    pub(crate) memory_storage: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub(crate) direct: bool,
}

impl ConsumerConfig {
    /// Reads a configuration as sent.
    pub(crate) fn read(request: &Request) -> Result<Self, ApiError> {
        let invalid = |_| ApiError::invalid_json();
        let mut deliver_policy = choice(
            request,
            "deliver_policy",
            &[
                "all",
                "undefined",
                "last",
                "new",
                "by_start_sequence",
                "by_start_time",
                "last_per_subject",
            ],
            "all",
        )?;
        if deliver_policy == "undefined" {
            deliver_policy = "all".to_owned();
        }
        let opt_start_time = request.word("opt_start_time").map_err(invalid)?;
        Ok(ConsumerConfig {
            durable: request.string("durable_name").map_err(invalid)?,
            name: request.string("name").map_err(invalid)?,
            description: request.string("description").map_err(invalid)?,
            deliver_policy,
            opt_start_seq: request.uint("opt_start_seq").map_err(invalid)?,
            opt_start_time,
            ack_policy: choice(request, "ack_policy", &["none", "all", "explicit"], "none")?,
            ack_wait: request.int("ack_wait").map_err(invalid)?,
            max_deliver: request.int("max_deliver").map_err(invalid)?,
            backoff: request.ints("backoff").map_err(invalid)?,
            filter_subject: request.string("filter_subject").map_err(invalid)?,
            replay_policy: choice(
                request,
                "replay_policy",
                &["instant", "original"],
                "instant",
            )?,
            rate_limit: request.uint("rate_limit_bps").map_err(invalid)?,
            sample_frequency: request.string("sample_freq").map_err(invalid)?,
            max_waiting: request.int("max_waiting").map_err(invalid)?,
            max_ack_pending: request.int("max_ack_pending").map_err(invalid)?,
            heartbeat: request.int("idle_heartbeat").map_err(invalid)?,
            flow_control: request.boolean("flow_control").map_err(invalid)?,
            headers_only: request.boolean("headers_only").map_err(invalid)?,
            max_batch: request.int("max_batch").map_err(invalid)?,
            max_expires: request.int("max_expires").map_err(invalid)?,
            max_bytes: request.int("max_bytes").map_err(invalid)?,
            deliver_subject: request.string("deliver_subject").map_err(invalid)?,
            deliver_group: request.string("deliver_group").map_err(invalid)?,
            inactive_threshold: request.int("inactive_threshold").map_err(invalid)?,
            num_replicas: request.int("num_replicas").map_err(invalid)?,
            memory_storage: request.boolean("mem_storage").map_err(invalid)?,
            direct: request.boolean("direct").map_err(invalid)?,
        })
    }

    /// Whether messages are pulled (no deliver subject).
    pub(crate) fn is_pull(&self) -> bool {
        self.deliver_subject.is_empty()
    }

    fn acks(&self) -> bool {
        self.ack_policy != "none"
    }

    /// Applies the server's defaults (`setConsumerConfigDefaults`).
    pub(crate) fn with_defaults(mut self) -> Self {
        if self.is_pull() && self.max_waiting == 0 {
            self.max_waiting = DEFAULT_MAX_WAITING;
        }
        if self.ack_wait == 0 && self.acks() {
            self.ack_wait = DEFAULT_ACK_WAIT;
        }
        if self.max_deliver == 0 {
            self.max_deliver = -1;
        }
        if let Some(first) = self.backoff.first() {
            self.ack_wait = *first;
        }
        if self.acks() && self.max_ack_pending == 0 {
            self.max_ack_pending = DEFAULT_MAX_ACK_PENDING;
        }
        self
    }

    /// The checks of `checkConsumerCfg` that can fail on a single server.
    pub(crate) fn check(&self, stream: &Stream) -> Result<(), ApiError> {
        if self.num_replicas > 0 && self.num_replicas > stream.config.num_replicas {
            return Err(ApiError::new(
                400,
                10126,
                "consumer config replica count exceeds parent stream",
            ));
        }
        if self.num_replicas < 0 {
            return Err(ApiError::replicas_negative());
        }
        if !self.backoff.is_empty() && self.max_deliver <= self.backoff.len() as i64 {
            return Err(ApiError::new(
                400,
                10116,
                "max deliver is required to be > length of backoff values",
            ));
        }
        if self.description.len() > 4096 {
            return Err(ApiError::new(
                400,
                10107,
                "consumer description is too long, maximum allowed is 4096",
            ));
        }
        if self.is_pull() {
            if self.ack_policy == "none" && stream.config.retention == "workqueue" {
                return Err(ApiError::new(
                    400,
                    10084,
                    "consumer in pull mode requires ack policy",
                ));
            }
            if self.rate_limit > 0 {
                return Err(ApiError::new(
                    400,
                    10086,
                    "consumer in pull mode can not have rate limit set",
                ));
            }
            if self.max_waiting < 0 {
                return Err(ApiError::new(
                    400,
                    10087,
                    "consumer max waiting needs to be positive",
                ));
            }
            if self.heartbeat > 0 {
                return Err(ApiError::new(
                    400,
                    10088,
                    "consumer idle heartbeat requires a push based consumer",
                ));
            }
            if self.flow_control {
                return Err(ApiError::new(
                    400,
                    10089,
                    "consumer flow control requires a push based consumer",
                ));
            }
            if self.max_batch < 0 {
                return Err(ApiError::new(
                    400,
                    10114,
                    "consumer max request batch needs to be > 0",
                ));
            }
            if self.max_expires != 0 && self.max_expires < 1_000_000 {
                return Err(ApiError::new(
                    400,
                    10115,
                    "consumer max request expires needs to be >= 1ms",
                ));
            }
        } else {
            if !subject::is_literal(&self.deliver_subject) {
                return Err(ApiError::new(
                    400,
                    10079,
                    "consumer deliver subject has wildcards",
                ));
            }
            if !subject::is_valid_subject(&self.deliver_subject) {
                return Err(ApiError::new(
                    400,
                    10112,
                    "invalid push consumer deliver subject",
                ));
            }
            if self.max_waiting != 0 {
                return Err(ApiError::new(
                    400,
                    10080,
                    "consumer in push mode can not set max waiting",
                ));
            }
        }
        // nats-server 2.9 takes any filter that overlaps one of the stream's subjects (a
        // `p.>` filter on a `p.a` stream), not only one inside them.
        if !self.filter_subject.is_empty()
            && stream.config.mirror.is_none()
            && stream.config.sources.is_none()
            && !stream
                .config
                .subjects
                .iter()
                .any(|s| subject::collide(&self.filter_subject, s))
        {
            return Err(ApiError::new(
                400,
                10093,
                "consumer filter subject is not a valid subset of the interest subjects",
            ));
        }
        self.check_start()?;
        if self.flow_control && self.heartbeat == 0 {
            return Err(ApiError::new(
                400,
                10108,
                "consumer with flow control also needs heartbeats",
            ));
        }
        if !self.durable.is_empty() && !self.name.is_empty() && self.name != self.durable {
            return Err(ApiError::new(
                400,
                10132,
                "Consumer Durable and Name have to be equal if both are provided",
            ));
        }
        Ok(())
    }

    fn check_start(&self) -> Result<(), ApiError> {
        let policy = |dp: &str| -> ApiError { ApiError::new(400, 10094, dp) };
        let bad_start = |dp: &str, start: &str| {
            policy(&format!(
                "consumer delivery policy is deliver {dp}, but optional start {start} is also set"
            ))
        };
        let not_set = |dp: &str, missing: &str| {
            policy(&format!(
                "consumer delivery policy is deliver {dp}, but optional {missing} is not set"
            ))
        };
        let sequence = self.opt_start_seq > 0;
        let time = self.opt_start_time.is_some();
        match self.deliver_policy.as_str() {
            dp @ ("all" | "last" | "new" | "last_per_subject") => {
                let dp = if dp == "last_per_subject" {
                    "last per subject"
                } else {
                    dp
                };
                if sequence {
                    return Err(bad_start(dp, "sequence"));
                }
                if time {
                    return Err(bad_start(dp, "time"));
                }
                if dp == "last per subject" && self.filter_subject.is_empty() {
                    return Err(not_set(dp, "filter subject"));
                }
            }
            "by_start_sequence" => {
                if !sequence {
                    return Err(not_set("by start sequence", "start sequence"));
                }
                if time {
                    return Err(bad_start("by start sequence", "time"));
                }
            }
            _ => {
                if !time {
                    return Err(not_set("by start time", "start time"));
                }
                if sequence {
                    return Err(bad_start("by start time", "start sequence"));
                }
            }
        }
        Ok(())
    }

    /// Why `self` may not replace `old` on an existing consumer (`checkNewConsumerConfig`).
    pub(crate) fn update_refusal(&self, old: &ConsumerConfig) -> Option<ApiError> {
        if self == old {
            return None;
        }
        let refuse = |reason: &str| Some(ApiError::consumer_create(reason));
        if self.deliver_policy != old.deliver_policy {
            return refuse("deliver policy can not be updated");
        }
        if self.opt_start_seq != old.opt_start_seq {
            return refuse("start sequence can not be updated");
        }
        if self.opt_start_time != old.opt_start_time {
            return refuse("start time can not be updated");
        }
        if self.ack_policy != old.ack_policy {
            return refuse("ack policy can not be updated");
        }
        if self.replay_policy != old.replay_policy {
            return refuse("replay policy can not be updated");
        }
        if self.heartbeat != old.heartbeat {
            return refuse("heart beats can not be updated");
        }
        if self.flow_control != old.flow_control {
            return refuse("flow control can not be updated");
        }
        if self.max_waiting != old.max_waiting {
            return refuse("max waiting can not be updated");
        }
        if self.deliver_subject != old.deliver_subject {
            if old.deliver_subject.is_empty() {
                return refuse("can not update pull consumer to push based");
            }
            if self.deliver_subject.is_empty() {
                return refuse("can not update push consumer to pull based");
            }
        }
        None
    }
}

/// A delivered message awaiting its ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pending {
    /// The delivery sequence it was first handed out with.
    pub(crate) delivery: u64,
    /// When it was last handed out (or naked with a delay, shifted), in nanoseconds of
    /// simulated time; may lie before zero after a nak with a short delay.
    pub(crate) since: i128,
}

/// What the server keeps on disk for a consumer.
#[derive(Debug, Clone)]
pub(crate) struct Consumer {
    pub(crate) name: String,
    pub(crate) config: ConsumerConfig,
    /// Tells this consumer apart from one deleted and created again under the same name.
    pub(crate) incarnation: u64,
    /// When it was created, in nanoseconds since the Unix epoch.
    pub(crate) created: i128,
    /// The next stream sequence to look at.
    pub(crate) sseq: u64,
    /// The next delivery sequence.
    pub(crate) dseq: u64,
    /// Ack floor: delivery sequence.
    pub(crate) ack_floor_delivery: u64,
    /// Ack floor: stream sequence.
    pub(crate) ack_floor_stream: u64,
    pub(crate) pending: BTreeMap<u64, Pending>,
    /// Stream sequence to how often it was redelivered.
    pub(crate) redelivered: BTreeMap<u64, u64>,
    /// The stream dropped a message pending here, which settled it as acked; the engine
    /// takes this as the consumer's latest ack.
    pub(crate) settled_by_stream: bool,
}

/// The outcome of looking for the next message to hand out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Hand out this stream sequence, for the `delivered`-th time.
    Message { sequence: u64, delivered: u64 },
    /// `max_ack_pending` is reached.
    Stalled,
    /// Nothing to hand out.
    Nothing,
}

impl Consumer {
    /// A consumer starting where its deliver policy says in `stream`.
    pub(crate) fn new(
        name: String,
        config: ConsumerConfig,
        incarnation: u64,
        created: i128,
        stream: &Stream,
    ) -> Self {
        let mut consumer = Consumer {
            name,
            config,
            incarnation,
            created,
            sseq: 1,
            dseq: 1,
            ack_floor_delivery: 0,
            ack_floor_stream: 0,
            pending: BTreeMap::new(),
            redelivered: BTreeMap::new(),
            settled_by_stream: false,
        };
        consumer.sseq = consumer.starting_sequence(stream);
        consumer
    }

    /// `selectStartingSeqNo`: where delivery starts, clamped to the stream's range.
    fn starting_sequence(&self, stream: &Stream) -> u64 {
        let (first, last) = (stream.first_seq, stream.last_seq);
        let filter = &self.config.filter_subject;
        let wanted = if self.config.opt_start_seq > 0 {
            self.config.opt_start_seq
        } else {
            match self.config.deliver_policy.as_str() {
                "all" => first,
                "last" if filter.is_empty() => last,
                "last" => stream
                    .messages
                    .values()
                    .rev()
                    .find(|m| subject::matches(filter, &m.subject))
                    .map_or(0, |m| m.sequence),
                "last_per_subject" => last,
                "by_start_time" => first,
                _ => last + 1,
            }
        };
        if first == 0 {
            1
        } else if wanted < first {
            first
        } else if wanted > last {
            last + 1
        } else {
            wanted
        }
    }

    fn max_ack_pending(&self) -> Option<usize> {
        (self.config.max_ack_pending > 0 && self.config.acks())
            .then_some(self.config.max_ack_pending as usize)
    }

    /// How many stream messages are left to deliver for the first time.
    pub(crate) fn num_pending(&self, stream: &Stream) -> u64 {
        stream.count_matching(self.sseq, &self.config.filter_subject)
    }

    /// `getNextMsg`: the next message to hand out, redeliveries first. Advances `sseq` past a
    /// new message; the caller hands it out or [`Consumer::undo`]es.
    pub(crate) fn next(&mut self, stream: &Stream, redeliver: &mut VecDeque<u64>) -> Next {
        while let Some(sequence) = redeliver.pop_front() {
            if !stream.messages.contains_key(&sequence) {
                // Gone from the stream: nats-server takes its delivery count back.
                continue;
            }
            let count = self.redelivered.entry(sequence).or_insert(0);
            *count += 1;
            let delivered = *count + 1;
            if self.config.max_deliver > 0 && delivered > self.config.max_deliver as u64 {
                self.pending.remove(&sequence);
                continue;
            }
            return Next::Message {
                sequence,
                delivered,
            };
        }
        if self
            .max_ack_pending()
            .is_some_and(|max| self.pending.len() >= max)
        {
            return Next::Stalled;
        }
        match stream.next_matching(self.sseq, &self.config.filter_subject) {
            Some(message) => {
                let sequence = message.sequence;
                self.sseq = sequence + 1;
                Next::Message {
                    sequence,
                    delivered: 1,
                }
            }
            None => {
                self.sseq = self.sseq.max(stream.last_seq + 1);
                Next::Nothing
            }
        }
    }

    /// Takes back what [`Consumer::next`] chose when no pull was there to take it.
    pub(crate) fn undo(&mut self, next: Next, redeliver: &mut VecDeque<u64>) {
        if let Next::Message {
            sequence,
            delivered,
        } = next
        {
            if delivered > 1 {
                if let Some(count) = self.redelivered.get_mut(&sequence) {
                    *count -= 1;
                }
                redeliver.push_front(sequence);
            } else {
                self.sseq = sequence;
            }
        }
    }

    /// Records that `sequence` was handed out at `now` (nanoseconds); returns its delivery
    /// sequence.
    pub(crate) fn delivered(&mut self, sequence: u64, now: i128) -> u64 {
        let delivery = self.dseq;
        self.dseq += 1;
        if self.config.acks() {
            self.pending
                .entry(sequence)
                .and_modify(|pending| pending.since = now)
                .or_insert(Pending {
                    delivery,
                    since: now,
                });
        } else {
            self.ack_floor_delivery = delivery;
            self.ack_floor_stream = sequence;
        }
        delivery
    }

    /// `processAckMsg`; returns whether the consumer was held back by `max_ack_pending` and
    /// no longer is.
    pub(crate) fn ack(
        &mut self,
        sequence: u64,
        delivery: u64,
        redeliver: &mut VecDeque<u64>,
    ) -> bool {
        let at_limit = self
            .max_ack_pending()
            .is_some_and(|max| self.pending.len() >= max);
        match self.config.ack_policy.as_str() {
            "explicit" => {
                let mut delivery = delivery;
                let mut freed = false;
                if let Some(pending) = self.pending.remove(&sequence) {
                    freed = at_limit;
                    delivery = pending.delivery;
                }
                if self.pending.is_empty() {
                    self.ack_floor_delivery = self.dseq - 1;
                    self.ack_floor_stream = self.sseq - 1;
                } else if delivery == self.ack_floor_delivery.wrapping_add(1) {
                    self.ack_floor_delivery = delivery;
                    self.ack_floor_stream = sequence;
                    if let Some((&next, pending)) =
                        self.pending.range(sequence.saturating_add(1)..).next()
                        && next < self.sseq
                        && pending.delivery > 0
                    {
                        self.ack_floor_delivery = pending.delivery - 1;
                        self.ack_floor_stream = next - 1;
                    }
                }
                self.redelivered.remove(&sequence);
                redeliver.retain(|s| *s != sequence);
                freed
            }
            "all" => {
                if delivery <= self.ack_floor_delivery || sequence <= self.ack_floor_stream {
                    return false;
                }
                let from = self.ack_floor_stream + 1;
                self.ack_floor_delivery = delivery;
                self.ack_floor_stream = sequence;
                for acked in from..=sequence {
                    self.pending.remove(&acked);
                    self.redelivered.remove(&acked);
                }
                redeliver.retain(|s| *s < from || *s > sequence);
                at_limit
            }
            _ => false,
        }
    }

    /// `processNak`: whether the nak applies (the sequence is the consumer's to redeliver).
    pub(crate) fn nak_applies(&self, sequence: u64, delivery: u64) -> bool {
        if delivery <= self.ack_floor_delivery || delivery > self.dseq {
            return false;
        }
        self.pending.is_empty() || self.pending.contains_key(&sequence)
    }

    /// The ack wait, in nanoseconds.
    pub(crate) fn ack_wait(&self) -> i128 {
        i128::from(self.config.ack_wait.max(0))
    }

    /// `checkPending` at `now`: queues what waited out its ack wait for redelivery (oldest
    /// sequence first) and drops pending records of messages the stream no longer holds.
    /// Returns how long until the next check, if anything is still pending.
    pub(crate) fn check_pending(
        &mut self,
        stream: &Stream,
        now: i128,
        redeliver: &mut VecDeque<u64>,
    ) -> (bool, Option<i128>) {
        const ACK_WAIT_DELAY: i128 = 1_000_000;
        let ttl = self.ack_wait();
        let mut next = ttl + ACK_WAIT_DELAY;
        if let Some(last) = self.config.backoff.last() {
            next = i128::from(*last);
        }
        let first = stream.first_seq;
        let mut expired = Vec::new();
        let mut gone = Vec::new();
        for (&sequence, pending) in &self.pending {
            if sequence < first {
                gone.push(sequence);
                continue;
            }
            let elapsed = now - pending.since;
            let mut deadline = ttl;
            if !self.config.backoff.is_empty() {
                let len = self.config.backoff.len();
                let count = self.redelivered.get(&sequence).copied().unwrap_or(0) as usize;
                let (index, next_index) = if count + 1 >= len {
                    (len - 1, len - 1)
                } else {
                    (count, count + 1)
                };
                deadline = i128::from(self.config.backoff[index]);
                next = next.min(i128::from(self.config.backoff[next_index]));
            }
            if elapsed >= deadline {
                if !redeliver.contains(&sequence) {
                    expired.push(sequence);
                }
            } else if deadline - elapsed < next {
                next = deadline - elapsed;
            }
        }
        for sequence in gone {
            self.pending.remove(&sequence);
            self.redelivered.remove(&sequence);
            redeliver.retain(|s| *s != sequence);
        }
        let queued = !expired.is_empty();
        if let Some(first) = expired.first() {
            let offset = now - self.pending[first].since;
            for sequence in &expired {
                if let Some(pending) = self.pending.get_mut(sequence) {
                    pending.since += offset;
                }
            }
            redeliver.extend(expired);
        }
        let again = (!self.pending.is_empty()).then_some(next + ACK_WAIT_DELAY);
        (queued, again)
    }

    /// The `delivered` and `ack_floor` pairs of the info.
    pub(crate) fn positions(&self) -> ((u64, u64), (u64, u64)) {
        (
            (self.dseq - 1, self.sseq - 1),
            (self.ack_floor_delivery, self.ack_floor_stream),
        )
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::stream::StreamConfig;
    use super::*;
    use std::time::Duration;

    fn stream(messages: u64) -> Stream {
        let config = StreamConfig::read(&Request::parse(br#"{"name":"S"}"#).unwrap())
            .unwrap()
            .checked()
            .unwrap();
        let mut stream = Stream::new(config, 1, 0);
        for _ in 0..messages {
            stream.store(Duration::ZERO, "S", &[], &Bytes::new());
        }
        stream
    }

    fn consumer(json: &str, stream: &Stream) -> Consumer {
        let config = ConsumerConfig::read(&Request::parse(json.as_bytes()).unwrap())
            .unwrap()
            .with_defaults();
        config.check(stream).unwrap();
        Consumer::new("c".into(), config, 1, 0, stream)
    }

    #[test]
    fn start_positions_are_clamped_to_the_stream() {
        let three = stream(3);
        let at = |json: &str, s: &Stream| consumer(json, s).sseq;
        assert_eq!(at(r#"{"deliver_policy":"all"}"#, &three), 1);
        assert_eq!(at(r#"{"deliver_policy":"new"}"#, &three), 4);
        assert_eq!(at(r#"{"deliver_policy":"last"}"#, &three), 3);
        assert_eq!(
            at(
                r#"{"deliver_policy":"by_start_sequence","opt_start_seq":100}"#,
                &three
            ),
            4
        );
        assert_eq!(
            at(
                r#"{"deliver_policy":"by_start_sequence","opt_start_seq":2}"#,
                &three
            ),
            2
        );
        // An empty stream that never held a message starts at 1 whatever was asked.
        assert_eq!(
            at(
                r#"{"deliver_policy":"by_start_sequence","opt_start_seq":9}"#,
                &stream(0)
            ),
            1
        );
    }

    #[test]
    fn the_ack_floor_moves_like_the_servers() {
        let stream = stream(3);
        let mut c = consumer(
            r#"{"ack_policy":"explicit","deliver_policy":"all"}"#,
            &stream,
        );
        let mut queue = VecDeque::new();
        for expected in 1..=3 {
            assert_eq!(
                c.next(&stream, &mut queue),
                Next::Message {
                    sequence: expected,
                    delivered: 1
                }
            );
            c.delivered(expected, 0);
        }
        c.ack(2, 2, &mut queue);
        assert_eq!(c.positions().1, (0, 0), "a gap below keeps the floor");
        c.ack(1, 1, &mut queue);
        assert_eq!(c.positions().1, (2, 2), "up to just below the next pending");
        c.ack(3, 3, &mut queue);
        assert_eq!(c.positions().1, (3, 3));
        assert!(c.pending.is_empty());
    }

    #[test]
    fn max_ack_pending_stalls_and_an_ack_frees() {
        let stream = stream(3);
        let mut c = consumer(
            r#"{"ack_policy":"explicit","deliver_policy":"all","max_ack_pending":1}"#,
            &stream,
        );
        let mut queue = VecDeque::new();
        assert!(matches!(c.next(&stream, &mut queue), Next::Message { .. }));
        c.delivered(1, 0);
        assert_eq!(c.next(&stream, &mut queue), Next::Stalled);
        assert!(c.ack(1, 1, &mut queue), "the ack frees the consumer");
        assert!(matches!(
            c.next(&stream, &mut queue),
            Next::Message { sequence: 2, .. }
        ));
    }

    #[test]
    fn expired_acks_are_queued_oldest_first_and_max_deliver_drops() {
        let stream = stream(2);
        let mut c = consumer(
            r#"{"ack_policy":"explicit","deliver_policy":"all","ack_wait":1000,"max_deliver":2}"#,
            &stream,
        );
        let mut queue = VecDeque::new();
        for sequence in [1, 2] {
            c.next(&stream, &mut queue);
            c.delivered(sequence, 0);
        }
        let (queued, again) = c.check_pending(&stream, 1000, &mut queue);
        assert!(queued);
        assert_eq!(again, Some(1000 + 2_000_000));
        assert_eq!(queue, [1, 2]);
        assert_eq!(
            c.next(&stream, &mut queue),
            Next::Message {
                sequence: 1,
                delivered: 2
            }
        );
        c.delivered(1, 1000);
        queue.clear();
        queue.push_back(1);
        // A third delivery would pass max_deliver: dropped from pending, floor unmoved.
        c.next(&stream, &mut queue);
        assert!(!c.pending.contains_key(&1));
        assert_eq!(c.positions().1, (0, 0));
    }

    #[test]
    fn start_policy_conflicts_are_refused() {
        let stream = stream(0);
        let config = ConsumerConfig::read(
            &Request::parse(br#"{"deliver_policy":"by_start_sequence"}"#).unwrap(),
        )
        .unwrap()
        .with_defaults();
        assert_eq!(config.check(&stream).unwrap_err().err_code, 10094);
    }
}
