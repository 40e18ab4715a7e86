//! [`LogLimiter`]: lets an event that can repeat at network speed (a slow consumer, a malformed
//! frame, a server error per message) reach the log at most once per interval, and says how many
//! were left out in between, so a flood costs one line per interval and loses no count. The
//! metrics count every event; the log only tells an operator that it happens.

use std::time::Duration;

use tokio::time::Instant;

/// At most one log line per this interval for events that can repeat per message.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(10);

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    every: Duration,
    next: Option<Instant>,
    left_out: u64,
}

impl LogLimiter {
    /// At most one log line per `every`.
    pub(crate) const fn new(every: Duration) -> Self {
        LogLimiter {
            every,
            next: None,
            left_out: 0,
        }
    }

    /// Counts `events` that happened together; `Some(left out)` when it is time for a log line
    /// (with how many events went unlogged since the last one, these excepted the first),
    /// `None` when they are left out.
    pub(crate) fn admit(&mut self, events: u64) -> Option<u64> {
        let now = Instant::now();
        match self.next {
            Some(next) if now < next => {
                self.left_out += events;
                None
            }
            _ => {
                self.next = Some(now + self.every);
                Some(std::mem::take(&mut self.left_out) + events.saturating_sub(1))
            }
        }
    }
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter::new(LOG_EVERY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn logs_once_per_interval_and_counts_the_rest() {
        let mut limiter = LogLimiter::default();
        assert_eq!(limiter.admit(1), Some(0));
        assert_eq!(limiter.admit(1), None);
        assert_eq!(limiter.admit(3), None);
        tokio::time::advance(LOG_EVERY).await;
        assert_eq!(limiter.admit(1), Some(4));
        assert_eq!(limiter.admit(2), None);
        tokio::time::advance(LOG_EVERY).await;
        assert_eq!(limiter.admit(5), Some(2 + 4));
    }
}
