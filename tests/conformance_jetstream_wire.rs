//! The conformance suite over NATS JetStream on the wire link (the protocol over `TokioTcp`,
//! the link the simulation runs) against a real `nats-server -js`: the same checks and promises
//! as `conformance_jetstream.rs`, so the wire link is measured against the production one.

mod conformance;
mod nats_nodes;
mod support;

use nats_nodes::{JETSTREAM, JetStreamNodes};
use support::links::LinkKind;

conformance::conformance_tests!(JetStreamNodes::new(LinkKind::Wire), JETSTREAM);
