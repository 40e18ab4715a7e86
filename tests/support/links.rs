//! Both NATS links, for the tests that must hold over either: the production one (async-nats)
//! and the wire link (the protocol spoken over a `Connector`, here plain TCP), which is the one
//! the simulation runs. A test written once as `async fn body(kind: LinkKind)` runs over both
//! with [`over_both_links!`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hubbus::BusError;
use hubbus::backend::nats::{AsyncNatsLink, LinkOptions, NatsLink, WireLink};
use hubbus::transport::TokioTcp;

/// Which [`NatsLink`] a test runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// [`AsyncNatsLink`], the production link.
    AsyncNats,
    /// [`WireLink`] on [`TokioTcp`].
    Wire,
}

impl LinkKind {
    /// Connects a link of this kind (it may not be connected yet).
    pub async fn connect(self, options: LinkOptions) -> Result<Arc<dyn NatsLink>, BusError> {
        Ok(match self {
            LinkKind::AsyncNats => Arc::new(AsyncNatsLink::connect(options).await?),
            LinkKind::Wire => Arc::new(Self::wire(options).await?),
        })
    }

    /// A wire link with a seed of its own (links sharing a server need different inboxes).
    pub async fn wire(options: LinkOptions) -> Result<WireLink, BusError> {
        WireLink::connect(options, Arc::new(TokioTcp), next_seed()).await
    }
}

/// A seed no other link of this test process got.
pub fn next_seed() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Expands `#[tokio::test] /// docs async fn name(kind: LinkKind) { ... }` (the test
/// attribute first, then the documentation) into a module `name` with the tests `name::async_nats` and `name::wire`, each running
/// the body over that link.
#[allow(
    unused_macros,
    reason = "not every test binary runs tests over both links"
)]
macro_rules! over_both_links {
    (#[$test:meta] $(#[$doc:meta])* async fn $name:ident($kind:ident: LinkKind) $body:block) => {
        $(#[$doc])*
        mod $name {
            #[allow(unused_imports, reason = "the body uses what its file imports")]
            use super::*;
            use $crate::support::links::LinkKind;

            async fn body($kind: LinkKind) $body

            #[$test]
            async fn async_nats() {
                body(LinkKind::AsyncNats).await
            }

            #[$test]
            async fn wire() {
                body(LinkKind::Wire).await
            }
        }
    };
}
#[allow(
    unused_imports,
    reason = "not every test binary runs tests over both links"
)]
pub(crate) use over_both_links;
