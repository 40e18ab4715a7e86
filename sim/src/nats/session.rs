//! One client's protocol state, and what the server does with each operation it sends: the
//! `CONNECT` options, authentication, verbose `+OK`s, publishing (to subscribers, to JetStream,
//! or back to the requester as "no responders"), subscriptions, and the server's own timers.
//!
//! The reactions copy nats-server 2.9, because clients depend on them:
//! - Before `CONNECT` the options are nats-server's defaults (`verbose`, `pedantic` and `echo`
//!   on, no headers), and a later `CONNECT` changes only the fields it carries.
//! - A `CONNECT` that is not JSON, an `INFO` that is not a JSON object, and a client's `-ERR`
//!   close the connection without a word; wrong credentials get `-ERR 'Authorization
//!   Violation'`, a protocol other than 0 or 1 `-ERR 'invalid client protocol'`, and
//!   `no_responders` without `headers` `-ERR 'no responders requires headers support'`, each
//!   followed by the close.
//! - `-ERR 'Invalid Subject'` (a subscription) and `-ERR 'Invalid Publish Subject'` (a
//!   pedantic client's publish, which is still delivered) leave the connection open.
//! - Pings: the server pings a client that has been quiet (no publish, subscription change or
//!   ping of its own) for a whole interval, always the first time, 2 seconds after `CONNECT` at
//!   the latest; the ping that would pass the allowed unanswered ones is replaced by `-ERR
//!   'Stale Connection'` and the close.
//! - A server that requires authentication waits its authentication timeout for `CONNECT`,
//!   then sends `-ERR 'Authentication Timeout'` and closes.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use tokio::time::Instant;

use super::host::Host;
use super::options::Auth;
use super::outbox::{Kind, Outbox, Queued};
use super::protocol::{
    ClientOp, DecodeContext, OK, PING, PONG, ProtocolError, Publish, error_line,
};
use super::registry::{ClientFlags, ConnId, Message};
use super::subject::is_valid_literal;

/// The first ping after `CONNECT` comes this soon if the interval is longer, so a client's
/// round trip is measured early.
const FIRST_PING: Duration = Duration::from_secs(2);

/// nats-server pings at least this often, whatever the client's activity, to keep its measure
/// of the round trip current.
const RTT_REFRESH: Duration = Duration::from_secs(3600);

/// What the connection does after an operation or a timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    /// Carry on.
    Continue,
    /// Write what is queued, then close.
    Close,
    /// Close at once, dropping what is queued (a slow consumer).
    Kill,
}

/// The `CONNECT` fields the server acts on; absent ones leave the current value.
#[derive(Debug, Default, Deserialize)]
struct Connect {
    verbose: Option<bool>,
    pedantic: Option<bool>,
    echo: Option<bool>,
    headers: Option<bool>,
    no_responders: Option<bool>,
    protocol: Option<i64>,
    user: Option<String>,
    pass: Option<String>,
    auth_token: Option<String>,
}

/// A client's options.
#[derive(Debug, Clone)]
struct ClientOptions {
    verbose: bool,
    pedantic: bool,
    echo: bool,
    headers: bool,
    no_responders: bool,
    protocol: i64,
    user: Option<String>,
    pass: Option<String>,
    auth_token: Option<String>,
}

impl Default for ClientOptions {
    /// nats-server's defaults for a client that has not said otherwise.
    fn default() -> Self {
        ClientOptions {
            verbose: true,
            pedantic: true,
            echo: true,
            headers: false,
            no_responders: false,
            protocol: 0,
            user: None,
            pass: None,
            auth_token: None,
        }
    }
}

impl ClientOptions {
    fn apply(&mut self, connect: Connect) {
        let Connect {
            verbose,
            pedantic,
            echo,
            headers,
            no_responders,
            protocol,
            user,
            pass,
            auth_token,
        } = connect;
        self.verbose = verbose.unwrap_or(self.verbose);
        self.pedantic = pedantic.unwrap_or(self.pedantic);
        self.echo = echo.unwrap_or(self.echo);
        self.headers = headers.unwrap_or(self.headers);
        self.no_responders = no_responders.unwrap_or(self.no_responders);
        self.protocol = protocol.unwrap_or(self.protocol);
        self.user = user.or(self.user.take());
        self.pass = pass.or(self.pass.take());
        self.auth_token = auth_token.or(self.auth_token.take());
    }
}

