//! One live process per node id: how a NATS bus notices that another process runs under its
//! node id.
//!
//! Two processes with one node id would share durable state (on JetStream, one consumer, each
//! getting half of the messages) and drop each other's publishes as their own echo. So every
//! bus answers on `<subject_prefix>.$node.<node token>` (`$` keeps it outside the bus's channel
//! space, the prefix within the permissions a bus needs anyway) with a random instance number of
//! its own:
//!
//! - once connected, a bus asks on the subject and listens for [`PROBE_WINDOW`]; an answer means
//!   another live process holds the id: the newcomer reports it in its health and stays quiet
//!   (JetStream asks already in `start`, with a request, and refuses to start);
//! - two processes that start at the same moment both ask within each other's window: the one
//!   whose window closes first holds the id and announces itself, the other hears that and
//!   reports; the holder heard the other's question while it was still asking itself, so it
//!   knows the other is no older holder but a twin, and reports as well;
//! - while it runs, it announces itself there every [`HEARTBEAT`], so two processes that
//!   started at the same moment without hearing each other's questions (both asked before
//!   either listened) see each other's announcement within that time and both report it.
//!
//! The instance number comes from the bus's seeded generator, so a simulation replays it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::link::{LinkError, LinkPublish, NatsLink};
use super::{node_token, until};
use crate::backoff::Backoff;
use crate::id::{IdGenerator, NodeId};

/// How often a bus announces itself on its node's subject.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(5);

/// How long a newcomer listens for a holder's answer before it holds the id itself.
pub(crate) const PROBE_WINDOW: Duration = Duration::from_secs(1);

/// A bus's claim to its node id.
#[derive(Debug)]
pub(crate) struct Claim {
    link: Arc<dyn NatsLink>,
    node: NodeId,
    subject: String,
    instance: u64,
    ids: IdGenerator,
}

impl Claim {
    /// The claim of this process to `node` under `subject_prefix`, with a fresh instance number
    /// from `ids`.
    pub(crate) fn new(
        link: Arc<dyn NatsLink>,
        subject_prefix: &str,
        node: &NodeId,
        ids: &IdGenerator,
    ) -> Self {
        Claim {
            link,
            node: node.clone(),
            subject: format!("{subject_prefix}.$node.{}", node_token(node)),
            instance: ids.random_u64(),
            ids: ids.clone(),
        }
    }

    /// Asks whether another live process holds the node id; `Err` with a description of the
    /// holder when one answers. Without a connection, or when nobody answers within `timeout`,
    /// the claim is taken (the heartbeats tell later if that was wrong).
    pub(crate) async fn probe(&self, timeout: Duration) -> Result<(), String> {
        if !self.link.is_connected() {
            return Ok(());
        }
        let probe = LinkPublish {
            subject: self.subject.clone(),
            reply: None,
            headers: Vec::new(),
            payload: Bytes::from(format!("probe {:016x}", self.instance)),
        };
        match self.link.request(probe, timeout).await {
            Ok(reply) => match instance_of(&reply.payload) {
                Some(("here", other)) if other != self.instance => {
                    Err(format!("instance {other:016x}"))
                }
                _ => Ok(()),
            },
            Err(LinkError::NoResponders(_) | LinkError::Timeout(_)) => Ok(()),
            Err(error) => {
                tracing::debug!(%error, "asking whether the node id is taken failed");
                Ok(())
            }
        }
    }

    fn conflict(&self, other: &str) -> String {
        format!(
            "node id {} is also used by another live process ({other}; this is instance \
             {:016x}): they share durable state and drop each other's messages as their own \
             echo; give every process a node id of its own",
            self.node, self.instance
        )
    }
}

/// Reads `<word> <16 hex digits>`.
fn instance_of(payload: &[u8]) -> Option<(&str, u64)> {
    let text = std::str::from_utf8(payload).ok()?;
    let (word, number) = text.split_once(' ')?;
    Some((word, u64::from_str_radix(number, 16).ok()?))
}

/// Where a claim stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Asked who holds the id; listening for an answer until then.
    Probing(tokio::time::Instant),
    /// Holds the id: answers questions and announces itself.
    Holding,
}

