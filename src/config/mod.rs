//! [`BusConfig`]: which backend to run and how, from TOML, environment variables or one URL,
//! which [`crate::connect`] turns into an `Arc<dyn MessageBus>`.
//!
//! Every mistake is a [`BusError::Config`] whose `key` is the dotted path of the setting to fix
//! (`redis.publish_timeout`, `kind`, `url`) and whose `reason` says what is accepted. Unknown
//! keys are mistakes too: a misspelt setting must not silently fall back to a default.
//!
//! ```toml
//! kind = "memory"            # noop | memory | redis
//! node_id = "hub-a"          # default: generated
//! namespace = "gohub"        # Prometheus namespace
//! max_payload = 1048576      # bytes
//! subscriber_queue = 1024    # deliveries a subscriber may fall behind
//!
//! [redis]
//! url = "redis://127.0.0.1:6379"  # rediss://, redis+sentinel://, redis+cluster://
//! publish_timeout = "50ms"
//! connect_timeout = "1s"
//! reconnect_backoff = "50ms"      # doubles per failure...
//! reconnect_backoff_max = "1s"    # ...up to this
//! liveness_interval = "1s"
//! liveness_timeout = "1s"
//!
//! [nats]
//! url = "nats://127.0.0.1:4222"
//! publish_timeout = "10ms"
//! max_reconnects = -1        # -1: reconnect forever
//! reconnect_wait = "2s"
//! jetstream = false
//! ```

mod env;
mod url;

pub use env::ENV_PREFIX;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::BusOptions;
use crate::bus::{BusError, DEFAULT_MAX_PAYLOAD, DEFAULT_SUBSCRIBER_QUEUE};
use crate::id::{IdGenerator, NodeId};
use crate::metrics::{BusMetrics, DEFAULT_NAMESPACE};

/// The largest `max_payload` accepted: 64 MiB. Brokers reject far less by default.
pub const MAX_PAYLOAD_LIMIT: usize = 64 * 1024 * 1024;

/// The largest `subscriber_queue` accepted.
pub const MAX_SUBSCRIBER_QUEUE: usize = 1 << 20;

/// Which backend to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// [`NoopBus`]: a single node, nothing leaves the process.
    Noop,
    /// [`crate::MemoryBus`]: an in-process bus.
    #[default]
    Memory,
    /// [`crate::backend::redis::RedisBus`]: Redis Pub/Sub (standalone, Sentinel, Cluster).
    #[cfg(feature = "redis")]
    Redis,
    /// NATS: Core, or JetStream when `nats.jetstream = true`.
    #[cfg(feature = "nats")]
    Nats,
}

/// The whole bus configuration. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// The backend.
    pub kind: BusKind,
    /// The node id stamped on published messages; generated when absent.
    pub node_id: Option<String>,
    /// The Prometheus namespace (`gohub` keeps the plan's metric names).
    pub namespace: String,
    /// Largest accepted payload, in bytes (1 MiB by default).
    pub max_payload: usize,
    /// Deliveries a subscriber may fall behind before the oldest are dropped (1024).
    pub subscriber_queue: usize,
    /// Redis settings.
    pub redis: RedisConfig,
    /// NATS settings.
    pub nats: NatsConfig,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            kind: BusKind::default(),
            node_id: None,
            namespace: DEFAULT_NAMESPACE.to_owned(),
            max_payload: DEFAULT_MAX_PAYLOAD,
            subscriber_queue: DEFAULT_SUBSCRIBER_QUEUE,
            redis: RedisConfig::default(),
            nats: NatsConfig::default(),
        }
    }
}

