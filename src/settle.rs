//! Settling one broker message that reaches several subscribers: the countdown behind
//! [`crate::Delivery::ack`] and [`crate::Delivery::nak`] on at-least-once backends.
//!
//! The broker hands a node one message (the *root*, see the JetStream backend); the bus hands it
//! to each of its subscribers of the channel, and a [`crate::Hub`] above the bus hands its copy
//! on to each of its local subscribers. Every hand-over makes *copies* that share a
//! [`Countdown`], and the countdown settles its parent (the root, or the copy one level up):
//!
//! - the parent is acknowledged once every copy was acknowledged or *released* (a subscriber
//!   cut off as lagged is told so, and gives up its copies);
//! - the first copy that declines (`nak`) declines the parent at once, so the broker delivers
//!   the message again, flagged redelivered; later acks of other copies are no-ops;
//! - a copy dropped without a word declines it too (a handler that lost a message must not make
//!   the broker forget it);
//! - a copy *abandoned* because its subscription ended leaves the message unsettled: the broker
//!   delivers it again after its ack wait. A process that goes down thereby hands its unfinished
//!   work to its next run instead of acknowledging it on the way out.
//!
//! Each level settles once: the first ack or nak wins. A second `ack` while the first is still
//! in flight waits for it, and tries again itself if the first failed, so it never reports
//! success for an acknowledgement that did not happen.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::OnceCell;

use crate::bus::BusError;

/// Something that settles one message: the broker's root acker, or a copy one level up.
#[async_trait]
pub(crate) trait Settle: Send + Sync + fmt::Debug {
    /// The message was handled.
    async fn ack(&self) -> Result<(), BusError>;
    /// The message was not handled; the broker should deliver it again after `delay`.
    async fn nak(&self, delay: Option<Duration>) -> Result<(), BusError>;
    /// Nobody will settle the message: leave it to the broker's ack wait.
    fn abandon(&self);
}

/// The shared state of the copies of one message.
#[derive(Debug)]
pub(crate) struct Countdown {
    parent: Arc<dyn Settle>,
    /// Copies that have not been acknowledged, released or abandoned yet.
    remaining: AtomicUsize,
    /// True once a copy was abandoned: the parent is then abandoned, not acknowledged.
    abandoned: AtomicBool,
    /// Set once the parent was settled (acknowledged or declined).
    settled: OnceCell<()>,
}

impl Countdown {
    /// Settles the parent once no copy is outstanding (acknowledges it, or abandons it when a
    /// copy was abandoned); `Ok` at once otherwise.
    async fn finish_if_complete(&self) -> Result<(), BusError> {
        if self.remaining.load(Ordering::Acquire) > 0 {
            return Ok(());
        }
        if self.abandoned.load(Ordering::Acquire) {
            return Ok(());
        }
        self.settled
            .get_or_try_init(|| self.parent.ack())
            .await
            .map(drop)
    }

    /// One copy is done (acknowledged or released).
    async fn copy_done(&self) -> Result<(), BusError> {
        let last = self.remaining.fetch_sub(1, Ordering::AcqRel) == 1;
        if last && self.abandoned.load(Ordering::Acquire) {
            self.parent.abandon();
            return Ok(());
        }
        self.finish_if_complete().await
    }

    /// One copy was abandoned; the last one to finish abandons the parent.
    fn copy_abandoned(&self) {
        self.abandoned.store(true, Ordering::Release);
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 && self.settled.get().is_none() {
            self.parent.abandon();
        }
    }

    async fn nak(&self, delay: Option<Duration>) -> Result<(), BusError> {
        self.settled
            .get_or_try_init(|| self.parent.nak(delay))
            .await
            .map(drop)
    }
}

const OPEN: u8 = 0;
/// Acknowledged or released: this copy's share of the countdown is done.
const DONE: u8 = 1;
const DECLINED: u8 = 2;
const ABANDONED: u8 = 3;

/// One copy of a message, held by one subscriber (through every clone of its delivery).
#[derive(Debug)]
pub(crate) struct CopyAck {
    countdown: Arc<Countdown>,
    state: AtomicU8,
}

/// `count` copies of one message whose settlement goes to `parent`.
pub(crate) fn copies(parent: Arc<dyn Settle>, count: usize) -> Vec<Arc<CopyAck>> {
    let countdown = Arc::new(Countdown {
        parent,
        remaining: AtomicUsize::new(count),
        abandoned: AtomicBool::new(false),
        settled: OnceCell::new(),
    });
    (0..count)
        .map(|_| {
            Arc::new(CopyAck {
                countdown: countdown.clone(),
                state: AtomicU8::new(OPEN),
            })
        })
        .collect()
}

