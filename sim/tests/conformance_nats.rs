//! The NATS Core and JetStream conformance suites on the fake NATS server inside turmoil: every
//! check runs as a client of its own simulation (one fake server with JetStream on its own
//! store, as `nats-server -js`), and every node is a `NatsCoreBus` or `JetStreamBus` over its
//! own `WireLink` over `TurmoilTcp`, each link with a seed of its own.
//!
//! The same checks and promises run on a real `nats-server` over the production link
//! (`tests/conformance_nats.rs`, `tests/conformance_jetstream.rs`) and over the wire link
//! (`tests/conformance_nats_wire.rs`, `tests/conformance_jetstream_wire.rs`). Passing all three
//! is part of how the fake's fidelity is measured (docs/testing.md, "Fidelity of the fakes"):
//! a check that fails here only is a difference between the fake and nats-server.

#[path = "../../tests/conformance/mod.rs"]
mod conformance;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use hubbus::backend::nats::{NatsLink, NatsOptions, WireLink};
use hubbus::transport::TurmoilTcp;
use hubbus::{Guarantee, MessageBus};
use hubbus_sim::nats::jetstream::JetStreamStore;
use hubbus_sim::nats::{DEFAULT_PORT, FakeNatsOptions, serve_nats};
use tokio::sync::OnceCell;

use conformance::Promises;

/// A fixed seed: a failure replays exactly.
const SEED: u64 = 1;

/// Where the nodes find the fake server.
const URL: &str = "nats://nats:4222";

/// A simulation with one fake NATS host, `nats:4222`, with JetStream on a fresh store.
fn simulation() -> turmoil::Sim<'static> {
    let mut sim = turmoil::Builder::new()
        .rng_seed(SEED)
        .simulation_duration(Duration::from_secs(300))
        // Loopback-like latency, as on the real server the suite also runs on: the checks are
        // about what a publish promises, not about how the bus copes with a slow network.
        .max_message_latency(Duration::from_millis(2))
        .build();
    let options = FakeNatsOptions::new().with_jetstream(JetStreamStore::new());
    sim.host("nats", move || serve_nats(DEFAULT_PORT, options.clone()));
    sim
}

/// Hands each link of one check a seed of its own (links sharing a server need distinct
/// inboxes), in the order the check connects them, so a run replays.
#[derive(Debug, Default)]
struct Seeds(AtomicU64);

impl Seeds {
    /// A wire link to the fake server with the next seed.
    async fn link(&self, nats: &NatsOptions) -> Arc<dyn NatsLink> {
        let seed = SEED * 1000 + self.0.fetch_add(1, Ordering::Relaxed);
        let link = WireLink::connect(nats.link.clone(), Arc::new(TurmoilTcp), seed)
            .await
            .expect("a wire link");
        Arc::new(link)
    }
}

/// Waits, in simulated time, until `bus` says it is connected, so checks start from a working
/// bus.
async fn until_connected(bus: &dyn MessageBus) {
    let connected = tokio::time::timeout(Duration::from_secs(10), async {
        while !bus.health().is_connected() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(
        connected.is_ok(),
        "node did not connect: {:?}",
        bus.health()
    );
}

/// NATS Core: the promises of `tests/nats_nodes/mod.rs`'s `NATS_CORE`, at-most-once delivery
/// in per-publisher order while connected.
const NATS_CORE: Promises = Promises {
    delivers: true,
    ordered_per_publisher: true,
    guarantee: Guarantee::AtMostOnce,
    replays_earlier_messages: false,
    headers_in_order: false,
    deadline: Duration::from_secs(10),
    virtual_time: false,
};

/// JetStream: the promises of `tests/nats_nodes/mod.rs`'s `JETSTREAM`, at-least-once delivery
/// in per-publisher order; a nak redelivers; a new subscriber gets only what is published
/// after it subscribed.
const JETSTREAM: Promises = Promises {
    delivers: true,
    ordered_per_publisher: true,
    guarantee: Guarantee::AtLeastOnce,
    replays_earlier_messages: false,
    headers_in_order: false,
    deadline: Duration::from_secs(10),
    virtual_time: false,
};

/// The NATS Core suite.
mod nats_core {
    use super::*;
    use hubbus::backend::nats::NatsCoreBus;
    use hubbus::{BusOptions, MessageBus};

    use crate::conformance::BusFactory;

    /// NATS Core nodes on the simulation's fake server, with a plain `>` subscriber beside
    /// them, as on the real server (see `tests/nats_nodes/mod.rs`): how the bus confirms
    /// publishes and subscriptions must not depend on nobody else listening.
    #[derive(Default)]
    pub struct FakeCoreNodes {
        seeds: Seeds,
        /// The `>` subscriber, started with the first node; its task reads everything it gets.
        tap: OnceCell<Arc<dyn NatsLink>>,
    }

    impl FakeCoreNodes {
        async fn start_tap(&self) -> Arc<dyn NatsLink> {
            let tap = self.seeds.link(&NatsOptions::new(URL)).await;
            let mut everything = tap.subscribe(">").await.expect("subscribe to >");
            tokio::spawn(async move { while everything.next().await.is_some() {} });
            tap
        }
    }

    impl BusFactory for FakeCoreNodes {
        async fn node(&self, options: BusOptions) -> Arc<dyn MessageBus> {
            self.tap.get_or_init(|| self.start_tap()).await;
            let mut nats = NatsOptions::new(URL);
            // As on the real server: the checks are about what a publish promises, not about
            // the 10 ms bound, which `nats_server_faults.rs` checks.
            nats.publish_timeout = Duration::from_secs(1);
            let bus = NatsCoreBus::start(options, nats.clone(), self.seeds.link(&nats).await)
                .expect("a NATS Core bus");
            until_connected(&bus).await;
            Arc::new(bus)
        }
    }

    crate::conformance::conformance_tests!(
        sim: simulation(),
        FakeCoreNodes::default(),
        NATS_CORE,
    );
}

/// The JetStream suite.
mod jetstream {
    use super::*;
    use hubbus::backend::nats::{JetStreamBus, JetStreamOptions};
    use hubbus::{BusOptions, MessageBus};

    use crate::conformance::BusFactory;

    /// JetStream nodes on the simulation's fake server, all sharing the default stream.
    #[derive(Default)]
    pub struct FakeJetStreamNodes {
        seeds: Seeds,
    }

    impl BusFactory for FakeJetStreamNodes {
        async fn node(&self, options: BusOptions) -> Arc<dyn MessageBus> {
            let mut nats = NatsOptions::new(URL);
            // The defaults, ack_wait (30 s) included, as on the real server: no check waits
            // that long, so nothing a check leaves unacked comes back while it runs.
            nats.jetstream = Some(JetStreamOptions::default());
            let bus = JetStreamBus::start(options, nats.clone(), self.seeds.link(&nats).await)
                .await
                .expect("a JetStream bus");
            until_connected(&bus).await;
            Arc::new(bus)
        }
    }

    crate::conformance::conformance_tests!(
        sim: simulation(),
        FakeJetStreamNodes::default(),
        JETSTREAM,
    );
}
