//! Redis Pub/Sub: standalone, Sentinel and Cluster, at most once.
//!
//! A [`RedisBus`] keeps two connections to Redis, both opened through the [`Connector`] seam so
//! that the same code runs on real TCP and in the turmoil simulation: a multiplexed connection
//! that pipelines every `PUBLISH`, and a Pub/Sub connection that carries every channel this
//! node subscribes to. A private supervisor task owns both (see `supervisor.rs`): it connects,
//! resubscribes every channel with local subscribers after each reconnect, probes liveness, and
//! backs off between attempts. Which channels are wanted and which Redis confirmed is kept in
//! `registrations.rs`. Messages travel as [`crate::envelope::Envelope`] frames.
//!
//! On a cluster with `?sharded=true` the same supervisor runs sharded Pub/Sub: both connections
//! per master, each channel on the master of its hash slot (`shards.rs`, `slots.rs`).
//!
//! Promise: at-most-once; one publisher's messages arrive in order while the connection holds;
//! nothing is delivered after `close`. `publish` returns `Ok` when Redis replied to `PUBLISH`
//! within the publish timeout (50 ms by default), and [`BusError::PublishTimeout`] otherwise.
//! `subscribe` returns `Ok` once Redis confirmed `SUBSCRIBE`, so everything published after it
//! returns is delivered; [`BusError::Refused`] when Redis refused the channel (an ACL without
//! that channel), and [`BusError::NotConnected`] when no confirmation came within the connect
//! timeout. Neither error leaves anything subscribed behind.

mod intake;
mod registrations;
mod shards;
mod slots;
mod supervisor;
mod target;
mod topology;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

pub use target::{RedisTarget, Topology};

use crate::backend::{BusOptions, admit_parts, count_publish, frame_at};
use crate::backoff::Backoff;
use crate::bus::{
    BusError, Delivery, Health, Message, MessageBus, PublishReceipt, Subscription, validate_channel,
};
use crate::id::MessageId;
use crate::metrics::{BackendMetrics, BusMetrics};
use crate::queue::{ChannelName, Fanout};
use crate::sync;
use crate::transport::Connector;
use registrations::Registrations;
use shards::{Publishers, is_redirect};

const BACKEND: &str = "redis";

/// Everything the Redis backend needs besides the [`BusOptions`].
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Where Redis is and how to authenticate.
    pub target: RedisTarget,
    /// How connections are opened (TLS is layered on top when the target asks for it).
    pub connector: Arc<dyn Connector>,
    /// PEM file with extra CA certificates for `rediss://`.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// How long `publish` may wait for Redis's reply (the plan's 50 ms).
    pub publish_timeout: Duration,
    /// How long one connection attempt (TCP, TLS, AUTH, resolution) may take.
    pub connect_timeout: Duration,
    /// Pause between reconnect attempts.
    pub backoff: Backoff,
    /// How often the supervisor PINGs both connections.
    pub liveness_interval: Duration,
    /// How long a PING may take before the connection is declared dead and replaced.
    pub liveness_timeout: Duration,
}

impl RedisOptions {
    /// Options for `target` over plain TCP with the defaults: publish timeout 50 ms, connect
    /// timeout 1 s, backoff 50 ms doubling to 1 s, PING every second with a 1 s timeout.
    pub fn new(target: RedisTarget) -> Self {
        RedisOptions {
            target,
            connector: Arc::new(crate::transport::TokioTcp),
            tls_ca_file: None,
            publish_timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(1),
            backoff: Backoff::default(),
            liveness_interval: Duration::from_secs(1),
            liveness_timeout: Duration::from_secs(1),
        }
    }
}

