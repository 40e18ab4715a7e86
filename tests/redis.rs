//! The Redis backend against real `redis-server` processes, each test with its own server on a
//! free port: round trip, the plan's publish timeout, resubscription after a restart, liveness
//! probing of a silent server, authentication, and clean shutdown.

mod support;

use std::sync::Arc;
use std::time::Duration;

use hubbus::backend::redis::{RedisBus, RedisOptions, RedisTarget};
use hubbus::{
    BusError, BusMetrics, BusOptions, ForeignMessages, HealthState, MessageBus, NodeId,
    Subscription,
};
use prometheus::Registry;
use support::{RedisServer, eventually};

/// A frame that claims to be an envelope (magic and version 1) and breaks off after that.
const BROKEN_ENVELOPE: &str = "hb\u{1}broken";

/// Generous: real processes on a busy 2-core machine.
const DEADLINE: Duration = Duration::from_secs(10);

struct Node {
    bus: Arc<RedisBus>,
    metrics: BusMetrics,
    registry: Registry,
}

impl Node {
    /// The sum of the series of counter `name`.
    fn counter(&self, name: &str) -> f64 {
        support::metric(&self.registry, name, &[])
    }

    /// `gohub_bus_dropped_total{backend="redis",reason=...}`.
    fn dropped(&self, reason: &str) -> f64 {
        self.registry
            .gather()
            .iter()
            .filter(|family| family.name() == "gohub_bus_dropped_total")
            .flat_map(|family| family.get_metric())
            .filter(|metric| {
                let labels = metric.get_label();
                labels
                    .iter()
                    .any(|l| l.name() == "backend" && l.value() == "redis")
                    && labels
                        .iter()
                        .any(|l| l.name() == "reason" && l.value() == reason)
            })
            .map(|metric| metric.get_counter().get_value())
            .sum()
    }
}

fn options(url: &str) -> RedisOptions {
    let mut options = RedisOptions::new(RedisTarget::parse(url).unwrap());
    // Short waits keep restart tests quick; the defaults are the plan's and are tested in config.
    options.backoff.max = Duration::from_millis(200);
    options.liveness_interval = Duration::from_millis(200);
    options.liveness_timeout = Duration::from_millis(500);
    options
}

async fn node(name: &str, redis: RedisOptions) -> Node {
    let registry = Registry::new();
    let metrics = BusMetrics::register(&registry, "gohub").unwrap();
    let bus = RedisBus::start(
        BusOptions {
            node_id: NodeId::new(name).unwrap(),
            metrics: metrics.clone(),
            ..Default::default()
        },
        redis,
    )
    .unwrap();
    let node = Node {
        bus: Arc::new(bus),
        metrics,
        registry,
    };
    assert!(
        eventually(DEADLINE, || node.bus.health().is_connected()).await,
        "{name} did not connect: {:?}",
        node.bus.health()
    );
    node
}

async fn next(subscription: &mut Subscription) -> hubbus::Delivery {
    tokio::time::timeout(DEADLINE, subscription.recv())
        .await
        .expect("a delivery within the deadline")
        .expect("the subscription is open")
}

#[tokio::test]
async fn publish_reaches_a_subscriber_on_another_node() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let publisher = node("pub", options(&server.url())).await;
    let subscriber = node("sub", options(&server.url())).await;
    let mut room = subscriber.bus.subscribe("room1").await.unwrap();
    let receipt = publisher
        .bus
        .publish("room1", "hello".into())
        .await
        .unwrap();
    let delivery = next(&mut room).await;
    assert_eq!(delivery.payload().as_ref(), b"hello");
    assert_eq!(delivery.id(), receipt.id);
    assert_eq!(delivery.origin().as_str(), "pub");
    assert!(!delivery.redelivered());
    assert_eq!(subscriber.metrics.redis_latency().get_sample_count(), 1);
    publisher.bus.close().await;
    subscriber.bus.close().await;
}

