//! A [`NatsLink`] that passes everything to a real one and counts what the bus asks of the
//! server, by subject, so tests can bound server calls instead of timing them.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use futures_core::stream::BoxStream;
use hubbus::backend::nats::{
    AsyncNatsLink, LinkError, LinkEvent, LinkMessage, LinkPublish, LinkSubscription, NatsLink,
};

/// See the module documentation.
#[derive(Debug)]
pub struct CountingLink {
    inner: AsyncNatsLink,
    /// `publish <subject>`, `request <subject>` and `subscribe <subject>`, by count.
    calls: Mutex<BTreeMap<String, usize>>,
}

impl CountingLink {
    pub fn new(inner: AsyncNatsLink) -> Self {
        CountingLink {
            inner,
            calls: Mutex::default(),
        }
    }

    fn count(&self, kind: &str, subject: &str) {
        *self
            .calls
            .lock()
            .unwrap()
            .entry(format!("{kind} {subject}"))
            .or_default() += 1;
    }

    /// The calls counted since the last `take`, and a fresh count.
    pub fn take(&self) -> BTreeMap<String, usize> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    /// How many of `calls` match `wanted` (`"request $JS.API.CONSUMER.INFO."` as a prefix, say).
    pub fn sum(calls: &BTreeMap<String, usize>, wanted: impl Fn(&str) -> bool) -> usize {
        calls
            .iter()
            .filter(|(call, _)| wanted(call))
            .map(|(_, count)| count)
            .sum()
    }
}

#[async_trait::async_trait]
impl NatsLink for CountingLink {
    async fn publish(&self, message: LinkPublish) -> Result<(), LinkError> {
        self.count("publish", &message.subject);
        self.inner.publish(message).await
    }

    async fn flush(&self) -> Result<(), LinkError> {
        self.inner.flush().await
    }

    async fn request(
        &self,
        message: LinkPublish,
        timeout: Duration,
    ) -> Result<LinkMessage, LinkError> {
        self.count("request", &message.subject);
        self.inner.request(message, timeout).await
    }

    async fn subscribe(&self, subject: &str) -> Result<LinkSubscription, LinkError> {
        self.count("subscribe", subject);
        self.inner.subscribe(subject).await
    }

    fn new_inbox(&self) -> String {
        self.inner.new_inbox()
    }

    fn events(&self) -> BoxStream<'static, LinkEvent> {
        self.inner.events()
    }

    fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }

    fn max_payload(&self) -> Option<usize> {
        self.inner.max_payload()
    }

    async fn close(&self) {
        self.inner.close().await
    }
}
