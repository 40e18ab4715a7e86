//! A small WebSocket hub embedding the bus: clients subscribe to channels and publish JSON over
//! one WebSocket each, and every hub process started with the same bus shares one stream of
//! messages.
//!
//! ```text
//! cargo run --example hub -- --listen 127.0.0.1:8080 --bus memory://
//! cargo run --example hub -- --listen 127.0.0.1:8081 --bus redis://127.0.0.1:6379 --node-id hub-b
//! cargo run --example hub -- --listen 127.0.0.1:8082 --bus 'nats://127.0.0.1:4222?jetstream=true'
//! cargo run --example hub -- --listen 127.0.0.1:0 --bus 'memory://?max_payload=65536' --node-id hub-a
//! ```
//!
//! `--listen` takes port 0 too; the address actually bound is printed on stdout. Ctrl-C stops
//! accepting, tells every WebSocket client the hub is going away, then closes the hub and the bus.
//!
//! Without `--node-id` (and without `node_id` in the bus URL) the hub names itself
//! `<host name>-<port>`: stable across restarts of the same hub, distinct between hubs on one
//! host. JetStream needs exactly that: the node id names the hub's durable consumer, so a hub
//! restarted with the same id receives what was published while it was away.
//!
//! # Endpoints
//!
//! - `GET /`: a live page (`examples/hub_page.html`, built into the binary): this hub's node and
//!   bus health, channels to join and leave, a box to publish JSON or text, and the messages as
//!   they arrive with their channel, origin, id and publish-to-receive latency. It uses only
//!   `/healthz` and `/ws`, so it doubles as a reference client.
//! - `GET /ws`: the WebSocket protocol below.
//! - `POST /publish/{channel}` with a JSON body: `202 {"id":ID}`; `400 {"error":..}` for an
//!   invalid channel or a body that is not JSON; `413` for a body over the bus's payload limit.
//! - `GET /metrics`: the Prometheus text exposition of the bus's collectors.
//! - `GET /healthz`: `200 {"status":"connected"|"degraded","node":..}` while the bus works,
//!   `503 {"status":"down","reason":..}` when it does not.
//!
//! # WebSocket protocol
//!
//! One JSON object per text frame. The client sends
//!
//! ```text
//! {"op":"subscribe","channel":"room1"}
//! {"op":"unsubscribe","channel":"room1"}
//! {"op":"publish","channel":"room1","data":{"any":"JSON"}}
//! ```
//!
//! and the hub answers `{"op":"subscribed","channel":..}`, `{"op":"unsubscribed","channel":..}`
//! and `{"op":"published","channel":..,"id":..}`, and delivers
//! `{"op":"message","channel":..,"data":..,"id":..,"origin":..,"published_at_ms":..}` for every
//! message on a subscribed channel, its own publishes included (`published_at_ms`: when it was
//! published, milliseconds since the Unix epoch with a fraction, by the publishing node's
//! clock). Anything it cannot act on (a frame that is not
//! JSON, an unknown op, an invalid channel, data over the payload limit) gets
//! `{"op":"error","reason":..}` and the connection stays open.
//!
//! A client that reads slowly never slows anyone down for long. On an at-most-once bus (memory,
//! Redis, NATS Core) it loses its oldest messages: each subscription's queue in the hub is
//! bounded, and what overflows is dropped and counted in
//! `gohub_bus_dropped_total{backend="hub",reason="slow_consumer"}`. On JetStream nothing is
//! dropped silently: the hub waits for the client up to the bus's `lag_timeout`, then gives up
//! on it, and the hub closes that client's WebSocket with code 1008 and the reason `lagged: …`
//! (counted in `gohub_bus_lagged_total{backend="hub"}`); the client should reconnect and catch
//! up from its own source of truth. A message handed to a client's socket is acknowledged. A
//! client whose socket takes no frame for 10 seconds is disconnected.
//!
//! On the bus a message's payload is the JSON text of `data`. A payload that is not JSON (put on
//! the bus by some other publisher) is still delivered, with `data` the payload as a JSON string
//! (invalid UTF-8 replaced), so a client sees everything on its channels.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use clap::Parser;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use hubbus::{BusConfig, BusError, Delivery, HealthState, Hub, Subscription, SubscriptionEnd};
use prometheus::{Encoder, Registry, TextEncoder};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Frames waiting for one client's socket. Deliveries are not queued here but in the hub's
/// per-subscriber queues, which drop the oldest and count it
/// (`gohub_bus_dropped_total{backend="hub",reason="slow_consumer"}`): a slow client loses old
/// messages, the hub never waits for it.
const OUTBOX_FRAMES: usize = 64;

