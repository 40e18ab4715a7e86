//! A stream: its configuration, the messages it stores, its limits and its duplicate window.
//!
//! Storing follows nats-server's file store: sequences start at 1 and never repeat, limits
//! (`max_msgs`, `max_bytes`, `max_age`, `max_msgs_per_subject`) drop the oldest messages under
//! `discard: old` and refuse the new one under `discard: new`, and bytes are counted as the
//! file store counts them (a 22-byte record header, the subject, the header block, the payload
//! and an 8-byte hash), so `state.bytes` matches a real server's. A publish with a
//! `Nats-Msg-Id` seen within `duplicate_window` is acknowledged with the first copy's sequence
//! and `"duplicate": true`, and nothing is stored.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use super::consumer::Consumer;
use super::json::{ApiError, Request, choice, is_false, is_zero};
use super::subject;

/// The header JetStream de-duplicates publishes by.
pub(crate) const MSG_ID: &str = "Nats-Msg-Id";

/// The duplicate window a stream gets when its configuration names none.
const DEFAULT_DUPLICATE_WINDOW: i64 = 120_000_000_000;

/// Where a stream keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// On disk: survives a restart.
    File,
    /// In memory: lost with the server process.
    Memory,
}

/// A stream's configuration after the server's defaults were applied, as `STREAM.INFO`
/// reports it (field order as nats-server 2.9 writes it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct StreamConfig {
    pub(crate) name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) description: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) subjects: Vec<String>,
    pub(crate) retention: String,
    pub(crate) max_consumers: i64,
    pub(crate) max_msgs: i64,
    pub(crate) max_bytes: i64,
    pub(crate) max_age: i64,
    pub(crate) max_msgs_per_subject: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) max_msg_size: i64,
    pub(crate) discard: String,
    pub(crate) storage: Storage,
    pub(crate) num_replicas: i64,
    #[serde(skip_serializing_if = "is_false")]
    pub(crate) no_ack: bool,
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) duplicate_window: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) placement: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) mirror: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) sources: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) republish: Option<Value>,
    pub(crate) allow_direct: bool,
    pub(crate) mirror_direct: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub(crate) discard_new_per_subject: bool,
    pub(crate) sealed: bool,
    pub(crate) deny_delete: bool,
    pub(crate) deny_purge: bool,
    pub(crate) allow_rollup_hdrs: bool,
}

impl StreamConfig {
    /// Reads a configuration as sent (no defaults applied yet).
    pub(crate) fn read(request: &Request) -> Result<Self, ApiError> {
        let invalid = |_| ApiError::invalid_json();
        let storage = match request.word("storage").map_err(invalid)?.as_deref() {
            None | Some("file") | Some("any") => Storage::File,
            Some("memory") => Storage::Memory,
            Some(_) => return Err(ApiError::invalid_json()),
        };
        let sources = request.raw("sources");
        if sources.as_ref().is_some_and(|s| !s.is_array()) {
            return Err(ApiError::invalid_json());
        }
        Ok(StreamConfig {
            name: request.string("name").map_err(invalid)?,
            description: request.string("description").map_err(invalid)?,
            subjects: request.strings("subjects").map_err(invalid)?,
            retention: choice(
                request,
                "retention",
                &["limits", "interest", "workqueue"],
                "limits",
            )?,
            max_consumers: request.int("max_consumers").map_err(invalid)?,
            max_msgs: request.int("max_msgs").map_err(invalid)?,
            max_bytes: request.int("max_bytes").map_err(invalid)?,
            max_age: request.int("max_age").map_err(invalid)?,
            max_msgs_per_subject: request.int("max_msgs_per_subject").map_err(invalid)?,
            max_msg_size: request.int("max_msg_size").map_err(invalid)?,
            discard: choice(request, "discard", &["old", "new"], "old")?,
            storage,
            num_replicas: request.int("num_replicas").map_err(invalid)?,
            no_ack: request.boolean("no_ack").map_err(invalid)?,
            duplicate_window: request.int("duplicate_window").map_err(invalid)?,
            placement: request.raw("placement"),
            mirror: request.raw("mirror"),
            sources: sources.filter(|s| s.as_array().is_some_and(|a| !a.is_empty())),
            republish: request.raw("republish"),
            allow_direct: request.boolean("allow_direct").map_err(invalid)?,
            mirror_direct: request.boolean("mirror_direct").map_err(invalid)?,
            discard_new_per_subject: request
                .boolean("discard_new_per_subject")
                .map_err(invalid)?,
            sealed: request.boolean("sealed").map_err(invalid)?,
            deny_delete: request.boolean("deny_delete").map_err(invalid)?,
            deny_purge: request.boolean("deny_purge").map_err(invalid)?,
            allow_rollup_hdrs: request.boolean("allow_rollup_hdrs").map_err(invalid)?,
        })
    }

