//! The wire link against a scripted server on tokio's paused clock: what a real server cannot
//! be made to do on cue (stay silent, send garbage, refuse every attempt) and what must hold
//! byte for byte (the order of writes after a reconnect, the handshake's options).

use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::Instant;

use super::*;
use crate::transport::BoxedStream;

/// Hands the client one end of an in-memory pipe per connection and the test the other, or
/// refuses while told to; records when each attempt was made.
#[derive(Debug)]
struct ScriptedConnector {
    accepted: mpsc::UnboundedSender<(String, DuplexStream)>,
    refuse: AtomicBool,
    attempts: Mutex<Vec<(Instant, String)>>,
}

#[async_trait]
impl Connector for ScriptedConnector {
    async fn connect(&self, addr: &str) -> std::io::Result<BoxedStream> {
        self.attempts
            .lock()
            .unwrap()
            .push((Instant::now(), addr.to_owned()));
        if self.refuse.load(Ordering::SeqCst) {
            return Err(std::io::ErrorKind::ConnectionRefused.into());
        }
        let (client, server) = tokio::io::duplex(1 << 20);
        self.accepted
            .send((addr.to_owned(), server))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::ConnectionRefused))?;
        Ok(Box::new(client))
    }
}

/// The server's side of one connection.
struct Peer {
    stream: DuplexStream,
    buffered: Vec<u8>,
}

impl Peer {
    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next line the client wrote, without CRLF; with its payload for PUB and HPUB.
    async fn op(&mut self) -> (String, Vec<u8>) {
        let line = loop {
            if let Some(at) = self.buffered.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8(self.buffered[..at].to_vec()).unwrap();
                self.buffered.drain(..at + 2);
                break line;
            }
            self.fill().await;
        };
        let size = if line.starts_with("PUB ") || line.starts_with("HPUB ") {
            line.rsplit(' ').next().unwrap().parse::<usize>().unwrap() + 2
        } else {
            0
        };
        while self.buffered.len() < size {
            self.fill().await;
        }
        let payload: Vec<u8> = self.buffered.drain(..size).collect();
        (line, payload[..size.saturating_sub(2)].to_vec())
    }

    async fn line(&mut self) -> String {
        self.op().await.0
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the client closed the connection");
        self.buffered.extend_from_slice(&chunk[..n]);
    }

    /// Plays the server's part of the handshake; returns the client's CONNECT JSON.
    async fn handshake(&mut self) -> serde_json::Value {
        self.send(b"INFO {\"server_id\":\"S1\",\"version\":\"2.10.0\",\"proto\":1,\"max_payload\":1024,\"headers\":true}\r\n")
            .await;
        let connect = self.line().await;
        let json = connect.strip_prefix("CONNECT ").expect("CONNECT first");
        assert_eq!(self.line().await, "PING");
        self.send(b"PONG\r\n").await;
        serde_json::from_str(json).unwrap()
    }

    /// Whether the client closed its end (reads to the end).
    async fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    }
}

struct Harness {
    link: WireLink,
    connector: Arc<ScriptedConnector>,
    accepted: mpsc::UnboundedReceiver<(String, DuplexStream)>,
    events: BoxStream<'static, LinkEvent>,
}

impl Harness {
    async fn start(adjust: impl FnOnce(&mut LinkOptions)) -> Harness {
        Self::seeded(7, adjust).await
    }

    async fn seeded(seed: u64, adjust: impl FnOnce(&mut LinkOptions)) -> Harness {
        let (accepted_tx, accepted) = mpsc::unbounded_channel();
        let connector = Arc::new(ScriptedConnector {
            accepted: accepted_tx,
            refuse: AtomicBool::new(false),
            attempts: Mutex::new(Vec::new()),
        });
        let mut options = LinkOptions {
            url: "nats://hub:s3cret@a:4222,b:4222".into(),
            reconnect_wait: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            subscription_capacity: 4,
            ..LinkOptions::default()
        };
        adjust(&mut options);
        let link = WireLink::connect(options, connector.clone(), seed)
            .await
            .unwrap();
        let events = link.events();
        Harness {
            link,
            connector,
            accepted,
            events,
        }
    }

