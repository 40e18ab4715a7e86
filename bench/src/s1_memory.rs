//! S1: the memory bus against `tokio::sync::broadcast`, one publisher, 1 / 4 / 16 subscribers,
//! 16 B and 1 KiB, lossless.
//!
//! Both sides get the same queue (1 024 per subscriber) and the same flow control: the publisher
//! never runs more than half a queue ahead of the slowest subscriber (it yields until they catch
//! up), so nothing is dropped and the rate is what publish plus delivery sustain together.
//!
//! The `raw=stamped` cases measure the floor of the bus's message promise: a broadcast of
//! messages that carry what every hubbus message carries (a unique id and a publish time, from
//! one clock reading, with hubbus's own id generator) in one shared allocation per message, as
//! any bus whose messages keep that promise must make them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use hubbus::{BusOptions, MemoryBroker, MessageBus};
use tokio::sync::broadcast;

use crate::common::{Counter, Size, payload};
use crate::report::{Row, System, peak_rss_kib, reset_peak_rss};

const QUEUE: usize = 1024;
const WINDOW: u64 = QUEUE as u64 / 2;
const STAMPED: &str = "tokio broadcast of id + time + payload, one allocation";

/// Runs S1.
pub async fn run(size: Size) -> anyhow::Result<Vec<Row>> {
    let n = size.pick(1_000_000, 20_000);
    let mut rows = Vec::new();
    for subscribers in [1, 4, 16] {
        for bytes in [16, 1024] {
            let case = format!("subs={subscribers} size={bytes}B");
            // The publisher runs on a runtime worker, as a hub's would, not on the main thread.
            let c = case.clone();
            rows.push(tokio::spawn(async move { hubbus(&c, n, subscribers, bytes).await }).await??);
            rows.push(tokio::spawn(async move { raw(&case, n, subscribers, bytes).await }).await?);
        }
        let case = format!("subs={subscribers} size=16B raw=stamped");
        let c = case.clone();
        let mut row = tokio::spawn(async move { hubbus(&c, n, subscribers, 16).await }).await??;
        row.raw = STAMPED.into();
        rows.push(row);
        rows.push(tokio::spawn(async move { stamped(&case, n, subscribers, 16).await }).await?);
    }
    Ok(rows)
}

/// Waits until the slowest subscriber is less than a window behind `published`, or made no
/// progress for 5 s (something was lost; the row will show it).
async fn wait_window(published: u64, counters: &[Arc<AtomicU64>]) {
    let mut seen = u64::MAX;
    let mut since = Instant::now();
    let mut spins = 0u32;
    loop {
        let slowest = counters
            .iter()
            .map(|c| c.load(Ordering::Acquire))
            .min()
            .unwrap_or(published);
        if published.saturating_sub(slowest) < WINDOW {
            return;
        }
        spins = spins.wrapping_add(1);
        if slowest != seen {
            seen = slowest;
            spins = 0;
        } else if spins == 1 {
            since = Instant::now();
        } else if spins.is_multiple_of(4096) && since.elapsed() > std::time::Duration::from_secs(5)
        {
            return;
        }
        tokio::task::yield_now().await;
    }
}

async fn hubbus(case: &str, n: u64, subscribers: usize, bytes: usize) -> anyhow::Result<Row> {
    let bus = MemoryBroker::new().connect(BusOptions {
        subscriber_queue: QUEUE,
        ..Default::default()
    });
    let mut counters = Vec::new();
    for _ in 0..subscribers {
        counters.push(Counter::start(bus.subscribe("bench").await?, false));
    }
    let received: Vec<Arc<AtomicU64>> = counters.iter().map(|c| c.received.clone()).collect();
    let body = payload(bytes);
    reset_peak_rss();
    let start = Instant::now();
    let mut errors = 0;
    for i in 0..n {
        if i % 32 == 0 {
            wait_window(i, &received).await;
        }
        if bus.publish("bench", body.clone()).await.is_err() {
            errors += 1;
        }
    }
    wait_window(n + WINDOW - 1, &received).await;
    let seconds = start.elapsed().as_secs_f64();
    let rss = peak_rss_kib();
    let mut dropped = 0;
    let mut delivered = 0;
    for counter in counters {
        delivered += counter.count();
        dropped += counter.finish().await;
    }
    bus.close().await;
    let mut row = Row::new("S1", case, System::Hubbus).timed(n, seconds);
    row.raw = "tokio broadcast".into();
    row.errors = errors;
    row.dropped = dropped;
    row.lost = (n * subscribers as u64).saturating_sub(delivered + dropped);
    row.peak_rss_kib = rss;
    Ok(row)
}

async fn raw(case: &str, n: u64, subscribers: usize, bytes: usize) -> Row {
    let body = payload(bytes);
    broadcast_row(case, n, subscribers, || body.clone()).await
}

/// What every hubbus message carries beside its payload, in one allocation shared by the
/// receivers.
#[derive(Debug)]
struct Stamped {
    _id: hubbus::MessageId,
    _published_at_nanos: u64,
    _payload: bytes::Bytes,
}

async fn stamped(case: &str, n: u64, subscribers: usize, bytes: usize) -> Row {
    let ids = hubbus::IdGenerator::from_entropy();
    let body = payload(bytes);
    let mut row = broadcast_row(case, n, subscribers, || {
        let now = ids.now_nanos();
        Arc::new(Stamped {
            _id: ids.next_id_at(now),
            _published_at_nanos: now,
            _payload: body.clone(),
        })
    })
    .await;
    row.raw = STAMPED.into();
    row
}

/// One broadcast run: each message is what `make` returns.
async fn broadcast_row<T: Clone + Send + 'static>(
    case: &str,
    n: u64,
    subscribers: usize,
    mut make: impl FnMut() -> T,
) -> Row {
    let (sender, _) = broadcast::channel::<T>(QUEUE);
    let mut received = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..subscribers {
        let mut receiver = sender.subscribe();
        let count = Arc::new(AtomicU64::new(0));
        received.push(count.clone());
        tasks.push(tokio::spawn(async move {
            let mut lagged = 0;
            loop {
                match receiver.recv().await {
                    Ok(_) => {
                        count.fetch_add(1, Ordering::Release);
                    }
                    Err(broadcast::error::RecvError::Lagged(k)) => lagged += k,
                    Err(broadcast::error::RecvError::Closed) => return lagged,
                }
            }
        }));
    }
    reset_peak_rss();
    let start = Instant::now();
    let mut errors = 0;
    for i in 0..n {
        if i % 32 == 0 {
            wait_window(i, &received).await;
        }
        if sender.send(make()).is_err() {
            errors += 1;
        }
    }
    wait_window(n + WINDOW - 1, &received).await;
    let seconds = start.elapsed().as_secs_f64();
    let rss = peak_rss_kib();
    drop(sender);
    let mut dropped = 0;
    for task in tasks {
        dropped += task.await.unwrap_or(0);
    }
    let delivered: u64 = received.iter().map(|c| c.load(Ordering::Acquire)).sum();
    let mut row = Row::new("S1", case, System::Raw).timed(n, seconds);
    row.errors = errors;
    row.dropped = dropped;
    row.lost = (n * subscribers as u64).saturating_sub(delivered + dropped);
    row.peak_rss_kib = rss;
    row
}
