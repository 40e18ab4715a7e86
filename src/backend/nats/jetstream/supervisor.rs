//! What happens when the NATS connection drops or the server restarts, seen from the whole bus:
//! the supervisor task, and the sweep that keeps `<ns>_bus_nats_ack_pending` current.
//!
//! The supervisor turns the link's events into health and metrics (down while disconnected,
//! `<ns>_bus_nats_reconnects_total` for every reconnect) and, after every connect, checks the
//! stream again: a server that restarted with an empty store has lost it. Until the stream is
//! confirmed, health is down with the reason, and the check is retried with backoff. Pull
//! loops are woken on a reconnect so they pull again at once instead of waiting for their lost
//! pull to time out.
//!
//! The sweep reads `$JS.API.CONSUMER.INFO` of each of this node's consumers every
//! [`ACK_PENDING_INTERVAL`], one after the other, and sets the gauge to the sum of their
//! `num_ack_pending`: how many deliveries the server waits to have settled. Reading the server
//! rather than counting locally also covers deliveries dropped from slow queues and acks lost
//! with a connection.

use std::time::Duration;

use futures_core::stream::BoxStream;
use futures_util::StreamExt;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::api::CONSUMER_NOT_FOUND;
use super::stream::{self, StreamProblem};
use super::{Connection, Shared};
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

/// The supervisor task: runs until stopped.
pub(super) async fn supervise(
    shared: std::sync::Arc<Shared>,
    mut events: BoxStream<'static, LinkEvent>,
    mut stop: oneshot::Receiver<()>,
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
            _ = &mut stop => return,
            event = events.next(), if !events_ended => match event {
                Some(LinkEvent::Connected) => {
                    let reconnect = shared.update(|state| {
                        let reconnect = matches!(state.connection, Connection::Lost(_));
                        state.connection = Connection::Up;
                        reconnect
                    });
                    if reconnect {
                        shared.bus_metrics.nats_reconnects().inc();
                    }
                    shared.reconnected.notify_waiters();
                    // The server may have come back with an empty store.
                    failures = 0;
                    check_stream = Some(Instant::now());
                }
                Some(LinkEvent::Disconnected(reason)) => {
                    shared.update(|state| state.connection = Connection::Lost(reason));
                }
                Some(LinkEvent::Closed) => {
                    shared.update(|state| state.connection = Connection::Ended);
                }
                Some(LinkEvent::SlowConsumer(_)) => {
                    // The client dropped deliveries of an inbox read too slowly; they were not
                    // acknowledged, so the server delivers them again after `ack_wait`.
                    shared.metrics.dropped(DropReason::SlowConsumer, 1);
                }
                Some(_) => {}
                None => {
                    // The link reports nothing more; what it reported last stays.
                    events_ended = true;
                }
            },
            _ = until(check_stream) => {
                if !shared.link.is_connected() {
                    // Checked again after the next `Connected`.
                    check_stream = None;
                    continue;
                }
                let checked = tokio::select! {
                    biased;
                    _ = &mut stop => return,
                    checked = stream::ensure(&shared) => checked,
                };
                match checked {
                    Ok(_) => check_stream = None,
                    Err(problem) => {
                        if let StreamProblem::Unavailable(reason) = problem {
                            shared.stream_unavailable(reason);
                        }
                        let delay = backoff.delay(failures, &shared.options.ids);
                        failures = failures.saturating_add(1);
                        check_stream = Some(Instant::now() + delay);
                    }
                }
            }
        }
    }
}

/// The ack-pending sweep: runs until stopped.
pub(super) async fn sweep_ack_pending(
    shared: std::sync::Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut ticks =
        tokio::time::interval_at(Instant::now() + ACK_PENDING_INTERVAL, ACK_PENDING_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => return,
            _ = ticks.tick() => {}
        }
        if !shared.link.is_connected() {
            continue;
        }
        let consumers = shared.channels().consumers();
        for consumer in &consumers {
            let info = tokio::select! {
                biased;
                _ = &mut stop => return,
                info = super::consumer::info(&shared, consumer) => info,
            };
            match info {
                Ok(info) => consumer.observe(&info),
                Err(error) if error.is(CONSUMER_NOT_FOUND) => consumer.forget_pending(),
                // Keep the last value; the next sweep tries again.
                Err(_) => {}
            }
        }
        let pending: u64 = shared
            .channels()
            .consumers()
            .iter()
            .map(|consumer| consumer.ack_pending())
            .sum();
        shared
            .bus_metrics
            .nats_ack_pending()
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
    }
}
