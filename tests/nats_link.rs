//! Both [`NatsLink`]s against a real `nats-server`: the production link (async-nats) and the
//! wire link the simulation runs (the protocol over `TokioTcp`). Every check runs over both, so
//! what the bus relies on is seen to behave the same on each: publish, subscribe and requests,
//! no responders and timeouts, JetStream's status messages, the server's payload limit,
//! credentials, slow consumers, a server restart, a server that is not up yet, and close.
//! A few checks are the wire link's own (its typed errors and events).

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use hubbus::backend::nats::{
    LinkError, LinkEvent, LinkMessage, LinkOptions, LinkPublish, LinkSubscription, NatsLink,
};
use support::links::{LinkKind, over_both_links};
use support::{NatsServer, eventually};

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

fn plain(subject: &str, payload: Bytes) -> LinkPublish {
    LinkPublish {
        subject: subject.into(),
        reply: None,
        headers: Vec::new(),
        payload,
    }
}

/// A link of `kind` that has connected.
async fn connected(kind: LinkKind, options: LinkOptions) -> Arc<dyn NatsLink> {
    let link = kind.connect(options).await.unwrap();
    assert!(
        eventually(DEADLINE, || link.is_connected()).await,
        "the {kind:?} link did not connect"
    );
    link
}

async fn next(subscription: &mut LinkSubscription) -> LinkMessage {
    tokio::time::timeout(DEADLINE, subscription.next())
        .await
        .expect("a message within the deadline")
        .expect("the subscription is open")
}

/// Subscribes to `subject` and returns once the server has the subscription: a marker
/// published on the same connection came back (the production link's `flush` only writes, so
/// it proves nothing about another connection's publishes).
async fn subscribed(link: &dyn NatsLink, subject: &str) -> LinkSubscription {
    let mut subscription = link.subscribe(subject).await.unwrap();
    link.publish(plain(subject, Bytes::from_static(b"marker")))
        .await
        .unwrap();
    assert_eq!(next(&mut subscription).await.payload.as_ref(), b"marker");
    subscription
}

/// A JetStream API request with a JSON body; the JSON reply.
async fn api(link: &dyn NatsLink, subject: &str, body: serde_json::Value) -> serde_json::Value {
    let reply = link
        .request(plain(subject, Bytes::from(body.to_string())), DEADLINE)
        .await
        .unwrap_or_else(|error| panic!("{subject}: {error}"));
    let json: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert!(json.get("error").is_none(), "{subject}: {json}");
    json
}

over_both_links! {
    #[tokio::test]
    /// The operations the NATS backends build on, a JetStream API request, and the connection
    /// events across a server restart, after which the subscription delivers again.
    async fn publish_subscribe_request_and_events_across_a_restart(kind: LinkKind) {
        let Some(mut server) = NatsServer::start() else {
            return;
        };
        let link = connected(kind, options(server.url())).await;
        assert_eq!(link.max_payload(), Some(1024 * 1024), "from the server's INFO");
        let mut events = link.events();
        let mut inbox = link.subscribe("hubbus.room1").await.unwrap();
        link.publish(message("hubbus.room1", b"hello")).await.unwrap();
        link.flush().await.unwrap();
        let received = next(&mut inbox).await;
        assert_eq!(received.payload.as_ref(), b"hello");
        assert_eq!(received.header("Nats-Msg-Id"), Some("abc"));
        assert_eq!(received.status, None);

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
        assert!(link.is_connected());
        // The subscription was renewed on the new connection.
        link.publish(message("hubbus.room1", b"again")).await.unwrap();
        link.flush().await.unwrap();
        assert_eq!(next(&mut inbox).await.payload.as_ref(), b"again");
        link.close().await;
    }
}

