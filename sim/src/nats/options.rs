//! How a fake NATS host behaves: authentication, limits, ping timing and JetStream, with
//! nats-server 2.9's defaults.

use std::time::Duration;

use super::control::FakeNatsControl;
use super::jetstream::JetStreamStore;

/// The port NATS clients connect to by default.
pub const DEFAULT_PORT: u16 = 4222;

/// nats-server's default maximum payload: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD: u32 = 1024 * 1024;

/// nats-server's default `max_pending`: 64 MiB may wait for a client's socket before the client
/// is disconnected as a slow consumer.
pub const DEFAULT_MAX_PENDING: usize = 64 * 1024 * 1024;

/// nats-server's default ping interval: 2 minutes.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(120);

/// nats-server's default `ping_max`: a third unanswered ping closes the connection.
pub const DEFAULT_MAX_PINGS_OUT: u32 = 2;

/// nats-server's default authentication timeout: 2 seconds to send `CONNECT`.
pub const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Who may connect, mirroring nats-server's `--user`/`--pass` and `--auth`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Auth {
    /// Anyone, whatever credentials `CONNECT` carries.
    Open,
    /// `CONNECT` must carry this `user` and `pass`.
    User { user: String, password: String },
    /// `CONNECT` must carry this `auth_token`.
    Token(String),
}

/// How a fake NATS host behaves. Cloning shares the [`FakeNatsControl`] and the JetStream
/// store, so the clone the host closure captures and the one the test keeps refer to the same
/// server and the same "disk".
///
/// ```no_run
/// use hubbus_sim::nats::jetstream::JetStreamStore;
/// use hubbus_sim::nats::{DEFAULT_PORT, FakeNatsOptions, serve_nats};
///
/// let options = FakeNatsOptions::new()
///     .with_user("hub", "secret")
///     .with_jetstream(JetStreamStore::new());
/// let control = options.control();
/// let mut sim = turmoil::Builder::new().build();
/// sim.host("nats", move || serve_nats(DEFAULT_PORT, options.clone()));
/// sim.client("app", async move {
///     // ... connect to "nats:4222" through hubbus::transport::TurmoilTcp ...
///     control.wedge(true); // the server stops answering; connections stay open
///     Ok(())
/// });
/// sim.run().unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct FakeNatsOptions {
    pub(super) auth: Auth,
    pub(super) server_name: String,
    pub(super) max_payload: u32,
    pub(super) max_pending: usize,
    pub(super) ping_interval: Duration,
    pub(super) max_pings_out: u32,
    pub(super) auth_timeout: Duration,
    pub(super) jetstream: Option<JetStreamStore>,
    pub(super) control: FakeNatsControl,
}

impl Default for FakeNatsOptions {
    fn default() -> Self {
        FakeNatsOptions {
            auth: Auth::Open,
            server_name: "fake-nats".to_owned(),
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_pending: DEFAULT_MAX_PENDING,
            ping_interval: DEFAULT_PING_INTERVAL,
            max_pings_out: DEFAULT_MAX_PINGS_OUT,
            auth_timeout: DEFAULT_AUTH_TIMEOUT,
            jetstream: None,
            control: FakeNatsControl::default(),
        }
    }
}

impl FakeNatsOptions {
    /// No authentication, no JetStream, nats-server's default limits and timing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requires `"user"` and `"pass"` in `CONNECT` (INFO says `auth_required`).
    pub fn with_user(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = Auth::User {
            user: user.into(),
            password: password.into(),
        };
        self
    }

    /// Requires `"auth_token"` in `CONNECT` (INFO says `auth_required`).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.auth = Auth::Token(token.into());
        self
    }

    /// The `server_name` INFO reports; `fake-nats` unless set.
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = name.into();
        self
    }

    /// The largest payload (headers included) a client may publish; larger ones get
    /// `-ERR 'Maximum Payload Violation'` and the connection closes. Reported in INFO.
    pub fn with_max_payload(mut self, bytes: u32) -> Self {
        self.max_payload = bytes;
        self
    }

    /// How many bytes may wait for a client's socket (nats-server's `max_pending`). A client
    /// that falls further behind is disconnected at once, without an error, as a slow
    /// consumer. At least 1.
    pub fn with_max_pending(mut self, bytes: usize) -> Self {
        self.max_pending = bytes.max(1);
        self
    }

    /// How often the server pings a client that has been quiet for as long. The first ping
    /// comes at most 2 seconds after `CONNECT`, as in nats-server.
    pub fn with_ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval;
        self
    }

    /// How many pings may go unanswered: the ping that would pass this is replaced by
    /// `-ERR 'Stale Connection'` and the connection closes.
    pub fn with_max_pings_out(mut self, pings: u32) -> Self {
        self.max_pings_out = pings;
        self
    }

    /// How long a client of a server that requires authentication has to send `CONNECT`
    /// before it gets `-ERR 'Authentication Timeout'` and is disconnected.
    pub fn with_auth_timeout(mut self, timeout: Duration) -> Self {
        self.auth_timeout = timeout;
        self
    }

    /// Enables JetStream on `store`, its "disk", which keeps streams and consumers across
    /// restarts of the host's software (INFO says `jetstream`).
    pub fn with_jetstream(mut self, store: JetStreamStore) -> Self {
        self.jetstream = Some(store);
        self
    }

    /// The handle that steers and observes the server these options start.
    pub fn control(&self) -> FakeNatsControl {
        self.control.clone()
    }

    /// The JetStream store, if JetStream is enabled; a test reaches the store's fault switches
    /// through it.
    pub fn jetstream(&self) -> Option<&JetStreamStore> {
        self.jetstream.as_ref()
    }
}

impl Auth {
    /// Whether credentials from `CONNECT` are accepted.
    pub(super) fn accepts(
        &self,
        user: Option<&str>,
        password: Option<&str>,
        token: Option<&str>,
    ) -> bool {
        match self {
            Auth::Open => true,
            Auth::User {
                user: expected_user,
                password: expected_password,
            } => user == Some(expected_user) && password == Some(expected_password),
            Auth::Token(expected) => token == Some(expected),
        }
    }
}
