//! [`BusConfig`]: which backend to run and how, from TOML, the environment or one URL, which
//! [`crate::connect`] turns into an `Arc<dyn MessageBus>`.
//!
//! Settings come in layers, each over the one before: the documented defaults, then a TOML
//! document ([`BusConfig::from_toml_str`], or a file with [`BusConfig::load`]), then the
//! environment (`HUBBUS_*`, see [`ENV_PREFIX`]). A URL ([`BusConfig::from_url`]) is a layer of
//! its own over the defaults. [figment](https://docs.rs/figment) merges the layers, and every
//! value is read as the type of the setting it lands on, so `HUBBUS_NODE_ID=42` is the node id
//! `"42"`, `HUBBUS_MAX_PAYLOAD=1024` a number and `HUBBUS_NATS__JETSTREAM=true` a flag.
//!
//! Every mistake is a [`BusError::Config`] whose `key` is the dotted path of the setting to fix
//! (`redis.publish_timeout`, `nats.stream_replicas`, `kind`, `url`) and whose `reason` says what
//! is accepted and, for the environment and URLs, who set the value. Unknown keys are mistakes
//! too: a misspelt setting must not silently fall back to a default.
//!
//! Secrets stay secret: `Debug` of every configuration type shows URLs with their credentials
//! replaced by `***` ([`redact_url`]) and the NATS token as `[REDACTED]`; errors never repeat a
//! secret value or a URL's credentials; and serializing a configuration leaves the token out.
//!
//! ```toml
//! kind = "memory"            # noop | memory | redis | nats
//! node_id = "hub-a"          # default: generated
//! namespace = "gohub"        # Prometheus namespace
//! max_payload = 1048576      # bytes
//! subscriber_queue = 1024    # deliveries a subscriber may fall behind
//! foreign_messages = "deliver"  # deliver | drop: messages from publishers outside the bus
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
//! publish_timeout = "50ms"
//! publish_mode = "server"    # server | flush | buffered: what a publish's Ok means
//! framing = "headers"        # headers | envelope (rolling upgrade): how messages travel
//! max_reconnects = -1        # -1: reconnect forever
//! reconnect_wait = "2s"
//! ping_interval = "1s"       # a silent server is noticed after two unanswered pings
//! subscription_capacity = 65536  # messages the link buffers per subscription
//! jetstream = false          # the JetStream settings are the stream_* ... pull_* keys
//! ```

mod env;
mod layer;
mod url;

pub use env::{ENV_PREFIX, RESERVED_ENV_PREFIX};
pub use url::redact_url;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::Serialized;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use self::layer::Layer;
use crate::backend::BusOptions;
use crate::bus::{BusError, DEFAULT_MAX_PAYLOAD, DEFAULT_SUBSCRIBER_QUEUE, validate_channel};
use crate::id::{IdGenerator, NodeId};
use crate::metrics::{BusMetrics, DEFAULT_NAMESPACE};

/// The largest `max_payload` accepted: 64 MiB. Brokers reject far less by default.
pub const MAX_PAYLOAD_LIMIT: usize = 64 * 1024 * 1024;

/// The largest `subscriber_queue` accepted.
pub const MAX_SUBSCRIBER_QUEUE: usize = 1 << 20;

/// The most replicas a JetStream stream can have.
pub const MAX_STREAM_REPLICAS: usize = 5;

/// Which backend to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// [`crate::NoopBus`]: a single node, nothing leaves the process.
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Deliveries a subscriber may fall behind (1024): at most once the oldest are dropped
    /// beyond it, at least once (JetStream) the bus waits for room.
    pub subscriber_queue: usize,
    /// At least once (JetStream): how long a full subscriber queue may hold back delivery
    /// before its subscriber is cut off as lagged (5 s).
    #[serde(with = "humantime_serde")]
    pub lag_timeout: Duration,
    /// Whether [`crate::connect`] waits (up to the backend's connect timeout) for the first
    /// connection to the broker before it returns (true). Without the wait a subscribe right
    /// after `connect` waits for the connection itself.
    pub wait_for_connection: bool,
    /// What to do with a message from a publisher outside the bus (`deliver`).
    pub foreign_messages: ForeignMessages,
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
            lag_timeout: crate::backend::DEFAULT_LAG_TIMEOUT,
            wait_for_connection: true,
            foreign_messages: ForeignMessages::default(),
            redis: RedisConfig::default(),
            nats: NatsConfig::default(),
        }
    }
}

