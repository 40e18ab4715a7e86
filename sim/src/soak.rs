//! The many-seed runner: generated runs (`harness::generate`) by the thousand, on every core.
//!
//! Case `n` of a backend is drawn from seed `n`: the scenario comes from proptest's strategy
//! driven by a generator seeded with `n`, and the simulation runs with seed `n`, so
//! `--first-seed n --seeds 1` replays it exactly. A case that breaks an invariant is shrunk
//! (proptest's value tree, simplified while the run still fails) and reported with its
//! minimal scenario.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use crate::harness::{Backend, Scenario, generate, run};

/// How many simpler scenarios a failure tries at most while shrinking.
pub const SHRINK_STEPS: usize = 200;

/// One case's outcome.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The backend.
    pub backend: Backend,
    /// Its seed.
    pub seed: u64,
    /// Simulated time the run covered.
    pub simulated: Duration,
    /// Wall time it took.
    pub wall: Duration,
    /// The violation, with the minimal scenario that still shows it, if it failed.
    pub failure: Option<String>,
}

/// The scenario of case `seed` on `backend`.
pub fn case(backend: Backend, seed: u64) -> impl ValueTree<Value = Scenario> {
    let mut bytes = [0_u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &bytes);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    generate::scenario(backend)
        .new_tree(&mut runner)
        .expect("the strategy always makes a scenario")
}

/// Runs `scenario` with `seed` and checks it: the violation (or simulation failure) if any.
pub fn violation(scenario: &Scenario, seed: u64) -> Option<String> {
    match run(scenario, seed) {
        Err(error) => Some(error),
        Ok(outcome) => outcome
            .check(scenario)
            .err()
            .map(|violation| format!("{violation}\nlast events:\n{}", outcome.tail(30))),
    }
}

/// Runs case `seed` on `backend`; a failure is shrunk to a minimal scenario if `may_shrink`
/// says so when asked (shrinking takes up to [`SHRINK_STEPS`] more runs).
pub fn run_case(backend: Backend, seed: u64, may_shrink: impl FnOnce() -> bool) -> CaseResult {
    let mut tree = case(backend, seed);
    let scenario = tree.current();
    let started = Instant::now();
    let failure = violation(&scenario, seed);
    let wall = started.elapsed();
    let failure = failure.map(|first| {
        let (shown, why, which) = if may_shrink() {
            let (minimal, why) = shrink(&mut tree, seed, scenario.clone(), first);
            (minimal, why, "minimal scenario")
        } else {
            (
                scenario.clone(),
                first,
                "scenario, not shrunk (others were)",
            )
        };
        let json = serde_json::to_string(&shown).unwrap_or_default();
        format!(
            "{why}\n{which} (seed {seed}):\n{shown:#?}\nas JSON, for `hubbus-sim replay --seed \
             {seed} --scenario <file>`:\n{json}"
        )
    });
    CaseResult {
        backend,
        seed,
        simulated: scenario.end(),
        wall,
        failure,
    }
}

/// The scenario of case `seed` on `backend` and, if it fails, the minimal scenario that still
/// fails, as `run_case` finds it: what `hubbus-sim replay --minimal` runs again with logs.
pub fn minimal_case(backend: Backend, seed: u64) -> Scenario {
    let mut tree = case(backend, seed);
    let scenario = tree.current();
    match violation(&scenario, seed) {
        Some(first) => shrink(&mut tree, seed, scenario, first).0,
        None => scenario,
    }
}

/// Simplifies the failing scenario while it still fails.
fn shrink(
    tree: &mut impl ValueTree<Value = Scenario>,
    seed: u64,
    mut minimal: Scenario,
    mut why: String,
) -> (Scenario, String) {
    let mut steps = 0;
    if !tree.simplify() {
        return (minimal, why);
    }
    while steps < SHRINK_STEPS {
        steps += 1;
        let candidate = tree.current();
        match violation(&candidate, seed) {
            Some(violation) => {
                minimal = candidate;
                why = violation;
                if !tree.simplify() {
                    break;
                }
            }
            None => {
                if !tree.complicate() {
                    break;
                }
            }
        }
    }
    (minimal, why)
}

/// What a soak runs.
#[derive(Debug, Clone)]
pub struct Soak {
    /// The backends; seed `n` runs on `backends[n % backends.len()]`, so a case is the same
    /// one whichever selection ran it.
    pub backends: Vec<Backend>,
    /// The first seed.
    pub first_seed: u64,
    /// How many seeds (cases) in all.
    pub seeds: u64,
    /// Threads.
    pub jobs: usize,
    /// How many failures are shrunk (the first ones found); the others are reported as drawn.
    pub shrink: u64,
    /// Stops taking new cases once this many failed.
    pub stop_after: Option<u64>,
}

