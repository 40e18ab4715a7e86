//! What the fake Redis and the fake Sentinel share: accepting connections, the pub/sub
//! registry, authentication, and the commands every Redis-speaking server answers the same way
//! (`PING`, `AUTH`, `HELLO`, `CLIENT`, `SUBSCRIBE`). Each server adds its own commands through
//! the small [`Dialect`] trait.
//!
//! Two lifetimes meet here. [`Controls`] outlives the host's software: a test holds it, and it
//! survives `Sim::bounce`, so fault switches and counters stay valid across restarts. A [`PubSub`]
//! is created each time the host's software starts and dies with it, so a restart loses every
//! subscription, as restarting a real Redis does. `Controls` reaches the running pubsub through a
//! `Weak`, which lets a test ask "who is subscribed right now" without keeping a crashed server
//! alive.
//!
//! The rest is split by concern: `registry.rs` (who is subscribed to what, and fan-out),
//! `connection.rs` (a connection's reader and writer tasks, where wedging takes effect),
//! `commands.rs` (the command table and the checks Redis makes before running a command) and
//! `session.rs` (the commands, per connection).

pub(crate) mod commands;
mod connection;
mod registry;
mod session;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use bytes::Bytes;

pub(crate) use registry::{PubSub, Space};

use crate::resp::Frame;
use crate::wedge::Wedge;

/// Locks a mutex whose data stays consistent even if a holder panicked (every critical section
/// here is a handful of map operations), so a poisoned lock is not a reason to stop serving.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Fault switches and counters of one simulated host, shared with the test and kept across
/// restarts of the host's software.
#[derive(Debug)]
pub(crate) struct Controls {
    /// Whether the host is wedged.
    wedge: Wedge,
    connections: AtomicU64,
    published: AtomicU64,
    delivered: AtomicU64,
    slow_disconnects: AtomicU64,
    live: Mutex<Weak<PubSub>>,
}

/// A snapshot of [`Controls`]' counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Connections accepted.
    pub(crate) connections: u64,
    /// Publishes, from clients or from the test through a control.
    pub(crate) published: u64,
    /// Messages written to subscribers' sockets.
    pub(crate) delivered: u64,
    /// Subscribers disconnected because their outgoing queue was full.
    pub(crate) slow_disconnects: u64,
}

impl Default for Controls {
    fn default() -> Self {
        Controls {
            wedge: Wedge::default(),
            connections: AtomicU64::new(0),
            published: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            slow_disconnects: AtomicU64::new(0),
            live: Mutex::new(Weak::new()),
        }
    }
}

impl Controls {
    pub(crate) fn set_wedged(&self, wedged: bool) {
        self.wedge.set(wedged);
    }

    pub(crate) fn is_wedged(&self) -> bool {
        self.wedge.is_on()
    }

    /// Returns once the host is not wedged.
    pub(crate) async fn until_unwedged(&self) {
        self.wedge.until_released().await;
    }

    /// The pubsub of the software running now, if the host is up.
    pub(crate) fn live(&self) -> Option<Arc<PubSub>> {
        lock(&self.live).upgrade()
    }

