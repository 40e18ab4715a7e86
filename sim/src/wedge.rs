//! The wedge switch every fake broker has: while it is on, the broker keeps its connections
//! open and accepts new ones, but executes nothing and writes nothing, the silent failure of a
//! stalled process that only a liveness probe with a timeout detects.
//!
//! The switch lives in a broker's controls, which outlive the host's software, so a test can
//! flip it at any time, also across restarts. Waiters are woken in the order they started
//! waiting (a `watch` channel would wake them in random order and break determinism).

use std::sync::Mutex;

use tokio::sync::Notify;

use crate::server::lock;

/// On or off; see the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Wedge {
    wedged: Mutex<bool>,
    released: Notify,
}

impl Wedge {
    /// Wedges (`true`) or releases (`false`); a release wakes every waiter.
    pub(crate) fn set(&self, wedged: bool) {
        *lock(&self.wedged) = wedged;
        if !wedged {
            self.released.notify_waiters();
        }
    }

    /// Whether the switch is on.
    pub(crate) fn is_on(&self) -> bool {
        *lock(&self.wedged)
    }

    /// Returns once the switch is off.
    pub(crate) async fn until_released(&self) {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            // Register before checking, so a release between the check and the await is seen.
            released.as_mut().enable();
            if !self.is_on() {
                return;
            }
            released.await;
        }
    }
}
