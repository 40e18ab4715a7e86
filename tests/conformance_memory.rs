//! The conformance suite over the in-process bus: every node is a [`MemoryBus`] connected to
//! one [`MemoryBroker`], which promises that every live subscriber gets every message, in
//! publish order.

mod conformance;

use std::sync::Arc;
use std::time::Duration;

use hubbus::{BusOptions, Guarantee, MemoryBroker, MessageBus};

use conformance::{BusFactory, Promises};

/// Nodes on one fresh broker per check.
#[derive(Default)]
struct MemoryNodes {
    broker: MemoryBroker,
}

impl BusFactory for MemoryNodes {
    async fn node(&self, options: BusOptions) -> Arc<dyn MessageBus> {
        Arc::new(self.broker.connect(options))
    }
}

const MEMORY: Promises = Promises {
    delivers: true,
    ordered_per_publisher: true,
    guarantee: Guarantee::AtMostOnce,
    replays_earlier_messages: false,
    deadline: Duration::from_secs(5),
    virtual_time: true,
};

conformance::conformance_tests!(MemoryNodes::default(), MEMORY);