/// The `[redis]` section, with the plan's defaults.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// Where Redis is: `redis://`, `rediss://`, `redis+sentinel://`, `redis+cluster://`; user
    /// and password may ride in the URL (`Debug` shows them as `***`).
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
    pub tls_ca_file: Option<PathBuf>,
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

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured, so a new field cannot be forgotten here; the URL may hold a password.
        let RedisConfig {
            url,
            publish_timeout,
            connect_timeout,
            reconnect_backoff,
            reconnect_backoff_max,
            liveness_interval,
            liveness_timeout,
            tls_ca_file,
        } = self;
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(url))
            .field("publish_timeout", publish_timeout)
            .field("connect_timeout", connect_timeout)
            .field("reconnect_backoff", reconnect_backoff)
            .field("reconnect_backoff_max", reconnect_backoff_max)
            .field("liveness_interval", liveness_interval)
            .field("liveness_timeout", liveness_timeout)
            .field("tls_ca_file", tls_ca_file)
            .finish()
    }
}

impl RedisConfig {
    /// Checks this section; keys are `redis.*`.
    fn validate(&self) -> Result<(), BusError> {
        for (key, value) in [
            ("redis.publish_timeout", self.publish_timeout),
            ("redis.connect_timeout", self.connect_timeout),
            ("redis.liveness_interval", self.liveness_interval),
            ("redis.liveness_timeout", self.liveness_timeout),
        ] {
            positive(key, value)?;
        }
        if self.reconnect_backoff > self.reconnect_backoff_max {
            return Err(BusError::config(
                "redis.reconnect_backoff",
                "must not exceed redis.reconnect_backoff_max",
            ));
        }
        Ok(())
    }

    /// The backend options this section describes, over plain TCP (TLS when the URL says so).
    #[cfg(feature = "redis")]
    pub fn options(&self) -> Result<crate::backend::redis::RedisOptions, BusError> {
        let target = crate::backend::redis::RedisTarget::parse(&self.url)
            .map_err(|e| url::scrub_credentials(e, &self.url))?;
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

/// NATS Core's default `publish_timeout`; see `docs/bus_spec.md` for why it is this long.
pub const DEFAULT_NATS_PUBLISH_TIMEOUT: Duration = Duration::from_millis(50);

/// NATS's default `subscription_capacity`: the NATS client's own default.
pub const DEFAULT_NATS_SUBSCRIPTION_CAPACITY: usize = 65_536;

/// What the bus does with a message that a publisher outside the bus put on one of its channels
/// (`foreign_messages`): a Redis frame that is not an envelope, a NATS message without the
/// bus's headers or envelope (see `docs/bus_spec.md`, "Messages from other services").
///
/// In TOML, the environment and URLs the values are `deliver` and `drop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForeignMessages {
    /// Deliver it to local subscribers like any message: the raw bytes as the payload, the
    /// origin [`NodeId::external`], an id and timestamp from its receipt (JetStream: from the
    /// stream), counted in `<ns>_bus_foreign_total`. The default: a bus's channels are its own
    /// names on the broker, so what another service publishes there is meant for the hubs, and
    /// that is how services announce events to WebSocket clients without a hubbus library.
    #[default]
    Deliver,
    /// Drop it, counted as `<ns>_bus_dropped_total{reason="foreign"}` (and on JetStream
    /// acknowledged, so it does not come back): for brokers where other applications use the
    /// same channel names for their own traffic.
    Drop,
}

/// How a message travels on NATS (`nats.framing`); the layouts are in `docs/bus_spec.md`. Both
/// are always read, whichever is written.
///
/// In TOML, the environment and URLs the values are `headers` and `envelope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NatsFraming {
    /// The payload as published; id, origin and publish time in the NATS headers
    /// `Hubbus-Id`, `Hubbus-Origin` and `Hubbus-Time`, the message's own headers beside them.
    /// Plain NATS clients read and write it. A message's own headers must then be valid NATS
    /// headers (visible ASCII names without `:`, one-line values, no `Hubbus-` or `Nats-`
    /// names), else `publish` fails with [`BusError::InvalidHeader`].
    #[default]
    Headers,
    /// The version 1 envelope as the payload, as releases before the headers framing wrote it:
    /// set it on every node during a rolling upgrade from such a release, until no node of
    /// that release is left, because those nodes read only this. Also the faster choice where
    /// no plain NATS client reads what hubs publish: NATS headers cost the client and the
    /// server work on both sides, about a third of the `buffered` publish rate of the envelope
    /// in `docs/performance.md`. Messages from other services are read either way.
    Envelope,
}

