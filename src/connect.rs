//! [`connect`]: from a [`BusConfig`] to a running `Arc<dyn MessageBus>`.
//!
//! It lives at the crate root, apart from the configuration, because it is where every backend
//! meets: the configuration only describes, this module builds.

use std::sync::Arc;

use prometheus::Registry;

use crate::backend::memory::MemoryBroker;
use crate::backend::noop::NoopBus;
use crate::bus::{BusError, MessageBus};
use crate::config::{BusConfig, BusKind};
use crate::metrics::BusMetrics;

/// Builds the configured bus, registering its metrics into `registry`.
///
/// With `wait_for_connection` (the default) it returns once the bus has connected to its broker
/// (on JetStream: and confirmed its stream), or after the backend's connect timeout, whichever
/// comes first; a broker that is not there yet does not fail the start (health says down, the
/// bus keeps trying, and a `subscribe` waits for the connection up to the connect timeout).
///
/// ```
/// # async fn demo() -> Result<(), hubbus::BusError> {
/// let registry = prometheus::Registry::new();
/// let bus = hubbus::connect(&hubbus::BusConfig::from_url("memory://")?, &registry).await?;
/// assert!(bus.health().is_connected());
/// # Ok(())
/// # }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(demo()).unwrap();
/// ```
pub async fn connect(
    cfg: &BusConfig,
    registry: &Registry,
) -> Result<Arc<dyn MessageBus>, BusError> {
    cfg.validate()?;
    let metrics = BusMetrics::register(registry, &cfg.namespace)?;
    connect_with_metrics(cfg, metrics).await
}

/// Builds the configured bus counting into already registered `metrics` (several buses, one
/// registry).
pub async fn connect_with_metrics(
    cfg: &BusConfig,
    metrics: BusMetrics,
) -> Result<Arc<dyn MessageBus>, BusError> {
    let options = cfg.bus_options(metrics)?;
    let bus: Arc<dyn MessageBus> = match cfg.kind {
        BusKind::Noop => Arc::new(NoopBus::with_options(options)),
        BusKind::Memory => Arc::new(MemoryBroker::new().connect(options)),
        #[cfg(feature = "redis")]
        BusKind::Redis => Arc::new(crate::backend::redis::RedisBus::start(
            options,
            cfg.redis.options()?,
        )?),
        #[cfg(feature = "nats")]
        BusKind::Nats => crate::backend::nats::connect(options, cfg.nats.options()).await?,
    };
    let wait = match cfg.kind {
        #[cfg(feature = "redis")]
        BusKind::Redis => Some(cfg.redis.connect_timeout),
        #[cfg(feature = "nats")]
        BusKind::Nats => Some(cfg.nats.connect_timeout),
        // Nothing to connect to.
        BusKind::Noop | BusKind::Memory => None,
    };
    if let Some(wait) = wait.filter(|_| cfg.wait_for_connection)
        && tokio::time::timeout(wait, bus.wait_connected())
            .await
            .is_err()
    {
        tracing::warn!(
            waited = ?wait,
            health = ?bus.health(),
            "the broker did not answer in time; starting anyway, the bus keeps trying"
        );
    }
    Ok(bus)
}
