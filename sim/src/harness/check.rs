//! The invariants a run must keep, checked over its recorded events.
//!
//! Every backend:
//! - *integrity*: nothing is delivered that was not published;
//! - *identity*: every delivery of a message carries the id its publish returned, so a
//!   repeat is recognisable as one;
//! - *detection*: every node a fault cuts off reports it through `health()`, when the fault
//!   lasts long enough to be noticed ([`Fault::must_be_noticed`]);
//! - *recovery*: after every fault heals and the recovery bound passes, publishes are confirmed
//!   again (checked where no other fault is under way).
//!
//! At most once (Redis, NATS Core):
//! - *no duplicates*: no local subscriber receives the same message twice;
//! - *order*: each subscriber receives each publisher's confirmed messages in publish order;
//! - *delivery*: a message confirmed while neither its publisher's node nor the receiving node
//!   was disturbed (by a fault touching it, or a restart of its process, until the recovery
//!   bound after) reaches every local subscriber of its channel that was subscribed before the
//!   publish and still subscribed a moment after the confirmation;
//! - *drops are counted*: a subscriber may miss such messages (its queue was full), but no
//!   more than its subscription counted as dropped, and the node's metrics counted at least
//!   as many drops as any one subscription reports.
//!
//! At least once (JetStream):
//! - *no loss*: every message whose publish returned `Ok` reaches every local subscriber of its
//!   channel that was subscribed before the publish and stays subscribed for the run (across
//!   restarts of its node), at least once, whatever the faults: confirmed before a broker crash,
//!   while a node was cut off or stopped, anything. A repeat carries the same id (the identity
//!   check) and is counted, not an error. The one exception is a fault that destroys the store
//!   (a deleted stream, a lost disk): what was confirmed before it and not delivered yet is lost
//!   by design; everything confirmed after it must arrive, except at a node whose process was
//!   away when the store was lost, or stopped before the recovery bound after the store came
//!   back: it lost its consumer with the store, starts its next run with a new one and gets
//!   what is published once it is back (until the recovery bound after its return). A subscriber the bus cut off
//!   as lagged is excused, and counted.

use std::collections::BTreeMap;
use std::time::Duration;

use hubbus::Guarantee;

use super::event::{Event, Run};
use super::{Backend, Fault, Scenario};

/// How long a confirmed message may still be on its way to a node's subscribers: a fault that
/// begins within this time after the confirmation may take it with it on an at-most-once bus.
const IN_FLIGHT: Duration = Duration::from_millis(500);

/// After a fault healed and the recovery bound passed, how long publishes have to be confirmed
/// again.
const RECOVERY_WINDOW: Duration = Duration::from_secs(2);

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

/// A message: (publishing node, publisher, sequence number).
type Key = (usize, usize, u32);

/// A confirmed publish.
struct Confirmed<'a> {
    started: Duration,
    at: Duration,
    channel: usize,
    id: &'a str,
}

/// One subscription of a local subscriber: from `Subscribed` to `Unsubscribed` (or the end).
struct Stint<'a> {
    from: Duration,
    until: Option<Duration>,
    dropped: u64,
    lagged: bool,
    /// What was still queued for it when it left.
    unread: &'a [Key],
}

/// A node process away: from the restart's time, when its subscribers leave, until it started
/// again, which is later than the restart asked for when closing took long.
#[derive(Debug, Clone, Copy)]
struct Away {
    node: usize,
    from: Duration,
    back: Duration,
    /// When the process, started again, first connected: only then can it find its consumer.
    connected: Duration,
}

impl Away {
    fn of(scenario: &Scenario, events: &[Event]) -> Vec<Away> {
        scenario
            .restarts
            .iter()
            .map(|r| {
                let started = events.iter().find_map(|event| match event {
                    Event::NodeStarted { at, node } if *node == r.node && *at >= r.at => Some(*at),
                    _ => None,
                });
                let back = started.unwrap_or_default().max(r.at + r.down_for);
                let connected = events.iter().find_map(|event| match event {
                    Event::Health {
                        at,
                        node,
                        connected: true,
                        ..
                    } if *node == r.node && *at >= back => Some(*at),
                    _ => None,
                });
                Away {
                    node: r.node,
                    from: r.at,
                    back,
                    connected: connected.unwrap_or(back).max(back),
                }
            })
            .collect()
    }
}