/// What an `Ok` from a NATS Core publish means (`nats.publish_mode`): how far the message got
/// before `publish` returned. NATS Core is at most once in every mode; the modes differ in what
/// a publisher knows when `publish` returns, and in how many messages can be lost without the
/// publisher hearing of it.
///
/// In TOML, the environment and URLs the values are `server`, `flush` and `buffered`; anything
/// else is a [`BusError::Config`] with the key `nats.publish_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// `Ok` once the server has processed the message: a confirmation round trip written after
    /// it on the same connection came back within `publish_timeout`, so every subscription the
    /// server had then was handed the message (a subscriber that subscribed before `publish`
    /// returned gets it, unless its own connection or queue loses it). Concurrent publishers
    /// share round trips (one confirms everything written before it). With the server away
    /// `publish` fails with `PublishTimeout`; a connection lost before the confirmation is
    /// `NotConnected`. Either way the message may or may not have been delivered. Nothing
    /// reported `Ok` is lost by the publishing side.
    #[default]
    Server,
    /// `Ok` once the message was written to the connection's socket (the NATS client flushed
    /// its buffer), within `publish_timeout`; no server round trip. With the server away the
    /// flush cannot happen and `publish` fails (`PublishTimeout`, or `NotConnected` where the
    /// link knows the connection is down). What was written but still in the operating system's
    /// buffers or on the network when the connection broke is lost although `publish` said `Ok`.
    Flush,
    /// `Ok` once the message is queued in the NATS client's outgoing buffer, as a plain NATS
    /// client publish is (fire and forget). While the server is away the client keeps queueing
    /// (and `publish` keeps returning `Ok`) until its buffer is full; `publish_timeout` then
    /// bounds the wait for room. Everything queued or unflushed when a connection breaks, or
    /// when the client gives up, is lost although `publish` said `Ok`.
    Buffered,
}

impl PublishMode {
    /// The mode's name as the configuration writes it: `server`, `flush` or `buffered`.
    pub fn as_str(self) -> &'static str {
        match self {
            PublishMode::Server => "server",
            PublishMode::Flush => "flush",
            PublishMode::Buffered => "buffered",
        }
    }
}

