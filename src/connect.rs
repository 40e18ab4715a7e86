//! [`connect`]: from a [`BusConfig`] to a running `Arc<dyn MessageBus>`.
//!
//! It lives at the crate root, apart from the configuration, because it is where every backend
//! meets: the configuration only describes, this module builds.

use std::sync::Arc;

use prometheus::Registry;

use crate::backend::BusOptions;
use crate::backend::memory::MemoryBroker;
use crate::backend::noop::NoopBus;
use crate::bus::{BusError, MessageBus};
use crate::config::{BusConfig, BusKind};
use crate::metrics::BusMetrics;

/// Builds the configured bus, registering its own metrics into `registry`.
///
/// With `wait_for_connection` (the default) it returns once the bus has connected to its broker
/// (on JetStream: and confirmed its stream), or after the backend's connect timeout, whichever
/// comes first; a broker that is not there yet does not fail the start (health says down, the
/// bus keeps trying, and a `subscribe` waits for the connection up to the connect timeout).
///
/// The bus's collectors carry a constant `node` label, its node id
/// ([`BusMetrics::register_for_node`]), under the configured namespace's names
/// (`gohub_bus_published_total{backend="redis",node="hub-a"}`, ...). So several buses can be
/// connected with one registry, each counting in its own series, as long as their node ids
/// differ: a second bus with a node id already counting into the registry under the same
/// namespace fails with [`BusError::Config`] (key `node_id`) before it connects to anything.
/// Set `node_id` for series that stay the same across restarts; a generated one is new each
/// time. To have several buses count into the same series instead, without a `node` label,
/// register one [`BusMetrics`] and use [`connect_with_metrics`]; one namespace on one
/// registry takes one of the two ways.
///
/// ```
/// # async fn demo() -> Result<(), hubbus::BusError> {
/// let registry = prometheus::Registry::new();
/// let bus = hubbus::connect(&hubbus::BusConfig::from_url("memory://")?, &registry).await?;
/// assert!(bus.health().is_connected());
/// // A second bus on the same registry, told apart by its node id.
/// let other = hubbus::BusConfig::from_url("memory://?node_id=bridge")?;
/// let bridge = hubbus::connect(&other, &registry).await?;
/// assert_ne!(bus.node_id(), bridge.node_id());
/// # Ok(())
/// # }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(demo()).unwrap();
/// ```
pub async fn connect(
    cfg: &BusConfig,
    registry: &Registry,
) -> Result<Arc<dyn MessageBus>, BusError> {
    cfg.validate()?;
    // The node id is resolved (or generated) first: it labels the collectors.
    let mut options = cfg.bus_options(BusMetrics::unregistered(&cfg.namespace)?)?;
    options.metrics = BusMetrics::register_for_node(registry, &cfg.namespace, &options.node_id)?;
    start(cfg, options).await
}

/// Builds the configured bus counting into `metrics`, registered by the caller.
///
/// For buses that share one set of collectors: register one [`BusMetrics`] with
/// [`BusMetrics::register`] and give each bus a clone; their counts add up in the same series,
/// without a `node` label. For a bus counting in its own series, use [`connect`] (or register
/// with [`BusMetrics::register_for_node`] and pass that here).
pub async fn connect_with_metrics(
    cfg: &BusConfig,
    metrics: BusMetrics,
) -> Result<Arc<dyn MessageBus>, BusError> {
    start(cfg, cfg.bus_options(metrics)?).await
}

/// Starts the configured backend with `options` and waits for its connection as configured.
async fn start(cfg: &BusConfig, options: BusOptions) -> Result<Arc<dyn MessageBus>, BusError> {
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
