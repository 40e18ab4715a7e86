//! A fake NATS server that runs as a turmoil host: the client protocol both NATS links speak,
//! plus the JetStream API subset the JetStream bus calls (`jetstream`).
//!
//! The JetStream engine is a state machine without I/O: the server hands it every message it
//! takes ([`jetstream::Engine::handles`]) and delivers what it answers, and calls it again at
//! its next deadline. Its store ([`jetstream::JetStreamStore`]) outlives the host's software,
//! like a store directory outlives a process, so a `bounce` or a crash keeps streams and
//! consumers; only an explicit disk loss wipes them.

pub mod jetstream;
