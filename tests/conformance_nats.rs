//! The conformance suite over NATS Core on the production link (async-nats): every check gets
//! its own `nats-server`, every node is a [`hubbus::backend::nats::NatsCoreBus`] on its own
//! connection, with a plain `>` subscriber beside them (see `nats_nodes`).
//! `conformance_nats_wire.rs` runs the same over the wire link.

mod conformance;
mod nats_nodes;
mod support;

use nats_nodes::{CoreNodes, NATS_CORE};
use support::links::LinkKind;

conformance::conformance_tests!(CoreNodes::new(LinkKind::AsyncNats), NATS_CORE);
