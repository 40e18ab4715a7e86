//! The stream every node writes to and reads from: checking the options that name it, creating
//! it when it is missing, and refusing one that exists with a configuration the bus cannot keep
//! its promise on.
//!
//! The bus never changes an existing stream. An operator may have tuned its limits (age, size,
//! replicas), and those are kept whatever this node's options say; only what breaks the promise
//! is refused, with [`BusError::Config`] at `nats.stream`: subjects that do not cover
//! `<subject_prefix>.>`, memory storage (acknowledged messages would not survive a restart),
//! retention other than `limits` (every node reads every message), `no_ack` (publishes could
//! not be confirmed), a sealed stream or a mirror (neither accepts publishes).
//!
//! New streams get a duplicate window of two minutes (or the maximum age, if shorter): a
//! publisher that retries with the same message id inside it is acknowledged without a second
//! copy being stored.

use std::fmt;
use std::time::Duration;

use super::JetStream;
use super::api::{
    self, CallError, ExistingStream, STREAM_NAME_IN_USE, STREAM_NOT_FOUND, SUBJECTS_OVERLAP,
    StreamConfig, StreamInfo,
};
use crate::backend::nats::JetStreamOptions;
use crate::backend::nats::link::LinkError;
use crate::bus::BusError;
use crate::config::JetStreamRules;

/// How long the server remembers message ids to discard retried publishes.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Why the stream cannot be used right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum StreamProblem {
    /// The server did not answer, or cannot serve the stream yet; worth retrying.
    Unavailable(String),
    /// The stream exists with a configuration the bus refuses, or cannot be created as
    /// configured; retrying only helps once an operator has changed something.
    Incompatible { key: &'static str, reason: String },
}

impl fmt::Display for StreamProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamProblem::Unavailable(reason) => f.write_str(reason),
            StreamProblem::Incompatible { key, reason } => {
                write!(f, "invalid configuration at `{key}`: {reason}")
            }
        }
    }
}

/// Checks the JetStream options before anything talks to the server, by the same rules as the
/// configuration.
pub(super) fn validate(js: &JetStreamOptions) -> Result<(), BusError> {
    JetStreamRules {
        stream: &js.stream,
        subject_prefix: &js.subject_prefix,
        replicas: js.replicas,
        ack_timeout: js.publish_timeout,
        ack_wait: js.ack_wait,
        pull_expires: js.pull_expires,
        api_timeout: js.api_timeout,
        pull_batch: js.pull_batch,
        max_ack_pending: js.max_ack_pending,
        inactive_threshold: js.inactive_threshold,
    }
    .check()?;
    for (key, limit, unit) in [
        ("nats.max_deliver", js.max_deliver, "delivery"),
        ("nats.stream_max_bytes", js.max_bytes, "byte"),
    ] {
        if limit.is_some_and(|n| n == 0 || n > i64::MAX as u64) {
            return Err(BusError::config(
                key,
                format!("give at least 1 {unit}, or leave it unset for no limit"),
            ));
        }
    }
    Ok(())
}

/// The subject channel `channel` travels on.
pub(super) fn subject(js: &JetStreamOptions, channel: &str) -> String {
    // Once per publish: built by hand, `format!` costs several times as much.
    let prefix = &js.subject_prefix;
    let mut subject = String::with_capacity(prefix.len() + 1 + channel.len());
    subject.push_str(prefix);
    subject.push('.');
    subject.push_str(channel);
    subject
}

/// The configuration a missing stream is created with.
fn config(js: &JetStreamOptions) -> StreamConfig {
    let duplicate_window = if js.max_age.is_zero() {
        DUPLICATE_WINDOW
    } else {
        // The server refuses a duplicate window longer than the maximum age.
        DUPLICATE_WINDOW.min(js.max_age)
    };
    StreamConfig {
        name: js.stream.clone(),
        subjects: vec![format!("{}.>", js.subject_prefix)],
        retention: "limits",
        storage: "file",
        discard: "old",
        max_age: api::nanos(js.max_age),
        max_bytes: js.max_bytes.map_or(-1, |n| n as i64),
        max_msgs: -1,
        max_consumers: -1,
        max_msg_size: -1,
        num_replicas: js.replicas,
        duplicate_window: api::nanos(duplicate_window),
    }
}

