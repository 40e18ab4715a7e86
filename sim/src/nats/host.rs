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
//! Tasks are spawned on the host's `LocalSet`, so the engine need not be `Send`. The server
//! reaches the engine through [`JetStreamEngine`], a private trait with exactly the engine's
//! methods, so that this side of the integration is tested with a scripted engine.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

use super::FakeNatsOptions;
use super::connection;
use super::control::Controls;
use super::info::ServerInfo;
use super::jetstream::{Engine, Inbound, JetStreamStore, Outbound, Router};
use super::options::Auth;
use super::protocol::{Publish, header_block, parse_header_block};
use super::registry::{Message, Registry};

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
    engine: Option<RefCell<Box<dyn JetStreamEngine>>>,
    /// Wakes the engine's clock when a publish moved its next deadline.
    engine_changed: Notify,
}

/// What the server asks of a JetStream engine: the methods of [`Engine`], which see.
pub(super) trait JetStreamEngine {
    /// [`Engine::handles`].
    fn handles(&self, subject: &str) -> bool;
    /// [`Engine::publish`].
    fn publish(&mut self, now: Duration, message: Inbound, router: &dyn Router) -> Vec<Outbound>;
    /// [`Engine::tick`].
    fn tick(&mut self, now: Duration, router: &dyn Router) -> Vec<Outbound>;
    /// [`Engine::next_deadline`].
    fn next_deadline(&self) -> Option<Duration>;
}

impl JetStreamEngine for Engine {
    fn handles(&self, subject: &str) -> bool {
        Engine::handles(self, subject)
    }

    fn publish(&mut self, now: Duration, message: Inbound, router: &dyn Router) -> Vec<Outbound> {
        Engine::publish(self, now, message, router)
    }

    fn tick(&mut self, now: Duration, router: &dyn Router) -> Vec<Outbound> {
        Engine::tick(self, now, router)
    }

    fn next_deadline(&self) -> Option<Duration> {
        Engine::next_deadline(self)
    }
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
    serve(port, options, |store, now| {
        Box::new(Engine::new(store, now))
    })
    .await
}

