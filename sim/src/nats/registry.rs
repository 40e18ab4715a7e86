//! The subscription registry of one run of the fake NATS server: who is connected, their
//! subscriptions, and the fan-out of every message to the subscriptions it matches.
//!
//! It lives as long as the host's software, so a restart forgets every subscription, as a
//! restarted nats-server does. Order is fixed everywhere so that a seed replays a run exactly:
//! connections are numbered from 1 in accept order, subscriptions in the order they were made,
//! a message reaches plain subscriptions in that order and then one member of each queue group
//! (groups by name, the member chosen by rotation where nats-server picks at random).
//!
//! Delivery never waits for a subscriber. A connection whose outgoing queue would pass its byte
//! limit is dropped as a slow consumer, with its subscriptions, in the middle of the fan-out.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

use super::control::Controls;
use super::jetstream::Router;
use super::outbox::{Kind, Outbox, Queued};
use super::protocol::{NO_RESPONDERS, message_line};
use super::subject::{is_valid_subscription, matches};
use crate::server::lock;

/// Identifies a connection within one run of the server; also its INFO `client_id`.
pub(super) type ConnId = u64;

/// What the server knows of a client from its `CONNECT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ClientFlags {
    /// It receives its own messages.
    pub(super) echo: bool,
    /// It reads `HMSG`; without this, headers are stripped from what it receives.
    pub(super) headers: bool,
    /// It takes INFO updates after the first (`protocol` 1).
    pub(super) async_info: bool,
}

impl Default for ClientFlags {
    /// A client that has not sent `CONNECT`: nats-server's defaults.
    fn default() -> Self {
        ClientFlags {
            echo: true,
            headers: false,
            async_info: false,
        }
    }
}

/// A message on its way to subscribers.
#[derive(Debug, Clone, Copy)]
pub(super) struct Message<'a> {
    /// Where it was published: the subscriptions matching it receive it.
    pub(super) subject: &'a str,
    /// The subject receivers see in their `MSG` line when it is not `subject`: a JetStream
    /// delivery is routed to the pull request's inbox but shows the stored message's subject.
    pub(super) shown_as: Option<&'a str>,
    /// Where answers go.
    pub(super) reply: Option<&'a str>,
    /// Its header block, empty if none.
    pub(super) headers: &'a [u8],
    /// Its payload.
    pub(super) body: &'a [u8],
}

/// A subscription's subject is not valid; nats-server answers `-ERR 'Invalid Subject'`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct InvalidSubject;

/// See the module documentation.
#[derive(Debug)]
pub(super) struct Registry {
    controls: Arc<Controls>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next_conn: ConnId,
    next_subscription: u64,
    /// Messages fanned out so far; rotates the choice within queue groups.
    fanouts: u64,
    peers: BTreeMap<ConnId, Peer>,
    /// Every subscription, keyed by creation order.
    subscriptions: BTreeMap<u64, Subscription>,
}

#[derive(Debug)]
struct Peer {
    outbox: Arc<Outbox>,
    kill: Arc<Notify>,
    client_ip: String,
    flags: ClientFlags,
    /// The connection's subscriptions by sid.
    sids: BTreeMap<String, u64>,
}

#[derive(Debug)]
struct Subscription {
    conn: ConnId,
    sid: String,
    subject: String,
    queue: Option<String>,
    /// `UNSUB <sid> <max>`: removed once this many messages were delivered.
    max: Option<u64>,
    delivered: u64,
}

impl State {
    fn remove_subscription(&mut self, key: u64) {
        if let Some(subscription) = self.subscriptions.remove(&key)
            && let Some(peer) = self.peers.get_mut(&subscription.conn)
        {
            peer.sids.remove(&subscription.sid);
        }
    }

    fn remove_peer(&mut self, id: ConnId) -> Option<Peer> {
        let peer = self.peers.remove(&id)?;
        for key in peer.sids.values() {
            self.subscriptions.remove(key);
        }
        Some(peer)
    }

