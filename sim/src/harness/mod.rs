//! Runs several hub nodes on one backend against fake brokers in one turmoil simulation,
//! injects one fault on a schedule, records what was published and delivered, and checks the
//! invariants (`check.rs`).
//!
//! A [`Scenario`] names its [`Backend`] and its [`Fault`]; every fault that applies runs on
//! every backend. Each node is a turmoil client running the real bus over `TurmoilTcp` with a
//! [`hubbus::Hub`] on top and several local subscribers, so the path users take (hub, bridge,
//! bus, broker) is the path simulated. Each node has a seeded id generator and a clock that
//! reads simulated time, so a seed fixes everything: link latencies, reconnect jitter, ids,
//! timestamps. The trace of a run is a list of lines; the same seed must give the same trace.

mod brokers;
mod check;
mod event;
mod fault;
pub mod generate;
mod node;
mod workload;

use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

use hubbus::{Clock, Guarantee};
use serde::{Deserialize, Serialize};

pub use check::Summary;
pub use event::{Event, Run};
pub use fault::{Fault, NOTICE_AFTER};
pub use workload::{Publisher, REFUSED_CHANNEL, Restart, Subscriber};

use brokers::Brokers;
use event::Log;
use fault::Action;
use node::{NodeSetup, run_node};

/// Simulated wall time: turmoil's epoch plus elapsed simulated time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SimClock;

impl Clock for SimClock {
    fn unix_nanos(&self) -> u64 {
        turmoil::since_epoch().map_or(0, |since| {
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
        })
    }
}

/// Which bus the nodes run, against which fake broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Backend {
    /// `RedisBus` on one fake Redis (`redis:6379`).
    Redis,
    /// `RedisBus` through a fake Sentinel (`sentinel:26379`, master `main`) that knows a
    /// master `redis-a` and a replica `redis-b`; faults hit the master.
    RedisSentinel,
    /// `RedisBus` with sharded Pub/Sub on a fake Redis Cluster of three masters (`redis-a`,
    /// `redis-b`, `redis-c`) and a spare (`redis-d`) that takes over a failed master's slots;
    /// faults hit `redis-a`.
    RedisSharded,
    /// `NatsCoreBus` over the wire link on one fake NATS server (`nats:4222`).
    NatsCore,
    /// `JetStreamBus` over the wire link on one fake NATS server with its JetStream engine
    /// (`nats:4222`), whose store outlives restarts of the host.
    JetStream,
}

impl Backend {
    /// Every backend, for tests that run a scenario on each.
    pub const ALL: [Backend; 5] = [
        Backend::Redis,
        Backend::RedisSentinel,
        Backend::RedisSharded,
        Backend::NatsCore,
        Backend::JetStream,
    ];

    /// What the backend promises, which decides the invariants checked.
    pub fn guarantee(self) -> Guarantee {
        match self {
            Backend::Redis | Backend::RedisSentinel | Backend::RedisSharded | Backend::NatsCore => {
                Guarantee::AtMostOnce
            }
            Backend::JetStream => Guarantee::AtLeastOnce,
        }
    }

    /// Whether `fault` can be injected on this backend.
    pub fn supports(self, fault: &Fault) -> bool {
        match fault {
            Fault::SentinelFailover { .. } => self == Backend::RedisSentinel,
            Fault::ShardFailover { .. } | Fault::SlotMigration { .. } => {
                self == Backend::RedisSharded
            }
            fault if fault.jetstream_only() => self == Backend::JetStream,
            _ => true,
        }
    }

    /// The most a message takes from one host to another: a LAN for Redis (most publishes
    /// confirm within the 50 ms timeout, some do not), a shorter hop for NATS, whose Core
    /// publish has 50 ms (by default) for a round trip to the server.
    pub(super) fn max_latency(self) -> Duration {
        match self {
            Backend::Redis | Backend::RedisSentinel | Backend::RedisSharded => {
                Duration::from_millis(20)
            }
            Backend::NatsCore | Backend::JetStream => Duration::from_millis(5),
        }
    }

    /// Whether its simulated broker refuses some channels ([`REFUSED_CHANNEL`]):
    /// the Redis brokers have an ACL; JetStream subscribes locally, and the fake NATS server
    /// has no permissions.
    pub fn refuses_channels(self) -> bool {
        matches!(
            self,
            Backend::Redis | Backend::RedisSentinel | Backend::RedisSharded
        )
    }

    /// Whether a publish returns `Ok` only on the broker's answer (Redis's `PUBLISH` reply,
    /// JetStream's PubAck), so none can be confirmed while the broker cannot answer. A NATS
    /// Core publish is confirmed once it is written to the connection.
    pub fn confirms_by_reply(self) -> bool {
        !matches!(self, Backend::NatsCore)
    }

