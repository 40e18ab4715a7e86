//! Which channels this node pulls: one pull loop per channel with local subscribers, started by
//! the first subscriber and retired with the last.
//!
//! Registering a local subscriber and starting a loop, like unregistering one and retiring a
//! loop, happen under one lock, so a channel with local subscribers always has exactly one
//! running loop. A retired loop still has work to do (it deletes its consumer), so it is kept
//! until it has ended: a loop started for the same channel in the meantime waits for it, since
//! both use the same durable name, and `close` waits for it like for every other loop.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::Shared;
use super::consumer::ConsumerState;
use super::pull::{self, AbortOnDrop, Stop};
use crate::bus::{BusError, Subscription, validate_channel};
use crate::queue::ChannelName;

/// A running pull loop.
#[derive(Debug)]
struct PullLoop {
    generation: u64,
    consumer: Arc<ConsumerState>,
    stop: oneshot::Sender<Stop>,
    task: AbortOnDrop,
}

/// The pull loops of one bus.
#[derive(Debug, Default)]
pub(super) struct Channels {
    active: BTreeMap<ChannelName, PullLoop>,
    /// Loops told to stop that have not ended yet, by channel and generation.
    retiring: BTreeMap<(ChannelName, u64), AbortOnDrop>,
    next_generation: u64,
}

impl Channels {
    /// Starts the loop of `channel`, after the retiring loops of the same channel.
    fn start(&mut self, shared: &Arc<Shared>, channel: &ChannelName) -> Arc<ConsumerState> {
        let generation = self.next_generation;
        self.next_generation += 1;
        let retiring: Vec<(ChannelName, u64)> = self
            .retiring
            .range((channel.clone(), 0)..=(channel.clone(), u64::MAX))
            .map(|(key, _)| key.clone())
            .collect();
        let predecessors = retiring
            .iter()
            .filter_map(|key| self.retiring.remove(key))
            .collect();
        let consumer = Arc::new(ConsumerState::new(shared, channel));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(pull::run(
            shared.clone(),
            channel.clone(),
            consumer.clone(),
            predecessors,
            stopped,
            generation,
        ));
        self.active.insert(
            channel.clone(),
            PullLoop {
                generation,
                consumer: consumer.clone(),
                stop,
                task: AbortOnDrop::new(task),
            },
        );
        consumer
    }

    /// Tells the loop of `channel` that its last subscriber left.
    fn retire(&mut self, channel: &ChannelName) {
        if let Some(running) = self.active.remove(channel) {
            let _ = running.stop.send(Stop::Unsubscribed);
            self.retiring
                .insert((channel.clone(), running.generation), running.task);
        }
    }

    /// A loop ended by itself: forget its handle.
    pub(super) fn finished(&mut self, channel: &ChannelName, generation: u64) {
        if let Some(task) = self.retiring.remove(&(channel.clone(), generation)) {
            task.detach();
        }
    }

    /// The consumers of the running loops, in channel order.
    pub(super) fn consumers(&self) -> Vec<Arc<ConsumerState>> {
        self.active
            .values()
            .map(|running| running.consumer.clone())
            .collect()
    }

    /// Tells every loop that the bus closes and hands out all of them to be awaited.
    pub(super) fn close_all(&mut self) -> Vec<AbortOnDrop> {
        let mut tasks = Vec::new();
        for (_, running) in std::mem::take(&mut self.active) {
            let _ = running.stop.send(Stop::Closed);
            tasks.push(running.task);
        }
        tasks.extend(std::mem::take(&mut self.retiring).into_values());
        tasks
    }
}

/// Registers a local subscriber of `channel`, starting the channel's pull loop if it has none,
/// and waits (up to `api_timeout`, while connected) until the loop's consumer exists, so that
/// what is published after this returns is delivered.
///
/// Without a connection, or when the server is slow, the subscription is returned anyway and
/// starts receiving once the loop has its consumer, as Redis subscriptions resume after a
/// reconnect.
pub(super) async fn subscribe(
    shared: &Arc<Shared>,
    channel: &str,
) -> Result<Subscription, BusError> {
    validate_channel(channel)?;
    shared.refuse_if_unusable()?;
    let name: ChannelName = channel.into();
    let (id, queue, ready) = {
        let mut channels = shared.channels();
        let (id, queue) = shared
            .fanout
            .subscribe(&name, shared.options.subscriber_queue)
            .map_err(|_| BusError::Closed)?;
        let consumer = match channels.active.get(&name) {
            Some(running) => running.consumer.clone(),
            None => channels.start(shared, &name),
        };
        (id, queue, consumer.wait_ready())
    };
    let detach = {
        let shared = shared.clone();
        let name = name.clone();
        move || {
            let mut channels = shared.channels();
            if shared.fanout.unsubscribe(&name, id) {
                channels.retire(&name);
            }
        }
    };
    let subscription = Subscription::new(name, queue, Box::new(detach));
    if let Some(ready) = ready
        && shared.link.is_connected()
    {
        let _ = tokio::time::timeout(shared.js.api_timeout, ready).await;
    }
    Ok(subscription)
}
