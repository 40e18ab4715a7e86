//! The conformance suite over NATS Core: every check gets its own `nats-server` on a free port,
//! and every node is a [`NatsCoreBus`] on its own async-nats connection to it. NATS Core
//! promises at-most-once delivery in per-publisher order while connected.

mod conformance;
mod support;

use std::sync::Arc;
use std::time::Duration;

use hubbus::backend::nats::{AsyncNatsLink, NatsCoreBus, NatsOptions};
use hubbus::{BusOptions, Guarantee, MessageBus};

use conformance::{BusFactory, Promises};
use support::{NatsServer, eventually};

/// One server per check; nodes wait until connected so checks start from a working bus.
struct NatsNodes {
    server: NatsServer,
}

impl NatsNodes {
    fn new() -> Option<Self> {
        NatsServer::start().map(|server| NatsNodes { server })
    }
}

impl BusFactory for Option<NatsNodes> {
    async fn node(&self, options: BusOptions) -> Arc<dyn MessageBus> {
        let nodes = self.as_ref().expect("nats-server available");
        let nats = NatsOptions::new(nodes.server.url());
        let link = AsyncNatsLink::connect(nats.link.clone()).await.unwrap();
        let bus = NatsCoreBus::start(options, nats, Arc::new(link)).unwrap();
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

const NATS_CORE: Promises = Promises {
    delivers: true,
    ordered_per_publisher: true,
    guarantee: Guarantee::AtMostOnce,
    replays_earlier_messages: false,
    deadline: Duration::from_secs(10),
    virtual_time: false,
};

conformance::conformance_tests!(NatsNodes::new(), NATS_CORE);