impl fmt::Display for PublishMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `[nats]` section, with the plan's defaults: the connection and NATS Core first, then the
/// JetStream settings (used when `jetstream = true`).
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Where the NATS servers are: `nats://h1:4222,h2:4222` (`tls://` for TLS); user and
    /// password, or a token, may ride in the URL (`Debug` shows them as `***`).
    pub url: String,
    /// NATS Core: how long a publish may take to reach what [`NatsConfig::publish_mode`]
    /// promises (see [`DEFAULT_NATS_PUBLISH_TIMEOUT`]).
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// NATS Core: what an `Ok` from `publish` means; see [`PublishMode`] (`server`).
    pub publish_mode: PublishMode,
    /// How messages travel: [`NatsFraming::Headers`] (the default) or the version 1 envelope
    /// for a rolling upgrade; both are read either way.
    pub framing: NatsFraming,
    /// Reconnect attempts before giving up; `-1` (the plan's `MaxReconnect = -1`) never gives up.
    pub max_reconnects: i64,
    /// Pause between reconnect attempts (the plan's 2 s).
    #[serde(with = "humantime_serde")]
    pub reconnect_wait: Duration,
    /// How long one connection attempt may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How often the client pings the server. Two pings without an answer end the connection
    /// and start a reconnect, so a server that went silent (a network partition, a frozen
    /// process) is noticed within about three intervals instead of NATS's usual two minutes.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Messages the link buffers per subscription before it drops the oldest, each counted as a
    /// slow-consumer drop (at least 1; 65 536, the NATS client's own default).
    pub subscription_capacity: usize,
    /// Use JetStream (durable, at-least-once) instead of core NATS (at-most-once).
    pub jetstream: bool,
    /// Core subjects are `<subject_prefix>.<channel>`.
    pub subject_prefix: String,
    /// Authentication token. It is never shown by `Debug` nor written when the configuration is
    /// serialized.
    #[serde(skip_serializing)]
    pub token: Option<SecretString>,
    /// A `.creds` file (JWT and NKey seed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// A PEM file of CA certificates to trust for TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
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
    /// JetStream: replicas of the stream, 1 to [`MAX_STREAM_REPLICAS`].
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
    /// JetStream: deliveries the node may have outstanding without an ack; the node stops
    /// pulling at this many (back-pressure).
    pub max_ack_pending: usize,
    /// JetStream: how long the server keeps the node's durable consumer once nobody pulls
    /// from it (24 h).
    #[serde(with = "humantime_serde")]
    pub inactive_threshold: Duration,
    /// JetStream: after the node's consumer starts, how long messages for channels without a
    /// local subscriber are held for subscribers coming back (20 s).
    #[serde(with = "humantime_serde")]
    pub resume_window: Duration,
    /// JetStream: how long a JetStream API call (stream and consumer management) may take.
    #[serde(with = "humantime_serde")]
    pub api_timeout: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".to_owned(),
            publish_timeout: DEFAULT_NATS_PUBLISH_TIMEOUT,
            publish_mode: PublishMode::default(),
            framing: NatsFraming::default(),
            max_reconnects: -1,
            reconnect_wait: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            ping_interval: Duration::from_secs(1),
            subscription_capacity: DEFAULT_NATS_SUBSCRIPTION_CAPACITY,
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
            max_ack_pending: 1000,
            inactive_threshold: Duration::from_secs(24 * 3600),
            resume_window: Duration::from_secs(20),
            api_timeout: Duration::from_secs(2),
        }
    }
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured, so a new field cannot be forgotten here; the URL may hold credentials
        // and the token prints as `[REDACTED]`.
        let NatsConfig {
            url,
            publish_timeout,
            publish_mode,
            framing,
            max_reconnects,
            reconnect_wait,
            connect_timeout,
            ping_interval,
            subscription_capacity,
            jetstream,
            subject_prefix,
            token,
            credentials_file,
            tls_ca_file,
            require_tls,
            stream,
            stream_subject_prefix,
            stream_max_age,
            stream_max_bytes,
            stream_replicas,
            ack_timeout,
            ack_wait,
            max_deliver,
            pull_batch,
            pull_expires,
            max_ack_pending,
            inactive_threshold,
            resume_window,
            api_timeout,
        } = self;
        f.debug_struct("NatsConfig")
            .field("url", &redact_url(url))
            .field("publish_timeout", publish_timeout)
            .field("publish_mode", publish_mode)
            .field("framing", framing)
            .field("max_reconnects", max_reconnects)
            .field("reconnect_wait", reconnect_wait)
            .field("connect_timeout", connect_timeout)
            .field("ping_interval", ping_interval)
            .field("subscription_capacity", subscription_capacity)
            .field("jetstream", jetstream)
            .field("subject_prefix", subject_prefix)
            .field("token", token)
            .field("credentials_file", credentials_file)
            .field("tls_ca_file", tls_ca_file)
            .field("require_tls", require_tls)
            .field("stream", stream)
            .field("stream_subject_prefix", stream_subject_prefix)
            .field("stream_max_age", stream_max_age)
            .field("stream_max_bytes", stream_max_bytes)
            .field("stream_replicas", stream_replicas)
            .field("ack_timeout", ack_timeout)
            .field("ack_wait", ack_wait)
            .field("max_deliver", max_deliver)
            .field("pull_batch", pull_batch)
            .field("pull_expires", pull_expires)
            .field("max_ack_pending", max_ack_pending)
            .field("inactive_threshold", inactive_threshold)
            .field("resume_window", resume_window)
            .field("api_timeout", api_timeout)
            .finish()
    }
}

