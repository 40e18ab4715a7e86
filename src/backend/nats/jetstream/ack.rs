//! Settling one delivery with the server: the ack reply subject and the acker behind
//! [`crate::Delivery::ack`] / [`crate::Delivery::nak`].
//!
//! JetStream sends each message with a reply subject that encodes where it came from and how
//! often it was delivered:
//!
//! ```text
//! $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<timestamp>.<pending>
//! $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<timestamp>.<pending>.<token>
//! ```
//!
//! (the second form from servers 2.9 on, when a domain or account hash is in play). The
//! delivery count and the stream sequence tell the pull loop whether a message is a
//! redelivery. Settling is a plain publish
//! to that subject: `+ACK`, `-NAK` (with `{"delay": <nanoseconds>}` to come back later) or
//! `+TERM` for a message that can never be handled. Acks are not confirmed by the server (no
//! double ack): a lost ack only means the message is delivered again, which at-least-once
//! allows, and a confirmed ack would cost a round trip per message.
//!
//! The root of a delivery's settlement (see `settle.rs`): one [`RootAck`] per message the
//! node's consumer handed out. The bus and the hub above it hand the message to their
//! subscribers as copies, and the root is settled once the copies decide: acknowledged when
//! all were, declined at the first nak. The root records itself in the node's [`Ledger`] while
//! it is unsettled, so the pull loop knows how much it may still ask for and `close` can decline
//! what is left. A root that is dropped unsettled (every copy's subscription ended first) stays
//! pending on the server and comes back after `ack_wait`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::OnceCell;

use super::api;
use super::ledger::Ledger;
use super::link_error;
use crate::backend::nats::link::{LinkPublish, NatsLink};
use crate::bus::BusError;
use crate::settle::Settle;

/// What an ack subject says about its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AckInfo {
    /// How often the server has delivered the message, this time included.
    pub(super) delivered: u64,
    /// The message's sequence in the stream.
    pub(super) stream_sequence: u64,
    /// When the stream stored the message, Unix nanoseconds.
    pub(super) timestamp: u64,
}

/// Reads an ack subject; `None` when `subject` is not one.
pub(super) fn parse_ack_subject(subject: &str) -> Option<AckInfo> {
    let tokens: Vec<&str> = subject.split('.').collect();
    if tokens.len() < 9 || tokens[0] != "$JS" || tokens[1] != "ACK" {
        return None;
    }
    // Where `<stream>` sits: after `$JS.ACK` in the short form, after domain and account hash
    // in the long one.
    let stream = match tokens.len() {
        9 => 2,
        n if n >= 11 => 4,
        _ => return None,
    };
    let numbers = tokens.get(stream + 2..stream + 7)?;
    let mut parsed = [0u64; 5];
    for (slot, token) in parsed.iter_mut().zip(numbers) {
        *slot = token.parse().ok()?;
    }
    Some(AckInfo {
        delivered: parsed[0],
        stream_sequence: parsed[1],
        timestamp: parsed[3],
    })
}

/// Settles one message with the server, once, for every local copy of it.
#[derive(Debug)]
pub(crate) struct RootAck {
    link: Arc<dyn NatsLink>,
    ledger: Arc<Ledger>,
    sequence: u64,
    subject: String,
    settled: OnceCell<()>,
    /// Set when every copy was abandoned: the server is left to deliver it again.
    abandoned: AtomicBool,
}

impl RootAck {
    /// The root of the message delivered with ack subject `subject`, recorded as live.
    pub(super) fn track(
        link: Arc<dyn NatsLink>,
        ledger: Arc<Ledger>,
        sequence: u64,
        subject: String,
    ) -> Arc<Self> {
        let root = Arc::new(RootAck {
            link,
            ledger,
            sequence,
            subject,
            settled: OnceCell::new(),
            abandoned: AtomicBool::new(false),
        });
        root.ledger.live(sequence, &root.subject, &root);
        root
    }

