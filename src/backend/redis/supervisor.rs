//! What happens when Redis restarts, fails over, goes silent or refuses a channel: the
//! supervisor task.
//!
//! One task per bus owns the connection lifecycle:
//!
//! 1. resolve the server (standalone, Sentinel master, or a Cluster node) and open the
//!    publishing connection and the Pub/Sub connection through the `Connector` (sharded Pub/Sub:
//!    read the slot map from that node and open both connections to every master, see
//!    `shards.rs`);
//! 2. subscribe every channel that has local subscribers; once Redis confirmed them, install
//!    the publishing connection and report connected. From then on keep Redis's subscriptions
//!    in line with the local ones as they come and go;
//! 3. decode each message and queue it for the channel's local subscribers, in arrival order
//!    (one task, never a task per message: that would reorder);
//! 4. PING both connections every `liveness_interval`: a connection that does not answer within
//!    `liveness_timeout` is replaced, because a wedged connection that still accepts writes is
//!    the failure where publishes "succeed" and nothing is delivered;
//! 5. on any failure: mark the bus down, count the reconnect, wait a jittered backoff, go to 1.
//!
//! Sentinel failovers also end the session when the sentinel announces `+switch-master`.
//!
//! **Fairness and memory.** redis-rs reads the Pub/Sub socket on a task of its own and queues
//! every message in an unbounded channel that only this task drains. So the session loop never
//! awaits a command: `SUBSCRIBE`/`UNSUBSCRIBE` rounds and PINGs run as futures beside it (the
//! Pub/Sub sink pipelines commands, so they may overlap), and the loop keeps draining messages
//! into the bounded subscriber queues (which drop the oldest and count it) while they are in
//! flight. Its biased `select!` puts the rare events (shutdown, a finished command, a new
//! subscriber, the probe tick) before messages, and one turn takes at most
//! [`MESSAGES_PER_TURN`] messages, so a flood starves neither the commands nor the draining.
//! What the supervisor has not taken yet is bounded too (see `intake.rs`).
//!
//! **Refusals.** Each channel gets its own `SUBSCRIBE` (pipelined, one round trip for all), so
//! a refusal (an ACL without that channel: `NOPERM`) names its channel. It belongs to that
//! channel's subscribers: they are told and removed, and the session carries on for the rest.
//!
//! **Backoff.** The failure count that sizes the backoff resets only once a session has proven
//! healthy by answering a liveness probe; a server that accepts connections and then drops them
//! is retried with growing pauses, not every 50 ms.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::{BoxFuture, FutureExt, join_all};
use redis::{AsyncConnectionConfig, ErrorKind, RedisConnectionInfo, RetryMethod, Value};
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

use super::intake::{Event, Incoming};
use super::shards::{self, Connections, Publishers, Subscriber};
use super::topology::{Resolver, SwitchWatch, is_master, switch_concerns};
use super::{BACKEND, BusState};
use crate::backend::{fan_out, foreign_on_receipt};
use crate::bus::Health;
use crate::envelope::{Envelope, is_envelope};
use crate::log_limit::LogLimiter;
use crate::metrics::DropReason;
use crate::queue::ChannelName;

/// The most messages one turn of the session loop dispatches before it looks at everything
/// else again. Large enough that the per-turn cost of `select!` is shared by many messages,
/// small enough that a turn takes microseconds.
const MESSAGES_PER_TURN: usize = 64;

/// How a connection attempt or a session ended.
enum SessionEnd {
    /// The bus is closing.
    Shutdown,
    /// The attempt never produced a session.
    Failed(String),
    /// A session was up and broke.
    Lost(String),
}

/// One connected period: the connections to one server (or, sharded, to every master).
struct Session {
    connections: Connections,
    switch: Option<SwitchWatch>,
}

/// The rate limits of the supervisor's repeated warnings.
struct Throttles {
    malformed: LogLimiter,
    shed: LogLimiter,
    connect_failed: LogLimiter,
}

