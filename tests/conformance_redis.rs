//! The conformance suite over Redis Pub/Sub: every check gets its own `redis-server` on a free
//! port, and every node is a [`RedisBus`] connected to it. Redis promises at-most-once delivery
//! in per-publisher order while connected.

mod conformance;
mod support;

use std::sync::Arc;
use std::time::Duration;

use hubbus::backend::redis::{RedisBus, RedisOptions, RedisTarget};
use hubbus::{BusOptions, Guarantee, MessageBus};

use conformance::{BusFactory, Promises};
use support::{RedisServer, eventually};

/// One server per check; nodes wait until connected so checks start from a working bus.
struct RedisNodes {
    server: RedisServer,
}

impl RedisNodes {
    fn new() -> Option<Self> {
        RedisServer::start().map(|server| RedisNodes { server })
    }
}

impl BusFactory for Option<RedisNodes> {
    async fn node(&self, options: BusOptions) -> Arc<dyn MessageBus> {
        let nodes = self.as_ref().expect("redis-server available");
        let target = RedisTarget::parse(&nodes.server.url()).unwrap();
        let bus = RedisBus::start(options, RedisOptions::new(target)).unwrap();
        assert!(
            eventually(Duration::from_secs(10), || bus.health().is_connected()).await,
            "node did not connect: {:?}",
            bus.health()
        );
        Arc::new(bus)
    }

    fn available(&self) -> bool {
        self.is_some()
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

conformance::conformance_tests!(RedisNodes::new(), REDIS);
