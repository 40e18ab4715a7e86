//! The wire link's connection task: the whole lifecycle of its connections in one place.
//!
//! 1. Pace: the first attempt goes out at once, later ones after `reconnect_wait` plus seeded
//!    jitter; after `max_reconnects` failed attempts the link gives up (see `servers.rs`). A
//!    connection lost within `reconnect_wait` of its start counts as a failed attempt for the
//!    pacing (not for `max_reconnects`), so a server that drops every connection at once is not
//!    called again in a tight loop.
//! 2. Connect through the [`Connector`] to the next server of the list, and shake hands within
//!    the connect timeout: read `INFO`, send `CONNECT` (`verbose` off, `headers` and
//!    `no_responders` on, the credentials) and a `PING`, and wait for the `PONG` that proves
//!    the server took them. A `-ERR` instead (an authorization violation, say) fails the
//!    attempt with that reason. Every failed attempt is reported as
//!    [`LinkEvent::ServerError`] with the reason, as the production link does.
//! 3. Report [`LinkEvent::Connected`], then renew every live subscription (`SUB` with the same
//!    sid) before anything else is written; only then is the command queue read again.
//! 4. Serve, in one biased `select!`: write what is buffered, read and dispatch what arrived,
//!    send `UNSUB` for dropped subscriptions, take commands while the write buffer is below its
//!    high-water mark, and ping the server when it has been silent for the ping interval. A
//!    server silent through two pings, a read or write error, end of stream, bytes that do not
//!    parse, or a server that stops reading what is written end the connection:
//!    [`LinkEvent::Disconnected`] with the reason, and back to 1.
//! 5. On `close` the queue is drained (a final `PING` whose `PONG` proves everything before it
//!    was processed); on `close`, drop or giving up the task ends, every subscription stream
//!    ends, waiting requests fail, and [`LinkEvent::Closed`] is reported.
//!
//! Messages go to their subscription's bounded queue with `try_send`: a queue that is full
//! drops the message and reports [`LinkEvent::SlowConsumer`], so a slow reader never holds up
//! the connection. Replies to requests arrive on one wildcard subscription and are routed by
//! their token. Nothing here waits on a caller.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::protocol::{ClientOp, HeaderBlock, Msg, Parser, ProtocolError, ServerInfo, ServerOp};
use super::{Outgoing, Shared};
use crate::backend::nats::link::{LinkError, LinkEvent, LinkMessage};
use crate::log_limit::LogLimiter;
use crate::transport::{BoxedStream, Connector};

/// How many bytes one read asks for at least.
const READ_CHUNK: usize = 32 * 1024;

/// Commands are taken from the queue only while fewer bytes than this wait to be written, so
/// a server that reads slowly holds callers up instead of growing the buffer.
const WRITE_HIGH_WATER: usize = 64 * 1024;

/// Beyond the high-water mark and one message, what may pile up from answers the client owes
/// (`PONG`s, `UNSUB`s) before a server that reads nothing counts as gone.
const WRITE_SLACK: usize = 1024 * 1024;

/// Keepalive `PING`s the server may leave unanswered; when the next one is due, the
/// connection counts as lost (async-nats's limit).
const MAX_PENDING_PINGS: usize = 2;

/// What callers ask of the connection task, in the order they asked.
#[derive(Debug)]
pub(super) enum Command {
    Publish(Outgoing),
    /// A publish whose reply subject is on the reply subscription, which it makes if needed.
    Request(Outgoing),
    Subscribe {
        sid: u64,
        subject: String,
        sender: mpsc::Sender<LinkMessage>,
    },
    /// Answered when the server's `PONG` to a `PING` written now arrives.
    Flush(oneshot::Sender<()>),
    /// Like `Flush`, then the task ends.
    Drain(oneshot::Sender<()>),
}

/// Where a subscription's messages go.
#[derive(Debug)]
enum Route {
    /// A caller's subscription stream.
    Deliver(mpsc::Sender<LinkMessage>),
    /// The reply subscription: to the request waiting for the token.
    Replies,
}

