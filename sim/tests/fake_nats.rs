//! The fake NATS server, driven by a raw protocol client over turmoil's simulated TCP
//! (`hubbus::transport::TurmoilTcp`), byte for byte: what it sends on connect, how it routes,
//! and how it reacts to credentials, limits, silence, slowness and garbage, with the texts and
//! closes a nats-server 2.9 uses.
//!
//! Waits for what a broken fake might never send are bounded by `tokio::time::timeout` in
//! simulated time, so such a fake fails a test instead of hanging it. Restarts are driven from
//! outside the simulation (`Sim::bounce` exists only there), so that test steps the simulation
//! itself and takes its cue from the client through a shared cell.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use hubbus::transport::{BoxedStream, Connector, TurmoilTcp};
use hubbus_sim::nats::jetstream::JetStreamStore;
use hubbus_sim::nats::{DEFAULT_PORT, FakeNatsOptions, serve_nats};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout, timeout_at};

const NATS: &str = "nats:4222";

/// Longer than any round trip in the simulation (turmoil's latency is at most 100 ms a hop).
const PATIENCE: Duration = Duration::from_secs(2);

/// How long a test watches for something that must not happen.
const SILENCE: Duration = Duration::from_millis(500);

/// A fixed seed, so that a failure replays exactly.
const SEED: u64 = 11;

/// The CONNECT of a modern client (what async-nats sends, minus the names).
const MODERN: &str =
    r#"{"verbose":false,"pedantic":false,"headers":true,"no_responders":true,"protocol":1}"#;

fn sim_with_nats(options: FakeNatsOptions) -> turmoil::Sim<'static> {
    let mut sim = turmoil::Builder::new().rng_seed(SEED).build();
    sim.host("nats", move || serve_nats(DEFAULT_PORT, options.clone()));
    sim
}

/// What the server did next, as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Next {
    /// One server operation, verbatim with its payload: `"MSG a 1 2\r\nhi\r\n"`.
    Op(String),
    /// The connection ended.
    Closed,
    /// Nothing arrived in time.
    Silent,
}

fn op(text: &str) -> Next {
    Next::Op(text.to_owned())
}

/// A raw NATS client: writes protocol text, reads whole server operations.
struct Client {
    stream: BoxedStream,
    buf: Vec<u8>,
    /// Answer the server's pings without reporting them (most tests are not about pings; the
    /// server's first one comes 2 seconds after CONNECT).
    answer_pings: bool,
}

impl Client {
    /// Connects and reads the INFO the server greets with.
    async fn open() -> (Client, Value) {
        let stream = TurmoilTcp.connect(NATS).await.expect("connect");
        let mut client = Client {
            stream,
            buf: Vec::new(),
            answer_pings: true,
        };
        let info = client.info().await;
        (client, info)
    }

    /// Connects with `connect` as the CONNECT options and waits until the server took them.
    async fn connected(connect: &str) -> Client {
        let (mut client, _) = Client::open().await;
        client.send(format!("CONNECT {connect}\r\nPING\r\n")).await;
        client.expect("PONG\r\n").await;
        client
    }

    async fn send(&mut self, text: impl AsRef<[u8]>) {
        self.stream
            .write_all(text.as_ref())
            .await
            .expect("write to the server");
    }

