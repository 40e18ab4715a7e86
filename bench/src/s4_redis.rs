//! S4: Redis Pub/Sub against raw redis-rs (one multiplexed connection, `PUBLISH`) at 1 / 16 / 128
//! concurrent publishers, and `redis-benchmark -P 64` publishing as the server's ceiling. A
//! subscriber connection on each side checks that nothing is lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::common::{Size, hubbus_publish_case, payload, publish_concurrently, unique, wait_for};
use crate::report::{Row, System, peak_rss_kib, reset_peak_rss};

const BYTES: usize = 128;

/// Runs S4 against the Redis server on `port`.
pub async fn run(size: Size, port: u16) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for publishers in [1, 16, 128] {
        let n = size.pick(if publishers == 1 { 50_000 } else { 200_000 }, 2_000);
        let case = format!("publishers={publishers}");
        rows.push(hubbus(&case, port, n, publishers).await?);
        rows.push(raw(&case, port, n, publishers).await?);
    }
    rows.push(ceiling(port, size.pick(1_000_000, 20_000))?);
    Ok(rows)
}

async fn hubbus(case: &str, port: u16, n: u64, publishers: u64) -> anyhow::Result<Row> {
    let url = |node: &str| format!("redis://127.0.0.1:{port}?node_id={node}");
    let channel = unique("s4h");
    let mut row = hubbus_publish_case("S4", case, url, &channel, (n, publishers, BYTES)).await?;
    row.raw = "redis-rs multiplexed PUBLISH".into();
    Ok(row)
}

async fn raw(case: &str, port: u16, n: u64, publishers: u64) -> anyhow::Result<Row> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let connection = client.get_multiplexed_async_connection().await?;
    let channel = unique("s4r");
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(&channel).await?;
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
    let errors = publish_concurrently(n, publishers, move |_| {
        let mut connection = connection.clone();
        let channel = channel.clone();
        let body = body.clone();
        async move {
            redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(body.as_ref())
                .query_async::<i64>(&mut connection)
                .await
                .is_ok()
        }
    })
    .await;
    let seconds = start.elapsed().as_secs_f64();
    wait_for(&[&received], n - errors, Duration::from_secs(2)).await;
    let rss = peak_rss_kib();
    let delivered = received.load(Ordering::Acquire);
    counting.abort();
    let mut row = Row::new("S4", case, System::Raw).timed(n, seconds);
    row.raw = "redis-rs multiplexed PUBLISH".into();
    row.errors = errors;
    row.lost = (n - errors).saturating_sub(delivered);
    row.peak_rss_kib = rss;
    Ok(row)
}

/// `redis-benchmark -P 64 PUBLISH ...`: the server's own ceiling for publishing (no subscriber).
fn ceiling(port: u16, n: u64) -> anyhow::Result<Row> {
    let output = std::process::Command::new(crate::servers::binary("redis-benchmark")?)
        .args([
            "-p",
            &port.to_string(),
            "-P",
            "64",
            "-n",
            &n.to_string(),
            "-q",
        ])
        .args(["PUBLISH", "ceiling", &"x".repeat(BYTES)])
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    // The last report line: `PUBLISH ceiling xxx...: 612745.12 requests per second, p50=...`.
    let rate: f64 = text
        .rsplit(": ")
        .find_map(|part| part.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("unexpected redis-benchmark output: {text}"))?;
    let mut row = Row::new("S4", "redis-benchmark -P 64", System::Server);
    row.messages = n;
    row.msgs_per_sec = rate;
    row.seconds = n as f64 / rate.max(1e-9);
    row.note = "the server's ceiling".into();
    Ok(row)
}