/// How long the socket may refuse one frame before the client is disconnected: a client that
/// stopped reading altogether should not keep its subscriptions and memory forever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Channels one connection may subscribe to; each costs a task and a bounded queue.
const MAX_SUBSCRIPTIONS: usize = 256;

/// Room for the JSON around `data` in a frame. A frame may hold up to twice the payload limit
/// plus this, so data that is only somewhat too large gets an error frame while a client still
/// cannot make the hub buffer the protocol's 64 MiB default.
const FRAME_OVERHEAD: usize = 64 * 1024;

/// How long shutdown waits for WebSocket connections to say goodbye.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The command line.
#[derive(Debug, Parser)]
#[command(about = "A WebSocket hub on a hubbus message bus")]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The bus, as a URL: memory://, noop://, redis://, rediss://, redis+sentinel://,
    /// redis+cluster://, nats:// (add ?jetstream=true for JetStream), with settings as query
    /// parameters.
    #[arg(long, default_value = "memory://")]
    bus: String,
    /// This hub's node id (the `origin` of what it publishes); overrides the bus URL's.
    #[arg(long)]
    node_id: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let mut cfg = BusConfig::from_url(&args.bus).context("--bus")?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    if let Some(node_id) = args.node_id {
        cfg.node_id = Some(node_id);
    }
    if cfg.node_id.is_none() {
        cfg.node_id = Some(stable_node_id(listener.local_addr()?.port()));
    }
    let (hub, registry) = build_hub(&cfg).await.context("starting the bus")?;
    println!(
        "hub listening on http://{} (node {}, bus {})",
        listener.local_addr()?,
        hub.node_id(),
        // The URL may carry a password or token.
        hubbus::config::redact_url(&args.bus)
    );
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C; stopping");
        }
    };
    serve(listener, hub.clone(), registry, ctrl_c).await?;
    hub.close().await;
    hub.bus().close().await;
    Ok(())
}

/// `<host name>-<port>` as a node id: the same for every run of this hub, different for each
/// hub on the host (anything a node id does not allow becomes `-`).
pub fn stable_node_id(port: u16) -> String {
    let host = gethostname::gethostname();
    let host: String = host
        .to_string_lossy()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(200)
        .collect();
    let host = if host.is_empty() {
        "hub".to_owned()
    } else {
        host
    };
    format!("{host}-{port}")
}

/// Connects the bus `cfg` describes and puts a hub on it, with the bus's (and so the hub's)
/// metrics registered in a fresh registry (the one `/metrics` serves).
pub async fn build_hub(cfg: &BusConfig) -> Result<(Arc<Hub>, Registry), BusError> {
    let registry = Registry::new();
    let bus = hubbus::connect(cfg, &registry).await?;
    Ok((Arc::new(Hub::new(bus)), registry))
}

/// Serves `app` on `listener` until `shutdown` completes, then tells every WebSocket client the
/// hub is going away and waits (a bounded time) for their connections to end.
///
/// The hub and its bus stay open: whoever made them closes them.
pub async fn serve(
    listener: TcpListener,
    hub: Arc<Hub>,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = AppState::new(hub, registry);
    let closing = state.closing.clone();
    let signal = {
        let closing = closing.clone();
        async move {
            shutdown.await;
            closing.send_replace(true);
        }
    };
    axum::serve(listener, router(state))
        .with_graceful_shutdown(signal)
        .await?;
    // axum's graceful shutdown does not track upgraded connections; each WebSocket connection
    // holds a receiver of `closing` until it has ended.
    if tokio::time::timeout(DRAIN_TIMEOUT, closing.closed())
        .await
        .is_err()
    {
        tracing::warn!("WebSocket connections still open after {DRAIN_TIMEOUT:?}; leaving them");
    }
    Ok(())
}