    /// The next server operation within `patience`.
    async fn next_within(&mut self, patience: Duration) -> Next {
        let deadline = Instant::now() + patience;
        loop {
            while let Some(op) = self.take_op() {
                if self.answer_pings && op == "PING\r\n" {
                    self.send("PONG\r\n").await;
                    continue;
                }
                return Next::Op(op);
            }
            let mut chunk = [0u8; 4096];
            match timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Next::Silent,
                Ok(Ok(0) | Err(_)) => return Next::Closed,
                Ok(Ok(read)) => self.buf.extend_from_slice(&chunk[..read]),
            }
        }
    }

    async fn next(&mut self) -> Next {
        self.next_within(PATIENCE).await
    }

    /// A whole operation from the front of the buffer, if it is all there.
    fn take_op(&mut self) -> Option<String> {
        let newline = self.buf.iter().position(|&b| b == b'\n')?;
        let line = String::from_utf8_lossy(&self.buf[..=newline]).into_owned();
        let payload = if line.starts_with("MSG ") || line.starts_with("HMSG ") {
            let size: usize = line.trim_end().rsplit(' ').next()?.parse().ok()?;
            size + 2
        } else {
            0
        };
        let len = newline + 1 + payload;
        if self.buf.len() < len {
            return None;
        }
        let op = String::from_utf8_lossy(&self.buf[..len]).into_owned();
        self.buf.drain(..len);
        Some(op)
    }

    async fn expect(&mut self, expected: &str) {
        assert_eq!(self.next().await, op(expected));
    }

    async fn expect_closed(&mut self) {
        assert_eq!(self.next().await, Next::Closed);
    }

    async fn expect_silence(&mut self) {
        assert_eq!(self.next_within(SILENCE).await, Next::Silent);
    }

    /// Reads an `INFO` and returns its JSON.
    async fn info(&mut self) -> Value {
        let Next::Op(line) = self.next().await else {
            panic!("no INFO");
        };
        let json = line
            .strip_prefix("INFO ")
            .and_then(|rest| rest.strip_suffix(" \r\n"))
            .unwrap_or_else(|| panic!("not an INFO line: {line:?}"));
        serde_json::from_str(json).expect("INFO carries JSON")
    }
}

