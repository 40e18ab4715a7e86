//! The faults a scenario injects, and the steps the harness takes between simulation steps to
//! inject and heal them.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// turmoil's default step.
pub(super) const TICK: Duration = Duration::from_millis(1);

/// How long a cut or a silence must last for every bus to be sure to notice it: Redis pings
/// every second and gives up after a second without an answer; a NATS link gives up after two
/// unanswered pings a second apart.
pub const NOTICE_AFTER: Duration = Duration::from_secs(4);

/// The one fault a scenario injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    /// What the broker sends to one node is lost (the node's own writes still arrive), then
    /// the link is repaired.
    OneWay {
        /// Which node (0-based).
        node: usize,
        /// When it starts.
        at: Duration,
        /// How long it lasts.
        heal_after: Duration,
    },
    /// Every link gets slow: messages take up to `latency`, for `lasting`.
    LatencySpike {
        /// When it starts.
        at: Duration,
        /// How long it lasts.
        lasting: Duration,
        /// The most a message takes meanwhile.
        latency: Duration,
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
    /// Redis Cluster: the master `redis-a` crashes and the spare `redis-d` takes over its
    /// slots (a replica promoted); `redis-a` stays down. Only on
    /// [`super::Backend::RedisSharded`].
    ShardFailover {
        /// When.
        at: Duration,
    },
    /// Redis Cluster: the slot of every workload channel moves to another master at once (a
    /// finished `CLUSTER SETSLOT … NODE`); the old owners end their shard subscriptions with
    /// `sunsubscribe` and redirect publishes with `-MOVED`. Only on
    /// [`super::Backend::RedisSharded`].
    SlotMigration {
        /// When.
        at: Duration,
    },
    /// JetStream: the stream is deleted under the nodes (an operator's mistake). What it held
    /// and was not delivered yet is lost, as the spec says; the bus creates it again.
    VanishStream {
        /// When.
        at: Duration,
    },
    /// JetStream: every node's durable consumer is deleted; the bus creates each again where
    /// it was, so nothing is lost.
    VanishConsumers {
        /// When.
        at: Duration,
    },
    /// JetStream: the server crashes and comes back `down_for` later without its store (a lost
    /// disk). What was stored and not delivered yet is lost, as the spec says.
    DiskLoss {
        /// When it crashes.
        at: Duration,
        /// How long it stays down.
        down_for: Duration,
    },
    /// JetStream: the server stores every publish at once but confirms it `delay` late, for
    /// `lasting`; publishes time out although their messages are stored.
    SlowAcks {
        /// When acks turn slow.
        at: Duration,
        /// How late each PubAck comes.
        delay: Duration,
        /// For how long.
        lasting: Duration,
    },
}

impl Fault {
    /// When the fault starts and which of `nodes` it cuts off from their broker.
    pub fn touches(&self, nodes: usize) -> Option<(Duration, Vec<usize>)> {
        match *self {
            Fault::None => None,
            Fault::PartitionNode { node, at, .. } | Fault::OneWay { node, at, .. } => {
                Some((at, vec![node]))
            }
            Fault::LatencySpike { at, .. } => Some((at, (0..nodes).collect())),
            Fault::BounceBroker { at }
            | Fault::CrashBroker { at, .. }
            | Fault::WedgeBroker { at, .. }
            | Fault::SentinelFailover { at }
            | Fault::ShardFailover { at }
            | Fault::SlotMigration { at }
            | Fault::DiskLoss { at, .. } => Some((at, (0..nodes).collect())),
            // The connections stay up: no node is cut off.
            Fault::VanishStream { at }
            | Fault::VanishConsumers { at }
            | Fault::SlowAcks { at, .. } => Some((at, Vec::new())),
        }
    }

    /// Whether every node it touches must report it in its health. A broker that restarts or
    /// fails over resets connections, which every bus notices; a cut or a silence must last
    /// longer than the slowest liveness check needs ([`NOTICE_AFTER`]); slow links and the
    /// JetStream store's faults need not be noticed at all.
    pub fn must_be_noticed(&self) -> bool {
        match *self {
            Fault::BounceBroker { .. }
            | Fault::CrashBroker { .. }
            | Fault::SentinelFailover { .. }
            | Fault::ShardFailover { .. }
            | Fault::DiskLoss { .. } => true,
            Fault::PartitionNode { heal_after, .. } | Fault::OneWay { heal_after, .. } => {
                heal_after >= NOTICE_AFTER
            }
            Fault::WedgeBroker { silent_for, .. } => silent_for >= NOTICE_AFTER,
            // Only the nodes with a channel on a moved slot notice.
            Fault::None
            | Fault::LatencySpike { .. }
            | Fault::SlotMigration { .. }
            | Fault::VanishStream { .. }
            | Fault::VanishConsumers { .. }
            | Fault::SlowAcks { .. } => false,
        }
    }

    /// Whether it hits the broker itself (restart, silence, failover, store); at most one such
    /// fault is active at a time in a run.
    pub fn hits_broker(&self) -> bool {
        !matches!(
            self,
            Fault::None
                | Fault::PartitionNode { .. }
                | Fault::OneWay { .. }
                | Fault::LatencySpike { .. }
        )
    }

    /// Faults of the JetStream store, which only the JetStream backend has.
    pub fn jetstream_only(&self) -> bool {
        matches!(
            self,
            Fault::VanishStream { .. }
                | Fault::VanishConsumers { .. }
                | Fault::DiskLoss { .. }
                | Fault::SlowAcks { .. }
        )
    }

    /// When the fault deletes the nodes' JetStream consumers, if it does: by hand, or with the
    /// stream or the whole store.
    pub fn destroys_consumers(&self) -> Option<Duration> {
        match *self {
            Fault::VanishConsumers { at } => Some(at),
            _ => self.destroys_store(),
        }
    }

