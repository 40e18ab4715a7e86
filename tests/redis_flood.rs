//! A Redis bus under a flood of incoming messages: subscribing another channel still completes
//! promptly, and the process's memory stays bounded.
//!
//! redis-rs reads the Pub/Sub socket on a task of its own into an unbounded queue that only the
//! bus's supervisor drains. A supervisor that lets messages starve everything else never gets
//! to send `SUBSCRIBE`; one that stops draining while a command is in flight, or that
//! dispatches more slowly than redis-rs parses, lets that queue grow for as long as the flood
//! lasts. This is the only test in its binary, so the resident memory read from
//! `/proc/self/status` is this test's.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use hubbus::backend::redis::{RedisBus, RedisOptions, RedisTarget};
use hubbus::{BusOptions, MessageBus, NodeId};
use support::{RedisServer, eventually};

const DEADLINE: Duration = Duration::from_secs(10);
/// Local subscribers of the flooded channel, none of them reading. Each message is queued for
/// every one of them, so dispatching costs the supervisor more than parsing costs redis-rs: the
/// supervisor is the slower side, the case where prompt draining alone bounds nothing.
const FLOODED_SUBSCRIBERS: usize = 64;
/// Connections publishing the flood.
const PUBLISHERS: usize = 3;
/// `PUBLISH` commands per pipeline; each publisher sends the next pipeline when Redis answered.
const PIPELINE: usize = 64;
/// Bytes of each flood message's payload.
const PAYLOAD: usize = 1024;
/// Publishers pause while Redis holds more than this for a Pub/Sub client: the flood comes as
/// fast as the subscriber's connection takes it. Faster, Redis would queue it and finally drop
/// the connection at its `client-output-buffer-limit`, and every answer to the bus would wait
/// behind that queue: a server-side overload, not what this test is about.
const REDIS_BACKLOG: u64 = 1024 * 1024;
/// How long memory is watched while the flood goes on.
const WATCH_FOR: Duration = Duration::from_secs(4);
/// How much the resident memory may grow over its level once the flood is running.
///
/// Bounded, what grows is what waits for the supervisor (shed past 1 MiB on the wire, reading
/// paused past 4 MiB, a few MiB parsed) and the allocator's slack: measured at 1 to 6 MiB over
/// 20 s here. Unbounded, the queue in front of the supervisor grows by 25 MiB a second or more
/// for as long as the flood lasts (measured with a supervisor that drains promptly but neither
/// sheds nor pauses: 100 to 150 MiB within this 4 s window).
const GROWTH_BOUND: u64 = 32 * 1024 * 1024;

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

/// One real hubbus frame, as a publishing node puts it on Redis, captured from a raw Pub/Sub
/// connection: the flood is made of envelopes the subscriber decodes and queues.
async fn captured_frame(url: &str, payload: Vec<u8>) -> Vec<u8> {
    let client = redis::Client::open(url).unwrap();
    let mut capture = client.get_async_pubsub().await.unwrap();
    capture.subscribe("capture").await.unwrap();
    let publisher = RedisBus::start(
        BusOptions {
            node_id: NodeId::new("flooder").unwrap(),
            ..Default::default()
        },
        RedisOptions::new(RedisTarget::parse(url).unwrap()),
    )
    .unwrap();
    assert!(eventually(DEADLINE, || publisher.health().is_connected()).await);
    publisher.publish("capture", payload.into()).await.unwrap();
    let message = tokio::time::timeout(DEADLINE, capture.on_message().next())
        .await
        .expect("the captured frame")
        .expect("the capture connection is open");
    publisher.close().await;
    message.get_payload_bytes().to_vec()
}