over_both_links! {
    #[tokio::test]
    /// A request nobody subscribes to is answered "no responders" at once (the `503` status);
    /// one that reaches a subscriber who never answers times out after the given time.
    async fn requests_to_nobody_are_no_responders_and_unanswered_ones_time_out(kind: LinkKind) {
        let Some(server) = NatsServer::start() else {
            return;
        };
        let link = connected(kind, options(server.url())).await;
        let started = tokio::time::Instant::now();
        let nobody = link
            .request(plain("nobody.home", Bytes::new()), DEADLINE)
            .await;
        assert_eq!(nobody, Err(LinkError::NoResponders("nobody.home".into())));
        assert!(started.elapsed() < DEADLINE / 2, "answered, not timed out");

        let _silent = link.subscribe("svc.silent").await.unwrap();
        link.flush().await.unwrap();
        let timeout = Duration::from_millis(300);
        let started = tokio::time::Instant::now();
        let unanswered = link.request(plain("svc.silent", Bytes::new()), timeout).await;
        assert_eq!(unanswered, Err(LinkError::Timeout(timeout)));
        assert!(started.elapsed() >= timeout);

        // And one that is answered, by another connection.
        let responder = connected(kind, options(server.url())).await;
        let mut asked = subscribed(responder.as_ref(), "svc.echo").await;
        let answering = tokio::spawn(async move {
            let question = next(&mut asked).await;
            responder
                .publish(plain(&question.reply.unwrap(), question.payload))
                .await
                .unwrap();
            responder.flush().await.unwrap();
            responder
        });
        let reply = link
            .request(plain("svc.echo", Bytes::from_static(b"ping?")), DEADLINE)
            .await
            .unwrap();
        assert_eq!(reply.payload.as_ref(), b"ping?");
        answering.await.unwrap().close().await;
        link.close().await;
    }
}

over_both_links! {
    #[tokio::test]
    /// A pull consumer's inbox gets the server's status messages as statuses: `404 No Messages`
    /// for a `no_wait` pull on an empty stream, `408 Request Timeout` when a pull expires, and
    /// `409` for a pull the consumer refuses; a stored message arrives with its ack subject.
    async fn pull_requests_get_the_servers_status_messages(kind: LinkKind) {
        let Some(server) = NatsServer::start() else {
            return;
        };
        let link = connected(kind, options(server.url())).await;
        api(
            link.as_ref(),
            "$JS.API.STREAM.CREATE.ST",
            serde_json::json!({"name": "ST", "subjects": ["st.>"], "storage": "memory"}),
        )
        .await;
        api(
            link.as_ref(),
            "$JS.API.CONSUMER.DURABLE.CREATE.ST.C",
            serde_json::json!({
                "stream_name": "ST",
                "config": {"durable_name": "C", "ack_policy": "explicit", "max_batch": 1}
            }),
        )
        .await;
        let inbox = link.new_inbox();
        let mut pulled = link.subscribe(&inbox).await.unwrap();
        let pull = |body: serde_json::Value| LinkPublish {
            subject: "$JS.API.CONSUMER.MSG.NEXT.ST.C".into(),
            reply: Some(inbox.clone()),
            headers: Vec::new(),
            payload: Bytes::from(body.to_string()),
        };

        link.publish(pull(serde_json::json!({"batch": 1, "no_wait": true})))
            .await
            .unwrap();
        let empty = next(&mut pulled).await;
        assert_eq!(empty.status, Some(404), "{empty:?}");
        assert_eq!(empty.description.as_deref(), Some("No Messages"));

        link.publish(pull(serde_json::json!({"batch": 1, "expires": 200_000_000})))
            .await
            .unwrap();
        let expired = next(&mut pulled).await;
        assert_eq!(expired.status, Some(408), "{expired:?}");
        assert_eq!(expired.description.as_deref(), Some("Request Timeout"));

        link.publish(pull(serde_json::json!({"batch": 2}))).await.unwrap();
        let refused = next(&mut pulled).await;
        assert_eq!(refused.status, Some(409), "{refused:?}");
        assert!(
            refused.description.as_deref().is_some_and(|d| d.contains("MaxRequestBatch")),
            "{refused:?}"
        );

        let ack = link
            .request(message("st.a", b"stored"), DEADLINE)
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&ack.payload).contains("\"seq\":1"));
        link.publish(pull(serde_json::json!({"batch": 1}))).await.unwrap();
        let stored = next(&mut pulled).await;
        assert_eq!(stored.status, None);
        assert_eq!(stored.payload.as_ref(), b"stored");
        assert_eq!(stored.header("Nats-Msg-Id"), Some("abc"));
        assert!(stored.reply.unwrap().starts_with("$JS.ACK.ST.C."));
        link.close().await;
    }
}

