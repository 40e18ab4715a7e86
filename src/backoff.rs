//! Reconnect pacing: exponential backoff with seeded "full jitter".
//!
//! After the n-th consecutive failure a supervisor waits a random time between zero and
//! `min(max, initial * 2^n)`. Jitter spreads the reconnects of many hubs after a broker restart
//! so they do not arrive as one thundering herd; the randomness comes from the bus's seeded
//! [`IdGenerator`], so a simulation replays the same waits.

use std::time::Duration;

use crate::id::IdGenerator;

/// How long to wait between reconnect attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first wait.
    pub initial: Duration,
    /// The ceiling of every wait (about 1 s by default).
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(1),
        }
    }
}

impl Backoff {
    /// The ceiling after `failures` consecutive failures (0 = first retry).
    pub fn ceiling(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// A jittered wait in `[0, ceiling(failures)]`.
    pub fn delay(&self, failures: u32, ids: &IdGenerator) -> Duration {
        let ceiling = self.ceiling(failures);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(ids.random_u64() % (nanos + 1))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::id::SystemClock;

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let backoff = Backoff::default();
        let ceilings: Vec<_> = (0..8).map(|n| backoff.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [50, 100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn delays_stay_under_the_ceiling_and_replay_with_the_seed() {
        let backoff = Backoff::default();
        let run = |seed| {
            let ids = IdGenerator::seeded(seed, Arc::new(SystemClock));
            (0..20).map(|n| backoff.delay(n, &ids)).collect::<Vec<_>>()
        };
        let delays = run(11);
        for (n, delay) in delays.iter().enumerate() {
            assert!(*delay <= backoff.ceiling(n as u32));
        }
        assert_eq!(delays, run(11));
        assert_ne!(delays, run(12));
        let zero = Backoff {
            initial: Duration::ZERO,
            max: Duration::ZERO,
        };
        assert_eq!(
            zero.delay(3, &IdGenerator::seeded(1, Arc::new(SystemClock))),
            Duration::ZERO
        );
    }
}
