//! Confirmation round trips: proof that the server has processed what this connection wrote.
//!
//! NATS Core has no acknowledgement for a plain PUB or SUB. What it does promise is order: the
//! server processes one connection's protocol lines in the order they were written, and a
//! connection receives its own messages (echo). So the bus subscribes once, on its link, to a
//! subject only it uses, the probe subject `<subject_prefix>.$probe.<random>`, and a probe is a
//! message to that subject: when it comes back, the server has processed everything written on
//! the connection before it. That proof does not depend on who else listens (a `>` subscriber
//! in the account changes nothing) and needs no permission beyond the channels' own: a user
//! allowed `<subject_prefix>.>` may use it. The channel rule forbids `$`, so no bus channel's
//! subject is ever a probe subject and no bus subscriber receives a probe.
//!
//! One probe serves every caller waiting at the time (group commit). A caller that has written
//! (a publish, or a channel's SUB) waits for the first probe sent after its write. At most
//! [`MAX_IN_FLIGHT`] probes are in flight at a time: a caller that arrives while fewer are out
//! gets its probe at once and waits one round trip; callers that arrive while the pipeline is
//! full join the next probe, which goes out as soon as the oldest one comes back. So N
//! concurrent callers cost at most [`MAX_IN_FLIGHT`] probes per round trip, not N, and no caller
//! waits for a probe that was sent before it wrote (which would make it wait two round trips).
//! A caller that finds no probe in flight takes the next probe number and writes the probe
//! itself, right behind its own write, so a sequential publisher pays no task hop to get its
//! probe out. Callers that find probes in flight share the next one: the first caller that
//! wants it wakes the probe task, which sends it at once if the pipeline has room or else as
//! soon as the oldest probe is back (a burst of publishes costs one wake-up, not one each). A caller that
//! gives up (its timeout) after taking a number and before its probe is written may leave that
//! probe unsent; nobody else waits for it (later callers target later probes), and it stops
//! counting as in flight, so it takes no room in the pipeline either. Probe numbers are never
//! reused, so an earlier probe coming back never confirms a later write.
//!
//! A probe can be lost with its connection. The bus tells the prober when the link reports a
//! lost connection ([`Prober::connection_lost`]): the probe in flight then counts as lost and
//! the next one goes out at once (the link sends it once reconnected, after renewing its
//! subscriptions). A caller that asks for it learns whether its write and the confirming probe
//! travelled on the same connection: a publish written before a loss and confirmed only by a
//! probe on the next connection may have been lost with the old one, so it is not reported as
//! confirmed. A probe that has not come back after [`PRESUMED_LOST`] without any reported loss
//! (the server dropped it) is replaced too.
//!
//! Everything here is deterministic for the simulation: probe numbers count up from one, the
//! subject's random part comes from the seeded id generator, every `select!` is biased, and
//! waiters are woken through a [`Notify`] in the order they started waiting.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::nats::link::{LinkMessage, LinkPublish, LinkSubscription, NatsLink};
use crate::backoff::Backoff;
use crate::id::IdGenerator;

/// How long a probe may stay away, without a reported connection loss, before another one
/// replaces it. Only a server that drops messages gets here; the bound keeps one lost probe
/// from stalling every confirmation after it.
pub(super) const PRESUMED_LOST: Duration = Duration::from_secs(1);

/// How often the probe task looks at the probes in flight while it knows of none: a caller
/// writes its own probe without waking the task, and the task must still see it in time to
/// presume it lost after [`PRESUMED_LOST`].
const IDLE_CHECK: Duration = Duration::from_millis(250);

/// The most probes in flight at a time. The first may be a lone caller's own; two more keep a
/// shared probe going out while the previous one travels (a caller never waits for a probe sent
/// before its write, so never two round trips); more would add probes without shortening any
/// wait.
pub(super) const MAX_IN_FLIGHT: usize = 3;

/// Which connection a write went out on, as far as the prober knows: the number of connection
/// losses reported before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Epoch(u64);

