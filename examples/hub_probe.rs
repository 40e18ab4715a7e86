//! A WebSocket client for the example hub, used by the end-to-end scripts: it subscribes to one
//! channel, prints `ready` once the hub confirmed, then prints the `data` of every message it
//! receives, one JSON value per line, until a message whose data is `{"stop":true}` arrives or
//! nothing arrives for `--idle` seconds.
//!
//! ```text
//! cargo run --example hub_probe -- --url ws://127.0.0.1:8080/ws --channel room1
//! ```

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// The command line.
#[derive(Debug, Parser)]
#[command(about = "Subscribe to a hub channel and print what arrives")]
struct Args {
    /// The hub's WebSocket URL.
    #[arg(long)]
    url: String,
    /// The channel to subscribe to.
    #[arg(long)]
    channel: String,
    /// Give up after this many seconds without a message.
    #[arg(long, default_value_t = 60)]
    idle: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (mut socket, _) = tokio_tungstenite::connect_async(args.url.as_str())
        .await
        .with_context(|| format!("connect to {}", args.url))?;
    let subscribe = json!({"op": "subscribe", "channel": args.channel}).to_string();
    socket.send(Message::text(subscribe)).await?;
    let idle = Duration::from_secs(args.idle);
    loop {
        let frame = match tokio::time::timeout(idle, socket.next()).await {
            Ok(Some(frame)) => frame?,
            Ok(None) => bail!("the hub closed the connection"),
            Err(_) => bail!("nothing arrived for {idle:?}"),
        };
        let Message::Text(text) = frame else { continue };
        let value: Value = serde_json::from_str(&text)?;
        match value["op"].as_str() {
            Some("subscribed") => println!("ready"),
            Some("message") if value["data"] == json!({"stop": true}) => return Ok(()),
            Some("message") => println!("{}", value["data"]),
            Some("error") => bail!("the hub reported an error: {}", value["reason"]),
            _ => {}
        }
    }
}
