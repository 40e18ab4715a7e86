//! The invariants a run must keep, checked over its recorded events.
//!
//! Every backend:
//! - *integrity*: nothing is delivered that was not published;
//! - *identity*: every delivery of a message carries the id its publish returned, so a
//!   repeat is recognisable as one;
//! - *detection*: every node the fault cuts off reports it through `health()`.
//!
//! At most once (Redis, NATS Core):
//! - *no duplicates*: no local subscriber receives the same message twice;
//! - *order*: each subscriber receives each publisher's confirmed messages in publish order;
//! - *recovery*: a message confirmed while its receiving node was unaffected by the fault
//!   (before the fault began, after it healed and recovery had time, or at any time on a node
//!   the fault never touched) reaches every local subscriber of that node.
//!
//! At least once (JetStream):
//! - *no loss*: every message whose publish returned `Ok` reaches every local subscriber of
//!   every node at least once, whatever the fault: confirmed before a broker crash, while a
//!   node was cut off, anything. A repeat carries the same id (the identity check) and is
//!   counted, not an error. The one exception is a fault that destroys the store (a deleted
//!   stream, a lost disk): what was confirmed before it and not delivered yet is lost by
//!   design; everything confirmed after it must arrive.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hubbus::Guarantee;

use super::event::{Event, Run};
use super::{Fault, Scenario};

/// How long a confirmed message may still be on its way to a node's subscribers: a fault that
/// begins within this time after the confirmation may take it with it on an at-most-once bus.
const IN_FLIGHT: Duration = Duration::from_millis(500);

/// What the checks found besides violations: for the tests' own assertions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Publishes that returned `Ok`.
    pub confirmed: usize,
    /// Deliveries to local subscribers, repeats included.
    pub deliveries: usize,
    /// Deliveries of a message the same subscriber had received before.
    pub repeats: usize,
    /// Repeats the bus flagged as redelivered.
    pub flagged_repeats: usize,
    /// (message, subscriber) pairs the checks required to arrive, and did.
    pub required: usize,
}

