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
        /// Simulated time of the return.
        at: Duration,
        /// Publishing node.
        node: usize,
        /// Its sequence number.
        seq: u32,
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
        /// The publisher, as the payload says.
        origin: usize,
        /// The publisher's sequence number.
        seq: u32,
        /// The message id.
        id: String,
        /// Whether the bus flagged it as a redelivery.
        redelivered: bool,
    },
    /// A node's `health()` changed between connected and not.
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
                seq,
                outcome,
            } => match outcome {
                Ok(id) => write!(f, "{at:?} node-{node} published {seq} as {id}"),
                Err(error) => write!(f, "{at:?} node-{node} failed to publish {seq}: {error}"),
            },
            Event::Delivered {
                at,
                node,
                subscriber,
                origin,
                seq,
                id,
                redelivered,
            } => {
                let again = if *redelivered { " redelivered" } else { "" };
                write!(
                    f,
                    "{at:?} node-{node}/{subscriber} received {origin}:{seq} ({id}){again}"
                )
            }
            Event::Health {
                at,
                node,
                connected: true,
                ..
            } => write!(f, "{at:?} node-{node} connected"),
            Event::Health {
                at, node, reason, ..
            } => write!(f, "{at:?} node-{node} down: {reason}"),
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
