//! The JetStream API as the bus speaks it: JSON requests to `$JS.API.>` subjects and their
//! replies, plus the PubAck and the pull request.
//!
//! Only the fields the bus sets or reads are modelled. serde ignores everything else, so a newer
//! server that adds fields still parses. Durations travel as nanoseconds (Go's
//! `time.Duration`), and a reply that failed carries `{"error": {...}}` instead of its body,
//! which [`parse_reply`] turns into an [`ApiError`] before the body is read.

use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::backend::nats::link::{LinkError, LinkMessage, LinkPublish, NatsLink};

/// The error code of "stream not found".
pub(super) const STREAM_NOT_FOUND: u32 = 10059;
/// The error code of "consumer not found".
pub(super) const CONSUMER_NOT_FOUND: u32 = 10014;
/// The error code of "stream name already in use with a different configuration".
pub(super) const STREAM_NAME_IN_USE: u32 = 10058;
/// The error code of "subjects overlap with an existing stream".
pub(super) const SUBJECTS_OVERLAP: u32 = 10065;

/// An error the JetStream API answered with.
///
/// Publishes that the server refuses (a full stream with `discard: new`, a message larger than
/// the stream allows, ...) fail with [`crate::BusError::Backend`] around this error, so callers
/// can downcast the source and read the codes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, thiserror::Error)]
#[error("JetStream API error {code}/{err_code}: {description}")]
pub struct ApiError {
    /// The HTTP-like status: 400, 404, 500, 503, ...
    pub code: u16,
    /// JetStream's own error code (10059 is "stream not found"); 0 when the server sent none.
    #[serde(default)]
    pub err_code: u32,
    /// What the server said.
    #[serde(default)]
    pub description: String,
}

/// How an API call failed.
#[derive(Debug)]
pub(super) enum CallError {
    /// The request did not get an answer (not connected, timed out, no responders).
    Link(LinkError),
    /// The server answered with an error.
    Api(ApiError),
    /// The answer was not the JSON expected.
    Malformed(String),
}

impl CallError {
    /// True for the API error with JetStream code `err_code`.
    pub(super) fn is(&self, err_code: u32) -> bool {
        matches!(self, CallError::Api(error) if error.err_code == err_code)
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Link(error) => error.fmt(f),
            CallError::Api(error) => error.fmt(f),
            CallError::Malformed(reason) => write!(f, "unreadable JetStream reply: {reason}"),
        }
    }
}

/// A duration as Go's `time.Duration` on the wire: nanoseconds, at most `i64::MAX`.
pub(super) fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos())
        .unwrap_or(u64::MAX)
        .min(i64::MAX as u64)
}

/// Sends `body` (JSON) to the API subject `subject` and reads the reply as `T`.
pub(super) async fn call<T: DeserializeOwned>(
    link: &dyn NatsLink,
    subject: String,
    body: &impl Serialize,
    timeout: Duration,
) -> Result<T, CallError> {
    let payload = serde_json::to_vec(body).map_err(|e| CallError::Malformed(e.to_string()))?;
    let request = LinkPublish {
        subject,
        reply: None,
        headers: Vec::new(),
        payload: Bytes::from(payload),
    };
    let reply = link
        .request(request, timeout)
        .await
        .map_err(CallError::Link)?;
    parse_reply(&reply)
}

/// Reads an API reply (or a PubAck): the error if it carries one, else the body as `T`.
pub(super) fn parse_reply<T: DeserializeOwned>(reply: &LinkMessage) -> Result<T, CallError> {
    if reply.status == Some(503) {
        // A link that does not map the "no responders" status itself hands it over as is.
        return Err(CallError::Link(LinkError::NoResponders(
            reply.subject.clone(),
        )));
    }
    #[derive(Deserialize)]
    struct ErrorOnly {
        #[serde(default)]
        error: Option<ApiError>,
    }
    let read = |e: serde_json::Error| CallError::Malformed(e.to_string());
    let probe: ErrorOnly = serde_json::from_slice(&reply.payload).map_err(read)?;
    if let Some(error) = probe.error {
        return Err(CallError::Api(error));
    }
    serde_json::from_slice(&reply.payload).map_err(read)
}

/// The body of a request that takes no arguments: `{}`.
#[derive(Debug, Serialize)]
pub(super) struct Empty {}

/// The configuration the bus creates its stream with (`$JS.API.STREAM.CREATE.<name>`).
#[derive(Debug, Serialize)]
pub(super) struct StreamConfig {
    pub name: String,
    pub subjects: Vec<String>,
    pub retention: &'static str,
    pub storage: &'static str,
    pub discard: &'static str,
    pub max_age: u64,
    pub max_bytes: i64,
    pub max_msgs: i64,
    pub max_consumers: i64,
    pub max_msg_size: i64,
    pub num_replicas: usize,
    pub duplicate_window: u64,
}

/// What the bus reads of `$JS.API.STREAM.INFO` (and of the create reply).
#[derive(Debug, Deserialize)]
pub(super) struct StreamInfo {
    pub config: ExistingStream,
    /// When the stream was created: a stream deleted and created again has a new value.
    pub created: String,
}

/// The parts of an existing stream's configuration the bus depends on.
#[derive(Debug, Deserialize)]
pub(super) struct ExistingStream {
    #[serde(default)]
    pub subjects: Vec<String>,
    #[serde(default)]
    pub retention: String,
    #[serde(default)]
    pub storage: String,
    #[serde(default)]
    pub no_ack: bool,
    #[serde(default)]
    pub sealed: bool,
    #[serde(default)]
    pub mirror: Option<serde_json::Value>,
}

