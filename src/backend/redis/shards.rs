//! The connections of one session, classic or sharded, behind one face.
//!
//! Classic Pub/Sub (standalone, Sentinel, a cluster without `sharded=true`) talks to one
//! server: one multiplexed connection for `PUBLISH`, one Pub/Sub connection for `SUBSCRIBE`.
//!
//! Sharded Pub/Sub talks to every master of a Redis Cluster: `CLUSTER SLOTS` (asked of a seed
//! or of a node learned since) says which master owns which slot, and the session keeps, per
//! master, a multiplexed connection for `SPUBLISH` and a RESP3 connection for `SSUBSCRIBE`,
//! whose `smessage` and `sunsubscribe` pushes arrive beside the replies. A channel goes to the
//! master of its slot ([`super::slots`]).
//!
//! The map is trusted only for the session that read it: a publish answered `-MOVED` or
//! `-ASK`, a `SSUBSCRIBE` answered so, a `sunsubscribe` this node did not ask for (Redis sends
//! one when the slot of a subscribed channel moves away), or any master's connection failing
//! ends the session; the supervisor reads the map again and subscribes everything on the new
//! owners. A failover of one master therefore pauses the whole bus for the reconnect, as it
//! does in classic mode.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::future::{join_all, try_join_all};
use futures_util::stream::{BoxStream, select_all};
use redis::aio::{MultiplexedConnection, PubSub, PubSubSink};
use redis::{
    AsyncConnectionConfig, ErrorKind, ProtocolVersion, PushInfo, PushKind, RedisConnectionInfo,
    RedisError, ServerErrorKind, Value,
};
use tokio_util::task::AbortOnDropHandle;

use super::intake::{Event, Intake, Metered};
use super::slots::SlotMap;
use crate::bus::BusError;
use crate::transport::Connector;

/// Where publishes go during one session.
#[derive(Debug, Clone)]
pub(super) struct Publishers {
    /// The session's number, so that a publish that found the map stale withdraws only the
    /// session it used, never a newer one.
    pub(super) session: u64,
    route: Route,
}

#[derive(Debug, Clone)]
enum Route {
    One(MultiplexedConnection),
    Sharded(Arc<Shards>),
}

impl Publishers {
    /// The command and the connection for a publish on `channel`.
    /// Takes the publishers (a publish's own copy): with one connection it is moved out, not
    /// cloned once more.
    pub(super) fn route(
        self,
        channel: &str,
    ) -> Result<(&'static str, MultiplexedConnection), BusError> {
        match self.route {
            Route::One(connection) => Ok(("PUBLISH", connection)),
            Route::Sharded(shards) => {
                let master = shards.owner(channel).map_err(|e| {
                    BusError::NotConnected(format!("cannot publish to `{channel}`: {e}"))
                })?;
                Ok(("SPUBLISH", shards.publishers[master].clone()))
            }
        }
    }

    /// PINGs every publishing connection.
    pub(super) async fn ping(&self) -> Result<(), RedisError> {
        let connections = match &self.route {
            Route::One(connection) => vec![connection.clone()],
            Route::Sharded(shards) => shards.publishers.clone(),
        };
        try_join_all(connections.into_iter().map(|mut connection| async move {
            redis::cmd("PING")
                .query_async::<Value>(&mut connection)
                .await
        }))
        .await
        .map(drop)
    }
}

/// True when Redis answered that the slot lives elsewhere (`MOVED`) or is moving (`ASK`).
pub(super) fn is_redirect(error: &RedisError) -> bool {
    matches!(
        error.kind(),
        ErrorKind::Server(ServerErrorKind::Moved | ServerErrorKind::Ask)
    )
}

/// How a session subscribes.
#[derive(Debug, Clone)]
pub(super) enum Subscriber {
    Classic(PubSubSink),
    Sharded(Arc<Shards>),
}

impl Subscriber {
    /// Subscribes one channel; `Ok` once the server confirmed it.
    pub(super) async fn subscribe(&self, channel: &str) -> Result<(), RedisError> {
        match self {
            Subscriber::Classic(sink) => sink.clone().subscribe(channel).await,
            Subscriber::Sharded(shards) => {
                let master = shards.owner(channel).map_err(unexpected)?;
                let mut connection = shards.subscribers[master].clone();
                let reply = redis::cmd("SSUBSCRIBE")
                    .arg(channel)
                    .query_async::<Value>(&mut connection)
                    .await?;
                confirmation(reply, PushKind::SSubscribe, channel)
            }
        }
    }

    /// Unsubscribes channels; `Ok` once the server confirmed all of them.
    pub(super) async fn unsubscribe(&self, channels: &[&str]) -> Result<(), RedisError> {
        match self {
            Subscriber::Classic(sink) => sink.clone().unsubscribe(channels).await,
            Subscriber::Sharded(shards) => {
                // One command per channel: channels of different slots cannot share one.
                try_join_all(channels.iter().map(|channel| async move {
                    let master = shards.owner(channel).map_err(unexpected)?;
                    shards.expect_unsubscribe(channel);
                    let mut connection = shards.subscribers[master].clone();
                    let reply = redis::cmd("SUNSUBSCRIBE")
                        .arg(*channel)
                        .query_async::<Value>(&mut connection)
                        .await?;
                    confirmation(reply, PushKind::SUnsubscribe, channel)
                }))
                .await
                .map(drop)
            }
        }
    }

