//! Every Prometheus collector the bus exposes, created and registered in this one place.
//!
//! The embedding application owns the [`Registry`] (and serves `/metrics` from it); the bus only
//! registers into it. The namespace defaults to `gohub`, which keeps the names the original plan
//! fixed: `gohub_bus_redis_publish_errors_total`, `gohub_bus_redis_latency_seconds`,
//! `gohub_bus_nats_reconnects_total` and `gohub_bus_nats_ack_pending`. Backend-neutral counters
//! carry a `backend` label so one dashboard works whatever the hub runs on.
//!
//! Several buses can count into one registry in two ways:
//!
//! - **One set of collectors per bus** ([`crate::connect`], or [`BusMetrics::register_for_node`]):
//!   every series carries a constant `node` label, the bus's node id, so the buses' series are
//!   told apart under the same names. Two buses with the same node id on one registry are
//!   refused ([`BusError::Config`] with key `node_id`).
//! - **One set shared by all** ([`BusMetrics::register`] once, then
//!   [`crate::connect_with_metrics`] with clones): no `node` label; the buses' counts add up
//!   in the same series.
//!
//! One namespace on one registry takes one of the two: Prometheus refuses a name whose label
//! names differ between collectors, so `node`-labelled and shared collectors of the same
//! namespace cannot sit side by side ([`BusError::Config`] with key `namespace`).

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    core::Collector,
};

use crate::bus::BusError;
use crate::id::NodeId;

/// The namespace used when the configuration does not set one.
pub const DEFAULT_NAMESPACE: &str = "gohub";

/// The constant label that tells apart the series of buses counting into one registry, set to
/// the bus's node id ([`BusMetrics::register_for_node`]).
pub const NODE_LABEL: &str = "node";

/// Why a message was dropped, the `reason` label of `<ns>_bus_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A subscriber fell behind and its bounded queue overflowed.
    SlowConsumer,
    /// Bytes from the network did not decode as a bus message.
    Malformed,
    /// An at-least-once subscriber fell behind and was cut off; what it had not read was given
    /// up on its behalf (it was told: its subscription ended as lagged).
    Lagged,
    /// A message from a publisher outside the bus (no hubbus framing), refused because the bus
    /// is set to `foreign_messages = "drop"`.
    Foreign,
}

impl DropReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::SlowConsumer => "slow_consumer",
            DropReason::Malformed => "malformed",
            DropReason::Lagged => "lagged",
            DropReason::Foreign => "foreign",
        }
    }
}

/// The bus's collectors. Cheap to clone: clones share the same collectors.
#[derive(Debug, Clone)]
pub struct BusMetrics {
    published: IntCounterVec,
    received: IntCounterVec,
    dropped: IntCounterVec,
    publish_errors: IntCounterVec,
    lagged: IntCounterVec,
    foreign: IntCounterVec,
    connected: IntGaugeVec,
    redis_publish_errors: IntCounter,
    redis_reconnects: IntCounter,
    redis_latency: Histogram,
    nats_reconnects: IntCounter,
    nats_ack_pending: IntGauge,
    jetstream_redeliveries: IntCounter,
    jetstream_stream_recreated: IntCounter,
    jetstream_consumer_errors: IntCounter,
    jetstream_skipped: IntCounter,
}

impl BusMetrics {
    /// Creates one set of collectors under `namespace`, without a `node` label, and registers
    /// them into `registry`, for sharing: every bus given a clone (through
    /// [`crate::connect_with_metrics`] or [`crate::BusOptions::metrics`]) counts into the same
    /// series. Use [`BusMetrics::register_for_node`] (what [`crate::connect`] does) to keep each
    /// bus's series apart instead.
    ///
    /// Fails with [`BusError::Config`] (key `namespace`) for a namespace Prometheus does not
    /// accept, or when the registry already holds collectors of the same names (register one
    /// shared `BusMetrics` per registry and namespace, and clone it). A failed registration
    /// leaves none of its collectors registered.
    ///
    /// ```
    /// let registry = prometheus::Registry::new();
    /// let metrics = hubbus::BusMetrics::register(&registry, "gohub").unwrap();
    /// # drop(metrics);
    /// assert!(registry.gather().iter().any(|f| f.name() == "gohub_bus_nats_ack_pending"));
    /// ```
    pub fn register(registry: &Registry, namespace: &str) -> Result<Self, BusError> {
        let metrics = Self::build(namespace, None)?;
        metrics.register_into(registry, namespace, None)?;
        Ok(metrics)
    }