/// The hub's HTTP routes, for embedding into a larger server. WebSocket connections it opens end
/// when the router is dropped; [`serve`] also ends them on shutdown.
pub fn app(hub: Arc<Hub>, registry: Registry) -> Router {
    router(AppState::new(hub, registry))
}

fn router(state: AppState) -> Router {
    // A little over the bus's limit, so a body the bus would refuse gets a 413 either from axum
    // or from the bus, not a mix of limits.
    let body_limit = state.hub.bus().max_payload() + FRAME_OVERHEAD;
    Router::new()
        .route("/", get(page))
        .route("/ws", get(websocket))
        .route("/publish/{channel}", post(publish))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

#[derive(Clone)]
struct AppState {
    hub: Arc<Hub>,
    registry: Registry,
    /// Becomes `true` when the server shuts down; WebSocket connections watch it.
    closing: watch::Sender<bool>,
}

impl AppState {
    fn new(hub: Arc<Hub>, registry: Registry) -> Self {
        AppState {
            hub,
            registry,
            closing: watch::Sender::new(false),
        }
    }
}

/// The live page; see the module docs.
async fn page() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("hub_page.html"))
}

async fn healthz(State(state): State<AppState>) -> Response {
    let health = state.hub.bus().health();
    let node = state.hub.node_id().as_str();
    let status = match health.state {
        // Degraded still publishes and delivers: keep the hub in the load balancer.
        HealthState::Connected | HealthState::Degraded => StatusCode::OK,
        HealthState::Down => StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = match health.reason {
        Some(reason) => json!({"status": health.state.to_string(), "node": node, "reason": reason}),
        None => json!({"status": health.state.to_string(), "node": node}),
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let encoder = TextEncoder::new();
    let mut text = Vec::new();
    match encoder.encode(&state.registry.gather(), &mut text) {
        Ok(()) => ([(header::CONTENT_TYPE, encoder.format_type())], text).into_response(),
        Err(error) => http_error(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

async fn publish(
    State(state): State<AppState>,
    Path(channel): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(error) = hubbus::validate_channel(&channel) {
        return bus_error(error);
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return http_error(rejection.status(), rejection.body_text()),
    };
    let data: Value = match serde_json::from_slice(&body) {
        Ok(data) => data,
        Err(error) => {
            return http_error(
                StatusCode::BAD_REQUEST,
                format!("body is not JSON: {error}"),
            );
        }
    };
    match state.hub.publish(&channel, payload(&data)).await {
        Ok(receipt) => (
            StatusCode::ACCEPTED,
            Json(json!({"id": receipt.id.to_string()})),
        )
            .into_response(),
        Err(error) => bus_error(error),
    }
}

fn bus_error(error: BusError) -> Response {
    let status = match &error {
        BusError::InvalidChannel { .. } => StatusCode::BAD_REQUEST,
        BusError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        BusError::NotConnected(_) | BusError::Closed => StatusCode::SERVICE_UNAVAILABLE,
        BusError::PublishTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    http_error(status, error.to_string())
}

fn http_error(status: StatusCode, reason: String) -> Response {
    (status, Json(json!({"error": reason}))).into_response()
}

/// The bus payload for `data`: its compact JSON text.
fn payload(data: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(data).expect("a JSON value always serializes"))
}

async fn websocket(State(state): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    let frame_limit = 2 * state.hub.bus().max_payload() + FRAME_OVERHEAD;
    // Taken before the upgrade, so a shutdown that starts meanwhile still waits for this client.
    let closing = state.closing.subscribe();
    upgrade
        .max_message_size(frame_limit)
        .max_frame_size(frame_limit)
        .on_upgrade(move |socket| connection(socket, state.hub, closing))
}

/// What a client sends.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum ClientFrame {
    Subscribe { channel: String },
    Unsubscribe { channel: String },
    Publish { channel: String, data: Value },
}

/// What the hub sends.
#[derive(Debug, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum HubFrame<'a> {
    Subscribed {
        channel: &'a str,
    },
    Unsubscribed {
        channel: &'a str,
    },
    Published {
        channel: &'a str,
        id: String,
    },
    Message {
        channel: &'a str,
        data: Value,
        id: String,
        origin: &'a str,
        published_at_ms: f64,
    },
    Error {
        reason: String,
    },
}

impl HubFrame<'_> {
    fn to_message(&self) -> Message {
        let text = serde_json::to_string(self).expect("hub frames always serialize");
        Message::Text(text.into())
    }

    fn delivery(delivery: &Delivery) -> Message {
        let payload = delivery.payload();
        let data = serde_json::from_slice(payload)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()));
        HubFrame::Message {
            channel: delivery.channel(),
            data,
            id: delivery.id().to_string(),
            origin: delivery.origin().as_str(),
            published_at_ms: delivery.published_at_unix_nanos() as f64 / 1e6,
        }
        .to_message()
    }

    fn error(reason: impl Into<String>) -> Message {
        HubFrame::Error {
            reason: reason.into(),
        }
        .to_message()
    }
}