/// True when the subject filter `pattern` matches every subject under `<prefix>.`.
fn covers(pattern: &str, prefix: &str) -> bool {
    let prefix: Vec<&str> = prefix.split('.').collect();
    for (index, token) in pattern.split('.').enumerate() {
        if token == ">" {
            return true;
        }
        match prefix.get(index) {
            Some(expected) if token == "*" || token == *expected => {}
            // A literal or `*` past the prefix matches only some of what lies under it.
            _ => return false,
        }
    }
    false
}

/// Why the bus cannot use `existing`, if it cannot.
fn refusal(js: &JetStreamOptions, existing: &ExistingStream) -> Option<String> {
    let name = &js.stream;
    let wanted = format!("{}.>", js.subject_prefix);
    if !existing
        .subjects
        .iter()
        .any(|subject| covers(subject, &js.subject_prefix))
    {
        return Some(format!(
            "stream {name} holds {:?}, which does not cover {wanted}; the bus does not change an \
             existing stream: use another stream name, or give that stream the subject {wanted}",
            existing.subjects
        ));
    }
    if existing.storage != "file" {
        return Some(format!(
            "stream {name} keeps messages in {} storage; acknowledged messages must survive a \
             server restart, which needs file storage: recreate it with file storage or use \
             another stream name",
            existing.storage
        ));
    }
    if existing.retention != "limits" {
        return Some(format!(
            "stream {name} has {} retention; every node reads every message, which needs limits \
             retention: recreate it or use another stream name",
            existing.retention
        ));
    }
    if existing.no_ack {
        return Some(format!(
            "stream {name} does not acknowledge publishes (no_ack), so no publish could be \
             confirmed: use another stream name"
        ));
    }
    if existing.sealed || existing.mirror.is_some() {
        return Some(format!(
            "stream {name} is sealed or a mirror and accepts no publishes: use another stream name"
        ));
    }
    None
}

fn checked(js: &JetStreamOptions, info: StreamInfo) -> Result<String, StreamProblem> {
    match refusal(js, &info.config) {
        None => Ok(info.created),
        Some(reason) => Err(StreamProblem::Incompatible {
            key: "nats.stream",
            reason,
        }),
    }
}

/// Makes sure the stream exists and suits the bus; returns its creation time, which tells a
/// stream that was deleted and created again from the one seen before.
///
/// Records a usable or refused stream in the bus's health. Whether an unreachable server makes
/// the bus unhealthy is the caller's call: only the supervisor and `start` decide that, so that
/// one timed-out request elsewhere does not flip health while the supervisor sees a working
/// connection.
pub(super) async fn ensure(js_bus: &JetStream) -> Result<String, StreamProblem> {
    let result = look_up_or_create(js_bus).await;
    match &result {
        Ok(created) => js_bus.stream_ready(created),
        Err(StreamProblem::Incompatible { key, reason }) => {
            js_bus.stream_refused(key, reason.clone());
        }
        Err(StreamProblem::Unavailable(_)) => {}
    }
    result
}

