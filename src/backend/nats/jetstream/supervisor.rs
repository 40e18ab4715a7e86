//! What happens when the NATS connection drops or the server restarts, seen from the whole bus:
//! the supervisor task, and the sweep that keeps `<ns>_bus_nats_ack_pending` current.
//!
//! The supervisor turns the link's events into health and metrics (down while disconnected,
//! with the server's reason when connecting fails; `<ns>_bus_nats_reconnects_total` for every
//! reconnect; client-side drops of the pull inbox as `dropped{reason="slow_consumer"}`) and,
//! after every connect, checks the stream again: a server that restarted with an empty store
//! has lost it. Until the stream is confirmed, health is down with the reason, and the check is
//! retried with backoff. The pull loop is woken on a reconnect so it pulls again at once instead
//! of waiting for its lost pull to time out.
//!
//! The sweep reads `$JS.API.CONSUMER.INFO` of the node's consumer every
//! [`ACK_PENDING_INTERVAL`] once the consumer exists, and sets the gauge to its
//! `num_ack_pending`: how many deliveries the server waits to have settled. Reading the server
//! rather than counting locally also covers acks lost with a connection.

use std::sync::Arc;
use std::time::Duration;

use futures_core::stream::BoxStream;
use futures_util::StreamExt;
use tokio::time::Instant;

use super::api::CONSUMER_NOT_FOUND;
use super::stream::{self, StreamProblem};
use super::{Connection, JetStream};
use crate::backend::nats::link::LinkEvent;
use crate::backoff::Backoff;
use crate::metrics::DropReason;

/// How often the ack-pending gauge is refreshed from the server.
pub(super) const ACK_PENDING_INTERVAL: Duration = Duration::from_secs(2);

/// Sleeps until `deadline`; never wakes without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The supervisor task: runs until the bus closes.
pub(super) async fn supervise(
    js: Arc<JetStream>,
    mut events: BoxStream<'static, LinkEvent>,
    stream_ready: bool,
) {
    let backoff = Backoff::default();
    let mut failures: u32 = 0;
    let mut check_stream = (!stream_ready).then(Instant::now);
    let mut events_ended = false;
    loop {
        // `biased` everywhere: tokio's default random branch order would make simulation runs
        // differ for the same seed.
        tokio::select! {
            biased;
            _ = js.cancel.cancelled() => return,
            event = events.next(), if !events_ended => match event {
                Some(LinkEvent::Connected) => {
                    let reconnect = js.update(|status| {
                        let reconnect = matches!(status.connection, Connection::Lost(_));
                        status.connection = Connection::Up;
                        reconnect
                    });
                    if reconnect {
                        js.bus_metrics.nats_reconnects().inc();
                        tracing::info!("reconnected to NATS");
                    } else {
                        tracing::info!("connected to NATS");
                    }
                    js.reconnected.notify_waiters();
                    // The server may have come back with an empty store.
                    failures = 0;
                    check_stream = Some(Instant::now());
                }
                Some(LinkEvent::Disconnected(reason)) => {
                    tracing::warn!(%reason, "NATS connection lost; reconnecting");
                    js.update(|status| status.connection = Connection::Lost(reason));
                }
                Some(LinkEvent::ServerError(error)) => {
                    // While connected a server error concerns one operation, which reports it
                    // itself; while not connected it is why connecting fails.
                    tracing::warn!(%error, "NATS server error");
                    js.update(|status| {
                        if let Connection::Connecting(failed) = &mut status.connection {
                            *failed = Some(error);
                        }
                    });
                }
                Some(LinkEvent::Closed) => {
                    tracing::warn!("the NATS connection closed and will not reconnect");
                    js.update(|status| status.connection = Connection::Ended);
                }
                Some(LinkEvent::SlowConsumer(_)) => {
                    // The client dropped deliveries of the inbox read too slowly; they were not
                    // acknowledged, so the server delivers them again after `ack_wait`.
                    js.metrics.dropped(DropReason::SlowConsumer, 1);
                }
                None => {
                    // The link reports nothing more; what it reported last stays.
                    events_ended = true;
                }
            },
            _ = until(check_stream) => {
                if !js.link.is_connected() {
                    // Checked again after the next `Connected`.
                    check_stream = None;
                    continue;
                }
                let checked = tokio::select! {
                    biased;
                    _ = js.cancel.cancelled() => return,
                    checked = stream::ensure(&js) => checked,
                };
                match checked {
                    Ok(_) => check_stream = None,
                    Err(problem) => {
                        if let StreamProblem::Unavailable(reason) = problem {
                            tracing::warn!(stream = %js.js.stream, %reason, "JetStream stream not available");
                            js.stream_unavailable(reason);
                        }
                        let delay = backoff.delay(failures, &js.options.ids);
                        failures = failures.saturating_add(1);
                        check_stream = Some(Instant::now() + delay);
                    }
                }
            }
        }
    }
}

/// The ack-pending sweep: runs until the bus closes.
pub(super) async fn sweep_ack_pending(js: Arc<JetStream>) {
    let mut ticks =
        tokio::time::interval_at(Instant::now() + ACK_PENDING_INTERVAL, ACK_PENDING_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = js.cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if !js.link.is_connected() || !js.consumer.is_ready() {
            continue;
        }
        let info = tokio::select! {
            biased;
            _ = js.cancel.cancelled() => return,
            info = super::consumer::info(&js) => info,
        };
        match info {
            Ok(info) => js.consumer.observe(&info),
            Err(error) if error.is(CONSUMER_NOT_FOUND) => js.consumer.forget_pending(),
            // Keep the last value; the next sweep tries again.
            Err(_) => {}
        }
        js.bus_metrics
            .nats_ack_pending()
            .set(i64::try_from(js.consumer.ack_pending()).unwrap_or(i64::MAX));
    }
}