/// State shared by the bus handle, its subscriptions and the supervisor.
#[derive(Debug)]
struct BusState {
    options: BusOptions,
    redis: RedisOptions,
    metrics: BackendMetrics,
    bus_metrics: BusMetrics,
    /// Local subscriber queues by channel, fed by the supervisor.
    fanout: sync::Arc<Fanout<Delivery>>,
    /// The current publishing connections; `None` while reconnecting.
    publisher: std::sync::Mutex<Option<Publishers>>,
    /// Wakes publishes waiting for a connection, in the order they started waiting (a `watch`
    /// would wake them in random order, which a simulation cannot replay).
    publisher_changed: tokio::sync::Notify,
    health: std::sync::Mutex<Health>,
    /// Who wants which channel and what Redis confirmed; always locked before `fanout`.
    registrations: std::sync::Mutex<Registrations>,
    /// Wakes the supervisor to bring Redis's subscriptions in line with `registrations`.
    reconcile: tokio::sync::Notify,
    /// Sharded Pub/Sub: a publish was redirected (`MOVED`/`ASK`), so the session numbered
    /// `moved_session` routes by a stale slot map; the supervisor replaces it.
    moved: tokio::sync::Notify,
    moved_session: AtomicU64,
    shutdown: CancellationToken,
    closed: AtomicBool,
    /// Planted `skip_resubscribe`: what the last connection had subscribed, carried over to
    /// the next one as if it were still subscribed there.
    #[cfg(hubbus_planted)]
    planted_subscribed: std::sync::Mutex<std::collections::BTreeSet<ChannelName>>,
}

impl BusState {
    fn set_health(&self, health: Health) {
        self.bus_metrics
            .set_connected(BACKEND, health.is_connected());
        *self.health.lock().unwrap_or_else(|e| e.into_inner()) = health;
    }

