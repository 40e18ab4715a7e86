//! One run of the fake NATS server's software: the listener, what every connection shares,
//! and the JetStream engine with its clock.
//!
//! Everything here is created when the host's software starts and dropped when turmoil stops
//! it, so a restart begins with no connections and no subscriptions, and with a new JetStream
//! engine that recovers from the store, as a restarted nats-server does from its store
//! directory.
//!
//! The engine is a state machine without I/O. A client's publish to a subject the engine
//! handles is given to it after the core subscribers got theirs (as nats-server's internal
//! JetStream subscription sits among them), what it answers is delivered at once, in order, to
//! the subscriptions each answer matches, and a clock task calls it again at its next deadline.
//! Tasks are spawned on the host's `LocalSet`, so the engine need not be `Send`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

use super::FakeNatsOptions;
use super::connection;
use super::control::Controls;
use super::info::ServerInfo;
use super::jetstream::{Engine, Inbound, Outbound};
use super::options::Auth;
use super::protocol::{Publish, header_block, parse_header_block};
use super::registry::{Message, Registry};
use crate::server::lock;

/// How the server treats its clients, fixed for a run.
#[derive(Debug, Clone)]
pub(super) struct Config {
    pub(super) auth: Auth,
    pub(super) max_payload: u32,
    pub(super) max_pending: usize,
    pub(super) ping_interval: Duration,
    pub(super) max_pings_out: u32,
    pub(super) auth_timeout: Duration,
}

/// What every connection of one run shares.
pub(super) struct Host {
    pub(super) registry: Arc<Registry>,
    pub(super) controls: Arc<Controls>,
    pub(super) config: Config,
    info: ServerInfo,
    engine: Option<Mutex<Engine>>,
    /// Wakes the engine's clock when a publish moved its next deadline.
    engine_changed: Notify,
}

/// The simulation's elapsed time, which keeps counting across restarts: the engine's clock.
fn sim_now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// Runs a fake NATS server on `port` until the host's software is stopped; the body of a
/// turmoil host: `sim.host("nats", move || serve_nats(DEFAULT_PORT, options.clone()))`.
///
/// Each call starts with no connections and no subscriptions, so a bounced host has forgotten
/// them all; JetStream, if enabled, starts a new engine on the options' store, which kept what
/// the previous run wrote.
pub async fn serve_nats(port: u16, options: FakeNatsOptions) -> turmoil::Result {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", port)).await?;
    let controls = Arc::clone(&options.control.controls);
    let registry = Arc::new(Registry::new(Arc::clone(&controls)));
    let info = controls.started(&registry, |run| ServerInfo {
        server_id: format!("NFAKE{run:051}"),
        server_name: options.server_name.clone(),
        port,
        auth_required: options.auth != Auth::Open,
        jetstream: options.jetstream.is_some(),
        max_payload: options.max_payload,
    });
    let engine = options
        .jetstream
        .clone()
        .map(|store| Mutex::new(Engine::new(store, sim_now())));
    let host = Arc::new(Host {
        registry,
        controls,
        config: Config {
            auth: options.auth,
            max_payload: options.max_payload,
            max_pending: options.max_pending,
            ping_interval: options.ping_interval,
            max_pings_out: options.max_pings_out,
            auth_timeout: options.auth_timeout,
        },
        info,
        engine,
        engine_changed: Notify::new(),
    });
    if host.engine.is_some() {
        tokio::task::spawn_local(engine_clock(Arc::clone(&host)));
    }
    loop {
        // A wedged server still accepts: the kernel of a stalled process completes handshakes
        // too, and that is what makes the failure silent.
        let (stream, peer) = listener.accept().await?;
        host.controls.count_connection();
        tokio::task::spawn_local(connection::run(stream, peer, Arc::clone(&host)));
    }
}

impl Host {
    /// The maximum payload in force now.
    pub(super) fn max_payload(&self) -> u32 {
        self.controls.max_payload(self.config.max_payload)
    }

    /// The INFO line for client `id` connected from `ip`.
    pub(super) fn info_line(&self, id: u64, ip: &str) -> Bytes {
        self.info
            .line(id, ip, self.max_payload(), self.controls.lame_duck())
    }

    /// Whether the engine takes messages published to `subject`; never without JetStream.
    pub(super) fn engine_handles(&self, subject: &str) -> bool {
        self.engine
            .as_ref()
            .is_some_and(|engine| lock(engine).handles(subject))
    }

    /// Gives a client's publish to the engine and delivers what it answers.
    pub(super) fn feed_engine(&self, publish: &Publish) {
        let Some(engine) = &self.engine else {
            return;
        };
        let inbound = Inbound {
            subject: publish.subject.clone(),
            reply: publish.reply.clone(),
            headers: parse_header_block(&publish.headers),
            payload: publish.body.clone(),
        };
        let mut engine = lock(engine);
        let before = engine.next_deadline();
        let answers = engine.publish(sim_now(), inbound, &*self.registry);
        self.deliver(&answers);
        if engine.next_deadline() != before {
            self.engine_changed.notify_one();
        }
    }

    /// Delivers the engine's messages, in order, to every subscription each matches.
    fn deliver(&self, answers: &[Outbound]) {
        for answer in answers {
            let headers = header_block(answer.status.as_ref(), &answer.headers);
            self.registry.publish(
                None,
                &Message {
                    subject: &answer.subject,
                    reply: answer.reply.as_deref(),
                    headers: &headers,
                    body: &answer.payload,
                },
            );
        }
    }
}

/// Calls the engine's `tick` whenever its next deadline comes, for as long as the run lasts.
/// A wedged server does not tick: JetStream's timers wait like everything else.
async fn engine_clock(host: Arc<Host>) {
    let Some(engine) = &host.engine else {
        return;
    };
    loop {
        let deadline = lock(engine).next_deadline();
        let now = sim_now();
        match deadline {
            None => host.engine_changed.notified().await,
            Some(at) if at > now => {
                tokio::select! {
                    // Biased: tokio's default random branch choice would make runs
                    // irreproducible.
                    biased;
                    () = host.engine_changed.notified() => {}
                    () = tokio::time::sleep(at - now) => {}
                }
            }
            Some(_) => {
                host.controls.wedge.until_released().await;
                let now = sim_now();
                let again_at_once = {
                    let mut engine = lock(engine);
                    let answers = engine.tick(now, &*host.registry);
                    host.deliver(&answers);
                    // An engine that asks again for a time already past is called again a
                    // millisecond later, not in a loop that would stop simulated time.
                    engine.next_deadline().is_some_and(|next| next <= now)
                };
                if again_at_once {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
}
