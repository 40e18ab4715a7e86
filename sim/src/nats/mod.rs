//! A fake NATS server that runs as a turmoil host: the client protocol both NATS links speak,
//! plus the JetStream API subset the JetStream bus calls (`jetstream`).
//!
//! The NATS backends reach a broker through a `Connector`; in the simulation their streams end
//! here. The fake speaks the client protocol of nats-server 2.9 (`INFO`, `CONNECT`, `PUB`,
//! `HPUB`, `SUB` with `*` and `>` wildcards and queue groups, `UNSUB` with a maximum, `MSG`,
//! `HMSG`, `PING`/`PONG` both ways, `+OK`/`-ERR`) with nats-server's error texts and its
//! choice of which errors close the connection, no-responders statuses for requests nobody
//! takes, authentication by user and password or token, and the limits that protect a real
//! server: maximum payload, maximum control line, and a byte-bounded outgoing queue per client
//! whose overflow disconnects a slow consumer. No input makes it panic.
//! `sim/tests/nats_differential.rs` compares it with a real nats-server on generated sequences
//! of protocol operations; `docs/testing.md` lists what differs and why it does not matter.
//!
//! A test configures the server with [`FakeNatsOptions`] and steers it through the
//! [`FakeNatsControl`] the options carry: wedge it, drop every connection, announce lame duck
//! mode or a new maximum payload, read its counters. The control outlives the host's software,
//! so it keeps working across `Sim::bounce` and `Sim::crash`; connections and subscriptions do
//! not, because they live in the running software, exactly as in a restarted nats-server.
//!
//! The JetStream engine is a state machine without I/O: the server hands it every message it
//! takes ([`jetstream::Engine::handles`]) and delivers what it answers, and calls it again at
//! its next deadline. Its store ([`jetstream::JetStreamStore`]) outlives the host's software,
//! like a store directory outlives a process, so a `bounce` or a crash keeps streams and
//! consumers; only an explicit disk loss wipes them.
//!
//! Layout: `protocol` (the client's operations and the server's lines), `subject` (validation
//! and wildcard matching), `registry` (subscriptions and fan-out), `outbox` (the bounded
//! queue), `session` (what each operation does), `connection` (the reader and writer tasks),
//! `host` (one run of the software, with the engine's clock), `control`, `options` and `info`.

mod connection;
mod control;
mod host;
mod info;
pub mod jetstream;
mod options;
mod outbox;
mod protocol;
mod registry;
mod session;
mod subject;

pub use control::{FakeNatsControl, FakeNatsStats};
pub use host::serve_nats;
pub use options::{
    DEFAULT_AUTH_TIMEOUT, DEFAULT_MAX_PAYLOAD, DEFAULT_MAX_PENDING, DEFAULT_MAX_PINGS_OUT,
    DEFAULT_PING_INTERVAL, DEFAULT_PORT, FakeNatsOptions,
};