/// The `[redis]` section, with the plan's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// Where Redis is: `redis://`, `rediss://`, `redis+sentinel://`, `redis+cluster://`.
    pub url: String,
    /// How long a publish may wait for Redis's reply (the plan's 50 ms).
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// How long one connection attempt may take (resolution, TCP, TLS, AUTH).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The ceiling of the first reconnect wait; it doubles per failure.
    #[serde(with = "humantime_serde")]
    pub reconnect_backoff: Duration,
    /// The ceiling of every reconnect wait.
    #[serde(with = "humantime_serde")]
    pub reconnect_backoff_max: Duration,
    /// How often both connections are PINGed.
    #[serde(with = "humantime_serde")]
    pub liveness_interval: Duration,
    /// How long a PING may take before the connection is replaced.
    #[serde(with = "humantime_serde")]
    pub liveness_timeout: Duration,
    /// A PEM file of CA certificates to trust for `rediss://`, besides the public roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<std::path::PathBuf>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".to_owned(),
            publish_timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(1),
            reconnect_backoff: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(1),
            liveness_interval: Duration::from_secs(1),
            liveness_timeout: Duration::from_secs(1),
            tls_ca_file: None,
        }
    }
}

#[cfg(feature = "redis")]
impl RedisConfig {
    /// The backend options this section describes, over plain TCP (TLS when the URL says so).
    pub fn options(&self) -> Result<crate::backend::redis::RedisOptions, BusError> {
        let target = crate::backend::redis::RedisTarget::parse(&self.url)?;
        let mut options = crate::backend::redis::RedisOptions::new(target);
        options.tls_ca_file = self.tls_ca_file.clone();
        options.publish_timeout = self.publish_timeout;
        options.connect_timeout = self.connect_timeout;
        options.backoff = crate::backoff::Backoff {
            initial: self.reconnect_backoff,
            max: self.reconnect_backoff_max,
        };
        options.liveness_interval = self.liveness_interval;
        options.liveness_timeout = self.liveness_timeout;
        Ok(options)
    }
}

/// The `[nats]` section, with the plan's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Where the NATS servers are: `nats://h1:4222,h2:4222` (`tls://` for TLS); user and
    /// password may ride in the URL.
    pub url: String,
    /// How long a publish may take to be written and flushed (the plan's 10 ms).
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// Reconnect attempts before giving up; `-1` (the plan's `MaxReconnect = -1`) never gives up.
    pub max_reconnects: i64,
    /// Pause between reconnect attempts (the plan's 2 s).
    #[serde(with = "humantime_serde")]
    pub reconnect_wait: Duration,
    /// How long one connection attempt may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Use JetStream (durable, at-least-once) instead of core NATS (at-most-once).
    pub jetstream: bool,
    /// Core subjects are `<subject_prefix>.<channel>`.
    pub subject_prefix: String,
    /// Authentication token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A `.creds` file (JWT and NKey seed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<std::path::PathBuf>,
    /// A PEM file of CA certificates to trust for TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Require TLS even for `nats://` URLs.
    pub require_tls: bool,
    /// JetStream: the stream's name.
    pub stream: String,
    /// JetStream: the stream holds `<stream_subject_prefix>.>`.
    pub stream_subject_prefix: String,
    /// JetStream: how long the stream keeps messages (`0s`: no age limit).
    #[serde(with = "humantime_serde")]
    pub stream_max_age: Duration,
    /// JetStream: the stream's size limit in bytes; `-1` is unlimited.
    pub stream_max_bytes: i64,
    /// JetStream: replicas of the stream.
    pub stream_replicas: usize,
    /// JetStream: how long a publish waits for the server's PubAck.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// JetStream: how long a delivery may stay unacknowledged before it is redelivered.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// JetStream: deliveries of one message at most; `-1` is unlimited.
    pub max_deliver: i64,
    /// JetStream: messages one pull asks for.
    pub pull_batch: usize,
    /// JetStream: how long one pull waits on the server.
    #[serde(with = "humantime_serde")]
    pub pull_expires: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".to_owned(),
            publish_timeout: Duration::from_millis(10),
            max_reconnects: -1,
            reconnect_wait: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            jetstream: false,
            subject_prefix: "hubbus".to_owned(),
            token: None,
            credentials_file: None,
            tls_ca_file: None,
            require_tls: false,
            stream: "HUBBUS".to_owned(),
            stream_subject_prefix: "hubbus_js".to_owned(),
            stream_max_age: Duration::from_secs(24 * 3600),
            stream_max_bytes: -1,
            stream_replicas: 1,
            ack_timeout: Duration::from_secs(2),
            ack_wait: Duration::from_secs(30),
            max_deliver: -1,
            pull_batch: 64,
            pull_expires: Duration::from_secs(1),
        }
    }
}

