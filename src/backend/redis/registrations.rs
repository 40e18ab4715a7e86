//! Who on this node wants which channel, what Redis has confirmed, and who is waiting to hear.
//!
//! Three facts decide whether a `subscribe` may return: the channel's local subscribers, the
//! channels Redis confirmed on the current Pub/Sub connection, and the `subscribe` calls waiting
//! for a confirmation. They live behind one lock, and every step that reads one of them to
//! change another runs as one critical section:
//!
//! - [`Registrations::register`] adds a subscriber and decides "confirmed" or "wait";
//! - [`Registrations::plan`] snapshots the wanted channels *and* withdraws the confirmation of
//!   every channel about to be unsubscribed;
//! - [`Registrations::settle`] records what Redis answered and tells the waiters.
//!
//! So a subscriber that registers while an `UNSUBSCRIBE` is being planned either registers
//! first (the channel is then still wanted and is not unsubscribed) or after (it then finds the
//! channel unconfirmed and waits for the next `SUBSCRIBE`); it is never told "confirmed" for a
//! subscription that is going away.

use std::collections::{BTreeMap, BTreeSet};

use tokio::sync::oneshot;

use crate::bus::Delivery;
use crate::queue::{ChannelName, Fanout, FanoutClosed, SubscriberQueue};
use crate::sync;

/// What a waiting `subscribe` learns: `Ok` once Redis confirmed `SUBSCRIBE`, or the reason Redis
/// refused the channel. A dropped sender means the bus closed.
pub(super) type Confirmation = oneshot::Receiver<Result<(), String>>;

/// A new local subscriber: its id in the fan-out, its queue, and what it must wait for.
pub(super) struct Registered {
    pub(super) id: u64,
    pub(super) queue: sync::Arc<SubscriberQueue<Delivery>>,
    /// `None` when Redis already confirmed the channel on the current connection.
    pub(super) wait: Option<Confirmation>,
}

/// The commands that bring one connection's subscriptions in line with the local subscribers.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Plan {
    pub(super) subscribe: Vec<ChannelName>,
    pub(super) unsubscribe: Vec<ChannelName>,
}

impl Plan {
    pub(super) fn is_empty(&self) -> bool {
        self.subscribe.is_empty() && self.unsubscribe.is_empty()
    }
}

/// The local side of every Redis subscription (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Registrations {
    /// Local subscriber ids by channel; a channel with an entry must be subscribed on Redis.
    subscribers: BTreeMap<ChannelName, BTreeSet<u64>>,
    /// Channels Redis confirmed on the current Pub/Sub connection.
    confirmed: BTreeSet<ChannelName>,
    /// `subscribe` calls waiting for their channel's confirmation.
    waiters: BTreeMap<ChannelName, Vec<oneshot::Sender<Result<(), String>>>>,
}

impl Registrations {
    /// Adds a subscriber to `channel` and decides, in the same critical section, whether it can
    /// rely on the current subscription or must wait for Redis to confirm one.
    pub(super) fn register(
        &mut self,
        fanout: &Fanout<Delivery>,
        channel: &ChannelName,
        capacity: usize,
    ) -> Result<Registered, FanoutClosed> {
        let (id, queue) = fanout.subscribe(channel, capacity)?;
        self.subscribers
            .entry(channel.clone())
            .or_default()
            .insert(id);
        let wait = if self.confirmed.contains(channel) {
            None
        } else {
            let (tx, rx) = oneshot::channel();
            let waiters = self.waiters.entry(channel.clone()).or_default();
            // Calls that gave up (timed out, dropped) leave closed senders behind.
            waiters.retain(|waiter| !waiter.is_closed());
            waiters.push(tx);
            Some(rx)
        };
        Ok(Registered { id, queue, wait })
    }

    /// Removes subscriber `id`; true when it was the channel's last, so Redis should
    /// unsubscribe. Idempotent: a subscriber removed by a refusal is not there any more.
    pub(super) fn unregister(&mut self, fanout: &Fanout<Delivery>, channel: &str, id: u64) -> bool {
        fanout.unsubscribe(channel, id);
        let Some(ids) = self.subscribers.get_mut(channel) else {
            return false;
        };
        if !ids.remove(&id) || !ids.is_empty() {
            return false;
        }
        self.subscribers.remove(channel);
        // Every waiter belonged to a subscriber of this channel, and they are all gone.
        self.waiters.remove(channel);
        true
    }

