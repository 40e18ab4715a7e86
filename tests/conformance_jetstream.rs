//! The conformance suite over NATS JetStream on the production link (async-nats): every check
//! gets its own `nats-server -js` with its own store, every node is a
//! [`hubbus::backend::nats::JetStreamBus`] on its own connection, all sharing the default
//! stream (see `nats_nodes`). `conformance_jetstream_wire.rs` runs the same over the wire link.

mod conformance;
mod nats_nodes;
mod support;

use nats_nodes::{JETSTREAM, JetStreamNodes};
use support::links::LinkKind;

conformance::conformance_tests!(JetStreamNodes::new(LinkKind::AsyncNats), JETSTREAM);
