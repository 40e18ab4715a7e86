//! The pub/sub registry of one run of a server: who is connected, who is subscribed to what,
//! and fan-out of published messages.
//!
//! Every connection has one bounded queue of outgoing frames. A publish never waits for a
//! subscriber: one whose queue is full is disconnected instead, which is what Redis's
//! `client-output-buffer-limit pubsub` does to a slow subscriber. Maps are ordered so that
//! fan-out order, and with it the simulation, is deterministic.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, mpsc};

use super::{Controls, lock};
use crate::resp::Frame;

/// Identifies one connection within one run of a server.
pub(super) type ConnId = u64;

/// What a connection's writer sends: replies to its own commands, or messages published to a
/// channel it subscribed to (counted as deliveries when written).
#[derive(Debug)]
pub(super) enum Outgoing {
    Reply(Bytes),
    Message(Bytes),
}

/// The registry; see the module documentation.
#[derive(Debug)]
pub(crate) struct PubSub {
    controls: Arc<Controls>,
    state: Mutex<HubState>,
}

#[derive(Debug, Default)]
struct HubState {
    next_id: ConnId,
    /// Classic channels (`SUBSCRIBE`) and shard channels (`SSUBSCRIBE`): two name spaces.
    channels: [BTreeMap<Bytes, BTreeSet<ConnId>>; 2],
    peers: BTreeMap<ConnId, Peer>,
}

/// Which name space a subscription is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Space {
    /// `SUBSCRIBE` / `PUBLISH`, messages `message`.
    Classic = 0,
    /// `SSUBSCRIBE` / `SPUBLISH`, messages `smessage`.
    Shard = 1,
}

impl Space {
    fn message_kind(self) -> &'static str {
        match self {
            Space::Classic => "message",
            Space::Shard => "smessage",
        }
    }
}

#[derive(Debug)]
struct Peer {
    outbox: mpsc::Sender<Outgoing>,
    kill: Arc<Notify>,
    channels: [BTreeSet<Bytes>; 2],
    /// The connection said `HELLO 3`: messages go out as RESP3 pushes.
    resp3: bool,
}

impl HubState {
    fn remove(&mut self, id: ConnId) -> Option<Peer> {
        let peer = self.peers.remove(&id)?;
        for (space, channels) in peer.channels.iter().enumerate() {
            for channel in channels {
                if let Some(ids) = self.channels[space].get_mut(channel) {
                    ids.remove(&id);
                    if ids.is_empty() {
                        self.channels[space].remove(channel);
                    }
                }
            }
        }
        Some(peer)
    }
}

/// A message or notice for one peer: a RESP3 push when it speaks RESP3, an array otherwise.
fn encode(items: &[Frame], resp3: bool) -> Bytes {
    if resp3 {
        Frame::Push(items.to_vec()).to_bytes()
    } else {
        Frame::Array(items.to_vec()).to_bytes()
    }
}

impl PubSub {
    pub(super) fn new(controls: Arc<Controls>) -> Self {
        PubSub {
            controls,
            state: Mutex::new(HubState::default()),
        }
    }

    /// A pubsub with no host behind it, for testing commands on their own.
    #[cfg(test)]
    pub(crate) fn detached() -> Self {
        PubSub::new(Arc::default())
    }

    pub(super) fn controls(&self) -> &Arc<Controls> {
        &self.controls
    }