/// The server's timers for one connection.
#[derive(Debug)]
struct Timers {
    /// When a client that has not sent `CONNECT` is refused; only if authentication is
    /// required.
    auth_deadline: Option<Instant>,
    /// When the ping timer fires next.
    ping_at: Instant,
    /// Pings sent and not answered.
    pings_out: u32,
    last_ping_sent: Option<Instant>,
    last_client_ping: Option<Instant>,
    /// The last publish or subscription change.
    last_activity: Option<Instant>,
}

/// See the module documentation.
pub(super) struct Session {
    host: Rc<Host>,
    id: ConnId,
    outbox: Arc<Outbox>,
    client_ip: String,
    options: ClientOptions,
    connect_received: bool,
    timers: Timers,
}

impl Session {
    /// A new connection from `client_ip`, registered as `id`, accepted at `now`.
    pub(super) fn new(
        host: Rc<Host>,
        id: ConnId,
        outbox: Arc<Outbox>,
        client_ip: String,
        now: Instant,
    ) -> Self {
        let auth_deadline =
            (host.config.auth != Auth::Open).then(|| now + host.config.auth_timeout);
        let ping_at = now + host.config.ping_interval;
        Session {
            host,
            id,
            outbox,
            client_ip,
            options: ClientOptions::default(),
            connect_received: false,
            timers: Timers {
                auth_deadline,
                ping_at,
                pings_out: 0,
                last_ping_sent: None,
                last_client_ping: None,
                last_activity: None,
            },
        }
    }

    /// Sends the INFO every connection starts with.
    pub(super) fn greet(&mut self) -> Flow {
        let info = self.host.info_line(self.id, &self.client_ip);
        self.send(info)
    }

    /// What the decoder needs to know now.
    pub(super) fn decode_context(&self) -> DecodeContext {
        DecodeContext {
            awaiting_auth: self.host.config.auth != Auth::Open && !self.connect_received,
            headers: self.options.headers,
            max_payload: usize::try_from(self.host.max_payload()).unwrap_or(usize::MAX),
        }
    }

    /// Queues one of the server's own lines; a client too far behind to take it is a slow
    /// consumer.
    fn send(&self, bytes: impl Into<Bytes>) -> Flow {
        match self.outbox.push(bytes.into(), Kind::Control) {
            Queued::Yes => Flow::Continue,
            Queued::Full => {
                self.host.registry.drop_slow_consumer(self.id);
                Flow::Kill
            }
            Queued::Closed => Flow::Kill,
        }
    }

    /// Queues `-ERR '<text>'` and closes.
    fn refuse(&self, text: &str) -> Flow {
        tracing::debug!(
            client_id = self.id,
            error = text,
            "fake NATS refuses a client"
        );
        match self.send(error_line(text)) {
            Flow::Continue => Flow::Close,
            flow => flow,
        }
    }

    /// `+OK` for a verbose client.
    fn acknowledge(&self) -> Flow {
        if self.options.verbose {
            self.send(OK)
        } else {
            Flow::Continue
        }
    }

    /// Reacts to input the decoder refused.
    pub(super) fn protocol_error(&self, error: ProtocolError) -> Flow {
        match error.reply() {
            Some(text) => self.refuse(text),
            None => {
                tracing::debug!(client_id = self.id, %error, "fake NATS closes a connection");
                Flow::Close
            }
        }
    }