/// The windows in which each node was disturbed: a fault touching it (until the recovery
/// bound after it healed), or its process stopped (likewise).
struct Disturbances(BTreeMap<usize, Vec<(Duration, Duration)>>);

impl Disturbances {
    fn of(scenario: &Scenario, away: &[Away]) -> Self {
        let mut windows: BTreeMap<usize, Vec<(Duration, Duration)>> = BTreeMap::new();
        for fault in &scenario.faults {
            if let Some((start, nodes)) = fault.touches(scenario.nodes) {
                let end = fault.healed_at().unwrap_or(start) + scenario.heal_bound;
                for node in nodes {
                    windows.entry(node).or_default().push((start, end));
                }
            }
        }
        for away in away {
            windows
                .entry(away.node)
                .or_default()
                .push((away.from, away.back + scenario.heal_bound));
        }
        Disturbances(windows)
    }

    /// Whether `node` was disturbed while a message published at `started` and confirmed at
    /// `at` was on its way.
    fn during(&self, node: usize, started: Duration, at: Duration) -> bool {
        self.0.get(&node).is_some_and(|windows| {
            windows
                .iter()
                .any(|(start, end)| started <= *end && at + IN_FLIGHT >= *start)
        })
    }

    /// Whether any node was disturbed at some time in `(from, to]`.
    fn any_between(&self, from: Duration, to: Duration) -> bool {
        self.0
            .values()
            .flatten()
            .any(|(start, end)| *start <= to && *end > from)
    }

    /// Whether `node`'s process was stopped at some time in `[from, to]`.
    fn stopped(away: &[Away], node: usize, from: Duration, to: Duration) -> bool {
        away.iter()
            .any(|a| a.node == node && a.from <= to && a.back >= from)
    }
}

/// The windows in which the broker cannot answer a node: it is down or silent, or what it
/// sends to the node is lost. A reply sent just before may still arrive for the most a
/// message takes ([`Silences::margin`]).
struct Silences {
    windows: Vec<(Option<usize>, Duration, Duration, &'static str)>,
}

impl Silences {
    fn of(scenario: &Scenario) -> Self {
        let margin = Self::margin(scenario);
        let windows = scenario
            .faults
            .iter()
            .filter_map(|fault| {
                let node = match *fault {
                    // On a cluster the silent node is one master of three: publishes to the
                    // others are answered until the bus notices the silence and reconnects.
                    Fault::WedgeBroker { .. } if scenario.backend == Backend::RedisSharded => {
                        return None;
                    }
                    Fault::CrashBroker { .. }
                    | Fault::DiskLoss { .. }
                    | Fault::WedgeBroker { .. } => None,
                    Fault::PartitionNode { node, .. } | Fault::OneWay { node, .. } => Some(node),
                    _ => return None,
                };
                let (at, _) = fault.touches(scenario.nodes)?;
                let healed = fault.healed_at()?;
                (healed > at + margin).then(|| (node, at + margin, healed, fault.name()))
            })
            .collect();
        Silences { windows }
    }

    /// The most a message takes: the links' latency, or a latency spike's.
    fn margin(scenario: &Scenario) -> Duration {
        let spikes = scenario.faults.iter().filter_map(|fault| match *fault {
            Fault::LatencySpike { latency, .. } => Some(latency),
            _ => None,
        });
        spikes.fold(scenario.backend.max_latency(), Duration::max) + Duration::from_millis(1)
    }

    /// The fault that kept the broker from answering `node` at `at`, if one did.
    fn during(&self, node: usize, at: Duration) -> Option<&'static str> {
        self.windows
            .iter()
            .find(|(only, from, to, _)| only.is_none_or(|n| n == node) && *from < at && at < *to)
            .map(|(_, _, _, name)| *name)
    }
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
        let at_most_once = scenario.backend.guarantee() == Guarantee::AtMostOnce;