impl NatsConfig {
    /// Checks this section; keys are `nats.*`, exactly as they are written in TOML.
    fn validate(&self) -> Result<(), BusError> {
        for (key, value) in [
            ("nats.publish_timeout", self.publish_timeout),
            ("nats.reconnect_wait", self.reconnect_wait),
            ("nats.connect_timeout", self.connect_timeout),
            ("nats.ping_interval", self.ping_interval),
        ] {
            positive(key, value)?;
        }
        if self.max_reconnects < -1 {
            return Err(BusError::config(
                "nats.max_reconnects",
                "must be -1 (forever) or a count of attempts",
            ));
        }
        if self.subscription_capacity == 0 {
            return Err(BusError::config(
                "nats.subscription_capacity",
                format!(
                    "a subscription must buffer at least 1 message (the default is \
                     {DEFAULT_NATS_SUBSCRIPTION_CAPACITY})"
                ),
            ));
        }
        subject_prefix("nats.subject_prefix", &self.subject_prefix)?;
        self.validate_jetstream()
    }

    /// The JetStream settings, checked whether or not `jetstream` is on, so that a mistake
    /// shows before the day JetStream is switched on. The bounds are the server's: what passes
    /// here is what the JetStream bus accepts.
    fn validate_jetstream(&self) -> Result<(), BusError> {
        unlimited_or_positive("nats.stream_max_bytes", self.stream_max_bytes, "byte")?;
        unlimited_or_positive("nats.max_deliver", self.max_deliver, "delivery")?;
        JetStreamRules {
            stream: &self.stream,
            subject_prefix: &self.stream_subject_prefix,
            replicas: self.stream_replicas,
            ack_timeout: self.ack_timeout,
            ack_wait: self.ack_wait,
            pull_expires: self.pull_expires,
            api_timeout: self.api_timeout,
            pull_batch: self.pull_batch,
            max_ack_pending: self.max_ack_pending,
            inactive_threshold: self.inactive_threshold,
        }
        .check()
    }

    /// The backend options this section describes.
    #[cfg(feature = "nats")]
    pub fn options(&self) -> crate::backend::nats::NatsOptions {
        use crate::backend::nats::{JetStreamOptions, NatsOptions};
        let mut options = NatsOptions::new(self.url.clone());
        options.link.max_reconnects = usize::try_from(self.max_reconnects).ok();
        options.link.reconnect_wait = self.reconnect_wait;
        options.link.connect_timeout = self.connect_timeout;
        options.link.ping_interval = Some(self.ping_interval);
        options.link.subscription_capacity = self.subscription_capacity;
        options.link.token = self.token.clone();
        options.link.credentials_file = self.credentials_file.clone();
        options.link.tls_ca_file = self.tls_ca_file.clone();
        options.link.require_tls = self.require_tls;
        options.subject_prefix = self.subject_prefix.clone();
        options.publish_timeout = self.publish_timeout;
        options.publish_mode = self.publish_mode;
        options.framing = self.framing;
        if self.jetstream {
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
                api_timeout: self.api_timeout,
                max_ack_pending: self.max_ack_pending,
                inactive_threshold: self.inactive_threshold,
                resume_window: self.resume_window,
            });
        }
        options
    }
}

/// A wait that must be longer than zero.
fn positive(key: &str, value: Duration) -> Result<(), BusError> {
    if value.is_zero() {
        return Err(BusError::config(key, "must be longer than zero"));
    }
    Ok(())
}

/// A limit where `-1` means none and anything else must be at least one `unit`.
fn unlimited_or_positive(key: &str, value: i64, unit: &str) -> Result<(), BusError> {
    if value == -1 || value >= 1 {
        return Ok(());
    }
    Err(BusError::config(
        key,
        format!("{value}: give at least 1 {unit}, or -1 for no limit"),
    ))
}

