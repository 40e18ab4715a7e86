//! JetStream nodes on a test's own `nats-server`, and a plain connection to administer the
//! server behind the bus's back.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hubbus::backend::nats::jetstream::JetStreamBus;
use hubbus::backend::nats::{
    AsyncNatsLink, JetStreamOptions, LinkOptions, LinkPublish, NatsLink, NatsOptions,
};
use hubbus::{BusError, BusMetrics, BusOptions, MessageBus, NodeId};
use prometheus::Registry;

use super::links::LinkKind;
use super::{NatsServer, eventually, metric};

/// Generous: real processes on a busy 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A quick reconnect and a 1 s connect timeout, so restart tests are short.
pub fn link_options(url: String) -> LinkOptions {
    LinkOptions {
        url,
        reconnect_wait: Duration::from_millis(100),
        connect_timeout: Duration::from_secs(1),
        subscription_capacity: 8192,
        ..LinkOptions::default()
    }
}

/// One bus node and the metrics it counts into (namespace `test`).
pub struct JsNode {
    pub bus: Arc<JetStreamBus>,
    pub metrics: BusMetrics,
    pub registry: Registry,
}

impl JsNode {
    /// The sum of `test_<name>` over the series whose labels include all of `labels` (counters
    /// and gauges alike).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.registry, &format!("test_{name}"), labels)
    }

    /// The bus as a hub sees it.
    pub fn dyn_bus(&self) -> Arc<dyn MessageBus> {
        self.bus.clone()
    }
}

/// Starts node `name` on `url` (it may not be connected yet); `adjust` changes its options.
pub async fn start_js_node(
    url: String,
    name: &str,
    js: JetStreamOptions,
    adjust: impl FnOnce(&mut BusOptions),
) -> Result<JsNode, BusError> {
    start_js_node_on(LinkKind::AsyncNats, url, name, js, adjust).await
}

/// [`start_js_node`] over a link of `kind`.
pub async fn start_js_node_on(
    kind: LinkKind,
    url: String,
    name: &str,
    js: JetStreamOptions,
    adjust: impl FnOnce(&mut BusOptions),
) -> Result<JsNode, BusError> {
    let registry = Registry::new();
    let metrics = BusMetrics::register(&registry, "test").unwrap();
    let mut options = BusOptions {
        node_id: NodeId::new(name).unwrap(),
        metrics: metrics.clone(),
        ..BusOptions::default()
    };
    adjust(&mut options);
    let mut nats = NatsOptions::new(url.clone());
    nats.link = link_options(url);
    nats.jetstream = Some(js);
    let link = kind.connect(nats.link.clone()).await?;
    let bus = JetStreamBus::start(options, nats, link).await?;
    Ok(JsNode {
        bus: Arc::new(bus),
        metrics,
        registry,
    })
}

/// A node that is connected and has its stream.
pub async fn js_node(server: &NatsServer, name: &str, js: JetStreamOptions) -> JsNode {
    js_node_with(server, name, js, |_| {}).await
}

/// [`js_node`] over a link of `kind`.
pub async fn js_node_on(
    kind: LinkKind,
    server: &NatsServer,
    name: &str,
    js: JetStreamOptions,
) -> JsNode {
    let node = start_js_node_on(kind, server.url(), name, js, |_| {})
        .await
        .expect("start");
    connected(node, name).await
}

/// [`js_node`] with adjusted options.
pub async fn js_node_with(
    server: &NatsServer,
    name: &str,
    js: JetStreamOptions,
    adjust: impl FnOnce(&mut BusOptions),
) -> JsNode {
    let node = start_js_node(server.url(), name, js, adjust)
        .await
        .expect("start");
    connected(node, name).await
}

/// `node` once it is connected and has its stream.
async fn connected(node: JsNode, name: &str) -> JsNode {
    assert!(
        eventually(DEADLINE, || node.bus.health().is_connected()).await,
        "{name} did not connect: {:?}",
        node.bus.health()
    );
    node
}

/// A plain connection for administering the server behind the bus's back.
pub async fn admin_link(server: &NatsServer) -> AsyncNatsLink {
    AsyncNatsLink::connect(link_options(server.url()))
        .await
        .unwrap()
}

/// One JetStream API request, its JSON reply.
pub async fn admin(
    link: &AsyncNatsLink,
    subject: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let reply = link
        .request(
            LinkPublish {
                subject: subject.to_owned(),
                reply: None,
                headers: Vec::new(),
                payload: Bytes::from(body.to_string()),
            },
            DEADLINE,
        )
        .await
        .expect("JetStream API request");
    serde_json::from_slice(&reply.payload).expect("JSON reply")
}

/// The names of the consumers of the default stream.
pub async fn consumer_names(link: &AsyncNatsLink) -> Vec<String> {
    let reply = admin(link, "$JS.API.CONSUMER.NAMES.HUBBUS", serde_json::json!({})).await;
    reply["consumers"]
        .as_array()
        .map(|names| {
            names
                .iter()
                .filter_map(|name| name.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Listens for node-id announcements (`here <instance>`) on the bus's claim subjects; start it
/// before the process to wait for.
pub async fn announcements(link: &AsyncNatsLink) -> hubbus::backend::nats::LinkSubscription {
    link.subscribe("hubbus.$node.>").await.unwrap()
}

/// Waits (up to [`DEADLINE`]) until a process announces that it holds its node id: from then
/// on it answers a newcomer with the same id. Its own question comes first; it is skipped.
pub async fn until_announced(announcements: &mut hubbus::backend::nats::LinkSubscription) {
    use futures_util::StreamExt;
    let announced = tokio::time::timeout(DEADLINE, async {
        while let Some(message) = announcements.next().await {
            if message.payload.starts_with(b"here ") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(announced, Ok(true), "no process announced its node id");
}
