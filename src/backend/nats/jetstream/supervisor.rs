//! What happens when the NATS connection drops or the server restarts, seen from the whole bus:
//! the supervisor task, and the sweep that keeps `<ns>_bus_nats_ack_pending` current.
//!
//! The supervisor feeds the link's events to the shared `LinkHealth` (down while
//! disconnected, with the server's reason when connecting fails; `<ns>_bus_nats_reconnects_total`
//! for every reconnect; client-side drops of the pull inbox as `dropped{reason="slow_consumer"}`,
//! which the server delivers again after `ack_wait`) and, after every connect, checks the
//! stream again: a server that restarted with an empty store
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

use super::JetStream;
use super::api::CONSUMER_NOT_FOUND;
use super::stream::{self, StreamProblem};
use crate::backend::nats::link::LinkEvent;
use crate::backend::nats::until;
use crate::backoff::Backoff;

/// How often the ack-pending gauge is refreshed from the server.
pub(super) const ACK_PENDING_INTERVAL: Duration = Duration::from_secs(2);

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
        let expiry = js.status().link.next_expiry();
        // `biased` everywhere: tokio's default random branch order would make simulation runs
        // differ for the same seed.
        tokio::select! {
            biased;
            _ = js.cancel.cancelled() => return,
            event = events.next(), if !events_ended => match event {
                Some(event) => {
                    // Every `Connected` event is a (re)connect, even when a look at the link's
                    // state had already marked it up.
                    let connected = matches!(event, LinkEvent::Connected);
                    js.update(|status| status.link.apply(event));
                    if connected {
                        js.reconnected.notify_waiters();
                        // The server may have come back with an empty store.
                        failures = 0;
                        check_stream = Some(Instant::now());
                    }
                }
                None => {
                    // The link reports nothing more; what it reported last stays.
                    events_ended = true;
                }
            },
            _ = until(expiry) => js.update(|status| status.link.expire()),
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
