//! The conformance suite over NATS Core: every check gets its own `nats-server` on a free port,
//! and every node is a [`NatsCoreBus`] on its own async-nats connection to it. NATS Core
//! promises at-most-once delivery in per-publisher order while connected.
//!
//! Every check runs with a plain `>` subscriber on the server beside the nodes (as a monitoring
//! tap in the account would be): how the bus confirms publishes and subscriptions must not
//! depend on nobody else listening.

mod conformance;
mod support;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use hubbus::backend::nats::{AsyncNatsLink, NatsCoreBus, NatsLink, NatsOptions};
use hubbus::{BusOptions, Guarantee, MessageBus};
use tokio::sync::OnceCell;

use conformance::{BusFactory, Promises};
use support::{NatsServer, eventually};

/// One server per check; nodes wait until connected so checks start from a working bus.
struct NatsNodes {
    server: NatsServer,
    /// The `>` subscriber, started with the first node; its task reads everything it gets.
    tap: OnceCell<AsyncNatsLink>,
}

impl NatsNodes {
    fn new() -> Option<Self> {
        NatsServer::start().map(|server| NatsNodes {
            server,
            tap: OnceCell::new(),
        })
    }

    async fn start_tap(&self) -> AsyncNatsLink {
        let nats = NatsOptions::new(self.server.url());
        let tap = AsyncNatsLink::connect(nats.link).await.unwrap();
        let mut everything = tap.subscribe(">").await.unwrap();
        tap.flush().await.unwrap();
        tokio::spawn(async move { while everything.next().await.is_some() {} });
        tap
    }
}

impl BusFactory for Option<NatsNodes> {
    async fn node(&self, options: BusOptions) -> Arc<dyn MessageBus> {
        let nodes = self.as_ref().expect("nats-server available");
        nodes.tap.get_or_init(|| nodes.start_tap()).await;
        let mut nats = NatsOptions::new(nodes.server.url());
        // The checks are about what a publish promises, not about the 10 ms bound (its own
        // test covers that): a busy test machine must not fail them by pausing a process.
        nats.publish_timeout = Duration::from_secs(1);
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