/// The plan's TestPublishTimeout: with the server gone, publish gives up after the publish
/// timeout with `PublishTimeout`, and the plan's error counter rises.
#[tokio::test]
async fn publish_times_out_when_server_down() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let node = node("pub", options(&server.url())).await;
    node.bus.publish("room1", "before".into()).await.unwrap();
    server.kill();
    assert!(
        eventually(DEADLINE, || node.bus.health().state == HealthState::Down).await,
        "the bus noticed the server is gone"
    );
    let errors_before = node.metrics.redis_publish_errors().get();
    let started = tokio::time::Instant::now();
    let result = node.bus.publish("room1", "while down".into()).await;
    assert!(
        matches!(result, Err(BusError::PublishTimeout(d)) if d == Duration::from_millis(50)),
        "{result:?}"
    );
    // It waited for a connection up to the timeout, not much longer.
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(node.metrics.redis_publish_errors().get(), errors_before + 1);
    assert!(node.metrics.redis_reconnects().get() >= 1);
    node.bus.close().await;
}

/// Kill the server, start a new one on the same port: messages published afterwards arrive
/// without any user action.
#[tokio::test]
async fn resubscribes_after_server_restart() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let publisher = node("pub", options(&server.url())).await;
    let subscriber = node("sub", options(&server.url())).await;
    let mut room = subscriber.bus.subscribe("room1").await.unwrap();
    publisher.bus.publish("room1", "one".into()).await.unwrap();
    assert_eq!(next(&mut room).await.payload().as_ref(), b"one");

    server.restart();
    // Both nodes reconnect on their own and the subscriber subscribes again; publish until a
    // message gets through (at-most-once: the ones sent while reconnecting may be lost).
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let delivered = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivery after the restart"
        );
        let _ = publisher.bus.publish("room1", "two".into()).await;
        if let Ok(Some(delivery)) =
            tokio::time::timeout(Duration::from_millis(100), room.recv()).await
        {
            break delivery;
        }
    };
    assert_eq!(delivered.payload().as_ref(), b"two");
    assert_eq!(subscriber.bus.health().state, HealthState::Connected);
    assert!(subscriber.metrics.redis_reconnects().get() >= 1);
    publisher.bus.close().await;
    subscriber.bus.close().await;
}

/// A server that keeps the connection open but stops answering (here `CLIENT PAUSE`) is
/// detected by the PING probe and the connection is replaced.
#[tokio::test]
async fn liveness_probe_replaces_a_silent_connection() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let node = node("sub", options(&server.url())).await;
    let reconnects = node.metrics.redis_reconnects().get();
    assert_eq!(server.cli(&["CLIENT", "PAUSE", "1500", "ALL"]), "OK");
    assert!(
        eventually(DEADLINE, || {
            node.bus
                .health()
                .reason
                .is_some_and(|reason| reason.contains("did not answer PING"))
        })
        .await,
        "the probe noticed the silence: {:?}",
        node.bus.health()
    );
    assert!(
        eventually(DEADLINE, || node.bus.health().is_connected()).await,
        "reconnected once the server answers again"
    );
    assert!(node.metrics.redis_reconnects().get() > reconnects);
    node.bus.close().await;
}

#[tokio::test]
async fn authenticates_with_acl_user_and_password() {
    let Some(server) = RedisServer::start_with(&["--requirepass", "s3cret"]) else {
        return;
    };
    server.cli(&[
        "-a", "s3cret", "ACL", "SETUSER", "hub", "on", ">hubpw", "+@all", "&*",
    ]);
    let url = format!("redis://hub:hubpw@127.0.0.1:{}", server.port);
    let node = node("acl", options(&url)).await;
    let mut room = node.bus.subscribe("room1").await.unwrap();
    node.bus.publish("room1", "x".into()).await.unwrap();
    assert_eq!(next(&mut room).await.payload().as_ref(), b"x");
    node.bus.close().await;

    // A wrong password never connects, and health says why.
    let wrong = format!("redis://hub:nope@127.0.0.1:{}", server.port);
    let bus = RedisBus::start(BusOptions::default(), options(&wrong)).unwrap();
    assert!(
        eventually(DEADLINE, || {
            bus.health()
                .reason
                .is_some_and(|reason| reason.to_lowercase().contains("authentication failed"))
        })
        .await,
        "{:?}",
        bus.health()
    );
    bus.close().await;
}

