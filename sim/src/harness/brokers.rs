//! The fake brokers of a run: which hosts the backend needs, and how each fault step lands on
//! them.

use turmoil::Sim;

use super::Backend;
use super::fault::Action;
use crate::nats::jetstream::JetStreamStore;
use crate::nats::{FakeNatsOptions, serve_nats};
use crate::redis::{FakeRedisOptions, Role, serve_redis};
use crate::sentinel::{FakeSentinel, serve_sentinel};

/// The port every fake Redis listens on.
pub(super) const REDIS_PORT: u16 = 6379;
/// The port of the fake sentinel.
pub(super) const SENTINEL_PORT: u16 = 26379;
/// The master name the fake sentinel knows.
pub(super) const MASTER: &str = "main";
/// The port of the fake NATS server.
pub(super) const NATS_PORT: u16 = 4222;
/// The JetStream bus's stream (its default name).
const STREAM: &str = "HUBBUS";

/// The brokers of one run, with the controls the fault steps use.
pub(super) enum Brokers {
    /// One Redis, `redis`.
    Redis { redis: FakeRedisOptions },
    /// A master `redis-a`, a replica `redis-b` and the sentinel watching them.
    Sentinel {
        primary: FakeRedisOptions,
        secondary: FakeRedisOptions,
        sentinel: FakeSentinel,
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
        match backend {
            Backend::Redis => {
                let redis = FakeRedisOptions::new();
                let options = redis.clone();
                sim.host("redis", move || serve_redis(REDIS_PORT, options.clone()));
                Brokers::Redis { redis }
            }
            Backend::RedisSentinel => {
                let (primary, secondary) = (FakeRedisOptions::new(), FakeRedisOptions::new());
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
                Brokers::Sentinel {
                    primary,
                    secondary,
                    sentinel,
                }
            }
            Backend::NatsCore | Backend::JetStream => {
                let store = JetStreamStore::new();
                let nats = FakeNatsOptions::new().with_jetstream(store.clone());
                let options = nats.clone();
                sim.host("nats", move || serve_nats(NATS_PORT, options.clone()));
                Brokers::Nats { nats, store }
            }
        }
    }

    /// The host the faults hit: the broker the nodes publish through.
    fn host(&self) -> &'static str {
        match self {
            Brokers::Redis { .. } => "redis",
            Brokers::Sentinel { .. } => "redis-a",
            Brokers::Nats { .. } => "nats",
        }
    }

    /// Performs one fault step.
    pub(super) fn apply(&self, sim: &mut Sim<'_>, action: Action) {
        let host = self.host();
        match (self, action) {
            (Brokers::Redis { redis: target }, Action::Disconnect)
            | (
                Brokers::Sentinel {
                    primary: target, ..
                },
                Action::Disconnect,
            ) => target.control().disconnect_all(),
            (Brokers::Nats { nats, .. }, Action::Disconnect) => nats.control().disconnect_all(),
            (Brokers::Nats { nats, .. }, Action::Wedge(on)) => nats.control().wedge(on),
            (Brokers::Redis { redis: target }, Action::Wedge(on))
            | (
                Brokers::Sentinel {
                    primary: target, ..
                },
                Action::Wedge(on),
            ) => target.control().wedge(on),
            (_, Action::Bounce) => sim.bounce(host),
            (_, Action::Crash) => sim.crash(host),
            (_, Action::Partition(node)) => sim.partition(format!("node-{node}"), host),
            (_, Action::Repair(node)) => sim.repair(format!("node-{node}"), host),
            (
                Brokers::Sentinel {
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
            (Brokers::Nats { store, .. }, Action::VanishStream) => {
                store.vanish_stream(STREAM);
            }
            (Brokers::Nats { store, .. }, Action::VanishConsumers) => {
                for consumer in store
                    .stream(STREAM)
                    .map(|s| s.consumers)
                    .unwrap_or_default()
                {
                    store.vanish_consumer(STREAM, &consumer);
                }
            }
            (Brokers::Nats { store, .. }, Action::WipeStore) => store.wipe(),
            (Brokers::Nats { store, .. }, Action::SlowAcks(delay)) => store.set_slow_acks(delay),
            (Brokers::Redis { .. } | Brokers::Nats { .. }, Action::Failover) => {
                unreachable!("run() refuses a failover without a sentinel")
            }
            (
                Brokers::Redis { .. } | Brokers::Sentinel { .. },
                Action::VanishStream
                | Action::VanishConsumers
                | Action::WipeStore
                | Action::SlowAcks(_),
            ) => unreachable!("run() refuses JetStream faults on Redis"),
        }
    }
}