/// [`serve_nats`] with the engine `start_engine` makes from the store and the time.
async fn serve(
    port: u16,
    options: FakeNatsOptions,
    start_engine: impl Fn(JetStreamStore, Duration) -> Box<dyn JetStreamEngine>,
) -> turmoil::Result {
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
        .map(|store| RefCell::new(start_engine(store, sim_now())));
    let host = Rc::new(Host {
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
        tokio::task::spawn_local(engine_clock(Rc::clone(&host)));
    }
    loop {
        // A wedged server still accepts: the kernel of a stalled process completes handshakes
        // too, and that is what makes the failure silent.
        let (stream, peer) = listener.accept().await?;
        host.controls.count_connection();
        tokio::task::spawn_local(connection::run(stream, peer, Rc::clone(&host)));
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
            .is_some_and(|engine| engine.borrow().handles(subject))
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
        let mut engine = engine.borrow_mut();
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
                    shown_as: answer.message_subject.as_deref(),
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
async fn engine_clock(host: Rc<Host>) {
    let Some(engine) = &host.engine else {
        return;
    };
    loop {
        let deadline = engine.borrow().next_deadline();
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
                    let mut engine = engine.borrow_mut();
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use hubbus::transport::{Connector, TurmoilTcp};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::{Instant, timeout};

    use super::*;
    use crate::server::lock;

    /// The engine's calls, as text.
    type Log = Arc<Mutex<Vec<String>>>;

    /// An engine that follows a script: it answers `$JS.API.` requests with a message and a
    /// status, and takes each message on `orders.>` to deliver it half a second later on
    /// `deliveries`, the way a consumer redelivers after its ack wait.
    struct Scripted {
        log: Log,
        due: Vec<(Duration, Inbound)>,
    }

    impl JetStreamEngine for Scripted {
        fn handles(&self, subject: &str) -> bool {
            subject.starts_with("$JS.API.") || subject.starts_with("orders.")
        }

        fn publish(&mut self, now: Duration, message: Inbound, _: &dyn Router) -> Vec<Outbound> {
            lock(&self.log).push(format!(
                "publish {} at {}",
                message.subject,
                now.as_millis()
            ));
            if message.subject.starts_with("orders.") {
                self.due.push((now + Duration::from_millis(500), message));
                return Vec::new();
            }
            let Some(reply) = message.reply else {
                return Vec::new();
            };
            let answer = |status, payload: &'static str| Outbound {
                subject: reply.clone(),
                message_subject: None,
                reply: None,
                status,
                headers: Vec::new(),
                payload: Bytes::from_static(payload.as_bytes()),
            };
            vec![
                answer(None, "ok"),
                answer(Some((404, "No Messages".to_owned())), ""),
            ]
        }

        fn tick(&mut self, now: Duration, router: &dyn Router) -> Vec<Outbound> {
            lock(&self.log).push(format!(
                "tick at {}, interest {}",
                now.as_millis(),
                router.has_interest("deliveries")
            ));
            let (due, later) = std::mem::take(&mut self.due)
                .into_iter()
                .partition::<Vec<_>, _>(|(at, _)| *at <= now);
            self.due = later;
            due.into_iter()
                .map(|(_, message)| Outbound {
                    subject: "deliveries".to_owned(),
                    message_subject: Some(message.subject.clone()),
                    reply: Some("$JS.ACK.1".to_owned()),
                    status: None,
                    headers: vec![("Nats-Subject".to_owned(), message.subject)],
                    payload: message.payload,
                })
                .collect()
        }

        fn next_deadline(&self) -> Option<Duration> {
            self.due.iter().map(|(at, _)| *at).min()
        }
    }

    #[test]
    fn the_engine_takes_its_subjects_and_its_answers_and_deadlines_reach_subscribers() {
        let log = Log::default();
        let engine_log = Arc::clone(&log);
        let options = FakeNatsOptions::new().with_jetstream(JetStreamStore::new());
        let mut sim = turmoil::Builder::new().rng_seed(5).build();
        sim.host("nats", move || {
            let log = Arc::clone(&engine_log);
            serve(4222, options.clone(), move |_, _| {
                Box::new(Scripted {
                    log: Arc::clone(&log),
                    due: Vec::new(),
                })
            })
        });
        sim.client("app", async move {
            let mut stream = TurmoilTcp.connect("nats:4222").await?;
            stream
                .write_all(
                    b"CONNECT {\"verbose\":false,\"headers\":true,\"no_responders\":true}\r\n\
                      SUB in 1\r\nSUB deliveries 2\r\n\
                      PUB $JS.API.INFO in 0\r\n\r\nPUB orders.1 in 5\r\nfirst\r\nPING\r\n",
                )
                .await?;
            let published = Instant::now();
            // No 503 for the order: the engine took it, though no client subscribes to it.
            // The delivery is routed to `deliveries` but shows the stored message's subject.
            let expected = "MSG in 1 2\r\nok\r\n\
                HMSG in 1 28 28\r\nNATS/1.0 404 No Messages\r\n\r\n\r\n\
                PONG\r\n\
                HMSG orders.1 2 $JS.ACK.1 36 41\r\nNATS/1.0\r\nNats-Subject: orders.1\r\n\r\nfirst\r\n";
            let mut received = Vec::new();
            let mut chunk = [0u8; 1024];
            while !String::from_utf8_lossy(&received).ends_with(expected) {
                let read = timeout(Duration::from_secs(2), stream.read(&mut chunk)).await??;
                assert!(read > 0, "the server closed the connection");
                received.extend_from_slice(&chunk[..read]);
            }
            assert!(published.elapsed() >= Duration::from_millis(500));
            let after_info = String::from_utf8_lossy(&received)
                .split_once(" \r\n")
                .map(|(_, rest)| rest.to_owned());
            assert_eq!(after_info.as_deref(), Some(expected));
            Ok(())
        });
        sim.run().unwrap();

        let log = lock(&log).clone();
        assert_eq!(log.len(), 3, "{log:?}");
        assert!(log[0].starts_with("publish $JS.API.INFO at "), "{log:?}");
        assert!(log[1].starts_with("publish orders.1 at "), "{log:?}");
        assert!(log[2].ends_with("interest true"), "{log:?}");
        let millis = |entry: &str| -> u128 {
            let at = entry.split(" at ").nth(1).unwrap_or_default();
            at.split(',')
                .next()
                .unwrap_or_default()
                .parse()
                .unwrap_or_default()
        };
        let waited = millis(&log[2]) - millis(&log[1]);
        assert!(
            (500..510).contains(&waited),
            "ticked {waited} ms after the order: {log:?}"
        );
    }
}
