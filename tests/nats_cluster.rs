//! The NATS backends on a local three-server cluster (routes on free ports, each server with
//! its own store): delivery between nodes connected to different servers, a server killed
//! under traffic, and a stream with three replicas losing its leader during a publish run.
//!
//! A subscription reaches the other servers of a cluster through its routes a moment after the
//! server the node is connected to confirmed it (`docs/bus_spec.md`, "Clusters"), so these
//! tests wait for a first message to come through before they count.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hubbus::backend::nats::{NatsCoreBus, NatsOptions};
use hubbus::{BusMetrics, BusOptions, MessageBus, NodeId, Subscription};
use prometheus::Registry;
use support::{NatsServer, eventually};

/// Generous: three servers and the test on a busy 2-core machine.
const DEADLINE: Duration = Duration::from_secs(15);

struct Node {
    bus: Arc<NatsCoreBus>,
    registry: Registry,
}

/// A NATS Core node connected through `url` (one server or a list), with a short reconnect
/// wait; connected when returned.
async fn core_node(name: &str, url: String) -> Node {
    let mut nats = NatsOptions::new(url);
    nats.link.reconnect_wait = Duration::from_millis(100);
    nats.link.connect_timeout = Duration::from_secs(1);
    nats.publish_timeout = Duration::from_secs(1);
    let registry = Registry::new();
    let options = BusOptions {
        node_id: NodeId::new(name).unwrap(),
        metrics: BusMetrics::register(&registry, "gohub").unwrap(),
        ..Default::default()
    };
    let link = hubbus::backend::nats::AsyncNatsLink::connect(nats.link.clone())
        .await
        .unwrap();
    let bus = Arc::new(NatsCoreBus::start(options, nats, Arc::new(link)).unwrap());
    assert!(
        eventually(DEADLINE, || bus.health().is_connected()).await,
        "{name}: {:?}",
        bus.health()
    );
    Node { bus, registry }
}

/// Publishes `warm-up` messages from `publisher` until one reached each of `subscriptions`:
/// then they are known on the publisher's server too. Takes the warm-ups still on their way;
/// any other message meanwhile must be one of `also`.
async fn until_routed(
    publisher: &NatsCoreBus,
    subscriptions: &mut [&mut Subscription],
    also: &[&str],
) {
    let expected = |payload: &[u8]| {
        payload == b"warm-up" || also.iter().any(|other| payload == other.as_bytes())
    };
    for subscription in subscriptions.iter_mut() {
        let routed = async {
            loop {
                publisher.publish("room1", "warm-up".into()).await.unwrap();
                let next = subscription.recv();
                if let Ok(Some(delivery)) =
                    tokio::time::timeout(Duration::from_millis(50), next).await
                {
                    assert!(expected(delivery.payload()), "{delivery:?}");
                    if delivery.payload().as_ref() == b"warm-up" {
                        break;
                    }
                }
            }
        };
        tokio::time::timeout(DEADLINE, routed)
            .await
            .expect("the subscription reached the publisher's server");
    }
    for subscription in subscriptions {
        while let Ok(Some(delivery)) =
            tokio::time::timeout(Duration::from_millis(200), subscription.recv()).await
        {
            assert!(expected(delivery.payload()), "{delivery:?}");
        }
    }
}

/// Receives `count` messages `0..count` (in publish order, as one publisher sent them).
async fn receive_all(subscription: &mut Subscription, count: usize, node: &str) {
    for expected in 0..count {
        let delivery = tokio::time::timeout(DEADLINE, subscription.recv())
            .await
            .unwrap_or_else(|_| panic!("{node}: message {expected} of {count} did not arrive"))
            .expect("open");
        assert_eq!(
            delivery.payload().as_ref(),
            format!("m{expected}").as_bytes(),
            "{node}"
        );
    }
}

