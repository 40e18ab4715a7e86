//! The bus for a single node (the plan's `NoopBus`): publishing succeeds and goes nowhere,
//! subscriptions stay silent and end cleanly when closed.
//!
//! A hub on the noop bus still delivers to its own local subscribers (see [`crate::Hub`]); it
//! just has no other node to talk to. The noop bus still enforces the channel and payload rules
//! so that code written against it keeps working when a real backend is plugged in.

use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;

use crate::backend::{BusOptions, admit, count_publish};
use crate::bus::{
    BusError, Delivery, Health, Message, MessageBus, PublishReceipt, Subscription, validate_channel,
};
use crate::metrics::BackendMetrics;
use crate::queue::{ChannelName, Fanout};
use crate::sync;

const BACKEND: &str = "noop";

/// Discards every message; subscriptions never receive anything.
#[derive(Debug)]
pub struct NoopBus {
    // Never published to: it only tracks open subscriptions so that `close` can end them.
    subscriptions: sync::Arc<Fanout<Delivery>>,
    metrics: BackendMetrics,
    options: BusOptions,
    closed: AtomicBool,
}

impl NoopBus {
    /// A noop bus with default options.
    pub fn new() -> Self {
        Self::with_options(BusOptions::default())
    }

    /// A noop bus with the given options (node id, limits, metrics).
    pub fn with_options(options: BusOptions) -> Self {
        NoopBus {
            subscriptions: sync::Arc::new(Fanout::new()),
            metrics: options.metrics.backend(BACKEND),
            options,
            closed: AtomicBool::new(false),
        }
    }
}

impl Default for NoopBus {
    fn default() -> Self {
        Self::new()
    }
}

impl NoopBus {
    fn publish_now(&self, message: Message) -> Result<PublishReceipt, BusError> {
        let id = admit(&self.options, &message, self.closed.load(Ordering::Acquire))?;
        Ok(PublishReceipt { id, sequence: None })
    }
}

#[async_trait]
impl MessageBus for NoopBus {
    async fn publish_message(&self, message: Message) -> Result<PublishReceipt, BusError> {
        let result = self.publish_now(message);
        count_publish(&self.metrics, &result);
        result
    }

    async fn subscribe(&self, channel: &str) -> Result<Subscription, BusError> {
        validate_channel(channel)?;
        let channel: ChannelName = channel.into();
        let (id, queue) = self
            .subscriptions
            .subscribe(&channel, 1)
            .map_err(|_| BusError::Closed)?;
        let subscriptions = self.subscriptions.clone();
        let name = channel.clone();
        Ok(Subscription::new(
            channel,
            queue,
            Box::new(move || {
                subscriptions.unsubscribe(&name, id);
            }),
        ))
    }

    fn health(&self) -> Health {
        if self.closed.load(Ordering::Acquire) {
            Health::down("the bus is closed")
        } else {
            Health::connected()
        }
    }

    fn options(&self) -> &BusOptions {
        &self.options
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.subscriptions.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan's `TestNoopBus_PublishSubscribe`: publishing succeeds and reaches nobody,
    /// a subscription stays silent and ends cleanly on close.
    #[tokio::test]
    async fn noop_bus_publish_subscribe() {
        let bus = NoopBus::new();
        let mut subscription = bus.subscribe("room1").await.unwrap();
        let receipt = bus.publish("room1", "hello".into()).await.unwrap();
        assert_eq!(receipt.sequence, None);
        assert!(subscription.try_recv().is_none(), "noop delivers nothing");

        assert!(matches!(
            bus.publish("no spaces", "x".into()).await,
            Err(BusError::InvalidChannel { .. })
        ));
        assert!(bus.health().is_connected());

        bus.close().await;
        // The subscription ends: its stream is finished, not pending forever.
        assert!(subscription.recv().await.is_none());
        assert!(matches!(
            bus.publish("room1", "x".into()).await,
            Err(BusError::Closed)
        ));
        assert!(matches!(
            bus.subscribe("room1").await,
            Err(BusError::Closed)
        ));
        assert_eq!(bus.health().state, crate::HealthState::Down);
    }
}
