//! The fake brokers of a run: which hosts the backend needs, and how each fault step lands on
//! them.

use turmoil::Sim;

use super::Backend;
use super::fault::Action;
use crate::nats::jetstream::JetStreamStore;
use crate::nats::{FakeNatsOptions, serve_nats};
use crate::redis::{FakeCluster, FakeRedisOptions, Role, key_slot, serve_redis};
use crate::sentinel::{FakeSentinel, serve_sentinel};

/// The port every fake Redis listens on.
pub(super) const REDIS_PORT: u16 = 6379;
/// The port of the fake sentinel.
pub(super) const SENTINEL_PORT: u16 = 26379;
/// The master name the fake sentinel knows.
pub(super) const MASTER: &str = "main";
/// The masters of the fake Redis Cluster, which split the slots evenly and are the nodes'
/// seeds; faults hit the first.
pub(super) const CLUSTER_SEEDS: [&str; 3] = ["redis-a", "redis-b", "redis-c"];
/// The cluster's spare, which takes over the slots of a failed master.
const CLUSTER_SPARE: &str = "redis-d";
/// How many workload channels a slot migration moves (more than any scenario uses).
const MIGRATED_CHANNELS: usize = 16;

/// The channels the Redis brokers' ACL allows: every `room`, not
/// [`REFUSED_CHANNEL`](super::workload::REFUSED_CHANNEL).
const ALLOWED_CHANNELS: [&str; 1] = ["room*"];
/// The port of the fake NATS server.
pub(super) const NATS_PORT: u16 = 4222;
/// The JetStream bus's stream (its default name).
const STREAM: &str = "HUBBUS";

/// The brokers of one run, with the controls the fault steps use, and how each node's link to
/// the broker is cut (faults may overlap, so a link is whole again only when the last cut
/// healed).
pub(super) struct Brokers {
    setup: Setup,
    /// How many two-way cuts each node's link has.
    cut: std::collections::BTreeMap<usize, u32>,
    /// How many one-way cuts (broker to node) each node's link has.
    deaf: std::collections::BTreeMap<usize, u32>,
    /// The backend's link latency, restored after a spike.
    latency: std::time::Duration,
}

/// Which brokers run.
enum Setup {
    /// One Redis, `redis`.
    Redis { redis: FakeRedisOptions },
    /// A master `redis-a`, a replica `redis-b` and the sentinel watching them.
    Sentinel {
        primary: FakeRedisOptions,
        secondary: FakeRedisOptions,
        sentinel: FakeSentinel,
    },
    /// A Redis Cluster: the masters of [`CLUSTER_SEEDS`], then the spare.
    Cluster {
        nodes: Vec<FakeRedisOptions>,
        cluster: FakeCluster,
    },
    /// One NATS server, `nats`, with its JetStream store (used by the JetStream backend only).
    Nats {
        nats: FakeNatsOptions,
        store: JetStreamStore,
    },
}

impl Brokers {
    /// Adds the backend's broker hosts to `sim`.
    pub(super) fn install(backend: Backend, sim: &mut Sim<'_>) -> Self {
        Brokers {
            setup: Setup::install(backend, sim),
            cut: Default::default(),
            deaf: Default::default(),
            latency: backend.max_latency(),
        }
    }

    /// Performs one fault step.
    pub(super) fn apply(&mut self, sim: &mut Sim<'_>, action: Action) {
        let count = |counts: &mut std::collections::BTreeMap<usize, u32>, node: usize, on: bool| {
            let entry = counts.entry(node).or_default();
            *entry = if on {
                *entry + 1
            } else {
                entry.saturating_sub(1)
            };
        };
        let node = match action {
            Action::Partition(node) | Action::Repair(node) => {
                count(&mut self.cut, node, matches!(action, Action::Partition(_)));
                node
            }
            Action::OneWay(node, on) => {
                count(&mut self.deaf, node, on);
                node
            }
            Action::Latency(latency) => {
                sim.set_max_message_latency(latency.unwrap_or(self.latency));
                return;
            }
            other => return self.setup.apply(sim, other),
        };
        // The node's links to every broker host as the cuts still in force say: with
        // Sentinel, the old master's and the new one's, so a cut holds across a failover.
        let name = format!("node-{node}");
        for &host in self.setup.hosts() {
            sim.repair(name.as_str(), host);
            if self.cut.get(&node).copied().unwrap_or(0) > 0 {
                sim.partition(name.as_str(), host);
            } else if self.deaf.get(&node).copied().unwrap_or(0) > 0 {
                sim.partition_oneway(host, name.as_str());
            }
        }
    }
}

impl Setup {
    fn install(backend: Backend, sim: &mut Sim<'_>) -> Self {
        match backend {
            Backend::Redis => {
                let redis = FakeRedisOptions::new().with_channels(ALLOWED_CHANNELS);
                let options = redis.clone();
                sim.host("redis", move || serve_redis(REDIS_PORT, options.clone()));
                Setup::Redis { redis }
            }
            Backend::RedisSentinel => {
                let (primary, secondary) = (
                    FakeRedisOptions::new().with_channels(ALLOWED_CHANNELS),
                    FakeRedisOptions::new().with_channels(ALLOWED_CHANNELS),
                );
                let sentinel = FakeSentinel::new();
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
                Setup::Sentinel {
                    primary,
                    secondary,
                    sentinel,
                }
            }
            Backend::RedisSharded => {
                let cluster = FakeCluster::new();
                let mut nodes = Vec::new();
                for host in CLUSTER_SEEDS.into_iter().chain([CLUSTER_SPARE]) {
                    let options = cluster.join(
                        host,
                        REDIS_PORT,
                        FakeRedisOptions::new().with_channels(ALLOWED_CHANNELS),
                    );
                    let serving = options.clone();
                    sim.host(host, move || serve_redis(REDIS_PORT, serving.clone()));
                    nodes.push(options);
                }
                // `redis-a`, which the broker faults hit, gets the middle third of the slots:
                // the one with `room0`, the channel of every fixed scenario.
                cluster.assign_evenly(&[CLUSTER_SEEDS[1], CLUSTER_SEEDS[0], CLUSTER_SEEDS[2]]);
                Setup::Cluster { nodes, cluster }
            }
            Backend::NatsCore | Backend::JetStream => {
                let store = JetStreamStore::new();
                let nats = FakeNatsOptions::new().with_jetstream(store.clone());
                let options = nats.clone();
                sim.host("nats", move || serve_nats(NATS_PORT, options.clone()));
                Setup::Nats { nats, store }
            }
        }
    }