/// `$JS.API.CONSUMER.DURABLE.CREATE.<stream>.<durable>`.
#[derive(Debug, Serialize)]
pub(super) struct CreateConsumer<'a> {
    pub stream_name: &'a str,
    pub config: ConsumerConfig,
}

/// Where a new consumer starts in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DeliverFrom {
    /// What is published after the consumer was created.
    New,
    /// Everything the stream holds.
    All,
    /// From this stream sequence on.
    Sequence(u64),
}

/// A durable pull consumer's configuration.
#[derive(Debug, Serialize)]
pub(super) struct ConsumerConfig {
    pub durable_name: String,
    pub description: String,
    pub deliver_policy: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opt_start_seq: Option<u64>,
    pub ack_policy: &'static str,
    pub ack_wait: u64,
    pub max_deliver: i64,
    pub filter_subject: String,
    pub replay_policy: &'static str,
    pub max_ack_pending: i64,
    pub inactive_threshold: u64,
}

impl ConsumerConfig {
    /// Sets `deliver_policy` and `opt_start_seq` for `from`.
    pub(super) fn deliver_from(mut self, from: DeliverFrom) -> Self {
        (self.deliver_policy, self.opt_start_seq) = match from {
            DeliverFrom::New => ("new", None),
            DeliverFrom::All => ("all", None),
            DeliverFrom::Sequence(sequence) => ("by_start_sequence", Some(sequence.max(1))),
        };
        self
    }
}

/// What the bus reads of `$JS.API.CONSUMER.INFO` (and of the create reply).
#[derive(Debug, Deserialize)]
pub(super) struct ConsumerInfo {
    pub config: ExistingConsumer,
    #[serde(default)]
    pub num_ack_pending: u64,
    /// The last message handed out; for a consumer just created, where it starts.
    #[serde(default)]
    pub delivered: SequencePair,
    /// Every message up to here is acknowledged.
    #[serde(default)]
    pub ack_floor: SequencePair,
}

/// The parts of an existing consumer's configuration the bus depends on.
#[derive(Debug, Deserialize)]
pub(super) struct ExistingConsumer {
    #[serde(default)]
    pub filter_subject: Option<String>,
    #[serde(default)]
    pub ack_policy: String,
    #[serde(default)]
    pub deliver_subject: Option<String>,
}

/// A position in the stream as a consumer reports it.
#[derive(Debug, Default, Deserialize)]
pub(super) struct SequencePair {
    #[serde(default)]
    pub stream_seq: u64,
}

/// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>`: up to `batch` messages, the request ending
/// on the server after `expires`.
#[derive(Debug, Serialize)]
pub(super) struct PullRequest {
    pub batch: usize,
    pub expires: u64,
}

/// The reply to a publish into the stream. A publish the server discarded as a duplicate (same
/// `Nats-Msg-Id` within the duplicate window) is acknowledged with the original's sequence.
#[derive(Debug, Deserialize)]
pub(super) struct PubAck {
    pub seq: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(payload: &'static str) -> LinkMessage {
        LinkMessage {
            subject: "_INBOX.x".into(),
            reply: None,
            headers: Vec::new(),
            payload: Bytes::from_static(payload.as_bytes()),
            status: None,
            description: None,
        }
    }

    #[test]
    fn pub_acks_errors_and_garbage_are_told_apart() {
        let ack: PubAck =
            parse_reply(&reply(r#"{"stream":"S", "seq":7,"duplicate": true}"#)).unwrap();
        assert_eq!(ack.seq, 7);
        let error = parse_reply::<PubAck>(&reply(
            r#"{"error":{"code":404,"err_code":10059,"description":"stream not found"}}"#,
        ))
        .unwrap_err();
        assert!(error.is(STREAM_NOT_FOUND), "{error}");
        assert!(matches!(
            parse_reply::<PubAck>(&reply("not json")),
            Err(CallError::Malformed(_))
        ));
        let mut no_responders = reply("");
        no_responders.status = Some(503);
        assert!(matches!(
            parse_reply::<PubAck>(&no_responders),
            Err(CallError::Link(LinkError::NoResponders(_)))
        ));
    }

    #[test]
    fn durations_are_go_nanoseconds() {
        assert_eq!(nanos(Duration::from_millis(1500)), 1_500_000_000);
        assert_eq!(nanos(Duration::MAX), i64::MAX as u64);
    }

    #[test]
    fn consumer_start_positions_serialise_as_the_server_expects() {
        let config = ConsumerConfig {
            durable_name: "d".into(),
            description: String::new(),
            deliver_policy: "new",
            opt_start_seq: None,
            ack_policy: "explicit",
            ack_wait: 1,
            max_deliver: -1,
            filter_subject: "p.>".into(),
            replay_policy: "instant",
            max_ack_pending: 1000,
            inactive_threshold: 86_400_000_000_000,
        };
        let json = serde_json::to_string(&config.deliver_from(DeliverFrom::Sequence(0))).unwrap();
        assert!(
            json.contains(r#""deliver_policy":"by_start_sequence","opt_start_seq":1"#),
            "{json}"
        );
        assert!(
            json.contains(r#""max_ack_pending":1000,"inactive_threshold":86400000000000"#),
            "{json}"
        );
    }
}
