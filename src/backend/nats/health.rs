//! What the NATS connection's events mean for a bus: [`LinkHealth`] turns the link's
//! [`LinkEvent`]s into [`Health`] with a reason, metrics, and log lines.
//!
//! Both NATS backends see the same connection, so they should tell an operator the same
//! things about it; this type is that one translation. It is a plain state machine: the
//! backend's supervisor feeds it every event and asks for the health afterwards, and wakes it
//! at [`LinkHealth::next_expiry`] so that a degradation clears by itself.
//!
//! - Down until the first `Connected`, down with the reason while reconnecting (and with the
//!   reason of the last failed attempt, such as an authorization violation), down for good after
//!   `Closed`.
//! - Every `Connected` after a `Disconnected` is a reconnect, counted in
//!   `<ns>_bus_nats_reconnects_total`.
//! - A client-side slow-consumer drop is counted as `<ns>_bus_dropped_total{reason=
//!   "slow_consumer"}`, and a server error while connected (a permissions violation, say) is
//!   kept; either degrades health, with the reason, for [`DEGRADED_FOR`] after the last one:
//!   long enough for a probe or an operator to notice, short enough to clear by itself once the
//!   cause is gone.
//! - Connects, losses and reconnects are logged at info or warn with the reason; slow consumers
//!   and server errors while connected can repeat per message, so they are logged at most once
//!   per [`LOG_EVERY`] with the count of what was left out.

use std::time::Duration;

use tokio::time::Instant;

use super::link::LinkEvent;
use crate::bus::Health;
use crate::log_limit::{LOG_EVERY, LogLimiter};
use crate::metrics::{BackendMetrics, BusMetrics, DropReason};

/// How long health stays degraded after the last slow-consumer drop or server error.
pub(crate) const DEGRADED_FOR: Duration = Duration::from_secs(60);

/// The connection as a bus sees it, built from the link's events.
#[derive(Debug)]
pub(crate) struct LinkHealth {
    /// The `backend` field of log lines (`nats`, `jetstream`).
    backend: &'static str,
    metrics: BackendMetrics,
    bus_metrics: BusMetrics,
    up: bool,
    /// Why the connection went away, from the `Disconnected` until the next `Connected` (which
    /// is then a reconnect).
    lost: Option<String>,
    /// Why the last connection attempt failed, while down.
    failed: Option<String>,
    /// The link gave up for good.
    ended: bool,
    /// Until when health reports the last client-side drop, and of what (a subscription, a
    /// channel).
    slow_consumer: Option<(Instant, String)>,
    /// Until when health reports the last server error seen while connected, and what it was.
    server_error: Option<(Instant, String)>,
    slow_consumer_log: LogLimiter,
    server_error_log: LogLimiter,
}

impl LinkHealth {
    /// The health of a link that is (or is not yet) `connected`; `backend` names the bus in
    /// log lines.
    pub(crate) fn new(
        backend: &'static str,
        metrics: BackendMetrics,
        bus_metrics: BusMetrics,
        connected: bool,
    ) -> Self {
        if connected {
            tracing::info!(backend, "connected to NATS");
        }
        LinkHealth {
            backend,
            metrics,
            bus_metrics,
            up: connected,
            lost: None,
            failed: None,
            ended: false,
            slow_consumer: None,
            server_error: None,
            slow_consumer_log: LogLimiter::new(LOG_EVERY),
            server_error_log: LogLimiter::new(LOG_EVERY),
        }
    }

    /// True while the link is connected.
    pub(crate) fn is_up(&self) -> bool {
        self.up
    }

    /// Takes in one event: updates the state, counts and logs it.
    pub(crate) fn apply(&mut self, event: LinkEvent) {
        let backend = self.backend;
        match event {
            LinkEvent::Connected => {
                match self.lost.take() {
                    Some(lost) => {
                        self.bus_metrics.nats_reconnects().inc();
                        tracing::info!(backend, after = %lost, "reconnected to NATS");
                    }
                    None if !self.up => tracing::info!(backend, "connected to NATS"),
                    None => {}
                }
                self.up = true;
                self.failed = None;
            }
            LinkEvent::Disconnected(reason) => {
                tracing::warn!(backend, %reason, "NATS connection lost; reconnecting");
                self.up = false;
                self.lost = Some(reason);
                self.failed = None;
            }
            LinkEvent::ServerError(error) if !self.up => {
                // While down, an error is why connecting fails (authorization, TLS, ...); each
                // attempt repeats it, so only a new reason is worth a line.
                if self.failed.as_deref() != Some(error.as_str()) {
                    tracing::warn!(backend, %error, "cannot connect to NATS");
                } else {
                    tracing::debug!(backend, %error, "cannot connect to NATS");
                }
                self.failed = Some(error);
            }
            LinkEvent::ServerError(error) => {
                // While connected an error concerns an operation (a subject this user may not
                // use, say); the connection stays, so health degrades and says why.
                if let Some(left_out) = self.server_error_log.admit(1) {
                    tracing::warn!(backend, %error, left_out, "the NATS server reported an error");
                }
                self.server_error = Some((Instant::now() + DEGRADED_FOR, error));
            }
            LinkEvent::SlowConsumer(sid) => {
                self.metrics.dropped(DropReason::SlowConsumer, 1);
                if let Some(left_out) = self.slow_consumer_log.admit(1) {
                    tracing::warn!(
                        backend,
                        sid,
                        left_out,
                        "the NATS client dropped a message of a subscription read too slowly"
                    );
                }
                self.slow_consumer =
                    Some((Instant::now() + DEGRADED_FOR, format!("subscription {sid}")));
            }
            LinkEvent::Closed => {
                tracing::error!(backend, "the NATS connection closed and will not reconnect");
                self.up = false;
                self.ended = true;
            }
        }
    }