#[derive(Debug)]
struct Subscription {
    subject: String,
    route: Route,
}

impl Subscription {
    /// True while someone may still read what it receives.
    fn is_live(&self) -> bool {
        match &self.route {
            Route::Deliver(sender) => !sender.is_closed(),
            Route::Replies => true,
        }
    }
}

/// Who waits for the server's next `PONG` (the server answers `PING`s in order).
#[derive(Debug)]
enum PongWaiter {
    Keepalive,
    Flush(oneshot::Sender<()>),
    Drain(oneshot::Sender<()>),
}

/// Why one connection attempt failed; reported as the link's server error.
#[derive(Debug)]
enum ConnectFailure {
    Io(std::io::Error),
    TimedOut(Duration),
    Protocol(ProtocolError),
    /// The server answered the handshake with `-ERR`.
    Refused(String),
    /// The stream ended during the handshake.
    Closed,
    /// The server did not open with `INFO`.
    NoInfo,
    TlsRequired,
}

impl fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Some transports (turmoil's) say little more than the address: name the kind.
            ConnectFailure::Io(error) => {
                let kind = error.kind().to_string();
                if error.to_string().to_lowercase().contains(&kind) {
                    write!(f, "{error}")
                } else {
                    write!(f, "{kind}: {error}")
                }
            }
            ConnectFailure::TimedOut(after) => {
                write!(
                    f,
                    "the server did not complete the handshake within {after:?}"
                )
            }
            ConnectFailure::Protocol(error) => write!(f, "unreadable handshake: {error}"),
            ConnectFailure::Refused(text) => f.write_str(&server_error(text)),
            ConnectFailure::Closed => f.write_str("the server closed the connection"),
            ConnectFailure::NoInfo => f.write_str("the server did not start with INFO"),
            ConnectFailure::TlsRequired => {
                f.write_str("the server requires TLS, which the wire link does not speak")
            }
        }
    }
}

impl From<std::io::Error> for ConnectFailure {
    fn from(error: std::io::Error) -> Self {
        ConnectFailure::Io(error)
    }
}

impl From<ProtocolError> for ConnectFailure {
    fn from(error: ProtocolError) -> Self {
        ConnectFailure::Protocol(error)
    }
}

/// A server's `-ERR` text as the link reports it: an authorization violation in the words
/// the production link uses (health reasons and tests look for them), anything else as sent.
fn server_error(text: &str) -> String {
    if text.eq_ignore_ascii_case("Authorization Violation") {
        "authorization violation".to_owned()
    } else {
        text.to_owned()
    }
}

/// How the task ends.
enum Exit {
    /// `close` (after draining, or not) or the handle was dropped.
    Closed,
    /// `max_reconnects` attempts in a row failed.
    GaveUp(usize),
}

/// How one connection ended.
enum Ended {
    Exit(Exit),
    Lost(String),
}

/// One connection and what belongs to it alone.
struct Session {
    server: String,
    reader: ReadHalf<BoxedStream>,
    writer: WriteHalf<BoxedStream>,
    parser: Parser,
    /// What waits to be written.
    out: BytesMut,
    /// Bytes went out since the last flush.
    unflushed: bool,
    info: ServerInfo,
    pongs: VecDeque<PongWaiter>,
    /// Keepalive `PING`s not answered yet.
    keepalives: usize,
    /// When to ping, unless something arrives first.
    next_ping: Instant,
    /// The server's last `-ERR`, to say why it closed the connection.
    last_error: Option<String>,
}

impl Session {
    /// The next operation during the handshake.
    async fn read_op(&mut self) -> Result<ServerOp, ConnectFailure> {
        loop {
            if let Some(op) = self.parser.next_op()? {
                return Ok(op);
            }
            if self
                .reader
                .read_buf(self.parser.read_buffer(READ_CHUNK))
                .await?
                == 0
            {
                return Err(ConnectFailure::Closed);
            }
        }
    }

