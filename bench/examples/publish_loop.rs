//! One side of a publish benchmark alone, for profilers: `n` publishes of 128 B from `tasks`
//! concurrent tasks to a server already running on `port`, and the rate. The numbers in
//! `docs/performance.md` ("Where the time goes") were taken with it under
//! `valgrind --tool=callgrind` and `perf stat`, one side per process so that nothing else runs:
//!
//! ```text
//! cargo build --release -p hubbus-bench --example publish_loop
//! valgrind --tool=callgrind target/release/examples/publish_loop nats headers 4222 100000 1
//! target/release/examples/publish_loop redis raw 6379 400000 128
//! ```
//!
//! Sides: `nats` with `raw` (a plain publish), `raw-headers` (hubbus's three headers in a header
//! map per publish), `headers` or `envelope` (hubbus in `buffered` mode with that framing),
//! `raw-round-trip` (S2's raw `server` equivalent: a publish, then a message to an own inbox and
//! its return), `raw-round-trip-hop` (the same, with the return read by another task that hands
//! it over, as the bus's probe task does) or `server` / `server-envelope` (hubbus in `server`
//! mode);
//! `jetstream` with `raw` (a JetStream publish with a message id, awaiting the PubAck) or
//! `headers` / `envelope` (hubbus on JetStream with that framing); `redis` with `raw` (redis-rs
//! multiplexed `PUBLISH`), `raw-timeout` (the same inside the bus's 50 ms publish timeout) or
//! `hubbus`. The JetStream sides create their streams (file storage) if missing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use hubbus::MessageBus;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [backend, side, port, n, tasks] = args.as_slice() else {
        anyhow::bail!("usage: publish_loop <nats|jetstream|redis> <side> <port> <n> <tasks>");
    };
    let (n, tasks): (u64, u64) = (n.parse()?, tasks.parse()?);
    let body = Bytes::from(vec![b'x'; 128]);
    let start = Instant::now();
    match (backend.as_str(), side.as_str()) {
        ("nats", "raw" | "raw-headers") => {
            let client = async_nats::connect(format!("127.0.0.1:{port}")).await?;
            let headers = side == "raw-headers";
            run(n, tasks, move |i| {
                let (client, body) = (client.clone(), body.clone());
                async move {
                    if headers {
                        let mut map = async_nats::HeaderMap::new();
                        let id = (u128::from(i) << 64) | 0x7000_8000_0000_0000;
                        map.insert("Hubbus-Id", uuid::Uuid::from_u128(id).to_string());
                        map.insert("Hubbus-Origin", "raw");
                        map.insert("Hubbus-Time", i.to_string());
                        client
                            .publish_with_headers("loop.x", map, body)
                            .await
                            .is_ok()
                    } else {
                        client.publish("loop.x", body).await.is_ok()
                    }
                }
            })
            .await;
        }
        ("nats", framing @ ("headers" | "envelope")) => {
            let url = format!(
                "nats://127.0.0.1:{port}?node_id=loop&subject_prefix=loop&publish_mode=buffered\
                 &framing={framing}"
            );
            let bus = hubbus_bus(&url).await?;
            run_bus(bus, n, tasks, body).await;
        }
        ("nats", side @ ("server" | "server-envelope")) => {
            let framing = if side == "server" {
                "headers"
            } else {
                "envelope"
            };
            let url = format!(
                "nats://127.0.0.1:{port}?node_id=loop&subject_prefix=loop&publish_mode=server\
                 &framing={framing}"
            );
            let bus = hubbus_bus(&url).await?;
            run_bus(bus, n, tasks, body).await;
        }
        ("nats", "raw-round-trip") => {
            // S2's raw `server` equivalent: publish, then a message to an own inbox, and wait
            // for it to come back.
            let client = async_nats::connect(format!("127.0.0.1:{port}")).await?;
            let inbox = client.new_inbox();
            let replies = Arc::new(tokio::sync::Mutex::new(
                client.subscribe(inbox.clone()).await?,
            ));
            client.flush().await?;
            run(n, tasks, move |_| {
                let (client, body, inbox) = (client.clone(), body.clone(), inbox.clone());
                let replies = replies.clone();
                async move {
                    client.publish("loop.x", body).await.is_ok()
                        && client.publish(inbox, Bytes::new()).await.is_ok()
                        && replies.lock().await.next().await.is_some()
                }
            })
            .await;
        }
        ("nats", "raw-round-trip-hop") => {
            // The same, with the answer read by another task that hands it over, as the bus's
            // probe task does: the cost of that hop alone.
            let client = async_nats::connect(format!("127.0.0.1:{port}")).await?;
            let inbox = client.new_inbox();
            let mut replies = client.subscribe(inbox.clone()).await?;
            client.flush().await?;
            let (back, _) = tokio::sync::watch::channel(0u64);
            let back = Arc::new(back);
            let reader = back.clone();
            tokio::spawn(async move {
                while replies.next().await.is_some() {
                    reader.send_modify(|count| *count += 1);
                }
            });
            let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
            run(n, tasks, move |_| {
                let (client, body, inbox) = (client.clone(), body.clone(), inbox.clone());
                let (back, sent) = (back.clone(), sent.clone());
                async move {
                    let mut returned = back.subscribe();
                    let target = sent.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
                    client.publish("loop.x", body).await.is_ok()
                        && client.publish(inbox, Bytes::new()).await.is_ok()
                        && returned.wait_for(|count| *count >= target).await.is_ok()
                }
            })
            .await;
        }
        ("jetstream", "raw") => {
            let client = async_nats::connect(format!("127.0.0.1:{port}")).await?;
            let js = async_nats::jetstream::new(client);
            js.get_or_create_stream(async_nats::jetstream::stream::Config {
                name: "LOOPRAW".into(),
                subjects: vec!["loopraw.>".into()],
                ..Default::default()
            })
            .await?;
            run(n, tasks, move |i| {
                let (js, body) = (js.clone(), body.clone());
                async move {
                    let message = async_nats::jetstream::message::PublishMessage::build()
                        .payload(body)
                        .message_id(format!("raw-{i:020}"));
                    match js.send_publish("loopraw.x", message).await {
                        Ok(ack) => ack.await.is_ok(),
                        Err(_) => false,
                    }
                }
            })
            .await;
        }
        ("jetstream", framing @ ("headers" | "envelope")) => {
            let url = format!(
                "nats://127.0.0.1:{port}?jetstream=true&node_id=loop&stream=LOOP{framing}\
                 &stream_subject_prefix=loop{framing}&subject_prefix=loop{framing}c\
                 &framing={framing}"
            );
            let bus = hubbus_bus(&url).await?;
            run_bus(bus, n, tasks, body).await;
        }
        ("redis", "raw" | "raw-timeout") => {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
            let connection = client.get_multiplexed_async_connection().await?;
            let timed = side == "raw-timeout";
            run(n, tasks, move |_| {
                let (mut connection, body) = (connection.clone(), body.clone());
                async move {
                    let mut command = redis::cmd("PUBLISH");
                    command.arg("loop.x").arg(body.as_ref());
                    let publish = command.query_async::<i64>(&mut connection);
                    if timed {
                        let publish = tokio::time::timeout(Duration::from_millis(50), publish);
                        matches!(publish.await, Ok(Ok(_)))
                    } else {
                        publish.await.is_ok()
                    }
                }
            })
            .await;
        }
        ("redis", "hubbus") => {
            let bus = hubbus_bus(&format!("redis://127.0.0.1:{port}?node_id=loop")).await?;
            run_bus(bus, n, tasks, body).await;
        }
        _ => anyhow::bail!("unknown backend and side: {backend} {side}"),
    }
    eprintln!(
        "{backend} {side}: {:.0} publishes/s",
        n as f64 / start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A connected bus from `url`.
async fn hubbus_bus(url: &str) -> anyhow::Result<Arc<dyn MessageBus>> {
    let config = hubbus::BusConfig::from_url(url)?;
    let bus = hubbus::connect(&config, &prometheus::Registry::new()).await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !bus.health().is_connected() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "not connected: {:?}",
            bus.health()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(bus)
}

async fn run_bus(bus: Arc<dyn MessageBus>, n: u64, tasks: u64, body: Bytes) {
    run(n, tasks, move |_| {
        let (bus, body) = (bus.clone(), body.clone());
        async move { bus.publish("x", body).await.is_ok() }
    })
    .await;
}

/// Publishes `n` times from `tasks` tasks; panics on a failed publish (a profile of failures
/// measures nothing).
async fn run<F, Fut>(n: u64, tasks: u64, publish: F)
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let publish = publish.clone();
            tokio::spawn(async move {
                let mut i = t;
                while i < n {
                    assert!(publish(i).await, "publish {i} failed");
                    i += tasks;
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("a publishing task panicked");
    }
}
