//! The deterministic simulation of hubbus: fake brokers that run as turmoil hosts, fault
//! schedules, and the invariant checkers the simulation tests use.

#![deny(missing_docs)]

pub mod harness;
pub mod host_switch;
pub mod nats;
pub mod redis;
pub mod resp;
pub mod sentinel;
mod server;
pub mod shrink;
pub mod soak;
mod wedge;