impl CopyAck {
    fn take(&self, to: u8) -> bool {
        self.state
            .compare_exchange(OPEN, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Gives up this copy without declining the message: the subscriber was told it fell
    /// behind, and the other copies decide.
    pub(crate) async fn release(&self) -> Result<(), BusError> {
        if self.take(DONE) {
            self.countdown.copy_done().await
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Settle for CopyAck {
    async fn ack(&self) -> Result<(), BusError> {
        if self.take(DONE) {
            return self.countdown.copy_done().await;
        }
        match self.state.load(Ordering::Acquire) {
            // Acknowledged before: the final ack of the parent may have failed, or still be in
            // flight; either way, wait for it (or try it again).
            DONE => self.countdown.finish_if_complete().await,
            // The first settlement wins.
            _ => Ok(()),
        }
    }

    async fn nak(&self, delay: Option<Duration>) -> Result<(), BusError> {
        if self.take(DECLINED) || self.state.load(Ordering::Acquire) == DECLINED {
            self.countdown.nak(delay).await
        } else {
            Ok(())
        }
    }

    /// Leaves this copy unsettled for good: its subscription ended, so the broker delivers the
    /// message again after its ack wait (once the other copies are done too).
    fn abandon(&self) {
        if self.take(ABANDONED) {
            self.countdown.copy_abandoned();
        }
    }
}

impl Drop for CopyAck {
    fn drop(&mut self) {
        if self.state.load(Ordering::Acquire) != OPEN {
            return;
        }
        // Dropped without a word: the message must come back. Settling is I/O, so it runs on
        // a task of its own; without a runtime (the process is ending) the broker's ack wait
        // brings the message back instead.
        let countdown = self.countdown.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = countdown.nak(None).await {
                    tracing::debug!(%error, "declining a dropped delivery failed; it comes back after its ack wait");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records what reached it; fails the first `failures` calls.
    #[derive(Debug, Default)]
    struct Recorder {
        calls: Mutex<Vec<String>>,
        failures: AtomicUsize,
    }

    impl Recorder {
        fn failing(failures: usize) -> Arc<Self> {
            Arc::new(Recorder {
                calls: Mutex::default(),
                failures: AtomicUsize::new(failures),
            })
        }

        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }

        async fn record(&self, call: String) -> Result<(), BusError> {
            // A real settle is a network round trip: let others run meanwhile.
            tokio::task::yield_now().await;
            self.calls.lock().unwrap().push(call.clone());
            let failing = self
                .failures
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok();
            if failing {
                Err(BusError::NotConnected(format!("{call} failed")))
            } else {
                Ok(())
            }
        }
    }

    #[async_trait]
    impl Settle for Recorder {
        async fn ack(&self) -> Result<(), BusError> {
            self.record("ack".into()).await
        }

        async fn nak(&self, delay: Option<Duration>) -> Result<(), BusError> {
            self.record(format!("nak {delay:?}")).await
        }

        fn abandon(&self) {
            self.calls.lock().unwrap().push("abandon".into());
        }
    }

    #[tokio::test]
    async fn the_parent_is_acknowledged_after_the_last_copy() {
        let root = Recorder::failing(0);
        let copies = copies(root.clone(), 3);
        copies[0].ack().await.unwrap();
        copies[2].release().await.unwrap();
        assert!(root.calls().is_empty(), "one copy is still out");
        copies[1].ack().await.unwrap();
        assert_eq!(root.calls(), ["ack"]);
        // Settling again changes nothing.
        copies[1].ack().await.unwrap();
        copies[0].nak(None).await.unwrap();
        assert_eq!(root.calls(), ["ack"]);
    }

    #[tokio::test]
    async fn the_first_nak_declines_for_every_copy() {
        let root = Recorder::failing(0);
        let copies = copies(root.clone(), 2);
        copies[1].nak(Some(Duration::from_secs(1))).await.unwrap();
        assert_eq!(root.calls(), ["nak Some(1s)"]);
        copies[0].ack().await.unwrap();
        assert_eq!(
            root.calls(),
            ["nak Some(1s)"],
            "acks after a nak are no-ops"
        );
    }

    #[tokio::test]
    async fn a_copy_dropped_without_a_word_declines_and_an_abandoned_one_stays_unsettled() {
        let root = Recorder::failing(0);
        let mut two = copies(root.clone(), 2);
        two.pop();
        // The task the drop spawned has run once this one yields.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert_eq!(root.calls(), ["nak None"]);

        let root = Recorder::failing(0);
        let two = copies(root.clone(), 2);
        two[0].ack().await.unwrap();
        two[1].abandon();
        drop(two);
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            root.calls(),
            ["abandon"],
            "one copy unread: the message stays with the broker"
        );
    }

    #[tokio::test]
    async fn a_second_ack_never_reports_a_failed_one_as_done() {
        let root = Recorder::failing(1);
        let one = copies(root.clone(), 1);
        let copy = one[0].clone();
        let (first, second) = tokio::join!(one[0].ack(), copy.ack());
        // The first attempt failed; the second waited for it and tried again itself.
        assert!(first.is_err(), "{first:?}");
        assert!(second.is_ok(), "{second:?}");
        assert_eq!(root.calls(), ["ack", "ack"]);

        let root = Recorder::failing(2);
        let one = copies(root.clone(), 1);
        assert!(one[0].ack().await.is_err());
        assert!(one[0].ack().await.is_err(), "the retry failed too");
        assert!(one[0].ack().await.is_ok());
        assert_eq!(root.calls(), ["ack", "ack", "ack"]);
    }
}
