//! The faults a scenario injects, and the steps the harness takes between simulation steps to
//! inject and heal them.

use std::fmt;
use std::time::Duration;

/// turmoil's default step.
pub(super) const TICK: Duration = Duration::from_millis(1);

/// The one fault a scenario injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// No fault: the baseline.
    None,
    /// The broker restarts at once (turmoil `bounce`), losing every connection and every
    /// in-memory subscription; what it keeps on disk (JetStream) survives.
    BounceBroker {
        /// When.
        at: Duration,
    },
    /// The broker crashes and comes back `down_for` later.
    CrashBroker {
        /// When it crashes.
        at: Duration,
        /// How long it stays down.
        down_for: Duration,
    },
    /// One node is cut off from the broker, then the link is repaired.
    PartitionNode {
        /// Which node (0-based).
        node: usize,
        /// When the partition starts.
        at: Duration,
        /// How long it lasts.
        heal_after: Duration,
    },
    /// The broker keeps connections open but stops answering, then resumes.
    WedgeBroker {
        /// When it goes silent.
        at: Duration,
        /// For how long.
        silent_for: Duration,
    },
    /// The sentinel fails the master over from `redis-a` to `redis-b`; `redis-a` becomes a
    /// replica. Only on [`super::Backend::RedisSentinel`].
    SentinelFailover {
        /// When.
        at: Duration,
    },
}

impl Fault {
    /// When the fault starts and which of `nodes` it cuts off from their broker.
    pub fn touches(&self, nodes: usize) -> Option<(Duration, Vec<usize>)> {
        match *self {
            Fault::None => None,
            Fault::PartitionNode { node, at, .. } => Some((at, vec![node])),
            Fault::BounceBroker { at }
            | Fault::CrashBroker { at, .. }
            | Fault::WedgeBroker { at, .. }
            | Fault::SentinelFailover { at } => Some((at, (0..nodes).collect())),
        }
    }

    /// When the fault is over (the broker is back, the link repaired), if there is one.
    pub fn healed_at(&self) -> Option<Duration> {
        match *self {
            Fault::None => None,
            Fault::BounceBroker { at } | Fault::SentinelFailover { at } => Some(at),
            Fault::CrashBroker { at, down_for } => Some(at + down_for),
            Fault::PartitionNode { at, heal_after, .. } => Some(at + heal_after),
            Fault::WedgeBroker { at, silent_for } => Some(at + silent_for),
        }
    }

    /// A short name for traces and test names.
    pub fn name(&self) -> &'static str {
        match self {
            Fault::None => "no fault",
            Fault::BounceBroker { .. } => "broker bounce",
            Fault::CrashBroker { .. } => "broker crash",
            Fault::PartitionNode { .. } => "node partition",
            Fault::WedgeBroker { .. } => "silent broker",
            Fault::SentinelFailover { .. } => "sentinel failover",
        }
    }

    /// The steps that inject and heal the fault, in time order.
    pub(super) fn schedule(&self) -> Vec<(Duration, Action)> {
        match *self {
            Fault::None => vec![],
            // A process crash resets its connections first (see the fakes' `disconnect_all`);
            // one tick later the host's software is gone.
            Fault::BounceBroker { at } => {
                vec![(at, Action::Disconnect), (at + TICK, Action::Bounce)]
            }
            Fault::CrashBroker { at, down_for } => vec![
                (at, Action::Disconnect),
                (at + TICK, Action::Crash),
                (at + down_for, Action::Bounce),
            ],
            Fault::PartitionNode {
                node,
                at,
                heal_after,
            } => vec![
                (at, Action::Partition(node)),
                (at + heal_after, Action::Repair(node)),
            ],
            Fault::WedgeBroker { at, silent_for } => vec![
                (at, Action::Wedge(true)),
                (at + silent_for, Action::Wedge(false)),
            ],
            Fault::SentinelFailover { at } => vec![(at, Action::Failover)],
        }
    }
}

/// A fault step the harness performs between simulation steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    /// The broker resets every connection (the kernel closing a dying process's sockets).
    Disconnect,
    /// turmoil restarts the broker's host.
    Bounce,
    /// turmoil takes the broker's host down.
    Crash,
    /// The node's link to the broker goes.
    Partition(usize),
    /// The node's link to the broker comes back.
    Repair(usize),
    /// The broker stops (`true`) or resumes (`false`) answering.
    Wedge(bool),
    /// The sentinel promotes the replica.
    Failover,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Disconnect => write!(f, "broker resets its connections"),
            Action::Bounce => write!(f, "broker restarts"),
            Action::Crash => write!(f, "broker crashes"),
            Action::Partition(node) => write!(f, "node-{node} cut off from the broker"),
            Action::Repair(node) => write!(f, "node-{node} link repaired"),
            Action::Wedge(true) => write!(f, "broker goes silent"),
            Action::Wedge(false) => write!(f, "broker answers again"),
            Action::Failover => write!(f, "sentinel fails over to redis-b"),
        }
    }
}
