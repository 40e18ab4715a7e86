//! The backends, one folder or file each, and the options every backend takes.
//!
//! A backend knows nothing about another backend. What they share lives outside this folder:
//! the trait and its rules (`bus.rs`), the bounded queues (`queue.rs`), ids and time (`id.rs`),
//! and metrics (`metrics.rs`).

pub mod memory;
#[cfg(feature = "nats")]
pub mod nats;
pub mod noop;
#[cfg(feature = "redis")]
pub mod redis;

use crate::bus::{DEFAULT_MAX_PAYLOAD, DEFAULT_SUBSCRIBER_QUEUE, Delivery};
use crate::id::{IdGenerator, NodeId};
use crate::metrics::{BackendMetrics, BusMetrics, DEFAULT_NAMESPACE, DropReason};
use crate::queue::{Fanout, FanoutReport};

/// Queues `delivery` for its channel's local subscribers and counts what happened: one
/// `received` per subscriber reached, one `slow_consumer` drop per subscriber whose oldest
/// delivery made room. A closed fan-out (the bus is closing) reaches nobody.
pub(crate) fn fan_out(
    fanout: &Fanout<Delivery>,
    metrics: &BackendMetrics,
    delivery: &Delivery,
) -> FanoutReport {
    let report = fanout
        .publish(&delivery.channel, delivery)
        .unwrap_or_default();
    metrics.received.inc_by(report.delivered as u64);
    if report.dropped > 0 {
        metrics.dropped(DropReason::SlowConsumer, report.dropped as u64);
    }
    report
}

/// The runtime settings every backend takes, already checked.
///
/// [`crate::connect`] builds these from a [`crate::BusConfig`]; build them by hand to construct a
/// backend directly, for example in tests or a simulation with a seeded [`IdGenerator`].
#[derive(Debug, Clone)]
pub struct BusOptions {
    /// The origin stamped on everything this bus publishes.
    pub node_id: NodeId,
    /// Largest accepted payload, in bytes.
    pub max_payload: usize,
    /// Capacity of each subscriber's queue before the oldest deliveries are dropped.
    pub subscriber_queue: usize,
    /// Source of message ids and timestamps.
    pub ids: IdGenerator,
    /// Where the bus counts what it does.
    pub metrics: BusMetrics,
}

impl Default for BusOptions {
    /// A generated node id, the default limits, ids from the OS, metrics registered nowhere.
    fn default() -> Self {
        let ids = IdGenerator::from_entropy();
        BusOptions {
            node_id: NodeId::generate(&ids),
            max_payload: DEFAULT_MAX_PAYLOAD,
            subscriber_queue: DEFAULT_SUBSCRIBER_QUEUE,
            ids,
            metrics: BusMetrics::unregistered(DEFAULT_NAMESPACE)
                .expect("the default namespace is a valid Prometheus name"),
        }
    }
}