    /// The difference between the wanted channels and `subscribed` (what the connection has),
    /// with the confirmation of every channel to unsubscribe withdrawn in the same critical
    /// section: from here on, a new subscriber of such a channel waits for a fresh `SUBSCRIBE`.
    pub(super) fn plan(&mut self, subscribed: &BTreeSet<ChannelName>) -> Plan {
        let subscribe = self
            .subscribers
            .keys()
            .filter(|channel| !subscribed.contains(*channel))
            .cloned()
            .collect();
        let unsubscribe: Vec<ChannelName> = subscribed
            .iter()
            .filter(|channel| !self.subscribers.contains_key(*channel))
            .cloned()
            .collect();
        for channel in &unsubscribe {
            self.confirmed.remove(channel);
        }
        Plan {
            subscribe,
            unsubscribe,
        }
    }

    /// Records Redis's answers: `confirmed` channels are subscribed and their waiters released;
    /// each `refused` channel loses every local subscriber (their streams end) and its waiters
    /// get the reason. Returns how many local subscribers each refused channel had.
    pub(super) fn settle(
        &mut self,
        fanout: &Fanout<Delivery>,
        confirmed: &[ChannelName],
        refused: &[(ChannelName, String)],
    ) -> Vec<usize> {
        for channel in confirmed {
            // A channel whose last subscriber left while SUBSCRIBE was in flight is not
            // confirmed: nobody relies on it and the next round unsubscribes it.
            if !self.subscribers.contains_key(channel) {
                continue;
            }
            self.confirmed.insert(channel.clone());
            for waiter in self.waiters.remove(channel).unwrap_or_default() {
                // A closed receiver is a `subscribe` call that already gave up.
                let _ = waiter.send(Ok(()));
            }
        }
        refused
            .iter()
            .map(|(channel, reason)| {
                for waiter in self.waiters.remove(channel).unwrap_or_default() {
                    let _ = waiter.send(Err(reason.clone()));
                }
                let ids = self.subscribers.remove(channel).unwrap_or_default();
                for id in &ids {
                    fanout.unsubscribe(channel, *id);
                }
                ids.len()
            })
            .collect()
    }

    /// Every channel with local subscribers (for the planted `channel_error_tears_down_others`).
    #[cfg(hubbus_planted)]
    pub(super) fn wanted(&self) -> Vec<ChannelName> {
        self.subscribers.keys().cloned().collect()
    }

    /// The Pub/Sub connection is gone: nothing is confirmed any more. Waiters keep waiting for
    /// the next connection (within their own deadline).
    pub(super) fn connection_lost(&mut self) {
        self.confirmed.clear();
    }

    /// The bus is closed: waiting `subscribe` calls are released (their senders dropped).
    pub(super) fn close(&mut self) {
        self.confirmed.clear();
        self.waiters.clear();
    }
}

#[cfg(all(test, not(hubbus_loom)))]
mod tests {
    use super::*;

    fn name(channel: &str) -> ChannelName {
        channel.into()
    }

    fn set(channels: &[&str]) -> BTreeSet<ChannelName> {
        channels.iter().map(|c| name(c)).collect()
    }

    /// A subscriber that confirmed `channel` on a connection that has it subscribed.
    fn confirmed_subscriber(
        registrations: &mut Registrations,
        fanout: &Fanout<Delivery>,
        channel: &str,
    ) -> u64 {
        let registered = registrations.register(fanout, &name(channel), 8).unwrap();
        let plan = registrations.plan(&BTreeSet::new());
        assert_eq!(plan.subscribe, vec![name(channel)]);
        registrations.settle(fanout, &plan.subscribe, &[]);
        let mut wait = registered.wait.expect("a first subscriber waits");
        assert_eq!(wait.try_recv(), Ok(Ok(())));
        registered.id
    }

    /// The race of the old reconcile: the last subscriber leaves, the supervisor plans the
    /// UNSUBSCRIBE, and a new subscriber arrives before the UNSUBSCRIBE is sent. The old code
    /// read the wanted channels and withdrew the confirmation in two steps, so the newcomer
    /// could be told "confirmed" in between. Planning now withdraws it in the same step, so
    /// the newcomer waits, and the next plan subscribes the channel again.
    #[test]
    fn a_subscriber_arriving_after_the_unsubscribe_was_planned_waits_for_a_new_subscribe() {
        let fanout = Fanout::new();
        let mut registrations = Registrations::default();
        let first = confirmed_subscriber(&mut registrations, &fanout, "room");
        let mut subscribed = set(&["room"]);

        assert!(registrations.unregister(&fanout, "room", first));
        let plan = registrations.plan(&subscribed);
        assert_eq!(plan.unsubscribe, vec![name("room")]);

        let newcomer = registrations.register(&fanout, &name("room"), 8).unwrap();
        let mut wait = newcomer
            .wait
            .expect("not told confirmed while UNSUBSCRIBE is in flight");
        assert!(wait.try_recv().is_err(), "nothing confirmed yet");

        // The UNSUBSCRIBE completes; the next round subscribes again and confirms.
        subscribed.remove("room");
        let plan = registrations.plan(&subscribed);
        assert_eq!(plan.subscribe, vec![name("room")]);
        assert!(plan.unsubscribe.is_empty());
        registrations.settle(&fanout, &plan.subscribe, &[]);
        assert_eq!(wait.try_recv(), Ok(Ok(())));
    }