    async fn accept(&mut self) -> Peer {
        let (_, stream) = self.accepted.recv().await.expect("a connection");
        Peer {
            stream,
            buffered: Vec::new(),
        }
    }

    /// Accepts the next connection, shakes hands, and waits for the Connected event.
    async fn connected(&mut self) -> Peer {
        let mut peer = self.accept().await;
        peer.handshake().await;
        self.expect_event(|event| matches!(event, LinkEvent::Connected))
            .await;
        peer
    }

    async fn expect_event(&mut self, wanted: impl Fn(&LinkEvent) -> bool) -> LinkEvent {
        loop {
            let event = self.events.next().await.expect("the event stream is open");
            if wanted(&event) {
                return event;
            }
        }
    }

    fn attempts(&self) -> Vec<(Instant, String)> {
        self.connector.attempts.lock().unwrap().clone()
    }
}

fn publish(subject: &str, payload: &'static [u8]) -> LinkPublish {
    LinkPublish {
        subject: subject.into(),
        reply: None,
        headers: Vec::new(),
        payload: Bytes::from_static(payload),
    }
}

#[tokio::test(start_paused = true)]
async fn the_handshake_sends_the_options_the_bus_relies_on_and_the_credentials() {
    let mut harness = Harness::start(|_| {}).await;
    let mut peer = harness.accept().await;
    let connect = peer.handshake().await;
    assert_eq!(connect["verbose"], false);
    assert_eq!(connect["headers"], true);
    assert_eq!(connect["no_responders"], true);
    assert_eq!(connect["echo"], true, "the bus's probes need echo");
    assert_eq!(connect["protocol"], 1);
    assert_eq!(connect["user"], "hub");
    assert_eq!(connect["pass"], "s3cret");
    harness
        .expect_event(|event| matches!(event, LinkEvent::Connected))
        .await;
    assert!(harness.link.is_connected());
    assert_eq!(harness.link.max_payload(), Some(1024));
    assert_eq!(harness.attempts()[0].1, "a:4222", "the first server first");
}

#[tokio::test(start_paused = true)]
async fn after_a_reconnect_every_subscription_is_renewed_before_anything_else_is_written() {
    let mut harness = Harness::start(|_| {}).await;
    let mut peer = harness.connected().await;
    let _one = harness.link.subscribe("hubbus.one").await.unwrap();
    let two = harness.link.subscribe("hubbus.two").await.unwrap();
    let _three = harness.link.subscribe("hubbus.>").await.unwrap();
    assert_eq!(peer.line().await, "SUB hubbus.one 2");
    assert_eq!(peer.line().await, "SUB hubbus.two 3");
    assert_eq!(peer.line().await, "SUB hubbus.> 4");
    drop(two);
    assert_eq!(peer.line().await, "UNSUB 3");

    // A connection that lived longer than reconnect_wait is retried at once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lost_at = Instant::now();
    drop(peer);
    let lost = harness
        .expect_event(|event| matches!(event, LinkEvent::Disconnected(_)))
        .await;
    assert_eq!(
        lost,
        LinkEvent::Disconnected("the server closed the connection".into())
    );
    assert!(!harness.link.is_connected());
    // Published while disconnected: waits for the next connection.
    harness
        .link
        .publish(publish("hubbus.one", b"queued"))
        .await
        .unwrap();
    let mut peer = harness.connected().await;
    assert_eq!(peer.line().await, "SUB hubbus.one 2");
    assert_eq!(
        peer.line().await,
        "SUB hubbus.> 4",
        "a dropped one is not renewed"
    );
    assert_eq!(
        peer.op().await,
        ("PUB hubbus.one 6".to_owned(), b"queued".to_vec())
    );
    let attempts = harness.attempts();
    assert_eq!(attempts.len(), 2);
    assert_eq!(
        attempts[1].1, "b:4222",
        "after losing one server the next one"
    );
    assert_eq!(
        attempts[1].0, lost_at,
        "the first attempt after a loss goes out at once"
    );
}

