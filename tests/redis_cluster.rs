//! Sharded Pub/Sub on a real Redis Cluster (`redis+cluster://…?sharded=true`): every channel
//! lives on the master that owns its slot, and the bus follows when that changes: a master
//! killed and its replica promoted, a slot migrated to another master during traffic.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use hubbus::backend::redis::{RedisBus, RedisOptions, RedisTarget};
use hubbus::{BusOptions, MessageBus, NodeId};
use prometheus::Registry;
use support::{RedisServer, eventually, publish_until_delivered};

const DEADLINE: Duration = Duration::from_secs(30);

async fn node(name: &str, seed: &RedisServer) -> (Arc<RedisBus>, Registry) {
    let url = format!("redis+cluster://{}?sharded=true", seed.addr());
    let mut options = RedisOptions::new(RedisTarget::parse(&url).unwrap());
    options.backoff.max = Duration::from_millis(200);
    options.liveness_interval = Duration::from_millis(200);
    options.liveness_timeout = Duration::from_millis(500);
    let registry = Registry::new();
    let bus = RedisBus::start(
        BusOptions {
            node_id: NodeId::new(name).unwrap(),
            metrics: hubbus::BusMetrics::register(&registry, "hub").unwrap(),
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
    (Arc::new(bus), registry)
}

/// A master that serves slots, as `CLUSTER NODES` describes it.
struct Master {
    port: u16,
    /// First and last slot of each range it owns.
    ranges: Vec<(u16, u16)>,
}

/// The live masters that serve slots, from `CLUSTER NODES`.
fn masters(seed: &RedisServer) -> Vec<Master> {
    seed.cli(&["CLUSTER", "NODES"])
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            if !flags.contains("master") || flags.contains("fail") {
                return None;
            }
            let port = fields[1].split(['@', ',']).next()?.rsplit(':').next()?;
            let ranges: Vec<(u16, u16)> = fields[8..]
                .iter()
                .filter(|range| !range.starts_with('['))
                .filter_map(|range| match range.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => range.parse().ok().map(|slot| (slot, slot)),
                })
                .collect();
            if ranges.is_empty() {
                return None;
            }
            Some(Master {
                port: port.parse().ok()?,
                ranges,
            })
        })
        .collect()
}

fn keyslot(seed: &RedisServer, channel: &str) -> u16 {
    seed.cli(&["CLUSTER", "KEYSLOT", channel]).parse().unwrap()
}

/// The port of the master that owns `channel`'s slot, as the cluster says.
fn owner(seed: &RedisServer, channel: &str) -> u16 {
    try_owner(seed, channel).unwrap_or_else(|| panic!("no master owns `{channel}`"))
}