/// One WebSocket client: this task reads and acts on its frames, one task per subscribed channel
/// forwards deliveries, and one writer task owns the socket's sending half. Everything the client
/// receives goes through the writer's bounded outbox, so replies and deliveries keep their order.
async fn connection(socket: WebSocket, hub: Arc<Hub>, mut closing: watch::Receiver<bool>) {
    let (sink, mut stream) = socket.split();
    let (outbox, frames) = mpsc::channel(OUTBOX_FRAMES);
    let writer = tokio::spawn(write_frames(sink, frames));
    let mut client = Client {
        hub,
        outbox,
        forwarders: BTreeMap::new(),
    };
    loop {
        let frame = tokio::select! {
            frame = stream.next() => frame,
            () = shutting_down(&mut closing) => {
                let goodbye = CloseFrame { code: close_code::AWAY, reason: "hub shutting down".into() };
                let _ = client.send(Message::Close(Some(goodbye))).await;
                break;
            }
            // The writer gave up on this client (see WRITE_TIMEOUT).
            _ = client.outbox.closed() => break,
        };
        let handled = match frame {
            Some(Ok(Message::Text(text))) => client.handle(text.as_str()).await,
            Some(Ok(Message::Binary(_))) => {
                client
                    .send(HubFrame::error(
                        "binary frames are not supported; send JSON text",
                    ))
                    .await
            }
            // Pings are answered by the protocol layer.
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
            Some(Ok(Message::Close(_)) | Err(_)) | None => break,
        };
        if handled.is_err() {
            break;
        }
    }
    client.stop_forwarders().await;
    drop(client);
    // Every sender of the outbox is gone now: the writer sends what is queued (the goodbye
    // included) and ends, waiting at most WRITE_TIMEOUT per frame.
    let _ = writer.await;
}

/// Completes once the server shuts down (or the router that started the connection is gone).
async fn shutting_down(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|closing| *closing).await;
}

/// Owns the sending half of a socket: sends what the outbox holds, and gives up on a client
/// whose socket does not take a frame within [`WRITE_TIMEOUT`].
async fn write_frames(
    mut sink: SplitSink<WebSocket, Message>,
    mut frames: mpsc::Receiver<Message>,
) {
    while let Some(frame) = frames.recv().await {
        match tokio::time::timeout(WRITE_TIMEOUT, sink.send(frame)).await {
            Ok(Ok(())) => {}
            // Gone, or closed after our goodbye: nothing more can be sent.
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::warn!("disconnecting a WebSocket client that stopped reading");
                return;
            }
        }
    }
    // The connection is ending: finish the closing handshake (this also answers a close frame
    // the client sent) instead of just dropping the socket.
    let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.close()).await;
}

/// The writer has ended; nothing more can reach this client.
struct WriterGone;

/// One connection's subscriptions and its way back to the socket.
struct Client {
    hub: Arc<Hub>,
    outbox: mpsc::Sender<Message>,
    forwarders: BTreeMap<String, JoinHandle<()>>,
}

impl Client {
    async fn send(&self, frame: Message) -> Result<(), WriterGone> {
        self.outbox.send(frame).await.map_err(|_| WriterGone)
    }