#[tokio::test(start_paused = true)]
async fn a_server_that_drops_every_connection_at_once_is_not_called_in_a_tight_loop() {
    let mut harness = Harness::start(|_| {}).await;
    for _ in 0..3 {
        let peer = harness.connected().await;
        drop(peer);
        harness
            .expect_event(|event| matches!(event, LinkEvent::Disconnected(_)))
            .await;
    }
    harness.connected().await;
    let attempts = harness.attempts();
    for pair in attempts.windows(2) {
        let waited = pair[1].0 - pair[0].0;
        assert!(waited >= Duration::from_secs(2), "{waited:?}");
    }
    assert!(harness.link.is_connected(), "and it never gives up on it");
}

#[tokio::test(start_paused = true)]
async fn messages_reach_their_subscription_with_headers_and_status() {
    let mut harness = Harness::start(|_| {}).await;
    let mut peer = harness.connected().await;
    let mut room = harness.link.subscribe("hubbus.room1").await.unwrap();
    assert_eq!(peer.line().await, "SUB hubbus.room1 2");
    peer.send(b"MSG hubbus.room1 2 5\r\nhello\r\n").await;
    peer.send(b"HMSG hubbus.room1 2 reply.to 30 32\r\nNATS/1.0\r\nNats-Msg-Id: abc\r\n\r\nhi\r\n")
        .await;
    peer.send(b"HMSG hubbus.room1 2 28 28\r\nNATS/1.0 404 No Messages\r\n\r\n\r\n")
        .await;
    let first = room.next().await.unwrap();
    assert_eq!(
        (first.subject.as_str(), first.payload.as_ref()),
        ("hubbus.room1", &b"hello"[..])
    );
    let second = room.next().await.unwrap();
    assert_eq!(second.reply.as_deref(), Some("reply.to"));
    assert_eq!(second.header("Nats-Msg-Id"), Some("abc"));
    assert_eq!(second.payload.as_ref(), b"hi");
    let third = room.next().await.unwrap();
    assert_eq!(third.status, Some(404));
    assert_eq!(third.description.as_deref(), Some("No Messages"));
}

#[tokio::test(start_paused = true)]
async fn a_malformed_header_block_drops_that_message_only() {
    let mut harness = Harness::start(|_| {}).await;
    let mut peer = harness.connected().await;
    let mut room = harness.link.subscribe("hubbus.room1").await.unwrap();
    assert_eq!(peer.line().await, "SUB hubbus.room1 2");
    peer.send(b"HMSG hubbus.room1 2 12 12\r\nHTTP/1.1\r\n\r\n\r\n")
        .await;
    peer.send(b"MSG hubbus.room1 2 2\r\nok\r\n").await;
    assert_eq!(room.next().await.unwrap().payload.as_ref(), b"ok");
    assert!(harness.link.is_connected());
}

#[tokio::test(start_paused = true)]
async fn bytes_that_do_not_parse_end_the_connection_and_the_link_reconnects() {
    let mut harness = Harness::start(|_| {}).await;
    let mut peer = harness.connected().await;
    peer.send(b"MSG a 1 3\r\nabcXY").await;
    match harness
        .expect_event(|event| matches!(event, LinkEvent::Disconnected(_)))
        .await
    {
        LinkEvent::Disconnected(reason) => {
            assert!(reason.contains("unreadable bytes"), "{reason}")
        }
        _ => unreachable!(),
    }
    assert!(peer.closed().await, "the client dropped the connection");
    harness.connected().await;
}

/// A subscription read too slowly keeps its newest messages and counts every one it dropped,
/// once; the connection is kept.
#[tokio::test(start_paused = true)]
async fn a_subscription_read_too_slowly_keeps_the_newest_and_counts_each_drop() {
    let mut harness = Harness::start(|options| options.subscription_capacity = 2).await;
    let mut peer = harness.connected().await;
    let mut slow = harness.link.subscribe("hubbus.slow").await.unwrap();
    assert_eq!(peer.line().await, "SUB hubbus.slow 2");
    let mut mark = harness.link.subscribe("hubbus.mark").await.unwrap();
    assert_eq!(peer.line().await, "SUB hubbus.mark 3");
    for n in 0..5u8 {
        peer.send(format!("MSG hubbus.slow 2 1\r\n{n}\r\n").as_bytes())
            .await;
    }
    peer.send(b"MSG hubbus.mark 3 1\r\nm\r\n").await;
    // Messages are handed over in arrival order: once the mark is here, so are all five.
    assert_eq!(mark.next().await.unwrap().payload.as_ref(), b"m");
    assert_eq!(slow.next().await.unwrap().payload.as_ref(), b"3");
    assert_eq!(slow.take_dropped(), 3, "the oldest three");
    assert_eq!(slow.next().await.unwrap().payload.as_ref(), b"4");
    assert_eq!(slow.take_dropped(), 0, "each drop is counted once");
    peer.send(b"MSG hubbus.slow 2 1\r\n5\r\n").await;
    assert_eq!(slow.next().await.unwrap().payload.as_ref(), b"5");
    assert!(harness.link.is_connected());
}