    /// Applies the server's defaults and checks, as `checkStreamCfg` does.
    pub(crate) fn checked(mut self) -> Result<Self, ApiError> {
        let invalid = |reason: &str| Err(ApiError::stream_invalid_config(reason));
        if !subject::is_valid_name(&self.name) {
            return invalid("stream name is required and can not contain '.', '*', '>'");
        }
        if self.name.len() > 255 {
            return invalid("stream name is too long, maximum allowed is 255");
        }
        if self.description.len() > 4096 {
            return invalid("stream description is too long, maximum allowed is 4096");
        }
        if self.num_replicas == 0 {
            self.num_replicas = 1;
        }
        if self.num_replicas > 5 {
            return invalid("maximum replicas is 5");
        }
        if self.num_replicas < 0 {
            return Err(ApiError::replicas_negative());
        }
        for limit in [
            &mut self.max_msgs,
            &mut self.max_msgs_per_subject,
            &mut self.max_bytes,
            &mut self.max_msg_size,
            &mut self.max_consumers,
        ] {
            if *limit == 0 {
                *limit = -1;
            }
        }
        if self.duplicate_window == 0 && self.mirror.is_none() {
            self.duplicate_window = if self.max_age != 0 && self.max_age < DEFAULT_DUPLICATE_WINDOW
            {
                self.max_age
            } else {
                DEFAULT_DUPLICATE_WINDOW
            };
        }
        if self.max_age > 0 && self.max_age < 100_000_000 {
            return invalid("max age needs to be >= 100ms");
        }
        if self.duplicate_window < 0 {
            return invalid("duplicates window can not be negative");
        }
        if self.max_age != 0 && self.duplicate_window > self.max_age {
            return invalid("duplicates window can not be larger then max age");
        }
        if self.duplicate_window > 0 && self.duplicate_window < 100_000_000 {
            return invalid("duplicates window needs to be >= 100ms");
        }
        if self.deny_purge && self.allow_rollup_hdrs {
            return invalid("roll-ups require the purge permission");
        }
        if self.discard_new_per_subject {
            if self.discard != "new" {
                return invalid("discard new per subject requires discard new policy to be set");
            }
            if self.max_msgs_per_subject <= 0 {
                return invalid("discard new per subject requires max msgs per subject > 0");
            }
        }
        if self.mirror.is_some() {
            if !self.subjects.is_empty() {
                return Err(ApiError::new(
                    400,
                    10034,
                    "stream mirrors can not contain subjects",
                ));
            }
            if self.sources.is_some() {
                return Err(ApiError::new(
                    400,
                    10031,
                    "stream mirrors can not also contain other sources",
                ));
            }
        }
        if self.subjects.is_empty() {
            if self.mirror.is_none() && self.sources.is_none() {
                self.subjects.push(self.name.clone());
            }
        } else {
            for (index, subject) in self.subjects.iter().enumerate() {
                if self.subjects[..index].contains(subject) {
                    return invalid("duplicate subjects detected");
                }
                if subject::is_subset(subject, "$JS.API.>") {
                    return invalid("subjects overlap with jetstream api");
                }
                if !subject::is_valid_subject(subject) {
                    return invalid("invalid subject");
                }
            }
            for first in &self.subjects {
                for second in &self.subjects {
                    if first != second && subject::collide(first, second) {
                        return Err(ApiError::stream_invalid_config(&format!(
                            "subject {first:?} overlaps with {second:?}"
                        )));
                    }
                }
            }
        }
        if self.subjects.is_empty() && self.sources.is_none() && self.mirror.is_none() {
            return invalid("stream needs at least one configured subject or be a source/mirror");
        }
        Ok(self)
    }