/// Runs the soak's cases, calling `progress` after each; returns every case's result, in no
/// particular order.
pub fn soak(soak: &Soak, progress: &(dyn Fn(&CaseResult) + Sync)) -> Vec<CaseResult> {
    let next = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let shrunk = AtomicU64::new(0);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..soak.jobs.max(1) {
            scope.spawn(|| {
                loop {
                    if soak
                        .stop_after
                        .is_some_and(|stop| failed.load(Ordering::Relaxed) >= stop)
                    {
                        return;
                    }
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= soak.seeds {
                        return;
                    }
                    let seed = soak.first_seed + index;
                    let backend = soak.backends[(seed % soak.backends.len() as u64) as usize];
                    let result = run_case(backend, seed, || {
                        shrunk.fetch_add(1, Ordering::Relaxed) < soak.shrink
                    });
                    if result.failure.is_some() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    progress(&result);
                    results
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(result);
                }
            });
        }
    });
    results.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// The summary table: per backend, runs, simulated and wall seconds, their ratio, violations.
pub fn table(results: &[CaseResult], backends: &[Backend], wall: Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| backend | runs | simulated s | run wall s | simulated / wall | violations |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for backend in backends {
        let mine: Vec<&CaseResult> = results.iter().filter(|r| r.backend == *backend).collect();
        let simulated: f64 = mine.iter().map(|r| r.simulated.as_secs_f64()).sum();
        let run_wall: f64 = mine.iter().map(|r| r.wall.as_secs_f64()).sum();
        let violations = mine.iter().filter(|r| r.failure.is_some()).count();
        let _ = writeln!(
            out,
            "| {backend} | {} | {simulated:.0} | {run_wall:.1} | {:.0} | {violations} |",
            mine.len(),
            simulated / run_wall.max(f64::EPSILON)
        );
    }
    let _ = writeln!(
        out,
        "\n{} runs in {:.1} s of wall time",
        results.len(),
        wall.as_secs_f64()
    );
    out
}

/// Parses a `--backend` value: `redis`, `sentinel`, `sharded`, `nats`, `jetstream` or `all`.
pub fn backends(name: &str) -> Result<Vec<Backend>, String> {
    Ok(match name {
        "redis" => vec![Backend::Redis],
        "sentinel" => vec![Backend::RedisSentinel],
        "sharded" => vec![Backend::RedisSharded],
        "nats" => vec![Backend::NatsCore],
        "jetstream" => vec![Backend::JetStream],
        "all" => Backend::ALL.to_vec(),
        other => {
            return Err(format!(
                "unknown backend `{other}`: redis, sentinel, sharded, nats, jetstream or all"
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_case_is_the_same_scenario_every_time_and_another_seed_another() {
        let first = format!("{:?}", case(Backend::Redis, 5).current());
        assert_eq!(first, format!("{:?}", case(Backend::Redis, 5).current()));
        assert_ne!(first, format!("{:?}", case(Backend::Redis, 6).current()));
    }

    #[test]
    fn backend_names() {
        assert_eq!(backends("all").unwrap().len(), 5);
        assert_eq!(backends("nats").unwrap(), vec![Backend::NatsCore]);
        assert_eq!(backends("sharded").unwrap(), vec![Backend::RedisSharded]);
        assert!(backends("kafka").unwrap_err().contains("unknown backend"));
    }

    #[test]
    fn a_few_cases_run_on_two_threads_and_are_counted_per_backend() {
        let done = AtomicU64::new(0);
        let plan = Soak {
            backends: vec![Backend::NatsCore, Backend::Redis],
            first_seed: 1,
            seeds: 4,
            jobs: 2,
            shrink: 1,
            stop_after: None,
        };
        let results = soak(&plan, &|_| {
            done.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(results.len(), 4);
        assert_eq!(done.load(Ordering::Relaxed), 4);
        assert!(results.iter().all(|r| r.failure.is_none()), "{results:#?}");
        let table = table(
            &results,
            &[Backend::NatsCore, Backend::Redis],
            Duration::from_secs(1),
        );
        assert!(table.contains("| NATS Core | 2 |"), "{table}");
        assert!(table.contains("| Redis | 2 |"), "{table}");
    }
}
