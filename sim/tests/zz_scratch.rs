use hubbus_sim::harness::*;
use std::time::Duration;
fn ms(x: u64) -> Duration {
    Duration::from_millis(x)
}
#[test]
fn scratch() {
    let sub = |node, channel, leaves: Option<u64>| Subscriber {
        node,
        channel,
        joins: Duration::ZERO,
        leaves: leaves.map(ms),
        slow: None,
    };
    let publ = |node, channel, start, messages, interval, payload| Publisher {
        node,
        channel,
        start: ms(start),
        messages,
        interval: ms(interval),
        payload,
        retries: 0,
    };
    let backend = match std::env::var("B").as_deref() {
        Ok("redis") => Backend::Redis,
        Ok("js") => Backend::JetStream,
        _ => Backend::NatsCore,
    };
    let scenario = Scenario {
        name: "scratch",
        backend,
        nodes: 3,
        channels: 4,
        subscribers: vec![
            sub(2, 2, Some(4879)),
            sub(2, 0, None),
            sub(2, 1, None),
            sub(1, 3, None),
        ],
        publishers: vec![
            publ(2, 3, 1949, 8, 56, 34),
            publ(0, 1, 2966, 30, 184, 118),
            publ(1, 1, 2491, 35, 196, 40),
            publ(1, 1, 1126, 12, 64, 224),
            publ(1, 1, 1515, 17, 115, 233),
        ],
        restarts: vec![],
        faults: vec![
            Fault::CrashBroker {
                at: ms(8927),
                down_for: ms(2239),
            },
            Fault::LatencySpike {
                at: ms(11121),
                lasting: ms(2987),
                latency: ms(169),
            },
            Fault::OneWay {
                node: 1,
                at: ms(5679),
                heal_after: ms(5215),
            },
        ],
        heal_bound: Duration::from_secs(5),
        linger: Scenario::linger_for(backend),
    };
    let seed: u64 = std::env::var("S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16469489841713644346);
    let run = run(&scenario, seed).unwrap();
    let filter = std::env::var("F").unwrap_or_default();
    for line in run.trace() {
        if line.contains(&filter) && !line.contains("received") && !line.contains("published") {
            println!("{line}");
        }
    }
    println!("{:?}", run.check(&scenario));
}