#[cfg(feature = "nats")]
impl NatsConfig {
    /// The backend options this section describes.
    pub fn options(&self) -> crate::backend::nats::NatsOptions {
        use crate::backend::nats::{JetStreamOptions, NatsOptions};
        let mut options = NatsOptions::new(self.url.clone());
        options.link.max_reconnects = usize::try_from(self.max_reconnects).ok();
        options.link.reconnect_wait = self.reconnect_wait;
        options.link.connect_timeout = self.connect_timeout;
        options.link.token = self.token.clone();
        options.link.credentials_file = self.credentials_file.clone();
        options.link.tls_ca_file = self.tls_ca_file.clone();
        options.link.require_tls = self.require_tls;
        options.subject_prefix = self.subject_prefix.clone();
        options.publish_timeout = self.publish_timeout;
        if self.jetstream {
            let defaults = JetStreamOptions::default();
            options.jetstream = Some(JetStreamOptions {
                stream: self.stream.clone(),
                subject_prefix: self.stream_subject_prefix.clone(),
                max_age: self.stream_max_age,
                max_bytes: u64::try_from(self.stream_max_bytes).ok(),
                replicas: self.stream_replicas,
                publish_timeout: self.ack_timeout,
                ack_wait: self.ack_wait,
                max_deliver: u64::try_from(self.max_deliver).ok(),
                pull_batch: self.pull_batch,
                pull_expires: self.pull_expires,
                ..defaults
            });
        }
        options
    }
}

