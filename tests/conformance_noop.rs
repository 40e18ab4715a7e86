//! The conformance suite over the noop bus: publishing succeeds and delivers nothing, and the
//! rules for channels, payloads, close and health are the same as everywhere.

mod conformance;

use std::sync::Arc;
use std::time::Duration;

use hubbus::{BusOptions, Guarantee, MessageBus, NoopBus};

use conformance::{BusFactory, Promises};

/// Independent noop buses: there is no medium to share.
struct NoopNodes;

impl BusFactory for NoopNodes {
    async fn node(&self, options: BusOptions) -> Arc<dyn MessageBus> {
        Arc::new(NoopBus::with_options(options))
    }
}

const NOOP: Promises = Promises {
    delivers: false,
    ordered_per_publisher: false,
    guarantee: Guarantee::AtMostOnce,
    replays_earlier_messages: false,
    headers_in_order: true,
    deadline: Duration::from_millis(100),
    virtual_time: true,
};

conformance::conformance_tests!(NoopNodes, NOOP);
