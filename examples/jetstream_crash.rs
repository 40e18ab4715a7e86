//! The two sides of the JetStream crash check (`scripts/jetstream_crash_check.sh`) in one
//! process: a publisher node and a durable subscriber node on one `nats-server`.
//!
//! The publisher sends `--count` messages, each with its own id, `--in-flight` at a time, and
//! retries a failed publish with the same id (the server de-duplicates it) until it is
//! acknowledged. The subscriber acks everything it receives. While this runs, the script kills
//! the server with SIGKILL and starts it again on the same store. Progress goes to stdout as
//! `progress acked=N delivered=N` so the script knows when "midway" is; at the end the example
//! waits until every acknowledged message was delivered (or `--drain` seconds pass without any
//! new delivery) and prints
//!
//! ```text
//! published=N acked=N delivered=N lost=N duplicated=N
//! ```
//!
//! where `delivered` counts acknowledged messages that arrived, `lost` those that never did and
//! `duplicated` the extra copies. It exits with status 1 if anything acknowledged was lost.
//!
//! ```text
//! cargo run --example jetstream_crash -- --url nats://127.0.0.1:4222 --count 100000
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::StreamExt;
use hubbus::backend::nats::jetstream::JetStreamBus;
use hubbus::backend::nats::{AsyncNatsLink, JetStreamOptions, NatsOptions};
use hubbus::{BusOptions, IdGenerator, Message, MessageBus, NodeId};

/// The command line.
#[derive(Debug, Parser)]
#[command(about = "Publish and receive through JetStream while the server is killed")]
struct Args {
    /// The NATS server, or several of one cluster (`nats://a:4222,nats://b:4222`).
    #[arg(long)]
    url: String,
    /// Replicas of the stream (3 on a three-server cluster).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// How many messages to publish.
    #[arg(long, default_value_t = 100_000)]
    count: usize,
    /// How many publishes wait for their PubAck at once.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Seconds a delivery may stay unacked before the server sends it again.
    #[arg(long, default_value_t = 5)]
    ack_wait: u64,
    /// Give up waiting for the last deliveries after this many seconds without progress.
    #[arg(long, default_value_t = 60)]
    drain: u64,
}

/// What the subscriber saw, by message index.
#[derive(Debug, Default)]
struct Seen {
    /// How often each message arrived.
    deliveries: Vec<u32>,
    /// Copies after the first that were not flagged redelivered.
    unflagged_duplicates: u64,
    /// When the last new message arrived.
    last_progress: Option<Instant>,
}

async fn start(args: &Args, node: &str) -> anyhow::Result<JetStreamBus> {
    let mut nats = NatsOptions::new(args.url.clone());
    nats.link.reconnect_wait = Duration::from_millis(250);
    nats.jetstream = Some(JetStreamOptions {
        stream: "CRASH".into(),
        subject_prefix: "crash".into(),
        ack_wait: Duration::from_secs(args.ack_wait),
        publish_timeout: Duration::from_secs(2),
        pull_batch: 256,
        replicas: args.replicas,
        ..JetStreamOptions::default()
    });
    let link = AsyncNatsLink::connect(nats.link.clone()).await?;
    let options = BusOptions {
        node_id: NodeId::new(node)?,
        subscriber_queue: 65_536,
        ..BusOptions::default()
    };
    let bus = JetStreamBus::start(options, nats, Arc::new(link)).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !bus.health().is_connected() {
        if Instant::now() > deadline {
            bail!("{node} did not connect: {:?}", bus.health());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(bus)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let subscriber = start(&args, "crash-subscriber").await?;
    let publisher = Arc::new(start(&args, "crash-publisher").await?);
    let mut subscription = subscriber.subscribe("load").await?;

    let seen = Arc::new(Mutex::new(Seen {
        deliveries: vec![0; args.count],
        ..Seen::default()
    }));
    let receiver = tokio::spawn({
        let seen = seen.clone();
        async move {
            while let Some(delivery) = subscription.recv().await {
                let index = std::str::from_utf8(delivery.payload())
                    .ok()
                    .and_then(|text| text.parse::<usize>().ok());
                {
                    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(count) = index.and_then(|index| seen.deliveries.get_mut(index)) {
                        *count += 1;
                        let first = *count == 1;
                        if first {
                            seen.last_progress = Some(Instant::now());
                        } else if !delivery.redelivered() {
                            seen.unflagged_duplicates += 1;
                        }
                    }
                }
                let _ = delivery.ack().await;
            }
        }
    });

    let ids = IdGenerator::from_entropy();
    let messages: Vec<Message> = (0..args.count)
        .map(|index| Message::new("load", index.to_string()).with_id(ids.next_id()))
        .collect();
    let acked = Arc::new(Mutex::new(vec![false; args.count]));
    let acked_count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reporter = tokio::spawn({
        let (seen, acked_count) = (seen.clone(), acked_count.clone());
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let delivered = seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .deliveries
                    .iter()
                    .filter(|count| **count > 0)
                    .count();
                let acked = acked_count.load(std::sync::atomic::Ordering::Relaxed);
                println!("progress acked={acked} delivered={delivered}");
            }
        }
    });
    futures_util::stream::iter(messages.into_iter().enumerate())
        .map(|(index, message)| {
            let (publisher, acked, acked_count) =
                (publisher.clone(), acked.clone(), acked_count.clone());
            async move {
                // Retry with the same id for as long as a hub would: the server keeps the id
                // for its duplicate window (two minutes).
                let give_up = Instant::now() + Duration::from_secs(100);
                while Instant::now() < give_up {
                    if publisher.publish_message(message.clone()).await.is_ok() {
                        acked.lock().unwrap_or_else(|e| e.into_inner())[index] = true;
                        acked_count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        })
        .buffer_unordered(args.in_flight.max(1))
        .collect::<Vec<()>>()
        .await;

    let acked = acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let drain = Duration::from_secs(args.drain);
    loop {
        {
            let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            let missing = acked
                .iter()
                .zip(&seen.deliveries)
                .any(|(acked, count)| *acked && *count == 0);
            let stalled = seen.last_progress.is_none_or(|last| last.elapsed() > drain);
            if !missing || stalled {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    reporter.abort();
    subscriber.close().await;
    publisher.close().await;
    receiver.await.context("the receiver task")?;

    let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    let acked_total = acked.iter().filter(|acked| **acked).count();
    let delivered = acked
        .iter()
        .zip(&seen.deliveries)
        .filter(|(acked, count)| **acked && **count > 0)
        .count();
    let duplicated: u64 = seen
        .deliveries
        .iter()
        .map(|count| u64::from(count.saturating_sub(1)))
        .sum();
    println!(
        "published={} acked={acked_total} delivered={delivered} lost={} duplicated={duplicated}",
        args.count,
        acked_total - delivered
    );
    println!(
        "duplicates not flagged redelivered: {}",
        seen.unflagged_duplicates
    );
    if acked_total != delivered {
        std::process::exit(1);
    }
    Ok(())
}
