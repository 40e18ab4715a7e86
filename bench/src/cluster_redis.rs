//! `cluster`: a Redis Cluster of three masters, in both Pub/Sub modes of hubbus on the same
//! cluster, each against raw redis-rs doing the same work: classic `PUBLISH` through one node
//! with a `SUBSCRIBE` connection on another, and sharded `SPUBLISH` to the master of each
//! channel's slot with a RESP3 `SSUBSCRIBE` connection per master. Messages go round-robin over
//! [`CHANNELS`] channels, the same number on every master, from 1 / 16 / 128 concurrent
//! publishers; a subscriber on every channel checks that nothing is lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};

use crate::common::{
    Counter, Size, bus, counted_bus, metric_drops, payload, publish_concurrently, unique, wait_for,
    wait_for_sum,
};
use crate::report::{Row, System, peak_rss_kib, reset_peak_rss};

const BYTES: usize = 128;
/// Channels per case, an equal share on each master.
const CHANNELS: usize = 24;
/// How long the subscribers may stay silent before the count is taken as final.
const QUIET: Duration = Duration::from_secs(2);

/// Classic or sharded Pub/Sub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Classic,
    Sharded,
}

impl Mode {
    /// The case's name.
    fn name(self) -> &'static str {
        match self {
            Mode::Classic => "classic",
            Mode::Sharded => "sharded",
        }
    }

    /// What the raw side does.
    fn raw(self) -> &'static str {
        match self {
            Mode::Classic => "redis-rs PUBLISH on one node, SUBSCRIBE on another",
            Mode::Sharded => "redis-rs SPUBLISH to each slot's master, RESP3 SSUBSCRIBE",
        }
    }

    /// The hubbus URL's query parameters before `node_id`.
    fn query(self) -> &'static str {
        match self {
            Mode::Classic => "",
            Mode::Sharded => "sharded=true&",
        }
    }
}

/// Runs the scenario on the cluster whose nodes listen on `ports`.
pub async fn run(size: Size, ports: &[u16]) -> anyhow::Result<Vec<Row>> {
    let mut layout = Layout::read(ports[0]).await?;
    let mut rows = Vec::new();
    for publishers in [1, 16, 128] {
        let n = size.pick(if publishers == 1 { 50_000 } else { 200_000 }, 2_000);
        for mode in [Mode::Classic, Mode::Sharded] {
            let case = format!("{} publishers={publishers}", mode.name());
            let load = (n, publishers);
            let channels = layout.channels("clh").await?;
            rows.push(hubbus(&case, mode, ports, &channels, load).await?);
            let channels = layout.channels("clr").await?;
            rows.push(match mode {
                Mode::Classic => raw_classic(&case, ports, &channels, load).await?,
                Mode::Sharded => raw_sharded(&case, &layout, &channels, load).await?,
            });
        }
    }
    Ok(rows)
}

/// A master of the cluster: its port and the slot ranges it owns.
struct Master {
    port: u16,
    ranges: Vec<(i64, i64)>,
}

/// The cluster as `CLUSTER SLOTS` described it once at the start, and a connection to ask
/// `CLUSTER KEYSLOT` on.
struct Layout {
    masters: Vec<Master>,
    seed: MultiplexedConnection,
}

/// The channels of one case, and the index in [`Layout::masters`] of each one's master.
struct Channels {
    names: Arc<Vec<String>>,
    owners: Vec<usize>,
}

impl Layout {
    /// Reads the slot map from the node on `port`.
    async fn read(port: u16) -> anyhow::Result<Self> {
        let mut seed = connect(port).await?;
        let reply: Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut seed)
            .await?;
        let mut masters: Vec<Master> = Vec::new();
        for (start, end, port) in slot_ranges(&reply) {
            match masters.iter_mut().find(|m| m.port == port) {
                Some(master) => master.ranges.push((start, end)),
                None => masters.push(Master {
                    port,
                    ranges: vec![(start, end)],
                }),
            }
        }
        if masters.is_empty() {
            bail!("CLUSTER SLOTS named no master: {reply:?}");
        }
        masters.sort_by_key(|m| m.port);
        Ok(Layout { masters, seed })
    }

    /// [`CHANNELS`] fresh channel names, the same number owned by every master, so that the
    /// hubbus and the raw side of a case load the masters alike.
    async fn channels(&mut self, tag: &str) -> anyhow::Result<Channels> {
        let share = CHANNELS / self.masters.len();
        let prefix = unique(tag);
        let (mut names, mut owners) = (Vec::new(), Vec::new());
        for i in 0..CHANNELS * 100 {
            let name = format!("{prefix}x{i}");
            let owner = self.owner(&name).await?;
            if owners.iter().filter(|&&o| o == owner).count() < share {
                names.push(name);
                owners.push(owner);
            }
            if names.len() == share * self.masters.len() {
                return Ok(Channels {
                    names: Arc::new(names),
                    owners,
                });
            }
        }
        bail!(
            "found no {share} channels per master among {} names",
            CHANNELS * 100
        )
    }

    /// The index of the master owning `channel`'s slot.
    async fn owner(&mut self, channel: &str) -> anyhow::Result<usize> {
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(channel)
            .query_async(&mut self.seed)
            .await?;
        self.masters
            .iter()
            .position(|m| m.ranges.iter().any(|&(a, b)| (a..=b).contains(&slot)))
            .with_context(|| format!("no master owns slot {slot}"))
    }
}

