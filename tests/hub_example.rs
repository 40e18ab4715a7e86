//! The example hub (`examples/hub.rs`) over real TCP, used the way a browser (WebSocket) and a
//! backend service (HTTP) would use it: what it delivers, what it refuses, and that refusing
//! never breaks a connection or the server.

#[allow(
    dead_code,
    reason = "the example's `main` and CLI belong to its binary; these tests drive `serve`"
)]
#[path = "../examples/hub.rs"]
mod hub_example;
mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hubbus::{BusConfig, Hub};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any one expected event may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(10);

const NODE: &str = "test-hub";

/// Small, so oversized payloads are cheap to build.
const MAX_PAYLOAD: usize = 1024;

/// A hub served on a free port of 127.0.0.1, stopped by [`TestHub::stop`].
struct TestHub {
    hub: Arc<Hub>,
    base: String,
    http: reqwest::Client,
    stop: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
}

impl TestHub {
    async fn start() -> Self {
        let url = format!("memory://?node_id={NODE}&max_payload={MAX_PAYLOAD}&subscriber_queue=16");
        Self::start_on(&url).await
    }

    /// A hub on the bus `url` describes.
    async fn start_on(url: &str) -> Self {
        let cfg = BusConfig::from_url(url).expect("valid bus URL");
        let (hub, registry) = hub_example::build_hub(&cfg).await.expect("hub starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free port");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(hub_example::serve(listener, hub.clone(), registry, async {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::builder()
            .timeout(DEADLINE)
            .build()
            .expect("HTTP client");
        TestHub {
            hub,
            base,
            http,
            stop,
            server,
        }
    }

    async fn client(&self) -> WsClient {
        let url = format!("{}/ws", self.base.replacen("http", "ws", 1));
        let (ws, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
            .await
            .expect("WebSocket handshake in time")
            .expect("WebSocket handshake");
        WsClient { ws }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET answered")
    }

    async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST answered")
    }

    /// Shuts the server down and checks that it stops in time.
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(DEADLINE, self.server)
            .await
            .expect("server stops in time")
            .expect("server task")
            .expect("server ends cleanly");
        self.hub.close().await;
    }
}

/// A WebSocket client speaking the hub's JSON protocol.
struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    async fn send_message(&mut self, message: Message) {
        tokio::time::timeout(DEADLINE, self.ws.send(message))
            .await
            .expect("frame sent in time")
            .expect("frame sent");
    }

    async fn send_text(&mut self, text: impl Into<String>) {
        self.send_message(Message::text(text.into())).await;
    }

    async fn send(&mut self, frame: Value) {
        self.send_text(frame.to_string()).await;
    }

    /// The next frame from the hub, skipping control frames; fails on close or after
    /// [`DEADLINE`].
    async fn next_frame(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("a frame within the deadline")
                .expect("connection open")
                .expect("a valid frame");
            match message {
                Message::Text(text) => return serde_json::from_str(&text).expect("JSON frame"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    async fn expect_error(&mut self, about: &str) -> String {
        let frame = self.next_frame().await;
        assert_eq!(
            frame["op"], "error",
            "expected an error about {about}: {frame}"
        );
        let reason = frame["reason"]
            .as_str()
            .expect("error frames carry a reason");
        reason.to_owned()
    }

    async fn subscribe(&mut self, channel: &str) {
        self.send(json!({"op": "subscribe", "channel": channel}))
            .await;
        assert_eq!(
            self.next_frame().await,
            json!({"op": "subscribed", "channel": channel})
        );
    }

    /// Publishes and returns the id from the hub's acknowledgement. Only for clients not
    /// subscribed to `channel`, whose next frame is therefore the acknowledgement.
    async fn publish(&mut self, channel: &str, data: Value) -> String {
        self.send(json!({"op": "publish", "channel": channel, "data": data}))
            .await;
        let ack = self.next_frame().await;
        assert_eq!(ack["op"], "published", "{ack}");
        assert_eq!(ack["channel"], channel);
        ack["id"]
            .as_str()
            .expect("the ack carries the id")
            .to_owned()
    }

    /// The next frame, which must be a message on `channel` carrying `data`; returns its id.
    async fn expect_message(&mut self, channel: &str, data: &Value) -> String {
        let frame = self.next_frame().await;
        assert_eq!(frame["op"], "message", "{frame}");
        assert_eq!(frame["channel"], channel);
        assert_eq!(&frame["data"], data);
        assert_eq!(frame["origin"], NODE);
        frame["id"]
            .as_str()
            .expect("messages carry an id")
            .to_owned()
    }
}

#[tokio::test]
async fn a_subscriber_receives_another_clients_publish_exactly_once() {
    let hub = TestHub::start().await;
    let mut alice = hub.client().await;
    let mut bob = hub.client().await;
    alice.subscribe("room1").await;

    let hello = json!({"text": "hello", "n": [1, 2, 3]});
    let id = bob.publish("room1", hello.clone()).await;
    assert_eq!(alice.expect_message("room1", &hello).await, id);

    // A duplicate of `hello` would arrive before the sentinel.
    let sentinel = json!("sentinel");
    let sentinel_id = bob.publish("room1", sentinel.clone()).await;
    assert_eq!(alice.expect_message("room1", &sentinel).await, sentinel_id);
    assert_ne!(id, sentinel_id);
    hub.stop().await;
}

#[tokio::test]
async fn subscribing_twice_still_delivers_each_message_once() {
    let hub = TestHub::start().await;
    let mut alice = hub.client().await;
    let mut bob = hub.client().await;
    alice.subscribe("room1").await;
    alice.subscribe("room1").await;

    bob.publish("room1", json!(1)).await;
    alice.expect_message("room1", &json!(1)).await;
    bob.publish("room1", json!(2)).await;
    alice.expect_message("room1", &json!(2)).await;
    hub.stop().await;
}

#[tokio::test]
async fn an_unsubscribed_client_stops_receiving_the_channel() {
    let hub = TestHub::start().await;
    let mut alice = hub.client().await;
    let mut bob = hub.client().await;
    alice.subscribe("room1").await;
    alice.subscribe("room2").await;
    alice
        .send(json!({"op": "unsubscribe", "channel": "room1"}))
        .await;
    assert_eq!(
        alice.next_frame().await,
        json!({"op": "unsubscribed", "channel": "room1"})
    );

    bob.publish("room1", json!("missed")).await;
    bob.publish("room2", json!("seen")).await;
    alice.expect_message("room2", &json!("seen")).await;
    hub.stop().await;
}

#[tokio::test]
async fn a_payload_that_is_not_json_is_delivered_as_a_string() {
    let hub = TestHub::start().await;
    let mut alice = hub.client().await;
    alice.subscribe("room1").await;

    hub.hub
        .publish("room1", Bytes::from_static(b"plain \xff text"))
        .await
        .expect("published");
    alice
        .expect_message("room1", &json!("plain \u{fffd} text"))
        .await;
    hub.stop().await;
}

/// A service that is not a hub announces an event with a plain `redis-cli PUBLISH`: a
/// WebSocket client of the hub receives it as a message from the external origin, its JSON as
/// the data.
#[tokio::test]
async fn redis_cli_publish_reaches_a_websocket_client() {
    let Some(server) = support::RedisServer::start() else {
        return;
    };
    let hub = TestHub::start_on(&format!("{}?node_id={NODE}", server.url())).await;
    let mut alice = hub.client().await;
    alice.subscribe("room1").await;

    assert_eq!(
        server.cli(&["PUBLISH", "room1", r#"{"text":"hi"}"#]),
        "1",
        "the hub subscribes room1 on Redis"
    );
    let frame = alice.next_frame().await;
    assert_eq!(frame["op"], "message", "{frame}");
    assert_eq!(frame["channel"], "room1");
    assert_eq!(frame["data"], json!({"text": "hi"}));
    assert_eq!(frame["origin"], "external");
    assert!(
        frame["id"].as_str().is_some_and(|id| !id.is_empty()),
        "{frame}"
    );
    hub.stop().await;
}

#[tokio::test]
async fn metrics_expose_the_bus_collectors() {
    let hub = TestHub::start().await;
    let response = hub.get("/metrics").await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(content_type, "text/plain; version=0.0.4");
    let text = response.text().await.unwrap();
    for name in [
        "gohub_bus_published_total",
        "gohub_bus_redis_publish_errors_total",
        "gohub_bus_redis_latency_seconds",
        "gohub_bus_nats_reconnects_total",
        "gohub_bus_nats_ack_pending",
        "gohub_bus_dropped_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing from:\n{text}"
        );
    }
    hub.stop().await;
}

#[tokio::test]
async fn healthz_reports_a_connected_bus() {
    let hub = TestHub::start().await;
    let response = hub.get("/healthz").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"status": "connected", "node": NODE}));
    hub.stop().await;
}

#[tokio::test]
async fn the_live_page_is_served_at_the_root_and_uses_only_the_documented_endpoints() {
    let hub = TestHub::start().await;
    let response = hub.get("/").await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()[reqwest::header::CONTENT_TYPE].clone();
    assert!(content_type.to_str().unwrap().starts_with("text/html"));
    let page = response.text().await.unwrap();
    assert!(page.starts_with("<!doctype html>"));
    // Self-contained: no external scripts, styles or images.
    for external in ["src=\"http", "href=\"http", "@import", "src=\"//"] {
        assert!(!page.contains(external), "the page loads {external}...");
    }
    // What it fetches is what the protocol documents.
    assert!(page.contains("\"/healthz\"") && page.contains("\"/ws\""));
    hub.stop().await;
}

#[tokio::test]
async fn bad_websocket_input_gets_error_frames_and_the_connection_keeps_working() {
    let hub = TestHub::start().await;
    let mut alice = hub.client().await;

    alice.send_text("this is not JSON").await;
    assert!(alice.expect_error("non-JSON").await.contains("not JSON"));

    alice.send(json!({"op": "shout", "channel": "room1"})).await;
    alice.expect_error("an unknown op").await;

    alice.send(json!({"channel": "room1"})).await;
    alice.expect_error("a missing op").await;

    alice
        .send(json!({"op": "subscribe", "channel": "a..b"}))
        .await;
    assert!(alice.expect_error("a..b").await.contains("invalid channel"));

    alice
        .send(json!({"op": "publish", "channel": "a b", "data": 1}))
        .await;
    assert!(alice.expect_error("a b").await.contains("invalid channel"));

    let oversized = "x".repeat(MAX_PAYLOAD + 1);
    alice
        .send(json!({"op": "publish", "channel": "room1", "data": oversized}))
        .await;
    assert!(
        alice
            .expect_error("oversized data")
            .await
            .contains("exceeds")
    );

    alice.send_message(Message::binary(vec![1, 2, 3])).await;
    alice.expect_error("a binary frame").await;

    // Still the same connection, still fully working.
    alice.subscribe("room1").await;
    alice
        .send(json!({"op": "publish", "channel": "room1", "data": "after"}))
        .await;
    // The client is subscribed to its own channel: the ack and the delivery race each other.
    let mut frames = [alice.next_frame().await, alice.next_frame().await];
    frames.sort_by_key(|frame| frame["op"].as_str().map(str::to_owned));
    let [message, published] = frames;
    assert_eq!(published["op"], "published");
    assert_eq!(message["op"], "message");
    assert_eq!(message["data"], "after");
    assert_eq!(message["id"], published["id"]);
    hub.stop().await;
}

#[tokio::test]
async fn http_publish_reaches_subscribers_and_bad_requests_are_refused() {
    let hub = TestHub::start().await;
    let mut alice = hub.client().await;
    alice.subscribe("room1").await;

    let response = hub.post("/publish/room1", r#"{"n": 1}"#).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    let id = body["id"].as_str().expect("202 carries the id").to_owned();
    assert_eq!(alice.expect_message("room1", &json!({"n": 1})).await, id);

    let response = hub.post("/publish/a..b", "1").await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("invalid channel"));

    let response = hub.post("/publish/room1", "not JSON").await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("not JSON"));

    // Over the bus's limit, refused by the bus; far over it, refused before it is read.
    let over = json!("x".repeat(MAX_PAYLOAD)).to_string();
    assert_eq!(hub.post("/publish/room1", over).await.status(), 413);
    let far_over = json!("x".repeat(1024 * 1024)).to_string();
    assert_eq!(hub.post("/publish/room1", far_over).await.status(), 413);

    // Nothing refused was delivered, and the server still serves.
    let response = hub.post("/publish/room1", r#"{"n": 2}"#).await;
    assert_eq!(response.status(), 202);
    alice.expect_message("room1", &json!({"n": 2})).await;
    assert_eq!(hub.get("/healthz").await.status(), 200);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_does_not_hold_up_the_hub() {
    let hub = TestHub::start().await;
    let mut stalled = hub.client().await;
    stalled.subscribe("room1").await;
    let mut reader = hub.client().await;
    reader.subscribe("room1").await;

    // About 20 MB for a client that reads nothing: far more than socket buffers hold.
    let filler = Bytes::from(json!("x".repeat(1000)).to_string());
    let flood = async {
        for _ in 0..20_000 {
            hub.hub.publish("room1", filler.clone()).await.unwrap();
        }
        hub.hub
            .publish("room1", "\"sentinel\"".into())
            .await
            .unwrap();
    };
    tokio::time::timeout(DEADLINE, flood)
        .await
        .expect("publishing never waits for a slow client");

    // The reader falls behind too and loses old messages, but the newest always arrives.
    let reader_saw_sentinel = async { while reader.next_frame().await["data"] != "sentinel" {} };
    tokio::time::timeout(DEADLINE, reader_saw_sentinel)
        .await
        .expect("the reading client gets the newest message");

    let metrics = hub.get("/metrics").await.text().await.unwrap();
    let dropped = metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(&format!(
                r#"gohub_bus_dropped_total{{backend="hub",node="{NODE}",reason="slow_consumer"}} "#
            ))
        })
        .and_then(|value| value.parse::<u64>().ok())
        .expect("the hub's slow-consumer drops are exported");
    assert!(
        dropped > 0,
        "falling behind is counted as drops, not waited for"
    );
    drop(stalled);
    hub.stop().await;
}

#[tokio::test]
async fn shutdown_tells_websocket_clients_the_hub_is_going_away() {
    let hub = TestHub::start().await;
    let mut alice = hub.client().await;
    alice.subscribe("room1").await;

    let _ = hub.stop.send(());
    let close = tokio::time::timeout(DEADLINE, alice.ws.next())
        .await
        .expect("a close frame in time")
        .expect("connection open")
        .expect("a valid frame");
    match close {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected a going-away close frame, got {other:?}"),
    }
    tokio::time::timeout(DEADLINE, hub.server)
        .await
        .expect("server stops in time")
        .expect("server task")
        .expect("server ends cleanly");
    hub.hub.close().await;
}

/// On JetStream the example hub never drops a client's messages silently: a client that stops
/// reading holds the hub back for `lag_timeout` at most, and is then given up on, and its
/// WebSocket is closed with code 1008 and a reason that says it lagged.
#[tokio::test]
async fn a_client_that_stops_reading_on_jetstream_is_closed_as_lagged() {
    const CHUNK: usize = 60 * 1024;
    let Some(server) = support::NatsServer::start() else {
        return;
    };
    let url = format!(
        "{}?jetstream=true&node_id=example-hub&subscriber_queue=4&lag_timeout=500ms&max_payload={}",
        server.url(),
        CHUNK + 1024
    );
    let hub = TestHub::start_on(&url).await;
    let mut stalled = hub.client().await;
    stalled.subscribe("room1").await;

    // Far more than the socket buffers, the hub's outbox and its queue hold together, while the
    // client reads nothing.
    let mut publisher_cfg = BusConfig::from_url(&url).expect("valid bus URL");
    publisher_cfg.node_id = Some("publisher".into());
    let publisher = hubbus::connect(&publisher_cfg, &prometheus::Registry::new())
        .await
        .expect("publisher");
    let chunk = Bytes::from(format!("\"{}\"", "x".repeat(CHUNK - 2)));
    let lagged = || async {
        let text = hub.get("/metrics").await.text().await.unwrap_or_default();
        text.lines().any(|line| {
            line.starts_with(r#"gohub_bus_lagged_total{backend="hub",node="example-hub"} 1"#)
        })
    };
    let mut sent = 0;
    while !lagged().await {
        assert!(sent < 2000, "the stalled client was never given up on");
        for _ in 0..20 {
            publisher
                .publish("room1", chunk.clone())
                .await
                .expect("publish");
            sent += 1;
        }
    }

    // The client reads again: what was handed to its socket, then the close with the reason.
    let close = tokio::time::timeout(DEADLINE * 3, async {
        while let Some(message) = stalled.ws.next().await {
            match message {
                Ok(Message::Close(frame)) => return frame,
                Ok(_) => continue,
                Err(error) => panic!("the connection broke instead of closing: {error}"),
            }
        }
        None
    })
    .await
    .expect("the hub closed the lagging client's socket");
    let frame = close.expect("a close frame with a reason");
    assert_eq!(u16::from(frame.code), 1008, "{frame:?}");
    assert!(frame.reason.starts_with("lagged"), "{frame:?}");
    publisher.close().await;
    hub.stop().await;
}