#[tokio::test(start_paused = true)]
async fn a_silent_server_is_noticed_after_two_unanswered_pings() {
    let interval = Duration::from_secs(5);
    let mut harness = Harness::start(|options| options.ping_interval = Some(interval)).await;
    let mut peer = harness.connected().await;
    let since = Instant::now();
    assert_eq!(peer.line().await, "PING");
    assert_eq!(since.elapsed(), interval);
    assert_eq!(peer.line().await, "PING");
    assert_eq!(since.elapsed(), 2 * interval);
    let lost = harness
        .expect_event(|event| matches!(event, LinkEvent::Disconnected(_)))
        .await;
    assert_eq!(since.elapsed(), 3 * interval);
    assert!(
        matches!(&lost, LinkEvent::Disconnected(reason) if reason.contains("did not answer 2 pings")),
        "{lost:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_server_that_answers_pings_and_pings_back_stays_connected() {
    let interval = Duration::from_secs(5);
    let mut harness = Harness::start(|options| options.ping_interval = Some(interval)).await;
    let mut peer = harness.connected().await;
    for _ in 0..5 {
        assert_eq!(peer.line().await, "PING");
        peer.send(b"PONG\r\n").await;
        peer.send(b"PING\r\n").await;
        assert_eq!(peer.line().await, "PONG");
    }
    assert!(harness.link.is_connected());
}

#[tokio::test(start_paused = true)]
async fn flush_is_a_ping_pong_round_trip() {
    let mut harness = Harness::start(|_| {}).await;
    let mut peer = harness.connected().await;
    let link = &harness.link;
    let flushed = async {
        link.publish(publish("a", b"x")).await.unwrap();
        link.flush().await
    };
    let server = async {
        assert_eq!(peer.op().await, ("PUB a 1".to_owned(), b"x".to_vec()));
        assert_eq!(peer.line().await, "PING");
        tokio::time::sleep(Duration::from_secs(1)).await;
        peer.send(b"PONG\r\n").await;
    };
    let started = Instant::now();
    let (flushed, ()) = tokio::join!(flushed, server);
    flushed.unwrap();
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(1),
        "waited for the PONG"
    );
}

#[tokio::test(start_paused = true)]
async fn requests_share_one_reply_subscription_and_503_is_no_responders() {
    let mut harness = Harness::start(|_| {}).await;
    let mut peer = harness.connected().await;
    let link = &harness.link;
    let ask = |payload| async move {
        link.request(publish("svc", payload), Duration::from_secs(1))
            .await
    };
    let server = async {
        let sub = peer.line().await;
        let inbox = sub
            .strip_prefix("SUB ")
            .and_then(|rest| rest.strip_suffix(".* 1"))
            .unwrap_or_else(|| panic!("the reply subscription first: {sub}"))
            .to_owned();
        let (line, _) = peer.op().await;
        let reply_one = line.split(' ').nth(2).unwrap().to_owned();
        assert!(reply_one.starts_with(&format!("{inbox}.")), "{line}");
        let (line, _) = peer.op().await;
        let reply_two = line.split(' ').nth(2).unwrap().to_owned();
        assert_ne!(reply_one, reply_two);
        peer.send(format!("MSG {reply_two} 1 3\r\ntwo\r\n").as_bytes())
            .await;
        peer.send(format!("HMSG {reply_one} 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n").as_bytes())
            .await;
    };
    let (one, two, ()) = tokio::join!(ask(&b"1"[..]), ask(&b"2"[..]), server);
    assert_eq!(one, Err(LinkError::NoResponders("svc".into())));
    assert_eq!(two.unwrap().payload.as_ref(), b"two");
}