/// A frame that claims to be an envelope (`hb` and a version byte) but does not decode is
/// counted as malformed and dropped; valid ones around it still arrive.
#[tokio::test]
async fn malformed_frames_are_counted_and_dropped() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let node = node("sub", options(&server.url())).await;
    let mut room = node.bus.subscribe("room1").await.unwrap();
    assert_eq!(server.cli(&["PUBLISH", "room1", BROKEN_ENVELOPE]), "1");
    node.bus.publish("room1", "valid".into()).await.unwrap();
    assert_eq!(next(&mut room).await.payload().as_ref(), b"valid");
    assert_eq!(node.dropped("malformed"), 1.0);
    assert_eq!(node.counter("gohub_bus_foreign_total"), 0.0);
    assert!(
        room.try_recv().is_none(),
        "the malformed frame was not delivered"
    );
    node.bus.close().await;
}

/// A plain `PUBLISH` from a service that is not a hub reaches the subscribers as it was sent,
/// from the external origin, with an id and timestamp taken on receipt, and is counted apart
/// from malformed envelopes.
#[tokio::test]
async fn redis_foreign_frames_are_delivered_from_the_external_origin() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let node = node("sub", options(&server.url())).await;
    let mut room = node.bus.subscribe("room1").await.unwrap();
    let before = std::time::SystemTime::now();
    assert_eq!(server.cli(&["PUBLISH", "room1", "hello"]), "1");
    assert_eq!(server.cli(&["PUBLISH", "room1", r#"{"text":"hi"}"#]), "1");
    let first = next(&mut room).await;
    let second = next(&mut room).await;
    assert_eq!(first.payload().as_ref(), b"hello");
    assert_eq!(second.payload().as_ref(), br#"{"text":"hi"}"#);
    for delivery in [&first, &second] {
        assert!(delivery.origin().is_external(), "{:?}", delivery.origin());
        assert_eq!(delivery.channel(), "room1");
        assert!(delivery.headers().is_empty());
        assert!(delivery.published_at() >= before - Duration::from_secs(1));
    }
    assert!(second.id() > first.id(), "ids on receipt are time-ordered");
    assert_eq!(node.counter("gohub_bus_foreign_total"), 2.0);
    assert_eq!(node.dropped("malformed"), 0.0);
    node.bus.close().await;
}

/// With `foreign_messages = drop`, a plain `PUBLISH` is counted as dropped for that reason and
/// reaches nobody; the bus's own messages still arrive.
#[tokio::test]
async fn redis_foreign_frames_are_dropped_when_set_to() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let registry = Registry::new();
    let metrics = BusMetrics::register(&registry, "gohub").unwrap();
    let bus = RedisBus::start(
        BusOptions {
            node_id: NodeId::new("strict").unwrap(),
            foreign_messages: ForeignMessages::Drop,
            metrics: metrics.clone(),
            ..Default::default()
        },
        options(&server.url()),
    )
    .unwrap();
    let node = Node {
        bus: Arc::new(bus),
        metrics,
        registry,
    };
    assert!(eventually(DEADLINE, || node.bus.health().is_connected()).await);
    let mut room = node.bus.subscribe("room1").await.unwrap();
    assert_eq!(server.cli(&["PUBLISH", "room1", "hello"]), "1");
    node.bus.publish("room1", "valid".into()).await.unwrap();
    assert_eq!(next(&mut room).await.payload().as_ref(), b"valid");
    assert_eq!(node.dropped("foreign"), 1.0);
    assert_eq!(node.counter("gohub_bus_foreign_total"), 0.0);
    assert!(room.try_recv().is_none(), "the foreign frame was dropped");
    node.bus.close().await;
}

/// After `close` returns, the supervisor and every connection task are gone.
#[tokio::test]
async fn close_ends_the_background_tasks() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let runtime = tokio::runtime::Handle::current();
    let baseline = runtime.metrics().num_alive_tasks();
    let node = node("sub", options(&server.url())).await;
    let _room = node.bus.subscribe("room1").await.unwrap();
    assert!(runtime.metrics().num_alive_tasks() > baseline);
    node.bus.close().await;
    assert!(
        eventually(DEADLINE, || runtime.metrics().num_alive_tasks() == baseline).await,
        "{} tasks left behind",
        runtime.metrics().num_alive_tasks() - baseline
    );
    assert!(matches!(
        node.bus.publish("room1", "x".into()).await,
        Err(BusError::Closed)
    ));
    assert_eq!(node.bus.health().state, HealthState::Down);
    // Redis forgot the subscription: the server has no subscriber for the channel.
    assert!(
        eventually(DEADLINE, || server
            .cli(&["PUBSUB", "NUMSUB", "room1"])
            .ends_with('0'))
        .await
    );
}

/// Makes a CA and a server certificate for `localhost` with the openssl command-line tool;
/// returns (ca.pem, server.pem, server.key) paths in `dir`.
fn make_certificates(dir: &std::path::Path) -> [std::path::PathBuf; 3] {
    let run = |args: &[&str]| {
        let output = std::process::Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("run openssl (install the openssl package)");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=hubbus test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    ]);
    ["ca.pem", "server.pem", "server.key"].map(|name| dir.join(name))
}

