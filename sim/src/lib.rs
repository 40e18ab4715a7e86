//! The deterministic simulation of hubbus: fake brokers that run as turmoil hosts, fault
//! schedules, and the invariant checkers the simulation tests use.
