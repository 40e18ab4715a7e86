//! [`Waiters`]: callers waiting for one outcome (a subscription confirmed, a consumer created),
//! each with a oneshot channel, woken in the order they started waiting.
//!
//! One small type for what subscribe paths wait on, so every list prunes callers that gave up
//! (a `subscribe` that timed out drops its receiver) and none grows without bound. Order
//! matters for the simulation: waking in arrival order replays the same way for a seed.

use tokio::sync::oneshot;

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct Waiters<T> {
    senders: Vec<oneshot::Sender<T>>,
}

impl<T> Default for Waiters<T> {
    fn default() -> Self {
        Waiters {
            senders: Vec::new(),
        }
    }
}

impl<T: Clone> Waiters<T> {
    /// A receiver for the next outcome; forgets callers that stopped waiting.
    pub(crate) fn wait(&mut self) -> oneshot::Receiver<T> {
        self.senders.retain(|sender| !sender.is_closed());
        let (sender, receiver) = oneshot::channel();
        self.senders.push(sender);
        receiver
    }

    /// Hands `outcome` to everyone waiting, in the order they started waiting.
    pub(crate) fn wake(&mut self, outcome: T) {
        for sender in std::mem::take(&mut self.senders) {
            // A caller that gave up does not need it.
            let _ = sender.send(outcome.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everyone_waiting_gets_the_outcome_and_quitters_are_forgotten() {
        let mut waiters = Waiters::default();
        let mut first = waiters.wait();
        let quitter = waiters.wait();
        drop(quitter);
        let mut last = waiters.wait();
        assert_eq!(waiters.senders.len(), 2, "the quitter was pruned");
        waiters.wake(7);
        assert_eq!(first.try_recv(), Ok(7));
        assert_eq!(last.try_recv(), Ok(7));
        assert!(waiters.senders.is_empty());
    }
}