    /// The URL nodes connect to.
    fn url(self) -> String {
        match self {
            Backend::Redis => format!("redis://redis:{}", brokers::REDIS_PORT),
            Backend::RedisSentinel => format!(
                "redis+sentinel://sentinel:{}/{}",
                brokers::SENTINEL_PORT,
                brokers::MASTER
            ),
            Backend::RedisSharded => {
                let seeds: Vec<String> = brokers::CLUSTER_SEEDS
                    .iter()
                    .map(|host| format!("{host}:{}", brokers::REDIS_PORT))
                    .collect();
                format!("redis+cluster://{}?sharded=true", seeds.join(","))
            }
            Backend::NatsCore | Backend::JetStream => {
                format!("nats://nats:{}", brokers::NATS_PORT)
            }
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Redis => "Redis",
            Backend::RedisSentinel => "Redis via Sentinel",
            Backend::RedisSharded => "Redis Cluster, sharded",
            Backend::NatsCore => "NATS Core",
            Backend::JetStream => "JetStream",
        })
    }
}

/// What one simulation run does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scenario {
    /// A name for messages (read back from JSON as `replayed`).
    #[serde(skip_deserializing, default = "replayed")]
    pub name: &'static str,
    /// The bus the nodes run.
    pub backend: Backend,
    /// How many nodes (each runs a hub).
    pub nodes: usize,
    /// How many channels (`room0`, `room1`, ...).
    pub channels: usize,
    /// The local subscribers of every node's hub.
    pub subscribers: Vec<Subscriber>,
    /// The publishers of every node's hub.
    pub publishers: Vec<Publisher>,
    /// Node processes that stop and start again.
    pub restarts: Vec<Restart>,
    /// The faults, in any order; they may overlap, except that at most one fault that hits
    /// the broker itself ([`Fault::hits_broker`]) is active at a time.
    pub faults: Vec<Fault>,
    /// How long after a fault healed recovery may take: on an at-most-once bus, messages
    /// confirmed later than this must reach every subscriber.
    pub heal_bound: Duration,
    /// How long the nodes keep running after the last publish is due.
    pub linger: Duration,
    /// The capacity of every local subscriber's queue (`subscriber_queue`): small, a slow
    /// reader falls behind (drops on an at-most-once bus, a cut-off as lagged on JetStream).
    #[serde(default = "default_subscriber_queue")]
    pub subscriber_queue: usize,
}

/// The bus's own default queue capacity.
fn default_subscriber_queue() -> usize {
    hubbus::DEFAULT_SUBSCRIBER_QUEUE
}

/// The name of a scenario read back from JSON.
fn replayed() -> &'static str {
    "replayed"
}

/// When the publishers of [`Scenario::new`] start: every node has connected and subscribed by
/// then.
const PUBLISH_FROM: Duration = Duration::from_secs(1);

impl Scenario {
    /// Three nodes with two local subscribers each on one channel, each node publishing 120
    /// messages 100 ms apart from 1 s on (12 s of publishing), with `fault` and a recovery bound
    /// of 5 s: up to 2 s to notice a silent connection (Redis: PING interval plus timeout; NATS:
    /// two unanswered pings a second apart), up to 2 s of backoff or reconnect wait, and the
    /// rest for connect and resubscribe.
    pub fn new(backend: Backend, fault: Fault) -> Self {
        let nodes = 3;
        Scenario {
            name: fault.name(),
            backend,
            nodes,
            channels: 1,
            subscribers: (0..nodes)
                .flat_map(|node| [Subscriber::steady(node, 0), Subscriber::steady(node, 0)])
                .collect(),
            publishers: (0..nodes)
                .map(|node| Publisher {
                    node,
                    channel: 0,
                    start: PUBLISH_FROM,
                    messages: 120,
                    interval: Duration::from_millis(100),
                    payload: 0,
                    retries: 0,
                })
                .collect(),
            restarts: Vec::new(),
            faults: vec![fault],
            heal_bound: Duration::from_secs(5),
            linger: Self::linger_for(backend),
            subscriber_queue: hubbus::DEFAULT_SUBSCRIBER_QUEUE,
        }
    }

    /// How long nodes keep receiving after the last publish: the recovery bound, and on an
    /// at-least-once bus two ack waits more, so a delivery lost on its way is redelivered
    /// before the run ends.
    pub fn linger_for(backend: Backend) -> Duration {
        let heal_bound = Duration::from_secs(5);
        if backend.guarantee() == Guarantee::AtLeastOnce {
            heal_bound + 2 * node::JETSTREAM_ACK_WAIT
        } else {
            heal_bound
        }
    }

    /// When the run ends: the nodes stop after the last publish is due and the linger passed.
    pub fn end(&self) -> Duration {
        let last = self
            .publishers
            .iter()
            .map(Publisher::last_due)
            .chain(self.faults.iter().filter_map(Fault::healed_at))
            .chain(self.restarts.iter().map(|r| r.at + r.down_for))
            .max()
            .unwrap_or_default();
        last + self.linger
    }