    /// The other order: the newcomer registers before the plan, so the channel is still wanted
    /// and is neither unsubscribed nor unconfirmed.
    #[test]
    fn a_subscriber_arriving_before_the_plan_keeps_the_subscription() {
        let fanout = Fanout::new();
        let mut registrations = Registrations::default();
        let first = confirmed_subscriber(&mut registrations, &fanout, "room");
        let subscribed = set(&["room"]);

        assert!(registrations.unregister(&fanout, "room", first));
        let newcomer = registrations.register(&fanout, &name("room"), 8).unwrap();
        // Unregistering dropped the confirmation's waiters but not the confirmation itself:
        // the connection still has the channel, so the newcomer may rely on it.
        assert!(newcomer.wait.is_none());
        assert!(registrations.plan(&subscribed).is_empty());
    }

    #[test]
    fn a_refusal_ends_every_local_subscriber_and_tells_the_waiters() {
        let fanout = Fanout::new();
        let mut registrations = Registrations::default();
        let first = registrations.register(&fanout, &name("secret"), 8).unwrap();
        let second = registrations.register(&fanout, &name("secret"), 8).unwrap();
        let other = registrations.register(&fanout, &name("room"), 8).unwrap();
        let plan = registrations.plan(&BTreeSet::new());
        assert_eq!(plan.subscribe, vec![name("room"), name("secret")]);

        let counts = registrations.settle(
            &fanout,
            &[name("room")],
            &[(name("secret"), "NOPERM".to_owned())],
        );
        assert_eq!(counts, vec![2]);
        for registered in [first, second] {
            let mut wait = registered.wait.unwrap();
            assert_eq!(wait.try_recv(), Ok(Err("NOPERM".to_owned())));
            assert!(matches!(
                registered.queue.try_pop(),
                crate::queue::Pop::Closed
            ));
        }
        assert_eq!(other.wait.unwrap().try_recv(), Ok(Ok(())));
        assert!(!fanout.has_subscribers("secret"));
        assert_eq!(registrations.subscribers.len(), 1);
        // Nothing is left that a later round would subscribe again.
        assert!(registrations.plan(&set(&["room"])).is_empty());
        // Dropping a refused subscription afterwards changes nothing.
        assert!(!registrations.unregister(&fanout, "secret", 0));
    }

    #[test]
    fn a_confirmation_for_a_channel_nobody_wants_any_more_is_not_recorded() {
        let fanout = Fanout::new();
        let mut registrations = Registrations::default();
        let registered = registrations.register(&fanout, &name("room"), 8).unwrap();
        let plan = registrations.plan(&BTreeSet::new());
        assert!(registrations.unregister(&fanout, "room", registered.id));
        registrations.settle(&fanout, &plan.subscribe, &[]);
        // A new subscriber must not rely on it: the next round unsubscribes it.
        let again = registrations.register(&fanout, &name("room"), 8).unwrap();
        assert!(again.wait.is_some());
    }

    #[test]
    fn a_lost_connection_unconfirms_and_closing_releases_the_waiters() {
        let fanout = Fanout::new();
        let mut registrations = Registrations::default();
        confirmed_subscriber(&mut registrations, &fanout, "room");
        registrations.connection_lost();
        let waiting = registrations.register(&fanout, &name("room"), 8).unwrap();
        let mut wait = waiting.wait.expect("unconfirmed after the loss");
        // Dead waiters of calls that gave up are pruned when the next one registers.
        drop(
            registrations
                .register(&fanout, &name("room"), 8)
                .unwrap()
                .wait,
        );
        let _third = registrations.register(&fanout, &name("room"), 8).unwrap();
        assert_eq!(registrations.waiters[&name("room")].len(), 2);
        registrations.close();
        assert!(matches!(
            wait.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
    }
}
