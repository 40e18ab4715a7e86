//! `cluster`: a Redis Cluster of three masters, in both Pub/Sub modes of hubbus on the same
//! cluster, each against raw redis-rs doing the same work: classic `PUBLISH` through one node
//! with a `SUBSCRIBE` connection on another, and sharded `SPUBLISH` to the master of each
//! channel's slot with a RESP3 `SSUBSCRIBE` connection per master. Messages go round-robin over
//! [`CHANNELS`] channels spread over the masters, from 1 / 16 / 128 concurrent publishers; a
//! subscriber on every channel checks that nothing is lost.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};

use crate::common::{
    Counter, Size, bus, metric_drops, payload, publish_concurrently, unique, wait_for,
};
use crate::report::{Row, System, peak_rss_kib, reset_peak_rss};

const BYTES: usize = 128;
/// Channels per case; their hash slots spread them over the three masters.
const CHANNELS: usize = 24;

/// Classic or sharded Pub/Sub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Classic,
    Sharded,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Classic => "classic",
            Mode::Sharded => "sharded",
        }
    }
}

/// Runs the scenario on the cluster whose nodes listen on `ports`.
pub async fn run(size: Size, ports: &[u16]) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for publishers in [1, 16, 128] {
        let n = size.pick(if publishers == 1 { 50_000 } else { 200_000 }, 2_000);
        for mode in [Mode::Classic, Mode::Sharded] {
            let case = format!("{} publishers={publishers}", mode.name());
            let channels = channels();
            rows.push(hubbus(&case, mode, ports, &channels, (n, publishers)).await?);
            let channels = channels_named("clr");
            let raw = match mode {
                Mode::Classic => raw_classic(&case, ports, &channels, (n, publishers)).await?,
                Mode::Sharded => raw_sharded(&case, ports, &channels, (n, publishers)).await?,
            };
            rows.push(raw);
        }
    }
    Ok(rows)
}

fn channels() -> Arc<Vec<String>> {
    channels_named("clh")
}

/// [`CHANNELS`] fresh channel names.
fn channels_named(tag: &str) -> Arc<Vec<String>> {
    let prefix = unique(tag);
    Arc::new((0..CHANNELS).map(|i| format!("{prefix}x{i}")).collect())
}

fn seeds(ports: &[u16]) -> String {
    ports
        .iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect::<Vec<_>>()
        .join(",")
}

async fn hubbus(
    case: &str,
    mode: Mode,
    ports: &[u16],
    channels: &Arc<Vec<String>>,
    (n, publishers): (u64, u64),
) -> anyhow::Result<Row> {
    let url = |node: &str| {
        let sharded = if mode == Mode::Sharded {
            "sharded=true&"
        } else {
            ""
        };
        format!("redis+cluster://{}?{sharded}node_id={node}", seeds(ports))
    };
    let publisher = bus(&url(&unique("pub"))).await?;
    // The subscriber's own registry: a node that cannot keep up sheds messages before they
    // reach a subscription, and counts them only there.
    let registry = prometheus::Registry::new();
    let config = hubbus::BusConfig::from_url(&url(&unique("sub")))?;
    let subscriber =
        hubbus::connect_with_metrics(&config, hubbus::BusMetrics::register(&registry, "bench")?)
            .await?;
    let mut counters = Vec::new();
    for channel in channels.iter() {
        counters.push(Counter::start(subscriber.subscribe(channel).await?, false));
    }
    let body = payload(BYTES);
    reset_peak_rss();
    let start = Instant::now();
    let (sender, names) = (publisher.clone(), channels.clone());
    let errors = publish_concurrently(n, publishers, move |i| {
        let (bus, body, names) = (sender.clone(), body.clone(), names.clone());
        async move {
            let channel = &names[i as usize % names.len()];
            bus.publish(channel, body).await.is_ok()
        }
    })
    .await;
    let seconds = start.elapsed().as_secs_f64();
    let expected = n - errors;
    let delivered = wait_for_total(&counters, expected, Duration::from_secs(2)).await;
    let rss = peak_rss_kib();
    for counter in counters {
        counter.finish().await;
    }
    let dropped = metric_drops(&registry);
    publisher.close().await;
    subscriber.close().await;
    let mut row = Row::new("cluster", case, System::Hubbus).timed(n, seconds);
    row.raw = raw_name(mode).into();
    row.errors = errors;
    row.dropped = dropped;
    row.lost = expected.saturating_sub(delivered + dropped);
    row.peak_rss_kib = rss;
    Ok(row)
}

