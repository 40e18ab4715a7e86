//! Generated runs: a proptest strategy for a whole [`Scenario`] on one backend, workload and
//! fault schedule together, so the simulation searches instead of replaying what its author
//! imagined. proptest shrinks a failing scenario to a minimal one (fewer nodes, subscribers,
//! publishers, messages and faults, shorter and earlier faults).
//!
//! What a generated run holds:
//! - 2 to 5 nodes, 1 to 4 channels;
//! - one to three local subscribers per node on average, some joining late, some leaving early,
//!   some slow readers;
//! - one to two publishers per node on average, each with its own channel, start, pace
//!   (50-300 ms), 5-40 messages and payload size (mostly small, some up to 64 KiB); on
//!   JetStream a failed publish is retried with the same id up to twice;
//! - on Redis, sometimes a subscriber that asks for a channel outside the broker's ACL;
//! - at most one node process that stops and starts again with its node id;
//! - mostly the default subscriber queue, sometimes one of 2 to 15 deliveries, so that slow
//!   readers fall behind;
//! - up to three faults from what the backend supports: a node cut off from the broker both
//!   ways or one way, a latency spike on every link, a broker bounce, crash or silence, a
//!   Sentinel failover, and JetStream's store faults (deleted stream or consumers, lost disk,
//!   late acks). Faults on links overlap freely; faults on the broker are moved apart so that
//!   at most one is under way at a time, and nothing hits the broker after a failover.
//!
//! Packet loss (turmoil's `fail_rate`) is not generated: turmoil drops TCP segments without
//! retransmitting them, which corrupts a stream in a way real TCP never does.

use std::time::Duration;

use proptest::prelude::*;

use super::workload::{Publisher, Restart, Subscriber};
use super::{Backend, Fault, Scenario};

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// A whole run on `backend`.
pub fn scenario(backend: Backend) -> impl Strategy<Value = Scenario> {
    (2_usize..=5, 1_usize..=4)
        .prop_flat_map(move |(nodes, channels)| {
            (
                Just(nodes),
                Just(channels),
                prop::collection::vec(subscriber(nodes, channels), nodes..=nodes * 3),
                prop::collection::vec(refused(nodes), 0..=backend.refuses_channels() as usize),
                prop::collection::vec(publisher(backend, nodes, channels), nodes..=nodes * 2),
                prop::collection::vec(restart(nodes), 0..=1),
                prop::collection::vec(fault(backend, nodes), 0..=3),
                prop_oneof![3 => Just(hubbus::DEFAULT_SUBSCRIBER_QUEUE), 1 => 2_usize..16],
            )
        })
        .prop_map(
            move |(
                nodes,
                channels,
                mut subscribers,
                refused,
                publishers,
                restarts,
                faults,
                subscriber_queue,
            )| {
                subscribers.extend(refused);
                Scenario {
                    name: "generated",
                    backend,
                    nodes,
                    channels,
                    subscribers,
                    publishers,
                    restarts,
                    faults: apart(faults),
                    heal_bound: Duration::from_secs(5),
                    linger: Scenario::linger_for(backend),
                    subscriber_queue,
                }
            },
        )
}

fn subscriber(nodes: usize, channels: usize) -> impl Strategy<Value = Subscriber> {
    (
        0..nodes,
        0..channels,
        prop_oneof![3 => Just(None), 1 => (1_000_u64..8_000).prop_map(Some)],
        prop_oneof![3 => Just(None), 1 => (500_u64..6_000).prop_map(Some)],
        prop_oneof![6 => Just(None), 1 => (2_u64..30).prop_map(Some)],
    )
        .prop_map(|(node, channel, joins, stays, slow)| {
            let joins = joins.map_or(Duration::ZERO, ms);
            Subscriber {
                node,
                channel,
                joins,
                leaves: stays.map(|stays| joins + ms(stays)),
                slow: slow.map(ms),
                refused: false,
            }
        })
}