        // What was published (from its first attempt on: a retry with the same id may find it
        // stored by an attempt that timed out), and what was confirmed (the first `Ok` of a
        // message's attempts).
        let mut attempted: BTreeMap<Key, Duration> = BTreeMap::new();
        let mut confirmed: BTreeMap<Key, Confirmed<'_>> = BTreeMap::new();
        for event in &self.events {
            if let Event::Published {
                started,
                at,
                node,
                publisher,
                channel,
                seq,
                outcome,
                ..
            } = event
            {
                let key = (*node, *publisher, *seq);
                let first_try = *attempted.entry(key).or_insert(*started);
                if let Ok(id) = outcome {
                    if let Some(first) = confirmed.get(&key) {
                        if first.id != id {
                            return fail(format!(
                                "{node}:{publisher}:{seq} was confirmed as {} and as {id}",
                                first.id
                            ));
                        }
                        continue;
                    }
                    confirmed.insert(
                        key,
                        Confirmed {
                            started: first_try,
                            at: *at,
                            channel: *channel,
                            id,
                        },
                    );
                }
            }
        }
        summary.confirmed = confirmed.len();

        // Confirmation: where `Ok` stands for the broker's answer, none comes while the broker
        // cannot answer the publishing node.
        if scenario.backend.confirms_by_reply() {
            let silences = Silences::of(scenario);
            for (&(node, publisher, seq), message) in &confirmed {
                if let Some(fault) = silences.during(node, message.at) {
                    return fail(format!(
                        "{node}:{publisher}:{seq} was confirmed at {:?}, while `{fault}` kept the \
                         broker from answering node-{node}",
                        message.at
                    ));
                }
            }
        }

        // Each local subscriber's subscriptions.
        let mut stints: BTreeMap<(usize, usize), Vec<Stint>> = BTreeMap::new();
        for event in &self.events {
            match event {
                Event::Subscribed {
                    at,
                    node,
                    subscriber,
                } => stints.entry((*node, *subscriber)).or_default().push(Stint {
                    from: *at,
                    until: None,
                    dropped: 0,
                    lagged: false,
                    unread: &[],
                }),
                Event::Unsubscribed {
                    at,
                    node,
                    subscriber,
                    dropped,
                    lagged,
                    ended,
                    unread,
                } => {
                    // A subscription ends when its subscriber leaves, its node stops, or the
                    // bus cuts it off as lagged, and not otherwise.
                    if *ended && !*lagged {
                        return fail(format!(
                            "the bus ended node-{node}/{subscriber}'s subscription at {at:?} \
                             without cutting it off as lagged"
                        ));
                    }
                    if let Some(stint) = stints
                        .get_mut(&(*node, *subscriber))
                        .and_then(|stints| stints.last_mut())
                    {
                        stint.until = Some(*at);
                        stint.dropped = *dropped;
                        stint.lagged = *lagged;
                        stint.unread = unread;
                    }
                }
                _ => {}
            }
        }

        // Refusal: a subscriber asking for a channel the broker refuses is told so, and only
        // that subscriber.
        let specs: Vec<(usize, usize, &super::Subscriber)> = (0..scenario.nodes)
            .flat_map(|node| {
                scenario
                    .subscribers_of(node)
                    .enumerate()
                    .map(move |(index, spec)| (node, index, spec))
            })
            .collect();
        for &(node, index, spec) in &specs {
            let refused = self.events.iter().any(|event| {
                matches!(event, Event::Refused { node: n, subscriber: s, .. }
                    if *n == node && *s == index)
            });
            if refused && !spec.refused {
                return fail(format!(
                    "node-{node}/{index} was refused room{}, which the broker allows",
                    spec.channel
                ));
            }
            if spec.refused && stints.contains_key(&(node, index)) {
                return fail(format!(
                    "node-{node}/{index} subscribed to {}, which the broker refuses",
                    super::REFUSED_CHANNEL
                ));
            }
            if spec.refused && !refused {
                return fail(format!(
                    "node-{node}/{index} was never told that {} is refused",
                    super::REFUSED_CHANNEL
                ));
            }
        }

