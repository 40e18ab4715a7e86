//! What every scenario shares: run sizes, buses from URLs, counting receivers, payloads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hubbus::{BusConfig, BusMetrics, MessageBus, Subscription};
use tokio::task::JoinHandle;

/// How big a run is: the full run, or the quick smoke run of CI.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    /// The quick mode: tiny counts, every scenario still runs and is checked for loss.
    pub quick: bool,
}

impl Size {
    /// `full` messages in a full run, `quick` in the quick one.
    pub fn pick<T>(self, full: T, quick: T) -> T {
        if self.quick { quick } else { full }
    }
}

/// A bus of its own metrics registry, from a URL.
pub async fn bus(url: &str) -> anyhow::Result<Arc<dyn MessageBus>> {
    let config = BusConfig::from_url(url)?;
    let metrics = BusMetrics::unregistered("bench")?;
    Ok(hubbus::connect_with_metrics(&config, metrics).await?)
}

/// A bus from a URL whose metrics are registered in a registry of its own, returned with it so
/// that what the node counted (see [`metric_drops`]) can be read.
pub async fn counted_bus(url: &str) -> anyhow::Result<(Arc<dyn MessageBus>, prometheus::Registry)> {
    let registry = prometheus::Registry::new();
    let config = BusConfig::from_url(url)?;
    let metrics = BusMetrics::register(&registry, "bench")?;
    Ok((
        hubbus::connect_with_metrics(&config, metrics).await?,
        registry,
    ))
}

/// Everything the `bench` metrics of `registry` counted as dropped, for every reason: the
/// subscriptions' queues and a node shedding what it cannot take.
pub fn metric_drops(registry: &prometheus::Registry) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|family| family.name() == "bench_bus_dropped_total")
        .flat_map(|family| family.get_metric())
        .map(|metric| metric.get_counter().get_value() as u64)
        .sum()
}

/// What hubbus's headers framing carries with publish number `i` from `origin` (id, origin,
/// time), for raw clients that publish the same headers: an id as unique as hubbus's
/// (time-ordered bits), formatted per publish, and the time in nanoseconds.
pub fn bus_headers(i: u64, origin: &str) -> [(&'static str, String); 3] {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let id = (now.as_millis() << 80) | u128::from(i);
    [
        ("Hubbus-Id", uuid::Uuid::from_u128(id).to_string()),
        ("Hubbus-Origin", origin.to_owned()),
        ("Hubbus-Time", now.as_nanos().to_string()),
    ]
}

/// A payload of `size` bytes.
pub fn payload(size: usize) -> Bytes {
    Bytes::from(vec![b'x'; size])
}

/// A task counting what one subscription receives (acking each delivery when asked).
pub struct Counter {
    /// Deliveries received so far.
    pub received: Arc<AtomicU64>,
    /// Deliveries received or counted as dropped so far, as of the last one received.
    accounted: Arc<AtomicU64>,
    task: JoinHandle<u64>,
    stop: tokio_stop::Stop,
}

mod tokio_stop {
    use std::sync::Arc;

    use tokio::sync::Notify;

    /// A one-shot stop signal.
    #[derive(Clone, Default)]
    pub struct Stop(Arc<Notify>);

    impl Stop {
        pub fn fire(&self) {
            self.0.notify_one();
        }
        pub async fn fired(&self) {
            self.0.notified().await;
        }
    }
}

impl Counter {
    /// Starts counting `subscription`.
    pub fn start(mut subscription: Subscription, ack: bool) -> Self {
        let received = Arc::new(AtomicU64::new(0));
        let accounted = Arc::new(AtomicU64::new(0));
        let stop = tokio_stop::Stop::default();
        let count = received.clone();
        let account = accounted.clone();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            // One stop future for the whole run, so the per-delivery loop is just `recv`.
            let counting = async {
                while let Some(delivery) = subscription.recv().await {
                    if ack {
                        let _ = delivery.ack().await;
                    }
                    let received = count.fetch_add(1, Ordering::Release) + 1;
                    // A drop happens before the newer delivery that pushed it out arrives, so
                    // once the last delivery is in, this accounts for every message.
                    account.store(received + subscription.dropped(), Ordering::Release);
                }
            };
            tokio::select! {
                biased;
                _ = stopped.fired() => {}
                _ = counting => {}
            }
            let dropped = subscription.dropped();
            subscription.close().await;
            dropped
        });
        Counter {
            received,
            accounted,
            task,
            stop,
        }
    }

    /// Deliveries so far.
    pub fn count(&self) -> u64 {
        self.received.load(Ordering::Acquire)
    }

    /// Deliveries received or dropped so far (as of the last delivery received).
    pub fn accounted(&self) -> u64 {
        self.accounted.load(Ordering::Acquire)
    }

    /// Stops counting; returns what the subscription reported dropped.
    pub async fn finish(self) -> u64 {
        self.stop.fire();
        self.task.await.unwrap_or(0)
    }
}