    /// Writes everything buffered (during the handshake).
    async fn write_out(&mut self) -> Result<(), ConnectFailure> {
        self.writer.write_all(&self.out).await?;
        self.out.clear();
        self.writer.flush().await?;
        Ok(())
    }

    fn encode(&mut self, op: ClientOp<'_>) {
        op.encode(&mut self.out);
    }

    /// The most the server accepts in one message, as it last said.
    fn max_payload(&self) -> usize {
        self.info.max_payload
    }
}

/// Rate limits for log lines that can repeat at network speed.
struct Logs {
    malformed: LogLimiter,
    refused: LogLimiter,
}

/// The connection task's state across connections.
struct Supervisor {
    shared: Arc<Shared>,
    connector: Arc<dyn Connector>,
    commands: mpsc::Receiver<Command>,
    unsubscribes: mpsc::UnboundedReceiver<u64>,
    /// Every subscription to renew on a new connection, by sid.
    subscriptions: BTreeMap<u64, Subscription>,
    /// Failed attempts since the last connection.
    failures: usize,
    /// Every attempt so far: picks the server.
    attempts: usize,
    connected_before: bool,
    /// The last connection lasted less than `reconnect_wait`.
    died_young: bool,
    logs: Logs,
    /// Planted `duplicate_on_reconnect`: what was published since the server last answered a
    /// `PING`, written again on the next connection.
    #[cfg(hubbus_planted)]
    planted_replay: VecDeque<Outgoing>,
}

/// The most publishes the planted `duplicate_on_reconnect` keeps for its replay.
#[cfg(hubbus_planted)]
const PLANTED_REPLAY: usize = 64;

/// The connection task; see the module documentation.
pub(super) async fn run(
    shared: Arc<Shared>,
    connector: Arc<dyn Connector>,
    commands: mpsc::Receiver<Command>,
    unsubscribes: mpsc::UnboundedReceiver<u64>,
) {
    let mut supervisor = Supervisor {
        shared,
        connector,
        commands,
        unsubscribes,
        subscriptions: BTreeMap::new(),
        failures: 0,
        attempts: 0,
        connected_before: false,
        died_young: false,
        logs: Logs {
            malformed: LogLimiter::default(),
            refused: LogLimiter::default(),
        },
        #[cfg(hubbus_planted)]
        planted_replay: VecDeque::new(),
    };
    let exit = supervisor.lifecycle().await;
    supervisor.finish(exit);
}

