//! S2: NATS Core against raw async-nats, one sequential publisher and 64 concurrent ones, in each
//! publish mode against its raw equivalent:
//!
//! | hubbus `publish_mode` | `Ok` means | raw equivalent |
//! |---|---|---|
//! | `server` | the server processed it (a round trip after it) | sequential: `publish`, then a message to an own inbox and its return; 64 publishers: `publish` + `flush` |
//! | `flush` | written to the socket | `publish` + `flush` |
//! | `buffered` | queued in the client | `publish` |
//!
//! A second connection subscribes on both sides, so loss is checked end to end.
//!
//! hubbus writes its default framing (the payload with the bus's NATS headers); the `buffered`
//! cases run once more with `framing = envelope` (the version 1 envelope as the payload, no
//! headers), which measures what the headers cost, and once more against a raw client that
//! publishes the same three headers (`raw=headers`: a header map per publish, as any NATS client
//! sending headers builds one), which measures what hubbus adds to a headers publish.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::common::{
    Size, bus_headers, hubbus_publish_case, payload, publish_concurrently, unique, wait_for,
};
use crate::report::{Row, System, peak_rss_kib, reset_peak_rss};

const BYTES: usize = 128;

/// The raw equivalent that publishes hubbus's three headers.
const RAW_WITH_HEADERS: &str = "publish with the 3 headers";

/// Runs S2 against the NATS server on `port`.
pub async fn run(size: Size, port: u16) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for publishers in [1, 64] {
        let n = size.pick(if publishers == 1 { 50_000 } else { 200_000 }, 2_000);
        for (mode, framing, raw_headers) in [
            ("server", "headers", false),
            ("flush", "headers", false),
            ("buffered", "headers", false),
            ("buffered", "headers", true),
            ("buffered", "envelope", false),
        ] {
            let case = match (framing, raw_headers) {
                ("headers", false) => format!("publishers={publishers} mode={mode}"),
                ("headers", true) => format!("publishers={publishers} mode={mode} raw=headers"),
                _ => format!("publishers={publishers} mode={mode} framing={framing}"),
            };
            let mut row = hubbus(&case, port, (n, publishers), mode, framing).await?;
            if raw_headers {
                row.raw = RAW_WITH_HEADERS.into();
            }
            rows.push(row);
            rows.push(raw(&case, port, (n, publishers), mode, raw_headers).await?);
        }
    }
    Ok(rows)
}

async fn hubbus(
    case: &str,
    port: u16,
    (n, publishers): (u64, u64),
    mode: &str,
    framing: &str,
) -> anyhow::Result<Row> {
    let prefix = unique("s2h");
    // The raw subscriber reads through the client's buffer of 65 536 messages; the hubbus
    // subscriber gets a queue as deep, so that both absorb the same burst.
    let url = |node: &str| {
        format!(
            "nats://127.0.0.1:{port}?node_id={node}&subject_prefix={prefix}&publish_mode={mode}\
             &framing={framing}&subscriber_queue=65536"
        )
    };
    let mut row = hubbus_publish_case("S2", case, url, "bench", (n, publishers, BYTES)).await?;
    row.raw = raw_name(publishers, mode).into();
    Ok(row)
}

fn raw_name(publishers: u64, mode: &str) -> &'static str {
    match (publishers, mode) {
        (1, "server") => "publish + round trip",
        (_, "server") | (_, "flush") => "publish + flush",
        _ => "publish",
    }
}

async fn raw(
    case: &str,
    port: u16,
    (n, publishers): (u64, u64),
    mode: &str,
    with_headers: bool,
) -> anyhow::Result<Row> {
    let address = format!("nats://127.0.0.1:{port}");
    let client = async_nats::ConnectOptions::new()
        .subscription_capacity(65_536)
        .connect(&address)
        .await?;
    let receiver = async_nats::connect(&address).await?;
    let subject = format!("{}.bench", unique("s2r"));
    let mut subscription = receiver.subscribe(subject.clone()).await?;
    receiver.flush().await?;
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = received.clone();
    let counting = tokio::spawn(async move {
        while subscription.next().await.is_some() {
            count.fetch_add(1, std::sync::atomic::Ordering::Release);
        }
    });
    // The round trip of the sequential `server` equivalent: a message to an inbox of our own.
    let inbox = client.new_inbox();
    let probes = Arc::new(tokio::sync::Mutex::new(
        client.subscribe(inbox.clone()).await?,
    ));
    client.flush().await?;
    let body = payload(BYTES);
    let how = raw_name(publishers, mode);
    let origin: Arc<str> = unique("raw").into();
    reset_peak_rss();
    let start = Instant::now();
    let errors = publish_concurrently(n, publishers, {
        let client = client.clone();
        move |i| {
            let client = client.clone();
            let subject = subject.clone();
            let body = body.clone();
            let inbox = inbox.clone();
            let probes = probes.clone();
            let origin = origin.clone();
            async move {
                let published = if with_headers {
                    let mut headers = async_nats::HeaderMap::new();
                    for (name, value) in bus_headers(i, &origin) {
                        headers.insert(name, value);
                    }
                    client.publish_with_headers(subject, headers, body).await
                } else {
                    client.publish(subject, body).await
                };
                if published.is_err() {
                    return false;
                }
                match how {
                    "publish + round trip" => {
                        if client.publish(inbox, bytes::Bytes::new()).await.is_err() {
                            return false;
                        }
                        probes.lock().await.next().await.is_some()
                    }
                    "publish + flush" => client.flush().await.is_ok(),
                    _ => true,
                }
            }
        }
    })
    .await;
    let seconds = start.elapsed().as_secs_f64();
    wait_for(&[&received], n - errors, Duration::from_secs(2)).await;
    let rss = peak_rss_kib();
    let delivered = received.load(std::sync::atomic::Ordering::Acquire);
    counting.abort();
    let mut row = Row::new("S2", case, System::Raw).timed(n, seconds);
    row.raw = if with_headers {
        RAW_WITH_HEADERS.into()
    } else {
        how.into()
    };
    row.errors = errors;
    row.lost = (n - errors).saturating_sub(delivered);
    row.peak_rss_kib = rss;
    Ok(row)
}
