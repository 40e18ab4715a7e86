//! The Redis bus's reconnect pacing in the simulation: a session counts as healthy only once it
//! answered a liveness probe, and only a healthy session resets the backoff.
//!
//! A server that accepts connections and drops them soon after (a proxy in front of a dead
//! Redis, a refusal that ends every session) must not be hammered every 50 ms forever: while
//! sessions keep dying young the pauses grow to the backoff's ceiling. A session that proved
//! itself healthy and then broke is retried at once, as after any ordinary restart.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use hubbus::backend::redis::{RedisBus, RedisOptions, RedisTarget};
use hubbus::transport::TurmoilTcp;
use hubbus::{BusMetrics, BusOptions, IdGenerator, MessageBus, NodeId};
use hubbus_sim::harness::SimClock;
use hubbus_sim::redis::{FakeRedisControl, FakeRedisOptions, serve_redis};
use tokio::time::Instant;

/// How long each session lives in the flapping phase: well under the liveness interval (1 s),
/// so none of them answers a probe.
const SESSION_LIFE: Duration = Duration::from_millis(100);
/// How long the flapping phase lasts.
const FLAPPING: Duration = Duration::from_secs(20);

/// Waits until `bus` reports `connected` (or not), in steps of simulated time.
async fn until_connected(bus: &RedisBus, connected: bool) {
    while bus.health().is_connected() != connected {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// What the node saw.
#[derive(Debug, Default)]
struct Seen {
    /// Sessions that came up during the flapping phase.
    flapping_sessions: u32,
    /// After each drop of a session that had answered its probe: how long until connected again.
    recoveries: Vec<Duration>,
}

async fn node(control: FakeRedisControl, seen: Arc<std::sync::Mutex<Seen>>) -> turmoil::Result {
    let options = BusOptions {
        node_id: NodeId::new("node")?,
        ids: IdGenerator::seeded(11, Arc::new(SimClock)),
        metrics: BusMetrics::unregistered("sim")?,
        ..BusOptions::default()
    };
    let mut redis = RedisOptions::new(RedisTarget::parse("redis://redis:6379")?);
    redis.connector = Arc::new(TurmoilTcp);
    let bus = RedisBus::start(options, redis)?;

    // Every session is dropped shortly after it came up.
    let end = Instant::now() + FLAPPING;
    let mut flapping_sessions = 0;
    while Instant::now() < end {
        until_connected(&bus, true).await;
        flapping_sessions += 1;
        tokio::time::sleep(SESSION_LIFE).await;
        control.disconnect_all();
        until_connected(&bus, false).await;
    }

    // Sessions that stay long enough to answer a probe, then break.
    let mut recoveries = Vec::new();
    for _ in 0..5 {
        until_connected(&bus, true).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        control.disconnect_all();
        let dropped = Instant::now();
        until_connected(&bus, false).await;
        until_connected(&bus, true).await;
        recoveries.push(dropped.elapsed());
    }
    bus.close().await;
    *seen.lock().unwrap() = Seen {
        flapping_sessions,
        recoveries,
    };
    Ok(())
}

#[test]
fn backoff_resets_only_after_a_session_proved_healthy() {
    let options = FakeRedisOptions::new();
    let control = options.control();
    let mut sim = turmoil::Builder::new()
        .rng_seed(3)
        .epoch(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        .simulation_duration(Duration::from_secs(120))
        // Fast hops: the time to reconnect is then mostly the backoff's pause.
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(1))
        .build();
    sim.host("redis", move || serve_redis(6379, options.clone()));
    let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
    let record = seen.clone();
    sim.client("node", node(control, record));
    sim.run().unwrap();

    let seen = seen.lock().unwrap();
    // With the backoff reset at every connect, a cycle is the session's 100 ms, a connect, and a
    // pause of at most 50 ms: over 120 sessions in 20 s. Growing to the 1 s ceiling after five
    // failures, the pauses average 0.5 s: about 35 sessions.
    assert!(
        (5..60).contains(&seen.flapping_sessions),
        "{} sessions came up in {FLAPPING:?} of sessions dying young",
        seen.flapping_sessions
    );
    // A healthy session resets it: the pause after its loss is at most the first ceiling
    // (50 ms), plus about 20 ms of round trips to reconnect. Without the reset, each pause could
    // reach 1 s.
    for recovery in &seen.recoveries {
        assert!(
            *recovery < Duration::from_millis(100),
            "recoveries after healthy sessions: {:?}",
            seen.recoveries
        );
    }
}
