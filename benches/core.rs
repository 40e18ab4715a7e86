#![allow(missing_docs)] // criterion_group! generates an undocumented public function.
//! Micro-benchmarks of the per-message work every backend shares: the envelope frame, a
//! message id and timestamp, the channel rule, and one trip through a subscriber queue (a memory
//! publish and a receive). `docs/performance.md` uses them to say what a message costs before
//! any network is involved.
//!
//! `cargo bench --bench core`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hubbus::envelope::Envelope;
use hubbus::{BusOptions, IdGenerator, MemoryBroker, MessageBus, MessageId, NodeId};

fn envelope(size: usize) -> Envelope {
    Envelope {
        id: MessageId::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0001),
        origin: NodeId::new("hub-a").expect("a valid node id"),
        published_at: 1_764_547_200_000_000_000,
        headers: Vec::new(),
        payload: Bytes::from(vec![b'x'; size]),
    }
}

fn envelopes(c: &mut Criterion) {
    let mut group = c.benchmark_group("envelope");
    for size in [16, 1024, 65_536] {
        let message = envelope(size);
        let frame = message.encode().expect("encodes");
        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_with_input(BenchmarkId::new("encode", size), &message, |b, m| {
            b.iter(|| black_box(m).encode().expect("encodes"))
        });
        group.bench_with_input(BenchmarkId::new("decode", size), &frame, |b, f| {
            b.iter(|| Envelope::decode(black_box(f).clone()).expect("decodes"))
        });
    }
    group.finish();
}

fn ids(c: &mut Criterion) {
    let ids = IdGenerator::from_entropy();
    c.bench_function("id/next_id", |b| b.iter(|| black_box(ids.next_id())));
    c.bench_function("id/now_nanos", |b| b.iter(|| black_box(ids.now_nanos())));
}

fn channels(c: &mut Criterion) {
    let mut group = c.benchmark_group("validate_channel");
    for name in ["room1", "tenant-42.orders.eu-west-1.room-000123"] {
        group.bench_with_input(BenchmarkId::from_parameter(name.len()), name, |b, n| {
            b.iter(|| hubbus::validate_channel(black_box(n)))
        });
    }
    group.finish();
}

/// Polls a future that completes without waiting (a memory publish) once, outside any runtime,
/// so that the measurement is the publish and not an executor's entry and exit.
fn ready<T>(future: impl std::future::Future<Output = T>) -> T {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::pin!(future).poll(&mut cx) {
        std::task::Poll::Ready(value) => value,
        std::task::Poll::Pending => panic!("a memory publish never waits"),
    }
}

fn queue(c: &mut Criterion) {
    let mut group = c.benchmark_group("queue");
    for subscribers in [0usize, 1, 16] {
        let bus = MemoryBroker::new().connect(BusOptions::default());
        let mut subscriptions: Vec<_> = (0..subscribers)
            .map(|_| ready(bus.subscribe("room1")).expect("subscribes"))
            .collect();
        let payload = Bytes::from_static(b"0123456789abcdef");
        group.throughput(Throughput::Elements(1));
        // One publish to `subscribers` queues and one pop from each.
        group.bench_function(BenchmarkId::new("publish_and_pop", subscribers), |b| {
            b.iter(|| {
                ready(bus.publish("room1", payload.clone())).expect("publishes");
                for subscription in &mut subscriptions {
                    black_box(subscription.try_recv().expect("queued"));
                }
            })
        });
    }
    // The baseline the memory bus is compared with: tokio's broadcast channel.
    for receivers in [1usize, 16] {
        let (sender, _) = tokio::sync::broadcast::channel::<Bytes>(1024);
        let mut all: Vec<_> = (0..receivers).map(|_| sender.subscribe()).collect();
        let payload = Bytes::from_static(b"0123456789abcdef");
        group.bench_function(
            BenchmarkId::new("broadcast_send_and_recv", receivers),
            |b| {
                b.iter(|| {
                    sender.send(payload.clone()).expect("a receiver");
                    for receiver in &mut all {
                        black_box(receiver.try_recv().expect("queued"));
                    }
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, envelopes, ids, channels, queue);
criterion_main!(benches);