/// The supervisor task: runs until the bus is closed or dropped.
pub(super) async fn run(state: Arc<BusState>) {
    let shutdown = state.shutdown.clone();
    let mut resolver = Resolver::new(state.redis.target.topology.clone());
    let mut throttles = Throttles {
        malformed: LogLimiter::default(),
        shed: LogLimiter::default(),
        connect_failed: LogLimiter::default(),
    };
    // Consecutive failures since the last session that proved healthy; sizes the backoff.
    let mut failures: u32 = 0;
    let mut attempts: u64 = 0;
    let mut last_server: Option<String> = None;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        if attempts > 0 {
            state.bus_metrics.redis_reconnects().inc();
        }
        attempts += 1;
        let attempt = tokio::time::timeout(
            state.redis.connect_timeout,
            open_session(&state, &mut resolver),
        );
        // `biased` everywhere: tokio's default random branch order would make simulation
        // runs differ for the same seed.
        let end = tokio::select! {
            biased;
            _ = shutdown.cancelled() => SessionEnd::Shutdown,
            opened = attempt => match opened {
                Ok(Ok(mut session)) => {
                    let addr = &session.connections.addr;
                    if let Some(previous) = last_server.as_deref()
                        && previous != addr
                    {
                        info!(
                            backend = BACKEND,
                            from = previous,
                            to = %addr,
                            "Redis server changed (failover or another cluster node)"
                        );
                    }
                    last_server = Some(addr.clone());
                    session.connections.publishers.session = attempts;
                    serve(&state, session, &mut failures, &mut throttles).await
                }
                Ok(Err(reason)) => SessionEnd::Failed(reason),
                Err(_) => SessionEnd::Failed(format!(
                    "connecting took longer than {:?}",
                    state.redis.connect_timeout
                )),
            },
        };
        let delay = state.redis.backoff.delay(failures, &state.options.ids);
        let reason = match end {
            SessionEnd::Shutdown => break,
            SessionEnd::Lost(reason) => {
                warn!(
                    backend = BACKEND,
                    server = last_server.as_deref().unwrap_or_default(),
                    %reason,
                    retry_in = ?delay,
                    "Redis connection lost; reconnecting"
                );
                reason
            }
            SessionEnd::Failed(reason) => {
                if let Some(suppressed) = throttles.connect_failed.admit(1) {
                    warn!(
                        backend = BACKEND,
                        %reason,
                        failures = failures + 1,
                        suppressed,
                        retry_in = ?delay,
                        "cannot connect to Redis; retrying"
                    );
                } else {
                    debug!(backend = BACKEND, %reason, retry_in = ?delay, "cannot connect to Redis");
                }
                reason
            }
        };
        lost(&state, &reason);
        resolver.failed();
        failures = failures.saturating_add(1);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    lost(&state, "the bus is closed");
    state.registrations().close();
    debug!(backend = BACKEND, "Redis supervisor stopped");
}

/// Marks the connection gone: publishes wait for the next one, subscriptions await resubscribe.
fn lost(state: &BusState, reason: &str) {
    state.set_publisher(None);
    state.registrations().connection_lost();
    state.set_health(Health::down(format!("Redis connection lost: {reason}")));
}

fn connection_info(state: &BusState) -> RedisConnectionInfo {
    let target = &state.redis.target;
    let mut info = RedisConnectionInfo::default().set_db(target.db);
    if let Some(user) = &target.username {
        info = info.set_username(user);
    }
    if let Some(password) = &target.password {
        info = info.set_password(secrecy::ExposeSecret::expose_secret(password));
    }
    info
}

fn sentinel_info(state: &BusState) -> RedisConnectionInfo {
    let mut info = RedisConnectionInfo::default();
    if let Some((user, password)) = &state.redis.target.sentinel_auth {
        if let Some(user) = user {
            info = info.set_username(user);
        }
        info = info.set_password(secrecy::ExposeSecret::expose_secret(password));
    }
    info
}

async fn open_session(state: &BusState, resolver: &mut Resolver) -> Result<Session, String> {
    let connector = state.redis.connector.as_ref();
    let resolved = resolver.resolve(connector, &sentinel_info(state)).await?;
    let addr = resolved.addr;
    let info = connection_info(state);
    let (mut publisher, driver) =
        shards::multiplexed(connector, &info, &addr, AsyncConnectionConfig::new()).await?;
    if resolver.needs_master_check() {
        let role = redis::cmd("ROLE")
            .query_async::<Value>(&mut publisher)
            .await
            .map_err(|e| format!("ROLE on {addr}: {e}"))?;
        if !is_master(&role) {
            return Err(format!(
                "{addr} is not a master (the sentinel's view is stale)"
            ));
        }
    }
    let slots = resolver.learn(&mut publisher, &addr).await;
    let connections = if state.redis.target.sharded {
        let slots = slots.ok_or_else(|| format!("CLUSTER SLOTS on {addr} failed"))?;
        // The seed only told where the masters are.
        drop((publisher, driver));
        shards::sharded(connector, &info, &addr, &slots).await?
    } else {
        shards::classic(connector, &info, addr, publisher, driver).await?
    };
    Ok(Session {
        connections,
        switch: resolved.switch,
    })
}

