//! The conformance suite on the fake Redis inside turmoil: every check runs as a client of its
//! own simulation, and every node is a `RedisBus` over `TurmoilTcp`. The same suite runs on a
//! real `redis-server` in the main crate's tests; passing both is part of how the fake's
//! fidelity is measured (docs/testing.md, "Fidelity of the fakes").

#[path = "../../tests/conformance/mod.rs"]
mod conformance;

use std::sync::Arc;
use std::time::Duration;

use hubbus::backend::redis::{RedisBus, RedisOptions, RedisTarget};
use hubbus::transport::TurmoilTcp;
use hubbus::{BusOptions, Guarantee, MessageBus};
use hubbus_sim::redis::{FakeRedisOptions, serve_redis};

use conformance::{BusFactory, Promises};

/// A fixed seed: a failure replays exactly.
const SEED: u64 = 1;

/// A simulation with one fake Redis host, `redis:6379`.
fn simulation() -> turmoil::Sim<'static> {
    let mut sim = turmoil::Builder::new()
        .rng_seed(SEED)
        .simulation_duration(Duration::from_secs(300))
        // Loopback-like latency, as on the real server the suite also runs on: the checks are
        // about what a publish promises, not about its 50 ms bound (the harness covers that).
        .max_message_latency(Duration::from_millis(2))
        .build();
    let options = FakeRedisOptions::new();
    sim.host("redis", move || serve_redis(6379, options.clone()));
    sim
}

/// Nodes on the simulation's fake Redis.
struct FakeRedisNodes;

impl BusFactory for FakeRedisNodes {
    async fn node(&self, options: BusOptions) -> Arc<dyn MessageBus> {
        let mut redis = RedisOptions::new(RedisTarget::parse("redis://redis:6379").unwrap());
        redis.connector = Arc::new(TurmoilTcp);
        let bus = RedisBus::start(options, redis).unwrap();
        bus.wait_connected().await;
        assert!(bus.health().is_connected(), "{:?}", bus.health());
        Arc::new(bus)
    }
}

const REDIS: Promises = Promises {
    delivers: true,
    ordered_per_publisher: true,
    guarantee: Guarantee::AtMostOnce,
    replays_earlier_messages: false,
    headers_in_order: true,
    deadline: Duration::from_secs(10),
    virtual_time: false,
};

conformance::conformance_tests!(sim: simulation(), FakeRedisNodes, REDIS);