/// The connection was lost after the write and before a probe on the same connection came
/// back: the write may or may not have reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ConnectionLost;

/// Probe numbers and waiters; see the module documentation.
#[derive(Debug)]
struct ProbeState {
    /// The number of the last probe sent (probes count from 1; 0 = none yet).
    sent: u64,
    /// The highest probe number that came back.
    returned: u64,
    /// The highest probe number a caller waits for.
    wanted: u64,
    /// When each probe in flight went out, oldest first: the probes `returned + 1 ..= sent`
    /// that have not been given up on.
    in_flight: VecDeque<Instant>,
    /// Connection losses reported so far.
    epoch: u64,
    /// The probe task holds a subscription to the probe subject, so a probe written now comes
    /// back (callers write their own probes only then).
    listening: bool,
    /// `returned` at the moment of the last reported loss.
    returned_before_loss: u64,
}

impl ProbeState {
    /// The probe in flight is gone: the next one may go at once, and it is wanted if anybody
    /// still waits for one that has not come back.
    fn abandon_in_flight(&mut self) {
        self.in_flight.clear();
        if self.returned < self.wanted {
            self.wanted = self.wanted.max(self.sent + 1);
        }
    }
}

/// The bus's confirmation round trips: callers wait through [`Prober::round_trip`] and
/// [`Prober::round_trip_after`]; [`run`] sends the probes and reads them back.
#[derive(Debug)]
pub(super) struct Prober {
    subject: String,
    state: Mutex<ProbeState>,
    /// Wakes the probe task: a caller wants a probe, or the connection was lost.
    wanted: Notify,
    /// Wakes waiting callers: a probe came back, or the connection was lost.
    returned: Notify,
}

