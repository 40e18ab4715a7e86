//! `hubbus-bench`: every scenario run against hubbus AND the raw client crate doing the same work,
//! in one run, on brokers the program starts itself; prints a table (and JSON, Markdown, SVG on
//! request) with msgs/s, the hubbus/raw ratio, latency percentiles, loss, drops, errors and peak
//! RSS.
//!
//! ```text
//! cargo run --release -p hubbus-bench -- [--quick] [--json FILE] [--markdown FILE] [--svg FILE] [SCENARIO...]
//! ```
//!
//! Scenarios: `s1` memory, `s2` NATS Core, `s3` JetStream, `s4` Redis, `s5` latency, `s6`
//! overload, `scale`, `cluster` Redis Cluster (classic and sharded Pub/Sub); none named runs
//! them all. `docs/performance.md` describes each.
//!
//! The run fails (exit code 1) when a hubbus row lost a message the raw client did not also lose,
//! failed a publish outside overload (S6, or a case whose receiving node counted drops), or did
//! not recover after overload; never for speed, which depends on the machine.

mod cluster_redis;
mod common;
mod report;
mod s1_memory;
mod s2_nats;
mod s3_jetstream;
mod s4_redis;
mod s5_latency;
mod s6_overload;
mod scale;
mod servers;

use std::path::PathBuf;

use clap::Parser;

use crate::common::Size;
use crate::report::{Row, System};

const SCENARIOS: [&str; 8] = ["s1", "s2", "s3", "s4", "s5", "s6", "scale", "cluster"];

#[derive(Parser, Debug)]
#[command(about = "Benchmarks hubbus against the raw client crates, side by side")]
struct Args {
    /// Tiny runs: checks that every scenario runs and loses nothing (CI's smoke test).
    #[arg(long)]
    quick: bool,
    /// Also write the rows as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also write the rows as a Markdown table to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Also write a bar chart of the hubbus/raw ratios as SVG to this file.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Scenarios to run (s1 s2 s3 s4 s5 s6 scale cluster); all when none is named.
    scenarios: Vec<String>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    // The bus's own warnings (reconnects, shed messages) when RUST_LOG asks for them.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let args = Args::parse();
    let selected: Vec<&str> = if args.scenarios.is_empty() {
        SCENARIOS.to_vec()
    } else {
        for name in &args.scenarios {
            if !SCENARIOS.contains(&name.as_str()) {
                anyhow::bail!("unknown scenario `{name}`; choose from {SCENARIOS:?}");
            }
        }
        SCENARIOS
            .iter()
            .copied()
            .filter(|s| args.scenarios.iter().any(|a| a == s))
            .collect()
    };
    let size = Size { quick: args.quick };
    let mut brokers = servers::Brokers::default();
    let mut rows: Vec<Row> = Vec::new();
    for scenario in selected {
        eprintln!(
            "running {scenario}{}",
            if size.quick { " (quick)" } else { "" }
        );
        let produced = match scenario {
            "s1" => s1_memory::run(size).await?,
            "s2" => s2_nats::run(size, brokers.nats()?).await?,
            "s3" => s3_jetstream::run(size, brokers.nats()?).await?,
            "s4" => s4_redis::run(size, brokers.redis()?).await?,
            "s5" => s5_latency::run(size, brokers.redis()?, brokers.nats()?).await?,
            "s6" => s6_overload::run(size, brokers.redis()?, brokers.nats()?).await?,
            "cluster" => cluster_redis::run(size, &brokers.redis_cluster().await?).await?,
            _ => scale::run(size, brokers.redis()?, brokers.nats()?).await?,
        };
        for row in &produced {
            eprintln!(
                "  {} {} {:?}: {:.0} msgs/s",
                row.scenario, row.case, row.system, row.msgs_per_sec
            );
        }
        rows.extend(produced);
    }
    report::fill_ratios(&mut rows);
    println!("{}", report::table(&rows));
    for row in rows.iter().filter(|r| !r.note.is_empty()) {
        println!(
            "{} {} ({:?}): {}",
            row.scenario, row.case, row.system, row.note
        );
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)?;
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, report::markdown(&rows))?;
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, report::svg(&rows))?;
    }
    let problems = problems(&rows);
    // The brokers stop before the process exits (exit skips destructors).
    drop(brokers);
    if problems.is_empty() {
        println!("\nno hubbus row lost a message or failed a publish");
        Ok(())
    } else {
        for problem in &problems {
            eprintln!("FAILED: {problem}");
        }
        std::process::exit(1);
    }
}

