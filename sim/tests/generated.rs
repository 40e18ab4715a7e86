//! Generated runs on every backend: proptest draws a whole run (workload and fault schedule,
//! `hubbus_sim::harness::generate`) and a simulation seed, runs it, and holds it to the
//! backend's promise (`hubbus_sim::harness::Run::check`). A failure shrinks to a minimal
//! scenario, printed with its seed; proptest keeps it in `sim/proptest-regressions/` and runs it
//! first from then on.
//!
//! The default run draws a few cases per backend from a fixed seed, so it is the same every
//! time; `HUBBUS_TEST_SIM_CASES=<n>` draws more and `HUBBUS_TEST_SIM_CASE_SEED=<n>` draws
//! others. `cargo run -p hubbus-sim --release -- soak` runs thousands.

use hubbus_sim::harness::{Backend, Scenario, generate, run};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

/// Cases per backend in the default run.
const DEFAULT_CASES: u32 = 4;

fn config() -> Config {
    let number = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    Config {
        cases: number("HUBBUS_TEST_SIM_CASES").map_or(DEFAULT_CASES, |n| n as u32),
        rng_seed: RngSeed::Fixed(number("HUBBUS_TEST_SIM_CASE_SEED").unwrap_or(1)),
        // A failing run is shrunk by running it again many times; a few hundred is plenty.
        max_shrink_iters: number("HUBBUS_TEST_SIM_SHRINK").map_or(300, |n| n as u32),
        ..Config::default()
    }
}

fn holds(scenario: &Scenario, seed: u64) -> Result<(), TestCaseError> {
    let outcome = run(scenario, seed).map_err(TestCaseError::fail)?;
    outcome.check(scenario).map_err(|violation| {
        TestCaseError::fail(format!("{violation}\nlast events:\n{}", outcome.tail(30)))
    })?;
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn redis(scenario in generate::scenario(Backend::Redis), seed in any::<u64>()) {
        holds(&scenario, seed)?;
    }

    #[test]
    fn redis_sentinel(scenario in generate::scenario(Backend::RedisSentinel), seed in any::<u64>()) {
        holds(&scenario, seed)?;
    }

    #[test]
    fn redis_sharded(scenario in generate::scenario(Backend::RedisSharded), seed in any::<u64>()) {
        holds(&scenario, seed)?;
    }

    #[test]
    fn nats_core(scenario in generate::scenario(Backend::NatsCore), seed in any::<u64>()) {
        holds(&scenario, seed)?;
    }

    #[test]
    fn jetstream(scenario in generate::scenario(Backend::JetStream), seed in any::<u64>()) {
        holds(&scenario, seed)?;
    }
}