    /// PINGs every subscribing connection.
    pub(super) async fn ping(&self) -> Result<(), RedisError> {
        match self {
            Subscriber::Classic(sink) => sink.clone().ping::<Value>().await.map(drop),
            Subscriber::Sharded(shards) => {
                let pings = shards.subscribers.iter().map(|connection| {
                    let mut connection = connection.clone();
                    async move {
                        match redis::cmd("PING")
                            .query_async::<Value>(&mut connection)
                            .await?
                        {
                            // Any reply but a push: a push would be an answer to something
                            // else, and the connection's replies out of step.
                            Value::Push { kind, .. } => {
                                Err(unexpected(format!("PING answered by a {kind} push")))
                            }
                            _ => Ok(()),
                        }
                    }
                });
                join_all(pings).await.into_iter().collect()
            }
        }
    }

    /// Sharded Pub/Sub: the server ended the subscription to `channel` on one connection. True
    /// when this node did not ask for it, which means the channel's slot moved.
    pub(super) fn unsolicited(&self, channel: &[u8]) -> bool {
        match self {
            Subscriber::Classic(_) => false,
            Subscriber::Sharded(shards) => !shards.take_expected_unsubscribe(channel),
        }
    }
}

/// Checks that a (un)subscribe was answered with its own confirmation. redis-rs hands each
/// confirmation push to the oldest request in flight; a `sunsubscribe` the server sent on its
/// own (a slot moved) can therefore answer another request, and from then on the connection's
/// replies are out of step. Such a reply fails the session, which is then replaced.
fn confirmation(reply: Value, expected: PushKind, channel: &str) -> Result<(), RedisError> {
    match &reply {
        Value::Push { kind, data }
            if *kind == expected
                && matches!(data.first(), Some(Value::BulkString(name)) if name == channel.as_bytes()) =>
        {
            Ok(())
        }
        _ => Err(unexpected(format!(
            "{expected} `{channel}` was answered with {reply:?}"
        ))),
    }
}

/// An error that is the connection's (never a refusal of the channel): the session ends.
fn unexpected(reason: impl Into<String>) -> RedisError {
    RedisError::from(std::io::Error::other(reason.into()))
}

/// The connections to every master of a cluster, for one session of sharded Pub/Sub.
#[derive(Debug)]
pub(super) struct Shards {
    map: SlotMap,
    /// By master index of `map`.
    publishers: Vec<MultiplexedConnection>,
    /// By master index of `map`: RESP3 connections that receive the `smessage` pushes.
    subscribers: Vec<MultiplexedConnection>,
    /// `SUNSUBSCRIBE` confirmations asked for and not yet seen among the pushes, by channel.
    unsubscribing: std::sync::Mutex<HashMap<Vec<u8>, usize>>,
}

impl Shards {
    fn owner(&self, channel: &str) -> Result<usize, String> {
        self.map.owner(channel.as_bytes()).ok_or_else(|| {
            format!(
                "no master serves slot {} of the cluster",
                super::slots::slot(channel.as_bytes())
            )
        })
    }

    fn expect_unsubscribe(&self, channel: &str) {
        *self
            .unsubscribing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(channel.as_bytes().to_vec())
            .or_default() += 1;
    }

    fn take_expected_unsubscribe(&self, channel: &[u8]) -> bool {
        let mut unsubscribing = self.unsubscribing.lock().unwrap_or_else(|e| e.into_inner());
        let Some(count) = unsubscribing.get_mut(channel) else {
            return false;
        };
        *count -= 1;
        if *count == 0 {
            unsubscribing.remove(channel);
        }
        true
    }
}

/// The connections of one session, opened.
pub(super) struct Connections {
    /// The server, or for sharded Pub/Sub the masters, for logs.
    pub(super) addr: String,
    pub(super) publishers: Publishers,
    pub(super) subscriber: Subscriber,
    pub(super) events: BoxStream<'static, super::intake::Incoming>,
    /// The tasks that drive the connections; each ends when its connection breaks.
    pub(super) drivers: Vec<AbortOnDropHandle<()>>,
}

/// Opens a multiplexed connection to `addr` and spawns its driver.
pub(super) async fn multiplexed(
    connector: &dyn Connector,
    info: &RedisConnectionInfo,
    addr: &str,
    config: AsyncConnectionConfig,
) -> Result<(MultiplexedConnection, AbortOnDropHandle<()>), String> {
    let stream = connector
        .connect(addr)
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    // Our own timeouts bound every request; the client's own would only race them.
    let config = config.set_response_timeout(None);
    let (connection, driver) = MultiplexedConnection::new_with_config(info, stream, config)
        .await
        .map_err(|e| format!("handshake with {addr}: {e}"))?;
    Ok((connection, AbortOnDropHandle::new(tokio::spawn(driver))))
}

