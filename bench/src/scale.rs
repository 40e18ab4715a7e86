//! Scale: 1 / 100 / 10 000 channels (the last in full runs only), each with a subscriber on every
//! one of 1 or 3 hub nodes, on every backend. Node 0 publishes round robin over the channels from
//! 16 concurrent publishers; the time runs until every node received every message. The row's
//! note says how long the subscribes took (JetStream has one consumer per node, whatever the
//! number of channels).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hubbus::MessageBus;

use crate::common::{Counter, Size, bus, delete_stream, payload, publish_concurrently, unique};
use crate::report::{Row, System, peak_rss_kib, reset_peak_rss};

const BYTES: usize = 128;

/// Runs the scale cases; `redis` and `nats` are the servers' ports.
pub async fn run(size: Size, redis: u16, nats: u16) -> anyhow::Result<Vec<Row>> {
    let channel_counts: &[usize] = if size.quick {
        &[1, 100]
    } else {
        &[1, 100, 10_000]
    };
    let n = size.pick(20_000, 500);
    let mut rows = Vec::new();
    for backend in ["memory", "redis", "nats", "jetstream"] {
        for &channels in channel_counts {
            for nodes in [1, 3] {
                rows.push(one(backend, channels, nodes, n, redis, nats).await?);
            }
        }
    }
    Ok(rows)
}

async fn one(
    backend: &str,
    channels: usize,
    nodes: usize,
    n: u64,
    redis: u16,
    nats: u16,
) -> anyhow::Result<Row> {
    let case_id = unique("sc");
    let stream = case_id.to_uppercase();
    let memory = hubbus::MemoryBroker::new();
    let mut buses: Vec<Arc<dyn MessageBus>> = Vec::new();
    for node in 0..nodes {
        let node_id = format!("{case_id}-n{node}");
        let bus: Arc<dyn MessageBus> = match backend {
            "memory" => Arc::new(memory.connect(hubbus::BusOptions {
                node_id: hubbus::NodeId::new(&node_id)?,
                ..Default::default()
            })),
            "redis" => bus(&format!("redis://127.0.0.1:{redis}?node_id={node_id}")).await?,
            "nats" => {
                bus(&format!(
                    "nats://127.0.0.1:{nats}?node_id={node_id}&subject_prefix={case_id}"
                ))
                .await?
            }
            _ => {
                bus(&format!(
                    "nats://127.0.0.1:{nats}?jetstream=true&node_id={node_id}&stream={stream}\
                     &stream_subject_prefix={case_id}&subject_prefix={case_id}c"
                ))
                .await?
            }
        };
        buses.push(bus);
    }
    let ack = backend == "jetstream";
    let names: Vec<String> = (0..channels).map(|c| format!("room{c}")).collect();
    let subscribing = Instant::now();
    let mut counters = Vec::new();
    for bus in &buses {
        let subscriptions: Vec<_> = futures_util::stream::iter(names.iter())
            .map(|name| bus.subscribe(name))
            .buffer_unordered(64)
            .collect()
            .await;
        for subscription in subscriptions {
            counters.push(Counter::start(subscription?, ack));
        }
    }
    let subscribe_time = subscribing.elapsed();
    let body = payload(BYTES);
    let names = Arc::new(names);
    reset_peak_rss();
    let start = Instant::now();
    let publisher = buses[0].clone();
    let errors = publish_concurrently(n, 16, move |i| {
        let bus = publisher.clone();
        let body = body.clone();
        let names = names.clone();
        async move {
            let channel = &names[i as usize % names.len()];
            bus.publish(channel, body).await.is_ok()
        }
    })
    .await;
    // Each node's subscribers together should see every message once, or count it dropped (one
    // channel's subscriber can be overrun by 16 publishers on the memory bus).
    let target = n - errors;
    let (mut last, mut since) = (0, Instant::now());
    let done = loop {
        let sums: Vec<u64> = counters
            .chunks(channels)
            .map(|node| node.iter().map(Counter::accounted).sum())
            .collect();
        if sums.iter().all(|sum| *sum >= target) {
            break Instant::now();
        }
        let total: u64 = sums.iter().sum();
        if total != last {
            (last, since) = (total, Instant::now());
        } else if since.elapsed() > Duration::from_secs(5) {
            break Instant::now();
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    };
    let seconds = (done - start).as_secs_f64();
    let rss = peak_rss_kib();
    let mut delivered = 0;
    let mut dropped = 0;
    for counter in counters {
        delivered += counter.count();
        dropped += counter.finish().await;
    }
    for bus in &buses {
        bus.close().await;
    }
    if backend == "jetstream" {
        delete_stream(nats, &stream).await;
    }
    let expected = (n - errors) * nodes as u64;
    let mut row = Row::new(
        "scale",
        format!("{backend} channels={channels} nodes={nodes}"),
        System::Hubbus,
    )
    .timed(n, seconds);
    row.errors = errors;
    row.dropped = dropped;
    row.lost = expected.saturating_sub(delivered + dropped);
    row.peak_rss_kib = rss;
    row.note = format!(
        "subscribing {} channel(s) on {nodes} node(s) took {:.2} s",
        channels,
        subscribe_time.as_secs_f64()
    );
    Ok(row)
}