/// `(first slot, last slot, master's port)` for every entry of a `CLUSTER SLOTS` reply.
fn slot_ranges(reply: &Value) -> Vec<(i64, i64, u16)> {
    let Value::Array(entries) = reply else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| match entry {
            Value::Array(parts) => match (parts.first(), parts.get(1), parts.get(2)) {
                (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(node))) => {
                    match node.get(1) {
                        Some(Value::Int(port)) => Some((*start, *end, u16::try_from(*port).ok()?)),
                        _ => None,
                    }
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// A multiplexed connection to the node on `port`.
async fn connect(port: u16) -> anyhow::Result<MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    Ok(client.get_multiplexed_async_connection().await?)
}

/// The cluster's nodes as seeds of a hubbus URL, starting with the `first`-th: classic mode
/// talks to the first seed, so the subscribing bus starts at another node than the publishing
/// one, as the raw side does.
fn seeds(ports: &[u16], first: usize) -> String {
    (0..ports.len())
        .map(|i| format!("127.0.0.1:{}", ports[(first + i) % ports.len()]))
        .collect::<Vec<_>>()
        .join(",")
}

/// The hubbus side: a publishing bus and a subscribing bus (with a registry of its own, since
/// a node that cannot keep up sheds messages before they reach a subscription and counts them
/// only in its metrics), a subscription per channel.
async fn hubbus(
    case: &str,
    mode: Mode,
    ports: &[u16],
    channels: &Channels,
    (n, publishers): (u64, u64),
) -> anyhow::Result<Row> {
    let url = |first: usize, node: &str| {
        let seeds = seeds(ports, first);
        format!("redis+cluster://{seeds}?{}node_id={node}", mode.query())
    };
    let publisher = bus(&url(0, &unique("pub"))).await?;
    let (subscriber, registry) = counted_bus(&url(1, &unique("sub"))).await?;
    let mut counters = Vec::new();
    for channel in channels.names.iter() {
        counters.push(Counter::start(subscriber.subscribe(channel).await?, false));
    }
    let body = payload(BYTES);
    reset_peak_rss();
    let start = Instant::now();
    let (sender, names) = (publisher.clone(), channels.names.clone());
    let errors = publish_concurrently(n, publishers, move |i| {
        let (bus, body, names) = (sender.clone(), body.clone(), names.clone());
        async move {
            let channel = &names[i as usize % names.len()];
            bus.publish(channel, body).await.is_ok()
        }
    })
    .await;
    let seconds = start.elapsed().as_secs_f64();
    let received: Vec<&AtomicU64> = counters.iter().map(|c| c.received.as_ref()).collect();
    wait_for_sum(&received, n - errors, QUIET).await;
    let rss = peak_rss_kib();
    let delivered: u64 = counters.iter().map(Counter::count).sum();
    for counter in counters {
        counter.finish().await;
    }
    let dropped = metric_drops(&registry);
    publisher.close().await;
    subscriber.close().await;
    let mut row = Row::new("cluster", case, System::Hubbus).timed(n, seconds);
    row.raw = mode.raw().into();
    row.errors = errors;
    row.dropped = dropped;
    row.lost = (n - errors).saturating_sub(delivered + dropped);
    row.peak_rss_kib = rss;
    Ok(row)
}

/// Raw classic Pub/Sub: `PUBLISH` on a multiplexed connection to the first node, one `PubSub`
/// connection on the second node subscribed to every channel.
async fn raw_classic(
    case: &str,
    ports: &[u16],
    channels: &Channels,
    (n, publishers): (u64, u64),
) -> anyhow::Result<Row> {
    let connection = connect(ports[0]).await?;
    let listener = redis::Client::open(format!("redis://127.0.0.1:{}", ports[1]))?;
    let mut pubsub = listener.get_async_pubsub().await?;
    for channel in channels.names.iter() {
        pubsub.subscribe(channel).await?;
    }
    let received = Arc::new(AtomicU64::new(0));
    let count = received.clone();
    let counting = tokio::spawn(async move {
        let mut messages = pubsub.on_message();
        while messages.next().await.is_some() {
            count.fetch_add(1, Ordering::Release);
        }
    });
    let body = payload(BYTES);
    reset_peak_rss();
    let start = Instant::now();
    let names = channels.names.clone();
    let errors = publish_concurrently(n, publishers, move |i| {
        let (mut connection, body, names) = (connection.clone(), body.clone(), names.clone());
        async move {
            redis::cmd("PUBLISH")
                .arg(&names[i as usize % names.len()])
                .arg(body.as_ref())
                .query_async::<i64>(&mut connection)
                .await
                .is_ok()
        }
    })
    .await;
    let seconds = start.elapsed().as_secs_f64();
    let row = raw_row(case, Mode::Classic, (n, errors, seconds), &received).await;
    counting.abort();
    Ok(row)
}

/// Raw sharded Pub/Sub: per master a multiplexed connection for `SPUBLISH` and a RESP3 one
/// for `SSUBSCRIBE`, whose `smessage` pushes one task counts; each channel goes to its master.
async fn raw_sharded(
    case: &str,
    layout: &Layout,
    channels: &Channels,
    (n, publishers): (u64, u64),
) -> anyhow::Result<Row> {
    let received = Arc::new(AtomicU64::new(0));
    let (pushes, mut incoming) = tokio::sync::mpsc::unbounded_channel::<PushInfo>();
    let count = received.clone();
    let counting = tokio::spawn(async move {
        while let Some(push) = incoming.recv().await {
            if push.kind == PushKind::SMessage {
                count.fetch_add(1, Ordering::Release);
            }
        }
    });
    let mut senders = Vec::new();
    let mut subscribers = Vec::new();
    for master in &layout.masters {
        senders.push(connect(master.port).await?);
        let url = format!("redis://127.0.0.1:{}?protocol=resp3", master.port);
        let config = AsyncConnectionConfig::new().set_push_sender(pushes.clone());
        let client = redis::Client::open(url)?;
        subscribers.push(
            client
                .get_multiplexed_async_connection_with_config(&config)
                .await?,
        );
    }
    for (channel, &owner) in channels.names.iter().zip(&channels.owners) {
        redis::cmd("SSUBSCRIBE")
            .arg(channel)
            .query_async::<Value>(&mut subscribers[owner])
            .await?;
    }
    let routes: Arc<Vec<MultiplexedConnection>> = Arc::new(
        channels
            .owners
            .iter()
            .map(|&o| senders[o].clone())
            .collect(),
    );
    let body = payload(BYTES);
    reset_peak_rss();
    let start = Instant::now();
    let names = channels.names.clone();
    let errors = publish_concurrently(n, publishers, move |i| {
        let (routes, body, names) = (routes.clone(), body.clone(), names.clone());
        async move {
            let at = i as usize % names.len();
            redis::cmd("SPUBLISH")
                .arg(&names[at])
                .arg(body.as_ref())
                .query_async::<i64>(&mut routes[at].clone())
                .await
                .is_ok()
        }
    })
    .await;
    let seconds = start.elapsed().as_secs_f64();
    let row = raw_row(case, Mode::Sharded, (n, errors, seconds), &received).await;
    drop(subscribers);
    counting.abort();
    Ok(row)
}

/// Waits for a raw subscriber to count what was published, then makes the row.
async fn raw_row(
    case: &str,
    mode: Mode,
    (n, errors, seconds): (u64, u64, f64),
    received: &AtomicU64,
) -> Row {
    wait_for(&[received], n - errors, QUIET).await;
    let rss = peak_rss_kib();
    let delivered = received.load(Ordering::Acquire);
    let mut row = Row::new("cluster", case, System::Raw).timed(n, seconds);
    row.raw = mode.raw().into();
    row.errors = errors;
    row.lost = (n - errors).saturating_sub(delivered);
    row.peak_rss_kib = rss;
    row
}