/// Waits until the counters together reached `target`, or nothing arrived for `quiet`;
/// returns their total.
async fn wait_for_total(counters: &[Counter], target: u64, quiet: Duration) -> u64 {
    let mut last = (0, Instant::now());
    loop {
        let total: u64 = counters.iter().map(Counter::count).sum();
        if total >= target {
            return total;
        }
        if total != last.0 {
            last = (total, Instant::now());
        } else if last.1.elapsed() > quiet {
            return total;
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

fn raw_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Classic => "redis-rs multiplexed PUBLISH on one node",
        Mode::Sharded => "redis-rs SPUBLISH to each slot's master",
    }
}

async fn raw_classic(
    case: &str,
    ports: &[u16],
    channels: &Arc<Vec<String>>,
    (n, publishers): (u64, u64),
) -> anyhow::Result<Row> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{}", ports[0]))?;
    let connection = client.get_multiplexed_async_connection().await?;
    let listener = redis::Client::open(format!("redis://127.0.0.1:{}", ports[1]))?;
    let mut pubsub = listener.get_async_pubsub().await?;
    for channel in channels.iter() {
        pubsub.subscribe(channel).await?;
    }
    let received = Arc::new(AtomicU64::new(0));
    let count = received.clone();
    let counting = tokio::spawn(async move {
        let mut messages = pubsub.on_message();
        while messages.next().await.is_some() {
            count.fetch_add(1, Ordering::Release);
        }
    });
    let body = payload(BYTES);
    reset_peak_rss();
    let start = Instant::now();
    let names = channels.clone();
    let errors = publish_concurrently(n, publishers, move |i| {
        let (mut connection, body, names) = (connection.clone(), body.clone(), names.clone());
        async move {
            redis::cmd("PUBLISH")
                .arg(&names[i as usize % names.len()])
                .arg(body.as_ref())
                .query_async::<i64>(&mut connection)
                .await
                .is_ok()
        }
    })
    .await;
    let seconds = start.elapsed().as_secs_f64();
    finish_raw(
        case,
        Mode::Classic,
        (n, errors, seconds),
        &received,
        counting,
    )
    .await
}

/// A master of the cluster: its publishing connection, and which slots it owns.
struct Master {
    publisher: MultiplexedConnection,
    ranges: Vec<(i64, i64)>,
}

async fn raw_sharded(
    case: &str,
    ports: &[u16],
    channels: &Arc<Vec<String>>,
    (n, publishers): (u64, u64),
) -> anyhow::Result<Row> {
    let seed = redis::Client::open(format!("redis://127.0.0.1:{}", ports[0]))?;
    let mut seed = seed.get_multiplexed_async_connection().await?;
    let reply: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut seed)
        .await?;
    // Masters by port, with their slot ranges.
    let mut ranges: BTreeMap<i64, Vec<(i64, i64)>> = BTreeMap::new();
    if let Value::Array(entries) = &reply {
        for entry in entries {
            if let Value::Array(parts) = entry
                && let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(node))) =
                    (parts.first(), parts.get(1), parts.get(2))
                && let Some(Value::Int(port)) = node.get(1)
            {
                ranges.entry(*port).or_default().push((*start, *end));
            }
        }
    }
    let received = Arc::new(AtomicU64::new(0));
    let mut masters = Vec::new();
    let mut subscribers = Vec::new();
    for (port, ranges) in ranges {
        let url = format!("redis://127.0.0.1:{port}");
        let publisher = redis::Client::open(url.as_str())?
            .get_multiplexed_async_connection()
            .await?;
        let (pushes, mut incoming) = tokio::sync::mpsc::unbounded_channel::<PushInfo>();
        let count = received.clone();
        subscribers.push(tokio::spawn(async move {
            while let Some(push) = incoming.recv().await {
                if push.kind == PushKind::SMessage {
                    count.fetch_add(1, Ordering::Release);
                }
            }
        }));
        let subscriber = redis::Client::open(format!("{url}?protocol=resp3"))?
            .get_multiplexed_async_connection_with_config(
                &AsyncConnectionConfig::new().set_push_sender(pushes),
            )
            .await?;
        masters.push((Master { publisher, ranges }, subscriber));
    }
    // Each channel's master, found once.
    let mut routes = Vec::new();
    for channel in channels.iter() {
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(channel)
            .query_async(&mut seed)
            .await?;
        let (master, subscriber) = masters
            .iter_mut()
            .find(|(m, _)| m.ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .ok_or_else(|| anyhow::anyhow!("no master owns slot {slot}"))?;
        let _: Value = redis::cmd("SSUBSCRIBE")
            .arg(channel)
            .query_async(subscriber)
            .await?;
        routes.push(master.publisher.clone());
    }
    let routes = Arc::new(routes);
    let body = payload(BYTES);
    reset_peak_rss();
    let start = Instant::now();
    let names = channels.clone();
    let errors = publish_concurrently(n, publishers, move |i| {
        let (routes, body, names) = (routes.clone(), body.clone(), names.clone());
        async move {
            let at = i as usize % names.len();
            let mut connection = routes[at].clone();
            redis::cmd("SPUBLISH")
                .arg(&names[at])
                .arg(body.as_ref())
                .query_async::<i64>(&mut connection)
                .await
                .is_ok()
        }
    })
    .await;
    let seconds = start.elapsed().as_secs_f64();
    let counting = tokio::spawn(async move {
        // The subscriber connections live as long as this task: until the count is read.
        let _keep = masters;
        std::future::pending::<()>().await;
    });
    let row = finish_raw(
        case,
        Mode::Sharded,
        (n, errors, seconds),
        &received,
        counting,
    )
    .await;
    for subscriber in subscribers {
        subscriber.abort();
    }
    row
}

/// Waits for the raw subscribers to count what was published, then makes the row.
async fn finish_raw(
    case: &str,
    mode: Mode,
    (n, errors, seconds): (u64, u64, f64),
    received: &AtomicU64,
    counting: tokio::task::JoinHandle<()>,
) -> anyhow::Result<Row> {
    wait_for(&[received], n - errors, Duration::from_secs(2)).await;
    let rss = peak_rss_kib();
    let delivered = received.load(Ordering::Acquire);
    counting.abort();
    let mut row = Row::new("cluster", case, System::Raw).timed(n, seconds);
    row.raw = raw_name(mode).into();
    row.errors = errors;
    row.lost = (n - errors).saturating_sub(delivered);
    row.peak_rss_kib = rss;
    Ok(row)
}