/// Waits until every counter reached `target`, or nothing arrived for `quiet`; returns when the
/// last one reached it (or the time it gave up).
pub async fn wait_for(counters: &[&AtomicU64], target: u64, quiet: Duration) -> Instant {
    settle(counters, quiet, |counts| {
        counts.iter().all(|&c| c >= target)
    })
    .await
}

/// Waits until the counters together reached `target`, or nothing arrived for `quiet`; returns
/// when they did (or the time it gave up).
pub async fn wait_for_sum(counters: &[&AtomicU64], target: u64, quiet: Duration) -> Instant {
    settle(counters, quiet, |counts| {
        counts.iter().sum::<u64>() >= target
    })
    .await
}

/// Polls `counters` until `done` accepts their counts or their total stood still for `quiet`.
async fn settle(
    counters: &[&AtomicU64],
    quiet: Duration,
    done: impl Fn(&[u64]) -> bool,
) -> Instant {
    let mut last_total = 0;
    let mut last_change = Instant::now();
    loop {
        let counts: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Acquire)).collect();
        if done(&counts) {
            return Instant::now();
        }
        let total: u64 = counts.iter().sum();
        if total != last_total {
            last_total = total;
            last_change = Instant::now();
        } else if last_change.elapsed() > quiet {
            return Instant::now();
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

/// Runs `publishers` tasks that together call `publish` `n` times (task `t` takes the calls
/// `t, t + publishers, ...`); returns the failures.
pub async fn publish_concurrently<F, Fut>(n: u64, publishers: u64, publish: F) -> u64
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..publishers {
        let publish = publish.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while i < n {
                if !publish(i).await {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                i += publishers;
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    errors.load(Ordering::Relaxed)
}

/// A fresh short name for the streams and subjects of one case.
pub fn unique(tag: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{tag}{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Deletes a JetStream stream a case made on the benchmark's nats-server (best effort: the
/// server is stopped at the end of the run anyway).
pub async fn delete_stream(port: u16, name: &str) {
    if let Ok(client) = async_nats::connect(format!("nats://127.0.0.1:{port}")).await {
        let _ = async_nats::jetstream::new(client).delete_stream(name).await;
    }
}

/// The hubbus side of a publish-throughput case (S2, S4): a publishing bus and a subscribing
/// bus made from `url(node id)`, `n` publishes of `bytes` bytes to `channel` from `publishers`
/// concurrent tasks, and a subscriber counting them. The row has the publish rate, the failed
/// publishes, and what the subscribing node lost or counted as dropped; the caller names the raw
/// equivalent.
pub async fn hubbus_publish_case(
    scenario: &'static str,
    case: &str,
    url: impl Fn(&str) -> String,
    channel: &str,
    (n, publishers, bytes): (u64, u64, usize),
) -> anyhow::Result<crate::report::Row> {
    use crate::report::{Row, System, peak_rss_kib, reset_peak_rss};
    let publisher = bus(&url(&unique("pub"))).await?;
    let (subscriber, registry) = counted_bus(&url(&unique("sub"))).await?;
    let counter = Counter::start(subscriber.subscribe(channel).await?, false);
    let body = payload(bytes);
    reset_peak_rss();
    let start = Instant::now();
    let bus = publisher.clone();
    let channel: Arc<str> = channel.into();
    let errors = publish_concurrently(n, publishers, move |_| {
        let (bus, body, channel) = (bus.clone(), body.clone(), channel.clone());
        async move { bus.publish(&channel, body).await.is_ok() }
    })
    .await;
    let seconds = start.elapsed().as_secs_f64();
    wait_for(&[&counter.received], n - errors, Duration::from_secs(2)).await;
    let rss = peak_rss_kib();
    let delivered = counter.count();
    counter.finish().await;
    // The node's count: its subscription's queue, and what its link or intake dropped before.
    let dropped = metric_drops(&registry);
    publisher.close().await;
    subscriber.close().await;
    let mut row = Row::new(scenario, case, System::Hubbus).timed(n, seconds);
    row.errors = errors;
    row.dropped = dropped;
    row.lost = (n - errors).saturating_sub(delivered + dropped);
    row.peak_rss_kib = rss;
    Ok(row)
}
