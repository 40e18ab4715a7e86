//! hubbus: the message bus that real-time hubs (WebSocket / SSE fan-out servers) embed so that
//! many hub processes share one stream of messages.
//!
//! A hub depends on one trait, [`MessageBus`], and never on a backend. A hub on one node
//! publishes; hubs on every other node receive. Backends:
//!
//! | backend | URL | promise |
//! |---|---|---|
//! | [`NoopBus`] | `noop://` | nothing is delivered (single node) |
//! | [`MemoryBus`] | `memory://` | every live subscriber gets every message, in publish order |
//! | `RedisBus` (feature `redis`) | `redis://`, `rediss://`, `redis+sentinel://`, `redis+cluster://` | at-most-once, per-publisher order while connected |
//! | `NatsCoreBus` (feature `nats`) | `nats://` | at-most-once, per-publisher order while connected |
//! | `JetStreamBus` (feature `nats`) | `nats://…?jetstream=true` | at-least-once for acknowledged publishes, redeliveries flagged |
//!
//! Every backend shares one channel rule ([`validate_channel`]), one payload limit (1 MiB by
//! default), bounded subscriber queues that drop the oldest delivery and count it, and the same
//! typed errors ([`BusError`]). `docs/bus_spec.md` states each backend's promise.
//!
//! ```
//! # async fn demo() -> Result<(), hubbus::BusError> {
//! use hubbus::{BusConfig, Hub};
//!
//! let registry = prometheus::Registry::new();
//! let bus = hubbus::connect(&BusConfig::from_url("memory://")?, &registry).await?;
//! let hub = Hub::new(bus);
//! let mut room = hub.subscribe("room1").await?;
//! hub.publish("room1", "hello".into()).await?;
//! assert_eq!(room.recv().await.unwrap().payload().as_ref(), b"hello");
//! hub.close().await;
//! # Ok(())
//! # }
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
//! ```

#![deny(missing_docs)]

pub mod backend;
pub mod backoff;
mod bus;
pub mod config;
mod connect;
pub mod envelope;
mod hub;
mod id;
mod log_limit;
pub mod metrics;
#[cfg(hubbus_planted)]
pub mod planted;
mod queue;
mod settle;
mod sync;
pub mod transport;
mod waiters;
mod workers;

pub use backend::BusOptions;
pub use backend::memory::{MemoryBroker, MemoryBus};
pub use backend::noop::NoopBus;
pub use bus::{
    BusError, CloseHandle, DEFAULT_MAX_PAYLOAD, DEFAULT_SUBSCRIBER_QUEUE, Delivery, Guarantee,
    Health, HealthState, MAX_CHANNEL_LEN, Message, MessageBus, PublishReceipt, Subscription,
    subscribe_with, validate_channel,
};
pub use config::{BusConfig, BusKind, ForeignMessages};
pub use connect::{connect, connect_with_metrics};
pub use hub::{Hub, HubOptions};
pub use id::{Clock, IdGenerator, InvalidNodeId, MessageId, NodeId, SystemClock};
pub use metrics::BusMetrics;
pub use queue::SubscriptionEnd;

/// The concurrent core, exposed only to the loom models in `tests/loom.rs`.
#[cfg(hubbus_loom)]
#[doc(hidden)]
pub mod loom_api {
    pub use crate::queue::*;
}
