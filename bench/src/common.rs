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

/// A payload of `size` bytes.
pub fn payload(size: usize) -> Bytes {
    Bytes::from(vec![b'x'; size])
}

/// A task counting what one subscription receives (acking each delivery when asked).
pub struct Counter {
    /// Deliveries received so far.
    pub received: Arc<AtomicU64>,
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
        let stop = tokio_stop::Stop::default();
        let count = received.clone();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            // One stop future for the whole run, so the per-delivery loop is just `recv`.
            let counting = async {
                while let Some(delivery) = subscription.recv().await {
                    if ack {
                        let _ = delivery.ack().await;
                    }
                    count.fetch_add(1, Ordering::Release);
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
            task,
            stop,
        }
    }

    /// Deliveries so far.
    pub fn count(&self) -> u64 {
        self.received.load(Ordering::Acquire)
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
    let mut last_total = 0;
    let mut last_change = Instant::now();
    loop {
        let total: u64 = counters.iter().map(|c| c.load(Ordering::Acquire)).sum();
        if counters.iter().all(|c| c.load(Ordering::Acquire) >= target) {
            return Instant::now();
        }
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
