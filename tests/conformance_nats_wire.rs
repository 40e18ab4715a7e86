//! The conformance suite over NATS Core on the wire link (the protocol over `TokioTcp`, the
//! link the simulation runs) against a real `nats-server`: the same checks and promises as
//! `conformance_nats.rs`, so the wire link is measured against the production one.

mod conformance;
mod nats_nodes;
mod support;

use nats_nodes::{CoreNodes, NATS_CORE};
use support::links::LinkKind;

conformance::conformance_tests!(CoreNodes::new(LinkKind::Wire), NATS_CORE);
