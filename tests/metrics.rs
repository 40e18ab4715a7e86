//! The metrics promise: every collector is registered into the caller's registry under the
//! plan's names, and counts what happened. The exposition text after a known sequence of
//! operations is pinned by a snapshot.

use std::sync::Arc;

use hubbus::{BusError, BusMetrics, BusOptions, Hub, HubOptions, MemoryBroker, MessageBus, NodeId};
use prometheus::{Encoder, Registry, TextEncoder};

fn exposition(registry: &Registry) -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn exposition_after_a_known_sequence() {
    let registry = Registry::new();
    let metrics = BusMetrics::register(&registry, "gohub").unwrap();
    let options = |node: &str| BusOptions {
        node_id: NodeId::new(node).unwrap(),
        subscriber_queue: 2,
        max_payload: 16,
        metrics: metrics.clone(),
        ..Default::default()
    };
    let broker = MemoryBroker::new();
    let a: Arc<dyn MessageBus> = Arc::new(broker.connect(options("a")));
    let b: Arc<dyn MessageBus> = Arc::new(broker.connect(options("b")));

    // b's subscriber never reads: 5 published, 2 kept, 3 dropped as a slow consumer.
    let slow = b.subscribe("room1").await.unwrap();
    for i in 0..5u8 {
        a.publish("room1", vec![i].into()).await.unwrap();
    }
    assert_eq!(slow.dropped(), 3);
    // Two refused publishes.
    assert!(matches!(
        a.publish("bad channel", "x".into()).await,
        Err(BusError::InvalidChannel { .. })
    ));
    assert!(matches!(
        a.publish("room1", vec![0; 17].into()).await,
        Err(BusError::PayloadTooLarge { .. })
    ));
    // A hub on b with one subscriber receives one message from a.
    let hub = Hub::with_options(
        b.clone(),
        HubOptions {
            metrics: Some(metrics.clone()),
            ..Default::default()
        },
    );
    let mut local = hub.subscribe("room2").await.unwrap();
    a.publish("room2", "hi".into()).await.unwrap();
    assert_eq!(local.recv().await.unwrap().payload().as_ref(), b"hi");
    // The hub publishes one message (delivered locally, echo skipped) and refuses one.
    hub.publish("room2", "back".into()).await.unwrap();
    assert_eq!(local.recv().await.unwrap().payload().as_ref(), b"back");
    assert!(hub.publish("room..2", "x".into()).await.is_err());
    metrics.nats_ack_pending().set(0);

    let text = exposition(&registry);
    for name in [
        "gohub_bus_redis_publish_errors_total",
        "gohub_bus_redis_latency_seconds",
        "gohub_bus_nats_reconnects_total",
        "gohub_bus_nats_ack_pending",
    ] {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
    }
    insta::assert_snapshot!(text);
}

#[test]
fn the_namespace_is_configurable_and_checked() {
    let registry = Registry::new();
    BusMetrics::register(&registry, "chat").unwrap();
    let names: Vec<String> = registry
        .gather()
        .iter()
        .map(|family| family.name().to_owned())
        .collect();
    assert!(names.contains(&"chat_bus_redis_latency_seconds".to_owned()));
    assert!(matches!(
        BusMetrics::register(&registry, "chat"),
        Err(BusError::Config { ref key, .. }) if key == "namespace"
    ));
    assert!(BusMetrics::unregistered("").is_err());
    assert!(BusMetrics::unregistered("has-dash").is_err());
}
