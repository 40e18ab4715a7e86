//! What the nodes of a run do: who subscribes to which channel and when, who publishes what,
//! and which node processes stop and start again. Times are simulated time since the start of
//! the run.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One local subscriber of a node's hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscriber {
    /// Its node.
    pub node: usize,
    /// The channel it subscribes to (an index into the run's channels).
    pub channel: usize,
    /// When it subscribes.
    pub joins: Duration,
    /// When it unsubscribes, if it does before the run ends.
    pub leaves: Option<Duration>,
    /// How long it takes over each delivery, if it is a slow reader.
    pub slow: Option<Duration>,
    /// It subscribes to [`REFUSED_CHANNEL`] instead of `channel`: a channel the Redis brokers'
    /// ACL refuses. It must be told so (`BusError::Refused`), and the node's other
    /// subscriptions must go on as if it had never tried.
    #[serde(default)]
    pub refused: bool,
}

impl Subscriber {
    /// A subscriber of `channel` on `node` for the whole run, reading as fast as it can.
    pub fn steady(node: usize, channel: usize) -> Self {
        Subscriber {
            node,
            channel,
            joins: Duration::ZERO,
            leaves: None,
            slow: None,
            refused: false,
        }
    }

    /// A subscriber on `node` that tries the refused channel at `joins`.
    pub fn refused(node: usize, joins: Duration) -> Self {
        Subscriber {
            joins,
            refused: true,
            ..Subscriber::steady(node, 0)
        }
    }

    /// The channel name it subscribes to.
    pub(super) fn channel_name(&self) -> String {
        if self.refused {
            REFUSED_CHANNEL.to_string()
        } else {
            channel_name(self.channel)
        }
    }
}

/// A channel outside the ACL of the simulated Redis brokers, which allow `room*` only.
pub const REFUSED_CHANNEL: &str = "vault";

/// One publisher on a node's hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publisher {
    /// Its node.
    pub node: usize,
    /// The channel it publishes to.
    pub channel: usize,
    /// When it publishes its first message.
    pub start: Duration,
    /// How many messages it publishes.
    pub messages: u32,
    /// The time between two of its publishes (a publish that takes longer delays the next).
    pub interval: Duration,
    /// Payload size in bytes (at least what names the message).
    pub payload: usize,
    /// How often a failed publish is tried again with the same message id.
    pub retries: u32,
}

impl Publisher {
    /// When its last publish is due.
    pub fn last_due(&self) -> Duration {
        self.start + self.interval * self.messages.saturating_sub(1)
    }
}

/// A node process that stops (closing its hub and bus) and starts again with its node id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restart {
    /// Which node.
    pub node: usize,
    /// When it stops.
    pub at: Duration,
    /// How long it stays away.
    pub down_for: Duration,
}

/// The channel name of channel `index`.
pub(super) fn channel_name(index: usize) -> String {
    format!("room{index}")
}

/// The payload of message `seq` of publisher `publisher` on node `node`: the three numbers that
/// name it, then padding up to `size` bytes.
pub(super) fn payload(node: usize, publisher: usize, seq: u32, size: usize) -> String {
    let mut text = format!("{node}:{publisher}:{seq}:");
    if text.len() < size {
        text.extend(std::iter::repeat_n('.', size - text.len()));
    }
    text
}

/// Reads back what [`payload`] wrote.
pub(super) fn parse_payload(payload: &[u8]) -> Option<(usize, usize, u32)> {
    let text = std::str::from_utf8(payload.get(..payload.len().min(64))?).ok()?;
    let mut parts = text.splitn(4, ':');
    let node = parts.next()?.parse().ok()?;
    let publisher = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    parts.next()?;
    Some((node, publisher, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_their_message_at_any_size() {
        for size in [0, 8, 1000] {
            let text = payload(3, 1, 77, size);
            assert!(text.len() >= size.min(text.len()));
            assert_eq!(parse_payload(text.as_bytes()), Some((3, 1, 77)));
        }
        assert_eq!(payload(1, 2, 3, 100).len(), 100);
        assert_eq!(parse_payload(b"garbage"), None);
        assert_eq!(parse_payload(b"1:2:x:"), None);
    }
}