    /// Drops a client that does not read fast enough: no more deliveries, and its connection
    /// closes at once (nats-server does not flush to a slow consumer either).
    fn drop_slow_consumer(&mut self, id: ConnId, controls: &Controls) {
        if let Some(peer) = self.remove_peer(id) {
            peer.kill.notify_one();
            controls.count_slow_consumer();
            tracing::debug!(client_id = id, "fake NATS dropped a slow consumer");
        }
    }

    /// Delivers to one subscription; whether it counted as a delivery.
    fn deliver(&mut self, key: u64, message: &Message<'_>, controls: &Controls) -> bool {
        let Some(subscription) = self.subscriptions.get_mut(&key) else {
            return false;
        };
        subscription.delivered += 1;
        let delivered = subscription.delivered;
        if subscription.max.is_some_and(|max| delivered > max) {
            self.remove_subscription(key);
            return false;
        }
        let finished = subscription.max == Some(delivered);
        let conn = subscription.conn;
        let line = message_line(
            message.shown_as.unwrap_or(message.subject),
            &subscription.sid,
            message.reply,
            message.headers,
            message.body,
            self.peers.get(&conn).is_some_and(|peer| peer.flags.headers),
        );
        if finished {
            self.remove_subscription(key);
        }
        let Some(peer) = self.peers.get(&conn) else {
            return false;
        };
        match peer.outbox.push(line, Kind::Message) {
            Queued::Yes => true,
            // nats-server counts the attempt as a delivery even when it finds the client
            // too slow, so a slow subscriber never turns a request into a no-responders one.
            Queued::Full => {
                self.drop_slow_consumer(conn, controls);
                true
            }
            Queued::Closed => false,
        }
    }
}