#[tokio::test(start_paused = true)]
async fn a_request_without_reply_times_out_and_a_late_reply_is_dropped() {
    let mut harness = Harness::start(|_| {}).await;
    let mut peer = harness.connected().await;
    let started = Instant::now();
    let timeout = Duration::from_millis(300);
    let asked = harness.link.request(publish("svc", b"?"), timeout).await;
    assert_eq!(asked, Err(LinkError::Timeout(timeout)));
    assert_eq!(started.elapsed(), timeout);
    peer.line().await;
    let (line, _) = peer.op().await;
    let reply = line.split(' ').nth(2).unwrap().to_owned();
    peer.send(format!("MSG {reply} 1 4\r\nlate\r\nPING\r\n").as_bytes())
        .await;
    assert_eq!(peer.line().await, "PONG", "the late reply did no harm");
    assert!(harness.link.shared.replies().waiting.is_empty());
    assert!(harness.link.is_connected());
}

#[tokio::test(start_paused = true)]
async fn publishes_over_the_servers_max_payload_are_refused_before_anything_is_written() {
    let mut harness = Harness::start(|_| {}).await;
    let mut peer = harness.connected().await;
    let big = Bytes::from(vec![b'x'; 1025]);
    let refused = harness
        .link
        .publish(LinkPublish {
            payload: big.clone(),
            ..publish("a", b"")
        })
        .await;
    assert_eq!(
        refused,
        Err(LinkError::PayloadTooLarge {
            size: 1025,
            limit: 1024
        })
    );
    let with_headers = harness
        .link
        .publish(LinkPublish {
            headers: vec![("Nats-Msg-Id".into(), "abc".into())],
            payload: big.slice(..1000),
            ..publish("a", b"")
        })
        .await;
    assert!(
        matches!(
            with_headers,
            Err(LinkError::PayloadTooLarge {
                size: 1030,
                limit: 1024
            })
        ),
        "the header block counts: {with_headers:?}"
    );
    harness
        .link
        .publish(LinkPublish {
            payload: big.slice(..1024),
            ..publish("a", b"")
        })
        .await
        .unwrap();
    let (line, _) = peer.op().await;
    assert_eq!(line, "PUB a 1024", "only the one that fits went out");
}