/// The port of the master that owns `channel`'s slot; `None` while no live master does.
fn try_owner(seed: &RedisServer, channel: &str) -> Option<u16> {
    let slot = keyslot(seed, channel);
    masters(seed)
        .into_iter()
        .find(|master| master.ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
        .map(|master| master.port)
}

fn server(nodes: &[RedisServer], port: u16) -> &RedisServer {
    nodes
        .iter()
        .find(|n| n.port == port)
        .expect("a node of the cluster")
}

/// Subscribers of `channel` on the node, as sharded Pub/Sub counts them.
fn shard_subscribers(node: &RedisServer, channel: &str) -> String {
    node.cli(&["PUBSUB", "SHARDNUMSUB", channel])
        .lines()
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

/// Channel names until every master owns at least two of them.
fn channels_on_every_master(seed: &RedisServer) -> Vec<String> {
    let count = masters(seed).len();
    let mut per_master = std::collections::BTreeMap::<u16, usize>::new();
    let mut channels = Vec::new();
    for i in 0.. {
        let channel = format!("room{i}");
        let master = owner(seed, &channel);
        let taken = per_master.entry(master).or_default();
        if *taken < 2 {
            *taken += 1;
            channels.push(channel);
        }
        if per_master.len() == count && per_master.values().all(|n| *n == 2) {
            break;
        }
    }
    channels
}

#[tokio::test]
async fn sharded_pubsub_round_trip_across_all_shards() {
    let Some(nodes) = RedisServer::cluster(3, 0).await else {
        return;
    };
    let channels = channels_on_every_master(&nodes[0]);
    let (subscriber, _) = node("sub", &nodes[0]).await;
    let (publisher, _) = node("pub", &nodes[1]).await;

    let mut rooms = Vec::new();
    for channel in &channels {
        rooms.push(subscriber.subscribe(channel).await.unwrap());
    }
    // Each channel is subscribed on its own master, and only there, and not as a classic
    // channel anywhere.
    for channel in &channels {
        let home = owner(&nodes[0], channel);
        for node in &nodes {
            let expected = if node.port == home { "1" } else { "0" };
            assert_eq!(shard_subscribers(node, channel), expected, "{channel}");
            assert!(node.cli(&["PUBSUB", "NUMSUB", channel]).ends_with('0'));
        }
    }
    // `subscribe` returned after the confirmation: everything published now arrives, in order.
    for round in 0..5 {
        for channel in &channels {
            publisher
                .publish(channel, format!("{channel}#{round}").into())
                .await
                .unwrap();
        }
    }
    for (channel, room) in channels.iter().zip(&mut rooms) {
        for round in 0..5 {
            let delivery = tokio::time::timeout(DEADLINE, room.recv())
                .await
                .expect("delivered in time")
                .expect("subscription open");
            assert_eq!(
                delivery.payload().as_ref(),
                format!("{channel}#{round}").as_bytes()
            );
            assert_eq!(delivery.origin().as_str(), "pub");
        }
    }
    // Dropping subscriptions unsubscribes them from their masters.
    drop(rooms);
    let gone = eventually(DEADLINE, || {
        channels
            .iter()
            .all(|c| nodes.iter().all(|n| shard_subscribers(n, c) == "0"))
    })
    .await;
    assert!(gone, "dropped subscriptions stayed subscribed");
    publisher.close().await;
    subscriber.close().await;
}

#[tokio::test]
async fn sharded_pubsub_survives_master_failover() {
    let Some(mut nodes) = RedisServer::cluster(3, 1).await else {
        return;
    };
    let seed = 0;
    let channels = channels_on_every_master(&nodes[seed]);
    let (subscriber, registry) = node("sub", &nodes[seed]).await;
    let (publisher, _) = node("pub", &nodes[seed]).await;
    let mut rooms = Vec::new();
    for channel in &channels {
        let mut room = subscriber.subscribe(channel).await.unwrap();
        publish_until_delivered(publisher.as_ref(), &mut room, "before", DEADLINE).await;
        rooms.push(room);
    }

    // Kill the master of the first channel that is not the seed (the buses keep a seed to ask).
    let victim_port = channels
        .iter()
        .map(|c| owner(&nodes[seed], c))
        .find(|port| *port != nodes[seed].port)
        .expect("a master other than the seed");
    let victim = nodes.iter().position(|n| n.port == victim_port).unwrap();
    let on_victim: BTreeSet<&String> = channels
        .iter()
        .filter(|c| owner(&nodes[seed], c) == victim_port)
        .collect();
    nodes[victim].kill();
    let promoted = eventually(DEADLINE, || {
        on_victim
            .iter()
            .all(|c| try_owner(&nodes[seed], c).is_some_and(|port| port != victim_port))
    })
    .await;
    assert!(promoted, "no replica took over from the killed master");

    // Every channel delivers again, those of the failed shard from the promoted replica.
    for (channel, room) in channels.iter().zip(&mut rooms) {
        publish_until_delivered(publisher.as_ref(), room, "after", DEADLINE).await;
        let home = server(&nodes, owner(&nodes[seed], channel));
        assert_eq!(shard_subscribers(home, channel), "1", "{channel}");
    }
    let reconnects = support::metric(&registry, "hub_bus_redis_reconnects_total", &[]);
    assert!(
        reconnects >= 1.0,
        "the failover was not counted as a reconnect"
    );
    publisher.close().await;
    subscriber.close().await;
}

#[tokio::test]
async fn sharded_pubsub_follows_slot_migration() {
    let Some(nodes) = RedisServer::cluster(3, 0).await else {
        return;
    };
    let channel = "migrating";
    let slot = keyslot(&nodes[0], channel).to_string();
    let from = server(&nodes, owner(&nodes[0], channel));
    let to = nodes.iter().find(|n| n.port != from.port).unwrap();
    let (subscriber, registry) = node("sub", &nodes[0]).await;
    let (publisher, _) = node("pub", &nodes[0]).await;
    let mut room = subscriber.subscribe(channel).await.unwrap();
    publish_until_delivered(publisher.as_ref(), &mut room, "before", DEADLINE).await;

    // Traffic while the slot moves: a publisher that does not stop.
    let stop = tokio_util::sync::CancellationToken::new();
    let traffic = {
        let publisher = publisher.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut sent = 0u64;
            while !stop.is_cancelled() {
                if publisher.publish(channel, "during".into()).await.is_ok() {
                    sent += 1;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            sent
        })
    };

    // The migration as `redis-cli --cluster reshard` does it (no keys to move: Pub/Sub only).
    let (from_id, to_id) = (from.node_id(), to.node_id());
    assert_eq!(
        to.cli(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]),
        "OK"
    );
    assert_eq!(
        from.cli(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]),
        "OK"
    );
    assert_eq!(to.cli(&["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]), "OK");
    assert_eq!(
        from.cli(&["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]),
        "OK"
    );
    for node in &nodes {
        node.cli(&["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
    }
    assert!(
        eventually(DEADLINE, || nodes
            .iter()
            .all(|n| owner(n, channel) == to.port))
        .await,
        "every node knows the new owner"
    );

    // The subscription follows the slot to its new master, and messages flow again.
    let moved = eventually(DEADLINE, || shard_subscribers(to, channel) == "1").await;
    assert!(
        moved,
        "the subscription did not move to the slot's new master"
    );
    assert_eq!(shard_subscribers(from, channel), "0");
    publish_until_delivered(publisher.as_ref(), &mut room, "after", DEADLINE).await;
    let reconnects = support::metric(&registry, "hub_bus_redis_reconnects_total", &[]);
    assert!(
        reconnects >= 1.0,
        "the move was not followed by a new session"
    );

    stop.cancel();
    let sent = traffic.await.unwrap();
    publisher.close().await;
    assert!(sent > 0, "nothing was published during the migration");
    subscriber.close().await;
}
