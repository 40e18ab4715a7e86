//! S5: publish-to-deliver latency at a fixed offered rate, hubbus against the raw client, on each
//! backend.
//!
//! The rate is half of the lower of the two sides' sequential peak, measured first (at most
//! 100 000 a second). Message `i`
//! is due at `start + i / rate`; its latency is counted from that due time, not from when the
//! publisher got round to sending it, so a publisher held up by a slow publish cannot hide the
//! delay of the messages queued behind it (coordinated omission). Latencies go into an HDR
//! histogram (1 µs to 60 s, 3 significant digits).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use hdrhistogram::Histogram;
use hubbus::{BusOptions, MemoryBroker, MessageBus};

use crate::common::{Size, bus, delete_stream, unique};
use crate::report::{Latency, Row, System, peak_rss_kib, reset_peak_rss};

const BYTES: usize = 128;
const MAX_RATE: f64 = 100_000.0;

type Publish = Arc<dyn Fn(Bytes) -> BoxFuture<'static, bool> + Send + Sync>;
type Deliveries = BoxStream<'static, Bytes>;

/// One side of a case: how to publish, what arrives, and what to keep alive meanwhile.
struct Side {
    publish: Publish,
    deliveries: Deliveries,
    /// Deliveries the receiving side dropped and counted (a full queue), as of the last one
    /// received.
    dropped: Arc<AtomicU64>,
    _keep: Vec<Box<dyn std::any::Any + Send>>,
}

/// Runs S5; `redis` and `nats` are the servers' ports.
pub async fn run(size: Size, redis: u16, nats: u16) -> anyhow::Result<Vec<Row>> {
    let probe = size.pick(Duration::from_secs(2), Duration::from_millis(300));
    let measure = size.pick(Duration::from_secs(10), Duration::from_millis(500));
    let mut rows = Vec::new();
    for backend in ["memory", "redis", "nats", "jetstream"] {
        let peak_hubbus = peak(side(backend, true, redis, nats).await?, probe).await;
        let peak_raw = peak(side(backend, false, redis, nats).await?, probe).await;
        // Half the lower peak, and at most 100 000/s: above that the receiver's own
        // bookkeeping (a clock reading and a histogram entry per message) is what saturates.
        let rate = (0.5 * peak_hubbus.min(peak_raw)).min(MAX_RATE);
        let case = format!("{backend} rate={rate:.0}/s");
        for hubbus in [true, false] {
            let side = side(backend, hubbus, redis, nats).await?;
            let mut row = paced(side, rate, measure).await;
            row.case = case.clone();
            row.system = if hubbus { System::Hubbus } else { System::Raw };
            row.raw = raw_name(backend).into();
            row.note = format!("sequential peak: hubbus {peak_hubbus:.0}/s, raw {peak_raw:.0}/s");
            rows.push(row);
        }
    }
    // The ratio of a latency case is the ratio of p99s (raw / hubbus: above 1 is better), not of
    // rates, which are the same by construction.
    let mut i = 0;
    while i + 1 < rows.len() {
        if let (Some(h), Some(r)) = (rows[i].latency, rows[i + 1].latency) {
            rows[i].note = format!(
                "{}; p99 hubbus / raw = {:.2}",
                rows[i].note,
                h.p99_us / r.p99_us.max(1e-9)
            );
        }
        i += 2;
    }
    Ok(rows)
}

fn raw_name(backend: &str) -> &'static str {
    match backend {
        "memory" => "tokio broadcast",
        "redis" => "redis-rs PUBLISH + async pubsub",
        "nats" => "async-nats publish + flush",
        _ => "js publish + PubAck, pull consumer + ack",
    }
}