    /// Acts on one text frame, replying to it.
    async fn handle(&mut self, text: &str) -> Result<(), WriterGone> {
        let frame = match serde_json::from_str::<ClientFrame>(text) {
            Ok(frame) => frame,
            Err(error) if error.is_syntax() || error.is_eof() => {
                return self
                    .send(HubFrame::error(format!("frame is not JSON: {error}")))
                    .await;
            }
            Err(error) => {
                return self
                    .send(HubFrame::error(format!("unrecognised frame: {error}")))
                    .await;
            }
        };
        match frame {
            ClientFrame::Subscribe { channel } => self.subscribe(&channel).await,
            ClientFrame::Unsubscribe { channel } => self.unsubscribe(&channel).await,
            ClientFrame::Publish { channel, data } => {
                let reply = match self.hub.publish(&channel, payload(&data)).await {
                    Ok(receipt) => HubFrame::Published {
                        channel: &channel,
                        id: receipt.id.to_string(),
                    }
                    .to_message(),
                    Err(error) => HubFrame::error(error.to_string()),
                };
                self.send(reply).await
            }
        }
    }

    /// Subscribes once per channel: subscribing again is acknowledged but changes nothing, so
    /// the client never receives a message twice.
    async fn subscribe(&mut self, channel: &str) -> Result<(), WriterGone> {
        let subscribed = HubFrame::Subscribed { channel }.to_message();
        if let Some(forwarder) = self.forwarders.get(channel)
            && !forwarder.is_finished()
        {
            return self.send(subscribed).await;
        }
        if self.forwarders.len() >= MAX_SUBSCRIPTIONS && !self.forwarders.contains_key(channel) {
            let reason = format!("at most {MAX_SUBSCRIPTIONS} subscriptions per connection");
            return self.send(HubFrame::error(reason)).await;
        }
        let subscription = match self.hub.subscribe(channel).await {
            Ok(subscription) => subscription,
            Err(error) => return self.send(HubFrame::error(error.to_string())).await,
        };
        // The reply is queued before the forwarder starts: they share the outbox, so the client
        // sees `subscribed` before any message of the channel.
        self.send(subscribed).await?;
        let forwarder = tokio::spawn(forward(subscription, self.outbox.clone()));
        self.forwarders.insert(channel.to_owned(), forwarder);
        Ok(())
    }

    /// Unsubscribes; unsubscribing from a channel the client is not on is acknowledged too.
    async fn unsubscribe(&mut self, channel: &str) -> Result<(), WriterGone> {
        if let Err(error) = hubbus::validate_channel(channel) {
            return self.send(HubFrame::error(error.to_string())).await;
        }
        if let Some(forwarder) = self.forwarders.remove(channel) {
            // Aborting drops the forwarder's subscription, which unsubscribes from the hub.
            forwarder.abort();
            let _ = forwarder.await;
        }
        self.send(HubFrame::Unsubscribed { channel }.to_message())
            .await
    }

    async fn stop_forwarders(&mut self) {
        for forwarder in std::mem::take(&mut self.forwarders).into_values() {
            forwarder.abort();
            let _ = forwarder.await;
        }
    }
}

/// Hands one channel's deliveries to the client's outbox, acknowledging each once it is
/// there. Waiting for room in the outbox is what lets the hub's bounded queue drop this client's
/// oldest deliveries when it falls behind (at most once), or cut it off as lagged (JetStream).
async fn forward(mut subscription: Subscription, outbox: mpsc::Sender<Message>) {
    while let Some(delivery) = subscription.recv().await {
        if outbox.send(HubFrame::delivery(&delivery)).await.is_err() {
            return;
        }
        if let Err(error) = delivery.ack().await {
            tracing::warn!(%error, channel = subscription.channel(), "acknowledging a delivery failed; it may come again");
        }
    }
    let channel = subscription.channel();
    let last = match subscription.end() {
        // The client fell too far behind to be served without dropping messages: tell it, and
        // let it reconnect and catch up from its own source of truth.
        Some(SubscriptionEnd::Lagged { dropped }) => {
            tracing::warn!(
                channel,
                dropped,
                "closing the WebSocket of a client that lagged"
            );
            Message::Close(Some(CloseFrame {
                code: close_code::POLICY,
                reason: format!(
                    "lagged: fell behind on {channel} and missed {dropped} messages; reconnect"
                )
                .into(),
            }))
        }
        // The hub ended the subscription (it is closing): the client is no longer subscribed.
        _ => HubFrame::Unsubscribed { channel }.to_message(),
    };
    let _ = outbox.send(last).await;
}