/// What makes the run fail: hubbus losing messages, failing publishes, or not recovering after
/// overload. Speed never does.
fn problems(rows: &[Row]) -> Vec<String> {
    let mut problems = Vec::new();
    for row in rows.iter().filter(|r| r.system == System::Hubbus) {
        let name = format!("{} {}", row.scenario, row.case);
        // A receiver overrun by more than it can take loses messages on the raw side as well
        // (at most once); that is the machine's limit, not the bus's. Only loss the raw client
        // did not have in the same case fails the run.
        let raw_lost = rows
            .iter()
            .find(|r| r.system == System::Raw && r.scenario == row.scenario && r.case == row.case)
            .is_some_and(|r| r.lost > 0);
        if row.lost > 0 && !raw_lost {
            problems.push(format!(
                "{name}: {} message(s) lost without a count",
                row.lost
            ));
        }
        // Publish timeouts under overload are the bus's typed answer, not a fault: deliberate
        // overload (S6), or a case that offered more than its receiving node could take (it
        // counted drops: S2's 64 `buffered` publishers), where the publishers' client buffer can
        // stay full for longer than the publish timeout.
        let overloaded =
            (row.scenario == "S6" && row.case.contains("offered 2x")) || row.dropped > 0;
        if row.errors > 0 && !overloaded {
            problems.push(format!("{name}: {} publish(es) failed", row.errors));
        }
        if row.scenario == "S6" && row.case.contains("then") && row.dropped > 0 {
            problems.push(format!(
                "{name}: {} dropped after the overload ended",
                row.dropped
            ));
        }
        if row.messages == 0 && row.system == System::Hubbus {
            problems.push(format!("{name}: nothing was published"));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(scenario: &'static str, case: &str, system: System, rate: f64, lost: u64) -> Row {
        let mut row = Row::new(scenario, case, system).timed(1_000, 1_000.0 / rate);
        row.lost = lost;
        row
    }

    #[test]
    fn ratios_pair_hubbus_with_the_raw_row_of_the_same_case() {
        let mut rows = vec![
            row("S4", "publishers=1", System::Hubbus, 900.0, 0),
            row("S4", "publishers=1", System::Raw, 1_000.0, 0),
            row("S4", "publishers=16", System::Hubbus, 500.0, 0),
        ];
        report::fill_ratios(&mut rows);
        assert!((rows[0].ratio.unwrap() - 0.9).abs() < 1e-9);
        assert_eq!(rows[1].ratio, None);
        assert_eq!(rows[2].ratio, None, "no raw row, no ratio");
    }

    #[test]
    fn loss_fails_the_run_unless_the_raw_client_lost_too() {
        let alone = vec![
            row("S2", "x", System::Hubbus, 1.0, 3),
            row("S2", "x", System::Raw, 1.0, 0),
        ];
        assert_eq!(problems(&alone).len(), 1);
        let both = vec![
            row("S2", "x", System::Hubbus, 1.0, 3),
            row("S2", "x", System::Raw, 1.0, 9),
        ];
        assert!(problems(&both).is_empty());
    }

    #[test]
    fn drops_after_an_overload_fail_the_run() {
        let mut after = row("S6", "memory then 0.5x for 1s", System::Hubbus, 1.0, 0);
        after.dropped = 1;
        assert_eq!(problems(&[after]).len(), 1);
        let mut during = row("S6", "memory offered 2x for 3s", System::Hubbus, 1.0, 0);
        during.dropped = 100;
        during.errors = 2;
        assert!(
            problems(&[during]).is_empty(),
            "drops and timeouts are expected under overload"
        );
    }

    #[test]
    fn failed_publishes_fail_the_run_unless_the_receiver_was_overrun() {
        let mut failed = row("S2", "publishers=1 mode=buffered", System::Hubbus, 1.0, 0);
        failed.errors = 1;
        assert_eq!(problems(std::slice::from_ref(&failed)).len(), 1);
        failed.dropped = 1_000;
        assert!(
            problems(&[failed]).is_empty(),
            "a case that overran its receiver is overload"
        );
    }

    #[test]
    fn the_plot_has_one_bar_per_ratio() {
        let mut rows = vec![
            row("S1", "subs=1", System::Hubbus, 500.0, 0),
            row("S1", "subs=1", System::Raw, 1_000.0, 0),
        ];
        report::fill_ratios(&mut rows);
        let svg = report::svg(&rows);
        assert_eq!(svg.matches("<rect").count(), 1);
        assert!(svg.contains("0.50"));
    }
}