impl Prober {
    /// A prober on `<subject_prefix>.$probe.<random>`, unique to this bus.
    pub(super) fn new(subject_prefix: &str, ids: &IdGenerator) -> Self {
        Prober {
            subject: format!("{subject_prefix}.$probe.{:016x}", ids.random_u64()),
            state: Mutex::new(ProbeState {
                sent: 0,
                returned: 0,
                wanted: 0,
                in_flight: VecDeque::with_capacity(MAX_IN_FLIGHT),
                epoch: 0,
                returned_before_loss: 0,
                listening: false,
            }),
            wanted: Notify::new(),
            returned: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, ProbeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The subject probes travel on.
    pub(super) fn subject(&self) -> &str {
        &self.subject
    }

    /// The connection a write made now goes out on; read it before writing and pass it to
    /// [`Prober::round_trip_after`].
    pub(super) fn epoch(&self) -> Epoch {
        Epoch(self.state().epoch)
    }

    /// Waits until a probe sent after this call has come back: the server has processed
    /// everything this connection wrote before the call, on whichever connection the link had
    /// by then (the link renews its subscriptions on a new connection before sending anything
    /// else, so a subscription is covered across reconnects). Not bounded: callers put their own
    /// timeout around it.
    pub(super) async fn round_trip(&self, link: &dyn NatsLink) {
        let target = self.want_and_send(link).await;
        self.wait(|state| state.returned >= target).await;
    }

    /// Like [`Prober::round_trip`], for a write made on connection `written_in`: fails when
    /// that connection was lost before a probe on it came back.
    pub(super) async fn round_trip_after(
        &self,
        link: &dyn NatsLink,
        written_in: Epoch,
    ) -> Result<(), ConnectionLost> {
        let target = self.want_and_send(link).await;
        let mut outcome = Ok(());
        self.wait(|state| {
            if state.epoch == written_in.0 {
                return state.returned >= target;
            }
            // A probe that came back before the loss still proves the write; one that came
            // back later may have crossed a new connection while the write died with the old.
            if state.epoch != written_in.0 + 1 || state.returned_before_loss < target {
                outcome = Err(ConnectionLost);
            }
            true
        })
        .await;
        outcome
    }

    /// Asks for the first probe sent from now on and returns its number; writes that probe
    /// when this caller is the one to take it (see [`Prober::want`]).
    async fn want_and_send(&self, link: &dyn NatsLink) -> u64 {
        let (target, own) = self.want();
        if let Some(probe) = own {
            let unsent = Unsent(self, target);
            // A probe that could not be written stays "in flight" until presumed lost, as one
            // the probe task could not write does.
            if let Err(error) = link.publish(probe).await {
                tracing::debug!(backend = "nats", %error, "cannot send a confirmation probe");
            }
            std::mem::forget(unsent);
        }
        target
    }

    /// Asks for the first probe sent from now on and returns its number. When no probe is in
    /// flight or wanted (and the probe subject is listened to), the caller takes the next one
    /// and gets it to write. Otherwise only the caller that raises `wanted` wakes the probe
    /// task: for the others it is already on its way.
    fn want(&self) -> (u64, Option<LinkPublish>) {
        let (target, raised) = {
            let mut state = self.state();
            let target = state.sent + 1;
            if state.listening && state.wanted < target && state.in_flight.is_empty() {
                state.wanted = target;
                return (target, Some(self.take_probe(&mut state)));
            }
            let raised = state.wanted < target;
            state.wanted = state.wanted.max(target);
            (target, raised)
        };
        if raised {
            self.wanted.notify_one();
        }
        (target, None)
    }

    /// Numbers the next probe and counts it in flight.
    fn take_probe(&self, state: &mut ProbeState) -> LinkPublish {
        state.sent += 1;
        state.in_flight.push_back(Instant::now());
        LinkPublish {
            subject: self.subject.clone(),
            reply: None,
            headers: Vec::new(),
            payload: Bytes::copy_from_slice(&state.sent.to_be_bytes()),
        }
    }

    /// A caller gave up between taking probe `number` and writing it: the probe may never go
    /// out, so it no longer counts as in flight (nobody else waits for it: later callers target
    /// later probes). If it went out after all and comes back, it still counts.
    fn unsent(&self, number: u64) {
        let mut state = self.state();
        let first = state.sent + 1 - state.in_flight.len() as u64;
        if !state.in_flight.is_empty() && first == number {
            state.in_flight.pop_front();
        }
    }

    /// Waits until `done` holds, checking after every wake-up.
    async fn wait(&self, mut done: impl FnMut(&ProbeState) -> bool) {
        loop {
            let returned = self.returned.notified();
            tokio::pin!(returned);
            // Registered before looking, so a wake-up between the look and the wait is kept.
            returned.as_mut().enable();
            if done(&self.state()) {
                return;
            }
            returned.await;
        }
    }

    /// The link reported a lost connection: the probe in flight is presumed lost with it, the
    /// next one may go at once, and callers confirming a write of the lost connection learn it.
    pub(super) fn connection_lost(&self) {
        {
            let mut state = self.state();
            state.epoch += 1;
            state.returned_before_loss = state.returned;
            state.abandon_in_flight();
        }
        self.returned.notify_waiters();
        self.wanted.notify_one();
    }

    /// The next probe to send, if one is wanted and the pipeline has room.
    fn next_probe(&self) -> Option<LinkPublish> {
        let mut state = self.state();
        if state.wanted <= state.sent || state.in_flight.len() >= MAX_IN_FLIGHT {
            return None;
        }
        Some(self.take_probe(&mut state))
    }

    /// Whether the probe task holds a subscription to the probe subject.
    fn set_listening(&self, listening: bool) {
        self.state().listening = listening;
    }

    /// When the oldest probe in flight counts as lost, if one is in flight.
    fn presumed_lost_at(&self) -> Option<Instant> {
        self.state()
            .in_flight
            .front()
            .map(|since| *since + PRESUMED_LOST)
    }

    /// The oldest probe in flight has been away too long: it and every later one (they travel
    /// in order behind it) are given up on, and the next one may go.
    fn presume_lost(&self) {
        let mut state = self.state();
        if state
            .in_flight
            .front()
            .is_some_and(|since| *since + PRESUMED_LOST <= Instant::now())
        {
            tracing::debug!(
                backend = "nats",
                probe = state.sent,
                "a confirmation probe did not come back; sending another"
            );
            state.abandon_in_flight();
        }
    }

    /// A message arrived on the probe subject: records the probe and wakes the callers.
    fn came_back(&self, message: &LinkMessage) {
        let number = <[u8; 8]>::try_from(message.payload.as_ref()).map(u64::from_be_bytes);
        {
            let mut state = self.state();
            match number {
                // Only probes this bus sent count; anything else on the subject proves nothing.
                Ok(number) if number <= state.sent && number > state.returned => {
                    // Probes come back in order: this one and every earlier one are home. The
                    // ones in flight are the last `in_flight.len()` sent.
                    let first = state.sent + 1 - state.in_flight.len() as u64;
                    if number >= first {
                        let home = usize::try_from(number - first + 1).unwrap_or(usize::MAX);
                        let home = home.min(state.in_flight.len());
                        state.in_flight.drain(..home);
                    }
                    state.returned = number;
                }
                _ => return,
            }
        }
        self.returned.notify_waiters();
    }
}

/// Dropped armed (the caller's future was dropped while writing its probe): see
/// [`Prober::unsent`].
struct Unsent<'a>(&'a Prober, u64);

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        self.0.unsent(self.1);
    }
}