/// Publisher and subscribers each connected to a different server of the cluster: everything
/// published after the subscription reached the publisher's server arrives, in order.
#[tokio::test]
async fn nats_cluster_delivers_across_servers() {
    const MESSAGES: usize = 500;
    let Some(servers) = NatsServer::cluster(3) else {
        return;
    };
    let publisher = core_node("publisher", servers[0].url()).await;
    let first = core_node("first", servers[1].url()).await;
    let second = core_node("second", servers[2].url()).await;
    let mut at_first = first.bus.subscribe("room1").await.unwrap();
    let mut at_second = second.bus.subscribe("room1").await.unwrap();
    until_routed(&publisher.bus, &mut [&mut at_first, &mut at_second], &[]).await;
    for index in 0..MESSAGES {
        publisher
            .bus
            .publish("room1", Bytes::from(format!("m{index}")))
            .await
            .unwrap();
    }
    receive_all(&mut at_first, MESSAGES, "first").await;
    receive_all(&mut at_second, MESSAGES, "second").await;
    for node in [&publisher, &first, &second] {
        node.bus.close().await;
    }
}

/// The server a subscriber is connected to is killed while another node publishes: the
/// subscriber moves to another server of the cluster (learnt from the servers' INFO), counts
/// the reconnect, its subscription resumes there, and everything published once it is routed
/// again arrives. Publishing, on a server that stays up, never stops.
#[tokio::test]
async fn nats_cluster_server_killed_under_traffic() {
    const AFTER: usize = 200;
    let Some(mut servers) = NatsServer::cluster(3) else {
        return;
    };
    let publisher = Arc::new(core_node("publisher", servers[2].url()).await);
    // Told only of s0; it learns s1 and s2 from s0's INFO.
    let subscriber = core_node("subscriber", servers[0].url()).await;
    let mut room = subscriber.bus.subscribe("room1").await.unwrap();
    until_routed(&publisher.bus, &mut [&mut room], &[]).await;

    let traffic = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            let mut failed = 0;
            for _ in 0..400 {
                if publisher
                    .bus
                    .publish("room1", "traffic".into())
                    .await
                    .is_err()
                {
                    failed += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            failed
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    servers[0].kill();
    assert!(!servers[0].is_running());
    assert!(
        eventually(DEADLINE, || {
            support::metric(&subscriber.registry, "gohub_bus_nats_reconnects_total", &[]) >= 1.0
                && subscriber.bus.health().is_connected()
        })
        .await,
        "the subscriber did not move to another server: {:?}",
        subscriber.bus.health()
    );
    let failed = traffic.await.unwrap();
    assert_eq!(failed, 0, "publishing through s2 failed while s0 was down");
    until_routed(&publisher.bus, &mut [&mut room], &["traffic"]).await;
    for index in 0..AFTER {
        publisher
            .bus
            .publish("room1", Bytes::from(format!("m{index}")))
            .await
            .unwrap();
    }
    receive_all(&mut room, AFTER, "subscriber").await;
    publisher.bus.close().await;
    subscriber.bus.close().await;
}

/// How long publishing may stall when a stream's leader dies (`docs/operations.md`,
/// "Clusters"): a follower waits 4 to 9 s without word from the leader before it campaigns
/// (nats-server's Raft election timeout), and a publish in flight waits its `ack_timeout`
/// (2 s); 20 s allows one full timeout, a second election round and the answer. Measured on the
/// 2-core machine: 6 to 8 s.
const LEADER_FAILOVER_BOUND: Duration = Duration::from_secs(20);

/// A stream with three replicas, its leader killed during a publish run: every publish that was
/// acknowledged arrives (publishes that failed are retried with the same id, so the server
/// de-duplicates one that was stored after all), and publishing resumes within
/// [`LEADER_FAILOVER_BOUND`].
#[tokio::test]
async fn jetstream_r3_leader_kill_loses_nothing() {
    r3_kill_during_a_publish_run(Leader::Stream).await;
}

/// The same with the leader of the subscribing node's consumer killed instead: the consumer
/// moves to a new leader and every acknowledged message still arrives.
#[tokio::test]
async fn jetstream_r3_consumer_leader_kill_loses_nothing() {
    r3_kill_during_a_publish_run(Leader::Consumer).await;
}

/// Whose leader a test kills.
#[derive(Debug, Clone, Copy)]
enum Leader {
    Stream,
    Consumer,
}

async fn r3_kill_during_a_publish_run(victim: Leader) {
    use std::collections::BTreeSet;

    use hubbus::backend::nats::JetStreamOptions;
    use hubbus::{Message, MessageId};
    use support::jetstream::{JsNode, start_js_node};

    const MESSAGES: usize = 1500;
    let Some(mut servers) = NatsServer::cluster(3) else {
        return;
    };
    let all: String = servers
        .iter()
        .map(|server| server.url())
        .collect::<Vec<_>>()
        .join(",");
    let js = JetStreamOptions {
        replicas: 3,
        ack_wait: Duration::from_secs(2),
        ..JetStreamOptions::default()
    };
    let connected = |node: JsNode| async move {
        assert!(
            eventually(DEADLINE * 2, || node.bus.health().is_connected()).await,
            "{:?}",
            node.bus.health()
        );
        node
    };
    let publisher = connected(
        start_js_node(all.clone(), "publisher", js.clone(), |_| {})
            .await
            .unwrap(),
    )
    .await;
    let subscriber = connected(
        start_js_node(all.clone(), "subscriber", js.clone(), |_| {})
            .await
            .unwrap(),
    )
    .await;
    let mut room = subscriber.bus.subscribe("room1").await.unwrap();

    // Which server leads the stream, or the subscriber's consumer (the stream's only one
    // besides the publisher's, which does not subscribe and so has none).
    let admin = async_nats::connect(servers[0].url()).await.unwrap();
    let api = |subject: String| {
        let admin = admin.clone();
        async move {
            let reply = admin.request(subject, Bytes::new()).await.unwrap();
            serde_json::from_slice::<serde_json::Value>(&reply.payload).unwrap()
        }
    };
    let info = match victim {
        Leader::Stream => api(format!("$JS.API.STREAM.INFO.{}", js.stream)).await,
        Leader::Consumer => {
            let names = api(format!("$JS.API.CONSUMER.NAMES.{}", js.stream)).await;
            let names = names["consumers"].as_array().expect("consumer names");
            assert_eq!(names.len(), 1, "{names:?}");
            let durable = names[0].as_str().unwrap();
            api(format!("$JS.API.CONSUMER.INFO.{}.{durable}", js.stream)).await
        }
    };
    let leader = info["cluster"]["leader"]
        .as_str()
        .unwrap_or_else(|| panic!("{victim:?} has no leader: {info}"))
        .to_owned();
    let leader: usize = leader.trim_start_matches('s').parse().unwrap();
    let followers = info["cluster"]["replicas"].as_array().map_or(0, Vec::len);
    assert_eq!(followers, 2, "three replicas: {info}");

    let received = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let reader = {
        let received = received.clone();
        tokio::spawn(async move {
            while let Some(delivery) = room.recv().await {
                received.lock().unwrap().insert(delivery.id());
                let _ = delivery.ack().await;
            }
        })
    };

    let mut acknowledged: Vec<MessageId> = Vec::new();
    let mut killed_at = None;
    let mut longest_stall = Duration::ZERO;
    for index in 0..MESSAGES {
        if index == MESSAGES / 4 {
            servers[leader].kill();
            killed_at = Some(std::time::Instant::now());
        }
        let id = hubbus::IdGenerator::from_entropy().next_id();
        let started = std::time::Instant::now();
        loop {
            let message = Message::new("room1", format!("m{index}")).with_id(id);
            match publisher.bus.publish_message(message).await {
                Ok(receipt) => {
                    assert_eq!(receipt.id, id);
                    acknowledged.push(id);
                    break;
                }
                Err(error) => {
                    assert!(
                        started.elapsed() < LEADER_FAILOVER_BOUND,
                        "message {index}: publishing stalled for {:?}: {error}",
                        started.elapsed()
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        longest_stall = longest_stall.max(started.elapsed());
    }
    assert!(killed_at.is_some());
    assert_eq!(acknowledged.len(), MESSAGES);

    let wanted: BTreeSet<MessageId> = acknowledged.iter().copied().collect();
    let all_arrived = || wanted.is_subset(&received.lock().unwrap());
    eventually(Duration::from_secs(60), all_arrived).await;
    reader.abort();
    let received = received.lock().unwrap().clone();
    let missing: Vec<_> = wanted.difference(&received).collect();
    assert!(
        missing.is_empty(),
        "{} of {MESSAGES} acknowledged messages never arrived (the longest publish stall was {longest_stall:?}): {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    eprintln!("longest publish stall after killing the {victim:?} leader: {longest_stall:?}");
    publisher.bus.close().await;
    subscriber.bus.close().await;
}
