//! The fake Redis and the fake Sentinel, driven by the real redis-rs client over turmoil's
//! simulated TCP, exactly as the Redis backend drives them: `MultiplexedConnection` and
//! `PubSub` built on streams from `hubbus::transport::TurmoilTcp`. If redis-rs accepts the
//! fakes here, the backend's simulation runs the production code path against them.
//!
//! Waits for what a broken fake might never send are bounded by `tokio::time::timeout` in
//! simulated time, so such a fake fails a test instead of hanging it. Restarts are driven from
//! outside the simulation (`Sim::bounce` and `Sim::crash` exist only there), so those tests step
//! the simulation themselves and take cues from the client through a shared cell.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use futures_util::StreamExt;
use hubbus::transport::{Connector, TurmoilTcp};
use hubbus_sim::redis::{FakeRedisOptions, Role, serve_redis};
use hubbus_sim::sentinel::{FakeSentinel, SWITCH_MASTER_CHANNEL, serve_sentinel};
use redis::aio::{MultiplexedConnection, PubSub};
use redis::{AsyncCommands, AsyncConnectionConfig, IntoConnectionInfo, RedisConnectionInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const REDIS: &str = "redis:6379";

/// Longer than any round trip in the simulation (turmoil's latency is at most 100 ms a hop).
const PATIENCE: Duration = Duration::from_secs(2);

/// How long a test watches for something that must not happen.
const SILENCE: Duration = Duration::from_millis(500);

/// A fixed seed, so that a failure replays exactly.
const SEED: u64 = 7;

fn simulation() -> turmoil::Sim<'static> {
    turmoil::Builder::new().rng_seed(SEED).build()
}

fn sim_with_redis(options: FakeRedisOptions) -> turmoil::Sim<'static> {
    let mut sim = simulation();
    sim.host("redis", move || serve_redis(6379, options.clone()));
    sim
}

/// A publishing connection, built the way the backend builds it.
async fn connect(
    addr: &str,
    info: &RedisConnectionInfo,
) -> redis::RedisResult<MultiplexedConnection> {
    let stream = TurmoilTcp.connect(addr).await?;
    // No response timeout inside redis-rs: the tests time out explicitly, so that a wedged
    // server is observed by the test rather than hidden by the client.
    let config = AsyncConnectionConfig::new().set_response_timeout(None);
    let (connection, driver) = MultiplexedConnection::new_with_config(info, stream, config).await?;
    tokio::spawn(driver);
    Ok(connection)
}

/// A subscribing connection, built the way the backend builds it.
async fn subscriber(addr: &str, info: &RedisConnectionInfo) -> redis::RedisResult<PubSub> {
    let stream = TurmoilTcp.connect(addr).await?;
    PubSub::new(info, stream).await
}

fn open() -> RedisConnectionInfo {
    RedisConnectionInfo::default()
}

/// The next message on `pubsub`, or `None` if none arrives in time or the connection ended.
async fn next_message(pubsub: &mut PubSub) -> Option<redis::Msg> {
    timeout(PATIENCE, pubsub.on_message().next())
        .await
        .ok()
        .flatten()
}

/// Where a client stands in a test that crashes and restarts the server from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connected,
    CrashNow,
    RestartNow,
}