/// `rediss://` connects through TLS, trusting the CA given in `tls_ca_file`; without that CA
/// the certificate is refused and health says so.
#[tokio::test]
async fn tls_connection_with_a_private_ca() {
    let certs = support::ScratchDir::new("tls");
    let [ca, cert, key] = make_certificates(&certs.0);
    let tls_port = support::free_port().to_string();
    let Some(server) = RedisServer::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        cert.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
        "--tls-ca-cert-file",
        ca.to_str().unwrap(),
        "--tls-auth-clients",
        "no",
    ]) else {
        return;
    };
    let url = format!("rediss://localhost:{tls_port}");
    let mut redis = options(&url);
    redis.tls_ca_file = Some(ca.clone());
    let node = node("tls", redis).await;
    let mut room = node.bus.subscribe("room1").await.unwrap();
    node.bus.publish("room1", "secret".into()).await.unwrap();
    assert_eq!(next(&mut room).await.payload().as_ref(), b"secret");
    node.bus.close().await;

    let untrusted = RedisBus::start(BusOptions::default(), options(&url)).unwrap();
    assert!(
        eventually(DEADLINE, || untrusted
            .health()
            .reason
            .is_some_and(|r| r.to_lowercase().contains("certificate")))
        .await,
        "{:?}",
        untrusted.health()
    );
    untrusted.close().await;
    drop(server);
}

/// A channel stays subscribed on Redis while any local subscriber is left, and is
/// UNSUBSCRIBEd when the last one closes; subscribing again works.
#[tokio::test]
async fn last_local_unsubscribe_unsubscribes_on_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let node = node("sub", options(&server.url())).await;
    let numsub = || server.cli(&["PUBSUB", "NUMSUB", "room1"]);
    let first = node.bus.subscribe("room1").await.unwrap();
    let second = node.bus.subscribe("room1").await.unwrap();
    assert!(
        numsub().ends_with('1'),
        "one Redis subscription for both: {}",
        numsub()
    );
    first.close().await;
    assert!(
        numsub().ends_with('1'),
        "still wanted by the second subscriber"
    );
    drop(second);
    assert!(
        eventually(DEADLINE, || numsub().ends_with('0')).await,
        "unsubscribed after the last local subscriber left"
    );
    let mut again = node.bus.subscribe("room1").await.unwrap();
    assert!(numsub().ends_with('1'));
    node.bus.publish("room1", "back".into()).await.unwrap();
    assert_eq!(next(&mut again).await.payload().as_ref(), b"back");
    node.bus.close().await;
}

/// How often Redis refused `channel` to a client, from `ACL LOG` (entries about the same
/// channel, user and context are merged and counted).
fn acl_refusals(server: &RedisServer, channel: &str) -> u64 {
    let log = server.cli(&["ACL", "LOG"]);
    let lines: Vec<&str> = log.lines().collect();
    let mut total = 0;
    let mut count = 0;
    for pair in lines.windows(2) {
        match pair {
            ["count", value] => count = value.parse().unwrap_or(0),
            ["object", object] if *object == channel => total += count,
            _ => {}
        }
    }
    total
}