#[test]
fn info_on_connect_describes_the_server_and_numbers_the_clients() {
    let mut sim = sim_with_nats(FakeNatsOptions::new().with_server_name("nats-a"));
    sim.client("app", async move {
        let (_first, info) = Client::open().await;
        assert_eq!(info["server_name"], "nats-a");
        assert_eq!(info["version"], "2.9.10");
        assert_eq!(info["proto"], 1);
        assert_eq!(info["headers"], true);
        assert_eq!(info["max_payload"], 1024 * 1024);
        assert_eq!(info["port"], 4222);
        assert_eq!(info["client_id"], 1);
        assert_eq!(info["client_ip"], turmoil::lookup("app").to_string());
        assert!(info["server_id"].as_str().is_some_and(|id| !id.is_empty()));
        for absent in ["auth_required", "jetstream", "ldm"] {
            assert!(info.get(absent).is_none(), "{absent} is omitted when false");
        }
        let (_second, info) = Client::open().await;
        assert_eq!(info["client_id"], 2);
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn info_announces_authentication_jetstream_and_the_configured_payload_limit() {
    let store = JetStreamStore::new();
    let options = FakeNatsOptions::new()
        .with_token("t")
        .with_max_payload(2048)
        .with_jetstream(store);
    assert!(options.jetstream().is_some(), "the store is reachable");
    let mut sim = sim_with_nats(options);
    sim.client("app", async move {
        let (_client, info) = Client::open().await;
        assert_eq!(info["auth_required"], true);
        assert_eq!(info["jetstream"], true);
        assert_eq!(info["max_payload"], 2048);
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn messages_reach_every_matching_subscription_including_wildcards() {
    let options = FakeNatsOptions::new();
    let control = options.control();
    let mut sim = sim_with_nats(options);
    sim.client("app", async move {
        let mut subscriber = Client::connected(MODERN).await;
        subscriber
            .send("SUB room.* 1\r\nSUB room.> 2\r\nSUB > 3\r\nSUB room.1.x 4\r\nPING\r\n")
            .await;
        subscriber.expect("PONG\r\n").await;
        assert_eq!(control.subscribers("room.1"), 3);

        let mut publisher = Client::connected(MODERN).await;
        publisher
            .send("PUB room.1 5\r\nhello\r\nPUB room.1.x reply 2\r\nhi\r\nPUB other 0\r\n\r\n")
            .await;
        for expected in [
            "MSG room.1 1 5\r\nhello\r\n",
            "MSG room.1 2 5\r\nhello\r\n",
            "MSG room.1 3 5\r\nhello\r\n",
            "MSG room.1.x 2 reply 2\r\nhi\r\n",
            "MSG room.1.x 3 reply 2\r\nhi\r\n",
            "MSG room.1.x 4 reply 2\r\nhi\r\n",
            "MSG other 3 0\r\n\r\n",
        ] {
            subscriber.expect(expected).await;
        }
        let stats = control.stats();
        assert_eq!(stats.published, 3);
        assert_eq!(stats.delivered, 7);
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn headers_arrive_as_hmsg_and_are_stripped_for_a_client_without_headers() {
    let mut sim = sim_with_nats(FakeNatsOptions::new());
    sim.client("app", async move {
        let mut modern = Client::connected(MODERN).await;
        let mut legacy = Client::connected(r#"{"verbose":false}"#).await;
        modern.send("SUB a 1\r\nPING\r\n").await;
        modern.expect("PONG\r\n").await;
        legacy.send("SUB a 9\r\nPING\r\n").await;
        legacy.expect("PONG\r\n").await;

        modern
            .send("HPUB a r 24 26\r\nNATS/1.0\r\nKey: value\r\n\r\nhi\r\n")
            .await;
        modern
            .expect("HMSG a 1 r 24 26\r\nNATS/1.0\r\nKey: value\r\n\r\nhi\r\n")
            .await;
        legacy.expect("MSG a 9 r 2\r\nhi\r\n").await;

        // A client that did not announce headers may not send them either: nats-server closes
        // the connection without a word.
        legacy.send("HPUB a 12 12\r\nNATS/1.0\r\n\r\n\r\n").await;
        legacy.expect_closed().await;
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn a_request_that_reaches_nobody_gets_a_503_status_when_the_client_asked_for_it() {
    let mut sim = sim_with_nats(FakeNatsOptions::new());
    sim.client("app", async move {
        let mut requester = Client::connected(MODERN).await;
        requester
            .send("SUB _INBOX.abc.* 7\r\nPUB service _INBOX.abc.1 3\r\nreq\r\n")
            .await;
        requester
            .expect("HMSG _INBOX.abc.1 7 16 16\r\nNATS/1.0 503\r\n\r\n\r\n")
            .await;

        // With a responder, the request reaches it and no status comes back.
        let mut responder = Client::connected(MODERN).await;
        responder.send("SUB service 1\r\nPING\r\n").await;
        responder.expect("PONG\r\n").await;
        requester
            .send("PUB service _INBOX.abc.2 3\r\nreq\r\n")
            .await;
        responder
            .expect("MSG service 1 _INBOX.abc.2 3\r\nreq\r\n")
            .await;
        responder.send("PUB _INBOX.abc.2 2\r\nok\r\n").await;
        requester.expect("MSG _INBOX.abc.2 7 2\r\nok\r\n").await;

        // A client that did not ask for no-responders hears nothing.
        let mut old = Client::connected(r#"{"verbose":false,"headers":true}"#).await;
        old.send("SUB inbox 1\r\nPUB nobody inbox 1\r\nx\r\n").await;
        old.expect_silence().await;
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn jetstream_api_requests_get_503_when_jetstream_is_disabled() {
    let mut sim = sim_with_nats(FakeNatsOptions::new());
    sim.client("app", async move {
        let mut client = Client::connected(MODERN).await;
        client
            .send("SUB in.* 1\r\nPUB $JS.API.INFO in.1 0\r\n\r\nPUB $JS.API.STREAM.INFO.s in.2 0\r\n\r\n")
            .await;
        client
            .expect("HMSG in.1 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n")
            .await;
        client
            .expect("HMSG in.2 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n")
            .await;
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn echo_off_keeps_a_clients_own_messages_from_it() {
    let mut sim = sim_with_nats(FakeNatsOptions::new());
    sim.client("app", async move {
        let mut quiet = Client::connected(r#"{"verbose":false,"echo":false}"#).await;
        let mut loud = Client::connected(r#"{"verbose":false}"#).await;
        for client in [&mut quiet, &mut loud] {
            client.send("SUB a 1\r\nPING\r\n").await;
            client.expect("PONG\r\n").await;
        }
        quiet.send("PUB a 5\r\nquiet\r\nPING\r\n").await;
        quiet.expect("PONG\r\n").await;
        loud.expect("MSG a 1 5\r\nquiet\r\n").await;
        loud.send("PUB a 4\r\nloud\r\nPING\r\n").await;
        loud.expect("MSG a 1 4\r\nloud\r\n").await;
        loud.expect("PONG\r\n").await;
        quiet.expect("MSG a 1 4\r\nloud\r\n").await;
        quiet.expect_silence().await;
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn unsubscribe_stops_delivery_at_once_or_after_a_maximum() {
    let options = FakeNatsOptions::new();
    let control = options.control();
    let mut sim = sim_with_nats(options);
    sim.client("app", async move {
        let mut client = Client::connected(r#"{"verbose":false}"#).await;
        client
            .send("SUB a 1\r\nSUB b 2\r\nUNSUB 1\r\nUNSUB 2 2\r\n")
            .await;
        client
            .send("PUB a 1\r\nx\r\nPUB b 1\r\n1\r\nPUB b 1\r\n2\r\nPUB b 1\r\n3\r\nPING\r\n")
            .await;
        client.expect("MSG b 2 1\r\n1\r\n").await;
        client.expect("MSG b 2 1\r\n2\r\n").await;
        client.expect("PONG\r\n").await;
        assert_eq!(control.subscribers("b"), 0);
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn a_queue_group_shares_each_message_between_its_members() {
    let mut sim = sim_with_nats(FakeNatsOptions::new());
    sim.client("app", async move {
        let mut workers = Vec::new();
        for _ in 0..2 {
            let mut worker = Client::connected(r#"{"verbose":false}"#).await;
            worker.send("SUB jobs workers 1\r\nPING\r\n").await;
            worker.expect("PONG\r\n").await;
            workers.push(worker);
        }
        let mut boss = Client::connected(r#"{"verbose":false}"#).await;
        boss.send("PUB jobs 1\r\n1\r\nPUB jobs 1\r\n2\r\nPING\r\n")
            .await;
        boss.expect("PONG\r\n").await;
        for worker in &mut workers {
            assert!(
                matches!(worker.next().await, Next::Op(msg) if msg.starts_with("MSG jobs 1 1"))
            );
            worker.expect_silence().await;
        }
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn the_right_credentials_connect_and_wrong_ones_are_an_authorization_violation() {
    let mut sim = sim_with_nats(FakeNatsOptions::new().with_user("hub", "secret"));
    sim.client("app", async move {
        let (_, info) = Client::open().await;
        assert_eq!(info["auth_required"], true);
        Client::connected(r#"{"verbose":false,"user":"hub","pass":"secret"}"#).await;

        for connect in [
            r#"{"verbose":false,"user":"hub","pass":"guess"}"#,
            r#"{"verbose":false}"#,
            r#"{"verbose":false,"auth_token":"secret"}"#,
        ] {
            let (mut client, _) = Client::open().await;
            client.send(format!("CONNECT {connect}\r\nPING\r\n")).await;
            client.expect("-ERR 'Authorization Violation'\r\n").await;
            client.expect_closed().await;
        }

        // Anything but CONNECT first is a violation too.
        let (mut eager, _) = Client::open().await;
        eager.send("SUB a 1\r\n").await;
        eager.expect("-ERR 'Authorization Violation'\r\n").await;
        eager.expect_closed().await;
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn a_token_server_accepts_only_its_token() {
    let mut sim = sim_with_nats(FakeNatsOptions::new().with_token("s3cret"));
    sim.client("app", async move {
        Client::connected(r#"{"verbose":false,"auth_token":"s3cret"}"#).await;
        let (mut client, _) = Client::open().await;
        client
            .send("CONNECT {\"verbose\":false,\"auth_token\":\"nope\"}\r\n")
            .await;
        client.expect("-ERR 'Authorization Violation'\r\n").await;
        client.expect_closed().await;
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn a_client_that_never_sends_connect_is_timed_out_when_authentication_is_required() {
    let options = FakeNatsOptions::new()
        .with_token("t")
        .with_auth_timeout(Duration::from_secs(1));
    let mut sim = sim_with_nats(options);
    sim.client("app", async move {
        let start = Instant::now();
        let (mut client, _) = Client::open().await;
        client.expect("-ERR 'Authentication Timeout'\r\n").await;
        client.expect_closed().await;
        assert!(start.elapsed() >= Duration::from_secs(1));
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn a_payload_over_the_maximum_is_refused_and_the_connection_closes() {
    let options = FakeNatsOptions::new().with_max_payload(16);
    let control = options.control();
    let mut sim = sim_with_nats(options);
    sim.client("app", async move {
        let mut client = Client::connected(MODERN).await;
        client
            .send("PUB a 16\r\n0123456789abcdef\r\nPING\r\n")
            .await;
        client.expect("PONG\r\n").await;
        client.send("PUB a 17\r\n").await;
        client.expect("-ERR 'Maximum Payload Violation'\r\n").await;
        client.expect_closed().await;

        // Headers count: an HPUB's total size is what is limited.
        let mut client = Client::connected(MODERN).await;
        client.send("HPUB a 12 17\r\n").await;
        client.expect("-ERR 'Maximum Payload Violation'\r\n").await;
        client.expect_closed().await;

        // A new limit is announced to connected clients and enforced at once.
        let mut client = Client::connected(MODERN).await;
        control.set_max_payload(8);
        let info = client.info().await;
        assert_eq!(info["max_payload"], 8);
        client.send("PUB a 9\r\n").await;
        client.expect("-ERR 'Maximum Payload Violation'\r\n").await;
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn a_verbose_client_gets_ok_for_every_operation_and_pedantic_errors_do_not_close() {
    let mut sim = sim_with_nats(FakeNatsOptions::new());
    sim.client("app", async move {
        let (mut client, _) = Client::open().await;
        client.send("CONNECT {}\r\n").await;
        client.expect("+OK\r\n").await;
        client
            .send("SUB a.* 1\r\nPUB a.b 1\r\nx\r\nUNSUB 1\r\nSUB a..b 2\r\nPUB a.* 1\r\ny\r\nPING\r\n")
            .await;
        for expected in [
            "+OK\r\n",
            "+OK\r\n",
            "MSG a.b 1 1\r\nx\r\n",
            "+OK\r\n",
            "-ERR 'Invalid Subject'\r\n",
            "-ERR 'Invalid Publish Subject'\r\n",
            "+OK\r\n",
            "PONG\r\n",
        ] {
            client.expect(expected).await;
        }
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn pings_are_answered_and_a_client_that_ignores_the_servers_pings_is_closed_as_stale() {
    let options = FakeNatsOptions::new()
        .with_ping_interval(Duration::from_secs(1))
        .with_max_pings_out(2);
    let control = options.control();
    let mut sim = sim_with_nats(options);
    sim.client("app", async move {
        // A client that answers stays connected well past three intervals.
        let lively = tokio::task::spawn_local(async move {
            let mut lively = Client::connected(r#"{"verbose":false}"#).await;
            let until = Instant::now() + Duration::from_secs(6);
            let heard = lively.next_within(until - Instant::now()).await;
            assert_eq!(heard, Next::Silent, "only pings, which it answers");
            lively.send("PING\r\n").await;
            lively.expect("PONG\r\n").await;
        });

        let (mut deaf, _) = Client::open().await;
        deaf.answer_pings = false;
        let start = Instant::now();
        deaf.send("CONNECT {\"verbose\":false}\r\nPING\r\n").await;
        deaf.expect("PONG\r\n").await;
        deaf.expect("PING\r\n").await;
        deaf.expect("PING\r\n").await;
        deaf.expect("-ERR 'Stale Connection'\r\n").await;
        deaf.expect_closed().await;
        assert!(start.elapsed() >= Duration::from_secs(2));
        assert_eq!(control.stats().stale_connections_closed, 1);

        timeout(Duration::from_secs(10), lively).await??;
        assert_eq!(control.stats().stale_connections_closed, 1);
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn a_subscriber_that_stops_reading_is_dropped_as_a_slow_consumer() {
    let options = FakeNatsOptions::new().with_max_pending(4096);
    let control = options.control();
    let mut sim = sim_with_nats(options);
    sim.client("app", async move {
        let mut stalled = Client::connected(r#"{"verbose":false}"#).await;
        stalled.send("SUB ch 1\r\nPING\r\n").await;
        stalled.expect("PONG\r\n").await;

        // A subscriber that reads everything, on its own task.
        let mut reading = Client::connected(r#"{"verbose":false}"#).await;
        reading.send("SUB ch 1\r\nPING\r\n").await;
        reading.expect("PONG\r\n").await;
        let reader = tokio::task::spawn_local(async move {
            let mut received = 0;
            loop {
                match reading.next().await {
                    Next::Op(msg) if msg.ends_with("end\r\n") => return received,
                    Next::Op(_) => received += 1,
                    other => panic!("the reading subscriber lost its stream: {other:?}"),
                }
            }
        });

        let mut publisher = Client::connected(r#"{"verbose":false}"#).await;
        let payload = "x".repeat(100);
        let mut published = 0;
        while control.stats().slow_consumers_disconnected == 0 {
            assert!(
                published < 5_000,
                "the stalled subscriber was never dropped"
            );
            let mut batch = String::new();
            for _ in 0..10 {
                batch.push_str(&format!("PUB ch 100\r\n{payload}\r\n"));
                published += 1;
            }
            batch.push_str("PING\r\n");
            publisher.send(batch).await;
            publisher.expect("PONG\r\n").await;
        }
        publisher.send("PUB ch 3\r\nend\r\n").await;
        assert_eq!(timeout(PATIENCE, reader).await??, published);
        assert_eq!(control.subscribers("ch"), 1, "only the reading one is left");
        assert_eq!(control.connections(), 2);
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn a_wedged_server_answers_nothing_until_released_and_keeps_its_connections() {
    let options = FakeNatsOptions::new().with_ping_interval(Duration::from_secs(1));
    let control = options.control();
    let mut sim = sim_with_nats(options);
    sim.client("app", async move {
        let mut subscriber = Client::connected(r#"{"verbose":false}"#).await;
        subscriber.send("SUB ch 1\r\nPING\r\n").await;
        subscriber.expect("PONG\r\n").await;
        let mut publisher = Client::connected(r#"{"verbose":false}"#).await;

        control.wedge(true);
        publisher.send("PING\r\nPUB ch 4\r\nheld\r\n").await;
        publisher.expect_silence().await;
        subscriber.expect_silence().await;
        let newcomer = timeout(PATIENCE, TurmoilTcp.connect(NATS)).await;
        assert!(
            matches!(newcomer, Ok(Ok(_))),
            "a wedged server still accepts"
        );
        // Longer than the three ping intervals that would close a client whose pongs the
        // server does not read.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(control.connections(), 3);
        assert_eq!(control.stats().delivered, 0);

        control.wedge(false);
        publisher.expect("PONG\r\n").await;
        subscriber.expect("MSG ch 1 4\r\nheld\r\n").await;
        assert_eq!(control.stats().stale_connections_closed, 0);
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn disconnect_all_closes_every_connection_and_the_server_serves_on() {
    let options = FakeNatsOptions::new();
    let control = options.control();
    let mut sim = sim_with_nats(options);
    sim.client("app", async move {
        let mut a = Client::connected(r#"{"verbose":false}"#).await;
        let mut b = Client::connected(r#"{"verbose":false}"#).await;
        a.send("SUB ch 1\r\nPING\r\n").await;
        a.expect("PONG\r\n").await;
        control.disconnect_all();
        a.expect_closed().await;
        b.expect_closed().await;
        assert_eq!(control.subscribers("ch"), 0);
        assert_eq!(control.connections(), 0);
        Client::connected(r#"{"verbose":false}"#).await;
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn lame_duck_mode_is_announced_to_connected_and_new_clients() {
    let options = FakeNatsOptions::new();
    let control = options.control();
    let mut sim = sim_with_nats(options);
    sim.client("app", async move {
        let mut modern = Client::connected(MODERN).await;
        // A protocol 0 client takes no INFO updates.
        let mut old = Client::connected(r#"{"verbose":false}"#).await;
        control.enter_lame_duck_mode();
        let info = modern.info().await;
        assert_eq!(info["ldm"], true);
        old.expect_silence().await;
        let (_, info) = Client::open().await;
        assert_eq!(info["ldm"], true);
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn malformed_input_gets_what_nats_server_answers() {
    let mut sim = sim_with_nats(FakeNatsOptions::new());
    sim.client("app", async move {
        // (input, the -ERR sent before the close, if any)
        let closing: [(&str, Option<&str>); 10] = [
            ("XYZ\r\n", Some("Unknown Protocol Operation")),
            ("MSG foo 1 2\r\nhi\r\n", Some("Unknown Protocol Operation")),
            ("PUB foo 2\r\nhiXX\r\n", Some("Unknown Protocol Operation")),
            ("\r\n", Some("Unknown Protocol Operation")),
            ("PUB foo\r\n", None),
            ("PUB foo x\r\n", None),
            ("SUB foo\r\n", None),
            ("UNSUB \r\n", None),
            ("-ERR 'bye'\r\n", None),
            ("INFO not json\r\n", None),
        ];
        for (input, error) in closing {
            let mut client = Client::connected(r#"{"verbose":false}"#).await;
            client.send(input).await;
            if let Some(error) = error {
                client.expect(&format!("-ERR '{error}'\r\n")).await;
            }
            assert_eq!(client.next().await, Next::Closed, "after {input:?}");
        }

        let (mut client, _) = Client::open().await;
        client.send("CONNECT {not json\r\n").await;
        client.expect_closed().await;
        let (mut client, _) = Client::open().await;
        client.send("CONNECT {\"protocol\":2}\r\n").await;
        client.expect("-ERR 'invalid client protocol'\r\n").await;
        client.expect_closed().await;
        let (mut client, _) = Client::open().await;
        client.send("CONNECT {\"no_responders\":true}\r\n").await;
        client
            .expect("-ERR 'no responders requires headers support'\r\n")
            .await;
        client.expect_closed().await;
        let (mut client, _) = Client::open().await;
        client.send(format!("SUB {} 1\r\n", "a".repeat(5000))).await;
        client
            .expect("-ERR 'maximum control line exceeded'\r\n")
            .await;
        client.expect_closed().await;

        // Harmless oddities leave the connection open.
        let mut client = Client::connected(r#"{"verbose":false}"#).await;
        client
            .send("+OK\r\nINFO {}\r\nping with words\r\nPONG\r\nSUB a..b 1\r\nPING\r\n")
            .await;
        client.expect("PONG\r\n").await;
        client.expect("-ERR 'Invalid Subject'\r\n").await;
        client.expect("PONG\r\n").await;
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn before_connect_an_open_server_takes_operations_with_verbose_defaults() {
    let mut sim = sim_with_nats(FakeNatsOptions::new());
    sim.client("app", async move {
        let (mut client, _) = Client::open().await;
        client.send("SUB foo 1\r\nPUB foo 1\r\nx\r\nPING\r\n").await;
        client.expect("+OK\r\n").await;
        client.expect("+OK\r\n").await;
        client.expect("MSG foo 1 1\r\nx\r\n").await;
        client.expect("PONG\r\n").await;
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn a_restart_closes_connections_and_forgets_subscriptions() {
    let options = FakeNatsOptions::new();
    let control = options.control();
    let mut sim = sim_with_nats(options);
    let subscribed = Rc::new(Cell::new(false));
    let client_subscribed = Rc::clone(&subscribed);
    sim.client("app", async move {
        let (mut subscriber, before) = Client::open().await;
        subscriber
            .send("CONNECT {\"verbose\":false}\r\nSUB ch 1\r\nPING\r\n")
            .await;
        subscriber.expect("PONG\r\n").await;
        assert_eq!(control.subscribers("ch"), 1);
        client_subscribed.set(true);

        // The test bounces the host now.
        subscriber.expect_closed().await;
        assert_eq!(control.subscribers("ch"), 0);

        let mut again = None;
        for _ in 0..20 {
            if let Ok(Ok(stream)) = timeout(PATIENCE, TurmoilTcp.connect(NATS)).await {
                again = Some(stream);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut client = Client {
            stream: again.expect("the server came back"),
            buf: Vec::new(),
            answer_pings: true,
        };
        let after = client.info().await;
        assert_ne!(
            before["server_id"], after["server_id"],
            "a new run, a new id"
        );
        client
            .send("CONNECT {\"verbose\":false}\r\nPUB ch 1\r\nx\r\nSUB ch 1\r\nPUB ch 1\r\ny\r\n")
            .await;
        client.expect("MSG ch 1 1\r\ny\r\n").await;
        Ok(())
    });
    let mut bounced = false;
    while !sim.step().unwrap() {
        if subscribed.get() && !bounced {
            sim.bounce("nats");
            bounced = true;
        }
    }
    assert!(bounced);
}

/// Runs a few clients publishing and subscribing at once and returns what each received, and
/// when.
fn transcript(seed: u64) -> Vec<String> {
    let mut sim = turmoil::Builder::new().rng_seed(seed).build();
    let options = FakeNatsOptions::new().with_ping_interval(Duration::from_secs(1));
    sim.host("nats", move || serve_nats(DEFAULT_PORT, options.clone()));
    let lines = Rc::new(std::cell::RefCell::new(Vec::new()));
    for name in ["a", "b", "c"] {
        let lines = Rc::clone(&lines);
        sim.client(name, async move {
            let mut client = Client::connected(MODERN).await;
            client
                .send("SUB room.> 1\r\nSUB room.* q 2\r\nPING\r\n")
                .await;
            client.expect("PONG\r\n").await;
            for n in 0..5 {
                client
                    .send(format!("PUB room.{name} {}\r\n{n}\r\n", 1))
                    .await;
                tokio::time::sleep(Duration::from_millis(7)).await;
            }
            while let Next::Op(op) = client.next_within(Duration::from_secs(3)).await {
                let at = turmoil::sim_elapsed().unwrap_or_default().as_millis();
                lines.borrow_mut().push(format!("{at} {name} {op:?}"));
            }
            Ok(())
        });
    }
    sim.run().unwrap();
    lines.take()
}

#[test]
fn the_same_seed_gives_the_same_deliveries_at_the_same_times() {
    let first = transcript(SEED);
    assert!(first.len() > 30, "{first:?}");
    assert_eq!(first, transcript(SEED));
}
