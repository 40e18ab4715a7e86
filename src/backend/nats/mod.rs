//! NATS: Core (at-most-once) and JetStream (durable consumer, explicit ack, at-least-once).
//!
//! All bus logic sits above [`NatsLink`], a narrow message-level client, so that the same logic
//! runs over async-nats in production ([`AsyncNatsLink`]) and over a simulated link. A channel
//! `room1` travels on the subject `<subject_prefix>.room1` (core) or
//! `<jetstream.subject_prefix>.room1` (JetStream), its payload as published and the bus's
//! metadata in NATS headers, or as an [`crate::envelope::Envelope`] frame (see
//! [`NatsFraming`] and `framing.rs`).
//!
//! What both backends share lives here and in `health.rs`: the one translation of a
//! [`LinkError`] into a [`BusError`], the translation of link events into health, and a limiter
//! for log events that can repeat at network speed.

mod async_nats_link;
mod core;
pub(crate) mod framing;
pub(crate) mod health;
mod identity;
pub mod jetstream;
pub use jetstream::JetStreamBus;
pub mod link;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use futures_core::stream::BoxStream;
use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio::time::Instant;

pub use crate::config::{NatsFraming, PublishMode};
pub use async_nats_link::{AsyncNatsLink, LinkOptions};
pub(crate) use async_nats_link::{parse_servers, url_credentials};
pub use core::NatsCoreBus;
pub use link::{LinkError, LinkEvent, LinkMessage, LinkPublish, LinkSubscription, NatsLink};
pub use wire::WireLink;

use crate::backend::BusOptions;
use crate::bus::{BusError, MessageBus};
use crate::id::NodeId;

/// A NATS-safe token naming `node`, for subjects and consumer names: the node id with anything
/// but `[A-Za-z0-9_-]` replaced by `_`, cut to 48 bytes, then `_` and a 64-bit FNV-1a hash of
/// the exact node id, which keeps tokens unique where replacing or cutting would merge them.
/// Stable across platforms and releases: consumers are found again by it.
pub(crate) fn node_token(node: &NodeId) -> String {
    let mut token: String = node
        .as_str()
        .bytes()
        .take(48)
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                char::from(b)
            } else {
                '_'
            }
        })
        .collect();
    let hash = node
        .as_str()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    token.push_str(&format!("_{hash:016x}"));
    token
}

/// Connects to NATS as `nats.link` says and starts the bus the options ask for: NATS Core
/// ([`NatsCoreBus`]) when `nats.jetstream` is `None`, JetStream ([`jetstream::JetStreamBus`])
/// when it is set.
///
/// Fails for bad options (and, on JetStream, for an existing stream the bus cannot use); a
/// server that is not reachable yet is retried in the background (health is down until it
/// answers).
pub async fn connect(
    options: BusOptions,
    nats: NatsOptions,
) -> Result<Arc<dyn MessageBus>, BusError> {
    match nats.jetstream {
        None => {
            core::check_options(&nats)?;
            let link = Arc::new(AsyncNatsLink::connect(nats.link.clone()).await?);
            Ok(Arc::new(NatsCoreBus::start(options, nats, link)?))
        }
        Some(_) => {
            let link = Arc::new(AsyncNatsLink::connect(nats.link.clone()).await?);
            match jetstream::JetStreamBus::start(options, nats, link.clone()).await {
                Ok(bus) => Ok(Arc::new(bus)),
                Err(error) => {
                    link.close().await;
                    Err(error)
                }
            }
        }
    }
}

/// The one translation of a link failure into what the bus reports, for both NATS backends.
///
/// A link that is not connected, or a request nobody answers (no responders: the JetStream API
/// is not there), is [`BusError::NotConnected`] with the reason; a closed link is
/// [`BusError::Closed`]. A request timeout stays a [`BusError::Backend`] here: only the caller
/// knows whether it was waiting for a publish confirmation (then it reports
/// [`BusError::PublishTimeout`] itself) or for something else.
pub(crate) fn link_error(error: LinkError) -> BusError {
    match error {
        LinkError::NotConnected(reason) => BusError::NotConnected(reason),
        LinkError::Closed => BusError::Closed,
        LinkError::NoResponders(subject) => {
            BusError::NotConnected(format!("no responders on {subject}"))
        }
        LinkError::PayloadTooLarge { size, limit } => BusError::PayloadTooLarge { size, limit },
        other => BusError::Backend(Box::new(other)),
    }
}

/// How many connection events a slow reader of [`NatsLink::events`] may fall behind.
pub(crate) const EVENT_BACKLOG: usize = 256;

/// One [`NatsLink::events`] stream over a link's event broadcast.
pub(crate) fn event_stream(
    receiver: broadcast::Receiver<LinkEvent>,
) -> BoxStream<'static, LinkEvent> {
    futures_util::stream::unfold(receiver, |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(event) => return Some((event, receiver)),
                // A lagging reader skips what it missed; the current state is still available
                // from `is_connected`.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .boxed()
}

/// Sleeps until `deadline`; never wakes without one. For `select!` branches whose deadline
/// comes and goes.
pub(crate) async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Refuses a frame the server would refuse: NATS servers cap a message at their
/// `max_payload` (1 MiB by default), and the envelope adds its header to the caller's payload.
pub(crate) fn check_frame(
    link: &dyn NatsLink,
    frame_len: usize,
    payload_len: usize,
) -> Result<(), crate::BusError> {
    match link.max_payload() {
        Some(max) if frame_len > max => Err(crate::BusError::PayloadTooLarge {
            size: payload_len,
            limit: max.saturating_sub(frame_len - payload_len),
        }),
        _ => Ok(()),
    }
}