impl Run {
    /// Checks the invariants; the error names the backend, the scenario, the seed and what
    /// broke, and says how to replay it.
    pub fn check(&self, scenario: &Scenario) -> Result<Summary, String> {
        let fail = |what: String| {
            Err(format!(
                "{} scenario `{}` with seed {} broke an invariant: {what}\n\
                 replay with HUBBUS_TEST_SIM_SEED={}",
                scenario.backend, scenario.name, self.seed, self.seed
            ))
        };
        let mut summary = Summary::default();
        let mut attempted = BTreeSet::new();
        let mut confirmed: BTreeMap<(usize, u32), (Duration, &str)> = BTreeMap::new();
        for event in &self.events {
            if let Event::Published {
                at,
                node,
                seq,
                outcome,
            } = event
            {
                attempted.insert((*node, *seq));
                if let Ok(id) = outcome {
                    confirmed.insert((*node, *seq), (*at, id.as_str()));
                }
            }
        }
        summary.confirmed = confirmed.len();
        let at_most_once = scenario.backend.guarantee() == Guarantee::AtMostOnce;

        // (node, subscriber, origin, seq) -> the id first received.
        let mut seen: BTreeMap<(usize, usize, usize, u32), &str> = BTreeMap::new();
        let mut last_confirmed: BTreeMap<(usize, usize, usize), u32> = BTreeMap::new();
        for event in &self.events {
            let Event::Delivered {
                node,
                subscriber,
                origin,
                seq,
                id,
                redelivered,
                ..
            } = event
            else {
                continue;
            };
            summary.deliveries += 1;
            let who = format!("node-{node}/{subscriber}");
            if !attempted.contains(&(*origin, *seq)) {
                return fail(format!("{who} received {origin}:{seq}, never published"));
            }
            if let Some((_, published)) = confirmed.get(&(*origin, *seq))
                && published != id
            {
                return fail(format!(
                    "{who} received {origin}:{seq} as {id}, published as {published}"
                ));
            }
            let key = (*node, *subscriber, *origin, *seq);
            if let Some(first) = seen.get(&key) {
                if at_most_once {
                    return fail(format!("{who} received {origin}:{seq} twice"));
                }
                if first != id {
                    return fail(format!(
                        "{who} received {origin}:{seq} again with another id ({id}, first {first})"
                    ));
                }
                summary.repeats += 1;
                summary.flagged_repeats += usize::from(*redelivered);
                continue;
            }
            seen.insert(key, id);
            // Order is promised for confirmed messages; an unconfirmed (timed-out) one may be
            // executed late by a broker that was silent, and land out of order.
            if at_most_once && confirmed.contains_key(&(*origin, *seq)) {
                let stream = (*node, *subscriber, *origin);
                if let Some(previous) = last_confirmed.get(&stream)
                    && *previous > *seq
                {
                    return fail(format!(
                        "{who} received {origin}:{seq} after {origin}:{previous}"
                    ));
                }
                last_confirmed.insert(stream, *seq);
            }
        }

        // Detection: every node the fault touches notices (its health goes down) while the
        // fault lasts or soon after.
        let touched = scenario.fault.touches(scenario.nodes);
        if let Some((start, touched)) = &touched {
            let end = scenario.fault.healed_at().unwrap_or(*start) + scenario.heal_bound;
            for node in touched {
                let noticed = self.events.iter().any(|event| {
                    matches!(event, Event::Health { at, node: n, connected: false, .. }
                        if n == node && at >= start && *at <= end)
                });
                if !noticed {
                    return fail(format!(
                        "node-{node} never reported the fault between {start:?} and {end:?}"
                    ));
                }
            }
        }

        // Which (message, node) pairs must have arrived.
        let affected = |node: usize, at: Duration| -> bool {
            let Some((start, touched)) = &touched else {
                return false;
            };
            let end = scenario.fault.healed_at().unwrap_or(*start) + scenario.heal_bound;
            touched.contains(&node) && at + IN_FLIGHT >= *start && at <= end
        };
        let settled = scenario
            .fault
            .healed_at()
            .map_or(Duration::ZERO, |healed| healed + scenario.heal_bound);
        if scenario.fault != Fault::None && !confirmed.values().any(|(at, _)| *at >= settled) {
            return fail(format!(
                "no message was confirmed after recovery ({settled:?})"
            ));
        }
        // Confirmed before the store was lost (or just before: its confirmation may still have
        // been on its way): it may be gone with the store.
        let lost_with_store = |at: Duration| -> bool {
            scenario
                .fault
                .destroys_store()
                .is_some_and(|lost| at <= lost + IN_FLIGHT)
        };
        for (&(origin, seq), &(at, _)) in &confirmed {
            if lost_with_store(at) {
                continue;
            }
            for node in 0..scenario.nodes {
                if at_most_once && affected(node, at) {
                    continue;
                }
                for subscriber in 0..scenario.subscribers {
                    if !seen.contains_key(&(node, subscriber, origin, seq)) {
                        let why = if at_most_once {
                            "while it was unaffected by the fault"
                        } else {
                            "on an at-least-once bus"
                        };
                        return fail(format!(
                            "node-{node}/{subscriber} never received {origin}:{seq}, confirmed \
                             at {at:?} {why}"
                        ));
                    }
                    summary.required += 1;
                }
            }
        }
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::Backend;

    const SECOND: Duration = Duration::from_secs(1);

    fn published(node: usize, seq: u32, at: Duration) -> Event {
        Event::Published {
            at,
            node,
            seq,
            outcome: Ok(format!("id-{node}-{seq}")),
        }
    }

    fn delivered(node: usize, subscriber: usize, origin: usize, seq: u32) -> Event {
        Event::Delivered {
            at: Duration::ZERO,
            node,
            subscriber,
            origin,
            seq,
            id: format!("id-{origin}-{seq}"),
            redelivered: false,
        }
    }

    /// Two nodes with one subscriber each; node 0 publishes message 0 at 1 s.
    fn scenario(fault: Fault) -> Scenario {
        Scenario {
            nodes: 2,
            subscribers: 1,
            ..Scenario::new(Backend::Redis, fault)
        }
    }

    fn complete() -> Vec<Event> {
        vec![
            published(0, 0, SECOND),
            delivered(0, 0, 0, 0),
            delivered(1, 0, 0, 0),
        ]
    }

    fn check(fault: Fault, events: Vec<Event>) -> Result<Summary, String> {
        Run { seed: 9, events }.check(&scenario(fault))
    }

    #[test]
    fn a_complete_run_passes_and_counts_what_was_required() {
        let summary = check(Fault::None, complete()).unwrap();
        assert_eq!((summary.confirmed, summary.required), (1, 2));
    }

    #[test]
    fn a_missing_delivery_fails_and_names_the_seed() {
        let mut events = complete();
        events.pop();
        let error = check(Fault::None, events).unwrap_err();
        assert!(error.contains("node-1/0 never received 0:0"), "{error}");
        assert!(error.contains("HUBBUS_TEST_SIM_SEED=9"), "{error}");
    }

    #[test]
    fn a_duplicate_on_an_at_most_once_bus_fails() {
        let mut events = complete();
        events.push(delivered(1, 0, 0, 0));
        let error = check(Fault::None, events).unwrap_err();
        assert!(error.contains("twice"), "{error}");
    }

    #[test]
    fn a_delivery_nobody_published_fails() {
        let mut events = complete();
        events.push(delivered(1, 0, 1, 5));
        let error = check(Fault::None, events).unwrap_err();
        assert!(error.contains("never published"), "{error}");
    }

    #[test]
    fn a_delivery_with_another_id_fails() {
        let mut events = complete();
        if let Some(Event::Delivered { id, .. }) = events.last_mut() {
            *id = "other".into();
        }
        let error = check(Fault::None, events).unwrap_err();
        assert!(error.contains("published as id-0-0"), "{error}");
    }

    #[test]
    fn confirmed_messages_out_of_order_fail() {
        let events = vec![
            published(0, 0, SECOND),
            published(0, 1, SECOND),
            delivered(0, 0, 0, 0),
            delivered(0, 0, 0, 1),
            delivered(1, 0, 0, 1),
            delivered(1, 0, 0, 0),
        ];
        let error = check(Fault::None, events).unwrap_err();
        assert!(error.contains("received 0:0 after 0:1"), "{error}");
    }

    #[test]
    fn a_node_that_never_notices_the_fault_fails() {
        let fault = Fault::PartitionNode {
            node: 1,
            at: 2 * SECOND,
            heal_after: SECOND,
        };
        let mut events = complete();
        events.push(published(0, 1, 20 * SECOND));
        events.push(delivered(0, 0, 0, 1));
        events.push(delivered(1, 0, 0, 1));
        let error = check(fault, events.clone()).unwrap_err();
        assert!(error.contains("node-1 never reported the fault"), "{error}");
        events.push(Event::Health {
            at: 2 * SECOND,
            node: 1,
            connected: false,
            reason: "gone".into(),
        });
        check(fault, events).unwrap();
    }

    #[test]
    fn what_was_confirmed_before_the_fault_must_arrive_but_not_what_it_caught() {
        let fault = Fault::PartitionNode {
            node: 1,
            at: 2 * SECOND,
            heal_after: SECOND,
        };
        let down = Event::Health {
            at: 2 * SECOND,
            node: 1,
            connected: false,
            reason: "gone".into(),
        };
        // Confirmed during the partition: node 1 may miss it, node 0 may not.
        let mut events = vec![
            down.clone(),
            published(0, 0, 2 * SECOND),
            delivered(0, 0, 0, 0),
            published(0, 1, 20 * SECOND),
            delivered(0, 0, 0, 1),
            delivered(1, 0, 0, 1),
        ];
        check(fault, events.clone()).unwrap();
        events.remove(2);
        let error = check(fault, events).unwrap_err();
        assert!(error.contains("node-0/0 never received 0:0"), "{error}");
        // Confirmed well before the partition: node 1 must have it.
        let events = vec![
            down,
            published(0, 0, SECOND),
            delivered(0, 0, 0, 0),
            published(0, 1, 20 * SECOND),
            delivered(0, 0, 0, 1),
            delivered(1, 0, 0, 1),
        ];
        let error = check(fault, events).unwrap_err();
        assert!(error.contains("node-1/0 never received 0:0"), "{error}");
    }

    #[test]
    fn a_fault_run_must_confirm_something_after_recovery() {
        let fault = Fault::BounceBroker { at: 2 * SECOND };
        let mut events = complete();
        for node in 0..2 {
            events.push(Event::Health {
                at: 2 * SECOND,
                node,
                connected: false,
                reason: "gone".into(),
            });
        }
        let error = check(fault, events).unwrap_err();
        assert!(
            error.contains("no message was confirmed after recovery"),
            "{error}"
        );
    }

    fn jetstream(fault: Fault) -> Scenario {
        Scenario {
            nodes: 2,
            subscribers: 1,
            ..Scenario::new(Backend::JetStream, fault)
        }
    }

    #[test]
    fn at_least_once_requires_what_a_partition_caught_and_flags_nothing_twice() {
        let fault = Fault::PartitionNode {
            node: 1,
            at: 2 * SECOND,
            heal_after: SECOND,
        };
        let down = Event::Health {
            at: 2 * SECOND,
            node: 1,
            connected: false,
            reason: "gone".into(),
        };
        let mut events = vec![
            down,
            published(0, 0, 2 * SECOND),
            delivered(0, 0, 0, 0),
            published(0, 1, 20 * SECOND),
            delivered(0, 0, 0, 1),
            delivered(1, 0, 0, 1),
        ];
        let run = |events: Vec<Event>| Run { seed: 9, events }.check(&jetstream(fault));
        let error = run(events.clone()).unwrap_err();
        assert!(error.contains("node-1/0 never received 0:0"), "{error}");
        assert!(error.contains("at-least-once"), "{error}");
        events.push(delivered(1, 0, 0, 0));
        // A repeat with the same id is allowed and counted.
        events.push(delivered(1, 0, 0, 0));
        let summary = run(events).unwrap();
        assert_eq!(summary.repeats, 1);
    }

    #[test]
    fn a_lost_store_excuses_only_what_was_confirmed_before_it() {
        let fault = Fault::DiskLoss {
            at: 2 * SECOND,
            down_for: SECOND,
        };
        let down = |node| Event::Health {
            at: 2 * SECOND,
            node,
            connected: false,
            reason: "gone".into(),
        };
        let run = |events: Vec<Event>| Run { seed: 9, events }.check(&jetstream(fault));
        // Confirmed before the disk went and never delivered: lost by design.
        let mut events = vec![
            down(0),
            down(1),
            published(0, 0, SECOND),
            published(0, 1, 20 * SECOND),
            delivered(0, 0, 0, 1),
        ];
        let error = run(events.clone()).unwrap_err();
        assert!(error.contains("node-1/0 never received 0:1"), "{error}");
        events.push(delivered(1, 0, 0, 1));
        run(events).unwrap();
    }
}
