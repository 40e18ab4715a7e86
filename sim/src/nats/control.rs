//! The handle a test steers and observes a fake NATS host with, and the state behind it that
//! outlives the host's software.
//!
//! [`Controls`] is created with the options and survives `Sim::bounce` and `Sim::crash`, so
//! fault switches, settings and counters stay valid across restarts. It reaches the software
//! running now through a `Weak` registry, which lets a test ask "who is subscribed right now"
//! without keeping a crashed server alive.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::info::ServerInfo;
use super::registry::Registry;
use crate::server::lock;
use crate::wedge::Wedge;

/// Counters of one fake NATS host, summed over all restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FakeNatsStats {
    /// TCP connections accepted.
    pub connections_accepted: u64,
    /// Messages clients published (`PUB` and `HPUB`), JetStream API calls and acks included.
    pub published: u64,
    /// `MSG` and `HMSG` written to clients' sockets: one per subscription a message reached,
    /// JetStream's answers and deliveries and no-responders statuses included.
    pub delivered: u64,
    /// Clients disconnected because their outgoing queue passed its byte limit.
    pub slow_consumers_disconnected: u64,
    /// Clients disconnected with `-ERR 'Stale Connection'` for leaving the server's pings
    /// unanswered.
    pub stale_connections_closed: u64,
}

/// Steers and observes a fake NATS host from outside it: from the test, a client future, or
/// between `Sim::step` calls. Cheap to clone; all clones control the same host.
#[derive(Debug, Clone, Default)]
pub struct FakeNatsControl {
    pub(super) controls: Arc<Controls>,
}

impl FakeNatsControl {
    /// Wedges (`true`) or releases (`false`) the server. A wedged server keeps every connection
    /// open and accepts new ones, but processes nothing and writes nothing, not even messages
    /// already queued or its own pings; its timers (pings, authentication timeout, JetStream's
    /// deadlines) wait too. On release it carries on where it stopped, answering everything that
    /// arrived meanwhile, and a ping or authentication timer that came due while it was wedged
    /// starts over.
    pub fn wedge(&self, wedged: bool) {
        self.controls.wedge.set(wedged);
    }

    /// Whether the server is wedged.
    pub fn is_wedged(&self) -> bool {
        self.controls.wedge.is_on()
    }

    /// Closes every client connection (the server keeps running). Step the simulation once
    /// after this and before `Sim::crash` or `Sim::bounce` to model a process crash: the
    /// kernel resets a dead process's connections, and closing them from inside the software
    /// keeps the run deterministic (turmoil reads the real clock for packets sent while it tears
    /// a host down).
    pub fn disconnect_all(&self) {
        if let Some(registry) = self.controls.live() {
            registry.disconnect_all();
        }
    }

    /// Puts the running server in lame duck mode: every client that takes INFO updates gets an
    /// `INFO` with `"ldm":true`, and so does every client that connects until the host's
    /// software restarts. A real server would also stop listening and close its connections
    /// over its lame duck duration; here the test decides when the connections go
    /// ([`disconnect_all`](Self::disconnect_all), a bounce).
    pub fn enter_lame_duck_mode(&self) {
        lock(&self.controls.settings).lame_duck = true;
        self.controls.broadcast_info();
    }

    /// Changes the maximum payload: publishes over it are refused from now on, on every
    /// connection, and every client that takes INFO updates is told at once (an `INFO` with the
    /// new `max_payload`), as after a configuration reload. Kept across restarts.
    pub fn set_max_payload(&self, bytes: u32) {
        lock(&self.controls.settings).max_payload = Some(bytes);
        self.controls.broadcast_info();
    }

    /// The counters so far.
    pub fn stats(&self) -> FakeNatsStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let controls = &self.controls;
        FakeNatsStats {
            connections_accepted: load(&controls.connections),
            published: load(&controls.published),
            delivered: load(&controls.delivered),
            slow_consumers_disconnected: load(&controls.slow_consumers),
            stale_connections_closed: load(&controls.stale_connections),
        }
    }

    /// How many subscriptions a message published to `subject` would reach right now (queue
    /// group members each count); 0 while the host is down. This is how a test sees that a
    /// client resubscribed after a restart.
    pub fn subscribers(&self, subject: &str) -> usize {
        self.controls
            .live()
            .map_or(0, |registry| registry.subscribers(subject))
    }

    /// How many client connections are open right now; 0 while the host is down.
    pub fn connections(&self) -> usize {
        self.controls
            .live()
            .map_or(0, |registry| registry.connections())
    }
}

/// What the control changes at run time.
#[derive(Debug, Default)]
struct Settings {
    /// Lame duck mode, until the software restarts.
    lame_duck: bool,
    /// Overrides the configured maximum payload.
    max_payload: Option<u32>,
}

/// The software running now, as far as the control reaches it.
#[derive(Debug, Default)]
struct Live {
    registry: Weak<Registry>,
    info: Option<ServerInfo>,
}

/// Fault switches, settings and counters of one host; see the module documentation.
#[derive(Debug, Default)]
pub(super) struct Controls {
    pub(super) wedge: Wedge,
    connections: AtomicU64,
    published: AtomicU64,
    delivered: AtomicU64,
    slow_consumers: AtomicU64,
    stale_connections: AtomicU64,
    /// How often the host's software has started, which numbers its runs.
    starts: AtomicU64,
    settings: Mutex<Settings>,
    live: Mutex<Live>,
}

impl Controls {
    /// Records that the host's software started with `registry`, and returns its INFO, made by
    /// `info` from the run's number (1 for the first start). Lame duck mode ends with the
    /// software that entered it.
    pub(super) fn started(
        &self,
        registry: &Arc<Registry>,
        info: impl FnOnce(u64) -> ServerInfo,
    ) -> ServerInfo {
        let run = self.starts.fetch_add(1, Ordering::Relaxed) + 1;
        let info = info(run);
        lock(&self.settings).lame_duck = false;
        *lock(&self.live) = Live {
            registry: Arc::downgrade(registry),
            info: Some(info.clone()),
        };
        info
    }

    fn live(&self) -> Option<Arc<Registry>> {
        lock(&self.live).registry.upgrade()
    }

    /// The maximum payload in force: the control's override, else `configured`.
    pub(super) fn max_payload(&self, configured: u32) -> u32 {
        lock(&self.settings).max_payload.unwrap_or(configured)
    }

    /// Whether the running server is in lame duck mode.
    pub(super) fn lame_duck(&self) -> bool {
        lock(&self.settings).lame_duck
    }

    /// Sends the current INFO to every client of the running server that takes updates.
    fn broadcast_info(&self) {
        let (registry, info) = {
            let live = lock(&self.live);
            (live.registry.upgrade(), live.info.clone())
        };
        let (Some(registry), Some(info)) = (registry, info) else {
            return;
        };
        let max_payload = self.max_payload(info.max_payload);
        let lame_duck = self.lame_duck();
        registry.broadcast_info(|id, ip| info.line(id, ip, max_payload, lame_duck));
    }

    pub(super) fn count_connection(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_published(&self) {
        self.published.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_delivered(&self, messages: u64) {
        self.delivered.fetch_add(messages, Ordering::Relaxed);
    }

    pub(super) fn count_slow_consumer(&self) {
        self.slow_consumers.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_stale_connection(&self) {
        self.stale_connections.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters, for tests inside the crate.
    #[cfg(test)]
    pub(super) fn stats(self: &Arc<Self>) -> FakeNatsStats {
        FakeNatsControl {
            controls: Arc::clone(self),
        }
        .stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_can_be_shared_between_threads_like_the_fake_redis_one() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<FakeNatsControl>();
    }
}