    /// Why `self` may not replace `old` in an update, if it may not.
    pub(crate) fn update_refusal(&self, old: &StreamConfig) -> Option<ApiError> {
        let invalid = |reason: &str| Some(ApiError::stream_invalid_config(reason));
        if self.max_consumers != old.max_consumers {
            return invalid("stream configuration update can not change MaxConsumers");
        }
        if self.storage != old.storage {
            return invalid("stream configuration update can not change storage type");
        }
        if self.retention != old.retention {
            return invalid("stream configuration update can not change retention policy");
        }
        if !self.sealed && old.sealed {
            return invalid("stream configuration update can not unseal a sealed stream");
        }
        if !self.deny_delete && old.deny_delete {
            return invalid("stream configuration update can not cancel deny message deletes");
        }
        if !self.deny_purge && old.deny_purge {
            return invalid("stream configuration update can not cancel deny purge");
        }
        if self.mirror != old.mirror {
            return Some(ApiError::new(
                400,
                10055,
                "stream mirror configuration can not be updated",
            ));
        }
        if self.republish != old.republish {
            return invalid("stream configuration update can not change RePublish");
        }
        // A single nats-server 2.9 takes a new replica count in an update and reports it,
        // although it refuses more than one replica at creation; only a cluster refuses the
        // change (10061, "Replicas configuration can not be updated").
        None
    }
}

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Its stream sequence.
    pub sequence: u64,
    /// The subject it was published to.
    pub subject: String,
    /// Its headers, in order.
    pub headers: Vec<(String, String)>,
    /// Its payload.
    pub payload: Bytes,
    /// When it was stored (simulated time).
    pub stored_at: Duration,
}

impl StoredMessage {
    /// The length of its header block on the wire (`NATS/1.0\r\n`, one line per header, a
    /// blank line), 0 without headers.
    pub(crate) fn header_len(&self) -> usize {
        header_len(&self.headers)
    }

    /// Bytes it counts for in the stream, by the store's formula.
    fn stored_size(&self, storage: Storage) -> u64 {
        stored_size(
            storage,
            &self.subject,
            self.header_len(),
            self.payload.len(),
        )
    }
}

/// The wire length of a header block.
pub(crate) fn header_len(headers: &[(String, String)]) -> usize {
    if headers.is_empty() {
        return 0;
    }
    "NATS/1.0\r\n".len()
        + headers
            .iter()
            .map(|(key, value)| key.len() + 2 + value.len() + 2)
            .sum::<usize>()
        + 2
}

fn stored_size(storage: Storage, subject: &str, header_len: usize, payload_len: usize) -> u64 {
    let size = match storage {
        Storage::File if header_len == 0 => 22 + subject.len() + payload_len + 8,
        Storage::File => 22 + subject.len() + 4 + header_len + payload_len + 8,
        Storage::Memory => subject.len() + header_len + payload_len + 16,
    };
    size as u64
}

/// How a publish into a stream went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stored {
    /// Stored under this sequence.
    New(u64),
    /// A duplicate of the message stored under this sequence.
    Duplicate(u64),
    /// Refused.
    Refused(ApiError),
}

/// A stream on the "disk".
#[derive(Debug, Clone)]
pub(crate) struct Stream {
    pub(crate) config: StreamConfig,
    /// Tells this stream apart from one deleted and created again under the same name.
    pub(crate) incarnation: u64,
    /// When it was created, in nanoseconds since the Unix epoch.
    pub(crate) created: i128,
    pub(crate) messages: BTreeMap<u64, StoredMessage>,
    /// The first sequence it holds (or the next one, when empty); 0 before the first message.
    pub(crate) first_seq: u64,
    pub(crate) last_seq: u64,
    /// When the last message was stored.
    pub(crate) last_stored_at: Option<Duration>,
    pub(crate) bytes: u64,
    pub(crate) consumers: BTreeMap<String, Consumer>,
    /// Message ids seen within the duplicate window: id to (sequence, when stored). Kept in
    /// memory by a real server and rebuilt from the stored messages on restart
    /// ([`Stream::rebuild_duplicates`]).
    pub(crate) duplicates: BTreeMap<String, (u64, Duration)>,
}

impl Stream {
    /// A new, empty stream.
    pub(crate) fn new(config: StreamConfig, incarnation: u64, created: i128) -> Self {
        Stream {
            config,
            incarnation,
            created,
            messages: BTreeMap::new(),
            first_seq: 0,
            last_seq: 0,
            last_stored_at: None,
            bytes: 0,
            consumers: BTreeMap::new(),
            duplicates: BTreeMap::new(),
        }
    }

    /// Whether a message published to `subject` is this stream's.
    pub(crate) fn captures(&self, subject: &str) -> bool {
        self.config
            .subjects
            .iter()
            .any(|filter| subject::matches(filter, subject))
    }

    fn window(&self) -> Duration {
        Duration::from_nanos(self.config.duplicate_window.max(0) as u64)
    }