/// One channel's SUBSCRIBE refused by an ACL is that subscription's error: `subscribe` returns
/// `Refused` and leaves nothing behind, the other channels keep delivering, and the bus neither
/// reconnects nor asks Redis for the channel again.
#[tokio::test]
async fn redis_one_forbidden_channel_does_not_take_the_bus_down() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    assert_eq!(
        server.cli(&[
            "ACL",
            "SETUSER",
            "hub",
            "on",
            ">hubpw",
            "+@all",
            "resetchannels",
            "&allowed:*",
        ]),
        "OK"
    );
    let url = format!("redis://hub:hubpw@127.0.0.1:{}", server.port);
    let node = node("acl", options(&url)).await;
    let mut first = node.bus.subscribe("allowed:1").await.unwrap();
    let reconnects = node.metrics.redis_reconnects().get();

    match node.bus.subscribe("secret").await {
        Err(BusError::Refused { channel, reason }) => {
            assert_eq!(channel, "secret");
            assert!(reason.contains("NOPERM"), "{reason}");
        }
        other => panic!("expected the refusal, got {other:?}"),
    }
    // The other channels work: the one subscribed before delivers, a new one is confirmed.
    let mut second = node.bus.subscribe("allowed:2").await.unwrap();
    for (subscription, channel) in [(&mut first, "allowed:1"), (&mut second, "allowed:2")] {
        node.bus.publish(channel, channel.into()).await.unwrap();
        assert_eq!(
            next(subscription).await.payload().as_ref(),
            channel.as_bytes()
        );
    }
    // The session carried on. A bus that ended it would reconnect within 50 ms and keep doing
    // so; watch for two liveness intervals.
    let watch_until = tokio::time::Instant::now() + Duration::from_millis(400);
    while tokio::time::Instant::now() < watch_until {
        assert!(node.bus.health().is_connected(), "{:?}", node.bus.health());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(node.metrics.redis_reconnects().get(), reconnects);
    // Nothing was left to subscribe: Redis was asked once, although the subscribe to
    // `allowed:2` and this reconnect each brought Redis's subscriptions in line again.
    assert_eq!(server.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]), "1");
    assert!(
        eventually(DEADLINE, || node.metrics.redis_reconnects().get()
            > reconnects)
        .await,
        "the bus noticed its Pub/Sub connection was killed"
    );
    assert!(eventually(DEADLINE, || node.bus.health().is_connected()).await);
    node.bus.publish("allowed:1", "again".into()).await.unwrap();
    assert_eq!(next(&mut first).await.payload().as_ref(), b"again");
    assert_eq!(acl_refusals(&server, "secret"), 1);
    // Asking again is refused again, once more.
    assert!(matches!(
        node.bus.subscribe("secret").await,
        Err(BusError::Refused { .. })
    ));
    assert_eq!(acl_refusals(&server, "secret"), 2);
    node.bus.close().await;
}

/// `subscribe` while Redis is away waits (up to `connect_timeout`) for the connection and
/// Redis's confirmation; once it returns, the next publish is delivered.
#[tokio::test]
async fn redis_subscribe_while_disconnected_waits_for_the_confirmation() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let mut redis = options(&server.url());
    redis.connect_timeout = Duration::from_secs(5);
    let subscriber = node("sub", redis).await;
    server.kill();
    assert!(
        eventually(DEADLINE, || !subscriber.bus.health().is_connected()).await,
        "the bus noticed the server is gone"
    );
    let bus = subscriber.bus.clone();
    let subscribing = tokio::spawn(async move { bus.subscribe("room1").await });
    // Not confirmed while Redis is away (a `subscribe` that returned now would be a promise
    // the bus cannot keep).
    assert!(
        !eventually(Duration::from_millis(300), || subscribing.is_finished()).await,
        "subscribe returned while Redis was down"
    );
    server.restart();
    let mut room = tokio::time::timeout(DEADLINE, subscribing)
        .await
        .expect("subscribe returned once Redis was back")
        .unwrap()
        .expect("subscribe confirmed");
    let publisher = node("pub", options(&server.url())).await;
    publisher.bus.publish("room1", "next".into()).await.unwrap();
    assert_eq!(next(&mut room).await.payload().as_ref(), b"next");
    publisher.bus.close().await;
    subscriber.bus.close().await;
}