impl Supervisor {
    /// Connects, serves, reconnects, until told to stop or out of attempts.
    async fn lifecycle(&mut self) -> Exit {
        let cancel = self.shared.cancel.clone();
        loop {
            let plan = &self.shared.plan;
            if plan.gives_up_after(self.failures) {
                return Exit::GaveUp(self.failures);
            }
            // A connection that died young does not earn an immediate retry: a server that
            // accepts and drops every connection must not be hammered in a tight loop.
            let pacing = if self.died_young {
                self.failures.max(1)
            } else {
                self.failures
            };
            let delay = plan.delay(pacing, &mut self.shared.rng());
            let server = plan.server(self.attempts).to_owned();
            let connect_timeout = plan.connect_timeout;
            self.attempts += 1;
            let opened = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Exit::Closed,
                opened = async {
                    tokio::time::sleep(delay).await;
                    tokio::time::timeout(connect_timeout, self.open(&server)).await
                } => opened,
            };
            let failure = match opened {
                Ok(Ok(session)) => {
                    self.failures = 0;
                    let started = Instant::now();
                    match self.serve(session).await {
                        Ended::Exit(exit) => return exit,
                        Ended::Lost(reason) => self.lost(reason),
                    }
                    self.died_young = started.elapsed() < self.shared.plan.reconnect_wait;
                    continue;
                }
                Ok(Err(failure)) => failure,
                Err(_) => ConnectFailure::TimedOut(connect_timeout),
            };
            self.failures += 1;
            tracing::debug!(
                %server,
                attempt = self.failures,
                error = %failure,
                "cannot connect to the NATS server"
            );
            self.shared
                .report(LinkEvent::ServerError(failure.to_string()));
        }
    }

    /// Opens a connection to `server` and shakes hands.
    async fn open(&self, server: &str) -> Result<Session, ConnectFailure> {
        let stream = self.connector.connect(server).await?;
        let (reader, writer) = tokio::io::split(stream);
        let mut session = Session {
            server: server.to_owned(),
            reader,
            writer,
            parser: Parser::new(),
            out: BytesMut::new(),
            unflushed: false,
            info: ServerInfo::default(),
            pongs: VecDeque::new(),
            keepalives: 0,
            next_ping: Instant::now() + self.shared.plan.ping_interval,
            last_error: None,
        };
        session.info = match session.read_op().await? {
            ServerOp::Info(info) => *info,
            _ => return Err(ConnectFailure::NoInfo),
        };
        if session.info.tls_required {
            return Err(ConnectFailure::TlsRequired);
        }
        session.encode(ClientOp::Connect(&self.shared.plan.connect));
        session.encode(ClientOp::Ping);
        session.write_out().await?;
        loop {
            match session.read_op().await? {
                ServerOp::Pong => break,
                ServerOp::Err(text) => return Err(ConnectFailure::Refused(text)),
                ServerOp::Ping => {
                    session.encode(ClientOp::Pong);
                    session.write_out().await?;
                }
                ServerOp::Info(info) => session.info = *info,
                ServerOp::Ok | ServerOp::Msg(_) => {}
            }
        }
        Ok(session)
    }

    /// Serves one connection until it ends.
    async fn serve(&mut self, mut session: Session) -> Ended {
        let shared = self.shared.clone();
        shared
            .max_payload
            .store(session.max_payload(), Ordering::Release);
        shared.connected.store(true, Ordering::Release);
        tracing::info!(
            server = %session.server,
            server_id = %session.info.server_id,
            version = %session.info.version,
            max_payload = session.info.max_payload,
            "{} the NATS server",
            if self.connected_before { "reconnected to" } else { "connected to" }
        );
        self.connected_before = true;
        shared.report(LinkEvent::Connected);
        self.renew(&mut session);
        let cancel = shared.cancel.clone();
        let ping_interval = shared.plan.ping_interval;
        loop {
            let writable = !session.out.is_empty();
            let flushable = !writable && session.unflushed;
            let takes_commands = session.out.len() < WRITE_HIGH_WATER;
            let ping_at = session.next_ping;
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ended::Exit(Exit::Closed),
                // One write, or a flush once everything is written; either completes whole or
                // not at all, so losing the race to another branch loses no bytes.
                written = async {
                    if writable {
                        session.writer.write(&session.out).await.map(Some)
                    } else {
                        session.writer.flush().await.map(|()| None)
                    }
                }, if writable || flushable => match written {
                    Ok(Some(0)) => return Ended::Lost("the connection takes no more bytes".into()),
                    Ok(Some(n)) => {
                        session.out.advance(n);
                        session.unflushed = true;
                    }
                    Ok(None) => session.unflushed = false,
                    Err(error) => return Ended::Lost(format!("write failed: {error}")),
                },
                read = session.reader.read_buf(session.parser.read_buffer(READ_CHUNK)) => {
                    match read {
                        Ok(0) => {
                            return Ended::Lost(match session.last_error.take() {
                                Some(error) => format!(
                                    "the server closed the connection after: {}",
                                    server_error(&error)
                                ),
                                None => "the server closed the connection".into(),
                            });
                        }
                        Ok(_) => {
                            if let Some(ended) = self.dispatch(&mut session, ping_interval) {
                                return ended;
                            }
                            // While messages keep arriving this branch is always ready, and the
                            // biased select would never reach the ones below: take what callers
                            // queued meanwhile here, so a flood in does not stall what goes out.
                            self.take_ready(&mut session);
                        }
                        Err(error) => return Ended::Lost(format!("read failed: {error}")),
                    }
                }
                sid = self.unsubscribes.recv() => {
                    // The queue's sender lives in `Shared`, which this task holds: `None`
                    // cannot happen.
                    if let Some(sid) = sid
                        && self.subscriptions.remove(&sid).is_some()
                    {
                        session.encode(ClientOp::Unsub { sid });
                    }
                }
                command = self.commands.recv(), if takes_commands => {
                    // As above, `None` cannot happen while this task runs.
                    if let Some(command) = command {
                        self.take_commands(&mut session, command);
                    }
                }
                _ = tokio::time::sleep_until(ping_at) => {
                    if session.keepalives >= MAX_PENDING_PINGS {
                        return Ended::Lost(format!(
                            "the server did not answer {MAX_PENDING_PINGS} pings \
                             ({ping_interval:?} apart)"
                        ));
                    }
                    session.encode(ClientOp::Ping);
                    session.pongs.push_back(PongWaiter::Keepalive);
                    session.keepalives += 1;
                    session.next_ping = Instant::now() + ping_interval;
                }
            }
        }
    }

    /// Renews every live subscription on a new connection, before anything else is written.
    fn renew(&mut self, session: &mut Session) {
        while let Ok(sid) = self.unsubscribes.try_recv() {
            self.subscriptions.remove(&sid);
        }
        self.subscriptions
            .retain(|_, subscription| subscription.is_live());
        // Planted `skip_resubscribe`: the subscriptions stay registered here, but the new
        // connection never hears of them.
        #[cfg(hubbus_planted)]
        if crate::planted::active("skip_resubscribe") {
            return;
        }
        for (sid, subscription) in &self.subscriptions {
            ClientOp::Sub {
                subject: &subscription.subject,
                sid: *sid,
            }
            .encode(&mut session.out);
        }
        #[cfg(hubbus_planted)]
        self.planted_replay(session);
    }

    /// Planted `duplicate_on_reconnect`: what the old connection may have swallowed is written
    /// again on the new one, although the server had processed it.
    #[cfg(hubbus_planted)]
    fn planted_replay(&mut self, session: &mut Session) {
        let replay = std::mem::take(&mut self.planted_replay);
        if crate::planted::active("duplicate_on_reconnect") {
            for outgoing in &replay {
                self.write_publish(session, outgoing);
            }
        }
    }

    /// Handles every operation that arrived.
    fn dispatch(&mut self, session: &mut Session, ping_interval: Duration) -> Option<Ended> {
        loop {
            match session.parser.next_op() {
                Ok(Some(op)) => {
                    // Anything from the server shows it is alive (as async-nats counts it).
                    session.next_ping = Instant::now() + ping_interval;
                    if let Some(ended) = self.on_op(session, op) {
                        return Some(ended);
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    if let Some(left_out) = self.logs.malformed.admit(1) {
                        tracing::warn!(
                            server = %session.server,
                            %error,
                            left_out,
                            "the NATS server sent bytes the client cannot read; reconnecting"
                        );
                    }
                    return Some(Ended::Lost(format!(
                        "unreadable bytes from the server: {error}"
                    )));
                }
            }
        }
        let limit = WRITE_HIGH_WATER + session.max_payload() + WRITE_SLACK;
        if session.out.len() > limit {
            return Some(Ended::Lost(format!(
                "the server reads nothing: {} bytes wait to be written",
                session.out.len()
            )));
        }
        None
    }

    fn on_op(&mut self, session: &mut Session, op: ServerOp) -> Option<Ended> {
        // Planted `duplicate_on_reconnect`: a PONG shows the server processed everything
        // written before its PING; only what came after is kept for the replay.
        #[cfg(hubbus_planted)]
        if matches!(op, ServerOp::Pong) {
            self.planted_replay.clear();
        }
        match op {
            ServerOp::Msg(msg) => self.deliver(session, msg),
            ServerOp::Ping => session.encode(ClientOp::Pong),
            ServerOp::Pong => match session.pongs.pop_front() {
                Some(PongWaiter::Keepalive) => {
                    session.keepalives = session.keepalives.saturating_sub(1);
                }
                Some(PongWaiter::Flush(done)) => answer(done),
                Some(PongWaiter::Drain(done)) => {
                    answer(done);
                    return Some(Ended::Exit(Exit::Closed));
                }
                None => {}
            },
            ServerOp::Ok => {}
            ServerOp::Err(text) => {
                tracing::debug!(server = %session.server, error = %text, "the NATS server reported an error");
                self.shared
                    .report(LinkEvent::ServerError(server_error(&text)));
                session.last_error = Some(text);
            }
            ServerOp::Info(info) => {
                if info.lame_duck_mode && !session.info.lame_duck_mode {
                    tracing::info!(
                        server = %session.server,
                        "the NATS server entered lame duck mode; the connection will move to \
                         another server when it goes"
                    );
                }
                self.shared
                    .max_payload
                    .store(info.max_payload, Ordering::Release);
                session.info = *info;
            }
        }
        None
    }

    /// Hands a message to its subscription.
    fn deliver(&mut self, session: &mut Session, msg: Msg) {
        let sid = msg.sid;
        // A message for a subscription that is gone (its UNSUB crossed the message) is dropped.
        let Some(subscription) = self.subscriptions.get(&sid) else {
            return;
        };
        let message = match link_message(msg) {
            Ok(message) => message,
            Err(error) => {
                if let Some(left_out) = self.logs.malformed.admit(1) {
                    tracing::warn!(
                        server = %session.server,
                        sid,
                        %error,
                        left_out,
                        "dropped a NATS message with a malformed header block"
                    );
                }
                return;
            }
        };
        match &subscription.route {
            Route::Replies => self.shared.route_reply(message),
            Route::Deliver(sender) => match sender.try_send(message) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => self.shared.report(LinkEvent::SlowConsumer(sid)),
                Err(TrySendError::Closed(_)) => {
                    self.subscriptions.remove(&sid);
                    session.encode(ClientOp::Unsub { sid });
                }
            },
        }
    }

    /// Takes the unsubscribes and commands that are ready without waiting, while the write
    /// buffer has room.
    fn take_ready(&mut self, session: &mut Session) {
        while let Ok(sid) = self.unsubscribes.try_recv() {
            if self.subscriptions.remove(&sid).is_some() {
                session.encode(ClientOp::Unsub { sid });
            }
        }
        if session.out.len() < WRITE_HIGH_WATER
            && let Ok(command) = self.commands.try_recv()
        {
            self.take_commands(session, command);
        }
    }

    /// Handles `first` and whatever else is queued, while the write buffer has room.
    fn take_commands(&mut self, session: &mut Session, first: Command) {
        let mut next = Some(first);
        while let Some(command) = next.take() {
            self.command(session, command);
            if session.out.len() < WRITE_HIGH_WATER {
                next = self.commands.try_recv().ok();
            }
        }
    }

    fn command(&mut self, session: &mut Session, command: Command) {
        match command {
            Command::Publish(outgoing) => self.write_publish(session, &outgoing),
            Command::Request(outgoing) => {
                let (sid, prefix) = {
                    let replies = self.shared.replies();
                    (replies.sid, replies.prefix.clone())
                };
                if let std::collections::btree_map::Entry::Vacant(entry) =
                    self.subscriptions.entry(sid)
                {
                    // Made with the first request, not on connect: a user allowed only the
                    // bus's subjects must not be refused an inbox it never uses.
                    let subject = format!("{prefix}*");
                    session.encode(ClientOp::Sub {
                        subject: &subject,
                        sid,
                    });
                    entry.insert(Subscription {
                        subject,
                        route: Route::Replies,
                    });
                }
                self.write_publish(session, &outgoing);
            }
            Command::Subscribe {
                sid,
                subject,
                sender,
            } => {
                // A stream dropped before its SUB was written needs no subscription at all.
                if !sender.is_closed() {
                    session.encode(ClientOp::Sub {
                        subject: &subject,
                        sid,
                    });
                    self.subscriptions.insert(
                        sid,
                        Subscription {
                            subject,
                            route: Route::Deliver(sender),
                        },
                    );
                }
            }
            Command::Flush(done) => {
                session.encode(ClientOp::Ping);
                session.pongs.push_back(PongWaiter::Flush(done));
            }
            Command::Drain(done) => {
                session.encode(ClientOp::Ping);
                session.pongs.push_back(PongWaiter::Drain(done));
            }
        }
    }

    /// Writes a publish, unless the server would refuse it: a message over its `max_payload`
    /// makes nats-server close the connection, so it is dropped here instead (publish refuses
    /// it up front once the limit is known; this catches a limit learned or lowered since).
    fn write_publish(&mut self, session: &mut Session, outgoing: &Outgoing) {
        let limit = session.max_payload();
        if limit > 0 && outgoing.size() > limit {
            if let Some(left_out) = self.logs.refused.admit(1) {
                tracing::warn!(
                    server = %session.server,
                    subject = %outgoing.subject,
                    size = outgoing.size(),
                    limit,
                    left_out,
                    "dropped a NATS message over the server's max_payload"
                );
            }
            return;
        }
        session.encode(ClientOp::Pub {
            subject: &outgoing.subject,
            reply: outgoing.reply.as_deref(),
            headers: outgoing.headers.as_deref(),
            payload: &outgoing.payload,
        });
        #[cfg(hubbus_planted)]
        if crate::planted::active("duplicate_on_reconnect") {
            if self.planted_replay.len() == PLANTED_REPLAY {
                self.planted_replay.pop_front();
            }
            self.planted_replay.push_back(outgoing.clone());
        }
    }

    /// The connection was lost: say so and why.
    fn lost(&mut self, reason: String) {
        self.shared.connected.store(false, Ordering::Release);
        tracing::debug!(%reason, "lost the NATS connection");
        self.shared.report(LinkEvent::Disconnected(reason));
    }

    /// The task ends: everything waiting on it learns so.
    fn finish(&mut self, exit: Exit) {
        let shared = &self.shared;
        shared.connected.store(false, Ordering::Release);
        let error = match exit {
            Exit::Closed => LinkError::Closed,
            Exit::GaveUp(attempts) => {
                tracing::error!(
                    attempts,
                    "cannot reach any NATS server; the link stops reconnecting (max_reconnects)"
                );
                LinkError::NotConnected(format!(
                    "gave up reconnecting after {attempts} failed attempts (max_reconnects)"
                ))
            }
        };
        *Shared::lock(&shared.ended) = Some(error);
        shared.replies().waiting.clear();
        self.subscriptions.clear();
        self.commands.close();
        shared.report(LinkEvent::Closed);
    }
}

/// Tells a flush or drain that the server answered.
fn answer(done: oneshot::Sender<()>) {
    if done.send(()).is_err() {
        tracing::trace!("a round trip was answered after its caller gave up on it");
    }
}

/// A message as the link hands it on; fails for a malformed header block.
fn link_message(msg: Msg) -> Result<LinkMessage, ProtocolError> {
    let block = match &msg.headers {
        Some(headers) => HeaderBlock::parse(headers)?,
        None => HeaderBlock::default(),
    };
    Ok(LinkMessage {
        subject: msg.subject,
        reply: msg.reply,
        headers: block.headers,
        payload: msg.payload,
        status: block.status,
        description: block.description,
    })
}
