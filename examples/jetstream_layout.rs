//! What the JetStream consumer layout costs as the number of channels grows: one node
//! subscribes to N channels while another publishes round-robin over them, on one `nats-server`
//! (`scripts/jetstream_layout.sh` starts one and runs 10, 100 and 1 000 channels).
//!
//! For each N it prints one line:
//!
//! ```text
//! channels=N subscribe_all=… idle_server_cpu=…% idle_client_cpu=…% end_to_end=…/s
//! ```
//!
//! - `subscribe_all`: the time to subscribe all N channels on a node whose consumer exists;
//! - `idle_*_cpu`: CPU used over 10 s with the N subscriptions and no traffic, by the server
//!   process (`--server-pid`, read from `/proc`) and by this process;
//! - `end_to_end`: `--count` messages of 128 bytes, 64 publishes in flight, every delivery
//!   acknowledged, divided by the time until the last arrived.
//!
//! ```text
//! cargo run --release --example jetstream_layout -- --url nats://127.0.0.1:4222 --server-pid 1234 10 100 1000
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt;
use hubbus::backend::nats::jetstream::JetStreamBus;
use hubbus::backend::nats::{AsyncNatsLink, JetStreamOptions, NatsOptions};
use hubbus::{BusOptions, MessageBus, NodeId};

/// The command line.
#[derive(Debug, Parser)]
#[command(about = "Measure the JetStream consumer layout at several channel counts")]
struct Args {
    /// The NATS server.
    #[arg(long)]
    url: String,
    /// The server's process id, for its CPU time.
    #[arg(long)]
    server_pid: u32,
    /// Messages published per channel count.
    #[arg(long, default_value_t = 20_000)]
    count: usize,
    /// The channel counts to measure.
    #[arg(required = true)]
    channels: Vec<usize>,
}

/// CPU time of process `pid` so far, in clock ticks (user plus system).
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces; the fields after it are space-separated.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |index: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(index)
            .context("a short /proc stat line")?
            .parse()?)
    };
    Ok(field(11)? + field(12)?)
}

async fn node(url: &str, name: &str) -> anyhow::Result<Arc<JetStreamBus>> {
    let mut nats = NatsOptions::new(url);
    nats.jetstream = Some(JetStreamOptions::default());
    let link = AsyncNatsLink::connect(nats.link.clone()).await?;
    let options = BusOptions {
        node_id: NodeId::new(name)?,
        ..BusOptions::default()
    };
    let bus = Arc::new(JetStreamBus::start(options, nats, Arc::new(link)).await?);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !bus.health().is_connected() {
        if Instant::now() > deadline {
            bail!("{name} did not connect: {:?}", bus.health());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(bus)
}

async fn measure(args: &Args, channels: usize) -> anyhow::Result<()> {
    let consumer = node(&args.url, &format!("layout-consumer-{channels}")).await?;
    let publisher = node(&args.url, &format!("layout-publisher-{channels}")).await?;
    // The first subscribe creates the node's consumer; time the rest as a restarted hub sees it.
    let mut subscriptions = vec![consumer.subscribe("room0").await?];
    let started = Instant::now();
    for index in 1..channels {
        subscriptions.push(consumer.subscribe(&format!("room{index}")).await?);
    }
    let subscribe_all = started.elapsed();

    let idle = Duration::from_secs(10);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (server_before, mine_before) =
        (cpu_ticks(args.server_pid)?, cpu_ticks(std::process::id())?);
    let idle_started = Instant::now();
    tokio::time::sleep(idle).await;
    let seconds = idle_started.elapsed().as_secs_f64();
    // Linux counts CPU time in ticks of 1/100 s.
    let percent = |ticks: u64| ticks as f64 / 100.0 / seconds * 100.0;
    let server_cpu = percent(cpu_ticks(args.server_pid)? - server_before);
    let client_cpu = percent(cpu_ticks(std::process::id())? - mine_before);

    let received = Arc::new(AtomicUsize::new(0));
    for mut subscription in subscriptions {
        let received = received.clone();
        tokio::spawn(async move {
            while let Some(delivery) = subscription.recv().await {
                let _ = delivery.ack().await;
                received.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let payload = Bytes::from(vec![b'x'; 128]);
    let started = Instant::now();
    let published: Vec<Result<_, _>> = futures_util::stream::iter(0..args.count)
        .map(|index| {
            let (publisher, payload) = (publisher.clone(), payload.clone());
            async move {
                publisher
                    .publish(&format!("room{}", index % channels), payload)
                    .await
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    if let Some(Err(error)) = published.into_iter().find(Result::is_err) {
        bail!("a publish failed: {error}");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while received.load(Ordering::Relaxed) < args.count {
        if Instant::now() > deadline {
            bail!(
                "only {} of {} arrived",
                received.load(Ordering::Relaxed),
                args.count
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = args.count as f64 / started.elapsed().as_secs_f64();
    println!(
        "channels={channels} subscribe_all={subscribe_all:?} idle_server_cpu={server_cpu:.1}% \
         idle_client_cpu={client_cpu:.1}% end_to_end={rate:.0}/s"
    );
    consumer.close().await;
    publisher.close().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for &channels in &args.channels {
        measure(&args, channels).await?;
    }
    Ok(())
}