/// When Redis does not come back within `connect_timeout`, `subscribe` fails with
/// `NotConnected` and undoes its registration: after the reconnect nothing is subscribed.
#[tokio::test]
async fn redis_unconfirmed_subscribe_fails_and_leaves_nothing_behind() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let mut redis = options(&server.url());
    redis.connect_timeout = Duration::from_millis(300);
    let node = node("sub", redis).await;
    server.kill();
    assert!(eventually(DEADLINE, || !node.bus.health().is_connected()).await);
    let started = tokio::time::Instant::now();
    match node.bus.subscribe("room1").await {
        Err(BusError::NotConnected(reason)) => {
            assert!(reason.contains("did not confirm SUBSCRIBE"), "{reason}")
        }
        other => panic!("expected NotConnected, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "waited {waited:?}"
    );
    server.restart();
    // Connected means the first round of subscriptions on the new connection is done.
    assert!(eventually(DEADLINE, || node.bus.health().is_connected()).await);
    assert!(server.cli(&["PUBSUB", "NUMSUB", "room1"]).ends_with('0'));
    node.bus.close().await;
}

/// A bus that was just started (not yet connected) subscribes, and the very next publish from
/// another node is delivered: `subscribe` returned only once Redis confirmed it.
#[tokio::test]
async fn redis_subscribe_right_after_start_receives_the_next_publish() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let publisher = node("pub", options(&server.url())).await;
    for round in 0..5 {
        let bus = RedisBus::start(
            BusOptions {
                node_id: NodeId::new(format!("sub-{round}")).unwrap(),
                ..Default::default()
            },
            options(&server.url()),
        )
        .unwrap();
        let mut room = bus.subscribe("room1").await.unwrap();
        publisher
            .bus
            .publish("room1", format!("{round}").into())
            .await
            .unwrap();
        assert_eq!(
            next(&mut room).await.payload().as_ref(),
            format!("{round}").as_bytes()
        );
        bus.close().await;
    }
    publisher.bus.close().await;
}

/// Collects everything `tracing` writes, as text.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    fn lines_with(&self, needle: &str) -> usize {
        self.text()
            .lines()
            .filter(|line| line.contains(needle))
            .count()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What an operator reads: the connect with the server, a refused channel with the reason, a
/// lost connection with the reason and the reconnect, malformed frames once per period however
/// many arrive, and never the password.
#[tokio::test]
async fn redis_logs_connects_refusals_and_malformed_frames_without_secrets() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    server.cli(&[
        "ACL",
        "SETUSER",
        "hub",
        "on",
        ">s3cret-pw",
        "+@all",
        "resetchannels",
        "&room*",
    ]);
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // The test runtime has one thread, so every task of the bus logs through this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);

    let url = format!("redis://hub:s3cret-pw@127.0.0.1:{}", server.port);
    let node = node("logs", options(&url)).await;
    assert_eq!(captured.lines_with("connected to Redis"), 1);
    assert!(captured.text().contains(&server.addr()));

    assert!(node.bus.subscribe("secret").await.is_err());
    let refusal = captured.text();
    assert!(
        refusal.contains("Redis refused SUBSCRIBE") && refusal.contains("channel=secret"),
        "{refusal}"
    );
    assert!(refusal.contains("NOPERM"), "{refusal}");

    let mut room = node.bus.subscribe("room1").await.unwrap();
    for _ in 0..20 {
        server.cli(&["PUBLISH", "room1", BROKEN_ENVELOPE]);
    }
    node.bus.publish("room1", "valid".into()).await.unwrap();
    assert_eq!(next(&mut room).await.payload().as_ref(), b"valid");
    assert_eq!(node.dropped("malformed"), 20.0);
    assert_eq!(
        captured.lines_with("malformed hubbus envelope"),
        1,
        "one warning for 20 malformed frames within the period"
    );

    server.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert!(
        eventually(DEADLINE, || captured.lines_with("connected to Redis") == 2).await,
        "{}",
        captured.text()
    );
    let lost = captured.text();
    assert!(
        lost.contains("Redis connection lost; reconnecting") && lost.contains("reason="),
        "{lost}"
    );
    node.bus.close().await;
    assert!(
        !captured.text().contains("s3cret-pw"),
        "{}",
        captured.text()
    );
}
