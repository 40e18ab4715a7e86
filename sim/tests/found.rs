//! Cases the generated runs found, kept and run again: each file in `tests/found/` holds a
//! minimal scenario as the soak runner reported it (the JSON of its failure report), the seed
//! it failed with, what it found and what the cause was. Every one must pass now.
//!
//! Replay one with its logs:
//! `cargo run -p hubbus-sim --release -- replay --seed <seed> --scenario <file>`
//! (the file's `scenario` member as its own file).

use std::path::Path;

use hubbus_sim::harness::{Scenario, run};
use serde::Deserialize;

/// One kept case.
#[derive(Deserialize)]
struct Found {
    seed: u64,
    found: String,
    cause: String,
    scenario: Scenario,
}

fn cases() -> Vec<(String, Found)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/found");
    let mut cases: Vec<(String, Found)> = std::fs::read_dir(&dir)
        .expect("tests/found exists")
        .map(|entry| {
            let path = entry.expect("a readable entry").path();
            let json = std::fs::read_to_string(&path).expect("a readable case");
            let found = serde_json::from_str(&json)
                .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            (path.display().to_string(), found)
        })
        .collect();
    cases.sort_by(|a, b| a.0.cmp(&b.0));
    cases
}

#[test]
fn every_found_case_passes_now() {
    let cases = cases();
    assert!(cases.len() >= 14, "the kept cases are missing");
    for (path, case) in cases {
        let outcome = run(&case.scenario, case.seed)
            .unwrap_or_else(|error| panic!("{path}: the simulation failed: {error}"));
        if let Err(violation) = outcome.check(&case.scenario) {
            panic!(
                "{path} fails again\nfound then: {}\ncause then: {}\nnow: {violation}",
                case.found, case.cause
            );
        }
    }
}