    /// Forgets message ids older than the duplicate window.
    pub(crate) fn expire_duplicates(&mut self, now: Duration) {
        let window = self.window();
        self.duplicates
            .retain(|_, (_, stored_at)| now.saturating_sub(*stored_at) < window);
    }

    /// Rebuilds the duplicate window from the stored messages, as a server does on start.
    pub(crate) fn rebuild_duplicates(&mut self, now: Duration) {
        self.duplicates.clear();
        let window = self.window();
        for message in self.messages.values() {
            if now.saturating_sub(message.stored_at) >= window {
                continue;
            }
            if let Some(id) = message_id(&message.headers) {
                self.duplicates
                    .insert(id.to_owned(), (message.sequence, message.stored_at));
            }
        }
    }

    /// Stores a message published at `now`.
    pub(crate) fn store(
        &mut self,
        now: Duration,
        subject: &str,
        headers: &[(String, String)],
        payload: &Bytes,
    ) -> Stored {
        if self.config.sealed {
            return Stored::Refused(ApiError::stream_sealed());
        }
        self.expire_duplicates(now);
        let id = message_id(headers);
        if let Some(id) = id
            && let Some((sequence, _)) = self.duplicates.get(id)
        {
            return Stored::Duplicate(*sequence);
        }
        let header_len = header_len(headers);
        if self.config.max_msg_size >= 0
            && (header_len + payload.len()) as i64 > self.config.max_msg_size
        {
            return Stored::Refused(ApiError::message_too_large());
        }
        if header_len > usize::from(u16::MAX) {
            return Stored::Refused(ApiError::new(
                400,
                10097,
                "header size exceeds maximum allowed of 64k",
            ));
        }
        if let Err(reason) = self.check_discard_new(subject, header_len + payload.len()) {
            return Stored::Refused(ApiError::store_failed(reason));
        }
        let sequence = self.last_seq + 1;
        let message = StoredMessage {
            sequence,
            subject: subject.to_owned(),
            headers: headers.to_vec(),
            payload: payload.clone(),
            stored_at: now,
        };
        self.bytes += message.stored_size(self.config.storage);
        if self.messages.is_empty() {
            self.first_seq = sequence;
        }
        self.messages.insert(sequence, message);
        self.last_seq = sequence;
        self.last_stored_at = Some(now);
        if let Some(id) = id {
            self.duplicates.insert(id.to_owned(), (sequence, now));
        }
        // On a new message the file store drops one message over the subject's limit, the
        // memory store as many as it takes (nats-server 2.9.10): a limit an update set on a
        // stream that had none comes down one message at a time on file.
        let per_subject_drops = match self.config.storage {
            Storage::File => 1,
            Storage::Memory => usize::MAX,
        };
        self.enforce_limits(now, subject, per_subject_drops);
        Stored::New(sequence)
    }