    /// Runs one operation at `now`.
    pub(super) fn execute(&mut self, op: ClientOp, now: Instant) -> Flow {
        match op {
            ClientOp::Connect(json) => self.connect(&json, now),
            ClientOp::Publish(publish) => self.publish(&publish, now),
            ClientOp::Subscribe {
                subject,
                queue,
                sid,
            } => {
                self.timers.last_activity = Some(now);
                match self.host.registry.subscribe(self.id, subject, queue, sid) {
                    Ok(()) => self.acknowledge(),
                    Err(_) => self.send(error_line("Invalid Subject")),
                }
            }
            ClientOp::Unsubscribe { sid, max } => {
                self.timers.last_activity = Some(now);
                self.host.registry.unsubscribe(self.id, &sid, max);
                self.acknowledge()
            }
            ClientOp::Ping => {
                self.timers.last_client_ping = Some(now);
                self.send(PONG)
            }
            ClientOp::Pong => {
                self.timers.pings_out = 0;
                Flow::Continue
            }
            ClientOp::Info(json) => {
                match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&json) {
                    Ok(_) => Flow::Continue,
                    Err(_) => Flow::Close,
                }
            }
            ClientOp::Ok => Flow::Continue,
            ClientOp::Err(_) => Flow::Close,
        }
    }

    fn connect(&mut self, json: &[u8], now: Instant) -> Flow {
        let connect = match serde_json::from_slice::<Connect>(json) {
            Ok(connect) => connect,
            Err(error) => {
                tracing::debug!(client_id = self.id, %error, "fake NATS got a CONNECT that is not JSON");
                return Flow::Close;
            }
        };
        self.options.apply(connect);
        self.connect_received = true;
        self.timers.auth_deadline = None;
        self.timers.last_activity = Some(now);
        self.timers.ping_at = now + self.host.config.ping_interval.min(FIRST_PING);
        let options = &self.options;
        if !self.host.config.auth.accepts(
            options.user.as_deref(),
            options.pass.as_deref(),
            options.auth_token.as_deref(),
        ) {
            return self.refuse("Authorization Violation");
        }
        if !(0..=1).contains(&options.protocol) {
            return self.refuse("invalid client protocol");
        }
        if options.no_responders && !options.headers {
            return self.refuse("no responders requires headers support");
        }
        self.host.registry.set_flags(
            self.id,
            ClientFlags {
                echo: options.echo,
                headers: options.headers,
                async_info: options.protocol >= 1,
            },
        );
        self.acknowledge()
    }

    /// `PUB`/`HPUB`: core subscribers first, then JetStream; a request that reached neither
    /// gets a 503 status back if the client asked for that.
    fn publish(&mut self, publish: &Publish, now: Instant) -> Flow {
        self.timers.last_activity = Some(now);
        if self.options.pedantic && !is_valid_literal(&publish.subject) {
            let flow = self.send(error_line("Invalid Publish Subject"));
            if flow != Flow::Continue {
                return flow;
            }
        }
        let flow = self.acknowledge();
        if flow != Flow::Continue {
            return flow;
        }
        self.host.controls.count_published();
        let message = Message {
            subject: &publish.subject,
            shown_as: None,
            reply: publish.reply.as_deref(),
            headers: &publish.headers,
            body: &publish.body,
        };
        let delivered = self.host.registry.publish(Some(self.id), &message);
        let engine_takes = self.host.engine_handles(&publish.subject);
        if engine_takes {
            self.host.feed_engine(publish);
        }
        if delivered == 0
            && !engine_takes
            && self.options.no_responders
            && let Some(reply) = &publish.reply
        {
            self.host.registry.no_responders(self.id, reply);
        }
        Flow::Continue
    }

    /// When a timer fires next.
    pub(super) fn next_deadline(&self) -> Instant {
        match self.timers.auth_deadline {
            Some(deadline) => deadline.min(self.timers.ping_at),
            None => self.timers.ping_at,
        }
    }

    /// Starts every timer over from `now`, after a wedge held the server.
    pub(super) fn restart_timers(&mut self, now: Instant) {
        if self.timers.auth_deadline.is_some() {
            self.timers.auth_deadline = Some(now + self.host.config.auth_timeout);
        }
        self.timers.ping_at = now + self.host.config.ping_interval;
    }

    /// Does what is due at `now`: the authentication timeout, or a ping.
    pub(super) fn on_timer(&mut self, now: Instant) -> Flow {
        if self
            .timers
            .auth_deadline
            .is_some_and(|deadline| deadline <= now)
        {
            self.timers.auth_deadline = None;
            return self.refuse("Authentication Timeout");
        }
        if now < self.timers.ping_at {
            return Flow::Continue;
        }
        let interval = self.host.config.ping_interval;
        self.timers.ping_at = now + interval;
        let rtt_due = self
            .timers
            .last_ping_sent
            .is_none_or(|sent| now - sent > RTT_REFRESH);
        let recent = |at: Option<Instant>| at.is_some_and(|at| now - at < interval);
        if !rtt_due && (recent(self.timers.last_activity) || recent(self.timers.last_client_ping)) {
            return Flow::Continue;
        }
        if self.timers.pings_out + 1 > self.host.config.max_pings_out {
            self.host.controls.count_stale_connection();
            return self.refuse("Stale Connection");
        }
        self.timers.pings_out += 1;
        self.timers.last_ping_sent = Some(now);
        self.send(PING)
    }
}