#[test]
fn publish_returns_the_number_of_subscribers_reached() {
    let options = FakeRedisOptions::new();
    let control = options.control();
    let mut sim = sim_with_redis(options);
    sim.client("app", async move {
        let mut publisher = connect(REDIS, &open()).await?;
        let receivers: usize = publisher.publish("news", "nobody listens").await?;
        assert_eq!(receivers, 0);

        let mut first = subscriber(REDIS, &open()).await?;
        first.subscribe("news").await?;
        let mut second = subscriber(REDIS, &open()).await?;
        second.subscribe(&["sport", "news"]).await?;
        assert_eq!(control.subscribers("news"), 2);

        let receivers: usize = publisher.publish("news", "hello").await?;
        assert_eq!(receivers, 2);
        let receivers: usize = publisher.publish("sport", "goal").await?;
        assert_eq!(receivers, 1);
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn a_subscriber_receives_what_another_connection_publishes() {
    let options = FakeRedisOptions::new();
    let control = options.control();
    let mut sim = sim_with_redis(options);
    sim.client("app", async move {
        let mut pubsub = subscriber(REDIS, &open()).await?;
        pubsub.subscribe("room:1").await?;
        let mut publisher = connect(REDIS, &open()).await?;
        let payload: &[u8] = b"binary \0\r\n\xff payload";
        let _: usize = publisher.publish("room:1", payload).await?;
        let _: usize = publisher.publish("room:1", "second").await?;

        let message = next_message(&mut pubsub).await.expect("the first message");
        assert_eq!(message.get_channel_name(), "room:1");
        assert_eq!(message.get_payload_bytes(), payload);
        let message = next_message(&mut pubsub).await.expect("the second message");
        assert_eq!(message.get_payload_bytes(), b"second", "in publish order");

        let stats = control.stats();
        assert_eq!(stats.published, 2);
        assert_eq!(stats.delivered, 2);
        assert_eq!(stats.connections_accepted, 2);
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn a_split_pubsub_receives_while_its_sink_subscribes() {
    let mut sim = sim_with_redis(FakeRedisOptions::new());
    sim.client("app", async move {
        let (mut sink, mut stream) = subscriber(REDIS, &open()).await?.split();
        sink.subscribe("a").await?;
        let mut publisher = connect(REDIS, &open()).await?;
        let _: usize = publisher.publish("a", "1").await?;
        sink.subscribe("b").await?;
        let _: usize = publisher.publish("b", "2").await?;
        for expected in ["a", "b"] {
            let message = timeout(PATIENCE, stream.next()).await?.expect("a message");
            assert_eq!(message.get_channel_name(), expected);
        }
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn unsubscribe_stops_delivery() {
    let options = FakeRedisOptions::new();
    let control = options.control();
    let mut sim = sim_with_redis(options);
    sim.client("app", async move {
        let mut pubsub = subscriber(REDIS, &open()).await?;
        pubsub.subscribe(&["a", "b"]).await?;
        pubsub.unsubscribe("a").await?;
        assert_eq!(control.subscribers("a"), 0);
        assert_eq!(control.subscribers("b"), 1);

        let mut publisher = connect(REDIS, &open()).await?;
        let receivers: usize = publisher.publish("a", "dropped").await?;
        assert_eq!(receivers, 0);
        let _: usize = publisher.publish("b", "kept").await?;
        let message = next_message(&mut pubsub).await.expect("the message on b");
        assert_eq!(message.get_channel_name(), "b");

        // Unsubscribing from everything leaves subscribed mode.
        pubsub.unsubscribe(Vec::<String>::new()).await?;
        assert_eq!(control.subscribers("b"), 0);
        let pong: String = pubsub.ping().await?;
        assert_eq!(pong, "PONG");
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn ping_works_on_a_pubsub_connection_before_and_while_subscribed() {
    let mut sim = sim_with_redis(FakeRedisOptions::new());
    sim.client("app", async move {
        let mut pubsub = subscriber(REDIS, &open()).await?;
        let pong: String = pubsub.ping().await?;
        assert_eq!(pong, "PONG");

        pubsub.subscribe("ch").await?;
        let pong: Vec<String> = pubsub.ping().await?;
        assert_eq!(pong, ["pong", ""], "RESP2 subscribed mode answers an array");
        let pong: Vec<String> = pubsub.ping_message("are you there").await?;
        assert_eq!(pong, ["pong", "are you there"]);
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn the_right_password_authenticates_and_a_wrong_one_fails() {
    let mut sim = sim_with_redis(FakeRedisOptions::new().with_password("secret"));
    sim.client("app", async move {
        let info = "redis://:secret@redis:6379"
            .into_connection_info()?
            .redis_settings()
            .clone();
        let mut publisher = connect(REDIS, &info).await?;
        let receivers: usize = publisher.publish("ch", "authenticated").await?;
        assert_eq!(receivers, 0);
        let mut pubsub = subscriber(REDIS, &info).await?;
        pubsub.subscribe("ch").await?;

        let wrong = open().set_password("guess");
        let error = connect(REDIS, &wrong)
            .await
            .expect_err("a wrong password fails");
        assert_eq!(error.kind(), redis::ErrorKind::AuthenticationFailed);
        let error = subscriber(REDIS, &wrong)
            .await
            .err()
            .expect("for PubSub too");
        assert_eq!(error.kind(), redis::ErrorKind::AuthenticationFailed);
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn without_auth_a_protected_server_answers_noauth() {
    let mut sim = sim_with_redis(FakeRedisOptions::new().with_password("secret"));
    sim.client("app", async move {
        // redis-rs ignores the answers to CLIENT SETINFO, so the connection opens ...
        let mut publisher = connect(REDIS, &open()).await?;
        // ... and the first real command is refused.
        let error = publisher
            .publish::<_, _, usize>("ch", "x")
            .await
            .expect_err("NOAUTH");
        assert_eq!(error.code(), Some("NOAUTH"));
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn an_acl_user_authenticates_with_its_name() {
    let mut sim = sim_with_redis(FakeRedisOptions::new().with_user("hub", "pw"));
    sim.client("app", async move {
        let info = "redis://hub:pw@redis:6379"
            .into_connection_info()?
            .redis_settings()
            .clone();
        let mut publisher = connect(REDIS, &info).await?;
        let pong: String = publisher.ping().await?;
        assert_eq!(pong, "PONG");
        let default_user = open().set_password("pw");
        assert!(connect(REDIS, &default_user).await.is_err());
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn select_from_the_connection_setup_is_validated() {
    let mut sim = sim_with_redis(FakeRedisOptions::new());
    sim.client("app", async move {
        let mut publisher = connect(REDIS, &open().set_db(3)).await?;
        let pong: String = publisher.ping().await?;
        assert_eq!(pong, "PONG");
        assert!(connect(REDIS, &open().set_db(16)).await.is_err());
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn a_resp3_client_is_refused_at_connect() {
    let mut sim = sim_with_redis(FakeRedisOptions::new());
    sim.client("app", async move {
        let resp3 = open().set_protocol(redis::ProtocolVersion::RESP3);
        assert!(connect(REDIS, &resp3).await.is_err());
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn role_reports_what_the_control_says() {
    let options = FakeRedisOptions::new();
    let control = options.control();
    let mut sim = sim_with_redis(options);
    sim.client("app", async move {
        let mut con = connect(REDIS, &open()).await?;
        let role: (String, i64, Vec<String>) = redis::cmd("ROLE").query_async(&mut con).await?;
        assert_eq!(role, ("master".to_owned(), 0, vec![]));

        control.set_role(Role::Replica {
            master_host: "redis-b".into(),
            master_port: 6379,
        });
        let role: (String, String, u16, String, i64) =
            redis::cmd("ROLE").query_async(&mut con).await?;
        assert_eq!(
            role,
            (
                "slave".into(),
                "redis-b".into(),
                6379,
                "connected".into(),
                0
            )
        );
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn a_wedged_server_answers_nothing_until_released() {
    let options = FakeRedisOptions::new();
    let control = options.control();
    let mut sim = sim_with_redis(options);
    sim.client("app", async move {
        let mut pubsub = subscriber(REDIS, &open()).await?;
        pubsub.subscribe("ch").await?;
        let mut publisher = connect(REDIS, &open()).await?;

        control.wedge(true);
        let ping = timeout(SILENCE, publisher.ping::<String>()).await;
        assert!(ping.is_err(), "a wedged server does not answer PING");
        let publish = timeout(SILENCE, publisher.publish::<_, _, usize>("ch", "held")).await;
        assert!(publish.is_err(), "nor PUBLISH");
        assert!(
            timeout(SILENCE, pubsub.on_message().next()).await.is_err(),
            "and delivers nothing, yet the connection stays open"
        );
        assert_eq!(control.stats().delivered, 0);

        control.wedge(false);
        let message = next_message(&mut pubsub)
            .await
            .expect("the held publish runs");
        assert_eq!(message.get_payload_bytes(), b"held");
        let pong: String = timeout(PATIENCE, publisher.ping()).await??;
        assert_eq!(pong, "PONG");
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn a_restart_closes_connections_and_forgets_subscriptions() {
    let options = FakeRedisOptions::new();
    let control = options.control();
    let mut sim = sim_with_redis(options);
    let subscribed = Rc::new(Cell::new(false));
    let client_subscribed = Rc::clone(&subscribed);
    sim.client("app", async move {
        let mut publisher = connect(REDIS, &open()).await?;
        let mut pubsub = subscriber(REDIS, &open()).await?;
        pubsub.subscribe("ch").await?;
        assert_eq!(control.subscribers("ch"), 1);
        client_subscribed.set(true);

        // The test bounces the host now; the subscription's stream ends ...
        let end = timeout(PATIENCE, pubsub.on_message().next()).await?;
        assert!(
            end.is_none(),
            "the message stream ends when the server goes away"
        );
        // ... the publishing connection is dead too ...
        assert!(
            timeout(PATIENCE, publisher.ping::<String>())
                .await?
                .is_err()
        );
        // ... and the restarted server knows nothing of the old subscription.
        assert_eq!(control.subscribers("ch"), 0);

        let mut pubsub = subscriber(REDIS, &open()).await?;
        pubsub.subscribe("ch").await?;
        let mut publisher = connect(REDIS, &open()).await?;
        let receivers: usize = publisher.publish("ch", "after restart").await?;
        assert_eq!(receivers, 1);
        let message = next_message(&mut pubsub).await.expect("delivery resumes");
        assert_eq!(message.get_payload_bytes(), b"after restart");
        assert_eq!(control.stats().connections_accepted, 4);
        Ok(())
    });
    let mut bounced = false;
    while !sim.step().unwrap() {
        if subscribed.get() && !bounced {
            sim.bounce("redis");
            bounced = true;
        }
    }
    assert!(bounced);
}

#[test]
fn a_crashed_server_drops_connections_and_connects_hang_until_it_is_back() {
    let mut sim = sim_with_redis(FakeRedisOptions::new());
    let phase = Rc::new(Cell::new(Phase::Connected));
    let client_phase = Rc::clone(&phase);
    sim.client("app", async move {
        let mut publisher = connect(REDIS, &open()).await?;
        client_phase.set(Phase::CrashNow);
        assert!(
            timeout(PATIENCE, publisher.ping::<String>())
                .await?
                .is_err(),
            "the open connection dies with the host"
        );
        // turmoil keeps packets for a crashed host in the network until it restarts, so a
        // connect neither succeeds nor is refused: it hangs, like connecting to a machine that
        // is off. (At the restart the held SYN arrives before the new software listens, and
        // that connect is refused.)
        let connect_while_down = timeout(SILENCE, TurmoilTcp.connect(REDIS)).await;
        assert!(
            connect_while_down.is_err(),
            "connect hangs while the host is down"
        );

        client_phase.set(Phase::RestartNow);
        // Back: connecting works again, retrying as the backend's supervisor would.
        for _ in 0..20 {
            if let Ok(mut publisher) = connect(REDIS, &open()).await {
                let pong: String = publisher.ping().await?;
                assert_eq!(pong, "PONG");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the server did not come back");
    });
    let mut crashed = false;
    let mut restarted = false;
    while !sim.step().unwrap() {
        if phase.get() == Phase::CrashNow && !crashed {
            sim.crash("redis");
            crashed = true;
        }
        if phase.get() == Phase::RestartNow && !restarted {
            sim.bounce("redis");
            restarted = true;
        }
    }
    assert!(restarted);
}

#[test]
fn a_subscriber_that_stops_reading_is_disconnected_and_one_that_reads_is_not() {
    let options = FakeRedisOptions::new().with_outgoing_queue(16);
    let control = options.control();
    let mut sim = sim_with_redis(options);
    sim.client("app", async move {
        // A subscriber that never reads after its confirmation.
        let mut stalled = TurmoilTcp.connect(REDIS).await?;
        stalled.write_all(b"SUBSCRIBE ch\r\n").await?;
        let mut confirmation = [0u8; 31];
        stalled.read_exact(&mut confirmation).await?;
        assert_eq!(
            &confirmation,
            b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
        );
        // And one that reads everything.
        let mut reading = subscriber(REDIS, &open()).await?;
        reading.subscribe("ch").await?;
        let mut reading = reading.into_on_message();

        // Batches that fit the queue: the stalled subscriber's socket fills (turmoil's TCP
        // window), then its queue, then it is dropped.
        let mut publisher = connect(REDIS, &open()).await?;
        let mut published = 0;
        let mut receivers = 2;
        while receivers == 2 {
            assert!(
                published < 1_000,
                "the stalled subscriber was never dropped"
            );
            let mut batch = redis::pipe();
            for _ in 0..10 {
                batch.publish("ch", published);
                published += 1;
            }
            let reached: Vec<usize> = batch.query_async(&mut publisher).await?;
            receivers = *reached.last().expect("ten replies");
        }
        assert_eq!(receivers, 1, "only the reading subscriber is left");
        assert_eq!(control.stats().slow_subscribers_disconnected, 1);
        assert_eq!(control.subscribers("ch"), 1);

        for expected in 0..published {
            let message = timeout(PATIENCE, reading.next())
                .await?
                .expect("every message");
            assert_eq!(message.get_payload::<i32>()?, expected);
        }

        // The server closed its end of the stalled connection ...
        assert_eq!(
            turmoil::established_tcp_stream_count_on("redis"),
            2,
            "only the publisher's and the reading subscriber's connections are left"
        );
        // ... after sending only what fit into the socket. (The stalled client never sees the
        // FIN: turmoil parks a segment that arrives at a full receive buffer and does not
        // deliver it once the buffer drains, so reading stops at silence, not at EOF.)
        let mut received = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(Ok(read @ 1..)) = timeout(SILENCE, stalled.read(&mut chunk)).await {
            received.extend_from_slice(&chunk[..read]);
        }
        let messages = received.windows(7).filter(|w| w == b"message").count();
        assert!(
            0 < messages && messages < published as usize,
            "{messages} of {published}"
        );
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn malformed_input_gets_a_protocol_error_and_the_connection_closes() {
    let mut sim = sim_with_redis(FakeRedisOptions::new());
    sim.client("app", async move {
        let cases: [(&[u8], &str); 5] = [
            (b"*1\r\n$-5\r\n", "invalid bulk length"),
            (b"*1\r\n$99999999999\r\n", "invalid bulk length"),
            (b"*2000000\r\n", "invalid multibulk length"),
            (b"*1\r\n:1\r\n", "expected '$', got ':'"),
            (b"*1\r\n$4\r\nPINGxx", "bulk string not terminated by CRLF"),
        ];
        for (input, error) in cases {
            let mut raw = TurmoilTcp.connect(REDIS).await?;
            raw.write_all(input).await?;
            let mut reply = Vec::new();
            timeout(PATIENCE, raw.read_to_end(&mut reply)).await??;
            assert_eq!(
                String::from_utf8_lossy(&reply),
                format!("-ERR Protocol error: {error}\r\n"),
                "for {input:?}"
            );
        }

        // Inline garbage is a command Redis does not know, not a protocol error. Its name is
        // quoted as C's `%s` quotes it: up to the first NUL byte.
        let mut raw = TurmoilTcp.connect(REDIS).await?;
        raw.write_all(b"\xff\x00 garbage\r\nPING\r\n").await?;
        let expected =
            "-ERR unknown command '\u{fffd}', with args beginning with: 'garbage' \r\n+PONG\r\n";
        let mut reply = vec![0u8; expected.len()];
        timeout(PATIENCE, raw.read_exact(&mut reply)).await??;
        assert_eq!(String::from_utf8_lossy(&reply), expected);

        // The server is still there for everyone else.
        let mut publisher = connect(REDIS, &open()).await?;
        let pong: String = publisher.ping().await?;
        assert_eq!(pong, "PONG");
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn sentinel_resolves_the_master_and_announces_a_failover() {
    let sentinel = FakeSentinel::new();
    sentinel.monitor("mymaster", "redis-a", 6379);
    let a = FakeRedisOptions::new();
    let b = FakeRedisOptions::new();
    b.control().set_role(Role::Replica {
        master_host: "redis-a".into(),
        master_port: 6379,
    });
    let (a_control, b_control) = (a.control(), b.control());
    let mut sim = simulation();
    sim.host("redis-a", move || serve_redis(6379, a.clone()));
    sim.host("redis-b", move || serve_redis(6379, b.clone()));
    let host = sentinel.clone();
    sim.host("sentinel", move || serve_sentinel(26379, host.clone()));
    sim.client("app", async move {
        let mut asker = connect("sentinel:26379", &open()).await?;
        let resolve = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg("mymaster")
            .clone();
        let (host, port): (String, u16) = resolve.query_async(&mut asker).await?;
        assert_eq!((host.as_str(), port), ("redis-a", 6379));
        let unknown: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg("nosuch")
            .query_async(&mut asker)
            .await?;
        assert_eq!(unknown, None);

        let mut events = subscriber("sentinel:26379", &open()).await?;
        events.subscribe(SWITCH_MASTER_CHANNEL).await?;

        // Fail over to redis-b, announced by IP address as a real Sentinel would.
        let b_ip = turmoil::lookup("redis-b").to_string();
        b_control.set_role(Role::Master);
        a_control.set_role(Role::Replica {
            master_host: b_ip.clone(),
            master_port: 6379,
        });
        assert_eq!(sentinel.failover("mymaster", b_ip.clone(), 6379), Some(1));

        let event = next_message(&mut events).await.expect("+switch-master");
        assert_eq!(event.get_channel_name(), SWITCH_MASTER_CHANNEL);
        assert_eq!(
            event.get_payload_bytes(),
            format!("mymaster redis-a 6379 {b_ip} 6379").as_bytes()
        );

        let (host, port): (String, u16) = resolve.query_async(&mut asker).await?;
        assert_eq!((host.as_str(), port), (b_ip.as_str(), 6379));
        let mut master = connect(&format!("{host}:{port}"), &open()).await?;
        let role: (String, i64, Vec<String>) = redis::cmd("ROLE").query_async(&mut master).await?;
        assert_eq!(role.0, "master");
        Ok(())
    });
    sim.run().unwrap();
}