    /// The bus read `channel`'s subscription too slowly and the link dropped `dropped` of its
    /// messages, already counted by the reader: logs it (rate-limited) and degrades health as a
    /// slow-consumer event does.
    pub(crate) fn read_too_slowly(&mut self, channel: &str, dropped: u64) {
        if let Some(left_out) = self.slow_consumer_log.admit(dropped) {
            tracing::warn!(
                backend = self.backend,
                channel,
                dropped,
                left_out,
                "this node reads a NATS subscription too slowly; the link dropped its oldest \
                 messages"
            );
        }
        self.slow_consumer = Some((Instant::now() + DEGRADED_FOR, format!("channel {channel}")));
    }

    /// When the next degradation expires, if any: call [`LinkHealth::expire`] then.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        let slow = self.slow_consumer.as_ref().map(|(until, _)| *until);
        let error = self.server_error.as_ref().map(|(until, _)| *until);
        match (slow, error) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Forgets the degradations that have expired by now.
    pub(crate) fn expire(&mut self) {
        let now = Instant::now();
        if self
            .slow_consumer
            .as_ref()
            .is_some_and(|(until, _)| *until <= now)
        {
            self.slow_consumer = None;
        }
        if self
            .server_error
            .as_ref()
            .is_some_and(|(until, _)| *until <= now)
        {
            self.server_error = None;
        }
    }

    /// The health these events add up to, with the reason.
    pub(crate) fn health(&self) -> Health {
        if self.ended {
            return Health::down("the NATS connection closed and will not reconnect");
        }
        if !self.up {
            return Health::down(match (&self.lost, &self.failed) {
                (None, None) => "connecting to NATS".to_owned(),
                (None, Some(failed)) => format!("cannot connect to NATS: {failed}"),
                (Some(lost), None) => format!("NATS connection lost ({lost}); reconnecting"),
                (Some(lost), Some(failed)) => {
                    format!("NATS connection lost ({lost}); reconnecting, last attempt: {failed}")
                }
            });
        }
        let mut reasons = Vec::new();
        if let Some((_, what)) = &self.slow_consumer {
            reasons.push(format!(
                "the NATS client dropped messages of {what}, which was read too slowly \
                 (counted in bus_dropped_total{{reason=\"slow_consumer\"}})"
            ));
        }
        if let Some((_, error)) = &self.server_error {
            reasons.push(format!("the NATS server reported an error: {error}"));
        }
        if reasons.is_empty() {
            Health::connected()
        } else {
            Health::degraded(reasons.join("; "))
        }
    }
}

