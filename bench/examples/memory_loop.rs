//! One side of S1 alone, for profilers: `n` publishes of 16 B on the memory bus (`hubbus`), on
//! `tokio::sync::broadcast` (`raw`), or on broadcast of messages stamped with an id and a
//! publish time in one allocation each (`stamped`: what every hubbus message carries), to
//! `subscribers` reading tasks, with S1's flow control (the publisher never runs more than half
//! a 1 024 queue ahead of the slowest subscriber), on a runtime with two workers, and the rate:
//!
//! ```text
//! cargo build --release -p hubbus-bench --example memory_loop
//! perf record -g target/release/examples/memory_loop hubbus 1 3000000
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use hubbus::{BusOptions, MemoryBroker, MessageBus};

const QUEUE: usize = 1024;
const WINDOW: u64 = QUEUE as u64 / 2;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [side, subscribers, n] = args.as_slice() else {
        anyhow::bail!("usage: memory_loop <hubbus|raw|stamped> <subscribers> <n>");
    };
    let (subscribers, n): (usize, u64) = (subscribers.parse()?, n.parse()?);
    let side = side.clone();
    let rate = tokio::spawn(async move {
        match side.as_str() {
            "hubbus" => hubbus(subscribers, n).await,
            "raw" => raw(subscribers, n).await,
            "stamped" => stamped(subscribers, n).await,
            other => anyhow::bail!("unknown side {other}"),
        }
    })
    .await??;
    println!("{rate:.0} msgs/s");
    Ok(())
}

async fn wait_window(published: u64, counters: &[Arc<AtomicU64>]) {
    while counters
        .iter()
        .map(|c| published.saturating_sub(c.load(Ordering::Acquire)))
        .max()
        .unwrap_or(0)
        >= WINDOW
    {
        tokio::task::yield_now().await;
    }
}

async fn hubbus(subscribers: usize, n: u64) -> anyhow::Result<f64> {
    let bus = MemoryBroker::new().connect(BusOptions {
        subscriber_queue: QUEUE,
        ..Default::default()
    });
    let mut counters = Vec::new();
    for _ in 0..subscribers {
        let mut subscription = bus.subscribe("loop").await?;
        let count = Arc::new(AtomicU64::new(0));
        counters.push(count.clone());
        tokio::spawn(async move {
            while subscription.recv().await.is_some() {
                count.fetch_add(1, Ordering::Release);
            }
        });
    }
    let body = Bytes::from(vec![b'x'; 16]);
    let start = Instant::now();
    for i in 0..n {
        if i % 32 == 0 {
            wait_window(i, &counters).await;
        }
        bus.publish("loop", body.clone()).await?;
    }
    wait_window(n + WINDOW - 1, &counters).await;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    bus.close().await;
    Ok(rate)
}

async fn raw(subscribers: usize, n: u64) -> anyhow::Result<f64> {
    let body = Bytes::from(vec![b'x'; 16]);
    broadcast(subscribers, n, || body.clone()).await
}

/// What any bus must do per message to keep hubbus's message promise, over broadcast: an id and
/// a publish time from one clock reading, and one shared allocation per message.
#[derive(Debug)]
#[allow(dead_code)]
struct Stamped {
    id: hubbus::MessageId,
    published_at_nanos: u64,
    payload: Bytes,
}

async fn stamped(subscribers: usize, n: u64) -> anyhow::Result<f64> {
    let ids = hubbus::IdGenerator::from_entropy();
    let body = Bytes::from(vec![b'x'; 16]);
    broadcast(subscribers, n, || {
        let now = ids.now_nanos();
        Arc::new(Stamped {
            id: ids.next_id_at(now),
            published_at_nanos: now,
            payload: body.clone(),
        })
    })
    .await
}

/// One broadcast run: each message is what `make` returns.
async fn broadcast<T: Clone + Send + 'static>(
    subscribers: usize,
    n: u64,
    mut make: impl FnMut() -> T,
) -> anyhow::Result<f64> {
    let (sender, _) = tokio::sync::broadcast::channel::<T>(QUEUE);
    let mut counters = Vec::new();
    for _ in 0..subscribers {
        let mut receiver = sender.subscribe();
        let count = Arc::new(AtomicU64::new(0));
        counters.push(count.clone());
        tokio::spawn(async move {
            while receiver.recv().await.is_ok() {
                count.fetch_add(1, Ordering::Release);
            }
        });
    }
    let start = Instant::now();
    for i in 0..n {
        if i % 32 == 0 {
            wait_window(i, &counters).await;
        }
        if sender.send(make()).is_err() {
            anyhow::bail!("no receiver");
        }
    }
    wait_window(n + WINDOW - 1, &counters).await;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}