    /// When the fault destroys what the broker stored, if it does: messages confirmed before
    /// then and not delivered yet are lost by design (see `docs/bus_spec.md`).
    pub fn destroys_store(&self) -> Option<Duration> {
        match *self {
            Fault::VanishStream { at } | Fault::DiskLoss { at, .. } => Some(at),
            _ => None,
        }
    }

    /// When the fault is over (the broker is back, the link repaired), if there is one.
    pub fn healed_at(&self) -> Option<Duration> {
        match *self {
            Fault::None => None,
            Fault::BounceBroker { at }
            | Fault::SentinelFailover { at }
            | Fault::ShardFailover { at }
            | Fault::SlotMigration { at }
            | Fault::VanishStream { at }
            | Fault::VanishConsumers { at } => Some(at),
            Fault::CrashBroker { at, down_for } | Fault::DiskLoss { at, down_for } => {
                Some(at + down_for)
            }
            Fault::SlowAcks { at, lasting, .. } => Some(at + lasting),
            Fault::PartitionNode { at, heal_after, .. } | Fault::OneWay { at, heal_after, .. } => {
                Some(at + heal_after)
            }
            Fault::LatencySpike { at, lasting, .. } => Some(at + lasting),
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
            Fault::OneWay { .. } => "one-way loss",
            Fault::LatencySpike { .. } => "latency spike",
            Fault::WedgeBroker { .. } => "silent broker",
            Fault::SentinelFailover { .. } => "sentinel failover",
            Fault::ShardFailover { .. } => "shard failover",
            Fault::SlotMigration { .. } => "slot migration",
            Fault::VanishStream { .. } => "stream deleted",
            Fault::VanishConsumers { .. } => "consumers deleted",
            Fault::DiskLoss { .. } => "disk loss",
            Fault::SlowAcks { .. } => "slow acks",
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
            Fault::OneWay {
                node,
                at,
                heal_after,
            } => vec![
                (at, Action::OneWay(node, true)),
                (at + heal_after, Action::OneWay(node, false)),
            ],
            Fault::LatencySpike {
                at,
                lasting,
                latency,
            } => vec![
                (at, Action::Latency(Some(latency))),
                (at + lasting, Action::Latency(None)),
            ],
            Fault::WedgeBroker { at, silent_for } => vec![
                (at, Action::Wedge(true)),
                (at + silent_for, Action::Wedge(false)),
            ],
            Fault::SentinelFailover { at } => vec![(at, Action::Failover)],
            // The master dies (its connections reset, then its host is gone); its slots go
            // to the spare.
            Fault::ShardFailover { at } => vec![
                (at, Action::Disconnect),
                (at + TICK, Action::Crash),
                (at + 2 * TICK, Action::PromoteShard),
            ],
            Fault::SlotMigration { at } => vec![(at, Action::MigrateSlots)],
            Fault::VanishStream { at } => vec![(at, Action::VanishStream)],
            Fault::VanishConsumers { at } => vec![(at, Action::VanishConsumers)],
            Fault::DiskLoss { at, down_for } => vec![
                (at, Action::Disconnect),
                (at + TICK, Action::Crash),
                (at + 2 * TICK, Action::WipeStore),
                (at + down_for, Action::Bounce),
            ],
            Fault::SlowAcks { at, delay, lasting } => vec![
                (at, Action::SlowAcks(Some(delay))),
                (at + lasting, Action::SlowAcks(None)),
            ],
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
    /// What the broker sends to the node is lost (`true`) or arrives again (`false`).
    OneWay(usize, bool),
    /// Every link's latency goes up to this (`Some`) or back to the backend's (`None`).
    Latency(Option<Duration>),
    /// The broker stops (`true`) or resumes (`false`) answering.
    Wedge(bool),
    /// The sentinel promotes the replica.
    Failover,
    /// The cluster's spare takes over the slots of the failed master.
    PromoteShard,
    /// The slots of the workload's channels move to other masters.
    MigrateSlots,
    /// The JetStream stream is deleted.
    VanishStream,
    /// Every consumer of the JetStream stream is deleted.
    VanishConsumers,
    /// The JetStream store is lost.
    WipeStore,
    /// PubAcks come this late (`Some`), or at once again (`None`).
    SlowAcks(Option<Duration>),
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Disconnect => write!(f, "broker resets its connections"),
            Action::Bounce => write!(f, "broker restarts"),
            Action::Crash => write!(f, "broker crashes"),
            Action::Partition(node) => write!(f, "node-{node} cut off from the broker"),
            Action::Repair(node) => write!(f, "node-{node} link repaired"),
            Action::OneWay(node, true) => write!(f, "what the broker sends node-{node} is lost"),
            Action::OneWay(node, false) => write!(f, "node-{node} hears the broker again"),
            Action::Latency(Some(latency)) => write!(f, "links slow down to {latency:?}"),
            Action::Latency(None) => write!(f, "links are fast again"),
            Action::Wedge(true) => write!(f, "broker goes silent"),
            Action::Wedge(false) => write!(f, "broker answers again"),
            Action::Failover => write!(f, "sentinel fails over to redis-b"),
            Action::PromoteShard => write!(f, "redis-d takes over the slots of redis-a"),
            Action::MigrateSlots => write!(f, "the channels' slots move to other masters"),
            Action::VanishStream => write!(f, "the stream is deleted"),
            Action::VanishConsumers => write!(f, "every consumer is deleted"),
            Action::WipeStore => write!(f, "the broker's store is lost"),
            Action::SlowAcks(Some(delay)) => write!(f, "publish acks come {delay:?} late"),
            Action::SlowAcks(None) => write!(f, "publish acks come at once again"),
        }
    }
}