impl Registry {
    /// An empty registry for one run of the server.
    pub(super) fn new(controls: Arc<Controls>) -> Self {
        Registry {
            controls,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Adds a connection; `kill` is notified if it must close at once.
    pub(super) fn register(
        &self,
        outbox: Arc<Outbox>,
        kill: Arc<Notify>,
        client_ip: String,
    ) -> ConnId {
        let mut state = self.state();
        state.next_conn += 1;
        let id = state.next_conn;
        state.peers.insert(
            id,
            Peer {
                outbox,
                kill,
                client_ip,
                flags: ClientFlags::default(),
                sids: BTreeMap::new(),
            },
        );
        id
    }

    /// Removes a connection and its subscriptions.
    pub(super) fn deregister(&self, id: ConnId) {
        self.state().remove_peer(id);
    }

    /// Records what a client's `CONNECT` said.
    pub(super) fn set_flags(&self, id: ConnId, flags: ClientFlags) {
        if let Some(peer) = self.state().peers.get_mut(&id) {
            peer.flags = flags;
        }
    }

    /// Drops a connection whose own replies no longer fit its queue.
    pub(super) fn drop_slow_consumer(&self, id: ConnId) {
        self.state().drop_slow_consumer(id, &self.controls);
    }

    /// `SUB`: a sid already in use keeps its subscription, as in nats-server.
    pub(super) fn subscribe(
        &self,
        id: ConnId,
        subject: String,
        queue: Option<String>,
        sid: String,
    ) -> Result<(), InvalidSubject> {
        let mut state = self.state();
        let key = state.next_subscription;
        let Some(peer) = state.peers.get_mut(&id) else {
            // Dropped a moment ago; it must not leave a subscription behind.
            return Ok(());
        };
        if peer.sids.contains_key(&sid) {
            return Ok(());
        }
        if !is_valid_subscription(&subject) {
            return Err(InvalidSubject);
        }
        peer.sids.insert(sid.clone(), key);
        state.next_subscription += 1;
        state.subscriptions.insert(
            key,
            Subscription {
                conn: id,
                sid,
                subject,
                queue,
                max: None,
                delivered: 0,
            },
        );
        Ok(())
    }

    /// `UNSUB`: at once, or after `max` deliveries in all (nats-server removes it at once if
    /// it has already had that many).
    pub(super) fn unsubscribe(&self, id: ConnId, sid: &str, max: Option<u64>) {
        let mut state = self.state();
        let Some(&key) = state.peers.get(&id).and_then(|peer| peer.sids.get(sid)) else {
            return;
        };
        match (max, state.subscriptions.get_mut(&key)) {
            (Some(max), Some(subscription)) if max > subscription.delivered => {
                subscription.max = Some(max);
            }
            _ => state.remove_subscription(key),
        }
    }

    /// Delivers `message` to every subscription it matches (one member per queue group) and
    /// returns how many got it. `from` is the publishing connection, whose own subscriptions
    /// are skipped if it turned echo off; `None` for the server's own messages.
    pub(super) fn publish(&self, from: Option<ConnId>, message: &Message<'_>) -> usize {
        let mut guard = self.state();
        let state = &mut *guard;
        state.fanouts += 1;
        let rotation = state.fanouts;
        let no_echo = from.filter(|id| state.peers.get(id).is_some_and(|peer| !peer.flags.echo));
        let mut plain = Vec::new();
        let mut groups: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for (&key, subscription) in &state.subscriptions {
            if Some(subscription.conn) == no_echo
                || !matches(&subscription.subject, message.subject)
            {
                continue;
            }
            match &subscription.queue {
                Some(queue) => groups.entry(queue.as_str()).or_default().push(key),
                None => plain.push(key),
            }
        }
        let chosen = groups.into_values().map(|members| {
            let first = (rotation % members.len() as u64) as usize;
            members[first]
        });
        let targets: Vec<u64> = plain.into_iter().chain(chosen).collect();
        targets
            .into_iter()
            .filter(|&key| state.deliver(key, message, &self.controls))
            .count()
    }

    /// Tells a requester that nobody received its request: `HMSG <reply> <sid> 16 16` with
    /// status 503, on the requester's own subscription that matches `reply`, if it has one.
    pub(super) fn no_responders(&self, id: ConnId, reply: &str) {
        let mut state = self.state();
        let Some(peer) = state.peers.get(&id) else {
            return;
        };
        let sid = peer.sids.values().find_map(|key| {
            let subscription = state.subscriptions.get(key)?;
            (subscription.queue.is_none() && matches(&subscription.subject, reply))
                .then(|| subscription.sid.clone())
        });
        let Some(sid) = sid else {
            return;
        };
        let line = message_line(reply, &sid, None, NO_RESPONDERS, b"", true);
        if peer.outbox.push(line, Kind::Message) == Queued::Full {
            state.drop_slow_consumer(id, &self.controls);
        }
    }

    /// Queues `make(client_id, client_ip)` to every client that takes INFO updates.
    pub(super) fn broadcast_info(&self, make: impl Fn(ConnId, &str) -> Bytes) {
        let mut state = self.state();
        let mut slow = Vec::new();
        for (&id, peer) in &state.peers {
            if peer.flags.async_info
                && peer.outbox.push(make(id, &peer.client_ip), Kind::Control) == Queued::Full
            {
                slow.push(id);
            }
        }
        for id in slow {
            state.drop_slow_consumer(id, &self.controls);
        }
    }

    /// Closes every connection, in connection order, as the kernel does for the sockets of a
    /// process that dies.
    pub(super) fn disconnect_all(&self) {
        for peer in self.state().peers.values() {
            peer.kill.notify_one();
        }
    }

    /// How many subscriptions a message published to `subject` would match.
    pub(super) fn subscribers(&self, subject: &str) -> usize {
        self.state()
            .subscriptions
            .values()
            .filter(|subscription| matches(&subscription.subject, subject))
            .count()
    }

    /// How many connections are open.
    pub(super) fn connections(&self) -> usize {
        self.state().peers.len()
    }
}

impl Router for Registry {
    fn has_interest(&self, subject: &str) -> bool {
        self.state()
            .subscriptions
            .values()
            .any(|subscription| matches(&subscription.subject, subject))
    }
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Waker};

    use super::*;

    struct TestPeer {
        id: ConnId,
        outbox: Arc<Outbox>,
        kill: Arc<Notify>,
    }

    fn join(registry: &Registry, limit: usize, flags: ClientFlags) -> TestPeer {
        let outbox = Arc::new(Outbox::new(limit));
        let kill = Arc::new(Notify::new());
        let id = registry.register(Arc::clone(&outbox), Arc::clone(&kill), "10.0.0.1".into());
        registry.set_flags(id, flags);
        TestPeer { id, outbox, kill }
    }

    const HEADERS: ClientFlags = ClientFlags {
        echo: true,
        headers: true,
        async_info: true,
    };

    impl TestPeer {
        /// What was queued so far, as text.
        fn received(&self) -> String {
            let mut text = String::new();
            let mut next = std::pin::pin!(self.outbox.next_batch());
            let mut context = Context::from_waker(Waker::noop());
            while let std::task::Poll::Ready(Some(batch)) = next.as_mut().poll(&mut context) {
                text.push_str(&String::from_utf8_lossy(&batch.bytes));
                self.outbox.written(batch.bytes.len());
                next.set(self.outbox.next_batch());
            }
            text
        }

        fn was_killed(&self) -> bool {
            let mut notified = std::pin::pin!(self.kill.notified());
            notified
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
                .is_ready()
        }
    }

    fn message<'a>(subject: &'a str, body: &'a str) -> Message<'a> {
        Message {
            subject,
            shown_as: None,
            reply: None,
            headers: b"",
            body: body.as_bytes(),
        }
    }

    fn subscribe(registry: &Registry, peer: &TestPeer, subject: &str, sid: &str) {
        registry
            .subscribe(peer.id, subject.into(), None, sid.into())
            .unwrap();
    }

    #[test]
    fn a_message_reaches_matching_subscriptions_in_the_order_they_were_made() {
        let registry = Registry::new(Arc::default());
        let a = join(&registry, 1024, HEADERS);
        let b = join(&registry, 1024, HEADERS);
        subscribe(&registry, &b, "room.>", "9");
        subscribe(&registry, &a, "room.*", "1");
        subscribe(&registry, &a, "room.1", "2");
        subscribe(&registry, &a, "other", "3");
        assert_eq!(registry.publish(None, &message("room.1", "hi")), 3);
        assert_eq!(b.received(), "MSG room.1 9 2\r\nhi\r\n");
        assert_eq!(
            a.received(),
            "MSG room.1 1 2\r\nhi\r\nMSG room.1 2 2\r\nhi\r\n"
        );
        assert_eq!(registry.subscribers("room.1"), 3);
        assert!(registry.has_interest("other"));
        assert!(!registry.has_interest("nobody"));
    }

    #[test]
    fn invalid_subjects_are_refused_and_a_used_sid_keeps_its_subscription() {
        let registry = Registry::new(Arc::default());
        let peer = join(&registry, 1024, HEADERS);
        assert_eq!(
            registry.subscribe(peer.id, "a..b".into(), None, "1".into()),
            Err(InvalidSubject)
        );
        subscribe(&registry, &peer, "a", "1");
        subscribe(&registry, &peer, "b", "1");
        assert_eq!(registry.subscribers("a"), 1);
        assert_eq!(registry.subscribers("b"), 0);
    }

    #[test]
    fn echo_off_skips_the_publishers_own_subscriptions() {
        let registry = Registry::new(Arc::default());
        let quiet = join(
            &registry,
            1024,
            ClientFlags {
                echo: false,
                ..HEADERS
            },
        );
        let other = join(&registry, 1024, HEADERS);
        subscribe(&registry, &quiet, "a", "1");
        subscribe(&registry, &other, "a", "1");
        assert_eq!(registry.publish(Some(quiet.id), &message("a", "x")), 1);
        assert_eq!(quiet.received(), "");
        assert_eq!(registry.publish(Some(other.id), &message("a", "y")), 2);
        assert_eq!(quiet.received(), "MSG a 1 1\r\ny\r\n");
    }

    #[test]
    fn unsubscribe_with_a_maximum_ends_the_subscription_after_that_many() {
        let registry = Registry::new(Arc::default());
        let peer = join(&registry, 1024, HEADERS);
        subscribe(&registry, &peer, "a", "1");
        registry.publish(None, &message("a", "1"));
        registry.unsubscribe(peer.id, "1", Some(3));
        registry.publish(None, &message("a", "2"));
        registry.publish(None, &message("a", "3"));
        assert_eq!(registry.publish(None, &message("a", "4")), 0);
        assert_eq!(peer.received().matches("MSG").count(), 3);
        subscribe(&registry, &peer, "a", "1");
        registry.publish(None, &message("a", "5"));
        registry.unsubscribe(peer.id, "1", Some(1));
        assert_eq!(
            registry.subscribers("a"),
            0,
            "a maximum already reached removes it at once"
        );
    }

    #[test]
    fn one_member_of_each_queue_group_gets_each_message_in_rotation() {
        let registry = Registry::new(Arc::default());
        let peers: Vec<TestPeer> = (0..3).map(|_| join(&registry, 1024, HEADERS)).collect();
        for peer in &peers[..2] {
            registry
                .subscribe(peer.id, "work".into(), Some("q".into()), "1".into())
                .unwrap();
        }
        subscribe(&registry, &peers[2], "work", "1");
        for n in 0..4 {
            assert_eq!(registry.publish(None, &message("work", &n.to_string())), 2);
        }
        assert_eq!(peers[0].received().matches("MSG").count(), 2);
        assert_eq!(peers[1].received().matches("MSG").count(), 2);
        assert_eq!(peers[2].received().matches("MSG").count(), 4);
    }

    #[test]
    fn headers_are_stripped_for_a_client_without_headers_support() {
        let registry = Registry::new(Arc::default());
        let plain = join(&registry, 1024, ClientFlags::default());
        let modern = join(&registry, 1024, HEADERS);
        subscribe(&registry, &plain, "a", "1");
        subscribe(&registry, &modern, "a", "2");
        let with_headers = Message {
            headers: b"NATS/1.0\r\nK: v\r\n\r\n",
            ..message("a", "hi")
        };
        registry.publish(None, &with_headers);
        assert_eq!(plain.received(), "MSG a 1 2\r\nhi\r\n");
        assert_eq!(
            modern.received(),
            "HMSG a 2 18 20\r\nNATS/1.0\r\nK: v\r\n\r\nhi\r\n"
        );
    }

    #[test]
    fn a_subscriber_whose_queue_is_full_is_dropped_not_waited_for() {
        let controls = Arc::new(Controls::default());
        let registry = Registry::new(Arc::clone(&controls));
        let slow = join(&registry, 40, HEADERS);
        let fast = join(&registry, 40, HEADERS);
        subscribe(&registry, &slow, "a", "1");
        subscribe(&registry, &fast, "a", "1");
        for body in ["1", "2"] {
            assert_eq!(registry.publish(None, &message("a", body)), 2);
            fast.received();
        }
        assert!(!slow.was_killed());
        registry.publish(None, &message("a", "3"));
        assert!(slow.was_killed());
        assert_eq!(controls.stats().slow_consumers_disconnected, 1);
        assert_eq!(registry.subscribers("a"), 1);
        assert_eq!(registry.connections(), 1);
        assert_eq!(slow.received().matches("MSG").count(), 2, "bounded");
    }

    #[test]
    fn no_responders_goes_to_the_requesters_own_reply_subscription() {
        let registry = Registry::new(Arc::default());
        let requester = join(&registry, 1024, HEADERS);
        registry.no_responders(requester.id, "_INBOX.x");
        assert_eq!(
            requester.received(),
            "",
            "no subscription for the reply: nothing"
        );
        subscribe(&registry, &requester, "_INBOX.*", "7");
        registry.no_responders(requester.id, "_INBOX.x");
        assert_eq!(
            requester.received(),
            "HMSG _INBOX.x 7 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"
        );
    }
}
