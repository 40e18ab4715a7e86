//! The metrics promise: every collector is registered into the caller's registry under the
//! plan's names, and counts what happened. The exposition text after a known sequence of
//! operations is pinned by a snapshot.

use std::sync::Arc;

use hubbus::{
    BusConfig, BusError, BusMetrics, BusOptions, Hub, HubOptions, MemoryBroker, MessageBus, NodeId,
};
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

/// The `published_total{backend="memory"}` series of each `node` in `registry`.
fn published_by_node(registry: &Registry, namespace: &str) -> Vec<(String, u64)> {
    let name = format!("{namespace}_bus_published_total");
    let families = registry.gather();
    let family = families
        .iter()
        .find(|family| family.name() == name)
        .unwrap_or_else(|| panic!("{name} missing"));
    let mut found: Vec<(String, u64)> = family
        .get_metric()
        .iter()
        .filter(|metric| {
            metric
                .get_label()
                .iter()
                .any(|label| label.name() == "backend" && label.value() == "memory")
        })
        .map(|metric| {
            let node = metric
                .get_label()
                .iter()
                .find(|label| label.name() == "node")
                .map(|label| label.value().to_owned())
                .unwrap_or_else(|| panic!("a series of {name} without a node label"));
            (node, metric.get_counter().get_value() as u64)
        })
        .collect();
    found.sort();
    found
}

#[tokio::test]
async fn two_buses_share_one_registry() {
    let registry = Registry::new();
    let a = hubbus::connect(
        &BusConfig::from_url("memory://?node_id=hub-a").unwrap(),
        &registry,
    )
    .await
    .unwrap();
    let b = hubbus::connect(
        &BusConfig::from_url("memory://?node_id=hub-b").unwrap(),
        &registry,
    )
    .await
    .unwrap();
    for _ in 0..2 {
        a.publish("room1", "x".into()).await.unwrap();
    }
    for _ in 0..3 {
        b.publish("room1", "y".into()).await.unwrap();
    }
    assert_eq!(
        published_by_node(&registry, "gohub"),
        [("hub-a".to_owned(), 2), ("hub-b".to_owned(), 3)]
    );
    // Every family carries both nodes, and the plan's names are there.
    let families = registry.gather();
    for family in &families {
        let mut nodes: Vec<&str> = family
            .get_metric()
            .iter()
            .flat_map(|metric| metric.get_label())
            .filter(|label| label.name() == "node")
            .map(|label| label.value())
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        assert_eq!(nodes, ["hub-a", "hub-b"], "{}", family.name());
    }
    let names: Vec<&str> = families.iter().map(|family| family.name()).collect();
    for name in [
        "gohub_bus_redis_publish_errors_total",
        "gohub_bus_redis_latency_seconds",
        "gohub_bus_nats_reconnects_total",
        "gohub_bus_nats_ack_pending",
        "gohub_bus_published_total",
        "gohub_bus_received_total",
        "gohub_bus_dropped_total",
        "gohub_bus_publish_errors_total",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    // A hub on a bus counts under that bus's node.
    let hub = Hub::new(a.clone());
    hub.publish("room1", "z".into()).await.unwrap();
    let text = exposition(&registry);
    assert!(
        text.contains(r#"gohub_bus_published_total{backend="hub",node="hub-a"} 1"#),
        "{text}"
    );
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn a_second_bus_with_the_same_node_id_is_refused_on_one_registry() {
    let registry = Registry::new();
    let cfg = BusConfig::from_url("memory://?node_id=twin").unwrap();
    let first = hubbus::connect(&cfg, &registry).await.unwrap();
    first.publish("room1", "x".into()).await.unwrap();
    let error = match hubbus::connect(&cfg, &registry).await {
        Ok(_) => panic!("a second bus with node id `twin` was accepted"),
        Err(error) => error,
    };
    let BusError::Config { key, reason, .. } = &error else {
        panic!("{error:?}");
    };
    assert_eq!(key, "node_id");
    assert!(reason.contains("`twin`"), "{reason}");
    assert!(reason.contains("connect_with_metrics"), "{reason}");
    // The refusal left the first bus's series alone and added none.
    assert_eq!(
        published_by_node(&registry, "gohub"),
        [("twin".to_owned(), 1)]
    );
    // Another namespace on the same registry is another set of names: no conflict.
    let other = BusConfig::from_url("memory://?node_id=twin&namespace=other").unwrap();
    hubbus::connect(&other, &registry).await.unwrap();
    first.close().await;
}

#[tokio::test]
async fn node_labelled_and_shared_metrics_do_not_mix_on_one_registry() {
    let registry = Registry::new();
    BusMetrics::register(&registry, "gohub").unwrap();
    let cfg = BusConfig::from_url("memory://?node_id=hub-a").unwrap();
    let error = match hubbus::connect(&cfg, &registry).await {
        Ok(_) => panic!("node-labelled collectors were registered next to unlabelled ones"),
        Err(error) => error,
    };
    assert!(
        matches!(&error, BusError::Config { key, reason, .. }
            if key == "namespace" && reason.contains("node")),
        "{error:?}"
    );
    // Nothing half-registered: the registry still gathers the shared collectors only.
    assert!(registry.gather().iter().all(|family| {
        family.get_metric().iter().all(|metric| {
            metric
                .get_label()
                .iter()
                .all(|label| label.name() != "node")
        })
    }));
}

#[tokio::test]
async fn buses_sharing_one_bus_metrics_count_together() {
    let registry = Registry::new();
    let metrics = BusMetrics::register(&registry, "gohub").unwrap();
    let mut buses = Vec::new();
    for node in ["hub-a", "hub-b"] {
        let cfg = BusConfig::from_url(&format!("memory://?node_id={node}")).unwrap();
        buses.push(
            hubbus::connect_with_metrics(&cfg, metrics.clone())
                .await
                .unwrap(),
        );
    }
    for bus in &buses {
        bus.publish("room1", "x".into()).await.unwrap();
    }
    let text = exposition(&registry);
    assert!(
        text.contains(r#"gohub_bus_published_total{backend="memory"} 2"#),
        "{text}"
    );
    assert!(!text.contains("node="), "{text}");
}

#[test]
fn one_registry_takes_one_node_once() {
    let registry = Registry::new();
    let a = NodeId::new("hub-a").unwrap();
    BusMetrics::register_for_node(&registry, "gohub", &a).unwrap();
    BusMetrics::register_for_node(&registry, "gohub", &NodeId::new("hub-b").unwrap()).unwrap();
    assert!(matches!(
        BusMetrics::register_for_node(&registry, "gohub", &a),
        Err(BusError::Config { ref key, .. }) if key == "node_id"
    ));
    assert!(matches!(
        BusMetrics::register(&registry, "gohub"),
        Err(BusError::Config { ref key, .. }) if key == "namespace"
    ));
}