/// Keeps `backlog` at the largest output buffer Redis holds for a Pub/Sub client (the bus's
/// connection), from `CLIENT LIST`, until `flooding` ends.
async fn watch_output_buffers(url: String, flooding: Arc<AtomicBool>, backlog: Arc<AtomicU64>) {
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    while flooding.load(Ordering::Relaxed) {
        let clients: String = redis::cmd("CLIENT")
            .arg("LIST")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut connection)
            .await
            .unwrap();
        let largest = clients
            .split_whitespace()
            .filter_map(|field| field.strip_prefix("omem="))
            .filter_map(|bytes| bytes.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        backlog.store(largest, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Publishes `frame` on the flooded channel in pipelines, as fast as Redis answers and the
/// subscriber's connection takes it, until `flooding` ends; counts what it sent.
async fn flood(
    url: String,
    frame: Vec<u8>,
    flooding: Arc<AtomicBool>,
    backlog: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
) {
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    while flooding.load(Ordering::Relaxed) {
        if backlog.load(Ordering::Relaxed) > REDIS_BACKLOG {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let mut pipe = redis::pipe();
        for _ in 0..PIPELINE {
            pipe.cmd("PUBLISH").arg("flood").arg(&frame).ignore();
        }
        pipe.query_async::<()>(&mut connection).await.unwrap();
        sent.fetch_add(PIPELINE as u64, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_subscribe_completes_under_a_message_flood() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    let frame = captured_frame(&url, vec![b'x'; PAYLOAD]).await;

    let bus = RedisBus::start(
        BusOptions {
            node_id: NodeId::new("subscriber").unwrap(),
            ..Default::default()
        },
        RedisOptions::new(RedisTarget::parse(&url).unwrap()),
    )
    .unwrap();
    assert!(eventually(DEADLINE, || bus.health().is_connected()).await);
    let mut flooded = Vec::new();
    for _ in 0..FLOODED_SUBSCRIBERS {
        flooded.push(bus.subscribe("flood").await.unwrap());
    }

    let flooding = Arc::new(AtomicBool::new(true));
    let backlog = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let watcher = tokio::spawn(watch_output_buffers(
        url.clone(),
        flooding.clone(),
        backlog.clone(),
    ));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|_| {
            tokio::spawn(flood(
                url.clone(),
                frame.clone(),
                flooding.clone(),
                backlog.clone(),
                sent.clone(),
            ))
        })
        .collect();
    // The flood is on once the subscribers' queues overflow; memory is measured from there.
    assert!(
        eventually(DEADLINE, || flooded[0].dropped() > 10_000).await,
        "the flood reached the subscribers"
    );
    let baseline = resident_bytes();
    let sent_before = sent.load(Ordering::Relaxed);

    let started = tokio::time::Instant::now();
    let mut other = tokio::time::timeout(Duration::from_secs(1), bus.subscribe("other"))
        .await
        .expect("subscribing completes within 1 s under the flood")
        .expect("the subscription is confirmed");
    let took = started.elapsed();
    // Confirmed for real: what is published now arrives through the flood. At most once: a
    // node that falls behind sheds the oldest messages, so publish until one arrives.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let delivery = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing published on the other channel arrived under the flood"
        );
        redis::cmd("PUBLISH")
            .arg("other")
            .arg(&frame)
            .query_async::<i64>(&mut connection)
            .await
            .unwrap();
        if let Ok(delivery) = tokio::time::timeout(Duration::from_millis(200), other.recv()).await {
            break delivery.expect("the subscription is open");
        }
    };
    assert_eq!(delivery.payload().len(), PAYLOAD);

    let mut peak = baseline;
    let watch_until = tokio::time::Instant::now() + WATCH_FOR;
    while tokio::time::Instant::now() < watch_until {
        peak = peak.max(resident_bytes());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let flood_while_watched = sent.load(Ordering::Relaxed) - sent_before;
    flooding.store(false, Ordering::Relaxed);
    for publisher in publishers {
        publisher.await.unwrap();
    }
    watcher.await.unwrap();
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "subscribe took {took:?}; {flood_while_watched} messages flooded in while watched; \
         resident memory {} MiB at the start, peak {} MiB",
        baseline / (1024 * 1024),
        peak / (1024 * 1024)
    );
    // The flood really ran (about 10 000 messages a second here; a quarter of that at least).
    assert!(
        flood_while_watched > 10_000,
        "only {flood_while_watched} messages were published while memory was watched"
    );
    assert!(
        growth < GROWTH_BOUND,
        "resident memory grew by {} MiB under the flood (bound {} MiB)",
        growth / (1024 * 1024),
        GROWTH_BOUND / (1024 * 1024)
    );
    bus.close().await;
}
