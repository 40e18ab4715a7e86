//! The running JetStream of one start of the host's software: what a server keeps in memory
//! (waiting pulls, redelivery queues, timers, held-back PubAcks), the delivery loop, acks, and
//! what happens when time passes.
//!
//! The delivery loop is nats-server's `loopAndGatherMsgs`, run whenever something may let a
//! consumer deliver (a pull arrived, a message was stored, an ack freed `max_ack_pending`, a nak
//! or an expired ack wait queued a redelivery): while a pull waits, hand out the next message
//! (redeliveries first, oldest sequence first), then sweep the waiting pulls (expired ones get
//! `408`, a `no_wait` pull that got something ends with `408` once the stream has nothing more,
//! pulls nobody listens to any more are dropped). Timers are deadlines compared with `now`:
//! a consumer's ack-wait check (`ack_wait` + 1 ms after a delivery, then as the server computes
//! it), a pull's expiry and heartbeat, the inactivity check (`inactive_threshold` + 100 ms; the
//! server adds up to another 900 ms at random, the engine never does), the oldest message's
//! `max_age`, and a held-back PubAck's release.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use super::ack::{AckKind, ack_kind, ack_subject, parse_ack_subject};
use super::consumer::{Consumer, Next};
use super::json::{ApiError, EPOCH_UNIX_NANOS, to_go_json};
use super::pull::{WaitQueue, Waiting, parse_pull, status};
use super::store::{Disk, JetStreamStore};
use super::stream::{Storage, Stored, Stream};
use super::{Inbound, Outbound, Router, api};

/// When a consumer restored from the store first checks its pending messages: the server picks
/// 500 ms to 1.5 s at random; the engine takes the middle.
const RESTORED_PENDING_CHECK: Duration = Duration::from_secs(1);
/// Added to `inactive_threshold` before the inactivity check (the server's minimum jitter).
const INACTIVE_JITTER: Duration = Duration::from_millis(100);
/// How soon pending messages are checked after a nak with a delay.
const NAK_DELAY_CHECK: Duration = Duration::from_millis(10);

/// Simulated time as nanoseconds since the Unix epoch.
pub(crate) fn unix(now: Duration) -> i128 {
    EPOCH_UNIX_NANOS + nanos(now)
}

/// A duration in nanoseconds.
pub(crate) fn nanos(duration: Duration) -> i128 {
    duration.as_nanos() as i128
}

/// Nanoseconds (of simulated time) as a duration, clamped at zero.
fn duration(nanos: i128) -> Duration {
    Duration::from_nanos(nanos.clamp(0, u64::MAX as i128) as u64)
}

/// What one consumer has in memory on a running server.
#[derive(Debug, Clone)]
pub(crate) struct Runtime {
    /// The stream and consumer incarnation this belongs to.
    pub(crate) incarnation: (u64, u64),
    pub(crate) waiting: WaitQueue,
    /// Last pull, delivery or ack (the server's `waiting.last`); `None` since the start.
    pub(crate) last_activity: Option<Duration>,
    pub(crate) redeliver: VecDeque<u64>,
    pub(crate) pending_check: Option<Duration>,
    pub(crate) inactive_check: Option<Duration>,
    pub(crate) last_delivered_at: Option<Duration>,
    pub(crate) last_acked_at: Option<Duration>,
}

impl Runtime {
    /// The runtime of `consumer` becoming active at `now` (created or restored).
    pub(crate) fn start(stream: &Stream, consumer: &Consumer, now: Duration) -> Self {
        let pending_check = (!consumer.pending.is_empty()).then(|| {
            let ack_wait = duration(consumer.ack_wait()) + Duration::from_millis(1);
            now + RESTORED_PENDING_CHECK.min(ack_wait)
        });
        Runtime {
            incarnation: (stream.incarnation, consumer.incarnation),
            waiting: WaitQueue::default(),
            last_activity: None,
            redeliver: VecDeque::new(),
            pending_check,
            inactive_check: inactive_threshold(consumer).map(|t| now + t + INACTIVE_JITTER),
            last_delivered_at: None,
            last_acked_at: None,
        }
    }