    /// The ack subject.
    pub(super) fn subject(&self) -> &str {
        &self.subject
    }

    /// Tells the server never to deliver the message again (it cannot be decoded).
    pub(super) async fn terminate(&self) -> Result<(), BusError> {
        self.settle(Bytes::from_static(b"+TERM")).await
    }

    async fn settle(&self, payload: Bytes) -> Result<(), BusError> {
        self.settled
            .get_or_try_init(|| async {
                self.link
                    .publish(LinkPublish {
                        subject: self.subject.clone(),
                        reply: None,
                        headers: Vec::new(),
                        payload,
                    })
                    .await
                    .map_err(link_error)?;
                self.ledger.settled(self.sequence, &self.subject);
                Ok(())
            })
            .await
            .map(drop)
    }
}

/// The body of a nak: plain, or with the delay after which the server redelivers.
fn nak_body(delay: Option<Duration>) -> Bytes {
    match delay {
        Some(delay) if !delay.is_zero() => {
            Bytes::from(format!("-NAK {{\"delay\":{}}}", api::nanos(delay)))
        }
        _ => Bytes::from_static(b"-NAK"),
    }
}

#[async_trait]
impl Settle for RootAck {
    async fn ack(&self) -> Result<(), BusError> {
        self.settle(Bytes::from_static(b"+ACK")).await
    }

    async fn nak(&self, delay: Option<Duration>) -> Result<(), BusError> {
        self.settle(nak_body(delay)).await
    }

    fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
        if self.settled.get().is_none() {
            self.ledger.abandoned(self.sequence, &self.subject);
        }
    }
}

impl Drop for RootAck {
    fn drop(&mut self) {
        if self.settled.get().is_none() && !self.abandoned.load(Ordering::Acquire) {
            // Dropped on a path that neither settled nor abandoned it (a pull loop stopped
            // mid-delivery): leave it to the server's ack wait, or to `close`.
            self.ledger.abandoned(self.sequence, &self.subject);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ack_subject_forms_are_read() {
        let info = |delivered, stream_sequence| {
            Some(AckInfo {
                delivered,
                stream_sequence,
                timestamp: 1_700_000_000_000_000_000,
            })
        };
        assert_eq!(
            parse_ack_subject("$JS.ACK.HUBBUS.hubbus_a_b.1.7.7.1700000000000000000.0"),
            info(1, 7)
        );
        assert_eq!(
            parse_ack_subject("$JS.ACK.HUBBUS.c.3.8.9.1700000000000000000.12"),
            info(3, 8)
        );
        assert_eq!(
            parse_ack_subject("$JS.ACK._.ACCHASH.HUBBUS.c.2.7.9.1700000000000000000.0.tok"),
            info(2, 7)
        );
        assert_eq!(
            parse_ack_subject("$JS.ACK.dom.ACCHASH.HUBBUS.c.4.5.9.1700000000000000000.0"),
            info(4, 5)
        );
    }

    #[test]
    fn anything_else_is_not_an_ack_subject() {
        for subject in [
            "",
            "_INBOX.abc",
            "$JS.ACK.S.c.1.2.3.4",
            "$JS.ACK.S.c.x.2.3.4.5",
            "$JS.ACK.a.b.S.c.1.2.3.4",
            "$JS.NAK.S.c.1.2.3.4.5",
        ] {
            assert_eq!(parse_ack_subject(subject), None, "{subject}");
        }
    }

    #[test]
    fn a_nak_carries_its_delay_in_nanoseconds() {
        assert_eq!(nak_body(None), Bytes::from_static(b"-NAK"));
        assert_eq!(nak_body(Some(Duration::ZERO)), Bytes::from_static(b"-NAK"));
        assert_eq!(
            nak_body(Some(Duration::from_millis(250))),
            Bytes::from_static(b"-NAK {\"delay\":250000000}")
        );
    }
}
