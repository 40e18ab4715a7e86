//! The conformance suite's factories for the NATS backends, over either link: every check gets
//! its own `nats-server -js` on a free port with its own store, and every node is a bus on its
//! own link to it, async-nats or the wire link ([`LinkKind`]). The same checks and promises run
//! over both, which is how the wire link's fidelity to the production link is measured.
//!
//! NATS Core checks run with a plain `>` subscriber on the server beside the nodes (as a
//! monitoring tap in the account would be): how the bus confirms publishes and subscriptions
//! must not depend on nobody else listening.
#![allow(
    dead_code,
    reason = "each conformance binary uses one of the factories"
)]

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use hubbus::backend::nats::jetstream::JetStreamBus;
use hubbus::backend::nats::{JetStreamOptions, NatsCoreBus, NatsLink, NatsOptions};
use hubbus::{BusOptions, Guarantee, MessageBus};
use tokio::sync::OnceCell;

use crate::conformance::{BusFactory, Promises};
use crate::support::links::LinkKind;
use crate::support::{NatsServer, eventually};

/// NATS Core: at-most-once delivery in per-publisher order while connected.
pub const NATS_CORE: Promises = Promises {
    delivers: true,
    ordered_per_publisher: true,
    guarantee: Guarantee::AtMostOnce,
    replays_earlier_messages: false,
    headers_in_order: false,
    deadline: Duration::from_secs(10),
    virtual_time: false,
};

/// JetStream: at-least-once delivery in per-publisher order; a nak redelivers; a new subscriber
/// gets only what is published after it subscribed.
pub const JETSTREAM: Promises = Promises {
    delivers: true,
    ordered_per_publisher: true,
    guarantee: Guarantee::AtLeastOnce,
    replays_earlier_messages: false,
    headers_in_order: false,
    deadline: Duration::from_secs(10),
    virtual_time: false,
};

/// Waits until `bus` says it is connected, so checks start from a working bus.
async fn until_connected(bus: &dyn MessageBus) {
    assert!(
        eventually(Duration::from_secs(10), || bus.health().is_connected()).await,
        "node did not connect: {:?}",
        bus.health()
    );
}

/// NATS Core nodes over links of one kind, on one server per check.
pub struct CoreNodes {
    server: NatsServer,
    kind: LinkKind,
    /// The `>` subscriber, started with the first node; its task reads everything it gets.
    tap: OnceCell<Arc<dyn NatsLink>>,
}

impl CoreNodes {
    pub fn new(kind: LinkKind) -> Option<Self> {
        NatsServer::start().map(|server| CoreNodes {
            server,
            kind,
            tap: OnceCell::new(),
        })
    }

    async fn start_tap(&self) -> Arc<dyn NatsLink> {
        let nats = NatsOptions::new(self.server.url());
        let tap = self.kind.connect(nats.link).await.unwrap();
        let mut everything = tap.subscribe(">").await.unwrap();
        tokio::spawn(async move { while everything.next().await.is_some() {} });
        tap
    }
}

impl BusFactory for Option<CoreNodes> {
    async fn node(&self, options: BusOptions) -> Arc<dyn MessageBus> {
        let nodes = self.as_ref().expect("nats-server available");
        nodes.tap.get_or_init(|| nodes.start_tap()).await;
        let mut nats = NatsOptions::new(nodes.server.url());
        // The checks are about what a publish promises, not about the 10 ms bound (its own
        // test covers that): a busy test machine must not fail them by pausing a process.
        nats.publish_timeout = Duration::from_secs(1);
        let link = nodes.kind.connect(nats.link.clone()).await.unwrap();
        let bus = NatsCoreBus::start(options, nats, link).unwrap();
        until_connected(&bus).await;
        Arc::new(bus)
    }

    fn available(&self) -> bool {
        self.is_some()
    }
}

/// JetStream nodes over links of one kind, on one server per check, all sharing the default
/// stream.
pub struct JetStreamNodes {
    server: NatsServer,
    kind: LinkKind,
}

impl JetStreamNodes {
    pub fn new(kind: LinkKind) -> Option<Self> {
        NatsServer::start().map(|server| JetStreamNodes { server, kind })
    }
}

impl BusFactory for Option<JetStreamNodes> {
    async fn node(&self, options: BusOptions) -> Arc<dyn MessageBus> {
        let nodes = self.as_ref().expect("nats-server available");
        let mut nats = NatsOptions::new(nodes.server.url());
        // The defaults, ack_wait (30 s) included: no check waits that long, so nothing a check
        // leaves unacked comes back while it runs.
        nats.jetstream = Some(JetStreamOptions::default());
        let link = nodes.kind.connect(nats.link.clone()).await.unwrap();
        let bus = JetStreamBus::start(options, nats, link).await.unwrap();
        until_connected(&bus).await;
        Arc::new(bus)
    }

    fn available(&self) -> bool {
        self.is_some()
    }
}