async fn look_up_or_create(js_bus: &JetStream) -> Result<String, StreamProblem> {
    let js = &js_bus.js;
    let link = js_bus.link.as_ref();
    let info_subject = format!("$JS.API.STREAM.INFO.{}", js.stream);
    let unavailable = |error: CallError| {
        StreamProblem::Unavailable(match error {
            CallError::Link(LinkError::NoResponders(_)) => {
                "the JetStream API does not answer; is JetStream enabled on the server?".to_owned()
            }
            other => other.to_string(),
        })
    };
    match api::call::<StreamInfo>(link, info_subject.clone(), &api::Empty {}, js.api_timeout).await
    {
        Ok(info) => return checked(js, info),
        Err(error) if error.is(STREAM_NOT_FOUND) => {}
        Err(error) => return Err(unavailable(error)),
    }
    let create_subject = format!("$JS.API.STREAM.CREATE.{}", js.stream);
    match api::call::<StreamInfo>(link, create_subject, &config(js), js.api_timeout).await {
        Ok(info) => checked(js, info),
        Err(error) if error.is(STREAM_NAME_IN_USE) => {
            // Another node created it in the meantime, with other limits: judge that one.
            api::call::<StreamInfo>(link, info_subject, &api::Empty {}, js.api_timeout)
                .await
                .map_err(unavailable)
                .and_then(|info| checked(js, info))
        }
        Err(error) if error.is(SUBJECTS_OVERLAP) => Err(StreamProblem::Incompatible {
            key: "nats.stream_subject_prefix",
            reason: format!(
                "another stream already holds subjects under {}.>; choose another prefix",
                js.subject_prefix
            ),
        }),
        Err(CallError::Api(error)) if error.code == 400 => Err(StreamProblem::Incompatible {
            key: "nats.jetstream",
            reason: format!("the server refused to create stream {}: {error}", js.stream),
        }),
        Err(error) => Err(unavailable(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn existing(subjects: &[&str], storage: &str, retention: &str) -> ExistingStream {
        ExistingStream {
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            retention: retention.into(),
            storage: storage.into(),
            no_ack: false,
            sealed: false,
            mirror: None,
        }
    }

    #[test]
    fn a_subject_filter_covers_the_prefix_only_with_a_tail_wildcard() {
        assert!(covers("hubbus.js.>", "hubbus.js"));
        assert!(covers("hubbus.>", "hubbus.js"));
        assert!(covers(">", "hubbus.js"));
        assert!(covers("*.js.>", "hubbus.js"));
        assert!(!covers("hubbus.js", "hubbus.js"));
        assert!(!covers("hubbus.js.*", "hubbus.js"));
        assert!(!covers("hubbus.js.room.>", "hubbus.js"));
        assert!(!covers("other.>", "hubbus.js"));
    }

    #[test]
    fn only_what_breaks_the_promise_is_refused() {
        let js = JetStreamOptions {
            subject_prefix: "hubbus.js".into(),
            ..JetStreamOptions::default()
        };
        assert_eq!(
            refusal(&js, &existing(&["hubbus.js.>"], "file", "limits")),
            None
        );
        assert_eq!(
            refusal(&js, &existing(&["hubbus.>"], "file", "limits")),
            None
        );
        for (stream, mentions) in [
            (existing(&["other.>"], "file", "limits"), "does not cover"),
            (
                existing(&["hubbus.js.>"], "memory", "limits"),
                "memory storage",
            ),
            (
                existing(&["hubbus.js.>"], "file", "workqueue"),
                "workqueue retention",
            ),
        ] {
            let reason = refusal(&js, &stream).expect("refused");
            assert!(reason.contains(mentions), "{reason}");
        }
        let no_ack = ExistingStream {
            no_ack: true,
            ..existing(&["hubbus.js.>"], "file", "limits")
        };
        assert!(refusal(&js, &no_ack).is_some());
    }

    #[test]
    fn options_are_checked_with_the_key_to_fix() {
        let key_of = |js: JetStreamOptions| match validate(&js) {
            Err(BusError::Config { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        assert!(validate(&JetStreamOptions::default()).is_ok());
        let stream = |name: &str| JetStreamOptions {
            stream: name.into(),
            ..JetStreamOptions::default()
        };
        assert_eq!(key_of(stream("a.b")), "nats.stream");
        assert_eq!(key_of(stream("")), "nats.stream");
        let prefix = |prefix: &str| JetStreamOptions {
            subject_prefix: prefix.into(),
            ..JetStreamOptions::default()
        };
        assert_eq!(key_of(prefix("a.>")), "nats.stream_subject_prefix");
        assert_eq!(key_of(prefix("a..b")), "nats.stream_subject_prefix");
        assert_eq!(
            key_of(JetStreamOptions {
                replicas: 0,
                ..JetStreamOptions::default()
            }),
            "nats.stream_replicas"
        );
        assert_eq!(
            key_of(JetStreamOptions {
                ack_wait: Duration::ZERO,
                ..JetStreamOptions::default()
            }),
            "nats.ack_wait"
        );
        assert_eq!(
            key_of(JetStreamOptions {
                max_deliver: Some(0),
                ..JetStreamOptions::default()
            }),
            "nats.max_deliver"
        );
        assert_eq!(
            key_of(JetStreamOptions {
                inactive_threshold: Duration::from_millis(500),
                ..JetStreamOptions::default()
            }),
            "nats.inactive_threshold"
        );
        assert_eq!(
            key_of(JetStreamOptions {
                max_ack_pending: 0,
                ..JetStreamOptions::default()
            }),
            "nats.max_ack_pending"
        );
    }

    #[test]
    fn a_short_maximum_age_shortens_the_duplicate_window() {
        let js = JetStreamOptions {
            max_age: Duration::from_secs(30),
            ..JetStreamOptions::default()
        };
        assert_eq!(config(&js).duplicate_window, 30_000_000_000);
        let js = JetStreamOptions {
            max_age: Duration::ZERO,
            subject_prefix: "hub.js".into(),
            ..JetStreamOptions::default()
        };
        assert_eq!(config(&js).duplicate_window, 120_000_000_000);
        assert_eq!(config(&js).subjects, ["hub.js.>"]);
    }
}
