//! The conformance suite over NATS JetStream: every check gets its own `nats-server -js` on a
//! free port with its own store, and every node is a [`JetStreamBus`] on its own async-nats
//! connection to it, all nodes sharing the default stream. JetStream promises at-least-once
//! delivery in per-publisher order, redelivers what a subscriber naks, and delivers to a new
//! subscriber only what is published after it subscribed.

mod conformance;
mod support;

use std::sync::Arc;
use std::time::Duration;

use hubbus::backend::nats::jetstream::JetStreamBus;
use hubbus::backend::nats::{AsyncNatsLink, JetStreamOptions, NatsOptions};
use hubbus::{BusOptions, Guarantee, MessageBus};

use conformance::{BusFactory, Promises};
use support::{NatsServer, eventually};

/// One server per check; nodes wait until connected so checks start from a working bus.
struct JetStreamNodes {
    server: NatsServer,
}

impl JetStreamNodes {
    fn new() -> Option<Self> {
        NatsServer::start().map(|server| JetStreamNodes { server })
    }
}

impl BusFactory for Option<JetStreamNodes> {
    async fn node(&self, options: BusOptions) -> Arc<dyn MessageBus> {
        let nodes = self.as_ref().expect("nats-server available");
        let mut nats = NatsOptions::new(nodes.server.url());
        // The defaults, ack_wait (30 s) included: no check waits that long, so nothing a check
        // leaves unacked comes back while it runs.
        nats.jetstream = Some(JetStreamOptions::default());
        let link = AsyncNatsLink::connect(nats.link.clone()).await.unwrap();
        let bus = JetStreamBus::start(options, nats, Arc::new(link))
            .await
            .unwrap();
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

const JETSTREAM: Promises = Promises {
    delivers: true,
    ordered_per_publisher: true,
    guarantee: Guarantee::AtLeastOnce,
    replays_earlier_messages: false,
    deadline: Duration::from_secs(10),
    virtual_time: false,
};

conformance::conformance_tests!(JetStreamNodes::new(), JETSTREAM);
