//! What happens when Redis restarts, fails over, or goes silent: the supervisor task.
//!
//! One task per bus owns the connection lifecycle:
//!
//! 1. resolve the server (standalone, Sentinel master, or a Cluster node) and open the
//!    publishing connection and the Pub/Sub connection through the `Connector`;
//! 2. subscribe every channel that has local subscribers, then keep Redis's subscriptions in
//!    line with the local ones as they come and go;
//! 3. decode each message and queue it for the channel's local subscribers, in arrival order
//!    (one task, never a task per message: that would reorder);
//! 4. PING both connections every `liveness_interval`: a connection that does not answer within
//!    `liveness_timeout` is replaced, because a wedged connection that still accepts writes is
//!    the failure where publishes "succeed" and nothing is delivered;
//! 5. on any failure: mark the bus down, count the reconnect, wait a jittered backoff, go to 1.
//!
//! Sentinel failovers also end the session when the sentinel announces `+switch-master`.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSub, PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, RedisConnectionInfo, Value};
use tokio_util::task::AbortOnDropHandle;

use super::BusState;
use super::topology::{Resolver, SwitchWatch, is_master, switch_concerns};
use crate::backend::fan_out;
use crate::bus::{Delivery, Health};
use crate::envelope::Envelope;
use crate::metrics::DropReason;
use crate::queue::ChannelName;

/// Why a session ended.
enum End {
    Shutdown,
    Lost(String),
}

/// One connected period: both connections to one server.
struct Session {
    addr: String,
    publisher: MultiplexedConnection,
    /// Drives the publishing connection; ends when it breaks. Aborted with the session.
    publisher_driver: AbortOnDropHandle<()>,
    sink: PubSubSink,
    messages: PubSubStream,
    switch: Option<SwitchWatch>,
    /// Channels subscribed on this connection.
    subscribed: BTreeSet<ChannelName>,
}

/// The supervisor task: runs until the bus is closed or dropped.
pub(super) async fn run(shared: Arc<BusState>) {
    let shutdown = shared.shutdown.clone();
    let mut resolver = Resolver::new(shared.redis.target.topology.clone());
    let mut failures: u32 = 0;
    let mut attempts: u64 = 0;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        if attempts > 0 {
            shared.bus_metrics.redis_reconnects().inc();
        }
        attempts += 1;
        let attempt = tokio::time::timeout(
            shared.redis.connect_timeout,
            open_session(&shared, &mut resolver),
        );
        // `biased` everywhere: tokio's default random branch order would make simulation
        // runs differ for the same seed.
        let end = tokio::select! {
            biased;
            _ = shutdown.cancelled() => End::Shutdown,
            opened = attempt => match opened {
                Ok(Ok(session)) => {
                    failures = 0;
                    serve(&shared, session).await
                }
                Ok(Err(reason)) => End::Lost(reason),
                Err(_) => End::Lost(format!(
                    "connecting took longer than {:?}",
                    shared.redis.connect_timeout
                )),
            },
        };
        let reason = match end {
            End::Shutdown => break,
            End::Lost(reason) => reason,
        };
        lost(&shared, &reason);
        resolver.failed();
        let delay = shared.redis.backoff.delay(failures, &shared.options.ids);
        failures = failures.saturating_add(1);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    lost(&shared, "the bus is closed");
    shared.registrations().close();
}

/// Marks the connection gone: publishes wait for the next one, subscriptions await resubscribe.
fn lost(shared: &BusState, reason: &str) {
    shared.set_publisher(None);
    shared.registrations().connection_lost();
    shared.set_health(Health::down(format!("Redis connection lost: {reason}")));
}

fn connection_info(shared: &BusState) -> RedisConnectionInfo {
    let target = &shared.redis.target;
    let mut info = RedisConnectionInfo::default().set_db(target.db);
    if let Some(user) = &target.username {
        info = info.set_username(user);
    }
    if let Some(password) = &target.password {
        info = info.set_password(password);
    }
    info
}

fn sentinel_info(shared: &BusState) -> RedisConnectionInfo {
    let mut info = RedisConnectionInfo::default();
    if let Some((user, password)) = &shared.redis.target.sentinel_auth {
        if let Some(user) = user {
            info = info.set_username(user);
        }
        info = info.set_password(password);
    }
    info
}

async fn open_session(shared: &BusState, resolver: &mut Resolver) -> Result<Session, String> {
    let connector = shared.redis.connector.as_ref();
    let resolved = resolver.resolve(connector, &sentinel_info(shared)).await?;
    let addr = resolved.addr;
    let fail = |what: &str, error: &dyn std::fmt::Display| format!("{what} {addr}: {error}");
    let info = connection_info(shared);

    let stream = connector
        .connect(&addr)
        .await
        .map_err(|e| fail("connect to", &e))?;
    // Our own publish timeout bounds every request; the client's own timeout would only race it.
    let config = AsyncConnectionConfig::new().set_response_timeout(None);
    let (mut publisher, driver) = MultiplexedConnection::new_with_config(&info, stream, config)
        .await
        .map_err(|e| fail("handshake with", &e))?;
    let publisher_driver = AbortOnDropHandle::new(tokio::spawn(driver));
    if resolver.needs_master_check() {
        let role = redis::cmd("ROLE")
            .query_async::<Value>(&mut publisher)
            .await
            .map_err(|e| fail("ROLE on", &e))?;
        if !is_master(&role) {
            return Err(format!(
                "{addr} is not a master (the sentinel's view is stale)"
            ));
        }
    }
    resolver.learn(&mut publisher, &addr).await;

    let stream = connector
        .connect(&addr)
        .await
        .map_err(|e| fail("connect to", &e))?;
    let pubsub = PubSub::new(&info, stream)
        .await
        .map_err(|e| fail("Pub/Sub handshake with", &e))?;
    let (sink, messages) = pubsub.split();
    Ok(Session {
        addr,
        publisher,
        publisher_driver,
        sink,
        messages,
        switch: resolved.switch,
        subscribed: BTreeSet::new(),
    })
}

