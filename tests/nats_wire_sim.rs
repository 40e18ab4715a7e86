//! The wire link on turmoil's simulated network, against a minimal scripted NATS server: it
//! runs there unchanged (through `TurmoilTcp`), notices a partition by its keepalive pings,
//! comes back with its subscriptions once the partition heals, and replays the same run for
//! the same seed. The full fake server and the scenarios live in `sim/`; this only shows the
//! link is ready for them.
#![cfg(all(feature = "sim", feature = "nats"))]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use hubbus::backend::nats::{LinkEvent, LinkOptions, LinkPublish, NatsLink, WireLink};
use hubbus::transport::TurmoilTcp;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const PORT: u16 = 4222;

/// A NATS server that knows just enough for one client: `INFO` on connect, `PONG` to `PING`,
/// and every `PUB` delivered back as `MSG` to the connection's matching `SUB` (exact subjects).
fn scripted_server(sim: &mut turmoil::Sim<'_>) {
    sim.host("nats", || async {
        let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
        loop {
            let (socket, _) = listener.accept().await?;
            tokio::spawn(async move {
                let (reader, mut writer) = tokio::io::split(socket);
                let mut reader = BufReader::new(reader);
                let info = b"INFO {\"server_id\":\"SIM\",\"proto\":1,\"max_payload\":1048576,\"headers\":true}\r\n";
                if writer.write_all(info).await.is_err() {
                    return;
                }
                let mut subscriptions: BTreeMap<String, String> = BTreeMap::new();
                let mut line = String::new();
                loop {
                    line.clear();
                    match reader.read_line(&mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let words: Vec<&str> = line.split_whitespace().collect();
                    let reply = match words.as_slice() {
                        ["PING"] => b"PONG\r\n".to_vec(),
                        ["SUB", subject, sid] => {
                            subscriptions.insert(subject.to_string(), sid.to_string());
                            continue;
                        }
                        ["PUB", subject, size] => {
                            let size: usize = size.parse().unwrap();
                            let mut payload = vec![0u8; size + 2];
                            if reader.read_exact(&mut payload).await.is_err() {
                                return;
                            }
                            match subscriptions.get(*subject) {
                                Some(sid) => {
                                    let mut msg = format!("MSG {subject} {sid} {size}\r\n")
                                        .into_bytes();
                                    msg.extend_from_slice(&payload);
                                    msg
                                }
                                None => continue,
                            }
                        }
                        _ => continue,
                    };
                    if writer.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

fn options() -> LinkOptions {
    LinkOptions {
        url: format!("nats://nats:{PORT}"),
        reconnect_wait: Duration::from_millis(500),
        connect_timeout: Duration::from_secs(1),
        subscription_capacity: 64,
        ping_interval: Some(Duration::from_secs(1)),
        ..LinkOptions::default()
    }
}

fn publish(payload: &'static [u8]) -> LinkPublish {
    LinkPublish {
        subject: "hubbus.room1".into(),
        reply: None,
        headers: Vec::new(),
        payload: Bytes::from_static(payload),
    }
}

/// Runs the scenario with `seed`; returns what the client saw, with simulated times.
fn run(seed: u64) -> Vec<String> {
    let trace = Arc::new(Mutex::new(Vec::new()));
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(60))
        .rng_seed(seed)
        .build();
    scripted_server(&mut sim);
    let seen = trace.clone();
    sim.client("hub", async move {
        let record = |what: String| {
            let at = turmoil::elapsed();
            seen.lock()
                .unwrap()
                .push(format!("{:>6}ms {what}", at.as_millis()));
        };
        let link = WireLink::connect(options(), Arc::new(TurmoilTcp), seed).await?;
        record(format!("inbox {}", link.new_inbox()));
        let mut events = link.events();
        let mut room = link.subscribe("hubbus.room1").await?;
        link.publish(publish(b"one")).await?;
        let first = room.next().await.expect("delivered");
        assert_eq!(first.payload.as_ref(), b"one");
        record("received one".into());

        turmoil::partition("hub", "nats");
        loop {
            let event = events.next().await.expect("events");
            record(format!("{event:?}"));
            if matches!(event, LinkEvent::Disconnected(_)) {
                break;
            }
        }
        assert!(!link.is_connected());
        tokio::time::sleep(Duration::from_secs(2)).await;
        turmoil::repair("hub", "nats");
        loop {
            let event = events.next().await.expect("events");
            record(format!("{event:?}"));
            if event == LinkEvent::Connected {
                break;
            }
        }
        // The subscription was renewed on the new connection.
        link.publish(publish(b"two")).await?;
        let second = room.next().await.expect("delivered after the partition");
        assert_eq!(second.payload.as_ref(), b"two");
        record("received two".into());
        link.close().await;
        Ok(())
    });
    sim.run().unwrap();
    trace.lock().unwrap().clone()
}

#[test]
fn the_wire_link_runs_on_turmoil_survives_a_partition_and_replays_with_its_seed() {
    let trace = run(5);
    let text = trace.join("\n");
    assert!(text.contains("did not answer 2 pings"), "{text}");
    assert!(text.contains("ServerError(\"connection refused"), "{text}");
    assert!(text.contains("received two"), "{text}");
    assert_eq!(run(5), trace, "the same seed, the same run");
    assert_ne!(run(6), trace, "another seed, another run");
}