/// The classic session's Pub/Sub connection to `addr`, added to the publishing connection.
pub(super) async fn classic(
    connector: &dyn Connector,
    info: &RedisConnectionInfo,
    addr: String,
    publisher: MultiplexedConnection,
    driver: AbortOnDropHandle<()>,
) -> Result<Connections, String> {
    let stream = connector
        .connect(&addr)
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let (stream, meter) = Metered::new(stream);
    let pubsub = PubSub::new(info, stream)
        .await
        .map_err(|e| format!("Pub/Sub handshake with {addr}: {e}"))?;
    let (sink, messages) = pubsub.split();
    let events = Intake::new(messages.map(Event::Message).boxed(), meter).boxed();
    Ok(Connections {
        addr,
        publishers: Publishers {
            session: 0,
            route: Route::One(publisher),
        },
        subscriber: Subscriber::Classic(sink),
        events,
        drivers: vec![driver],
    })
}

/// Sharded Pub/Sub: reads the slot map from `seed` (which answered `reply` to `CLUSTER
/// SLOTS`) and opens both connections to every master.
pub(super) async fn sharded(
    connector: &dyn Connector,
    info: &RedisConnectionInfo,
    seed: &str,
    reply: &Value,
) -> Result<Connections, String> {
    let seed_host = seed.rsplit_once(':').map_or(seed, |(host, _)| host);
    let map = SlotMap::from_cluster_slots(reply, seed_host)?;
    let resp3 = info.clone().set_protocol(ProtocolVersion::RESP3);
    let mut publishers = Vec::new();
    let mut subscribers = Vec::new();
    let mut intakes = Vec::new();
    let mut drivers = Vec::new();
    for addr in map.masters() {
        let (publisher, driver) =
            multiplexed(connector, info, addr, AsyncConnectionConfig::new()).await?;
        publishers.push(publisher);
        drivers.push(driver);

        let stream = connector
            .connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let (stream, meter) = Metered::new(stream);
        let (pushes, mut received) = tokio::sync::mpsc::unbounded_channel::<PushInfo>();
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(None)
            .set_push_sender(pushes);
        let (subscriber, driver) = MultiplexedConnection::new_with_config(&resp3, stream, config)
            .await
            .map_err(|e| format!("RESP3 handshake with {addr}: {e}"))?;
        subscribers.push(subscriber);
        drivers.push(AbortOnDropHandle::new(tokio::spawn(driver)));
        let events = futures_util::stream::poll_fn(move |cx| received.poll_recv(cx))
            .filter_map(|push| std::future::ready(shard_event(push)))
            .boxed();
        intakes.push(Intake::new(events, meter));
    }
    let addr = map.masters().join(",");
    let shards = Arc::new(Shards {
        map,
        publishers,
        subscribers,
        unsubscribing: std::sync::Mutex::default(),
    });
    Ok(Connections {
        addr,
        publishers: Publishers {
            session: 0,
            route: Route::Sharded(shards.clone()),
        },
        subscriber: Subscriber::Sharded(shards),
        events: select_all(intakes).boxed(),
        drivers,
    })
}

/// What a push of a sharded subscriber connection means to the supervisor: `smessage` is a
/// message, `sunsubscribe` an ended subscription; confirmations of `SSUBSCRIBE` (answered to
/// the request as well) and everything else are not its business.
fn shard_event(push: PushInfo) -> Option<Event> {
    match push.kind {
        PushKind::SMessage => redis::Msg::from_push_info(push).map(Event::Message),
        PushKind::SUnsubscribe => match push.data.into_iter().next() {
            Some(Value::BulkString(channel)) => Some(Event::Unsubscribed(channel)),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn only_a_confirmation_of_the_same_channel_confirms() {
        let push = |kind: PushKind, channel: &str| Value::Push {
            kind,
            data: vec![bulk(channel), Value::Int(1)],
        };
        assert!(confirmation(push(PushKind::SSubscribe, "a"), PushKind::SSubscribe, "a").is_ok());
        assert!(confirmation(push(PushKind::SSubscribe, "b"), PushKind::SSubscribe, "a").is_err());
        assert!(
            confirmation(push(PushKind::SUnsubscribe, "a"), PushKind::SSubscribe, "a").is_err()
        );
        assert!(confirmation(Value::Okay, PushKind::SSubscribe, "a").is_err());
    }

    #[test]
    fn shard_pushes_become_events() {
        let message = shard_event(PushInfo {
            kind: PushKind::SMessage,
            data: vec![bulk("room"), bulk("hi")],
        });
        assert!(matches!(
            message,
            Some(Event::Message(m)) if m.get_channel_name() == "room" && m.get_payload_bytes() == b"hi"
        ));
        let ended = shard_event(PushInfo {
            kind: PushKind::SUnsubscribe,
            data: vec![bulk("room"), Value::Int(0)],
        });
        assert!(matches!(ended, Some(Event::Unsubscribed(c)) if c == b"room"));
        for kind in [
            PushKind::SSubscribe,
            PushKind::Disconnection,
            PushKind::Message,
        ] {
            let data = vec![bulk("room"), Value::Int(1)];
            assert!(shard_event(PushInfo { kind, data }).is_none());
        }
    }
}