/// The JetStream settings every JetStream bus is checked against, however it is configured
/// (`BusConfig::validate`, and `JetStreamOptions` handed to the bus directly), with the TOML
/// keys in the errors. The bounds are the server's: what passes here is what JetStream accepts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JetStreamRules<'a> {
    pub(crate) stream: &'a str,
    pub(crate) subject_prefix: &'a str,
    pub(crate) replicas: usize,
    pub(crate) ack_timeout: Duration,
    pub(crate) ack_wait: Duration,
    pub(crate) pull_expires: Duration,
    pub(crate) api_timeout: Duration,
    pub(crate) pull_batch: usize,
    pub(crate) max_ack_pending: usize,
    pub(crate) inactive_threshold: Duration,
}

impl JetStreamRules<'_> {
    /// Checks every rule; the error names the TOML key to fix.
    pub(crate) fn check(&self) -> Result<(), BusError> {
        stream_name("nats.stream", self.stream)?;
        subject_prefix("nats.stream_subject_prefix", self.subject_prefix)?;
        if !(1..=MAX_STREAM_REPLICAS).contains(&self.replicas) {
            return Err(BusError::config(
                "nats.stream_replicas",
                format!(
                    "{} replicas: JetStream accepts 1 to {MAX_STREAM_REPLICAS}",
                    self.replicas
                ),
            ));
        }
        // JetStream counts in nanoseconds, but a wait shorter than a millisecond is a mistake,
        // never a setting.
        for (key, value) in [
            ("nats.ack_timeout", self.ack_timeout),
            ("nats.ack_wait", self.ack_wait),
            ("nats.pull_expires", self.pull_expires),
            ("nats.api_timeout", self.api_timeout),
        ] {
            if value < Duration::from_millis(1) {
                return Err(BusError::config(
                    key,
                    format!(
                        "{} is too short: give at least 1ms",
                        humantime_serde::re::humantime::format_duration(value)
                    ),
                ));
            }
        }
        if self.pull_batch == 0 {
            return Err(BusError::config(
                "nats.pull_batch",
                "a pull must ask for at least one message",
            ));
        }
        if self.max_ack_pending == 0 || self.max_ack_pending > i64::MAX as usize {
            return Err(BusError::config(
                "nats.max_ack_pending",
                "give at least 1 delivery the node may have unacknowledged",
            ));
        }
        if self.inactive_threshold < Duration::from_secs(1)
            || self.inactive_threshold <= self.pull_expires
        {
            return Err(BusError::config(
                "nats.inactive_threshold",
                "give at least 1s, and more than nats.pull_expires: the server would remove the \
                 node's consumer while it is in use (the default is 24h)",
            ));
        }
        Ok(())
    }
}

/// A subject prefix follows the channel rule, so a prefix and a channel always make a valid
/// subject (and a wildcard can never sneak in).
fn subject_prefix(key: &str, prefix: &str) -> Result<(), BusError> {
    validate_channel(prefix).map_err(|error| match error {
        BusError::InvalidChannel { reason, .. } => {
            BusError::config(key, format!("{prefix:?} is not a subject prefix: {reason}"))
        }
        other => other,
    })
}

/// JetStream's rule for stream names: 1 to 255 bytes without whitespace, control characters,
/// `.`, `*`, `>`, `/` or `\` (the name becomes part of API subjects and file names).
fn stream_name(key: &str, name: &str) -> Result<(), BusError> {
    let valid = !name.is_empty()
        && name.len() <= 255
        && !name
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b".*>/\\".contains(&b));
    if valid {
        return Ok(());
    }
    Err(BusError::config(
        key,
        format!(
            "{name:?} is not a JetStream stream name: 1 to 255 bytes without whitespace, \
             `.`, `*`, `>`, `/` or `\\`"
        ),
    ))
}