over_both_links! {
    #[tokio::test]
    /// The payload limit is the server's (its `INFO`): a message over it is refused before it
    /// is written (the server would close the connection), and the connection stays up.
    async fn a_message_over_the_servers_max_payload_is_refused_and_the_connection_stays(
        kind: LinkKind
    ) {
        let scratch = support::ScratchDir::new("nats-max-payload");
        let config = scratch.0.join("server.conf");
        std::fs::write(&config, "max_payload: 4096\n").unwrap();
        let Some(server) = NatsServer::start_with(&["-c", config.to_str().unwrap()]) else {
            return;
        };
        let link = connected(kind, options(server.url())).await;
        assert_eq!(link.max_payload(), Some(4096));
        let mut room = link.subscribe("hubbus.big").await.unwrap();
        let refused = link
            .publish(plain("hubbus.big", Bytes::from(vec![0u8; 5000])))
            .await;
        assert!(refused.is_err(), "{refused:?}");
        if kind == LinkKind::Wire {
            assert_eq!(
                refused,
                Err(LinkError::PayloadTooLarge {
                    size: 5000,
                    limit: 4096
                })
            );
        }
        link.publish(plain("hubbus.big", Bytes::from(vec![1u8; 4096])))
            .await
            .unwrap();
        link.flush().await.unwrap();
        assert_eq!(next(&mut room).await.payload.len(), 4096);
        assert!(link.is_connected());
        link.close().await;
    }
}

over_both_links! {
    #[tokio::test]
    /// A subscription that is not read while messages arrive keeps its newest messages, as
    /// many as fit in its buffer, and counts every one it dropped, once; the connection is
    /// kept.
    async fn a_subscription_read_too_slowly_keeps_the_newest_and_counts_each_drop(kind: LinkKind) {
        let Some(server) = NatsServer::start() else {
            return;
        };
        let mut small = options(server.url());
        small.subscription_capacity = 4;
        let link = connected(kind, small).await;
        let mut slow = subscribed(link.as_ref(), "hubbus.slow").await;
        let mut mark = subscribed(link.as_ref(), "hubbus.mark").await;
        let publisher = connected(kind, options(server.url())).await;
        for n in 0..200u32 {
            publisher
                .publish(plain("hubbus.slow", Bytes::from(n.to_string())))
                .await
                .unwrap();
        }
        publisher
            .publish(plain("hubbus.mark", Bytes::from_static(b"m")))
            .await
            .unwrap();
        publisher.flush().await.unwrap();
        // One connection hands messages over in the order they came: once the mark is read,
        // all 200 wait for the slow subscription.
        assert_eq!(next(&mut mark).await.payload.as_ref(), b"m");
        let (mut kept, mut dropped) = (Vec::new(), 0);
        while kept.last() != Some(&199) {
            let message = next(&mut slow).await;
            kept.push(std::str::from_utf8(&message.payload).unwrap().parse::<u32>().unwrap());
            dropped += slow.take_dropped();
        }
        assert_eq!(kept.len() as u64 + dropped, 200, "each one kept or counted once");
        assert!(dropped >= 100, "{dropped} dropped: the buffer holds 4");
        assert!(kept.windows(2).all(|pair| pair[0] < pair[1]), "in order: {kept:?}");
        // What is kept is always the newest that had come when it was read: the four last.
        assert_eq!(kept[kept.len() - 4..], [196, 197, 198, 199]);
        assert_eq!(slow.take_dropped(), 0);
        assert!(link.is_connected());
        publisher.close().await;
        link.close().await;
    }
}

over_both_links! {
    #[tokio::test]
    /// User and password (in the URL or the options) and tokens authenticate; a wrong password
    /// never connects and is reported as an authorization violation.
    async fn credentials_authenticate_and_a_wrong_password_is_an_authorization_violation(
        kind: LinkKind
    ) {
        let Some(server) = NatsServer::start_with(&["--user", "hub", "--pass", "s3cret"]) else {
            return;
        };
        let url = format!("nats://hub:s3cret@127.0.0.1:{}", server.port);
        connected(kind, options(url)).await.close().await;
        let mut in_options = options(server.url());
        in_options.user_password = Some(("hub".into(), "s3cret".to_owned().into()));
        connected(kind, in_options).await.close().await;

        let wrong = kind
            .connect(options(format!("nats://hub:nope@127.0.0.1:{}", server.port)))
            .await
            .unwrap();
        let mut events = wrong.events();
        let refused = tokio::time::timeout(DEADLINE, async {
            loop {
                if let Some(LinkEvent::ServerError(error)) = events.next().await {
                    return error;
                }
            }
        })
        .await
        .expect("the refusal is reported");
        assert!(refused.contains("authorization violation"), "{refused}");
        assert!(!refused.contains("nope"));
        assert!(!wrong.is_connected());
        wrong.close().await;

        let Some(token_server) = NatsServer::start_with(&["--auth", "t0k3n"]) else {
            return;
        };
        let url = format!("nats://t0k3n@127.0.0.1:{}", token_server.port);
        connected(kind, options(url)).await.close().await;
        let mut in_options = options(token_server.url());
        in_options.token = Some("t0k3n".to_owned().into());
        connected(kind, in_options).await.close().await;
    }
}