impl Claim {
    /// Says `word` and this claim's instance number on the claim subject.
    async fn say(&self, word: &str) {
        let message = LinkPublish {
            subject: self.subject.clone(),
            reply: None,
            headers: Vec::new(),
            payload: Bytes::from(format!("{word} {:016x}", self.instance)),
        };
        if let Err(error) = self.link.publish(message).await {
            tracing::debug!(%error, word, "a node id claim message was not sent");
        }
    }
}

/// Holds the claim until `cancel`, calling `on_conflict` once if another live process uses the
/// node id.
///
/// Once connected it listens on the claim subject and asks there (`probe`); a holder answers
/// (`here`). Hearing a `here` within [`PROBE_WINDOW`] makes this process the newcomer: it
/// reports the conflict and stays quiet, so the holder is not disturbed. Otherwise it holds the
/// id: it answers every question and announces itself every [`HEARTBEAT`], and hearing another
/// instance's announcement then (two that started together) is a conflict for both. Everything
/// travels on the claim subject alone, within the permissions the bus needs for its channels.
pub(crate) async fn hold(
    claim: Claim,
    cancel: CancellationToken,
    on_conflict: impl Fn(String) + Send + 'static,
) {
    let mut events = claim.link.events();
    while !claim.link.is_connected() {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            event = events.next() => if event.is_none() {
                return;
            },
        }
    }
    drop(events);
    let backoff = Backoff::default();
    let mut failures = 0;
    let mut phase: Option<Phase> = None;
    let mut reported = false;
    // Another instance that asked while this one was still asking: a twin that started at the
    // same moment, which will hear this one's first announcement and fall silent.
    let mut twin: Option<u64> = None;
    loop {
        let subscribed = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            subscribed = claim.link.subscribe(&claim.subject) => subscribed,
        };
        let mut messages = match subscribed {
            Ok(messages) => messages,
            Err(error) => {
                tracing::debug!(%error, "listening on the node id subject failed");
                let delay = backoff.delay(failures, &claim.ids);
                failures = failures.saturating_add(1);
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        failures = 0;
        if phase.is_none() {
            claim.say("probe").await;
            phase = Some(Phase::Probing(tokio::time::Instant::now() + PROBE_WINDOW));
        }
        let mut beats = tokio::time::interval(HEARTBEAT);
        beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let probing_until = match phase {
                Some(Phase::Probing(until)) => Some(until),
                _ => None,
            };
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                message = messages.next() => {
                    let Some(message) = message else { break };
                    match (instance_of(&message.payload), phase) {
                        (Some(("here", other)), Some(Phase::Probing(_))) if other != claim.instance => {
                            // Someone held the id before this process asked.
                            on_conflict(claim.conflict(&format!("instance {other:016x}")));
                            return;
                        }
                        (Some(("here", other)), _) if other != claim.instance && !reported => {
                            reported = true;
                            on_conflict(claim.conflict(&format!("instance {other:016x}")));
                        }
                        (Some(("probe", other)), Some(Phase::Probing(_))) if other != claim.instance => {
                            twin = Some(other);
                        }
                        (Some(("probe", other)), Some(Phase::Holding)) if other != claim.instance => {
                            match message.reply {
                                // A request (JetStream asks so at start): answer the asker.
                                Some(reply) => {
                                    let answer = LinkPublish {
                                        subject: reply,
                                        reply: None,
                                        headers: Vec::new(),
                                        payload: Bytes::from(format!("here {:016x}", claim.instance)),
                                    };
                                    if let Err(error) = claim.link.publish(answer).await {
                                        tracing::debug!(%error, "answering a node id probe failed");
                                    }
                                }
                                None => claim.say("here").await,
                            }
                        }
                        _ => {}
                    }
                }
                _ = until(probing_until) => {
                    phase = Some(Phase::Holding);
                    beats.reset_immediately();
                    if let Some(other) = twin.take().filter(|_| !reported) {
                        reported = true;
                        on_conflict(claim.conflict(&format!("instance {other:016x}")));
                    }
                }
                _ = beats.tick(), if phase == Some(Phase::Holding) => claim.say("here").await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_are_read_strictly() {
        assert_eq!(instance_of(b"here 00000000000000ff"), Some(("here", 255)));
        assert_eq!(instance_of(b"probe 1"), Some(("probe", 1)));
        assert_eq!(instance_of(b"here"), None);
        assert_eq!(instance_of(b"here zz"), None);
        assert_eq!(instance_of(&[0xff, b' ', b'1']), None);
    }
}
