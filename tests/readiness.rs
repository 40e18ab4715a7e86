//! Readiness on every network backend, as a new program uses the library: `hubbus::connect`,
//! then `subscribe` at once, then another, already connected node publishes at once.
//! `subscribe` returning `Ok` means the next publish is delivered; nothing is left to a race
//! with the connection coming up (`connect` waits for the first connection within the connect
//! timeout, and `subscribe` returns only once the broker confirmed the subscription). Each run
//! repeats the sequence twenty times with fresh buses, against the test's own server, because a
//! race loses only now and then.

mod support;

use std::time::Duration;

use bytes::Bytes;
use hubbus::{BusConfig, MessageBus};
use prometheus::Registry;
use support::{NatsServer, RedisServer, eventually};

const TRIES: usize = 20;

/// A bus from `url` with node id `node`, connected the way an application connects.
async fn connect(url: &str, node: &str) -> std::sync::Arc<dyn MessageBus> {
    let mut cfg = BusConfig::from_url(url).expect("a valid URL");
    cfg.node_id = Some(node.to_owned());
    hubbus::connect(&cfg, &Registry::new())
        .await
        .expect("connect")
}

/// Connects a fresh bus and subscribes at once, `TRIES` times, while an already connected
/// node publishes right after each subscribe returned; every publish must arrive.
async fn subscribe_right_after_connect(url: &str) {
    let publisher = connect(url, "publisher").await;
    assert!(
        eventually(Duration::from_secs(10), || publisher
            .health()
            .is_connected())
        .await,
        "the publisher did not connect: {:?}",
        publisher.health()
    );
    let mut missed = Vec::new();
    for attempt in 0..TRIES {
        let channel = format!("ready{attempt}");
        let bus = connect(url, &format!("fresh{attempt}")).await;
        let mut subscription = bus.subscribe(&channel).await.expect("subscribe");
        let receipt = publisher
            .publish(&channel, Bytes::from_static(b"right after"))
            .await
            .expect("publish");
        match tokio::time::timeout(Duration::from_secs(5), subscription.recv()).await {
            Ok(Some(delivery)) if delivery.id() == receipt.id => {
                delivery.ack().await.expect("ack");
            }
            _ => missed.push(attempt),
        }
        drop(subscription);
        bus.close().await;
    }
    publisher.close().await;
    assert!(missed.is_empty(), "missed in tries {missed:?} of {TRIES}");
}

mod redis {
    use super::*;

    #[tokio::test]
    async fn subscribe_right_after_connect_receives_the_next_publish() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        subscribe_right_after_connect(&server.url()).await;
    }
}

mod nats {
    use super::*;

    #[tokio::test]
    async fn subscribe_right_after_connect_receives_the_next_publish() {
        let Some(server) = NatsServer::start() else {
            return;
        };
        subscribe_right_after_connect(&server.url()).await;
    }
}

mod jetstream {
    use super::*;

    #[tokio::test]
    async fn subscribe_right_after_connect_receives_the_next_publish() {
        let Some(server) = NatsServer::start() else {
            return;
        };
        subscribe_right_after_connect(&format!("{}?jetstream=true", server.url())).await;
    }
}