    /// Under `discard: new`, why a message of `len` bytes on `subject` may not be stored.
    fn check_discard_new(&self, subject: &str, len: usize) -> Result<(), &'static str> {
        if self.config.discard != "new" {
            return Ok(());
        }
        let per_subject = self.config.max_msgs_per_subject;
        let at_subject_limit = per_subject > 0 && self.count_on(subject) >= per_subject as u64;
        if at_subject_limit && self.config.discard_new_per_subject {
            return Err("maximum messages per subject exceeded");
        }
        if self.config.max_msgs > 0
            && self.messages.len() as u64 >= self.config.max_msgs as u64
            && !at_subject_limit
        {
            return Err("maximum messages exceeded");
        }
        if self.config.max_bytes > 0
            && self.bytes + len as u64 >= self.config.max_bytes as u64
            && !at_subject_limit
        {
            return Err("maximum bytes exceeded");
        }
        Ok(())
    }

    fn count_on(&self, subject: &str) -> u64 {
        self.messages
            .values()
            .filter(|message| message.subject == subject)
            .count() as u64
    }

    /// Drops what the limits no longer allow: the oldest messages first, at most
    /// `per_subject_drops` of them for `subject`'s own limit.
    pub(crate) fn enforce_limits(
        &mut self,
        now: Duration,
        subject: &str,
        per_subject_drops: usize,
    ) {
        let per_subject = self.config.max_msgs_per_subject;
        if per_subject > 0 {
            let mut drops = 0;
            while drops < per_subject_drops && self.count_on(subject) > per_subject as u64 {
                drops += 1;
                let oldest = self
                    .messages
                    .values()
                    .find(|message| message.subject == subject)
                    .map(|message| message.sequence);
                match oldest {
                    Some(sequence) => self.remove(sequence),
                    None => break,
                }
            }
        }
        if self.config.max_msgs > 0 {
            while self.messages.len() as u64 > self.config.max_msgs as u64 {
                self.remove_first();
            }
        }
        if self.config.max_bytes > 0 {
            while self.bytes > self.config.max_bytes as u64 && !self.messages.is_empty() {
                self.remove_first();
            }
        }
        self.expire(now);
    }

    /// What the stores of nats-server 2.9 enforce when a stream's configuration is updated:
    /// the message and byte limits and the age at once, but the per-subject limit only when
    /// it lowers a positive one. A limit set on a stream that had none (-1) leaves every
    /// subject as it is until its next message.
    pub(crate) fn enforce_after_update(&mut self, now: Duration, old_per_subject: i64) {
        let per_subject = self.config.max_msgs_per_subject;
        if per_subject > 0 && old_per_subject > 0 && per_subject < old_per_subject {
            let subjects: std::collections::BTreeSet<String> = self
                .messages
                .values()
                .map(|message| message.subject.clone())
                .collect();
            for subject in subjects {
                self.enforce_limits(now, &subject, usize::MAX);
            }
        }
        // No subject is named: only the stream-wide limits apply.
        self.enforce_limits(now, "", 0);
    }

    /// Drops messages older than `max_age`.
    pub(crate) fn expire(&mut self, now: Duration) {
        let Some(max_age) = self.max_age() else {
            return;
        };
        while let Some(first) = self.messages.values().next() {
            if now.saturating_sub(first.stored_at) < max_age {
                break;
            }
            self.remove_first();
        }
    }

    fn max_age(&self) -> Option<Duration> {
        (self.config.max_age > 0).then(|| Duration::from_nanos(self.config.max_age as u64))
    }

    /// When the oldest message expires, if the stream has a maximum age.
    pub(crate) fn next_expiry(&self) -> Option<Duration> {
        let max_age = self.max_age()?;
        let first = self.messages.values().next()?;
        Some(first.stored_at + max_age)
    }

    fn remove_first(&mut self) {
        if let Some(&sequence) = self.messages.keys().next() {
            self.remove(sequence);
        }
    }

    fn remove(&mut self, sequence: u64) {
        if let Some(message) = self.messages.remove(&sequence) {
            self.bytes = self
                .bytes
                .saturating_sub(message.stored_size(self.config.storage));
            // nats-server settles a delivery of a message the stream drops as if it was acked
            // (`decStreamPending`): the ack floor moves and it no longer counts as pending.
            for consumer in self.consumers.values_mut() {
                if let Some(delivery) = consumer.pending.get(&sequence).map(|p| p.delivery) {
                    consumer.ack(sequence, delivery, &mut std::collections::VecDeque::new());
                    consumer.settled_by_stream = true;
                }
            }
        }
        self.first_seq = match self.messages.keys().next() {
            Some(&first) => first,
            None => self.last_seq + 1,
        };
    }

    /// The first message at or after `from` that `filter` matches (every message when empty).
    pub(crate) fn next_matching(&self, from: u64, filter: &str) -> Option<&StoredMessage> {
        self.messages
            .range(from..)
            .map(|(_, message)| message)
            .find(|message| filter.is_empty() || subject::matches(filter, &message.subject))
    }

    /// How many messages at or after `from` `filter` matches.
    pub(crate) fn count_matching(&self, from: u64, filter: &str) -> u64 {
        self.messages
            .range(from..)
            .filter(|(_, message)| filter.is_empty() || subject::matches(filter, &message.subject))
            .count() as u64
    }

    /// The number of distinct subjects stored.
    fn num_subjects(&self) -> usize {
        let mut subjects: Vec<&str> = self
            .messages
            .values()
            .map(|message| message.subject.as_str())
            .collect();
        subjects.sort_unstable();
        subjects.dedup();
        subjects.len()
    }

    /// The `state` object of `STREAM.INFO`.
    pub(crate) fn state(&self, to_unix: impl Fn(Duration) -> i128) -> StreamState {
        let first = self.messages.values().next();
        let messages = self.messages.len() as u64;
        let num_deleted = if messages > 0 {
            (self.last_seq - self.first_seq + 1 - messages) as usize
        } else {
            0
        };
        StreamState {
            messages,
            bytes: self.bytes,
            first_seq: self.first_seq,
            first_ts: super::json::go_time(first.map(|m| to_unix(m.stored_at))),
            last_seq: self.last_seq,
            last_ts: super::json::go_time(self.last_stored_at.map(&to_unix)),
            num_subjects: self.num_subjects(),
            num_deleted,
            consumer_count: self.consumers.len(),
        }
    }
}

