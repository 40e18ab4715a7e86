//! The Redis bus in the deterministic simulation: three nodes on a fake Redis, one fault per
//! scenario, the invariants of `hubbus_sim::harness` checked for several seeds each.
//!
//! `HUBBUS_TEST_SIM_SEED=<n>` replays one seed; `HUBBUS_TEST_SIM_SEEDS=<count>` runs more seeds
//! (a soak, see docs/testing.md).

use std::time::Duration;

use hubbus_sim::harness::{Fault, Scenario, run, seeds};

/// Seeds per scenario in the default test run.
const DEFAULT_SEEDS: u64 = 4;

fn holds_for_every_seed(scenario: Scenario) {
    for seed in seeds(DEFAULT_SEEDS) {
        let outcome = run(&scenario, seed).unwrap_or_else(|error| panic!("{error}"));
        if let Err(violation) = outcome.check(&scenario) {
            let trace = outcome.trace();
            let tail = trace[trace.len().saturating_sub(40)..].join("\n");
            panic!("{violation}\nlast events:\n{tail}");
        }
    }
}

#[test]
fn without_faults_every_message_reaches_every_node() {
    holds_for_every_seed(Scenario::new("no fault", Fault::None));
}

#[test]
fn broker_restart_loses_nothing_published_after_recovery() {
    holds_for_every_seed(Scenario::new(
        "broker bounce",
        Fault::BounceBroker {
            at: Duration::from_secs(3),
        },
    ));
}

#[test]
fn broker_crash_then_restart_later() {
    holds_for_every_seed(Scenario::new(
        "broker crash",
        Fault::CrashBroker {
            at: Duration::from_secs(3),
            down_for: Duration::from_secs(3),
        },
    ));
}

#[test]
fn partitioned_node_catches_up_after_repair() {
    holds_for_every_seed(Scenario::new(
        "node partition",
        Fault::PartitionNode {
            node: 1,
            at: Duration::from_secs(3),
            heal_after: Duration::from_secs(3),
        },
    ));
}

#[test]
fn silent_broker_is_detected_and_replaced() {
    holds_for_every_seed(Scenario::new(
        "silent broker",
        Fault::WedgeBroker {
            at: Duration::from_secs(3),
            silent_for: Duration::from_secs(3),
        },
    ));
}

#[test]
fn sentinel_failover_moves_every_node_to_the_new_master() {
    holds_for_every_seed(Scenario::new(
        "sentinel failover",
        Fault::SentinelFailover {
            at: Duration::from_secs(3),
        },
    ));
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let scenario = Scenario::new(
        "determinism",
        Fault::CrashBroker {
            at: Duration::from_secs(2),
            down_for: Duration::from_secs(2),
        },
    );
    let first = run(&scenario, 42).unwrap().trace();
    let second = run(&scenario, 42).unwrap().trace();
    assert!(first.len() > 100, "a run with real traffic");
    if let Some(at) = (0..first.len().max(second.len())).find(|&i| first.get(i) != second.get(i)) {
        panic!(
            "seed 42 gave two different traces; first difference at event {at}:\n  {:?}\n  {:?}",
            first.get(at),
            second.get(at)
        );
    }
    let other = run(&scenario, 43).unwrap().trace();
    assert_ne!(first, other, "a different seed gives a different run");
}