/// The `slow_consumer` drops a `gohub` registry counted, for the NATS backends' tests.
#[cfg(test)]
pub(crate) fn dropped_slow(registry: &prometheus::Registry) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|family| family.name() == "gohub_bus_dropped_total")
        .flat_map(|family| family.get_metric())
        .filter(|metric| {
            metric
                .get_label()
                .iter()
                .any(|l| l.value() == "slow_consumer")
        })
        .map(|metric| metric.get_counter().get_value())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HealthState;

    #[tokio::test(start_paused = true)]
    async fn health_and_metrics_follow_the_connection_events() {
        let registry = prometheus::Registry::new();
        let metrics = BusMetrics::register(&registry, "gohub").unwrap();
        let mut link = LinkHealth::new("nats", metrics.backend("nats"), metrics.clone(), false);
        assert_eq!(link.health(), Health::down("connecting to NATS"));

        link.apply(LinkEvent::ServerError(
            "nats: authorization violation".into(),
        ));
        assert_eq!(
            link.health(),
            Health::down("cannot connect to NATS: nats: authorization violation")
        );

        link.apply(LinkEvent::Connected);
        assert_eq!(link.health(), Health::connected());
        assert!(link.is_up());
        assert_eq!(metrics.nats_reconnects().get(), 0, "the first connect");

        link.apply(LinkEvent::Disconnected("connection lost".into()));
        assert_eq!(
            link.health(),
            Health::down("NATS connection lost (connection lost); reconnecting")
        );
        link.apply(LinkEvent::ServerError("connection refused".into()));
        assert_eq!(
            link.health(),
            Health::down(
                "NATS connection lost (connection lost); reconnecting, last attempt: \
                 connection refused"
            )
        );
        link.apply(LinkEvent::Connected);
        assert_eq!(link.health(), Health::connected());
        assert_eq!(metrics.nats_reconnects().get(), 1);
        assert_eq!(link.next_expiry(), None);

        link.apply(LinkEvent::SlowConsumer(7));
        link.apply(LinkEvent::SlowConsumer(7));
        assert_eq!(link.health().state, HealthState::Degraded);
        assert!(link.health().reason.unwrap().contains("subscription 7"));
        assert_eq!(dropped_slow(&registry), 2.0);
        let expiry = link.next_expiry().expect("the drop expires");
        assert_eq!(expiry, Instant::now() + DEGRADED_FOR);
        tokio::time::sleep(DEGRADED_FOR - Duration::from_secs(1)).await;
        link.expire();
        assert_eq!(link.health().state, HealthState::Degraded);
        tokio::time::sleep_until(expiry).await;
        link.expire();
        assert_eq!(link.health(), Health::connected(), "the drop is old news");

        link.apply(LinkEvent::Closed);
        assert_eq!(
            link.health(),
            Health::down("the NATS connection closed and will not reconnect")
        );
        assert!(!link.is_up());
    }

    /// Log lines written while the returned guard lives, as text.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn start(&self) -> tracing::subscriber::DefaultGuard {
            let writer = self.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::INFO)
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .finish();
            tracing::subscriber::set_default(subscriber)
        }

        fn lines(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect()
        }

        fn clear(&self) {
            self.0.lock().unwrap().clear();
        }
    }

    /// Every event kind once, so each log callsite of `LinkHealth` is registered.
    fn touch_every_callsite() {
        let metrics = BusMetrics::unregistered("gohub").unwrap();
        let mut link = LinkHealth::new("nats", metrics.backend("nats"), metrics, false);
        link.apply(LinkEvent::ServerError("warm-up".into()));
        link.apply(LinkEvent::Connected);
        link.apply(LinkEvent::Disconnected("warm-up".into()));
        link.apply(LinkEvent::Connected);
        link.apply(LinkEvent::SlowConsumer(1));
    }

    #[tokio::test(start_paused = true)]
    async fn connection_changes_are_logged_with_the_reason_and_floods_once_per_interval() {
        let captured = Captured::default();
        let _guard = captured.start();
        // tracing caches each callsite's interest once, process-wide. A callsite another test
        // registers at the moment this subscriber is installed can cache "nobody listens" and
        // miss it. Registering every callsite here and rebuilding the cache afterwards leaves
        // each one interested in this subscriber, whoever registered it first.
        touch_every_callsite();
        tracing::callsite::rebuild_interest_cache();
        captured.clear();
        let metrics = BusMetrics::unregistered("gohub").unwrap();
        let mut link = LinkHealth::new("nats", metrics.backend("nats"), metrics, false);
        link.apply(LinkEvent::ServerError("authorization violation".into()));
        link.apply(LinkEvent::ServerError("authorization violation".into()));
        link.apply(LinkEvent::Connected);
        link.apply(LinkEvent::Disconnected("connection lost".into()));
        link.apply(LinkEvent::Connected);
        for _ in 0..100 {
            link.apply(LinkEvent::SlowConsumer(4));
        }
        tokio::time::sleep(LOG_EVERY).await;
        link.apply(LinkEvent::SlowConsumer(4));
        let lines = captured.lines();
        let with = |text: &str| lines.iter().filter(|line| line.contains(text)).count();
        assert_eq!(
            with("cannot connect to NATS"),
            1,
            "a repeated reason once: {lines:#?}"
        );
        assert_eq!(with("authorization violation"), 1, "{lines:#?}");
        assert_eq!(
            with("INFO hubbus::backend::nats::health: connected to NATS"),
            1
        );
        assert_eq!(with("connection lost; reconnecting"), 1, "{lines:#?}");
        assert_eq!(with("reconnected to NATS"), 1, "{lines:#?}");
        assert!(
            lines
                .iter()
                .any(|line| line.contains("after=connection lost"))
        );
        assert_eq!(
            with("read too slowly"),
            2,
            "a flood is one line per interval: {lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|line| line.contains("read too slowly") && line.contains("left_out=99")),
            "{lines:#?}"
        );
        assert!(lines.iter().all(|line| line.contains("backend=\"nats\"")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_error_while_connected_degrades_for_a_while_with_the_reason() {
        let metrics = BusMetrics::unregistered("gohub").unwrap();
        let mut link = LinkHealth::new("nats", metrics.backend("nats"), metrics, true);
        link.apply(LinkEvent::ServerError(
            "Permissions Violation for Publish to \"hubbus.secret\"".into(),
        ));
        let health = link.health();
        assert_eq!(health.state, HealthState::Degraded);
        assert!(health.reason.unwrap().contains("Permissions Violation"));
        link.apply(LinkEvent::SlowConsumer(3));
        let reason = link.health().reason.unwrap();
        assert!(reason.contains("subscription 3") && reason.contains("Permissions"));

        tokio::time::sleep(DEGRADED_FOR).await;
        link.expire();
        assert_eq!(link.health(), Health::connected());
        assert_eq!(link.next_expiry(), None);
    }
}