/// A command running beside the session loop; `None` when there is none.
type Work<'a, T> = Option<BoxFuture<'a, T>>;

/// Completes with the work's result; pending forever when there is no work.
async fn finished<T>(work: &mut Work<'_, T>) -> T {
    match work {
        Some(work) => work.await,
        None => std::future::pending().await,
    }
}

/// Completes when the first of the connection drivers ends (its connection broke).
async fn any_ended(drivers: &mut [AbortOnDropHandle<()>]) {
    std::future::poll_fn(|cx| {
        for driver in drivers.iter_mut() {
            if driver.poll_unpin(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Runs one session until it breaks or the bus closes (see the module docs for the loop).
async fn serve(
    state: &BusState,
    session: Session,
    failures: &mut u32,
    throttles: &mut Throttles,
) -> SessionEnd {
    let Session {
        connections:
            Connections {
                addr,
                publishers,
                subscriber,
                events: mut messages,
                mut drivers,
            },
        mut switch,
    } = session;
    // What this connection has subscribed; lent to the round in flight.
    let mut subscribed = BTreeSet::new();
    // Planted `skip_resubscribe`: the new connection starts from what the lost one had, so
    // nothing is subscribed again and the old subscribers hear nothing.
    #[cfg(hubbus_planted)]
    if crate::planted::active("skip_resubscribe") {
        subscribed = state
            .planted_subscribed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
    }
    // The first round subscribes everything wanted; the session is ready once it is confirmed.
    let mut reconciling: Work<'_, Round> = Some(
        reconcile(
            state,
            subscriber.clone(),
            std::mem::take(&mut subscribed),
            addr.clone(),
        )
        .boxed(),
    );
    let mut probing: Work<'_, Result<(), String>> = None;
    let mut ready = false;
    let mut proven = false;

    let interval = state.redis.liveness_interval;
    let mut probe = tokio::time::interval_at(Instant::now() + interval, interval);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = state.shutdown.cancelled() => return SessionEnd::Shutdown,
            _ = any_ended(&mut drivers) => {
                return SessionEnd::Lost(format!("a connection to {addr} closed"));
            }
            _ = state.moved.notified() => {
                if state.moved_session() == publishers.session {
                    return SessionEnd::Lost(format!(
                        "a publish found the cluster's slot map of {addr} stale"
                    ));
                }
            }
            round = finished(&mut reconciling) => {
                reconciling = None;
                subscribed = round.subscribed;
                #[cfg(hubbus_planted)]
                state
                    .planted_subscribed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone_from(&subscribed);
                if let Err(reason) = round.result {
                    return SessionEnd::Lost(reason);
                }
                if !ready {
                    ready = true;
                    state.set_publisher(Some(publishers.clone()));
                    state.set_health(Health::connected());
                    info!(
                        backend = BACKEND,
                        server = %addr,
                        channels = subscribed.len(),
                        "connected to Redis"
                    );
                }
            }
            answered = finished(&mut probing) => {
                probing = None;
                if let Err(reason) = answered {
                    return SessionEnd::Lost(reason);
                }
                if !proven {
                    // Only a session that answered a probe resets the backoff.
                    proven = true;
                    *failures = 0;
                }
            }
            notice = next_switch(&mut switch) => {
                if let Some(reason) = notice {
                    warn!(backend = BACKEND, server = %addr, %reason, "Redis failover announced");
                    return SessionEnd::Lost(reason);
                }
            }
            _ = state.reconcile.notified(), if reconciling.is_none() => {
                reconciling = Some(
                    reconcile(
                        state,
                        subscriber.clone(),
                        std::mem::take(&mut subscribed),
                        addr.clone(),
                    )
                        .boxed(),
                );
            }
            _ = probe.tick(), if probing.is_none() => {
                probing = Some(
                    probe_liveness(state, subscriber.clone(), publishers.clone(), addr.clone())
                        .boxed(),
                );
            }
            message = messages.next() => {
                let Some(incoming) = message else {
                    return SessionEnd::Lost(format!("Pub/Sub connection to {addr} closed"));
                };
                let mut shed = Shed::default();
                if let Err(reason) = dispatch(state, &subscriber, incoming, &mut shed, throttles) {
                    return SessionEnd::Lost(reason);
                }
                // Take what is already queued, up to the turn's bound, without waiting.
                for _ in 1..MESSAGES_PER_TURN {
                    match messages.next().now_or_never() {
                        Some(Some(incoming)) => {
                            if let Err(reason) =
                                dispatch(state, &subscriber, incoming, &mut shed, throttles)
                            {
                                return SessionEnd::Lost(reason);
                            }
                        }
                        Some(None) => {
                            return SessionEnd::Lost(format!("Pub/Sub connection to {addr} closed"));
                        }
                        None => break,
                    }
                }
                shed.record(state, throttles);
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

/// What one reconcile round did: the connection's subscriptions afterwards, and whether the
/// connection still works.
struct Round {
    subscribed: BTreeSet<ChannelName>,
    result: Result<(), String>,
}

/// Brings Redis's subscriptions on this connection in line with the local subscribers and
/// tells the waiting `subscribe` calls. Repeats until nothing changed while it talked to Redis,
/// so a subscriber that arrives mid-way is not left unsubscribed.
async fn reconcile(
    state: &BusState,
    subscriber: Subscriber,
    mut subscribed: BTreeSet<ChannelName>,
    addr: String,
) -> Round {
    let limit = state.redis.liveness_timeout;
    let result = async {
        loop {
            // Snapshot and un-confirm in one critical section (see `registrations.rs`).
            let plan = state.registrations().plan(&subscribed);
            if plan.is_empty() {
                return Ok(());
            }
            if !plan.unsubscribe.is_empty() {
                let names: Vec<&str> = plan.unsubscribe.iter().map(|c| c.as_ref()).collect();
                tokio::time::timeout(limit, subscriber.unsubscribe(&names))
                    .await
                    .map_err(|_| format!("UNSUBSCRIBE on {addr} timed out"))?
                    .map_err(|e| format!("UNSUBSCRIBE on {addr}: {e}"))?;
                for channel in &plan.unsubscribe {
                    subscribed.remove(channel);
                }
            }
            if plan.subscribe.is_empty() {
                continue;
            }
            // One command per channel, all in one pipeline: each answer is about one channel.
            let answers = join_all(
                plan.subscribe
                    .iter()
                    .map(|channel| subscriber.subscribe(channel.as_ref())),
            );
            let answers = tokio::time::timeout(limit, answers)
                .await
                .map_err(|_| format!("SUBSCRIBE on {addr} timed out"))?;
            let mut confirmed = Vec::new();
            let mut refused = Vec::new();
            for (channel, answer) in plan.subscribe.into_iter().zip(answers) {
                match answer {
                    Ok(()) => confirmed.push(channel),
                    Err(error) if is_refusal(&error) => {
                        // In Redis's own words: `NOPERM this user has no permissions ...`.
                        let reason = match (error.code(), error.detail()) {
                            (Some(code), Some(detail)) => format!("{code} {detail}"),
                            _ => error.to_string(),
                        };
                        refused.push((channel, reason));
                    }
                    Err(error) => return Err(format!("SUBSCRIBE {channel} on {addr}: {error}")),
                }
            }
            subscribed.extend(confirmed.iter().cloned());
            let ended = state
                .registrations()
                .settle(&state.fanout, &confirmed, &refused);
            // Planted `channel_error_tears_down_others`: one refused channel ends the
            // subscriptions of every channel.
            #[cfg(hubbus_planted)]
            if crate::planted::active("channel_error_tears_down_others")
                && let Some((_, reason)) = refused.first()
            {
                let mut registrations = state.registrations();
                let others: Vec<(ChannelName, String)> = registrations
                    .wanted()
                    .into_iter()
                    .map(|channel| (channel, reason.clone()))
                    .collect();
                registrations.settle(&state.fanout, &[], &others);
            }
            for ((channel, reason), subscribers) in refused.iter().zip(ended) {
                warn!(
                    backend = BACKEND,
                    server = %addr,
                    %channel,
                    %reason,
                    subscribers,
                    "Redis refused SUBSCRIBE; the channel's subscriptions end"
                );
            }
        }
    }
    .await;
    Round { subscribed, result }
}

/// True when Redis answered a command with an error that retrying cannot fix (an ACL without
/// the channel, `NOPERM`, above all): it belongs to the channel, not to the connection.
/// Transient answers (`LOADING`, `MASTERDOWN`, `TRYAGAIN`, ...) and broken connections are not
/// refusals: the session is replaced and the channel subscribed again.
fn is_refusal(error: &redis::RedisError) -> bool {
    matches!(error.kind(), ErrorKind::Server(_) | ErrorKind::Extension)
        && matches!(error.retry_method(), RetryMethod::NoRetry)
}

async fn probe_liveness(
    state: &BusState,
    subscriber: Subscriber,
    publishers: Publishers,
    addr: String,
) -> Result<(), String> {
    let ping = async {
        subscriber.ping().await?;
        publishers.ping().await
    };
    match tokio::time::timeout(state.redis.liveness_timeout, ping).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("PING on {addr}: {e}")),
        Err(_) => Err(format!(
            "{addr} did not answer PING within {:?}",
            state.redis.liveness_timeout
        )),
    }
}

/// The messages one turn dropped unread because the supervisor fell behind.
#[derive(Default)]
struct Shed {
    count: u64,
    last_channel: Option<String>,
}

impl Shed {
    /// Counts them once per turn: shedding is the hot path of an overloaded node.
    fn record(self, state: &BusState, throttles: &mut Throttles) {
        if self.count == 0 {
            return;
        }
        state.metrics.dropped(DropReason::SlowConsumer, self.count);
        if let Some(suppressed) = throttles.shed.admit(self.count) {
            warn!(
                backend = BACKEND,
                channel = self.last_channel.as_deref().unwrap_or_default(),
                suppressed,
                "this node cannot keep up with its Redis channels; dropping the oldest messages"
            );
        }
    }
}

/// Decodes one message and queues it for the channel's local subscribers; sheds it instead
/// when the supervisor has fallen too far behind the socket (see `intake.rs`). Fails when the
/// server ended a subscription this node did not give up: the channel's slot moved (sharded
/// Pub/Sub), and the session must read the cluster's map again.
fn dispatch(
    state: &BusState,
    subscriber: &Subscriber,
    incoming: Incoming,
    shed: &mut Shed,
    throttles: &mut Throttles,
) -> Result<(), String> {
    let Incoming { event, behind } = incoming;
    let message = match event {
        Event::Message(message) => message,
        Event::Unsubscribed(channel) => {
            if subscriber.unsolicited(&channel) {
                return Err(format!(
                    "Redis ended the subscription to `{}`: its slot moved",
                    String::from_utf8_lossy(&channel)
                ));
            }
            return Ok(());
        }
    };
    let channel = message.get_channel_name();
    if behind {
        shed.count += 1;
        if shed.last_channel.as_deref() != Some(channel) {
            shed.last_channel = Some(channel.to_owned());
        }
        return Ok(());
    }
    let frame = message.get_payload_bytes();
    if !is_envelope(frame) {
        let payload = Bytes::copy_from_slice(frame);
        let foreign = foreign_on_receipt(
            &state.options,
            &state.metrics,
            channel.into(),
            payload,
            Vec::new(),
        );
        if let Some(delivery) = foreign {
            fan_out(&state.fanout, &state.metrics, &delivery);
        }
        return Ok(());
    }
    let envelope = match Envelope::decode(Bytes::copy_from_slice(frame)) {
        Ok(envelope) => envelope,
        Err(error) => {
            state.metrics.dropped(DropReason::Malformed, 1);
            if let Some(suppressed) = throttles.malformed.admit(1) {
                warn!(
                    backend = BACKEND,
                    channel,
                    %error,
                    suppressed,
                    "dropped a malformed hubbus envelope"
                );
            }
            return Ok(());
        }
    };
    let now = state.options.ids.now_nanos();
    if let Some(elapsed) = now.checked_sub(envelope.published_at) {
        state
            .bus_metrics
            .redis_latency()
            .observe(elapsed as f64 / 1e9);
    }
    let delivery = crate::backend::delivery(channel.into(), envelope, false);
    fan_out(&state.fanout, &state.metrics, &delivery);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_answers_that_retrying_cannot_fix_are_refusals() {
        let server = |code: &str| {
            redis::RedisError::from((
                ErrorKind::Server(match code {
                    "NOPERM" => redis::ServerErrorKind::NoPerm,
                    "ERR" => redis::ServerErrorKind::ResponseError,
                    "LOADING" => redis::ServerErrorKind::BusyLoading,
                    _ => redis::ServerErrorKind::MasterDown,
                }),
                "from the server",
            ))
        };
        assert!(is_refusal(&server("NOPERM")));
        assert!(is_refusal(&server("ERR")));
        assert!(!is_refusal(&server("LOADING")));
        assert!(!is_refusal(&server("MASTERDOWN")));
        let io = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(!is_refusal(&io));
    }
}
