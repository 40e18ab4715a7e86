//! Redis high availability with real servers: a Sentinel failover (master, replica, sentinel
//! with quorum 1) and a three-master Cluster losing the subscriber's node. In both, the bus
//! follows by itself and delivers what is published afterwards.

mod support;

use std::sync::Arc;
use std::time::Duration;

use hubbus::backend::redis::{RedisBus, RedisOptions, RedisTarget};
use hubbus::{BusOptions, MessageBus, NodeId};
use support::{RedisServer, eventually, publish_until_delivered};

const DEADLINE: Duration = Duration::from_secs(30);

async fn node(name: &str, url: &str) -> Arc<RedisBus> {
    let mut options = RedisOptions::new(RedisTarget::parse(url).unwrap());
    options.backoff.max = Duration::from_millis(200);
    options.liveness_interval = Duration::from_millis(200);
    options.liveness_timeout = Duration::from_millis(500);
    let bus = RedisBus::start(
        BusOptions {
            node_id: NodeId::new(name).unwrap(),
            ..Default::default()
        },
        options,
    )
    .unwrap();
    assert!(
        eventually(DEADLINE, || bus.health().is_connected()).await,
        "{name} did not connect: {:?}",
        bus.health()
    );
    Arc::new(bus)
}

#[tokio::test]
async fn follows_a_sentinel_failover_to_the_new_master() {
    let Some(master) = RedisServer::start() else {
        return;
    };
    let replica_of = format!("127.0.0.1 {}", master.port);
    let Some(replica) = RedisServer::start_with(&["--replicaof", &replica_of]) else {
        return;
    };
    assert!(
        eventually(DEADLINE, || master
            .cli(&["INFO", "replication"])
            .contains("connected_slaves:1"))
        .await,
        "the replica attached"
    );
    let Some(sentinel) = RedisServer::sentinel("main", master.port) else {
        return;
    };
    assert!(
        eventually(DEADLINE, || sentinel
            .cli(&["SENTINEL", "replicas", "main"])
            .contains(&replica.port.to_string()))
        .await,
        "the sentinel discovered the replica"
    );

    let url = format!("redis+sentinel://127.0.0.1:{}/main", sentinel.port);
    let publisher = node("pub", &url).await;
    let subscriber = node("sub", &url).await;
    let mut room = subscriber.subscribe("room1").await.unwrap();
    publish_until_delivered(publisher.as_ref(), &mut room, "before", DEADLINE).await;
    assert_eq!(
        master.cli(&["PUBSUB", "NUMSUB", "room1"]).lines().last(),
        Some("1")
    );

    // Force the failover; the sentinel may need a moment before the replica is eligible.
    assert!(
        eventually(DEADLINE, || sentinel.cli(&["SENTINEL", "FAILOVER", "main"])
            == "OK")
        .await,
        "the sentinel accepted the failover"
    );
    assert!(
        eventually(DEADLINE, || sentinel
            .cli(&["SENTINEL", "get-master-addr-by-name", "main"])
            .ends_with(&replica.port.to_string()))
        .await,
        "the sentinel promoted the replica"
    );
    publish_until_delivered(publisher.as_ref(), &mut room, "after", DEADLINE).await;
    // The subscriber is on the new master now.
    assert!(
        eventually(DEADLINE, || replica
            .cli(&["PUBSUB", "NUMSUB", "room1"])
            .ends_with('1'))
        .await,
        "the subscriber moved to the new master"
    );
    publisher.close().await;
    subscriber.close().await;
}

#[tokio::test]
async fn cluster_delivery_resumes_through_a_surviving_node() {
    let Some(mut nodes) = RedisServer::cluster(3, 0).await else {
        return;
    };
    let addrs: Vec<String> = nodes.iter().map(RedisServer::addr).collect();

    // The subscriber starts on node 0 and learns the others; the publisher uses node 1.
    let subscriber = node("sub", &format!("redis+cluster://{}", addrs[0])).await;
    let publisher = node("pub", &format!("redis+cluster://{}", addrs[1])).await;
    let mut room = subscriber.subscribe("room1").await.unwrap();
    publish_until_delivered(publisher.as_ref(), &mut room, "before", DEADLINE).await;
    assert!(nodes[0].cli(&["PUBSUB", "NUMSUB", "room1"]).ends_with('1'));

    nodes[0].kill();
    publish_until_delivered(publisher.as_ref(), &mut room, "after", DEADLINE).await;
    assert!(
        nodes[1..]
            .iter()
            .any(|n| n.cli(&["PUBSUB", "NUMSUB", "room1"]).ends_with('1')),
        "the subscriber moved to a surviving node"
    );
    publisher.close().await;
    subscriber.close().await;
}