/// The sequential peak: publishes back to back for `probe`, returns published per second.
async fn peak(side: Side, probe: Duration) -> f64 {
    let Side {
        publish,
        mut deliveries,
        _keep,
        ..
    } = side;
    let delivered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = delivered.clone();
    let draining = tokio::spawn(async move {
        while deliveries.next().await.is_some() {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < probe {
        // Distinct stamps: JetStream de-duplicates by the id derived from them.
        if publish(stamp(sent)).await {
            sent += 1;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    // Give the last deliveries a moment, then take the lower of what was published and what
    // arrived: a publish that never waits (memory) is limited by its receiver instead.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let arrived = delivered.load(std::sync::atomic::Ordering::Relaxed);
    drop(_keep);
    draining.abort();
    sent.min(arrived) as f64 / seconds
}

fn stamp(due_nanos: u64) -> Bytes {
    let mut body = BytesMut::with_capacity(BYTES);
    body.put_u64_le(due_nanos);
    body.resize(BYTES, b'x');
    body.freeze()
}

async fn paced(side: Side, rate: f64, measure: Duration) -> Row {
    let Side {
        publish,
        mut deliveries,
        dropped,
        _keep,
    } = side;
    let n = (rate * measure.as_secs_f64()).max(1.0) as u64;
    let counted = dropped.clone();
    let start = Instant::now() + Duration::from_millis(20);
    let receiving = tokio::spawn(async move {
        let mut histogram =
            Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid bounds");
        let mut received = 0u64;
        while received + counted.load(Ordering::Acquire) < n {
            let next = tokio::time::timeout(Duration::from_secs(5), deliveries.next()).await;
            let Ok(Some(body)) = next else { break };
            let due = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
            let now = start.elapsed().as_nanos() as u64;
            histogram.saturating_record(now.saturating_sub(due).max(1_000));
            received += 1;
        }
        (histogram, received)
    });
    reset_peak_rss();
    let interval = 1e9 / rate;
    let mut errors = 0;
    for i in 0..n {
        let due = Duration::from_nanos((i as f64 * interval) as u64);
        let due_at = start + due;
        // Sleep while the due time is far; spin (yielding) through the last millisecond, as the
        // timer wheel's granularity is a millisecond.
        if due_at > Instant::now() + Duration::from_millis(1) {
            tokio::time::sleep_until((due_at - Duration::from_millis(1)).into()).await;
        }
        while Instant::now() < due_at {
            tokio::task::yield_now().await;
        }
        if !publish(stamp(due.as_nanos() as u64)).await {
            errors += 1;
        }
    }
    let (histogram, received) = receiving.await.expect("the receiver does not panic");
    let rss = peak_rss_kib();
    drop(_keep);
    let mut row = Row::new("S5", "", System::Hubbus).timed(n, measure.as_secs_f64());
    row.msgs_per_sec = rate;
    row.latency = Some(Latency::of(&histogram));
    row.errors = errors;
    row.dropped = dropped.load(Ordering::Acquire);
    row.lost = (n - errors).saturating_sub(received + row.dropped);
    row.peak_rss_kib = rss;
    row
}

fn hubbus_side(
    publisher: Arc<dyn MessageBus>,
    subscriber: Arc<dyn MessageBus>,
    sub: hubbus::Subscription,
    ack: bool,
) -> Side {
    let bus = publisher.clone();
    let publish: Publish = Arc::new(move |body| {
        let bus = bus.clone();
        async move { bus.publish("latency", body).await.is_ok() }.boxed()
    });
    let dropped = Arc::new(AtomicU64::new(0));
    let counted = dropped.clone();
    let deliveries = futures_util::stream::unfold(sub, move |mut sub| {
        let counted = counted.clone();
        async move {
            let delivery = sub.recv().await?;
            counted.store(sub.dropped(), Ordering::Release);
            if ack {
                let _ = delivery.ack().await;
            }
            Some((delivery.payload().clone(), sub))
        }
    })
    .boxed();
    Side {
        publish,
        deliveries,
        dropped,
        _keep: vec![Box::new(publisher), Box::new(subscriber)],
    }
}

async fn side(backend: &str, hubbus: bool, redis: u16, nats: u16) -> anyhow::Result<Side> {
    Ok(match (backend, hubbus) {
        ("memory", true) => {
            let broker = MemoryBroker::new();
            let publisher: Arc<dyn MessageBus> = Arc::new(broker.connect(BusOptions::default()));
            let subscriber: Arc<dyn MessageBus> = Arc::new(broker.connect(BusOptions::default()));
            let sub = subscriber.subscribe("latency").await?;
            hubbus_side(publisher, subscriber, sub, false)
        }
        ("memory", false) => {
            let (sender, receiver) = tokio::sync::broadcast::channel::<Bytes>(1024);
            let dropped = Arc::new(AtomicU64::new(0));
            let counted = dropped.clone();
            let deliveries = futures_util::stream::unfold(receiver, move |mut receiver| {
                let counted = counted.clone();
                async move {
                    loop {
                        match receiver.recv().await {
                            Ok(body) => return Some((body, receiver)),
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(k)) => {
                                counted.fetch_add(k, Ordering::Release);
                            }
                            Err(_) => return None,
                        }
                    }
                }
            })
            .boxed();
            let publish: Publish = Arc::new(move |body| {
                let ok = sender.send(body).is_ok();
                async move { ok }.boxed()
            });
            Side {
                dropped: Arc::default(),
                publish,
                deliveries,
                _keep: Vec::new(),
            }
        }
        ("redis", true) => {
            let url = |node: String| format!("redis://127.0.0.1:{redis}?node_id={node}");
            let publisher = bus(&url(unique("lp"))).await?;
            let subscriber = bus(&url(unique("ls"))).await?;
            let sub = subscriber.subscribe("latency").await?;
            hubbus_side(publisher, subscriber, sub, false)
        }
        ("redis", false) => {
            let client = redis::Client::open(format!("redis://127.0.0.1:{redis}"))?;
            let connection = client.get_multiplexed_async_connection().await?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe("rawlatency").await?;
            let deliveries = pubsub
                .into_on_message()
                .map(|message| Bytes::copy_from_slice(message.get_payload_bytes()))
                .boxed();
            let publish: Publish = Arc::new(move |body| {
                let mut connection = connection.clone();
                async move {
                    redis::cmd("PUBLISH")
                        .arg("rawlatency")
                        .arg(body.as_ref())
                        .query_async::<i64>(&mut connection)
                        .await
                        .is_ok()
                }
                .boxed()
            });
            Side {
                dropped: Arc::default(),
                publish,
                deliveries,
                _keep: Vec::new(),
            }
        }
        ("nats", true) => {
            let prefix = unique("s5h");
            // `flush`, the raw side's work (publish, then flush the socket): the default
            // `server` mode waits for a round trip per publish as well, which S2 compares with
            // a raw publish and round trip. Here it would only halve the sequential publisher's
            // headroom over the offered rate, not measure what the bus adds.
            let url = |node: String| {
                format!(
                    "nats://127.0.0.1:{nats}?node_id={node}&subject_prefix={prefix}\
                     &publish_mode=flush"
                )
            };
            let publisher = bus(&url(unique("lp"))).await?;
            let subscriber = bus(&url(unique("ls"))).await?;
            let sub = subscriber.subscribe("latency").await?;
            hubbus_side(publisher, subscriber, sub, false)
        }
        ("nats", false) => {
            let address = format!("nats://127.0.0.1:{nats}");
            let client = async_nats::connect(&address).await?;
            let receiver = async_nats::connect(&address).await?;
            let subject = format!("{}.latency", unique("s5r"));
            let subscription = receiver.subscribe(subject.clone()).await?;
            receiver.flush().await?;
            let deliveries = subscription.map(|message| message.payload).boxed();
            let publish: Publish = Arc::new(move |body| {
                let client = client.clone();
                let subject = subject.clone();
                async move {
                    client.publish(subject, body).await.is_ok() && client.flush().await.is_ok()
                }
                .boxed()
            });
            Side {
                dropped: Arc::default(),
                publish,
                deliveries,
                _keep: vec![Box::new(receiver)],
            }
        }
        (_, true) => {
            let stream = unique("S5H").to_uppercase();
            let prefix = unique("s5h");
            let url = |node: &str| {
                format!(
                    "nats://127.0.0.1:{nats}?jetstream=true&node_id={node}&stream={stream}\
                     &stream_subject_prefix={prefix}&subject_prefix={prefix}c"
                )
            };
            let publisher = bus(&url("latency-pub")).await?;
            let subscriber = bus(&url("latency-sub")).await?;
            let sub = subscriber.subscribe("latency").await?;
            let mut side = hubbus_side(publisher, subscriber, sub, true);
            side._keep.push(Box::new(DeleteStream {
                port: nats,
                name: stream,
            }));
            side
        }
        (_, false) => {
            let address = format!("nats://127.0.0.1:{nats}");
            let js = jetstream::new(async_nats::connect(&address).await?);
            let name = unique("S5R").to_uppercase();
            let prefix = unique("s5r");
            let created = js
                .create_stream(stream::Config {
                    name: name.clone(),
                    subjects: vec![format!("{prefix}.>")],
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await?;
            let consumer = created
                .create_consumer(consumer::pull::Config {
                    durable_name: Some("latency".into()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    max_ack_pending: 1000,
                    ..Default::default()
                })
                .await?;
            let messages = consumer.messages().await?;
            let deliveries = messages
                .filter_map(|message| async move {
                    let message = message.ok()?;
                    let _ = message.ack().await;
                    Some(message.payload.clone())
                })
                .boxed();
            let subject = format!("{prefix}.latency");
            let publisher = js.clone();
            let publish: Publish = Arc::new(move |body| {
                let js = publisher.clone();
                let subject = subject.clone();
                async move {
                    let id = format!(
                        "raw-{}",
                        u64::from_le_bytes(body[..8].try_into().expect("8 bytes"))
                    );
                    let message = jetstream::message::PublishMessage::build()
                        .payload(body)
                        .message_id(id);
                    match js.send_publish(subject, message).await {
                        Ok(ack) => ack.await.is_ok(),
                        Err(_) => false,
                    }
                }
                .boxed()
            });
            Side {
                dropped: Arc::default(),
                publish,
                deliveries,
                _keep: vec![Box::new(DeleteStream { port: nats, name })],
            }
        }
    })
}

/// Deletes a JetStream stream when the case is over.
struct DeleteStream {
    port: u16,
    name: String,
}

impl Drop for DeleteStream {
    fn drop(&mut self) {
        let (port, name) = (self.port, std::mem::take(&mut self.name));
        tokio::spawn(async move { delete_stream(port, &name).await });
    }
}
