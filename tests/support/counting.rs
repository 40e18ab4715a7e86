//! A [`NatsLink`] that passes everything to a real one and counts what the bus asks of the
//! server, by subject, so tests can bound server calls instead of timing them. It can also
//! keep one pull request from the server, the way nats-server 2.9 drops a pull whose expiry
//! meets the first new message: the pull loop never hears of it again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_core::stream::BoxStream;
use futures_util::StreamExt;
use hubbus::backend::nats::{
    AsyncNatsLink, LinkError, LinkEvent, LinkMessage, LinkPublish, LinkSubscription, NatsLink,
};

/// See the module documentation.
#[derive(Debug)]
pub struct CountingLink {
    inner: AsyncNatsLink,
    /// `publish <subject>`, `request <subject>` and `subscribe <subject>`, by count.
    calls: Mutex<BTreeMap<String, usize>>,
    /// Set to keep the next pull request from the server.
    swallow_pull: AtomicBool,
    /// Every call in order, with when it was made (`publish <subject>`, ... as in `calls`).
    /// Also `pull batch=<n>` for each pull request and `receive <subscribed subject>` for
    /// each message (not status) a subscription brings.
    log: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl CountingLink {
    pub fn new(inner: AsyncNatsLink) -> Self {
        CountingLink {
            inner,
            calls: Mutex::default(),
            swallow_pull: AtomicBool::new(false),
            log: Arc::default(),
        }
    }

    /// Keeps the next pull request (`$JS.API.CONSUMER.MSG.NEXT`) from the server, as if the
    /// server had dropped it without a word.
    pub fn swallow_next_pull(&self) {
        self.swallow_pull.store(true, Ordering::Release);
    }

    /// True once the armed pull request was kept back.
    pub fn pull_swallowed(&self) -> bool {
        !self.swallow_pull.load(Ordering::Acquire)
    }

    /// Every call so far, in order, with when it was made.
    pub fn log(&self) -> Vec<(Instant, String)> {
        self.log.lock().unwrap().clone()
    }

    fn note(log: &Mutex<Vec<(Instant, String)>>, entry: String) {
        log.lock().unwrap().push((Instant::now(), entry));
    }

    fn count(&self, kind: &str, subject: &str) {
        Self::note(&self.log, format!("{kind} {subject}"));
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
        if message.subject.starts_with("$JS.API.CONSUMER.MSG.NEXT.") {
            let request: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
            Self::note(&self.log, format!("pull batch={}", request["batch"]));
            if self.swallow_pull.swap(false, Ordering::AcqRel) {
                return Ok(());
            }
        }
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
        let log = self.log.clone();
        let subject = subject.to_owned();
        let messages = self.inner.subscribe(&subject).await?;
        Ok(messages.wrap(move |messages| {
            messages.inspect(move |message| {
                if message.status.is_none() {
                    Self::note(&log, format!("receive {subject}"));
                }
            })
        }))
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