impl BusConfig {
    /// Parses a TOML document over the defaults; keys it leaves out keep their defaults. The
    /// environment is not read (see [`BusConfig::load`]).
    ///
    /// ```
    /// let cfg = hubbus::BusConfig::from_toml_str("kind = \"noop\"\n[redis]\npublish_timeout = \"80ms\"").unwrap();
    /// assert_eq!(cfg.kind, hubbus::BusKind::Noop);
    /// assert_eq!(cfg.redis.publish_timeout, std::time::Duration::from_millis(80));
    /// ```
    pub fn from_toml_str(text: &str) -> Result<Self, BusError> {
        Self::from_layers(vec![toml_layer(text, None)?])
    }

    /// Reads a TOML file, then applies the process's `HUBBUS_*` environment over it (see
    /// [`BusConfig::from_env`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, BusError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            BusError::config("<file>", format!("cannot read {}: {e}", path.display()))
        })?;
        Self::from_layers(vec![
            toml_layer(&text, Some(path))?,
            env::layer(std::env::vars_os())?,
        ])
    }

    /// What [`BusConfig::load`] does, with the TOML as text and the environment given as
    /// `vars` instead of read from the process.
    ///
    /// ```
    /// let cfg = hubbus::BusConfig::from_toml_and_env_vars(
    ///     "kind = \"noop\"\nsubscriber_queue = 8",
    ///     [("HUBBUS_SUBSCRIBER_QUEUE", "32")],
    /// )
    /// .unwrap();
    /// assert_eq!(cfg.kind, hubbus::BusKind::Noop);
    /// assert_eq!(cfg.subscriber_queue, 32);
    /// ```
    pub fn from_toml_and_env_vars<K, V>(
        text: &str,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, BusError>
    where
        K: Into<std::ffi::OsString>,
        V: Into<std::ffi::OsString>,
    {
        Self::from_layers(vec![
            toml_layer(text, None)?,
            env::layer(vars.into_iter().map(|(k, v)| (k.into(), v.into())))?,
        ])
    }

    /// Merges `layers` over the defaults, reads the result by the schema's types and checks it.
    fn from_layers(layers: Vec<Layer>) -> Result<Self, BusError> {
        let figment = layers.iter().fold(
            Figment::from(Serialized::defaults(BusConfig::default())),
            |figment, layer| figment.merge(layer.clone()),
        );
        let cfg: BusConfig = figment
            .extract_lossy()
            .map_err(|e| layer::attribute(layer::from_figment(e), &layers))?;
        cfg.validate().map_err(|e| layer::attribute(e, &layers))?;
        Ok(cfg)
    }

    /// The defaults as figment sees them: which keys are sections, which are settings.
    fn schema() -> figment::value::Dict {
        figment::value::Value::serialize(BusConfig::default())
            .ok()
            .and_then(figment::value::Value::into_dict)
            .unwrap_or_default()
    }

    /// Checks the values that types alone cannot: ranges, names, durations, and the URL of the
    /// chosen backend. The keys of its errors are the TOML keys.
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
        self.redis.validate()?;
        self.nats.validate()?;
        #[cfg(feature = "redis")]
        if self.kind == BusKind::Redis {
            crate::backend::redis::RedisTarget::parse(&self.redis.url)
                .map_err(|e| url::scrub_credentials(e, &self.redis.url))?;
        }
        #[cfg(feature = "nats")]
        if self.kind == BusKind::Nats {
            crate::backend::nats::parse_servers(&self.nats.url)
                .map_err(|e| url::scrub_credentials(e, &self.nats.url))?;
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
            lag_timeout: self.lag_timeout,
            foreign_messages: self.foreign_messages,
            ids,
            metrics,
        })
    }
}

/// A TOML document as a layer. It is parsed here rather than by figment's TOML provider because
/// that one's errors quote the offending line, which may hold a secret; ours give the line
/// number and what is wrong.
fn toml_layer(text: &str, file: Option<&Path>) -> Result<Layer, BusError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(1, |span| {
            let end = span.start.min(text.len());
            text.as_bytes()[..end]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1
        });
        let place = match file {
            Some(path) => format!("{} line {line}", path.display()),
            None => format!("line {line}"),
        };
        BusError::config("<toml>", format!("{place}: {}", e.message()))
    })?;
    Layer::toml(table)
}