        // Integrity, identity, duplicates and order, delivery by delivery.
        let mut seen: BTreeMap<(usize, usize, Key), &str> = BTreeMap::new();
        let mut last_confirmed: BTreeMap<(usize, usize, usize, usize), u32> = BTreeMap::new();
        for event in &self.events {
            let Event::Delivered {
                node,
                subscriber,
                origin,
                publisher,
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
            let key = (*origin, *publisher, *seq);
            let name = format!("{origin}:{publisher}:{seq}");
            if !attempted.contains_key(&key) {
                return fail(format!("{who} received {name}, never published"));
            }
            if let Some(published) = confirmed.get(&key)
                && published.id != id
            {
                return fail(format!(
                    "{who} received {name} as {id}, published as {}",
                    published.id
                ));
            }
            if let Some(first) = seen.get(&(*node, *subscriber, key)) {
                if at_most_once {
                    return fail(format!("{who} received {name} twice"));
                }
                if first != id {
                    return fail(format!(
                        "{who} received {name} again with another id ({id}, first {first})"
                    ));
                }
                summary.repeats += 1;
                summary.flagged_repeats += usize::from(*redelivered);
                continue;
            }
            seen.insert((*node, *subscriber, key), id);
            // Order is promised for confirmed messages; an unconfirmed (timed-out) one may be
            // executed late by a broker that was silent, and land out of order.
            if at_most_once && confirmed.contains_key(&key) {
                let stream = (*node, *subscriber, *origin, *publisher);
                if let Some(previous) = last_confirmed.get(&stream)
                    && *previous > *seq
                {
                    return fail(format!(
                        "{who} received {name} after {origin}:{publisher}:{previous}"
                    ));
                }
                last_confirmed.insert(stream, *seq);
            }
        }

        let away = Away::of(scenario, &self.events);
        let disturbed = Disturbances::of(scenario, &away);

        // Detection: every node a noticeable fault touches reports it (its health goes down)
        // while the fault lasts or soon after, unless it was down already or stopped.
        for fault in scenario.faults.iter().filter(|f| f.must_be_noticed()) {
            let Some((start, touched)) = fault.touches(scenario.nodes) else {
                continue;
            };
            let end = fault.healed_at().unwrap_or(start) + scenario.heal_bound;
            for node in touched {
                if Disturbances::stopped(&away, node, start, end) {
                    continue;
                }
                let mut down_at_start = false;
                let mut noticed = false;
                for event in &self.events {
                    if let Event::Health {
                        at,
                        node: n,
                        connected,
                        ..
                    } = event
                        && *n == node
                    {
                        if *at < start {
                            down_at_start = !connected;
                        } else if *at <= end && !connected {
                            noticed = true;
                        }
                    }
                }
                if !noticed && !down_at_start {
                    return fail(format!(
                        "node-{node} never reported `{}` between {start:?} and {end:?}",
                        fault.name()
                    ));
                }
            }
        }

        // Recovery: after every fault, once the recovery bound passed, publishes go through
        // again (checked where no other disturbance is under way, so it is this fault's).
        for (index, fault) in scenario.faults.iter().enumerate() {
            let Some(healed) = fault.healed_at() else {
                continue;
            };
            let from = healed + scenario.heal_bound;
            let to = from + RECOVERY_WINDOW;
            // A fault that cuts no node off (late acks, say) still holds publishes back.
            let other_fault_under_way = scenario.faults.iter().enumerate().any(|(other, f)| {
                other != index
                    && f.touches(scenario.nodes).is_some_and(|(start, _)| {
                        start <= to && f.healed_at().unwrap_or(start) + scenario.heal_bound > from
                    })
            });
            if disturbed.any_between(from, to) || other_fault_under_way {
                continue;
            }
            let started_then = |started: Duration| started >= from && started <= to;
            let tried = self.events.iter().any(
                |event| matches!(event, Event::Published { started, .. } if started_then(*started)),
            );
            if tried && !confirmed.values().any(|c| started_then(c.started)) {
                return fail(format!(
                    "no publish was confirmed between {from:?} and {to:?}, after `{}` healed",
                    fault.name()
                ));
            }
        }

        // Which (message, subscriber) pairs must have arrived. What a lost store held is lost.
        // A node's consumer goes with the store, or alone when it is deleted. A node whose
        // process is away then (or started again but not connected yet), or stops before the
        // recovery bound after the broker is back (before it surely made its consumer again),
        // starts its next run with a new consumer: what was published in between is not its
        // to have.
        let lost_with_store = |node: usize, at: Duration| {
            scenario.faults.iter().any(|fault| {
                let Some(lost) = fault.destroys_consumers() else {
                    return false;
                };
                let recovered = fault.healed_at().unwrap_or(lost) + scenario.heal_bound;
                fault
                    .destroys_store()
                    .is_some_and(|lost| at <= lost + IN_FLIGHT)
                    || away.iter().any(|a| {
                        a.node == node
                            && a.from <= recovered
                            && lost <= a.connected
                            && at <= a.connected + scenario.heal_bound
                    })
            })
        };
        let no_stints = Vec::new();
        for &(node, index, spec) in specs.iter().filter(|(_, _, spec)| !spec.refused) {
            let stints = stints.get(&(node, index)).unwrap_or(&no_stints);
            let who = format!("node-{node}/{index}");
            let lagged = stints.iter().any(|stint| stint.lagged);
            let dropped: u64 = stints.iter().map(|stint| stint.dropped).sum();
            let mut missed = 0_u64;
            let mut first_missed = None;
            for (&(origin, publisher, seq), message) in &confirmed {
                if message.channel != spec.channel {
                    continue;
                }
                let required = if at_most_once {
                    // A message still queued when the subscriber left was not its to read.
                    let key = (origin, publisher, seq);
                    let subscribed = stints.iter().any(|stint| {
                        !stint.lagged
                            && stint.from <= message.started
                            && stint
                                .until
                                .is_none_or(|until| until >= message.at + IN_FLIGHT)
                            && !stint.unread.contains(&key)
                    });
                    subscribed
                        && !disturbed.during(node, message.started, message.at)
                        && !disturbed.during(origin, message.started, message.at)
                } else {
                    spec.leaves.is_none()
                        && !lagged
                        && stints
                            .first()
                            .is_some_and(|stint| stint.from <= message.started)
                        && !lost_with_store(node, message.at)
                };
                if !required {
                    continue;
                }
                if seen.contains_key(&(node, index, (origin, publisher, seq))) {
                    summary.required += 1;
                    continue;
                }
                let why = if at_most_once {
                    "while neither node was disturbed"
                } else {
                    "on an at-least-once bus"
                };
                let never = format!(
                    "{who} never received {origin}:{publisher}:{seq}, published at {:?} and \
                     confirmed at {:?} {why}",
                    message.started, message.at
                );
                // At most once, a subscriber whose queue was full loses its oldest: allowed,
                // as long as it is told (checked below).
                if at_most_once {
                    missed += 1;
                    first_missed.get_or_insert(never);
                    continue;
                }
                return fail(never);
            }
            if missed > dropped {
                return fail(format!(
                    "{}, and {missed} such in all, but its subscription counted only {dropped} \
                     dropped",
                    first_missed.unwrap_or_default()
                ));
            }
        }

        // Every drop a subscription reports is in the node's metrics too: each drop counts
        // once where it happens (a local queue, or the bus's queue for the channel, which
        // every local subscriber of the channel then reports), so the node counted at least
        // as many as any one of its subscribers reports.
        for node in 0..scenario.nodes {
            let mut per_subscriber: BTreeMap<usize, u64> = BTreeMap::new();
            for event in &self.events {
                if let Event::Unsubscribed {
                    node: n,
                    subscriber,
                    dropped,
                    ..
                } = event
                    && *n == node
                {
                    *per_subscriber.entry(*subscriber).or_default() += dropped;
                }
            }
            let reported = per_subscriber.values().copied().max().unwrap_or(0);
            let counted: Option<u64> = self
                .events
                .iter()
                .filter_map(|event| match event {
                    Event::DropsCounted {
                        node: n, dropped, ..
                    } if *n == node => Some(*dropped),
                    _ => None,
                })
                .reduce(|a, b| a + b);
            if let Some(counted) = counted
                && counted < reported
            {
                return fail(format!(
                    "a subscription of node-{node} dropped {reported} deliveries, but the node's \
                     metrics counted {counted}"
                ));
            }
        }
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::{Backend, NOTICE_AFTER, Subscriber};

    const SECOND: Duration = Duration::from_secs(1);

    fn published(node: usize, seq: u32, at: Duration) -> Event {
        Event::Published {
            started: at,
            at,
            node,
            publisher: 0,
            channel: 0,
            seq,
            attempt: 0,
            outcome: Ok(format!("id-{node}-{seq}")),
        }
    }

    fn failed(node: usize, seq: u32, at: Duration) -> Event {
        Event::Published {
            started: at,
            at,
            node,
            publisher: 0,
            channel: 0,
            seq,
            attempt: 0,
            outcome: Err("timed out".into()),
        }
    }

    fn delivered(node: usize, subscriber: usize, origin: usize, seq: u32) -> Event {
        Event::Delivered {
            at: Duration::ZERO,
            node,
            subscriber,
            channel: 0,
            origin,
            publisher: 0,
            seq,
            id: format!("id-{origin}-{seq}"),
            redelivered: false,
        }
    }

    fn subscribed(node: usize) -> Event {
        Event::Subscribed {
            at: Duration::ZERO,
            node,
            subscriber: 0,
        }
    }

    /// Two nodes with one subscriber each on channel 0.
    fn on(backend: Backend, fault: Fault) -> Scenario {
        Scenario {
            nodes: 2,
            subscribers: vec![Subscriber::steady(0, 0), Subscriber::steady(1, 0)],
            ..Scenario::new(backend, fault)
        }
    }

    fn scenario(fault: Fault) -> Scenario {
        on(Backend::Redis, fault)
    }

    /// Both subscribed from the start; node 0 publishes message 0 at 1 s; both receive it.
    fn complete() -> Vec<Event> {
        vec![
            subscribed(0),
            subscribed(1),
            published(0, 0, SECOND),
            delivered(0, 0, 0, 0),
            delivered(1, 0, 0, 0),
        ]
    }

    fn check(fault: Fault, events: Vec<Event>) -> Result<Summary, String> {
        Run { seed: 9, events }.check(&scenario(fault))
    }

    #[test]
    fn a_subscription_the_bus_ends_without_lagging_fails() {
        let ended = |lagged| Event::Unsubscribed {
            at: 2 * SECOND,
            node: 1,
            subscriber: 0,
            dropped: 0,
            lagged,
            ended: true,
            unread: Vec::new(),
        };
        let mut events = complete();
        events.push(ended(true));
        check(Fault::None, events.clone()).unwrap();
        events.pop();
        events.push(ended(false));
        let error = check(Fault::None, events).unwrap_err();
        assert!(
            error.contains("the bus ended node-1/0's subscription"),
            "{error}"
        );
    }

    #[test]
    fn a_refused_channel_is_reported_to_its_subscriber_only() {
        let with_refused = Scenario {
            subscribers: vec![
                Subscriber::steady(0, 0),
                Subscriber::steady(1, 0),
                Subscriber::refused(1, SECOND),
            ],
            ..scenario(Fault::None)
        };
        let refused = |subscriber| Event::Refused {
            at: SECOND,
            node: 1,
            subscriber,
            reason: "NOPERM".into(),
        };
        let run = |events: Vec<Event>| Run { seed: 9, events }.check(&with_refused);
        let error = run(complete()).unwrap_err();
        assert!(error.contains("node-1/1 was never told"), "{error}");
        let mut events = complete();
        events.push(refused(1));
        run(events.clone()).unwrap();
        events.push(refused(0));
        let error = run(events).unwrap_err();
        assert!(error.contains("node-1/0 was refused room0"), "{error}");
        let mut events = complete();
        events.push(Event::Subscribed {
            at: SECOND,
            node: 1,
            subscriber: 1,
        });
        let error = run(events).unwrap_err();
        assert!(error.contains("node-1/1 subscribed to vault"), "{error}");
    }

    #[test]
    fn nothing_is_confirmed_while_the_broker_cannot_answer() {
        let crash = Fault::CrashBroker {
            at: 2 * SECOND,
            down_for: 2 * SECOND,
        };
        let mut events = complete();
        for node in 0..2 {
            events.push(Event::Health {
                at: 2 * SECOND,
                node,
                connected: false,
                reason: "gone".into(),
            });
        }
        // A reply on its way when the broker went down may still arrive.
        events.push(published(0, 1, 2 * SECOND + Duration::from_millis(10)));
        events.push(delivered(0, 0, 0, 1));
        events.push(delivered(1, 0, 0, 1));
        check(crash, events.clone()).unwrap();
        events.push(published(0, 2, 3 * SECOND));
        let error = check(crash, events.clone()).unwrap_err();
        assert!(error.contains("0:0:2 was confirmed at 3s"), "{error}");
        assert!(
            error.contains("kept the broker from answering node-0"),
            "{error}"
        );
        // NATS Core confirms a publish once it is written: no reply to wait for.
        let core = Scenario {
            backend: Backend::NatsCore,
            ..scenario(crash)
        };
        Run { seed: 9, events }.check(&core).unwrap();
    }

    #[test]
    fn every_drop_a_subscription_reports_is_counted_in_the_metrics() {
        let left = Event::Unsubscribed {
            at: 2 * SECOND,
            node: 1,
            subscriber: 0,
            dropped: 3,
            lagged: false,
            ended: false,
            unread: Vec::new(),
        };
        let counted = |dropped| Event::DropsCounted {
            at: 2 * SECOND,
            node: 1,
            dropped,
        };
        let mut events = complete();
        events.push(left);
        events.push(counted(3));
        check(Fault::None, events.clone()).unwrap();
        events.pop();
        events.push(counted(2));
        let error = check(Fault::None, events).unwrap_err();
        assert!(
            error.contains("dropped 3 deliveries, but the node's metrics counted 2"),
            "{error}"
        );
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
        assert!(error.contains("node-1/0 never received 0:0:0"), "{error}");
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
            subscribed(0),
            subscribed(1),
            published(0, 0, SECOND),
            published(0, 1, SECOND),
            delivered(0, 0, 0, 0),
            delivered(0, 0, 0, 1),
            delivered(1, 0, 0, 1),
            delivered(1, 0, 0, 0),
        ];
        let error = check(Fault::None, events).unwrap_err();
        assert!(error.contains("received 0:0:0 after 0:0:1"), "{error}");
    }