over_both_links! {
    #[tokio::test]
    /// A link started while the server is down does not fail: it connects once the server is
    /// up, and works.
    async fn a_link_started_before_the_server_connects_once_it_is_up(kind: LinkKind) {
        let Some(mut server) = NatsServer::start() else {
            return;
        };
        server.kill();
        let link = kind.connect(options(server.url())).await.unwrap();
        let mut room = link.subscribe("hubbus.later").await.unwrap();
        assert!(!link.is_connected());
        server.restart();
        assert!(eventually(DEADLINE, || link.is_connected()).await);
        link.publish(plain("hubbus.later", Bytes::from_static(b"up"))).await.unwrap();
        link.flush().await.unwrap();
        assert_eq!(next(&mut room).await.payload.as_ref(), b"up");
        link.close().await;
    }
}

over_both_links! {
    #[tokio::test]
    /// After `close` the subscriptions end and nothing more is accepted.
    async fn close_ends_subscriptions_and_refuses_what_follows(kind: LinkKind) {
        let Some(server) = NatsServer::start() else {
            return;
        };
        let link = connected(kind, options(server.url())).await;
        let mut room = link.subscribe("hubbus.room1").await.unwrap();
        link.close().await;
        let ended = tokio::time::timeout(DEADLINE, room.next()).await;
        assert!(matches!(ended, Ok(None)), "the subscription ended");
        assert!(!link.is_connected());
        assert_eq!(
            link.publish(message("hubbus.room1", b"late")).await,
            Err(LinkError::Closed)
        );
        assert!(matches!(link.subscribe("hubbus.room1").await, Err(LinkError::Closed)));
    }
}

/// The wire link's own promises after `close`: every operation fails with `Closed`, the
/// `Closed` event is reported, and what was published before `close` was written first.
#[tokio::test]
async fn the_wire_link_drains_on_close_then_fails_with_closed() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let listener = connected(LinkKind::Wire, options(server.url())).await;
    let mut room = subscribed(listener.as_ref(), "hubbus.last").await;
    let link = connected(LinkKind::Wire, options(server.url())).await;
    let mut events = link.events();
    for n in 0..100u32 {
        link.publish(plain("hubbus.last", Bytes::from(n.to_string())))
            .await
            .unwrap();
    }
    link.close().await;
    for n in 0..100u32 {
        assert_eq!(next(&mut room).await.payload, n.to_string().as_bytes());
    }
    assert_eq!(
        link.publish(message("a", b"x")).await,
        Err(LinkError::Closed)
    );
    assert!(matches!(link.subscribe("a").await, Err(LinkError::Closed)));
    assert!(matches!(
        link.request(message("a", b""), DEADLINE).await,
        Err(LinkError::Closed)
    ));
    assert_eq!(link.flush().await, Err(LinkError::Closed));
    let closed = tokio::time::timeout(DEADLINE, async {
        while let Some(event) = events.next().await {
            if event == LinkEvent::Closed {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(closed, Ok(true));
    listener.close().await;
}

/// The wire link refuses what it cannot speak, naming the setting.
#[tokio::test]
async fn the_wire_link_refuses_tls_and_creds_files_as_configuration_errors() {
    for (options, key) in [
        (options("tls://127.0.0.1:4222".into()), "nats.url"),
        (
            LinkOptions {
                credentials_file: Some("hub.creds".into()),
                ..options("nats://127.0.0.1:4222".into())
            },
            "nats.credentials_file",
        ),
    ] {
        match LinkKind::wire(options).await {
            Err(hubbus::BusError::Config { key: refused, .. }) => assert_eq!(refused, key),
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }
}