    /// The node's subscribers, in the order their indices count.
    fn subscribers_of(&self, node: usize) -> impl Iterator<Item = &Subscriber> {
        self.subscribers.iter().filter(move |s| s.node == node)
    }

    /// The node's publishers, in the order their indices count.
    fn publishers_of(&self, node: usize) -> impl Iterator<Item = &Publisher> {
        self.publishers.iter().filter(move |p| p.node == node)
    }

    /// Whether the scenario can run: every fault applies to the backend, the broker faults do
    /// not overlap, and every node, subscriber and publisher names a node and channel that
    /// exist.
    fn validate(&self) -> Result<(), String> {
        if let Some(fault) = self.faults.iter().find(|f| !self.backend.supports(f)) {
            return Err(format!("{} cannot inject `{}`", self.backend, fault.name()));
        }
        let mut broker: Vec<(Duration, Duration)> = self
            .faults
            .iter()
            .filter(|f| f.hits_broker())
            .filter_map(|f| Some((f.touches(self.nodes)?.0, f.healed_at()?)))
            .collect();
        broker.sort();
        if broker.windows(2).any(|w| w[1].0 <= w[0].1) {
            return Err("broker faults overlap".into());
        }
        let nodes_ok = self
            .subscribers
            .iter()
            .map(|s| (s.node, s.channel))
            .chain(self.publishers.iter().map(|p| (p.node, p.channel)))
            .all(|(node, channel)| node < self.nodes && channel < self.channels)
            && self.restarts.iter().all(|r| r.node < self.nodes);
        if !nodes_ok {
            return Err(
                "a subscriber, publisher or restart names a node or channel that does not exist"
                    .into(),
            );
        }
        Ok(())
    }
}

/// How far simulated time moves per step.
const TICK: Duration = Duration::from_millis(2);

/// Runs `scenario` with `seed`. Errors are simulation failures (a client returned an error or
/// the simulated time ran out), not invariant violations; see [`Run::check`].
pub fn run(scenario: &Scenario, seed: u64) -> Result<Run, String> {
    scenario.validate()?;
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        .simulation_duration(scenario.end() + Duration::from_secs(60))
        .tick_duration(TICK)
        .max_message_latency(scenario.backend.max_latency())
        .build();
    let log = Log::default();
    let mut brokers = Brokers::install(scenario.backend, &mut sim);

    for node in 0..scenario.nodes {
        let setup = NodeSetup {
            node,
            seed,
            scenario: scenario.clone(),
            log: log.clone(),
        };
        sim.client(format!("node-{node}"), run_node(setup));
    }

    let mut pending: Vec<(Duration, Action)> =
        scenario.faults.iter().flat_map(Fault::schedule).collect();
    // Stable: the steps of one fault keep their order.
    pending.sort_by_key(|(at, _)| *at);
    loop {
        let elapsed = sim.elapsed();
        while pending.first().is_some_and(|(at, _)| *at <= elapsed) {
            let (_, action) = pending.remove(0);
            log.record(Event::Fault {
                at: elapsed,
                what: action.to_string(),
            });
            brokers.apply(&mut sim, action);
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(error) => {
                let run = Run {
                    seed,
                    events: log.take(),
                };
                return Err(format!(
                    "{} scenario `{}` with seed {seed}: simulation failed: {error}\n\
                     replay with HUBBUS_TEST_SIM_SEED={seed}\nlast events:\n{}",
                    scenario.backend,
                    scenario.name,
                    run.tail(40)
                ));
            }
        }
    }
    Ok(Run {
        seed,
        events: log.take(),
    })
}

/// Runs `scenario` for every seed of [`seeds`]`(default_count)` and checks each run; panics
/// with the violation, the seed and the end of the trace.
pub fn holds_for_every_seed(scenario: &Scenario, default_count: u64) -> Vec<Summary> {
    seeds(default_count)
        .into_iter()
        .map(|seed| {
            let outcome = run(scenario, seed).unwrap_or_else(|error| panic!("{error}"));
            outcome.check(scenario).unwrap_or_else(|violation| {
                panic!("{violation}\nlast events:\n{}", outcome.tail(40))
            })
        })
        .collect()
}

/// The seeds a test runs: `HUBBUS_TEST_SIM_SEED=<n>` replays one;
/// `HUBBUS_TEST_SIM_SEEDS=<count>` runs that many (a soak); otherwise `default_count` seeds
/// starting at 1.
pub fn seeds(default_count: u64) -> Vec<u64> {
    if let Some(seed) = std::env::var("HUBBUS_TEST_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let count = std::env::var("HUBBUS_TEST_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_count);
    (1..=count).collect()
}