    /// Creates one bus's collectors under `namespace`, every series labelled `node="<node>"`,
    /// and registers them into `registry`. Buses with different node ids can each register
    /// their own into one registry: the names stay the same (`<ns>_bus_published_total`, ...),
    /// the `node` label tells the series apart. [`crate::connect`] calls this with the bus's
    /// node id.
    ///
    /// Fails with [`BusError::Config`]: key `node_id` when collectors for the same node id
    /// and namespace are already in the registry (two buses with one node id; give each its
    /// own, or share one `BusMetrics`), key `namespace` for a namespace Prometheus does not
    /// accept or when the registry holds the namespace's collectors without a `node` label
    /// (from [`BusMetrics::register`]). A failed registration leaves none of its collectors
    /// registered.
    ///
    /// ```
    /// use hubbus::{BusMetrics, NodeId};
    /// let registry = prometheus::Registry::new();
    /// let a = BusMetrics::register_for_node(&registry, "gohub", &NodeId::new("hub-a")?)?;
    /// let b = BusMetrics::register_for_node(&registry, "gohub", &NodeId::new("hub-b")?)?;
    /// a.nats_reconnects().inc();
    /// let families = registry.gather();
    /// let reconnects = families
    ///     .iter()
    ///     .find(|f| f.name() == "gohub_bus_nats_reconnects_total")
    ///     .unwrap();
    /// assert_eq!(reconnects.get_metric().len(), 2); // node="hub-a" and node="hub-b"
    /// // The same node id again is refused.
    /// assert!(BusMetrics::register_for_node(&registry, "gohub", &NodeId::new("hub-a")?).is_err());
    /// # drop(b);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn register_for_node(
        registry: &Registry,
        namespace: &str,
        node: &NodeId,
    ) -> Result<Self, BusError> {
        let metrics = Self::build(namespace, Some(node))?;
        metrics.register_into(registry, namespace, Some(node))?;
        Ok(metrics)
    }

    /// Registers every collector, or none: on a failure, those already registered are taken out
    /// again, so a refused bus adds no series to the registry.
    fn register_into(
        &self,
        registry: &Registry,
        namespace: &str,
        node: Option<&NodeId>,
    ) -> Result<(), BusError> {
        for (done, collector) in self.collectors().into_iter().enumerate() {
            if let Err(error) = registry.register(collector) {
                for registered in self.collectors().into_iter().take(done) {
                    // Registered a moment ago by this call; the registration error is the one
                    // worth reporting.
                    let _ = registry.unregister(registered);
                }
                return Err(registration_error(&error, namespace, node));
            }
        }
        Ok(())
    }

    /// Creates the collectors without registering them anywhere (tests, throwaway buses).
    pub fn unregistered(namespace: &str) -> Result<Self, BusError> {
        Self::build(namespace, None)
    }

    /// The collectors under `namespace`, labelled `node="<node>"` when a node is given.
    fn build(namespace: &str, node: Option<&NodeId>) -> Result<Self, BusError> {
        validate_namespace(namespace)?;
        let const_labels: std::collections::HashMap<String, String> = node
            .map(|node| (NODE_LABEL.to_owned(), node.as_str().to_owned()))
            .into_iter()
            .collect();
        let opts = |name: &str, help: &str| {
            Opts::new(name, help)
                .namespace(namespace)
                .const_labels(const_labels.clone())
        };
        let build = |e: prometheus::Error| BusError::config("namespace", e.to_string());
        Ok(BusMetrics {
            published: IntCounterVec::new(
                opts(
                    "bus_published_total",
                    "Messages the bus accepted for publishing.",
                ),
                &["backend"],
            )
            .map_err(build)?,
            received: IntCounterVec::new(
                opts(
                    "bus_received_total",
                    "Messages the bus received and queued for local subscribers.",
                ),
                &["backend"],
            )
            .map_err(build)?,
            dropped: IntCounterVec::new(
                opts("bus_dropped_total", "Messages dropped, by reason."),
                &["backend", "reason"],
            )
            .map_err(build)?,
            publish_errors: IntCounterVec::new(
                opts(
                    "bus_publish_errors_total",
                    "Publishes that failed, by backend.",
                ),
                &["backend"],
            )
            .map_err(build)?,
            lagged: IntCounterVec::new(
                opts(
                    "bus_lagged_total",
                    "At-least-once subscribers cut off because they fell behind.",
                ),
                &["backend"],
            )
            .map_err(build)?,
            foreign: IntCounterVec::new(
                opts(
                    "bus_foreign_total",
                    "Messages from publishers outside the bus (no hubbus framing) delivered to \
                     local subscribers.",
                ),
                &["backend"],
            )
            .map_err(build)?,
            connected: IntGaugeVec::new(
                opts(
                    "bus_connected",
                    "1 while the backend's connection to its broker works, else 0.",
                ),
                &["backend"],
            )
            .map_err(build)?,
            redis_reconnects: IntCounter::with_opts(opts(
                "bus_redis_reconnects_total",
                "Reconnect attempts to Redis after the first connection attempt.",
            ))
            .map_err(build)?,
            redis_publish_errors: IntCounter::with_opts(opts(
                "bus_redis_publish_errors_total",
                "Redis publishes that failed or timed out.",
            ))
            .map_err(build)?,
            redis_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "bus_redis_latency_seconds",
                    "Publish-to-receive latency over Redis, from the envelope timestamp.",
                )
                .namespace(namespace)
                .const_labels(const_labels.clone())
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]),
            )
            .map_err(build)?,
            nats_reconnects: IntCounter::with_opts(opts(
                "bus_nats_reconnects_total",
                "Reconnects of the NATS connection.",
            ))
            .map_err(build)?,
            jetstream_redeliveries: IntCounter::with_opts(opts(
                "bus_jetstream_redeliveries_total",
                "JetStream deliveries that the server had delivered before.",
            ))
            .map_err(build)?,
            jetstream_stream_recreated: IntCounter::with_opts(opts(
                "bus_jetstream_stream_recreated_total",
                "Times the JetStream stream was found deleted and was created again; the \
                 messages the old stream held are lost.",
            ))
            .map_err(build)?,
            jetstream_consumer_errors: IntCounter::with_opts(opts(
                "bus_jetstream_consumer_errors_total",
                "Failed attempts to look up or create the node's JetStream consumer.",
            ))
            .map_err(build)?,
            jetstream_skipped: IntCounter::with_opts(opts(
                "bus_jetstream_skipped_total",
                "JetStream messages acknowledged without delivery because no local subscriber \
                 wanted their channel.",
            ))
            .map_err(build)?,
            nats_ack_pending: IntGauge::with_opts(opts(
                "bus_nats_ack_pending",
                "Deliveries the node's JetStream consumer has outstanding without an ack.",
            ))
            .map_err(build)?,
        })
    }

    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.published.clone()),
            Box::new(self.received.clone()),
            Box::new(self.dropped.clone()),
            Box::new(self.publish_errors.clone()),
            Box::new(self.lagged.clone()),
            Box::new(self.foreign.clone()),
            Box::new(self.connected.clone()),
            Box::new(self.redis_publish_errors.clone()),
            Box::new(self.redis_reconnects.clone()),
            Box::new(self.redis_latency.clone()),
            Box::new(self.nats_reconnects.clone()),
            Box::new(self.nats_ack_pending.clone()),
            Box::new(self.jetstream_redeliveries.clone()),
            Box::new(self.jetstream_stream_recreated.clone()),
            Box::new(self.jetstream_consumer_errors.clone()),
            Box::new(self.jetstream_skipped.clone()),
        ]
    }

    /// The counters of one backend, with the `backend` label resolved once.
    pub(crate) fn backend(&self, backend: &'static str) -> BackendMetrics {
        // Create every labelled series now, so dashboards and alerts see zeros, not gaps.
        for reason in [
            DropReason::SlowConsumer,
            DropReason::Malformed,
            DropReason::Lagged,
            DropReason::Foreign,
        ] {
            self.dropped.with_label_values(&[backend, reason.as_str()]);
        }
        BackendMetrics {
            published: self.published.with_label_values(&[backend]),
            received: self.received.with_label_values(&[backend]),
            publish_errors: self.publish_errors.with_label_values(&[backend]),
            lagged: self.lagged.with_label_values(&[backend]),
            foreign: self.foreign.with_label_values(&[backend]),
            dropped: self.dropped.clone(),
            backend,
            slow_consumer_log: Default::default(),
        }
    }

    /// `<ns>_bus_redis_publish_errors_total`.
    pub fn redis_publish_errors(&self) -> &IntCounter {
        &self.redis_publish_errors
    }

    /// `<ns>_bus_redis_reconnects_total`.
    pub fn redis_reconnects(&self) -> &IntCounter {
        &self.redis_reconnects
    }

    /// Sets `<ns>_bus_connected{backend}`.
    #[cfg(any(feature = "redis", feature = "nats"))]
    pub(crate) fn set_connected(&self, backend: &str, connected: bool) {
        self.connected
            .with_label_values(&[backend])
            .set(i64::from(connected));
    }

    /// `<ns>_bus_redis_latency_seconds`.
    pub fn redis_latency(&self) -> &Histogram {
        &self.redis_latency
    }

    /// `<ns>_bus_nats_reconnects_total`.
    pub fn nats_reconnects(&self) -> &IntCounter {
        &self.nats_reconnects
    }

    /// `<ns>_bus_jetstream_redeliveries_total`.
    pub fn jetstream_redeliveries(&self) -> &IntCounter {
        &self.jetstream_redeliveries
    }

    /// `<ns>_bus_jetstream_stream_recreated_total`.
    pub fn jetstream_stream_recreated(&self) -> &IntCounter {
        &self.jetstream_stream_recreated
    }

    /// `<ns>_bus_jetstream_consumer_errors_total`.
    pub fn jetstream_consumer_errors(&self) -> &IntCounter {
        &self.jetstream_consumer_errors
    }

    /// `<ns>_bus_jetstream_skipped_total`.
    pub fn jetstream_skipped(&self) -> &IntCounter {
        &self.jetstream_skipped
    }

    /// `<ns>_bus_nats_ack_pending`.
    pub fn nats_ack_pending(&self) -> &IntGauge {
        &self.nats_ack_pending
    }
}