/// A subscriber that asks for the channel the broker refuses, at some time in the run.
fn refused(nodes: usize) -> impl Strategy<Value = Subscriber> {
    (0..nodes, 0_u64..8_000).prop_map(|(node, joins)| Subscriber::refused(node, ms(joins)))
}

fn publisher(backend: Backend, nodes: usize, channels: usize) -> impl Strategy<Value = Publisher> {
    let retries: u32 = if backend == Backend::JetStream { 2 } else { 0 };
    (
        0..nodes,
        0..channels,
        1_000_u64..3_000,
        5_u32..40,
        50_u64..300,
        prop_oneof![9 => 0_usize..256, 1 => 1_024_usize..65_536],
        0..=retries,
    )
        .prop_map(
            |(node, channel, start, messages, interval, payload, retries)| Publisher {
                node,
                channel,
                start: ms(start),
                messages,
                interval: ms(interval),
                payload,
                retries,
            },
        )
}

fn restart(nodes: usize) -> impl Strategy<Value = Restart> {
    (0..nodes, 2_000_u64..10_000, 300_u64..4_000).prop_map(|(node, at, down_for)| Restart {
        node,
        at: ms(at),
        down_for: ms(down_for),
    })
}

/// One fault the backend supports.
fn fault(backend: Backend, nodes: usize) -> BoxedStrategy<Fault> {
    let at = || (2_000_u64..12_000).prop_map(ms);
    let lasting = || (500_u64..6_000).prop_map(ms);
    let mut kinds: Vec<BoxedStrategy<Fault>> = vec![
        (0..nodes, at(), lasting())
            .prop_map(|(node, at, heal_after)| Fault::PartitionNode {
                node,
                at,
                heal_after,
            })
            .boxed(),
        (0..nodes, at(), lasting())
            .prop_map(|(node, at, heal_after)| Fault::OneWay {
                node,
                at,
                heal_after,
            })
            .boxed(),
        (
            at(),
            (500_u64..3_000).prop_map(ms),
            (20_u64..200).prop_map(ms),
        )
            .prop_map(|(at, lasting, latency)| Fault::LatencySpike {
                at,
                lasting,
                latency,
            })
            .boxed(),
        at().prop_map(|at| Fault::BounceBroker { at }).boxed(),
        (at(), lasting())
            .prop_map(|(at, down_for)| Fault::CrashBroker { at, down_for })
            .boxed(),
        (at(), lasting())
            .prop_map(|(at, silent_for)| Fault::WedgeBroker { at, silent_for })
            .boxed(),
    ];
    if backend == Backend::RedisSentinel {
        kinds.push(at().prop_map(|at| Fault::SentinelFailover { at }).boxed());
    }
    if backend == Backend::RedisSharded {
        kinds.push(at().prop_map(|at| Fault::ShardFailover { at }).boxed());
        kinds.push(at().prop_map(|at| Fault::SlotMigration { at }).boxed());
    }
    if backend == Backend::JetStream {
        kinds.push(at().prop_map(|at| Fault::VanishStream { at }).boxed());
        kinds.push(at().prop_map(|at| Fault::VanishConsumers { at }).boxed());
        kinds.push(
            (at(), lasting())
                .prop_map(|(at, down_for)| Fault::DiskLoss { at, down_for })
                .boxed(),
        );
        kinds.push(
            (at(), (100_u64..3_000).prop_map(ms), lasting())
                .prop_map(|(at, delay, lasting)| Fault::SlowAcks { at, delay, lasting })
                .boxed(),
        );
    }
    proptest::strategy::Union::new(kinds).boxed()
}

