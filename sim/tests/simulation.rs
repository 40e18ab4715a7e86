//! Every backend in the deterministic simulation (Redis, Redis via Sentinel, NATS Core and
//! JetStream, the NATS ones over the wire link): three hub nodes with local subscribers on
//! fake brokers, one fault per scenario, the invariants of `hubbus_sim::harness` checked for
//! several seeds each, and the same seed giving the same trace on every backend. JetStream also
//! runs the faults of its store: deleted consumers, a deleted stream, a lost disk, late acks.
//!
//! `HUBBUS_TEST_SIM_SEED=<n>` replays one seed on any backend; `HUBBUS_TEST_SIM_SEEDS=<count>`
//! runs more seeds (a soak, see docs/testing.md).

use std::time::Duration;

use hubbus_sim::harness::{Backend, Fault, Scenario, holds_for_every_seed, run};

/// Seeds per scenario in the default test run.
const DEFAULT_SEEDS: u64 = 3;

/// When every fault starts.
const FAULT_AT: Duration = Duration::from_secs(3);
/// How long a fault lasts where it lasts.
const FAULT_FOR: Duration = Duration::from_secs(3);
/// How long a node is cut off or a broker stays silent: long enough for every backend to
/// notice (NATS: two unanswered pings a second apart, after up to a second of quiet).
const SILENT_FOR: Duration = hubbus_sim::harness::NOTICE_AFTER;

fn holds(backend: Backend, fault: Fault) {
    let scenario = Scenario::new(backend, fault);
    for summary in holds_for_every_seed(&scenario, DEFAULT_SEEDS) {
        // The run did what it was for: messages were confirmed and required to arrive.
        assert!(summary.confirmed > 0 && summary.required > 0, "{summary:?}");
    }
}

/// The same seed gives the same trace; another seed gives another.
fn deterministic(backend: Backend) {
    let scenario = Scenario::new(
        backend,
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
            "{backend}: seed 42 gave two different traces; first difference at event {at}:\n  \
             {:?}\n  {:?}",
            first.get(at),
            second.get(at)
        );
    }
    let other = run(&scenario, 43).unwrap().trace();
    assert_ne!(first, other, "a different seed gives a different run");
}

/// The scenarios every backend runs, as tests of module `$name`.
macro_rules! scenarios {
    ($name:ident, $backend:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn without_faults_every_message_reaches_every_subscriber() {
                holds($backend, Fault::None);
            }

            #[test]
            fn broker_restart() {
                holds($backend, Fault::BounceBroker { at: FAULT_AT });
            }

            #[test]
            fn broker_crash_then_restart_later() {
                holds(
                    $backend,
                    Fault::CrashBroker {
                        at: FAULT_AT,
                        down_for: FAULT_FOR,
                    },
                );
            }

            #[test]
            fn partitioned_node_catches_up_after_repair() {
                holds(
                    $backend,
                    Fault::PartitionNode {
                        node: 1,
                        at: FAULT_AT,
                        heal_after: SILENT_FOR,
                    },
                );
            }

            #[test]
            fn silent_broker_is_detected_and_replaced() {
                holds(
                    $backend,
                    Fault::WedgeBroker {
                        at: FAULT_AT,
                        silent_for: SILENT_FOR,
                    },
                );
            }

            #[test]
            fn the_same_seed_gives_the_same_trace() {
                deterministic($backend);
            }
        }
    };
}

scenarios!(redis, Backend::Redis);
scenarios!(redis_sentinel, Backend::RedisSentinel);
scenarios!(redis_sharded, Backend::RedisSharded);
scenarios!(nats_core, Backend::NatsCore);
scenarios!(jetstream, Backend::JetStream);

/// Faults of the JetStream store: what the bus must survive without loss (deleted consumers,
/// late acks), and what loses data by design (a deleted stream, a lost disk) but must not stop
/// delivery of what comes after.
mod jetstream_store {
    use super::*;

    #[test]
    fn deleted_consumers_are_created_again_without_loss() {
        holds(Backend::JetStream, Fault::VanishConsumers { at: FAULT_AT });
    }

    #[test]
    fn a_deleted_stream_is_created_again_and_delivery_resumes() {
        holds(Backend::JetStream, Fault::VanishStream { at: FAULT_AT });
    }

    #[test]
    fn a_server_back_without_its_disk_is_used_again() {
        holds(
            Backend::JetStream,
            Fault::DiskLoss {
                at: FAULT_AT,
                down_for: FAULT_FOR,
            },
        );
    }

    #[test]
    fn late_publish_acks_lose_nothing_that_was_confirmed() {
        holds(
            Backend::JetStream,
            Fault::SlowAcks {
                at: FAULT_AT,
                delay: Duration::from_secs(3),
                lasting: FAULT_FOR,
            },
        );
    }

    #[test]
    fn store_faults_need_jetstream() {
        for backend in [Backend::Redis, Backend::RedisSentinel, Backend::NatsCore] {
            let scenario = Scenario::new(backend, Fault::VanishStream { at: FAULT_AT });
            assert!(run(&scenario, 1).is_err(), "{backend}");
        }
    }
}

#[test]
fn sentinel_failover_moves_every_node_to_the_new_master() {
    holds(
        Backend::RedisSentinel,
        Fault::SentinelFailover { at: FAULT_AT },
    );
}

/// Sharded Pub/Sub on a Redis Cluster: the shard under the nodes' channels fails over to
/// another node, or the channels' slots move; every node follows by itself.
mod redis_cluster {
    use super::*;

    /// Why the nodes' sessions ended in one run of `fault`.
    fn session_ends(fault: Fault) -> Vec<String> {
        let run = run(&Scenario::new(Backend::RedisSharded, fault), 7).unwrap();
        run.events
            .into_iter()
            .filter_map(|event| match event {
                hubbus_sim::harness::Event::Health {
                    connected: false,
                    reason,
                    ..
                } => Some(reason),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_failed_master_is_replaced_by_the_node_that_took_its_slots() {
        holds(Backend::RedisSharded, Fault::ShardFailover { at: FAULT_AT });
    }

    #[test]
    fn subscriptions_and_publishes_follow_migrated_slots() {
        holds(Backend::RedisSharded, Fault::SlotMigration { at: FAULT_AT });
        // The run followed the move, not some other failure: subscribers were told by the
        // old owner, or a publish was redirected.
        let ends = session_ends(Fault::SlotMigration { at: FAULT_AT });
        assert!(
            ends.iter()
                .any(|reason| reason.contains("its slot moved") || reason.contains("slot map")),
            "{ends:?}"
        );
    }

    #[test]
    fn cluster_faults_need_a_cluster() {
        for fault in [
            Fault::ShardFailover { at: FAULT_AT },
            Fault::SlotMigration { at: FAULT_AT },
        ] {
            for backend in [Backend::Redis, Backend::RedisSentinel, Backend::NatsCore] {
                assert!(run(&Scenario::new(backend, fault), 1).is_err(), "{backend}");
            }
        }
    }
}

#[test]
fn a_failover_needs_a_sentinel() {
    let scenario = Scenario::new(Backend::Redis, Fault::SentinelFailover { at: FAULT_AT });
    assert!(run(&scenario, 1).is_err());
}