async fn serve(shared: &BusState, mut session: Session) -> End {
    if let Err(reason) = reconcile(shared, &mut session).await {
        return End::Lost(reason);
    }
    shared.set_publisher(Some(session.publisher.clone()));
    shared.set_health(Health::connected());

    let interval = shared.redis.liveness_interval;
    let mut probe = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => return End::Shutdown,
            _ = &mut session.publisher_driver => {
                return End::Lost(format!("publishing connection to {} closed", session.addr));
            }
            message = session.messages.next() => match message {
                Some(message) => dispatch(shared, &message),
                None => return End::Lost(format!("Pub/Sub connection to {} closed", session.addr)),
            },
            _ = shared.reconcile.notified() => {
                if let Err(reason) = reconcile(shared, &mut session).await {
                    return End::Lost(reason);
                }
            }
            _ = probe.tick() => {
                if let Err(reason) = probe_liveness(shared, &mut session).await {
                    return End::Lost(reason);
                }
            }
            notice = next_switch(&mut session.switch) => {
                if let Some(reason) = notice {
                    return End::Lost(reason);
                }
            }
        }
    }
}

/// The next `+switch-master` notice about our master, or the loss of the sentinel watch.
/// Pending forever when there is no watch (not Sentinel).
async fn next_switch(watch: &mut Option<SwitchWatch>) -> Option<String> {
    let Some(switch) = watch else {
        return std::future::pending().await;
    };
    match switch.messages.next().await {
        Some(message) if switch_concerns(message.get_payload_bytes(), &switch.master) => {
            Some(format!(
                "sentinel announced a new master: {}",
                String::from_utf8_lossy(message.get_payload_bytes())
            ))
        }
        Some(_) => None,
        None => {
            // The sentinel went away; the master may be fine. Resolve again at the next failure.
            *watch = None;
            None
        }
    }
}

/// Brings Redis's subscriptions on this connection in line with the local subscribers, then
/// wakes the `subscribe` calls waiting for confirmation. Repeats until nothing changed while it
/// talked to Redis, so a subscriber that arrives mid-way is not left unsubscribed.
async fn reconcile(shared: &BusState, session: &mut Session) -> Result<(), String> {
    let limit = shared.redis.liveness_timeout;
    loop {
        // Snapshot and un-confirm in one critical section (see `registrations.rs`).
        let plan = shared.registrations().plan(&session.subscribed);
        if plan.is_empty() {
            return Ok(());
        }
        if !plan.unsubscribe.is_empty() {
            let names: Vec<&str> = plan.unsubscribe.iter().map(|c| c.as_ref()).collect();
            tokio::time::timeout(limit, session.sink.unsubscribe(&names))
                .await
                .map_err(|_| format!("UNSUBSCRIBE on {} timed out", session.addr))?
                .map_err(|e| format!("UNSUBSCRIBE on {}: {e}", session.addr))?;
            for channel in &plan.unsubscribe {
                session.subscribed.remove(channel);
            }
        }
        if !plan.subscribe.is_empty() {
            let names: Vec<&str> = plan.subscribe.iter().map(|c| c.as_ref()).collect();
            tokio::time::timeout(limit, session.sink.subscribe(&names))
                .await
                .map_err(|_| format!("SUBSCRIBE on {} timed out", session.addr))?
                .map_err(|e| format!("SUBSCRIBE on {}: {e}", session.addr))?;
            session.subscribed.extend(plan.subscribe.iter().cloned());
            shared.registrations().settle(&plan.subscribe);
        }
    }
}

async fn probe_liveness(shared: &BusState, session: &mut Session) -> Result<(), String> {
    let ping = async {
        session.sink.ping::<Value>().await?;
        redis::cmd("PING")
            .query_async::<Value>(&mut session.publisher)
            .await
    };
    match tokio::time::timeout(shared.redis.liveness_timeout, ping).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("PING on {}: {e}", session.addr)),
        Err(_) => Err(format!(
            "{} did not answer PING within {:?}",
            session.addr, shared.redis.liveness_timeout
        )),
    }
}

/// Decodes one message and queues it for the channel's local subscribers.
fn dispatch(shared: &BusState, message: &redis::Msg) {
    let channel = message.get_channel_name();
    let envelope = match Envelope::decode(Bytes::copy_from_slice(message.get_payload_bytes())) {
        Ok(envelope) => envelope,
        Err(_) => {
            shared.metrics.dropped(DropReason::Malformed, 1);
            return;
        }
    };
    let now = shared.options.ids.now_nanos();
    if let Some(elapsed) = now.checked_sub(envelope.published_at) {
        shared
            .bus_metrics
            .redis_latency()
            .observe(elapsed as f64 / 1e9);
    }
    let delivery = Delivery::from_envelope(channel.into(), envelope, false, None);
    fan_out(&shared.fanout, &shared.metrics, &delivery);
}
