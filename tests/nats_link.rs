//! The production [`NatsLink`] (async-nats) against a real `nats-server`: the operations the NATS
//! backend builds on, including a JetStream API request, and its connection events across a
//! server restart.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use hubbus::backend::nats::{AsyncNatsLink, LinkEvent, LinkOptions, LinkPublish, NatsLink};
use support::NatsServer;

const DEADLINE: Duration = Duration::from_secs(10);

fn options(url: String) -> LinkOptions {
    LinkOptions {
        url,
        reconnect_wait: Duration::from_millis(100),
        connect_timeout: Duration::from_secs(1),
        subscription_capacity: 1024,
        ..LinkOptions::default()
    }
}

fn message(subject: &str, payload: &'static [u8]) -> LinkPublish {
    LinkPublish {
        subject: subject.into(),
        reply: None,
        headers: vec![("Nats-Msg-Id".into(), "abc".into())],
        payload: Bytes::from_static(payload),
    }
}

#[tokio::test]
async fn publish_subscribe_request_and_events() {
    let Some(mut server) = NatsServer::start() else {
        return;
    };
    let link = AsyncNatsLink::connect(options(server.url())).await.unwrap();
    let mut events = link.events();
    let mut inbox = link.subscribe("hubbus.room1").await.unwrap();
    link.publish(message("hubbus.room1", b"hello"))
        .await
        .unwrap();
    link.flush().await.unwrap();
    let received = tokio::time::timeout(DEADLINE, inbox.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(received.payload.as_ref(), b"hello");
    assert_eq!(received.header("Nats-Msg-Id"), Some("abc"));
    assert!(link.is_connected());

    let info = link
        .request(message("$JS.API.INFO", b""), DEADLINE)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&info.payload);
    assert!(
        text.contains("io.nats.jetstream.api.v1.account_info_response"),
        "{text}"
    );

    server.restart();
    let mut saw_disconnect = false;
    loop {
        match tokio::time::timeout(DEADLINE, events.next())
            .await
            .unwrap()
            .unwrap()
        {
            LinkEvent::Disconnected(_) => saw_disconnect = true,
            LinkEvent::Connected if saw_disconnect => break,
            _ => {}
        }
    }
    // The subscription survived the reconnect.
    link.publish(message("hubbus.room1", b"again"))
        .await
        .unwrap();
    link.flush().await.unwrap();
    let received = tokio::time::timeout(DEADLINE, inbox.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(received.payload.as_ref(), b"again");
    link.close().await;
}