/// Everything the NATS backend needs besides the [`crate::BusOptions`].
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// How to connect (servers, credentials, reconnect policy).
    pub link: LinkOptions,
    /// Core subjects are `<subject_prefix>.<channel>`.
    pub subject_prefix: String,
    /// Core: how long one publish may take to get as far as `publish_mode` asks (see
    /// [`crate::config::DEFAULT_NATS_PUBLISH_TIMEOUT`]); in [`PublishMode::Buffered`] it only
    /// bounds the wait for room in the client's outgoing buffer.
    pub publish_timeout: Duration,
    /// Core: what an `Ok` from `publish` means ([`PublishMode::Server`] by default).
    pub publish_mode: PublishMode,
    /// How messages travel, Core and JetStream ([`NatsFraming::Headers`] by default).
    pub framing: NatsFraming,
    /// `Some` switches to JetStream.
    pub jetstream: Option<JetStreamOptions>,
}

impl NatsOptions {
    /// Core NATS at `url` with the plan's defaults: reconnect forever, 2 s apart, the default
    /// publish timeout in the `server` publish mode, subjects under `hubbus.`, 65 536 messages
    /// buffered per subscription (the client's default), and a ping every second, so a silent
    /// server is noticed within seconds (async-nats pings every minute by default).
    pub fn new(url: impl Into<String>) -> Self {
        NatsOptions {
            link: LinkOptions {
                url: url.into(),
                max_reconnects: None,
                reconnect_wait: Duration::from_secs(2),
                connect_timeout: Duration::from_secs(2),
                subscription_capacity: crate::config::DEFAULT_NATS_SUBSCRIPTION_CAPACITY,
                ping_interval: Some(Duration::from_secs(1)),
                ..LinkOptions::default()
            },
            subject_prefix: "hubbus".to_owned(),
            publish_timeout: crate::config::DEFAULT_NATS_PUBLISH_TIMEOUT,
            publish_mode: PublishMode::default(),
            framing: NatsFraming::default(),
            jetstream: None,
        }
    }
}

/// The JetStream settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStreamOptions {
    /// The stream's name (created if missing; an incompatible existing one is an error).
    pub stream: String,
    /// The stream holds `<subject_prefix>.>`; a channel `c` is the subject
    /// `<subject_prefix>.c`.
    pub subject_prefix: String,
    /// How long the stream keeps messages; zero keeps them until `max_bytes` forces them out.
    pub max_age: Duration,
    /// The stream's size limit in bytes; `None` is unlimited.
    pub max_bytes: Option<u64>,
    /// Replicas of the stream (1 on a single server).
    pub replicas: usize,
    /// How long `publish` waits for the server's PubAck.
    pub publish_timeout: Duration,
    /// How long a delivery may stay unacknowledged before the server redelivers it.
    pub ack_wait: Duration,
    /// How often a message is delivered at most; `None` is unlimited.
    pub max_deliver: Option<u64>,
    /// How many messages one pull asks for.
    pub pull_batch: usize,
    /// How long one pull waits on the server for messages.
    pub pull_expires: Duration,
    /// Timeout of JetStream API calls (stream and consumer management, consumer info).
    pub api_timeout: Duration,
    /// Deliveries the node's consumer may have outstanding without an ack; the pull loop never
    /// asks for more, so a node whose subscribers fall behind stops pulling (back-pressure).
    pub max_ack_pending: usize,
    /// How long the server keeps the node's durable consumer once nobody pulls from it: a node
    /// that stays away longer starts afresh (with what is published after it comes back).
    pub inactive_threshold: Duration,
    /// After the node's consumer starts, how long messages for channels without a local
    /// subscriber are held back for a subscriber to come (back) before they are skipped: a
    /// restarted hub's clients re-subscribe and get what was published while it was away.
    pub resume_window: Duration,
}

impl Default for JetStreamOptions {
    fn default() -> Self {
        JetStreamOptions {
            stream: "HUBBUS".to_owned(),
            subject_prefix: "hubbus_js".to_owned(),
            max_age: Duration::from_secs(24 * 3600),
            max_bytes: None,
            replicas: 1,
            publish_timeout: Duration::from_secs(2),
            ack_wait: Duration::from_secs(30),
            max_deliver: None,
            pull_batch: 64,
            pull_expires: Duration::from_secs(1),
            api_timeout: Duration::from_secs(2),
            max_ack_pending: 1000,
            inactive_threshold: Duration::from_secs(24 * 3600),
            resume_window: Duration::from_secs(20),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_errors_map_to_bus_errors() {
        assert!(matches!(
            link_error(LinkError::NotConnected("gone".into())),
            BusError::NotConnected(reason) if reason == "gone"
        ));
        assert!(matches!(link_error(LinkError::Closed), BusError::Closed));
        assert!(matches!(
            link_error(LinkError::NoResponders("$JS.API.INFO".into())),
            BusError::NotConnected(reason) if reason.contains("$JS.API.INFO")
        ));
        assert!(matches!(
            link_error(LinkError::Timeout(Duration::from_secs(1))),
            BusError::Backend(_)
        ));
        assert!(matches!(
            link_error(LinkError::PayloadTooLarge { size: 9, limit: 8 }),
            BusError::PayloadTooLarge { size: 9, limit: 8 }
        ));
        assert!(matches!(
            link_error(LinkError::Invalid("subject".into())),
            BusError::Backend(_)
        ));
        assert!(matches!(
            link_error(LinkError::Other("odd".into())),
            BusError::Backend(_)
        ));
    }
}