    #[test]
    fn a_node_that_never_notices_the_fault_fails() {
        let fault = Fault::PartitionNode {
            node: 1,
            at: 2 * SECOND,
            heal_after: NOTICE_AFTER,
        };
        let mut events = complete();
        events.push(published(0, 1, 20 * SECOND));
        events.push(delivered(0, 0, 0, 1));
        events.push(delivered(1, 0, 0, 1));
        let error = check(fault, events.clone()).unwrap_err();
        assert!(error.contains("node-1 never reported"), "{error}");
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
            heal_after: NOTICE_AFTER,
        };
        let down = Event::Health {
            at: 2 * SECOND,
            node: 1,
            connected: false,
            reason: "gone".into(),
        };
        // Confirmed during the partition: node 1 may miss it, node 0 may not.
        let mut events = vec![
            subscribed(0),
            subscribed(1),
            down.clone(),
            published(0, 0, 2 * SECOND),
            delivered(0, 0, 0, 0),
            published(0, 1, 20 * SECOND),
            delivered(0, 0, 0, 1),
            delivered(1, 0, 0, 1),
        ];
        check(fault, events.clone()).unwrap();
        events.remove(4);
        let error = check(fault, events).unwrap_err();
        assert!(error.contains("node-0/0 never received 0:0:0"), "{error}");
        // Confirmed well before the partition: node 1 must have it.
        let events = vec![
            subscribed(0),
            subscribed(1),
            down,
            published(0, 0, SECOND),
            delivered(0, 0, 0, 0),
            published(0, 1, 20 * SECOND),
            delivered(0, 0, 0, 1),
            delivered(1, 0, 0, 1),
        ];
        let error = check(fault, events).unwrap_err();
        assert!(error.contains("node-1/0 never received 0:0:0"), "{error}");
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
        // Healed at 2 s, recovered by 7 s: a publish tried at 8 s must go through.
        events.push(failed(0, 1, 8 * SECOND));
        let error = check(fault, events.clone()).unwrap_err();
        assert!(error.contains("no publish was confirmed"), "{error}");
        events.push(published(0, 2, 8 * SECOND + SECOND / 2));
        events.push(delivered(0, 0, 0, 2));
        events.push(delivered(1, 0, 0, 2));
        check(fault, events).unwrap();
    }

    fn jetstream(fault: Fault) -> Scenario {
        on(Backend::JetStream, fault)
    }

    #[test]
    fn recovery_is_not_demanded_while_acks_come_late() {
        // JetStream case 52: the stream is deleted at 1 s (recovered by 6 s), and from 5 s
        // to 8 s every PubAck comes too late; nothing is confirmed between 6 s and 8 s.
        let vanish = Fault::VanishStream { at: SECOND };
        let late = Fault::SlowAcks {
            at: 5 * SECOND,
            delay: 2 * SECOND,
            lasting: 3 * SECOND,
        };
        let scenario = |faults: Vec<Fault>| Scenario {
            faults,
            ..jetstream(vanish)
        };
        let events = vec![
            subscribed(0),
            subscribed(1),
            failed(0, 0, 6 * SECOND + SECOND / 2),
        ];
        let error = Run {
            seed: 9,
            events: events.clone(),
        }
        .check(&scenario(vec![vanish]))
        .unwrap_err();
        assert!(error.contains("no publish was confirmed"), "{error}");
        Run { seed: 9, events }
            .check(&scenario(vec![vanish, late]))
            .unwrap();
    }

    #[test]
    fn at_least_once_requires_what_a_partition_caught_and_flags_nothing_twice() {
        let fault = Fault::PartitionNode {
            node: 1,
            at: 2 * SECOND,
            heal_after: NOTICE_AFTER,
        };
        let down = Event::Health {
            at: 2 * SECOND,
            node: 1,
            connected: false,
            reason: "gone".into(),
        };
        let mut events = vec![
            subscribed(0),
            subscribed(1),
            down,
            published(0, 0, 2 * SECOND),
            delivered(0, 0, 0, 0),
            published(0, 1, 20 * SECOND),
            delivered(0, 0, 0, 1),
            delivered(1, 0, 0, 1),
        ];
        let run = |events: Vec<Event>| Run { seed: 9, events }.check(&jetstream(fault));
        let error = run(events.clone()).unwrap_err();
        assert!(error.contains("node-1/0 never received 0:0:0"), "{error}");
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
            subscribed(0),
            subscribed(1),
            down(0),
            down(1),
            published(0, 0, SECOND),
            published(0, 1, 20 * SECOND),
            delivered(0, 0, 0, 1),
        ];
        let error = run(events.clone()).unwrap_err();
        assert!(error.contains("node-1/0 never received 0:0:1"), "{error}");
        events.push(delivered(1, 0, 0, 1));
        run(events).unwrap();
    }

    #[test]
    fn a_node_away_when_the_stream_is_lost_is_excused_until_it_is_back() {
        let fault = Fault::VanishStream { at: 2 * SECOND };
        let scenario = Scenario {
            restarts: vec![crate::harness::Restart {
                node: 1,
                at: SECOND,
                down_for: 2 * SECOND,
            }],
            ..jetstream(fault)
        };
        let run = |events: Vec<Event>| Run { seed: 9, events }.check(&scenario);
        // Published after the stream was lost, while node 1 was away.
        let mut events = vec![subscribed(0), subscribed(1), published(0, 0, 4 * SECOND)];
        let error = run(events.clone()).unwrap_err();
        assert!(error.contains("node-0/0 never received 0:0:0"), "{error}");
        events.push(delivered(0, 0, 0, 0));
        run(events.clone()).unwrap();
        // Published well after node 1 came back: it must have it.
        events.push(published(0, 1, 20 * SECOND));
        events.push(delivered(0, 0, 0, 1));
        let error = run(events.clone()).unwrap_err();
        assert!(error.contains("node-1/0 never received 0:0:1"), "{error}");
        events.push(delivered(1, 0, 0, 1));
        run(events).unwrap();
    }

    #[test]
    fn a_node_that_stops_soon_after_the_store_is_lost_is_excused_until_it_is_back() {
        // JetStream case 41: the disk is lost, the broker comes back, and node 1 stops before
        // it made its consumer again; its next run starts a new one.
        let fault = Fault::DiskLoss {
            at: 2 * SECOND,
            down_for: SECOND,
        };
        let restart_at = |at| Scenario {
            restarts: vec![crate::harness::Restart {
                node: 1,
                at,
                down_for: SECOND,
            }],
            ..jetstream(fault)
        };
        let soon = restart_at(4 * SECOND);
        let down = |node| Event::Health {
            at: 2 * SECOND,
            node,
            connected: false,
            reason: "gone".into(),
        };
        // Published after the store was lost, before node 1 stopped.
        let mut events = vec![
            subscribed(0),
            subscribed(1),
            down(0),
            down(1),
            published(0, 0, 4 * SECOND),
        ];
        events.push(delivered(0, 0, 0, 0));
        Run {
            seed: 9,
            events: events.clone(),
        }
        .check(&soon)
        .unwrap();
        // A node that stops long after the store came back had its consumer: no excuse.
        let late = restart_at(20 * SECOND);
        let error = Run {
            seed: 9,
            events: events.clone(),
        }
        .check(&late)
        .unwrap_err();
        assert!(error.contains("node-1/0 never received 0:0:0"), "{error}");
        // Published well after node 1 came back: it must have it.
        events.push(published(0, 1, 20 * SECOND));
        events.push(delivered(0, 0, 0, 1));
        let error = Run {
            seed: 9,
            events: events.clone(),
        }
        .check(&soon)
        .unwrap_err();
        assert!(error.contains("node-1/0 never received 0:0:1"), "{error}");
    }
}