    /// The host the faults hit: the broker the nodes publish through.
    fn host(&self) -> &'static str {
        self.hosts()[0]
    }

    /// The hosts that carry the nodes' messages, the one faults on the broker hit first.
    fn hosts(&self) -> &'static [&'static str] {
        match self {
            Setup::Redis { .. } => &["redis"],
            Setup::Sentinel { .. } => &["redis-a", "redis-b"],
            Setup::Cluster { .. } => &["redis-a", "redis-b", "redis-c", "redis-d"],
            Setup::Nats { .. } => &["nats"],
        }
    }

    /// Performs one fault step on the brokers.
    fn apply(&self, sim: &mut Sim<'_>, action: Action) {
        let host = self.host();
        match (self, action) {
            (Setup::Redis { redis: target }, Action::Disconnect)
            | (
                Setup::Sentinel {
                    primary: target, ..
                },
                Action::Disconnect,
            ) => target.control().disconnect_all(),
            (Setup::Cluster { nodes, .. }, Action::Disconnect) => {
                nodes[0].control().disconnect_all()
            }
            (Setup::Cluster { nodes, .. }, Action::Wedge(on)) => nodes[0].control().wedge(on),
            (Setup::Cluster { cluster, .. }, Action::PromoteShard) => {
                cluster.fail_over(CLUSTER_SEEDS[0], CLUSTER_SPARE);
            }
            (Setup::Cluster { cluster, .. }, Action::MigrateSlots) => migrate(cluster),
            (Setup::Nats { nats, .. }, Action::Disconnect) => nats.control().disconnect_all(),
            (Setup::Nats { nats, .. }, Action::Wedge(on)) => nats.control().wedge(on),
            (Setup::Redis { redis: target }, Action::Wedge(on))
            | (
                Setup::Sentinel {
                    primary: target, ..
                },
                Action::Wedge(on),
            ) => target.control().wedge(on),
            (_, Action::Bounce) => sim.bounce(host),
            (_, Action::Crash) => sim.crash(host),
            (
                _,
                Action::Partition(_) | Action::Repair(_) | Action::OneWay(..) | Action::Latency(_),
            ) => unreachable!("links are Brokers::apply's"),
            (
                Setup::Sentinel {
                    primary,
                    secondary,
                    sentinel,
                },
                Action::Failover,
            ) => {
                secondary.control().set_role(Role::Master);
                primary.control().set_role(Role::Replica {
                    master_host: "redis-b".into(),
                    master_port: REDIS_PORT,
                });
                sentinel.failover(MASTER, "redis-b", REDIS_PORT);
            }
            (Setup::Nats { store, .. }, Action::VanishStream) => {
                store.vanish_stream(STREAM);
            }
            (Setup::Nats { store, .. }, Action::VanishConsumers) => {
                for consumer in store
                    .stream(STREAM)
                    .map(|s| s.consumers)
                    .unwrap_or_default()
                {
                    store.vanish_consumer(STREAM, &consumer);
                }
            }
            (Setup::Nats { store, .. }, Action::WipeStore) => store.wipe(),
            (Setup::Nats { store, .. }, Action::SlowAcks(delay)) => store.set_slow_acks(delay),
            (
                Setup::Redis { .. } | Setup::Cluster { .. } | Setup::Nats { .. },
                Action::Failover,
            ) => {
                unreachable!("run() refuses a failover without a sentinel")
            }
            (
                Setup::Redis { .. } | Setup::Sentinel { .. } | Setup::Nats { .. },
                Action::PromoteShard | Action::MigrateSlots,
            ) => unreachable!("run() refuses cluster faults without a cluster"),
            (
                Setup::Redis { .. } | Setup::Sentinel { .. } | Setup::Cluster { .. },
                Action::VanishStream
                | Action::VanishConsumers
                | Action::WipeStore
                | Action::SlowAcks(_),
            ) => unreachable!("run() refuses JetStream faults on Redis"),
        }
    }
}

/// Moves the slot of each workload channel to the master after its owner (in
/// [`CLUSTER_SEEDS`] order; from the spare, to the first seed that is not the failed one).
fn migrate(cluster: &FakeCluster) {
    for index in 0..MIGRATED_CHANNELS {
        let channel = super::workload::channel_name(index);
        let Some(owner) = cluster.owner(channel.as_bytes()) else {
            continue;
        };
        let next = match CLUSTER_SEEDS.iter().position(|seed| *seed == owner) {
            Some(at) => CLUSTER_SEEDS[(at + 1) % CLUSTER_SEEDS.len()],
            None => CLUSTER_SEEDS[1],
        };
        cluster.move_slots(&[key_slot(channel.as_bytes())], next);
    }
}