/// How one subscription to the probe subject ended.
enum Ended {
    /// The bus is closing.
    Cancelled,
    /// The link ended the subscription; subscribe again.
    Lost,
}

/// The probe task: subscribes to the probe subject, then sends probes as callers want them and
/// reads them back, until `cancel`.
pub(super) async fn run(
    prober: Arc<Prober>,
    link: Arc<dyn NatsLink>,
    ids: IdGenerator,
    cancel: CancellationToken,
) {
    let backoff = Backoff::default();
    let mut failures: u32 = 0;
    loop {
        let subscribed = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            subscribed = link.subscribe(prober.subject()) => subscribed,
        };
        match subscribed {
            Ok(replies) => {
                failures = 0;
                prober.set_listening(true);
                let ended = serve(&prober, link.as_ref(), &cancel, replies).await;
                prober.set_listening(false);
                if let Ended::Cancelled = ended {
                    return;
                }
            }
            Err(error) => {
                tracing::debug!(backend = "nats", %error, "cannot subscribe to the probe subject")
            }
        }
        // Whatever was in flight went with the old subscription.
        prober.state().abandon_in_flight();
        let delay = backoff.delay(failures, &ids);
        failures = failures.saturating_add(1);
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Sends and reads back probes over one subscription to the probe subject.
async fn serve(
    prober: &Prober,
    link: &dyn NatsLink,
    cancel: &CancellationToken,
    mut replies: LinkSubscription,
) -> Ended {
    // One timer for the whole subscription, moved only when the oldest probe in flight changes
    // or after it went off: the loop turns once per probe, and a timer made afresh each turn
    // would cost a timer registration per turn. While no probe is known to be in flight it goes
    // off every `IDLE_CHECK`, to notice a probe a caller wrote itself.
    let mut deadline = prober
        .presumed_lost_at()
        .unwrap_or_else(|| Instant::now() + IDLE_CHECK);
    let presumed_lost = tokio::time::sleep_until(deadline);
    tokio::pin!(presumed_lost);
    // False once the timer went off, until it is set again.
    let mut armed = true;
    loop {
        let oldest = prober.presumed_lost_at();
        if !armed || oldest.is_some_and(|at| at != deadline) {
            deadline = oldest.unwrap_or_else(|| Instant::now() + IDLE_CHECK);
            armed = true;
            presumed_lost.as_mut().reset(deadline);
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ended::Cancelled,
            reply = replies.next() => match reply {
                Some(reply) => prober.came_back(&reply),
                None => return Ended::Lost,
            },
            _ = prober.wanted.notified() => {}
            _ = &mut presumed_lost, if armed => {
                armed = false;
                prober.presume_lost();
            }
        }
        if let Some(probe) = prober.next_probe() {
            let written = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ended::Cancelled,
                written = link.publish(probe) => written,
            };
            // A probe that could not be written stays "in flight" until presumed lost, which
            // paces the retries while the link refuses writes.
            if let Err(error) = written {
                tracing::debug!(backend = "nats", %error, "cannot send a confirmation probe");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use futures_core::stream::BoxStream;
    use tokio::sync::mpsc;

    use super::*;
    use crate::backend::nats::link::{LinkError, LinkEvent};

    /// The time a probe takes to come back on [`EchoLink`].
    const TRIP: Duration = Duration::from_millis(10);

    /// A link whose server echoes what is published to the subscribed subject after [`TRIP`],
    /// unless told to drop it.
    #[derive(Debug)]
    struct EchoLink {
        echo: Mutex<Option<mpsc::UnboundedSender<LinkMessage>>>,
        probes: AtomicUsize,
        drop_next: std::sync::atomic::AtomicBool,
        /// The next publish never finishes (a link with no room, say).
        stall_next: std::sync::atomic::AtomicBool,
        /// The task that wrote each probe.
        writers: Mutex<Vec<Option<tokio::task::Id>>>,
    }

    impl EchoLink {
        fn new() -> Arc<Self> {
            Arc::new(EchoLink {
                echo: Mutex::new(None),
                probes: AtomicUsize::new(0),
                drop_next: std::sync::atomic::AtomicBool::new(false),
                stall_next: std::sync::atomic::AtomicBool::new(false),
                writers: Mutex::new(Vec::new()),
            })
        }
    }

    #[async_trait]
    impl NatsLink for EchoLink {
        async fn publish(&self, message: LinkPublish) -> Result<(), LinkError> {
            if self.stall_next.swap(false, Ordering::SeqCst) {
                return std::future::pending().await;
            }
            self.probes.fetch_add(1, Ordering::SeqCst);
            self.writers.lock().unwrap().push(tokio::task::try_id());
            if self.drop_next.swap(false, Ordering::SeqCst) {
                return Ok(());
            }
            let echo = self.echo.lock().unwrap().clone();
            if let Some(echo) = echo {
                tokio::spawn(async move {
                    tokio::time::sleep(TRIP).await;
                    let _ = echo.send(LinkMessage {
                        subject: message.subject,
                        reply: None,
                        headers: Vec::new(),
                        payload: message.payload,
                        status: None,
                        description: None,
                    });
                });
            }
            Ok(())
        }

        async fn flush(&self) -> Result<(), LinkError> {
            Ok(())
        }

        async fn request(&self, _: LinkPublish, _: Duration) -> Result<LinkMessage, LinkError> {
            Err(LinkError::Other("not used".into()))
        }

        async fn subscribe(&self, _: &str) -> Result<LinkSubscription, LinkError> {
            let (tx, rx) = mpsc::unbounded_channel();
            *self.echo.lock().unwrap() = Some(tx);
            Ok(LinkSubscription::new(futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|message| (message, rx)) },
            )))
        }

        fn new_inbox(&self) -> String {
            "_INBOX.unused".into()
        }

        fn events(&self) -> BoxStream<'static, LinkEvent> {
            futures_util::stream::pending().boxed()
        }

        fn is_connected(&self) -> bool {
            true
        }

        fn max_payload(&self) -> Option<usize> {
            None
        }

        async fn close(&self) {}
    }

    /// Starts the probe task and lets it subscribe to the probe subject.
    async fn start(link: &Arc<EchoLink>) -> (Arc<Prober>, CancellationToken) {
        let ids = IdGenerator::seeded(7, Arc::new(crate::id::SystemClock));
        let prober = Arc::new(Prober::new("hubbus", &ids));
        let cancel = CancellationToken::new();
        tokio::spawn(run(prober.clone(), link.clone(), ids, cancel.clone()));
        tokio::task::yield_now().await;
        assert!(prober.state().listening);
        (prober, cancel)
    }

    /// Runs one round trip in a task of its own; returns the task's id.
    async fn round_trip_in_a_task(prober: &Arc<Prober>, link: &Arc<EchoLink>) -> tokio::task::Id {
        let (prober, link) = (prober.clone(), link.clone());
        tokio::spawn(async move {
            prober.round_trip(link.as_ref()).await;
            tokio::task::id()
        })
        .await
        .unwrap()
    }

    #[test]
    fn the_probe_subject_is_no_channel_and_lives_under_the_prefix() {
        let ids = IdGenerator::seeded(7, Arc::new(crate::id::SystemClock));
        let prober = Prober::new("hubbus", &ids);
        assert!(prober.subject().starts_with("hubbus.$probe."));
        let channel = prober.subject().strip_prefix("hubbus.").unwrap();
        assert!(crate::bus::validate_channel(channel).is_err());
        let again = Prober::new(
            "hubbus",
            &IdGenerator::seeded(7, Arc::new(crate::id::SystemClock)),
        );
        assert_eq!(
            prober.subject(),
            again.subject(),
            "seeded: the same subject"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_caller_waits_one_round_trip_for_the_probe_it_writes_itself() {
        let link = EchoLink::new();
        let (prober, cancel) = start(&link).await;
        let started = Instant::now();
        let caller = round_trip_in_a_task(&prober, &link).await;
        assert_eq!(started.elapsed(), TRIP);
        assert_eq!(link.probes.load(Ordering::SeqCst), 1);
        assert_eq!(
            *link.writers.lock().unwrap(),
            [Some(caller)],
            "the caller wrote its probe, no hop through the probe task"
        );
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_giving_up_before_its_probe_is_written_holds_nobody_up() {
        let link = EchoLink::new();
        let (prober, cancel) = start(&link).await;
        link.stall_next.store(true, Ordering::SeqCst);
        let gave_up = tokio::time::timeout(TRIP, prober.round_trip(link.as_ref())).await;
        assert!(gave_up.is_err(), "its probe never got written");
        // The unwritten probe is not waited for: the next lone caller writes its own at once
        // and waits one round trip.
        let started = Instant::now();
        let caller = round_trip_in_a_task(&prober, &link).await;
        assert_eq!(started.elapsed(), TRIP);
        assert_eq!(*link.writers.lock().unwrap(), [Some(caller)]);
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_probe_and_late_ones_wait_one_round_trip() {
        let link = EchoLink::new();
        let (prober, cancel) = start(&link).await;
        let started = Instant::now();
        // The first caller finds no probe in flight and writes its own; the other 49 share the
        // next one.
        let first: Vec<_> = (0..50)
            .map(|_| {
                let (prober, link) = (prober.clone(), link.clone());
                tokio::spawn(async move { prober.round_trip(link.as_ref()).await })
            })
            .collect();
        // Half a round trip later, with probes in flight, 50 more arrive: they share the next,
        // which goes out at once (the pipeline has room) rather than after the first is back.
        tokio::time::sleep(TRIP / 2).await;
        let late: Vec<_> = (0..50)
            .map(|_| {
                let (prober, link) = (prober.clone(), link.clone());
                tokio::spawn(async move {
                    let arrived = Instant::now();
                    prober.round_trip(link.as_ref()).await;
                    arrived.elapsed()
                })
            })
            .collect();
        for caller in first {
            caller.await.unwrap();
        }
        assert_eq!(started.elapsed(), TRIP);
        for caller in late {
            let waited = caller.await.unwrap();
            assert_eq!(waited, TRIP, "one round trip, not two");
        }
        assert_eq!(started.elapsed(), TRIP + TRIP / 2);
        assert_eq!(
            link.probes.load(Ordering::SeqCst),
            3,
            "the first caller's own, then one per wave"
        );
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_pipeline_holds_new_callers_for_the_next_probe() {
        let link = EchoLink::new();
        let (prober, cancel) = start(&link).await;
        let started = Instant::now();
        // Waves a fifth of a round trip apart: the first three get a probe each (the first
        // writes its own), the fourth and fifth find three in flight and share the one sent
        // when the first is back.
        let waves: Vec<_> = (0..5)
            .map(|wave| {
                let (prober, link) = (prober.clone(), link.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(TRIP / 5 * wave).await;
                    prober.round_trip(link.as_ref()).await;
                    started.elapsed()
                })
            })
            .collect();
        let mut finished = Vec::new();
        for wave in waves {
            finished.push(wave.await.unwrap());
        }
        assert_eq!(
            finished,
            [
                TRIP,
                TRIP + TRIP / 5,
                TRIP + 2 * TRIP / 5,
                2 * TRIP,
                2 * TRIP
            ],
            "the last two share the fourth probe"
        );
        assert_eq!(link.probes.load(Ordering::SeqCst), 4);
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_probe_is_replaced() {
        let link = EchoLink::new();
        let (prober, cancel) = start(&link).await;
        link.drop_next.store(true, Ordering::SeqCst);
        let started = Instant::now();
        // The caller writes the first probe itself, without waking the probe task, which
        // still notices it is lost.
        prober.round_trip(link.as_ref()).await;
        assert_eq!(started.elapsed(), PRESUMED_LOST + TRIP);
        assert_eq!(link.probes.load(Ordering::SeqCst), 2);
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_of_a_lost_connection_is_not_confirmed_by_a_later_probe() {
        let link = EchoLink::new();
        let (prober, cancel) = start(&link).await;
        // Confirmed before the loss: fine, even if the caller looks only after it.
        let before = prober.epoch();
        prober
            .round_trip_after(link.as_ref(), before)
            .await
            .unwrap();

        let written = prober.epoch();
        let waiting = {
            let (prober, link) = (prober.clone(), link.clone());
            tokio::spawn(async move { prober.round_trip_after(link.as_ref(), written).await })
        };
        tokio::time::sleep(TRIP / 2).await;
        prober.connection_lost();
        assert_eq!(waiting.await.unwrap(), Err(ConnectionLost));

        // A write on the new connection is confirmed by the next probe, and so is a plain
        // round trip (a subscription is renewed on the new connection).
        let after = prober.epoch();
        assert_ne!(after, written);
        prober.round_trip_after(link.as_ref(), after).await.unwrap();
        prober.round_trip(link.as_ref()).await;
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn anything_but_its_own_probes_on_the_subject_proves_nothing() {
        let prober = Prober::new(
            "hubbus",
            &IdGenerator::seeded(1, Arc::new(crate::id::SystemClock)),
        );
        let forged = |payload: &[u8]| LinkMessage {
            subject: prober.subject().to_owned(),
            reply: None,
            headers: Vec::new(),
            payload: Bytes::copy_from_slice(payload),
            status: None,
            description: None,
        };
        let (target, own) = prober.want();
        assert_eq!(target, 1);
        assert!(own.is_none(), "nobody listens: the probe task sends it");
        prober.came_back(&forged(&1u64.to_be_bytes()));
        prober.came_back(&forged(b"junk"));
        assert_eq!(prober.state().returned, 0, "probe 1 was never sent");
        let probe = prober.next_probe().expect("a probe is wanted");
        prober.came_back(&forged(b"junk"));
        assert_eq!(prober.state().returned, 0);
        prober.came_back(&LinkMessage {
            subject: probe.subject,
            reply: None,
            headers: Vec::new(),
            payload: probe.payload,
            status: None,
            description: None,
        });
        assert_eq!(prober.state().returned, 1);
        assert!(prober.next_probe().is_none(), "nobody wants another");
    }
}
