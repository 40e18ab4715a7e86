//! S6: overload. A subscriber that can take 10 000 messages a second is offered twice that for
//! 60 s (3 s in the quick run), then half of it for 5 s (1 s). On each at-most-once backend the
//! bus must keep memory bounded (the subscriber's queue holds at most `subscriber_queue`
//! deliveries), count every drop (in the subscription's `dropped()` and in
//! `<ns>_bus_dropped_total`), lose nothing uncounted, and deliver everything once the load is
//! back under capacity. JetStream is not run here: it never drops; it holds back instead (a
//! publish waits for the PubAck, the node pulls only what `max_ack_pending` allows).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hubbus::{BusConfig, MessageBus};

use crate::common::{Size, metric_drops, payload, unique};
use crate::report::{Row, System, peak_rss_kib, reset_peak_rss};

/// What the slow subscriber takes per second.
const CAPACITY: f64 = 10_000.0;
const BYTES: usize = 128;

/// Runs S6; `redis` and `nats` are the servers' ports.
pub async fn run(size: Size, redis: u16, nats: u16) -> anyhow::Result<Vec<Row>> {
    let overload = size.pick(Duration::from_secs(60), Duration::from_secs(3));
    let after = size.pick(Duration::from_secs(5), Duration::from_secs(1));
    let mut rows = Vec::new();
    for backend in ["memory", "redis", "nats"] {
        let url = |node: String| match backend {
            "memory" => format!("memory://?node_id={node}"),
            "redis" => format!("redis://127.0.0.1:{redis}?node_id={node}"),
            _ => format!("nats://127.0.0.1:{nats}?node_id={node}&subject_prefix=s6"),
        };
        rows.extend(
            one(
                backend,
                &url(unique("s6p")),
                &url(unique("s6s")),
                overload,
                after,
            )
            .await?,
        );
    }
    Ok(rows)
}

struct Slow {
    received: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// A subscriber that takes at most `CAPACITY` deliveries a second.
fn slow(mut subscription: hubbus::Subscription) -> Slow {
    let received = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let (r, d) = (received.clone(), dropped.clone());
    let task = tokio::spawn(async move {
        let start = Instant::now();
        let mut taken = 0u64;
        while let Some(_delivery) = subscription.recv().await {
            taken += 1;
            r.store(taken, Ordering::Release);
            d.store(subscription.dropped(), Ordering::Release);
            let due = start + Duration::from_secs_f64(taken as f64 / CAPACITY);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
            // Drops counted while this subscriber slept show up on its next turn too.
            d.store(subscription.dropped(), Ordering::Release);
        }
        d.store(subscription.dropped(), Ordering::Release);
    });
    Slow {
        received,
        dropped,
        task,
    }
}

/// Publishes at `rate` for `duration`, up to 256 publishes in flight (one sequential publisher
/// cannot offer a network backend twice a subscriber's capacity); returns (accepted, failed).
async fn offer(bus: &Arc<dyn MessageBus>, rate: f64, duration: Duration) -> (u64, u64) {
    let body = payload(BYTES);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(256));
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut due_count = 0u64;
    while start.elapsed() < duration {
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        while due_count < due {
            let permit = in_flight
                .clone()
                .acquire_owned()
                .await
                .expect("never closed");
            let (bus, body, sent, failed) =
                (bus.clone(), body.clone(), sent.clone(), failed.clone());
            tokio::spawn(async move {
                match bus.publish("overload", body).await {
                    Ok(_) => sent.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
                drop(permit);
            });
            due_count += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Every publish has finished once all permits are back.
    let _all = in_flight.acquire_many(256).await.expect("never closed");
    (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
}

/// Waits until `received + dropped` reached `target` or stopped moving for 2 s.
async fn settle(slow: &Slow, target: u64) {
    let mut last = 0;
    let mut since = Instant::now();
    loop {
        let seen = slow.received.load(Ordering::Acquire) + slow.dropped.load(Ordering::Acquire);
        if seen >= target {
            return;
        }
        if seen != last {
            last = seen;
            since = Instant::now();
        } else if since.elapsed() > Duration::from_secs(2) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn one(
    backend: &str,
    publisher_url: &str,
    subscriber_url: &str,
    overload: Duration,
    after: Duration,
) -> anyhow::Result<Vec<Row>> {
    let mut config = BusConfig::from_url(publisher_url)?;
    config.namespace = "bench".into();
    let memory_broker;
    let (publisher, subscriber, registry): (Arc<dyn MessageBus>, Arc<dyn MessageBus>, _) =
        if backend == "memory" {
            // Two nodes of one in-process broker.
            let registry = prometheus::Registry::new();
            let metrics = hubbus::BusMetrics::register(&registry, "bench")?;
            memory_broker = hubbus::MemoryBroker::new();
            let options = |metrics| hubbus::BusOptions {
                metrics,
                ..Default::default()
            };
            let unregistered = hubbus::BusMetrics::unregistered("bench")?;
            (
                Arc::new(memory_broker.connect(options(unregistered))),
                Arc::new(memory_broker.connect(options(metrics))),
                registry,
            )
        } else {
            let registry = prometheus::Registry::new();
            let mut sub_config = BusConfig::from_url(subscriber_url)?;
            sub_config.namespace = "bench".into();
            let publisher = crate::common::bus(publisher_url).await?;
            let subscriber = hubbus::connect(&sub_config, &registry).await?;
            (publisher, subscriber, registry)
        };
    let slow = slow(subscriber.subscribe("overload").await?);
    reset_peak_rss();
    let baseline = peak_rss_kib();
    let start = Instant::now();
    let (sent, failed) = offer(&publisher, 2.0 * CAPACITY, overload).await;
    let seconds = start.elapsed().as_secs_f64();
    settle(&slow, sent).await;
    let rss = peak_rss_kib();
    let received1 = slow.received.load(Ordering::Acquire);
    let dropped1 = slow.dropped.load(Ordering::Acquire);
    let counted1 = metric_drops(&registry);

    let start = Instant::now();
    let (sent2, failed2) = offer(&publisher, 0.5 * CAPACITY, after).await;
    let seconds2 = start.elapsed().as_secs_f64();
    settle(&slow, sent + sent2).await;
    let received2 = slow.received.load(Ordering::Acquire) - received1;
    let dropped2 = slow.dropped.load(Ordering::Acquire) - dropped1;

    publisher.close().await;
    subscriber.close().await;
    let _ = slow.task.await;

    let mut overloaded = Row::new(
        "S6",
        format!("{backend} offered 2x for {overload:?}"),
        System::Hubbus,
    )
    .timed(sent, seconds);
    overloaded.errors = failed;
    overloaded.dropped = dropped1;
    overloaded.lost = sent.saturating_sub(received1 + dropped1);
    overloaded.peak_rss_kib = rss;
    overloaded.note = format!(
        "delivered {received1}, dropped {dropped1} (metric: {counted1}), RSS grew {:.1} MiB",
        rss.saturating_sub(baseline) as f64 / 1024.0
    );
    if counted1 < dropped1 {
        overloaded.note.push_str("; METRIC UNDERCOUNTS DROPS");
        overloaded.lost += dropped1 - counted1;
    }
    let mut recovered = Row::new(
        "S6",
        format!("{backend} then 0.5x for {after:?}"),
        System::Hubbus,
    )
    .timed(received2, seconds2);
    recovered.errors = failed2;
    recovered.dropped = dropped2;
    recovered.lost = sent2.saturating_sub(received2 + dropped2);
    recovered.note = format!("offered {sent2}, delivered {received2}");
    Ok(vec![overloaded, recovered])
}