/// The backend-neutral counters of one backend.
#[derive(Debug, Clone)]
pub(crate) struct BackendMetrics {
    pub(crate) published: IntCounter,
    pub(crate) received: IntCounter,
    pub(crate) publish_errors: IntCounter,
    pub(crate) lagged: IntCounter,
    /// Messages from outside the bus that were delivered.
    pub(crate) foreign: IntCounter,
    dropped: IntCounterVec,
    pub(crate) backend: &'static str,
    /// Rate-limits the log line about slow-consumer drops (they can happen per message).
    slow_consumer_log: std::sync::Arc<std::sync::Mutex<crate::log_limit::LogLimiter>>,
}

impl BackendMetrics {
    /// Counts `count` drops for `reason`.
    pub(crate) fn dropped(&self, reason: DropReason, count: u64) {
        self.dropped
            .with_label_values(&[self.backend, reason.as_str()])
            .inc_by(count);
    }

    /// Counts `count` deliveries dropped from the full queues of slow subscribers of
    /// `channel`, and says so in the log (at most once per ten seconds per backend).
    pub(crate) fn dropped_for_slow_subscribers(&self, channel: &str, count: u64) {
        self.dropped(DropReason::SlowConsumer, count);
        let admitted = self
            .slow_consumer_log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(count);
        if let Some(left_out) = admitted {
            tracing::warn!(
                backend = self.backend,
                channel,
                left_out,
                "a subscriber's queue is full; dropped its oldest delivery"
            );
        }
    }
}