    fn health(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Installs (or withdraws, with `None`) the publishing connections.
    fn set_publisher(&self, connection: Option<Publishers>) {
        *self.publisher.lock().unwrap_or_else(|e| e.into_inner()) = connection;
        self.publisher_changed.notify_waiters();
    }

    /// A publish on session `session` was redirected: withdraws that session's connections
    /// (not a newer session's) so that publishes wait for the next one, and tells the
    /// supervisor to read the slot map again.
    fn slot_moved(&self, session: u64) {
        {
            let mut publisher = self.publisher.lock().unwrap_or_else(|e| e.into_inner());
            if publisher.as_ref().is_some_and(|p| p.session == session) {
                *publisher = None;
            }
        }
        self.moved_session.store(session, Ordering::Release);
        self.moved.notify_one();
    }

    fn moved_session(&self) -> u64 {
        self.moved_session.load(Ordering::Acquire)
    }

    fn current_publisher(&self) -> Option<Publishers> {
        self.publisher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The publishing connections, waiting for the supervisor to install them.
    async fn publisher(&self) -> Result<Publishers, BusError> {
        // The common case, connected: no waiter registration (it locks the notifier's list,
        // which concurrent publishers would all contend on).
        if !self.closed.load(Ordering::Acquire)
            && let Some(connection) = self.current_publisher()
        {
            return Ok(connection);
        }
        loop {
            let changed = self.publisher_changed.notified();
            tokio::pin!(changed);
            // Register before looking, so an install between the look and the wait is seen.
            changed.as_mut().enable();
            if self.closed.load(Ordering::Acquire) {
                return Err(BusError::Closed);
            }
            if let Some(connection) = self.current_publisher() {
                return Ok(connection);
            }
            changed.await;
        }
    }

    fn registrations(&self) -> std::sync::MutexGuard<'_, Registrations> {
        self.registrations.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuses everything from now on and releases whoever waits; the supervisor is told to stop.
    fn begin_close(&self) {
        self.closed.store(true, Ordering::Release);
        self.fanout.close();
        self.registrations().close();
        self.shutdown.cancel();
    }
}

/// A bus node on Redis Pub/Sub.
#[derive(Debug)]
pub struct RedisBus {
    state: Arc<BusState>,
    /// The supervisor task; dropping the bus aborts it.
    supervisor: std::sync::Mutex<Option<AbortOnDropHandle<()>>>,
}

impl RedisBus {
    /// Starts the bus: validates the options and spawns the supervisor, which connects in the
    /// background. The bus is usable at once; until Redis answers, `health()` is down,
    /// publishes wait (up to the publish timeout) for the connection, and subscribes wait (up to
    /// the connect timeout) for Redis to confirm them.
    pub fn start(options: BusOptions, redis: RedisOptions) -> Result<Self, BusError> {
        let mut redis = redis;
        if redis.target.tls {
            redis.connector = Arc::new(crate::transport::TlsConnector::new(
                redis.connector.clone(),
                redis.tls_ca_file.as_deref(),
            )?);
        }
        let state = Arc::new(BusState {
            metrics: options.metrics.backend(BACKEND),
            bus_metrics: options.metrics.clone(),
            options,
            redis,
            fanout: sync::Arc::new(Fanout::new()),
            publisher: std::sync::Mutex::new(None),
            publisher_changed: tokio::sync::Notify::new(),
            health: std::sync::Mutex::new(Health::down("connecting to Redis")),
            registrations: std::sync::Mutex::new(Registrations::default()),
            reconcile: tokio::sync::Notify::new(),
            moved: tokio::sync::Notify::new(),
            moved_session: AtomicU64::new(0),
            shutdown: CancellationToken::new(),
            closed: AtomicBool::new(false),
            #[cfg(hubbus_planted)]
            planted_subscribed: std::sync::Mutex::default(),
        });
        state.bus_metrics.set_connected(BACKEND, false);
        let task = AbortOnDropHandle::new(tokio::spawn(supervisor::run(state.clone())));
        Ok(RedisBus {
            state,
            supervisor: std::sync::Mutex::new(Some(task)),
        })
    }

    fn publish_now(
        &self,
        channel: &str,
        payload: bytes::Bytes,
        id: Option<MessageId>,
        headers: Vec<(String, String)>,
    ) -> Result<(PublishReceipt, bytes::Bytes), BusError> {
        let options = &self.state.options;
        let closed = self.state.closed.load(Ordering::Acquire);
        // One clock reading for the id and the time the frame carries.
        let (id, now) = admit_parts(options, channel, payload.len(), &headers, id, closed)?;
        let frame = frame_at(options, id, now, headers, payload)?;
        Ok((PublishReceipt { id, sequence: None }, frame))
    }

    /// Publishes a message given in parts: `publish` has no `Message` to build (and its
    /// channel to copy), `publish_message` takes its own apart.
    async fn publish_parts(
        &self,
        channel: &str,
        payload: bytes::Bytes,
        id: Option<MessageId>,
        headers: Vec<(String, String)>,
    ) -> Result<PublishReceipt, BusError> {
        // Planted `publish_ok_before_write`: confirms at once and sends in the background, so
        // a message Redis never got (the connection is down, say) counts as published.
        #[cfg(hubbus_planted)]
        if crate::planted::active("publish_ok_before_write") {
            let channel = channel.to_owned();
            let result =
                self.publish_now(&channel, payload, id, headers)
                    .map(|(receipt, frame)| {
                        let state = self.state.clone();
                        tokio::spawn(async move {
                            let attempt = async {
                                let (command, mut connection) =
                                    state.publisher().await.ok()?.route(&channel).ok()?;
                                redis::cmd(command)
                                    .arg(&channel)
                                    .arg(frame.as_ref())
                                    .query_async::<i64>(&mut connection)
                                    .await
                                    .ok()
                            };
                            let _ =
                                tokio::time::timeout(state.redis.publish_timeout, attempt).await;
                        });
                        receipt
                    });
            count_publish(&self.state.metrics, &result);
            return result;
        }
        let result = match self.publish_now(channel, payload, id, headers) {
            Ok((receipt, frame)) => self.send(channel, frame).await.map(|()| receipt),
            Err(error) => Err(error),
        };
        count_publish(&self.state.metrics, &result);
        // The plan's counter is about Redis failing, not about refused input.
        if let Err(error) = &result
            && !matches!(
                error,
                BusError::InvalidChannel { .. }
                    | BusError::PayloadTooLarge { .. }
                    | BusError::InvalidHeader { .. }
            )
        {
            self.state.bus_metrics.redis_publish_errors().inc();
        }
        result
    }

    async fn send(&self, channel: &str, frame: bytes::Bytes) -> Result<(), BusError> {
        let timeout = self.state.redis.publish_timeout;
        let attempt = async {
            let mut redirected = false;
            loop {
                // Wait for a connection within the same deadline: a publish during a reconnect
                // succeeds if the connection is back in time, and times out otherwise.
                let publishers = self.state.publisher().await?;
                let session = publishers.session;
                let (command, mut connection) = publishers.route(channel)?;
                let sent = redis::cmd(command)
                    .arg(channel)
                    .arg(frame.as_ref())
                    .query_async::<i64>(&mut connection)
                    .await;
                return match sent {
                    Ok(_) => Ok(()),
                    // Sharded: the slot moved. Once, within the same deadline, wait for the
                    // supervisor to read the map again and send to the new owner.
                    Err(e) if is_redirect(&e) && !redirected => {
                        redirected = true;
                        self.state.slot_moved(session);
                        continue;
                    }
                    Err(e)
                        if e.is_io_error()
                            || e.is_connection_dropped()
                            || e.is_unrecoverable_error()
                            || is_redirect(&e) =>
                    {
                        // The supervisor sees the same failure and reconnects.
                        Err(BusError::NotConnected(e.to_string()))
                    }
                    Err(e) => Err(BusError::Backend(Box::new(e))),
                };
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result.map(drop),
            Err(_) => Err(BusError::PublishTimeout(timeout)),
        }
    }
}

#[async_trait]
impl MessageBus for RedisBus {
    async fn publish(
        &self,
        channel: &str,
        payload: bytes::Bytes,
    ) -> Result<PublishReceipt, BusError> {
        self.publish_parts(channel, payload, None, Vec::new()).await
    }

    async fn publish_message(&self, message: Message) -> Result<PublishReceipt, BusError> {
        let Message {
            channel,
            payload,
            id,
            headers,
        } = message;
        self.publish_parts(&channel, payload, id, headers).await
    }

    async fn subscribe(&self, channel: &str) -> Result<Subscription, BusError> {
        validate_channel(channel)?;
        if self.state.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        let name: ChannelName = channel.into();
        let registered = self
            .state
            .registrations()
            .register(
                &self.state.fanout,
                &name,
                self.state.options.subscriber_queue,
            )
            .map_err(|_| BusError::Closed)?;
        let state = self.state.clone();
        let key = name.clone();
        let id = registered.id;
        // Dropping the subscription (also on every error below) undoes the registration, so a
        // failed `subscribe` leaves nothing behind for the supervisor to subscribe.
        let subscription = Subscription::new(
            name.clone(),
            registered.queue,
            Box::new(move || {
                if state.registrations().unregister(&state.fanout, &key, id) {
                    state.reconcile.notify_one();
                }
            }),
        );
        let Some(confirmation) = registered.wait else {
            return Ok(subscription);
        };
        // Wait until Redis confirmed SUBSCRIBE, connected or not, so that what is published
        // after this returns is delivered.
        self.state.reconcile.notify_one();
        let limit = self.state.redis.connect_timeout;
        match tokio::time::timeout(limit, confirmation).await {
            Ok(Ok(Ok(()))) => Ok(subscription),
            Ok(Ok(Err(reason))) => Err(BusError::Refused {
                channel: channel.to_owned(),
                reason,
            }),
            // The bus closed while we waited.
            Ok(Err(_)) => Err(BusError::Closed),
            Err(_) => {
                let health = self.state.health();
                let mut reason =
                    format!("Redis did not confirm SUBSCRIBE to `{channel}` within {limit:?}");
                if !health.is_connected()
                    && let Some(why) = health.reason
                {
                    reason = format!("{reason} ({why})");
                }
                Err(BusError::NotConnected(reason))
            }
        }
    }

    fn health(&self) -> Health {
        self.state.health()
    }

    /// Returns once the supervisor has connected and installed the publishing connection (or
    /// the bus closed).
    async fn wait_connected(&self) {
        loop {
            let changed = self.state.publisher_changed.notified();
            tokio::pin!(changed);
            // Register before looking, so an install between the look and the wait is seen.
            changed.as_mut().enable();
            if self.state.current_publisher().is_some() || self.state.closed.load(Ordering::Acquire)
            {
                return;
            }
            changed.await;
        }
    }

    fn options(&self) -> &BusOptions {
        &self.state.options
    }

    async fn close(&self) {
        self.state.begin_close();
        let task = self
            .supervisor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = task
            && let Err(error) = task.await
            && error.is_panic()
        {
            tracing::error!(backend = BACKEND, %error, "the Redis supervisor panicked");
        }
        self.state.set_health(Health::down("the bus is closed"));
    }
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        self.state.begin_close();
        // Dropping the handle aborts the supervisor.
        self.supervisor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}
