//! What a run records: one [`Event`] per thing that happened, with its simulated time, and
//! the [`Run`] that holds them.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One thing that happened, with the simulated time it happened at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A node called publish; `outcome` says whether it returned `Ok`.
    Published {
        /// Simulated time of the call.
        started: Duration,
        /// Simulated time of the return.
        at: Duration,
        /// Publishing node.
        node: usize,
        /// Which of the node's publishers.
        publisher: usize,
        /// The channel.
        channel: usize,
        /// The publisher's sequence number.
        seq: u32,
        /// 0 for the first try, then the retries (same message id).
        attempt: u32,
        /// `Ok` with the message id, or the error's text.
        outcome: Result<String, String>,
    },
    /// A local subscriber of a node's hub received a message.
    Delivered {
        /// Simulated time.
        at: Duration,
        /// Receiving node.
        node: usize,
        /// Which of the node's local subscribers.
        subscriber: usize,
        /// The channel it came on.
        channel: usize,
        /// The publishing node, as the payload says.
        origin: usize,
        /// The publisher on that node.
        publisher: usize,
        /// The publisher's sequence number.
        seq: u32,
        /// The message id.
        id: String,
        /// Whether the bus flagged it as a redelivery.
        redelivered: bool,
    },
    /// A local subscriber's `subscribe` returned `Ok`.
    Subscribed {
        /// Simulated time.
        at: Duration,
        /// Its node.
        node: usize,
        /// Which of the node's local subscribers.
        subscriber: usize,
    },
    /// A local subscriber stopped: it left, its node stopped, or the bus ended it.
    Unsubscribed {
        /// Simulated time.
        at: Duration,
        /// Its node.
        node: usize,
        /// Which of the node's local subscribers.
        subscriber: usize,
        /// Deliveries its subscription dropped (`Subscription::dropped`).
        dropped: u64,
        /// Whether the bus cut it off as lagged.
        lagged: bool,
        /// Whether the bus ended it: it did not leave and its node did not stop.
        ended: bool,
        /// The messages still queued for it when it left, unread: (publishing node,
        /// publisher, sequence number).
        unread: Vec<(usize, usize, u32)>,
    },
    /// A local subscriber's `subscribe` was refused by the broker (`BusError::Refused`).
    Refused {
        /// Simulated time.
        at: Duration,
        /// Its node.
        node: usize,
        /// Which of the node's local subscribers.
        subscriber: usize,
        /// What the bus said.
        reason: String,
    },
    /// What a node process's metrics counted as dropped (`<ns>_bus_dropped_total`, every
    /// backend label and reason), read when its subscribers were done.
    DropsCounted {
        /// Simulated time.
        at: Duration,
        /// The node.
        node: usize,
        /// The count.
        dropped: u64,
    },
    /// A node's `health()` changed between connected and not (and its state when it started).
    Health {
        /// Simulated time it was seen.
        at: Duration,
        /// The node.
        node: usize,
        /// Whether it is connected now.
        connected: bool,
        /// The reason given when not connected.
        reason: String,
    },
    /// A node process stopped (closed its hub and bus) to start again later.
    NodeStopped {
        /// Simulated time.
        at: Duration,
        /// The node.
        node: usize,
    },
    /// A stopped node process started again, with its node id.
    NodeStarted {
        /// Simulated time.
        at: Duration,
        /// The node.
        node: usize,
    },
    /// The harness injected or healed a fault.
    Fault {
        /// Simulated time.
        at: Duration,
        /// What.
        what: String,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Published {
                at,
                node,
                publisher,
                channel,
                seq,
                attempt,
                outcome,
                ..
            } => {
                let again = if *attempt > 0 {
                    format!(" (retry {attempt})")
                } else {
                    String::new()
                };
                match outcome {
                    Ok(id) => write!(
                        f,
                        "{at:?} node-{node} published {node}:{publisher}:{seq} to room{channel} \
                         as {id}{again}"
                    ),
                    Err(error) => write!(
                        f,
                        "{at:?} node-{node} failed to publish {node}:{publisher}:{seq}{again}: \
                         {error}"
                    ),
                }
            }
            Event::Delivered {
                at,
                node,
                subscriber,
                channel,
                origin,
                publisher,
                seq,
                id,
                redelivered,
            } => {
                let again = if *redelivered { " redelivered" } else { "" };
                write!(
                    f,
                    "{at:?} node-{node}/{subscriber} received {origin}:{publisher}:{seq} on \
                     room{channel} ({id}){again}"
                )
            }
            Event::Subscribed {
                at,
                node,
                subscriber,
            } => write!(f, "{at:?} node-{node}/{subscriber} subscribed"),
            Event::Unsubscribed {
                at,
                node,
                subscriber,
                dropped,
                lagged,
                ended,
                unread,
            } => {
                let how = match (*lagged, *ended) {
                    (true, _) => ", cut off as lagged",
                    (false, true) => ", ended by the bus",
                    (false, false) => "",
                };
                let unread = unread.len();
                write!(
                    f,
                    "{at:?} node-{node}/{subscriber} unsubscribed ({dropped} dropped, {unread} \
                     left unread{how})"
                )
            }
            Event::Refused {
                at,
                node,
                subscriber,
                reason,
            } => write!(f, "{at:?} node-{node}/{subscriber} was refused: {reason}"),
            Event::Health {
                at,
                node,
                connected: true,
                ..
            } => write!(f, "{at:?} node-{node} connected"),
            Event::Health {
                at, node, reason, ..
            } => write!(f, "{at:?} node-{node} down: {reason}"),
            Event::DropsCounted { at, node, dropped } => {
                write!(f, "{at:?} node-{node} counted {dropped} dropped")
            }
            Event::NodeStopped { at, node } => write!(f, "{at:?} node-{node} stopped"),
            Event::NodeStarted { at, node } => write!(f, "{at:?} node-{node} started again"),
            Event::Fault { at, what } => write!(f, "{at:?} fault: {what}"),
        }
    }
}

/// The record of one run.
#[derive(Debug, Clone)]
pub struct Run {
    /// The seed it ran with.
    pub seed: u64,
    /// Everything that happened, in the order it happened.
    pub events: Vec<Event>,
}

impl Run {
    /// The trace: one line per event.
    pub fn trace(&self) -> Vec<String> {
        self.events.iter().map(ToString::to_string).collect()
    }

    /// The last `lines` lines of the trace, for failure messages.
    pub fn tail(&self, lines: usize) -> String {
        let trace = self.trace();
        trace[trace.len().saturating_sub(lines)..].join("\n")
    }
}

/// Where the nodes and the harness record events; shared by every task of a run.
#[derive(Debug, Clone, Default)]
pub(super) struct Log(Arc<Mutex<Vec<Event>>>);

impl Log {
    pub(super) fn record(&self, event: Event) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(event);
    }

    pub(super) fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Simulated time since the start of the run.
pub(super) fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}