    pub(crate) fn counts(&self) -> Counts {
        Counts {
            connections: self.connections.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            slow_disconnects: self.slow_disconnects.load(Ordering::Relaxed),
        }
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Who may use a server, mirroring Redis's `requirepass` and ACL users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Auth {
    /// The `default` user has no password (`nopass`): every connection is authenticated.
    Open,
    /// The `default` user has this password (`requirepass`).
    Password(String),
    /// One ACL user with a password; the `default` user is disabled.
    User { name: String, password: String },
}

impl Auth {
    fn accepts(&self, user: &[u8], password: &[u8]) -> bool {
        match self {
            Auth::Open => user == b"default",
            Auth::Password(expected) => user == b"default" && password == expected.as_bytes(),
            Auth::User {
                name,
                password: expected,
            } => user == name.as_bytes() && password == expected.as_bytes(),
        }
    }
}

/// Which channels the authenticated user may `SUBSCRIBE` and `PUBLISH` to, mirroring an ACL
/// user's `&<pattern>` rules (`allchannels` when `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ChannelAcl(pub(crate) Option<Vec<Bytes>>);

impl ChannelAcl {
    /// Whether `channel` matches one of the patterns.
    pub(crate) fn allows(&self, channel: &[u8]) -> bool {
        match &self.0 {
            None => true,
            Some(patterns) => patterns.iter().any(|pattern| glob_match(pattern, channel)),
        }
    }
}

/// Redis's glob matching as far as ACL channel rules need it: `*` matches any run of bytes,
/// `?` any one byte, everything else itself (no `[...]` classes, no `\` escapes).
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| glob_match(rest, &text[skip..])),
        Some((b'?', rest)) => !text.is_empty() && glob_match(rest, &text[1..]),
        Some((byte, rest)) => text.first() == Some(byte) && glob_match(rest, &text[1..]),
    }
}

/// The commands that tell a Redis server from a Sentinel.
pub(crate) trait Dialect: Send + Sync + 'static {
    /// `mode` and `role` as `HELLO` reports them; Sentinel's `HELLO` has no `role`.
    fn hello_identity(&self) -> (&'static str, Option<&'static str>);

    /// Every command this server knows, the shared ones it answers included.
    fn commands(&self) -> &'static [commands::CommandSpec];

    /// Runs a command of [`Dialect::commands`] that the shared core does not run, by its
    /// spec's name (`publish`, `sentinel|get-master-addr-by-name`), with its arguments after
    /// the command's name. Existence, arity, authentication and subscribed mode were checked.
    fn execute(&self, name: &str, pubsub: &PubSub, args: &[Bytes]) -> Frame;

    /// Whether `HELLO 3` switches a connection to RESP3 (otherwise `-NOPROTO`).
    fn resp3(&self) -> bool {
        false
    }

    /// The error `SSUBSCRIBE` with these channels gets instead of subscribing, if any: a
    /// cluster node sends a client whose channels live elsewhere to their node (`-MOVED`).
    fn shard_redirect(&self, _channels: &[Bytes]) -> Option<Frame> {
        None
    }
}

/// How a server treats its clients.
#[derive(Debug, Clone)]
pub(crate) struct ServerConfig {
    pub(crate) auth: Auth,
    /// Frames each connection may have queued before a publish disconnects it.
    pub(crate) outgoing_queue: usize,
    /// The channels an authenticated client may use.
    pub(crate) channels: ChannelAcl,
}

/// One run of a server: what every connection task shares.
struct Server<D> {
    pubsub: Arc<PubSub>,
    dialect: D,
    config: ServerConfig,
}

/// Listens on `port` (IPv4, turmoil's default) and serves every connection until the host's
/// software is stopped.
pub(crate) async fn serve<D: Dialect>(
    port: u16,
    dialect: D,
    config: ServerConfig,
    controls: Arc<Controls>,
) -> turmoil::Result {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", port)).await?;
    let pubsub = Arc::new(PubSub::new(Arc::clone(&controls)));
    *lock(&controls.live) = Arc::downgrade(&pubsub);
    let server = Arc::new(Server {
        pubsub,
        dialect,
        config,
    });
    loop {
        // A wedged server still accepts: the kernel of a stalled Redis completes handshakes
        // too, and that is what makes the failure silent.
        let (stream, _) = listener.accept().await?;
        Controls::bump(&controls.connections);
        tokio::spawn(connection::run(stream, Arc::clone(&server)));
    }
}

/// Redis's arity error; `command` is the lower-case name (`client|setinfo` for subcommands).
pub(crate) fn wrong_arity(command: &str) -> Frame {
    Frame::error(format!(
        "ERR wrong number of arguments for '{command}' command"
    ))
}
