//! S3: JetStream against raw async-nats JetStream at 1 / 10 / 100 / 500 publishes in flight,
//! publish only (each publish waits for its PubAck) and end to end (a durable pull consumer on a
//! second connection receives and acks every message; the time runs until the last ack).
//!
//! Each case gets a stream of its own (file storage on both sides), deleted afterwards. The raw
//! consumer takes the settings hubbus uses by default: explicit acks, `max_ack_pending` 1 000.
//! The raw publisher sends a `Nats-Msg-Id` as hubbus does; at 100 and 500 in flight the cases
//! run once more with `raw=headers`, where it also sends the three headers of hubbus's default
//! framing (id, origin, time), which separates what the headers cost from what hubbus adds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use hubbus::MessageBus;

use crate::common::{
    Counter, Size, bus, bus_headers, delete_stream, payload, publish_concurrently, unique, wait_for,
};
use crate::report::{Row, System, peak_rss_kib, reset_peak_rss};

const BYTES: usize = 128;

/// Runs S3 against the NATS server on `port`.
pub async fn run(size: Size, port: u16) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for end_to_end in [false, true] {
        for (in_flight, raw_headers) in [
            (1, false),
            (10, false),
            (100, false),
            (100, true),
            (500, false),
            (500, true),
        ] {
            let n = size.pick(if in_flight == 1 { 10_000 } else { 40_000 }, 1_000);
            let what = if end_to_end { "end-to-end" } else { "publish" };
            let case = match raw_headers {
                false => format!("{what} in_flight={in_flight}"),
                true => format!("{what} in_flight={in_flight} raw=headers"),
            };
            let mut row = hubbus(&case, port, n, in_flight, end_to_end).await?;
            if raw_headers {
                row.raw = format!("{} with the 3 headers", row.raw);
            }
            rows.push(row);
            rows.push(raw(&case, port, (n, in_flight), end_to_end, raw_headers).await?);
        }
    }
    Ok(rows)
}

async fn hubbus(
    case: &str,
    port: u16,
    n: u64,
    in_flight: u64,
    end_to_end: bool,
) -> anyhow::Result<Row> {
    let stream = unique("S3H").to_uppercase();
    let prefix = unique("s3h");
    let url = |node: &str| {
        format!(
            "nats://127.0.0.1:{port}?jetstream=true&node_id={node}&stream={stream}\
             &stream_subject_prefix={prefix}&subject_prefix={prefix}c"
        )
    };
    let publisher = bus(&url("bench-pub")).await?;
    let (subscriber, counter) = if end_to_end {
        let subscriber = bus(&url("bench-sub")).await?;
        let counter = Counter::start(subscriber.subscribe("bench").await?, true);
        (Some(subscriber), Some(counter))
    } else {
        (None, None)
    };
    let body = payload(BYTES);
    reset_peak_rss();
    let start = Instant::now();
    let bus: Arc<dyn MessageBus> = publisher.clone();
    let errors = publish_concurrently(n, in_flight, move |_| {
        let bus = bus.clone();
        let body = body.clone();
        async move { bus.publish("bench", body).await.is_ok() }
    })
    .await;
    let (seconds, delivered, dropped) = match counter {
        Some(counter) => {
            let done = wait_for(&[&counter.received], n - errors, Duration::from_secs(10)).await;
            let seconds = (done - start).as_secs_f64();
            (seconds, counter.count(), counter.finish().await)
        }
        None => (start.elapsed().as_secs_f64(), n - errors, 0),
    };
    let rss = peak_rss_kib();
    publisher.close().await;
    if let Some(subscriber) = subscriber {
        subscriber.close().await;
    }
    delete_stream(port, &stream).await;
    let mut row = Row::new("S3", case, System::Hubbus).timed(n, seconds);
    row.raw = if end_to_end {
        "js publish + pull consumer + ack"
    } else {
        "js publish, await PubAck"
    }
    .into();
    row.errors = errors;
    row.dropped = dropped;
    row.lost = (n - errors).saturating_sub(delivered);
    row.peak_rss_kib = rss;
    Ok(row)
}

async fn raw(
    case: &str,
    port: u16,
    (n, in_flight): (u64, u64),
    end_to_end: bool,
    with_headers: bool,
) -> anyhow::Result<Row> {
    let address = format!("nats://127.0.0.1:{port}");
    let js = jetstream::new(async_nats::connect(&address).await?);
    let name = unique("S3R").to_uppercase();
    let prefix = unique("s3r");
    let created = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.>")],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let received = Arc::new(AtomicU64::new(0));
    let consuming = if end_to_end {
        let consumer = created
            .create_consumer(consumer::pull::Config {
                durable_name: Some("bench".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                max_ack_pending: 1000,
                ack_wait: Duration::from_secs(30),
                ..Default::default()
            })
            .await?;
        let count = received.clone();
        Some(tokio::spawn(async move {
            let Ok(mut messages) = consumer.messages().await else {
                return;
            };
            while let Some(Ok(message)) = messages.next().await {
                let _ = message.ack().await;
                count.fetch_add(1, Ordering::Release);
            }
        }))
    } else {
        None
    };
    let subject = format!("{prefix}.bench");
    let body = payload(BYTES);
    reset_peak_rss();
    let start = Instant::now();
    let publisher = js.clone();
    let errors = publish_concurrently(n, in_flight, move |i| {
        let js = publisher.clone();
        let subject = subject.clone();
        let body = body.clone();
        async move {
            // With a message id, as hubbus sends one (the server de-duplicates retries by it).
            let mut message = jetstream::message::PublishMessage::build()
                .payload(body)
                .message_id(format!("raw-{i:020}"));
            if with_headers {
                for (name, value) in bus_headers(i, "raw") {
                    message = message.header(name, value.as_str());
                }
            }
            match js.send_publish(subject, message).await {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await;
    let (seconds, delivered) = match consuming {
        Some(task) => {
            let done = wait_for(&[&received], n - errors, Duration::from_secs(10)).await;
            task.abort();
            (
                (done - start).as_secs_f64(),
                received.load(Ordering::Acquire),
            )
        }
        None => (start.elapsed().as_secs_f64(), n - errors),
    };
    let rss = peak_rss_kib();
    let _ = js.delete_stream(&name).await;
    let mut row = Row::new("S3", case, System::Raw).timed(n, seconds);
    row.errors = errors;
    row.lost = (n - errors).saturating_sub(delivered);
    row.peak_rss_kib = rss;
    Ok(row)
}
