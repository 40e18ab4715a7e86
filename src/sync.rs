//! The synchronisation primitives of the concurrent core, swapped for loom's under
//! `--cfg hubbus_loom` so that the loom models in `tests/loom.rs` explore every interleaving
//! of the real code rather than of a copy.

#[cfg(hubbus_loom)]
pub(crate) use loom::sync::{Arc, Mutex, MutexGuard, atomic::AtomicU64};

#[cfg(not(hubbus_loom))]
pub(crate) use std::sync::{Arc, Mutex, MutexGuard, atomic::AtomicU64};

/// Locks `mutex`, recovering the data if a holder panicked: every critical section in the core
/// leaves the state consistent before anything that could panic.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