impl BusConfig {
    /// Parses a TOML document; keys it leaves out keep their defaults.
    ///
    /// ```
    /// let cfg = hubbus::BusConfig::from_toml_str("kind = \"noop\"\n[redis]\npublish_timeout = \"80ms\"").unwrap();
    /// assert_eq!(cfg.kind, hubbus::BusKind::Noop);
    /// assert_eq!(cfg.redis.publish_timeout, std::time::Duration::from_millis(80));
    /// ```
    pub fn from_toml_str(text: &str) -> Result<Self, BusError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |span| {
                count_lines(&text.as_bytes()[..span.start.min(text.len())])
            });
            BusError::config("<toml>", format!("line {line}: {}", e.message()))
        })?;
        Self::from_table(table)
    }

    /// Reads a TOML file, then applies the `HUBBUS_*` environment overrides.
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Self, BusError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            BusError::config("<file>", format!("cannot read {}: {e}", path.display()))
        })?;
        Self::from_toml_str(&text)?.with_env(std::env::vars())
    }

    /// Checks the values that types alone cannot: ranges, names, durations.
    pub fn validate(&self) -> Result<(), BusError> {
        if let Some(node_id) = &self.node_id {
            NodeId::new(node_id)?;
        }
        BusMetrics::unregistered(&self.namespace)?;
        if self.max_payload == 0 || self.max_payload > MAX_PAYLOAD_LIMIT {
            return Err(BusError::config(
                "max_payload",
                format!("must be between 1 and {MAX_PAYLOAD_LIMIT} bytes"),
            ));
        }
        if self.subscriber_queue == 0 || self.subscriber_queue > MAX_SUBSCRIBER_QUEUE {
            return Err(BusError::config(
                "subscriber_queue",
                format!("must be between 1 and {MAX_SUBSCRIBER_QUEUE}"),
            ));
        }
        for (key, value) in [
            ("redis.publish_timeout", self.redis.publish_timeout),
            ("redis.connect_timeout", self.redis.connect_timeout),
            ("redis.liveness_interval", self.redis.liveness_interval),
            ("redis.liveness_timeout", self.redis.liveness_timeout),
            ("nats.publish_timeout", self.nats.publish_timeout),
            ("nats.reconnect_wait", self.nats.reconnect_wait),
        ] {
            if value.is_zero() {
                return Err(BusError::config(key, "must be longer than zero"));
            }
        }
        if self.redis.reconnect_backoff > self.redis.reconnect_backoff_max {
            return Err(BusError::config(
                "redis.reconnect_backoff",
                "must not exceed redis.reconnect_backoff_max",
            ));
        }
        #[cfg(feature = "redis")]
        if self.kind == BusKind::Redis {
            crate::backend::redis::RedisTarget::parse(&self.redis.url)?;
        }
        #[cfg(feature = "nats")]
        if self.kind == BusKind::Nats {
            crate::backend::nats::parse_servers(&self.nats.url)?;
        }
        for (key, value) in [
            ("nats.connect_timeout", self.nats.connect_timeout),
            ("nats.ack_timeout", self.nats.ack_timeout),
            ("nats.ack_wait", self.nats.ack_wait),
            ("nats.pull_expires", self.nats.pull_expires),
        ] {
            if value.is_zero() {
                return Err(BusError::config(key, "must be longer than zero"));
            }
        }
        if self.nats.pull_batch == 0 {
            return Err(BusError::config("nats.pull_batch", "must be at least 1"));
        }
        if self.nats.max_reconnects < -1 {
            return Err(BusError::config(
                "nats.max_reconnects",
                "must be -1 (forever) or a count of attempts",
            ));
        }
        Ok(())
    }

    /// The backend options this configuration describes, counting into `metrics`.
    pub fn bus_options(&self, metrics: BusMetrics) -> Result<BusOptions, BusError> {
        self.validate()?;
        let ids = IdGenerator::from_entropy();
        let node_id = match &self.node_id {
            Some(id) => NodeId::new(id)?,
            None => NodeId::generate(&ids),
        };
        Ok(BusOptions {
            node_id,
            max_payload: self.max_payload,
            subscriber_queue: self.subscriber_queue,
            ids,
            metrics,
        })
    }

    pub(crate) fn to_table(&self) -> Result<toml::Table, BusError> {
        toml::Table::try_from(self).map_err(|e| BusError::config("<config>", e.to_string()))
    }

    pub(crate) fn from_table(table: toml::Table) -> Result<Self, BusError> {
        let cfg: BusConfig =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                let reason = e.into_inner().message().to_owned();
                BusError::Config { key, reason }
            })?;
        cfg.validate()?;
        Ok(cfg)
    }
}

/// The 1-based line number of the end of `prefix`.
fn count_lines(prefix: &[u8]) -> usize {
    prefix.iter().filter(|&&b| b == b'\n').count() + 1
}

/// Reads an override value: a TOML scalar if it is one, else the text itself.
pub(crate) fn parse_scalar(text: &str) -> toml::Value {
    format!("v = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| !v.is_table())
        .unwrap_or_else(|| toml::Value::String(text.to_owned()))
}

/// Sets `a.b.c` in `table`; every part but the last must name a section.
pub(crate) fn set_path(
    table: &mut toml::Table,
    path: &str,
    value: toml::Value,
) -> Result<(), BusError> {
    let mut parts = path.split('.').peekable();
    let mut current = table;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            current.insert(part.to_owned(), value);
            return Ok(());
        }
        current = match current.get_mut(part) {
            Some(toml::Value::Table(section)) => section,
            _ => return Err(BusError::config(path, format!("`{part}` is not a section"))),
        };
    }
    Err(BusError::config(path, "empty key"))
}
