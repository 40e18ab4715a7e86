//! Two processes started at the same moment with one node id, on the fake NATS server inside
//! turmoil: both must report it in their health, whichever of them ends up holding the id.
//!
//! On a real server the order in which the two processes ask and listen is left to the
//! machine; here every seed fixes another order of the messages (link latencies up to 2 ms),
//! so the seeds below walk through the interleavings deterministically: the one whose probe
//! window closes first and announces itself, the one that hears that announcement while
//! still asking, and the holder that must know its twin from the question it heard while it
//! was asking too.

use std::sync::Arc;
use std::time::Duration;

use hubbus::backend::nats::{JetStreamBus, JetStreamOptions, NatsCoreBus, NatsOptions, WireLink};
use hubbus::transport::TurmoilTcp;
use hubbus::{BusMetrics, BusOptions, IdGenerator, MessageBus, NodeId};
use hubbus_sim::harness::SimClock;
use hubbus_sim::nats::jetstream::JetStreamStore;
use hubbus_sim::nats::{DEFAULT_PORT, FakeNatsOptions, serve_nats};

/// Seeds per backend: each orders the two starts' messages differently.
const SEEDS: u64 = 12;

/// How long both have to report: three announcement intervals (5 s each) of simulated time.
const REPORTED_WITHIN: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, Debug)]
enum Kind {
    Core,
    JetStream,
}

/// One process's bus with node id `twin`, on its own link (`instance` seeds both).
async fn start(kind: Kind, seed: u64, instance: u64) -> Arc<dyn MessageBus> {
    let options = BusOptions {
        node_id: NodeId::new("twin").expect("a valid node id"),
        metrics: BusMetrics::unregistered("twin").expect("metrics"),
        ids: IdGenerator::seeded(seed * 10 + instance, Arc::new(SimClock)),
        ..BusOptions::default()
    };
    let mut nats = NatsOptions::new("nats://nats:4222");
    let link = Arc::new(
        WireLink::connect(
            nats.link.clone(),
            Arc::new(TurmoilTcp),
            seed * 10 + instance,
        )
        .await
        .expect("a wire link"),
    );
    match kind {
        Kind::Core => Arc::new(NatsCoreBus::start(options, nats, link).expect("a NATS Core bus")),
        Kind::JetStream => {
            nats.jetstream = Some(JetStreamOptions::default());
            Arc::new(
                JetStreamBus::start(options, nats, link)
                    .await
                    .expect("both pass the start check when they start together"),
            )
        }
    }
}

fn reports(bus: &dyn MessageBus) -> bool {
    bus.health()
        .reason
        .is_some_and(|reason| reason.contains("another live process"))
}

fn both_report(kind: Kind, seed: u64) {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(60))
        .max_message_latency(Duration::from_millis(2))
        .build();
    let options = FakeNatsOptions::new().with_jetstream(JetStreamStore::new());
    sim.host("nats", move || serve_nats(DEFAULT_PORT, options.clone()));
    sim.client("twins", async move {
        let (a, b) = tokio::join!(start(kind, seed, 1), start(kind, seed, 2));
        let reported = tokio::time::timeout(REPORTED_WITHIN, async {
            while !(reports(a.as_ref()) && reports(b.as_ref())) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(
            reported.is_ok(),
            "{kind:?}, seed {seed}: not both report the shared node id: {:?} / {:?}",
            a.health(),
            b.health()
        );
        a.close().await;
        b.close().await;
        Ok(())
    });
    sim.run().expect("the simulation runs");
}

#[test]
fn nats_core_twins_started_together_both_report() {
    for seed in 1..=SEEDS {
        both_report(Kind::Core, seed);
    }
}

#[test]
fn jetstream_twins_started_together_both_report() {
    for seed in 1..=SEEDS {
        both_report(Kind::JetStream, seed);
    }
}