/// The `Nats-Msg-Id` of a message, if it has a non-empty one.
pub(crate) fn message_id(headers: &[(String, String)]) -> Option<&str> {
    headers
        .iter()
        .find(|(key, _)| key == MSG_ID)
        .map(|(_, value)| value.as_str())
        .filter(|id| !id.is_empty())
}

/// The `state` object of a stream's info.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StreamState {
    messages: u64,
    bytes: u64,
    first_seq: u64,
    first_ts: String,
    last_seq: u64,
    last_ts: String,
    #[serde(skip_serializing_if = "is_zero_usize")]
    num_subjects: usize,
    #[serde(skip_serializing_if = "is_zero_usize")]
    num_deleted: usize,
    consumer_count: usize,
}

fn is_zero_usize(value: &usize) -> bool {
    *value == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> StreamConfig {
        StreamConfig::read(&Request::parse(json.as_bytes()).unwrap())
            .unwrap()
            .checked()
            .unwrap()
    }

    fn headers(id: &str) -> Vec<(String, String)> {
        vec![(MSG_ID.to_owned(), id.to_owned())]
    }

    #[test]
    fn defaults_are_the_servers() {
        let config = config(r#"{"name":"S","max_age":30000000000}"#);
        assert_eq!(config.subjects, ["S"]);
        assert_eq!(config.max_msgs, -1);
        assert_eq!(config.duplicate_window, 30_000_000_000);
        assert_eq!(config.num_replicas, 1);
        assert_eq!(config.storage, Storage::File);
    }

    #[test]
    fn bytes_are_counted_like_the_file_store() {
        let mut stream = Stream::new(config(r#"{"name":"S","subjects":["hubbus_js.>"]}"#), 1, 0);
        let now = Duration::ZERO;
        stream.store(
            now,
            "hubbus_js.a",
            &headers("id1"),
            &Bytes::from_static(b"one"),
        );
        stream.store(now, "hubbus_js.b", &[], &Bytes::from_static(b"two"));
        // What nats-server 2.9.10 reported for the same two messages.
        assert_eq!(stream.bytes, 122);
    }

    #[test]
    fn duplicates_are_found_within_the_window_only() {
        let mut stream = Stream::new(
            config(r#"{"name":"S","duplicate_window":1000000000}"#),
            1,
            0,
        );
        let payload = Bytes::from_static(b"x");
        let at = Duration::from_millis;
        assert_eq!(
            stream.store(at(0), "S", &headers("a"), &payload),
            Stored::New(1)
        );
        assert_eq!(
            stream.store(at(999), "S", &headers("a"), &payload),
            Stored::Duplicate(1)
        );
        assert_eq!(
            stream.store(at(1000), "S", &headers("a"), &payload),
            Stored::New(2)
        );
        stream.rebuild_duplicates(at(1500));
        assert_eq!(
            stream.store(at(1500), "S", &headers("a"), &payload),
            Stored::Duplicate(2)
        );
    }

    #[test]
    fn limits_discard_old_or_refuse_new() {
        let payload = Bytes::from_static(b"x");
        let mut old = Stream::new(config(r#"{"name":"S","max_msgs":2}"#), 1, 0);
        for _ in 0..3 {
            old.store(Duration::ZERO, "S", &[], &payload);
        }
        assert_eq!(old.messages.keys().copied().collect::<Vec<_>>(), [2, 3]);
        assert_eq!(old.first_seq, 2);
        let mut new = Stream::new(config(r#"{"name":"S","max_msgs":2,"discard":"new"}"#), 1, 0);
        for _ in 0..2 {
            new.store(Duration::ZERO, "S", &[], &payload);
        }
        assert_eq!(
            new.store(Duration::ZERO, "S", &[], &payload),
            Stored::Refused(ApiError::store_failed("maximum messages exceeded"))
        );
    }

    #[test]
    fn old_messages_expire_with_max_age() {
        let mut stream = Stream::new(config(r#"{"name":"S","max_age":1000000000}"#), 1, 0);
        stream.store(Duration::ZERO, "S", &[], &Bytes::new());
        assert_eq!(stream.next_expiry(), Some(Duration::from_secs(1)));
        stream.expire(Duration::from_secs(1));
        assert!(stream.messages.is_empty());
        assert_eq!((stream.first_seq, stream.last_seq), (2, 1));
    }
}