/// A registration failure, said in the bus's terms.
fn registration_error(
    error: &prometheus::Error,
    namespace: &str,
    node: Option<&NodeId>,
) -> BusError {
    match (error, node) {
        // The same names with the same `node` value: a second bus with this node id.
        (prometheus::Error::AlreadyReg, Some(node)) => BusError::config(
            "node_id",
            format!(
                "a bus with node id `{node}` already counts into this registry under the \
                 namespace `{namespace}`; give each bus on one registry its own node_id, or \
                 register one BusMetrics and share it through connect_with_metrics"
            ),
        ),
        (prometheus::Error::AlreadyReg, None) => BusError::config(
            "namespace",
            format!(
                "the bus metrics under `{namespace}` are already registered in this registry; \
                 register them once per registry and share the BusMetrics"
            ),
        ),
        // The same names with other label names: `node`-labelled next to shared collectors.
        (_, Some(_)) => BusError::config(
            "namespace",
            format!(
                "this registry holds `{namespace}_bus_*` collectors without a `{NODE_LABEL}` \
                 label (one BusMetrics shared through connect_with_metrics), so a bus's own \
                 node-labelled ones cannot join them: use one way per registry and namespace, \
                 or another namespace ({error})"
            ),
        ),
        (_, None) => BusError::config(
            "namespace",
            format!(
                "cannot register the bus metrics under `{namespace}`: {error}; the registry \
                 holds `{namespace}_bus_*` collectors of another kind (with a `{NODE_LABEL}` \
                 label, from connect); use one way per registry and namespace, or another \
                 namespace"
            ),
        ),
    }
}

fn validate_namespace(namespace: &str) -> Result<(), BusError> {
    let mut bytes = namespace.bytes();
    let valid = match bytes.next() {
        Some(first) => {
            (first.is_ascii_alphabetic() || first == b'_')
                && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        }
        None => false,
    };
    if valid {
        Ok(())
    } else {
        Err(BusError::config(
            "namespace",
            format!("{namespace:?} is not a Prometheus name: use [A-Za-z_][A-Za-z0-9_]*"),
        ))
    }
}