/// The same fault, starting at `at`.
fn starting_at(fault: Fault, at: Duration) -> Fault {
    match fault {
        Fault::None => Fault::None,
        Fault::BounceBroker { .. } => Fault::BounceBroker { at },
        Fault::CrashBroker { down_for, .. } => Fault::CrashBroker { at, down_for },
        Fault::PartitionNode {
            node, heal_after, ..
        } => Fault::PartitionNode {
            node,
            at,
            heal_after,
        },
        Fault::OneWay {
            node, heal_after, ..
        } => Fault::OneWay {
            node,
            at,
            heal_after,
        },
        Fault::LatencySpike {
            lasting, latency, ..
        } => Fault::LatencySpike {
            at,
            lasting,
            latency,
        },
        Fault::WedgeBroker { silent_for, .. } => Fault::WedgeBroker { at, silent_for },
        Fault::SentinelFailover { .. } => Fault::SentinelFailover { at },
        Fault::ShardFailover { .. } => Fault::ShardFailover { at },
        Fault::SlotMigration { .. } => Fault::SlotMigration { at },
        Fault::VanishStream { .. } => Fault::VanishStream { at },
        Fault::VanishConsumers { .. } => Fault::VanishConsumers { at },
        Fault::DiskLoss { down_for, .. } => Fault::DiskLoss { at, down_for },
        Fault::SlowAcks { delay, lasting, .. } => Fault::SlowAcks { at, delay, lasting },
    }
}

/// Moves the faults that hit the broker apart (each starts a second after the one before
/// healed) and drops those after a failover (Sentinel's or a shard's), whose broker is another
/// host; link faults stay as they are.
fn apart(faults: Vec<Fault>) -> Vec<Fault> {
    let start = |fault: &Fault| fault.touches(1).map_or(Duration::ZERO, |(at, _)| at);
    let (mut broker, links): (Vec<Fault>, Vec<Fault>) =
        faults.into_iter().partition(Fault::hits_broker);
    broker.sort_by_key(start);
    let mut placed: Vec<Fault> = Vec::new();
    for fault in broker {
        let fault = match placed.last() {
            Some(Fault::SentinelFailover { .. } | Fault::ShardFailover { .. }) => continue,
            Some(previous) => {
                let free = previous.healed_at().unwrap_or_default() + Duration::from_secs(1);
                starting_at(fault, start(&fault).max(free))
            }
            None => fault,
        };
        placed.push(fault);
    }
    placed.extend(links);
    placed
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::test_runner::{Config, RngSeed, TestRunner};

    #[test]
    fn generated_scenarios_are_valid_and_keep_broker_faults_apart() {
        let config = Config {
            rng_seed: RngSeed::Fixed(7),
            ..Config::default()
        };
        for backend in Backend::ALL {
            let mut runner = TestRunner::new(config.clone());
            runner
                .run(&scenario(backend), |scenario| {
                    scenario.validate().map_err(TestCaseError::fail)?;
                    let failovers = scenario
                        .faults
                        .iter()
                        .filter(|f| {
                            matches!(
                                f,
                                Fault::SentinelFailover { .. } | Fault::ShardFailover { .. }
                            )
                        })
                        .count();
                    prop_assert!(failovers <= 1);
                    prop_assert!(scenario.end() < Duration::from_secs(60));
                    Ok(())
                })
                .unwrap();
        }
    }

    #[test]
    fn apart_moves_overlapping_broker_faults_and_keeps_link_faults() {
        let second = Duration::from_secs(1);
        let faults = apart(vec![
            Fault::CrashBroker {
                at: 3 * second,
                down_for: 2 * second,
            },
            Fault::PartitionNode {
                node: 0,
                at: 4 * second,
                heal_after: second,
            },
            Fault::BounceBroker { at: 4 * second },
        ]);
        assert_eq!(
            faults,
            vec![
                Fault::CrashBroker {
                    at: 3 * second,
                    down_for: 2 * second,
                },
                Fault::BounceBroker { at: 6 * second },
                Fault::PartitionNode {
                    node: 0,
                    at: 4 * second,
                    heal_after: second,
                },
            ]
        );
    }
}