    fn state(&self) -> MutexGuard<'_, HubState> {
        lock(&self.state)
    }

    /// Adds a connection. `outbox` feeds its writer; `kill` is notified if the pubsub disconnects
    /// it for being slow.
    pub(super) fn register(&self, outbox: mpsc::Sender<Outgoing>, kill: Arc<Notify>) -> ConnId {
        let mut state = self.state();
        state.next_id += 1;
        let id = state.next_id;
        state.peers.insert(
            id,
            Peer {
                outbox,
                kill,
                channels: Default::default(),
                resp3: false,
            },
        );
        id
    }

    /// The connection switched to RESP3 (`HELLO 3`).
    pub(super) fn set_resp3(&self, id: ConnId) {
        if let Some(peer) = self.state().peers.get_mut(&id) {
            peer.resp3 = true;
        }
    }

    /// Disconnects every client, in connection order, as the kernel does for the sockets of a
    /// process that dies. The connections close from inside the host's software, at a definite
    /// simulated time.
    pub(crate) fn disconnect_all(&self) {
        let state = self.state();
        for peer in state.peers.values() {
            peer.kill.notify_one();
        }
    }

    /// Removes a connection and all its subscriptions.
    pub(super) fn deregister(&self, id: ConnId) {
        self.state().remove(id);
    }

    /// Subscribes `id` to `channel`; returns how many channels of that space `id` is now
    /// subscribed to.
    pub(super) fn subscribe(&self, id: ConnId, space: Space, channel: Bytes) -> usize {
        let mut state = self.state();
        // A connection that was just disconnected for being slow is no longer registered; it
        // must not leave a subscription behind.
        let Some(peer) = state.peers.get_mut(&id) else {
            return 0;
        };
        let channels = &mut peer.channels[space as usize];
        channels.insert(channel.clone());
        let count = channels.len();
        state.channels[space as usize]
            .entry(channel)
            .or_default()
            .insert(id);
        count
    }

    /// Unsubscribes `id` from `channel`; returns how many channels of that space `id` is still
    /// subscribed to.
    pub(super) fn unsubscribe(&self, id: ConnId, space: Space, channel: &[u8]) -> usize {
        let mut state = self.state();
        let Some(peer) = state.peers.get_mut(&id) else {
            return 0;
        };
        let channels = &mut peer.channels[space as usize];
        channels.remove(channel);
        let count = channels.len();
        let subscribers = &mut state.channels[space as usize];
        if let Some(ids) = subscribers.get_mut(channel) {
            ids.remove(&id);
            if ids.is_empty() {
                subscribers.remove(channel);
            }
        }
        count
    }

    /// The channels of one space `id` is subscribed to, in order.
    pub(super) fn channels_of(&self, id: ConnId, space: Space) -> Vec<Bytes> {
        self.state()
            .peers
            .get(&id)
            .map(|peer| peer.channels[space as usize].iter().cloned().collect())
            .unwrap_or_default()
    }

    /// How many channels of both spaces `id` is subscribed to; more than 0 means subscribed
    /// mode (on a RESP2 connection).
    pub(super) fn subscription_count(&self, id: ConnId) -> usize {
        self.state()
            .peers
            .get(&id)
            .map_or(0, |peer| peer.channels.iter().map(BTreeSet::len).sum())
    }

    /// How many connections are subscribed to classic `channel` right now.
    pub(crate) fn subscribers(&self, channel: &[u8]) -> usize {
        self.subscribers_in(Space::Classic, channel)
    }

    /// How many connections are subscribed to `channel` of `space` right now.
    pub(crate) fn subscribers_in(&self, space: Space, channel: &[u8]) -> usize {
        self.state().channels[space as usize]
            .get(channel)
            .map_or(0, BTreeSet::len)
    }

    /// Queues `*3 message <channel> <payload>` to every subscriber of `channel` and returns how
    /// many were reached. A subscriber whose queue is full is disconnected instead.
    pub(crate) fn publish(&self, channel: &[u8], payload: &[u8]) -> usize {
        self.publish_in(Space::Classic, channel, payload)
    }

    /// `PUBLISH` or `SPUBLISH`: queues `message` (or `smessage`) to every subscriber of
    /// `channel` in `space`, as a push to those that speak RESP3.
    pub(crate) fn publish_in(&self, space: Space, channel: &[u8], payload: &[u8]) -> usize {
        Controls::bump(&self.controls.published);
        let items = [
            Frame::bulk(space.message_kind()),
            Frame::bulk(channel),
            Frame::bulk(payload),
        ];
        let (array, push) = (encode(&items, false), encode(&items, true));
        let mut state = self.state();
        let subscribers: Vec<ConnId> = match state.channels[space as usize].get(channel) {
            Some(ids) => ids.iter().copied().collect(),
            None => return 0,
        };
        let mut receivers = 0;
        for id in subscribers {
            let Some(peer) = state.peers.get(&id) else {
                continue;
            };
            let message = if peer.resp3 { &push } else { &array };
            match peer.outbox.try_send(Outgoing::Message(message.clone())) {
                Ok(()) => receivers += 1,
                Err(TrySendError::Full(_)) => {
                    if let Some(peer) = state.remove(id) {
                        peer.kill.notify_one();
                        Controls::bump(&self.controls.slow_disconnects);
                    }
                }
                // The connection is closing and will deregister itself.
                Err(TrySendError::Closed(_)) => {}
            }
        }
        receivers
    }

    /// Ends every subscription to a shard channel that `leaves` selects, telling each
    /// subscriber with a `sunsubscribe` of its own, as a Redis Cluster node does when the
    /// channel's slot moves to another node. Returns how many subscriptions ended.
    pub(crate) fn end_shard_channels(&self, leaves: impl Fn(&[u8]) -> bool) -> usize {
        let mut state = self.state();
        let shard = Space::Shard as usize;
        let leaving: Vec<(Bytes, Vec<ConnId>)> = state.channels[shard]
            .iter()
            .filter(|(channel, _)| leaves(channel))
            .map(|(channel, ids)| (channel.clone(), ids.iter().copied().collect()))
            .collect();
        let mut ended = 0;
        for (channel, ids) in leaving {
            state.channels[shard].remove(&channel);
            for id in ids {
                let Some(peer) = state.peers.get_mut(&id) else {
                    continue;
                };
                peer.channels[shard].remove(&channel);
                let notice = [
                    Frame::bulk("sunsubscribe"),
                    Frame::Bulk(channel.clone()),
                    Frame::Integer(peer.channels[shard].len() as i64),
                ];
                ended += 1;
                if let Err(TrySendError::Full(_)) = peer
                    .outbox
                    .try_send(Outgoing::Reply(encode(&notice, peer.resp3)))
                    && let Some(peer) = state.remove(id)
                {
                    peer.kill.notify_one();
                    Controls::bump(&self.controls.slow_disconnects);
                }
            }
        }
        ended
    }
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Waker};

    use super::*;

    /// A registered connection whose queue and kill signal the test holds.
    struct TestPeer {
        id: ConnId,
        queue: mpsc::Receiver<Outgoing>,
        kill: Arc<Notify>,
    }

    fn join(pubsub: &PubSub, queue_len: usize) -> TestPeer {
        let (outbox, queue) = mpsc::channel(queue_len);
        let kill = Arc::new(Notify::new());
        let id = pubsub.register(outbox, Arc::clone(&kill));
        TestPeer { id, queue, kill }
    }

    impl TestPeer {
        fn messages(&mut self) -> Vec<String> {
            let mut messages = Vec::new();
            while let Ok(Outgoing::Message(bytes)) = self.queue.try_recv() {
                messages.push(String::from_utf8_lossy(&bytes).into_owned());
            }
            messages
        }

        fn was_killed(&self) -> bool {
            let mut notified = std::pin::pin!(self.kill.notified());
            notified
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
                .is_ready()
        }
    }

    fn wire(channel: &str, payload: &str) -> String {
        format!(
            "*3\r\n$7\r\nmessage\r\n${}\r\n{channel}\r\n${}\r\n{payload}\r\n",
            channel.len(),
            payload.len()
        )
    }

    #[test]
    fn publish_reaches_every_subscriber_in_order() {
        let pubsub = PubSub::detached();
        let mut first = join(&pubsub, 8);
        let mut second = join(&pubsub, 8);
        pubsub.subscribe(first.id, Space::Classic, Bytes::from_static(b"ch"));
        pubsub.subscribe(second.id, Space::Classic, Bytes::from_static(b"ch"));
        pubsub.subscribe(second.id, Space::Classic, Bytes::from_static(b"other"));
        assert_eq!(pubsub.publish(b"ch", b"one"), 2);
        assert_eq!(pubsub.publish(b"other", b"two"), 1);
        assert_eq!(pubsub.publish(b"nobody", b"three"), 0);
        assert_eq!(first.messages(), vec![wire("ch", "one")]);
        assert_eq!(
            second.messages(),
            vec![wire("ch", "one"), wire("other", "two")]
        );
        assert_eq!(pubsub.controls().counts().published, 3);
    }

    #[test]
    fn subscription_counts_follow_subscribe_and_unsubscribe() {
        let pubsub = PubSub::detached();
        let peer = join(&pubsub, 8);
        assert_eq!(
            pubsub.subscribe(peer.id, Space::Classic, Bytes::from_static(b"a")),
            1
        );
        assert_eq!(
            pubsub.subscribe(peer.id, Space::Classic, Bytes::from_static(b"b")),
            2
        );
        assert_eq!(
            pubsub.subscribe(peer.id, Space::Classic, Bytes::from_static(b"a")),
            2,
            "twice is once"
        );
        assert_eq!(pubsub.unsubscribe(peer.id, Space::Classic, b"a"), 1);
        assert_eq!(pubsub.unsubscribe(peer.id, Space::Classic, b"never"), 1);
        assert_eq!(
            pubsub.channels_of(peer.id, Space::Classic),
            vec![Bytes::from_static(b"b")]
        );
        assert_eq!(pubsub.subscribers(b"a"), 0);
    }

    #[test]
    fn a_subscriber_with_a_full_queue_is_disconnected_not_waited_for() {
        let pubsub = PubSub::detached();
        let mut slow = join(&pubsub, 2);
        let mut fast = join(&pubsub, 2);
        pubsub.subscribe(slow.id, Space::Classic, Bytes::from_static(b"ch"));
        pubsub.subscribe(fast.id, Space::Classic, Bytes::from_static(b"ch"));
        for payload in [&b"1"[..], b"2"] {
            assert_eq!(pubsub.publish(b"ch", payload), 2);
            fast.messages();
        }
        assert!(!slow.was_killed());
        assert_eq!(
            pubsub.publish(b"ch", b"3"),
            1,
            "the slow subscriber's queue of 2 is full"
        );
        assert!(slow.was_killed(), "its connection is told to close");
        assert_eq!(pubsub.subscribers(b"ch"), 1);
        assert_eq!(pubsub.controls().counts().slow_disconnects, 1);
        assert_eq!(slow.messages().len(), 2, "what was queued stays bounded");
        assert_eq!(
            pubsub.subscribe(slow.id, Space::Classic, Bytes::from_static(b"again")),
            0,
            "a disconnected connection cannot subscribe again"
        );
        assert_eq!(pubsub.subscribers(b"again"), 0);
    }

    #[test]
    fn deregistering_forgets_every_subscription() {
        let pubsub = PubSub::detached();
        let peer = join(&pubsub, 8);
        pubsub.subscribe(peer.id, Space::Classic, Bytes::from_static(b"a"));
        pubsub.subscribe(peer.id, Space::Classic, Bytes::from_static(b"b"));
        pubsub.deregister(peer.id);
        assert_eq!(pubsub.subscribers(b"a"), 0);
        assert_eq!(pubsub.subscribers(b"b"), 0);
        assert!(pubsub.state().channels.iter().all(BTreeMap::is_empty));
        assert_eq!(pubsub.subscription_count(peer.id), 0);
    }

    #[test]
    fn shard_channels_are_a_space_of_their_own_and_can_be_ended() {
        let pubsub = PubSub::detached();
        let mut classic = join(&pubsub, 8);
        let mut sharded = join(&pubsub, 8);
        pubsub.set_resp3(sharded.id);
        pubsub.subscribe(classic.id, Space::Classic, Bytes::from_static(b"ch"));
        pubsub.subscribe(sharded.id, Space::Shard, Bytes::from_static(b"ch"));
        pubsub.subscribe(sharded.id, Space::Shard, Bytes::from_static(b"stays"));
        assert_eq!(pubsub.publish_in(Space::Shard, b"ch", b"hi"), 1);
        assert_eq!(pubsub.publish(b"ch", b"classic"), 1);
        assert_eq!(classic.messages(), vec![wire("ch", "classic")]);
        assert_eq!(
            sharded.messages(),
            vec![">3\r\n$8\r\nsmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"]
        );
        assert_eq!(pubsub.subscription_count(sharded.id), 2);

        assert_eq!(pubsub.end_shard_channels(|channel| channel == b"ch"), 1);
        assert_eq!(pubsub.subscribers_in(Space::Shard, b"ch"), 0);
        assert_eq!(pubsub.subscribers_in(Space::Shard, b"stays"), 1);
        assert_eq!(
            pubsub.subscribers(b"ch"),
            1,
            "classic subscriptions are not touched"
        );
        let Ok(Outgoing::Reply(notice)) = sharded.queue.try_recv() else {
            panic!("the subscriber is told");
        };
        assert_eq!(
            &notice[..],
            b">3\r\n$12\r\nsunsubscribe\r\n$2\r\nch\r\n:1\r\n"
        );
    }
}
