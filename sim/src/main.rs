//! `hubbus-sim soak`: generated simulation runs by the thousand (see `hubbus_sim::soak` and
//! `docs/testing.md`).
//!
//! ```text
//! cargo run -p hubbus-sim --release -- soak --backend all --seeds 10000
//! ```

use std::path::PathBuf;

use proptest::strategy::ValueTree;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use hubbus_sim::soak;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(name = "hubbus-sim", about = "The deterministic simulation of hubbus")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The options of `hubbus-sim soak`.
#[derive(Args)]
struct SoakArgs {
    /// redis, sentinel, nats, jetstream or all.
    #[arg(long, default_value = "all")]
    backend: String,
    /// How many cases (seeds) to run in all; with several backends, seed n runs on the
    /// (n mod count)-th of redis, sentinel, nats, jetstream.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 1)]
    first_seed: u64,
    /// Threads (default: one per core).
    #[arg(long)]
    jobs: Option<usize>,
    /// Where failing seeds and their minimal scenarios go.
    #[arg(long, default_value = "soak-failures.txt")]
    failures: PathBuf,
    /// How many failing cases are shrunk to a minimal scenario (the first ones found);
    /// the others are reported as drawn.
    #[arg(long, default_value_t = 5)]
    shrink: u64,
    /// Turns on one planted bug (needs a build with `--cfg hubbus_planted`).
    #[arg(long)]
    plant: Option<String>,
    /// Prints the planted bugs' names, one a line (needs `--cfg hubbus_planted`).
    #[arg(long)]
    list_planted: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Runs generated cases on every core and checks each against its backend's promise.
    Soak(SoakArgs),
    /// Runs one case again with the bus's logs (`RUST_LOG`, default `hubbus=debug`) and prints
    /// its events and what the check found.
    Replay {
        /// redis, sentinel, nats or jetstream.
        #[arg(long, default_value = "redis")]
        backend: String,
        /// The case's seed.
        #[arg(long)]
        seed: u64,
        /// Shrinks a failing case first (as `soak` does) and replays the minimal scenario.
        #[arg(long)]
        minimal: bool,
        /// Runs the scenario in this JSON file (as a failure report gives it) instead of case
        /// `seed`'s; `--backend` is then ignored.
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// Turns on one planted bug (needs a build with `--cfg hubbus_planted`).
        #[arg(long)]
        plant: Option<String>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Soak(args) => soak_command(args),
        Command::Replay {
            backend,
            seed,
            minimal,
            scenario,
            plant,
        } => replay_command(&backend, seed, minimal, scenario.as_deref(), plant),
    }
}

/// `hubbus-sim replay`: one case, with logs.
fn replay_command(
    backend: &str,
    seed: u64,
    minimal: bool,
    file: Option<&std::path::Path>,
    plant: Option<String>,
) -> ExitCode {
    if let Err(error) = planted(plant.as_deref()) {
        eprintln!("{error}");
        return ExitCode::from(2);
    }
    let backend = match soak::backends(backend) {
        Ok(backends) if backends.len() == 1 => backends[0],
        Ok(_) => {
            eprintln!("replay takes one backend: redis, sentinel, sharded, nats or jetstream");
            return ExitCode::from(2);
        }
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    let scenario = if let Some(file) = file {
        let read = std::fs::read_to_string(file)
            .map_err(|error| error.to_string())
            .and_then(|json| serde_json::from_str(&json).map_err(|error| error.to_string()));
        match read {
            Ok(scenario) => scenario,
            Err(error) => {
                eprintln!("cannot read a scenario from {}: {error}", file.display());
                return ExitCode::from(2);
            }
        }
    } else if minimal {
        soak::minimal_case(backend, seed)
    } else {
        soak::case(backend, seed).current()
    };
    println!("{scenario:#?}");
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("hubbus=debug"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .without_time()
        .finish();
    let outcome =
        tracing::subscriber::with_default(logs, || hubbus_sim::harness::run(&scenario, seed));
    match outcome {
        Err(error) => {
            eprintln!("the simulation failed: {error}");
            ExitCode::FAILURE
        }
        Ok(run) => {
            println!("events:\n{}", run.tail(usize::MAX));
            match run.check(&scenario) {
                Ok(_) => {
                    println!("no violation");
                    ExitCode::SUCCESS
                }
                Err(violation) => {
                    println!("violation: {violation}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `hubbus-sim soak`: many cases on every core.
fn soak_command(args: SoakArgs) -> ExitCode {
    let SoakArgs {
        backend,
        seeds,
        first_seed,
        jobs,
        failures,
        shrink,
        plant,
        list_planted,
    } = args;
    if list_planted {
        return list();
    }
    if let Err(error) = planted(plant.as_deref()) {
        eprintln!("{error}");
        return ExitCode::from(2);
    }
    let backends = match soak::backends(&backend) {
        Ok(backends) => backends,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    let jobs = jobs.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let bar = ProgressBar::new(seeds);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} runs, {elapsed} ({eta} left) {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let violations = std::sync::atomic::AtomicU64::new(0);
    let started = Instant::now();
    let plan = soak::Soak {
        backends: backends.clone(),
        first_seed,
        seeds,
        jobs,
        shrink,
        stop_after: None,
    };
    let results = soak::soak(&plan, &|result| {
        if result.failure.is_some() {
            let count = violations.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            bar.set_message(format!("{count} violations"));
        }
        bar.inc(1);
    });
    bar.finish();
    println!("{}", soak::table(&results, &backends, started.elapsed()));

    let mut failed: Vec<&soak::CaseResult> =
        results.iter().filter(|r| r.failure.is_some()).collect();
    if failed.is_empty() {
        return ExitCode::SUCCESS;
    }
    failed.sort_by_key(|r| (r.backend.to_string(), r.seed));
    let mut report = String::new();
    for result in &failed {
        report.push_str(&format!(
            "== {} seed {}\n{}\n\n",
            result.backend,
            result.seed,
            result.failure.as_deref().unwrap_or_default()
        ));
    }
    if let Err(error) = std::fs::write(&failures, &report) {
        eprintln!("cannot write {}: {error}", failures.display());
    }
    if let Some(first) = failed.first() {
        eprintln!(
            "{} violations; failing seeds and minimal scenarios in {}. The first:\n== {} seed {}\n{}",
            failed.len(),
            failures.display(),
            first.backend,
            first.seed,
            first.failure.as_deref().unwrap_or_default()
        );
    }
    ExitCode::FAILURE
}

#[cfg(hubbus_planted)]
fn list() -> ExitCode {
    for name in hubbus::planted::ALL {
        println!("{name}");
    }
    ExitCode::SUCCESS
}

#[cfg(not(hubbus_planted))]
fn list() -> ExitCode {
    eprintln!("planted bugs exist only in a build with RUSTFLAGS=\"--cfg hubbus_planted\"");
    ExitCode::from(2)
}

/// Turns on the planted bug `--plant` names, if it names one.
#[cfg(hubbus_planted)]
fn planted(name: Option<&str>) -> Result<(), String> {
    name.map_or(Ok(()), hubbus::planted::plant)
}

/// Turns on the planted bug `--plant` names, if it names one.
#[cfg(not(hubbus_planted))]
fn planted(name: Option<&str>) -> Result<(), String> {
    match name {
        None => Ok(()),
        Some(_) => {
            Err("planted bugs exist only in a build with RUSTFLAGS=\"--cfg hubbus_planted\"".into())
        }
    }
}