    /// The earliest of its timers.
    fn next_deadline(&self) -> Option<Duration> {
        [
            self.pending_check,
            self.inactive_check,
            self.waiting.next_event(),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// The consumer's inactive threshold, if it has one.
pub(crate) fn inactive_threshold(consumer: &Consumer) -> Option<Duration> {
    (consumer.config.inactive_threshold > 0)
        .then(|| Duration::from_nanos(consumer.config.inactive_threshold as u64))
}

/// The running JetStream of one start of the host's software.
#[derive(Debug)]
pub struct Engine {
    pub(crate) store: JetStreamStore,
    /// Per consumer, keyed by stream and consumer name.
    pub(crate) runtimes: BTreeMap<(String, String), Runtime>,
    /// PubAcks held back by the slow-acks fault, by release time (and arrival order).
    delayed: BTreeMap<(Duration, u64), Outbound>,
    delayed_count: u64,
    /// API requests answered and how many of them with an error (`$JS.API.INFO`).
    pub(crate) api_total: u64,
    pub(crate) api_errors: u64,
    /// The store's fault generation last looked at.
    seen_generation: u64,
}

impl Engine {
    /// Starts on `store` at simulated time `now` (what the store holds is recovered).
    pub fn new(store: JetStreamStore, now: Duration) -> Self {
        let mut engine = Engine {
            store: store.clone(),
            runtimes: BTreeMap::new(),
            delayed: BTreeMap::new(),
            delayed_count: 0,
            api_total: 0,
            api_errors: 0,
            seen_generation: 0,
        };
        let mut disk = store.disk();
        // What a real server loses with its process: memory streams. Ephemeral consumers are
        // kept on disk, as by nats-server 2.9, and go once idle past their threshold.
        disk.streams
            .retain(|_, stream| stream.config.storage == Storage::File);
        for stream in disk.streams.values_mut() {
            stream.rebuild_duplicates(now);
        }
        engine.seen_generation = disk.generation;
        let mut out = Vec::new();
        engine.reconcile(&mut disk, now, &mut out);
        engine
    }

    /// The store this engine runs on.
    pub fn store(&self) -> &JetStreamStore {
        &self.store
    }

    /// Whether a message published to `subject` is the engine's to take.
    pub fn handles(&self, subject: &str) -> bool {
        if subject.starts_with("$JS.API.") {
            return true;
        }
        let disk = self.store.disk();
        if subject.starts_with("$JS.ACK.") {
            // Each consumer listens on `$JS.ACK.<stream>.<consumer>.*.*.*.*.*`: an ack for a
            // consumer that is gone has no responder.
            return parse_ack_subject(subject).is_some_and(|ack| {
                disk.streams
                    .get(ack.stream)
                    .is_some_and(|stream| stream.consumers.contains_key(ack.consumer))
            });
        }
        disk.streams.values().any(|stream| stream.captures(subject))
    }

    /// Takes a published message at time `now`; returns what to deliver, in order.
    pub fn publish(
        &mut self,
        now: Duration,
        message: Inbound,
        router: &dyn Router,
    ) -> Vec<Outbound> {
        let store = self.store.clone();
        let mut disk = store.disk();
        let mut out = Vec::new();
        self.catch_up(&mut disk, now, router, &mut out);
        if message.subject.starts_with("$JS.API.") {
            api::handle(self, &mut disk, now, message, router, &mut out);
        } else if message.subject.starts_with("$JS.ACK.") {
            self.settle(&mut disk, now, message, router, &mut out);
        } else {
            self.store_message(&mut disk, now, message, router, &mut out);
        }
        self.note_settled(&mut disk, now);
        out
    }

    /// Does what is due at `now`; returns what to deliver, in order.
    pub fn tick(&mut self, now: Duration, router: &dyn Router) -> Vec<Outbound> {
        let store = self.store.clone();
        let mut disk = store.disk();
        let mut out = Vec::new();
        self.catch_up(&mut disk, now, router, &mut out);
        self.note_settled(&mut disk, now);
        out
    }

    /// Takes what the streams settled by dropping pending messages as each consumer's latest
    /// ack (the ack floor's `last_active`).
    fn note_settled(&mut self, disk: &mut Disk, now: Duration) {
        for (stream_name, stream) in &mut disk.streams {
            for (name, consumer) in &mut stream.consumers {
                if std::mem::take(&mut consumer.settled_by_stream)
                    && let Some(runtime) =
                        self.runtimes.get_mut(&(stream_name.clone(), name.clone()))
                {
                    runtime.last_acked_at = Some(now);
                }
            }
        }
    }

    /// When [`Engine::tick`] must be called next, if anything is pending. A fault applied to
    /// the store since the engine last looked makes it due at once ([`Duration::ZERO`]).
    pub fn next_deadline(&self) -> Option<Duration> {
        let disk = self.store.disk();
        if disk.generation != self.seen_generation {
            return Some(Duration::ZERO);
        }
        let streams = disk.streams.values().filter_map(Stream::next_expiry);
        let runtimes = self.runtimes.values().filter_map(Runtime::next_deadline);
        let delayed = self.delayed.keys().next().map(|(at, _)| *at);
        streams.chain(runtimes).chain(delayed).min()
    }

    /// Brings everything up to `now`: notices faults, expires messages, releases held-back
    /// PubAcks and runs the consumers' due timers.
    fn catch_up(
        &mut self,
        disk: &mut Disk,
        now: Duration,
        router: &dyn Router,
        out: &mut Vec<Outbound>,
    ) {
        self.reconcile(disk, now, out);
        for stream in disk.streams.values_mut() {
            stream.expire(now);
        }
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            out.push(entry.remove());
        }
        let keys: Vec<(String, String)> = self.runtimes.keys().cloned().collect();
        for key in keys {
            self.run_timers(disk, &key, now, router, out);
        }
    }

    /// Matches the runtimes with the store: consumers gone from it (a fault, or deleted with
    /// their stream) end their waiting pulls; consumers without a runtime (restored) get one.
    pub(crate) fn reconcile(&mut self, disk: &mut Disk, now: Duration, out: &mut Vec<Outbound>) {
        self.seen_generation = disk.generation;
        let gone: Vec<(String, String)> = self
            .runtimes
            .iter()
            .filter(|((stream, consumer), runtime)| {
                disk.streams
                    .get(stream)
                    .and_then(|s| s.consumers.get(consumer).map(|c| (s.incarnation, c)))
                    .is_none_or(|(s, c)| runtime.incarnation != (s, c.incarnation))
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            if let Some(mut runtime) = self.runtimes.remove(&key) {
                release(&mut runtime, out);
            }
        }
        for (name, stream) in &disk.streams {
            for (consumer_name, consumer) in &stream.consumers {
                self.runtimes
                    .entry((name.clone(), consumer_name.clone()))
                    .or_insert_with(|| Runtime::start(stream, consumer, now));
            }
        }
    }

    /// Removes a consumer and ends its waiting pulls with `409 Consumer Deleted`.
    pub(crate) fn delete_consumer(
        &mut self,
        disk: &mut Disk,
        stream: &str,
        consumer: &str,
        out: &mut Vec<Outbound>,
    ) {
        if let Some(s) = disk.streams.get_mut(stream) {
            s.consumers.remove(consumer);
        }
        if let Some(mut runtime) = self
            .runtimes
            .remove(&(stream.to_owned(), consumer.to_owned()))
        {
            release(&mut runtime, out);
        }
    }

    fn run_timers(
        &mut self,
        disk: &mut Disk,
        key: &(String, String),
        now: Duration,
        router: &dyn Router,
        out: &mut Vec<Outbound>,
    ) {
        let mut delete = false;
        let Some(runtime) = self.runtimes.get_mut(key) else {
            return;
        };
        with_consumer(disk, &key.0, &key.1, |stream, consumer| {
            let listening = |reply: &str| router.has_interest(reply);
            let mut signal = false;
            if runtime.pending_check.is_some_and(|at| at <= now) {
                let (queued, again) =
                    consumer.check_pending(stream, nanos(now), &mut runtime.redeliver);
                runtime.pending_check =
                    again.map(|after| now + duration(after).max(Duration::from_millis(1)));
                signal |= queued;
            }
            if runtime.waiting.next_event().is_some_and(|at| at <= now) {
                let last = consumer.positions().0;
                runtime.waiting.sweep(true, now, last, &listening, out);
                signal = true;
            }
            if signal {
                pump(stream, consumer, runtime, now, &listening, out);
            }
            if let Some(at) = runtime.inactive_check
                && at <= now
            {
                delete = inactive_check(consumer, runtime, now, &listening, out);
            }
        });
        if delete {
            self.delete_consumer(disk, &key.0, &key.1, out);
        }
    }

    /// Runs the delivery loop of every consumer of `stream`.
    fn pump_stream(
        &mut self,
        disk: &mut Disk,
        stream_name: &str,
        now: Duration,
        router: &dyn Router,
        out: &mut Vec<Outbound>,
    ) {
        let names: Vec<String> = disk
            .streams
            .get(stream_name)
            .map(|s| s.consumers.keys().cloned().collect())
            .unwrap_or_default();
        for name in names {
            self.pump_consumer(disk, stream_name, &name, now, router, out);
        }
    }

    /// Runs one consumer's delivery loop.
    pub(crate) fn pump_consumer(
        &mut self,
        disk: &mut Disk,
        stream: &str,
        consumer: &str,
        now: Duration,
        router: &dyn Router,
        out: &mut Vec<Outbound>,
    ) {
        let Some(runtime) = self
            .runtimes
            .get_mut(&(stream.to_owned(), consumer.to_owned()))
        else {
            return;
        };
        with_consumer(disk, stream, consumer, |stream, consumer| {
            pump(
                stream,
                consumer,
                runtime,
                now,
                &|reply| router.has_interest(reply),
                out,
            );
        });
    }

    /// A message published to a subject a stream captures.
    fn store_message(
        &mut self,
        disk: &mut Disk,
        now: Duration,
        message: Inbound,
        router: &dyn Router,
        out: &mut Vec<Outbound>,
    ) {
        let slow_acks = disk.slow_acks;
        let Some(stream) = disk
            .streams
            .values_mut()
            .find(|stream| stream.captures(&message.subject))
        else {
            return;
        };
        let stored = stream.store(now, &message.subject, &message.headers, &message.payload);
        let name = stream.config.name.clone();
        if let Some(reply) = message.reply.filter(|_| !stream.config.no_ack) {
            let ack = Outbound {
                subject: reply,
                payload: pub_ack(&name, &stored),
                ..Outbound::default()
            };
            match slow_acks {
                Some(delay) => {
                    self.delayed_count += 1;
                    self.delayed.insert((now + delay, self.delayed_count), ack);
                }
                None => out.push(ack),
            }
        }
        if matches!(stored, Stored::New(_)) {
            self.pump_stream(disk, &name, now, router, out);
        }
    }

    /// A message published to an ack subject.
    fn settle(
        &mut self,
        disk: &mut Disk,
        now: Duration,
        message: Inbound,
        router: &dyn Router,
        out: &mut Vec<Outbound>,
    ) {
        let Some(ack) = parse_ack_subject(&message.subject) else {
            return;
        };
        let key = (ack.stream.to_owned(), ack.consumer.to_owned());
        let Some(runtime) = self.runtimes.get_mut(&key) else {
            return;
        };
        let kind = ack_kind(&message.payload);
        let (sequence, delivery) = (ack.stream_sequence, ack.delivery);
        let mut next_request = None;
        with_consumer(disk, &key.0, &key.1, |stream, consumer| {
            let listening = |reply: &str| router.has_interest(reply);
            let mut signal = false;
            match &kind {
                AckKind::Ack | AckKind::Term | AckKind::Next(_) => {
                    signal = consumer.ack(sequence, delivery, &mut runtime.redeliver);
                    if consumer.config.ack_policy != "none" {
                        runtime.last_acked_at = Some(now);
                    }
                    if let AckKind::Next(body) = &kind {
                        next_request = Some(body.clone());
                    }
                }
                AckKind::Nak(delay) => {
                    if consumer.nak_applies(sequence, delivery) {
                        match delay {
                            Some(delay) => {
                                runtime.redeliver.retain(|s| *s != sequence);
                                let ack_wait = consumer.ack_wait();
                                if let Some(pending) = consumer.pending.get_mut(&sequence) {
                                    pending.since = nanos(now) - ack_wait + i128::from(*delay);
                                    runtime.last_delivered_at = Some(now);
                                    runtime.pending_check = Some(now + NAK_DELAY_CHECK);
                                }
                            }
                            None => {
                                if !runtime.redeliver.contains(&sequence) {
                                    runtime.redeliver.push_back(sequence);
                                }
                                signal = true;
                            }
                        }
                    }
                }
                AckKind::Progress => {
                    if let Some(pending) = consumer.pending.get_mut(&sequence) {
                        pending.since = nanos(now);
                        runtime.last_delivered_at = Some(now);
                    }
                }
                AckKind::Unknown => {}
            }
            if inactive_threshold(consumer).is_some() {
                runtime.last_activity = Some(now);
            }
            if signal {
                pump(stream, consumer, runtime, now, &listening, out);
            }
        });
        if let Some(body) = next_request {
            if let Some(reply) = message.reply {
                self.pull(disk, &key.0, &key.1, now, &reply, &body, router, out);
            }
        } else if let Some(reply) = message.reply
            && sequence != 0
        {
            out.push(Outbound {
                subject: reply,
                ..Outbound::default()
            });
        }
    }

    /// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>` (or the request part of `+NXT`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn pull(
        &mut self,
        disk: &mut Disk,
        stream: &str,
        consumer: &str,
        now: Duration,
        reply: &str,
        body: &[u8],
        router: &dyn Router,
        out: &mut Vec<Outbound>,
    ) {
        let Some(runtime) = self
            .runtimes
            .get_mut(&(stream.to_owned(), consumer.to_owned()))
        else {
            return;
        };
        with_consumer(disk, stream, consumer, |stream, consumer| {
            let listening = |reply: &str| router.has_interest(reply);
            let refuse = |code: u16, description: &str, out: &mut Vec<Outbound>| {
                out.push(status(reply, code, description, Vec::new()));
            };
            if !consumer.config.is_pull() {
                return refuse(409, "Consumer is push based", out);
            }
            let request = match parse_pull(body) {
                Ok(request) => request,
                Err(reason) => return refuse(400, &format!("Bad Request - {reason}"), out),
            };
            let config = &consumer.config;
            if config.max_batch > 0 && request.batch > config.max_batch {
                let reason = format!("Exceeded MaxRequestBatch of {}", config.max_batch);
                return refuse(409, &reason, out);
            }
            if let Some(expires) = request.expires
                && config.max_expires > 0
                && expires > config.max_expires
            {
                let reason = format!(
                    "Exceeded MaxRequestExpires of {}",
                    go_duration(config.max_expires)
                );
                return refuse(409, &reason, out);
            }
            if request.max_bytes > 0 && config.max_bytes > 0 && request.max_bytes > config.max_bytes
            {
                let reason = format!("Exceeded MaxRequestMaxBytes of {}", config.max_bytes);
                return refuse(409, &reason, out);
            }
            let max_waiting = usize::try_from(config.max_waiting).unwrap_or(0);
            let last = consumer.positions().0;
            if runtime.waiting.len() >= max_waiting {
                runtime.waiting.sweep(false, now, last, &listening, out);
            }
            if request.no_wait {
                let available = consumer.num_pending(stream) + runtime.redeliver.len() as u64;
                if available == 0 && request.expires.is_none() {
                    runtime.last_activity = Some(now);
                    return refuse(404, "No Messages", out);
                }
                if available > 0 {
                    let wanted = runtime
                        .waiting
                        .sweep(false, now, last, &listening, out)
                        .wanted;
                    if (available as i128) < i128::from(wanted) {
                        runtime.last_activity = Some(now);
                        return refuse(408, "Requests Pending", out);
                    }
                }
            }
            if runtime.waiting.len() >= max_waiting {
                return refuse(409, "Exceeded MaxWaiting", out);
            }
            runtime
                .waiting
                .push(Waiting::new(reply.to_owned(), &request, now));
            runtime.last_activity = Some(now);
            pump(stream, consumer, runtime, now, &listening, out);
        });
    }
}

/// Ends every waiting pull of a consumer that is gone.
fn release(runtime: &mut Runtime, out: &mut Vec<Outbound>) {
    for reply in runtime.waiting.drain() {
        out.push(status(&reply, 409, "Consumer Deleted", Vec::new()));
    }
}

/// Runs `f` on consumer `consumer` of stream `stream`, taken out of the stream meanwhile so both
/// can be borrowed.
pub(crate) fn with_consumer<R>(
    disk: &mut Disk,
    stream: &str,
    consumer: &str,
    f: impl FnOnce(&Stream, &mut Consumer) -> R,
) -> Option<R> {
    let stream = disk.streams.get_mut(stream)?;
    let mut taken = stream.consumers.remove(consumer)?;
    let result = f(stream, &mut taken);
    stream.consumers.insert(consumer.to_owned(), taken);
    Some(result)
}

/// The delivery loop of one consumer (see the module docs).
pub(crate) fn pump(
    stream: &Stream,
    consumer: &mut Consumer,
    runtime: &mut Runtime,
    now: Duration,
    listening: &dyn Fn(&str) -> bool,
    out: &mut Vec<Outbound>,
) {
    if !consumer.config.is_pull() {
        return;
    }
    let mut stalled = false;
    while !runtime.waiting.is_empty() {
        let next = consumer.next(stream, &mut runtime.redeliver);
        let (sequence, delivered) = match next {
            Next::Message {
                sequence,
                delivered,
            } => (sequence, delivered),
            Next::Stalled => {
                stalled = true;
                break;
            }
            Next::Nothing => break,
        };
        let Some(message) = stream.messages.get(&sequence) else {
            break;
        };
        let reply = ack_subject(
            &stream.config.name,
            &consumer.name,
            delivered,
            sequence,
            consumer.dseq,
            unix(message.stored_at),
            consumer.num_pending(stream),
        );
        let size =
            message.subject.len() + reply.len() + message.header_len() + message.payload.len();
        let Some(to) = runtime.waiting.take(size as i64, now, listening, out) else {
            consumer.undo(next, &mut runtime.redeliver);
            break;
        };
        consumer.delivered(sequence, nanos(now));
        runtime.last_delivered_at = Some(now);
        if inactive_threshold(consumer).is_some() {
            runtime.last_activity = Some(now);
        }
        if consumer.config.ack_policy != "none" && runtime.pending_check.is_none() {
            runtime.pending_check =
                Some(now + duration(consumer.ack_wait()) + Duration::from_millis(1));
        }
        out.push(Outbound {
            subject: to,
            message_subject: Some(message.subject.clone()),
            reply: Some(reply),
            status: None,
            headers: message.headers.clone(),
            payload: message.payload.clone(),
        });
    }
    let last = consumer.positions().0;
    runtime.waiting.sweep(!stalled, now, last, listening, out);
}

/// `deleteNotActive`: whether the consumer has been idle past its inactive threshold with no
/// pull waiting, and is to be deleted; otherwise the next check is scheduled.
fn inactive_check(
    consumer: &Consumer,
    runtime: &mut Runtime,
    now: Duration,
    listening: &dyn Fn(&str) -> bool,
    out: &mut Vec<Outbound>,
) -> bool {
    let Some(threshold) = inactive_threshold(consumer) else {
        runtime.inactive_check = None;
        return false;
    };
    let every = threshold + INACTIVE_JITTER;
    let elapsed = runtime.last_activity.map(|at| now.saturating_sub(at));
    if let Some(elapsed) = elapsed
        && elapsed <= threshold
    {
        runtime.inactive_check = Some(now + (every - elapsed));
        return false;
    }
    runtime
        .waiting
        .sweep(true, now, consumer.positions().0, listening, out);
    if !runtime.waiting.is_empty() {
        runtime.inactive_check = Some(now + every);
        return false;
    }
    true
}

/// The PubAck for a publish into stream `stream`, byte for byte as nats-server writes it.
fn pub_ack(stream: &str, stored: &Stored) -> Bytes {
    let name = to_go_json(&stream);
    let name = String::from_utf8_lossy(&name);
    match stored {
        Stored::New(sequence) => Bytes::from(format!("{{\"stream\":{name}, \"seq\":{sequence}}}")),
        Stored::Duplicate(sequence) => Bytes::from(format!(
            "{{\"stream\":{name}, \"seq\":{sequence},\"duplicate\": true}}"
        )),
        Stored::Refused(error) => {
            #[derive(Serialize)]
            struct Refused<'a> {
                error: &'a ApiError,
                stream: &'a str,
                seq: u64,
            }
            to_go_json(&Refused {
                error,
                stream,
                seq: 0,
            })
        }
    }
}

/// A duration as Go's `time.Duration.String` writes it (`1.5s`, `250ms`, `1m30s`).
pub(crate) fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".to_owned();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    let trim = |whole: u64, fraction: u64, width: usize, unit: &str| {
        let fraction = format!("{fraction:0width$}");
        let fraction = fraction.trim_end_matches('0');
        if fraction.is_empty() {
            format!("{sign}{whole}{unit}")
        } else {
            format!("{sign}{whole}.{fraction}{unit}")
        }
    };
    if n < 1_000 {
        return format!("{sign}{n}ns");
    }
    if n < 1_000_000 {
        return trim(n / 1_000, n % 1_000, 3, "µs");
    }
    if n < 1_000_000_000 {
        return trim(n / 1_000_000, n % 1_000_000, 6, "ms");
    }
    let seconds = n / 1_000_000_000;
    let fraction = n % 1_000_000_000;
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    let mut text = String::from(sign);
    if hours > 0 {
        text.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        text.push_str(&format!("{minutes}m"));
    }
    let secs = trim(seconds, fraction, 9, "s");
    text.push_str(secs.trim_start_matches('-'));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_like_go() {
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(250_000_000), "250ms");
        assert_eq!(go_duration(90_000_000_000), "1m30s");
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
    }

    #[test]
    fn pub_acks_match_the_server_byte_for_byte() {
        assert_eq!(
            &pub_ack("S", &Stored::New(1))[..],
            br#"{"stream":"S", "seq":1}"#
        );
        assert_eq!(
            &pub_ack("S", &Stored::Duplicate(1))[..],
            br#"{"stream":"S", "seq":1,"duplicate": true}"#
        );
        assert_eq!(
            &pub_ack("S", &Stored::Refused(ApiError::store_failed("maximum messages exceeded")))[..],
            br#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},"stream":"S","seq":0}"#
        );
    }
}
