//! Runs several Redis bus nodes against a fake broker in one turmoil simulation, injects one
//! fault on a schedule, records what was published and delivered, and checks the invariants.
//!
//! Each node is a turmoil client running a real [`RedisBus`] over [`TurmoilTcp`], with a
//! seeded id generator and a clock that reads simulated time, so a seed fixes everything: link
//! latencies, reconnect jitter, ids, timestamps. The trace of a run is a list of lines; the same
//! seed must give the same trace.
//!
//! Invariants checked after every run:
//! - *integrity*: nothing is delivered that was not published;
//! - *no duplicates*: no subscriber receives the same message twice;
//! - *order*: each subscriber receives each publisher's confirmed messages in publish order;
//! - *detection*: every node the fault cuts off reports it through `health()`;
//! - *recovery*: every message confirmed at least [`Scenario::heal_bound`] of simulated time
//!   after the fault healed reaches every subscriber.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use hubbus::backend::redis::{RedisBus, RedisOptions, RedisTarget};
use hubbus::transport::TurmoilTcp;
use hubbus::{BusMetrics, BusOptions, Clock, IdGenerator, MessageBus, NodeId};

use crate::redis::{FakeRedisOptions, Role, serve_redis};
use crate::sentinel::{FakeSentinel, serve_sentinel};

/// The port every fake Redis listens on.
const REDIS_PORT: u16 = 6379;
/// The port of the fake sentinel.
const SENTINEL_PORT: u16 = 26379;
/// turmoil's default step.
const TICK: Duration = Duration::from_millis(1);
/// The channel every node subscribes to and publishes on.
const CHANNEL: &str = "room";
/// The master name the fake sentinel knows.
const MASTER: &str = "main";

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

/// The one fault a scenario injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// No fault: the baseline.
    None,
    /// The broker restarts at once (turmoil `bounce`), losing every subscription.
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
    /// replica. Nodes connect through the sentinel.
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
}

/// What one simulation run does.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// A name for messages.
    pub name: &'static str,
    /// How many bus nodes (each subscribes and publishes).
    pub nodes: usize,
    /// Messages each node publishes.
    pub messages: u32,
    /// Simulated time between one node's publishes.
    pub interval: Duration,
    /// The fault.
    pub fault: Fault,
    /// How long after the fault healed recovery may take: messages confirmed later than this
    /// must reach every subscriber.
    pub heal_bound: Duration,
}

impl Scenario {
    /// A scenario with three nodes publishing 120 messages each, 100 ms apart (12 s of
    /// publishing), with `fault` and a recovery bound of 5 s: up to 2 s to notice a silent
    /// connection (PING interval plus timeout), up to 1 s of backoff, and the rest for connect
    /// and resubscribe.
    pub fn new(name: &'static str, fault: Fault) -> Self {
        Scenario {
            name,
            nodes: 3,
            messages: 120,
            interval: Duration::from_millis(100),
            fault,
            heal_bound: Duration::from_secs(5),
        }
    }
}

/// One thing that happened, with the simulated time it happened at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A node called publish; `confirmed` is whether it returned `Ok`.
    Published {
        /// Simulated time of the return.
        at: Duration,
        /// Publishing node.
        node: usize,
        /// Its sequence number.
        seq: u32,
        /// `Ok` from the bus, or the error's text.
        outcome: Result<String, String>,
    },
    /// A node's subscription received a message.
    Delivered {
        /// Simulated time.
        at: Duration,
        /// Receiving node.
        node: usize,
        /// The publisher, as the payload says.
        origin: usize,
        /// The publisher's sequence number.
        seq: u32,
        /// The message id.
        id: String,
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
                origin,
                seq,
                id,
            } => {
                write!(f, "{at:?} node-{node} received {origin}:{seq} ({id})")
            }
            Event::Health {
                at,
                node,
                connected: true,
                ..
            } => {
                write!(f, "{at:?} node-{node} connected")
            }
            Event::Health {
                at, node, reason, ..
            } => {
                write!(f, "{at:?} node-{node} down: {reason}")
            }
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

type Log = Arc<Mutex<Vec<Event>>>;

fn record(log: &Log, event: Event) {
    log.lock().unwrap_or_else(|e| e.into_inner()).push(event);
}

fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// Runs `scenario` with `seed`. Errors are simulation failures (a client returned an error or
/// the simulated time ran out), not invariant violations; see [`Run::check`].
pub fn run(scenario: &Scenario, seed: u64) -> Result<Run, String> {
    let publishing = scenario.interval * scenario.messages;
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        .simulation_duration(publishing + Duration::from_secs(60))
        // A LAN: most publishes confirm within the 50 ms timeout, some do not.
        .max_message_latency(Duration::from_millis(20))
        .build();
    let log: Log = Arc::new(Mutex::new(Vec::new()));

    let sentinel = FakeSentinel::new();
    let primary = FakeRedisOptions::new();
    let secondary = FakeRedisOptions::new();
    let via_sentinel = matches!(scenario.fault, Fault::SentinelFailover { .. });
    if via_sentinel {
        sentinel.monitor(MASTER, "redis-a", REDIS_PORT);
        secondary.control().set_role(Role::Replica {
            master_host: "redis-a".into(),
            master_port: REDIS_PORT,
        });
        let options = primary.clone();
        sim.host("redis-a", move || serve_redis(REDIS_PORT, options.clone()));
        let options = secondary.clone();
        sim.host("redis-b", move || serve_redis(REDIS_PORT, options.clone()));
        let watcher = sentinel.clone();
        sim.host("sentinel", move || {
            serve_sentinel(SENTINEL_PORT, watcher.clone())
        });
    } else {
        let options = primary.clone();
        sim.host("redis", move || serve_redis(REDIS_PORT, options.clone()));
    }
    let url = if via_sentinel {
        format!("redis+sentinel://sentinel:{SENTINEL_PORT}/{MASTER}")
    } else {
        format!("redis://redis:{REDIS_PORT}")
    };

    let subscribed = Arc::new(AtomicUsize::new(0));
    for node in 0..scenario.nodes {
        let (log, url, scenario) = (log.clone(), url.clone(), scenario.clone());
        let subscribed = subscribed.clone();
        sim.client(format!("node-{node}"), async move {
            run_node(node, seed, &url, &scenario, log, subscribed).await
        });
    }

    let broker = if via_sentinel { "redis-a" } else { "redis" };
    let mut pending = schedule(&scenario.fault);
    loop {
        let elapsed = sim.elapsed();
        while pending.first().is_some_and(|(at, _)| *at <= elapsed) {
            let (_, action) = pending.remove(0);
            record(
                &log,
                Event::Fault {
                    at: elapsed,
                    what: action.to_string(),
                },
            );
            match action {
                Action::Disconnect => primary.control().disconnect_all(),
                Action::Bounce => sim.bounce(broker),
                Action::Crash => sim.crash(broker),
                Action::Partition(node) => sim.partition(format!("node-{node}"), broker),
                Action::Repair(node) => sim.repair(format!("node-{node}"), broker),
                Action::Wedge(on) => primary.control().wedge(on),
                Action::Failover => {
                    secondary.control().set_role(Role::Master);
                    primary.control().set_role(Role::Replica {
                        master_host: "redis-b".into(),
                        master_port: REDIS_PORT,
                    });
                    sentinel.failover(MASTER, "redis-b", REDIS_PORT);
                }
            }
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(error) => return Err(format!("seed {seed}: simulation failed: {error}")),
        }
    }
    let events = std::mem::take(&mut *log.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(Run { seed, events })
}

/// A fault step the harness performs between simulation steps.
#[derive(Debug, Clone, Copy)]
enum Action {
    Disconnect,
    Bounce,
    Crash,
    Partition(usize),
    Repair(usize),
    Wedge(bool),
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

fn schedule(fault: &Fault) -> Vec<(Duration, Action)> {
    match *fault {
        Fault::None => vec![],
        // A process crash resets its connections first (see `disconnect_all`); one tick later
        // the host's software is gone.
        Fault::BounceBroker { at } => vec![(at, Action::Disconnect), (at + TICK, Action::Bounce)],
        Fault::CrashBroker { at, down_for } => vec![
            (at, Action::Disconnect),
            (at + TICK, Action::Crash),
            (at + down_for, Action::Bounce),
        ],
        Fault::PartitionNode {
            node,
            at,
            heal_after,
        } => {
            vec![
                (at, Action::Partition(node)),
                (at + heal_after, Action::Repair(node)),
            ]
        }
        Fault::WedgeBroker { at, silent_for } => {
            vec![
                (at, Action::Wedge(true)),
                (at + silent_for, Action::Wedge(false)),
            ]
        }
        Fault::SentinelFailover { at } => vec![(at, Action::Failover)],
    }
}

/// One node: connect, subscribe, publish its sequence, keep receiving a while, close.
async fn run_node(
    node: usize,
    seed: u64,
    url: &str,
    scenario: &Scenario,
    log: Log,
    subscribed: Arc<AtomicUsize>,
) -> turmoil::Result {
    let ids = IdGenerator::seeded(
        seed.wrapping_mul(1_000_003).wrapping_add(node as u64),
        Arc::new(SimClock),
    );
    let options = BusOptions {
        node_id: NodeId::new(format!("node-{node}"))?,
        ids,
        metrics: BusMetrics::unregistered("sim")?,
        ..BusOptions::default()
    };
    let mut redis = RedisOptions::new(RedisTarget::parse(url)?);
    redis.connector = Arc::new(TurmoilTcp);
    let bus = RedisBus::start(options, redis)?;
    while !bus.health().is_connected() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let bus = Arc::new(bus);
    let watcher = tokio::spawn(watch_health(node, bus.clone(), log.clone()));
    let mut subscription = bus.subscribe(CHANNEL).await?;
    // Everyone subscribes before anyone publishes, so every message has every subscriber.
    subscribed.fetch_add(1, Ordering::SeqCst);
    while subscribed.load(Ordering::SeqCst) < scenario.nodes {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let reader_log = log.clone();
    let reader = tokio::spawn(async move {
        while let Some(delivery) = subscription.recv().await {
            let text = String::from_utf8_lossy(delivery.payload()).into_owned();
            let Some((origin, seq)) = text
                .split_once(':')
                .and_then(|(o, s)| Some((o.parse::<usize>().ok()?, s.parse::<u32>().ok()?)))
            else {
                continue;
            };
            record(
                &reader_log,
                Event::Delivered {
                    at: now(),
                    node,
                    origin,
                    seq,
                    id: delivery.id().to_string(),
                },
            );
        }
    });

    for seq in 0..scenario.messages {
        let outcome = bus
            .publish(CHANNEL, format!("{node}:{seq}").into())
            .await
            .map(|receipt| receipt.id.to_string())
            .map_err(|error| error.to_string());
        record(
            &log,
            Event::Published {
                at: now(),
                node,
                seq,
                outcome,
            },
        );
        tokio::time::sleep(scenario.interval).await;
    }
    // Let the last messages arrive everywhere before closing.
    tokio::time::sleep(scenario.heal_bound).await;
    watcher.abort();
    bus.close().await;
    reader.abort();
    Ok(())
}

/// Records every change of the node's health, sampled every 10 ms of simulated time.
async fn watch_health(node: usize, bus: Arc<RedisBus>, log: Log) {
    let mut connected = true;
    loop {
        let health = bus.health();
        if health.is_connected() != connected {
            connected = health.is_connected();
            record(
                &log,
                Event::Health {
                    at: now(),
                    node,
                    connected,
                    reason: health.reason.unwrap_or_default(),
                },
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Run {
    /// The trace: one line per event.
    pub fn trace(&self) -> Vec<String> {
        self.events.iter().map(ToString::to_string).collect()
    }

    /// Checks the invariants; the error names the seed, the scenario and what broke.
    pub fn check(&self, scenario: &Scenario) -> Result<(), String> {
        let fail = |what: String| {
            Err(format!(
                "scenario `{}` with seed {} broke an invariant: {what}\n\
                 replay with HUBBUS_TEST_SIM_SEED={}",
                scenario.name, self.seed, self.seed
            ))
        };
        let mut attempted = BTreeSet::new();
        let mut confirmed: BTreeMap<(usize, u32), Duration> = BTreeMap::new();
        for event in &self.events {
            if let Event::Published {
                at,
                node,
                seq,
                outcome,
            } = event
            {
                attempted.insert((*node, *seq));
                if outcome.is_ok() {
                    confirmed.insert((*node, *seq), *at);
                }
            }
        }
        let mut seen: BTreeSet<(usize, usize, u32)> = BTreeSet::new();
        let mut last_confirmed: BTreeMap<(usize, usize), u32> = BTreeMap::new();
        for event in &self.events {
            let Event::Delivered {
                node, origin, seq, ..
            } = event
            else {
                continue;
            };
            if !attempted.contains(&(*origin, *seq)) {
                return fail(format!(
                    "node-{node} received {origin}:{seq}, never published"
                ));
            }
            if !seen.insert((*node, *origin, *seq)) {
                return fail(format!("node-{node} received {origin}:{seq} twice"));
            }
            // Order is promised for confirmed messages; an unconfirmed (timed-out) one may be
            // executed late by a broker that was silent, and land out of order.
            if confirmed.contains_key(&(*origin, *seq)) {
                if let Some(previous) = last_confirmed.get(&(*node, *origin))
                    && *previous > *seq
                {
                    return fail(format!(
                        "node-{node} received {origin}:{seq} after {origin}:{previous}"
                    ));
                }
                last_confirmed.insert((*node, *origin), *seq);
            }
        }
        // Detection: every node the fault touches notices (its health goes down) while the fault
        // lasts or soon after. A silent broker is only noticed by the liveness probe.
        if let Some((start, touched)) = scenario.fault.touches(scenario.nodes) {
            let end = scenario.fault.healed_at().unwrap_or(start) + scenario.heal_bound;
            for node in touched {
                let noticed = self.events.iter().any(|event| {
                    matches!(event, Event::Health { at, node: n, connected: false, .. }
                        if *n == node && *at >= start && *at <= end)
                });
                if !noticed {
                    return fail(format!(
                        "node-{node} never reported the fault between {start:?} and {end:?}"
                    ));
                }
            }
        }
        let settled = scenario
            .fault
            .healed_at()
            .map_or(Duration::ZERO, |healed| healed + scenario.heal_bound);
        let must_arrive: Vec<_> = confirmed
            .iter()
            .filter(|(_, at)| **at >= settled)
            .map(|(key, _)| *key)
            .collect();
        if scenario.fault != Fault::None && must_arrive.is_empty() {
            return fail(format!(
                "no message was confirmed after recovery ({settled:?})"
            ));
        }
        for (origin, seq) in must_arrive {
            for node in 0..scenario.nodes {
                if !seen.contains(&(node, origin, seq)) {
                    return fail(format!(
                        "node-{node} never received {origin}:{seq}, confirmed after {settled:?}"
                    ));
                }
            }
        }
        Ok(())
    }
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
