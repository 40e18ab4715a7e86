//! Deliberately broken variants of the real code: proof that the checks can fail.
//!
//! This module, and every site that consults it, exists only in builds with
//! `RUSTFLAGS="--cfg hubbus_planted"`; no feature turns it on, and a normal build contains none
//! of it. A test or a soak runner plants one bug with [`plant`], runs a scenario, and expects
//! the promise the bug breaks to be reported broken; [`clear`] removes it again. A planted bug
//! is process-wide: tests that plant must not run at the same time as others in the process.
//!
//! The bugs, in the order of [`ALL`]; each is one a real implementation could have:
//!
//! | name | backend | what it does | promise it breaks |
//! |---|---|---|---|
//! | `skip_resubscribe` | Redis, NATS Core (wire link) | after a reconnect, the Redis supervisor takes the channels the lost connection had as still subscribed and sends no `SUBSCRIBE`; the wire link does not renew its subscriptions (`SUB`) on the new connection | "after a broker comes back, subscriptions resume by themselves" |
//! | `ack_before_delivery` | JetStream | the pull loop acknowledges each message to the server before handing it to the local subscribers, so a node that stops (or a copy declined, or a subscriber cut off) before the message was handled loses it | at least once: every acknowledged publish reaches every local subscriber, across node restarts |
//! | `consumer_deliver_new_after_gap` | JetStream | a consumer that vanished while the bus ran is created again with deliver policy `new` instead of after its ack floor, so what was published while it was missing is skipped | at least once: "created again from the ack floor it last reported, so nothing acknowledged is skipped" |
//! | `duplicate_on_reconnect` | NATS Core (wire link) | the link keeps what it published since the server last answered a `PING` and writes it again on the next connection, although the server had processed it | at most once: no subscriber gets a message twice |
//! | `publish_ok_before_write` | Redis | `publish` returns `Ok` at once and sends the `PUBLISH` in the background, so a message is confirmed that Redis never got (lost while the connection is down) | "`publish` returns `Ok` once Redis replied to `PUBLISH`"; every confirmed message reaches the subscribers of a node the fault did not touch |
//! | `channel_error_tears_down_others` | Redis | when Redis refuses one channel (an ACL without it: `NOPERM`), the supervisor ends the subscriptions of every channel on the connection | "a refused channel concerns its own subscribers only: other channels keep receiving" |
//!
//! `sim/tests/planted.rs` plants each one in a deterministic scenario on the fake brokers and
//! shows that the promise holds without it and breaks with it.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The names of the bugs that can be planted, in a fixed order.
pub const ALL: &[&str] = &[
    "skip_resubscribe",
    "ack_before_delivery",
    "consumer_deliver_new_after_gap",
    "duplicate_on_reconnect",
    "publish_ok_before_write",
    "channel_error_tears_down_others",
];

/// Which bug is planted: its index in [`ALL`] plus one; 0 for none.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// Plants the bug `name` in the whole process (replacing any other); an unknown name is an
/// error that lists the known ones.
pub fn plant(name: &str) -> Result<(), String> {
    let Some(index) = ALL.iter().position(|known| *known == name) else {
        return Err(format!(
            "no planted bug is called `{name}`; known: {}",
            ALL.join(", ")
        ));
    };
    ACTIVE.store(index + 1, Ordering::SeqCst);
    Ok(())
}

/// Removes the planted bug: the code behaves as in a normal build again.
pub fn clear() {
    ACTIVE.store(0, Ordering::SeqCst);
}

/// Whether the bug `name` is planted now; what each planted site asks.
pub(crate) fn active(name: &str) -> bool {
    match ACTIVE.load(Ordering::Relaxed) {
        0 => false,
        index => ALL.get(index - 1) == Some(&name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only what changes nothing: planting here would reach the unit tests running beside it
    /// (`sim/tests/planted.rs` plants, one scenario at a time).
    #[test]
    fn unknown_names_are_refused_with_the_known_ones() {
        let error = plant("no_such_bug").unwrap_err();
        assert!(error.contains("no_such_bug"), "{error}");
        for name in ALL {
            assert!(error.contains(name), "{error}");
        }
        let mut names = ALL.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len(), "names are unique");
    }
}