#[tokio::test(start_paused = true)]
async fn subjects_and_headers_that_would_break_the_protocol_are_refused() {
    let harness = Harness::start(|_| {}).await;
    for message in [
        publish("a b", b""),
        publish("a\r\nPUB x 1", b""),
        LinkPublish {
            reply: Some("r r".into()),
            ..publish("a", b"")
        },
        LinkPublish {
            headers: vec![("Bad Name".into(), "v".into())],
            ..publish("a", b"")
        },
    ] {
        assert!(
            matches!(
                harness.link.publish(message.clone()).await,
                Err(LinkError::Invalid(_))
            ),
            "{message:?}"
        );
    }
    assert!(matches!(
        harness.link.subscribe("a b").await,
        Err(LinkError::Invalid(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn an_authorization_violation_fails_the_attempt_and_is_reported() {
    let mut harness = Harness::start(|_| {}).await;
    let mut peer = harness.accept().await;
    peer.send(b"INFO {\"auth_required\":true}\r\n").await;
    peer.line().await;
    peer.line().await;
    peer.send(b"-ERR 'Authorization Violation'\r\n").await;
    assert_eq!(
        harness
            .expect_event(|event| matches!(event, LinkEvent::ServerError(_)))
            .await,
        LinkEvent::ServerError("authorization violation".into())
    );
    assert!(!harness.link.is_connected());
    // The next attempt waits reconnect_wait (plus jitter), to the next server.
    let started = Instant::now();
    harness.accept().await;
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(harness.attempts()[1].1, "b:4222");
}

#[tokio::test(start_paused = true)]
async fn server_errors_while_connected_are_reported_and_name_the_reason_the_server_left() {
    let mut harness = Harness::start(|_| {}).await;
    let mut peer = harness.connected().await;
    peer.send(b"-ERR 'Permissions Violation for Publish to \"x\"'\r\n")
        .await;
    assert_eq!(
        harness
            .expect_event(|event| matches!(event, LinkEvent::ServerError(_)))
            .await,
        LinkEvent::ServerError("Permissions Violation for Publish to \"x\"".into())
    );
    peer.send(b"-ERR 'Maximum Payload Violation'\r\n").await;
    drop(peer);
    let lost = harness
        .expect_event(|event| matches!(event, LinkEvent::Disconnected(_)))
        .await;
    assert_eq!(
        lost,
        LinkEvent::Disconnected(
            "the server closed the connection after: Maximum Payload Violation".into()
        )
    );
}

#[tokio::test(start_paused = true)]
async fn info_updates_change_the_max_payload() {
    let mut harness = Harness::start(|_| {}).await;
    let mut peer = harness.connected().await;
    peer.send(b"INFO {\"max_payload\":2048,\"ldm\":true}\r\nPING\r\n")
        .await;
    assert_eq!(peer.line().await, "PONG");
    assert_eq!(harness.link.max_payload(), Some(2048));
}

#[tokio::test(start_paused = true)]
async fn out_of_attempts_the_link_closes_and_operations_say_why() {
    let mut harness = Harness::start(|options| options.max_reconnects = Some(3)).await;
    harness.connector.refuse.store(true, Ordering::SeqCst);
    harness
        .expect_event(|event| matches!(event, LinkEvent::Closed))
        .await;
    let attempts = harness.attempts();
    assert_eq!(attempts.len(), 3);
    for pair in attempts.windows(2) {
        let waited = pair[1].0 - pair[0].0;
        assert!(
            waited >= Duration::from_secs(2)
                && waited <= Duration::from_secs(2) + servers::RECONNECT_JITTER,
            "{waited:?}"
        );
    }
    let refused = harness.link.publish(publish("a", b"x")).await;
    assert!(
        matches!(&refused, Err(LinkError::NotConnected(reason)) if reason.contains("gave up")),
        "{refused:?}"
    );
    assert!(harness.link.subscribe("a").await.is_err());
}

#[tokio::test(start_paused = true)]
async fn close_drains_what_was_queued_then_everything_fails_with_closed() {
    let mut harness = Harness::start(|_| {}).await;
    let mut peer = harness.connected().await;
    let mut room = harness.link.subscribe("hubbus.room1").await.unwrap();
    harness
        .link
        .publish(publish("hubbus.room1", b"last"))
        .await
        .unwrap();
    let link = &harness.link;
    let server = async {
        assert_eq!(peer.line().await, "SUB hubbus.room1 2");
        assert_eq!(peer.op().await.0, "PUB hubbus.room1 4");
        assert_eq!(peer.line().await, "PING", "the drain's round trip");
        peer.send(b"PONG\r\n").await;
        assert!(peer.closed().await);
    };
    tokio::join!(link.close(), server);
    assert!(room.next().await.is_none(), "subscriptions end");
    assert_eq!(
        harness.link.publish(publish("a", b"x")).await,
        Err(LinkError::Closed)
    );
    assert!(matches!(
        harness.link.subscribe("a").await,
        Err(LinkError::Closed)
    ));
    assert!(!harness.link.is_connected());
    harness
        .expect_event(|event| matches!(event, LinkEvent::Closed))
        .await;
    harness.link.close().await;
}

#[tokio::test(start_paused = true)]
async fn close_while_disconnected_returns_at_once() {
    let harness = Harness::start(|_| {}).await;
    harness.connector.refuse.store(true, Ordering::SeqCst);
    let started = Instant::now();
    harness.link.close().await;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(harness.link.flush().await, Err(LinkError::Closed));
}

#[tokio::test(start_paused = true)]
async fn a_handshake_that_does_not_finish_in_time_fails_the_attempt() {
    let mut harness = Harness::start(|_| {}).await;
    let _silent = harness.accept().await;
    let failed = harness
        .expect_event(|event| matches!(event, LinkEvent::ServerError(_)))
        .await;
    assert!(
        matches!(&failed, LinkEvent::ServerError(reason) if reason.contains("within 2s")),
        "{failed:?}"
    );
}

/// The same seed gives the same inbox names and the same reconnect waits.
#[tokio::test(start_paused = true)]
async fn the_seed_fixes_inboxes_and_reconnect_waits() {
    async fn run(seed: u64) -> (Vec<String>, Vec<Duration>) {
        let harness = Harness::seeded(seed, |options| options.max_reconnects = Some(4)).await;
        harness.connector.refuse.store(true, Ordering::SeqCst);
        let inboxes = vec![harness.link.new_inbox(), harness.link.new_inbox()];
        let mut harness = harness;
        harness
            .expect_event(|event| matches!(event, LinkEvent::Closed))
            .await;
        let attempts = harness.attempts();
        let waits = attempts
            .windows(2)
            .map(|pair| pair[1].0 - pair[0].0)
            .collect();
        (inboxes, waits)
    }
    let (inboxes, waits) = run(11).await;
    assert!(inboxes[0].starts_with("_INBOX.") && inboxes[0] != inboxes[1]);
    assert_eq!(run(11).await, (inboxes.clone(), waits.clone()));
    let (other_inboxes, other_waits) = run(12).await;
    assert_ne!(other_inboxes, inboxes);
    assert_ne!(other_waits, waits);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_link_ends_its_task_and_subscriptions() {
    let mut harness = Harness::start(|_| {}).await;
    let mut peer = harness.connected().await;
    let mut room = harness.link.subscribe("hubbus.room1").await.unwrap();
    assert_eq!(peer.line().await, "SUB hubbus.room1 2");
    drop(harness.link);
    assert!(room.next().await.is_none());
    assert!(peer.closed().await);
}

/// A server connection that answers the handshake at once and then sends messages as fast as
/// they are read, up to `cap` bytes; it records what the client writes, and how many bytes it
/// had served when each write arrived.
#[derive(Debug, Clone)]
struct Flood {
    cap: usize,
    served: Arc<AtomicUsize>,
    writes: Arc<Mutex<Vec<Served>>>,
}

/// One write of the client, and how many bytes the flood had served when it arrived.
type Served = (usize, Vec<u8>);

struct FloodStream {
    flood: Flood,
    greeting: Vec<u8>,
}

impl tokio::io::AsyncRead for FloodStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.greeting.is_empty() {
            let n = self.greeting.len().min(buf.remaining());
            let greeting: Vec<u8> = self.greeting.drain(..n).collect();
            buf.put_slice(&greeting);
            return Poll::Ready(Ok(()));
        }
        const MSG: &[u8] = b"MSG a 99 1\r\nx\r\n";
        let served = self.flood.served.load(Ordering::SeqCst);
        if served >= self.flood.cap {
            return Poll::Pending;
        }
        let mut put = 0;
        while buf.remaining() >= MSG.len() && served + put < self.flood.cap {
            buf.put_slice(MSG);
            put += MSG.len();
        }
        self.flood.served.fetch_add(put, Ordering::SeqCst);
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for FloodStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let served = self.flood.served.load(Ordering::SeqCst);
        self.flood
            .writes
            .lock()
            .unwrap()
            .push((served, buf.to_vec()));
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[async_trait]
impl Connector for Flood {
    async fn connect(&self, _: &str) -> std::io::Result<BoxedStream> {
        Ok(Box::new(FloodStream {
            flood: self.clone(),
            greeting: b"INFO {\"max_payload\":1024}\r\nPONG\r\n".to_vec(),
        }))
    }
}

/// While messages arrive faster than they are read, the socket is always readable; what
/// callers publish must still go out, not wait for a lull.
#[tokio::test(start_paused = true)]
async fn publishes_go_out_while_messages_flood_in() {
    let flood = Flood {
        cap: 4 * 1024 * 1024,
        served: Arc::default(),
        writes: Arc::default(),
    };
    let options = LinkOptions {
        url: "nats://a:4222".into(),
        reconnect_wait: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        ..LinkOptions::default()
    };
    let link = WireLink::connect(options, Arc::new(flood.clone()), 1)
        .await
        .unwrap();
    link.publish(publish("out", b"!")).await.unwrap();
    let sent_at = loop {
        let sent = (flood.writes.lock().unwrap().iter())
            .find(|(_, bytes)| bytes.windows(7).any(|w| w == b"PUB out"))
            .map(|(served, _)| *served);
        if let Some(served) = sent {
            break served;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    assert!(
        sent_at < flood.cap / 2,
        "the publish went out only after {sent_at} bytes had come in"
    );
}
